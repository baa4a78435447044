/*
 * nl_segment.h — immutable on-disk segments: the writer that turns a built Vamana graph,
 * its vectors and compressed codes (nl_quant.h: PQ or RaBitQ) into a segment file, and the reader that opens one (validating
 * everything it keeps in RAM), searches it with a pipelined beam search over io_uring,
 * and verifies it end to end.
 *
 * What stays in RAM after open: the codebook and codes (code_bytes per point), the id
 * map (8 bytes per point, absent when ids are ordinals), and the node cache: whole node
 * records of the hot list, BFS order from the medoid, up to the cache budget. Everything
 * else is read per query, 4 KiB sectors with O_DIRECT, so the page cache plays no part.
 *
 * Lifecycle: nl_segment_write (no handle) | nl_segment_open -> searchers (one per thread)
 * -> destroy searchers -> nl_segment_close. An open segment is immutable and may be
 * shared by any number of searchers on different threads.
 */
#ifndef NL_SEGMENT_H
#define NL_SEGMENT_H

#include "nearline.h"
#include "nl_common.h"
#include "nl_io.h"
#include "nl_bitmap.h"
#include "nl_quant.h"
#include "nl_vamana.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- writing ---- */

typedef struct {
    const nl_vamana *index;  /* graph, medoid, vectors and metric */
    const nl_quant *quant;
    const uint8_t *codes;    /* n x code bytes */
    const uint64_t *ids;     /* n external ids (by index node), or NULL: a point's id is its
                              * file ordinal */
    uint32_t build_L;
    float build_alpha;
    uint32_t hot_max;        /* hot-list length cap; 0 = min(n, max(1024, n / 10)) */
    const uint32_t *order;   /* optional permutation: file ordinal u holds index node order[u]
                              * (codes and ids stay indexed by index node); NULL = identity */
    int block_layout;        /* order is nl_layout_blocks' for this segment's records per
                              * sector (nl_segment_records_per_sector): the header says so */
} nl_segment_source;

/* Writes path atomically: a temporary name in the same directory, fsync, rename, fsync of
 * the directory. On failure nothing is left at path or at the temporary name. */
int nl_segment_write(const char *path, const nl_segment_source *src);

/* Streaming writer: nodes added one at a time in ordinal order, then codes and ids
 * pulled through callbacks, so a segment of any size is written with O(1) memory.
 * Lifecycle: create -> add x count -> finish (always consumes the writer) | abort. */
typedef struct {
    uint64_t count;
    uint32_t dim;
    nl_dtype dtype;
    nl_metric metric;
    uint32_t R;
    uint32_t build_L;
    float build_alpha;
    const nl_quant *quant;   /* borrowed until finish/abort */
    int block_layout;        /* the nodes come in nl_layout_blocks order (header flag) */
} nl_segment_writer_params;

/* Node records one sector holds for this shape (0 when a record spans sectors): the block
 * size nl_layout_blocks is given. */
uint32_t nl_segment_records_per_sector(uint32_t dim, nl_dtype dtype, uint32_t R);

typedef struct nl_segment_writer nl_segment_writer;

/* Fills rows [first, first+count) of codes (code bytes each) or ids (u64 each). */
typedef int (*nl_segment_fill_fn)(void *ctx, uint64_t first, uint64_t count, void *dst);

int nl_segment_writer_create(const char *path, const nl_segment_writer_params *p, nl_segment_writer **out);
/* The next ordinal's vector (dim elements of the stored type) and neighbour list. */
int nl_segment_writer_add(nl_segment_writer *w, const void *vec, const uint32_t *nbrs, uint32_t deg);
/* Writes the sections and the header and publishes the file atomically. ids NULL =
 * ordinals. hot: a precomputed hot list (ordinals), or NULL to take up to hot_max nodes
 * (0 = default) breadth-first from the medoid out of the sectors already written. */
int nl_segment_writer_finish(nl_segment_writer *w, uint32_t medoid, nl_segment_fill_fn codes, nl_segment_fill_fn ids,
                             void *ctx, const uint32_t *hot, uint32_t hot_n, uint32_t hot_max);
/* After the last add: makes every node reachable from medoid, giving each node a
 * breadth-first walk misses an in-edge from a reached node (a merged graph can lose some).
 * *added counts the edges added. */
int nl_segment_writer_connect(nl_segment_writer *w, uint32_t medoid, uint64_t *added);
/* Drops an unfinished writer and its temporary file. */
void nl_segment_writer_abort(nl_segment_writer *w);

