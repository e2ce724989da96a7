"""Camera paths for videos: a smooth path through the training cameras, as gsplat's
``generate_interpolated_path`` renders ``videos/traj_N.mp4``."""

from __future__ import annotations

import numpy as np
import torch

from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import c2w_to_viewmat, viewmat_to_c2w


def interpolated_path(cameras: SplatCameras, num_frames: int, max_keyframes: int = 16) -> SplatCameras:
    """``num_frames`` cameras on a smooth path through ``cameras``, starting at the first.

    Up to ``max_keyframes`` of the cameras are the keyframes, spread over the capture (farthest
    point sampling of the centres, from the first camera), visited in the list's order (a video's
    frames) unless a short tour of the centres is much shorter (captures listed in no spatial
    order, such as internet photos or a spiral of cameras, whose list order would jump across the
    scene and through it). Centres follow a cubic spline through the keyframes', orientations are
    spherically interpolated (SciPy's ``Slerp``) between theirs. Every frame has the first
    camera's intrinsics and image size. One camera gives ``num_frames`` copies of it.
    """
    from scipy.interpolate import make_interp_spline
    from scipy.spatial.transform import Rotation, Slerp

    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if len(cameras) == 0:
        raise ValueError("interpolated_path needs at least one camera")
    centres = viewmat_to_c2w(cameras.viewmats.double().cpu()).numpy()[:, :3, 3]
    keys = keyframe_order(centres, max(1, max_keyframes))
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


def keyframe_order(centres: np.ndarray, max_keyframes: int) -> list[int]:
    """Indices of up to ``max_keyframes`` of the camera ``centres [N, 3]``, in visiting order,
    starting at camera 0: farthest-point sampled, then in list order unless a short tour
    (nearest neighbour, improved by 2-opt) is more than 25% shorter."""
    n = len(centres)
    chosen = [0]
    dist = np.linalg.norm(centres - centres[0], axis=1)
    while len(chosen) < min(n, max_keyframes) and dist.max() > 0:
        nxt = int(dist.argmax())
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(centres - centres[nxt], axis=1))
    in_list_order = sorted(chosen)
    pts = centres[chosen]
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    tour, left = [0], set(range(1, len(chosen)))
    while left:
        nxt = min(left, key=lambda j: (d[tour[-1], j], j))
        tour.append(nxt)
        left.remove(nxt)
    improved = True
    while improved:  # 2-opt on an open path whose first point stays first
        improved = False
        for i in range(1, len(tour) - 1):
            for j in range(i + 1, len(tour)):
                a, b = tour[i - 1], tour[i]
                c, e = tour[j], tour[j + 1] if j + 1 < len(tour) else None
                before = d[a, b] + (d[c, e] if e is not None else 0.0)
                after = d[a, c] + (d[b, e] if e is not None else 0.0)
                if after < before - 1e-12:
                    tour[i : j + 1] = tour[i : j + 1][::-1]
                    improved = True
    toured = [chosen[t] for t in tour]

    def length(order: list[int]) -> float:
        return float(np.linalg.norm(np.diff(centres[order], axis=0), axis=1).sum())

    return in_list_order if length(in_list_order) <= 1.25 * length(toured) else toured
