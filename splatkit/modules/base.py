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

In a sharded run (``SplatTrainerConfig.dist_mode="shard"``) hooks run on rank 0 only;
``training_state`` there is the whole splat, gathered from the ranks on first use in a
hook (a CPU copy: reading it is fine, changing it changes nothing), and
``trainer.render_view`` renders collectively. A module that renders or reads the splat
outside its hooks (from a thread) sets ``supports_sharded = False``.
"""

from __future__ import annotations


class SplatBaseModule:
    """No-op hooks; override the ones you need. Stateful modules override
    :meth:`state_dict` / :meth:`load_state_dict` and are restored on resume, matched by
    :attr:`state_key` (as Lightning's ``Callback.state_key``), whatever their order in the list."""

    supports_sharded: bool = True
    """False for modules that cannot run in a sharded run (see the module docstring)."""

    config = None
    """The settings dataclass the module was built from (:func:`splatkit.registry.modules`
    sets it; ``splatkit train`` builds every module that way), recorded in ``trainer_config.json``."""

    @property
    def state_key(self) -> str:
        """The name of this module's state in a checkpoint: its class name. A module class
        that a run may hold more than once with state overrides it to tell the instances
        apart (e.g. ``f"{type(self).__qualname__}[{self.name}]"``); two stateful modules with
        one key are refused, since a resume could not tell whose state is whose."""
        return type(self).__qualname__

    @property
    def has_state(self) -> bool:
        """Whether this module overrides :meth:`state_dict` (so a resume should restore it)."""
        return type(self).state_dict is not SplatBaseModule.state_dict

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
