// splatkit compiled CPU rasterizer: projection, SH, binning, compositing, and their
// backward passes. Plain C++17 with OpenMP and GCC/Clang vector extensions; no PyTorch
// headers (the Python side passes raw pointers through ctypes), so it builds in seconds. The maths is the reference's
// (splatkit/renderer/projection.py and backends/torch_ref.py); tests compare the two
// forward and backward.
//
// Conventions: float32, row-major, pixel centres at +0.5, conic = (A, B, C) with
// sigma = 0.5 * (A dx^2 + C dy^2) + B dx dy, alpha = min(0.999, o * exp(-sigma)),
// pairs with alpha < 1/255 skipped, a pixel stops before the Gaussian that would take
// its transmittance to 1e-4 or below.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <omp.h>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#elif defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

constexpr int TILE = 16;
constexpr float ALPHA_THRESHOLD = 1.0f / 255.0f;
constexpr float ALPHA_MAX = 0.999f;
constexpr float T_MIN = 1e-4f;
constexpr float MAX_EXTENT = 3.33f;
constexpr int MAX_CHANNELS = 4;

// ----------------------------------------------------------------------------- threads
// Flush denormals to zero while a kernel runs (restored afterwards): values this small
// never change a result here, and on x86 arithmetic on them is very slow.
struct FlushDenormals {
#if defined(__SSE__)
    unsigned int saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Parallel loops use OpenMP. Inside a PyTorch process the dynamic linker resolves our
// libgomp.so.1 to the one PyTorch already loaded, so both share one thread pool
// instead of two pools fighting over the cores (and spawning threads per call, which
// costs hundreds of microseconds in some VMs).
template <class F>
void parallel_for(int64_t n, int nthreads, F&& body) {
    if (n <= 0) return;
    FlushDenormals ftz;
    nthreads = (int)std::min<int64_t>(std::max(nthreads, 1), n);
    if (nthreads == 1) {
        for (int64_t i = 0; i < n; ++i) body(i, 0);
        return;
    }
#pragma omp parallel num_threads(nthreads)
    {
        FlushDenormals ftz_worker;
        int tid = omp_get_thread_num();
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n; ++i) body(i, tid);
    }
}

// Run body(begin, end, tid) on contiguous chunks of [0, n).
template <class F>
void parallel_chunks(int64_t n, int nthreads, int64_t chunk, F&& body) {
    int64_t nchunks = (n + chunk - 1) / chunk;
    parallel_for(nchunks, nthreads, [&](int64_t c, int tid) {
        int64_t b = c * chunk;
        body(b, std::min(n, b + chunk), tid);
    });
}

// Pixels are processed in vectors of the machine's native width (GCC/Clang vector
// extensions: 16 floats with AVX-512, 8 with AVX, 4 otherwise); a 16-pixel tile row
// is NV of them. Wider-than-native vector types would be split into scalar code.
#if defined(__AVX512F__)
constexpr int L = 16;
#elif defined(__AVX__)
constexpr int L = 8;
#else
constexpr int L = 4;
#endif
constexpr int NV = TILE / L;
typedef float vf __attribute__((vector_size(4 * L)));
typedef int32_t vi __attribute__((vector_size(4 * L)));

static inline vf vsplat(float x) { return vf{} + x; }
static inline vf vmin(vf a, vf b) { return a < b ? a : b; }
static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

static inline vf vsqrt(vf x) {
    vf r;
    for (int i = 0; i < L; ++i) r[i] = __builtin_sqrtf(x[i]);
    return r;
}

// Natural log for x > 0: exponent from the bits, 2 atanh((m-1)/(m+1)) series for the
// mantissa in [sqrt(1/2), sqrt(2)) (relative error ~1e-8).
static inline vf vlog(vf x) {
    vi bits = (vi)x;
    vi e = ((bits >> 23) & 255) - 127;
    vf m = (vf)((bits & 0x007FFFFF) | 0x3F800000);
    vi big = m > 1.41421356f;
    m = big ? m * 0.5f : m;
    e = e - big;
    vf z = (m - 1.0f) / (m + 1.0f);
    vf z2 = z * z;
    vf lnm = 2.0f * z * (1.0f + z2 * (1.0f / 3.0f + z2 * (1.0f / 5.0f + z2 * (1.0f / 7.0f + z2 * (1.0f / 9.0f)))));
    return lnm + __builtin_convertvector(e, vf) * 0.6931471805599453f;
}

// ceil for values well inside the int32 range
static inline vf vceil(vf x) {
    vf t = __builtin_convertvector(__builtin_convertvector(x, vi), vf);
    return t < x ? t + 1.0f : t;
}

static inline vf vexp_neg(vf x) {
    // Clamped so results (and products with opacities) stay normal floats.
    x = x < -80.0f ? vsplat(-80.0f) : x;
    vf t = x * 1.4426950408889634f;
    vf r = (t + 12582912.0f) - 12582912.0f;
    vf f = (t - r) * 0.6931471805599453f;
    vf p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6.0f + f * (1.0f / 24.0f + f * (1.0f / 120.0f + f * (1.0f / 720.0f))))));
    vi bits = (__builtin_convertvector(r, vi) + 127) << 23;
    return p * (vf)bits;
}

// Lanes of a mask as bits (one instruction with AVX/AVX-512, a loop elsewhere).
static inline uint32_t vbits(vi m) {
#if defined(__AVX512F__)
    return (uint32_t)_mm512_cmplt_epi32_mask((__m512i)m, _mm512_setzero_si512());
#elif defined(__AVX__)
    return (uint32_t)_mm256_movemask_ps((__m256)m);
#else
    uint32_t b = 0;
    for (int i = 0; i < L; ++i) b |= (m[i] < 0 ? 1u : 0u) << i;
    return b;
#endif
}

static inline bool vany(vi m) {
    int32_t acc = 0;
    for (int i = 0; i < L; ++i) acc |= m[i];
    return acc != 0;
}

static inline bool vall(vi m) {
    int32_t acc = -1;
    for (int i = 0; i < L; ++i) acc &= m[i];
    return acc != 0;
}

static inline float vsum(vf v) {
    float s = 0;
    for (int i = 0; i < L; ++i) s += v[i];
    return s;
}

// ----------------------------------------------------------------------------- SH
constexpr float SH_C0 = 0.28209479177387814f;
constexpr float SH_C1 = 0.4886025119029199f;
constexpr float SH_C2[5] = {1.0925484305920792f, -1.0925484305920792f, 0.31539156525252005f,
                            -1.0925484305920792f, 0.5462742152960396f};
constexpr float SH_C3[7] = {-0.5900435899266435f, 2.890611442640554f, -0.4570457994644658f,
                            0.3731763325901154f, -0.4570457994644658f, 1.445305721320277f,
                            -0.5900435899266435f};

static inline void sh_basis(int degree, float x, float y, float z, float* Y) {
    Y[0] = SH_C0;
    if (degree < 1) return;
    Y[1] = -SH_C1 * y;
    Y[2] = SH_C1 * z;
    Y[3] = -SH_C1 * x;
    if (degree < 2) return;
    float xx = x * x, yy = y * y, zz = z * z;
    Y[4] = SH_C2[0] * x * y;
    Y[5] = SH_C2[1] * y * z;
    Y[6] = SH_C2[2] * (2 * zz - xx - yy);
    Y[7] = SH_C2[3] * x * z;
    Y[8] = SH_C2[4] * (xx - yy);
    if (degree < 3) return;
    Y[9] = SH_C3[0] * y * (3 * xx - yy);
    Y[10] = SH_C3[1] * x * y * z;
    Y[11] = SH_C3[2] * y * (4 * zz - xx - yy);
    Y[12] = SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy);
    Y[13] = SH_C3[4] * x * (4 * zz - xx - yy);
    Y[14] = SH_C3[5] * z * (xx - yy);
    Y[15] = SH_C3[6] * x * (xx - 3 * yy);
}

