// splatkit compiled CPU rasterizer: projection, SH, binning, compositing, and their
// backward passes, for 3D Gaussians (3DGS) and, in the last section, 2D Gaussian
// surfels (2DGS). Plain C++17 with OpenMP and GCC/Clang vector extensions; no PyTorch
// headers (the Python side passes raw pointers through ctypes), so it builds in seconds. The maths is the reference's
// (splatkit/renderer/projection.py and backends/torch_ref.py; projection_2dgs.py and
// backends/torch_ref_2dgs.py for surfels); tests compare the two forward and backward.
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
#include <vector>

#include "parallel.h"
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
// Per pixel, the forward pass records the pair at which it stopped (the first one it did
// not composite), or this; the backward pass differentiates the pairs before it.
constexpr int32_t NEVER_STOPPED = INT32_MAX;
constexpr float MAX_EXTENT = 3.33f;
constexpr int MAX_CHANNELS = 4;

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
// a < b ? a : b and a > b ? a : b, in one instruction where the vector extensions give a
// compare and a blend: x86's minps / maxps are defined exactly so (the second operand also
// wherever either is NaN, so vmax(x, c) is never NaN for a constant c)
static inline vf vmin(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
    return (vf)_mm256_min_ps((__m256)a, (__m256)b);
#else
    return a < b ? a : b;
#endif
}
static inline vf vmax(vf a, vf b) {
#if defined(__AVX512F__)
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(__AVX__)
    return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return a > b ? a : b;
#endif
}

static inline vf vsqrt(vf x) {
#if defined(__AVX512F__)
    return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
    return (vf)_mm256_sqrt_ps((__m256)x);
#else
    vf r;
    for (int i = 0; i < L; ++i) r[i] = __builtin_sqrtf(x[i]);
    return r;
#endif
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
    // exp(x) = 2^r 2^u with r = round(x log2 e) and u in [-1/2, 1/2]; 2^u by its Taylor
    // series to u^6 (relative error ~1e-7). Clamped so results (and products with
    // opacities) stay normal floats.
    vf t = vmax(x, vsplat(-80.0f)) * 1.4426950408889634f;
    vf r = (t + 12582912.0f) - 12582912.0f;
    vf u = t - r;
    constexpr float c1 = 0.6931471805599453f, c2 = c1 * c1 / 2, c3 = c2 * c1 / 3, c4 = c3 * c1 / 4,
                    c5 = c4 * c1 / 5, c6 = c5 * c1 / 6;
    vf p = 1.0f + u * (c1 + u * (c2 + u * (c3 + u * (c4 + u * (c5 + u * c6)))));
    vi bits = (__builtin_convertvector(r, vi) + 127) << 23;
    return p * (vf)bits;
}

// 2^t for t <= 127 (alpha's exponent in base 2), clamped below at -126 so results stay
// normal floats; NaN gives 2^-126. Adding 1.5 * 2^23 + 127 rounds t to the nearest
// integer n and leaves n + 127 in the low mantissa bits, whence both n and the exponent
// field of 2^n; 2^(t - n) by a degree-5 polynomial fitted for relative error on
// [-1/2, 1/2] (2.4e-7 in float32, about the Taylor degree-6 series' error).
static inline vf vexp2(vf t) {
    t = vmax(t, vsplat(-126.0f));
    constexpr float MAGIC = 12582912.0f + 127.0f;
    const vf y = t + MAGIC;
    const vf u = t - (y - MAGIC);
    const vf p = 1.00000012f + u * (0.693146944f + u * (0.240221202f + u * (0.0555071309f + u * (0.00967554189f + u * 0.00132764725f))));
    return p * (vf)((vi)y << 23);
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

#if defined(__AVX__)
// A vector as 8 lanes: itself with AVX, lanes l and l + 8 added with AVX-512.
static inline __m256 as8(vf v) {
#if defined(__AVX512F__)
    const __m512 x = (__m512)v;
    return _mm256_add_ps(_mm512_castps512_ps256(x), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
#else
    return (__m256)v;
#endif
}

// out[i] = the sum of h[i]'s 8 lanes for i < 8, by a transpose of pairwise sums (ten
// instructions, where one vector's lanes summed in turn take about ten each).
static inline void sums8(const __m256* h, float* out) {
    const __m256 t0 = _mm256_hadd_ps(h[0], h[1]), t1 = _mm256_hadd_ps(h[2], h[3]);
    const __m256 t2 = _mm256_hadd_ps(h[4], h[5]), t3 = _mm256_hadd_ps(h[6], h[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    // u0 = (h0..h3 low-half sums, h0..h3 high-half sums), u1 the same for h4..h7
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
}
#endif

// The sum of a vector's lanes, in a fixed order (AVX-512: as8, then halves and pairs).
static inline float vsum(vf v) {
#if defined(__AVX512F__)
    const __m256 x = as8(v);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_hadd_ps(s, s));
#else
    float s = 0;
    for (int i = 0; i < L; ++i) s += v[i];
    return s;
#endif
}

// out[i] = the sum of v[i]'s lanes, for K vectors; with AVX (and AVX-512, through as8)
// eight at a time by sums8. The order of the additions is fixed either way.
template <int K>
static inline void vsums(const vf* v, float* out) {
    int i = 0;
#if defined(__AVX__)
    for (; i + 8 <= K; i += 8) {
        __m256 h[8];
        for (int j = 0; j < 8; ++j) h[j] = as8(v[i + j]);
        sums8(h, out + i);
    }
#endif
    for (; i < K; ++i) out[i] = vsum(v[i]);
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

// One Gaussian's SH coefficients come as two pointers, as the model keeps them: band 0
// (c0, 3 floats) and the bands above it (cN, 3 floats per basis function from basis 1 on;
// for a joined [K, 3] row, c0 = row and cN = row + 3). They are gathered into one local
// [nbases, 3] row, so the sums below are the same instructions for either layout. The
// copy's length is a constant per degree: a copy of run-time length becomes a call to
// memcpy (and a vzeroupper) per Gaussian.
template <int NB>
static inline void sh_gather_n(const float* c0, const float* cN, float* co) {
    co[0] = c0[0];
    co[1] = c0[1];
    co[2] = c0[2];
    for (int i = 3; i < 3 * NB; ++i) co[i] = cN[i - 3];
}
static inline void sh_gather(int nbases, const float* c0, const float* cN, float* co) {
    switch (nbases) {
        case 1: sh_gather_n<1>(c0, cN, co); break;
        case 4: sh_gather_n<4>(c0, cN, co); break;
        case 9: sh_gather_n<9>(c0, cN, co); break;
        default: sh_gather_n<16>(c0, cN, co); break;
    }
}

// SH colour of one Gaussian seen along d (not normalised): 0.5 + sum_k Y_k c_k, clamped at 0.
static inline void sh_color(int degree, const float d[3], const float* c0, const float* cN, float out[3]) {
    float inv = 1.0f / std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
    float Y[16];
    sh_basis(degree, d[0] * inv, d[1] * inv, d[2] * inv, Y);
    int nbases = (degree + 1) * (degree + 1);
    float co[48];
    sh_gather(nbases, c0, cN, co);
    for (int ch = 0; ch < 3; ++ch) {
        float acc = 0.5f;
        for (int k = 0; k < nbases; ++k) acc += Y[k] * co[3 * k + ch];
        out[ch] = std::max(acc, 0.0f);
    }
}

// Backward of sh_color: adds the gradients of the coefficients to g0 (band 0) and gN (the
// bands above, laid out as cN) and of the Gaussian's centre (through the view direction d)
// to gmean.
static inline void sh_color_bwd(int degree, const float d[3], const float* c0, const float* cN, const float g[3],
                                float* g0, float* gN, float gmean[3]) {
    float len = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
    float dx = d[0] / len, dy = d[1] / len, dz = d[2] / len;
    float Y[16];
    sh_basis(degree, dx, dy, dz, Y);
    int nbases = (degree + 1) * (degree + 1);
    float co[48];
    sh_gather(nbases, c0, cN, co);
    float gcol[3];
    for (int ch = 0; ch < 3; ++ch) {
        float acc = 0.5f;
        for (int k = 0; k < nbases; ++k) acc += Y[k] * co[3 * k + ch];
        gcol[ch] = acc >= 0.0f ? g[ch] : 0.0f;
    }
    float gY[16];
    for (int k = 0; k < nbases; ++k) {
        gY[k] = 0.0f;
        float* gk = k == 0 ? g0 : gN + 3 * (k - 1);
        for (int ch = 0; ch < 3; ++ch) {
            gk[ch] += Y[k] * gcol[ch];
            gY[k] += co[3 * k + ch] * gcol[ch];
        }
    }
    float gdir[3];
    sh_basis_grad(degree, dx, dy, dz, gY, gdir);
    float dd = gdir[0] * dx + gdir[1] * dy + gdir[2] * dz;
    gmean[0] += (gdir[0] - dx * dd) / len;
    gmean[1] += (gdir[1] - dy * dd) / len;
    gmean[2] += (gdir[2] - dz * dd) / len;
}

// ----------------------------------------------------------------------------- rotations
// Templates over the number type: float vectors for the 3DGS projection, doubles for
// the surfel projection.

// Rotation matrix of a unit wxyz quaternion.
template <class T>
static inline void quat_to_rotmat(const T q[4], T R[3][3]) {
    T w = q[0], x = q[1], y = q[2], z = q[3];
    R[0][0] = 1.0f - 2.0f * (y * y + z * z); R[0][1] = 2.0f * (x * y - w * z); R[0][2] = 2.0f * (x * z + w * y);
    R[1][0] = 2.0f * (x * y + w * z); R[1][1] = 1.0f - 2.0f * (x * x + z * z); R[1][2] = 2.0f * (y * z - w * x);
    R[2][0] = 2.0f * (x * z - w * y); R[2][1] = 2.0f * (y * z + w * x); R[2][2] = 1.0f - 2.0f * (x * x + y * y);
}

// Gradient with respect to the unit quaternion q of a loss whose gradient with respect
// to quat_to_rotmat(q) is gR (the caller projects it through the normalisation).
template <class T>
static inline void rotmat_grad_to_quat(const T q[4], const T gR[3][3], T gq[4]) {
    T w = q[0], x = q[1], y = q[2], z = q[3];
    gq[0] = 2.0f * (-z * gR[0][1] + y * gR[0][2] + z * gR[1][0] - x * gR[1][2] - y * gR[2][0] + x * gR[2][1]);
    gq[1] = 2.0f * (y * gR[0][1] + z * gR[0][2] + y * gR[1][0] - 2.0f * x * gR[1][1] - w * gR[1][2] +
                    z * gR[2][0] + w * gR[2][1] - 2.0f * x * gR[2][2]);
    gq[2] = 2.0f * (-2.0f * y * gR[0][0] + x * gR[0][1] + w * gR[0][2] + x * gR[1][0] + z * gR[1][2] -
                    w * gR[2][0] + z * gR[2][1] - 2.0f * y * gR[2][2]);
    gq[3] = 2.0f * (-2.0f * z * gR[0][0] - w * gR[0][1] + x * gR[0][2] + w * gR[1][0] -
                    2.0f * z * gR[1][1] + y * gR[1][2] + x * gR[2][0] + y * gR[2][1]);
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
    quat_to_rotmat(P.qn, P.Rg);
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
//   colors [3] (only when sh_degree >= 0). Gaussian n's SH coefficients are band 0 at
//   sh0 + n * stride0 and the bands above at shN + n * strideN (see sh_gather): the model's
//   sh0 [N, 1, 3] and shN [N, KN, 3] (strides 3 and 3 KN), or one [N, K, 3] tensor
//   (sh0 = coeffs, shN = coeffs + 3, both strides 3 K).
void sk_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opacities, const float* sh0, const float* shN, int64_t stride0,
                    int64_t strideN, int sh_degree,
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
                sh_color(sh_degree, d, sh0 + n * stride0, shN ? shN + n * strideN : nullptr, colors + 3 * idx);
            }
        }
    });
}

