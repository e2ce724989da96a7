"""``rasterize``: the one functional entry point every renderer class is built on."""

from __future__ import annotations

import torch

from splatkit.renderer.backends import BACKENDS, RasterInputs, RasterSettings, resolve
from splatkit.renderer.projection import expected_depth

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _validate(
    means,
    quats,
    scales,
    opacities,
    colors,
    viewmats,
    Ks,
    width,
    height,
    sh_degree,
    backgrounds,
    render_mode,
    render_modes=RENDER_MODES,
    scale_dims=(3,),
    sh_rest=None,
) -> None:
    _check(means.dim() == 2 and means.shape[-1] == 3, f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    _check(tuple(quats.shape) == (N, 4), f"quats must be [N, 4] = [{N}, 4] (wxyz), got {tuple(quats.shape)}")
    _check(
        scales.dim() == 2 and tuple(scales.shape) in [(N, d) for d in scale_dims],
        f"scales must be [N, {scale_dims[0]}] = [{N}, {scale_dims[0]}]"
        + (" (surfel tangent scales; a third column is ignored)" if len(scale_dims) > 1 else "")
        + f", got {tuple(scales.shape)}",
    )
    _check(tuple(opacities.shape) == (N,), f"opacities must be [N] = [{N}], got {tuple(opacities.shape)}")
    _check(
        viewmats.dim() == 3 and viewmats.shape[1:] == (4, 4), f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}"
    )
    C = viewmats.shape[0]
    _check(tuple(Ks.shape) == (C, 3, 3), f"Ks must be [C, 3, 3] = [{C}, 3, 3], got {tuple(Ks.shape)}")
    _check(
        isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
        f"width and height must be positive ints, got {width!r} x {height!r}",
    )
    if sh_degree is not None:
        _check(
            colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3,
            f"with sh_degree={sh_degree}, colors must be SH coefficients [N, K, 3], got {tuple(colors.shape)}",
        )
        if sh_rest is not None:
            _check(colors.shape[1] == 1, f"with sh_rest, colors must be SH band 0 [N, 1, 3], got {tuple(colors.shape)}")
            _check(
                sh_rest.dim() == 3 and sh_rest.shape[0] == N and sh_rest.shape[2] == 3,
                f"sh_rest must be the SH bands above 0 [N, K - 1, 3] = [{N}, K - 1, 3], got {tuple(sh_rest.shape)}",
            )
        have = colors.shape[1] + (0 if sh_rest is None else sh_rest.shape[1])
        _check(
            0 <= sh_degree and (sh_degree + 1) ** 2 <= have,
            f"sh_degree={sh_degree} needs {(sh_degree + 1) ** 2} coefficients, "
            f"{'colors has' if sh_rest is None else 'colors and sh_rest have'} {have}",
        )
    elif sh_rest is not None:
        raise ValueError("sh_rest (SH bands above 0) needs sh_degree")
    else:
        _check(
            (colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N)),
            f"without sh_degree, colors must be [N, D] or [C, N, D], got {tuple(colors.shape)}",
        )
    _check(render_mode in render_modes, f"render_mode must be one of {render_modes}, got {render_mode!r}")
    named = {
        "quats": quats,
        "scales": scales,
        "opacities": opacities,
        "colors": colors,
        "sh_rest": sh_rest,
        "viewmats": viewmats,
        "Ks": Ks,
        "backgrounds": backgrounds,
    }
    for name, t in named.items():
        if t is not None and (t.dtype != means.dtype or t.device != means.device):
            raise ValueError(
                f"{name} is {t.dtype} on {t.device} but means is {means.dtype} on {means.device}; "
                "all tensors must share one dtype and device"
            )
    if backgrounds is not None:
        n_color = 3 if sh_degree is not None else colors.shape[-1]
        _check(
            tuple(backgrounds.shape) == (C, n_color),
            f"backgrounds must be [C, D] = [{C}, {n_color}], got {tuple(backgrounds.shape)}",
        )


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
    distributed: bool = False,
    sh_rest: torch.Tensor | None = None,
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
        distributed: the Gaussians are this rank's shard of the scene and the cameras this
            rank's; all ranks of the process group call together and each gets its own
            cameras rendered from every shard (see :mod:`splatkit.renderer.sharded`).
        sh_rest: ``[N, K - 1, 3]``, the SH bands above band 0 kept apart from ``colors``
            (then band 0, ``[N, 1, 3]``), as :class:`~splatkit.splat.SplatModel` keeps them
            (``sh0``, ``shN``): the same render as ``colors=torch.cat([colors, sh_rest], 1)``,
            without that copy and its gradient's on the compiled CPU backend.
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
    _validate(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        sh_degree,
        backgrounds,
        render_mode,
        sh_rest=sh_rest,
    )
    chosen = resolve(backend, means.device, means.dtype, "3dgs", sharded=distributed)
    known = set().union(*(b.options for b in BACKENDS.values()))
    stray = [k for k in backend_options if k not in known]
    if stray:
        raise TypeError(f"rasterize() got unexpected keyword arguments {stray}; backend options are {sorted(known)}")
    asked = [k for k, v in backend_options.items() if v]
    unsupported = [k for k in asked if k not in chosen.options]
    if unsupported:
        owners = "/".join(sorted({b.name for k in unsupported for b in BACKENDS.values() if k in b.options}))
        one = len(unsupported) == 1
        raise ValueError(
            f"{', '.join(unsupported)} {'is a' if one else 'are'} {owners} option{'' if one else 's'}; "
            f"backend {chosen.name!r} does not support {'it' if one else 'them'}"
        )
    options = {k: v for k, v in backend_options.items() if k in chosen.options}
    inputs = RasterInputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds, sh_rest
    )
    settings = RasterSettings(near_plane, far_plane, eps2d, radius_clip, rasterize_mode, render_mode, tile_size)
    if distributed:
        inputs = inputs.joined()  # the shards exchange one coefficient tensor
        if asked:
            raise ValueError(f"{', '.join(asked)} cannot be used with distributed (sharded) rendering")
        from splatkit.renderer.sharded import rasterize_sharded

        return rasterize_sharded(inputs, settings, chosen)
    return chosen.rasterize(inputs, settings, **options)


