/*
 * vamana_build.c — the Vamana build (see nl_vamana.h for the algorithm and its source).
 *
 * Concurrency: every node has a one-byte spin lock; a thread holds at most one at a time
 * and only while copying or replacing that node's list, never while computing distances,
 * so there is no lock ordering to get wrong. Lists may overfill to `cap` = 1.3 R before a
 * prune (DiskANN's slack), which cuts the number of prunes of popular nodes; a last
 * parallel sweep prunes every list to R.
 *
 * Prune rule (RobustPrune): candidates sorted by distance to p; take the closest p*,
 * then drop every p' with alpha * d(p*, p') <= d(p, p'). It is run with alpha growing
 * from 1 to the target by factors of 1.2 so that the closest, non-occluded neighbours
 * are always taken first. Distances are the metric's own (squared L2 for l2), as DiskANN
 * does.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "nl_util.h"
#include "vamana_impl.h"

#define MAX_PRUNE_CANDIDATES 750
#define TASK_POINTS 64

void nl_vamana_params_default(nl_vamana_params *p)
{
    p->R = 64;
    p->L = 100;
    p->alpha = 1.2f;
    p->threads = 0;
    p->seed = 42;
    p->single_pass = 0;
}

const nl_graph *nl_vamana_graph(const nl_vamana *ix) { return ix->g; }
uint32_t nl_vamana_medoid(const nl_vamana *ix) { return ix->medoid; }
const nl_vecset *nl_vamana_vectors(const nl_vamana *ix) { return &ix->vs; }
nl_metric nl_vamana_metric(const nl_vamana *ix) { return ix->metric; }

void nl_vamana_destroy(nl_vamana *ix)
{
    if (!ix)
        return;
    nl_vam_dyn_free(ix);
    nl_graph_destroy(ix->g);
    free(ix->ext);
    free(ix);
}

static int vamana_init(nl_vamana *ix, const nl_vecset *vs, nl_metric metric)
{
    ix->vs = *vs;
    ix->metric = metric;
    ix->build_metric = metric == NL_METRIC_IP ? NL_METRIC_L2 : metric;
    ix->dist = nl_distance_fn(metric, vs->dtype);
    ix->build_dist = nl_distance_fn(ix->build_metric, vs->dtype);
    if (!ix->dist || !ix->build_dist)
        return nl_fail(NL_EINVAL, "vamana: no kernel for metric %s over %s", nl_metric_name(metric),
                       nl_dtype_name(vs->dtype));
    return 0;
}

int nl_vamana_from_graph(const nl_vecset *vs, nl_metric metric, nl_graph *g, uint32_t medoid,
                         nl_vamana **out)
{
    *out = NULL;
    if (!g || g->n != vs->n || medoid >= vs->n) {
        nl_graph_destroy(g);
        return nl_fail(NL_EINVAL, "vamana: graph of %zu nodes for %zu vectors, medoid %u",
                       g ? g->n : 0, vs->n, medoid);
    }
    nl_vamana *ix = calloc(1, sizeof *ix);
    if (!ix) {
        nl_graph_destroy(g);
        return -ENOMEM;
    }
    ix->g = g;
    ix->medoid = medoid;
    int rc = vamana_init(ix, vs, metric);
    if (rc) {
        nl_vamana_destroy(ix);
        return rc;
    }
    *out = ix;
    return 0;
}

/* ---------------------------------------------------------------- build state */

/* The build's progress bookkeeping around the shared insert context. */
typedef struct {
    nl_vam_ins ins;
    const nl_vamana_params *p;
    uint32_t *order;
    nl_vam_scratch **scr; /* one per thread */
    nl_progress_fn progress;
    void *progress_ctx;
    atomic_size_t done;
    size_t total;
    uint64_t last_report_ns;
    const char *phase;
} build_ctx;

static inline void lock_node(nl_vam_ins *b, uint32_t u)
{
    while (atomic_exchange_explicit(&b->locks[u], 1, memory_order_acquire))
        while (atomic_load_explicit(&b->locks[u], memory_order_relaxed))
            __builtin_ia32_pause();
}

static inline void unlock_node(nl_vam_ins *b, uint32_t u)
{
    atomic_store_explicit(&b->locks[u], 0, memory_order_release);
}

