"""One run per output folder: a lock file while training, and no silent reuse of a folder
that holds another run's files."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".splatkit.lock"
RUN_RECORD = "trainer_config.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def claim(folder: str | os.PathLike, resuming: bool, overwrite: bool) -> Path:
    """Take ``folder`` for this process's run and return its lock file.

    A ValueError names the folder when another live run holds its lock, or when it holds a
    finished run's files (``trainer_config.json``) and this run neither resumes
    (``resuming``) nor was told to ``overwrite``. A lock left by a process that no longer
    exists on this host is taken over; a lock of this very process (a trainer set up twice)
    is kept.
    """
    folder = Path(folder)
    lock = folder / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                holder, pid, host = {}, -1, ""
            if host == me["host"] and pid == me["pid"]:
                break  # ours: the same trainer (or process) set up again
            if host == me["host"] and (pid <= 0 or not _alive(pid)):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise ValueError(
                f"output folder {folder} is in use by another splatkit run (pid {pid} on {host or '?'}, since "
                f"{holder.get('started', '?')}); choose another --output-dir, or delete {lock} if that run "
                "is gone"
            ) from None
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            break
    else:
        raise ValueError(f"output folder {folder}: cannot take its lock {lock}")
    _remove_leftovers(folder)
    if (folder / RUN_RECORD).exists() and not (resuming or overwrite):
        release(lock)
        raise ValueError(
            f"output folder {folder} already holds a run ({RUN_RECORD}); pass --resume CKPT to continue "
            "it, --overwrite to train a new run over it, or choose another --output-dir"
        )
    return lock


def _remove_leftovers(folder: Path) -> None:
    """Temporary files of atomic writes (``.NAME.XXXX.tmp``) that a killed run left in the
    folder or its subfolders: no other run can be writing them while we hold the lock."""
    for pattern in (".*.tmp", "*/.*.tmp"):
        for tmp in folder.glob(pattern):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)


def release(lock: Path | None) -> None:
    """Remove ``lock`` if this process holds it."""
    if lock is None:
        return
    try:
        if int(json.loads(lock.read_text())["pid"]) == os.getpid():
            lock.unlink(missing_ok=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
