"""Write a trained splat in every export format, read it back, and measure what was lost; prints JSON.

    python benchmarks/format_roundtrip.py                 # train the demo scene for 1000 steps first
    python benchmarks/format_roundtrip.py --steps 300     # a shorter demo run
    python benchmarks/format_roundtrip.py --ply model.ply # an existing splat, seen from orbit cameras

Per format: file size (and bytes per Gaussian), write and read times, the largest error
of every parameter after the round trip (positions, log scales, opacity after the
sigmoid, base colour ``0.5 + SH_C0 * dc``, unit quaternion components, higher SH
coefficients; Gaussians matched through the writer's storage order), what the format
drops (:func:`splatkit.splat.formats.dropped_information`), and the PSNR of renders of
every test camera against the original model's renders (plus, for the demo scene, the
PSNR against the ground-truth test images for the original and each round trip).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from splatkit.splat.model import SplatModel
from splatkit.utils.files import json_safe


def _train_demo(steps: int, out_dir: Path):
    from splatkit.cli import demo_setup
    from splatkit.data_provider import SplatDemoDataProvider
    from splatkit.trainer import SplatTrainer

    provider = SplatDemoDataProvider()
    config, densification = demo_setup(steps)
    config = dataclasses.replace(config, output_dir=str(out_dir / "run"), device="cpu")
    trainer = SplatTrainer(config, provider, densification=densification)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    frames = list(provider.test_frames())
    cams = [(f.cameras.viewmats, f.cameras.Ks, f.cameras.width, f.cameras.height) for f in frames]
    return SplatModel.from_training_state(trainer.training_state), cams, [f.images for f in frames], seconds


def _orbit_cameras(model, n: int = 8, size: int = 128):
    """``n`` cameras on a circle around the model's robust centre, looking at it."""
    from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w

    means = model.means.detach().double()
    center = means.median(dim=0).values
    radius = float(torch.quantile((means - center).norm(dim=1), 0.9)) * 2.5 + 1e-6
    f = 1.2 * size
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float32)[None]
    cams = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = center + radius * torch.tensor([math.cos(a), math.sin(a), 0.4], dtype=torch.float64)
        vm = c2w_to_viewmat(look_at_c2w(eye, center, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)))
        cams.append((vm.float()[None], K, size, size))
    return cams


@torch.no_grad()
def _render(model, cams) -> list[torch.Tensor]:
    from splatkit.renderer import rasterize

    a = model.activated()
    out = []
    for viewmats, Ks, width, height in cams:
        img, _, _ = rasterize(
            a["means"].float(),
            a["quats"].float(),
            a["scales"].float(),
            a["opacities"].float(),
            a["colors"].float(),
            viewmats.float(),
            Ks.float(),
            width,
            height,
            sh_degree=model.sh_degree,
        )
        out.append(img.clamp(0, 1))
    return out


def _psnr_of(a: torch.Tensor, b: torch.Tensor) -> float:
    from splatkit.metrics import psnr

    return float(psnr(a.float(), b.float()).mean())


def _max_errors(original, loaded) -> dict:
    from splatkit.splat.conventions import normalize_quat
    from splatkit.splat.sh import SH_C0

    def err(a, b):
        return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0

    q_ref = normalize_quat(original.quats.double())
    q = normalize_quat(loaded.quats.double())
    q = q * torch.where((q * q_ref).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    k = loaded.shN.shape[1]
    return {
        "means": err(loaded.means, original.means),
        "log_scales": err(loaded.scales, original.scales),
        "opacity": err(torch.sigmoid(loaded.opacities), torch.sigmoid(original.opacities)),
        "base_color": err(SH_C0 * loaded.sh0, SH_C0 * original.sh0),
        "quat": err(q, q_ref),
        "sh": err(loaded.shN, original.shN[:, :k]) if k else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ply", help="an existing splat (any supported format) instead of training the demo")
    parser.add_argument("--steps", type=int, default=1000, help="demo training steps (without --ply)")
    parser.add_argument("--views", type=int, default=8, help="orbit cameras for --ply")
    args = parser.parse_args(argv)

    from splatkit.splat.formats import FORMATS, dropped_information, filter_model, read_splat, write_splat

    with tempfile.TemporaryDirectory(prefix="splatkit_formats_") as tmp:
        tmp = Path(tmp)
        if args.ply:
            model, targets = read_splat(args.ply), None
            cams = _orbit_cameras(model, args.views)
            scene = {"source": str(args.ply), "cameras": f"{len(cams)} orbit views, 128x128"}
        else:
            model, cams, targets, train_seconds = _train_demo(args.steps, tmp)
            scene = {
                "source": f"demo scene trained for {args.steps} steps",
                "train_seconds": round(train_seconds, 1),
                "cameras": f"{len(cams)} test views, {cams[0][2]}x{cams[0][3]}",
            }
        model = model.to("cpu")
        reference = _render(model, cams)
        result = {**scene, "num_gaussians": model.num_gaussians, "sh_degree": model.sh_degree}
        if targets is not None:
            result["psnr_vs_ground_truth"] = {"original": sum(map(_psnr_of, reference, targets)) / len(targets)}
        result["formats"] = {}
        ply_bytes = None
        for name, fmt in FORMATS.items():
            path = tmp / f"model{fmt.suffix}"
            t0 = time.perf_counter()
            write_splat(model, path, name)
            t1 = time.perf_counter()
            loaded = read_splat(path)
            t2 = time.perf_counter()
            original = filter_model(model, fmt.write_order(model.params())) if fmt.write_order is not None else model
            renders = _render(loaded, cams)
            psnrs = [_psnr_of(a, b) for a, b in zip(renders, reference)]
            size = path.stat().st_size
            ply_bytes = ply_bytes or size
            entry = {
                "bytes": size,
                "bytes_per_gaussian": round(size / max(model.num_gaussians, 1), 2),
                "size_vs_ply": round(size / ply_bytes, 4),
                "write_seconds": round(t1 - t0, 3),
                "read_seconds": round(t2 - t1, 3),
                "max_error": _max_errors(original, loaded),
                "psnr_vs_original": {"mean": sum(psnrs) / len(psnrs), "min": min(psnrs), "per_view": psnrs},
                "dropped": dropped_information(model, name),
            }
            if targets is not None:
                result["psnr_vs_ground_truth"][name] = sum(map(_psnr_of, renders, targets)) / len(targets)
            result["formats"][name] = entry
    result = json_safe(result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
