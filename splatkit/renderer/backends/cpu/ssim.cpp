// SSIM map and its gradient for the training loss, in one pass each (the maths of
// splatkit/metrics.py::ssim_map, which the tests compare with forward and backward).
// Built into the same library as splatkit_cpu.cpp.
//
// Planes are float32 [P, H, W] (P = images x channels). With a separable window g of K
// taps and pad = 0 ("valid") or K / 2 ("same", zero padding), the output is
// [P, Ho, Wo] with Ho = H + 2 pad - K + 1, and each output pixel blurs the five moments
// x, y, x^2, y^2, xy over its window:
//     S = (2 mx my + C1)(2 sxy + C2) / ((mx^2 + my^2 + C1)(sxx + syy + C2)).
// The gradient of sum(gS * S) with respect to x is, with the window transposed,
//     dx = G^T(gS dS/dmx) + 2 x G^T(gS dS/dxx) + y G^T(gS dS/dxy)
// (dS/d. with respect to the blurred raw moments). Work is split into blocks of rows
// on threads (parallel.h), dynamically scheduled; every value is summed in a fixed order.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"

namespace {

constexpr float C1 = 0.01f * 0.01f;
constexpr float C2 = 0.03f * 0.03f;
constexpr int ROWS = 8;  // output rows per task

struct Geometry {
    int P, H, W, K, pad, Ho, Wo;
    Geometry(int P_, int H_, int W_, int K_, int same) : P(P_), H(H_), W(W_), K(K_), pad(same ? K_ / 2 : 0) {
        Ho = H + 2 * pad - K + 1;
        Wo = W + 2 * pad - K + 1;
    }
    int blocks() const { return (Ho + ROWS - 1) / ROWS; }
};

// The five blurred moments of output row i of a plane: m[5][Wo] (x, y, xx, yy, xy).
// v is scratch of 5 * (W + 2 pad) floats.
static void moments_row(const Geometry& G, const float* g, const float* x, const float* y, int i, float* v,
                        float* m) {
    const int W = G.W, Wp = G.W + 2 * G.pad;
    std::fill(v, v + 5 * Wp, 0.0f);
    float* __restrict__ vx = v + G.pad;
    float* __restrict__ vy = vx + Wp;
    float* __restrict__ vxx = vy + Wp;
    float* __restrict__ vyy = vxx + Wp;
    float* __restrict__ vxy = vyy + Wp;
    for (int t = 0; t < G.K; ++t) {  // vertical taps, in a fixed order
        const int r = i + t - G.pad;
        if (r < 0 || r >= G.H) continue;
        const float w = g[t];
        const float* __restrict__ xr = x + (int64_t)r * W;
        const float* __restrict__ yr = y + (int64_t)r * W;
#pragma omp simd
        for (int c = 0; c < W; ++c) {
            const float a = xr[c], b = yr[c];
            vx[c] += w * a;
            vy[c] += w * b;
            vxx[c] += w * (a * a);
            vyy[c] += w * (b * b);
            vxy[c] += w * (a * b);
        }
    }
    for (int k = 0; k < 5; ++k) {
        const float* vk = v + k * Wp;
        float* mk = m + k * G.Wo;
        for (int j = 0; j < G.Wo; ++j) mk[j] = 0.0f;
        for (int t = 0; t < G.K; ++t) {
            const float w = g[t];
            for (int j = 0; j < G.Wo; ++j) mk[j] += w * vk[j + t];
        }
    }
}

// body(p, i, m) for every output row i of every plane p, with m its five blurred moments
// (rows in blocks of ROWS, dynamically scheduled).
template <class F>
void for_each_moment_row(const Geometry& G, const float* g, const float* x, const float* y, int nthreads, F&& body) {
    const int nb = G.blocks();
    parallel_for((int64_t)G.P * nb, nthreads, [&](int64_t task, int) {
        const int p = (int)(task / nb), i0 = (int)(task % nb) * ROWS;
        std::vector<float> v(5 * (G.W + 2 * G.pad)), m(5 * G.Wo);
        const int64_t plane = (int64_t)p * G.H * G.W;
        for (int i = i0; i < std::min(G.Ho, i0 + ROWS); ++i) {
            moments_row(G, g, x + plane, y + plane, i, v.data(), m.data());
            body(p, i, m.data());
        }
    });
}

// The SSIM numerator and denominator factors of output pixel j from its moments.
struct Terms {
    float a1, b1, a2, b2;
    Terms(const float* m, int Wo, int j) {
        const float mx = m[j], my = m[Wo + j], xx = m[2 * Wo + j], yy = m[3 * Wo + j], xy = m[4 * Wo + j];
        a1 = 2.0f * mx * my + C1;
        b1 = mx * mx + my * my + C1;
        a2 = 2.0f * (xy - mx * my) + C2;
        b2 = (xx - mx * mx) + (yy - my * my) + C2;
    }
};

}  // namespace

