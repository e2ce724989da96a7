// splatkit compiled CPU rasterizer: projection, SH, binning, compositing, and their
// backward passes. Plain C++17 with std::thread; no PyTorch headers (the Python side
// passes raw pointers through ctypes), so it compiles in seconds and never meets a
// second OpenMP runtime. The maths is the reference's (splatkit/renderer/projection.py
// and backends/torch_ref.py); tests compare the two forward and backward.
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
#include <thread>
#include <vector>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

constexpr int TILE = 16;
constexpr int TILE_PIX = TILE * TILE;
constexpr float ALPHA_THRESHOLD = 1.0f / 255.0f;
constexpr float ALPHA_MAX = 0.999f;
constexpr float T_MIN = 1e-4f;
constexpr float MAX_EXTENT = 3.33f;

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

template <class F>
void parallel_for(int64_t n, int nthreads, F&& body) {
    if (n <= 0) return;
    FlushDenormals ftz;
    if (nthreads <= 1 || n == 1) {
        for (int64_t i = 0; i < n; ++i) body(i, 0);
        return;
    }
    std::atomic<int64_t> next(0);
    auto worker = [&](int tid) {
        FlushDenormals ftz_worker;
        for (;;) {
            int64_t i = next.fetch_add(1, std::memory_order_relaxed);
            if (i >= n) break;
            body(i, tid);
        }
    };
    std::vector<std::thread> pool;
    int extra = (int)std::min<int64_t>(nthreads, n) - 1;
    pool.reserve(extra);
    for (int t = 1; t <= extra; ++t) pool.emplace_back(worker, t);
    worker(0);
    for (auto& t : pool) t.join();
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

// ----------------------------------------------------------------------------- exp
// exp(x) for x <= 0, vectorisable: 2^round(t) * e^(f ln 2), |f| <= 1/2, degree-6
// Taylor (relative error ~1e-7, the float32 rounding level).
static inline float exp_neg(float x) {
    x = x < -80.0f ? -80.0f : x;
    float t = x * 1.4426950408889634f;
    float r = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22)
    float f = (t - r) * 0.6931471805599453f;
    float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6.0f + f * (1.0f / 24.0f + f * (1.0f / 120.0f + f * (1.0f / 720.0f))))));
    int32_t bits = ((int32_t)r + 127) << 23;
    return p * __builtin_bit_cast(float, bits);
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

// ----------------------------------------------------------------------------- 3x3 helpers
struct Mat3 {
    float m[3][3];
};

static inline Mat3 quat_to_rot(const float* q, float* qn_out) {
    float w = q[0], x = q[1], y = q[2], z = q[3];
    float inv = 1.0f / std::max(std::sqrt(w * w + x * x + y * y + z * z), 1e-12f);
    w *= inv; x *= inv; y *= inv; z *= inv;
    if (qn_out) { qn_out[0] = w; qn_out[1] = x; qn_out[2] = y; qn_out[3] = z; }
    Mat3 R;
    R.m[0][0] = 1 - 2 * (y * y + z * z); R.m[0][1] = 2 * (x * y - w * z); R.m[0][2] = 2 * (x * z + w * y);
    R.m[1][0] = 2 * (x * y + w * z); R.m[1][1] = 1 - 2 * (x * x + z * z); R.m[1][2] = 2 * (y * z - w * x);
    R.m[2][0] = 2 * (x * z - w * y); R.m[2][1] = 2 * (y * z + w * x); R.m[2][2] = 1 - 2 * (x * x + y * y);
    return R;
}

static inline Mat3 mul(const Mat3& a, const Mat3& b) {
    Mat3 c;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) c.m[i][j] = a.m[i][0] * b.m[0][j] + a.m[i][1] * b.m[1][j] + a.m[i][2] * b.m[2][j];
    return c;
}

static inline Mat3 transpose(const Mat3& a) {
    Mat3 t;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) t.m[i][j] = a.m[j][i];
    return t;
}

struct Camera {
    Mat3 R;
    float t[3];
    float fx, fy, cx, cy;
    float campos[3];
};

static inline Camera load_camera(const float* viewmat, const float* K) {
    Camera c;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) c.R.m[i][j] = viewmat[i * 4 + j];
        c.t[i] = viewmat[i * 4 + 3];
    }
    c.fx = K[0]; c.fy = K[4]; c.cx = K[2]; c.cy = K[5];
    for (int i = 0; i < 3; ++i) c.campos[i] = -(c.R.m[0][i] * c.t[0] + c.R.m[1][i] * c.t[1] + c.R.m[2][i] * c.t[2]);
    return c;
}

