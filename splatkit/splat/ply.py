"""INRIA 3DGS PLY layout: the file every splat viewer reads.

One binary little-endian ``vertex`` element with float32 properties, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..2 rot_0..3`` where
``M = 3 * ((d + 1) ** 2 - 1)`` for SH degree ``d``. ``f_rest`` is channel-major,
opacity is a logit, scales are logs, rotations are wxyz quaternions; normals are
written as zeros (viewers ignore them).

2DGS surfels are written by default with three scales, the third (along the surfel's
normal) flattened to :data:`~splatkit.splat.conventions.SURFEL_LOG_THICKNESS`, and the
header comment :data:`SURFEL_COMMENT`, so 3DGS tools (INRIA-style plyfile readers,
gsply, splat-transform, Spark) read them as flat Gaussians and splatkit reads them
back as surfels. ``surfel_layout=True`` writes the 2DGS reference code's layout
(``scale_0 scale_1`` only), which those tools reject; both are read.

Readers clamp infinite stored opacities to ``+-OPACITY_LOGIT_LIMIT`` and ``-inf`` log
scales (a zero extent) to ``SURFEL_LOG_THICKNESS``, with a warning naming the count;
any other NaN or infinite value is a :class:`SplatFileError`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from splatkit.errors import SplatFileError
from splatkit.splat.conventions import OPACITY_LOGIT_LIMIT, SURFEL_LOG_THICKNESS
from splatkit.splat.sh import f_rest_to_shN, num_sh_bases, sh_degree_from_bases, shN_to_f_rest
from splatkit.utils.files import atomic_write

logger = logging.getLogger(__name__)

SURFEL_COMMENT = "splatkit 2dgs surfels: scale_2 is the flattened normal axis"
"""PLY header comment marking a 2DGS model written in the three-scale layout."""


def ply_property_names(sh_degree: int, n_scales: int = 3) -> list[str]:
    n_rest = 3 * (num_sh_bases(sh_degree) - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(n_scales)]
        + ["rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_ply(path: str | os.PathLike, params: dict[str, torch.Tensor], surfel_layout: bool = False) -> Path:
    """Write stored (log/logit) parameters to ``path`` atomically; 2DGS surfels (two scales)
    as flat 3D Gaussians unless ``surfel_layout`` (see the module docstring)."""
    from plyfile import PlyData, PlyElement

    means = params["means"].detach().cpu().float()
    N = means.shape[0]
    scales = params["scales"].detach().cpu().float()
    comments = []
    if scales.shape[1] == 2 and not surfel_layout:
        scales = torch.cat([scales, torch.full((N, 1), SURFEL_LOG_THICKNESS)], dim=1)
        comments = [SURFEL_COMMENT]
    shN = params["shN"].detach().cpu().float()
    sh_degree = sh_degree_from_bases(shN.shape[1] + 1)
    columns = torch.cat(
        [
            means,
            torch.zeros(N, 3),
            params["sh0"].detach().cpu().float().reshape(N, 3),
            shN_to_f_rest(shN),
            params["opacities"].detach().cpu().float().reshape(N, 1),
            scales,
            params["quats"].detach().cpu().float(),
        ],
        dim=1,
    ).numpy()
    names = ply_property_names(sh_degree, scales.shape[1])
    data = np.empty(N, dtype=[(n, "<f4") for n in names])
    for i, n in enumerate(names):
        data[n] = columns[:, i]
    element = PlyElement.describe(data, "vertex")

    def write(tmp: Path) -> None:
        PlyData([element], text=False, byte_order="<", comments=comments).write(str(tmp))

    return atomic_write(path, write)


_MAX_HEADER = 16 << 20


def _check_size(path: Path) -> None:
    """Compare the header's vertex count with the bytes actually present."""
    with open(path, "rb") as f:
        head = f.read(4)
        if not head.startswith(b"ply"):
            raise SplatFileError(f"{path}: not a PLY file (it does not start with 'ply')")
        # Headers are small, but comments may make them long: read up to 16 MB for the end.
        while (end := head.find(b"end_header\n")) < 0 and len(head) < _MAX_HEADER:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            head += chunk
    if end < 0:
        raise SplatFileError(
            f"{path}: PLY header has no 'end_header' line in its first {min(len(head), _MAX_HEADER):,} bytes "
            "(file truncated or not a PLY)"
        )
    header = head[:end].decode("ascii", errors="replace").splitlines()
    if not any(line.strip() == "format binary_little_endian 1.0" for line in header):
        return  # ascii and big-endian files are left to plyfile's own checks
    sizes = {
        "float": 4,
        "float32": 4,
        "double": 8,
        "float64": 8,
        "uchar": 1,
        "uint8": 1,
        "char": 1,
        "int8": 1,
        "short": 2,
        "int16": 2,
        "ushort": 2,
        "uint16": 2,
        "int": 4,
        "int32": 4,
        "uint": 4,
        "uint32": 4,
    }
    total, count, row = 0, 0, 0
    for line in header + ["element end 0"]:
        parts = line.split()
        if parts[:1] == ["element"]:
            total += count * row
            count, row = int(parts[2]), 0
        elif parts[:1] == ["property"]:
            if parts[1] not in sizes:
                return  # list or unknown properties: sizes vary, plyfile checks these
            row += sizes[parts[1]]
    available = path.stat().st_size - (end + len(b"end_header\n"))
    if available < total:
        raise SplatFileError(
            f"{path}: truncated PLY: the header declares {total} bytes of vertex data "
            f"but the file holds only {available} after the header"
        )


