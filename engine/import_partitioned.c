/*
 * import_partitioned.c — the memory-bounded, resumable bulk import (DiskANN's sharded
 * build, with an exact merge where memory allows it).
 *
 * Phases, each reading the input in fixed-size chunks (never whole):
 *   sample     one pass: every row checked (NaN/Inf, named by row), a strided sample of
 *              up to 100,000 rows kept, the mean taken
 *   pq         the code's quantizer (PQ or RaBitQ, told how many rows its codes serve, so
 *              RaBitQ sizes its centroids by the data, not by the sample) trained on the
 *              sample; k-means on the sample gives P partition
 *              centroids, P chosen so that one partition's in-memory build fits the budget
 *   partition  one pass: each row (number and vector) goes to its 2 nearest partitions
 *              that still have room (a hard cap per partition, so an unlucky clustering
 *              cannot blow the budget), gets its PQ code; every NAV_DIV-th row also goes
 *              to the navigation sample, and its row nearest the mean becomes the medoid
 *   build      per partition: its rows (which the partition pass copied into one file
 *              per partition, so a build reads its rows front to back instead of the
 *              whole input) loaded, a Vamana graph built in memory, and the lists
 *              written with global ids, sorted by id; its row files are then deleted.
 *              Then the navigation graph, built the same way over the sample (at most a
 *              partition's worth of rows, so it fits as a partition build does)
 *   merge      the graph files are walked together in id order: each point's lists
 *              (one per partition it is in, and the navigation graph's for a sampled
 *              point) are united and RobustPrune'd back to R with exact distances when
 *              every vector fits the budget, else the union is capped at R by
 *              interleaving the lists (DiskANN's merge); nodes stream into the segment
 *              writer; a reachability pass from the medoid gives any node the merge cut
 *              off an in-edge
 *
 * Why the navigation graph: a partition's lists were built by walks from that partition's
 * own medoid, so they hold no edge that leaves it, and a walk from the global medoid
 * crosses the data only through rows two partitions share. The in-memory build's lists
 * keep some long edges from its walks across the whole set. The sample's graph is such a
 * build at 1/NAV_DIV of the density: its lists join far regions directly, and the merge's
 * prune keeps those that no nearer neighbour occludes, as the in-memory build's does. On
 * hard-200k (8 partitions) it took the graph alone from 0.963 to 0.967 recall at L=30 and
 * its reads from +4.7 % to +2.5 % of the in-memory build's, for about 1/NAV_DIV more
 * build work (docs/decisions.md, "What the partitioned graph still loses").
 *   write      codes and hot list into the segment, the shard store, the collection
 *   layout     the segment rewritten in block layout where records pack several to a
 *              sector (nl_segment_relayout: the graph is read back from the file, never
 *              held whole), so the partitioned build reads as little as the in-memory one
 *
 * Checkpoints: everything lives in <db>/.import-<collection>/. job.json fingerprints the
 * command (input path, size and mtime, every build parameter); a later run with the same
 * fingerprint reuses every file a finished phase or partition left, a different one starts
 * over. Files are written under a temporary name, fsynced and renamed, so a file that
 * exists is complete; small ones carry a CRC-32C and are redone when it fails. Each phase
 * is a function of the files before it and the seed, so a resumed run builds the same
 * index as an uninterrupted one — bit for bit with one thread; with several, the
 * partition builds order their inserts by thread timing, as any parallel Vamana build.
 *
 * Memory: every large allocation is sized from the budget before it is made; RSS is the
 * largest phase (a partition build, or the merge holding all vectors for exact pruning).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "import_internal.h"
#include "nl_catalog.h"
#include "nl_crc32c.h"
#include "nl_files.h"
#include "nl_distance.h"
#include "nl_kmeans.h"
#include "nl_quant.h"
#include "nl_segment.h"
#include "nl_util.h"

#define SAMPLE_MAX 100000u
#define TOP_T 8u            /* partition candidates kept per row before the capacity check */
#define MERGE_BLOCK 8192u   /* nodes merged per parallel step */
#define CHUNK_BYTES (16u << 20)
#define NAV_DIV 8u          /* the navigation sample is one row in this many */

static const char PQ_MAGIC[8] = "NLIPQ01";
static const char PARTS_MAGIC[8] = "NLIPRT1";
static const char DONE_MAGIC[8] = "NLIPDN1";
static const char GRAPH_MAGIC[8] = "NLIPGR1";

typedef struct {
    const nl_import_params *p;
    nl_import_result *r;
    nl_dataset *ds;
    uint64_t n;
    uint32_t dim;
    nl_dtype dtype;
    size_t vb; /* bytes per stored row */
    uint32_t R, L, pq_m;
    float alpha;
    unsigned threads;
    uint64_t budget;
    const nl_import_target *t;
    const char *work;
    /* sizing */
    uint32_t P;
    uint64_t cap; /* points per partition at most */
    uint64_t nav_stride; /* the navigation sample: rows r with r % nav_stride == 0; 0 = none */
    uint32_t G;   /* graphs built and merged: the P partitions, then the navigation graph */
    /* products of the phases */
    nl_quant *pq;     /* the code's quantizer (PQ or RaBitQ: t->spec) */
    float *centroids; /* P x dim */
    float *mean;      /* dim */
    uint64_t *counts; /* G: rows of each partition, then of the navigation sample */
    uint32_t medoid;
} job;

static double secs_since(uint64_t t0) { return (double)(nl_now_ns() - t0) / 1e9; }

static void progress(const job *j, const char *phase, uint64_t done, uint64_t total)
{
    if (j->p->progress)
        j->p->progress(j->p->progress_ctx, phase, done, total);
}

static void work_path(const job *j, char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", j->work, name);
}

/* ---------------------------------------------------------------- the job */

/* Chunked pass over the input: fn gets rows [first, first+count) in the stored type. */
typedef int (*scan_fn)(job *j, void *ctx, uint64_t first, uint64_t count, const void *rows);

static int scan_input(job *j, const char *phase, scan_fn fn, void *ctx)
{
    uint64_t chunk = CHUNK_BYTES / j->vb;
    if (chunk == 0)
        chunk = 1;
    void *buf = malloc(chunk * j->vb);
    if (!buf)
        return -ENOMEM;
    int rc = 0;
    for (uint64_t first = 0; first < j->n && !rc; first += chunk) {
        uint64_t cnt = j->n - first < chunk ? j->n - first : chunk;
        if ((rc = nl_dataset_read(j->ds, first, cnt, buf)) != 0)
            break;
        rc = fn(j, ctx, first, cnt, buf);
        if (phase)
            progress(j, phase, first + cnt, j->n);
    }
    free(buf);
    return rc;
}

