/*
 * dataset.c — vector file readers and writers (see nl_dataset.h). The file is never
 * trusted: header fields are range-checked, the expected size is computed with overflow
 * checks and compared with the real size before any row is read, and every *vecs row
 * header is compared with the first. Rows are fetched with pread, so concurrent readers
 * share one descriptor without a lock.
 */
#define _GNU_SOURCE
#include "nl_dataset.h"
#include "nl_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NL_MAX_DIM (1u << 20)

struct nl_dataset {
    int fd;
    nl_format fmt;
    nl_dtype dtype;
    uint32_t dim;
    size_t count;
    uint64_t data_offset; /* first byte of row 0 */
    size_t row_bytes;     /* on disk, including a *vecs row header */
    size_t elem_bytes;    /* dim * element size */
    int has_row_header;
    char path[256];
};

static const struct { const char *name; nl_format f; } format_names[] = {
    {"fvecs", NL_FORMAT_FVECS}, {"bvecs", NL_FORMAT_BVECS}, {"ivecs", NL_FORMAT_IVECS},
    {"fbin", NL_FORMAT_FBIN},   {"u8bin", NL_FORMAT_U8BIN}, {"i8bin", NL_FORMAT_I8BIN},
    {"npy", NL_FORMAT_NPY},
};

int nl_format_parse(const char *name, nl_format *out)
{
    for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
        if (strcmp(name, format_names[i].name) == 0) {
            *out = format_names[i].f;
            return 0;
        }
    return nl_fail(NL_EINVAL, "unknown format '%s' (fvecs, bvecs, ivecs, fbin, u8bin, i8bin, npy)",
                   name);
}

const char *nl_format_name(nl_format f)
{
    for (size_t i = 0; i < sizeof format_names / sizeof format_names[0]; i++)
        if (format_names[i].f == f)
            return format_names[i].name;
    return "auto";
}

int nl_format_from_path(const char *path, nl_format *out)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash))
        return nl_fail(NL_EINVAL, "%s: no file extension; pass --format", path);
    if (nl_format_parse(dot + 1, out) != 0)
        return nl_fail(NL_EINVAL, "%s: unknown extension '%s'; pass --format", path, dot + 1);
    return 0;
}

