"""Compiled CPU backend: the reference maths in multithreaded C++ (``splatkit_cpu.cpp``).

Differences from the reference that do not change results: 16x16 tiles are tested
against each Gaussian's exact alpha >= 1/255 ellipse (not its bounding box), rows of
a tile the ellipse misses are skipped, tiles stop as soon as every pixel is saturated,
and the backward pass only revisits the rows in which the forward pass found a
contributing Gaussian. Computation is float32.
"""

from __future__ import annotations

import torch

from splatkit.renderer.backends.cpu.build import KernelBuildError, load
from splatkit.renderer.backends.cpu.kernels import ProjectFn, RasterizeFn

__all__ = ["KernelBuildError", "is_available", "rasterize", "unavailable_reason"]


def is_available() -> bool:
    """True when the kernels are (or can be) built and loaded on this machine."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why the kernels cannot be used here, or None when they can."""
    try:
        load()
        return None
    except KernelBuildError as e:
        return str(e)


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    rasterize_mode: str = "classic",
    render_mode: str = "RGB",
    tile_size: int = 16,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Compiled implementation of :func:`splatkit.renderer.rasterize` (arguments there).

    ``tile_size`` only matters for speed and is ignored (16); ``num_threads`` defaults
    to ``torch.get_num_threads()``.
    """
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}
    for name, t in tensors.items():
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(f"backend 'cpu' needs float32 CPU tensors; {name} is {t.dtype} on {t.device} "
                             "(use backend='torch' for float64, or a GPU backend on CUDA)")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    nthreads = num_threads or torch.get_num_threads()
    C, N = viewmats.shape[0], means.shape[0]
    use_sh = sh_degree is not None
    means2d, conics, opac, depths, radii, sh_colors = ProjectFn.apply(
        means, quats, scales, opacities, colors if use_sh else None, viewmats, Ks, width, height,
        sh_degree if use_sh else -1, near_plane, far_plane, eps2d, radius_clip, rasterize_mode == "antialiased",
        nthreads,
    )
    if use_sh:
        feats = sh_colors
    else:
        feats = colors[None].expand(C, N, colors.shape[-1]) if colors.dim() == 2 else colors
    if render_mode in ("D", "ED"):
        feats = depths[..., None]
    elif render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
    bg = None
    if backgrounds is not None and render_mode not in ("D", "ED"):
        bg = backgrounds
        if bg.shape[-1] < feats.shape[-1]:  # depth composites over 0
            bg = torch.cat([bg, bg.new_zeros(C, feats.shape[-1] - bg.shape[-1])], dim=-1)
    renders, alphas = RasterizeFn.apply(means2d, conics, feats.contiguous(), opac, bg, radii, depths, width,
                                        height, nthreads)
    if render_mode.endswith("ED"):
        depth = renders[..., -1:] / alphas.clamp_min(1e-10)
        renders = torch.cat([renders[..., :-1], depth], dim=-1)
    meta = {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": 16,
        "packed": False,
        "gaussian_ids": None,
    }
    return renders, alphas, meta
