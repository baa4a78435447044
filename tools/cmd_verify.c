/*
 * cmd_verify.c — `nearline verify` (every segment read end to end: header, in-RAM
 * sections, every node sector's checksum and record, graph reachability) and
 * `nearline inspect` (JSON stats per collection). Both take --db and an optional
 * --collection; verify exits 1 if anything is corrupt.
 */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nl_catalog.h"
#include "nl_segment.h"

static int parse(const char *C, int argc, char **argv, const char **db, const char **coll)
{
    static const struct option opts[] = {{"db", 1, 0, 'd'}, {"collection", 1, 0, 'c'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': *db = optarg; break;
        case 'c': *coll = optarg; break;
        case 'h': fprintf(stdout, "usage: nearline %s --db DIR [--collection NAME]\n", C); return 1;
        default: fprintf(stderr, "usage: nearline %s --db DIR [--collection NAME]\n", C); return 2;
        }
    }
    if (!*db) {
        cli_error(C, 0, "--db is required");
        return 2;
    }
    return 0;
}

static int collections(const char *C, const char *db, const char *coll, char ***names, size_t *n)
{
    int rc;
    if (coll) {
        char **p;
        size_t np;
        if ((rc = nl_catalog_list_segments(db, coll, &p, &np)) != 0) {
            cli_error(C, rc, "collection '%s'", coll);
            return -1;
        }
        nl_string_list_free(p, np);
        *names = malloc(sizeof(char *));
        (*names)[0] = strdup(coll);
        *n = 1;
        return 0;
    }
    if ((rc = nl_catalog_list_collections(db, names, n)) != 0) {
        cli_error(C, rc, "cannot list %s", db);
        return -1;
    }
    return 0;
}

/* Per-collection totals for inspect. */
typedef struct {
    int verify;
    int bad;
    uint64_t points, bytes, ram;
    nl_segment_info first;
} walk_state;

static void visit_segment(walk_state *w, const char *cmd, size_t index, const char *path)
{
    nl_segment *seg;
    nl_segment_options so = {0, NL_IO_PREAD, 1};
    int rc = nl_segment_open(path, &so, &seg);
    nl_segment_verify_report rep = {0};
    nl_segment_info in;
    memset(&in, 0, sizeof in);
    if (rc == 0) {
        nl_segment_get_info(seg, &in);
        if (w->verify)
            rc = nl_segment_verify(seg, &rep);
        nl_segment_close(seg);
    }
    if (rc) {
        w->bad = 1;
        fprintf(stderr, "nearline %s: %s: %s\n", cmd, path, nl_errdetail()[0] ? nl_errdetail() : nl_strerror(rc));
    }
    if (w->verify) {
        printf("%s{\"file\":\"%s\",\"ok\":%s,\"sectors_checked\":%llu,\"bad_sectors\":%llu,\"bad_records\":%llu,"
               "\"unreachable\":%zu}",
               index ? "," : "", path, rc ? "false" : "true", (unsigned long long)rep.sectors_checked,
               (unsigned long long)rep.bad_sectors, (unsigned long long)rep.bad_records, rep.unreachable);
        return;
    }
    if (rc)
        return;
    if (w->points == 0)
        w->first = in;
    w->points += in.count;
    w->bytes += in.file_bytes;
    w->ram += in.ram_bytes;
    printf("%s{\"file\":\"%s\",\"points\":%llu,\"bytes\":%llu,\"ram_at_open_bytes\":%llu,\"medoid\":%u,"
           "\"node_bytes\":%u,\"nodes_per_sector\":%u,\"sectors_per_node\":%u,\"build_L\":%u,"
           "\"build_alpha\":%.2f,\"identity_ids\":%s}",
           index ? "," : "", path, (unsigned long long)in.count, (unsigned long long)in.file_bytes,
           (unsigned long long)in.ram_bytes, in.medoid, in.node_bytes, in.nodes_per_sector, in.sectors_per_node,
           in.build_L, (double)in.build_alpha, in.identity_ids ? "true" : "false");
}

static int walk(const char *C, int verify, int argc, char **argv)
{
    const char *db = NULL, *coll = NULL;
    int prc = parse(C, argc, argv, &db, &coll);
    if (prc)
        return prc == 1 ? 0 : prc;
    char **names;
    size_t nn;
    if (collections(C, db, coll, &names, &nn))
        return 1;
    walk_state w = {.verify = verify};
    printf("{\"db\":\"%s\",\"collections\":[", db);
    for (size_t i = 0; i < nn; i++) {
        char **paths = NULL;
        size_t np = 0;
        nl_catalog_list_segments(db, names[i], &paths, &np);
        w.points = w.bytes = w.ram = 0;
        printf("%s{\"name\":\"%s\",\"segments\":[", i ? "," : "", names[i]);
        for (size_t s = 0; s < np; s++)
            visit_segment(&w, C, s, paths[s]);
        printf("]");
        if (!verify)
            printf(",\"points\":%llu,\"bytes_on_disk\":%llu,\"ram_at_open_bytes\":%llu,\"dim\":%u,\"dtype\":\"%s\","
                   "\"metric\":\"%s\",\"R\":%u,\"pq_bytes\":%u",
                   (unsigned long long)w.points, (unsigned long long)w.bytes, (unsigned long long)w.ram, w.first.dim,
                   nl_dtype_name(w.first.dtype), nl_metric_name(w.first.metric), w.first.R, w.first.pq_m);
        printf("}");
        nl_string_list_free(paths, np);
    }
    printf("]");
    if (verify)
        printf(",\"ok\":%s", w.bad ? "false" : "true");
    printf("}\n");
    nl_string_list_free(names, nn);
    return w.bad ? 1 : 0;
}

int cmd_verify(int argc, char **argv) { return walk("verify", 1, argc, argv); }
int cmd_inspect(int argc, char **argv) { return walk("inspect", 0, argc, argv); }
