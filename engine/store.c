/*
 * store.c — nl_store over RocksDB's C API. RocksDB reports errors as malloc'd strings;
 * this file turns each into a nearline code with the string as the detail: "Corruption"
 * becomes NL_ECORRUPT, "IO error" a negated EIO, "NotFound" on open NL_ENOTFOUND.
 */
#include "nl_store.h"

#include <errno.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NL_STORE_BLOCK_CACHE (8u << 20)

static const char *const cf_names[NL_CF_COUNT] = {"manifest", "idmap", "meta", "tombstones", "fresh", "pids", "postings", "oplog"};

struct nl_store {
    rocksdb_t *db;
    rocksdb_options_t *opts;
    rocksdb_writeoptions_t *wsync, *wnosync;
    rocksdb_readoptions_t *ropts;
    rocksdb_column_family_handle_t *cf[NL_CF_COUNT + 1]; /* [0] is "default" */
    rocksdb_cache_t *cache;
    rocksdb_block_based_table_options_t *table;
    atomic_int failed;     /* the first failed write's code (sticky, nl_store.h) */
    pthread_mutex_t fmu;   /* guards failed_msg */
    char failed_msg[256];
};

struct nl_store_batch {
    rocksdb_writebatch_t *wb;
    nl_store *st;
};

struct nl_store_iter {
    rocksdb_iterator_t *it;
    rocksdb_readoptions_t *ro;
    const rocksdb_snapshot_t *snap;
    nl_store *st;
};

/* Consumes err (a RocksDB message) and returns the matching code. */
static int from_rocks(char *err, const char *what)
{
    int code = -EIO;
    if (strstr(err, "Corruption"))
        code = NL_ECORRUPT;
    else if (strstr(err, "does not exist") || strstr(err, "NotFound"))
        code = NL_ENOTFOUND;
    else if (strstr(err, "Invalid argument"))
        code = NL_EINVAL;
    nl_fail(code, "%s: %s", what, err);
    rocksdb_free(err);
    return code;
}

int nl_store_open(const char *dir, int create, nl_store **out)
{
    *out = NULL;
    nl_store *st = calloc(1, sizeof *st);
    if (!st)
        return -ENOMEM;
    pthread_mutex_init(&st->fmu, NULL);
    st->opts = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(st->opts, create ? 1 : 0);
    /* A store written by an older build lacks the newer families (postings): create them
     * on any open; the shard backfills what they should hold. */
    rocksdb_options_set_create_missing_column_families(st->opts, 1);
    rocksdb_options_set_compression(st->opts, rocksdb_zstd_compression);
    rocksdb_options_set_max_open_files(st->opts, 256);
    rocksdb_options_set_keep_log_file_num(st->opts, 4);
    /* RocksDB's own LOG file gets only the header an open writes: Debian's 7.8 aborts on an
     * assertion when a line is appended after a failed append (ENOSPC), which its info
     * logging does on a full disk (RocksDB PR 12448). nearline's log carries the errors:
     * every RocksDB failure comes back as the detail of a nearline error. */
    rocksdb_options_set_info_log_level(st->opts, 5 /* HEADER_LEVEL */);
    /* A small, bounded block cache: a shard's hot metadata is the id map and pid records
     * of search hits; the vectors' RAM budget belongs to the segments' node caches. */
    st->cache = rocksdb_cache_create_lru(NL_STORE_BLOCK_CACHE);
    st->table = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(st->table, st->cache);
    rocksdb_options_set_block_based_table_factory(st->opts, st->table);
    /* Memtables of 16 MiB rather than 64: eight column families each keep one. */
    rocksdb_options_set_write_buffer_size(st->opts, 16u << 20);
    st->wsync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(st->wsync, 1);
    st->wnosync = rocksdb_writeoptions_create();
    st->ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(st->ropts, 1);
    const char *names[NL_CF_COUNT + 1];
    const rocksdb_options_t *cf_opts[NL_CF_COUNT + 1];
    names[0] = "default";
    cf_opts[0] = st->opts;
    for (int i = 0; i < NL_CF_COUNT; i++) {
        names[i + 1] = cf_names[i];
        cf_opts[i + 1] = st->opts;
    }
    char *err = NULL;
    st->db = rocksdb_open_column_families(st->opts, dir, NL_CF_COUNT + 1, names, cf_opts, st->cf, &err);
    if (err) {
        /* A missing database reads as not found; any other I/O error stays one (a disk that
         * fails reads is not a collection that does not exist). */
        int missing = strstr(err, "No such file or directory") != NULL;
        int rc = from_rocks(err, dir);
        if (!create && rc == -EIO && missing)
            rc = NL_ENOTFOUND;
        st->db = NULL;
        nl_store_close(st);
        return rc;
    }
    *out = st;
    return 0;
}

