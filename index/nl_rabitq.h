/*
 * nl_rabitq.h — RaBitQ with B bits per dimension (Gao and Long, SIGMOD 2024; the
 * multi-bit extension of Gao et al., SIGMOD 2025) on residuals to cluster centroids
 * (as IVF-RaBitQ does): compressed codes whose distance estimate has an error bound, so
 * a search can tell which candidates cannot matter.
 *
 * Encoding a vector o (D dims): c is the nearest of C k-means centroids, r = P (o - c)
 * with P a random orthogonal matrix, o' = r / |r|. The code is the point y of the grid
 * {-(2^B-1)/2, ..., +(2^B-1)/2}^D (half-integers: B = 1 is the sign code) whose
 * direction is closest to o' (the largest cos(y, o')), found exactly by sweeping the
 * grid's scale (events where one coordinate moves up a level). The estimator's error
 * grows with |r|, so residuals to a near centroid rather than to the data's mean are
 * what keeps it small on clustered data (on isotropic clusters the mean is several
 * cluster radii away from every point).
 *
 * With A = |r| / <y, o'>, <o - c, v> ~ A <y, P v> for any v (unbiased: the rotation
 * makes the part of o' that y misses look like noise orthogonal to y). For l2,
 * |o - q|^2 = |r|^2 + |q - c|^2 - 2 <o - c, q - c> ~ F + |q - c|^2 - 2 A <y, P q>, with
 * the per-point F = |r|^2 + 2 A <y, P c> (so the query is rotated once, not per
 * centroid). Stored per point:
 *
 *   B bit planes of ceil(D/8) bytes (plane b holds bit b of u_i = y_i + (2^B-1)/2)
 *   u32: F as an f32 whose 10 low mantissa bits hold the centroid (C <= 1,024); F keeps
 *        13 bits of mantissa, 1e-4 relative, far below the estimator's own error
 *   f16 A / s_c (s_c: the centroid's typical A, so half precision is relative)
 *
 * so a code is nl_rabitq_code_bytes() = B * ceil(D/8) + 6 bytes: 2 bits at 128-d is 38,
 * 1 bit at 784-d 104 (the default PQ size + 8 bytes admits both). Cosine works on
 * normalised vectors (half the l2 estimate); ip estimates -(<c, q> + A <y, P q>).
 *
 * The error of <o - c, q - c> is at most |r| |q - c| eps0 sqrt(1 - cos^2)/cos / sqrt(D-1)
 * with high probability (cos = cos(y, o')); |r| sqrt(1-cos^2)/cos = A sqrt(|y|^2 -
 * <y,o'>^2), whose second factor (kappa) concentrates for given B and D: the quantizer
 * keeps a high quantile of it from its training sample. eps0 (about 1.9 in the paper, a
 * search parameter here) sets how sure the bound is: the error behaves like a normal
 * variable of that scale, so eps0 = 3 leaves out about 0.3 %.
 *
 * The kernel is <u, q> over bit planes (sum over planes of 2^b times the sum of the q
 * entries whose bit is set); it has a scalar reference and AVX2/AVX-512 versions chosen
 * at run time (nl_isa).
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
#define NL_RABITQ_MAX_CENTROIDS 1024u

typedef struct {
    uint32_t bits;       /* 1..8 */
    uint32_t max_sample; /* rows used for k-means and kappa; 0 = 64 per centroid */
    uint32_t centroids;  /* 0 = from rows_hint: one per 256 rows, at most 1,024 and at most
                          * 262,144 / D (a query costs C x D to prepare) */
    uint64_t rows_hint;  /* rows the codes will serve (0 = vs->n): vs may be a sample */
    uint64_t seed;       /* the rotation and k-means */
    unsigned threads;    /* 0 = all CPUs */
} nl_rabitq_params;

/* On success *out is owned by the caller (nl_rabitq_destroy). */
int nl_rabitq_train(const nl_vecset *vs, nl_metric metric, const nl_rabitq_params *p, nl_rabitq **out);
void nl_rabitq_destroy(nl_rabitq *q);

