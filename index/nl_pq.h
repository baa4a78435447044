/*
 * nl_pq.h — product quantization with 8-bit codes: a vector of dimension D is centred
 * (global mean subtracted) and cut into M contiguous chunks (sizes differ by at most
 * one when M does not divide D); each chunk is replaced by the index of its nearest of
 * 256 centroids, so a code is M bytes. M is the "PQ bytes" of a collection (1..D;
 * 8 to 128 are the usual choices).
 *
 * Search uses asymmetric distance: per query, a table of 256*M partial distances, then
 * each code's distance is M table lookups. For cosine the quantizer is trained on and
 * encodes normalised vectors, and queries are normalised, so the L2 table ranks like the
 * cosine distance. For ip the table holds negated partial dot products.
 *
 * Lifecycle: nl_pq_train or nl_pq_deserialize -> encode/table/adc (thread-safe, the
 * quantizer is immutable) -> nl_pq_destroy.
 */
#ifndef NL_PQ_H
#define NL_PQ_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nl_pq nl_pq;

typedef struct {
    uint32_t m;          /* code bytes per vector */
    uint32_t max_sample; /* training rows used at most (a strided subset); 0 = 100000 */
    uint32_t iters;      /* k-means iterations per chunk; 0 = 12 */
    uint64_t seed;
    unsigned threads;    /* 0 = all CPUs */
} nl_pq_params;

#define NL_PQ_CENTROIDS 256

/* Trains on the rows of vs (a sample is taken if there are more than max_sample).
 * On success *out is owned by the caller (nl_pq_destroy). */
int nl_pq_train(const nl_vecset *vs, nl_metric metric, const nl_pq_params *p, nl_pq **out);
void nl_pq_destroy(nl_pq *pq);

uint32_t nl_pq_dim(const nl_pq *pq);
uint32_t nl_pq_m(const nl_pq *pq);
nl_metric nl_pq_metric(const nl_pq *pq);

/* Encodes rows [0, vs->n) of vs into codes (vs->n * m bytes). */
int nl_pq_encode(const nl_pq *pq, const nl_vecset *vs, uint8_t *codes, unsigned threads);
/* Reconstructs one code into out (dim floats), in the space the quantizer works in
 * (normalised for cosine). */
void nl_pq_decode(const nl_pq *pq, const uint8_t *code, float *out);

/* Fills table (256*m floats) for query q (dim floats). */
void nl_pq_table(const nl_pq *pq, const float *q, float *table);
/* Asymmetric distance of one code. */
static inline float nl_pq_adc(const float *table, const uint8_t *code, uint32_t m)
{
    float s = 0.0f;
    for (uint32_t j = 0; j < m; j++)
        s += table[(size_t)j * 256 + code[j]];
    return s;
}

/* Serialised form (little-endian, documented in docs/format.md). size() gives the exact
 * byte count; deserialize treats buf as untrusted and returns NL_ECORRUPT on any
 * inconsistency. */
size_t nl_pq_serialized_size(const nl_pq *pq);
int nl_pq_serialize(const nl_pq *pq, void *buf, size_t len);
int nl_pq_deserialize(const void *buf, size_t len, nl_pq **out);

#ifdef __cplusplus
}
#endif
#endif
