/*
 * shard_search.c — a search across one shard: the fresh indexes (active, and frozen while
 * a flush runs) and every segment, merged by exact distance, deleted versions dropped,
 * then resolved to external ids through the pids family (the final word on liveness).
 *
 * The promise (docs/decisions.md, "Every answer holds min(k, live) results"): min(k, live
 * points) results, min(k, matching points) with a filter. Deleted versions stay in their
 * index as routing nodes until compaction purges them, so the walks take the tombstone set
 * as a predicate: a deleted node is expanded but never a result, and on disk each one
 * expanded widens the list by a place. Whatever still comes back short (a list too small
 * for a region of tombstones, versions purged while an older view was searched) is
 * searched again on a new view, wider, then exhaustively (complete_short).
 *
 * Filtered queries (docs/filters.md). The filter is first turned into the set of
 * versions it allows (nl_postings.h: a bitmap, maybe complemented, whose cardinality is
 * the selectivity estimate). Then each index of the shard gets its own plan, because a
 * filter that allows 2% of a 1M-point segment allows 20k points there but maybe 40 in a
 * fresh index of 2,000:
 *  - scan: the allowed points of that index are scored directly: by exact distance in
 *    RAM for a fresh index; for a segment by PQ distance from the codes in RAM, the best
 *    L read from disk (many reads in flight, every one useful) and re-ranked exactly.
 *    Its cost is (allowed x PQ bytes) of table lookups plus L reads, whatever the
 *    selectivity, so it wins whenever the allowed set is small.
 *  - graph: the ordinary beam search, but only allowed nodes become results; filtered-
 *    out nodes are still expanded so the walk crosses them to the allowed ones, and the
 *    list is widened to L / selectivity so it still holds about L allowed candidates.
 *    Its cost grows as the selectivity falls, so it wins for broad filters.
 * A cost model (reads ~ SH_READ_NS each, PQ lookups ~ SH_ADC_NS a byte) picks per index.
 * A query whose plans found fewer than k results while the filter allows more reruns as
 * an exhaustive scan (NL_PLAN_FALLBACK): a filtered search returns min(k, matches).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nl_postings.h"
#include "shard_internal.h"

typedef struct {
    uint64_t pid;
    float dist;
} cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->dist != y->dist)
        return x->dist < y->dist ? -1 : 1;
    return x->pid < y->pid ? -1 : x->pid > y->pid;
}

/* Liveness inside the walks. A deleted version stays in its index as a routing node
 * until compaction purges it, so a neighbourhood that was deleted wholesale (a streaming
 * workload deletes contiguous ranges, inserted cluster by cluster) fills every list near
 * the query with tombstones. Were they results, the top k of each index would be mostly
 * dead and the answer short however far the lists were widened by a guess. So the walks
 * treat the tombstone set like a filter: deleted versions are expanded, never results. */
static int version_dead(void *ctx, uint64_t pid) { return sh_tomb_has(ctx, pid); }

/* How far a disk walk's list may grow past L, one place per tombstone it expands: the
 * extra reads are paid only where tombstones crowd the query's neighbourhood. */
static uint32_t dead_list_max(uint32_t L) { return L * 4 > NL_MAX_K ? NL_MAX_K : L * 4; }

/* The segments' eps0 for a request: 0 asks for the default, a negative value for none. */
static float sh_bound_eps(const nl_search_params *p)
{
    return p->bound == 0.0f ? NL_SEARCH_BOUND_DEFAULT : p->bound < 0.0f ? 0.0f : p->bound;
}

typedef struct fgroup fgroup;
static inline int g_allows(const fgroup *g, uint64_t pid);

typedef struct {
    nl_shard *sh;
    const fgroup *g; /* NULL: no filter, only liveness */
    const sh_memidx *m;
} mem_allow_ctx;

static int mem_allow(const void *vctx, uint32_t slot)
{
    const mem_allow_ctx *c = vctx;
    uint64_t pid = c->m->slot_pid[slot];
    return (!c->g || g_allows(c->g, pid)) && !sh_tomb_has(c->sh, pid);
}

static int search_memidx(nl_shard *sh, sh_memidx *m, const float *qs, size_t nq, uint32_t k, uint32_t L,
                         uint64_t dead, cand *cands, uint32_t *nc, uint32_t stride, nl_query_stats *stats)
{
    if (nl_vamana_size(m->ix) == 0)
        return 0;
    nl_vamana_searcher *s = nl_objpool_take(&m->searchers);
    int rc = s ? 0 : nl_vamana_searcher_create(m->ix, NL_MAX_K, &s);
    if (rc)
        return rc;
    uint32_t *slots = malloc(sizeof(uint32_t) * k);
    float *d = malloc(sizeof(float) * k);
    if (!slots || !d)
        rc = -ENOMEM;
    mem_allow_ctx ac = {sh, NULL, m};
    for (size_t qi = 0; qi < nq && !rc; qi++) {
        uint64_t t0 = nl_now_ns();
        nl_search_stats ss = {0, 0};
        int got = dead ? nl_vamana_search_filtered(s, qs + qi * sh->cfg.dim, k, L, mem_allow, &ac, slots, d, &ss)
                       : nl_vamana_search(s, qs + qi * sh->cfg.dim, k, L, slots, d, &ss);
        if (got < 0) {
            rc = got;
            break;
        }
        cand *c = cands + qi * stride;
        for (int i = 0; i < got; i++)
            c[nc[qi]++] = (cand){m->slot_pid[slots[i]], d[i]};
        if (stats) {
            stats[qi].hops += ss.hops;
            stats[qi].latency_ns += nl_now_ns() - t0;
        }
    }
    free(slots);
    free(d);
    nl_objpool_give(&m->searchers, s);
    return rc;
}

