"""Niantic ``.spz``: the quantised splat that glTF's ``KHR_gaussian_splatting`` adopted.

Two containers hold the same attribute sections (nianticlabs/spz ``load-spz.cc`` and its
README; gsply's ``spz.py``):

- versions 2 and 3: one gzip stream holding a 16-byte little-endian header
  ``u32 magic 0x5053474e ("NGSP")``, ``u32 version``, ``u32 numPoints``, ``u8 shDegree``,
  ``u8 fractionalBits``, ``u8 flags``, ``u8 reserved``, then the sections one after the
  other (a raw, not gzipped, stream of this kind is read too, as splat-transform does);
- version 4 (the default of PlayCanvas splat-transform): an uncompressed 32-byte header
  ``u32 magic``, ``u32 version``, ``u32 numPoints``, ``u8 shDegree``, ``u8 fractionalBits``,
  ``u8 flags``, ``u8 numStreams``, ``u32 tocOffset``, 12 reserved bytes; at ``tocOffset``
  a table of ``numStreams`` pairs ``u64 compressedSize, u64 uncompressedSize``, then each
  non-empty section as its own zstd frame (reading and writing it needs the
  ``zstandard`` package).

The sections, for all Gaussians, one attribute after the other:

- positions ``N x 3`` signed 24-bit fixed point with ``fractionalBits`` fraction bits;
- alphas ``N`` bytes, ``sigmoid(opacity) * 255`` (written at most 254: Niantic's library
  and splat-transform decode 255 as opacity 1, whose logit is infinite);
- colours ``N x 3`` bytes, ``dc * 0.15 * 255 + 127.5`` (the 0.15 instead of SH_C0 keeps
  base colours somewhat outside [0, 1] representable);
- scales ``N x 3`` bytes, ``(log scale + 10) * 16``;
- rotations: version 2 ``N x 3`` bytes, the x, y, z of the unit quaternion with w >= 0,
  ``q * 127.5 + 127.5`` (w is rebuilt as ``sqrt(1 - x^2 - y^2 - z^2)``); versions 3-4
  ``N`` little-endian u32 "smallest three": 2 bits for the index (in x, y, z, w order)
  of the largest component, then for each other component a sign bit and 9 bits of
  ``|q_i| / sqrt(1/2)``;
- SH ``N x (K-1) x 3`` bytes, coefficient-major with the colour channel fastest (our
  ``shN`` layout), ``x * 128 + 128`` rounded to buckets of 8 (degree 1, 5 bits) or 16
  (degrees 2-3, 4 bits), as Niantic's packer does.

Axes (see docs/formats.md, "Orientation"): by default (``axes="rdf"``) the file holds
the Gaussians in the same axes as a PLY of the same model, without conversion. That is
what splat-transform, gsply, spz-js and Spark read and write, and what Niantic's own
``ply_to_spz`` writes by default (its ``PackOptions.from`` is ``UNSPECIFIED``), so such
files round-trip unchanged. ``axes="rub"`` is the other convention, the right-up-back
axes Niantic's README documents, which its library writes when told ``from = RDF``: y and
z of positions, the y and z components of quaternions and the SH coefficients odd in y
or z change sign on writing and back on reading.

We write version 3 (2 or 4 on request) with 12 fractional bits, or fewer when the
positions would not fit 24 bits (``|x| >= 2048``); readers use the header's value. We
read versions 2, 3 and 4 (SH degree 4 files are cut to degree 3); the header's
antialiasing flag is neither written nor used. Quantisation errors, for values inside
each field's range:

- positions: ``2 ** -(fractionalBits + 1)`` (1.2e-4 at 12 bits);
- log scales: 1/32 (range [-10, 5.94]);
- opacity (``sigmoid``): 0.5 / 255 (1.5 / 255 above 254.5 / 255, which is stored as 254);
- dc coefficients: 0.5 / (0.15 * 255) = 0.0131 (range about +-3.33);
- quaternion components (unit, sign aligned): versions 3-4 about 7e-4 (largest component
  within 3e-3); version 2 0.0039 for x, y, z, while w, rebuilt from them, can be off by
  up to ~0.16 when it is near 0;
- SH coefficients: 4.5 / 128 = 0.035 for degree 1, 8.5 / 128 = 0.066 for degrees 2-3
  (range [-1, 1]; larger values are clipped).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.formats.quantise import alpha_bytes, unit_quats
from splatkit.splat.ply import SplatFileError
from splatkit.splat.sh import num_sh_bases, sh_degree_from_bases
from splatkit.utils.files import atomic_write

logger = logging.getLogger(__name__)

MAGIC = 0x5053474E  # "NGSP" little-endian
HEADER = struct.Struct("<IIIBBBB")
HEADER_V4 = struct.Struct("<IIIBBBBI12x")
TOC_ENTRY = struct.Struct("<QQ")
READ_VERSIONS = (2, 3, 4)
WRITE_VERSIONS = (2, 3, 4)
DEFAULT_VERSION = 3
AXES = ("rdf", "rub")
FRACTIONAL_BITS = 12
COLOR_SCALE = 0.15
FLAG_EXTENSIONS = 0x2  # flag 0x1 (trained with antialiasing) is ignored: splatkit renders classic 3DGS
SH1_BITS, SH_REST_BITS = 5, 4
ZSTD_LEVEL = 12
# Extension record type of Adobe's min/max SH quantisation, which changes how SH bytes decode.
_EXT_SH_QUANTIZATION = 0xADBE0001
_MAX_FILE_SH_DEGREE = 4
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# RDF (PLY, OpenCV) <-> RUB (Niantic's documented spz axes): a half turn about x. Signs
# for x, y, z of positions, for the x, y, z components of quaternions (xyzw), and for SH
# bases 1..15 (in splatkit.splat.sh's order, whose parity under y -> -y, z -> -z these are).
_FLIP_P = np.array([1.0, -1.0, -1.0])
_FLIP_Q = np.array([1.0, -1.0, -1.0])
_FLIP_SH = np.array([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=np.float64)

# Opacity bytes 0 and 255 decode half a step inside (0, 1) so their logits stay finite.
_ALPHA_EPS = 0.5 / 255
_SQRT1_2 = math.sqrt(0.5)


def _sh_dim(degree: int) -> int:
    return num_sh_bases(degree) - 1


def _section_sizes(n: int, sh_degree: int, version: int) -> list[tuple[str, int]]:
    """Names and byte sizes of the attribute sections, in file order."""
    rot = 4 if version >= 3 else 3
    return [
        ("positions", 9 * n),
        ("alphas", n),
        ("colors", 3 * n),
        ("scales", 3 * n),
        ("rotations", rot * n),
        ("sh", 3 * _sh_dim(sh_degree) * n),
    ]


def _body_size(n: int, sh_degree: int, version: int) -> int:
    return sum(size for _, size in _section_sizes(n, sh_degree, version))


def _check_axes(axes: str) -> None:
    if axes not in AXES:
        raise ValueError(f"spz axes must be 'rdf' (as PLY, no conversion) or 'rub' (Niantic's y-up), got {axes!r}")


def _zstd():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``std::round``: halves away from zero (NumPy rounds them to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(_round_half_away(x), 0, 255).astype(np.uint8)


def fractional_bits_for(means: np.ndarray) -> int:
    """12, or the most fraction bits with which every coordinate fits 24-bit fixed point."""
    if not np.isfinite(means).all():
        raise ValueError("positions must be finite to be stored in .spz (found NaN or infinity)")
    extent = float(np.abs(means).max()) if means.size else 0.0
    if extent * (1 << FRACTIONAL_BITS) < (1 << 23) - 1:
        return FRACTIONAL_BITS
    bits = math.floor(math.log2(((1 << 23) - 1) / extent)) if extent > 0 else FRACTIONAL_BITS
    if bits < 0:
        raise ValueError(
            f"positions reach {extent:.4g}; .spz stores coordinates as 24-bit fixed point, "
            f"which holds at most {(1 << 23) - 1}"
        )
    return bits


def _pack_rotations_v3(q: np.ndarray) -> np.ndarray:
    """Smallest-three ``u32 [N]`` of unit xyzw quaternions ``[N, 4]``."""
    N = q.shape[0]
    largest = np.abs(q).argmax(axis=1)
    negate = q[np.arange(N), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        neg = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511 * np.abs(q[:, i]) / _SQRT1_2 + 0.5), 511).astype(np.uint32)
        comp = np.where(keep, (comp << np.uint32(10)) | (neg << np.uint32(9)) | mag, comp)
    return comp.astype("<u4")


def _unpack_rotations_v3(comp: np.ndarray) -> np.ndarray:
    """Unit xyzw quaternions ``[N, 4]`` from smallest-three ``u32 [N]``."""
    comp = comp.astype(np.uint64)
    N = comp.shape[0]
    largest = (comp >> np.uint64(30)).astype(np.int64)
    q = np.zeros((N, 4))
    rest = comp.copy()
    for i in (3, 2, 1, 0):
        keep = largest != i
        mag = (rest & np.uint64(511)).astype(np.float64)
        neg = ((rest >> np.uint64(9)) & np.uint64(1)).astype(bool)
        val = _SQRT1_2 * mag / 511
        q[:, i] = np.where(keep, np.where(neg, -val, val), 0.0)
        rest = np.where(keep, rest >> np.uint64(10), rest)
    q[np.arange(N), largest] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(axis=1)))
    return q


def _pack_rotations_v2(q: np.ndarray) -> np.ndarray:
    """x, y, z bytes ``[N, 3]`` of unit xyzw quaternions, sign chosen so that w >= 0."""
    sign = np.where(q[:, 3:4] < 0, -127.5, 127.5)
    return _to_u8(q[:, :3] * sign + 127.5)


def _unpack_rotations_v2(b: np.ndarray) -> np.ndarray:
    xyz = b.astype(np.float64) / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1)))
    return np.concatenate([xyz, w[:, None]], axis=1)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = _round_half_away(x * 128) + 128
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode(params: dict[str, torch.Tensor], version: int = DEFAULT_VERSION, axes: str = "rdf") -> bytes:
    """The ``.spz`` bytes of stored (log/logit) parameters: gzipped for versions 2-3, the
    zstd container for version 4; ``axes`` as in the module docstring."""
    if version not in WRITE_VERSIONS:
        raise ValueError(f"spz version must be one of {', '.join(map(str, WRITE_VERSIONS))}, got {version!r}")
    _check_axes(axes)
    flip = axes == "rub"
    means = params["means"].detach().cpu().double().numpy()
    if flip:
        means = means * _FLIP_P
    N = means.shape[0]
    shN = params["shN"].detach().cpu().double().numpy()
    sh_degree = sh_degree_from_bases(shN.shape[1] + 1)
    bits = fractional_bits_for(means)

    fixed = _round_half_away(means * (1 << bits)).astype(np.int64).reshape(-1)
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=1).astype(np.uint8)
    alphas = alpha_bytes(params["opacities"].detach().cpu().double().numpy())
    colors = _to_u8(params["sh0"].detach().cpu().double().numpy().reshape(N, 3) * (COLOR_SCALE * 255) + 127.5)
    scales = _to_u8((params["scales"].detach().cpu().double().numpy() + 10.0) * 16.0)

    wxyz = unit_quats(params["quats"].detach().cpu().double().numpy())
    xyzw = np.concatenate([wxyz[:, 1:] * (_FLIP_Q if flip else 1.0), wxyz[:, :1]], axis=1)
    rotations = _pack_rotations_v3(xyzw) if version >= 3 else _pack_rotations_v2(xyzw)

    sh = shN * _FLIP_SH[: shN.shape[1], None] if flip else shN
    sh_bytes = np.empty(sh.shape, dtype=np.uint8)
    sh_bytes[:, :3] = _quantize_sh(sh[:, :3], SH1_BITS)
    sh_bytes[:, 3:] = _quantize_sh(sh[:, 3:], SH_REST_BITS)

    sections = [a.tobytes() for a in (positions, alphas, colors, scales, rotations, sh_bytes)]
    if version < 4:
        header = HEADER.pack(MAGIC, version, N, sh_degree, bits, 0, 0)
        return gzip.compress(header + b"".join(sections), compresslevel=6, mtime=0)
    zstd = _zstd()
    if zstd is None:
        raise ValueError("writing .spz version 4 needs the 'zstandard' package (pip install zstandard)")
    compressor = zstd.ZstdCompressor(level=ZSTD_LEVEL)
    streams = [(compressor.compress(b), len(b)) for b in sections if b]
    toc = b"".join(TOC_ENTRY.pack(len(c), size) for c, size in streams)
    header = HEADER_V4.pack(MAGIC, 4, N, sh_degree, bits, 0, len(streams), HEADER_V4.size)
    return header + toc + b"".join(c for c, _ in streams)


def write_spz_file(
    path: str | os.PathLike, params: dict[str, torch.Tensor], version: int = DEFAULT_VERSION, axes: str = "rdf"
) -> Path:
    """Write stored parameters as ``.spz`` (version 3 unless told 2 or 4) to ``path`` atomically."""
    data = encode(params, version, axes)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


class _Inflater:
    """Pulls decompressed bytes from a gzip stream on demand, so a header that claims
    billions of Gaussians costs no memory before the data is found missing."""

    def __init__(self, data: bytes, path) -> None:
        self.path = path
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = data

    def _fail(self, e: Exception) -> SplatFileError:
        return SplatFileError(f"{self.path}: corrupt .spz: the gzip stream cannot be decompressed ({e})")

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only where the stream ends (or is cut off) first."""
        out = []
        got = 0
        while got < n and not self._d.eof:
            try:
                chunk = self._d.decompress(self._input, min(n - got, 1 << 24))
            except zlib.error as e:
                raise self._fail(e) from e
            self._input = self._d.unconsumed_tail
            if not chunk and not self._input:
                break  # input exhausted and nothing pending: the stream was cut off
            out.append(chunk)
            got += len(chunk)
        return b"".join(out)

    def finish(self, limit: int) -> None:
        """Decompress what follows the data (up to ``limit`` bytes), so a cut-off stream is noticed."""
        extra = 0
        while not self._d.eof and extra <= limit:
            chunk = self.read(1 << 20)
            if not chunk:
                raise SplatFileError(
                    f"{self.path}: truncated .spz: the gzip stream ends without its end marker (the file was cut off)"
                )
            extra += len(chunk)


