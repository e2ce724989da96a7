"""``transforms.json`` captures: NeRF-synthetic (Blender) and instant-ngp / nerfstudio."""

from __future__ import annotations

import json
import logging
import math
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
    choose_factor,
    downscaled_records,
    image_size,
    resized_copies,
)
from splatkit.data_provider.images import IMAGE_EXTENSIONS, DataError, _preview, find_masks
from splatkit.data_provider.normalize import normalize_cameras, transform_c2w, transform_points
from splatkit.data_provider.undistort import CameraIntrinsics
from splatkit.splat.conventions import opengl_to_opencv_c2w

logger = logging.getLogger("splatkit")

INTRINSIC_KEYS = (
    "fl_x",
    "fl_y",
    "cx",
    "cy",
    "w",
    "h",
    "k1",
    "k2",
    "k3",
    "k4",
    "p1",
    "p2",
    "camera_angle_x",
    "camera_angle_y",
    "camera_model",
)


@dataclass
class SplatBlenderDataProviderConfig:
    """Where a transforms.json capture lives and how to load it."""

    data_path: str
    """A folder with transforms.json (or transforms_train/_test.json), or one of those files."""
    factor: int | None = None
    """Downscale factor (None: the smallest power of two that brings the longer side to at most 1600 px);
    uses an ``<images>_<factor>`` folder beside the images if present, else resizes once into the cache."""
    test_every: int = 8
    """Without a transforms_test.json (or _val): every test_every-th frame (sorted by path) is held out;
    0 trains on all."""
    background: Annotated[tuple[float, float, float], tyro.conf.Suppress] = (1.0, 1.0, 1.0)
    """Colour that RGBA images are composited over, and so the colour the trainer renders over
    (white: NeRF-synthetic scenes are scored on white). Unused for images without alpha. On the
    command line: ``--background``, which sets this and the trainer's together."""
    skip_missing_images: bool = False
    """Train without frames whose image file is missing (they are always reported)."""
    normalize: bool = False
    """Centre, level and scale the scene (transform kept as ``transform``)."""
    masks_dir: str | None = None
    """Folder of masks named like the images; frames may also give their own ``mask_path``."""
    depths: str = "none"
    """Depth targets for depth supervision (the loss's depth_lambda): "none"; "frames", each
    frame's ``depth_file_path`` (nerfstudio's); or a folder of depth maps named like the images
    (.npy, 16-bit PNG or TIFF; z along the camera's axis, 0 = unknown)."""
    depth_unit_scale: float | None = None
    """Depth map values times this are depths in the file's units (None: transforms.json's
    ``depth_unit_scale_factor`` if it has one, else 0.001 for integer files, i.e. millimetres
    for metres, and 1 for float files)."""
    loader: SplatLoaderConfig = field(default_factory=SplatLoaderConfig)


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise DataError(f"{path}: expected an object with a 'frames' list")
    return data


def _resolve_image(base: Path, file_path: str) -> Path:
    """The image a frame names; NeRF-synthetic paths may omit the extension."""
    p = (base / file_path).resolve() if not Path(file_path).is_absolute() else Path(file_path)
    if p.suffix in IMAGE_EXTENSIONS or p.is_file():
        return p
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
        cand = p.with_name(p.name + ext)
        if cand.is_file():
            return cand
    return p.with_name(p.name + ".png")


