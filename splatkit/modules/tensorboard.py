"""TensorBoard logging (``pip install 'splatkit[tensorboard]'``).

Every ``log_every`` steps: ``loss/total`` and each loss term (``loss/l1``, ``loss/dssim``,
...), ``train/psnr`` of the batch, ``gaussians/count``, ``lr/<param>``, ``memory/mb``
(CUDA allocator or process RSS) and ``time/step_seconds`` (mean since the last log);
histograms ``gaussians/opacity`` and ``gaussians/scale_max`` (world units, log10).
Every ``image_every`` steps: ``test/render`` (ground truth | render | error of the
first test image, labelled) and ``test/psnr`` of that image. After each evaluation of a
:class:`~splatkit.modules.SplatEvaluator` of the same run: ``eval/psnr``, ``eval/ssim``,
``eval/lpips`` (when computed), ``eval/num_gaussians``, ``eval/render_fps`` and the
evaluator's ``eval/preview`` image (test views, ground truth | render). Rank 0 only.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from splatkit.evaluation import peak_memory_mb, side_by_side
from splatkit.metrics import psnr
from splatkit.modules.base import SplatBaseModule
from splatkit.modules.evaluator import SplatEvaluator
from splatkit.splat.conventions import opacity_activation, scale_activation
from splatkit.utils.files import ensure_writable_dir


class SplatTensorboard(SplatBaseModule):
    """Writes TensorBoard event files to ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike, log_every: int = 100, image_every: int = 1000) -> None:
        if log_every < 1 or image_every < 1:
            raise ValueError(f"log_every and image_every must be >= 1, got {log_every} and {image_every}")
        self.log_dir = Path(log_dir)
        self.log_every = log_every
        self.image_every = image_every
        self.writer = None
        self._enabled = True
        self._last = None
        self._t = None
        self._step_t = None
        self._evaluators: list[SplatEvaluator] = []
        self._eval_logged: dict[int, int] = {}  # id(evaluator) -> last step logged

    def on_setup(self, world_rank: int = 0, step: int = 0, trainer=None, **kwargs) -> None:
        self._enabled = world_rank == 0
        if not self._enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "SplatTensorboard needs the tensorboard package: pip install 'splatkit[tensorboard]'"
            ) from e
        ensure_writable_dir(self.log_dir, "SplatTensorboard log_dir")
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step else None)
        self._t, self._step_t = time.perf_counter(), step
        self._evaluators = [m for m in (trainer.modules if trainer else []) if isinstance(m, SplatEvaluator)]
        self._eval_logged = {id(e): step for e in self._evaluators}  # earlier evals are in earlier event files

    def post_compute_loss(self, step: int, loss=None, render=None, frames=None, **kwargs) -> None:
        if self._enabled and step % self.log_every == 0:
            self._last = (loss, render.images.detach(), frames.images, frames.masks)

    def post_step(self, step: int, training_state=None, trainer=None, **kwargs) -> None:
        if not self._enabled:
            return
        w = self.writer
        if step % self.log_every == 0 and self._last is not None:
            loss, img, gt, mask = self._last
            w.add_scalar("loss/total", float(loss.loss.detach()), step)
            for name, value in loss.terms.items():
                w.add_scalar(f"loss/{name}", float(value), step)
            w.add_scalar("train/psnr", float(psnr(img, gt, mask).mean()), step)
            w.add_scalar("gaussians/count", training_state.num_gaussians, step)
            for name, opt in training_state.optimizers.items():
                w.add_scalar(f"lr/{name}", opt.param_groups[0]["lr"], step)
            w.add_scalar("memory/mb", peak_memory_mb(training_state.device), step)
            now = time.perf_counter()
            w.add_scalar("time/step_seconds", (now - self._t) / max(step - self._step_t, 1), step)
            self._t, self._step_t = now, step
            p = training_state.params
            w.add_histogram("gaussians/opacity", opacity_activation(p["opacities"].detach()).cpu(), step)
            w.add_histogram(
                "gaussians/scale_max", scale_activation(p["scales"].detach()).max(dim=-1).values.log10().cpu(), step
            )
            self._last = None
        if step % self.image_every == 0 and trainer is not None:
            self._log_test_image(trainer, step)
        self._log_evaluations()

    def _log_evaluations(self) -> None:
        """The evaluators' results not yet logged (whatever the modules' order, an evaluation
        of this step is logged at this step's ``post_step`` or at cleanup)."""
        for ev in self._evaluators:
            done = self._eval_logged[id(ev)]
            for row in ev.history:
                if row["step"] <= done:
                    continue
                for key in ("psnr", "ssim", "lpips", "num_gaussians", "render_fps"):
                    if row.get(key) is not None:
                        self.writer.add_scalar(f"eval/{key}", float(row[key]), row["step"])
                if ev.last_preview is not None and ev.last_preview[0] == row["step"]:
                    self.writer.add_image("eval/preview", ev.last_preview[1], row["step"], dataformats="HWC")
                self._eval_logged[id(ev)] = row["step"]

    @torch.no_grad()
    def _log_test_image(self, trainer, step: int) -> None:
        if trainer.data_provider.num_test_frames() == 0:
            return
        f = trainer.data_provider.test_frame(0).to(trainer.device)
        img = trainer.render_view(f.cameras).images.clamp(0, 1)
        p = float(psnr(img, f.images, f.masks)[0])
        self.writer.add_image("test/render", side_by_side(img[0], f.images[0], p), step, dataformats="HWC")
        self.writer.add_scalar("test/psnr", p, step)

    def on_cleanup(self, **kwargs) -> None:
        if self.writer is not None:
            self._log_evaluations()
            self.writer.close()
            self.writer = None


@dataclass
class SplatTensorboardConfig:
    """TensorBoard's switch and intervals as ``splatkit train`` flags; see :mod:`splatkit.registry`."""

    tensorboard: bool = False
    """Log to TensorBoard in OUTPUT_DIR/tb."""
    tensorboard_every: int = 100
    """Steps between TensorBoard scalars (losses, PSNR, Gaussians, learning rates, memory)."""
    tensorboard_image_every: int = 1000
    """Steps between TensorBoard test images (ground truth | render | error)."""

    def build(self, output_dir: str | os.PathLike, max_steps: int) -> SplatTensorboard | None:
        del max_steps
        if not self.tensorboard:
            return None
        return SplatTensorboard(Path(output_dir) / "tb", self.tensorboard_every, self.tensorboard_image_every)
