/*
 * rabitq_avx512.c — <u, q> over RaBitQ bit planes with AVX-512 (nl_rabitq.h): two plane
 * bytes are a 16-lane mask, so each step is one masked add. Compiled with -mavx512f.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

float nl_rabitq_ip_avx512(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits);

float nl_rabitq_ip_avx512(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits)
{
    __m512 total = _mm512_setzero_ps();
    for (uint32_t b = 0; b < bits; b++) {
        const uint8_t *p = planes + (size_t)b * pb;
        __m512 acc = _mm512_setzero_ps();
        uint32_t j = 0;
        for (; j + 2 <= pb; j += 2) {
            uint16_t m;
            memcpy(&m, p + j, 2);
            acc = _mm512_mask_add_ps(acc, (__mmask16)m, acc, _mm512_loadu_ps(q + 8 * j));
        }
        if (j < pb) /* the last 8 floats: only the low 8 lanes exist in q */
            acc = _mm512_mask_add_ps(acc, (__mmask16)p[j], acc, _mm512_maskz_loadu_ps(0xff, q + 8 * j));
        total = _mm512_fmadd_ps(acc, _mm512_set1_ps((float)(1u << b)), total);
    }
    return _mm512_reduce_add_ps(total);
}
