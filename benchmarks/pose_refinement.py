"""Pose refinement on a real capture whose training poses were perturbed; prints JSON.

Every training camera of the scene is moved by ``--degrees`` of rotation about a random
axis and ``--shift`` x the scene's extent along a random direction (seeded), as SfM poses
are slightly off; test cameras stay exact. Three runs with ``splatkit train``'s defaults on
the same data, split, seed and steps: the exact poses, the perturbed poses, and the
perturbed poses with ``--pose-opt se3``. Reported: test PSNR / SSIM / Gaussians / seconds of
each, and the training cameras' mean rotation (degrees) and centre (scene units) errors
before and after refinement.

    python benchmarks/pose_refinement.py --scene fox --steps 2000 --pose-lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from splatkit.cli import _data_provider
from splatkit.data_provider.base import SplatFrames
from splatkit.pose import SplatPoseRefinement
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import axis_angle_to_rotmat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from appearance import scene_command, train  # noqa: E402  (the same scenes and runs)


def perturb(provider, degrees: float, shift: float, seed: int = 0) -> list[torch.Tensor]:
    """Make ``provider``'s training cameras ``E_i @ viewmat_i`` with seeded rigid errors ``E_i``."""
    g = torch.Generator().manual_seed(seed)
    errors = []
    for _ in range(provider.num_train_frames()):
        v = torch.randn(3, generator=g, dtype=torch.float64)
        t = torch.randn(3, generator=g, dtype=torch.float64)
        E = torch.eye(4, dtype=torch.float64)
        E[:3, :3] = axis_angle_to_rotmat(v / v.norm() * math.radians(degrees))
        E[:3, 3] = t / t.norm() * shift * provider.scene_scale
        errors.append(E.float())
    exact_frame, exact_cameras = provider.train_frame, provider.train_cameras

    def train_frame(i: int) -> SplatFrames:
        f = exact_frame(i)
        c = f.cameras
        return SplatFrames(SplatCameras(errors[i] @ c.viewmats, c.Ks, c.width, c.height), f.images, f.masks, f.names)

    def train_cameras() -> list[SplatCameras]:
        return [SplatCameras(errors[i] @ c.viewmats, c.Ks, c.width, c.height) for i, c in enumerate(exact_cameras())]

    provider.train_frame, provider.train_cameras = train_frame, train_cameras
    return errors


def pose_errors(cameras, truth) -> dict:
    rot, centre = [], []
    for a, b in zip(cameras, truth):
        Va, Vb = a.viewmats[0].double(), b.viewmats[0].double()
        D = Va[:3, :3] @ Vb[:3, :3].T
        rot.append(math.degrees(math.acos(max(-1.0, min(1.0, (float(D.trace()) - 1) / 2)))))
        centre.append(float((torch.linalg.inv(Va)[:3, 3] - torch.linalg.inv(Vb)[:3, 3]).norm()))
    return {"rotation_degrees": sum(rot) / len(rot), "centre": sum(centre) / len(centre)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", choices=["fox", "statue"], default="fox")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--degrees", type=float, default=1.0)
    ap.add_argument("--shift", type=float, default=0.01, help="translation error, a fraction of the scene extent")
    ap.add_argument("--pose-lr", type=float, default=SplatPoseRefinement.lr)
    ap.add_argument("--out-dir", default="/tmp/splatkit_pose")
    args = ap.parse_args()
    out = Path(args.out_dir)
    cmd = scene_command(args.scene, args.factor)
    report = {k: getattr(args, k) for k in ("scene", "steps", "seed", "factor", "degrees", "shift", "pose_lr")}
    provider = _data_provider(cmd.data, cmd.demo, cmd.colmap, cmd.blender)
    truth = provider.train_cameras()
    _, report["exact_poses"] = train(cmd, provider, args.steps, args.seed, out / "exact")
    print(f"exact: {report['exact_poses']}", file=sys.stderr)
    perturb(provider, args.degrees, args.shift, args.seed)
    report["pose_error_before"] = pose_errors(provider.train_cameras(), truth)
    _, report["perturbed"] = train(cmd, provider, args.steps, args.seed, out / "perturbed")
    print(f"perturbed: {report['perturbed']}", file=sys.stderr)
    refine = {"pose_opt": "se3", "pose": SplatPoseRefinement(lr=args.pose_lr)}  # --pose-opt se3 --pose.lr
    trainer, report["perturbed_refined"] = train(cmd, provider, args.steps, args.seed, out / "refined", **refine)
    report["pose_error_after"] = pose_errors(trainer.train_cameras(), truth)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
