"""Per-image appearance: a learned colour correction of each training image's render.

Photos of one scene differ in exposure and white balance (phone auto-exposure, internet
photos taken years apart). Trained against them as they are, a splat bakes the differences
in as view-dependent colour and floaters. :class:`SplatAffineAppearance` gives each
training image ``i`` an affine colour transform of its render,

    rgb' = (I + D_i) @ rgb + b_i        (D_i: 3x3, b_i: 3, both zero at the start),

learned with the splat, so the splat learns the scene under an average appearance and the
corrections the differences. :class:`SplatBilateralGridAppearance` is gsplat's bilateral
grid (after HDRNet and "Bilateral Guided Radiance Field Processing"): an affine transform per
cell of a small ``x, y, luminance`` grid per image, sliced trilinearly at each pixel, so a
correction can vary over the image (vignetting) and with brightness (tone curves). Both are
kept centred (their mean over the images is zero after every step): otherwise any colour
transform could move from the splat into all corrections at once and the splat's own
colours, what a viewer shows, would drift.

A test image has no correction of its own (it was never trained on), so renders of test
views are uncorrected. :func:`colour_corrected` is the evaluation side of gsplat's protocol
for such runs (``cc_psnr``): the render mapped by the affine colour transform that best fits
the ground truth (least squares), which the evaluator scores beside the plain PSNR.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splatkit.per_image import PerImageParameters


class SplatAppearance(ABC):
    """Settings of a per-image appearance model; :meth:`create` makes one run's corrections."""

    lr: float
    start_step: int

    def _check(self) -> None:
        name = type(self).__name__
        if not self.lr > 0:
            raise ValueError(f"{name} lr must be > 0, got {self.lr}")
        if self.start_step < 0:
            raise ValueError(f"{name} start_step must be >= 0, got {self.start_step}")

    @abstractmethod
    def create(self, num_images: int, device: torch.device | str) -> AppearanceCorrections:
        """The learnable corrections of ``num_images`` training images (identity at first)."""


class AppearanceCorrections(PerImageParameters, ABC):
    """One run's per-image colour corrections."""

    what = "appearance corrections"

    @abstractmethod
    def apply(self, images: torch.Tensor, indices, step: int) -> torch.Tensor:
        """``images [B, H, W, 3]`` (renders of the training images ``indices``) corrected;
        unchanged (and no gradient to the corrections) until ``start_step``."""


@dataclass
class SplatAffineAppearance(SplatAppearance):
    """Settings of the per-image affine colour correction (see the module docstring).

    Args:
        lr: Adam learning rate of the corrections.
        start_step: steps before the corrections start to learn (the splat first finds the
            geometry and the average colour).
    """

    lr: float = 1e-3
    """Adam learning rate of the per-image corrections."""
    start_step: int = 500
    """Steps before the corrections start to learn (the splat first learns the average colour)."""

    def __post_init__(self) -> None:
        self._check()

    def create(self, num_images: int, device: torch.device | str) -> AffineCorrections:
        return AffineCorrections(self, num_images, device)


