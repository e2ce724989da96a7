"""Whole CPU training steps, phase by phase, for each rasterizer backend; prints JSON.

Scenes:
- ``demo``: the built-in scene (96x96, 48 cameras, 4,000 initial points).
- ``synthetic``: the RGBA NeRF-synthetic-style capture ``write_synthetic_capture`` writes
  (200x200, 100 training views, no points; cached in the temp folder), trained with every
  default for 3,000 steps first (random initialisation, densification as configured), so
  the timed steps see the Gaussians a run has at that point.
- ``fox``: ../shared/datasets/fox (or $SPLATKIT_DATASETS/fox) at a quarter of its
  resolution (270x480) with about 200,000 Gaussians. fox has no point cloud, and a
  uniform random cloud would give every Gaussian a huge screen footprint, unlike a
  trained model; so the Gaussians are seeded from the photos: random pixels of the
  training images are lifted to the depth of the scene centre (where the cameras look)
  with a little jitter, coloured by their pixel, and sized by their nearest neighbours.

    python benchmarks/train_step_cpu.py [--scenes demo fox] [--backends cpu torch] [--steps 20]
    python benchmarks/train_step_cpu.py --scenes fox --backends cpu --busy-core
    python benchmarks/train_step_cpu.py --scenes fox --backends cpu --full-sh
    python benchmarks/train_step_cpu.py --scenes ckpt=results/fox/ckpts/step_022000.ckpt --backends cpu

- ``ckpt=PATH``: a run's checkpoint (``splatkit train`` wrote it): the steps after it, on the
  run's own data, Gaussians, SH degree and settings, as ``splatkit train --resume PATH``
  would take them (e.g. a fox run's step 22,000: 305,000 Gaussians, degree 3).

By default the timed steps render SH degree 0, as a run's first 1,000 steps do; with
``--full-sh`` every band (degree 3, as after step 3,000: 16 coefficients per Gaussian to
read, and 45 gradients to write, a step).

``--busy-core`` runs every case a second time while another process spins on one core
(``python -c "while True: pass"``) and reports the slowdown. Workers start with the
command line's thread and memory defaults (``splatkit.launcher.THREAD_DEFAULTS``: passive
OpenMP waits and pinned kernel threads on machines of at most 4 CPUs;
``MEMORY_DEFAULTS``: huge pages for large tensors on Linux) unless the environment sets them.

On demo and fox the steps use the default densification with refinement every 10 steps
(so the phase "densification" includes growing and pruning); every scene records
per-phase wall times through ``SplatTrainerConfig(profile_steps=True)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DATASETS = Path(os.environ.get("SPLATKIT_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
TRAINED_FIRST = 3000  # synthetic: steps trained (default schedule) before the timed ones


def seeded_from_photos(provider, n: int, seed: int = 0):
    """``n`` points lifted from random training pixels to the focus depth (see module doc)."""
    g = torch.Generator().manual_seed(seed)
    per = -(-n // provider.num_train_frames())
    pts, rgb = [], []
    for i in range(provider.num_train_frames()):
        f = provider.train_frame(i)
        H, W = f.images.shape[1:3]
        ys = torch.randint(0, H, (per,), generator=g)
        xs = torch.randint(0, W, (per,), generator=g)
        K = f.cameras.Ks[0].double()
        c2w = torch.linalg.inv(f.cameras.viewmats[0].double())
        dirs = torch.stack([(xs + 0.5 - K[0, 2]) / K[0, 0], (ys + 0.5 - K[1, 2]) / K[1, 1], torch.ones(per)], -1)
        depth = (c2w[:3, 3].norm() * (1 + 0.05 * torch.randn(per, generator=g))).double()
        pts.append((dirs * depth[:, None]) @ c2w[:3, :3].T + c2w[:3, 3])
        rgb.append(f.images[0, ys, xs])
    return torch.cat(pts)[:n].float(), torch.cat(rgb)[:n].float()


SYNTHETIC = Path(tempfile.gettempdir()) / "splatkit_synthetic_200"


def make_provider(scene: str):
    from splatkit.data_provider import SplatBlenderDataProvider, SplatBlenderDataProviderConfig, SplatDemoDataProvider
    from splatkit.data_provider.captured import SplatLoaderConfig
    from splatkit.data_provider.demo import write_synthetic_capture

    if scene == "demo":
        return SplatDemoDataProvider(), None
    if scene == "synthetic":
        if not (SYNTHETIC / "transforms_test.json").is_file():
            write_synthetic_capture(SYNTHETIC, image_size=200)
        return SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(SYNTHETIC))), None
    if scene == "fox":
        if not (DATASETS / "fox").is_dir():
            raise SystemExit(f"fox not found under {DATASETS}; set SPLATKIT_DATASETS")
        p = SplatBlenderDataProvider(
            SplatBlenderDataProviderConfig(
                str(DATASETS / "fox"), factor=4, normalize=True, loader=SplatLoaderConfig(cache_mb=2048)
            )
        )
        return p, seeded_from_photos(p, 200_000)
    raise SystemExit(f"unknown scene {scene!r}")


def time_kernels(timings: dict) -> None:
    """Wrap every ``sk_*`` function of the compiled library with a wall-clock timer adding
    into ``timings[name]`` (the kernels' share of the render and backward phases)."""
    from splatkit.renderer.backends.cpu.build import load

    lib = load()
    names = ("sk_project_fwd", "sk_project_bwd", "sk_pack", "sk_isect", "sk_raster_fwd", "sk_raster_bwd")
    for name in names:
        fn = getattr(lib, name)

        def timed(*args, _fn=fn, _name=name):
            t0 = time.perf_counter()
            out = _fn(*args)
            timings[_name] = timings.get(_name, 0.0) + time.perf_counter() - t0
            return out

        setattr(lib, name, timed)


def run(scene: str, backend: str, steps: int, full_sh: bool = False) -> dict:
    out = Path(tempfile.mkdtemp(prefix="splatkit_bench_"))  # a fresh run folder per run
    points = None
    if scene.startswith("ckpt="):
        trainer = resumed_trainer(scene[len("ckpt=") :], backend, out)
    else:
        trainer, points = fresh_trainer(scene, backend, out, full_sh)
    trainer.setup()
    first = trainer.step  # 0, or the checkpoint's step
    # steps before the timed ones: the synthetic run's first TRAINED_FIRST; else 2 (4 with
    # full_sh, which reaches degree 3 at the fourth step; 4 after a checkpoint, to warm up)
    warmup = TRAINED_FIRST if scene == "synthetic" else 4 if full_sh or first else 2
    kernels: dict[str, float] = {}
    if backend == "cpu":
        time_kernels(kernels)
    laps, totals, kernel_laps = [], [], []
    faults = 0  # minor page faults of the timed steps (fresh memory the kernel maps and zeroes)
    for s in range(first + 1, first + warmup + steps + 1):
        kernels.clear()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        trainer.train_step(s)
        if s > first + warmup:
            totals.append(time.perf_counter() - t0)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
            laps.append(dict(trainer.step_timings))
            kernel_laps.append(dict(kernels))
    return report(trainer, scene, backend, steps, first + warmup, points, totals, laps, kernel_laps, faults, out)


def report(trainer, scene, backend, steps, before, points, totals, laps, kernel_laps, faults, out) -> dict:
    """The JSON of one run: medians of the timed steps, per phase and per kernel."""
    from rasterize_cpu import kernels as kernel_info  # this folder: the kernels' CPU, -march, width

    phases = sorted({k for lap in laps for k in lap})
    names = sorted({k for lap in kernel_laps for k in lap})
    f = trainer.data_provider.train_frame(0)
    result = {
        "scene": scene,
        "backend": backend,
        "image": [f.cameras.width, f.cameras.height],
        "gaussians_start": int(points[0].shape[0]) if points is not None else None,
        "steps_before_timing": before,
        "sh_degree": trainer.active_sh_degree(before + steps),
        "gaussians_end": trainer.training_state.num_gaussians,
        "steps": steps,
        "step_median_s": statistics.median(totals),
        "step_mean_s": statistics.mean(totals),
        "phase_mean_s": {k: statistics.mean(lap.get(k, 0.0) for lap in laps) for k in phases},
        "phase_median_s": {k: statistics.median(lap.get(k, 0.0) for lap in laps) for k in phases},
        "kernel_median_s": {k: statistics.median(lap.get(k, 0.0) for lap in kernel_laps) for k in names},
        "page_faults_per_step": faults / steps,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "pin_threads": os.environ.get("SPLATKIT_PIN_THREADS"),
        "kernels": kernel_info(backend),
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def resumed_trainer(path: str, backend: str, out: Path):
    """The trainer ``splatkit train --resume path`` builds (its output in ``out``), profiling steps."""
    import dataclasses

    import tyro

    from splatkit.cli import COMMANDS, build_trainer

    args = ["train", "--resume", path, "--output-dir", str(out), "--renderer.backend", backend]
    cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args)
    cmd = dataclasses.replace(cmd, trainer=dataclasses.replace(cmd.trainer, profile_steps=True))
    return build_trainer(cmd)[0]


def fresh_trainer(scene: str, backend: str, out: Path, full_sh: bool):
    from splatkit.densification import SplatDefaultDensification
    from splatkit.renderer import Splat3DGSRenderer
    from splatkit.trainer import SplatTrainer, SplatTrainerConfig

    provider, points = make_provider(scene)
    if points is not None:
        provider.initial_points = lambda: points
    if scene == "synthetic" and full_sh:
        raise SystemExit("--full-sh is for demo and fox (synthetic is timed at its run's own SH degree)")
    if scene == "synthetic":  # the defaults, timed after the first TRAINED_FIRST steps
        cfg = SplatTrainerConfig(output_dir=str(out), profile_steps=True)
        dens = SplatDefaultDensification()
    else:
        # full_sh: one step per SH degree, so the timed steps (after the fourth) render degree 3
        cfg = SplatTrainerConfig(
            max_steps=10_000, output_dir=str(out), profile_steps=True, sh_degree_interval=1 if full_sh else 1000
        )
        dens = SplatDefaultDensification(refine_start_iter=0, refine_every=10, reset_every=100_000)
    trainer = SplatTrainer(cfg, provider, renderer=Splat3DGSRenderer(backend=backend), densification=dens)
    return trainer, points


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", nargs="+", default=["demo", "fox"])
    ap.add_argument("--backends", nargs="+", default=["cpu", "torch"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--torch-steps", type=int, default=3, help="steps for the (slow) reference backend")
    ap.add_argument("--busy-core", action="store_true", help="also run with a process spinning on one core")
    ap.add_argument("--full-sh", action="store_true", help="time steps at SH degree 3 (default: degree 0)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        scene, backend = args.worker
        print(json.dumps(run(scene, backend, args.steps, args.full_sh)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from splatkit.launcher import apply_memory_defaults, apply_thread_defaults

    env = dict(os.environ)
    apply_thread_defaults(env)
    apply_memory_defaults(env)

    def worker(scene: str, backend: str, steps: int, busy: bool) -> dict:
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            p = subprocess.run(
                [sys.executable, __file__, "--steps", str(steps), "--worker", scene, backend]
                + (["--full-sh"] if args.full_sh else []),
                capture_output=True,
                text=True,
                env=env,
            )
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        return json.loads(p.stdout.strip().splitlines()[-1])

    out = []
    for scene in args.scenes:
        rows = {}
        for backend in args.backends:
            steps = args.steps if backend != "torch" else args.torch_steps
            rows[backend] = worker(scene, backend, steps, busy=False)
            if args.busy_core and "step_median_s" in rows[backend]:
                busy = worker(scene, backend, steps, busy=True)
                rows[backend]["busy_core"] = busy
                if "step_median_s" in busy:
                    rows[backend]["busy_core_slowdown"] = busy["step_median_s"] / rows[backend]["step_median_s"]
        entry = {"scene": scene, "results": rows}
        if all("step_median_s" in rows.get(b, {}) for b in ("cpu", "torch")):
            entry["step_speedup_cpu_vs_torch"] = rows["torch"]["step_median_s"] / rows["cpu"]["step_median_s"]
        out.append(entry)
    print(json.dumps({"benchmark": "train_step_cpu", "results": out}, indent=2))


if __name__ == "__main__":
    main()