int nl_vam_scratch_create(const nl_vamana *ix, uint32_t L, nl_vam_scratch **out)
{
    *out = NULL;
    nl_vam_scratch *sc = calloc(1, sizeof *sc);
    if (!sc)
        return -ENOMEM;
    uint32_t cap = ix->g->cap;
    uint32_t ccap = MAX_PRUNE_CANDIDATES + cap;
    int rc = nl_vamana_searcher_create(ix, L, &sc->s);
    /* candidates, then room for a copy of one list */
    sc->cands = malloc(sizeof(nl_cand) * ccap + sizeof(uint32_t) * (cap + 1));
    sc->occl = malloc(sizeof(float) * ccap);
    sc->pid = malloc(sizeof(uint32_t) * MAX_PRUNE_CANDIDATES);
    sc->pdist = malloc(sizeof(float) * MAX_PRUNE_CANDIDATES);
    sc->qbuf = malloc(sizeof(float) * 2 * ix->vs.dim);
    sc->lbuf = malloc(sizeof(uint32_t) * (cap + 1));
    if (rc || !sc->cands || !sc->occl || !sc->pid || !sc->pdist || !sc->qbuf || !sc->lbuf) {
        nl_vam_scratch_destroy(sc);
        return rc ? rc : -ENOMEM;
    }
    *out = sc;
    return 0;
}

void nl_vam_scratch_destroy(nl_vam_scratch *sc)
{
    if (!sc)
        return;
    nl_vamana_searcher_destroy(sc->s);
    free(sc->cands);
    free(sc->occl);
    free(sc->pid);
    free(sc->pdist);
    free(sc->qbuf);
    free(sc->lbuf);
    free(sc);
}

static inline const void *row_of(const nl_vamana *ix, uint32_t u)
{
    return nl_vecset_row(&ix->vs, u);
}

/* Build-time distance between q (the f32 copy of a point whose augmented coordinate is
 * qext) and stored point v. */
static inline float bdist(const nl_vamana *ix, const float *q, float qext, uint32_t v)
{
    float d = ix->build_dist(q, row_of(ix, v), ix->vs.dim);
    if (ix->ext) {
        float t = qext - ix->ext[v];
        d += t * t;
    }
    return d;
}

/* GreedySearch from the medoid for point q during the build: lists are copied under
 * their lock. The expanded nodes, with their distances, are appended to out. */
static uint32_t build_search(nl_vam_ins *b, nl_vamana_searcher *s, const float *q, float qext,
                             uint32_t L, nl_cand *out, uint32_t out_cap)
{
    nl_vamana *ix = b->ix;
    nl_graph *g = ix->g;
    nl_searcher_new_epoch(s);
    nl_pool *pool = &s->pool;
    nl_pool_reset(pool, L);
    s->visit[ix->medoid] = s->epoch;
    nl_pool_insert(pool, ix->medoid, bdist(ix, q, qext, ix->medoid));
    uint32_t nout = 0;
    int i;
    while ((i = nl_pool_pop(pool)) >= 0) {
        uint32_t u = pool->c[i].id;
        if (nout < out_cap)
            out[nout++] = pool->c[i];
        lock_node(b, u);
        uint32_t deg = g->deg[u];
        memcpy(s->nbuf, nl_graph_list(g, u), sizeof(uint32_t) * deg);
        unlock_node(b, u);
        uint32_t m = 0;
        for (uint32_t j = 0; j < deg; j++) {
            uint32_t v = s->nbuf[j];
            if (s->visit[v] == s->epoch)
                continue;
            s->visit[v] = s->epoch;
            s->nbuf[m++] = v;
            __builtin_prefetch(row_of(ix, v));
        }
        for (uint32_t j = 0; j < m; j++) {
            uint32_t v = s->nbuf[j];
            nl_pool_insert(pool, v, bdist(ix, q, qext, v));
        }
    }
    return nout;
}

