/*
 * shard_maint.c — a shard's maintenance: flush (fresh index -> segment), compaction
 * (segments -> one segment without deleted versions), the policies that decide when
 * they are due, the two threads that run them (flush at nice 5, compaction at nice 10;
 * the end of this file), and verification.
 *
 * Both publish with the same three steps: write and fsync the new segment file under a
 * number the manifest does not list yet; one synced RocksDB batch that changes the
 * manifest (and drops what the new file makes redundant: fresh vectors, tombstones);
 * then a new view. A crash before the batch leaves an orphan file that the next open
 * deletes; after it, the files the manifest no longer lists are deleted at open too.
 * Either way the state is the old one or the new one, never a mix. A manifest batch that
 * fails is different: its outcome is unknown (the record may be in the WAL with only its
 * sync failed), so neither the new file nor the ones it replaces are deleted, and the store
 * takes no further write until the shard is reopened (nl_store.h, db_recover.c).
 *
 * Flush: the active fresh index is frozen (a new one takes writes at once), the flush
 * waits for inserts still linking into it, seals it (connectivity repair) and writes
 * its graph as it is, with a PQ codebook trained on its points: no rebuild, so a flush
 * costs about a PQ training and a sequential write. Its pids are the fresh index's slot
 * pids, ascending, and every fresh version below the last one is dropped with one range
 * delete (later versions are all in the new active index).
 *
 * Compaction is FreshDiskANN's merge where it can be: the largest segment's graph is
 * loaded as it is, its deleted nodes removed by delete consolidation (the lists that named
 * them repaired by RobustPrune over what the deleted ones linked to,
 * nl_vamana_consolidate), the live points of the other segments picked inserted into it,
 * and the result written as one segment in pid order: work in proportion to the deletes
 * and the small segments, not to the whole shard. Measured on clustered data with 30%
 * deleted (test_vamana): recall as a rebuild's (0.983 against 0.979 at L=10), where only
 * dropping the edges gave 0.722. A full compaction, or a largest segment more than half
 * deleted, rebuilds instead: the live vectors of the chosen segments read sequentially,
 * a Vamana graph built over them in memory, written in pid order.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "nl_quant.h"
#include "shard_internal.h"

#define FLUSH_PQ_SAMPLE 10000u

/* ---------------------------------------------------------------- policies */

int sh_flush_due(nl_shard *sh)
{
    sh_view *v = sh_view_acquire(sh);
    size_t n = nl_vamana_reserved(v->active->ix);
    int due = v->frozen != NULL || n >= sh->opt.flush_points ||
              (n > 0 && nl_now_ns() - v->active->born_ns >= (uint64_t)sh->opt.flush_age_ms * 1000000ull);
    sh_view_release(v);
    return due;
}

static int cmp_count(const void *a, const void *b)
{
    const sh_segref *x = *(sh_segref *const *)a, *y = *(sh_segref *const *)b;
    return x->count < y->count ? -1 : x->count > y->count;
}

/* Most of a segment that may be deleted for an insertion merge to remove its deletes by
 * consolidation; past it the live points are rebuilt (fewer than the graph's nodes). */
#define CONSOLIDATE_MAX_DEAD 0.5
/* The largest segment takes in the small ones only when they hold at least 1/MERGE_TIER
 * of its points; until then they merge among themselves (size tiers). */
#define MERGE_TIER 4

/* Chooses the segments of v to rewrite into *pick (room for v->nseg) and how:
 *  - full mode: all of them, rebuilt (every deleted version purged);
 *  - segments whose deleted share reaches the ratio, or more segments than the limit: an
 *    insertion merge into the largest (*base = its index in pick), FreshDiskANN's: the
 *    largest keeps its graph, its deleted nodes are removed by delete consolidation, and
 *    the live points of the others picked (those over the ratio, and the smallest until
 *    half the limit is left) are inserted into it: work in proportion to the deletes and
 *    the small segments, not to everything;
 *  - but with nothing over the ratio and the smallest holding less than 1/MERGE_TIER of
 *    the largest, they merge into the next one up instead (size tiers: the largest is
 *    rewritten only when enough has come in to be worth it);
 *  - but a largest segment over CONSOLIDATE_MAX_DEAD deleted is rebuilt with the others
 *    over the ratio instead (*base = -1): fewer live points than nodes to repair.
 * Returns how many were picked. */
