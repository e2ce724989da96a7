"""Recognise what a ``--data`` path holds and build the matching provider."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from splatkit.data_provider.base import SplatDataProvider
from splatkit.data_provider.blender import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.colmap import SplatColmapDataProvider, SplatColmapDataProviderConfig, find_model_dir
from splatkit.data_provider.demo import SplatDemoDataProvider, SplatDemoDataProviderConfig
from splatkit.data_provider.images import DataError


def detect_data(path: str | Path) -> tuple[str, str]:
    """``("colmap" | "blender", what was found)`` for a capture folder or a transforms file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return "blender", f"transforms file {p}"
    if not p.is_dir():
        raise DataError(f"--data '{p}' does not exist (expected a COLMAP scene folder or a transforms.json capture)")
    for name in ("transforms.json", "transforms_train.json"):
        if (p / name).is_file():
            return "blender", f"{name} capture in {p}"
    try:
        model = find_model_dir(p)
    except DataError:
        raise DataError(
            f"--data '{p}': found neither transforms*.json nor a COLMAP model "
            "(sparse/0, sparse, or cameras/images/points3D files)"
        ) from None
    fmt = "binary" if (model / "images.bin").is_file() else "text"
    return "colmap", f"COLMAP model ({fmt}) in {model}"


def provider_from_path(
    path: str | Path,
    colmap: SplatColmapDataProviderConfig | None = None,
    blender: SplatBlenderDataProviderConfig | None = None,
) -> tuple[SplatDataProvider, str]:
    """Provider for ``path``; empty path fields of the given configs are filled from it."""
    kind, found = detect_data(path)
    p = Path(path)
    if kind == "blender":
        cfg = blender or SplatBlenderDataProviderConfig(str(p))
        cfg = dataclasses.replace(cfg, data_path=cfg.data_path or str(p))
        provider = SplatBlenderDataProvider(cfg)
    else:
        cfg = colmap or SplatColmapDataProviderConfig(str(p), "")
        images = cfg.images_dir or str(p / "images")
        if not Path(images).is_dir():
            raise DataError(f"{found}, but no images folder at '{images}'; pass --colmap.images-dir")
        hint = ""
        if cfg.masks_dir is None and (p / "masks").is_dir():
            hint = f"; a masks folder is present, pass --colmap.masks-dir {p / 'masks'} to use it"
        cfg = dataclasses.replace(cfg, colmap_dir=cfg.colmap_dir or str(p), images_dir=images)
        provider = SplatColmapDataProvider(cfg)
        found += f", images in {images}{hint}"
    return provider, f"{found}: {provider.describe()}"


# ----------------------------------------------------------------------------- data records
# What a run was trained on, stored in trainer_config.json and checkpoints so that `eval`,
# `view` and `--resume` can rebuild the provider without the data flags being retyped. Only
# these classes are ever rebuilt from a record (a checkpoint is data, not code to import).
_PROVIDERS = {
    "demo": (SplatDemoDataProvider, SplatDemoDataProviderConfig),
    "colmap": (SplatColmapDataProvider, SplatColmapDataProviderConfig),
    "blender": (SplatBlenderDataProvider, SplatBlenderDataProviderConfig),
}
_PATH_FIELDS = ("colmap_dir", "images_dir", "masks_dir", "data_path")


def data_record(provider: SplatDataProvider) -> dict | None:
    """``{"kind", "config"}`` describing ``provider`` well enough to rebuild it (paths made
    absolute), or None for providers splatkit cannot rebuild (your own classes)."""
    for kind, (cls, config_cls) in _PROVIDERS.items():
        if type(provider) is cls and isinstance(getattr(provider, "config", None), config_cls):
            config = dataclasses.asdict(provider.config)
            for name in _PATH_FIELDS:
                if isinstance(config.get(name), str) and config[name]:
                    config[name] = str(Path(config[name]).resolve())
            return {"kind": kind, "config": config}
    return None


def data_identity(record: dict) -> dict:
    """What makes two records the same data: the provider kind, its paths and (for the demo)
    its seed. Other settings (resolution, split) may change between runs of one capture."""
    config = record.get("config", {})
    return {"kind": record.get("kind"), **{f"config.{k}": config.get(k) for k in (*_PATH_FIELDS, "seed")}}


def _build(cls, values: dict):
    """Dataclass ``cls`` from ``asdict`` output, nested dataclasses included; unknown keys are an error."""
    hints = typing.get_type_hints(cls, include_extras=True)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise DataError(f"the recorded {cls.__name__} has fields this splatkit does not know: {unknown}")
    kwargs = {}
    for name, value in values.items():
        hint = hints.get(name)
        while typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _build(hint, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def provider_from_record(record: dict, background: tuple[float, float, float] | None = None) -> SplatDataProvider:
    """Rebuild the provider a :func:`data_record` describes (``background``, if given, replaces
    the recorded compositing colour); a DataError names what is missing or unknown."""
    if (
        not isinstance(record, dict)
        or record.get("kind") not in _PROVIDERS
        or not isinstance(record.get("config"), dict)
    ):
        raise DataError(f"not a splatkit data record: {record!r:.200}")
    cls, config_cls = _PROVIDERS[record["kind"]]
    config = _build(config_cls, record["config"])
    if background is not None and hasattr(config, "background"):
        config = dataclasses.replace(config, background=tuple(background))
    return cls(config)
