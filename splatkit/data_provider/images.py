"""Reading photos and masks from disk, and a byte-bounded in-memory cache of them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Hashable

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".webp", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """Bad input data; the message names the file or field and what was expected."""


def read_image(path: Path, background: tuple[float, float, float] | None = None) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` with EXIF orientation applied.

    RGBA images are composited over ``background`` (RGB in [0, 1]); without one the
    alpha channel is an error, since silently dropping it would train on garbage.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
            if has_alpha:
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                if background is None:
                    raise DataError(f"{path}: image has an alpha channel; give a background colour to composite it over")
                rgb = rgba[..., :3] * rgba[..., 3:] + np.asarray(background, np.float32) * (1 - rgba[..., 3:])
                return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Exception as e:  # PIL raises several types for damaged files
        raise DataError(f"{path}: cannot read image: {e}") from e


def read_mask(path: Path) -> np.ndarray:
    """Boolean mask ``[H, W]``: True where the pixel counts (brighter than mid-grey)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA"):
                gray = np.asarray(im.getchannel("A"))
            else:
                gray = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read mask: {e}") from e
    return gray >= 128


def find_masks(image_names: list[str], masks_dir: Path) -> dict[str, Path]:
    """Mask file of every image: same name, or same stem with any image extension.

    Raises :class:`DataError` listing images without a mask and mask files that
    match no image, so a mismatched folder is caught before training.
    """
    if not masks_dir.is_dir():
        raise DataError(f"masks_dir '{masks_dir}' is not a folder")
    files = {p.name: p for p in masks_dir.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix in IMAGE_EXTENSIONS}
    by_stem: dict[str, Path] = {}
    for p in sorted(files.values()):
        by_stem.setdefault(p.stem, p)
    found, used = {}, set()
    for name in image_names:
        base = Path(name).name
        # "a.jpg" -> mask "a.jpg", "a.jpg.png" or "a.png"
        mask = files.get(base) or by_stem.get(base) or by_stem.get(Path(base).stem)
        if mask is not None:
            found[name] = mask
            used.add(mask.name)
    missing = [n for n in image_names if n not in found]
    extra = sorted(set(files) - used)
    problems = []
    if missing:
        problems.append(f"{len(missing)} image(s) have no mask: {_preview(missing)}")
    if extra:
        problems.append(f"{len(extra)} file(s) match no image: {_preview(extra)}")
    if problems:
        raise DataError(f"masks_dir '{masks_dir}': " + "; ".join(problems)
                        + ". Each image needs one mask with the same name (any of png/jpg); remove or rename the rest.")
    return found


def _preview(names: list[str], n: int = 8) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


class ByteLRUCache:
    """Thread-safe least-recently-used cache bounded by the bytes of its numpy values."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def _size(value: tuple) -> int:
        return sum(v.nbytes for v in value if isinstance(v, np.ndarray))

    def get_or_load(self, key: Hashable, load: Callable[[], tuple]) -> tuple:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()
        size = self._size(value)
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= self._size(old)
        return value

    @property
    def nbytes(self) -> int:
        return self._bytes
