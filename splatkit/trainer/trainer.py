"""The training loop: data provider -> renderer -> loss -> backward -> optimiser ->
densification -> modules."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from splatkit.appearance import AppearanceCorrections, SplatAppearance
from splatkit.data_provider.base import SplatDataProvider
from splatkit.data_provider.detect import data_identity, data_record
from splatkit.densification.base import SplatDensification, state_to
from splatkit.densification.default import SplatDefaultDensification
from splatkit.errors import SplatNumericError
from splatkit.loss_fn.base import SplatLossFn
from splatkit.loss_fn.loss_3dgs import Splat3DGSLossFn
from splatkit.modules.base import SplatBaseModule
from splatkit.per_image import PerImageParameters
from splatkit.pose import PoseCorrections, SplatPoseRefinement
from splatkit.renderer.base import SplatRenderer
from splatkit.renderer.renderer_3dgs import Splat3DGSRenderer
from splatkit.splat.cameras import SplatCameras
from splatkit.splat.conventions import gaussian_kind
from splatkit.splat.initialization import view_volume_points
from splatkit.splat.model import SplatModel
from splatkit.splat.training_state import SplatTrainingState
from splatkit.trainer import distributed
from splatkit.trainer.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from splatkit.trainer.config import SplatTrainerConfig
from splatkit.trainer.sharded import (
    ShardedRun,
    ShardedTrainingStateView,
    bounds_from_sizes,
    shard_bounds,
    shard_seed,
    slice_rows,
)
from splatkit.utils import run_folder
from splatkit.utils.files import ensure_writable_dir, write_json
from splatkit.utils.memory import release_free_memory

FINITE_CHECK_EVERY = 100
"""On a GPU, losses and parameters are checked for NaN/Inf this often (and before any write)."""

logger = logging.getLogger("splatkit")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; other names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(
            f"SplatTrainerConfig.device {name!r} is not a device name ('auto', 'cpu', 'cuda', 'cuda:1')"
        ) from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"SplatTrainerConfig.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def _describe(component) -> dict:
    """JSON-able description of a component: its class and settings (a dataclass's fields; for
    other classes, such as the modules, the constructor arguments it keeps as same-named
    attributes). Values that are not plain data (streams, callables) are left out."""
    out = {"class": f"{type(component).__module__}.{type(component).__qualname__}"}
    if dataclasses.is_dataclass(component):
        settings = dataclasses.asdict(component)
    else:
        try:
            params = inspect.signature(type(component).__init__).parameters
        except (TypeError, ValueError):
            params = {}
        settings = {
            name: getattr(component, name)
            for name, p in params.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and hasattr(component, name)
        }
    for k, v in settings.items():
        v = _plain_value(v)
        if v is not _NOT_PLAIN:
            out[k] = v
    config = getattr(component, "config", None)  # a module's settings, as the command line gave them
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        out["config"] = {"class": f"{type(config).__module__}.{type(config).__qualname__}"} | {
            k: v
            for k, v in ((k, _plain_value(v)) for k, v in dataclasses.asdict(config).items())
            if v is not _NOT_PLAIN
        }
    return out


_NOT_PLAIN = object()


def _plain_value(v):
    """``v`` as JSON data (paths as strings, tuples as lists), or ``_NOT_PLAIN``."""
    if isinstance(v, (os.PathLike,)):
        return os.fspath(v)
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if isinstance(v, (list, tuple)):
        items = [_plain_value(x) for x in v]
        return _NOT_PLAIN if any(x is _NOT_PLAIN for x in items) else items
    return _NOT_PLAIN


class SplatTrainer:
    """Trains a splat from a data provider with swappable components.

    Args:
        config: :class:`SplatTrainerConfig`.
        data_provider: cameras, images and initial points.
        renderer: default :class:`~splatkit.renderer.Splat3DGSRenderer`.
        loss_fn: default :class:`~splatkit.loss_fn.Splat3DGSLossFn`.
        densification: default :class:`~splatkit.densification.SplatDefaultDensification`.
        modules: plug-in modules; their hooks run in list order.
        ckpt_path: resume from a checkpoint written by :class:`~splatkit.modules.SplatExporter`;
            training continues at the step after the checkpoint's.
        overwrite: train into an ``output_dir`` that already holds another run's files
            (otherwise refused; a resume may always write into its folder). A folder another
            live run is training into is always refused (its ``.splatkit.lock``).
        checkpoint: the content of ``ckpt_path`` when the caller has already read it with
            :func:`~splatkit.trainer.checkpoint.load_checkpoint` (it is then not read again).
        appearance: learn a colour correction per training image
            (:class:`~splatkit.appearance.SplatAffineAppearance` or
            :class:`~splatkit.appearance.SplatBilateralGridAppearance`; :attr:`corrections`), for
            captures whose photos differ in exposure or white balance; None (default): none.
            Saved in checkpoints; test views are rendered without it.
        pose_refinement: learn a rigid correction of each training camera
            (:class:`~splatkit.pose.SplatPoseRefinement`; :attr:`pose_corrections`), for
            captures whose poses are slightly off; None (default): none. Saved in checkpoints;
            :meth:`train_cameras` gives the refined cameras; test cameras are used as given.
    """

    def __init__(
        self,
        config: SplatTrainerConfig,
        data_provider: SplatDataProvider,
        renderer: SplatRenderer | None = None,
        loss_fn: SplatLossFn | None = None,
        densification: SplatDensification | None = None,
        modules: Sequence[SplatBaseModule] | None = None,
        ckpt_path: str | os.PathLike | None = None,
        overwrite: bool = False,
        checkpoint: dict | None = None,
        appearance: SplatAppearance | None = None,
        pose_refinement: SplatPoseRefinement | None = None,
    ) -> None:
        if not isinstance(config, SplatTrainerConfig):
            raise TypeError(f"config must be a SplatTrainerConfig, got {type(config).__name__}")
        if not isinstance(data_provider, SplatDataProvider):
            raise TypeError(f"data_provider must be a SplatDataProvider, got {type(data_provider).__name__}")
        self.config = config
        self.data_provider = data_provider
        self.renderer = renderer if renderer is not None else Splat3DGSRenderer()
        self.loss_fn = loss_fn if loss_fn is not None else Splat3DGSLossFn()
        self.densification = densification if densification is not None else SplatDefaultDensification()
        # as given: a sharded run swaps in its rank's renderer and strategy, the record keeps these
        self._given = {"renderer": self.renderer, "densification": self.densification}
        self.modules = list(modules or [])
        if appearance is not None and not isinstance(appearance, SplatAppearance):
            raise TypeError(
                "appearance must be a SplatAppearance (SplatAffineAppearance, SplatBilateralGridAppearance) "
                f"or None, got {type(appearance).__name__}"
            )
        if pose_refinement is not None and not isinstance(pose_refinement, SplatPoseRefinement):
            raise TypeError(
                f"pose_refinement must be a SplatPoseRefinement or None, got {type(pose_refinement).__name__}"
            )
        self.appearance = appearance
        self.pose_refinement = pose_refinement
        self.corrections: AppearanceCorrections | None = None
        """The per-image colour corrections being learned (with ``appearance``), from :meth:`setup`."""
        self.pose_corrections: PoseCorrections | None = None
        """The per-image camera corrections being learned (with ``pose_refinement``), from :meth:`setup`."""
        for m in self.modules:
            if not isinstance(m, SplatBaseModule):
                raise TypeError(f"modules must be SplatBaseModule instances, got {type(m).__name__}")
        keys = [m.state_key for m in self.modules if m.has_state]
        if len(set(keys)) != len(keys):
            twice = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(
                f"modules with state must have distinct state_key values, {twice} appear more than once: "
                "a checkpoint could not tell whose state is whose (override state_key, see SplatBaseModule)"
            )
        self.device = resolve_device(config.device)
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path)
        self.data = data_record(data_provider)
        """What this run trains on (:func:`~splatkit.data_provider.detect.data_record`), recorded in
        ``trainer_config.json`` and checkpoints; None for providers splatkit cannot rebuild."""
        # Read the checkpoint now so a bad path fails before any setup work.
        if checkpoint is not None and ckpt_path is None:
            raise ValueError("checkpoint (the content of ckpt_path) needs ckpt_path too")
        self._resume = checkpoint if checkpoint is not None or ckpt_path is None else load_checkpoint(ckpt_path)
        # Under torchrun (WORLD_SIZE > 1) join the process group: data-parallel training,
        # or sharded training with config.dist_mode="shard".
        self.world_rank, self.world_size, self.device = distributed.init_from_env(
            self.device, config.dist_timeout, config.dist_join_timeout
        )
        self.sharded: ShardedRun | None = None
        if config.dist_mode == "shard" and self.world_size > 1:
            if appearance is not None or pose_refinement is not None:
                raise ValueError(
                    "per-image appearance and pose refinement are not supported with dist_mode='shard'; "
                    "use dist_mode='replicate' or train without them"
                )
            self._setup_sharding()
        elif config.dist_mode == "shard":
            logger.warning(
                "dist_mode='shard' in a single process: the whole splat is on this one; launch "
                "several processes with torchrun to shard it"
            )
        self.step = 0
        self.step_timings: dict[str, float] = {}
        """Phase times of the last step, when ``config.profile_steps`` is on."""
        self.training_state: SplatTrainingState | None = None
        self.densification_state: dict | None = None
        self.scene_scale = float(data_provider.scene_scale)
        self.background = self._resolve_background()
        """The colour renders are drawn over (RGB in [0, 1]): the config's, else the data's, else black."""
        self.init_report: dict | None = None
        """How the initial Gaussians were made (set by :meth:`setup` on a fresh start)."""
        self._background_tensor: torch.Tensor | None = None
        self.overwrite = overwrite
        self._lock: Path | None = None  # the output folder's lock while this run holds it
        self._loss_finite: torch.Tensor | None = None  # all losses since the last check finite
        self._last_finite_step = 0

    def _resolve_background(self) -> tuple[float, float, float]:
        given, data = self.config.background, self.data_provider.background
        if given is None:
            return tuple(float(c) for c in data) if data is not None else (0.0, 0.0, 0.0)
        given = tuple(float(c) for c in given)
        if data is not None and any(abs(a - b) > 1e-6 for a, b in zip(given, data)):
            raise ValueError(
                f"SplatTrainerConfig.background {given} differs from the colour the RGBA images of "
                f"{type(self.data_provider).__name__} were composited over {tuple(data)}: renders would "
                "not match their targets. Leave background unset (None) to use the data's, or set the "
                "provider's background to the colour you want"
            )
        return given

    # ----------------------------------------------------------------- setup
    def _setup_sharding(self) -> None:
        if not (dataclasses.is_dataclass(self.renderer) and hasattr(self.renderer, "distributed")):
            raise ValueError(
                f"SplatTrainerConfig.dist_mode='shard' needs a renderer with a 'distributed' field "
                f"(Splat3DGSRenderer, Splat2DGSRenderer), got {type(self.renderer).__name__}"
            )
        from splatkit.renderer.backends import resolve

        try:
            resolve(self.renderer.backend, self.device, kind=self.renderer.gaussian_kind, sharded=True)
        except ValueError as e:
            raise ValueError(f"dist_mode='shard': {e}. Use dist_mode='replicate'") from e
        unsupported = [type(m).__name__ for m in self.modules if not getattr(m, "supports_sharded", True)]
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)} cannot run in a sharded run (dist_mode='shard'); "
                "leave it out, or train with dist_mode='replicate'"
            )
        self.renderer = dataclasses.replace(self.renderer, distributed=True)
        self.densification = self.densification.for_shard(self.world_rank, self.world_size)
        self.sharded = ShardedRun(self.world_rank, self.world_size, self.device)
        # The hooks some module overrides: only those are led (and served) each step.
        self._led_hooks = {
            h
            for h in (
                "on_setup",
                "pre_step",
                "pre_compute_loss",
                "post_compute_loss",
                "on_optimize",
                "post_step",
                "on_cleanup",
            )
            if any(getattr(type(m), h) is not getattr(SplatBaseModule, h) for m in self.modules)
        }

    def _seed(self) -> None:
        seed = self.config.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _initial_model(self) -> SplatModel:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        provider = type(self.data_provider).__name__
        points, colors = (None, None) if cfg.init_type == "random" else self.data_provider.initial_points()
        if points is not None and points.shape[0] < 2:
            if cfg.init_type == "points":
                raise ValueError(
                    f"SplatTrainerConfig.init_type is 'points' but {provider} has no point cloud "
                    f"({points.shape[0]} points); use init_type='random' or 'auto'"
                )
            points = None
        if points is not None:
            self.init_report = {"type": "points", "num_points": int(points.shape[0])}
            logger.info("initialising %d Gaussians on the point cloud of %s", points.shape[0], provider)
        else:
            points, report = view_volume_points(
                self.data_provider.train_cameras(),
                cfg.init_num_points,
                gen,
                cfg.init_extent,
                cfg.init_coverage,
                self.data_provider.train_alphas(),
                surround=cfg.init_surround,
            )
            colors = torch.rand(cfg.init_num_points, 3, generator=gen)
            self.init_report = {"type": "random", "num_points": cfg.init_num_points, **report}
            why = "" if cfg.init_type == "random" else f" ({provider} has no point cloud)"
            logger.info(
                "initialising %d Gaussians at random in the volume the cameras see%s: seen by >= %d of %d "
                "cameras%s%s, within %s .. %s",
                cfg.init_num_points,
                why,
                report["min_views"],
                report["num_cameras"],
                f" ({report['surround_points']} of them in the surroundings, seen by >= {report['surround_min_views']})"
                if report.get("surround_points")
                else "",
                " inside the visual hull of the RGBA images" if report["visual_hull"] else "",
                report["bounds"][0],
                report["bounds"][1],
            )
        opacity = cfg.init_opacity if cfg.init_opacity is not None else self.densification.init_opacity
        scale = cfg.init_scale if cfg.init_scale is not None else self.densification.init_scale
        self.init_report.update(opacity=opacity, scale=scale)
        model = SplatModel.from_points(points, colors, cfg.sh_degree, opacity, scale, generator=gen)
        if self.renderer.gaussian_kind == "2dgs":  # surfels: the two tangent scales
            model = SplatModel(**{**model.params(), "scales": model.scales[:, :2].contiguous()})
        return model

    def setup(self) -> None:
        """Build (or restore) the training state and call ``on_setup``; :meth:`run` calls it."""
        self.data_provider.check_frames()  # a bad photo is an error now, not at the step that draws it
        self._seed()
        cfg = self.config
        if self._resume is None:
            model = self._initial_model()
            if self.sharded is not None:  # this rank's rows of the (identical) initial splat
                lo, hi = shard_bounds(model.num_gaussians, self.world_size)[self.world_rank : self.world_rank + 2]
                model = type(model)(**{k: v[lo:hi].clone() for k, v in model.params().items()})
                # Shards are different Gaussians: give each rank its own random stream.
                torch.manual_seed(shard_seed(cfg.seed, self.world_rank))
            self.training_state = model.to_training_state(
                cfg.learning_rates(self.scene_scale),
                self.device,
                cfg.batch_size * self.world_size,
                sparse_grad=bool(self.renderer.sparse_grad),
            )
            self.densification_state = self.densification.initialize_state(self.scene_scale)
            self.step = 0
            self._create_per_image()
        else:
            self._restore(self._resume)
            self._resume = None
            if self.training_state.batch_size != cfg.batch_size * self.world_size:
                logger.info(
                    "resuming a batch of %d images per step as %d (%d process%s)",
                    self.training_state.batch_size,
                    cfg.batch_size * self.world_size,
                    self.world_size,
                    "" if self.world_size == 1 else "es",
                )
                self.training_state.set_batch_size(cfg.batch_size * self.world_size)
            kind = gaussian_kind(self.training_state.params["scales"])
            wanted = self.renderer.gaussian_kind
            if kind != wanted:
                raise ValueError(
                    f"the checkpoint holds {kind} Gaussians but the renderer "
                    f"{type(self.renderer).__name__} draws {wanted}; resume with the same model kind"
                )
        if self.sharded is not None:
            self.sharded.update_sizes(self.training_state.num_gaussians, self.step)
        if self.world_rank == 0:
            given, data = cfg.background is not None, self.data_provider.background is not None
            logger.info(
                "background %s (%s)",
                self.background,
                "SplatTrainerConfig.background"
                if given
                else "the colour the RGBA images are composited over"
                if data
                else "black: the images have no alpha",
            )
            ensure_writable_dir(cfg.output_dir, "SplatTrainerConfig.output_dir")
            self._lock = run_folder.claim(cfg.output_dir, resuming=self.ckpt_path is not None, overwrite=self.overwrite)
            record = {
                "trainer": dataclasses.asdict(cfg),
                "background": list(self.background),
                "initialization": self.init_report,
                "data_provider": _describe(self.data_provider),
                "data": self.data,
                **self._component_settings(),
                "modules": [_describe(m) for m in self.modules],
                "resumed_from": None if self.ckpt_path is None else str(self.ckpt_path),
            }
            write_json(Path(cfg.output_dir) / "trainer_config.json", record)
        self._call("on_setup")

    def _per_image(self) -> dict[str, tuple[str, PerImageParameters | None]]:
        """The per-image parameter sets by checkpoint key, with the flag that turns each on."""
        return {
            "appearance": ("--appearance", self.corrections),
            "pose_refinement": ("--pose-opt", self.pose_corrections),
        }

    def _create_per_image(self) -> None:
        n = self.data_provider.num_train_frames()
        if self.appearance is not None:
            self.corrections = self.appearance.create(n, self.device)
        if self.pose_refinement is not None:
            self.pose_corrections = self.pose_refinement.create(n, self.device)

    def train_cameras(self) -> list[SplatCameras]:
        """The training cameras, one per image in the provider's order, as refined so far
        (the provider's own without ``pose_refinement``)."""
        cameras = self.data_provider.train_cameras()
        return cameras if self.pose_corrections is None else self.pose_corrections.refine(cameras)

    def _component_settings(self) -> dict:
        """The training components' classes and settings as the run was given them (recorded
        in ``trainer_config.json`` and in every checkpoint, so a resume can say which changed)."""
        return {
            "renderer": _describe(self._given["renderer"]),
            "loss_fn": _describe(self.loss_fn),
            "densification": _describe(self._given["densification"]),
            "appearance": None if self.appearance is None else _describe(self.appearance),
            "pose_refinement": None if self.pose_refinement is None else _describe(self.pose_refinement),
        }

    def _restore(self, ckpt: dict) -> None:
        # settings both sides record (older checkpoints lack the components' and newer fields)
        then = _flat_settings(ckpt["config"], ckpt.get("components"))
        now = _flat_settings(dataclasses.asdict(self.config), self._component_settings())
        differing = [
            f"{k} ({then[k]!r} in the checkpoint, {now[k]!r} now)" for k in sorted(now) if then.get(k, now[k]) != now[k]
        ]
        if differing:
            logger.warning(
                "resuming with settings that differ from the checkpoint's: %s; the run will not match an "
                "uninterrupted one (give the same flags again to continue it as it was: the run's "
                "trainer_config.json lists them)",
                "; ".join(differing),
            )
        if ckpt.get("data") is not None and self.data is not None:
            then, now = data_identity(ckpt["data"]), data_identity(self.data)
            moved = [k for k in then if then[k] != now[k]]
            if moved:
                raise ValueError(
                    f"{self.ckpt_path} was trained on other data "
                    f"({', '.join(f'{k}: {then[k]!r}' for k in moved)}) than this run's "
                    f"({', '.join(f'{k}: {now[k]!r}' for k in moved)}); resume without --data to use the "
                    "checkpoint's, or start a new run"
                )
        ts_state, dens_state, rng = ckpt["training_state"], ckpt["densification"], ckpt["rng"]
        expected = set(self.densification.initialize_state(float(ckpt["scene_scale"])))
        if set(dens_state) != expected:
            raise ValueError(
                f"{self.ckpt_path}: the checkpoint's densification state ({', '.join(sorted(dens_state)) or 'empty'}) "
                f"is not what {type(self.densification).__name__} keeps ({', '.join(sorted(expected)) or 'nothing'}): "
                "it was trained with another densification strategy; resume with that one (--strategy)"
            )
        if self.sharded is not None:
            n = ts_state["params"]["means"].shape[0]
            sizes = ckpt.get("shards")
            same = sizes is not None and len(sizes) == self.world_size
            bounds = bounds_from_sizes(sizes) if same else shard_bounds(n, self.world_size)
            lo, hi = bounds[self.world_rank : self.world_rank + 2]
            ts_state, dens_state = slice_rows(ts_state, dens_state, lo, hi)
            if same:  # the same ranks continue exactly where each left off
                rng = ckpt["rng_ranks"][self.world_rank]
            else:
                if self.world_rank == 0:
                    logger.info(
                        "re-splitting a checkpoint of %s into %d shards",
                        "1 process" if sizes is None else f"{len(sizes)} shards",
                        self.world_size,
                    )
                torch.manual_seed(shard_seed(self.config.seed, self.world_rank, int(ckpt["step"])))
                rng = None
        self.training_state = SplatTrainingState.from_state_dict(ts_state, self.device)
        if self.training_state.sh_degree < self.config.sh_degree:
            raise ValueError(
                f"{self.ckpt_path}: the checkpoint's Gaussians have SH degree {self.training_state.sh_degree}, "
                f"this run asks for {self.config.sh_degree} (sh_degree); resume with --sh-degree "
                f"{self.training_state.sh_degree}"
            )
        self.densification_state = state_to(dens_state, self.device)
        self.scene_scale = float(ckpt["scene_scale"])
        self.step = int(ckpt["step"])
        self.data_provider.load_state_dict(ckpt["data_provider"])
        self._create_per_image()
        for key, (flag, params) in self._per_image().items():
            saved = ckpt.get(key)
            if params is not None and saved is not None:
                params.load_state_dict(saved)
            elif params is not None:
                logger.warning("the checkpoint has no %s; they start from the identity", params.what)
            elif saved is not None:
                logger.warning(
                    "the checkpoint was trained with per-image %s; this run has none (no %s), so they are dropped",
                    key.replace("_", " "),
                    flag,
                )
        # Matched by state_key (Lightning's rule), so reordering modules or adding/removing a
        # stateless one loses nothing. Older checkpoints named states by class, as the default key.
        saved = {}
        for key, state in ckpt["modules"]:
            saved.setdefault(key, state)
        for module in self.modules:
            if module.state_key in saved:
                module.load_state_dict(saved.pop(module.state_key))
            elif module.has_state:
                logger.warning("%s starts afresh: the checkpoint holds no state for it", module.state_key)
        skipped = sorted(key for key, state in saved.items() if state)
        if skipped:
            logger.warning("the checkpoint holds state of modules not in this run, not restored: %s", skipped)
        if rng is not None:
            restore_rng_state(rng)

    # ------------------------------------------------------------ checkpoint
    def checkpoint_state(self) -> dict:
        """Everything needed to continue training exactly from the current step.

        In a sharded run it holds the whole splat, gathered from every rank (rank 0,
        from a module hook or :meth:`lead`), plus the shard sizes and each rank's random state.
        """
        extra = {}
        if self.sharded is not None:
            ts_state, dens_state, rngs = self.sharded.gathered(self)
            extra = {"shards": list(self.sharded.sizes), "rng_ranks": rngs}
        else:
            ts_state, dens_state = self.training_state.state_dict(), self.densification_state
        return {
            "step": self.step,
            "training_state": ts_state,
            "densification": dens_state,
            "modules": [(m.state_key, m.state_dict()) for m in self.modules],
            "data_provider": self.data_provider.state_dict(),
            "config": dataclasses.asdict(self.config),
            "components": self._component_settings(),
            "scene_scale": self.scene_scale,
            "background": list(self.background),
            "data": self.data,  # what it trains on (eval/view/resume rebuild it)
            **{key: None if p is None else p.state_dict() for key, (_, p) in self._per_image().items()},
            # input frame -> training frame, so exports can be mapped back without the data
            "input_transform": _transform_or_none(self.data_provider),
            "rng": capture_rng_state(),
            **extra,
        }

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`checkpoint_state` atomically to ``path`` (never a diverged state)."""
        self.check_finite()
        return save_checkpoint(path, self.checkpoint_state())

    def check_finite(self) -> None:
        """Raise :class:`~splatkit.errors.SplatNumericError` if a loss since the last check, or
        any parameter now, is NaN or Inf. Called every ``FINITE_CHECK_EVERY`` steps (on a GPU
        each check is one host sync), at the last step and before anything is written, so no
        file ever holds a diverged state; on the CPU also as soon as a loss is not finite."""
        ts = self.training_state
        if ts is None:
            return
        bad = []
        if self._loss_finite is not None and not bool(self._loss_finite):
            bad.append("the loss")
        if not bad:  # the parameters only matter while the losses looked fine
            bad = [name for name, p in ts.params.items() if not torch.isfinite(p.detach()).all()]
        self._loss_finite = None
        if bad:
            cfg = self.config
            raise SplatNumericError(
                f"step {self.step}: training diverged: {', '.join(bad)} became NaN or Inf after step "
                f"{self._last_finite_step} (the last step checked finite); nothing was written from the "
                "diverged state and earlier checkpoints are intact. Likely causes: a learning rate too large "
                f"or not finite (lr_means={cfg.lr_means}, lr_scales={cfg.lr_scales}, lr_quats={cfg.lr_quats}, "
                f"lr_opacities={cfg.lr_opacities}, lr_sh0={cfg.lr_sh0}, lr_shN={cfg.lr_shN}), or damaged "
                "input images"
            )
        self._last_finite_step = self.step

    # ------------------------------------------------------------ the loop
    def _call(self, hook: str, **kwargs) -> None:
        if self.sharded is not None:
            # Modules run on rank 0 only, over the whole splat; the other ranks serve them.
            if hook not in self._led_hooks:
                return
            if hook == "on_cleanup" and kwargs.get("error") is not None:
                if self.world_rank == 0:  # no collectives after a failure
                    self._run_hooks(hook, ShardedTrainingStateView(self), **kwargs)
                return
            self.lead(lambda: self._run_hooks(hook, ShardedTrainingStateView(self), **kwargs))
            return
        self._run_hooks(hook, self.training_state, **kwargs)

    def _run_hooks(self, hook: str, training_state, **kwargs) -> None:
        common = dict(
            step=self.step,
            max_steps=self.config.max_steps,
            training_state=training_state,
            world_rank=self.world_rank,
            world_size=self.world_size,
            logger=logger,
            trainer=self,
        )
        common.update(kwargs)
        for module in self.modules:
            getattr(module, hook)(**common)

    def lead(self, fn):
        """Run ``fn()`` on rank 0 and return its result there (None on other ranks).

        In a sharded run every rank must call it: the others serve rank 0's renders and
        gathers meanwhile, so ``fn`` may call :meth:`evaluate`, :meth:`render_view` or
        :meth:`save_checkpoint`. Otherwise only rank 0 runs ``fn``.
        """
        if self.sharded is not None:
            return self.sharded.lead(fn, self)
        return fn() if self.world_rank == 0 else None

    @property
    def num_gaussians(self) -> int:
        """Gaussians in the whole splat (all shards in a sharded run)."""
        return self.sharded.total if self.sharded is not None else self.training_state.num_gaussians

    def gathered_training_state(self) -> SplatTrainingState:
        """The whole splat as a :class:`SplatTrainingState`: this rank's own state, or in a
        sharded run a CPU copy gathered from every rank (rank 0, from a hook or :meth:`lead`)."""
        if self.sharded is None:
            return self.training_state
        return self.sharded.gathered_training_state(self)

    def active_sh_degree(self, step: int) -> int:
        return min((step - 1) // self.config.sh_degree_interval, self.config.sh_degree)

    def means_learning_rate(self, step: int) -> float:
        cfg = self.config
        decay = cfg.lr_means_final_ratio ** ((step - 1) / cfg.max_steps)
        return cfg.lr_means * self.scene_scale * decay

    def backgrounds(self, n: int) -> torch.Tensor:
        if self._background_tensor is None:  # made once: no host-to-device copy per step
            self._background_tensor = torch.tensor(self.background, dtype=torch.float32, device=self.device)
        return self._background_tensor.expand(n, 3)

    def train_step(self, step: int) -> None:
        """One optimisation step (1-based ``step``)."""
        with _deterministic_on_cpu(self.device):
            self._train_step(step)

    def _train_step(self, step: int) -> None:
        cfg = self.config
        ts = self.training_state
        self.step = step
        clock = _PhaseClock(cfg.profile_steps, self.device)
        self._call("pre_step")
        clock.lap("modules")
        frames = self.data_provider.train_batch(step, cfg.batch_size, cfg.seed, self.world_rank, self.world_size).to(
            self.device
        )
        indices = None  # the step's training images, for per-image corrections
        if self.corrections is not None or self.pose_corrections is not None:
            indices = self.data_provider.rank_indices(step, cfg.batch_size, cfg.seed, self.world_rank, self.world_size)
        if self.pose_corrections is not None:  # the cameras as refined so far
            frames = dataclasses.replace(frames, cameras=self.pose_corrections.apply(frames.cameras, indices, step))
        clock.lap("data")
        render = self.renderer.render(
            ts.params, frames.cameras, self.active_sh_degree(step), self.backgrounds(len(frames.cameras))
        )
        self.densification.step_pre_backward(ts, self.densification_state, step, render)
        if self.corrections is not None:  # each training image's render under its own colour correction
            render = dataclasses.replace(render, images=self.corrections.apply(render.images, indices, step))
        clock.lap("render")
        self._call("pre_compute_loss", frames=frames, render=render)
        clock.lap("modules")
        loss = self.loss_fn(render, frames, step, ts)
        clock.lap("loss")
        self._call("post_compute_loss", frames=frames, render=render, loss=loss)
        clock.lap("modules")
        if self.sharded is not None:
            # The global loss is the mean of the ranks' losses; the all-to-all's backward
            # brings this shard the gradients of every rank's cameras, so no all-reduce.
            (loss.loss / self.world_size).backward()
        else:
            loss.loss.backward()
        if self.world_size > 1 and self.sharded is None:
            extra = {key: p.delta for key, (_, p) in self._per_image().items() if p is not None}
            distributed.average_gradients({**ts.params, **extra}, self.world_rank, step)
            render = self._global_statistics(render, step)
        clock.lap("backward")
        self._call("on_optimize", frames=frames, render=render, loss=loss)
        clock.lap("modules")
        ts.set_learning_rate("means", self.means_learning_rate(step))
        ts.optimizer_step(render.gaussian_ids)
        ts.zero_grad()
        for _, params in self._per_image().values():
            if params is not None:
                params.step(step)
        ok = torch.isfinite(loss.loss.detach())
        self._loss_finite = ok if self._loss_finite is None else self._loss_finite & ok
        # The loss is checked every step on the CPU (free there); the parameters, and on a GPU
        # the loss too (a host sync), every FINITE_CHECK_EVERY steps and before any write.
        if (self.device.type != "cuda" and not bool(ok)) or step % FINITE_CHECK_EVERY == 0 or step == cfg.max_steps:
            self.check_finite()
        clock.lap("optimizer")
        # Like gsplat, densification acts after the optimiser step: the statistics use
        # this step's gradients and no Gaussian loses its update.
        means = ts.params["means"]
        self.densification.step_post_backward(ts, self.densification_state, step, render)
        if ts.params["means"] is not means:  # the strategy rebuilt the parameters: free the old heap blocks
            release_free_memory()
        if ts.num_gaussians == 0 and self.sharded is None:  # (a shard may be empty; the splat is not)
            raise ValueError(
                f"step {step}: densification ({type(self.densification).__name__}) removed every Gaussian, so "
                "nothing is left to train or export; its pruning thresholds (--densification.prune-opa, "
                "--densification.prune-scale3d, ...) are too strict for this scene"
            )
        if self.sharded is not None:
            self.sharded.update_sizes(ts.num_gaussians, step)
        elif self.world_size > 1 and step % 100 == 0:
            distributed.check_in_sync(ts.params, self.world_rank, step)
        clock.lap("densification")
        self._call("post_step", frames=frames, render=render, loss=loss)
        clock.lap("modules")
        self.step_timings = clock.laps

    def _global_statistics(self, render, step: int):
        """The render output as densification must see it in a multi-process run: the
        screen-space gradients and radii of every rank's cameras, so all ranks decide alike."""
        if render.packed:
            raise ValueError("packed rendering is not supported in multi-process training; use packed=False")
        grad = render.means2d.grad
        if grad is None:
            return render
        # The global loss is the mean of the ranks' losses: each rank's gradients count 1/W.
        gathered = distributed.gather_ranks(grad, self.world_rank, step) / self.world_size
        means2d = torch.zeros_like(gathered)
        means2d.grad = gathered
        absgrad = getattr(render.means2d, "absgrad", None)
        if absgrad is not None:
            means2d.absgrad = distributed.gather_ranks(absgrad, self.world_rank, step) / self.world_size
        radii = distributed.gather_ranks(render.radii, self.world_rank, step)
        return dataclasses.replace(render, means2d=means2d, radii=radii)

    def run(self) -> SplatTrainingState:
        """Train from the start (or the checkpoint's step) to ``max_steps``."""
        error = None
        try:
            self.setup()
            for step in range(self.step + 1, self.config.max_steps + 1):
                self.train_step(step)
        except BaseException as e:
            error = e
            raise
        finally:
            try:
                self._call("on_cleanup", error=error)
            finally:
                run_folder.release(self._lock)
                self._lock = None
        return self.training_state

    def probe_step_seconds(self, repeats: int = 3) -> float:
        """Wall seconds of one training step on the next batch, done on a copy of the training
        state (render, loss, backward, Adam; not densification or modules). Touches no
        parameter, optimiser or random state of the run. The fastest of ``repeats``."""
        ts = self.training_state
        step = self.step + 1
        frames = self.data_provider.train_batch(
            step, self.config.batch_size, self.config.seed, self.world_rank, self.world_size
        ).to(self.device)
        copy = SplatTrainingState(
            {k: v.detach() for k, v in ts.params.items()}, ts.learning_rates, ts.batch_size, self.device, ts.sparse_grad
        )
        best = float("inf")
        with _deterministic_on_cpu(self.device):
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                render = self.renderer.render(
                    copy.params, frames.cameras, self.active_sh_degree(step), self.backgrounds(len(frames.cameras))
                )
                self.loss_fn(render, frames, step, copy).loss.backward()
                copy.optimizer_step(render.gaussian_ids)
                copy.zero_grad()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                best = min(best, time.perf_counter() - t0)
        return best

    # ---------------------------------------------------------- evaluation
    @torch.no_grad()
    def render_view(self, cameras, sh_degree: int | None = None):
        """Render the current Gaussians (no gradients) into ``cameras`` (on this device)
        over the configured background, at ``sh_degree`` (default: all of the model's)."""
        ts = self.training_state
        degree = ts.sh_degree if sh_degree is None else sh_degree
        if self.sharded is not None:
            return self.sharded.render(self, cameras.to(self.device), degree, self.backgrounds(len(cameras)))
        return self.renderer.render(ts.params, cameras.to(self.device), degree, self.backgrounds(len(cameras)))

    @torch.no_grad()
    def evaluate(self, frames: Iterable | None = None) -> dict:
        """PSNR and SSIM on the provider's test split (or ``frames``) at full SH degree.

        PSNR counts only pixels inside a frame's mask when it has one. For LPIPS, files
        and renders use :class:`~splatkit.modules.SplatEvaluator`.
        """
        from splatkit.evaluation import evaluate_frames, summarize

        summary = summarize(
            evaluate_frames(
                lambda f: self.render_view(f.cameras).images,
                frames if frames is not None else self.data_provider.test_frames(),
                self.device,
            )
        )
        return {k: summary[k] for k in ("psnr", "ssim", "num_images")}


def _transform_or_none(provider) -> torch.Tensor | None:
    T = provider.transform
    return None if T is None else torch.as_tensor(T, dtype=torch.float64).detach().cpu().clone()


class _PhaseClock:
    """Wall time per named phase of one step (summed over repeats); off by default."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.sync = enabled and device.type == "cuda"
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter() if enabled else 0.0

    def lap(self, name: str) -> None:
        if not self.enabled:
            return
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._t
        self._t = now


@contextlib.contextmanager
def _deterministic_on_cpu(device: torch.device):
    """PyTorch's deterministic algorithms for CPU steps (restored afterwards).

    Multithreaded CPU gradient scatters otherwise sum in a varying order, and a run
    resumed from a checkpoint would drift from an uninterrupted one by rounding.
    """
    if device.type != "cpu":
        yield
        return
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every torch.empty with NaN, a second pass over each
    # output the kernels write in full (55 MB of SH gradient a step at 300k Gaussians).
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.utils.deterministic.fill_uninitialized_memory = was_fill


def _plain(v):
    """Tuples and lists compare equal after a checkpoint round trip."""
    return list(v) if isinstance(v, (tuple, list)) else v


def _flat_settings(config: dict, components: dict | None) -> dict:
    """A run's settings as one ``{name: value}``: the trainer's fields (not the output folder,
    which changes no result) and each component's as ``part.field``."""
    flat = {k: _plain(v) for k, v in config.items() if k != "output_dir"}
    for part, fields in (components or {}).items():
        flat.update({f"{part}.{k}": _plain(v) for k, v in (fields or {}).items()})
    return flat
