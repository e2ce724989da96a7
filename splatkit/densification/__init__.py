"""Densification strategies: when and how the set of Gaussians changes."""

from splatkit.densification.base import SplatDensification
from splatkit.densification.default import SplatDefaultDensification

__all__ = ["SplatDensification", "SplatDefaultDensification"]
