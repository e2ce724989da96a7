"""Reference rasterizer in plain PyTorch: the correctness oracle for every backend.

Gradients come from autograd, nothing is hand-derived. Two stages:

1. without gradients, tiles are tested densely (pixel x Gaussian candidates from the
   tile lists, in chunks) to list the (pixel, Gaussian) pairs whose alpha reaches
   1/255, grouped by pixel in depth order;
2. with gradients, only those pairs are evaluated and composited front to back with a
   segmented scan of log-transmittance.

Both stages work in chunks of at most ``max_chunk_elements``, so memory stays bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from splatkit.renderer.projection import (
    ALPHA_MAX,
    ALPHA_THRESHOLD,
    TRANSMITTANCE_MIN,
    Projected,
    project_gaussians,
    tile_bounds,
)

if TYPE_CHECKING:
    from splatkit.renderer.backends.base import RasterInputs, RasterSettings


@torch.no_grad()
def bin_gaussians(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, tile_size: int, tiles_x: int, tiles_y: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile-Gaussian intersection list sorted by (camera, tile, depth).

    Returns ``pair_gauss [M]`` (flat ``camera * N + gaussian`` index of each pair, in
    compositing order) and ``tile_counts [C * tiles_y * tiles_x]``.
    """
    C, N = depths.shape
    n_tiles = tiles_x * tiles_y
    lo, hi = tile_bounds(means2d, radii, tile_size, tiles_x, tiles_y)
    span = (hi - lo).reshape(-1, 2)
    counts = span[:, 0] * span[:, 1]
    src = torch.repeat_interleave(torch.arange(C * N, device=depths.device), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(src.numel(), device=depths.device) - starts[src]
    width = span[src, 0]
    lo_flat = lo.reshape(-1, 2)
    tx = lo_flat[src, 0] + local % width
    ty = lo_flat[src, 1] + local // width
    tile = (src // N) * n_tiles + ty * tiles_x + tx

    order = torch.argsort(depths, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=depths.device).expand(C, N))
    key = tile * N + rank.reshape(-1)[src]
    perm = torch.argsort(key)
    tile_counts = torch.bincount(tile, minlength=C * n_tiles)
    return src[perm], tile_counts


def _alpha(pix: torch.Tensor, mean: torch.Tensor, conic: torch.Tensor, opac: torch.Tensor) -> torch.Tensor:
    """Alpha of Gaussians at pixel centres (broadcasting); 0 where it is skipped.

    ``alpha = min(0.999, o * exp(-sigma))`` with ``sigma = d^T conic d / 2``; pairs with
    ``sigma < 0`` or ``alpha < 1/255`` contribute nothing (gsplat's rule).
    """
    dx = pix[..., 0] - mean[..., 0]
    dy = pix[..., 1] - mean[..., 1]
    sigma = 0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) + conic[..., 1] * dx * dy
    alpha = torch.clamp_max(opac * torch.exp(-sigma), ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))


