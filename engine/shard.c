/*
 * shard.c — the write path of a shard (see nl_shard.h; key schema in docs/decisions.md).
 *
 * Ordering that keeps readers correct without blocking them: an upsert's batch is durable
 * first; then the versions it replaces are tombstoned in memory; only then are the new
 * vectors inserted into the fresh index. A concurrent search can therefore miss a point
 * being replaced for an instant, but never sees two versions of one id, and every
 * acknowledged write is visible once the call returns.
 */
#define _GNU_SOURCE
#include "nl_shard.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "nl_import.h"
#include "nl_store.h"
#include "nl_util.h"
#include "nl_vamana.h"

#define CONFIG_VERSION 1u
#define EKEY_MAX (1 + NL_MAX_ID_BYTES)
#define SEARCH_MAX_L 1024u

struct nl_shard {
    nl_store *st;
    nl_shard_config cfg;
    size_t row_bytes;
    nl_vamana *fresh;
    uint64_t *slot_pid;
    pthread_mutex_t wmu;   /* writers, one at a time */
    pthread_rwlock_t tmu;  /* the tombstone set */
    uint64_t *tomb;        /* open addressing, 0 = empty (pids start at 1) */
    size_t tomb_cap, tomb_n;
    uint64_t next_pid;
    uint64_t live;
    nl_objpool searchers;  /* fresh-index searchers, reused across calls */
};

static void searcher_free(void *p) { nl_vamana_searcher_destroy(p); }

/* ---------------------------------------------------------------- encodings */

static size_t ekey_encode(const nl_id *id, unsigned char *out)
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

static void hit_from_ekey(const unsigned char *k, size_t len, nl_hit *h)
{
    memset(h, 0, sizeof *h);
    if (len == 9 && k[0] == 1) {
        for (int i = 0; i < 8; i++)
            h->num = (h->num << 8) | k[1 + i];
    } else if (len >= 2 && len <= EKEY_MAX && k[0] == 2) {
        h->is_str = 1;
        h->len = len - 1;
        memcpy(h->str, k + 1, h->len);
    }
}

static void pid_key(uint64_t pid, unsigned char out[8])
{
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(pid >> (56 - 8 * i));
}

