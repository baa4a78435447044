/*
 * shard_state.c — the state a shard's files share, below every shard_*.c: the key
 * encodings (external ids, pids, segment numbers), the in-memory tombstone set, the
 * parts a search holds (fresh indexes, segment references) and the view that binds them,
 * and the validation of points before anything is written.
 *
 * Invariants:
 *  - A view, a fresh index and a segment reference live while their count is >= 1; the
 *    shard holds one reference to its current view, and a view one to each of its parts.
 *    The last release frees (a segment replaced by a compaction is unlinked then).
 *  - The tombstone set holds the pid of every deleted or replaced version some index
 *    still holds; it is changed under tmu (written) with wmu held, and read under tmu.
 *  - A view is installed under vmu with wmu held (flush and compaction install theirs
 *    under it), so a writer that holds wmu reads sh->view without taking vmu.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "nl_postings.h"
#include "shard_internal.h"

/* ---------------------------------------------------------------- encodings */

size_t nl_ekey_encode(const nl_id *id, unsigned char *out)
{
    if (!id->is_str) {
        out[0] = 1;
        for (int i = 0; i < 8; i++)
            out[1 + i] = (unsigned char)(id->num >> (56 - 8 * i));
        return 9;
    }
    out[0] = 2;
    memcpy(out + 1, id->str, id->len);
    return 1 + id->len;
}

int sh_hit_from_ekey(const unsigned char *k, size_t len, nl_hit *h)
{
    float d = h->dist;
    memset(h, 0, sizeof *h);
    h->dist = d;
    if (len == 9 && k[0] == 1) {
        for (int i = 0; i < 8; i++)
            h->num = (h->num << 8) | k[1 + i];
        return 0;
    }
    if (len >= 2 && len <= NL_EKEY_MAX && k[0] == 2) {
        h->is_str = 1;
        h->len = len - 1;
        memcpy(h->str, k + 1, h->len);
        return 0;
    }
    return nl_fail(NL_ECORRUPT, "stored external id of %zu bytes is malformed", len);
}

void sh_pid_key(uint64_t pid, unsigned char out[8])
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(pid >> (56 - 8 * i));
}

uint64_t sh_pid_from_key(const unsigned char k[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | k[i];
    return v;
}

void sh_seg_key(uint32_t number, unsigned char out[8])
{
    memcpy(out, "seg/", 4);
    for (int i = 0; i < 4; i++)
        out[4 + i] = (unsigned char)(number >> (24 - 8 * i));
}

/* ---------------------------------------------------------------- tombstones */

static inline size_t tomb_hash(uint64_t pid, size_t cap) { return (size_t)(pid * 0x9e3779b97f4a7c15ull) & (cap - 1); }

int sh_tomb_has_locked(const nl_shard *sh, uint64_t pid)
{
    NL_ASSERT_HELD_RW((pthread_rwlock_t *)&sh->tmu);
    if (!sh->tomb_cap)
        return 0;
    size_t h = tomb_hash(pid, sh->tomb_cap);
    while (sh->tomb[h] != TOMB_EMPTY) {
        if (sh->tomb[h] == pid)
            return 1;
        h = (h + 1) & (sh->tomb_cap - 1);
    }
    return 0;
}

int sh_tomb_has(nl_shard *sh, uint64_t pid)
{
    pthread_rwlock_rdlock(&sh->tmu);
    int r = sh_tomb_has_locked(sh, pid);
    pthread_rwlock_unlock(&sh->tmu);
    return r;
}

static int tomb_rehash(nl_shard *sh, size_t nc, const uint64_t *drop, size_t ndrop)
{
    uint64_t *nt = malloc(nc * sizeof *nt);
    if (!nt)
        return -ENOMEM;
    memset(nt, 0xff, nc * sizeof *nt);
    size_t kept = 0;
    for (size_t i = 0; i < sh->tomb_cap; i++) {
        uint64_t p = sh->tomb[i];
        if (p == TOMB_EMPTY)
            continue;
        if (ndrop) { /* drop is sorted */
            size_t lo = 0, hi = ndrop;
            while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if (drop[mid] < p) lo = mid + 1; else hi = mid;
            }
            if (lo < ndrop && drop[lo] == p)
                continue;
        }
        size_t h = tomb_hash(p, nc);
        while (nt[h] != TOMB_EMPTY) h = (h + 1) & (nc - 1);
        nt[h] = p;
        kept++;
    }
    free(sh->tomb);
    sh->tomb = nt;
    sh->tomb_cap = nc;
    sh->tomb_n = kept;
    return 0;
}

