"""Faults a user, a crash or a hostile client can cause must not cost a run or its files:
viewer messages, NaN/Inf, decompression bombs, two runs into one folder, false "wrote"."""

from __future__ import annotations

import gzip
import json
import struct
import types

import pytest
import torch

from splatkit.cli import main
from splatkit.densification import SplatDefaultDensification
from splatkit.errors import SplatFileError, SplatNumericError
from splatkit.modules import SplatExporter
from splatkit.modules.viewer import SplatViewer, _BadCamera
from splatkit.splat import SplatModel
from splatkit.splat.formats import spz, write_splat
from splatkit.trainer import SplatTrainer, SplatTrainerConfig
from splatkit.utils import run_folder

# ----------------------------------------------------------------------------- viewer


class _Widget:
    def __init__(self, value=None):
        self.value = value


def _client(**camera):
    cam = dict(aspect=1.0, fov=0.8, wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, -4.0), update_timestamp=1.0)
    cam.update(camera)
    scene = types.SimpleNamespace(set_background_image=lambda *a, **k: None)
    return {
        "client": types.SimpleNamespace(camera=types.SimpleNamespace(**cam), scene=scene),
        "dirty": True,
        "last": 0.0,
    }


def _viewer(render_fn, resolution=64):
    v = SplatViewer()
    v._render_fn = render_fn
    v._gui_res, v._gui_fps = _Widget(resolution), _Widget()
    return v


BAD_CAMERAS = [
    {"fov": 0.0},
    {"fov": float("nan")},
    {"fov": -1.0},
    {"fov": 4.0},
    {"fov": "wide"},
    {"aspect": 0.0},
    {"aspect": float("inf")},
    {"position": (float("nan"), 0.0, 0.0)},
    {"position": (1.0, 2.0)},
    {"wxyz": (0.0, 0.0, 0.0, 0.0)},
    {"wxyz": None},
]


@pytest.mark.parametrize("camera", BAD_CAMERAS, ids=[str(c) for c in BAD_CAMERAS])
def test_viewer_drops_bad_camera_messages(camera):
    rendered = []
    v = _viewer(lambda cams: rendered.append(cams) or torch.zeros(cams.height, cams.width, 3))
    with pytest.raises(_BadCamera):
        v._camera(_client(**camera)["client"].camera)
    v._clients = {0: _client(**camera)}
    assert v.serve_pending() == 0  # no exception reaches the caller (the training thread)
    assert v.dropped_messages == 1 and rendered == []


@pytest.mark.parametrize("resolution", [-5, 0, 10_000_000, float("nan"), "big"])
def test_viewer_enforces_the_resolution_range(resolution):
    sizes = []
    v = _viewer(lambda cams: sizes.append((cams.width, cams.height)) or torch.zeros(cams.height, cams.width, 3))
    v._gui_res.value = resolution
    v._clients = {0: _client()}
    v.serve_pending()
    if sizes:  # a number: clamped into the slider's range
        assert all(64 <= s <= 2048 for s in sizes[0])
    else:  # not a number: dropped
        assert v.dropped_messages == 1


def test_a_failing_render_never_reaches_the_training_thread():
    def broken(cams):
        raise RuntimeError("out of memory")

    v = _viewer(broken)
    v._clients = {0: _client(), 1: _client(fov=1.2)}
    assert v.serve_pending(training=True) == 0
    assert v.failed_renders == 2


# ----------------------------------------------------------------------------- NaN / Inf


