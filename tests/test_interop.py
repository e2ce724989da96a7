"""Files exchanged with the tools people use: files written by third-party writers from
PyPI (gsply; gaussforge, which packs .spz with Niantic's own C++ library) open in
splatkit the right way up (renders from fixed cameras within 40 dB of the source model)
and round-trip; splatkit's files open in their readers with the same coordinates. Also:
no opacity byte that decoders turn into +inf, clamped non-finite values, and the
3DGS-readable 2DGS PLY."""

import json
import logging
import math

import numpy as np
import pytest
import torch

from splatkit.renderer import rasterize
from splatkit.splat import SplatModel
from splatkit.splat.conventions import SURFEL_LOG_THICKNESS
from splatkit.splat.formats import read_splat, write_splat
from splatkit.splat.ply import SplatFileError
from splatkit.splat.sh import SH_C0
from splatkit.testing import cameras, inria_load_ply

gsply = pytest.importorskip("gsply", reason="gsply (test extra) writes and reads the third-party PLY/.spz files")
gaussforge = pytest.importorskip("gaussforge", reason="gaussforge (test extra) runs Niantic's .spz library")

PSNR_FLOOR = 40.0


def _source(n=2000, sh_degree=1, seed=11):
    """A model inside every format's range whose quantised copies render within 40 dB."""
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2
    rgb = torch.rand(n, 1, 3, generator=g) * 0.8 + 0.1
    return SplatModel(
        means=(torch.rand(n, 3, generator=g) * 2 - 1) * torch.tensor([1.0, 0.6, 0.3]),  # no symmetry to hide a flip
        scales=torch.rand(n, 3, generator=g) * (math.log(0.1) - math.log(0.02)) + math.log(0.02),
        # unit quaternions: gaussforge's SOG writer packs them without normalising
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        opacities=torch.randn(n, generator=g) * 1.5,
        sh0=(rgb - 0.5) / SH_C0,
        shN=(torch.rand(n, K - 1, 3, generator=g) - 0.5) * 0.3,
    )


def _render(model):
    viewmats, Ks = cameras(64, 48, n=4, dtype=torch.float32)
    a = model.activated()
    img, _, _ = rasterize(
        a["means"],
        a["quats"],
        a["scales"],
        a["opacities"],
        a["colors"],
        viewmats,
        Ks,
        64,
        48,
        sh_degree=model.sh_degree,
        backend="cpu",
    )
    return img.clamp(0, 1)


def _psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _gsdata(model):
    p = {k: v.detach().numpy().astype(np.float32) for k, v in model.params().items()}
    return gsply.GSData(
        means=p["means"],
        scales=p["scales"],
        quats=p["quats"] / np.linalg.norm(p["quats"], axis=1, keepdims=True),
        opacities=p["opacities"],
        sh0=p["sh0"][:, 0],
        shN=p["shN"],
    )


def _gaussforge(data: bytes, src: str, dst: str, **kw) -> bytes:
    out = gaussforge.GaussForge().convert(data, src, dst, **kw)
    assert "data" in out, out
    return out["data"]


def _gaussforge_positions(data: bytes, fmt: str) -> np.ndarray:
    ir = gaussforge.GaussForge().read(data, fmt)
    assert "data" in ir, ir
    return np.frombuffer(ir["data"]["positions"], dtype="<f4").reshape(-1, 3)


def _third_party_files(model, tmp_path):
    """(name, path) of files the third-party writers made of ``model``."""
    gsply.plywrite(str(tmp_path / "gsply.ply"), _gsdata(model))
    gsply.write_spz(str(tmp_path / "gsply_v3.spz"), _gsdata(model), version=3)
    gsply.write_spz(str(tmp_path / "gsply_v4.spz"), _gsdata(model), version=4)
    ply = (tmp_path / "gsply.ply").read_bytes()
    files = {name: tmp_path / name for name in ("gsply.ply", "gsply_v3.spz", "gsply_v4.spz")}
    for name, fmt, kw in (
        ("niantic_v3.spz", "spz", {"spz_version": 3}),
        ("niantic_v4.spz", "spz", {"spz_version": 4}),
        ("gaussforge.compressed.ply", "compressed.ply", {}),
    ):
        (tmp_path / name).write_bytes(_gaussforge(ply, "ply", fmt, **kw))
        files[name] = tmp_path / name
    return files