static uint32_t plan(const nl_shard *sh, const sh_view *v, nl_compact_mode mode, sh_segref **pick, int *base)
{
    uint32_t np = 0;
    *base = -1;
    if (mode == NL_COMPACT_FULL) {
        uint64_t dead = 0;
        for (uint32_t i = 0; i < v->nseg; i++)
            dead += atomic_load(&v->segs[i]->dead);
        if (v->nseg > 1 || dead > 0)
            for (uint32_t i = 0; i < v->nseg; i++)
                pick[np++] = v->segs[i];
        return np;
    }
    if (v->nseg == 0)
        return 0;
    sh_segref **bys = malloc(sizeof *bys * v->nseg);
    if (!bys)
        return 0;
    memcpy(bys, v->segs, sizeof *bys * v->nseg);
    qsort(bys, v->nseg, sizeof *bys, cmp_count);
    sh_segref *big = bys[v->nseg - 1];
    int over_limit = v->nseg > sh->opt.compact_max_segments;
    uint32_t nheavy = 0;
    for (uint32_t i = 0; i < v->nseg; i++)
        nheavy += (double)atomic_load(&bys[i]->dead) >= (double)sh->opt.compact_dead_ratio * (double)bys[i]->count;
    if (nheavy == 0 && !over_limit) {
        free(bys);
        return 0;
    }
    if ((double)atomic_load(&big->dead) > CONSOLIDATE_MAX_DEAD * (double)big->count) {
        for (uint32_t i = 0; i < v->nseg; i++) /* rebuild the segments over the ratio */
            if ((double)atomic_load(&bys[i]->dead) >= (double)sh->opt.compact_dead_ratio * (double)bys[i]->count)
                pick[np++] = bys[i];
        free(bys);
        return np;
    }
    /* The smallest until half the limit is left (merges come in rounds rather than after
     * every flush), and every other one over the ratio. */
    uint32_t keep = sh->opt.compact_max_segments / 2 ? sh->opt.compact_max_segments / 2 : 1;
    uint32_t nsmall = over_limit && v->nseg > keep ? v->nseg - keep : 0;
    uint64_t small = 0;
    for (uint32_t i = 0; i < nsmall && i < v->nseg - 1; i++)
        small += bys[i]->count;
    if (nheavy == 0 && nsmall + 1 < v->nseg && small * MERGE_TIER < big->count) {
        /* Too little to fold into the largest: merge the smallest into the largest of them
         * and one more, so the largest segment is rewritten only when a quarter of its size
         * comes in (write amplification, benchmarks.md). */
        pick[np++] = bys[nsmall];
        *base = 0;
        for (uint32_t i = 0; i < nsmall; i++)
            pick[np++] = bys[i];
        free(bys);
        return np;
    }
    pick[np++] = big;
    *base = 0;
    for (uint32_t i = 0; i < v->nseg - 1; i++) {
        int heavy = (double)atomic_load(&bys[i]->dead) >= (double)sh->opt.compact_dead_ratio * (double)bys[i]->count;
        if (heavy || i < nsmall)
            pick[np++] = bys[i];
    }
    free(bys);
    return np;
}

int sh_compaction_due(nl_shard *sh)
{
    sh_view *v = sh_view_acquire(sh);
    sh_segref **pick = malloc(sizeof *pick * (v->nseg ? v->nseg : 1));
    int base;
    int due = pick && plan(sh, v, NL_COMPACT_POLICY, pick, &base) > 0;
    free(pick);
    sh_view_release(v);
    return due;
}

/* ---------------------------------------------------------------- writing a segment */

/* Encodes ix's vectors (the shard's code: PQ or RaBitQ) and writes them with their graph as segment `number`, then
 * opens it. pids: the version of each ordinal, ascending. A flush reuses the codebook
 * of an earlier flush when that one saw at least as many points or REUSE_PQ_POINTS
 * (training is most of a flush's CPU; a compaction, which rebuilds anyway, always
 * trains on what it merges and hands its codebook to later flushes). */
#define REUSE_PQ_POINTS 20000u

static int write_and_open(nl_shard *sh, const nl_vamana *ix, const uint64_t *pids, uint32_t number,
                          uint64_t cache_budget, int may_reuse_pq, const nl_quant *given_pq, const uint8_t *given_codes,
                          const uint32_t *order, sh_segref **out)
{
    *out = NULL;
    const nl_vecset *vs = nl_vamana_vectors(ix);
    nl_quant *pq = NULL;
    int own = 1, rc = 0;
    const uint32_t cb = nl_code_spec_bytes(sh_code_spec(&sh->cfg), sh->cfg.dim);
    if (given_pq) {
        pq = (nl_quant *)given_pq; /* not freed: own = 0 */
        own = 0;
    } else if (may_reuse_pq && sh->flush_pq &&
        (sh->flush_pq_points >= REUSE_PQ_POINTS || sh->flush_pq_points >= vs->n)) {
        pq = sh->flush_pq;
        own = 0;
    } else {
        nl_quant_params qp = {.max_sample = FLUSH_PQ_SAMPLE, .seed = number, .threads = sh->opt.threads};
        rc = nl_quant_train(vs, sh->cfg.metric, sh_code_spec(&sh->cfg), &qp, &pq);
    }
    uint8_t *codes = NULL;
    if (!rc && !given_codes) {
        codes = malloc(vs->n * cb);
        rc = codes ? nl_quant_encode(pq, vs, codes, sh->opt.threads) : -ENOMEM;
    }
    char path[4400];
    snprintf(path, sizeof path, "%s/seg-%06u.nls", sh->dir, number);
    if (!rc) {
        nl_segment_source src = {ix, pq, given_codes ? given_codes : codes, pids, sh->cfg.L, sh->cfg.alpha, 0, order, 0};
        rc = nl_segment_write(path, &src);
    }
    free(codes);
    if (own && !given_pq) {
        if (!rc && may_reuse_pq && vs->n >= sh->flush_pq_points) { /* flushes only: fmu held */
            nl_quant_destroy(sh->flush_pq);
            sh->flush_pq = pq;
            sh->flush_pq_points = vs->n;
        } else {
            nl_quant_destroy(pq);
        }
    }
    if (!rc && (rc = sh_segref_open(sh, number, cache_budget, out)) != 0)
        unlink(path);
    return rc;
}

/* The cache share of a new segment of n points. */
static uint64_t cache_share(nl_shard *sh, const sh_view *v, uint64_t n)
{
    uint64_t total = n;
    for (uint32_t i = 0; i < v->nseg; i++)
        total += v->segs[i]->count;
    return (uint64_t)((double)sh->opt.cache_budget * (double)n / (double)total);
}

static uint64_t count_dead(nl_shard *sh, const uint64_t *pids, size_t n)
{
    uint64_t dead = 0;
    pthread_rwlock_rdlock(&sh->tmu);
    for (size_t i = 0; i < n; i++)
        dead += sh_tomb_has_locked(sh, pids[i]);
    pthread_rwlock_unlock(&sh->tmu);
    return dead;
}

/* ---------------------------------------------------------------- flush */

