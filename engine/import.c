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
#include <sys/file.h>
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "import_internal.h"
#include "nl_catalog.h"
#include "nl_layout.h"
#include "nl_quant.h"
#include "nl_segment.h"
#include "nl_shard.h"
#include "nl_util.h"

/* <coll>/code_choice.json: how the import chose the code, for inspect. */
static int write_choice(const char *coll_dir, const nl_code_choice *c)
{
    char path[4400];
    if ((size_t)snprintf(path, sizeof path, "%.4300s/code_choice.json", coll_dir) >= sizeof path)
        return nl_fail(NL_EINVAL, "path too long");
    json_t *j = nl_code_choice_json(c);
    if (!j)
        return -ENOMEM;
    int rc = json_dump_file(j, path, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(6)) == 0 ? 0 : nl_fail(-EIO, "cannot write %s", path);
    json_decref(j);
    return rc;
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

uint64_t nl_import_inmemory_bytes(uint64_t n, uint32_t dim, nl_dtype dtype, uint32_t R, uint32_t code_bytes, int has_ids)
{
    uint64_t cap = R + (R * 3 + 9) / 10;
    uint64_t per_point = (uint64_t)dim * nl_dtype_size(dtype) /* vectors */ + 4 * cap + 4 /* lists */ +
                         9 /* lock, order, ext */ + code_bytes + (has_ids ? 16 : 0) + 8 /* segment ids */ +
                         16 /* block layout: order, inverse, scratch */;
    uint64_t sample = 2ull * 100000 * dim * sizeof(float); /* PQ training rows, widened */
    return NL_IMPORT_FIXED_BYTES + n * per_point + sample;
}

static uint64_t physical_ram(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 4ull << 30;
}

/* ---------------------------------------------------------------- the work directory */

static int fingerprint(const nl_import_params *p, const nl_import_target *t, uint64_t n, json_t **out)
{
    char real[4096];
    struct stat st;
    if (!realpath(p->input, real) || stat(real, &st) != 0)
        return nl_fail(-errno, "%s: %s", p->input, strerror(errno));
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:s, s:i, s:i, s:f, s:i, s:I, s:I, s:i, s:s?, s:s?, s:I, s:i}",
                          "input", real, "input_bytes", (json_int_t)st.st_size, "input_mtime",
                          (json_int_t)st.st_mtime, "rows", (json_int_t)n, "metric", nl_metric_name(t->metric), "R",
                          (int)t->R, "L", (int)t->L, "alpha", (double)t->alpha, "pq_m", (int)t->pq_m, "seed",
                          (json_int_t)p->seed, "budget", (json_int_t)t->budget, "single_pass", p->single_pass, "ids",
                          p->ids_path, "metadata", p->metadata_path, "pid_base", (json_int_t)t->pid_base, "append",
                          p->append);
    if (!o)
        return -ENOMEM;
    json_object_set_new(o, "code", json_integer((json_int_t)t->code)); /* checkpoints hold codes of one kind */
    *out = o;
    return 0;
}

/* Creates or reopens <db>/.import-<name>, locked against a second import of the same
 * name. Checkpoints of another command (another fingerprint) are removed. */
static int open_work(const nl_import_params *p, const nl_import_target *t, uint64_t n, int *lock_fd)
{
    *lock_fd = -1;
    int rc = nl_mkdirs(t->work);
    if (rc)
        return nl_fail(rc, "cannot create %s: %s", t->work, strerror(-rc));
    char path[4200];
    snprintf(path, sizeof path, "%s/lock", t->work);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return nl_fail(-errno, "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return nl_fail(-EBUSY, "another import of '%s' is running (it holds %s)", p->collection, path);
    }
    json_t *want = NULL;
    if ((rc = fingerprint(p, t, n, &want)) != 0) {
        close(fd);
        return rc;
    }
    snprintf(path, sizeof path, "%s/job.json", t->work);
    json_t *have = json_load_file(path, 0, NULL);
    if (!have || !json_equal(have, want)) {
        DIR *d = opendir(t->work);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, "lock"))
                continue;
            char q[4400];
            snprintf(q, sizeof q, "%s/%s", t->work, e->d_name);
            nl_remove_tree(q);
        }
        if (d)
            closedir(d);
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        if (json_dump_file(want, tmp, JSON_SORT_KEYS) != 0 || rename(tmp, path) != 0)
            rc = nl_fail(-EIO, "cannot write %s", path);
        else
            nl_fsync_dir(t->work);
    }
    json_decref(have);
    json_decref(want);
    if (rc) {
        close(fd);
        return rc;
    }
    *lock_fd = fd;
    return 0;
}

