"""One model exported to every format, rendered by one web viewer (Spark) in headless Chromium; prints JSON.

    npm ci --prefix benchmarks/web              # once: the pinned Spark and three.js (nothing is installed here)
    python benchmarks/browser_viewers.py        # screenshots in test-artifacts/browser_viewers/
    python benchmarks/browser_viewers.py --per-cluster 2000 --out /tmp/shots

The model is asymmetric: three elongated clusters of anisotropic, randomly rotated
Gaussians along +x (red), +y (green) and +z (blue), and a white one at the origin (SH
degree 0). It is written as ``.ply``, ``.splat``, ``.spz``, ``.compressed.ply``,
``.ksplat`` and ``.sog`` by splatkit, and as ``.sog`` by gaussforge too when it is
importable (``gaussforge.sog``: a third-party writer's file beside splatkit's).
``benchmarks/web/spark.html`` loads one file by URL into a Spark ``SplatMesh`` (identity
transform: file coordinates are three.js world coordinates; Spark picks the format from
the file's bytes or its extension) and renders it from a fixed camera:
``PerspectiveCamera(fov 40, aspect 1, near 0.05, far 100)`` at (2.3, 1.8, 3) looking at
(0.25, 0.25, 0.25), up +y, on black, at 512x512 (``--size``).

Per format: the PSNR and mean absolute difference (0-255) of its screenshot against the
``.ply`` one (the PSNR also over the pixels either screenshot draws on, ``_foreground``:
the black background inflates the whole-image figure), and whether the expected colour
is found where the page's camera projects each cluster (the "landmarks"). The same model
with y and z negated (the RDF <-> RUB flip, a 180 degree turn about x, through
:func:`splatkit.splat.transform.transform_model`) is rendered too: its PSNR against the
``.ply`` screenshot is what a format read with the wrong axes would score (its landmarks
are checked at the flipped places). ``ply (reloaded)`` renders the ``.ply`` a second
time: the viewer's own run-to-run noise.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import io
import json
import math
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch

from splatkit.splat.formats import write_splat
from splatkit.splat.model import SplatModel
from splatkit.splat.sh import SH_C0
from splatkit.splat.transform import transform_model
from splatkit.utils.files import json_safe

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "benchmarks" / "web"
PAGE = "spark.html"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CAMERA = (
    "three.js PerspectiveCamera(fov 40, aspect 1, near 0.05, far 100) at (2.3, 1.8, 3)"
    " looking at (0.25, 0.25, 0.25), up +y"
)
# Suffixes written by splatkit, in order; "gaussforge.sog" is added when gaussforge is importable.
FORMATS = [".ply", ".splat", ".spz", ".compressed.ply", ".ksplat", ".sog"]
COLOURS = {"red": (1.0, 0.15, 0.1), "green": (0.1, 1.0, 0.15), "blue": (0.15, 0.2, 1.0), "white": (1.0, 1.0, 1.0)}
# Where each cluster's middle is, in model coordinates (the landmarks checked on the screenshots).
LANDMARKS = {"red": (0.75, 0.0, 0.0), "green": (0.0, 0.75, 0.0), "blue": (0.0, 0.0, 0.75), "white": (0.0, 0.0, 0.0)}
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])  # RDF <-> RUB: y and z negated, a 180 degree rotation about x
# The flipped model's clusters lie there (its landmarks are checked at these places).
FLIPPED_LANDMARKS = {k: (x, -y, -z) for k, (x, y, z) in LANDMARKS.items()}


def make_model(per_cluster: int = 1000, seed: int = 0) -> SplatModel:
    """Four clusters of ``per_cluster`` Gaussians each (module docstring); SH degree 0."""
    g = torch.Generator().manual_seed(seed)
    means, colours = [], []
    for axis, name in enumerate(["red", "green", "blue"]):
        m = torch.randn(per_cluster, 3, generator=g) * 0.04
        m[:, axis] = 0.25 + torch.rand(per_cluster, generator=g) * 1.0  # a bar from 0.25 to 1.25 along the axis
        means.append(m)
        colours.append(torch.tensor(COLOURS[name]).expand(per_cluster, 3))
    means.append(torch.randn(per_cluster, 3, generator=g) * 0.07)
    colours.append(torch.tensor(COLOURS["white"]).expand(per_cluster, 3))
    means = torch.cat(means)
    n = means.shape[0]
    rgb = (torch.cat(colours) * (0.85 + 0.15 * torch.rand(n, 1, generator=g))).clamp(0.0, 1.0)
    scales = torch.log(torch.tensor([0.05, 0.015, 0.01])).expand(n, 3).clone()
    scales += 0.2 * torch.randn(n, 3, generator=g)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    return SplatModel(
        means=means,
        scales=scales,
        quats=quats,
        opacities=torch.full((n,), 1.5) + 0.5 * torch.randn(n, generator=g),
        sh0=((rgb - 0.5) / SH_C0).unsqueeze(1),
        shN=torch.zeros(n, 0, 3),
    )


def flipped(model: SplatModel) -> SplatModel:
    """``model`` with y and z negated (positions and rotations)."""
    return transform_model(model, torch.tensor(FLIP, dtype=torch.float32))


def write_all(model: SplatModel, folder: Path, with_sog: bool = True) -> dict[str, Path]:
    """``model`` in every format under ``folder``; keys are the suffixes (plus ``flipped.ply``)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {suffix: write_splat(model, folder / f"model{suffix}") for suffix in FORMATS}
    if with_sog:
        try:
            import gaussforge
        except ImportError:
            gaussforge = None
        if gaussforge is not None:
            sog = gaussforge.GaussForge().convert(files[".ply"].read_bytes(), "ply", "sog")["data"]
            (folder / "gaussforge.sog").write_bytes(sog)
            files["gaussforge.sog"] = folder / "gaussforge.sog"
    files["flipped.ply"] = write_splat(flipped(model), folder / "flipped.ply")
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """``benchmarks/web`` at ``/``, the splat files at ``/files/``; no logging."""

    files_dir: Path

    def translate_path(self, path):
        rel = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        if rel.startswith("/files/"):
            return str(self.files_dir / Path(rel).name)
        return super().translate_path(path)

    def log_message(self, *args):
        pass


