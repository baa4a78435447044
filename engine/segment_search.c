/*
 * segment_search.c — the disk search. A best-first beam search that navigates by PQ
 * distance (codes in RAM), reads node sectors from disk, and re-ranks by the exact
 * distance of the full vector that arrives in each sector.
 *
 * Unlike DiskANN's lock-step rounds (issue W reads, wait for all W, expand, repeat), each
 * query here keeps up to W reads in flight and expands a node the moment its read
 * completes, then immediately tops its reads back up to W from the closest unrequested
 * candidates (the PipeANN idea). On top of that one thread runs several queries at once
 * on its own ring, so while one query computes, the others' reads are in the device.
 *
 * Per query: a candidate pool of L entries sorted by estimated distance (nl_quant: PQ
 * or RaBitQ), each new, requested or (implicitly) done; an open-addressing visited set;
 * and the top-k by exact distance. A query ends when no new candidate remains among the
 * L best and none of its reads is in flight. Cached nodes (the hot list) are expanded
 * without I/O.
 *
 * The bound (RaBitQ only; PQ's error is unbounded): each candidate carries the lower
 * end of its estimate's error interval. Once k exact results are held, a candidate
 * whose lower bound is above the k-th exact distance cannot enter the top k: it is not
 * read (counted in bound_skips), and a query whose remaining candidates are all such
 * ends there. The k-th distance only falls, so a candidate skipped stays skippable.
 * What is given up is the candidate's neighbours as stepping stones; eps0 (the job's)
 * trades that against reads, and the benchmark (docs/benchmarks.md) chose its default.
 *
 * Whole sectors (segments in block layout, index/nl_layout.h): a sector read for node u
 * also brings the other records of its block, which the layout chose among u's graph
 * neighbours. Each such record v not yet expanded gets its exact distance; when that
 * would place it among the L best it is expanded on the spot (its neighbours join the
 * pool, and a pool entry still waiting for its read is marked done, so it is never read
 * itself); a farther one is only scored, and only where no filter or tombstone can make
 * the walk come back short (expand_sector says why). A record costs a distance; what it
 * saves is the reads the walk would have spent reaching it. Results are de-duplicated by
 * ordinal, since a record scored from a sector can be read for itself later.
 *
 * Where a walk starts: the medoid, and (segments with a seed table, segment_seeds.c) the
 * best members of the groups nearest the query, at most half the list so that one
 * neighbourhood cannot fill it. They are ordinary candidates from then on.
 *
 * One beam over several segments (a joint job, nl_seg_job.nsegs > 1). The segments of a
 * shard each hold a random part of its points, and a walk per segment pays each one's
 * list: at least k places even in a segment that holds none of the answer, and about
 * sqrt(its share) of L where the rule scales it. A joint job keeps one list of L for all
 * of them: every segment's entry points (medoid and seeds) join it, each candidate carries
 * its segment, and the estimates (each segment's own code, prepared for the query once per
 * segment) rank them together, since every estimate is of the same exact distance. Reads
 * then go where the candidates are best, whichever graph they are in. This needs every
 * graph entered near the query: from its medoid alone a segment's walk starts far away,
 * its first candidates fall out of a list the others have filled with near ones, and it
 * is never searched (measured: recall@10 0.155 of 8 segments with the seeds off). So a
 * joint job is for segments with a seed table, and two rules keep a segment from being
 * starved by one whose walk got near the query first (measured on 8 streamed segments,
 * docs/benchmarks.md: without them recall stopped at 0.982 whatever L, the misses all in
 * the smallest segment):
 *  - each segment keeps places in the list by its share of the points (L x share / 4, at
 *    least one): a full list gives up its worst entry of a segment holding more than
 *    its places, so a walk still far from the query keeps its frontier;
 *  - the bound skips a segment's candidates only once that segment has expanded k / 2
 *    nodes: before that its candidates are all far (its walk has not started), and the
 *    k-th distance the other segments reached would skip the stepping stones it needs.
 * The visited set numbers the segments' ordinals one after another (base[i] + ordinal),
 * so the job's ordinals must fit 32 bits; its results are numbered the same way.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nl_util.h"
#include "segment_internal.h"

enum { C_NEW = 0, C_REQUESTED = 1 };


typedef struct {
    uint32_t id;    /* ordinal in its segment */
    uint16_t state;
    uint16_t seg;   /* index among the job's segments */
    float dist;
    float lb; /* dist minus its error bound; -inf when there is none */
} pcand;