static int cand_cmp(const void *a, const void *b)
{
    const nl_cand *x = a, *y = b;
    if (x->dist < y->dist) return -1;
    if (x->dist > y->dist) return 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* RobustPrune(p, cands, alpha, R): writes at most R ids to out; returns how many.
 * cands holds distances to p; it is sorted and deduplicated in place. */
static uint32_t robust_prune(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t p, nl_cand *cands, uint32_t nc,
                             float alpha, uint32_t *out)
{
    nl_vamana *ix = b->ix;
    qsort(cands, nc, sizeof *cands, cand_cmp);
    uint32_t w = 0;
    for (uint32_t i = 0; i < nc; i++) {
        /* Every distance to p is computed by the same kernel from the same f32 copy of
         * p, so copies of one id sort next to each other. */
        if (cands[i].id == p || (w > 0 && cands[w - 1].id == cands[i].id))
            continue;
        cands[w++] = cands[i];
    }
    nc = w < MAX_PRUNE_CANDIDATES ? w : MAX_PRUNE_CANDIDATES;
    for (uint32_t i = 0; i < nc; i++) {
        sc->pid[i] = cands[i].id;
        sc->pdist[i] = cands[i].dist;
    }
    return nl_vamana_prune(&ix->vs, ix->build_dist, ix->ext, sc->pid, sc->pdist, nc, alpha, b->R, sc->occl,
                           sc->qbuf + ix->vs.dim, out);
}

uint32_t nl_vamana_prune(const nl_vecset *vs, nl_dist_fn dist, const float *ext, const uint32_t *ids, const float *d,
                         uint32_t nc, float alpha, uint32_t R, float *occl, float *xbuf, uint32_t *out)
{
    for (uint32_t i = 0; i < nc; i++)
        occl[i] = 0.0f;
    uint32_t nout = 0, ndup = 0, max_dup = R > 1 ? R / 2 : 1;
    for (float cur = 1.0f; cur <= alpha * 1.0001f && nout < R; cur *= 1.2f) {
        if (cur > alpha)
            cur = alpha;
        for (uint32_t i = 0; i < nc && nout < R; i++) {
            if (occl[i] > cur)
                continue;
            if (d[i] == 0.0f && ndup >= max_dup) { /* enough exact copies of p: room for the rest */
                occl[i] = FLT_MAX;
                continue;
            }
            occl[i] = FLT_MAX; /* taken */
            out[nout++] = ids[i];
            ndup += d[i] == 0.0f;
            nl_convert_to_f32(vs->dtype, nl_vecset_row(vs, ids[i]), xbuf, vs->dim);
            for (uint32_t j = i + 1; j < nc; j++) {
                if (occl[j] > alpha)
                    continue;
                float djk = dist(xbuf, nl_vecset_row(vs, ids[j]), vs->dim);
                if (ext) {
                    float t = ext[ids[i]] - ext[ids[j]];
                    djk += t * t;
                }
                /* An exact copy of a taken candidate is occluded by it, unless it is also a
                 * copy of p: a group of identical vectors (duplicate chunks, boilerplate)
                 * would otherwise keep one link to one another each, so a search that
                 * reaches the group finds a few of them and k results of distance 0 go
                 * missing. Copies of p are linked to one another, up to R/2 of them. */
                float ratio = djk > 0.0f ? d[j] / djk : d[j] > 0.0f ? FLT_MAX : 0.0f;
                if (ratio > occl[j])
                    occl[j] = ratio;
            }
        }
        if (cur >= alpha)
            break;
    }
    return nout;
}

/* RobustPrune of u over the deg candidates in copy (a private copy of its list, plus
 * whatever joins it), then the result written back under u's lock. */
static void prune_and_store(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t u, uint32_t *copy, uint32_t deg)
{
    nl_vamana *ix = b->ix;
    float *qu = sc->qbuf;
    nl_convert_to_f32(ix->vs.dtype, row_of(ix, u), qu, ix->vs.dim);
    nl_cand *c = sc->cands;
    for (uint32_t i = 0; i < deg; i++)
        c[i] = (nl_cand){copy[i], 0, bdist(ix, qu, ix->ext ? ix->ext[u] : 0.0f, copy[i])};
    uint32_t nn = robust_prune(b, sc, u, c, deg, b->alpha, copy);
    lock_node(b, u);
    memcpy(nl_graph_list(ix->g, u), copy, sizeof(uint32_t) * nn);
    ix->g->deg[u] = nn;
    unlock_node(b, u);
}

/* Adds p to u's list; prunes u when the list is full. */
static void add_reverse_edge(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t u, uint32_t p)
{
    nl_vamana *ix = b->ix;
    nl_graph *g = ix->g;
    lock_node(b, u);
    uint32_t *l = nl_graph_list(g, u);
    uint32_t deg = g->deg[u];
    for (uint32_t i = 0; i < deg; i++)
        if (l[i] == p) {
            unlock_node(b, u);
            return;
        }
    if (deg < g->cap) {
        l[deg] = p;
        g->deg[u] = deg + 1;
        unlock_node(b, u);
        return;
    }
    uint32_t *copy = sc->lbuf;
    memcpy(copy, l, sizeof(uint32_t) * deg);
    unlock_node(b, u);
    copy[deg++] = p;
    prune_and_store(b, sc, u, copy, deg);
}

static void report(build_ctx *b, size_t add)
{
    size_t done = atomic_fetch_add(&b->done, add) + add;
    if (!b->progress)
        return;
    uint64_t now = nl_now_ns();
    if (done == b->total || now - b->last_report_ns > 250000000ull) {
        b->last_report_ns = now; /* racy on purpose: only throttles reports */
        b->progress(b->progress_ctx, b->phase, done, b->total);
    }
}

/* Dynamic indexes get no connectivity repair at the end of a build, so an insert makes
 * sure p kept at least one in-edge from its new neighbours (their prunes may all have
 * dropped it); if not, p takes the place of the last, longest edge of its nearest
 * neighbour. That edge's target can lose its only in-edge in turn, rarely; the flush to
 * a segment repairs what remains. */
static void ensure_in_edge(nl_vam_ins *b, const uint32_t *nbrs, uint32_t nn, uint32_t p)
{
    nl_graph *g = b->ix->g;
    for (uint32_t j = 0; j < nn; j++) {
        uint32_t u = nbrs[j];
        lock_node(b, u);
        const uint32_t *l = nl_graph_list(g, u);
        for (uint32_t i = 0; i < g->deg[u]; i++)
            if (l[i] == p) {
                unlock_node(b, u);
                return;
            }
        unlock_node(b, u);
    }
    uint32_t u = nbrs[0];
    lock_node(b, u);
    uint32_t *l = nl_graph_list(g, u);
    if (g->deg[u] < g->cap)
        l[g->deg[u]++] = p;
    else
        l[g->deg[u] - 1] = p;
    unlock_node(b, u);
}

void nl_vam_insert_point(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t p)
{
    nl_vamana *ix = b->ix;
    nl_graph *g = ix->g;
    nl_cand *c = sc->cands;
    uint32_t *newl = sc->lbuf;
    float *q = sc->qbuf;
    uint32_t ccap = MAX_PRUNE_CANDIDATES + g->cap;
    nl_convert_to_f32(ix->vs.dtype, row_of(ix, p), q, ix->vs.dim);
    float qext = ix->ext ? ix->ext[p] : 0.0f;
    uint32_t nc = build_search(b, sc->s, q, qext, b->L, c, MAX_PRUNE_CANDIDATES);
    /* Keep p's present neighbours in the running (they matter in the second pass). */
    lock_node(b, p);
    uint32_t deg = g->deg[p];
    memcpy(newl, nl_graph_list(g, p), sizeof(uint32_t) * deg);
    unlock_node(b, p);
    for (uint32_t j = 0; j < deg && nc < ccap; j++)
        c[nc++] = (nl_cand){newl[j], 0, bdist(ix, q, qext, newl[j])};
    uint32_t nn = robust_prune(b, sc, p, c, nc, b->alpha, newl);
    lock_node(b, p);
    memcpy(nl_graph_list(g, p), newl, sizeof(uint32_t) * nn);
    g->deg[p] = nn;
    unlock_node(b, p);
    /* newl is reused by add_reverse_edge; keep the list in the candidate buffer. */
    uint32_t *mine = (uint32_t *)(c + ccap);
    memcpy(mine, newl, sizeof(uint32_t) * nn);
    for (uint32_t j = 0; j < nn; j++)
        add_reverse_edge(b, sc, mine[j], p);
    if (b->keep_in_edge && nn > 0)
        ensure_in_edge(b, mine, nn, p);
}

static int insert_task(void *vctx, size_t task, unsigned th)
{
    build_ctx *b = vctx;
    size_t n = b->ins.ix->vs.n;
    size_t i0 = task * TASK_POINTS, i1 = i0 + TASK_POINTS < n ? i0 + TASK_POINTS : n;
    for (size_t i = i0; i < i1; i++)
        nl_vam_insert_point(&b->ins, b->scr[th], b->order[i]);
    report(b, i1 - i0);
    return 0;
}

/* Prunes u's list to R if it overflowed (the slack of the build). */
void nl_vam_prune_to_R(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t u)
{
    nl_vamana *ix = b->ix;
    nl_graph *g = ix->g;
    uint32_t deg = g->deg[u];
    if (deg <= b->R)
        return;
    uint32_t *l = nl_graph_list(g, u);
    float *qu = sc->qbuf;
    nl_convert_to_f32(ix->vs.dtype, row_of(ix, u), qu, ix->vs.dim);
    nl_cand *c = sc->cands;
    for (uint32_t i = 0; i < deg; i++)
        c[i] = (nl_cand){l[i], 0, bdist(ix, qu, ix->ext ? ix->ext[u] : 0.0f, l[i])};
    g->deg[u] = robust_prune(b, sc, u, c, deg, b->alpha, l);
}

void nl_vam_prune_to_R_locked(nl_vam_ins *b, nl_vam_scratch *sc, uint32_t u)
{
    nl_vamana *ix = b->ix;
    nl_graph *g = ix->g;
    lock_node(b, u);
    uint32_t deg = g->deg[u];
    if (deg <= b->R) {
        unlock_node(b, u);
        return;
    }
    uint32_t *copy = sc->lbuf;
    memcpy(copy, nl_graph_list(g, u), sizeof(uint32_t) * deg);
    unlock_node(b, u);
    prune_and_store(b, sc, u, copy, deg);
}

static int final_prune_task(void *vctx, size_t task, unsigned th)
{
    build_ctx *b = vctx;
    size_t n = b->ins.ix->vs.n;
    size_t u0 = task * 1024, u1 = u0 + 1024 < n ? u0 + 1024 : n;
    for (size_t u = u0; u < u1; u++)
        nl_vam_prune_to_R(&b->ins, b->scr[th], (uint32_t)u);
    return 0;
}

/* ---------------------------------------------------------------- medoid */

typedef struct {
    const nl_vamana *ix;
    const float *mean;
    float *best_d;
    uint32_t *best_i;
    size_t block;
} medoid_ctx;

static int medoid_task(void *vctx, size_t task, unsigned th)
{
    (void)th;
    medoid_ctx *m = vctx;
    nl_dist_fn l2 = nl_distance_fn(NL_METRIC_L2, m->ix->vs.dtype);
    size_t i0 = task * m->block, i1 = i0 + m->block < m->ix->vs.n ? i0 + m->block : m->ix->vs.n;
    float bd = FLT_MAX;
    uint32_t bi = (uint32_t)i0;
    for (size_t i = i0; i < i1; i++) {
        float d = l2(m->mean, row_of(m->ix, (uint32_t)i), m->ix->vs.dim);
        if (d < bd) { bd = d; bi = (uint32_t)i; }
    }
    m->best_d[task] = bd;
    m->best_i[task] = bi;
    return 0;
}

static int find_medoid(nl_vamana *ix, unsigned threads)
{
    size_t n = ix->vs.n;
    uint32_t d = ix->vs.dim;
    double *acc = calloc(d, sizeof(double));
    float *mean = malloc(sizeof(float) * d), *row = malloc(sizeof(float) * d);
    size_t block = 4096, ntasks = (n + block - 1) / block;
    float *bd = malloc(sizeof(float) * ntasks);
    uint32_t *bi = malloc(sizeof(uint32_t) * ntasks);
    int rc = 0;
    if (!acc || !mean || !row || !bd || !bi) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        nl_convert_to_f32(ix->vs.dtype, row_of(ix, (uint32_t)i), row, d);
        for (uint32_t j = 0; j < d; j++)
            acc[j] += row[j];
    }
    for (uint32_t j = 0; j < d; j++)
        mean[j] = (float)(acc[j] / (double)n);
    medoid_ctx m = {ix, mean, bd, bi, block};
    rc = nl_parallel_for(ntasks, threads, medoid_task, &m);
    ix->medoid = bi[0];
    float best = bd[0];
    for (size_t t = 1; t < ntasks; t++)
        if (bd[t] < best) { best = bd[t]; ix->medoid = bi[t]; }
out:
    free(acc);
    free(mean);
    free(row);
    free(bd);
    free(bi);
    return rc;
}

