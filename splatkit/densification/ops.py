"""Tensor surgery on Gaussians: the one place that edits parameters *and* Adam moments.

Every operation replaces each parameter with a new ``nn.Parameter`` and rewrites the
matching optimiser state (``exp_avg``, ``exp_avg_sq``) with the same selection, so
parameters and moments can never drift apart. New Gaussians start with zero moments.
Running per-Gaussian statistics in the densification ``state`` dict are edited alike.
"""

from __future__ import annotations

from typing import Callable

import torch

from splatkit.splat.conventions import (
    normalize_quat,
    opacity_inverse_activation,
    quat_to_rotmat,
    scale_activation,
    scale_inverse_activation,
)
from splatkit.splat.training_state import SplatTrainingState


@torch.no_grad()
def update_params(
    training_state: SplatTrainingState,
    param_fn: Callable[[str, torch.Tensor], torch.Tensor],
    moment_fn: Callable[[str, torch.Tensor], torch.Tensor],
    names: list[str] | None = None,
) -> None:
    """Replace parameters ``names`` (default all) by ``param_fn(name, p)`` and each Adam
    moment ``v`` by ``moment_fn(name, v)``; Adam's step counters are kept."""
    for name in names or list(training_state.params):
        old = training_state.params[name]
        new = torch.nn.Parameter(param_fn(name, old.detach()), requires_grad=old.requires_grad)
        training_state.params[name] = new
        opt = training_state.optimizers[name]
        moments = opt.state.pop(old, {})
        for key, value in moments.items():
            if key != "step":
                moments[key] = moment_fn(name, value)
        for group in opt.param_groups:
            group["params"] = [new]
        if moments:
            opt.state[new] = moments


def _edit_running_state(state: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = fn(value)


@torch.no_grad()
def duplicate(training_state: SplatTrainingState, state: dict, mask: torch.Tensor) -> None:
    """Append a copy of every Gaussian in ``mask [N]``."""
    sel = torch.nonzero(mask)[:, 0]
    update_params(
        training_state,
        lambda name, p: torch.cat([p, p[sel]]),
        lambda name, v: torch.cat([v, torch.zeros_like(v[sel])]),
    )
    _edit_running_state(state, lambda v: torch.cat([v, v[sel]]))


@torch.no_grad()
def split(training_state: SplatTrainingState, state: dict, mask: torch.Tensor,
          revised_opacity: bool = False) -> None:
    """Replace every Gaussian in ``mask [N]`` by two, sampled inside it, 1.6x smaller.

    Survivors keep their order; the 2M new Gaussians go at the end. With
    ``revised_opacity`` each child gets ``1 - sqrt(1 - o)`` (arXiv:2404.06109).
    """
    sel = torch.nonzero(mask)[:, 0]
    rest = torch.nonzero(~mask)[:, 0]
    params = training_state.params
    scales = scale_activation(params["scales"][sel])
    rot = quat_to_rotmat(normalize_quat(params["quats"][sel]))
    noise = torch.randn(2, sel.numel(), 3, device=scales.device, dtype=scales.dtype)
    offsets = torch.einsum("nij,nj,bnj->bni", rot, scales, noise)

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "means":
            children = (p[sel] + offsets).reshape(-1, 3)
        elif name == "scales":
            children = scale_inverse_activation(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            o = torch.sigmoid(p[sel])
            children = opacity_inverse_activation(1.0 - torch.sqrt(1.0 - o)).repeat(2)
        else:
            children = p[sel].repeat(2, *([1] * (p.dim() - 1)))
        return torch.cat([p[rest], children])

    update_params(
        training_state,
        param_fn,
        lambda name, v: torch.cat([v[rest], torch.zeros((2 * sel.numel(),) + v.shape[1:], dtype=v.dtype, device=v.device)]),
    )
    _edit_running_state(state, lambda v: torch.cat([v[rest], v[sel].repeat(2, *([1] * (v.dim() - 1)))]))


@torch.no_grad()
def remove(training_state: SplatTrainingState, state: dict, mask: torch.Tensor) -> None:
    """Delete every Gaussian in ``mask [N]``."""
    keep = torch.nonzero(~mask)[:, 0]
    update_params(training_state, lambda name, p: p[keep], lambda name, v: v[keep])
    _edit_running_state(state, lambda v: v[keep])


@torch.no_grad()
def reset_opacity(training_state: SplatTrainingState, value: float) -> None:
    """Clamp every opacity to at most ``value`` and zero the opacities' Adam moments."""
    limit = float(opacity_inverse_activation(value))
    update_params(
        training_state,
        lambda name, p: torch.clamp(p, max=limit),
        lambda name, v: torch.zeros_like(v),
        names=["opacities"],
    )
