"""Every error type splatkit raises on purpose, in one place.

Each is raised with a message that names the file, field or argument at fault and what was
expected; the command line turns the user-input ones into ``splatkit: error: ...``.
"""

from __future__ import annotations


class SplatFileError(ValueError):
    """A splat or checkpoint file that cannot be read; the message names the file."""


class DataError(ValueError):
    """Bad input data; the message names the file or field and what was expected."""


class SplatDistributedError(RuntimeError):
    """A collective failed: another rank died or hung. Files already written are intact."""


class KernelBuildError(RuntimeError):
    """The compiled CPU backend could not be built or loaded; the message says why."""


class SplatNumericError(ValueError):
    """Training produced NaN or Inf; the message names the step and the likely causes.
    Nothing was written from the diverged state."""


__all__ = ["DataError", "KernelBuildError", "SplatDistributedError", "SplatFileError", "SplatNumericError"]