/* ---------------------------------------------------------------- entry */

static int import_in_memory(const nl_import_params *p, nl_import_target *t, nl_import_result *r);

int nl_import(const nl_import_params *p, nl_import_result *r)
{
    memset(r, 0, sizeof *r);
    uint64_t t_all = nl_now_ns();
    int rc = nl_collection_name_check(p->collection);
    if (rc)
        return rc;
    char final_dir[4096], work[4200], coll_dir[4300], shard_dir[4400], seg_path[4500];
    snprintf(final_dir, sizeof final_dir, "%s/%s", p->db, p->collection);
    snprintf(work, sizeof work, "%s/.import-%s", p->db, p->collection);
    struct stat st;
    int mk = nl_mkdirs(p->db);
    if (mk)
        return nl_fail(mk, "cannot create database directory %s: %s", p->db, strerror(-mk));
    if (stat(p->db, &st) != 0 || !S_ISDIR(st.st_mode))
        return nl_fail(NL_EINVAL, "%s is not a directory", p->db);
    if (access(p->db, W_OK | X_OK) != 0)
        return nl_fail(-errno, "database directory %s is not writable: %s", p->db, strerror(errno));
    nl_collection_config cc;
    memset(&cc, 0, sizeof cc);
    nl_import_target t;
    memset(&t, 0, sizeof t);
    if (!p->append && stat(final_dir, &st) == 0)
        return nl_fail(NL_EEXISTS, "collection '%s' already exists in %s (--append adds to it)", p->collection, p->db);
    if (p->append) {
        if (stat(final_dir, &st) != 0)
            return nl_fail(NL_ENOTFOUND, "collection '%s' does not exist in %s (import without --append creates it)",
                           p->collection, p->db);
        if ((rc = nl_catalog_read_config(final_dir, &cc)) != 0)
            return rc;
        if (cc.shards != 1)
            return nl_fail(NL_EUNSUPPORTED,
                           "collection '%s' has %u shards: bulk append supports single-shard collections; "
                           "upsert into it instead", p->collection, cc.shards);
    }

    nl_dataset *ds;
    if ((rc = nl_dataset_open(p->input, p->format, &ds)) != 0)
        return rc;
    size_t n = nl_dataset_count(ds);
    uint32_t dim = nl_dataset_dim(ds);
    nl_dtype dtype = nl_dataset_dtype(ds);
    uint64_t *ids = NULL;
    nl_shard_import *h = NULL;
    int lock_fd = -1, publish_new = 0;
    if (dtype == NL_DTYPE_I32) {
        rc = nl_fail(NL_EUNSUPPORTED, "%s holds int32 rows (ivecs): not a vector type nearline stores", p->input);
        goto out;
    }
    if (p->append) {
        if (dim != cc.dim || dtype != cc.dtype) {
            rc = nl_fail(NL_EDIM, "%s holds %u-dimensional %s rows; collection '%s' stores %u-dimensional %s", p->input,
                         dim, nl_dtype_name(dtype), p->collection, cc.dim, nl_dtype_name(cc.dtype));
            goto out;
        }
        nl_shard_config sc = {cc.dim, cc.dtype, cc.metric, cc.R, cc.L, cc.alpha, cc.pq_bytes, cc.fresh_capacity,
                              cc.code};
        if ((rc = nl_shard_config_check(&sc)) != 0)
            goto out;
        t.R = sc.R;
        t.L = sc.L;
        t.alpha = sc.alpha;
        t.pq_m = sc.pq_m;
        t.code = sc.code; /* an appended segment keeps the collection's code */
        t.metric = sc.metric;
    } else {
        t.R = p->R ? p->R : 64;
        t.L = p->L ? p->L : 100;
        t.alpha = p->alpha > 0 ? p->alpha : 1.2f;
        t.pq_m = p->pq_m ? p->pq_m : nl_code_default_pq_m(dim);
        t.metric = p->metric;
        t.code = p->code ? p->code : p->pq_m ? NL_COLL_CODE_PQ : nl_code_default(dim);
    }
    if (!p->append && !p->code && !p->pq_m && n >= 1000) {
        /* The code is chosen from the data, within the memory allowed. */
        nl_code_choice_params cp = {.target = p->recall_target, .L = 50, .seed = p->seed, .threads = p->threads};
        cp.budget = p->search_memory_per_point ? p->search_memory_per_point
                    : p->search_memory ? (uint32_t)(p->search_memory / n < UINT32_MAX ? p->search_memory / n : UINT32_MAX)
                                       : nl_code_default_pq_m(dim) + 8;
        if (cp.budget == 0) {
            rc = nl_fail(NL_EINVAL, "--search-memory allows less than one byte a point for %zu points", n);
            goto out;
        }
        nl_dataset *qs = NULL;
        if (p->queries_path && (rc = nl_dataset_open(p->queries_path, NL_FORMAT_AUTO, &qs)) != 0) {
            char why[512]; /* copied: nl_fail writes the buffer nl_errdetail reads */
            snprintf(why, sizeof why, "%s", nl_errdetail());
            rc = nl_fail(rc, "--queries %s: %s", p->queries_path, why);
            goto out;
        }
        cp.sample_queries = qs;
        if (p->progress)
            p->progress(p->progress_ctx, "choose code", 0, 1);
        rc = nl_code_choose(ds, t.metric, &cp, &r->choice);
        nl_dataset_close(qs);
        if (rc != 0) {
            if (rc == NL_EBADVALUE) { /* the detail is copied: nl_fail writes the same buffer */
                char why[512];
                snprintf(why, sizeof why, "%s", nl_errdetail());
                rc = nl_fail(rc, "%s: %s", p->input, why);
            }
            goto out;
        }
        if (p->progress)
            p->progress(p->progress_ctx, "choose code", 1, 1);
        r->code_chosen = 1;
        if (r->choice.chosen.kind == NL_CODE_PQ) {
            t.code = NL_COLL_CODE_PQ;
            t.pq_m = r->choice.chosen.param;
        } else {
            t.code = NL_COLL_CODE_RABITQ(r->choice.chosen.param);
        }
    }
    if (t.pq_m > dim) {
        rc = nl_fail(NL_EINVAL, "--pq-bytes %u exceeds the dimension %u", t.pq_m, dim);
        goto out;
    }
    t.spec = NL_COLL_CODE_IS_RABITQ(t.code) ? (nl_code_spec){NL_CODE_RABITQ, NL_COLL_CODE_BITS(t.code)}
                                            : (nl_code_spec){NL_CODE_PQ, t.pq_m};
    if ((rc = nl_code_spec_check(t.spec, dim)) != 0)
        goto out;
    t.code_bytes = nl_code_spec_bytes(t.spec, dim);
    t.budget = p->memory_budget ? p->memory_budget : physical_ram() / 2;
    t.work = work;
    t.seg_path = seg_path;
    /* Inputs that can fail on the user, before any expensive work. */
    if (n == 0) {
        rc = nl_fail(NL_EEMPTY, "%s holds no vectors", p->input);
        goto out;
    }
    if (p->ids_path && (rc = nl_import_read_ids(p->ids_path, n, &ids)) != 0)
        goto out;
    if (p->metadata_path && (rc = nl_import_check_metadata(p->metadata_path, n)) != 0)
        goto out;
    uint64_t id_first = 0;
    uint32_t seg_number = 1;
    if (p->append) {
        snprintf(shard_dir, sizeof shard_dir, "%s/0", final_dir);
        nl_shard_config sc = {cc.dim, cc.dtype, cc.metric, t.R, t.L, t.alpha, t.pq_m, cc.fresh_capacity, t.code};
        if ((rc = nl_shard_import_begin(shard_dir, &sc, 0, &h)) != 0)
            goto out;
        int any = 0;
        uint64_t maxid = 0, ncoll = 0, first_row = 0;
        if (!ids) {
            /* Rows continue the numbering after the largest numeric id present. */
            if ((rc = nl_shard_import_max_id(h, &maxid, &any)) != 0)
                goto out;
            id_first = any ? maxid + 1 : 0;
            if (any && maxid > UINT64_MAX - n) {
                rc = nl_fail(NL_EINVAL, "ids after %llu would overflow; give --ids", (unsigned long long)maxid);
                goto out;
            }
        }
        if ((rc = nl_shard_import_collisions(h, ids, id_first, n, &ncoll, &first_row)) != 0)
            goto out;
        if (ncoll) {
            rc = nl_fail(NL_EEXISTS, "%llu of the %zu ids exist in collection '%s' already (the first: id %llu, %s line %llu)",
                         (unsigned long long)ncoll, n, p->collection,
                         (unsigned long long)(ids ? ids[first_row] : id_first + first_row),
                         p->ids_path ? p->ids_path : "row", (unsigned long long)first_row + 1);
            goto out;
        }
        t.pid_base = nl_shard_import_next_pid(h);
        seg_number = nl_shard_import_next_seg(h);
        snprintf(seg_path, sizeof seg_path, "%s/seg-%06u.nls", shard_dir, seg_number);
        r->first_id = id_first;
    } else {
        snprintf(coll_dir, sizeof coll_dir, "%s/collection", work);
        snprintf(shard_dir, sizeof shard_dir, "%s/0", coll_dir);
        snprintf(seg_path, sizeof seg_path, "%s/seg-000001.nls", shard_dir);
    }
    if ((rc = open_work(p, &t, n, &lock_fd)) != 0)
        goto out;
    if (!p->append) {
        nl_remove_tree(coll_dir); /* a collection half assembled by a crashed run */
        if ((rc = nl_mkdirs(shard_dir)) != 0) {
            rc = nl_fail(rc, "cannot create %s: %s", shard_dir, strerror(-rc));
            goto out;
        }
    }
    uint64_t need = nl_import_inmemory_bytes(n, dim, dtype, t.R, t.code_bytes, p->ids_path != NULL);
    if (need <= t.budget && !p->force_partitioned)
        rc = import_in_memory(p, &t, r);
    else
        rc = nl_import_partitioned(p, ds, &t, r);
    if (rc)
        goto out;

    /* The store entries, then (new collections) the directory rename that publishes. */
    uint64_t t0 = nl_now_ns();
    if (p->append) {
        rc = nl_shard_import_commit(h, seg_number, n, ids, id_first, t.row_ord, p->metadata_path);
    } else {
        nl_collection_config ncc = {dim, t.metric, dtype, 1, t.R, t.L, t.alpha, t.pq_m, 0, t.code};
        nl_shard_config sc = {dim, dtype, t.metric, t.R, t.L, t.alpha, t.pq_m, 0, t.code};
        if ((rc = nl_shard_config_check(&sc)) != 0)
            goto out;
        ncc.fresh_capacity = sc.fresh_capacity;
        if ((rc = nl_shard_import_begin(shard_dir, &sc, 1, &h)) != 0 ||
            (rc = nl_shard_import_commit(h, 1, n, ids, 0, t.row_ord, p->metadata_path)) != 0)
            goto out;
        nl_shard_import_end(h);
        h = NULL;
        if (r->code_chosen && (rc = write_choice(coll_dir, &r->choice)) != 0)
            goto out;
        if ((rc = nl_catalog_write_config(coll_dir, &ncc)) != 0 || (rc = nl_fsync_dir(shard_dir)) != 0 ||
            (rc = nl_fsync_dir(coll_dir)) != 0)
            goto out;
        if (rename(coll_dir, final_dir) != 0) {
            rc = errno == ENOTEMPTY || errno == EEXIST
                     ? nl_fail(NL_EEXISTS, "collection '%s' was created by someone else meanwhile", p->collection)
                     : nl_fail(-errno, "cannot publish %s: %s", final_dir, strerror(errno));
            goto out;
        }
        nl_fsync_dir(p->db);
        publish_new = 1;
    }
    if (rc)
        goto out;
    r->write_s += secs_since(t0);
    snprintf(r->segment_path, sizeof r->segment_path, "%s/0/seg-%06u.nls", final_dir, seg_number);
    if (stat(r->segment_path, &st) == 0)
        r->segment_bytes = (uint64_t)st.st_size;
    r->points = n;
    r->dim = dim;
    r->dtype = dtype;
    r->R = t.R;
    r->pq_m = t.code_bytes;
    r->code = t.spec;
    r->budget = t.budget;
    r->appended = p->append;
    (void)publish_new;
    nl_remove_tree(work); /* published: the checkpoints have served their purpose */
out:
    nl_shard_import_end(h);
    if (rc && lock_fd >= 0 &&
        (rc == NL_EBADVALUE || rc == NL_EFORMAT || rc == NL_ETRUNCATED || rc == NL_EDIM || !r->partitions))
        nl_remove_tree(work); /* bad input or an in-memory build: nothing worth resuming */
    if (lock_fd >= 0)
        close(lock_fd);
    nl_dataset_close(ds);
    free(ids);
    free(t.row_ord);
    r->total_s = secs_since(t_all);
    return rc;
}

