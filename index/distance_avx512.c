/*
 * distance_avx512.c — AVX-512 (F, BW, VL) kernels; compiled with those flags alone and
 * called only after distance.c has checked the CPU. Tails use masked loads, which never
 * touch the bytes past the end of the vector, so there is no scalar epilogue.
 */
#include <immintrin.h>
#include <string.h>

#include "distance_impl.h"

static inline __m512 ld16_f32(const void *x, size_t i, __mmask16 m) { return _mm512_maskz_loadu_ps(m, (const float *)x + i); }
static inline __m512 ld16_f16(const void *x, size_t i, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)x + i)); }
static inline __m512 ld16_u8(const void *x, size_t i, __mmask16 m) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, (const uint8_t *)x + i))); }
static inline __m512 ld16_i8(const void *x, size_t i, __mmask16 m) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t *)x + i))); }

#define ALL ((__mmask16)0xffff)
#define TAILMASK(r) ((__mmask16)((1u << (r)) - 1u))

#define AVX512_KERNELS(T)                                                          \
    static float l2_##T(const float *q, const void *x, size_t d)                   \
    {                                                                              \
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();                 \
        size_t i = 0;                                                              \
        for (; i + 32 <= d; i += 32) {                                             \
            __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(q + i), ld16_##T(x, i, ALL)); \
            __m512 t1 = _mm512_sub_ps(_mm512_loadu_ps(q + i + 16), ld16_##T(x, i + 16, ALL)); \
            a0 = _mm512_fmadd_ps(t0, t0, a0);                                      \
            a1 = _mm512_fmadd_ps(t1, t1, a1);                                      \
        }                                                                          \
        for (; i < d; i += 16) {                                                   \
            __mmask16 m = d - i >= 16 ? ALL : TAILMASK(d - i);                      \
            __m512 t0 = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, q + i), ld16_##T(x, i, m)); \
            a0 = _mm512_fmadd_ps(t0, t0, a0);                                      \
        }                                                                          \
        return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));                        \
    }                                                                              \
    static float ip_##T(const float *q, const void *x, size_t d)                   \
    {                                                                              \
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();                 \
        size_t i = 0;                                                              \
        for (; i + 32 <= d; i += 32) {                                             \
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), ld16_##T(x, i, ALL), a0); \
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), ld16_##T(x, i + 16, ALL), a1); \
        }                                                                          \
        for (; i < d; i += 16) {                                                   \
            __mmask16 m = d - i >= 16 ? ALL : TAILMASK(d - i);                      \
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), ld16_##T(x, i, m), a0); \
        }                                                                          \
        return -_mm512_reduce_add_ps(_mm512_add_ps(a0, a1));                       \
    }                                                                              \
    static float cos_##T(const float *q, const void *x, size_t d)                  \
    {                                                                              \
        __m512 ad = _mm512_setzero_ps(), aq = _mm512_setzero_ps(), ax = _mm512_setzero_ps(); \
        for (size_t i = 0; i < d; i += 16) {                                       \
            __mmask16 m = d - i >= 16 ? ALL : TAILMASK(d - i);                      \
            __m512 vq = _mm512_maskz_loadu_ps(m, q + i), vx = ld16_##T(x, i, m);   \
            ad = _mm512_fmadd_ps(vq, vx, ad);                                      \
            aq = _mm512_fmadd_ps(vq, vq, aq);                                      \
            ax = _mm512_fmadd_ps(vx, vx, ax);                                      \
        }                                                                          \
        return nl_cosine_finish(_mm512_reduce_add_ps(ad), _mm512_reduce_add_ps(aq), \
                                _mm512_reduce_add_ps(ax));                         \
    }

AVX512_KERNELS(f32)
AVX512_KERNELS(f16)
AVX512_KERNELS(u8)
AVX512_KERNELS(i8)

const nl_dist_fn nl_kernels_avx512[3][4] = {
    {l2_f32, l2_f16, l2_u8, l2_i8},
    {ip_f32, ip_f16, ip_u8, ip_i8},
    {cos_f32, cos_f16, cos_u8, cos_i8},
};
