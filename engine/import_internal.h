/*
 * import_internal.h — what the two import paths share (internal to engine/): the
 * up-front input checks and the step that turns a built segment into a published
 * collection. import.c holds the in-memory path and the choice between the two;
 * import_partitioned.c the memory-bounded, resumable path.
 */
#ifndef NL_IMPORT_INTERNAL_H
#define NL_IMPORT_INTERNAL_H

#include "nl_import.h"
#include "nl_quant.h"

/* One unsigned decimal id per line, exactly n lines, no duplicates; *out malloc'd. */
int nl_import_read_ids(const char *path, size_t n, uint64_t **out);
/* A JSON Lines metadata file: one object per line, exactly n lines. */
int nl_import_check_metadata(const char *path, size_t n);

/* Where and how one segment is built: the resolved parameters (a new collection's, or an
 * existing collection's for --append), the locked work directory for checkpoints, the
 * segment's path, and the first version (pid) its rows get. */
typedef struct {
    uint32_t R, L, pq_m;
    uint32_t code;        /* the collection's code (nl_collection_config.code), resolved */
    nl_code_spec spec;    /* the same as a quantizer spec */
    uint32_t code_bytes;  /* bytes of one code */
    float alpha;
    nl_metric metric;
    uint64_t budget;
    const char *work;
    const char *seg_path;
    uint64_t pid_base;
    uint32_t *row_ord;    /* out, malloc'd by a build that laid the rows out in another order:
                           * row r is the segment's ordinal row_ord[r] (version pid_base +
                           * row_ord[r]); NULL = the rows in order */
} nl_import_target;

/* Bytes the in-memory build needs for n points (data, graph, codes, build scratch). */
uint64_t nl_import_inmemory_bytes(uint64_t n, uint32_t dim, nl_dtype dtype, uint32_t R, uint32_t code_bytes, int has_ids);

/* The partitioned path: writes t->seg_path, checkpointing in t->work. ds is borrowed. */
int nl_import_partitioned(const nl_import_params *p, nl_dataset *ds, nl_import_target *t, nl_import_result *r);

#define NL_IMPORT_FIXED_BYTES (96ull << 20) /* process, libraries, RocksDB, I/O buffers */

#endif
