"""Forward+backward time of the CPU 2DGS rasterizers on issue 4's random scenes; prints JSON.

Scene (seed 0), as benchmarks/rasterize_cpu.py with surfels: means uniform in
[-1, 1]^3, two tangent scales exp(U(log 0.005, log 0.03)), random unit quaternions,
opacities U(0.1, 0.9), RGB colours (no SH), a pinhole camera at distance 4 looking at
the origin, fx = fy = 0.9 W, centred principal point. Loss = the sum of the means of
all six per-pixel outputs (colours, alphas, normals, depth sum, distortion, median
depth), so every backward path runs.

    python benchmarks/rasterize_2dgs_cpu.py [--backends cpu torch] [--sizes 10000x128 50000x256]

Each backend runs in its own subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

OUTPUTS = ("colors", "alphas", "normals_camera", "depth_sum", "distort", "median_depth")


def scene(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    scales = torch.exp(torch.rand(n, 2, generator=g) * (math.log(0.03) - math.log(0.005)) + math.log(0.005))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 4.0  # camera at z = -4 looking down +z at the origin
    f = 0.9 * size
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return means, quats, scales, opacities, colors, viewmat[None], K[None]


def run_one(backend: str, n: int, size: int, repeats: int) -> dict:
    from splatkit.renderer.backends import BACKENDS_2DGS

    means, quats, scales, opacities, colors, viewmats, Ks = scene(n, size)
    params = [t.requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    raster = BACKENDS_2DGS[backend]

    def step():
        out = raster(*params, viewmats, Ks, size, size)
        sum(out[k].mean() for k in OUTPUTS).backward()
        for p in params:
            p.grad = None

    t0 = time.perf_counter()
    step()  # warm-up (and the one-time kernel build, if any)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "backend": backend,
        "surfels": n,
        "size": size,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "first_call_s": first,
        "repeats": repeats,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", nargs="+", default=["cpu", "torch"])
    ap.add_argument("--sizes", nargs="+", default=["10000x128", "50000x256"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        b, n, s = args.worker
        print(json.dumps(run_one(b, int(n), int(s), args.repeats)))
        return
    results = []
    for spec in args.sizes:
        n, s = (int(v) for v in spec.split("x"))
        row = {}
        for b in args.backends:
            reps = args.repeats if b != "torch" else max(3, args.repeats // 3)
            out = subprocess.run([sys.executable, __file__, "--repeats", str(reps), "--worker", b, str(n), str(s)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                row[b] = {"error": out.stderr.strip().splitlines()[-1]}
                continue
            row[b] = json.loads(out.stdout.strip().splitlines()[-1])
        entry = {"surfels": n, "size": s, "results": row}
        if "cpu" in row and "torch" in row and "median_s" in row["cpu"] and "median_s" in row["torch"]:
            entry["speedup_cpu_vs_torch"] = row["torch"]["median_s"] / row["cpu"]["median_s"]
        results.append(entry)
    print(json.dumps({"benchmark": "rasterize_2dgs_cpu forward+backward", "results": results}, indent=2))


if __name__ == "__main__":
    main()
