"""PLY files in the INRIA layout: exact round trips, viewer compatibility, bad files."""

import numpy as np
import pytest
import torch
from plyfile import PlyData

from splatkit.splat import SplatModel
from splatkit.splat.ply import SplatFileError, ply_property_names


def _model(n=50, sh_degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2
    return SplatModel(
        means=torch.randn(n, 3, generator=g),
        scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.randn(n, K - 1, 3, generator=g),
    )


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, sh_degree):
    model = _model(sh_degree=sh_degree)
    path = model.save_ply(tmp_path / "m.ply")
    loaded = SplatModel.load_ply(path)
    assert loaded.sh_degree == sh_degree
    for name, t in model.params().items():
        assert torch.equal(getattr(loaded, name), t), name
    assert [p.name for p in tmp_path.iterdir()] == ["m.ply"]


def test_header_lists_inria_properties_in_order(tmp_path):
    path = _model(n=7).save_ply(tmp_path / "m.ply")
    ply = PlyData.read(str(path))
    props = [p.name for p in ply["vertex"].properties]
    assert props[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert props[9:54] == [f"f_rest_{i}" for i in range(45)]
    assert props[54:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert props == ply_property_names(3)
    assert ply.byte_order == "<" and not ply.text and len(ply["vertex"].data) == 7
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties)
    head = path.read_bytes()[:40]
    assert head.startswith(b"ply\nformat binary_little_endian 1.0\n")


def test_missing_property_is_named(tmp_path):
    from plyfile import PlyElement

    names = [n for n in ply_property_names(0) if n != "scale_1"]
    data = np.zeros(3, dtype=[(n, "<f4") for n in names])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "bad.ply"))
    with pytest.raises(SplatFileError, match="lacks property scale_1"):
        SplatModel.load_ply(tmp_path / "bad.ply")


def test_truncated_file(tmp_path):
    path = _model(n=100).save_ply(tmp_path / "m.ply")
    raw = path.read_bytes()
    (tmp_path / "cut.ply").write_bytes(raw[: len(raw) - 500])
    with pytest.raises(SplatFileError, match="truncated PLY"):
        SplatModel.load_ply(tmp_path / "cut.ply")
    (tmp_path / "head.ply").write_bytes(raw[:100])
    with pytest.raises(SplatFileError, match="end_header"):
        SplatModel.load_ply(tmp_path / "head.ply")


def test_header_count_exceeding_data(tmp_path):
    path = _model(n=10).save_ply(tmp_path / "m.ply")
    raw = path.read_bytes().replace(b"element vertex 10\n", b"element vertex 11\n")
    (tmp_path / "more.ply").write_bytes(raw)
    with pytest.raises(SplatFileError, match="declares .* bytes of vertex data but the file holds only"):
        SplatModel.load_ply(tmp_path / "more.ply")


def test_not_a_ply_and_missing_file(tmp_path):
    (tmp_path / "x.ply").write_text("hello")
    with pytest.raises(SplatFileError, match="not a PLY file"):
        SplatModel.load_ply(tmp_path / "x.ply")
    with pytest.raises(FileNotFoundError, match="PLY file not found"):
        SplatModel.load_ply(tmp_path / "nope.ply")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import plyfile

    _model(seed=1).save_ply(tmp_path / "old.ply")
    before = (tmp_path / "old.ply").read_bytes()

    def boom(self, stream):
        with open(stream, "wb") as f:
            f.write(b"ply\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(plyfile.PlyData, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        _model().save_ply(tmp_path / "m.ply")
    with pytest.raises(OSError, match="disk full"):
        _model().save_ply(tmp_path / "old.ply")
    assert [p.name for p in tmp_path.iterdir()] == ["old.ply"]
    assert (tmp_path / "old.ply").read_bytes() == before
