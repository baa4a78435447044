/*
 * rabitq_avx2.c — <u, q> over RaBitQ bit planes with AVX2 (nl_rabitq.h). Each byte of a
 * plane selects 8 query floats: the byte is broadcast, each lane tests its own bit, and
 * the selected floats are added with the plane's weight 2^b. Compiled with -mavx2 -mfma.
 */
#include <immintrin.h>
#include <stdint.h>

float nl_rabitq_ip_avx2(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits);

float nl_rabitq_ip_avx2(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits)
{
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256 total = _mm256_setzero_ps();
    for (uint32_t b = 0; b < bits; b++) {
        const uint8_t *p = planes + (size_t)b * pb;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        uint32_t j = 0;
        for (; j + 2 <= pb; j += 2) {
            __m256i m0 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(p[j]), sel), sel);
            __m256i m1 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(p[j + 1]), sel), sel);
            acc0 = _mm256_add_ps(acc0, _mm256_and_ps(_mm256_castsi256_ps(m0), _mm256_loadu_ps(q + 8 * j)));
            acc1 = _mm256_add_ps(acc1, _mm256_and_ps(_mm256_castsi256_ps(m1), _mm256_loadu_ps(q + 8 * j + 8)));
        }
        if (j < pb) {
            __m256i m0 = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(p[j]), sel), sel);
            acc0 = _mm256_add_ps(acc0, _mm256_and_ps(_mm256_castsi256_ps(m0), _mm256_loadu_ps(q + 8 * j)));
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(acc0, acc1), _mm256_set1_ps((float)(1u << b)), total);
    }
    __m128 lo = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}