typedef struct {
    int active;
    nl_segment *const *segs; /* the job's segments: one, or a joint job's */
    uint32_t nseg, seg_cap;  /* segs in the job; entries allocated in base and qqs */
    uint32_t *base;          /* per segment: its first ordinal in the job's numbering */
    uint32_t *seg_cnt;       /* per segment: its entries in the pool */
    uint32_t *seg_exp;       /* per segment: its nodes expanded */
    uint32_t *seg_min;       /* per segment: places in the pool it keeps (joint jobs) */
    uint32_t bound_after;    /* a segment's candidates are skipped by their bound only once it
                              * has expanded this many nodes */
    nl_quant_query *qqs;     /* per segment: the query prepared for its code */
    size_t out;              /* where its results go: the job's row */
    size_t qi;
    const float *q;
    float *table;       /* the codes' per-query scratch (nl_quant_query_floats each) */
    size_t table_cap;   /* floats; grows for a job whose codes need more */
    float eps0;
    pcand *pool;
    uint32_t size, cursor, L, L_max, k, W;
    uint32_t *vis;      /* keys: ordinal + 1 */
    uint32_t *vis_used; /* slots to clear */
    uint32_t vis_mask, vis_n, vis_cap_used;
    uint32_t *res_id;
    uint16_t *res_seg;
    float *res_d;
    uint32_t res_n;
    uint32_t inflight;
    unsigned char *bufs; /* max_W x spn sectors */
    uint32_t *buf_node;
    uint16_t *buf_seg;
    uint8_t *buf_busy;
    nl_query_stats st;
    uint64_t t0;
    const nl_bitmap *allow; /* filter: results are versions in it (or not in it: allow_neg) */
    int allow_neg;
    nl_seg_dead_fn dead;    /* deleted versions: expanded, never results */
    void *dead_ctx;
    int scan;               /* the pool was filled by a scan: expand without neighbours */
    int sector;             /* expand the other records of a sector read (block layout) */
} qstate;

struct nl_seg_searcher {
    nl_segment *seg;
    nl_io *io;
    uint32_t max_L, max_W, nslots;
    qstate *slots;
    nl_io_done *done;
    unsigned char *scratch;
};

static void qstate_free(qstate *q)
{
    free(q->table);
    free(q->base);
    free(q->seg_cnt);
    free(q->seg_exp);
    free(q->seg_min);
    free(q->qqs);
    free(q->pool);
    free(q->vis);
    free(q->vis_used);
    free(q->res_id);
    free(q->res_seg);
    free(q->res_d);
    free(q->bufs);
    free(q->buf_node);
    free(q->buf_seg);
    free(q->buf_busy);
}

void nl_seg_searcher_destroy(nl_seg_searcher *s)
{
    if (!s)
        return;
    nl_io_destroy(s->io); /* drains reads into our buffers before they are freed */
    for (uint32_t i = 0; s->slots && i < s->nslots; i++)
        qstate_free(&s->slots[i]);
    free(s->slots);
    free(s->done);
    free(s->scratch);
    free(s);
}

nl_io_mode nl_seg_searcher_io(const nl_seg_searcher *s) { return nl_io_engine(s->io); }
void nl_seg_searcher_set_spin(nl_seg_searcher *s, uint64_t ns) { nl_io_set_spin(s->io, ns); }

/* A visited set holding every node a query with list size L can see, at most about
 * (expanded nodes) x R, at most half full. */
static uint32_t vis_capacity(uint32_t L, uint32_t R)
{
    uint64_t need = ((uint64_t)L * 2 + 64) * R * 2;
    uint32_t cap = 1024;
    while (cap < need && cap < (1u << 26)) cap <<= 1;
    return cap;
}

/* Grows q's visited set (empty between queries) for list size L on a graph of degree R. */
static int vis_reserve(qstate *q, uint32_t L, uint32_t R)
{
    uint32_t cap = vis_capacity(L, R);
    if (cap <= q->vis_mask + 1)
        return 0;
    uint32_t *v = calloc(cap, sizeof(uint32_t)), *u = malloc(sizeof(uint32_t) * cap);
    if (!v || !u) {
        free(v);
        free(u);
        return -ENOMEM;
    }
    free(q->vis);
    free(q->vis_used);
    q->vis = v;
    q->vis_used = u;
    q->vis_mask = cap - 1;
    q->vis_n = 0;
    return 0;
}

