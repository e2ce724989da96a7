"""Forward+backward time of the CPU rasterizers on random scenes; prints JSON.

Scene (seed 0): means uniform in [-1, 1]^3, scales exp(U(log 0.005, log 0.03)) per axis,
random unit quaternions, opacities U(0.1, 0.9), RGB colours (SH degree 0), a pinhole
camera at distance 4 looking at the origin, fx = fy = 0.9 W, centred principal point,
black background, loss = mean of the image.

    python benchmarks/rasterize_cpu.py [--backends cpu torch] [--sizes 10000x128 50000x256 200000x512]
    python benchmarks/rasterize_cpu.py --backends cpu --trees new=. old=/tmp/old --rounds 3

Each backend runs in its own subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def scene(n: int, size: int, seed: int = 0, scale_dims: int = 3):
    """``n`` random Gaussians (``scale_dims`` scales: 2 for surfels) in front of one
    ``size``-pixel square camera."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * 2 - 1
    scales = torch.exp(torch.rand(n, scale_dims, generator=g) * (math.log(0.03) - math.log(0.005)) + math.log(0.005))
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 4.0  # camera at z = -4 looking down +z at the origin
    f = 0.9 * size
    K = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])
    return means, quats, scales, opacities, colors, viewmat[None], K[None]


def run_one(backend: str, n: int, size: int, repeats: int) -> dict:
    from splatkit.renderer import rasterize

    means, quats, scales, opacities, colors, viewmats, Ks = scene(n, size)
    params = [t.requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    bg = torch.zeros(1, 3)

    def step():
        img, _, _ = rasterize(*params, viewmats, Ks, size, size, backgrounds=bg, backend=backend)
        img.mean().backward()
        for p in params:
            p.grad = None

    return {"backend": backend, "gaussians": n, "size": size, **time_steps(step, repeats), "kernels": kernels(backend)}


def kernels(backend: str) -> dict | None:
    """For the cpu backend, what its kernels run on (CPU, -march, vector width): figures
    from machines of other widths are not comparable."""
    if backend != "cpu":
        return None
    from splatkit.renderer.backends.cpu.build import describe

    return describe()


def time_steps(step, repeats: int) -> dict:
    """One warm-up call of ``step`` (and the one-time kernel build, if any), then the
    median and minimum of ``repeats`` timed calls, and the process's peak memory."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "first_call_s": first,
        "repeats": repeats,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def compare_main(script: str, run_one, default_sizes: list[str], count_key: str, title: str) -> None:
    """The command line of a backend comparison: each (size, backend) runs in its own
    process (``script --worker``, so peak memory is per backend), results side by side as JSON.

    ``--trees new=. old=/path/to/other/checkout`` times the same backends from several source
    trees (each worker runs the tree's own copy of the benchmark, importing splatkit from that
    tree through PYTHONPATH), interleaved over
    ``--rounds`` so drift in machine load falls on every tree alike; each entry then gives the
    median of every tree's medians and its ratio to the first tree. Workers start with the
    command line's thread defaults (``splatkit.launcher.THREAD_DEFAULTS``, on machines of at
    most 4 CPUs) and memory defaults (``MEMORY_DEFAULTS``, on Linux) unless the environment
    sets them."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--backends", nargs="+", default=["cpu", "torch"])
    ap.add_argument("--sizes", nargs="+", default=default_sizes)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--trees", nargs="+", default=None, metavar="LABEL=PATH")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import splatkit

        b, n, s = args.worker
        print(json.dumps({**run_one(b, int(n), int(s), args.repeats), "splatkit": os.path.dirname(splatkit.__file__)}))
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(script))))
    from splatkit.launcher import THREAD_DEFAULTS, apply_memory_defaults, apply_thread_defaults

    base_env = dict(os.environ)
    apply_thread_defaults(base_env)
    apply_memory_defaults(base_env)
    trees = [t.split("=", 1) for t in args.trees] if args.trees else [("", None)]
    for label, path in trees:
        if path is not None and not os.path.isdir(os.path.join(path, "splatkit")):
            ap.error(f"--trees {label}={path}: no splatkit package in {path}")
    results = []
    for spec in args.sizes:
        n, s = (int(v) for v in spec.split("x"))
        row: dict = {}
        for rnd in range(args.rounds):
            for b in args.backends:
                reps = args.repeats if b != "torch" else max(3, args.repeats // 3)
                for label, path in trees if rnd % 2 == 0 else trees[::-1]:
                    env = dict(base_env)
                    if path is not None:
                        env["PYTHONPATH"] = os.path.abspath(path) + os.pathsep + env.get("PYTHONPATH", "")
                    # The tree's own copy of this benchmark, where it has one: its API may differ.
                    own = os.path.join(path, "benchmarks", os.path.basename(script)) if path else script
                    worker = own if os.path.isfile(own) else script
                    out = subprocess.run(
                        [sys.executable, worker, "--repeats", str(reps), "--worker", b, str(n), str(s)],
                        capture_output=True,
                        text=True,
                        env=env,
                    )
                    key = f"{b}@{label}" if label else b
                    if out.returncode != 0:
                        row.setdefault(key, []).append({"error": out.stderr.strip().splitlines()[-1]})
                        continue
                    row.setdefault(key, []).append(json.loads(out.stdout.strip().splitlines()[-1]))
        row = {k: v[0] if len(v) == 1 else v for k, v in row.items()}
        entry = {count_key: n, "size": s, "results": row}

        def median_of(key, row=row):
            runs = row.get(key)
            runs = runs if isinstance(runs, list) else [runs] if runs else []
            medians = [r["median_s"] for r in runs if "median_s" in r]
            return statistics.median(medians) if medians else None

        if args.trees:
            for b in args.backends:
                first = median_of(f"{b}@{trees[0][0]}")
                for label, _ in trees:
                    m = median_of(f"{b}@{label}")
                    entry.setdefault("median_s", {})[f"{b}@{label}"] = m
                    if first and m and label != trees[0][0]:
                        entry.setdefault("ratio_to_first_tree", {})[f"{b}@{label}"] = m / first
        elif median_of("cpu") and median_of("torch"):
            entry["speedup_cpu_vs_torch"] = median_of("torch") / median_of("cpu")
        results.append(entry)
    threads = {k: base_env.get(k) for k in THREAD_DEFAULTS}
    print(json.dumps({"benchmark": title, "thread_settings": threads, "results": results}, indent=2))


def main() -> None:
    compare_main(
        __file__, run_one, ["10000x128", "50000x256", "200000x512"], "gaussians", "rasterize_cpu forward+backward"
    )


if __name__ == "__main__":
    main()