@torch.no_grad()
def tile_pairs(
    means2d: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    width: int,
    height: int,
    tile_size: int,
    max_chunk_elements: int,
    hit_fn,
    temporaries: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (pixel, Gaussian) pair ``hit_fn`` accepts, grouped by pixel, front to back.

    Tiles are tested densely, in chunks of tiles x candidates of at most
    ``max_chunk_elements / temporaries`` pixel-Gaussian pairs:
    ``hit_fn(origin [T, 2], g [T, K]) -> [T, P, K]`` says which of the tile pixels
    (row-major, ``P = tile_size^2``, tile origins in pixels) each candidate ``g`` (flat
    ``camera * N + gaussian``) reaches. Returns flat pixel indices ``[M]``
    (``camera * H * W + y * W + x``) and flat Gaussian indices ``[M]``.
    """
    C, N = depths.shape
    device = means2d.device
    tiles_x = (width + tile_size - 1) // tile_size
    tiles_y = (height + tile_size - 1) // tile_size
    P = tile_size * tile_size
    pair_gauss, tile_counts = bin_gaussians(means2d, radii, depths, tile_size, tiles_x, tiles_y)
    offsets = torch.cumsum(tile_counts, 0) - tile_counts
    local = tile_pixels(tile_size, device)

    busy = torch.nonzero(tile_counts > 0)[:, 0]
    busy = busy[torch.argsort(tile_counts[busy], descending=True, stable=True)]
    counts = tile_counts[busy].tolist()
    budget = max(1, max_chunk_elements // (P * temporaries))
    out_pix, out_gauss = [], []
    start = 0
    while start < len(counts):
        k_max = counts[start]
        seg = min(k_max, budget)
        tiles = busy[start : start + max(1, budget // seg)]
        start += tiles.numel()
        cam = tiles // (tiles_x * tiles_y)
        t_img = tiles % (tiles_x * tiles_y)
        origin = torch.stack([t_img % tiles_x, t_img // tiles_x], dim=-1) * tile_size  # [T, 2]
        pix_xy = origin[:, None, :] + local[None]  # [T, P, 2]
        pix_id = cam[:, None] * (height * width) + pix_xy[..., 1] * width + pix_xy[..., 0]
        inside = (pix_xy[..., 0] < width) & (pix_xy[..., 1] < height)
        for k0 in range(0, k_max, seg):
            k = torch.arange(k0, min(k0 + seg, k_max), device=device)
            valid = k[None, :] < tile_counts[tiles, None]
            g = pair_gauss[torch.where(valid, offsets[tiles, None] + k[None, :], torch.zeros_like(k[None, :]))]
            hit = hit_fn(origin, g) & valid[:, None, :] & inside[..., None]
            t_i, p_i, k_i = torch.nonzero(hit, as_tuple=True)
            out_pix.append(pix_id[t_i, p_i])
            out_gauss.append(g[t_i, k_i])
    if not out_pix:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    pix = torch.cat(out_pix)
    gauss = torch.cat(out_gauss)
    if counts[0] > budget:
        # A tile split into depth segments has its pixels' pairs spread over several
        # blocks; generation order is front to back, so a stable sort by pixel
        # regroups them without breaking depth order.
        order = torch.argsort(pix, stable=True)
        pix, gauss = pix[order], gauss[order]
    return pix, gauss


def tile_pixels(tile_size: int, device: torch.device) -> torch.Tensor:
    """``[P, 2]`` integer (x, y) offsets of a tile's pixels, row-major."""
    py, px = torch.meshgrid(
        torch.arange(tile_size, device=device), torch.arange(tile_size, device=device), indexing="ij"
    )
    return torch.stack([px.reshape(-1), py.reshape(-1)], dim=-1)


@torch.no_grad()
def _contributing_pairs(
    proj: Projected, width: int, height: int, tile_size: int, max_chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (pixel, Gaussian) pair with alpha >= 1/255, grouped by pixel, front to back
    (see :func:`tile_pairs`)."""
    C, N = proj.depths.shape
    dtype = proj.means2d.dtype
    mean = proj.means2d.reshape(C * N, 2)
    conic = proj.conics.reshape(C * N, 3)
    opac = proj.opacities.reshape(C * N)
    local = tile_pixels(tile_size, proj.means2d.device)
    # sigma is a quadratic form in the pixel position; with pixel features
    # (x^2, xy, y^2, x, y, 1) in tile-local coordinates the whole candidate test of a
    # chunk is one batched matmul. The test keeps a small margin, so it finds a
    # superset of the contributing pairs; the exact rule is applied when compositing.
    lx = local[:, 0].to(dtype) + 0.5
    ly = local[:, 1].to(dtype) + 0.5
    feats = torch.stack([lx * lx, lx * ly, ly * ly, lx, ly, torch.ones_like(lx)], dim=-1)  # [P, 6]
    log_thresh = torch.log(torch.clamp(opac, min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD) + 1e-2

    def hit(origin: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        m = mean[g] - origin[:, None, :].to(dtype)  # [T, K, 2]
        a, b, c = conic[g].unbind(-1)
        mx, my = m.unbind(-1)
        coef = torch.stack(
            [
                0.5 * a,
                b,
                0.5 * c,
                -a * mx - b * my,
                -c * my - b * mx,
                0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my,
            ],
            dim=-1,
        )  # [T, K, 6]
        sigma = torch.matmul(feats, coef.transpose(1, 2))  # [T, P, K]
        return (sigma <= log_thresh[g][:, None, :]) & (opac[g] >= ALPHA_THRESHOLD)[:, None, :]

    return tile_pairs(proj.means2d, proj.radii, proj.depths, width, height, tile_size, max_chunk_elements, hit)


class PixelSegments:
    """Pairs grouped by pixel (``pix [M]`` sorted): where each pixel's run starts and
    which run each pair is in, for segmented prefix sums."""

    def __init__(self, pix: torch.Tensor) -> None:
        first = torch.ones_like(pix, dtype=torch.bool)
        first[1:] = pix[1:] != pix[:-1]
        self.start = torch.nonzero(first)[:, 0]
        self.id = torch.cumsum(first.long(), 0) - 1

    def exclusive_cumsum(self, x: torch.Tensor) -> torch.Tensor:
        """Per pixel, the sum of ``x [M, ...]`` over the earlier pairs of that pixel."""
        excl = torch.cumsum(x, 0) - x
        return excl - excl[self.start][self.id]


def pair_weights(pix: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, PixelSegments]:
    """Front-to-back blending weights of pairs grouped by pixel, in depth order.

    Returns ``(w [M], T_before [M], segments)``: ``w = alpha T_before`` where the pair
    contributes, 0 after the pixel stopped. Transmittance before a pair is ``exp`` of the
    sum of ``log(1 - alpha)`` over the earlier pairs of its pixel, a segmented scan in
    float64 so the running sum over all pairs keeps full precision. A pixel stops at the
    first Gaussian that would take its transmittance to 1e-4 or below, and that Gaussian
    does not contribute (gsplat's rule); the transmittance after each pair is
    non-increasing along a pixel, so the mask is exactly the prefix before it.
    """
    segments = PixelSegments(pix)
    log_t = torch.log1p(-alpha.double())
    excl = segments.exclusive_cumsum(log_t)
    T_before = torch.exp(excl).to(alpha.dtype)
    T_after = torch.exp(excl + log_t).to(alpha.dtype)
    w = torch.where(T_after > TRANSMITTANCE_MIN, alpha * T_before, torch.zeros_like(alpha))
    return w, T_before, segments


def _composite_pairs(
    pix: torch.Tensor,
    gauss: torch.Tensor,
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    feats: torch.Tensor,
    width: int,
    height: int,
    n_pixels: int,
) -> torch.Tensor:
    """Front-to-back compositing over contributing pairs grouped by pixel.

    pix, gauss ``[M]`` as from :func:`_contributing_pairs` (a pixel's pairs are all in
    this call); means2d ``[CN, 2]``, conics ``[CN, 3]``, opacities ``[CN]``, feats
    ``[CN, D]``. Returns per-pixel ``[n_pixels, D + 1]``: colour and alpha.
    """
    local = pix % (width * height)
    xy = torch.stack([local % width, local // width], dim=-1).to(means2d.dtype) + 0.5
    alpha = _alpha(xy, means2d[gauss], conics[gauss], opacities[gauss])
    w, _, _ = pair_weights(pix, alpha)
    contrib = torch.cat([w[:, None] * feats[gauss], w[:, None]], dim=-1)
    out = torch.zeros(n_pixels, contrib.shape[1], dtype=contrib.dtype, device=contrib.device)
    return out.index_add(0, pix, contrib)


def composite(
    proj: Projected,
    feats: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
    max_chunk_elements: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-composite projected Gaussians: ``(colors [C, H, W, D], alphas [C, H, W, 1])``.

    Colours are pre-background (the caller adds ``(1 - alpha) * background``).
    Pairs are composited in chunks of whole pixels of at most ``max_chunk_elements``
    pairs; with gradients on, each chunk is recomputed in the backward pass
    (activation checkpointing), so memory stays bounded whatever the scene.
    """
    C, N = proj.depths.shape
    D = feats.shape[-1]
    n_pixels = C * height * width
    pix, gauss = _contributing_pairs(
        Projected(
            proj.means2d.detach(),
            proj.conics.detach(),
            proj.opacities.detach(),
            proj.depths.detach(),
            proj.radii,
            proj.colors,
        ),
        width,
        height,
        tile_size,
        max_chunk_elements,
    )
    args = (
        proj.means2d.reshape(C * N, 2),
        proj.conics.reshape(C * N, 3),
        proj.opacities.reshape(C * N),
        feats.reshape(C * N, D),
    )
    bounds = [0]
    while bounds[-1] < pix.numel():
        end = min(bounds[-1] + max_chunk_elements, pix.numel())
        while end < pix.numel() and pix[end] == pix[end - 1]:  # never split a pixel
            end += 1
        bounds.append(end)
    acc = None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        chunk = (pix[lo:hi], gauss[lo:hi], *args, width, height, n_pixels)
        if torch.is_grad_enabled() and len(bounds) > 2:
            part = checkpoint(_composite_pairs, *chunk, use_reentrant=False)
        else:
            part = _composite_pairs(*chunk)
        acc = part if acc is None else acc + part
    if acc is None:
        acc = torch.zeros(n_pixels, D + 1, dtype=feats.dtype, device=feats.device)
    acc = acc.reshape(C, height, width, D + 1)
    return acc[..., :D], acc[..., D:]


def composite_over(
    proj: Projected,
    feats: torch.Tensor,
    width: int,
    height: int,
    backgrounds: torch.Tensor | None = None,
    tile_size: int = 16,
    max_chunk_elements: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`composite` over ``backgrounds [C, D]`` (None: black)."""
    renders, alphas = composite(proj, feats, width, height, tile_size, max_chunk_elements)
    if backgrounds is not None:
        renders = renders + (1 - alphas) * backgrounds[:, None, None, :]
    return renders, alphas


def project(inputs: RasterInputs, settings: RasterSettings) -> Projected:
    """The projection stage: :func:`~splatkit.renderer.projection.project_gaussians`."""
    return project_gaussians(
        *inputs.args(),
        near_plane=settings.near_plane,
        far_plane=settings.far_plane,
        eps2d=settings.eps2d,
        radius_clip=settings.radius_clip,
        rasterize_mode=settings.rasterize_mode,
    )
