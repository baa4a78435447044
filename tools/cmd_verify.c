/*
 * cmd_verify.c — the commands that look after collections through the engine:
 *   `nearline verify`  every segment read end to end (header, in-RAM sections, each node
 *                      sector's checksum and record, reachability) and the id map
 *                      checked against segments and fresh vectors; exit 1 on a problem;
 *   `nearline inspect` configuration and statistics per collection, as JSON;
 *   `nearline compact` merges segments and purges deleted points (or, with --dry-run,
 *                      says what it would do).
 * Opening a collection runs recovery (orphaned files removed, fresh index rebuilt), so
 * verify after a crash checks the state a restarted server would serve.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "nl_quant.h"
#include "nearline.h"

typedef struct {
    const char *db, *coll;
    int dry_run, policy;
    uint32_t max_segments; /* --max-segments: the policy's segment limit (0: the default) */
} args;

static int parse(const char *C, int argc, char **argv, args *a, int compact)
{
    static const struct option opts[] = {{"db", 1, 0, 'd'},      {"collection", 1, 0, 'c'}, {"dry-run", 0, 0, 'n'},
                                         {"policy", 0, 0, 'p'},  {"max-segments", 1, 0, 'm'},
                                         {"help", 0, 0, 'h'},    {0, 0, 0, 0}};
    const char *usage = compact ? "usage: nearline compact --db DIR --collection NAME [--dry-run] [--policy]\n"
                                  "         [--max-segments N]\n"
                                  "  rebuilds every segment of each shard into one and purges deleted points;\n"
                                  "  --policy does only what the background policy would: an insertion merge\n"
                                  "  into the largest segment (its deletes removed by delete consolidation)\n"
                                  "  when segments are over the deleted ratio or more than --max-segments\n"
                                  "  (default 8; 1 folds every segment into the largest)\n"
                                : "usage: nearline %s --db DIR [--collection NAME]\n";
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': a->db = optarg; break;
        case 'c': a->coll = optarg; break;
        case 'n': if (!compact) goto bad; a->dry_run = 1; break;
        case 'p': if (!compact) goto bad; a->policy = 1; break;
        case 'm':
            if (!compact || cli_u32(C, "--max-segments", optarg, 1, 1000000, &a->max_segments)) goto bad;
            break;
        case 'h': fprintf(stdout, usage, C); return 1;
        default: goto bad;
        }
    }
    if (!a->db || (compact && !a->coll)) {
        cli_error(C, 0, compact ? "--db and --collection are required" : "--db is required");
        return 2;
    }
    return 0;
bad:
    fprintf(stderr, usage, C);
    return 2;
}

/* Opens the database (no background work: these commands are one-shot) and lists the
 * collections to visit. */
