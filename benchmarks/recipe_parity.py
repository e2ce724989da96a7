"""splatkit's trainer with its defaults, side by side with gsplat's recipe, on the same data.

The recipe is the training loop of gsplat's ``examples/simple_trainer.py`` (gsplat 1.5.3),
followed step by step and written here independently of splatkit's trainer:

- initialisation: the capture's SfM points, else ``init_num_pts`` = 100k uniform in a cube of
  ``init_extent`` (3) x scene scale (gsplat's ``init_type="random"``); for NeRF-synthetic style
  captures (RGBA images, no points) the 3DGS convention's +-1.3 cube instead, as the Inria
  code and published gsplat runs on those scenes use; scales from the RMS distance to the 3
  nearest points, random quaternions, opacity ``init_opa``, SH DC from the point colours;
- scene scale: largest distance of any camera from the cameras' centroid, times 1.1;
- one Adam per parameter (lr x sqrt(batch), eps 1e-15 / sqrt(batch)), the paper's learning
  rates, the means' rate x scene scale decayed by ``ExponentialLR`` to 1% at the last step;
- loss ``lerp(L1, 1 - SSIM, 0.2)`` with ``fused_ssim(padding="valid")`` (the same maths as
  ``splatkit.metrics.ssim``, which is used); with masks, L1 over masked-in pixels and SSIM of
  images zeroed outside the mask, the render zeroed outside it (as upstream);
- SH degree ``min(step // 1000, 3)`` (0-based steps); images in seeded random order per epoch;
- densification: gsplat's own ``DefaultStrategy`` / ``MCMCStrategy`` objects imported from the
  installed gsplat package, called with gsplat's ``info`` dict after the optimiser step.
  Their tensor ops run on the CPU as they are, except two CUDA kernels that MCMC calls
  (``compute_relocation`` and ``quat_scale_to_covar_preci``), replaced by line-by-line ports
  (marked below); with ``--strategy mcmc`` the recipe is gsplat's "mcmc" preset
  (``init_opa=0.5, init_scale=0.1, opacity_reg=0.01, scale_reg=0.01``);
- rendering: ``splatkit.renderer.rasterize(backend="cpu")``, whose forward and backward are
  tested against gsplat's CUDA kernels, over the colour RGBA targets were composited on.

splatkit's side is exactly what ``splatkit train`` builds for the same data and strategy
(``splatkit.cli.build_trainer``), with no tuning flag. Both use the same provider object,
hence the same images, cameras and split. Each run is scored by one function here: PSNR over
masked-in pixels (all pixels without masks) and SSIM, per test image, averaged.

    python benchmarks/recipe_parity.py --scenes demo synthetic fox statue --steps 7000
    python benchmarks/recipe_parity.py --scenes fox --strategy mcmc --steps 7000

Prints one JSON object (and writes it to ``--out``), with a per-scene record of both runs and
``psnr_gap_db`` = splatkit - recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from splatkit.cli import TrainCommand, _data_provider, build_trainer  # noqa: E402
from splatkit.data_provider import SplatBlenderDataProviderConfig, SplatColmapDataProviderConfig  # noqa: E402
from splatkit.data_provider.demo import write_synthetic_capture  # noqa: E402
from splatkit.metrics import psnr, ssim  # noqa: E402
from splatkit.modules.exporter import SplatExporterConfig  # noqa: E402
from splatkit.modules.progress import SplatProgressTrackerConfig  # noqa: E402
from splatkit.renderer import rasterize  # noqa: E402
from splatkit.splat.conventions import quat_to_rotmat  # noqa: E402
from splatkit.splat.model import knn_mean_distance  # noqa: E402
from splatkit.trainer import SplatTrainerConfig  # noqa: E402

SH_C0 = 0.28209479177387814


# ----------------------------------------------------------------------------- scenes
def datasets_root() -> Path:
    return Path(os.environ.get("SPLATKIT_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def scene_command(name: str, args) -> TrainCommand:
    """The ``splatkit train`` command of a scene: only data flags, no tuning."""
    if name == "demo":
        return TrainCommand(data="demo")
    if name == "synthetic":
        folder = Path(args.synthetic_dir)
        if not (folder / "transforms_test.json").is_file():
            print(f"writing the RGBA synthetic capture into {folder}", file=sys.stderr)
            write_synthetic_capture(folder, image_size=args.synthetic_size)
        return TrainCommand(data=str(folder))
    root = datasets_root()
    if name == "fox":
        path = root / "fox"
        if not path.is_dir():
            raise SystemExit(f"fox not found at {path}; set SPLATKIT_DATASETS")
        return TrainCommand(data=str(path), blender=SplatBlenderDataProviderConfig("", factor=args.factor))
    if name == "statue":
        path = root / "statue_of_liberty"
        if not path.is_dir():
            raise SystemExit(f"statue_of_liberty not found at {path}; set SPLATKIT_DATASETS")
        return TrainCommand(
            data=str(path),
            colmap=SplatColmapDataProviderConfig("", "", factor=args.factor, masks_dir=str(path / "masks")),
        )
    raise SystemExit(f"unknown scene {name!r}")


# ----------------------------------------------------------------------------- scoring
def score(render_fn, provider) -> dict:
    """Mean test PSNR (masked-in pixels) and SSIM of ``render_fn(cameras) -> [1, H, W, 3]``."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    psnrs, ssims = [], []
    for f in provider.test_frames():
        with torch.no_grad():
            img = render_fn(f.cameras).clamp(0, 1)
        gt = f.images
        psnrs.append(float(psnr(img, gt, f.masks)[0]))
        ssims.append(float(tm_ssim(img.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), data_range=1.0)))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "num_test_images": len(psnrs)}


