"""Renderer interface: Gaussian parameters + cameras -> images and what densification needs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

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
            the screen-space gradient the default densification thresholds. Packed
            output (gsplat ``packed=True``) is ``[nnz, 2]`` for the visible pairs only.
        radii: ``[C, N, 2]`` int32 bounding-box half-sizes in pixels, 0 where culled
            (packed: ``[nnz, 2]``).
        width, height: image size.
        backgrounds: ``[C, 3]`` colour the images were composited over (None: black).
        gaussian_ids, camera_ids: ``[nnz]`` indices of the packed pairs (None unpacked).
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
    gaussian_ids: torch.Tensor | None = None
    camera_ids: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    @property
    def n_cameras(self) -> int:
        # From the per-camera statistics, which distributed training gathers across ranks.
        return self.images.shape[0] if self.packed else self.radii.shape[0]

    @property
    def packed(self) -> bool:
        return self.gaussian_ids is not None


class SplatRenderer(ABC):
    """Turns stored parameters (see :mod:`splatkit.splat.conventions`) into images.

    ``gaussian_kind`` says which Gaussians it draws: "3dgs" (three scales) or "2dgs"
    (surfels, two scales); the trainer initialises the model to match.
    """

    gaussian_kind: ClassVar[str] = "3dgs"
    sparse_grad = False
    """Whether renders carry the rendered ids for sparse gradients (gsplat's packed mode);
    the trainer then steps with ``SparseAdam``. Renderers that can do it make it a field."""

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