def test_third_party_files_open_the_right_way_up_and_round_trip(tmp_path):
    model = _source()
    reference = _render(model)
    report = {}
    for name, path in _third_party_files(model, tmp_path).items():
        loaded = read_splat(path)
        assert loaded.num_gaussians == model.num_gaussians and loaded.sh_degree == 1, name
        report[name] = _psnr(_render(loaded), reference)
        # Written again by splatkit in the same format, it renders the same.
        again = read_splat(write_splat(loaded, tmp_path / f"again_{name}"))
        report[f"{name} -> splatkit"] = _psnr(_render(again), reference)
    print("third-party files, render PSNR against the source (dB):", {k: round(v, 1) for k, v in report.items()})
    for name, value in report.items():
        assert value >= PSNR_FLOOR, f"{name}: {value:.1f} dB"


def test_a_flipped_spz_would_fail_the_orientation_check(tmp_path):
    """The check above has teeth: reading a Niantic-written file with the other axes
    convention (the old behaviour) renders the model turned 180 degrees about x."""
    model = _source()
    path = tmp_path / "n.spz"
    path.write_bytes(_gaussforge(write_splat(model, tmp_path / "s.ply").read_bytes(), "ply", "spz"))
    assert _psnr(_render(read_splat(path, spz_axes="rub")), _render(model)) < 30.0  # measured 23 dB


def test_ksplat_written_by_gaussforge_opens_the_right_way_up(tmp_path):
    """gaussforge's .ksplat writer stores SH in PLY's f_rest order, not GaussianSplats3D's
    band-by-band order that splatkit and splat-transform read, so the check uses SH degree 0."""
    model = _source(sh_degree=0)
    path = tmp_path / "gaussforge.ksplat"
    path.write_bytes(_gaussforge(write_splat(model, tmp_path / "s.ply").read_bytes(), "ply", "ksplat"))
    loaded = read_splat(path)
    assert torch.equal(loaded.means, model.means)
    assert _psnr(_render(loaded), _render(model)) >= PSNR_FLOOR
    again = read_splat(write_splat(loaded, tmp_path / "again.ksplat"))
    assert _psnr(_render(again), _render(model)) >= PSNR_FLOOR


def test_splat_written_by_gaussforge_opens_the_right_way_up(tmp_path):
    """antimatter15 .splat keeps no SH: the source has SH degree 0."""
    model = _source(sh_degree=0)
    path = tmp_path / "gaussforge.splat"
    path.write_bytes(_gaussforge(write_splat(model, tmp_path / "s.ply").read_bytes(), "ply", "splat"))
    loaded = read_splat(path)
    assert loaded.num_gaussians == model.num_gaussians and loaded.sh_degree == 0
    assert _psnr(_render(loaded), _render(model)) >= PSNR_FLOOR
    again = read_splat(write_splat(loaded, tmp_path / "again.splat"))
    assert _psnr(_render(again), _render(model)) >= PSNR_FLOOR