// Gradient of sum_k g[k] * Y_k(x, y, z) with respect to (x, y, z).
static inline void sh_basis_grad(int degree, float x, float y, float z, const float* g, float* d) {
    d[0] = d[1] = d[2] = 0.0f;
    if (degree < 1) return;
    d[0] += -SH_C1 * g[3];
    d[1] += -SH_C1 * g[1];
    d[2] += SH_C1 * g[2];
    if (degree < 2) return;
    d[0] += SH_C2[0] * y * g[4] - 2 * SH_C2[2] * x * g[6] + SH_C2[3] * z * g[7] + 2 * SH_C2[4] * x * g[8];
    d[1] += SH_C2[0] * x * g[4] + SH_C2[1] * z * g[5] - 2 * SH_C2[2] * y * g[6] - 2 * SH_C2[4] * y * g[8];
    d[2] += SH_C2[1] * y * g[5] + 4 * SH_C2[2] * z * g[6] + SH_C2[3] * x * g[7];
    if (degree < 3) return;
    float xx = x * x, yy = y * y, zz = z * z;
    d[0] += SH_C3[0] * 6 * x * y * g[9] + SH_C3[1] * y * z * g[10] - SH_C3[2] * 2 * x * y * g[11] -
            SH_C3[3] * 6 * x * z * g[12] + SH_C3[4] * (4 * zz - 3 * xx - yy) * g[13] +
            SH_C3[5] * 2 * x * z * g[14] + SH_C3[6] * (3 * xx - 3 * yy) * g[15];
    d[1] += SH_C3[0] * (3 * xx - 3 * yy) * g[9] + SH_C3[1] * x * z * g[10] +
            SH_C3[2] * (4 * zz - xx - 3 * yy) * g[11] - SH_C3[3] * 6 * y * z * g[12] -
            SH_C3[4] * 2 * x * y * g[13] - SH_C3[5] * 2 * y * z * g[14] - SH_C3[6] * 6 * x * y * g[15];
    d[2] += SH_C3[1] * x * y * g[10] + SH_C3[2] * 8 * y * z * g[11] +
            SH_C3[3] * (6 * zz - 3 * xx - 3 * yy) * g[12] + SH_C3[4] * 8 * x * z * g[13] +
            SH_C3[5] * (xx - yy) * g[14];
}

// ----------------------------------------------------------------------------- cameras
struct VCam {
    float R[3][3], t[3], fx, fy, cx, cy, campos[3], limx_pos, limx_neg, limy_pos, limy_neg;
};

static inline VCam load_cam(const float* viewmat, const float* K, int W, int H) {
    VCam c;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) c.R[i][j] = viewmat[i * 4 + j];
        c.t[i] = viewmat[i * 4 + 3];
    }
    c.fx = K[0]; c.fy = K[4]; c.cx = K[2]; c.cy = K[5];
    for (int i = 0; i < 3; ++i) c.campos[i] = -(c.R[0][i] * c.t[0] + c.R[1][i] * c.t[1] + c.R[2][i] * c.t[2]);
    // Like 3DGS and gsplat, the Jacobian is taken at a point clamped to 1.3x the view.
    c.limx_pos = (W - c.cx) / c.fx + 0.3f * (0.5f * W / c.fx);
    c.limx_neg = c.cx / c.fx + 0.3f * (0.5f * W / c.fx);
    c.limy_pos = (H - c.cy) / c.fy + 0.3f * (0.5f * H / c.fy);
    c.limy_neg = c.cy / c.fy + 0.3f * (0.5f * H / c.fy);
    return c;
}

// Lanes past the end repeat the last element (their results are never stored).
template <int S>
static inline void gather(const float* base, int64_t i0, int lanes, vf out[S]) {
    for (int l = 0; l < L; ++l) {
        int64_t i = i0 + std::min(l, lanes - 1);
        for (int k = 0; k < S; ++k) out[k][l] = base[i * S + k];
    }
}

// ----------------------------------------------------------------------------- projection
// Intermediates of projecting L Gaussians into one camera, shared by forward and backward.
struct VProj {
    vf tx, ty, tz;       // camera-space centre (tz = 1 where culled by depth)
    vf qn[4], qlen;      // normalised quaternion and the input's length
    vf Rg[3][3];         // Gaussian rotation
    vf M[3][3];          // Rg * diag(scale)
    vf cc[3][3];         // camera-space covariance
    vf J00, J02, J11, J12, ux, uy;
    vi clamp_x, clamp_y;
    vf a, b, c;          // 2D covariance before the blur
    vf det_orig, det, comp;
    vi ok;               // inside the depth range with a positive-definite footprint
};

static inline VProj vproject(const VCam& cam, const vf m[3], const vf q[4], const vf s[3], float near_plane,
                             float far_plane, float eps2d, bool antialiased) {
    VProj P;
    P.tx = cam.R[0][0] * m[0] + cam.R[0][1] * m[1] + cam.R[0][2] * m[2] + cam.t[0];
    P.ty = cam.R[1][0] * m[0] + cam.R[1][1] * m[1] + cam.R[1][2] * m[2] + cam.t[1];
    vf tz = cam.R[2][0] * m[0] + cam.R[2][1] * m[1] + cam.R[2][2] * m[2] + cam.t[2];
    vi depth_ok = (tz > near_plane) & (tz < far_plane);
    P.tz = depth_ok ? tz : vsplat(1.0f);
    P.qlen = vmax(vsqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), vsplat(1e-12f));
    vf inv = 1.0f / P.qlen;
    for (int i = 0; i < 4; ++i) P.qn[i] = q[i] * inv;
    vf w = P.qn[0], x = P.qn[1], y = P.qn[2], z = P.qn[3];
    P.Rg[0][0] = 1.0f - 2.0f * (y * y + z * z); P.Rg[0][1] = 2.0f * (x * y - w * z); P.Rg[0][2] = 2.0f * (x * z + w * y);
    P.Rg[1][0] = 2.0f * (x * y + w * z); P.Rg[1][1] = 1.0f - 2.0f * (x * x + z * z); P.Rg[1][2] = 2.0f * (y * z - w * x);
    P.Rg[2][0] = 2.0f * (x * z - w * y); P.Rg[2][1] = 2.0f * (y * z + w * x); P.Rg[2][2] = 1.0f - 2.0f * (x * x + y * y);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.M[i][j] = P.Rg[i][j] * s[j];
    vf cov[3][3];
    for (int i = 0; i < 3; ++i)
        for (int j = i; j < 3; ++j) {
            cov[i][j] = P.M[i][0] * P.M[j][0] + P.M[i][1] * P.M[j][1] + P.M[i][2] * P.M[j][2];
            cov[j][i] = cov[i][j];
        }
    vf tmp[3][3];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) tmp[i][j] = cam.R[i][0] * cov[0][j] + cam.R[i][1] * cov[1][j] + cam.R[i][2] * cov[2][j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.cc[i][j] = tmp[i][0] * cam.R[j][0] + tmp[i][1] * cam.R[j][1] + tmp[i][2] * cam.R[j][2];
    vf u = P.tx / P.tz, v = P.ty / P.tz;
    P.clamp_x = (u < -cam.limx_neg) | (u > cam.limx_pos);
    P.clamp_y = (v < -cam.limy_neg) | (v > cam.limy_pos);
    P.ux = vmin(vmax(u, vsplat(-cam.limx_neg)), vsplat(cam.limx_pos));
    P.uy = vmin(vmax(v, vsplat(-cam.limy_neg)), vsplat(cam.limy_pos));
    P.J00 = cam.fx / P.tz;
    P.J02 = -cam.fx * P.ux / P.tz;
    P.J11 = cam.fy / P.tz;
    P.J12 = -cam.fy * P.uy / P.tz;
    // cov2d = J cc J^T with J = [[J00, 0, J02], [0, J11, J12]]
    vf JS0[3], JS1[3];
    for (int j = 0; j < 3; ++j) {
        JS0[j] = P.J00 * P.cc[0][j] + P.J02 * P.cc[2][j];
        JS1[j] = P.J11 * P.cc[1][j] + P.J12 * P.cc[2][j];
    }
    vf c00 = JS0[0] * P.J00 + JS0[2] * P.J02;
    vf c01 = JS0[1] * P.J11 + JS0[2] * P.J12;
    vf c10 = JS1[0] * P.J00 + JS1[2] * P.J02;
    vf c11 = JS1[1] * P.J11 + JS1[2] * P.J12;
    P.a = c00;
    P.b = 0.5f * (c01 + c10);
    P.c = c11;
    P.det_orig = P.a * P.c - P.b * P.b;
    vf det = (P.a + eps2d) * (P.c + eps2d) - P.b * P.b;
    P.ok = depth_ok & (det > 0.0f);
    P.det = P.ok ? det : vsplat(1.0f);
    P.comp = antialiased ? vsqrt(vmax(P.det_orig / P.det, vf{})) : vsplat(1.0f);
    return P;
}

}  // namespace

