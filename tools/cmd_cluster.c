/*
 * cmd_cluster.c — `nearline cluster status|nodes|shards|move|drain|rebalance --zookeeper
 * HOSTS`: the operator's view of a running cluster and the three things an operator asks
 * of the coordinator (docs/cluster.md, "Operating a cluster").
 *
 * Reading: the state comes from a live node's GET /v1/cluster (found through ZooKeeper's
 * /nodes; the first that answers), so the command, the API and the status page show one
 * and the same thing. Printed as tables, or with --json as that answer.
 *
 * Asking: a move is written into the shard map with ZooKeeper's versioned set (the same
 * record the coordinator writes, nl_shard_map_move_begin), after checking that the target
 * is a live node that is not draining; drain creates (--undo deletes) <root>/drain/NODE;
 * rebalance creates <root>/rebalance, which the coordinator deletes once nothing is left
 * to move. The coordinator does the work; --wait follows it until done (or --timeout-s).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#define THREADED 1
#include <zookeeper/zookeeper.h>

#include "cli.h"
#include "nl_shardmap.h"

static const char *C = "cluster";

typedef struct {
    const char *zk, *root, *api_key, *ca;
    int json, wait, undo;
    uint32_t timeout_s;
    zhandle_t *zh;
} opts;

static int help(FILE *f)
{
    fprintf(f,
            "usage: nearline cluster COMMAND --zookeeper HOST:PORT[,...] [--cluster-root PATH] [--json]\n"
            "                [--api-key KEY] [--ca PEM] [--wait] [--timeout-s S]\n"
            "  status                          nodes, moves in progress, lag, shards needing attention\n"
            "  nodes                           every node: live, draining, replicas, disk\n"
            "  shards [COLLECTION]             every shard: epoch, primary, replicas, in-sync set, move\n"
            "  move COLLECTION SHARD FROM TO   move shard SHARD's replica on node FROM to node TO\n"
            "  drain NODE [--undo]             move every replica off NODE (--undo: stop draining)\n"
            "  rebalance                       ask the coordinator to even out replicas now\n"
            "--json prints GET /v1/cluster's answer (status, nodes, shards). --wait follows a move, drain\n"
            "or rebalance until it is done (--timeout-s, 600). --api-key (or NEARLINE_API_KEY): a read key\n"
            "for the node asked. Exit status: 0 done, 1 failed, 2 bad usage, 3 --wait timed out.\n");
    return f == stdout ? 0 : 2;
}

/* ---------------------------------------------------------------- ZooKeeper */

static void zk_quiet(void) { zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR); }

static int zk_open(opts *o)
{
    zk_quiet();
    o->zh = zookeeper_init(o->zk, NULL, 10000, NULL, NULL, 0);
    if (!o->zh) {
        cli_error(C, -errno, "cannot start a ZooKeeper client for %s", o->zk);
        return 1;
    }
    for (int i = 0; i < 100 && zoo_state(o->zh) != ZOO_CONNECTED_STATE; i++)
        usleep(50000);
    if (zoo_state(o->zh) != ZOO_CONNECTED_STATE) {
        cli_error(C, 0, "cannot reach ZooKeeper at %s", o->zk);
        return 1;
    }
    char p[512];
    snprintf(p, sizeof p, "%s/nodes", o->root);
    struct Stat st;
    if (zoo_exists(o->zh, p, 0, &st) != ZOK) {
        cli_error(C, 0, "%s is not a nearline cluster root (no %s)", o->root, p);
        return 1;
    }
    return 0;
}

static char *zk_get(opts *o, const char *path, int *len, struct Stat *st)
{
    int cap = 1 << 20;
    char *b = malloc((size_t)cap + 1);
    if (!b)
        return NULL;
    *len = cap;
    if (zoo_get(o->zh, path, 0, b, len, st) != ZOK || *len < 0 || st->dataLength > cap) {
        free(b);
        return NULL;
    }
    b[*len] = 0;
    return b;
}

/* Live node records. *n of them in out (NL_MAX_NODES). */
static int live_nodes(opts *o, nl_node_info *out, size_t *n)
{
    char p[512];
    snprintf(p, sizeof p, "%s/nodes", o->root);
    struct String_vector ch = {0, NULL};
    if (zoo_get_children(o->zh, p, 0, &ch) != ZOK)
        return -1;
    *n = 0;
    for (int i = 0; i < ch.count && *n < NL_MAX_NODES; i++) {
        snprintf(p, sizeof p, "%s/nodes/%s", o->root, ch.data[i]);
        int len;
        struct Stat st;
        char *b = zk_get(o, p, &len, &st);
        if (b && nl_node_info_decode(b, (size_t)len, &out[*n]) == 0)
            (*n)++;
        free(b);
    }
    deallocate_String_vector(&ch);
    return 0;
}

