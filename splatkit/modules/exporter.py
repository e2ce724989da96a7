"""Saves splats and checkpoints at chosen steps (see ``shared/spec/exporter.rst``)."""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
from typing import Iterable

from splatkit.modules.base import SplatBaseModule
from splatkit.utils.files import ensure_writable_dir

SPLAT_FORMATS = ("ply",)


class SplatExporter(SplatBaseModule):
    """Write ``splats/step_XXXXXX.<fmt>`` and ``ckpts/step_XXXXXX.ckpt`` at ``export_steps``.

    Args:
        output_dir: folder for the exports; ``splats/`` and ``ckpts/`` are created in it
            (and checked writable) when training starts, before step 1.
        export_steps: steps (1-based, after that many optimiser steps) to export at.
        save_splat: write the splat model (PLY) at each export step.
        save_ckpt: write a checkpoint to resume from at each export step.
        splat_format: format of the splat model; only ``"ply"`` for now.

    Only rank 0 writes. Every file is written to a temporary name in the same folder
    and renamed when complete, so an interrupted export never leaves a partial
    ``step_*`` file.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        export_steps: Iterable[int] = (),
        save_splat: bool = True,
        save_ckpt: bool = True,
        splat_format: str = "ply",
    ) -> None:
        if not isinstance(output_dir, (str, os.PathLike)) or str(output_dir) == "":
            raise TypeError(f"SplatExporter output_dir must be a path, got {output_dir!r}")
        if isinstance(export_steps, (str, bytes)) or not isinstance(export_steps, Iterable):
            raise TypeError(f"SplatExporter export_steps must be a list of step numbers, got {export_steps!r}")
        steps = []
        for s in export_steps:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                raise ValueError(
                    f"SplatExporter export_steps must hold whole step numbers; {s!r} ({type(s).__name__}) is not one"
                )
            if s < 1:
                raise ValueError(f"SplatExporter export_steps must be positive (steps count from 1); got {int(s)}")
            steps.append(int(s))
        for name, flag in (("save_splat", save_splat), ("save_ckpt", save_ckpt)):
            if not isinstance(flag, bool):
                raise TypeError(f"SplatExporter {name} must be True or False, got {flag!r}")
        if splat_format not in SPLAT_FORMATS:
            raise ValueError(
                f"SplatExporter splat_format {splat_format!r} is not supported; supported: "
                + ", ".join(repr(f) for f in SPLAT_FORMATS)
            )
        self.output_dir = Path(output_dir)
        self.export_steps = sorted(set(steps))
        self.save_splat = save_splat
        self.save_ckpt = save_ckpt
        self.splat_format = splat_format

    @property
    def splat_dir(self) -> Path:
        return self.output_dir / "splats"

    @property
    def ckpt_dir(self) -> Path:
        return self.output_dir / "ckpts"

    def splat_path(self, step: int) -> Path:
        return self.splat_dir / f"step_{step:06d}.{self.splat_format}"

    def ckpt_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:06d}.ckpt"

    def on_setup(self, world_rank: int = 0, max_steps: int | None = None,
                 logger: logging.Logger | None = None, **kwargs) -> None:
        if world_rank != 0:
            return
        if self.save_splat:
            ensure_writable_dir(self.splat_dir, "SplatExporter output_dir")
        if self.save_ckpt:
            ensure_writable_dir(self.ckpt_dir, "SplatExporter output_dir")
        late = [s for s in self.export_steps if max_steps is not None and s > max_steps]
        if late and logger is not None:
            logger.warning("SplatExporter: export steps %s are after max_steps=%s and will not be reached",
                           late, max_steps)

    def post_step(self, step: int, training_state, trainer, world_rank: int = 0,
                  logger: logging.Logger | None = None, **kwargs) -> None:
        if world_rank != 0 or step not in self.export_steps:
            return
        if self.save_splat:
            path = training_state.to_model().save_ply(self.splat_path(step))
            if logger is not None:
                logger.info("saved splat %s (%d Gaussians)", path, training_state.num_gaussians)
        if self.save_ckpt:
            path = trainer.save_checkpoint(self.ckpt_path(step))
            if logger is not None:
                logger.info("saved checkpoint %s", path)
