"""Shared machinery of providers backed by photos on disk (COLMAP, transforms.json).

Images stream from disk: each is read (EXIF orientation applied), undistorted, kept as
``uint8`` in a byte-bounded LRU cache, and converted to float only when a batch is
built. Worker threads load the frames of the next steps while the current one trains
(the training order is a function of the step, so it is known ahead). Nothing puts
all images in memory, let alone on the training device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splatkit.data_provider.base import SplatDataProvider, SplatFrames
from splatkit.data_provider.images import (
    DEPTH_EXTENSIONS,
    ByteLRUCache,
    DataError,
    _preview,
    find_companions,
    has_alpha,
    is_rgb_colour,
    read_depth,
    read_image,
    read_mask,
    read_pixels,
    resize_pixels,
)
from splatkit.data_provider.undistort import CameraIntrinsics, Undistorter
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, project_points

logger = logging.getLogger("splatkit")


@dataclass
class SplatLoaderConfig:
    """How photos are read: caching, prefetching and where resized copies go."""

    cache_mb: int = 1024
    """Memory for decoded images (uint8); least recently used ones are dropped beyond it."""
    num_workers: int = 2
    """Threads that load upcoming frames while training runs (0: load in the training thread)."""
    prefetch_steps: int = 4
    """How many steps ahead the workers load."""
    cache_dir: str | None = None
    """Folder for resized copies (default: $SPLATKIT_CACHE or ~/.cache/splatkit). The data folder is never written."""


@dataclass
class FrameRecord:
    """One photo: where it is, how it was taken, and where it sits in the world."""

    name: str
    image_path: Path
    c2w: torch.Tensor  # [4, 4] OpenCV camera-to-world, in the provider's (normalised) frame
    intrinsics: CameraIntrinsics  # of the file at image_path
    mask_path: Path | None = None
    depth_path: Path | None = None  # a depth map of the photo (any size with its aspect)
    depth_points: torch.Tensor | None = None  # [P, 3] SfM points the photo observed, training frame


def image_header(path: Path) -> tuple[int, int, bool]:
    """``(width, height, has_alpha)`` of an image as displayed (EXIF orientation applied), from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
            alpha = has_alpha(im)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Exception as e:
        raise DataError(f"{path}: cannot read image: {e}") from e
    return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)) + (alpha,)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as displayed (EXIF orientation applied), from its header."""
    return image_header(path)[:2]


MIN_IMAGE_SIDE = 11
"""Smallest image side splatkit trains on: the 11x11 window of SSIM (loss and test metric)."""

AUTO_MAX_SIDE = 1600
"""With no factor given, images are downscaled until their longer side is at most this (as Inria's and
nerfstudio's trainers do)."""


def choose_factor(records: list[FrameRecord], factor: int | None, what: str) -> int:
    """``factor`` checked, or for None the smallest power of two that brings every image's longer side
    to at most :data:`AUTO_MAX_SIDE` pixels (reported)."""
    if factor is not None:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise DataError(f"{what}.factor must be a positive integer or None (automatic), got {factor!r}")
        return factor
    longest = max(max(r.intrinsics.width, r.intrinsics.height) for r in records)
    chosen = 1
    while longest / chosen > AUTO_MAX_SIDE:
        chosen *= 2
    if chosen > 1:
        logger.info(
            "images are up to %d px on their longer side; training at 1/%d of that (at most %d px). "
            "Set %s.factor to choose another resolution",
            longest,
            chosen,
            AUTO_MAX_SIDE,
            what,
        )
    return chosen


def resized_size(width: int, height: int, factor: float) -> tuple[int, int]:
    return max(1, int(round(width / factor))), max(1, int(round(height / factor)))


def cache_root(config: SplatLoaderConfig) -> Path:
    root = config.cache_dir or os.environ.get("SPLATKIT_CACHE") or Path.home() / ".cache" / "splatkit"
    return Path(root)


def downscaled_records(records: list[FrameRecord], paths: list[Path], factor: int) -> list[FrameRecord]:
    """``records`` pointing at their ``factor``-times smaller images ``paths``, with the
    intrinsics following each image's actual size (checked to be about 1/factor)."""
    out = []
    for r, p in zip(records, paths):
        w, h = image_size(p)
        ew, eh = resized_size(r.intrinsics.width, r.intrinsics.height, factor)
        if abs(w - ew) > 1 or abs(h - eh) > 1:
            raise DataError(
                f"{p} is {w}x{h}; at factor {factor} its camera ({r.intrinsics.width}x"
                f"{r.intrinsics.height}) expects about {ew}x{eh}"
            )
        out.append(dataclasses.replace(r, image_path=p, intrinsics=r.intrinsics.scaled(w, h)))
    return out


def resized_copies(
    paths: list[Path], sizes: list[tuple[int, int]], factor: int, config: SplatLoaderConfig, source_dir: Path
) -> list[Path]:
    """Downscaled PNG copies of ``paths`` (made once, reused afterwards) in the cache folder.

    An alpha channel is kept (averaged premultiplied), so one copy serves every background colour.
    """
    from splatkit.utils.files import atomic_write, ensure_writable_dir

    key = hashlib.sha1(str(source_dir.resolve()).encode()).hexdigest()[:12]
    folder = ensure_writable_dir(
        cache_root(config) / f"{source_dir.name}-{key}" / f"images_{factor}", "SplatLoaderConfig.cache_dir"
    )
    targets = [folder / (p.relative_to(source_dir).as_posix().replace("/", "__") + ".png") for p in paths]
    todo = [(p, s, t) for p, s, t in zip(paths, sizes, targets) if not t.exists()]
    if todo:
        logger.info("resizing %d images by 1/%d into %s (once)", len(todo), factor, folder)

        def work(item):
            from PIL import Image

            src, (w, h), dst = item
            img = resize_pixels(read_pixels(src), resized_size(w, h, factor))
            atomic_write(dst, lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))

        with ThreadPoolExecutor(max(1, config.num_workers)) as pool:
            list(pool.map(work, todo))
    return targets


