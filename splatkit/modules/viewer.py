"""Live web viewer on viser (``pip install 'splatkit[viewer]'``).

Open ``http://HOST:PORT`` in a browser and orbit the scene. It starts at the first training
camera and its "Training camera" slider moves the view to any of them. In ``mode="training"``
the viewer shows the step, Gaussian count and the last batch's PSNR, can pause and resume
training, and refreshes the view as training goes on; in ``mode="rendering"``
(``splatkit view FILE``) it shows a fixed model and the step it was saved at.

Frames are rendered on demand (when a camera moves, and during training at most once
per ``refresh_seconds``) at a resolution the user picks in the panel, so the viewer stays
usable on a CPU. Renders happen on the training thread between steps, so they never see
half-updated parameters and need no locking; while paused, that thread keeps serving
renders. The server listens on loopback unless ``host`` says otherwise.

Nothing a browser sends can stop training: camera messages are checked (finite numbers, a
field of view in (0, 180) degrees, a resolution within the panel's 64-2048 px) and bad ones
are dropped with one log line; a render that fails is logged and skipped; viser's share-URL
requests, which would open the server to the internet through an outside relay, are refused.
A WebSocket connection whose ``Origin`` is not the viewer's own page is closed before any of
its messages is read (see :func:`origin_allowed`), so another web page open in the user's
browser cannot drive the viewer.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
import torch

from splatkit.evaluation import to_uint8
from splatkit.metrics import psnr
from splatkit.modules.base import SplatBaseModule
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w, quat_to_rotmat, rotmat_to_quat, viewmat_to_c2w

logger = logging.getLogger("splatkit")

MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048
"""The range of the resolution slider, enforced on the server whatever a client sends."""


class _BadCamera(ValueError):
    """A client's camera message that cannot be rendered (the message says which field)."""