static int flush_locked(nl_shard *sh)
{
    NL_ASSERT_HELD(&sh->fmu);
    uint64_t t0 = nl_now_ns();
    int failed = sh_check_failed(sh);
    if (failed)
        return failed; /* no new files until a reopen has decided the state */
    pthread_mutex_lock(&sh->wmu);
    sh_view *v = sh->view;
    sh_memidx *fz = v->frozen; /* a flush that failed before is retried */
    if (!fz) {
        if (nl_vamana_reserved(v->active->ix) == 0) {
            pthread_mutex_unlock(&sh->wmu);
            return 0;
        }
        sh_memidx *na;
        int rc = sh_memidx_create(sh, sh->cfg.fresh_capacity, &na);
        if (rc) {
            pthread_mutex_unlock(&sh->wmu);
            return rc;
        }
        sh_view *nv = sh_view_make(na, v->active, v->segs, v->nseg);
        sh_memidx_unref(na);
        if (!nv) {
            pthread_mutex_unlock(&sh->wmu);
            return -ENOMEM;
        }
        fz = v->active;
        sh_view_install(sh, nv);
    }
    atomic_fetch_add(&fz->refs, 1);
    pthread_mutex_unlock(&sh->wmu);

    /* Inserts that reserved slots in fz before the swap finish linking them. */
    pthread_rwlock_wrlock(&fz->ins);
    pthread_rwlock_unlock(&fz->ins);
    int rc = nl_vamana_seal(fz->ix);
    size_t n = nl_vamana_reserved(fz->ix);
    sh_segref *r = NULL;
    if (!rc) /* the segment's size, roughly: vectors, adjacency lists, codes, sector padding */
        rc = sh_space_check(sh, (uint64_t)n * (sh->row_bytes + 4u * sh->cfg.R + 64u) * 5 / 4 + (1u << 20));
    uint32_t number = atomic_fetch_add(&sh->seg_alloc, 1);
    if (!rc) {
        sh_view *cur = sh_view_acquire(sh);
        uint64_t budget = cache_share(sh, cur, n);
        sh_view_release(cur);
        rc = write_and_open(sh, fz->ix, fz->slot_pid, number, budget, 1, NULL, NULL, NULL, &r);
    }
    if (rc) {
        sh_memidx_unref(fz);
        return rc; /* fz stays frozen in the view, searchable; the next flush retries */
    }
    pthread_mutex_lock(&sh->wmu);
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!b) {
        rc = -ENOMEM;
    } else {
        unsigned char sk[8], from[8], to[8];
        uint64_t rec[3] = {n, fz->slot_pid[0], fz->slot_pid[n - 1]};
        uint64_t next_seg = number + 1 > sh->next_seg ? (uint64_t)number + 1 : sh->next_seg;
        sh_seg_key(number, sk);
        sh_pid_key(0, from);
        sh_pid_key(fz->slot_pid[n - 1] + 1, to);
        nl_store_batch_put(b, NL_CF_MANIFEST, sk, 8, rec, sizeof rec);
        nl_store_batch_put(b, NL_CF_MANIFEST, "next_seg", 8, &next_seg, 8);
        nl_store_batch_delete_range(b, NL_CF_FRESH, from, 8, to, 8);
        rc = nl_store_write(b, 1);
        nl_store_batch_destroy(b);
    }
    if (rc) {
        /* Unknown outcome (the batch may be in the WAL, only its sync failed): the file
         * stays, since a reopen that replays the batch needs it, and one that does not
         * removes it as an orphan. The store takes no more writes (nl_store.h), the frozen
         * index keeps answering for these points until the shard is reopened. */
        pthread_mutex_unlock(&sh->wmu);
        sh_segref_unref(r);
        sh_memidx_unref(fz);
        return rc;
    }
    if (number + 1 > sh->next_seg)
        sh->next_seg = number + 1;
    atomic_store(&r->dead, count_dead(sh, fz->slot_pid, n));
    atomic_fetch_add(&sh->flush_bytes, r->file_bytes);
    v = sh->view;
    sh_segref **segs = malloc(sizeof *segs * (v->nseg + 1));
    sh_view *nv = NULL;
    if (segs) {
        memcpy(segs, v->segs, sizeof *segs * v->nseg);
        segs[v->nseg] = r;
        nv = sh_view_make(v->active, NULL, segs, v->nseg + 1);
        free(segs);
    }
    if (nv) {
        sh_view_install(sh, nv);
    } else {
        /* Out of memory after the manifest changed: keep serving the old view (the frozen
         * index still answers for these points); the next open picks up the segment. */
        rc = -ENOMEM;
    }
    pthread_cond_broadcast(&sh->space);
    pthread_mutex_unlock(&sh->wmu);
    sh_segref_unref(r);
    sh_memidx_unref(fz);
    if (!rc) {
        atomic_fetch_add(&sh->flushes, 1);
        atomic_fetch_add(&sh->flush_ns, nl_now_ns() - t0);
    }
    return rc;
}

int nl_shard_flush(nl_shard *sh)
{
    pthread_mutex_lock(&sh->fmu);
    int rc = flush_locked(sh);
    /* What was active when the call began may now be frozen: flush it too, so every
     * point acknowledged before the call is in a segment when it returns. */
    if (!rc) {
        sh_view *v = sh_view_acquire(sh);
        int more = v->frozen != NULL;
        sh_view_release(v);
        if (more)
            rc = flush_locked(sh);
    }
    pthread_mutex_unlock(&sh->fmu);
    return rc;
}

/* ---------------------------------------------------------------- compaction */

typedef struct {
    uint64_t pid;
    uint32_t seg; /* index into pick */
    uint32_t ord;
} live_entry;

