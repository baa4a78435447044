/*
 * distance_impl.h — the per-ISA kernel tables that distance.c dispatches between.
 * Internal to index/. Each table is indexed [metric][dtype] for the four stored types.
 */
#ifndef NL_DISTANCE_IMPL_H
#define NL_DISTANCE_IMPL_H
#include <math.h>

#include "nl_distance.h"

extern const nl_dist_fn nl_kernels_scalar[3][4];
extern const nl_dist_fn nl_kernels_avx2[3][4];
extern const nl_dist_fn nl_kernels_avx512[3][4];

static inline float nl_cosine_finish(float dot, float qq, float xx)
{
    if (qq <= 0.0f || xx <= 0.0f)
        return 1.0f;
    return 1.0f - dot / (sqrtf(qq) * sqrtf(xx));
}
#endif
