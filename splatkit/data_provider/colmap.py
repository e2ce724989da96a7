"""COLMAP reconstructions (binary or text), read through pycolmap."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from splatkit.data_provider.captured import (
    FrameRecord,
    SplatCaptureDataProvider,
    SplatLoaderConfig,
    attach_depth_folder,
    check_files_exist,
    choose_factor,
    downscaled_records,
    resized_copies,
)
from splatkit.data_provider.images import DataError, find_masks
from splatkit.data_provider.normalize import normalize_cameras, transform_c2w, transform_points
from splatkit.data_provider.undistort import intrinsics_from_colmap

logger = logging.getLogger("splatkit")

MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class SplatColmapDataProviderConfig:
    """Where a COLMAP capture lives and how to load it."""

    colmap_dir: str
    """Folder with cameras/images/points3D (.bin or .txt), or a scene folder holding sparse/0 or sparse."""
    images_dir: str
    """Folder of the photos, named as in the model."""
    factor: int | None = None
    """Downscale factor (None: the smallest power of two that brings the longer side to at most 1600 px);
    uses images_dir's sibling ``<images_dir>_<factor>`` if present, else resizes once into the cache."""
    normalize: bool = True
    """Centre, level and scale the scene (the transform is kept on the provider as ``transform``)."""
    test_every: int = 8
    """Every test_every-th image (sorted by name) is held out for testing; 0 trains on all."""
    masks_dir: str | None = None
    """Folder of masks named like the images (png/jpg, white = keep); the loss ignores the rest."""
    depths: str = "none"
    """Depth targets for depth supervision (the loss's depth_lambda): "none"; "sfm", the SfM
    points each image observed (gsplat's --depth_loss); or a folder of per-image depth maps
    named like the images (.npy, 16-bit PNG or TIFF; z along the camera's axis, 0 = unknown)."""
    depth_unit_scale: float | None = None
    """Depth map values times this are depths in the model's units (None: 0.001 for integer
    files, i.e. millimetres for metres; 1 for float files)."""
    background: Annotated[tuple[float, float, float], tyro.conf.Suppress] = (1.0, 1.0, 1.0)
    """Colour that RGBA photos are composited over, and so the colour the trainer renders over.
    Unused for photos without alpha. On the command line: ``--background``, which sets
    this and the trainer's together."""
    loader: SplatLoaderConfig = field(default_factory=SplatLoaderConfig)


def find_model_dir(colmap_dir: Path) -> Path:
    """The folder that holds the model files: ``colmap_dir`` itself, ``sparse/0`` or ``sparse``."""
    for cand in (colmap_dir, colmap_dir / "sparse" / "0", colmap_dir / "sparse"):
        if any((cand / f"{name}.{ext}").is_file() for name in MODEL_FILES for ext in ("bin", "txt")):
            return cand
    raise DataError(
        f"colmap_dir '{colmap_dir}': no COLMAP model (cameras/images/points3D .bin or .txt) in it, "
        "nor in its sparse/0 or sparse folder"
    )


def _camera_param_counts() -> dict[int, int]:
    import pycolmap

    counts = {}
    for name, mid in pycolmap.CameraModelId.__members__.items():
        if name != "INVALID":
            counts[int(mid)] = len(pycolmap.Camera.create_from_model_id(1, mid, 1.0, 2, 2).params)
    return counts


def check_binary_model(model_dir: Path) -> None:
    """Walk the records of cameras.bin / images.bin / points3D.bin and check they are complete.

    pycolmap trusts the files; a truncated or damaged one could make it read garbage.
    This check names the damaged file instead.
    """

    def walk(path: Path, record) -> None:
        data = path.read_bytes()
        try:
            (n,) = struct.unpack_from("<Q", data, 0)
            pos = 8
            for _ in range(n):
                pos = record(data, pos)
        except (struct.error, ValueError, KeyError) as e:
            raise DataError(
                f"{path}: damaged or truncated COLMAP file ({e}); re-export the model from COLMAP"
            ) from None
        if pos != len(data):
            raise DataError(
                f"{path}: {len(data) - pos} unexpected bytes after {n} records; "
                "the file is damaged, re-export the model from COLMAP"
            )

    counts = _camera_param_counts()

    def camera(data, pos):
        _, model = struct.unpack_from("<ii", data, pos)
        if model not in counts:
            raise ValueError(f"unknown camera model id {model}")
        end = pos + 24 + 8 * counts[model]
        if end > len(data):
            raise ValueError("ends inside a camera record")
        return end

    def image(data, pos):
        pos += 4 + 32 + 24 + 4
        end = data.index(b"\x00", pos)
        (n2d,) = struct.unpack_from("<Q", data, end + 1)
        end = end + 1 + 8 + 24 * n2d
        if end > len(data):
            raise ValueError("ends inside an image record")
        return end

    def point(data, pos):
        (n_track,) = struct.unpack_from("<Q", data, pos + 43)
        end = pos + 51 + 8 * n_track
        if end > len(data):
            raise ValueError("ends inside a point record")
        return end

    for name, rec in (("cameras", camera), ("images", image), ("points3D", point)):
        path = model_dir / f"{name}.bin"
        if path.is_file():
            walk(path, rec)


