/*
 * shard.c — a shard's lifecycle and its writes and reads: config, create, open and
 * recovery, close, upserts, gets and stats. The state every shard_*.c shares (keys,
 * tombstones, the fresh indexes and segment references, the view, validation) is in
 * shard_state.c, below all of them; deletes are in shard_delete.c, flush, compaction
 * and the maintenance threads in shard_maint.c, the operation log in shard_log.c.
 *
 * Ordering that keeps readers correct without blocking them:
 *  - An upsert's batch is durable first; then the versions it replaces are tombstoned in
 *    memory; then slots are reserved in the active fresh index (their pids recorded
 *    before any is reachable); then the vectors are linked, outside the writer lock, so
 *    concurrent upserts build the graph in parallel. A concurrent search may miss a point
 *    being replaced for an instant but never sees two versions of one id.
 *  - Every search result is resolved through the pids column family (pid -> external id),
 *    whose record a delete or replace removes in its batch: the final word on liveness,
 *    so a search on an old view never returns a deleted point even after compaction has
 *    dropped its in-memory tombstone.
 * Lock order: cmu (compaction) -> fmu (flush) -> wmu (writers) -> vmu (view pointer);
 * tmu (tombstone set) is taken alone.
 */
#define _GNU_SOURCE
#include "nl_postings.h"
#include "nl_catalog.h"
#include "shard_internal.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "nl_code_choice.h"
#include "nl_quant.h"


/* ---------------------------------------------------------------- config */

int nl_shard_config_check(nl_shard_config *c)
{
    if (c->dim == 0 || c->dim > 65536 || c->dtype > NL_DTYPE_I8 || c->metric > NL_METRIC_COSINE)
        return nl_fail(NL_EINVAL, "collection config: dim 1..65536, a stored type (f32, f16, u8, i8) and a metric "
                                  "(l2, ip, cosine) are required");
    if (!c->R) c->R = 64;
    if (!c->L) c->L = 100;
    if (!(c->alpha > 0)) c->alpha = 1.2f;
    if (c->code == NL_COLL_CODE_DEFAULT)
        c->code = c->pq_m ? NL_COLL_CODE_PQ : nl_code_default(c->dim);
    if (!c->pq_m) c->pq_m = nl_code_default_pq_m(c->dim);
    if (c->code != NL_COLL_CODE_PQ &&
        (!NL_COLL_CODE_IS_RABITQ(c->code) || NL_COLL_CODE_BITS(c->code) < 1 || NL_COLL_CODE_BITS(c->code) > 8 ||
         c->dim > NL_RABITQ_MAX_DIM))
        return nl_fail(NL_EINVAL, "collection config: the code must be PQ, or RaBitQ of 1..8 bits for at most %u "
                                  "dimensions", NL_RABITQ_MAX_DIM);
    if (!c->fresh_capacity) c->fresh_capacity = 100000;
    if (c->R > 1024 || c->L > 100000 || !(c->alpha >= 1.0f && c->alpha <= 4.0f) ||
        c->pq_m > c->dim || c->fresh_capacity < 16 || c->fresh_capacity > 100000000)
        return nl_fail(NL_EINVAL, "collection config out of range: R 1..1024, L 1..100000, alpha 1..4, "
                                  "pq bytes <= dim, fresh capacity 16..1e8");
    return 0;
}


static int load_config(nl_shard *sh)
{
    void *v;
    size_t vl;
    int rc = nl_store_get(sh->st, NL_CF_MANIFEST, "config", 6, &v, &vl);
    if (rc)
        return rc == NL_ENOTFOUND ? nl_fail(NL_ECORRUPT, "shard has no config in its manifest") : rc;
    uint32_t f[10];
    if (vl != sizeof f) {
        free(v);
        return nl_fail(NL_ECORRUPT, "shard config is %zu bytes", vl);
    }
    memcpy(f, v, sizeof f);
    free(v);
    if (f[0] != CONFIG_VERSION)
        return nl_fail(NL_ECORRUPT, "shard config version %u (this build reads %u)", f[0], CONFIG_VERSION);
    nl_shard_config c = {f[1], (nl_dtype)f[2], (nl_metric)f[3], f[4], f[5], 0, f[7], f[8],
                         f[9] ? f[9] : NL_COLL_CODE_PQ};
    memcpy(&c.alpha, &f[6], 4);
    if (c.dim == 0 || c.R == 0 || c.L == 0 || c.pq_m == 0 || c.fresh_capacity == 0 || nl_shard_config_check(&c) != 0)
        return nl_fail(NL_ECORRUPT, "shard config fields out of range");
    sh->cfg = c;
    uint64_t u[2];
    const char *keys[2] = {"next_pid", "next_seg"};
    for (int i = 0; i < 2; i++) {
        if ((rc = nl_store_get(sh->st, NL_CF_MANIFEST, keys[i], 8, &v, &vl)) != 0 || vl != 8) {
            if (!rc)
                free(v);
            return nl_fail(NL_ECORRUPT, "shard manifest lacks %s", keys[i]);
        }
        memcpy(&u[i], v, 8);
        free(v);
    }
    if (u[1] == 0 || u[1] > 99999999)
        return nl_fail(NL_ECORRUPT, "shard manifest: next segment number %llu", (unsigned long long)u[1]);
    sh->next_pid = u[0];
    sh->next_seg = (uint32_t)u[1];
    atomic_store(&sh->seg_alloc, sh->next_seg);
    return 0;
}

