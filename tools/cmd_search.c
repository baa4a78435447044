/*
 * cmd_search.c — `nearline search`: opens every segment of a collection, runs the query
 * file through the disk search on N threads (each keeping several queries in flight on
 * its own io_uring), and prints one JSON object per list size L: queries, k, qps,
 * latency_us {mean, p50, p90, p99}, mean_ios, and recall_at_k when ground truth is given.
 * --out writes the result ids of the last L as ivecs.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nl_catalog.h"
#include "nl_dataset.h"
#include "nl_segment.h"
#include "nl_util.h"

typedef struct {
    nl_segment **segs;
    size_t nseg;
    uint32_t dim;
    const float *q;
    size_t nq;
    nl_seg_query_params p;
    uint32_t inflight;
    nl_seg_searcher ***searchers; /* [thread][segment] */
    uint32_t *ords;   /* scratch: nq * k per segment pass */
    float *dists;
    uint64_t *ids;    /* nq * k merged external ids */
    float *best;      /* nq * k merged distances */
    nl_query_stats *st, *st_seg;
    size_t chunk;
} run_ctx;

static int run_chunk(void *vctx, size_t task, unsigned th)
{
    run_ctx *c = vctx;
    size_t q0 = task * c->chunk, cnt = q0 + c->chunk <= c->nq ? c->chunk : c->nq - q0;
    uint32_t k = c->p.k;
    for (size_t i = q0; i < q0 + cnt; i++) {
        for (uint32_t j = 0; j < k; j++) {
            c->ids[i * k + j] = UINT64_MAX;
            c->best[i * k + j] = 3.4e38f;
        }
        memset(&c->st[i], 0, sizeof c->st[i]);
    }
    for (size_t s = 0; s < c->nseg; s++) {
        int rc = nl_seg_search_batch(c->searchers[th][s], c->q + q0 * c->dim, cnt, &c->p, c->ords + q0 * k,
                                     c->dists + q0 * k, c->st_seg + q0);
        if (rc)
            return rc;
        for (size_t i = q0; i < q0 + cnt; i++) {
            nl_query_stats *a = &c->st[i], *b = &c->st_seg[i];
            a->latency_ns += b->latency_ns;
            a->ios += b->ios;
            a->cache_hits += b->cache_hits;
            a->hops += b->hops;
            /* merge: insertion of this segment's k into the running top-k */
            for (uint32_t j = 0; j < k; j++) {
                uint32_t o = c->ords[i * k + j];
                if (o == UINT32_MAX)
                    break;
                float d = c->dists[i * k + j];
                if (d >= c->best[i * k + k - 1])
                    break;
                uint32_t pos = k - 1;
                while (pos > 0 && c->best[i * k + pos - 1] > d) {
                    c->best[i * k + pos] = c->best[i * k + pos - 1];
                    c->ids[i * k + pos] = c->ids[i * k + pos - 1];
                    pos--;
                }
                c->best[i * k + pos] = d;
                c->ids[i * k + pos] = nl_segment_id(c->segs[s], o);
            }
        }
    }
    return 0;
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
            "--L may be repeated or a comma list to sweep: one JSON object per L, one per line.\n");
    return f == stdout ? 0 : 2;
}

