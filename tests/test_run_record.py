"""A run records what it was trained on, so eval and resume need no data flags retyped,
and nothing falls back silently to the demo scene."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from splatkit.cli import main
from splatkit.data_provider import SplatBlenderDataProviderConfig, SplatDemoDataProviderConfig
from splatkit.data_provider.demo import SplatDemoDataProvider, write_synthetic_capture
from splatkit.data_provider.detect import data_record, provider_from_record
from splatkit.data_provider.images import DataError

SMALL = ["--demo.image-size", "32", "--demo.num-cameras", "16", "--demo.num-init-points", "400", "--no-progress"]


def test_eval_and_resume_use_the_recorded_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "demo", *SMALL, "--max-steps", "20", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    run = json.loads((out / "trainer_config.json").read_text())
    record = run["data"]
    assert record["kind"] == "demo" and record["config"]["image_size"] == 32
    # the modules and their settings, not only their classes
    modules = {m["class"].rsplit(".", 1)[1]: m for m in run["modules"]}
    assert modules["SplatExporter"]["splat_format"] == ["ply"] and modules["SplatExporter"]["export_steps"] == [20]
    assert modules["SplatEvaluator"]["eval_steps"] == [20] and modules["SplatEvaluator"]["video"] is False
    # ... and the settings dataclass each was built from, as the flags gave it
    assert modules["SplatExporter"]["config"]["class"].endswith("SplatExporterConfig")
    assert modules["SplatEvaluator"]["config"]["eval_steps"] == [] and modules["SplatExporter"]["config"]["save_ckpt"]
    ckpt = out / "ckpts" / "step_000020.ckpt"
    flags = ["eval", str(ckpt), "--output-dir"]
    assert main([*flags, str(tmp_path / "recorded")]) == 0  # no --data: the checkpoint's
    assert main([*flags, str(tmp_path / "given"), "--data", "demo", *SMALL[:-1]]) == 0
    recorded = json.loads((tmp_path / "recorded/stats/step_000020.json").read_text())
    given = json.loads((tmp_path / "given/stats/step_000020.json").read_text())
    assert recorded["psnr"] == pytest.approx(given["psnr"], abs=1e-9) and recorded["num_images"] == 2
    trained = json.loads((out / "stats" / "step_000020.json").read_text())  # the run's own final evaluation
    assert recorded["psnr"] == pytest.approx(trained["psnr"], abs=1e-6)
    # resume without --data trains on the recorded scene
    assert main(["train", "--resume", str(ckpt), "--max-steps", "25", "--output-dir", str(out), "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "ckpts" / "step_000025.ckpt").is_file()


def test_without_data_or_record_it_asks_for_data(tmp_path, capsys):
    from splatkit.splat.formats import read_splat, write_splat

    out = tmp_path / "run"
    assert main(["train", "--data", "demo", *SMALL, "--max-steps", "5", "--output-dir", str(out)]) == 0
    ply = write_splat(read_splat(out / "ckpts" / "step_000005.ckpt"), tmp_path / "m.ply")
    capsys.readouterr()
    assert main(["eval", str(ply), "--output-dir", str(tmp_path / "e")]) == 2
    assert "does not record the data it was trained on" in capsys.readouterr().err
    assert main(["train", "--max-steps", "5", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_records_rebuild_the_same_provider(tmp_path):
    write_synthetic_capture(tmp_path / "cap", num_train=4, num_test=2, image_size=16, supersample=1)
    from splatkit.data_provider import SplatBlenderDataProvider

    provider = SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(tmp_path / "cap"), factor=1))
    record = data_record(provider)
    assert record["kind"] == "blender" and record["config"]["data_path"] == str((tmp_path / "cap").resolve())
    again = provider_from_record(json.loads(json.dumps(record)))
    assert again.num_train_frames() == 4 and again.num_test_frames() == 2
    assert (again.train_frame(1).images == provider.train_frame(1).images).all()
    demo = SplatDemoDataProvider(SplatDemoDataProviderConfig(image_size=16, num_cameras=8))
    assert provider_from_record(data_record(demo)).config == demo.config
    with pytest.raises(DataError, match="not a splatkit data record"):
        provider_from_record({"kind": "os.system", "config": {}})


def test_version(capsys):
    from splatkit import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"splatkit {__version__}")


def _cmd(*args):
    import tyro

    from splatkit.cli import TrainCommand

    return tyro.cli(TrainCommand, args=list(args))


def test_given_flags_are_never_overridden_or_ignored(capsys):
    from splatkit.cli import check_unused_flags, components

    _, loss, _ = components(_cmd("--strategy", "mcmc", "--loss.opacity-reg", "0.05"))
    assert loss.opacity_reg == 0.05 and loss.scale_reg == 0.01  # the user's value; gsplat's preset for the other
    with pytest.raises(ValueError, match="disagree"):
        components(_cmd("--strategy", "mcmc", "--loss.opacity-reg", "0.05", "--mcmc-opacity-reg", "0.02"))
    with pytest.raises(ValueError, match=r"--densification.grow-grad2d \(used with --strategy default\)"):
        check_unused_flags(_cmd("--strategy", "mcmc", "--densification.grow-grad2d", "0.001"))
    with pytest.raises(ValueError, match=r"--renderer-2dgs.backend \(used with --model 2dgs\)"):
        check_unused_flags(_cmd("--renderer-2dgs.backend", "torch"))
    with pytest.raises(ValueError, match=r"--video-frames \(used with --video\); --viewer-port \(used with --viewer\)"):
        check_unused_flags(_cmd("--viewer-port", "9000", "--video-frames", "10"))
    assert main(["train", "--data", "demo", "--colmap.factor", "2", "--max-steps", "1", "--no-progress"]) == 2
    assert "--colmap.factor" in capsys.readouterr().err


_NEW_STRATEGY = """
import dataclasses, sys
import tyro
from splatkit import registry
from splatkit.densification import SplatDefaultDensification

