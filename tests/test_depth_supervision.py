"""Depth supervision: depth targets from a capture's SfM points or depth maps, the loss's
depth term, and a run whose rendered depth they pull toward the truth."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from PIL import Image

from splatkit.cli import TrainCommand, build_trainer
from splatkit.data_provider import (
    SplatBlenderDataProviderConfig,
    SplatColmapDataProviderConfig,
    SplatDemoDataProvider,
    SplatDemoDataProviderConfig,
)
from splatkit.data_provider.base import SplatFrames
from splatkit.data_provider.blender import SplatBlenderDataProvider
from splatkit.data_provider.captured import SplatLoaderConfig, point_depths
from splatkit.data_provider.colmap import SplatColmapDataProvider
from splatkit.data_provider.demo import _render_rgba
from splatkit.data_provider.images import DataError
from splatkit.loss_fn import Splat3DGSLossFn
from splatkit.renderer import Splat3DGSRenderer
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import viewmat_to_c2w
from splatkit.trainer import SplatTrainer, SplatTrainerConfig

sys.path.insert(0, str(Path(__file__).parent))
from colmap_scenes import write_scene  # noqa: E402
from test_blender_provider import _gl_pose  # noqa: E402


def _loader(tmp_path):
    return SplatLoaderConfig(cache_dir=str(tmp_path / "cache"), num_workers=0)


def _observe(root: Path, every: int = 2) -> dict[str, list[int]]:
    """Give each image of the scene at ``root`` every ``every``-th 3D point it sees as an
    observation (a track entry); {image name: observed point ids}."""
    import pycolmap

    model = root / "sparse" / "0"
    rec = pycolmap.Reconstruction(str(model))
    ids = sorted(rec.points3D)
    seen = {}
    for im in rec.images.values():
        obs = []
        for pid in ids[::every]:
            xy = im.project_point(rec.points3D[pid].xyz)
            if xy is not None:
                obs.append(pycolmap.Point2D(xy, pid))
        im.points2D = pycolmap.Point2DList(obs)
        seen[im.name] = [p.point3D_id for p in obs]
    rec.write_binary(str(model))
    return seen


def test_point_depths_keep_the_nearest_point_of_a_pixel_and_nothing_behind_or_outside():
    K = torch.tensor([[[10.0, 0, 5], [0, 10.0, 4], [0, 0, 1]]])
    cams = SplatCameras(torch.eye(4)[None], K, 10, 8)
    pts = torch.tensor(
        [
            [0.0, 0.0, 2.0],  # centre pixel (5, 4)
            [0.0, 0.0, 3.0],  # same pixel, farther: hidden
            [0.31, 0.0, 1.0],  # u = 8.1 -> column 8
            [0.0, 0.0, -1.0],  # behind the camera
            [5.0, 0.0, 1.0],  # outside the image
        ]
    )
    d = point_depths(pts, cams)
    assert d.shape == (1, 8, 10)
    assert float(d[0, 4, 5]) == 2.0 and float(d[0, 4, 8]) == 1.0
    assert int((d > 0).sum()) == 2


def test_sfm_depths_are_each_images_own_points_at_their_colmap_depth(tmp_path):
    import pycolmap

    root = write_scene(tmp_path / "scene", "PINHOLE", n_images=4)
    seen = _observe(root)
    cfg = SplatColmapDataProviderConfig(
        str(root), str(root / "images"), factor=1, test_every=0, depths="sfm", loader=_loader(tmp_path)
    )
    p = SplatColmapDataProvider(cfg)
    assert p.has_depths
    scale = float(torch.linalg.det(p.transform[:3, :3]) ** (1 / 3))
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    for i in range(p.num_train_frames()):
        f = p.train_frame(i)
        im = next(x for x in rec.images.values() if x.name == f.names[0])
        expected = torch.zeros(48, 64, dtype=torch.float64)
        w2c = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        for pid in seen[im.name]:
            x = rec.points3D[pid].xyz
            u, v = im.project_point(x)
            z = scale * float((w2c * x)[2])  # COLMAP's own camera depth, in the training frame's units
            r, c = int(math.floor(v)), int(math.floor(u))
            if expected[r, c] == 0 or z < expected[r, c]:
                expected[r, c] = z
        assert f.depths.shape == (1, 48, 64, 1)
        assert (f.depths[0, ..., 0] > 0).sum() == (expected > 0).sum() > 5
        assert torch.allclose(f.depths[0, ..., 0].double(), expected, atol=1e-5)


def test_depth_maps_are_scaled_resized_and_undistorted_with_their_photos(tmp_path):
    root = write_scene(tmp_path / "scene", "SIMPLE_RADIAL", n_images=3)
    maps = tmp_path / "depths"
    maps.mkdir()
    # at twice the photos' size; one as float metres, one as 16-bit millimetres, one float TIFF
    np.save(maps / "img_00.npy", np.full((96, 128), 2.0, np.float32))
    Image.fromarray(np.full((96, 128), 2000, np.uint16)).save(maps / "img_01.png")
    import cv2

    cv2.imwrite(str(maps / "img_02.tiff"), np.full((96, 128), 2.0, np.float32))
    cfg = SplatColmapDataProviderConfig(
        str(root), str(root / "images"), factor=1, test_every=0, depths=str(maps), loader=_loader(tmp_path)
    )
    p = SplatColmapDataProvider(cfg)
    scale = float(torch.linalg.det(p.transform[:3, :3]) ** (1 / 3))
    for i in range(3):
        f = p.train_frame(i)
        assert f.depths.shape[1:3] == f.images.shape[1:3]  # the undistorted photo's size
        d = f.depths[0, ..., 0]
        assert float(d.max()) == pytest.approx(2.0 * scale, rel=1e-5)
        assert float((d == 0).float().mean()) < 0.05  # undistortion leaves at most a thin border
    # a map of another picture, a missing map, a folder that is not one
    np.save(maps / "img_00.npy", np.full((48, 48), 2.0, np.float32))
    with pytest.raises(DataError, match=r"depth map .*img_00.npy is 48x48; its image img_00.png is 64x48"):
        SplatColmapDataProvider(cfg).train_frame(0)
    (maps / "img_02.tiff").unlink()
    with pytest.raises(DataError, match=r"depths '.*depths': 1 image\(s\) have no depth map: img_02.png"):
        SplatColmapDataProvider(cfg)
    bad = SplatColmapDataProviderConfig(str(root), str(root / "images"), depths="lidar", loader=_loader(tmp_path))
    with pytest.raises(DataError, match=r"depths 'lidar' is none of 'none', 'sfm' or a folder of depth maps"):
        SplatColmapDataProvider(bad)


def test_transforms_json_frames_give_their_own_depth_file_path(tmp_path):
    root = tmp_path / "ngp"
    (root / "images").mkdir(parents=True)
    (root / "depth").mkdir()
    frames = []
    for i in range(4):
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.full((30, 40), 1500 + 100 * i, np.uint16)).save(root / "depth" / f"{i}.png")
        a = 2 * math.pi * i / 4
        frames.append(
            {
                "file_path": f"images/{i}.png",
                "depth_file_path": f"depth/{i}.png",
                "transform_matrix": _gl_pose([3 * math.cos(a), 3 * math.sin(a), 0.5]),
            }
        )
    meta = {"fl_x": 35.0, "w": 40, "h": 30, "depth_unit_scale_factor": 0.002, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    cfg = SplatBlenderDataProviderConfig(str(root), test_every=0, depths="frames", loader=_loader(tmp_path))
    p = SplatBlenderDataProvider(cfg)
    for i in range(4):
        f = p.train_frame(i)
        k = int(f.names[0].split("/")[-1][0])
        assert torch.allclose(f.depths, torch.full((1, 30, 40, 1), (1500 + 100 * k) * 0.002))
    assert (
        SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root), loader=_loader(tmp_path)))
        .train_frame(0)
        .depths
        is None
    )  # off unless asked for
    del frames[1]["depth_file_path"]
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"depths 'frames': 1 frame\(s\) have no depth_file_path: .*frame 1"):
        SplatBlenderDataProvider(cfg)
    with pytest.raises(DataError, match=r"depths 'sfm' needs a COLMAP model"):
        SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root), depths="sfm", loader=_loader(tmp_path)))


def _render(depths, alphas=None):
    C, H, W, _ = depths.shape
    return SplatRenderOutput(
        images=torch.zeros(C, H, W, 3),
        alphas=torch.ones(C, H, W, 1) if alphas is None else alphas,
        means2d=torch.zeros(C, 1, 2),
        radii=torch.zeros(C, 1, 2, dtype=torch.int32),
        width=W,
        height=H,
        depths=depths,
    )


def test_depth_term_is_relative_inverse_depth_error_over_targets_in_the_mask():
    cams = SplatCameras(torch.eye(4)[None], torch.eye(3)[None], 4, 2)
    target = torch.tensor([[[[2.0], [0.0], [4.0], [1.0]], [[0.0], [0.0], [0.0], [3.0]]]])
    mask = torch.ones(1, 2, 4, 1, dtype=torch.bool)
    mask[0, 1, 3] = False  # the target at (1, 3) is outside the mask
    frames = SplatFrames(cams, torch.zeros(1, 2, 4, 3), mask, ["a"], target)
    rendered = torch.tensor([[[[2.0], [9.0], [2.0], [0.0]], [[5.0], [5.0], [5.0], [1.0]]]], requires_grad=True)
    term = Splat3DGSLossFn.depth_term(_render(rendered), frames)
    # (0 + |4/2 - 1| + |1 * 0 - 1|) / 3: exact, half the depth, nothing rendered
    assert float(term.detach()) == pytest.approx(2.0 / 3.0)
    term.backward()
    assert rendered.grad[0, 0, 1, 0] == 0 and rendered.grad[0, 1, 3, 0] == 0  # no target / masked out
    assert rendered.grad[0, 0, 2, 0] < 0  # too near: pushed back
    big = SplatFrames(cams, torch.zeros(1, 12, 12, 3), None, ["a"], torch.ones(1, 12, 12, 1))
    state = type("S", (), {"params": {}})()
    without = _render(torch.ones(1, 12, 12, 1))
    without.depths = None
    with pytest.raises(ValueError, match=r"render has no depth: render with Splat3DGSRenderer\(render_depth=True\)"):
        Splat3DGSLossFn(depth_lambda=0.5)(without, big, 1, state)
    assert "depth" not in Splat3DGSLossFn(depth_lambda=0.0)(without, big, 1, state).terms


class DemoWithDepth(SplatDemoDataProvider):
    """The demo scene with sparse true depth targets (every 5th surface pixel of each training view)."""

    def __init__(self, config):
        super().__init__(config)
        S, focal = config.image_size, 1.2 * config.image_size
        self.truth = []
        for i in range(len(self._cameras)):
            c2w = viewmat_to_c2w(self._cameras.viewmats[i])
            _, coverage, surface = _render_rgba(c2w, S, S, focal, 1, 0.0)
            z = (surface[:, :3] - c2w[:3, 3]) @ c2w[:3, 2]
            depth = torch.zeros(S * S)
            depth[coverage.reshape(-1) > 0] = z
            self.truth.append(depth.view(1, S, S, 1))
        self.has_depths = True

    def _frame(self, i):
        f = super()._frame(i)
        sparse = torch.zeros_like(self.truth[i])
        sparse.view(-1)[::5] = self.truth[i].view(-1)[::5]
        return SplatFrames(f.cameras, f.images, f.masks, f.names, sparse)


def test_depth_targets_pull_the_rendered_depth_toward_the_truth(tmp_path):
    provider = DemoWithDepth(SplatDemoDataProviderConfig(num_cameras=24, image_size=32, init_noise=0.3))
    errors = {}
    for name, lam in (("off", 0.0), ("on", 0.5)):
        config = SplatTrainerConfig(max_steps=150, seed=0, output_dir=str(tmp_path / name))
        trainer = SplatTrainer(
            config, provider, Splat3DGSRenderer(render_depth=True), Splat3DGSLossFn(depth_lambda=lam), modules=[]
        )
        trainer.run()
        errs = []
        with torch.no_grad():
            for i, f in zip(provider._test_ids, provider.test_frames()):
                d = trainer.render_view(f.cameras).depths[0, ..., 0]
                t = provider.truth[i][0, ..., 0]
                errs.append(((d[t > 0] / t[t > 0]) - 1).abs())
        errors[name] = float(torch.cat(errs).median())
    assert errors["on"] < 0.8 * errors["off"], errors  # measured: median 0.052 -> 0.037


def test_cli_renders_depth_for_depth_targets_and_refuses_a_weight_without_them(tmp_path):
    root = write_scene(tmp_path / "scene", "PINHOLE", n_images=4)
    _observe(root)
    out = str(tmp_path / "run")
    cmd = tyro.cli(
        TrainCommand, args=["--data", str(root), "--colmap.depths", "sfm", "--output-dir", out, "--max-steps", "2"]
    )
    trainer, _ = build_trainer(cmd)
    assert trainer.renderer.render_depth and trainer.loss_fn.depth_lambda == 0.01
    trainer.run()  # the depth term trains
    cmd = tyro.cli(TrainCommand, args=["--data", str(root), "--loss.depth-lambda", "0.1", "--output-dir", out])
    with pytest.raises(ValueError, match=r"--loss.depth-lambda weighs depth targets, and this data has none"):
        build_trainer(cmd)
