"""Rasterizer backends. Each knows only Gaussians and cameras, nothing of training.

A backend is a function with the signature of :func:`splatkit.renderer.rasterize`
(minus ``backend``). ``"auto"`` picks the fastest one that runs on the tensors' device:
gsplat on CUDA (when installed and built), the compiled kernels on the CPU, and the
PyTorch reference otherwise.
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple

import torch

from splatkit.renderer.backends import cpu, gsplat_backend, torch_ref, torch_ref_2dgs
from splatkit.renderer.projection import project_gaussians

logger = logging.getLogger("splatkit")

BACKENDS: dict[str, Callable] = {"torch": torch_ref.rasterize, "cpu": cpu.rasterize, "gsplat": gsplat_backend.rasterize}
# Switches only gsplat implements; asking another backend for them is an error.
GSPLAT_OPTIONS = ("packed", "absgrad", "sparse_grad")
# 2DGS (surfel) rasterizers: same arguments, outputs as torch_ref_2dgs.rasterize_2dgs.
BACKENDS_2DGS: dict[str, Callable] = {"torch": torch_ref_2dgs.rasterize_2dgs, "cpu": cpu.rasterize_2dgs,
                                      "gsplat": gsplat_backend.rasterize_2dgs}


class Stages(NamedTuple):
    """A 3DGS backend split in two, for sharded (multi-process) rendering.

    ``project(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
    sh_degree, near_plane, far_plane, eps2d, radius_clip, rasterize_mode)`` returns a
    :class:`~splatkit.renderer.projection.Projected`; ``composite(proj, feats, width,
    height, backgrounds, tile_size)`` returns ``(renders, alphas)``.
    """

    project: Callable
    composite: Callable


STAGES: dict[str, Stages] = {"torch": Stages(project_gaussians, torch_ref.composite_over),
                             "cpu": Stages(cpu.project, cpu.composite),
                             "gsplat": Stages(gsplat_backend.project, gsplat_backend.composite)}
# 2DGS: project(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
# sh_degree, near_plane, far_plane, radius_clip) -> (ProjectedSurfels, extra [C, N, E])
# and composite(proj, extra, width, height, tile_size) -> the rasterizers' output dict.
STAGES_2DGS: dict[str, Stages] = {"torch": Stages(torch_ref_2dgs.project, torch_ref_2dgs.composite),
                                  "cpu": Stages(cpu.project_2dgs, cpu.composite_2dgs)}
_warned: set[str] = set()


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def _auto(device: torch.device | str, dtype: torch.dtype) -> str:
    """What ``"auto"`` means for tensors on ``device`` of ``dtype``, for 3DGS and 2DGS alike:
    gsplat on CUDA, the compiled kernels for float32 on the CPU, else the reference, with
    one warning naming why a faster backend is unavailable."""
    kind = torch.device(device).type
    if kind == "cuda":
        if gsplat_backend.is_available():
            return "gsplat"
        if "gsplat" not in _warned:
            _warned.add("gsplat")
            logger.warning("rendering on CUDA without gsplat (%s); using the reference PyTorch rasterizer on "
                           "the GPU, which is much slower", gsplat_backend.unavailable_reason())
    elif kind == "cpu" and dtype == torch.float32:
        if cpu.is_available():
            return "cpu"
        if "cpu" not in _warned:
            _warned.add("cpu")
            logger.warning("the compiled CPU rasterizer is unavailable (%s); using the reference PyTorch "
                           "rasterizer, which is much slower", cpu.unavailable_reason())
    return "torch"


def resolve_backend_name(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend ``name`` stands for with tensors on ``device`` of ``dtype``.

    ``"auto"`` on the CPU is the compiled backend (built on first use), or the
    reference with one warning if it cannot be built; float64 always uses the reference.
    """
    if name == "auto":
        return _auto(device, dtype)
    if name not in BACKENDS:
        raise ValueError(f"unknown rasterizer backend {name!r}; available: {', '.join(available_backends())}")
    return name


def resolve_backend_name_2dgs(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> str:
    """Like :func:`resolve_backend_name` for the 2DGS rasterizers."""
    if name == "auto":
        return _auto(device, dtype)
    if name not in BACKENDS_2DGS:
        raise ValueError(f"unknown 2DGS rasterizer backend {name!r}; available: {', '.join(BACKENDS_2DGS)}")
    return name
