"""The reference rasterizer against a naive renderer, autograd gradcheck and edge cases."""

import pytest
import torch
from oracle import render_naive

from splatkit.renderer import rasterize
from splatkit.testing import cameras, random_scene


def _render(scene, vm, K, W, H, **kw):
    means, quats, scales, opacities, colors = scene
    return rasterize(means, quats, scales, opacities, colors, vm, K, W, H, backend="torch", **kw)


@pytest.mark.parametrize("tile_size,chunk", [(16, 1 << 22), (8, 1 << 22), (4, 300)])
def test_matches_naive_renderer(tile_size, chunk):
    W, H = 40, 28
    scene = random_scene(60, seed=1)
    vm, K = cameras(W, H, n=2)
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]], dtype=torch.float64)
    img, alpha, meta = _render(scene, vm, K, W, H, backgrounds=bg, tile_size=tile_size, max_chunk_elements=chunk)
    assert img.shape == (2, H, W, 3) and alpha.shape == (2, H, W, 1)
    for c in range(2):
        ref_img, ref_alpha = render_naive(*scene, vm[c], K[c], W, H, background=bg[c])
        torch.testing.assert_close(img[c], ref_img, atol=1e-9, rtol=0)
        torch.testing.assert_close(alpha[c, ..., 0], ref_alpha, atol=1e-9, rtol=0)
    assert meta["radii"].shape == (2, 60, 2) and meta["means2d"].shape == (2, 60, 2)


def test_dense_scene_hits_transmittance_stop():
    """Many opaque layers: pixels saturate, the 0.999 alpha clamp and the 1e-4 stop rule decide."""
    W, H = 24, 20
    means, quats, scales, opacities, colors = random_scene(80, seed=2, spread=0.3, scale_range=(0.2, 0.4))
    opacities = torch.where(torch.arange(80) % 2 == 0, 0.9, 0.9995).to(opacities)
    vm, K = cameras(W, H)
    img, alpha, _ = _render((means, quats, scales, opacities, colors), vm, K, W, H)
    ref_img, ref_alpha = render_naive(means, quats, scales, opacities, colors, vm[0], K[0], W, H)
    assert float(ref_alpha.max()) > 1 - 1e-3
    torch.testing.assert_close(img[0], ref_img, atol=1e-9, rtol=0)
    torch.testing.assert_close(alpha[0, ..., 0], ref_alpha, atol=1e-9, rtol=0)


@pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
def test_spherical_harmonics_match_naive(sh_degree):
    W, H = 20, 16
    scene = random_scene(20, seed=3, sh_degree=sh_degree)
    vm, K = cameras(W, H)
    img, _, _ = _render(scene, vm, K, W, H, sh_degree=sh_degree)
    ref, _ = render_naive(*scene, vm[0], K[0], W, H, sh_degree=sh_degree)
    torch.testing.assert_close(img[0], ref, atol=1e-9, rtol=0)


def test_gradcheck_all_parameters():
    W, H = 12, 10
    means, quats, scales, opacities, colors = random_scene(6, seed=4, sh_degree=3, spread=0.5, scale_range=(0.15, 0.35))
    vm, K = cameras(W, H)
    bg = torch.tensor([[0.2, 0.1, 0.0]], dtype=torch.float64)

    def f(m, q, s, o, c):
        img, alpha, _ = rasterize(m, q, s, o, c, vm, K, W, H, sh_degree=3, backgrounds=bg, backend="torch")
        return img, alpha

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, colors)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=False)


def test_means2d_gradient_is_available_for_densification():
    W, H = 16, 16
    scene = [t.float().requires_grad_(True) for t in random_scene(10, seed=5)]
    vm, K = cameras(W, H, dtype=torch.float32)
    img, _, meta = _render(scene, vm, K, W, H)
    meta["means2d"].retain_grad()
    img.sum().backward()
    g = meta["means2d"].grad
    visible = (meta["radii"] > 0).any(-1)
    assert g is not None and g.shape == (1, 10, 2)
    assert (g[visible].abs().sum(-1) > 0).any() and (g[~visible] == 0).all()


def test_culling_behind_near_and_far():
    W, H = 16, 16
    vm, K = cameras(W, H, distance=4.0)
    cam_center = -vm[0, :3, :3].T @ vm[0, :3, 3]
    forward = vm[0, 2, :3]
    means = torch.stack(
        [
            cam_center - 1.0 * forward,  # behind the camera
            cam_center + 0.005 * forward,  # in front of the near plane
            cam_center + 20.0 * forward,  # beyond far_plane=10
            torch.zeros(3, dtype=torch.float64),
        ]
    )  # visible
    n = means.shape[0]
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    scales = torch.full((n, 3), 0.3, dtype=torch.float64)
    opac = torch.full((n,), 0.8, dtype=torch.float64)
    colors = torch.eye(3, dtype=torch.float64)[[0, 1, 2, 0]]
    img, alpha, meta = rasterize(means, quats, scales, opac, colors, vm, K, W, H, far_plane=10.0, backend="torch")
    assert (meta["radii"][0, :3] == 0).all() and (meta["radii"][0, 3] > 0).all()
    # Only the red Gaussian at the origin is drawn.
    assert float(img[0, ..., 1:].abs().max()) == 0.0 and float(img[0, ..., 0].max()) > 0.5


def test_empty_scene_is_background():
    W, H = 8, 6
    vm, K = cameras(W, H)
    empty = torch.zeros(0, 3, dtype=torch.float64)
    bg = torch.tensor([[0.3, 0.6, 0.9]], dtype=torch.float64)
    img, alpha, _ = rasterize(
        empty,
        torch.zeros(0, 4, dtype=torch.float64),
        empty,
        torch.zeros(0, dtype=torch.float64),
        empty,
        vm,
        K,
        W,
        H,
        backgrounds=bg,
        backend="torch",
    )
    assert torch.equal(img[0], bg[0].expand(H, W, 3)) and torch.equal(
        alpha, torch.zeros(1, H, W, 1, dtype=torch.float64)
    )


