"""Small deterministic scenes and cameras for tests, benchmarks and GPU checks (as
``torch.testing`` serves PyTorch's): the one place that builds them, so the CPU test suite and
``scripts/gpu_check.py`` exercise the same inputs."""

from __future__ import annotations

import math

import torch

from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w

__all__ = ["cameras", "inria_load_ply", "random_scene"]


def random_scene(n, seed=0, dtype=torch.float64, spread=1.0, sh_degree=None, scale_range=(0.03, 0.25)):
    """Random Gaussians around the origin; colours RGB or SH coefficients."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(torch.rand(n, 3, generator=g) * (hi - lo) + lo)
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g) * 0.8 + 0.1
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


def cameras(width, height, n=1, dtype=torch.float64, distance=4.0, focal=None):
    """``n`` cameras on a circle looking at the origin: (viewmats [n, 4, 4], Ks [n, 3, 3])."""
    vms, Ks = [], []
    f = focal or 1.1 * max(width, height)
    for i in range(n):
        a = 2 * math.pi * i / max(n, 1) + 0.3
        eye = torch.tensor([distance * math.cos(a), distance * math.sin(a), 0.8], dtype=torch.float64)
        vms.append(
            c2w_to_viewmat(
                look_at_c2w(
                    eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
                )
            )
        )
        Ks.append(
            torch.tensor([[f, 0, width / 2 + 0.3], [0, f * 0.97, height / 2 - 0.2], [0, 0, 1]], dtype=torch.float64)
        )
    return torch.stack(vms).to(dtype), torch.stack(Ks).to(dtype)


def inria_load_ply(path):
    """A PLY read by the INRIA reference code's rules (``GaussianModel.load_ply``): plyfile,
    then the ``f_rest_*``, ``scale_*`` and ``rot_*`` properties sorted by their number. Returns
    numpy arrays ``(xyz, scales, rots, opacity, f_rest)``; an interop check for exported files."""
    import numpy as np
    from plyfile import PlyData

    v = PlyData.read(str(path)).elements[0]

    def sorted_props(prefix):
        names = sorted((p.name for p in v.properties if p.name.startswith(prefix)), key=lambda n: int(n.split("_")[-1]))
        return np.stack([np.asarray(v[n]) for n in names], axis=1)

    xyz = np.stack([np.asarray(v["x"]), np.asarray(v["y"]), np.asarray(v["z"])], axis=1)
    return xyz, sorted_props("scale_"), sorted_props("rot"), np.asarray(v["opacity"]), sorted_props("f_rest_")
