"""The live viewer, seen from a real browser: headless Chromium opens the page while the
demo scene trains, a rendered frame must arrive, and the page's pause button must stop
the step counter (and its resume button restart it). The screenshot is kept in
``$SPLATKIT_TEST_ARTIFACTS`` (default ``test-artifacts/``) as the test's artifact."""

import base64
import dataclasses
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from splatkit.cli import demo_setup
from splatkit.modules import SplatBaseModule, SplatViewer
from splatkit.trainer import SplatTrainer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Stop(Exception):
    pass


class StopWhenAsked(SplatBaseModule):
    def __init__(self):
        self.event = threading.Event()

    def post_step(self, **kwargs):
        if self.event.is_set():
            raise _Stop()


def wait_for(predicate, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def launch_chromium(url: str, debug_port: int, tmp_path: Path, window: str) -> subprocess.Popen:
    """Headless Chromium on ``url`` with software WebGL, driven through ``debug_port``."""
    return subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--remote-debugging-port={debug_port}",
            f"--window-size={window}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


_spec = importlib.util.spec_from_file_location("browser_viewers", ROOT / "benchmarks" / "browser_viewers.py")
browser_viewers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_viewers)  # its DevTools client: one copy for the browser tests


class DevTools(browser_viewers.DevTools):
    """The browser-viewer benchmark's DevTools client, plus clicking a button by its text."""

    def click_button(self, text):
        js = (
            f"(() => {{ const b = [...document.querySelectorAll('button')]"
            f".find(b => b.textContent.trim() === {json.dumps(text)});"
            f" if (!b) return false; b.click(); return true; }})()"
        )
        return self.call("Runtime.evaluate", expression=js, returnByValue=True)["result"]["value"]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)")
