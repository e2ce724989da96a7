"""Depth supervision on a real capture: the same run with and without SfM depth targets.

Trains statue_of_liberty (1/4 resolution, with its masks) twice with ``splatkit train``'s
defaults (same data, split, seed and steps), once without depth targets and once with
``--colmap.depths sfm`` (each training image's own SfM points, gsplat's ``--depth_loss``, at
the loss's default depth_lambda 0.01), and prints one JSON: test PSNR / SSIM (masked), the
depth error on the test views (median and mean ``|d/d* - 1|`` of the rendered expected depth
``d`` at each test image's own SfM points ``d*``, inside the mask), Gaussians and seconds. It
writes ``depth.png`` into ``--out-dir``: for the first test views, ground truth | render
without | render with on one row, and the SfM points | rendered inverse depth without | with
on the next (turbo colours, one scale per view).

    python benchmarks/depth_supervision.py --steps 3000

The data is read from ../shared/datasets (or $SPLATKIT_DATASETS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from splatkit.cli import _data_provider
from splatkit.evaluation import labelled, stacked_rows, to_uint8, write_png
from splatkit.metrics import psnr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appearance import scene_command, train  # noqa: E402  (the same scenes and runs)


def depth_render(trainer, cameras):
    """``(image [H, W, 3], expected depth [H, W])`` of the trained splat, whatever the run rendered."""
    renderer = dataclasses.replace(trainer.renderer, render_depth=True)
    ts = trainer.training_state
    with torch.no_grad():
        out = renderer.render(ts.params, cameras, ts.sh_degree, trainer.backgrounds(len(cameras)))
    return out.images[0].clamp(0, 1), out.depths[0, ..., 0]


def depth_errors(trainer, frames) -> np.ndarray:
    """``|d/d* - 1|`` at every test pixel with an SfM depth ``d*`` (inside the mask)."""
    errs = []
    for f in frames:
        _, d = depth_render(trainer, f.cameras)
        target = f.depths[0, ..., 0]
        valid = target > 0
        if f.masks is not None:
            valid &= f.masks[0, ..., 0]
        errs.append(((d[valid] / target[valid]) - 1).abs().numpy())
    return np.concatenate(errs)


def turbo(inv_depth: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    import cv2

    x = ((inv_depth - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
    grey = (x * 255).round().to(torch.uint8).numpy()
    return cv2.applyColorMap(grey, cv2.COLORMAP_TURBO)[..., ::-1].copy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--views", type=int, default=2, help="test views in depth.png")
    ap.add_argument("--out-dir", default="/tmp/splatkit_depth")
    args = ap.parse_args()
    out = Path(args.out_dir)
    base = scene_command("statue", args.factor)
    report = {"scene": "statue", "steps": args.steps, "seed": args.seed, "factor": args.factor, "runs": {}}
    trainers, test_frames = {}, None
    for name, depths in (("off", "none"), ("sfm", "sfm")):
        cmd = dataclasses.replace(base, colmap=dataclasses.replace(base.colmap, depths=depths))
        provider = _data_provider(cmd.data, cmd.demo, cmd.colmap, cmd.blender)
        if test_frames is None:
            # the depth error is measured on the SfM points of the test views in both runs
            scored = dataclasses.replace(cmd.colmap, depths="sfm")
            test_frames = list(_data_provider(cmd.data, cmd.demo, scored, cmd.blender).test_frames())
        print(f"[statue] depth {name} ...", file=sys.stderr)
        trainer, row = train(cmd, provider, args.steps, args.seed, out / name)
        errs = depth_errors(trainer, test_frames)
        row["depth_rel_err_median"] = round(float(np.median(errs)), 4)
        row["depth_rel_err_mean"] = round(float(errs.mean()), 4)
        row["depth_points_scored"] = int(errs.size)
        report["runs"][name] = row
        trainers[name] = trainer
        print(f"[statue] {name}: {row}", file=sys.stderr)
    a, b = report["runs"]["off"], report["runs"]["sfm"]
    report["sfm_minus_off"] = {
        k: round(b[k] - a[k], 4) for k in ("psnr", "ssim", "depth_rel_err_median", "depth_rel_err_mean")
    }

    rows = []
    for f in test_frames[: args.views]:
        gt, mask = f.images[0], None if f.masks is None else f.masks[0:1]
        renders = {k: depth_render(t, f.cameras) for k, t in trainers.items()}
        target = f.depths[0, ..., 0]
        inv = {k: torch.where(d > 0, 1 / d.clamp_min(1e-9), torch.zeros_like(d)) for k, (_, d) in renders.items()}
        seen = 1 / target[target > 0]
        lo, hi = float(seen.quantile(0.02)) * 0.8, float(seen.quantile(0.98)) * 1.2
        points = turbo(torch.where(target > 0, 1 / target.clamp_min(1e-9), torch.zeros_like(target)), lo, hi)
        points[(target <= 0).numpy()] = 0
        top = [labelled(to_uint8(gt), f"{f.names[0]}: ground truth")]
        bottom = [labelled(points, "SfM points (inverse depth)")]
        for k, label in (("off", "without"), ("sfm", "with SfM depth")):
            img = renders[k][0]
            p = float(psnr(img[None], gt[None], mask))
            top.append(labelled(to_uint8(img), f"{label}: PSNR {p:.2f} dB"))
            bottom.append(labelled(turbo(inv[k], lo, hi), f"{label}: rendered inverse depth"))
        rows += [top, bottom]
    write_png(out / "depth.png", stacked_rows(rows))
    report["picture"] = str(out / "depth.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