_MAX_RATIO = 100
"""Inflated / file size above which a count is not believed (real .spz files: about 4x)."""
_ALWAYS_INFLATE = 256 << 20
"""Bodies up to this size are read whatever the ratio (small, highly regular test files)."""


class _Raw:
    """The reader interface of :class:`_Inflater` over a stream that is not compressed."""

    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def read(self, n: int) -> bytes:
        out = self._data[self._at : self._at + n]
        self._at += len(out)
        return out

    def finish(self, limit: int) -> None:
        pass


def decode(data: bytes, path: str | os.PathLike = "<bytes>", axes: str = "rdf") -> dict[str, torch.Tensor]:
    """Stored (log/logit) parameters from ``.spz`` bytes (any container, see the module
    docstring); ``axes`` says how the file's axes map to ours; ``path`` names the file in errors."""
    _check_axes(axes)
    if data[:2] == _GZIP_MAGIC:
        return _decode_legacy(_Inflater(data, path), len(data), path, axes)
    if data[:4] == b"NGSP":
        version = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else None
        if version == 4:
            return _decode_v4(data, path, axes)
        if version in (2, 3):  # the legacy layout without its gzip wrapper, as splat-transform accepts
            return _decode_legacy(_Raw(data), len(data), path, axes)
        raise SplatFileError(
            f"{path}: uncompressed .spz (NGSP header) of version {version if version is not None else '?'} "
            "is not supported: splatkit reads version 4 (zstd streams) and versions 2 and 3 (gzipped or raw)"
        )
    if data[:4] == _ZSTD_MAGIC:
        raise SplatFileError(
            f"{path}: not an .spz file: it is a bare zstd stream; .spz version 4 starts with an "
            "uncompressed 'NGSP' header and versions 2-3 are gzip streams"
        )
    raise SplatFileError(
        f"{path}: not an .spz file: it starts neither with the gzip magic bytes 1f 8b (versions 2-3) nor "
        f"with 'NGSP' (version 4) (starts with {data[:4].hex(' ') or 'nothing: the file is empty'})"
    )


