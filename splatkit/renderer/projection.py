"""EWA projection of 3D Gaussians to screen-space ellipses, in plain PyTorch.

This is the reference maths every backend reproduces. The constants follow gsplat:
pixel centres at ``+0.5``, a 0.3 px^2 screen-space blur, alpha clamped at 0.999,
contributions below 1/255 skipped, and an opacity-aware bounding box that is exact
for that skip: outside it every pixel's alpha is below 1/255, so culling there
changes nothing in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkit.splat.conventions import camera_centers, covariance_3d
from splatkit.splat.sh import sh_to_color

ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
MAX_EXTENT_SIGMA = 3.33


@dataclass
class Projected:
    """Per-camera screen-space Gaussians; every tensor is ``[C, N, ...]``."""

    means2d: torch.Tensor  # [C, N, 2] pixels
    conics: torch.Tensor  # [C, N, 3] upper triangle (a, b, c) of the inverse 2D covariance
    opacities: torch.Tensor  # [C, N] after the antialiasing compensation, if any
    depths: torch.Tensor  # [C, N] camera-space z
    radii: torch.Tensor  # [C, N, 2] int32 half-extent of the bounding box, 0 if culled
    colors: torch.Tensor  # [C, N, D]


def project_gaussians(
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
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    rasterize_mode: str = "classic",
) -> Projected:
    """Project Gaussians into ``C`` pinhole cameras.

    Args:
        means ``[N, 3]``, quats ``[N, 4]`` (wxyz), scales ``[N, 3]`` (activated),
        opacities ``[N]`` (activated), colors ``[N, K, 3]`` SH coefficients when
        ``sh_degree`` is set, else ``[N, D]`` or ``[C, N, D]`` features;
        viewmats ``[C, 4, 4]`` world-to-camera (OpenCV), Ks ``[C, 3, 3]``.
    """
    C = viewmats.shape[0]
    dtype = means.dtype
    R = viewmats[:, :3, :3]
    t = viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    covars_c = R[:, None] @ covariance_3d(quats, scales)[None] @ R[:, None].transpose(-1, -2)

    tx, ty, tz = means_c.unbind(-1)
    in_depth = (tz > near_plane) & (tz < far_plane)
    # Culled Gaussians still flow through the graph; a safe depth keeps their
    # (discarded) values finite so no NaN leaks into gradients through where().
    tz = torch.where(in_depth, tz, torch.ones_like(tz))

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Like 3DGS and gsplat, the Jacobian is evaluated at a point clamped to 1.3x the
    # field of view so Gaussians far off-screen do not get huge footprints.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    jx = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    jy = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zeros, -fx * jx / tz**2, zeros, fy / tz, -fy * jy / tz**2], dim=-1).reshape(
        C, means.shape[0], 2, 3
    )
    cov2d = J @ covars_c @ J.transpose(-1, -2)

    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)

    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    ok_det = det > 0
    det_safe = torch.where(ok_det, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)

    opac = opacities[None, :].expand(C, -1)
    if rasterize_mode == "antialiased":
        opac = opac * torch.sqrt(torch.clamp(det_orig / det_safe, min=0.0))
    elif rasterize_mode != "classic":
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got {rasterize_mode!r}")

    with torch.no_grad():
        visible = in_depth & ok_det & (opac >= ALPHA_THRESHOLD)
        extent = torch.sqrt(2.0 * torch.log(torch.clamp(opac, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extent = torch.clamp(extent, max=MAX_EXTENT_SIGMA)
        rx = torch.ceil(extent * torch.sqrt(torch.clamp(a, min=0.0)))
        ry = torch.ceil(extent * torch.sqrt(torch.clamp(c, min=0.0)))
        visible &= (rx > radius_clip) | (ry > radius_clip)
        mx, my = means2d[..., 0], means2d[..., 1]
        visible &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], dim=-1) * visible[..., None]
        radii = radii.to(torch.int32)

    if sh_degree is not None:
        if colors.dim() != 3 or colors.shape[-1] != 3:
            raise ValueError(f"with sh_degree set, colors must be [N, K, 3], got {tuple(colors.shape)}")
        dirs = means[None, :, :] - camera_centers(viewmats)[:, None, :]
        feats = sh_to_color(sh_degree, dirs, colors[None].expand(C, -1, -1, -1))
    else:
        feats = camera_features(colors, C)

    return Projected(
        means2d=means2d, conics=conics, opacities=opac, depths=means_c[..., 2], radii=radii, colors=feats.to(dtype)
    )


def camera_features(colors: torch.Tensor, C: int) -> torch.Tensor:
    """Features composited as they are (no SH): ``[N, D]`` shared by the ``C`` cameras, or
    ``[C, N, D]`` per camera, as ``[C, N, D]``."""
    if colors.dim() == 2:
        return colors[None].expand(C, -1, -1)
    if colors.dim() == 3 and colors.shape[0] == C:
        return colors
    raise ValueError(f"colors must be [N, D] or [C, N, D] without sh_degree, got {tuple(colors.shape)}")


def tile_bounds(
    means2d: torch.Tensor, radii: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive-exclusive tile ranges ``(lo [C, N, 2], hi [C, N, 2])`` of each bounding box."""
    r = radii.to(means2d.dtype)
    lo = torch.floor((means2d - r) / tile_size).to(torch.int64)
    hi = torch.ceil((means2d + r) / tile_size).to(torch.int64)
    limit = torch.tensor([tiles_x, tiles_y], device=means2d.device)
    lo = torch.minimum(lo.clamp_min(0), limit)
    hi = torch.minimum(hi.clamp_min(0), limit)
    hi = torch.where((radii > 0).any(-1, keepdim=True), hi, lo)
    return lo, hi


def features_for_mode(colors: torch.Tensor, depths: torch.Tensor, render_mode: str) -> torch.Tensor:
    """What is composited for ``render_mode``: colours ``[C, N, D]``, depth alone, or both."""
    if render_mode in ("D", "ED"):
        return depths[..., None]
    if render_mode in ("RGB+D", "RGB+ED"):
        return torch.cat([colors, depths[..., None]], dim=-1)
    return colors


def background_for_mode(backgrounds: torch.Tensor | None, feats: torch.Tensor, render_mode: str) -> torch.Tensor | None:
    """The ``[C, D]`` colour to composite ``feats [C, N, D]`` over: ``backgrounds`` for the
    colour channels, 0 for a depth channel, None (black) for depth alone or no background."""
    if backgrounds is None or render_mode in ("D", "ED"):
        return None
    extra = feats.shape[-1] - backgrounds.shape[-1]
    return (
        torch.cat([backgrounds, backgrounds.new_zeros(backgrounds.shape[0], extra)], dim=-1) if extra else backgrounds
    )


def projection_meta(proj: Projected, width: int, height: int, tile_size: int) -> dict:
    """The ``meta`` dict :func:`splatkit.renderer.rasterize` returns for an unpacked render."""
    return {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "opacities": proj.opacities,
        "width": width,
        "height": height,
        "n_cameras": proj.radii.shape[0],
        "tile_size": tile_size,
        "packed": False,
        "gaussian_ids": None,
    }


def expected_depth(depth_sum: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Accumulated ``sum w d`` divided by the accumulated alpha."""
    return depth_sum / alphas.clamp_min(1e-10)


def finish_depth(renders: torch.Tensor, alphas: torch.Tensor, render_mode: str) -> torch.Tensor:
    """For the "ED" modes, turn the composited depth channel into the expected depth."""
    if render_mode.endswith("ED"):
        return torch.cat([renders[..., :-1], expected_depth(renders[..., -1:], alphas)], dim=-1)
    return renders
