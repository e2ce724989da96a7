"""The one error type and guard of every ``torch.distributed`` collective splatkit makes."""

from __future__ import annotations

import contextlib


class SplatDistributedError(RuntimeError):
    """A collective failed: another rank died or hung. Files already written are intact."""


@contextlib.contextmanager
def guard(what: str, rank: int, step: int | None = None):
    """Turn a failed collective into a :class:`SplatDistributedError` that says what happened."""
    try:
        yield
    except SplatDistributedError:
        raise
    except (RuntimeError, ConnectionError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        when = "" if step is None else f" at step {step}"
        raise SplatDistributedError(
            f"rank {rank}: {what} failed{when}: another rank probably died or stopped responding "
            f"({type(e).__name__}: {first}). Checkpoints already written are complete; resume from the last one."
        ) from e
