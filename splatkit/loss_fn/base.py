"""Loss interface: render output + target frames -> scalar loss and its named terms."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from splatkit.data_provider.base import SplatFrames
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat.training_state import SplatTrainingState


@dataclass
class SplatLoss:
    """A scalar ``loss`` to backpropagate and its ``terms`` (detached), for logging."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class SplatLossFn(ABC):
    """Computes the training loss of one step."""

    @abstractmethod
    def __call__(
        self, render: SplatRenderOutput, frames: SplatFrames, step: int, training_state: SplatTrainingState
    ) -> SplatLoss: ...
