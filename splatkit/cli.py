"""``splatkit`` command line. Flags are generated (by tyro) from the config dataclasses."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import tyro

from splatkit import launcher, registry
from splatkit.data_provider import (
    SplatBlenderDataProviderConfig,
    SplatColmapDataProviderConfig,
    SplatDemoDataProvider,
    SplatDemoDataProviderConfig,
)
from splatkit.data_provider.detect import detect_data, provider_from_path, provider_from_record
from splatkit.densification import SplatDefaultDensification, SplatMCMCDensification
from splatkit.evaluation import video_writer_check
from splatkit.loss_fn import Splat2DGSLossFn
from splatkit.modules import SplatEvaluator, SplatExporter, SplatViewer
from splatkit.modules.progress import SplatProgressTrackerConfig
from splatkit.renderer import Splat2DGSRenderer, Splat3DGSRenderer
from splatkit.renderer.backends import resolve
from splatkit.splat.formats import convert, describe_file, model_from_checkpoint, read_splat
from splatkit.splat.model import SplatModel
from splatkit.splat.ply import SplatFileError
from splatkit.trainer import SplatTrainer, SplatTrainerConfig
from splatkit.trainer.checkpoint import load_checkpoint
from splatkit.trainer.distributed import SplatDistributedError, exit_process
from splatkit.trainer.trainer import resolve_device
from splatkit.utils.distributed import guard
from splatkit.utils.files import ensure_writable_dir, json_safe, write_json

# Choices from the registry (splatkit.registry).
ModelKind = Literal[tuple(registry.MODELS)]  # type: ignore[valid-type]
Strategy = Literal[tuple(registry.STRATEGIES)]  # type: ignore[valid-type]
Appearance = Literal[tuple(registry.APPEARANCES)]  # type: ignore[valid-type]
PoseOpt = Literal[tuple(registry.POSE_REFINEMENTS)]  # type: ignore[valid-type]


@dataclass
class _TrainFlags:
    """Train a splat and export it (PLY + checkpoint) into --output-dir."""

    data: Annotated[str | None, tyro.conf.arg(metavar="PATH|demo")] = None
    """Training data: "demo" for the built-in scene, a COLMAP scene folder (sparse/0 + images), or a
    transforms.json capture (file or folder); the format is detected. With --resume and no --data,
    the data the checkpoint records; otherwise required."""
    data_factor: int | None = None
    """Downscale the photos by this factor, whatever the data format (gsplat's --data_factor;
    the same as --colmap.factor / --blender.factor). Default: the smallest power of two that
    brings them to 1600 px or less."""
    model: ModelKind = "3dgs"
    """Kind of Gaussians: 3D ellipsoids (3DGS) or 2D surfels (2DGS; settings under --renderer-2dgs, --loss-2dgs)."""
    strategy: Strategy = "default"
    """Densification: gsplat's default (settings under --densification) or MCMC (under --mcmc)."""
    appearance: Appearance = "off"
    """Per-image appearance: "affine" learns a colour correction of each training image (exposure,
    white balance; settings under --affine), "bilateral" a bilateral grid of them per image (gsplat's
    --use_bilateral_grid: corrections that vary over the image and with brightness; settings under
    --bilateral), for photos that differ in them. Test views are rendered without it; the evaluator
    then also reports psnr_cc (gsplat's colour-corrected PSNR)."""
    pose_opt: PoseOpt = "off"
    """Camera pose refinement: "se3" learns a rigid correction of each training camera (gsplat's
    --pose_opt; settings under --pose), for poses that are slightly off. Test cameras are used as given."""
    mcmc_opacity_reg: float = registry.STRATEGIES["mcmc"].presets["loss_fn"]["opacity_reg"]
    """With --strategy mcmc: weight of the mean-opacity regulariser added to the loss (gsplat's)."""
    mcmc_scale_reg: float = registry.STRATEGIES["mcmc"].presets["loss_fn"]["scale_reg"]
    """With --strategy mcmc: weight of the mean-scale regulariser."""
    resume: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """Checkpoint (.ckpt) to resume from."""
    overwrite: bool = False
    """Train into an output folder that already holds another run's files (refused otherwise)."""
    summary_json: str | None = None
    """Also write the run's figures (test PSNR/SSIM, Gaussians, seconds, files) as JSON here."""
    trainer: Annotated[SplatTrainerConfig, tyro.conf.OmitArgPrefixes] = field(default_factory=SplatTrainerConfig)
    """Training: seed, batch size, SH degree, initialisation, background, learning rates, multi-GPU."""