uint32_t nl_rabitq_dim(const nl_rabitq *q);
uint32_t nl_rabitq_bits(const nl_rabitq *q);
nl_metric nl_rabitq_metric(const nl_rabitq *q);
float nl_rabitq_kappa(const nl_rabitq *q);
uint32_t nl_rabitq_centroids(const nl_rabitq *q);
/* Bytes of one code: bits * ceil(dim/8) + 6. */
uint32_t nl_rabitq_code_bytes(const nl_rabitq *q);
static inline uint32_t nl_rabitq_code_bytes_for(uint32_t dim, uint32_t bits) { return bits * ((dim + 7) / 8) + 6; }

#define NL_RABITQ_CID_BITS 10u
/* F and the centroid from a code's first factor word (the middle of F's cut-off range,
 * so the truncation is unbiased). */
static inline float nl_rabitq_unpack_f(uint32_t w, uint32_t *cid)
{
    *cid = w & ((1u << NL_RABITQ_CID_BITS) - 1);
    w = (w & ~((1u << NL_RABITQ_CID_BITS) - 1)) | (1u << (NL_RABITQ_CID_BITS - 1));
    float F;
    memcpy(&F, &w, 4);
    return F;
}

/* Encodes rows [0, vs->n) of vs into codes (vs->n * code_bytes). */
int nl_rabitq_encode(const nl_rabitq *q, const nl_vecset *vs, uint8_t *codes, unsigned threads);
/* NL_ECORRUPT when a code names a centroid that does not exist or holds non-finite
 * factors (codes read from disk are untrusted). */
int nl_rabitq_check_codes(const nl_rabitq *q, const uint8_t *codes, size_t n);

/* <u, q> over a code's bit planes: pb bytes per plane, q holds 8 * pb floats. */
typedef float (*nl_rabitq_ip_fn)(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits);
nl_rabitq_ip_fn nl_rabitq_kernel(nl_isa isa); /* NULL if the CPU lacks isa */

/* Floats of per-query scratch: 8 * ceil(dim/8) + 3 * centroids. */
size_t nl_rabitq_query_floats(const nl_rabitq *q);

/* Per-query state, in the caller's buffer (nl_rabitq_query_floats floats): qr = P q
 * (zero-padded), then per centroid the constant part of the estimate, the scale of its
 * A and the error coefficient. */
typedef struct {
    float *qr;
    const float *cq;   /* l2: |q - c|^2; ip: -<c, q>, per centroid */
    const float *cs;   /* s_c */
    const float *ce;   /* error per unit of A */
    float usum;        /* (2^B - 1)/2 * sum(qr): <y, P q> = <u, qr> - usum */
    float scale;       /* 0.5 for cosine (1 - cos = |a-b|^2 / 2), else 1 */
    uint32_t pb, bits, C;
    nl_metric metric;
    nl_rabitq_ip_fn ip;
} nl_rabitq_query;

/* q: dim floats (not modified); buf: nl_rabitq_query_floats floats. eps0 >= 0 scales
 * the error bound (0: none). */
void nl_rabitq_prepare(const nl_rabitq *rq, const float *q, float eps0, float *buf, nl_rabitq_query *out);

/* The estimated distance of one code, on the scale of the exact distance kernel
 * (squared l2, 1 - cos, -ip); *err (if not NULL) its error bound. */
static inline float nl_rabitq_estimate(const nl_rabitq_query *s, const uint8_t *code, float *err)
{
    const uint8_t *f = code + (size_t)s->bits * s->pb;
    uint32_t w, cid;
    uint16_t ah;
    memcpy(&w, f, 4);
    memcpy(&ah, f + 4, 2);
    float F = nl_rabitq_unpack_f(w, &cid);
    if (cid >= s->C) /* codes are checked at open; this keeps a bad one harmless */
        cid = 0;
    float A = nl_f16_to_f32(ah) * s->cs[cid];
    float yq = s->ip(code, s->qr, s->pb, s->bits) - s->usum;
    if (err)
        *err = A * s->ce[cid];
    if (s->metric == NL_METRIC_IP)
        return s->cq[cid] - A * yq;
    return s->scale * (F + s->cq[cid] - 2.0f * A * yq);
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
