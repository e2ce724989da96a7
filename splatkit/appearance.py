"""Per-image appearance: a learned colour correction of each training image's render.

Photos of one scene differ in exposure and white balance (phone auto-exposure, internet
photos taken years apart). Trained against them as they are, a splat bakes the differences
in as view-dependent colour and floaters. :class:`SplatAffineAppearance` gives each
training image ``i`` an affine colour transform of its render,

    rgb' = (I + D_i) @ rgb + b_i        (D_i: 3x3, b_i: 3, both zero at the start),

learned with the splat, so the splat learns the scene under an average appearance and the
corrections the differences. The corrections are kept centred (their mean over the images
is zero after every step): otherwise any colour transform could move from the splat into
all corrections at once and the splat's own colours, what a viewer shows, would drift.

A test image has no correction of its own (it was never trained on), so renders of test
views are uncorrected. :func:`colour_corrected` is the evaluation side of gsplat's protocol
for such runs (``cc_psnr``): the render mapped by the affine colour transform that best fits
the ground truth (least squares), which the evaluator scores beside the plain PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.per_image import PerImageParameters


@dataclass
class SplatAffineAppearance:
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
        if not self.lr > 0:
            raise ValueError(f"SplatAffineAppearance lr must be > 0, got {self.lr}")
        if self.start_step < 0:
            raise ValueError(f"SplatAffineAppearance start_step must be >= 0, got {self.start_step}")

    def create(self, num_images: int, device: torch.device | str) -> AffineCorrections:
        """The learnable corrections of ``num_images`` training images (identity at first)."""
        return AffineCorrections(self, num_images, device)


class AffineCorrections(PerImageParameters):
    """The corrections of one run: ``delta [num_images, 3, 4]`` (``[D_i | b_i]``), kept centred."""

    what = "appearance corrections"

    def __init__(self, settings: SplatAffineAppearance, num_images: int, device: torch.device | str) -> None:
        super().__init__(settings, num_images, (3, 4), device, recentre=True)

    def matrices(self, indices: torch.Tensor | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A [B, 3, 3], b [B, 3])`` of the given training images."""
        d = self.rows(indices)
        eye = torch.eye(3, device=d.device, dtype=d.dtype)
        return eye + d[:, :, :3], d[:, :, 3]

    def apply(self, images: torch.Tensor, indices, step: int) -> torch.Tensor:
        """``images [B, H, W, 3]`` (renders of the training images ``indices``) corrected;
        unchanged (and no gradient to the corrections) until ``start_step``."""
        if not self.active(step):
            return images
        A, b = self.matrices(indices)
        return torch.einsum("bij,bhwj->bhwi", A, images) + b[:, None, None, :]


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