// Gradients of the projection. Inputs are the gradients of means2d [2], conics [3],
// opac, colors [3] (may be null) and depths (may be null) for every (camera, Gaussian);
// outputs (summed over cameras; every element written) are the gradients of means [N,3],
// quats [N,4], scales [N,3], opacities [N] and SH coefficients: g_sh0 and g_shN laid out
// as sh0 and shN (strides as in sk_project_fwd; rows are dense: g_sh0's stride0 floats and
// g_shN's strideN = 3 KN floats per Gaussian, every one written).
// Culled pairs contribute nothing.
void sk_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opacities, const float* sh0, const float* shN, int64_t stride0,
                    int64_t strideN, int KN, int sh_degree, const float* viewmats,
                    const float* Ks, int W, int H, float near_plane, float far_plane, float eps2d, int antialiased,
                    const int32_t* radii, const float* colors, const float* g_means2d, const float* g_conics,
                    const float* g_opac, const float* g_colors, const float* g_depths, float* g_means,
                    float* g_quats, float* g_scales, float* g_opacities, float* g_sh0, float* g_shN,
                    float* g_viewmats, int nthreads) {
    (void)colors;
    // Work items are ranges of Gaussians; cameras are looped inside, so each output
    // row is written by one thread only.
    constexpr int64_t CHUNK = 64 * L;
    std::vector<VCam> cams(C);
    for (int c = 0; c < C; ++c) cams[c] = load_cam(viewmats + 16 * c, Ks + 9 * c, W, H);
    // With g_viewmats: the gradient of each camera's [R | t], summed per chunk of Gaussians
    // (in double) and then over the chunks in order, so it never depends on the threads.
    const int64_t nchunks = (N + CHUNK - 1) / CHUNK;
    std::vector<double> vacc(g_viewmats ? nchunks * C * 12 : 0, 0.0);
    parallel_chunks(N, nthreads, CHUNK, [&](int64_t nb, int64_t ne, int) {
        double* chunk_acc = g_viewmats ? vacc.data() + (nb / CHUNK) * C * 12 : nullptr;
        // the chunk's output rows start at zero (here, while they are about to be used,
        // instead of a pass over all of them before the call)
        std::fill(g_means + 3 * nb, g_means + 3 * ne, 0.0f);
        std::fill(g_quats + 4 * nb, g_quats + 4 * ne, 0.0f);
        std::fill(g_scales + 3 * nb, g_scales + 3 * ne, 0.0f);
        std::fill(g_opacities + nb, g_opacities + ne, 0.0f);
        // the chunk's SH gradient rows are one contiguous range in either layout (one
        // [N, K, 3] tensor, g_shN = g_sh0 + 3; or g_sh0 [N, 3] and g_shN [N, KN, 3]): one
        // fill each, not a call per row
        if (g_sh0) {
            std::fill(g_sh0 + nb * stride0, g_sh0 + ne * stride0, 0.0f);
            if (g_shN && g_shN != g_sh0 + 3) std::fill(g_shN + nb * strideN, g_shN + ne * strideN, 0.0f);
        }
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
                vf gqn[4];
                rotmat_grad_to_quat(P.qn, gR, gqn);
                vf dot = gqn[0] * P.qn[0] + gqn[1] * P.qn[1] + gqn[2] * P.qn[2] + gqn[3] * P.qn[3];
                for (int l = 0; l < lanes; ++l) {
                    if (!vis[l]) continue;
                    int64_t n = n0 + l, idx = (int64_t)c * N + n;
                    for (int i = 0; i < 3; ++i) g_means[3 * n + i] += gmean[i][l];
                    for (int i = 0; i < 4; ++i) g_quats[4 * n + i] += (gqn[i][l] - P.qn[i][l] * dot[l]) / P.qlen[l];
                    for (int i = 0; i < 3; ++i) g_scales[3 * n + i] += gs[i][l];
                    g_opacities[n] += g_o[l];
                    double* gv = chunk_acc ? chunk_acc + c * 12 : nullptr;  // [R | t] row-major, 3 x 4
                    if (gv) {
                        // p = R m + t: dL/dR = gp m^T, dL/dt = gp
                        const float gpl[3] = {gp0[l], gp1[l], gp2[l]};
                        for (int i = 0; i < 3; ++i) {
                            for (int j = 0; j < 3; ++j) gv[i * 4 + j] += (double)gpl[i] * m[j][l];
                            gv[i * 4 + 3] += gpl[i];
                        }
                        // cc = R cov R^T: dL/dR = (gcc + gcc^T) R cov
                        float cov[3][3], RC[3][3];
                        for (int i = 0; i < 3; ++i)
                            for (int j = 0; j < 3; ++j)
                                cov[i][j] = P.M[i][0][l] * P.M[j][0][l] + P.M[i][1][l] * P.M[j][1][l] +
                                            P.M[i][2][l] * P.M[j][2][l];
                        for (int i = 0; i < 3; ++i)
                            for (int j = 0; j < 3; ++j)
                                RC[i][j] = cam.R[i][0] * cov[0][j] + cam.R[i][1] * cov[1][j] + cam.R[i][2] * cov[2][j];
                        for (int i = 0; i < 3; ++i)
                            for (int j = 0; j < 3; ++j) {
                                double acc = 0.0;
                                for (int k = 0; k < 3; ++k) acc += (double)(gcc[i][k][l] + gcc[k][i][l]) * RC[k][j];
                                gv[i * 4 + j] += acc;
                            }
                    }
                    if (!g_colors || sh_degree < 0) continue;
                    // SH colour -> coefficients and the view direction d = m - campos
                    float d[3] = {m[0][l] - cam.campos[0], m[1][l] - cam.campos[1], m[2][l] - cam.campos[2]};
                    float gd[3] = {0.0f, 0.0f, 0.0f};
                    sh_color_bwd(sh_degree, d, sh0 + n * stride0, shN ? shN + n * strideN : nullptr, g_colors + 3 * idx,
                                 g_sh0 + n * stride0, g_shN ? g_shN + n * strideN : nullptr, gd);
                    for (int i = 0; i < 3; ++i) g_means[3 * n + i] += gd[i];
                    if (gv) {
                        // campos = -R^T t: dL/dR_ij = t_i gd_j, dL/dt_i = sum_j R_ij gd_j
                        for (int i = 0; i < 3; ++i) {
                            for (int j = 0; j < 3; ++j) gv[i * 4 + j] += (double)cam.t[i] * gd[j];
                            gv[i * 4 + 3] += cam.R[i][0] * gd[0] + cam.R[i][1] * gd[1] + cam.R[i][2] * gd[2];
                        }
                    }
                }
            }
        }
    });
    if (g_viewmats) {
        for (int c = 0; c < C; ++c) {
            for (int k = 0; k < 12; ++k) {
                double acc = 0.0;
                for (int64_t ch = 0; ch < nchunks; ++ch) acc += vacc[(ch * C + c) * 12 + k];
                g_viewmats[16 * c + k] = (float)acc;
            }
            for (int k = 12; k < 16; ++k) g_viewmats[16 * c + k] = 0.0f;
        }
    }
}

}  // extern "C"