static void options_fill(nl_db_options *o, const nl_db_options *in, const nl_shard_config *c)
{
    if (in)
        *o = *in;
    else
        memset(o, 0, sizeof *o);
    if (!o->flush_points || o->flush_points > c->fresh_capacity) o->flush_points = c->fresh_capacity / 2;
    if (!o->flush_points) o->flush_points = 1;
    if (!o->flush_age_ms) o->flush_age_ms = 60000;
    if (!o->write_timeout_ms) o->write_timeout_ms = 30000;
    if (!(o->compact_dead_ratio > 0)) o->compact_dead_ratio = 0.2f;
    if (!o->compact_max_segments) o->compact_max_segments = 8;
    if (!o->cache_budget) o->cache_budget = 32ull << 20;
    if (!o->threads) o->threads = nl_cpu_count();
    if (!o->search_inflight) o->search_inflight = 16;
}

/* ---------------------------------------------------------------- open / create */

/* A shard written before the filter index existed gets its postings built once. */
static int ensure_postings(nl_shard *sh)
{
    void *v;
    size_t vl;
    int rc = nl_store_get(sh->st, NL_CF_MANIFEST, "postings", 8, &v, &vl);
    if (rc == 0) {
        free(v);
        return 0;
    }
    if (rc != NL_ENOTFOUND)
        return rc;
    uint64_t indexed;
    return nl_postings_backfill(sh->st, &indexed);
}

static nl_shard *shard_new(const char *dir)
{
    nl_shard *sh = calloc(1, sizeof *sh);
    if (!sh)
        return NULL;
    snprintf(sh->dir, sizeof sh->dir, "%s", dir);
    if (!(sh->fcache = nl_fcache_create(0))) {
        free(sh);
        return NULL;
    }
    pthread_mutex_init(&sh->wmu, NULL);
    pthread_cond_init(&sh->space, NULL);
    pthread_mutex_init(&sh->vmu, NULL);
    pthread_mutex_init(&sh->fmu, NULL);
    pthread_mutex_init(&sh->cmu, NULL);
    pthread_rwlock_init(&sh->tmu, NULL);
    pthread_mutex_init(&sh->bgmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sh->bgcv, &ca);
    pthread_cond_destroy(&sh->space);
    pthread_cond_init(&sh->space, &ca);
    pthread_condattr_destroy(&ca);
    return sh;
}

static int write_initial_manifest(nl_store *st, const nl_shard_config *cfg, uint64_t next_pid, uint64_t next_seg,
                                  nl_store_batch *b)
{
    uint32_t f[10];
    sh_config_encode(cfg, f);
    nl_store_batch_put(b, NL_CF_MANIFEST, "config", 6, f, sizeof f);
    nl_store_batch_put(b, NL_CF_MANIFEST, "next_pid", 8, &next_pid, 8);
    nl_store_batch_put(b, NL_CF_MANIFEST, "next_seg", 8, &next_seg, 8);
    nl_store_batch_put(b, NL_CF_MANIFEST, "postings", 8, "1", 1);
    (void)st;
    return nl_store_write(b, 1);
}


int nl_shard_create(const char *dir, const nl_shard_config *cfg_in, const nl_db_options *opt, nl_shard **out)
{
    *out = NULL;
    nl_shard_config cfg = *cfg_in;
    int rc = nl_shard_config_check(&cfg);
    if (rc)
        return rc;
    if (mkdir(dir, 0755) != 0)
        return errno == EEXIST ? nl_fail(NL_EEXISTS, "%s exists", dir) : nl_fail(-errno, "%s: %s", dir, strerror(errno));
    nl_shard *sh = shard_new(dir);
    if (!sh)
        return -ENOMEM;
    sh->cfg = cfg;
    options_fill(&sh->opt, opt, &cfg);
    sh->row_bytes = (size_t)cfg.dim * nl_dtype_size(cfg.dtype);
    char meta[4200];
    snprintf(meta, sizeof meta, "%s/meta", dir);
    if ((rc = nl_store_open(meta, 1, &sh->st)) != 0)
        goto fail;
    /* RocksDB syncs what it puts in meta/, not meta's own entry in the shard directory. */
    if ((rc = nl_fsync_dir(dir)) != 0) {
        nl_fail(rc, "cannot sync %s: %s", dir, strerror(-rc));
        goto fail;
    }
    sh->next_pid = 0;
    sh->next_seg = 1;
    sh->log_first = 1;
    atomic_store(&sh->seg_alloc, 1);
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!b) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = write_initial_manifest(sh->st, &cfg, 0, 1, b);
    nl_store_batch_destroy(b);
    sh_memidx *m = NULL;
    if (rc || (rc = sh_memidx_create(sh, cfg.fresh_capacity, &m)) != 0)
        goto fail;
    sh->view = sh_view_make(m, NULL, NULL, 0);
    sh_memidx_unref(m);
    if (!sh->view) {
        rc = -ENOMEM;
        goto fail;
    }
    if ((rc = sh_start_background(sh)) != 0)
        goto fail;
    *out = sh;
    return 0;