// Intermediates of one Gaussian's projection into one camera, shared by fwd and bwd.
struct Proj {
    float tx, ty, tz;
    Mat3 Rg;        // rotation of the Gaussian
    float qn[4];    // normalised quaternion
    Mat3 cov_c;     // camera-space covariance
    float J[2][3];
    bool clamp_x, clamp_y;
    float ux, uy;   // (clamped) tx/tz and ty/tz used in J
    float a, b, c;  // 2D covariance before blur
    float det_orig, det;
    float comp;     // opacity compensation (1 in classic mode)
};

// Returns false when the Gaussian is culled by depth or a degenerate covariance.
static inline bool project_one(const float* mean, const float* quat, const float* scale, const Camera& cam,
                               int W, int H, float near_plane, float far_plane, float eps2d, bool antialiased,
                               Proj& P) {
    P.tx = cam.R.m[0][0] * mean[0] + cam.R.m[0][1] * mean[1] + cam.R.m[0][2] * mean[2] + cam.t[0];
    P.ty = cam.R.m[1][0] * mean[0] + cam.R.m[1][1] * mean[1] + cam.R.m[1][2] * mean[2] + cam.t[1];
    P.tz = cam.R.m[2][0] * mean[0] + cam.R.m[2][1] * mean[1] + cam.R.m[2][2] * mean[2] + cam.t[2];
    if (!(P.tz > near_plane && P.tz < far_plane)) return false;
    P.Rg = quat_to_rot(quat, P.qn);
    Mat3 M;
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) M.m[i][j] = P.Rg.m[i][j] * scale[j];
    Mat3 cov = mul(M, transpose(M));
    P.cov_c = mul(mul(cam.R, cov), transpose(cam.R));
    float tz = P.tz;
    float limx_pos = (W - cam.cx) / cam.fx + 0.3f * (0.5f * W / cam.fx);
    float limx_neg = cam.cx / cam.fx + 0.3f * (0.5f * W / cam.fx);
    float limy_pos = (H - cam.cy) / cam.fy + 0.3f * (0.5f * H / cam.fy);
    float limy_neg = cam.cy / cam.fy + 0.3f * (0.5f * H / cam.fy);
    float u = P.tx / tz, v = P.ty / tz;
    P.clamp_x = u < -limx_neg || u > limx_pos;
    P.clamp_y = v < -limy_neg || v > limy_pos;
    P.ux = std::min(std::max(u, -limx_neg), limx_pos);
    P.uy = std::min(std::max(v, -limy_neg), limy_pos);
    P.J[0][0] = cam.fx / tz; P.J[0][1] = 0; P.J[0][2] = -cam.fx * P.ux / tz;
    P.J[1][0] = 0; P.J[1][1] = cam.fy / tz; P.J[1][2] = -cam.fy * P.uy / tz;
    float JS[2][3];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j)
            JS[i][j] = P.J[i][0] * P.cov_c.m[0][j] + P.J[i][1] * P.cov_c.m[1][j] + P.J[i][2] * P.cov_c.m[2][j];
    float c00 = JS[0][0] * P.J[0][0] + JS[0][1] * P.J[0][1] + JS[0][2] * P.J[0][2];
    float c01 = JS[0][0] * P.J[1][0] + JS[0][1] * P.J[1][1] + JS[0][2] * P.J[1][2];
    float c10 = JS[1][0] * P.J[0][0] + JS[1][1] * P.J[0][1] + JS[1][2] * P.J[0][2];
    float c11 = JS[1][0] * P.J[1][0] + JS[1][1] * P.J[1][1] + JS[1][2] * P.J[1][2];
    P.a = c00; P.b = 0.5f * (c01 + c10); P.c = c11;
    P.det_orig = P.a * P.c - P.b * P.b;
    P.det = (P.a + eps2d) * (P.c + eps2d) - P.b * P.b;
    if (!(P.det > 0)) return false;
    P.comp = antialiased ? std::sqrt(std::max(P.det_orig / P.det, 0.0f)) : 1.0f;
    return true;
}

}  // namespace

