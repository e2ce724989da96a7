"""The SSIM map on the compiled CPU kernels (``ssim.cpp``): the map, and its gradient with
respect to the first image, in one pass each instead of PyTorch's dozen passes over five
moment images. :func:`splatkit.metrics.ssim_map` uses it for float32 CPU images and keeps
the PyTorch maths as the reference the tests compare it with."""

from __future__ import annotations

import torch

from splatkit.renderer.backends.cpu.build import load
from splatkit.renderer.backends.cpu.kernels import _ptr


class SSIMMapFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, window, same, nthreads):
        B, C, H, W = x.shape
        K = window.numel()
        pad = K // 2 if same else 0
        out = torch.empty(B, C, H + 2 * pad - K + 1, W + 2 * pad - K + 1, dtype=x.dtype)
        load().sk_ssim_fwd(B * C, H, W, K, _ptr(window), int(same), _ptr(x), _ptr(y), _ptr(out), nthreads)
        ctx.save_for_backward(x, y, window)
        ctx.cfg = (same, nthreads)
        return out

    @staticmethod
    def backward(ctx, g):
        x, y, window = ctx.saved_tensors
        same, nthreads = ctx.cfg
        B, C, H, W = x.shape
        gx = torch.empty_like(x)
        g = g.contiguous()
        load().sk_ssim_bwd(
            B * C, H, W, window.numel(), _ptr(window), int(same), _ptr(x), _ptr(y), _ptr(g), _ptr(gx), nthreads
        )
        return gx, None, None, None, None


def ssim_map_cpu(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor, same: bool) -> torch.Tensor:
    """SSIM map ``[B, C, H', W']`` of float32 CPU images ``[B, C, H, W]`` with the separable
    ``window`` (1-D taps); differentiable in ``x`` only (``y`` is the target)."""
    return SSIMMapFn.apply(
        x.contiguous(), y.detach().contiguous(), window.contiguous(), bool(same), torch.get_num_threads()
    )
