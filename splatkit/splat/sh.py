"""Real spherical harmonics: basis, colour conversion and storage layout.

Colours are ``clamp_min(sum_k c_k Y_k(d) + 0.5, 0)`` where ``d`` is the unit direction
from the camera centre to the Gaussian, as in the 3DGS paper and gsplat.

In memory coefficients are ``[N, K, 3]`` (basis-major: ``[:, k, c]``). The INRIA PLY
stores ``f_dc_0..2`` = ``[:, 0, :]`` and ``f_rest_*`` **channel-major**: all R
coefficients of bases 1..K-1, then all G, then all B.
"""

from __future__ import annotations

import math

import torch

MAX_SH_DEGREE = 3
SH_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of basis functions ``(degree + 1) ** 2``."""
    return (degree + 1) ** 2


def active_bands(sh0: torch.Tensor, shN: torch.Tensor, degree: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(sh0, rest)``: the coefficients a render at ``degree`` reads, kept apart as the model
    keeps them, ``rest`` being the first bands of ``shN`` (None at degree 0). Bands above
    ``degree`` stay out of the graph (their gradient is zero either way), so a low-degree
    step neither copies them nor fills their gradient with zeros; at degree 0 ``shN`` gets no
    gradient at all."""
    k = num_sh_bases(degree) - 1
    if k <= 0:
        return sh0, None
    return sh0, shN if k >= shN.shape[1] else shN[:, :k]


def join_bands(band0: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
    """Band 0 ``[N, 1, 3]`` and the bands above it ``[N, K - 1, 3]`` (or None) as one
    ``[N, K, 3]`` coefficient tensor."""
    return band0 if rest is None else torch.cat([band0, rest], dim=1)


def sh_degree_from_bases(num_bases: int) -> int:
    """Inverse of :func:`num_sh_bases`; raises ``ValueError`` if ``num_bases`` is not a square."""
    degree = math.isqrt(num_bases) - 1
    if degree < 0 or num_sh_bases(degree) != num_bases or degree > MAX_SH_DEGREE:
        raise ValueError(f"{num_bases} SH coefficients per channel is not (d+1)^2 for a degree d in 0..{MAX_SH_DEGREE}")
    return degree


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """Degree-0 coefficient that renders as ``rgb`` (in [0, 1]) from every direction."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Colour of a degree-0 coefficient (inverse of :func:`rgb_to_sh`)."""
    return sh0 * SH_C0 + 0.5


def eval_sh_bases(degree: int, dirs: torch.Tensor) -> torch.Tensor:
    """Basis values ``[..., (degree + 1) ** 2]`` at unit directions ``dirs [..., 3]``."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    out = [torch.full_like(dirs[..., 0], SH_C0)]
    if degree >= 1:
        x, y, z = dirs.unbind(-1)
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [_C2[0] * x * y, _C2[1] * y * z, _C2[2] * (2 * zz - xx - yy), _C2[3] * x * z, _C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            _C3[0] * y * (3 * xx - yy),
            _C3[1] * x * y * z,
            _C3[2] * y * (4 * zz - xx - yy),
            _C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            _C3[4] * x * (4 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_color(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Colours ``[..., 3]`` from coefficients ``[..., K, 3]`` using bases up to ``degree``.

    ``dirs [..., 3]`` need not be normalised. Coefficients beyond ``degree`` are ignored,
    so training can raise the active degree without reshaping parameters.
    """
    n = num_sh_bases(degree)
    if coeffs.shape[-2] < n:
        raise ValueError(f"sh degree {degree} needs {n} coefficients, got {coeffs.shape[-2]}")
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    bases = eval_sh_bases(degree, dirs)
    raw = (bases[..., None] * coeffs[..., :n, :]).sum(dim=-2)
    return torch.clamp_min(raw + 0.5, 0.0)


def shN_to_f_rest(shN: torch.Tensor) -> torch.Tensor:
    """``[N, K-1, 3]`` -> PLY ``f_rest`` columns ``[N, 3 * (K-1)]`` (channel-major)."""
    return shN.transpose(1, 2).reshape(shN.shape[0], 3 * shN.shape[1])


def f_rest_to_shN(f_rest: torch.Tensor) -> torch.Tensor:
    """PLY ``f_rest`` columns ``[N, 3 * (K-1)]`` -> ``[N, K-1, 3]``."""
    return f_rest.reshape(f_rest.shape[0], 3, -1).transpose(1, 2).contiguous()
