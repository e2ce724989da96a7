"""Reference 2DGS rasterizer in plain PyTorch: the oracle for every 2DGS backend.

Same two stages as the 3DGS reference (:mod:`.torch_ref`): a gradient-free dense test
per tile lists the (pixel, surfel) pairs whose alpha reaches 1/255, front to back by
centre depth; then only those pairs are evaluated with autograd and composited with a
segmented scan of log-transmittance. Per pixel it returns the features (colour, and
depth for the depth modes), alpha, the blended camera-facing normal, the distortion
``sum_{i,j<i} 2 w_i w_j (d_i - d_j)`` of the depths along the ray (gsplat's and
nerfacc's form of the Mip-NeRF 360 loss) and the median depth (the depth of the last
surfel reached while the transmittance is still above 0.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from splatkit.renderer.backends.torch_ref import pair_weights, tile_pairs, tile_pixels
from splatkit.renderer.projection_2dgs import ProjectedSurfels, project_surfels, surfel_alpha

if TYPE_CHECKING:
    from splatkit.renderer.backends.base import RasterInputs, RasterSettings


@torch.no_grad()
def _contributing_pairs(
    proj: ProjectedSurfels, width: int, height: int, tile_size: int, max_chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixel [M], camera * N + surfel [M])`` with alpha >= 1/255, grouped by pixel, front to back."""
    C, N = proj.depths.shape
    mean = proj.means2d.reshape(C * N, 2)
    M = proj.ray_transforms.reshape(C * N, 3, 3)
    opac = proj.opacities.reshape(C * N)
    centres = tile_pixels(tile_size, mean.device).to(mean.dtype) + 0.5  # [P, 2]

    def hit(origin: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        pix = origin[:, None, None, :].to(mean.dtype) + centres[None, :, None, :]  # [T, P, 1, 2]
        return surfel_alpha(pix, mean[g][:, None], M[g][:, None], opac[g][:, None]) > 0

    # ~12 temporaries per candidate in the intersection test
    return tile_pairs(
        proj.means2d, proj.radii, proj.depths, width, height, tile_size, max_chunk_elements, hit, temporaries=12
    )


def composite_surfels(
    proj: ProjectedSurfels,
    feats: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    max_chunk_elements: int = 1 << 22,
) -> dict[str, torch.Tensor]:
    """Composite projected surfels front to back. Returns per-pixel ``[C, H, W, k]``
    tensors: ``feats``, ``alphas``, ``normals`` (camera space), ``depth_sum`` (sum of
    w d), ``distort`` and ``median`` (0 where no surfel reaches T < 0.5 first)."""
    C, N = proj.depths.shape
    D = feats.shape[-1]
    n_pixels = C * height * width
    detached = ProjectedSurfels(
        proj.means2d.detach(),
        proj.ray_transforms.detach(),
        proj.normals.detach(),
        proj.opacities.detach(),
        proj.depths.detach(),
        proj.radii,
        proj.colors,
    )
    pix, gauss = _contributing_pairs(detached, width, height, tile_size, max_chunk_elements)
    dtype = feats.dtype
    local = pix % (width * height)
    xy = torch.stack([local % width, local // width], dim=-1).to(dtype) + 0.5
    means2d = proj.means2d.reshape(C * N, 2)
    M = proj.ray_transforms.reshape(C * N, 3, 3)
    alpha = surfel_alpha(xy, means2d[gauss], M[gauss], proj.opacities.reshape(C * N)[gauss])

    w, T_before, segments = pair_weights(pix, alpha)
    alive = w > 0  # before the pixel stopped (alpha >= 1/255 for every listed pair)

    depth = proj.depths.reshape(C * N)[gauss]
    wd_before = segments.exclusive_cumsum((w * depth).double()).to(dtype)
    distort = 2.0 * w * (depth * (1.0 - T_before) - wd_before)
    contrib = torch.cat(
        [
            w[:, None] * feats.reshape(C * N, D)[gauss],
            w[:, None],
            w[:, None] * proj.normals.reshape(C * N, 3)[gauss],
            (w * depth)[:, None],
            distort[:, None],
        ],
        dim=-1,
    )
    out = torch.zeros(n_pixels, contrib.shape[1], dtype=dtype, device=feats.device).index_add(0, pix, contrib)

    # Median: the last pair per pixel reached with T > 0.5 (before termination).
    cand = alive & (T_before > 0.5)
    idx = torch.arange(pix.numel(), device=pix.device)
    last = torch.full((n_pixels,), -1, dtype=torch.int64, device=pix.device)
    last.scatter_reduce_(0, pix[cand], idx[cand], reduce="amax")
    has = last >= 0
    median = torch.zeros(n_pixels, dtype=dtype, device=feats.device)
    median = median.index_put((torch.nonzero(has)[:, 0],), depth[last[has]])

    out = out.reshape(C, height, width, contrib.shape[1])
    return {
        "feats": out[..., :D],
        "alphas": out[..., D : D + 1],
        "normals": out[..., D + 1 : D + 4],
        "depth_sum": out[..., D + 4 : D + 5],
        "distort": out[..., D + 5 : D + 6],
        "median": median.reshape(C, height, width, 1),
    }


def project(inputs: RasterInputs, settings: RasterSettings) -> tuple[ProjectedSurfels, torch.Tensor]:
    """The projection stage: :func:`~splatkit.renderer.projection_2dgs.project_surfels` and
    no backend-specific extra (``[C, N, 0]``)."""
    proj = project_surfels(*inputs.args(), settings.near_plane, settings.far_plane, settings.radius_clip)
    return proj, proj.depths.new_zeros(*proj.depths.shape, 0)


def composite(
    proj: ProjectedSurfels,
    extra: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    max_chunk_elements: int = 1 << 22,
) -> dict:
    """The compositing stage: the outputs of :func:`rasterize_2dgs` but ``means2d``/``radii``/``depths``."""
    del extra
    out = composite_surfels(proj, proj.colors, width, height, tile_size, max_chunk_elements)
    return {
        "colors": out["feats"],
        "alphas": out["alphas"],
        "normals_camera": out["normals"],
        "depth_sum": out["depth_sum"],
        "distort": out["distort"],
        "median_depth": out["median"],
    }
