"""Saves splats and checkpoints at chosen steps (see ``shared/spec/exporter.rst``)."""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from splatkit.modules.base import SplatBaseModule
from splatkit.splat.formats import FORMATS, dropped_information, inria, write_splat
from splatkit.splat.model import SplatModel
from splatkit.splat.transform import transform_model
from splatkit.utils.files import ensure_writable_dir

FRAMES = ("training", "input")
LAYOUTS = ("splatkit", "inria")
_logger = logging.getLogger(__name__)

WritableFormat = Literal[tuple(name for name, fmt in FORMATS.items() if fmt.writable)]  # type: ignore[valid-type]
"""The names of the formats :func:`~splatkit.splat.formats.write_splat` writes, as flag choices."""


class SplatExporter(SplatBaseModule):
    """Write ``splats/step_XXXXXX.<fmt>`` and ``ckpts/step_XXXXXX.ckpt`` at ``export_steps``.

    Args:
        output_dir: folder for the exports; ``splats/`` and ``ckpts/`` are created in it
            (and checked writable) when training starts, before step 1.
        export_steps: steps (1-based, after that many optimiser steps) to export at.
        save_splat: write the splat model at each export step.
        save_ckpt: write a checkpoint to resume from at each export step.
        splat_format: format of the splat model, or a list of formats to write side by
            side: ``"ply"`` (``step_XXXXXX.ply``), ``"splat"`` (``.splat``), ``"spz"``
            (``.spz``), ``"compressed_ply"`` (``.compressed.ply``), ``"ksplat"`` (``.ksplat``) and
            ``"sog"`` (``.sog``); see
            :mod:`splatkit.splat.formats`. A format that cannot keep everything of the
            model (e.g. SH in ``.splat``) is reported once as a warning.
        frame: ``"training"`` writes splats in the normalised training frame;
            ``"input"`` maps them back to the capture's own frame (COLMAP's or
            transforms.json's) with the inverse of the data provider's ``transform``.
            Checkpoints always stay in the training frame.
        layout: ``"splatkit"`` writes ``splats/step_XXXXXX.<fmt>``; ``"inria"`` writes the
            PLY where the INRIA reference code does, ``point_cloud/iteration_N/point_cloud.ply``,
            with ``cameras.json`` (the training cameras, in the PLY's frame; refined ones, rewritten
            at each export, when the trainer refines poses) and ``cfg_args``
            in ``output_dir`` (see :mod:`splatkit.splat.formats.inria`); other formats still
            go to ``splats/``. Needs ``"ply"`` among the formats.

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
        splat_format: str | Sequence[str] = "ply",
        frame: str = "training",
        layout: str = "splatkit",
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
        names = [splat_format] if isinstance(splat_format, str) else splat_format
        if not isinstance(names, Sequence) or len(names) == 0:
            raise TypeError(
                f"SplatExporter splat_format must be a format name or a non-empty list of them, got {splat_format!r}"
            )
        for name in names:
            if name not in FORMATS or not FORMATS[name].writable:
                raise ValueError(
                    f"SplatExporter splat_format {name!r} is not supported; supported: "
                    + ", ".join(repr(n) for n, f in FORMATS.items() if f.writable)
                )
        if frame not in FRAMES:
            raise ValueError(f"SplatExporter frame must be 'training' or 'input', got {frame!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"SplatExporter layout must be 'splatkit' or 'inria', got {layout!r}")
        if layout == "inria" and "ply" not in names:
            raise ValueError(
                f"SplatExporter layout='inria' writes point_cloud.ply; add 'ply' to splat_format (got {list(names)})"
            )
        self.output_dir = Path(output_dir)
        self.export_steps = sorted(set(steps))
        self.save_splat = save_splat
        self.save_ckpt = save_ckpt
        self.splat_formats: tuple[str, ...] = tuple(dict.fromkeys(names))
        """The formats written at each export step, in order, without repeats."""
        self.written: list[Path] = []
        """Files this exporter wrote in this process, in order."""
        self.frame = frame
        self.layout = layout
        self._to_input: torch.Tensor | None = None
        self._warned: set[str] = set()

    @property
    def splat_format(self) -> tuple[str, ...]:
        """The ``splat_format`` argument as given, normalised: :attr:`splat_formats`."""
        return self.splat_formats

    @property
    def splat_dir(self) -> Path:
        return self.output_dir / "splats"

    @property
    def ckpt_dir(self) -> Path:
        return self.output_dir / "ckpts"

    def splat_path(self, step: int, splat_format: str | None = None) -> Path:
        """Path of the splat written at ``step`` in ``splat_format`` (default: the first format)."""
        fmt = FORMATS[splat_format if splat_format is not None else self.splat_formats[0]]
        if self.layout == "inria" and fmt.name == "ply":
            return inria.ply_path(self.output_dir, step)
        return self.splat_dir / f"step_{step:06d}{fmt.suffix}"

    def splat_paths(self, step: int) -> list[Path]:
        """Paths of every splat written at ``step``, one per format."""
        return [self.splat_path(step, f) for f in self.splat_formats]

    def ckpt_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:06d}.ckpt"

    def on_setup(
        self,
        world_rank: int = 0,
        max_steps: int | None = None,
        logger: logging.Logger | None = None,
        trainer=None,
        **kwargs,
    ) -> None:
        if world_rank != 0:
            return
        if self.frame == "input" and self.save_splat:  # fails here, before step 1, without a transform
            self._to_input = self._input_frame_inverse(trainer)
        if self.save_splat:
            ensure_writable_dir(
                self.splat_dir if self.layout == "splatkit" else self.output_dir, "SplatExporter output_dir"
            )
            if self.layout == "inria":
                self.written += self._write_inria_scene_files(trainer)
        if self.save_ckpt:
            ensure_writable_dir(self.ckpt_dir, "SplatExporter output_dir")
        late = [s for s in self.export_steps if max_steps is not None and s > max_steps]
        if late and logger is not None:
            logger.warning(
                "SplatExporter: export steps %s are after max_steps=%s and will not be reached", late, max_steps
            )

    @staticmethod
    def _input_frame_inverse(trainer) -> torch.Tensor:
        provider = trainer.data_provider
        T = provider.transform
        if T is None:
            raise ValueError(
                f"SplatExporter frame='input' needs a data provider with a 'transform' (input frame -> training "
                f"frame); {type(provider).__name__} has none. Use frame='training' for this data."
            )
        return torch.linalg.inv(torch.as_tensor(T, dtype=torch.float64))

    def _write_inria_scene_files(self, trainer) -> list[Path]:
        """``cameras.json`` and ``cfg_args`` for the INRIA layout, in the frame the splats are written in."""
        provider = trainer.data_provider
        config = (trainer.data or {}).get("config", {})
        source = next((config[k] for k in ("colmap_dir", "data_path") if config.get(k)), "")
        return inria.write_scene_files(
            self.output_dir,
            trainer.train_cameras() if hasattr(trainer, "train_cameras") else provider.train_cameras(),
            provider.train_names(),
            trainer.config.sh_degree,
            transform=self._to_input,
            source_path=source,
            white_background=provider.background == (1.0, 1.0, 1.0),
        )

    def _warn_dropped(self, model, logger: logging.Logger | None) -> None:
        """Log, once per format over the run, what the format cannot keep of ``model``."""
        log = logger if logger is not None else _logger
        for fmt in self.splat_formats:
            if fmt in self._warned:
                continue
            self._warned.add(fmt)
            for what in dropped_information(model, fmt):
                log.warning("SplatExporter: %s export drops information: %s", fmt, what)

    def post_step(
        self, step: int, training_state, trainer, world_rank: int = 0, logger: logging.Logger | None = None, **kwargs
    ) -> None:
        if world_rank != 0 or step not in self.export_steps:
            return
        trainer.check_finite()  # never write a diverged state
        if self.save_splat:
            model = SplatModel.from_training_state(training_state)
            if self._to_input is not None:
                model = transform_model(model, self._to_input)
            self._warn_dropped(model, logger)  # of the model as written, in its frame
            for fmt in self.splat_formats:
                target = self.splat_path(step, fmt)
                target.parent.mkdir(parents=True, exist_ok=True)  # the INRIA layout's iteration_N/
                path = write_splat(model, target, fmt)
                self.written.append(path)
                if logger is not None:
                    logger.info("saved splat %s (%d Gaussians)", path, training_state.num_gaussians)
            if self.layout == "inria" and getattr(trainer, "pose_corrections", None) is not None:
                self._write_inria_scene_files(trainer)  # cameras.json with the cameras as refined so far
        if self.save_ckpt:
            path = trainer.save_checkpoint(self.ckpt_path(step))
            self.written.append(path)
            if logger is not None:
                logger.info("saved checkpoint %s", path)


@dataclass
class SplatExporterConfig:
    """The exporter's settings as ``splatkit train`` flags (``--export-steps``, ...); see
    :mod:`splatkit.registry`."""

    export_steps: tuple[int, ...] = ()
    """Steps to export at (default: the last step)."""
    save_splat: bool = True
    """Write the splat (splats/step_N.ply) at each export step."""
    save_ckpt: bool = True
    """Write a checkpoint to resume from (ckpts/step_N.ckpt) at each export step."""
    splat_format: tuple[WritableFormat, ...] = ("ply",)
    """Formats of the exported splats (several allowed)."""
    export_frame: Literal["training", "input"] = "training"
    """Write splats in the normalised training frame or back in the capture's own frame."""
    export_layout: Literal["splatkit", "inria"] = "splatkit"
    """"inria": the PLY goes to point_cloud/iteration_N/point_cloud.ply, with cameras.json and cfg_args
    beside it, as the INRIA reference code writes them (for its viewers and scripts)."""

    def build(self, output_dir: str | os.PathLike, max_steps: int) -> SplatExporter:
        return SplatExporter(
            output_dir,
            list(self.export_steps or (max_steps,)),
            self.save_splat,
            self.save_ckpt,
            splat_format=list(self.splat_format),
            frame=self.export_frame,
            layout=self.export_layout,
        )