int nl_seg_searcher_create(nl_segment *seg, uint32_t max_L, uint32_t max_W, uint32_t inflight,
                           nl_io_mode io, nl_seg_searcher **out)
{
    *out = NULL;
    if (max_L == 0 || max_L > 100000 || max_W == 0 || max_W > 64 || inflight == 0 || inflight > 256)
        return nl_fail(NL_EINVAL, "searcher: L=%u W=%u inflight=%u out of range", max_L, max_W, inflight);
    nl_seg_searcher *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->seg = seg;
    s->max_L = max_L;
    s->max_W = max_W;
    s->nslots = inflight;
    s->slots = calloc(inflight, sizeof *s->slots);
    s->done = malloc(sizeof(nl_io_done) * inflight * max_W);
    s->scratch = malloc(seg->geo.node_bytes);
    int rc = 0;
    if (!s->slots || !s->done || !s->scratch) {
        rc = -ENOMEM;
        goto fail;
    }
    /* Visited sets start sized for L = 64 and grow with the largest L a query asks for
     * (vis_reserve), so a searcher allowed L up to 1024 costs what its queries use. */
    uint32_t vis_cap = vis_capacity(max_L < 64 ? max_L : 64, seg->R);
    size_t sec_bytes = (size_t)SEG_SECTOR * seg->geo.spn;
    for (uint32_t i = 0; i < inflight; i++) {
        qstate *q = &s->slots[i];
        q->table_cap = nl_quant_query_floats(seg->quant);
        q->table = malloc(sizeof(float) * q->table_cap);
        q->pool = malloc(sizeof(pcand) * (max_L + 1));
        q->vis = calloc(vis_cap, sizeof(uint32_t));
        q->vis_used = malloc(sizeof(uint32_t) * vis_cap);
        q->vis_mask = vis_cap - 1;
        q->res_id = malloc(sizeof(uint32_t) * max_L);
        q->res_seg = malloc(sizeof(uint16_t) * max_L);
        q->res_d = malloc(sizeof(float) * max_L);
        q->bufs = nl_aligned_alloc(SEG_SECTOR, sec_bytes * max_W);
        q->buf_node = malloc(sizeof(uint32_t) * max_W);
        q->buf_seg = malloc(sizeof(uint16_t) * max_W);
        q->buf_busy = calloc(max_W, 1);
        q->seg_cap = 1;
        q->base = malloc(sizeof(uint32_t));
        q->seg_cnt = malloc(sizeof(uint32_t));
        q->seg_exp = malloc(sizeof(uint32_t));
        q->seg_min = malloc(sizeof(uint32_t));
        q->qqs = malloc(sizeof(nl_quant_query));
        if (!q->table || !q->pool || !q->vis || !q->vis_used || !q->res_id || !q->res_seg || !q->res_d ||
            !q->bufs || !q->buf_node || !q->buf_seg || !q->buf_busy || !q->base || !q->seg_cnt || !q->seg_exp ||
            !q->seg_min || !q->qqs) {
            rc = -ENOMEM;
            goto fail;
        }
    }
    if ((rc = nl_io_create(inflight * max_W, io, &s->io)) != 0)
        goto fail;
    *out = s;
    return 0;
fail:
    nl_seg_searcher_destroy(s);
    return rc;
}

/* The slot of job ordinal g in the visited set, or the empty slot where it would go. */
static inline uint32_t vis_probe(const qstate *q, uint32_t g)
{
    uint32_t h = (g * 2654435761u) & q->vis_mask;
    while (q->vis[h] != 0 && q->vis[h] != g + 1)
        h = (h + 1) & q->vis_mask;
    return h;
}

/* 1 when ordinal u of the job's segment si is in the visited set. */
static inline int vis_has(const qstate *q, uint32_t si, uint32_t u)
{
    uint32_t g = q->base[si] + u;
    return q->vis[vis_probe(q, g)] == g + 1;
}

/* Adds ordinal u of segment si to the visited set; 1 if it was new. When the set is more
 * than half full the query stops adding (it has looked at far more nodes than any sane L
 * needs). */
static inline int vis_add(qstate *q, uint32_t si, uint32_t u)
{
    uint32_t g = q->base[si] + u;
    uint32_t h = vis_probe(q, g);
    if (q->vis[h] == g + 1 || q->vis_n * 2 > q->vis_mask)
        return 0;
    q->vis[h] = g + 1;
    q->vis_used[q->vis_n++] = h;
    return 1;
}

/* Removes pool entry j. */
static inline void pool_remove(qstate *q, uint32_t j)
{
    q->seg_cnt[q->pool[j].seg]--;
    memmove(&q->pool[j], &q->pool[j + 1], sizeof(pcand) * (q->size - j - 1));
    q->size--;
    if (j < q->cursor)
        q->cursor--;
}