/* A segment searcher from r's pool (any segment of the shard shares the geometry), or a
 * new one; give it back to the same pool. */
static int seg_searcher_take(nl_shard *sh, sh_segref *r, nl_seg_searcher **out)
{
    *out = nl_objpool_take(&r->searchers);
    if (*out)
        return 0;
    int rc = nl_seg_searcher_create(r->seg, NL_MAX_K, SH_MAX_W, sh->opt.search_inflight,
                                    sh->opt.io_pread ? NL_IO_PREAD : NL_IO_AUTO, out);
    if (!rc)
        nl_seg_searcher_set_spin(*out, (uint64_t)(sh->opt.io_spin_us ? sh->opt.io_spin_us : 100) * 1000);
    return rc;
}

/* Every segment of the view at once: one searcher, borrowed from the first segment's
 * pool, runs every query's segments with their reads in flight together on its ring.
 *  - joint (the default, p->segments >= 0): the segments with a seed table (RaBitQ codes)
 *    are walked as one beam with one list of L (segment_search.c), so the query pays for
 *    the list once, and its reads go to whichever segment holds the best candidates.
 *  - separate (p->segments < 0, the rule before, and segments without a seed table, whose
 *    walks start at their medoids and cannot share a list): a job per (query, segment).
 *    The list size L is the largest segment's; a smaller one gets L x sqrt(its share of
 *    the largest), at least k: it holds fewer of the true neighbours and its graph is
 *    shallower. Measured on 1M points in 4 segments (docs/benchmarks.md): the same recall
 *    with half the reads of a full L everywhere. But each segment costs at least a walk
 *    with k places, so many segments set a floor under the reads.
 * Both measured side by side in docs/benchmarks.md ("One beam across a shard's segments").
 * A query that comes back short of k is searched again with a wider list
 * (nl_shard_search_batch). */
