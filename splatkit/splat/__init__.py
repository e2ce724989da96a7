"""The splat representation: conventions, parameters, optimiser state and files."""

from splatkit.splat.cameras import SplatCameras
from splatkit.splat.model import SplatModel
from splatkit.splat.training_state import SplatTrainingState

__all__ = ["SplatCameras", "SplatModel", "SplatTrainingState"]