fail:
    nl_shard_close(sh);
    return rc;
}

/* Removes segment files the manifest does not list (a flush or compaction that died
 * before its manifest batch, or after it but before unlinking what it replaced) and
 * temporary files of interrupted writes. */
static int remove_orphans(nl_shard *sh, const uint32_t *live, size_t nlive)
{
    DIR *d = opendir(sh->dir);
    if (!d)
        return nl_fail(-errno, "%s: %s", sh->dir, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        unsigned num;
        char tail[8];
        int orphan = 0;
        if (strncmp(e->d_name, "seg-", 4) != 0)
            continue;
        if (strstr(e->d_name, ".tmp"))
            orphan = 1;
        else if (sscanf(e->d_name, "seg-%u.nl%1[s]", &num, tail) == 2) {
            orphan = 1;
            for (size_t i = 0; i < nlive; i++)
                if (live[i] == num)
                    orphan = 0;
        }
        if (orphan) {
            char p[4400];
            snprintf(p, sizeof p, "%s/%s", sh->dir, e->d_name);
            if (unlink(p) != 0 && errno != ENOENT)
                rc = nl_fail(-errno, "cannot remove orphaned %s: %s", p, strerror(errno));
            else
                sh->orphans_removed++;
        }
    }
    closedir(d);
    return rc;
}