static int search_segments(nl_shard *sh, const sh_view *v, const float *qs, size_t nq, const nl_search_params *p,
                           uint32_t L, cand *cands, uint32_t *nc, uint32_t stride, nl_query_stats *stats)
{
    uint32_t ns = v->nseg;
    if (ns == 0)
        return 0;
    sh_segref *r0 = v->segs[0];
    nl_seg_searcher *s;
    int rc = seg_searcher_take(sh, r0, &s);
    if (rc)
        return rc;
    uint32_t W = p->W ? p->W : 4;
    if (W > SH_MAX_W)
        W = SH_MAX_W;
    /* segs: the joint ones (seeded) first, then the others; ref[i] is segs[i]'s segref */
    nl_segment **segs = malloc(sizeof *segs * ns);
    const sh_segref **ref = malloc(sizeof *ref * ns);
    const uint32_t kstride = p->k;
    uint64_t biggest = 0, total = 0;
    uint32_t nj = 0; /* segments in the joint job */
    int joint_dead = 0;
    for (uint32_t i = 0; i < ns; i++)
        if (v->segs[i]->count > biggest)
            biggest = v->segs[i]->count;
    for (int pass = 0; pass < 2 && segs && ref; pass++)
        for (uint32_t i = 0, at = pass ? nj : 0; i < ns; i++) {
            nl_segment_info info;
            nl_segment_get_info(v->segs[i]->seg, &info);
            int seeded = p->segments >= 0 && p->seeds >= 0 && info.seed_groups > 0;
            if (seeded != !pass)
                continue;
            segs[at] = v->segs[i]->seg;
            ref[at++] = v->segs[i];
            if (!pass) {
                nj++;
                total += v->segs[i]->count;
                joint_dead |= atomic_load(&v->segs[i]->dead) > 0;
            }
        }
    if (nj < 2 || total >= UINT32_MAX || nj > UINT16_MAX)
        nj = 0; /* one seeded segment is a job of its own */
    uint32_t per_q = (nj ? 1 : 0) + (ns - nj); /* jobs per query */
    size_t rows = (size_t)per_q * nq;
    /* The default list of a joint walk grows with its segments, to at most twice: one list
     * of 64 shared by 8 segments found less of the true 10 than one segment's (docs/
     * benchmarks.md, "One beam across a shard's segments"). A list the request gives is
     * taken as it is. */
    uint32_t Lj = L;
    if (nj && p->L == 0) {
        double f = sqrt((double)nj);
        uint32_t x = (uint32_t)((double)L * (f < 2.0 ? f : 2.0) + 0.5);
        Lj = x > NL_MAX_K ? NL_MAX_K : x;
    }
    nl_seg_job *jobs = calloc(rows ? rows : 1, sizeof *jobs);
    uint32_t *ords = malloc(sizeof(uint32_t) * kstride * (rows ? rows : 1));
    float *d = malloc(sizeof(float) * kstride * (rows ? rows : 1));
    nl_query_stats *qst = calloc(rows ? rows : 1, sizeof *qst);
    if (!segs || !ref || !jobs || !ords || !d || !qst)
        rc = -ENOMEM;
    /* Jobs in query-major order, so the segments of one query run side by side. Only a
     * segment (or joint job) holding deleted versions pays for the liveness check. */
    for (size_t j = 0; j < rows && !rc; j++) {
        nl_seg_job *jb = &jobs[j];
        size_t qi = j / per_q;
        uint32_t slot = (uint32_t)(j % per_q);
        if (nj && slot == 0) {
            *jb = (nl_seg_job){.seg = 0, .nsegs = nj, .query = (uint32_t)qi, .out = j, .k = p->k, .L = Lj, .W = W,
                               .L_max = dead_list_max(Lj), .eps0 = sh_bound_eps(p), .no_sector = p->sector < 0,
                               .no_seeds = 0, .dead = joint_dead ? version_dead : NULL, .dead_ctx = sh};
            continue;
        }
        uint32_t si = nj + slot - (nj ? 1 : 0);
        uint32_t Li = (uint32_t)((double)L * sqrt((double)ref[si]->count / (double)biggest) + 0.5);
        if (Li < p->k)
            Li = p->k;
        int has_dead = atomic_load(&ref[si]->dead) > 0;
        *jb = (nl_seg_job){.seg = si, .query = (uint32_t)qi, .out = j, .k = p->k, .L = Li, .W = W,
                           .L_max = dead_list_max(Li), .eps0 = sh_bound_eps(p), .no_sector = p->sector < 0,
                           .no_seeds = p->seeds < 0, .dead = has_dead ? version_dead : NULL, .dead_ctx = sh};
    }
    if (!rc)
        rc = nl_seg_search_jobs(s, segs, ns, qs, jobs, rows, kstride, ords, d, qst);
    for (size_t j = 0; j < rows && !rc; j++) {
        const nl_seg_job *jb = &jobs[j];
        size_t qi = jb->query;
        cand *c = cands + qi * stride;
        for (uint32_t i = 0; i < p->k; i++) {
            uint32_t o = ords[j * kstride + i], ord = o, si = jb->seg;
            if (o == UINT32_MAX)
                break;
            if (jb->nsegs > 1 && (si = nl_seg_joint_locate(segs, jb->nsegs, o, &ord)) >= jb->nsegs)
                break; /* cannot happen: the search numbered it */
            c[nc[qi]++] = (cand){nl_segment_id(segs[si], ord), d[j * kstride + i]};
        }
        if (stats) {
            stats[qi].ios += qst[j].ios;
            stats[qi].cache_hits += qst[j].cache_hits;
            stats[qi].bound_skips += qst[j].bound_skips;
            stats[qi].sector_expands += qst[j].sector_expands;
            stats[qi].hops += qst[j].hops;
        }
    }
    /* The jobs of a query ran side by side (or one after another when the batch has more
     * jobs than slots): it took from its first start to its last finish. Its jobs are
     * rows [qi x per_q, (qi + 1) x per_q). */
    for (size_t qi = 0; stats && !rc && qi < nq; qi++) {
        uint64_t first = UINT64_MAX, last = 0;
        for (size_t j = qi * per_q; j < (qi + 1) * per_q; j++) {
            if (qst[j].start_ns < first) first = qst[j].start_ns;
            if (qst[j].start_ns + qst[j].latency_ns > last) last = qst[j].start_ns + qst[j].latency_ns;
        }
        stats[qi].latency_ns += last - first;
    }
    free(segs);
    free(ref);
    free(jobs);
    free(ords);
    free(d);
    free(qst);
    nl_objpool_give(&r0->searchers, s);
    return rc;
}

static int resolve(nl_shard *sh, const nl_search_params *p, const fgroup *g, cand *c, uint32_t n, uint32_t k,
                   nl_hit *out, uint32_t *count);

/* The list size a request asks for: 0 = max(k, 64); at least k, at most NL_MAX_K. */
static uint32_t list_size(const nl_search_params *p)
{
    uint32_t L = p->L ? p->L : (p->k > 64 ? p->k : 64);
    if (L < p->k) L = p->k;
    return L > NL_MAX_K ? NL_MAX_K : L;
}

/* One pass of the unfiltered search with list size L over a view taken now. want[qi]
 * gets min(k, live points at that moment): what the answer is judged against. */
static int search_unfiltered(nl_shard *sh, const float *qs, size_t nq, const nl_search_params *p, uint32_t L,
                             nl_hit *hits, uint32_t *counts, uint32_t *want, nl_query_stats *stats)
{
    uint32_t k = p->k;
    uint64_t live = __atomic_load_n(&sh->live, __ATOMIC_RELAXED);
    sh_view *v = sh_view_acquire(sh);
    uint32_t nidx = 2 + v->nseg;
    uint32_t stride = nidx * k; /* room for every index's share */
    pthread_rwlock_rdlock(&sh->tmu);
    uint64_t dead_total = sh->tomb_n;
    pthread_rwlock_unlock(&sh->tmu);
    cand *cands = malloc(sizeof(cand) * stride * (nq ? nq : 1));
    uint32_t *nc = calloc(nq ? nq : 1, sizeof *nc);
    int rc = cands && nc ? 0 : -ENOMEM;
    if (!rc)
        rc = search_memidx(sh, v->active, qs, nq, k, L, dead_total, cands, nc, stride, stats);
    if (!rc && v->frozen)
        rc = search_memidx(sh, v->frozen, qs, nq, k, L, dead_total, cands, nc, stride, stats);
    if (!rc)
        rc = search_segments(sh, v, qs, nq, p, L, cands, nc, stride, stats);
    /* Merge: nearest first, each version once (a point can sit in the frozen index and
     * its new segment at once), deleted versions dropped, then resolved to ids. */
    for (size_t qi = 0; qi < nq && !rc; qi++) {
        uint64_t t0 = nl_now_ns();
        rc = resolve(sh, p, NULL, cands + qi * stride, nc[qi], k, hits + qi * k, &counts[qi]);
        want[qi] = live < k ? (uint32_t)live : k;
        if (stats)
            stats[qi].latency_ns += nl_now_ns() - t0;
    }
    free(cands);
    free(nc);
    sh_view_release(v);
    return rc;
}