static uint64_t pid_from_key(const unsigned char k[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | k[i];
    return v;
}

/* idmap value: u64 pid, u32 segment (0 = fresh), u32 ordinal; little-endian. */
static void idmap_value(uint64_t pid, unsigned char out[16])
{
    memset(out, 0, 16);
    memcpy(out, &pid, 8);
}

/* ---------------------------------------------------------------- tombstones */

static int tomb_has_locked(const nl_shard *sh, uint64_t pid)
{
    if (!sh->tomb_cap)
        return 0;
    size_t h = (size_t)(pid * 0x9e3779b97f4a7c15ull) & (sh->tomb_cap - 1);
    while (sh->tomb[h]) {
        if (sh->tomb[h] == pid)
            return 1;
        h = (h + 1) & (sh->tomb_cap - 1);
    }
    return 0;
}

static int tomb_add_locked(nl_shard *sh, uint64_t pid)
{
    if ((sh->tomb_n + 1) * 2 > sh->tomb_cap) {
        size_t nc = sh->tomb_cap ? sh->tomb_cap * 2 : 1024;
        uint64_t *nt = calloc(nc, sizeof *nt);
        if (!nt)
            return -ENOMEM;
        for (size_t i = 0; i < sh->tomb_cap; i++) {
            uint64_t p = sh->tomb[i];
            if (!p) continue;
            size_t h = (size_t)(p * 0x9e3779b97f4a7c15ull) & (nc - 1);
            while (nt[h]) h = (h + 1) & (nc - 1);
            nt[h] = p;
        }
        free(sh->tomb);
        sh->tomb = nt;
        sh->tomb_cap = nc;
    }
    size_t h = (size_t)(pid * 0x9e3779b97f4a7c15ull) & (sh->tomb_cap - 1);
    while (sh->tomb[h]) {
        if (sh->tomb[h] == pid)
            return 0;
        h = (h + 1) & (sh->tomb_cap - 1);
    }
    sh->tomb[h] = pid;
    sh->tomb_n++;
    return 0;
}

/* ---------------------------------------------------------------- validation */

static int check_id(const nl_id *id, size_t i)
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
        case NL_DTYPE_F32: ((float *)out)[j] = x; break;
        case NL_DTYPE_F16: {
            uint16_t h = nl_f32_to_f16(x);
            if ((h & 0x7c00u) == 0x7c00u)
                return nl_fail(NL_EBADVALUE, "point %zu: value %u (%g) overflows f16", i, j, (double)x);
            ((uint16_t *)out)[j] = h;
            break;
        }
        case NL_DTYPE_U8:
            if (x != floorf(x) || x < 0 || x > 255)
                return nl_fail(NL_EBADVALUE, "point %zu: value %u (%g) is not an integer in 0..255", i, j, (double)x);
            ((uint8_t *)out)[j] = (uint8_t)x;
            break;
        case NL_DTYPE_I8:
            if (x != floorf(x) || x < -128 || x > 127)
                return nl_fail(NL_EBADVALUE, "point %zu: value %u (%g) is not an integer in -128..127", i, j, (double)x);
            ((int8_t *)out)[j] = (int8_t)x;
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

/* ---------------------------------------------------------------- open / create */

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
    if (f[0] != CONFIG_VERSION || f[1] == 0 || f[1] > 65536 || f[2] > NL_DTYPE_I8 || f[3] > NL_METRIC_COSINE ||
        f[4] == 0 || f[4] > 1024 || f[5] == 0 || f[8] == 0)
        return nl_fail(NL_ECORRUPT, "shard config fields out of range");
    sh->cfg.dim = f[1];
    sh->cfg.dtype = (nl_dtype)f[2];
    sh->cfg.metric = (nl_metric)f[3];
    sh->cfg.R = f[4];
    sh->cfg.L = f[5];
    memcpy(&sh->cfg.alpha, &f[6], 4);
    sh->cfg.pq_m = f[7];
    sh->cfg.fresh_capacity = f[8];
    if (nl_store_get(sh->st, NL_CF_MANIFEST, "next_pid", 8, &v, &vl) != 0 || vl != 8) {
        free(v);
        return nl_fail(NL_ECORRUPT, "shard manifest lacks next_pid");
    }
    memcpy(&sh->next_pid, v, 8);
    free(v);
    return 0;
}

static int shard_alloc(nl_shard *sh)
{
    sh->row_bytes = (size_t)sh->cfg.dim * nl_dtype_size(sh->cfg.dtype);
    nl_vamana_params vp;
    nl_vamana_params_default(&vp);
    vp.R = sh->cfg.R;
    vp.L = sh->cfg.L;
    vp.alpha = sh->cfg.alpha;
    int rc = nl_vamana_create_dynamic(sh->cfg.dim, sh->cfg.dtype, sh->cfg.metric, &vp, sh->cfg.fresh_capacity, &sh->fresh);
    if (rc)
        return rc;
    sh->slot_pid = malloc(sizeof(uint64_t) * sh->cfg.fresh_capacity);
    return sh->slot_pid ? 0 : -ENOMEM;
}

static nl_shard *shard_new(void)
{
    nl_shard *sh = calloc(1, sizeof *sh);
    if (!sh)
        return NULL;
    pthread_mutex_init(&sh->wmu, NULL);
    nl_objpool_init(&sh->searchers, searcher_free);
    pthread_rwlock_init(&sh->tmu, NULL);
    return sh;
}

