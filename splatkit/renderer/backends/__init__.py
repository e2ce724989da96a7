"""Rasterizer backends. Each knows only Gaussians and cameras, nothing of training.

A backend is a function with the signature of :func:`splatkit.renderer.rasterize`
(minus ``backend``). ``"auto"`` picks the fastest one that runs on the tensors' device.
"""

from __future__ import annotations

from typing import Callable

import torch

from splatkit.renderer.backends import cpu, torch_ref

BACKENDS: dict[str, Callable] = {"torch": torch_ref.rasterize, "cpu": cpu.rasterize}


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def resolve_backend_name(name: str, device: torch.device | str) -> str:
    """The concrete backend ``name`` stands for on ``device``."""
    if name == "auto":
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {name!r}; available: {', '.join(available_backends())}")
    return name


def get_backend(name: str, device: torch.device | str) -> Callable:
    return BACKENDS[resolve_backend_name(name, device)]
