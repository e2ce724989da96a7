"""``rasterize``: the one functional entry point every renderer class is built on."""

from __future__ import annotations

import torch

from splatkit.renderer.backends import BACKENDS, GSPLAT_OPTIONS, resolve_backend_name

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _validate(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
    backgrounds, render_mode,
) -> None:
    _check(means.dim() == 2 and means.shape[-1] == 3, f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    _check(tuple(quats.shape) == (N, 4), f"quats must be [N, 4] = [{N}, 4] (wxyz), got {tuple(quats.shape)}")
    _check(tuple(scales.shape) == (N, 3), f"scales must be [N, 3] = [{N}, 3], got {tuple(scales.shape)}")
    _check(tuple(opacities.shape) == (N,), f"opacities must be [N] = [{N}], got {tuple(opacities.shape)}")
    _check(viewmats.dim() == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    _check(tuple(Ks.shape) == (C, 3, 3), f"Ks must be [C, 3, 3] = [{C}, 3, 3], got {tuple(Ks.shape)}")
    _check(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
           f"width and height must be positive ints, got {width!r} x {height!r}")
    if sh_degree is not None:
        _check(colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3,
               f"with sh_degree={sh_degree}, colors must be SH coefficients [N, K, 3], got {tuple(colors.shape)}")
        _check(0 <= sh_degree and (sh_degree + 1) ** 2 <= colors.shape[1],
               f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} coefficients, colors has {colors.shape[1]}")
    else:
        _check((colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N)),
               f"without sh_degree, colors must be [N, D] or [C, N, D], got {tuple(colors.shape)}")
    _check(render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    named = {"quats": quats, "scales": scales, "opacities": opacities, "colors": colors, "viewmats": viewmats,
             "Ks": Ks, "backgrounds": backgrounds}
    for name, t in named.items():
        if t is not None and (t.dtype != means.dtype or t.device != means.device):
            raise ValueError(f"{name} is {t.dtype} on {t.device} but means is {means.dtype} on {means.device}; "
                             "all tensors must share one dtype and device")
    if backgrounds is not None:
        n_color = 3 if sh_degree is not None else colors.shape[-1]
        _check(tuple(backgrounds.shape) == (C, n_color),
               f"backgrounds must be [C, D] = [{C}, {n_color}], got {tuple(backgrounds.shape)}")


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int | None = None,
    backgrounds: torch.Tensor | None = None,
    backend: str = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    rasterize_mode: str = "classic",
    render_mode: str = "RGB",
    tile_size: int = 16,
    **backend_options,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render 3D Gaussians into ``C`` pinhole cameras, differentiably.

    Argument names, shapes and conventions are gsplat's ``rasterization``:

    Args:
        means: ``[N, 3]`` world-space centres.
        quats: ``[N, 4]`` wxyz rotations (normalised internally).
        scales: ``[N, 3]`` activated standard deviations.
        opacities: ``[N]`` activated opacities in (0, 1).
        colors: ``[N, K, 3]`` SH coefficients when ``sh_degree`` is given, else
            ``[N, D]`` or ``[C, N, D]`` features composited as they are.
        viewmats: ``[C, 4, 4]`` world-to-camera, OpenCV axes.
        Ks: ``[C, 3, 3]`` intrinsics (pixel centres at +0.5).
        width, height: image size in pixels.
        sh_degree: active SH degree (coefficients beyond it are ignored).
        backgrounds: ``[C, D]`` colour behind the Gaussians, default black.
        backend: ``"auto"``, ``"torch"`` (reference), ``"cpu"`` (compiled) or ``"gsplat"`` (CUDA).
        backend_options: per-backend switches; gsplat takes ``packed``, ``absgrad`` and
            ``sparse_grad`` (see :mod:`splatkit.renderer.backends.gsplat_backend`).
        render_mode: ``"RGB"``, ``"D"`` (accumulated depth), ``"ED"`` (expected depth),
            ``"RGB+D"`` or ``"RGB+ED"``; depth is an extra last channel.
        rasterize_mode: ``"classic"`` or ``"antialiased"`` (opacity compensation of the
            0.3 px blur, as in Mip-Splatting / gsplat).

    Returns:
        ``(images [C, H, W, D], alphas [C, H, W, 1], meta)``; ``meta`` holds
        ``means2d [C, N, 2]`` (call ``retain_grad()`` on it for densification),
        ``radii [C, N, 2]`` (int32, 0 where culled), ``depths [C, N]``, ``width``,
        ``height``, ``n_cameras`` and backend details.
    """
    _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
              backgrounds, render_mode)
    name = resolve_backend_name(backend, means.device, means.dtype)
    if name != "gsplat":
        asked = [k for k in GSPLAT_OPTIONS if backend_options.get(k)]
        if asked:
            raise ValueError(f"{', '.join(asked)} {'is a gsplat option' if len(asked) == 1 else 'are gsplat options'}; "
                             f"backend {name!r} does not support {'it' if len(asked) == 1 else 'them'}")
        backend_options = {k: v for k, v in backend_options.items() if k not in GSPLAT_OPTIONS}
    return BACKENDS[name](
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        sh_degree=sh_degree, backgrounds=backgrounds, near_plane=near_plane, far_plane=far_plane,
        eps2d=eps2d, radius_clip=radius_clip, rasterize_mode=rasterize_mode,
        render_mode=render_mode, tile_size=tile_size, **backend_options,
    )
