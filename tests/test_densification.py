"""Tensor surgery keeps parameters and Adam moments aligned; the default strategy's rules."""

import pytest
import torch

from splatkit.densification import SplatDefaultDensification, ops
from splatkit.renderer.base import SplatRenderOutput
from splatkit.splat import SplatModel


def _state(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = SplatModel(
        means=torch.randn(n, 3, generator=g),
        scales=torch.log(torch.rand(n, 3, generator=g) * 0.1 + 0.01),
        quats=torch.randn(n, 4, generator=g),
        opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g),
        shN=torch.zeros(n, 3, 3),
    )
    ts = model.to_training_state()
    for p in ts.params.values():  # one step with distinct gradients: distinct moments
        p.grad = torch.randn(p.shape, generator=g)
    ts.optimizer_step()
    return ts


def _moments(ts, name):
    st = ts.optimizers[name].state[ts.params[name]]
    return st["exp_avg"], st["exp_avg_sq"], st["step"]


def _check_optimizer_bound(ts):
    for name, opt in ts.optimizers.items():
        assert opt.param_groups[0]["params"][0] is ts.params[name]
        m, v, _ = _moments(ts, name)
        assert m.shape == ts.params[name].shape == v.shape


def test_duplicate_appends_copies_with_zero_moments():
    ts = _state()
    before = {n: (p.detach().clone(), *[x.clone() for x in _moments(ts, n)]) for n, p in ts.params.items()}
    running = {"grad2d": torch.arange(6.0), "scene_scale": 1.0}
    ops.duplicate(ts, running, torch.tensor([True, False, True, False, False, False]))
    assert ts.num_gaussians == 8
    for n, (p, m, v, step) in before.items():
        assert torch.equal(ts.params[n][:6], p) and torch.equal(ts.params[n][6:], p[[0, 2]])
        m2, v2, step2 = _moments(ts, n)
        assert torch.equal(m2[:6], m) and torch.equal(v2[:6], v)
        assert (m2[6:] == 0).all() and (v2[6:] == 0).all() and torch.equal(step2, step)
    assert torch.equal(running["grad2d"], torch.tensor([0.0, 1, 2, 3, 4, 5, 0, 2]))
    _check_optimizer_bound(ts)
    for p in ts.params.values():
        p.grad = torch.ones_like(p)
    ts.optimizer_step()  # shapes stay consistent for Adam


def test_split_replaces_by_two_smaller_children():
    ts = _state()
    means = ts.params["means"].detach().clone()
    scales = ts.params["scales"].detach().clone()
    m_before, _, _ = _moments(ts, "means")
    mask = torch.tensor([False, True, False, False, False, True])
    running = {"count": torch.arange(6.0)}
    torch.manual_seed(0)
    ops.split(ts, running, mask)
    assert ts.num_gaussians == 8
    rest = ~mask
    assert torch.equal(ts.params["means"][:4], means[rest])
    torch.testing.assert_close(ts.params["scales"][4:], (scales[mask] - torch.log(torch.tensor(1.6))).repeat(2, 1))
    # Children are sampled inside their parent (within 6 standard deviations).
    parents = means[mask].repeat(2, 1)
    spread = torch.exp(scales[mask]).max(-1).values.repeat(2)
    assert ((ts.params["means"][4:] - parents).norm(dim=-1) < 6 * spread).all()
    m, v, _ = _moments(ts, "means")
    assert torch.equal(m[:4], m_before[rest]) and (m[4:] == 0).all() and (v[4:] == 0).all()
    assert torch.equal(running["count"], torch.tensor([0.0, 2, 3, 4, 1, 5, 1, 5]))
    _check_optimizer_bound(ts)


def test_remove_and_reset_opacity():
    ts = _state()
    ops.remove(ts, {}, torch.tensor([True, False, False, True, False, False]))
    assert ts.num_gaussians == 4
    _check_optimizer_bound(ts)
    ops.reset_opacity(ts, 0.01)
    assert (torch.sigmoid(ts.params["opacities"]) <= 0.01 + 1e-6).all()
    m, v, _ = _moments(ts, "opacities")
    assert (m == 0).all() and (v == 0).all()
    m, _, _ = _moments(ts, "means")
    assert (m != 0).any()  # other parameters keep their moments


def _render_with_grad(ts, grad_norm_px, W=100, H=50):
    n = ts.num_gaussians
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n, 2)
    means2d.grad[0, :, 0] = grad_norm_px / (W / 2)  # NDC gradient of exactly grad_norm_px
    radii = torch.full((1, n, 2), 3, dtype=torch.int32)
    return SplatRenderOutput(
        images=torch.zeros(1, H, W, 3), alphas=torch.zeros(1, H, W, 1), means2d=means2d, radii=radii, width=W, height=H
    )


