"""The 3DGS paper's adaptive density control, with gsplat's ``DefaultStrategy`` semantics."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from splatkit.densification import ops
from splatkit.densification.base import SplatDensification, cap_share
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.conventions import opacity_activation, scale_activation
from splatkit.splat.training_state import SplatTrainingState


@dataclass
class SplatDefaultDensification(SplatDensification):
    """Clone small / split large Gaussians with high screen-space gradients, prune
    transparent and oversized ones, and periodically reset opacities.

    The trainer's steps are 1-based (step ``s`` is the ``s``-th optimiser step); the schedule
    counts gsplat's 0-based iteration ``i = s - 1``, so a run matches gsplat's step for step.
    Refinement runs at ``i > refine_start_iter`` with ``i % refine_every == 0`` (never on the
    last step of a run of round length, which would leave fresh splits untrained), and
    everything (including opacity resets) stops at ``i >= refine_stop_iter``.
    """

    prune_opa: float = 0.005
    """Prune Gaussians with opacity below this."""
    grow_grad2d: float = 0.0002
    """Average screen-space gradient (in NDC units) above which a Gaussian grows."""
    grow_scale3d: float = 0.01
    """Largest scale, relative to the scene scale, up to which growing clones; above it splits."""
    grow_scale2d: float = 0.05
    """Screen radius (fraction of the image) above which a Gaussian splits, before ``refine_scale2d_stop_iter``."""
    prune_scale3d: float = 0.1
    """Prune Gaussians larger than this fraction of the scene scale (after the first reset)."""
    prune_scale2d: float = 0.15
    """Prune Gaussians whose screen radius exceeds this fraction, before ``refine_scale2d_stop_iter``."""
    refine_scale2d_stop_iter: int = 0
    """Use the screen-size rules until this step (0: never, as gsplat's default)."""
    refine_start_iter: int = 500
    """Densification starts after this step."""
    refine_stop_iter: int = 15_000
    """Densification stops at this step."""
    reset_every: int = 3000
    """Steps between opacity resets; also, pruning of oversized Gaussians starts after the first."""
    opacity_reset: bool = False
    """Clamp every opacity to ``2 * prune_opa`` every ``reset_every`` steps (the 3DGS paper's reset).
    Off by default, as gsplat 1.5.3's DefaultStrategy trains (its reset condition is never true):
    measured, the reset costs 0.15 dB at 7,000 steps on an RGBA object capture and gains about
    0.1 dB on the demo scene; docs/quality.md has the figures."""
    refine_every: int = 100
    """Steps between densification rounds."""
    absgrad: bool = False
    """Threshold the absolute gradient (AbsGS); needs a backend that computes it and a larger ``grow_grad2d``."""
    revised_opacity: bool = False
    """Split children get ``1 - sqrt(1 - o)`` (arXiv:2404.06109)."""
    cap_max: int = 0
    """Most Gaussians growth may reach (0: no limit, as gsplat's DefaultStrategy). When a round's
    clones and splits would pass it, the Gaussians with the highest screen-space gradients grow
    first and the rest wait; pruning then frees room for later rounds. A budget for time and
    memory (each step's cost grows with the count), as in "Taming 3DGS"."""
    verbose: bool = False
    """Log the Gaussians added and removed at each round."""

    def __post_init__(self) -> None:
        checks = [
            ("cap_max", self.cap_max >= 0, "a non-negative integer (0: no limit)"),
            ("refine_every", self.refine_every >= 1, "a positive integer"),
            ("reset_every", self.reset_every >= 1, "a positive integer"),
            ("prune_opa", 0 <= self.prune_opa < 1, "in [0, 1)"),
            ("grow_grad2d", self.grow_grad2d >= 0, "non-negative"),
            ("grow_scale3d", self.grow_scale3d > 0, "positive"),
            ("prune_scale3d", self.prune_scale3d > 0, "positive"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"SplatDefaultDensification.{name} must be {expected}, got {getattr(self, name)!r}")

    def for_shard(self, rank: int, world_size: int) -> SplatDefaultDensification:
        """With ``cap_max``, each shard grows to its part of it (the parts add up to it)."""
        return replace(self, cap_max=cap_share(self.cap_max, rank, world_size)) if self.cap_max else self

    def initialize_state(self, scene_scale: float) -> dict:
        state = {"grad2d": None, "count": None, "scene_scale": float(scene_scale)}
        if self.refine_scale2d_stop_iter > 0:
            state["radii"] = None
        return state

    def step_post_backward(
        self, training_state: SplatTrainingState, state: dict, step: int, render: SplatRenderOutput
    ) -> None:
        it = step - 1  # gsplat's 0-based iteration
        if it >= self.refine_stop_iter:
            return
        if self.cap_max and training_state.num_gaussians > self.cap_max:
            raise ValueError(
                f"the splat has {training_state.num_gaussians} Gaussians but SplatDefaultDensification.cap_max "
                f"is {self.cap_max}; raise cap_max to at least {training_state.num_gaussians} or start from "
                "fewer points"
            )
        self._update_state(training_state, state, render)
        if it > self.refine_start_iter and it % self.refine_every == 0:
            n_dupli, n_split = self._grow(training_state, state, it)
            n_prune = self._prune(training_state, state, it)
            if self.verbose:
                print(
                    f"step {step}: {n_dupli} cloned, {n_split} split, {n_prune} pruned, "
                    f"{training_state.num_gaussians} Gaussians"
                )
            state["grad2d"].zero_()
            state["count"].zero_()
            if "radii" in state:
                state["radii"].zero_()
        if self.opacity_reset and it > 0 and it % self.reset_every == 0:
            ops.reset_opacity(training_state, self.prune_opa * 2.0)

    @torch.no_grad()
    def _update_state(self, training_state: SplatTrainingState, state: dict, render: SplatRenderOutput) -> None:
        source = getattr(render.means2d, "absgrad", None) if self.absgrad else render.means2d.grad
        if source is None:
            raise RuntimeError(
                "SplatDefaultDensification needs the screen-space gradient of means2d"
                + (
                    " (absgrad=True: render with Splat3DGSRenderer(absgrad=True) on the gsplat backend)"
                    if self.absgrad
                    else ""
                )
            )
        n = training_state.num_gaussians
        device = source.device
        if state["grad2d"] is None:
            state["grad2d"] = torch.zeros(n, device=device)
            state["count"] = torch.zeros(n, device=device)
        if "radii" in state and state["radii"] is None:
            state["radii"] = torch.zeros(n, device=device)
        # Gradients in NDC units: pixels scaled by half the image size; a batch of C
        # cameras divides each camera's share of the mean loss by C, which is undone.
        scale = torch.tensor([render.width / 2.0, render.height / 2.0], device=device) * render.n_cameras
        if render.packed:
            gs_ids = render.gaussian_ids
            norms = (source * scale).norm(dim=-1)
            state["grad2d"].index_add_(0, gs_ids, norms)
            state["count"].index_add_(0, gs_ids, torch.ones_like(norms))
            if "radii" in state:
                radii = render.radii.max(dim=-1).values.float() / float(max(render.width, render.height))
                state["radii"].scatter_reduce_(0, gs_ids, radii, reduce="amax")
        else:
            # Dense masked sums instead of index lists: no host-device sync per step.
            visible = (render.radii > 0).any(dim=-1)  # [C, N]
            norms = (source * scale).norm(dim=-1)
            state["grad2d"] += torch.where(visible, norms, 0.0).sum(dim=0)
            state["count"] += visible.sum(dim=0, dtype=state["count"].dtype)
            if "radii" in state:
                radii = render.radii.max(dim=-1).values.float() / float(max(render.width, render.height))
                state["radii"] = torch.maximum(state["radii"], torch.where(visible, radii, 0.0).amax(dim=0))

    @torch.no_grad()
    def _grow(self, training_state: SplatTrainingState, state: dict, step: int) -> tuple[int, int]:
        params = training_state.params
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_grad_high = grads > self.grow_grad2d
        if self.cap_max:
            is_grad_high = self._within_cap(is_grad_high, grads, training_state.num_gaussians)
        is_small = scale_activation(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_dupli = is_grad_high & is_small
        is_large = ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_large |= state["radii"] > self.grow_scale2d
        is_split = is_grad_high & is_large
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli:
            ops.duplicate(training_state, state, is_dupli)
        # Clones are not split in the same refinement.
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
        if n_split:
            ops.split(training_state, state, is_split, revised_opacity=self.revised_opacity)
        return n_dupli, n_split

    def _within_cap(self, is_grad_high: torch.Tensor, grads: torch.Tensor, n: int) -> torch.Tensor:
        """The candidates that fit under ``cap_max`` (a clone or a split adds one Gaussian
        each): the highest gradients, ties in index order."""
        room = max(0, self.cap_max - n)
        if int(is_grad_high.sum()) <= room:
            return is_grad_high
        order = torch.sort(torch.where(is_grad_high, grads, -1.0), descending=True, stable=True).indices
        kept = torch.zeros_like(is_grad_high)
        kept[order[:room]] = True
        return kept

    @torch.no_grad()
    def _prune(self, training_state: SplatTrainingState, state: dict, step: int) -> int:
        params = training_state.params
        is_prune = opacity_activation(params["opacities"]) < self.prune_opa
        if step > self.reset_every:
            too_big = scale_activation(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
            if step < self.refine_scale2d_stop_iter:
                too_big |= state["radii"] > self.prune_scale2d
            is_prune |= too_big
        n_prune = int(is_prune.sum())
        if n_prune:
            ops.remove(training_state, state, is_prune)
        return n_prune
