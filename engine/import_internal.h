/*
 * import_internal.h — what the two import paths share (internal to engine/): the
 * up-front input checks and the step that turns a built segment into a published
 * collection. import.c holds the in-memory path and the choice between the two;
 * import_partitioned.c the memory-bounded, resumable path.
 */
#ifndef NL_IMPORT_INTERNAL_H
#define NL_IMPORT_INTERNAL_H

#include "nl_import.h"

/* One unsigned decimal id per line, exactly n lines, no duplicates; *out malloc'd. */
int nl_import_read_ids(const char *path, size_t n, uint64_t **out);
/* A JSON Lines metadata file: one object per line, exactly n lines. */
int nl_import_check_metadata(const char *path, size_t n);

/* Creates the shard store for the segment <coll_dir>/0/seg-000001.nls (pids 0..n-1),
 * writes collection.json, and renames coll_dir to <db>/<collection>. */
int nl_import_publish(const nl_import_params *p, const char *coll_dir, uint64_t n, uint32_t dim, nl_dtype dtype,
                      uint32_t R, uint32_t L, float alpha, uint32_t pq_m, const uint64_t *ids);

/* Bytes the in-memory build needs for n points (data, graph, codes, build scratch). */
uint64_t nl_import_inmemory_bytes(uint64_t n, uint32_t dim, nl_dtype dtype, uint32_t R, uint32_t pq_m, int has_ids);

/* The partitioned path; the caller has checked the names and that the collection does
 * not exist. ds is borrowed. */
int nl_import_partitioned(const nl_import_params *p, nl_dataset *ds, uint64_t budget, nl_import_result *r);

#define NL_IMPORT_FIXED_BYTES (96ull << 20) /* process, libraries, RocksDB, I/O buffers */

#endif