int nl_shard_create(const char *dir, const nl_shard_config *cfg, nl_shard **out)
{
    *out = NULL;
    if (!cfg || cfg->dim == 0 || cfg->dim > 65536 || cfg->dtype > NL_DTYPE_I8 || cfg->metric > NL_METRIC_COSINE)
        return nl_fail(NL_EINVAL, "shard config: dim 1..65536, a stored type and a metric are required");
    if (mkdir(dir, 0755) != 0)
        return errno == EEXIST ? nl_fail(NL_EEXISTS, "%s exists", dir) : nl_fail(-errno, "%s: %s", dir, strerror(errno));
    nl_shard *sh = shard_new();
    if (!sh)
        return -ENOMEM;
    sh->cfg = *cfg;
    if (!sh->cfg.R) sh->cfg.R = 64;
    if (!sh->cfg.L) sh->cfg.L = 100;
    if (!(sh->cfg.alpha >= 1.0f)) sh->cfg.alpha = 1.2f;
    if (!sh->cfg.pq_m) sh->cfg.pq_m = nl_import_default_pq_m(cfg->dim);
    if (!sh->cfg.fresh_capacity) sh->cfg.fresh_capacity = 100000;
    char meta[4200];
    snprintf(meta, sizeof meta, "%s/meta", dir);
    int rc = nl_store_open(meta, 1, &sh->st);
    if (rc)
        goto fail;
    sh->next_pid = 1;
    uint32_t f[10] = {CONFIG_VERSION, sh->cfg.dim, sh->cfg.dtype, sh->cfg.metric, sh->cfg.R, sh->cfg.L, 0,
                      sh->cfg.pq_m, sh->cfg.fresh_capacity, 0};
    memcpy(&f[6], &sh->cfg.alpha, 4);
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!b) {
        rc = -ENOMEM;
        goto fail;
    }
    nl_store_batch_put(b, NL_CF_MANIFEST, "config", 6, f, sizeof f);
    nl_store_batch_put(b, NL_CF_MANIFEST, "next_pid", 8, &sh->next_pid, 8);
    rc = nl_store_write(b, 1);
    nl_store_batch_destroy(b);
    if (rc || (rc = shard_alloc(sh)) != 0)
        goto fail;
    *out = sh;
    return 0;
fail:
    nl_shard_close(sh);
    return rc;
}

