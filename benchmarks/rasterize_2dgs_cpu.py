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

from rasterize_cpu import compare_main, kernels, scene, time_steps  # this folder: shared scene and harness

OUTPUTS = ("colors", "alphas", "normals_camera", "depth_sum", "distort", "median_depth")


def run_one(backend: str, n: int, size: int, repeats: int) -> dict:
    from splatkit.renderer.backends import BACKENDS, RasterInputs, RasterSettings

    means, quats, scales, opacities, colors, viewmats, Ks = scene(n, size, scale_dims=2)
    params = [t.requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    raster = BACKENDS[backend].rasterize_2dgs

    def step():
        out = raster(RasterInputs(*params, viewmats, Ks, size, size), RasterSettings())
        sum(out[k].mean() for k in OUTPUTS).backward()
        for p in params:
            p.grad = None

    return {"backend": backend, "surfels": n, "size": size, **time_steps(step, repeats), "kernels": kernels(backend)}


def main() -> None:
    compare_main(__file__, run_one, ["10000x128", "50000x256"], "surfels", "rasterize_2dgs_cpu forward+backward")


if __name__ == "__main__":
    main()