# ----------------------------------------------------------------------------- the recipe
def _relocation_cpu(opacities, scales, ratios, binoms):
    """Port of gsplat's ``relocation`` CUDA kernel (gsplat/cuda/csrc/relocation.cu), one thread
    per Gaussian: new opacity ``1 - (1 - o)^(1/n)`` and scales times ``o / sum_{i=1..n}
    sum_{k<i} C(i-1, k) (-1)^k / sqrt(k+1) new_o^(k+1)``, in float32 as the kernel computes."""
    n_max = binoms.shape[0]
    ratios = ratios.clamp(1, n_max).int()
    new_o = 1.0 - torch.pow(1.0 - opacities, 1.0 / ratios.float())
    denom = torch.zeros_like(opacities)
    for i in range(1, int(ratios.max()) + 1):
        active = ratios >= i
        for k in range(i):
            term = (-1.0) ** k / math.sqrt(k + 1) * torch.pow(new_o, k + 1)
            denom = denom + torch.where(active, binoms[i - 1, k] * term, 0.0)
    return new_o, (opacities / denom)[:, None] * scales


def _quat_scale_to_covar_cpu(quats, scales, compute_covar=True, compute_preci=True, triu=False):
    """Port of gsplat's ``quat_scale_to_covar_preci`` (its PyTorch reference ``_quat_scale_to_covar_preci``):
    ``R S S^T R^T`` from normalised wxyz quaternions (MCMC uses only the covariance)."""
    M = quat_to_rotmat(quats) * scales[:, None, :]
    covars = M @ M.transpose(-1, -2) if compute_covar else None
    return covars, None


def _install_cpu_ports() -> None:
    import gsplat.strategy.ops as ops

    ops.compute_relocation = _relocation_cpu
    ops.quat_scale_to_covar_preci = _quat_scale_to_covar_cpu


