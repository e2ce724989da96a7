"""Sharded training (``SplatTrainerConfig.dist_mode="shard"``): each rank owns a disjoint
part of the Gaussians, as in Grendel and gsplat's distributed rasterization.

- Rank ``r`` starts with rows ``bounds[r]:bounds[r+1]`` of the initial splat (or of a
  checkpoint's) and keeps its own parameters, Adam moments and densification state.
  Densification runs on each shard alone; MCMC's budget is split among the ranks.
- Rendering is collective (:mod:`splatkit.renderer.sharded`): each rank renders its own
  cameras of the step from every shard, and the all-to-all's backward brings each shard
  the gradients of every camera. Parameters need no gradient all-reduce.
- Rank 0 alone runs the modules. While it does, the other ranks *serve* it: when a
  module renders (evaluation, TensorBoard images) every rank joins the collective render
  with no cameras of its own, and when a module needs the whole splat (export,
  checkpoint) every rank sends its shard to rank 0, which assembles it on the CPU.
  :meth:`ShardedRun.lead` is that protocol: rank 0 broadcasts a small header per request
  and ``DONE`` at the end.

Checkpoints hold the whole splat (loadable by a 1-process run) plus the shard sizes and
every rank's random state, so the same number of ranks resumes exactly; another number
re-splits the rows evenly.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

import torch
import torch.distributed as dist

from splatkit.splat.cameras import SplatCameras
from splatkit.trainer.checkpoint import capture_rng_state
from splatkit.utils.distributed import gather_ranks, guard

if TYPE_CHECKING:
    from splatkit.renderer.base import SplatRenderer
    from splatkit.splat.training_state import SplatTrainingState

OP_DONE, OP_RENDER, OP_GATHER = 0, 1, 2
_HEADER = 8


def shard_bounds(n: int, world_size: int) -> list[int]:
    """Row bounds of an even split of ``n`` Gaussians over ``world_size`` ranks."""
    return [n * r // world_size for r in range(world_size + 1)]


def bounds_from_sizes(sizes: list[int]) -> list[int]:
    return [0, *accumulate(int(s) for s in sizes)]


def _per_gaussian_optimizer_tensors(ts_state: dict):
    """``(param name, state key, tensor)`` of the Adam moments (one row per Gaussian) in a
    :meth:`SplatTrainingState.state_dict`, in a fixed order."""
    for name, opt in ts_state["optimizers"].items():
        param = ts_state["params"][name]
        for pid in sorted(opt["state"]):
            for key in sorted(opt["state"][pid]):
                t = opt["state"][pid][key]
                if isinstance(t, torch.Tensor) and t.dim() == param.dim() and t.dim() > 0:
                    yield name, pid, key, t


def _map_rows(ts_state: dict, dens_state: dict, fn: Callable) -> tuple[dict, dict]:
    """Copies of a training state dict and a densification state with ``fn`` applied to every
    per-Gaussian tensor (parameters, Adam moments, densification statistics), always in
    the same order, so ``fn`` may be a collective."""
    ts = {**ts_state, "params": {n: fn(p) for n, p in ts_state["params"].items()}}
    ts["optimizers"] = {
        n: {**o, "state": {pid: dict(st) for pid, st in o["state"].items()}} for n, o in ts_state["optimizers"].items()
    }
    for name, pid, key, t in list(_per_gaussian_optimizer_tensors(ts_state)):
        ts["optimizers"][name]["state"][pid][key] = fn(t)
    dens = {k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in dens_state.items()}
    return ts, dens


def slice_rows(ts_state: dict, dens_state: dict, lo: int, hi: int) -> tuple[dict, dict]:
    """Rows ``lo:hi`` of a whole splat's training and densification state (same layout)."""
    return _map_rows(ts_state, dens_state, lambda t: t[lo:hi].clone())


def shard_seed(seed: int, rank: int, step: int = 0) -> int:
    """The torch seed of rank ``rank``'s shard from ``step`` on: shards are different
    Gaussians, so each rank draws its own random numbers."""
    return seed + 1_000_003 * rank + step


class ShardHost(Protocol):
    """What a sharded run needs of the trainer that owns it (``SplatTrainer`` is one): the
    rank's own shard and how to render it. Declared here so this module depends on an
    interface, not on the trainer class."""

    device: torch.device
    renderer: SplatRenderer
    training_state: SplatTrainingState
    densification_state: dict

    @property
    def num_gaussians(self) -> int: ...

    def backgrounds(self, n: int) -> torch.Tensor: ...

    def gathered_training_state(self) -> SplatTrainingState: ...