static int recover_segments(nl_shard *sh, sh_segref ***segs_out, uint32_t *nseg_out)
{
    *segs_out = NULL;
    *nseg_out = 0;
    nl_store_iter *it;
    int rc = nl_store_iter_create(sh->st, NL_CF_MANIFEST, &it);
    if (rc)
        return rc;
    uint32_t *nums = NULL;
    uint64_t (*recs)[3] = NULL;
    size_t n = 0, cap = 0;
    for (nl_store_iter_seek(it, "seg/", 4); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl, vl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        const void *v = nl_store_iter_value(it, &vl);
        if (kl < 4 || memcmp(k, "seg/", 4) != 0)
            break;
        if (kl != 8 || vl != 24) {
            rc = nl_fail(NL_ECORRUPT, "manifest segment record of %zu/%zu bytes", kl, vl);
            break;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint32_t *nn = realloc(nums, cap * sizeof *nn);
            if (nn) nums = nn;
            uint64_t(*nr)[3] = realloc(recs, cap * sizeof *nr);
            if (nr) recs = nr;
            if (!nn || !nr) {
                rc = -ENOMEM;
                break;
            }
        }
        nums[n] = (uint32_t)sh_pid_from_key((const unsigned char[8]){0, 0, 0, 0, k[4], k[5], k[6], k[7]});
        memcpy(recs[n], v, 24);
        n++;
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    sh_segref **segs = NULL;
    if (!rc && n) {
        segs = calloc(n, sizeof *segs);
        if (!segs)
            rc = -ENOMEM;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < n && !rc; i++)
        total += recs[i][0];
    for (size_t i = 0; i < n && !rc; i++) {
        /* The cache budget is shared in proportion to the points a segment holds. */
        uint64_t budget = total ? (uint64_t)((double)sh->opt.cache_budget * (double)recs[i][0] / (double)total) : 0;
        if ((rc = sh_segref_open(sh, nums[i], budget, &segs[i])) != 0) {
            char why[400];
            snprintf(why, sizeof why, "%s", nl_errdetail()[0] ? nl_errdetail() : nl_strerror(rc));
            rc = nl_fail(rc == -ENOENT ? NL_ECORRUPT : rc,
                         "the manifest lists segment %u, which cannot be opened (%s); the shard was left as it "
                         "is, nothing deleted", nums[i], why);
            break;
        }
        if (segs[i]->count != recs[i][0])
            rc = nl_fail(NL_ECORRUPT, "segment %u holds %llu points, the manifest says %llu", nums[i],
                         (unsigned long long)segs[i]->count, (unsigned long long)recs[i][0]);
    }
    /* Orphans go only once every listed segment has opened: a manifest that names a file
     * which is not there means the state on disk is not one this code wrote, and deleting
     * anything then could only lose more (the open fails and leaves every file). */
    if (!rc)
        rc = remove_orphans(sh, nums, n);
    if (rc) {
        for (size_t i = 0; segs && i < n; i++)
            sh_segref_unref(segs[i]);
        free(segs);
        segs = NULL;
        n = 0;
    }
    free(nums);
    free(recs);
    *segs_out = segs;
    *nseg_out = (uint32_t)n;
    return rc;
}


int nl_shard_open(const char *dir, const nl_db_options *opt, nl_shard **out)
{
    *out = NULL;
    nl_shard *sh = shard_new(dir);
    if (!sh)
        return -ENOMEM;
    char meta[4200];
    snprintf(meta, sizeof meta, "%s/meta", dir);
    sh_segref **segs = NULL;
    uint32_t nseg = 0;
    unsigned char *vecs = NULL;
    uint64_t *pids = NULL;
    sh_memidx *m = NULL;
    nl_store_iter *it = NULL;
    uint64_t *loose = NULL; /* tombstoned versions in no segment, ascending */
    size_t nloose = 0, loose_cap = 0;
    uint64_t rolled_back = 0;
    int rc = nl_store_open(meta, 0, &sh->st);
    if (rc || (rc = nl_shard_import_recover(sh->st, &rolled_back)) != 0 || (rc = load_config(sh)) != 0 ||
        (rc = ensure_postings(sh)) != 0 || (rc = sh_log_load(sh)) != 0)
        goto fail;
    options_fill(&sh->opt, opt, &sh->cfg);
    sh->row_bytes = (size_t)sh->cfg.dim * nl_dtype_size(sh->cfg.dtype);
    if ((rc = recover_segments(sh, &segs, &nseg)) != 0)
        goto fail;

    /* Tombstones: the in-memory set, and each segment's count of deleted points. */
    if ((rc = nl_store_iter_create(sh->st, NL_CF_TOMBSTONES, &it)) != 0)
        goto fail;
    /* Nothing else can reach the shard yet: the lock is for the set's invariant only. */
    pthread_rwlock_wrlock(&sh->tmu);
    for (nl_store_iter_seek_first(it); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        if (kl != 8) {
            rc = nl_fail(NL_ECORRUPT, "tombstone key of %zu bytes", kl);
            break;
        }
        uint64_t pid = sh_pid_from_key(k);
        if ((rc = sh_tomb_add_locked(sh, pid)) != 0)
            break;
        uint32_t ord, i;
        for (i = 0; i < nseg; i++)
            if (nl_segment_find(segs[i]->seg, pid, &ord) == 0) {
                atomic_fetch_add(&segs[i]->dead, 1);
                break;
            }
        if (i == nseg) { /* not in a segment: in the fresh vectors, or nowhere (below) */
            if (nloose == loose_cap) {
                loose_cap = loose_cap ? loose_cap * 2 : 256;
                uint64_t *nl2 = realloc(loose, loose_cap * sizeof *loose);
                if (!nl2) {
                    rc = -ENOMEM;
                    break;
                }
                loose = nl2;
            }
            loose[nloose++] = pid;
        }
    }
    pthread_rwlock_unlock(&sh->tmu);
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    it = NULL;
    if (rc)
        goto fail;

    /* The fresh vectors, in pid order, into one fresh index (it may hold up to twice the
     * capacity when a crash interrupted a flush; the maintenance thread flushes it). */
    size_t nf = 0, capf = 0;
    if ((rc = nl_store_iter_create(sh->st, NL_CF_FRESH, &it)) != 0)
        goto fail;
    for (nl_store_iter_seek_first(it); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl, vl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        const void *v = nl_store_iter_value(it, &vl);
        if (kl != 8 || vl != sh->row_bytes) {
            rc = nl_fail(NL_ECORRUPT, "fresh vector record of %zu bytes (expected %zu)", vl, sh->row_bytes);
            break;
        }
        if (nf == capf) {
            capf = capf ? capf * 2 : 1024;
            unsigned char *nv = realloc(vecs, capf * sh->row_bytes);
            if (nv) vecs = nv;
            uint64_t *np = realloc(pids, capf * sizeof *np);
            if (np) pids = np;
            if (!nv || !np) {
                rc = -ENOMEM;
                break;
            }
        }
        pids[nf] = sh_pid_from_key(k);
        if (pids[nf] >= sh->next_pid) {
            rc = nl_fail(NL_ECORRUPT, "fresh vector of version %llu beyond the next version %llu",
                         (unsigned long long)pids[nf], (unsigned long long)sh->next_pid);
            break;
        }
        memcpy(vecs + nf * sh->row_bytes, v, sh->row_bytes);
        nf++;
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    it = NULL;
    if (rc)
        goto fail;
    /* A version deleted while it was fresh lost its vector with the delete, so after a
     * restart its tombstone names nothing: drop such tombstones (durably). */
    if (nloose) {
        size_t nor = 0;
        for (size_t i = 0; i < nloose; i++) {
            size_t lo = 0, hi = nf;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (pids[mid] < loose[i]) lo = mid + 1; else hi = mid;
            }
            if (lo == nf || pids[lo] != loose[i])
                loose[nor++] = loose[i]; /* loose is ascending: the iterator's key order */
        }
        if (nor) {
            nl_store_batch *b = nl_store_batch_create(sh->st);
            if (!b) {
                rc = -ENOMEM;
                goto fail;
            }
            for (size_t i = 0; i < nor; i++) {
                unsigned char pk[8];
                sh_pid_key(loose[i], pk);
                nl_store_batch_delete(b, NL_CF_TOMBSTONES, pk, 8);
            }
            rc = nl_store_write(b, 1);
            nl_store_batch_destroy(b);
            if (rc || (rc = sh_tomb_remove_sorted(sh, loose, nor)) != 0)
                goto fail;
        }
    }
    uint32_t mcap = nf > sh->cfg.fresh_capacity ? (uint32_t)nf : sh->cfg.fresh_capacity;
    if ((rc = sh_memidx_create(sh, mcap, &m)) != 0)
        goto fail;
    uint32_t first = 0;
    if (nf) {
        if ((rc = nl_vamana_reserve(m->ix, nf, &first)) != 0)
            goto fail;
        memcpy(m->slot_pid, pids, nf * sizeof *pids);
        m->born_ns = nl_now_ns();
        sh_fill fill = {m->ix, vecs, sh->row_bytes, first};
        /* Slot 0 first (the entry point), then the rest in parallel. */
        if ((rc = sh_fill_task(&fill, 0, 0)) != 0)
            goto fail;
        fill.first = 1;
        fill.vecs = vecs + sh->row_bytes;
        if (nf > 1 && (rc = nl_parallel_for(nf - 1, sh->opt.threads, sh_fill_task, &fill)) != 0)
            goto fail;
    }
    /* Live points: fresh versions and segment versions, less the deleted. */
    uint64_t live = 0;
    pthread_rwlock_rdlock(&sh->tmu);
    for (size_t i = 0; i < nf; i++)
        live += !sh_tomb_has_locked(sh, pids[i]);
    pthread_rwlock_unlock(&sh->tmu);
    for (uint32_t i = 0; i < nseg; i++)
        live += segs[i]->count - atomic_load(&segs[i]->dead);
    __atomic_store_n(&sh->live, live, __ATOMIC_RELAXED);
    sh->view = sh_view_make(m, NULL, segs, nseg);
    if (!sh->view) {
        rc = -ENOMEM;
        goto fail;
    }
    sh_memidx_unref(m);
    m = NULL;
    for (uint32_t i = 0; i < nseg; i++)
        sh_segref_unref(segs[i]);
    free(segs);
    segs = NULL;
    free(vecs);
    free(pids);
    free(loose);
    vecs = NULL;
    pids = NULL;
    loose = NULL;
    if ((rc = sh_start_background(sh)) != 0)
        goto fail;
    *out = sh;
    return 0;
fail:
    nl_store_iter_destroy(it);
    sh_memidx_unref(m);
    for (uint32_t i = 0; i < nseg; i++)
        sh_segref_unref(segs[i]);
    free(segs);
    free(vecs);
    free(pids);
    free(loose);
    nl_shard_close(sh);
    return rc;
}

void nl_shard_close(nl_shard *sh)
{
    if (!sh)
        return;
    sh_stop_background(sh);
    sh_view_release(sh->view);
    nl_quant_destroy(sh->flush_pq);
    nl_fcache_destroy(sh->fcache);
    nl_store_close(sh->st);
    free(sh->tomb);
    pthread_mutex_destroy(&sh->wmu);
    pthread_cond_destroy(&sh->space);
    pthread_mutex_destroy(&sh->vmu);
    pthread_mutex_destroy(&sh->fmu);
    pthread_mutex_destroy(&sh->cmu);
    pthread_rwlock_destroy(&sh->tmu);
    pthread_mutex_destroy(&sh->bgmu);
    pthread_cond_destroy(&sh->bgcv);
    free(sh);
}

void nl_shard_get_config(const nl_shard *sh, nl_shard_config *cfg) { *cfg = sh->cfg; }

/* ---------------------------------------------------------------- writes */


static int wait_for_room(nl_shard *sh, size_t n)
{
    if (n > sh->cfg.fresh_capacity)
        return nl_fail(NL_EINVAL, "a batch of %zu points exceeds the fresh capacity of %u: split it", n,
                       sh->cfg.fresh_capacity);
    uint64_t deadline = nl_now_ns() + (uint64_t)sh->opt.write_timeout_ms * 1000000ull;
    int waited = 0;
    for (;;) {
        sh_memidx *a = sh->view->active;
        if (nl_vamana_reserved(a->ix) + n <= a->cap)
            return 0;
        if (!waited) {
            waited = 1;
            atomic_fetch_add(&sh->write_waits, 1);
        }
        if (!sh->bg_running) {
            /* No maintenance thread: this writer flushes. */
            pthread_mutex_unlock(&sh->wmu);
            int rc = nl_shard_flush(sh);
            pthread_mutex_lock(&sh->wmu);
            if (rc)
                return rc;
            continue;
        }
        sh_kick_background(sh);
        uint64_t now = nl_now_ns();
        if (now >= deadline)
            return nl_fail(-ETIMEDOUT, "the fresh index stayed full for %u ms (flushes are behind); retry later",
                           sh->opt.write_timeout_ms);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t wait_ns = deadline - now < 100000000ull ? deadline - now : 100000000ull;
        ts.tv_sec += (time_t)(wait_ns / 1000000000ull);
        ts.tv_nsec += (long)(wait_ns % 1000000000ull);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&sh->space, &sh->wmu, &ts);
    }
}