def _group_fields() -> list[tuple]:
    """A TrainCommand field per setting group of :mod:`splatkit.registry` (``--<group>.*`` flags)
    and per module (its settings' fields are flags without a prefix: ``--eval-steps``)."""
    fields = []
    for entry in registry.MODULES.values():
        kind = Annotated[type(entry.make()), tyro.conf.OmitArgPrefixes, tyro.conf.arg(help=entry.help)]
        fields.append((entry.name, kind, field(default_factory=entry.make)))
    for selector, choice, group in registry.all_groups():
        if selector == "data":
            help = group.help
        else:
            help = f"{group.help.rstrip('.')} (with --{selector.replace('_', '-')} {choice.name})."
        fields.append((group.name, Annotated[group.cls, tyro.conf.arg(help=help)], field(default_factory=group.make)))
    return fields


TrainCommand = dataclasses.make_dataclass("TrainCommand", _group_fields(), bases=(_TrainFlags,), kw_only=True)
TrainCommand.__module__ = __name__
TrainCommand.__doc__ = _TrainFlags.__doc__


@dataclass
class DemoCommand:
    """Train the built-in demo scene (made at run time, no downloads) and report its test PSNR."""

    output_dir: str = "results/demo"
    """Folder of the run (replaced by each demo run)."""
    steps: int = 1000
    """Training steps; the schedules of the 30,000-step recipe are compressed to fit."""
    model: ModelKind = "3dgs"
    """Kind of Gaussians: 3D ellipsoids (3DGS) or 2D surfels (2DGS)."""
    strategy: Strategy = "default"
    """Densification: gsplat's default or MCMC."""
    batch_size: int = 1
    """Images per step (per process, under torchrun)."""
    dist_mode: Literal["replicate", "shard"] = "replicate"
    """Under torchrun: every rank holds the whole splat, or each holds a shard of it (docs/distributed.md)."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ..."""
    backend: str = "auto"
    """Rasterizer backend ("auto", "torch", ...)."""
    progress: bool = True
    """Show a progress bar (plain lines when not on a terminal)."""
    summary_json: str | None = None
    """Also write the run's figures as JSON here."""