/* f32 view of a row for partitioning: cosine rows are normalised, so partitions follow
 * angles. */
static void row_f32(const job *j, const void *row, float *out)
{
    nl_convert_to_f32(j->dtype, row, out, j->dim);
    if (j->t->metric == NL_METRIC_COSINE) {
        double s = 0;
        for (uint32_t d = 0; d < j->dim; d++)
            s += (double)out[d] * out[d];
        if (s > 0) {
            float inv = (float)(1.0 / sqrt(s));
            for (uint32_t d = 0; d < j->dim; d++)
                out[d] *= inv;
        }
    }
}

/* ---------------------------------------------------------------- sample + pq */

typedef struct {
    uint64_t S, next; /* sample size, index of the next sample row */
    char *sample;
    double *sum;
    float *tmp;
} sample_ctx;

static uint64_t sample_row(uint64_t jx, uint64_t n, uint64_t S) { return (uint64_t)((unsigned __int128)jx * n / S); }

static int sample_chunk(job *j, void *vctx, uint64_t first, uint64_t count, const void *rows)
{
    sample_ctx *c = vctx;
    for (uint64_t i = 0; i < count; i++) {
        const char *row = (const char *)rows + i * j->vb;
        if (nl_check_finite(j->dtype, row, j->dim) != 0)
            return nl_fail(NL_EBADVALUE, "%s: row %llu holds NaN or Inf", j->p->input,
                           (unsigned long long)(first + i));
        row_f32(j, row, c->tmp);
        for (uint32_t d = 0; d < j->dim; d++)
            c->sum[d] += c->tmp[d];
        while (c->next < c->S && sample_row(c->next, j->n, c->S) == first + i) {
            memcpy(c->sample + c->next * j->vb, row, j->vb);
            c->next++;
        }
    }
    return 0;
}

static int phase_sample_pq(job *j)
{
    char pq_path[4200], parts_path[4200];
    work_path(j, pq_path, sizeof pq_path, "pq.bin");
    work_path(j, parts_path, sizeof parts_path, "parts.bin");
    size_t l1 = 0, l2 = 0;
    void *pqb = nl_file_read_small(pq_path, PQ_MAGIC, &l1);
    void *pb = nl_file_read_small(parts_path, PARTS_MAGIC, &l2);
    size_t want = 8 + sizeof(float) * ((size_t)j->dim + (size_t)j->P * j->dim);
    if (pqb && pb && l2 == want && nl_quant_deserialize(j->t->spec.kind, pqb, l1, &j->pq) == 0) {
        uint32_t hdr[2];
        memcpy(hdr, pb, 8);
        if (hdr[0] == j->P && hdr[1] == j->dim && nl_quant_spec(j->pq).param == j->t->spec.param) {
            memcpy(j->mean, (char *)pb + 8, sizeof(float) * j->dim);
            memcpy(j->centroids, (char *)pb + 8 + sizeof(float) * j->dim, sizeof(float) * j->P * j->dim);
            free(pqb);
            free(pb);
            progress(j, "sample (checkpoint)", j->n, j->n);
            progress(j, "pq (checkpoint)", 1, 1);
            j->r->resumed_phases += 2;
            return 0;
        }
        nl_quant_destroy(j->pq);
        j->pq = NULL;
    }
    free(pqb);
    free(pb);

    uint64_t t0 = nl_now_ns();
    /* The sample, its f32 copy and PQ training's own copy must fit a third of the budget. */
    uint64_t S = j->n < SAMPLE_MAX ? j->n : SAMPLE_MAX;
    uint64_t s_fit = j->budget / 3 / (j->vb + 8ull * j->dim);
    if (S > s_fit)
        S = s_fit > 1024 ? s_fit : 1024;
    sample_ctx c = {S, 0, NULL, NULL, NULL};
    c.sample = malloc(c.S * j->vb);
    c.sum = calloc(j->dim, sizeof(double));
    c.tmp = malloc(sizeof(float) * j->dim);
    float *xf = NULL;
    void *ser = NULL;
    int rc = 0;
    if (!c.sample || !c.sum || !c.tmp) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = scan_input(j, "sample", sample_chunk, &c)) != 0)
        goto out;
    for (uint32_t d = 0; d < j->dim; d++)
        j->mean[d] = (float)(c.sum[d] / (double)j->n);
    j->r->read_s = secs_since(t0);

    t0 = nl_now_ns();
    progress(j, "pq", 0, 2);
    nl_vecset vs = {c.sample, c.S, j->dim, j->dtype};
    nl_quant_params qp = {.max_sample = (uint32_t)c.S, .seed = j->p->seed, .threads = j->threads, .rows_hint = j->n};
    if ((rc = nl_quant_train(&vs, j->t->metric, j->t->spec, &qp, &j->pq)) != 0)
        goto out;
    progress(j, "pq", 1, 2);
    xf = malloc(sizeof(float) * c.S * j->dim);
    if (!xf) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < c.S; i++)
        row_f32(j, c.sample + i * j->vb, xf + i * j->dim);
    nl_kmeans_params kp = {j->P, 12, j->p->seed ^ 0x9e3779b97f4a7c15ull, j->threads};
    if ((rc = nl_kmeans(xf, c.S, j->dim, &kp, j->centroids, NULL, NULL)) != 0)
        goto out;
    progress(j, "pq", 2, 2);
    size_t sl = nl_quant_serialized_size(j->pq);
    ser = malloc(sl);
    if (!ser) {
        rc = -ENOMEM;
        goto out;
    }
    nl_quant_serialize(j->pq, ser, sl);
    uint32_t hdr[2] = {j->P, j->dim};
    size_t body = sizeof(float) * ((size_t)j->dim + (size_t)j->P * j->dim);
    char *pbuf = malloc(body);
    if (!pbuf) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(pbuf, j->mean, sizeof(float) * j->dim);
    memcpy(pbuf + sizeof(float) * j->dim, j->centroids, sizeof(float) * j->P * j->dim);
    if ((rc = nl_file_write_small(pq_path, PQ_MAGIC, ser, sl, NULL, 0)) == 0)
        rc = nl_file_write_small(parts_path, PARTS_MAGIC, hdr, 8, pbuf, body);
    free(pbuf);
    if (!rc)
        nl_kill_point("pq");
    j->r->pq_s = secs_since(t0);
