"""The checkpoint file: a ``torch.load(weights_only=True)`` dict with a format marker.

Reading and writing live here, below the trainer, so every layer that opens a ``.ckpt``
(formats, ``splatkit info``, the trainer) shares one validated reader.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from splatkit.errors import SplatFileError
from splatkit.utils.files import atomic_write

CHECKPOINT_FORMAT = "splatkit.checkpoint"
CHECKPOINT_VERSION = 2
"""2: with a checksum of the content; 1 (read too): without."""
READ_VERSIONS = (1, 2)
CHECKPOINT_SUFFIX = ".ckpt"
CHECKSUM_KEY = "blake2b"
REQUIRED_KEYS = ("step", "training_state", "densification", "modules", "data_provider", "config", "rng")


def to_cpu(obj: Any) -> Any:
    """Recursively move tensors to the CPU (checkpoints load on any machine)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _digest(obj: Any, h=None) -> str:
    """BLAKE2b of a checkpoint's content: every tensor's dtype, shape and bytes and every other
    value's repr, dict keys in sorted order, so it does not depend on how the file was written."""
    top = h is None
    h = h or hashlib.blake2b(digest_size=32)
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for value in obj:
            _digest(value, h)
    else:
        h.update(repr(obj).encode())
    return h.hexdigest() if top else ""


def save_checkpoint(path: str | os.PathLike, content: dict) -> Path:
    """Write ``content`` (plus the format marker and a checksum of it) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **to_cpu(content)}
    payload[CHECKSUM_KEY] = _digest(payload)

    def write(tmp: Path) -> None:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch's zip writer reports a full disk or a file-size limit so
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(errno.EIO, f"{first} (is the disk full, or a file-size limit reached?)") from e

    return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and validate a checkpoint written by :func:`save_checkpoint` (tensors on the CPU)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise SplatFileError(f"{path}: is not a file, expected a .ckpt written by SplatExporter")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or damaged files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only" in reason.lower():  # not torch's advice to unpickle it anyway
            reason = "it holds Python objects besides tensors and plain values, which splatkit never unpickles"
        raise SplatFileError(f"{path}: not a splatkit checkpoint (torch.load cannot read it: {reason})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SplatFileError(f"{path}: not a splatkit checkpoint (no '{CHECKPOINT_FORMAT}' format marker)")
    if ckpt.get("version") not in READ_VERSIONS:
        raise SplatFileError(
            f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
            f"(this splatkit reads versions {', '.join(map(str, READ_VERSIONS))})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise SplatFileError(f"{path}: splatkit checkpoint is incomplete, missing {missing}")
    stored = ckpt.pop(CHECKSUM_KEY, None)
    if ckpt["version"] >= 2 and (stored is None or stored != _digest(ckpt)):
        raise SplatFileError(f"{path}: checkpoint is damaged: its content does not match its checksum")
    return ckpt