/* Adds candidate (si, id) at estimate d to the list when it is among the L best. In a
 * joint job the list keeps at least seg_min places for each segment: a full list gives up
 * its worst entry of a segment holding more than seg_min, so a segment whose walk has not
 * yet reached the query's neighbourhood is not crowded out by one that has (top of file). */
static inline void pool_insert(qstate *q, uint32_t si, uint32_t id, float d, float lb)
{
    if (q->size == q->L) {
        uint32_t j = q->size - 1;
        if (q->nseg > 1)
            while (j > 0 && q->pool[j].seg != si && q->seg_cnt[q->pool[j].seg] <= q->seg_min[q->pool[j].seg])
                j--;
        int keep = d < q->pool[j].dist ||
                   (q->nseg > 1 && q->seg_cnt[si] < q->seg_min[si] && q->pool[j].seg != si &&
                    q->seg_cnt[q->pool[j].seg] > q->seg_min[q->pool[j].seg]);
        if (!keep)
            return;
        pool_remove(q, j);
    }
    uint32_t lo = 0, hi = q->size;
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (q->pool[mid].dist <= d) lo = mid + 1;
        else hi = mid;
    }
    if (lo < q->size)
        memmove(&q->pool[lo + 1], &q->pool[lo], sizeof(pcand) * (q->size - lo));
    q->pool[lo] = (pcand){id, C_NEW, (uint16_t)si, d, lb};
    q->size++;
    q->seg_cnt[si]++;
    if (lo < q->cursor)
        q->cursor = lo;
}

static inline void result_insert(qstate *q, uint32_t si, uint32_t id, float d)
{
    if (q->res_n == q->k && d >= q->res_d[q->k - 1])
        return;
    for (uint32_t i = 0; i < q->res_n; i++)
        if (q->res_id[i] == id && q->res_seg[i] == si)
            return; /* scored already (from another node's sector) */
    uint32_t i = q->res_n < q->k ? q->res_n++ : q->k - 1;
    while (i > 0 && q->res_d[i - 1] > d) {
        q->res_d[i] = q->res_d[i - 1];
        q->res_id[i] = q->res_id[i - 1];
        q->res_seg[i] = q->res_seg[i - 1];
        i--;
    }
    q->res_d[i] = d;
    q->res_id[i] = id;
    q->res_seg[i] = (uint16_t)si;
}

/* u of segment si as a result at exact distance d, if it is live and the filter allows
 * it; 1 when it is deleted. */
static int score(qstate *q, uint32_t si, uint32_t u, float d)
{
    const nl_segment *seg = q->segs[si];
    uint64_t version = seg->ids ? seg->ids[u] : u;
    if (q->dead && q->dead(q->dead_ctx, version))
        return 1;
    if (!q->allow || nl_bitmap_contains(q->allow, version) != q->allow_neg)
        result_insert(q, si, u, d);
    return 0;
}

/* Expands node u of segment si from its (validated) record; d is its exact distance, or
 * NaN to compute. */
static void expand_at(qstate *q, uint32_t si, uint32_t u, const unsigned char *rec, float d)
{
    const nl_segment *seg = q->segs[si];
    q->st.hops++;
    q->seg_exp[si]++;
    if (d != d)
        d = seg->dist(q->q, rec, seg->dim);
    if (q->scan) {
        result_insert(q, si, u, d);
        return;
    }
    if (score(q, si, u, d)) {
        /* A tombstone took a place in the list: the list grows by one (to L_max), so a
         * walk through a deleted neighbourhood still holds about L live candidates. */
        if (q->L < q->L_max)
            q->L++;
    }
    uint32_t deg;
    memcpy(&deg, rec + seg->vec_bytes, 4);
    const unsigned char *nb = rec + seg->vec_bytes + 4;
    const uint32_t m = seg->m;
    const nl_quant_query *qq = &q->qqs[si];
    for (uint32_t i = 0; i < deg; i++) {
        uint32_t v;
        memcpy(&v, nb + 4 * (size_t)i, 4);
        __builtin_prefetch(seg->codes + (size_t)v * m);
    }
    for (uint32_t i = 0; i < deg; i++) {
        uint32_t v;
        memcpy(&v, nb + 4 * (size_t)i, 4);
        if (!vis_add(q, si, v))
            continue;
        float err, e = nl_quant_estimate(qq, seg->codes + (size_t)v * m, &err);
        pool_insert(q, si, v, e, q->eps0 > 0 ? e - err : -INFINITY);
    }
}

