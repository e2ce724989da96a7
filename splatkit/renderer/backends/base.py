"""The backend type: what a rasterizer backend is, and the one way every caller renders with it.

A backend is two stages per primitive kind, with one signature each:

- ``project(inputs: RasterInputs, settings: RasterSettings)`` turns Gaussians into
  per-camera footprints (:class:`~splatkit.renderer.projection.Projected` for 3DGS;
  ``(ProjectedSurfels, extra [C, N, E])`` for 2DGS surfels, ``extra`` being whatever the
  backend's compositing needs beside the footprints);
- ``composite`` blends footprints into images: ``(proj, feats, width, height,
  backgrounds, tile_size) -> (renders, alphas)`` for 3DGS, ``(proj, extra, width, height,
  tile_size) -> dict`` for 2DGS.

:meth:`Backend.rasterize` and :meth:`Backend.rasterize_2dgs` compose the stages the same
way for every backend; a backend with a faster one-call rasterizer (gsplat) gives it as
``fused`` / ``fused_2dgs``. Sharded rendering (:mod:`splatkit.renderer.sharded`) runs the
same stages with an exchange in between, so a backend that has both stages shards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splatkit.renderer.projection import background_for_mode, features_for_mode, finish_depth, projection_meta
from splatkit.renderer.projection_2dgs import screen_translation
from splatkit.splat.sh import join_bands


@dataclass(frozen=True)
class RasterSettings:
    """Rasterization settings shared by every backend, with gsplat's defaults and names."""

    near_plane: float = 0.01
    far_plane: float = 1e10
    eps2d: float = 0.3
    """Screen-space blur added to every 2D covariance, in px² (3DGS)."""
    radius_clip: float = 0.0
    """Gaussians whose screen radius is at most this many pixels are skipped."""
    rasterize_mode: str = "classic"
    """``"classic"`` or ``"antialiased"`` (opacity compensation of the blur, Mip-Splatting) (3DGS)."""
    render_mode: str = "RGB"
    tile_size: int = 16


@dataclass(frozen=True)
class RasterInputs:
    """What is rendered: Gaussians in their activated form and ``C`` pinhole cameras
    (shapes and conventions of :func:`splatkit.renderer.rasterize`)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int
    sh_degree: int | None = None
    backgrounds: torch.Tensor | None = None
    sh_rest: torch.Tensor | None = None
    """With ``sh_degree``: the SH bands above band 0 ``[N, K - 1, 3]``, kept apart from
    ``colors`` (then band 0, ``[N, 1, 3]``) as the model keeps them. Backends whose
    projection reads them apart (``Backend.sh_apart``) take them so; the others get
    :meth:`joined` inputs."""

    def joined(self) -> RasterInputs:
        """The same inputs with every SH coefficient in ``colors`` (``sh_rest`` None)."""
        if self.sh_rest is None:
            return self
        return dataclasses.replace(self, colors=join_bands(self.colors, self.sh_rest), sh_rest=None)

    def args(self) -> tuple:
        """``(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree)``:
        the leading positional arguments of the projection functions."""
        g = self
        return (g.means, g.quats, g.scales, g.opacities, g.colors, g.viewmats, g.Ks, g.width, g.height, g.sh_degree)

    @property
    def n_cameras(self) -> int:
        return self.viewmats.shape[0]

    def with_cameras(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int) -> RasterInputs:
        """The same Gaussians seen by other cameras (no backgrounds)."""
        return dataclasses.replace(self, viewmats=viewmats, Ks=Ks, width=width, height=height, backgrounds=None)


def _available() -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """One rasterizer backend: its stages, optional fused rasterizers and capabilities."""

    name: str
    summary: str
    project: Callable
    composite: Callable
    project_2dgs: Callable | None = None
    composite_2dgs: Callable | None = None
    fused: Callable | None = None
    """``fused(inputs, settings, **options) -> (renders, alphas, meta)``: a one-call 3DGS
    rasterizer used instead of the stages when not sharding."""
    fused_2dgs: Callable | None = None
    """``fused_2dgs(inputs, settings) -> dict`` (the output of :meth:`rasterize_2dgs`)."""
    options: frozenset[str] = frozenset()
    """Switches only this backend implements (gsplat: ``packed``, ``absgrad``, ``sparse_grad``;
    the reference: ``max_chunk_elements``), passed to its fused rasterizer or its compositing
    stage; asking another backend for them is an error."""
    device: str = "any"
    """``"cpu"``, ``"cuda"`` or ``"any"``: where its tensors must live."""
    fixed_tile_size: int | None = None
    """The tile size the backend always uses, when it ignores ``settings.tile_size``."""
    unavailable_reason: Callable[[], str | None] = _available
    """Why the backend cannot run on this machine (None when it can; may build it)."""
    sh_apart: bool = False
    """Its projections (3DGS and 2DGS) read ``RasterInputs.sh_rest`` (SH band 0 and the bands
    above from two tensors), so a render does not concatenate them and their gradients come
    out apart; other backends are given :meth:`RasterInputs.joined` inputs."""

    def supports(self, kind: str = "3dgs", sharded: bool = False) -> bool:
        """Whether it renders ``kind`` (``"3dgs"`` or ``"2dgs"``), sharded or not."""
        if kind == "2dgs":
            has_stages = self.project_2dgs is not None and self.composite_2dgs is not None
            return has_stages or (not sharded and self.fused_2dgs is not None)
        return True

    def rasterize(self, inputs: RasterInputs, settings: RasterSettings, **options) -> tuple:
        """``(renders [C, H, W, D], alphas [C, H, W, 1], meta)``, as :func:`splatkit.renderer.rasterize`."""
        if not self.sh_apart:
            inputs = inputs.joined()
        if self.fused is not None:
            return self.fused(inputs, settings, **options)
        mode = settings.render_mode
        proj = self.project(inputs, settings)
        feats = features_for_mode(proj.colors, proj.depths, mode)
        bg = background_for_mode(inputs.backgrounds, feats, mode)
        renders, alphas = self.composite(proj, feats, inputs.width, inputs.height, bg, settings.tile_size, **options)
        tile = self.fixed_tile_size or settings.tile_size
        return finish_depth(renders, alphas, mode), alphas, projection_meta(proj, inputs.width, inputs.height, tile)

    def rasterize_2dgs(self, inputs: RasterInputs, settings: RasterSettings) -> dict:
        """The surfel rasterizers' output dict: ``colors``, ``alphas`` (no background),
        ``normals_camera``, ``depth_sum``, ``distort``, ``median_depth``, and ``means2d``
        (the zero screen translation whose gradient densification reads), ``radii``, ``depths``."""
        if not self.sh_apart:
            inputs = inputs.joined()
        if self.fused_2dgs is not None:
            return self.fused_2dgs(inputs, settings)
        if self.project_2dgs is None:
            raise ValueError(f"backend {self.name!r} does not render 2DGS surfels")
        proj, extra = self.project_2dgs(inputs, settings)
        # The footprint's transform composes with a screen translation (see screen_translation).
        offset, M, means2d = screen_translation(proj.ray_transforms, proj.means2d)
        proj = dataclasses.replace(proj, ray_transforms=M, means2d=means2d)
        out = self.composite_2dgs(proj, extra, inputs.width, inputs.height, settings.tile_size)
        return {**out, "means2d": offset, "radii": proj.radii, "depths": proj.depths}