def test_browser_sees_frames_and_pauses_training(tmp_path):
    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig

    cfg, dens = demo_setup(1_000_000)
    cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "run"))
    viewer = SplatViewer(port=free_port(), resolution=128, refresh_seconds=0.5)
    assert viewer.host == "127.0.0.1"  # loopback unless asked
    stopper = StopWhenAsked()
    provider = SplatDemoDataProvider(
        SplatDemoDataProviderConfig(image_size=32, num_cameras=8, num_init_points=500, supersample=1)
    )
    trainer = SplatTrainer(cfg, provider, densification=dens, modules=[viewer, stopper])
    errors = []

    def run():
        try:
            trainer.run()
        except _Stop:
            pass
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    chrome = None
    try:
        wait_for(lambda: viewer.server is not None or errors, 60, "the viewer to start")
        assert not errors, errors
        debug_port = free_port()
        chrome = launch_chromium(viewer.url, debug_port, tmp_path, "800,600")
        devtools = DevTools(debug_port)
        wait_for(lambda: viewer.frames_sent > 0, 90, "a rendered frame to reach the browser")
        wait_for(lambda: devtools.click_button("Pause training"), 30, "the pause button")
        wait_for(viewer.paused.is_set, 10, "the pause to reach the trainer")
        time.sleep(0.5)  # let the step in flight finish
        paused_at = trainer.step
        time.sleep(2.0)
        assert trainer.step == paused_at, "training went on while paused"

        shot = devtools.call("Page.captureScreenshot", format="png")["data"]
        artifacts = Path(os.environ.get("SPLATKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "viewer_paused.png").write_bytes(base64.b64decode(shot))
        page_text = devtools.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)[
            "result"
        ]["value"]
        assert "Resume training" in page_text and "Gaussians" in page_text

        assert devtools.click_button("Resume training")
        wait_for(lambda: trainer.step > paused_at + 5, 30, "training to resume")
    finally:
        stopper.event.set()
        viewer.set_paused(False)
        thread.join(timeout=30)
        if chrome is not None:
            chrome.kill()
            chrome.wait()
    assert not errors, errors
    assert viewer.server is None  # stopped at cleanup


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)")
def test_rendering_mode_serves_a_saved_model(tmp_path):
    """What `splatkit view FILE` does: a PLY from disk, shown to a browser."""
    import torch

    from splatkit.renderer import Splat3DGSRenderer
    from splatkit.splat import SplatModel

    g = torch.Generator().manual_seed(0)
    n = 300
    SplatModel(
        means=torch.randn(n, 3, generator=g) * 0.3,
        scales=torch.full((n, 3), -3.0),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.zeros(n),
        sh0=torch.rand(n, 1, 3, generator=g),
        shN=torch.zeros(n, 15, 3),
    ).save_ply(tmp_path / "scene.ply")
    model = SplatModel.load_ply(tmp_path / "scene.ply")
    viewer = SplatViewer(port=free_port(), mode="rendering", resolution=96)
    stop = threading.Event()
    thread = threading.Thread(
        target=viewer.serve_forever,
        daemon=True,
        args=(model.params(), model.sh_degree, Splat3DGSRenderer()),
        kwargs={"stop_event": stop},
    )
    thread.start()
    chrome = None
    try:
        wait_for(lambda: viewer.server is not None, 30, "the viewer to start")
        debug_port = free_port()
        chrome = launch_chromium(viewer.url, debug_port, tmp_path, "640,480")
        devtools = DevTools(debug_port)
        wait_for(lambda: viewer.frames_sent > 0, 90, "a rendered frame to reach the browser")

        def page_text() -> str:
            reply = devtools.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
            return reply["result"]["value"]

        # the panel is drawn by the page's scripts after the first frame may already have arrived
        wait_for(lambda: "Gaussians" in page_text(), 30, "the panel to show the Gaussian count")
        text = page_text()
        fields = devtools.call(
            "Runtime.evaluate",
            returnByValue=True,
            expression="[...document.querySelectorAll('input')].map(i => i.value)",
        )
        assert "300" in fields["result"]["value"]  # the Gaussian count
        assert "Gaussians" in text and "Pause training" not in text  # no training controls
    finally:
        stop.set()
        thread.join(timeout=30)
        if chrome is not None:
            chrome.kill()
            chrome.wait()
    assert viewer.server is None


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium)")
def test_a_browser_opens_a_trained_model_at_the_first_training_camera(tmp_path):
    """What `splatkit view CKPT` shows first: the browser's camera is the first training camera
    (pose and field of view), and the frame rendered for it matches that camera's photo, not
    another camera's. The screenshot is kept as ``viewer_start_camera.png``."""
    import numpy as np
    import torch

    from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig
    from splatkit.metrics import psnr
    from splatkit.modules.viewer import _view_of
    from splatkit.renderer import Splat3DGSRenderer

    cfg, dens = demo_setup(300)
    cfg = dataclasses.replace(cfg, output_dir=str(tmp_path / "run"))
    provider = SplatDemoDataProvider(SplatDemoDataProviderConfig(image_size=48, num_cameras=10, supersample=1))
    trainer = SplatTrainer(cfg, provider, densification=dens, modules=[])
    trainer.run()
    params = {k: v.detach() for k, v in trainer.training_state.params.items()}
    sh_degree = trainer.training_state.sh_degree
    cameras = provider.train_cameras()
    renderer = Splat3DGSRenderer()

    viewer = SplatViewer(port=free_port(), mode="rendering", resolution=256)
    stop = threading.Event()
    thread = threading.Thread(
        target=viewer.serve_forever,
        daemon=True,
        args=(params, sh_degree, renderer),
        kwargs={"stop_event": stop, "train_cameras": cameras, "step": 300},
    )
    thread.start()
    chrome = None
    try:
        wait_for(lambda: viewer.server is not None, 30, "the viewer to start")
        chrome = launch_chromium(viewer.url, (debug_port := free_port()), tmp_path, "600,600")
        devtools = DevTools(debug_port)
        wait_for(lambda: viewer.frames_sent > 0, 90, "a rendered frame to reach the browser")
        with viewer._clients_lock:
            client = next(iter(viewer._clients.values()))["client"]
        wxyz, position, fov = _view_of(cameras[0])
        # viser's server-side camera holds its own default until the page reports its view.
        wait_for(lambda: np.allclose(client.camera.position, position, atol=1e-4), 30, "the page's camera")
        seen = client.camera
        assert np.allclose(seen.position, position, atol=1e-4), (seen.position, position)
        assert abs(abs(float(np.dot(seen.wxyz, wxyz))) - 1.0) < 1e-6, (seen.wxyz, wxyz)
        assert abs(seen.fov - fov) < 1e-4, (seen.fov, fov)

        # The frame for that browser, rendered at the photo's size: the first photo, not another.
        cam = viewer._camera(seen)
        first = provider.train_frame(0)
        assert torch.allclose(cam.viewmats[0], first.cameras.viewmats[0], atol=1e-4)
        frame = renderer.render(params, first.cameras, sh_degree, torch.zeros(1, 3)).images[0]
        against_first = float(psnr(frame[None], first.images))
        against_others = max(float(psnr(frame[None], provider.train_frame(i).images)) for i in range(1, len(cameras)))
        assert against_first > against_others + 5, (against_first, against_others)
        print(f"start view: PSNR {against_first:.2f} dB to the first photo, <= {against_others:.2f} to the others")

        shot = devtools.call("Page.captureScreenshot", format="png")["data"]
        artifacts = Path(os.environ.get("SPLATKIT_TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "viewer_start_camera.png").write_bytes(base64.b64decode(shot))
        text = devtools.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)["result"][
            "value"
        ]
        assert "Training camera" in text
    finally:
        stop.set()
        thread.join(timeout=30)
        if chrome is not None:
            chrome.kill()
            chrome.wait()
    assert viewer.server is None
