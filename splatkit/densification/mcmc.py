"""3DGS as Markov Chain Monte Carlo (Kheradmand et al. 2024), with gsplat's ``MCMCStrategy`` semantics."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from splatkit.densification import ops
from splatkit.densification.base import SplatDensification, cap_share
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.conventions import opacity_activation
from splatkit.splat.training_state import SplatTrainingState


@dataclass
class SplatMCMCDensification(SplatDensification):
    """Treat the Gaussians as MCMC samples: no gradient thresholds, a fixed budget.

    - Every ``refine_every`` steps with ``refine_start_iter < i < refine_stop_iter`` (``i = s - 1``
      is gsplat's 0-based iteration of the trainer's step ``s``):
      Gaussians with opacity ``<= min_opacity`` are relocated onto live ones drawn in
      proportion to opacity (:func:`~splatkit.densification.ops.relocate`), then
      ``min(cap_max, int(1.05 N)) - N`` Gaussians are added the same way
      (:func:`~splatkit.densification.ops.sample_add`). Both split a drawn Gaussian's
      opacity and footprint among its copies, so the image barely changes.
    - After every optimiser step: the means get noise ``noise_lr * lr`` times their
      covariance, gated to the nearly transparent ones
      (:func:`~splatkit.densification.ops.inject_position_noise`), where ``lr`` is the
      means' current learning rate as the optimiser applies it (batch scaling included).

    The paper pairs it with opacity and scale regularisers: use
    ``Splat3DGSLossFn(opacity_reg=0.01, scale_reg=0.01)`` as gsplat's trainer does.
    The strategy keeps no running statistics; its state dict is empty.
    """

    cap_max: int = 1_000_000
    """Most Gaussians; the initial count must not exceed it."""
    noise_lr: float = 5e5
    """Position noise per unit of the means' learning rate."""
    refine_start_iter: int = 500
    """Densification starts after this step."""
    refine_stop_iter: int = 25_000
    """Densification stops at this step."""
    refine_every: int = 100
    """Steps between densification rounds."""
    min_opacity: float = 0.005
    """Gaussians at or below this opacity are dead and get relocated."""
    init_opacity: float = 0.5
    """Initial opacity (used when SplatTrainerConfig.init_opacity is None), as the paper and gsplat's
    "mcmc" preset start."""
    init_scale: float = 0.1
    """Initial scales as a multiple of the nearest-point distance (when SplatTrainerConfig.init_scale
    is None), as the paper and gsplat's "mcmc" preset start."""
    verbose: bool = False
    """Log the Gaussians added and removed at each round."""

    def __post_init__(self) -> None:
        checks = [
            ("cap_max", self.cap_max >= 1, "a positive integer"),
            ("noise_lr", self.noise_lr >= 0, "non-negative"),
            ("refine_every", self.refine_every >= 1, "a positive integer"),
            ("min_opacity", 0 <= self.min_opacity < 1, "in [0, 1)"),
            ("init_opacity", 0 < self.init_opacity < 1, "in (0, 1)"),
            ("init_scale", self.init_scale > 0, "positive"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SplatMCMCDensification.{name} must be {expected}, got {getattr(self, name)!r}")

    def for_shard(self, rank: int, world_size: int) -> SplatMCMCDensification:
        """Each shard grows to its part of ``cap_max`` (the parts add up to it)."""
        return replace(self, cap_max=cap_share(self.cap_max, rank, world_size))

    def initialize_state(self, scene_scale: float) -> dict:
        # Nothing to accumulate between steps: relocation reads only the parameters.
        return {}

    def step_pre_backward(
        self, training_state: SplatTrainingState, state: dict, step: int, render: SplatRenderOutput
    ) -> None:
        """Nothing: MCMC needs no screen-space gradients."""

    def step_post_backward(
        self, training_state: SplatTrainingState, state: dict, step: int, render: SplatRenderOutput
    ) -> None:
        n = training_state.num_gaussians
        if n > self.cap_max:
            raise ValueError(
                f"the splat has {n} Gaussians but SplatMCMCDensification.cap_max is {self.cap_max}; "
                f"raise cap_max to at least {n} or start from fewer points"
            )
        it = step - 1  # the schedule counts gsplat's 0-based iteration, as the default strategy's does
        if self.refine_start_iter < it < self.refine_stop_iter and it % self.refine_every == 0:
            n_relocated = self._relocate(training_state, state)
            n_added = self._add(training_state, state)
            if self.verbose:
                print(
                    f"step {step}: {n_relocated} relocated, {n_added} added, {training_state.num_gaussians} Gaussians"
                )
        lr = training_state.optimizers["means"].param_groups[0]["lr"]
        ops.inject_position_noise(training_state, self.noise_lr * lr)

    @torch.no_grad()
    def _relocate(self, training_state: SplatTrainingState, state: dict) -> int:
        dead = opacity_activation(training_state.params["opacities"]) <= self.min_opacity
        return ops.relocate(training_state, state, dead, self.min_opacity)

    @torch.no_grad()
    def _add(self, training_state: SplatTrainingState, state: dict) -> int:
        n = training_state.num_gaussians
        n_new = max(0, min(self.cap_max, int(1.05 * n)) - n)
        ops.sample_add(training_state, state, n_new, self.min_opacity)
        return n_new