def _check_header(path, N: int, sh_degree: int, bits: int, version: int, file_size: int) -> int:
    """Validate header fields; the byte size of the attribute sections they declare."""
    if sh_degree > _MAX_FILE_SH_DEGREE:
        raise SplatFileError(f"{path}: .spz header declares SH degree {sh_degree}; the format allows 0..4")
    if bits > 23:
        raise SplatFileError(f"{path}: .spz header declares {bits} fractional bits; 24-bit coordinates allow 0..23")
    expected = _body_size(N, sh_degree, version)
    if expected > max(_ALWAYS_INFLATE, _MAX_RATIO * file_size):
        raise SplatFileError(
            f"{path}: the .spz header declares {N} Gaussians ({expected:,} bytes once inflated) in a "
            f"{file_size:,}-byte file: {expected / max(file_size, 1):.0f} times its size, more than real "
            f".spz data compresses ({_MAX_RATIO}x at most accepted); refusing to inflate it"
        )
    return expected


def _check_extensions(path, extension_bytes: bytes) -> None:
    if len(extension_bytes) >= 4 and struct.unpack("<I", extension_bytes[:4])[0] == _EXT_SH_QUANTIZATION:
        raise SplatFileError(
            f"{path}: .spz uses the Adobe SH min/max quantisation extension, which splatkit does not decode"
        )
    if extension_bytes:
        logger.warning("%s: skipping %d bytes of .spz extensions", path, len(extension_bytes))