extern "C" {

// ============================================================================ projection
// Outputs per (camera, Gaussian), flat index c * N + n:
//   means2d [2], conics [3], opac [1], depths [1], radii [2] (int32, 0 = culled),
//   colors [3] (only when sh_degree >= 0; coeffs is [N, K, 3]).
void sk_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opacities, const float* coeffs, int K, int sh_degree,
                    const float* viewmats, const float* Ks, int W, int H, float near_plane, float far_plane,
                    float eps2d, float radius_clip, int antialiased, float* means2d, float* conics, float* opac,
                    float* depths, int32_t* radii, float* colors, int nthreads) {
    parallel_chunks((int64_t)C * N, nthreads, 4096, [&](int64_t begin, int64_t end, int) {
        for (int64_t idx = begin; idx < end; ++idx) {
            int c = (int)(idx / N);
            int64_t n = idx % N;
            Camera cam = load_camera(viewmats + 16 * c, Ks + 9 * c);
            Proj P;
            radii[2 * idx] = radii[2 * idx + 1] = 0;
            means2d[2 * idx] = means2d[2 * idx + 1] = 0;
            conics[3 * idx] = conics[3 * idx + 1] = conics[3 * idx + 2] = 0;
            opac[idx] = 0;
            depths[idx] = 0;
            if (colors) colors[3 * idx] = colors[3 * idx + 1] = colors[3 * idx + 2] = 0;
            if (!project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, cam, W, H, near_plane, far_plane, eps2d,
                             antialiased != 0, P))
                continue;
            float ap = P.a + eps2d, cp = P.c + eps2d;
            float o = opacities[n] * P.comp;
            float mx = cam.fx * P.tx / P.tz + cam.cx;
            float my = cam.fy * P.ty / P.tz + cam.cy;
            means2d[2 * idx] = mx;
            means2d[2 * idx + 1] = my;
            conics[3 * idx] = cp / P.det;
            conics[3 * idx + 1] = -P.b / P.det;
            conics[3 * idx + 2] = ap / P.det;
            opac[idx] = o;
            depths[idx] = P.tz;
            if (!(o >= ALPHA_THRESHOLD)) continue;
            float extent = std::min(MAX_EXTENT, std::sqrt(2.0f * std::log(o / ALPHA_THRESHOLD)));
            float rx = std::ceil(extent * std::sqrt(std::max(ap, 0.0f)));
            float ry = std::ceil(extent * std::sqrt(std::max(cp, 0.0f)));
            if (!(rx > radius_clip || ry > radius_clip)) continue;
            if (!(mx + rx > 0 && mx - rx < W && my + ry > 0 && my - ry < H)) continue;
            radii[2 * idx] = (int32_t)rx;
            radii[2 * idx + 1] = (int32_t)ry;
            if (colors && sh_degree >= 0) {
                float d[3] = {means[3 * n] - cam.campos[0], means[3 * n + 1] - cam.campos[1],
                              means[3 * n + 2] - cam.campos[2]};
                float inv = 1.0f / std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
                float Y[16];
                sh_basis(sh_degree, d[0] * inv, d[1] * inv, d[2] * inv, Y);
                int nb = (sh_degree + 1) * (sh_degree + 1);
                const float* co = coeffs + (int64_t)n * K * 3;
                for (int ch = 0; ch < 3; ++ch) {
                    float s = 0.5f;
                    for (int k = 0; k < nb; ++k) s += Y[k] * co[3 * k + ch];
                    colors[3 * idx + ch] = std::max(s, 0.0f);
                }
            }
        }
    });
}