int nl_shard_open(const char *dir, nl_shard **out)
{
    *out = NULL;
    nl_shard *sh = shard_new();
    if (!sh)
        return -ENOMEM;
    char meta[4200];
    snprintf(meta, sizeof meta, "%s/meta", dir);
    int rc = nl_store_open(meta, 0, &sh->st);
    if (rc || (rc = load_config(sh)) != 0 || (rc = shard_alloc(sh)) != 0)
        goto fail;
    /* Tombstones, then the fresh vectors in pid order: the same graph-building order as
     * the original inserts. */
    nl_store_iter *it;
    if ((rc = nl_store_iter_create(sh->st, NL_CF_TOMBSTONES, &it)) != 0)
        goto fail;
    for (nl_store_iter_seek_first(it); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        if (kl != 8) {
            rc = nl_fail(NL_ECORRUPT, "tombstone key of %zu bytes", kl);
            break;
        }
        if ((rc = tomb_add_locked(sh, pid_from_key(k))) != 0)
            break;
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    if (rc)
        goto fail;
    if ((rc = nl_store_iter_create(sh->st, NL_CF_FRESH, &it)) != 0)
        goto fail;
    for (nl_store_iter_seek_first(it); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl, vl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        const unsigned char *v = nl_store_iter_value(it, &vl);
        uint16_t ekl = 0;
        if (kl != 8 || vl < 2 || (memcpy(&ekl, v, 2), (size_t)2 + ekl + sh->row_bytes != vl) || ekl > EKEY_MAX) {
            rc = nl_fail(NL_ECORRUPT, "fresh vector record of %zu bytes is malformed", vl);
            break;
        }
        uint64_t pid = pid_from_key(k);
        uint32_t slot;
        if ((rc = nl_vamana_insert(sh->fresh, v + 2 + ekl, &slot)) != 0)
            break;
        sh->slot_pid[slot] = pid;
        if (!tomb_has_locked(sh, pid))
            sh->live++;
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    if (rc)
        goto fail;
    *out = sh;
    return 0;
fail:
    nl_shard_close(sh);
    return rc;
}

void nl_shard_close(nl_shard *sh)
{
    if (!sh)
        return;
    nl_objpool_fini(&sh->searchers); /* before the index the searchers point into */
    nl_vamana_destroy(sh->fresh);
    nl_store_close(sh->st);
    free(sh->slot_pid);
    free(sh->tomb);
    pthread_mutex_destroy(&sh->wmu);
    pthread_rwlock_destroy(&sh->tmu);
    free(sh);
}

void nl_shard_get_config(const nl_shard *sh, nl_shard_config *cfg) { *cfg = sh->cfg; }

uint64_t nl_shard_count(nl_shard *sh)
{
    pthread_mutex_lock(&sh->wmu);
    uint64_t n = sh->live;
    pthread_mutex_unlock(&sh->wmu);
    return n;
}

/* ---------------------------------------------------------------- writes */

/* The pid currently mapped to ekey, 0 when none. */
static int lookup_pid(nl_shard *sh, const unsigned char *ek, size_t ekl, uint64_t *pid)
{
    void *v;
    size_t vl;
    *pid = 0;
    int rc = nl_store_get(sh->st, NL_CF_IDMAP, ek, ekl, &v, &vl);
    if (rc == NL_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (vl != 16) {
        free(v);
        return nl_fail(NL_ECORRUPT, "id map entry of %zu bytes", vl);
    }
    memcpy(pid, v, 8);
    free(v);
    return 0;
}

int nl_shard_upsert(nl_shard *sh, const nl_point *pts, size_t n)
{
    if (n == 0)
        return 0;
    /* Validate everything and convert the vectors before touching any state. */
    unsigned char *vecs = malloc(sh->row_bytes * n);
    unsigned char *ekeys = malloc((size_t)EKEY_MAX * n);
    size_t *eklen = malloc(sizeof(size_t) * n);
    uint64_t *old = calloc(n, sizeof(uint64_t));
    int rc = 0;
    if (!vecs || !ekeys || !eklen || !old) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        if (pts[i].dim != sh->cfg.dim) {
            rc = nl_fail(NL_EDIM, "point %zu: dimension %u, the collection has %u", i, pts[i].dim, sh->cfg.dim);
            break;
        }
        if (!pts[i].vector) {
            rc = nl_fail(NL_EINVAL, "point %zu: no vector", i);
            break;
        }
        if ((rc = check_id(&pts[i].id, i)) || (rc = convert_vector(sh, pts[i].vector, vecs + i * sh->row_bytes, i)) ||
            (rc = check_metadata(&pts[i], i)))
            break;
        eklen[i] = ekey_encode(&pts[i].id, ekeys + i * EKEY_MAX);
    }
    if (rc)
        goto out;
    pthread_mutex_lock(&sh->wmu);
    if (nl_vamana_size(sh->fresh) + n > sh->cfg.fresh_capacity) {
        pthread_mutex_unlock(&sh->wmu);
        rc = nl_fail(-EBUSY, "the fresh index is full (%u points) and flushing is not implemented yet",
                     sh->cfg.fresh_capacity);
        goto out;
    }
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!b) {
        pthread_mutex_unlock(&sh->wmu);
        rc = -ENOMEM;
        goto out;
    }
    uint64_t first_pid = sh->next_pid;
    size_t new_live = sh->live;
    unsigned char *rec = malloc(2 + EKEY_MAX + sh->row_bytes);
    if (!rec)
        rc = -ENOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        const unsigned char *ek = ekeys + i * EKEY_MAX;
        uint64_t pid = first_pid + i;
        /* The version this one replaces: an earlier point of this batch, else the store. */
        for (size_t j = i; j-- > 0;)
            if (eklen[j] == eklen[i] && memcmp(ekeys + j * EKEY_MAX, ek, eklen[i]) == 0) {
                old[i] = first_pid + j;
                break;
            }
        if (!old[i] && (rc = lookup_pid(sh, ek, eklen[i], &old[i])) != 0)
            break;
        unsigned char pk[8], iv[16];
        if (old[i]) {
            pid_key(old[i], pk);
            nl_store_batch_put(b, NL_CF_TOMBSTONES, pk, 8, "", 0);
            nl_store_batch_delete(b, NL_CF_FRESH, pk, 8);
        } else {
            new_live++;
        }
        pid_key(pid, pk);
        idmap_value(pid, iv);
        nl_store_batch_put(b, NL_CF_IDMAP, ek, eklen[i], iv, 16);
        uint16_t e16 = (uint16_t)eklen[i];
        memcpy(rec, &e16, 2);
        memcpy(rec + 2, ek, eklen[i]);
        memcpy(rec + 2 + eklen[i], vecs + i * sh->row_bytes, sh->row_bytes);
        nl_store_batch_put(b, NL_CF_FRESH, pk, 8, rec, 2 + eklen[i] + sh->row_bytes);
        if (pts[i].metadata)
            nl_store_batch_put(b, NL_CF_META, ek, eklen[i], pts[i].metadata, pts[i].metadata_len);
        else
            nl_store_batch_delete(b, NL_CF_META, ek, eklen[i]);
    }
    uint64_t next = first_pid + n;
    if (!rc) {
        nl_store_batch_put(b, NL_CF_MANIFEST, "next_pid", 8, &next, 8);
        rc = nl_store_write(b, 1);
    }
    free(rec);
    nl_store_batch_destroy(b);
    if (rc) {
        pthread_mutex_unlock(&sh->wmu);
        goto out;
    }
    sh->next_pid = next;
    sh->live = new_live;
    /* Durable. Hide the replaced versions, then make the new ones searchable. */
    pthread_rwlock_wrlock(&sh->tmu);
    for (size_t i = 0; i < n && !rc; i++)
        if (old[i])
            rc = tomb_add_locked(sh, old[i]);
    pthread_rwlock_unlock(&sh->tmu);
    for (size_t i = 0; i < n && !rc; i++) {
        uint32_t slot;
        if ((rc = nl_vamana_insert(sh->fresh, vecs + i * sh->row_bytes, &slot)) == 0)
            sh->slot_pid[slot] = first_pid + i;
    }
    pthread_mutex_unlock(&sh->wmu);
out:
    free(vecs);
    free(ekeys);
    free(eklen);
    free(old);
    return rc;
}