int sh_tomb_add_locked(nl_shard *sh, uint64_t pid)
{
    NL_ASSERT_HELD_RW(&sh->tmu);
    if ((sh->tomb_n + 1) * 2 > sh->tomb_cap) {
        int rc = tomb_rehash(sh, sh->tomb_cap ? sh->tomb_cap * 2 : 1024, NULL, 0);
        if (rc)
            return rc;
    }
    size_t h = tomb_hash(pid, sh->tomb_cap);
    while (sh->tomb[h] != TOMB_EMPTY) {
        if (sh->tomb[h] == pid)
            return 0;
        h = (h + 1) & (sh->tomb_cap - 1);
    }
    sh->tomb[h] = pid;
    sh->tomb_n++;
    return 0;
}

int sh_tomb_remove_sorted(nl_shard *sh, const uint64_t *pids, size_t n)
{
    if (!n)
        return 0;
    pthread_rwlock_wrlock(&sh->tmu);
    int rc = tomb_rehash(sh, sh->tomb_cap, pids, n);
    pthread_rwlock_unlock(&sh->tmu);
    return rc;
}

/* ---------------------------------------------------------------- components and views */

static void searcher_free(void *p) { nl_vamana_searcher_destroy(p); }
static void seg_searcher_free(void *p) { nl_seg_searcher_destroy(p); }

int sh_memidx_create(const nl_shard *sh, uint32_t capacity, sh_memidx **out)
{
    *out = NULL;
    sh_memidx *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    atomic_init(&m->refs, 1);
    nl_vamana_params vp;
    nl_vamana_params_default(&vp);
    vp.R = sh->cfg.R;
    vp.L = sh->cfg.L;
    vp.alpha = sh->cfg.alpha;
    int rc = nl_vamana_create_dynamic(sh->cfg.dim, sh->cfg.dtype, sh->cfg.metric, &vp, capacity, &m->ix);
    m->slot_pid = malloc(sizeof(uint64_t) * capacity);
    if (rc || !m->slot_pid) {
        nl_vamana_destroy(m->ix);
        free(m->slot_pid);
        free(m);
        return rc ? rc : -ENOMEM;
    }
    m->cap = capacity;
    pthread_rwlock_init(&m->ins, NULL);
    nl_objpool_init(&m->searchers, searcher_free);
    *out = m;
    return 0;
}

void sh_memidx_unref(sh_memidx *m)
{
    NL_ASSERT(!m || atomic_load(&m->refs) >= 1);
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    nl_objpool_fini(&m->searchers);
    nl_vamana_destroy(m->ix);
    pthread_rwlock_destroy(&m->ins);
    free(m->slot_pid);
    free(m);
}

/* The slot of pid in m (slot pids ascend), or -1. Only filled slots count. */
long sh_memidx_find(const sh_memidx *m, uint64_t pid)
{
    size_t n = nl_vamana_reserved(m->ix);
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->slot_pid[mid] < pid) lo = mid + 1; else hi = mid;
    }
    return lo < n && m->slot_pid[lo] == pid ? (long)lo : -1;
}

int sh_segref_open(nl_shard *sh, uint32_t number, uint64_t cache_budget, sh_segref **out)
{
    *out = NULL;
    sh_segref *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    atomic_init(&r->refs, 1);
    r->owner = sh;
    r->number = number;
    snprintf(r->path, sizeof r->path, "%s/seg-%06u.nls", sh->dir, number);
    nl_segment_options so = {cache_budget, sh->opt.io_pread ? NL_IO_PREAD : NL_IO_AUTO, sh->opt.buffered_io};
    int rc = nl_segment_open(r->path, &so, &r->seg);
    if (rc) {
        free(r);
        return rc;
    }
    nl_segment_info info;
    nl_segment_get_info(r->seg, &info);
    if (info.dim != sh->cfg.dim || info.dtype != sh->cfg.dtype || info.metric != sh->cfg.metric ||
        !nl_segment_ids_ascending(r->seg) || info.count == 0) {
        nl_segment_close(r->seg);
        free(r);
        return nl_fail(NL_ECORRUPT, "segment %u does not match its shard (dimension, type, metric or id order)",
                       number);
    }
    r->count = info.count;
    r->file_bytes = info.file_bytes;
    r->ram_bytes = info.ram_bytes;
    r->cached_nodes = info.cached_nodes;
    r->seed_members = info.seed_members;
    r->block_layout = info.block_layout;
    r->direct_io = info.direct_io;
    nl_objpool_init(&r->searchers, seg_searcher_free);
    *out = r;
    return 0;
}