/* ---------------------------------------------------------------- connectivity */

/* Marks everything reachable from `from` that is not yet marked. */
static void bfs_mark(const nl_graph *g, uint32_t from, uint8_t *seen, uint32_t *queue)
{
    if (seen[from])
        return;
    size_t head = 0, tail = 0;
    queue[tail++] = from;
    seen[from] = 1;
    while (head < tail) {
        uint32_t u = queue[head++];
        const uint32_t *l = g->adj + (size_t)u * g->cap;
        for (uint32_t i = 0; i < g->deg[u]; i++)
            if (!seen[l[i]]) {
                seen[l[i]] = 1;
                queue[tail++] = l[i];
            }
    }
}

/* Pruning can leave a node with no in-edges, so no search could ever return it. For
 * each such node u, search for u's own vector and link u from the closest reachable
 * node that has room (or, if all are full, in place of that node's last, longest
 * edge); repeat until the medoid reaches every node. Rarely touches more than a handful
 * of nodes, and never exceeds R. */
int nl_vam_ensure_connected(nl_vam_ins *b, nl_vam_scratch *sc)
{
    nl_vamana *ix = b->ix;
    nl_graph *g = ix->g;
    size_t n = ix->vs.n;
    uint8_t *seen = malloc(n);
    uint32_t *queue = malloc(sizeof(uint32_t) * n);
    float *q = malloc(sizeof(float) * ix->vs.dim);
    nl_cand *c = sc->cands;
    int rc = 0;
    if (!seen || !queue || !q) {
        rc = -ENOMEM;
        goto out;
    }
    for (int round = 0; round < 8; round++) {
        memset(seen, 0, n);
        bfs_mark(g, ix->medoid, seen, queue);
        size_t fixed = 0;
        for (size_t u = 0; u < n; u++) {
            if (seen[u])
                continue;
            nl_convert_to_f32(ix->vs.dtype, row_of(ix, (uint32_t)u), q, ix->vs.dim);
            uint32_t nc = build_search(b, sc->s, q, ix->ext ? ix->ext[u] : 0.0f, b->L, c,
                                       MAX_PRUNE_CANDIDATES);
            qsort(c, nc, sizeof *c, cand_cmp);
            uint32_t pick = UINT32_MAX;
            for (uint32_t i = 0; i < nc && pick == UINT32_MAX; i++)
                if (c[i].id != u && seen[c[i].id] && g->deg[c[i].id] < g->R)
                    pick = c[i].id;
            if (pick == UINT32_MAX) {
                for (uint32_t i = 0; i < nc && pick == UINT32_MAX; i++)
                    if (c[i].id != u && seen[c[i].id])
                        pick = c[i].id;
                if (pick == UINT32_MAX)
                    continue; /* nothing reachable found: try again next round */
                lock_node(b, pick);
                g->deg[pick]--; /* drop the last (longest) edge */
                unlock_node(b, pick);
            }
            /* Locked: a sealed dynamic index is searched while it is repaired. */
            lock_node(b, pick);
            uint32_t *l = nl_graph_list(g, pick);
            l[g->deg[pick]++] = (uint32_t)u;
            unlock_node(b, pick);
            bfs_mark(g, (uint32_t)u, seen, queue);
            fixed++;
        }
        if (fixed == 0)
            break;
    }
out:
    free(seen);
    free(queue);
    free(q);
    return rc;
}