def test_expected_depth_of_an_opaque_wall():
    """A grid of flat, opaque Gaussians facing the camera renders its own depth."""
    W, H = 16, 16
    vm, K = cameras(W, H, distance=4.0)
    c2w = torch.linalg.inv(vm[0])
    xs = torch.linspace(-1.5, 1.5, 25, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    local = torch.stack([gx.flatten(), gy.flatten(), torch.full_like(gx.flatten(), 3.0)], -1)
    means = local @ c2w[:3, :3].T + c2w[:3, 3]
    R = c2w[:3, :3]
    from splatkit.splat.conventions import rotmat_to_quat

    quats = rotmat_to_quat(R).expand(means.shape[0], 4)
    scales = torch.tensor([0.12, 0.12, 0.001], dtype=torch.float64).expand(means.shape[0], 3)
    opac = torch.full((means.shape[0],), 0.99, dtype=torch.float64)
    colors = torch.ones(means.shape[0], 3, dtype=torch.float64)
    out, alpha, _ = rasterize(means, quats, scales, opac, colors, vm, K, W, H, render_mode="RGB+ED", backend="torch")
    assert out.shape == (1, H, W, 4)
    assert float(alpha.min()) > 0.99
    torch.testing.assert_close(out[0, ..., 3], torch.full((H, W), 3.0, dtype=torch.float64), atol=1e-6, rtol=0)


def test_antialiased_mode_compensates_opacity():
    W, H = 16, 16
    scene = random_scene(5, seed=6, scale_range=(0.001, 0.002))
    vm, K = cameras(W, H)
    classic, _, _ = _render(scene, vm, K, W, H)
    aa, _, meta = _render(scene, vm, K, W, H, rasterize_mode="antialiased")
    # Sub-pixel Gaussians: the compensation makes them much fainter, never brighter.
    assert float(aa.sum()) < 0.5 * float(classic.sum())
    assert (meta["opacities"] <= scene[3][None] + 1e-12).all()


def test_invalid_arguments_name_the_problem():
    W, H = 8, 8
    means, quats, scales, opacities, colors = random_scene(4)
    vm, K = cameras(W, H)
    with pytest.raises(ValueError, match=r"quats must be \[N, 4\]"):
        rasterize(means, quats[:, :3], scales, opacities, colors, vm, K, W, H, backend="torch")
    with pytest.raises(ValueError, match=r"Ks must be \[C, 3, 3\]"):
        rasterize(means, quats, scales, opacities, colors, vm, K[0], W, H, backend="torch")
    with pytest.raises(ValueError, match="sh_degree=2 needs 9 coefficients"):
        rasterize(means, quats, scales, opacities, colors[:, None, :].repeat(1, 4, 1), vm, K, W, H, sh_degree=2)
    with pytest.raises(ValueError, match="unknown rasterizer backend 'vulkan'"):
        rasterize(means, quats, scales, opacities, colors, vm, K, W, H, backend="vulkan")
    with pytest.raises(ValueError, match="backgrounds is torch.float32 on cpu but means is torch.float64"):
        rasterize(means, quats, scales, opacities, colors, vm, K, W, H, backgrounds=torch.zeros(1, 3))
    with pytest.raises(ValueError, match="render_mode must be one of"):
        rasterize(means, quats, scales, opacities, colors, vm, K, W, H, render_mode="normals")


def test_gsplat_switches_are_refused_by_other_backends():
    W, H = 8, 8
    means, quats, scales, opacities, colors = random_scene(4)
    vm, K = cameras(W, H)
    with pytest.raises(ValueError, match="packed is a gsplat option; backend 'torch' does not support it"):
        rasterize(means, quats, scales, opacities, colors, vm, K, W, H, backend="torch", packed=True)
    with pytest.raises(ValueError, match="absgrad, sparse_grad are gsplat options"):
        rasterize(
            means.float(),
            quats.float(),
            scales.float(),
            opacities.float(),
            colors.float(),
            vm.float(),
            K.float(),
            W,
            H,
            backend="auto",
            absgrad=True,
            sparse_grad=True,
        )
    from splatkit.renderer.backends import gsplat_backend

    if gsplat_backend.is_available():
        pytest.skip("gsplat works here")
    with pytest.raises(RuntimeError, match="backend 'gsplat' is unavailable"):
        rasterize(means, quats, scales, opacities, colors, vm, K, W, H, backend="gsplat")


def test_cpu_rendering_never_imports_gsplat(tmp_path):
    """CPU-only installs and CI must not touch gsplat (it may be absent or unbuildable):
    a booby-trapped ``gsplat`` package on the path fails the run if anything imports it."""
    import os
    import subprocess
    import sys

    (tmp_path / "gsplat").mkdir()
    (tmp_path / "gsplat" / "__init__.py").write_text("raise RuntimeError('gsplat was imported')\n")

    code = (
        "import torch\n"
        "from splatkit.renderer import rasterize\n"
        "n = 16\n"
        "g = torch.Generator().manual_seed(0)\n"
        "means = torch.rand(n, 3, generator=g) - 0.5\n"
        "quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)\n"
        "scales = torch.full((n, 3), 0.05)\n"
        "op = torch.full((n,), 0.5, requires_grad=True)\n"
        "vm = torch.eye(4)[None].clone(); vm[0, 2, 3] = 3.0\n"
        "K = torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]])\n"
        "img, _, _ = rasterize(means, quats, scales, op, torch.rand(n, 3), vm, K, 16, 16)\n"
        "img.sum().backward()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
