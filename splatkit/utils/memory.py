"""Handing the C heap's free memory back to the operating system.

Densification rebuilds every parameter and Adam moment (:mod:`splatkit.densification.ops`):
dozens of tensors of a few MB each, freed in another order than they were allocated. glibc
serves blocks below its mmap threshold (which rises with use, up to 32 MiB) from its heap and
keeps what they leave behind, so a process's resident memory grew round after round. Measured
on fox at a quarter resolution, resumed from a 150,000-Gaussian run's step 7,000 for 2,000
steps (20 rounds, growing to 180,000 Gaussians): 0.62 -> 1.43 GB without a trim, 0.59-0.84 GB
with one after each round, at the same steps per second and the same results
(docs/backends.md, "A Gaussian budget").
"""

from __future__ import annotations

import ctypes
import sys

_trim = None
if sys.platform.startswith("linux"):
    try:
        _trim = ctypes.CDLL(None).malloc_trim  # glibc; other C libraries (musl) lack it
        _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        _trim = None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system (``malloc_trim(0)``); whether it could.
    Values are untouched: only memory nothing refers to is released."""
    if _trim is None:
        return False
    _trim(0)
    return True
