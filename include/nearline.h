/*
 * nearline.h — the embedded database: the one public header of the engine.
 *
 * A database is a directory holding collections; a collection is a set of points (an
 * external id, a vector, optional JSON metadata) split over shards by a hash of the id.
 * Each shard keeps its acknowledged writes in RocksDB and in a fresh in-memory graph, and
 * flushes that graph to immutable disk segments in the background; compaction merges
 * segments and purges deleted points. See docs/architecture.md and docs/decisions.md.
 *
 * Lifecycle
 *   nl_db_open -> nl_collection_create / nl_collection_open -> upsert, delete, get,
 *   search, flush, compact, stats (from any threads) -> nl_collection_close ->
 *   nl_db_close. A collection handle is reference-counted: dropping a collection makes
 *   further calls on open handles fail with NL_ENOTFOUND, and its files go when the last
 *   handle closes. nl_db_close must come after every handle is closed.
 *
 * Errors: every call returns 0 (or a count) on success and a negative code on failure:
 * a negated errno, or an NL_E* code of nl_common.h. nl_strerror names the code and
 * nl_errdetail() says what went wrong (per thread, until the next failing call).
 *
 * Durability: when upsert or delete returns 0 the batch is synced to RocksDB's write-
 * ahead log (concurrent writers share one fsync) and visible to every later search.
 * A batch is validated whole before anything is written: bad input applies nothing.
 */
#ifndef NEARLINE_H
#define NEARLINE_H

#include <stddef.h>
#include <stdint.h>

#include "nl_common.h"
#include "nl_filter.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NL_MAX_ID_BYTES 256
#define NL_MAX_METADATA_BYTES 65536
#define NL_MAX_K 1024    /* also the largest list size L */
#define NL_MAX_SHARDS 256

typedef struct nl_db nl_db;
typedef struct nl_collection nl_collection;

/* ---------------------------------------------------------------- options */

typedef struct {
    uint32_t flush_points;         /* fresh points that trigger a flush; 0 = fresh_capacity / 2 */
    uint32_t flush_age_ms;         /* flush anything older than this; 0 = 60000 */
    uint32_t write_timeout_ms;     /* how long a writer waits for a full fresh index; 0 = 30000 */
    int no_background;             /* 1: no maintenance threads; flush and compact on request
                                    * (a writer that finds the fresh index full flushes itself) */
    float compact_dead_ratio;      /* rewrite a segment whose deleted share reaches this; 0 = 0.2 */
    uint32_t compact_max_segments; /* merge the smallest when a shard has more; 0 = 8 */
    uint64_t cache_budget;         /* bytes per shard for segments' seed tables and node
                                    * caches; 0 = 32 MiB */
    unsigned threads;              /* threads of a flush, a compaction, or the graph links of
                                    * one upsert batch; 0 = all CPUs */
    uint32_t search_inflight;      /* queries of one batch whose reads overlap; 0 = 16 */
    int io_pread;                  /* 1: segment reads by pread instead of io_uring */
    int buffered_io;               /* 1: no O_DIRECT (through the page cache) */
    uint32_t io_spin_us;           /* a search polls its ring this long before sleeping;
                                    * 0 = 100; a server whose threads outnumber the CPUs
                                    * wants 1 (see nl_io.h) */
    /* Asked before a background compaction of a shard (shard_dir: its directory) with
     * begin 1: 0 lets it run, anything else defers it (asked again a second later); called
     * with begin 0 when a compaction it let run has ended. NULL: always run. Called from
     * maintenance threads; a cluster node uses it to stagger the replicas of a shard. */
    int (*compact_gate)(void *ctx, const char *shard_dir, int begin);
    void *compact_gate_ctx;
    /* Free-space watermarks of the file system a shard lives on (docs/decisions.md): below
     * disk_low_free upserts fail with NL_ENOSPACE (reads and deletes go on); they are taken
     * again once it has disk_high_free. 0 = min(2 % of the file system, 1 GiB) and twice
     * the low one. A flush or compaction first checks that the file system has room for
     * the file it writes. disk_watermarks_off: neither check. */
    uint64_t disk_low_free, disk_high_free;
    int disk_watermarks_off;
    uint32_t recover_interval_ms;  /* how often a thread looks for failed shards to reopen
                                    * (nl_db_recover); 0 = 1000; none with no_background */
} nl_db_options;

/* Opens (creating when missing) the database directory. Leftovers of interrupted
 * creates, drops and imports are removed. *out owned by the caller: nl_db_close. */
int nl_db_open(const char *dir, const nl_db_options *opt, nl_db **out);
void nl_db_close(nl_db *db);

