"""Renderer interface: Gaussian parameters + cameras -> images and what densification needs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Mapping

import torch

from splatkit.splat.cameras import SplatCameras


@dataclass
class SplatRenderOutput:
    """What a renderer returns for ``C`` cameras.

    Attributes:
        images: ``[C, H, W, 3]`` RGB over the background.
        alphas: ``[C, H, W, 1]`` accumulated opacity.
        depths: ``[C, H, W, 1]`` expected depth, when the renderer was asked for it.
        means2d: ``[C, N, 2]`` screen-space centres; their ``.grad`` after backward is
            the screen-space gradient the default densification thresholds.
        radii: ``[C, N, 2]`` int32 bounding-box half-sizes in pixels, 0 where culled.
        width, height: image size.
        backgrounds: ``[C, 3]`` colour the images were composited over (None: black).
        extras: backend- or model-specific outputs (normals, distortion, ...).
    """

    images: torch.Tensor
    alphas: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor
    width: int
    height: int
    depths: torch.Tensor | None = None
    backgrounds: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def n_cameras(self) -> int:
        return self.images.shape[0]

    @property
    def visibility(self) -> torch.Tensor:
        """``[C, N]`` bool: the Gaussian touched the image in that camera."""
        return (self.radii > 0).any(dim=-1)


class SplatRenderer(ABC):
    """Turns stored parameters (see :mod:`splatkit.splat.conventions`) into images."""

    @abstractmethod
    def render(
        self,
        params: Mapping[str, torch.Tensor],
        cameras: SplatCameras,
        sh_degree: int,
        backgrounds: torch.Tensor | None = None,
    ) -> SplatRenderOutput:
        """Render ``params`` (stored form: log scales, logit opacities) into ``cameras``.

        ``backgrounds`` is ``[C, 3]`` (default black); ``sh_degree`` is the active degree.
        """