def serve(files_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """An HTTP server on 127.0.0.1 in a daemon thread; returns it and its base URL."""
    handler = type("Handler", (_Handler,), {"files_dir": files_dir})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(WEB)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def launch_chromium(debug_port: int, profile: Path, size: int) -> subprocess.Popen:
    """Headless Chromium on about:blank with software WebGL, driven through ``debug_port``."""
    if CHROMIUM is None:
        raise RuntimeError("no Chromium on PATH (.ci/run installs Debian's chromium)")
    return subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={debug_port}",
            f"--window-size={size},{size}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(predicate, timeout: float, what: str):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class DevTools:
    """Just enough of the Chrome DevTools protocol: navigate, evaluate JS, take a screenshot."""

    def __init__(self, port: int, timeout: float = 30.0):
        from websockets.sync.client import connect

        def page_url():
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
            except OSError:
                return None
            return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)

        url = _wait_for(page_url, timeout, "Chromium's DevTools endpoint")
        self.browser = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=5))["Browser"]
        self.ws = connect(url, max_size=None)
        self.n = 0

    def call(self, method, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error evaluating {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        self.ws.close()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def landmark_check(image: np.ndarray, pixels: dict[str, tuple[float, float]], radius: int = 4) -> dict[str, bool]:
    """Per cluster: does the mean colour around its projected middle have that cluster's colour?"""
    out = {}
    h, w, _ = image.shape
    for name, (x, y) in pixels.items():
        x, y = int(round(x)), int(round(y))
        patch = image[max(0, y - radius) : min(h, y + radius + 1), max(0, x - radius) : min(w, x + radius + 1)]
        c = patch.reshape(-1, 3).astype(np.float64).mean(0) if patch.size else np.zeros(3)
        if name == "white":
            out[name] = bool(c.min() > 100)
        else:
            k = {"red": 0, "green": 1, "blue": 2}[name]
            others = np.delete(c, k)
            out[name] = bool(c[k] > 60 and c[k] > 1.5 * others.max())
    return out


class SparkPage:
    """Headless Chromium showing ``benchmarks/web/spark.html``, one splat file at a time."""

    def __init__(self, files_dir: Path, size: int = 512, load_timeout: float = 90.0):
        page = WEB / PAGE
        spark = WEB / "node_modules" / "@sparkjsdev" / "spark" / "package.json"
        if not spark.is_file():
            raise RuntimeError(f"{spark.parent} is missing: run `npm ci --prefix benchmarks/web` first")
        assert page.is_file(), page
        self.size, self.load_timeout = size, load_timeout
        self.server, self.base = serve(files_dir)
        self.profile = tempfile.TemporaryDirectory(prefix="splatkit-chromium-")
        port = free_port()
        self.chrome = launch_chromium(port, Path(self.profile.name), size)
        try:
            self.devtools = DevTools(port)
            self.devtools.call(
                "Emulation.setDeviceMetricsOverride", width=size, height=size, deviceScaleFactor=1, mobile=False
            )
        except BaseException:
            self.close()
            raise

    def render(self, name: str, landmarks: dict = LANDMARKS) -> tuple[np.ndarray, dict]:
        """Load ``/files/<name>``, wait until Spark has drawn it, return the screenshot and page facts
        (among them the pixels where the page's camera projects ``landmarks``)."""
        query = urllib.parse.urlencode({"file": f"/files/{name}", "t": time.time()})
        self.devtools.call("Page.navigate", url=f"{self.base}/{PAGE}?{query}")
        state_js = (
            "JSON.stringify({file: new URLSearchParams(location.search).get('file'),"
            " state: window.viewerState || null, numSplats: window.numSplats ?? null})"
        )

        def loaded():
            try:
                s = json.loads(self.devtools.evaluate(state_js))
            except RuntimeError:
                return None  # between documents
            if s["file"] != f"/files/{name}":
                return None
            if s["state"] and s["state"].startswith("error"):
                raise RuntimeError(f"Spark could not show {name}: {s['state']}")
            return s if s["state"] == "ready" else None

        t0 = time.perf_counter()
        try:
            state = _wait_for(loaded, self.load_timeout, f"Spark to load and draw {name}")
        except TimeoutError as e:
            last = self.devtools.evaluate(state_js)
            raise TimeoutError(f"{e} (page state: {last})") from None
        state["load_seconds"] = round(time.perf_counter() - t0, 2)
        state["landmark_pixels"] = {k: self.project(p) for k, p in landmarks.items()}
        shot = self.devtools.call("Page.captureScreenshot", format="png")["data"]
        return decode_png(base64.b64decode(shot)), state

    def project(self, point) -> list[float]:
        return self.devtools.evaluate("window.projectPoint({}, {}, {})".format(*point))

    def close(self):
        if getattr(self, "devtools", None) is not None:
            self.devtools.close()
        self.chrome.kill()
        self.chrome.wait()
        self.server.shutdown()
        self.server.server_close()
        self.profile.cleanup()


def package_version(name: str) -> str | None:
    p = WEB / "node_modules" / name / "package.json"
    return json.loads(p.read_text())["version"] if p.is_file() else None


def run(per_cluster: int = 1000, size: int = 512, out: Path | None = None, with_sog: bool = True, seed: int = 0):
    """Write, render and compare (module docstring); returns the report as a dict."""
    t_start = time.perf_counter()
    model = make_model(per_cluster, seed)
    with tempfile.TemporaryDirectory(prefix="splatkit-browser-") as tmp:
        files = write_all(model, Path(tmp), with_sog=with_sog)
        page = SparkPage(Path(tmp), size=size)
        try:
            shots, states = {}, {}
            order = list(files) + ["ply (reloaded)"]
            for key in order:
                name = files[files_key(key)].name
                marks = FLIPPED_LANDMARKS if key == "flipped.ply" else LANDMARKS
                shots[key], states[key] = page.render(name, marks)
            browser = page.devtools.browser
        finally:
            page.close()
        sizes = {k: p.stat().st_size for k, p in files.items()}
    if out is not None:
        from PIL import Image

        out.mkdir(parents=True, exist_ok=True)
        for key, img in shots.items():
            stem = key.strip(".").replace(" (reloaded)", "_reloaded")
            Image.fromarray(img).save(out / f"{stem}.png")
    ref = shots[".ply"]
    background = np.all(ref < 8, axis=-1)
    report = {
        "viewer": "Spark (@sparkjsdev/spark)",
        "spark": package_version("@sparkjsdev/spark"),
        "three": package_version("three"),
        "browser": browser,
        "renderer": "headless Chromium, WebGL on SwiftShader (ANGLE)",
        "camera": CAMERA,
        "size": size,
        "gaussians": int(model.means.shape[0]),
        "ply_foreground_fraction": round(1.0 - float(background.mean()), 4),
        "formats": {},
    }
    for key, img in shots.items():
        fg = ~(background & np.all(img < 8, axis=-1))  # pixels either screenshot draws on
        entry = {
            "bytes": sizes.get(files_key(key)),
            "splats_loaded": states[key]["numSplats"],
            "load_seconds": states[key]["load_seconds"],
            "psnr_vs_ply": round(psnr(img, ref), 2),
            "psnr_vs_ply_foreground": round(psnr(img[fg], ref[fg]), 2),
            "mean_abs_diff": round(float(np.abs(img.astype(np.float64) - ref.astype(np.float64)).mean()), 3),
            "foreground_fraction": round(1.0 - float(np.all(img < 8, axis=-1).mean()), 4),
            "landmarks": landmark_check(img, states[key]["landmark_pixels"]),
        }
        if key == "flipped.ply":  # checked where the unflipped model's clusters are: must fail
            entry["landmarks_at_unflipped_places"] = landmark_check(img, states[".ply"]["landmark_pixels"])
        report["formats"][key] = entry
    report["flipped_psnr_vs_ply"] = report["formats"]["flipped.ply"]["psnr_vs_ply"]
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    return report


def files_key(key: str) -> str:
    return ".ply" if key == "ply (reloaded)" else key


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-cluster", type=int, default=1000, help="Gaussians per cluster (4 clusters)")
    ap.add_argument("--size", type=int, default=512, help="screenshot width and height in pixels")
    ap.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "browser_viewers", help="screenshot folder")
    ap.add_argument("--no-sog", action="store_true", help="skip gaussforge's .sog even when gaussforge is importable")
    args = ap.parse_args(argv)
    report = run(args.per_cluster, args.size, args.out, with_sog=not args.no_sog)
    print(json.dumps(json_safe(report), indent=2))


if __name__ == "__main__":
    main()