int nl_store_checkpoint(nl_store *st, const char *dir)
{
    char *err = NULL;
    rocksdb_checkpoint_t *cp = rocksdb_checkpoint_object_create(st->db, &err);
    if (!cp)
        return from_rocks(err, "checkpoint");
    /* no memtable flush: the WAL is copied with it, so the copy has every synced write */
    rocksdb_checkpoint_create(cp, dir, UINT64_MAX, &err);
    rocksdb_checkpoint_object_destroy(cp);
    return err ? from_rocks(err, "checkpoint") : 0;
}

void nl_store_close(nl_store *st)
{
    if (!st)
        return;
    if (st->db) {
        for (int i = 0; i <= NL_CF_COUNT; i++)
            if (st->cf[i])
                rocksdb_column_family_handle_destroy(st->cf[i]);
        rocksdb_close(st->db);
    }
    if (st->wsync) rocksdb_writeoptions_destroy(st->wsync);
    if (st->wnosync) rocksdb_writeoptions_destroy(st->wnosync);
    if (st->ropts) rocksdb_readoptions_destroy(st->ropts);
    if (st->opts) rocksdb_options_destroy(st->opts);
    if (st->table) rocksdb_block_based_options_destroy(st->table);
    if (st->cache) rocksdb_cache_destroy(st->cache);
    pthread_mutex_destroy(&st->fmu);
    free(st);
}

nl_store_batch *nl_store_batch_create(nl_store *st)
{
    nl_store_batch *b = malloc(sizeof *b);
    if (!b)
        return NULL;
    b->wb = rocksdb_writebatch_create();
    b->st = st;
    return b;
}

void nl_store_batch_destroy(nl_store_batch *b)
{
    if (!b)
        return;
    rocksdb_writebatch_destroy(b->wb);
    free(b);
}

void nl_store_batch_clear(nl_store_batch *b) { rocksdb_writebatch_clear(b->wb); }
size_t nl_store_batch_count(const nl_store_batch *b) { return (size_t)rocksdb_writebatch_count(b->wb); }

void nl_store_batch_put(nl_store_batch *b, nl_cf cf, const void *key, size_t klen, const void *val, size_t vlen)
{
    rocksdb_writebatch_put_cf(b->wb, b->st->cf[cf + 1], key, klen, val, vlen);
}

void nl_store_batch_delete(nl_store_batch *b, nl_cf cf, const void *key, size_t klen)
{
    rocksdb_writebatch_delete_cf(b->wb, b->st->cf[cf + 1], key, klen);
}

void nl_store_batch_delete_range(nl_store_batch *b, nl_cf cf, const void *from, size_t flen, const void *to,
                                 size_t tlen)
{
    rocksdb_writebatch_delete_range_cf(b->wb, b->st->cf[cf + 1], from, flen, to, tlen);
}

int nl_store_write(nl_store_batch *b, int sync)
{
    nl_store *st = b->st;
    int was = atomic_load(&st->failed);
    if (was) {
        pthread_mutex_lock(&st->fmu);
        nl_fail(NL_EDOWN, "an earlier write to disk failed (%s): %s", nl_strerror(was), st->failed_msg);
        pthread_mutex_unlock(&st->fmu);
        return NL_EDOWN;
    }
    char *err = NULL;
    rocksdb_write(st->db, sync ? st->wsync : st->wnosync, b->wb, &err);
    if (!err)
        return 0;
    /* The record may be in the WAL (only its sync failed) or not: unknown until reopened. */
    int code = strstr(err, "No space left") ? -ENOSPC : -EIO;
    pthread_mutex_lock(&st->fmu);
    snprintf(st->failed_msg, sizeof st->failed_msg, "%s", err);
    int expected = 0;
    atomic_compare_exchange_strong(&st->failed, &expected, code);
    pthread_mutex_unlock(&st->fmu);
    nl_fail(NL_EFAILED, "a write to disk failed (%s), its outcome is unknown: %s", nl_strerror(code), err);
    rocksdb_free(err);
    return NL_EFAILED;
}