// ============================================================================ 2D splats
namespace {

// Everything compositing needs of one (camera, Gaussian), in one cache line.
struct alignas(64) Splat2D {
    float mx, my, A, B, Cc, o, thr, dy_max, inv_A;
    float dx_max, dy_right;  // the ellipse's horizontal half-extent, and the height of its rightmost point
    float log2_o;            // compositing's alpha is 2^(log2 o - log2(e) sigma)
    float color[MAX_CHANNELS];
};
static_assert(sizeof(Splat2D) == 64, "Splat2D is one cache line");

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

static inline bool touches_rect(const Splat2D& s, float x0, float x1, float y0, float y1) {
    return ellipse_touches_rect(s.mx, s.my, s.A, s.B, s.Cc, s.thr, x0, x1, y0, y1);
}

// ----------------------------------------------------------------------------- binning
// Shared by Gaussians (Splat2D) and surfels (Surfel2D): a splat type S has the box
// centre mx, my, and touches_rect(s, x0, x1, y0, y1) says whether its alpha >= 1/255
// region may reach the rectangle of pixel centres (conservatively).

struct TileRange {
    int x0, x1, y0, y1;
};

template <class S>
static inline TileRange tile_range(const S& s, const int32_t* radii, int64_t idx, int tiles_x, int tiles_y) {
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

template <class S>
static inline uint64_t touched_tiles(const S& s, const TileRange& r, int W, int H) {
    int w = r.x1 - r.x0, h = r.y1 - r.y0;
    if (w <= 0 || h <= 0) return 0;
    if (w * h > 64) return ALL_TILES;
    if (w * h == 1) return 1;
    uint64_t mask = 0;
    for (int ty = r.y0; ty < r.y1; ++ty) {
        float y0 = ty * TILE + 0.5f, y1 = std::min(ty * TILE + TILE, H) - 0.5f;
        for (int tx = r.x0; tx < r.x1; ++tx) {
            float x0 = tx * TILE + 0.5f, x1 = std::min(tx * TILE + TILE, W) - 0.5f;
            if (touches_rect(s, x0, x1, y0, y1))
                mask |= uint64_t(1) << ((ty - r.y0) * w + (tx - r.x0));
        }
    }
    return mask;
}

// Call f(tile) for every tile of the box the ellipse touches, given its cached mask.
template <class S, class F>
static inline void for_each_tile(const S& s, const TileRange& r, uint64_t mask, int W, int H, int tiles_x,
                                 F&& f) {
    int w = r.x1 - r.x0;
    if (mask == ALL_TILES) {
        for (int ty = r.y0; ty < r.y1; ++ty) {
            float y0 = ty * TILE + 0.5f, y1 = std::min(ty * TILE + TILE, H) - 0.5f;
            for (int tx = r.x0; tx < r.x1; ++tx) {
                float x0 = tx * TILE + 0.5f, x1 = std::min(tx * TILE + TILE, W) - 0.5f;
                if (touches_rect(s, x0, x1, y0, y1)) f(ty * tiles_x + tx);
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

// Gaussians have a faster exact test, a tile row at a time: the tile columns [a, b] of
// tile row ty whose pixel-centre rectangles the alpha >= 1/255 ellipse reaches are those
// meeting the ellipse's x-extent within the row's band of pixel-centre heights. That
// extent is closed-form (the ellipse is convex): its leftmost / rightmost point where
// that lies inside the band, else the row span at the nearer band edge. A hair of slack
// keeps it conservative. false: no tile of the row, or a degenerate conic (then the
// per-tile test decides).
static inline bool splat_row_tiles(const Splat2D& s, const TileRange& r, int ty, int W, int H, int& a, int& b,
                                   bool& exact) {
    const float eps = 1e-3f;
    const float det = s.A * s.Cc - s.B * s.B;
    exact = det > 0 && s.A > 0 && s.Cc > 0;
    if (!exact) return false;
    const float y_lo = ty * TILE + 0.5f - s.my, y_hi = std::min(ty * TILE + TILE, H) - 0.5f - s.my;
    if (y_lo > s.dy_max + eps || y_hi < -s.dy_max - eps) return false;
    const float c0 = std::min(std::max(y_lo, -s.dy_max), s.dy_max), c1 = std::max(std::min(y_hi, s.dy_max), -s.dy_max);
    const float dx_max = s.dx_max, dy_right = s.dy_right;
    auto span = [&](float dy, float& xa, float& xb) {
        const float sq = std::sqrt(std::max(s.B * s.B * dy * dy - s.A * (s.Cc * dy * dy - 2.0f * s.thr), 0.0f));
        xa = (-s.B * dy - sq) * s.inv_A;
        xb = (-s.B * dy + sq) * s.inv_A;
    };
    float xa0, xb0, xa1, xb1;
    span(c0, xa0, xb0);
    span(c1, xa1, xb1);
    const float xr = s.mx + eps + ((c0 <= dy_right && dy_right <= c1) ? dx_max : std::max(xb0, xb1));
    const float xl = s.mx - eps + ((c0 <= -dy_right && -dy_right <= c1) ? -dx_max : std::min(xa0, xa1));
    if (xl > W - 0.5f || xr < 0.5f) return false;
    a = std::max(r.x0, (int)std::ceil((xl - (TILE - 0.5f)) / TILE));
    b = std::min(r.x1 - 1, (int)std::floor((xr - 0.5f) / TILE));
    return a <= b;
}

static inline uint64_t touched_tiles(const Splat2D& s, const TileRange& r, int W, int H) {
    const int w = r.x1 - r.x0, h = r.y1 - r.y0;
    if (w <= 0 || h <= 0) return 0;
    if (w * h > 64) return ALL_TILES;
    if (w * h == 1) return 1;
    uint64_t mask = 0;
    for (int ty = r.y0; ty < r.y1; ++ty) {
        int a, b;
        bool exact;
        if (splat_row_tiles(s, r, ty, W, H, a, b, exact))
            mask |= ((uint64_t(1) << (b - a + 1)) - 1) << ((ty - r.y0) * w + (a - r.x0));
        else if (!exact)
            return touched_tiles<Splat2D>(s, r, W, H);
    }
    return mask;
}

template <class F>
static inline void for_each_tile(const Splat2D& s, const TileRange& r, uint64_t mask, int W, int H, int tiles_x,
                                 F&& f) {
    if (mask != ALL_TILES) return for_each_tile<Splat2D>(s, r, mask, W, H, tiles_x, f);
    for (int ty = r.y0; ty < r.y1; ++ty) {
        int a, b;
        bool exact;
        if (splat_row_tiles(s, r, ty, W, H, a, b, exact)) {
            for (int tx = a; tx <= b; ++tx) f(ty * tiles_x + tx);
        } else if (!exact) {
            return for_each_tile<Splat2D>(s, r, mask, W, H, tiles_x, f);
        }
    }
}

// Stable LSD radix sort of (key, value) pairs by unsigned key, 11 bits a pass, on up to
// nthreads threads: each sorts a fixed chunk's histogram and scatter, so the order never
// depends on timing. (Depths are positive floats, whose bits sort as unsigned ints.)
static void radix_sort_pairs(std::vector<uint32_t>& keys, std::vector<uint32_t>& vals, int nthreads) {
    constexpr int BITS = 11, BUCKETS = 1 << BITS;
    const size_t m = keys.size();
    const int T = (int)std::max<size_t>(1, std::min<size_t>(std::max(nthreads, 1), m / 16384 + 1));
    std::vector<uint32_t> keys2(m), vals2(m);
    std::vector<size_t> hist((size_t)T * BUCKETS);
    for (int shift = 0; shift < 32; shift += BITS) {
        std::fill(hist.begin(), hist.end(), 0);
        parallel_for(T, T, [&](int64_t t, int) {
            size_t* h = &hist[t * BUCKETS];
            for (size_t i = m * t / T, e = m * (t + 1) / T; i < e; ++i) h[(keys[i] >> shift) & (BUCKETS - 1)]++;
        });
        size_t run = 0;
        for (int d = 0; d < BUCKETS; ++d)
            for (int t = 0; t < T; ++t) {
                const size_t count = hist[(size_t)t * BUCKETS + d];
                hist[(size_t)t * BUCKETS + d] = run;
                run += count;
            }
        parallel_for(T, T, [&](int64_t t, int) {
            size_t* h = &hist[t * BUCKETS];
            for (size_t i = m * t / T, e = m * (t + 1) / T; i < e; ++i) {
                const size_t pos = h[(keys[i] >> shift) & (BUCKETS - 1)]++;
                keys2[pos] = keys[i];
                vals2[pos] = vals[i];
            }
        });
        keys.swap(keys2);
        vals.swap(vals2);
    }
}

// Tile lists of all cameras: returns the number of (tile, splat) pairs M and sets
// *out_ids to a malloc'ed int32 array [M] of flat (camera * N + splat) indices,
// sorted by (camera, tile, depth); tile_offsets [C * T + 1] delimit the tiles.
// 1. every visible splat's touched tiles are found once (exact touches_rect test) and
//    kept as a bitmask over its box; 2. each camera's visible splats are radix-sorted
//    by depth and their box records laid out in that order; 3. a counting sort
//    scatters them to tiles, streaming through the records, so every tile's list is
//    front to back. Free with sk_free.
struct BoxRecord {
    uint64_t mask;
    int32_t idx;
    int16_t tx0, ty0, tx1, ty1;
    int32_t pad;
};
static_assert(sizeof(BoxRecord) == 24, "BoxRecord layout");

template <class S>
int64_t isect(int C, int N, const S* splats, const int32_t* radii, const float* depths, int W, int H,
              int32_t** out_ids, int64_t* tile_offsets, int nthreads) {
    int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    int64_t T = (int64_t)tiles_x * tiles_y;
    int64_t CN = (int64_t)C * N;
    std::unique_ptr<BoxRecord[]> boxes(new BoxRecord[CN]);  // every record written below
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
    for (int64_t c = 0; c < C; ++c) {
        std::vector<uint32_t> keys, ids;
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
        radix_sort_pairs(keys, ids, nthreads);
        auto& out = ordered[c];
        out.resize(keys.size());
        parallel_chunks((int64_t)keys.size(), nthreads, 16384, [&](int64_t b, int64_t e, int) {
            for (int64_t i = b; i < e; ++i) out[i] = boxes[c * N + ids[i]];
        });
    }
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

}  // namespace

extern "C" {

// splats [C * N] (16 floats each) from means2d, conics, opacities and colours [C*N, D]:
// adds the alpha >= 1/255 threshold on sigma (log(255 o), with a hair of slack so
// culling stays conservative), the ellipse's half-extents and 1/A.
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
            s.dx_max = det > 0 && s.Cc > 0 ? std::sqrt(2.0f * s.thr * s.Cc / det) : 0.0f;
            s.dy_right = s.Cc > 0 ? -s.B * s.dx_max / s.Cc : 0.0f;
            s.log2_o = s.o > 0 ? std::log2(s.o) : -INFINITY;
            for (int ch = 0; ch < MAX_CHANNELS; ++ch) s.color[ch] = ch < D ? colors[g * D + ch] : 0.0f;
            splats[g] = s;
        }
    });
}

// Tile lists of all cameras (see isect): returns the number of pairs M and sets *out_ids
// to a malloc'ed int32 array [M]. Free with sk_free.
int64_t sk_isect(int C, int N, const float* packed, const int32_t* radii, const float* depths, int W, int H,
                 int32_t** out_ids, int64_t* tile_offsets, int nthreads) {
    return isect(C, N, reinterpret_cast<const Splat2D*>(packed), radii, depths, W, H, out_ids, tile_offsets,
                 nthreads);
}

void sk_free(void* p) { std::free(p); }

// Floats per vector in this build (16 with AVX-512, 8 with AVX, 4 otherwise): the rounding
// of the kernels' sums, hence a run's exact numbers, depends on it.
int sk_vector_lanes() { return L; }

}  // extern "C"

// ============================================================================ compositing
namespace {

// The tile machinery every compositing pass (3DGS and 2DGS, forward and backward) shares:
// which tiles exist, the order they run in, the pixel vectors of one tile, and when a
// tile is saturated. The passes differ only in what they do for one (tile, splat) pair.

static inline int64_t num_tiles(int C, int W, int H) {
    return (int64_t)C * ((W + TILE - 1) / TILE) * ((H + TILE - 1) / TILE);
}

// One TILE x TILE tile of camera c, as a pass sees it.
struct Tile {
    int64_t index;     // over all cameras: tile_offsets[index] .. [index + 1] are its pairs
    int c, x0, y0;     // camera, top-left pixel
    int rows_in;       // rows inside the image (the last tile row may be cut)
    vf xs[NV];         // pixel-centre x of each vector of L pixels in a row
    vi outside_x[NV];  // lanes beyond the image's right border (-1)
};

// body(const Tile&) for every tile of C cameras of W x H, on nthreads threads, tiles with
// the most pairs first so the dynamic schedule ends on cheap ones. Which thread runs a
// tile never changes a result: passes write per-pixel or per-pair slots only.
template <class F>
void for_each_tile_heavy_first(int C, int W, int H, const int64_t* tile_offsets, int nthreads, F&& body) {
    const int tiles_x = (W + TILE - 1) / TILE;
    const int64_t per_cam = (int64_t)tiles_x * ((H + TILE - 1) / TILE);
    const int64_t ntiles = num_tiles(C, W, H);
    std::vector<int64_t> order(ntiles);
    for (int64_t i = 0; i < ntiles; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return tile_offsets[a + 1] - tile_offsets[a] > tile_offsets[b + 1] - tile_offsets[b];
    });
    parallel_for(ntiles, nthreads, [&](int64_t oi, int) {
        Tile tl;
        tl.index = order[oi];
        tl.c = (int)(tl.index / per_cam);
        const int t = (int)(tl.index % per_cam);
        tl.x0 = (t % tiles_x) * TILE;
        tl.y0 = (t / tiles_x) * TILE;
        tl.rows_in = std::min(TILE, H - tl.y0);
        for (int j = 0; j < NV; ++j)
            for (int l = 0; l < L; ++l) {
                const int x = j * L + l;
                tl.xs[j][l] = tl.x0 + x + 0.5f;
                tl.outside_x[j][l] = (tl.x0 + x >= W) ? -1 : 0;
            }
        body(tl);
    });
}

// Gradients of a backward pass are written per (tile, splat) pair into slots [M, G], then
// summed per splat in pair order, so results never depend on which thread ran which tile:
// fixed chunks of pairs go into per-chunk buffers, the buffers are added in chunk order,
// and emit(g, sums) receives splat g's G sums (g over the C * N camera-splat pairs).
// With `live` (the forward's per-pair vector masks), pairs whose mask is 0 contributed to
// no pixel: their slots are neither written by the backward pass nor read here.
template <int G, class F>
void reduce_pair_grads(int64_t M, int64_t CN, const float* pair_grad, const int32_t* ids, const uint64_t* live,
                       int nthreads, F&& emit) {
    int nchunks = std::max(1, std::min<int>(nthreads, (int)((M + 65535) / 65536)));
    std::vector<std::vector<float>> bufs(nchunks);
    parallel_for(nchunks, nthreads, [&](int64_t ci, int) {
        auto& buf = bufs[ci];
        buf.assign(CN * G, 0.0f);
        int64_t b = M * ci / nchunks, e = M * (ci + 1) / nchunks;
        for (int64_t k = b; k < e; ++k) {
            if (live && !live[k]) continue;
            const float* src = pair_grad + k * G;
            float* dst = buf.data() + (int64_t)ids[k] * G;
            for (int i = 0; i < G; ++i) dst[i] += src[i];
        }
    });
    parallel_chunks(CN, nthreads, 8192, [&](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g) {
            float acc[G] = {0};
            for (auto& buf : bufs)
                for (int i = 0; i < G; ++i) acc[i] += buf[g * G + i];
            emit(g, acc);
        }
    });
}

// Whether every pixel of a tile is done (saturated or outside the image).
static inline bool tile_saturated(const vi done[TILE][NV]) {
    vi all = vi{} - 1;
    for (int r = 0; r < TILE; ++r)
        for (int j = 0; j < NV; ++j) all &= done[r][j];
    return vall(all);
}

// alpha of one Gaussian on the pixel vectors of one tile. Everything the pair's pixels
// share is set up once per pair (pair_terms): sigma's offsets per vector column (dx) and
// per row (dy), scaled by log2(e) so that
//     log2(e) sigma = dx (a dx + b dy) + c dy^2,   a, b, c = log2(e) (A/2, B, C/2),
// and alpha = min(0.999, 2^(log2 o - log2(e) sigma)): a vector of pixels costs two
// FMAs, one 2^t and the clamps.
struct VAlpha {
    vf alpha, raw;  // raw = o exp(-sigma), before the 0.999 clamp
    vi valid;       // sigma >= 0 and alpha >= 1/255 (the skip rule)
};

struct PairTerms {
    vf dx[NV], adx[NV];                     // pixel x - mean x per vector column; a dx
    float dy[TILE], bdy[TILE], cdy2[TILE];  // pixel y - mean y per row; b dy; c dy^2
    float log2_o;
};

constexpr float LOG2E = 1.4426950408889634f;

static inline void pair_terms(const Splat2D& s, const vf* xs, int y0, PairTerms& p) {
    const float a = 0.5f * LOG2E * s.A, b = LOG2E * s.B, c = 0.5f * LOG2E * s.Cc;
    for (int j = 0; j < NV; ++j) {
        p.dx[j] = xs[j] - s.mx;
        p.adx[j] = a * p.dx[j];
    }
    vf lane;
    for (int l = 0; l < L; ++l) lane[l] = (float)l;
    for (int q = 0; q < TILE / L; ++q) {
        const vf dy = lane + ((float)(y0 + q * L) + 0.5f - s.my);
        const vf bdy = b * dy, cdy2 = c * dy * dy;
        std::memcpy(p.dy + q * L, &dy, sizeof(vf));
        std::memcpy(p.bdy + q * L, &bdy, sizeof(vf));
        std::memcpy(p.cdy2 + q * L, &cdy2, sizeof(vf));
    }
    p.log2_o = s.log2_o;
}

// bit = r * NV + j: row r's j-th vector of L pixels
static inline VAlpha valpha(const PairTerms& p, int bit) {
    const int r = bit / NV, j = bit % NV;
    const vf s2 = p.dx[j] * (p.adx[j] + p.bdy[r]) + p.cdy2[r];  // log2(e) sigma
    VAlpha a;
    a.raw = vexp2(p.log2_o - s2);
    a.alpha = vmin(a.raw, vsplat(ALPHA_MAX));
    a.valid = (s2 >= 0.0f) & (a.raw >= ALPHA_THRESHOLD);
    return a;
}

// A tile's vectors as bits: bit r * NV + j is row r's j-th vector of L pixels.
static inline uint64_t full_tile_mask() {
    return TILE * NV >= 64 ? ~uint64_t(0) : (uint64_t(1) << (TILE * NV)) - 1;
}

// Bit l of `rows` (row q * L + l) moved to the tile-mask bit of that row's vector j.
static inline uint64_t spread_rows(uint32_t rows, int q, int j) {
    uint64_t x = rows;
    if constexpr (NV == 2) {  // interleave with zeros: bit l -> bit 2 l
        x = (x | (x << 8)) & 0x00FF00FFull;
        x = (x | (x << 4)) & 0x0F0F0F0Full;
        x = (x | (x << 2)) & 0x33333333ull;
        x = (x | (x << 1)) & 0x55555555ull;
    } else if constexpr (NV != 1) {
        uint64_t y = 0;
        for (int l = 0; l < L; ++l) y |= ((x >> l) & 1) << (l * NV);
        x = y;
    }
    return x << (q * L * NV + j);
}

// The tile's vectors holding a pixel centre inside the splat's alpha >= 1/255 ellipse,
// row by row (rows evaluated L at a time; a superset with a hair of slack, since
// compositing applies the exact per-pixel rule), as a tile mask.
static inline uint64_t span_vectors(const Splat2D& s, int x0, int y0, int rows_in) {
    vf lane;
    for (int l = 0; l < L; ++l) lane[l] = (float)l;
    const float slack = 1e-4f * L;
    uint64_t mask = 0;
    for (int q = 0; q < TILE / L; ++q) {
        vf dy = lane + ((float)(y0 + q * L) + 0.5f - s.my);
        vf dy2 = dy * dy;
        vf disc = s.B * s.B * dy2 - s.A * (s.Cc * dy2 - 2.0f * s.thr);
        vi ok = (disc >= 0.0f) & ((lane + (float)(q * L)) < (float)rows_in);
        if (!vbits(ok)) continue;
        vf sq = vsqrt(vmax(disc, vf{}));
        vf xa = (s.mx - x0) + (-s.B * dy - sq) * s.inv_A;
        vf xb = (s.mx - x0) + (-s.B * dy + sq) * s.inv_A;
        for (int j = 0; j < NV; ++j) {
            vi hit = ok & (xa <= (float)(j * L + L) - 0.5f + slack) & (xb >= (float)(j * L) + 0.5f - slack);
            mask |= spread_rows(vbits(hit), q, j);
        }
    }
    return mask;
}

// Splats are read in depth order, scattered over memory: a pass at pair k fetches the one
// it reads PREFETCH pairs later (pair k + step * PREFETCH, if inside [lo, hi)).
constexpr int PREFETCH = 8;

template <class S>
static inline void prefetch_splat(const S* splats, const int32_t* ids, int64_t k, int step, int64_t lo,
                                  int64_t hi) {
    const int64_t next = k + step * PREFETCH;
    if (next >= lo && next < hi) __builtin_prefetch(splats + ids[next]);
}

// f(bit, alpha(bit)) for every set bit of a tile mask, in bit order, with the alphas of
// BATCH vectors computed before they are used: independent chains (exp, division) the
// core overlaps, where one vector at a time would wait on each. (Measured on fox at 200k
// Gaussians, one thread: forward 2 / 3 / 4 / 5 / 6 / 8 took 80 / 70 / 65 / 67 / 68 / 73
// ms, backward 1 / 2 / 3 / 4 / 5 took 151 / 125 / 117 / 118 / 119 ms.)
constexpr int FWD_BATCH = 4, BWD_BATCH = 3;

template <int BATCH, class A, class F>
static inline void for_each_bit_batched(uint64_t bits, A&& alpha, F&& f) {
    while (__builtin_popcountll(bits) >= BATCH) {
        int idx[BATCH];
        for (int i = 0; i < BATCH; ++i) {
            idx[i] = __builtin_ctzll(bits);
            bits &= bits - 1;
        }
        decltype(alpha(0)) a[BATCH];
        for (int i = 0; i < BATCH; ++i) a[i] = alpha(idx[i]);
        for (int i = 0; i < BATCH; ++i) f(idx[i], a[i]);
    }
    while (bits) {
        const int b = __builtin_ctzll(bits);
        bits &= bits - 1;
        f(b, alpha(b));
    }
}

template <int D>
void raster_fwd(int C, int W, int H, const Splat2D* splats, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                float* out_img, float* out_alpha, float* out_T, int32_t* out_stop, uint64_t* vecmask,
                int nthreads) {
    for_each_tile_heavy_first(C, W, H, tile_offsets, nthreads, [&](const Tile& tl) {
        const int64_t tile = tl.index;
        const int c = tl.c, x0 = tl.x0, y0 = tl.y0, rows_in = tl.rows_in;
        const vf* xs = tl.xs;
        // Per pixel vector (index bit = r * NV + j): transmittance, colour, the lanes
        // still compositing (-1) and the pair each stopped at.
        vf T[TILE * NV], acc[D][TILE * NV];
        vi live[TILE * NV], stopk[TILE * NV];
        for (int r = 0; r < TILE; ++r)
            for (int j = 0; j < NV; ++j) {
                const int bit = r * NV + j;
                T[bit] = vsplat(1.0f);
                live[bit] = r < rows_in ? ~tl.outside_x[j] : vi{};
                stopk[bit] = vi{} + NEVER_STOPPED;
                for (int ch = 0; ch < D; ++ch) acc[ch][bit] = vf{};
            }
        // Vectors whose every pixel is done never need evaluating again.
        uint64_t done_vecs = 0;
        for (int bit = 0; bit < TILE * NV; ++bit)
            if (!vbits(live[bit])) done_vecs |= uint64_t(1) << bit;
        const int64_t kb = tile_offsets[tile], ke = tile_offsets[tile + 1];
        bool all_done = done_vecs == full_tile_mask();
        int64_t k = kb;
        PairTerms p;
        for (; k < ke && !all_done; ++k) {
            prefetch_splat(splats, ids, k, +1, kb, ke);
            const Splat2D& s = splats[ids[k]];
            const uint64_t todo = span_vectors(s, x0, y0, rows_in) & ~done_vecs;
            // The backward pass revisits exactly these vectors (lanes that did not
            // contribute are invalid there too); 0: the pair touched no pixel.
            vecmask[k] = todo;
            if (!todo) continue;
            pair_terms(s, xs, y0, p);
            float colv[D];
            for (int ch = 0; ch < D; ++ch) colv[ch] = s.color[ch];
            bool any_stop = false;
            auto alpha_at = [&](int bit) { return valpha(p, bit); };
            auto blend = [&](int bit, const VAlpha& a) {
                const vi valid = a.valid & live[bit];
                const vf Tb = T[bit];
                const vf next_T = Tb * (1.0f - a.alpha);
                const vi contrib = valid & (next_T > T_MIN);
                const vf w = (vf)((vi)(a.alpha * Tb) & contrib);
                for (int ch = 0; ch < D; ++ch) acc[ch][bit] += w * colv[ch];
                T[bit] = contrib ? next_T : Tb;
                if (vbits(valid) != vbits(contrib)) {  // lanes reaching T <= T_MIN stop before this pair
                    const vi stop = valid & ~contrib;
                    live[bit] &= ~stop;
                    stopk[bit] = stop ? vi{} + (int32_t)k : stopk[bit];
                    any_stop = true;
                    if (!vbits(live[bit])) done_vecs |= uint64_t(1) << bit;
                }
            };
            for_each_bit_batched<FWD_BATCH>(todo, alpha_at, blend);
            if (any_stop) all_done = done_vecs == full_tile_mask();
        }
        for (; k < ke; ++k) vecmask[k] = 0;
        const float* bg = backgrounds ? backgrounds + c * D : nullptr;
        for (int r = 0; r < rows_in; ++r) {
            int py = y0 + r;
            for (int x = 0; x < TILE && x0 + x < W; ++x) {
                int64_t pix = ((int64_t)c * H + py) * W + x0 + x;
                const int bit = r * NV + x / L, l = x % L;
                float Tp = T[bit][l];
                for (int ch = 0; ch < D; ++ch) out_img[pix * D + ch] = acc[ch][bit][l] + (bg ? Tp * bg[ch] : 0.0f);
                out_alpha[pix] = 1.0f - Tp;
                out_T[pix] = Tp;
                out_stop[pix] = stopk[bit][l];
            }
        }
    });
}

template <int D>
void raster_bwd(int C, int N, int W, int H, const Splat2D* splats, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                const float* T_final, const int32_t* stop, const uint64_t* vecmask, const float* g_img,
                const float* g_alpha, float* g_means2d, float* g_conics, float* g_colors, float* g_opac,
                int nthreads) {
    int64_t ntiles = num_tiles(C, W, H);
    int64_t CN = (int64_t)C * N;
    constexpr int G = 6 + D;  // per Gaussian: mx, my, A, B, C, o, colour[D]
    // Each (tile, Gaussian) pair writes its gradient to its own slot; slots are then
    // summed per Gaussian in pair order, so results do not depend on which thread ran
    // which tile.
    int64_t M = tile_offsets[ntiles];
    std::unique_ptr<float[]> pair_grad(new float[std::max<int64_t>(M, 1) * G]);
    for_each_tile_heavy_first(C, W, H, tile_offsets, nthreads, [&](const Tile& tl) {
        const int64_t tile = tl.index;
        const int c = tl.c, x0 = tl.x0, y0 = tl.y0, rows_in = tl.rows_in;
        const vf* xs = tl.xs;
        const float* bg = backgrounds ? backgrounds + c * D : nullptr;
        // per pixel vector (bit = r * NV + j), walking the pairs back to front:
        // transmittance, colour behind, the loss gradient, the stop pair
        vf T[TILE * NV], S[D][TILE * NV], gC[D][TILE * NV], Kp[TILE * NV];
        vi stopk[TILE * NV];
        for (int r = 0; r < TILE; ++r)
            for (int j = 0; j < NV; ++j) {
                const int bit = r * NV + j;
                vf dot_bg = vf{}, ga = vf{};
                T[bit] = vsplat(1.0f);
                stopk[bit] = vi{};
                for (int ch = 0; ch < D; ++ch) {
                    S[ch][bit] = vf{};
                    gC[ch][bit] = vf{};
                }
                for (int l = 0; l < L; ++l) {
                    int x = j * L + l;
                    if (r >= rows_in || x0 + x >= W) continue;
                    int64_t pix = ((int64_t)c * H + y0 + r) * W + x0 + x;
                    T[bit][l] = T_final[pix];
                    stopk[bit][l] = stop[pix];
                    for (int ch = 0; ch < D; ++ch) {
                        gC[ch][bit][l] = g_img[pix * D + ch];
                        dot_bg[l] += g_img[pix * D + ch] * (bg ? bg[ch] : 0.0f);
                    }
                    ga[l] = g_alpha ? g_alpha[pix] : 0.0f;
                }
                // d(colour, alpha) / d alpha_k has a part that depends only on the pixel:
                // (sum_ch gC bg - g_alpha) * T_final / (1 - alpha_k).
                Kp[bit] = (dot_bg - ga) * T[bit];
            }
        // Pairs that touched no pixel (vecmask 0: the reduction skips their slots), among
        // them every pair after the tile saturated, have no gradient.
        const int64_t kb = tile_offsets[tile], ke = tile_offsets[tile + 1];
        PairTerms p;
        for (int64_t k = ke - 1; k >= kb; --k) {
            const uint64_t mask = vecmask[k];
            float* out = pair_grad.get() + k * G;
            prefetch_splat(splats, ids, k, -1, kb, ke);
            if (!mask) continue;
            const Splat2D& s = splats[ids[k]];
            pair_terms(s, xs, y0, p);
            float col[D];
            for (int ch = 0; ch < D; ++ch) col[ch] = s.color[ch];
            // per lane, sums of -gsig = dL/d(-sigma) times dx^2, dx dy, dy^2, dx, dy (the
            // conic's and the mean's gradients are fixed combinations of them), of
            // dL/d alpha * raw alpha, and of the colour weights
            enum { XX, XY, YY, X, Y, O, COL };
            vf m[G];
            for (int i = 0; i < G; ++i) m[i] = vf{};
            const vi kv = vi{} + (int32_t)k;
            auto grad = [&](int bit, const VAlpha& a) {
                const int r = bit / NV, j = bit % NV;
                const float dy = p.dy[r];
                const vf dx = p.dx[j];
                const vi valid = a.valid & (kv < stopk[bit]);
                const vf inv_one_m = 1.0f / (1.0f - a.alpha);
                const vf Tk = T[bit] * inv_one_m;
                vf dot = vf{}, sdot = vf{};
                for (int ch = 0; ch < D; ++ch) {
                    dot += gC[ch][bit] * col[ch];
                    sdot += gC[ch][bit] * S[ch][bit];
                }
                const vf dalpha = dot * Tk - (sdot + Kp[bit]) * inv_one_m;
                const vi free_alpha = valid & (a.raw < ALPHA_MAX);
                const vf ngsig = (vf)((vi)(dalpha * a.alpha) & free_alpha);  // -dL/d sigma
                m[O] += (vf)((vi)(dalpha * a.raw) & free_alpha);
                const vf ngdx = ngsig * dx;
                m[XX] += ngdx * dx;
                m[XY] += ngdx * dy;
                m[X] += ngdx;
                m[Y] += ngsig * dy;
                m[YY] += ngsig * (dy * dy);
                const vf wv = (vf)((vi)(a.alpha * Tk) & valid);
                for (int ch = 0; ch < D; ++ch) {
                    m[COL + ch] += wv * gC[ch][bit];
                    S[ch][bit] += wv * col[ch];
                }
                T[bit] = valid ? Tk : T[bit];
            };
            auto alpha_at = [&](int bit) { return valpha(p, bit); };
            for_each_bit_batched<BWD_BATCH>(mask, alpha_at, grad);
            float sum[G];
            vsums<G>(m, sum);
            out[0] = s.A * sum[X] + s.B * sum[Y];
            out[1] = s.B * sum[X] + s.Cc * sum[Y];
            out[2] = -0.5f * sum[XX];
            out[3] = -sum[XY];
            out[4] = -0.5f * sum[YY];
            out[5] = s.o > 0 ? sum[O] / s.o : 0.0f;  // d raw / d o = raw / o
            for (int ch = 0; ch < D; ++ch) out[6 + ch] = sum[COL + ch];
        }
    });
    reduce_pair_grads<G>(M, CN, pair_grad.get(), ids, vecmask, nthreads, [&](int64_t g, const float* acc) {
        g_means2d[2 * g] = acc[0];
        g_means2d[2 * g + 1] = acc[1];
        g_conics[3 * g] = acc[2];
        g_conics[3 * g + 1] = acc[3];
        g_conics[3 * g + 2] = acc[4];
        g_opac[g] = acc[5];
        for (int ch = 0; ch < D; ++ch) g_colors[g * D + ch] = acc[6 + ch];
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
                  float* out_img, float* out_alpha, float* out_T, int32_t* out_stop, uint64_t* vecmask,
                  int nthreads) {
    const Splat2D* splats = reinterpret_cast<const Splat2D*>(packed);
    SK_DISPATCH(D, raster_fwd<DD>(C, W, H, splats, backgrounds, ids, tile_offsets,
                                  out_img, out_alpha, out_T, out_stop, vecmask, nthreads));
    return 0;
}

int sk_raster_bwd(int C, int N, int W, int H, int D, const float* packed, const float* backgrounds, const int32_t* ids,
                  const int64_t* tile_offsets, const float* T_final, const int32_t* stop, const uint64_t* vecmask,
                  const float* g_img, const float* g_alpha, float* g_means2d, float* g_conics, float* g_colors,
                  float* g_opac, int nthreads) {
    const Splat2D* splats = reinterpret_cast<const Splat2D*>(packed);
    SK_DISPATCH(D, raster_bwd<DD>(C, N, W, H, splats, backgrounds, ids, tile_offsets,
                                  T_final, stop, vecmask, g_img, g_alpha, g_means2d, g_conics, g_colors, g_opac,
                                  nthreads));
    return 0;
}

}  // extern "C"

// ============================================================================ 2DGS surfels
// 2D Gaussian surfels: the maths of splatkit/renderer/projection_2dgs.py and
// backends/torch_ref_2dgs.py, which the tests compare with forward and backward.
//
// A surfel's ray transform M = K [a | b | p_c] (scaled tangent axes and centre, camera
// space) maps (u, v, 1) on the surfel to homogeneous pixels. The reference intersects
// pixel (x, y)'s planes x M2 - M0 and y M2 - M1 (rows of M); their cross product
// expands to
//     p = x (M1 x M2) + y (M2 x M0) + M0 x M1,
// linear in the pixel, so compositing spends three FMAs per pixel on it, and
// rho3d = (p_x^2 + p_y^2) / p_z^2 (inf where p_z = 0: the ray misses the surfel).
// sigma = min(rho3d, 2 |pix - means2d|^2) / 2, the second term being the screen-space
// filter; alpha, the skip and stop rules and the depth order are the 3DGS
// compositing's. Per pixel the outputs are the features, alpha, the camera-space
// normal, sum w d, the distortion sum_i 2 w_i (d_i (1 - T_i) - sum_{j<i} w_j d_j) and
// the median depth (that of the last pair reached with T > 0.5).
//
// Precision: rows M0, M1 hold cx M2, cy M2 (the principal point), much larger than
// what locates the surfel, so M rounded to float32 would cost ~1e-5 of relative
// gradient accuracy. The projection therefore hands compositing the transform
// re-centred, in double, on an origin s near the surfel (means2d clamped to the image):
// Ms = [M0 - sx M2; M1 - sy M2; M2], and p = (x - sx) c0 + (y - sy) c1 + c2 with the
// c's from Ms, divided by their largest magnitude (p is homogeneous). s and that scale
// are constants of the parametrisation (p's direction does not depend on them), so
// gradients flow through Ms alone.
namespace {

// ----------------------------------------------------------------------------- projection
// One surfel per iteration in double: the exact radii then match the reference's, and
// Ms is rounded to float once.
struct SCam {
    double R[3][3], t[3], K[3][3];
    float campos[3];
};

static inline SCam load_scam(const float* viewmat, const float* K) {
    SCam c;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
            c.R[i][j] = viewmat[i * 4 + j];
            c.K[i][j] = K[i * 3 + j];
        }
        c.t[i] = viewmat[i * 4 + 3];
    }
    for (int i = 0; i < 3; ++i)
        c.campos[i] = (float)-(c.R[0][i] * c.t[0] + c.R[1][i] * c.t[1] + c.R[2][i] * c.t[2]);
    return c;
}

// Intermediates of projecting one surfel into one camera, shared by forward and backward.
struct SurfelProj {
    double qn[4], qlen;  // normalised quaternion and the input's length
    double Rg[3][3];     // surfel rotation: columns t_u, t_v, normal
    double pc[3];        // camera-space centre
    double M[3][3];      // ray transform K [a | b | p_c]
    double normal[3];    // camera-space normal, turned to face the camera
    double flip;         // +1 if the normal faced the camera already, else -1
    double dist;         // M20^2 + M21^2 - M22^2; 0 leaves the filter centre undefined
    double mx, my;       // means2d: centre of the projected unit ellipse (dual conic)
};

static inline SurfelProj project_surfel(const SCam& cam, const float* m, const float* q, const float* sc) {
    SurfelProj P;
    double qd[4] = {q[0], q[1], q[2], q[3]};
    P.qlen = std::max(std::sqrt(qd[0] * qd[0] + qd[1] * qd[1] + qd[2] * qd[2] + qd[3] * qd[3]), 1e-12);
    for (int i = 0; i < 4; ++i) P.qn[i] = qd[i] / P.qlen;
    quat_to_rotmat(P.qn, P.Rg);
    double WH[3][3], nrm[3];  // columns a, b, p_c
    for (int i = 0; i < 3; ++i) {
        double ca = 0, cb = 0, cn = 0;
        for (int k = 0; k < 3; ++k) {
            ca += cam.R[i][k] * P.Rg[k][0];
            cb += cam.R[i][k] * P.Rg[k][1];
            cn += cam.R[i][k] * P.Rg[k][2];
        }
        P.pc[i] = cam.R[i][0] * m[0] + cam.R[i][1] * m[1] + cam.R[i][2] * m[2] + cam.t[i];
        WH[i][0] = ca * sc[0];
        WH[i][1] = cb * sc[1];
        WH[i][2] = P.pc[i];
        nrm[i] = cn;
    }
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            P.M[i][j] = cam.K[i][0] * WH[0][j] + cam.K[i][1] * WH[1][j] + cam.K[i][2] * WH[2][j];
    P.flip = (nrm[0] * P.pc[0] + nrm[1] * P.pc[1] + nrm[2] * P.pc[2] < 0) ? 1.0 : -1.0;
    for (int i = 0; i < 3; ++i) P.normal[i] = P.flip * nrm[i];
    const double(*M)[3] = P.M;
    P.dist = M[2][0] * M[2][0] + M[2][1] * M[2][1] - M[2][2] * M[2][2];
    double ds = P.dist != 0 ? P.dist : 1.0;
    P.mx = (M[0][0] * M[2][0] + M[0][1] * M[2][1] - M[0][2] * M[2][2]) / ds;
    P.my = (M[1][0] * M[2][0] + M[1][1] * M[2][1] - M[1][2] * M[2][2]) / ds;
    return P;
}

// The reference's _exact_radii: half-extents around means2d of a box holding every
// pixel whose alpha can reach 1/255, i.e. the ellipse u^2 + v^2 <= 2 ln(255 o) (from
// its dual conic; the whole image when that conic is not an ellipse) and the filter's
// disc of radius sqrt(ln(255 o)). NaN and overflow are handled as torch does there.
static inline void surfel_radii(const SurfelProj& P, double o, int W, int H, double& rx, double& ry) {
    double log_ratio = std::log(std::max(o, 1.0 / 255.0) / (1.0 / 255.0));
    double r2 = 2.0 * log_ratio;
    const double(*M)[3] = P.M;
    auto dual = [&](int i, int j) { return r2 * (M[i][0] * M[j][0] + M[i][1] * M[j][1]) - M[i][2] * M[j][2]; };
    double c22 = dual(2, 2);
    bool ellipse = c22 < 0;
    double c22s = ellipse ? c22 : -1.0;
    double cx = dual(0, 2) / c22s, cy = dual(1, 2) / c22s;
    double hx = std::sqrt(std::max(cx * cx - dual(0, 0) / c22s, 0.0));
    double hy = std::sqrt(std::max(cy * cy - dual(1, 1) / c22s, 0.0));
    rx = std::max(std::fabs(cx + hx - P.mx), std::fabs(cx - hx - P.mx));
    ry = std::max(std::fabs(cy + hy - P.my), std::fabs(cy - hy - P.my));
    double big = 2.0 * (W + H);
    if (!ellipse) {
        rx = big + std::fabs(P.mx - W / 2.0);
        ry = big + std::fabs(P.my - H / 2.0);
    }
    double disc = std::sqrt(log_ratio);
    auto finish = [&](double r) {
        r = std::isnan(r) ? r : std::max(r, disc);
        r = std::ceil(r + 1e-3);
        return std::isnan(r) ? big : std::min(r, 1e8);
    };
    rx = finish(rx);
    ry = finish(ry);
}

// ----------------------------------------------------------------------------- splats
// Everything compositing needs of one (camera, surfel), in two cache lines; the first
// holds what the per-pixel test reads.
struct alignas(64) Surfel2D {
    float c0[3], c1[3], c2[3];  // p = (x - sx) c0 + (y - sy) c1 + c2 (ray x surfel, ~ (u, v, 1))
    float sx, sy;               // origin s of that expansion: means2d clamped to the image
    float mx, my;               // filter centre (means2d)
    float o;                    // opacity
    float thr;                  // ln(255 o) + slack: alpha >= 1/255 needs sigma <= ln(255 o)
    float y_lo;                 // box of the alpha >= 1/255 region (ellipse and disc), with slack
    float y_hi, x_lo, x_hi;
    float payload[2 * MAX_CHANNELS];  // what is composited: features [D], normal [3], depth
    float c_scale;              // the c's are divided by this (their largest magnitude)
    float pad[16 - 4 - 2 * MAX_CHANNELS];
};
static_assert(sizeof(Surfel2D) == 128, "Surfel2D is two cache lines");

static inline void cross3(const double a[3], const double b[3], double out[3]) {
    out[0] = a[1] * b[2] - a[2] * b[1];
    out[1] = a[2] * b[0] - a[0] * b[2];
    out[2] = a[0] * b[1] - a[1] * b[0];
}

// <u, v>_R = u_x v_x + u_y v_y - R u_z v_z: a pixel is inside the surfel's
// rho3d <= R ellipse when <p, p>_R <= 0.
static inline double rdot(const float u[3], const float v[3], double R) {
    return (double)u[0] * v[0] + (double)u[1] * v[1] - R * u[2] * v[2];
}

// Binning test (see isect): may the alpha >= 1/255 region reach the rectangle of pixel
// centres? The filter disc by its distance to the rectangle; the ellipse by the minimum
// over the rectangle of <p, p>_R, a convex quadratic in the pixel when the ellipse is
// bounded (at the centre if inside, else on an edge). Unbounded conics keep the box.
static inline bool touches_rect(const Surfel2D& s, float x0, float x1, float y0, float y1) {
    if (x1 < s.x_lo || x0 > s.x_hi || y1 < s.y_lo || y0 > s.y_hi) return false;
    double ex = std::max({(double)x0 - s.mx, (double)s.mx - x1, 0.0});
    double ey = std::max({(double)y0 - s.my, (double)s.my - y1, 0.0});
    if (ex * ex + ey * ey <= s.thr) return true;
    double R = 2.0 * s.thr;
    double G00 = rdot(s.c0, s.c0, R), G01 = rdot(s.c0, s.c1, R), G11 = rdot(s.c1, s.c1, R);
    double G02 = rdot(s.c0, s.c2, R), G12 = rdot(s.c1, s.c2, R), G22 = rdot(s.c2, s.c2, R);
    double det = G00 * G11 - G01 * G01;
    if (!(G00 > 0 && det > 0)) return true;
    double X0 = (double)x0 - s.sx, X1 = (double)x1 - s.sx, Y0 = (double)y0 - s.sy, Y1 = (double)y1 - s.sy;
    double cx = (G01 * G12 - G11 * G02) / det, cy = (G01 * G02 - G00 * G12) / det;
    if (cx >= X0 && cx <= X1 && cy >= Y0 && cy <= Y1) return true;
    auto F = [&](double X, double Y) {
        return G00 * X * X + 2.0 * G01 * X * Y + G11 * Y * Y + 2.0 * (G02 * X + G12 * Y) + G22;
    };
    double best = INFINITY;
    for (double X : {X0, X1}) best = std::min(best, F(X, std::min(std::max(-(G01 * X + G12) / G11, Y0), Y1)));
    for (double Y : {Y0, Y1}) best = std::min(best, F(std::min(std::max(-(G01 * Y + G02) / G00, X0), X1), Y));
    return best <= 0.0;
}

// ----------------------------------------------------------------------------- per pixel
// Per-row constants of one surfel: p = dx c0 + q with q = (Y - sy) c1 + c2, and the
// filter's vertical offset.
struct SurfelRow {
    float qx, qy, qz, dys, fy, fy2;
};

static inline SurfelRow surfel_row(const Surfel2D& s, float Y) {
    SurfelRow r;
    r.dys = Y - s.sy;
    r.qx = r.dys * s.c1[0] + s.c2[0];
    r.qy = r.dys * s.c1[1] + s.c2[1];
    r.qz = r.dys * s.c1[2] + s.c2[2];
    r.fy = Y - s.my;
    r.fy2 = r.fy * r.fy;
    return r;
}

// alpha of one surfel on one vector of pixels, with the skip rule (valid mask), in two
// steps so the forward pass can drop a vector before the exponential. The forward and
// backward passes both use these, so they agree on every mask.
struct SAlpha {
    vf dx, fx, px, py, pz, rho3, sigma, alpha, raw, e;
    vi valid, use3;  // use3: the surfel's own falloff, not the filter, sets sigma
};

static inline void surfel_sigma(const Surfel2D& s, const SurfelRow& row, const vf& xs, SAlpha& a) {
    a.dx = xs - s.sx;
    a.px = a.dx * s.c0[0] + row.qx;
    a.py = a.dx * s.c0[1] + row.qy;
    a.pz = a.dx * s.c0[2] + row.qz;
    vf den = a.pz * a.pz;
    a.rho3 = den > 0.0f ? (a.px * a.px + a.py * a.py) / den : vsplat(INFINITY);
    a.fx = xs - s.mx;
    vf rho2 = 2.0f * (a.fx * a.fx + row.fy2);
    a.use3 = a.rho3 < rho2;  // on a tie torch.minimum would split the gradient; measure zero
    a.sigma = 0.5f * (a.use3 ? a.rho3 : rho2);
}

static inline void surfel_alpha(const Surfel2D& s, SAlpha& a) {
    a.e = vexp_neg(-a.sigma);
    a.raw = s.o * a.e;
    a.alpha = a.raw < ALPHA_MAX ? a.raw : vsplat(ALPHA_MAX);
    a.valid = a.alpha >= ALPHA_THRESHOLD;
}

static inline SAlpha salpha(const Surfel2D& s, const SurfelRow& row, const vf& xs) {
    SAlpha a;
    surfel_sigma(s, row, xs, a);
    surfel_alpha(s, a);
    return a;
}

// Rows [r0, r1] and pixel vectors [j0, j1] of the tile at (x0, y0) that the surfel's
// box reaches (empty ranges when it misses).
static inline void surfel_tile_span(const Surfel2D& s, int x0, int y0, int rows_in, int& r0, int& r1, int& j0,
                                    int& j1) {
    auto clampi = [](float v, int lo, int hi) { return (int)std::min(std::max(v, (float)lo), (float)hi); };
    r0 = clampi(std::ceil(s.y_lo - y0 - 0.5f), 0, TILE);
    r1 = clampi(std::floor(s.y_hi - y0 - 0.5f), -1, rows_in - 1);
    j0 = clampi(std::ceil((s.x_lo - x0 - L + 0.5f) / L - 1e-4f), 0, NV);
    j1 = clampi(std::floor((s.x_hi - x0 - 0.5f) / L + 1e-4f), -1, NV - 1);
}

template <int D>
void raster2_fwd(int C, int W, int H, const Surfel2D* splats, const int32_t* ids, const int64_t* tile_offsets,
                 float* out_feat, float* out_alpha, float* out_normal, float* out_depth, float* out_distort,
                 float* out_median, float* out_T, int32_t* out_last, int32_t* out_med, uint64_t* vecmask,
                 int nthreads) {
    constexpr int P = D + 4;  // composited channels: features, normal, depth (last)
    for_each_tile_heavy_first(C, W, H, tile_offsets, nthreads, [&](const Tile& tl) {
        const int64_t tile = tl.index;
        const int c = tl.c, x0 = tl.x0, y0 = tl.y0, rows_in = tl.rows_in;
        const vf* xs = tl.xs;
        const vi* outside_x = tl.outside_x;
        vf T[TILE][NV], acc[P][TILE][NV], dist[TILE][NV], med[TILE][NV];
        vi done[TILE][NV], lastk[TILE][NV], medk[TILE][NV];
        for (int r = 0; r < TILE; ++r)
            for (int j = 0; j < NV; ++j) {
                T[r][j] = vsplat(1.0f);
                dist[r][j] = med[r][j] = vf{};
                done[r][j] = r < rows_in ? outside_x[j] : vi{} - 1;
                lastk[r][j] = medk[r][j] = vi{} - 1;
                for (int ch = 0; ch < P; ++ch) acc[ch][r][j] = vf{};
            }
        bool all_done = false;
        for (int64_t k = tile_offsets[tile]; k < tile_offsets[tile + 1] && !all_done; ++k) {
            const Surfel2D& s = splats[ids[k]];
            const float d = s.payload[P - 1];
            int r0, r1, j0, j1;
            surfel_tile_span(s, x0, y0, rows_in, r0, r1, j0, j1);
            uint64_t mask = 0;
            vi any_stop = vi{};
            vi kv = vi{} + (int32_t)k;
            for (int r = r0; r <= r1; ++r) {
                SurfelRow row = surfel_row(s, y0 + r + 0.5f);
                for (int j = j0; j <= j1; ++j) {
                    if (vall(done[r][j])) continue;
                    SAlpha a;
                    surfel_sigma(s, row, xs[j], a);
                    // alpha >= 1/255 needs sigma <= ln(255 o) (thr has slack): most vectors
                    // of a small surfel's box miss, so test before the exponential
                    if (!vany((a.sigma <= s.thr) & (done[r][j] == 0))) continue;
                    surfel_alpha(s, a);
                    vi valid = a.valid & (done[r][j] == 0);
                    if (!vany(valid)) continue;
                    vf Tc = T[r][j];
                    vf next_T = Tc * (1.0f - a.alpha);
                    vi stop = valid & (next_T <= T_MIN);
                    vi contrib = valid & (next_T > T_MIN);
                    vf w = contrib ? a.alpha * Tc : vf{};
                    // the depth channel so far is sum_{j<i} w_j d_j
                    dist[r][j] += 2.0f * w * (d * (1.0f - Tc) - acc[P - 1][r][j]);
                    for (int ch = 0; ch < P; ++ch) acc[ch][r][j] += w * s.payload[ch];
                    vi at_median = contrib & (Tc > 0.5f);
                    medk[r][j] = at_median ? kv : medk[r][j];
                    med[r][j] = at_median ? vsplat(d) : med[r][j];
                    T[r][j] = contrib ? next_T : Tc;
                    lastk[r][j] = contrib ? kv : lastk[r][j];
                    done[r][j] |= stop;
                    any_stop |= stop;
                    if (vbits(contrib)) mask |= uint64_t(1) << (r * NV + j);
                }
            }
            vecmask[k] = mask;
            if (vany(any_stop)) all_done = tile_saturated(done);
        }
        for (int r = 0; r < rows_in; ++r) {
            int py = y0 + r;
            for (int x = 0; x < TILE && x0 + x < W; ++x) {
                int64_t pix = ((int64_t)c * H + py) * W + x0 + x;
                int j = x / L, l = x % L;
                for (int ch = 0; ch < D; ++ch) out_feat[pix * D + ch] = acc[ch][r][j][l];
                for (int i = 0; i < 3; ++i) out_normal[pix * 3 + i] = acc[D + i][r][j][l];
                out_depth[pix] = acc[P - 1][r][j][l];
                out_alpha[pix] = 1.0f - T[r][j][l];
                out_distort[pix] = dist[r][j][l];
                out_median[pix] = med[r][j][l];
                out_T[pix] = T[r][j][l];
                out_last[pix] = lastk[r][j][l];
                out_med[pix] = medk[r][j][l];
            }
        }
    });
}

// Backward of raster2_fwd, back to front per pixel. With w_i = alpha_i T_i, a loss
// L(w, d) has dL/dalpha_k = T_k G_k - (sum_{m>k} w_m G_m) / (1 - alpha_k), where
// G_m = dL/dw_m holding the other weights fixed. For the linear outputs G_m is the
// output gradients dotted with pair m's values (alpha's is 1); the distortion
// 2 sum_{j<i} w_i w_j (d_i - d_j) adds 2 g (d_m S_m - P_m + Dsa_m - d_m A_m) with the
// prefix sums S_m = 1 - T_m, P_m = sum_{j<m} w_j d_j and the suffix sums
// A_m = sum_{i>m} w_i, Dsa_m = sum_{i>m} w_i d_i, which the walk keeps (P from the
// forward's total sum w d). Depth gets w_m (g_depth + 2 g (S_m - A_m)), and the median
// pair g_median.
template <int D>
void raster2_bwd(int C, int N, int W, int H, const Surfel2D* splats, const float* Ms, const int32_t* ids,
                 const int64_t* tile_offsets, const float* T_final, const int32_t* last, const int32_t* med_in,
                 const float* depth_sum, const uint64_t* vecmask, const float* g_feat, const float* g_alpha,
                 const float* g_normal, const float* g_depth, const float* g_distort, const float* g_median,
                 float* out_means2d, float* out_Ms, float* out_normals, float* out_depths, float* out_opac,
                 float* out_feat, int nthreads) {
    constexpr int P = D + 4;
    constexpr int G = 16 + D;  // per pair: c0, c1, c2 [9], mx, my, o, features [D], normal [3], depth
    int64_t ntiles = num_tiles(C, W, H);
    int64_t CN = (int64_t)C * N;
    // Each (tile, surfel) pair writes its gradient to its own slot; slots are then summed
    // per surfel in pair order, so results do not depend on which thread ran which tile.
    int64_t M = tile_offsets[ntiles];
    std::unique_ptr<float[]> pair_grad(new float[std::max<int64_t>(M, 1) * G]);
    for_each_tile_heavy_first(C, W, H, tile_offsets, nthreads, [&](const Tile& tl) {
        const int64_t tile = tl.index;
        const int c = tl.c, x0 = tl.x0, y0 = tl.y0, rows_in = tl.rows_in;
        const vf* xs = tl.xs;
        // per pixel: transmittance and running sums of the walk, then output gradients
        vf T[TILE][NV], Rs[TILE][NV], Aa[TILE][NV], Da[TILE][NV], Dtot[TILE][NV];
        vf gA[TILE][NV], gDs[TILE][NV], gDi[TILE][NV], gMe[TILE][NV], gF[D][TILE][NV], gN[3][TILE][NV];
        vi lastk[TILE][NV], medk[TILE][NV];
        int32_t max_last = -1;
        for (int r = 0; r < TILE; ++r)
            for (int j = 0; j < NV; ++j) {
                T[r][j] = vsplat(1.0f);
                Rs[r][j] = Aa[r][j] = Da[r][j] = Dtot[r][j] = vf{};
                gA[r][j] = gDs[r][j] = gDi[r][j] = gMe[r][j] = vf{};
                for (int ch = 0; ch < D; ++ch) gF[ch][r][j] = vf{};
                for (int i = 0; i < 3; ++i) gN[i][r][j] = vf{};
                lastk[r][j] = medk[r][j] = vi{} - 1;
                for (int l = 0; l < L; ++l) {
                    int x = j * L + l;
                    if (r >= rows_in || x0 + x >= W) continue;
                    int64_t pix = ((int64_t)c * H + y0 + r) * W + x0 + x;
                    T[r][j][l] = T_final[pix];
                    Dtot[r][j][l] = depth_sum[pix];
                    lastk[r][j][l] = last[pix];
                    medk[r][j][l] = med_in[pix];
                    max_last = std::max(max_last, last[pix]);
                    if (g_feat)
                        for (int ch = 0; ch < D; ++ch) gF[ch][r][j][l] = g_feat[pix * D + ch];
                    if (g_normal)
                        for (int i = 0; i < 3; ++i) gN[i][r][j][l] = g_normal[pix * 3 + i];
                    if (g_alpha) gA[r][j][l] = g_alpha[pix];
                    if (g_depth) gDs[r][j][l] = g_depth[pix];
                    if (g_distort) gDi[r][j][l] = g_distort[pix];
                    if (g_median) gMe[r][j][l] = g_median[pix];
                }
            }
        for (int64_t k = tile_offsets[tile + 1] - 1; k >= tile_offsets[tile]; --k) {
            uint64_t mask = k <= max_last ? vecmask[k] : 0;
            float* out = pair_grad.get() + k * G;
            if (!mask) {
                for (int i = 0; i < G; ++i) out[i] = 0.0f;
                continue;
            }
            const Surfel2D& s = splats[ids[k]];
            const float d = s.payload[P - 1];
            // per-lane sums in the slot's layout (see G), summed over lanes at the end
            vf m[G];
            for (int i = 0; i < G; ++i) m[i] = vf{};
            vf *const v_c = m, *const v_f = m + 12, *const v_n = m + 12 + D;
            vf &v_mx = m[9], &v_my = m[10], &v_o = m[11], &v_d = m[15 + D];
            vi kv = vi{} + (int32_t)k;
            while (mask) {
                int bit = __builtin_ctzll(mask);
                mask &= mask - 1;
                int r = bit / NV, j = bit % NV;
                SurfelRow row = surfel_row(s, y0 + r + 0.5f);
                SAlpha a = salpha(s, row, xs[j]);
                vi valid = a.valid & (kv <= lastk[r][j]);
                vf one_m = 1.0f - a.alpha;
                vf Tk = T[r][j] / one_m;
                vf w = a.alpha * Tk;
                vf S = 1.0f - Tk;
                vf Pk = Dtot[r][j] - Da[r][j] - w * d;
                vf Gk = gA[r][j] + gDs[r][j] * d;
                for (int ch = 0; ch < D; ++ch) Gk += gF[ch][r][j] * s.payload[ch];
                for (int i = 0; i < 3; ++i) Gk += gN[i][r][j] * s.payload[D + i];
                Gk += 2.0f * gDi[r][j] * (d * (S - Aa[r][j]) - Pk + Da[r][j]);
                vf dalpha = Tk * Gk - Rs[r][j] / one_m;
                vi free_alpha = valid & (a.raw < ALPHA_MAX);
                v_o += free_alpha ? dalpha * a.e : vf{};
                vf gsig = free_alpha ? -dalpha * a.alpha : vf{};
                // sigma = min(rho3d, rho2d) / 2, rho3d = (px^2 + py^2) / pz^2, rho2d = 2 |f|^2
                vf iz = 1.0f / a.pz;
                vf t3 = a.use3 ? gsig * iz * iz : vf{};
                vf gpx = t3 * a.px, gpy = t3 * a.py;
                vf gpz = a.use3 ? -gsig * a.rho3 * iz : vf{};
                v_c[0] += a.dx * gpx; v_c[1] += a.dx * gpy; v_c[2] += a.dx * gpz;
                v_c[3] += row.dys * gpx; v_c[4] += row.dys * gpy; v_c[5] += row.dys * gpz;
                v_c[6] += gpx; v_c[7] += gpy; v_c[8] += gpz;
                vf g2 = a.use3 ? vf{} : gsig;
                v_mx -= 2.0f * g2 * a.fx;
                v_my -= 2.0f * g2 * row.fy;
                vf wv = valid ? w : vf{};
                for (int ch = 0; ch < D; ++ch) v_f[ch] += wv * gF[ch][r][j];
                for (int i = 0; i < 3; ++i) v_n[i] += wv * gN[i][r][j];
                v_d += wv * (gDs[r][j] + 2.0f * gDi[r][j] * (S - Aa[r][j]));
                v_d += kv == medk[r][j] ? gMe[r][j] : vf{};
                Rs[r][j] += wv * Gk;
                Aa[r][j] += wv;
                Da[r][j] += wv * d;
                T[r][j] = valid ? Tk : T[r][j];
            }
            vsums<G>(m, out);
        }
    });
    reduce_pair_grads<G>(M, CN, pair_grad.get(), ids, nullptr, nthreads, [&](int64_t g, const float* acc) {
        out_means2d[2 * g] = acc[9];
        out_means2d[2 * g + 1] = acc[10];
        out_opac[g] = acc[11];
        for (int ch = 0; ch < D; ++ch) out_feat[g * D + ch] = acc[12 + ch];
        for (int i = 0; i < 3; ++i) out_normals[3 * g + i] = acc[12 + D + i];
        out_depths[g] = acc[15 + D];
        // c0 = r1 x m2, c1 = m2 x r0, c2 = r0 x r1 with r0, r1, m2 the rows of Ms; the
        // packed c's were divided by c_scale, a constant of the parametrisation like s
        const float* Mg = Ms + 9 * g;
        double inv_k = 1.0 / splats[g].c_scale;
        double m2[3], r0[3], r1[3], gc0[3], gc1[3], gc2[3];
        for (int i = 0; i < 3; ++i) {
            r0[i] = Mg[i];
            r1[i] = Mg[3 + i];
            m2[i] = Mg[6 + i];
            gc0[i] = acc[i] * inv_k;
            gc1[i] = acc[3 + i] * inv_k;
            gc2[i] = acc[6 + i] * inv_k;
        }
        double t1[3], t2[3], gr0[3], gr1[3], gm2[3];
        cross3(gc1, m2, t1);  // d(a x b)/da = b x g, d(a x b)/db = g x a
        cross3(r1, gc2, t2);
        for (int i = 0; i < 3; ++i) gr0[i] = t1[i] + t2[i];
        cross3(gc2, r0, t1);
        cross3(m2, gc0, t2);
        for (int i = 0; i < 3; ++i) gr1[i] = t1[i] + t2[i];
        cross3(gc0, r1, t1);
        cross3(r0, gc1, t2);
        for (int i = 0; i < 3; ++i) gm2[i] = t1[i] + t2[i];
        float* gM = out_Ms + 9 * g;
        for (int i = 0; i < 3; ++i) {
            gM[i] = (float)gr0[i];
            gM[3 + i] = (float)gr1[i];
            gM[6 + i] = (float)gm2[i];
        }
    });
}

}  // namespace

