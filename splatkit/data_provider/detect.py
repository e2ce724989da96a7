"""Recognise what a ``--data`` path holds and build the matching provider."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from splatkit.data_provider.base import SplatDataProvider
from splatkit.data_provider.blender import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.colmap import SplatColmapDataProvider, SplatColmapDataProviderConfig, find_model_dir
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