def _model(n=10, value=0.0):
    return SplatModel(
        means=torch.zeros(n, 3) + value,
        scales=torch.zeros(n, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        opacities=torch.zeros(n),
        sh0=torch.zeros(n, 1, 3),
        shN=torch.zeros(n, 0, 3),
    )


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz", "compressed_ply"])
def test_writers_refuse_non_finite_values(tmp_path, fmt):
    model = _model()
    model.means[3, 1] = float("nan")
    path = tmp_path / f"m.{fmt}"
    with pytest.raises(ValueError, match="refusing to write a splat with 1 NaN or Inf values in 'means'"):
        write_splat(model, path, fmt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field", ["lr_means", "lr_scales", "lr_opacities", "lr_shN"])
def test_non_finite_learning_rates_are_refused(field):
    with pytest.raises(ValueError, match=f"SplatTrainerConfig.{field} must be finite and >= 0"):
        SplatTrainerConfig(**{field: float("nan")})


def test_a_diverging_run_stops_and_writes_nothing(tmp_path, small_demo):
    exporter = SplatExporter(tmp_path, export_steps=[10, 40], save_splat=True, save_ckpt=True)
    config = SplatTrainerConfig(max_steps=40, output_dir=str(tmp_path), lr_scales=1e4, lr_means=10.0)
    trainer = SplatTrainer(config, small_demo, modules=[exporter])
    with pytest.raises(SplatNumericError, match=r"step \d+: training diverged: .* became NaN or Inf after step \d+"):
        trainer.run()
    for path in exporter.written:  # whatever was written before the divergence is finite
        if path.suffix == ".ply":
            from splatkit.splat.formats import read_splat

            assert all(torch.isfinite(v).all() for v in read_splat(path).params().values())
    assert trainer.step < 40


# ----------------------------------------------------------------------------- readers


def test_spz_decompression_bomb_is_refused_before_inflating(tmp_path):
    header = struct.pack("<IIIBBBB", spz.MAGIC, 2, 20_000_000, 3, 12, 0, 0)
    path = tmp_path / "bomb.spz"
    path.write_bytes(gzip.compress(header + bytes(1 << 20)))
    with pytest.raises(SplatFileError, match="declares 20000000 Gaussians"):
        spz.read_spz_file(path)


def test_readers_refuse_non_finite_values_and_foreign_dtypes(tmp_path):
    """What benchmarks/fuzz_readers.py found loading: NaN in a PLY (another tool wrote it), and
    a checkpoint whose checksum is valid but whose means are integers."""
    from splatkit.splat.formats import read_splat
    from splatkit.splat.formats.checkpoint import save_checkpoint
    from splatkit.splat.ply import write_ply

    params = _model(n=5).params()
    params["means"][2, 0] = float("nan")
    write_ply(tmp_path / "nan.ply", params)  # the raw writer: write_splat refuses this
    with pytest.raises(SplatFileError, match=r"nan.ply: 1 of 15 values of 'means' are NaN \(1\)"):
        read_splat(tmp_path / "nan.ply")
    content = {k: {} for k in ("densification", "data_provider", "config", "rng")}
    params = {**_model(n=5).params(), "means": torch.zeros(5, 3, dtype=torch.int64)}
    content.update(step=1, modules=[], training_state={"params": params})
    save_checkpoint(tmp_path / "int.ckpt", content)
    with pytest.raises(SplatFileError, match=r"int.ckpt: checkpoint holds no valid Gaussian parameters .means not"):
        read_splat(tmp_path / "int.ckpt")


def test_a_checkpoint_write_over_a_file_size_limit_is_one_clear_error(tmp_path):
    """torch's zip writer raised a RuntimeError ('enforce fail at inline_container.cc') under a
    file-size limit or on a full disk: a traceback. Now an OSError naming the user's file."""
    import resource

    from splatkit.splat.formats.checkpoint import save_checkpoint

    content = {k: {} for k in ("training_state", "densification", "data_provider", "config", "rng")}
    content.update(step=1, modules=[], training_state={"params": {"means": torch.zeros(100_000, 3)}})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(OSError, match=f"cannot write {tmp_path / 'a.ckpt'}: .*file-size limit"):
            save_checkpoint(tmp_path / "a.ckpt", content)
        with pytest.raises(OSError, match=f"cannot write {tmp_path / 'a.ply'}: File too large"):
            write_splat(_model(n=20_000), tmp_path / "a.ply")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temp file


def test_a_ply_with_no_gaussians_is_one_clear_error(tmp_path, capsys):
    import numpy as np
    from plyfile import PlyData, PlyElement

    from splatkit.splat.ply import ply_property_names

    empty = np.empty(0, dtype=[(n, "<f4") for n in ply_property_names(3)])
    PlyData([PlyElement.describe(empty, "vertex")]).write(str(tmp_path / "empty.ply"))
    assert main(["info", str(tmp_path / "empty.ply")]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"{tmp_path / 'empty.ply'}: the file holds no Gaussians (0 vertices / records)")
    )
    assert main(["export", str(tmp_path / "empty.ply"), str(tmp_path / "out.splat")]) == 2
    assert "holds no Gaussians" in capsys.readouterr().err and not (tmp_path / "out.splat").exists()


def test_densification_that_prunes_every_gaussian_is_one_clear_error(tmp_path, small_demo):
    from splatkit.densification import SplatDefaultDensification

    out = tmp_path / "run"
    strict = SplatDefaultDensification(prune_opa=0.9999, refine_start_iter=2, refine_every=2, reset_every=1000)
    trainer = SplatTrainer(
        SplatTrainerConfig(max_steps=6, output_dir=str(out)),
        small_demo,
        densification=strict,
        modules=[SplatExporter(out, [6])],
    )
    with pytest.raises(ValueError, match=r"step 5: densification .* removed every Gaussian.*--densification.prune-opa"):
        trainer.run()
    assert not (out / "splats").exists() or list((out / "splats").iterdir()) == []


# ----------------------------------------------------------------------------- output folders


def test_an_output_folder_belongs_to_one_run(tmp_path, small_demo):
    out = tmp_path / "run"
    SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(out)), small_demo).run()
    assert not (out / run_folder.LOCK_NAME).exists()  # released at the end
    with pytest.raises(ValueError, match="already holds a run .*--resume CKPT .*--overwrite"):
        SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(out)), small_demo).run()
    SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(out)), small_demo, overwrite=True).run()


