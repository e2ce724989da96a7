"""antimatter15 ``.splat``: the headerless 32-byte-per-Gaussian file of the first web viewers.

Each record, little-endian, as antimatter15/splat's ``convert.py`` writes and its
``main.js`` reads:

====== ====== ===========================================================
bytes  type   content
====== ====== ===========================================================
0-11   f32 x3 position
12-23  f32 x3 *linear* scales (``exp`` of the stored log scales)
24-27  u8 x4  R, G, B = ``0.5 + SH_C0 * dc`` and A = ``sigmoid(opacity)``, times 255
28-31  u8 x4  quaternion **w, x, y, z** (``main.js`` builds the rotation with byte 28
              as the real part), normalised and stored as ``q * 128 + 128``
====== ====== ===========================================================

Records are sorted by ``exp(sum of log scales) * sigmoid(opacity)``, largest first, as
``convert.py`` does (viewers that stream the file show the big, opaque Gaussians first).
There are no higher SH coefficients: view-dependent colour is lost, and base colours
outside [0, 1] are clipped. Bytes are rounded to nearest (``convert.py`` truncates; the
decoding is the same), so the quantisation errors are at most:

- positions and scales: float32, exact up to ``log``/``exp`` rounding (< 1e-6 relative);
- colour (``0.5 + SH_C0 * dc``) and opacity: 0.5 / 255 when inside [0, 1] (opacities
  above 254.5 / 255 are stored as 254, so 1.5 / 255 there: byte 255 decodes to an
  infinite logit in readers such as splat-transform);
- each quaternion component: 1 / 128 before the reader renormalises (so at most about
  0.03 after it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.formats.quantise import alpha_bytes, arrays, round_u8, unit_quats
from splatkit.splat.ply import SplatFileError
from splatkit.splat.sh import SH_C0
from splatkit.utils.files import atomic_write

RECORD_BYTES = 32
RECORD_DTYPE = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])

# Opacity bytes 0 and 255 decode half a step inside (0, 1) so their logits stay finite.
_ALPHA_EPS = 0.5 / 255


def write_order(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Indices ``[N]`` in the order records are written: volume x opacity, largest first."""
    size = torch.exp(params["scales"].detach().cpu().double().sum(dim=1))
    alpha = torch.sigmoid(params["opacities"].detach().cpu().double())
    key = (-(size * alpha)).numpy()
    return torch.from_numpy(np.argsort(key, kind="stable"))


def encode(params: dict[str, torch.Tensor]) -> bytes:
    """The ``.splat`` bytes of stored (log/logit) parameters (higher SH coefficients are ignored)."""
    a = arrays(params, write_order(params))
    rec = np.zeros(a["means"].shape[0], dtype=RECORD_DTYPE)
    rec["position"] = a["means"]
    rec["scale"] = np.exp(a["scales"])
    rec["rgba"][:, :3] = round_u8((0.5 + SH_C0 * a["sh0"]) * 255)
    rec["rgba"][:, 3] = alpha_bytes(a["opacities"])
    rec["rot"] = round_u8(unit_quats(a["quats"]) * 128 + 128)
    return rec.tobytes()


def write_splat_file(path: str | os.PathLike, params: dict[str, torch.Tensor]) -> Path:
    """Write stored parameters as antimatter15 ``.splat`` to ``path`` atomically."""
    if params["means"].shape[0] == 0:
        raise ValueError(
            f"cannot write {path}: a .splat file needs at least one Gaussian (an empty file is not a valid .splat)"
        )
    data = encode(params)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def decode(data: bytes, path: str | os.PathLike = "<bytes>") -> dict[str, torch.Tensor]:
    """Stored (log/logit) parameters from ``.splat`` bytes; ``path`` names the file in errors."""
    if len(data) == 0:
        raise SplatFileError(f"{path}: empty .splat file (no Gaussians)")
    if data[:4] == b"ply\n" or data[:2] == b"\x1f\x8b":
        kind = "a PLY file" if data[:3] == b"ply" else "gzip data (an .spz file?)"
        raise SplatFileError(f"{path}: not an antimatter15 .splat file: it starts like {kind}")
    if len(data) % RECORD_BYTES:
        raise SplatFileError(
            f"{path}: size {len(data)} bytes is not a multiple of {RECORD_BYTES} (one .splat record per "
            f"Gaussian): the file is truncated or not a .splat file ({len(data) % RECORD_BYTES} bytes left over "
            f"after {len(data) // RECORD_BYTES} records)"
        )
    rec = np.frombuffer(data, dtype=RECORD_DTYPE)
    with np.errstate(invalid="ignore"):  # NaN bytes are reported below, not warned about
        pos = rec["position"].astype(np.float64)
        scale = rec["scale"].astype(np.float64)
    bad = ~(np.isfinite(pos).all(axis=1) & np.isfinite(scale).all(axis=1) & (scale > 0).all(axis=1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise SplatFileError(
            f"{path}: record {i} of {len(rec)} is corrupt (position {pos[i].tolist()}, scales {scale[i].tolist()}; "
            f"scales must be finite and positive); {int(bad.sum())} bad records in all"
        )
    rgba = rec["rgba"].astype(np.float64) / 255
    q = unit_quats((rec["rot"].astype(np.float64) - 128) / 128)
    alpha = np.clip(rgba[:, 3], _ALPHA_EPS, 1 - _ALPHA_EPS)
    N = len(rec)
    return {
        "means": torch.from_numpy(pos).float(),
        "scales": torch.from_numpy(np.log(scale)).float(),
        "quats": torch.from_numpy(q).float(),
        "opacities": torch.from_numpy(np.log(alpha / (1 - alpha))).float(),
        "sh0": torch.from_numpy((rgba[:, :3] - 0.5) / SH_C0).float().reshape(N, 1, 3),
        "shN": torch.zeros(N, 0, 3),
    }


def read_splat_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an antimatter15 ``.splat`` file into stored (log/logit) parameters (SH degree 0)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".splat file not found: {path}")
    return decode(path.read_bytes(), path)