def _intrinsics(meta: dict, image: Path, where: str) -> CameraIntrinsics:
    if "w" in meta and "h" in meta:
        w, h = int(meta["w"]), int(meta["h"])
    else:
        w, h = image_size(image)
    if "fl_x" in meta:
        fx = float(meta["fl_x"])
    elif "camera_angle_x" in meta:
        fx = 0.5 * w / math.tan(0.5 * float(meta["camera_angle_x"]))
    else:
        raise DataError(
            f"{where}: no intrinsics: give 'fl_x' (focal length in pixels) or 'camera_angle_x' "
            "(horizontal field of view in radians), at the top level or per frame"
        )
    if "fl_y" in meta:
        fy = float(meta["fl_y"])
    elif "camera_angle_y" in meta and "fl_x" not in meta:
        fy = 0.5 * h / math.tan(0.5 * float(meta["camera_angle_y"]))
    else:
        fy = fx
    cx, cy = float(meta.get("cx", w / 2)), float(meta.get("cy", h / 2))
    model = str(meta.get("camera_model", "OPENCV")).upper()
    if model == "OPENCV_FISHEYE":
        return CameraIntrinsics(
            "fisheye", w, h, fx, fy, cx, cy, tuple(float(meta.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4"))
        )
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise DataError(f"{where}: camera_model {model!r} is not supported; use OPENCV, OPENCV_FISHEYE or PINHOLE")
    dist = tuple(float(meta.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2", "k3"))
    return CameraIntrinsics("opencv" if any(dist) else "pinhole", w, h, fx, fy, cx, cy, dist if any(dist) else ())


class SplatBlenderDataProvider(SplatCaptureDataProvider):
    """Frames of ``transforms.json`` files; poses are OpenGL camera-to-world matrices.

    Attributes:
        transform: ``[4, 4]`` similarity from the file's frame to the training frame.
        missing_images: frames skipped because their image is missing.
    """

    def __init__(self, config: SplatBlenderDataProviderConfig) -> None:
        self.config = config
        path = Path(config.data_path)
        if path.is_file() and path.name in {f"transforms_{s}.json" for s in ("train", "val", "test")}:
            path = path.parent  # one file of a split capture: read the capture's split files
        if path.is_dir():
            split_files = {s: path / f"transforms_{s}.json" for s in ("train", "val", "test")}
            if split_files["train"].is_file():
                files = [(split_files["train"], "train")]
                test_file = split_files["test"] if split_files["test"].is_file() else split_files["val"]
                if test_file.is_file():
                    files.append((test_file, "test"))
            elif (path / "transforms.json").is_file():
                files = [(path / "transforms.json", None)]
            else:
                raise DataError(f"'{path}' holds no transforms.json or transforms_train.json")
        else:
            files = [(path, None)]

        entries = []  # (name, image path, c2w, meta, json file, split, mask path, depth path)
        ply_file = None  # nerfstudio's optional point cloud, named by the first file
        depth_unit_scale = config.depth_unit_scale
        for jpath, split in files:
            data = _load_json(jpath)
            if jpath == files[0][0] and "ply_file_path" in data:
                ply_file = (jpath, data["ply_file_path"])
            if depth_unit_scale is None and "depth_unit_scale_factor" in data:
                depth_unit_scale = data["depth_unit_scale_factor"]
                if isinstance(depth_unit_scale, bool) or not isinstance(depth_unit_scale, (int, float)):
                    raise DataError(f"{jpath}: depth_unit_scale_factor must be a number, got {depth_unit_scale!r}")
            top = {k: data[k] for k in INTRINSIC_KEYS if k in data}
            for i, frame in enumerate(data["frames"]):
                where = f"{jpath} frame {i}"
                if "file_path" not in frame or "transform_matrix" not in frame:
                    raise DataError(f"{where}: needs 'file_path' and 'transform_matrix'")
                matrix = torch.tensor(frame["transform_matrix"], dtype=torch.float64)
                if matrix.shape != (4, 4):
                    raise DataError(f"{where}: transform_matrix must be 4x4, got {list(matrix.shape)}")
                image = _resolve_image(jpath.parent, frame["file_path"])
                meta = {**top, **{k: frame[k] for k in INTRINSIC_KEYS if k in frame}}
                mask = (jpath.parent / frame["mask_path"]) if "mask_path" in frame else None
                depth = (jpath.parent / frame["depth_file_path"]) if "depth_file_path" in frame else None
                name = f"{split}/{frame['file_path']}" if split else str(frame["file_path"])
                entries.append((name, image, matrix, meta, where, split, mask, depth))

        present = [e[1].is_file() for e in entries]
        missing = [e for e, ok in zip(entries, present) if not ok]
        if missing:
            names = [str(e[1]) for e in missing]
            if not config.skip_missing_images:
                raise DataError(
                    f"{len(missing)} of {len(entries)} frames name missing images: {_preview(names)}. "
                    "Restore them, or set skip_missing_images=True to train without those frames."
                )
            logger.warning(
                "skipping %d of %d frames whose images are missing: %s", len(missing), len(entries), _preview(names)
            )
            entries = [e for e, ok in zip(entries, present) if ok]
        self.missing_images = [str(e[1]) for e in missing]
        if not entries:
            raise DataError(f"'{path}': no frames with images")

        c2w = opengl_to_opencv_c2w(torch.stack([e[2] for e in entries]))
        transform = normalize_cameras(c2w) if config.normalize else torch.eye(4, dtype=torch.float64)
        c2w = transform_c2w(transform, c2w)
        records = [FrameRecord(e[0], e[1], c2w[i], _intrinsics(e[3], e[1], e[4]), e[6]) for i, e in enumerate(entries)]
        factor = choose_factor(records, config.factor, "SplatBlenderDataProviderConfig")
        if factor > 1:
            records = self._downscaled(records, config, factor)
        if config.masks_dir is not None:
            masks = find_masks([r.image_path.name for r in records], Path(config.masks_dir))
            for r in records:
                r.mask_path = masks[r.image_path.name]
        self._attach_depths(config.depths, records, [e[7] for e in entries], [e[4] for e in entries])

        points, colors = self._points(ply_file, transform)
        # Held-out frames: the test (or val) file's when there is one, else every test_every-th.
        test_names = {e[0] for e in entries if e[5] == "test"} if len(files) > 1 else None
        super().__init__(
            records,
            config.test_every,
            points,
            colors,
            transform,
            config.loader,
            background=config.background,
            test_names=test_names,
            depth_unit_scale=depth_unit_scale,
        )
        logger.info("transforms.json capture %s: %s", path, self.describe())

    @staticmethod
    def _attach_depths(spec: str, records: list[FrameRecord], given: list[Path | None], where: list[str]) -> None:
        """Depth maps for ``records`` as ``spec`` (the depths setting) says: none, each frame's own
        (``given``, from ``depth_file_path``), or a folder's."""
        if spec == "none":
            return
        if spec == "frames":
            lacking = [w for w, d in zip(where, given) if d is None]
            if lacking:
                raise DataError(
                    f"depths 'frames': {len(lacking)} frame(s) have no depth_file_path: {_preview(lacking)}"
                )
            for r, d in zip(records, given):
                r.depth_path = d
            return
        if spec == "sfm":
            raise DataError(
                "depths 'sfm' needs a COLMAP model (which image saw which point); "
                "a transforms.json capture takes depth maps: 'frames' or a folder"
            )
        attach_depth_folder(records, spec, [r.image_path.name for r in records], "'none', 'frames'")

    @staticmethod
    def _points(ply_file: tuple[Path, str] | None, transform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """nerfstudio's optional ``ply_file_path`` point cloud (``(json file, ply_file_path)``); none otherwise."""
        if ply_file is None:
            return torch.zeros(0, 3), torch.zeros(0, 3)
        from plyfile import PlyData

        jpath, relative = ply_file
        ply_path = jpath.parent / relative
        try:
            v = PlyData.read(str(ply_path))["vertex"]
            xyz = np.stack([v["x"], v["y"], v["z"]], -1).astype(np.float64)
            names = v.data.dtype.names
            rgb = np.stack([v["red"], v["green"], v["blue"]], -1) / 255.0 if "red" in names else np.full_like(xyz, 0.5)
        except Exception as e:
            raise DataError(f"{ply_path} (ply_file_path of {jpath}): cannot read point cloud: {e}") from e
        return transform_points(transform, torch.from_numpy(xyz)).float(), torch.from_numpy(rgb).float()

    @staticmethod
    def _downscaled(records: list[FrameRecord], config: SplatBlenderDataProviderConfig, f: int) -> list[FrameRecord]:
        out_paths: list[Path | None] = []
        for r in records:
            folder = r.image_path.parent
            given = folder.parent / f"{folder.name}_{f}" / r.image_path.name
            out_paths.append(given if given.is_file() else None)
        todo = [i for i, p in enumerate(out_paths) if p is None]
        if todo:
            root = Path(config.data_path) if Path(config.data_path).is_dir() else Path(config.data_path).parent
            made = resized_copies(
                [records[i].image_path for i in todo],
                [(records[i].intrinsics.width, records[i].intrinsics.height) for i in todo],
                f,
                config.loader,
                root.resolve(),
            )
            for i, p in zip(todo, made):
                out_paths[i] = p
        return downscaled_records(records, out_paths, f)
