/*
 * nl_quant.h — the compressed code a segment navigates by, whichever kind it is: 8-bit
 * PQ (nl_pq.h) or RaBitQ (nl_rabitq.h). The engine holds an nl_quant and never asks
 * which; a search prepares one nl_quant_query per query and estimates each code with
 * nl_quant_estimate, which also says how far the estimate may be off (RaBitQ's bound;
 * PQ has none, so its error is infinite and nothing is ever skipped on its account).
 *
 * A code spec names a kind and its size: "pq:M" (M bytes), "rabitq:B" (B bits per
 * dimension, B * ceil(D/8) + 6 bytes). Lifecycle: nl_quant_train / nl_quant_deserialize
 * -> encode / prepare / estimate (thread-safe, immutable) -> nl_quant_destroy.
 */
#ifndef NL_QUANT_H
#define NL_QUANT_H

#include <math.h>

#include "nl_common.h"
#include "nl_pq.h"
#include "nl_rabitq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NL_CODE_PQ = 0, NL_CODE_RABITQ = 1 } nl_code_kind;

typedef struct {
    nl_code_kind kind;
    uint32_t param; /* PQ: bytes; RaBitQ: bits per dimension */
} nl_code_spec;

/* "pq:32", "pq32", "rabitq:2", "rabitq2". */
int nl_code_spec_parse(const char *s, nl_code_spec *out);
/* Writes "pq:32" / "rabitq:2" into buf (>= 16 bytes); returns buf. */
const char *nl_code_spec_name(nl_code_spec c, char *buf, size_t len);
/* Bytes of one code in RAM for vectors of dimension dim; 0 if the spec cannot serve it. */
uint32_t nl_code_spec_bytes(nl_code_spec c, uint32_t dim);
/* 0 when c can encode vectors of dimension dim, else NL_EINVAL with a detail. */
int nl_code_spec_check(nl_code_spec c, uint32_t dim);

typedef struct nl_quant nl_quant;

typedef struct {
    uint32_t max_sample; /* training rows at most; 0 = the kind's default */
    uint64_t seed;
    unsigned threads;    /* 0 = all CPUs */
    uint64_t rows_hint;  /* rows the codes will serve when vs is a sample (RaBitQ sizes its
                          * centroids by it); 0 = vs->n */
} nl_quant_params;

int nl_quant_train(const nl_vecset *vs, nl_metric metric, nl_code_spec spec, const nl_quant_params *p,
                   nl_quant **out);
/* Wraps a PQ quantizer; takes ownership of pq (also on failure). */
int nl_quant_from_pq(nl_pq *pq, nl_quant **out);
void nl_quant_destroy(nl_quant *q);

nl_code_spec nl_quant_spec(const nl_quant *q);
uint32_t nl_quant_code_bytes(const nl_quant *q);
uint32_t nl_quant_dim(const nl_quant *q);
nl_metric nl_quant_metric(const nl_quant *q);
const nl_pq *nl_quant_pq(const nl_quant *q);         /* NULL unless PQ */
const nl_rabitq *nl_quant_rabitq(const nl_quant *q); /* NULL unless RaBitQ */

int nl_quant_encode(const nl_quant *q, const nl_vecset *vs, uint8_t *codes, unsigned threads);
/* Checks n codes read from disk (RaBitQ: centroid ids and factors; PQ codes are any
 * bytes). 0 or NL_ECORRUPT. */
int nl_quant_check_codes(const nl_quant *q, const uint8_t *codes, size_t n);

/* Floats of per-query scratch that nl_quant_prepare needs. */
size_t nl_quant_query_floats(const nl_quant *q);

typedef struct {
    nl_code_kind kind;
    uint32_t m;         /* PQ bytes */
    const float *table; /* PQ: 256 x m */
    nl_rabitq_query rq;
} nl_quant_query;

/* Prepares query q (dim floats) using buf (nl_quant_query_floats floats, caller's);
 * eps0 scales RaBitQ's error bound (0: none). */
void nl_quant_prepare(const nl_quant *q, const float *query, float eps0, float *buf, nl_quant_query *out);

static inline float nl_quant_estimate(const nl_quant_query *s, const uint8_t *code, float *err)
{
    if (s->kind == NL_CODE_PQ) {
        if (err)
            *err = INFINITY;
        return nl_pq_adc(s->table, code, s->m);
    }
    return nl_rabitq_estimate(&s->rq, code, err);
}

/* Groups: a partition of the points that a code names and a prepared query ranks, so a
 * search can start among the points of the groups nearest the query (engine/
 * segment_seeds.c). RaBitQ's groups are its centroids (each code names the one its
 * residual is to); PQ has none (0 groups). */
uint32_t nl_quant_groups(const nl_quant *q);
/* The group a code names, < nl_quant_groups(q); the code must have passed
 * nl_quant_check_codes. Not for PQ. */
uint32_t nl_quant_group_of(const nl_quant *q, const uint8_t *code);
/* How near a prepared query is to group g's centre, smaller nearer (l2 and cosine the
 * squared distance, ip the negated inner product); g < nl_quant_groups. Not for PQ. */
static inline float nl_quant_group_dist(const nl_quant_query *s, uint32_t g) { return s->rq.cq[g]; }
/* The codebook's serialised form is the kind's own (a PQ segment of format 1 holds the
 * PQ bytes as they were); the kind travels beside it (the segment header). */
size_t nl_quant_serialized_size(const nl_quant *q);
int nl_quant_serialize(const nl_quant *q, void *buf, size_t len);
int nl_quant_deserialize(nl_code_kind kind, const void *buf, size_t len, nl_quant **out);

#ifdef __cplusplus
}
#endif
#endif
