/*
 * cmd_groundtruth.c — `nearline groundtruth`: exact k nearest neighbours of every query
 * by brute force (ties to the lower row), written as ivecs. For making test and
 * benchmark subsets of real data, or checking someone else's ground truth.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nl_dataset.h"
#include "nl_eval.h"

int cmd_groundtruth(int argc, char **argv)
{
    const char *C = "groundtruth", *base = NULL, *queries = NULL, *out = NULL, *metric_s = "l2";
    uint32_t k = 100, threads = 0;
    uint64_t max_base = 0;
    static const struct option opts[] = {{"base", 1, 0, 'b'}, {"queries", 1, 0, 'q'}, {"out", 1, 0, 'o'},
                                         {"k", 1, 0, 'k'}, {"metric", 1, 0, 'm'}, {"threads", 1, 0, 't'},
                                         {"max-base", 1, 0, 'x'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
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
        case 'h':
        default:
            fprintf(o == 'h' ? stdout : stderr,
                    "usage: nearline groundtruth --base FILE --queries FILE --out FILE.ivecs [--k K]\n"
                    "         [--metric l2|ip|cosine] [--threads N] [--max-base N]\n");
            return o == 'h' ? 0 : 2;
        }
    }
    if (!base || !queries || !out) {
        cli_error(C, 0, "--base, --queries and --out are required");
        return 2;
    }
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
    if (k > n) k = (uint32_t)n;
    ids = malloc(sizeof(uint32_t) * nq * k);
    nl_vecset vs = {b, n, d, t};
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
    return status;
}
