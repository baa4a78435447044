/*
 * nl_kmeans.h — k-means for PQ codebooks and build partitions: k-means++ seeding,
 * Lloyd iterations whose assignment step is one OpenBLAS sgemm per block of rows
 * (|x|^2 - 2 x.c + |c|^2), and empty-cluster repair by splitting the largest cluster.
 * Results depend only on the inputs and the seed, never on the thread count: the work
 * is cut into fixed blocks and every reduction runs in a fixed order.
 */
#ifndef NL_KMEANS_H
#define NL_KMEANS_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint32_t k;       /* clusters, 1..n */
    uint32_t iters;   /* Lloyd iterations at most (stops early when inertia settles) */
    uint64_t seed;
    unsigned threads; /* 0 = all CPUs */
} nl_kmeans_params;

/* x: n rows of d floats. centroids: k*d floats, written. assign (n entries) and
 * inertia (sum of squared distances) are optional outputs. */
int nl_kmeans(const float *x, size_t n, uint32_t d, const nl_kmeans_params *p,
              float *centroids, uint32_t *assign, double *inertia);

/* Nearest `top` centroids (1 or 2) of each row by squared L2. assign: n*top ids,
 * nearest first; dist (optional): n*top squared distances. */
int nl_kmeans_assign(const float *x, size_t n, uint32_t d, const float *centroids,
                     uint32_t k, uint32_t top, unsigned threads, uint32_t *assign,
                     float *dist);

#ifdef __cplusplus
}
#endif
#endif
