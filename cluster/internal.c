/*
 * internal.c — the one entry point of the calls nodes make to each other about a shard
 * (replicate, fence, the snapshot transfer), so that the HTTP server routes them without
 * knowing their bodies: it hands the operation's name, the shard and the raw body here,
 * and sends back the status and JSON answer it gets.
 *
 * Invariants: every body is untrusted (another node's, or anyone's who holds the cluster
 * key): each call checks its own; an unknown operation is never dispatched (the server
 * asks nl_cluster_internal_op first, and a 404 is the answer otherwise).
 */
#include <string.h>

#include <jansson.h>

#include "cluster_internal.h"

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
