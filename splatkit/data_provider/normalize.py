"""Similarity transforms that centre, level and scale a capture.

``normalize_cameras`` returns ``T`` (4x4) with ``x_norm = T @ x_input`` of the form
``s * R @ (x - c)``: the cameras' common focus point goes to the origin, their average
"up" direction to +Z, and the median camera distance to 1. Exports can be mapped back
to the input frame with ``inverse(T)``.
"""

from __future__ import annotations

import numpy as np
import torch

from splatkit.splat.initialization import focus_point


def _rotation_to_z(up: np.ndarray) -> np.ndarray:
    """Rotation taking unit vector ``up`` to +Z (Rodrigues)."""
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(up, z)
    c = float(np.dot(up, z))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def normalize_cameras(c2w: torch.Tensor) -> torch.Tensor:
    """Similarity ``T [4, 4]`` for OpenCV camera-to-world poses ``c2w [C, 4, 4]``."""
    c2w_np = c2w.double().numpy()
    centers = c2w_np[:, :3, 3]
    forwards = c2w_np[:, :3, 2]
    ups = -c2w_np[:, :3, 1]
    up = ups.mean(axis=0)
    up = up / max(np.linalg.norm(up), 1e-12)
    R = _rotation_to_z(up)
    c = focus_point(centers, forwards)
    if c is None:  # one camera, or parallel axes
        c = centers.mean(axis=0)
    dist = np.linalg.norm(centers - c, axis=1)
    s = 1.0 / max(float(np.median(dist)), 1e-9)
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = -s * R @ c
    return torch.from_numpy(T)


def transform_c2w(T: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Apply similarity ``T`` to camera-to-world poses, keeping rotations orthonormal."""
    s = torch.linalg.det(T[:3, :3]).abs() ** (1.0 / 3.0)
    R = T[:3, :3] / s
    out = c2w.clone().to(T.dtype)
    out[:, :3, :3] = R @ out[:, :3, :3]
    out[:, :3, 3] = out[:, :3, 3] @ T[:3, :3].T + T[:3, 3]
    return out


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points.to(T.dtype) @ T[:3, :3].T + T[:3, 3]
