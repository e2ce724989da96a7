"""Densification strategies: when and how the set of Gaussians changes."""

from splatkit.densification.base import SplatDensification
from splatkit.densification.default import SplatDefaultDensification
from splatkit.densification.mcmc import SplatMCMCDensification

__all__ = ["SplatDensification", "SplatDefaultDensification", "SplatMCMCDensification"]
