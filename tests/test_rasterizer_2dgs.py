"""2DGS reference rasterizer: against a naive per-pixel renderer, gradcheck, normals of a
known plane, and the distortion loss of a surface versus a scattered cloud."""

import math

import pytest
import torch
from oracle import render_naive_2dgs

from splatkit.renderer.backends import BACKENDS, RasterInputs, RasterSettings
from splatkit.renderer.functional import rasterize_2dgs
from splatkit.splat.conventions import c2w_to_viewmat, look_at_c2w


def camera(W, H, eye=(0.3, -3.0, 1.2), f=None, dtype=torch.float64):
    f = f or 1.2 * max(W, H)
    vm = c2w_to_viewmat(
        look_at_c2w(
            torch.tensor(eye, dtype=dtype), torch.zeros(3, dtype=dtype), torch.tensor([0.0, 0.0, 1.0], dtype=dtype)
        )
    )[None]
    K = torch.tensor([[[f, 0, W / 2 + 0.2], [0, f, H / 2 - 0.3], [0, 0, 1]]], dtype=dtype)
    return vm, K


def surfels(n, seed, spread=0.6, scale=(0.05, 0.3)):
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.exp(
        torch.rand(n, 2, generator=g, dtype=torch.float64) * math.log(scale[1] / scale[0]) + math.log(scale[0])
    )
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.15
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return means, quats, scales, opac, colors


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_naive_renderer(seed):
    W, H = 20, 16
    vm, K = camera(W, H)
    scene = surfels(25, seed)
    scene[2][:4] = torch.tensor([[1e-3, 0.2]], dtype=torch.float64)  # needles: only the 2D filter shows them
    scene[1][4:8] = torch.tensor([[0.7071, 0.0, 0.7071, 0.0]], dtype=torch.float64)  # normal +x: nearly edge-on
    out = BACKENDS["torch"].rasterize_2dgs(RasterInputs(*scene, vm, K, W, H), RasterSettings())
    naive = render_naive_2dgs(*scene, vm[0], K[0], W, H)
    for key, ref_key in (
        ("colors", "colors"),
        ("alphas", "alpha"),
        ("normals_camera", "normals"),
        ("depth_sum", "depth_sum"),
        ("distort", "distort"),
        ("median_depth", "median"),
    ):
        err = (out[key][0] - naive[ref_key]).abs().max()
        assert err < 1e-9, f"{key}: max abs error {err:.3e}"
    assert float(naive["alpha"].max()) > 0.5  # the scene is not empty


def test_gradcheck_every_parameter():
    W, H = 10, 8
    vm, K = camera(W, H, eye=(0.2, -2.5, 0.8))
    means, quats, scales, opac, colors = surfels(6, 3, spread=0.3, scale=(0.1, 0.3))
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(1, H, W, k, generator=g, dtype=torch.float64) for k in (4, 1, 3, 3, 1, 1)]

    def f(means, quats, scales, opac, colors):
        outs = rasterize_2dgs(means, quats, scales, opac, colors, vm, K, W, H, backend="torch", render_mode="RGB+ED")
        return sum((o * w).sum() for o, w in zip(outs[:6], weights))

    params = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)


