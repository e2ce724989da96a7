"""Data providers: cameras, target images and initial points."""

from splatkit.data_provider.base import SplatDataProvider, SplatFrames
from splatkit.data_provider.demo import SplatDemoDataProvider, SplatDemoDataProviderConfig

__all__ = ["SplatDataProvider", "SplatFrames", "SplatDemoDataProvider", "SplatDemoDataProviderConfig"]
