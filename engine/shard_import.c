/*
 * shard_import.c — a bulk import's side of a shard: the store of a closed shard is opened
 * (RocksDB's lock keeps a server or a second import out for the whole build), a range of
 * versions (pids) is taken from next_pid, and once the segment holding them is in the
 * shard directory, the id map, its inverse and the metadata are written and the segment
 * is added to the manifest.
 *
 * Atomicity. A new shard is never visible before the collection is published, so its
 * entries go in unsynced batches with one synced manifest batch at the end. An append to
 * a live shard writes far more entries than one batch should hold, so it first records
 * "import_pending" {first pid, count} (synced), then the entries, then one synced batch
 * that adds the segment, advances next_pid and next_seg and deletes the pending record.
 * A shard opened with a pending record (nl_shard_import_recover, called by
 * nl_shard_open) removes the entries of those pids: the import never happened, and the
 * segment file, in no manifest, is removed as an orphan.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nl_catalog.h"
#include "nl_shard.h"
#include "nl_store.h"
#include "nl_util.h"
#include "nl_postings.h"
#include "shard_internal.h"

struct nl_shard_import {
    nl_store *st;
    int created;
    nl_shard_config cfg;
    uint64_t next_pid;
    uint32_t next_seg;
};

static int get_u64(nl_store *st, const char *key, uint64_t *out)
{
    void *v;
    size_t vl;
    int rc = nl_store_get(st, NL_CF_MANIFEST, key, strlen(key), &v, &vl);
    if (rc)
        return rc == NL_ENOTFOUND ? nl_fail(NL_ECORRUPT, "shard manifest lacks %s", key) : rc;
    if (vl != 8) {
        free(v);
        return nl_fail(NL_ECORRUPT, "shard manifest: %s of %zu bytes", key, vl);
    }
    memcpy(out, v, 8);
    free(v);
    return 0;
}

int nl_shard_import_begin(const char *dir, const nl_shard_config *cfg, int create, nl_shard_import **out)
{
    *out = NULL;
    nl_shard_import *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    char meta[4200];
    snprintf(meta, sizeof meta, "%s/meta", dir);
    int rc = nl_store_open(meta, create, &h->st);
    if (rc) {
        free(h);
        char why[512];
        snprintf(why, sizeof why, "%s", nl_errdetail());
        return nl_fail(rc, "cannot open the store of shard %s (is a server using this database?): %s", dir, why);
    }
    h->created = create;
    h->cfg = *cfg;
    if (create) {
        h->next_pid = 0;
        h->next_seg = 1;
    } else {
        uint64_t pid, seg, pend;
        if ((rc = get_u64(h->st, "next_pid", &pid)) != 0 || (rc = get_u64(h->st, "next_seg", &seg)) != 0) {
            nl_shard_import_end(h);
            return rc;
        }
        if (get_u64(h->st, "import_pending", &pend) == 0) {
            nl_shard_import_end(h);
            return nl_fail(NL_EINVAL, "shard %s holds an interrupted import: open the database once to roll it back",
                           dir);
        }
        if (seg == 0 || seg > 99999999) {
            nl_shard_import_end(h);
            return nl_fail(NL_ECORRUPT, "shard manifest: next segment number %llu", (unsigned long long)seg);
        }
        h->next_pid = pid;
        h->next_seg = (uint32_t)seg;
    }
    *out = h;
    return 0;
}

void nl_shard_import_end(nl_shard_import *h)
{
    if (!h)
        return;
    nl_store_close(h->st);
    free(h);
}

uint64_t nl_shard_import_next_pid(const nl_shard_import *h) { return h->next_pid; }
uint32_t nl_shard_import_next_seg(const nl_shard_import *h) { return h->next_seg; }

int nl_shard_import_max_id(nl_shard_import *h, uint64_t *max, int *any)
{
    *any = 0;
    *max = 0;
    nl_store_iter *it;
    int rc = nl_store_iter_create(h->st, NL_CF_IDMAP, &it);
    if (rc)
        return rc;
    unsigned char first = 1;
    /* Numeric ids sort big-endian after their type byte, so the last one is the largest. */
    for (nl_store_iter_seek(it, &first, 1); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        if (kl != 9 || k[0] != 1)
            break;
        uint64_t v = 0;
        for (int i = 0; i < 8; i++)
            v = (v << 8) | k[1 + i];
        *max = v;
        *any = 1;
    }
    rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    return rc;
}

