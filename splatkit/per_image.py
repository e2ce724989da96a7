"""Learnable parameters of each training image (appearance corrections, pose corrections):
one ``[num_images, ...]`` tensor, zero (no correction) at the start, with its own Adam.

The trainer creates them at setup (``settings.create(num_train_frames, device)``), applies
them to the images of each step, calls :meth:`PerImageParameters.step` after the splat's
optimiser step, averages their gradients across replicated ranks and saves them in
checkpoints (:meth:`state_dict`), so a resumed run continues them exactly.
"""

from __future__ import annotations

import dataclasses

import torch


class PerImageParameters:
    """``delta [num_images, *shape]`` and its optimiser.

    ``settings`` is the dataclass that made it (its ``lr``, ``start_step`` and optional
    ``weight_decay``); ``recentre`` keeps the mean over the images at zero after every step
    (for corrections that could otherwise drift together with the splat).
    """

    what = "corrections"

    def __init__(self, settings, num_images: int, shape: tuple[int, ...], device, recentre: bool = False) -> None:
        if num_images < 1:
            raise ValueError(f"per-image {self.what} need training images, got {num_images}")
        self.settings = settings
        self.recentre = recentre
        self.delta = torch.nn.Parameter(torch.zeros(num_images, *shape, device=device))
        decay = float(getattr(settings, "weight_decay", 0.0))
        self.optimizer = torch.optim.Adam([self.delta], lr=settings.lr, eps=1e-15, weight_decay=decay)

    @property
    def num_images(self) -> int:
        return self.delta.shape[0]

    def active(self, step: int) -> bool:
        """Whether the corrections are applied (and learned) at ``step``."""
        return step > self.settings.start_step

    def rows(self, indices) -> torch.Tensor:
        return self.delta[torch.as_tensor(indices, device=self.delta.device, dtype=torch.long)]

    def step(self, step: int) -> None:
        """The optimiser step (after the splat's); then re-centring, if asked for."""
        if self.active(step) and self.delta.grad is not None:
            self.optimizer.step()
            if self.recentre:
                with torch.no_grad():
                    self.delta -= self.delta.mean(dim=0, keepdim=True)
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {
            "delta": self.delta.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "settings": dataclasses.asdict(self.settings),
        }

    def load_state_dict(self, state: dict) -> None:
        delta = state["delta"]
        if tuple(delta.shape[1:]) != tuple(self.delta.shape[1:]):
            raise ValueError(
                f"the checkpoint's {self.what} are {list(delta.shape[1:])} per image (settings "
                f"{state.get('settings')}); this run's are {list(self.delta.shape[1:])} "
                f"({dataclasses.asdict(self.settings)}): resume with the checkpoint's kind and size"
            )
        if tuple(delta.shape) != tuple(self.delta.shape):
            raise ValueError(
                f"the checkpoint's {self.what} are for {delta.shape[0]} training images; "
                f"this run has {self.num_images}: resume with the same data and split"
            )
        with torch.no_grad():
            self.delta.copy_(delta.to(self.delta.device))
        self.optimizer.load_state_dict(state["optimizer"])
