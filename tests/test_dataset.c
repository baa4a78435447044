/* Dataset readers: every format round-trips through the writer (or a hand-made .npy),
 * and malformed files (truncated, wrong row header, empty, trailing bytes, bad .npy
 * headers) fail with the right code and a detail that names the problem. */
#include <errno.h>
#include <fcntl.h>

#include "nl_dataset.h"
#include "test_util.h"

static char dir[256];

static void setup(void) { tu_tmpdir(dir, sizeof dir); }
static void teardown(void) { tu_rmtree(dir); }

static void write_raw(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    if (len) cr_assert_eq(fwrite(buf, 1, len, f), len);
    fclose(f);
}

static void truncate_by(const char *path, off_t by)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size - by), 0);
}

TestSuite(dataset, .init = setup, .fini = teardown);

Test(dataset, all_writable_formats_round_trip_with_streaming_reads)
{
    const struct { const char *ext; nl_dtype t; } cases[] = {
        {"fvecs", NL_DTYPE_F32}, {"bvecs", NL_DTYPE_U8}, {"ivecs", NL_DTYPE_I32},
        {"fbin", NL_DTYPE_F32},  {"u8bin", NL_DTYPE_U8}, {"i8bin", NL_DTYPE_I8}};
    size_t n = 1000;
    uint32_t d = 13;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t esz = nl_dtype_size(cases[c].t);
        unsigned char *data = malloc(n * d * esz);
        for (size_t i = 0; i < n * d * esz; i++) data[i] = (unsigned char)(i * 31 + c);
        if (cases[c].t == NL_DTYPE_F32) /* keep floats finite and exact */
            for (size_t i = 0; i < n * d; i++) ((float *)data)[i] = (float)(i % 977) - 300.0f;
        char path[512];
        snprintf(path, sizeof path, "%s/x.%s", dir, cases[c].ext);
        cr_assert_eq(nl_dataset_write(path, NL_FORMAT_AUTO, data, n, d), NL_EUNSUPPORTED);
        nl_format f;
        cr_assert_eq(nl_format_from_path(path, &f), 0);
        cr_assert_eq(nl_dataset_write(path, f, data, n, d), 0, "%s", nl_errdetail());
        nl_dataset *ds;
        cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), 0, "%s", nl_errdetail());
        cr_assert_eq(nl_dataset_count(ds), n);
        cr_assert_eq(nl_dataset_dim(ds), d);
        cr_assert_eq(nl_dataset_dtype(ds), cases[c].t);
        unsigned char *back = malloc(n * d * esz);
        /* streaming: read in uneven pieces */
        for (size_t first = 0; first < n;) {
            size_t cnt = first + 97 <= n ? 97 : n - first;
            cr_assert_eq(nl_dataset_read(ds, first, cnt, back + first * d * esz), 0);
            first += cnt;
        }
        cr_assert_arr_eq(back, data, n * d * esz, "%s differs", cases[c].ext);
        float *f32 = malloc(sizeof(float) * 5 * d);
        cr_assert_eq(nl_dataset_read_f32(ds, 10, 5, f32), 0);
        float want[13 * 5];
        nl_convert_to_f32(cases[c].t, data + 10 * d * esz, want, 5 * d);
        cr_assert_arr_eq(f32, want, sizeof(float) * 5 * d);
        cr_assert_eq(nl_dataset_read(ds, n - 1, 2, back), NL_EINVAL);
        nl_dataset_close(ds);
        free(f32);
        free(back);
        free(data);
    }
}

static void write_npy(const char *path, int version, const char *dict, const void *data, size_t len)
{
    char hdr[256];
    size_t pre = version == 1 ? 10 : 12;
    size_t dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64;
    size_t hlen = total - pre;
    memset(hdr, ' ', sizeof hdr);
    memcpy(hdr, "\x93NUMPY", 6);
    hdr[6] = (char)version;
    hdr[7] = 0;
    if (version == 1) {
        hdr[8] = (char)(hlen & 0xff);
        hdr[9] = (char)(hlen >> 8);
    } else {
        uint32_t h = (uint32_t)hlen;
        memcpy(hdr + 8, &h, 4);
    }
    memcpy(hdr + pre, dict, dl);
    hdr[total - 1] = '\n';
    FILE *f = fopen(path, "wb");
    fwrite(hdr, 1, total, f);
    fwrite(data, 1, len, f);
    fclose(f);
}

