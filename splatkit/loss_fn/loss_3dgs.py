"""The 3DGS photometric loss: (1 - lambda) L1 + lambda (1 - SSIM), plus optional
opacity and scale regularisers (3DGS-MCMC)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.data_provider.base import SplatFrames
from splatkit.loss_fn.base import SplatLoss, SplatLossFn
from splatkit.metrics import ssim, ssim_map
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.conventions import opacity_activation, scale_activation
from splatkit.splat.training_state import SplatTrainingState


@dataclass
class Splat3DGSLossFn(SplatLossFn):
    """L1 + D-SSIM as in the 3DGS paper (``ssim_lambda`` 0.2, 11x11 window, sigma 1.5).

    ``opacity_reg`` and ``scale_reg`` add ``opacity_reg * mean(opacity) + scale_reg *
    mean(scale)`` over all Gaussians (activated values), the regularisers of 3DGS-MCMC;
    gsplat's trainer uses 0.01 each with its MCMC strategy. Off by default.

    With depth targets (``frames.depths``, from a provider's ``depths`` setting) the loss adds
    ``depth_lambda * mean |d*/d - 1|`` over the pixels with a target ``d* > 0`` (and in the
    mask), ``d`` the rendered expected depth: gsplat's L1 between rendered and target inverse
    depth (its ``depth_loss``), taken relative to the target's so that it does not depend on the
    scene's units (gsplat multiplies by the scene scale instead). A pixel with nothing
    rendered counts as inverse depth 0 (term 1). The renderer must render depth
    (``Splat3DGSRenderer(render_depth=True)``; ``splatkit train`` sets it).
    """

    ssim_lambda: float = 0.2
    """Weight of the D-SSIM term."""
    mask_mode: str = "ignore"
    """With training masks: "ignore" masked-out pixels, or treat them as "background" (learn transparency)."""
    opacity_reg: float = 0.0
    """Weight of the mean opacity: drives unneeded Gaussians to transparency, where MCMC relocates them."""
    scale_reg: float = 0.0
    """Weight of the mean scale (all three axes): favours small Gaussians."""
    depth_lambda: float = 0.01
    """Weight of the depth term, used when the frames carry depth targets (gsplat's depth_lambda)."""

    def __post_init__(self) -> None:
        if self.mask_mode not in ("ignore", "background"):
            raise ValueError(f"mask_mode must be 'ignore' or 'background', got {self.mask_mode!r}")
        for name in ("opacity_reg", "scale_reg", "depth_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"Splat3DGSLossFn.{name} must be non-negative, got {getattr(self, name)!r}")

    def __call__(
        self, render: SplatRenderOutput, frames: SplatFrames, step: int, training_state: SplatTrainingState
    ) -> SplatLoss:
        img, gt = render.images, frames.images
        if frames.masks is None:
            l1 = (img - gt).abs().mean()
            dssim = 1.0 - ssim(img, gt).mean()
        elif self.mask_mode == "background":
            bg = render.backgrounds if render.backgrounds is not None else torch.zeros(len(gt), 3, device=gt.device)
            gt = torch.where(frames.masks, gt, bg[:, None, None, :])
            l1 = (img - gt).abs().mean()
            dssim = 1.0 - ssim(img, gt).mean()
        else:
            # Masked-out pixels take the target's value, so they add nothing to either
            # term and receive no gradient; SSIM is averaged over windows centred in the mask.
            m = frames.masks
            img = torch.where(m, img, gt)
            count = m.sum().clamp_min(1)
            l1 = (img - gt).abs().sum() / (3 * count)
            smap = ssim_map(img, gt)  # [B, 3, H-10, W-10]
            pad = (m.shape[1] - smap.shape[2]) // 2
            mv = m[:, pad : m.shape[1] - pad, pad : m.shape[2] - pad, 0][:, None].to(smap.dtype)
            dssim = 1.0 - (smap * mv).sum() / (3 * mv.sum()).clamp_min(1)
        loss = (1.0 - self.ssim_lambda) * l1 + self.ssim_lambda * dssim
        terms = {"l1": l1.detach(), "dssim": dssim.detach()}
        if frames.depths is not None and self.depth_lambda > 0:
            depth_term = self.depth_term(render, frames)
            loss = loss + self.depth_lambda * depth_term
            terms["depth"] = depth_term.detach()
        if self.opacity_reg > 0:
            opacity_term = opacity_activation(training_state.params["opacities"]).mean()
            loss = loss + self.opacity_reg * opacity_term
            terms["opacity_reg"] = opacity_term.detach()
        if self.scale_reg > 0:
            scale_term = scale_activation(training_state.params["scales"]).mean()
            loss = loss + self.scale_reg * scale_term
            terms["scale_reg"] = scale_term.detach()
        return SplatLoss(loss, terms)

    @staticmethod
    def depth_term(render: SplatRenderOutput, frames: SplatFrames) -> torch.Tensor:
        """``mean |d*/d - 1|`` over the pixels with a depth target (see the class)."""
        if render.depths is None:
            raise ValueError(
                "the frames carry depth targets but the render has no depth: render with "
                "Splat3DGSRenderer(render_depth=True), or set the loss's depth_lambda to 0"
            )
        target = frames.depths
        valid = target > 0
        if frames.masks is not None:
            valid = valid & frames.masks
        d = render.depths
        inv = torch.where(d > 0, 1.0 / d.clamp_min(1e-12), torch.zeros_like(d))
        err = (inv * target - 1.0).abs()
        return torch.where(valid, err, torch.zeros_like(err)).sum() / valid.sum().clamp_min(1)