@dataclasses.dataclass
class Sparse(SplatDefaultDensification):
    keep_every: int = 3
    \"\"\"Keep one Gaussian in this many.\"\"\"

registry.STRATEGIES["sparse"] = registry.Choice(
    "sparse", "a strategy of one's own", (registry.Group("sparse", Sparse, "densification", "Sparse settings."),)
)
from splatkit.cli import TrainCommand, check_unused_flags, components  # the command line is built from the tables

cmd = tyro.cli(TrainCommand, args=sys.argv[1:])
check_unused_flags(cmd)
renderer, loss, densification = components(cmd)
print(type(densification).__name__, densification.keep_every)
"""


def test_a_new_strategy_is_one_registration(tmp_path):
    """An entry in splatkit.registry.STRATEGIES is all a strategy needs: --strategy takes its name,
    its settings are flags, and they are an error without it, as every group's are."""
    script = tmp_path / "new_strategy.py"
    script.write_text(_NEW_STRATEGY)

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)

    ok = run("--strategy", "sparse", "--sparse.keep-every", "5")
    assert ok.returncode == 0 and ok.stdout.split() == ["Sparse", "5"], ok.stderr
    unused = run("--sparse.keep-every", "5")
    assert unused.returncode != 0 and "--sparse.keep-every (used with --strategy sparse)" in unused.stderr
    from splatkit.registry import STRATEGIES

    assert "sparse" not in STRATEGIES  # this process's registry is untouched


_NEW_MODULE = """
import dataclasses, sys
import tyro
from splatkit import registry
from splatkit.modules import SplatBaseModule

class Beeper(SplatBaseModule):
    def __init__(self, every):
        self.every = every

@dataclasses.dataclass
class BeeperConfig:
    beep: bool = False
    \"\"\"Beep while training.\"\"\"
    beep_every: int = 10
    \"\"\"Steps between beeps.\"\"\"

    def build(self, output_dir, max_steps):
        return Beeper(self.beep_every) if self.beep else None

registry.MODULES["beeper"] = registry.ModuleEntry("beeper", BeeperConfig, "Beeps.", switch="beep")
from splatkit.cli import TrainCommand, check_unused_flags  # the command line is built from the tables

cmd = tyro.cli(TrainCommand, args=sys.argv[1:])
check_unused_flags(cmd)
mods = registry.modules("out", 100, **{name: getattr(cmd, name) for name in registry.MODULES})
print(*[type(m).__name__ for m in mods], *[m.every for m in mods if type(m).__name__ == "Beeper"])
"""


