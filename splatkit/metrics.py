"""Image metrics shared by the loss and evaluation. Images are ``[B, H, W, 3]`` in [0, 1]."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def psnr(img: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image ``[B]`` (peak 1.0); inf for identical images.

    With ``mask [B, H, W, 1]`` (bool) only pixels inside it count.
    """
    err = (img - gt).square()
    if mask is None:
        mse = err.flatten(1).mean(dim=1)
    else:
        m = mask.to(err.dtype)
        mse = (err * m).flatten(1).sum(dim=1) / (3 * m.flatten(1).sum(dim=1)).clamp_min(1)
    return -10.0 * torch.log10(mse)


@functools.lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _compiled_ssim_applies(x: torch.Tensor, y: torch.Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    fits = x.device.type == "cpu" and x.dtype == y.dtype == torch.float32 and not y.requires_grad
    if backend == "cpu":
        if not fits:
            raise ValueError("ssim_map(backend='cpu') needs float32 CPU images and a target without gradient")
        return True
    if not fits:
        return False
    from splatkit.renderer.backends import cpu

    return cpu.is_available()


def ssim_map(
    img: torch.Tensor,
    gt: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    padding: str = "valid",
    backend: str = "auto",
) -> torch.Tensor:
    """Per-pixel SSIM ``[B, 3, H', W']`` with a separable Gaussian window (the 3DGS paper's 11 / 1.5).

    ``padding="valid"`` drops the border where the window does not fit (as torchmetrics
    and scikit-image do); ``"same"`` zero-pads like the original 3DGS training code.
    ``backend``: ``"auto"`` computes float32 CPU images (target without gradient) with the
    compiled kernel, in one pass forward and backward, and anything else in PyTorch;
    ``"torch"`` always in PyTorch (the reference); ``"cpu"`` insists on the kernel.
    """
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if backend not in ("auto", "torch", "cpu"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'cpu', got {backend!r}")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number, got {window_size!r}")
    x = img.permute(0, 3, 1, 2)
    y = gt.permute(0, 3, 1, 2)
    C = x.shape[1]
    g = _gaussian_window(window_size, sigma, x.dtype, str(x.device))
    if _compiled_ssim_applies(x, y, backend):
        from splatkit.renderer.backends.cpu.ssim import ssim_map_cpu

        return ssim_map_cpu(x, y, g, padding == "same")
    pad = window_size // 2 if padding == "same" else 0

    def blur(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[1]
        t = F.conv2d(t, g.reshape(1, 1, -1, 1).expand(n, 1, -1, 1), padding=(pad, 0), groups=n)
        return F.conv2d(t, g.reshape(1, 1, 1, -1).expand(n, 1, 1, -1), padding=(0, pad), groups=n)

    # One batched blur of the five moments instead of five calls.
    stats = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, xx, yy, xy = stats.split(C, dim=1)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


def ssim(
    img: torch.Tensor,
    gt: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    padding: str = "valid",
    backend: str = "auto",
) -> torch.Tensor:
    """Mean SSIM per image ``[B]`` (arguments as :func:`ssim_map`)."""
    return ssim_map(img, gt, window_size, sigma, padding, backend).flatten(1).mean(dim=1)