static int cmp_live(const void *a, const void *b)
{
    const live_entry *x = a, *y = b;
    return x->pid < y->pid ? -1 : x->pid > y->pid;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

#define READ_CHUNK 16384u

/* Drops the deleted nodes of a loaded graph (after nl_vamana_consolidate: no live list
 * names one), renumbering the rest in ordinal order: rows of bv, adj (stride R) and deg,
 * the medoid, and keep[] (out: old ordinal of each new one). Returns the live count. */
static size_t drop_dead(size_t nb, size_t row_bytes, uint32_t R, const uint8_t *dead, unsigned char *bv, uint32_t *adj,
                        uint32_t *deg, uint32_t *medoid, uint32_t *keep, uint32_t *renum)
{
    size_t nlive = 0;
    for (size_t u = 0; u < nb; u++) {
        renum[u] = dead[u] ? UINT32_MAX : (uint32_t)nlive;
        if (!dead[u])
            keep[nlive++] = (uint32_t)u;
    }
    for (size_t w = 0; w < nlive; w++) {
        size_t u = keep[w];
        if (w != u) {
            memmove(bv + w * row_bytes, bv + u * row_bytes, row_bytes);
            memmove(adj + w * R, adj + u * R, sizeof(uint32_t) * deg[u]);
            deg[w] = deg[u];
        }
        uint32_t k = 0; /* every target is live after the consolidation; drop any that is not */
        for (uint32_t i = 0; i < deg[w]; i++)
            if (renum[adj[w * R + i]] != UINT32_MAX)
                adj[w * R + k++] = renum[adj[w * R + i]];
        deg[w] = k;
    }
    *medoid = renum[*medoid] != UINT32_MAX ? renum[*medoid] : 0;
    return nlive;
}

/* The insertion merge: base's graph, vectors and codes are loaded, its deleted versions
 * (base_dead[ordinal], or none when NULL) removed by delete consolidation (FreshDiskANN's:
 * nl_vamana_consolidate repairs the lists that named them, then they are dropped), the na
 * added points (vecs, pids ascending) are inserted into that graph as FreshDiskANN's
 * merge does, and the result is laid out in pid order. Out: the index, per-slot pids, the
 * file order and the codes (base codebook; only added points are encoded); *repaired
 * (optional) counts the lists the consolidation rewrote. */
static int merge_into(nl_shard *sh, sh_segref *base, const uint8_t *base_dead, const unsigned char *vecs,
                      const uint64_t *add_pids, size_t na, nl_vamana **ix_out, uint64_t **pids_out,
                      uint32_t **order_out, uint8_t **codes_out, size_t *repaired)
{
    *ix_out = NULL;
    *pids_out = NULL;
    *order_out = NULL;
    *codes_out = NULL;
    nl_segment_info info;
    nl_segment_get_info(base->seg, &info);
    size_t nb = info.count, n = nb + na, m = nl_code_spec_bytes(sh_code_spec(&sh->cfg), sh->cfg.dim);
    unsigned char *bv = malloc(nb * sh->row_bytes);
    uint32_t *adj = malloc(sizeof(uint32_t) * nb * info.R), *deg = malloc(sizeof(uint32_t) * nb);
    uint64_t *pids = malloc(sizeof *pids * n);
    uint32_t *order = malloc(sizeof *order * n);
    uint8_t *codes = malloc(n * m);
    nl_vamana *ix = NULL;
    int rc = bv && adj && deg && pids && order && codes ? 0 : -ENOMEM;
    nl_code_spec want = sh_code_spec(&sh->cfg);
    if (!rc && (info.pq_m != m || info.code.kind != want.kind || info.code.param != want.param))
        rc = nl_fail(NL_ECORRUPT, "segment %u has %u-byte codes of kind %u, the shard %zu of kind %u", base->number,
                     info.pq_m, (unsigned)info.code.kind, m, (unsigned)want.kind);
    for (uint32_t o = 0; o < nb && !rc; o += READ_CHUNK) {
        uint32_t cnt = nb - o < READ_CHUNK ? (uint32_t)(nb - o) : READ_CHUNK;
        rc = nl_segment_read_nodes(base->seg, o, cnt, bv + (size_t)o * sh->row_bytes, adj + (size_t)o * info.R, deg + o);
    }
    /* Delete consolidation, then the deleted nodes dropped: keep[w] is the base ordinal of
     * node w from here on. */
    uint32_t *keep = malloc(sizeof(uint32_t) * (nb ? nb : 1)), *renum = malloc(sizeof(uint32_t) * (nb ? nb : 1));
    uint32_t medoid = info.medoid;
    size_t nlive = nb;
    if (!rc && (!keep || !renum))
        rc = -ENOMEM;
    for (size_t u = 0; !rc && u < nb; u++)
        keep[u] = (uint32_t)u;
    size_t ndead = 0;
    for (size_t u = 0; base_dead && u < nb; u++)
        ndead += base_dead[u] != 0;
    if (!rc && ndead == nb)
        rc = nl_fail(NL_EINVAL, "segment %u: every point is deleted; a rebuild drops it", base->number);
    if (!rc && ndead) {
        nl_vecset bvs = {bv, nb, sh->cfg.dim, sh->cfg.dtype};
        rc = nl_vamana_consolidate(&bvs, sh->cfg.metric, adj, info.R, deg, base_dead, sh->cfg.R < info.R ? sh->cfg.R : info.R,
                                   sh->cfg.alpha, sh->opt.threads, &medoid, repaired);
        if (!rc)
            nlive = drop_dead(nb, sh->row_bytes, info.R, base_dead, bv, adj, deg, &medoid, keep, renum);
    }
    n = nlive + na;
    if (!rc) {
        nl_vamana_params vp;
        nl_vamana_params_default(&vp);
        vp.R = sh->cfg.R;
        vp.L = sh->cfg.L;
        vp.alpha = sh->cfg.alpha;
        rc = nl_vamana_create_dynamic_seeded(sh->cfg.dim, sh->cfg.dtype, sh->cfg.metric, &vp, n, bv, nlive, adj,
                                             info.R, deg, medoid, &ix);
    }
    free(bv);
    free(adj);
    free(deg);
    free(renum);
    nb = nlive;
    uint32_t first = 0;
    if (!rc && na && (rc = nl_vamana_reserve(ix, na, &first)) == 0) {
        sh_fill fill = {ix, vecs, sh->row_bytes, first};
        rc = nl_parallel_for(na, sh->opt.threads, sh_fill_task, &fill);
    }
    if (!rc)
        rc = nl_vamana_seal(ix);
    if (!rc) {
        for (size_t u = 0; u < nb; u++)
            pids[u] = nl_segment_id(base->seg, keep[u]);
        memcpy(pids + nb, add_pids, sizeof *pids * na);
        /* Two ascending runs, merged into the file order. */
        size_t i = 0, j = nb;
        for (size_t o = 0; o < n; o++)
            order[o] = (uint32_t)(j >= n || (i < nb && pids[i] < pids[j]) ? i++ : j++);
        const uint8_t *bc = nl_segment_codes(base->seg);
        if (nb == info.count)
            memcpy(codes, bc, nb * m);
        else
            for (size_t u = 0; u < nb; u++)
                memcpy(codes + u * m, bc + (size_t)keep[u] * m, m);
        nl_vecset added = {(void *)vecs, na, sh->cfg.dim, sh->cfg.dtype};
        if (na)
            rc = nl_quant_encode(nl_segment_quant(base->seg), &added, codes + nb * m, sh->opt.threads);
    }
    free(keep);
    if (rc) {
        nl_vamana_destroy(ix);
        free(pids);
        free(order);
        free(codes);
        return rc;
    }
    *ix_out = ix;
    *pids_out = pids;
    *order_out = order;
    *codes_out = codes;
    return 0;
}

static int compact_locked(nl_shard *sh, nl_compact_mode mode, int dry_run, nl_compact_report *rep)
{
    NL_ASSERT_HELD(&sh->cmu);
    uint64_t t0 = nl_now_ns();
    int failed = dry_run ? 0 : sh_check_failed(sh);
    if (failed)
        return failed;
    sh_view *v = sh_view_acquire(sh);
    sh_segref **pick = malloc(sizeof *pick * (v->nseg ? v->nseg : 1));
    if (!pick) {
        sh_view_release(v);
        return -ENOMEM;
    }
    int base;
    uint32_t np = plan(sh, v, mode, pick, &base);
    uint64_t points_in = 0, dead_in = 0, bytes_in = 0;
    for (uint32_t i = 0; i < np; i++) {
        points_in += pick[i]->count;
        dead_in += atomic_load(&pick[i]->dead); /* the base's too: consolidation purges them */
        bytes_in += pick[i]->file_bytes;
    }
    if (rep) {
        rep->segments_in += np;
        rep->points_in += points_in;
        rep->bytes_in += bytes_in;
    }
    if (np && !dry_run && (failed = sh_space_check(sh, bytes_in + (1u << 20))) != 0) {
        free(pick);
        sh_view_release(v);
        return failed; /* the merged file could be as large as its inputs */
    }
    if (np == 0 || dry_run) {
        if (rep && np) {
            rep->segments_out += points_in > dead_in;
            rep->points_out += points_in - dead_in;
            rep->purged += dead_in;
        }
        free(pick);
        sh_view_release(v);
        return 0;
    }

    /* Which versions survive, by the tombstones as they are now (a delete that lands
     * later is counted against the new segment). */
    live_entry *live = malloc(sizeof *live * points_in);
    uint64_t *purged = malloc(sizeof *purged * (points_in ? points_in : 1));
    size_t *purged_at = malloc(sizeof *purged_at * (np + 1)); /* pick s: purged[at[s]..at[s+1]) */
    size_t nl = 0, npurged = 0;
    /* The base of an insertion merge keeps its graph; its deleted versions are removed by
     * delete consolidation (merge_into) and purged like the others'. */
    uint8_t *base_dead = base >= 0 ? calloc(pick[base]->count ? pick[base]->count : 1, 1) : NULL;
    size_t base_ndead = 0;
    int rc = live && purged && purged_at && (base < 0 || base_dead) ? 0 : -ENOMEM;
    pthread_rwlock_rdlock(&sh->tmu);
    for (uint32_t s = 0; s < np && !rc; s++) {
        purged_at[s] = npurged;
        for (uint32_t o = 0; o < pick[s]->count; o++) {
            uint64_t pid = nl_segment_id(pick[s]->seg, o);
            if (sh_tomb_has_locked(sh, pid)) {
                purged[npurged++] = pid;
                if ((int)s == base) {
                    base_dead[o] = 1;
                    base_ndead++;
                }
            } else if ((int)s != base) {
                live[nl++] = (live_entry){pid, s, o};
            }
        }
    }
    if (!rc)
        purged_at[np] = npurged;
    pthread_rwlock_unlock(&sh->tmu);
    sh_segref *r = NULL;
    uint32_t number = atomic_fetch_add(&sh->seg_alloc, 1);
    unsigned char *vecs = NULL, *buf = NULL;
    uint64_t *pids = NULL;
    nl_vamana *ix = NULL;
    uint32_t *order = NULL;
    uint8_t *mcodes = NULL;
    size_t nout = nl; /* points in the new segment */
    if (!rc && (nl || base >= 0)) {
        qsort(live, nl, sizeof *live, cmp_live);
        vecs = malloc(nl * sh->row_bytes);
        buf = malloc((size_t)READ_CHUNK * sh->row_bytes);
        pids = malloc(nl * sizeof *pids);
        uint32_t **rank = calloc(np, sizeof *rank);
        if (!vecs || !buf || !pids || !rank)
            rc = -ENOMEM;
        if (!rc && nl == 0) { /* an insertion merge with nothing to add: keep going */
            free(vecs);
            free(pids);
            vecs = malloc(1);
            pids = malloc(sizeof *pids);
            if (!vecs || !pids)
                rc = -ENOMEM;
        }
        for (uint32_t s = 0; s < np && !rc; s++) {
            if ((int)s == base)
                continue;
            rank[s] = malloc(sizeof(uint32_t) * pick[s]->count);
            if (!rank[s])
                rc = -ENOMEM;
            else
                memset(rank[s], 0xff, sizeof(uint32_t) * pick[s]->count);
        }
        for (size_t i = 0; i < nl && !rc; i++) {
            rank[live[i].seg][live[i].ord] = (uint32_t)i;
            pids[i] = live[i].pid;
        }
        /* Sequential reads of each segment; live rows land at their rank. */
        for (uint32_t s = 0; s < np && !rc; s++)
            for (uint32_t o = 0; (int)s != base && o < pick[s]->count && !rc; o += READ_CHUNK) {
                uint32_t cnt = pick[s]->count - o < READ_CHUNK ? (uint32_t)(pick[s]->count - o) : READ_CHUNK;
                if ((rc = nl_segment_read_vectors(pick[s]->seg, o, cnt, buf)) != 0)
                    break;
                for (uint32_t j = 0; j < cnt; j++)
                    if (rank[s][o + j] != UINT32_MAX)
                        memcpy(vecs + (size_t)rank[s][o + j] * sh->row_bytes, buf + (size_t)j * sh->row_bytes,
                               sh->row_bytes);
            }
        for (uint32_t s = 0; rank && s < np; s++)
            free(rank[s]);
        free(rank);
        free(buf);
        if (!rc && base >= 0) {
            uint64_t *slot_pids;
            size_t repaired = 0;
            rc = merge_into(sh, pick[base], base_ndead ? base_dead : NULL, vecs, pids, nl, &ix, &slot_pids, &order,
                            &mcodes, &repaired);
            if (!rc && rep)
                rep->repaired += repaired;
            if (!rc) {
                free(pids);
                pids = slot_pids;
                nout = nl_vamana_vectors(ix)->n;
                rc = write_and_open(sh, ix, pids, number, cache_share(sh, v, nout), 0, nl_segment_quant(pick[base]->seg),
                                    mcodes, order, &r);
            }
        } else if (!rc) {
            nl_vecset vs = {vecs, nl, sh->cfg.dim, sh->cfg.dtype};
            nl_vamana_params vp;
            nl_vamana_params_default(&vp);
            vp.R = sh->cfg.R;
            vp.L = sh->cfg.L;
            vp.alpha = sh->cfg.alpha;
            vp.threads = sh->opt.threads;
            vp.seed = number;
            rc = nl_vamana_build(&vs, sh->cfg.metric, &vp, NULL, NULL, &ix);
            if (!rc)
                rc = write_and_open(sh, ix, pids, number, cache_share(sh, v, nl), 0, NULL, NULL, NULL, &r);
        }
    }
    free(live);
    if (rc)
        goto out;

    qsort(purged, npurged, sizeof *purged, cmp_u64);
    pthread_mutex_lock(&sh->wmu);
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!b) {
        rc = -ENOMEM;
    } else {
        unsigned char key[8];
        for (uint32_t s = 0; s < np; s++) {
            sh_seg_key(pick[s]->number, key);
            nl_store_batch_delete(b, NL_CF_MANIFEST, key, 8);
        }
        if (r) {
            uint64_t rec[3] = {nout, pids[order ? order[0] : 0], pids[order ? order[nout - 1] : nout - 1]};
            uint64_t next_seg = number + 1 > sh->next_seg ? (uint64_t)number + 1 : sh->next_seg;
            sh_seg_key(number, key);
            nl_store_batch_put(b, NL_CF_MANIFEST, key, 8, rec, sizeof rec);
            nl_store_batch_put(b, NL_CF_MANIFEST, "next_seg", 8, &next_seg, 8);
        }
        for (size_t i = 0; i < npurged; i++) {
            sh_pid_key(purged[i], key);
            nl_store_batch_delete(b, NL_CF_TOMBSTONES, key, 8);
        }
        rc = nl_store_write(b, 1);
        nl_store_batch_destroy(b);
    }
    if (rc) {
        /* As in a flush: after a failed manifest batch neither the new file nor the ones
         * it replaces may go; the reopen decides which the manifest lists. */
        pthread_mutex_unlock(&sh->wmu);
        goto out;
    }
    if (r) {
        if (number + 1 > sh->next_seg)
            sh->next_seg = number + 1;
        atomic_store(&r->dead, count_dead(sh, pids, nout));
    }
    sh_view *cur = sh->view;
    sh_segref **segs = malloc(sizeof *segs * (cur->nseg + 1));
    uint32_t ns = 0;
    if (segs) {
        for (uint32_t i = 0; i < cur->nseg; i++) {
            int picked = 0;
            for (uint32_t s = 0; s < np; s++)
                picked |= cur->segs[i] == pick[s];
            if (!picked)
                segs[ns++] = cur->segs[i];
        }
        if (r)
            segs[ns++] = r;
    }
    sh_view *nv = segs ? sh_view_make(cur->active, cur->frozen, segs, ns) : NULL;
    free(segs);
    if (nv) {
        for (uint32_t s = 0; s < np; s++)
            atomic_store(&pick[s]->obsolete, 1); /* unlinked when the last search lets go */
        sh_view_install(sh, nv);
    } else {
        rc = -ENOMEM; /* the manifest changed: the next open serves the new state */
    }
    pthread_mutex_unlock(&sh->wmu);
    /* The purged versions' tombstones go when the last view holding their segment does
     * (sh_segref_unref): until then a search on an older view still walks those segments
     * and must still know the versions dead, or they would take places in its top k. The
     * compaction's own view holds every picked segment, so none is released before this. */
    for (uint32_t s = 0; s < np && !rc; s++) {
        size_t n = purged_at[s + 1] - purged_at[s];
        if (n == 0)
            continue;
        uint64_t *own = malloc(sizeof *own * n);
        if (!own) {
            rc = sh_tomb_remove_sorted(sh, purged + purged_at[s], n); /* no memory: drop them now */
            continue;
        }
        memcpy(own, purged + purged_at[s], sizeof *own * n);
        pick[s]->purge = own;
        pick[s]->npurge = n;
    }
    if (!rc) {
        atomic_fetch_add(&sh->compactions, 1);
        atomic_fetch_add(&sh->compact_ns, nl_now_ns() - t0);
        atomic_fetch_add(&sh->compact_bytes, r ? r->file_bytes : 0);
        if (rep) {
            rep->segments_out += r != NULL;
            rep->points_out += nout - (r ? atomic_load(&r->dead) : 0);
            rep->purged += npurged;
            rep->bytes_out += r ? r->file_bytes : 0;
        }
    }
out:
    sh_segref_unref(r);
    nl_vamana_destroy(ix);
    free(base_dead);
    free(vecs);
    free(pids);
    free(order);
    free(mcodes);
    free(purged);
    free(purged_at);
    free(pick);
    sh_view_release(v);
    return rc;
}