/* ---------------------------------------------------------------- GET /v1/cluster */

typedef struct {
    char *p;
    size_t len;
} body;

static size_t on_body(char *d, size_t sz, size_t n, void *ctx)
{
    body *b = ctx;
    char *q = realloc(b->p, b->len + sz * n + 1);
    if (!q)
        return 0;
    memcpy(q + b->len, d, sz * n);
    b->p = q;
    b->len += sz * n;
    q[b->len] = 0;
    return sz * n;
}

static json_t *fetch_state(opts *o)
{
    nl_node_info nodes[NL_MAX_NODES];
    size_t n = 0;
    if (live_nodes(o, nodes, &n) != 0 || n == 0) {
        cli_error(C, 0, "no live node is registered under %s/nodes", o->root);
        return NULL;
    }
    char auth[600];
    const char *key = o->api_key ? o->api_key : getenv("NEARLINE_API_KEY");
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key ? key : "");
    for (size_t i = 0; i < n; i++) {
        CURL *e = curl_easy_init();
        if (!e)
            break;
        char url[300];
        snprintf(url, sizeof url, "%s://%s/v1/cluster", nodes[i].tls ? "https" : "http", nodes[i].address);
        body b = {0};
        struct curl_slist *h = key ? curl_slist_append(NULL, auth) : NULL;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 5000L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        if (o->ca)
            curl_easy_setopt(e, CURLOPT_CAINFO, o->ca);
        long code = 0;
        if (curl_easy_perform(e) == CURLE_OK)
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        curl_slist_free_all(h);
        curl_easy_cleanup(e);
        json_error_t je;
        json_t *j = code == 200 && b.p ? json_loadb(b.p, b.len, 0, &je) : NULL;
        if (!j && code && code != 200)
            fprintf(stderr, "nearline cluster: %s answered HTTP %ld%s\n", url, code,
                    code == 401 || code == 403 ? " (give --api-key)" : "");
        free(b.p);
        if (json_is_object(j))
            return j;
        json_decref(j);
    }
    cli_error(C, 0, "no live node answered GET /v1/cluster");
    return NULL;
}

/* ---------------------------------------------------------------- tables */

static const char *str(json_t *o, const char *k) { return json_string_value(json_object_get(o, k)) ?: ""; }
static long long num(json_t *o, const char *k) { return (long long)json_integer_value(json_object_get(o, k)); }

static void human(uint64_t b, char *buf, size_t cap)
{
    const char *u[] = {"B", "K", "M", "G", "T"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4)
        v /= 1024, i++;
    snprintf(buf, cap, i ? "%.1f%s" : "%.0f%s", v, u[i]);
}

static void print_nodes(json_t *s)
{
    printf("%-16s %-9s %-5s %8s %9s %9s %9s %6s\n", "NODE", "STATE", "COORD", "REPLICAS", "PRIMARIES", "USED", "FREE",
           "LOAD");
    json_t *n;
    size_t i;
    json_array_foreach(json_object_get(s, "nodes"), i, n) {
        char used[16], fr[16];
        human((uint64_t)num(n, "used_bytes"), used, sizeof used);
        human((uint64_t)num(n, "disk_free"), fr, sizeof fr);
        int live = json_is_true(json_object_get(n, "live"));
        printf("%-16s %-9s %-5s %8lld %9lld %9s %9s %6.2f\n", str(n, "id"),
               !live ? "gone" : json_is_true(json_object_get(n, "draining")) ? "draining" : "live",
               json_is_true(json_object_get(n, "coordinator")) ? "*" : "", num(n, "replicas"), num(n, "primaries"),
               live ? used : "-", live ? fr : "-", json_real_value(json_object_get(n, "load")));
    }
}

