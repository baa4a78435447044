/*
 * nl_import.h — bulk import of a vector file into a new collection: read and validate the
 * input, train PQ, build the Vamana graph in memory, write one segment, and publish the
 * collection directory atomically (a crash or error leaves no collection behind).
 * The memory-bounded partitioned build is a later step (issue 5).
 */
#ifndef NL_IMPORT_H
#define NL_IMPORT_H

#include "nl_common.h"
#include "nl_dataset.h"
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
    unsigned threads;     /* 0 = all CPUs */
    uint64_t seed;
    nl_progress_fn progress; /* optional; phase names: read, pq, build pass 1/2, ... */
    void *progress_ctx;
} nl_import_params;

typedef struct {
    uint64_t points;
    uint32_t dim, R, pq_m;
    nl_dtype dtype;
    double read_s, pq_s, build_s, write_s, total_s;
    uint64_t segment_bytes;
    char segment_path[4400];
} nl_import_result;

/* The default PQ code size for a dimension. */
uint32_t nl_import_default_pq_m(uint32_t dim);

int nl_import(const nl_import_params *p, nl_import_result *r);

#ifdef __cplusplus
}
#endif
#endif
