/*
 * eval.c — exact ground truth by brute force (a bounded max-heap per query, queries in
 * parallel) and recall@k.
 */
#include "nl_eval.h"

#include <errno.h>
#include <stdlib.h>

#include "nl_distance.h"
#include "nl_util.h"

typedef struct {
    const nl_vecset *base;
    nl_dist_fn dist;
    const float *q;
    uint32_t k;
    uint32_t *ids;
    float *dists;
} gt_ctx;

/* max-heap on (dist, id): the root is the worst kept neighbour */
static inline int worse(float da, uint32_t ia, float db, uint32_t ib)
{
    return da > db || (da == db && ia > ib);
}

static void sift_down(float *d, uint32_t *id, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(d[l], id[l], d[m], id[m])) m = l;
        if (r < n && worse(d[r], id[r], d[m], id[m])) m = r;
        if (m == i) return;
        float td = d[i]; d[i] = d[m]; d[m] = td;
        uint32_t ti = id[i]; id[i] = id[m]; id[m] = ti;
        i = m;
    }
}

static void sift_up(float *d, uint32_t *id, uint32_t i)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!worse(d[i], id[i], d[p], id[p])) return;
        float td = d[i]; d[i] = d[p]; d[p] = td;
        uint32_t ti = id[i]; id[i] = id[p]; id[p] = ti;
        i = p;
    }
}

static int gt_task(void *vctx, size_t qi, unsigned th)
{
    (void)th;
    gt_ctx *g = vctx;
    const nl_vecset *b = g->base;
    uint32_t k = g->k;
    float *hd = malloc(sizeof(float) * k);
    uint32_t *hi = malloc(sizeof(uint32_t) * k);
    if (!hd || !hi) {
        free(hd);
        free(hi);
        return -ENOMEM;
    }
    const float *q = g->q + qi * b->dim;
    uint32_t n = 0;
    for (size_t i = 0; i < b->n; i++) {
        float d = g->dist(q, nl_vecset_row(b, i), b->dim);
        if (n < k) {
            hd[n] = d;
            hi[n] = (uint32_t)i;
            sift_up(hd, hi, n++);
        } else if (worse(hd[0], hi[0], d, (uint32_t)i)) {
            hd[0] = d;
            hi[0] = (uint32_t)i;
            sift_down(hd, hi, k, 0);
        }
    }
    /* Pop worst-first into the tail. */
    for (uint32_t m = n; m > 0; m--) {
        g->ids[qi * k + m - 1] = hi[0];
        if (g->dists) g->dists[qi * k + m - 1] = hd[0];
        hd[0] = hd[m - 1];
        hi[0] = hi[m - 1];
        sift_down(hd, hi, m - 1, 0);
    }
    free(hd);
    free(hi);
    return 0;
}

int nl_groundtruth_exact(const nl_vecset *base, nl_metric metric, const float *queries, size_t nq,
                         uint32_t k, unsigned threads, uint32_t *ids, float *dists)
{
    if (!base || base->n == 0 || k == 0 || k > base->n)
        return nl_fail(NL_EINVAL, "groundtruth: k=%u over %zu points", k, base ? base->n : 0);
    nl_dist_fn f = nl_distance_fn(metric, base->dtype);
    if (!f)
        return nl_fail(NL_EINVAL, "groundtruth: no kernel for this metric and type");
    gt_ctx g = {base, f, queries, k, ids, dists};
    return nl_parallel_for(nq, threads ? threads : nl_cpu_count(), gt_task, &g);
}

double nl_recall_at_k(const uint32_t *results, size_t nq, uint32_t res_stride,
                      const uint32_t *truth, uint32_t gt_stride, uint32_t k)
{
    if (nq == 0 || k == 0)
        return 0.0;
    size_t hits = 0;
    for (size_t q = 0; q < nq; q++) {
        const uint32_t *r = results + q * res_stride, *t = truth + q * gt_stride;
        for (uint32_t i = 0; i < k; i++) {
            if (r[i] == UINT32_MAX)
                continue;
            for (uint32_t j = 0; j < k; j++)
                if (r[i] == t[j]) {
                    hits++;
                    break;
                }
        }
    }
    return (double)hits / ((double)nq * k);
}
