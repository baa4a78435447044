/*
 * cmd_search.c — `nearline search`: opens a collection through the engine (nearline.h),
 * runs the query file on N threads, each passing batches to nl_collection_search_batch
 * (whose segment reads for different queries overlap on the thread's io_uring), and
 * prints one JSON object per list size L: queries, k, qps, latency_us {mean, p50, p90,
 * p99}, mean_ios, and recall_at_k when ground truth is given. --out writes the result
 * ids of the last L as ivecs.
 *
 * Filters: --filter JSON applies one filter to every query, --filters FILE.jsonl one per
 * query (line i for query i). Ground truth for a filtered run is the filtered truth
 * (`nearline groundtruth --metadata ... --filter ...`), rows padded with -1 where fewer
 * than k points match; recall counts against min(k, matching points) per query, and the
 * output adds how many queries came back short of min(k, matches) and the plans used.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nearline.h"
#include "nl_dataset.h"
#include "nl_util.h"

typedef struct {
    nl_collection *coll;
    uint32_t dim;
    const float *q;
    size_t nq;
    nl_search_params p;
    uint64_t *ids;    /* nq * k result ids; UINT64_MAX past the found ones, or for a string id */
    int *has_str;     /* set when a result had a string id (not representable in ivecs) */
    nl_query_stats *st;
    uint32_t *found;  /* results per query */
    size_t chunk;
} run_ctx;

/* nl_hit carries a 256-byte string id: results are searched a chunk at a time into
 * scratch and kept as u64 ids, so memory stays proportional to the chunk. */