def _decode_legacy(reader, file_size: int, path, axes: str) -> dict[str, torch.Tensor]:
    """Versions 2-3: header and sections in one stream (gzipped or raw)."""
    head = reader.read(HEADER.size)
    if len(head) < HEADER.size:
        raise SplatFileError(
            f"{path}: truncated .spz: the stream holds {len(head)} bytes, less than the {HEADER.size}-byte header"
        )
    magic, version, N, sh_degree, bits, flags, _ = HEADER.unpack(head)
    if magic != MAGIC:
        raise SplatFileError(
            f"{path}: wrong magic number 0x{magic:08x} in the .spz header (expected 0x{MAGIC:08x}, "
            "'NGSP'): not an .spz file"
        )
    if version == 4:
        raise SplatFileError(
            f"{path}: gzipped .spz declaring version 4: version-4 files are not gzipped (an 'NGSP' header "
            "and zstd streams); the file was compressed again or is damaged"
        )
    if version not in (2, 3):
        raise SplatFileError(
            f"{path}: .spz version {version} is not supported (splatkit reads versions "
            f"{', '.join(map(str, READ_VERSIONS))})"
        )
    expected = _check_header(path, N, sh_degree, bits, version, file_size)
    if flags & FLAG_EXTENSIONS:
        # Extension records sit between header and data; their total size is what the
        # stream holds beyond the attributes.
        rest = reader.read(expected + (1 << 24))
        if len(rest) < expected:
            raise _short(path, N, sh_degree, version, expected, len(rest))
        extension_bytes, body = rest[: len(rest) - expected], rest[len(rest) - expected :]
        _check_extensions(path, extension_bytes)
    else:
        body = reader.read(expected)
        if len(body) < expected:
            raise _short(path, N, sh_degree, version, expected, len(body))
    reader.finish(limit=1 << 24)
    return _unpack(body, N, sh_degree, version, bits, path, axes)


