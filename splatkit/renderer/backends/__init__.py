"""Rasterizer backends: one registry of :class:`~splatkit.renderer.backends.base.Backend`
entries and one resolver. Each backend knows only Gaussians and cameras, nothing of training.

``"auto"`` picks the fastest backend that runs on the tensors' device: gsplat on CUDA (when
installed and built), the compiled kernels for float32 on the CPU, and the PyTorch
reference otherwise. Renderers, the trainer and the command line ask :func:`resolve`;
nothing else reads the registry.
"""

from __future__ import annotations

import logging

import torch

from splatkit.renderer.backends import cpu, gsplat_backend, torch_ref, torch_ref_2dgs
from splatkit.renderer.backends.base import Backend, RasterInputs, RasterSettings

__all__ = ["BACKENDS", "Backend", "RasterInputs", "RasterSettings", "available_backends", "resolve"]

logger = logging.getLogger("splatkit")

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "torch",
            "the reference in plain PyTorch: any device, any float dtype; the oracle",
            project=torch_ref.project,
            composite=torch_ref.composite_over,
            project_2dgs=torch_ref_2dgs.project,
            composite_2dgs=torch_ref_2dgs.composite,
            options=frozenset({"max_chunk_elements"}),
        ),
        Backend(
            "cpu",
            "compiled C++ kernels, float32 on the CPU, all cores",
            project=cpu.project,
            composite=cpu.composite,
            project_2dgs=cpu.project_2dgs,
            composite_2dgs=cpu.composite_2dgs,
            device="cpu",
            fixed_tile_size=16,
            unavailable_reason=cpu.unavailable_reason,
            sh_apart=True,
        ),
        Backend(
            "gsplat",
            "gsplat's CUDA kernels (pip install 'splatkit[cuda]')",
            project=gsplat_backend.project,
            composite=gsplat_backend.composite,
            fused=gsplat_backend.rasterize,
            fused_2dgs=gsplat_backend.rasterize_2dgs,
            options=frozenset(gsplat_backend.OPTIONS),
            device="cuda",
            unavailable_reason=gsplat_backend.unavailable_reason,
        ),
    )
}
"""Every backend by name."""

_warned: set[str] = set()


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def _auto(device: torch.device | str, dtype: torch.dtype) -> str:
    """What ``"auto"`` means for tensors on ``device`` of ``dtype``: gsplat on CUDA, the
    compiled kernels for float32 on the CPU, else the reference, with one warning naming
    why a faster backend is unavailable."""
    kind = torch.device(device).type
    fast = "gsplat" if kind == "cuda" else "cpu" if (kind == "cpu" and dtype == torch.float32) else None
    if fast is None:
        return "torch"
    reason = BACKENDS[fast].unavailable_reason()
    if reason is None:
        return fast
    if fast not in _warned:
        _warned.add(fast)
        logger.warning(
            "the %s rasterizer is unavailable (%s); using the reference PyTorch rasterizer, which is much slower",
            fast,
            reason,
        )
    return "torch"


def resolve(
    name: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    kind: str = "3dgs",
    sharded: bool = False,
) -> Backend:
    """The backend ``name`` (or ``"auto"``) stands for, for ``kind`` (``"3dgs"`` or ``"2dgs"``)
    Gaussians held as ``dtype`` tensors on ``device``, sharded across ranks or not.

    An unknown name, or a backend that cannot render ``kind`` that way, is a ValueError
    naming the backends that can. ``"auto"`` on the CPU builds the compiled kernels on
    first use, or falls back to the reference with one warning.
    """
    if kind not in ("3dgs", "2dgs"):
        raise ValueError(f"kind must be '3dgs' or '2dgs', got {kind!r}")
    concrete = _auto(device, dtype) if name == "auto" else name
    if concrete not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {name!r}; available: {', '.join(available_backends())}")
    backend = BACKENDS[concrete]
    if not backend.supports(kind, sharded):
        able = [n for n, b in BACKENDS.items() if b.supports(kind, sharded)]
        what = f"{'sharded ' if sharded else ''}{kind.upper()} rendering"
        hint = " (it has no separate projection and compositing stages)" if sharded else ""
        raise ValueError(f"backend {concrete!r} does not support {what}{hint}; backends that do: {', '.join(able)}")
    return backend