// Gradients of the projection. Inputs are the gradients of means2d [2], conics [3],
// opac, colors [3] (may be null) and depths (may be null) for every (camera, Gaussian);
// outputs (accumulated over cameras) are the gradients of means [N,3], quats [N,4],
// scales [N,3], opacities [N] and SH coefficients [N,K,3]. Culled pairs contribute 0.
void sk_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opacities, const float* coeffs, int K, int sh_degree, const float* viewmats,
                    const float* Ks, int W, int H, float near_plane, float far_plane, float eps2d, int antialiased,
                    const int32_t* radii, const float* colors, const float* g_means2d, const float* g_conics,
                    const float* g_opac, const float* g_colors, const float* g_depths, float* g_means,
                    float* g_quats, float* g_scales, float* g_opacities, float* g_coeffs, int nthreads) {
    // Gaussians are independent; cameras are looped inside so each output row is
    // written by one thread only.
    parallel_chunks(N, nthreads, 2048, [&](int64_t begin, int64_t end, int) {
        for (int64_t n = begin; n < end; ++n) {
            for (int c = 0; c < C; ++c) {
                int64_t idx = (int64_t)c * N + n;
                if (radii[2 * idx] == 0 && radii[2 * idx + 1] == 0) continue;
                Camera cam = load_camera(viewmats + 16 * c, Ks + 9 * c);
                Proj P;
                if (!project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, cam, W, H, near_plane, far_plane,
                                 eps2d, antialiased != 0, P))
                    continue;
                float g_p[3] = {0, 0, 0};  // d L / d (tx, ty, tz)
                float* gm = g_means + 3 * n;
                // --- SH colour -> coefficients and view direction
                if (g_colors && sh_degree >= 0) {
                    float d[3] = {means[3 * n] - cam.campos[0], means[3 * n + 1] - cam.campos[1],
                                  means[3 * n + 2] - cam.campos[2]};
                    float len = std::max(std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]), 1e-12f);
                    float x = d[0] / len, y = d[1] / len, z = d[2] / len;
                    float Y[16];
                    sh_basis(sh_degree, x, y, z, Y);
                    int nb = (sh_degree + 1) * (sh_degree + 1);
                    const float* co = coeffs + n * K * 3;
                    float* gco = g_coeffs + n * K * 3;
                    float gc[3];
                    for (int ch = 0; ch < 3; ++ch) {
                        float s = 0.5f;
                        for (int k = 0; k < nb; ++k) s += Y[k] * co[3 * k + ch];
                        gc[ch] = s >= 0.0f ? g_colors[3 * idx + ch] : 0.0f;
                    }
                    float gY[16];
                    for (int k = 0; k < nb; ++k) {
                        gY[k] = 0;
                        for (int ch = 0; ch < 3; ++ch) {
                            gco[3 * k + ch] += Y[k] * gc[ch];
                            gY[k] += co[3 * k + ch] * gc[ch];
                        }
                    }
                    float gdir[3];
                    sh_basis_grad(sh_degree, x, y, z, gY, gdir);
                    float dot = gdir[0] * x + gdir[1] * y + gdir[2] * z;
                    gm[0] += (gdir[0] - x * dot) / len;
                    gm[1] += (gdir[1] - y * dot) / len;
                    gm[2] += (gdir[2] - z * dot) / len;
                }
                // --- opacity (and the antialiasing compensation)
                float go = g_opac[idx];
                g_opacities[n] += go * P.comp;
                float ga = 0, gb = 0, gcc = 0;  // d L / d (a, b, c) of the 2D covariance
                if (antialiased && P.comp > 0) {
                    float gcomp = go * opacities[n];
                    float gr = gcomp * 0.5f / P.comp;  // comp = sqrt(r), r = det_orig / det
                    float gdo = gr / P.det, gdet = -gr * P.det_orig / (P.det * P.det);
                    ga += gdo * P.c + gdet * (P.c + eps2d);
                    gcc += gdo * P.a + gdet * (P.a + eps2d);
                    gb += -2 * P.b * (gdo + gdet);
                }
                // --- conic = inverse of [[a', b], [b, c']]: dL/dS = -Q G Q
                {
                    float ap = P.a + eps2d, cp = P.c + eps2d;
                    float QA = cp / P.det, QB = -P.b / P.det, QC = ap / P.det;
                    float GA = g_conics[3 * idx], GB = 0.5f * g_conics[3 * idx + 1], GC = g_conics[3 * idx + 2];
                    // (Q G Q) for symmetric 2x2 Q = [[QA, QB], [QB, QC]], G = [[GA, GB], [GB, GC]]
                    float t00 = QA * GA + QB * GB, t01 = QA * GB + QB * GC;
                    float t10 = QB * GA + QC * GB, t11 = QB * GB + QC * GC;
                    float m00 = t00 * QA + t01 * QB, m01 = t00 * QB + t01 * QC, m11 = t10 * QB + t11 * QC;
                    ga += -m00;
                    gcc += -m11;
                    gb += -2 * m01;
                }
                // --- cov2d = J cov_c J^T
                float G2[2][2] = {{ga, 0.5f * gb}, {0.5f * gb, gcc}};
                float gJ[2][3];
                {
                    // dL/dJ = 2 G2 J cov_c (G2 and cov_c symmetric)
                    float JS[2][3];
                    for (int i = 0; i < 2; ++i)
                        for (int j = 0; j < 3; ++j)
                            JS[i][j] = P.J[i][0] * P.cov_c.m[0][j] + P.J[i][1] * P.cov_c.m[1][j] +
                                       P.J[i][2] * P.cov_c.m[2][j];
                    for (int i = 0; i < 2; ++i)
                        for (int j = 0; j < 3; ++j) gJ[i][j] = 2 * (G2[i][0] * JS[0][j] + G2[i][1] * JS[1][j]);
                }
                Mat3 gcov_c;  // J^T G2 J
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        gcov_c.m[i][j] = P.J[0][i] * (G2[0][0] * P.J[0][j] + G2[0][1] * P.J[1][j]) +
                                         P.J[1][i] * (G2[1][0] * P.J[0][j] + G2[1][1] * P.J[1][j]);
                float tz = P.tz, tz2 = tz * tz;
                // J00 = fx/tz, J11 = fy/tz, J02 = -fx ux / tz, J12 = -fy uy / tz
                g_p[2] += gJ[0][0] * (-cam.fx / tz2) + gJ[1][1] * (-cam.fy / tz2);
                if (P.clamp_x) {
                    g_p[2] += gJ[0][2] * cam.fx * P.ux / tz2;
                } else {
                    g_p[0] += gJ[0][2] * (-cam.fx / tz2);
                    g_p[2] += gJ[0][2] * 2 * cam.fx * P.tx / (tz2 * tz);
                }
                if (P.clamp_y) {
                    g_p[2] += gJ[1][2] * cam.fy * P.uy / tz2;
                } else {
                    g_p[1] += gJ[1][2] * (-cam.fy / tz2);
                    g_p[2] += gJ[1][2] * 2 * cam.fy * P.ty / (tz2 * tz);
                }
                // --- means2d and depth
                float gmx = g_means2d[2 * idx], gmy = g_means2d[2 * idx + 1];
                g_p[0] += gmx * cam.fx / tz;
                g_p[1] += gmy * cam.fy / tz;
                g_p[2] += -gmx * cam.fx * P.tx / tz2 - gmy * cam.fy * P.ty / tz2;
                if (g_depths) g_p[2] += g_depths[idx];
                // --- world: p = R_v m + t, cov_c = R_v cov R_v^T
                for (int i = 0; i < 3; ++i)
                    gm[i] += cam.R.m[0][i] * g_p[0] + cam.R.m[1][i] * g_p[1] + cam.R.m[2][i] * g_p[2];
                Mat3 gcov = mul(mul(transpose(cam.R), gcov_c), cam.R);
                // cov = M M^T, M = Rg diag(s): dL/dM = 2 gcov M (gcov symmetric)
                Mat3 M;
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j) M.m[i][j] = P.Rg.m[i][j] * scales[3 * n + j];
                Mat3 gM;
                for (int i = 0; i < 3; ++i)
                    for (int j = 0; j < 3; ++j)
                        gM.m[i][j] = (gcov.m[i][0] + gcov.m[0][i]) * M.m[0][j] + (gcov.m[i][1] + gcov.m[1][i]) * M.m[1][j] +
                                     (gcov.m[i][2] + gcov.m[2][i]) * M.m[2][j];
                Mat3 gR;
                for (int j = 0; j < 3; ++j) {
                    float gs = 0;
                    for (int i = 0; i < 3; ++i) {
                        gR.m[i][j] = gM.m[i][j] * scales[3 * n + j];
                        gs += gM.m[i][j] * P.Rg.m[i][j];
                    }
                    g_scales[3 * n + j] += gs;
                }
                float w = P.qn[0], x = P.qn[1], y = P.qn[2], z = P.qn[3];
                const auto& G = gR.m;
                float gqn[4];
                gqn[0] = 2 * (-z * G[0][1] + y * G[0][2] + z * G[1][0] - x * G[1][2] - y * G[2][0] + x * G[2][1]);
                gqn[1] = 2 * (y * G[0][1] + z * G[0][2] + y * G[1][0] - 2 * x * G[1][1] - w * G[1][2] + z * G[2][0] +
                              w * G[2][1] - 2 * x * G[2][2]);
                gqn[2] = 2 * (-2 * y * G[0][0] + x * G[0][1] + w * G[0][2] + x * G[1][0] + z * G[1][2] - w * G[2][0] +
                              z * G[2][1] - 2 * y * G[2][2]);
                gqn[3] = 2 * (-2 * z * G[0][0] - w * G[0][1] + x * G[0][2] + w * G[1][0] - 2 * z * G[1][1] +
                              y * G[1][2] + x * G[2][0] + y * G[2][1]);
                const float* q = quats + 4 * n;
                float qlen = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), 1e-12f);
                float dot = gqn[0] * w + gqn[1] * x + gqn[2] * y + gqn[3] * z;
                for (int i = 0; i < 4; ++i) g_quats[4 * n + i] += (gqn[i] - P.qn[i] * dot) / qlen;
            }
        }
    });
}

}  // extern "C"