def test_a_folder_another_live_run_trains_into_is_refused(tmp_path, small_demo):
    out = tmp_path / "busy"
    out.mkdir()
    import socket

    holder = {"pid": 1, "host": socket.gethostname(), "started": "earlier"}  # pid 1 is always alive
    (out / run_folder.LOCK_NAME).write_text(json.dumps(holder))
    with pytest.raises(ValueError, match="in use by another splatkit run .pid 1"):
        SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(out)), small_demo, overwrite=True).run()
    # a lock whose process is gone is taken over
    holder["pid"] = 2**22 + 12345
    (out / run_folder.LOCK_NAME).write_text(json.dumps(holder))
    SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(out)), small_demo).run()


def test_wrote_lists_only_files_written(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["train", "--data", "demo", "--max-steps", "5", "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "wrote" in first and "step_000005.ckpt" in first
    ckpt = out / "ckpts" / "step_000005.ckpt"
    assert main(args[:4] + ["1", "--output-dir", str(out), "--no-progress", "--resume", str(ckpt)]) == 0
    assert "wrote" not in capsys.readouterr().out
    assert sorted(p.name for p in (out / "ckpts").iterdir()) == ["step_000005.ckpt"]  # nothing new on disk


def _three_step_checkpoint(out, provider, densification):
    """Train 3 steps into ``out`` with ``densification``; the step-3 checkpoint's path."""
    exporter = SplatExporter(out, export_steps=[3], save_splat=False, save_ckpt=True)
    SplatTrainer(
        SplatTrainerConfig(max_steps=3, output_dir=str(out)), provider, densification=densification, modules=[exporter]
    ).run()
    return out / "ckpts/step_000003.ckpt"


def test_resuming_with_another_strategy_is_a_clear_error(tmp_path, small_demo):
    from splatkit.densification import SplatMCMCDensification

    out = tmp_path / "mcmc"
    ckpt = _three_step_checkpoint(out, small_demo, SplatMCMCDensification(cap_max=2000))
    with pytest.raises(ValueError, match="trained with another densification strategy"):
        SplatTrainer(SplatTrainerConfig(max_steps=5, output_dir=str(out)), small_demo, ckpt_path=ckpt).run()


def test_resuming_with_other_component_settings_says_which(tmp_path, small_demo, caplog):
    """A resume that does not repeat the run's flags (here the densification budget) warns,
    naming each changed setting with both values; the same settings resume silently."""
    import logging

    out = tmp_path / "capped"
    ckpt = _three_step_checkpoint(out, small_demo, SplatDefaultDensification(cap_max=5000))
    with caplog.at_level(logging.WARNING, logger="splatkit"):
        SplatTrainer(
            SplatTrainerConfig(max_steps=3, output_dir=str(out)),
            small_demo,
            densification=SplatDefaultDensification(cap_max=5000),
            ckpt_path=ckpt,
        ).run()
    assert "differ from the checkpoint" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="splatkit"):
        SplatTrainer(SplatTrainerConfig(max_steps=4, output_dir=str(out)), small_demo, ckpt_path=ckpt).run()
    assert "densification.cap_max (5000 in the checkpoint, 0 now)" in caplog.text
    assert "max_steps (3 in the checkpoint, 4 now)" in caplog.text


def test_info_into_a_closed_pipe_is_not_an_error(tmp_path, monkeypatch):
    """`splatkit info X | head`: the reader leaves; exit 0 with no traceback."""
    import splatkit.cli as cli

    def closed_pipe(cmd, result):
        raise BrokenPipeError(32, "Broken pipe")

    quieted = []
    monkeypatch.setattr(cli, "_print_result", closed_pipe)
    monkeypatch.setattr(cli, "_quiet_stdout", lambda: quieted.append(True))
    path = write_splat(_model(n=50), tmp_path / "m.ply")
    assert main(["info", str(path)]) == 0
    assert quieted == [True]


def test_checkpoints_carry_a_checksum(tmp_path):
    from splatkit.splat.formats.checkpoint import load_checkpoint, save_checkpoint

    content = {k: {} for k in ("training_state", "densification", "data_provider", "config", "rng")}
    content.update(step=1, modules=[], training_state={"params": {"means": torch.arange(3000.0)}})
    path = save_checkpoint(tmp_path / "a.ckpt", content)
    data = bytearray(path.read_bytes())
    at = data.find(torch.arange(3000.0)[1000:1002].numpy().tobytes())  # inside the tensor's bytes
    assert at > 0
    data[at] ^= 0x10
    (tmp_path / "b.ckpt").write_bytes(bytes(data))
    with pytest.raises(SplatFileError, match="does not match its checksum"):
        load_checkpoint(tmp_path / "b.ckpt")
    assert torch.equal(load_checkpoint(path)["training_state"]["params"]["means"], torch.arange(3000.0))


def test_16_bit_grey_png_keeps_its_values(tmp_path):
    import numpy as np
    from PIL import Image

    from splatkit.data_provider.images import read_pixels

    grey = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g.png")
    pixels = read_pixels(tmp_path / "g.png")
    assert pixels.shape == (8, 8, 3)
    assert np.abs(pixels[..., 0].astype(int) - np.round(grey / 257.0)).max() <= 1


def test_bad_masks_are_named(tmp_path):
    import numpy as np
    from PIL import Image

    from splatkit.data_provider import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
    from splatkit.data_provider.demo import write_synthetic_capture
    from splatkit.data_provider.images import DataError

    write_synthetic_capture(tmp_path, num_train=3, num_test=1, image_size=16, supersample=1)
    frames = json.loads((tmp_path / "transforms_train.json").read_text())
    for i, f in enumerate(frames["frames"]):
        f["mask_path"] = f"mask_{i}.png"
        Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / f"mask_{i}.png")
    Image.fromarray(np.full((12, 16), 255, np.uint8)).save(tmp_path / "mask_1.png")  # another picture
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "mask_2.png")  # keeps nothing
    (tmp_path / "transforms_train.json").write_text(json.dumps(frames))
    provider = SplatBlenderDataProvider(SplatBlenderDataProviderConfig(str(tmp_path), factor=1))
    provider.train_frame(0)
    with pytest.raises(DataError, match=r"mask_1.png is 16x12; its image r_1.png is 16x16"):
        provider.train_frame(1)
    with pytest.raises(DataError, match="mask_2.png keeps no pixel"):
        provider.train_frame(2)


