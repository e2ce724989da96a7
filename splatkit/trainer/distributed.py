"""Data-parallel training over ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

Every rank holds the whole splat and renders its own share of each step's cameras:
with ``batch_size`` B and world size W, step ``s`` trains on the global batch
``train_indices(s, B * W)`` and rank ``r`` takes images ``r*B .. r*B+B-1`` of it. After
backward the parameter gradients are averaged across ranks (one flat all-reduce), and
the screen-space statistics densification reads are gathered from all ranks, so every
rank makes the same densification decisions on the same numbers and the Gaussian sets
stay identical (all randomness comes from the same seeded generator on every rank).
The learning rates follow the global batch ``B * W`` (gsplat's sqrt scaling).

A failed collective (a peer process died, or stopped answering within
``SplatTrainerConfig.dist_timeout`` seconds) raises :class:`SplatDistributedError`
naming the rank and step; so does a group that does not form within
``SplatTrainerConfig.dist_join_timeout`` seconds (a rank died before joining).
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from typing import NoReturn

import torch
import torch.distributed as dist

from splatkit.utils.distributed import SplatDistributedError, gather_ranks
from splatkit.utils.distributed import guard as _guard

__all__ = [
    "SplatDistributedError",
    "average_gradients",
    "check_in_sync",
    "exit_process",
    "gather_ranks",
    "init_from_env",
    "joined_group",
]

logger = logging.getLogger("splatkit")

_joined = False  # whether init_from_env formed a process group in this process


def joined_group() -> bool:
    """Whether :func:`init_from_env` joined a process group in this process (which then
    ends through :func:`exit_process`)."""
    return _joined


def exit_process(code: int) -> NoReturn:
    """End a process that ran collectives, skipping the interpreter's finalisation.

    gloo's worker threads release a finished collective (and the tensors it held) after
    the caller has already returned from it. When that happens while the interpreter is
    finalising, the release needs the GIL, a finalising interpreter ends the thread
    instead, and the process aborts from C++ ("terminate called without an active
    exception", SIGABRT) after its work was done and its files written. Flushes logging
    and the standard streams, then leaves through ``os._exit(code)``.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def init_from_env(
    device: torch.device, timeout_s: float, join_timeout_s: float | None = None
) -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1).

    Returns ``(rank, world_size, device)``; on CUDA each rank takes ``cuda:LOCAL_RANK``.
    Without those variables (or with a group already initialised by the caller) it
    only reports what is there. Collectives time out after ``timeout_s``; forming the group
    after ``join_timeout_s`` (default: the same), raising :class:`SplatDistributedError`
    when a rank died before joining or was never started.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world} but {', '.join(missing)} unset; launch with torchrun "
            "(torchrun --nproc_per_node=K -m splatkit train ...)"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    rank = int(os.environ["RANK"])
    join = (
        timeout_s if join_timeout_s is None or not hasattr(dist.distributed_c10d, "_set_pg_timeout") else join_timeout_s
    )
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=join))
    except (RuntimeError, ConnectionError, ValueError) as e:  # torch's DistStoreError / DistNetworkError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise SplatDistributedError(
            f"rank {rank}: the {world} ranks did not all join the process group at {where} within {join:g} s: "
            f"a rank died before joining, was never started, or MASTER_ADDR/MASTER_PORT differ between ranks "
            f"({type(e).__name__}: {first[:200]}). Nothing was trained or written; if the ranks are merely slow "
            "to start, raise --dist-join-timeout"
        ) from e
    global _joined
    _joined = True
    if join != timeout_s:  # collectives get their own, usually longer, limit
        dist.distributed_c10d._set_pg_timeout(datetime.timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    logger.info("rank %d of %d (%s, %s)", rank, world, backend, device)
    if rank != 0:  # rank 0 logs for the run; the others report only errors
        logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    return rank, world, device


def average_gradients(params: dict[str, torch.nn.Parameter], rank: int, step: int) -> None:
    """Average every parameter's gradient across ranks with one flat all-reduce."""
    present = [p.grad for p in params.values() if p.grad is not None]
    if not present:
        return
    flat = torch.cat([g.reshape(-1) for g in present])
    with _guard("gradient all-reduce", rank, step):
        dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in present:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def check_in_sync(params: dict[str, torch.Tensor], rank: int, step: int) -> None:
    """Raise if the ranks' splats differ (same count and a float64 checksum of the means);
    a cheap guard against anything that would let replicas drift apart."""
    means = params["means"].detach()
    mine = torch.tensor([float(means.shape[0]), float(means.double().sum())], dtype=torch.float64, device=means.device)
    allv = gather_ranks(mine[None], rank, step)
    if not bool((allv == allv[0]).all()):
        raise SplatDistributedError(
            f"rank {rank}: the ranks' Gaussians diverged by step {step} (count, checksum per rank: "
            f"{allv.tolist()}); a component made rank-dependent random draws or decisions"
        )
