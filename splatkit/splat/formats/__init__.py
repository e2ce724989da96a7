"""Splat file formats: one registry to read, write, describe and convert every one.

=================== ==================== =====================================================
name                suffix               format
=================== ==================== =====================================================
``ply``             ``.ply``             INRIA 3DGS PLY, lossless (:mod:`splatkit.splat.ply`)
``splat``           ``.splat``           antimatter15, 32 bytes/Gaussian, no SH (:mod:`.splat`)
``spz``             ``.spz``             Niantic, gzipped and quantised, SH kept (:mod:`.spz`)
``compressed_ply``  ``.compressed.ply``  PlayCanvas/SuperSplat, 16 bytes/Gaussian + SH bytes
                                         (:mod:`.compressed_ply`)
``ksplat``          ``.ksplat``          GaussianSplats3D, float32 geometry, SH to degree 2
                                         (:mod:`.ksplat`)
``sog``             ``.sog``             PlayCanvas SOG v2, codebooks and lossless WebP images in a zip
                                         (:mod:`.sog`)
=================== ==================== =====================================================

Orientation: every file holds the Gaussians in the frame they were given (the training
frame of a splatkit run, unless a ``transform`` moved them, see :func:`convert` and
:mod:`splatkit.splat.transform`), with no axis conversion, ``.spz`` included, as
splat-transform, gsply, spz-js, Spark and Niantic's ``ply_to_spz`` do by default; so one
model shows the same way up in one viewer whatever format it went through
(docs/formats.md, "Orientation"). ``spz_axes="rub"`` reads and writes ``.spz`` in the
right-up-back axes of Niantic's README instead. Each format module documents its
quantisation errors; :func:`dropped_information` says what a format cannot keep of a
given model. Every write is atomic, and every
malformed file raises :class:`~splatkit.splat.ply.SplatFileError` naming the file and
what is wrong with it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.conventions import SURFEL_LOG_THICKNESS, opacity_activation, scale_activation
from splatkit.splat.formats import compressed_ply as _compressed_ply
from splatkit.splat.formats import ksplat as _ksplat
from splatkit.splat.formats import sog as _sog
from splatkit.splat.formats import splat as _splat
from splatkit.splat.formats import spz as _spz
from splatkit.splat.formats.checkpoint import CHECKPOINT_SUFFIX, load_checkpoint
from splatkit.splat.model import SplatModel
from splatkit.splat.ply import SplatFileError, finite_params, read_ply, write_ply
from splatkit.splat.sh import SH_C0
from splatkit.splat.transform import transform_model


@dataclass(frozen=True)
class SplatFormat:
    """A splat file format: its name, file suffix, reader and writer.

    ``read(path)`` returns stored parameters (see :mod:`splatkit.splat.conventions`);
    ``write(path, params)`` writes them atomically. ``max_sh_degree`` is the highest SH
    degree the format keeps. ``write_order(params)``, where given, is the permutation
    ``[N]`` in which the writer stores the Gaussians (``None``: as given), so a file read
    back can be compared Gaussian by Gaussian. ``writable`` is False for formats splatkit
    only reads (``write`` then raises a ValueError saying so).
    """

    name: str
    suffix: str
    description: str
    read: Callable[[Path], dict[str, torch.Tensor]]
    write: Callable[[Path, dict[str, torch.Tensor]], Path]
    max_sh_degree: int
    write_order: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
    writable: bool = True


FORMATS: dict[str, SplatFormat] = {
    f.name: f
    for f in (
        SplatFormat("ply", ".ply", "INRIA 3DGS PLY (float32, lossless)", read_ply, write_ply, 3),
        SplatFormat(
            "splat",
            ".splat",
            "antimatter15 .splat (32 bytes per Gaussian, no SH)",
            _splat.read_splat_file,
            _splat.write_splat_file,
            0,
            _splat.write_order,
        ),
        SplatFormat(
            "spz", ".spz", "Niantic .spz (quantised; versions 2-4)", _spz.read_spz_file, _spz.write_spz_file, 3
        ),
        SplatFormat(
            "compressed_ply",
            ".compressed.ply",
            "PlayCanvas/SuperSplat compressed PLY",
            _compressed_ply.read_compressed_ply_file,
            _compressed_ply.write_compressed_ply_file,
            3,
            _compressed_ply.write_order,
        ),
        SplatFormat(
            "ksplat",
            ".ksplat",
            "GaussianSplats3D .ksplat (level 0 written; levels 0-2 read; SH up to degree 2)",
            _ksplat.read_ksplat_file,
            _ksplat.write_ksplat_file,
            _ksplat.MAX_SH_DEGREE,
        ),
        SplatFormat(
            "sog",
            ".sog",
            "PlayCanvas SOG bundle (version 2; codebooks, an SH palette, lossless WebP)",
            _sog.read_sog_file,
            _sog.write_sog_file,
            3,
            _sog.write_order,
        ),
    )
}


def register_format(fmt: SplatFormat) -> SplatFormat:
    """Add ``fmt`` to :data:`FORMATS`, so ``read_splat``, ``write_splat``, ``convert``,
    ``splatkit export`` and ``SplatExporter(splat_formats=...)`` know it by name and suffix.
    A name or suffix already taken is a ValueError (formats are not replaced silently)."""
    if not isinstance(fmt, SplatFormat):
        raise TypeError(f"register_format takes a SplatFormat, got {type(fmt).__name__}")
    if fmt.name in FORMATS:
        raise ValueError(f"splat format {fmt.name!r} is already registered")
    taken = [f.name for f in FORMATS.values() if f.suffix.lower() == fmt.suffix.lower()]
    if taken or fmt.suffix.lower() == CHECKPOINT_SUFFIX:
        raise ValueError(f"suffix {fmt.suffix!r} is already used by {taken[0] if taken else 'checkpoints'!r}")
    if not fmt.suffix.startswith("."):
        raise ValueError(f"a format suffix starts with '.', got {fmt.suffix!r}")
    FORMATS[fmt.name] = fmt
    return fmt


def _supported() -> str:
    return ", ".join(f"{f.name!r} ({f.suffix})" for f in FORMATS.values())


def get_format(name: str) -> SplatFormat:
    """The format called ``name``; ``ValueError`` listing the supported ones otherwise."""
    if not isinstance(name, str) or name not in FORMATS:
        raise ValueError(f"unknown splat format {name!r}; supported: {_supported()}")
    return FORMATS[name]


def format_from_path(path: str | os.PathLike) -> str:
    """Format name from a file name's suffix (``.compressed.ply`` is checked before ``.ply``)."""
    name = Path(path).name.lower()
    for fmt in sorted(FORMATS.values(), key=lambda f: -len(f.suffix)):
        if name.endswith(fmt.suffix):
            return fmt.name
    raise ValueError(
        f"{path}: cannot tell the splat format from the file name; use one of the suffixes "
        f"{', '.join(f.suffix for f in FORMATS.values())} or name the format"
    )