int nl_shard_upsert(nl_shard *sh, const nl_point *pts, size_t n) { return sh_upsert(sh, pts, n, NULL); }

int sh_upsert(nl_shard *sh, const nl_point *pts, size_t n, sh_logrec *lr)
{
    if (n == 0)
        return 0;
    /* Validate everything and convert the vectors before touching any state. */
    unsigned char *vecs = malloc(sh->row_bytes * n);
    unsigned char *ekeys = malloc((size_t)NL_EKEY_MAX * n);
    size_t *eklen = malloc(sizeof(size_t) * n);
    uint64_t *old = calloc(n, sizeof(uint64_t));
    unsigned char *has_old = calloc(n, 1);
    int rc = 0;
    if (!vecs || !ekeys || !eklen || !old || !has_old) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        if ((rc = sh_check_point(sh, &pts[i], i, vecs + i * sh->row_bytes)) != 0)
            break;
        eklen[i] = nl_ekey_encode(&pts[i].id, ekeys + i * NL_EKEY_MAX);
    }
    if (!rc)
        rc = sh_space_check(sh, 0);
    if (rc)
        goto out;
    pthread_mutex_lock(&sh->wmu);
    if ((rc = wait_for_room(sh, n)) != 0) {
        pthread_mutex_unlock(&sh->wmu);
        goto out;
    }
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!b) {
        pthread_mutex_unlock(&sh->wmu);
        rc = -ENOMEM;
        goto out;
    }
    uint64_t first_pid = sh->next_pid;
    uint64_t new_live = sh->live;
    for (size_t i = 0; i < n && !rc; i++) {
        const unsigned char *ek = ekeys + i * NL_EKEY_MAX;
        uint64_t pid = first_pid + i;
        /* The version this one replaces: an earlier point of this batch, else the store. */
        for (size_t j = i; j-- > 0;)
            if (eklen[j] == eklen[i] && memcmp(ekeys + j * NL_EKEY_MAX, ek, eklen[i]) == 0) {
                old[i] = first_pid + j;
                has_old[i] = 1;
                break;
            }
        int found = 0;
        if (!has_old[i]) {
            if ((rc = sh_lookup_pid(sh, ek, eklen[i], &old[i], &found)) != 0)
                break;
            has_old[i] = (unsigned char)found;
        }
        unsigned char pk[8];
        if (has_old[i]) {
            /* The replaced version's postings go with it: from this batch, or the store. */
            if (old[i] >= first_pid) {
                const nl_point *op = &pts[old[i] - first_pid];
                rc = nl_postings_write(b, old[i], op->metadata, op->metadata_len, 0);
            } else {
                rc = sh_drop_stored_postings(sh, b, ek, eklen[i], old[i]);
            }
            if (rc)
                break;
            sh_pid_key(old[i], pk);
            nl_store_batch_put(b, NL_CF_TOMBSTONES, pk, 8, "", 0);
            nl_store_batch_delete(b, NL_CF_FRESH, pk, 8);
            nl_store_batch_delete(b, NL_CF_PIDS, pk, 8);
        } else {
            new_live++;
        }
        sh_pid_key(pid, pk);
        nl_store_batch_put(b, NL_CF_IDMAP, ek, eklen[i], pk, 8);
        nl_store_batch_put(b, NL_CF_PIDS, pk, 8, ek, eklen[i]);
        nl_store_batch_put(b, NL_CF_FRESH, pk, 8, vecs + i * sh->row_bytes, sh->row_bytes);
        if (pts[i].metadata) {
            nl_store_batch_put(b, NL_CF_META, ek, eklen[i], pts[i].metadata, pts[i].metadata_len);
            if ((rc = nl_postings_write(b, pid, pts[i].metadata, pts[i].metadata_len, 1)) != 0)
                break;
        } else
            nl_store_batch_delete(b, NL_CF_META, ek, eklen[i]);
    }
    uint64_t next = first_pid + n;
    if (!rc) {
        nl_store_batch_put(b, NL_CF_MANIFEST, "next_pid", 8, &next, 8);
        if (!lr || (rc = sh_log_stage_locked(sh, b, lr)) == 0)
            rc = nl_store_write(b, 1);
    }
    nl_store_batch_destroy(b);
    if (rc) {
        pthread_mutex_unlock(&sh->wmu);
        goto out;
    }
    if (lr)
        sh_log_commit_locked(sh, lr);
    sh->next_pid = next;
    __atomic_store_n(&sh->live, new_live, __ATOMIC_RELAXED); /* searches read it without wmu */
    atomic_fetch_add(&sh->upserted, n);
    /* Durable. Hide the replaced versions, then reserve slots for the new ones (their
     * pids in place before any becomes reachable). The reservation cannot fail:
     * wait_for_room checked the room and only writers, serialised here, reserve. */
    rc = sh_add_tombstones_locked(sh, old, has_old, n);
    sh_memidx *m = sh->view->active;
    uint32_t first = 0;
    if (!rc)
        rc = nl_vamana_reserve(m->ix, n, &first);
    if (rc) {
        pthread_mutex_unlock(&sh->wmu);
        goto out; /* durable but not yet searchable: recovery at the next open links it */
    }
    if (first == 0)
        m->born_ns = nl_now_ns();
    for (size_t i = 0; i < n; i++)
        m->slot_pid[first + i] = first_pid + i;
    atomic_fetch_add(&m->refs, 1);
    pthread_rwlock_rdlock(&m->ins); /* a flush of m waits for this insert to finish */
    int due = nl_vamana_reserved(m->ix) >= sh->opt.flush_points;
    pthread_mutex_unlock(&sh->wmu);
    if (lr && lr->durable)
        lr->durable(lr->ctx, lr->seq); /* replication ships it while the links are built */
    /* The batch's links are built on several threads: the batch is acknowledged in
     * about its work divided by the cores, not its work. Only scratch allocation can
     * fail here; the point is durable and the flush's seal links its slot. */
    sh_fill fill = {m->ix, vecs, sh->row_bytes, first};
    unsigned threads = n >= 8 ? sh->opt.threads : 1;
    rc = nl_parallel_for(n, threads, sh_fill_task, &fill);
    pthread_rwlock_unlock(&m->ins);
    sh_memidx_unref(m);
    if (due)
        sh_kick_background(sh);
