/*
 * nl_shard.h — one shard of a collection on one node (internal to the engine; the public
 * API is nearline.h). A shard is a directory:
 *
 *   <shard>/meta/        RocksDB (nl_store.h): manifest, idmap, meta, tombstones, fresh, pids
 *   <shard>/seg-N.nls    immutable segments listed in the manifest
 *
 * In memory: a view (the active fresh index, the one being flushed if any, the open
 * segments) that searches take a reference on, so a flush or compaction can publish a
 * new view while searches finish on the old one; files of replaced segments are unlinked
 * when the last view holding them goes. Key schema and ordering arguments:
 * docs/decisions.md.
 *
 * Lifecycle: nl_shard_create | nl_shard_open -> calls from any threads -> nl_shard_close
 * (stops the maintenance thread first).
 */
#ifndef NL_SHARD_H
#define NL_SHARD_H

#include "nearline_replica.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint32_t dim;
    nl_dtype dtype;
    nl_metric metric;
    uint32_t R, L;           /* 0 = 64, 100 */
    float alpha;             /* 0 = 1.2 */
    uint32_t pq_m;           /* 0 = default for the dimension */
    uint32_t fresh_capacity; /* 0 = 100000 */
    uint32_t code;           /* as nl_collection_config.code; never DEFAULT after the check */
} nl_shard_config;

typedef struct nl_shard nl_shard;

/* Fills defaults in cfg. NL_EINVAL when a field is out of range. */
int nl_shard_config_check(nl_shard_config *cfg);
/* Creates dir (NL_EEXISTS if it exists) holding an empty shard. opt may be NULL. */
int nl_shard_create(const char *dir, const nl_shard_config *cfg, const nl_db_options *opt, nl_shard **out);
/* Bulk import into a closed shard (shard_import.c): begin opens its store (create = 1:
 * a new shard directory, with cfg) and holds RocksDB's lock until end; the caller writes
 * seg-<number>.nls holding versions next_pid.. next_pid+n-1 into the directory, checks
 * collisions, then commit adds the rows' ids (ids[row], or id_first + row when ids is
 * NULL) and metadata (line row of metadata_path, validated already; optional) and the
 * segment to the manifest. */
typedef struct nl_shard_import nl_shard_import;
int nl_shard_import_begin(const char *dir, const nl_shard_config *cfg, int create, nl_shard_import **out);
void nl_shard_import_end(nl_shard_import *h);
uint64_t nl_shard_import_next_pid(const nl_shard_import *h);
uint32_t nl_shard_import_next_seg(const nl_shard_import *h);
/* The largest numeric id in the shard (*any = 0 when it holds none). */
int nl_shard_import_max_id(nl_shard_import *h, uint64_t *max, int *any);
/* How many of the rows' ids the shard holds already, and the first such row. */
int nl_shard_import_collisions(nl_shard_import *h, const uint64_t *ids, uint64_t id_first, uint64_t n,
                               uint64_t *count, uint64_t *first_row);
/* Row r (id ids[r], or id_first + r) is the segment's ordinal row_ord[r] (NULL: r), so its
 * version is the first pid taken + that ordinal. */
int nl_shard_import_commit(nl_shard_import *h, uint32_t seg_number, uint64_t n, const uint64_t *ids,
                           uint64_t id_first, const uint32_t *row_ord, const char *metadata_path);
/* Opens and recovers: opens every segment the manifest lists (any missing or unreadable
 * one fails the open with nothing deleted), then removes orphaned files, rebuilds the
 * fresh index and the tombstone set. */
int nl_shard_open(const char *dir, const nl_db_options *opt, nl_shard **out);
void nl_shard_close(nl_shard *sh);
/* 0 while the shard takes writes; NL_EFAILED once a durable step failed with an unknown
 * outcome (nl_store.h), with the cause in msg (may be NULL). Close and reopen to recover. */
int nl_shard_failed(nl_shard *sh, char *msg, size_t len);

void nl_shard_get_config(const nl_shard *sh, nl_shard_config *cfg);

/* Validation alone (what upsert checks first), so a collection can check a batch for
 * all its shards before any shard writes. */
int nl_shard_validate(const nl_shard *sh, const nl_point *pts, size_t n);
int nl_shard_upsert(nl_shard *sh, const nl_point *pts, size_t n);
int nl_shard_delete(nl_shard *sh, const nl_id *ids, size_t n, size_t *deleted);
/* Deletes every live version the filter allows (as of the call; later writes escape it). */
int nl_shard_delete_by_filter(nl_shard *sh, const nl_filter *f, size_t *deleted);
int nl_shard_get(nl_shard *sh, const nl_id *id, float *vec, char **meta, size_t *meta_len);
int nl_shard_get_metadata(nl_shard *sh, const nl_id *id, char **meta, size_t *meta_len);
/* Queries already validated by the caller (finite, dim floats each). */
int nl_shard_search_batch(nl_shard *sh, const float *queries, size_t nq, const nl_search_params *p,
                          nl_hit *hits, uint32_t *counts, nl_query_stats *stats);
int nl_shard_flush(nl_shard *sh);
int nl_shard_compact(nl_shard *sh, nl_compact_mode mode, int dry_run, nl_compact_report *rep);
void nl_shard_stats(nl_shard *sh, nl_collection_stats *st);
int nl_shard_verify(nl_shard *sh, nl_verify_report *rep);

/* The operation log and consistent copies (shard_log.c; nearline.h says what each does). */
int nl_shard_log_upsert(nl_shard *sh, const nl_log_order *o, const nl_point *pts, size_t n, uint64_t *seq);
int nl_shard_log_delete(nl_shard *sh, const nl_log_order *o, const nl_id *ids, size_t n, size_t *deleted,
                        uint64_t *seq);
int nl_shard_log_delete_by_filter(nl_shard *sh, const nl_log_order *o, const nl_filter *f, size_t *deleted,
                                  uint64_t *seq);
int nl_shard_log_apply(nl_shard *sh, uint64_t by, uint64_t seq, const void *entry, size_t len);
/* The checks apply makes of an entry's bytes before it touches a shard of dimension dim
 * (header, checksum, counts, lengths, ids): 0, NL_ECORRUPT or NL_EDIM. For fuzzing. */
int nl_shard_log_entry_check(const void *entry, size_t len, uint32_t dim);
int nl_shard_log_state(nl_shard *sh, nl_log_state *st);
int nl_shard_log_read(nl_shard *sh, uint64_t seq, size_t max_bytes, nl_log_entry **out, size_t *n);
int nl_shard_log_epoch_at(nl_shard *sh, uint64_t seq, uint64_t *epoch);
int nl_shard_log_trim(nl_shard *sh, uint64_t keep_from, uint64_t max_bytes, uint64_t max_age_ms, uint64_t *trimmed);
int nl_shard_fence(nl_shard *sh, uint64_t epoch, nl_log_state *st);
int nl_shard_checkpoint(nl_shard *sh, const char *dir, nl_log_state *at);

/* External id <-> the key the store uses (one type byte, then the id). */
#define NL_EKEY_MAX (1 + NL_MAX_ID_BYTES)
size_t nl_ekey_encode(const nl_id *id, unsigned char *out);

#ifdef __cplusplus
}
#endif
#endif