static int prepare(const char *C, const args *a, nl_db **db, char ***names, size_t *n)
{
    nl_db_options o;
    memset(&o, 0, sizeof o);
    o.no_background = 1;
    o.compact_max_segments = a->max_segments;
    int rc = nl_db_open(a->db, &o, db);
    if (rc) {
        cli_error(C, rc, "cannot open database %s", a->db);
        return -1;
    }
    if (a->coll) {
        nl_collection *c;
        if ((rc = nl_collection_open(*db, a->coll, &c)) != 0) {
            cli_error(C, rc, "collection '%s'", a->coll);
            nl_db_close(*db);
            return -1;
        }
        nl_collection_close(c);
        *names = malloc(sizeof(char *));
        (*names)[0] = strdup(a->coll);
        *n = 1;
        return 0;
    }
    if ((rc = nl_collection_list(*db, names, n)) != 0) {
        cli_error(C, rc, "cannot list %s", a->db);
        nl_db_close(*db);
        return -1;
    }
    return 0;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

int cmd_verify(int argc, char **argv)
{
    const char *C = "verify";
    args a = {0};
    int prc = parse(C, argc, argv, &a, 0);
    if (prc)
        return prc == 1 ? 0 : prc;
    nl_db *db;
    char **names;
    size_t n;
    if (prepare(C, &a, &db, &names, &n))
        return 1;
    int bad = 0;
    printf("{\"db\":");
    json_str(a.db);
    printf(",\"collections\":[");
    for (size_t i = 0; i < n; i++) {
        nl_collection *c;
        nl_verify_report r = {0};
        int rc = nl_collection_open(db, names[i], &c);
        if (!rc) {
            rc = nl_collection_verify(c, &r);
            nl_collection_close(c);
        }
        printf("%s{\"name\":\"%s\",\"ok\":%s,\"segments_checked\":%llu,\"sectors_checked\":%llu,\"ids_checked\":%llu,"
               "\"problems\":%llu",
               i ? "," : "", names[i], rc ? "false" : "true", (unsigned long long)r.segments_checked,
               (unsigned long long)r.sectors_checked, (unsigned long long)r.ids_checked,
               (unsigned long long)r.problems);
        if (rc) {
            bad = 1;
            printf(",\"error\":");
            json_str(nl_errdetail()[0] ? nl_errdetail() : nl_strerror(rc));
            fprintf(stderr, "nearline verify: %s: %s\n", names[i], nl_errdetail()[0] ? nl_errdetail() : nl_strerror(rc));
        }
        printf("}");
    }
    printf("],\"ok\":%s}\n", bad ? "false" : "true");
    nl_names_free(names, n);
    nl_db_close(db);
    return bad ? 1 : 0;
}

int cmd_inspect(int argc, char **argv)
{
    const char *C = "inspect";
    args a = {0};
    int prc = parse(C, argc, argv, &a, 0);
    if (prc)
        return prc == 1 ? 0 : prc;
    nl_db *db;
    char **names;
    size_t n;
    if (prepare(C, &a, &db, &names, &n))
        return 1;
    int bad = 0;
    printf("{\"db\":");
    json_str(a.db);
    printf(",\"collections\":[");
    for (size_t i = 0, shown = 0; i < n; i++) {
        nl_collection *c;
        int rc = nl_collection_open(db, names[i], &c);
        if (rc) {
            bad = 1;
            cli_error(C, rc, "collection '%s'", names[i]);
            continue;
        }
        nl_collection_config g;
        nl_collection_stats s;
        nl_collection_describe(c, &g);
        nl_collection_stats_get(c, &s);
        nl_collection_close(c);
        printf("%s{\"name\":\"%s\",\"dim\":%u,\"metric\":\"%s\",\"dtype\":\"%s\",\"shards\":%u,\"R\":%u,\"L\":%u,"
               "\"alpha\":%.2f,\"pq_bytes\":%u,\"fresh_capacity\":%u,\"points\":%llu,\"fresh_points\":%llu,"
               "\"segments\":%llu,\"segment_points\":%llu,\"tombstones\":%llu,\"bytes_on_disk\":%llu,"
               "\"ram_at_open_bytes\":%llu,\"cached_nodes\":%llu,\"seed_members\":%llu,\"block_layout_points\":%llu",
               shown++ ? "," : "", names[i], g.dim, nl_metric_name(g.metric), nl_dtype_name(g.dtype), g.shards, g.R,
               g.L, (double)g.alpha, g.pq_bytes, g.fresh_capacity, (unsigned long long)s.points,
               (unsigned long long)s.fresh_points, (unsigned long long)s.segments,
               (unsigned long long)s.segment_points, (unsigned long long)s.tombstones,
               (unsigned long long)s.disk_bytes, (unsigned long long)s.ram_bytes, (unsigned long long)s.cached_nodes,
               (unsigned long long)s.seed_members, (unsigned long long)s.block_layout_points);
        /* The code, and how the import chose it (code_choice.json, when it did). */
        if (NL_COLL_CODE_IS_RABITQ(g.code))
            printf(",\"code\":\"rabitq:%u\",\"code_bytes_per_point\":%u", NL_COLL_CODE_BITS(g.code),
                   nl_code_spec_bytes((nl_code_spec){NL_CODE_RABITQ, NL_COLL_CODE_BITS(g.code)}, g.dim));
        else
            printf(",\"code\":\"pq:%u\",\"code_bytes_per_point\":%u", g.pq_bytes, g.pq_bytes);
        char cpath[4400];
        snprintf(cpath, sizeof cpath, "%.2000s/%.1000s/code_choice.json", a.db, names[i]);
        json_t *cj = json_load_file(cpath, 0, NULL);
        char *cs = cj ? json_dumps(cj, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(6)) : NULL;
        if (cs)
            printf(",\"code_choice\":%s", cs);
        free(cs);
        json_decref(cj);
        printf("}");
    }
    printf("]}\n");
    nl_names_free(names, n);
    nl_db_close(db);
    return bad ? 1 : 0;
}

int cmd_compact(int argc, char **argv)
{
    const char *C = "compact";
    args a = {0};
    int prc = parse(C, argc, argv, &a, 1);
    if (prc)
        return prc == 1 ? 0 : prc;
    nl_db *db;
    char **names;
    size_t n;
    if (prepare(C, &a, &db, &names, &n))
        return 1;
    nl_names_free(names, n);
    nl_collection *c;
    int rc = nl_collection_open(db, a.coll, &c);
    nl_compact_report r;
    nl_collection_stats before, after;
    memset(&r, 0, sizeof r);
    if (!rc) {
        nl_collection_stats_get(c, &before);
        /* Fresh points first: compaction works on segments. */
        if (!a.dry_run)
            rc = nl_collection_flush(c);
        if (!rc)
            rc = nl_collection_compact(c, a.policy ? NL_COMPACT_POLICY : NL_COMPACT_FULL, a.dry_run, &r);
        nl_collection_stats_get(c, &after);
        nl_collection_close(c);
    }
    if (rc) {
        cli_error(C, rc, "compaction of '%s' failed", a.coll);
        nl_db_close(db);
        return 1;
    }
    if (r.segments_in == 0)
        fprintf(stderr, "nearline compact: '%s' has nothing to compact\n", a.coll);
    else
        fprintf(stderr, "nearline compact: %s %u segment(s) holding %llu points into %u, purging %llu deleted\n",
                a.dry_run ? "would merge" : "merged", r.segments_in, (unsigned long long)r.points_in, r.segments_out,
                (unsigned long long)r.purged);
    printf("{\"collection\":\"%s\",\"dry_run\":%s,\"mode\":\"%s\",\"segments_in\":%u,\"segments_out\":%u,"
           "\"points_in\":%llu,\"points_out\":%llu,\"purged\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
           "\"seconds\":%.3f,\"disk_bytes_before\":%llu,\"disk_bytes_after\":%llu,\"points\":%llu,"
           "\"repaired\":%llu}\n",
           a.coll, a.dry_run ? "true" : "false", a.policy ? "policy" : "full", r.segments_in, r.segments_out,
           (unsigned long long)r.points_in, (unsigned long long)r.points_out, (unsigned long long)r.purged,
           (unsigned long long)r.bytes_in, (unsigned long long)r.bytes_out, r.seconds,
           (unsigned long long)before.disk_bytes, (unsigned long long)after.disk_bytes,
           (unsigned long long)after.points, (unsigned long long)r.repaired);
    nl_db_close(db);
    return 0;
}