/* A shard whose durable step failed with an unknown outcome (a failed fsync of the WAL or
 * of a manifest batch: docs/decisions.md, "Unknown outcomes") refuses writes with
 * NL_EFAILED; reads go on. This call closes every such shard of the open collections and
 * opens it again, which decides its state from what is on disk (RocksDB replays its WAL;
 * every segment the manifest lists must be there). A shard whose reopen fails stays out
 * (its calls fail with NL_EFAILED) and is tried again on the next call. A thread of the
 * database calls it every recover_interval_ms unless no_background is set. *reopened and
 * *still_failed (may be NULL) count the shards. Returns 0 or the first reopen's error. */
int nl_db_recover(nl_db *db, uint32_t *reopened, uint32_t *still_failed);
/* How many shards of the open collections refuse writes now (failed, or not reopened);
 * the first one's collection, shard and cause in why (len bytes, may be NULL). */
uint32_t nl_db_failed_shards(nl_db *db, char *why, size_t len);
/* Failed shards this database reopened since it opened, all collections together (a
 * collection's own count starts again when it is closed and opened). */
uint64_t nl_db_shard_reopens(nl_db *db);

/* ---------------------------------------------------------------- collections */

typedef struct {
    uint32_t dim;
    nl_metric metric;
    nl_dtype dtype;          /* how vectors are stored: f32, f16, u8, i8 */
    uint32_t shards;         /* 0 = 1 */
    uint32_t R, L;           /* graph degree and build list size; 0 = 64, 100 */
    float alpha;             /* prune factor; 0 = 1.2 */
    uint32_t pq_bytes;       /* PQ code bytes per point; 0 = default for the dimension */
    uint32_t fresh_capacity; /* unflushed points per shard before writers wait; 0 = 100000 */
    uint32_t code;           /* the code segments navigate by: NL_COLL_CODE_DEFAULT (PQ when
                              * pq_bytes is set, else the dimension's default: RaBitQ where it
                              * fits the default PQ size + 8 bytes, docs/decisions.md),
                              * NL_COLL_CODE_PQ (pq_bytes) or NL_COLL_CODE_RABITQ(bits) */
} nl_collection_config;

#define NL_COLL_CODE_DEFAULT 0u
#define NL_COLL_CODE_PQ 0x100u
#define NL_COLL_CODE_RABITQ(bits) (0x200u | (uint32_t)(bits))
#define NL_COLL_CODE_IS_RABITQ(c) (((c) & 0xff00u) == 0x200u)
#define NL_COLL_CODE_BITS(c) ((c) & 0xffu)

/* "pq:BYTES", "rabitq:BITS" or "auto" (NL_COLL_CODE_DEFAULT) into a config's code (and
 * pq_bytes for PQ). 0 or NL_EINVAL. */
int nl_collection_code_parse(const char *s, nl_collection_config *cfg);
/* The code a config means: code, or for NL_COLL_CODE_DEFAULT what the defaults make of it
 * (PQ when pq_bytes is set, else the dimension's default). */
uint32_t nl_collection_code_resolved(const nl_collection_config *cfg);
/* The config's code (resolved) as "pq:32" / "rabitq:2"; returns buf. */
const char *nl_collection_code_name(const nl_collection_config *cfg, char *buf, size_t len);

/* Fills in the defaults of cfg (shards 0 = 1, R, L, alpha, pq_bytes, fresh_capacity) as
 * create would, and checks it: 0 or NL_EINVAL naming the field. */
int nl_collection_config_defaults(nl_collection_config *cfg);
/* Names are [A-Za-z0-9_-]{1,64}. NL_EEXISTS when the name is taken. */
int nl_collection_create(nl_db *db, const char *name, const nl_collection_config *cfg);
/* NL_ENOTFOUND when there is no such collection. */
int nl_collection_drop(nl_db *db, const char *name);
/* Sorted names; *names and each entry malloc'd: free with nl_names_free. */
int nl_collection_list(nl_db *db, char ***names, size_t *count);
void nl_names_free(char **names, size_t count);

/* A counted handle: close it with nl_collection_close. */
int nl_collection_open(nl_db *db, const char *name, nl_collection **out);
void nl_collection_close(nl_collection *c);
/* The configuration with defaults filled in. */
void nl_collection_describe(const nl_collection *c, nl_collection_config *cfg);
const char *nl_collection_name(const nl_collection *c);

/* ---------------------------------------------------------------- points */

/* An external id: an unsigned 64-bit number, or a string of 1..256 bytes (any bytes). */
typedef struct {
    int is_str;
    uint64_t num;
    const char *str;
    size_t len;
} nl_id;

typedef struct {
    nl_id id;
    const float *vector;  /* dim floats; must be finite and fit the stored type */
    uint32_t dim;         /* must equal the collection's */
    const char *metadata; /* a JSON object of at most NL_MAX_METADATA_BYTES, or NULL */
    size_t metadata_len;
} nl_point;