class SplatViewer(SplatBaseModule):
    """Browser viewer of the scene being trained (or of a finished model).

    Args:
        port: TCP port of the web server.
        mode: "training" (live, with pause) or "rendering" (fixed model).
        host: interface to listen on; "127.0.0.1" keeps it to this machine.
        resolution: initial longest image side of rendered frames, in pixels.
        refresh_seconds: during training, re-render a still camera at most this often.

    It renders from its own thread whenever a browser asks, so it cannot take part in
    the collective renders of a sharded run (``dist_mode="shard"``): view an exported
    checkpoint with ``splatkit view`` instead.
    """

    supports_sharded = False

    def __init__(
        self,
        port: int = 8080,
        mode: str = "training",
        host: str = "127.0.0.1",
        resolution: int | None = None,
        refresh_seconds: float = 1.0,
    ) -> None:
        if mode not in ("training", "rendering"):
            raise ValueError(f"mode must be 'training' or 'rendering', got {mode!r}")
        if not 0 < int(port) < 65536:
            raise ValueError(f"port must be in 1..65535, got {port!r}")
        self.port, self.mode, self.host = int(port), mode, host
        self.resolution = resolution
        self.refresh_seconds = refresh_seconds
        self.server = None
        self.frames_sent = 0
        self.paused = threading.Event()
        self._enabled = True
        self._clients: dict[int, dict] = {}
        self._clients_lock = threading.Lock()
        self._render_fn = None
        self._status = {"step": 0, "gaussians": 0, "psnr": float("nan")}
        self._last_batch = None
        self._last_status_update = 0.0
        self._warned: set[str] = set()
        self._train_views: list[tuple[np.ndarray, np.ndarray, float]] = []  # (wxyz, position, vertical fov)
        self.dropped_messages = 0
        self.failed_renders = 0
        self.refused_connections = 0

    # ---------------------------------------------------------------- server
    def start(
        self,
        render_fn,
        initial_c2w: torch.Tensor | None = None,
        default_resolution: int = 512,
        train_cameras: list[SplatCameras] | None = None,
    ) -> None:
        """Start the server. ``render_fn(cameras: SplatCameras) -> [H, W, 3]`` renders one camera.
        With ``train_cameras``, the panel has a slider that moves the view to each of them, and the
        view starts at the first unless ``initial_c2w`` (camera-to-world, OpenCV axes) says otherwise."""
        start_at_first_camera = initial_c2w is None and bool(train_cameras)
        if start_at_first_camera:
            initial_c2w = viewmat_to_c2w(train_cameras[0].viewmats[0].double())
        try:
            import viser
        except ImportError as e:
            raise ImportError("SplatViewer needs viser: pip install 'splatkit[viewer]'") from e
        self._render_fn = render_fn
        try:
            server = viser.ViserServer(host=self.host, port=self.port, verbose=False)
        except OSError as e:
            raise OSError(f"SplatViewer could not listen on {self.host}:{self.port}: {e}") from e
        # The server listens from here on: protect it before anything else, and publish it as
        # ``self.server`` only once it is fully set up.
        self._refuse_share_requests(server)
        self._refuse_foreign_origins(server)
        if server.get_port() != self.port:
            logger.warning("port %d is busy; the viewer uses %d", self.port, server.get_port())
        gui = server.gui
        self._gui_res = gui.add_slider(
            "Resolution",
            min=MIN_RESOLUTION,
            max=MAX_RESOLUTION,
            step=32,
            initial_value=int(min(max(self.resolution or default_resolution, MIN_RESOLUTION), MAX_RESOLUTION)),
            hint="Longest side of rendered frames, in pixels",
        )
        self._gui_res.on_update(lambda _: self._mark_all_dirty())
        self._gui_step = gui.add_text("Step", initial_value="0", disabled=True)
        self._gui_gaussians = gui.add_text("Gaussians", initial_value="0", disabled=True)
        self._gui_psnr = gui.add_text("PSNR (last batch)", initial_value="-", disabled=True)
        self._gui_fps = gui.add_text("Render", initial_value="-", disabled=True)
        if train_cameras:
            self._train_views = [_view_of(c) for c in train_cameras]
            self._gui_camera = gui.add_slider(
                "Training camera",
                min=0,
                max=max(1, len(self._train_views) - 1),
                step=1,
                initial_value=0,
                hint="Move the view to this training camera",
            )
            self._gui_camera.on_update(lambda event: self.go_to_camera(int(self._gui_camera.value)))
        if self.mode == "training":
            self._gui_pause = gui.add_button("Pause training")
            self._gui_resume = gui.add_button("Resume training", visible=False)
            self._gui_pause.on_click(lambda _: self.set_paused(True))
            self._gui_resume.on_click(lambda _: self.set_paused(False))
        if initial_c2w is not None:
            c2w = initial_c2w.double().cpu().numpy()
            server.initial_camera.position = c2w[:3, 3]
            server.initial_camera.look_at = c2w[:3, 3] + c2w[:3, 2]
            server.initial_camera.up = -c2w[:3, 1]
        if start_at_first_camera:  # its field of view too, so the first frame is that camera's view
            server.initial_camera.fov = _view_of(train_cameras[0])[2]
        server.on_client_connect(self._on_connect)
        server.on_client_disconnect(self._on_disconnect)
        self.server = server
        logger.info("viewer at http://%s:%d", self.host, self.server.get_port())

    def _refuse_share_requests(self, server) -> None:
        """Hide the share button and drop viser's share-URL handler: a share URL relays the
        server through an outside host, which a viewer of a training run must never do."""
        try:
            server.gui.configure_theme(show_share_button=False)
        except Exception as e:  # an older viser without the switch
            logger.debug("viewer: cannot hide the share button: %s", e)
        try:
            from viser import _messages

            server._websock_server.unregister_handler(_messages.ShareUrlRequest)
            server._websock_server.register_handler(
                _messages.ShareUrlRequest, lambda client_id, msg: logger.warning("viewer: refused a share-URL request")
            )
        except Exception as e:  # viser's internals moved: say so once instead of failing
            logger.warning("viewer: could not disable viser's share-URL requests (%s)", e)

    def go_to_camera(self, index: int) -> None:
        """Move every browser's view to training camera ``index`` (pose and field of view)."""
        if not self._train_views:
            return
        wxyz, position, fov = self._train_views[min(max(int(index), 0), len(self._train_views) - 1)]
        with self._clients_lock:
            clients = [c["client"] for c in self._clients.values()]
        for client in clients:
            try:  # orientation first: viser keeps the look-at distance and then moves both
                client.camera.wxyz = wxyz
                client.camera.position = position
                client.camera.fov = fov
            except Exception as e:  # a client that went away meanwhile
                logger.debug("viewer: could not move a client's camera: %s", e)
        self._mark_all_dirty()

    def _refuse_foreign_origins(self, server) -> None:
        """Close every WebSocket whose ``Origin`` header is not the viewer's own page, before
        viser reads a message from it (browsers send the header; a page on another site
        would otherwise reach the viewer through the user's browser)."""
        from websockets.exceptions import ConnectionClosedError

        websock = server._websock_server
        if not hasattr(websock, "_live_connections"):  # another viser: say so instead of failing
            logger.warning("viewer: this viser version does not let splatkit check the Origin of connections")
            return

        async def check(conn) -> None:
            connection = websock._live_connections.get(conn.client_id)
            if connection is None or connection.request is None:
                return
            headers = connection.request.headers
            origin, host = headers.get("Origin"), headers.get("Host")
            if origin_allowed(origin, host, self.host):
                return
            self.refused_connections += 1
            self._warn_once(f"origin:{origin}", "viewer: refused a connection from origin %r (host %r)", origin, host)

            async def nothing(*args, **kwargs):  # what it sent before the close is never handled
                raise ConnectionClosedError(None, None)

            connection.recv = nothing
            await connection.close(1008, "origin not allowed")

        websock.on_client_connect(check)
        callbacks = getattr(websock, "_client_connect_cb", None)
        if isinstance(callbacks, list) and callbacks and callbacks[-1] is check:
            callbacks.insert(0, callbacks.pop())  # before viser's own: nothing else sees the connection first

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.get_port()}"

    def set_paused(self, paused: bool) -> None:
        if paused:
            self.paused.set()
        else:
            self.paused.clear()
        if self.mode == "training" and self.server is not None:
            self._gui_pause.visible = not paused
            self._gui_resume.visible = paused

    def _on_connect(self, client) -> None:
        with self._clients_lock:
            self._clients[client.client_id] = {"client": client, "dirty": True, "last": 0.0}
        client.camera.on_update(lambda cam: self._mark_dirty(cam.client.client_id))

    def _on_disconnect(self, client) -> None:
        with self._clients_lock:
            self._clients.pop(client.client_id, None)

    def _mark_dirty(self, client_id: int) -> None:
        with self._clients_lock:
            if client_id in self._clients:
                self._clients[client_id]["dirty"] = True

    def _mark_all_dirty(self) -> None:
        with self._clients_lock:
            for c in self._clients.values():
                c["dirty"] = True

    def serve_pending(self, training: bool = False) -> int:
        """Render for every client whose camera moved (or, while training, whose frame is
        older than ``refresh_seconds``); returns the number of frames sent."""
        now = time.perf_counter()
        with self._clients_lock:
            todo = [
                c for c in self._clients.values() if c["dirty"] or (training and now - c["last"] > self.refresh_seconds)
            ]
        sent = 0
        for c in todo:
            cam = c["client"].camera
            if cam.update_timestamp == 0.0:  # the browser has not reported its camera yet
                continue
            c["dirty"], c["last"] = False, time.perf_counter()
            try:
                cams = self._camera(cam)
            except _BadCamera as e:
                self.dropped_messages += 1
                self._warn_once(f"camera:{e}", "viewer: dropped a camera message from a client: %s", e)
                continue
            w, h = cams.width, cams.height
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    img = self._render_fn(cams)
                image = to_uint8(img)
            except Exception as e:  # a viewer frame must never end the run it shows
                self.failed_renders += 1
                self._warn_once(f"render:{type(e).__name__}", "viewer: a %dx%d render failed (%r); skipped", w, h, e)
                continue
            dt = time.perf_counter() - t0
            try:
                c["client"].scene.set_background_image(image, format="jpeg", jpeg_quality=85)
            except Exception as e:  # a client that went away mid-render
                logger.debug("viewer: could not send a frame: %s", e)
                continue
            self._gui_fps.value = f"{w}x{h}, {1000 * dt:.0f} ms"
            self.frames_sent += 1
            sent += 1
        return sent

    def _camera(self, cam) -> SplatCameras:
        """viser camera (OpenCV axes, camera-to-world wxyz + position, vertical fov) ->
        splatkit camera at the chosen resolution; :class:`_BadCamera` for values no camera has."""
        res = _number(self._gui_res.value, "resolution")
        res = int(min(max(res, MIN_RESOLUTION), MAX_RESOLUTION))
        aspect = _number(cam.aspect, "aspect") if cam.aspect is not None else 1.0
        if not 1e-3 <= aspect <= 1e3:
            raise _BadCamera(f"aspect ratio {aspect!r} is outside [0.001, 1000]")
        fov = _number(cam.fov, "fov")
        if not 1e-4 < fov < math.pi - 1e-4:
            raise _BadCamera(f"fov {fov!r} rad is outside (0, pi)")
        wxyz = _vector(cam.wxyz, 4, "wxyz")
        if float(np.linalg.norm(wxyz)) < 1e-8:
            raise _BadCamera("wxyz is a zero quaternion")
        position = _vector(cam.position, 3, "position")
        w, h = (res, max(1, round(res / aspect))) if aspect >= 1 else (max(1, round(res * aspect)), res)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = quat_to_rotmat(torch.tensor(wxyz / np.linalg.norm(wxyz), dtype=torch.float64))
        c2w[:3, 3] = torch.tensor(position, dtype=torch.float64)
        f = 0.5 * h / math.tan(0.5 * fov)
        K = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
        return SplatCameras(c2w_to_viewmat(c2w)[None].float(), K[None].float(), w, h)

    def _status_due(self) -> bool:
        """The panel refreshes at most 4 times a second."""
        return time.perf_counter() - self._last_status_update >= 0.25

    def update_status(self, force: bool = False, **status) -> None:
        self._status.update(status)
        if self.server is None or not (force or self._status_due()):
            return
        self._last_status_update = time.perf_counter()
        self._gui_step.value = str(self._status["step"])
        self._gui_gaussians.value = f"{self._status['gaussians']:,}"
        p = self._status["psnr"]
        self._gui_psnr.value = "-" if p is None or math.isnan(p) else f"{p:.2f} dB"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    # ---------------------------------------------------------------- rendering mode
    def serve_forever(
        self,
        params: dict,
        sh_degree: int,
        renderer,
        device: torch.device | str = "cpu",
        background: tuple[float, float, float] = (0.0, 0.0, 0.0),
        poll_seconds: float = 0.02,
        stop_event: threading.Event | None = None,
        initial_c2w: torch.Tensor | None = None,
        step: int | None = None,
        train_cameras: list[SplatCameras] | None = None,
    ) -> None:
        """Show a fixed model until interrupted (or ``stop_event`` is set), starting from
        ``initial_c2w`` (camera-to-world, OpenCV axes; default: the first of ``train_cameras``,
        else a view of the whole model), with a slider over ``train_cameras`` when given, and
        showing ``step`` in the panel when known."""
        device = torch.device(device)
        bg = torch.tensor([background], dtype=torch.float32, device=device)
        means = params["means"].detach()
        c2w = initial_c2w if initial_c2w is not None or train_cameras else _overview_c2w(means)

        def render_fn(cams):
            return renderer.render(params, cams.to(device), sh_degree, bg).images[0]

        self.start(
            render_fn, c2w, default_resolution=1024 if device.type == "cuda" else 512, train_cameras=train_cameras
        )
        self.update_status(force=True, step="-" if step is None else step, gaussians=int(means.shape[0]), psnr=None)
        try:
            while stop_event is None or not stop_event.is_set():
                if not self.serve_pending():
                    time.sleep(poll_seconds)
        finally:
            self.stop()

    # ---------------------------------------------------------------- hooks
    def on_setup(self, world_rank: int = 0, trainer=None, step: int = 0, training_state=None, **kwargs) -> None:
        self._enabled = world_rank == 0 and self.mode == "training"
        if not self._enabled:
            return

        def render_fn(cams):
            return trainer.render_view(cams, trainer.active_sh_degree(max(trainer.step, 1))).images[0]

        cameras = trainer.data_provider.train_cameras()
        first = cameras[0]
        self.start(
            render_fn,
            viewmat_to_c2w(first.viewmats[0].double()),
            default_resolution=1024 if trainer.device.type == "cuda" else min(512, max(first.width, first.height)),
            train_cameras=cameras,
        )
        self.update_status(force=True, step=step, gaussians=training_state.num_gaussians)

    def post_compute_loss(self, render=None, frames=None, **kwargs) -> None:
        if self._enabled:
            self._last_batch = (render.images.detach(), frames.images, frames.masks)

    def post_step(self, step: int, training_state=None, **kwargs) -> None:
        if not self._enabled:
            return
        if self._last_batch is not None and self._status_due():  # the PSNR costs a sync: only when shown
            img, gt, mask = self._last_batch
            self.update_status(
                step=step, gaussians=training_state.num_gaussians, psnr=float(psnr(img, gt, mask).mean())
            )
        self._last_batch = None
        self.serve_pending(training=True)
        while self.paused.is_set() and self.server is not None:
            self.update_status(step=step, gaussians=training_state.num_gaussians)
            if not self.serve_pending():
                time.sleep(0.02)

    def on_cleanup(self, **kwargs) -> None:
        self.stop()


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def origin_allowed(origin: str | None, host_header: str | None, bind_host: str) -> bool:
    """Whether a WebSocket handshake with these ``Origin`` and ``Host`` headers comes from the
    viewer's own page.

    No ``Origin`` (not a browser: scripts and tools) is allowed. A browser's must be the very
    origin the viewer page was served from (``http(s)://`` + the ``Host`` it asked for, so an
    ssh-forwarded port works), and that host must be a loopback name, an IP address, the
    interface the server listens on or this machine's name: a DNS name an attacker controls
    (DNS rebinding, where a page and the ``Host`` it asks for look alike) is refused.
    """
    if origin is None:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not hostname or not host_header:
        return False
    if parts.netloc.lower() != host_header.strip().lower():
        return False
    if hostname in _LOOPBACK_NAMES or hostname == bind_host.lower():
        return True
    try:
        ipaddress.ip_address(hostname)
        return True
    except ValueError:
        pass
    return hostname in {socket.gethostname().lower(), socket.getfqdn().lower()}


