"""PlayCanvas SOG (``.sog``): a zip of ``meta.json`` and lossless WebP images (read only).

Version 2, as PlayCanvas documents it and splat-transform's ``read-sog.ts`` decodes it.
``meta.json`` holds ``version`` (2), ``count`` and, per attribute, the image files and
codebooks; image pixel ``i`` (row-major) belongs to Gaussian ``i``:

- ``means``: ``means_l.webp`` and ``means_u.webp`` hold the low and high bytes of a
  16-bit value per axis (R, G, B) that lerps between ``mins`` and ``maxs`` of
  ``sign(x) * log(|x| + 1)``; the position is the inverse of that map;
- ``quats``: ``quats.webp``: the three smaller components of the unit quaternion (in
  w, x, y, z order, skipping the largest), each ``(q * sqrt(2) + 1) / 2`` in a byte,
  and alpha ``252 + index of the largest`` (which is rebuilt, positive);
- ``scales``: ``scales.webp``: per axis a byte indexing the 256-entry ``codebook`` of log
  scales;
- ``sh0``: ``sh0.webp``: per channel a byte indexing the ``codebook`` of dc coefficients,
  and alpha ``sigmoid(opacity)`` in a byte;
- ``shN`` (optional): ``shN_labels.webp`` gives each Gaussian a 16-bit palette entry
  (R low, G high byte); ``shN_centroids.webp`` (width ``64 * coefficients``) holds palette
  entry ``e``'s coefficient ``j`` at pixel ``((e % 64) * coefficients + j, e // 64)``, its
  R, G, B bytes indexing the ``codebook``.

Coordinates are as in PLY (splat-transform gives SOG the PLY's orientation). splatkit
reads SOG and does not write it: a writer needs k-means palettes for the SH, left for later.
Quantisation is the writer's; read values are exactly what the file encodes.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.ply import SplatFileError
from splatkit.splat.sh import f_rest_to_shN

_SH_COEFFS = {0: 0, 1: 3, 2: 8, 3: 15}
_MAX_MEMBER_BYTES = 1 << 30
_ALPHA_EPS = 0.5 / 255


def _decode(data: bytes, path) -> dict[str, torch.Tensor]:
    try:
        bundle = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise SplatFileError(f"{path}: not a .sog file: not a zip bundle ({e})") from e
    names = set(bundle.namelist())
    if "meta.json" not in names:
        raise SplatFileError(f"{path}: .sog bundle has no meta.json")
    for info in bundle.infolist():
        if info.file_size > _MAX_MEMBER_BYTES:
            raise SplatFileError(f"{path}: .sog member {info.filename} inflates to {info.file_size:,} bytes; refused")
    try:
        raw_meta = bundle.read("meta.json")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError) as e:
        raise SplatFileError(f"{path}: .sog member meta.json cannot be read: the bundle is damaged ({e})") from e
    try:
        meta = json.loads(raw_meta)
    except (ValueError, UnicodeDecodeError) as e:
        raise SplatFileError(f"{path}: .sog meta.json is not JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("version") != 2:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise SplatFileError(
            f"{path}: SOG meta version {version!r} is not supported (splatkit reads version 2; "
            "version 1 has no 'version' field)"
        )
    count = meta.get("count")
    if not isinstance(count, int) or count <= 0:
        raise SplatFileError(f"{path}: SOG meta.json 'count' must be a positive whole number, got {count!r}")

    def image(name: str) -> np.ndarray:
        """RGBA bytes ``[count, 4]`` of the first ``count`` pixels (row-major) of WebP ``name``."""
        from PIL import Image

        if name not in names:
            raise SplatFileError(f"{path}: .sog bundle lacks {name}, which meta.json names")
        try:
            img = Image.open(io.BytesIO(bundle.read(name)))
            w, h = img.size
            if w * h > 4 * count + (1 << 20):  # a SOG image holds one pixel per Gaussian (or palette entry)
                raise SplatFileError(f"{path}: {name} is {w}x{h} pixels for {count} Gaussians; refused")
            rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8).reshape(-1, 4)
        except SplatFileError:
            raise
        except Exception as e:  # Pillow raises several types for damaged images
            raise SplatFileError(f"{path}: {name} cannot be decoded as WebP ({e})") from e
        return rgba, w, h

    def section(key: str) -> dict:
        value = meta.get(key)
        if not isinstance(value, dict) or not isinstance(value.get("files"), list) or not value["files"]:
            raise SplatFileError(f"{path}: SOG meta.json lacks '{key}' with its 'files'")
        return value

    def pixels(key: str, index: int = 0) -> np.ndarray:
        rgba, w, h = image(section(key)["files"][index])
        if rgba.shape[0] < count:
            raise SplatFileError(f"{path}: SOG {key} image has {w}x{h} pixels, fewer than its {count} Gaussians")
        return rgba[:count]

    def codebook(key: str) -> np.ndarray:
        book = np.asarray(section(key).get("codebook", []), dtype=np.float64)
        if book.shape != (256,) or not np.isfinite(book).all():
            raise SplatFileError(f"{path}: SOG {key} codebook must be 256 finite numbers")
        return book

    means_meta = section("means")
    lo_hi = np.asarray([means_meta.get("mins"), means_meta.get("maxs")], dtype=np.float64)
    if lo_hi.shape != (2, 3) or not np.isfinite(lo_hi).all():
        raise SplatFileError(f"{path}: SOG means 'mins' and 'maxs' must be three finite numbers each")
    if len(means_meta["files"]) < 2:
        raise SplatFileError(f"{path}: SOG means need two images (low and high bytes)")
    q16 = pixels("means", 0)[:, :3].astype(np.float64) + 256.0 * pixels("means", 1)[:, :3]
    span = np.where(lo_hi[1] - lo_hi[0] == 0, 1.0, lo_hi[1] - lo_hi[0])
    v = lo_hi[0] + span * (q16 / 65535)
    means = np.sign(v) * (np.exp(np.abs(v)) - 1)

    q = pixels("quats")
    tag = q[:, 3].astype(np.int64)
    bad = (tag < 252).sum()
    if bad:
        raise SplatFileError(f"{path}: {int(bad)} of {count} SOG rotations have no valid largest-component tag")
    largest = tag - 252
    small = (q[:, :3].astype(np.float64) / 255 * 2 - 1) / math.sqrt(2)
    quats = np.zeros((count, 4))
    for k in range(4):
        sel = largest == k
        others = [i for i in range(4) if i != k]
        quats[np.ix_(sel, others)] = small[sel]
    quats[np.arange(count), largest] = np.sqrt(np.maximum(0.0, 1.0 - (quats * quats).sum(axis=1)))

    log_scales = codebook("scales")[pixels("scales")[:, :3]]
    c0 = pixels("sh0")
    dc = codebook("sh0")[c0[:, :3]]
    alpha = np.clip(c0[:, 3].astype(np.float64) / 255, _ALPHA_EPS, 1 - _ALPHA_EPS)

    f_rest = np.zeros((count, 0))
    if "shN" in meta:
        sh_meta = section("shN")
        coeffs = _SH_COEFFS.get(sh_meta.get("bands"))
        palette = sh_meta.get("count")
        if coeffs is None or not isinstance(palette, int) or palette <= 0 or len(sh_meta["files"]) < 2:
            raise SplatFileError(f"{path}: SOG shN needs 'bands' in 0..3, a positive 'count' and two images")
        if coeffs:
            book = codebook("shN")
            centroids, cw, ch = image(sh_meta["files"][0])
            if cw != 64 * coeffs or ch * 64 < palette:
                raise SplatFileError(
                    f"{path}: SOG shN centroids image is {cw}x{ch}; {palette} entries of {coeffs} coefficients "
                    f"need width {64 * coeffs} and {math.ceil(palette / 64)} rows"
                )
            labels_rgba = pixels("shN", 1)
            labels = labels_rgba[:, 0].astype(np.int64) | (labels_rgba[:, 1].astype(np.int64) << 8)
            if (labels >= palette).any():
                raise SplatFileError(f"{path}: SOG shN labels point past its {palette}-entry palette")
            j = np.arange(coeffs)
            px = ((labels[:, None] % 64) * coeffs + j) + (labels[:, None] // 64) * cw  # [count, coeffs]
            rgb = book[centroids[px][..., :3]]  # [count, coeffs, 3]
            f_rest = rgb.transpose(0, 2, 1).reshape(count, 3 * coeffs)  # channel-major, as PLY's f_rest
    return {
        "means": torch.from_numpy(means).float(),
        "scales": torch.from_numpy(log_scales).float(),
        "quats": torch.from_numpy(quats).float(),
        "opacities": torch.from_numpy(np.log(alpha / (1 - alpha))).float(),
        "sh0": torch.from_numpy(dc).float().reshape(count, 1, 3),
        "shN": f_rest_to_shN(torch.from_numpy(f_rest).float()),
    }


def read_sog_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.sog`` bundle (SOG version 2) into stored (log/logit) parameters."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".sog file not found: {path}")
    return _decode(path.read_bytes(), path)


def write_sog_file(path: str | os.PathLike, params: dict[str, torch.Tensor]) -> Path:
    """Not supported: see the module docstring."""
    raise ValueError(
        f"cannot write {path}: splatkit reads SOG but does not write it; write a .ply and convert it "
        "with splat-transform or gaussforge"
    )