out:
    free(c.sample);
    free(c.sum);
    free(c.tmp);
    free(xf);
    free(ser);
    return rc;
}

/* ---------------------------------------------------------------- partition */

typedef struct {
    job *j;
    FILE *codes;
    FILE **parts;   /* per partition: its row numbers */
    FILE **pvecs;   /* and its rows, so its build reads one file front to back */
    float *xf;      /* chunk rows, f32 */
    uint32_t *top;  /* chunk x T nearest partitions */
    float *dmean;   /* chunk: distance to the mean */
    uint8_t *cbuf;  /* chunk codes */
    uint32_t T;
    uint64_t count; /* rows in the current chunk */
    float best;     /* medoid search */
    nl_dist_fn l2;
} part_ctx;

static int part_task(void *vctx, size_t task, unsigned thread)
{
    (void)thread;
    part_ctx *c = vctx;
    job *j = c->j;
    uint64_t lo = (uint64_t)task * 1024, hi = lo + 1024 < c->count ? lo + 1024 : c->count;
    float d[TOP_T];
    for (uint64_t i = lo; i < hi; i++) {
        const float *x = c->xf + i * j->dim;
        uint32_t *t = c->top + i * c->T;
        uint32_t have = 0;
        for (uint32_t k = 0; k < j->P; k++) {
            float dk = c->l2(x, j->centroids + (size_t)k * j->dim, j->dim);
            if (have == c->T && !(dk < d[have - 1]))
                continue;
            uint32_t pos = have < c->T ? have++ : c->T - 1;
            while (pos > 0 && dk < d[pos - 1]) {
                d[pos] = d[pos - 1];
                t[pos] = t[pos - 1];
                pos--;
            }
            d[pos] = dk;
            t[pos] = k;
        }
        c->dmean[i] = c->l2(x, j->mean, j->dim);
    }
    return 0;
}

static int partition_chunk(job *j, void *vctx, uint64_t first, uint64_t count, const void *rows)
{
    part_ctx *c = vctx;
    c->count = count;
    for (uint64_t i = 0; i < count; i++)
        row_f32(j, (const char *)rows + i * j->vb, c->xf + i * j->dim);
    int rc = nl_parallel_for((count + 1023) / 1024, j->threads, part_task, c);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < count; i++) {
        uint32_t row = (uint32_t)(first + i);
        if (row == j->n / 2)
            nl_kill_point("partition"); /* half the lists written, no checkpoint yet */
        uint32_t chosen[2], nch = 0;
        for (uint32_t k = 0; k < c->T && nch < 2; k++)
            if (j->counts[c->top[i * c->T + k]] < j->cap)
                chosen[nch++] = c->top[i * c->T + k];
        if (nch < 2) {
            /* Every near partition is full: the nearest ones with room, by a full scan. */
            const float *x = c->xf + i * j->dim;
            while (nch < 2) {
                float bd = INFINITY;
                uint32_t bk = UINT32_MAX;
                for (uint32_t k = 0; k < j->P; k++) {
                    if (j->counts[k] >= j->cap || (nch == 1 && chosen[0] == k))
                        continue;
                    float dk = c->l2(x, j->centroids + (size_t)k * j->dim, j->dim);
                    if (dk < bd || bk == UINT32_MAX) {
                        bd = dk;
                        bk = k;
                    }
                }
                if (bk == UINT32_MAX)
                    return nl_fail(NL_EINVAL, "import: partitions are full at row %u (a sizing bug)", row);
                chosen[nch++] = bk;
            }
        }
        for (uint32_t k = 0; k < 2; k++) {
            if (fwrite(&row, 4, 1, c->parts[chosen[k]]) != 1 ||
                fwrite((const char *)rows + i * j->vb, j->vb, 1, c->pvecs[chosen[k]]) != 1)
                return nl_fail(-(errno ? errno : EIO), "import: cannot write a partition: %s",
                               strerror(errno ? errno : EIO));
            j->counts[chosen[k]]++;
        }
        int nav = j->nav_stride && row % j->nav_stride == 0;
        if (nav) {
            if (fwrite(&row, 4, 1, c->parts[j->P]) != 1 || fwrite((const char *)rows + i * j->vb, j->vb, 1, c->pvecs[j->P]) != 1)
                return nl_fail(-(errno ? errno : EIO), "import: cannot write the navigation sample: %s",
                               strerror(errno ? errno : EIO));
            j->counts[j->P]++;
        }
        /* With a navigation graph the medoid is its nearest row to the mean, so the walk
         * starts on the graph whose lists span the whole data set. */
        if ((nav || !j->nav_stride) && c->dmean[i] < c->best) {
            c->best = c->dmean[i];
            j->medoid = row;
        }
    }
    nl_vecset vs = {rows, count, j->dim, j->dtype};
    if ((rc = nl_quant_encode(j->pq, &vs, c->cbuf, j->threads)) != 0)
        return rc;
    if (fwrite(c->cbuf, j->pq_m, count, c->codes) != count)
        return nl_fail(-(errno ? errno : EIO), "import: cannot write codes: %s", strerror(errno ? errno : EIO));
    return 0;
}

/* part-<k>.<ext> in the work directory, opened for writing with a buffer of buf bytes. */
static int open_part_file(const job *j, uint32_t k, const char *ext, size_t buf, FILE **out)
{
    char name[64], path[4200];
    snprintf(name, sizeof name, "part-%05u.%s", k, ext);
    work_path(j, path, sizeof path, name);
    if (!(*out = fopen(path, "wb")))
        return nl_fail(-errno, "%s: %s", path, strerror(errno));
    setvbuf(*out, NULL, _IOFBF, buf);
    return 0;
}