/* The whole build in memory: load, PQ, Vamana, one segment write. */
static int import_in_memory(const nl_import_params *p, nl_import_target *t, nl_import_result *r)
{
    uint64_t t0 = nl_now_ns();
    void *data = NULL;
    size_t n;
    uint32_t dim;
    nl_dtype dtype;
    uint8_t *codes = NULL;
    uint64_t *pids = NULL;
    uint32_t *order = NULL;
    nl_quant *pq = NULL;
    nl_vamana *ix = NULL;
    int rc;
    if ((rc = nl_dataset_load(p->input, p->format, &data, &n, &dim, &dtype)) != 0)
        return rc;
    size_t row_bytes = (size_t)dim * nl_dtype_size(dtype);
    for (size_t i = 0; i < n; i++)
        if (nl_check_finite(dtype, (const char *)data + i * row_bytes, dim) != 0) {
            free(data);
            return nl_fail(NL_EBADVALUE, "%s: row %zu holds NaN or Inf", p->input, i);
        }
    r->read_s = secs_since(t0);
    if (p->progress)
        p->progress(p->progress_ctx, "read", n, n);

    nl_vecset vs = {data, n, dim, dtype};
    unsigned threads = p->threads ? p->threads : nl_cpu_count();
    t0 = nl_now_ns();
    nl_quant_params qp = {.max_sample = 0, .seed = p->seed, .threads = threads};
    if ((rc = nl_quant_train(&vs, t->metric, t->spec, &qp, &pq)) != 0)
        goto out;
    codes = malloc(n * t->code_bytes);
    if (!codes) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = nl_quant_encode(pq, &vs, codes, threads)) != 0)
        goto out;
    r->pq_s = secs_since(t0);
    if (p->progress)
        p->progress(p->progress_ctx, "pq", n, n);

    t0 = nl_now_ns();
    nl_vamana_params vp;
    nl_vamana_params_default(&vp);
    vp.R = t->R;
    vp.L = t->L;
    vp.alpha = t->alpha;
    vp.threads = threads;
    vp.seed = p->seed;
    vp.single_pass = p->single_pass;
    if ((rc = nl_vamana_build(&vs, t->metric, &vp, p->progress, p->progress_ctx, &ix)) != 0)
        goto out;
    if ((rc = nl_graph_validate(nl_vamana_graph(ix), nl_vamana_medoid(ix), NULL)) != 0)
        goto out; /* a bug, not bad input: never publish a graph that fails validation */
    r->build_s = secs_since(t0);

    /* The block layout (index/nl_layout.h): file position u holds row order[u], so the
     * rows' versions are assigned in file order and stay ascending (nl_segment_find);
     * row r's version is pid_base + row_ord[r], which the commit writes to the id map. */
    t0 = nl_now_ns();
    const uint32_t per = nl_segment_records_per_sector(dim, dtype, nl_graph_max_degree(nl_vamana_graph(ix)));
    int blocks = p->layout == NL_LAYOUT_BLOCKS || (p->layout == NL_LAYOUT_AUTO && per >= 2);
    if (blocks && per >= 2 && n > per) {
        if (!(order = malloc(sizeof(uint32_t) * n)) || !(t->row_ord = malloc(sizeof(uint32_t) * n))) {
            rc = -ENOMEM;
            goto out;
        }
        if ((rc = nl_layout_blocks(nl_vamana_graph(ix), nl_vamana_medoid(ix), per, order)) != 0)
            goto out;
        for (size_t u = 0; u < n; u++)
            t->row_ord[order[u]] = (uint32_t)u;
        r->block_layout = 1;
    }
    r->block_records = per;
    r->layout_overlap = nl_layout_overlap(nl_vamana_graph(ix), order, per);
    r->layout_s = secs_since(t0);

    t0 = nl_now_ns();
    /* The segment holds versions (pids) pid_base.. in file order; for a new collection in
     * row order that is the identity and its id map costs nothing. The external ids go
     * to the shard's id map. */
    if (t->pid_base) {
        if (!(pids = malloc(sizeof(uint64_t) * n))) {
            rc = -ENOMEM;
            goto out;
        }
        for (size_t i = 0; i < n; i++) /* by index node (row), as the writer reads them */
            pids[i] = t->pid_base + (t->row_ord ? t->row_ord[i] : i);
    }
    nl_segment_source src = {ix, pq, codes, pids, vp.L, vp.alpha, 0, order, order != NULL};
    if ((rc = nl_segment_write(t->seg_path, &src)) != 0)
        goto out;
    r->write_s = secs_since(t0);
out:
    nl_vamana_destroy(ix);
    nl_quant_destroy(pq);
    free(codes);
    free(pids);
    free(order);
    free(data);
    return rc;
}