def test_sog_written_by_gaussforge_opens_the_right_way_up(tmp_path):
    """SOG: positions in 16 bits of a log-mapped range, scales and colours by 256-entry
    codebooks, SH through a palette; the render stays within 40 dB of the source."""
    model = _source()
    path = tmp_path / "gaussforge.sog"
    path.write_bytes(_gaussforge(write_splat(model, tmp_path / "s.ply").read_bytes(), "ply", "sog"))
    loaded = read_splat(path)
    assert loaded.num_gaussians == model.num_gaussians and loaded.sh_degree == 1
    psnr = _psnr(_render(loaded), _render(model))
    print(f"gaussforge .sog, render PSNR against the source: {psnr:.1f} dB")
    assert psnr >= PSNR_FLOOR
    assert _psnr(_render(read_splat(path, spz_axes="rub")), _render(model)) >= PSNR_FLOOR  # spz_axes: .spz only
    again = read_splat(write_splat(loaded, tmp_path / "again.sog"))  # splatkit's writer, round trip
    assert _psnr(_render(again), _render(model)) >= PSNR_FLOOR
    bad = tmp_path / "bad.sog"
    bad.write_bytes(b"PK" + bytes(40))
    with pytest.raises(SplatFileError, match="not a .sog file: not a zip bundle"):
        read_splat(bad)
    # A flipped byte inside meta.json's data: zipfile's CRC check raised BadZipFile (a traceback).
    import zipfile

    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("meta.json")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0x20
    bad.write_bytes(bytes(data))
    with pytest.raises(SplatFileError, match="meta.json"):
        read_splat(bad)


# .splat is not here: gaussforge 0.6's .splat reader fails on every file, its own included ("std::bad_cast").
@pytest.mark.parametrize("suffix", [".ply", ".spz", ".compressed.ply", ".ksplat", ".sog"])
def test_splatkit_files_have_the_same_coordinates_in_niantics_reader(tmp_path, suffix):
    model = _source(n=300)
    path = write_splat(model, tmp_path / f"m{suffix}")
    fmt = suffix.lstrip(".")
    got = _gaussforge_positions(path.read_bytes(), fmt)
    # The same bytes decode to the same points in file order (a mirror would be off by ~1).
    assert np.abs(got - read_splat(path).means.numpy()).max() < 1e-5


def test_splatkit_sog_decodes_the_same_in_gaussforge(tmp_path):
    """Everything in splatkit's .sog (not only positions) decodes to the same values in
    gaussforge's SOG reader, and the file renders within 40 dB of the model it was written from."""
    model = _source(n=3000, sh_degree=2)
    path = write_splat(model, tmp_path / "m.sog")
    ours = read_splat(path)
    ir = gaussforge.GaussForge().read(path.read_bytes(), "sog")["data"]
    n = ours.num_gaussians

    def field(name, width):
        return np.frombuffer(ir[name], dtype="<f4").reshape(n, width)

    assert np.abs(field("positions", 3) - ours.means.numpy()).max() < 1e-5
    assert np.abs(field("scales", 3) - ours.scales.numpy()).max() < 1e-5
    assert np.abs(field("colors", 3) - ours.sh0.numpy()[:, 0]).max() < 1e-5
    theirs_q = field("rotations", 4)
    assert np.abs(np.abs((theirs_q * ours.quats.numpy()).sum(1)) - 1).max() < 1e-5  # same rotation
    alpha = 1 / (1 + np.exp(-field("alphas", 1)[:, 0]))
    # splatkit reads opacity byte 0 half a step inside (0, 1), so its logit stays finite
    assert np.abs(alpha - torch.sigmoid(ours.opacities).numpy()).max() <= 0.5 / 255 + 1e-6
    assert np.abs(field("sh", 24) - ours.shN.reshape(n, 24).numpy()).max() < 1e-5  # coefficient-major in its IR
    assert _psnr(_render(ours), _render(model)) >= PSNR_FLOOR


def test_splatkit_spz_in_gsply_has_the_same_coordinates(tmp_path):
    model = _source(n=300)
    for version in (3, 4):
        path = write_splat(model, tmp_path / f"v{version}.spz", spz_version=version)
        got = gsply.read_spz(str(path))
        assert np.abs(np.asarray(got.means) - model.means.numpy()).max() <= 2.0**-13 + 1e-6, version


