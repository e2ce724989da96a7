"""Plug-in modules that observe training: export, progress, (evaluation, logging, viewing)."""

from splatkit.modules.base import SplatBaseModule
from splatkit.modules.exporter import SplatExporter
from splatkit.modules.progress import SplatProgressTracker

__all__ = ["SplatBaseModule", "SplatExporter", "SplatProgressTracker"]