def model_from_checkpoint(ckpt: dict, path: Path) -> SplatModel:
    """The Gaussians of a loaded checkpoint (``path`` names it in errors)."""
    try:
        params = ckpt["training_state"]["params"]
        wrong = [k for k, v in params.items() if not isinstance(v, torch.Tensor) or v.dtype != torch.float32]
        if wrong:
            raise ValueError(f"{', '.join(map(str, wrong))} not float32 tensors")
        return _finite(SplatModel(**params), path)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SplatFileError(f"{path}: checkpoint holds no valid Gaussian parameters ({e})") from e


def _finite(model: SplatModel, path: Path) -> SplatModel:
    """``model``, or a :class:`SplatFileError` naming the first parameter that holds NaN or Inf."""
    for name, value in model.params().items():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise SplatFileError(f"{path}: {bad} NaN or infinite values in {name!r}; the file is damaged")
    return model


def _model_from_checkpoint(path: Path) -> SplatModel:
    return model_from_checkpoint(load_checkpoint(path), path)


def _detect(path: Path) -> str:
    """The format of an existing file: by suffix, except that a ``.ply`` is checked for the compressed layout."""
    fmt = format_from_path(path)
    if fmt == "ply" and path.is_file() and _compressed_ply.is_compressed_ply(path):
        return "compressed_ply"
    return fmt