def test_a_truncated_photo_is_named_before_step_1(tmp_path, capsys):
    """A JPEG cut short in the middle of a capture: one error naming it before training starts."""
    from PIL import Image

    from splatkit.data_provider.demo import write_synthetic_capture

    capture = write_synthetic_capture(tmp_path / "capture", num_train=6, num_test=2, image_size=16, supersample=1)
    for png in capture.glob("*/*.png"):  # photos without alpha: nothing reads them all before step 1
        Image.open(png).convert("RGB").save(png)
    bad = capture / "train" / "r_3.jpg"
    Image.open(capture / "train" / "r_3.png").save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:-40])  # its header is whole: only decoding finds the cut
    (capture / "train" / "r_3.png").unlink()
    out = tmp_path / "out"
    args = ["train", "--data", str(capture), "--max-steps", "3", "--output-dir", str(out), "--no-progress"]
    assert main(args) == 2
    assert not (out / "trainer_config.json").exists()  # it never started
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("splatkit: error: 1 of 8 images cannot be trained on: ")
    assert f"{bad}: cannot read image" in err[-1] and "truncated" in err[-1]


def test_images_smaller_than_the_ssim_window_are_refused_up_front(tmp_path, capsys):
    """1x1 photos trained, then the test SSIM (an 11x11 window) raised a RuntimeError."""
    from splatkit.data_provider.demo import write_synthetic_capture

    capture = write_synthetic_capture(tmp_path / "capture", num_train=3, num_test=1, image_size=1, supersample=1)
    out = tmp_path / "out"
    assert main(["train", "--data", str(capture), "--max-steps", "2", "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("splatkit: error: ") and "r_0.png is 1x1 px; splatkit needs images of at least 11x11" in err
    assert not out.exists()


def test_a_lower_sh_checkpoint_is_refused_at_resume(tmp_path, small_demo):
    out = tmp_path / "sh1"
    exporter = SplatExporter(out, export_steps=[2], save_splat=False, save_ckpt=True)
    SplatTrainer(
        SplatTrainerConfig(max_steps=2, output_dir=str(out), sh_degree=1), small_demo, modules=[exporter]
    ).run()
    with pytest.raises(ValueError, match="SH degree 1, this run asks for 3"):
        SplatTrainer(
            SplatTrainerConfig(max_steps=4, output_dir=str(out)), small_demo, ckpt_path=out / "ckpts/step_000002.ckpt"
        ).run()


def test_a_ply_with_a_long_header_reads(tmp_path):
    from splatkit.splat.formats import read_splat

    data = write_splat(_model(n=5), tmp_path / "a.ply").read_bytes()
    at = data.index(b"element")
    comments = b"".join(b"comment " + b"x" * 100 + b"\n" for _ in range(1000))  # a 100 KB header
    (tmp_path / "b.ply").write_bytes(data[:at] + comments + data[at:])
    assert read_splat(tmp_path / "b.ply").means.shape == (5, 3)


def test_a_checkpoint_of_other_data_is_refused(tmp_path, small_demo):
    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig

    out = tmp_path / "a"
    exporter = SplatExporter(out, export_steps=[2], save_splat=False, save_ckpt=True)
    SplatTrainer(SplatTrainerConfig(max_steps=2, output_dir=str(out)), small_demo, modules=[exporter]).run()
    other = SplatDemoDataProvider(SplatDemoDataProviderConfig(num_cameras=8, image_size=16, supersample=1, seed=7))
    with pytest.raises(ValueError, match="was trained on other data .config.seed: 0. than this run's .config.seed: 7"):
        SplatTrainer(
            SplatTrainerConfig(max_steps=4, output_dir=str(out)), other, ckpt_path=out / "ckpts/step_000002.ckpt"
        ).run()


def test_leftover_temp_files_are_removed_by_the_next_run(tmp_path, small_demo):
    out = tmp_path / "run"
    (out / "ckpts").mkdir(parents=True)
    leftovers = [out / ".trainer_config.json.abc123.tmp", out / "ckpts" / ".step_000002.ckpt.k9x.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    keep = out / "ckpts" / "notes.tmp"  # not ours: not touched
    keep.write_text("mine")
    SplatTrainer(SplatTrainerConfig(max_steps=1, output_dir=str(out)), small_demo).run()
    assert not any(p.exists() for p in leftovers) and keep.exists()


def test_summary_json_is_checked_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["train", "--data", "demo", "--max-steps", "1", "--output-dir", str(tmp_path / "o"),
               "--summary-json", str(blocker / "s.json")])  # fmt: skip
    assert rc == 2 and "--summary-json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- viewer over a real WebSocket


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _camera_message(**fields) -> bytes:
    import msgspec

    message = dict(
        type="ViewerCameraMessage",
        wxyz=(1.0, 0.0, 0.0, 0.0),
        position=(0.0, 0.0, -4.0),
        fov=0.8,
        near=0.01,
        far=100.0,
        image_height=480,
        image_width=640,
        look_at=(0.0, 0.0, 0.0),
        up_direction=(0.0, -1.0, 0.0),
    )
    message.update(fields)
    return msgspec.msgpack.encode(message)


def test_the_viewer_survives_a_hostile_page_while_training(tmp_path, small_demo):
    """A page on another site connects over a real WebSocket (refused), then bad and hostile
    messages arrive from the viewer's own origin; training finishes and the server stays up."""
    import threading
    import time

    import msgspec
    import viser
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from splatkit.modules import SplatBaseModule

    port, max_steps = _free_port(), 20
    viewer = SplatViewer(port=port, refresh_seconds=0.05)
    started, done = threading.Event(), threading.Event()

    class Attacked(SplatBaseModule):
        """Training waits at step 3 for the attack to start and at the last step for it to end,
        serving the viewer meanwhile, so every message arrives while the run is alive."""

        def post_step(self, step, **kwargs):
            for event in (started,) if step == 3 else (done,) if step == max_steps else ():
                t0 = time.time()
                while not event.is_set() and time.time() - t0 < 120:
                    viewer.serve_pending(training=True)
                    time.sleep(0.02)

    config = SplatTrainerConfig(max_steps=max_steps, output_dir=str(tmp_path / "run"))
    trainer = SplatTrainer(config, small_demo, modules=[viewer, Attacked()])
    failure = []
    thread = threading.Thread(target=lambda: _run_catching(trainer, failure))
    thread.start()
    try:
        t0 = time.time()
        while viewer.server is None:
            assert time.time() - t0 < 60 and thread.is_alive(), "the viewer did not start"
            time.sleep(0.05)
        url, own = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
        slider = viewer._gui_res._impl.uuid
        protocol = [f"viser-v{viser.__version__}"]
        started.set()

        # 1. Another site's page: closed (policy violation) before anything it sent is handled.
        with connect(url, origin="http://evil.example", subprotocols=protocol, open_timeout=60) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                ws.send(_camera_message(fov=0.0))
                ws.send(msgspec.msgpack.encode({"type": "ShareUrlRequest"}))
                while True:
                    ws.recv(timeout=60)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert viewer.refused_connections == 1

        # 2. The viewer's own origin, sending what no viewer page sends.
        for payload in (
            b"\x00\xffgarbage",
            "a text frame",
            msgspec.msgpack.encode({"type": "NoSuchMessage"}),
            msgspec.msgpack.encode({"type": "ViewerCameraMessage", "fov": "wide"}),
            msgspec.msgpack.encode({"type": "ShareUrlRequest"}),
            msgspec.msgpack.encode({"type": "GuiUpdateMessage", "uuid": slider, "updates": {"value": -5}}),
        ):
            with connect(url, origin=own, subprotocols=protocol, open_timeout=60) as ws:
                ws.send(payload)
                time.sleep(0.2)
        for camera in ({"fov": 0.0}, {"position": (float("nan"), 0.0, 0.0)}, {"wxyz": (0.0, 0.0, 0.0, 0.0)}):
            dropped = viewer.dropped_messages
            with connect(url, origin=own, subprotocols=protocol, open_timeout=60) as ws:
                ws.send(_camera_message(**camera))
                t0 = time.time()
                while viewer.dropped_messages == dropped:
                    assert time.time() - t0 < 90, f"the camera message {camera} was never looked at"
                    time.sleep(0.05)
        assert viewer.dropped_messages == 3  # the refused page's fov=0 message was never read

        # 3. The server is still up: a well-behaved client gets the scene and rendered frames.
        sent = viewer.frames_sent
        with connect(url, origin=own, subprotocols=protocol, open_timeout=60, max_size=None) as ws:
            ws.recv(timeout=60)
            ws.send(_camera_message())
            t0 = time.time()
            while viewer.frames_sent == sent:
                assert time.time() - t0 < 90, "no frame was rendered for a good client"
                time.sleep(0.05)
    finally:
        started.set()
        done.set()
        thread.join(timeout=120)
    assert failure == [] and trainer.step == max_steps


def _run_catching(trainer, failure):
    try:
        trainer.run()
    except BaseException as e:
        failure.append(e)


@pytest.mark.parametrize(
    "origin, host, allowed",
    [
        (None, "127.0.0.1:8080", True),  # not a browser
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://localhost:9000", "localhost:9000", True),  # an ssh-forwarded port
        ("http://192.168.1.7:8080", "192.168.1.7:8080", True),  # served on 0.0.0.0, opened by address
        ("http://evil.example", "127.0.0.1:8080", False),
        ("http://localhost:3000", "localhost:8080", False),  # another local site
        ("http://evil.example:8080", "evil.example:8080", False),  # DNS rebinding
        ("null", "127.0.0.1:8080", False),
        ("file://", "127.0.0.1:8080", False),
    ],
)
def test_only_the_viewers_own_page_may_connect(origin, host, allowed):
    from splatkit.modules.viewer import origin_allowed

    assert origin_allowed(origin, host, "0.0.0.0") is allowed


# ----------------------------------------------------------------------------- SIGKILL during exports


def test_sigkill_during_exports_leaves_no_partial_file(tmp_path):
    """A process writing splats in every format and checkpoints is SIGKILLed at random moments:
    every file left loads whole (the temp files it leaves are the next run's to remove, see
    test_leftover_temp_files_are_removed_by_the_next_run; benchmarks/kill_exports.py kills
    `splatkit train` 20 times and checks the removal and the resume too)."""
    import multiprocessing
    import os
    import random
    import signal
    import time

    from splatkit.splat.formats import read_splat
    from splatkit.splat.formats.checkpoint import save_checkpoint

    g = torch.Generator().manual_seed(0)
    n = 3000
    model = SplatModel(
        torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g) - 4, torch.randn(n, 4, generator=g),
        torch.randn(n, generator=g), torch.randn(n, 1, 3, generator=g), torch.randn(n, 15, 3, generator=g) * 0.2,
    )  # fmt: skip
    content = {k: {} for k in ("densification", "data_provider", "config", "rng")}
    content.update(step=1, modules=[], training_state={"params": model.params()})
    out = tmp_path / "run"
    (out / "ckpts").mkdir(parents=True)

    def export_forever():
        torch.set_num_threads(1)  # a forked child must not wait on the parent's OpenMP threads
        for i in range(10**9):
            for fmt in ("ply", "splat", "spz", "compressed_ply"):
                write_splat(model, out / f"m{i % 2}.{fmt.replace('_', '.')}", fmt)
            save_checkpoint(out / "ckpts" / f"step_{i % 2:06d}.ckpt", content)

    rng = random.Random(0)
    checked = 0
    for _ in range(4):
        child = multiprocessing.get_context("fork").Process(target=export_forever)
        child.start()
        time.sleep(rng.uniform(0.05, 1.5))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        for path in (p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")):
            loaded = read_splat(path)  # a partial file fails its size, gzip or checksum check
            if path.suffix in (".ply", ".ckpt") and ".compressed" not in path.name:
                assert torch.equal(loaded.means, model.means), path
            checked += 1
    assert checked > 0


def test_freed_heap_memory_goes_back_after_each_densification_round(tmp_path, small_demo, monkeypatch):
    """The trainer trims the C heap after every round that rebuilt the parameters, and only then."""
    import platform
    import sys

    import splatkit.trainer.trainer as trainer_module
    from splatkit.utils.memory import release_free_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert release_free_memory() == glibc
    calls = []
    monkeypatch.setattr(trainer_module, "release_free_memory", lambda: calls.append(True) or True)
    strategy = SplatDefaultDensification(refine_start_iter=2, refine_every=5)
    SplatTrainer(SplatTrainerConfig(max_steps=18, output_dir=str(tmp_path)), small_demo, densification=strategy).run()
    # rounds at gsplat's iterations 5, 10 and 15 (steps 6, 11, 16), each growing or pruning
    assert len(calls) == 3