/* Parses the NumPy header dictionary: descr, fortran_order, shape. */
static int parse_npy(nl_dataset *ds, uint64_t file_size)
{
    unsigned char pre[12];
    if (file_size < 10)
        return nl_fail(NL_ETRUNCATED, "%s: too short for a .npy header", ds->path);
    int rc = nl_pread_full(ds->fd, pre, file_size < 12 ? 10 : 12, 0);
    if (rc)
        return nl_fail(rc, "%s: cannot read .npy preamble", ds->path);
    if (memcmp(pre, "\x93NUMPY", 6) != 0)
        return nl_fail(NL_EFORMAT, "%s: not a .npy file (bad magic)", ds->path);
    uint32_t hlen;
    uint64_t hstart;
    if (pre[6] == 1) {
        hlen = (uint32_t)pre[8] | ((uint32_t)pre[9] << 8);
        hstart = 10;
    } else if (pre[6] == 2 || pre[6] == 3) {
        if (file_size < 12)
            return nl_fail(NL_ETRUNCATED, "%s: too short for a .npy v%d header", ds->path, pre[6]);
        hlen = (uint32_t)pre[8] | ((uint32_t)pre[9] << 8) | ((uint32_t)pre[10] << 16) |
               ((uint32_t)pre[11] << 24);
        hstart = 12;
    } else {
        return nl_fail(NL_EFORMAT, "%s: unsupported .npy version %d", ds->path, pre[6]);
    }
    if (hlen > 65536 || hstart + hlen > file_size)
        return nl_fail(NL_ETRUNCATED, "%s: .npy header length %u exceeds the file", ds->path, hlen);
    char *h = malloc(hlen + 1);
    if (!h)
        return -ENOMEM;
    rc = nl_pread_full(ds->fd, h, hlen, hstart);
    if (rc) {
        free(h);
        return nl_fail(rc, "%s: cannot read .npy header", ds->path);
    }
    h[hlen] = '\0';
    rc = 0;
    const char *d = strstr(h, "'descr'");
    const char *fo = strstr(h, "'fortran_order'");
    const char *sh = strstr(h, "'shape'");
    if (!d || !fo || !sh) {
        rc = nl_fail(NL_EFORMAT, "%s: .npy header lacks descr, fortran_order or shape", ds->path);
        goto out;
    }
    char descr[16] = {0};
    const char *q = strchr(d + 7, '\'');
    const char *qe = q ? strchr(q + 1, '\'') : NULL;
    if (!q || !qe || qe - q - 1 >= (long)sizeof descr) {
        rc = nl_fail(NL_EFORMAT, "%s: .npy descr is malformed", ds->path);
        goto out;
    }
    memcpy(descr, q + 1, (size_t)(qe - q - 1));
    if (!strcmp(descr, "<f4")) ds->dtype = NL_DTYPE_F32;
    else if (!strcmp(descr, "<f2")) ds->dtype = NL_DTYPE_F16;
    else if (!strcmp(descr, "|u1") || !strcmp(descr, "<u1") || !strcmp(descr, "u1")) ds->dtype = NL_DTYPE_U8;
    else if (!strcmp(descr, "|i1") || !strcmp(descr, "<i1") || !strcmp(descr, "i1")) ds->dtype = NL_DTYPE_I8;
    else if (!strcmp(descr, "<i4")) ds->dtype = NL_DTYPE_I32;
    else {
        rc = nl_fail(NL_EUNSUPPORTED, "%s: .npy dtype '%s' is not supported (use <f4, <f2, |u1, |i1, <i4)",
                     ds->path, descr);
        goto out;
    }
    const char *fv = fo + strlen("'fortran_order'");
    while (*fv == ' ' || *fv == ':') fv++;
    if (strncmp(fv, "False", 5) != 0) {
        rc = nl_fail(NL_EUNSUPPORTED, "%s: .npy array is in Fortran order; save it in C order",
                     ds->path);
        goto out;
    }
    const char *p = strchr(sh, '(');
    if (!p) {
        rc = nl_fail(NL_EFORMAT, "%s: .npy shape is malformed", ds->path);
        goto out;
    }
    p++;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(p, &end, 10);
    if (end == p || errno) {
        rc = nl_fail(NL_EFORMAT, "%s: .npy shape is malformed", ds->path);
        goto out;
    }
    p = end;
    while (*p == ' ') p++;
    if (*p != ',') {
        rc = nl_fail(NL_EFORMAT, "%s: .npy array must be 2-D (rows, dim)", ds->path);
        goto out;
    }
    p++;
    while (*p == ' ') p++;
    unsigned long long dim = strtoull(p, &end, 10);
    if (end == p) {
        rc = nl_fail(NL_EFORMAT, "%s: .npy array must be 2-D (rows, dim)", ds->path);
        goto out;
    }
    p = end;
    while (*p == ' ') p++;
    if (*p == ',') p++;
    while (*p == ' ') p++;
    if (*p != ')') {
        rc = nl_fail(NL_EFORMAT, "%s: .npy array must be 2-D (rows, dim)", ds->path);
        goto out;
    }
    if (dim == 0 || dim > NL_MAX_DIM) {
        rc = nl_fail(NL_EFORMAT, "%s: .npy dimension %llu out of range 1..%u", ds->path, dim, NL_MAX_DIM);
        goto out;
    }
    ds->dim = (uint32_t)dim;
    ds->count = (size_t)n;
    ds->data_offset = hstart + hlen;
out:
    free(h);
    return rc;
}

