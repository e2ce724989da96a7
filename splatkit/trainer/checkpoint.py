"""Checkpoints of a training run: the file itself (:mod:`splatkit.splat.formats.checkpoint`)
and the random-number-generator states that make a resume exact."""

from __future__ import annotations

import random

import numpy as np
import torch

from splatkit.splat.formats.checkpoint import (  # noqa: F401  (the trainer's checkpoint API)
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    REQUIRED_KEYS,
    load_checkpoint,
    save_checkpoint,
    to_cpu,
)


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
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
