"""Camera paths for videos: a smooth path through the training cameras, as gsplat's
``generate_interpolated_path`` renders ``videos/traj_N.mp4``."""

from __future__ import annotations

import numpy as np
import torch

from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, viewmat_to_c2w


def interpolated_path(cameras: SplatCameras, num_frames: int, max_keyframes: int = 16) -> SplatCameras:
    """``num_frames`` cameras on a smooth path through ``cameras`` (in their order).

    Up to ``max_keyframes`` of the cameras, evenly spread over the list, are the keyframes:
    centres follow a cubic spline through theirs, orientations are spherically interpolated
    (SciPy's ``Slerp``) between theirs. Every frame has the first camera's intrinsics and
    image size. One camera gives ``num_frames`` copies of it.
    """
    from scipy.interpolate import make_interp_spline
    from scipy.spatial.transform import Rotation, Slerp

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if len(cameras) == 0:
        raise ValueError("interpolated_path needs at least one camera")
    keys = np.unique(np.linspace(0, len(cameras) - 1, min(len(cameras), max(1, max_keyframes))).round().astype(int))
    c2w = viewmat_to_c2w(cameras.viewmats[torch.as_tensor(keys)].double().cpu()).numpy()
    out = np.tile(c2w[:1], (num_frames, 1, 1))
    if len(keys) > 1:
        t_keys = np.linspace(0.0, 1.0, len(keys))
        t = np.linspace(0.0, 1.0, num_frames)
        out[:, :3, 3] = make_interp_spline(t_keys, c2w[:, :3, 3], k=min(3, len(keys) - 1))(t)
        out[:, :3, :3] = Slerp(t_keys, Rotation.from_matrix(c2w[:, :3, :3]))(t).as_matrix()
    viewmats = c2w_to_viewmat(torch.from_numpy(out)).to(cameras.viewmats.dtype)
    Ks = cameras.Ks[:1].expand(num_frames, 3, 3).clone()
    return SplatCameras(viewmats, Ks, cameras.width, cameras.height)
