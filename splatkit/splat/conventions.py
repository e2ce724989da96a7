"""The one place that defines how a Gaussian splat is stored.

Every other file goes through these helpers instead of re-deriving them.

Parameters (as stored, trained and written to PLY):

- ``means``      ``[N, 3]`` world-space centres.
- ``scales``     ``[N, 3]`` *log* of the per-axis standard deviations
  (:func:`scale_activation` gives the scales).
- ``quats``      ``[N, 4]`` rotation as a quaternion in **wxyz** order, not necessarily
  normalised (:func:`quat_to_rotmat` normalises).
- ``opacities``  ``[N]`` *logit* of the opacity (:func:`opacity_activation`).
- ``sh0``        ``[N, 1, 3]`` degree-0 spherical-harmonic coefficient per channel.
- ``shN``        ``[N, K-1, 3]`` higher-order coefficients, ``K = (d + 1) ** 2``; see
  :mod:`splatkit.splat.sh` for the basis and the PLY channel-major layout.

Cameras:

- ``viewmats``   ``[C, 4, 4]`` world-to-camera matrices in the **OpenCV** camera frame
  (+X right, +Y down, +Z forward), as gsplat expects.
- ``Ks``         ``[C, 3, 3]`` pinhole intrinsics in pixels, with the pixel *corner*
  convention: the centre of pixel ``(i, j)`` is at ``(i + 0.5, j + 0.5)``.
- camera-to-world matrices (``c2w``) appear only at the data boundary and are turned
  into ``viewmats`` with :func:`c2w_to_viewmat`. Captures in the OpenGL/Blender frame
  (+Y up, looking down -Z) go through :func:`opengl_to_opencv_c2w` first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")

SURFEL_LOG_THICKNESS = -10.0
"""Log scale given to a surfel's normal axis when it must be stored as a 3D Gaussian
(``exp(-10) ~ 4.5e-5``: flat for any viewer, and inside every format's scale range)."""

OPACITY_LOGIT_LIMIT = 13.815510557964274
"""``logit(1 - 1e-6)``: where readers clamp infinite stored opacities (opacity exactly 0 or 1)."""


def opacity_activation(raw: torch.Tensor) -> torch.Tensor:
    """Stored logit opacity ``[...]`` -> opacity in (0, 1)."""
    return torch.sigmoid(raw)


def opacity_inverse_activation(opacity: torch.Tensor | float) -> torch.Tensor:
    """Opacity in (0, 1) -> stored logit."""
    return torch.logit(torch.as_tensor(opacity))


def scale_activation(raw: torch.Tensor) -> torch.Tensor:
    """Stored log scales ``[..., 3]`` -> standard deviations."""
    return torch.exp(raw)


def scale_inverse_activation(scale: torch.Tensor) -> torch.Tensor:
    """Standard deviations ``[..., 3]`` -> stored log scales."""
    return torch.log(scale)


def normalize_quat(quats: torch.Tensor) -> torch.Tensor:
    """Unit quaternions ``[..., 4]`` (wxyz)."""
    return F.normalize(quats, p=2, dim=-1)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` from wxyz quaternions ``[..., 4]`` (normalised here)."""
    w, x, y, z = normalize_quat(quats).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def axis_angle_to_rotmat(axis_angle: torch.Tensor) -> torch.Tensor:
    """The rotation ``[3, 3]`` of ``axis_angle [3]`` (the unit axis times the angle in radians,
    right-handed), through its wxyz quaternion."""
    theta = axis_angle.norm()
    return quat_to_rotmat(torch.cat([torch.cos(theta / 2)[None], torch.sin(theta / 2) * axis_angle / theta]))


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """wxyz unit quaternions ``[..., 4]`` with w >= 0 from rotation matrices ``[..., 3, 3]``."""
    m = R.reshape(-1, 3, 3)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    # Largest-component-first extraction is stable for every rotation.
    cands = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    best = cands.argmax(dim=-1)
    q = torch.empty(m.shape[0], 4, dtype=R.dtype, device=R.device)
    s = torch.sqrt(cands.gather(1, best[:, None]).clamp_min(1e-12))[:, 0] * 2  # 4 * |component|
    for k in range(4):
        sel = best == k
        if not sel.any():
            continue
        a, ss = m[sel], s[sel]
        if k == 0:
            q[sel] = torch.stack(
                [
                    ss / 4,
                    (a[:, 2, 1] - a[:, 1, 2]) / ss,
                    (a[:, 0, 2] - a[:, 2, 0]) / ss,
                    (a[:, 1, 0] - a[:, 0, 1]) / ss,
                ],
                -1,
            )
        elif k == 1:
            q[sel] = torch.stack(
                [
                    (a[:, 2, 1] - a[:, 1, 2]) / ss,
                    ss / 4,
                    (a[:, 0, 1] + a[:, 1, 0]) / ss,
                    (a[:, 0, 2] + a[:, 2, 0]) / ss,
                ],
                -1,
            )
        elif k == 2:
            q[sel] = torch.stack(
                [
                    (a[:, 0, 2] - a[:, 2, 0]) / ss,
                    (a[:, 0, 1] + a[:, 1, 0]) / ss,
                    ss / 4,
                    (a[:, 1, 2] + a[:, 2, 1]) / ss,
                ],
                -1,
            )
        else:
            q[sel] = torch.stack(
                [
                    (a[:, 1, 0] - a[:, 0, 1]) / ss,
                    (a[:, 0, 2] + a[:, 2, 0]) / ss,
                    (a[:, 1, 2] + a[:, 2, 1]) / ss,
                    ss / 4,
                ],
                -1,
            )
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(R.shape[:-2] + (4,))


def gaussian_kind(scales: torch.Tensor) -> str:
    """ "2dgs" for surfel scales ``[N, 2]``, "3dgs" for ``[N, 3]``."""
    return "2dgs" if scales.shape[-1] == 2 else "3dgs"


def axis_scales(scales: torch.Tensor) -> torch.Tensor:
    """Activated scales along the three rotation axes ``[..., 3]``: 2DGS surfels have two
    (``[..., 2]``, tangent axes) and none along their normal (the rotation's third column)."""
    if scales.shape[-1] == 2:
        return torch.cat([scales, torch.zeros_like(scales[..., :1])], dim=-1)
    return scales


def covariance_3d(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """World covariances ``[N, 3, 3] = R S S^T R^T`` from wxyz quats and *activated* scales
    (``[N, 3]``, or ``[N, 2]`` for surfels, flat along their normal)."""
    M = quat_to_rotmat(quats) * axis_scales(scales)[..., None, :]
    return M @ M.transpose(-1, -2)


def c2w_to_viewmat(c2w: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``[..., 4, 4]`` from rigid camera-to-world ``[..., 4, 4]`` (or 3x4)."""
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3:4]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def viewmat_to_c2w(viewmat: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``[..., 4, 4]`` from world-to-camera ``[..., 4, 4]`` (rigid)."""
    return c2w_to_viewmat(viewmat)


def project_points(
    points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, near: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uv [M, C, 2], z [M, C])``: where world points ``[M, 3]`` land in cameras ``viewmats``
    ``[C, 4, 4]`` / ``Ks`` ``[C, 3, 3]`` (pixel-corner convention: pixel ``(i, j)`` covers
    ``[i, i+1) x [j, j+1)``) and their depth along each camera's axis. ``uv`` divides by
    ``max(z, near)``, so points behind a camera are finite there: test ``z`` before using them."""
    cam = torch.einsum("cij,mj->mci", viewmats[:, :3, :3], points) + viewmats[:, :3, 3]  # [M, C, 3]
    z = cam[..., 2]
    zs = z.clamp_min(near)
    u = Ks[:, 0, 0] * cam[..., 0] / zs + Ks[:, 0, 2]  # no skew, as the rasterizers
    v = Ks[:, 1, 1] * cam[..., 1] / zs + Ks[:, 1, 2]
    return torch.stack([u, v], dim=-1), z


def camera_centers(viewmats: torch.Tensor) -> torch.Tensor:
    """Camera centres ``[..., 3]`` in world space from world-to-camera matrices."""
    R = viewmats[..., :3, :3]
    t = viewmats[..., :3, 3:4]
    return (-R.transpose(-1, -2) @ t)[..., 0]


def opengl_to_opencv_c2w(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``[..., 3|4, 4]`` with the camera's Y and Z axes flipped.

    Turns an OpenGL/Blender camera (+Y up, looking down -Z) into an OpenCV one; the
    map is its own inverse.
    """
    out = c2w.clone()
    out[..., :3, 1:3] *= -1
    return out


def look_at_c2w(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV camera-to-world ``[4, 4]`` for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear upward in the image.
    """
    forward = F.normalize(target - eye, dim=-1)
    right = F.normalize(torch.linalg.cross(forward, up, dim=-1), dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w
