/*
 * cmd_import.c — `nearline import`: parses the contract's flags, runs nl_import, reports
 * progress on stderr (a rewritten line on a terminal, a log line every few seconds
 * otherwise; --quiet silences it) and prints a JSON summary on stdout.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "nearline.h"
#include "nl_import.h"
#include "nl_util.h"

typedef struct {
    int tty, quiet;
    uint64_t t0, last;
    char phase[64];
    uint64_t phase_t0;
} progress_state;

static void fmt_count(char *out, size_t cap, double v)
{
    if (v >= 1e9) snprintf(out, cap, "%.2fG", v / 1e9);
    else if (v >= 1e6) snprintf(out, cap, "%.2fM", v / 1e6);
    else if (v >= 1e4) snprintf(out, cap, "%.1fK", v / 1e3);
    else snprintf(out, cap, "%.0f", v);
}

static void fmt_secs(char *out, size_t cap, double s)
{
    if (s >= 3600) snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else if (s >= 60) snprintf(out, cap, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else snprintf(out, cap, "%.0fs", s);
}

/* One phase per line: on a terminal a bar redrawn in place (at most 5 times a second),
 * ended when the phase completes; elsewhere a log line every 5 seconds and one at the
 * end of each phase. */
static void progress_cb(void *ctx, const char *phase, uint64_t done, uint64_t total)
{
    progress_state *ps = ctx;
    if (ps->quiet)
        return;
    uint64_t now = nl_now_ns();
    int new_phase = strcmp(ps->phase, phase) != 0;
    if (new_phase) {
        snprintf(ps->phase, sizeof ps->phase, "%s", phase);
        ps->phase_t0 = now;
        ps->last = ps->tty ? 0 : now;
    }
    int end = done >= total;
    if (!end && ps->last && now - ps->last < (ps->tty ? 200000000ull : 5000000000ull))
        return;
    ps->last = now;
    double el = (double)(now - ps->phase_t0) / 1e9;
    double rate = el > 0 ? (double)done / el : 0;
    double frac = total ? (double)done / (double)total : 1.0;
    char d[16], t[16], r[16], eta[16], tot[16];
    fmt_count(d, sizeof d, (double)done);
    fmt_count(t, sizeof t, (double)total);
    fmt_count(r, sizeof r, rate);
    fmt_secs(eta, sizeof eta, rate > 0 ? (double)(total - done) / rate : 0);
    fmt_secs(tot, sizeof tot, (double)(now - ps->t0) / 1e9);
    if (ps->tty) {
        char bar[31];
        int fill = (int)(frac * 30 + 0.5);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r%-30.30s [%s] %5.1f%% %7s/%-7s %7s/s ETA %-6s total %s\033[K%s", phase, bar, 100 * frac, d, t,
                r, end ? "0s" : eta, tot, end ? "\n" : "");
    } else {
        fprintf(stderr, "import: %s %.1f%% %s/%s %s/s ETA %s (elapsed %s)\n", phase, 100 * frac, d, t, r,
                end ? "0s" : eta, tot);
    }
}

static int help(FILE *f)
{
    fprintf(f,
            "usage: nearline import --db DIR --collection NAME --input FILE [--format F]\n"
            "         [--metric l2|ip|cosine] [--ids FILE] [--metadata FILE.jsonl] [--R N] [--L N] [--alpha X]\n"
            "         [--pq-bytes N] [--memory-budget SIZE] [--single-pass] [--append] [--threads N] [--seed S]\n"
            "         [--code auto|pq:BYTES|rabitq:BITS] [--search-memory SIZE|BYTES/point]\n"
            "         [--recall-target R] [--queries FILE] [--layout auto|blocks|rows] [--quiet]\n"
            "\n"
            "  --code          the compressed code searches navigate by (default auto: chosen from the\n"
            "                  data, the smallest that held-out sample queries estimate at recall@10\n"
            "                  >= --recall-target (0.95) at L=50, within --search-memory; a warning\n"
            "                  says so when none in the memory allowed does)\n"
            "  --queries FILE  representative queries (same dimension) to choose the code by, instead\n"
            "                  of held-out rows of the input: real queries can sit farther from the\n"
            "                  data than its own rows do\n"
            "  --search-memory RAM the collection's codes may take: a size (4G) or bytes a point\n"
            "                  (40/point); default: the default PQ size + 8 bytes a point\n"
            "  --memory-budget SIZE  peak memory the import may use (default: half of RAM). Data whose\n"
            "                        in-memory build would not fit is built in overlapping partitions\n"
            "                        and merged; rerunning the same command after a crash resumes from\n"
            "                        the checkpoints in DIR/.import-NAME/.\n"
            "  --single-pass         one build pass instead of two (about twice as fast, lower recall per L)\n"
            "  --layout              node records on disk: blocks of graph neighbours, so a search uses\n"
            "                        every record of a sector it reads (auto: where several fit a\n"
            "                        sector), or rows (input order)\n"
            "  --append              add the input to an existing collection as a new segment, with the\n"
            "                        collection's R, L, alpha and PQ size; ids must be new (collisions are\n"
            "                        reported); without --ids, ids continue after the largest one present\n");
    return f == stdout ? 0 : 2;
}

