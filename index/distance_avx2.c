/*
 * distance_avx2.c — AVX2 + FMA + F16C kernels; this file alone is compiled with those
 * flags and is only called after distance.c has checked the CPU. Main loops take 16
 * elements with two accumulators (hides FMA latency), then 8, then a scalar tail.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "distance_impl.h"

static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

static inline __m256 ld8_f32(const void *x, size_t i) { return _mm256_loadu_ps((const float *)x + i); }
static inline __m256 ld8_f16(const void *x, size_t i) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i))); }
static inline __m256 ld8_u8(const void *x, size_t i)
{
    __m128i v = _mm_loadl_epi64((const __m128i *)((const uint8_t *)x + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}
static inline __m256 ld8_i8(const void *x, size_t i)
{
    __m128i v = _mm_loadl_epi64((const __m128i *)((const int8_t *)x + i));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
}
static inline float ld1_f32(const void *x, size_t i) { float v; memcpy(&v, (const char *)x + 4 * i, 4); return v; }
static inline float ld1_f16(const void *x, size_t i) { uint16_t h; memcpy(&h, (const char *)x + 2 * i, 2); return _cvtsh_ss(h); }
static inline float ld1_u8(const void *x, size_t i) { return (float)((const uint8_t *)x)[i]; }
static inline float ld1_i8(const void *x, size_t i) { return (float)((const int8_t *)x)[i]; }

#define AVX2_KERNELS(T)                                                            \
    static float l2_##T(const float *q, const void *x, size_t d)                   \
    {                                                                              \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                 \
        size_t i = 0;                                                              \
        for (; i + 16 <= d; i += 16) {                                             \
            __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(q + i), ld8_##T(x, i));      \
            __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(q + i + 8), ld8_##T(x, i + 8)); \
            a0 = _mm256_fmadd_ps(t0, t0, a0);                                      \
            a1 = _mm256_fmadd_ps(t1, t1, a1);                                      \
        }                                                                          \
        if (i + 8 <= d) {                                                          \
            __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(q + i), ld8_##T(x, i));      \
            a0 = _mm256_fmadd_ps(t0, t0, a0);                                      \
            i += 8;                                                                \
        }                                                                          \
        float s = hsum256(_mm256_add_ps(a0, a1));                                  \
        for (; i < d; i++) { float t = q[i] - ld1_##T(x, i); s += t * t; }         \
        return s;                                                                  \
    }                                                                              \
    static float ip_##T(const float *q, const void *x, size_t d)                   \
    {                                                                              \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                 \
        size_t i = 0;                                                              \
        for (; i + 16 <= d; i += 16) {                                             \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8_##T(x, i), a0);       \
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), ld8_##T(x, i + 8), a1); \
        }                                                                          \
        if (i + 8 <= d) {                                                          \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), ld8_##T(x, i), a0);       \
            i += 8;                                                                \
        }                                                                          \
        float s = hsum256(_mm256_add_ps(a0, a1));                                  \
        for (; i < d; i++) s += q[i] * ld1_##T(x, i);                              \
        return -s;                                                                 \
    }                                                                              \
    static float cos_##T(const float *q, const void *x, size_t d)                  \
    {                                                                              \
        __m256 ad = _mm256_setzero_ps(), aq = _mm256_setzero_ps(), ax = _mm256_setzero_ps(); \
        size_t i = 0;                                                              \
        for (; i + 8 <= d; i += 8) {                                               \
            __m256 vq = _mm256_loadu_ps(q + i), vx = ld8_##T(x, i);                \
            ad = _mm256_fmadd_ps(vq, vx, ad);                                      \
            aq = _mm256_fmadd_ps(vq, vq, aq);                                      \
            ax = _mm256_fmadd_ps(vx, vx, ax);                                      \
        }                                                                          \
        float dot = hsum256(ad), qq = hsum256(aq), xx = hsum256(ax);               \
        for (; i < d; i++) {                                                       \
            float v = ld1_##T(x, i);                                               \
            dot += q[i] * v; qq += q[i] * q[i]; xx += v * v;                       \
        }                                                                          \
        return nl_cosine_finish(dot, qq, xx);                                      \
    }

AVX2_KERNELS(f32)
AVX2_KERNELS(f16)
AVX2_KERNELS(u8)
AVX2_KERNELS(i8)

const nl_dist_fn nl_kernels_avx2[3][4] = {
    {l2_f32, l2_f16, l2_u8, l2_i8},
    {ip_f32, ip_f16, ip_u8, ip_i8},
    {cos_f32, cos_f16, cos_u8, cos_i8},
};
