/*
 * distance_scalar.c — the reference kernels. Plain loops over widened elements; the
 * SIMD variants are tested against these over every dimension 1..1024.
 */
#include <math.h>
#include <string.h>

#include "distance_impl.h"

static inline float ld_f32(const void *x, size_t i) { float v; memcpy(&v, (const char *)x + 4 * i, 4); return v; }
static inline float ld_f16(const void *x, size_t i) { uint16_t h; memcpy(&h, (const char *)x + 2 * i, 2); return nl_f16_to_f32(h); }
static inline float ld_u8(const void *x, size_t i) { return (float)((const uint8_t *)x)[i]; }
static inline float ld_i8(const void *x, size_t i) { return (float)((const int8_t *)x)[i]; }

#define SCALAR_KERNELS(T)                                                          \
    static float l2_##T(const float *q, const void *x, size_t d)                   \
    {                                                                              \
        float s = 0.0f;                                                            \
        for (size_t i = 0; i < d; i++) { float t = q[i] - ld_##T(x, i); s += t * t; } \
        return s;                                                                  \
    }                                                                              \
    static float ip_##T(const float *q, const void *x, size_t d)                   \
    {                                                                              \
        float s = 0.0f;                                                            \
        for (size_t i = 0; i < d; i++) s += q[i] * ld_##T(x, i);                   \
        return -s;                                                                 \
    }                                                                              \
    static float cos_##T(const float *q, const void *x, size_t d)                  \
    {                                                                              \
        float dot = 0.0f, qq = 0.0f, xx = 0.0f;                                    \
        for (size_t i = 0; i < d; i++) {                                           \
            float v = ld_##T(x, i);                                                \
            dot += q[i] * v; qq += q[i] * q[i]; xx += v * v;                       \
        }                                                                          \
        return nl_cosine_finish(dot, qq, xx);                                      \
    }

SCALAR_KERNELS(f32)
SCALAR_KERNELS(f16)
SCALAR_KERNELS(u8)
SCALAR_KERNELS(i8)

const nl_dist_fn nl_kernels_scalar[3][4] = {
    {l2_f32, l2_f16, l2_u8, l2_i8},
    {ip_f32, ip_f16, ip_u8, ip_i8},
    {cos_f32, cos_f16, cos_u8, cos_i8},
};