static void expand(qstate *q, uint32_t si, uint32_t u, const unsigned char *rec) { expand_at(q, si, u, rec, NAN); }

/* The other records of the sector read for u (block layout; see the top of the file).
 * A record waiting in the pool, or one near enough to enter the L best, is used as if the
 * walk had reached it: scored and expanded. A farther one is only scored, and only in a walk with neither a
 * filter nor tombstones: where those exclude points a walk can come back short of k, and
 * must say so to be searched again, which results it never came near would hide
 * (measured: a filtered graph walk on fashion-mnist fell from recall 0.997 to 0.929). */
static void expand_sector(qstate *q, uint32_t si, uint32_t u, const unsigned char *sec)
{
    const nl_segment *seg = q->segs[si];
    const uint32_t nps = seg->geo.nps;
    const uint64_t first = (uint64_t)(u / nps) * nps;
    const int any = !q->allow && !q->dead; /* every point is a result: score what comes */
    for (uint32_t i = 0; i < nps && first + i < seg->n; i++) {
        uint32_t v = (uint32_t)(first + i);
        const unsigned char *rec = sec + (size_t)i * seg->geo.node_bytes;
        if (v == u || !seg_record_ok(seg, rec))
            continue; /* a bad record is reported when it is read for itself */
        float d = seg->dist(q->q, rec, seg->dim);
        if (vis_has(q, si, v)) {
            /* seen: expanded now if it waits in the pool for its read (it is among the L
             * best by its estimate: the walk would read it) */
            pcand *c = NULL;
            for (uint32_t j = 0; j < q->size && !c; j++)
                if (q->pool[j].id == v && q->pool[j].seg == si)
                    c = &q->pool[j];
            if (!c || c->state != C_NEW) {
                if (any) /* expanded, in flight, skipped by its bound, or out of the list */
                    result_insert(q, si, v, d);
                continue;
            }
            c->state = C_REQUESTED;
        } else if (q->size == q->L && !(d < q->pool[q->size - 1].dist)) {
            if (any)
                result_insert(q, si, v, d);
            continue;
        } else if (!vis_add(q, si, v)) {
            continue; /* the visited set is full */
        }
        q->st.sector_expands++;
        expand_at(q, si, v, rec, d);
    }
}

/* Issues reads (or expands cached nodes) until W reads are in flight or no new candidate
 * is left among the L best. */
static int top_up(nl_seg_searcher *s, qstate *q, uint32_t slot)
{
    while (q->inflight < q->W) {
        while (q->cursor < q->size && q->pool[q->cursor].state != C_NEW)
            q->cursor++;
        if (q->cursor >= q->size)
            return 0;
        pcand *c = &q->pool[q->cursor];
        c->state = C_REQUESTED;
        if (q->res_n == q->k && c->lb > q->res_d[q->k - 1] && q->seg_exp[c->seg] >= q->bound_after) {
            q->st.bound_skips++; /* cannot enter the top k */
            continue;
        }
        uint32_t u = c->id, si = c->seg;
        const nl_segment *seg = q->segs[si];
        const unsigned char *rec = seg_cache_get(seg, u);
        if (rec) {
            q->st.cache_hits++;
            expand(q, si, u, rec);
            continue;
        }
        uint32_t b = 0;
        while (q->buf_busy[b]) b++; /* one is free: inflight < W <= max_W */
        size_t sec_bytes = (size_t)SEG_SECTOR * seg->geo.spn;
        int rc = nl_io_read(s->io, seg->fd, q->bufs + b * sec_bytes, (uint32_t)sec_bytes,
                            seg_node_sector(&seg->geo, u) * SEG_SECTOR, ((uint64_t)slot << 16) | b);
        if (rc)
            return rc;
        q->buf_busy[b] = 1;
        q->buf_node[b] = u;
        q->buf_seg[b] = (uint16_t)si;
        q->inflight++;
        q->st.ios += seg->geo.spn;
    }
    return 0;
}

/* *a grown to n entries; -ENOMEM leaves it as it was. */
static int grow_u32(uint32_t **a, uint32_t n)
{
    uint32_t *x = realloc(*a, sizeof(uint32_t) * n);
    if (!x)
        return -ENOMEM;
    *a = x;
    return 0;
}

