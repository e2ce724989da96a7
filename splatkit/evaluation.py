"""Evaluation helpers shared by the evaluator, the trainer, TensorBoard and the viewer:
test-view metrics, their summary, side-by-side pictures and memory figures."""

from __future__ import annotations

import io
import resource
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from splatkit.metrics import psnr, ssim
from splatkit.utils.files import atomic_write


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA allocator memory on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """``[..., 3]`` floats in [0, 1] (clamped) as a uint8 NumPy image."""
    return (img.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def side_by_side(render: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """``[H, 3W, 3]`` uint8: ground truth | render | absolute error x5 (grey)."""
    err = ((render - gt).abs().mean(dim=-1, keepdim=True) * 5).expand_as(gt)
    return to_uint8(torch.cat([gt, render, err], dim=1))


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


@torch.no_grad()
def evaluate_frames(render_fn, frames: Iterable, device: torch.device, lpips=None, on_image=None) -> list[dict]:
    """Per-image metrics. ``render_fn(frames) -> [B, H, W, 3]`` renders the given frames.

    Returns one dict per image: name, psnr, ssim, lpips (None without a metric) and
    seconds (render time). ``on_image(name, render, gt)``, if given, receives each
    clamped render and its ground truth (``[H, W, 3]``, on the device) as they are made.
    """
    rows = []
    for f in frames:
        f = f.to(device)
        _sync(device)
        t0 = time.perf_counter()
        img = render_fn(f).clamp(0, 1)
        _sync(device)
        seconds = (time.perf_counter() - t0) / len(f.cameras)
        p = psnr(img, f.images, f.masks)
        s = ssim(img, f.images)
        lp = lpips(img, f.images) if lpips is not None else None
        for i, name in enumerate(f.names):
            rows.append(
                {
                    "name": name,
                    "psnr": float(p[i]),
                    "ssim": float(s[i]),
                    "lpips": None if lp is None else float(lp[i]),
                    "seconds": seconds,
                }
            )
            if on_image is not None:
                on_image(name, img[i], f.images[i])
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over images (PSNR averaged in dB, as papers report it)."""
    if not rows:
        return {"psnr": float("nan"), "ssim": float("nan"), "lpips": None, "num_images": 0, "render_fps": None}
    lp = [r["lpips"] for r in rows]
    return {
        "psnr": statistics.fmean(r["psnr"] for r in rows),
        "ssim": statistics.fmean(r["ssim"] for r in rows),
        "lpips": None if any(v is None for v in lp) else statistics.fmean(lp),
        "num_images": len(rows),
        "render_fps": 1.0 / max(statistics.median(r["seconds"] for r in rows), 1e-9),
    }
