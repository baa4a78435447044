/*
 * nl_import.h — bulk import of a vector file into a new collection: validate the input,
 * train PQ, build the Vamana graph, write one segment, and publish the collection
 * directory atomically (a crash or error leaves no collection behind).
 *
 * Two build paths, chosen by memory: when the whole build fits in the memory budget it
 * runs in memory; otherwise the data is cut into overlapping k-means partitions, each
 * built on its own and merged on the way to the segment file (import_partitioned.c), with
 * every finished phase and partition checkpointed under <db>/.import-<collection>/ so the
 * same call after a crash resumes where it stopped. Peak RSS stays under the budget.
 */
#ifndef NL_IMPORT_H
#define NL_IMPORT_H

#include "nl_common.h"
#include "nl_dataset.h"
#include "nl_code_choice.h"
#include "nl_quant.h"
#include "nl_vamana.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *db;
    const char *collection;
    const char *input;
    nl_format format;     /* NL_FORMAT_AUTO: from the extension */
    nl_metric metric;
    const char *ids_path; /* optional: one unsigned 64-bit id per line */
    const char *metadata_path; /* optional: JSON Lines, one object per vector, same order */
    uint32_t R, L;        /* 0 = 64, 100 */
    float alpha;          /* 0 = 1.2 */
    uint32_t pq_m;        /* 0 = default (docs/decisions.md) */
    uint32_t code;        /* nl_collection_config.code: NL_COLL_CODE_DEFAULT = pq_m set: PQ, else
                           * chosen from the data (nl_code_choice.h) within the memory below;
                           * an --append keeps the collection's */
    uint64_t search_memory; /* bytes the codes of the collection may take in RAM; 0 = per point */
    uint32_t search_memory_per_point; /* ... or bytes a point; both 0 = the default PQ size + 8 */
    double recall_target; /* what the chosen code should reach (recall@10 at L = 50); 0 = 0.95 */
    const char *queries_path; /* optional: representative queries the code is chosen by,
                               * instead of held-out rows of the input (same dimension) */
    unsigned threads;     /* 0 = all CPUs */
    uint64_t seed;
    uint64_t memory_budget; /* bytes the import may hold; 0 = half of physical RAM */
    int single_pass;      /* one build pass (alpha only): faster, slightly worse graph */
    int force_partitioned; /* testing: the partitioned path even when the data fits */
    int layout;           /* node records on disk: NL_LAYOUT_AUTO (blocks where records pack
                           * several to a sector, and for a partitioned build where its layout
                           * pass fits the budget), NL_LAYOUT_ID (row order) or
                           * NL_LAYOUT_BLOCKS (index/nl_layout.h) */
    int append;           /* add the rows to an existing single-shard collection as a new
                           * segment (ids must be new; without ids_path, ids continue after
                           * the largest numeric id present) */
    nl_progress_fn progress; /* optional; phase names: read, sample, pq, partition,
                              * build, build pass 1/2, build part i/P, merge, write */
    void *progress_ctx;
} nl_import_params;

typedef struct {
    uint64_t points;
    uint32_t dim, R, pq_m; /* pq_m: bytes of one code (of whichever kind) */
    nl_code_spec code;
    nl_dtype dtype;
    double read_s, pq_s, partition_s, build_s, merge_s, write_s, total_s;
    uint64_t segment_bytes;
    uint64_t budget;          /* the budget applied */
    uint32_t partitions;      /* 0: built in memory */
    uint32_t resumed_phases;  /* phases and partitions taken from checkpoints */
    int exact_merge;          /* partitioned: 1 = RobustPrune over the union, 0 = capped union */
    int block_layout;         /* records laid out in blocks of graph neighbours */
    uint32_t block_records;   /* ... of this many records a sector */
    double layout_overlap;    /* the layout's overlap ratio (nl_layout_overlap); row order's
                               * when not laid out */
    double layout_s;
    uint64_t repaired_edges;  /* partitioned: in-edges added to nodes the merge left unreachable */
    double partition_fill_min, partition_fill_max; /* partitioned: rows / cap of the emptiest and
                               * fullest partition (1 = full: rows went past their 2 nearest) */
    uint64_t navigation_points; /* partitioned: rows of the navigation graph (a strided sample
                               * built whole, whose lists span every partition); 0 = none */
    int appended;
    uint64_t first_id;        /* appended without ids: the first row's id */
    int code_chosen;          /* the code was chosen from the data: choice holds how */
    nl_code_choice choice;
    char segment_path[4400];
} nl_import_result;

enum { NL_LAYOUT_AUTO = 0, NL_LAYOUT_ID = 1, NL_LAYOUT_BLOCKS = 2 };

int nl_import(const nl_import_params *p, nl_import_result *r);

#ifdef __cplusplus
}
#endif
#endif
