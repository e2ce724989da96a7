"""GaussianSplats3D ``.ksplat``: the splat buffer of mkkellogg/GaussianSplats3D.

Layout (GaussianSplats3D ``src/loaders/SplatBuffer.js``; splat-transform's
``read-ksplat.ts`` reads the same), little-endian:

- a 4096-byte header: ``u8 versionMajor`` (0), ``u8 versionMinor`` (>= 1), at byte 4
  ``u32 maxSectionCount``, ``u32 sectionCount``, ``u32 maxSplatCount``, ``u32 splatCount``,
  at byte 20 ``u16 compressionLevel`` (0, 1 or 2), at byte 24 ``f32 x3`` scene centre,
  at byte 36 ``f32 minSH, maxSH`` (the range of level-2 SH bytes; 0 means -1.5 / 1.5);
- ``maxSectionCount`` section headers of 1024 bytes: ``u32 splatCount``, ``u32
  maxSplatCount``, ``u32 bucketSize``, ``u32 bucketCount``, ``f32 bucketBlockSize``, at
  byte 20 ``u16 bucketStorageSize`` (12: a bucket centre), at 24 ``u32
  compressionScaleRange`` (0: 32767), at 28 ``u32 storageSize``, ``u32 fullBucketCount``,
  ``u32 partialBucketCount``, at byte 40 ``u16 shDegree``;
- per section: ``u32`` sizes of the partly filled buckets, the bucket centres (``f32 x3``
  each), then ``maxSplatCount`` records of centre, scale, rotation, colour and SH:

  ===== ========================== ================= ================= ======= ===========
  level centre                     scale             rotation          colour  SH each
  ===== ========================== ================= ================= ======= ===========
  0     ``f32 x3``                 ``f32 x3`` linear ``f32 x4`` wxyz   ``u8x4`` ``f32``
  1     ``u16 x3`` in the bucket   ``f16 x3``        ``f16 x4``        ``u8x4`` ``f16``
  2     as level 1                 ``f16 x3``        ``f16 x4``        ``u8x4`` ``u8`` in
                                                                               [minSH, maxSH]
  ===== ========================== ================= ================= ======= ===========

  A bucketed centre is ``(u16 - range) * bucketBlockSize / 2 / range + bucketCentre``;
  colour is ``0.5 + SH_C0 * dc`` and ``sigmoid(opacity)`` in bytes; SH coefficients are
  stored band by band, each band channel-major (``R`` of all its bases, then ``G``, ``B``).

Coordinates are stored as in PLY (splat-transform gives ``.ksplat`` the PLY's
orientation). We read levels 0-2 and write level 0 (float32 geometry: lossless but for
colour and opacity, which are 8-bit, 0.5/255, with opacity at most 254/255 so that no
decoder meets byte 255, logit +inf), SH up to degree 2 (GaussianSplats3D's limit; degree
3 is dropped, and said so).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.formats.quantise import alpha_bytes, round_u8, unit_quats
from splatkit.splat.ply import SplatFileError
from splatkit.splat.sh import SH_C0, num_sh_bases, sh_degree_from_bases
from splatkit.utils.files import atomic_write

HEADER_BYTES = 4096
SECTION_HEADER_BYTES = 1024
MAX_SH_DEGREE = 2
DEFAULT_SH_RANGE = 1.5
DEFAULT_SCALE_RANGE = 32767
_MAIN = struct.Struct("<BBxxIIIIH2x3fff")
_SECTION = struct.Struct("<IIIIfH2xIIIIH")
# bytes of centre, scale, rotation, colour and one SH coefficient, per compression level
_LAYOUT = {0: (12, 12, 16, 4, 4), 1: (6, 6, 8, 4, 2), 2: (6, 6, 8, 4, 1)}
_ALPHA_EPS = 0.5 / 255


def _sh_order(degree: int) -> np.ndarray:
    """Indices into splatkit's ``shN`` flattened ``[K-1, 3]`` (basis-major, channel fastest)
    of the file's SH values: band by band, each band channel-major."""
    order = []
    for band in range(1, degree + 1):
        first, count = band * band - 1, 2 * band + 1
        order += [(first + k) * 3 + c for c in range(3) for k in range(count)]
    return np.array(order, dtype=np.int64)


