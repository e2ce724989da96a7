"""Where Gaussians start when a capture has no point cloud: inside the volume its cameras look at.

A capture's cameras tell where the scene is: a point that many photos see lies in the
scene, a point that none sees cannot be trained. :func:`view_volume_points` samples
uniformly from the region seen by at least a share (``coverage``) of as many cameras as
see the best-seen point. For cameras around an object (NeRF-synthetic: radius 4, 40
degree field of view) and a share of 0.9 this is the ball of radius ~1.4 around the
object, the volume the 3DGS convention's +-1.3 cube was chosen to cover; the default
share of 0.5 also takes in the background that only some photos show (on fox it scored
1.6 dB above 0.9, docs/quality.md). For a forward-facing capture it is the cone the views
share. It works from the cameras alone, for any scene scale, so no capture needs tuning;
with an alpha channel the volume is also carved to the visual hull.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import project_points, viewmat_to_c2w


def focus_point(centers: np.ndarray, forwards: np.ndarray) -> np.ndarray | None:
    """Least-squares point nearest to all optical axes (``centers [C, 3]``, unit ``forwards
    [C, 3]``); None when the axes are (nearly) parallel and meet nowhere."""
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(centers, forwards):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    if len(centers) < 2 or np.linalg.cond(A) > 1e6:
        return None
    return np.linalg.solve(A, b)


HULL_AGREEMENT = 0.95
"""Share of the cameras seeing a point that must see it on the object (alpha > 0.05) for the point to
count as inside the visual hull; below 1 so that a few imprecise poses or masks do not carve it away."""


def _project(
    points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, sizes: torch.Tensor, near: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(seen, u, v)``, each ``[M, C]``: whether camera c sees point m (in front, inside the
    image) and where it lands in pixels."""
    uv, z = project_points(points, viewmats, Ks, near)
    u, v = uv[..., 0], uv[..., 1]
    seen = (z > near) & (u >= 0) & (u < sizes[:, 0]) & (v >= 0) & (v < sizes[:, 1])
    return seen, u, v


def view_counts(
    points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, sizes: torch.Tensor, near: float
) -> torch.Tensor:
    """How many cameras see each point ``[M]``: in front (depth > ``near``) and inside the image.

    points ``[M, 3]``; viewmats ``[C, 4, 4]`` world-to-camera (OpenCV); Ks ``[C, 3, 3]``;
    sizes ``[C, 2]`` (width, height).
    """
    return _project(points, viewmats, Ks, sizes, near)[0].sum(dim=1)


def _covered(
    seen: torch.Tensor, u: torch.Tensor, v: torch.Tensor, alphas: list[torch.Tensor], threshold: float
) -> torch.Tensor:
    """``[M, C]``: camera c sees point m on a pixel whose alpha exceeds ``threshold``."""
    covered = torch.zeros_like(seen)
    for c, alpha in enumerate(alphas):
        rows = torch.nonzero(seen[:, c])[:, 0]
        if rows.numel() == 0:
            continue
        x = u[rows, c].long().clamp(0, alpha.shape[1] - 1)
        y = v[rows, c].long().clamp(0, alpha.shape[0] - 1)
        covered[rows, c] = alpha[y, x] > threshold
    return covered


SURROUND_EXTENT = 3.0
"""The surroundings' cube, in multiples of the main volume's cube."""
SURROUND_COVERAGE = 0.05
"""The surroundings: points seen by at least this fraction of the best-seen point's cameras."""


