"""Evaluation on the test split with the published protocol, written to disk.

Layout under ``output_dir``::

    preview.png              test views, ground truth | render, labelled with their PSNR (latest eval)
    stats/step_XXXXXX.json   per-image and mean PSNR / SSIM / LPIPS, Gaussians, time, memory, fps
    stats/metrics.csv        one row per evaluated step
    stats/training.csv       loss, train PSNR (of the batch) and Gaussians, every ``log_every`` steps
    stats/metrics.png        training curves: loss, train and test PSNR, Gaussians against step
    renders/step_XXXXXX/<image>.png   ground truth | render | error (x5), labelled, side by side
    videos/traj_XXXXXX.mp4   with ``video=True``: a path through the training cameras

PSNR counts only masked-in pixels when a test frame has a mask; SSIM is the 3DGS
paper's (11x11 Gaussian window, sigma 1.5, valid region, as torchmetrics computes it);
LPIPS takes [0, 1] images (see :mod:`splatkit.lpips`). Renders are clamped to [0, 1] and
use the full SH degree of the model. Test views are rendered without per-image appearance
corrections (a test image has none); ``psnr_cc`` is the PSNR after the best affine colour
fit of each render to its ground truth (gsplat's ``cc_psnr``), the number to read beside
``psnr`` for captures whose photos differ in exposure or white balance.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from splatkit.evaluation import (
    evaluate_frames,
    peak_memory_mb,
    preview_grid,
    side_by_side,
    summarize,
    to_uint8,
    video_writer_check,
    write_png,
    write_video,
)
from splatkit.lpips import LPIPSUnavailable, load_lpips
from splatkit.metrics import psnr
from splatkit.modules.base import SplatBaseModule
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.trajectory import interpolated_path
from splatkit.utils.files import atomic_write, ensure_writable_dir, write_json

logger = logging.getLogger("splatkit")

CSV_FIELDS = (
    "step",
    "psnr",
    "ssim",
    "lpips",
    "psnr_cc",
    "num_gaussians",
    "train_seconds",
    "peak_memory_mb",
    "render_fps",
    "num_images",
)
TRAINING_FIELDS = ("step", "loss", "train_psnr", "num_gaussians")


class SplatEvaluator(SplatBaseModule):
    """Evaluates the test split at ``eval_steps`` and writes stats, CSVs, curves, a preview and renders.

    Args:
        output_dir: folder for ``preview.png``, ``stats/``, ``renders/`` and ``videos/``
            (created and checked at setup).
        eval_steps: steps after which to evaluate.
        save_images: write side-by-side PNGs per test image.
        lpips_net: "alex" or "vgg" (None: skip LPIPS).
        lpips_weights: folder with the LPIPS weight files (see :mod:`splatkit.lpips`);
            default: torch hub's checkpoint folder.
        preview_images: test views in ``preview.png`` (the first ones; 0: no preview).
        log_every: steps between rows of the training log (loss, train PSNR, Gaussians);
            default ``max_steps // 200`` (at least 1).
        video: render ``videos/traj_XXXXXX.mp4`` at each eval step, along
            :func:`~splatkit.splat.trajectory.interpolated_path` through the training
            cameras (needs ``pip install 'splatkit[video]'``).
        video_frames, video_fps: length and frame rate of the video.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        eval_steps: Iterable[int],
        save_images: bool = True,
        lpips_net: str | None = "alex",
        lpips_weights: str | os.PathLike | None = None,
        preview_images: int = 8,
        log_every: int | None = None,
        video: bool = False,
        video_frames: int = 60,
        video_fps: int = 30,
    ) -> None:
        if lpips_net not in ("alex", "vgg", None):
            raise ValueError(f"lpips_net must be 'alex', 'vgg' or None, got {lpips_net!r}")
        if log_every is not None and log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        if video_frames < 1 or video_fps < 1:
            raise ValueError(f"video_frames and video_fps must be >= 1, got {video_frames} and {video_fps}")
        if video:
            video_writer_check()  # before training, not at the first eval step
        self.output_dir = Path(output_dir)
        self.eval_steps = sorted({int(s) for s in eval_steps})
        self.save_images = save_images
        self.lpips_net = lpips_net
        self.lpips_weights = lpips_weights
        self.preview_images = preview_images
        self.log_every = log_every
        self.video, self.video_frames, self.video_fps = video, video_frames, video_fps
        self.history: list[dict] = []
        self.training_log: list[dict] = []
        self.written: list[Path] = []
        """The pictures written (preview, curves, videos), each once, in the order first written."""
        self.last_preview: tuple[int, object] | None = None
        """``(step, [H, W, 3] uint8)`` of the latest ``preview.png``, for other modules (TensorBoard)."""
        self._log_every = log_every or 1  # set from max_steps at setup
        self._logged = False  # whether this run added to the training log
        self._path_cameras: SplatCameras | None = None
        self.train_seconds = 0.0
        self._enabled = True
        self._lpips = None
        self._lpips_reason: str | None = None
        self._t_last: float | None = None

    # ---------------------------------------------------------------- hooks
    def on_setup(self, world_rank: int = 0, trainer=None, **kwargs) -> None:
        self._enabled = world_rank == 0
        if not self._enabled:
            return
        ensure_writable_dir(self.output_dir, "SplatEvaluator output_dir")
        self._prepare_lpips(trainer.device if trainer is not None else torch.device("cpu"))
        self._t_last = time.perf_counter()
        self._log_every = self.log_every or max(1, kwargs.get("max_steps", 0) // 200)

    def post_compute_loss(
        self, step: int, max_steps: int = 0, loss=None, render=None, frames=None, training_state=None, **kwargs
    ) -> None:
        # Logged here, not in post_step, so that a checkpoint written at this step (by an
        # exporter listed before this module) already holds this step's row.
        if self._enabled and (step % self._log_every == 0 or step == max_steps) and loss is not None:
            row = {
                "step": step,
                "loss": float(loss.loss.detach()),  # a device sync, on logged steps only
                "train_psnr": float(psnr(render.images.detach(), frames.images, frames.masks).mean()),
                "num_gaussians": int(training_state.num_gaussians),
            }
            self.training_log = [r for r in self.training_log if r["step"] < step] + [row]
            self._logged = True

    def post_step(self, step: int, trainer=None, **kwargs) -> None:
        if not self._enabled or step not in self.eval_steps:
            return
        now = time.perf_counter()
        self.train_seconds += now - self._t_last
        self.evaluate_trainer(trainer, step)
        self._t_last = time.perf_counter()  # evaluation time is not training time

    def on_cleanup(self, error=None, **kwargs) -> None:
        # the curves up to the last step, also when it was not an eval step (if this run trained)
        if self._enabled and error is None and self._logged:
            self._write_training_csv(self.output_dir / "stats" / "training.csv")
            self._write_plot(self.output_dir / "stats" / "metrics.png")

    def state_dict(self) -> dict:
        return {"history": self.history, "train_seconds": self.train_seconds, "training_log": self.training_log}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.training_log = list(state.get("training_log", []))

    # ---------------------------------------------------------------- work
    def _prepare_lpips(self, device: torch.device) -> None:
        if self.lpips_net is None or self._lpips is not None or self._lpips_reason is not None:
            return
        try:
            self._lpips = load_lpips(self.lpips_net, self.lpips_weights, device)
        except LPIPSUnavailable as e:
            self._lpips_reason = str(e)
            logger.warning("lpips: unavailable: %s", e)

    def evaluate_trainer(self, trainer, step: int) -> dict:
        """Evaluate ``trainer``'s current state on its provider's test split and write the files."""
        stats = self.evaluate(
            lambda f: trainer.render_view(f.cameras).images,
            trainer.data_provider.test_frames(),
            step,
            trainer.num_gaussians,
            trainer.device,
        )
        if self.video:
            self.write_video(lambda cams: trainer.render_view(cams).images, trainer.data_provider, step)
        return stats

    @torch.no_grad()
    def write_video(self, render_fn, data_provider, step: int) -> Path:
        """Render ``videos/traj_XXXXXX.mp4`` along a path through ``data_provider``'s training
        cameras (those of the first camera's image size). ``render_fn(cameras) -> [C, H, W, 3]``."""
        if self._path_cameras is None:
            cams = data_provider.train_cameras()
            size = (cams[0].width, cams[0].height)
            same = SplatCameras.cat([c for c in cams if (c.width, c.height) == size])
            self._path_cameras = interpolated_path(same, self.video_frames)
        path_cams = self._path_cameras
        frames = [to_uint8(render_fn(path_cams[i])[0]) for i in range(len(path_cams))]
        path = self.output_dir / "videos" / f"traj_{step:06d}.mp4"
        write_video(path, frames, self.video_fps)
        self._wrote(path)
        logger.info("wrote %s (%d frames)", path, len(frames))
        return path

    def evaluate(
        self, render_fn, frames: Iterable, step: int, num_gaussians: int, device: torch.device | str = "cpu"
    ) -> dict:
        """Evaluate rendered ``frames`` and write ``stats/step_XXXXXX.json`` (and the rest)."""
        device = torch.device(device)
        self._prepare_lpips(device)
        renders_dir = self.output_dir / "renders" / f"step_{step:06d}"
        preview = []

        def on_image(row, render, gt):
            if self.save_images:
                write_png(renders_dir / f"{Path(row['name']).stem}.png", side_by_side(render, gt, row["psnr"]))
            if len(preview) < self.preview_images:
                preview.append((Path(row["name"]).stem, to_uint8(gt), to_uint8(render), row["psnr"]))

        rows = evaluate_frames(render_fn, frames, device, self._lpips, on_image)
        summary = summarize(rows)
        if preview:
            grid = preview_grid(preview)
            write_png(self.output_dir / "preview.png", grid)
            self._wrote(self.output_dir / "preview.png")
            self.last_preview = (step, grid)
        if self.lpips_net is None:
            lpips_status = "not computed (lpips_net=None)"
        else:
            lpips_status = summary["lpips"] if self._lpips is not None else "unavailable"
        stats = {
            "step": step,
            **{k: summary[k] for k in ("psnr", "ssim")},
            "lpips": lpips_status,
            "psnr_cc": summary["psnr_cc"],
            "num_gaussians": int(num_gaussians),
            "train_seconds": round(self.train_seconds, 3),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "peak_memory_kind": "cuda_allocator" if device.type == "cuda" else "process_rss",
            "render_fps": summary["render_fps"],
            "num_images": summary["num_images"],
            "images": rows,
        }
        if self._lpips is not None:
            stats["lpips_net"] = self.lpips_net
        elif self.lpips_net is not None:
            stats["lpips_unavailable_reason"] = self._lpips_reason
        stats_dir = self.output_dir / "stats"
        stats_dir.mkdir(parents=True, exist_ok=True)
        write_json(stats_dir / f"step_{step:06d}.json", stats)
        row = {k: stats[k] for k in CSV_FIELDS}
        row["lpips"] = summary["lpips"]  # None when not computed
        self.history = [h for h in self.history if h["step"] != step] + [row]
        self.history.sort(key=lambda h: h["step"])
        self._write_csv(stats_dir / "metrics.csv")
        self._write_training_csv(stats_dir / "training.csv")
        self._write_plot(stats_dir / "metrics.png")
        lp = f"{row['lpips']:.4f}" if row["lpips"] is not None else "unavailable"
        logger.info(
            "eval step %d: test PSNR %.2f SSIM %.4f LPIPS %s on %d test images, %d Gaussians",
            step,
            stats["psnr"],
            stats["ssim"],
            lp,
            stats["num_images"],
            stats["num_gaussians"],
        )
        return stats

    def _wrote(self, path: Path) -> None:
        if path not in self.written:
            self.written.append(path)

    def _write_csv(self, path: Path) -> None:
        _write_rows(path, CSV_FIELDS, self.history)

    def _write_training_csv(self, path: Path) -> None:
        if self.training_log:
            _write_rows(path, TRAINING_FIELDS, self.training_log)

    def _write_plot(self, path: Path) -> None:
        """Loss, PSNR (train batch and test) and Gaussians against step, one panel each."""
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib is not installed; %s not written (pip install 'splatkit[eval]')", path)
            return
        log, evals = self.training_log, self.history
        fig, (ax_loss, ax_psnr, ax_count) = plt.subplots(3, 1, sharex=True, figsize=(7, 7.5), dpi=100)
        if log:
            steps = [r["step"] for r in log]
            ax_loss.plot(steps, [r["loss"] for r in log], "-", color="tab:red", lw=1, label="training loss")
            ax_psnr.plot(steps, [r["train_psnr"] for r in log], "-", color="tab:gray", lw=1, label="train PSNR (batch)")
            ax_count.plot(steps, [r["num_gaussians"] for r in log], "-", color="tab:orange", lw=1.2)
            if min(r["loss"] for r in log) > 0:
                ax_loss.set_yscale("log")
        if evals:
            e_steps = [h["step"] for h in evals]
            ax_psnr.plot(e_steps, [h["psnr"] for h in evals], "o-", color="tab:blue", label="test PSNR (eval)")
            ax_count.plot(e_steps, [h["num_gaussians"] for h in evals], "s", color="tab:orange", ms=4)
        ax_loss.set_ylabel("loss")
        ax_psnr.set_ylabel("PSNR (dB)")
        ax_count.set_ylabel("Gaussians")
        ax_count.set_xlabel("step")
        for ax in (ax_loss, ax_psnr):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
        for ax in (ax_loss, ax_psnr, ax_count):
            ax.grid(alpha=0.3)
        last = max([r["step"] for r in log] + [h["step"] for h in evals] + [0])
        fig.suptitle(f"training curves to step {last}", fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
        self._wrote(path)


def _write_rows(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()))


@dataclass
class SplatEvaluatorConfig:
    """The evaluator's settings as ``splatkit train`` flags (``--eval-steps``, ...); see
    :mod:`splatkit.registry`."""

    eval_steps: tuple[int, ...] = ()
    """Steps at which to evaluate the test views (default: the last step): stats/, renders/,
    preview.png and the training curves (stats/metrics.png) in the output folder."""
    video: bool = False
    """Also render videos/traj_STEP.mp4 at each eval step, along a path through the training
    cameras (needs pip install 'splatkit[video]')."""
    video_frames: int = 60
    """Frames of each trajectory video (30 per second)."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """Backbone of the LPIPS metric (AlexNet, as the 3DGS paper reports, or VGG)."""
    lpips_weights: str | None = None
    """Folder with the LPIPS weight files (default: torch hub's checkpoint folder)."""

    def build(self, output_dir: str | os.PathLike, max_steps: int) -> SplatEvaluator:
        return SplatEvaluator(
            output_dir,
            self.eval_steps or (max_steps,),
            lpips_net=self.lpips_net,
            lpips_weights=self.lpips_weights,
            video=self.video,
            video_frames=self.video_frames,
        )