def test_no_quantised_writer_emits_an_infinite_opacity(tmp_path):
    """Opacity byte 255 decodes to logit +inf in Niantic's library: splatkit writes 254 at most."""
    model = _source(n=50)
    model.opacities[:10] = 12.0  # sigmoid 0.999994
    path = write_splat(model, tmp_path / "m.spz")
    ir = gaussforge.GaussForge().read(path.read_bytes(), "spz")["data"]
    alphas = np.frombuffer(ir["alphas"], dtype="<f4")
    assert np.isfinite(alphas).all() and alphas.max() > 5.0
    for suffix in (".splat", ".compressed.ply"):
        loaded = read_splat(write_splat(model, tmp_path / f"m{suffix}"))
        assert float(torch.sigmoid(loaded.opacities).max()) == pytest.approx(254 / 255, abs=1e-6), suffix
    # A file that does hold byte 255 (another writer's) still reads as a finite logit.
    third = tmp_path / "third.spz"
    third.write_bytes(_gaussforge(write_splat(model, tmp_path / "m.ply").read_bytes(), "ply", "spz"))
    assert torch.isfinite(read_splat(third).opacities).all()


def test_non_finite_values_are_clamped_with_a_count_or_refused(tmp_path, caplog):
    model = _source(n=20)
    data = _gsdata(model)
    data.opacities[:3] = np.inf
    data.opacities[3] = -np.inf
    gsply.plywrite(str(tmp_path / "inf.ply"), data)
    with caplog.at_level(logging.WARNING):
        loaded = read_splat(tmp_path / "inf.ply")
    assert "4 of 20 opacities are infinite" in caplog.text
    assert torch.isfinite(loaded.opacities).all() and float(torch.sigmoid(loaded.opacities[0])) > 0.99999
    data = _gsdata(model)
    data.means[5, 1] = np.nan
    gsply.plywrite(str(tmp_path / "nan.ply"), data)
    with pytest.raises(SplatFileError, match="1 of 60 values of 'means' are NaN"):
        read_splat(tmp_path / "nan.ply")
    with pytest.raises(SplatFileError, match="NaN"):
        SplatModel.load_ply(tmp_path / "nan.ply")


def _surfels(n=40):
    g = torch.Generator().manual_seed(3)
    return SplatModel(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 2, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g) * 0.3,
        shN=torch.randn(n, 3, 3, generator=g) * 0.1,
    )


def test_2dgs_ply_opens_in_3dgs_tools_and_reads_back_as_surfels(tmp_path):
    from plyfile import PlyData

    model = _surfels()
    path = write_splat(model, tmp_path / "s.ply")
    # The INRIA loader's way: plyfile, then every scale_* property in order.
    vertex = PlyData.read(str(path))["vertex"]
    names = sorted((p.name for p in vertex.properties if p.name.startswith("scale_")), key=lambda s: int(s[6:]))
    assert names == ["scale_0", "scale_1", "scale_2"]
    assert np.all(np.asarray(vertex["scale_2"]) == SURFEL_LOG_THICKNESS)
    assert gsply.plyread(str(path)).scales.shape == (40, 3)  # gsply refuses two-scale files
    scales = gaussforge.GaussForge().read(path.read_bytes(), "ply")["data"]["scales"]
    assert np.isfinite(np.frombuffer(scales, "<f4")).all()
    back = read_splat(path)
    assert back.kind == "2dgs"
    for name, t in model.params().items():
        assert torch.equal(getattr(back, name), t), name

    surfel = write_splat(model, tmp_path / "surfel.ply", surfel_ply=True)  # the 2DGS reference layout
    names = [p.name for p in PlyData.read(str(surfel))["vertex"].properties if p.name.startswith("scale_")]
    assert names == ["scale_0", "scale_1"]
    back = read_splat(surfel)
    assert back.kind == "2dgs" and torch.equal(back.scales, model.scales)