int nl_dataset_open(const char *path, nl_format fmt, nl_dataset **out)
{
    *out = NULL;
    int rc;
    if (fmt == NL_FORMAT_AUTO && (rc = nl_format_from_path(path, &fmt)) != 0)
        return rc;
    nl_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return -ENOMEM;
    snprintf(ds->path, sizeof ds->path, "%s", path);
    ds->fmt = fmt;
    ds->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (ds->fd < 0) {
        rc = nl_fail(-errno, "%s: %s", path, strerror(errno));
        free(ds);
        return rc;
    }
    struct stat st;
    if (fstat(ds->fd, &st) != 0) {
        rc = nl_fail(-errno, "%s: %s", path, strerror(errno));
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size == 0) {
        rc = nl_fail(NL_EEMPTY, "%s: file is empty", path);
        goto fail;
    }
    switch (fmt) {
    case NL_FORMAT_FVECS: case NL_FORMAT_BVECS: case NL_FORMAT_IVECS: {
        ds->dtype = fmt == NL_FORMAT_FVECS ? NL_DTYPE_F32 : fmt == NL_FORMAT_BVECS ? NL_DTYPE_U8 : NL_DTYPE_I32;
        ds->has_row_header = 1;
        if (size < 4) {
            rc = nl_fail(NL_ETRUNCATED, "%s: shorter than one row header", path);
            goto fail;
        }
        unsigned char b[4];
        if ((rc = nl_pread_full(ds->fd, b, 4, 0)) != 0) {
            rc = nl_fail(rc, "%s: cannot read the first row header", path);
            goto fail;
        }
        int32_t d;
        memcpy(&d, b, 4);
        if (d <= 0 || (uint32_t)d > NL_MAX_DIM) {
            rc = nl_fail(NL_EFORMAT, "%s: row 0: dimension header %d out of range 1..%u", path, d, NL_MAX_DIM);
            goto fail;
        }
        ds->dim = (uint32_t)d;
        ds->elem_bytes = (size_t)d * nl_dtype_size(ds->dtype);
        ds->row_bytes = 4 + ds->elem_bytes;
        if (size % ds->row_bytes != 0) {
            rc = nl_fail(NL_ETRUNCATED,
                         "%s: size %llu is not a whole number of %zu-byte rows (dim %u): "
                         "truncated or mixed dimensions",
                         path, (unsigned long long)size, ds->row_bytes, ds->dim);
            goto fail;
        }
        ds->count = size / ds->row_bytes;
        ds->data_offset = 0;
        break;
    }
    case NL_FORMAT_FBIN: case NL_FORMAT_U8BIN: case NL_FORMAT_I8BIN: {
        ds->dtype = fmt == NL_FORMAT_FBIN ? NL_DTYPE_F32 : fmt == NL_FORMAT_U8BIN ? NL_DTYPE_U8 : NL_DTYPE_I8;
        if (size < 8) {
            rc = nl_fail(NL_ETRUNCATED, "%s: shorter than the 8-byte header", path);
            goto fail;
        }
        unsigned char b[8];
        if ((rc = nl_pread_full(ds->fd, b, 8, 0)) != 0) {
            rc = nl_fail(rc, "%s: cannot read the header", path);
            goto fail;
        }
        int32_t n, d;
        memcpy(&n, b, 4);
        memcpy(&d, b + 4, 4);
        if (n < 0 || d <= 0 || (uint32_t)d > NL_MAX_DIM) {
            rc = nl_fail(NL_EFORMAT, "%s: header says %d rows of dimension %d: out of range", path, n, d);
            goto fail;
        }
        ds->dim = (uint32_t)d;
        ds->count = (size_t)n;
        ds->data_offset = 8;
        break;
    }
    case NL_FORMAT_NPY:
        if ((rc = parse_npy(ds, size)) != 0)
            goto fail;
        break;
    default:
        rc = nl_fail(NL_EINVAL, "%s: no format given", path);
        goto fail;
    }
    if (!ds->has_row_header) {
        ds->elem_bytes = (size_t)ds->dim * nl_dtype_size(ds->dtype);
        ds->row_bytes = ds->elem_bytes;
        uint64_t want;
        if (__builtin_mul_overflow((uint64_t)ds->count, (uint64_t)ds->row_bytes, &want) ||
            __builtin_add_overflow(want, ds->data_offset, &want)) {
            rc = nl_fail(NL_EFORMAT, "%s: header row count %zu overflows", path, ds->count);
            goto fail;
        }
        if (size < want) {
            rc = nl_fail(NL_ETRUNCATED, "%s: header promises %zu rows of dim %u (%llu bytes) but the file has %llu",
                         path, ds->count, ds->dim, (unsigned long long)want, (unsigned long long)size);
            goto fail;
        }
        if (size > want) {
            rc = nl_fail(NL_EFORMAT, "%s: %llu bytes after the %zu rows the header promises",
                         path, (unsigned long long)(size - want), ds->count);
            goto fail;
        }
    }
    if (ds->count == 0) {
        rc = nl_fail(NL_EEMPTY, "%s: holds no vectors", path);
        goto fail;
    }
    posix_fadvise(ds->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    *out = ds;
    return 0;
fail:
    close(ds->fd);
    free(ds);
    return rc;
}

void nl_dataset_close(nl_dataset *ds)
{
    if (!ds)
        return;
    close(ds->fd);
    free(ds);
}

size_t nl_dataset_count(const nl_dataset *ds) { return ds->count; }
uint32_t nl_dataset_dim(const nl_dataset *ds) { return ds->dim; }
nl_dtype nl_dataset_dtype(const nl_dataset *ds) { return ds->dtype; }
nl_format nl_dataset_format(const nl_dataset *ds) { return ds->fmt; }

#define READ_CHUNK (4u << 20)

int nl_dataset_read(nl_dataset *ds, size_t first, size_t count, void *dst)
{
    if (first > ds->count || count > ds->count - first)
        return nl_fail(NL_EINVAL, "%s: rows %zu..%zu requested of %zu", ds->path, first,
                       first + count, ds->count);
    if (!ds->has_row_header) {
        int rc = nl_pread_full(ds->fd, dst, count * ds->row_bytes, ds->data_offset + first * ds->row_bytes);
        return rc ? nl_fail(rc, "%s: read failed at row %zu", ds->path, first) : 0;
    }
    size_t rows_per_chunk = READ_CHUNK / ds->row_bytes;
    if (rows_per_chunk == 0)
        rows_per_chunk = 1;
    char *buf = malloc(rows_per_chunk * ds->row_bytes);
    if (!buf)
        return -ENOMEM;
    size_t done = 0;
    int rc = 0;
    while (done < count) {
        size_t m = count - done < rows_per_chunk ? count - done : rows_per_chunk;
        size_t row0 = first + done;
        rc = nl_pread_full(ds->fd, buf, m * ds->row_bytes, ds->data_offset + row0 * ds->row_bytes);
        if (rc) {
            rc = nl_fail(rc, "%s: read failed at row %zu", ds->path, row0);
            break;
        }
        for (size_t i = 0; i < m; i++) {
            int32_t d;
            memcpy(&d, buf + i * ds->row_bytes, 4);
            if (d != (int32_t)ds->dim) {
                rc = nl_fail(NL_EFORMAT, "%s: row %zu: dimension header %d, expected %u", ds->path,
                             row0 + i, d, ds->dim);
                goto out;
            }
            memcpy((char *)dst + (done + i) * ds->elem_bytes, buf + i * ds->row_bytes + 4, ds->elem_bytes);
        }
        done += m;
    }
out:
    free(buf);
    return rc;
}

int nl_dataset_read_f32(nl_dataset *ds, size_t first, size_t count, float *dst)
{
    if (ds->dtype == NL_DTYPE_F32)
        return nl_dataset_read(ds, first, count, dst);
    /* Read into the tail of dst (narrower elements), then widen front to back: element i
     * is read from at or after where it is written, so nothing is overwritten early. */
    size_t esz = nl_dtype_size(ds->dtype);
    size_t total = count * ds->dim;
    char *tail = (char *)dst + total * 4 - total * esz;
    int rc = nl_dataset_read(ds, first, count, tail);
    if (rc)
        return rc;
    if (ds->dtype == NL_DTYPE_I32) {
        for (size_t i = 0; i < total; i++) {
            int32_t v;
            memcpy(&v, tail + 4 * i, 4);
            dst[i] = (float)v;
        }
        return 0;
    }
    /* esz < 4: the source element i sits at tail + i*esz >= dst + i*4 for all i. */
    for (size_t i = 0; i < total; i++) {
        float v;
        nl_convert_to_f32(ds->dtype, tail + i * esz, &v, 1);
        dst[i] = v;
    }
    return 0;
}

int nl_dataset_load(const char *path, nl_format fmt, void **data, size_t *n, uint32_t *dim,
                    nl_dtype *dtype)
{
    nl_dataset *ds;
    *data = NULL;
    int rc = nl_dataset_open(path, fmt, &ds);
    if (rc)
        return rc;
    size_t bytes = ds->count * ds->elem_bytes;
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf) {
        nl_dataset_close(ds);
        return nl_fail(-ENOMEM, "%s: cannot allocate %zu bytes", path, bytes);
    }
    rc = nl_dataset_read(ds, 0, ds->count, buf);
    if (rc) {
        free(buf);
        nl_dataset_close(ds);
        return rc;
    }
    *data = buf;
    *n = ds->count;
    *dim = ds->dim;
    *dtype = ds->dtype;
    nl_dataset_close(ds);
    return 0;
}