def test_default_strategy_clones_splits_and_prunes():
    ts = _state(n=4)
    with torch.no_grad():
        ts.params["scales"][:] = torch.log(torch.tensor([[0.005] * 3, [0.5] * 3, [0.005] * 3, [0.005] * 3]))
        ts.params["opacities"][:] = torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.001]))
    strategy = SplatDefaultDensification(refine_start_iter=0, refine_every=10, reset_every=1000)
    state = strategy.initialize_state(scene_scale=1.0)
    grads = torch.tensor([1e-3, 1e-3, 1e-5, 1e-5])  # 0 and 1 above the 2e-4 threshold
    # The schedule counts gsplat's 0-based iteration: refinement at step 11 (iteration 10).
    for step in range(1, 11):
        strategy.step_post_backward(ts, state, step, _render_with_grad(ts, grads))
    assert ts.num_gaussians == 4
    strategy.step_post_backward(ts, state, 11, _render_with_grad(ts, grads))
    # Gaussian 0 (small) cloned, 1 (large) split in two, 3 (transparent) pruned.
    assert ts.num_gaussians == 4 + 1 + 1 - 1
    assert torch.equal(state["count"], torch.zeros(5)) and torch.equal(state["grad2d"], torch.zeros(5))
    scales = torch.exp(ts.params["scales"]).max(-1).values
    assert int((scales > 0.2).sum()) == 2 and int((scales > 0.4).sum()) == 0
    _check_optimizer_bound(ts)


def _refine_once(strategy, ts, grads):
    """Ten steps of the same gradients, then the refinement round of step 11."""
    state = strategy.initialize_state(scene_scale=1.0)
    for step in range(1, 12):
        strategy.step_post_backward(ts, state, step, _render_with_grad(ts, grads))
    return state


def _small_opaque(n=6):
    """Gaussians that all clone when they grow (small) and none of which is pruned (opaque)."""
    ts = _state(n=n)
    with torch.no_grad():
        ts.params["scales"][:] = torch.log(torch.tensor(0.005))
        ts.params["opacities"][:] = 2.0
    return ts


def test_cap_max_grows_the_highest_gradients_first():
    ts = _small_opaque()
    means = ts.params["means"].detach().clone()
    # candidates 1, 2, 4 and 5 (above 2e-4); 4 and 5 tie
    grads = torch.tensor([1e-5, 3e-4, 9e-4, 1e-5, 5e-4, 5e-4])
    capped = SplatDefaultDensification(refine_start_iter=0, refine_every=10, reset_every=1000, cap_max=9)
    _refine_once(capped, ts, grads)
    assert ts.num_gaussians == 9  # room for 3 of the 4 candidates: 2, then 4 and 5 (tie: index order)
    torch.testing.assert_close(ts.params["means"][6:], means[[2, 4, 5]])
    _check_optimizer_bound(ts)
    # at the cap nothing grows; below it every candidate fits and the cap changes nothing
    full = _small_opaque()
    _refine_once(SplatDefaultDensification(refine_start_iter=0, refine_every=10, cap_max=6), full, grads)
    assert full.num_gaussians == 6
    roomy, plain = _small_opaque(), _small_opaque()
    _refine_once(SplatDefaultDensification(refine_start_iter=0, refine_every=10, cap_max=10), roomy, grads)
    _refine_once(SplatDefaultDensification(refine_start_iter=0, refine_every=10), plain, grads)
    assert roomy.num_gaussians == plain.num_gaussians == 10
    assert torch.equal(roomy.params["means"], plain.params["means"])


def test_cap_max_counts_a_split_as_one_more_and_checks_the_start():
    ts = _state(n=4)
    with torch.no_grad():  # 0 and 1 large (split), 2 and 3 small (clone); all opaque
        ts.params["scales"][:] = torch.log(torch.tensor([[0.5] * 3, [0.5] * 3, [0.005] * 3, [0.005] * 3]))
        ts.params["opacities"][:] = 2.0
    grads = torch.tensor([8e-4, 4e-4, 6e-4, 1e-5])  # candidates 0, 2, 1 in gradient order
    capped = SplatDefaultDensification(refine_start_iter=0, refine_every=10, reset_every=1000, cap_max=6)
    _refine_once(capped, ts, grads)
    # room for two: 2 is cloned and 0 split (its two children replace it); 1 waits
    assert ts.num_gaussians == 6
    scales = torch.exp(ts.params["scales"]).max(-1).values
    assert int((scales > 0.4).sum()) == 1 and int(((scales > 0.2) & (scales < 0.4)).sum()) == 2
    with pytest.raises(ValueError, match="cap_max"):
        SplatDefaultDensification(cap_max=-1)
    over = SplatDefaultDensification(cap_max=3)
    with pytest.raises(ValueError, match=r"4 Gaussians but SplatDefaultDensification.cap_max is 3"):
        over.step_post_backward(_state(n=4), over.initialize_state(1.0), 1, _render_with_grad(_state(n=4), grads))
    # a sharded run's ranks share the cap
    shares = [SplatDefaultDensification(cap_max=10).for_shard(r, 3).cap_max for r in range(3)]
    assert sum(shares) == 10 and SplatDefaultDensification().for_shard(1, 3).cap_max == 0


