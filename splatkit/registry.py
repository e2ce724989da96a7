"""The choices of a training run, registered once for the command line and the Python API.

A run picks one *model kind* (``--model``) and one *densification strategy* (``--strategy``);
its data format is detected from ``--data``. Each choice brings setting *groups*: objects
whose dataclass fields are its settings, e.g. ``--strategy mcmc`` brings the ``mcmc`` group
(a :class:`~splatkit.densification.SplatMCMCDensification`, flags ``--mcmc.*``). Splat file
formats have their own registry, :data:`splatkit.splat.formats.FORMATS`.

The plug-in modules a run gets (:data:`MODULES`: progress bar, exporter, evaluator,
TensorBoard, live viewer) are registered the same way, each by a settings dataclass whose
fields are its flags (``--eval-steps``, ``--viewer-port``, ...) and whose ``build(output_dir,
max_steps)`` makes the module, or None when a switch field (``--viewer``) leaves it off.

``splatkit train`` builds its flags from these tables (:mod:`splatkit.cli`): the selecting
flag takes the table's names, every group becomes a flag group, and a flag of a group the run
does not select is an error rather than ignored. So a new strategy, model kind or data
format is one entry here (plus its data detection in :mod:`splatkit.data_provider.detect`
for a data format), nothing in the command line.

From Python, :func:`components` builds what a choice uses and :func:`modules` the modules::

    from splatkit.registry import components, modules
    renderer, loss_fn, densification = components(model="2dgs", strategy="mcmc", mcmc={"cap_max": 500_000})
    mods = modules("results/run", 30_000, evaluator={"eval_steps": (7000, 30000)}, viewer={"viewer": True})
    trainer = SplatTrainer(config, provider, renderer, loss_fn, densification, mods)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from splatkit.appearance import SplatAffineAppearance, SplatBilateralGridAppearance
from splatkit.data_provider import (
    SplatBlenderDataProviderConfig,
    SplatColmapDataProviderConfig,
    SplatDemoDataProviderConfig,
)
from splatkit.densification import SplatDefaultDensification, SplatMCMCDensification
from splatkit.loss_fn import Splat2DGSLossFn, Splat3DGSLossFn
from splatkit.modules.base import SplatBaseModule
from splatkit.modules.evaluator import SplatEvaluatorConfig
from splatkit.modules.exporter import SplatExporterConfig
from splatkit.modules.progress import SplatProgressTrackerConfig
from splatkit.modules.tensorboard import SplatTensorboardConfig
from splatkit.modules.viewer import SplatViewerConfig
from splatkit.pose import SplatPoseRefinement
from splatkit.renderer import Splat2DGSRenderer, Splat3DGSRenderer


@dataclass(frozen=True)
class Group:
    """A group of settings: the object ``make()`` returns, under the flag prefix ``--<name>.``.

    ``role`` says what the object is to the trainer (``"renderer"``, ``"loss_fn"``,
    ``"densification"`` or ``"data"``); ``help`` is the group's line in ``--help``.
    """

    name: str
    make: Callable[[], Any]
    role: str
    help: str

    @property
    def cls(self) -> type:
        return type(self.make())


@dataclass(frozen=True)
class Choice:
    """One value of a selecting flag and the groups it brings.

    ``presets`` maps a role to settings this choice gives the object in that role unless
    the user sets them (MCMC's regularisers of whichever loss the model kind uses).
    """

    name: str
    help: str
    groups: tuple[Group, ...]
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _table(*choices: Choice) -> dict[str, Choice]:
    return {c.name: c for c in choices}


MODELS: dict[str, Choice] = _table(
    Choice(
        "3dgs",
        "3D ellipsoids (3DGS)",
        (
            Group("renderer", Splat3DGSRenderer, "renderer", "The 3DGS rasterizer: backend, antialiasing, tiles."),
            Group("loss", Splat3DGSLossFn, "loss_fn", "The 3DGS loss: L1 + D-SSIM weights, regularisers."),
        ),
    ),
    Choice(
        "2dgs",
        "2D surfels (2DGS)",
        (
            Group("renderer_2dgs", Splat2DGSRenderer, "renderer", "The 2DGS rasterizer."),
            Group("loss_2dgs", Splat2DGSLossFn, "loss_fn", "The 2DGS loss: normal and distortion terms."),
        ),
    ),
)
"""Model kinds (``--model``): a renderer and a loss each."""

STRATEGIES: dict[str, Choice] = _table(
    Choice(
        "default",
        "gsplat's default densification (clone, split, prune)",
        (
            Group(
                "densification",
                SplatDefaultDensification,
                "densification",
                "gsplat's default densification: thresholds and schedule.",
            ),
        ),
    ),
    Choice(
        "mcmc",
        "MCMC densification (relocation under a Gaussian budget)",
        (
            Group(
                "mcmc", SplatMCMCDensification, "densification", "MCMC densification: Gaussian budget, noise, schedule."
            ),
        ),
        presets={"loss_fn": {"opacity_reg": 0.01, "scale_reg": 0.01}},  # gsplat's MCMC preset
    ),
)
"""Densification strategies (``--strategy``)."""

DATA_FORMATS: dict[str, Choice] = _table(
    Choice(
        "demo",
        "the built-in scene (--data demo)",
        (Group("demo", SplatDemoDataProviderConfig, "data", "Settings of the built-in scene (with --data demo)."),),
    ),
    Choice(
        "colmap",
        "a COLMAP scene folder (sparse/0 + images)",
        (
            Group(
                "colmap",
                lambda: SplatColmapDataProviderConfig("", ""),
                "data",
                "Settings for COLMAP data; empty paths are filled from --data.",
            ),
        ),
    ),
    Choice(
        "blender",
        "a transforms.json capture (instant-ngp / nerfstudio / NeRF-synthetic)",
        (
            Group(
                "blender",
                lambda: SplatBlenderDataProviderConfig(""),
                "data",
                "Settings for transforms.json data; an empty path is filled from --data.",
            ),
        ),
    ),
)
"""Data formats (detected from ``--data``): the provider configuration each one reads."""

APPEARANCES: dict[str, Choice] = _table(
    Choice("off", "no per-image correction", ()),
    Choice(
        "affine",
        "a learned affine colour correction per training image (exposure, white balance)",
        (
            Group(
                "affine",
                SplatAffineAppearance,
                "appearance",
                "Per-image affine colour correction: learning rate and start step.",
            ),
        ),
    ),
    Choice(
        "bilateral",
        "a learned bilateral grid of colour transforms per training image (gsplat's use_bilateral_grid)",
        (
            Group(
                "bilateral",
                SplatBilateralGridAppearance,
                "appearance",
                "Per-image bilateral grid: learning rate, start step, grid size, smoothness.",
            ),
        ),
    ),
)
"""Per-image appearance models (``--appearance``): what the trainer's ``appearance`` gets."""

POSE_REFINEMENTS: dict[str, Choice] = _table(
    Choice("off", "the cameras as given", ()),
    Choice(
        "se3",
        "a learned rigid correction of each training camera (gsplat's pose_opt)",
        (
            Group(
                "pose", SplatPoseRefinement, "pose_refinement", "Camera pose refinement: learning rate, decay, start."
            ),
        ),
    ),
)
"""Camera pose refinement (``--pose-opt``): what the trainer's ``pose_refinement`` gets."""

SELECTORS: dict[str, dict[str, Choice]] = {
    "model": MODELS,
    "strategy": STRATEGIES,
    "appearance": APPEARANCES,
    "pose_opt": POSE_REFINEMENTS,
    "data": DATA_FORMATS,
}
"""Each table under the name of what selects from it (``--model``, ``--strategy``, the detected data)."""


def all_groups() -> list[tuple[str, Choice, Group]]:
    """``(selector, choice, group)`` for every group of every table, in table order."""
    return [(sel, choice, g) for sel, table in SELECTORS.items() for choice in table.values() for g in choice.groups]


def lookup(table: dict[str, Choice], name: str, what: str) -> Choice:
    """``table[name]``, or a ValueError listing the names there are."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(table)}")
    return table[name]


def appearance(name: str = "off", **settings: dict) -> Any:
    """The trainer's ``appearance`` for ``--appearance name`` (None for ``"off"``), its group's
    fields set from ``settings`` (``affine={"lr": 2e-3}``, or the settings object itself)."""
    return _optional("appearance", APPEARANCES, name, settings)


def pose_refinement(name: str = "off", **settings: dict) -> Any:
    """The trainer's ``pose_refinement`` for ``--pose-opt name`` (None for ``"off"``), its
    group's fields set from ``settings`` (``pose={"lr": 1e-4}``, or the settings object itself)."""
    return _optional("pose_opt", POSE_REFINEMENTS, name, settings)


def _optional(selector: str, table: dict[str, Choice], name: str, settings: dict) -> Any:
    choice = lookup(table, name, selector)
    names = {g.name for g in choice.groups}
    unused = sorted(set(settings) - names)
    if unused:
        raise ValueError(f"settings for {', '.join(unused)} are not used with {selector}={name!r}")
    built = []
    for g in choice.groups:
        given = settings.get(g.name, {})
        built.append(given if dataclasses.is_dataclass(given) else dataclasses.replace(g.make(), **given))
    return built[0] if built else None


def components(model: str = "3dgs", strategy: str = "default", **settings: dict) -> tuple[Any, Any, Any]:
    """``(renderer, loss_fn, densification)`` for a model kind and strategy.

    ``settings`` maps a group name (``renderer``, ``loss``, ``mcmc``, ...) to the fields to
    set in it; naming a group the choice does not use is an error, as on the command line.
    A strategy's presets (MCMC's loss regularisers) fill only fields ``settings`` leaves unset.
    """
    choices = (lookup(MODELS, model, "model"), lookup(STRATEGIES, strategy, "strategy"))
    chosen = tuple(g for c in choices for g in c.groups)
    names = {g.name for g in chosen}
    unused = sorted(set(settings) - names)
    if unused:
        raise ValueError(
            f"settings for {', '.join(unused)} are not used with model={model!r}, strategy={strategy!r} "
            f"(its groups: {', '.join(sorted(names))})"
        )
    built = {}
    for g in chosen:
        preset = {k: v for c in choices for k, v in c.presets.get(g.role, {}).items()}
        built[g.role] = dataclasses.replace(g.make(), **{**preset, **settings.get(g.name, {})})
    return built["renderer"], built["loss_fn"], built["densification"]


@dataclass(frozen=True)
class ModuleEntry:
    """A plug-in module a run can have: its settings dataclass (``make()`` gives the defaults;
    its fields are the module's flags, its ``build(output_dir, max_steps)`` the module or None).

    ``switch`` names the boolean field that turns the module on or off (``"viewer"``), None
    for a module every run has. While it is off, its other settings are unused, and setting
    them is an error, as for a strategy's settings under another strategy. ``needs`` does the
    same within a module: a field mapped to the boolean field without which it is unused.
    """

    name: str
    make: Callable[[], Any]
    help: str
    switch: str | None = None
    needs: dict[str, str] = dataclasses.field(default_factory=dict)


MODULES: dict[str, ModuleEntry] = {
    m.name: m
    for m in (
        ModuleEntry("progress", SplatProgressTrackerConfig, "Progress bar.", switch="progress"),
        ModuleEntry("exporter", SplatExporterConfig, "Export: steps, splat formats, frame and folder layout."),
        ModuleEntry(
            "evaluator",
            SplatEvaluatorConfig,
            "Evaluation: steps, trajectory video, LPIPS.",
            needs={"video_frames": "video"},
        ),
        ModuleEntry("tensorboard", SplatTensorboardConfig, "TensorBoard logging.", switch="tensorboard"),
        ModuleEntry("viewer", SplatViewerConfig, "The live web viewer.", switch="viewer"),
    )
}
"""Plug-in modules, in the order their hooks run (:class:`~splatkit.modules.SplatBaseModule`)."""


def unused_module_settings(name: str, config: Any) -> list[tuple[str, str]]:
    """``(field, switch)`` for each field of module ``name``'s settings ``config`` that is set
    (differs from the default) although ``switch`` (the module's, or the field's ``needs``) is off."""
    entry = MODULES[name]
    default = entry.make()
    unused = []
    for f in dataclasses.fields(config):
        if f.name == entry.switch or getattr(config, f.name) == getattr(default, f.name):
            continue
        for switch in (entry.switch, entry.needs.get(f.name)):
            if switch is not None and not getattr(config, switch):
                unused.append((f.name, switch))
                break
    return unused


def modules(output_dir: Any, max_steps: int, **settings: Any) -> list[SplatBaseModule]:
    """The modules of a run writing to ``output_dir`` for ``max_steps`` steps, in :data:`MODULES` order.

    ``settings`` maps a module name to its settings: a dict of fields or the settings
    dataclass itself. Each module keeps its settings as ``module.config`` (recorded in
    ``trainer_config.json``). Unknown names, and settings of a module left off, are errors.
    """
    unknown = sorted(set(settings) - set(MODULES))
    if unknown:
        raise ValueError(f"unknown modules {', '.join(unknown)}; the modules are: {', '.join(MODULES)}")
    out = []
    for name, entry in MODULES.items():
        given = settings.get(name, {})
        config = given if dataclasses.is_dataclass(given) else dataclasses.replace(entry.make(), **given)
        unused = unused_module_settings(name, config)
        if unused:
            said = ", ".join(f"{field} (unused while {switch} is off)" for field, switch in unused)
            raise ValueError(f"{name} settings that would be ignored: {said}")
        module = config.build(output_dir, max_steps)
        if module is not None:
            module.config = config
            out.append(module)
    return out
