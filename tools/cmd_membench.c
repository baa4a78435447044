/*
 * cmd_membench.c — `nearline mem-bench`: builds an in-memory Vamana index over a vector
 * file, validates the graph, and sweeps the search list size L, printing one JSON object
 * with build time, peak RSS and, per L, recall@k, QPS and latency percentiles. It is the
 * in-memory half of bench/ and what `make run` shows before the disk index exists.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nl_dataset.h"
#include "nl_distance.h"
#include "nl_eval.h"
#include "nl_util.h"
#include "nl_vamana.h"

typedef struct {
    const nl_vamana *ix;
    const float *q;
    uint32_t dim, k, L;
    uint32_t *ids;
    uint64_t *lat_ns;
    uint64_t *hops;
    nl_vamana_searcher **s;
} sweep_ctx;

static int search_task(void *vctx, size_t qi, unsigned th)
{
    sweep_ctx *c = vctx;
    nl_search_stats st;
    uint64_t t0 = nl_now_ns();
    int rc = nl_vamana_search(c->s[th], c->q + qi * c->dim, c->k, c->L, c->ids + qi * c->k, NULL, &st);
    c->lat_ns[qi] = nl_now_ns() - t0;
    if (rc < 0)
        return rc;
    for (int j = rc; j < (int)c->k; j++)
        c->ids[qi * c->k + j] = UINT32_MAX;
    c->hops[qi] = st.dist_comps;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void progress_cb(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    (void)ctx;
    fprintf(stderr, "\r%s: %llu/%llu", phase, (unsigned long long)done, (unsigned long long)total);
    if (done == total)
        fputc('\n', stderr);
}

static int help(FILE *f)
{
    fprintf(f,
            "usage: nearline mem-bench --base FILE --queries FILE [--groundtruth FILE.ivecs]\n"
            "         [--format F] [--metric l2|ip|cosine] [--R N] [--L N] [--alpha X]\n"
            "         [--threads N] [--search-L 10,20,...] [--k K] [--repeat N] [--single-pass]\n"
            "         [--max-base N] [--progress]\n");
    return f == stdout ? 0 : 2;
}

int cmd_membench(int argc, char **argv)
{
    const char *C = "mem-bench";
    const char *base_path = NULL, *q_path = NULL, *gt_path = NULL, *metric_s = "l2", *fmt_s = NULL;
    nl_vamana_params vp;
    nl_vamana_params_default(&vp);
    uint32_t threads = 0, k = 10, repeat = 1, Ls[64], nL = 0;
    uint64_t max_base = 0;
    int progress = 0;
    static const struct option opts[] = {
        {"base", 1, 0, 'b'}, {"queries", 1, 0, 'q'}, {"groundtruth", 1, 0, 'g'}, {"metric", 1, 0, 'm'},
        {"format", 1, 0, 'f'}, {"R", 1, 0, 'R'}, {"L", 1, 0, 'L'}, {"alpha", 1, 0, 'a'},
        {"threads", 1, 0, 't'}, {"search-L", 1, 0, 's'}, {"k", 1, 0, 'k'}, {"repeat", 1, 0, 'r'},
        {"single-pass", 0, 0, '1'}, {"max-base", 1, 0, 'x'}, {"progress", 0, 0, 'p'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'b': base_path = optarg; break;
        case 'q': q_path = optarg; break;
        case 'g': gt_path = optarg; break;
        case 'm': metric_s = optarg; break;
        case 'f': fmt_s = optarg; break;
        case 'R': if (cli_u32(C, "--R", optarg, 1, 1024, &vp.R)) return 2; break;
        case 'L': if (cli_u32(C, "--L", optarg, 1, 100000, &vp.L)) return 2; break;
        case 'a': if (cli_float(C, "--alpha", optarg, 1.0f, 4.0f, &vp.alpha)) return 2; break;
        case 't': if (cli_u32(C, "--threads", optarg, 0, 1024, &threads)) return 2; break;
        case 's': if (cli_u32_list(C, "--search-L", optarg, 1, 100000, Ls, &nL, 64)) return 2; break;
        case 'k': if (cli_u32(C, "--k", optarg, 1, 10000, &k)) return 2; break;
        case 'r': if (cli_u32(C, "--repeat", optarg, 1, 100, &repeat)) return 2; break;
        case '1': vp.single_pass = 1; break;
        case 'x': if (cli_u64(C, "--max-base", optarg, 1, UINT64_MAX, &max_base)) return 2; break;
        case 'p': progress = 1; break;
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    if (!base_path || !q_path) {
        cli_error(C, 0, "--base and --queries are required");
        return 2;
    }
    if (nL == 0) {
        static const uint32_t dflt[] = {10, 20, 30, 40, 60, 80, 100, 150, 200};
        for (nL = 0; nL < sizeof dflt / sizeof dflt[0]; nL++) Ls[nL] = dflt[nL];
    }
    nl_metric metric;
    nl_format fmt = NL_FORMAT_AUTO;
    int rc;
    if ((rc = nl_metric_parse(metric_s, &metric)) || (fmt_s && (rc = nl_format_parse(fmt_s, &fmt)))) {
        cli_error(C, rc, "bad option");
        return 2;
    }
    vp.threads = threads;
    void *base = NULL;
    float *queries = NULL;
    uint32_t *gt = NULL, *ids = NULL;
    uint64_t *lat = NULL, *hops = NULL;
    nl_vamana *ix = NULL;
    nl_vamana_searcher **s = NULL;
    unsigned nthreads = threads ? threads : nl_cpu_count();
    size_t n, nq;
    uint32_t dim, qdim, gtk = 0;
    nl_dtype dtype;
    if ((rc = nl_dataset_load(base_path, fmt, &base, &n, &dim, &dtype))) {
        cli_error(C, rc, "cannot load base");
        goto out;
    }
    if (max_base && max_base < n)
        n = max_base;
    {
        nl_dataset *qd;
        if ((rc = nl_dataset_open(q_path, NL_FORMAT_AUTO, &qd))) {
            cli_error(C, rc, "cannot open queries");
            goto out;
        }
        nq = nl_dataset_count(qd);
        qdim = nl_dataset_dim(qd);
        queries = malloc(sizeof(float) * nq * qdim);
        rc = queries ? nl_dataset_read_f32(qd, 0, nq, queries) : -12;
        nl_dataset_close(qd);
        if (rc) {
            cli_error(C, rc, "cannot read queries");
            goto out;
        }
        if (qdim != dim) {
            rc = NL_EDIM;
            cli_error(C, 0, "queries have dimension %u, base has %u", qdim, dim);
            goto out;
        }
    }
    if (k > n) {
        rc = NL_EINVAL;
        cli_error(C, 0, "k=%u exceeds the %zu base vectors", k, n);
        goto out;
    }
    nl_vecset vs = {base, n, dim, dtype};
    if (gt_path && !max_base) {
        size_t gn;
        uint32_t *g32;
        nl_dtype gtype;
        if ((rc = nl_dataset_load(gt_path, NL_FORMAT_AUTO, (void **)&g32, &gn, &gtk, &gtype))) {
            cli_error(C, rc, "cannot load ground truth");
            goto out;
        }
        gt = g32;
        if (gn < nq || gtk < k) {
            rc = NL_EDIM;
            cli_error(C, 0, "ground truth has %zu rows of %u, need %zu of at least %u", gn, gtk, nq, k);
            goto out;
        }
    } else {
        gtk = k;
        gt = malloc(sizeof(uint32_t) * nq * k);
        if (!gt || (rc = nl_groundtruth_exact(&vs, metric, queries, nq, k, nthreads, gt, NULL))) {
            cli_error(C, rc, "ground truth");
            goto out;
        }
    }
    uint64_t t0 = nl_now_ns();
    if ((rc = nl_vamana_build(&vs, metric, &vp, progress ? progress_cb : NULL, NULL, &ix))) {
        cli_error(C, rc, "build failed");
        goto out;
    }
    double build_s = (double)(nl_now_ns() - t0) / 1e9;
    nl_graph_report rep;
    int valid = nl_graph_validate(nl_vamana_graph(ix), nl_vamana_medoid(ix), &rep);
    uint32_t maxL = 0;
    for (uint32_t i = 0; i < nL; i++)
        if (Ls[i] > maxL) maxL = Ls[i];
    if (maxL < k) maxL = k;
    s = calloc(nthreads, sizeof *s);
    ids = malloc(sizeof(uint32_t) * nq * k);
    lat = malloc(sizeof(uint64_t) * nq);
    hops = malloc(sizeof(uint64_t) * nq);
    if (!s || !ids || !lat || !hops) {
        rc = -12;
        cli_error(C, rc, "out of memory");
        goto out;
    }
    for (unsigned t = 0; t < nthreads; t++)
        if ((rc = nl_vamana_searcher_create(ix, maxL, &s[t]))) {
            cli_error(C, rc, "searcher");
            goto out;
        }
    printf("{\"base\":\"%s\",\"n\":%zu,\"dim\":%u,\"dtype\":\"%s\",\"metric\":\"%s\",\"isa\":\"%s\","
           "\"threads\":%u,\"R\":%u,\"build_L\":%u,\"alpha\":%.2f,\"passes\":%d,\"build_s\":%.3f,"
           "\"graph\":{\"valid\":%s,\"mean_degree\":%.2f,\"max_degree\":%u,\"unreachable\":%zu},\"results\":[",
           base_path, n, dim, nl_dtype_name(dtype), nl_metric_name(metric), nl_isa_name(nl_isa_best()),
           nthreads, vp.R, vp.L, (double)vp.alpha, vp.single_pass ? 1 : 2, build_s, valid == 0 ? "true" : "false",
           rep.mean_degree, rep.max_degree, rep.unreachable);
    for (uint32_t li = 0; li < nL; li++) {
        uint32_t L = Ls[li] < k ? k : Ls[li];
        sweep_ctx c = {ix, queries, dim, k, L, ids, lat, hops, s};
        double best_qps = 0;
        for (uint32_t r = 0; r < repeat; r++) {
            uint64_t w0 = nl_now_ns();
            if ((rc = nl_parallel_for(nq, nthreads, search_task, &c))) {
                cli_error(C, rc, "search");
                goto out;
            }
            double qps = (double)nq / ((double)(nl_now_ns() - w0) / 1e9);
            if (qps > best_qps) best_qps = qps;
        }
        double recall = nl_recall_at_k(ids, nq, k, gt, gtk, k);
        double mean = 0, comps = 0;
        for (size_t i = 0; i < nq; i++) {
            mean += (double)lat[i];
            comps += (double)hops[i];
        }
        qsort(lat, nq, sizeof *lat, cmp_u64);
        printf("%s{\"L\":%u,\"recall_at_k\":%.4f,\"qps\":%.1f,\"latency_us\":{\"mean\":%.1f,\"p50\":%.1f,"
               "\"p99\":%.1f},\"mean_dist_comps\":%.1f}",
               li ? "," : "", L, recall, best_qps, mean / nq / 1e3, lat[nq / 2] / 1e3,
               lat[(size_t)(nq * 0.99)] / 1e3, comps / nq);
    }
    printf("],\"k\":%u,\"queries\":%zu,\"peak_rss_bytes\":%llu}\n", k, nq,
           (unsigned long long)nl_peak_rss_bytes());
    rc = valid;
    if (valid)
        cli_error(C, valid, "graph validation failed");
out:
    for (unsigned t = 0; s && t < nthreads; t++)
        nl_vamana_searcher_destroy(s[t]);
    free(s);
    nl_vamana_destroy(ix);
    free(base);
    free(queries);
    free(gt);
    free(ids);
    free(lat);
    free(hops);
    return rc ? 1 : 0;
}
