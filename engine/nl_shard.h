/*
 * nl_shard.h — one shard of a collection on one node: the RocksDB store (nl_store.h), the
 * fresh in-memory index (a dynamic Vamana graph) and, later, the immutable segments
 * flushed from it. This first part of the engine (issue 4) covers the write path:
 *
 *   upsert   a batch is validated whole (ids, dimension, finite values, metadata a JSON
 *            object within the size limit) before anything is written; then one synced
 *            RocksDB batch records the new versions, tombstones the versions they
 *            replace, and stores metadata; then the vectors go into the fresh index.
 *            When the call returns the points are durable and searchable.
 *   delete   one synced batch removes the ids and tombstones their versions.
 *   open     rebuilds the fresh index and the tombstone set from RocksDB.
 *
 * Each upserted version gets a pid (a per-shard sequence); the schema is in
 * docs/decisions.md. Flush, compaction, segments in search and backpressure with a
 * waiting writer are still to come: until then an upsert that would overfill the fresh
 * index fails with -EBUSY.
 *
 * Lifecycle: nl_shard_create or nl_shard_open -> calls from any threads (writes are
 * serialised inside; searches run alongside them) -> nl_shard_close.
 */
#ifndef NL_SHARD_H
#define NL_SHARD_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NL_MAX_ID_BYTES 256
#define NL_MAX_METADATA_BYTES 65536

typedef struct {
    uint32_t dim;
    nl_dtype dtype;          /* how vectors are stored */
    nl_metric metric;
    uint32_t R, L;           /* 0 = 64, 100 */
    float alpha;             /* 0 = 1.2 */
    uint32_t pq_m;           /* 0 = default for the dimension */
    uint32_t fresh_capacity; /* fresh-index points before a flush is needed; 0 = 100000 */
} nl_shard_config;

/* An external id: an unsigned 64-bit number or a string of 1..256 bytes. */
typedef struct {
    int is_str;
    uint64_t num;
    const char *str;
    size_t len;
} nl_id;

typedef struct {
    nl_id id;
    const float *vector;  /* dim floats, converted to the stored type */
    uint32_t dim;         /* must equal the shard's */
    const char *metadata; /* a JSON object, or NULL */
    size_t metadata_len;
} nl_point;

typedef struct nl_shard nl_shard;

/* Creates dir (NL_EEXISTS if it exists) holding an empty shard. *out owned by the caller. */
int nl_shard_create(const char *dir, const nl_shard_config *cfg, nl_shard **out);
/* Opens an existing shard and recovers its in-memory state. */
int nl_shard_open(const char *dir, nl_shard **out);
void nl_shard_close(nl_shard *sh);

void nl_shard_get_config(const nl_shard *sh, nl_shard_config *cfg);
/* Live points (upserted and not deleted). */
uint64_t nl_shard_count(nl_shard *sh);

/* All or nothing; NL_EINVAL/NL_EDIM/NL_EBADVALUE with a detail naming the point index. */
int nl_shard_upsert(nl_shard *sh, const nl_point *pts, size_t n);
/* Ids that do not exist are skipped; *deleted (optional) counts the others. */
int nl_shard_delete(nl_shard *sh, const nl_id *ids, size_t n, size_t *deleted);

/* vec (dim floats, optional) and *meta (malloc'd JSON, optional, NULL when the point has
 * none; caller frees). NL_ENOTFOUND when the id is absent. */
int nl_shard_get(nl_shard *sh, const nl_id *id, float *vec, char **meta, size_t *meta_len);

typedef struct {
    int is_str;
    uint64_t num;
    char str[NL_MAX_ID_BYTES + 1]; /* NUL-terminated copy when is_str */
    size_t len;
    float dist;
} nl_hit;

/* Up to k live points nearest to q (dim floats), nearest first, with list size L.
 * Returns how many were found, or a negative code. */
int nl_shard_search(nl_shard *sh, const float *q, uint32_t k, uint32_t L, nl_hit *hits);

#ifdef __cplusplus
}
#endif
#endif