int nl_dataset_write(const char *path, nl_format fmt, const void *data, size_t n, uint32_t dim)
{
    size_t esz;
    int header_rows;
    switch (fmt) {
    case NL_FORMAT_FVECS: case NL_FORMAT_IVECS: esz = 4; header_rows = 1; break;
    case NL_FORMAT_BVECS: esz = 1; header_rows = 1; break;
    case NL_FORMAT_FBIN: esz = 4; header_rows = 0; break;
    case NL_FORMAT_U8BIN: case NL_FORMAT_I8BIN: esz = 1; header_rows = 0; break;
    default: return nl_fail(NL_EUNSUPPORTED, "%s: cannot write format %s", path, nl_format_name(fmt));
    }
    if (dim == 0 || n > INT32_MAX)
        return nl_fail(NL_EINVAL, "%s: cannot write %zu rows of dim %u", path, n, dim);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return nl_fail(NL_EINVAL, "path too long");
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return nl_fail(-errno, "%s: %s", tmp, strerror(errno));
    int ok = 1;
    size_t rowb = (size_t)dim * esz;
    if (!header_rows) {
        int32_t h[2] = {(int32_t)n, (int32_t)dim};
        ok = fwrite(h, 4, 2, f) == 2;
        ok = ok && (n == 0 || fwrite(data, rowb, n, f) == n);
    } else {
        int32_t d = (int32_t)dim;
        for (size_t i = 0; ok && i < n; i++)
            ok = fwrite(&d, 4, 1, f) == 1 && fwrite((const char *)data + i * rowb, rowb, 1, f) == 1;
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok || rename(tmp, path) != 0) {
        if (ok)
            err = errno;
        unlink(tmp);
        return nl_fail(-err, "%s: write failed: %s", path, strerror(err));
    }
    return 0;
}