int nl_shard_compact(nl_shard *sh, nl_compact_mode mode, int dry_run, nl_compact_report *rep)
{
    pthread_mutex_lock(&sh->cmu);
    int rc = compact_locked(sh, mode, dry_run, rep);
    pthread_mutex_unlock(&sh->cmu);
    return rc;
}

/* ---------------------------------------------------------------- verify */

#define PROBLEM(...)                                                                                                   \
    do {                                                                                                               \
        r.problems++;                                                                                                  \
        if (!rc)                                                                                                       \
            rc = nl_fail(NL_ECORRUPT, __VA_ARGS__);                                                                    \
    } while (0)

int nl_shard_verify(nl_shard *sh, nl_verify_report *out)
{
    nl_verify_report r = {0};
    int rc = 0;
    pthread_mutex_lock(&sh->cmu); /* no flush or compaction changes the segments meanwhile */
    pthread_mutex_lock(&sh->fmu);
    sh_view *v = sh_view_acquire(sh);
    for (uint32_t i = 0; i < v->nseg; i++) {
        nl_segment_verify_report sr;
        int s = nl_segment_verify(v->segs[i]->seg, &sr);
        r.segments_checked++;
        r.sectors_checked += sr.sectors_checked;
        if (s == NL_ECORRUPT)
            PROBLEM("segment %u: %s", v->segs[i]->number, nl_errdetail());
        else if (s && !rc)
            rc = s;
    }
    /* Every id maps to a live version whose inverse record names it back and whose vector
     * is somewhere: the fresh vectors or a segment. */
    nl_store_iter *it = NULL;
    int s = nl_store_iter_create(sh->st, NL_CF_IDMAP, &it);
    if (s && !rc)
        rc = s;
    if (it)
        nl_store_iter_seek_first(it);
    for (; it && nl_store_iter_valid(it) && r.problems < 100; nl_store_iter_next(it)) {
        size_t kl, vl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        const unsigned char *val = nl_store_iter_value(it, &vl);
        r.ids_checked++;
        if (vl != 8 || kl < 2 || kl > NL_EKEY_MAX) {
            PROBLEM("id map entry of %zu/%zu bytes", kl, vl);
            continue;
        }
        uint64_t pid = sh_pid_from_key(val);
        void *back;
        size_t bl;
        int g = nl_store_get(sh->st, NL_CF_PIDS, val, 8, &back, &bl);
        if (g == 0) {
            if (bl != kl || memcmp(back, k, kl) != 0)
                PROBLEM("version %llu names a different id than the id map", (unsigned long long)pid);
            free(back);
        } else {
            PROBLEM("version %llu of the id map has no inverse record", (unsigned long long)pid);
        }
        if (sh_tomb_has(sh, pid))
            PROBLEM("version %llu is in the id map and deleted", (unsigned long long)pid);
        uint32_t ord;
        void *fv;
        size_t fl;
        if (!sh_view_find_segment(v, pid, &ord)) {
            g = nl_store_get(sh->st, NL_CF_FRESH, val, 8, &fv, &fl);
            if (g == 0)
                free(fv);
            else
                PROBLEM("version %llu is neither in a segment nor among the fresh vectors", (unsigned long long)pid);
        }
    }
    if (it && (s = nl_store_iter_status(it)) != 0 && !rc)
        rc = s;
    nl_store_iter_destroy(it);
    /* And the other way: every inverse record is the id map's current version. */
    uint64_t pid_records = 0;
    if ((s = nl_store_iter_create(sh->st, NL_CF_PIDS, &it)) != 0 && !rc)
        rc = s;
    if (!s)
        for (nl_store_iter_seek_first(it); nl_store_iter_valid(it); nl_store_iter_next(it))
            pid_records++;
    nl_store_iter_destroy(it);
    if (!s && pid_records != r.ids_checked)
        PROBLEM("%llu ids but %llu live versions", (unsigned long long)r.ids_checked,
                (unsigned long long)pid_records);
    /* Every tombstone names a version some index still holds (compaction purges the
     * others, and open drops those of versions deleted while fresh). */
    if ((s = nl_store_iter_create(sh->st, NL_CF_TOMBSTONES, &it)) != 0 && !rc)
        rc = s;
    if (!s)
        for (nl_store_iter_seek_first(it); nl_store_iter_valid(it) && r.problems < 100; nl_store_iter_next(it)) {
            size_t kl;
            const unsigned char *k = nl_store_iter_key(it, &kl);
            uint32_t ord;
            if (kl != 8) {
                PROBLEM("tombstone key of %zu bytes", kl);
                continue;
            }
            uint64_t pid = sh_pid_from_key(k);
            if (!sh_view_find_segment(v, pid, &ord) && sh_memidx_find(v->active, pid) < 0 &&
                (!v->frozen || sh_memidx_find(v->frozen, pid) < 0))
                PROBLEM("tombstone of version %llu, which no index holds", (unsigned long long)pid);
        }
    nl_store_iter_destroy(it);
    /* No segment file outside the manifest. */
    DIR *d = opendir(sh->dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        unsigned num;
        if (sscanf(e->d_name, "seg-%u.nls", &num) != 1)
            continue;
        int listed = 0;
        for (uint32_t i = 0; i < v->nseg; i++)
            listed |= v->segs[i]->number == num && !atomic_load(&v->segs[i]->obsolete);
        if (!listed)
            PROBLEM("%s/%s is not in the manifest", sh->dir, e->d_name);
    }
    if (d)
        closedir(d);
    sh_view_release(v);
    pthread_mutex_unlock(&sh->fmu);
    pthread_mutex_unlock(&sh->cmu);
    if (out) {
        out->segments_checked += r.segments_checked;
        out->sectors_checked += r.sectors_checked;
        out->ids_checked += r.ids_checked;
        out->problems += r.problems;
    }
    return rc;
}

