"""Progress bar: loss, PSNR of the last training batch, Gaussian count, steps/s and ETA.

The rate and ETA are recent ones (steps slow down as densification adds Gaussians): tqdm's
exponential moving average on a terminal, the steps since the last line otherwise. While the
bar is shown, log records and Python warnings are written above it instead of through it.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from splatkit.metrics import psnr
from splatkit.modules.base import SplatBaseModule

# The average step over the probed one (render, loss, backward, Adam on the starting Gaussians),
# as a range: densification, data and modules add time, and the Gaussian count first falls
# (pruning of a random start) and then grows. Measured on a 2-core CPU: the RGBA synthetic
# capture 0.83x (1,000 steps) and 0.89x (7,000 steps); fox at 1/4 resolution 0.3-0.6x
# (7,000 steps; its 100k transparent random start is the most expensive state it is ever in,
# and its probe was timed with another job running, hence the range).
STEP_RANGE = (0.4, 1.5)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate_line(trainer, steps: int) -> str:
    """One line estimating the run time of ``steps`` more steps, from a timed render now."""
    per_step = trainer.probe_step_seconds()
    lo, hi = (per_step * steps * g for g in STEP_RANGE)
    # the batch the probe used (the loader's cache holds it: no second decode)
    frames = trainer.data_provider.train_batch(trainer.step + 1, trainer.config.batch_size, trainer.config.seed)
    return (
        f"splatkit: {steps} steps on this CPU: about {_duration(lo)} to {_duration(hi)} "
        f"({per_step:.3f} s per step now, {trainer.num_gaussians} Gaussians at {frames.cameras.width}x"
        f"{frames.cameras.height}; steps slow down as densification adds Gaussians)"
    )


class SplatProgressTracker(SplatBaseModule):
    """A tqdm bar on a terminal; plain lines every ``log_every`` steps otherwise.

    Args:
        update_every: refresh the bar (and read the loss off the device) every this many
            steps, so the step itself never waits on a host-device sync.
        log_every: steps between lines when the output is not a terminal; default
            ``max_steps // 20`` (at least ``update_every``).
        stream: where to write (default ``sys.stderr``).
    """

    def __init__(self, update_every: int = 10, log_every: int | None = None, stream: TextIO | None = None) -> None:
        if update_every < 1:
            raise ValueError(f"SplatProgressTracker update_every must be >= 1, got {update_every}")
        self.update_every = update_every
        self.log_every = log_every
        self.stream = stream
        self._bar = None
        self._redirect = None
        self._last = None
        self._captured_warnings = False

    def on_setup(self, step: int, max_steps: int, world_rank: int = 0, trainer=None, **kwargs) -> None:
        self._enabled = world_rank == 0
        if not self._enabled:
            return
        out = self.stream or sys.stderr
        self._out = out
        if trainer is not None and trainer.device.type == "cpu" and trainer.sharded is None and step < max_steps:
            print(estimate_line(trainer, max_steps - step), file=out, flush=True)
        self._tty = hasattr(out, "isatty") and out.isatty()
        self._recent = (time.perf_counter(), step)  # rate and ETA from the steps since the last line
        if self._tty:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            # smoothing: the rate (and ETA) of the last few updates, not the average since the start
            self._bar = tqdm(total=max_steps, initial=step, file=out, dynamic_ncols=True, unit="step", smoothing=0.3)
            # log lines, and warnings turned into log records, go above the bar instead of through it
            logging.captureWarnings(True)
            self._captured_warnings = True
            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger(), logging.getLogger("splatkit")])
            self._redirect.__enter__()
        self._every_line = self.log_every or max(self.update_every, max_steps // 20)

    def post_compute_loss(self, step: int, max_steps: int, loss, render, frames, **kwargs) -> None:
        if self._enabled and (step % self.update_every == 0 or step % self._every_line == 0 or step == max_steps):
            self._last = (loss.loss.detach(), render.images.detach(), frames.images, frames.masks)

    def post_step(self, step: int, max_steps: int, training_state, **kwargs) -> None:
        if not self._enabled or self._last is None:
            return
        if self._tty and step % self.update_every == 0:
            loss, img, gt, mask = self._last
            self._bar.set_postfix(
                loss=f"{float(loss):.4f}",
                train_psnr=f"{float(psnr(img, gt, mask).mean()):.2f}",  # the batch's; test PSNR comes from eval
                gaussians=training_state.num_gaussians,
                refresh=False,
            )
            self._bar.update(step - self._bar.n)
        elif not self._tty and (step % self._every_line == 0 or step == max_steps):
            loss, img, gt, mask = self._last
            now = time.perf_counter()
            t_prev, s_prev = self._recent
            rate = (step - s_prev) / max(now - t_prev, 1e-9)  # steps slow down as Gaussians are added:
            eta = (max_steps - step) / max(rate, 1e-9)  # the recent rate, not the run's average
            self._recent = (now, step)
            print(
                f"step {step}/{max_steps} loss {float(loss):.4f} train_psnr {float(psnr(img, gt, mask).mean()):.2f} "
                f"gaussians {training_state.num_gaussians} {rate:.1f} steps/s eta {eta:.0f}s",
                file=self._out,
                flush=True,
            )

    def on_cleanup(self, **kwargs) -> None:
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
            self._redirect = None
            if self._captured_warnings:
                logging.captureWarnings(False)
                self._captured_warnings = False
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass
class SplatProgressTrackerConfig:
    """The progress bar's switch as a ``splatkit train`` flag; see :mod:`splatkit.registry`."""

    progress: bool = True
    """Show a progress bar (plain lines when not on a terminal)."""

    def build(self, output_dir, max_steps: int) -> SplatProgressTracker | None:
        del output_dir, max_steps
        return SplatProgressTracker() if self.progress else None