def _check_spz_options(spz_axes: str, spz_version: int = _spz.DEFAULT_VERSION) -> None:
    if spz_axes not in _spz.AXES:
        raise ValueError(
            f"spz_axes must be 'rdf' (the file holds the model's own axes, as PLY does) or 'rub' "
            f"(Niantic's right-up-back axes), got {spz_axes!r}"
        )
    if spz_version not in _spz.WRITE_VERSIONS:
        raise ValueError(f"spz_version must be one of {', '.join(map(str, _spz.WRITE_VERSIONS))}, got {spz_version!r}")


def read_splat(path: str | os.PathLike, *, spz_axes: str = "rdf") -> SplatModel:
    """Read any supported splat file (or a splatkit ``.ckpt``) into a :class:`SplatModel`.

    The format comes from the suffix; a file named ``.ply`` that holds the compressed
    layout is read as compressed PLY. ``spz_axes`` is the axes convention of an ``.spz``
    (module docstring). Infinite opacities are clamped with a warning; other NaN or
    infinite values raise :class:`SplatFileError`.
    """
    _check_spz_options(spz_axes)
    path = Path(path)
    if path.suffix.lower() == CHECKPOINT_SUFFIX:
        return _model_from_checkpoint(path)
    fmt = _detect(path)
    if not path.is_file():
        raise FileNotFoundError(f"{fmt} file not found: {path}")
    reader = partial(_spz.read_spz_file, axes=spz_axes) if fmt == "spz" else FORMATS[fmt].read
    try:
        model = SplatModel(**finite_params(reader(path), path))
    except SplatFileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, EOFError, struct.error) as e:
        # A reader's own checks name what is wrong; anything else a damaged file trips is reported the same way.
        raise SplatFileError(f"{path}: cannot read as {FORMATS[fmt].description}: {type(e).__name__}: {e}") from e
    if model.num_gaussians == 0:
        raise SplatFileError(f"{path}: the file holds no Gaussians (0 vertices / records)")
    return model


def write_splat(
    model: SplatModel,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    spz_axes: str = "rdf",
    spz_version: int = _spz.DEFAULT_VERSION,
    surfel_ply: bool = False,
) -> Path:
    """Write ``model`` to ``path`` atomically in ``format`` (a name of :data:`FORMATS`; default from the suffix).

    ``spz_axes`` and ``spz_version`` (2, 3 or 4) choose the axes convention and container
    of an ``.spz``. A 2DGS model goes to PLY with three scales (the third flattened,
    which 3DGS tools read) unless ``surfel_ply`` asks for the two-scale surfel layout of
    the 2DGS reference code; to other formats always as flat 3D Gaussians.
    """
    _check_spz_options(spz_axes, spz_version)
    fmt = get_format(format) if format is not None else FORMATS[format_from_path(path)]
    if not fmt.writable:
        return fmt.write(Path(path), model.params())  # raises, naming what to do instead
    for name, value in model.params().items():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise ValueError(
                f"{path}: refusing to write a splat with {bad} NaN or Inf values in {name!r} "
                "(the model diverged or the source file holds them); nothing was written"
            )
    writer = fmt.write
    if fmt.name == "ply":
        writer = partial(write_ply, surfel_layout=surfel_ply)
    elif fmt.name == "spz":
        writer = partial(_spz.write_spz_file, version=spz_version, axes=spz_axes)
    if model.kind == "2dgs" and fmt.name != "ply":
        model = flat_3dgs(model)
    return writer(Path(path), model.params())


def flat_3dgs(model: SplatModel) -> SplatModel:
    """A 2DGS surfel model as flat 3D Gaussians (third scale :data:`SURFEL_LOG_THICKNESS`),
    for files and viewers that only know 3DGS; 3DGS models are returned as they are."""
    if model.kind != "2dgs":
        return model
    thin = torch.full_like(model.scales[:, :1], SURFEL_LOG_THICKNESS)
    return SplatModel(**{**model.params(), "scales": torch.cat([model.scales, thin], dim=1)})