def _decode_v4(data: bytes, path, axes: str) -> dict[str, torch.Tensor]:
    """Version 4: uncompressed header, table of contents, one zstd frame per section."""
    if len(data) < HEADER_V4.size:
        raise SplatFileError(
            f"{path}: truncated .spz: {len(data)} bytes, less than the {HEADER_V4.size}-byte version-4 header"
        )
    _, version, N, sh_degree, bits, flags, num_streams, toc_at = HEADER_V4.unpack_from(data)
    _check_header(path, N, sh_degree, bits, version, len(data))
    sections = [(name, size) for name, size in _section_sizes(N, sh_degree, version) if size]
    if num_streams != len(sections):
        raise SplatFileError(
            f"{path}: .spz header declares {num_streams} zstd streams; {N} Gaussians of SH degree {sh_degree} "
            f"take {len(sections)}"
        )
    toc_end = toc_at + TOC_ENTRY.size * num_streams
    if toc_at < HEADER_V4.size or toc_end > len(data):
        raise SplatFileError(
            f"{path}: truncated .spz: its table of streams (bytes {toc_at}..{toc_end}) lies outside the "
            f"{len(data)}-byte file"
        )
    if flags & FLAG_EXTENSIONS:
        _check_extensions(path, data[HEADER_V4.size : toc_at])
    zstd = _zstd()
    if zstd is None:
        raise SplatFileError(
            f"{path}: .spz version 4 stores zstd streams; reading it needs the 'zstandard' package "
            "(pip install zstandard)"
        )
    inflater = zstd.ZstdDecompressor()
    parts, at = [], toc_end
    for i, (name, size) in enumerate(sections):
        csize, usize = TOC_ENTRY.unpack_from(data, toc_at + TOC_ENTRY.size * i)
        if usize != size:
            raise SplatFileError(
                f"{path}: .spz stream '{name}' declares {usize} bytes; {N} Gaussians of SH degree {sh_degree} "
                f"take {size}"
            )
        if at + csize > len(data):
            raise SplatFileError(
                f"{path}: truncated .spz: stream '{name}' ends at byte {at + csize}, past the end of the "
                f"{len(data)}-byte file"
            )
        frame = data[at : at + csize]
        try:
            declared = zstd.frame_content_size(frame)
            if declared > size:  # refused before anything is allocated for it
                raise SplatFileError(
                    f"{path}: .spz stream '{name}' inflates to {declared} bytes; the table says {size}"
                )
            chunk = inflater.decompress(frame, max_output_size=size)
        except zstd.ZstdError as e:
            raise SplatFileError(f"{path}: corrupt .spz: stream '{name}' cannot be decompressed ({e})") from e
        if len(chunk) != size:
            raise SplatFileError(f"{path}: corrupt .spz: stream '{name}' inflates to {len(chunk)} bytes, not {size}")
        parts.append(chunk)
        at += csize
    return _unpack(b"".join(parts), N, sh_degree, version, bits, path, axes)