static void print_moves(json_t *s)
{
    json_t *m, *mv = json_object_get(s, "moves");
    size_t i;
    if (!json_array_size(mv)) {
        printf("no moves in progress\n");
        return;
    }
    printf("%-24s %-14s %-14s %-9s %-12s %8s %8s %6s\n", "SHARD", "FROM", "TO", "REASON", "PHASE", "COPIED", "LAG",
           "AGE");
    json_array_foreach(mv, i, m) {
        char sh[96], cp[16] = "-";
        snprintf(sh, sizeof sh, "%s/%lld", str(m, "collection"), num(m, "shard"));
        if (num(m, "copy_total") > 0)
            snprintf(cp, sizeof cp, "%lld%%", 100 * num(m, "copy_done") / num(m, "copy_total"));
        printf("%-24s %-14s %-14s %-9s %-12s %8s %8lld %5llds\n", sh, str(m, "from"), str(m, "to"), str(m, "reason"),
               str(m, "phase"), cp, num(m, "lag_ops"), num(m, "age_s"));
    }
}

static void print_shards(json_t *s, const char *only)
{
    json_t *c, *h;
    size_t i, k;
    printf("%-24s %6s %-14s %-40s %-7s\n", "SHARD", "EPOCH", "PRIMARY", "REPLICAS (~ catching up)", "STATE");
    json_array_foreach(json_object_get(s, "collections"), i, c) {
        if (only && strcmp(str(c, "name"), only))
            continue;
        json_array_foreach(json_object_get(c, "shards"), k, h) {
            char sh[96], reps[400] = "";
            snprintf(sh, sizeof sh, "%s/%lld", str(c, "name"), num(h, "shard"));
            json_t *r, *ins = json_object_get(h, "in_sync");
            size_t j, q;
            json_array_foreach(json_object_get(h, "replicas"), j, r) {
                int in = 0;
                json_t *x;
                json_array_foreach(ins, q, x) in |= json_equal(x, r);
                size_t l = strlen(reps);
                snprintf(reps + l, sizeof reps - l, "%s%s%s", l ? "," : "", in ? "" : "~", json_string_value(r));
            }
            printf("%-24s %6lld %-14s %-40s %-7s\n", sh, num(h, "epoch"), str(h, "primary"), reps, str(h, "state"));
        }
    }
}

static void print_status(json_t *s)
{
    json_t *n;
    size_t i, live = 0;
    json_array_foreach(json_object_get(s, "nodes"), i, n) live += json_is_true(json_object_get(n, "live"));
    printf("coordinator %s, %zu of %zu nodes live, %zu collections, %lld shards under-replicated%s\n",
           str(s, "coordinator"), live, json_array_size(json_object_get(s, "nodes")),
           json_array_size(json_object_get(s, "collections")), num(s, "under_replicated_shards"),
           json_is_true(json_object_get(s, "rebalance_requested")) ? ", rebalance requested" : "");
    if (json_array_size(json_object_get(s, "unreachable")))
        printf("did not report: %s\n", json_dumps(json_object_get(s, "unreachable"), JSON_COMPACT));
    printf("\n");
    print_nodes(s);
    printf("\n");
    print_moves(s);
    json_t *l, *lag = json_object_get(s, "lag");
    int shown = 0;
    json_array_foreach(lag, i, l) {
        if (json_is_true(json_object_get(l, "in_sync")) && num(l, "lag_ops") == 0)
            continue;
        if (!shown++)
            printf("\n%-24s %-14s %-14s %-8s %10s\n", "LAGGING", "PRIMARY", "FOLLOWER", "IN-SYNC", "LAG(OPS)");
        char sh[96];
        snprintf(sh, sizeof sh, "%s/%lld", str(l, "collection"), num(l, "shard"));
        printf("%-24s %-14s %-14s %-8s %10lld\n", sh, str(l, "primary"), str(l, "follower"),
               json_is_true(json_object_get(l, "in_sync")) ? "yes" : "no", num(l, "lag_ops"));
    }
}

/* ---------------------------------------------------------------- asking */

/* Waits until done(state) says so; 0 done, 3 timed out. */
static int follow(opts *o, int (*done)(json_t *s, const void *arg), const void *arg)
{
    time_t end = time(NULL) + (time_t)o->timeout_s;
    while (time(NULL) < end) {
        json_t *s = fetch_state(o);
        if (s) {
            int d = done(s, arg);
            json_t *m;
            size_t i;
            json_array_foreach(json_object_get(s, "moves"), i, m) {
                fprintf(stderr, "  %s/%lld %s -> %s %s", str(m, "collection"), num(m, "shard"), str(m, "from"),
                        str(m, "to"), str(m, "phase"));
                if (num(m, "copy_total") > 0)
                    fprintf(stderr, " %lld%%", 100 * num(m, "copy_done") / num(m, "copy_total"));
                fprintf(stderr, "\n");
            }
            json_decref(s);
            if (d)
                return 0;
        }
        sleep(1);
    }
    cli_error(C, 0, "not done after %u s (it goes on; `nearline cluster status` shows where it is)", o->timeout_s);
    return 3;
}

