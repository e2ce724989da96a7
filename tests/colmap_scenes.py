"""Small synthetic COLMAP captures, written with pycolmap (COLMAP's own code)."""

import math
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_PARAMS = {
    # model: params for a 64 x 48 camera with visible distortion
    "SIMPLE_PINHOLE": [60.0, 32.3, 23.8],
    "PINHOLE": [60.0, 57.0, 32.3, 23.8],
    "SIMPLE_RADIAL": [60.0, 32.3, 23.8, -0.15],
    "RADIAL": [60.0, 32.3, 23.8, -0.12, 0.05],
    "OPENCV": [60.0, 57.0, 32.3, 23.8, -0.1, 0.03, 0.004, -0.003],
    "FULL_OPENCV": [60.0, 57.0, 32.3, 23.8, -0.1, 0.03, 0.004, -0.003, 0.01, 0.02, -0.01, 0.005],
    "OPENCV_FISHEYE": [40.0, 39.0, 32.3, 23.8, 0.05, -0.02, 0.01, -0.004],
}


def pattern(xn, yn):
    """A smooth colour pattern on the normalised image plane (x/z, y/z)."""
    return np.stack(
        [0.5 + 0.4 * np.sin(3.0 * xn + 0.5), 0.5 + 0.4 * np.cos(2.5 * yn), 0.5 + 0.3 * np.sin(2 * (xn + yn))], -1
    )


def look_at_pose(eye, target=(0.0, 0.0, 0.0)):
    """COLMAP cam_from_world (R, t) for a camera at ``eye`` looking at ``target``, world +Z up."""
    eye = np.asarray(eye, float)
    fwd = np.asarray(target, float) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera axes in world
    return R, -R @ eye


def write_scene(
    root: Path, model: str, width=64, height=48, n_images=6, binary=True, points=True, extra_params=None
) -> Path:
    """A scene folder with sparse/0 and images/ whose photos show :func:`pattern` through the camera."""
    import pycolmap

    params = extra_params or MODEL_PARAMS[model]
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera.create_from_model_name(1, model, 1.0, width, height)
    cam.params = params
    rec.add_camera_with_trivial_rig(cam)
    (root / "images").mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width]
    pix = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1).astype(np.float64)
    normalized = cam.cam_from_img(pix)
    img = pattern(normalized[:, 0], normalized[:, 1]).reshape(height, width, 3)
    rng = np.random.default_rng(0)
    for i in range(n_images):
        a = 2 * math.pi * i / n_images
        R, t = look_at_pose([3 * math.cos(a), 3 * math.sin(a), 1.0])
        q = pycolmap.Rotation3d(R)
        image = pycolmap.Image(name=f"img_{i:02d}.png", camera_id=1, image_id=i + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(q, t))
        Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(root / "images" / image.name)
    if points:
        for _ in range(50):
            rec.add_point3D(rng.uniform(-0.5, 0.5, 3), pycolmap.Track(), rng.integers(0, 255, 3).astype(np.uint8))
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    (rec.write_binary if binary else rec.write_text)(str(model_dir))
    return root
