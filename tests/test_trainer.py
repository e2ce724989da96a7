"""Training like a user: train, export, resume, and the trainer's contract with modules."""

import pytest
import torch

from splatkit.densification import SplatDefaultDensification
from splatkit.modules import SplatBaseModule, SplatExporter
from splatkit.splat import SplatModel
from splatkit.trainer import SplatTrainer, SplatTrainerConfig
from splatkit.trainer.checkpoint import load_checkpoint


def _densification():
    # Small schedule so 40 steps see refinements (10, 20, 30, 40) and a reset (30).
    return SplatDefaultDensification(
        refine_start_iter=5, refine_every=10, reset_every=30, grow_grad2d=2e-5, opacity_reset=True
    )


class Recorder(SplatBaseModule):
    def __init__(self):
        self.calls = []
        self.counts = {}

    def __getattribute__(self, name):
        hooks = (
            "on_setup",
            "pre_step",
            "pre_compute_loss",
            "post_compute_loss",
            "on_optimize",
            "post_step",
            "on_cleanup",
        )
        if name in hooks:

            def hook(**kwargs):
                self.calls.append((name, kwargs["step"]))
                if name == "post_step":
                    self.counts[kwargs["step"]] = kwargs["training_state"].num_gaussians
                if name == "on_optimize":
                    assert kwargs["training_state"].params["means"].grad is not None

            return hook
        return object.__getattribute__(self, name)


def test_resume_matches_uninterrupted_run(tmp_path, small_demo):
    N = 20
    rec = Recorder()
    straight = SplatTrainer(
        SplatTrainerConfig(max_steps=2 * N, output_dir=str(tmp_path / "a"), seed=3),
        small_demo,
        densification=_densification(),
        modules=[rec, SplatExporter(tmp_path / "a", [N, 2 * N])],
    )
    straight.run()
    # The resumed half contains a densification event and an opacity reset.
    assert rec.counts[40] != rec.counts[N]
    ckpt = tmp_path / "a" / "ckpts" / f"step_{N:06d}.ckpt"
    resumed = SplatTrainer(
        SplatTrainerConfig(max_steps=2 * N, output_dir=str(tmp_path / "b"), seed=3),
        small_demo,
        densification=_densification(),
        modules=[SplatExporter(tmp_path / "b", [2 * N])],
        ckpt_path=ckpt,
    )
    resumed.run()
    a, b = straight.training_state, resumed.training_state
    assert a.num_gaussians == b.num_gaussians
    for name in a.params:
        assert (a.params[name] - b.params[name]).abs().max() <= 1e-6, name
        sa = a.optimizers[name].state[a.params[name]]
        sb = b.optimizers[name].state[b.params[name]]
        assert (sa["exp_avg"] - sb["exp_avg"]).abs().max() <= 1e-6
        assert torch.equal(sa["step"], sb["step"])
    # The final exports agree too.
    pa = SplatModel.load_ply(tmp_path / "a" / "splats" / "step_000040.ply")
    pb = SplatModel.load_ply(tmp_path / "b" / "splats" / "step_000040.ply")
    assert (pa.means - pb.means).abs().max() <= 1e-6


def test_checkpoint_contents_load_weights_only(tmp_path, small_demo):
    SplatTrainer(
        SplatTrainerConfig(max_steps=3, output_dir=str(tmp_path)),
        small_demo,
        modules=[SplatExporter(tmp_path, [3], save_splat=False)],
    ).run()
    path = tmp_path / "ckpts" / "step_000003.ckpt"
    raw = torch.load(path, weights_only=True)
    assert raw["step"] == 3 and raw["format"] == "splatkit.checkpoint"
    assert set(raw["training_state"]["params"]) == {"means", "scales", "quats", "opacities", "sh0", "shN"}
    assert set(raw["training_state"]["optimizers"]) == set(raw["training_state"]["params"])
    assert set(raw["rng"]) >= {"python", "numpy", "torch"}
    assert raw["config"]["max_steps"] == 3 and "grad2d" in raw["densification"]
    assert load_checkpoint(path)["step"] == 3


def test_hooks_run_in_documented_order(tmp_path, small_demo):
    rec = Recorder()
    SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(tmp_path)), small_demo, modules=[rec]).run()
    per_step = ["pre_step", "pre_compute_loss", "post_compute_loss", "on_optimize", "post_step"]
    expected = [("on_setup", 0)] + [(h, s) for s in (1, 2) for h in per_step] + [("on_cleanup", 2)]
    assert rec.calls == expected


