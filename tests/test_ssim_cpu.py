"""The compiled SSIM kernel against the PyTorch maths, forward and backward."""

import pytest
import torch

from splatkit.metrics import ssim, ssim_map
from splatkit.renderer.backends import cpu

pytestmark = pytest.mark.skipif(
    not cpu.is_available(), reason=f"compiled CPU backend unavailable: {cpu.unavailable_reason()}"
)


def _images(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(b, h, w, 3, generator=g)
    img = (gt + 0.2 * torch.randn(b, h, w, 3, generator=g)).clamp(0, 1)  # a render near its target
    return img, gt


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("window_size", [11, 7])
def test_map_and_gradient_match_the_float64_reference(padding, window_size):
    img, gt = _images(2, 37, 53)
    weights = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    x32 = img.clone().requires_grad_(True)
    fast = ssim_map(x32, gt, window_size, padding=padding, backend="cpu")
    x64 = img.double().requires_grad_(True)
    ref = ssim_map(x64, gt.double(), window_size, padding=padding, backend="torch")
    assert fast.shape == ref.shape
    assert (fast.double() - ref).abs().max() < 2e-6
    w = weights[..., : ref.shape[2], : ref.shape[3]]
    (fast * w).sum().backward()
    (ref * w.double()).sum().backward()
    err = (x32.grad.double() - x64.grad).norm() / x64.grad.norm()
    assert err < 1e-5, float(err)


def test_auto_picks_the_kernel_for_float32_cpu_images_only():
    img, gt = _images(1, 40, 48, seed=2)
    assert torch.equal(ssim(img, gt), ssim(img, gt, backend="cpu"))
    assert torch.allclose(ssim(img, gt), ssim(img, gt, backend="torch"), atol=1e-6)
    assert torch.equal(ssim(img.double(), gt.double()), ssim(img.double(), gt.double(), backend="torch"))
    # a target that needs a gradient (the kernel differentiates the first image only)
    target = gt.clone().requires_grad_(True)
    assert ssim_map(img, target).grad_fn is not None and "SSIMMap" not in type(ssim_map(img, target).grad_fn).__name__
    x = img.clone().requires_grad_(True)
    assert "SSIMMap" in type(ssim_map(x, gt).grad_fn).__name__


def test_bad_arguments_are_named():
    img, gt = _images(1, 20, 20)
    with pytest.raises(ValueError, match="backend must be"):
        ssim_map(img, gt, backend="gpu")
    with pytest.raises(ValueError, match="window_size must be a positive odd number"):
        ssim_map(img, gt, window_size=4)
    with pytest.raises(ValueError, match="float32 CPU images"):
        ssim_map(img.double(), gt.double(), backend="cpu")
