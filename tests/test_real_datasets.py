"""The real captures in ../shared/datasets (or $SPLATKIT_DATASETS); skipped when absent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from splatkit.data_provider import (
    SplatBlenderDataProvider,
    SplatBlenderDataProviderConfig,
    SplatColmapDataProvider,
    SplatColmapDataProviderConfig,
)
from splatkit.data_provider.captured import SplatLoaderConfig

DATASETS = Path(os.environ.get("SPLATKIT_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
STATUE = DATASETS / "statue_of_liberty"
FOX = DATASETS / "fox"
needs_statue = pytest.mark.skipif(
    not STATUE.is_dir(),
    reason=f"statue_of_liberty dataset not found at {STATUE} (set SPLATKIT_DATASETS to the folder holding it)",
)
needs_fox = pytest.mark.skipif(
    not FOX.is_dir(), reason=f"fox dataset not found at {FOX} (set SPLATKIT_DATASETS to the folder holding it)"
)


@needs_statue
def test_statue_sparse_points_reproject_onto_undistorted_observations(tmp_path):
    p = SplatColmapDataProvider(
        SplatColmapDataProviderConfig(
            str(STATUE),
            str(STATUE / "images"),
            masks_dir=str(STATUE / "masks"),
            loader=SplatLoaderConfig(cache_dir=str(tmp_path)),
        )
    )
    rec = p.reconstruction
    und = next(iter(p._undistorters.values()))
    assert und.source.model == "opencv" and und.source.dist[0] == pytest.approx(-0.7054, abs=1e-4)
    T = p.transform.numpy()
    ours, colmap_stored = [], [pt.error for pt in rec.points3D.values()]
    for r in p.records:
        im = rec.images[p.image_ids[r.name]]
        obs = [(pt.xy, pt.point3D_id) for pt in im.points2D if pt.has_point3D()]
        X = np.stack([rec.points3D[i].xyz for _, i in obs]) @ T[:3, :3].T + T[:3, 3]
        w2c = np.linalg.inv(r.c2w.numpy())
        Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
        proj = Xc @ und.K.T
        ours.append(np.linalg.norm(proj[:, :2] / proj[:, 2:] - und.points(np.stack([xy for xy, _ in obs])), axis=1))
    ours_median, colmap_median = float(np.median(np.concatenate(ours))), float(np.median(colmap_stored))
    print(json.dumps({"statue_reprojection_median_px": ours_median, "colmap_stored_error_median_px": colmap_median}))
    assert abs(ours_median - colmap_median) < 0.5
    f = p.train_frame(0)
    assert f.masks is not None and 0.1 < float(f.masks.float().mean()) < 0.4  # the statue covers 21-29%


@needs_fox
def test_fox_loads_with_opencv_distortion(tmp_path):
    p = SplatBlenderDataProvider(
        SplatBlenderDataProviderConfig(
            str(FOX), factor=4, normalize=True, loader=SplatLoaderConfig(cache_dir=str(tmp_path))
        )
    )
    assert len(p.records) == 67 and p.num_test_frames() == 9
    intr = p.records[0].intrinsics
    assert (intr.width, intr.height) == (270, 480) and intr.model == "opencv"
    assert intr.fx == pytest.approx(1375.52 / 4, rel=1e-3)
    f = p.test_frame(0)
    assert f.images.shape[0] == 1 and f.images.shape[-1] == 3 and float(f.images.std()) > 0.1
    # Cameras face the scene centre after normalisation: median distance 1.
    d = np.array([float(r.c2w[:3, 3].norm()) for r in p.records])
    assert np.median(d) == pytest.approx(1.0, rel=1e-6)


@needs_fox
def test_loading_fox_at_full_resolution_keeps_memory_bounded(tmp_path):
    """Reading every 1080x1920 photo with a 256 MB cache: peak RSS stays far below 'all images in memory'."""
    code = f"""
import resource, json
from splatkit.data_provider import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.captured import SplatLoaderConfig
p = SplatBlenderDataProvider(SplatBlenderDataProviderConfig({str(FOX)!r}, loader=SplatLoaderConfig(cache_mb=256)))
for s in range(1, p.num_train_frames() + 1):
    p.train_batch(s, 1, 0)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"peak_rss_mb": rss, "cache_mb": p._cache.nbytes / 2**20}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(stats))
    all_float = 58 * 1080 * 1920 * 3 * 4 / 2**20  # the training frames as float32
    assert stats["cache_mb"] <= 256 and stats["peak_rss_mb"] < 1200 < all_float


@needs_fox
def test_fox_in_the_inria_layout_opens_the_inria_way(tmp_path, capsys):
    """fox trained briefly and exported with --export-layout inria: the PLY read by the INRIA
    code's rules equals the checkpoint, and cameras.json lists the 58 training photos by name
    with their centres and camera-to-world rotations."""
    from splatkit.cli import main
    from splatkit.splat.conventions import camera_centers
    from splatkit.splat.formats import read_splat
    from splatkit.testing import inria_load_ply

    out = tmp_path / "fox"
    args = ["train", "--data", str(FOX), "--data-factor", "8", "--max-steps", "2", "--no-progress"]
    assert main([*args, "--output-dir", str(out), "--export-layout", "inria", "--eval-steps", "2"]) == 0
    capsys.readouterr()
    xyz, scales, rots, opacity, f_rest = inria_load_ply(out / "point_cloud" / "iteration_2" / "point_cloud.ply")
    model = read_splat(out / "ckpts" / "step_000002.ckpt")
    assert np.array_equal(xyz, model.means.numpy()) and np.array_equal(rots, model.quats.numpy())
    assert np.array_equal(scales, model.scales.numpy()) and np.array_equal(opacity, model.opacities.numpy())
    assert f_rest.shape == (model.num_gaussians, 45)
    cams = json.loads((out / "cameras.json").read_text())
    provider = SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(FOX), factor=8))
    train = provider.train_cameras()
    assert len(cams) == len(train) == 58
    assert [c["img_name"] for c in cams] == [Path(n).stem for n in provider.train_names()]  # INRIA: the stem
    for entry, cam in zip(cams, train):
        assert np.allclose(entry["position"], camera_centers(cam.viewmats)[0].numpy(), atol=1e-5)
        assert np.allclose(np.array(entry["rotation"]).T, cam.viewmats[0, :3, :3].numpy(), atol=1e-5)
        assert (entry["width"], entry["height"]) == (cam.width, cam.height)