def test_cleanup_runs_after_an_error(tmp_path, small_demo):
    class Boom(SplatBaseModule):
        def pre_step(self, step, **kwargs):
            if step == 2:
                raise RuntimeError("boom")

    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        SplatTrainer(SplatTrainerConfig(max_steps=5, output_dir=str(tmp_path)), small_demo, modules=[rec, Boom()]).run()
    assert rec.calls[-1] == ("on_cleanup", 2)


def test_seeded_runs_are_identical_and_learn(tmp_path, small_demo):
    def run(seed):
        t = SplatTrainer(
            SplatTrainerConfig(max_steps=80, output_dir=str(tmp_path), seed=seed), small_demo, overwrite=True
        )
        t.setup()
        start = t.evaluate()["psnr"]
        for s in range(1, 81):
            t.train_step(s)
        return t, start

    (a, start), (b, _) = run(0), run(0)
    for name in a.training_state.params:
        assert torch.equal(a.training_state.params[name], b.training_state.params[name])
    assert a.evaluate()["psnr"] > start + 1.5
    c, _ = run(1)
    assert not torch.equal(c.training_state.params["means"], a.training_state.params["means"])


def test_schedules(tmp_path, small_demo):
    t = SplatTrainer(SplatTrainerConfig(max_steps=100, sh_degree_interval=10, output_dir=str(tmp_path)), small_demo)
    assert [t.active_sh_degree(s) for s in (1, 10, 11, 21, 31, 100)] == [0, 0, 1, 2, 3, 3]
    lr0 = t.means_learning_rate(1)
    assert lr0 == pytest.approx(1.6e-4 * small_demo.scene_scale)
    assert t.means_learning_rate(101) == pytest.approx(0.01 * lr0)


def test_bad_trainer_arguments(tmp_path, small_demo):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.ckpt"):
        SplatTrainer(SplatTrainerConfig(), small_demo, ckpt_path=tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a splatkit checkpoint"):
        SplatTrainer(SplatTrainerConfig(), small_demo, ckpt_path=tmp_path / "junk.ckpt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a splatkit checkpoint \\(no 'splatkit.checkpoint' format marker"):
        SplatTrainer(SplatTrainerConfig(), small_demo, ckpt_path=tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="max_steps must be a positive integer"):
        SplatTrainerConfig(max_steps=0)
    with pytest.raises(ValueError, match="dist_mode must be 'replicate' or 'shard', got 'split'"):
        SplatTrainerConfig(dist_mode="split")
    with pytest.raises(ValueError, match="device 'tpu' is not a device name"):
        SplatTrainer(SplatTrainerConfig(device="tpu"), small_demo)
    with pytest.raises(TypeError, match="data_provider must be a SplatDataProvider"):
        SplatTrainer(SplatTrainerConfig(), object())


def test_initial_scales_use_the_three_nearest_neighbours():
    from splatkit.splat.model import knn_mean_distance

    g = torch.Generator().manual_seed(3)
    pts = torch.rand(500, 3, generator=g, dtype=torch.float64)
    pts[10] = pts[11]  # a duplicate: its nearest neighbour is at distance 0
    d2 = torch.cdist(pts, pts).square()
    d2.fill_diagonal_(float("inf"))
    brute = d2.topk(3, dim=1, largest=False).values.mean(dim=1).sqrt()
    torch.testing.assert_close(knn_mean_distance(pts), brute, rtol=1e-12, atol=1e-12)
    assert knn_mean_distance(pts.float()).dtype == torch.float32


def test_low_degree_steps_match_a_run_rendering_every_sh_band(tmp_path, small_demo, monkeypatch):
    """Renders read only the active SH bands (shN gets no gradient at degree 0); training
    is bit-identical to rendering every band, Adam states included, across degree steps."""
    import splatkit.renderer.renderer_3dgs as r3

    def train(folder):
        t = SplatTrainer(
            SplatTrainerConfig(max_steps=12, output_dir=str(tmp_path / folder), sh_degree_interval=4, seed=1),
            small_demo,
            densification=_densification(),
        )
        t.run()
        return t.training_state.state_dict()

    active = train("active")
    monkeypatch.setattr(r3, "active_bands", lambda sh0, shN, degree: (sh0, shN))  # every band, every step
    every = train("every")
    for name, p in active["params"].items():
        assert torch.equal(p, every["params"][name]), name
    for name, opt in active["optimizers"].items():
        for key, value in opt["state"][0].items():
            assert torch.equal(value, every["optimizers"][name]["state"][0][key]), (name, key)
