"""Densification interface: grow, prune and reset Gaussians during training."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.training_state import SplatTrainingState


class SplatDensification(ABC):
    """A strategy whose running statistics live in an explicit ``state`` dict.

    The trainer keeps the dict, hands it to every call and saves it in checkpoints, so
    a resumed run continues with the same statistics. Tensors in it are per-Gaussian
    (first dimension N) and are edited together with the parameters by
    :mod:`splatkit.densification.ops`.
    """

    init_opacity: float = 0.1
    """Opacity of the initial Gaussians this strategy is designed for (the trainer's
    ``init_opacity`` when that is None): the 3DGS paper's 0.1."""
    init_scale: float = 1.0
    """Initial scales as a multiple of the distance to the nearest points (the trainer's
    ``init_scale`` when that is None)."""

    @abstractmethod
    def initialize_state(self, scene_scale: float) -> dict:
        """Fresh running state for a scene of extent ``scene_scale``."""

    def for_shard(self, rank: int, world_size: int) -> SplatDensification:
        """The strategy for rank ``rank``'s shard in a sharded run (``dist_mode="shard"``),
        which sees only its own Gaussians: the same by default; strategies with a global
        budget return a copy with the rank's part of it."""
        del rank, world_size
        return self

    def step_pre_backward(
        self, training_state: SplatTrainingState, state: dict, step: int, render: SplatRenderOutput
    ) -> None:
        """Before ``loss.backward()``: by default keep the screen-space gradients."""
        if render.means2d.requires_grad:
            render.means2d.retain_grad()

    @abstractmethod
    def step_post_backward(
        self, training_state: SplatTrainingState, state: dict, step: int, render: SplatRenderOutput
    ) -> None:
        """After the optimiser step of ``step`` (1-based): update statistics, refine."""


def cap_share(cap: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s part of a budget of ``cap`` Gaussians in a sharded run: the parts add up
    to ``cap`` and each is at least 1."""
    return max(1, cap * (rank + 1) // world_size - cap * rank // world_size)


def state_to(state: dict, device: torch.device | str) -> dict:
    """Copy of a densification ``state`` with its tensors on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}
