"""The compiled CPU backend against the reference, forward and backward, on hard cases.

Tolerances (the issue's): images within 1e-5 mean absolute difference, every
parameter gradient within 1e-4 relative L2 error. The reference runs in float64, so
the comparison measures the compiled backend's float32 error, not the reference's.
"""

import os
import platform
import subprocess
import sys

import pytest
import torch

from splatkit.renderer import rasterize
from splatkit.renderer.backends import cpu
from splatkit.testing import cameras, random_scene

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason=f"compiled CPU backend unavailable: {cpu.unavailable_reason()}"
)

NAMES = ("means", "quats", "scales", "opacities", "colors")


def compare(scene, vm, K, W, H, **kw):
    """Render with both backends, backpropagate the same random weights, compare."""
    results = {}
    for backend, dtype in (("torch", torch.float64), ("cpu", torch.float32)):
        params = [t.to(dtype).clone().requires_grad_(True) for t in scene]
        bg = kw.get("backgrounds")
        extra = dict(kw, backgrounds=None if bg is None else bg.to(dtype))
        img, alpha, meta = rasterize(*params, vm.to(dtype), K.to(dtype), W, H, backend=backend, **extra)
        meta["means2d"].retain_grad()
        g = torch.Generator().manual_seed(0)
        w_img = torch.randn(img.shape, generator=g, dtype=torch.float64).to(dtype)
        w_alpha = torch.randn(alpha.shape, generator=g, dtype=torch.float64).to(dtype)
        ((img * w_img).sum() + (alpha * w_alpha).sum()).backward()
        results[backend] = (
            img.detach().double(),
            alpha.detach().double(),
            meta,
            [(p.grad if p.grad is not None else torch.zeros_like(p)).double() for p in params],
            meta["means2d"].grad.double(),
        )
    (i_ref, a_ref, m_ref, g_ref, m2_ref), (i_cpu, a_cpu, m_cpu, g_cpu, m2_cpu) = results["torch"], results["cpu"]
    assert (i_ref - i_cpu).abs().mean() < 1e-5
    assert (a_ref - a_cpu).abs().mean() < 1e-5
    for name, gr, gc in zip(NAMES, g_ref, g_cpu):
        if gr.norm() == 0:
            assert gc.norm() == 0, name
            continue
        rel = float((gr - gc).norm() / gr.norm())
        assert rel < 1e-4, f"{name}: relative L2 error {rel:.2e}"
    rel = float((m2_ref - m2_cpu).norm() / m2_ref.norm().clamp_min(1e-30))
    assert rel < 1e-4, f"means2d: relative L2 error {rel:.2e}"
    assert torch.equal((m_ref["radii"] > 0), (m_cpu["radii"] > 0))
    return results


@pytest.mark.parametrize("sh_degree", [None, 0, 1, 2, 3])
def test_random_scenes_all_sh_degrees(sh_degree):
    W, H = 48, 32  # non-square
    scene = random_scene(150, seed=10, sh_degree=sh_degree)
    vm, K = cameras(W, H, n=3)  # a batch of cameras
    bg = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    compare(scene, vm, K, W, H, sh_degree=sh_degree, backgrounds=bg)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_sh_bands_kept_apart_render_as_joined(backend, sh_degree):
    """``colors`` = band 0 with ``sh_rest`` = the bands above (as the model keeps them) is the
    render of the joined coefficients, forward and backward; the compiled backend reads them
    apart with the same arithmetic, so its results are bit-identical. The model has all four
    bands; lower degrees read the first ones of ``sh_rest`` only (a slice, as the renderer
    passes it)."""
    W, H = 40, 32
    means, quats, scales, opacities, coeffs = random_scene(120, seed=4, sh_degree=3)
    vm, K = cameras(W, H, n=2)
    dtype = torch.float32 if backend == "cpu" else torch.float64
    args = [t.to(dtype) for t in (means, quats, scales, opacities)]
    vm, K = vm.to(dtype), K.to(dtype)
    k = (sh_degree + 1) ** 2
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(2, H, W, 3, generator=g, dtype=torch.float64).to(dtype)

    def render(colors, sh_rest=None):
        img, _, _ = rasterize(*args, colors, vm, K, W, H, sh_degree=sh_degree, sh_rest=sh_rest, backend=backend)
        (img * weights).sum().backward()
        return img.detach()

    joined = coeffs[:, :k].to(dtype).clone().requires_grad_(True)
    img_joined = render(joined)
    sh0 = coeffs[:, :1].to(dtype).clone().requires_grad_(True)
    shN = coeffs[:, 1:].to(dtype).clone().requires_grad_(True)
    img_apart = render(sh0, shN[:, : k - 1] if sh_degree > 0 else None)
    same = torch.equal if backend == "cpu" else (lambda a, b: torch.allclose(a, b, rtol=1e-12, atol=1e-12))
    assert same(img_apart, img_joined)
    assert same(sh0.grad, joined.grad[:, :1])
    if sh_degree > 0:
        assert same(shN.grad[:, : k - 1], joined.grad[:, 1:])
        assert not shN.grad[:, k - 1 :].any()  # bands above the degree: no gradient
    else:
        assert shN.grad is None


