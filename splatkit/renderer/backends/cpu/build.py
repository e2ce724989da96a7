"""Compile the C++ kernels once per machine and load them with ctypes.

The library is built with the system C++ compiler (``$CXX``, else ``c++``/``g++``) at
first use, with ``-O3 -march=native``, into the cache folder (``$SPLATKIT_CACHE`` or
``~/.cache/splatkit``/kernels/<hash of sources, flags, compiler and CPU>/). Later processes
load the cached file; a different source, compiler or CPU gets its own build.
``$SPLATKIT_MARCH`` replaces ``native`` (``x86-64``: the portable 4-lane kernels a CPU
without AVX runs, which the tests check on any x86-64 machine).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from splatkit.errors import KernelBuildError

logger = logging.getLogger("splatkit")

SOURCES = tuple(Path(__file__).with_name(name) for name in ("splatkit_cpu.cpp", "ssim.cpp"))
"""Compiled together into one library."""
HEADERS = (Path(__file__).with_name("parallel.h"),)
"""Included by the sources (part of the cache key)."""
FLAGS = ["-O3", "-march=native", "-std=c++17", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
build_seconds: float | None = None
"""Time the last compile in this process took (None when the cached library was used)."""


def _compiler() -> str:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return cand
    raise KernelBuildError("no C++ compiler found (set CXX, or install g++: apt install g++)")


def _cpuinfo_line(*prefixes: str) -> str | None:
    """The first line of /proc/cpuinfo starting with one of ``prefixes`` (None off Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(prefixes)), None)
    except OSError:
        return None


def _cpu_signature() -> str:
    return _cpuinfo_line("flags", "Features") or platform.processor() or platform.machine()


def _march() -> str:
    return os.environ.get("SPLATKIT_MARCH") or "native"


def _flags() -> list[str]:
    """:data:`FLAGS`, with ``-march=$SPLATKIT_MARCH`` instead of ``-march=native`` when set."""
    return [f"-march={_march()}" if flag == "-march=native" else flag for flag in FLAGS]


def describe() -> dict:
    """What the kernels run on here, for benchmark records: the CPU's model name, the
    ``-march`` they are compiled with and their vector width in floats (it sets the rounding
    of their sums, so runs agree bit for bit only between machines of one width)."""
    line = _cpuinfo_line("model name")
    model = line.split(":", 1)[1].strip() if line else platform.processor() or platform.machine()
    return {"cpu": model, "march": _march(), "vector_lanes": int(load().sk_vector_lanes())}


def library_path() -> Path:
    cxx = _compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        b"".join(src.read_bytes() for src in SOURCES + HEADERS)
        + " ".join(_flags()).encode()
        + version.encode()
        + _cpu_signature().encode()
        + platform.machine().encode()
    ).hexdigest()[:16]
    root = Path(os.environ.get("SPLATKIT_CACHE") or Path.home() / ".cache" / "splatkit")
    return root / "kernels" / key / "libsplatkit_cpu.so"


def _compile(target: Path) -> None:
    global build_seconds
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(fd)
    t0 = time.perf_counter()
    logger.info("compiling the CPU rasterizer (once per machine) into %s", target.parent)
    proc = subprocess.run([_compiler(), *_flags(), *map(str, SOURCES), "-o", tmp], capture_output=True, text=True)
    if proc.returncode != 0:
        os.unlink(tmp)
        raise KernelBuildError(f"compiling {', '.join(src.name for src in SOURCES)} failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, target)
    build_seconds = time.perf_counter() - t0
    logger.info("compiled the CPU rasterizer in %.1f s", build_seconds)


def load() -> ctypes.CDLL:
    """The kernel library, building it first if this machine has no cached copy."""
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise KernelBuildError(_error)
        try:
            path = library_path()
            if not path.is_file():
                _compile(path)
            lib = ctypes.CDLL(str(path))
        except (KernelBuildError, OSError) as e:
            _error = f"the compiled CPU rasterizer is unavailable: {e}"
            raise KernelBuildError(_error) from e
        _declare(lib)
        _lib = lib
        return lib


def _declare(lib: ctypes.CDLL) -> None:
    p, i, f, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_int64
    sh = [p, p, i64, i64]  # sh0, shN and their per-Gaussian strides (floats)
    lib.sk_project_fwd.argtypes = [i, i, p, p, p, p, *sh, i, p, p, i, i, f, f, f, f, i, p, p, p, p, p, p, i]
    lib.sk_project_fwd.restype = None
    lib.sk_project_bwd.argtypes = [i, i, p, p, p, p, *sh, i, i, p, p, i, i, f, f, f, i, *[p] * 14, i]
    lib.sk_project_bwd.restype = None
    lib.sk_pack.argtypes = [i64, i, p, p, p, p, p, i]
    lib.sk_pack.restype = None
    lib.sk_isect.argtypes = [i, i, p, p, p, i, i, ctypes.POINTER(ctypes.c_void_p), p, i]
    lib.sk_isect.restype = i64
    lib.sk_free.argtypes = [p]
    lib.sk_free.restype = None
    lib.sk_vector_lanes.argtypes = []
    lib.sk_vector_lanes.restype = i
    lib.sk_raster_fwd.argtypes = [i, i, i, i, p, p, p, p, p, p, p, p, p, i]
    lib.sk_raster_fwd.restype = i
    lib.sk_raster_bwd.argtypes = [i, i, i, i, i, p, p, p, p, p, p, p, p, p, p, p, p, p, i]
    lib.sk_raster_bwd.restype = i
    # 2DGS surfels
    lib.sk2_project_fwd.argtypes = [i, i, p, p, p, p, *sh, i, p, p, i, i, f, f, f, p, p, p, p, p, p, p, i]
    lib.sk2_project_fwd.restype = None
    lib.sk2_project_bwd.argtypes = [i, i, p, p, p, *sh, i, p, p, p, *[p] * 5, *[p] * 3, p, p, i]
    lib.sk2_project_bwd.restype = None
    lib.sk2_pack.argtypes = [i64, i, p, p, p, p, p, p, p, p, i]
    lib.sk2_pack.restype = None
    lib.sk2_isect.argtypes = [i, i, p, p, p, i, i, ctypes.POINTER(ctypes.c_void_p), p, i]
    lib.sk2_isect.restype = i64
    lib.sk2_raster_fwd.argtypes = [i, i, i, i, p, p, p, p, p, p, p, p, p, p, p, p, p, i]
    lib.sk2_raster_fwd.restype = i
    lib.sk2_raster_bwd.argtypes = [i, i, i, i, i, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, p, i]
    lib.sk2_raster_bwd.restype = i
    lib.sk_ssim_fwd.argtypes = [i, i, i, i, p, i, p, p, p, i]
    lib.sk_ssim_fwd.restype = None
    lib.sk_ssim_bwd.argtypes = [i, i, i, i, p, i, p, p, p, p, i]
    lib.sk_ssim_bwd.restype = None
