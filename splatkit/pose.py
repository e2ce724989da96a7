"""Camera pose refinement: a learned rigid correction of each training camera.

SfM poses are slightly wrong (and phone poses more so); a splat trained on them blurs
what the cameras disagree on. :class:`SplatPoseRefinement` gives each training image ``i``
a rigid transform ``T_i`` in its camera's frame, learned with the splat as gsplat's
``pose_opt`` does: the camera-to-world matrix becomes ``c2w_i @ T_i``, i.e. the
world-to-camera ``viewmat_i`` becomes ``T_i^-1 @ viewmat_i``. ``T_i`` is a translation and a
rotation in the continuous 6D representation (two columns, Gram-Schmidt), zero (the
identity) at the start. Gradients reach it through ``viewmats`` on every backend (the
compiled CPU kernels and gsplat's compute the cameras' gradient; the reference by autograd).

Test cameras have no correction of their own (they were never trained on) and are used as
given. :meth:`PoseCorrections.refine` gives the refined training cameras (the exporter writes
them into the INRIA layout's ``cameras.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.per_image import PerImageParameters
from splatkit.splat.cameras import SplatCameras


@dataclass
class SplatPoseRefinement:
    """Settings of the per-image pose correction (see the module docstring); the defaults are
    gsplat's (``pose_opt_lr``, ``pose_opt_reg``)."""

    lr: float = 1e-5
    """Adam learning rate of the per-image pose corrections (gsplat's pose_opt_lr)."""
    weight_decay: float = 1e-6
    """Adam weight decay of the corrections, pulling them towards the given poses (gsplat's pose_opt_reg)."""
    start_step: int = 0
    """Steps before the corrections start to learn."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"SplatPoseRefinement lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.start_step < 0:
            raise ValueError(
                f"SplatPoseRefinement weight_decay and start_step must be >= 0, got {self.weight_decay}, "
                f"{self.start_step}"
            )

    def create(self, num_images: int, device: torch.device | str) -> PoseCorrections:
        """The learnable corrections of ``num_images`` training cameras (identity at first)."""
        return PoseCorrections(self, num_images, device)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """``[..., 6]`` (two rows) -> ``[..., 3, 3]`` rotation, by Gram-Schmidt (Zhou et al. 2019)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2)], dim=-2)


_IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class PoseCorrections(PerImageParameters):
    """The corrections of one run: ``delta [num_images, 9]`` (translation, then the 6D rotation's
    offset from the identity)."""

    what = "pose corrections"

    def __init__(self, settings: SplatPoseRefinement, num_images: int, device: torch.device | str) -> None:
        super().__init__(settings, num_images, (9,), device)

    def transforms(self, indices) -> torch.Tensor:
        """``T [B, 4, 4]``: each camera's correction, in its own frame (``c2w' = c2w @ T``)."""
        d = self.rows(indices)
        R = rotation_6d_to_matrix(d[:, 3:] + d.new_tensor(_IDENTITY_6D))
        T = torch.zeros(d.shape[0], 4, 4, dtype=d.dtype, device=d.device)
        T[:, :3, :3] = R
        T[:, :3, 3] = d[:, :3]
        T[:, 3, 3] = 1.0
        return T

    def viewmats(self, viewmats: torch.Tensor, indices) -> torch.Tensor:
        """``T^-1 @ viewmats`` for the given training images (differentiable in the corrections)."""
        T = self.transforms(indices).to(viewmats.dtype)
        R, t = T[:, :3, :3], T[:, :3, 3:]
        inv = torch.cat([torch.cat([R.transpose(1, 2), -R.transpose(1, 2) @ t], dim=2), T[:, 3:]], dim=1)
        return inv @ viewmats

    def apply(self, cameras: SplatCameras, indices, step: int) -> SplatCameras:
        """The step's training cameras, corrected (as given until ``start_step``)."""
        if not self.active(step):
            return cameras
        return SplatCameras(self.viewmats(cameras.viewmats, indices), cameras.Ks, cameras.width, cameras.height)

    @torch.no_grad()
    def refine(self, cameras: list[SplatCameras]) -> list[SplatCameras]:
        """The training cameras (one per image, in order) with their learned corrections."""
        out = []
        for i, cam in enumerate(cameras):
            vm = self.viewmats(cam.viewmats.to(self.delta.device), [i] * len(cam)).to(cam.viewmats.device)
            out.append(SplatCameras(vm.detach(), cam.Ks, cam.width, cam.height))
        return out
