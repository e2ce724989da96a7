"""Plug-in modules that observe training: export, evaluation, progress, logging, viewing."""

from splatkit.modules.base import SplatBaseModule
from splatkit.modules.evaluator import SplatEvaluator
from splatkit.modules.exporter import SplatExporter
from splatkit.modules.progress import SplatProgressTracker
from splatkit.modules.tensorboard import SplatTensorboard
from splatkit.modules.viewer import SplatViewer

__all__ = [
    "SplatBaseModule",
    "SplatEvaluator",
    "SplatExporter",
    "SplatProgressTracker",
    "SplatTensorboard",
    "SplatViewer",
]
