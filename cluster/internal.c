/*
 * internal.c — the one entry point of the calls nodes make to each other about a shard
 * (replicate, fence, the snapshot transfer), so that the HTTP server routes them without
 * knowing their bodies: it hands the operation's name, the shard and the raw body here,
 * and sends back the status and JSON answer it gets. Also the checks every internal call
 * makes first: the cluster key, and the local shard it names (opened only when the map
 * gives it to this node and the local copy is the cluster's collection).
 *
 * Invariants: every body is untrusted (another node's, or anyone's who holds the cluster
 * key): each call checks its own; an unknown operation is never dispatched (the server
 * asks nl_cluster_internal_op first, and a 404 is the answer otherwise).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_repl.h"
#include "cl_transfer.h"

static const char *const ops[] = {"replicate", "fence", "snapshot", "snapshot-chunk", "snapshot-install"};

int nl_cluster_internal_op(const char *op)
{
    for (size_t i = 0; op && i < sizeof ops / sizeof ops[0]; i++)
        if (!strcmp(op, ops[i]))
            return 1;
    return 0;
}

int nl_cluster_internal_call(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const char *op,
                             const void *body, size_t len, json_t **out)
{
    *out = NULL;
    if (!nl_cluster_internal_op(op)) {
        *out = cl_error("not_found", "no such internal endpoint");
        return 404;
    }
    if (!strcmp(op, "replicate"))
        return nl_cluster_replicate(cl, h, name, s, body, len, out);
    if (!strcmp(op, "fence")) {
        json_error_t je;
        json_t *j = len ? json_loadb(body, len, 0, &je) : NULL;
        json_t *ep = json_object_get(j, "epoch");
        int st;
        if (!json_is_integer(ep) || json_integer_value(ep) < 1) {
            *out = cl_error("bad_request", "the body must be {\"epoch\": N}");
            st = 400;
        } else {
            st = nl_cluster_fence_shard(cl, h, name, s, (uint64_t)json_integer_value(ep), out);
        }
        json_decref(j);
        return st;
    }
    return nl_cluster_snapshot_call(cl, h, name, s, op, body, len, out);
}

/* ---------------------------------------------------------------- shards held here */

int nl_cluster_key_ok(nl_cluster *cl, const char *key)
{
    if (!cl->key)
        return 1;
    if (!key)
        return 0;
    size_t n = strlen(key);
    unsigned char d = (unsigned char)(n != cl->key_len);
    for (size_t i = 0; i < cl->key_len; i++)
        d |= (unsigned char)(cl->key[i] ^ (i < n ? key[i] : 0));
    return d == 0;
}


int nl_cluster_local_shard(nl_cluster *cl, const char *name, uint32_t s, nl_collection **out)
{
    *out = NULL;
    cl_snapshot *snap = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(snap, name);
    cl_coll tmp;
    int rc = 0;
    if (!c || !c->has_map || !nl_shard_map_holds(&c->map, s, cl->node_id)) {
        if ((rc = cl_fresh_coll(cl, name, &tmp)) == 0)
            c = &tmp;
        else if (rc != NL_ENOTFOUND && c)
            rc = 0; /* ZooKeeper unreachable: serve from the snapshot */
    }
    if (!rc && (!c || !c->has_map))
        rc = nl_fail(NL_ENOTFOUND, "collection '%s' has no shard map", name);
    else if (!rc && !nl_shard_map_holds(&c->map, s, cl->node_id))
        rc = nl_fail(NL_EREFUSED, "shard %u of '%s' is not assigned to node %s", s, name, cl->node_id);
    if (!rc)
        rc = cl_attach(cl, &c->cc, s, out);
    cl_snap_put(cl, snap);
    return rc;
}

int nl_cluster_local_drop(nl_cluster *cl, const char *name)
{
    cl_unverify(cl, name);
    int rc = nl_collection_drop(cl->opt.db, name);
    char p[4400];
    cl_uid_path(cl, name, p, sizeof p);
    unlink(p);
    if (rc == 0)
        cl_log(cl, 1, "\"event\":\"local_copy_dropped\",\"collection\":\"%s\"", name);
    return rc == NL_ENOTFOUND ? 0 : rc;
}
