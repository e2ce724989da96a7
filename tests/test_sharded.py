"""Sharded rendering (Gaussians split across ranks) against one process holding them all."""

import pytest
import torch

from splatkit.renderer import rasterize
from splatkit.renderer.backends import cpu
from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this PyTorch has no gloo backend",
)

BACKENDS = [
    "torch",
    pytest.param("cpu", marks=pytest.mark.skipif(not cpu.is_available(), reason="no C++ compiler for the cpu backend")),
]


def scene(n=300, seed=0, dtype=torch.float64):
    """Spread wider than the cameras see, so each rank's cameras miss some Gaussians
    (which then never travel to that rank)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) * 2 - 1) * 2.5
    scales = torch.exp(torch.rand(n, 3, generator=g) * 2.5 - 4.0)
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g) * 0.8 + 0.1
    sh = torch.randn(n, 16, 3, generator=g) * 0.3
    return [t.to(dtype) for t in (means, quats, scales, opac, sh)]


def cameras(n, size, dtype=torch.float64):
    vms, Ks = [], []
    for i in range(n):
        a = 0.7 * i + 0.2
        eye = torch.tensor([3.5 * torch.cos(torch.tensor(a)), 3.5 * torch.sin(torch.tensor(a)), 0.7 + 0.1 * i])
        vms.append(
            c2w_to_viewmat(
                look_at_c2w(
                    eye.double(),
                    torch.zeros(3, dtype=torch.float64),
                    torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                )
            )
        )
        Ks.append(
            torch.tensor([[1.2 * size, 0, size / 2], [0, 1.2 * size, size / 2 + 0.3], [0, 0, 1]], dtype=torch.float64)
        )
    return torch.stack(vms).to(dtype), torch.stack(Ks).to(dtype)


def weights(C, size, seed, channels=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(C, size, size, channels, generator=g, dtype=torch.float64)


def render_loss(params, vm, K, size, backend, w, **kw):
    img, alpha, meta = rasterize(
        *params,
        vm,
        K,
        size,
        size,
        sh_degree=3,
        backend=backend,
        backgrounds=torch.full((vm.shape[0], 3), 0.25, dtype=vm.dtype),
        **kw,
    )
    meta["means2d"].retain_grad()
    out = torch.cat([img, alpha], dim=-1)
    return out, (out * w.to(out.dtype)).sum(), meta


def _worker(rank, init_file, backend, dtype_name, out_dir):
    import torch.distributed as dist

    # A rendezvous file, not a TCP port: no port can be taken by another process meanwhile.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    full = scene(dtype=dtype)
    bounds = [0, 170, 300]  # uneven shards
    shard = [t[bounds[rank] : bounds[rank + 1]].clone().requires_grad_(True) for t in full]
    vm, K = cameras(5, 40, dtype)
    # rank 0 renders cameras 0-2, rank 1 cameras 3-4 at another image size
    mine = slice(0, 3) if rank == 0 else slice(3, 5)
    size = 40 if rank == 0 else 32
    out, loss, meta = render_loss(
        shard, vm[mine], K[mine], size, backend, weights(5, 40, 1)[mine, :size, :size], distributed=True
    )
    loss.backward()
    torch.save(
        {
            "out": out.detach(),
            "grads": [p.grad for p in shard],
            "means2d_grad": meta["means2d"].grad,
            "radii": meta["radii"],
        },
        f"{out_dir}/{rank}.pt",
    )
    # Zero cameras on one rank (how evaluation renders on rank 0 alone).
    with torch.no_grad():
        n = 2 if rank == 0 else 0
        img, _, _ = rasterize(*shard, vm[:n], K[:n], 40, 40, sh_degree=3, backend=backend, distributed=True)
    torch.save(img, f"{out_dir}/{rank}_eval.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_shards_render_and_differentiate_like_one_process(tmp_path, backend):
    import torch.multiprocessing as mp

    dtype = torch.float64 if backend == "torch" else torch.float32
    mp.spawn(
        _worker,
        args=(str(tmp_path / "rendezvous"), backend, str(dtype).split(".")[1], str(tmp_path)),
        nprocs=2,
        join=True,
    )
    full = [t.clone().requires_grad_(True) for t in scene(dtype=dtype)]
    vm, K = cameras(5, 40, dtype)
    w = weights(5, 40, 1)
    # The single-process reference: the same losses, rendered with every Gaussian.
    ref0, loss0, meta0 = render_loss(full, vm[:3], K[:3], 40, backend, w[:3])
    ref1, loss1, meta1 = render_loss(full, vm[3:], K[3:], 32, backend, w[3:, :32, :32])
    (loss0 + loss1).backward()
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(r0["out"], ref0.detach(), atol=tol, rtol=0)
    torch.testing.assert_close(r1["out"], ref1.detach(), atol=tol, rtol=0)
    bounds = [0, 170, 300]
    for rank, r in enumerate((r0, r1)):
        sl = slice(bounds[rank], bounds[rank + 1])
        for name, g_shard, p in zip(("means", "quats", "scales", "opacities", "sh"), r["grads"], full):
            ref = p.grad[sl]
            err = float((g_shard - ref).norm() / ref.norm())
            assert err < (1e-9 if dtype == torch.float64 else 1e-4), (rank, name, err)
        # Densification statistics: this shard in all 5 cameras, ranks' cameras in order.
        ref_m2d = torch.cat([meta0["means2d"].grad, meta1["means2d"].grad])[:, sl]
        torch.testing.assert_close(r["means2d_grad"], ref_m2d, atol=tol, rtol=1e-4)
        ref_radii = torch.cat([meta0["radii"], meta1["radii"]])[:, sl]
        assert torch.equal(r["radii"], ref_radii)
    # Rank 0 rendered 2 cameras alone while rank 1 contributed its shard with none.
    with torch.no_grad():
        ref_eval, _, _ = rasterize(*[t.detach() for t in full], vm[:2], K[:2], 40, 40, sh_degree=3, backend=backend)
    torch.testing.assert_close(torch.load(tmp_path / "0_eval.pt"), ref_eval, atol=tol, rtol=0)
    assert torch.load(tmp_path / "1_eval.pt").shape == (0, 40, 40, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_process_sharded_path_is_the_plain_render(backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    vm, K = cameras(2, 36, dtype)
    w = weights(2, 36, 3, channels=5)
    results = []
    for distributed in (False, True):
        params = [t.clone().requires_grad_(True) for t in scene(200, 4, dtype)]
        out, loss, meta = render_loss(params, vm, K, 36, backend, w, distributed=distributed, render_mode="RGB+ED")
        loss.backward()
        results.append((out.detach(), [p.grad for p in params], meta["means2d"].grad))
    (a, ga, ma), (b, gb, mb) = results
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for x, y in zip(ga + [ma], gb + [mb]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_sharded_rendering_rejects_what_it_cannot_do():
    params = scene(20, 1, torch.float64)
    vm, K = cameras(1, 16)
    with pytest.raises(ValueError, match="per-Gaussian colours"):
        rasterize(
            *params[:4], torch.rand(1, 20, 3, dtype=torch.float64), vm, K, 16, 16, backend="torch", distributed=True
        )


def render_loss_2dgs(params, vm, K, size, backend, seed, **kw):
    from splatkit.renderer import rasterize_2dgs

    means, quats, scales, opac, sh = params
    *outs, meta = rasterize_2dgs(
        means,
        quats,
        scales,
        opac,
        sh,
        vm,
        K,
        size,
        size,
        sh_degree=3,
        backend=backend,
        backgrounds=torch.full((vm.shape[0], 3), 0.25, dtype=vm.dtype),
        **kw,
    )
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in outs)
    return [o.detach() for o in outs], loss, meta


def _worker_2dgs(rank, init_file, backend, dtype_name, out_dir):
    import torch.distributed as dist

    # A rendezvous file, not a TCP port: no port can be taken by another process meanwhile.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    dtype = getattr(torch, dtype_name)
    full = surfels(dtype)
    bounds = [0, 130, 300]
    shard = [t[bounds[rank] : bounds[rank + 1]].clone().requires_grad_(True) for t in full]
    vm, K = cameras(4, 40, dtype)
    mine = slice(0, 2) if rank == 0 else slice(2, 4)
    outs, loss, meta = render_loss_2dgs(shard, vm[mine], K[mine], 40, backend, 10 + rank, distributed=True)
    loss.backward()
    torch.save(
        {"outs": outs, "grads": [p.grad for p in shard], "means2d_grad": meta["means2d"].grad}, f"{out_dir}/{rank}.pt"
    )
    dist.destroy_process_group()


def surfels(dtype):
    means, quats, scales, opac, sh = scene(dtype=dtype)
    return [means, quats, scales[:, :2].contiguous(), opac, sh]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_shards_of_surfels_render_and_differentiate_like_one_process(tmp_path, backend):
    import torch.multiprocessing as mp

    dtype = torch.float64 if backend == "torch" else torch.float32
    mp.spawn(
        _worker_2dgs,
        args=(str(tmp_path / "rendezvous"), backend, str(dtype).split(".")[1], str(tmp_path)),
        nprocs=2,
        join=True,
    )
    full = [t.clone().requires_grad_(True) for t in surfels(dtype)]
    vm, K = cameras(4, 40, dtype)
    ref0, loss0, meta0 = render_loss_2dgs(full, vm[:2], K[:2], 40, backend, 10)
    ref1, loss1, meta1 = render_loss_2dgs(full, vm[2:], K[2:], 40, backend, 11)
    (loss0 + loss1).backward()
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for r, ref in ((r0, ref0), (r1, ref1)):
        for a, b in zip(r["outs"], ref):  # colour+depth, alpha, normals, normals from depth, distortion, median
            torch.testing.assert_close(a, b, atol=tol, rtol=0)
    bounds = [0, 130, 300]
    for rank, r in enumerate((r0, r1)):
        sl = slice(bounds[rank], bounds[rank + 1])
        for name, g_shard, p in zip(("means", "quats", "scales", "opacities", "sh"), r["grads"], full):
            err = float((g_shard - p.grad[sl]).norm() / p.grad[sl].norm())
            assert err < (1e-8 if dtype == torch.float64 else 1e-3), (rank, name, err)
        ref_m2d = torch.cat([meta0["means2d"].grad, meta1["means2d"].grad])[:, sl]
        torch.testing.assert_close(r["means2d_grad"], ref_m2d, atol=tol, rtol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_cameras_render_nothing(backend):
    """What a rank without cameras of its own does in every sharded render."""
    from splatkit.renderer import rasterize_2dgs

    dtype = torch.float64 if backend == "torch" else torch.float32
    means, quats, scales, opac, sh = scene(20, 2, dtype)
    vm, K, bg = torch.zeros(0, 4, 4, dtype=dtype), torch.zeros(0, 3, 3, dtype=dtype), torch.zeros(0, 3, dtype=dtype)
    img, alpha, meta = rasterize(
        means,
        quats,
        scales,
        opac,
        sh,
        vm,
        K,
        16,
        12,
        sh_degree=3,
        backend=backend,
        backgrounds=bg,
        render_mode="RGB+ED",
    )
    assert img.shape == (0, 12, 16, 4) and alpha.shape == (0, 12, 16, 1) and meta["radii"].shape == (0, 20, 2)
    outs = rasterize_2dgs(
        means, quats, scales[:, :2], opac, sh, vm, K, 16, 12, sh_degree=3, backend=backend, backgrounds=bg
    )
    assert [tuple(o.shape) for o in outs[:6]] == [
        (0, 12, 16, 4),
        (0, 12, 16, 1),
        (0, 12, 16, 3),
        (0, 12, 16, 3),
        (0, 12, 16, 1),
        (0, 12, 16, 1),
    ]
