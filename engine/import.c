/*
 * import.c — `nearline import` as a library call (see nl_import.h): the checks both paths
 * share, the choice between the in-memory build and the partitioned one by the memory
 * the in-memory build would need, and the in-memory path itself. Order of work: every
 * check that can fail on the user's input (collection name and existence, the vector
 * file, NaN/Inf, the id file, the metadata file) happens before any expensive phase, so a
 * bad input fails in seconds. The collection is assembled in a private directory
 * (segment, shard store with the id map, collection.json) and renamed into place only
 * when all of it is durable.
 */
#define _GNU_SOURCE
#include "nl_import.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "import_internal.h"
#include "nl_catalog.h"
#include "nl_pq.h"
#include "nl_segment.h"
#include "nl_shard.h"
#include "nl_util.h"

uint32_t nl_import_default_pq_m(uint32_t dim)
{
    /* 32 bytes for the common 96..256-d embeddings (DiskANN's usual choice), more for
     * wide vectors where 32 chunks would each span many dimensions. */
    uint32_t m = dim <= 256 ? 32 : dim <= 512 ? 64 : 96;
    return m < dim ? m : dim;
}

static double secs_since(uint64_t t0) { return (double)(nl_now_ns() - t0) / 1e9; }

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* One unsigned decimal id per line; blank lines are errors (they would shift rows). */
int nl_import_read_ids(const char *path, size_t n, uint64_t **out)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return nl_fail(-errno, "ids file %s: %s", path, strerror(errno));
    uint64_t *ids = malloc(sizeof(uint64_t) * (n ? n : 1));
    if (!ids) {
        fclose(f);
        return -ENOMEM;
    }
    char *line = NULL;
    size_t cap = 0, lines = 0;
    ssize_t len;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lines++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (lines > n) {
            continue; /* count them all for the message */
        }
        char *end;
        errno = 0;
        if (len == 0 || line[0] == '-' || line[0] == '+' || line[0] == ' ') {
            rc = nl_fail(NL_EFORMAT, "ids file %s line %zu: '%s' is not an unsigned 64-bit integer", path, lines, line);
            break;
        }
        unsigned long long v = strtoull(line, &end, 10);
        if (errno || *end) {
            rc = nl_fail(NL_EFORMAT, "ids file %s line %zu: '%.40s' is not an unsigned 64-bit integer", path, lines, line);
            break;
        }
        ids[lines - 1] = v;
    }
    free(line);
    fclose(f);
    if (!rc && lines != n)
        rc = nl_fail(NL_EFORMAT, "ids file %s has %zu lines but the input has %zu vectors", path, lines, n);
    if (!rc) {
        uint64_t *sorted = malloc(sizeof(uint64_t) * n);
        if (!sorted) {
            rc = -ENOMEM;
        } else {
            memcpy(sorted, ids, sizeof(uint64_t) * n);
            qsort(sorted, n, sizeof *sorted, cmp_u64);
            for (size_t i = 1; i < n && !rc; i++)
                if (sorted[i] == sorted[i - 1])
                    rc = nl_fail(NL_EFORMAT, "ids file %s: id %llu appears more than once", path,
                                 (unsigned long long)sorted[i]);
            free(sorted);
        }
    }
    if (rc) {
        free(ids);
        return rc;
    }
    *out = ids;
    return 0;
}

/* Checks a JSON Lines metadata file before any expensive work: one JSON object of at
 * most NL_MAX_METADATA_BYTES per line, exactly n lines. Errors name the line. */
int nl_import_check_metadata(const char *path, size_t n)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return nl_fail(-errno, "metadata file %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lines = 0;
    ssize_t len;
    int rc = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lines++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if ((size_t)len > NL_MAX_METADATA_BYTES) {
            rc = nl_fail(NL_EFORMAT, "metadata file %s line %zu: %zd bytes exceed the %d-byte limit", path, lines, len,
                         NL_MAX_METADATA_BYTES);
            break;
        }
        json_error_t err;
        json_t *j = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &err);
        if (!j)
            rc = nl_fail(NL_EFORMAT, "metadata file %s line %zu: not valid JSON: %s (column %d)", path, lines, err.text,
                         err.column);
        else if (!json_is_object(j))
            rc = nl_fail(NL_EFORMAT, "metadata file %s line %zu: not a JSON object", path, lines);
        json_decref(j);
    }
    free(line);
    fclose(f);
    if (!rc && lines != n)
        rc = nl_fail(NL_EFORMAT, "metadata file %s has %zu lines but the input has %zu vectors", path, lines, n);
    return rc;
}