/* ---------------------------------------------------------------- filtered search */

/* Cost model of the plan choice (measured on this machine's virtual disk, see
 * docs/benchmarks.md): one node read, and one PQ table lookup (a code byte). */
#define SH_READ_NS 25000.0
#define SH_ADC_NS 0.6
/* A fresh index scans exactly (vectors in RAM) up to this many element operations. */
#define SH_RAM_SCAN_OPS 4000000.0

struct fgroup {
    const nl_filter *f;  /* NULL: unfiltered queries of a mixed batch */
    nl_bitmap *bm;
    int neg;
    uint64_t matches;
    double sel;
    /* per index (0 active, 1 frozen, 2.. segments): the scan subset once built */
    uint32_t **sub;
    uint32_t *subn;
    unsigned char *built;
};

static inline int g_allows(const fgroup *g, uint64_t pid)
{
    return !g->bm || nl_bitmap_contains(g->bm, pid) != g->neg;
}

static int sub_push(uint32_t **a, uint32_t *n, size_t *cap, uint32_t v)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        uint32_t *x = realloc(*a, nc * sizeof *x);
        if (!x)
            return -ENOMEM;
        *a = x;
        *cap = nc;
    }
    (*a)[(*n)++] = v;
    return 0;
}

/* The live allowed ordinals of a segment. Members of the bitmap are looked up in the
 * segment's (ascending) id map when the set is positive; a complement is checked per
 * ordinal. */
static int seg_subset(nl_shard *sh, const fgroup *g, nl_segment *seg, uint32_t **out, uint32_t *n)
{
    nl_segment_info info;
    nl_segment_get_info(seg, &info);
    size_t cap = 0;
    int rc = 0;
    *out = NULL;
    *n = 0;
    if (info.count == 0)
        return 0;
    pthread_rwlock_rdlock(&sh->tmu);
    if (g->bm && !g->neg && nl_segment_ids_ascending(seg)) {
        uint64_t lo = nl_segment_id(seg, 0), hi = nl_segment_id(seg, (uint32_t)(info.count - 1));
        nl_bitmap_iter it;
        nl_bitmap_iter_init(&it, g->bm, lo);
        uint64_t x;
        uint32_t ord;
        while (!rc && nl_bitmap_iter_next(&it, &x) && x <= hi)
            if (nl_segment_find(seg, x, &ord) == 0 && !sh_tomb_has_locked(sh, x))
                rc = sub_push(out, n, &cap, ord);
    } else {
        for (uint32_t u = 0; u < info.count && !rc; u++) {
            uint64_t pid = nl_segment_id(seg, u);
            if (g_allows(g, pid) && !sh_tomb_has_locked(sh, pid))
                rc = sub_push(out, n, &cap, u);
        }
    }
    pthread_rwlock_unlock(&sh->tmu);
    return rc;
}

/* The live allowed slots of a fresh index among its first `reserved`. */
static int mem_subset(nl_shard *sh, const fgroup *g, const sh_memidx *m, size_t reserved, uint32_t **out,
                      uint32_t *n)
{
    size_t cap = 0;
    int rc = 0;
    *out = NULL;
    *n = 0;
    if (reserved == 0)
        return 0;
    pthread_rwlock_rdlock(&sh->tmu);
    if (g->bm && !g->neg) {
        nl_bitmap_iter it;
        nl_bitmap_iter_init(&it, g->bm, m->slot_pid[0]);
        uint64_t x, hi = m->slot_pid[reserved - 1];
        size_t lo = 0;
        while (!rc && nl_bitmap_iter_next(&it, &x) && x <= hi) {
            size_t a = lo, b = reserved; /* slot_pid ascends: bisect from the last hit */
            while (a < b) {
                size_t mid = (a + b) / 2;
                if (m->slot_pid[mid] < x) a = mid + 1; else b = mid;
            }
            lo = a;
            if (a < reserved && m->slot_pid[a] == x && !sh_tomb_has_locked(sh, x))
                rc = sub_push(out, n, &cap, (uint32_t)a);
        }
    } else {
        for (size_t u = 0; u < reserved && !rc; u++)
            if (g_allows(g, m->slot_pid[u]) && !sh_tomb_has_locked(sh, m->slot_pid[u]))
                rc = sub_push(out, n, &cap, (uint32_t)u);
    }
    pthread_rwlock_unlock(&sh->tmu);
    return rc;
}