void sh_segref_unref(sh_segref *r)
{
    NL_ASSERT(!r || atomic_load(&r->refs) >= 1);
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    nl_objpool_fini(&r->searchers);
    nl_segment_close(r->seg);
    if (atomic_load(&r->obsolete))
        unlink(r->path); /* replaced by a compaction and no longer read by anyone */
    if (r->purge) {
        /* No search can reach these versions any more. On failure (no memory for the
         * rehash) the tombstones linger: harmless, pids are never reused. */
        if (sh_tomb_remove_sorted(r->owner, r->purge, r->npurge) != 0) { /* best effort */ }
        free(r->purge);
    }
    free(r);
}

sh_view *sh_view_acquire(nl_shard *sh)
{
    pthread_mutex_lock(&sh->vmu);
    sh_view *v = sh->view;
    NL_ASSERT(atomic_load(&v->refs) >= 1); /* the shard's own reference */
    atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&sh->vmu);
    return v;
}

void sh_view_release(sh_view *v)
{
    NL_ASSERT(!v || atomic_load(&v->refs) >= 1);
    if (!v || atomic_fetch_sub(&v->refs, 1) != 1)
        return;
    sh_memidx_unref(v->active);
    sh_memidx_unref(v->frozen);
    for (uint32_t i = 0; i < v->nseg; i++)
        sh_segref_unref(v->segs[i]);
    free(v);
}

/* A new view referencing its parts (each gains a reference). */
sh_view *sh_view_make(sh_memidx *active, sh_memidx *frozen, sh_segref *const *segs, uint32_t nseg)
{
    sh_view *v = calloc(1, sizeof *v + sizeof(sh_segref *) * (nseg ? nseg : 1));
    if (!v)
        return NULL;
    atomic_init(&v->refs, 1);
    v->active = active;
    v->frozen = frozen;
    atomic_fetch_add(&active->refs, 1);
    if (frozen)
        atomic_fetch_add(&frozen->refs, 1);
    v->nseg = nseg;
    for (uint32_t i = 0; i < nseg; i++) {
        v->segs[i] = segs[i];
        atomic_fetch_add(&segs[i]->refs, 1);
    }
    return v;
}

void sh_view_install(nl_shard *sh, sh_view *v)
{
    pthread_mutex_lock(&sh->vmu);
    sh_view *old = sh->view;
    sh->view = v;
    pthread_mutex_unlock(&sh->vmu);
    sh_view_release(old);
}

/* The segment of v holding pid, and its ordinal; NULL when none does. */
sh_segref *sh_view_find_segment(const sh_view *v, uint64_t pid, uint32_t *ord)
{
    for (uint32_t i = 0; i < v->nseg; i++)
        if (nl_segment_find(v->segs[i]->seg, pid, ord) == 0)
            return v->segs[i];
    return NULL;
}

/* ---------------------------------------------------------------- validation */

int sh_check_id(const nl_id *id, size_t i)
{
    if (id->is_str && (id->len == 0 || id->len > NL_MAX_ID_BYTES || !id->str))
        return nl_fail(NL_EINVAL, "point %zu: string id must be 1 to %d bytes (got %zu)", i, NL_MAX_ID_BYTES, id->len);
    return 0;
}

/* Converts one f32 vector to the stored type, refusing what the type cannot hold. */
static int convert_vector(const nl_shard *sh, const float *v, void *out, size_t i)
{
    uint32_t d = sh->cfg.dim;
    for (uint32_t j = 0; j < d; j++) {
        float x = v[j];
        if (!isfinite(x))
            return nl_fail(NL_EBADVALUE, "point %zu: value %u is NaN or Inf", i, j);
        switch (sh->cfg.dtype) {
        case NL_DTYPE_F32: if (out) ((float *)out)[j] = x; break;
        case NL_DTYPE_F16: {
            uint16_t h = nl_f32_to_f16(x);
            if ((h & 0x7c00u) == 0x7c00u)
                return nl_fail(NL_EBADVALUE, "point %zu: value %u (%g) overflows f16", i, j, (double)x);
            if (out) ((uint16_t *)out)[j] = h;
            break;
        }
        case NL_DTYPE_U8:
            if (x != floorf(x) || x < 0 || x > 255)
                return nl_fail(NL_EBADVALUE, "point %zu: value %u (%g) is not an integer in 0..255", i, j, (double)x);
            if (out) ((uint8_t *)out)[j] = (uint8_t)x;
            break;
        case NL_DTYPE_I8:
            if (x != floorf(x) || x < -128 || x > 127)
                return nl_fail(NL_EBADVALUE, "point %zu: value %u (%g) is not an integer in -128..127", i, j, (double)x);
            if (out) ((int8_t *)out)[j] = (int8_t)x;
            break;
        default: return nl_fail(NL_EINVAL, "bad stored type");
        }
    }
    return 0;
}