def test_export_command_spz_axes_version_and_surfel_layout(tmp_path, capsys):
    from splatkit.cli import main

    model = _source(n=200)
    src = write_splat(model, tmp_path / "m.ply")
    assert main(["export", str(src), str(tmp_path / "rub.spz"), "--spz-axes", "rub", "--spz-version", "4"]) == 0
    raw = (tmp_path / "rub.spz").read_bytes()
    assert raw[:4] == b"NGSP" and int.from_bytes(raw[4:8], "little") == 4
    as_is = read_splat(tmp_path / "rub.spz")  # read without conversion: y and z turned over
    assert torch.allclose(as_is.means, model.means * torch.tensor([1.0, -1.0, -1.0]), atol=2.0**-12)
    assert main(["export", str(tmp_path / "rub.spz"), str(tmp_path / "back.ply"), "--spz-axes", "rub"]) == 0
    assert torch.allclose(read_splat(tmp_path / "back.ply").means, model.means, atol=2.0**-12)

    surfels = write_splat(_surfels(), tmp_path / "s.ply")
    assert main(["export", str(surfels), str(tmp_path / "surfel.ply"), "--surfel-ply"]) == 0
    header = (tmp_path / "surfel.ply").read_bytes()[:2000]
    assert b"scale_1" in header and b"scale_2" not in header
    capsys.readouterr()


def test_train_writes_the_inria_folder_layout(tmp_path, capsys):
    from argparse import Namespace

    from splatkit.cli import main
    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
    from splatkit.splat.conventions import camera_centers

    out = tmp_path / "run"
    demo = ["--demo.num-cameras", "12", "--demo.image-size", "24", "--demo.supersample", "1"]
    args = ["train", "--data", "demo", "--max-steps", "3", "--output-dir", str(out), "--no-progress", *demo]
    assert main([*args, "--export-layout", "inria", "--splat-format", "ply", "spz"]) == 0
    capsys.readouterr()
    ply = out / "point_cloud" / "iteration_3" / "point_cloud.ply"
    assert ply.is_file() and (out / "splats" / "step_000003.spz").is_file() and (out / "ckpts").is_dir()
    xyz, scales, rots, opacity, f_rest = inria_load_ply(ply)
    model = read_splat(out / "ckpts" / "step_000003.ckpt")
    assert np.array_equal(xyz, model.means.numpy()) and np.array_equal(scales, model.scales.numpy())
    assert np.array_equal(rots, model.quats.numpy()) and np.array_equal(opacity, model.opacities.numpy())
    assert f_rest.shape == (model.num_gaussians, 45)

    cams = json.loads((out / "cameras.json").read_text())
    provider = SplatDemoDataProvider(SplatDemoDataProviderConfig(num_cameras=12, image_size=24, supersample=1))
    train = provider.train_cameras()
    assert len(cams) == len(train) and [c["id"] for c in cams] == list(range(len(train)))
    assert set(cams[0]) == {"id", "img_name", "width", "height", "position", "rotation", "fx", "fy"}
    for entry, cam in zip(cams, train):
        assert (entry["width"], entry["height"]) == (24, 24)
        assert np.allclose(entry["position"], camera_centers(cam.viewmats)[0].numpy(), atol=1e-6)
        # INRIA's rotation is camera-to-world: its transpose is the world-to-camera block.
        assert np.allclose(np.array(entry["rotation"]).T, cam.viewmats[0, :3, :3].numpy(), atol=1e-6)
        assert entry["fx"] == pytest.approx(float(cam.Ks[0, 0, 0])) and entry["fy"] == pytest.approx(
            float(cam.Ks[0, 1, 1])
        )
    assert cams[0]["img_name"] == provider.train_names()[0]
    cfg = eval((out / "cfg_args").read_text(), {"Namespace": Namespace})  # as INRIA's render.py reads it
    assert cfg.sh_degree == 3 and cfg.model_path == str(out.resolve())


def test_inria_layout_validation():
    from splatkit.modules import SplatExporter

    with pytest.raises(ValueError, match="layout must be 'splatkit' or 'inria', got 'nerfstudio'"):
        SplatExporter("out", [1], layout="nerfstudio")
    with pytest.raises(ValueError, match="layout='inria' writes point_cloud.ply; add 'ply' to splat_format"):
        SplatExporter("out", [1], splat_format="spz", layout="inria")
    exporter = SplatExporter("out", [7], splat_format=["ply", "spz"], layout="inria")
    assert exporter.splat_paths(7)[0].as_posix() == "out/point_cloud/iteration_7/point_cloud.ply"
