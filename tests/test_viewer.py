"""The live viewer, seen from a real browser: headless Chromium opens the page while the
demo scene trains, a rendered frame must arrive, and the page's pause button must stop
the step counter (and its resume button restart it). The screenshot is kept in
``$SPLATKIT_TEST_ARTIFACTS`` (default ``test-artifacts/``) as the test's artifact."""

import base64
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
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


class DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate JS, take a screenshot."""

    def __init__(self, port: int):
        from websockets.sync.client import connect

        url = None

        def page_ready():
            nonlocal url
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
            except OSError:
                return False
            url = next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)
            return url is not None

        wait_for(page_ready, 30, "Chromium's DevTools endpoint")
        self.ws = connect(url, max_size=None)
        self.n = 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise AssertionError(f"DevTools {method}: {msg['error']}")
                return msg["result"]

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
        chrome = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--remote-debugging-port={debug_port}",
                "--window-size=800,600",
                viewer.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
        chrome = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-dev-shm-usage",
                "--use-angle=swiftshader",
                "--enable-unsafe-swiftshader",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--remote-debugging-port={debug_port}",
                "--window-size=640,480",
                viewer.url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        devtools = DevTools(debug_port)
        wait_for(lambda: viewer.frames_sent > 0, 90, "a rendered frame to reach the browser")
        text = devtools.call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)["result"][
            "value"
        ]
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