int cmd_import(int argc, char **argv)
{
    const char *C = "import";
    nl_import_params p;
    memset(&p, 0, sizeof p);
    p.metric = NL_METRIC_L2;
    p.seed = 42;
    const char *fmt = NULL, *metric = NULL;
    uint32_t threads = 0;
    int quiet = 0;
    static const struct option opts[] = {
        {"db", 1, 0, 'd'}, {"collection", 1, 0, 'c'}, {"input", 1, 0, 'i'}, {"format", 1, 0, 'f'},
        {"metric", 1, 0, 'm'}, {"ids", 1, 0, 'I'}, {"R", 1, 0, 'R'}, {"L", 1, 0, 'L'}, {"alpha", 1, 0, 'a'},
        {"pq-bytes", 1, 0, 'p'}, {"threads", 1, 0, 't'}, {"seed", 1, 0, 's'}, {"quiet", 0, 0, 'q'},
        {"memory-budget", 1, 0, 'B'}, {"metadata", 1, 0, 'M'}, {"single-pass", 0, 0, '1'},
        {"partitioned", 0, 0, 'P'}, {"append", 0, 0, 'A'}, {"code", 1, 0, 'Q'}, {"search-memory", 1, 0, 'S'},
        {"recall-target", 1, 0, 'T'}, {"layout", 1, 0, 'y'}, {"queries", 1, 0, 'u'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': p.db = optarg; break;
        case 'c': p.collection = optarg; break;
        case 'i': p.input = optarg; break;
        case 'f': fmt = optarg; break;
        case 'm': metric = optarg; break;
        case 'I': p.ids_path = optarg; break;
        case 'R': if (cli_u32(C, "--R", optarg, 1, 1024, &p.R)) return 2; break;
        case 'L': if (cli_u32(C, "--L", optarg, 1, 100000, &p.L)) return 2; break;
        case 'a': if (cli_float(C, "--alpha", optarg, 1.0f, 4.0f, &p.alpha)) return 2; break;
        case 'p': if (cli_u32(C, "--pq-bytes", optarg, 1, 4096, &p.pq_m)) return 2; break;
        case 't': if (cli_u32(C, "--threads", optarg, 0, 1024, &threads)) return 2; break;
        case 's': if (cli_u64(C, "--seed", optarg, 0, UINT64_MAX, &p.seed)) return 2; break;
        case 'q': quiet = 1; break;
        case 'B': if (cli_size(C, "--memory-budget", optarg, &p.memory_budget)) return 2;
                  if (p.memory_budget < (64ull << 20)) { cli_error(C, 0, "--memory-budget must be at least 64M"); return 2; }
                  break;
        case '1': p.single_pass = 1; break;
        case 'P': p.force_partitioned = 1; break;
        case 'y':
            if (!strcmp(optarg, "auto")) p.layout = NL_LAYOUT_AUTO;
            else if (!strcmp(optarg, "blocks")) p.layout = NL_LAYOUT_BLOCKS;
            else if (!strcmp(optarg, "rows")) p.layout = NL_LAYOUT_ID;
            else { cli_error(C, 0, "--layout must be auto, blocks or rows"); return 2; }
            break;
        case 'A': p.append = 1; break;
        case 'u': p.queries_path = optarg; break;
        case 'M': p.metadata_path = optarg; break;
        case 'S': {
            const char *slash = strchr(optarg, '/');
            if (slash && (!strcmp(slash, "/point") || !strcmp(slash, "/pt"))) {
                char num[32];
                size_t l = (size_t)(slash - optarg);
                if (l == 0 || l >= sizeof num) { cli_error(C, 0, "--search-memory: BYTES/point"); return 2; }
                memcpy(num, optarg, l);
                num[l] = 0;
                if (cli_u32(C, "--search-memory", num, 1, 1u << 20, &p.search_memory_per_point)) return 2;
            } else if (cli_size(C, "--search-memory", optarg, &p.search_memory)) {
                return 2;
            }
            break;
        }
        case 'T': {
            float t;
            if (cli_float(C, "--recall-target", optarg, 0.01f, 1.0f, &t)) return 2;
            p.recall_target = t;
            break;
        }
        case 'Q': {
            if (!strcmp(optarg, "auto"))
                break;
            nl_code_spec cs;
            if (nl_code_spec_parse(optarg, &cs) != 0) {
                cli_error(C, NL_EINVAL, "--code");
                return 2;
            }
            if (cs.kind == NL_CODE_PQ) {
                p.code = NL_COLL_CODE_PQ;
                p.pq_m = cs.param;
            } else {
                p.code = NL_COLL_CODE_RABITQ(cs.param);
            }
            break;
        }
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    if (!p.db || !p.collection || !p.input) {
        cli_error(C, 0, "--db, --collection and --input are required");
        return 2;
    }
    if (p.queries_path && (p.code || p.pq_m || p.append)) {
        cli_error(C, 0, "--queries is what the code is chosen by: not with --code, --pq-bytes or --append");
        return 2;
    }
    int rc;
    if (fmt && (rc = nl_format_parse(fmt, &p.format))) {
        cli_error(C, rc, "--format");
        return 2;
    }
    if (metric && (rc = nl_metric_parse(metric, &p.metric))) {
        cli_error(C, rc, "--metric");
        return 2;
    }
    p.threads = threads;
    progress_state ps = {isatty(2), quiet, nl_now_ns(), 0, "", 0};
    p.progress = progress_cb;
    p.progress_ctx = &ps;
    nl_import_result r;
    char codename[32];
    if ((rc = nl_import(&p, &r)) != 0) {
        cli_error(C, rc, "import of %s into '%s' failed", p.input, p.collection);
        return 1;
    }
    printf("{\"collection\":\"%s\",\"points\":%llu,\"dim\":%u,\"dtype\":\"%s\",\"metric\":\"%s\",\"R\":%u,"
           "\"pq_bytes\":%u,\"code\":\"%s\",\"segment\":\"%s\",\"segment_bytes\":%llu,\"seconds\":{\"read\":%.2f,\"pq\":%.2f,"
           "\"partition\":%.2f,\"build\":%.2f,\"merge\":%.2f,\"write\":%.2f,\"total\":%.2f},\"memory_budget_bytes\":%llu,"
           "\"partitions\":%u,\"exact_merge\":%s,\"repaired_edges\":%llu,\"resumed_checkpoints\":%u,\"appended\":%s,\"first_id\":%llu,"
           "\"peak_rss_bytes\":%llu",
           p.collection, (unsigned long long)r.points, r.dim, nl_dtype_name(r.dtype), nl_metric_name(p.metric), r.R,
           r.pq_m, nl_code_spec_name(r.code, codename, sizeof codename), r.segment_path, (unsigned long long)r.segment_bytes, r.read_s, r.pq_s, r.partition_s, r.build_s,
           r.merge_s, r.write_s, r.total_s, (unsigned long long)r.budget, r.partitions,
           r.partitions ? (r.exact_merge ? "true" : "false") : "null", (unsigned long long)r.repaired_edges, r.resumed_phases, r.appended ? "true" : "false",
           (unsigned long long)r.first_id,
           (unsigned long long)nl_peak_rss_bytes());
    if (r.partitions)
        printf(",\"partition_fill\":{\"min\":%.3f,\"max\":%.3f},\"navigation_points\":%llu", r.partition_fill_min,
               r.partition_fill_max, (unsigned long long)r.navigation_points);
    printf(",\"layout\":{\"blocks\":%s,\"records_per_sector\":%u,\"overlap\":%.4f,\"seconds\":%.2f}",
           r.block_layout ? "true" : "false", r.block_records, r.layout_overlap, r.layout_s);
    if (r.code_chosen) {
        json_t *j = nl_code_choice_json(&r.choice);
        char *s = j ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(6)) : NULL;
        printf(",\"code_choice\":%s", s ? s : "null");
        free(s);
        json_decref(j);
        if (r.choice.warning[0])
            fprintf(stderr, "nearline import: warning: %s\n", r.choice.warning);
    }
    printf("}\n");
    return 0;
}