extern "C" {

// Outputs per (camera, surfel), flat index c * N + n: means2d [2], the ray transform
// re-centred on the origin s (Ms [9], row-major) and s [2], the camera-space normal
// facing the camera [3], depth, radii [2] (int32, 0 = culled) and colours [3] (only
// when sh_degree >= 0; SH coefficients laid out as for sk_project_fwd: band 0 at
// sh0 + n * stride0, the bands above at shN + n * strideN). scales is [N, 2].
void sk2_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                     const float* opacities, const float* sh0, const float* shN, int64_t stride0,
                     int64_t strideN, int sh_degree, const float* viewmats,
                     const float* Ks, int W, int H, float near_plane, float far_plane, float radius_clip,
                     float* means2d, float* Ms, float* shift, float* normals, float* depths, int32_t* radii,
                     float* colors, int nthreads) {
    std::vector<SCam> cams(C);
    for (int c = 0; c < C; ++c) cams[c] = load_scam(viewmats + 16 * c, Ks + 9 * c);
    parallel_chunks((int64_t)C * N, nthreads, 2048, [&](int64_t b, int64_t e, int) {
        for (int64_t idx = b; idx < e; ++idx) {
            int c = (int)(idx / N);
            int64_t n = idx % N;
            const SCam& cam = cams[c];
            SurfelProj P = project_surfel(cam, means + 3 * n, quats + 4 * n, scales + 2 * n);
            means2d[2 * idx] = (float)P.mx;
            means2d[2 * idx + 1] = (float)P.my;
            float sx = P.mx >= 0.0 ? (float)std::min(P.mx, (double)W) : 0.0f;  // NaN -> 0
            float sy = P.my >= 0.0 ? (float)std::min(P.my, (double)H) : 0.0f;
            shift[2 * idx] = sx;
            shift[2 * idx + 1] = sy;
            for (int j = 0; j < 3; ++j) {
                Ms[9 * idx + j] = (float)(P.M[0][j] - sx * P.M[2][j]);
                Ms[9 * idx + 3 + j] = (float)(P.M[1][j] - sy * P.M[2][j]);
                Ms[9 * idx + 6 + j] = (float)P.M[2][j];
            }
            for (int i = 0; i < 3; ++i) normals[3 * idx + i] = (float)P.normal[i];
            depths[idx] = (float)P.pc[2];
            double o = opacities[n], rx, ry;
            surfel_radii(P, o, W, H, rx, ry);
            bool vis = P.pc[2] > near_plane && P.pc[2] < far_plane && P.dist != 0 && o >= 1.0 / 255.0 &&
                       (rx > radius_clip || ry > radius_clip) && P.mx + rx > 0 && P.mx - rx < W &&
                       P.my + ry > 0 && P.my - ry < H;
            radii[2 * idx] = vis ? (int32_t)rx : 0;
            radii[2 * idx + 1] = vis ? (int32_t)ry : 0;
            if (!colors) continue;
            colors[3 * idx] = colors[3 * idx + 1] = colors[3 * idx + 2] = 0.0f;
            if (!vis || sh_degree < 0) continue;
            const float* m = means + 3 * n;
            float dir[3] = {m[0] - cam.campos[0], m[1] - cam.campos[1], m[2] - cam.campos[2]};
            sh_color(sh_degree, dir, sh0 + n * stride0, shN ? shN + n * strideN : nullptr, colors + 3 * idx);
        }
    });
}

