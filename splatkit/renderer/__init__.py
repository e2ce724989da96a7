"""Renderers: parameters + cameras -> images. They know nothing of training."""

from splatkit.renderer.base import SplatRenderer, SplatRenderOutput
from splatkit.renderer.functional import rasterize
from splatkit.renderer.renderer_3dgs import Splat3DGSRenderer

__all__ = ["SplatRenderer", "SplatRenderOutput", "Splat3DGSRenderer", "rasterize"]