class SplatCaptureDataProvider(SplatDataProvider):
    """Base class of photo-backed providers; subclasses build the :class:`FrameRecord` list."""

    def __init__(
        self,
        records: list[FrameRecord],
        test_every: int,
        points: torch.Tensor,
        colors: torch.Tensor,
        transform: torch.Tensor,
        loader: SplatLoaderConfig,
        background: tuple[float, float, float] = (1.0, 1.0, 1.0),
        test_names: set[str] | None = None,
        depth_unit_scale: float | None = None,
    ) -> None:
        if not records:
            raise DataError("no frames to train on")
        records = sorted(records, key=lambda r: r.name)
        self.records = records
        if test_names is not None:
            test = [i for i, r in enumerate(records) if r.name in test_names]
        else:
            test = [i for i in range(len(records)) if test_every > 0 and i % test_every == 0]
        self._test_ids = test
        test_set = set(test)
        self._train_ids = [i for i in range(len(records)) if i not in test_set]
        self._points, self._colors = points.float(), colors.float()
        self.transform = transform
        """``[4, 4]`` similarity from the input frame (COLMAP's, transforms.json's) to the training frame."""
        if depth_unit_scale is not None and not depth_unit_scale > 0:
            raise DataError(f"depth_unit_scale must be a positive number or None, got {depth_unit_scale!r}")
        self._depth_unit_scale = depth_unit_scale  # a depth map's unit in the capture's (see read_depth)
        self._similarity_scale = float(torch.linalg.det(transform[:3, :3].double()).abs() ** (1 / 3))
        self.has_depths = any(r.depth_path is not None or r.depth_points is not None for r in records)
        self._loader = loader
        has_alpha = self._check_image_sizes()
        if not is_rgb_colour(background):
            raise DataError(f"background must be three numbers in [0, 1] (RGB), got {tuple(background)!r}")
        self._background = tuple(float(c) for c in background) if has_alpha else None
        # One undistortion map per distinct camera, computed once.
        self._undistorters: dict[CameraIntrinsics, Undistorter] = {}
        for r in records:
            if r.intrinsics not in self._undistorters:
                self._undistorters[r.intrinsics] = Undistorter(r.intrinsics)
        centers = torch.stack([r.c2w[:3, 3] for r in records]).double()
        self._scene_scale = float((centers - centers.mean(0)).norm(dim=-1).max()) * 1.1
        self._cache = ByteLRUCache(loader.cache_mb * 1024 * 1024)
        self._pool = ThreadPoolExecutor(loader.num_workers) if loader.num_workers > 0 else None
        self._inflight: dict[int, Future] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ checks
    def _check_image_sizes(self) -> bool:
        """Check every image's size against its camera (and the smallest size splatkit trains
        on); True if any image has an alpha channel."""
        bad = []
        has_alpha = False
        for r in self.records:
            w, h, alpha = image_header(r.image_path)
            has_alpha |= alpha
            if min(w, h) < MIN_IMAGE_SIDE:
                side = MIN_IMAGE_SIDE
                raise DataError(
                    f"{r.image_path} is {w}x{h} px; splatkit needs images of at least {side}x{side} "
                    "(the SSIM window of the loss and the test metrics)"
                )
            if (w, h) != (r.intrinsics.width, r.intrinsics.height):
                bad.append(f"{r.image_path} is {w}x{h}, its camera is {r.intrinsics.width}x{r.intrinsics.height}")
        if bad:
            raise DataError(
                f"{len(bad)} image(s) do not match their camera's size: "
                + "; ".join(bad[:5])
                + ("; ..." if len(bad) > 5 else "")
                + ". Images of one camera must all have its size (check EXIF rotation and resizing)."
            )
        return has_alpha

    def check_frames(self) -> None:
        """Decode every photo and mask once (on the worker threads): a truncated or unreadable
        file, a mask of another size or one that keeps no pixel is reported now, all of them
        in one error. The decoded frames stay in the cache for the first steps."""
        errors: list[str] = []

        def check(index: int) -> None:
            try:
                self._cached(index)
            except DataError as e:
                errors.append(str(e))

        if self._pool is None:
            for i in range(len(self.records)):
                check(i)
        else:
            list(self._pool.map(check, range(len(self.records))))
        if errors:
            raise DataError(
                f"{len(errors)} of {len(self.records)} images cannot be trained on: "
                + "; ".join(sorted(errors)[:5])
                + ("; ..." if len(errors) > 5 else "")
            )

    # ------------------------------------------------------------ loading
    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        r = self.records[index]
        und = self._undistorters[r.intrinsics]
        img = read_image(r.image_path, self._background)
        if img.shape[1] != r.intrinsics.width or img.shape[0] != r.intrinsics.height:
            raise DataError(
                f"{r.image_path} is {img.shape[1]}x{img.shape[0]}, its camera is "
                f"{r.intrinsics.width}x{r.intrinsics.height}"
            )
        img = und.image(img)
        mask = None
        if r.mask_path is not None:
            m = read_mask(r.mask_path)
            H, W = r.intrinsics.height, r.intrinsics.width
            if m.shape != (H, W):
                import cv2

                # A mask folder may hold masks at the original resolution for images_N: the
                # same picture an integer factor larger. Any other size is a different picture.
                fy, fx = m.shape[0] / H, m.shape[1] / W
                if not (round(fx) >= 2 and abs(fx - round(fx)) < 0.05 and abs(fy - fx) < 0.02 * fx):
                    raise DataError(
                        f"mask {r.mask_path} is {m.shape[1]}x{m.shape[0]}; its image {r.image_path.name} is "
                        f"{W}x{H} (a mask must have the image's size, or the original photo's before downscaling)"
                    )
                m = cv2.resize(m.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
            if not m.any():
                raise DataError(f"mask {r.mask_path} keeps no pixel (all black): nothing of {r.image_path.name} counts")
            mask = und.mask(m)
        depth = None if r.depth_path is None else self._depth_map(r, und)
        return img, mask, depth

    def _depth_map(self, r: FrameRecord, und: Undistorter) -> np.ndarray:
        """The depth map of ``r`` at its undistorted image's size, in training units."""
        import cv2

        d = read_depth(r.depth_path, self._depth_unit_scale) * np.float32(self._similarity_scale)
        W, H = r.intrinsics.width, r.intrinsics.height
        if d.shape != (H, W):
            # Depth maps often come at another resolution than the photos (a sensor's, or the
            # full-size photo's for images_N); the same picture has the same aspect ratio.
            if abs(d.shape[1] / d.shape[0] - W / H) > 0.01 * W / H:
                raise DataError(
                    f"depth map {r.depth_path} is {d.shape[1]}x{d.shape[0]}; its image {r.image_path.name} is "
                    f"{W}x{H} (a depth map must show the image's picture: the same aspect ratio)"
                )
            # nearest: averaging depths across an object's edge makes depths of neither side
            d = cv2.resize(d, (W, H), interpolation=cv2.INTER_NEAREST)
        return und.depth(d)

    def _cached(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        return self._cache.get_or_load(index, lambda: self._load(index))

    def _get(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        with self._lock:
            fut = self._inflight.pop(index, None)
        return fut.result() if fut is not None else self._cached(index)

    def _prefetch(self, indices: list[int]) -> None:
        if self._pool is None:
            return
        with self._lock:
            for i in indices:
                if i not in self._inflight:
                    self._inflight[i] = self._pool.submit(self._cached, i)

    def _camera(self, index: int) -> SplatCameras:
        r = self.records[index]
        und = self._undistorters[r.intrinsics]
        return SplatCameras(
            c2w_to_viewmat(r.c2w.double()).float()[None], torch.from_numpy(und.K).float()[None], und.width, und.height
        )

    def _frame(self, index: int) -> SplatFrames:
        img, mask, depth = self._get(index)
        r = self.records[index]
        cams = self._camera(index)
        images = torch.from_numpy(img).float().div_(255.0)[None]
        masks = None if mask is None else torch.from_numpy(mask)[None, ..., None]
        depths = None
        if depth is not None:
            depths = torch.from_numpy(depth)[None, ..., None]
        elif r.depth_points is not None:
            depths = point_depths(r.depth_points, cams)[..., None]
        return SplatFrames(cams, images, masks, [r.name], depths)

    # ------------------------------------------------------------ provider API
    @property
    def scene_scale(self) -> float:
        return self._scene_scale

    @property
    def background(self) -> tuple[float, float, float] | None:
        """The colour RGBA photos are composited over; None when no photo has an alpha channel."""
        return self._background

    def num_train_frames(self) -> int:
        return len(self._train_ids)

    def num_test_frames(self) -> int:
        return len(self._test_ids)

    def train_frame(self, index: int) -> SplatFrames:
        return self._frame(self._train_ids[index])

    def train_cameras(self) -> list[SplatCameras]:
        return [self._camera(i) for i in self._train_ids]

    def train_names(self) -> list[str]:
        return [self.records[i].name for i in self._train_ids]

    def train_alphas(self) -> list[torch.Tensor] | None:
        if self._background is None:
            return None
        out = []
        for i in self._train_ids:
            r = self.records[i]
            pixels = read_pixels(r.image_path)
            alpha = pixels[..., 3] if pixels.shape[-1] == 4 else np.full(pixels.shape[:2], 255, np.uint8)
            out.append(torch.from_numpy(self._undistorters[r.intrinsics].image(alpha)).float().div_(255.0))
        return out

    def test_frame(self, index: int) -> SplatFrames:
        return self._frame(self._test_ids[index])

    def train_batch(
        self, step: int, batch_size: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> SplatFrames:
        ahead = [
            self._train_ids[i]
            for s in range(step + 1, step + 1 + self._loader.prefetch_steps)
            for i in self.rank_indices(s, batch_size, seed, rank, world_size)
        ]
        self._prefetch(ahead)
        return super().train_batch(step, batch_size, seed, rank, world_size)

    def initial_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._points.clone(), self._colors.clone()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> str:
        n_cams = len(self._undistorters)
        distorted = sum(u.source.is_distorted for u in self._undistorters.values())
        masks = sum(r.mask_path is not None for r in self.records)
        sizes = sorted({(u.width, u.height) for u in self._undistorters.values()})
        size = f"{sizes[0][0]}x{sizes[0][1]}" + (f" to {sizes[-1][0]}x{sizes[-1][1]}" if len(sizes) > 1 else "")
        alpha = "" if self._background is None else f", RGBA composited over {self._background}"
        maps = sum(r.depth_path is not None for r in self.records)
        sfm = sum(r.depth_points is not None for r in self.records)
        depth = f", depth maps for {maps}" if maps else f", SfM depth for {sfm}" if sfm else ""
        return (
            f"{len(self.records)} images of {size} px ({self.num_train_frames()} train, "
            f"{self.num_test_frames()} test), {n_cams} camera(s), {distorted} undistorted, {masks} masks"
            f"{alpha}{depth}, {self._points.shape[0]} points"
        )


def point_depths(points: torch.Tensor, cameras: SplatCameras) -> torch.Tensor:
    """Sparse depth maps ``[C, H, W]`` of world points ``[P, 3]`` seen by ``cameras``: each
    point's camera z at the pixel it projects into (the nearest where several do), 0 elsewhere."""
    C, H, W = len(cameras), cameras.height, cameras.width
    uv, z = project_points(points.double(), cameras.viewmats.double(), cameras.Ks.double())
    out = torch.full((C, H * W), float("inf"))
    for c in range(C):
        col, row, zc = uv[:, c, 0].floor(), uv[:, c, 1].floor(), z[:, c]
        ok = (zc > 0) & (col >= 0) & (col < W) & (row >= 0) & (row < H)
        flat = (row[ok] * W + col[ok]).long()
        out[c].scatter_reduce_(0, flat, zc[ok].float(), reduce="amin")
    out[torch.isinf(out)] = 0.0
    return out.view(C, H, W)


def attach_depth_folder(records: list[FrameRecord], folder: str, names: list[str], choices: str) -> None:
    """Give ``records`` the depth maps of ``folder`` (a provider's ``depths`` setting naming a folder),
    matched to the images by ``names``; ``choices`` lists the setting's other values for the error."""
    if not Path(folder).is_dir():
        raise DataError(f"depths '{folder}' is none of {choices} or a folder of depth maps")
    maps = find_companions(names, Path(folder), "depth map", "depths", DEPTH_EXTENSIONS, "npy/png/tiff")
    for r, name in zip(records, names):
        r.depth_path = maps[name]


def check_files_exist(records: list[FrameRecord], what: str, fix: str) -> None:
    missing = [str(r.image_path) for r in records if not r.image_path.is_file()]
    if missing:
        raise DataError(f"{what}: {len(missing)} image file(s) missing: {_preview(missing)}. {fix}")
