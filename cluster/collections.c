/*
 * collections.c — the cluster's collection calls (nl_cluster.h): config, list, create
 * and drop. A collection's config and its first shard map are written by the node that
 * takes the request; the coordinator then places and heals it like any other.
 *
 * Invariants: a collection appears in the list only once its config znode exists; a
 * drop removes the map before the config, so no node attaches a shard of a collection
 * being dropped; every answer is JSON with an error body on failure.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "nl_util.h"

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }


/* ---------------------------------------------------------------- collections */


int nl_cluster_list(nl_cluster *cl, json_t **out)
{
    char p[512];
    struct String_vector ch = {0, NULL};
    pthread_rwlock_rdlock(&cl->zk.lock);
    cl_path(cl, p, sizeof p, "collections", NULL);
    int zrc = cl->zk.h ? nl_zk_children(cl->zk.h, CL_ZK_MS(cl), p, 0, &ch) : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zk.lock);
    json_t *a = json_array();
    if (zrc == ZOK) {
        qsort(ch.data, (size_t)ch.count, sizeof *ch.data, cmp_str);
        for (int i = 0; i < ch.count; i++)
            json_array_append_new(a, json_string(ch.data[i]));
        deallocate_String_vector(&ch);
    } else { /* ZooKeeper unreachable: the last snapshot, said so */
        cl_snapshot *s = cl_snap_get(cl);
        for (size_t i = 0; i < s->ncolls; i++)
            json_array_append_new(a, json_string(s->colls[i].cc.name));
        cl_snap_put(cl, s);
        *out = json_pack("{s:o,s:b}", "collections", a, "stale", 1);
        return 200;
    }
    *out = json_pack("{s:o}", "collections", a);
    return 200;
}

int nl_cluster_create(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_collection_config *cfg,
                      uint32_t replicas, int quorum, json_t **out)
{
    nl_cluster_collection cc;
    memset(&cc, 0, sizeof cc);
    snprintf(cc.name, sizeof cc.name, "%s", name);
    cc.cfg = *cfg;
    cc.replicas = replicas;
    cc.write_quorum = quorum;
    /* the defaults filled in (the server did), so every node creates the same shard */
    int rc0 = nl_collection_config_defaults(&cc.cfg);
    if (rc0) {
        *out = cl_error("bad_request", "%s", nl_errdetail());
        return 400;
    }
    uint64_t r = nl_now_ns() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&cc;
    snprintf(cc.uid, sizeof cc.uid, "%016llx", (unsigned long long)r);
    cl_snapshot *s = cl_snap_get(cl);
    size_t live = s->nnodes;
    cl_snap_put(cl, s);
    if (replicas > live) {
        *out = cl_error("bad_request", "%u replicas need %u live nodes; %zu are live", replicas, replicas, live);
        return 400;
    }
    char *data = nl_cluster_collection_encode(&cc), p[512];
    cl_path(cl, p, sizeof p, "collections", name);
    pthread_rwlock_rdlock(&cl->zk.lock);
    int rc = data ? cl_zcreate(cl, p, data, 0, NULL, 0) : -ENOMEM;
    pthread_rwlock_unlock(&cl->zk.lock);
    free(data);
    if (rc == NL_EEXISTS) {
        *out = cl_error("exists", "collection '%s' already exists", name);
        return 409;
    }
    if (rc) {
        *out = cl_error("unavailable", "cannot write the collection to ZooKeeper: %s", nl_strerror(rc));
        return 503;
    }
    cl_log(cl, 1, "\"event\":\"collection_created\",\"collection\":\"%s\",\"shards\":%u,\"uid\":\"%s\"", name,
           cc.cfg.shards, cc.uid);
    /* The coordinator places the shards; the answer waits for the map (10 s at most). */
    uint64_t end = nl_now_ns() + 10000000000ull;
    cl_coll c;
    while (nl_now_ns() < end) {
        if (cl_fresh_coll(cl, name, &c) == 0 && c.has_map) {
            cl_wake(cl);
            /* the describe opens every shard on its node (the first open creates it):
             * given time, so the answer comes once the collection takes writes */
            nl_cluster_call k = *call;
            k.timeout_ms = 30000;
            int st = nl_cluster_describe(cl, &k, name, out);
            return st == 200 ? 201 : st;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    *out = cl_error("unavailable", "collection '%s' was created but no coordinator has placed its shards yet; it "
                    "will be usable once one has", name);
    return 503;
}

int nl_cluster_drop(nl_cluster *cl, const nl_cluster_call *call, const char *name, json_t **out)
{
    cl_coll c;
    int rc = cl_fresh_coll(cl, name, &c);
    if (rc == NL_ENOTFOUND) {
        *out = cl_error("not_found", "no collection named \"%s\"", name);
        return 404;
    }
    if (rc) {
        *out = cl_error("unavailable", "ZooKeeper: %s", nl_strerror(rc));
        return 503;
    }
    char mp[512], cp[512];
    cl_path(cl, mp, sizeof mp, "maps", name);
    cl_path(cl, cp, sizeof cp, "collections", name);
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    int n = 0;
    if (c.has_map)
        zoo_delete_op_init(&ops[n++], mp, -1);
    zoo_delete_op_init(&ops[n++], cp, -1);
    pthread_rwlock_rdlock(&cl->zk.lock);
    int zrc = cl->zk.h ? nl_zk_multi(cl->zk.h, CL_ZK_MS(cl), n, ops, res) : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zk.lock);
    if (zrc != ZOK) {
        *out = zrc == ZNONODE ? cl_error("not_found", "collection '%s' was dropped meanwhile", name)
                              : cl_error("unavailable", "ZooKeeper: %s", zerror(zrc));
        return zrc == ZNONODE ? 404 : 503;
    }
    cl_log(cl, 1, "\"event\":\"collection_dropped\",\"collection\":\"%s\"", name);
    /* every node holding a shard drops its copy now; one that is down keeps it (reported
     * as unassigned when it returns) */
    cl_snapshot *s = cl_snap_get(cl);
    nl_peer_call calls[NL_MAX_NODES];
    size_t nc = 0;
    for (size_t i = 0; c.has_map && i < s->nnodes; i++) {
        int holds = 0;
        for (uint32_t sh = 0; sh < c.map.nshards; sh++)
            holds |= nl_shard_map_holds(&c.map, sh, s->nodes[i].id);
        if (!holds)
            continue;
        nl_peer_call *k = &calls[nc++];
        memset(k, 0, sizeof *k);
        k->peer = s->nodes[i].id;
        k->method = "DELETE";
        snprintf(k->path, sizeof k->path, "/internal/v1/collections/%s", name);
    }
    char url[NL_MAX_NODES][200];
    for (size_t i = 0; i < nc; i++) {
        const nl_node_info *nd = cl_snap_node(s, calls[i].peer);
        cl_node_url(nd, url[i], sizeof url[i]);
        calls[i].base_url = url[i];
    }
    nl_peer_run(cl->peers, calls, nc, call->timeout_ms ? call->timeout_ms : 5000, call->request_id,
                  call->traceparent);
    json_t *kept = json_array();
    for (size_t i = 0; i < nc; i++) {
        if (calls[i].status != 200)
            json_array_append_new(kept, json_string(calls[i].peer));
        free(calls[i].body_out);
    }
    cl_snap_put(cl, s);
    cl_wake(cl);
    *out = json_pack("{s:s,s:o}", "dropped", name, "copies_kept_on", kept);
    return 200;
}