typedef struct {
    const char *coll;
    long shard;
    uint64_t id;
} move_ref;

static int move_done(json_t *s, const void *arg)
{
    const move_ref *r = arg;
    json_t *m;
    size_t i;
    json_array_foreach(json_object_get(s, "moves"), i, m) {
        if ((uint64_t)num(m, "id") == r->id)
            return 0;
    }
    return 1;
}

static int cmd_move(opts *o, char **a)
{
    char *end;
    unsigned long sh = strtoul(a[1], &end, 10);
    if (*end || nl_node_id_check(a[2]) || nl_node_id_check(a[3])) {
        cli_error(C, NL_EINVAL, "usage: nearline cluster move COLLECTION SHARD FROM TO");
        return 2;
    }
    char p[512];
    snprintf(p, sizeof p, "%s/nodes/%s", o->root, a[3]);
    struct Stat st;
    if (zoo_exists(o->zh, p, 0, &st) != ZOK) {
        cli_error(C, 0, "node %s is not live", a[3]);
        return 1;
    }
    snprintf(p, sizeof p, "%s/drain/%s", o->root, a[3]);
    if (zoo_exists(o->zh, p, 0, &st) == ZOK) {
        cli_error(C, 0, "node %s is draining: it takes no replicas", a[3]);
        return 1;
    }
    snprintf(p, sizeof p, "%s/maps/%s", o->root, a[0]);
    nl_shard_map *m = malloc(sizeof *m);
    uint64_t id = ((uint64_t)time(NULL) << 20 ^ (uint64_t)getpid() << 8 ^ (uint64_t)rand()) & (UINT64_MAX >> 1);
    int rc = 1;
    for (int attempt = 0; m && attempt < 5; attempt++) {
        int len;
        char *b = zk_get(o, p, &len, &st);
        if (!b) {
            cli_error(C, 0, "no shard map for collection '%s'", a[0]);
            break;
        }
        int drc = nl_shard_map_decode(b, (size_t)len, m);
        free(b);
        if (drc) {
            cli_error(C, drc, "the shard map of '%s' does not decode", a[0]);
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        if ((drc = nl_shard_map_move_begin(m, (uint32_t)sh, a[2], a[3], id,
                                           (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000, "operator")) != 0) {
            cli_error(C, drc, "cannot move shard %lu of '%s'", sh, a[0]);
            rc = 2;
            break;
        }
        char *data = nl_shard_map_encode(m);
        int zrc = data ? zoo_set(o->zh, p, data, (int)strlen(data), st.version) : ZSYSTEMERROR;
        free(data);
        if (zrc == ZBADVERSION)
            continue; /* the map moved meanwhile: read it again */
        if (zrc != ZOK) {
            cli_error(C, 0, "the map write failed: %s", zerror(zrc));
            break;
        }
        printf("{\"move\":{\"collection\":\"%s\",\"shard\":%lu,\"from\":\"%s\",\"to\":\"%s\",\"id\":%llu}}\n", a[0], sh,
               a[2], a[3], (unsigned long long)id);
        fflush(stdout);
        rc = 0;
        break;
    }
    free(m);
    if (rc == 0 && o->wait) {
        move_ref r = {a[0], (long)sh, id};
        rc = follow(o, move_done, &r);
    }
    return rc;
}

static int drain_done(json_t *s, const void *arg)
{
    json_t *n;
    size_t i;
    json_array_foreach(json_object_get(s, "nodes"), i, n) {
        if (!strcmp(str(n, "id"), (const char *)arg))
            return num(n, "replicas") == 0;
    }
    return 1; /* no longer named anywhere */
}

static int cmd_drain(opts *o, const char *node)
{
    if (nl_node_id_check(node)) {
        cli_error(C, NL_EINVAL, "usage: nearline cluster drain NODE [--undo]");
        return 2;
    }
    char p[512];
    snprintf(p, sizeof p, "%s/drain", o->root);
    zoo_create(o->zh, p, NULL, -1, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0); /* a root from before drains */
    snprintf(p, sizeof p, "%s/drain/%s", o->root, node);
    int zrc = o->undo ? zoo_delete(o->zh, p, -1) : zoo_create(o->zh, p, NULL, -1, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);
    if (zrc != ZOK && zrc != (o->undo ? ZNONODE : ZNODEEXISTS)) {
        cli_error(C, 0, "cannot %s %s: %s", o->undo ? "delete" : "create", p, zerror(zrc));
        return 1;
    }
    printf("{\"node\":\"%s\",\"draining\":%s}\n", node, o->undo ? "false" : "true");
    fflush(stdout);
    return !o->undo && o->wait ? follow(o, drain_done, node) : 0;
}

static int rebalance_done(json_t *s, const void *arg)
{
    (void)arg;
    return !json_is_true(json_object_get(s, "rebalance_requested")) && json_array_size(json_object_get(s, "moves")) == 0;
}

static int cmd_rebalance(opts *o)
{
    char p[512];
    snprintf(p, sizeof p, "%s/rebalance", o->root);
    int zrc = zoo_create(o->zh, p, NULL, -1, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);
    if (zrc != ZOK && zrc != ZNODEEXISTS) {
        cli_error(C, 0, "cannot create %s: %s", p, zerror(zrc));
        return 1;
    }
    printf("{\"rebalance\":\"requested\"}\n");
    fflush(stdout);
    if (!o->wait)
        return 0;
    sleep(3); /* the coordinator's next pass (2 s) plans first */
    return follow(o, rebalance_done, NULL);
}

int cmd_cluster(int argc, char **argv)
{
    opts o = {.root = "/nearline", .timeout_s = 600};
    static const struct option lo[] = {{"zookeeper", 1, 0, 'z'}, {"cluster-root", 1, 0, 'r'}, {"json", 0, 0, 'j'},
                                       {"api-key", 1, 0, 'k'},   {"ca", 1, 0, 'c'},           {"wait", 0, 0, 'w'},
                                       {"undo", 0, 0, 'u'},      {"timeout-s", 1, 0, 't'},    {"help", 0, 0, 'h'},
                                       {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'z': o.zk = optarg; break;
        case 'r': o.root = optarg; break;
        case 'j': o.json = 1; break;
        case 'k': o.api_key = optarg; break;
        case 'c': o.ca = optarg; break;
        case 'w': o.wait = 1; break;
        case 'u': o.undo = 1; break;
        case 't': if (cli_u32(C, "--timeout-s", optarg, 1, 86400, &o.timeout_s)) return 2; break;
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    char **a = argv + optind;
    int na = argc - optind;
    if (na < 1)
        return help(stderr);
    if (!o.zk) {
        cli_error(C, 0, "--zookeeper HOST:PORT is required");
        return 2;
    }
    const char *what = a[0];
    int reading = !strcmp(what, "status") || !strcmp(what, "nodes") || !strcmp(what, "shards");
    if (!reading && strcmp(what, "move") && strcmp(what, "drain") && strcmp(what, "rebalance"))
        return help(stderr);
    if ((!strcmp(what, "move") && na != 5) || (!strcmp(what, "drain") && na != 2) ||
        (!strcmp(what, "rebalance") && na != 1) || (!strcmp(what, "shards") && na > 2) ||
        ((!strcmp(what, "status") || !strcmp(what, "nodes")) && na != 1))
        return help(stderr);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = zk_open(&o);
    if (!rc && reading) {
        json_t *s = fetch_state(&o);
        if (!s) {
            rc = 1;
        } else if (o.json) {
            json_dumpf(s, stdout, JSON_INDENT(2));
            printf("\n");
        } else if (!strcmp(what, "status")) {
            print_status(s);
        } else if (!strcmp(what, "nodes")) {
            print_nodes(s);
        } else {
            print_shards(s, na == 2 ? a[1] : NULL);
        }
        json_decref(s);
    } else if (!rc && !strcmp(what, "move")) {
        rc = cmd_move(&o, a + 1);
    } else if (!rc && !strcmp(what, "drain")) {
        rc = cmd_drain(&o, a[1]);
    } else if (!rc) {
        rc = cmd_rebalance(&o);
    }
    if (o.zh)
        zookeeper_close(o.zh);
    curl_global_cleanup();
    return rc;
}
