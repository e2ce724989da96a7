"""PlayCanvas / SuperSplat compressed PLY (``*.compressed.ply``): 16 bytes per Gaussian plus SH.

A binary little-endian PLY, as PlayCanvas' ``splat-transform`` writes it and its
decompressor (and the PlayCanvas engine) read it:

- ``element chunk ceil(N / 256)`` with float properties ``min_x min_y min_z max_x max_y
  max_z min_scale_x min_scale_y min_scale_z max_scale_x max_scale_y max_scale_z min_r
  min_g min_b max_r max_g max_b``: per run of 256 Gaussians, the box of the centres, of
  the log scales (clamped to [-20, 20]) and of the base colours ``0.5 + SH_C0 * dc``
  (files without the six colour bounds store colours directly in [0, 1]);
- ``element vertex N`` with four ``uint`` properties:
  ``packed_position`` and ``packed_scale``: 11, 10 and 11 bits (x in the top bits) of the
  value's place within its chunk's box; ``packed_rotation``: the 2-bit index of the
  largest component of the unit quaternion in ``rot_0..rot_3`` (w, x, y, z) order, then
  the other three (sign of the largest made positive) as 10-bit ``q * sqrt(1/2) + 0.5``;
  ``packed_color``: 8 bits each of r, g, b within the chunk's colour box and of
  ``sigmoid(opacity)``;
- optionally ``element sh N`` with ``uchar f_rest_0..`` (9, 24 or 45, INRIA channel-major
  order), each ``trunc((x / 8 + 0.5) * 256)`` clamped to 0..255; decoded as
  ``((b + 0.5) / 256 - 0.5) * 8`` (bytes 0 and 255 as -4 and 4).

The frame is PLY's (RDF), the same as splatkit's. Gaussians are written in Morton
(Z-curve) order of their centres so each chunk's box is small. Quantisation errors:

- positions: a chunk's extent along the axis / (2 * 2047) for x, z and / (2 * 1023) for y;
- log scales: the chunk's log-scale range along the axis / (2 * 2047) or / (2 * 1023);
- base colour ``0.5 + SH_C0 * dc``: the chunk's colour range / (2 * 255);
- opacity (``sigmoid``): 0.5 / 255 (1.5 / 255 above 254.5 / 255, stored as 254 so that
  no decoder meets byte 255, whose logit is infinite);
- quaternion components (unit, sign aligned): about 7e-4 for the three smallest
  (largest within 3e-3);
- SH coefficients: 1/32 within [-4, 4] (values beyond are clipped).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.formats.quantise import alpha_bytes, arrays, largest_positive
from splatkit.splat.ply import SplatFileError, _check_size
from splatkit.splat.sh import SH_C0, f_rest_to_shN
from splatkit.utils.files import atomic_write

CHUNK_SIZE = 256
CHUNK_BOX_PROPS = [
    "min_x",
    "min_y",
    "min_z",
    "max_x",
    "max_y",
    "max_z",
    "min_scale_x",
    "min_scale_y",
    "min_scale_z",
    "max_scale_x",
    "max_scale_y",
    "max_scale_z",
]
CHUNK_COLOR_PROPS = ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]
VERTEX_PROPS = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
SH_COUNTS = (9, 24, 45)
SH_RANGE = 4.0
_SCALE_CLAMP = 20.0
_NORM = math.sqrt(2) * 0.5
# Opacity bytes 0 and 255 decode half a step inside (0, 1) so their logits stay finite.
_ALPHA_EPS = 0.5 / 255


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between each of the low 10 bits (for 30-bit Morton codes)."""
    v = v.astype(np.uint64) & np.uint64(0x3FF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x09249249)
    return v


