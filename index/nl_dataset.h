/*
 * nl_dataset.h — readers and writers for the vector file formats users bring:
 * TEXMEX fvecs/bvecs/ivecs, big-ann-benchmarks fbin/u8bin/i8bin, and NumPy .npy
 * (v1/v2/v3 headers, little-endian, C order, 2-D, dtypes <f4 <f2 |u1 |i1 <i4).
 *
 * A dataset is opened once (the header and the file size are validated up front, so
 * a truncated file fails at open) and then read in row ranges with pread: memory use is
 * the caller's buffer, whatever the file size. Per-row headers of the *vecs formats are
 * checked as rows are read. Every failure returns a negative code with a detail naming
 * the file and the row (nl_errdetail()).
 *
 * Lifecycle: nl_dataset_open -> nl_dataset_read* (any number, any order, thread-safe)
 *            -> nl_dataset_close.
 */
#ifndef NL_DATASET_H
#define NL_DATASET_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    NL_FORMAT_AUTO = 0, /* from the file name's extension */
    NL_FORMAT_FVECS, NL_FORMAT_BVECS, NL_FORMAT_IVECS,
    NL_FORMAT_FBIN, NL_FORMAT_U8BIN, NL_FORMAT_I8BIN, NL_FORMAT_NPY
} nl_format;

typedef struct nl_dataset nl_dataset;

/* Parse a format name ("fvecs", "u8bin", "npy", ...). */
int nl_format_parse(const char *name, nl_format *out);
const char *nl_format_name(nl_format f);
/* Guess from the extension; NL_EINVAL if it names no known format. */
int nl_format_from_path(const char *path, nl_format *out);

/* Opens and validates. On success *out is owned by the caller (nl_dataset_close). */
int nl_dataset_open(const char *path, nl_format fmt, nl_dataset **out);
void nl_dataset_close(nl_dataset *ds);

size_t nl_dataset_count(const nl_dataset *ds);
uint32_t nl_dataset_dim(const nl_dataset *ds);
nl_dtype nl_dataset_dtype(const nl_dataset *ds);
nl_format nl_dataset_format(const nl_dataset *ds);

/* Copies rows [first, first+count) into dst in the file's element type, packed
 * (count * dim * nl_dtype_size). */
int nl_dataset_read(nl_dataset *ds, size_t first, size_t count, void *dst);
/* The same, widened to f32. */
int nl_dataset_read_f32(nl_dataset *ds, size_t first, size_t count, float *dst);

/* Loads a whole file. On success *data is malloc'd and owned by the caller (free()). */
int nl_dataset_load(const char *path, nl_format fmt, void **data, size_t *n, uint32_t *dim,
                    nl_dtype *dtype);

/* Writes n rows of dim elements. fvecs/ivecs/bvecs take f32/i32/u8 data; fbin/u8bin/
 * i8bin take f32/u8/i8. Written to a temporary name, fsynced, then renamed over path. */
int nl_dataset_write(const char *path, nl_format fmt, const void *data, size_t n,
                     uint32_t dim);

#ifdef __cplusplus
}
#endif
#endif