/* Rewrites the segment at path in block layout (segment_layout.c), atomically, reading its
 * graph back from the file (memory O(n) words, never the graph). inv (n entries, the
 * caller's) gets each old ordinal's new one; the id sequence is kept, so old ordinal u's
 * id is now the id of ordinal inv[u]. *overlap (optional): the layout's overlap ratio.
 * NL_EINVAL when records do not pack several to a sector or the layout is there already. */
int nl_segment_relayout(const char *path, uint32_t *inv, double *overlap);

/* ---- reading ---- */

typedef struct nl_segment nl_segment;

typedef struct {
    uint64_t cache_budget; /* bytes of RAM for the seed table (RaBitQ segments; first) and
                            * the records of hot nodes (the rest) */
    nl_io_mode io;         /* AUTO: io_uring, else pread */
    int buffered;          /* 1: do not use O_DIRECT (tests of the fallback) */
} nl_segment_options;

/* Opens and validates the header and every in-RAM section (checksums, bounds). Errors:
 * NL_ECORRUPT (with a detail naming the section) or a negated errno. */
int nl_segment_open(const char *path, const nl_segment_options *opt, nl_segment **out);
void nl_segment_close(nl_segment *seg);

typedef struct {
    uint64_t count;
    uint32_t dim, R, pq_m, medoid; /* pq_m: bytes of one code, whatever its kind */
    nl_code_spec code;
    uint32_t format;
    nl_dtype dtype;
    nl_metric metric;
    uint32_t node_bytes, nodes_per_sector, sectors_per_node;
    uint32_t build_L;
    float build_alpha;
    uint64_t file_bytes;
    uint64_t ram_bytes;      /* codes + codebook + id map + seed table + cache + bookkeeping */
    uint64_t cached_nodes;
    uint32_t seed_groups;    /* groups in the seed table (0: the search starts at the medoid) */
    uint64_t seed_members;   /* ordinals it holds */
    int direct_io;           /* O_DIRECT in effect */
    int identity_ids;
    int block_layout;        /* records in nl_layout_blocks order (the search uses whole sectors) */
} nl_segment_info;

void nl_segment_get_info(const nl_segment *seg, nl_segment_info *info);

/* The external id of ordinal u. */
uint64_t nl_segment_id(const nl_segment *seg, uint32_t u);
/* The ordinal holding id, by binary search (the engine writes ids in ascending order);
 * NL_ENOTFOUND when absent. */
int nl_segment_find(const nl_segment *seg, uint64_t id, uint32_t *ord);
/* 1 when the id map is strictly ascending (or absent), which nl_segment_find needs. */
int nl_segment_ids_ascending(const nl_segment *seg);
/* Copies the stored vectors of ordinals first..first+count-1 (dim elements of the stored
 * type each) into out, checking every sector read. */
int nl_segment_read_vectors(nl_segment *seg, uint32_t first, uint32_t count, void *out);
/* The same, plus each node's neighbour list: adj gets count x R ordinals (row i holds
 * deg[i] of them), deg count entries. adj and deg may both be NULL. */
int nl_segment_read_nodes(nl_segment *seg, uint32_t first, uint32_t count, void *out, uint32_t *adj, uint32_t *deg);
/* The segment's codebook and codes (count x code bytes), owned by the segment. */
const nl_quant *nl_segment_quant(const nl_segment *seg);
const uint8_t *nl_segment_codes(const nl_segment *seg);

/* ---- searching ---- */

typedef struct {
    uint32_t k;    /* results per query */
    uint32_t L;    /* candidate list size, >= k */
    uint32_t W;    /* beam width: sector reads in flight per query */
    float eps0;    /* RaBitQ's error bound in standard deviations: reads whose lower bound
                    * cannot enter the top k are skipped; 0 = no skipping */
    int no_sector; /* block-layout segments: do not use the other records of a sector read
                    * (benchmarks compare; the default uses them) */
    int no_seeds;  /* start from the medoid alone, not also from the seed table's members
                    * nearest the query (benchmarks compare; the default uses them) */
} nl_seg_query_params;

/* nl_query_stats (nearline.h): per-query latency, sector reads, cache hits, hops. */

typedef struct nl_seg_searcher nl_seg_searcher;

/* Scratch and a private io ring for one thread: up to `inflight` queries at once, each
 * with list size <= max_L and beam <= max_W. *out owned by the caller. */
int nl_seg_searcher_create(nl_segment *seg, uint32_t max_L, uint32_t max_W, uint32_t inflight,
                           nl_io_mode io, nl_seg_searcher **out);
void nl_seg_searcher_destroy(nl_seg_searcher *s);
nl_io_mode nl_seg_searcher_io(const nl_seg_searcher *s);
/* nl_io_set_spin of the searcher's ring. */
void nl_seg_searcher_set_spin(nl_seg_searcher *s, uint64_t ns);

