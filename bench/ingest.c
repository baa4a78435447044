/*
 * ingest.c — the engine under sustained ingest (issue 4's benchmark driver; run by
 * bench/bench_ingest.py, which adds the reference system and writes the table).
 *
 * Writer threads upsert the input file in 100-point batches (disjoint ranges, so every
 * batch is new points) while one thread sends searches at a steady rate (open loop,
 * --search-qps, as a service's traffic would arrive); the maintenance thread
 * flushes and compacts as it would in production. Measured: points/s overall and per
 * 5-second window, batch latency percentiles, search latency during the ingest and
 * afterwards with nothing else running (idle), flushes and compactions with their
 * throughput, RSS sampled every second, and recall@10 of the final collection.
 *
 * Usage: nl_bench_ingest --input F.fbin --queries Q.fbin --groundtruth GT.ivecs --db DIR
 *        [--writers 2] [--batch 100] [--R 32] [--L 64] [--fresh N] [--search-L 64] [--search-qps 100]
 * Prints one JSON object.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "nearline.h"
#include "nl_files.h"
#include "nl_dataset.h"
#include "nl_util.h"

typedef struct {
    nl_collection *c;
    const float *x;
    size_t n;
    uint32_t dim, batch;
    atomic_size_t cursor, done;
    uint64_t *batch_lat;
    atomic_size_t nbatch;
    atomic_int stop_search;
    const float *q;
    size_t nq;
    uint32_t search_L;
    uint32_t search_qps; /* open loop: one query every 1/qps seconds */
    uint64_t *search_lat;
    size_t nsearch, search_cap;
    int err;
} ctx;

static void *writer(void *arg)
{
    ctx *c = arg;
    nl_point *p = malloc(sizeof *p * c->batch);
    for (;;) {
        size_t from = atomic_fetch_add(&c->cursor, c->batch);
        if (from >= c->n)
            break;
        size_t m = c->n - from < c->batch ? c->n - from : c->batch;
        for (size_t i = 0; i < m; i++)
            p[i] = (nl_point){.id = {.num = from + i}, .vector = c->x + (from + i) * c->dim, .dim = c->dim};
        uint64_t t0 = nl_now_ns();
        int rc = nl_collection_upsert(c->c, p, m);
        uint64_t t = nl_now_ns() - t0;
        if (rc) {
            fprintf(stderr, "nl_bench_ingest: upsert: %s\n", nl_errdetail());
            c->err = rc;
            break;
        }
        c->batch_lat[atomic_fetch_add(&c->nbatch, 1)] = t;
        atomic_fetch_add(&c->done, m);
    }
    free(p);
    return NULL;
}

