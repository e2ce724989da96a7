"""The built-in demo scene: a textured object ray-marched at start-up, no downloads.

A striped torus around a patterned sphere standing on a rounded slab, lit by one
directional light (so appearance does not depend on the view), seen from cameras on a
sphere around it. Images are anti-aliased (supersampled) and rendered from signed
distance functions, so the Gaussians have to fit real geometry rather than replay
their own rendering. The initial point cloud is a subsample of surface points seen by
the training cameras, with noise, as a structure-from-motion point cloud would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from splatkit.data_provider.base import SplatDataProvider, SplatFrames
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, camera_centers, look_at_c2w


@dataclass
class SplatDemoDataProviderConfig:
    """Settings of the generated demo scene."""

    num_cameras: int = 48
    """Cameras on a sphere around the object (at least 40)."""
    image_size: int = 96
    """Width and height of each image in pixels."""
    test_every: int = 8
    """Every ``test_every``-th camera is held out for testing (0: none)."""
    num_init_points: int = 4000
    """Points in the initial point cloud."""
    init_noise: float = 0.02
    """Standard deviation of the noise added to initial points (scene units)."""
    supersample: int = 2
    """Rays per pixel along each axis, for anti-aliased targets."""
    seed: int = 0
    """Seed for camera jitter and the initial point cloud."""


_LIGHT = F.normalize(torch.tensor([0.4, -0.3, 0.85]), dim=0)
_TORUS_TILT = math.radians(25.0)


def _torus_frame(p: torch.Tensor) -> torch.Tensor:
    """Points in the tilted torus' local frame (its axis is local +Z)."""
    c, s = math.cos(_TORUS_TILT), math.sin(_TORUS_TILT)
    q = p - torch.tensor([0.0, 0.0, 0.15])
    return torch.stack([q[..., 0], c * q[..., 1] + s * q[..., 2], -s * q[..., 1] + c * q[..., 2]], -1)


def _sdfs(p: torch.Tensor) -> torch.Tensor:
    """Signed distances ``[..., 3]`` to sphere, torus and slab."""
    sphere = (p - torch.tensor([0.0, 0.0, 0.15])).norm(dim=-1) - 0.55
    t = _torus_frame(p)
    torus = torch.stack([t[..., :2].norm(dim=-1) - 0.95, t[..., 2]], -1).norm(dim=-1) - 0.15
    q = (p - torch.tensor([0.0, 0.0, -0.75])).abs() - torch.tensor([1.05, 1.05, 0.08])
    slab = q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0) - 0.05
    return torch.stack([sphere, torus, slab], dim=-1)