def _short(path, N, sh_degree, version, expected, got) -> SplatFileError:
    return SplatFileError(
        f"{path}: truncated .spz or wrong count: the header declares {N} Gaussians (SH degree {sh_degree}, version "
        f"{version}), which take {expected} bytes after the header, but the stream holds only {got}"
    )


def _unpack(body: bytes, N: int, sh_degree: int, version: int, bits: int, path, axes: str) -> dict[str, torch.Tensor]:
    buf = np.frombuffer(body, dtype=np.uint8)
    sh_dim = _sh_dim(sh_degree)
    flip = axes == "rub"
    parts, offset = {}, 0
    for name, size in _section_sizes(N, sh_degree, version):
        parts[name] = buf[offset : offset + size].reshape(N, size // N if N else 0)
        offset += size

    p = parts["positions"].reshape(N, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) / (1 << bits) * (_FLIP_P if flip else 1.0)

    alpha = np.clip(parts["alphas"][:, 0].astype(np.float64) / 255, _ALPHA_EPS, 1 - _ALPHA_EPS)
    dc = (parts["colors"].astype(np.float64) / 255 - 0.5) / COLOR_SCALE
    log_scales = parts["scales"].astype(np.float64) / 16 - 10
    if version >= 3:
        xyzw = _unpack_rotations_v3(parts["rotations"].copy().view("<u4")[:, 0])
    else:
        xyzw = _unpack_rotations_v2(parts["rotations"])
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3] * (_FLIP_Q if flip else 1.0)], axis=1)

    sh = (parts["sh"].reshape(N, sh_dim, 3).astype(np.float64) - 128) / 128
    if sh_degree > 3:
        logger.warning("%s: .spz has SH degree %d; splatkit keeps degrees 0..3 and drops band 4", path, sh_degree)
        sh = sh[:, :15]
    if flip:
        sh = sh * _FLIP_SH[: sh.shape[1], None]
    return {
        "means": torch.from_numpy(means).float(),
        "scales": torch.from_numpy(log_scales).float(),
        "quats": torch.from_numpy(wxyz).float(),
        "opacities": torch.from_numpy(np.log(alpha / (1 - alpha))).float(),
        "sh0": torch.from_numpy(dc).float().reshape(N, 1, 3),
        "shN": torch.from_numpy(np.ascontiguousarray(sh)).float(),
    }


def read_spz_file(path: str | os.PathLike, axes: str = "rdf") -> dict[str, torch.Tensor]:
    """Read an ``.spz`` file (version 2, 3 or 4) into stored (log/logit) parameters."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".spz file not found: {path}")
    return decode(path.read_bytes(), path, axes)