def test_a_new_module_is_one_registration(tmp_path):
    """An entry in splatkit.registry.MODULES is all a module needs: its settings are flags, its
    switch turns it on, and its other flags are an error while it is off."""
    script = tmp_path / "new_module.py"
    script.write_text(_NEW_MODULE)

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)

    ok = run("--beep", "--beep-every", "5", "--no-progress")
    assert ok.returncode == 0 and ok.stdout.split() == ["SplatExporter", "SplatEvaluator", "Beeper", "5"], ok.stderr
    unused = run("--beep-every", "5")
    assert unused.returncode != 0 and "--beep-every (used with --beep)" in unused.stderr
    from splatkit.registry import MODULES

    assert "beeper" not in MODULES  # this process's registry is untouched


def test_modules_are_built_from_their_settings():
    from splatkit.modules import SplatEvaluator, SplatExporter, SplatProgressTracker, SplatViewer
    from splatkit.registry import modules

    built = modules("out", 300, evaluator={"eval_steps": (100, 300)}, viewer={"viewer": True, "viewer_port": 9001})
    assert [type(m) for m in built] == [SplatProgressTracker, SplatExporter, SplatEvaluator, SplatViewer]
    assert built[1].export_steps == [300] and built[2].eval_steps == [100, 300] and built[3].port == 9001
    assert built[2].config.eval_steps == (100, 300)
    cmd = _cmd("--eval-steps", "100", "300", "--viewer", "--viewer-port", "9001")
    assert cmd.evaluator == built[2].config and cmd.viewer == built[3].config  # the flags are the settings
    with pytest.raises(ValueError, match=r"ignored: viewer_port \(unused while viewer is off\)"):
        modules("out", 300, viewer={"viewer_port": 9001})
    with pytest.raises(ValueError, match=r"ignored: video_frames \(unused while video is off\)"):
        modules("out", 300, evaluator={"video_frames": 10})
    with pytest.raises(ValueError, match="unknown modules wandb; the modules are: progress, exporter"):
        modules("out", 300, wandb={})


def test_the_registry_builds_what_the_command_line_builds():
    from splatkit.cli import components as cli_components
    from splatkit.registry import components

    # The command line builds exactly the groups its flags parsed (the loss gets MCMC's preset).
    groups = {"3dgs": ("renderer", "loss"), "2dgs": ("renderer_2dgs", "loss_2dgs")}
    for model in ("3dgs", "2dgs"):
        for strategy, dens in (("default", "densification"), ("mcmc", "mcmc")):
            render_group = f"--{groups[model][0].replace('_', '-')}.tile-size"
            cmd = _cmd("--model", model, "--strategy", strategy, render_group, "8", f"--{dens}.refine-every", "50")
            renderer, loss, densification = cli_components(cmd)
            assert renderer == getattr(cmd, groups[model][0]) and renderer.tile_size == 8
            assert densification == getattr(cmd, dens) and densification.refine_every == 50
            assert loss.opacity_reg == (0.01 if strategy == "mcmc" else getattr(cmd, groups[model][1]).opacity_reg)
            assert (renderer, loss, densification) == components(
                model, strategy, **{groups[model][0]: {"tile_size": 8}, dens: {"refine_every": 50}}
            )
    _, loss, _ = components("3dgs", "mcmc", loss={"opacity_reg": 0.05})
    assert (loss.opacity_reg, loss.scale_reg) == (0.05, 0.01)  # a given setting wins over the strategy's preset
    with pytest.raises(ValueError, match="settings for mcmc are not used"):
        components("3dgs", "default", mcmc={"cap_max": 10})
    with pytest.raises(ValueError, match="unknown strategy 'adc'; choose one of: default, mcmc"):
        components("3dgs", "adc")


