"""Evaluation helpers shared by the evaluator, the trainer, TensorBoard and the viewer:
test-view metrics, their summary, labelled side-by-side pictures, preview grids and memory figures."""

from __future__ import annotations

import io
import resource
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from splatkit.appearance import colour_corrected
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


LABEL_HEIGHT = 16
"""Height in pixels of the strip above a picture that holds its label."""


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # an older Pillow or one without FreeType: its bitmap font
        return ImageFont.load_default()


def labelled(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (``[H, W, 3]`` uint8) under a black strip of :data:`LABEL_HEIGHT` px with
    ``text`` in white (clipped to the image's width); the pixels themselves are untouched."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    canvas = Image.new("RGB", (w, h + LABEL_HEIGHT), (0, 0, 0))
    canvas.paste(Image.fromarray(image), (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((3, 1), text, fill=(255, 255, 255), font=_font(LABEL_HEIGHT - 4))
    return np.asarray(canvas)


def side_by_side(render: torch.Tensor, gt: torch.Tensor, psnr_db: float | None = None) -> np.ndarray:
    """``[LABEL_HEIGHT + H, 3W, 3]`` uint8: ground truth | render | absolute error x5 (grey),
    each under its label; the render's says its PSNR when ``psnr_db`` is given."""
    err = ((render - gt).abs().mean(dim=-1, keepdim=True) * 5).expand_as(gt)
    render_label = "render" if psnr_db is None else f"render, PSNR {psnr_db:.2f} dB"
    panels = [(gt, "ground truth"), (render, render_label), (err, "error x5")]
    return np.concatenate([labelled(to_uint8(img), text) for img, text in panels], axis=1)


def _fit(image: np.ndarray, max_side: int, min_side: int = 160) -> np.ndarray:
    """``image`` shrunk (area filter) so that its longer side is at most ``max_side``, or
    enlarged by a whole factor (pixels kept square) while it is under ``min_side``."""
    from PIL import Image

    h, w = image.shape[:2]
    if max(h, w) < min_side:
        k = min_side // max(h, w) + 1
        return image.repeat(k, axis=0).repeat(k, axis=1)
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BOX))


def preview_grid(views: list[tuple[str, np.ndarray, np.ndarray, float]], columns: int = 2, max_side: int = 400):
    """One picture of test views: for each ``(name, ground_truth, render, psnr_db)`` (uint8
    ``[H, W, 3]``) a tile ground truth | render under the label "name: PSNR xx.xx dB (ground
    truth | render)"; tiles in rows of ``columns``, images brought to at most ``max_side`` px
    (small ones enlarged, pixels kept square), on a dark grey background."""
    tiles = []
    for name, gt, render, p in views:
        pair = np.concatenate([_fit(gt, max_side), _fit(render, max_side)], axis=1)
        tiles.append(labelled(pair, f"{name}: PSNR {p:.2f} dB (ground truth | render)"))
    if not tiles:
        raise ValueError("preview_grid needs at least one view")
    gap = 4
    th, tw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (th + gap) + gap, columns * (tw + gap) + gap, 3), 48, dtype=np.uint8)
    for i, t in enumerate(tiles):
        y, x = gap + (i // columns) * (th + gap), gap + (i % columns) * (tw + gap)
        grid[y : y + t.shape[0], x : x + t.shape[1]] = t
    return grid


def stacked_rows(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """One picture of rows of panels (uint8 ``[H, W, 3]``, the same height within a row): each
    row's panels side by side, the rows one under the other, narrower rows padded on the right,
    ``gap`` px between rows, on the dark grey background of :func:`preview_grid`."""
    lines = [np.concatenate(row, axis=1) for row in rows]
    width = max(line.shape[1] for line in lines)
    padded = [np.pad(line, ((0, gap), (0, width - line.shape[1]), (0, 0)), constant_values=48) for line in lines]
    return np.concatenate(padded)


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))


def video_writer_check() -> None:
    """An ImportError saying how to install the video writer (imageio-ffmpeg), if it is absent."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError as e:
        raise ImportError(f"trajectory videos need imageio-ffmpeg: pip install 'splatkit[video]' ({e})") from e


def write_video(path: Path, frames: list[np.ndarray], fps: int = 30) -> None:
    """``frames`` (uint8 ``[H, W, 3]``) as an H.264 MP4 at ``path`` (imageio-ffmpeg's own
    ffmpeg), padded with black to even sizes (yuv420p needs them), written atomically."""
    video_writer_check()
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]

    def write(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (w + w % 2, h + h % 2),
            fps=fps,
            codec="libx264",
            quality=8,
            macro_block_size=1,
            pix_fmt_out="yuv420p",
            output_params=["-f", "mp4"],  # the temporary name has no .mp4 to go by
        )
        writer.send(None)
        try:
            for f in frames:
                writer.send(np.ascontiguousarray(np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)))))
        finally:
            writer.close()

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


@torch.no_grad()
def evaluate_frames(render_fn, frames: Iterable, device: torch.device, lpips=None, on_image=None) -> list[dict]:
    """Per-image metrics. ``render_fn(frames) -> [B, H, W, 3]`` renders the given frames.

    Returns one dict per image: name, psnr, ssim, lpips (None without a metric), psnr_cc
    (PSNR after the best affine colour fit to the ground truth, gsplat's ``cc_psnr``:
    :func:`~splatkit.appearance.colour_corrected`) and seconds (render time).
    ``on_image(row, render, gt)``, if given, receives each image's row with its clamped
    render and ground truth (``[H, W, 3]``, on the device) as they are made.
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
        p_cc = psnr(colour_corrected(img, f.images, f.masks), f.images, f.masks)
        s = ssim(img, f.images)
        lp = lpips(img, f.images) if lpips is not None else None
        for i, name in enumerate(f.names):
            rows.append(
                {
                    "name": name,
                    "psnr": float(p[i]),
                    "ssim": float(s[i]),
                    "lpips": None if lp is None else float(lp[i]),
                    "psnr_cc": float(p_cc[i]),
                    "seconds": seconds,
                }
            )
            if on_image is not None:
                on_image(rows[-1], img[i], f.images[i])
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over images (PSNR averaged in dB, as papers report it)."""
    if not rows:
        return {
            "psnr": float("nan"),
            "ssim": float("nan"),
            "lpips": None,
            "psnr_cc": float("nan"),
            "num_images": 0,
            "render_fps": None,
        }
    lp = [r["lpips"] for r in rows]
    return {
        "psnr": statistics.fmean(r["psnr"] for r in rows),
        "ssim": statistics.fmean(r["ssim"] for r in rows),
        "lpips": None if any(v is None for v in lp) else statistics.fmean(lp),
        "psnr_cc": statistics.fmean(r.get("psnr_cc", float("nan")) for r in rows),
        "num_images": len(rows),
        "render_fps": 1.0 / max(statistics.median(r["seconds"] for r in rows), 1e-9),
    }