def encode(params: dict[str, torch.Tensor]) -> bytes:
    """The level-0 ``.ksplat`` bytes of stored (log/logit) parameters (SH cut to degree 2)."""
    means = params["means"].detach().cpu().double().numpy()
    N = means.shape[0]
    shN = params["shN"].detach().cpu().double().numpy()
    degree = min(sh_degree_from_bases(shN.shape[1] + 1), MAX_SH_DEGREE)
    shN = shN[:, : num_sh_bases(degree) - 1]
    quats = unit_quats(params["quats"].detach().cpu().double().numpy())
    colour = np.empty((N, 4), np.uint8)
    colour[:, :3] = round_u8((0.5 + SH_C0 * params["sh0"].detach().cpu().double().numpy().reshape(N, 3)) * 255)
    colour[:, 3] = alpha_bytes(params["opacities"].detach().cpu().double().numpy())
    n_sh = 3 * shN.shape[1]
    record = np.dtype(
        [("center", "<f4", 3), ("scale", "<f4", 3), ("rot", "<f4", 4), ("rgba", "u1", 4), ("sh", "<f4", (n_sh,))]
    )
    rec = np.zeros(N, dtype=record)
    rec["center"] = means
    rec["scale"] = np.exp(params["scales"].detach().cpu().double().numpy())
    rec["rot"] = quats
    rec["rgba"] = colour
    if n_sh:
        rec["sh"] = shN.reshape(N, n_sh)[:, _sh_order(degree)]
    body = rec.tobytes()
    header = bytearray(HEADER_BYTES)
    _MAIN.pack_into(header, 0, 0, 1, 1, 1, N, N, 0, 0.0, 0.0, 0.0, -DEFAULT_SH_RANGE, DEFAULT_SH_RANGE)
    section = bytearray(SECTION_HEADER_BYTES)
    _SECTION.pack_into(section, 0, N, N, 0, 0, 0.0, 0, 0, len(body), 0, 0, degree)
    return bytes(header) + bytes(section) + body


