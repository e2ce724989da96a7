"""Where training starts: on the point cloud, or at random inside the volume the cameras look at."""

import logging
import math

import pytest
import torch

from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w
from splatkit.splat.initialization import view_counts, view_volume_points
from splatkit.trainer import SplatTrainer, SplatTrainerConfig


def _orbit(n=60, radius=4.0, fov=0.69, size=100, scale=1.0, center=(0.0, 0.0, 0.0)):
    """Cameras on the upper hemisphere looking at ``center`` (NeRF-synthetic's rig at scale 1)."""
    c = torch.tensor(center, dtype=torch.float64)
    focal = 0.5 * size / math.tan(0.5 * fov)
    cams = []
    for i in range(n):
        elev = math.radians(10 + 70 * ((i * 0.618) % 1))
        azim = 2 * math.pi * i / n
        eye = c + scale * radius * torch.tensor(
            [math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev)], dtype=torch.float64
        )
        vm = c2w_to_viewmat(look_at_c2w(eye, c, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)))
        K = torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], dtype=torch.float64)
        cams.append(SplatCameras(vm[None].float(), K[None].float(), size, size))
    return cams


def test_random_start_fills_the_volume_every_camera_sees():
    cams = _orbit()
    pts, report = view_volume_points(cams, 50_000, torch.Generator().manual_seed(0), coverage=0.9)
    assert pts.shape == (50_000, 3)
    # The rig's common view is a ball of about 1.4 around the target (the 3DGS convention's +-1.3 cube).
    radius = pts.norm(dim=-1)
    assert 1.2 < float(radius.max()) < 1.8 and float(radius.quantile(0.5)) < 1.2
    assert report["min_views"] >= 0.9 * 60 - 1 and report["focus"] == pytest.approx([0, 0, 0], abs=1e-6)
    vm = torch.cat([c.viewmats for c in cams]).double()
    Ks = torch.cat([c.Ks for c in cams]).double()
    sizes = torch.tensor([[100.0, 100.0]] * len(cams), dtype=torch.float64)
    assert int(view_counts(pts.double(), vm, Ks, sizes, 1e-3).min()) >= report["min_views"]
    # Uniform: small cubes inside the volume hold their share of the points.
    expected = 50_000 * 0.4**3 / report["volume"]
    for c in [(0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0, 0, -0.5), (-0.5, 0, 0)]:
        inside = int(((pts - torch.tensor(c)).abs() < 0.2).all(-1).sum())
        assert inside == pytest.approx(expected, rel=0.25), c


def test_a_share_of_the_start_goes_to_the_surroundings_and_stays_in_the_hull():
    """surround: a quarter of the points beyond the common view, where a few cameras still look
    (a room around the object); with alpha masks they are carved by the visual hull like the rest."""
    cams = _orbit()
    gen = torch.Generator().manual_seed(2)
    pts, report = view_volume_points(cams, 8000, gen, coverage=0.9, surround=0.25)
    assert pts.shape == (8000, 3) and report["surround_points"] == 2000
    outside = pts.norm(dim=-1) > 1.8  # beyond the common view (previous test)
    assert 0.2 * 8000 < int(outside.sum()) <= 2000
    vm = torch.cat([c.viewmats for c in cams]).double()
    Ks = torch.cat([c.Ks for c in cams]).double()
    sizes = torch.tensor([[100.0, 100.0]] * len(cams), dtype=torch.float64)
    assert int(view_counts(pts[6000:].double(), vm, Ks, sizes, 1e-3).min()) >= report["surround_min_views"] >= 2
    # An object: a ball of radius 0.5 at the centre, drawn as a disc in every alpha image.
    alphas = []
    for c in cams:
        centre = c.Ks[0] @ c.viewmats[0, :3, 3]
        u, v = centre[0] / centre[2], centre[1] / centre[2]
        r = float(c.Ks[0, 0, 0]) * 0.5 / float(c.viewmats[0, 2, 3])
        yy, xx = torch.meshgrid(torch.arange(100.0) + 0.5, torch.arange(100.0) + 0.5, indexing="ij")
        alphas.append((((xx - u) ** 2 + (yy - v) ** 2) < r * r).float())
    carved, report = view_volume_points(cams, 4000, gen, coverage=0.9, alphas=alphas, surround=0.25)
    assert report["visual_hull"] and float(carved.norm(dim=-1).max()) < 0.8
    with pytest.raises(ValueError, match="surround must be in"):
        view_volume_points(cams, 10, gen, surround=1.0)


