/*
 * vamana_consolidate.c — removing deleted points from a graph without rebuilding it:
 * FreshDiskANN's delete consolidation, over a graph held in arrays (a segment's, loaded
 * for an insertion merge).
 *
 * A live node u that lists deleted neighbours loses those edges and gains candidates in
 * their place: the live neighbours of each deleted neighbour (and, where one of those is
 * deleted too, its live neighbours in turn, to CONS_DEPTH levels, since a streaming delete
 * removes whole neighbourhoods and one level would leave such u with few candidates).
 * RobustPrune(u, its live neighbours and those candidates, alpha, R) then picks its new
 * list, by exact distances, as an insert's prune does: a path that ran through a deleted
 * node now runs around it. Live nodes without deleted neighbours keep their lists. Deleted
 * nodes end with no list, so no live node reaches them, and the caller drops them.
 *
 * Each worker rewrites only the lists of its own live nodes and reads the lists of deleted
 * ones (never rewritten) and its own: no locks. A worker's scratch is O(CONS_MAX_CANDS),
 * whatever the graph's size. The entry point, when deleted, moves to the
 * nearest live node among its neighbourhood (by the same candidate walk).
 *
 * Invariants after: every list holds live ids only, none twice, at most R; deg[v] == 0 for
 * every deleted v; *medoid is live (when any node is).
 */
#include <errno.h>
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "nl_util.h"
#include "vamana_impl.h"

/* Levels of deleted neighbours a candidate walk looks through, and its candidates at most. */
#define CONS_DEPTH 2
#define CONS_MAX_CANDS 1024u
#define CONS_PRUNE_FACTOR 8u

typedef struct {
    const nl_vecset *vs;
    nl_dist_fn dist;
    uint32_t *adj;
    uint32_t stride, R;
    uint32_t *deg;
    const uint8_t *dead;
    float alpha;
    atomic_size_t repaired;
} cons_ctx;

#define CONS_SEEN_SLOTS 8192u /* a power of two, over twice what a walk can see */

typedef struct {
    uint32_t *ids, *out;
    float *d, *occl, *xbuf;
    uint32_t *seen;      /* open addressing: id + 1, 0 empty */
    uint32_t *seen_used; /* slots to clear */
    uint32_t nseen;
} cons_scratch;

/* Adds v to the walk's seen set; 1 if it was new (0 also when the set is full). */
static int seen_add(cons_scratch *s, uint32_t v)
{
    if (s->nseen * 2 >= CONS_SEEN_SLOTS)
        return 0;
    uint32_t h = (v * 2654435761u) & (CONS_SEEN_SLOTS - 1);
    while (s->seen[h] != 0) {
        if (s->seen[h] == v + 1)
            return 0;
        h = (h + 1) & (CONS_SEEN_SLOTS - 1);
    }
    s->seen[h] = v + 1;
    s->seen_used[s->nseen++] = h;
    return 1;
}

typedef struct {
    uint32_t id;
    float d;
} cand_d;

static int cand_cmp(const void *a, const void *b)
{
    const cand_d *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The live nodes reachable from u's list through deleted ones (up to CONS_DEPTH levels),
 * into ids; returns how many. u itself is left out. */
static uint32_t gather(const cons_ctx *c, cons_scratch *s, uint32_t u)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < s->nseen; i++)
        s->seen[s->seen_used[i]] = 0;
    s->nseen = 0;
    seen_add(s, u);
    uint32_t frontier[2][64], nf = 0, nnext;
    /* level 0: u's own list */
    const uint32_t *l = c->adj + (size_t)u * c->stride;
    for (uint32_t i = 0; i < c->deg[u]; i++) {
        uint32_t v = l[i];
        if (!seen_add(s, v))
            continue;
        if (!c->dead[v]) {
            if (n < CONS_MAX_CANDS) s->ids[n++] = v;
        } else if (nf < 64) {
            frontier[0][nf++] = v;
        }
    }
    /* the second level only where the first left few candidates (a neighbourhood deleted
     * wholesale): it multiplies the prune's work */
    for (int level = 0; level < CONS_DEPTH && nf && (level == 0 || n < 2 * c->R); level++) {
        nnext = 0;
        for (uint32_t f = 0; f < nf; f++) {
            uint32_t v = frontier[level & 1][f];
            const uint32_t *lv = c->adj + (size_t)v * c->stride;
            for (uint32_t i = 0; i < c->deg[v]; i++) {
                uint32_t w = lv[i];
                if (!seen_add(s, w))
                    continue;
                if (!c->dead[w]) {
                    if (n < CONS_MAX_CANDS) s->ids[n++] = w;
                } else if (nnext < 64) {
                    frontier[(level + 1) & 1][nnext++] = w;
                }
            }
        }
        nf = nnext;
    }
    return n;
}

static int has_dead_neighbour(const cons_ctx *c, uint32_t u)
{
    const uint32_t *l = c->adj + (size_t)u * c->stride;
    for (uint32_t i = 0; i < c->deg[u]; i++)
        if (c->dead[l[i]])
            return 1;
    return 0;
}

/* u's candidates, by exact distance, nearest first, into s->ids / s->d; returns how many. */
static uint32_t ranked(const cons_ctx *c, cons_scratch *s, uint32_t u, cand_d *tmp)
{
    uint32_t n = gather(c, s, u);
    nl_convert_to_f32(c->vs->dtype, nl_vecset_row(c->vs, u), s->xbuf, c->vs->dim);
    for (uint32_t i = 0; i < n; i++)
        tmp[i] = (cand_d){s->ids[i], c->dist(s->xbuf, nl_vecset_row(c->vs, s->ids[i]), c->vs->dim)};
    qsort(tmp, n, sizeof *tmp, cand_cmp);
    for (uint32_t i = 0; i < n; i++) {
        s->ids[i] = tmp[i].id;
        s->d[i] = tmp[i].d;
    }
    return n;
}