/* ---------------------------------------------------------------- maintenance thread */

/* Waits up to 200 ms for a kick or the stop flag; 0 when stopping. */
static int bg_wait(nl_shard *sh)
{
    pthread_mutex_lock(&sh->bgmu);
    if (!sh->bg_stop && !sh->bg_kick) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&sh->bgcv, &sh->bgmu, &ts);
    }
    sh->bg_kick = 0;
    int go = !sh->bg_stop;
    pthread_mutex_unlock(&sh->bgmu);
    return go;
}

static void bg_failed(nl_shard *sh, int rc)
{
    atomic_store(&sh->bg_error, rc);
    /* Do not spin on a persistent error (a full disk): back off. */
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
}

/* Flushes run on their own thread at nice 5: below the writers and searches, whose
 * latency is what clients see (a flush's CPU otherwise lands in their p99; measured in
 * docs/benchmarks.md), above compaction, since writers wait for a flush when the fresh
 * index fills. */
static void *bg_flush_main(void *arg)
{
    nl_shard *sh = arg;
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 5) != 0) { /* best effort */ }
    while (bg_wait(sh)) {
        int rc = sh_flush_due(sh) ? nl_shard_flush(sh) : 0;
        if (rc)
            bg_failed(sh, rc);
    }
    return NULL;
}

