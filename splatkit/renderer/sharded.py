"""Sharded rasterization: the Gaussians are split across ranks, each rank renders its own
cameras from every rank's Gaussians (Grendel, "On Scaling Up 3D Gaussian Splatting
Training", and gsplat's ``distributed=True``).

Every rank passes its shard (``means`` etc. hold only its Gaussians) and its own
cameras (any number, zero included; ranks may differ in count and image size):

1. the ranks' cameras are gathered (all-gather);
2. each rank projects its shard into every rank's cameras (the backend's projection
   stage, :class:`~splatkit.renderer.backends.base.Backend`);
3. the projections go to the ranks that own the cameras with one all-to-all, whose
   backward pass sends the gradients back the same way; a Gaussian culled in all of a
   rank's cameras is not sent to it (Grendel's saving: each rank receives only what its
   images can show);
4. each rank composites its cameras over the projections of all shards (the backend's
   compositing stage), in depth order as if the scene were on one rank.

So no rank ever holds another rank's Gaussians, only their screen-space footprints in
its own cameras. ``meta["means2d"]`` and ``meta["radii"]`` are this rank's Gaussians
projected into *all* cameras of the call (``[C_all, N_local, 2]``, ranks in order), so
densification statistics need no further communication: after backward,
``means2d.grad`` holds the screen-space gradient of every camera's loss.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from splatkit.renderer.backends.base import Backend, RasterInputs, RasterSettings
from splatkit.renderer.projection import (
    Projected,
    background_for_mode,
    features_for_mode,
    finish_depth,
    projection_meta,
)
from splatkit.renderer.projection_2dgs import ProjectedSurfels, screen_translation
from splatkit.utils.distributed import gather_ranks, guard


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllToAll(torch.autograd.Function):
    """All-to-all of a flat tensor: ``send[r]`` elements go to rank ``r``, ``recv[r]`` come
    from it. Its gradient is the reverse exchange."""

    @staticmethod
    def forward(ctx, x, send, recv):
        ctx.splits = (send, recv)
        out = x.new_empty(sum(recv))
        with guard("sharded render (all-to-all)", dist.get_rank()):
            dist.all_to_all_single(out, x.contiguous(), recv, send)
        return out

    @staticmethod
    def backward(ctx, g):
        send, recv = ctx.splits
        out = g.new_empty(sum(send))
        with guard("sharded render backward (all-to-all)", dist.get_rank()):
            dist.all_to_all_single(out, g.contiguous(), send, recv)
        return out, None, None


def _gather_cameras(viewmats, Ks, width, height, rank):
    """Every rank's ``(viewmats, Ks, width, height)``, in rank order."""
    dev = viewmats.device
    info = torch.tensor([[viewmats.shape[0], width, height]], dtype=torch.int64, device=dev)
    infos = gather_ranks(info, rank, what="sharded render (camera all-gather)").tolist()
    c_max = max(c for c, _, _ in infos)
    flat = torch.zeros(c_max, 25, dtype=viewmats.dtype, device=dev)
    flat[: viewmats.shape[0]] = torch.cat([viewmats.reshape(-1, 16), Ks.reshape(-1, 9)], dim=1)
    flats = gather_ranks(flat, rank, what="sharded render (camera all-gather)").split(c_max)
    return [(f[:c, :16].reshape(c, 4, 4), f[:c, 16:].reshape(c, 3, 3), w, h) for f, (c, w, h) in zip(flats, infos)]


def _all_cameras(viewmats, Ks, width, height) -> tuple[int, int, list]:
    """Step 1: ``(rank, world_size, every rank's (viewmats, Ks, width, height))``."""
    rank, world_size = world()
    if world_size == 1:
        return rank, world_size, [(viewmats, Ks, width, height)]
    return rank, world_size, _gather_cameras(viewmats, Ks, width, height, rank)


