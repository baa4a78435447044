/*
 * nearline_replica.h — the calls only a cluster node makes on its local database: a
 * collection that holds some of its shards (attach, detach, calls on one shard), the
 * operation log replication is built on (ordered writes, apply, read, trim), the fence
 * a failover raises, and the consistent copy of a shard a snapshot transfer sends and
 * installs. An embedded user needs none of it: nearline.h is the whole embedded API.
 *
 * Same conventions as nearline.h: 0 or a negative code (nl_strerror), handles and
 * ownership as stated there.
 */
#ifndef NEARLINE_REPLICA_H
#define NEARLINE_REPLICA_H

#include "nearline.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- single shards
 *
 * What a cluster node uses: it holds some shards of a collection, not all (the shard map
 * says which), and the router sends it one shard's part of each request. The engine knows
 * nothing of the cluster; it only offers collections that hold a subset of their shards.
 * Whole-collection calls on such a collection work on the shards held (upsert, delete and
 * get fail with NL_ENOTFOUND for a point whose shard is not held); search merges them. */

/* The shard (0..shards-1) of an id: FNV-1a 64 of its store key modulo shards. The one
 * function that places points, shared by the engine and the cluster's router. */
uint32_t nl_shard_of(const nl_id *id, uint32_t shards);
/* Creates a collection holding only shards held[0..nheld) (nheld may be 0); otherwise as
 * nl_collection_create. */
int nl_collection_create_shards(nl_db *db, const char *name, const nl_collection_config *cfg, const uint32_t *held,
                                size_t nheld);
/* Opens shard s of a collection created by nl_collection_create_shards, creating it empty
 * when its directory is missing. 0 when it is (already) held. Safe beside calls on other
 * threads. */
int nl_collection_shard_attach(nl_collection *c, uint32_t s);
/* 1 when shard s is held here. */
int nl_collection_shard_held(const nl_collection *c, uint32_t s);
/* Stops holding shard s and removes its files: waits until no call holds the shard (the
 * same exclusion as nl_collection_shard_install), closes it and deletes its directory.
 * A cluster node does this once the shard map has moved the shard elsewhere. 0, or
 * NL_ENOTFOUND when it is not held. */
int nl_collection_shard_detach(nl_collection *c, uint32_t s);
/* The calls above on shard s only. A point or id of another shard is NL_EINVAL (nothing
 * written); a shard not held is NL_ENOTFOUND. */
int nl_collection_shard_upsert(nl_collection *c, uint32_t s, const nl_point *pts, size_t n);
int nl_collection_shard_delete(nl_collection *c, uint32_t s, const nl_id *ids, size_t n, size_t *deleted);
int nl_collection_shard_delete_by_filter(nl_collection *c, uint32_t s, const nl_filter *f, size_t *deleted);
int nl_collection_shard_search_batch(nl_collection *c, uint32_t s, const float *queries, size_t nq,
                                     const nl_search_params *p, nl_hit *hits, uint32_t *counts,
                                     nl_query_stats *stats);

/* ---------------------------------------------------------------- the operation log
 *
 * What replication (cluster/replication.c) builds on. A shard's writes can be ordered
 * operations: each gets the next sequence number (1, 2, ...) and carries the epoch of the
 * primary that ordered it, and is stored in the shard's log in the same synced RocksDB
 * batch as the write itself, so a shard's contents are always exactly its log applied in
 * order up to its last sequence. The primary writes through _log_upsert / _log_delete;
 * a follower applies the primary's entries, byte for byte, with _log_apply (the same
 * engine path: its own fresh index, flushes and compactions). An entry is a self-checking
 * byte string (checksummed; decoded as untrusted input by _log_apply).
 *
 * The fence is an epoch the shard has promised to refuse anything older than: a failover
 * raises it on the replicas it consults, and each newer primary on its followers. What is
 * checked against it is the epoch of the primary that sends an entry (a new primary relays
 * entries of older epochs, which keep theirs); entries must not go back in epoch either.
 * Those refusals are NL_ESTALE, as is an entry whose sequence is not the next one. */

