/*
 * nearline.c — the `nearline` command: dispatches to one subcommand per file
 * (cmd_*.c), each of which parses its own flags and prints its result as JSON on stdout
 * and errors as one line on stderr with a non-zero exit.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: nearline COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  import     build a disk index (one segment) from a vector file into a new collection\n"
            "  search     search a collection from disk; prints recall, QPS, latency and I/Os as JSON\n"
            "  verify     check every segment end to end and the id map against them\n"
            "  inspect    print collection configuration and statistics as JSON\n"
            "  compact    merge segments and purge deleted points (--dry-run: just say)\n"
            "  serve      serve the database over HTTP/JSON (API keys, TLS, metrics); --zookeeper: a cluster node\n"
            "  cluster    a cluster's state (status, nodes, shards) and moves, drains, rebalances\n"
            "  groundtruth  exact k-NN of a query file by brute force, written as ivecs\n"
            "  gen        generate a clustered synthetic dataset, queries and exact ground truth\n"
            "  mem-bench  build an in-memory Vamana index over a file and sweep search list sizes\n"
            "  codes      estimate the recall each compressed code would give a data set (what import chooses by)\n"
            "\n"
            "Run 'nearline COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "gen")) return cmd_gen(argc - 1, argv + 1);
    if (!strcmp(cmd, "codes")) return cmd_codes(argc - 1, argv + 1);
    if (!strcmp(cmd, "mem-bench")) return cmd_membench(argc - 1, argv + 1);
    if (!strcmp(cmd, "import")) return cmd_import(argc - 1, argv + 1);
    if (!strcmp(cmd, "search")) return cmd_search(argc - 1, argv + 1);
    if (!strcmp(cmd, "verify")) return cmd_verify(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "compact")) return cmd_compact(argc - 1, argv + 1);
    if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "cluster")) return cmd_cluster(argc - 1, argv + 1);
    if (!strcmp(cmd, "groundtruth")) return cmd_groundtruth(argc - 1, argv + 1);
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "nearline: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
