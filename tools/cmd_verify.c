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

int cmd_verify(int argc, char **argv)
{
    const char *C = "verify", *db = NULL, *coll = NULL;
    int prc = parse(C, argc, argv, &db, &coll);
    if (prc) return prc == 1 ? 0 : prc;
    char **names;
    size_t nn;
    if (collections(C, db, coll, &names, &nn)) return 1;
    int bad = 0;
    printf("{\"db\":\"%s\",\"collections\":[", db);
    for (size_t i = 0; i < nn; i++) {
        char **paths;
        size_t np = 0;
        nl_catalog_list_segments(db, names[i], &paths, &np);
        printf("%s{\"name\":\"%s\",\"segments\":[", i ? "," : "", names[i]);
        for (size_t s = 0; s < np; s++) {
            nl_segment *seg;
            nl_segment_options so = {0, NL_IO_PREAD, 1};
            nl_segment_verify_report rep = {0};
            int rc = nl_segment_open(paths[s], &so, &seg);
            if (rc == 0) {
                rc = nl_segment_verify(seg, &rep);
                nl_segment_close(seg);
            }
            if (rc) {
                bad = 1;
                fprintf(stderr, "nearline verify: %s: %s\n", paths[s], nl_errdetail()[0] ? nl_errdetail() : nl_strerror(rc));
            }
            printf("%s{\"file\":\"%s\",\"ok\":%s,\"sectors_checked\":%llu,\"bad_sectors\":%llu,\"bad_records\":%llu,"
                   "\"unreachable\":%zu}",
                   s ? "," : "", paths[s], rc ? "false" : "true", (unsigned long long)rep.sectors_checked,
                   (unsigned long long)rep.bad_sectors, (unsigned long long)rep.bad_records, rep.unreachable);
        }
        printf("]}");
        nl_string_list_free(paths, np);
    }
    printf("],\"ok\":%s}\n", bad ? "false" : "true");
    nl_string_list_free(names, nn);
    return bad ? 1 : 0;
}

int cmd_inspect(int argc, char **argv)
{
    const char *C = "inspect", *db = NULL, *coll = NULL;
    int prc = parse(C, argc, argv, &db, &coll);
    if (prc) return prc == 1 ? 0 : prc;
    char **names;
    size_t nn;
    if (collections(C, db, coll, &names, &nn)) return 1;
    int bad = 0;
    printf("{\"db\":\"%s\",\"collections\":[", db);
    for (size_t i = 0; i < nn; i++) {
        char **paths;
        size_t np = 0;
        nl_catalog_list_segments(db, names[i], &paths, &np);
        uint64_t points = 0, bytes = 0, ram = 0;
        nl_segment_info in0;
        memset(&in0, 0, sizeof in0);
        printf("%s{\"name\":\"%s\",\"segments\":[", i ? "," : "", names[i]);
        for (size_t s = 0; s < np; s++) {
            nl_segment *seg;
            nl_segment_options so = {0, NL_IO_PREAD, 1};
            int rc = nl_segment_open(paths[s], &so, &seg);
            if (rc) {
                bad = 1;
                fprintf(stderr, "nearline inspect: %s: %s\n", paths[s], nl_errdetail());
                continue;
            }
            nl_segment_info in;
            nl_segment_get_info(seg, &in);
            if (s == 0) in0 = in;
            points += in.count;
            bytes += in.file_bytes;
            ram += in.ram_bytes;
            printf("%s{\"file\":\"%s\",\"points\":%llu,\"bytes\":%llu,\"ram_at_open_bytes\":%llu,\"medoid\":%u,"
                   "\"node_bytes\":%u,\"nodes_per_sector\":%u,\"sectors_per_node\":%u,\"build_L\":%u,"
                   "\"build_alpha\":%.2f,\"identity_ids\":%s}",
                   s ? "," : "", paths[s], (unsigned long long)in.count, (unsigned long long)in.file_bytes,
                   (unsigned long long)in.ram_bytes, in.medoid, in.node_bytes, in.nodes_per_sector,
                   in.sectors_per_node, in.build_L, (double)in.build_alpha, in.identity_ids ? "true" : "false");
            nl_segment_close(seg);
        }
        printf("],\"points\":%llu,\"bytes_on_disk\":%llu,\"ram_at_open_bytes\":%llu,\"dim\":%u,\"dtype\":\"%s\","
               "\"metric\":\"%s\",\"R\":%u,\"pq_bytes\":%u}",
               (unsigned long long)points, (unsigned long long)bytes, (unsigned long long)ram, in0.dim,
               nl_dtype_name(in0.dtype), nl_metric_name(in0.metric), in0.R, in0.pq_m);
        nl_string_list_free(paths, np);
    }
    printf("]}\n");
    nl_string_list_free(names, nn);
    return bad ? 1 : 0;
}
