"""The compiled CPU 2DGS backend against the reference, forward and backward, on hard cases.

Tolerances (as for the 3DGS backend): every output within 1e-5 mean absolute
difference, every parameter gradient (and means2d's) within 1e-4 relative L2 error,
with random weights on all six per-pixel outputs. The reference runs in float64 on the
same inputs, first rounded to float32, so the comparison measures the compiled
backend's float32 arithmetic, not the reference's, nor how sensitive a scene is to
rounding its inputs: surfels just past the near plane, or seen exactly edge-on (whose
normal's orientation is decided by the sign of n . p = 0), change measurably when
their float64 parameters are rounded to float32.
"""

import pytest
import torch

from splatkit.renderer.backends import BACKENDS, RasterInputs, RasterSettings, cpu, resolve
from splatkit.renderer.functional import rasterize_2dgs
from splatkit.splat.conventions import rotmat_to_quat
from splatkit.testing import cameras, random_scene

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason=f"compiled CPU backend unavailable: {cpu.unavailable_reason()}"
)

NAMES = ("means", "quats", "scales", "opacities", "colors")
OUTPUTS = ("colors", "alphas", "normals_camera", "depth_sum", "distort", "median_depth")


def surfel_scene(n, seed, **kw):
    """``random_scene`` with [N, 2] surfel scales."""
    means, quats, scales, opacities, colors = random_scene(n, seed=seed, **kw)
    return [means, quats, scales[:, :2].contiguous(), opacities, colors]


def surfel_render(backend, params, vm, K, W, H, sh_degree=None):
    """The raw surfel rasterizer output dict of ``backend``."""
    return BACKENDS[backend].rasterize_2dgs(RasterInputs(*params, vm, K, W, H, sh_degree), RasterSettings())


def compare(scene, vm, K, W, H, **kw):
    """Render with both backends, backpropagate the same random weights on every output, compare."""
    results = {}
    scene, vm, K = [t.float().double() for t in scene], vm.float().double(), K.float().double()
    for backend, dtype in (("torch", torch.float64), ("cpu", torch.float32)):
        params = [t.to(dtype).clone().requires_grad_(True) for t in scene]
        out = surfel_render(backend, params, vm.to(dtype), K.to(dtype), W, H, **kw)
        out["means2d"].retain_grad()
        g = torch.Generator().manual_seed(0)
        loss = sum(
            (out[k] * torch.randn(out[k].shape, generator=g, dtype=torch.float64).to(dtype)).sum() for k in OUTPUTS
        )
        loss.backward()
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).double() for p in params]
        results[backend] = ({k: v.detach() for k, v in out.items()}, grads, out["means2d"].grad.double())
    (o_ref, g_ref, m2_ref), (o_cpu, g_cpu, m2_cpu) = results["torch"], results["cpu"]
    errors = {}
    for k in OUTPUTS:
        assert o_cpu[k].shape == o_ref[k].shape, k
        diff = (o_ref[k] - o_cpu[k].double()).abs()
        errors[k] = float(diff.mean())
        assert errors[k] < 1e-5, f"{k}: mean absolute error {errors[k]:.2e}"
        # a (pixel, surfel) pair lost or added by culling would cost ~1/255 somewhere
        assert float(diff.max()) < 1e-4, f"{k}: max absolute error {float(diff.max()):.2e}"
    for name, gr, gc in zip(NAMES, g_ref, g_cpu):
        if gr.norm() == 0:
            assert gc.norm() == 0, name
            continue
        errors["grad_" + name] = float((gr - gc).norm() / gr.norm())
        assert errors["grad_" + name] < 1e-4, f"{name}: relative L2 error {errors['grad_' + name]:.2e}"
    errors["grad_means2d"] = float((m2_ref - m2_cpu).norm() / m2_ref.norm().clamp_min(1e-30))
    assert errors["grad_means2d"] < 1e-4, f"means2d: relative L2 error {errors['grad_means2d']:.2e}"
    assert torch.equal(o_ref["radii"] > 0, o_cpu["radii"] > 0)
    assert o_cpu["radii"].dtype == torch.int32
    assert torch.allclose(o_ref["depths"], o_cpu["depths"].double(), rtol=1e-6, atol=1e-6)
    return results, errors


@pytest.mark.parametrize("seed,sh_degree", [(10, None), (11, 0), (12, 3)])
def test_random_scenes(seed, sh_degree):
    W, H = 48, 32  # non-square
    scene = surfel_scene(150, seed=seed, sh_degree=sh_degree)
    vm, K = cameras(W, H, n=3)  # a batch of cameras
    _, errors = compare(scene, vm, K, W, H, sh_degree=sh_degree)
    assert errors["colors"] > 0 or errors["alphas"] > 0  # something was rendered and compared