int cmd_search(int argc, char **argv)
{
    const char *C = "search";
    const char *db = NULL, *coll = NULL, *qpath = NULL, *out = NULL, *gtpath = NULL, *io_s = "auto";
    uint32_t k = 0, W = 4, threads = 0, inflight = 16, Ls[64], nL = 0;
    uint64_t cache = 0;
    int buffered = 0, have_k = 0;
    static const struct option opts[] = {
        {"db", 1, 0, 'd'}, {"collection", 1, 0, 'c'}, {"queries", 1, 0, 'q'}, {"k", 1, 0, 'k'}, {"L", 1, 0, 'L'},
        {"beam", 1, 0, 'W'}, {"threads", 1, 0, 't'}, {"inflight", 1, 0, 'i'}, {"cache-budget", 1, 0, 'C'},
        {"out", 1, 0, 'o'}, {"groundtruth", 1, 0, 'g'}, {"io", 1, 0, 'I'}, {"buffered", 0, 0, 'b'},
        {"filter", 1, 0, 'F'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
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
        case 'C': if (cli_size(C, "--cache-budget", optarg, &cache)) return 2; break;
        case 'o': out = optarg; break;
        case 'g': gtpath = optarg; break;
        case 'I': io_s = optarg; break;
        case 'b': buffered = 1; break;
        case 'F': cli_error(C, 0, "--filter is not supported yet (filtered search arrives with issue 6)"); return 2;
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    if (!db || !coll || !qpath || !have_k) {
        cli_error(C, 0, "--db, --collection, --queries and --k are required");
        return 2;
    }
    nl_io_mode iom = NL_IO_AUTO;
    if (!strcmp(io_s, "uring")) iom = NL_IO_URING;
    else if (!strcmp(io_s, "pread")) iom = NL_IO_PREAD;
    else if (strcmp(io_s, "auto")) {
        cli_error(C, 0, "--io must be auto, uring or pread");
        return 2;
    }
    if (nL == 0) Ls[nL++] = k > 100 ? k : 100;
    unsigned nthreads = threads ? threads : nl_cpu_count();

    int rc = 0, status = 1;
    char **paths = NULL;
    size_t nseg = 0, nq = 0;
    nl_segment **segs = NULL;
    float *queries = NULL;
    uint32_t *gt = NULL, gtk = 0;
    run_ctx c;
    memset(&c, 0, sizeof c);
    if ((rc = nl_catalog_list_segments(db, coll, &paths, &nseg)) != 0) {
        cli_error(C, rc, "cannot open collection '%s'", coll);
        goto out;
    }
    if (nseg == 0) {
        cli_error(C, 0, "collection '%s' has no segments", coll);
        goto out;
    }
    segs = calloc(nseg, sizeof *segs);
    uint64_t total = 0;
    nl_segment_info info0;
    uint64_t ram = 0, cached = 0, file_bytes = 0;
    int direct = 1;
    for (size_t s = 0; s < nseg; s++) {
        nl_segment_options so = {cache / nseg, iom, buffered};
        if ((rc = nl_segment_open(paths[s], &so, &segs[s])) != 0) {
            cli_error(C, rc, "cannot open segment");
            goto out;
        }
        nl_segment_info in;
        nl_segment_get_info(segs[s], &in);
        if (s == 0) info0 = in;
        else if (in.dim != info0.dim || in.metric != info0.metric) {
            cli_error(C, 0, "segments of '%s' disagree on dimension or metric", coll);
            goto out;
        }
        total += in.count;
        ram += in.ram_bytes;
        cached += in.cached_nodes;
        file_bytes += in.file_bytes;
        direct &= in.direct_io;
    }
    if (!direct)
        fprintf(stderr, "nearline search: warning: the filesystem refused O_DIRECT; reads go through the page cache\n");
    {
        nl_dataset *qd;
        if ((rc = nl_dataset_open(qpath, NL_FORMAT_AUTO, &qd)) != 0) {
            cli_error(C, rc, "cannot read queries");
            goto out;
        }
        if (nl_dataset_dim(qd) != info0.dim) {
            cli_error(C, 0, "queries in %s have dimension %u but collection '%s' has %u", qpath, nl_dataset_dim(qd),
                      coll, info0.dim);
            nl_dataset_close(qd);
            goto out;
        }
        nq = nl_dataset_count(qd);
        queries = malloc(sizeof(float) * nq * info0.dim);
        rc = queries ? nl_dataset_read_f32(qd, 0, nq, queries) : -12;
        nl_dataset_close(qd);
        if (rc) {
            cli_error(C, rc, "cannot read queries");
            goto out;
        }
    }
    if (k > total) {
        cli_error(C, 0, "k=%u is larger than the %llu points in '%s'", k, (unsigned long long)total, coll);
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
    uint32_t maxL = 0;
    for (uint32_t i = 0; i < nL; i++) {
        if (Ls[i] < k) Ls[i] = k;
        if (Ls[i] > maxL) maxL = Ls[i];
    }
    c.segs = segs;
    c.nseg = nseg;
    c.dim = info0.dim;
    c.q = queries;
    c.nq = nq;
    c.inflight = inflight;
    c.searchers = calloc(nthreads, sizeof *c.searchers);
    c.ords = malloc(sizeof(uint32_t) * nq * k);
    c.dists = malloc(sizeof(float) * nq * k);
    c.ids = malloc(sizeof(uint64_t) * nq * k);
    c.best = malloc(sizeof(float) * nq * k);
    c.st = malloc(sizeof(nl_query_stats) * nq);
    c.st_seg = malloc(sizeof(nl_query_stats) * nq);
    uint64_t *lat = malloc(sizeof(uint64_t) * nq);
    if (!c.searchers || !c.ords || !c.dists || !c.ids || !c.best || !c.st || !c.st_seg || !lat) {
        cli_error(C, -12, "out of memory");
        free(lat);
        goto out;
    }
    int warned = 0;
    for (unsigned t = 0; t < nthreads; t++) {
        c.searchers[t] = calloc(nseg, sizeof **c.searchers);
        for (size_t s = 0; s < nseg; s++) {
            if ((rc = nl_seg_searcher_create(segs[s], maxL, W, inflight, iom, &c.searchers[t][s])) != 0) {
                cli_error(C, rc, "cannot set up the search");
                free(lat);
                goto out;
            }
            if (!warned && nl_seg_searcher_io(c.searchers[t][s]) != NL_IO_URING) {
                fprintf(stderr, "nearline search: %s; reads use pread\n",
                        iom == NL_IO_PREAD ? "pread requested" : "warning: io_uring is unavailable");
                warned = 1;
            }
        }
    }
    const char *engine = nl_io_mode_name(nl_seg_searcher_io(c.searchers[0][0]));
    /* Chunks small enough to balance the threads, large enough to keep `inflight` busy. */
    c.chunk = (size_t)inflight * 8;
    for (uint32_t li = 0; li < nL; li++) {
        c.p = (nl_seg_query_params){k, Ls[li], W};
        uint64_t t0 = nl_now_ns();
        if ((rc = nl_parallel_for((nq + c.chunk - 1) / c.chunk, nthreads, run_chunk, &c)) != 0) {
            cli_error(C, rc, "search failed");
            free(lat);
            goto out;
        }
        double wall = (double)(nl_now_ns() - t0) / 1e9;
        double ios = 0, hits = 0, hops = 0, mean = 0;
        for (size_t i = 0; i < nq; i++) {
            lat[i] = c.st[i].latency_ns;
            ios += c.st[i].ios;
            hits += c.st[i].cache_hits;
            hops += c.st[i].hops;
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
        if (gt) {
            size_t hit = 0;
            for (size_t i = 0; i < nq; i++)
                for (uint32_t j = 0; j < k; j++) {
                    uint64_t id = c.ids[i * k + j];
                    if (id == UINT64_MAX) continue;
                    for (uint32_t g = 0; g < k; g++)
                        if ((uint64_t)gt[i * gtk + g] == id) { hit++; break; }
                }
            printf(",\"recall_at_k\":%.4f", (double)hit / ((double)nq * k));
        }
        printf(",\"segments\":%zu,\"points\":%llu,\"cached_nodes\":%llu,\"ram_at_open_bytes\":%llu,"
               "\"index_bytes\":%llu,\"io\":\"%s\",\"direct_io\":%s,\"peak_rss_bytes\":%llu}\n",
               nseg, (unsigned long long)total, (unsigned long long)cached, (unsigned long long)ram,
               (unsigned long long)file_bytes, engine, direct ? "true" : "false",
               (unsigned long long)nl_peak_rss_bytes());
        fflush(stdout);
    }
    free(lat);
    if (out) {
        int32_t *rows = malloc(sizeof(int32_t) * nq * k);
        for (size_t i = 0; i < nq * k; i++) {
            if (c.ids[i] != UINT64_MAX && c.ids[i] > INT32_MAX) {
                cli_error(C, 0, "--out: id %llu does not fit an ivecs file", (unsigned long long)c.ids[i]);
                free(rows);
                goto out;
            }
            rows[i] = c.ids[i] == UINT64_MAX ? -1 : (int32_t)c.ids[i];
        }
        rc = nl_dataset_write(out, NL_FORMAT_IVECS, rows, nq, k);
        free(rows);
        if (rc) {
            cli_error(C, rc, "cannot write %s", out);
            goto out;
        }
    }
    status = 0;
out:
    for (unsigned t = 0; c.searchers && t < nthreads; t++) {
        for (size_t s = 0; c.searchers[t] && s < nseg; s++)
            nl_seg_searcher_destroy(c.searchers[t][s]);
        free(c.searchers[t]);
    }
    free(c.searchers);
    free(c.ords);
    free(c.dists);
    free(c.ids);
    free(c.best);
    free(c.st);
    free(c.st_seg);
    for (size_t s = 0; segs && s < nseg; s++)
        nl_segment_close(segs[s]);
    free(segs);
    nl_string_list_free(paths, nseg);
    free(queries);
    free(gt);
    return status;
}
