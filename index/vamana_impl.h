/*
 * vamana_impl.h — what the Vamana build and search share inside index/: the index
 * layout and the best-first candidate pool.
 *
 * The pool is DiskANN's "neighbour priority queue": an array sorted by (distance, id) of
 * at most L candidates, each flagged once expanded, and a cursor at the first
 * unexpanded one. Insertion is a binary search and a memmove, which for the L of a few
 * hundred we use beats a heap because the array stays in cache.
 */
#ifndef NL_VAMANA_IMPL_H
#define NL_VAMANA_IMPL_H

#include <stdatomic.h>
#include <string.h>

#include "graph_impl.h"
#include "nl_distance.h"
#include "nl_vamana.h"

struct nl_vamana {
    nl_graph *g;
    nl_vecset vs;
    nl_metric metric;       /* of searches */
    nl_metric build_metric; /* of the prune rule */
    nl_dist_fn dist;
    nl_dist_fn build_dist;
    uint32_t medoid;
    /* ip only: the extra coordinate sqrt(M^2 - |x|^2) of the MIPS-to-L2 reduction, per
     * point (M = the largest norm), so build distances are L2 in that augmented space. */
    float *ext;
    /* Dynamic indexes only (vamana_dynamic.c): NULL for a built one. */
    struct nl_vam_dyn *dyn;
};

typedef struct {
    uint32_t id;
    uint32_t expanded;
    float dist;
} nl_cand;

typedef struct {
    nl_cand *c;
    uint32_t size, cap, cursor;
} nl_pool;

static inline void nl_pool_reset(nl_pool *p, uint32_t cap)
{
    p->size = 0;
    p->cap = cap;
    p->cursor = 0;
}

static inline int nl_cand_less(float da, uint32_t ia, float db, uint32_t ib)
{
    return da < db || (da == db && ia < ib);
}

/* Inserts unless the pool is full and the candidate is no better than the worst.
 * Returns 1 when inserted. Callers guarantee id is not already present. */
static inline int nl_pool_insert(nl_pool *p, uint32_t id, float dist)
{
    if (p->size == p->cap && !nl_cand_less(dist, id, p->c[p->size - 1].dist, p->c[p->size - 1].id))
        return 0;
    uint32_t lo = 0, hi = p->size;
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (nl_cand_less(p->c[mid].dist, p->c[mid].id, dist, id))
            lo = mid + 1;
        else
            hi = mid;
    }
    uint32_t n = p->size < p->cap ? p->size : p->cap - 1;
    if (lo < n)
        memmove(&p->c[lo + 1], &p->c[lo], sizeof(nl_cand) * (n - lo));
    p->c[lo] = (nl_cand){id, 0, dist};
    if (p->size < p->cap)
        p->size++;
    if (lo < p->cursor)
        p->cursor = lo;
    return 1;
}

/* Index of the closest unexpanded candidate, marked expanded; -1 when none is left. */
static inline int nl_pool_pop(nl_pool *p)
{
    while (p->cursor < p->size && p->c[p->cursor].expanded)
        p->cursor++;
    if (p->cursor >= p->size)
        return -1;
    p->c[p->cursor].expanded = 1;
    return (int)p->cursor++;
}

struct nl_vamana_searcher {
    const nl_vamana *ix;
    nl_pool pool;
    uint32_t max_L;
    uint32_t *visit; /* stamp per node: == epoch when visited in this search */
    uint32_t epoch;
    uint32_t *nbuf;  /* unvisited neighbours of the node being expanded */
    uint32_t *lcopy; /* a locked copy of one list (dynamic indexes) */
};

/* Starts a new search: bumps the visit epoch (clearing stamps on wrap-around). */
static inline void nl_searcher_new_epoch(nl_vamana_searcher *s)
{
    if (++s->epoch == 0) {
        memset(s->visit, 0, sizeof(uint32_t) * s->ix->vs.n);
        s->epoch = 1;
    }
}

/* ---- insertion, shared by the bulk build and dynamic indexes (vamana_build.c) ---- */

#include <stdatomic.h>

/* What concurrent inserters share: the index, the degree bound, the list size, the prune
 * factor and one spin lock per node. */
typedef struct {
    nl_vamana *ix;
    uint32_t R, L;
    float alpha;
    atomic_uchar *locks;
    int keep_in_edge; /* dynamic indexes: every insert leaves p an in-edge */
} nl_vam_ins;

/* One inserter's scratch (one per thread). */
typedef struct {
    nl_vamana_searcher *s;
    nl_cand *cands; /* MAX_PRUNE_CANDIDATES + cap candidates, then cap + 1 ids */
    float *occl;
    uint32_t *pid;  /* MAX_PRUNE_CANDIDATES: the prune's candidates, by distance */
    float *pdist;   /* their distances to the point pruned */
    float *qbuf;    /* 2 * dim */
    uint32_t *lbuf; /* cap + 1 */
} nl_vam_scratch;

/* Dynamic-index hooks (vamana_dynamic.c). */
void nl_vam_dyn_free(nl_vamana *ix);
atomic_uchar *nl_vam_dyn_locks(const nl_vamana *ix);

int nl_vam_scratch_create(const nl_vamana *ix, uint32_t L, nl_vam_scratch **out);
void nl_vam_scratch_destroy(nl_vam_scratch *sc);
/* GreedySearch for point p from the medoid, RobustPrune, reverse edges. p's vector must be
 * in place; other nodes' lists may change concurrently (per-node locks). */
void nl_vam_insert_point(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t p);
/* Prunes u's list to R when it has overflowed into the slack. Caller holds no lock and no
 * other thread may modify u concurrently. */
void nl_vam_prune_to_R(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t u);
/* The same, for a list that searches may be reading: written under its node lock. */
void nl_vam_prune_to_R_locked(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t u);

/* Links every node the medoid cannot reach from a close reachable node (within R),
 * until all are reachable. Takes node locks for its writes, so searches may run. */
int nl_vam_ensure_connected(nl_vam_ins *b, nl_vam_scratch *sc);
#endif
