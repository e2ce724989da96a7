"""2DGS and MCMC through the trainer, the files and the command line."""

import json

import pytest
import torch

from splatkit.cli import main
from splatkit.densification import SplatDefaultDensification, SplatMCMCDensification
from splatkit.loss_fn import Splat2DGSLossFn
from splatkit.modules import SplatBaseModule, SplatExporter
from splatkit.renderer import Splat2DGSRenderer
from splatkit.splat import SplatModel
from splatkit.trainer import SplatTrainer, SplatTrainerConfig


class Terms(SplatBaseModule):
    def __init__(self):
        self.terms = {}

    def post_compute_loss(self, step, loss, **kwargs):
        self.terms[step] = set(loss.terms)


@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_2dgs_resume_is_exact(tmp_path, small_demo, strategy):
    N = 12

    def densification():
        if strategy == "mcmc":
            return SplatMCMCDensification(refine_start_iter=2, refine_every=4, cap_max=900, min_opacity=0.05)
        return SplatDefaultDensification(
            refine_start_iter=2, refine_every=8, reset_every=20, grow_grad2d=2e-5, opacity_reset=True
        )

    def trainer(out, ckpt=None, modules=()):
        return SplatTrainer(
            SplatTrainerConfig(max_steps=2 * N, output_dir=str(out), seed=5),
            small_demo,
            renderer=Splat2DGSRenderer(),
            loss_fn=Splat2DGSLossFn(normal_start_iter=6, dist_start_iter=3),
            densification=densification(),
            modules=[SplatExporter(out, [N, 2 * N]), *modules],
            ckpt_path=ckpt,
        )

    terms = Terms()
    straight = trainer(tmp_path / "a", modules=[terms])
    straight.run()
    assert terms.terms[2] == {"l1", "dssim"} and terms.terms[N + 1] == {"l1", "dssim", "normal", "distortion"}
    resumed = trainer(tmp_path / "b", ckpt=tmp_path / "a" / "ckpts" / f"step_{N:06d}.ckpt")
    resumed.run()
    a, b = straight.training_state, resumed.training_state
    assert a.params["scales"].shape[1] == 2  # surfels
    assert a.num_gaussians == b.num_gaussians > 600
    for name in a.params:
        assert (a.params[name] - b.params[name]).abs().max() <= 1e-6, name
    if strategy == "mcmc":
        assert a.num_gaussians <= 900

    # The exported PLY has three scales (3DGS tools read it; the third is the flattened
    # normal), is marked as surfels, and reads back exactly as the 2DGS model.
    ply = tmp_path / "a" / "splats" / f"step_{2 * N:06d}.ply"
    header = ply.read_bytes()[:4000].split(b"end_header")[0].decode()
    assert "property float scale_2" in header and "comment splatkit 2dgs surfels" in header
    model = SplatModel.load_ply(ply)
    assert model.kind == "2dgs" and torch.equal(model.scales, a.params["scales"].detach())


def test_three_dgs_checkpoint_is_refused_by_the_2dgs_renderer(tmp_path, small_demo):
    SplatTrainer(
        SplatTrainerConfig(max_steps=2, output_dir=str(tmp_path / "a")),
        small_demo,
        modules=[SplatExporter(tmp_path / "a", [2])],
    ).run()
    t = SplatTrainer(
        SplatTrainerConfig(max_steps=4, output_dir=str(tmp_path / "b")),
        small_demo,
        renderer=Splat2DGSRenderer(),
        ckpt_path=tmp_path / "a" / "ckpts" / "step_000002.ckpt",
    )
    with pytest.raises(
        ValueError, match="checkpoint holds 3dgs Gaussians but the renderer Splat2DGSRenderer draws 2dgs"
    ):
        t.run()


@pytest.mark.parametrize("model", ["3dgs", "2dgs"])
@pytest.mark.parametrize("strategy", ["default", "mcmc"])
def test_every_model_strategy_combination_from_the_command_line(tmp_path, capsys, model, strategy):
    out = tmp_path / "run"
    summary = tmp_path / "summary.json"
    assert (
        main(
            [
                "train",
                "--data",
                "demo",
                "--model",
                model,
                "--strategy",
                strategy,
                "--max-steps",
                "8",
                "--demo.num-cameras",
                "16",
                "--demo.image-size",
                "24",
                "--demo.supersample",
                "1",
                "--demo.num-init-points",
                "300",
                # only the selected strategy's settings: the other's would be refused as unused
                *(
                    ["--mcmc.refine-start-iter", "2", "--mcmc.refine-every", "2", "--mcmc.cap-max", "400"]
                    if strategy == "mcmc"
                    else ["--densification.refine-start-iter", "2", "--densification.refine-every", "4"]
                ),
                "--output-dir",
                str(out),
                "--no-progress",
                "--summary-json",
                str(summary),
                "--splat-format",
                "ply",
                "spz",
            ]
        )
        == 0
    )
    result = json.loads(summary.read_text())
    assert result["model"] == model and result["strategy"] == strategy and result["test_psnr"] > 5
    saved = SplatModel.load_ply(out / "splats" / "step_000008.ply")
    assert saved.kind == model
    if strategy == "mcmc":
        assert 300 < saved.num_gaussians <= 400
    # spz holds 3D Gaussians: surfels become flat ones, and the exporter says so.
    from splatkit.splat.formats import read_splat

    assert read_splat(out / "splats" / "step_000008.spz").scales.shape[1] == 3