extern "C" {

// Outputs per (camera, Gaussian), flat index c * N + n:
//   means2d [2], conics [3], opac [1], depths [1], radii [2] (int32, 0 = culled),
//   colors [3] (only when sh_degree >= 0; coeffs is [N, K, 3]).
void sk_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opacities, const float* coeffs, int K, int sh_degree,
                    const float* viewmats, const float* Ks, int W, int H, float near_plane, float far_plane,
                    float eps2d, float radius_clip, int antialiased, float* means2d, float* conics, float* opac,
                    float* depths, int32_t* radii, float* colors, int nthreads) {
    constexpr int64_t CHUNK = 64 * L;
    int64_t per_cam = (N + CHUNK - 1) / CHUNK;
    parallel_for((int64_t)C * per_cam, nthreads, [&](int64_t item, int) {
        int c = (int)(item / per_cam);
        int64_t nb = (item % per_cam) * CHUNK, ne = std::min<int64_t>(N, nb + CHUNK);
        VCam cam = load_cam(viewmats + 16 * c, Ks + 9 * c, W, H);
        for (int64_t n0 = nb; n0 < ne; n0 += L) {
            int lanes = (int)std::min<int64_t>(L, ne - n0);
            vf m[3], q[4], s[3], o[1];
            gather<3>(means, n0, lanes, m);
            gather<4>(quats, n0, lanes, q);
            gather<3>(scales, n0, lanes, s);
            gather<1>(opacities, n0, lanes, o);
            VProj P = vproject(cam, m, q, s, near_plane, far_plane, eps2d, antialiased != 0);
            vf ap = P.a + eps2d, cp = P.c + eps2d;
            vf op = o[0] * P.comp;
            vf mx = cam.fx * P.tx / P.tz + cam.cx;
            vf my = cam.fy * P.ty / P.tz + cam.cy;
            vf extent = vmin(vsplat(MAX_EXTENT), vsqrt(vmax(2.0f * vlog(vmax(op, vsplat(ALPHA_THRESHOLD)) * 255.0f), vf{})));
            vf rx = vceil(extent * vsqrt(vmax(ap, vf{})));
            vf ry = vceil(extent * vsqrt(vmax(cp, vf{})));
            vi vis = P.ok & (op >= ALPHA_THRESHOLD) & ((rx > radius_clip) | (ry > radius_clip)) & (mx + rx > 0.0f) &
                     (mx - rx < (float)W) & (my + ry > 0.0f) & (my - ry < (float)H);
            for (int l = 0; l < lanes; ++l) {
                int64_t n = n0 + l, idx = (int64_t)c * N + n;
                bool ok = P.ok[l] != 0;
                means2d[2 * idx] = ok ? mx[l] : 0.0f;
                means2d[2 * idx + 1] = ok ? my[l] : 0.0f;
                conics[3 * idx] = ok ? cp[l] / P.det[l] : 0.0f;
                conics[3 * idx + 1] = ok ? -P.b[l] / P.det[l] : 0.0f;
                conics[3 * idx + 2] = ok ? ap[l] / P.det[l] : 0.0f;
                opac[idx] = ok ? op[l] : 0.0f;
                depths[idx] = ok ? P.tz[l] : 0.0f;
                radii[2 * idx] = vis[l] ? (int32_t)rx[l] : 0;
                radii[2 * idx + 1] = vis[l] ? (int32_t)ry[l] : 0;
                if (!colors) continue;
                colors[3 * idx] = colors[3 * idx + 1] = colors[3 * idx + 2] = 0.0f;
                if (!vis[l] || sh_degree < 0) continue;
                float d[3] = {m[0][l] - cam.campos[0], m[1][l] - cam.campos[1], m[2][l] - cam.campos[2]};
                float inv = 1.0f / std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
                float Y[16];
                sh_basis(sh_degree, d[0] * inv, d[1] * inv, d[2] * inv, Y);
                int nbases = (sh_degree + 1) * (sh_degree + 1);
                const float* co = coeffs + n * K * 3;
                for (int ch = 0; ch < 3; ++ch) {
                    float acc = 0.5f;
                    for (int k = 0; k < nbases; ++k) acc += Y[k] * co[3 * k + ch];
                    colors[3 * idx + ch] = std::max(acc, 0.0f);
                }
            }
        }
    });
}

