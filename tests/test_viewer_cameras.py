"""The viewer's training-camera slider: a browser's view moved to a training camera renders
exactly that camera (pose and field of view), with no browser needed."""

from __future__ import annotations

import types

import numpy as np
import torch

from splatkit.modules.viewer import SplatViewer, _view_of
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w


class _Widget:
    def __init__(self, value=None):
        self.value = value


class _Camera:
    """What the viewer reads and sets of a viser client's camera."""

    aspect, update_timestamp = 4 / 3, 1.0

    def __init__(self):
        self.wxyz, self.position, self.fov = np.array([1.0, 0, 0, 0]), np.zeros(3), 1.0


def _cameras():
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    out = []
    for i, eye in enumerate(([4.0, 0.0, 1.0], [0.0, -3.0, 2.0], [-2.0, 2.0, 0.5])):
        c2w = look_at_c2w(torch.tensor(eye, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), up)
        f = 30.0 + 10 * i
        K = torch.tensor([[f, 0, 32.0], [0, f, 24.0], [0, 0, 1]])
        out.append(SplatCameras(c2w_to_viewmat(c2w)[None].float(), K[None], 64, 48))
    return out


def test_the_slider_moves_every_view_to_a_training_camera():
    cams = _cameras()
    viewer = SplatViewer()
    viewer._train_views = [_view_of(c) for c in cams]
    viewer._gui_res = _Widget(64)
    client = types.SimpleNamespace(camera=_Camera(), client_id=1)
    viewer._clients = {1: {"client": client, "dirty": False, "last": 0.0}}
    for index in (2, 0, 1):
        viewer.go_to_camera(index)
        assert viewer._clients[1]["dirty"]  # re-rendered at the next chance
        rendered = viewer._camera(client.camera)  # what the viewer renders for that browser now
        assert torch.allclose(rendered.viewmats[0], cams[index].viewmats[0], atol=1e-5)
        assert (rendered.width, rendered.height) == (64, 48)
        assert abs(float(rendered.Ks[0, 1, 1]) - float(cams[index].Ks[0, 1, 1])) < 1e-3  # the same field of view
    viewer.go_to_camera(99)  # out of range: the last camera, not an error
    assert np.allclose(client.camera.position, _view_of(cams[-1])[1])


def test_the_panel_has_the_slider_and_the_start_view_is_the_first_camera():
    import socket

    import pytest

    pytest.importorskip("viser", reason="the viewer needs viser (extra 'viewer')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cams = _cameras()
    viewer = SplatViewer(port=port, mode="rendering")
    viewer.start(lambda c: torch.zeros(c.height, c.width, 3), None, train_cameras=cams)
    try:
        assert (viewer._gui_camera.min, viewer._gui_camera.max, viewer._gui_camera.value) == (0, 2, 0)
        wxyz, position, _ = _view_of(cams[0])
        assert np.allclose(viewer.server.initial_camera.position, position, atol=1e-6)
    finally:
        viewer.stop()