/* One fresh index for the filtered queries: scan or filtered walk per query's group. */
static int filtered_memidx(nl_shard *sh, sh_memidx *m, size_t reserved, int idx, fgroup *groups, const uint32_t *qg,
                           const unsigned char *force, uint32_t plan, const float *qs, size_t nq, uint32_t k, uint32_t L,
                           cand *cands, uint32_t *nc, uint32_t stride, nl_query_stats *stats)
{
    if (reserved == 0 || nl_vamana_size(m->ix) == 0)
        return 0;
    nl_vamana_searcher *s = nl_objpool_take(&m->searchers);
    int rc = s ? 0 : nl_vamana_searcher_create(m->ix, NL_MAX_K, &s);
    if (rc)
        return rc;
    uint32_t *slots = malloc(sizeof(uint32_t) * NL_MAX_K);
    float *d = malloc(sizeof(float) * NL_MAX_K);
    if (!slots || !d)
        rc = -ENOMEM;
    for (size_t qi = 0; qi < nq && !rc; qi++) {
        if (force && !force[qi])
            continue;
        fgroup *g = &groups[qg[qi]];
        if (g->bm && !g->neg && g->matches == 0)
            continue;
        uint64_t t0 = nl_now_ns();
        double est = g->sel * (double)reserved;
        int got;
        int scan = force || plan == NL_PLAN_SCAN || (plan != NL_PLAN_GRAPH && est * sh->cfg.dim <= SH_RAM_SCAN_OPS);
        if (scan) {
            if (!g->built[idx]) {
                if ((rc = mem_subset(sh, g, m, reserved, &g->sub[idx], &g->subn[idx])) != 0)
                    break;
                g->built[idx] = 1;
            }
            got = nl_vamana_scan(m->ix, qs + qi * sh->cfg.dim, g->sub[idx], g->subn[idx], k, slots, d);
            if (stats) {
                stats[qi].filter_plan |= NL_PLAN_SCAN;
                stats[qi].scanned += g->subn[idx];
            }
        } else {
            double lw = ceil((double)L / (g->sel > 0 ? g->sel : 1));
            uint32_t LL = lw > NL_MAX_K ? NL_MAX_K : (uint32_t)lw;
            if (LL < k) LL = k;
            mem_allow_ctx ac = {sh, g, m};
            nl_search_stats ss = {0, 0};
            got = nl_vamana_search_filtered(s, qs + qi * sh->cfg.dim, k, LL, mem_allow, &ac, slots, d, &ss);
            if (stats) {
                stats[qi].filter_plan |= NL_PLAN_GRAPH;
                stats[qi].hops += ss.hops;
            }
        }
        if (got < 0) {
            rc = got;
            break;
        }
        cand *c = cands + qi * stride;
        for (int i = 0; i < got; i++)
            c[nc[qi]++] = (cand){m->slot_pid[slots[i]], d[i]};
        if (stats)
            stats[qi].latency_ns += nl_now_ns() - t0;
    }
    free(slots);
    free(d);
    nl_objpool_give(&m->searchers, s);
    return rc;
}

