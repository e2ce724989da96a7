"""The one error type and guard of every ``torch.distributed`` collective splatkit makes."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from splatkit.errors import SplatDistributedError


@contextlib.contextmanager
def guard(what: str, rank: int, step: int | None = None):
    """Turn a failed collective into a :class:`SplatDistributedError` that says what happened."""
    try:
        yield
    except SplatDistributedError:
        raise
    except (RuntimeError, ConnectionError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        when = "" if step is None else f" at step {step}"
        raise SplatDistributedError(
            f"rank {rank}: {what} failed{when}: another rank probably died or stopped responding "
            f"({type(e).__name__}: {first}). Checkpoints already written are complete; resume from the last one."
        ) from e


def gather_ranks(t: torch.Tensor, rank: int, step: int | None = None, what: str = "all-gather") -> torch.Tensor:
    """``[B, ...]`` per rank -> ``[B * W, ...]`` in rank order (same shapes on every rank)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    with guard(what, rank, step):
        dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)
