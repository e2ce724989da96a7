"""2D Gaussian surfels (2DGS, Huang et al. 2024): projection and the ray-splat evaluation.

A surfel has a centre ``p``, two tangent axes (the first two columns of its rotation)
scaled by ``s_u, s_v`` and a normal (the third column). In camera space a point of the
surfel is ``p_c + u a + v b`` with ``a = s_u R t_u`` and ``b = s_v R t_v``; the pixel it
lands on is ``M @ (u, v, 1)`` in homogeneous coordinates with ``M = K [a | b | p_c]``.
A pixel ``(x, y)`` defines two planes in (u, v, 1) space, ``x M_2 - M_0`` and
``y M_2 - M_1`` (rows of ``M``); their cross product is the ray's intersection with the
surfel, exact under perspective (no affine approximation).

The Gaussian's value is ``exp(-sigma)`` with ``sigma = min(u^2 + v^2, 2 |x - c|^2) / 2``:
the surfel's own falloff, or the screen-space low-pass filter of the 2DGS paper around
``c`` when the surfel is seen nearly edge-on and thinner than a pixel. As in gsplat,
``c`` (``means2d``) is the centre of the surfel's projected unit ellipse, and depth for
the expected/median depth and the distortion loss is the centre's camera-space z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from splatkit.renderer.projection import ALPHA_MAX, ALPHA_THRESHOLD, camera_features
from splatkit.splat.conventions import camera_centers, quat_to_rotmat
from splatkit.splat.sh import sh_to_color

FILTER_INV_SQUARE = 2.0


@dataclass
class ProjectedSurfels:
    """Per-camera surfels; every tensor is ``[C, N, ...]``."""

    means2d: torch.Tensor  # [C, N, 2] centre of the projected unit ellipse (filter centre)
    ray_transforms: torch.Tensor  # [C, N, 3, 3] M = K [a | b | p_c]; rows are u_M, v_M, w_M
    normals: torch.Tensor  # [C, N, 3] camera-space normal, turned to face the camera
    opacities: torch.Tensor  # [C, N]
    depths: torch.Tensor  # [C, N] camera-space z of the centre
    radii: torch.Tensor  # [C, N, 2] int32 half-extents around means2d, 0 if culled
    colors: torch.Tensor  # [C, N, D]


def surfel_sigma(pix: torch.Tensor, means2d: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``sigma`` of surfels at pixel positions (broadcasting): ``pix [..., 2]``,
    ``means2d [..., 2]``, ``M [..., 3, 3]``; ``inf`` where the ray is parallel to the surfel."""
    h_u = pix[..., 0:1] * M[..., 2, :] - M[..., 0, :]
    h_v = pix[..., 1:2] * M[..., 2, :] - M[..., 1, :]
    p = torch.linalg.cross(h_u, h_v, dim=-1)
    ok = p[..., 2] != 0
    pz = torch.where(ok, p[..., 2], torch.ones_like(p[..., 2]))
    u, v = p[..., 0] / pz, p[..., 1] / pz
    rho3d = torch.where(ok, u * u + v * v, torch.full_like(u, math.inf))
    d = pix - means2d
    rho2d = FILTER_INV_SQUARE * (d * d).sum(-1)
    return 0.5 * torch.minimum(rho3d, rho2d)


def surfel_alpha(pix: torch.Tensor, means2d: torch.Tensor, M: torch.Tensor, opac: torch.Tensor) -> torch.Tensor:
    """``min(0.999, o exp(-sigma))``, 0 below 1/255 (gsplat's rule)."""
    alpha = torch.clamp_max(opac * torch.exp(-surfel_sigma(pix, means2d, M)), ALPHA_MAX)
    return torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))