out:
    free(vecs);
    free(ekeys);
    free(eklen);
    free(old);
    free(has_old);
    return rc;
}

/* ---------------------------------------------------------------- reads */

/* The stored vector of version pid, looked up in the fresh column family, then the
 * view's segments, then the frozen index (a flush may have dropped the fresh record
 * after the view was taken; the frozen index is complete by then). */
static int read_version(nl_shard *sh, uint64_t pid, void *row)
{
    sh_view *v = sh_view_acquire(sh);
    unsigned char pk[8];
    sh_pid_key(pid, pk);
    void *val;
    size_t vl;
    int rc = nl_store_get(sh->st, NL_CF_FRESH, pk, 8, &val, &vl);
    if (rc == 0) {
        if (vl == sh->row_bytes)
            memcpy(row, val, vl);
        else
            rc = nl_fail(NL_ECORRUPT, "fresh vector record of %zu bytes", vl);
        free(val);
    } else if (rc == NL_ENOTFOUND) {
        uint32_t ord;
        sh_segref *r = sh_view_find_segment(v, pid, &ord);
        long slot;
        if (r)
            rc = nl_segment_read_vectors(r->seg, ord, 1, row);
        else if (v->frozen && (slot = sh_memidx_find(v->frozen, pid)) >= 0)
            rc = (memcpy(row, nl_vecset_row(nl_vamana_vectors(v->frozen->ix), (size_t)slot), sh->row_bytes), 0);
        else
            rc = nl_fail(NL_ENOTFOUND, "no point with that id"); /* deleted meanwhile */
    }
    sh_view_release(v);
    return rc;
}

