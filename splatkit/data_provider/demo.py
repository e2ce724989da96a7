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
from pathlib import Path

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


def _ray_march(
    origins: torch.Tensor, dirs: torch.Tensor, iters: int = 96, specular: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sphere-trace rays ``[R, 3]``: (hit point, surface colour, hit mask).

    Surfaces are diffuse under one directional light, plus a Blinn-Phong highlight of
    strength ``specular`` (0: none, so the colour does not depend on the view).
    """
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
    grad = torch.stack([(_sdfs(p + o).min(-1).values - _sdfs(p - o).min(-1).values) for o in offsets], dim=-1)
    normal = F.normalize(grad, dim=-1)
    shade = 0.3 + 0.7 * (normal @ _LIGHT).clamp_min(0)
    color = _albedo(p, dist.argmin(dim=-1)) * shade[:, None]
    if specular > 0:
        half = F.normalize(_LIGHT - dirs, dim=-1)
        color = (color + specular * (normal * half).sum(-1).clamp_min(0)[:, None] ** 40).clamp(0, 1)
    return p, torch.where(hit[:, None], color, torch.zeros_like(color)), hit


def _render_rgba(
    c2w: torch.Tensor, width: int, height: int, focal: float, supersample: int, specular: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One anti-aliased view from OpenCV camera-to-world ``c2w``: colour ``[H, W, 3]`` over
    black, coverage ``[H, W]`` in [0, 1], and the surface points hit with their colours ``[P, 6]``."""
    ss = supersample
    u = (torch.arange(ss * width, dtype=torch.float32) + 0.5) / ss
    v = (torch.arange(ss * height, dtype=torch.float32) + 0.5) / ss
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    cam_dirs = torch.stack([(uu - width / 2) / focal, (vv - height / 2) / focal, torch.ones_like(uu)], -1)
    dirs = F.normalize(cam_dirs.reshape(-1, 3) @ c2w[:3, :3].T.float(), dim=-1)
    origins = c2w[:3, 3].float().expand_as(dirs)
    pts, rgb, hit = _ray_march(origins, dirs, specular=specular)
    img = rgb.reshape(height, ss, width, ss, 3).mean(dim=(1, 3)).clamp(0, 1)
    coverage = hit.float().reshape(height, ss, width, ss).mean(dim=(1, 3))
    return img, coverage, torch.cat([pts[hit], rgb[hit]], dim=-1)


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
        for i in range(config.num_cameras):
            img, _, surface = _render_rgba(c2w[i], S, S, focal, config.supersample, specular=0.0)
            images.append(img)
            surface_pts.append(surface[:, :3])
            surface_rgb.append(surface[:, 3:])
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

    def train_cameras(self) -> list[SplatCameras]:
        return [self._cameras[i] for i in self._train_ids]

    def train_names(self) -> list[str]:
        return [f"demo_{i:03d}" for i in self._train_ids]

    def test_frame(self, index: int) -> SplatFrames:
        return self._frame(self._test_ids[index])

    def initial_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._points.clone(), self._colors.clone()


def write_synthetic_capture(
    folder: str | Path,
    num_train: int = 100,
    num_test: int = 25,
    image_size: int = 200,
    supersample: int = 2,
    specular: float = 0.35,
    seed: int = 0,
) -> Path:
    """Write the demo scene as a NeRF-synthetic capture and return its folder.

    The layout of the Blender scenes of the NeRF paper: RGBA PNGs (transparent where no
    surface is hit, partially where a pixel is partly covered) in ``train/`` and ``test/``,
    ``transforms_train.json`` / ``transforms_test.json`` with ``camera_angle_x`` and OpenGL
    camera-to-world ``transform_matrix`` per frame, and no point cloud. As in those scenes
    the cameras sit 4.03 units from the object, which fits in the +-1.3 cube, with a 39.6
    degree field of view: training views spread over the upper hemisphere, test views on
    a ring between them. Surfaces get a view-dependent highlight (``specular``), so the
    spherical harmonics have something to fit.
    """
    from PIL import Image

    from splatkit.splat.conventions import opengl_to_opencv_c2w
    from splatkit.utils.files import atomic_write, ensure_writable_dir, write_json

    folder = ensure_writable_dir(folder, "write_synthetic_capture(folder)")
    gen = torch.Generator().manual_seed(seed)
    angle_x = 0.6911112070083618  # NeRF-synthetic's
    radius = 4.031128874
    focal = 0.5 * image_size / math.tan(0.5 * angle_x)
    target = torch.tensor([0.0, 0.0, -0.1])
    up = torch.tensor([0.0, 0.0, 1.0])
    for split, n in (("train", num_train), ("test", num_test)):
        ensure_writable_dir(folder / split, "write_synthetic_capture(folder)")
        frames = []
        for i in range(n):
            if split == "train":  # Fibonacci spiral over elevations 5..80 degrees
                elev = math.radians(5 + 75 * (i + float(torch.rand((), generator=gen))) / n)
                azim = i * math.pi * (3 - math.sqrt(5))
            else:  # a ring at 30 degrees, between the training views
                elev, azim = math.radians(30.0), 2 * math.pi * (i + 0.5) / n
            eye = radius * torch.tensor(
                [math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)]
            )
            c2w = look_at_c2w(eye, target, up)
            rgb, coverage, _ = _render_rgba(c2w, image_size, image_size, focal, supersample, specular)
            # Straight (not premultiplied) colour, as PNG stores it: the mean over covered samples.
            straight = torch.where(coverage[..., None] > 0, rgb / coverage[..., None].clamp_min(1e-6), 0.0)
            rgba = torch.cat([straight.clamp(0, 1), coverage[..., None]], dim=-1)
            pixels = (rgba * 255.0 + 0.5).to(torch.uint8).numpy()
            path = folder / split / f"r_{i}.png"
            atomic_write(path, lambda tmp, px=pixels: Image.fromarray(px, "RGBA").save(tmp, format="PNG"))
            frames.append(
                {"file_path": f"./{split}/r_{i}", "transform_matrix": opengl_to_opencv_c2w(c2w.double()).tolist()}
            )
        write_json(folder / f"transforms_{split}.json", {"camera_angle_x": angle_x, "frames": frames})
    return folder