def read_colmap_model(model_dir: Path):
    """``pycolmap.Reconstruction`` of ``model_dir`` with errors that name the folder and the fix."""
    import pycolmap

    missing = [n for n in MODEL_FILES if not any((model_dir / f"{n}.{e}").is_file() for e in ("bin", "txt"))]
    if missing:
        raise DataError(f"{model_dir}: COLMAP model lacks {', '.join(m + '.bin/.txt' for m in missing)}")
    if all((model_dir / f"{n}.bin").is_file() for n in MODEL_FILES):
        check_binary_model(model_dir)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:
        raise DataError(f"{model_dir}: cannot read the COLMAP model: {e}") from e
    if rec.num_reg_images() == 0:
        raise DataError(
            f"{model_dir}: the COLMAP model has no registered images (empty reconstruction); "
            "run COLMAP's mapper to completion first"
        )
    return rec


def sfm_observations(rec, images: list, transform: torch.Tensor) -> list[torch.Tensor]:
    """For each image of ``images``, the SfM points ``[P, 3]`` it observed (its track entries),
    in the training frame ``transform`` maps to. Points another image saw stay out of an
    image's depth targets: from this viewpoint they may be hidden."""
    ids = np.fromiter(rec.points3D.keys(), dtype=np.int64, count=rec.num_points3D())
    xyz = np.stack([p.xyz for p in rec.points3D.values()]) if len(ids) else np.zeros((0, 3))
    row = {int(i): k for k, i in enumerate(ids)}
    world = transform_points(transform, torch.from_numpy(xyz))
    out = []
    for im in images:
        seen = sorted({row[p.point3D_id] for p in im.points2D if p.has_point3D() and p.point3D_id in row})
        out.append(world[seen].float())
    return out


class SplatColmapDataProvider(SplatCaptureDataProvider):
    """Photos + COLMAP poses, with any supported camera model undistorted to pinhole.

    Attributes:
        transform: ``[4, 4]`` similarity from COLMAP's frame to the training frame.
        model_dir: the folder the model was read from.
    """

    def __init__(self, config: SplatColmapDataProviderConfig) -> None:
        self.config = config
        colmap_dir, images_dir = Path(config.colmap_dir), Path(config.images_dir)
        if not images_dir.is_dir():
            raise DataError(f"images_dir '{images_dir}' is not a folder")
        self.model_dir = find_model_dir(colmap_dir)
        rec = read_colmap_model(self.model_dir)

        images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
        c2w = []
        for im in images:
            pose = im.cam_from_world  # a method since pycolmap 3.12, a property before
            w2c = np.eye(4)
            w2c[:3, :] = (pose() if callable(pose) else pose).matrix()
            c2w.append(np.linalg.inv(w2c))
        c2w = torch.from_numpy(np.stack(c2w))
        transform = normalize_cameras(c2w) if config.normalize else torch.eye(4, dtype=torch.float64)
        c2w = transform_c2w(transform, c2w)

        cams = {
            cid: intrinsics_from_colmap(
                cam.model.name, cam.width, cam.height, list(cam.params), f"{self.model_dir} camera {cid}"
            )
            for cid, cam in rec.cameras.items()
        }
        paths = [images_dir / im.name for im in images]
        intrinsics = [cams[im.camera_id] for im in images]
        records = [
            FrameRecord(im.name, p, c2w[i], intr) for i, (im, p, intr) in enumerate(zip(images, paths, intrinsics))
        ]
        check_files_exist(
            records,
            f"images_dir '{images_dir}'",
            "The model names these files; point images_dir at the folder that holds them.",
        )
        factor = choose_factor(records, config.factor, "SplatColmapDataProviderConfig")
        if factor > 1:
            records = self._downscaled(records, images_dir, config, factor)
        if config.masks_dir is not None:
            masks = find_masks([r.name for r in records], Path(config.masks_dir))
            for r in records:
                r.mask_path = masks[r.name]

        if config.depths == "sfm":
            observed = sfm_observations(rec, images, transform)
            for r, pts in zip(records, observed):
                r.depth_points = pts
        elif config.depths != "none":
            attach_depth_folder(records, config.depths, [r.name for r in records], "'none', 'sfm'")
        if rec.num_points3D() > 0:
            pts = np.stack([p.xyz for p in rec.points3D.values()])
            rgb = np.stack([p.color for p in rec.points3D.values()]) / 255.0
            points = transform_points(transform, torch.from_numpy(pts)).float()
            colors = torch.from_numpy(rgb).float()
        else:
            points, colors = torch.zeros(0, 3), torch.zeros(0, 3)
        super().__init__(
            records,
            config.test_every,
            points,
            colors,
            transform,
            config.loader,
            background=config.background,
            depth_unit_scale=config.depth_unit_scale,
        )
        self.reconstruction = rec
        self.image_ids = {im.name: im.image_id for im in images}
        logger.info("COLMAP model %s: %s", self.model_dir, self.describe())

    @staticmethod
    def _downscaled(
        records: list[FrameRecord], images_dir: Path, config: SplatColmapDataProviderConfig, f: int
    ) -> list[FrameRecord]:
        """Records pointing at 1/f images: ``<images_dir>_<f>`` if it exists, else cached copies."""
        given = images_dir.parent / f"{images_dir.name}_{f}"
        if given.is_dir():
            paths = [given / r.name for r in records]
            missing = [str(p) for p, r in zip(paths, records) if not p.is_file()]
            if missing:
                raise DataError(
                    f"'{given}' lacks {len(missing)} of the model's images (e.g. {missing[0]}); "
                    f"complete it or remove it to let splatkit resize into its cache"
                )
        else:
            paths = resized_copies(
                [r.image_path for r in records],
                [(r.intrinsics.width, r.intrinsics.height) for r in records],
                f,
                config.loader,
                images_dir,
            )
        return downscaled_records(records, paths, f)