uint64_t nl_import_inmemory_bytes(uint64_t n, uint32_t dim, nl_dtype dtype, uint32_t R, uint32_t pq_m, int has_ids)
{
    uint64_t cap = R + (R * 3 + 9) / 10;
    uint64_t per_point = (uint64_t)dim * nl_dtype_size(dtype) /* vectors */ + 4 * cap + 4 /* lists */ +
                         9 /* lock, order, ext */ + pq_m + (has_ids ? 16 : 0);
    uint64_t sample = 2ull * 100000 * dim * sizeof(float); /* PQ training rows, widened */
    return NL_IMPORT_FIXED_BYTES + n * per_point + sample;
}

static uint64_t physical_ram(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 4ull << 30;
}

int nl_import_publish(const nl_import_params *p, const char *coll_dir, uint64_t n, uint32_t dim, nl_dtype dtype,
                      uint32_t R, uint32_t L, float alpha, uint32_t pq_m, const uint64_t *ids)
{
    char shard_dir[4200], final_dir[4096];
    snprintf(shard_dir, sizeof shard_dir, "%s/0", coll_dir);
    snprintf(final_dir, sizeof final_dir, "%s/%s", p->db, p->collection);
    nl_collection_config cc = {dim, p->metric, dtype, 1, R, L, alpha, pq_m, 0};
    nl_shard_config sc = {dim, dtype, p->metric, R, L, alpha, pq_m, 0};
    int rc;
    if ((rc = nl_shard_config_check(&sc)) != 0)
        return rc;
    cc.fresh_capacity = sc.fresh_capacity;
    if ((rc = nl_shard_init_imported(shard_dir, &sc, 1, n, ids, p->metadata_path)) != 0 ||
        (rc = nl_catalog_write_config(coll_dir, &cc)) != 0)
        return rc;
    if ((rc = nl_fsync_dir(shard_dir)) != 0 || (rc = nl_fsync_dir(coll_dir)) != 0)
        return rc;
    if (rename(coll_dir, final_dir) != 0)
        return errno == ENOTEMPTY || errno == EEXIST
                   ? nl_fail(NL_EEXISTS, "collection '%s' was created by someone else meanwhile", p->collection)
                   : nl_fail(-errno, "cannot publish %s: %s", final_dir, strerror(errno));
    nl_fsync_dir(p->db);
    return 0;
}

static int import_in_memory(const nl_import_params *p, nl_import_result *r);

int nl_import(const nl_import_params *p, nl_import_result *r)
{
    memset(r, 0, sizeof *r);
    uint64_t t_all = nl_now_ns();
    int rc = nl_collection_name_check(p->collection);
    if (rc)
        return rc;
    char final_dir[4096];
    snprintf(final_dir, sizeof final_dir, "%s/%s", p->db, p->collection);
    struct stat st;
    int mk = nl_mkdirs(p->db);
    if (mk)
        return nl_fail(mk, "cannot create database directory %s: %s", p->db, strerror(-mk));
    if (stat(p->db, &st) != 0 || !S_ISDIR(st.st_mode))
        return nl_fail(NL_EINVAL, "%s is not a directory", p->db);
    if (access(p->db, W_OK | X_OK) != 0)
        return nl_fail(-errno, "database directory %s is not writable: %s", p->db, strerror(errno));
    if (stat(final_dir, &st) == 0)
        return nl_fail(NL_EEXISTS, "collection '%s' already exists in %s", p->collection, p->db);

    nl_dataset *ds;
    if ((rc = nl_dataset_open(p->input, p->format, &ds)) != 0)
        return rc;
    size_t n = nl_dataset_count(ds);
    uint32_t dim = nl_dataset_dim(ds);
    nl_dtype dtype = nl_dataset_dtype(ds);
    if (dtype == NL_DTYPE_I32) {
        nl_dataset_close(ds);
        return nl_fail(NL_EUNSUPPORTED, "%s holds int32 rows (ivecs): not a vector type nearline stores", p->input);
    }
    uint64_t budget = p->memory_budget ? p->memory_budget : physical_ram() / 2;
    uint32_t R = p->R ? p->R : 64;
    uint32_t pq_m = p->pq_m ? p->pq_m : nl_import_default_pq_m(dim);
    uint64_t need = nl_import_inmemory_bytes(n, dim, dtype, R, pq_m, p->ids_path != NULL);
    if (need <= budget && !p->force_partitioned) {
        nl_dataset_close(ds);
        rc = import_in_memory(p, r);
    } else {
        rc = nl_import_partitioned(p, ds, budget, r);
        nl_dataset_close(ds);
    }
    r->budget = budget;
    r->total_s = secs_since(t_all);
    return rc;
}