// ============================================================================ binning
// For every visible (camera, Gaussian), the 16x16 tiles its alpha >= 1/255 ellipse
// touches: an exact test of the quadratic form against each tile's rectangle of pixel
// centres, inside the opacity-aware bounding box.

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

static inline TileRange tile_range(const float* means2d, const int32_t* radii, int64_t idx, int tiles_x,
                                   int tiles_y) {
    float mx = means2d[2 * idx], my = means2d[2 * idx + 1];
    float rx = (float)radii[2 * idx], ry = (float)radii[2 * idx + 1];
    TileRange r;
    r.x0 = std::min(std::max((int)std::floor((mx - rx) / TILE), 0), tiles_x);
    r.x1 = std::min(std::max((int)std::ceil((mx + rx) / TILE), 0), tiles_x);
    r.y0 = std::min(std::max((int)std::floor((my - ry) / TILE), 0), tiles_y);
    r.y1 = std::min(std::max((int)std::ceil((my + ry) / TILE), 0), tiles_y);
    return r;
}

template <class F>
static inline void for_each_tile(const float* means2d, const float* conics, const float* opac,
                                 const int32_t* radii, int64_t idx, int W, int H, int tiles_x, int tiles_y, F&& f) {
    if (radii[2 * idx] == 0 && radii[2 * idx + 1] == 0) return;
    TileRange r = tile_range(means2d, radii, idx, tiles_x, tiles_y);
    float mx = means2d[2 * idx], my = means2d[2 * idx + 1];
    float A = conics[3 * idx], B = conics[3 * idx + 1], Cc = conics[3 * idx + 2];
    float thr = std::log(opac[idx] / ALPHA_THRESHOLD) + 1e-4f;
    for (int ty = r.y0; ty < r.y1; ++ty)
        for (int tx = r.x0; tx < r.x1; ++tx) {
            float x0 = tx * TILE + 0.5f, x1 = std::min(tx * TILE + TILE, W) - 0.5f;
            float y0 = ty * TILE + 0.5f, y1 = std::min(ty * TILE + TILE, H) - 0.5f;
            if (ellipse_touches_rect(mx, my, A, B, Cc, thr, x0, x1, y0, y1)) f(ty * tiles_x + tx);
        }
}