class ShardedRun:
    """One rank's side of a sharded run: shard sizes, gathering, and the rank-0 lead protocol."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size = rank, world_size
        # NCCL moves device tensors only; gloo moves CPU tensors.
        self.comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.sizes: list[int] = [0] * world_size
        self.leading = False
        self.step = 0
        self._gathered: tuple | None = None
        self._gathered_ts = None

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def update_sizes(self, n_local: int, step: int) -> None:
        """Every rank's Gaussian count at ``step`` (a tiny all-gather; counts change at densification)."""
        self.step = step
        mine = torch.tensor([n_local], dtype=torch.int64, device=self.comm_device)
        self.sizes = gather_ranks(mine, self.rank, step, "shard-size all-gather").tolist()

    # ----------------------------------------------------------- gathering
    def _gather_rows(self, t: torch.Tensor) -> torch.Tensor | None:
        """Rank 0: every rank's rows of ``t`` in rank order, on the CPU; others: None."""
        if self.rank != 0:
            with guard("sending the shard to rank 0", self.rank, self.step):
                dist.send(t.detach().contiguous().to(self.comm_device), dst=0)
            return None
        parts = [t.detach().cpu()]
        for src in range(1, self.world_size):
            buf = torch.empty((self.sizes[src], *t.shape[1:]), dtype=t.dtype, device=self.comm_device)
            with guard(f"receiving rank {src}'s shard", self.rank, self.step):
                dist.recv(buf, src=src)
            parts.append(buf.cpu())
        return torch.cat(parts)

    def _gather_state(self, ts_state: dict, dens_state: dict) -> tuple[dict, dict, list] | None:
        """Collective: the whole splat's training and densification state and every rank's
        random state, assembled on rank 0 (None on the others)."""
        ts, dens = _map_rows(ts_state, dens_state, self._gather_rows)
        rngs = [None] * self.world_size if self.rank == 0 else None
        with guard("gathering random states", self.rank, self.step):
            dist.gather_object(capture_rng_state(), rngs, dst=0)
        return (ts, dens, rngs) if self.rank == 0 else None

    # -------------------------------------------------------- lead / serve
    def _broadcast_header(self, values: list[int] | None = None) -> list[int]:
        header = torch.zeros(_HEADER, dtype=torch.int64, device=self.comm_device)
        if values is not None:
            header[: len(values)] = torch.tensor(values, dtype=torch.int64)
        with guard("sharded request", self.rank, self.step):
            dist.broadcast(header, src=0)
        return header.tolist()

    def lead(self, fn: Callable, trainer: ShardHost) -> object:
        """Rank 0 runs ``fn()`` while the other ranks serve its renders and gathers.

        Returns ``fn()``'s result on rank 0 and None on the others. Every rank must call it.
        """
        if self.rank != 0:
            self._serve(trainer)
            return None
        self.leading = True
        try:
            return fn()
        finally:
            self.leading = False
            self._gathered = self._gathered_ts = None
            self._broadcast_header([OP_DONE])

    def _serve(self, trainer: ShardHost) -> None:
        while True:
            op, degree, *_ = self._broadcast_header()
            if op == OP_DONE:
                return
            if op == OP_RENDER:  # the render gathers rank 0's cameras itself; this rank adds none
                dev = trainer.device
                empty = SplatCameras(torch.zeros(0, 4, 4, device=dev), torch.zeros(0, 3, 3, device=dev), 1, 1)
                with torch.no_grad():
                    trainer.renderer.render(trainer.training_state.params, empty, degree, trainer.backgrounds(0))
            elif op == OP_GATHER:
                self._gather_state(trainer.training_state.state_dict(), trainer.densification_state)
            else:
                raise RuntimeError(f"rank {self.rank}: unknown sharded request {op} from rank 0")

    def _require_leading(self, what: str) -> None:
        if not self.leading:
            raise RuntimeError(
                f"{what} in a sharded run needs every rank: call it from a module hook or inside "
                "SplatTrainer.lead(...), not from rank 0 alone"
            )

    def render(self, trainer: ShardHost, cameras: SplatCameras, sh_degree: int, backgrounds: torch.Tensor):
        """Rank 0 (leading): render ``cameras`` from every shard (the others join with none)."""
        self._require_leading("rendering")
        self._broadcast_header([OP_RENDER, sh_degree])  # the shards' colours need the same degree
        with torch.no_grad():
            return trainer.renderer.render(trainer.training_state.params, cameras, sh_degree, backgrounds)

    def gathered(self, trainer: ShardHost) -> tuple[dict, dict, list]:
        """Rank 0 (leading): ``(training state dict, densification state, random states per
        rank)`` of the whole splat, gathered once per lead."""
        self._require_leading("gathering the splat")
        if self._gathered is None:
            self._broadcast_header([OP_GATHER])
            self._gathered = self._gather_state(trainer.training_state.state_dict(), trainer.densification_state)
        return self._gathered

    def gathered_training_state(self, trainer: ShardHost) -> SplatTrainingState:
        """Rank 0 (leading): the whole splat as a CPU ``SplatTrainingState``, once per lead."""
        if self._gathered_ts is None:
            from splatkit.splat.training_state import SplatTrainingState

            self._gathered_ts = SplatTrainingState.from_state_dict(self.gathered(trainer)[0], "cpu")
        return self._gathered_ts


class ShardedTrainingStateView:
    """What modules get as ``training_state`` in a sharded run (on rank 0): the whole
    splat, gathered on first use within a hook (a read-only CPU copy); ``num_gaussians``,
    ``device`` and ``sh_degree`` are answered without gathering."""

    def __init__(self, trainer: ShardHost) -> None:
        self._trainer = trainer

    @property
    def num_gaussians(self) -> int:
        return self._trainer.num_gaussians

    @property
    def device(self) -> torch.device:
        return self._trainer.training_state.device

    @property
    def sh_degree(self) -> int:
        return self._trainer.training_state.sh_degree

    def __getattr__(self, name: str):
        return getattr(self._trainer.gathered_training_state(), name)
