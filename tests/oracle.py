"""A deliberately naive rasterizer: no tiles, no culling, one Gaussian at a time.

Written independently of ``splatkit.renderer`` (its own quaternion formula, Jacobian
by autograd, per-pixel loop over depth-sorted Gaussians), to check the reference
rasterizer. Valid for Gaussians whose centres lie inside the view (the reference, like
gsplat, clamps the Jacobian for far off-screen centres).
"""

import math

import torch

from splatkit.splat.sh import eval_sh_bases


def quat_rotation(q):
    q = q / q.norm()
    w, v = q[0], q[1:]
    cross = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=q.dtype)
    return (w * w - v @ v) * torch.eye(3, dtype=q.dtype) + 2 * torch.outer(v, v) + 2 * w * cross


def render_naive(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmat,
    K,
    width,
    height,
    sh_degree=None,
    background=None,
    near=0.01,
    eps2d=0.3,
):
    """Image ``[H, W, D]`` and alpha ``[H, W]`` for one camera."""
    dtype = means.dtype
    Rv, t = viewmat[:3, :3], viewmat[:3, 3]
    cam_center = -Rv.T @ t
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=dtype) + 0.5, torch.arange(width, dtype=dtype) + 0.5, indexing="ij"
    )
    entries = []
    for i in range(means.shape[0]):
        mc = Rv @ means[i] + t
        if mc[2] <= near:
            continue
        R = quat_rotation(quats[i])
        cov_c = Rv @ (R @ torch.diag(scales[i] ** 2) @ R.T) @ Rv.T

        def project(x):
            p = K @ x
            return p[:2] / p[2]

        J = torch.autograd.functional.jacobian(project, mc)
        cov2d = J @ cov_c @ J.T + eps2d * torch.eye(2, dtype=dtype)
        if sh_degree is None:
            color = colors[i]
        else:
            d = means[i] - cam_center
            basis = eval_sh_bases(sh_degree, d / d.norm())
            color = torch.clamp_min(basis @ colors[i, : basis.shape[0]] + 0.5, 0.0)
        entries.append((float(mc[2]), project(mc), torch.linalg.inv(cov2d), float(opacities[i]), color))
    entries.sort(key=lambda e: e[0])

    D = colors.shape[-1]
    T = torch.ones(height, width, dtype=dtype)
    done = torch.zeros(height, width, dtype=torch.bool)
    out = torch.zeros(height, width, D, dtype=dtype)
    for _, mu, conic, opacity, color in entries:
        dx, dy = xs - mu[0], ys - mu[1]
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = torch.clamp_max(opacity * torch.exp(-sigma), 0.999)
        use = (~done) & (sigma >= 0) & (alpha >= 1 / 255)
        next_T = T * (1 - alpha)
        stop = use & (next_T <= 1e-4)
        done |= stop
        use &= ~stop
        out += torch.where(use[..., None], (alpha * T)[..., None] * color, torch.zeros_like(out))
        T = torch.where(use, next_T, T)
    if background is not None:
        out = out + T[..., None] * background
    return out, 1 - T


def render_naive_2dgs(means, quats, scales, opacities, colors, viewmat, K, width, height):
    """2DGS written out per pixel from the paper: for every surfel, intersect the pixel's
    ray with its plane by solving a 3x3 linear system (not the cross-product trick),
    evaluate min(3D, 2D-filter) falloff, composite depth-sorted surfels with no culling.

    Returns per-pixel dict of ``[H, W, k]``: colors, alpha, normals (camera), depth_sum,
    distort, median.
    """
    dtype = means.dtype
    Rv, t = viewmat[:3, :3], viewmat[:3, 3]
    n = means.shape[0]
    surf = []
    for i in range(n):
        R = quat_rotation(quats[i])
        pc = Rv @ means[i] + t
        if pc[2] <= 0.01:
            continue
        a = Rv @ R[:, 0] * scales[i, 0]
        b = Rv @ R[:, 1] * scales[i, 1]
        normal = Rv @ R[:, 2]
        if normal @ pc > 0:
            normal = -normal
        Mi = K @ torch.stack([a, b, pc], dim=1)
        # filter centre: centre of the projected unit circle (pole of the line at infinity)
        Cs = Mi @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=dtype)) @ Mi.T
        c = Cs[:2, 2] / Cs[2, 2]
        surf.append((float(pc[2]), a, b, pc, normal, c, opacities[i], colors[i]))
    surf.sort(key=lambda s: s[0])
    D = colors.shape[-1]
    out = {
        k: torch.zeros(height, width, d, dtype=dtype)
        for k, d in (("colors", D), ("alpha", 1), ("normals", 3), ("depth_sum", 1), ("distort", 1), ("median", 1))
    }
    Kinv = torch.linalg.inv(K)
    for y in range(height):
        for x in range(width):
            ray = Kinv @ torch.tensor([x + 0.5, y + 0.5, 1.0], dtype=dtype)
            T, wd_acc = 1.0, 0.0
            for depth, a, b, pc, normal, c, o, col in surf:
                # pc + u a + v b = s ray  ->  [a b -ray] (u v s)^T = -pc
                A = torch.stack([a, b, -ray], dim=1)
                if abs(float(torch.linalg.det(A))) < 1e-300:
                    rho3 = float("inf")
                else:
                    u, v, _ = torch.linalg.solve(A, -pc)
                    rho3 = float(u * u + v * v)
                d = torch.tensor([x + 0.5, y + 0.5], dtype=dtype) - c
                rho2 = 2.0 * float(d @ d)
                alpha = min(0.999, float(o) * math.exp(-0.5 * min(rho3, rho2)))
                if alpha < 1.0 / 255.0:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                w = alpha * T
                out["colors"][y, x] += w * col
                out["alpha"][y, x] += w
                out["normals"][y, x] += w * normal
                out["depth_sum"][y, x] += w * depth
                out["distort"][y, x] += 2 * w * (depth * (1 - T) - wd_acc)
                wd_acc += w * depth
                if T > 0.5:
                    out["median"][y, x] = depth
                T *= 1 - alpha
    return out