/* Every segment for the filtered queries: one job per (query, segment), scan or walk. */
static int filtered_segments(nl_shard *sh, const sh_view *v, fgroup *groups, const uint32_t *qg,
                             const unsigned char *force, const float *qs, size_t nq, const nl_search_params *p,
                             uint32_t L, cand *cands, uint32_t *nc, uint32_t stride, nl_query_stats *stats)
{
    uint32_t ns = v->nseg;
    if (ns == 0)
        return 0;
    sh_segref *r0 = v->segs[0];
    nl_seg_searcher *s;
    int rc = seg_searcher_take(sh, r0, &s);
    if (rc)
        return rc;
    uint32_t W = p->W ? p->W : 4;
    if (W > SH_MAX_W)
        W = SH_MAX_W;
    uint64_t biggest = 0;
    for (uint32_t i = 0; i < ns; i++)
        if (v->segs[i]->count > biggest)
            biggest = v->segs[i]->count;
    nl_segment **segs = malloc(sizeof *segs * ns);
    nl_seg_job *jobs = malloc(sizeof *jobs * ns * (nq ? nq : 1));
    size_t nj = 0;
    if (!segs || !jobs)
        rc = -ENOMEM;
    for (uint32_t i = 0; i < ns && !rc; i++)
        segs[i] = v->segs[i]->seg;
    uint32_t kstride = NL_MAX_K;
    for (size_t qi = 0; qi < nq && !rc; qi++) {
        if (force && !force[qi])
            continue;
        fgroup *g = &groups[qg[qi]];
        if (g->bm && !g->neg && g->matches == 0)
            continue;
        for (uint32_t si = 0; si < ns && !rc; si++) {
            const sh_segref *r = v->segs[si];
            nl_segment_info info;
            nl_segment_get_info(r->seg, &info);
            uint32_t Li = (uint32_t)((double)L * sqrt((double)r->count / (double)biggest) + 0.5);
            if (Li < p->k)
                Li = p->k;
            double sel = g->sel > 0 ? g->sel : 1.0 / (double)(r->count + 1);
            double est = sel * (double)r->count;
            double lw = ceil((double)Li / sel);
            double graph_cost = (lw > NL_MAX_K ? 4.0 * lw : lw) * (SH_READ_NS + SH_ADC_NS * info.R * info.pq_m);
            double scan_cost = est * info.pq_m * SH_ADC_NS + Li * SH_READ_NS;
            int scan = force || p->plan == NL_PLAN_SCAN ||
                       (p->plan != NL_PLAN_GRAPH && g->bm && scan_cost <= graph_cost);
            nl_seg_job *jb = &jobs[nj];
            *jb = (nl_seg_job){.seg = si, .query = (uint32_t)qi, .out = nj, .k = 0, .L = 0, .W = W,
                               .eps0 = sh_bound_eps(p), .no_sector = p->sector < 0,
                               .no_seeds = p->seeds < 0};
            if (scan) {
                size_t gi = 2 + si;
                if (!g->built[gi]) {
                    if ((rc = seg_subset(sh, g, r->seg, &g->sub[gi], &g->subn[gi])) != 0)
                        break;
                    g->built[gi] = 1;
                }
                if (g->subn[gi] == 0)
                    continue;
                uint32_t depth = force ? NL_MAX_K : Li;
                jb->k = p->k;
                jb->L = depth < p->k ? p->k : depth;
                jb->W = SH_MAX_W; /* every read of a scan is wanted: many in flight */
                jb->subset = g->sub[gi];
                jb->subset_n = g->subn[gi];
                if (stats) {
                    stats[qi].filter_plan |= NL_PLAN_SCAN;
                    stats[qi].scanned += g->subn[gi];
                }
            } else {
                uint32_t LL = lw > NL_MAX_K ? NL_MAX_K : (uint32_t)lw;
                if (LL < p->k) LL = p->k;
                jb->k = p->k;
                jb->L = LL;
                jb->allow = g->bm;
                jb->allow_neg = g->neg;
                if (atomic_load(&r->dead) > 0) {
                    jb->dead = version_dead;
                    jb->dead_ctx = sh;
                    jb->L_max = dead_list_max(LL);
                }
                if (stats)
                    stats[qi].filter_plan |= NL_PLAN_GRAPH;
            }
            nj++;
        }
    }
    uint32_t *ords = NULL;
    float *d = NULL;
    nl_query_stats *qst = NULL;
    if (!rc && nj) {
        ords = malloc(sizeof(uint32_t) * kstride * nj);
        d = malloc(sizeof(float) * kstride * nj);
        qst = calloc(nj, sizeof *qst);
        if (!ords || !d || !qst)
            rc = -ENOMEM;
        if (!rc)
            rc = nl_seg_search_jobs(s, segs, ns, qs, jobs, nj, kstride, ords, d, qst);
    }
    for (size_t j = 0; j < nj && !rc; j++) {
        const nl_seg_job *jb = &jobs[j];
        cand *c = cands + (size_t)jb->query * stride;
        for (uint32_t i = 0; i < jb->k; i++) {
            uint32_t o = ords[j * kstride + i];
            if (o == UINT32_MAX)
                break;
            c[nc[jb->query]++] = (cand){nl_segment_id(segs[jb->seg], o), d[j * kstride + i]};
        }
        if (stats) {
            nl_query_stats *st = &stats[jb->query];
            st->ios += qst[j].ios;
            st->cache_hits += qst[j].cache_hits;
            st->bound_skips += qst[j].bound_skips;
            st->sector_expands += qst[j].sector_expands;
            st->hops += qst[j].hops;
        }
    }
    /* A query's jobs ran side by side: it took from its first start to its last finish. */
    if (stats && !rc && nj) {
        size_t j = 0;
        while (j < nj) {
            uint32_t q = jobs[j].query;
            uint64_t first = UINT64_MAX, last = 0;
            for (; j < nj && jobs[j].query == q; j++) {
                if (qst[j].start_ns < first) first = qst[j].start_ns;
                if (qst[j].start_ns + qst[j].latency_ns > last) last = qst[j].start_ns + qst[j].latency_ns;
            }
            stats[q].latency_ns += last - first;
        }
    }
    free(ords);
    free(d);
    free(qst);
    free(jobs);
    free(segs);
    nl_objpool_give(&r0->searchers, s);
    return rc;
}

/* Sorts and resolves query qi's candidates into at most k hits. */
static int resolve(nl_shard *sh, const nl_search_params *p, const fgroup *g, cand *c, uint32_t n, uint32_t k,
                   nl_hit *out, uint32_t *count)
{
    qsort(c, n, sizeof *c, cand_cmp);
    uint32_t got = 0;
    int rc = 0;
    for (uint32_t i = 0; i < n && got < k && !rc; i++) {
        if (i > 0 && c[i].pid == c[i - 1].pid)
            continue;
        if ((g && !g_allows(g, c[i].pid)) || sh_tomb_has(sh, c[i].pid))
            continue;
        unsigned char pk[8];
        void *ek;
        size_t ekl;
        sh_pid_key(c[i].pid, pk);
        int r = nl_store_get(sh->st, NL_CF_PIDS, pk, 8, &ek, &ekl);
        if (r == NL_ENOTFOUND)
            continue; /* deleted or replaced after the view was taken */
        if (r) {
            rc = r;
            break;
        }
        out[got].dist = c[i].dist;
        rc = sh_hit_from_ekey(ek, ekl, &out[got]);
        free(ek);
        if (rc)
            break;
        if (p->accept && !p->accept(p->accept_ctx, &out[got]))
            continue;
        got++;
    }
    *count = got;
    return rc;
}

static void groups_free(fgroup *groups, size_t ng, size_t nidx)
{
    for (size_t i = 0; groups && i < ng; i++) {
        nl_bitmap_destroy(groups[i].bm);
        for (size_t j = 0; groups[i].sub && j < nidx; j++)
            free(groups[i].sub[j]);
        free(groups[i].sub);
        free(groups[i].subn);
        free(groups[i].built);
    }
    free(groups);
}

/* One pass of the filtered plans over the queries (all, or those marked in force, which
 * then run as exhaustive scans). */