@pytest.mark.parametrize("D,per_camera", [(1, False), (4, True)])
def test_raw_features_one_and_four_channels(D, per_camera):
    W, H = 40, 24
    vm, K = cameras(W, H, n=2)
    means, quats, scales, opacities, _ = surfel_scene(100, seed=13)
    g = torch.Generator().manual_seed(14)
    colors = torch.rand((2, 100, D) if per_camera else (100, D), generator=g, dtype=torch.float64)
    compare((means, quats, scales, opacities, colors), vm, K, W, H)


def test_surfels_behind_straddling_and_off_screen():
    W, H = 40, 40
    vm, K = cameras(W, H, distance=3.0)
    c2w = torch.linalg.inv(vm[0])
    forward, right, center = c2w[:3, 2], c2w[:3, 0], c2w[:3, 3]
    g = torch.Generator().manual_seed(3)
    n = 60
    # near-plane depths are spaced apart: exact ties would be ordered by float32 rounding
    depth = torch.cat([torch.full((10,), -1.0), torch.linspace(0.012, 0.03, 10), torch.rand(40, generator=g) * 4 + 0.5])
    lateral = torch.randn(n, generator=g, dtype=torch.float64) * 1.5  # many centres outside the view
    means = center + depth[:, None].double() * forward + lateral[:, None] * right
    means[10:20] += 0.05 * right  # just in front of the near plane (0.01), huge footprints
    _, quats, scales, opacities, colors = surfel_scene(n, seed=4, scale_range=(0.05, 0.6))
    results, _ = compare((means, quats, scales, opacities, colors), vm, K, W, H)
    radii = results["cpu"][0]["radii"][0]
    assert int((radii[:10] > 0).sum()) == 0  # behind the camera: culled
    assert int((radii[40:] > 0).any(-1).sum()) < 40  # some centres are off screen and culled


def edge_on_quats(means, vm, g):
    """Rotations whose surfel plane holds the ray from the camera centre to the surfel's centre."""
    campos = torch.linalg.inv(vm)[:3, 3]
    t_u = torch.nn.functional.normalize(means - campos, dim=-1)
    other = torch.randn(means.shape, generator=g, dtype=torch.float64)
    t_v = torch.nn.functional.normalize(other - (other * t_u).sum(-1, keepdim=True) * t_u, dim=-1)
    return rotmat_to_quat(torch.stack([t_u, t_v, torch.linalg.cross(t_u, t_v, dim=-1)], dim=-1))


def test_needles_edge_on_and_screen_filling():
    W, H = 36, 28
    vm, K = cameras(W, H)
    means, quats, scales, opacities, colors = surfel_scene(90, seed=5)
    g = torch.Generator().manual_seed(5)
    scales[:20, 0] = 1e-4  # needles thinner than a pixel: only the 2D filter shows them across
    scales[20:25] = 3.0  # each covers the whole image
    opacities[20:25] = 0.3
    quats[25:45] = edge_on_quats(means[25:45], vm[0], g)  # seen exactly edge-on: a line, or the filter
    scales[45:55] = 1e-5  # far below a pixel both ways: the filter alone
    scales[55:60] = 1e-12  # the ray-surfel intersection scales as s_u s_v: float32 range
    scales[60:62] = 300.0  # planes far larger than the scene (float32 gradients degrade past ~1e3)
    opacities[60:62] = 0.2
    results, _ = compare((means, quats, scales, opacities, colors), vm, K, W, H)
    assert float(results["cpu"][0]["alphas"].max()) > 0.5


def test_rays_parallel_to_a_surfel_and_many_tiles():
    """A pixel column on a surfel plane's vanishing line (ray x surfel has z = 0: no
    intersection, only the filter), and an image of more than 64 tiles with surfels
    covering most of it (the binning's per-tile fallback)."""
    W, H = 150, 132
    vm = torch.eye(4, dtype=torch.float64)[None]
    K = torch.tensor([[[60.0, 0, 12.5], [0, 60.0, 70.0], [0, 0, 1]]], dtype=torch.float64)
    means, quats, scales, opacities, colors = surfel_scene(30, seed=9, scale_range=(0.2, 1.5))
    means = means * torch.tensor([1.5, 1.2, 0.5], dtype=torch.float64) + torch.tensor(
        [0.0, 0.0, 4.0], dtype=torch.float64
    )
    # vertical planes x = const (rotation (x, y, z) -> (y, z, x), exact in float32): the
    # rays through pixel column 12 (x + 0.5 = cx) are parallel to them
    means[:4, 0] = torch.tensor([0.5, -0.4, 0.3, -0.2], dtype=torch.float64)
    quats[:4] = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    scales[:4] = 4.0
    results, _ = compare((means, quats, scales, opacities, colors), vm, K, W, H)
    assert float(results["cpu"][0]["alphas"][0, :, 12].max()) < float(results["cpu"][0]["alphas"][0, :, 14].max())