/* The stored metadata of ekey as a NUL-terminated copy (*meta NULL when there is none). */
static int read_metadata(nl_shard *sh, const unsigned char *ek, size_t ekl, char **meta, size_t *len)
{
    *meta = NULL;
    *len = 0;
    void *m;
    size_t ml;
    int rc = nl_store_get(sh->st, NL_CF_META, ek, ekl, &m, &ml);
    if (rc == NL_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    char *s = realloc(m, ml + 1);
    if (!s) {
        free(m);
        return -ENOMEM;
    }
    s[ml] = '\0';
    *meta = s;
    *len = ml;
    return 0;
}

int nl_shard_get(nl_shard *sh, const nl_id *id, float *vec, char **meta, size_t *meta_len)
{
    if (meta) *meta = NULL;
    if (meta_len) *meta_len = 0;
    int rc = sh_check_id(id, 0);
    if (rc)
        return rc;
    unsigned char ek[NL_EKEY_MAX];
    size_t ekl = nl_ekey_encode(id, ek);
    uint64_t pid;
    int found;
    if ((rc = sh_lookup_pid(sh, ek, ekl, &pid, &found)) != 0)
        return rc;
    if (!found)
        return nl_fail(NL_ENOTFOUND, "no point with that id");
    if (vec) {
        unsigned char *row = malloc(sh->row_bytes);
        if (!row)
            return -ENOMEM;
        rc = read_version(sh, pid, row);
        if (!rc)
            nl_convert_to_f32(sh->cfg.dtype, row, vec, sh->cfg.dim);
        free(row);
        if (rc)
            return rc;
    }
    if (meta) {
        size_t ml;
        rc = read_metadata(sh, ek, ekl, meta, &ml);
        if (!rc && meta_len)
            *meta_len = ml;
    }
    return rc;
}

int nl_shard_get_metadata(nl_shard *sh, const nl_id *id, char **meta, size_t *meta_len)
{
    *meta = NULL;
    *meta_len = 0;
    int rc = sh_check_id(id, 0);
    if (rc)
        return rc;
    unsigned char ek[NL_EKEY_MAX];
    size_t ekl = nl_ekey_encode(id, ek);
    return read_metadata(sh, ek, ekl, meta, meta_len);
}

/* ---------------------------------------------------------------- stats */

void nl_shard_stats(nl_shard *sh, nl_collection_stats *st)
{
    memset(st, 0, sizeof *st);
    pthread_mutex_lock(&sh->wmu);
    st->points = __atomic_load_n(&sh->live, __ATOMIC_RELAXED);
    sh_view *v = sh_view_acquire(sh);
    pthread_mutex_unlock(&sh->wmu);
    st->fresh_points = nl_vamana_reserved(v->active->ix) + (v->frozen ? nl_vamana_reserved(v->frozen->ix) : 0);
    st->ram_bytes = st->fresh_points * (sh->row_bytes + 4ull * sh->cfg.R + 8);
    st->segments = v->nseg;
    st->direct_io = 1;
    for (uint32_t i = 0; i < v->nseg; i++) {
        st->cached_nodes += v->segs[i]->cached_nodes;
        st->seed_members += v->segs[i]->seed_members;
        st->block_layout_points += v->segs[i]->block_layout ? v->segs[i]->count : 0;
        st->direct_io &= v->segs[i]->direct_io;
        st->segment_points += v->segs[i]->count;
        st->disk_bytes += v->segs[i]->file_bytes;
        st->ram_bytes += v->segs[i]->ram_bytes;
    }
    sh_view_release(v);
    pthread_rwlock_rdlock(&sh->tmu);
    st->tombstones = sh->tomb_n;
    pthread_rwlock_unlock(&sh->tmu);
    st->flushes = atomic_load(&sh->flushes);
    st->compactions = atomic_load(&sh->compactions);
    st->flush_seconds = (double)atomic_load(&sh->flush_ns) / 1e9;
    st->compaction_seconds = (double)atomic_load(&sh->compact_ns) / 1e9;
    st->flush_bytes = atomic_load(&sh->flush_bytes);
    st->compaction_bytes = atomic_load(&sh->compact_bytes);
    st->write_waits = atomic_load(&sh->write_waits);
    st->search_retries = atomic_load(&sh->search_retries);
    st->search_exhaustive = atomic_load(&sh->search_exhaustive);
    st->background_error = atomic_load(&sh->bg_error);
    st->failed_shards = nl_shard_failed(sh, NULL, 0) != 0;
    nl_store_stats ss;
    if (nl_store_stats_get(sh->st, &ss) == 0) {
        st->store_sst_bytes = ss.sst_bytes;
        st->store_memtable_bytes = ss.memtable_bytes;
        st->store_pending_compaction_bytes = ss.pending_compaction_bytes;
        st->store_running_compactions = ss.running_compactions;
        st->store_keys = ss.keys;
        st->store_block_cache_bytes = ss.block_cache_bytes;
    }
}
