/*
 * shard_delete.c — a shard's deletes: by id, by version (what a delete by filter uses, so a
 * newer version of an id that no longer matches is kept), and by filter.
 *
 * A delete writes, in one synced batch, the removal of the id's mapping, metadata, pid
 * record and postings and a tombstone for its version (and, for a logged delete, the log
 * entry listing exactly the ids removed); then the version is tombstoned in memory.
 * Searches resolve results through the pids family, whose record the batch removed, so a
 * deleted point is never returned even by a search that started before. Ordering and
 * locks as in shard.c (writers hold wmu).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nl_postings.h"
#include "shard_internal.h"

/* Deletes ids; with expect (n pids), only an id still at that version (a delete by
 * filter must not remove a newer version that no longer matches). */
int sh_delete(nl_shard *sh, const nl_id *ids, const uint64_t *expect, size_t n, size_t *deleted, sh_logrec *lr)
{
    if (deleted)
        *deleted = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = sh_check_id(&ids[i], i);
        if (rc)
            return rc;
    }
    if (n == 0)
        return 0;
    uint64_t *pids = calloc(n, sizeof(uint64_t));
    unsigned char *valid = calloc(n, 1);
    nl_store_batch *b = nl_store_batch_create(sh->st);
    if (!pids || !valid || !b) {
        free(pids);
        free(valid);
        nl_store_batch_destroy(b);
        return -ENOMEM;
    }
    int rc = 0;
    size_t count = 0;
    pthread_mutex_lock(&sh->wmu);
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char ek[NL_EKEY_MAX], pk[8];
        size_t ekl = nl_ekey_encode(&ids[i], ek);
        int found;
        if ((rc = sh_lookup_pid(sh, ek, ekl, &pids[i], &found)) != 0 || !found)
            continue;
        if (expect && pids[i] != expect[i])
            continue;
        valid[i] = 1;
        for (size_t j = 0; j < i; j++)
            if (valid[j] && pids[j] == pids[i]) { valid[i] = 0; break; } /* the same id twice */
        if (!valid[i])
            continue;
        sh_pid_key(pids[i], pk);
        if ((rc = sh_drop_stored_postings(sh, b, ek, ekl, pids[i])) != 0)
            break;
        nl_store_batch_delete(b, NL_CF_IDMAP, ek, ekl);
        nl_store_batch_delete(b, NL_CF_META, ek, ekl);
        nl_store_batch_delete(b, NL_CF_PIDS, pk, 8);
        nl_store_batch_put(b, NL_CF_TOMBSTONES, pk, 8, "", 0);
        nl_store_batch_delete(b, NL_CF_FRESH, pk, 8);
        count++;
    }
    void *entry = NULL;
    if (!rc && count && lr && !lr->entry) {
        /* the entry lists what this delete removes, so a replica applies exactly that */
        nl_id *del = malloc(sizeof *del * count);
        size_t m = 0;
        for (size_t i = 0; del && i < n; i++)
            if (valid[i])
                del[m++] = ids[i];
        rc = del ? sh_log_encode_delete(lr->epoch, del, m, &entry, &lr->len, &lr->time_ms) : -ENOMEM;
        free(del);
        lr->entry = entry;
    }
    int logged = lr && lr->entry;
    if (!rc && logged)
        rc = sh_log_stage_locked(sh, b, lr);
    if (!rc && (count || logged))
        rc = nl_store_write(b, 1);
    if (!rc && logged)
        sh_log_commit_locked(sh, lr);
    if (entry) {
        free(entry);
        lr->entry = NULL;
    }
    if (!rc && count) {
        rc = sh_add_tombstones_locked(sh, pids, valid, n);
        __atomic_store_n(&sh->live, sh->live - count, __ATOMIC_RELAXED);
        atomic_fetch_add(&sh->deleted, count);
    }
    pthread_mutex_unlock(&sh->wmu);
    if (!rc && logged && lr->durable)
        lr->durable(lr->ctx, lr->seq);
    nl_store_batch_destroy(b);
    free(pids);
    free(valid);
    if (!rc && deleted)
        *deleted = count;
    return rc;
}

