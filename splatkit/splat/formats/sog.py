"""PlayCanvas SOG (``.sog``): a zip of ``meta.json`` and lossless WebP images.

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

Coordinates are as in PLY (splat-transform gives SOG the PLY's orientation).
Quantisation is the writer's; read values are exactly what the file encodes.

The writer follows the same layout: Gaussians in Morton order of their centres (as
splat-transform stores them, which keeps neighbouring pixels alike and the WebP images
small), images ``W x H`` with ``W = 4 * ceil(sqrt(N) / 4)``, 256-entry codebooks fitted by
one-dimensional k-means with a quarter of the entries spread evenly over the range (log
scales over all three axes, dc over all three channels, SH over all coefficients of the
palette), and an SH palette of ``sh_palette`` entries (default 4,096; splat-transform
uses up to 65,536, which costs minutes on a CPU) fitted by k-means over the per-Gaussian
coefficient vectors. The images are
written losslessly with their transparent pixels' colours kept (libwebp's ``exact``
option: opacity shares ``sh0.webp`` with the colour indices). Opacity bytes stop at 254,
as in the other quantised writers (255 decodes to logit +inf in splat-transform).
Errors against the model: position about ``span / 65535`` of the log-mapped range per
axis; log scale and dc half a codebook gap (codebooks follow the values' density; the
largest gap is at most ``range / 63``);
rotation: the three stored components ``1 / (255 sqrt 2)``, the rebuilt largest about
three times that; opacity 0.5 / 255; SH the palette's k-means
residual plus half a codebook gap.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.formats.compressed_ply import write_order  # Morton order of the centres, as there
from splatkit.splat.formats.quantise import alpha_bytes, arrays, largest_positive
from splatkit.splat.ply import SplatFileError
from splatkit.splat.sh import f_rest_to_shN
from splatkit.utils.files import atomic_write

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


DEFAULT_PALETTE = 4096
"""Default SH palette entries (at most one per Gaussian); the format allows 65,536."""

_KMEANS_SAMPLE = 65536
"""The palette is fitted on at most this many Gaussians (drawn with a fixed seed), then
every Gaussian takes its nearest entry."""


def codebook_1d(
    values: np.ndarray, size: int = 256, spread: int = 64, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``-entry codebook for ``values`` and each value's index into it.

    ``spread`` entries are fixed, evenly spaced over ``[min, max]``, so no value is more than
    ``(max - min) / (2 * (spread - 1))`` from an entry (the rare large values are the ones a
    viewer shows most: the biggest splats, the brightest colours); the other entries follow
    the values' density by one-dimensional k-means (Lloyd's iterations on the sorted values,
    started from their quantiles). Returns the sorted codebook (float64 ``[size]``) and the
    index (uint8) of each value's nearest entry. With no more distinct values than entries,
    the codebook is those values (exact).
    """
    flat = np.sort(values.astype(np.float64).ravel())
    if flat.size == 0:
        return np.zeros(size), np.zeros(values.shape, np.uint8)
    distinct = np.unique(flat)
    if len(distinct) <= size:  # every value gets its own entry: exact
        centres = np.concatenate([distinct, np.full(size - len(distinct), distinct[-1])])
        return centres, nearest_1d(centres, values)
    free = size - spread
    fixed = np.linspace(flat[0], flat[-1], spread)
    centres = np.concatenate([np.quantile(flat, (np.arange(free) + 0.5) / free), fixed])
    moving = np.concatenate([np.ones(free, bool), np.zeros(spread, bool)])
    prefix = np.concatenate([[0.0], np.cumsum(flat)])
    for _ in range(iterations):
        order = np.argsort(centres, kind="stable")
        centres, moving = centres[order], moving[order]
        edges = np.searchsorted(flat, (centres[1:] + centres[:-1]) / 2)
        start = np.concatenate([[0], edges])
        stop = np.concatenate([edges, [flat.size]])
        n = stop - start
        new = np.where(moving & (n > 0), (prefix[stop] - prefix[start]) / np.maximum(n, 1), centres)
        if np.array_equal(new, centres):
            break
        centres = new
    centres = np.sort(centres)
    return centres, nearest_1d(centres, values)


def nearest_1d(sorted_book: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of ``sorted_book`` for each of ``values`` (uint8)."""
    v = values.astype(np.float64)
    hi = np.clip(np.searchsorted(sorted_book, v), 1, len(sorted_book) - 1)
    lo = hi - 1
    pick = np.where(np.abs(v - sorted_book[lo]) <= np.abs(sorted_book[hi] - v), lo, hi)
    return pick.astype(np.uint8)


def kmeans(
    points: torch.Tensor, k: int, iterations: int = 10, seed: int = 0, sample: int = _KMEANS_SAMPLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres ``[k, D]`` and labels ``[N]`` of ``points`` ``[N, D]`` by Lloyd's k-means.

    Fits on at most ``max(sample, k)`` points drawn with ``seed``, starting from ``k`` of
    them; a centre that loses all its points keeps its place; then labels every point with
    its nearest centre. Deterministic for a given input and seed.
    """
    n = points.shape[0]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=gen)
    x = points[pick[: max(sample, k)]].double()
    centres = x[:k].clone()
    labels = _assign(x, centres)
    for _ in range(iterations):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        new_labels = _assign(x, moved)
        centres = moved
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centres, _assign(points, centres)


