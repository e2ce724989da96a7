"""The built-in scene and the provider base class's sampling."""

import torch

from splatkit.data_provider import SplatDemoDataProvider, SplatDemoDataProviderConfig


def test_demo_scene_layout(small_demo):
    assert small_demo.num_train_frames() + small_demo.num_test_frames() == 40
    assert small_demo.num_test_frames() == 5  # every 8th camera
    f = small_demo.test_frame(0)
    assert f.images.shape == (1, 32, 32, 3) and f.cameras.viewmats.shape == (1, 4, 4)
    coverage = (f.images.sum(-1) > 0.05).float().mean()
    assert 0.15 < coverage < 0.9  # an object in view, with background around it
    assert f.images.std() > 0.1  # coloured, not flat
    pts, rgb = small_demo.initial_points()
    assert pts.shape == (600, 3) and rgb.shape == (600, 3) and pts.abs().max() < 2.0


def test_demo_scene_is_made_from_its_seed():
    cfg = SplatDemoDataProviderConfig(num_cameras=40, image_size=16, supersample=1, num_init_points=100)
    a, b = SplatDemoDataProvider(cfg), SplatDemoDataProvider(cfg)
    assert torch.equal(a.train_frame(3).images, b.train_frame(3).images)
    assert torch.equal(a.initial_points()[0], b.initial_points()[0])
    c = SplatDemoDataProvider(
        SplatDemoDataProviderConfig(num_cameras=40, image_size=16, supersample=1, num_init_points=100, seed=1)
    )
    assert not torch.equal(a.initial_points()[0], c.initial_points()[0])


def test_training_order_is_a_function_of_seed_and_step(small_demo):
    n = small_demo.num_train_frames()
    epoch = [small_demo.train_indices(s, 1, seed=0)[0] for s in range(1, n + 1)]
    assert sorted(epoch) == list(range(n))  # each epoch visits every image once
    assert small_demo.train_indices(5, 1, seed=0) == small_demo.train_indices(5, 1, seed=0)
    assert small_demo.train_indices(1, 4, seed=0) == epoch[:4]
    assert [small_demo.train_indices(s, 1, seed=1)[0] for s in range(1, n + 1)] != epoch
    batch = small_demo.train_batch(2, batch_size=3, seed=0)
    assert batch.images.shape[0] == 3 and len(batch.cameras) == 3
