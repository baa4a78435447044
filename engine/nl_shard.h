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

#include "nearline.h"

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
} nl_shard_config;

typedef struct nl_shard nl_shard;

/* Fills defaults in cfg. NL_EINVAL when a field is out of range. */
int nl_shard_config_check(nl_shard_config *cfg);
/* Creates dir (NL_EEXISTS if it exists) holding an empty shard. opt may be NULL. */
int nl_shard_create(const char *dir, const nl_shard_config *cfg, const nl_db_options *opt, nl_shard **out);
/* Creates the store of a shard whose first segment, seg-<seg_number>.nls with pids
 * 0..n-1, is already in dir: points row -> id ids[row] (row when ids is NULL), with the
 * metadata of line row of metadata_path (JSON Lines, already validated; optional). Used
 * by bulk import before the collection is published. */
int nl_shard_init_imported(const char *dir, const nl_shard_config *cfg, uint32_t seg_number, uint64_t n,
                           const uint64_t *ids, const char *metadata_path);
/* Opens and recovers: removes orphaned files, reopens the segments of the manifest,
 * rebuilds the fresh index and the tombstone set. */
int nl_shard_open(const char *dir, const nl_db_options *opt, nl_shard **out);
void nl_shard_close(nl_shard *sh);

void nl_shard_get_config(const nl_shard *sh, nl_shard_config *cfg);

/* Validation alone (what upsert checks first), so a collection can check a batch for
 * all its shards before any shard writes. */
int nl_shard_validate(const nl_shard *sh, const nl_point *pts, size_t n);
int nl_shard_upsert(nl_shard *sh, const nl_point *pts, size_t n);
int nl_shard_delete(nl_shard *sh, const nl_id *ids, size_t n, size_t *deleted);
int nl_shard_get(nl_shard *sh, const nl_id *id, float *vec, char **meta, size_t *meta_len);
/* Queries already validated by the caller (finite, dim floats each). */
int nl_shard_search_batch(nl_shard *sh, const float *queries, size_t nq, const nl_search_params *p,
                          nl_hit *hits, uint32_t *counts, nl_query_stats *stats);
int nl_shard_flush(nl_shard *sh);
int nl_shard_compact(nl_shard *sh, nl_compact_mode mode, int dry_run, nl_compact_report *rep);
void nl_shard_stats(nl_shard *sh, nl_collection_stats *st);
int nl_shard_verify(nl_shard *sh, nl_verify_report *rep);

/* External id <-> the key the store uses (one type byte, then the id). */
#define NL_EKEY_MAX (1 + NL_MAX_ID_BYTES)
size_t nl_ekey_encode(const nl_id *id, unsigned char *out);

#ifdef __cplusplus
}
#endif
#endif
