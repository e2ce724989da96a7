"""Large output buffers of the CPU kernels, kept from one training step to the next.

A step's largest gradient is the higher SH bands' (``N x 45`` floats at degree 3: 55 MB
at 300,000 Gaussians). Blocks that large are beyond the C library's heap (glibc maps
anything above 32 MiB afresh and unmaps it on free), so every step's gradient is new
memory, and the operating system zero-fills each of its pages on first touch: about 5 ms a
step on a 2-core machine, before the kernel writes a single value.

:func:`empty` hands back a block allocated on an earlier step once nothing but this
module refers to it (the optimiser has taken its step and ``zero_grad`` has let the
gradient go), as a new tensor on that storage, which autograd then adopts as ``.grad``
without a copy. A block that anything else still refers to (a gradient kept or being
accumulated, a tensor saved by a module) is never handed out; a new one is allocated.
Only for outputs the kernels write in full: the contents of a reused block are the last
step's values.
"""

from __future__ import annotations

import math
import threading

import torch

MIN_BYTES = 32 << 20
"""Smaller outputs come from ``torch.empty`` (the C library's heap reuses them already)."""
KEEP = 2
"""Blocks kept at most (a 3DGS step has one output this large, a 2DGS step one)."""
SLACK = 1.25
"""A kept block serves a request of at least ``1 / SLACK`` of its size (a model that
pruned a few Gaussians reuses its block; one that grew gets a new one)."""

_use_count = getattr(torch._C, "_storage_Use_Count", None)  # private; without it, no reuse
_lock = threading.Lock()
_kept: list[torch.UntypedStorage] = []  # most recently used last


def _free(storage: torch.UntypedStorage) -> bool:
    """Whether only ``_kept`` refers to ``storage``."""
    return _use_count(storage._cdata) == 1


def empty(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised contiguous CPU tensor, on a kept block when one is free."""
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or _use_count is None:
        return torch.empty(shape, dtype=dtype)
    with _lock:
        for i, storage in enumerate(_kept):
            if nbytes <= storage.nbytes() <= SLACK * nbytes and _free(storage):
                _kept.append(_kept.pop(i))
                return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
        out = torch.empty(shape, dtype=dtype)
        # make room: forget the least recently used blocks nothing uses any more (so their
        # memory goes back), then, if still full, the oldest (its user keeps it alive)
        for storage in [s for s in _kept if _free(s)]:
            if len(_kept) < KEEP:
                break
            _kept.remove(storage)
        del _kept[: max(0, len(_kept) - KEEP + 1)]
        _kept.append(out.untyped_storage())
        return out


def release() -> None:
    """Forget every kept block (memory nothing else uses goes back to the system)."""
    with _lock:
        _kept.clear()
