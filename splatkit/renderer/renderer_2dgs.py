"""2D Gaussian Splatting renderer (surfels; see :mod:`splatkit.renderer.projection_2dgs`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from splatkit.renderer.base import SplatRenderer, SplatRenderOutput
from splatkit.renderer.functional import rasterize_2dgs
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import opacity_activation, scale_activation
from splatkit.splat.sh import active_bands


@dataclass
class Splat2DGSRenderer(SplatRenderer):
    """Renders 2DGS surfels with :func:`splatkit.renderer.rasterize_2dgs`.

    Besides colour, alpha and expected depth (``depths``) the output's ``extras`` hold
    ``normals`` (world space, alpha-weighted), ``normals_from_depth`` (world space),
    ``distortion`` and ``median_depth``, each ``[C, H, W, k]``, which
    :class:`~splatkit.loss_fn.Splat2DGSLossFn` regularises.
    """

    backend: str = "auto"
    """Rasterizer: "auto" (gsplat on CUDA, compiled kernels on CPU), "torch" (reference), "cpu", "gsplat"."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this depth are not drawn."""
    far_plane: float = 1e10
    """Gaussians farther from the camera than this depth are not drawn."""
    radius_clip: float = 0.0
    """Skip surfels whose screen radius is at most this many pixels."""
    tile_size: int = 16
    """Side of the screen tiles Gaussians are binned into, in pixels."""
    depth_mode: str = "expected"
    """Depth the normals-from-depth use: "expected" (unbounded scenes) or "median" (objects), as in 2DGS."""
    distributed: bool = False
    """Sharded rendering (:mod:`splatkit.renderer.sharded`); the trainer sets it for ``dist_mode="shard"``."""

    gaussian_kind = "2dgs"  # two scales per Gaussian: the trainer initialises surfels

    def render(
        self,
        params: Mapping[str, torch.Tensor],
        cameras: SplatCameras,
        sh_degree: int,
        backgrounds: torch.Tensor | None = None,
    ) -> SplatRenderOutput:
        sh0, sh_rest = active_bands(params["sh0"], params["shN"], sh_degree)  # joined only where a backend must
        renders, alphas, normals, from_depth, distort, median, meta = rasterize_2dgs(
            params["means"],
            params["quats"],
            scale_activation(params["scales"]),
            opacity_activation(params["opacities"]),
            sh0,
            cameras.viewmats,
            cameras.Ks,
            cameras.width,
            cameras.height,
            sh_degree=sh_degree,
            backgrounds=backgrounds,
            backend=self.backend,
            near_plane=self.near_plane,
            far_plane=self.far_plane,
            radius_clip=self.radius_clip,
            render_mode="RGB+ED",
            depth_mode=self.depth_mode,
            tile_size=self.tile_size,
            distributed=self.distributed,
            sh_rest=sh_rest,
        )
        return SplatRenderOutput(
            images=renders[..., :3],
            alphas=alphas,
            means2d=meta["means2d"],
            radii=meta["radii"],
            width=cameras.width,
            height=cameras.height,
            depths=renders[..., 3:4],
            backgrounds=backgrounds,
            extras={
                "normals": normals,
                "normals_from_depth": from_depth,
                "distortion": distort,
                "median_depth": median,
            },
        )
