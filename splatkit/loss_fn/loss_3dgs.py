"""The 3DGS photometric loss: (1 - lambda) L1 + lambda (1 - SSIM)."""

from __future__ import annotations

from dataclasses import dataclass

from splatkit.data_provider.base import SplatFrames
from splatkit.loss_fn.base import SplatLoss, SplatLossFn
from splatkit.metrics import ssim
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.training_state import SplatTrainingState


@dataclass
class Splat3DGSLossFn(SplatLossFn):
    """L1 + D-SSIM as in the 3DGS paper (``ssim_lambda`` 0.2, 11x11 window, sigma 1.5)."""

    ssim_lambda: float = 0.2
    """Weight of the D-SSIM term."""

    def __call__(
        self,
        render: SplatRenderOutput,
        frames: SplatFrames,
        step: int,
        training_state: SplatTrainingState,
    ) -> SplatLoss:
        img, gt = render.images, frames.images
        l1 = (img - gt).abs().mean()
        dssim = 1.0 - ssim(img, gt).mean()
        loss = (1.0 - self.ssim_lambda) * l1 + self.ssim_lambda * dssim
        return SplatLoss(loss, {"l1": l1.detach(), "dssim": dssim.detach()})
