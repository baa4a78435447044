/*
 * vamana_search.c — GreedySearch over a finished in-memory Vamana graph (Algorithm 1 of
 * the DiskANN paper): best-first from the medoid with a list of L candidates, expanding
 * the closest unexpanded one until none is left. Each expansion prefetches the vectors
 * of the unvisited neighbours before computing any distance, so the loads overlap.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nl_util.h"
#include "vamana_impl.h"

int nl_vamana_searcher_create(const nl_vamana *ix, uint32_t max_L, nl_vamana_searcher **out)
{
    *out = NULL;
    if (max_L == 0)
        return nl_fail(NL_EINVAL, "searcher: max_L must be positive");
    nl_vamana_searcher *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->ix = ix;
    s->max_L = max_L;
    s->pool.c = malloc(sizeof(nl_cand) * (max_L + 1));
    s->visit = calloc(ix->vs.n, sizeof(uint32_t));
    s->nbuf = malloc(sizeof(uint32_t) * ix->g->cap);
    s->lcopy = malloc(sizeof(uint32_t) * ix->g->cap);
    if (!s->pool.c || !s->visit || !s->nbuf || !s->lcopy) {
        nl_vamana_searcher_destroy(s);
        return -ENOMEM;
    }
    *out = s;
    return 0;
}

void nl_vamana_searcher_destroy(nl_vamana_searcher *s)
{
    if (!s)
        return;
    free(s->pool.c);
    free(s->visit);
    free(s->nbuf);
    free(s->lcopy);
    free(s);
}

/* The k nearest so far of the nodes offered, nearest first (k <= 1024: insertion). */
typedef struct {
    uint32_t *id;
    float *d;
    uint32_t n, k;
} topk;

static inline void topk_offer(topk *t, uint32_t id, float d)
{
    if (t->n == t->k && d >= t->d[t->k - 1])
        return;
    uint32_t i = t->n < t->k ? t->n++ : t->k - 1;
    while (i > 0 && t->d[i - 1] > d) {
        t->d[i] = t->d[i - 1];
        t->id[i] = t->id[i - 1];
        i--;
    }
    t->d[i] = d;
    t->id[i] = id;
}

int nl_vamana_scan(const nl_vamana *ix, const float *q, const uint32_t *nodes, size_t n, uint32_t k, uint32_t *ids,
                   float *dists)
{
    if (k == 0)
        return nl_fail(NL_EINVAL, "scan: k must be positive");
    float *d = malloc(sizeof(float) * k);
    if (!d)
        return -ENOMEM;
    topk t = {ids, d, 0, k};
    const nl_vecset *vs = &ix->vs;
    const size_t row_bytes = (size_t)vs->dim * nl_dtype_size(vs->dtype);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = nodes[i];
        if (!nl_vamana_slot_ready(ix, u))
            continue;
        if (i + 4 < n)
            __builtin_prefetch((const char *)vs->data + (size_t)nodes[i + 4] * row_bytes);
        topk_offer(&t, u, ix->dist(q, (const char *)vs->data + (size_t)u * row_bytes, vs->dim));
    }
    if (dists)
        memcpy(dists, d, sizeof(float) * t.n);
    free(d);
    return (int)t.n;
}

static int search_impl(nl_vamana_searcher *s, const float *q, uint32_t k, uint32_t L, nl_vamana_allow_fn allow,
                       const void *actx, uint32_t *ids, float *dists, nl_search_stats *stats);

int nl_vamana_search(nl_vamana_searcher *s, const float *q, uint32_t k, uint32_t L, uint32_t *ids,
                     float *dists, nl_search_stats *stats)
{
    return search_impl(s, q, k, L, NULL, NULL, ids, dists, stats);
}

int nl_vamana_search_filtered(nl_vamana_searcher *s, const float *q, uint32_t k, uint32_t L,
                              nl_vamana_allow_fn allow, const void *ctx, uint32_t *ids, float *dists,
                              nl_search_stats *stats)
{
    if (!allow)
        return nl_fail(NL_EINVAL, "filtered search: no predicate");
    return search_impl(s, q, k, L, allow, ctx, ids, dists, stats);
}

