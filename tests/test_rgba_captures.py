"""RGBA (NeRF-synthetic style) captures: one background colour from the data to the score,
downscaled copies that keep the alpha channel, and the same split whichever path is given."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from splatkit.data_provider import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.captured import SplatLoaderConfig
from splatkit.trainer import SplatTrainer, SplatTrainerConfig


def _gl_pose(eye):
    eye = np.asarray(eye, float)
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def _rgba_capture(root, n_train=8, n_test=2, size=24, splits=("train", "test")):
    """A red square, half transparent at its rim, on a transparent background."""
    for split in splits:
        n = n_train if split == "train" else n_test
        (root / split).mkdir(parents=True)
        frames = []
        for i in range(n):
            a = 2 * math.pi * (i + (0.5 if split == "test" else 0.0)) / n
            rgba = np.zeros((size, size, 4), np.uint8)
            rgba[6:18, 6:18] = [255, 0, 0, 128]
            rgba[8:16, 8:16] = [255, 0, 0, 255]
            Image.fromarray(rgba, "RGBA").save(root / split / f"r_{i}.png")
            frames.append(
                {"file_path": f"./{split}/r_{i}", "transform_matrix": _gl_pose([4 * math.cos(a), 4 * math.sin(a), 1.5])}
            )
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


def _cfg(root, tmp_path, **kw):
    return SplatBlenderDataProviderConfig(
        str(root), loader=SplatLoaderConfig(cache_dir=str(tmp_path / "cache"), num_workers=0), **kw
    )


def test_downscaled_rgba_capture_is_composited_over_its_background(tmp_path):
    root = _rgba_capture(tmp_path / "cap")
    white = SplatBlenderDataProvider(_cfg(root, tmp_path, factor=2))
    img = white.train_frame(0).images[0]
    assert img.shape == (12, 12, 3)
    torch.testing.assert_close(img[0, 0], torch.tensor([1.0, 1.0, 1.0]))  # transparent -> white
    torch.testing.assert_close(img[6, 6], torch.tensor([1.0, 0.0, 0.0]), atol=1 / 255, rtol=0)
    # The resized copies are shared; another background composites the same copies anew.
    blue = SplatBlenderDataProvider(_cfg(root, tmp_path, factor=2, background=(0.0, 0.0, 1.0)))
    torch.testing.assert_close(blue.train_frame(0).images[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    # The half-transparent rim averages like a camera would see it: alpha-weighted colour.
    rim_white, rim_blue = white.train_frame(0).images[0, 3, 3], blue.train_frame(0).images[0, 3, 3]
    torch.testing.assert_close(rim_white, torch.tensor([1.0, 0.5, 0.5]), atol=2 / 255, rtol=0)
    torch.testing.assert_close(rim_blue, torch.tensor([0.5, 0.0, 0.5]), atol=2 / 255, rtol=0)
    assert white.background == (1.0, 1.0, 1.0) and blue.background == (0.0, 0.0, 1.0)


def test_the_same_split_whichever_path_is_given(tmp_path):
    root = _rgba_capture(tmp_path / "cap", n_train=16, splits=("train",))
    by_folder = SplatBlenderDataProvider(_cfg(root, tmp_path))
    by_file = SplatBlenderDataProvider(_cfg(root / "transforms_train.json", tmp_path))
    assert (by_folder.num_train_frames(), by_folder.num_test_frames()) == (14, 2)
    assert [r.name for r in by_folder.records] == [r.name for r in by_file.records]
    assert by_folder._test_ids == by_file._test_ids
    # With a test file beside it, the file path reads the split files as the folder does.
    full = _rgba_capture(tmp_path / "full")
    a = SplatBlenderDataProvider(_cfg(full, tmp_path))
    b = SplatBlenderDataProvider(_cfg(full / "transforms_train.json", tmp_path))
    assert (a.num_train_frames(), a.num_test_frames()) == (b.num_train_frames(), b.num_test_frames()) == (8, 2)


def test_trainer_trains_and_scores_over_the_datas_background(tmp_path):
    root = _rgba_capture(tmp_path / "cap")
    provider = SplatBlenderDataProvider(_cfg(root, tmp_path))
    trainer = SplatTrainer(
        SplatTrainerConfig(max_steps=2, output_dir=str(tmp_path / "out"), init_num_points=500), provider
    )
    assert trainer.background == (1.0, 1.0, 1.0)
    trainer.run()
    rec = json.loads((tmp_path / "out" / "trainer_config.json").read_text())
    assert rec["background"] == [1.0, 1.0, 1.0]
    # A render with no Gaussians in view is the background the targets were composited over.
    empty = {k: v[:0] for k, v in trainer.training_state.params.items()}
    cams = provider.test_frame(0).cameras
    img = trainer.renderer.render(empty, cams, 0, trainer.backgrounds(1)).images
    torch.testing.assert_close(img[0, 0, 0], torch.tensor([1.0, 1.0, 1.0]))


def test_a_background_that_contradicts_the_data_is_an_error(tmp_path):
    provider = SplatBlenderDataProvider(_cfg(_rgba_capture(tmp_path / "cap"), tmp_path))
    with pytest.raises(
        ValueError,
        match=r"SplatTrainerConfig.background \(0.0, 0.0, 0.0\) .* composited over "
        r"\(1.0, 1.0, 1.0\)",
    ):
        SplatTrainer(SplatTrainerConfig(background=(0.0, 0.0, 0.0)), provider)
    # The same colour is accepted, written either way.
    SplatTrainer(SplatTrainerConfig(background=(1.0, 1.0, 1.0)), provider)


@pytest.mark.parametrize("bad", [(float("nan"), 0.0, 0.0), (2.0, 0.0, 0.0), (0.5, 0.5)])
def test_background_is_validated(bad):
    with pytest.raises(ValueError, match="SplatTrainerConfig.background"):
        SplatTrainerConfig(background=bad)