def view_volume_points(
    cameras: list[SplatCameras],
    num_points: int,
    generator: torch.Generator,
    extent: float = 1.0,
    coverage: float = 0.5,
    alphas: list[torch.Tensor] | None = None,
    chunk: int = 16384,
    surround: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """``num_points`` points ``[P, 3]`` uniform in the volume the cameras look at, and a report.

    With ``surround`` > 0 that fraction of the points goes instead into the capture's
    surroundings: the volume that at least :data:`SURROUND_COVERAGE` as many cameras see as
    see its best-seen point, in a cube :data:`SURROUND_EXTENT` times larger (the rest of
    a room, the ground, distant walls: seen by a few cameras each, so outside the main
    volume, and without them the background must be grown into from the object).

    Candidates are drawn in a cube around the point the cameras' optical axes pass closest
    to (its half-size: ``extent`` times the median camera distance to it; around the
    cameras' centroid, with their spread as the distance, when the axes are parallel). A
    candidate is kept if at least ``coverage`` times as many cameras see it as see the
    best-seen candidate. The cube shrinks to the kept region once it is known, so sampling
    stays cheap when the volume is a small part of the cube.

    With ``alphas`` (each camera's coverage ``[H, W]`` in [0, 1], RGBA captures) a candidate
    must also lie inside the visual hull: on a covered pixel (alpha > 0.05) in at least
    :data:`HULL_AGREEMENT` of the cameras that see it. Empty space around an object is then
    never seeded, whatever its shape.
    """
    if not cameras:
        raise ValueError("view_volume_points needs at least one camera")
    if not 0 <= surround < 1:
        raise ValueError(f"surround must be in [0, 1), got {surround!r}")
    outer = round(num_points * surround)
    if outer:
        points, report = view_volume_points(cameras, num_points - outer, generator, extent, coverage, alphas, chunk)
        around, around_report = view_volume_points(
            cameras, outer, generator, SURROUND_EXTENT * extent, SURROUND_COVERAGE, alphas, chunk
        )
        report.update(surround_points=outer, surround_min_views=around_report["min_views"])
        report["bounds"] = [
            [round(float(x), 3) for x in torch.minimum(points.amin(0), around.amin(0))],
            [round(float(x), 3) for x in torch.maximum(points.amax(0), around.amax(0))],
        ]
        return torch.cat([points, around]), report
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    viewmats = torch.cat([c.viewmats for c in cameras]).double()
    Ks = torch.cat([c.Ks for c in cameras]).double()
    sizes = torch.tensor([[c.width, c.height] for c in cameras for _ in range(len(c))], dtype=torch.float64)
    c2w = viewmat_to_c2w(viewmats)
    centers, forwards = c2w[:, :3, 3].numpy(), c2w[:, :3, 2].numpy()
    focus = focus_point(centers, forwards)
    if focus is not None:
        radius = float(np.median(np.linalg.norm(centers - focus, axis=1)))
    else:
        focus = centers.mean(axis=0)
        radius = float(np.linalg.norm(centers - focus, axis=1).max()) if len(centers) > 1 else 1.0
    radius = max(radius, 1e-6)
    near = 1e-3 * radius
    lo = torch.from_numpy(focus - extent * radius)
    hi = torch.from_numpy(focus + extent * radius)

    if alphas is not None and len(alphas) != len(viewmats):
        raise ValueError(f"view_volume_points: {len(alphas)} alpha images for {len(viewmats)} cameras")

    def counts_of(pts):
        seen, u, v = _project(pts, viewmats, Ks, sizes, near)
        counts = seen.sum(dim=1)
        if alphas is not None:  # outside the hull: not seen at all
            inside = _covered(seen, u, v, alphas, 0.05).sum(dim=1) >= HULL_AGREEMENT * counts
            counts = torch.where(inside, counts, 0)
        return counts

    def draw(lo, hi, m):
        pts = lo + (hi - lo) * torch.rand(m, 3, generator=generator, dtype=torch.float64)
        return pts, torch.cat([counts_of(pts[i : i + chunk]) for i in range(0, m, chunk)])

    # A first look over the whole cube: how well the best point is seen, and where the kept region is.
    probe, counts = draw(lo, hi, max(16 * chunk, 4 * num_points))
    best = int(counts.max())
    if best == 0:
        raise ValueError(
            "no camera sees any point near where the cameras point; check the poses "
            "(camera-to-world, OpenCV axes) and the intrinsics"
        )
    need = max(1, math.ceil(coverage * best))
    kept = probe[counts >= need]
    # A small kept region (a carved object in a large cube): probe on until its extent is known,
    # so that sampling below draws from around it rather than from the whole cube.
    probed = len(probe)
    for _ in range(64):
        if len(kept) >= 16:
            break
        more, more_counts = draw(lo, hi, len(probe))
        kept = torch.cat([kept, more[more_counts >= need]])
        probed += len(more)
    cube_volume = float((hi - lo).prod())
    if len(kept) >= 16:
        margin = 0.05 * (kept.amax(0) - kept.amin(0))
        lo, hi = torch.maximum(lo, kept.amin(0) - margin), torch.minimum(hi, kept.amax(0) + margin)
    kept_fraction = len(kept) / probed
    out, total = [kept], len(kept)
    while total < num_points:
        pts, counts = draw(lo, hi, max(chunk, 2 * (num_points - total)))
        pts = pts[counts >= need]
        out.append(pts)
        total += len(pts)
    points = torch.cat(out)
    # The probe's points are uniform in the big cube and the rest in the small one; both are
    # uniform within the kept region, which the small cube contains. Shuffle before trimming.
    points = points[torch.randperm(len(points), generator=generator)[:num_points]]
    report = {
        "focus": [round(float(x), 4) for x in focus],
        "cube_half_size": round(extent * radius, 4),
        "min_views": need,
        "num_cameras": len(viewmats),
        "volume": round(kept_fraction * cube_volume, 4),
        "visual_hull": alphas is not None,
        "bounds": [[round(float(x), 3) for x in points.amin(0)], [round(float(x), 3) for x in points.amax(0)]],
    }
    return points.float(), report