// Gradients of the projection. Inputs are the gradients of means2d [2], conics [3],
// opac, colors [3] (may be null) and depths (may be null) for every (camera, Gaussian);
// outputs (accumulated over cameras, zero-initialised by the caller) are the gradients
// of means [N,3], quats [N,4], scales [N,3], opacities [N] and SH coefficients [N,K,3].
// Culled pairs contribute nothing.
void sk_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opacities, const float* coeffs, int K, int sh_degree, const float* viewmats,
                    const float* Ks, int W, int H, float near_plane, float far_plane, float eps2d, int antialiased,
                    const int32_t* radii, const float* colors, const float* g_means2d, const float* g_conics,
                    const float* g_opac, const float* g_colors, const float* g_depths, float* g_means,
                    float* g_quats, float* g_scales, float* g_opacities, float* g_coeffs, int nthreads) {
    (void)colors;
    // Work items are ranges of Gaussians; cameras are looped inside, so each output
    // row is written by one thread only.
    constexpr int64_t CHUNK = 64 * L;
    std::vector<VCam> cams(C);
    for (int c = 0; c < C; ++c) cams[c] = load_cam(viewmats + 16 * c, Ks + 9 * c, W, H);
    parallel_chunks(N, nthreads, CHUNK, [&](int64_t nb, int64_t ne, int) {
        for (int64_t n0 = nb; n0 < ne; n0 += L) {
            int lanes = (int)std::min<int64_t>(L, ne - n0);
            vf m[3], q[4], s[3], o[1];
            gather<3>(means, n0, lanes, m);
            gather<4>(quats, n0, lanes, q);
            gather<3>(scales, n0, lanes, s);
            gather<1>(opacities, n0, lanes, o);
            for (int c = 0; c < C; ++c) {
                const VCam& cam = cams[c];
                int64_t i0 = (int64_t)c * N + n0;
                vi vis = vi{};
                bool any = false;
                for (int l = 0; l < lanes; ++l) {
                    vis[l] = (radii[2 * (i0 + l)] != 0 || radii[2 * (i0 + l) + 1] != 0) ? -1 : 0;
                    any |= vis[l] != 0;
                }
                if (!any) continue;
                VProj P = vproject(cam, m, q, s, near_plane, far_plane, eps2d, antialiased != 0);
                vis &= P.ok;
                vf gm2[2], gcon[3], gop[1], gdep[1] = {vf{}};
                gather<2>(g_means2d, i0, lanes, gm2);
                gather<3>(g_conics, i0, lanes, gcon);
                gather<1>(g_opac, i0, lanes, gop);
                if (g_depths) gather<1>(g_depths, i0, lanes, gdep);
                vf gp0 = vf{}, gp1 = vf{}, gp2 = vf{};
                // opacity and the antialiasing compensation
                vf ga = vf{}, gb = vf{}, gc = vf{};
                vf g_o = gop[0] * P.comp;
                if (antialiased) {
                    vi has = P.comp > 0.0f;
                    vf comp = has ? P.comp : vsplat(1.0f);
                    vf gr = has ? gop[0] * o[0] * 0.5f / comp : vf{};  // comp = sqrt(det_orig / det)
                    vf gdo = gr / P.det, gdet = -gr * P.det_orig / (P.det * P.det);
                    ga += gdo * P.c + gdet * (P.c + eps2d);
                    gc += gdo * P.a + gdet * (P.a + eps2d);
                    gb += -2.0f * P.b * (gdo + gdet);
                }
                // conic = inverse of S = [[a', b], [b, c']]: dL/dS = -Q G Q
                {
                    vf QA = (P.c + eps2d) / P.det, QB = -P.b / P.det, QC = (P.a + eps2d) / P.det;
                    vf GA = gcon[0], GB = 0.5f * gcon[1], GC = gcon[2];
                    vf t00 = QA * GA + QB * GB, t01 = QA * GB + QB * GC;
                    vf t10 = QB * GA + QC * GB, t11 = QB * GB + QC * GC;
                    ga -= t00 * QA + t01 * QB;
                    gc -= t10 * QB + t11 * QC;
                    gb -= 2.0f * (t00 * QB + t01 * QC);
                }
                // cov2d = J cc J^T
                vf G00 = ga, G01 = 0.5f * gb, G11 = gc;
                vf JS0[3], JS1[3];
                for (int j = 0; j < 3; ++j) {
                    JS0[j] = P.J00 * P.cc[0][j] + P.J02 * P.cc[2][j];
                    JS1[j] = P.J11 * P.cc[1][j] + P.J12 * P.cc[2][j];
                }
                vf gJ00 = 2.0f * (G00 * JS0[0] + G01 * JS1[0]);
                vf gJ02 = 2.0f * (G00 * JS0[2] + G01 * JS1[2]);
                vf gJ11 = 2.0f * (G01 * JS0[1] + G11 * JS1[1]);
                vf gJ12 = 2.0f * (G01 * JS0[2] + G11 * JS1[2]);
                // gcc = J^T G J, J rows: j0 = (J00, 0, J02), j1 = (0, J11, J12)
                vf j0[3] = {P.J00, vf{}, P.J02}, j1[3] = {vf{}, P.J11, P.J12};
                vf gcc[3][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        gcc[i][j] = j0[i] * (G00 * j0[j] + G01 * j1[j]) + j1[i] * (G01 * j0[j] + G11 * j1[j]);
                vf tz = P.tz, tz2 = tz * tz, tz3 = tz2 * tz;
                gp2 += gJ00 * (-cam.fx / tz2) + gJ11 * (-cam.fy / tz2);
                gp0 += P.clamp_x ? vf{} : gJ02 * (-cam.fx / tz2);
                gp2 += P.clamp_x ? gJ02 * cam.fx * P.ux / tz2 : gJ02 * 2.0f * cam.fx * P.tx / tz3;
                gp1 += P.clamp_y ? vf{} : gJ12 * (-cam.fy / tz2);
                gp2 += P.clamp_y ? gJ12 * cam.fy * P.uy / tz2 : gJ12 * 2.0f * cam.fy * P.ty / tz3;
                // means2d and depth
                gp0 += gm2[0] * cam.fx / tz;
                gp1 += gm2[1] * cam.fy / tz;
                gp2 += -gm2[0] * cam.fx * P.tx / tz2 - gm2[1] * cam.fy * P.ty / tz2 + gdep[0];
                vf gmean[3];
                for (int i = 0; i < 3; ++i) gmean[i] = cam.R[0][i] * gp0 + cam.R[1][i] * gp1 + cam.R[2][i] * gp2;
                // world covariance: cc = Rv cov Rv^T  =>  gcov = Rv^T gcc Rv
                vf tmp[3][3], gcov[3][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        tmp[i][j] = cam.R[0][i] * gcc[0][j] + cam.R[1][i] * gcc[1][j] + cam.R[2][i] * gcc[2][j];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        gcov[i][j] = tmp[i][0] * cam.R[0][j] + tmp[i][1] * cam.R[1][j] + tmp[i][2] * cam.R[2][j];
                // cov = M M^T: dL/dM = (gcov + gcov^T) M
                vf gR[3][3], gs[3];
                for (int j = 0; j < 3; ++j) {
                    gs[j] = vf{};
                    for (int i = 0; i < 3; ++i) {
                        vf gM = (gcov[i][0] + gcov[0][i]) * P.M[0][j] + (gcov[i][1] + gcov[1][i]) * P.M[1][j] +
                                (gcov[i][2] + gcov[2][i]) * P.M[2][j];
                        gR[i][j] = gM * s[j];
                        gs[j] += gM * P.Rg[i][j];
                    }
                }
                vf w = P.qn[0], x = P.qn[1], y = P.qn[2], z = P.qn[3];
                vf gqn[4];
                gqn[0] = 2.0f * (-z * gR[0][1] + y * gR[0][2] + z * gR[1][0] - x * gR[1][2] - y * gR[2][0] + x * gR[2][1]);
                gqn[1] = 2.0f * (y * gR[0][1] + z * gR[0][2] + y * gR[1][0] - 2.0f * x * gR[1][1] - w * gR[1][2] +
                                 z * gR[2][0] + w * gR[2][1] - 2.0f * x * gR[2][2]);
                gqn[2] = 2.0f * (-2.0f * y * gR[0][0] + x * gR[0][1] + w * gR[0][2] + x * gR[1][0] + z * gR[1][2] -
                                 w * gR[2][0] + z * gR[2][1] - 2.0f * y * gR[2][2]);
                gqn[3] = 2.0f * (-2.0f * z * gR[0][0] - w * gR[0][1] + x * gR[0][2] + w * gR[1][0] -
                                 2.0f * z * gR[1][1] + y * gR[1][2] + x * gR[2][0] + y * gR[2][1]);
                vf dot = gqn[0] * w + gqn[1] * x + gqn[2] * y + gqn[3] * z;
                for (int l = 0; l < lanes; ++l) {
                    if (!vis[l]) continue;
                    int64_t n = n0 + l, idx = (int64_t)c * N + n;
                    for (int i = 0; i < 3; ++i) g_means[3 * n + i] += gmean[i][l];
                    for (int i = 0; i < 4; ++i) g_quats[4 * n + i] += (gqn[i][l] - P.qn[i][l] * dot[l]) / P.qlen[l];
                    for (int i = 0; i < 3; ++i) g_scales[3 * n + i] += gs[i][l];
                    g_opacities[n] += g_o[l];
                    if (!g_colors || sh_degree < 0) continue;
                    // SH colour -> coefficients and the view direction
                    float d[3] = {m[0][l] - cam.campos[0], m[1][l] - cam.campos[1], m[2][l] - cam.campos[2]};
                    float len = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
                    float dx = d[0] / len, dy = d[1] / len, dz = d[2] / len;
                    float Y[16];
                    sh_basis(sh_degree, dx, dy, dz, Y);
                    int nbases = (sh_degree + 1) * (sh_degree + 1);
                    const float* co = coeffs + n * K * 3;
                    float* gco = g_coeffs + n * K * 3;
                    float gcol[3];
                    for (int ch = 0; ch < 3; ++ch) {
                        float acc = 0.5f;
                        for (int k = 0; k < nbases; ++k) acc += Y[k] * co[3 * k + ch];
                        gcol[ch] = acc >= 0.0f ? g_colors[3 * idx + ch] : 0.0f;
                    }
                    float gY[16];
                    for (int k = 0; k < nbases; ++k) {
                        gY[k] = 0.0f;
                        for (int ch = 0; ch < 3; ++ch) {
                            gco[3 * k + ch] += Y[k] * gcol[ch];
                            gY[k] += co[3 * k + ch] * gcol[ch];
                        }
                    }
                    float gdir[3];
                    sh_basis_grad(sh_degree, dx, dy, dz, gY, gdir);
                    float dd = gdir[0] * dx + gdir[1] * dy + gdir[2] * dz;
                    g_means[3 * n] += (gdir[0] - dx * dd) / len;
                    g_means[3 * n + 1] += (gdir[1] - dy * dd) / len;
                    g_means[3 * n + 2] += (gdir[2] - dz * dd) / len;
                }
            }
        }
    });
}

}  // extern "C"

// ============================================================================ 2D splats
namespace {

// Everything compositing needs of one (camera, Gaussian), in one cache line.
struct alignas(64) Splat2D {
    float mx, my, A, B, Cc, o, thr, dy_max, inv_A;
    float color[MAX_CHANNELS];
    float pad[16 - 9 - MAX_CHANNELS];
};
static_assert(sizeof(Splat2D) == 64, "Splat2D is one cache line");

// Horizontal extent [xa, xb] of the alpha >= 1/255 ellipse on the row at height Y;
// false if the row misses it.
static inline bool row_span(const Splat2D& s, float Y, float& xa, float& xb) {
    float dy = Y - s.my;
    float disc = s.B * s.B * dy * dy - s.A * (s.Cc * dy * dy - 2.0f * s.thr);
    if (disc < 0) return false;
    float sq = std::sqrt(disc);
    xa = s.mx + (-s.B * dy - sq) * s.inv_A;
    xb = s.mx + (-s.B * dy + sq) * s.inv_A;
    return true;
}

static inline bool ellipse_touches_rect(float mx, float my, float A, float B, float Cc, float thr, float x0,
                                        float x1, float y0, float y1) {
    float dx0 = x0 - mx, dx1 = x1 - mx, dy0 = y0 - my, dy1 = y1 - my;
    if (dx0 <= 0 && dx1 >= 0 && dy0 <= 0 && dy1 >= 0) return true;
    auto q = [&](float dx, float dy) { return 0.5f * (A * dx * dx + Cc * dy * dy) + B * dx * dy; };
    float best = 1e30f;
    for (float dx : {dx0, dx1}) {
        float dy = std::min(std::max(-B * dx / Cc, dy0), dy1);
        best = std::min(best, q(dx, dy));
    }
    for (float dy : {dy0, dy1}) {
        float dx = std::min(std::max(-B * dy / A, dx0), dx1);
        best = std::min(best, q(dx, dy));
    }
    return best <= thr;
}

struct TileRange {
    int x0, x1, y0, y1;
};

static inline TileRange tile_range(const Splat2D& s, const int32_t* radii, int64_t idx, int tiles_x, int tiles_y) {
    float mx = s.mx, my = s.my;
    float rx = (float)radii[2 * idx], ry = (float)radii[2 * idx + 1];
    TileRange r;
    r.x0 = std::min(std::max((int)std::floor((mx - rx) / TILE), 0), tiles_x);
    r.x1 = std::min(std::max((int)std::ceil((mx + rx) / TILE), 0), tiles_x);
    r.y0 = std::min(std::max((int)std::floor((my - ry) / TILE), 0), tiles_y);
    r.y1 = std::min(std::max((int)std::ceil((my + ry) / TILE), 0), tiles_y);
    return r;
}

// Tiles of the bounding box whose pixel-centre rectangle the ellipse reaches, as a
// bitmask over the box (row-major), or ALL_TILES when the box has more than 64 tiles
// (then every tile is tested again where needed).
constexpr uint64_t ALL_TILES = ~uint64_t(0);

static inline uint64_t touched_tiles(const Splat2D& s, const TileRange& r, int W, int H) {
    int w = r.x1 - r.x0, h = r.y1 - r.y0;
    if (w <= 0 || h <= 0) return 0;
    if (w * h > 64) return ALL_TILES;
    if (w * h == 1) return 1;
    uint64_t mask = 0;
    for (int ty = r.y0; ty < r.y1; ++ty) {
        float y0 = ty * TILE + 0.5f, y1 = std::min(ty * TILE + TILE, H) - 0.5f;
        for (int tx = r.x0; tx < r.x1; ++tx) {
            float x0 = tx * TILE + 0.5f, x1 = std::min(tx * TILE + TILE, W) - 0.5f;
            if (ellipse_touches_rect(s.mx, s.my, s.A, s.B, s.Cc, s.thr, x0, x1, y0, y1))
                mask |= uint64_t(1) << ((ty - r.y0) * w + (tx - r.x0));
        }
    }
    return mask;
}

// Call f(tile) for every tile of the box the ellipse touches, given its cached mask.
template <class F>
static inline void for_each_tile(const Splat2D& s, const TileRange& r, uint64_t mask, int W, int H, int tiles_x,
                                 F&& f) {
    int w = r.x1 - r.x0;
    if (mask == ALL_TILES) {
        for (int ty = r.y0; ty < r.y1; ++ty) {
            float y0 = ty * TILE + 0.5f, y1 = std::min(ty * TILE + TILE, H) - 0.5f;
            for (int tx = r.x0; tx < r.x1; ++tx) {
                float x0 = tx * TILE + 0.5f, x1 = std::min(tx * TILE + TILE, W) - 0.5f;
                if (ellipse_touches_rect(s.mx, s.my, s.A, s.B, s.Cc, s.thr, x0, x1, y0, y1)) f(ty * tiles_x + tx);
            }
        }
        return;
    }
    while (mask) {
        int b = __builtin_ctzll(mask);
        mask &= mask - 1;
        f((r.y0 + b / w) * tiles_x + r.x0 + b % w);
    }
}

}  // namespace

extern "C" {

// splats [C * N] (16 floats each) from means2d, conics, opacities and colours [C*N, D]:
// adds the alpha >= 1/255 threshold on sigma (log(255 o), with a hair of slack so
// culling stays conservative), the ellipse's vertical half-extent and 1/A.
void sk_pack(int64_t CN, int D, const float* means2d, const float* conics, const float* opac, const float* colors,
             float* out, int nthreads) {
    Splat2D* splats = reinterpret_cast<Splat2D*>(out);
    parallel_chunks(CN, nthreads, 8192, [&](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g) {
            Splat2D s;
            s.mx = means2d[2 * g];
            s.my = means2d[2 * g + 1];
            s.A = conics[3 * g];
            s.B = conics[3 * g + 1];
            s.Cc = conics[3 * g + 2];
            s.o = opac[g];
            s.thr = std::log(std::max(s.o, ALPHA_THRESHOLD) / ALPHA_THRESHOLD) + 1e-4f;
            float det = s.A * s.Cc - s.B * s.B;
            s.dy_max = det > 0 ? std::sqrt(2.0f * s.thr * s.A / det) : 0.0f;
            s.inv_A = s.A > 0 ? 1.0f / s.A : 0.0f;
            for (int ch = 0; ch < MAX_CHANNELS; ++ch) s.color[ch] = ch < D ? colors[g * D + ch] : 0.0f;
            for (int i = 0; i < 16 - 9 - MAX_CHANNELS; ++i) s.pad[i] = 0.0f;
            splats[g] = s;
        }
    });
}

// Tile lists of all cameras: returns the number of (tile, Gaussian) pairs M and sets
// *out_ids to a malloc'ed int32 array [M] of flat (camera * N + Gaussian) indices,
// sorted by (camera, tile, depth); tile_offsets [C * T + 1] delimit the tiles.
// 1. every visible Gaussian's touched tiles are found once (exact ellipse test) and
//    kept as a bitmask over its box; 2. each camera's visible Gaussians are
//    radix-sorted by depth and their box records laid out in that order; 3. a counting
//    sort scatters them to tiles, streaming through the records, so every tile's list
//    is front to back. Free with sk_free.
struct BoxRecord {
    uint64_t mask;
    int32_t idx;
    int16_t tx0, ty0, tx1, ty1;
    int32_t pad;
};
static_assert(sizeof(BoxRecord) == 24, "BoxRecord layout");

int64_t sk_isect(int C, int N, const float* packed, const int32_t* radii, const float* depths, int W, int H,
                 int32_t** out_ids, int64_t* tile_offsets, int nthreads) {
    const Splat2D* splats = reinterpret_cast<const Splat2D*>(packed);
    int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    int64_t T = (int64_t)tiles_x * tiles_y;
    int64_t CN = (int64_t)C * N;
    std::vector<BoxRecord> boxes(CN);
    parallel_chunks(CN, nthreads, 8192, [&](int64_t b, int64_t e, int) {
        for (int64_t idx = b; idx < e; ++idx) {
            BoxRecord& rec = boxes[idx];
            rec.mask = 0;
            rec.idx = (int32_t)idx;
            if (radii[2 * idx] == 0 && radii[2 * idx + 1] == 0) continue;
            TileRange r = tile_range(splats[idx], radii, idx, tiles_x, tiles_y);
            rec.tx0 = (int16_t)r.x0; rec.ty0 = (int16_t)r.y0; rec.tx1 = (int16_t)r.x1; rec.ty1 = (int16_t)r.y1;
            rec.mask = touched_tiles(splats[idx], r, W, H);
        }
    });
    // depth order per camera, as a list of box records
    std::vector<std::vector<BoxRecord>> ordered(C);
    parallel_for(C, nthreads, [&](int64_t c, int) {
        std::vector<uint32_t> keys, ids, keys2, ids2;
        keys.reserve(N);
        ids.reserve(N);
        for (int64_t n = 0; n < N; ++n) {
            int64_t idx = c * N + n;
            if (boxes[idx].mask == 0) continue;
            uint32_t k;
            std::memcpy(&k, depths + idx, 4);
            keys.push_back(k);
            ids.push_back((uint32_t)n);
        }
        size_t m = keys.size();
        keys2.resize(m);
        ids2.resize(m);
        for (int shift = 0; shift < 32; shift += 8) {
            size_t hist[257] = {0};
            for (size_t i = 0; i < m; ++i) hist[((keys[i] >> shift) & 255) + 1]++;
            for (int i = 0; i < 256; ++i) hist[i + 1] += hist[i];
            for (size_t i = 0; i < m; ++i) {
                size_t pos = hist[(keys[i] >> shift) & 255]++;
                keys2[pos] = keys[i];
                ids2[pos] = ids[i];
            }
            keys.swap(keys2);
            ids.swap(ids2);
        }
        auto& out = ordered[c];
        out.resize(m);
        for (size_t i = 0; i < m; ++i) out[i] = boxes[c * N + ids[i]];
    });
    auto visit = [&](const BoxRecord& rec, auto&& f) {
        TileRange r{rec.tx0, rec.tx1, rec.ty0, rec.ty1};
        for_each_tile(splats[rec.idx], r, rec.mask, W, H, tiles_x, f);
    };
    // work items = (camera, chunk of its depth order); count pairs per tile
    int nchunks = std::max(1, nthreads * 4);
    int64_t items = (int64_t)C * nchunks;
    std::vector<std::vector<int64_t>> cnt(items, std::vector<int64_t>(T, 0));
    auto bounds = [&](int64_t item, size_t& b, size_t& e) {
        int64_t c = item / nchunks, k = item % nchunks;
        size_t m = ordered[c].size();
        b = m * k / nchunks;
        e = m * (k + 1) / nchunks;
    };
    parallel_for(items, nthreads, [&](int64_t item, int) {
        const auto& recs = ordered[item / nchunks];
        size_t b, e;
        bounds(item, b, e);
        auto& cc = cnt[item];
        for (size_t i = b; i < e; ++i) visit(recs[i], [&](int t) { cc[t]++; });
    });
    // offsets of every tile, then of every item inside each tile
    int64_t run = 0;
    for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < T; ++t) {
            tile_offsets[c * T + t] = run;
            for (int k = 0; k < nchunks; ++k) {
                int64_t v = cnt[c * nchunks + k][t];
                cnt[c * nchunks + k][t] = run;  // becomes this item's write position
                run += v;
            }
        }
    tile_offsets[C * T] = run;
    int32_t* ids = (int32_t*)std::malloc(sizeof(int32_t) * std::max<int64_t>(run, 1));
    parallel_for(items, nthreads, [&](int64_t item, int) {
        const auto& recs = ordered[item / nchunks];
        size_t b, e;
        bounds(item, b, e);
        auto& pos = cnt[item];
        for (size_t i = b; i < e; ++i) {
            int32_t idx = recs[i].idx;
            visit(recs[i], [&](int t) { ids[pos[t]++] = idx; });
        }
    });
    *out_ids = ids;
    return run;
}

