/*
 * catalog.c — collections on disk (see nl_catalog.h): directory listing and the
 * collection.json configuration. A directory without collection.json is never listed
 * as a collection.
 */
#define _GNU_SOURCE
#include "nl_catalog.h"

#include <jansson.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nl_collection_name_check(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64)
        return nl_fail(NL_EINVAL, "collection name must be 1 to 64 characters of [A-Za-z0-9_-]");
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return nl_fail(NL_EINVAL, "collection name '%s' has '%c': only [A-Za-z0-9_-] is allowed", name, c);
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void nl_string_list_free(char **list, size_t count)
{
    for (size_t i = 0; list && i < count; i++)
        free(list[i]);
    free(list);
}

static int push(char ***list, size_t *n, size_t *cap, const char *s)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        char **nl = realloc(*list, nc * sizeof *nl);
        if (!nl)
            return -ENOMEM;
        *list = nl;
        *cap = nc;
    }
    if (!((*list)[*n] = strdup(s)))
        return -ENOMEM;
    (*n)++;
    return 0;
}

int nl_catalog_list_collections(const char *db, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    DIR *d = opendir(db);
    if (!d)
        return nl_fail(-errno, "%s: %s", db, strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (nl_collection_name_check(e->d_name) != 0)
            continue;
        char p[4096];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", db, e->d_name);
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        snprintf(p, sizeof p, "%s/%s/collection.json", db, e->d_name);
        if (stat(p, &st) != 0)
            continue; /* not a collection (or not yet one) */
        snprintf(p, sizeof p, "%s/%s/DROPPED", db, e->d_name);
        if (stat(p, &st) == 0)
            continue;
        if ((rc = push(names, count, &cap, e->d_name)) != 0)
            break;
    }
    closedir(d);
    nl_clear_errdetail();
    if (rc) {
        nl_string_list_free(*names, *count);
        *names = NULL;
        *count = 0;
        return rc;
    }
    if (*count)
        qsort(*names, *count, sizeof **names, cmp_str);
    return 0;
}

/* ---------------------------------------------------------------- collection.json */

int nl_catalog_write_config(const char *coll_dir, const nl_collection_config *c)
{
    json_t *j = json_pack("{s:i, s:i, s:s, s:s, s:i, s:i, s:i, s:f, s:i, s:i, s:i}", "version", 1, "dim", (json_int_t)c->dim,
                          "metric", nl_metric_name(c->metric), "dtype", nl_dtype_name(c->dtype), "shards",
                          (json_int_t)c->shards, "R", (json_int_t)c->R, "L", (json_int_t)c->L, "alpha", (double)c->alpha,
                          "pq_bytes", (json_int_t)c->pq_bytes, "fresh_capacity", (json_int_t)c->fresh_capacity,
                          "replicas", 1);
    if (!j)
        return -ENOMEM;
    /* "code" is absent from catalogs written before codes had kinds: those are PQ. */
    char code[32];
    json_object_set_new(j, "code", json_string(nl_collection_code_name(c, code, sizeof code)));
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/collection.json", coll_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int rc = 0;
    FILE *f = fopen(tmp, "w");
    if (!f || json_dumpf(j, f, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || fputc('\n', f) == EOF || fflush(f) != 0 ||
        fsync(fileno(f)) != 0)
        rc = nl_fail(errno ? -errno : -EIO, "cannot write %s: %s", tmp, strerror(errno ? errno : EIO));
    if (f && fclose(f) != 0 && !rc)
        rc = nl_fail(-errno, "cannot write %s: %s", tmp, strerror(errno));
    json_decref(j);
    if (!rc && rename(tmp, path) != 0)
        rc = nl_fail(-errno, "cannot rename %s: %s", tmp, strerror(errno));
    if (rc)
        unlink(tmp);
    return rc;
}

static int get_u32(json_t *j, const char *key, uint32_t lo, uint32_t hi, uint32_t *out, const char *path)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return nl_fail(NL_ECORRUPT, "%s: \"%s\" must be an integer in %u..%u", path, key, lo, hi);
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

int nl_catalog_read_config(const char *coll_dir, nl_collection_config *c)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/collection.json", coll_dir);
    /* Read by hand, not json_load_file: a read that fails (EIO) is an I/O error to report as
     * one, not text that "does not parse". */
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return e == ENOENT ? nl_fail(NL_ENOTFOUND, "%s: collection not found", coll_dir)
                           : nl_fail(-e, "%s: %s", path, strerror(e));
    }
    char text[65536];
    size_t len = 0;
    for (;;) {
        ssize_t got = read(fd, text + len, sizeof text - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            return nl_fail(-e, "%s: cannot read it: %s", path, strerror(e));
        }
        if (got == 0)
            break;
        len += (size_t)got;
        if (len == sizeof text) {
            close(fd);
            return nl_fail(NL_ECORRUPT, "%s: over %zu bytes", path, sizeof text - 1);
        }
    }
    close(fd);
    json_error_t err;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        return nl_fail(NL_ECORRUPT, "%s: %s (line %d)", path, err.text, err.line);
    memset(c, 0, sizeof *c);
    uint32_t version = 0;
    int rc = 0;
    json_t *m = json_object_get(j, "metric"), *t = json_object_get(j, "dtype"), *a = json_object_get(j, "alpha");
    if (!json_is_object(j))
        rc = nl_fail(NL_ECORRUPT, "%s: not a JSON object", path);
    if (!rc) rc = get_u32(j, "version", 1, 1, &version, path);
    if (!rc) rc = get_u32(j, "dim", 1, 65536, &c->dim, path);
    if (!rc) rc = get_u32(j, "shards", 1, NL_MAX_SHARDS, &c->shards, path);
    if (!rc) rc = get_u32(j, "R", 1, 1024, &c->R, path);
    if (!rc) rc = get_u32(j, "L", 1, 100000, &c->L, path);
    if (!rc) rc = get_u32(j, "pq_bytes", 1, 65536, &c->pq_bytes, path);
    if (!rc) rc = get_u32(j, "fresh_capacity", 1, 1000000000, &c->fresh_capacity, path);
    if (!rc && (!json_is_string(m) || nl_metric_parse(json_string_value(m), &c->metric) != 0))
        rc = nl_fail(NL_ECORRUPT, "%s: \"metric\" must be l2, ip or cosine", path);
    if (!rc && (!json_is_string(t) || nl_dtype_parse(json_string_value(t), &c->dtype) != 0 ||
                c->dtype > NL_DTYPE_I8))
        rc = nl_fail(NL_ECORRUPT, "%s: \"dtype\" must be f32, f16, u8 or i8", path);
    if (!rc && (!json_is_number(a) || !(json_number_value(a) >= 1.0 && json_number_value(a) <= 4.0)))
        rc = nl_fail(NL_ECORRUPT, "%s: \"alpha\" must be a number in 1..4", path);
    if (!rc)
        c->alpha = (float)json_number_value(a);
    json_t *code = json_object_get(j, "code");
    if (!rc) {
        uint32_t pqb = c->pq_bytes;
        c->code = NL_COLL_CODE_PQ;
        if (code && (!json_is_string(code) || nl_collection_code_parse(json_string_value(code), c) != 0 ||
                     c->code == NL_COLL_CODE_DEFAULT || c->pq_bytes != pqb))
            rc = nl_fail(NL_ECORRUPT, "%s: \"code\" must be pq:%u or rabitq:1..8", path, pqb);
    }
    json_decref(j);
    return rc;
}