def _project_everywhere(project, cameras: list, viewmats, Ks, width, height) -> list:
    """Step 2: ``project(viewmats, Ks, width, height)`` for every rank's cameras (ranks without
    any skipped; if no rank has a camera, into none)."""
    return [project(vm, K, w, h) for vm, K, w, h in cameras if vm.shape[0]] or [project(viewmats, Ks, width, height)]


def _concat(items: list):
    """Field-wise concatenation of per-camera dataclasses (cameras after cameras). The
    result is what densification reads and what the exchange consumes, so its
    ``means2d.grad`` after backward holds every camera's gradient."""
    cls = type(items[0])
    return cls(*(torch.cat([getattr(i, f.name) for i in items]) for f in dataclasses.fields(cls)))


def _check_colors(sh_degree, colors) -> None:
    if sh_degree is None and colors.dim() != 2:
        raise ValueError(
            "sharded rendering takes per-Gaussian colours [N, D] or SH coefficients [N, K, 3], "
            f"got {tuple(colors.shape)}"
        )


def _pack(p: Projected) -> torch.Tensor:
    """``[C, N, F]``: centre 2, conic 3, opacity 1, depth 1, radii 2, features D."""
    return torch.cat(
        [
            p.means2d,
            p.conics,
            p.opacities[..., None],
            p.depths[..., None],
            p.radii.to(p.means2d.dtype),
            p.colors.to(p.means2d.dtype),
        ],
        dim=-1,
    )


def _unpack(t: torch.Tensor) -> Projected:
    return Projected(
        means2d=t[..., 0:2],
        conics=t[..., 2:5],
        opacities=t[..., 5],
        depths=t[..., 6],
        radii=t[..., 7:9].detach().round().to(torch.int32),
        colors=t[..., 9:],
    )


def exchange(
    packed: torch.Tensor, radii: torch.Tensor, cameras: list, c_mine: int, rank: int, world_size: int
) -> torch.Tensor:
    """Step 3: ``packed [C_all, N_local, F]`` (this shard in every rank's cameras, in rank
    order) -> ``[c_mine, N_received, F]`` (every shard in this rank's cameras). A Gaussian
    goes to a rank only if ``radii`` shows it in at least one of that rank's cameras."""
    pieces, send_counts, c0 = [], [], 0
    for vm, _, _, _ in cameras:
        c1 = c0 + vm.shape[0]
        seen = (radii[c0:c1] > 0).any(dim=-1).any(dim=0).nonzero()[:, 0]
        pieces.append(packed[c0:c1, seen].reshape(-1))
        send_counts.append(seen.numel())
        c0 = c1
    send_n = torch.tensor(send_counts, dtype=torch.int64, device=packed.device)
    recv_n = torch.empty_like(send_n)
    with guard("sharded render (count all-to-all)", rank):
        dist.all_to_all_single(recv_n, send_n)
    recv_counts = recv_n.tolist()
    F = packed.shape[-1]
    send_splits = [vm.shape[0] * n * F for (vm, _, _, _), n in zip(cameras, send_counts)]
    recv_splits = [c_mine * n * F for n in recv_counts]
    recv = _AllToAll.apply(torch.cat(pieces), send_splits, recv_splits)
    parts = recv.split(recv_splits)
    return torch.cat([part.reshape(c_mine, n, F) for part, n in zip(parts, recv_counts)], dim=1)


