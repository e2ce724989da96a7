"""File writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; finished files get the permissions open() would give.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file lives in the same folder (so the rename is atomic on POSIX and
    Windows) and is removed if the body raises. Readers see either the old file or the
    complete new one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as e:  # a full disk, a file-size limit, ...: name the user's file, not ours
        tmp_path.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` if needed and prove it is writable; raise with a clear message."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"{what}: cannot create folder '{path}': {e.strerror or e}") from e
    if not path.is_dir():
        raise NotADirectoryError(f"{what}: '{path}' exists and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".splatkit-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(f"{what}: folder '{path}' is not writable: {e.strerror or e}") from e
    return path


def json_safe(obj):
    """``obj`` with non-finite floats as strings ("inf", "nan"): strict JSON has neither."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented strict JSON, atomically."""
    text = json.dumps(json_safe(obj), indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))
