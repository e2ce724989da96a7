"""Data providers: cameras, target images and initial points."""

from splatkit.data_provider.base import SplatDataProvider, SplatFrames
from splatkit.data_provider.blender import SplatBlenderDataProvider, SplatBlenderDataProviderConfig
from splatkit.data_provider.captured import SplatCaptureDataProvider, SplatLoaderConfig
from splatkit.data_provider.colmap import SplatColmapDataProvider, SplatColmapDataProviderConfig
from splatkit.data_provider.demo import SplatDemoDataProvider, SplatDemoDataProviderConfig
from splatkit.data_provider.images import DataError

__all__ = [
    "DataError",
    "SplatBlenderDataProvider",
    "SplatBlenderDataProviderConfig",
    "SplatCaptureDataProvider",
    "SplatColmapDataProvider",
    "SplatColmapDataProviderConfig",
    "SplatDataProvider",
    "SplatDemoDataProvider",
    "SplatDemoDataProviderConfig",
    "SplatFrames",
    "SplatLoaderConfig",
]