void sk_free(void* p) { std::free(p); }

}  // extern "C"

// ============================================================================ compositing
namespace {

// alpha of one Gaussian on one vector of pixels, with the skip rule (valid mask).
struct VAlpha {
    vf alpha, raw, e, dx;
    vi valid;
};

static inline VAlpha valpha(const Splat2D& s, const vf& xs, float dy) {
    VAlpha a;
    a.dx = xs - s.mx;
    vf sigma = 0.5f * (s.A * a.dx * a.dx + s.Cc * dy * dy) + s.B * a.dx * dy;
    a.e = vexp_neg(-sigma);
    a.raw = s.o * a.e;
    a.alpha = a.raw < ALPHA_MAX ? a.raw : vsplat(ALPHA_MAX);
    a.valid = (sigma >= 0.0f) & (a.alpha >= ALPHA_THRESHOLD);
    return a;
}

template <int D>
void raster_fwd(int C, int W, int H, const Splat2D* splats, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                float* out_img, float* out_alpha, float* out_T, int32_t* out_last, uint64_t* vecmask,
                int nthreads) {
    int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    int64_t T_per_cam = (int64_t)tiles_x * tiles_y;
    int64_t ntiles = C * T_per_cam;
    std::vector<int64_t> order(ntiles);
    for (int64_t i = 0; i < ntiles; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return tile_offsets[a + 1] - tile_offsets[a] > tile_offsets[b + 1] - tile_offsets[b];
    });
    parallel_for(ntiles, nthreads, [&](int64_t oi, int) {
        int64_t tile = order[oi];
        int c = (int)(tile / T_per_cam);
        int t = (int)(tile % T_per_cam);
        int x0 = (t % tiles_x) * TILE, y0 = (t / tiles_x) * TILE;
        int rows_in = std::min(TILE, H - y0);
        vf xs[NV];
        vi outside_x[NV];
        for (int j = 0; j < NV; ++j)
            for (int l = 0; l < L; ++l) {
                int x = j * L + l;
                xs[j][l] = x0 + x + 0.5f;
                outside_x[j][l] = (x0 + x >= W) ? -1 : 0;
            }
        vf T[TILE][NV], acc[D][TILE][NV];
        vi done[TILE][NV], lastk[TILE][NV];
        for (int r = 0; r < TILE; ++r)
            for (int j = 0; j < NV; ++j) {
                T[r][j] = vsplat(1.0f);
                done[r][j] = r < rows_in ? outside_x[j] : vi{} - 1;
                lastk[r][j] = vi{} - 1;
                for (int ch = 0; ch < D; ++ch) acc[ch][r][j] = vf{};
            }
        bool all_done = false;
        for (int64_t k = tile_offsets[tile]; k < tile_offsets[tile + 1] && !all_done; ++k) {
            int64_t g = ids[k];
            const Splat2D s = splats[g];
            const float* col = s.color;
            int r0 = std::max(0, (int)std::floor(s.my - s.dy_max - y0 - 0.5f));
            int r1 = std::min(rows_in - 1, (int)std::ceil(s.my + s.dy_max - y0 - 0.5f));
            uint64_t mask = 0;
            vi any_stop = vi{};
            vi kv = vi{} + (int32_t)k;
            for (int r = r0; r <= r1; ++r) {
                float Y = y0 + r + 0.5f, xa, xb;
                if (!row_span(s, Y, xa, xb)) continue;
                // vectors of this row holding a pixel centre inside [xa, xb] (a superset:
                // the exact per-pixel rule is applied inside)
                int j0 = std::max(0, (int)std::ceil((xa - x0 - L + 0.5f) / L - 1e-4f));
                int j1 = std::min(NV - 1, (int)std::floor((xb - x0 - 0.5f) / L + 1e-4f));
                float dy = Y - s.my;
                for (int j = j0; j <= j1; ++j) {
                    VAlpha a = valpha(s, xs[j], dy);
                    vi valid = a.valid & (done[r][j] == 0);
                    vf next_T = T[r][j] * (1.0f - a.alpha);
                    vi stop = valid & (next_T <= T_MIN);
                    vi contrib = valid & (next_T > T_MIN);
                    vf w = contrib ? a.alpha * T[r][j] : vf{};
                    for (int ch = 0; ch < D; ++ch) acc[ch][r][j] += w * col[ch];
                    T[r][j] = contrib ? next_T : T[r][j];
                    lastk[r][j] = contrib ? kv : lastk[r][j];
                    done[r][j] |= stop;
                    any_stop |= stop;
                    if (vbits(contrib)) mask |= uint64_t(1) << (r * NV + j);
                }
            }
            vecmask[k] = mask;
            if (vany(any_stop)) {
                vi all = vi{} - 1;
                for (int r = 0; r < TILE; ++r)
                    for (int j = 0; j < NV; ++j) all &= done[r][j];
                all_done = vall(all);
            }
        }
        const float* bg = backgrounds ? backgrounds + c * D : nullptr;
        for (int r = 0; r < rows_in; ++r) {
            int py = y0 + r;
            for (int x = 0; x < TILE && x0 + x < W; ++x) {
                int64_t pix = ((int64_t)c * H + py) * W + x0 + x;
                int j = x / L, l = x % L;
                float Tp = T[r][j][l];
                for (int ch = 0; ch < D; ++ch) out_img[pix * D + ch] = acc[ch][r][j][l] + (bg ? Tp * bg[ch] : 0.0f);
                out_alpha[pix] = 1.0f - Tp;
                out_T[pix] = Tp;
                out_last[pix] = lastk[r][j][l];
            }
        }
    });
}