static int check_metadata(const nl_point *p, size_t i)
{
    if (!p->metadata)
        return 0;
    if (p->metadata_len > NL_MAX_METADATA_BYTES)
        return nl_fail(NL_EINVAL, "point %zu: metadata of %zu bytes exceeds the %d-byte limit", i, p->metadata_len,
                       NL_MAX_METADATA_BYTES);
    json_error_t err;
    json_t *j = json_loadb(p->metadata, p->metadata_len, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        return nl_fail(NL_EINVAL, "point %zu: metadata is not valid JSON: %s (column %d)", i, err.text, err.column);
    int ok = json_is_object(j);
    json_decref(j);
    return ok ? 0 : nl_fail(NL_EINVAL, "point %zu: metadata must be a JSON object", i);
}

int sh_check_point(const nl_shard *sh, const nl_point *p, size_t i, void *converted)
{
    if (p->dim != sh->cfg.dim)
        return nl_fail(NL_EDIM, "point %zu: dimension %u, the collection has %u", i, p->dim, sh->cfg.dim);
    if (!p->vector)
        return nl_fail(NL_EINVAL, "point %zu: no vector", i);
    int rc;
    if ((rc = sh_check_id(&p->id, i)) || (rc = convert_vector(sh, p->vector, converted, i)) || (rc = check_metadata(p, i)))
        return rc;
    return 0;
}

int nl_shard_validate(const nl_shard *sh, const nl_point *pts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = sh_check_point(sh, &pts[i], i, NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- tombstones of writes */

/* Counts a newly deleted version against the segment that holds it (wmu held). */
static void count_dead_locked(nl_shard *sh, uint64_t pid)
{
    NL_ASSERT_HELD(&sh->wmu);
    uint32_t ord;
    sh_view *v = sh->view; /* wmu held: flush and compaction install views under it */
    sh_segref *r = sh_view_find_segment(v, pid, &ord);
    if (r)
        atomic_fetch_add(&r->dead, 1);
}

int sh_add_tombstones_locked(nl_shard *sh, const uint64_t *pids, const unsigned char *valid, size_t n)
{
    NL_ASSERT_HELD(&sh->wmu);
    int rc = 0;
    pthread_rwlock_wrlock(&sh->tmu);
    for (size_t i = 0; i < n && !rc; i++)
        if (valid[i])
            rc = sh_tomb_add_locked(sh, pids[i]);
    pthread_rwlock_unlock(&sh->tmu);
    for (size_t i = 0; i < n; i++)
        if (valid[i])
            count_dead_locked(sh, pids[i]);
    return rc;
}

/* Waits (wmu held) until the active fresh index has room for n more points. */

/* ---------------------------------------------------------------- shared by the write, log, import and maintenance paths */

/* The pid currently mapped to ekey; *found 0 when none. */
int sh_lookup_pid(nl_shard *sh, const unsigned char *ek, size_t ekl, uint64_t *pid, int *found)
{
    void *v;
    size_t vl;
    *found = 0;
    int rc = nl_store_get(sh->st, NL_CF_IDMAP, ek, ekl, &v, &vl);
    if (rc == NL_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (vl != 8) {
        free(v);
        return nl_fail(NL_ECORRUPT, "id map entry of %zu bytes", vl);
    }
    *pid = sh_pid_from_key(v);
    *found = 1;
    free(v);
    return 0;
}

/* Adds to b the deletion of version pid's postings, from its stored metadata (if any). */
int sh_drop_stored_postings(nl_shard *sh, nl_store_batch *b, const unsigned char *ek, size_t ekl, uint64_t pid)
{
    void *meta;
    size_t len;
    int rc = nl_store_get(sh->st, NL_CF_META, ek, ekl, &meta, &len);
    if (rc == NL_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    rc = nl_postings_write(b, pid, meta, len, 0);
    free(meta);
    return rc;
}

void sh_config_encode(const nl_shard_config *c, uint32_t f[10])
{
    uint32_t a;
    memcpy(&a, &c->alpha, 4);
    /* The last word was 0 before codes had kinds: 0 still reads as PQ. */
    uint32_t v[10] = {CONFIG_VERSION, c->dim, c->dtype, c->metric, c->R, c->L, a, c->pq_m, c->fresh_capacity,
                      c->code == NL_COLL_CODE_PQ ? 0 : c->code};
    memcpy(f, v, sizeof v);
}

int sh_fill_task(void *vctx, size_t i, unsigned th)
{
    (void)th;
    sh_fill *c = vctx;
    return nl_vamana_insert_at(c->ix, c->first + (uint32_t)i, c->vecs + i * c->row_bytes);
}