def _assign(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``centres`` for each row of ``x`` (float32 distances, in chunks
    of rows that keep the distance block near 128 MB)."""
    c = centres.float()
    c2 = (c * c).sum(dim=1)
    chunk = max(64, (1 << 25) // max(1, c.shape[0]))
    out = torch.empty(x.shape[0], dtype=torch.long)
    for i in range(0, x.shape[0], chunk):
        part = x[i : i + chunk].float()
        out[i : i + chunk] = torch.addmm(c2[None, :], part, c.T, alpha=-2.0).argmin(dim=1)
    return out


def _webp(rgba: np.ndarray) -> bytes:
    """Lossless WebP bytes of an ``[H, W, 4]`` uint8 image, transparent pixels' colours kept."""
    from PIL import Image

    _check_exact_webp()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buf, format="WEBP", lossless=True, exact=True, quality=100)
    return buf.getvalue()


@functools.cache
def _check_exact_webp() -> None:
    """Once per process: Pillow before 9.4 (or libwebp before 0.5) ignores ``exact`` and
    drops the colours of transparent pixels; refuse rather than write a corrupt file."""
    import PIL
    from PIL import Image

    probe = np.arange(64, dtype=np.uint8).reshape(4, 4, 4)
    probe[..., 3] = 0
    buf = io.BytesIO()
    Image.fromarray(probe, "RGBA").save(buf, format="WEBP", lossless=True, exact=True, quality=100)
    if not np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGBA")), probe):
        raise RuntimeError(
            f"cannot write .sog: Pillow {PIL.__version__}'s WebP encoder does not keep images exactly "
            "(lossless WebP with exact=True needs Pillow >= 9.4 built with libwebp >= 0.5)"
        )


def encode(params: dict[str, torch.Tensor], sh_palette: int | None = None) -> bytes:
    """The ``.sog`` bytes of stored (log/logit) parameters (see the module docstring)."""
    a = arrays(params, write_order(params))
    means, f_rest = a["means"], a["f_rest"]
    count = means.shape[0]
    width = 4 * math.ceil(math.sqrt(count) / 4)
    height = 4 * math.ceil(count / width / 4)

    def image(channels: np.ndarray, alpha: np.ndarray | None = None) -> bytes:
        rgba = np.zeros((width * height, 4), np.uint8)
        rgba[:count, : channels.shape[1]] = channels
        rgba[:, 3] = 255
        if alpha is not None:
            rgba[:count, 3] = alpha
        return _webp(rgba.reshape(height, width, 4))

    files: dict[str, bytes] = {}
    logged = np.sign(means) * np.log1p(np.abs(means))
    mins, maxs = logged.min(axis=0), logged.max(axis=0)
    span = np.where(maxs - mins > 0, maxs - mins, 1.0)
    q16 = np.clip(np.floor((logged - mins) / span * 65535 + 0.5), 0, 65535).astype(np.uint32)
    files["means_l.webp"] = image((q16 & 0xFF).astype(np.uint8))
    files["means_u.webp"] = image((q16 >> 8).astype(np.uint8))

    unit, largest = largest_positive(a["quats"])
    others = np.array([[i for i in range(4) if i != k] for k in range(4)])[largest]  # [N, 3]
    small = np.take_along_axis(unit, others, axis=1)
    small_bytes = np.clip(np.floor((small * math.sqrt(2) + 1) / 2 * 255 + 0.5), 0, 255).astype(np.uint8)
    files["quats.webp"] = image(small_bytes, (252 + largest).astype(np.uint8))

    scale_book, scale_idx = codebook_1d(a["scales"])
    files["scales.webp"] = image(scale_idx)
    dc_book, dc_idx = codebook_1d(a["sh0"])
    files["sh0.webp"] = image(dc_idx, alpha_bytes(a["opacities"]))

    meta: dict = {
        "version": 2,
        "count": count,
        "antialias": False,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_book.tolist(), "files": ["sh0.webp"]},
    }
    coeffs = f_rest.shape[1] // 3
    if coeffs:
        bands = {c: b for b, c in _SH_COEFFS.items()}[coeffs]
        palette = DEFAULT_PALETTE if sh_palette is None else int(sh_palette)
        if not 1 <= palette <= 65536:
            raise ValueError(f"sh_palette must be between 1 and 65536 entries, got {sh_palette}")
        palette = min(palette, count)
        centres, labels = kmeans(torch.from_numpy(f_rest), palette)
        sh_book, sh_idx = codebook_1d(centres.numpy())  # [palette, 3 * coeffs] indices, channel-major
        rows = math.ceil(palette / 64)
        cent = np.zeros((rows * 64, coeffs, 4), np.uint8)
        cent[:palette, :, :3] = sh_idx.reshape(palette, 3, coeffs).transpose(0, 2, 1)
        cent[..., 3] = 255
        files["shN_centroids.webp"] = _webp(cent.reshape(rows, 64 * coeffs, 4))
        lab = labels.numpy().astype(np.uint32)
        files["shN_labels.webp"] = image(np.stack([lab & 0xFF, lab >> 8], axis=1).astype(np.uint8))
        meta["shN"] = {
            "count": palette,
            "bands": bands,
            "codebook": sh_book.tolist(),
            "files": ["shN_centroids.webp", "shN_labels.webp"],
        }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as bundle:
        bundle.writestr("meta.json", json.dumps(meta), compress_type=zipfile.ZIP_DEFLATED)
        for name, data in files.items():  # WebP is compressed already
            bundle.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def write_sog_file(path: str | os.PathLike, params: dict[str, torch.Tensor], sh_palette: int | None = None) -> Path:
    """Write stored parameters as a ``.sog`` bundle (SOG version 2) to ``path`` atomically.

    ``sh_palette`` is the number of SH palette entries (1 to 65536; default
    :data:`DEFAULT_PALETTE`, at most one per Gaussian).
    """
    if params["means"].shape[0] == 0:
        raise ValueError(f"cannot write {path}: a .sog file needs at least one Gaussian")
    data = encode(params, sh_palette)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