static int scratch_init(cons_scratch *s, const nl_vecset *vs)
{
    memset(s, 0, sizeof *s);
    s->ids = malloc(sizeof(uint32_t) * CONS_MAX_CANDS);
    s->out = malloc(sizeof(uint32_t) * CONS_MAX_CANDS);
    s->d = malloc(sizeof(float) * CONS_MAX_CANDS);
    s->occl = malloc(sizeof(float) * CONS_MAX_CANDS);
    s->xbuf = malloc(sizeof(float) * 2 * vs->dim);
    s->seen = calloc(CONS_SEEN_SLOTS, sizeof(uint32_t));
    s->seen_used = malloc(sizeof(uint32_t) * CONS_SEEN_SLOTS);
    return s->ids && s->out && s->d && s->occl && s->xbuf && s->seen && s->seen_used ? 0 : -ENOMEM;
}

static void scratch_fini(cons_scratch *s)
{
    free(s->ids);
    free(s->out);
    free(s->d);
    free(s->occl);
    free(s->xbuf);
    free(s->seen);
    free(s->seen_used);
}

typedef struct {
    cons_ctx *c;
    size_t chunk;
    int rc;
} cons_job;

/* Rewires the live nodes with deleted neighbours in chunk `task`. */
static int cons_task(void *vjob, size_t task, unsigned th)
{
    (void)th;
    cons_job *j = vjob;
    cons_ctx *c = j->c;
    size_t lo = task * j->chunk, hi = lo + j->chunk < c->vs->n ? lo + j->chunk : c->vs->n;
    cons_scratch s;
    cand_d *tmp = malloc(sizeof *tmp * CONS_MAX_CANDS);
    int rc = scratch_init(&s, c->vs);
    if (!tmp)
        rc = -ENOMEM;
    for (size_t u = lo; u < hi && !rc; u++) {
        if (c->dead[u] || !has_dead_neighbour(c, (uint32_t)u))
            continue;
        uint32_t n = ranked(c, &s, (uint32_t)u, tmp);
        /* The prune costs a distance per (kept, candidate) pair: only the nearest
         * CONS_PRUNE_FACTOR x R candidates take part (measured on sift, 25% deleted: the
         * same recall as all of them, at a fraction of the time). */
        if (n > CONS_PRUNE_FACTOR * c->R)
            n = CONS_PRUNE_FACTOR * c->R;
        uint32_t k = nl_vamana_prune(c->vs, c->dist, NULL, s.ids, s.d, n, c->alpha, c->R, s.occl, s.xbuf, s.out);
        memcpy(c->adj + u * c->stride, s.out, sizeof(uint32_t) * k);
        c->deg[u] = k;
        atomic_fetch_add(&c->repaired, 1);
    }
    scratch_fini(&s);
    free(tmp);
    return rc;
}

int nl_vamana_consolidate(const nl_vecset *vs, nl_metric metric, uint32_t *adj, uint32_t stride, uint32_t *deg,
                          const uint8_t *dead, uint32_t R, float alpha, unsigned threads, uint32_t *medoid,
                          size_t *repaired)
{
    if (!vs || !adj || !deg || !dead || !medoid || R == 0 || R > stride || vs->n == 0 || *medoid >= vs->n ||
        vs->n > UINT32_MAX - 1)
        return nl_fail(NL_EINVAL, "consolidate: bad arguments (n=%zu R=%u stride=%u)", vs ? vs->n : 0, R, stride);
    for (size_t u = 0; u < vs->n; u++) {
        if (deg[u] > stride)
            return nl_fail(NL_EINVAL, "consolidate: node %zu has degree %u over %u", u, deg[u], stride);
        for (uint32_t i = 0; i < deg[u]; i++)
            if (adj[u * stride + i] >= vs->n)
                return nl_fail(NL_EINVAL, "consolidate: node %zu links to %u of %zu", u, adj[u * stride + i], vs->n);
    }
    /* The prune's geometry is a dynamic index's (vamana_dynamic.c): l2 for ip. */
    nl_metric bm = metric == NL_METRIC_IP ? NL_METRIC_L2 : metric;
    cons_ctx c = {vs, nl_distance_fn(bm, vs->dtype), adj, stride, R, deg, dead, alpha, 0};
    /* A deleted entry point: the nearest live node its walk reaches becomes the entry. */
    if (dead[*medoid]) {
        cons_scratch s;
        cand_d *tmp = malloc(sizeof *tmp * CONS_MAX_CANDS);
        int rc = tmp ? scratch_init(&s, vs) : -ENOMEM;
        uint32_t n = rc ? 0 : ranked(&c, &s, *medoid, tmp);
        uint32_t best = n ? s.ids[0] : UINT32_MAX;
        if (!rc)
            scratch_fini(&s);
        free(tmp);
        if (rc)
            return rc;
        for (size_t u = 0; best == UINT32_MAX && u < vs->n; u++)
            if (!dead[u])
                best = (uint32_t)u;
        if (best != UINT32_MAX)
            *medoid = best;
    }
    size_t chunk = 1024, tasks = (vs->n + chunk - 1) / chunk;
    cons_job job = {&c, chunk, 0};
    int rc = nl_parallel_for(tasks, threads, cons_task, &job);
    if (rc)
        return rc;
    for (size_t u = 0; u < vs->n; u++)
        if (dead[u])
            deg[u] = 0;
    if (repaired)
        *repaired = atomic_load(&c.repaired);
    return 0;
}
