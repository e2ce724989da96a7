"""The command line as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from splatkit.cli import demo_setup, main
from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
from splatkit.modules import SplatExporter
from splatkit.trainer import SplatTrainer


def test_train_then_info_on_ply_and_ckpt(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            "demo",
            "--max-steps",
            "6",
            "--output-dir",
            str(out),
            "--export-steps",
            "3",
            "6",
            "--demo.num-cameras",
            "40",
            "--demo.image-size",
            "24",
            "--demo.supersample",
            "1",
            "--no-progress",
        ]
    )
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
    assert info["step"] == 3 and info["max_steps"] == 6 and info["format"] == "checkpoint"
    # Resume from the step-3 checkpoint to step 6.
    assert (
        main(
            [
                "train",
                "--max-steps",
                "6",
                "--output-dir",
                str(tmp_path / "resumed"),
                "--resume",
                str(out / "ckpts" / "step_000003.ckpt"),
                "--demo.num-cameras",
                "40",
                "--demo.image-size",
                "24",
                "--demo.supersample",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )


def test_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["info", str(tmp_path / "x.txt")]) == 2
    assert "x.txt: cannot tell the splat format from the file name" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.ply")]) == 2
    assert "ply file not found" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--resume",
                str(tmp_path / "nope.ckpt"),
                "--demo.image-size",
                "16",
                "--demo.num-cameras",
                "40",
                "--demo.supersample",
                "1",
            ]
        )
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "splatkit", "train", "--help-all"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--max-steps", "--output-dir", "--densification.grow-grad2d", "--renderer.backend", "--data"):
        assert flag in out.stdout


def test_help_fits_a_screen_and_imports_no_torch():
    """`splatkit train --help`: common flags first, the rest by group, 80 columns, under 50 lines,
    answered without importing torch (the entry point's work, as the installed script runs it)."""
    code = (
        "import sys; from splatkit.launcher import main; main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    out = subprocess.run([sys.executable, "-c", code, "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) <= 50 and max(map(len, lines)) <= 80, out.stdout
    assert lines[0] == "usage: splatkit train [FLAGS]" and "common flags:" in lines
    first = [line.split()[0] for line in lines[lines.index("common flags:") + 1 :] if line.startswith("  --")][:3]
    assert first == ["--data", "--output-dir", "--max-steps"]
    for group in ("--densification.* (", "--mcmc.* (", "--renderer.* (", "--colmap.* (", "trainer ("):
        assert any(line.startswith("  " + group) for line in lines), group
    for args, usage in (
        (["export", "-h"], "usage: splatkit export SRC DST [FLAGS]"),
        (["eval", "--help"], "usage: splatkit eval FILE [FLAGS]"),
    ):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.splitlines()[0] == usage, out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(
        f"  {c} " in out.stdout for c in ("train", "demo", "eval", "view", "export", "info")
    )
    out = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("splatkit ") and "(torch 2." in out.stdout


def test_commands_start_with_the_small_machine_thread_defaults_unless_the_environment_says_otherwise(tmp_path):
    """On a small machine the entry point sets OMP_WAIT_POLICY=PASSIVE and
    SPLATKIT_PIN_THREADS=1 before PyTorch loads (a step no longer waits out a scheduler time
    slice, or runs its kernels on one core, when another process takes a core); a value the
    user set wins, and larger machines are left alone."""
    from splatkit.launcher import SMALL_MACHINE_CPUS, THREAD_DEFAULTS, apply_thread_defaults

    code = (
        "import os, sys; from splatkit.launcher import main; main(sys.argv[1:]); "
        "print('policy', os.environ.get('OMP_WAIT_POLICY'), os.environ.get('SPLATKIT_PIN_THREADS'))"
    )
    missing = str(tmp_path / "missing.ply")
    small = (os.cpu_count() or 1) <= SMALL_MACHINE_CPUS
    cases = (
        ({}, "PASSIVE 1" if small else "None None"),
        ({"OMP_WAIT_POLICY": "ACTIVE", "SPLATKIT_PIN_THREADS": "0"}, "ACTIVE 0"),
    )
    for user, expected in cases:
        env = {k: v for k, v in os.environ.items() if k not in THREAD_DEFAULTS}
        env.update(user)
        out = subprocess.run([sys.executable, "-c", code, "info", missing], capture_output=True, text=True, env=env)
        assert f"policy {expected}" in out.stdout.splitlines(), out.stdout + out.stderr
    for cpus, expected in ((2, THREAD_DEFAULTS), (SMALL_MACHINE_CPUS + 1, {})):
        env = {}
        apply_thread_defaults(env, cpus=cpus)
        assert env == expected, (cpus, env)
    assert THREAD_DEFAULTS == {"OMP_WAIT_POLICY": "PASSIVE", "SPLATKIT_PIN_THREADS": "1"}


def test_commands_start_with_huge_pages_for_large_tensors_on_linux_unless_the_environment_says_otherwise(tmp_path):
    """On Linux the entry point sets THP_MEM_ALLOC_ENABLE=1 (PyTorch's transparent huge pages
    for large CPU tensors) before PyTorch loads; a value the user set wins; other systems are
    left alone."""
    from splatkit.launcher import MEMORY_DEFAULTS, apply_memory_defaults

    code = (
        "import os, sys; from splatkit.launcher import main; main(sys.argv[1:]); "
        "print('thp', os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    )
    missing = str(tmp_path / "missing.ply")
    linux = sys.platform == "linux"
    for user, expected in (({}, "1" if linux else "None"), ({"THP_MEM_ALLOC_ENABLE": "0"}, "0")):
        env = {k: v for k, v in os.environ.items() if k not in MEMORY_DEFAULTS}
        env.update(user)
        out = subprocess.run([sys.executable, "-c", code, "info", missing], capture_output=True, text=True, env=env)
        assert f"thp {expected}" in out.stdout.splitlines(), out.stdout + out.stderr
    for platform, expected in (("linux", MEMORY_DEFAULTS), ("darwin", {}), ("win32", {})):
        env = {}
        apply_memory_defaults(env, platform=platform)
        assert env == expected, (platform, env)
    assert MEMORY_DEFAULTS == {"THP_MEM_ALLOC_ENABLE": "1"}


def test_every_flag_is_described_in_plain_text_and_the_table_is_current():
    from splatkit.cli import flag_table
    from splatkit.launcher import FLAG_TABLE, command_help, load_table

    table = flag_table()
    assert table == load_table(), (
        f"{FLAG_TABLE.name} is out of date with the config dataclasses: run python -m splatkit.cli --write-flag-table"
    )
    for name, cmd in table["commands"].items():
        flags = [f for g in cmd["groups"] for f in g["flags"]]
        undescribed = [f["name"] for f in flags if not f["help"]] + [
            p["metavar"] for p in cmd["positionals"] if not p["help"]
        ]
        assert not undescribed, (name, undescribed)
        assert all(p["metavar"] not in ("STR", "INT") for p in cmd["positionals"]), cmd["positionals"]
        text = command_help(table, name, full=True)
        for markup in ("``", ":class:", ":mod:", ":func:", ":meth:", "{None}"):
            assert markup not in text, (name, markup)
        assert all(f["name"] in text for f in flags)
    train = {f["name"] for g in table["commands"]["train"]["groups"] for f in g["flags"]}
    assert len(train) > 100 and {"--data", "--data-factor", "--mcmc.cap-max", "--lr-shN", "--video"} <= train


@pytest.mark.slow
def test_demo_schedule_reaches_25_db(tmp_path):
    """The demo's schedule, shortened to 300 steps, already clears the 25 dB bar."""
    config, densification = demo_setup(300)
    config.output_dir = str(tmp_path)
    trainer = SplatTrainer(
        config,
        SplatDemoDataProvider(SplatDemoDataProviderConfig()),
        densification=densification,
        modules=[SplatExporter(tmp_path, [300])],
    )
    trainer.run()
    assert trainer.evaluate()["psnr"] >= 25.0


def test_train_detects_and_reports_a_colmap_scene(tmp_path, capsys, monkeypatch):
    from colmap_scenes import write_scene

    monkeypatch.setenv("SPLATKIT_CACHE", str(tmp_path / "cache"))
    scene = write_scene(tmp_path / "scene", "OPENCV", n_images=8)
    out = tmp_path / "out"
    assert (
        main(
            [
                "train",
                "--data",
                str(scene),
                "--max-steps",
                "3",
                "--output-dir",
                str(out),
                "--no-progress",
                "--colmap.factor",
                "2",
                "--colmap.test-every",
                "4",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "found COLMAP model (binary)" in err and "8 images of 32x24 px (6 train, 2 test)" in err
    assert (out / "splats" / "step_000003.ply").is_file()


def test_export_every_format_with_crop_and_opacity_filter_then_info(tmp_path, capsys):
    import torch

    from splatkit.splat.formats.checkpoint import save_checkpoint

    out = tmp_path / "run"
    demo = [
        "--demo.num-cameras",
        "16",
        "--demo.image-size",
        "24",
        "--demo.supersample",
        "1",
        "--demo.num-init-points",
        "300",
    ]
    assert (
        main(
            [
                "train",
                "--data",
                "demo",
                "--max-steps",
                "4",
                "--output-dir",
                str(out),
                "--no-progress",
                "--splat-format",
                "ply",
                "spz",
                *demo,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"wrote {out}/splats/step_000004.spz" in printed
    ckpt = out / "ckpts" / "step_000004.ckpt"
    for name in ("a.splat", "a.spz", "a.compressed.ply", "a.ply"):
        assert main(["export", str(ckpt), str(tmp_path / name)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["num_out"] == summary["num_in"] > 0, summary
        assert main(["info", str(tmp_path / name)]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["num_gaussians"] == summary["num_out"]
        assert info["sh_degree"] == (0 if name.endswith(".splat") else 3)
    assert main(["export", str(ckpt), str(tmp_path / "b.splat")]) == 0
    assert "SH degree 3 -> 0" in capsys.readouterr().err  # .splat drops view-dependent colour, and says so

    from splatkit.splat import SplatModel

    full = SplatModel.load_ply(tmp_path / "a.ply")
    lo, hi = full.means.quantile(0.2, dim=0), full.means.quantile(0.8, dim=0)
    cut = float(torch.sigmoid(full.opacities).median())
    assert (
        main(
            [
                "export",
                str(tmp_path / "a.ply"),
                str(tmp_path / "c.ply"),
                "--crop-min",
                *map(str, lo.tolist()),
                "--crop-max",
                *map(str, hi.tolist()),
                "--min-opacity",
                str(cut),
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    cropped = SplatModel.load_ply(tmp_path / "c.ply")
    assert 0 < cropped.num_gaussians == summary["num_out"] < summary["num_in"]
    assert summary["removed_by_crop"] > 0 and summary["removed_by_opacity"] > 0
    assert bool(((cropped.means >= lo) & (cropped.means <= hi)).all())
    assert bool((torch.sigmoid(cropped.opacities) >= cut).all())

    # Back to the capture's frame: the demo has no normalisation, so this is refused...
    assert main(["export", str(ckpt), str(tmp_path / "d.ply"), "--frame", "input"]) == 2
    assert "--frame input needs the capture's normalisation" in capsys.readouterr().err
    # ...while a checkpoint that holds one is mapped back with its inverse.
    state = torch.load(ckpt, weights_only=True)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] *= 0.5
    T[:3, 3] = torch.tensor([1.0, 2.0, 3.0])
    state["input_transform"] = T
    del state["blake2b"]  # edited by hand: written again with a new checksum
    save_checkpoint(tmp_path / "with_T.ckpt", state)
    assert main(["export", str(tmp_path / "with_T.ckpt"), str(tmp_path / "e.ply"), "--frame", "input"]) == 0
    capsys.readouterr()
    back = SplatModel.load_ply(tmp_path / "e.ply")
    trained = SplatModel(**state["training_state"]["params"])
    assert torch.allclose(back.means, (trained.means.double() - T[:3, 3]).float() / 0.5, atol=1e-5)
    assert torch.allclose(back.scales, trained.scales - torch.log(torch.tensor(0.5)), atol=1e-5)

    (tmp_path / "bad.spz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert main(["export", str(tmp_path / "bad.spz"), str(tmp_path / "f.ply")]) == 2
    assert "bad.spz" in capsys.readouterr().err and not (tmp_path / "f.ply").exists()