/* Runs nq queries (f32, dim each), keeping up to `inflight` of them in flight on this
 * thread's ring. Writes k ordinals (UINT32_MAX past the found ones) and exact distances
 * per query, nearest first, and per-query stats (optional). */
int nl_seg_search_batch(nl_seg_searcher *s, const float *queries, size_t nq,
                        const nl_seg_query_params *p, uint32_t *ords, float *dists,
                        nl_query_stats *stats);

/* The same over several segments of one geometry (dimension, PQ bytes, node layout; the
 * segments of one shard): every query on every segment, all in flight together on this
 * thread's ring, so a query's segments are searched side by side rather than one after
 * another. p[i] applies to segs[i]; results of segment i, query q go to row
 * (i * nq + q) of ords/dists (kstride entries, >= every p[i].k) and stats. The searcher
 * must have been created on one of segs (or a segment of the same geometry). */
int nl_seg_search_multi(nl_seg_searcher *s, nl_segment *const *segs, size_t nseg, const float *queries, size_t nq,
                        const nl_seg_query_params *p, uint32_t kstride, uint32_t *ords, float *dists,
                        nl_query_stats *stats);

/* The general form: any list of (segment, query) jobs, each with its own k, L, W and
 * optionally a filter or a scan plan, all in flight together on this thread's ring.
 * Results of job j go to row jobs[j].out of ords/dists (kstride entries each) and stats.
 *  - allow (optional): only nodes whose version (nl_segment_id) is in the bitmap (not in
 *    it when allow_neg) become results; the others are still expanded, so the walk
 *    reaches allowed nodes past them.
 *  - dead (optional): versions for which dead(dead_ctx, version) is nonzero (deleted
 *    ones) never become results but are still expanded, like filtered-out ones: the k
 *    results are k live versions however many tombstones crowd the query's neighbourhood.
 *    Each deleted node expanded widens the list by one, up to L_max (0: L), so the list
 *    keeps about L live candidates where a neighbourhood was deleted wholesale. Called
 *    from the searching thread, once per expanded node.
 *  - subset (optional): the scan plan. The subset's ordinals are scored by PQ distance,
 *    the best L read from disk (W at a time) and re-ranked exactly; no graph walk. The
 *    subset must already be filtered (neither allow nor dead is consulted).
 *  - nsegs (optional, > 1): a joint job. segs[seg .. seg + nsegs - 1] are walked as one
 *    beam with one list of L (segment_search.c says how); their points together must
 *    number fewer than 2^32. Its ordinals number the segments one after another: an
 *    ordinal o of the results is ordinal o - (points of the segments before it) of the
 *    segment it falls in (nl_seg_joint_locate). Not with subset. */
typedef int (*nl_seg_dead_fn)(void *ctx, uint64_t version);
typedef struct {
    uint32_t seg, query;
    size_t out;
    uint32_t k, L, W;
    const struct nl_bitmap *allow;
    int allow_neg;
    uint32_t L_max;
    nl_seg_dead_fn dead;
    void *dead_ctx;
    const uint32_t *subset;
    uint32_t subset_n;
    float eps0;          /* as in nl_seg_query_params */
    int no_sector;       /* as in nl_seg_query_params */
    int no_seeds;        /* as in nl_seg_query_params */
    uint32_t nsegs;      /* 0 or 1: segs[seg] alone; more: a joint job */
} nl_seg_job;

int nl_seg_search_jobs(nl_seg_searcher *s, nl_segment *const *segs, size_t nseg, const float *queries,
                       const nl_seg_job *jobs, size_t njobs, uint32_t kstride, uint32_t *ords, float *dists,
                       nl_query_stats *stats);

/* A joint job's result ordinal o over segs[0 .. nseg - 1]: the segment it falls in (its
 * index) and, in *ord, its ordinal there. Returns nseg when o is past them all. */
uint32_t nl_seg_joint_locate(nl_segment *const *segs, uint32_t nseg, uint32_t o, uint32_t *ord);

/* ---- verification ---- */

typedef struct {
    uint64_t sectors_checked;
    uint64_t bad_sectors;
    uint64_t bad_records; /* degree over R or neighbour out of range */
    size_t unreachable;   /* from the medoid */
} nl_segment_verify_report;

/* Reads every sector (checksums, record bounds) and the whole graph (reachability).
 * Returns 0 when sound, NL_ECORRUPT with a detail otherwise. */
int nl_segment_verify(nl_segment *seg, nl_segment_verify_report *rep);

#ifdef __cplusplus
}
#endif
#endif