def test_sh_bands_apart_are_checked():
    W, H = 16, 16
    means, quats, scales, opacities, coeffs = random_scene(10, seed=0, sh_degree=3)
    vm, K = cameras(W, H)
    args = [t.float() for t in (means, quats, scales, opacities)]
    vm, K, coeffs = vm.float(), K.float(), coeffs.float()
    with pytest.raises(ValueError, match=r"with sh_rest, colors must be SH band 0 \[N, 1, 3\]"):
        rasterize(*args, coeffs, vm, K, W, H, sh_degree=3, sh_rest=coeffs[:, 1:])
    with pytest.raises(ValueError, match=r"sh_rest must be the SH bands above 0 \[N, K - 1, 3\]"):
        rasterize(*args, coeffs[:, :1], vm, K, W, H, sh_degree=3, sh_rest=coeffs[:5, 1:])
    with pytest.raises(ValueError, match="sh_degree=3 needs 16 coefficients, colors and sh_rest have 9"):
        rasterize(*args, coeffs[:, :1], vm, K, W, H, sh_degree=3, sh_rest=coeffs[:, 1:9])
    with pytest.raises(ValueError, match="sh_rest .* needs sh_degree"):
        rasterize(*args, coeffs[:, 0], vm, K, W, H, sh_rest=coeffs[:, 1:])
    with pytest.raises(ValueError, match="sh_rest is torch.float64"):
        rasterize(*args, coeffs[:, :1], vm, K, W, H, sh_degree=3, sh_rest=coeffs[:, 1:].double())


def test_kept_gradient_blocks_are_reused_only_when_free(monkeypatch):
    """The large SH gradient lands on an earlier step's block (``cpu.buffers``) only once
    nothing else refers to it: accumulated gradients are sums, a gradient someone kept keeps
    its values, and a released block serves the next step."""
    from splatkit.renderer.backends.cpu import buffers

    monkeypatch.setattr(buffers, "MIN_BYTES", 0)  # every size goes through the kept blocks
    monkeypatch.setattr(buffers, "_kept", [])
    W, H = 40, 32
    means, quats, scales, opacities, coeffs = random_scene(120, seed=4, sh_degree=3)
    vm, K = cameras(W, H, n=2)
    args = [t.float() for t in (means, quats, scales, opacities)]
    sh0 = coeffs[:, :1].float().clone().requires_grad_(True)
    shN = coeffs[:, 1:].float().clone().requires_grad_(True)

    def step():
        img, _, _ = rasterize(*args, sh0, vm.float(), K.float(), W, H, sh_degree=3, sh_rest=shN, backend="cpu")
        img.square().sum().backward()

    step()
    first = shN.grad.clone()
    assert first.abs().sum() > 0
    step()  # accumulates into the first gradient's block, from a second block
    assert torch.equal(shN.grad, first + first)
    assert len(buffers._kept) == 2
    kept = shN.grad
    shN.grad = None
    step()  # the kept gradient's block is not free: the other one serves
    assert torch.equal(kept, first + first)
    assert torch.equal(shN.grad, first)
    assert shN.grad.data_ptr() != kept.data_ptr()
    blocks = {s.data_ptr() for s in buffers._kept}
    del kept
    shN.grad = None
    step()
    assert torch.equal(shN.grad, first)
    assert shN.grad.data_ptr() in blocks and len(buffers._kept) == 2


def test_gaussians_behind_straddling_and_off_screen():
    W, H = 40, 40
    vm, K = cameras(W, H, distance=3.0)
    c2w = torch.linalg.inv(vm[0])
    forward, right, center = c2w[:3, 2], c2w[:3, 0], c2w[:3, 3]
    g = torch.Generator().manual_seed(3)
    n = 60
    depth = torch.cat([torch.full((10,), -1.0), torch.full((10,), 0.012), torch.rand(40, generator=g) * 4 + 0.5])
    lateral = torch.randn(n, generator=g, dtype=torch.float64) * 1.5  # many centres outside the view
    means = center + depth[:, None].double() * forward + lateral[:, None] * right
    means[10:20] += 0.05 * right  # just in front of the near plane (0.01), large footprints
    _, quats, scales, opacities, colors = random_scene(n, seed=4, scale_range=(0.05, 0.6))
    compare((means, quats, scales, opacities, colors), vm, K, W, H)


