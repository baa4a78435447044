/*
 * cmd_codes.c — `nearline codes`: what each compressed code would give a data set,
 * before anything is built. The same estimate the import makes to choose its code
 * (nl_code_choice.h), over every candidate (RaBitQ at 1..8 bits, PQ at the default size
 * and at the memory allowed), printed as JSON with the one the import would take.
 * --queries gives representative queries instead of held-out rows of the data.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nl_code_choice.h"
#include "nl_dataset.h"

static int help(FILE *f)
{
    fprintf(f, "usage: nearline codes --input FILE [--metric l2|ip|cosine] [--queries FILE] [--L N]\n"
               "         [--search-memory BYTES/point] [--recall-target R] [--sample-queries N] [--threads N]\n"
               "         [--candidates CODE,CODE...]\n"
               "Estimates recall@10 at list size L (50) for every code on held-out rows of the input\n"
               "(or --queries), and says which the import would choose within the memory allowed.\n");
    return f == stdout ? 0 : 2;
}

int cmd_codes(int argc, char **argv)
{
    const char *C = "codes";
    const char *input = NULL, *qpath = NULL, *metric_s = "l2";
    nl_code_choice_params cp = {.evaluate_all = 1, .seed = 42};
    uint32_t threads = 0;
    static const struct option opts[] = {{"input", 1, 0, 'i'}, {"metric", 1, 0, 'm'}, {"queries", 1, 0, 'q'},
                                         {"L", 1, 0, 'L'}, {"search-memory", 1, 0, 'S'},
                                         {"recall-target", 1, 0, 'T'}, {"sample-queries", 1, 0, 'n'},
                                         {"threads", 1, 0, 't'}, {"candidates", 1, 0, 'c'}, {"help", 0, 0, 'h'},
                                         {0, 0, 0, 0}};
    nl_code_spec only[NL_CODE_CHOICE_MAX];
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'i': input = optarg; break;
        case 'm': metric_s = optarg; break;
        case 'q': qpath = optarg; break;
        case 'L': if (cli_u32(C, "--L", optarg, 10, 10000, &cp.L)) return 2; break;
        case 'S': {
            size_t l = strlen(optarg);
            char num[32];
            if (l < 7 || strcmp(optarg + l - 6, "/point") || l - 6 >= sizeof num) {
                cli_error(C, 0, "--search-memory: BYTES/point");
                return 2;
            }
            memcpy(num, optarg, l - 6);
            num[l - 6] = 0;
            if (cli_u32(C, "--search-memory", num, 1, 1u << 20, &cp.budget)) return 2;
            break;
        }
        case 'T': {
            float t;
            if (cli_float(C, "--recall-target", optarg, 0.01f, 1.0f, &t)) return 2;
            cp.target = t;
            break;
        }
        case 'n': if (cli_u32(C, "--sample-queries", optarg, 1, 100000, &cp.queries)) return 2; break;
        case 't': if (cli_u32(C, "--threads", optarg, 0, 1024, &threads)) return 2; break;
        case 'c': {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", optarg);
            cp.nonly = 0;
            for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (cp.nonly == NL_CODE_CHOICE_MAX || nl_code_spec_parse(tok, &only[cp.nonly]) != 0) {
                    cli_error(C, NL_EINVAL, "--candidates: '%s'", tok);
                    return 2;
                }
                cp.nonly++;
            }
            cp.only = only;
            break;
        }
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    if (!input) {
        cli_error(C, 0, "--input is required");
        return 2;
    }
    nl_metric metric;
    int rc = nl_metric_parse(metric_s, &metric);
    if (rc) {
        cli_error(C, rc, "--metric");
        return 2;
    }
    cp.threads = threads;
    nl_dataset *ds = NULL, *qs = NULL;
    if ((rc = nl_dataset_open(input, NL_FORMAT_AUTO, &ds)) != 0) {
        cli_error(C, rc, "%s", input);
        return 1;
    }
    if (!cp.budget)
        cp.budget = nl_code_default_pq_m(nl_dataset_dim(ds)) + 8;
    if (qpath && (rc = nl_dataset_open(qpath, NL_FORMAT_AUTO, &qs)) != 0) {
        cli_error(C, rc, "%s", qpath);
        nl_dataset_close(ds);
        return 1;
    }
    cp.sample_queries = qs;
    nl_code_choice ch;
    rc = nl_code_choose(ds, metric, &cp, &ch);
    nl_dataset_close(ds);
    nl_dataset_close(qs);
    if (rc) {
        cli_error(C, rc, "estimating codes for %s", input);
        return 1;
    }
    json_t *j = nl_code_choice_json(&ch);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(6)) : NULL;
    printf("%s\n", s ? s : "null");
    free(s);
    json_decref(j);
    return 0;
}