def plane_scene(n_side=14, tilt=0.0, jitter_z=0.0, seed=0):
    """Surfels tiling the plane z = 0 (or scattered in z by ``jitter_z``)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linspace(-0.8, 0.8, n_side, dtype=torch.float64)
    xx, yy = torch.meshgrid(u, u, indexing="ij")
    n = n_side * n_side
    means = torch.stack([xx.reshape(-1), yy.reshape(-1), torch.zeros(n, dtype=torch.float64)], -1)
    means[:, 2] = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * jitter_z
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64).expand(n, 4).clone()
    scales = torch.full((n, 2), 1.6 / n_side, dtype=torch.float64)
    opac = torch.full((n,), 0.9, dtype=torch.float64)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    return means, quats, scales, opac, colors


def test_normals_of_a_known_plane():
    W, H = 32, 24
    vm, K = camera(W, H, eye=(0.4, -1.5, 2.2), f=30.0)
    _, alphas, normals, from_depth, _, _, _ = rasterize_2dgs(*plane_scene(), vm, K, W, H, backend="torch")
    covered = alphas[0, ..., 0] > 0.99
    assert covered.sum() > 200
    n = normals[0][covered] / alphas[0][covered]
    assert torch.allclose(n, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(n), atol=1e-6)
    interior = covered.clone()
    interior[[0, -1], :] = False
    interior[:, [0, -1]] = False
    interior &= torch.nn.functional.max_pool2d((~covered)[None, None].double(), 3, 1, 1)[0, 0] == 0
    fd = from_depth[0][interior].detach()
    # Depth is the centres' depth blended per pixel, so the derived normal is close to the
    # plane's, not exact (a surface of discs is piecewise constant in depth).
    cos = fd @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert interior.sum() > 100 and float(cos.median()) > 0.98


def test_distortion_is_lower_on_one_surface_than_on_a_scattered_cloud():
    W, H = 32, 24
    vm, K = camera(W, H, eye=(0.4, -1.5, 2.2), f=30.0)
    flat = rasterize_2dgs(*plane_scene(), vm, K, W, H, backend="torch")
    scattered = rasterize_2dgs(*plane_scene(jitter_z=0.4), vm, K, W, H, backend="torch")
    d_flat, d_scat = float(flat[4].mean()), float(scattered[4].mean())
    # Not zero on the plane: overlapping discs have different centre depths seen obliquely.
    assert d_flat * 2 < d_scat, (d_flat, d_scat)
    assert float(flat[4].min()) >= -1e-12  # sum of w_i w_j |d_i - d_j| with depth-sorted surfels


def test_bad_scales_and_modes_are_named():
    vm, K = camera(8, 8)
    means, quats, scales, opac, colors = surfels(3, 0)
    with pytest.raises(ValueError, match=r"scales must be \[N, 2\]"):
        rasterize_2dgs(means, quats, scales[:, :1], opac, colors, vm, K, 8, 8)
    with pytest.raises(ValueError, match="render_mode must be one of"):
        rasterize_2dgs(means, quats, scales, opac, colors, vm, K, 8, 8, render_mode="ED")
    with pytest.raises(ValueError, match="unknown rasterizer backend .vulkan."):
        rasterize_2dgs(means, quats, scales, opac, colors, vm, K, 8, 8, backend="vulkan")


def test_screen_space_gradient_is_the_gradient_of_moving_the_image():
    """``means2d.grad`` (what densification thresholds) is dL/d(translation of a surfel's
    image). Moving every surfel's image by d is moving the principal point by d, so the
    sum over surfels must equal the finite difference of the loss in (cx, cy); the
    compiled backend gives the same per-surfel gradients."""
    W, H = 24, 20
    vm, K = camera(W, H)
    scene = surfels(30, 7)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, H, W, 3, generator=g, dtype=torch.float64)

    def loss(K, backend="torch", dtype=torch.float64):
        params = [t.to(dtype).requires_grad_(torch.is_grad_enabled()) for t in scene]  # as in training
        out = rasterize_2dgs(*params, vm.to(dtype), K.to(dtype), W, H, backend=backend, render_mode="RGB")
        return (out[0] * w.to(dtype)).sum(), out[6]["means2d"]

    value, offset = loss(K)
    value.backward()
    analytic = offset.grad[0].sum(0)
    fd = []
    for axis in (0, 1):
        Kp, Km = K.clone(), K.clone()
        Kp[0, axis, 2] += 1e-4
        Km[0, axis, 2] -= 1e-4
        with torch.no_grad():
            fd.append(float(loss(Kp)[0] - loss(Km)[0]) / 2e-4)
    assert torch.allclose(analytic, torch.tensor(fd, dtype=torch.float64), rtol=1e-4, atol=1e-6), (analytic, fd)
    assert analytic.abs().max() > 0.1

    from splatkit.renderer.backends import cpu

    if not cpu.is_available():
        pytest.skip(f"compiled CPU backend unavailable: {cpu.unavailable_reason()}")
    value32, offset32 = loss(K, "cpu", torch.float32)
    value32.backward()
    rel = (offset32.grad.double() - offset.grad).norm() / offset.grad.norm()
    assert rel < 1e-4, float(rel)
