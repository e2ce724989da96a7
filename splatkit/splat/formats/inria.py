"""The output folder of the INRIA 3DGS reference code, which its viewers and scripts open.

``OUT/point_cloud/iteration_N/point_cloud.ply`` (the INRIA PLY), ``OUT/cameras.json``
and ``OUT/cfg_args``, as ``train.py`` of graphdeco-inria/gaussian-splatting writes them:

- ``cameras.json``: a list, one entry per training camera, with ``id``, ``img_name``
  (the image's name without its suffix), ``width``, ``height``, ``position`` (the
  camera centre), ``rotation`` (the 3x3 camera-to-world rotation, rows; OpenCV axes) and
  the focal lengths ``fx``, ``fy`` in pixels;
- ``cfg_args``: the ``repr`` of an ``argparse.Namespace`` of the run's model settings
  (``sh_degree``, ``source_path``, ``model_path``, ``images``, ``resolution``,
  ``white_background``, ``data_device``, ``eval``, ...), which the INRIA renderer reads
  back with ``eval``.

Cameras are written in the frame of the PLY: pass the same ``transform`` (a similarity)
that moved the Gaussians, if any.
"""

from __future__ import annotations

import json
import os
from argparse import Namespace
from pathlib import Path

import torch

from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import viewmat_to_c2w
from splatkit.splat.transform import split_similarity
from splatkit.utils.files import atomic_write


def ply_path(output_dir: str | os.PathLike, iteration: int) -> Path:
    """``OUT/point_cloud/iteration_N/point_cloud.ply``."""
    return Path(output_dir) / "point_cloud" / f"iteration_{iteration}" / "point_cloud.ply"


def cameras_json(cameras: list[SplatCameras], names: list[str], transform: torch.Tensor | None = None) -> list[dict]:
    """INRIA ``cameras.json`` entries of ``cameras`` (one camera each) named ``names``;
    ``transform`` (a ``[4, 4]`` similarity) moves them as it moved the Gaussians."""
    if len(cameras) != len(names):
        raise ValueError(f"{len(cameras)} cameras but {len(names)} names")
    R_T = s = t = None
    if transform is not None:
        R_T, s, t = split_similarity(transform)
    out = []
    for i, (cam, name) in enumerate(zip(cameras, names)):
        c2w = viewmat_to_c2w(cam.viewmats[0].detach().cpu().double())
        rotation, position = c2w[:3, :3], c2w[:3, 3]
        if R_T is not None:
            rotation, position = R_T @ rotation, s * (R_T @ position) + t
        K = cam.Ks[0].detach().cpu().double()
        out.append(
            {
                "id": i,
                "img_name": Path(name).stem,
                "width": int(cam.width),
                "height": int(cam.height),
                "position": position.tolist(),
                "rotation": rotation.tolist(),
                "fy": float(K[1, 1]),
                "fx": float(K[0, 0]),
            }
        )
    return out


def cfg_args(
    output_dir: str | os.PathLike, sh_degree: int, source_path: str = "", white_background: bool = False
) -> str:
    """The ``cfg_args`` text: the INRIA model settings as ``Namespace(...)``."""
    return repr(
        Namespace(
            data_device="cuda",
            depths="",
            eval=True,
            images="images",
            model_path=str(Path(output_dir).resolve()),
            resolution=-1,
            sh_degree=int(sh_degree),
            source_path=source_path,
            train_test_exp=False,
            white_background=bool(white_background),
        )
    )


def write_scene_files(
    output_dir: str | os.PathLike,
    cameras: list[SplatCameras],
    names: list[str],
    sh_degree: int,
    transform: torch.Tensor | None = None,
    source_path: str = "",
    white_background: bool = False,
) -> list[Path]:
    """Write ``cameras.json`` and ``cfg_args`` into ``output_dir`` atomically; their paths."""
    out = Path(output_dir)
    entries = cameras_json(cameras, names, transform)
    text = cfg_args(out, sh_degree, source_path, white_background)
    return [
        atomic_write(out / "cameras.json", lambda tmp: tmp.write_text(json.dumps(entries))),
        atomic_write(out / "cfg_args", lambda tmp: tmp.write_text(text)),
    ]