static int filtered_pass(nl_shard *sh, const sh_view *v, size_t act_res, size_t frz_res, fgroup *groups,
                         const uint32_t *qg, const unsigned char *force, const float *qs, size_t nq,
                         const nl_search_params *p, uint32_t L, nl_hit *hits, uint32_t *counts,
                         nl_query_stats *stats)
{
    uint32_t k = p->k;
    uint32_t stride = (2 + v->nseg) * NL_MAX_K;
    cand *cands = malloc(sizeof(cand) * stride * (nq ? nq : 1));
    uint32_t *nc = calloc(nq ? nq : 1, sizeof *nc);
    int rc = cands && nc ? 0 : -ENOMEM;
    if (!rc)
        rc = filtered_memidx(sh, v->active, act_res, 0, groups, qg, force, p->plan, qs, nq, k, L, cands, nc, stride,
                             stats);
    if (!rc && v->frozen)
        rc = filtered_memidx(sh, v->frozen, frz_res, 1, groups, qg, force, p->plan, qs, nq, k, L, cands, nc, stride,
                             stats);
    if (!rc)
        rc = filtered_segments(sh, v, groups, qg, force, qs, nq, p, L, cands, nc, stride, stats);
    for (size_t qi = 0; qi < nq && !rc; qi++) {
        if (force && !force[qi])
            continue;
        uint64_t t0 = nl_now_ns();
        rc = resolve(sh, p, &groups[qg[qi]], cands + qi * stride, nc[qi], k, hits + qi * k, &counts[qi]);
        if (stats)
            stats[qi].latency_ns += nl_now_ns() - t0;
    }
    free(cands);
    free(nc);
    return rc;
}

/* Filtered queries (and unfiltered ones of a mixed batch) with list size L over a view
 * taken now; with exhaustive, every query runs as the exhaustive scan at once. want[qi]
 * gets min(k, points its filter allows). */
static int search_filtered(nl_shard *sh, const float *qs, size_t nq, const nl_search_params *p, uint32_t L,
                           int exhaustive, nl_hit *hits, uint32_t *counts, uint32_t *want, nl_query_stats *stats)
{
    uint32_t k = p->k;
    /* The pids below next_pid all have their postings committed; the view and the fresh
     * indexes' reserved counts are taken at the same moment, so every slot scanned has its
     * pid recorded. */
    pthread_mutex_lock(&sh->wmu);
    uint64_t next_pid = sh->next_pid, live = sh->live;
    sh_view *v = sh_view_acquire(sh);
    size_t act_res = nl_vamana_reserved(v->active->ix);
    size_t frz_res = v->frozen ? nl_vamana_reserved(v->frozen->ix) : 0;
    pthread_mutex_unlock(&sh->wmu);
    size_t nidx = 2 + v->nseg;
    uint32_t *qg = calloc(nq ? nq : 1, sizeof *qg);
    fgroup *groups = calloc(nq ? nq : 1, sizeof *groups);
    unsigned char *force = NULL;
    size_t ng = 0;
    int rc = qg && groups ? 0 : -ENOMEM;
    for (size_t qi = 0; qi < nq && !rc; qi++) {
        const nl_filter *f = p->filters ? p->filters[qi] : p->filter;
        size_t gi;
        /* Queries with the same filter (by its canonical text) share one allowed set,
         * one evaluation and one scan list per index. */
        for (gi = 0; gi < ng; gi++)
            if (groups[gi].f == f ||
                (f && groups[gi].f && strcmp(nl_filter_text(groups[gi].f), nl_filter_text(f)) == 0))
                break;
        if (gi == ng) {
            fgroup *g = &groups[ng++];
            g->f = f;
            g->sub = calloc(nidx, sizeof *g->sub);
            g->subn = calloc(nidx, sizeof *g->subn);
            g->built = calloc(nidx, 1);
            if (!g->sub || !g->subn || !g->built) {
                rc = -ENOMEM;
                break;
            }
            g->sel = 1;
            g->matches = live;
            if (f) {
                if ((rc = nl_filter_eval(sh->st, sh->fcache, next_pid, f, &g->bm, &g->neg)) != 0)
                    break;
                uint64_t card = nl_bitmap_cardinality(g->bm);
                g->matches = g->neg ? (card < live ? live - card : 0) : card;
                if (g->matches > live)
                    g->matches = live;
                g->sel = live ? (double)g->matches / (double)live : 0;
                if (g->matches && g->sel < 1e-9)
                    g->sel = 1e-9;
            }
        }
        qg[qi] = (uint32_t)gi;
        uint64_t m = f ? groups[gi].matches : live;
        want[qi] = m < k ? (uint32_t)m : k;
        if (stats)
            stats[qi].matches = m;
    }
    if (!rc && !exhaustive)
        rc = filtered_pass(sh, v, act_res, frz_res, groups, qg, NULL, qs, nq, p, L, hits, counts, stats);
    /* Too few results while the filter allows more: an exhaustive scan of that query. */
    size_t nforce = 0;
    if (!rc) {
        force = calloc(nq ? nq : 1, 1);
        if (!force)
            rc = -ENOMEM;
        for (size_t qi = 0; qi < nq && !rc; qi++)
            if (exhaustive || (groups[qg[qi]].f && counts[qi] < k && groups[qg[qi]].matches > counts[qi])) {
                force[qi] = 1;
                nforce++;
                if (stats)
                    stats[qi].filter_plan |= NL_PLAN_FALLBACK;
            }
    }
    if (!rc && nforce)
        rc = filtered_pass(sh, v, act_res, frz_res, groups, qg, force, qs, nq, p, L, hits, counts, stats);
    free(force);
    free(qg);
    groups_free(groups, ng, nidx);
    sh_view_release(v);
    return rc;
}