// Gradients of the surfel projection from those of means2d [2], Ms [9], normals [3],
// depths and colours [3] of every (camera, surfel), each of which may be null (shift
// is the forward's s);
// accumulated over cameras into means [N,3], quats [N,4], scales [N,2] and the SH
// coefficients' g_sh0 and g_shN, laid out as sh0 and shN (all zero-initialised by the
// caller). Unlike the 3DGS projection, culled pairs are differentiated too, as in the
// reference, whose means2d, normals and depths are defined for every surfel; pairs
// without incoming gradient are skipped.
void sk2_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                     const float* sh0, const float* shN, int64_t stride0, int64_t strideN, int sh_degree,
                     const float* viewmats, const float* Ks,
                     const float* shift, const float* g_means2d, const float* g_Ms, const float* g_normals,
                     const float* g_depths, const float* g_colors, float* g_means, float* g_quats, float* g_scales,
                     float* g_sh0, float* g_shN, int nthreads) {
    // Work items are ranges of surfels; cameras are looped inside, so each output row is
    // written by one thread only.
    std::vector<SCam> cams(C);
    for (int c = 0; c < C; ++c) cams[c] = load_scam(viewmats + 16 * c, Ks + 9 * c);
    parallel_chunks(N, nthreads, 1024, [&](int64_t nb, int64_t ne, int) {
        for (int64_t n = nb; n < ne; ++n) {
            const float* m = means + 3 * n;
            double gmean[3] = {0, 0, 0}, gquat[4] = {0, 0, 0, 0}, gscale[2] = {0, 0};
            for (int c = 0; c < C; ++c) {
                const SCam& cam = cams[c];
                int64_t idx = (int64_t)c * N + n;
                if (g_colors && sh_degree >= 0) {
                    const float* gc = g_colors + 3 * idx;
                    if (gc[0] != 0.0f || gc[1] != 0.0f || gc[2] != 0.0f) {
                        float dir[3] = {m[0] - cam.campos[0], m[1] - cam.campos[1], m[2] - cam.campos[2]};
                        sh_color_bwd(sh_degree, dir, sh0 + n * stride0, shN ? shN + n * strideN : nullptr, gc,
                                     g_sh0 + n * stride0, g_shN ? g_shN + n * strideN : nullptr, g_means + 3 * n);
                    }
                }
                double gM[3][3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}}, gm2[2] = {0, 0}, gn[3] = {0, 0, 0}, gd = 0;
                bool any = false;
                if (g_Ms)
                    for (int i = 0; i < 9; ++i) any |= (gM[i / 3][i % 3] = g_Ms[9 * idx + i]) != 0.0;
                if (g_means2d)
                    for (int i = 0; i < 2; ++i) any |= (gm2[i] = g_means2d[2 * idx + i]) != 0.0;
                if (g_normals)
                    for (int i = 0; i < 3; ++i) any |= (gn[i] = g_normals[3 * idx + i]) != 0.0;
                if (g_depths) any |= (gd = g_depths[idx]) != 0.0;
                if (!any) continue;
                SurfelProj P = project_surfel(cam, m, quats + 4 * n, scales + 2 * n);
                const double(*M)[3] = P.M;
                // Ms = [M0 - sx M2; M1 - sy M2; M2] with s constant
                for (int j = 0; j < 3; ++j) gM[2][j] -= shift[2 * idx] * gM[0][j] + shift[2 * idx + 1] * gM[1][j];
                // means2d = (M0 . sg M2, M1 . sg M2) / dist with sg = (1, 1, -1) and
                // dist = M2 . sg M2 (replaced by 1 where it is 0, as in the reference)
                if (gm2[0] != 0.0 || gm2[1] != 0.0) {
                    const double sg[3] = {1.0, 1.0, -1.0};
                    double ds = P.dist != 0 ? P.dist : 1.0;
                    double gx = gm2[0] / ds, gy = gm2[1] / ds;
                    double gdist = P.dist != 0 ? 2.0 * (gx * P.mx + gy * P.my) : 0.0;
                    for (int j = 0; j < 3; ++j) {
                        gM[0][j] += gx * sg[j] * M[2][j];
                        gM[1][j] += gy * sg[j] * M[2][j];
                        gM[2][j] += sg[j] * (gx * M[0][j] + gy * M[1][j] - gdist * M[2][j]);
                    }
                }
                // M = K [a | b | p_c]
                double gWH[3][3];
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        gWH[i][j] = cam.K[0][i] * gM[0][j] + cam.K[1][i] * gM[1][j] + cam.K[2][i] * gM[2][j];
                gWH[2][2] += gd;  // depth = p_c.z
                // a = Rv Rg[:, 0] s_u, b = Rv Rg[:, 1] s_v, p_c = Rv m + t, normal = flip Rv Rg[:, 2]
                double gRg[3][3];
                for (int i = 0; i < 3; ++i) {
                    double wa = 0, wb = 0, wp = 0, wn = 0;
                    for (int k = 0; k < 3; ++k) {
                        wa += cam.R[k][i] * gWH[k][0];
                        wb += cam.R[k][i] * gWH[k][1];
                        wp += cam.R[k][i] * gWH[k][2];
                        wn += cam.R[k][i] * gn[k];
                    }
                    gmean[i] += wp;
                    gRg[i][0] = wa * scales[2 * n];
                    gRg[i][1] = wb * scales[2 * n + 1];
                    gRg[i][2] = P.flip * wn;
                    gscale[0] += P.Rg[i][0] * wa;
                    gscale[1] += P.Rg[i][1] * wb;
                }
                double gq[4];
                rotmat_grad_to_quat(P.qn, gRg, gq);
                double dot = gq[0] * P.qn[0] + gq[1] * P.qn[1] + gq[2] * P.qn[2] + gq[3] * P.qn[3];
                for (int i = 0; i < 4; ++i) gquat[i] += (gq[i] - P.qn[i] * dot) / P.qlen;
            }
            for (int i = 0; i < 3; ++i) g_means[3 * n + i] += (float)gmean[i];
            for (int i = 0; i < 4; ++i) g_quats[4 * n + i] += (float)gquat[i];
            for (int i = 0; i < 2; ++i) g_scales[2 * n + i] += (float)gscale[i];
        }
    });
}