@dataclass
class EvalCommand:
    """Evaluate a checkpoint or PLY on a scene's test split: what SplatEvaluator writes, without training."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")]
    """A .ckpt or .ply file."""
    data: str | None = None
    """The scene to score on (as for train --data); default: the data a checkpoint records."""
    output_dir: str = "results/eval"
    """Where stats/ and renders/ are written."""
    step: int | None = None
    """Step to file the results under (default: the checkpoint's step, 0 for a PLY)."""
    background: tuple[float, float, float] | None = None
    """Colour behind the Gaussians (default: the checkpoint's; for a PLY the data's, else black)."""
    save_images: bool = True
    """Write renders/step_N/<image>.png: ground truth | render | error, labelled."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """Backbone of the LPIPS metric (AlexNet, as the 3DGS paper reports, or VGG)."""
    lpips_weights: str | None = None
    """Folder with the LPIPS weight files (default: torch hub's checkpoint folder)."""
    video: bool = False
    """Also render videos/traj_STEP.mp4 along a path through the training cameras."""
    video_frames: int = 60
    """Frames of the trajectory video (30 per second)."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ..."""
    backend: str = "auto"
    """Rasterizer backend ("auto", "torch", ...)."""
    demo: SplatDemoDataProviderConfig = field(default_factory=SplatDemoDataProviderConfig)
    colmap: SplatColmapDataProviderConfig = field(default_factory=lambda: SplatColmapDataProviderConfig("", ""))
    blender: SplatBlenderDataProviderConfig = field(default_factory=lambda: SplatBlenderDataProviderConfig(""))


@dataclass
class ViewCommand:
    """Open a checkpoint or PLY in the web viewer (rendering mode) until Ctrl-C."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")]
    """A .ckpt or a splat file (.ply, .splat, .spz, .compressed.ply)."""
    port: int = 8080
    """Port of the viewer (http://HOST:PORT)."""
    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 makes it reachable from other machines."""
    device: str = "auto"
    """"auto" (CUDA when present, else CPU), "cpu", "cuda", "cuda:1", ..."""
    backend: str = "auto"
    """Rasterizer backend ("auto", "torch", ...)."""
    background: tuple[float, float, float] | None = None
    """Colour behind the splat (default: the one a checkpoint was trained over, else black)."""


@dataclass
class ExportCommand:
    """Convert a splat between .ply, .splat, .spz, .compressed.ply, .ksplat and .sog, or export a checkpoint."""

    src: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="SRC")]
    """A splat file (.ply, .splat, .spz, .compressed.ply, .ksplat, .sog) or a .ckpt."""
    dst: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DST")]
    """Output file; its suffix picks the format."""
    crop_min: tuple[float, float, float] | None = None
    """Keep only Gaussians whose centre is inside this box (in the output frame)."""
    crop_max: tuple[float, float, float] | None = None
    """Upper corner of that box (with --crop-min)."""
    min_opacity: float = 0.0
    """Drop Gaussians less opaque than this (0..1)."""
    frame: Literal["training", "input"] = "training"
    """"input": map a checkpoint back to the capture's frame (COLMAP's), with the normalisation
    stored in the checkpoint or computed from --data."""
    data: str | None = None
    """Capture the model was trained on, for --frame input when the source holds no transform."""
    spz_axes: Literal["rdf", "rub"] = "rdf"
    """Axes of .spz files read or written: "rdf", the model's own axes as in its PLY (what splat-transform,
    gsply, Spark and Niantic's ply_to_spz use), or "rub", Niantic's right-up-back (y and z flipped)."""
    spz_version: Literal[2, 3, 4] = 3
    """.spz version written: 3 (gzip; read everywhere), 4 (zstd; splat-transform's default) or 2."""
    surfel_ply: bool = False
    """Write a 2DGS model to PLY with two scales (the 2DGS reference layout, which 3DGS tools refuse)
    instead of three with the third flattened."""


@dataclass
class InfoCommand:
    """Summarise a splat file (.ply, .splat, .spz, .compressed.ply, .ksplat, .sog) or checkpoint: count, SH degree,
    bounds, opacity and scale statistics."""

    path: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")]
    """A splat file (.ply, .splat, .spz, .compressed.ply, .ksplat, .sog) or a .ckpt."""


def demo_setup(steps: int) -> tuple[SplatTrainerConfig, SplatDefaultDensification]:
    """Schedules of the 30k-step defaults compressed to a ``steps``-step demo."""
    config = SplatTrainerConfig(max_steps=steps, sh_degree_interval=max(1, steps // 5))
    densification = SplatDefaultDensification(
        refine_start_iter=steps // 5,
        refine_stop_iter=(4 * steps) // 5,
        refine_every=max(1, steps // 10),
        reset_every=10 * steps,
    )
    return config, densification


def demo_command(
    steps: int, model: str = "3dgs", strategy: str = "default", backend: str = "auto", **kwargs
) -> TrainCommand:
    """A TrainCommand for the demo scene with every schedule of the 30k-step defaults
    (densification, SH degree, 2DGS regularisers) compressed to ``steps`` steps."""
    config, densification = demo_setup(steps)
    config = dataclasses.replace(
        config, **{k: kwargs.pop(k) for k in ("output_dir", "device", "batch_size", "dist_mode") if k in kwargs}
    )
    frac = steps / 30_000
    mcmc = SplatMCMCDensification(
        refine_start_iter=steps // 5,
        refine_stop_iter=(4 * steps) // 5,
        refine_every=max(1, steps // 40),
        cap_max=30_000,
    )
    loss_2dgs = Splat2DGSLossFn(normal_start_iter=round(7000 * frac), dist_start_iter=round(3000 * frac))
    # Only the selected strategy's and model's settings are set, as a user would on the command line.
    chosen = (
        {"mcmc": mcmc} if strategy == "mcmc" else {"densification": densification},
        {"renderer_2dgs": Splat2DGSRenderer(backend=backend), "loss_2dgs": loss_2dgs}
        if model == "2dgs"
        else {"renderer": Splat3DGSRenderer(backend=backend)},
    )
    return TrainCommand(data="demo", model=model, strategy=strategy, trainer=config, **chosen[0], **chosen[1], **kwargs)


def components(cmd: TrainCommand, depth_targets: bool = False):
    """``(renderer, loss_fn, densification)`` for the command's model kind and strategy:
    :func:`splatkit.registry.components` with the settings the flags changed.

    With ``depth_targets`` (the data has depths, e.g. ``--colmap.depths sfm``) the 3DGS renderer
    renders depth for the loss's depth term; without them ``--loss.depth-lambda`` is an error.

    With MCMC the loss gets gsplat's regularisers (the strategy's preset, spelled
    ``--mcmc-opacity-reg`` / ``--mcmc-scale-reg`` here) unless ``--loss.opacity-reg`` /
    ``--loss.scale-reg`` were set: a flag the user gave is never overridden, and giving both
    differently is an error."""
    settings: dict[str, dict] = {}
    loss_group = None
    for selector, name in (("model", cmd.model), ("strategy", cmd.strategy)):
        for group in registry.lookup(registry.SELECTORS[selector], name, selector).groups:
            given = getattr(cmd, group.name)
            settings[group.name] = {f: getattr(given, f) for f in _changed(given, group.make())}
            if group.role == "loss_fn":
                loss_group = group.name
    if cmd.strategy == "mcmc":
        for name in ("opacity_reg", "scale_reg"):
            flag, preset = f"mcmc_{name}", getattr(cmd, f"mcmc_{name}")
            if preset == getattr(_TrainFlags, flag):
                continue  # the registry's preset applies unless the loss flag was given
            given = settings[loss_group].get(name)
            if given is not None and given != preset:
                dashed = name.replace("_", "-")
                raise ValueError(
                    f"--{loss_group.replace('_', '-')}.{dashed} {given} and --mcmc-{dashed} {preset} disagree; "
                    "give one of them"
                )
            settings[loss_group][name] = preset
    if "depth_lambda" in settings[loss_group] and not depth_targets:
        raise ValueError(
            f"--{loss_group.replace('_', '-')}.depth-lambda weighs depth targets, and this data has none: "
            "give them with --colmap.depths (sfm or a folder of depth maps) or --blender.depths (frames or a folder)"
        )
    if depth_targets and cmd.model == "3dgs":
        settings["renderer"]["render_depth"] = True
    return registry.components(cmd.model, cmd.strategy, **settings)


# Settings groups that only one model kind or strategy uses: (group, is it used, what uses it).
_EXCLUSIVE_GROUPS = tuple(
    (
        group.name,
        lambda c, s=selector, n=choice.name: getattr(c, s) == n,
        f"--{selector.replace('_', '-')} {choice.name}",
    )
    for selector, choice, group in registry.all_groups()
    if selector != "data"
)


def _selected_groups(cmd: TrainCommand, selector: str) -> dict:
    """The settings objects of the groups the command's ``--<selector>`` choice brings, by group name."""
    choice = registry.lookup(registry.SELECTORS[selector], getattr(cmd, selector), selector)
    return {g.name: getattr(cmd, g.name) for g in choice.groups}


def _changed(given, default) -> list[str]:
    return [f.name for f in dataclasses.fields(given) if getattr(given, f.name) != getattr(default, f.name)]


def check_unused_flags(cmd: TrainCommand) -> None:
    """A ValueError naming every flag given for a model kind or strategy this run does not use
    (e.g. ``--densification.*`` with ``--strategy mcmc``), instead of ignoring it."""
    reference = TrainCommand()
    unused = []
    for group, used, needs in _EXCLUSIVE_GROUPS:
        if not used(cmd):
            for name in _changed(getattr(cmd, group), getattr(reference, group)):
                unused.append(f"--{group.replace('_', '-')}.{name.replace('_', '-')} (used with {needs})")
    if cmd.strategy != "mcmc":
        for name in ("mcmc_opacity_reg", "mcmc_scale_reg"):
            if getattr(cmd, name) != getattr(reference, name):
                unused.append(f"--{name.replace('_', '-')} (used with --strategy mcmc)")
    for name in registry.MODULES:
        for f, switch in registry.unused_module_settings(name, getattr(cmd, name)):
            unused.append(f"--{f.replace('_', '-')} (used with --{switch.replace('_', '-')})")
    if unused:
        raise ValueError(f"flags this run would ignore: {'; '.join(unused)}")


def _check_data_flags(cmd: TrainCommand, kind: str) -> None:
    """Flags of another data format than the one detected are an error, not ignored."""
    reference = TrainCommand()
    others = [g.name for name, choice in registry.DATA_FORMATS.items() if name != kind for g in choice.groups]
    unused = [
        f"--{g}.{name.replace('_', '-')}"
        for g in others
        for name in _changed(getattr(cmd, g), getattr(reference, g))
        if name != "background"  # --background sets it for every format
    ]
    if kind == "demo" and cmd.data_factor is not None:
        unused.append("--data-factor (the demo scene is rendered at --demo.image-size)")
    if unused:
        raise ValueError(
            f"--data is {kind} data; these flags are for other data and would be ignored: {', '.join(unused)}"
        )


def _data_provider(
    data: str,
    demo: SplatDemoDataProviderConfig | None = None,
    colmap: SplatColmapDataProviderConfig | None = None,
    blender: SplatBlenderDataProviderConfig | None = None,
    background: tuple[float, float, float] | None = None,
):
    """The provider for ``--data`` (the built-in scene, or a detected capture), reporting what it found.

    ``background`` (``--background``), when given, is also the colour RGBA photos are composited over:
    one setting for the targets and the renders.
    """
    if data == "demo":
        return SplatDemoDataProvider(demo or SplatDemoDataProviderConfig())
    if background is not None:
        colmap = dataclasses.replace(colmap or SplatColmapDataProviderConfig("", ""), background=background)
        blender = dataclasses.replace(blender or SplatBlenderDataProviderConfig(""), background=background)
    provider, found = provider_from_path(data, colmap, blender)
    print(f"splatkit: found {found}", file=sys.stderr)
    return provider


def _recorded_provider(path, ckpt: dict | None, background=None):
    """The provider of the data checkpoint ``path`` records (``ckpt`` is its content, None for
    a splat file), or a ValueError asking for ``--data``."""
    record = (ckpt or {}).get("data")
    if record is None:
        raise ValueError(
            f"{path} does not record the data it was trained on (a splat file, a run on your own provider, "
            "or a checkpoint of an older splatkit); pass --data"
        )
    provider = provider_from_record(record, background)
    print(f"splatkit: data recorded in {path}: {provider.describe()}", file=sys.stderr)
    return provider


def _run_dir(cmd: TrainCommand) -> str:
    """``--output-dir`` if given; else, resuming, the run folder the checkpoint is in; else a new
    folder per run, ``results/<scene>/<date>_<time>`` (nerfstudio's scheme), so runs never collide."""
    if cmd.trainer.output_dir != SplatTrainerConfig.output_dir:
        return cmd.trainer.output_dir
    if cmd.resume is not None:
        ckpt = Path(cmd.resume).resolve()
        return str(ckpt.parent.parent if ckpt.parent.name == "ckpts" else ckpt.parent)
    data = Path(cmd.data or "demo").resolve()
    scene = "demo" if cmd.data in (None, "demo") else (data.parent if data.is_file() else data).name or "scene"
    path = Path(SplatTrainerConfig.output_dir) / scene / time.strftime("%Y-%m-%d_%H%M%S")
    print(f"splatkit: output folder {path}", file=sys.stderr)
    return str(path)


def build_trainer(cmd: TrainCommand, data_provider=None) -> tuple[SplatTrainer, SplatExporter]:
    """The trainer ``splatkit train`` runs for ``cmd`` (and its exporter), on ``data_provider`` if
    given, else on the provider ``cmd.data`` names. Settings this run would not use (another
    strategy's, model's or data format's) are an error."""
    check_unused_flags(cmd)
    if cmd.evaluator.video:
        video_writer_check()  # a missing extra is said before the data is read
    if cmd.data is not None:
        _check_data_flags(cmd, "demo" if cmd.data == "demo" else detect_data(cmd.data)[0])
    checkpoint = None  # read once here when it names the data, then handed to the trainer
    if data_provider is None and cmd.data is None:
        if cmd.resume is None:
            raise ValueError("--data is required: a capture folder, a transforms.json file, or 'demo'")
        checkpoint = load_checkpoint(cmd.resume)
        data_provider = _recorded_provider(cmd.resume, checkpoint, cmd.trainer.background)
    if data_provider is None:
        colmap, blender = cmd.colmap, cmd.blender
        if cmd.data_factor is not None:
            for flag, cfg in (("--colmap.factor", colmap), ("--blender.factor", blender)):
                if cfg.factor is not None and cfg.factor != cmd.data_factor:
                    raise ValueError(f"--data-factor {cmd.data_factor} and {flag} {cfg.factor} disagree; give one")
            colmap = dataclasses.replace(colmap, factor=cmd.data_factor)
            blender = dataclasses.replace(blender, factor=cmd.data_factor)
        data_provider = _data_provider(cmd.data, cmd.demo, colmap, blender, cmd.trainer.background)
    cmd = dataclasses.replace(cmd, trainer=dataclasses.replace(cmd.trainer, output_dir=_run_dir(cmd)))
    modules = registry.modules(
        cmd.trainer.output_dir, cmd.trainer.max_steps, **{name: getattr(cmd, name) for name in registry.MODULES}
    )
    exporter = next(m for m in modules if isinstance(m, SplatExporter))
    renderer, loss, densification = components(cmd, data_provider.has_depths)
    appearance = registry.appearance(cmd.appearance, **_selected_groups(cmd, "appearance"))
    pose = registry.pose_refinement(cmd.pose_opt, **_selected_groups(cmd, "pose_opt"))
    trainer = SplatTrainer(
        cmd.trainer,
        data_provider,
        renderer,
        loss,
        densification,
        modules,
        ckpt_path=cmd.resume,
        overwrite=cmd.overwrite,
        checkpoint=checkpoint,
        appearance=appearance,
        pose_refinement=pose,
    )
    return trainer, exporter


def _train(cmd: TrainCommand) -> dict:
    if cmd.summary_json:  # before training, not after hours of it
        ensure_writable_dir(Path(cmd.summary_json).resolve().parent, "--summary-json")
    trainer, exporter = build_trainer(cmd)
    renderer = trainer.renderer
    t0 = time.perf_counter()
    try:
        trainer.run()
    except KeyboardInterrupt:
        ckpts = [p for p in exporter.written if p.suffix == ".ckpt"]
        last = f"the last checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint was written in this run"
        print(f"splatkit: interrupted at step {trainer.step}; {last}", file=sys.stderr)
        raise
    seconds = time.perf_counter() - t0
    evaluator = next(m for m in trainer.modules if isinstance(m, SplatEvaluator))
    final = [h for h in evaluator.history if h["step"] == trainer.step]
    if final and trainer.world_size == 1:  # the evaluator scored the last step already
        metrics = final[0]
    else:  # every rank takes this branch: rank 0 evaluates (in a sharded run the others render with it)
        metrics = trainer.lead(trainer.evaluate)
    if trainer.world_rank != 0:  # only rank 0 evaluates, reports and writes
        return {"rank": trainer.world_rank}
    written = [str(p) for p in exporter.written]  # only what this run wrote
    result = {
        "test_psnr": metrics["psnr"],
        "test_ssim": metrics["ssim"],
        "test_images": metrics["num_images"],
        "num_gaussians": trainer.num_gaussians,
        "train_seconds": round(seconds, 1),
        "steps": cmd.trainer.max_steps,
        "device": str(trainer.device),
        "model": cmd.model,
        "strategy": cmd.strategy,
        "backend": resolve(renderer.backend, trainer.device, kind=cmd.model).name,
        "files": written,
        "pictures": [str(p) for p in evaluator.written],  # preview, curves, videos
    }
    _write_summary(cmd.summary_json, result)
    return result


def _demo(cmd: DemoCommand) -> dict:
    t0 = time.perf_counter()
    result = _train(
        demo_command(
            cmd.steps,
            cmd.model,
            cmd.strategy,
            cmd.backend,
            output_dir=cmd.output_dir,
            device=cmd.device,
            batch_size=cmd.batch_size,
            dist_mode=cmd.dist_mode,
            progress=SplatProgressTrackerConfig(cmd.progress),
            overwrite=True,  # the demo replaces its own earlier results
        )
    )
    if result.get("rank", 0) != 0:
        return result
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    _write_summary(cmd.summary_json, result)
    return result


def _write_summary(path: str | None, result: dict) -> None:
    if path:
        write_json(path, result)


def _load_model(path: str | Path) -> tuple[SplatModel, dict | None]:
    """A model from any splat file or a .ckpt (and the checkpoint itself, if it is one)."""
    path = Path(path)
    if path.suffix.lower() == ".ckpt":
        ckpt = load_checkpoint(path)
        return model_from_checkpoint(ckpt, path), ckpt
    return read_splat(path), None


def _renderer_for(model: SplatModel, backend: str):
    return (Splat2DGSRenderer if model.kind == "2dgs" else Splat3DGSRenderer)(backend=backend)


def _eval(cmd: EvalCommand) -> dict:
    model, ckpt = _load_model(cmd.path)
    device = resolve_device(cmd.device)
    config = (ckpt or {}).get("config", {})
    step = cmd.step if cmd.step is not None else int((ckpt or {}).get("step", 0))
    evaluator = SplatEvaluator(
        cmd.output_dir,
        [step],
        cmd.save_images,
        cmd.lpips_net,
        cmd.lpips_weights,
        video=cmd.video,
        video_frames=cmd.video_frames,
    )
    for name, state in (ckpt or {}).get("modules", []):
        if name == evaluator.state_key:  # training time so far, as the training run counted it
            evaluator.load_state_dict(state)
    # The training run's colour, if known, is also what RGBA targets are composited over.
    background = cmd.background or (ckpt or {}).get("background") or config.get("background")
    background = None if background is None else tuple(background)
    if cmd.data is None:
        provider = _recorded_provider(cmd.path, ckpt, background)
    else:
        provider = _data_provider(cmd.data, cmd.demo, cmd.colmap, cmd.blender, background)
    background = background or provider.background or (0.0, 0.0, 0.0)
    renderer = _renderer_for(model, cmd.backend)
    params = {k: v.to(device) for k, v in model.params().items()}
    bg = torch.tensor([background], dtype=torch.float32, device=device)

    def render_fn_cameras(cameras):
        return renderer.render(params, cameras.to(device), model.sh_degree, bg.expand(len(cameras), 3)).images

    def render_fn(f):
        return render_fn_cameras(f.cameras)

    ensure_writable_dir(cmd.output_dir, "--output-dir")
    stats = evaluator.evaluate(render_fn, provider.test_frames(), step, model.num_gaussians, device)
    if cmd.video:
        evaluator.write_video(render_fn_cameras, provider, step)
    return {k: v for k, v in stats.items() if k != "images"} | {"output_dir": cmd.output_dir}


def _view(cmd: ViewCommand) -> dict:
    model, ckpt = _load_model(cmd.path)
    device = resolve_device(cmd.device)
    background = cmd.background or (ckpt or {}).get("background") or (0.0, 0.0, 0.0)
    cameras = None  # the recorded data's training cameras (start view and slider), else a view guessed from the model
    if ckpt is not None and ckpt.get("data") is not None:
        try:
            provider = provider_from_record(ckpt["data"])
            cameras = provider.train_cameras()
            provider.close()
        except Exception as e:  # the data moved or is gone: the model still opens
            print(f"splatkit: the recorded data cannot be opened ({e}); the view starts from a guess", file=sys.stderr)
    params = {k: v.to(device) for k, v in model.params().items()}
    viewer = SplatViewer(port=cmd.port, mode="rendering", host=cmd.host)
    print(
        f"splatkit: serving {cmd.path} ({model.num_gaussians} Gaussians) at http://{cmd.host}:{cmd.port}; "
        "Ctrl-C to stop",
        file=sys.stderr,
    )
    viewer.serve_forever(
        params,
        model.sh_degree,
        _renderer_for(model, cmd.backend),
        device,
        tuple(background),
        step=None if ckpt is None else int(ckpt["step"]),
        train_cameras=cameras,
    )
    return {}


def _export(cmd: ExportCommand) -> dict:
    transform = None
    if cmd.frame == "input":
        T = None
        if Path(cmd.src).suffix.lower() == ".ckpt":
            T = load_checkpoint(cmd.src).get("input_transform")
        if T is None and cmd.data is not None:
            T = _data_provider(cmd.data).transform
        if T is None:
            raise ValueError(
                f"--frame input needs the capture's normalisation: {cmd.src} holds none; pass --data "
                "with the capture the model was trained on"
            )
        transform = torch.linalg.inv(torch.as_tensor(T, dtype=torch.float64))
    result = convert(
        cmd.src,
        cmd.dst,
        crop_min=cmd.crop_min,
        crop_max=cmd.crop_max,
        min_opacity=cmd.min_opacity,
        transform=transform,
        spz_axes=cmd.spz_axes,
        spz_version=cmd.spz_version,
        surfel_ply=cmd.surfel_ply,
    )
    for w in result.get("warnings", []):
        print(f"splatkit: warning: {cmd.dst}: {w}", file=sys.stderr)
    return result


def _info(cmd: InfoCommand) -> dict:
    return describe_file(cmd.path)


COMMANDS = {
    "train": TrainCommand,
    "demo": DemoCommand,
    "eval": EvalCommand,
    "view": ViewCommand,
    "export": ExportCommand,
    "info": InfoCommand,
}

COMMON_FLAGS = {
    "train": (
        "--data",
        "--output-dir",
        "--max-steps",
        "--data-factor",
        "--model",
        "--strategy",
        "--device",
        "--eval-steps",
        "--export-steps",
        "--resume",
        "--overwrite",
        "--video",
        "--tensorboard",
        "--viewer",
    )
}
"""Flags ``splatkit train --help`` lists first, one line each; the rest are summarised by group."""

_REST_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def _plain(text: str) -> str:
    """A docstring as one line of plain text: no reST roles or literals, no hard line breaks."""
    text = _REST_ROLE.sub(lambda m: m.group(1).split(".")[-1] if "~" in m.group(0) else m.group(1), text)
    return " ".join(text.replace("``", "").split())


def flag_table() -> dict:
    """Every command's flags as tyro parses them: name, value placeholder, description and
    default, grouped as the config dataclasses nest. :mod:`splatkit.launcher` prints help from it
    without importing torch."""
    import warnings

    commands = {}
    for name, command in COMMANDS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # get_parser is deprecated, and still tyro's parser
            parser = tyro.extras.get_parser(command, prog=f"splatkit {name}")
        positionals, groups = [], []
        for group in parser._action_groups:
            flags = []
            for action in group._group_actions:
                if action.dest == "help":
                    continue
                help_text = _plain(action.help or "")
                default = None
                if "(default: " in help_text:
                    help_text, default = help_text.rsplit("(default: ", 1)
                    help_text, default = help_text.strip(), default.rstrip(")")
                help_text = help_text.replace("(required)", "").strip()
                metavar = (action.metavar or "").replace("{None}|", "")
                metavar = re.sub(r"^\[(\S+) \[\1 \.\.\.\]\]$", r"\1 ...", metavar)  # [INT [INT ...]] -> INT ...
                if metavar.startswith("{") and " " in metavar:  # {FLOAT FLOAT FLOAT}: not a choice
                    metavar = metavar[1:-1]
                if not action.option_strings:
                    positionals.append({"name": action.dest, "metavar": action.metavar, "help": help_text})
                    continue
                name_, *aliases = action.option_strings
                flags.append(
                    {"name": name_, "aliases": aliases, "metavar": metavar, "help": help_text, "default": default}
                )
            if flags:
                title = group.title.removesuffix(" options").removesuffix("options") or "options"
                entry = {"title": title, "description": _plain(group.description or ""), "flags": flags}
                if name == "train" and title in registry.MODULES:
                    entry["module"] = True  # --help sums the modules' flags up in one line
                groups.append(entry)
        commands[name] = {
            "description": _plain(command.__doc__ or ""),
            "positionals": positionals,
            "groups": groups,
            "common": list(COMMON_FLAGS.get(name, ())),
        }
    return {"description": _plain(sys.modules["splatkit"].__doc__ or ""), "commands": commands}


def write_flag_table(path: str | os.PathLike | None = None) -> Path:
    """Write :func:`flag_table` where :mod:`splatkit.launcher` reads it (after changing a flag)."""
    from splatkit.launcher import FLAG_TABLE

    path = Path(path or FLAG_TABLE)
    path.write_text(json.dumps(flag_table(), indent=1, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--write-flag-table"]:  # after changing a flag: python -m splatkit.cli --write-flag-table
        print(f"wrote {write_flag_table()}")
        return 0
    quick = launcher.quick(argv)  # --help and --version, as the entry point answers them
    if quick is not None:
        return quick
    cmd = tyro.extras.subcommand_cli_from_dict(COMMANDS, args=argv, prog="splatkit")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if isinstance(cmd, TrainCommand):
            result = _train(cmd)
        elif isinstance(cmd, DemoCommand):
            result = _demo(cmd)
        elif isinstance(cmd, EvalCommand):
            result = _eval(cmd)
        elif isinstance(cmd, ViewCommand):
            result = _view(cmd)
        elif isinstance(cmd, ExportCommand):
            result = _export(cmd)
        else:
            result = _info(cmd)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank done before any tears its group down: gloo can abort a process
            # ("terminate called without an active exception") whose peer is still in a collective.
            with guard("end of the run", torch.distributed.get_rank()):
                torch.distributed.barrier()
    except BrokenPipeError:  # `splatkit info X | head`: the reader left; not an error of ours
        _quiet_stdout()
        return 0
    except (ValueError, TypeError, OSError, SplatFileError) as e:
        print(f"splatkit: error: {e}", file=sys.stderr)
        return 2
    except SplatDistributedError as e:
        print(f"splatkit: error: {e}", file=sys.stderr)
        # The process group is broken: destroying it, here or at interpreter exit, can
        # abort the process from C++ (gloo: "terminate called without an active
        # exception", status -6). Files are already closed by on_cleanup; leave now.
        exit_process(3)
    except ImportError as e:  # an optional extra that is not installed
        print(f"splatkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("splatkit: interrupted", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if isinstance(cmd, ViewCommand) or result.get("rank", 0) != 0:
        return 0
    try:
        _print_result(cmd, result)
    except BrokenPipeError:
        _quiet_stdout()
    return 0


def _quiet_stdout() -> None:
    """After the reader of our stdout went away: point stdout at /dev/null so the
    interpreter's final flush does not fail again (Python's documented recipe)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _print_result(cmd, result: dict) -> None:
    if isinstance(cmd, (InfoCommand, EvalCommand, ExportCommand)):
        print(json.dumps(json_safe(result), indent=2, default=str))
    else:
        print(
            f"test PSNR {result['test_psnr']:.2f} dB, SSIM {result['test_ssim']:.4f} on {result['test_images']} "
            f"test images; {result['num_gaussians']} Gaussians; trained in {result['train_seconds']} s"
        )
        for f in result["files"]:
            print(f"wrote {f}")
        if result.get("pictures"):
            print(f"to look at: {', '.join(result['pictures'])}")


if __name__ == "__main__":
    sys.exit(main())
