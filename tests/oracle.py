"""A deliberately naive rasterizer: no tiles, no culling, one Gaussian at a time.

Written independently of ``splatkit.renderer`` (its own quaternion formula, Jacobian
by autograd, per-pixel loop over depth-sorted Gaussians), to check the reference
rasterizer. Valid for Gaussians whose centres lie inside the view (the reference, like
gsplat, clamps the Jacobian for far off-screen centres).
"""

import torch

from splatkit.splat.sh import eval_sh_bases


def quat_rotation(q):
    q = q / q.norm()
    w, v = q[0], q[1:]
    cross = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=q.dtype)
    return (w * w - v @ v) * torch.eye(3, dtype=q.dtype) + 2 * torch.outer(v, v) + 2 * w * cross


def render_naive(means, quats, scales, opacities, colors, viewmat, K, width, height, sh_degree=None,
                 background=None, near=0.01, eps2d=0.3):
    """Image ``[H, W, D]`` and alpha ``[H, W]`` for one camera."""
    dtype = means.dtype
    Rv, t = viewmat[:3, :3], viewmat[:3, 3]
    cam_center = -Rv.T @ t
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype) + 0.5, torch.arange(width, dtype=dtype) + 0.5,
                            indexing="ij")
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
