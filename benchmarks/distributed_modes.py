"""Multi-process training on CPU (gloo): one process, replicated ranks and sharded ranks
side by side, same scene, same steps, same global batch; prints JSON.

Two scenarios:
- ``quality``: the demo scene, default densification, ``--steps`` steps: test PSNR,
  Gaussian count, training time.
- ``memory``: ``--points`` random Gaussians, no densification, ``--memory-steps`` steps at
  ``--memory-size`` pixels: per rank the Gaussians it holds, its parameter + Adam bytes,
  its peak resident memory, and the median step time.

    python benchmarks/distributed_modes.py [--nproc 2] [--steps 300] [--points 400000]

It launches itself under ``torchrun`` for each mode (``--worker``). Each rank uses one
thread (``OMP_NUM_THREADS=1``), so on a 2-core machine 2 ranks use what 1 process with
2 threads would.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
    from splatkit.densification import SplatDefaultDensification
    from splatkit.trainer import SplatTrainer, SplatTrainerConfig

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    mode = "replicate" if args.mode == "single" else args.mode
    if args.scenario == "quality":
        provider = SplatDemoDataProvider(SplatDemoDataProviderConfig())
        steps = args.steps
        cfg = dict(max_steps=steps, sh_degree_interval=max(1, steps // 5))
        dens = SplatDefaultDensification(
            refine_start_iter=steps // 5,
            refine_stop_iter=4 * steps // 5,
            refine_every=max(1, steps // 10),
            reset_every=10 * steps,
        )
    else:
        provider = SplatDemoDataProvider(SplatDemoDataProviderConfig(image_size=args.memory_size, supersample=1))
        steps = args.memory_steps
        cfg = dict(max_steps=steps, init_type="random", init_num_points=args.points, init_extent=0.5)
        dens = SplatDefaultDensification(refine_start_iter=10**9)
    config = SplatTrainerConfig(output_dir=args.out, batch_size=args.batch, dist_mode=mode, profile_steps=True, **cfg)
    trainer = SplatTrainer(config, provider, densification=dens)
    trainer.setup()
    times = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        t = time.perf_counter()
        trainer.train_step(step)
        times.append(time.perf_counter() - t)
    seconds = time.perf_counter() - t0
    metrics = trainer.lead(trainer.evaluate) if args.scenario == "quality" else None
    ts = trainer.training_state
    row = {
        "rank": trainer.world_rank,
        "gaussians_held": ts.num_gaussians,
        "param_and_adam_mb": round(sum(3 * p.numel() * p.element_size() for p in ts.params.values()) / 2**20, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "step_median_ms": round(1000 * statistics.median(times[len(times) // 5 :]), 1),
        "train_seconds": round(seconds, 1),
    }
    if metrics is not None:
        row.update(test_psnr=round(metrics["psnr"], 2), test_ssim=round(metrics["ssim"], 4))
    row["gaussians_total"] = trainer.num_gaussians
    Path(args.out, f"rank{trainer.world_rank}.json").write_text(json.dumps(row))
    if torch.distributed.is_initialized():
        from splatkit.trainer.distributed import exit_process

        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        exit_process(0)  # not the finalisation gloo's threads can abort


def launch(mode: str, scenario: str, args, work: Path) -> dict:
    out = work / f"{scenario}_{mode}"
    out.mkdir(parents=True)
    common = [
        "--worker",
        "--mode",
        mode,
        "--scenario",
        scenario,
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--points",
        str(args.points),
        "--memory-steps",
        str(args.memory_steps),
        "--memory-size",
        str(args.memory_size),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1" if mode != "single" else str(args.nproc))
    if mode == "single":
        cmd = [sys.executable, __file__, *common, "--batch", str(args.nproc)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={args.nproc}",
            __file__,
            *common,
            "--batch",
            "1",
        ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    return {"processes": 1 if mode == "single" else args.nproc, "ranks": ranks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--points", type=int, default=400_000)
    ap.add_argument("--memory-steps", type=int, default=20)
    ap.add_argument("--memory-size", type=int, default=64)
    ap.add_argument("--scenarios", nargs="+", default=["quality", "memory"])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="single", help=argparse.SUPPRESS)
    ap.add_argument("--scenario", default="quality", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    result = {"nproc": args.nproc, "steps": args.steps, "points": args.points}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios:
            result[scenario] = {
                mode: launch(mode, scenario, args, Path(tmp)) for mode in ("single", "replicate", "shard")
            }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