static int phase_partition(job *j)
{
    char done_path[4200];
    work_path(j, done_path, sizeof done_path, "partition.done");
    size_t len = 0;
    void *d = nl_file_read_small(done_path, DONE_MAGIC, &len);
    if (d && len == 8 + 8 * (size_t)j->G) {
        uint32_t hdr[2];
        memcpy(hdr, d, 8);
        if (hdr[0] == j->P && hdr[1] < j->n) {
            j->medoid = hdr[1];
            memcpy(j->counts, (char *)d + 8, 8 * (size_t)j->G);
            free(d);
            progress(j, "partition (checkpoint)", j->n, j->n);
            j->r->resumed_phases++;
            return 0;
        }
    }
    free(d);

    uint64_t t0 = nl_now_ns();
    memset(j->counts, 0, 8 * (size_t)j->G);
    part_ctx c;
    memset(&c, 0, sizeof c);
    c.j = j;
    c.T = j->P < TOP_T ? j->P : TOP_T;
    c.best = INFINITY;
    c.l2 = nl_distance_fn(NL_METRIC_L2, NL_DTYPE_F32);
    uint64_t chunk = CHUNK_BYTES / j->vb ? CHUNK_BYTES / j->vb : 1;
    c.xf = malloc(sizeof(float) * chunk * j->dim);
    c.top = malloc(sizeof(uint32_t) * chunk * c.T);
    c.dmean = malloc(sizeof(float) * chunk);
    c.cbuf = malloc((size_t)chunk * j->pq_m);
    c.parts = calloc(j->G, sizeof(FILE *));
    c.pvecs = calloc(j->G, sizeof(FILE *));
    char path[4200];
    int rc = 0;
    if (!c.xf || !c.top || !c.dmean || !c.cbuf || !c.parts || !c.pvecs) {
        rc = -ENOMEM;
        goto out;
    }
    work_path(j, path, sizeof path, "codes.bin");
    if (!(c.codes = fopen(path, "wb"))) {
        rc = nl_fail(-errno, "%s: %s", path, strerror(errno));
        goto out;
    }
    for (uint32_t k = 0; k < j->G && !rc; k++)
        if ((rc = open_part_file(j, k, "ids", 64 << 10, &c.parts[k])) == 0)
            rc = open_part_file(j, k, "vecs", 256 << 10, &c.pvecs[k]);
    if (rc)
        goto out;
    rc = scan_input(j, "partition", partition_chunk, &c);
out:
    if (c.codes) {
        work_path(j, path, sizeof path, "codes.bin");
        int r2 = nl_file_sync_close(c.codes, path);
        rc = rc ? rc : r2;
    }
    for (uint32_t k = 0; c.parts && k < j->G; k++)
        if (c.parts[k]) {
            int r2 = nl_file_sync_close(c.parts[k], "partition list");
            rc = rc ? rc : r2;
        }
    for (uint32_t k = 0; c.pvecs && k < j->G; k++)
        if (c.pvecs[k]) {
            int r2 = nl_file_sync_close(c.pvecs[k], "partition rows");
            rc = rc ? rc : r2;
        }
    free(c.pvecs);
    free(c.xf);
    free(c.top);
    free(c.dmean);
    free(c.cbuf);
    free(c.parts);
    if (!rc) {
        uint32_t hdr[2] = {j->P, j->medoid};
        nl_fsync_dir(j->work);
        rc = nl_file_write_small(done_path, DONE_MAGIC, hdr, 8, j->counts, 8 * (size_t)j->G);
    }
    j->r->partition_s = secs_since(t0);
    return rc;
}

/* ---------------------------------------------------------------- build */

typedef struct {
    const job *j;
    uint32_t part;
    char phase[96];
} build_progress;

static void build_progress_cb(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    build_progress *b = ctx;
    if (b->part == b->j->P)
        snprintf(b->phase, sizeof b->phase, "build navigation graph%s%s", strcmp(phase, "build") ? ", " : "",
                 strcmp(phase, "build") ? phase + 6 : "");
    else
        snprintf(b->phase, sizeof b->phase, "build part %u/%u%s%s", b->part + 1, b->j->P,
                 strcmp(phase, "build") ? ", " : "", strcmp(phase, "build") ? phase + 6 : "");
    progress(b->j, b->phase, done, total);
}

/* A finished partition graph: header + records, each {global id, degree, R ids}. */
static int graph_file_ok(const job *j, const char *path, uint64_t count)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    char m[8];
    uint64_t c;
    uint32_t r[2];
    int ok = fread(m, 1, 8, f) == 8 && !memcmp(m, GRAPH_MAGIC, 8) && fread(&c, 8, 1, f) == 1 && c == count &&
             fread(r, 4, 2, f) == 2 && r[0] == j->R;
    struct stat st;
    ok = ok && fstat(fileno(f), &st) == 0 &&
         (uint64_t)st.st_size == 24 + count * (2ull + j->R) * 4 + 4; /* the CRC is checked by the merge */
    fclose(f);
    return ok;
}

