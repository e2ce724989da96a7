"""Training losses."""

from splatkit.loss_fn.base import SplatLoss, SplatLossFn
from splatkit.loss_fn.loss_2dgs import Splat2DGSLossFn
from splatkit.loss_fn.loss_3dgs import Splat3DGSLossFn

__all__ = ["SplatLoss", "SplatLossFn", "Splat2DGSLossFn", "Splat3DGSLossFn"]