/* The promise of a search: min(k, live points) results, min(k, matching points) with a
 * filter, unless the request's accept callback refused candidates. One pass can fall
 * short of it: a list crowded with deleted versions (they route, they are not results),
 * a small segment's narrowed list, versions deleted or purged by a compaction while the
 * pass ran on its older view. Queries short of their promise are searched again on a
 * new view, first with a list four times wider, then, if still short, exhaustively:
 * every live point of every index scored (the scan plan with no filter, or the filter's
 * own fallback), which returns min(k, live) by construction. At most two extra passes,
 * only for the short queries; nl_query_stats marks them NL_PLAN_RETRY / _FALLBACK. */
static int complete_short(nl_shard *sh, const float *qs, size_t nq, const nl_search_params *p, uint32_t L,
                          int filtered, nl_hit *hits, uint32_t *counts, uint32_t *want, nl_query_stats *stats)
{
    const uint32_t k = p->k, dim = sh->cfg.dim;
    size_t *idx = NULL;
    float *sq = NULL;
    nl_hit *sh_hits = NULL;
    uint32_t *sc = NULL, *sw = NULL;
    nl_query_stats *sst = NULL;
    const nl_filter **sf = NULL;
    int rc = 0;
    for (int round = 0; round < 2 && !rc; round++) {
        size_t ns = 0;
        for (size_t qi = 0; qi < nq; qi++)
            ns += counts[qi] < want[qi];
        if (ns == 0)
            break;
        if (!idx) {
            idx = malloc(sizeof *idx * ns);
            sq = malloc(sizeof(float) * dim * ns);
            sh_hits = malloc(sizeof *sh_hits * k * ns);
            sc = malloc(sizeof *sc * ns);
            sw = malloc(sizeof *sw * ns);
            sst = malloc(sizeof *sst * ns);
            sf = calloc(ns, sizeof *sf);
            if (!idx || !sq || !sh_hits || !sc || !sw || !sst || !sf) {
                rc = -ENOMEM;
                break;
            }
        }
        ns = 0;
        for (size_t qi = 0; qi < nq; qi++)
            if (counts[qi] < want[qi]) {
                idx[ns] = qi;
                memcpy(sq + ns * dim, qs + qi * dim, sizeof(float) * dim);
                sf[ns] = p->filters ? p->filters[qi] : p->filter;
                ns++;
            }
        int exhaustive = round == 1 || L == NL_MAX_K;
        uint32_t L2 = L * 4 > NL_MAX_K ? NL_MAX_K : L * 4;
        nl_search_params p2 = *p;
        p2.filter = NULL;
        p2.filters = filtered ? sf : NULL;
        memset(sst, 0, sizeof *sst * ns);
        if (filtered || exhaustive)
            rc = search_filtered(sh, sq, ns, &p2, L2, exhaustive, sh_hits, sc, sw, sst);
        else
            rc = search_unfiltered(sh, sq, ns, &p2, L2, sh_hits, sc, sw, sst);
        atomic_fetch_add(exhaustive ? &sh->search_exhaustive : &sh->search_retries, ns);
        /* The newer view's answer replaces the older one, whichever is longer: points
         * deleted in between are no answer. */
        for (size_t i = 0; i < ns && !rc; i++) {
            size_t qi = idx[i];
            memcpy(hits + qi * k, sh_hits + i * k, sizeof *hits * sc[i]);
            counts[qi] = sc[i];
            want[qi] = sw[i];
            if (stats) {
                nl_query_stats *a = &stats[qi];
                a->latency_ns += sst[i].latency_ns;
                a->ios += sst[i].ios;
                a->cache_hits += sst[i].cache_hits;
                a->bound_skips += sst[i].bound_skips;
                a->sector_expands += sst[i].sector_expands;
                a->hops += sst[i].hops;
                a->scanned += sst[i].scanned;
                a->filter_plan |= sst[i].filter_plan | (exhaustive ? NL_PLAN_FALLBACK : NL_PLAN_RETRY);
            }
        }
        if (exhaustive)
            break;
    }
    free(idx);
    free(sq);
    free(sh_hits);
    free(sc);
    free(sw);
    free(sst);
    free(sf);
    return rc;
}

int nl_shard_search_batch(nl_shard *sh, const float *qs, size_t nq, const nl_search_params *p, nl_hit *hits,
                          uint32_t *counts, nl_query_stats *stats)
{
    int filtered = p->filter != NULL;
    for (size_t qi = 0; p->filters && qi < nq && !filtered; qi++)
        filtered = p->filters[qi] != NULL;
    if (stats)
        memset(stats, 0, sizeof *stats * nq);
    uint32_t L = list_size(p);
    uint32_t *want = malloc(sizeof *want * (nq ? nq : 1));
    if (!want)
        return -ENOMEM;
    int rc = filtered ? search_filtered(sh, qs, nq, p, L, 0, hits, counts, want, stats)
                      : search_unfiltered(sh, qs, nq, p, L, hits, counts, want, stats);
    if (!rc && !p->accept)
        rc = complete_short(sh, qs, nq, p, L, filtered, hits, counts, want, stats);
    free(want);
    return rc;
}