/* Compaction is deferrable work: it runs at a lower CPU priority (nice 10, inherited by
 * its build threads), so under sustained ingest it takes the cycles writers and searches
 * leave, and catches up when they pause (the LSM trade: reads pay for more segments
 * meanwhile). */
static void *bg_compact_main(void *arg)
{
    nl_shard *sh = arg;
    if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10) != 0) { /* best effort */ }
    uint64_t deferred_until = 0;
    while (bg_wait(sh)) {
        if (!sh_compaction_due(sh) || nl_now_ns() < deferred_until)
            continue;
        if (sh->opt.compact_gate && sh->opt.compact_gate(sh->opt.compact_gate_ctx, sh->dir, 1) != 0) {
            deferred_until = nl_now_ns() + 1000000000ull; /* another replica or shard is compacting */
            continue;
        }
        int rc = nl_shard_compact(sh, NL_COMPACT_POLICY, 0, NULL);
        if (sh->opt.compact_gate)
            sh->opt.compact_gate(sh->opt.compact_gate_ctx, sh->dir, 0);
        if (rc)
            bg_failed(sh, rc);
    }
    return NULL;
}

void sh_kick_background(nl_shard *sh)
{
    if (!sh->bg_running)
        return;
    pthread_mutex_lock(&sh->bgmu);
    sh->bg_kick = 1;
    pthread_cond_broadcast(&sh->bgcv);
    pthread_mutex_unlock(&sh->bgmu);
}