typedef struct {
    uint64_t last_seq, last_epoch; /* the last entry applied (0, 0: none) */
    uint64_t first_seq;            /* the oldest entry still in the log (last_seq + 1 when empty) */
    uint64_t entries, bytes;       /* what the log holds */
    uint64_t fence;                /* refuses entries of older epochs */
    uint64_t oldest_ms;            /* wall-clock time the oldest entry was written (0: empty) */
} nl_log_state;

typedef struct {
    uint64_t seq, epoch;
    void *data; /* the entry's bytes (malloc'd) */
    size_t len;
} nl_log_entry;

/* How a primary orders a write: at its epoch, and, optionally, with a function called
 * with the write's sequence as soon as it is durable, before it is searchable here (on
 * the writing thread, no lock held), so replication can ship it while this node builds
 * its graph links. */
typedef struct {
    uint64_t epoch;
    void (*durable)(void *ctx, uint64_t seq);
    void *ctx;
} nl_log_order;

int nl_collection_shard_log_upsert(nl_collection *c, uint32_t s, const nl_log_order *o, const nl_point *pts,
                                   size_t n, uint64_t *seq);
/* Only the ids present are deleted, and only they are logged: a delete that removes
 * nothing logs nothing and leaves *seq unchanged. */
int nl_collection_shard_log_delete(nl_collection *c, uint32_t s, const nl_log_order *o, const nl_id *ids, size_t n,
                                   size_t *deleted, uint64_t *seq);
/* Resolves the filter to the ids it allows now and logs their deletion in entries of at
 * most 1,024 ids; *seq gets the last entry's sequence (unchanged when nothing matched). */
int nl_collection_shard_log_delete_by_filter(nl_collection *c, uint32_t s, const nl_log_order *o, const nl_filter *f,
                                             size_t *deleted, uint64_t *seq);
/* Applies entry seq of the log of the primary of epoch `by`. NL_ESTALE when seq is not
 * last + 1, `by` is below the fence, or the entry's epoch is below the last entry's;
 * NL_ECORRUPT when the bytes fail (or the entry claims a later epoch than `by`). */
int nl_collection_shard_log_apply(nl_collection *c, uint32_t s, uint64_t by, uint64_t seq, const void *entry,
                                  size_t len);
int nl_collection_shard_log_state(nl_collection *c, uint32_t s, nl_log_state *st);
/* Entries from seq on, in order, up to max_bytes in total (at least one when there is
 * one): *out malloc'd (nl_log_entries_free). NL_ENOTFOUND when seq is below first_seq
 * (trimmed away: the reader needs a snapshot). *n = 0 when seq > last_seq. */
int nl_collection_shard_log_read(nl_collection *c, uint32_t s, uint64_t seq, size_t max_bytes, nl_log_entry **out,
                                 size_t *n);
void nl_log_entries_free(nl_log_entry *e, size_t n);
/* The epoch of entry seq (0 for seq 0); NL_ENOTFOUND when it is not in the log. */
int nl_collection_shard_log_epoch_at(nl_collection *c, uint32_t s, uint64_t seq, uint64_t *epoch);
/* Removes the oldest entries while the log holds more than max_bytes or its oldest entry
 * is older than max_age_ms, never an entry at or above keep_from. *trimmed optional. */
int nl_collection_shard_log_trim(nl_collection *c, uint32_t s, uint64_t keep_from, uint64_t max_bytes,
                                 uint64_t max_age_ms, uint64_t *trimmed);
/* Raises the fence to epoch (durably); NL_ESTALE when the fence is above it already.
 * *st (optional) gets the state after. */
int nl_collection_shard_fence(nl_collection *c, uint32_t s, uint64_t epoch, nl_log_state *st);

/* A consistent copy of shard s as a shard directory at dir (created; must not exist): a
 * RocksDB checkpoint of its store and hard links to its segment files, taken between two
 * writes. *at (optional) gets its log position. The copy is a complete shard: install it
 * elsewhere with _shard_install. */
int nl_collection_shard_checkpoint(nl_collection *c, uint32_t s, const char *dir, nl_log_state *at);
/* Replaces held shard s by the shard directory dir (moved into place; it must open as a
 * shard of this collection's config). Calls on s wait while it happens. */
int nl_collection_shard_install(nl_collection *c, uint32_t s, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