def _albedo(p: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Surface colour ``[..., 3]`` of object ``which`` at ``p``."""
    d = F.normalize(p - torch.tensor([0.0, 0.0, 0.15]), dim=-1)
    lon = torch.atan2(d[..., 1], d[..., 0])
    lat = torch.asin(d[..., 2].clamp(-1, 1))
    sphere = torch.stack(
        [0.55 + 0.4 * torch.sin(2 * lon), 0.5 + 0.4 * torch.sin(2 * lon + 2.1), 0.5 + 0.4 * torch.cos(3 * lat)], -1
    )
    t = _torus_frame(p)
    ang = torch.atan2(t[..., 1], t[..., 0])
    stripe = torch.sigmoid(6 * torch.sin(5 * ang))[..., None]
    torus = stripe * torch.tensor([0.95, 0.55, 0.1]) + (1 - stripe) * torch.tensor([0.1, 0.35, 0.85])
    wave = (0.5 + 0.5 * torch.sin(2.5 * p[..., 0]) * torch.sin(2.5 * p[..., 1]))[..., None]
    slab = wave * torch.tensor([0.85, 0.85, 0.8]) + (1 - wave) * torch.tensor([0.3, 0.6, 0.35])
    choices = torch.stack([sphere, torus, slab], dim=-2)
    return choices.gather(-2, which[..., None, None].expand(*which.shape, 1, 3))[..., 0, :]


def _ray_march(origins: torch.Tensor, dirs: torch.Tensor, iters: int = 96) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sphere-trace rays ``[R, 3]``: (hit point, surface colour, hit mask)."""
    t = torch.zeros(origins.shape[0])
    alive = torch.ones_like(t, dtype=torch.bool)
    for _ in range(iters):
        idx = torch.nonzero(alive)[:, 0]
        if idx.numel() == 0:
            break
        d = _sdfs(origins[idx] + t[idx, None] * dirs[idx]).min(dim=-1).values
        t[idx] += d
        alive[idx] = (d > 1e-4) & (t[idx] < 10.0)
    p = origins + t[:, None] * dirs
    dist = _sdfs(p)
    hit = dist.min(dim=-1).values < 1e-3
    eps = 1e-4
    offsets = torch.eye(3) * eps
    grad = torch.stack(
        [(_sdfs(p + o).min(-1).values - _sdfs(p - o).min(-1).values) for o in offsets], dim=-1
    )
    normal = F.normalize(grad, dim=-1)
    shade = 0.3 + 0.7 * (normal @ _LIGHT).clamp_min(0)
    color = _albedo(p, dist.argmin(dim=-1)) * shade[:, None]
    return p, torch.where(hit[:, None], color, torch.zeros_like(color)), hit


class SplatDemoDataProvider(SplatDataProvider):
    """The built-in scene (see the module docstring); everything is made from ``config.seed``."""

    def __init__(self, config: SplatDemoDataProviderConfig | None = None) -> None:
        self.config = config = config or SplatDemoDataProviderConfig()
        if config.num_cameras < 2 or config.image_size < 8:
            raise ValueError("demo scene needs num_cameras >= 2 and image_size >= 8")
        gen = torch.Generator().manual_seed(config.seed)
        S = config.image_size
        c2ws = []
        for i in range(config.num_cameras):
            # Fibonacci spiral over elevations -10..65 degrees, jittered radius.
            frac = (i + 0.5) / config.num_cameras
            elev = math.radians(-10 + 75 * frac)
            azim = i * math.pi * (3 - math.sqrt(5))
            radius = 4.0 + 0.4 * float(torch.rand((), generator=gen))
            eye = radius * torch.tensor(
                [math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)]
            )
            c2ws.append(look_at_c2w(eye, torch.tensor([0.0, 0.0, -0.1]), torch.tensor([0.0, 0.0, 1.0])))
        c2w = torch.stack(c2ws)
        focal = 1.2 * S
        K = torch.tensor([[focal, 0.0, S / 2], [0.0, focal, S / 2], [0.0, 0.0, 1.0]])
        self._cameras = SplatCameras(c2w_to_viewmat(c2w), K.expand(config.num_cameras, 3, 3).clone(), S, S)

        images, surface_pts, surface_rgb = [], [], []
        ss = config.supersample
        sub = (torch.arange(ss * S, dtype=torch.float32) + 0.5) / ss
        v, u = torch.meshgrid(sub, sub, indexing="ij")
        cam_dirs = torch.stack([(u - S / 2) / focal, (v - S / 2) / focal, torch.ones_like(u)], -1).reshape(-1, 3)
        for i in range(config.num_cameras):
            dirs = F.normalize(cam_dirs @ c2w[i, :3, :3].T, dim=-1)
            origins = c2w[i, :3, 3].expand_as(dirs)
            pts, rgb, hit = _ray_march(origins, dirs)
            img = rgb.reshape(S, ss, S, ss, 3).mean(dim=(1, 3))
            images.append(img.clamp(0, 1))
            surface_pts.append(pts[hit])
            surface_rgb.append(rgb[hit])
        self._images = torch.stack(images)

        n = config.num_cameras
        test = [i for i in range(n) if config.test_every > 0 and i % config.test_every == 0]
        self._test_ids = test
        self._train_ids = [i for i in range(n) if i not in set(test)]

        pts = torch.cat([surface_pts[i] for i in self._train_ids])
        rgb = torch.cat([surface_rgb[i] for i in self._train_ids])
        pick = torch.randperm(pts.shape[0], generator=gen)[: config.num_init_points]
        noise = torch.randn(pick.numel(), 3, generator=gen) * config.init_noise
        self._points = pts[pick] + noise
        self._colors = rgb[pick]
        centers = camera_centers(self._cameras.viewmats)
        self._scene_scale = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1

    @property
    def scene_scale(self) -> float:
        return self._scene_scale

    def num_train_frames(self) -> int:
        return len(self._train_ids)

    def num_test_frames(self) -> int:
        return len(self._test_ids)

    def _frame(self, i: int) -> SplatFrames:
        return SplatFrames(self._cameras[i], self._images[i : i + 1], None, [f"demo_{i:03d}"])

    def train_frame(self, index: int) -> SplatFrames:
        return self._frame(self._train_ids[index])

    def test_frame(self, index: int) -> SplatFrames:
        return self._frame(self._test_ids[index])

    def initial_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._points.clone(), self._colors.clone()
