"""``splatkit`` command line. Flags are generated (by tyro) from the config dataclasses."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from splatkit.data_provider import (
    SplatBlenderDataProviderConfig,
    SplatColmapDataProviderConfig,
    SplatDemoDataProvider,
    SplatDemoDataProviderConfig,
)
from splatkit.data_provider.detect import provider_from_path
from splatkit.densification import SplatDefaultDensification
from splatkit.loss_fn import Splat3DGSLossFn
from splatkit.modules import SplatExporter, SplatProgressTracker
from splatkit.renderer import Splat3DGSRenderer
from splatkit.renderer.backends import resolve_backend_name
from splatkit.splat.model import SplatModel
from splatkit.splat.ply import SplatFileError
from splatkit.trainer import SplatTrainer, SplatTrainerConfig
from splatkit.trainer.checkpoint import load_checkpoint
from splatkit.utils.files import atomic_write


@dataclass
class TrainCommand:
    """Train a splat and export it (PLY + checkpoint) into --output-dir."""

    data: str = "demo"
    """Training data: "demo" for the built-in scene, a COLMAP scene folder (sparse/0 + images), or a
    transforms.json capture (file or folder); the format is detected."""
    model: Literal["3dgs"] = "3dgs"
    """Kind of Gaussians."""
    strategy: Literal["default"] = "default"
    """Densification strategy."""
    export_steps: tuple[int, ...] = ()
    """Steps to export at (default: the last step)."""
    save_splat: bool = True
    save_ckpt: bool = True
    resume: str | None = None
    """Checkpoint (.ckpt) to resume from."""
    progress: bool = True
    """Show a progress bar (plain lines when not on a terminal)."""
    summary_json: str | None = None
    """Also write the run's figures (test PSNR/SSIM, Gaussians, seconds, files) as JSON here."""
    trainer: Annotated[SplatTrainerConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SplatTrainerConfig)
    renderer: Splat3DGSRenderer = field(default_factory=Splat3DGSRenderer)
    loss: Splat3DGSLossFn = field(default_factory=Splat3DGSLossFn)
    densification: SplatDefaultDensification = field(default_factory=SplatDefaultDensification)
    demo: SplatDemoDataProviderConfig = field(default_factory=SplatDemoDataProviderConfig)
    """Settings of the built-in scene (with --data demo)."""
    colmap: SplatColmapDataProviderConfig = field(default_factory=lambda: SplatColmapDataProviderConfig("", ""))
    """Settings for COLMAP data; empty paths are filled from --data."""
    blender: SplatBlenderDataProviderConfig = field(default_factory=lambda: SplatBlenderDataProviderConfig(""))
    """Settings for transforms.json data; an empty path is filled from --data."""


@dataclass
class DemoCommand:
    """Train the built-in demo scene (made at run time, no downloads) and report its test PSNR."""

    output_dir: str = "results/demo"
    steps: int = 1000
    device: str = "auto"
    backend: str = "auto"
    """Rasterizer backend ("auto", "torch", ...)."""
    progress: bool = True
    summary_json: str | None = None
    """Also write the run's figures as JSON here."""


@dataclass
class InfoCommand:
    """Summarise a splat (.ply) or checkpoint (.ckpt): count, SH degree, bounds, opacity and scale statistics."""

    path: tyro.conf.Positional[str]


def demo_setup(steps: int) -> tuple[SplatTrainerConfig, SplatDefaultDensification]:
    """Schedules of the 30k-step defaults compressed to a ``steps``-step demo."""
    config = SplatTrainerConfig(max_steps=steps, sh_degree_interval=max(1, steps // 5))
    densification = SplatDefaultDensification(
        refine_start_iter=steps // 5, refine_stop_iter=(4 * steps) // 5, refine_every=max(1, steps // 10),
        reset_every=10 * steps,
    )
    return config, densification


def _data_provider(cmd: TrainCommand):
    if cmd.data == "demo":
        return SplatDemoDataProvider(cmd.demo)
    provider, found = provider_from_path(cmd.data, cmd.colmap, cmd.blender)
    print(f"splatkit: found {found}", file=sys.stderr)
    return provider


def _train(cmd: TrainCommand) -> dict:
    data_provider = _data_provider(cmd)
    steps = cmd.export_steps or (cmd.trainer.max_steps,)
    exporter = SplatExporter(cmd.trainer.output_dir, list(steps), cmd.save_splat, cmd.save_ckpt)
    modules = ([SplatProgressTracker()] if cmd.progress else []) + [exporter]
    trainer = SplatTrainer(cmd.trainer, data_provider, cmd.renderer, cmd.loss, cmd.densification, modules,
                           ckpt_path=cmd.resume)
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    metrics = trainer.evaluate()
    written = [str(p) for s in steps if s <= cmd.trainer.max_steps
               for p, on in ((exporter.splat_path(s), cmd.save_splat), (exporter.ckpt_path(s), cmd.save_ckpt)) if on]
    result = {"test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"], "test_images": metrics["num_images"],
              "num_gaussians": trainer.training_state.num_gaussians, "train_seconds": round(seconds, 1),
              "steps": cmd.trainer.max_steps, "device": str(trainer.device),
              "backend": resolve_backend_name(cmd.renderer.backend, trainer.device), "files": written}
    _write_summary(cmd.summary_json, result)
    return result


def _demo(cmd: DemoCommand) -> dict:
    config, densification = demo_setup(cmd.steps)
    config = dataclasses.replace(config, output_dir=cmd.output_dir, device=cmd.device)
    t0 = time.perf_counter()
    result = _train(TrainCommand(trainer=config, densification=densification,
                                 renderer=Splat3DGSRenderer(backend=cmd.backend), progress=cmd.progress))
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    _write_summary(cmd.summary_json, result)
    return result


def _write_summary(path: str | None, result: dict) -> None:
    if path:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))


def _info(cmd: InfoCommand) -> dict:
    path = Path(cmd.path)
    if path.suffix.lower() == ".ply":
        return {"file": str(path), "kind": "splat (INRIA PLY)", **SplatModel.load_ply(path).describe()}
    if path.suffix.lower() == ".ckpt":
        ckpt = load_checkpoint(path)
        model = SplatModel(**ckpt["training_state"]["params"])
        return {"file": str(path), "kind": "splatkit checkpoint", "step": ckpt["step"],
                "max_steps": ckpt["config"].get("max_steps"), **model.describe()}
    raise ValueError(f"{path}: unknown file type {path.suffix!r}; splatkit info reads .ply and .ckpt")


COMMANDS = {"train": TrainCommand, "demo": DemoCommand, "info": InfoCommand}


def main(argv: list[str] | None = None) -> int:
    cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, prog="splatkit")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if isinstance(cmd, TrainCommand):
            result = _train(cmd)
        elif isinstance(cmd, DemoCommand):
            result = _demo(cmd)
        else:
            result = _info(cmd)
    except (ValueError, TypeError, OSError, SplatFileError) as e:
        print(f"splatkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splatkit: interrupted", file=sys.stderr)
        return 130
    if isinstance(cmd, InfoCommand):
        print(json.dumps(result, indent=2))
    else:
        print(f"test PSNR {result['test_psnr']:.2f} dB, SSIM {result['test_ssim']:.4f} on {result['test_images']} "
              f"test images; {result['num_gaussians']} Gaussians; trained in {result['train_seconds']} s")
        for f in result["files"]:
            print(f"wrote {f}")
    return 0
