"""NVIDIA GPUs through gsplat's CUDA kernels (optional: ``pip install splatkit[cuda]``).

gsplat is imported only when CUDA tensors are rendered, so CPU-only installs never
touch it. Arguments and outputs are gsplat's own; this module only forwards them and
names the results the way every splatkit backend does.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from splatkit.renderer.backends.base import RasterInputs, RasterSettings


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """Why gsplat cannot run here, or None when it can (its CUDA extension is built
    on first use, which this triggers)."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import gsplat  # noqa: F401
    except ImportError as e:
        return f"gsplat is not installed ({e}); install it with: pip install 'splatkit[cuda]'"
    try:
        from gsplat.cuda._backend import _C
    except Exception as e:  # a failed JIT build raises many kinds of errors
        return f"gsplat's CUDA extension failed to load or build: {e}"
    if _C is None:
        return "gsplat's CUDA extension is not built (check the CUDA toolkit and TORCH_CUDA_ARCH_LIST)"
    return None


def is_available() -> bool:
    return unavailable_reason() is None


OPTIONS = ("packed", "absgrad", "sparse_grad")
"""Switches only gsplat implements."""


def rasterize(
    inputs: RasterInputs,
    settings: RasterSettings,
    packed: bool = False,
    absgrad: bool = False,
    sparse_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """gsplat implementation of :func:`splatkit.renderer.rasterize` (arguments there).

    Extra switches: ``packed`` (sparse per-camera lists: ``meta["means2d"]`` and
    ``meta["radii"]`` are ``[nnz, ...]`` with ``meta["gaussian_ids"]``/``["camera_ids"]``),
    ``absgrad`` (``meta["means2d"].absgrad`` after backward, for AbsGS densification) and
    ``sparse_grad`` (sparse COO gradients for means, quats and scales; needs ``packed``).
    """
    g = inputs
    _require_cuda(g.means)
    if sparse_grad and not packed:
        raise ValueError("sparse_grad=True needs packed=True (gsplat's rule)")
    import gsplat

    renders, alphas, meta = gsplat.rasterization(
        means=g.means,
        quats=g.quats,
        scales=g.scales,
        opacities=g.opacities,
        colors=g.colors,
        viewmats=g.viewmats,
        Ks=g.Ks,
        width=g.width,
        height=g.height,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        radius_clip=settings.radius_clip,
        eps2d=settings.eps2d,
        sh_degree=g.sh_degree,
        packed=packed,
        tile_size=settings.tile_size,
        backgrounds=g.backgrounds,
        render_mode=settings.render_mode,
        sparse_grad=sparse_grad,
        absgrad=absgrad,
        rasterize_mode=settings.rasterize_mode,
    )
    out = {
        "means2d": meta["means2d"],
        "radii": meta["radii"],
        "depths": meta["depths"],
        "conics": meta["conics"],
        "opacities": meta["opacities"],
        "width": g.width,
        "height": g.height,
        "n_cameras": g.n_cameras,
        "tile_size": settings.tile_size,
        "packed": packed,
        "gaussian_ids": meta.get("gaussian_ids"),
        "camera_ids": meta.get("camera_ids"),
    }
    return renders, alphas, out


def _require_cuda(means: torch.Tensor) -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"backend 'gsplat' is unavailable: {reason}")
    if means.device.type != "cuda":
        raise ValueError(f"backend 'gsplat' needs CUDA tensors; means is on {means.device}")


def project(inputs: RasterInputs, settings: RasterSettings):
    """The projection half of gsplat's ``rasterization`` (unpacked), as a
    :class:`~splatkit.renderer.projection.Projected`: the stage sharded rendering
    exchanges between ranks."""
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree = inputs.args()
    _require_cuda(means)
    import gsplat

    from splatkit.renderer.projection import Projected, camera_features
    from splatkit.splat.conventions import camera_centers

    C, N = viewmats.shape[0], means.shape[0]
    radii, means2d, depths, conics, comp = gsplat.fully_fused_projection(
        means,
        None,
        quats,
        scales,
        viewmats,
        Ks,
        width,
        height,
        eps2d=settings.eps2d,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        radius_clip=settings.radius_clip,
        calc_compensations=settings.rasterize_mode == "antialiased",
        opacities=opacities,
    )
    opac = opacities[None].expand(C, N)
    if comp is not None:
        opac = opac * comp
    if sh_degree is None:
        feats = camera_features(colors, C)
    else:
        dirs = means[None] - camera_centers(viewmats)[:, None]
        feats = gsplat.spherical_harmonics(
            sh_degree, dirs, colors[None].expand(C, -1, -1, -1), masks=(radii > 0).all(dim=-1)
        )
        feats = torch.clamp_min(feats + 0.5, 0.0)  # gsplat's (and the reference's) colour offset
    return Projected(means2d=means2d, conics=conics, opacities=opac, depths=depths, radii=radii, colors=feats)


def composite(
    proj, feats: torch.Tensor, width: int, height: int, backgrounds: torch.Tensor | None = None, tile_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """The compositing half of gsplat's ``rasterization``: tile intersection and
    ``rasterize_to_pixels`` over ``backgrounds [C, D]`` (None: black)."""
    _require_cuda(proj.means2d)
    import math

    import gsplat

    C = proj.means2d.shape[0]
    if C == 0:  # a rank with no cameras of its own in a sharded render, as the other backends allow
        return feats.new_zeros(0, height, width, feats.shape[-1]), feats.new_zeros(0, height, width, 1)
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    _, isect_ids, flatten_ids = gsplat.isect_tiles(proj.means2d, proj.radii, proj.depths, tile_size, tw, th)
    offsets = gsplat.isect_offset_encode(isect_ids, C, tw, th).reshape(C, th, tw)
    return gsplat.rasterize_to_pixels(
        proj.means2d,
        proj.conics,
        feats.contiguous(),
        proj.opacities,
        width,
        height,
        tile_size,
        offsets,
        flatten_ids,
        backgrounds=backgrounds,
    )


def rasterize_2dgs(inputs: RasterInputs, settings: RasterSettings) -> dict:
    """gsplat's ``rasterization_2dgs`` with the outputs named as the reference's
    :meth:`splatkit.renderer.backends.base.Backend.rasterize_2dgs`."""
    means, viewmats, scales = inputs.means, inputs.viewmats, inputs.scales
    _require_cuda(means)
    import gsplat

    # gsplat takes [N, 3] scales and uses the first two.
    scales3 = torch.cat([scales, torch.ones_like(scales[:, :1])], dim=-1)
    renders, alphas, normals, _, distort, median, meta = gsplat.rasterization_2dgs(
        means=means,
        quats=inputs.quats,
        scales=scales3,
        opacities=inputs.opacities,
        colors=inputs.colors,
        viewmats=viewmats,
        Ks=inputs.Ks,
        width=inputs.width,
        height=inputs.height,
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        radius_clip=settings.radius_clip,
        sh_degree=inputs.sh_degree,
        packed=False,
        tile_size=settings.tile_size,
        render_mode="RGB+D",
        distloss=True,
    )
    # gsplat turns the blended normals to world space; the reference returns camera space.
    normals_camera = torch.einsum("cij,chwj->chwi", viewmats[:, :3, :3], normals)
    return {
        "colors": renders[..., :-1],
        "alphas": alphas,
        "normals_camera": normals_camera,
        "depth_sum": renders[..., -1:],
        "distort": distort,
        "median_depth": median,
        # gsplat's screen-space gradient for 2DGS densification (see screen_translation)
        "means2d": meta["gradient_2dgs"],
        "radii": meta["radii"],
        "depths": meta["depths"],
    }
