"""Per-image appearance on a real capture: the same run with and without ``--appearance``.

Trains a scene with ``splatkit train``'s defaults (same data, split, seed and steps) once per
``--modes`` entry: without per-image correction (off), with the affine correction, with the
bilateral grid; and prints one JSON:
test PSNR (plain: test views rendered without correction, as exported), ``psnr_cc`` (after
the best affine colour fit per test image, gsplat's ``cc_psnr`` protocol), SSIM, Gaussians
and seconds of each, and each one's difference to off. It also writes ``appearance.png`` into
``--out-dir``: the first test views, ground truth | render, without and with the corrections.

    python benchmarks/appearance.py --scene statue --steps 3000
    python benchmarks/appearance.py --scene statue --steps 3000 --modes off bilateral
    python benchmarks/appearance.py --scene fox --steps 3000

statue_of_liberty (internet photos: every photo its own exposure and white balance) is read
at 1/4 resolution with its masks, fox at 1/4, from ../shared/datasets (or $SPLATKIT_DATASETS).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from splatkit.cli import TrainCommand, _data_provider, build_trainer
from splatkit.data_provider import SplatBlenderDataProviderConfig, SplatColmapDataProviderConfig
from splatkit.evaluation import preview_grid, to_uint8, write_png
from splatkit.metrics import psnr
from splatkit.modules import SplatEvaluator
from splatkit.modules.exporter import SplatExporterConfig
from splatkit.modules.progress import SplatProgressTrackerConfig
from splatkit.trainer import SplatTrainerConfig


def scene_command(name: str, factor: int) -> TrainCommand:
    root = Path(os.environ.get("SPLATKIT_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    if name == "statue":
        path = root / "statue_of_liberty"
        colmap = SplatColmapDataProviderConfig("", "", factor=factor, masks_dir=str(path / "masks"))
        cmd = TrainCommand(data=str(path), colmap=colmap)
    elif name == "fox":
        path = root / "fox"
        cmd = TrainCommand(data=str(path), blender=SplatBlenderDataProviderConfig("", factor=factor))
    else:
        raise SystemExit(f"unknown scene {name!r}")
    if not path.is_dir():
        raise SystemExit(f"{path} not found; set SPLATKIT_DATASETS")
    return cmd


def train(cmd: TrainCommand, provider, steps: int, seed: int, out: Path, **flags):
    """Train ``cmd`` with ``flags`` (TrainCommand fields, e.g. ``appearance="affine"``) into a fresh
    ``out`` for ``steps`` steps, exporting nothing; ``(trainer, figures of the final evaluation)``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = dataclasses.replace(
        cmd,
        progress=SplatProgressTrackerConfig(progress=False),
        exporter=SplatExporterConfig(save_splat=False, save_ckpt=False),
        trainer=SplatTrainerConfig(max_steps=steps, seed=seed, output_dir=str(out)),
        **flags,
    )
    trainer, _ = build_trainer(cmd, provider)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    final = next(m for m in trainer.modules if isinstance(m, SplatEvaluator)).history[-1]
    return trainer, {
        "psnr": final["psnr"],
        "psnr_cc": final["psnr_cc"],
        "ssim": final["ssim"],
        "num_gaussians": trainer.num_gaussians,
        "train_seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", choices=["statue", "fox"], default="statue")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--views", type=int, default=2, help="test views in appearance.png")
    ap.add_argument("--out-dir", default="/tmp/splatkit_appearance")
    ap.add_argument("--modes", nargs="+", default=["off", "affine"], choices=["off", "affine", "bilateral"])
    args = ap.parse_args()
    out = Path(args.out_dir)
    cmd = scene_command(args.scene, args.factor)
    provider = _data_provider(cmd.data, cmd.demo, cmd.colmap, cmd.blender)
    report = {"scene": args.scene, "steps": args.steps, "seed": args.seed, "factor": args.factor, "runs": {}}
    renders = {}
    frames = [f for _, f in zip(range(args.views), provider.test_frames())]
    modes = ["off"] + [m for m in args.modes if m != "off"]
    for name in modes:
        print(f"[{args.scene}] appearance {name} ...", file=sys.stderr)
        trainer, row = train(cmd, provider, args.steps, args.seed, out / name, appearance=name)
        report["runs"][name] = row
        with torch.no_grad():
            renders[name] = [trainer.render_view(f.cameras).images[0].clamp(0, 1).cpu() for f in frames]
        print(f"[{args.scene}] {name}: {row}", file=sys.stderr)
    a = report["runs"]["off"]
    for name in modes[1:]:
        b = report["runs"][name]
        report[f"{name}_minus_off"] = {k: round(b[k] - a[k], 4) for k in ("psnr", "psnr_cc", "ssim")}
    views = []
    for i, f in enumerate(frames):
        gt, mask = f.images[0], None if f.masks is None else f.masks[0:1]
        for name in modes:
            label = "without" if name == "off" else f"with {name}"
            p = float(psnr(renders[name][i][None], gt[None], mask))
            views.append((f"{f.names[0]} {label}", to_uint8(gt), to_uint8(renders[name][i]), p))
    write_png(out / "appearance.png", preview_grid(views, columns=len(modes)))
    report["picture"] = str(out / "appearance.png")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
