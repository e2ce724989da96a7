"""Pieces the quantising writers share (``.splat``, ``.spz``, ``.compressed.ply``, ``.ksplat``,
``.sog``): parameters as float64 arrays in write order, unit quaternions, the smallest-three
sign rule and the opacity byte."""

from __future__ import annotations

import numpy as np
import torch

from splatkit.splat.sh import shN_to_f_rest

MAX_ALPHA_BYTE = 254
"""Largest opacity byte any splatkit writer stores: Niantic's library and splat-transform
decode 255 as opacity 1, whose logit is +inf."""


def arrays(params: dict[str, torch.Tensor], order: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Stored parameters as float64 arrays, in ``order`` when given: ``means``, ``scales``,
    ``quats``, ``opacities``, ``sh0`` ``[N, 3]`` and ``f_rest`` ``[N, 3 * (K - 1)]`` (PLY's
    channel-major order)."""

    def col(name: str) -> torch.Tensor:
        t = params[name].detach().cpu().double()
        return t if order is None else t[order]

    out = {name: col(name).numpy() for name in ("means", "scales", "quats", "opacities")}
    out["sh0"] = col("sh0").reshape(-1, 3).numpy()
    out["f_rest"] = shN_to_f_rest(col("shN")).numpy()
    return out


def unit_quats(q: np.ndarray) -> np.ndarray:
    """Quaternions ``[N, 4]`` scaled to unit length; a zero quaternion becomes the identity (wxyz)."""
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    return np.divide(q, norm, out=np.tile([1.0, 0.0, 0.0, 0.0], (q.shape[0], 1)), where=norm > 0)


def largest_positive(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit quaternions ``[N, 4]`` with the sign that makes their largest-magnitude component
    positive (the same rotation), and that component's index ``[N]``: what smallest-three
    encodings store (the largest is rebuilt as the positive root)."""
    unit = unit_quats(q)
    largest = np.abs(unit).argmax(axis=1)
    return np.where(unit[np.arange(len(unit)), largest][:, None] < 0, -unit, unit), largest


def round_u8(x: np.ndarray) -> np.ndarray:
    """``x`` rounded (halves up) and clipped to bytes."""
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def alpha_bytes(opacities: np.ndarray) -> np.ndarray:
    """Opacity bytes of logit opacities: ``sigmoid`` times 255, rounded, at most :data:`MAX_ALPHA_BYTE`."""
    return np.minimum(round_u8(255.0 / (1.0 + np.exp(-opacities))), MAX_ALPHA_BYTE)
