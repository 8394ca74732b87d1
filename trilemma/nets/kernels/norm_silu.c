/* SiLU(GroupNorm(x)·(1 + s) + b) and its gradient, fused, for channels-last CPU activations.
 *
 * x is (N, P, C) in memory: N samples, P = H·W positions, C channels fastest (PyTorch's
 * channels-last layout), float32 (dtype 0) or bfloat16 (dtype 1); G groups of Cg = C/G
 * consecutive channels. Per sample n and group g (docs/methods.md §5.7):
 *
 *     μ = mean of x over the group's P·Cg values,  σ² = their biased variance,  r = 1/√(σ² + ε)
 *     x̂ = (x − μ)·r,  u = (x̂·γ_c + β_c)·(1 + s_nc) + b_nc,  y = u·sigmoid(u)
 *
 * so y = SiLU(x·A_c + B_c) with A = r·γ·(1 + s), B = (β − μ·r·γ)·(1 + s) + b. Everything is
 * computed in float32 (bf16 is widened on load and rounded to nearest-even once on store, as
 * PyTorch does). A sample's activations are small (32 channels × 32×32 floats = 128 KiB), so the
 * passes after the first read them from cache: the forward reads x from memory once and writes y
 * once, where the unfused layers make four to six full passes with float32 temporaries.
 *
 * Gradient, given dy: du = dy·σ(u)·(1 + u·(1 − σ(u))), and with S1_c = Σ_p du, S2_c = Σ_p du·x̂,
 * k_c = γ_c·(1 + s_c), m1 = Σ_{c∈g} k_c·S1_c / (P·Cg), m2 = Σ_{c∈g} k_c·S2_c / (P·Cg):
 *
 *     dx = r·(k·du − m1 − x̂·m2),  db = S1,  ds = γ·S2 + β·S1,  dγ = Σ_n (1 + s)·S2,  dβ = Σ_n (1 + s)·S1
 *
 * (the GroupNorm gradient dx = r·(dx̂ − mean dx̂ − x̂·mean(dx̂·x̂)) with dx̂ = k·du). dγ and dβ are
 * returned per sample and summed by the caller. The first backward pass keeps du in a per-thread
 * scratch of P·C floats (in cache) for the second. Samples run in parallel (OpenMP), each in one
 * thread, so the result does not depend on the number of threads.
 *
 * Compiled with -O3 -march=native -fno-trapping-math -fno-math-errno (the last two let GCC
 * vectorise the selects and floorf of exp_approx; neither changes a result) and -fopenmp, whose
 * `omp simd` marks the loops over channels as free of dependences.
 *
 * Plain C (no Python or PyTorch headers): built once by trilemma/nets/kernels/__init__.py with
 * the system C compiler and called through ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef uint16_t bf16;

typedef union { float f; uint32_t u; int32_t i; } bits32;   /* type punning through a union (C11) */

static inline float from_bf16(bf16 v) {
    bits32 b = {.u = (uint32_t)v << 16};
    return b.f;
}

static inline bf16 to_bf16(float f) {           /* round to nearest even; NaN stays NaN (c10::BFloat16) */
    bits32 b = {.f = f};
    const bf16 rounded = (bf16)((b.u + 0x7FFFu + ((b.u >> 16) & 1u)) >> 16);
    return f != f ? (bf16)0x7FC0 : rounded;
}

/* e^x to ~2 ulp (Cephes' expf: x = n·ln 2 + r, |r| ≤ ln 2 / 2, a degree-7 polynomial in r), written
 * without calls or tables so that loops over it vectorise. A NaN stays NaN (the comparisons are
 * false for it); |x| > 88 is clamped (e^88 ≈ 1.7e38; e^−88 gives 0 instead of a subnormal). */
static inline float exp_approx(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -88.0f ? -88.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    bits32 two_n = {.i = ((int32_t)n + 127) << 23};
    return y * two_n.f;
}

static inline float load(const void *base, int64_t i, const int dtype) {
    return dtype == 0 ? ((const float *)base)[i] : from_bf16(((const bf16 *)base)[i]);
}

static inline void store(void *base, int64_t i, float v, const int dtype) {
    if (dtype == 0) ((float *)base)[i] = v;
    else ((bf16 *)base)[i] = to_bf16(v);
}

