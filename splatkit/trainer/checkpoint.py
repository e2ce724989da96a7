"""Checkpoint files: the full training state in a ``torch.load(weights_only=True)`` file."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splatkit.splat.ply import SplatFileError
from splatkit.utils.files import atomic_write

CHECKPOINT_FORMAT = "splatkit.checkpoint"
CHECKPOINT_VERSION = 1
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


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as plain tensors and numbers."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        raise SplatFileError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
                             f"(this splatkit reads version {CHECKPOINT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise SplatFileError(f"{path}: splatkit checkpoint is incomplete, missing {missing}")
    return ckpt