/* Room for a job of nseg segments whose codes need `floats` of scratch in all. */
static int qstate_reserve(qstate *q, uint32_t nseg, size_t floats)
{
    if (nseg > q->seg_cap) {
        if (grow_u32(&q->base, nseg) || grow_u32(&q->seg_cnt, nseg) || grow_u32(&q->seg_exp, nseg) ||
            grow_u32(&q->seg_min, nseg))
            return -ENOMEM;
        nl_quant_query *x = realloc(q->qqs, sizeof(nl_quant_query) * nseg);
        if (!x)
            return -ENOMEM;
        q->qqs = x;
        q->seg_cap = nseg;
    }
    if (floats > q->table_cap) {
        float *t = realloc(q->table, sizeof(float) * floats);
        if (!t)
            return -ENOMEM;
        q->table = t;
        q->table_cap = floats;
    }
    return 0;
}

/* A segment's entry points: its medoid and up to `take` members of its seed table. */
static void add_entries(qstate *q, uint32_t si, uint32_t take)
{
    const nl_segment *seg = q->segs[si];
    const nl_quant_query *qq = &q->qqs[si];
    if (vis_add(q, si, seg->medoid)) {
        float err, d = nl_quant_estimate(qq, seg->codes + (size_t)seg->medoid * seg->m, &err);
        pool_insert(q, si, seg->medoid, d, q->eps0 > 0 ? d - err : -INFINITY);
    }
    if (take == 0)
        return;
    uint32_t sid[SEG_SEED_TAKE];
    float sd[SEG_SEED_TAKE], slb[SEG_SEED_TAKE];
    uint32_t ns = seg_seeds_pick(seg, qq, q->eps0, sid, sd, slb);
    if (ns > take)
        ns = take;
    for (uint32_t i = 0; i < ns; i++)
        if (vis_add(q, si, sid[i]))
            pool_insert(q, si, sid[i], sd[i], slb[i]);
}

static int start_query(qstate *q, nl_segment *const *segs, uint32_t nseg, const float *qv, const nl_seg_job *p)
{
    for (uint32_t i = 0; i < q->vis_n; i++)
        q->vis[q->vis_used[i]] = 0;
    q->vis_n = 0;
    uint32_t L_max = p->dead && p->L_max > p->L ? p->L_max : p->L;
    int rc = vis_reserve(q, L_max, segs[0]->R);
    size_t need = 0;
    for (uint32_t i = 0; i < nseg; i++)
        need += nl_quant_query_floats(segs[i]->quant);
    if (!rc)
        rc = qstate_reserve(q, nseg, need);
    if (rc)
        return rc;
    q->active = 1;
    q->segs = segs;
    q->nseg = nseg;
    q->out = p->out;
    q->q = qv;
    q->allow = p->allow;
    q->allow_neg = p->allow_neg;
    q->dead = p->dead;
    q->dead_ctx = p->dead_ctx;
    q->scan = p->subset != NULL;
    q->sector = !q->scan && !p->no_sector;
    q->L = p->L;
    q->L_max = L_max;
    q->k = p->k;
    q->W = p->W;
    q->size = q->cursor = 0;
    q->res_n = 0;
    q->inflight = 0;
    memset(&q->st, 0, sizeof q->st);
    q->t0 = nl_now_ns();
    q->eps0 = p->eps0;
    uint64_t total = 0;
    float *t = q->table;
    q->bound_after = nseg > 1 ? (p->k / 2 > 0 ? p->k / 2 : 1) : 0;
    for (uint32_t i = 0; i < nseg; i++) {
        q->seg_cnt[i] = 0;
        q->seg_exp[i] = 0;
        q->base[i] = (uint32_t)total;
        total += segs[i]->n;
    }
    for (uint32_t i = 0; i < nseg; i++) {
        double want = (double)p->L * (double)segs[i]->n / (4.0 * (double)(total ? total : 1));
        q->seg_min[i] = want < 1.0 ? 1 : (uint32_t)want;
        /* a segment with the codebook of one before it (flushes reuse theirs) shares its
         * prepared query: the rotation of a 512-d query is most of a preparation */
        uint32_t j = 0;
        while (j < i && segs[j]->quant_fp != segs[i]->quant_fp)
            j++;
        if (j < i) {
            q->qqs[i] = q->qqs[j];
            continue;
        }
        nl_quant_prepare(segs[i]->quant, qv, p->eps0 > 0 ? p->eps0 : 0.0f, t, &q->qqs[i]);
        t += nl_quant_query_floats(segs[i]->quant);
    }
    if (q->scan) {
        /* The scan plan: PQ distances of the allowed ordinals, the best L kept in the
         * pool; the search then reads and re-ranks exactly those. */
        const nl_segment *seg = segs[0];
        const uint32_t m = seg->m;
        for (uint32_t i = 0; i < p->subset_n; i++) {
            uint32_t u = p->subset[i];
            if (u >= seg->n)
                continue;
            if (i + 8 < p->subset_n && p->subset[i + 8] < seg->n)
                __builtin_prefetch(seg->codes + (size_t)p->subset[i + 8] * m);
            float err, d = nl_quant_estimate(&q->qqs[0], seg->codes + (size_t)u * m, &err);
            pool_insert(q, 0, u, d, q->eps0 > 0 ? d - err : -INFINITY);
        }
        q->st.hops = 0;
        return 0;
    }
    /* Seeds (the members of the groups nearest the query, segment_seeds.c) beside each
     * medoid: at most half the list in all, so that at L = 10 eight seeds of one
     * neighbourhood do not crowd out the medoid's paths (the unit test's recall fell 0.66
     * -> 0.63; five keep it). A joint job shares that half among its segments by their
     * points, at least one each: the estimates then decide which survive in the list. */
    uint32_t half = q->L / 2 > 0 ? q->L / 2 : 1;
    for (uint32_t i = 0; i < nseg; i++) {
        uint32_t take = 0;
        if (!p->no_seeds) {
            double share = total ? (double)segs[i]->n / (double)total : 1.0;
            take = (uint32_t)((double)half * share + 0.5);
            if (take < 1)
                take = 1;
        }
        add_entries(q, i, take);
    }
    return 0;
}