int nl_shard_delete(nl_shard *sh, const nl_id *ids, size_t n, size_t *deleted)
{
    if (deleted)
        *deleted = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = check_id(&ids[i], i);
        if (rc)
            return rc;
    }
    uint64_t *pids = calloc(n ? n : 1, sizeof(uint64_t));
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!pids || !b) {
        free(pids);
        nl_store_batch_destroy(b);
        return -ENOMEM;
    }
    int rc = 0;
    size_t count = 0;
    pthread_mutex_lock(&sh->wmu);
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char ek[EKEY_MAX], pk[8];
        size_t ekl = ekey_encode(&ids[i], ek);
        if ((rc = lookup_pid(sh, ek, ekl, &pids[i])) != 0 || !pids[i])
            continue;
        for (size_t j = 0; j < i; j++)
            if (pids[j] == pids[i]) { pids[i] = 0; break; } /* the same id twice */
        if (!pids[i])
            continue;
        pid_key(pids[i], pk);
        nl_store_batch_delete(b, NL_CF_IDMAP, ek, ekl);
        nl_store_batch_delete(b, NL_CF_META, ek, ekl);
        nl_store_batch_put(b, NL_CF_TOMBSTONES, pk, 8, "", 0);
        nl_store_batch_delete(b, NL_CF_FRESH, pk, 8);
        count++;
    }
    if (!rc && count)
        rc = nl_store_write(b, 1);
    if (!rc && count) {
        pthread_rwlock_wrlock(&sh->tmu);
        for (size_t i = 0; i < n && !rc; i++)
            if (pids[i])
                rc = tomb_add_locked(sh, pids[i]);
        pthread_rwlock_unlock(&sh->tmu);
        sh->live -= count;
    }
    pthread_mutex_unlock(&sh->wmu);
    nl_store_batch_destroy(b);
    free(pids);
    if (!rc && deleted)
        *deleted = count;
    return rc;
}

/* ---------------------------------------------------------------- reads */