int nl_shard_import_collisions(nl_shard_import *h, const uint64_t *ids, uint64_t id_first, uint64_t n,
                               uint64_t *count, uint64_t *first_row)
{
    *count = 0;
    *first_row = UINT64_MAX;
    for (uint64_t row = 0; row < n; row++) {
        nl_id id = {0, ids ? ids[row] : id_first + row, NULL, 0};
        unsigned char ek[NL_EKEY_MAX];
        size_t ekl = nl_ekey_encode(&id, ek);
        void *v;
        size_t vl;
        int rc = nl_store_get(h->st, NL_CF_IDMAP, ek, ekl, &v, &vl);
        if (rc == 0) {
            free(v);
            if (*first_row == UINT64_MAX)
                *first_row = row;
            (*count)++;
        } else if (rc != NL_ENOTFOUND) {
            return rc;
        }
    }
    return 0;
}

int nl_shard_import_commit(nl_shard_import *h, uint32_t seg_number, uint64_t n, const uint64_t *ids,
                           uint64_t id_first, const uint32_t *row_ord, const char *metadata_path)
{
    uint64_t base = h->next_pid;
    nl_store_batch *b = nl_store_batch_create(h->st);
    if (!b)
        return -ENOMEM;
    int rc = 0;
    if (!h->created) {
        uint64_t pend[2] = {base, n};
        nl_store_batch_put(b, NL_CF_MANIFEST, "import_pending", 14, pend, sizeof pend);
        rc = nl_store_write(b, 1);
        nl_store_batch_clear(b);
    }
    FILE *mf = NULL;
    char *line = NULL;
    size_t lcap = 0;
    if (!rc && metadata_path && !(mf = fopen(metadata_path, "r")))
        rc = nl_fail(-errno, "metadata file %s: %s", metadata_path, strerror(errno));
    for (uint64_t row = 0; row < n && !rc; row++) {
        nl_id id = {0, ids ? ids[row] : id_first + row, NULL, 0};
        unsigned char ek[NL_EKEY_MAX], pk[8];
        size_t ekl = nl_ekey_encode(&id, ek);
        uint64_t pid = base + (row_ord ? row_ord[row] : row);
        sh_pid_key(pid, pk);
        nl_store_batch_put(b, NL_CF_IDMAP, ek, ekl, pk, 8);
        nl_store_batch_put(b, NL_CF_PIDS, pk, 8, ek, ekl);
        if (mf) {
            ssize_t len = getline(&line, &lcap, mf);
            if (len < 0) {
                rc = nl_fail(NL_EFORMAT, "metadata file %s ends at line %llu", metadata_path,
                             (unsigned long long)row);
                break;
            }
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                len--;
            nl_store_batch_put(b, NL_CF_META, ek, ekl, line, (size_t)len);
            if ((rc = nl_postings_write(b, pid, line, (size_t)len, 1)) != 0) {
                rc = nl_fail(NL_EFORMAT, "metadata file %s line %llu: not a JSON object", metadata_path,
                             (unsigned long long)row + 1);
                break;
            }
        }
        if (nl_store_batch_count(b) >= 20000) {
            rc = nl_store_write(b, 0);
            nl_store_batch_clear(b);
            if (row >= n / 2)
                nl_kill_point("commit"); /* entries half written, the manifest untouched */
        }
    }
    free(line);
    if (mf)
        fclose(mf);
    if (!rc) {
        unsigned char sk[8];
        sh_seg_key(seg_number, sk);
        uint64_t rec[3] = {n, base, n ? base + n - 1 : base};
        nl_store_batch_put(b, NL_CF_MANIFEST, sk, 8, rec, sizeof rec);
        uint64_t next_pid = base + n, next_seg = (uint64_t)seg_number + 1;
        if (next_seg < h->next_seg)
            next_seg = h->next_seg;
        nl_store_batch_put(b, NL_CF_MANIFEST, "next_pid", 8, &next_pid, 8);
        nl_store_batch_put(b, NL_CF_MANIFEST, "next_seg", 8, &next_seg, 8);
        if (h->created) {
            uint32_t f[10];
            sh_config_encode(&h->cfg, f);
            nl_store_batch_put(b, NL_CF_MANIFEST, "config", 6, f, sizeof f);
            nl_store_batch_put(b, NL_CF_MANIFEST, "postings", 8, "1", 1);
        } else {
            nl_store_batch_delete(b, NL_CF_MANIFEST, "import_pending", 14);
        }
        rc = nl_store_write(b, 1);
        if (!rc) {
            h->next_pid = next_pid;
            h->next_seg = (uint32_t)next_seg;
        }
    }
    nl_store_batch_destroy(b);
    return rc;
}