def test_random_start_follows_the_cameras_at_any_scale_and_place():
    a, _ = view_volume_points(_orbit(), 5000, torch.Generator().manual_seed(1), coverage=0.9)
    b, report = view_volume_points(
        _orbit(scale=50.0, center=(100.0, -20.0, 3.0)), 5000, torch.Generator().manual_seed(1), coverage=0.9
    )
    assert report["focus"] == pytest.approx([100.0, -20.0, 3.0], abs=1e-3)
    rel = (b - torch.tensor([100.0, -20.0, 3.0])) / 50.0
    assert float(rel.norm(dim=-1).max()) == pytest.approx(float(a.norm(dim=-1).max()), rel=0.1)


def test_trainer_says_how_it_started(tmp_path, caplog):
    from colmap_scenes import write_scene

    from splatkit.data_provider import SplatColmapDataProvider, SplatColmapDataProviderConfig

    caplog.set_level(logging.INFO, logger="splatkit")
    scene = write_scene(tmp_path / "scene", "PINHOLE", points=False)
    provider = SplatColmapDataProvider(SplatColmapDataProviderConfig(str(scene), str(scene / "images")))
    trainer = SplatTrainer(SplatTrainerConfig(max_steps=1, init_num_points=500, output_dir=str(tmp_path)), provider)
    trainer.setup()
    assert trainer.training_state.num_gaussians == 500
    assert (
        "initialising 500 Gaussians at random in the volume the cameras see "
        "(SplatColmapDataProvider has no point cloud)" in caplog.text
    )
    assert trainer.init_report["type"] == "random"
    with pytest.raises(ValueError, match="init_type is 'points' but SplatColmapDataProvider has no point cloud"):
        SplatTrainer(SplatTrainerConfig(init_type="points", output_dir=str(tmp_path)), provider).setup()

    with_points = SplatColmapDataProvider(
        SplatColmapDataProviderConfig(str(write_scene(tmp_path / "p", "PINHOLE")), str(tmp_path / "p" / "images"))
    )
    caplog.clear()
    t = SplatTrainer(SplatTrainerConfig(output_dir=str(tmp_path / "a")), with_points)
    t.setup()
    assert "Gaussians on the point cloud of SplatColmapDataProvider" in caplog.text
    assert t.init_report == {
        "type": "points",
        "num_points": t.training_state.num_gaussians,
        "opacity": 0.1,
        "scale": 1.0,
    }
    t = SplatTrainer(
        SplatTrainerConfig(output_dir=str(tmp_path / "b"), init_type="random", init_num_points=300), with_points
    )
    t.setup()
    assert t.training_state.num_gaussians == 300 and t.init_report["type"] == "random"


def test_the_strategy_chooses_the_start_opacity_and_scale_unless_the_config_does(tmp_path, small_demo):
    from splatkit.densification import SplatMCMCDensification
    from splatkit.splat.conventions import opacity_activation

    mcmc = SplatTrainer(
        SplatTrainerConfig(output_dir=str(tmp_path / "a")), small_demo, densification=SplatMCMCDensification()
    )
    mcmc.setup()
    assert (mcmc.init_report["opacity"], mcmc.init_report["scale"]) == (0.5, 0.1)
    assert float(opacity_activation(mcmc.training_state.params["opacities"].detach()).mean()) == pytest.approx(0.5)
    default = SplatTrainer(SplatTrainerConfig(output_dir=str(tmp_path / "b")), small_demo)
    default.setup()
    ratio = (mcmc.training_state.params["scales"] - default.training_state.params["scales"]).detach().exp()
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.1))
    given = SplatTrainer(
        SplatTrainerConfig(output_dir=str(tmp_path / "c"), init_opacity=0.2, init_scale=0.5),
        small_demo,
        densification=SplatMCMCDensification(),
    )
    given.setup()
    assert (given.init_report["opacity"], given.init_report["scale"]) == (0.2, 0.5)
