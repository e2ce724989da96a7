"""The command line as a user runs it."""

import json
import subprocess
import sys

import pytest

from splatkit.cli import demo_setup, main
from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
from splatkit.modules import SplatExporter
from splatkit.trainer import SplatTrainer


def test_train_then_info_on_ply_and_ckpt(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", "demo", "--max-steps", "6", "--output-dir", str(out), "--export-steps", "3", "6",
                 "--demo.num-cameras", "40", "--demo.image-size", "24", "--demo.supersample", "1", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test PSNR" in printed and f"wrote {out}/splats/step_000006.ply" in printed
    assert sorted(p.name for p in (out / "splats").iterdir()) == ["step_000003.ply", "step_000006.ply"]
    assert main(["info", str(out / "splats" / "step_000006.ply")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sh_degree"] == 3 and info["num_gaussians"] > 0 and len(info["bounds_min"]) == 3
    assert 0 < info["opacity"]["min"] <= info["opacity"]["max"] < 1
    assert main(["info", str(out / "ckpts" / "step_000003.ckpt")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == 3 and info["max_steps"] == 6 and info["kind"] == "splatkit checkpoint"
    # Resume from the step-3 checkpoint to step 6.
    assert main(["train", "--max-steps", "6", "--output-dir", str(tmp_path / "resumed"), "--resume",
                 str(out / "ckpts" / "step_000003.ckpt"), "--demo.num-cameras", "40", "--demo.image-size", "24",
                 "--demo.supersample", "1", "--no-progress"]) == 0


def test_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["info", str(tmp_path / "x.txt")]) == 2
    assert "unknown file type '.txt'" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.ply")]) == 2
    assert "PLY file not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope.ckpt"), "--demo.image-size", "16",
                 "--demo.num-cameras", "40", "--demo.supersample", "1"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "splatkit", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--max-steps", "--output-dir", "--densification.grow-grad2d", "--renderer.backend", "--data"):
        assert flag in out.stdout


@pytest.mark.slow
def test_demo_schedule_reaches_25_db(tmp_path):
    """The demo's schedule, shortened to 300 steps, already clears the 25 dB bar."""
    config, densification = demo_setup(300)
    config.output_dir = str(tmp_path)
    trainer = SplatTrainer(config, SplatDemoDataProvider(SplatDemoDataProviderConfig()),
                           densification=densification, modules=[SplatExporter(tmp_path, [300])])
    trainer.run()
    assert trainer.evaluate()["psnr"] >= 25.0


def test_train_detects_and_reports_a_colmap_scene(tmp_path, capsys, monkeypatch):
    from colmap_scenes import write_scene

    monkeypatch.setenv("SPLATKIT_CACHE", str(tmp_path / "cache"))
    scene = write_scene(tmp_path / "scene", "OPENCV", n_images=8)
    out = tmp_path / "out"
    assert main(["train", "--data", str(scene), "--max-steps", "3", "--output-dir", str(out), "--no-progress",
                 "--colmap.factor", "2", "--colmap.test-every", "4"]) == 0
    err = capsys.readouterr().err
    assert "found COLMAP model (binary)" in err and "8 images (6 train, 2 test)" in err
    assert (out / "splats" / "step_000003.ply").is_file()


def test_random_init_when_the_capture_has_no_points(tmp_path, caplog):
    from colmap_scenes import write_scene

    from splatkit.data_provider import SplatColmapDataProvider, SplatColmapDataProviderConfig
    from splatkit.trainer import SplatTrainerConfig

    scene = write_scene(tmp_path / "scene", "PINHOLE", points=False)
    provider = SplatColmapDataProvider(SplatColmapDataProviderConfig(str(scene), str(scene / "images")))
    trainer = SplatTrainer(SplatTrainerConfig(max_steps=1, init_num_points=500, output_dir=str(tmp_path)), provider)
    trainer.setup()
    assert trainer.training_state.num_gaussians == 500
    assert "no initial point cloud; initialising 500 Gaussians at random" in caplog.text
