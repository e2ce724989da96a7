"""COLMAP captures: every camera model, text vs binary, masks, factors, bad input."""

import shutil

import numpy as np
import pytest
import torch
from colmap_scenes import MODEL_PARAMS, pattern, write_scene
from PIL import Image

from splatkit.data_provider import DataError, SplatColmapDataProvider, SplatColmapDataProviderConfig
from splatkit.data_provider.captured import SplatLoaderConfig


def _provider(root, **kw):
    kw.setdefault("test_every", 0)
    kw.setdefault("normalize", False)
    kw.setdefault("loader", SplatLoaderConfig(cache_dir=str(root / "cache"), num_workers=0))
    return SplatColmapDataProvider(SplatColmapDataProviderConfig(str(root), str(root / "images"), **kw))


@pytest.mark.parametrize("model", list(MODEL_PARAMS))
def test_camera_model_is_undistorted_to_a_true_pinhole(tmp_path, model):
    """The undistorted photo, read through its pinhole K, shows the pattern the camera saw."""
    import pycolmap

    root = write_scene(tmp_path, model)
    provider = _provider(root)
    frame = provider.train_frame(0)
    K = frame.cameras.Ks[0].double().numpy()
    H, W = frame.images.shape[1:3]
    ys, xs = np.mgrid[0:H, 0:W]
    xn = (xs + 0.5 - K[0, 2]) / K[0, 0]
    yn = (ys + 0.5 - K[1, 2]) / K[1, 1]
    expected = pattern(xn, yn)
    got = frame.images[0].double().numpy()
    err = np.abs(got - expected)
    assert np.median(err) < 0.01 and np.percentile(err, 99) < 0.04, (model, np.median(err), err.max())
    assert (
        abs(
            K[0, 0] / K[1, 1]
            - MODEL_PARAMS[model][0]
            / MODEL_PARAMS[model][1 if model not in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL") else 0]
        )
        < 1e-6
    )  # pixel aspect ratio kept

    # Points projected through the undistorted camera land where COLMAP's projection
    # (with distortion) lands after undistorting that pixel position.
    rec = pycolmap.Reconstruction(str(root / "sparse" / "0"))
    und = next(iter(provider._undistorters.values()))
    im = rec.images[1]
    assert provider.records[0].name == im.name
    X = np.random.default_rng(1).uniform(-0.4, 0.4, (30, 3))
    distorted = np.stack([im.project_point(x) for x in X])
    w2c = np.linalg.inv(provider.records[0].c2w.numpy())
    Xc = X @ w2c[:3, :3].T + w2c[:3, 3]
    ours = Xc @ K.T
    ours = ours[:, :2] / ours[:, 2:]
    np.testing.assert_allclose(und.points(distorted), ours, atol=1e-3)


def test_text_and_binary_models_agree(tmp_path):
    import pycolmap

    root = write_scene(tmp_path / "bin", "OPENCV", binary=True)
    text = tmp_path / "txt"
    shutil.copytree(root / "images", text / "images")
    (text / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(root / "sparse" / "0")).write_text(str(text / "sparse" / "0"))
    assert (text / "sparse" / "0" / "images.txt").is_file() and not (text / "sparse" / "0" / "images.bin").exists()
    a, b = _provider(root, normalize=True), _provider(text, normalize=True)
    assert [r.name for r in a.records] == [r.name for r in b.records]
    for ra, rb in zip(a.records, b.records):
        assert ra.intrinsics == rb.intrinsics
        torch.testing.assert_close(ra.c2w, rb.c2w, atol=1e-12, rtol=0)
    pa, ca = a.initial_points()
    pb, cb = b.initial_points()
    torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
    assert torch.equal(ca, cb)
    torch.testing.assert_close(a.transform, b.transform, atol=1e-12, rtol=0)


def test_normalization_and_split(tmp_path):
    root = write_scene(tmp_path, "PINHOLE", n_images=10)
    p = _provider(root, normalize=True, test_every=3)
    assert p.num_test_frames() == 4 and p.num_train_frames() == 6  # images 0, 3, 6, 9 held out
    assert p.test_frame(1).names == ["img_03.png"]
    centers = torch.stack([r.c2w[:3, 3] for r in p.records])
    # Cameras on a ring 3 units from the object: after normalisation at unit distance around the origin.
    torch.testing.assert_close(centers.norm(dim=-1), torch.ones(10, dtype=torch.float64), atol=1e-6, rtol=0)
    ups = torch.stack([-r.c2w[:3, 1] for r in p.records]).mean(0)
    assert ups[2] > 0.9 * ups.norm()
    # Points follow the same transform.
    raw = _provider(root, normalize=False)
    pts_raw, _ = raw.initial_points()
    T = p.transform.float()
    torch.testing.assert_close(p.initial_points()[0], pts_raw @ T[:3, :3].T + T[:3, 3], atol=1e-5, rtol=0)


def test_factor_uses_given_folder_or_cached_copies(tmp_path):
    root = write_scene(tmp_path, "SIMPLE_RADIAL", width=64, height=48)
    cached = _provider(root, factor=2)
    f = cached.train_frame(0)
    # Half of 64x48 is 32x24; undistortion may crop a few border pixels, never more than a quarter.
    H, W = f.images.shape[1:3]
    assert 18 <= H <= 24 and 24 <= W <= 32, (H, W)
    assert (f.cameras.width, f.cameras.height) == (W, H)
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").rglob("*.png"))
    assert not (root / "images_2").exists()  # the data folder is never written
    # A user-provided images_2 folder is used as it is.
    (root / "images_2").mkdir()
    for p in (root / "images").iterdir():
        Image.open(p).resize((32, 24)).save(root / "images_2" / p.name)
    given = _provider(root, factor=2)
    assert given.records[0].image_path.parent == root / "images_2"
    assert given.records[0].intrinsics.width == 32
    K = given.records[0].intrinsics
    assert K.fx == pytest.approx(MODEL_PARAMS["SIMPLE_RADIAL"][0] / 2)
    # An images_2 with the wrong size is an error that names the file.
    Image.open(root / "images" / "img_00.png").resize((20, 20)).save(root / "images_2" / "img_00.png")
    with pytest.raises(DataError, match="img_00.png is 20x20; at factor 2 .* expects about 32x24"):
        _provider(root, factor=2)


def test_masks(tmp_path):
    root = write_scene(tmp_path, "PINHOLE")
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in sorted((root / "images").iterdir()):
        m = np.zeros((48, 64), np.uint8)
        m[10:30, 20:50] = 250
        m[0, 0] = 100  # grey: below the threshold
        Image.fromarray(m).save(masks / (p.stem + ".jpg" if p.stem.endswith("1") else p.name))
    provider = _provider(root, masks_dir=str(masks))
    f = provider.train_frame(0)
    assert f.masks.shape == (1, 48, 64, 1) and f.masks.dtype == torch.bool
    assert int(f.masks.sum()) == 20 * 30 and not f.masks[0, 0, 0, 0]
    (masks / "img_02.png").unlink()
    (masks / "stray.png").write_bytes((masks / "img_00.png").read_bytes())
    with pytest.raises(
        DataError, match=r"1 image\(s\) have no mask: img_02.png; 1 file\(s\) match no image: stray.png"
    ):
        _provider(root, masks_dir=str(masks))


def test_masked_loss_ignores_outside_pixels():
    from splatkit.data_provider.base import SplatFrames
    from splatkit.loss_fn import Splat3DGSLossFn
    from splatkit.renderer.base import SplatRenderOutput
    from splatkit.splat.cameras import SplatCameras

    gt = torch.rand(1, 32, 32, 3)
    img = gt.clone().requires_grad_(True)
    mask = torch.zeros(1, 32, 32, 1, dtype=torch.bool)
    mask[:, 8:24, 8:24] = True
    wrong = img.detach().clone()
    wrong[~mask.expand_as(wrong)] = 0.7  # garbage only outside the mask
    cams = SplatCameras(torch.eye(4)[None], torch.eye(3)[None], 32, 32)
    frames = SplatFrames(cams, gt, mask, ["a"])
    render = SplatRenderOutput(
        wrong.requires_grad_(True),
        torch.zeros(1, 32, 32, 1),
        torch.zeros(1, 1, 2),
        torch.zeros(1, 1, 2, dtype=torch.int32),
        32,
        32,
    )
    loss = Splat3DGSLossFn()(render, frames, 1, None)
    assert float(loss.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.loss.backward()
    assert float(render.images.grad[~mask.expand_as(gt)].abs().max()) == 0.0
    bg = Splat3DGSLossFn(mask_mode="background")(render, frames, 1, None)
    assert float(bg.loss.detach()) > 0.1  # outside pixels must now match the (black) background


def test_bad_colmap_input(tmp_path):
    root = write_scene(tmp_path / "s", "OPENCV")
    (root / "images" / "img_03.png").unlink()
    with pytest.raises(DataError, match=r"1 image file\(s\) missing: .*img_03.png. The model names these files"):
        _provider(root)

    root = write_scene(tmp_path / "c", "OPENCV")
    images_bin = root / "sparse" / "0" / "images.bin"
    images_bin.write_bytes(images_bin.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"images.bin: damaged or truncated COLMAP file"):
        _provider(root)

    root = write_scene(tmp_path / "u", "FOV", extra_params=[60.0, 60.0, 32.0, 24.0, 0.9])
    with pytest.raises(
        DataError, match="camera 1: camera model FOV is not supported; supported models: SIMPLE_PINHOLE"
    ):
        _provider(root)

    root = write_scene(tmp_path / "e", "PINHOLE", n_images=0, points=False)
    with pytest.raises(DataError, match="no registered images"):
        _provider(root)

    with pytest.raises(DataError, match="no COLMAP model"):
        SplatColmapDataProvider(SplatColmapDataProviderConfig(str(tmp_path), str(tmp_path)))

    root = write_scene(tmp_path / "m", "PINHOLE")
    Image.new("RGB", (50, 48)).save(root / "images" / "img_02.png")
    with pytest.raises(DataError, match="img_02.png is 50x48, its camera is 64x48"):
        _provider(root)


def test_exif_orientation_is_applied(tmp_path):
    root = write_scene(tmp_path, "PINHOLE", n_images=2)
    path = root / "images" / "img_01.png"
    upright = np.asarray(Image.open(path))
    # Store the photo rotated, with an EXIF tag saying how to turn it back.
    rotated = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    jpg = root / "images" / "img_01.jpg"
    rotated.save(jpg, exif=exif, quality=100)
    path.unlink()
    jpg.rename(path)  # keep the model's name; PIL sniffs the format
    provider = _provider(root)
    got = (provider.train_frame(1).images[0].numpy() * 255).round()
    assert np.abs(got - upright).mean() < 3.0


def test_prefetch_threads_and_bounded_cache(tmp_path):
    root = write_scene(tmp_path, "OPENCV", n_images=8)
    p = SplatColmapDataProvider(
        SplatColmapDataProviderConfig(
            str(root),
            str(root / "images"),
            test_every=0,
            loader=SplatLoaderConfig(cache_mb=0, num_workers=2, prefetch_steps=3),
        )
    )
    batches = [p.train_batch(s, 1, seed=0) for s in range(1, 17)]
    assert all(b.images.shape == (1, *batches[0].images.shape[1:]) for b in batches)
    ref = SplatColmapDataProvider(
        SplatColmapDataProviderConfig(
            str(root), str(root / "images"), test_every=0, loader=SplatLoaderConfig(num_workers=0)
        )
    )
    for s, b in zip(range(1, 17), batches):
        assert torch.equal(b.images, ref.train_batch(s, 1, seed=0).images)
    assert p._cache.nbytes == 0  # a zero budget keeps nothing
