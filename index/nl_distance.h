/*
 * nl_distance.h — distance kernels: an f32 query against one stored vector of type
 * f32, f16, u8 or i8. Every (metric, type) pair has a scalar reference and, where the
 * CPU has them, AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL) variants chosen at run time;
 * the shipped build never assumes an instruction set. NEARLINE_ISA=scalar|avx2|avx512
 * in the environment caps the choice (for tests and A/B timing).
 *
 * All kernels return "smaller is closer":
 *   l2      sum (q_i - x_i)^2            (squared Euclidean)
 *   ip      -sum q_i x_i                 (negated inner product)
 *   cosine  1 - q.x / (|q| |x|)          (1 when either norm is zero)
 */
#ifndef NL_DISTANCE_H
#define NL_DISTANCE_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NL_ISA_SCALAR = 0, NL_ISA_AVX2 = 1, NL_ISA_AVX512 = 2 } nl_isa;

typedef float (*nl_dist_fn)(const float *q, const void *x, size_t dim);

/* Best instruction set this CPU and NEARLINE_ISA allow. */
nl_isa nl_isa_best(void);
/* True when the CPU can run kernels of isa (ignores NEARLINE_ISA). */
int nl_isa_supported(nl_isa isa);
const char *nl_isa_name(nl_isa isa);

/* The kernel for (metric, stored type) in a given instruction set; NULL when the CPU
 * lacks it or the pair is invalid (i32 is never a stored type). */
nl_dist_fn nl_distance_kernel(nl_metric m, nl_dtype t, nl_isa isa);
/* The same at nl_isa_best(). */
nl_dist_fn nl_distance_fn(nl_metric m, nl_dtype t);

#ifdef __cplusplus
}
#endif
#endif
