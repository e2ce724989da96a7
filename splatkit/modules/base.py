"""Plug-in modules: observers of training that log, evaluate and export.

Hooks are called by :class:`~splatkit.trainer.SplatTrainer` in this order, with
keyword arguments only (accept ``**kwargs``, new arguments may be added):

- ``on_setup`` once, before step 1 (also when resuming);
- per step: ``pre_step``, ``pre_compute_loss`` (after rendering), ``post_compute_loss``,
  ``on_optimize`` (after backward, gradients present, before the optimiser step),
  ``post_step`` (after the optimiser step and densification);
- ``on_cleanup`` once at the end, also after an error or Ctrl-C.

Common arguments: ``step``, ``max_steps``, ``training_state``, ``world_rank``,
``world_size``, ``logger``, ``trainer``; per step also ``frames`` and ``render``
(from ``pre_compute_loss``) and ``loss`` (a :class:`~splatkit.loss_fn.SplatLoss`,
from ``post_compute_loss``). Modules observe; they must not change training maths.
"""

from __future__ import annotations


class SplatBaseModule:
    """No-op hooks; override the ones you need. Stateful modules override
    :meth:`state_dict` / :meth:`load_state_dict` and are restored on resume."""

    def on_setup(self, **kwargs) -> None:
        pass

    def pre_step(self, **kwargs) -> None:
        pass

    def pre_compute_loss(self, **kwargs) -> None:
        pass

    def post_compute_loss(self, **kwargs) -> None:
        pass

    def on_optimize(self, **kwargs) -> None:
        pass

    def post_step(self, **kwargs) -> None:
        pass

    def on_cleanup(self, **kwargs) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        del state