static int import_in_memory(const nl_import_params *p, nl_import_result *r)
{
    char tmp_dir[4096], shard_dir[4200], seg_path[4300];
    snprintf(tmp_dir, sizeof tmp_dir, "%s/.tmp-import-%s-%d", p->db, p->collection, (int)getpid());
    struct stat st;
    int rc;

    /* Input, validated before any expensive work. */
    uint64_t t0 = nl_now_ns();
    void *data = NULL;
    size_t n;
    uint32_t dim;
    nl_dtype dtype;
    uint64_t *ids = NULL;
    uint8_t *codes = NULL;
    nl_pq *pq = NULL;
    nl_vamana *ix = NULL;
    if ((rc = nl_dataset_load(p->input, p->format, &data, &n, &dim, &dtype)) != 0)
        return rc;
    size_t row_bytes = (size_t)dim * nl_dtype_size(dtype);
    for (size_t i = 0; i < n; i++)
        if (nl_check_finite(dtype, (const char *)data + i * row_bytes, dim) != 0) {
            free(data);
            return nl_fail(NL_EBADVALUE, "%s: row %zu holds NaN or Inf", p->input, i);
        }
    if (p->ids_path && (rc = nl_import_read_ids(p->ids_path, n, &ids)) != 0) {
        free(data);
        return rc;
    }
    if (p->metadata_path && (rc = nl_import_check_metadata(p->metadata_path, n)) != 0)
        goto out;
    uint32_t pq_m = p->pq_m ? p->pq_m : nl_import_default_pq_m(dim);
    if (pq_m > dim) {
        rc = nl_fail(NL_EINVAL, "--pq-bytes %u exceeds the dimension %u", pq_m, dim);
        goto out;
    }
    r->read_s = secs_since(t0);
    if (p->progress)
        p->progress(p->progress_ctx, "read", n, n);

    nl_vecset vs = {data, n, dim, dtype};
    unsigned threads = p->threads ? p->threads : nl_cpu_count();
    t0 = nl_now_ns();
    nl_pq_params pp = {.m = pq_m, .max_sample = 0, .iters = 0, .seed = p->seed, .threads = threads};
    if ((rc = nl_pq_train(&vs, p->metric, &pp, &pq)) != 0)
        goto out;
    codes = malloc(n * pq_m);
    if (!codes) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = nl_pq_encode(pq, &vs, codes, threads)) != 0)
        goto out;
    r->pq_s = secs_since(t0);
    if (p->progress)
        p->progress(p->progress_ctx, "pq", n, n);

    t0 = nl_now_ns();
    nl_vamana_params vp;
    nl_vamana_params_default(&vp);
    if (p->R) vp.R = p->R;
    if (p->L) vp.L = p->L;
    if (p->alpha > 0) vp.alpha = p->alpha;
    vp.threads = threads;
    vp.seed = p->seed;
    vp.single_pass = p->single_pass;
    if ((rc = nl_vamana_build(&vs, p->metric, &vp, p->progress, p->progress_ctx, &ix)) != 0)
        goto out;
    if ((rc = nl_graph_validate(nl_vamana_graph(ix), nl_vamana_medoid(ix), NULL)) != 0)
        goto out; /* a bug, not bad input: never publish a graph that fails validation */
    r->build_s = secs_since(t0);

    t0 = nl_now_ns();
    nl_remove_tree(tmp_dir); /* a leftover of a crashed run with the same pid */
    snprintf(shard_dir, sizeof shard_dir, "%s/0", tmp_dir);
    if (mkdir(tmp_dir, 0755) != 0 || mkdir(shard_dir, 0755) != 0) {
        rc = nl_fail(-errno, "cannot create %s: %s", shard_dir, strerror(errno));
        goto out;
    }
    snprintf(seg_path, sizeof seg_path, "%s/seg-000001.nls", shard_dir);
    /* The segment holds versions (pids) 0..n-1, the rows, so its id map is the identity
     * and costs nothing; the external ids go to the shard's id map. */
    nl_segment_source src = {ix, pq, codes, NULL, vp.L, vp.alpha, 0, NULL};
    if ((rc = nl_segment_write(seg_path, &src)) != 0)
        goto out;
    if ((rc = nl_import_publish(p, tmp_dir, n, dim, dtype, vp.R, vp.L, vp.alpha, pq_m, ids)) != 0)
        goto out;
    r->write_s = secs_since(t0);
    snprintf(r->segment_path, sizeof r->segment_path, "%s/%s/0/seg-000001.nls", p->db, p->collection);
    if (stat(r->segment_path, &st) == 0)
        r->segment_bytes = (uint64_t)st.st_size;
    r->points = n;
    r->dim = dim;
    r->dtype = dtype;
    r->R = vp.R;
    r->pq_m = pq_m;
out:
    if (rc)
        nl_remove_tree(tmp_dir);
    nl_vamana_destroy(ix);
    nl_pq_destroy(pq);
    free(codes);
    free(ids);
    free(data);
    return rc;
}
