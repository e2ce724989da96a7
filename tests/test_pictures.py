"""What a user has to look at after training: the preview, the training curves, labelled
side-by-sides, the trajectory video and the evaluator's figures in TensorBoard."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from splatkit.cli import main
from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
from splatkit.evaluation import LABEL_HEIGHT, to_uint8
from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w, viewmat_to_c2w
from splatkit.splat.trajectory import interpolated_path

DEMO = {"image_size": 16, "num_cameras": 10, "num_init_points": 300, "supersample": 1}  # 2 test views
DEMO_ARGS = [a for k, v in DEMO.items() for a in (f"--demo.{k.replace('_', '-')}", str(v))]


def _has_text(strip: np.ndarray) -> bool:
    """A label strip holds white text on black."""
    return strip.max() >= 200 and np.median(strip) <= 10


def read_video(path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    return meta, [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]


def test_a_run_leaves_preview_curves_labelled_renders_video_and_tensorboard(tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg", reason="the trajectory video needs imageio-ffmpeg (extra 'video')")
    pytest.importorskip("matplotlib", reason="the curves need matplotlib (extra 'eval')")
    pytest.importorskip("tensorboard", reason="TensorBoard events need tensorboard (extra 'tensorboard')")
    out = tmp_path / "run"
    args = ["train", "--data", "demo", *DEMO_ARGS, "--max-steps", "10", "--output-dir", str(out), "--no-progress"]
    assert main([*args, "--eval-steps", "5", "10", "--video", "--video-frames", "6", "--tensorboard"]) == 0
    printed = capsys.readouterr().out
    looked = [line for line in printed.splitlines() if line.startswith("to look at: ")]
    assert len(looked) == 1 and set(looked[0].removeprefix("to look at: ").split(", ")) == {
        str(out / n) for n in ("preview.png", "stats/metrics.png", "videos/traj_000005.mp4", "videos/traj_000010.mp4")
    }, printed

    stats = json.loads((out / "stats" / "step_000010.json").read_text())
    psnr_of = {r["name"]: r["psnr"] for r in stats["images"]}
    test_frames = list(SplatDemoDataProvider(SplatDemoDataProviderConfig(**DEMO)).test_frames())
    assert len(test_frames) == 2 and sorted(psnr_of) == sorted(n for f in test_frames for n in f.names)

    # preview.png: one tile per test view, ground truth | render, each 16 px image shown at 176 px
    # (enlarged 11x, pixels kept square) under a label strip; two tiles side by side.
    preview = np.asarray(Image.open(out / "preview.png").convert("RGB"))
    k, side = 11, 176
    tile_h, tile_w = LABEL_HEIGHT + side, 2 * side
    assert preview.shape == (tile_h + 8, 2 * tile_w + 12, 3)
    for i, frame in enumerate(test_frames):
        x = 4 + i * (tile_w + 4)
        assert _has_text(preview[4 : 4 + LABEL_HEIGHT, x : x + tile_w])
        gt = to_uint8(frame.images[0]).repeat(k, axis=0).repeat(k, axis=1)
        assert (preview[4 + LABEL_HEIGHT : 4 + tile_h, x : x + side] == gt).all()  # the ground truth, exactly
        render = preview[4 + LABEL_HEIGHT : 4 + tile_h, x + side : x + tile_w].astype(float)
        mse = ((render - gt) ** 2).mean() / 255**2
        assert -10 * math.log10(mse) == pytest.approx(psnr_of[frame.names[0]], abs=0.3)  # the render it scores

    # Labelled side-by-sides per eval step: ground truth | render | error under a label strip.
    for step in (5, 10):
        pngs = sorted((out / "renders" / f"step_{step:06d}").glob("*.png"))
        assert len(pngs) == 2
        sbs = np.asarray(Image.open(pngs[0]).convert("RGB"))
        assert sbs.shape == (LABEL_HEIGHT + 16, 3 * 16, 3) and _has_text(sbs[:LABEL_HEIGHT])

    # Training curves: every step of a 10-step run logged, both evaluations, one PNG with three panels.
    log = list(csv.DictReader((out / "stats" / "training.csv").open()))
    assert [int(r["step"]) for r in log] == list(range(1, 11))
    assert all(float(r["loss"]) > 0 and 5 < float(r["train_psnr"]) < 60 and int(r["num_gaussians"]) > 0 for r in log)
    evals = list(csv.DictReader((out / "stats" / "metrics.csv").open()))
    assert [int(r["step"]) for r in evals] == [5, 10]
    curves = np.asarray(Image.open(out / "stats" / "metrics.png").convert("RGB"))
    assert curves.shape == (750, 700, 3)
    red = (curves[..., 0] > 180) & (curves[..., 1] < 80) & (curves[..., 2] < 80)  # the loss line
    blue = (curves[..., 2] > 150) & (curves[..., 0] < 80)  # test PSNR markers and line
    assert red[:250].sum() > 200 and blue[250:500].sum() > 50

    # The trajectory video: 6 frames at the training cameras' size, each a different view of the scene.
    meta, frames = read_video(out / "videos" / "traj_000010.mp4")
    assert meta["size"] == (16, 16) and meta["fps"] == 30 and len(frames) == 6
    assert all(f.mean() > 5 for f in frames)
    assert np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean() > 2

    # TensorBoard: the evaluator's metrics and preview at its eval steps.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("eval/psnr")] == [
        (int(r["step"]), round(float(r["psnr"]), 4)) for r in evals
    ]
    assert {"eval/ssim", "eval/num_gaussians", "eval/render_fps"} <= set(acc.Tags()["scalars"])
    previews = acc.Images("eval/preview")
    assert [e.step for e in previews] == [5, 10] and (previews[-1].width, previews[-1].height) == preview.shape[1::-1]


def test_curves_keep_their_history_across_a_resume(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the curves need matplotlib (extra 'eval')")
    out = tmp_path / "run"
    args = ["train", "--data", "demo", *DEMO_ARGS, "--output-dir", str(out), "--no-progress", "--no-save-splat"]
    assert main([*args, "--max-steps", "6", "--export-steps", "4", "6"]) == 0
    ckpt = out / "ckpts" / "step_000004.ckpt"
    assert main(["train", "--resume", str(ckpt), "--max-steps", "8", "--no-progress", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    log = list(csv.DictReader((out / "stats" / "training.csv").open()))
    assert [int(r["step"]) for r in log] == list(range(1, 9))  # steps 1-4 from the checkpoint, 5-8 from the resume
    assert [int(r["step"]) for r in csv.DictReader((out / "stats" / "metrics.csv").open())] == [8]


def test_the_video_needs_its_extra_and_says_so(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    args = ["train", "--data", "demo", *DEMO_ARGS, "--max-steps", "2", "--output-dir", str(tmp_path / "r")]
    assert main([*args, "--no-progress", "--video"]) == 2
    assert "pip install 'splatkit[video]'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything is made or written


def _camera(eye):
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    return c2w_to_viewmat(look_at_c2w(torch.tensor(eye, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), up))


def test_the_trajectory_passes_through_the_keyframes_smoothly():
    from splatkit.splat.cameras import SplatCameras

    eyes = [[4.0, 0.0, 1.0], [0.0, 4.0, 1.5], [-4.0, 0.0, 1.0]]
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    cams = SplatCameras(torch.stack([_camera(e) for e in eyes]).float(), K.expand(3, 3, 3), 32, 24)
    path = interpolated_path(cams, 9)
    assert len(path) == 9 and (path.width, path.height) == (32, 24) and torch.equal(path.Ks[4], K)
    for i, key in ((0, 0), (4, 1), (8, 2)):  # the path starts, passes and ends at the cameras
        assert torch.allclose(path.viewmats[i], cams.viewmats[key], atol=1e-5)
    c2w = viewmat_to_c2w(path.viewmats.double())
    R = c2w[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(9, 3, 3), atol=1e-5)
    steps = (c2w[1:, :3, 3] - c2w[:-1, :3, 3]).norm(dim=-1)
    assert steps.max() < 2 * steps.min()  # no jumps between consecutive frames
    one = interpolated_path(cams[0], 3)
    assert torch.allclose(one.viewmats, cams.viewmats[:1].expand(3, 4, 4), atol=1e-6)


def test_the_trajectory_of_an_unordered_capture_stays_around_the_scene():
    """The demo's cameras are listed in a spiral that jumps ~137 degrees from one to the next (as
    internet photos come in no spatial order): a path in list order cut through the object.
    Every frame must stay as far out as the training cameras and nearly all must see the centre."""
    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
    from splatkit.splat.cameras import SplatCameras

    demo = SplatDemoDataProvider(SplatDemoDataProviderConfig(image_size=16, supersample=1))  # the same camera layout
    cams = SplatCameras.cat(demo.train_cameras())
    path = interpolated_path(cams, 60)
    centre = (path.viewmats.double() @ torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))[:, :3]
    uv = (path.Ks.double() @ centre[..., None])[..., 0]
    uv = uv[:, :2] / uv[:, 2:]
    sees = (centre[:, 2] > 0) & (uv >= 0).all(dim=1) & (uv[:, 0] < path.width) & (uv[:, 1] < path.height)
    assert int(sees.sum()) >= 0.9 * len(path), int(sees.sum())
    dist = viewmat_to_c2w(path.viewmats.double())[:, :3, 3].norm(dim=-1)
    train = viewmat_to_c2w(cams.viewmats.double())[:, :3, 3].norm(dim=-1)
    assert 0.8 * train.min() < dist.min() and dist.max() < 1.2 * train.max(), (dist.min(), dist.max())


def test_stacked_rows_pads_narrow_rows_and_keeps_every_panel():
    from splatkit.evaluation import stacked_rows

    a, b, c = (np.full(shape, v, np.uint8) for shape, v in (((5, 3, 3), 1), ((5, 7, 3), 2), ((2, 4, 3), 3)))
    picture = stacked_rows([[a, b], [c]], gap=4)
    assert picture.shape == (5 + 4 + 2 + 4, 10, 3)
    assert (picture[:5, :3] == 1).all() and (picture[:5, 3:10] == 2).all() and (picture[9:11, :4] == 3).all()
    assert (picture[5:9] == 48).all() and (picture[9:11, 4:] == 48).all()  # gap and padding: background