def _number(value, field: str) -> float:
    """A finite float from a client's message, or :class:`_BadCamera` naming the field."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise _BadCamera(f"{field} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise _BadCamera(f"{field} {value!r} is not finite")
    return x


def _vector(value, n: int, field: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise _BadCamera(f"{field} {value!r} is not a vector of numbers") from None
    if v.shape != (n,) or not np.isfinite(v).all():
        raise _BadCamera(f"{field} {value!r} is not {n} finite numbers")
    return v


def _view_of(cameras: SplatCameras) -> tuple[np.ndarray, np.ndarray, float]:
    """viser's pose of the first of ``cameras``: camera-to-world wxyz and position (OpenCV axes,
    as viser's), and the vertical field of view in radians."""
    c2w = viewmat_to_c2w(cameras.viewmats[0].double().cpu())
    wxyz = rotmat_to_quat(c2w[:3, :3]).numpy()
    fov = 2.0 * math.atan(0.5 * cameras.height / float(cameras.Ks[0, 1, 1]))
    return wxyz, c2w[:3, 3].numpy(), fov


def _overview_c2w(means: torch.Tensor) -> torch.Tensor:
    """A camera-to-world looking at the bulk of the Gaussians from outside them (+Z up)."""
    centre = means.median(dim=0).values
    radius = float((means - centre).norm(dim=-1).quantile(0.9)) if len(means) else 1.0
    eye = centre + torch.tensor([0.0, -2.5 * radius, 0.8 * radius], device=means.device)
    return look_at_c2w(eye.double().cpu(), centre.double().cpu(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


@dataclass
class SplatViewerConfig:
    """The live viewer's switch and address as ``splatkit train`` flags; see :mod:`splatkit.registry`."""

    viewer: bool = False
    """Serve the live web viewer while training."""
    viewer_port: int = 8080
    """Port of the live viewer (http://HOST:PORT)."""
    viewer_host: str = "127.0.0.1"
    """Interface the live viewer listens on; 0.0.0.0 makes it reachable from other machines."""

    def build(self, output_dir, max_steps: int) -> SplatViewer | None:
        del output_dir, max_steps
        return SplatViewer(port=self.viewer_port, host=self.viewer_host) if self.viewer else None
