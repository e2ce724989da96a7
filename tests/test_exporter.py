"""SplatExporter as exporter.rst specifies: paths, switches, validation, atomic writes."""

import pytest
import torch

from splatkit.modules import SplatBaseModule, SplatExporter
from splatkit.splat import SplatModel
from splatkit.trainer import SplatTrainer, SplatTrainerConfig


def _train(tmp_path, provider, exporter, steps=30, modules=()):
    trainer = SplatTrainer(
        SplatTrainerConfig(max_steps=steps, output_dir=str(tmp_path / "run")), provider, modules=[*modules, exporter]
    )
    trainer.run()
    return trainer


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_quick_start_writes_exactly_the_named_files(tmp_path, small_demo):
    out = tmp_path / "results" / "output"
    exporter = SplatExporter(output_dir=str(out), export_steps=[7, 15, 30], save_splat=True, save_ckpt=True)
    trainer = _train(tmp_path, small_demo, exporter)
    assert _names(out) == ["ckpts", "splats"]
    assert _names(out / "splats") == ["step_000007.ply", "step_000015.ply", "step_000030.ply"]
    assert _names(out / "ckpts") == ["step_000007.ckpt", "step_000015.ckpt", "step_000030.ckpt"]
    final = SplatModel.load_ply(out / "splats" / "step_000030.ply")
    for name, p in trainer.training_state.params.items():
        assert torch.equal(getattr(final, name), p.detach()), name
    # The PLY becomes a training state again, as the spec's loading example shows.
    ts = final.to_training_state(learning_rates={"means": 1e-5}, device="cpu")
    assert ts.num_gaussians == final.num_gaussians
    assert ts.optimizers["means"].param_groups[0]["lr"] == 1e-5


@pytest.mark.parametrize("save_splat,save_ckpt", [(False, True), (True, False)])
def test_switches_suppress_their_kind(tmp_path, small_demo, save_splat, save_ckpt):
    out = tmp_path / "x"
    _train(tmp_path, small_demo, SplatExporter(out, [2, 4], save_splat=save_splat, save_ckpt=save_ckpt), steps=4)
    expected = (["ckpts"] if save_ckpt else []) + (["splats"] if save_splat else [])
    assert _names(out) == expected
    if save_splat:
        assert _names(out / "splats") == ["step_000002.ply", "step_000004.ply"]
    if save_ckpt:
        assert _names(out / "ckpts") == ["step_000002.ckpt", "step_000004.ckpt"]


def test_argument_validation():
    with pytest.raises(
        ValueError, match="splat_format 'glb' is not supported; supported: 'ply', 'splat', 'spz', 'compressed_ply'"
    ):
        SplatExporter("out", [1], splat_format="glb")
    with pytest.raises(ValueError, match="export_steps must be positive .* got -5"):
        SplatExporter("out", [10, -5])
    with pytest.raises(ValueError, match="whole step numbers; 2.5 \\(float\\) is not one"):
        SplatExporter("out", [1, 2.5])
    with pytest.raises(ValueError, match="'7' \\(str\\) is not one"):
        SplatExporter("out", ["7"])
    with pytest.raises(TypeError, match="export_steps must be a list"):
        SplatExporter("out", 7000)
    with pytest.raises(TypeError, match="save_ckpt must be True or False"):
        SplatExporter("out", [1], save_ckpt="no")
    assert SplatExporter("out", [30, 7, 7]).export_steps == [7, 30]


def test_unwritable_output_dir_fails_before_step_one(tmp_path, small_demo):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    steps = []

    class Count(SplatBaseModule):
        def pre_step(self, step, **kwargs):
            steps.append(step)

    with pytest.raises(PermissionError, match="SplatExporter output_dir: cannot create folder .*file/out"):
        _train(tmp_path, small_demo, SplatExporter(blocker / "out", [1]), steps=3, modules=[Count()])
    assert steps == []
    assert blocker.read_text() == "a file, not a folder"


def test_interrupted_checkpoint_write_leaves_no_step_file(tmp_path, small_demo, monkeypatch):
    out = tmp_path / "x"
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:
            fh.truncate(100)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, small_demo, SplatExporter(out, [2]), steps=3)
    assert _names(out / "splats") == ["step_000002.ply"]
    assert _names(out / "ckpts") == []


def test_only_rank_zero_writes(tmp_path, small_demo):
    exporter = SplatExporter(tmp_path / "x", [1])
    exporter.on_setup(world_rank=1, max_steps=1)
    trainer = SplatTrainer(SplatTrainerConfig(max_steps=1, output_dir=str(tmp_path / "run")), small_demo)
    trainer.setup()
    exporter.post_step(step=1, training_state=trainer.training_state, trainer=trainer, world_rank=1)
    assert not (tmp_path / "x").exists()