def test_subpixel_and_screen_filling_and_degenerate():
    W, H = 36, 28
    vm, K = cameras(W, H)
    means, quats, scales, opacities, colors = random_scene(90, seed=5)
    scales[:30] = 1e-4  # sub-pixel: only the 0.3 px blur is left
    scales[30:35] = 3.0  # each covers the whole image
    opacities[30:35] = 0.3
    scales[35:60, 0] = 1e-7  # nearly flat discs
    scales[60:70, 1:] = 1e-7  # needles
    compare((means, quats, scales, opacities, colors), vm, K, W, H)
    compare((means, quats, scales, opacities, colors), vm, K, W, H, rasterize_mode="antialiased")


def test_saturated_pixels_and_depth_render_modes():
    W, H = 32, 24
    vm, K = cameras(W, H, n=2)
    means, quats, scales, opacities, colors = random_scene(120, seed=6, spread=0.4, scale_range=(0.1, 0.4))
    opacities[::2] = 0.9995  # alpha clamps at 0.999 and pixels hit the 1e-4 stop
    for mode in ("RGB+D", "RGB+ED", "D"):
        compare((means, quats, scales, opacities, colors), vm, K, W, H, render_mode=mode)


def test_empty_and_fully_culled_scenes():
    W, H = 20, 20
    vm, K = cameras(W, H)
    means, quats, scales, opacities, colors = random_scene(5, seed=7)
    means = means + 100.0  # all far outside the view
    bg = torch.tensor([[0.5, 0.25, 1.0]])
    img, alpha, meta = rasterize(
        means.float(),
        quats.float(),
        scales.float(),
        opacities.float(),
        colors.float(),
        vm.float(),
        K.float(),
        W,
        H,
        backgrounds=bg,
        backend="cpu",
    )
    assert torch.equal(img[0], bg[0].expand(H, W, 3)) and float(alpha.abs().max()) == 0.0
    assert int((meta["radii"] > 0).sum()) == 0


def test_auto_picks_cpu_for_float32_and_reference_for_float64():
    from splatkit.renderer.backends import resolve

    assert resolve("auto", "cpu", torch.float32).name == "cpu"
    assert resolve("auto", "cpu", torch.float64).name == "torch"
    with pytest.raises(ValueError, match="needs float32 CPU tensors; means is torch.float64"):
        means, quats, scales, opacities, colors = random_scene(3)
        vm, K = cameras(8, 8)
        rasterize(means, quats, scales, opacities, colors, vm, K, 8, 8, backend="cpu")


def test_densification_statistics_match_the_reference():
    """The default strategy reads means2d.grad and radii: both backends feed it the same."""
    W, H = 32, 32
    vm, K = cameras(W, H, n=2)
    scene = random_scene(80, seed=8, sh_degree=1)
    res = compare(scene, vm, K, W, H, sh_degree=1)
    grads = {b: r[4] for b, r in res.items()}
    vis = res["torch"][2]["radii"].gt(0).any(-1)
    norms = {b: g.norm(dim=-1)[vis] for b, g in grads.items()}
    assert float(norms["torch"].max()) > 0  # there are statistics to compare
    assert torch.allclose(norms["torch"], norms["cpu"], rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("sh_degree,mode", [(None, "classic"), (3, "classic"), (2, "antialiased")])
def test_camera_gradients_match_the_reference(sh_degree, mode):
    """Pose refinement's gradient: d(loss)/d(viewmats) of the compiled backend against the
    float64 reference's autograd, through centres, covariances, depths and SH view directions."""
    W, H = 48, 32
    scene = random_scene(150, seed=11, sh_degree=sh_degree)
    vm, K = cameras(W, H, n=2)
    grads = {}
    for backend, dtype in (("torch", torch.float64), ("cpu", torch.float32)):
        params = [t.to(dtype) for t in scene]
        viewmats = vm.to(dtype).clone().requires_grad_(True)
        img, alpha, _ = rasterize(
            *params,
            viewmats,
            K.to(dtype),
            W,
            H,
            sh_degree=sh_degree,
            backend=backend,
            rasterize_mode=mode,
            render_mode="RGB+ED",
        )
        g = torch.Generator().manual_seed(1)
        w = torch.randn(img.shape, generator=g, dtype=torch.float64).to(dtype)
        ((img * w).sum() + alpha.sum()).backward()
        grads[backend] = viewmats.grad.double()
    ref, got = grads["torch"], grads["cpu"]
    assert ref[:, :3].norm() > 0 and torch.equal(got[:, 3], torch.zeros_like(got[:, 3]))
    rel = float((ref[:, :3] - got[:, :3]).norm() / ref[:, :3].norm())
    assert rel < 1e-4, f"viewmats: relative L2 error {rel:.2e}"


def test_the_kernel_sources_ship_in_the_package():
    """A wheel holds what setuptools' package-data names: every source and header the build compiles."""
    import fnmatch
    from pathlib import Path

    import splatkit
    from splatkit.renderer.backends.cpu import build

    tomllib = pytest.importorskip("tomllib")
    root = Path(splatkit.__file__).parent
    pyproject = root.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("splatkit is installed from a wheel here (no pyproject.toml beside it)")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["splatkit"]
    for src in build.SOURCES + build.HEADERS:
        rel = src.relative_to(root).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), f"{rel} is not package data"