// Surfel splats [C * N] (32 floats each) from means2d [2], Ms [9] and its origin s
// [2], opacities, normals [3], depths and features [D] of every (camera, surfel): the
// expansion of the ray-surfel intersection around s (in double), the culling
// threshold and the box of the alpha >= 1/255 region (ellipse from its dual conic,
// unbounded when that is not an ellipse, and the filter disc), widened a little so
// culling stays conservative.
void sk2_pack(int64_t CN, int D, const float* means2d, const float* Ms, const float* shift, const float* opac,
              const float* normals, const float* depths, const float* feats, float* out, int nthreads) {
    Surfel2D* splats = reinterpret_cast<Surfel2D*>(out);
    parallel_chunks(CN, nthreads, 4096, [&](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g) {
            Surfel2D s;
            std::memset(&s, 0, sizeof(s));
            s.mx = means2d[2 * g];
            s.my = means2d[2 * g + 1];
            s.sx = shift[2 * g];
            s.sy = shift[2 * g + 1];
            double m[3][3];  // rows of Ms: M0 - sx M2, M1 - sy M2, M2
            for (int i = 0; i < 9; ++i) m[i / 3][i % 3] = Ms[9 * g + i];
            double c0[3], c1[3], c2[3];
            cross3(m[1], m[2], c0);
            cross3(m[2], m[0], c1);
            cross3(m[0], m[1], c2);
            // p is homogeneous and grows as |M|^2 (the squared scales): normalised, p_z^2
            // neither underflows nor overflows in float32 for tiny or huge surfels
            double k = 0.0;
            for (int i = 0; i < 3; ++i) k = std::max({k, std::fabs(c0[i]), std::fabs(c1[i]), std::fabs(c2[i])});
            k = k > 0.0 && std::isfinite(k) ? (double)(float)std::min(std::max(k, 1e-30), 1e30) : 1.0;
            s.c_scale = (float)k;
            for (int i = 0; i < 3; ++i) {
                s.c0[i] = (float)(c0[i] / k);
                s.c1[i] = (float)(c1[i] / k);
                s.c2[i] = (float)(c2[i] / k);
            }
            s.o = opac[g];
            s.thr = (float)(std::log(std::max((double)s.o, 1.0 / 255.0) * 255.0) + 1e-4);
            double R = 2.0 * s.thr;
            auto dual = [&](int i, int j) { return R * (m[i][0] * m[j][0] + m[i][1] * m[j][1]) - m[i][2] * m[j][2]; };
            double c22 = dual(2, 2);
            double xlo = -1e30, xhi = 1e30, ylo = -1e30, yhi = 1e30;
            if (c22 < 0) {
                double cx = dual(0, 2) / c22, cy = dual(1, 2) / c22;
                double hx = std::sqrt(std::max(cx * cx - dual(0, 0) / c22, 0.0));
                double hy = std::sqrt(std::max(cy * cy - dual(1, 1) / c22, 0.0));
                double sl_x = 1e-2 + 1e-4 * hx, sl_y = 1e-2 + 1e-4 * hy;
                double rd = std::sqrt((double)s.thr) + 1e-2;
                xlo = std::min(s.sx + cx - hx - sl_x, s.mx - rd);
                xhi = std::max(s.sx + cx + hx + sl_x, s.mx + rd);
                ylo = std::min(s.sy + cy - hy - sl_y, s.my - rd);
                yhi = std::max(s.sy + cy + hy + sl_y, s.my + rd);
            }
            s.x_lo = (float)xlo;
            s.x_hi = (float)xhi;
            s.y_lo = (float)ylo;
            s.y_hi = (float)yhi;
            for (int ch = 0; ch < D; ++ch) s.payload[ch] = feats[g * D + ch];
            for (int i = 0; i < 3; ++i) s.payload[D + i] = normals[3 * g + i];
            s.payload[D + 3] = depths[g];
            splats[g] = s;
        }
    });
}