def dropped_information(model: SplatModel, format: str) -> list[str]:
    """What writing ``model`` as ``format`` loses beyond the format's rounding, one sentence each.

    Empty when the format keeps everything up to its documented quantisation (PLY keeps
    everything). Lists lost SH bands and values outside the range a format can store.
    """
    fmt = get_format(format)
    out: list[str] = []
    N = model.num_gaussians
    if N == 0:
        return out
    if model.kind == "2dgs" and fmt.name != "ply":
        out.append(f"2DGS surfels are stored as flat 3D Gaussians (normal-axis scale exp({SURFEL_LOG_THICKNESS:g}))")
    if model.sh_degree > fmt.max_sh_degree:
        out.append(f"SH degree {model.sh_degree} -> {fmt.max_sh_degree} (view-dependent colour is lost)")

    def outside(values: torch.Tensor, lo: float, hi: float, what: str) -> None:
        values = values.detach().float().cpu()
        bad = int(((values < lo) | (values > hi)).sum())
        if bad:
            out.append(f"{bad} of {values.numel()} {what} outside [{lo:g}, {hi:g}] are clipped")

    if fmt.name in ("splat", "ksplat"):
        outside(0.5 + SH_C0 * model.sh0, 0.0, 1.0, "base colour values (0.5 + SH_C0 * dc)")
    elif fmt.name == "spz":
        dc_max = 127.5 / (_spz.COLOR_SCALE * 255)
        outside(model.sh0, -dc_max, dc_max, "dc coefficients")
        outside(model.scales, -10.0, 255 / 16 - 10.0, "log scales")
        outside(model.shN, -1.0, 1.0, "higher SH coefficients")
        bits = _spz.fractional_bits_for(model.means.detach().double().cpu().numpy())
        if bits < _spz.FRACTIONAL_BITS:
            out.append(
                f"positions reach {float(model.means.abs().max()):.4g}, so .spz stores them with "
                f"{bits} instead of {_spz.FRACTIONAL_BITS} fractional bits (resolution {2.0**-bits:g})"
            )
    elif fmt.name == "compressed_ply":
        outside(model.scales, -20.0, 20.0, "log scales")
        outside(model.shN, -_compressed_ply.SH_RANGE, _compressed_ply.SH_RANGE, "higher SH coefficients")
    return out


