"""Reading photos and masks from disk, and a byte-bounded in-memory cache of them."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np

from splatkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".webp", ".bmp", ".tif", ".tiff")


# Grey images with more than 8 bits per pixel, as Pillow opens them: Pillow's own
# convert("RGB") clips them to 255 (a 16-bit photo turns white), so they are scaled here.
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """8-bit grey from a 16-bit (``I;16*``, and ``I`` as Pillow gives 16-bit PNGs) or float (``F``, in
    [0, 1]) image."""
    x = values.astype(np.float64)
    x = x if mode == "F" else x / 65535.0
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def has_alpha(im) -> bool:
    """Whether an open Pillow image has an alpha channel (or a transparent palette entry)."""
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def is_rgb_colour(value) -> bool:
    """Three finite numbers in [0, 1]: a valid background colour."""
    try:
        return len(value) == 3 and all(math.isfinite(float(c)) and 0 <= float(c) <= 1 for c in value)
    except (TypeError, ValueError):
        return False


def read_pixels(path: Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB, or ``[H, W, 4]`` RGBA when the file has an alpha channel,
    with EXIF orientation applied."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in _WIDE_GREY:
                return np.repeat(_to_uint8(np.asarray(im), im.mode)[..., None], 3, axis=-1)
            return np.array(im.convert("RGBA" if has_alpha(im) else "RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Exception as e:  # PIL raises several types for damaged files
        raise DataError(f"{path}: cannot read image: {e}") from e


def composite(pixels: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """RGBA ``uint8 [H, W, 4]`` over ``background`` (RGB in [0, 1]) as RGB ``uint8 [H, W, 3]``."""
    rgba = pixels.astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + np.asarray(background, np.float32) * (1 - rgba[..., 3:])
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def read_image(path: Path, background: tuple[float, float, float] | None = None) -> np.ndarray:
    """RGB ``uint8 [H, W, 3]`` with EXIF orientation applied.

    RGBA images are composited over ``background`` (RGB in [0, 1]); without one the
    alpha channel is an error, since silently dropping it would train on garbage.
    """
    pixels = read_pixels(path)
    if pixels.shape[-1] == 3:
        return pixels
    if background is None:
        raise DataError(f"{path}: image has an alpha channel; give a background colour to composite it over")
    return composite(pixels, background)


def resize_pixels(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``pixels`` (RGB or RGBA ``uint8``) area-averaged to ``size = (width, height)``.

    RGBA is averaged with premultiplied alpha, so a half-covered pixel keeps the colour of
    what covers it and its alpha says how much: compositing the result over any
    background equals downscaling the composite.
    """
    import cv2

    if pixels.shape[-1] == 3:
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    rgba = pixels.astype(np.float32) / 255.0
    rgba[..., :3] *= rgba[..., 3:]
    small = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
    alpha = small[..., 3:]
    small[..., :3] = np.where(alpha > 0, small[..., :3] / np.maximum(alpha, 1e-8), 0.0)
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Boolean mask ``[H, W]``: True where the pixel counts (brighter than mid-grey)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA"):
                gray = np.asarray(im.getchannel("A"))
            elif im.mode in _WIDE_GREY:
                gray = _to_uint8(np.asarray(im), im.mode)
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
    return find_companions(image_names, masks_dir, "mask", "masks_dir", IMAGE_EXTENSIONS, "png/jpg")


DEPTH_EXTENSIONS = (".npy", ".png", ".PNG", ".tif", ".tiff")


def find_companions(
    image_names: list[str], folder: Path, what: str, flag: str, extensions: tuple[str, ...], kinds: str
) -> dict[str, Path]:
    """The ``what`` file (mask, depth map) of every image in ``folder`` (the setting ``flag``):
    same name, or same stem with one of ``extensions``; missing and unmatched files are an error."""
    if not folder.is_dir():
        raise DataError(f"{flag} '{folder}' is not a folder")
    files = {
        p.name: p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix in extensions
    }
    by_stem: dict[str, Path] = {}
    for p in sorted(files.values()):
        by_stem.setdefault(p.stem, p)
    found, used = {}, set()
    for name in image_names:
        base = Path(name).name
        # "a.jpg" -> "a.jpg", "a.jpg.png" or "a.png"
        match = files.get(base) or by_stem.get(base) or by_stem.get(Path(base).stem)
        if match is not None:
            found[name] = match
            used.add(match.name)
    missing = [n for n in image_names if n not in found]
    extra = sorted(set(files) - used)
    problems = []
    if missing:
        problems.append(f"{len(missing)} image(s) have no {what}: {_preview(missing)}")
    if extra:
        problems.append(f"{len(extra)} file(s) match no image: {_preview(extra)}")
    if problems:
        raise DataError(
            f"{flag} '{folder}': "
            + "; ".join(problems)
            + f". Each image needs one {what} with the same name (any of {kinds}); remove or rename the rest."
        )
    return found


def read_depth(path: Path, scale: float | None) -> np.ndarray:
    """Depth map ``[H, W]`` float32 (z along the camera's axis, ``scale`` times the stored
    values; 0 where the file has no depth): ``.npy`` arrays, or 16-bit PNG and 16-bit / float
    TIFF images. ``scale`` None: 0.001 for integer files (millimetres, as phones' and RGB-D
    sensors' 16-bit PNGs and nerfstudio store them), 1 for float ones. Negative and
    non-finite depths read as 0 (no target)."""
    if not path.is_file():
        raise DataError(f"depth map not found: {path}")
    try:
        if path.suffix == ".npy":
            depth = np.load(path, allow_pickle=False)
        else:
            import cv2

            depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if depth is None:
                raise ValueError("not an image OpenCV can decode")
    except Exception as e:
        raise DataError(f"{path}: cannot read depth map: {e}") from e
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[-1] >= 1:
        depth = depth[..., 0]  # a grey image saved with channels
    if depth.ndim != 2 or not (np.issubdtype(depth.dtype, np.number) and not np.iscomplexobj(depth)):
        raise DataError(f"depth map {path} is {depth.dtype} of shape {depth.shape}; expected a 2-D array of numbers")
    if scale is None:
        scale = 1e-3 if np.issubdtype(depth.dtype, np.integer) else 1.0
    depth = depth.astype(np.float64) * scale
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth.astype(np.float32)


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
