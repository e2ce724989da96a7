"""A batch of pinhole cameras in the conventions of :mod:`splatkit.splat.conventions`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.splat.conventions import camera_centers


@dataclass
class SplatCameras:
    """``C`` pinhole cameras sharing one image size.

    Attributes:
        viewmats: ``[C, 4, 4]`` world-to-camera, OpenCV axes.
        Ks: ``[C, 3, 3]`` intrinsics in pixels (pixel centres at +0.5).
        width, height: image size in pixels.
    """

    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.dim() != 3 or self.viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(self.viewmats.shape)}")
        if tuple(self.Ks.shape) != (self.viewmats.shape[0], 3, 3):
            raise ValueError(f"Ks must be [C, 3, 3] matching viewmats, got {tuple(self.Ks.shape)}")

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres ``[C, 3]`` in world space."""
        return camera_centers(self.viewmats)

    def to(self, device: torch.device | str) -> SplatCameras:
        return SplatCameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height)

    def __getitem__(self, idx) -> SplatCameras:
        sel = torch.as_tensor(idx).reshape(-1)
        return SplatCameras(self.viewmats[sel], self.Ks[sel], self.width, self.height)

    @staticmethod
    def cat(items: list[SplatCameras]) -> SplatCameras:
        sizes = {(c.width, c.height) for c in items}
        if len(sizes) != 1:
            raise ValueError(f"cameras of one batch must share an image size, got {sorted(sizes)}")
        return SplatCameras(
            torch.cat([c.viewmats for c in items]), torch.cat([c.Ks for c in items]), items[0].width, items[0].height
        )
