/*
 * nl_store.h — a shard's metadata store: one RocksDB database (RocksDB's C API) with a
 * fixed set of column families, so the engine names them by enum and never by string:
 *
 *   manifest    live segments, their generation, collection config, counters
 *   idmap       external id -> its live version (pid); segments map pids to ordinals
 *   meta        metadata payloads (JSON), by external id
 *   tombstones  pids of deleted or replaced versions not yet purged by compaction
 *   fresh       vectors of the fresh (not yet flushed) index
 *   pids        version (pid) -> external id, for every live version
 *   postings    the filter index: (field, value, pid) keys of every live version
 *   oplog       the replication log: sequence (8 bytes, big-endian) -> one operation
 *
 * Writes go through batches: a batch is applied atomically, and with sync it is durable
 * in RocksDB's WAL before nl_store_write returns (RocksDB groups concurrent synced
 * writers into one fsync). Blocks are zstd-compressed.
 *
 * Lifecycle: nl_store_open -> batches / gets / iterators (thread-safe; an iterator or a
 * batch belongs to one thread) -> destroy them -> nl_store_close.
 */
#ifndef NL_STORE_H
#define NL_STORE_H

#include <stddef.h>

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NL_CF_MANIFEST = 0, NL_CF_IDMAP, NL_CF_META, NL_CF_TOMBSTONES, NL_CF_FRESH, NL_CF_PIDS, NL_CF_POSTINGS, NL_CF_OPLOG, NL_CF_COUNT } nl_cf;

typedef struct nl_store nl_store;
typedef struct nl_store_batch nl_store_batch;
typedef struct nl_store_iter nl_store_iter;

/* Failure is sticky: once a write returned an error from RocksDB (the WAL append or its
 * sync failed, or a background error stopped writes), the outcome of that write is
 * unknown (that write returns NL_EFAILED) and the store takes no further write: every
 * later nl_store_write returns NL_EDOWN (nothing applied) at once, without calling RocksDB (a WAL append after a failed one aborts
 * Debian's RocksDB 7.8 on an assertion, and a retried sync may report success for pages
 * the kernel already dropped). Reads go on. Only closing and reopening clears it: the
 * reopen replays the WAL and so decides the outcome from what is on disk. */

/* Opens dir, creating the database and any missing column family when create is set.
 * NL_ENOTFOUND when it does not exist and create is not set. *out owned by the caller. */
int nl_store_open(const char *dir, int create, nl_store **out);
void nl_store_close(nl_store *st);

/* Batches: build, then nl_store_write to the store they were created for; clear to reuse.
 * NULL only when out of memory. The store must outlive the batch. */
nl_store_batch *nl_store_batch_create(nl_store *st);
void nl_store_batch_destroy(nl_store_batch *b);
void nl_store_batch_clear(nl_store_batch *b);
void nl_store_batch_put(nl_store_batch *b, nl_cf cf, const void *key, size_t klen, const void *val, size_t vlen);
void nl_store_batch_delete(nl_store_batch *b, nl_cf cf, const void *key, size_t klen);
/* Deletes every key in [from, to). */
void nl_store_batch_delete_range(nl_store_batch *b, nl_cf cf, const void *from, size_t flen, const void *to,
                                 size_t tlen);
size_t nl_store_batch_count(const nl_store_batch *b);
int nl_store_write(nl_store_batch *b, int sync);
/* 0 while writes are taken; else the code of the write that failed (a negated errno such
 * as -EIO or -ENOSPC), and its RocksDB message in msg (len bytes, may be NULL). */
int nl_store_failed(const nl_store *st, char *msg, size_t len);

/* *val is malloc'd and owned by the caller (free()); NL_ENOTFOUND when absent. */
int nl_store_get(nl_store *st, nl_cf cf, const void *key, size_t klen, void **val, size_t *vlen);

/* Iterators see a consistent snapshot taken at creation. */
int nl_store_iter_create(nl_store *st, nl_cf cf, nl_store_iter **out);
void nl_store_iter_destroy(nl_store_iter *it);
void nl_store_iter_seek(nl_store_iter *it, const void *key, size_t klen); /* first key >= key */
void nl_store_iter_seek_first(nl_store_iter *it);
int nl_store_iter_valid(const nl_store_iter *it);
void nl_store_iter_next(nl_store_iter *it);
/* Borrowed; valid until the iterator moves. */
const void *nl_store_iter_key(const nl_store_iter *it, size_t *klen);
const void *nl_store_iter_value(const nl_store_iter *it, size_t *vlen);
/* 0, or the error that ended the iteration early (NL_ECORRUPT for bad blocks). */
int nl_store_iter_status(const nl_store_iter *it);

/* A consistent copy of the whole store at dir (must not exist): RocksDB's checkpoint
 * (SST files hard-linked, the rest copied). */
int nl_store_checkpoint(nl_store *st, const char *dir);

/* RocksDB's own numbers that matter to an operator, summed over the column families. */
typedef struct {
    uint64_t sst_bytes, memtable_bytes, pending_compaction_bytes, running_compactions, keys;
    uint64_t block_cache_bytes;
} nl_store_stats;
int nl_store_stats_get(nl_store *st, nl_store_stats *out);

#ifdef __cplusplus
}
#endif
#endif
