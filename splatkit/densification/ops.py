"""Tensor surgery on Gaussians: the one place that edits parameters *and* Adam moments.

Every operation replaces each parameter with a new ``nn.Parameter`` and rewrites the
matching optimiser state (``exp_avg``, ``exp_avg_sq``) with the same selection, so
parameters and moments can never drift apart. New Gaussians start with zero moments.
Running per-Gaussian statistics in the densification ``state`` dict are edited alike.
The one exception is :func:`inject_position_noise`, which perturbs the means in place
and keeps their moments.

Random draws (split offsets, relocation targets, position noise) use torch's global
generator, which the trainer seeds and checkpoints, so a resumed run draws the same.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from splatkit.splat.conventions import (
    axis_scales,
    covariance_3d,
    normalize_quat,
    opacity_activation,
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
        training_state, lambda name, p: torch.cat([p, p[sel]]), lambda name, v: torch.cat([v, torch.zeros_like(v[sel])])
    )
    _edit_running_state(state, lambda v: torch.cat([v, v[sel]]))


@torch.no_grad()
def split(training_state: SplatTrainingState, state: dict, mask: torch.Tensor, revised_opacity: bool = False) -> None:
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
    offsets = torch.einsum("nij,nj,bnj->bni", rot, axis_scales(scales), noise)  # surfels: in their plane

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
        lambda name, v: torch.cat(
            [v[rest], torch.zeros((2 * sel.numel(),) + v.shape[1:], dtype=v.dtype, device=v.device)]
        ),
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


# --------------------------------------------------------------------------- MCMC
# "3D Gaussian Splatting as Markov Chain Monte Carlo" (Kheradmand et al. 2024).

RELOCATION_MAX_RATIO = 51
"""Most copies one Gaussian is split into by a relocation; more are counted as this
many (gsplat's ``n_max``: beyond it the binomial coefficients lose float precision)."""


@functools.cache
def _binomials(n_max: int) -> tuple[tuple[int, ...], ...]:
    """Rows ``C(n, j)`` for ``n, j`` in ``0..n_max`` (zero for ``j > n``), exact integers."""
    return tuple(tuple(math.comb(n, j) for j in range(n_max + 1)) for n in range(n_max + 1))


@torch.no_grad()
def relocation_opacity_scale(
    opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor, min_opacity: float = 0.005
) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity and scales for each of ``n`` copies that together replace one Gaussian.

    The paper's Eq. 9, so that ``n`` copies at the same place render (nearly) as the
    original did: ``o' = 1 - (1 - o)^(1/n)`` keeps the opacity at the centre, and the
    scales are multiplied by ``o / sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k o'^(k+1) / sqrt(k+1)``
    so that the opacity integrated over the footprint is kept too. As in gsplat, ``o'``
    is clamped to ``[min_opacity, 1 - eps]`` before the scales are computed.

    Args:
        opacities: ``[M]`` activated opacities of the originals.
        scales: ``[M, 3]`` activated scales of the originals.
        ratios: ``[M]`` integer copy counts ``n >= 1``; clamped to :data:`RELOCATION_MAX_RATIO`.
        min_opacity: lower bound of the new opacities.

    Returns:
        ``(new_opacities [M], new_scales [M, 3])`` in the inputs' dtype.
    """
    n_max = RELOCATION_MAX_RATIO
    n = ratios.long().clamp(1, n_max)
    # float64: the alternating sum cancels terms up to ~4000 times larger than itself
    # (n = 51, o near 1), which would leave float32 with three correct digits.
    o = opacities.double()
    eps = torch.finfo(torch.float32).eps
    new_o = (1.0 - (1.0 - o) ** (1.0 / n.double())).clamp(min_opacity, 1.0 - eps)
    # Summed over i, C(i-1, k) telescopes to C(n, k+1) (hockey-stick identity), so the
    # double sum is one sum over j = k + 1 = 1..n of C(n, j) (-1)^(j-1) o'^j / sqrt(j).
    binoms = torch.tensor(_binomials(n_max), dtype=torch.float64, device=o.device)  # [n_max+1, n_max+1]
    j = torch.arange(n_max + 1, dtype=torch.float64, device=o.device)
    sign = torch.where(j % 2 == 1, 1.0, -1.0)
    weights = torch.where(j > 0, sign / j.clamp_min(1).sqrt(), 0.0)  # [n_max+1]
    denom = (binoms[n] * weights * new_o[:, None] ** j).sum(dim=-1)  # [M]
    new_scales = (o / denom)[:, None] * scales.double()
    return new_o.to(opacities.dtype), new_scales.to(scales.dtype)


def _sample_by_weight(weights: torch.Tensor, n: int) -> torch.Tensor:
    """``[n]`` indices drawn with replacement with probability proportional to ``weights [N]``."""
    if weights.numel() <= 2**24:  # torch.multinomial's limit on categories
        return torch.multinomial(weights, n, replacement=True)
    # Inverse-CDF sampling for larger sets, still from torch's generator; float64 keeps
    # the cumulative sum exact enough over tens of millions of weights.
    cdf = torch.cumsum(weights.double(), dim=0)
    u = torch.rand(n, dtype=torch.float64, device=weights.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_max(weights.numel() - 1)


def _shared_opacity_scale(training_state: SplatTrainingState, sources: torch.Tensor, min_opacity: float):
    """Stored (logit, log) opacity and scales of ``sources [M]`` once each is shared by
    ``1 + (times it was drawn)`` copies."""
    params = training_state.params
    ratios = torch.bincount(sources, minlength=training_state.num_gaussians)[sources] + 1
    new_o, new_s = relocation_opacity_scale(
        opacity_activation(params["opacities"][sources]),
        scale_activation(params["scales"][sources]),
        ratios,
        min_opacity,
    )
    return opacity_inverse_activation(new_o), scale_inverse_activation(new_s)


@torch.no_grad()
def relocate(training_state: SplatTrainingState, state: dict, mask: torch.Tensor, min_opacity: float = 0.005) -> int:
    """Move every Gaussian in ``mask [N]`` ("dead") onto a live one.

    Targets are drawn among the live Gaussians with probability proportional to their
    opacity; a target drawn ``m`` times becomes ``m + 1`` identical Gaussians whose
    opacity and scales follow :func:`relocation_opacity_scale`, so the image barely
    changes. The count and order of Gaussians stay the same. The Adam moments (and
    running statistics) of every rewritten row, moved and target alike, restart at
    zero: they described other parameter values. Returns how many were moved (0 when
    none is dead or none is alive).
    """
    dead = torch.nonzero(mask)[:, 0]
    alive = torch.nonzero(~mask)[:, 0]
    if dead.numel() == 0 or alive.numel() == 0:
        return 0
    opacities = opacity_activation(training_state.params["opacities"])
    sources = alive[_sample_by_weight(opacities[alive], dead.numel())]
    new_logit, new_log_scales = _shared_opacity_scale(training_state, sources, min_opacity)
    touched = torch.cat([sources, dead])

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        p = p.clone()
        if name == "opacities":
            p[sources] = new_logit.to(p.dtype)
        elif name == "scales":
            p[sources] = new_log_scales.to(p.dtype)
        p[dead] = p[sources]
        return p

    update_params(training_state, param_fn, lambda name, v: v.index_fill(0, touched, 0))
    _edit_running_state(state, lambda v: v.index_fill(0, touched, 0))
    return int(dead.numel())


@torch.no_grad()
def sample_add(training_state: SplatTrainingState, state: dict, n: int, min_opacity: float = 0.005) -> None:
    """Append ``n`` Gaussians, each a copy of one drawn with probability proportional to opacity.

    Like :func:`relocate`, a Gaussian drawn ``m`` times and its ``m`` copies share its
    opacity and footprint (:func:`relocation_opacity_scale`). New rows start with zero
    moments and running statistics; the drawn rows' restart at zero too.
    """
    if n <= 0:
        return
    opacities = opacity_activation(training_state.params["opacities"])
    sources = _sample_by_weight(opacities, n)
    new_logit, new_log_scales = _shared_opacity_scale(training_state, sources, min_opacity)

    def param_fn(name: str, p: torch.Tensor) -> torch.Tensor:
        p = p.clone()
        if name == "opacities":
            p[sources] = new_logit.to(p.dtype)
        elif name == "scales":
            p[sources] = new_log_scales.to(p.dtype)
        return torch.cat([p, p[sources]])

    def zero_and_append(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([v.index_fill(0, sources, 0), v.new_zeros((n,) + v.shape[1:])])

    update_params(training_state, param_fn, lambda name, v: zero_and_append(v))
    _edit_running_state(state, zero_and_append)


@torch.no_grad()
def inject_position_noise(training_state: SplatTrainingState, scale: float) -> None:
    """Add the MCMC exploration noise to the means, in place.

    Each mean moves by ``Sigma @ eta * g(o) * scale`` with ``eta ~ N(0, I)``, ``Sigma``
    the Gaussian's 3D covariance and ``g(o) = 1 / (1 + exp(-100 (1 - o - 0.995)))``, a
    gate that is ~0.6 for transparent Gaussians and below 0.01 above opacity 0.05: the
    noise explores with the Gaussians that contribute nothing and leaves the fitted
    ones alone (as gsplat's ``inject_noise_to_position``).
    :class:`~splatkit.densification.SplatMCMCDensification` passes
    ``scale = noise_lr * (means learning rate)``, so the noise decays with the rate.
    """
    params = training_state.params
    means = params["means"]
    eta = torch.randn_like(means)
    o = opacity_activation(params["opacities"])
    gate = torch.sigmoid(100.0 * (1.0 - o - 0.995))  # [N]
    covars = covariance_3d(params["quats"], scale_activation(params["scales"]))  # [N, 3, 3]
    means.add_(torch.einsum("nij,nj->ni", covars, eta * (gate * scale)[:, None]))
