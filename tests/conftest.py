import pytest

from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig


@pytest.fixture(scope="session")
def small_demo():
    """A small, fast version of the built-in scene (40 cameras, 32 px)."""
    return SplatDemoDataProvider(
        SplatDemoDataProviderConfig(num_cameras=40, image_size=32, supersample=1, num_init_points=600)
    )