/* Inserts or replaces. All or nothing for bad input: NL_EINVAL, NL_EDIM or NL_EBADVALUE
 * with a detail naming the point; -ETIMEDOUT when the fresh index stayed full for the
 * write timeout (flushes behind: retry later). */
int nl_collection_upsert(nl_collection *c, const nl_point *pts, size_t n);
/* Ids that do not exist are skipped; *deleted (optional) counts the others. */
int nl_collection_delete(nl_collection *c, const nl_id *ids, size_t n, size_t *deleted);
/* Deletes every point whose metadata satisfies f (nl_filter.h), shard by shard, in
 * batches: points written while it runs may escape it, and a point replaced meanwhile is
 * kept (its new version is judged by its own metadata). *deleted (optional) counts. */
int nl_collection_delete_by_filter(nl_collection *c, const nl_filter *f, size_t *deleted);
/* vec (dim floats, optional) and *meta (malloc'd, NUL-terminated JSON, optional; NULL
 * when the point has none; caller frees). NL_ENOTFOUND when the id is absent. */
int nl_collection_get(nl_collection *c, const nl_id *id, float *vec, char **meta, size_t *meta_len);
/* Only the metadata, in one store read (for decorating search results): 0 with *meta NULL
 * when the point has none or does not exist; *meta malloc'd, NUL-terminated, caller frees. */
int nl_collection_get_metadata(nl_collection *c, const nl_id *id, char **meta, size_t *meta_len);

/* ---------------------------------------------------------------- search */

typedef struct {
    int is_str;
    uint64_t num;
    char str[NL_MAX_ID_BYTES + 1]; /* NUL-terminated copy when is_str */
    size_t len;
    float dist;                    /* exact distance: l2 squared, -ip, or 1 - cosine */
} nl_hit;

/* Return 1 to keep a candidate, 0 to skip it. Called from the searching thread. */
typedef int (*nl_accept_fn)(void *ctx, const nl_hit *candidate);

typedef struct {
    uint32_t k;         /* results per query, 1..NL_MAX_K */
    uint32_t L;         /* list size; 0 = max(k, 64); raised to k */
    uint32_t W;         /* beam width (reads in flight per query); 0 = 4 */
    nl_accept_fn accept; /* optional post-filter on candidates */
    void *accept_ctx;
    /* Metadata filter (nl_filter.h; optional, borrowed for the call): only points whose
     * metadata satisfies it are results, and a query returns min(k, matching points)
     * results. `filters` (nq entries, NULL entries = unfiltered) gives each query of a
     * batch its own and overrides `filter`. See docs/filters.md for the plans. */
    const nl_filter *filter;
    const nl_filter *const *filters;
    uint32_t plan;      /* filtered queries: 0 = chosen per index by cost; NL_PLAN_GRAPH or
                         * NL_PLAN_SCAN to force one (tests, benchmarks) */
    float bound;        /* segments with RaBitQ codes: skip reading candidates whose error
                         * bound (this many standard deviations) keeps them out of the top
                         * k; 0 = NL_SEARCH_BOUND_DEFAULT, negative = never skip */
    int sector;         /* segments in block layout: 0 = expand the other records of each
                         * sector read where they are near enough (the default), negative =
                         * use only the record asked for */
    int seeds;          /* segments with a seed table: 0 = start each walk also from the
                         * table's members nearest the query (the default), negative = from
                         * the medoid alone */
    int segments;       /* a shard of several segments, unfiltered queries: 0 = one beam
                         * with one list of L across them all (the default), negative = a
                         * walk per segment, each with L x sqrt(its share of the largest),
                         * at least k (the rule before; benchmarks compare) */
} nl_search_params;

#define NL_SEARCH_BOUND_DEFAULT 1.9f

typedef struct {
    uint64_t start_ns;   /* when the engine started on it (the monotonic nanosecond clock) */
    uint64_t latency_ns; /* from then until its results were complete */
    uint32_t ios;        /* sector reads */
    uint32_t cache_hits; /* nodes served by the node cache */
    uint32_t bound_skips; /* candidates not read: their error bound kept them out of the top k */
    uint32_t sector_expands; /* nodes expanded from a sector read for another node (block layout) */
    uint32_t hops;       /* nodes expanded (all indexes) */
    uint32_t filter_plan; /* filtered queries: NL_PLAN_* bits of the plans used */
    uint32_t scanned;    /* points a scan plan scored */
    uint64_t matches;    /* points the filter allows (an upper bound: counted from the
                          * index, where a deleted point can linger until compaction) */
} nl_query_stats;