extern "C" {

// out [P, Ho, Wo] = SSIM map of planes x, y [P, H, W].
void sk_ssim_fwd(int P, int H, int W, int K, const float* g, int same, const float* x, const float* y,
                 float* out, int nthreads) {
    const Geometry G(P, H, W, K, same);
    if (G.Ho <= 0 || G.Wo <= 0) return;
    for_each_moment_row(G, g, x, y, nthreads, [&](int p, int i, const float* m) {
        float* __restrict__ o = out + ((int64_t)p * G.Ho + i) * G.Wo;
#pragma omp simd
        for (int j = 0; j < G.Wo; ++j) {
            const Terms t(m, G.Wo, j);
            o[j] = (t.a1 * t.a2) / (t.b1 * t.b2);
        }
    });
}

// gx [P, H, W] = d sum(gout * S) / dx for the SSIM map S of x, y (y held fixed).
void sk_ssim_bwd(int P, int H, int W, int K, const float* g, int same, const float* x, const float* y,
                 const float* gout, float* gx, int nthreads) {
    const Geometry G(P, H, W, K, same);
    std::memset(gx, 0, sizeof(float) * (size_t)P * H * W);
    if (G.Ho <= 0 || G.Wo <= 0) return;
    // 1. per output pixel, gS times dS/d(mx, xx, xy): three maps [P, Ho, Wo]
    const size_t plane_out = (size_t)G.Ho * G.Wo;
    std::vector<float> d((size_t)P * 3 * plane_out);
    for_each_moment_row(G, g, x, y, nthreads, [&](int p, int i, const float* m) {
        float* d_mx = d.data() + (size_t)p * 3 * plane_out + (size_t)i * G.Wo;
        float* __restrict__ o_mx = d_mx;
        float* __restrict__ o_xx = d_mx + plane_out;
        float* __restrict__ o_xy = d_mx + 2 * plane_out;
        const float* __restrict__ go = gout + ((int64_t)p * G.Ho + i) * G.Wo;
#pragma omp simd
        for (int j = 0; j < G.Wo; ++j) {
            const Terms t(m, G.Wo, j);
            const float mx = m[j], my = m[G.Wo + j];
            const float den = t.b1 * t.b2, s = (t.a1 * t.a2) / den;
            const float ds_sxy = 2.0f * t.a1 / den;  // dS/d cov
            const float ds_sxx = -s / t.b2;           // dS/d var_x
            const float ds_mx = 2.0f * my * t.a2 / den - 2.0f * s * mx / t.b1;
            o_mx[j] = go[j] * (ds_mx - 2.0f * mx * ds_sxx - my * ds_sxy);
            o_xx[j] = go[j] * ds_sxx;
            o_xy[j] = go[j] * ds_sxy;
        }
    });
    // 2. the transposed blur of the three maps, combined per input pixel
    const int nbi = (H + ROWS - 1) / ROWS;
    parallel_for((int64_t)P * nbi, nthreads, [&](int64_t task, int) {
        const int p = (int)(task / nbi), u0 = (int)(task % nbi) * ROWS;
        const int Wp = W + 2 * G.pad;
        std::vector<float> rv(3 * (size_t)G.Wo), q(3 * (size_t)Wp);
        const float* dp = d.data() + (size_t)p * 3 * plane_out;
        for (int u = u0; u < std::min(H, u0 + ROWS); ++u) {
            // vertical: rv[k][j] = sum_i d_k(i, j) g[u - i + pad], i in the output range
            std::fill(rv.begin(), rv.end(), 0.0f);
            for (int t = 0; t < G.K; ++t) {
                const int i = u + G.pad - t;
                if (i < 0 || i >= G.Ho) continue;
                const float w = g[t];
                for (int k = 0; k < 3; ++k) {
                    const float* __restrict__ src = dp + k * plane_out + (size_t)i * G.Wo;
                    float* __restrict__ dst = rv.data() + (size_t)k * G.Wo;
#pragma omp simd
                    for (int j = 0; j < G.Wo; ++j) dst[j] += w * src[j];
                }
            }
            // horizontal: q[k][v + pad] = sum_j rv[k][j] g[v - j + pad]
            std::fill(q.begin(), q.end(), 0.0f);
            for (int k = 0; k < 3; ++k) {
                const float* src = rv.data() + (size_t)k * G.Wo;
                float* dst = q.data() + (size_t)k * Wp;
                for (int t = 0; t < G.K; ++t) {
                    const float w = g[t];
                    for (int j = 0; j < G.Wo; ++j) dst[j + t] += w * src[j];
                }
            }
            const int64_t row = ((int64_t)p * H + u) * W;
            const float *q_mx = q.data() + G.pad, *q_xx = q_mx + Wp, *q_xy = q_xx + Wp;
            for (int c = 0; c < W; ++c)
                gx[row + c] = q_mx[c] + 2.0f * x[row + c] * q_xx[c] + y[row + c] * q_xy[c];
        }
    });
}

}  // extern "C"