def project_surfels(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> ProjectedSurfels:
    """Project surfels into ``C`` pinhole cameras.

    Args:
        means ``[N, 3]``, quats ``[N, 4]`` (wxyz), scales ``[N, 2]`` (activated; a third
        column, if given, is ignored), opacities ``[N]`` (activated), colors as for 3DGS;
        viewmats ``[C, 4, 4]`` world-to-camera (OpenCV), Ks ``[C, 3, 3]``.
    """
    C = viewmats.shape[0]
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    rot = quat_to_rotmat(quats)  # [N, 3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    axes_c = torch.einsum("cij,njk->cnik", R, rot)  # [C, N, 3, 3] columns: t_u, t_v, normal
    a = axes_c[..., 0] * scales[None, :, 0:1]
    b = axes_c[..., 1] * scales[None, :, 1:2]
    WH = torch.stack([a, b, means_c], dim=-1)  # [C, N, 3, 3] columns a, b, p_c
    M = Ks[:, None] @ WH

    normal = axes_c[..., 2]
    facing = (normal * means_c).sum(-1, keepdim=True) < 0
    normals = torch.where(facing, normal, -normal)

    tz = means_c[..., 2]
    in_depth = (tz > near_plane) & (tz < far_plane)
    opac = opacities[None, :].expand(C, -1)

    # Centre of the projected unit ellipse: from the dual conic M diag(1, 1, -1) M^T.
    sgn = torch.tensor([1.0, 1.0, -1.0], dtype=M.dtype, device=M.device)
    M0, M1, M2 = M[..., 0, :], M[..., 1, :], M[..., 2, :]
    dist = (sgn * M2 * M2).sum(-1)
    ok = dist != 0
    dist_safe = torch.where(ok, dist, torch.ones_like(dist))
    means2d = torch.stack([(sgn * M0 * M2).sum(-1), (sgn * M1 * M2).sum(-1)], dim=-1) / dist_safe[..., None]

    with torch.no_grad():
        radii = _exact_radii(M.detach(), means2d.detach(), opac, width, height)
        visible = in_depth & ok & (opac >= ALPHA_THRESHOLD)
        visible &= (radii[..., 0] > radius_clip) | (radii[..., 1] > radius_clip)
        mx, my = means2d[..., 0], means2d[..., 1]
        rx, ry = radii[..., 0], radii[..., 1]
        visible &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = (radii * visible[..., None]).to(torch.int32)

    if sh_degree is not None:
        dirs = means[None, :, :] - camera_centers(viewmats)[:, None, :]
        feats = sh_to_color(sh_degree, dirs, colors[None].expand(C, -1, -1, -1))
    else:
        feats = camera_features(colors, C)
    return ProjectedSurfels(means2d, M, normals, opac, tz, radii, feats.to(means.dtype))


def _exact_radii(M: torch.Tensor, means2d: torch.Tensor, opac: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Half-extents around ``means2d`` of a box holding every pixel whose alpha can reach 1/255.

    That region is the union of the surfel's ellipse ``u^2 + v^2 <= r^2`` with
    ``r^2 = 2 ln(255 o)`` and the filter's disc of radius ``sqrt(ln(255 o))`` pixels. The
    ellipse's box comes from the dual conic of radius ``r``; when the conic is not an
    ellipse (the surfel plane passes through the camera) the whole image is kept.
    """
    log_ratio = torch.log(torch.clamp(opac, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)
    r2 = 2.0 * log_ratio
    D = torch.diag_embed(torch.stack([r2, r2, -torch.ones_like(r2)], dim=-1))
    Cs = M @ D @ M.transpose(-1, -2)  # dual conic
    c22 = Cs[..., 2, 2]
    ellipse = c22 < 0
    c22s = torch.where(ellipse, c22, -torch.ones_like(c22))
    cx, cy = Cs[..., 0, 2] / c22s, Cs[..., 1, 2] / c22s
    hx = torch.sqrt(torch.clamp(cx * cx - Cs[..., 0, 0] / c22s, min=0.0))
    hy = torch.sqrt(torch.clamp(cy * cy - Cs[..., 1, 1] / c22s, min=0.0))
    mx, my = means2d[..., 0], means2d[..., 1]
    rx = torch.maximum((cx + hx - mx).abs(), (cx - hx - mx).abs())
    ry = torch.maximum((cy + hy - my).abs(), (cy - hy - my).abs())
    big = float(2 * (width + height))
    # Not an ellipse: a box around means2d that still covers the whole image.
    rx = torch.where(ellipse, rx, big + (mx - width / 2).abs())
    ry = torch.where(ellipse, ry, big + (my - height / 2).abs())
    disc = torch.sqrt(log_ratio)  # the filter: 2|d|^2 / 2 <= ln(255 o)
    rx = torch.ceil(torch.maximum(rx, disc) + 1e-3)
    ry = torch.ceil(torch.maximum(ry, disc) + 1e-3)
    return torch.stack([rx, ry], dim=-1).nan_to_num(big).clamp(max=1e8)


def screen_translation(M: torch.Tensor, means2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Insert a zero screen-space translation of every surfel's image, for densification.

    In 2DGS the projected centre ``means2d`` only enters through the low-pass filter, so
    its gradient is not the screen-space gradient 3DGS densification thresholds. Moving
    a surfel's image by ``d`` pixels maps ``M`` to ``[[1, 0, dx], [0, 1, dy], [0, 0, 1]] M``
    (and the filter centre by ``d``); with ``d = 0`` nothing changes, and ``d.grad`` after
    backward is the gradient of the loss with respect to where the surfel appears on
    screen, the quantity 2DGS and gsplat densify on.

    Returns ``(offset [C, N, 2] leaf requiring grad, M', means2d')``.
    """
    offset = torch.zeros_like(means2d.detach()).requires_grad_(torch.is_grad_enabled() and M.requires_grad)
    rows = M.unbind(-2)
    M = torch.stack([rows[0] + offset[..., 0:1] * rows[2], rows[1] + offset[..., 1:2] * rows[2], rows[2]], dim=-2)
    return offset, M, means2d + offset