static void finish_query(qstate *q, uint32_t kstride, uint32_t *ords, float *dists, nl_query_stats *stats)
{
    uint32_t *o = ords + q->out * kstride;
    for (uint32_t j = 0; j < q->k; j++) {
        o[j] = j < q->res_n ? q->base[q->res_seg[j]] + q->res_id[j] : UINT32_MAX;
        if (dists)
            dists[q->out * kstride + j] = j < q->res_n ? q->res_d[j] : FLT_MAX;
    }
    q->st.start_ns = q->t0;
    q->st.latency_ns = nl_now_ns() - q->t0;
    if (stats)
        stats[q->out] = q->st;
    q->active = 0;
}

/* The segments of job p: one, or nsegs from p->seg. */
static uint32_t job_nseg(const nl_seg_job *p) { return p->nsegs > 1 ? p->nsegs : 1; }

int nl_seg_search_jobs(nl_seg_searcher *s, nl_segment *const *segs, size_t nseg, const float *queries,
                       const nl_seg_job *jobs, size_t njobs, uint32_t kstride, uint32_t *ords, float *dists,
                       nl_query_stats *stats)
{
    const nl_segment *own = s->seg;
    for (size_t i = 0; i < njobs; i++) {
        const nl_seg_job *p = &jobs[i];
        uint32_t n = job_nseg(p);
        if (p->seg >= nseg || n > nseg - p->seg || n > UINT16_MAX)
            return nl_fail(NL_EINVAL, "search: job %zu names segments %u..%u of %zu", i, p->seg, p->seg + n - 1,
                           nseg);
        if (n > 1 && p->subset)
            return nl_fail(NL_EINVAL, "search: job %zu: a scan runs on one segment", i);
        if (p->k == 0 || p->L < p->k || p->L > s->max_L || p->L_max > s->max_L || p->W == 0 || p->W > s->max_W ||
            p->k > kstride)
            return nl_fail(NL_EINVAL, "search: need 0 < k <= L <= %u, k <= %u and 0 < W <= %u (k=%u L=%u W=%u)",
                           s->max_L, kstride, s->max_W, p->k, p->L, p->W);
        uint64_t total = 0;
        for (uint32_t j = 0; j < n; j++) {
            const nl_segment *g = segs[p->seg + j];
            /* The searcher's buffers were sized for its own segment. */
            if (g->dim != own->dim || g->geo.node_bytes != own->geo.node_bytes || g->geo.spn != own->geo.spn ||
                g->R > own->R)
                return nl_fail(NL_EINVAL, "search: segments of different geometry in one batch");
            total += g->n;
        }
        if (total >= UINT32_MAX)
            return nl_fail(NL_EINVAL, "search: job %zu spans %llu points, more than one beam can number", i,
                           (unsigned long long)total);
    }
    size_t next = 0;
    uint32_t active = 0;
    int rc = 0;
    while (next < njobs || active > 0) {
        for (uint32_t i = 0; i < s->nslots && next < njobs; i++) {
            qstate *q = &s->slots[i];
            if (q->active)
                continue;
            const nl_seg_job *jb = &jobs[next];
            if ((rc = start_query(q, segs + jb->seg, job_nseg(jb), queries + (size_t)jb->query * own->dim, jb)) != 0)
                goto fail;
            next++;
            active++;
            if ((rc = top_up(s, q, i)) != 0)
                goto fail;
            if (q->inflight == 0) {
                finish_query(q, kstride, ords, dists, stats);
                active--;
            }
        }
        if (active == 0)
            continue;
        int got = nl_io_reap(s->io, 1, s->done, s->nslots * s->max_W);
        if (got < 0) {
            rc = nl_fail(got, "search: io failed: %s", nl_strerror(got));
            goto fail;
        }
        for (int j = 0; j < got; j++) {
            uint32_t slot = (uint32_t)(s->done[j].user >> 16), b = (uint32_t)(s->done[j].user & 0xffff);
            qstate *q = &s->slots[slot];
            uint32_t si = q->buf_seg[b], u = q->buf_node[b];
            const nl_segment *seg = q->segs[si];
            q->buf_busy[b] = 0;
            q->inflight--;
            if (s->done[j].res < 0) {
                rc = nl_fail(s->done[j].res, "%s: read of node %u failed: %s", seg->path, u,
                             nl_strerror(s->done[j].res));
                goto fail;
            }
            const unsigned char *rec;
            size_t sec_bytes = (size_t)SEG_SECTOR * seg->geo.spn;
            if ((rc = seg_extract_record(seg, u, q->bufs + b * sec_bytes, s->scratch, &rec)) != 0)
                goto fail;
            expand(q, si, u, rec);
            if (q->sector && (seg->flags & SEG_FLAG_BLOCK_LAYOUT) && seg->geo.nps > 1)
                expand_sector(q, si, u, q->bufs + b * sec_bytes);
            if ((rc = top_up(s, q, slot)) != 0)
                goto fail;
            if (q->inflight == 0) {
                finish_query(q, kstride, ords, dists, stats);
                active--;
            }
        }
    }
    return 0;
fail:
    /* Leave the searcher reusable: wait out reads still in flight, drop every query. */
    while (nl_io_inflight(s->io) > 0) {
        int got = nl_io_reap(s->io, 1, s->done, s->nslots * s->max_W);
        if (got <= 0)
            break;
    }
    for (uint32_t i = 0; i < s->nslots; i++) {
        s->slots[i].active = 0;
        s->slots[i].inflight = 0;
        memset(s->slots[i].buf_busy, 0, s->max_W);
    }
    return rc;
}