def write_ksplat_file(path: str | os.PathLike, params: dict[str, torch.Tensor]) -> Path:
    """Write stored parameters as level-0 ``.ksplat`` to ``path`` atomically."""
    data = encode(params)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def decode(data: bytes, path: str | os.PathLike = "<bytes>") -> dict[str, torch.Tensor]:
    """Stored (log/logit) parameters from ``.ksplat`` bytes of any compression level."""
    if len(data) < HEADER_BYTES:
        raise SplatFileError(f"{path}: not a .ksplat file: {len(data)} bytes, less than its {HEADER_BYTES}-byte header")
    major, minor, max_sections, _, _, count, level, *_center, sh_lo, sh_hi = _MAIN.unpack_from(data)
    if major != 0 or minor < 1:
        raise SplatFileError(f"{path}: .ksplat version {major}.{minor} is not supported (splatkit reads 0.1 and later)")
    if level not in _LAYOUT:
        raise SplatFileError(f"{path}: .ksplat compression level {level} is not one of 0, 1, 2")
    sections_end = HEADER_BYTES + max_sections * SECTION_HEADER_BYTES
    if sections_end > len(data):
        raise SplatFileError(
            f"{path}: truncated .ksplat: {max_sections} section headers end at byte {sections_end}, past the "
            f"{len(data)}-byte file"
        )
    sh_lo, sh_hi = sh_lo or -DEFAULT_SH_RANGE, sh_hi or DEFAULT_SH_RANGE
    c_bytes, s_bytes, r_bytes, col_bytes, sh_bytes = _LAYOUT[level]
    parts: list[dict[str, np.ndarray]] = []
    degree_max, base = 0, sections_end
    for i in range(max_sections):
        n, max_n, bucket_size, buckets, block, bucket_storage, scale_range, _, full, partial, degree = (
            _SECTION.unpack_from(data, HEADER_BYTES + i * SECTION_HEADER_BYTES)
        )
        if degree > 3:
            raise SplatFileError(f"{path}: .ksplat section {i} declares SH degree {degree}; 0..3 are defined")
        if n > max_n:
            raise SplatFileError(f"{path}: .ksplat section {i} holds {n} splats but has room for {max_n}")
        n_sh = 3 * (num_sh_bases(degree) - 1)
        per = c_bytes + s_bytes + r_bytes + col_bytes + n_sh * sh_bytes
        meta = 4 * partial
        bucket_bytes = bucket_storage * buckets + meta
        end = base + bucket_bytes + per * max_n
        if end > len(data):
            raise SplatFileError(
                f"{path}: truncated .ksplat or wrong count: section {i} ({max_n} splats of {per} bytes) ends at "
                f"byte {end}, past the {len(data):,}-byte file"
            )
        rec = np.frombuffer(data, dtype=np.uint8, count=per * n, offset=base + bucket_bytes).reshape(n, per)
        cols = np.cumsum([0, c_bytes, s_bytes, r_bytes, col_bytes, n_sh * sh_bytes])
        field = [np.ascontiguousarray(rec[:, cols[k] : cols[k + 1]]) for k in range(5)]
        if level == 0:
            center = field[0].view("<f4").astype(np.float64)
            scale, rot = field[1].view("<f4").astype(np.float64), field[2].view("<f4").astype(np.float64)
            sh = field[4].view("<f4").astype(np.float64)
        else:
            if full + partial != buckets or (full and bucket_size == 0):
                raise SplatFileError(
                    f"{path}: .ksplat section {i} has {full} full and {partial} partial buckets of {buckets}"
                )
            sizes = np.frombuffer(data, dtype="<u4", count=partial, offset=base).astype(np.int64)
            if bucket_storage != 12:
                raise SplatFileError(f"{path}: .ksplat section {i} stores buckets of {bucket_storage} bytes, not 12")
            centres = np.frombuffer(data, dtype="<f4", count=3 * buckets, offset=base + meta).reshape(buckets, 3)
            bucket_of = np.concatenate(
                [np.repeat(np.arange(full), bucket_size), full + np.repeat(np.arange(partial), sizes)]
            )
            if bucket_of.shape[0] < n:
                raise SplatFileError(f"{path}: .ksplat section {i}: its buckets hold fewer than its {n} splats")
            scale_range = scale_range or DEFAULT_SCALE_RANGE
            q = field[0].view("<u2").astype(np.float64)
            center = (q - scale_range) * (block / 2 / scale_range) + centres[bucket_of[:n]]
            scale, rot = field[1].view("<f2").astype(np.float64), field[2].view("<f2").astype(np.float64)
            if level == 1:
                sh = field[4].view("<f2").astype(np.float64)
            else:
                sh = sh_lo + field[4].astype(np.float64) / 255 * (sh_hi - sh_lo)
        shN = np.zeros((n, 3 * (num_sh_bases(degree) - 1)))
        shN[:, _sh_order(degree)] = sh
        parts.append({"center": center, "scale": scale, "rot": rot, "rgba": field[3], "shN": shN, "degree": degree})
        degree_max = max(degree_max, degree)
        base = end
    total = sum(p["center"].shape[0] for p in parts)
    if total != count:
        raise SplatFileError(f"{path}: .ksplat header declares {count} splats; its sections hold {total}")
    if total == 0:
        raise SplatFileError(f"{path}: empty .ksplat file (no splats)")
    K = num_sh_bases(degree_max) - 1
    padded = [
        np.pad(p["shN"].reshape(len(p["shN"]), -1, 3), ((0, 0), (0, K - p["shN"].shape[1] // 3), (0, 0))) for p in parts
    ]
    shN = np.concatenate(padded)
    center = np.concatenate([p["center"] for p in parts])
    scale = np.concatenate([p["scale"] for p in parts])
    rot = np.concatenate([p["rot"] for p in parts])
    rgba = np.concatenate([p["rgba"] for p in parts]).astype(np.float64) / 255
    if not (np.isfinite(center).all() and np.isfinite(scale).all() and np.isfinite(rot).all()):
        raise SplatFileError(f"{path}: .ksplat holds NaN or infinite centres, scales or rotations")
    alpha = np.clip(rgba[:, 3], _ALPHA_EPS, 1 - _ALPHA_EPS)
    return {
        "means": torch.from_numpy(center).float(),
        "scales": torch.from_numpy(np.log(np.maximum(scale, np.exp(-10.0)))).float(),
        "quats": torch.from_numpy(rot).float(),
        "opacities": torch.from_numpy(np.log(alpha / (1 - alpha))).float(),
        "sh0": torch.from_numpy((rgba[:, :3] - 0.5) / SH_C0).float().reshape(total, 1, 3),
        "shN": torch.from_numpy(shN).float(),
    }


def read_ksplat_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.ksplat`` file (compression level 0, 1 or 2) into stored (log/logit) parameters."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".ksplat file not found: {path}")
    return decode(path.read_bytes(), path)
