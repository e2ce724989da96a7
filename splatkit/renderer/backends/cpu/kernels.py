"""Autograd wrappers around the compiled CPU kernels (see ``splatkit_cpu.cpp``).

Two differentiable stages, as in gsplat: projection (+ SH colours) produces
``means2d``, whose gradient densification reads, and rasterisation composites them.
Gradients flow to means, quaternions, scales, opacities and SH coefficients (or raw
colour features), and to the cameras' ``viewmats`` when they require it (pose refinement);
intrinsics and backgrounds are constants. The 3D Gaussian
(3DGS) functions come first, the 2D surfel (2DGS) ones after them.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from splatkit.renderer.backends.cpu import buffers
from splatkit.renderer.backends.cpu.build import load


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _contiguous(g: torch.Tensor | None) -> torch.Tensor | None:
    return None if g is None else g.contiguous()


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous()


class _SHLayout:
    """Where Gaussian ``n``'s SH coefficients are for the kernels: band 0 at ``sh0 + n *
    stride0``, the ``bands_rest`` bands above it at ``shN + n * strideN`` (floats), either
    two tensors (the model's ``sh0``/``shN``) or one joined ``[N, K, 3]`` tensor."""

    def __init__(self, sh0: torch.Tensor | None, shN: torch.Tensor | None) -> None:
        self.sh0, self.shN = sh0, shN
        if sh0 is None:
            self.stride0 = self.strideN = self.bands_rest = 0
        elif shN is None:  # joined: band 0 and the rest in one row of K bands
            self.stride0 = self.strideN = 3 * sh0.shape[1]
            self.bands_rest = sh0.shape[1] - 1
        else:
            self.stride0, self.bands_rest = 3, shN.shape[1]
            self.strideN = 3 * self.bands_rest

    @classmethod
    def contiguous(cls, sh0: torch.Tensor | None, shN: torch.Tensor | None) -> _SHLayout:
        """The layout of contiguous, detached copies (where needed) of ``sh0`` and ``shN``."""
        return cls(None if sh0 is None else _f32(sh0), None if sh0 is None or shN is None else _f32(shN))

    def _rest(self, t0: torch.Tensor | None, tN: torch.Tensor | None) -> int | None:
        if t0 is None or self.bands_rest == 0:
            return None
        return tN.data_ptr() if self.shN is not None else t0.data_ptr() + 3 * t0.element_size()

    def pointers(self) -> tuple:
        """``sh0, shN, stride0, strideN`` as the kernels take them."""
        return _ptr(self.sh0), self._rest(self.sh0, self.shN), self.stride0, self.strideN

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gradient tensors shaped as the inputs (the kernel writes every element; the large
        one on a block kept from the last step, see :mod:`.buffers`)."""
        if self.shN is None:
            return buffers.empty(self.sh0.shape), None
        return torch.empty_like(self.sh0), buffers.empty(self.shN.shape)

    def gradient_pointers(self, grads: tuple) -> tuple:
        g0, gN = grads
        return _ptr(g0), self._rest(g0, gN)


class ProjectFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        means,
        quats,
        scales,
        opacities,
        sh0,
        shN,
        viewmats,
        Ks,
        width,
        height,
        sh_degree,
        near_plane,
        far_plane,
        eps2d,
        radius_clip,
        antialiased,
        nthreads,
    ):
        """SH coefficients as the model keeps them, ``sh0 [N, 1, 3]`` and ``shN [N, KN, 3]``
        (no concatenation, and each gets its own gradient), or joined: ``sh0 [N, K, 3]`` and
        ``shN=None``. No SH (``sh0=None``): the colours are made by the caller."""
        lib = load()
        C, N = viewmats.shape[0], means.shape[0]
        means, quats, scales, opacities = _f32(means), _f32(quats), _f32(scales), _f32(opacities)
        viewmats, Ks = _f32(viewmats), _f32(Ks)
        use_sh = sh0 is not None
        sh = _SHLayout.contiguous(sh0, shN)
        means2d = torch.empty(C, N, 2)
        conics = torch.empty(C, N, 3)
        opac = torch.empty(C, N)
        depths = torch.empty(C, N)
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        colors = torch.empty(C, N, 3) if use_sh else torch.zeros(0)
        lib.sk_project_fwd(
            C,
            N,
            _ptr(means),
            _ptr(quats),
            _ptr(scales),
            _ptr(opacities),
            *sh.pointers(),
            sh_degree if use_sh else -1,
            _ptr(viewmats),
            _ptr(Ks),
            width,
            height,
            near_plane,
            far_plane,
            eps2d,
            radius_clip,
            int(antialiased),
            _ptr(means2d),
            _ptr(conics),
            _ptr(opac),
            _ptr(depths),
            _ptr(radii),
            _ptr(colors) if use_sh else None,
            nthreads,
        )
        ctx.save_for_backward(means, quats, scales, opacities, viewmats, Ks, radii, sh.sh0, sh.shN)  # None kept
        ctx.cfg = (
            width,
            height,
            sh_degree if use_sh else -1,
            near_plane,
            far_plane,
            eps2d,
            antialiased,
            nthreads,
            use_sh,
        )
        ctx.mark_non_differentiable(radii)
        return means2d, conics, opac, depths, radii, colors

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_opac, g_depths, _g_radii, g_colors):
        lib = load()
        means, quats, scales, opacities, viewmats, Ks, radii, sh0, shN = ctx.saved_tensors
        sh = _SHLayout(sh0, shN)
        width, height, sh_degree, near_plane, far_plane, eps2d, antialiased, nthreads, use_sh = ctx.cfg
        C, N = viewmats.shape[0], means.shape[0]

        def grad_or_zeros(g, shape):
            return torch.zeros(shape) if g is None else g.contiguous()

        g_means2d = grad_or_zeros(g_means2d, (C, N, 2))
        g_conics = grad_or_zeros(g_conics, (C, N, 3))
        g_opac = grad_or_zeros(g_opac, (C, N))
        g_depths = None if g_depths is None else g_depths.contiguous()
        g_colors = None if (g_colors is None or not use_sh) else g_colors.contiguous()
        out_means = torch.empty(N, 3)  # the kernel writes every element
        out_quats = torch.empty(N, 4)
        out_scales = torch.empty(N, 3)
        out_opac = torch.empty(N)
        out_sh = sh.gradients() if use_sh else (None, None)
        # the cameras' gradient only when asked for (pose refinement): it is summed over all Gaussians
        out_viewmats = torch.empty(C, 4, 4) if ctx.needs_input_grad[6] else None
        lib.sk_project_bwd(
            C,
            N,
            _ptr(means),
            _ptr(quats),
            _ptr(scales),
            _ptr(opacities),
            *sh.pointers(),
            sh.bands_rest,
            sh_degree,
            _ptr(viewmats),
            _ptr(Ks),
            width,
            height,
            near_plane,
            far_plane,
            eps2d,
            int(antialiased),
            _ptr(radii),
            None,
            _ptr(g_means2d),
            _ptr(g_conics),
            _ptr(g_opac),
            _ptr(g_colors),
            _ptr(g_depths),
            _ptr(out_means),
            _ptr(out_quats),
            _ptr(out_scales),
            _ptr(out_opac),
            *sh.gradient_pointers(out_sh),
            _ptr(out_viewmats),
            nthreads,
        )
        return (
            out_means,
            out_quats,
            out_scales,
            out_opac,
            *out_sh,
            out_viewmats,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


def pack(means2d, conics, opac, colors, nthreads):
    """Per (camera, Gaussian) the 16 floats (one cache line) compositing reads: centre,
    conic, opacity, alpha threshold on sigma, vertical extent, 1/A and colour ``[C, N, 16]``."""
    C, N, D = colors.shape
    packed = torch.empty(C, N, 16)
    load().sk_pack(C * N, D, _ptr(means2d), _ptr(conics), _ptr(opac), _ptr(colors), _ptr(packed), nthreads)
    return packed


def intersect(packed, radii, depths, width, height, nthreads):
    """Tile lists: ``(flat_ids [M] int32 sorted by camera, tile, depth; tile_offsets [C*T+1])``."""
    return _intersect(load().sk_isect, packed, radii, depths, width, height, nthreads)


class RasterizeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opac, backgrounds, radii, depths, width, height, nthreads):
        lib = load()
        C, N, D = colors.shape
        if not 1 <= D <= 4:
            raise ValueError(f"the cpu backend composites 1 to 4 channels, got {D}")
        packed = pack(_f32(means2d), _f32(conics), _f32(opac), _f32(colors), nthreads)
        bg = None if backgrounds is None else _f32(backgrounds)
        ids, tile_offsets = intersect(packed, radii.contiguous(), depths.detach().contiguous(), width, height, nthreads)
        img = torch.empty(C, height, width, D)
        alpha = torch.empty(C, height, width, 1)
        T_final = torch.empty(C, height, width)
        stop = torch.empty(C, height, width, dtype=torch.int32)  # the pair each pixel stopped at
        vecmask = torch.empty(ids.numel(), dtype=torch.int64)  # every pair written
        lib.sk_raster_fwd(
            C,
            width,
            height,
            D,
            _ptr(packed),
            _ptr(bg),
            _ptr(ids),
            _ptr(tile_offsets),
            _ptr(img),
            _ptr(alpha),
            _ptr(T_final),
            _ptr(stop),
            _ptr(vecmask),
            nthreads,
        )
        ctx.save_for_backward(
            packed, bg if bg is not None else torch.zeros(0), ids, tile_offsets, T_final, stop, vecmask
        )
        ctx.cfg = (width, height, nthreads, bg is not None, N, D)
        return img, alpha

    @staticmethod
    def backward(ctx, g_img, g_alpha):
        lib = load()
        packed, bg, ids, tile_offsets, T_final, stop, vecmask = ctx.saved_tensors
        width, height, nthreads, has_bg, N, D = ctx.cfg
        C = packed.shape[0]
        g_img = torch.zeros(C, height, width, D) if g_img is None else g_img.contiguous()
        g_alpha = None if g_alpha is None else g_alpha.contiguous()
        out_means2d = torch.empty(C, N, 2)
        out_conics = torch.empty(C, N, 3)
        out_colors = torch.empty(C, N, D)
        out_opac = torch.empty(C, N)
        lib.sk_raster_bwd(
            C,
            N,
            width,
            height,
            D,
            _ptr(packed),
            _ptr(bg) if has_bg else None,
            _ptr(ids),
            _ptr(tile_offsets),
            _ptr(T_final),
            _ptr(stop),
            _ptr(vecmask),
            _ptr(g_img),
            _ptr(g_alpha),
            _ptr(out_means2d),
            _ptr(out_conics),
            _ptr(out_colors),
            _ptr(out_opac),
            nthreads,
        )
        return out_means2d, out_conics, out_colors, out_opac, None, None, None, None, None, None


# ----------------------------------------------------------------------------- 2DGS surfels
# The same two stages for surfels (maths in splatkit.renderer.projection_2dgs): the
# projection produces means2d (the filter centre; densification reads its gradient),
# the ray transforms re-centred on an origin near each surfel (Ms, and that origin as a
# constant: see splatkit_cpu.cpp), camera-facing normals and depths; compositing blends
# features, normals and depths and adds alpha, the distortion and the median depth.


class Project2DGSFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        means,
        quats,
        scales,
        opacities,
        sh0,
        shN,
        viewmats,
        Ks,
        width,
        height,
        sh_degree,
        near_plane,
        far_plane,
        radius_clip,
        nthreads,
    ):
        """SH coefficients as :class:`ProjectFn` takes them: ``sh0 [N, 1, 3]`` and ``shN
        [N, KN, 3]``, or joined ``sh0 [N, K, 3]`` with ``shN=None``; ``sh0=None``: no SH."""
        lib = load()
        C, N = viewmats.shape[0], means.shape[0]
        means, quats, scales, opacities = _f32(means), _f32(quats), _f32(scales), _f32(opacities)
        viewmats, Ks = _f32(viewmats), _f32(Ks)
        use_sh = sh0 is not None
        sh = _SHLayout.contiguous(sh0, shN)
        means2d = torch.empty(C, N, 2)
        Ms = torch.empty(C, N, 3, 3)
        shift = torch.empty(C, N, 2)
        normals = torch.empty(C, N, 3)
        depths = torch.empty(C, N)
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        colors = torch.empty(C, N, 3) if use_sh else torch.zeros(0)
        lib.sk2_project_fwd(
            C,
            N,
            _ptr(means),
            _ptr(quats),
            _ptr(scales),
            _ptr(opacities),
            *sh.pointers(),
            sh_degree if use_sh else -1,
            _ptr(viewmats),
            _ptr(Ks),
            width,
            height,
            near_plane,
            far_plane,
            radius_clip,
            _ptr(means2d),
            _ptr(Ms),
            _ptr(shift),
            _ptr(normals),
            _ptr(depths),
            _ptr(radii),
            _ptr(colors) if use_sh else None,
            nthreads,
        )
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, shift, sh.sh0, sh.shN)  # None kept
        ctx.cfg = (sh_degree if use_sh else -1, nthreads, use_sh)
        ctx.mark_non_differentiable(radii, shift)
        ctx.set_materialize_grads(False)
        return means2d, Ms, shift, normals, depths, radii, colors

    @staticmethod
    def backward(ctx, g_means2d, g_Ms, _g_shift, g_normals, g_depths, _g_radii, g_colors):
        lib = load()
        means, quats, scales, viewmats, Ks, shift, sh0, shN = ctx.saved_tensors
        sh = _SHLayout(sh0, shN)
        sh_degree, nthreads, use_sh = ctx.cfg
        C, N = viewmats.shape[0], means.shape[0]

        g_means2d, g_Ms, g_normals, g_depths = map(_contiguous, (g_means2d, g_Ms, g_normals, g_depths))
        g_colors = _contiguous(g_colors) if use_sh else None
        out_means = torch.zeros(N, 3)
        out_quats = torch.zeros(N, 4)
        out_scales = torch.zeros(N, 2)
        # the kernel adds to every output
        out_sh = tuple(None if g is None else g.zero_() for g in sh.gradients()) if use_sh else (None, None)
        lib.sk2_project_bwd(
            C,
            N,
            _ptr(means),
            _ptr(quats),
            _ptr(scales),
            *sh.pointers(),
            sh_degree,
            _ptr(viewmats),
            _ptr(Ks),
            _ptr(shift),
            _ptr(g_means2d),
            _ptr(g_Ms),
            _ptr(g_normals),
            _ptr(g_depths),
            _ptr(g_colors),
            _ptr(out_means),
            _ptr(out_quats),
            _ptr(out_scales),
            *sh.gradient_pointers(out_sh) if use_sh else (None, None),
            nthreads,
        )
        return (out_means, out_quats, out_scales, None, *out_sh) + (None,) * 9


def pack_2dgs(means2d, Ms, shift, opac, normals, depths, feats, nthreads):
    """Per (camera, surfel) the 32 floats compositing reads (``Surfel2D`` in the C++):
    ``[C, N, 32]``."""
    C, N, D = feats.shape
    packed = torch.empty(C, N, 32)
    load().sk2_pack(
        C * N,
        D,
        _ptr(means2d),
        _ptr(Ms),
        _ptr(shift),
        _ptr(opac),
        _ptr(normals),
        _ptr(depths),
        _ptr(feats),
        _ptr(packed),
        nthreads,
    )
    return packed


def intersect_2dgs(packed, radii, depths, width, height, nthreads):
    """Tile lists of surfels, as :func:`intersect`."""
    return _intersect(load().sk2_isect, packed, radii, depths, width, height, nthreads)


def _intersect(fn, packed, radii, depths, width, height, nthreads):
    C, N = depths.shape
    tiles = ((width + 15) // 16) * ((height + 15) // 16)
    tile_offsets = torch.empty(C * tiles + 1, dtype=torch.int64)
    out = ctypes.c_void_p()
    M = fn(
        C, N, _ptr(packed), _ptr(radii), _ptr(depths), width, height, ctypes.byref(out), _ptr(tile_offsets), nthreads
    )
    try:
        ids = torch.from_numpy(
            np.ctypeslib.as_array(ctypes.cast(out, ctypes.POINTER(ctypes.c_int32)), shape=(max(M, 1),))[:M].copy()
        )
    finally:
        load().sk_free(out)
    return ids, tile_offsets


class Rasterize2DGSFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, Ms, normals, depths, opac, feats, shift, radii, width, height, nthreads):
        lib = load()
        C, N, D = feats.shape
        if not 1 <= D <= 4:
            raise ValueError(f"the cpu backend composites 1 to 4 feature channels, got {D}")
        Ms = _f32(Ms)
        packed = pack_2dgs(
            _f32(means2d), Ms, shift.contiguous(), _f32(opac), _f32(normals), _f32(depths), _f32(feats), nthreads
        )
        ids, tile_offsets = intersect_2dgs(
            packed, radii.contiguous(), depths.detach().contiguous(), width, height, nthreads
        )
        img = torch.empty(C, height, width, D)
        alpha = torch.empty(C, height, width, 1)
        normal_img = torch.empty(C, height, width, 3)
        depth_sum = torch.empty(C, height, width, 1)
        distort = torch.empty(C, height, width, 1)
        median = torch.empty(C, height, width, 1)
        T_final = torch.empty(C, height, width)
        last = torch.empty(C, height, width, dtype=torch.int32)
        med = torch.empty(C, height, width, dtype=torch.int32)
        vecmask = torch.zeros(ids.numel(), dtype=torch.int64)
        lib.sk2_raster_fwd(
            C,
            width,
            height,
            D,
            _ptr(packed),
            _ptr(ids),
            _ptr(tile_offsets),
            _ptr(img),
            _ptr(alpha),
            _ptr(normal_img),
            _ptr(depth_sum),
            _ptr(distort),
            _ptr(median),
            _ptr(T_final),
            _ptr(last),
            _ptr(med),
            _ptr(vecmask),
            nthreads,
        )
        # The backward pass needs sum w d per pixel: the output itself (autograd's version
        # counter reports any in-place edit of it before backward).
        ctx.save_for_backward(packed, Ms, ids, tile_offsets, T_final, last, med, depth_sum, vecmask)
        ctx.cfg = (width, height, nthreads, N, D)
        ctx.set_materialize_grads(False)
        return img, alpha, normal_img, depth_sum, distort, median

    @staticmethod
    def backward(ctx, g_img, g_alpha, g_normals, g_depth, g_distort, g_median):
        lib = load()
        packed, Ms, ids, tile_offsets, T_final, last, med, depth_sum, vecmask = ctx.saved_tensors
        width, height, nthreads, N, D = ctx.cfg
        C = packed.shape[0]

        out_means2d = torch.empty(C, N, 2)
        out_Ms = torch.empty(C, N, 3, 3)
        out_normals = torch.empty(C, N, 3)
        out_depths = torch.empty(C, N)
        out_opac = torch.empty(C, N)
        out_feats = torch.empty(C, N, D)
        grads = [_contiguous(g) for g in (g_img, g_alpha, g_normals, g_depth, g_distort, g_median)]
        lib.sk2_raster_bwd(
            C,
            N,
            width,
            height,
            D,
            _ptr(packed),
            _ptr(Ms),
            _ptr(ids),
            _ptr(tile_offsets),
            _ptr(T_final),
            _ptr(last),
            _ptr(med),
            _ptr(depth_sum),
            _ptr(vecmask),
            *[_ptr(g) for g in grads],
            _ptr(out_means2d),
            _ptr(out_Ms),
            _ptr(out_normals),
            _ptr(out_depths),
            _ptr(out_opac),
            _ptr(out_feats),
            nthreads,
        )
        return out_means2d, out_Ms, out_normals, out_depths, out_opac, out_feats, None, None, None, None, None