template <int D>
void raster_bwd(int C, int N, int W, int H, const Splat2D* splats, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                const float* T_final, const int32_t* last, const uint64_t* vecmask, const float* g_img,
                const float* g_alpha, float* g_means2d, float* g_conics, float* g_colors, float* g_opac,
                int nthreads) {
    int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    int64_t T_per_cam = (int64_t)tiles_x * tiles_y;
    int64_t ntiles = C * T_per_cam;
    int64_t CN = (int64_t)C * N;
    constexpr int G = 6 + D;  // per Gaussian: mx, my, A, B, C, o, colour[D]
    // Each (tile, Gaussian) pair writes its gradient to its own slot; slots are then
    // summed per Gaussian in pair order, so results do not depend on which thread ran
    // which tile.
    int64_t M = tile_offsets[ntiles];
    std::unique_ptr<float[]> pair_grad(new float[std::max<int64_t>(M, 1) * G]);
    std::vector<int64_t> order(ntiles);
    for (int64_t i = 0; i < ntiles; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return tile_offsets[a + 1] - tile_offsets[a] > tile_offsets[b + 1] - tile_offsets[b];
    });
    parallel_for(ntiles, nthreads, [&](int64_t oi, int) {
        int64_t tile = order[oi];
        int c = (int)(tile / T_per_cam);
        int t = (int)(tile % T_per_cam);
        int x0 = (t % tiles_x) * TILE, y0 = (t / tiles_x) * TILE;
        int rows_in = std::min(TILE, H - y0);
        const float* bg = backgrounds ? backgrounds + c * D : nullptr;
        vf xs[NV];
        for (int j = 0; j < NV; ++j)
            for (int l = 0; l < L; ++l) xs[j][l] = x0 + j * L + l + 0.5f;
        vf T[TILE][NV], S[D][TILE][NV], gC[D][TILE][NV], Kp[TILE][NV];
        vi lastk[TILE][NV];
        int32_t max_last = -1;
        for (int r = 0; r < TILE; ++r)
            for (int j = 0; j < NV; ++j) {
                vf dot_bg = vf{}, ga = vf{};
                T[r][j] = vsplat(1.0f);
                lastk[r][j] = vi{} - 1;
                for (int ch = 0; ch < D; ++ch) {
                    S[ch][r][j] = vf{};
                    gC[ch][r][j] = vf{};
                }
                for (int l = 0; l < L; ++l) {
                    int x = j * L + l;
                    if (r >= rows_in || x0 + x >= W) continue;
                    int64_t pix = ((int64_t)c * H + y0 + r) * W + x0 + x;
                    T[r][j][l] = T_final[pix];
                    lastk[r][j][l] = last[pix];
                    max_last = std::max(max_last, last[pix]);
                    for (int ch = 0; ch < D; ++ch) {
                        gC[ch][r][j][l] = g_img[pix * D + ch];
                        dot_bg[l] += g_img[pix * D + ch] * (bg ? bg[ch] : 0.0f);
                    }
                    ga[l] = g_alpha ? g_alpha[pix] : 0.0f;
                }
                // d(colour, alpha) / d alpha_k has a part that depends only on the pixel:
                // (sum_ch gC bg - g_alpha) * T_final / (1 - alpha_k).
                Kp[r][j] = (dot_bg - ga) * T[r][j];
            }
        for (int64_t k = tile_offsets[tile + 1] - 1; k >= tile_offsets[tile]; --k) {
            uint64_t mask = k <= max_last ? vecmask[k] : 0;
            float* out = pair_grad.get() + k * G;
            if (!mask) {
                for (int i = 0; i < G; ++i) out[i] = 0.0f;
                continue;
            }
            int64_t g = ids[k];
            const Splat2D s = splats[g];
            const float* col = s.color;
            vf v_mx = vf{}, v_my = vf{}, v_A = vf{}, v_B = vf{}, v_C = vf{}, v_o = vf{}, v_col[D];
            for (int ch = 0; ch < D; ++ch) v_col[ch] = vf{};
            vi kv = vi{} + (int32_t)k;
            while (mask) {
                int bit = __builtin_ctzll(mask);
                mask &= mask - 1;
                int r = bit / NV, j = bit % NV;
                float dy = y0 + r + 0.5f - s.my;
                {
                    VAlpha a = valpha(s, xs[j], dy);
                    vi valid = a.valid & (kv <= lastk[r][j]);
                    vf one_m = 1.0f - a.alpha;
                    vf Tk = T[r][j] / one_m;
                    vf dot = vf{}, sdot = vf{};
                    for (int ch = 0; ch < D; ++ch) {
                        dot += gC[ch][r][j] * col[ch];
                        sdot += gC[ch][r][j] * S[ch][r][j];
                    }
                    vf dalpha = dot * Tk - (sdot + Kp[r][j]) / one_m;
                    vi free_alpha = valid & (a.raw < ALPHA_MAX);
                    vf gsig = free_alpha ? -dalpha * a.alpha : vf{};
                    v_o += free_alpha ? dalpha * a.e : vf{};
                    v_A += gsig * 0.5f * a.dx * a.dx;
                    v_B += gsig * a.dx * dy;
                    v_C += gsig * (0.5f * dy * dy);
                    v_mx -= gsig * (s.A * a.dx + s.B * dy);
                    v_my -= gsig * (s.B * a.dx + s.Cc * dy);
                    vf wv = valid ? a.alpha * Tk : vf{};
                    for (int ch = 0; ch < D; ++ch) {
                        v_col[ch] += wv * gC[ch][r][j];
                        S[ch][r][j] += wv * col[ch];
                    }
                    T[r][j] = valid ? Tk : T[r][j];
                }
            }
            out[0] = vsum(v_mx);
            out[1] = vsum(v_my);
            out[2] = vsum(v_A);
            out[3] = vsum(v_B);
            out[4] = vsum(v_C);
            out[5] = vsum(v_o);
            for (int ch = 0; ch < D; ++ch) out[6 + ch] = vsum(v_col[ch]);
        }
    });
    // Sum the pair slots per Gaussian: fixed chunks of pairs into per-chunk buffers,
    // then the buffers in chunk order.
    int nchunks = std::max(1, std::min<int>(nthreads, (int)((M + 65535) / 65536)));
    std::vector<std::vector<float>> bufs(nchunks);
    parallel_for(nchunks, nthreads, [&](int64_t ci, int) {
        auto& buf = bufs[ci];
        buf.assign(CN * G, 0.0f);
        int64_t b = M * ci / nchunks, e = M * (ci + 1) / nchunks;
        for (int64_t k = b; k < e; ++k) {
            const float* src = pair_grad.get() + k * G;
            float* dst = buf.data() + (int64_t)ids[k] * G;
            for (int i = 0; i < G; ++i) dst[i] += src[i];
        }
    });
    parallel_chunks(CN, nthreads, 8192, [&](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g) {
            float acc[G] = {0};
            for (auto& buf : bufs)
                for (int i = 0; i < G; ++i) acc[i] += buf[g * G + i];
            g_means2d[2 * g] = acc[0];
            g_means2d[2 * g + 1] = acc[1];
            g_conics[3 * g] = acc[2];
            g_conics[3 * g + 1] = acc[3];
            g_conics[3 * g + 2] = acc[4];
            g_opac[g] = acc[5];
            for (int ch = 0; ch < D; ++ch) g_colors[g * D + ch] = acc[6 + ch];
        }
    });
}

}  // namespace