int nl_shard_get(nl_shard *sh, const nl_id *id, float *vec, char **meta, size_t *meta_len)
{
    if (meta) *meta = NULL;
    if (meta_len) *meta_len = 0;
    int rc = check_id(id, 0);
    if (rc)
        return rc;
    unsigned char ek[EKEY_MAX], pk[8];
    size_t ekl = ekey_encode(id, ek);
    uint64_t pid;
    if ((rc = lookup_pid(sh, ek, ekl, &pid)) != 0)
        return rc;
    if (!pid)
        return nl_fail(NL_ENOTFOUND, "no point with that id");
    if (vec) {
        void *v;
        size_t vl;
        pid_key(pid, pk);
        if ((rc = nl_store_get(sh->st, NL_CF_FRESH, pk, 8, &v, &vl)) != 0)
            return rc == NL_ENOTFOUND ? nl_fail(NL_ECORRUPT, "id map names a version with no vector") : rc;
        if (vl != 2 + ekl + sh->row_bytes) {
            free(v);
            return nl_fail(NL_ECORRUPT, "fresh vector record of %zu bytes", vl);
        }
        nl_convert_to_f32(sh->cfg.dtype, (unsigned char *)v + 2 + ekl, vec, sh->cfg.dim);
        free(v);
    }
    if (meta) {
        void *m;
        size_t ml;
        rc = nl_store_get(sh->st, NL_CF_META, ek, ekl, &m, &ml);
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
        if (meta_len)
            *meta_len = ml;
    }
    return 0;
}

int nl_shard_search(nl_shard *sh, const float *q, uint32_t k, uint32_t L, nl_hit *hits)
{
    if (k == 0 || k > SEARCH_MAX_L)
        return nl_fail(NL_EINVAL, "k must be 1..%u", SEARCH_MAX_L);
    for (uint32_t j = 0; j < sh->cfg.dim; j++)
        if (!isfinite(q[j]))
            return nl_fail(NL_EBADVALUE, "query value %u is NaN or Inf", j);
    /* Tombstoned versions still sit in the fresh graph: widen the list by them. */
    pthread_rwlock_rdlock(&sh->tmu);
    size_t dead = sh->tomb_n;
    pthread_rwlock_unlock(&sh->tmu);
    uint64_t want = (uint64_t)k + dead;
    uint32_t kk = want > SEARCH_MAX_L ? SEARCH_MAX_L : (uint32_t)want;
    uint32_t LL = L < kk ? kk : L > SEARCH_MAX_L ? SEARCH_MAX_L : L;
    int rc = 0;
    nl_vamana_searcher *s = nl_objpool_take(&sh->searchers);
    if (!s && (rc = nl_vamana_searcher_create(sh->fresh, SEARCH_MAX_L, &s)) != 0)
        return rc;
    uint32_t *slots = malloc(sizeof(uint32_t) * kk);
    float *d = malloc(sizeof(float) * kk);
    if (!slots || !d) {
        free(slots);
        free(d);
        nl_objpool_give(&sh->searchers, s);
        return -ENOMEM;
    }
    int got = nl_vamana_search(s, q, kk, LL, slots, d, NULL);
    nl_objpool_give(&sh->searchers, s);
    if (got < 0) {
        free(slots);
        free(d);
        return got;
    }
    uint32_t out = 0;
    pthread_rwlock_rdlock(&sh->tmu);
    for (int i = 0; i < got && out < k; i++) {
        uint64_t pid = sh->slot_pid[slots[i]];
        if (tomb_has_locked(sh, pid))
            continue;
        hits[out].dist = d[i];
        hits[out].num = pid; /* resolved to the external id below */
        out++;
    }
    pthread_rwlock_unlock(&sh->tmu);
    for (uint32_t i = 0; i < out && rc == 0; i++) {
        unsigned char pk[8];
        void *v;
        size_t vl;
        float dist = hits[i].dist;
        pid_key(hits[i].num, pk);
        rc = nl_store_get(sh->st, NL_CF_FRESH, pk, 8, &v, &vl);
        if (rc == NL_ENOTFOUND) {
            /* Replaced or deleted after we looked: drop it. */
            memmove(&hits[i], &hits[i + 1], sizeof(nl_hit) * (out - i - 1));
            out--;
            i--;
            rc = 0;
            continue;
        }
        if (rc)
            break;
        uint16_t ekl = 0;
        if (vl >= 2)
            memcpy(&ekl, v, 2);
        if (vl < 2 || (size_t)2 + ekl > vl) {
            free(v);
            rc = nl_fail(NL_ECORRUPT, "fresh vector record of %zu bytes", vl);
            break;
        }
        hit_from_ekey((unsigned char *)v + 2, ekl, &hits[i]);
        hits[i].dist = dist;
        free(v);
    }
    free(slots);
    free(d);
    return rc ? rc : (int)out;
}