int sh_start_background(nl_shard *sh)
{
    if (sh->opt.no_background)
        return 0;
    int rc = pthread_create(&sh->bg_flush, NULL, bg_flush_main, sh);
    if (rc)
        return nl_fail(-rc, "cannot start the flush thread: %s", strerror(rc));
    /* Named here, before the shard is handed out: ops and fault tests find them by name. */
    pthread_setname_np(sh->bg_flush, "nl-flush");
    if ((rc = pthread_create(&sh->bg_compact, NULL, bg_compact_main, sh)) != 0) {
        pthread_mutex_lock(&sh->bgmu);
        sh->bg_stop = 1;
        pthread_cond_broadcast(&sh->bgcv);
        pthread_mutex_unlock(&sh->bgmu);
        pthread_join(sh->bg_flush, NULL);
        return nl_fail(-rc, "cannot start the compaction thread: %s", strerror(rc));
    }
    pthread_setname_np(sh->bg_compact, "nl-compact");
    sh->bg_running = 1;
    return 0;
}

void sh_stop_background(nl_shard *sh)
{
    if (!sh->bg_running)
        return;
    pthread_mutex_lock(&sh->bgmu);
    sh->bg_stop = 1;
    pthread_cond_broadcast(&sh->bgcv);
    pthread_mutex_unlock(&sh->bgmu);
    pthread_join(sh->bg_flush, NULL);
    pthread_join(sh->bg_compact, NULL);
    sh->bg_running = 0;
}
