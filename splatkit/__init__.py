"""splatkit: train 3DGS / 2DGS Gaussian splats from real captures, on CPU or GPU."""

__version__ = "0.1.0"