extern "C" {

#define SK_DISPATCH(D, CALL)                    \
    switch (D) {                                \
        case 1: { constexpr int DD = 1; CALL; break; } \
        case 2: { constexpr int DD = 2; CALL; break; } \
        case 3: { constexpr int DD = 3; CALL; break; } \
        case 4: { constexpr int DD = 4; CALL; break; } \
        default: return -1;                     \
    }

int sk_raster_fwd(int C, int W, int H, int D, const float* packed, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                  float* out_img, float* out_alpha, float* out_T, int32_t* out_last, uint64_t* vecmask,
                  int nthreads) {
    const Splat2D* splats = reinterpret_cast<const Splat2D*>(packed);
    SK_DISPATCH(D, raster_fwd<DD>(C, W, H, splats, backgrounds, ids, tile_offsets,
                                  out_img, out_alpha, out_T, out_last, vecmask, nthreads));
    return 0;
}

int sk_raster_bwd(int C, int N, int W, int H, int D, const float* packed, const float* backgrounds, const int32_t* ids,
                  const int64_t* tile_offsets, const float* T_final, const int32_t* last, const uint64_t* vecmask,
                  const float* g_img, const float* g_alpha, float* g_means2d, float* g_conics, float* g_colors,
                  float* g_opac, int nthreads) {
    const Splat2D* splats = reinterpret_cast<const Splat2D*>(packed);
    SK_DISPATCH(D, raster_bwd<DD>(C, N, W, H, splats, backgrounds, ids, tile_offsets,
                                  T_final, last, vecmask, g_img, g_alpha, g_means2d, g_conics, g_colors, g_opac,
                                  nthreads));
    return 0;
}

}  // extern "C"
