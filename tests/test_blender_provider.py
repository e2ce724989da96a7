"""transforms.json captures: NeRF-synthetic and instant-ngp / nerfstudio flavours, format detection."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from splatkit.data_provider import DataError, SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.captured import SplatLoaderConfig
from splatkit.data_provider.detect import detect_data, provider_from_path


def _gl_pose(eye):
    """OpenGL camera-to-world looking at the origin from ``eye``, world +Z up."""
    eye = np.asarray(eye, float)
    back = eye / np.linalg.norm(eye)  # camera +Z points away from the target
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def _loader(tmp_path):
    return SplatLoaderConfig(cache_dir=str(tmp_path / "cache"), num_workers=0)


def _synthetic(root, n_train=5, n_test=3, size=20):
    for split, n in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True)
        frames = []
        for i in range(n):
            a = 2 * math.pi * i / n
            rgba = np.zeros((size, size, 4), np.uint8)
            rgba[5:15, 5:15] = [255, 0, 0, 255]  # opaque red square on a transparent background
            Image.fromarray(rgba, "RGBA").save(root / split / f"r_{i}.png")
            frames.append(
                {"file_path": f"./{split}/r_{i}", "transform_matrix": _gl_pose([4 * math.cos(a), 4 * math.sin(a), 1.0])}
            )
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


def test_nerf_synthetic_layout(tmp_path):
    root = _synthetic(tmp_path / "lego")
    p = SplatBlenderDataProvider(
        SplatBlenderDataProviderConfig(str(root), background=(0.0, 0.0, 1.0), loader=_loader(tmp_path))
    )
    assert p.num_train_frames() == 5 and p.num_test_frames() == 3
    f = p.test_frame(0)
    assert f.names[0].startswith("test/")
    img = f.images[0]
    torch.testing.assert_close(img[0, 0], torch.tensor([0.0, 0.0, 1.0]))  # transparent -> background
    torch.testing.assert_close(img[10, 10], torch.tensor([1.0, 0.0, 0.0]))
    K = f.cameras.Ks[0]
    assert float(K[0, 0]) == pytest.approx(0.5 * 20 / math.tan(0.5 * 0.69), rel=1e-6)
    assert float(K[0, 2]) == pytest.approx(10.0)
    # OpenGL -> OpenCV: the camera's +Z now looks at the origin.
    c2w = p.records[0].c2w
    to_origin = -c2w[:3, 3] / c2w[:3, 3].norm()
    assert float(c2w[:3, 2] @ to_origin) > 0.999
    pts, _ = p.initial_points()
    assert pts.shape == (0, 3)  # none given: the trainer falls back to random init


def _ngp(root, n=6, drop=(), override=None):
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(root / "images" / f"{i:04d}.jpg")
        a = 2 * math.pi * i / n
        frame = {
            "file_path": f"images/{i:04d}.jpg",
            "transform_matrix": _gl_pose([3 * math.cos(a), 3 * math.sin(a), 0.5]),
        }
        if override and i == 2:
            frame.update(override)
        frames.append(frame)
    for i in drop:
        (root / "images" / f"{i:04d}.jpg").unlink()
    meta = {
        "fl_x": 35.0,
        "fl_y": 34.0,
        "cx": 20.5,
        "cy": 14.8,
        "w": 40,
        "h": 30,
        "k1": -0.05,
        "k2": 0.01,
        "p1": 0.001,
        "p2": -0.001,
        "frames": frames,
    }
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_instant_ngp_capture_with_distortion_and_overrides(tmp_path):
    root = _ngp(tmp_path / "cap", override={"fl_x": 50.0, "fl_y": 50.0, "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0})
    p = SplatBlenderDataProvider(
        SplatBlenderDataProviderConfig(str(root / "transforms.json"), test_every=3, loader=_loader(tmp_path))
    )
    assert p.num_test_frames() == 2 and p.num_train_frames() == 4
    intr = {r.name: r.intrinsics for r in p.records}
    assert intr["images/0002.jpg"].model == "pinhole" and intr["images/0002.jpg"].fx == 50.0
    assert intr["images/0001.jpg"].model == "opencv" and intr["images/0001.jpg"].dist[:4] == (
        -0.05,
        0.01,
        0.001,
        -0.001,
    )
    assert len(p._undistorters) == 2
    K = p.train_frame(0).cameras.Ks[0]  # frame 1: distorted, so undistorted to a new pinhole K
    assert abs(float(K[0, 0]) - 35.0) > 0.1 and float(K[0, 0] / K[1, 1]) == pytest.approx(35.0 / 34.0, rel=1e-6)


def test_missing_images_are_reported_and_skipped_only_when_allowed(tmp_path, caplog):
    root = _ngp(tmp_path / "cap", drop=(1, 4))
    with pytest.raises(
        DataError, match=r"2 of 6 frames name missing images: .*0001.jpg, .*0004.jpg. .*skip_missing_images=True"
    ):
        SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root), loader=_loader(tmp_path)))
    p = SplatBlenderDataProvider(
        SplatBlenderDataProviderConfig(str(root), skip_missing_images=True, loader=_loader(tmp_path))
    )
    assert len(p.records) == 4 and len(p.missing_images) == 2
    assert "skipping 2 of 6 frames" in caplog.text


def test_transforms_without_intrinsics(tmp_path):
    root = _ngp(tmp_path / "cap")
    meta = json.loads((root / "transforms.json").read_text())
    del meta["fl_x"], meta["fl_y"]
    (root / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"transforms.json frame 0: no intrinsics: give 'fl_x' .* or 'camera_angle_x'"):
        SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root), loader=_loader(tmp_path)))
    (root / "transforms.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root), loader=_loader(tmp_path)))


def test_format_detection(tmp_path):
    from colmap_scenes import write_scene

    ngp = _ngp(tmp_path / "ngp")
    assert detect_data(ngp)[0] == "blender" and detect_data(ngp / "transforms.json")[0] == "blender"
    assert detect_data(_synthetic(tmp_path / "lego"))[0] == "blender"
    colmap = write_scene(tmp_path / "colmap", "PINHOLE")
    kind, found = detect_data(colmap)
    assert kind == "colmap" and "COLMAP model (binary)" in found and "sparse/0" in found
    provider, msg = provider_from_path(colmap)
    assert "6 images" in msg and provider.num_train_frames() + provider.num_test_frames() == 6
    with pytest.raises(DataError, match="found neither transforms"):
        detect_data(tmp_path / "ngp" / "images")
    with pytest.raises(DataError, match="does not exist"):
        detect_data(tmp_path / "nowhere")


def test_nerfstudio_point_cloud_is_read_and_normalised_with_the_cameras(tmp_path):
    from plyfile import PlyData, PlyElement

    root = _ngp(tmp_path / "cap")
    meta = json.loads((root / "transforms.json").read_text())
    meta["ply_file_path"] = "sparse_pc.ply"
    (root / "transforms.json").write_text(json.dumps(meta))
    pts = np.array(
        [(0.1, 0.2, 0.3, 255, 0, 0), (-0.5, 0.0, 0.25, 0, 255, 0)],
        dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")],
    )
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(root / "sparse_pc.ply"))
    p = SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root), loader=_loader(tmp_path)))
    xyz, rgb = p.initial_points()
    raw = torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.25]], dtype=torch.float64)
    T = p.transform
    torch.testing.assert_close(xyz.double(), raw @ T[:3, :3].T + T[:3, 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(rgb, torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