class AffineCorrections(AppearanceCorrections):
    """The corrections of one run: ``delta [num_images, 3, 4]`` (``[D_i | b_i]``), kept centred."""

    def __init__(self, settings: SplatAffineAppearance, num_images: int, device: torch.device | str) -> None:
        super().__init__(settings, num_images, (3, 4), device, recentre=True)

    def matrices(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [B, 3, 3], b [B, 3])`` of the given training images."""
        d = self.rows(indices)
        eye = torch.eye(3, device=d.device, dtype=d.dtype)
        return eye + d[:, :, :3], d[:, :, 3]

    def apply(self, images: torch.Tensor, indices, step: int) -> torch.Tensor:
        if not self.active(step):
            return images
        A, b = self.matrices(indices)
        return torch.einsum("bij,bhwj->bhwi", A, images) + b[:, None, None, :]


LUMA = (0.299, 0.587, 0.114)
"""Rec. 601 luma weights: the bilateral grid's guidance (gsplat's)."""


@dataclass
class SplatBilateralGridAppearance(SplatAppearance):
    """Settings of the per-image bilateral grid (gsplat's ``--use_bilateral_grid``): each
    training image has a ``grid_depth x grid_height x grid_width`` grid of affine colour
    transforms (3x4 each, the identity at the start) over (x, y, luminance); a pixel's
    transform is the trilinear blend at its position and rendered luminance. A total-variation
    term of weight ``tv_lambda`` (on all grids, every step) keeps the grids smooth."""

    lr: float = 2e-3
    """Adam learning rate of the grids (gsplat's)."""
    start_step: int = 500
    """Steps before the grids start to learn (the splat first learns the average colour)."""
    grid_width: int = 16
    """Grid cells across the image (gsplat's 16)."""
    grid_height: int = 16
    """Grid cells down the image (gsplat's 16)."""
    grid_depth: int = 8
    """Grid cells along the luminance axis (gsplat's 8)."""
    tv_lambda: float = 10.0
    """Weight of the grids' total variation (gsplat's 10)."""

    def __post_init__(self) -> None:
        self._check()
        for name in ("grid_width", "grid_height", "grid_depth"):
            if getattr(self, name) < 2:
                raise ValueError(f"SplatBilateralGridAppearance {name} must be >= 2, got {getattr(self, name)}")
        if self.tv_lambda < 0:
            raise ValueError(f"SplatBilateralGridAppearance tv_lambda must be >= 0, got {self.tv_lambda}")

    def create(self, num_images: int, device: torch.device | str) -> BilateralGridCorrections:
        return BilateralGridCorrections(self, num_images, device)


class BilateralGridCorrections(AppearanceCorrections):
    """The grids of one run: ``delta [num_images, 12, depth, height, width]``, each cell's
    3x4 affine transform minus the identity (row-major), kept centred over the images."""

    def __init__(self, settings: SplatBilateralGridAppearance, num_images: int, device) -> None:
        shape = (12, settings.grid_depth, settings.grid_height, settings.grid_width)
        super().__init__(settings, num_images, shape, device, recentre=True)
        self._identity = torch.eye(3, 4, device=device).reshape(12)

    def transforms(self, images: torch.Tensor, indices) -> torch.Tensor:
        """Each pixel's affine transform ``[B, H, W, 3, 4]``, sliced from its image's grid."""
        B, H, W, _ = images.shape
        grids = self.rows(indices)  # [B, 12, D, GH, GW]
        ys = torch.linspace(-1, 1, H, device=images.device, dtype=images.dtype)
        xs = torch.linspace(-1, 1, W, device=images.device, dtype=images.dtype)
        luma = (images @ images.new_tensor(LUMA)).clamp(0, 1) * 2 - 1  # [B, H, W]
        coords = torch.stack(
            [xs.expand(B, H, W), ys[:, None].expand(B, H, W), luma], dim=-1
        )  # grid_sample's (x, y, z) = (width, height, depth)
        sliced = F.grid_sample(grids, coords[:, None], mode="bilinear", align_corners=True)  # [B, 12, 1, H, W]
        delta = sliced[:, :, 0].permute(0, 2, 3, 1)  # [B, H, W, 12]
        return (delta + self._identity).reshape(B, H, W, 3, 4)

    def apply(self, images: torch.Tensor, indices, step: int) -> torch.Tensor:
        if not self.active(step):
            return images
        M = self.transforms(images, indices)
        return (M[..., :3] @ images[..., None])[..., 0] + M[..., 3]

    def total_variation(self) -> torch.Tensor:
        """Mean squared difference of neighbouring cells along each grid axis, summed (gsplat's)."""
        g = self.delta
        return sum(g.diff(dim=d).pow(2).mean() for d in (2, 3, 4))

    def step(self, step: int) -> None:
        if self.active(step) and self.delta.grad is not None and self.settings.tv_lambda > 0:
            # The smoothness term's gradient joins the photometric one here (every grid, every step).
            (self.settings.tv_lambda * self.total_variation()).backward()
        super().step(step)


def fit_affine_colour(render: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``[3, 4]`` affine colour transform ``M`` minimising ``|M @ [rgb, 1] - gt|^2`` over the
    (masked-in) pixels of one image (``render``, ``gt``: ``[H, W, 3]``), solved in float64."""
    x = render.reshape(-1, 3).double()
    y = gt.reshape(-1, 3).double()
    if mask is not None:
        keep = mask.reshape(-1).bool()
        x, y = x[keep], y[keep]
    X = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
    # normal equations with a tiny ridge: a flat (constant-colour) image has a singular X^T X
    XtX = X.T @ X + 1e-6 * torch.eye(4, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(XtX, X.T @ y).T.to(render.dtype)


def colour_corrected(render: torch.Tensor, gt: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """``render [B, H, W, 3]`` with each image mapped by its best affine colour fit to ``gt``
    (:func:`fit_affine_colour`), clamped to [0, 1]: what gsplat's ``cc_psnr`` scores."""
    out = []
    for i in range(render.shape[0]):
        M = fit_affine_colour(render[i], gt[i], None if masks is None else masks[i])
        out.append((render[i] @ M[:, :3].T + M[:, 3]).clamp(0, 1))
    return torch.stack(out)