// Tile lists of all cameras for packed surfels (see isect). Free with sk_free.
int64_t sk2_isect(int C, int N, const float* packed, const int32_t* radii, const float* depths, int W, int H,
                  int32_t** out_ids, int64_t* tile_offsets, int nthreads) {
    return isect(C, N, reinterpret_cast<const Surfel2D*>(packed), radii, depths, W, H, out_ids, tile_offsets,
                 nthreads);
}

// Per pixel: features [D], alpha, normal [3], sum w d, distortion, median depth, and
// for the backward pass the final transmittance, the last contributing pair and the
// median pair (-1 if none); per pair the vectors where it contributed (vecmask).
int sk2_raster_fwd(int C, int W, int H, int D, const float* packed, const int32_t* ids, const int64_t* tile_offsets,
                   float* out_feat, float* out_alpha, float* out_normal, float* out_depth, float* out_distort,
                   float* out_median, float* out_T, int32_t* out_last, int32_t* out_med, uint64_t* vecmask,
                   int nthreads) {
    const Surfel2D* splats = reinterpret_cast<const Surfel2D*>(packed);
    SK_DISPATCH(D, raster2_fwd<DD>(C, W, H, splats, ids, tile_offsets, out_feat, out_alpha, out_normal, out_depth,
                                   out_distort, out_median, out_T, out_last, out_med, vecmask, nthreads));
    return 0;
}

// Gradients of means2d [2], Ms [9], normals [3], depths, opacities and features [D] of
// every (camera, surfel) from those of the six per-pixel outputs (each may be null).
int sk2_raster_bwd(int C, int N, int W, int H, int D, const float* packed, const float* Ms, const int32_t* ids,
                   const int64_t* tile_offsets, const float* T_final, const int32_t* last, const int32_t* med,
                   const float* depth_sum, const uint64_t* vecmask, const float* g_feat, const float* g_alpha,
                   const float* g_normal, const float* g_depth, const float* g_distort, const float* g_median,
                   float* out_means2d, float* out_Ms, float* out_normals, float* out_depths, float* out_opac,
                   float* out_feat, int nthreads) {
    const Surfel2D* splats = reinterpret_cast<const Surfel2D*>(packed);
    SK_DISPATCH(D, raster2_bwd<DD>(C, N, W, H, splats, Ms, ids, tile_offsets, T_final, last, med, depth_sum,
                                   vecmask, g_feat, g_alpha, g_normal, g_depth, g_distort, g_median, out_means2d,
                                   out_Ms, out_normals, out_depths, out_opac, out_feat, nthreads));
    return 0;
}

}  // extern "C"
