"""Trainable Gaussian parameters and their per-group Adam optimisers."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from splatkit.splat.conventions import PARAM_NAMES

# Learning rates of the 3DGS paper as gsplat uses them; "means" is multiplied by the
# scene scale by the trainer.
DEFAULT_LEARNING_RATES: dict[str, float] = {
    "means": 1.6e-4,
    "scales": 5e-3,
    "quats": 1e-3,
    "opacities": 5e-2,
    "sh0": 2.5e-3,
    "shN": 2.5e-3 / 20,
}


def resolve_learning_rates(learning_rates: Mapping[str, float] | None) -> dict[str, float]:
    """Defaults overridden by ``learning_rates``; unknown names are an error."""
    lrs = dict(DEFAULT_LEARNING_RATES)
    for name, lr in (learning_rates or {}).items():
        if name not in lrs:
            raise ValueError(f"learning_rates has unknown parameter {name!r}; expected some of {list(lrs)}")
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ValueError(f"learning_rates[{name!r}] must be a non-negative number, got {lr!r}")
        lrs[name] = float(lr)
    return lrs


class SplatTrainingState:
    """Gaussian parameters as ``nn.Parameter`` s, one Adam optimiser per parameter.

    One optimiser per parameter (as in gsplat) lets densification replace a parameter
    and its Adam moments together (:mod:`splatkit.densification.ops`).

    Attributes:
        params: ``{name: nn.Parameter}`` in the layout of :mod:`splatkit.splat.conventions`.
        optimizers: ``{name: torch.optim.Adam}``.
        learning_rates: base learning rate per parameter (before batch scaling).
        batch_size: images per step; Adam's rate, eps and betas are scaled for it as gsplat does.
        sparse_grad: use sparse Adam (for gsplat's ``sparse_grad`` renders): every parameter's
            gradient is made sparse over the Gaussians the step saw, and only those rows move.
    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor],
        learning_rates: Mapping[str, float] | None = None,
        batch_size: int = 1,
        device: torch.device | str | None = None,
        sparse_grad: bool = False,
    ) -> None:
        missing = [n for n in PARAM_NAMES if n not in params]
        if missing:
            raise ValueError(f"params lacks {missing}; a splat needs {list(PARAM_NAMES)}")
        self.learning_rates = resolve_learning_rates(learning_rates)
        self.batch_size = int(batch_size)
        self.sparse_grad = bool(sparse_grad)
        self.params: dict[str, torch.nn.Parameter] = {
            name: torch.nn.Parameter(
                (params[name].detach().to(device) if device is not None else params[name].detach()).clone()
            )
            for name in PARAM_NAMES
        }
        self._zero_grads: dict[str, torch.Tensor] = {}
        # PyTorch's fused Adam (one multithreaded pass per parameter, on CPU and CUDA) is
        # ~8x faster than the default loop on CPU; same update rule.
        fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in self.params.values())
        extra = {} if self.sparse_grad else {"fused": fused or None}
        adam = torch.optim.SparseAdam if self.sparse_grad else torch.optim.Adam
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: adam([{"params": [p], "name": name, **self._batch_scaled(self.learning_rates[name])}], **extra)
            for name, p in self.params.items()
        }

    def _batch_scaled(self, lr: float) -> dict:
        """Adam's rate, eps and betas for ``batch_size`` images per step, as gsplat scales them."""
        bs = self.batch_size
        return {
            "lr": lr * math.sqrt(bs),
            "eps": 1e-15 / math.sqrt(bs),
            "betas": (1 - bs * (1 - 0.9), 1 - bs * (1 - 0.999)),
        }

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def sh_degree(self) -> int:
        from splatkit.splat.sh import sh_degree_from_bases

        return sh_degree_from_bases(self.params["shN"].shape[1] + 1)

    def set_learning_rate(self, name: str, lr: float) -> None:
        """Set parameter ``name``'s rate (before batch scaling)."""
        for group in self.optimizers[name].param_groups:
            group["lr"] = self._batch_scaled(lr)["lr"]

    def set_batch_size(self, batch_size: int) -> None:
        """Rescale every optimiser's rate, eps and betas for a new batch size (e.g. a
        checkpoint of a K-process run resumed on another number of processes)."""
        unscaled = {n: opt.param_groups[0]["lr"] / math.sqrt(self.batch_size) for n, opt in self.optimizers.items()}
        self.batch_size = int(batch_size)
        for name, opt in self.optimizers.items():
            for group in opt.param_groups:
                group.update(self._batch_scaled(unscaled[name]))

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def optimizer_step(self, gaussian_ids: torch.Tensor | None = None) -> None:
        """One Adam step. With ``sparse_grad``, ``gaussian_ids [nnz]`` are the Gaussians this
        step rendered (gsplat's packed ids); dense gradients are made sparse over them."""
        # A parameter the step's render did not read (shN at SH degree 0) still takes an
        # Adam step with a zero gradient, as when every band is rendered: its step count,
        # hence its bias correction once its band starts, matches a dense run. The zeros
        # are one cached tensor (zero_grad only drops the reference).
        for name, p in self.params.items():
            if p.grad is None:
                zeros = self._zero_grads.get(name)
                if zeros is None or zeros.shape != p.shape or zeros.device != p.device:
                    zeros = self._zero_grads[name] = torch.zeros_like(p)
                p.grad = zeros
            else:
                self._zero_grads.pop(name, None)
        if self.sparse_grad:
            if gaussian_ids is None:
                raise ValueError("sparse_grad training needs the rendered gaussian_ids (packed render output)")
            # A Gaussian seen by several cameras of the batch appears once per camera;
            # duplicates would be summed when the sparse gradient is coalesced.
            ids = torch.unique(gaussian_ids)
            for p in self.params.values():
                if p.grad is not None and not p.grad.is_sparse:
                    p.grad = torch.sparse_coo_tensor(ids[None], p.grad[ids], p.shape, check_invariants=False)
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict:
        """Parameters and optimiser states, loadable with ``torch.load(weights_only=True)``."""
        return {
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "optimizers": {n: opt.state_dict() for n, opt in self.optimizers.items()},
            "learning_rates": dict(self.learning_rates),
            "batch_size": self.batch_size,
            "sparse_grad": self.sparse_grad,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping, device: torch.device | str | None = None) -> SplatTrainingState:
        ts = cls(
            state["params"],
            state["learning_rates"],
            state["batch_size"],
            device=device,
            sparse_grad=state.get("sparse_grad", False),
        )
        for name, opt in ts.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        return ts