def test_one_downscale_flag_for_every_format(tmp_path):
    from splatkit.cli import build_trainer

    write_synthetic_capture(tmp_path / "cap", num_train=4, num_test=2, image_size=32, supersample=1)
    cmd = _cmd("--data", str(tmp_path / "cap"), "--data-factor", "2", "--output-dir", str(tmp_path / "o"))
    trainer, _ = build_trainer(cmd)
    assert trainer.data_provider.train_frame(0).images.shape[1:3] == (16, 16)
    with pytest.raises(ValueError, match="disagree"):
        build_trainer(_cmd("--data", str(tmp_path / "cap"), "--data-factor", "2", "--blender.factor", "4"))


def test_module_state_follows_the_module_not_its_position(tmp_path, small_demo):
    from splatkit.modules import SplatEvaluator, SplatExporter, SplatProgressTracker
    from splatkit.trainer import SplatTrainer, SplatTrainerConfig

    out = tmp_path / "run"
    first = SplatEvaluator(out, eval_steps=[4], save_images=False, lpips_net=None)
    exporter = SplatExporter(out, export_steps=[4], save_splat=False, save_ckpt=True)
    modules = [SplatProgressTracker(stream=open(os.devnull, "w")), first, exporter]
    SplatTrainer(SplatTrainerConfig(max_steps=4, output_dir=str(out)), small_demo, modules=modules).run()
    again = SplatEvaluator(out, eval_steps=[6], save_images=False, lpips_net=None)
    SplatTrainer(
        SplatTrainerConfig(max_steps=6, output_dir=str(out)),
        small_demo,
        modules=[again, SplatExporter(out, export_steps=[6], save_splat=False, save_ckpt=False)],
        ckpt_path=out / "ckpts" / "step_000004.ckpt",
    ).run()
    assert [h["step"] for h in again.history] == [4, 6]


def test_the_demo_command_runs_twice_into_its_folder(tmp_path, capsys):
    """The README's first command: `splatkit demo` needs no --data and replaces its own results."""
    args = ["demo", "--steps", "10", "--output-dir", str(tmp_path / "demo"), "--no-progress"]
    assert main(args) == 0
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out


def test_module_state_is_keyed_by_state_key_and_strays_are_reported(tmp_path, small_demo, caplog):
    """Lightning's rule: state follows state_key, not list position; two stateful modules with one
    key are refused; state that finds no module, and a module that finds no state, are warned about."""
    from splatkit.modules import SplatBaseModule, SplatExporter
    from splatkit.trainer import SplatTrainer, SplatTrainerConfig

    class Counter(SplatBaseModule):
        def __init__(self, name):
            self.name, self.steps = name, 0

        @property
        def state_key(self):
            return f"Counter[{self.name}]"

        def post_step(self, **kwargs):
            self.steps += 1 if self.name == "a" else 10

        def state_dict(self):
            return {"steps": self.steps}

        def load_state_dict(self, state):
            self.steps = state["steps"]

    out = tmp_path / "run"
    cfg = SplatTrainerConfig(max_steps=3, output_dir=str(out))
    export = SplatExporter(out, export_steps=[3], save_splat=False)
    SplatTrainer(cfg, small_demo, modules=[Counter("a"), Counter("b"), export]).run()
    ckpt = out / "ckpts" / "step_000003.ckpt"
    a, b = Counter("a"), Counter("b")
    SplatTrainer(cfg, small_demo, modules=[b, a], ckpt_path=ckpt).run()  # swapped; no steps left to run
    assert (a.steps, b.steps) == (3, 30)

    caplog.clear()
    only_c = Counter("c")
    SplatTrainer(cfg, small_demo, modules=[only_c], ckpt_path=ckpt).run()
    assert only_c.steps == 0
    assert "Counter[c] starts afresh" in caplog.text
    assert "not in this run, not restored: ['Counter[a]', 'Counter[b]']" in caplog.text
    with pytest.raises(ValueError, match=r"distinct state_key.*\['Counter\[a\]'\]"):
        SplatTrainer(cfg, small_demo, modules=[Counter("a"), Counter("a")])