def write_order(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Indices ``[N]`` in the order Gaussians are written: Morton order of the centres."""
    means = params["means"].detach().cpu().double().numpy()
    if means.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    lo, hi = means.min(axis=0), means.max(axis=0)
    cells = np.floor((means - lo) / np.maximum(hi - lo, 1e-30) * 1023).clip(0, 1023)
    code = (
        (_spread_bits(cells[:, 0]) << np.uint64(2))
        | (_spread_bits(cells[:, 1]) << np.uint64(1))
        | _spread_bits(cells[:, 2])
    )
    return torch.from_numpy(np.argsort(code, kind="stable"))


def _unorm(v: np.ndarray, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return np.clip(np.floor(v * t + 0.5), 0, t).astype(np.uint32)


def _place(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Where ``x`` lies in ``[lo, hi]`` as a fraction (0 for an empty range), per element."""
    width = hi - lo
    inside = np.where(width < 1e-5, 0.0, (x - lo) / np.where(width < 1e-5, 1.0, width))
    return np.where(x <= lo, 0.0, np.where(x >= hi, 1.0, inside))


def _pack_111011(t: np.ndarray) -> np.ndarray:
    return (_unorm(t[:, 0], 11) << np.uint32(21)) | (_unorm(t[:, 1], 10) << np.uint32(11)) | _unorm(t[:, 2], 11)


def _unpack_111011(v: np.ndarray) -> np.ndarray:
    return np.stack([((v >> 21) & 0x7FF) / 2047.0, ((v >> 11) & 0x3FF) / 1023.0, (v & 0x7FF) / 2047.0], axis=1)


def _pack_rotation(q: np.ndarray) -> np.ndarray:
    """``u32 [N]`` of wxyz quaternions ``[N, 4]`` (normalised here)."""
    q, largest = largest_positive(q)
    out = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        out = np.where(keep, (out << np.uint32(10)) | _unorm(q[:, i] * _NORM + 0.5, 10), out)
    return out


def _unpack_rotation(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint32)
    abc = np.stack([(v >> 20) & 0x3FF, (v >> 10) & 0x3FF, v & 0x3FF], axis=1) / 1023.0
    abc = (abc - 0.5) / _NORM
    m = np.sqrt(np.maximum(0.0, 1.0 - (abc * abc).sum(axis=1)))
    which = (v >> 30).astype(np.int64)
    q = np.empty((v.shape[0], 4))
    for k in range(4):
        sel = which == k
        others = [i for i in range(4) if i != k]
        q[sel, k] = m[sel]
        q[np.ix_(sel, others)] = abc[sel]
    return q


def _chunk_bounds(values: np.ndarray, num_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk minimum and maximum ``[C, D]`` of ``values [N, D]`` (runs of 256 rows)."""
    pad = num_chunks * CHUNK_SIZE - values.shape[0]
    # Like splat-transform, the last chunk is filled up with copies of the last row.
    full = np.concatenate([values, np.repeat(values[-1:], pad, axis=0)]) if pad else values
    blocks = full.reshape(num_chunks, CHUNK_SIZE, values.shape[1])
    return blocks.min(axis=1), blocks.max(axis=1)


def encode(params: dict[str, torch.Tensor]) -> bytes:
    """The compressed PLY bytes of stored (log/logit) parameters."""
    a = arrays(params, write_order(params))
    means, log_scales, quats, f_rest = a["means"], a["scales"], a["quats"], a["f_rest"]
    N = means.shape[0]
    rgb = 0.5 + SH_C0 * a["sh0"]
    num_chunks = math.ceil(N / CHUNK_SIZE)
    chunk_of = np.arange(N) // CHUNK_SIZE

    # Bounds are rounded to float32 first: the file holds them as float32 and the
    # fractions must be measured against what the reader will see.
    p_lo, p_hi = (b.astype(np.float32).astype(np.float64) for b in _chunk_bounds(means, num_chunks))
    s_lo, s_hi = _chunk_bounds(log_scales, num_chunks)
    s_lo, s_hi = (np.clip(b, -_SCALE_CLAMP, _SCALE_CLAMP).astype(np.float32).astype(np.float64) for b in (s_lo, s_hi))
    c_lo, c_hi = (b.astype(np.float32).astype(np.float64) for b in _chunk_bounds(rgb, num_chunks))

    vertex = np.empty((N, 4), dtype="<u4")
    vertex[:, 0] = _pack_111011(_place(means, p_lo[chunk_of], p_hi[chunk_of]))
    vertex[:, 1] = _pack_rotation(quats)
    vertex[:, 2] = _pack_111011(_place(log_scales, s_lo[chunk_of], s_hi[chunk_of]))
    c = _place(rgb, c_lo[chunk_of], c_hi[chunk_of])
    vertex[:, 3] = (
        (_unorm(c[:, 0], 8) << np.uint32(24))
        | (_unorm(c[:, 1], 8) << np.uint32(16))
        | (_unorm(c[:, 2], 8) << np.uint32(8))
        | alpha_bytes(a["opacities"]).astype(np.uint32)
    )
    chunks = np.concatenate([p_lo, p_hi, s_lo, s_hi, c_lo, c_hi], axis=1).astype("<f4")
    sh = np.clip(np.trunc((f_rest / (2 * SH_RANGE) + 0.5) * 256), 0, 255).astype(np.uint8)

    lines = ["ply", "format binary_little_endian 1.0", "comment Generated by splatkit", f"element chunk {num_chunks}"]
    lines += [f"property float {p}" for p in CHUNK_BOX_PROPS + CHUNK_COLOR_PROPS]
    lines += [f"element vertex {N}"] + [f"property uint {p}" for p in VERTEX_PROPS]
    if sh.shape[1]:
        lines += [f"element sh {N}"] + [f"property uchar f_rest_{i}" for i in range(sh.shape[1])]
    header = ("\n".join(lines + ["end_header"]) + "\n").encode("ascii")
    return header + chunks.tobytes() + vertex.tobytes() + sh.tobytes()


def write_compressed_ply_file(path: str | os.PathLike, params: dict[str, torch.Tensor]) -> Path:
    """Write stored parameters as a PlayCanvas compressed PLY to ``path`` atomically."""
    data = encode(params)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def is_compressed_ply(path: str | os.PathLike) -> bool:
    """Whether the PLY at ``path`` has the compressed layout (a ``chunk`` element and packed vertices)."""
    with open(path, "rb") as f:
        head = f.read(8192)
    end = head.find(b"end_header")
    text = head[: end if end >= 0 else len(head)].decode("ascii", errors="replace")
    return head.startswith(b"ply") and "element chunk " in text and "packed_position" in text


def read_compressed_ply_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a PlayCanvas compressed PLY into stored (log/logit) parameters."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressed PLY file not found: {path}")
    try:
        _check_size(path)
    except SplatFileError:
        raise
    except (ValueError, IndexError) as e:  # a damaged header line
        raise SplatFileError(f"{path}: malformed PLY header ({e})") from e
    try:
        ply = PlyData.read(str(path))
    except Exception as e:  # plyfile raises several types for malformed files
        raise SplatFileError(f"{path}: cannot parse PLY: {e}") from e
    elements = {el.name: el for el in ply.elements}
    for name in ("chunk", "vertex"):
        if name not in elements:
            raise SplatFileError(f"{path}: not a compressed PLY: it has no '{name}' element")

    def props(element, names: list[str], kinds: tuple[str, ...], what: str) -> np.ndarray:
        have = {p.name: p.val_dtype for p in element.properties}
        missing = [n for n in names if n not in have]
        if missing:
            raise SplatFileError(f"{path}: compressed PLY '{element.name}' element lacks {', '.join(missing)}")
        wrong = [n for n in names if np.dtype(have[n]).name not in kinds]
        if wrong:
            raise SplatFileError(f"{path}: compressed PLY properties {', '.join(wrong)} must be {what}")
        return np.stack([np.asarray(element[n]) for n in names], axis=1)

    chunk_el, vertex_el = elements["chunk"], elements["vertex"]
    box = props(chunk_el, CHUNK_BOX_PROPS, ("float32",), "float").astype(np.float64)
    chunk_names = {p.name for p in chunk_el.properties}
    colors = (
        props(chunk_el, CHUNK_COLOR_PROPS, ("float32",), "float").astype(np.float64)
        if set(CHUNK_COLOR_PROPS) <= chunk_names
        else None
    )
    packed = props(vertex_el, VERTEX_PROPS, ("uint32",), "uint (32-bit)").astype(np.uint32)
    N = packed.shape[0]
    num_chunks = box.shape[0]
    if num_chunks != math.ceil(N / CHUNK_SIZE):
        raise SplatFileError(
            f"{path}: compressed PLY has {num_chunks} chunks for {N} Gaussians; "
            f"it needs ceil({N} / {CHUNK_SIZE}) = {math.ceil(N / CHUNK_SIZE)}"
        )
    if not np.isfinite(box).all() or (colors is not None and not np.isfinite(colors).all()):
        raise SplatFileError(f"{path}: compressed PLY chunk bounds hold NaN or infinite values")

    f_rest = np.zeros((N, 0))
    if "sh" in elements:
        sh_el = elements["sh"]
        names = [p.name for p in sh_el.properties]
        if len(names) not in SH_COUNTS:
            raise SplatFileError(
                f"{path}: compressed PLY 'sh' element has {len(names)} properties; "
                f"expected one of {', '.join(map(str, SH_COUNTS))} (SH degree 1, 2 or 3)"
            )
        sh_bytes = props(sh_el, [f"f_rest_{i}" for i in range(len(names))], ("uint8",), "uchar")
        if sh_bytes.shape[0] != N:
            raise SplatFileError(f"{path}: compressed PLY 'sh' element has {sh_bytes.shape[0]} rows for {N} Gaussians")
        n = np.where(sh_bytes == 0, 0.0, np.where(sh_bytes == 255, 1.0, (sh_bytes.astype(np.float64) + 0.5) / 256))
        f_rest = (n - 0.5) * (2 * SH_RANGE)

    chunk_of = np.arange(N) // CHUNK_SIZE
    b = box[chunk_of]

    def lerp(lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
        return lo * (1 - t) + hi * t

    means = lerp(b[:, 0:3], b[:, 3:6], _unpack_111011(packed[:, 0]))
    log_scales = lerp(b[:, 6:9], b[:, 9:12], _unpack_111011(packed[:, 2]))
    quats = _unpack_rotation(packed[:, 1])
    c = packed[:, 3]
    c8 = np.stack([(c >> 24) & 0xFF, (c >> 16) & 0xFF, (c >> 8) & 0xFF, c & 0xFF], axis=1) / 255.0
    rgb = lerp(colors[chunk_of, 0:3], colors[chunk_of, 3:6], c8[:, :3]) if colors is not None else c8[:, :3]
    alpha = np.clip(c8[:, 3], _ALPHA_EPS, 1 - _ALPHA_EPS)
    return {
        "means": torch.from_numpy(means).float(),
        "scales": torch.from_numpy(log_scales).float(),
        "quats": torch.from_numpy(quats).float(),
        "opacities": torch.from_numpy(np.log(alpha / (1 - alpha))).float(),
        "sh0": torch.from_numpy((rgb - 0.5) / SH_C0).float().reshape(N, 1, 3),
        "shN": f_rest_to_shN(torch.from_numpy(f_rest).float()) if N else torch.zeros(0, f_rest.shape[1] // 3, 3),
    }