int nl_store_failed(const nl_store *st, char *msg, size_t len)
{
    int code = atomic_load(&((nl_store *)st)->failed);
    if (msg && len) {
        pthread_mutex_lock(&((nl_store *)st)->fmu);
        snprintf(msg, len, "%s", code ? st->failed_msg : "");
        pthread_mutex_unlock(&((nl_store *)st)->fmu);
    }
    return code;
}

int nl_store_get(nl_store *st, nl_cf cf, const void *key, size_t klen, void **val, size_t *vlen)
{
    *val = NULL;
    *vlen = 0;
    char *err = NULL;
    size_t len = 0;
    char *v = rocksdb_get_cf(st->db, st->ropts, st->cf[cf + 1], key, klen, &len, &err);
    if (err)
        return from_rocks(err, "get");
    if (!v)
        return NL_ENOTFOUND;
    /* Hand back memory the caller frees with free(), whatever allocator RocksDB used. */
    void *copy = malloc(len ? len : 1);
    if (!copy) {
        rocksdb_free(v);
        return -ENOMEM;
    }
    memcpy(copy, v, len);
    rocksdb_free(v);
    *val = copy;
    *vlen = len;
    return 0;
}

int nl_store_iter_create(nl_store *st, nl_cf cf, nl_store_iter **out)
{
    *out = NULL;
    nl_store_iter *it = calloc(1, sizeof *it);
    if (!it)
        return -ENOMEM;
    it->st = st;
    it->snap = rocksdb_create_snapshot(st->db);
    it->ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_verify_checksums(it->ro, 1);
    rocksdb_readoptions_set_snapshot(it->ro, it->snap);
    it->it = rocksdb_create_iterator_cf(st->db, it->ro, st->cf[cf + 1]);
    *out = it;
    return 0;
}

void nl_store_iter_destroy(nl_store_iter *it)
{
    if (!it)
        return;
    rocksdb_iter_destroy(it->it);
    rocksdb_readoptions_destroy(it->ro);
    rocksdb_release_snapshot(it->st->db, it->snap);
    free(it);
}

void nl_store_iter_seek(nl_store_iter *it, const void *key, size_t klen) { rocksdb_iter_seek(it->it, key, klen); }
void nl_store_iter_seek_first(nl_store_iter *it) { rocksdb_iter_seek_to_first(it->it); }
int nl_store_iter_valid(const nl_store_iter *it) { return rocksdb_iter_valid(it->it); }
void nl_store_iter_next(nl_store_iter *it) { rocksdb_iter_next(it->it); }

const void *nl_store_iter_key(const nl_store_iter *it, size_t *klen) { return rocksdb_iter_key(it->it, klen); }
const void *nl_store_iter_value(const nl_store_iter *it, size_t *vlen) { return rocksdb_iter_value(it->it, vlen); }

int nl_store_iter_status(const nl_store_iter *it)
{
    char *err = NULL;
    rocksdb_iter_get_error(it->it, &err);
    return err ? from_rocks(err, "iterate") : 0;
}

int nl_store_stats_get(nl_store *st, nl_store_stats *out)
{
    memset(out, 0, sizeof *out);
    static const char *const props[] = {"rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables",
                                        "rocksdb.estimate-pending-compaction-bytes", "rocksdb.num-running-compactions",
                                        "rocksdb.estimate-num-keys"};
    uint64_t *dst[] = {&out->sst_bytes, &out->memtable_bytes, &out->pending_compaction_bytes,
                       &out->running_compactions, &out->keys};
    for (int p = 0; p < 5; p++)
        for (int c = 0; c <= NL_CF_COUNT; c++) {
            uint64_t v = 0;
            /* running compactions is a database-wide number: count it once */
            if (p == 3 && c > 0)
                break;
            if (rocksdb_property_int_cf(st->db, st->cf[c], props[p], &v) == 0)
                *dst[p] += v;
        }
    out->block_cache_bytes = rocksdb_cache_get_usage(st->cache);
    return 0;
}
