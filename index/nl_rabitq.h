/*
 * nl_rabitq.h — RaBitQ with B bits per dimension (Gao and Long, SIGMOD 2024; the
 * multi-bit extension of Gao et al., SIGMOD 2025): compressed codes whose distance
 * estimate has an error bound, so a search can tell which candidates cannot matter.
 *
 * Encoding a vector o (D dims): r = P (o - c), with c the data's centroid and P a random
 * orthogonal matrix; o' = r / |r|. The code is the point y of the grid
 * {-(2^B-1)/2, ..., +(2^B-1)/2}^D (half-integers: B = 1 is the sign code) whose
 * direction is closest to o' (the largest cos(y, o')), found exactly by sweeping the
 * grid's scale (events where one coordinate moves up a level). Stored per point:
 *
 *   B bit planes of ceil(D/8) bytes (plane b holds bit b of u_i = y_i + (2^B-1)/2)
 *   f32 |r|^2  and  f32 |r| / <y, o'>
 *
 * so a code is nl_rabitq_code_bytes() = B * ceil(D/8) + 8 bytes.
 *
 * Estimating: for a query q, q_r = P (q - c) and <r, q_r> ~ |r| <y, q_r> / <y, o'>
 * (unbiased: the random rotation makes the part of o' that y misses look like noise
 * orthogonal to y). The distance estimate is |r|^2 + |q_r|^2 - 2 <r, q_r> for l2 (half
 * of it for cosine, on normalised vectors; the inner product directly for ip). Its error
 * is at most 2 |r| |q_r| beta eps0 / sqrt(D - 1) with high probability, where
 * beta = sqrt(|y|^2 / <y,o'>^2 - 1) concentrates tightly for given B and D: the quantizer
 * keeps a quantile of it measured on the training sample (beta_q), and eps0 (about 1.9 in
 * the paper, a search parameter here) sets how sure the bound is.
 *
 * The kernel is <u, q_r> over bit planes (sum over planes of 2^b times the sum of the
 * q_r entries whose bit is set); it has a scalar reference and AVX2/AVX-512 versions
 * chosen at run time (nl_isa).
 *
 * Lifecycle: nl_rabitq_train or nl_rabitq_deserialize -> encode / query / estimate
 * (thread-safe: the quantizer is immutable) -> nl_rabitq_destroy.
 */
#ifndef NL_RABITQ_H
#define NL_RABITQ_H

#include <math.h>
#include <string.h>

#include "nl_common.h"
#include "nl_distance.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nl_rabitq nl_rabitq;

#define NL_RABITQ_MAX_DIM 2048u /* the rotation is stored (D^2 floats) and built in O(D^3) */
#define NL_RABITQ_MAX_BITS 8u

typedef struct {
    uint32_t bits;       /* 1..8 */
    uint32_t max_sample; /* rows used for the centroid and beta; 0 = 20000 */
    uint64_t seed;       /* the rotation */
    unsigned threads;    /* 0 = all CPUs */
} nl_rabitq_params;

/* On success *out is owned by the caller (nl_rabitq_destroy). */
int nl_rabitq_train(const nl_vecset *vs, nl_metric metric, const nl_rabitq_params *p, nl_rabitq **out);
void nl_rabitq_destroy(nl_rabitq *q);

uint32_t nl_rabitq_dim(const nl_rabitq *q);
uint32_t nl_rabitq_bits(const nl_rabitq *q);
nl_metric nl_rabitq_metric(const nl_rabitq *q);
float nl_rabitq_beta(const nl_rabitq *q);
/* Bytes of one code: bits * ceil(dim/8) + 8. */
uint32_t nl_rabitq_code_bytes(const nl_rabitq *q);
static inline uint32_t nl_rabitq_code_bytes_for(uint32_t dim, uint32_t bits) { return bits * ((dim + 7) / 8) + 8; }

/* Encodes rows [0, vs->n) of vs into codes (vs->n * code_bytes). */
int nl_rabitq_encode(const nl_rabitq *q, const nl_vecset *vs, uint8_t *codes, unsigned threads);

/* <u, q> over a code's bit planes: pb bytes per plane, q holds 8 * pb floats. */
typedef float (*nl_rabitq_ip_fn)(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits);
nl_rabitq_ip_fn nl_rabitq_kernel(nl_isa isa); /* NULL if the CPU lacks isa */

/* Per-query state. qr is the caller's buffer of 8 * ceil(dim/8) floats; prepare fills
 * it and the scalars; the struct holds no other pointer, so it may be copied. */
typedef struct {
    float *qr;
    float qnorm2;  /* |q_r|^2 */
    float usum;    /* (2^B - 1)/2 * sum(q_r): <y, q_r> = <u, q_r> - usum */
    float qc;      /* ip: <c, q> */
    float bcoef;   /* error = bcoef * |r| */
    float scale;   /* 0.5 for cosine (1 - cos = |a-b|^2 / 2), else 1 */
    uint32_t pb, bits;
    nl_metric metric;
    nl_rabitq_ip_fn ip;
} nl_rabitq_query;

/* q: dim floats (not modified). eps0 >= 0 scales the error bound (0: no bound). */
void nl_rabitq_prepare(const nl_rabitq *rq, const float *q, float eps0, nl_rabitq_query *out);

/* The estimated distance of one code, on the scale of the exact distance kernel
 * (squared l2, 1 - cos, -ip); *err (if not NULL) its error bound. */
static inline float nl_rabitq_estimate(const nl_rabitq_query *s, const uint8_t *code, float *err)
{
    const uint8_t *f = code + (size_t)s->bits * s->pb;
    float fadd, fres;
    memcpy(&fadd, f, 4);
    memcpy(&fres, f + 4, 4);
    float yq = s->ip(code, s->qr, s->pb, s->bits) - s->usum;
    float dot = fres * yq;
    if (err)
        *err = s->bcoef * sqrtf(fadd);
    if (s->metric == NL_METRIC_IP)
        return -(dot + s->qc);
    return s->scale * (fadd + s->qnorm2 - 2.0f * dot);
}

/* Serialised form (little-endian, docs/format.md); deserialize treats buf as untrusted
 * and returns NL_ECORRUPT on any inconsistency. */
size_t nl_rabitq_serialized_size(const nl_rabitq *q);
int nl_rabitq_serialize(const nl_rabitq *q, void *buf, size_t len);
int nl_rabitq_deserialize(const void *buf, size_t len, nl_rabitq **out);

#ifdef __cplusplus
}
#endif
#endif
