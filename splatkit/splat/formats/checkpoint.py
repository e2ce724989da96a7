"""The checkpoint file: a ``torch.load(weights_only=True)`` dict with a format marker.

Reading and writing live here, below the trainer, so every layer that opens a ``.ckpt``
(formats, ``splatkit info``, the trainer) shares one validated reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from splatkit.errors import SplatFileError
from splatkit.utils.files import atomic_write

CHECKPOINT_FORMAT = "splatkit.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_SUFFIX = ".ckpt"
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


def save_checkpoint(path: str | os.PathLike, content: dict) -> Path:
    """Write ``content`` (plus the format marker) atomically to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **to_cpu(content)}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


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
        raise SplatFileError(f"{path}: not a splatkit checkpoint (torch.load cannot read it: {reason})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise SplatFileError(f"{path}: not a splatkit checkpoint (no '{CHECKPOINT_FORMAT}' format marker)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise SplatFileError(
            f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
            f"(this splatkit reads version {CHECKPOINT_VERSION})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise SplatFileError(f"{path}: splatkit checkpoint is incomplete, missing {missing}")
    return ckpt
