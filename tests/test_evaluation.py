"""Evaluator, LPIPS and TensorBoard: numbers checked against independent computations."""

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from splatkit.cli import demo_setup, main
from splatkit.evaluation import LABEL_HEIGHT
from splatkit.lpips import LPIPSUnavailable, backbone_shapes, load_lpips, tap_channels
from splatkit.metrics import psnr, ssim
from splatkit.modules import SplatEvaluator, SplatExporter, SplatTensorboard
from splatkit.trainer import SplatTrainer

DEMO_ARGS = [
    "--demo.image-size",
    "32",
    "--demo.num-cameras",
    "16",
    "--demo.num-init-points",
    "400",
    "--demo.supersample",
    "1",
]


def tiny_demo():
    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig

    return SplatDemoDataProvider(
        SplatDemoDataProviderConfig(image_size=32, num_cameras=16, num_init_points=400, supersample=1)
    )


def train(tmp_path, steps, modules):
    cfg, dens = demo_setup(steps)
    cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "run"))
    trainer = SplatTrainer(cfg, tiny_demo(), densification=dens, modules=modules)
    trainer.run()
    return trainer


def make_lpips_weights(folder, net="alex", seed=0):
    """Random LPIPS weights in the files' real layout (torchvision backbone + lpips heads)."""
    g = torch.Generator().manual_seed(seed)
    backbone = {k: torch.randn(s, generator=g) * 0.1 for k, s in backbone_shapes(net).items()}
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(tap_channels(net))}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(backbone, folder / {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}[net])
    torch.save(heads, folder / f"lpips_{net}.pth")
    return backbone, heads


def independent_lpips_alex(backbone, heads, img, gt):
    """LPIPS written from the paper with torch.nn layers in torchvision's AlexNet order."""
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
    )
    features.load_state_dict({k.removeprefix("features."): v for k, v in backbone.items()})
    shift = torch.tensor([-0.030, -0.088, -0.188]).reshape(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).reshape(1, 3, 1, 1)

    def taps(x):
        x = ((x.permute(0, 3, 1, 2) * 2 - 1) - shift) / scale
        out = []
        for i, layer in enumerate(features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):
                out.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return out

    with torch.no_grad():
        return sum(
            (heads[f"lin{i}.model.1.weight"] * (a - b) ** 2).sum(1).mean(dim=(1, 2))
            for i, (a, b) in enumerate(zip(taps(img), taps(gt)))
        )


def test_identical_images_give_inf_one_zero(tmp_path):
    img = torch.rand(2, 70, 70, 3, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(img, img)).all()
    assert torch.allclose(ssim(img, img), torch.ones(2), atol=1e-6)
    make_lpips_weights(tmp_path)
    lp = load_lpips("alex", tmp_path)
    assert torch.equal(lp(img, img), torch.zeros(2))
    assert (lp(img, img.flip(1)) > 0).all()


def test_lpips_matches_independent_network_and_reports_missing_weights(tmp_path, monkeypatch):
    backbone, heads = make_lpips_weights(tmp_path / "w")
    g = torch.Generator().manual_seed(1)
    img, gt = torch.rand(2, 64, 80, 3, generator=g), torch.rand(2, 64, 80, 3, generator=g)
    ours = load_lpips("alex", tmp_path / "w")(img, gt)
    ref = independent_lpips_alex(backbone, heads, img, gt)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6), (ours, ref)
    make_lpips_weights(tmp_path / "v", net="vgg")
    assert load_lpips("vgg", tmp_path / "v")(img, gt).shape == (2,)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(LPIPSUnavailable, match="alexnet-owt-7be5be79.pth .* and lpips_alex.pth"):
        load_lpips("alex", tmp_path / "nothing_here")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "alexnet-owt-7be5be79.pth").write_bytes(b"not a checkpoint")
    torch.save(heads, tmp_path / "bad" / "lpips_alex.pth")
    with pytest.raises(LPIPSUnavailable, match="could not load LPIPS weights"):
        load_lpips("alex", tmp_path / "bad")