def run_recipe(provider, steps: int, seed: int, strategy_name: str, log_every: int = 0) -> dict:
    from gsplat.strategy import DefaultStrategy, MCMCStrategy

    mcmc = strategy_name == "mcmc"
    _install_cpu_ports()
    torch.manual_seed(42 + seed)  # simple_trainer's set_random_seed(42 + local_rank)
    np.random.seed(42 + seed)
    init_opa, init_scale = (0.5, 0.1) if mcmc else (0.1, 1.0)
    opacity_reg = scale_reg = 0.01 if mcmc else 0.0

    train_cams = provider.train_cameras()
    test_cams = [f.cameras for f in (provider.test_frame(i) for i in range(provider.num_test_frames()))]
    centers = torch.cat([torch.linalg.inv(c.viewmats.double())[:, :3, 3] for c in train_cams + test_cams])
    scene_scale = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1

    points, rgbs = provider.initial_points()
    background = provider.background
    if points.shape[0] >= 2:
        init = "sfm"
    elif background is not None:  # RGBA, no points: the NeRF-synthetic convention
        init = "blender cube +-1.3"
        points = (torch.rand(100_000, 3) * 2 - 1) * 1.3
        rgbs = torch.rand(100_000, 3)
    else:
        init = "random cube +-3 x scene scale"
        points = 3.0 * scene_scale * (torch.rand(100_000, 3) * 2 - 1)
        rgbs = torch.rand(100_000, 3)
    scales = torch.log(knn_mean_distance(points.float()) * init_scale)[:, None].repeat(1, 3)  # gsplat's knn(x, 4)
    N = points.shape[0]
    quats = torch.rand(N, 4)
    opacities = torch.logit(torch.full((N,), init_opa))
    colors = torch.zeros(N, 16, 3)
    colors[:, 0] = (rgbs - 0.5) / SH_C0
    splats = {
        "means": torch.nn.Parameter(points.float()),
        "scales": torch.nn.Parameter(scales),
        "quats": torch.nn.Parameter(quats),
        "opacities": torch.nn.Parameter(opacities),
        "sh0": torch.nn.Parameter(colors[:, :1].clone()),
        "shN": torch.nn.Parameter(colors[:, 1:].clone()),
    }
    lrs = {
        "means": 1.6e-4 * scene_scale,
        "scales": 5e-3,
        "quats": 1e-3,
        "opacities": 5e-2,
        "sh0": 2.5e-3,
        "shN": 2.5e-3 / 20,
    }
    BS = 1
    optimizers = {
        n: torch.optim.Adam(
            [{"params": splats[n], "lr": lrs[n] * math.sqrt(BS), "name": n}],
            eps=1e-15 / math.sqrt(BS),
            betas=(1 - BS * (1 - 0.9), 1 - BS * (1 - 0.999)),
            fused=True,
        )
        for n in splats
    }
    strategy = MCMCStrategy() if mcmc else DefaultStrategy()
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state() if mcmc else strategy.initialize_state(scene_scale=scene_scale)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizers["means"], gamma=0.01 ** (1.0 / steps))
    bg = None if background is None else torch.tensor([background], dtype=torch.float32)

    def render(cams, sh_degree):
        return rasterize(
            splats["means"],
            splats["quats"],
            torch.exp(splats["scales"]),
            torch.sigmoid(splats["opacities"]),
            torch.cat([splats["sh0"], splats["shN"]], 1),
            cams.viewmats,
            cams.Ks,
            cams.width,
            cams.height,
            sh_degree=sh_degree,
            backgrounds=None if bg is None else bg.expand(len(cams), 3),
            backend="cpu",
        )

    order_gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    n_train = provider.num_train_frames()
    t0 = time.perf_counter()
    for step in range(steps):
        if not order:
            order = torch.randperm(n_train, generator=order_gen).tolist()
        frame = provider.train_frame(order.pop(0))
        pixels, masks = frame.images, frame.masks
        sh_degree = min(step // 1000, 3)
        colors_out, _, meta = render(frame.cameras, sh_degree)
        info = {
            "means2d": meta["means2d"],
            "radii": meta["radii"],
            "width": frame.cameras.width,
            "height": frame.cameras.height,
            "n_cameras": len(frame.cameras),
            "gaussian_ids": None,
        }
        if masks is not None:
            colors_out = torch.where(masks, colors_out, 0.0)
        strategy.step_pre_backward(splats, optimizers, state, step, info)
        if masks is not None:
            m = masks[..., 0]
            l1 = F.l1_loss(colors_out[m], pixels[m])
            c_ssim, p_ssim = colors_out * masks, pixels * masks
        else:
            l1 = F.l1_loss(colors_out, pixels)
            c_ssim, p_ssim = colors_out, pixels
        # fused_ssim(padding="valid"): 11x11 Gaussian window (sigma 1.5) over the pixels where it fits,
        # which is splatkit.metrics.ssim (tested against torchmetrics)
        ssim_loss = 1.0 - ssim(c_ssim, p_ssim).mean()
        loss = torch.lerp(l1, ssim_loss, 0.2)
        if opacity_reg > 0:
            loss = loss + opacity_reg * torch.sigmoid(splats["opacities"]).mean()
        if scale_reg > 0:
            loss = loss + scale_reg * torch.exp(splats["scales"]).mean()
        loss.backward()
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        scheduler.step()
        if mcmc:
            strategy.step_post_backward(splats, optimizers, state, step, info, lr=scheduler.get_last_lr()[0])
        else:
            strategy.step_post_backward(splats, optimizers, state, step, info, packed=False)
        if log_every and (step + 1) % log_every == 0:
            print(
                f"  recipe step {step + 1}: loss {loss.item():.4f}, {len(splats['means'])} Gaussians, "
                f"{time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
            )
    seconds = time.perf_counter() - t0
    result = score(lambda cams: render(cams, 3)[0], provider)
    return {
        **result,
        "num_gaussians": len(splats["means"]),
        "train_seconds": round(seconds, 1),
        "init": init,
        "init_points": N,
        "scene_scale": round(scene_scale, 4),
    }


# ----------------------------------------------------------------------------- splatkit
def trainer_overrides(pairs: list[str]) -> dict:
    """``["init_extent=2.5", ...]`` as typed ``SplatTrainerConfig`` fields (for experiments)."""
    fields = {f.name: f for f in dataclasses.fields(SplatTrainerConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a SplatTrainerConfig field")
        out[key] = type(getattr(SplatTrainerConfig(), key))(value)
    return out


def run_splatkit(
    cmd: TrainCommand, provider, steps: int, seed: int, strategy_name: str, out_dir: Path, overrides: dict
) -> dict:
    cmd = dataclasses.replace(
        cmd,
        strategy=strategy_name,
        progress=SplatProgressTrackerConfig(progress=False),
        exporter=SplatExporterConfig(save_splat=False, save_ckpt=False),
        trainer=SplatTrainerConfig(max_steps=steps, seed=seed, output_dir=str(out_dir), **overrides),
    )
    trainer, _ = build_trainer(cmd, provider)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    result = score(lambda cams: trainer.render_view(cams).images, provider)
    own = trainer.evaluate()
    return {
        **result,
        "num_gaussians": trainer.num_gaussians,
        "train_seconds": round(seconds, 1),
        "init": trainer.init_report["type"],
        "init_points": trainer.init_report["num_points"],
        "background": list(trainer.background),
        "trainer_evaluate_psnr": own["psnr"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenes", nargs="+", default=["demo", "synthetic", "fox", "statue"])
    ap.add_argument("--steps", type=int, default=7000)
    ap.add_argument("--strategy", choices=["default", "mcmc"], default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factor", type=int, default=4, help="downscale factor of fox and statue_of_liberty")
    ap.add_argument("--synthetic-dir", default=str(Path(tempfile.gettempdir()) / "splatkit_synthetic_200"))
    ap.add_argument("--synthetic-size", type=int, default=200)
    ap.add_argument("--only", choices=["recipe", "splatkit"], default=None, help="run one side only")
    ap.add_argument("--log-every", type=int, default=0, help="print the recipe's progress every N steps")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="splatkit's side: SplatTrainerConfig overrides"
    )
    args = ap.parse_args()
    report = {
        "steps": args.steps,
        "strategy": args.strategy,
        "seed": args.seed,
        "factor": args.factor,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "splatkit_overrides": args.set,
        "scenes": {},
    }
    overrides = trainer_overrides(args.set)
    for name in args.scenes:
        cmd = scene_command(name, args)
        provider = _data_provider(cmd.data, cmd.demo, cmd.colmap, cmd.blender)
        entry = {"train_images": provider.num_train_frames(), "test_images": provider.num_test_frames()}
        for i in range(provider.num_train_frames()):  # decoded once, so neither run pays for it
            provider.train_frame(i)
        if args.only != "splatkit":
            print(f"[{name}] recipe ...", file=sys.stderr)
            entry["recipe"] = run_recipe(provider, args.steps, args.seed, args.strategy, args.log_every)
            print(f"[{name}] recipe: {entry['recipe']}", file=sys.stderr)
        if args.only != "recipe":
            print(f"[{name}] splatkit ...", file=sys.stderr)
            with tempfile.TemporaryDirectory() as tmp:
                entry["splatkit"] = run_splatkit(
                    cmd, provider, args.steps, args.seed, args.strategy, Path(tmp), overrides
                )
            print(f"[{name}] splatkit: {entry['splatkit']}", file=sys.stderr)
        if "recipe" in entry and "splatkit" in entry:
            entry["psnr_gap_db"] = round(entry["splatkit"]["psnr"] - entry["recipe"]["psnr"], 3)
        report["scenes"][name] = entry
        provider.close()
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
