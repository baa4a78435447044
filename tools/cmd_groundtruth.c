/*
 * cmd_groundtruth.c — `nearline groundtruth`: exact k nearest neighbours of every query
 * by brute force (ties to the lower row), written as ivecs. For making test and
 * benchmark subsets of real data, or checking someone else's ground truth.
 *
 * Filtered truth: with --metadata FILE.jsonl (line i = row i's object) and --filter or
 * --filters, only rows the filter accepts are candidates, decided by the reference
 * evaluator nl_filter_match (not by the engine's index: this is what the index is
 * checked against). Rows with fewer than k matches are padded with -1.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "nl_dataset.h"
#include "nl_distance.h"
#include "nl_eval.h"
#include "nl_util.h"

typedef struct {
    const nl_vecset *vs;
    nl_dist_fn dist;
    const float *q;
    size_t nq;
    uint32_t k;
    const uint64_t *masks; /* per distinct filter: (n + 63) / 64 words */
    const uint32_t *qmask; /* query -> its mask */
    size_t words;
    int32_t *out;
} fgt_ctx;

static int fgt_task(void *vctx, size_t qi, unsigned th)
{
    (void)th;
    fgt_ctx *c = vctx;
    const uint64_t *m = c->masks + (size_t)c->qmask[qi] * c->words;
    float *d = malloc(sizeof(float) * c->k);
    if (!d)
        return -12;
    int32_t *ids = c->out + qi * c->k;
    uint32_t n = 0;
    const float *q = c->q + qi * c->vs->dim;
    for (size_t r = 0; r < c->vs->n; r++) {
        if (!((m[r >> 6] >> (r & 63)) & 1))
            continue;
        float x = c->dist(q, nl_vecset_row(c->vs, r), c->vs->dim);
        if (n == c->k && x >= d[n - 1])
            continue; /* ties keep the lower row */
        uint32_t i = n < c->k ? n++ : c->k - 1;
        while (i > 0 && d[i - 1] > x) {
            d[i] = d[i - 1];
            ids[i] = ids[i - 1];
            i--;
        }
        d[i] = x;
        ids[i] = (int32_t)r;
    }
    for (uint32_t i = n; i < c->k; i++)
        ids[i] = -1;
    free(d);
    return 0;
}

/* Masks of the rows each filter accepts (filters deduplicated by canonical text). */
static int build_masks(const char *C, const char *meta_path, size_t n, nl_filter **f, size_t nf, size_t nq,
                       uint64_t **masks, uint32_t **qmask, size_t *words)
{
    FILE *mf = fopen(meta_path, "r");
    if (!mf) {
        cli_error(C, 0, "cannot open --metadata %s", meta_path);
        return 1;
    }
    json_t **rows = calloc(n ? n : 1, sizeof *rows);
    char *line = NULL;
    size_t cap = 0, r = 0;
    int status = 0;
    ssize_t len;
    while (rows && r < n && (len = getline(&line, &cap, mf)) >= 0) {
        json_error_t err;
        rows[r] = json_loadb(line, (size_t)len, 0, &err);
        if (!rows[r] || !json_is_object(rows[r])) {
            cli_error(C, 0, "--metadata %s line %zu is not a JSON object", meta_path, r + 1);
            status = 1;
            break;
        }
        r++;
    }
    free(line);
    fclose(mf);
    if (!status && r < n) {
        cli_error(C, 0, "--metadata %s has %zu lines for %zu rows", meta_path, r, n);
        status = 1;
    }
    *words = (n + 63) / 64;
    size_t distinct = 0;
    uint32_t *fmap = calloc(nf, sizeof *fmap); /* filter -> its distinct index */
    *qmask = calloc(nq ? nq : 1, sizeof **qmask);
    *masks = calloc(*words * (nf ? nf : 1), 8);
    if (!status && (!rows || !fmap || !*qmask || !*masks)) {
        cli_error(C, -12, "out of memory");
        status = 1;
    }
    for (size_t i = 0; !status && i < nf; i++) {
        size_t j;
        for (j = 0; j < i; j++)
            if (strcmp(nl_filter_text(f[i]), nl_filter_text(f[j])) == 0)
                break;
        if (j < i) {
            fmap[i] = fmap[j];
            continue;
        }
        fmap[i] = (uint32_t)distinct;
        uint64_t *m = *masks + distinct * *words;
        for (size_t x = 0; x < n; x++)
            if (nl_filter_match(f[i], rows[x]) == 1)
                m[x >> 6] |= 1ull << (x & 63);
        distinct++;
    }
    for (size_t q = 0; !status && q < nq; q++)
        (*qmask)[q] = fmap[nf == 1 ? 0 : q];
    for (size_t x = 0; rows && x < r; x++)
        json_decref(rows[x]);
    free(rows);
    free(fmap);
    return status;
}