int nl_shard_import_recover(nl_store *st, uint64_t *rolled_back)
{
    *rolled_back = 0;
    uint64_t pend[2];
    void *v;
    size_t vl;
    int rc = nl_store_get(st, NL_CF_MANIFEST, "import_pending", 14, &v, &vl);
    if (rc == NL_ENOTFOUND)
        return 0;
    if (rc)
        return rc;
    if (vl != sizeof pend) {
        free(v);
        return nl_fail(NL_ECORRUPT, "shard manifest: import_pending of %zu bytes", vl);
    }
    memcpy(pend, v, sizeof pend);
    free(v);
    nl_store_iter *it;
    if ((rc = nl_store_iter_create(st, NL_CF_PIDS, &it)) != 0)
        return rc;
    nl_store_batch *b = nl_store_batch_create(st);
    if (!b) {
        nl_store_iter_destroy(it);
        return -ENOMEM;
    }
    unsigned char from[8];
    sh_pid_key(pend[0], from);
    for (nl_store_iter_seek(it, from, 8); nl_store_iter_valid(it) && !rc; nl_store_iter_next(it)) {
        size_t kl, ekl;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        if (kl != 8 || sh_pid_from_key(k) >= pend[0] + pend[1])
            break;
        const void *ek = nl_store_iter_value(it, &ekl);
        /* Only ids that still map to this version: the import checked none existed. */
        void *cur;
        size_t cl;
        if (nl_store_get(st, NL_CF_IDMAP, ek, ekl, &cur, &cl) == 0) {
            if (cl == 8 && memcmp(cur, k, 8) == 0) {
                void *meta;
                size_t ml;
                if (nl_store_get(st, NL_CF_META, ek, ekl, &meta, &ml) == 0) {
                    nl_postings_write(b, sh_pid_from_key(k), meta, ml, 0);
                    free(meta);
                }
                nl_store_batch_delete(b, NL_CF_IDMAP, ek, ekl);
                nl_store_batch_delete(b, NL_CF_META, ek, ekl);
            }
            free(cur);
        }
        nl_store_batch_delete(b, NL_CF_PIDS, k, 8);
        (*rolled_back)++;
        if (nl_store_batch_count(b) >= 20000) {
            rc = nl_store_write(b, 0);
            nl_store_batch_clear(b);
        }
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    if (!rc) {
        nl_store_batch_delete(b, NL_CF_MANIFEST, "import_pending", 14);
        rc = nl_store_write(b, 1);
    }
    nl_store_batch_destroy(b);
    return rc;
}