static int build_partition(job *j, uint32_t k)
{
    char ids_path[4200], vecs_path[4200], graph_path[4200], name[64];
    snprintf(name, sizeof name, "part-%05u.ids", k);
    work_path(j, ids_path, sizeof ids_path, name);
    snprintf(name, sizeof name, "part-%05u.vecs", k);
    work_path(j, vecs_path, sizeof vecs_path, name);
    snprintf(name, sizeof name, "part-%05u.graph", k);
    work_path(j, graph_path, sizeof graph_path, name);
    uint64_t s = j->counts[k];
    if (graph_file_ok(j, graph_path, s)) {
        char ph[96];
        if (k == j->P)
            snprintf(ph, sizeof ph, "build navigation graph (checkpoint)");
        else
            snprintf(ph, sizeof ph, "build part %u/%u (checkpoint)", k + 1, j->P);
        progress(j, ph, s, s);
        j->r->resumed_phases++;
        return 0;
    }
    if (s == 0) /* an empty partition (k-means left it no rows): nothing to build or merge */
        return 0;
    uint32_t *members = malloc(sizeof(uint32_t) * s);
    char *vecs = malloc(s * j->vb);
    nl_vamana *ix = NULL;
    FILE *f = NULL;
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", graph_path);
    int rc = 0;
    if (!members || !vecs) {
        rc = -ENOMEM;
        goto out;
    }
    int fd = open(ids_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || nl_pread_full(fd, members, sizeof(uint32_t) * s, 0) != 0) {
        rc = nl_fail(fd < 0 ? -errno : NL_ECORRUPT, "%s: cannot read %llu ids", ids_path, (unsigned long long)s);
        if (fd >= 0)
            close(fd);
        goto out;
    }
    close(fd);
    for (uint64_t i = 0; i < s; i++)
        if (members[i] >= j->n || (i && members[i] <= members[i - 1])) {
            rc = nl_fail(NL_ECORRUPT, "%s: ids not ascending at %llu", ids_path, (unsigned long long)i);
            goto out;
        }
    if ((fd = open(vecs_path, O_RDONLY | O_CLOEXEC)) < 0 || nl_pread_full(fd, vecs, s * j->vb, 0) != 0) {
        rc = nl_fail(fd < 0 ? -errno : NL_ECORRUPT, "%s: cannot read %llu rows", vecs_path, (unsigned long long)s);
        if (fd >= 0)
            close(fd);
        goto out;
    }
    close(fd);
    nl_vecset vs = {vecs, s, j->dim, j->dtype};
    nl_vamana_params vp;
    nl_vamana_params_default(&vp);
    vp.R = j->R;
    vp.L = j->L;
    vp.alpha = j->alpha;
    vp.threads = j->threads;
    vp.seed = j->p->seed + k;
    vp.single_pass = j->p->single_pass;
    build_progress bp = {j, k, ""};
    if ((rc = nl_vamana_build(&vs, j->t->metric, &vp, j->p->progress ? build_progress_cb : NULL, &bp, &ix)) != 0)
        goto out;
    free(vecs);
    vecs = NULL;
    if (!(f = fopen(tmp, "wb"))) {
        rc = nl_fail(-errno, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    uint32_t hdr[2] = {j->R, 0};
    int ok = fwrite(GRAPH_MAGIC, 1, 8, f) == 8 && fwrite(&s, 8, 1, f) == 1 && fwrite(hdr, 4, 2, f) == 2;
    const nl_graph *gr = nl_vamana_graph(ix);
    uint32_t *rec = calloc(2 + j->R, sizeof(uint32_t));
    uint32_t crc = 0;
    if (!rec)
        ok = 0;
    for (uint64_t i = 0; i < s && ok; i++) {
        uint32_t deg;
        const uint32_t *l = nl_graph_neighbors(gr, (uint32_t)i, &deg);
        memset(rec, 0, sizeof(uint32_t) * (2 + j->R));
        rec[0] = members[i];
        rec[1] = deg;
        for (uint32_t e = 0; e < deg; e++)
            rec[2 + e] = members[l[e]];
        crc = nl_crc32c(crc, rec, sizeof(uint32_t) * (2 + j->R));
        ok = fwrite(rec, sizeof(uint32_t), 2 + j->R, f) == 2 + j->R;
    }
    free(rec);
    ok = ok && fwrite(&crc, 4, 1, f) == 1;
    if (!ok) {
        rc = nl_fail(-(errno ? errno : EIO), "%s: write failed", tmp);
        fclose(f);
        f = NULL;
        goto out;
    }
    rc = nl_file_sync_close(f, tmp);
    f = NULL;
    if (!rc && rename(tmp, graph_path) != 0)
        rc = nl_fail(-errno, "%s: %s", graph_path, strerror(errno));
    if (!rc) {
        nl_fsync_dir(j->work);
        unlink(ids_path); /* the graph holds the row numbers; the rows are in the input */
        unlink(vecs_path);
        char point[32];
        snprintf(point, sizeof point, "build:%u", k);
        nl_kill_point(point);
    }
out:
    if (f)
        fclose(f);
    if (rc)
        unlink(tmp);
    nl_vamana_destroy(ix);
    free(members);
    free(vecs);
    return rc;
}

/* ---------------------------------------------------------------- merge */

typedef struct {
    FILE *f;
    uint64_t left;
    uint32_t crc;
    uint32_t *rec; /* the record read next, valid while has */
    int has;
    char path[4200];
} part_reader;

static int reader_advance(const job *j, part_reader *pr)
{
    pr->has = 0;
    if (pr->left == 0)
        return 0;
    size_t w = 2 + j->R;
    if (fread(pr->rec, sizeof(uint32_t), w, pr->f) != w)
        return nl_fail(NL_ECORRUPT, "%s: ends early", pr->path);
    pr->crc = nl_crc32c(pr->crc, pr->rec, sizeof(uint32_t) * w);
    pr->left--;
    if (pr->rec[0] >= j->n || pr->rec[1] > j->R)
        return nl_fail(NL_ECORRUPT, "%s: record of node %u with degree %u", pr->path, pr->rec[0], pr->rec[1]);
    for (uint32_t e = 0; e < pr->rec[1]; e++)
        if (pr->rec[2 + e] >= j->n)
            return nl_fail(NL_ECORRUPT, "%s: node %u links to %u", pr->path, pr->rec[0], pr->rec[2 + e]);
    pr->has = 1;
    if (pr->left == 0) {
        uint32_t crc;
        if (fread(&crc, 4, 1, pr->f) != 1 || crc != pr->crc)
            return nl_fail(NL_ECORRUPT, "%s: checksum mismatch", pr->path);
    }
    return 0;
}

typedef struct {
    job *j;
    int exact;
    const char *vecs;      /* exact: all rows; else NULL */
    uint64_t first;        /* block start */
    uint32_t count;
    uint32_t w;            /* candidates a node can have: R per list (two partitions, and
                            * the navigation graph when there is one) */
    uint32_t *cand;        /* block x w candidate lists */
    uint32_t *ncand;
    uint32_t *out;         /* block x R merged lists */
    uint32_t *nout;
    nl_dist_fn dist;
    /* per-thread scratch */
    float *qf;             /* threads x 2 x dim: p, then the prune's scratch */
    float *cd;             /* threads x w distances */
    float *occl;           /* threads x w occlusion ratios */
} merge_ctx;

static int merge_task(void *vctx, size_t task, unsigned thread)
{
    merge_ctx *c = vctx;
    const job *j = c->j;
    uint32_t R = j->R, w = c->w;
    uint64_t lo = (uint64_t)task * 256, hi = lo + 256 < c->count ? lo + 256 : c->count;
    float *qf = c->qf + (size_t)thread * 2 * j->dim;
    float *cd = c->cd + (size_t)thread * w;
    for (uint64_t i = lo; i < hi; i++) {
        uint32_t *cand = c->cand + i * w, nc = c->ncand[i];
        uint32_t *out = c->out + i * R;
        uint32_t self = (uint32_t)(c->first + i);
        if (!c->exact || nc <= R) {
            /* The lists arrive interleaved (see below); drop duplicates and self, cap at R. */
            uint32_t k = 0;
            for (uint32_t a = 0; a < nc && k < R; a++) {
                uint32_t v = cand[a];
                int dup = v == self;
                for (uint32_t b = 0; b < k && !dup; b++)
                    dup = out[b] == v;
                if (!dup)
                    out[k++] = v;
            }
            if (!c->exact || k <= R) {
                c->nout[i] = k;
                continue;
            }
        }
        /* RobustPrune(p, union, alpha, R) with exact distances. */
        nl_convert_to_f32(j->dtype, c->vecs + (size_t)self * j->vb, qf, j->dim);
        uint32_t m = 0;
        for (uint32_t a = 0; a < nc; a++) {
            uint32_t v = cand[a];
            int dup = v == self;
            for (uint32_t b = 0; b < m && !dup; b++)
                dup = cand[b] == v;
            if (dup)
                continue;
            cand[m] = v;
            cd[m] = c->dist(qf, c->vecs + (size_t)v * j->vb, j->dim);
            m++;
        }
        for (uint32_t a = 1; a < m; a++) { /* insertion sort by (distance, id): m <= 3R */
            float d = cd[a];
            uint32_t v = cand[a], b = a;
            while (b > 0 && (cd[b - 1] > d || (cd[b - 1] == d && cand[b - 1] > v))) {
                cd[b] = cd[b - 1];
                cand[b] = cand[b - 1];
                b--;
            }
            cd[b] = d;
            cand[b] = v;
        }
        /* The build's own rule (nl_vamana_prune), alpha raised from 1: a single prune at
         * alpha here filled lists with near, nearly occluded candidates, and the merged
         * graph alone needed 9 % more reads than the in-memory build (hard-1M, L=30). */
        nl_vecset vs = {c->vecs, j->n, j->dim, j->dtype};
        uint32_t k = nl_vamana_prune(&vs, c->dist, NULL, cand, cd, m, j->alpha, R, c->occl + (size_t)thread * w,
                                     qf + j->dim, out);
        c->nout[i] = k;
    }
    return 0;
}

typedef struct {
    int fd;
    uint32_t m;
    const char *path;
    uint64_t pid_base;
} codes_src;

static int fill_pids(void *ctx, uint64_t first, uint64_t count, void *dst)
{
    const codes_src *cs = ctx;
    uint64_t *out = dst;
    for (uint64_t i = 0; i < count; i++)
        out[i] = cs->pid_base + first + i;
    return 0;
}

static int fill_codes(void *ctx, uint64_t first, uint64_t count, void *dst)
{
    codes_src *cs = ctx;
    if (nl_pread_full(cs->fd, dst, (size_t)count * cs->m, first * cs->m) != 0)
        return nl_fail(NL_ECORRUPT, "%s: cannot read codes %llu..%llu", cs->path, (unsigned long long)first,
                       (unsigned long long)(first + count));
    return 0;
}

typedef struct {
    char *vecs;
} load_ctx;

static int load_chunk(job *j, void *vctx, uint64_t first, uint64_t count, const void *rows)
{
    load_ctx *l = vctx;
    memcpy(l->vecs + first * j->vb, rows, count * j->vb);
    return 0;
}

/* Candidates a node can have in the merge: R from each of its lists. */
static uint32_t merge_width(const job *j) { return (j->nav_stride ? 3 : 2) * j->R; }

/* Bytes the exact merge needs beyond the fixed part. */
static uint64_t merge_bytes(const job *j, int exact)
{
    uint64_t w = merge_width(j);
    uint64_t blocks = (uint64_t)MERGE_BLOCK * (w + j->R + 2) * 4 + (uint64_t)j->threads * (2ull * j->dim + 2 * w) * 4 +
                      (uint64_t)j->G * (64 << 10) + (uint64_t)MERGE_BLOCK * j->vb;
    uint64_t reach = j->n / 2; /* reachability: four bitmaps */
    return blocks + reach + (exact ? j->n * j->vb : 0) + (j->p->ids_path ? j->n * 16 : 0);
}

static int phase_merge_write(job *j)
{
    uint64_t t0 = nl_now_ns();
    int exact = NL_IMPORT_FIXED_BYTES + merge_bytes(j, 1) <= j->budget;
    j->r->exact_merge = exact;
    merge_ctx c;
    memset(&c, 0, sizeof c);
    c.j = j;
    c.exact = exact;
    c.dist = nl_distance_fn(j->t->metric == NL_METRIC_COSINE ? NL_METRIC_COSINE : NL_METRIC_L2, j->dtype);
    part_reader *rd = calloc(j->G, sizeof *rd);
    char *vecs = NULL, *blockvec = NULL;
    nl_segment_writer *w = NULL;
    codes_src cs = {-1, j->pq_m, NULL, 0};
    char codes_path[4200];
    int rc = 0;
    uint32_t R = j->R, W = merge_width(j);
    c.w = W;
    c.cand = malloc(sizeof(uint32_t) * MERGE_BLOCK * W);
    c.ncand = malloc(sizeof(uint32_t) * MERGE_BLOCK);
    c.out = malloc(sizeof(uint32_t) * MERGE_BLOCK * R);
    c.nout = malloc(sizeof(uint32_t) * MERGE_BLOCK);
    c.qf = malloc(sizeof(float) * j->threads * 2 * j->dim);
    c.cd = malloc(sizeof(float) * j->threads * W);
    c.occl = malloc(sizeof(float) * j->threads * W);
    blockvec = exact ? NULL : malloc((size_t)MERGE_BLOCK * j->vb);
    if (!rd || !c.cand || !c.ncand || !c.out || !c.nout || !c.qf || !c.cd || !c.occl || (!exact && !blockvec)) {
        rc = -ENOMEM;
        goto out;
    }
    if (exact) {
        if (!(vecs = malloc(j->n * j->vb))) {
            rc = -ENOMEM;
            goto out;
        }
        load_ctx l = {vecs};
        if ((rc = scan_input(j, "merge: load", load_chunk, &l)) != 0)
            goto out;
        c.vecs = vecs;
    }
    for (uint32_t k = 0; k < j->G; k++) {
        part_reader *pr = &rd[k];
        char name[64];
        snprintf(name, sizeof name, "part-%05u.graph", k);
        work_path(j, pr->path, sizeof pr->path, name);
        pr->rec = malloc(sizeof(uint32_t) * (2 + R));
        if (!pr->rec) {
            rc = -ENOMEM;
            goto out;
        }
        if (j->counts[k] == 0)
            continue;
        if (!(pr->f = fopen(pr->path, "rb"))) {
            rc = nl_fail(-errno, "%s: %s", pr->path, strerror(errno));
            goto out;
        }
        setvbuf(pr->f, NULL, _IOFBF, 64 << 10);
        char m[8];
        uint64_t cnt;
        uint32_t hdr[2];
        if (fread(m, 1, 8, pr->f) != 8 || memcmp(m, GRAPH_MAGIC, 8) || fread(&cnt, 8, 1, pr->f) != 1 ||
            cnt != j->counts[k] || fread(hdr, 4, 2, pr->f) != 2 || hdr[0] != R) {
            rc = nl_fail(NL_ECORRUPT, "%s: bad header", pr->path);
            goto out;
        }
        pr->left = cnt;
        if ((rc = reader_advance(j, pr)) != 0)
            goto out;
    }
    nl_segment_writer_params wp = {j->n, j->dim, j->dtype, j->t->metric, R, j->L, j->alpha, j->pq, 0};
    if ((rc = nl_segment_writer_create(j->t->seg_path, &wp, &w)) != 0)
        goto out;
    for (uint64_t first = 0; first < j->n && !rc; first += MERGE_BLOCK) {
        uint32_t cnt = (uint32_t)(j->n - first < MERGE_BLOCK ? j->n - first : MERGE_BLOCK);
        c.first = first;
        c.count = cnt;
        memset(c.ncand, 0, sizeof(uint32_t) * cnt);
        /* Gather each node's lists, interleaved entry by entry, so the capped union of
         * the non-exact merge takes the nearest few of every partition's list. */
        uint32_t *srcs = c.nout; /* reused as a per-node list counter */
        memset(srcs, 0, sizeof(uint32_t) * cnt);
        for (uint32_t k = 0; k < j->G && !rc; k++) {
            part_reader *pr = &rd[k];
            uint64_t prev = UINT64_MAX;
            while (pr->has && pr->rec[0] < first + cnt) {
                uint32_t i = (uint32_t)(pr->rec[0] - first);
                if (pr->rec[0] < first || (prev != UINT64_MAX && pr->rec[0] <= prev)) {
                    rc = nl_fail(NL_ECORRUPT, "%s: node %u out of order", pr->path, pr->rec[0]);
                    break;
                }
                prev = pr->rec[0];
                uint32_t *cand = c.cand + (size_t)i * W;
                uint32_t have = c.ncand[i], deg = pr->rec[1], s = srcs[i];
                if (k < j->P ? s >= 2 : s == 0) {
                    rc = nl_fail(NL_ECORRUPT, "%s: node %u is in %s", pr->path, pr->rec[0],
                                 k < j->P ? "more than two partitions" : "the navigation sample but no partition");
                    break;
                }
                if (s == 0) {
                    memcpy(cand, pr->rec + 2, sizeof(uint32_t) * deg);
                } else { /* interleave with the lists before */
                    uint32_t tmp[3 * 1024], t = 0, a = 0, b = 0;
                    while ((a < have || b < deg) && t < W) {
                        if (a < have)
                            tmp[t++] = cand[a++];
                        if (b < deg && t < W)
                            tmp[t++] = pr->rec[2 + b++];
                    }
                    memcpy(cand, tmp, sizeof(uint32_t) * t);
                    deg = t - have;
                }
                c.ncand[i] = have + deg;
                srcs[i] = s + 1;
                rc = reader_advance(j, pr);
            }
        }
        for (uint32_t i = 0; i < cnt && !rc; i++)
            if (srcs[i] == 0)
                rc = nl_fail(NL_ECORRUPT, "import: node %llu is in no partition", (unsigned long long)(first + i));
        if (rc)
            break;
        if ((rc = nl_parallel_for((cnt + 255) / 256, j->threads, merge_task, &c)) != 0)
            break;
        if (!exact && (rc = nl_dataset_read(j->ds, first, cnt, blockvec)) != 0)
            break;
        for (uint32_t i = 0; i < cnt && !rc; i++) {
            const void *vec = exact ? vecs + (first + i) * j->vb : blockvec + (size_t)i * j->vb;
            rc = nl_segment_writer_add(w, vec, c.out + (size_t)i * R, c.nout[i]);
        }
        progress(j, "merge", first + cnt, j->n);
        if (first + cnt >= j->n / 2)
            nl_kill_point("merge"); /* the segment half written */
    }
    for (uint32_t k = 0; k < j->G && !rc; k++)
        if (rd[k].has || rd[k].left)
            rc = nl_fail(NL_ECORRUPT, "%s: records past the last node", rd[k].path);
    free(vecs);
    vecs = NULL;
    if (rc)
        goto out;
    j->r->merge_s = secs_since(t0);

    t0 = nl_now_ns();
    progress(j, "write", 0, 2);
    uint64_t repaired = 0;
    if ((rc = nl_segment_writer_connect(w, j->medoid, &repaired)) != 0)
        goto out;
    j->r->repaired_edges = repaired;
    progress(j, "write", 1, 2);
    work_path(j, codes_path, sizeof codes_path, "codes.bin");
    cs.path = codes_path;
    if ((cs.fd = open(codes_path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = nl_fail(-errno, "%s: %s", codes_path, strerror(errno));
        goto out;
    }
    cs.pid_base = j->t->pid_base;
    rc = nl_segment_writer_finish(w, j->medoid, fill_codes, cs.pid_base ? fill_pids : NULL, &cs, NULL, 0, 0);
    w = NULL;
    if (rc)
        goto out;
    progress(j, "write", 2, 2);
    j->r->write_s = secs_since(t0);
out:
    if (cs.fd >= 0)
        close(cs.fd);
    nl_segment_writer_abort(w);
    for (uint32_t k = 0; rd && k < j->G; k++) {
        if (rd[k].f)
            fclose(rd[k].f);
        free(rd[k].rec);
    }
    free(rd);
    free(vecs);
    free(blockvec);
    free(c.cand);
    free(c.ncand);
    free(c.out);
    free(c.nout);
    free(c.qf);
    free(c.cd);
    free(c.occl);
    return rc;
}

/* ---------------------------------------------------------------- layout */

/* The block layout (index/nl_layout.h) for a merged graph, which was never whole in
 * memory: the written segment is rewritten in that order (nl_segment_relayout), and row r
 * becomes ordinal t->row_ord[r]. Skipped (layout auto) when records do not pack several
 * to a sector or the pass would not fit the budget: codes, ids, the order and its
 * inverse, the layout's scratch and the sector cache. */
static int relayout(job *j, nl_import_target *t)
{
    uint32_t per = nl_segment_records_per_sector(j->dim, j->dtype, j->R);
    j->r->block_records = per;
    if (j->p->layout == NL_LAYOUT_ID || per < 2)
        return 0;
    uint64_t need = NL_IMPORT_FIXED_BYTES + j->n * (j->pq_m + (t->pid_base ? 8 : 0) + 16) + (16u << 20);
    if (need > j->budget) {
        if (j->p->layout == NL_LAYOUT_BLOCKS)
            return nl_fail(NL_EINVAL, "--layout blocks: the layout pass needs %llu MiB, more than the %llu MiB budget",
                           (unsigned long long)(need >> 20), (unsigned long long)(j->budget >> 20));
        return 0;
    }
    uint64_t t0 = nl_now_ns();
    progress(j, "layout", 0, 1);
    if (!(t->row_ord = malloc(sizeof(uint32_t) * j->n)))
        return -ENOMEM;
    int rc = nl_segment_relayout(t->seg_path, t->row_ord, &j->r->layout_overlap);
    if (rc) {
        free(t->row_ord);
        t->row_ord = NULL;
        return rc;
    }
    j->r->block_layout = 1;
    j->r->layout_s = secs_since(t0);
    progress(j, "layout", 1, 1);
    return 0;
}

/* ---------------------------------------------------------------- entry */

int nl_import_partitioned(const nl_import_params *p, nl_dataset *ds, nl_import_target *t, nl_import_result *r)
{
    job j;
    memset(&j, 0, sizeof j);
    j.p = p;
    j.r = r;
    j.t = t;
    j.ds = ds;
    j.n = nl_dataset_count(ds);
    j.dim = nl_dataset_dim(ds);
    j.dtype = nl_dataset_dtype(ds);
    j.vb = (size_t)j.dim * nl_dtype_size(j.dtype);
    j.R = t->R;
    j.L = t->L;
    j.alpha = t->alpha;
    j.pq_m = t->code_bytes; /* bytes of one code, whatever its kind */
    j.threads = p->threads ? p->threads : nl_cpu_count();
    j.budget = t->budget;
    j.work = t->work;
    if (j.n < 3)
        return nl_fail(NL_EINVAL, "a partitioned import needs at least 3 rows");
    if (j.R < 2 || j.R > 1024 || j.L < 1 || !(j.alpha >= 1.0f && j.alpha <= 4.0f))
        return nl_fail(NL_EINVAL, "R=%u L=%u alpha=%g out of range", j.R, j.L, (double)j.alpha);

    /* Sizing: one partition's in-memory build (vectors, lists with 1.3 R slack, lock,
     * order, member id, norm) must fit what the fixed part and the ids leave. */
    uint64_t slack = j.R + (j.R * 3 + 9) / 10;
    uint64_t per_point = j.vb + 4 * slack + 4 + 13;
    uint64_t fixed = NL_IMPORT_FIXED_BYTES + (p->ids_path ? 16 * j.n : 0) + CHUNK_BYTES +
                     (uint64_t)j.threads * (16ull << 20) /* build scratch per thread */;
    if (j.budget <= fixed + per_point * 1024)
        return nl_fail(NL_EINVAL, "--memory-budget %llu MiB is too small for %llu rows of %zu bytes (need more than %llu MiB)",
                       (unsigned long long)(j.budget >> 20), (unsigned long long)j.n, j.vb,
                       (unsigned long long)((fixed + per_point * 1024) >> 20) + 1);
    uint64_t cap = (j.budget - fixed) / per_point;
    if (cap > j.n)
        cap = j.n;
    /* 2n placements at 80% fill; and however they fall, the full partitions (at most
     * 2n / cap of them) must leave two with room for the last point. */
    uint64_t P = (2 * j.n * 5 + cap * 4 - 1) / (cap * 4);
    uint64_t p_min = (2 * j.n + cap - 1) / cap + 1;
    if (P < p_min)
        P = p_min;
    if (P < 3)
        P = 3;
    if (P > 65536)
        return nl_fail(NL_EINVAL, "--memory-budget %llu MiB would need %llu partitions; raise it",
                       (unsigned long long)(j.budget >> 20), (unsigned long long)P);
    j.P = (uint32_t)P;
    j.cap = cap;
    r->partitions = j.P;
    /* The navigation sample: every nav_stride-th row, at most one partition's worth so its
     * build fits the budget as a partition's does. */
    uint64_t want = j.n / NAV_DIV > cap ? cap : j.n / NAV_DIV;
    if (want >= 256) /* a smaller sample has too few rows to span the data */
        j.nav_stride = (j.n + want - 1) / want;
    j.G = j.P + (j.nav_stride ? 1 : 0);

    int rc = 0;
    j.centroids = malloc(sizeof(float) * j.P * j.dim);
    j.mean = malloc(sizeof(float) * j.dim);
    j.counts = calloc(j.G, sizeof(uint64_t));
    if (!j.centroids || !j.mean || !j.counts) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = phase_sample_pq(&j)) != 0 || (rc = phase_partition(&j)) != 0)
        goto out;
    r->partition_fill_min = 1.0;
    for (uint32_t k = 0; k < j.P; k++) {
        double fill = (double)j.counts[k] / (double)j.cap;
        r->partition_fill_min = fill < r->partition_fill_min ? fill : r->partition_fill_min;
        r->partition_fill_max = fill > r->partition_fill_max ? fill : r->partition_fill_max;
    }
    uint64_t t0 = nl_now_ns();
    for (uint32_t k = 0; k < j.G && !rc; k++)
        rc = build_partition(&j, k);
    r->build_s = secs_since(t0);
    r->navigation_points = j.nav_stride ? j.counts[j.P] : 0;
    if (rc)
        goto out;
    if ((rc = phase_merge_write(&j)) != 0)
        goto out;
    rc = relayout(&j, t);
out:
    nl_quant_destroy(j.pq);
    free(j.centroids);
    free(j.mean);
    free(j.counts);
    return rc;
}