def test_opacity_reset_schedule():
    ts = _state(n=3)
    with torch.no_grad():
        ts.params["opacities"][:] = 3.0
    strategy = SplatDefaultDensification(refine_start_iter=100, reset_every=5, opacity_reset=True)
    state = strategy.initialize_state(1.0)
    # Resets at gsplat's iterations 5, 10, ...: the trainer's steps 6, 11, ...
    for step in range(1, 6):
        strategy.step_post_backward(ts, state, step, _render_with_grad(ts, torch.zeros(3)))
    assert (ts.params["opacities"] == 3.0).all()
    strategy.step_post_backward(ts, state, 6, _render_with_grad(ts, torch.zeros(3)))
    torch.testing.assert_close(torch.sigmoid(ts.params["opacities"]), torch.full((3,), 0.01))
    with torch.no_grad():
        ts.params["opacities"][:] = 3.0
    off = SplatDefaultDensification(refine_start_iter=100, reset_every=5, opacity_reset=False)
    for step in range(1, 12):
        off.step_post_backward(ts, state, step, _render_with_grad(ts, torch.zeros(3)))
    assert (ts.params["opacities"] == 3.0).all()


def test_packed_render_output_feeds_the_same_statistics():
    """gsplat's packed output ([nnz] pairs with ids) gives the same grad2d as unpacked."""
    ts = _state(n=5)
    strategy = SplatDefaultDensification(refine_start_iter=100)
    W, H, C = 40, 30, 2
    radii = torch.zeros(C, 5, 2, dtype=torch.int32)
    radii[0, [0, 2, 4]] = 3
    radii[1, [2, 3]] = 2
    g = torch.randn(C, 5, 2) * 1e-3
    unpacked = SplatRenderOutput(
        torch.zeros(C, H, W, 3), torch.zeros(C, H, W, 1), torch.zeros(C, 5, 2, requires_grad=True), radii, W, H
    )
    unpacked.means2d.grad = g.clone()
    cam, gs = torch.nonzero(radii.gt(0).any(-1), as_tuple=True)
    packed = SplatRenderOutput(
        torch.zeros(C, H, W, 3),
        torch.zeros(C, H, W, 1),
        torch.zeros(len(gs), 2, requires_grad=True),
        radii[cam, gs],
        W,
        H,
        gaussian_ids=gs,
        camera_ids=cam,
    )
    packed.means2d.grad = g[cam, gs].clone()
    states = []
    for render in (unpacked, packed):
        state = strategy.initialize_state(1.0)
        strategy.step_post_backward(ts, state, 1, render)
        states.append(state)
    assert torch.equal(states[0]["count"], torch.tensor([1.0, 0, 2, 1, 1]))
    assert torch.equal(states[0]["count"], states[1]["count"])
    torch.testing.assert_close(states[0]["grad2d"], states[1]["grad2d"])


def test_absgrad_needs_the_renderer_to_provide_it():
    ts = _state(n=3)
    strategy = SplatDefaultDensification(absgrad=True)
    render = _render_with_grad(ts, torch.zeros(3))
    with pytest.raises(RuntimeError, match="absgrad=True: render with Splat3DGSRenderer\\(absgrad=True\\)"):
        strategy.step_post_backward(ts, strategy.initialize_state(1.0), 1, render)
    render.means2d.absgrad = render.means2d.grad.abs() * 3  # what gsplat attaches after backward
    state = strategy.initialize_state(1.0)
    strategy.step_post_backward(ts, state, 1, render)
    assert state["count"].sum() == 3


def test_sparse_adam_moves_only_rendered_gaussians_and_survives_surgery():
    model = SplatModel.from_training_state(_state(n=6))
    ts = model.to_training_state(sparse_grad=True)
    assert all(isinstance(o, torch.optim.SparseAdam) for o in ts.optimizers.values())
    before = {n: p.detach().clone() for n, p in ts.params.items()}
    for p in ts.params.values():
        p.grad = torch.ones_like(p)
    ids = torch.tensor([1, 4])
    ts.optimizer_step(ids)
    for n, p in ts.params.items():
        moved = (p.detach() != before[n]).reshape(6, -1).any(1)
        assert torch.equal(moved, torch.tensor([False, True, False, False, True, False])), n
    ops.duplicate(ts, {}, torch.tensor([True, False, False, False, True, False]))
    for p in ts.params.values():
        p.grad = torch.ones_like(p)
    ts.optimizer_step(torch.tensor([0, 6, 7, 7]))  # 7 seen by two cameras: counted once
    m = ts.optimizers["means"].state[ts.params["means"]]["exp_avg"]
    assert torch.allclose(m[7], m[6]) and torch.allclose(m[0], m[6])
    with pytest.raises(ValueError, match="needs the rendered gaussian_ids"):
        ts.optimizer_step(None)