def test_evaluator_numbers_files_and_eval_command(tmp_path):
    """Train with the evaluator and exporter, check its figures against torchmetrics and
    a direct PSNR, then `splatkit eval` on the checkpoint reproduces them."""
    tm = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics gives the independent SSIM")
    make_lpips_weights(tmp_path / "w")
    out = tmp_path / "run"
    ev = SplatEvaluator(out, eval_steps=[20, 40], lpips_weights=tmp_path / "w")
    trainer = train(tmp_path, 40, [ev, SplatExporter(out, [40])])
    stats = json.loads((out / "stats" / "step_000040.json").read_text())
    assert stats["step"] == 40 and stats["num_images"] == 2 and stats["lpips_net"] == "alex"
    assert stats["num_gaussians"] == trainer.training_state.num_gaussians
    assert stats["train_seconds"] > 0 and stats["peak_memory_mb"] > 50 and stats["render_fps"] > 0

    ts = trainer.training_state
    lp = load_lpips("alex", tmp_path / "w")
    direct_psnrs = []
    for row, frame in zip(stats["images"], trainer.data_provider.test_frames()):
        with torch.no_grad():
            img = trainer.renderer.render(ts.params, frame.cameras, ts.sh_degree, trainer.backgrounds(1)).images
        img = img.clamp(0, 1).double()
        gt = frame.images.double()
        mse = float(((img - gt) ** 2).mean())
        direct_psnrs.append(-10 * math.log10(mse))
        assert row["psnr"] == pytest.approx(direct_psnrs[-1], abs=1e-4)
        # torchmetrics reflect-pads; where the 11x11 window lies inside the image (the
        # region we average, as scikit-image and Wang et al.'s reference do) its map is exact.
        _, ref_map = tm.structural_similarity_index_measure(
            img.permute(0, 3, 1, 2),
            gt.permute(0, 3, 1, 2),
            gaussian_kernel=True,
            sigma=1.5,
            kernel_size=11,
            data_range=1.0,
            return_full_image=True,
        )
        assert row["ssim"] == pytest.approx(float(ref_map[..., 5:-5, 5:-5].mean()), abs=1e-6)
        assert row["lpips"] == pytest.approx(float(lp(img.float(), gt.float())[0]), rel=1e-5)
    assert stats["psnr"] == pytest.approx(np.mean(direct_psnrs), abs=1e-4)  # the mean of per-image dB

    rows = list(csv.DictReader((out / "stats" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [20, 40]
    assert float(rows[1]["psnr"]) == pytest.approx(stats["psnr"])
    assert (out / "stats" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pngs = sorted((out / "renders" / "step_000040").glob("*.png"))
    assert len(pngs) == 2
    from PIL import Image

    assert Image.open(pngs[0]).size == (3 * 32, LABEL_HEIGHT + 32)  # ground truth | render | error, labelled

    # The same numbers from the command line, on the checkpoint of that step.
    rc = main(
        [
            "eval",
            str(out / "ckpts" / "step_000040.ckpt"),
            "--data",
            "demo",
            *DEMO_ARGS,
            "--output-dir",
            str(tmp_path / "eval"),
            "--lpips-weights",
            str(tmp_path / "w"),
        ]
    )
    assert rc == 0
    again = json.loads((tmp_path / "eval" / "stats" / "step_000040.json").read_text())
    for key in ("psnr", "ssim", "lpips", "num_gaussians", "num_images", "train_seconds"):
        assert again[key] == pytest.approx(stats[key], rel=1e-6), key


def test_lpips_unavailable_is_reported_not_invented(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    out = tmp_path / "run"
    train(tmp_path, 10, [SplatEvaluator(out, eval_steps=[10], save_images=False)])
    stats = json.loads((out / "stats" / "step_000010.json").read_text())
    assert stats["lpips"] == "unavailable"
    assert "alexnet-owt-7be5be79.pth" in stats["lpips_unavailable_reason"]
    assert str(tmp_path / "empty_hub") in stats["lpips_unavailable_reason"]
    assert all(r["lpips"] is None for r in stats["images"])
    assert not (out / "renders").exists()
    assert list(csv.DictReader((out / "stats" / "metrics.csv").open()))[0]["lpips"] == ""


def test_tensorboard_events_hold_scalars_images_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path / "tb"
    train(tmp_path, 20, [SplatTensorboard(log_dir, log_every=5, image_every=10)])
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in (
        "loss/total",
        "loss/l1",
        "loss/dssim",
        "train/psnr",
        "gaussians/count",
        "lr/means",
        "lr/opacities",
        "memory/mb",
        "time/step_seconds",
        "test/psnr",
    ):
        assert tag in tags["scalars"], tag
    assert [e.step for e in acc.Scalars("loss/total")] == [5, 10, 15, 20]
    assert all(e.value > 0 for e in acc.Scalars("gaussians/count"))
    assert tags["images"] == ["test/render"] and [e.step for e in acc.Images("test/render")] == [10, 20]
    img = acc.Images("test/render")[0]
    assert (img.width, img.height) == (96, LABEL_HEIGHT + 32)
    assert {"gaussians/opacity", "gaussians/scale_max"} <= set(tags["histograms"])


def test_progress_tracker_writes_plain_lines_when_not_a_terminal(tmp_path):
    import io
    import re

    from splatkit.modules import SplatProgressTracker

    class Pipe(io.StringIO):
        def isatty(self):
            return False

    out = Pipe()
    train(tmp_path, 20, [SplatProgressTracker(update_every=5, log_every=10, stream=out)])
    lines = out.getvalue().splitlines()
    # On a CPU, first an estimate of the run time; then steps 10 and 20; no bar, no carriage returns.
    assert len(lines) == 3, lines
    assert re.fullmatch(
        r"splatkit: 20 steps on this CPU: about \d+ s to \d+ s \(\d+\.\d{3} s per step now, "
        r"\d+ Gaussians at 32x32; steps slow down as densification adds Gaussians\)",
        lines[0],
    ), lines
    pattern = r"step (10|20)/20 loss \d+\.\d{4} train_psnr \d+\.\d\d gaussians \d+ \d+\.\d steps/s eta \d+s"
    assert all(re.fullmatch(pattern, line) for line in lines[1:]), lines
    assert "\r" not in out.getvalue()


def test_masked_psnr_counts_only_masked_in_pixels():
    g = torch.Generator().manual_seed(2)
    img, gt = torch.rand(1, 8, 8, 3, generator=g), torch.rand(1, 8, 8, 3, generator=g)
    mask = torch.zeros(1, 8, 8, 1, dtype=torch.bool)
    mask[:, 2:5, 1:7] = True
    inside = ((img - gt) ** 2)[mask.expand_as(img)].mean()
    assert float(psnr(img, gt, mask)[0]) == pytest.approx(-10 * math.log10(float(inside)), rel=1e-5)
    assert float(psnr(img, gt, mask)[0]) != pytest.approx(float(psnr(img, gt)[0]), rel=1e-3)


def test_log_lines_and_warnings_go_above_the_bar_not_through_it(tmp_path, monkeypatch):
    """On a terminal, a log record or a Python warning in the middle of training is written on a
    line of its own (tqdm clears the bar first), never glued to the bar ('...step/s]WARNING')."""
    import io
    import logging
    import sys
    import warnings

    from splatkit.modules import SplatBaseModule, SplatProgressTracker

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    class Talker(SplatBaseModule):
        def post_step(self, step, **kwargs):
            if step == 12:
                logging.getLogger("splatkit").warning("a log record at step %d", step)
            if step == 17:
                warnings.warn("a Python warning at step 17", UserWarning, stacklevel=1)

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    showwarning = warnings.showwarning
    try:
        train(tmp_path, 20, [SplatProgressTracker(update_every=5), Talker()])
    finally:
        logging.getLogger().removeHandler(handler)
    text = term.getvalue()
    for message in ("a log record at step 12", "a Python warning at step 17"):
        at = text.index(message)
        line_start = max(text.rfind("\n", 0, at), text.rfind("\r", 0, at)) + 1
        assert "step/s" not in text[line_start:at] and "it/s" not in text[line_start:at], text[line_start : at + 40]
    assert "train_psnr=" in text and "20/20" in text  # the bar, with the batch PSNR labelled as such
    assert warnings.showwarning is showwarning  # warnings are handed back as they were
