/*
 * test_util.h — helpers for the Criterion suites: where the shared datasets are
 * (NEARLINE_DATA_DIR in the environment, else the path CMake found at configure time),
 * a skip with a message when they are absent, scratch directories, and a random-vector
 * filler.
 */
#ifndef NL_TEST_UTIL_H
#define NL_TEST_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nl_common.h"
#include "nl_util.h"

#ifndef NEARLINE_DATA_DIR_DEFAULT
#define NEARLINE_DATA_DIR_DEFAULT "../shared/data"
#endif

static inline const char *tu_data_dir(void)
{
    const char *d = getenv("NEARLINE_DATA_DIR");
    return d && *d ? d : NEARLINE_DATA_DIR_DEFAULT;
}

/* Fills buf with the path of a shared dataset file; returns 0 if it exists. */
static inline int tu_data_path(char *buf, size_t len, const char *rel)
{
    snprintf(buf, len, "%s/%s", tu_data_dir(), rel);
    struct stat st;
    return stat(buf, &st) == 0 ? 0 : -1;
}

#define TU_REQUIRE_DATA(buf, rel)                                                      \
    do {                                                                               \
        if (tu_data_path(buf, sizeof buf, rel) != 0)                                   \
            cr_skip_test("shared dataset %s not found (set NEARLINE_DATA_DIR); skipped", buf); \
    } while (0)

/* A fresh empty directory under TMPDIR; caller removes it with tu_rmtree. */
static inline void tu_tmpdir(char *buf, size_t len)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, len, "%s/nltest.XXXXXX", t && *t ? t : "/tmp");
    cr_assert_not_null(mkdtemp(buf));
}

static inline void tu_rmtree(const char *dir)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) { /* best effort */ }
}

static inline void tu_fill_f32(nl_rng *r, float *v, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((nl_rng_double(r) * 2.0 - 1.0) * scale);
}

#endif