/* Per-channel group statistics of one sample: mu_c, r_c (the group's μ and r for every channel). */
static inline __attribute__((always_inline)) void sample_stats(
        const void *x, int64_t off, int64_t P, int64_t C, int64_t G, float eps, float *acc,
        float *mu_c, float *r_c, float *mean_out, float *rstd_out, const int dtype) {
    const int64_t Cg = C / G;
    const float count = (float)(P * Cg);
    for (int64_t c = 0; c < C; c++) acc[c] = 0.0f;
    for (int64_t p = 0; p < P; p++) {
        const int64_t row = off + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) acc[c] += load(x, row + c, dtype);
    }
    for (int64_t g = 0; g < G; g++) {
        float s = 0.0f;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) s += acc[c];
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) mu_c[c] = s / count;
    }
    for (int64_t c = 0; c < C; c++) acc[c] = 0.0f;
    for (int64_t p = 0; p < P; p++) {           /* two passes: the variance about the mean, no cancellation */
        const int64_t row = off + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            const float d = load(x, row + c, dtype) - mu_c[c];
            acc[c] += d * d;
        }
    }
    for (int64_t g = 0; g < G; g++) {
        float s = 0.0f;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) s += acc[c];
        const float r = 1.0f / sqrtf(s / count + eps);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) r_c[c] = r;
        mean_out[g] = mu_c[g * Cg];
        rstd_out[g] = r;
    }
}

static inline __attribute__((always_inline)) void forward_sample(
        const void *x, void *y, int64_t n, int64_t P, int64_t C, int64_t G,
        const float *gamma, const float *beta, const float *scale, const float *shift, float eps,
        float *mean_out, float *rstd_out, float *buf, const int dtype) {
    float *restrict acc = buf, *restrict mu_c = buf + C, *restrict r_c = buf + 2 * C, *restrict A = buf + 3 * C,
          *restrict B = buf + 4 * C;
    const int64_t off = n * P * C;
    sample_stats(x, off, P, C, G, eps, acc, mu_c, r_c, mean_out + n * G, rstd_out + n * G, dtype);
    for (int64_t c = 0; c < C; c++) {
        const float s1 = scale ? 1.0f + scale[n * C + c] : 1.0f;
        const float a = r_c[c] * gamma[c];
        A[c] = a * s1;
        B[c] = (beta[c] - mu_c[c] * a) * s1 + (shift ? shift[n * C + c] : 0.0f);
    }
    for (int64_t p = 0; p < P; p++) {
        const int64_t row = off + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            const float u = load(x, row + c, dtype) * A[c] + B[c];
            store(y, row + c, u / (1.0f + exp_approx(-u)), dtype);
        }
    }
}

static inline __attribute__((always_inline)) void backward_sample(
        const void *x, const void *dy, void *dx, int64_t n, int64_t P, int64_t C, int64_t G,
        const float *gamma, const float *beta, const float *scale, const float *shift,
        const float *mean, const float *rstd, float *dscale, float *dshift, float *dgamma_n, float *dbeta_n,
        float *buf, const int dtype) {
    const int64_t Cg = C / G;
    const float count = (float)(P * Cg);
    float *restrict mu_c = buf, *restrict r_c = buf + C, *restrict A = buf + 2 * C, *restrict B = buf + 3 * C,
          *restrict k = buf + 4 * C;
    float *restrict S1 = buf + 5 * C, *restrict S2 = buf + 6 * C, *restrict m_c = buf + 7 * C;
    float *restrict du_all = buf + 8 * C;       /* du at every position (P·C floats), for the second pass */
    const int64_t off = n * P * C;
    for (int64_t c = 0; c < C; c++) {
        const float s1 = scale ? 1.0f + scale[n * C + c] : 1.0f;
        mu_c[c] = mean[n * G + c / Cg];
        r_c[c] = rstd[n * G + c / Cg];
        const float a = r_c[c] * gamma[c];
        A[c] = a * s1;
        B[c] = (beta[c] - mu_c[c] * a) * s1 + (shift ? shift[n * C + c] : 0.0f);
        k[c] = gamma[c] * s1;
        S1[c] = 0.0f;
        S2[c] = 0.0f;
    }
    for (int64_t p = 0; p < P; p++) {
        const int64_t row = off + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            const float xv = load(x, row + c, dtype);
            const float u = xv * A[c] + B[c];
            const float sig = 1.0f / (1.0f + exp_approx(-u));
            const float du = load(dy, row + c, dtype) * sig * (1.0f + u * (1.0f - sig));
            du_all[p * C + c] = du;
            S1[c] += du;
            S2[c] += du * (xv - mu_c[c]) * r_c[c];
        }
    }
    for (int64_t c = 0; c < C; c++) {
        const float s1 = scale ? 1.0f + scale[n * C + c] : 1.0f;
        if (dshift) dshift[n * C + c] = S1[c];
        if (dscale) dscale[n * C + c] = gamma[c] * S2[c] + beta[c] * S1[c];
        dgamma_n[n * C + c] = s1 * S2[c];
        dbeta_n[n * C + c] = s1 * S1[c];
    }
    for (int64_t g = 0; g < G; g++) {          /* m_c[c]: the group's m1; S1 is reused for m2 */
        float a = 0.0f, b = 0.0f;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) { a += k[c] * S1[c]; b += k[c] * S2[c]; }
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) { m_c[c] = a / count; S1[c] = b / count; }
    }
    for (int64_t p = 0; p < P; p++) {
        const int64_t row = off + p * C;
        #pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            const float xh = (load(x, row + c, dtype) - mu_c[c]) * r_c[c];
            store(dx, row + c, r_c[c] * (k[c] * du_all[p * C + c] - m_c[c] - xh * S1[c]), dtype);
        }
    }
}