Test(dataset, npy_v1_v2_and_bad_headers)
{
    char path[512];
    snprintf(path, sizeof path, "%s/a.npy", dir);
    float v[6] = {1, 2, 3, 4, 5, 6};
    write_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v);
    nl_dataset *ds;
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_dataset_count(ds), 2);
    cr_assert_eq(nl_dataset_dim(ds), 3);
    float back[6];
    cr_assert_eq(nl_dataset_read(ds, 0, 2, back), 0);
    cr_assert_arr_eq(back, v, sizeof v);
    nl_dataset_close(ds);

    uint8_t u[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    write_npy(path, 2, "{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2), }", u, sizeof u);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_NPY, &ds), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_dataset_dtype(ds), NL_DTYPE_U8);
    cr_assert_eq(nl_dataset_count(ds), 4);
    nl_dataset_close(ds);

    write_npy(path, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", v, sizeof v);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EUNSUPPORTED);
    cr_assert(strstr(nl_errdetail(), "Fortran") != NULL);
    write_npy(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", v, sizeof v);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EUNSUPPORTED);
    write_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", v, sizeof v);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EFORMAT);
    write_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 3), }", v, sizeof v);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_ETRUNCATED);
    write_npy(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3), }", v, sizeof v);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EFORMAT); /* trailing bytes */
    write_raw(path, "\x93NUMPX\x01\x00\x10\x00", 10);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EFORMAT);
    write_raw(path, "\x93NUMPY\x01\x00\xff\x00{", 11);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_ETRUNCATED);
}

Test(dataset, truncated_wrong_header_and_empty_files_fail_clearly)
{
    char path[512];
    nl_dataset *ds;
    float data[40];
    for (int i = 0; i < 40; i++) data[i] = (float)i;

    snprintf(path, sizeof path, "%s/t.fvecs", dir);
    cr_assert_eq(nl_dataset_write(path, NL_FORMAT_FVECS, data, 10, 4), 0);
    truncate_by(path, 3);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_ETRUNCATED);
    cr_assert(strstr(nl_errdetail(), "truncated") != NULL, "%s", nl_errdetail());

    /* a row header that disagrees, in row 3 */
    cr_assert_eq(nl_dataset_write(path, NL_FORMAT_FVECS, data, 10, 4), 0);
    int fd = open(path, O_WRONLY);
    int32_t bad = 5;
    cr_assert_eq(pwrite(fd, &bad, 4, 3 * 20), 4);
    close(fd);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), 0);
    float out[40];
    cr_assert_eq(nl_dataset_read(ds, 0, 10, out), NL_EFORMAT);
    cr_assert(strstr(nl_errdetail(), "row 3") != NULL, "%s", nl_errdetail());
    nl_dataset_close(ds);

    /* first header out of range */
    int32_t neg = -4;
    write_raw(path, &neg, 4);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EFORMAT);

    /* empty files in every format */
    const char *exts[] = {"fvecs", "bvecs", "ivecs", "fbin", "u8bin", "i8bin", "npy"};
    for (size_t i = 0; i < 7; i++) {
        snprintf(path, sizeof path, "%s/e.%s", dir, exts[i]);
        write_raw(path, "", 0);
        cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EEMPTY, "%s", exts[i]);
    }
    /* bin header promising zero rows, more rows than present, and extra bytes */
    snprintf(path, sizeof path, "%s/b.u8bin", dir);
    int32_t h[2] = {0, 8};
    write_raw(path, h, 8);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EEMPTY);
    cr_assert_eq(nl_dataset_write(path, NL_FORMAT_U8BIN, data, 10, 16), 0);
    truncate_by(path, 1);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_ETRUNCATED);
    FILE *f = fopen(path, "ab");
    fputs("xx", f);
    fclose(f);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), NL_EFORMAT);
    /* unknown extension and missing file */
    cr_assert_eq(nl_dataset_open("/nonexistent/x.fvecs", NL_FORMAT_AUTO, &ds), -ENOENT);
    cr_assert_eq(nl_dataset_open("/tmp/x.csv", NL_FORMAT_AUTO, &ds), NL_EINVAL);
}

Test(dataset, shared_files_have_documented_shapes)
{
    char path[1024];
    TU_REQUIRE_DATA(path, "fashion-mnist-60k/base.u8bin");
    nl_dataset *ds;
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), 0);
    cr_assert_eq(nl_dataset_count(ds), 60000);
    cr_assert_eq(nl_dataset_dim(ds), 784);
    nl_dataset_close(ds);
    cr_assert_eq(tu_data_path(path, sizeof path, "sift-5k/base.bvecs"), 0);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), 0);
    cr_assert_eq(nl_dataset_count(ds), 5000);
    cr_assert_eq(nl_dataset_dim(ds), 128);
    nl_dataset_close(ds);
    cr_assert_eq(tu_data_path(path, sizeof path, "sift-5k/groundtruth.ivecs"), 0);
    cr_assert_eq(nl_dataset_open(path, NL_FORMAT_AUTO, &ds), 0);
    cr_assert_eq(nl_dataset_dtype(ds), NL_DTYPE_I32);
    cr_assert_eq(nl_dataset_dim(ds), 100);
    nl_dataset_close(ds);
}