uint32_t nl_seg_joint_locate(nl_segment *const *segs, uint32_t nseg, uint32_t o, uint32_t *ord)
{
    uint64_t rest = o;
    for (uint32_t i = 0; i < nseg; i++) {
        if (rest < segs[i]->n) {
            *ord = (uint32_t)rest;
            return i;
        }
        rest -= segs[i]->n;
    }
    return nseg;
}

int nl_seg_search_multi(nl_seg_searcher *s, nl_segment *const *segs, size_t nseg, const float *queries, size_t nq,
                        const nl_seg_query_params *p, uint32_t kstride, uint32_t *ords, float *dists,
                        nl_query_stats *stats)
{
    /* Jobs in query-major order, so the segments of one query run side by side. */
    size_t njobs = nq * nseg;
    nl_seg_job *jobs = calloc(njobs ? njobs : 1, sizeof *jobs);
    if (!jobs)
        return -ENOMEM;
    for (size_t j = 0; j < njobs; j++) {
        size_t qi = j / nseg, si = j % nseg;
        jobs[j] = (nl_seg_job){.seg = (uint32_t)si, .query = (uint32_t)qi, .out = si * nq + qi,
                               .k = p[si].k, .L = p[si].L, .W = p[si].W, .eps0 = p[si].eps0,
                               .no_sector = p[si].no_sector, .no_seeds = p[si].no_seeds};
    }
    int rc = nl_seg_search_jobs(s, segs, nseg, queries, jobs, njobs, kstride, ords, dists, stats);
    free(jobs);
    return rc;
}
int nl_seg_search_batch(nl_seg_searcher *s, const float *queries, size_t nq, const nl_seg_query_params *p,
                        uint32_t *ords, float *dists, nl_query_stats *stats)
{
    return nl_seg_search_multi(s, &s->seg, 1, queries, nq, p, p->k, ords, dists, stats);
}
