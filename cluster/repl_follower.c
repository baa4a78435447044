/*
 * repl_follower.c — a replica's side of replication: applying what its primary's link
 * sends (nl_cluster_replicate), the fence a failover raises (nl_cluster_fence_shard), and
 * whether this replica may serve reads (nl_cluster_serves_reads). The primary's side is
 * replication.c; the request's bytes are decoded by repl_wire.c.
 *
 * Invariants:
 *  - Entries are applied in order, each after the (sequence, epoch) it follows, or not at
 *    all: a position that does not follow answers "mismatch" and the link finds where the
 *    logs agree; an epoch below this replica's fence or its map's answers 409 "stale".
 *  - One request at a time per shard (follow_lock): the fence and the apply of two calls
 *    never interleave.
 *  - A replica outside the in-sync set, or whose map is older than a session timeout,
 *    serves no reads.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_repl.h"
#include "nl_repl.h"
#include "nl_util.h"

static pthread_mutex_t *follow_lock(nl_cluster *cl, const char *name, uint32_t s)
{
    uint64_t h = 1469598103934665603ull ^ s;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return &cl->repl.follow_mu[h % CL_FOLLOW_LOCKS];
}

static json_t *position(const char *status, const nl_log_state *st, const char *msg)
{
    json_t *j = json_pack("{s:s,s:I,s:I,s:I}", "status", status, "last_seq", (json_int_t)st->last_seq, "last_epoch",
                          (json_int_t)st->last_epoch, "fence", (json_int_t)st->fence);
    if (msg)
        json_object_set_new(j, "message", json_string(msg));
    return j;
}

/* The epoch of shard s in this node's snapshot of the map (0 when unknown). */
static uint64_t map_epoch(nl_cluster *cl, const char *name, uint32_t s, char *uid, size_t cap)
{
    cl_snapshot *sn = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(sn, name);
    uint64_t e = c && c->has_map && s < c->map.nshards ? c->map.shard[s].epoch : 0;
    if (uid)
        snprintf(uid, cap, "%s", c ? c->cc.uid : "");
    cl_snap_put(cl, sn);
    return e;
}

int nl_cluster_replicate(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const void *body, size_t len,
                         json_t **out)
{
    nl_repl_msg m;
    if (nl_repl_msg_decode(body, len, &m) != 0) {
        *out = cl_error("bad_request", "not a replicate request (%zu bytes)", len);
        return 400;
    }
    uint64_t epoch = m.epoch, prev = m.prev, prev_epoch = m.prev_epoch;
    char known_uid[32];
    uint64_t me = map_epoch(cl, name, s, known_uid, sizeof known_uid);
    if (known_uid[0] && strcmp(m.uid, known_uid)) {
        *out = cl_error("not_found", "the request is for another collection of the name '%s'", name);
        return 404;
    }
    pthread_mutex_t *mu = follow_lock(cl, name, s);
    pthread_mutex_lock(mu);
    nl_log_state st;
    int rc = nl_collection_shard_log_state(h, s, &st);
    int status = 200;
    if (!rc && !nl_repl_accepts(epoch, st.fence, me)) {
        *out = position("stale", &st, "an older epoch than this replica knows");
        pthread_mutex_unlock(mu);
        return 409;
    }
    if (!rc && epoch > st.fence)
        rc = nl_collection_shard_fence(h, s, epoch, &st); /* nothing older from now on */
    uint64_t have_epoch = 0;
    if (!rc && (st.last_seq != prev || nl_collection_shard_log_epoch_at(h, s, prev, &have_epoch) != 0 ||
                have_epoch != prev_epoch)) {
        *out = position("mismatch", &st, NULL);
        pthread_mutex_unlock(mu);
        return 200;
    }
    const char *msg = NULL;
    char err[300];
    for (uint32_t i = 0; !rc && i < m.count; i++) {
        uint64_t seq;
        const void *data;
        uint32_t el;
        if (nl_repl_msg_next(&m, &seq, &data, &el) != 1) {
            msg = "the request ends inside an entry";
            break;
        }
        int ar = nl_collection_shard_log_apply(h, s, epoch, seq, data, el);
        if (ar) {
            snprintf(err, sizeof err, "entry %llu: %s", (unsigned long long)seq, nl_errdetail());
            msg = err;
            cl_log(cl, 3, "\"event\":\"replicate_refused\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"%s\"",
                   name, s, err);
            status = ar == NL_ESTALE ? 409 : 422;
            break;
        }
    }
    nl_collection_shard_log_state(h, s, &st);
    pthread_mutex_unlock(mu);
    if (rc) {
        *out = cl_error("internal", "%s", nl_errdetail());
        return 500;
    }
    if (msg && status == 200)
        status = 400;
    *out = position(msg ? (status == 409 ? "stale" : "error") : "ok", &st, msg);
    return status;
}

int nl_cluster_fence_shard(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, uint64_t epoch, json_t **out)
{
    pthread_mutex_t *mu = follow_lock(cl, name, s);
    pthread_mutex_lock(mu);
    nl_log_state st;
    int rc = nl_collection_shard_fence(h, s, epoch, &st);
    pthread_mutex_unlock(mu);
    if (rc == NL_ESTALE) {
        *out = position("stale", &st, nl_errdetail());
        return 409;
    }
    if (rc) {
        *out = cl_error("internal", "%s", nl_errdetail());
        return 500;
    }
    cl_log(cl, 1, "\"event\":\"fenced\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu,\"last_seq\":%llu", name, s,
           (unsigned long long)epoch, (unsigned long long)st.last_seq);
    *out = position("ok", &st, NULL);
    return 200;
}

pthread_mutex_t *cl_follow_lock(nl_cluster *cl, const char *name, uint32_t s) { return follow_lock(cl, name, s); }

/* ---------------------------------------------------------------- reads */

int nl_cluster_serves_reads(nl_cluster *cl, const char *name, uint32_t s)
{
    cl_snapshot *sn = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(sn, name);
    int ok = c && c->has_map && nl_shard_map_in_sync(&c->map, s, cl->node_id);
    /* A view of a replicated shard older than a session timeout (the process was paused,
     * or cut off from ZooKeeper) may be one the cluster has moved past: its primary may have
     * dropped this replica from the in-sync set and gone on acknowledging without it. Such
     * a replica serves no reads until its map is read again (the router asks another one).
     * A shard of one replica is always in sync: nobody can drop it. */
    uint64_t age = nl_now_ns() - (uint64_t)atomic_load(&cl->worker.last_read_ns);
    if (ok && c->map.shard[s].nreplicas > 1 && age > (uint64_t)cl->opt.session_ms * 1000000ull)
        ok = 0;
    cl_snap_put(cl, sn);
    if (!ok) {
        /* this node's snapshot may lag the map the router read (a collection just made,
         * a replica just added): ask ZooKeeper before refusing */
        cl_coll *f = malloc(sizeof *f);
        if (f && cl_fresh_coll(cl, name, f) == 0)
            ok = f->has_map && nl_shard_map_in_sync(&f->map, s, cl->node_id);
        free(f);
    }
    return ok;
}
