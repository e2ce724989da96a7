"""Training losses."""

from splatkit.loss_fn.base import SplatLoss, SplatLossFn
from splatkit.loss_fn.loss_3dgs import Splat3DGSLossFn

__all__ = ["SplatLoss", "SplatLossFn", "Splat3DGSLossFn"]