enum {
    NL_PLAN_GRAPH = 1,    /* beam search with the predicate on results, widened list */
    NL_PLAN_SCAN = 2,     /* the allowed set scored directly, then re-ranked exactly */
    NL_PLAN_FALLBACK = 4, /* the walk found fewer than min(k, matches): rerun as an exhaustive scan */
    NL_PLAN_RETRY = 8     /* the answer was short of min(k, live): searched again with a wider list */
};

/* k nearest live points to q (dim floats), nearest first. Returns how many: min(k, live
 * points), or min(k, points the filter allows) — fewer only when an accept callback
 * refused candidates, or points were deleted while the search ran. However many deleted
 * points crowd the query's neighbourhood, a search that comes back short of that is
 * searched again (a wider list, then exhaustively) before it answers. A negative code on
 * failure. stats optional. */
int nl_collection_search(nl_collection *c, const float *q, const nl_search_params *p, nl_hit *hits,
                         nl_query_stats *stats);
/* nq queries at once (row-major), k hits per query into hits[qi * k ...]; counts[qi]
 * gets how many were found. Segment reads of different queries overlap, so a batch is
 * the way to throughput. stats (optional, nq entries). */
int nl_collection_search_batch(nl_collection *c, const float *queries, size_t nq, const nl_search_params *p,
                               nl_hit *hits, uint32_t *counts, nl_query_stats *stats);

/* ---------------------------------------------------------------- maintenance */

/* Writes every acknowledged fresh point to segments now (waits for it). */
int nl_collection_flush(nl_collection *c);

typedef enum {
    NL_COMPACT_POLICY = 0, /* what the background would do: segments over the deleted ratio,
                            * and the smallest when there are too many */
    NL_COMPACT_FULL = 1    /* merge every segment of each shard into one, purging all deletes */
} nl_compact_mode;

typedef struct {
    uint32_t segments_in;   /* segments rewritten (or that would be) */
    uint32_t segments_out;
    uint64_t points_in;     /* points they hold, deleted included */
    uint64_t points_out;    /* live points written */
    uint64_t purged;        /* deleted or replaced versions dropped */
    uint64_t bytes_in, bytes_out;
    double seconds;
    uint64_t repaired;      /* insertion merges: lists rewritten by delete consolidation */
} nl_compact_report;

/* Compacts every shard; with dry_run, only reports what it would do. */
int nl_collection_compact(nl_collection *c, nl_compact_mode mode, int dry_run, nl_compact_report *rep);

typedef struct {
    uint64_t points;          /* live points */
    uint64_t fresh_points;    /* versions not yet flushed (active + being flushed) */
    uint64_t segments;
    uint64_t segment_points;  /* versions in segments, deleted included */
    uint64_t tombstones;      /* deleted versions not yet purged */
    uint64_t disk_bytes;      /* segment files */
    uint64_t ram_bytes;       /* segments' resident part and fresh vectors */
    uint64_t flushes, compactions;
    double flush_seconds, compaction_seconds; /* totals since open */
    uint64_t write_waits;     /* writers that waited for a flush */
    uint64_t search_retries;  /* queries short of min(k, live) searched again, wider list */
    uint64_t search_exhaustive; /* ... and then exhaustively (every live point scored) */
    int background_error;     /* last error of a background flush or compaction, or 0 */
    uint32_t failed_shards;   /* shards refusing writes after a failed durable step
                               * (NL_EFAILED) until they are reopened */
    uint64_t shard_reopens;   /* failed shards reopened (recovered) since the collection opened */
    uint64_t cached_nodes;    /* segment nodes held by the node cache */
    uint64_t seed_members;    /* ordinals in the segments' seed tables (where walks start) */
    uint64_t block_layout_points; /* segment points whose records are in block layout */
    int direct_io;            /* 1 when every segment is read with O_DIRECT */
    /* the metadata store (RocksDB), summed over shards */
    uint64_t store_sst_bytes, store_memtable_bytes, store_pending_compaction_bytes;
    uint64_t store_running_compactions, store_keys, store_block_cache_bytes;
    /* segment bytes written since open by flushes and by compactions: their sum over the
     * flushes' is the write amplification of keeping few segments */
    uint64_t flush_bytes, compaction_bytes;
} nl_collection_stats;

int nl_collection_stats_get(nl_collection *c, nl_collection_stats *st);
/* The same for shard s alone (NL_ENOTFOUND when not held). */
int nl_collection_shard_stats(nl_collection *c, uint32_t s, nl_collection_stats *st);

typedef struct {
    uint64_t segments_checked;
    uint64_t sectors_checked;
    uint64_t ids_checked;
    uint64_t problems;
} nl_verify_report;

/* Checks every segment end to end and the id map against the segments and the fresh
 * vectors. 0 when sound; NL_ECORRUPT with a detail naming the first problem. */
int nl_collection_verify(nl_collection *c, nl_verify_report *rep);

#ifdef __cplusplus
}
#endif
#endif