static int run_chunk(void *vctx, size_t task, unsigned th)
{
    (void)th;
    run_ctx *c = vctx;
    size_t q0 = task * c->chunk, cnt = q0 + c->chunk <= c->nq ? c->chunk : c->nq - q0;
    uint32_t k = c->p.k;
    nl_hit *hits = malloc(sizeof *hits * cnt * k);
    uint32_t *counts = malloc(sizeof *counts * cnt);
    nl_search_params p = c->p;
    if (p.filters)
        p.filters += q0; /* per-query filters follow their queries */
    int rc = hits && counts ? nl_collection_search_batch(c->coll, c->q + q0 * c->dim, cnt, &p, hits, counts,
                                                         c->st + q0)
                            : -12;
    for (size_t i = 0; rc == 0 && i < cnt; i++)
        c->found[q0 + i] = counts[i];
    for (size_t i = 0; rc == 0 && i < cnt; i++)
        for (uint32_t j = 0; j < k; j++) {
            const nl_hit *h = &hits[i * k + j];
            uint64_t id = UINT64_MAX;
            if (j < counts[i]) {
                if (h->is_str)
                    *c->has_str = 1;
                else
                    id = h->num;
            }
            c->ids[(q0 + i) * k + j] = id;
        }
    free(hits);
    free(counts);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int help(FILE *f)
{
    fprintf(f,
            "usage: nearline search --db DIR --collection NAME --queries FILE --k K [--L N]...\n"
            "         [--beam W] [--threads N] [--inflight Q] [--cache-budget SIZE]\n"
            "         [--out FILE.ivecs] [--groundtruth FILE.ivecs] [--io auto|uring|pread] [--buffered]\n"
            "         [--filter JSON | --filters FILE.jsonl] [--plan auto|graph|scan] [--bound EPS]\n"
            "         [--sector on|off] [--seeds on|off] [--segments joint|each]\n"
            "--L may be repeated or a comma list to sweep: one JSON object per L, one per line.\n"
            "--bound: RaBitQ segments skip reading candidates whose error bound (EPS standard\n"
            "deviations, default 1.9) keeps them out of the top k; 0 = never skip.\n"
            "--sector: segments in block layout expand the other records of each sector read\n"
            "where they are near enough (on, the default); off uses only the record asked for.\n"
            "--seeds: RaBitQ segments start each walk also from the members of the centroids\n"
            "nearest the query (on, the default; their table is paid from --cache-budget\n"
            "first); off starts from the medoid alone.\n"
            "--segments: a shard of several segments is walked as one beam with one list of L\n"
            "(joint, the default), or each segment with its own list (each, the rule before).\n");
    return f == stdout ? 0 : 2;
}

int cmd_search(int argc, char **argv)
{
    const char *C = "search";
    const char *db = NULL, *coll = NULL, *qpath = NULL, *out = NULL, *gtpath = NULL, *io_s = "auto";
    uint32_t k = 0, W = 4, threads = 0, inflight = 16, Ls[64], nL = 0;
    uint64_t cache = 0;
    int have_cache = 0;
    int buffered = 0, have_k = 0;
    static const struct option opts[] = {
        {"db", 1, 0, 'd'}, {"collection", 1, 0, 'c'}, {"queries", 1, 0, 'q'}, {"k", 1, 0, 'k'}, {"L", 1, 0, 'L'},
        {"beam", 1, 0, 'W'}, {"threads", 1, 0, 't'}, {"inflight", 1, 0, 'i'}, {"cache-budget", 1, 0, 'C'},
        {"out", 1, 0, 'o'}, {"groundtruth", 1, 0, 'g'}, {"io", 1, 0, 'I'}, {"buffered", 0, 0, 'b'},
        {"filter", 1, 0, 'F'}, {"filters", 1, 0, 'G'}, {"plan", 1, 0, 'P'}, {"bound", 1, 0, 'B'}, {"sector", 1, 0, 'S'},
        {"seeds", 1, 0, 'E'}, {"segments", 1, 0, 'M'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    uint32_t plan = 0;
    float bound = 0.0f;
    int sector = 0, seeds = 0, segments = 0;
    const char *filter_s = NULL, *filters_path = NULL;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': db = optarg; break;
        case 'c': coll = optarg; break;
        case 'q': qpath = optarg; break;
        case 'k': if (cli_u32(C, "--k", optarg, 1, 10000, &k)) return 2; have_k = 1; break;
        case 'L': if (cli_u32_list(C, "--L", optarg, 1, 100000, Ls, &nL, 64)) return 2; break;
        case 'W': if (cli_u32(C, "--beam", optarg, 1, 64, &W)) return 2; break;
        case 't': if (cli_u32(C, "--threads", optarg, 0, 1024, &threads)) return 2; break;
        case 'i': if (cli_u32(C, "--inflight", optarg, 1, 256, &inflight)) return 2; break;
        case 'C': if (cli_size(C, "--cache-budget", optarg, &cache)) return 2; have_cache = 1; break;
        case 'o': out = optarg; break;
        case 'g': gtpath = optarg; break;
        case 'I': io_s = optarg; break;
        case 'b': buffered = 1; break;
        case 'F': filter_s = optarg; break;
        case 'G': filters_path = optarg; break;
        case 'P':
            if (!strcmp(optarg, "graph")) plan = NL_PLAN_GRAPH;
            else if (!strcmp(optarg, "scan")) plan = NL_PLAN_SCAN;
            else if (strcmp(optarg, "auto")) { cli_error(C, 0, "--plan must be auto, graph or scan"); return 2; }
            break;
        case 'S':
            if (!strcmp(optarg, "on")) sector = 0;
            else if (!strcmp(optarg, "off")) sector = -1;
            else { cli_error(C, 0, "--sector must be on or off"); return 2; }
            break;
        case 'E':
            if (!strcmp(optarg, "on")) seeds = 0;
            else if (!strcmp(optarg, "off")) seeds = -1;
            else { cli_error(C, 0, "--seeds must be on or off"); return 2; }
            break;
        case 'M':
            if (!strcmp(optarg, "joint")) segments = 0;
            else if (!strcmp(optarg, "each")) segments = -1;
            else { cli_error(C, 0, "--segments must be joint or each"); return 2; }
            break;
        case 'B': {
            char *end;
            double b = strtod(optarg, &end);
            if (*end || !(b >= 0.0 && b <= 100.0)) {
                cli_error(C, 0, "--bound must be a number in 0..100");
                return 2;
            }
            bound = b == 0.0 ? -1.0f : (float)b; /* the engine's 0 means its default */
            break;
        }
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    if (!db || !coll || !qpath || !have_k) {
        cli_error(C, 0, "--db, --collection, --queries and --k are required");
        return 2;
    }
    if (filter_s && filters_path) {
        cli_error(C, 0, "--filter and --filters exclude each other");
        return 2;
    }
    nl_filter *filter = NULL, **filters = NULL;
    size_t nfilters = 0;
    if (filter_s && cli_parse_filter(C, filter_s, &filter))
        return 2;
    if (filters_path && cli_load_filters(C, filters_path, &filters, &nfilters)) {
        nl_filter_destroy(filter);
        return 2;
    }
    /* auto and uring both read through io_uring where the kernel has it (the engine's
     * choice, nl_db_options.io_pread); pread forces plain reads */
    int io_pread = !strcmp(io_s, "pread");
    if (!io_pread && strcmp(io_s, "uring") && strcmp(io_s, "auto")) {
        cli_error(C, 0, "--io must be auto, uring or pread");
        return 2;
    }
    if (nL == 0) Ls[nL++] = k > 100 ? k : 100;
    unsigned nthreads = threads ? threads : nl_cpu_count();

    int rc = 0, status = 1;
    size_t nq = 0;
    float *queries = NULL;
    uint32_t *gt = NULL, gtk = 0;
    uint64_t *lat = NULL;
    nl_db *dbh = NULL;
    run_ctx c;
    memset(&c, 0, sizeof c);
    nl_db_options dopt;
    memset(&dopt, 0, sizeof dopt);
    /* Unset: the engine's default; 0: no cache (1 byte holds no node). */
    dopt.cache_budget = !have_cache ? 0 : cache ? cache : 1;
    dopt.search_inflight = inflight;
    dopt.io_pread = io_pread;
    dopt.buffered_io = buffered;
    dopt.no_background = 1; /* a read-only run: nothing to flush or compact */
    if ((rc = nl_db_open(db, &dopt, &dbh)) != 0) {
        cli_error(C, rc, "cannot open database %s", db);
        goto out;
    }
    if ((rc = nl_collection_open(dbh, coll, &c.coll)) != 0) {
        cli_error(C, rc, "cannot open collection '%s'", coll);
        goto out;
    }
    nl_collection_config cfg;
    nl_collection_describe(c.coll, &cfg);
    nl_collection_stats cst;
    nl_collection_stats_get(c.coll, &cst);
    if (!cst.direct_io)
        fprintf(stderr, "nearline search: warning: the filesystem refused O_DIRECT; reads go through the page cache\n");
    {
        nl_dataset *qd;
        if ((rc = nl_dataset_open(qpath, NL_FORMAT_AUTO, &qd)) != 0) {
            cli_error(C, rc, "cannot read queries");
            goto out;
        }
        if (nl_dataset_dim(qd) != cfg.dim) {
            cli_error(C, 0, "queries in %s have dimension %u but collection '%s' has %u", qpath, nl_dataset_dim(qd),
                      coll, cfg.dim);
            nl_dataset_close(qd);
            goto out;
        }
        nq = nl_dataset_count(qd);
        queries = malloc(sizeof(float) * nq * cfg.dim);
        rc = queries ? nl_dataset_read_f32(qd, 0, nq, queries) : -12;
        nl_dataset_close(qd);
        if (rc) {
            cli_error(C, rc, "cannot read queries");
            goto out;
        }
    }
    if (filters && nfilters != nq) {
        cli_error(C, 0, "--filters %s has %zu lines but %s has %zu queries", filters_path, nfilters, qpath, nq);
        goto out;
    }
    if (k > cst.points) {
        cli_error(C, 0, "k=%u is larger than the %llu points in '%s'", k, (unsigned long long)cst.points, coll);
        goto out;
    }
    if (k > NL_MAX_K) {
        cli_error(C, 0, "k=%u is over the limit of %d", k, NL_MAX_K);
        goto out;
    }
    if (gtpath) {
        size_t gn;
        nl_dtype gtt;
        if ((rc = nl_dataset_load(gtpath, NL_FORMAT_AUTO, (void **)&gt, &gn, &gtk, &gtt)) != 0) {
            cli_error(C, rc, "cannot read ground truth");
            goto out;
        }
        if (gtt != NL_DTYPE_I32 || gn < nq || gtk < k) {
            cli_error(C, 0, "ground truth %s has %zu rows of %u ids; need an ivecs file with %zu rows of >= %u", gtpath,
                      gn, gtk, nq, k);
            goto out;
        }
    }
    for (uint32_t i = 0; i < nL; i++) {
        if (Ls[i] < k) Ls[i] = k;
        if (Ls[i] > NL_MAX_K) {
            cli_error(C, 0, "--L %u is over the limit of %d", Ls[i], NL_MAX_K);
            goto out;
        }
    }
    c.dim = cfg.dim;
    c.q = queries;
    c.nq = nq;
    int has_str = 0;
    c.has_str = &has_str;
    c.ids = malloc(sizeof(uint64_t) * nq * k);
    c.st = malloc(sizeof(nl_query_stats) * nq);
    c.found = malloc(sizeof(uint32_t) * nq);
    lat = malloc(sizeof(uint64_t) * nq);
    if (!c.ids || !c.st || !c.found || !lat) {
        cli_error(C, -12, "out of memory");
        goto out;
    }
    /* Chunks small enough to balance the threads, large enough to keep `inflight` busy. */
    c.chunk = (size_t)inflight * 8;
    for (uint32_t li = 0; li < nL; li++) {
        c.p = (nl_search_params){k, Ls[li], W, NULL, NULL, filter, (const nl_filter *const *)filters, plan, bound,
                                 sector, seeds, segments};
        uint64_t t0 = nl_now_ns();
        if ((rc = nl_parallel_for((nq + c.chunk - 1) / c.chunk, nthreads, run_chunk, &c)) != 0) {
            cli_error(C, rc, "search failed");
            goto out;
        }
        double wall = (double)(nl_now_ns() - t0) / 1e9;
        double ios = 0, hits = 0, hops = 0, mean = 0, matches = 0, scanned = 0, skips = 0, sexp = 0;
        size_t plans[4] = {0, 0, 0, 0}, short_q = 0;
        for (size_t i = 0; i < nq; i++) {
            matches += (double)c.st[i].matches;
            scanned += c.st[i].scanned;
            for (int b = 0; b < 4; b++)
                plans[b] += (c.st[i].filter_plan >> b) & 1;
            if (c.found[i] < (c.st[i].matches < k ? c.st[i].matches : k))
                short_q++;
            lat[i] = c.st[i].latency_ns;
            ios += c.st[i].ios;
            hits += c.st[i].cache_hits;
            hops += c.st[i].hops;
            skips += c.st[i].bound_skips;
            sexp += c.st[i].sector_expands;
            mean += (double)lat[i];
        }
        qsort(lat, nq, sizeof *lat, cmp_u64);
        printf("{\"collection\":\"%s\",\"queries\":%zu,\"k\":%u,\"L\":%u,\"beam\":%u,\"threads\":%u,\"inflight\":%u,"
               "\"qps\":%.1f,\"latency_us\":{\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f},"
               "\"mean_ios\":%.2f,\"mean_hops\":%.2f,\"cache_hit_rate\":%.4f",
               coll, nq, k, Ls[li], W, nthreads, inflight, (double)nq / wall, mean / (double)nq / 1e3,
               (double)lat[nq / 2] / 1e3, (double)lat[(size_t)((double)nq * 0.9)] / 1e3,
               (double)lat[(size_t)((double)nq * 0.99)] / 1e3, ios / (double)nq, hops / (double)nq,
               hops > 0 ? hits / hops : 0.0);
        /* Queries whose first pass came back short of min(k, live) (deleted points crowding
         * them) and were searched again: with a wider list, and exhaustively. */
        printf(",\"searched_again\":%zu,\"mean_bound_skips\":%.2f,\"mean_sector_expands\":%.2f", plans[3],
               skips / (double)nq, sexp / (double)nq);
        if (!filter && !filters)
            printf(",\"exhaustive\":%zu", plans[2]);
        if (filter || filters)
            printf(",\"filtered\":true,\"mean_matches\":%.1f,\"mean_scanned\":%.1f,\"short_queries\":%zu,"
                   "\"plans\":{\"graph\":%zu,\"scan\":%zu,\"fallback\":%zu}",
                   matches / (double)nq, scanned / (double)nq, short_q, plans[0], plans[1], plans[2]);
        if (gt) {
            /* Truth rows may be padded with -1 (filtered truth with fewer than k matches):
             * each query counts against the true neighbours it has. */
            size_t hit = 0, want = 0;
            for (size_t i = 0; i < nq; i++) {
                for (uint32_t g = 0; g < k; g++)
                    want += (int32_t)gt[i * gtk + g] >= 0;
                for (uint32_t j = 0; j < k; j++) {
                    uint64_t id = c.ids[i * k + j];
                    if (id == UINT64_MAX) continue;
                    for (uint32_t g = 0; g < k; g++)
                        if ((int32_t)gt[i * gtk + g] >= 0 && (uint64_t)gt[i * gtk + g] == id) { hit++; break; }
                }
            }
            printf(",\"recall_at_k\":%.4f", want ? (double)hit / (double)want : 1.0);
        }
        printf(",\"segments\":%llu,\"points\":%llu,\"fresh_points\":%llu,\"cached_nodes\":%llu,\"seed_members\":%llu,"
               "\"ram_at_open_bytes\":%llu,\"index_bytes\":%llu,\"io\":\"%s\",\"direct_io\":%s,\"peak_rss_bytes\":%llu}\n",
               (unsigned long long)cst.segments, (unsigned long long)cst.points,
               (unsigned long long)cst.fresh_points, (unsigned long long)cst.cached_nodes,
               (unsigned long long)cst.seed_members, (unsigned long long)cst.ram_bytes, (unsigned long long)cst.disk_bytes,
               io_pread ? "pread" : "uring", cst.direct_io ? "true" : "false",
               (unsigned long long)nl_peak_rss_bytes());
        fflush(stdout);
    }
    if (out) {
        int32_t *rows = malloc(sizeof(int32_t) * nq * k);
        if (has_str) {
            cli_error(C, 0, "--out: the collection has string ids, which do not fit an ivecs file");
            free(rows);
            goto out;
        }
        for (size_t i = 0; rows && i < nq * k; i++) {
            if (c.ids[i] != UINT64_MAX && c.ids[i] > INT32_MAX) {
                cli_error(C, 0, "--out: id %llu does not fit an ivecs file", (unsigned long long)c.ids[i]);
                free(rows);
                goto out;
            }
            rows[i] = c.ids[i] == UINT64_MAX ? -1 : (int32_t)c.ids[i];
        }
        rc = rows ? nl_dataset_write(out, NL_FORMAT_IVECS, rows, nq, k) : -12;
        free(rows);
        if (rc) {
            cli_error(C, rc, "cannot write %s", out);
            goto out;
        }
    }
    status = 0;
out:
    free(lat);
    free(c.ids);
    free(c.st);
    free(c.found);
    nl_collection_close(c.coll);
    nl_db_close(dbh);
    free(queries);
    free(gt);
    nl_filter_destroy(filter);
    cli_free_filters(filters, nfilters);
    return status;
}
