"""Rasterizer backends. Each knows only Gaussians and cameras, nothing of training.

A backend is a function with the signature of :func:`splatkit.renderer.rasterize`
(minus ``backend``). ``"auto"`` picks the fastest one that runs on the tensors' device.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from splatkit.renderer.backends import cpu, torch_ref

logger = logging.getLogger("splatkit")

BACKENDS: dict[str, Callable] = {"torch": torch_ref.rasterize, "cpu": cpu.rasterize}
_warned: set[str] = set()


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def resolve_backend_name(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend ``name`` stands for with tensors on ``device`` of ``dtype``.

    ``"auto"`` on the CPU is the compiled backend (built on first use), or the
    reference with one warning if it cannot be built; float64 always uses the reference.
    """
    if name == "auto":
        if torch.device(device).type == "cpu" and dtype == torch.float32:
            if cpu.is_available():
                return "cpu"
            if "cpu" not in _warned:
                _warned.add("cpu")
                logger.warning("the compiled CPU rasterizer is unavailable (%s); using the reference PyTorch "
                               "rasterizer, which is much slower", cpu.unavailable_reason())
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {name!r}; available: {', '.join(available_backends())}")
    return name


def get_backend(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Callable:
    return BACKENDS[resolve_backend_name(name, device, dtype)]