extern "C" {

// Tile lists of all cameras: returns the number of (tile, Gaussian) pairs M and sets
// *out_ids to a malloc'ed int32 array [M] of flat (camera * N + Gaussian) indices,
// sorted by (camera, tile, depth); tile_offsets [C * T + 1] delimit the tiles. Each
// camera's visible Gaussians are radix-sorted by depth, then scattered to tiles in that
// order (counting sort), so every tile's list is front to back. Free with sk_free.
int64_t sk_isect(int C, int N, const float* means2d, const float* conics, const float* opac,
                 const int32_t* radii, const float* depths, int W, int H, int32_t** out_ids,
                 int64_t* tile_offsets, int nthreads) {
    int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    int64_t T = (int64_t)tiles_x * tiles_y;
    // 1. depth order per camera
    std::vector<std::vector<uint32_t>> order(C);
    parallel_for(C, nthreads, [&](int64_t c, int) {
        std::vector<uint32_t> keys, ids, keys2, ids2;
        for (int64_t n = 0; n < N; ++n) {
            int64_t idx = c * N + n;
            if (radii[2 * idx] == 0 && radii[2 * idx + 1] == 0) continue;
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
        order[c] = std::move(ids);
    });
    // 2. work items = (camera, chunk of its depth order); count pairs per tile
    int nchunks = std::max(1, nthreads * 4);
    int64_t items = (int64_t)C * nchunks;
    std::vector<std::vector<int64_t>> cnt(items, std::vector<int64_t>(T, 0));
    auto bounds = [&](int64_t item, size_t& b, size_t& e) {
        int64_t c = item / nchunks, k = item % nchunks;
        size_t m = order[c].size();
        b = m * k / nchunks;
        e = m * (k + 1) / nchunks;
    };
    parallel_for(items, nthreads, [&](int64_t item, int) {
        int64_t c = item / nchunks;
        size_t b, e;
        bounds(item, b, e);
        auto& cc = cnt[item];
        for (size_t i = b; i < e; ++i)
            for_each_tile(means2d, conics, opac, radii, c * N + order[c][i], W, H, tiles_x, tiles_y,
                          [&](int t) { cc[t]++; });
    });
    // 3. offsets of every tile, then of every item inside each tile
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
    // 4. scatter
    parallel_for(items, nthreads, [&](int64_t item, int) {
        int64_t c = item / nchunks;
        size_t b, e;
        bounds(item, b, e);
        auto& pos = cnt[item];
        for (size_t i = b; i < e; ++i) {
            int64_t idx = c * N + order[c][i];
            for_each_tile(means2d, conics, opac, radii, idx, W, H, tiles_x, tiles_y,
                          [&](int t) { ids[pos[t]++] = (int32_t)idx; });
        }
    });
    *out_ids = ids;
    return run;
}

void sk_free(void* p) { std::free(p); }

}  // extern "C"

// ============================================================================ compositing
namespace {

struct Splat2D {
    float mx, my, A, B, Cc, o, thr, dy_max;
};

static inline Splat2D load_splat(const float* means2d, const float* conics, const float* opac, int64_t g) {
    Splat2D s;
    s.mx = means2d[2 * g];
    s.my = means2d[2 * g + 1];
    s.A = conics[3 * g];
    s.B = conics[3 * g + 1];
    s.Cc = conics[3 * g + 2];
    s.o = opac[g];
    // alpha >= 1/255  <=>  sigma <= log(255 o); dy_max bounds that ellipse vertically
    s.thr = std::log(std::max(s.o, ALPHA_THRESHOLD) / ALPHA_THRESHOLD) + 1e-4f;
    float det = s.A * s.Cc - s.B * s.B;
    s.dy_max = det > 0 ? std::sqrt(2.0f * s.thr * s.A / det) : 0.0f;
    return s;
}

// Does the alpha >= 1/255 ellipse reach any pixel centre of tile row y (centre Y)?
static inline bool row_reached(const Splat2D& s, float Y, float x_first, float x_last) {
    float dy = Y - s.my;
    float disc = s.B * s.B * dy * dy - s.A * (s.Cc * dy * dy - 2.0f * s.thr);
    if (disc < 0) return false;
    float sq = std::sqrt(disc);
    float xa = s.mx + (-s.B * dy - sq) / s.A, xb = s.mx + (-s.B * dy + sq) / s.A;
    return xb >= x_first && xa <= x_last;
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
void raster_fwd(int C, int W, int H, const float* means2d, const float* conics, const float* colors,
                const float* opac, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                float* out_img, float* out_alpha, float* out_T, int32_t* out_last, uint16_t* rowmask,
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
        float x_first = x0 + 0.5f, x_last = std::min(x0 + TILE, W) - 0.5f;
        bool all_done = false;
        for (int64_t k = tile_offsets[tile]; k < tile_offsets[tile + 1] && !all_done; ++k) {
            int64_t g = ids[k];
            Splat2D s = load_splat(means2d, conics, opac, g);
            float col[D];
            for (int ch = 0; ch < D; ++ch) col[ch] = colors[g * D + ch];
            int r0 = std::max(0, (int)std::floor(s.my - s.dy_max - y0 - 0.5f));
            int r1 = std::min(rows_in - 1, (int)std::ceil(s.my + s.dy_max - y0 - 0.5f));
            uint16_t mask = 0;
            vi any_stop = vi{};
            vi kv = vi{} + (int32_t)k;
            for (int r = r0; r <= r1; ++r) {
                float Y = y0 + r + 0.5f;
                if (!row_reached(s, Y, x_first, x_last)) continue;
                float dy = Y - s.my;
                vi row_contrib = vi{};
                for (int j = 0; j < NV; ++j) {
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
                    row_contrib |= contrib;
                    any_stop |= stop;
                }
                if (vany(row_contrib)) mask |= (uint16_t)(1u << r);
            }
            rowmask[k] = mask;
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
void raster_bwd(int C, int N, int W, int H, const float* means2d, const float* conics, const float* colors,
                const float* opac, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                const float* T_final, const int32_t* last, const uint16_t* rowmask, const float* g_img,
                const float* g_alpha, float* g_means2d, float* g_conics, float* g_colors, float* g_opac,
                int nthreads) {
    int tiles_x = (W + TILE - 1) / TILE, tiles_y = (H + TILE - 1) / TILE;
    int64_t T_per_cam = (int64_t)tiles_x * tiles_y;
    int64_t ntiles = C * T_per_cam;
    int64_t CN = (int64_t)C * N;
    constexpr int G = 6 + D;  // per Gaussian: mx, my, A, B, C, o, colour[D]
    int nbuf = std::max(1, nthreads);
    std::vector<std::vector<float>> bufs(nbuf);
    std::vector<int64_t> order(ntiles);
    for (int64_t i = 0; i < ntiles; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        return tile_offsets[a + 1] - tile_offsets[a] > tile_offsets[b + 1] - tile_offsets[b];
    });
    parallel_for(ntiles, nthreads, [&](int64_t oi, int tid) {
        auto& buf = bufs[tid];
        if (buf.empty()) buf.assign(CN * G, 0.0f);
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
        for (int64_t k = max_last; k >= tile_offsets[tile]; --k) {
            uint16_t mask = rowmask[k];
            if (!mask) continue;
            int64_t g = ids[k];
            Splat2D s = load_splat(means2d, conics, opac, g);
            float col[D];
            for (int ch = 0; ch < D; ++ch) col[ch] = colors[g * D + ch];
            vf v_mx = vf{}, v_my = vf{}, v_A = vf{}, v_B = vf{}, v_C = vf{}, v_o = vf{}, v_col[D];
            for (int ch = 0; ch < D; ++ch) v_col[ch] = vf{};
            vi kv = vi{} + (int32_t)k;
            for (int r = 0; r < TILE; ++r) {
                if (!(mask & (1u << r))) continue;
                float dy = y0 + r + 0.5f - s.my;
                for (int j = 0; j < NV; ++j) {
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
            float* out = buf.data() + g * G;
            out[0] += vsum(v_mx);
            out[1] += vsum(v_my);
            out[2] += vsum(v_A);
            out[3] += vsum(v_B);
            out[4] += vsum(v_C);
            out[5] += vsum(v_o);
            for (int ch = 0; ch < D; ++ch) out[6 + ch] += vsum(v_col[ch]);
        }
    });
    // Reduce the per-thread buffers in a fixed order.
    parallel_chunks(CN, nthreads, 8192, [&](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g) {
            float acc[G] = {0};
            for (auto& buf : bufs)
                if (!buf.empty())
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

int sk_raster_fwd(int C, int W, int H, int D, const float* means2d, const float* conics, const float* colors,
                  const float* opac, const float* backgrounds, const int32_t* ids, const int64_t* tile_offsets,
                  float* out_img, float* out_alpha, float* out_T, int32_t* out_last, uint16_t* rowmask,
                  int nthreads) {
    SK_DISPATCH(D, raster_fwd<DD>(C, W, H, means2d, conics, colors, opac, backgrounds, ids, tile_offsets,
                                  out_img, out_alpha, out_T, out_last, rowmask, nthreads));
    return 0;
}

int sk_raster_bwd(int C, int N, int W, int H, int D, const float* means2d, const float* conics,
                  const float* colors, const float* opac, const float* backgrounds, const int32_t* ids,
                  const int64_t* tile_offsets, const float* T_final, const int32_t* last, const uint16_t* rowmask,
                  const float* g_img, const float* g_alpha, float* g_means2d, float* g_conics, float* g_colors,
                  float* g_opac, int nthreads) {
    SK_DISPATCH(D, raster_bwd<DD>(C, N, W, H, means2d, conics, colors, opac, backgrounds, ids, tile_offsets,
                                  T_final, last, rowmask, g_img, g_alpha, g_means2d, g_conics, g_colors, g_opac,
                                  nthreads));
    return 0;
}

}  // extern "C"
