"""The trainer: a small loop around swappable components."""

from splatkit.trainer.config import SplatTrainerConfig
from splatkit.trainer.trainer import SplatTrainer

__all__ = ["SplatTrainer", "SplatTrainerConfig"]
