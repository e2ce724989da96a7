"""Antialiased rasterization on a real capture: zoomed-out views with and without it.

Trains a scene twice with ``splatkit train``'s defaults (same data, split, seed and steps),
with ``--renderer.rasterize-mode classic`` and ``antialiased`` (Mip-Splatting's opacity
compensation of the screen-space blur), and scores both on the test views at the training
resolution and at 1/2 and 1/4 of it (intrinsics scaled, ground truth area-averaged): a view
at 1/k of the resolution shows the scene as from k times the distance (Mip-Splatting's
multi-scale protocol: the screen-space dilation stays 0.3 px while every Gaussian shrinks k
times). Prints one JSON (PSNR / SSIM per scale and run, Gaussians, seconds) and writes
``antialiasing.png`` into ``--out-dir``: a test view at 1/4 resolution (ground truth |
classic | antialiased, enlarged 4x nearest), and the same camera moved back to twice its
distance from the scene's centre at full resolution (classic | antialiased).

    python benchmarks/antialiasing.py --scene fox --steps 2000

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
import torch.nn.functional as F

from splatkit.cli import _data_provider
from splatkit.evaluation import labelled, stacked_rows, to_uint8, write_png
from splatkit.metrics import psnr, ssim
from splatkit.splat.cameras import SplatCameras

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appearance import scene_command, train  # noqa: E402  (the same scenes and runs)

SCALES = (1, 2, 4)


def downscaled(cameras: SplatCameras, k: int) -> SplatCameras:
    """The same cameras at 1/k of the resolution (pixel-corner intrinsics scale exactly)."""
    Ks = cameras.Ks.clone()
    Ks[:, :2] /= k
    return SplatCameras(cameras.viewmats, Ks, cameras.width // k, cameras.height // k)


def area_down(image: torch.Tensor, k: int) -> torch.Tensor:
    """``[H, W, C]`` averaged over k x k blocks (the far rows / columns cropped)."""
    if k == 1:
        return image
    x = image.permute(2, 0, 1)[None].float()
    return F.avg_pool2d(x, k)[0].permute(1, 2, 0)


def scores(trainer, frames) -> dict:
    out = {}
    for k in SCALES:
        p, s = [], []
        for f in frames:
            with torch.no_grad():
                img = trainer.render_view(downscaled(f.cameras, k)).images[0].clamp(0, 1)
            gt = area_down(f.images[0], k)
            mask = None if f.masks is None else (area_down(f.masks[0].float(), k) > 0.5)[None]
            p.append(float(psnr(img[None], gt[None], mask)))
            s.append(float(ssim(img[None], gt[None]).mean()))
        out[f"1/{k}"] = {"psnr": round(sum(p) / len(p), 3), "ssim": round(sum(s) / len(s), 4)}
    return out


def moved_back(cameras: SplatCameras, center: torch.Tensor, factor: float = 2.0) -> SplatCameras:
    """The cameras moved along their optical axis to ``factor`` times their distance from ``center``."""
    vm = cameras.viewmats.clone()
    c2w = torch.linalg.inv(vm[0].double())
    dist = float((c2w[:3, 3] - center.double()).norm())
    c2w[:3, 3] -= c2w[:3, 2] * dist * (factor - 1)
    vm[0] = torch.linalg.inv(c2w).float()
    return SplatCameras(vm, cameras.Ks, cameras.width, cameras.height)


def enlarge(image: np.ndarray, k: int) -> np.ndarray:
    return image.repeat(k, axis=0).repeat(k, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", choices=["statue", "fox"], default="fox")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--out-dir", default="/tmp/splatkit_antialiasing")
    args = ap.parse_args()
    out = Path(args.out_dir)
    cmd = scene_command(args.scene, args.factor)
    provider = _data_provider(cmd.data, cmd.demo, cmd.colmap, cmd.blender)
    frames = list(provider.test_frames())
    report = {"scene": args.scene, "steps": args.steps, "seed": args.seed, "factor": args.factor, "runs": {}}
    trainers = {}
    for mode in ("classic", "antialiased"):
        print(f"[{args.scene}] {mode} ...", file=sys.stderr)
        renderer = dataclasses.replace(cmd.renderer, rasterize_mode=mode)
        trainer, row = train(cmd, provider, args.steps, args.seed, out / mode, renderer=renderer)
        row["scales"] = scores(trainer, frames)
        report["runs"][mode] = row
        trainers[mode] = trainer
        print(f"[{args.scene}] {mode}: {row}", file=sys.stderr)
    a, b = report["runs"]["classic"]["scales"], report["runs"]["antialiased"]["scales"]
    report["antialiased_minus_classic"] = {s: {m: round(b[s][m] - a[s][m], 4) for m in ("psnr", "ssim")} for s in a}

    f = frames[0]
    k = SCALES[-1]
    top = [labelled(enlarge(to_uint8(area_down(f.images[0], k)), k), f"{f.names[0]} at 1/{k}: ground truth")]
    center = torch.stack([c.centers[0] for c in provider.train_cameras()]).mean(0)
    far = moved_back(f.cameras, center)
    bottom = []
    for mode in trainers:
        with torch.no_grad():
            img = trainers[mode].render_view(downscaled(f.cameras, k)).images[0].clamp(0, 1)
            zoomed = trainers[mode].render_view(far).images[0].clamp(0, 1)
        p = report["runs"][mode]["scales"][f"1/{k}"]["psnr"]
        top.append(labelled(enlarge(to_uint8(img), k), f"{mode}: mean PSNR at 1/{k} {p:.2f} dB"))
        bottom.append(labelled(to_uint8(zoomed), f"{mode}: twice as far, full resolution"))
    write_png(out / "antialiasing.png", stacked_rows([top, bottom]))
    report["picture"] = str(out / "antialiasing.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
