"""Evaluation on the test split with the published protocol, written to disk.

Layout under ``output_dir``::

    stats/step_XXXXXX.json   per-image and mean PSNR / SSIM / LPIPS, Gaussians, time, memory, fps
    stats/metrics.csv        one row per evaluated step
    stats/metrics.png        PSNR and Gaussian count against step
    renders/step_XXXXXX/<image>.png   ground truth | render | error (x5), side by side

PSNR counts only masked-in pixels when a test frame has a mask; SSIM is the 3DGS
paper's (11x11 Gaussian window, sigma 1.5, valid region, as torchmetrics computes it);
LPIPS takes [0, 1] images (see :mod:`splatkit.lpips`). Renders are clamped to [0, 1] and
use the full SH degree of the model.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from splatkit.evaluation import evaluate_frames, peak_memory_mb, side_by_side, summarize, write_png
from splatkit.lpips import LPIPSUnavailable, load_lpips
from splatkit.modules.base import SplatBaseModule
from splatkit.utils.files import atomic_write, ensure_writable_dir, write_json

logger = logging.getLogger("splatkit")

CSV_FIELDS = (
    "step",
    "psnr",
    "ssim",
    "lpips",
    "num_gaussians",
    "train_seconds",
    "peak_memory_mb",
    "render_fps",
    "num_images",
)


class SplatEvaluator(SplatBaseModule):
    """Evaluates the test split at ``eval_steps`` and writes stats, a CSV, a plot and renders.

    Args:
        output_dir: folder for ``stats/`` and ``renders/`` (created and checked at setup).
        eval_steps: steps after which to evaluate.
        save_images: write side-by-side PNGs per test image.
        lpips_net: "alex" or "vgg" (None: skip LPIPS).
        lpips_weights: folder with the LPIPS weight files (see :mod:`splatkit.lpips`);
            default: torch hub's checkpoint folder.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        eval_steps: Iterable[int],
        save_images: bool = True,
        lpips_net: str | None = "alex",
        lpips_weights: str | os.PathLike | None = None,
    ) -> None:
        if lpips_net not in ("alex", "vgg", None):
            raise ValueError(f"lpips_net must be 'alex', 'vgg' or None, got {lpips_net!r}")
        self.output_dir = Path(output_dir)
        self.eval_steps = sorted({int(s) for s in eval_steps})
        self.save_images = save_images
        self.lpips_net = lpips_net
        self.lpips_weights = lpips_weights
        self.history: list[dict] = []
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

    def post_step(self, step: int, trainer=None, **kwargs) -> None:
        if not self._enabled or step not in self.eval_steps:
            return
        now = time.perf_counter()
        self.train_seconds += now - self._t_last
        self.evaluate_trainer(trainer, step)
        self._t_last = time.perf_counter()  # evaluation time is not training time

    def state_dict(self) -> dict:
        return {"history": self.history, "train_seconds": self.train_seconds}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state.get("history", []))
        self.train_seconds = float(state.get("train_seconds", 0.0))

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
        return self.evaluate(
            lambda f: trainer.render_view(f.cameras).images,
            trainer.data_provider.test_frames(),
            step,
            trainer.num_gaussians,
            trainer.device,
        )

    def evaluate(
        self, render_fn, frames: Iterable, step: int, num_gaussians: int, device: torch.device | str = "cpu"
    ) -> dict:
        """Evaluate rendered ``frames`` and write ``stats/step_XXXXXX.json`` (and the rest)."""
        device = torch.device(device)
        self._prepare_lpips(device)
        renders_dir = self.output_dir / "renders" / f"step_{step:06d}"

        def save(name, render, gt):
            write_png(renders_dir / f"{Path(name).stem}.png", side_by_side(render, gt))

        rows = evaluate_frames(render_fn, frames, device, self._lpips, save if self.save_images else None)
        summary = summarize(rows)
        if self.lpips_net is None:
            lpips_status = "not computed (lpips_net=None)"
        else:
            lpips_status = summary["lpips"] if self._lpips is not None else "unavailable"
        stats = {
            "step": step,
            **{k: summary[k] for k in ("psnr", "ssim")},
            "lpips": lpips_status,
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
        self._write_plot(stats_dir / "metrics.png")
        lp = f"{row['lpips']:.4f}" if row["lpips"] is not None else "unavailable"
        logger.info(
            "eval step %d: PSNR %.2f SSIM %.4f LPIPS %s on %d images, %d Gaussians",
            step,
            stats["psnr"],
            stats["ssim"],
            lp,
            stats["num_images"],
            stats["num_gaussians"],
        )
        return stats

    def _write_csv(self, path: Path) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        w.writeheader()
        for h in self.history:
            w.writerow({k: ("" if h.get(k) is None else h[k]) for k in CSV_FIELDS})
        atomic_write(path, lambda tmp: tmp.write_text(buf.getvalue()))

    def _write_plot(self, path: Path) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("matplotlib is not installed; %s not written (pip install 'splatkit[eval]')", path)
            return
        steps = [h["step"] for h in self.history]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, [h["psnr"] for h in self.history], "o-", color="tab:blue")
        ax.set_xlabel("step")
        ax.set_ylabel("test PSNR (dB)", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(steps, [h["num_gaussians"] for h in self.history], "s--", color="tab:orange")
        ax2.set_ylabel("Gaussians", color="tab:orange")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()))