def rasterize_sharded(
    inputs: RasterInputs, settings: RasterSettings, backend: Backend
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """:func:`splatkit.renderer.rasterize` of this rank's cameras over all ranks' shards.

    A collective: every rank of the default process group must call it at the same
    time (a rank with nothing to render passes zero cameras), and, when gradients are
    on, call ``backward`` on a loss of the result. ``backend``'s projection and
    compositing stages do the work. Returns ``(renders, alphas, meta)`` for this rank's
    cameras; ``meta`` is described in the module docstring. Without a process group
    it is a plain single-process render (through the same two stages).
    """
    _check_colors(inputs.sh_degree, inputs.colors)
    g, mode, width, height = inputs, settings.render_mode, inputs.width, inputs.height
    rank, world_size, cameras = _all_cameras(g.viewmats, g.Ks, width, height)
    stats = _concat(
        _project_everywhere(
            lambda vm, K, w, h: backend.project(g.with_cameras(vm, K, w, h), settings),
            cameras,
            g.viewmats,
            g.Ks,
            width,
            height,
        )
    )
    C = g.n_cameras
    # 3-4. every shard's footprints in this rank's cameras, composited
    mine = stats if world_size == 1 else _unpack(exchange(_pack(stats), stats.radii, cameras, C, rank, world_size))
    feats = features_for_mode(mine.colors, mine.depths, mode)
    bg = background_for_mode(g.backgrounds, feats, mode)
    renders, alphas = backend.composite(mine, feats, width, height, bg, settings.tile_size)
    tile = backend.fixed_tile_size or settings.tile_size
    return finish_depth(renders, alphas, mode), alphas, projection_meta(stats, width, height, tile)


def _pack_surfels(p: ProjectedSurfels, extra: torch.Tensor) -> torch.Tensor:
    """``[C, N, F]``: centre 2, M 9, normal 3, opacity 1, depth 1, radii 2, backend extra E, features D."""
    C, N = p.depths.shape
    return torch.cat(
        [
            p.means2d,
            p.ray_transforms.reshape(C, N, 9),
            p.normals,
            p.opacities[..., None],
            p.depths[..., None],
            p.radii.to(p.means2d.dtype),
            extra.to(p.means2d.dtype),
            p.colors.to(p.means2d.dtype),
        ],
        dim=-1,
    )


def _unpack_surfels(t: torch.Tensor, n_extra: int) -> tuple[ProjectedSurfels, torch.Tensor]:
    C, N = t.shape[:2]
    e = 18 + n_extra
    return ProjectedSurfels(
        means2d=t[..., 0:2],
        ray_transforms=t[..., 2:11].reshape(C, N, 3, 3),
        normals=t[..., 11:14],
        opacities=t[..., 14],
        depths=t[..., 15],
        radii=t[..., 16:18].detach().round().to(torch.int32),
        colors=t[..., e:],
    ), t[..., 18:e]


def rasterize_sharded_2dgs(inputs: RasterInputs, settings: RasterSettings, backend: Backend) -> dict:
    """The 2DGS counterpart of :func:`rasterize_sharded`: the surfel rasterizers' output
    dict (see :meth:`splatkit.renderer.backends.base.Backend.rasterize_2dgs`) for this
    rank's cameras. ``means2d`` is the zero screen translation of this shard in every
    camera of the call (:func:`~splatkit.renderer.projection_2dgs.screen_translation`),
    whose gradient densification reads."""
    _check_colors(inputs.sh_degree, inputs.colors)
    g, width, height = inputs, inputs.width, inputs.height
    rank, world_size, cameras = _all_cameras(g.viewmats, g.Ks, width, height)
    parts = _project_everywhere(
        lambda vm, K, w, h: backend.project_2dgs(g.with_cameras(vm, K, w, h), settings),
        cameras,
        g.viewmats,
        g.Ks,
        width,
        height,
    )
    stats, extra = _concat([p for p, _ in parts]), torch.cat([e for _, e in parts])
    offset, M, means2d = screen_translation(stats.ray_transforms, stats.means2d)
    stats = dataclasses.replace(stats, ray_transforms=M, means2d=means2d)
    C = g.n_cameras
    if world_size == 1:
        mine, mine_extra = stats, extra
    else:
        recv = exchange(_pack_surfels(stats, extra), stats.radii, cameras, C, rank, world_size)
        mine, mine_extra = _unpack_surfels(recv, extra.shape[-1])
    out = backend.composite_2dgs(mine, mine_extra, width, height, settings.tile_size)
    return {**out, "means2d": offset, "radii": stats.radii, "depths": stats.depths}