RENDER_MODES_2DGS = ("RGB", "RGB+D", "RGB+ED")


def depth_to_normals(depths: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """World-space normals ``[C, H, W, 3]`` of a z-depth map ``[C, H, W, 1]`` by central
    differences of the back-projected pixel centres; they face the camera; 0 on the border."""
    C, H, W, _ = depths.shape
    dev, dt = depths.device, depths.dtype
    ys, xs = torch.meshgrid(
        torch.arange(H, device=dev, dtype=dt) + 0.5, torch.arange(W, device=dev, dtype=dt) + 0.5, indexing="ij"
    )
    fx, fy = Ks[:, 0, 0, None, None], Ks[:, 1, 1, None, None]
    cx, cy = Ks[:, 0, 2, None, None], Ks[:, 1, 2, None, None]
    z = depths[..., 0]
    pts = torch.stack([(xs - cx) / fx * z, (ys - cy) / fy * z, z], dim=-1)  # camera space
    dx = pts[:, 1:-1, 2:] - pts[:, 1:-1, :-2]
    dy = pts[:, 2:, 1:-1] - pts[:, :-2, 1:-1]
    n = torch.nn.functional.normalize(torch.linalg.cross(dy, dx, dim=-1), dim=-1)
    n = torch.nn.functional.pad(n, (0, 0, 1, 1, 1, 1))
    c2w_rot = viewmats[:, :3, :3].transpose(-1, -2)
    return torch.einsum("cij,chwj->chwi", c2w_rot, n)


def rasterize_2dgs(
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
    radius_clip: float = 0.0,
    render_mode: str = "RGB+ED",
    depth_mode: str = "expected",
    tile_size: int = 16,
    distributed: bool = False,
    sh_rest: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render 2D Gaussian surfels (2DGS) into ``C`` pinhole cameras, differentiably.

    Arguments as :func:`rasterize` (gsplat's ``rasterization_2dgs``), except ``scales``
    ``[N, 2]`` (tangent-axis scales; a third column is ignored), ``render_mode`` one of
    ``"RGB"``, ``"RGB+D"`` (accumulated depth channel) or ``"RGB+ED"`` (expected depth),
    and ``depth_mode`` (``"expected"`` or ``"median"``) picking the depth the normals
    are derived from, ``distributed`` (sharded rendering, as for :func:`rasterize`) and
    ``sh_rest`` (the SH bands above band 0 apart from ``colors``, as for :func:`rasterize`).
    See :mod:`splatkit.renderer.projection_2dgs` for the maths.

    Returns:
        ``(renders [C, H, W, D(+1)], alphas [C, H, W, 1], normals [C, H, W, 3]`` (world
        space, alpha-weighted), ``normals_from_depth [C, H, W, 3]`` (world space, unit),
        ``distort [C, H, W, 1], median_depth [C, H, W, 1], meta)``; ``meta`` holds
        ``means2d`` (``.grad`` for densification), ``radii``, ``depths``, ``width``, ``height``.
    """
    _validate(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        sh_degree,
        backgrounds,
        render_mode,
        render_modes=RENDER_MODES_2DGS,
        scale_dims=(2, 3),
        sh_rest=sh_rest,
    )
    if depth_mode not in ("expected", "median"):
        raise ValueError(f"depth_mode must be 'expected' or 'median', got {depth_mode!r}")
    chosen = resolve(backend, means.device, means.dtype, "2dgs", sharded=distributed)
    inputs = RasterInputs(
        means, quats, scales[:, :2], opacities, colors, viewmats, Ks, width, height, sh_degree, sh_rest=sh_rest
    )
    settings = RasterSettings(near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, tile_size=tile_size)
    if distributed:
        from splatkit.renderer.sharded import rasterize_sharded_2dgs

        inputs = inputs.joined()  # the shards exchange one coefficient tensor

        out = rasterize_sharded_2dgs(inputs, settings, chosen)
    else:
        out = chosen.rasterize_2dgs(inputs, settings)
    alphas = out["alphas"]
    renders = out["colors"]
    if backgrounds is not None:
        renders = renders + (1 - alphas) * backgrounds[:, None, None, :]
    expected = expected_depth(out["depth_sum"], alphas)
    if render_mode == "RGB+ED":
        renders = torch.cat([renders, expected], dim=-1)
    elif render_mode == "RGB+D":
        renders = torch.cat([renders, out["depth_sum"]], dim=-1)
    c2w_rot = viewmats[:, :3, :3].transpose(-1, -2)
    normals = torch.einsum("cij,chwj->chwi", c2w_rot, out["normals_camera"])
    normals_from_depth = depth_to_normals(expected if depth_mode == "expected" else out["median_depth"], viewmats, Ks)
    meta = {
        k: v
        for k, v in out.items()
        if k not in ("colors", "alphas", "normals_camera", "depth_sum", "distort", "median_depth")
    }
    meta.update(width=width, height=height, n_cameras=viewmats.shape[0], tile_size=tile_size, backend=chosen.name)
    return renders, alphas, normals, normals_from_depth, out["distort"], out["median_depth"], meta