static int search_impl(nl_vamana_searcher *s, const float *q, uint32_t k, uint32_t L, nl_vamana_allow_fn allow,
                       const void *actx, uint32_t *ids, float *dists, nl_search_stats *stats)
{
    const nl_vamana *ix = s->ix;
    if (k == 0 || L < k || L > s->max_L)
        return nl_fail(NL_EINVAL, "search: need 0 < k <= L <= %u (k=%u, L=%u)", s->max_L, k, L);
    nl_searcher_new_epoch(s);
    nl_pool *pool = &s->pool;
    nl_pool_reset(pool, L);
    const nl_graph *g = ix->g;
    const nl_vecset *vs = &ix->vs;
    const size_t row_bytes = (size_t)vs->dim * nl_dtype_size(vs->dtype);
    const char *base = vs->data;
    nl_dist_fn dist = ix->dist;
    atomic_uchar *locks = nl_vam_dyn_locks(ix);
    if (ix->dyn && nl_vamana_size(ix) == 0)
        return 0; /* nothing inserted yet */
    uint32_t hops = 0, comps = 1;
    float *rd = NULL;
    topk res = {ids, NULL, 0, k};
    if (allow) {
        if (!(rd = malloc(sizeof(float) * k)))
            return -ENOMEM;
        res.d = rd;
    }
    s->visit[ix->medoid] = s->epoch;
    float d0 = dist(q, base + (size_t)ix->medoid * row_bytes, vs->dim);
    nl_pool_insert(pool, ix->medoid, d0);
    if (allow && allow(actx, ix->medoid))
        topk_offer(&res, ix->medoid, d0);
    int i;
    while ((i = nl_pool_pop(pool)) >= 0) {
        uint32_t u = pool->c[i].id;
        hops++;
        uint32_t deg;
        const uint32_t *nb = g->adj + (size_t)u * g->cap;
        if (!locks) {
            deg = g->deg[u];
        } else {
            /* A dynamic index may be rewriting this list: copy it under its lock. */
            while (atomic_exchange_explicit(&locks[u], 1, memory_order_acquire))
                __builtin_ia32_pause();
            deg = g->deg[u];
            memcpy(s->lcopy, nb, sizeof(uint32_t) * deg);
            atomic_store_explicit(&locks[u], 0, memory_order_release);
            nb = s->lcopy;
        }
        uint32_t m = 0;
        for (uint32_t j = 0; j < deg; j++) {
            uint32_t v = nb[j];
            if (s->visit[v] == s->epoch)
                continue;
            s->visit[v] = s->epoch;
            s->nbuf[m++] = v;
            const char *row = base + (size_t)v * row_bytes;
            __builtin_prefetch(row);
            __builtin_prefetch(row + 64);
        }
        for (uint32_t j = 0; j < m; j++) {
            uint32_t v = s->nbuf[j];
            float d = dist(q, base + (size_t)v * row_bytes, vs->dim);
            nl_pool_insert(pool, v, d);
            /* The predicate only for a node that would enter the results: it can cost a
             * lookup (the engine's tombstone set), the distance is already paid. */
            if (allow && (res.n < res.k || d < res.d[res.k - 1]) && allow(actx, v))
                topk_offer(&res, v, d);
        }
        comps += m;
    }
    if (stats) {
        stats->hops = hops;
        stats->dist_comps = comps;
    }
    if (allow) {
        if (dists)
            memcpy(dists, rd, sizeof(float) * res.n);
        free(rd);
        return (int)res.n;
    }
    uint32_t found = pool->size < k ? pool->size : k;
    for (uint32_t j = 0; j < found; j++) {
        ids[j] = pool->c[j].id;
        if (dists)
            dists[j] = pool->c[j].dist;
    }
    return (int)found;
}