def read_ply(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an INRIA-layout PLY into stored (log/logit) parameters."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    _check_size(path)
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises several types for malformed files
        raise SplatFileError(f"{path}: cannot parse PLY: {e}") from e
    if "vertex" not in [el.name for el in ply.elements]:
        raise SplatFileError(f"{path}: PLY has no 'vertex' element")
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    n_rest = len([n for n in names if n.startswith("f_rest_")])
    try:
        sh_degree = sh_degree_from_bases(n_rest // 3 + 1)
        if n_rest % 3:
            raise ValueError
    except ValueError:
        raise SplatFileError(
            f"{path}: {n_rest} f_rest_* properties is not 3 * ((d+1)^2 - 1) for an SH degree d in 0..3"
        ) from None
    n_scales = 2 if ("scale_2" not in names and "scale_1" in names) else 3  # 2DGS surfels: two scales
    required = [n for n in ply_property_names(sh_degree, n_scales) if n not in ("nx", "ny", "nz")]
    missing = [n for n in required if n not in names]
    if missing:
        raise SplatFileError(
            f"{path}: PLY vertex element lacks propert{'y' if len(missing) == 1 else 'ies'} "
            f"{', '.join(missing)} required by the 3DGS layout"
        )

    def col(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=1))

    N = len(v.data)
    if N == 0:
        raise SplatFileError(f"{path}: the file holds no Gaussians (0 vertices / records)")
    f_rest = col(*[f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(N, 0)
    if n_scales == 3 and SURFEL_COMMENT in ply.comments:
        n_scales = 2  # splatkit's 3DGS-readable 2DGS layout: the third scale is the flattened normal
    return finite_params(
        {
            "means": col("x", "y", "z"),
            "scales": col(*[f"scale_{i}" for i in range(n_scales)]),
            "quats": col("rot_0", "rot_1", "rot_2", "rot_3"),
            "opacities": col("opacity")[:, 0].contiguous(),
            "sh0": col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :].contiguous(),
            "shN": f_rest_to_shN(f_rest),
        },
        path,
    )


def finite_params(params: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """``params`` read from ``path`` with infinite opacities and ``-inf`` log scales clamped
    (logging how many); any other NaN or infinite value raises :class:`SplatFileError`."""
    out = dict(params)
    for name, t in params.items():
        bad = ~torch.isfinite(t)
        if not bool(bad.any()):
            continue
        nan, total = int(torch.isnan(t).sum()), int(bad.sum())
        if name == "opacities" and not nan:
            out[name] = t.clamp(-OPACITY_LOGIT_LIMIT, OPACITY_LOGIT_LIMIT)
            logger.warning(
                "%s: %d of %d opacities are infinite (opacity exactly 0 or 1); clamped to logits +-%.4g",
                path,
                total,
                t.numel(),
                OPACITY_LOGIT_LIMIT,
            )
        elif name == "scales" and not nan and not bool((t == float("inf")).any()):
            out[name] = t.clamp_min(SURFEL_LOG_THICKNESS)
            logger.warning(
                "%s: %d of %d log scales are -inf (zero extent); clamped to %g (flat)",
                path,
                total,
                t.numel(),
                SURFEL_LOG_THICKNESS,
            )
        else:
            raise SplatFileError(
                f"{path}: {total} of {t.numel()} values of {name!r} are NaN ({nan}) or infinite "
                f"({total - nan}); the file cannot be rendered or trained from (a diverged model or a broken writer)"
            )
    return out