def _percentiles(t: torch.Tensor) -> dict:
    """1st, 5th, 25th, 50th, 75th, 95th and 99th percentiles (of at most a million values)."""
    t = t.detach().double().flatten().cpu()
    if t.numel() == 0:
        return {}
    if t.numel() > 1_000_000:  # torch.quantile's input limit: a fixed random subset
        t = t[torch.randperm(t.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    values = torch.quantile(t, torch.tensor(qs, dtype=torch.float64)).tolist()
    return {f"p{round(q * 100)}": v for q, v in zip(qs, values)}


def describe_file(path: str | os.PathLike) -> dict:
    """Summary of any supported splat file or ``.ckpt`` for ``splatkit info``.

    :meth:`SplatModel.describe`'s figures (``num_gaussians``, ``sh_degree``,
    ``bounds_min`` / ``bounds_max``, opacity and scale min / median / mean / max) with
    the file's ``format`` and size, and percentiles ``p1 .. p99`` of opacity and scale.
    """
    path = Path(path)
    extra = {}
    if path.suffix.lower() == CHECKPOINT_SUFFIX:
        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, path)
        extra = {"step": ckpt["step"], "max_steps": ckpt["config"].get("max_steps")}
    else:
        model = read_splat(path)
    info = model.describe()
    info["opacity"].update(_percentiles(opacity_activation(model.opacities)))
    info["scale"].update(_percentiles(scale_activation(model.scales)))
    fmt = "checkpoint" if path.suffix.lower() == CHECKPOINT_SUFFIX else _detect(path)
    return {"file": str(path), "format": fmt, "file_bytes": path.stat().st_size, **info, **extra}


def _as_vec3(v, name: str) -> torch.Tensor | None:
    if v is None:
        return None
    t = torch.as_tensor(np.asarray(v, dtype=np.float64))
    if tuple(t.shape) != (3,):
        raise ValueError(f"{name} must be three numbers (x, y, z), got {v!r}")
    return t


def filter_model(model: SplatModel, keep: torch.Tensor) -> SplatModel:
    """The Gaussians selected by ``keep``: a boolean mask ``[N]`` or indices (in that order)."""
    return SplatModel(**{n: t[keep] for n, t in model.params().items()})


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    crop_min: Sequence[float] | None = None,
    crop_max: Sequence[float] | None = None,
    min_opacity: float = 0.0,
    transform: torch.Tensor | np.ndarray | None = None,
    format: str | None = None,
    spz_axes: str = "rdf",
    spz_version: int = _spz.DEFAULT_VERSION,
    surfel_ply: bool = False,
) -> dict:
    """Read ``src`` (any format or a ``.ckpt``), filter, and write ``dst`` atomically.

    Args:
        src, dst: files; formats come from the suffixes (``format`` overrides ``dst``'s).
        crop_min, crop_max: keep only Gaussians whose centre lies in this box (either
            side may be omitted). The box is in ``dst``'s frame, i.e. after ``transform``.
        min_opacity: drop Gaussians whose opacity (``sigmoid``) is below this.
        transform: optional 4x4 similarity applied first (see
            :func:`~splatkit.splat.transform.transform_model`), e.g. the inverse of a data
            provider's ``transform`` to write in the capture's own frame.
        spz_axes, spz_version, surfel_ply: as in :func:`write_splat` (``spz_axes`` is
            also how an ``.spz`` source is read).

    Returns:
        a summary: files and formats, Gaussians read / removed by the crop / removed by
        opacity / written, SH degrees, ``dst``'s size in bytes and ``warnings`` (what the
        target format drops, from :func:`dropped_information`).
    """
    src, dst = Path(src), Path(dst)
    if not 0.0 <= float(min_opacity) <= 1.0:
        raise ValueError(f"min_opacity must be in [0, 1], got {min_opacity!r}")
    lo, hi = _as_vec3(crop_min, "crop_min"), _as_vec3(crop_max, "crop_max")
    if lo is not None and hi is not None and bool((lo > hi).any()):
        raise ValueError(f"crop_min {lo.tolist()} must not exceed crop_max {hi.tolist()} on any axis")
    _check_spz_options(spz_axes, spz_version)
    fmt = get_format(format) if format is not None else FORMATS[format_from_path(dst)]
    model = read_splat(src, spz_axes=spz_axes)
    src_format = "checkpoint" if src.suffix.lower() == CHECKPOINT_SUFFIX else _detect(src)
    num_in = model.num_gaussians
    if transform is not None:
        model = transform_model(model, transform)

    means = model.means.detach().double().cpu()
    in_box = torch.ones(num_in, dtype=torch.bool)
    if lo is not None:
        in_box &= (means >= lo).all(dim=1)
    if hi is not None:
        in_box &= (means <= hi).all(dim=1)
    opaque = opacity_activation(model.opacities.detach().double().cpu()) >= float(min_opacity)
    keep = in_box & opaque
    if not bool(keep.any()):
        raise ValueError(
            f"{src}: no Gaussians are left after the crop box and min_opacity={min_opacity} "
            f"({int((~in_box).sum())} outside the box, {int((in_box & ~opaque).sum())} too "
            f"transparent, of {num_in}); nothing written"
        )
    model = filter_model(model, keep)
    warnings = dropped_information(model, fmt.name)
    path = write_splat(model, dst, fmt.name, spz_axes=spz_axes, spz_version=spz_version, surfel_ply=surfel_ply)
    return {
        "src": str(src),
        "dst": str(path),
        "src_format": src_format,
        "format": fmt.name,
        "num_in": num_in,
        "removed_by_crop": int((~in_box).sum()),
        "removed_by_opacity": int((in_box & ~opaque).sum()),
        "num_out": model.num_gaussians,
        "sh_degree_in": model.sh_degree,
        "sh_degree_out": min(model.sh_degree, fmt.max_sh_degree),
        "transformed": transform is not None,
        "bytes": path.stat().st_size,
        "warnings": warnings,
    }


__all__ = [
    "FORMATS",
    "SURFEL_LOG_THICKNESS",
    "SplatFormat",
    "SplatFileError",
    "convert",
    "describe_file",
    "dropped_information",
    "filter_model",
    "format_from_path",
    "get_format",
    "read_splat",
    "register_format",
    "write_splat",
]