def test_the_build_reports_its_vector_width():
    """``build.describe()`` gives the width the kernels were compiled for: 16 floats where
    the CPU has AVX-512, 8 with AVX, 4 for the portable -march=x86-64 build."""
    from splatkit.renderer.backends.cpu import build

    info = build.describe()
    assert info["vector_lanes"] in (4, 8, 16) and info["cpu"], info
    flags = (build._cpuinfo_line("flags") or "").split()
    if info["march"] == "x86-64":
        assert info["vector_lanes"] == 4, info
    elif info["march"] == "native" and platform.machine().lower() in ("x86_64", "amd64") and flags:
        expected = 16 if "avx512f" in flags else 8 if "avx" in flags else 4
        assert info["vector_lanes"] == expected, info


PINNING_PROBE = r"""
import os, sys, threading, time
import torch
from splatkit.renderer import rasterize
from splatkit.testing import cameras, random_scene

def masks():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[tid] = os.sched_getaffinity(int(tid))
        except OSError:  # the thread ended
            pass
    return out

full = os.sched_getaffinity(0)
seen, stop = set(), threading.Event()

def watch():  # the kernels run without the GIL: sample every thread's mask meanwhile
    while not stop.is_set():
        seen.update(len(m) for m in masks().values())
        time.sleep(0.0005)

scene = [t.requires_grad_(True) for t in random_scene(20000, seed=3, dtype=torch.float32, sh_degree=1)]
vm, K = cameras(192, 160, n=2, dtype=torch.float32)
w = threading.Thread(target=watch)
w.start()
grads = None
for _ in range(6):
    img, alpha, _ = rasterize(*scene, vm, K, 192, 160, backend="cpu", sh_degree=1)
    grads = torch.autograd.grad((img * torch.linspace(-1, 1, img.numel()).view_as(img)).sum() + alpha.sum(), scene)
stop.set()
w.join()
after = masks()
torch.save({"img": img.detach(), "grads": grads, "single_cpu_seen": 1 in seen,
            "restored": all(m == full for m in after.values())}, sys.argv[1])
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="thread pinning is implemented for Linux and needs two allowed CPUs",
)
def test_pinned_kernel_threads_give_the_same_results_and_restore_their_masks(tmp_path):
    """SPLATKIT_PIN_THREADS=2 binds the kernels' worker threads to single CPUs while they run
    (seen from another thread meanwhile; =1 binds only a thread that shares its CPU, which
    an idle machine rarely shows). Every mode gives bit-identical images and gradients and
    leaves every thread with the affinity mask it had."""
    out = {}
    for pin in ("0", "1", "2"):
        env = dict(os.environ, SPLATKIT_PIN_THREADS=pin, OMP_NUM_THREADS="2")
        env.pop("OMP_PROC_BIND", None)
        path = tmp_path / f"pin{pin}.pt"
        r = subprocess.run([sys.executable, "-c", PINNING_PROBE, str(path)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        out[pin] = torch.load(path)
        assert out[pin]["restored"], pin
        assert torch.equal(out["0"]["img"], out[pin]["img"]), pin
        for g0, g in zip(out["0"]["grads"], out[pin]["grads"]):
            assert torch.equal(g0, g), pin
    assert out["2"]["single_cpu_seen"] and not out["0"]["single_cpu_seen"]


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the portable build is checked on x86-64"
)
def test_portable_build_without_avx_matches_the_reference(tmp_path):
    """The kernels' generic 4-lane path (CPUs without AVX; ARM's NEON has the same width),
    built with -march=x86-64 into a fresh cache, passes the same comparisons."""
    env = dict(os.environ, SPLATKIT_MARCH="x86-64", SPLATKIT_CACHE=str(tmp_path))
    cases = "random_scenes or behind or subpixel or saturated or camera_gradients or vector_width"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", cases],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
    assert list(tmp_path.glob("kernels/*/libsplatkit_cpu.so")), "no portable library was built"