def test_saturated_pixels():
    W, H = 32, 24
    vm, K = cameras(W, H, n=2)
    means, quats, scales, opacities, colors = surfel_scene(120, seed=6, spread=0.4, scale_range=(0.1, 0.4))
    opacities[::2] = 0.9995  # alpha clamps at 0.999 and pixels hit the 1e-4 stop
    results, _ = compare((means, quats, scales, opacities, colors), vm, K, W, H, sh_degree=None)
    alphas = results["cpu"][0]["alphas"]
    assert float(alphas.max()) > 0.9998  # some pixels stopped


def test_empty_and_fully_culled_scenes():
    W, H = 20, 20
    vm, K = cameras(W, H)
    means, quats, scales, opacities, colors = surfel_scene(5, seed=7)
    params = [t.float().requires_grad_(True) for t in (means + 100.0, quats, scales, opacities, colors)]
    out = surfel_render("cpu", params, vm.float(), K.float(), W, H)
    for k in OUTPUTS:
        assert float(out[k].detach().abs().max()) == 0.0, k
    assert int((out["radii"] > 0).sum()) == 0
    sum(out[k].sum() for k in OUTPUTS).backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in params)


def test_auto_picks_cpu_for_float32_and_reference_for_float64():
    assert resolve("auto", "cpu", torch.float32, kind="2dgs").name == "cpu"
    assert resolve("auto", "cpu", torch.float64, kind="2dgs").name == "torch"
    means, quats, scales, opacities, colors = surfel_scene(3, seed=1)
    vm, K = cameras(8, 8)
    with pytest.raises(ValueError, match="needs float32 CPU tensors; means is torch.float64"):
        rasterize_2dgs(means, quats, scales, opacities, colors, vm, K, 8, 8, backend="cpu")
    # the public wrapper: auto on float32 renders with the compiled backend, like the reference
    W, H = 24, 16
    vm, K = cameras(W, H)
    scene = surfel_scene(40, seed=2)
    ref = rasterize_2dgs(*scene, vm, K, W, H, backend="torch")
    got = rasterize_2dgs(*[t.float() for t in scene], vm.float(), K.float(), W, H)
    assert got[-1]["backend"] == "cpu"
    for a, b in zip(ref[:6], got[:6]):
        assert float((a - b.double()).abs().mean()) < 1e-5


def test_densification_statistics_match_the_reference():
    """Densification reads means2d.grad and radii: both backends feed it the same."""
    W, H = 32, 32
    vm, K = cameras(W, H, n=2)
    scene = surfel_scene(80, seed=8, sh_degree=1)
    scene[2][:10, 1] = 1e-4  # needles: their means2d gradient comes from the filter
    results, _ = compare(scene, vm, K, W, H, sh_degree=1)
    vis = results["torch"][0]["radii"].gt(0).any(-1)
    norms = {b: r[2].norm(dim=-1)[vis] for b, r in results.items()}
    assert float(norms["torch"].max()) > 0
    assert torch.allclose(norms["torch"], norms["cpu"], rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_sh_bands_kept_apart_render_as_joined(backend, sh_degree):
    """Surfels with ``colors`` = SH band 0 and ``sh_rest`` = the bands above (as the model
    keeps them) render as with the joined coefficients, forward and backward; the compiled
    backend reads them apart with the same arithmetic (bit-identical), the reference is given
    the joined tensor."""
    W, H = 40, 32
    means, quats, scales, opacities, coeffs = surfel_scene(120, seed=4, sh_degree=3)
    vm, K = cameras(W, H, n=2)
    dtype = torch.float32 if backend == "cpu" else torch.float64
    args = [t.to(dtype) for t in (means, quats, scales, opacities)]
    vm, K = vm.to(dtype), K.to(dtype)
    k = (sh_degree + 1) ** 2
    g = torch.Generator().manual_seed(1)

    def render(colors, sh_rest=None):
        renders, alphas, normals, *_ = rasterize_2dgs(
            *args, colors, vm, K, W, H, sh_degree=sh_degree, sh_rest=sh_rest, backend=backend
        )
        g.manual_seed(1)
        w = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (renders, normals)]
        ((renders * w[0]).sum() + (normals * w[1]).sum()).backward()
        return renders.detach()

    joined = coeffs[:, :k].to(dtype).clone().requires_grad_(True)
    img_joined = render(joined)
    sh0 = coeffs[:, :1].to(dtype).clone().requires_grad_(True)
    shN = coeffs[:, 1:].to(dtype).clone().requires_grad_(True)
    img_apart = render(sh0, shN[:, : k - 1] if sh_degree > 0 else None)
    same = torch.equal if backend == "cpu" else (lambda a, b: torch.allclose(a, b, rtol=1e-12, atol=1e-12))
    assert same(img_apart, img_joined)
    assert joined.grad.abs().sum() > 0
    assert same(sh0.grad, joined.grad[:, :1])
    if sh_degree > 0:
        assert same(shN.grad[:, : k - 1], joined.grad[:, 1:])
        assert not shN.grad[:, k - 1 :].any()
    else:
        assert shN.grad is None
