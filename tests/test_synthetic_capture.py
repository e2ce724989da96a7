"""A NeRF-synthetic style capture, written by splatkit, trained with no flags and scored."""

import json
import logging

import torch
from PIL import Image

from splatkit.cli import main
from splatkit.data_provider import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.demo import write_synthetic_capture
from splatkit.renderer import Splat3DGSRenderer
from splatkit.splat.formats import read_splat


def test_written_capture_has_the_nerf_synthetic_layout(tmp_path):
    root = write_synthetic_capture(tmp_path / "synthetic", num_train=6, num_test=2, image_size=24, supersample=1)
    meta = json.loads((root / "transforms_train.json").read_text())
    assert set(meta) == {"camera_angle_x", "frames"} and len(meta["frames"]) == 6
    assert meta["frames"][0]["file_path"] == "./train/r_0"
    with Image.open(root / "test" / "r_1.png") as im:
        assert im.mode == "RGBA" and im.size == (24, 24)
        alpha = im.getchannel("A")
        assert alpha.getextrema() == (0, 255)  # transparent background, opaque object
    provider = SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root)))
    assert (provider.num_train_frames(), provider.num_test_frames()) == (6, 2)
    assert provider.background == (1.0, 1.0, 1.0)
    assert provider.initial_points()[0].shape == (0, 3)


def test_train_on_it_reports_what_it_chose_and_learns(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="splatkit")
    root = write_synthetic_capture(tmp_path / "synthetic", num_train=24, num_test=4, image_size=40, supersample=2)
    out = tmp_path / "run"
    summary = tmp_path / "summary.json"
    # Data flags: none. The schedules are compressed to 300 steps so CI can afford the run.
    assert (
        main(
            [
                "train",
                "--data",
                str(root),
                "--max-steps",
                "300",
                "--init-num-points",
                "3000",
                "--sh-degree-interval",
                "60",
                "--densification.refine-start-iter",
                "60",
                "--densification.refine-every",
                "30",
                "--densification.refine-stop-iter",
                "240",
                "--output-dir",
                str(out),
                "--no-progress",
                "--summary-json",
                str(summary),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err + caplog.text
    assert "28 images of 40x40 px (24 train, 4 test)" in err
    assert "RGBA composited over (1.0, 1.0, 1.0)" in err
    assert "background (1.0, 1.0, 1.0) (the colour the RGBA images are composited over)" in err
    assert "at random in the volume the cameras see" in err
    result = json.loads(summary.read_text())
    assert result["test_images"] == 4 and result["test_psnr"] > 18.0, result
    record = json.loads((out / "trainer_config.json").read_text())
    assert record["background"] == [1.0, 1.0, 1.0] and record["initialization"]["type"] == "random"
    # Empty space renders as the white the targets were composited over: the corners of a test view.
    model = read_splat(out / "splats" / "step_000300.ply")
    provider = SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(root)))
    frame = provider.test_frame(0)
    img = Splat3DGSRenderer().render(model.params(), frame.cameras, 3, torch.ones(1, 3)).images[0]
    corners = torch.stack([img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]])
    assert float((corners - 1.0).abs().max()) < 0.1, corners
