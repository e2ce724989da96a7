"""Similarity transforms of a whole splat: move, rotate and uniformly scale it.

A 4x4 similarity ``T = [[s * R, t], [0, 1]]`` (``R`` orthogonal, ``s > 0``) maps a point
``x`` to ``s * R @ x + t``. Applied to a splat it moves every centre, turns every
Gaussian (its quaternion), grows every scale by ``s`` (``log s`` added to the stored log
scales) and turns the view-dependent colour: the spherical-harmonic coefficients of each
band ``l >= 1`` are mixed by a ``(2l+1) x (2l+1)`` matrix, so the rotated Gaussian shows
from direction ``R d`` the colour the original showed from ``d``. Opacities and the
degree-0 coefficient do not change.

Data providers expose ``provider.transform`` (input frame -> training frame); exports in
the input frame use ``transform_model(model, torch.linalg.inv(provider.transform))``.
Mirror transforms (``det R < 0``) are supported too: the Gaussians' shapes are mirrored
(a Gaussian is symmetric, so a proper rotation represents it) and the SH bands pick up
the parity of the reflection.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from splatkit.splat.conventions import rotmat_to_quat
from splatkit.splat.model import SplatModel
from splatkit.splat.sh import eval_sh_bases, sh_degree_from_bases

# Directions at which the SH bands are sampled to solve for their rotation matrices:
# far more than the 7 unknowns per row of the largest band, spread over the sphere.
_NUM_SH_SAMPLES = 256


def _fibonacci_sphere(n: int) -> torch.Tensor:
    """``n`` well-spread unit directions ``[n, 3]`` (float64)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = torch.sqrt((1 - z * z).clamp_min(0))
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def split_similarity(T: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, float, torch.Tensor]:
    """``(R [3, 3], s, t [3])`` (float64) of a similarity ``T [4, 4]`` with ``T[:3, :3] = s * R``.

    Raises ``ValueError`` when ``T`` is not 4x4, not finite, has a projective last row, or
    its 3x3 block is not a uniformly scaled orthogonal matrix.
    """
    if not isinstance(T, torch.Tensor):
        T = torch.from_numpy(np.asarray(T, dtype=np.float64))
    T = T.detach().cpu().double()
    if tuple(T.shape) != (4, 4):
        raise ValueError(f"transform must be a 4x4 matrix, got shape {list(T.shape)}")
    if not torch.isfinite(T).all():
        raise ValueError("transform holds NaN or infinite entries")
    if not torch.allclose(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9):
        raise ValueError(f"transform's last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    A = T[:3, :3]
    det = float(torch.linalg.det(A))
    if abs(det) < 1e-30:
        raise ValueError("transform is singular (its 3x3 block has determinant 0)")
    s = abs(det) ** (1.0 / 3.0)
    R = A / s
    err = float((R @ R.T - torch.eye(3, dtype=torch.float64)).abs().max())
    if err > 1e-4:
        raise ValueError(
            "transform is not a similarity (rotation times uniform scale plus translation): "
            f"its 3x3 block / scale deviates from orthogonal by {err:.2g}; shears and non-uniform "
            "scales cannot be applied to Gaussians exactly"
        )
    return R, s, T[:3, 3].clone()


def sh_rotation_matrices(R: torch.Tensor, degree: int) -> list[torch.Tensor]:
    """Per-band matrices ``D_l [2l+1, 2l+1]`` (float64), ``l = 1..degree``, for orthogonal ``R``.

    With coefficients ``c [2l+1]`` of band ``l`` (basis order of :mod:`splatkit.splat.sh`),
    ``D_l @ c`` are the coefficients of the colour turned by ``R``:
    ``sum_k (D_l c)_k Y_k(R d) = sum_k c_k Y_k(d)`` for every direction ``d``.
    Found by least squares on sampled directions: each band is closed under rotations,
    so the fit is exact to rounding.
    """
    R = R.double()
    dirs = _fibonacci_sphere(_NUM_SH_SAMPLES)
    Y = eval_sh_bases(degree, dirs)  # [M, K]
    Y_rot = eval_sh_bases(degree, dirs @ R.T)  # Y(R d)
    out = []
    for l in range(1, degree + 1):
        band = slice(l * l, (l + 1) ** 2)
        # Solve Y_rot[:, band] @ X = Y[:, band], then c' = X @ c:  sum_k c'_k Y_k(R d) = sum_k c_k Y_k(d).
        X = torch.linalg.lstsq(Y_rot[:, band], Y[:, band]).solution
        out.append(X)
    return out


def rotate_sh(shN: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Higher SH coefficients ``[N, K-1, 3]`` turned by orthogonal ``R [3, 3]`` (same dtype as ``shN``)."""
    degree = sh_degree_from_bases(shN.shape[1] + 1)
    if degree == 0:
        return shN.clone()
    out = torch.empty_like(shN)
    for l, D in enumerate(sh_rotation_matrices(R, degree), start=1):
        band = slice(l * l - 1, (l + 1) ** 2 - 1)  # shN omits the degree-0 basis
        out[:, band, :] = torch.einsum("ij,njc->nic", D.to(shN.dtype), shN[:, band, :])
    return out


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions ``[..., 4]`` (rotation ``b`` first, then ``a``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def transform_model(model: SplatModel, T: torch.Tensor | np.ndarray) -> SplatModel:
    """The splat moved by similarity ``T [4, 4]`` (``x -> s * R @ x + t``), as a new model.

    Centres become ``s * R @ mean + t``, log scales gain ``log s``, quaternions are
    pre-multiplied by ``R``'s (their norms are kept), and SH bands 1..3 are rotated with
    :func:`rotate_sh`. Rendering the result from a camera moved by the same ``T`` gives
    the original image. The computation runs in float64; the result has the model's dtype
    and device.
    """
    R, s, t = split_similarity(T)
    dtype, device = model.means.dtype, model.means.device
    # A mirror is a proper rotation composed with -I; -I leaves every (centred, symmetric)
    # Gaussian unchanged, so the shapes turn by the proper part. Colours see the mirror.
    R_shape = R if torch.linalg.det(R) > 0 else -R
    q_R = rotmat_to_quat(R_shape)
    means = model.means.detach().cpu().double() @ (s * R).T + t
    quats = quat_multiply(q_R.expand(model.num_gaussians, 4), model.quats.detach().cpu().double())
    scales = model.scales.detach().cpu().double() + math.log(s)
    shN = rotate_sh(model.shN.detach().cpu().double(), R)
    return SplatModel(
        means=means.to(dtype=dtype, device=device),
        scales=scales.to(dtype=dtype, device=device),
        quats=quats.to(dtype=dtype, device=device),
        opacities=model.opacities.detach().clone(),
        sh0=model.sh0.detach().clone(),
        shN=shN.to(dtype=dtype, device=device),
    )
