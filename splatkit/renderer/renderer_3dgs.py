"""3D Gaussian Splatting renderer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from splatkit.renderer.base import SplatRenderer, SplatRenderOutput
from splatkit.renderer.functional import rasterize
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import opacity_activation, scale_activation
from splatkit.splat.sh import active_bands


@dataclass
class Splat3DGSRenderer(SplatRenderer):
    """Renders 3D Gaussians with :func:`splatkit.renderer.rasterize`."""

    backend: str = "auto"
    """Rasterizer: "auto" (fastest for the device), "torch" (reference), ..."""
    rasterize_mode: str = "classic"
    """"classic" or "antialiased" (opacity compensation of the screen-space blur)."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this depth are not drawn."""
    far_plane: float = 1e10
    """Gaussians farther from the camera than this depth are not drawn."""
    eps2d: float = 0.3
    """Screen-space blur added to every 2D covariance, in pixels^2."""
    radius_clip: float = 0.0
    """Skip Gaussians whose screen radius is at most this many pixels."""
    tile_size: int = 16
    """Side of the screen tiles Gaussians are binned into, in pixels."""
    render_depth: bool = False
    """Also render expected depth (``SplatRenderOutput.depths``)."""
    packed: bool = False
    """gsplat only: packed per-camera lists (less memory for large scenes)."""
    absgrad: bool = False
    """gsplat only: accumulate absolute screen-space gradients (AbsGS); pair with
    ``SplatDefaultDensification(absgrad=True, grow_grad2d=0.0008)``."""
    sparse_grad: bool = False
    """gsplat only, with packed: sparse gradients for means, quats and scales; the trainer
    then uses sparse Adam."""
    distributed: bool = False
    """Sharded rendering: ``params`` are this rank's shard and every rank renders together
    (:mod:`splatkit.renderer.sharded`); the trainer sets it for ``dist_mode="shard"``."""

    def render(
        self,
        params: Mapping[str, torch.Tensor],
        cameras: SplatCameras,
        sh_degree: int,
        backgrounds: torch.Tensor | None = None,
    ) -> SplatRenderOutput:
        sh0, sh_rest = active_bands(params["sh0"], params["shN"], sh_degree)  # joined only where a backend must
        renders, alphas, meta = rasterize(
            means=params["means"],
            quats=params["quats"],
            scales=scale_activation(params["scales"]),
            opacities=opacity_activation(params["opacities"]),
            colors=sh0,
            sh_rest=sh_rest,
            viewmats=cameras.viewmats,
            Ks=cameras.Ks,
            width=cameras.width,
            height=cameras.height,
            sh_degree=sh_degree,
            backgrounds=backgrounds,
            backend=self.backend,
            near_plane=self.near_plane,
            far_plane=self.far_plane,
            eps2d=self.eps2d,
            radius_clip=self.radius_clip,
            rasterize_mode=self.rasterize_mode,
            render_mode="RGB+ED" if self.render_depth else "RGB",
            tile_size=self.tile_size,
            distributed=self.distributed,
            packed=self.packed,
            absgrad=self.absgrad,
            sparse_grad=self.sparse_grad,
        )
        return SplatRenderOutput(
            images=renders[..., :3],
            alphas=alphas,
            means2d=meta["means2d"],
            radii=meta["radii"],
            width=cameras.width,
            height=cameras.height,
            depths=renders[..., 3:4] if self.render_depth else None,
            backgrounds=backgrounds,
            gaussian_ids=meta.get("gaussian_ids"),
            camera_ids=meta.get("camera_ids"),
            extras={k: v for k, v in meta.items() if k not in ("means2d", "radii", "gaussian_ids", "camera_ids")},
        )