/* A thread's scratch of at least `count` floats, kept between calls (the thread pool persists),
 * so that the per-sample buffers are neither allocated nor page-faulted on every call. */
static _Thread_local float *scratch_buf = NULL;
static _Thread_local int64_t scratch_len = 0;

static float *scratch(int64_t count) {
    if (count > scratch_len) {
        free(scratch_buf);
        scratch_buf = (float *)malloc(sizeof(float) * count);
        scratch_len = scratch_buf ? count : 0;
    }
    return scratch_buf;
}

/* Samples in parallel, one per thread at a time, each with `width` floats of scratch. DTYPE is a
 * literal inside the parallel region so that the loads and stores specialise. A thread that cannot
 * get its scratch does nothing and sets `failed`; the entry points then return 1 (out of memory). */
#define OVER_SAMPLES(width, DTYPE, CALL)                                      \
    _Pragma("omp parallel num_threads(nthreads)")                             \
    {                                                                         \
        float *buf = scratch(width);                                          \
        if (!buf) {                                                           \
            _Pragma("omp atomic write")                                       \
            failed = 1;                                                       \
        }                                                                     \
        _Pragma("omp for schedule(static)")                                   \
        for (int64_t n = 0; n < N; n++)                                       \
            if (buf) CALL;                                                    \
    }

int norm_silu_forward(const void *x, void *y, int dtype, int64_t N, int64_t P, int64_t C, int64_t G,
                      const float *gamma, const float *beta, const float *scale, const float *shift,
                      float eps, float *mean_out, float *rstd_out, int nthreads) {
    int failed = 0;
    if (dtype == 0) {
        OVER_SAMPLES(5 * C, 0, forward_sample(x, y, n, P, C, G, gamma, beta, scale, shift, eps, mean_out, rstd_out,
                                              buf, 0))
    } else {
        OVER_SAMPLES(5 * C, 1, forward_sample(x, y, n, P, C, G, gamma, beta, scale, shift, eps, mean_out, rstd_out,
                                              buf, 1))
    }
    return failed;
}

int norm_silu_backward(const void *x, const void *dy, void *dx, int dtype, int64_t N, int64_t P, int64_t C,
                       int64_t G, const float *gamma, const float *beta, const float *scale, const float *shift,
                       const float *mean, const float *rstd, float *dscale, float *dshift, float *dgamma_n,
                       float *dbeta_n, int nthreads) {
    int failed = 0;
    if (dtype == 0) {
        OVER_SAMPLES((8 + P) * C, 0, backward_sample(x, dy, dx, n, P, C, G, gamma, beta, scale, shift, mean, rstd,
                                                     dscale, dshift, dgamma_n, dbeta_n, buf, 0))
    } else {
        OVER_SAMPLES((8 + P) * C, 1, backward_sample(x, dy, dx, n, P, C, G, gamma, beta, scale, shift, mean, rstd,
                                                     dscale, dshift, dgamma_n, dbeta_n, buf, 1))
    }
    return failed;
}
