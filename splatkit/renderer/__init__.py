"""Renderers: parameters + cameras -> images. They know nothing of training."""

from splatkit.renderer.base import SplatRenderer, SplatRenderOutput
from splatkit.renderer.functional import rasterize, rasterize_2dgs
from splatkit.renderer.renderer_2dgs import Splat2DGSRenderer
from splatkit.renderer.renderer_3dgs import Splat3DGSRenderer

__all__ = [
    "SplatRenderer",
    "SplatRenderOutput",
    "Splat2DGSRenderer",
    "Splat3DGSRenderer",
    "rasterize",
    "rasterize_2dgs",
]