static void *searcher(void *arg)
{
    ctx *c = arg;
    nl_hit h[10];
    nl_search_params sp = {.k = 10, .L = c->search_L};
    uint64_t period = 1000000000ull / (c->search_qps ? c->search_qps : 1), next = nl_now_ns();
    for (size_t i = 0; !atomic_load(&c->stop_search); i++) {
        next += period;
        uint64_t now = nl_now_ns();
        if (next > now) {
            struct timespec ts = {(time_t)((next - now) / 1000000000ull), (long)((next - now) % 1000000000ull)};
            nanosleep(&ts, NULL);
        } else {
            next = now; /* behind: do not burst to catch up */
        }
        uint64_t t0 = nl_now_ns();
        if (nl_collection_search(c->c, c->q + (i % c->nq) * c->dim, &sp, h, NULL) < 0)
            break;
        if (c->nsearch < c->search_cap)
            c->search_lat[c->nsearch++] = nl_now_ns() - t0;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(uint64_t *v, size_t n, double p)
{
    if (!n) return 0;
    qsort(v, n, sizeof *v, cmp_u64);
    size_t i = (size_t)(p * (double)(n - 1));
    return (double)v[i] / 1e3;
}

/* Ten seconds of the steady-rate searcher with nothing else running. */
static size_t idle_search(ctx *c, double *qps, double *p50, double *p99)
{
    pthread_t st;
    c->nsearch = 0;
    atomic_store(&c->stop_search, 0);
    uint64_t t = nl_now_ns();
    pthread_create(&st, NULL, searcher, c);
    sleep(10);
    atomic_store(&c->stop_search, 1);
    pthread_join(st, NULL);
    size_t n = c->nsearch;
    *qps = (double)n / ((double)(nl_now_ns() - t) / 1e9);
    *p50 = pct(c->search_lat, n, 0.5);
    *p99 = pct(c->search_lat, n, 0.99);
    return n;
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%lu %lu", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int load(const char *path, float **x, size_t *n, uint32_t *dim)
{
    void *d;
    nl_dtype t;
    int rc = nl_dataset_load(path, NL_FORMAT_AUTO, &d, n, dim, &t);
    if (rc) return rc;
    if (t == NL_DTYPE_F32) { *x = d; return 0; }
    *x = malloc(sizeof(float) * *n * *dim);
    nl_convert_to_f32(t, d, *x, (uint32_t)(*n * *dim));
    free(d);
    return 0;
}

int main(int argc, char **argv)
{
    const char *in = NULL, *qp = NULL, *gtp = NULL, *dbdir = NULL;
    uint32_t writers = 2, batch = 100, R = 32, L = 64, fresh = 100000, search_L = 64, search_qps = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--input")) in = argv[i + 1];
        else if (!strcmp(argv[i], "--queries")) qp = argv[i + 1];
        else if (!strcmp(argv[i], "--groundtruth")) gtp = argv[i + 1];
        else if (!strcmp(argv[i], "--db")) dbdir = argv[i + 1];
        else if (!strcmp(argv[i], "--writers")) writers = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) batch = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--R")) R = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--L")) L = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--fresh")) fresh = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--search-L")) search_L = (uint32_t)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--search-qps")) search_qps = (uint32_t)atoi(argv[i + 1]);
        else { fprintf(stderr, "nl_bench_ingest: unknown flag %s\n", argv[i]); return 2; }
    }
    if (!in || !qp || !dbdir || writers == 0 || batch == 0) {
        fprintf(stderr, "usage: nl_bench_ingest --input F --queries Q --db DIR [--groundtruth GT] [--writers N] ...\n");
        return 2;
    }
    ctx c;
    memset(&c, 0, sizeof c);
    float *x, *q;
    size_t nq;
    uint32_t qd;
    if (load(in, &x, &c.n, &c.dim) || load(qp, &q, &nq, &qd) || qd != c.dim) {
        fprintf(stderr, "nl_bench_ingest: cannot read inputs: %s\n", nl_errdetail());
        return 1;
    }
    c.x = x; c.q = q; c.nq = nq; c.batch = batch; c.search_L = search_L;
    c.search_qps = search_qps;
    c.batch_lat = malloc(sizeof(uint64_t) * (c.n / batch + writers + 1));
    c.search_cap = 10000000;
    c.search_lat = malloc(sizeof(uint64_t) * c.search_cap);
    nl_remove_tree(dbdir);
    nl_db *db;
    nl_db_options o = {0};
    nl_collection_config cc = {.dim = c.dim, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .R = R, .L = L,
                               .fresh_capacity = fresh};
    if (nl_db_open(dbdir, &o, &db) || nl_collection_create(db, "ingest", &cc) ||
        nl_collection_open(db, "ingest", &c.c)) {
        fprintf(stderr, "nl_bench_ingest: %s\n", nl_errdetail());
        return 1;
    }
    pthread_t wt[64], st;
    uint64_t t0 = nl_now_ns();
    for (uint32_t w = 0; w < writers && w < 64; w++) pthread_create(&wt[w], NULL, writer, &c);
    pthread_create(&st, NULL, searcher, &c);
    /* Once a second: RSS and progress; windows of 5 s for the sustained rate. */
    printf("{\"timeline\":[");
    uint64_t peak = 0, last_done = 0;
    double min_window = 1e18;
    int sec = 0;
    while (atomic_load(&c.done) < c.n && !c.err) {
        sleep(1);
        sec++;
        uint64_t r = rss_bytes();
        if (r > peak) peak = r;
        nl_collection_stats s;
        nl_collection_stats_get(c.c, &s);
        size_t done = atomic_load(&c.done);
        printf("%s{\"t\":%d,\"points\":%zu,\"rss_mib\":%.1f,\"fresh\":%llu,\"segments\":%llu}", sec > 1 ? "," : "", sec,
               done, (double)r / 1048576.0, (unsigned long long)s.fresh_points, (unsigned long long)s.segments);
        if (sec % 5 == 0) {
            double rate = (double)(done - last_done) / 5.0;
            if (done < c.n && rate < min_window) min_window = rate;
            last_done = done;
        }
    }
    for (uint32_t w = 0; w < writers && w < 64; w++) pthread_join(wt[w], NULL);
    double ingest_s = (double)(nl_now_ns() - t0) / 1e9;
    atomic_store(&c.stop_search, 1);
    pthread_join(st, NULL);
    if (c.err) return 1;
    size_t busy_n = c.nsearch;
    double busy_p50 = pct(c.search_lat, busy_n, 0.5), busy_p99 = pct(c.search_lat, busy_n, 0.99);
    /* Drain: flush, let background compaction settle, then the idle search. */
    uint64_t t1 = nl_now_ns();
    nl_collection_flush(c.c);
    double drain_s = (double)(nl_now_ns() - t1) / 1e9;
    nl_collection_stats s;
    nl_collection_stats_get(c.c, &s);
    uint64_t r = rss_bytes();
    if (r > peak) peak = r;
    double idle_qps, idle_p50, idle_p99;
    size_t idle_n = idle_search(&c, &idle_qps, &idle_p50, &idle_p99);
    /* Then the compaction the ingest deferred, in the foreground, until the policy has
     * nothing left to do; and the idle search again on the compacted collection. */
    uint64_t t3 = nl_now_ns();
    uint64_t merged = 0;
    for (int round = 0; round < 16; round++) {
        nl_compact_report cr;
        if (nl_collection_compact(c.c, NL_COMPACT_POLICY, 0, &cr) != 0) {
            fprintf(stderr, "nl_bench_ingest: compact: %s\n", nl_errdetail());
            return 1;
        }
        if (cr.segments_in == 0)
            break;
        merged += cr.points_in;
    }
    double compact_s = (double)(nl_now_ns() - t3) / 1e9;
    nl_collection_stats s2;
    nl_collection_stats_get(c.c, &s2);
    double comp_qps, comp_p50, comp_p99;
    size_t comp_n = idle_search(&c, &comp_qps, &comp_p50, &comp_p99);
    size_t nb = atomic_load(&c.nbatch);
    double b50 = pct(c.batch_lat, nb, 0.5), b99 = pct(c.batch_lat, nb, 0.99), bmax = pct(c.batch_lat, nb, 1.0);
    /* Recall@10 of the final collection at the search L. */
    double recall = -1;
    if (gtp) {
        void *g;
        size_t gn;
        uint32_t gk;
        nl_dtype gt;
        if (nl_dataset_load(gtp, NL_FORMAT_AUTO, &g, &gn, &gk, &gt) == 0 && gt == NL_DTYPE_I32 && gn >= nq && gk >= 10) {
            nl_hit *h = malloc(sizeof *h * nq * 10);
            uint32_t *cnt = malloc(sizeof(uint32_t) * nq);
            nl_search_params sp = {.k = 10, .L = search_L};
            size_t hit = 0;
            if (nl_collection_search_batch(c.c, q, nq, &sp, h, cnt, NULL) == 0)
                for (size_t i = 0; i < nq; i++)
                    for (uint32_t j = 0; j < cnt[i]; j++)
                        for (uint32_t k = 0; k < 10; k++)
                            if ((uint64_t)((int32_t *)g)[i * gk + k] == h[i * 10 + j].num) { hit++; break; }
            recall = (double)hit / (double)(nq * 10);
            free(h);
            free(cnt);
            free(g);
        }
    }
    printf("],\"points\":%zu,\"dim\":%u,\"writers\":%u,\"batch\":%u,\"R\":%u,\"L\":%u,\"fresh_capacity\":%u,"
           "\"ingest_seconds\":%.2f,\"points_per_s\":%.0f,\"min_5s_window_points_per_s\":%.0f,"
           "\"batch_latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"max\":%.3f},"
           "\"search_during_ingest\":{\"n\":%zu,\"p50_us\":%.1f,\"p99_us\":%.1f},"
           "\"search_idle\":{\"n\":%zu,\"qps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f},\"p99_ratio\":%.2f,"
           "\"compaction_after\":{\"seconds\":%.2f,\"points_in\":%llu,\"segments\":%llu},"
           "\"search_compacted\":{\"n\":%zu,\"qps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f},"
           "\"drain_flush_seconds\":%.2f,\"flushes\":%llu,\"flush_seconds\":%.2f,\"flush_points_per_s\":%.0f,"
           "\"compactions\":%llu,\"compaction_seconds\":%.2f,\"segments\":%llu,\"write_waits\":%llu,"
           "\"disk_bytes\":%llu,\"peak_rss_mib\":%.1f,\"input_mib\":%.1f,\"recall_at_10\":%.4f,\"search_L\":%u,\"search_qps\":%u}\n",
           c.n, c.dim, writers, batch, R, L, fresh, ingest_s, (double)c.n / ingest_s,
           min_window > 1e17 ? (double)c.n / ingest_s : min_window, b50 / 1e3, b99 / 1e3, bmax / 1e3, busy_n, busy_p50,
           busy_p99, idle_n, idle_qps, idle_p50, idle_p99, idle_p99 > 0 ? busy_p99 / idle_p99 : 0, compact_s,
           (unsigned long long)merged, (unsigned long long)s2.segments, comp_n, comp_qps, comp_p50, comp_p99,
           drain_s, (unsigned long long)s.flushes, s.flush_seconds,
           s.flush_seconds > 0 ? (double)(c.n - s.fresh_points) / s.flush_seconds : 0, (unsigned long long)s.compactions,
           s.compaction_seconds, (unsigned long long)s.segments, (unsigned long long)s.write_waits,
           (unsigned long long)s.disk_bytes, (double)peak / 1048576.0,
           (double)(c.n * c.dim * sizeof(float)) / 1048576.0, recall, search_L, search_qps);
    nl_collection_close(c.c);
    nl_db_close(db);
    free(x);
    free(q);
    free(c.batch_lat);
    free(c.search_lat);
    return 0;
}