/* ---------------------------------------------------------------- ip reduction */

/* Bachrach et al.'s reduction: appending sqrt(M^2 - |x|^2) to every point (and 0 to the
 * query) makes L2 in the augmented space rank like the negated inner product, so the
 * prune rule sees a true metric. */
static int mips_extension(nl_vamana *ix)
{
    size_t n = ix->vs.n;
    ix->ext = malloc(sizeof(float) * n);
    float *row = malloc(sizeof(float) * ix->vs.dim);
    if (!ix->ext || !row) {
        free(row);
        return -ENOMEM;
    }
    double maxn = 0;
    for (size_t i = 0; i < n; i++) {
        nl_convert_to_f32(ix->vs.dtype, row_of(ix, (uint32_t)i), row, ix->vs.dim);
        double s = 0;
        for (uint32_t j = 0; j < ix->vs.dim; j++)
            s += (double)row[j] * row[j];
        ix->ext[i] = (float)s; /* squared norm for now */
        if (s > maxn) maxn = s;
    }
    for (size_t i = 0; i < n; i++)
        ix->ext[i] = (float)sqrt(maxn - ix->ext[i] > 0 ? maxn - ix->ext[i] : 0);
    free(row);
    return 0;
}

/* ---------------------------------------------------------------- build */

int nl_vamana_build(const nl_vecset *vs, nl_metric metric, const nl_vamana_params *p,
                    nl_progress_fn progress, void *progress_ctx, nl_vamana **out)
{
    *out = NULL;
    if (!vs || !vs->data || vs->n == 0 || vs->n > UINT32_MAX - 1 || vs->dim == 0 || !p)
        return nl_fail(NL_EINVAL, "vamana: empty or oversized input");
    if (p->R < 1 || p->R > 1024 || p->L < 1 || p->L > 100000 || !(p->alpha >= 1.0f) || p->alpha > 4.0f)
        return nl_fail(NL_EINVAL, "vamana: R=%u L=%u alpha=%g out of range (R 1..1024, L >= 1, alpha 1..4)",
                       p->R, p->L, (double)p->alpha);
    nl_vamana *ix = calloc(1, sizeof *ix);
    if (!ix)
        return -ENOMEM;
    int rc = vamana_init(ix, vs, metric);
    if (rc) {
        free(ix);
        return rc;
    }
    if (metric == NL_METRIC_IP && (rc = mips_extension(ix)) != 0) {
        nl_vamana_destroy(ix);
        return rc;
    }
    uint32_t cap = p->R + (p->R * 3 + 9) / 10; /* 1.3 R slack */
    if ((rc = nl_graph_create(vs->n, p->R, cap, &ix->g)) != 0) {
        free(ix);
        return rc;
    }
    unsigned threads = p->threads ? p->threads : nl_cpu_count();
    build_ctx b;
    memset(&b, 0, sizeof b);
    b.ins.ix = ix;
    b.ins.R = p->R;
    b.ins.L = p->L;
    b.p = p;
    b.progress = progress;
    b.progress_ctx = progress_ctx;
    b.total = vs->n;
    b.ins.locks = calloc(vs->n, sizeof(atomic_uchar));
    b.order = malloc(sizeof(uint32_t) * vs->n);
    b.scr = calloc(threads, sizeof *b.scr);
    if (!b.ins.locks || !b.order || !b.scr) {
        rc = -ENOMEM;
        goto out;
    }
    for (unsigned t = 0; t < threads; t++)
        if ((rc = nl_vam_scratch_create(ix, p->L, &b.scr[t])) != 0)
            goto out;
    if ((rc = find_medoid(ix, threads)) != 0)
        goto out;
    nl_rng rng;
    nl_rng_seed(&rng, p->seed);
    for (size_t i = 0; i < vs->n; i++)
        b.order[i] = (uint32_t)i;
    for (size_t i = vs->n - 1; i > 0; i--) {
        size_t j = nl_rng_below(&rng, i + 1);
        uint32_t t = b.order[i];
        b.order[i] = b.order[j];
        b.order[j] = t;
    }
    size_t ntasks = (vs->n + TASK_POINTS - 1) / TASK_POINTS;
    int passes = p->single_pass || p->alpha <= 1.0f ? 1 : 2;
    for (int pass = 0; pass < passes; pass++) {
        b.ins.alpha = (passes == 2 && pass == 0) ? 1.0f : p->alpha;
        b.phase = passes == 2 ? (pass == 0 ? "build pass 1/2" : "build pass 2/2") : "build";
        atomic_store(&b.done, 0);
        if ((rc = nl_parallel_for(ntasks, threads, insert_task, &b)) != 0)
            goto out;
    }
    if ((rc = nl_parallel_for((vs->n + 1023) / 1024, threads, final_prune_task, &b)) != 0)
        goto out;
    rc = nl_vam_ensure_connected(&b.ins, b.scr[0]);
out:
    for (unsigned t = 0; b.scr && t < threads; t++)
        nl_vam_scratch_destroy(b.scr[t]);
    free(b.scr);
    free(b.ins.locks);
    free(b.order);
    if (rc) {
        nl_vamana_destroy(ix);
        return rc;
    }
    *out = ix;
    return 0;
}