int cmd_groundtruth(int argc, char **argv)
{
    const char *C = "groundtruth", *base = NULL, *queries = NULL, *out = NULL, *metric_s = "l2";
    uint32_t k = 100, threads = 0;
    uint64_t max_base = 0;
    const char *meta_path = NULL, *filter_s = NULL, *filters_path = NULL;
    static const struct option opts[] = {{"base", 1, 0, 'b'}, {"queries", 1, 0, 'q'}, {"out", 1, 0, 'o'},
                                         {"k", 1, 0, 'k'}, {"metric", 1, 0, 'm'}, {"threads", 1, 0, 't'},
                                         {"max-base", 1, 0, 'x'}, {"metadata", 1, 0, 'M'}, {"filter", 1, 0, 'F'},
                                         {"filters", 1, 0, 'G'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'b': base = optarg; break;
        case 'q': queries = optarg; break;
        case 'o': out = optarg; break;
        case 'k': if (cli_u32(C, "--k", optarg, 1, 10000, &k)) return 2; break;
        case 'm': metric_s = optarg; break;
        case 't': if (cli_u32(C, "--threads", optarg, 0, 1024, &threads)) return 2; break;
        case 'x': if (cli_u64(C, "--max-base", optarg, 1, UINT64_MAX, &max_base)) return 2; break;
        case 'M': meta_path = optarg; break;
        case 'F': filter_s = optarg; break;
        case 'G': filters_path = optarg; break;
        case 'h':
        default:
            fprintf(o == 'h' ? stdout : stderr,
                    "usage: nearline groundtruth --base FILE --queries FILE --out FILE.ivecs [--k K]\n"
                    "         [--metric l2|ip|cosine] [--threads N] [--max-base N]\n"
                    "         [--metadata FILE.jsonl (--filter JSON | --filters FILE.jsonl)]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (!base || !queries || !out) {
        cli_error(C, 0, "--base, --queries and --out are required");
        return 2;
    }
    if ((filter_s || filters_path) && (!meta_path || (filter_s && filters_path))) {
        cli_error(C, 0, "a filtered truth needs --metadata and one of --filter or --filters");
        return 2;
    }
    nl_filter **filters = NULL;
    size_t nfilters = 0;
    if (filter_s) {
        filters = calloc(1, sizeof *filters);
        if (!filters || cli_parse_filter(C, filter_s, &filters[0])) {
            free(filters);
            return 2;
        }
        nfilters = 1;
    } else if (filters_path && cli_load_filters(C, filters_path, &filters, &nfilters)) {
        return 2;
    }
    uint64_t *masks = NULL;
    uint32_t *qmask = NULL;
    nl_metric metric;
    int rc = nl_metric_parse(metric_s, &metric);
    if (rc) {
        cli_error(C, rc, "--metric");
        return 2;
    }
    void *b = NULL;
    size_t n;
    uint32_t d;
    nl_dtype t;
    float *q = NULL;
    uint32_t *ids = NULL;
    int status = 1;
    if ((rc = nl_dataset_load(base, NL_FORMAT_AUTO, &b, &n, &d, &t))) {
        cli_error(C, rc, "cannot load base");
        goto out;
    }
    if (max_base && max_base < n) n = max_base;
    nl_dataset *qd;
    if ((rc = nl_dataset_open(queries, NL_FORMAT_AUTO, &qd))) {
        cli_error(C, rc, "cannot open queries");
        goto out;
    }
    size_t nq = nl_dataset_count(qd);
    if (nl_dataset_dim(qd) != d) {
        cli_error(C, 0, "queries have dimension %u, base has %u", nl_dataset_dim(qd), d);
        nl_dataset_close(qd);
        goto out;
    }
    q = malloc(sizeof(float) * nq * d);
    rc = q ? nl_dataset_read_f32(qd, 0, nq, q) : -12;
    nl_dataset_close(qd);
    if (rc) {
        cli_error(C, rc, "cannot read queries");
        goto out;
    }
    nl_vecset vs = {b, n, d, t};
    if (filters) {
        size_t words;
        if (filters_path && nfilters != nq) {
            cli_error(C, 0, "--filters %s has %zu lines for %zu queries", filters_path, nfilters, nq);
            goto out;
        }
        if (build_masks(C, meta_path, n, filters, nfilters, nq, &masks, &qmask, &words))
            goto out;
        ids = malloc(sizeof(uint32_t) * nq * k);
        fgt_ctx fc = {&vs, nl_distance_fn(metric, t), q, nq, k, masks, qmask, words, (int32_t *)ids};
        if (!ids || (rc = nl_parallel_for(nq, threads ? threads : nl_cpu_count(), fgt_task, &fc)) != 0 ||
            (rc = nl_dataset_write(out, NL_FORMAT_IVECS, ids, nq, k)) != 0) {
            cli_error(C, rc, "filtered ground truth");
            goto out;
        }
        printf("{\"out\":\"%s\",\"queries\":%zu,\"k\":%u,\"base\":%zu,\"filtered\":true}\n", out, nq, k, n);
        status = 0;
        goto out;
    }
    if (k > n) k = (uint32_t)n;
    ids = malloc(sizeof(uint32_t) * nq * k);
    if (!ids || (rc = nl_groundtruth_exact(&vs, metric, q, nq, k, threads, ids, NULL)) ||
        (rc = nl_dataset_write(out, NL_FORMAT_IVECS, ids, nq, k))) {
        cli_error(C, rc, "ground truth");
        goto out;
    }
    printf("{\"out\":\"%s\",\"queries\":%zu,\"k\":%u,\"base\":%zu}\n", out, nq, k, n);
    status = 0;
out:
    free(b);
    free(q);
    free(ids);
    free(masks);
    free(qmask);
    cli_free_filters(filters, nfilters);
    return status;
}
