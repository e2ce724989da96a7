"""Compiled CPU backend: the reference maths in multithreaded C++ (``splatkit_cpu.cpp``).

:func:`project` / :func:`composite` are the 3DGS stages, :func:`project_2dgs` /
:func:`composite_2dgs` those of 2D Gaussian surfels (2DGS). Differences from the
references that do not change results: 16x16 tiles are tested against each splat's exact
alpha >= 1/255 region (not its bounding box), rows and pixel vectors of a tile the region
misses are skipped, tiles stop as soon as every pixel is saturated, and the backward pass
only revisits the pixel vectors in which the forward pass found a contributing splat.
Computation is float32 (the surfel projection runs in double and rounds its outputs to
float32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from splatkit.renderer.backends.cpu.build import KernelBuildError, load
from splatkit.renderer.backends.cpu.kernels import Project2DGSFn, ProjectFn, Rasterize2DGSFn, RasterizeFn
from splatkit.renderer.projection import Projected, camera_features
from splatkit.renderer.projection_2dgs import ProjectedSurfels

if TYPE_CHECKING:
    from splatkit.renderer.backends.base import RasterInputs, RasterSettings

__all__ = [
    "KernelBuildError",
    "composite",
    "composite_2dgs",
    "is_available",
    "project",
    "project_2dgs",
    "unavailable_reason",
]


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


def _check_tensors(inputs: RasterInputs) -> None:
    """Every tensor the projection reads must be float32 on the CPU."""
    names = ("means", "quats", "scales", "opacities", "colors", "sh_rest", "viewmats", "Ks")
    for name in names:
        t = getattr(inputs, name)
        if t is None:
            continue
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(
                f"backend 'cpu' needs float32 CPU tensors; {name} is {t.dtype} on {t.device} "
                "(use backend='torch' for float64, or a GPU backend on CUDA)"
            )


def project(inputs: RasterInputs, settings: RasterSettings, num_threads: int | None = None) -> Projected:
    """Compiled :func:`splatkit.renderer.projection.project_gaussians` (same result); the projection stage."""
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree = inputs.args()
    rasterize_mode = settings.rasterize_mode
    _check_tensors(inputs)
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")
    C = viewmats.shape[0]
    use_sh = sh_degree is not None
    means2d, conics, opac, depths, radii, sh_colors = ProjectFn.apply(
        means,
        quats,
        scales,
        opacities,
        colors if use_sh else None,
        inputs.sh_rest if use_sh else None,
        viewmats,
        Ks,
        width,
        height,
        sh_degree if use_sh else -1,
        settings.near_plane,
        settings.far_plane,
        settings.eps2d,
        settings.radius_clip,
        rasterize_mode == "antialiased",
        num_threads or torch.get_num_threads(),
    )
    feats = sh_colors if use_sh else camera_features(colors, C)
    return Projected(means2d=means2d, conics=conics, opacities=opac, depths=depths, radii=radii, colors=feats)


def composite(
    proj: Projected,
    feats: torch.Tensor,
    width: int,
    height: int,
    backgrounds: torch.Tensor | None = None,
    tile_size: int = 16,
    num_threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled compositing of projected Gaussians over ``backgrounds [C, D]`` (None: black):
    ``(renders [C, H, W, D], alphas [C, H, W, 1])``. ``tile_size`` is ignored (16)."""
    bg = None if backgrounds is None else backgrounds.contiguous()
    return RasterizeFn.apply(
        proj.means2d,
        proj.conics,
        feats.contiguous(),
        proj.opacities,
        bg,
        proj.radii,
        proj.depths,
        width,
        height,
        num_threads or torch.get_num_threads(),
    )


def project_2dgs(inputs: RasterInputs, settings: RasterSettings, num_threads: int | None = None):
    """The compiled 2DGS projection stage: ``(ProjectedSurfels, shift [C, N, 2])``, where
    ``shift`` is the pixel the kernel recentred each surfel's ``M`` on (for float32 accuracy)."""
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree = inputs.args()
    _check_tensors(inputs)
    nthreads = num_threads or torch.get_num_threads()
    C, N = viewmats.shape[0], means.shape[0]
    use_sh = sh_degree is not None
    means2d, Ms, shift, normals, depths, radii, sh_colors = Project2DGSFn.apply(
        means,
        quats,
        scales[:, :2],
        opacities.detach(),
        colors if use_sh else None,
        inputs.sh_rest if use_sh else None,
        viewmats,
        Ks,
        width,
        height,
        sh_degree if use_sh else -1,
        settings.near_plane,
        settings.far_plane,
        settings.radius_clip,
        nthreads,
    )
    feats = sh_colors if use_sh else camera_features(colors, C)
    # opacities are shared by the cameras; autograd sums their per-camera gradients
    opac = opacities[None].expand(C, N)
    return ProjectedSurfels(means2d, Ms, normals, opac, depths, radii, feats), shift


def composite_2dgs(
    proj, shift: torch.Tensor, width: int, height: int, tile_size: int = 16, num_threads: int | None = None
) -> dict:
    """The compiled 2DGS compositing stage (``tile_size`` is ignored: 16)."""
    img, alpha, normal_img, depth_sum, distort, median = Rasterize2DGSFn.apply(
        proj.means2d,
        proj.ray_transforms,
        proj.normals,
        proj.depths,
        proj.opacities.contiguous(),
        proj.colors.contiguous(),
        shift.contiguous(),
        proj.radii,
        width,
        height,
        num_threads or torch.get_num_threads(),
    )
    return {
        "colors": img,
        "alphas": alpha,
        "normals_camera": normal_img,
        "depth_sum": depth_sum,
        "distort": distort,
        "median_depth": median,
    }