int nl_shard_delete(nl_shard *sh, const nl_id *ids, size_t n, size_t *deleted)
{
    return sh_delete(sh, ids, NULL, n, deleted, NULL);
}

/* Deletes up to n versions (pids) that are still live, by their external ids. */
static int delete_versions(nl_shard *sh, const uint64_t *pids, size_t n, size_t *deleted, sh_logrec *lr)
{
    nl_id *ids = calloc(n ? n : 1, sizeof *ids);
    uint64_t *keep = calloc(n ? n : 1, sizeof *keep);
    nl_hit *h = calloc(n ? n : 1, sizeof *h);
    size_t m = 0;
    int rc = ids && keep && h ? 0 : -ENOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        unsigned char pk[8];
        void *ek;
        size_t ekl;
        sh_pid_key(pids[i], pk);
        int g = nl_store_get(sh->st, NL_CF_PIDS, pk, 8, &ek, &ekl);
        if (g == NL_ENOTFOUND)
            continue; /* deleted or replaced already */
        if (g) {
            rc = g;
            break;
        }
        rc = sh_hit_from_ekey(ek, ekl, &h[m]);
        free(ek);
        if (rc)
            break;
        ids[m] = (nl_id){h[m].is_str, h[m].num, h[m].str, h[m].len};
        keep[m++] = pids[i];
    }
    if (!rc && lr) {
        sh_logrec one = {0, lr->epoch, 0, NULL, 0, lr->by, lr->durable, lr->ctx};
        rc = sh_delete(sh, ids, keep, m, deleted, &one);
        if (!rc && one.seq)
            lr->seq = one.seq;
    } else if (!rc) {
        rc = sh_delete(sh, ids, keep, m, deleted, NULL);
    }
    free(ids);
    free(keep);
    free(h);
    return rc;
}

int nl_shard_delete_by_filter(nl_shard *sh, const nl_filter *f, size_t *deleted)
{
    return sh_delete_by_filter(sh, f, deleted, NULL);
}

int sh_delete_by_filter(nl_shard *sh, const nl_filter *f, size_t *deleted, sh_logrec *lr)
{
    *deleted = 0;
    pthread_mutex_lock(&sh->wmu);
    uint64_t next_pid = sh->next_pid;
    pthread_mutex_unlock(&sh->wmu);
    nl_bitmap *bm;
    int neg;
    int rc = nl_filter_eval(sh->st, sh->fcache, next_pid, f, &bm, &neg);
    if (rc)
        return rc;
    enum { CHUNK = 1024 };
    uint64_t batch[CHUNK];
    size_t nb = 0, done;
    if (!neg) {
        nl_bitmap_iter it;
        nl_bitmap_iter_init(&it, bm, 0);
        uint64_t x;
        while (!rc && nl_bitmap_iter_next(&it, &x)) {
            batch[nb++] = x;
            if (nb == CHUNK) {
                rc = delete_versions(sh, batch, nb, &done, lr);
                *deleted += rc ? 0 : done;
                nb = 0;
            }
        }
    } else {
        /* A complement: walk the live versions (the pids family) and keep those outside. */
        nl_store_iter *it;
        if ((rc = nl_store_iter_create(sh->st, NL_CF_PIDS, &it)) == 0) {
            for (nl_store_iter_seek_first(it); !rc && nl_store_iter_valid(it); nl_store_iter_next(it)) {
                size_t kl;
                const unsigned char *k = nl_store_iter_key(it, &kl);
                if (kl != 8)
                    continue;
                uint64_t pid = sh_pid_from_key(k);
                if (pid >= next_pid || nl_bitmap_contains(bm, pid))
                    continue;
                batch[nb++] = pid;
                if (nb == CHUNK) {
                    rc = delete_versions(sh, batch, nb, &done, lr);
                    *deleted += rc ? 0 : done;
                    nb = 0;
                }
            }
            if (!rc)
                rc = nl_store_iter_status(it);
            nl_store_iter_destroy(it);
        }
    }
    if (!rc && nb) {
        rc = delete_versions(sh, batch, nb, &done, lr);
        *deleted += rc ? 0 : done;
    }
    nl_bitmap_destroy(bm);
    return rc;
}

