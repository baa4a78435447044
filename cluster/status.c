/*
 * status.c — the cluster's state for an operator: GET /v1/cluster on any node, the
 * `nearline cluster` command (which asks a node for it) and the status page (/ui).
 *
 * Two sources: the shard maps, membership and drained nodes as this node last read them
 * from ZooKeeper (the same on every node within a watch's delay), and what only a primary
 * knows — each follower's position, lag and the progress of a copy it is sending — which
 * every live node reports for itself (GET /internal/v1/node) and this node gathers in
 * parallel with a 1 s deadline. A node that does not answer is named, never waited for.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_repl.h"

#define REPORT_TIMEOUT_MS 1000

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static json_t *names(const char (*ids)[NL_NODE_ID_MAX], uint32_t n)
{
    json_t *a = json_array();
    for (uint32_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(ids[i]));
    return a;
}

/* The primary_of entry of (collection, shard) in the reports, or NULL. */
static json_t *primary_entry(json_t *reports, const char *primary, const char *coll, uint32_t sh)
{
    json_t *rep = json_object_get(reports, primary), *po = json_object_get(rep, "primary_of"), *e;
    size_t i;
    json_array_foreach(po, i, e) {
        if (!strcmp(json_string_value(json_object_get(e, "collection")) ?: "", coll) &&
            json_integer_value(json_object_get(e, "shard")) == (json_int_t)sh)
            return e;
    }
    return NULL;
}

static json_t *follower_entry(json_t *pe, const char *node)
{
    json_t *fs = json_object_get(pe, "followers"), *f;
    size_t i;
    json_array_foreach(fs, i, f) {
        if (!strcmp(json_string_value(json_object_get(f, "node")) ?: "", node))
            return f;
    }
    return NULL;
}

static int is_drained(const cl_snapshot *s, const char *id)
{
    for (size_t i = 0; i < s->ndrained; i++)
        if (!strcmp(s->drained[i], id))
            return 1;
    return 0;
}

int nl_cluster_status(nl_cluster *cl, json_t **out)
{
    json_t *self = NULL;
    nl_cluster_node_status(cl, &self);
    cl_snapshot *s = cl_snap_get(cl);
    size_t n = s->nnodes;
    nl_peer_call *calls = calloc(n ? n : 1, sizeof *calls);
    char (*url)[200] = calloc(n ? n : 1, 200);
    json_t *reports = json_object(), *unreachable = json_array();
    for (size_t i = 0; calls && url && i < n; i++) {
        nl_peer_call *k = &calls[i];
        k->peer = s->nodes[i].id;
        cl_node_url(&s->nodes[i], url[i], sizeof url[0]);
        k->base_url = url[i];
        k->method = "GET";
        snprintf(k->path, sizeof k->path, "/internal/v1/node");
    }
    if (calls && url)
        nl_peer_run(cl->peers, calls, n, REPORT_TIMEOUT_MS, "status", NULL);
    for (size_t i = 0; calls && url && i < n; i++) {
        json_error_t je;
        json_t *a = calls[i].status == 200 && calls[i].body_out
                        ? json_loadb(calls[i].body_out, calls[i].body_out_len, 0, &je) : NULL;
        if (json_is_object(a))
            json_object_set_new(reports, s->nodes[i].id, a);
        else {
            json_decref(a);
            json_array_append_new(unreachable, json_string(s->nodes[i].id));
        }
        free(calls[i].body_out);
    }
    free(calls);
    free(url);

    /* nodes: every live one, and every one a map names that is not live */
    char ids[NL_MAX_NODES * 2][NL_NODE_ID_MAX];
    uint32_t held[NL_MAX_NODES * 2] = {0}, prim[NL_MAX_NODES * 2] = {0};
    size_t nid = 0;
    for (size_t i = 0; i < n; i++)
        memcpy(ids[nid++], s->nodes[i].id, NL_NODE_ID_MAX);
    for (size_t c = 0; c < s->ncolls; c++)
        for (uint32_t sh = 0; s->colls[c].has_map && sh < s->colls[c].map.nshards; sh++) {
            const nl_shard_entry *e = &s->colls[c].map.shard[sh];
            for (uint32_t r = 0; r < e->nreplicas; r++) {
                size_t k = 0;
                while (k < nid && strcmp(ids[k], e->replicas[r]))
                    k++;
                if (k == nid && nid < NL_MAX_NODES * 2)
                    memcpy(ids[nid++], e->replicas[r], NL_NODE_ID_MAX);
                if (k < nid) {
                    held[k]++;
                    prim[k] += !strcmp(e->primary, e->replicas[r]);
                }
            }
        }
    json_t *nodes = json_array();
    for (size_t k = 0; k < nid; k++) {
        const nl_node_info *ni = cl_snap_node(s, ids[k]);
        json_t *o = json_pack("{s:s,s:b,s:b,s:b,s:i,s:i}", "id", ids[k], "live", ni != NULL, "draining",
                              is_drained(s, ids[k]), "coordinator", !strcmp(s->coordinator, ids[k]), "replicas",
                              (int)held[k], "primaries", (int)prim[k]);
        if (ni) {
            json_object_set_new(o, "address", json_string(ni->address));
            json_object_set_new(o, "disk_free", json_integer((json_int_t)ni->disk_free));
            json_object_set_new(o, "used_bytes", json_integer((json_int_t)ni->used_bytes));
            json_object_set_new(o, "load", json_real(ni->load));
            json_object_set_new(o, "shards", json_integer((json_int_t)ni->shards));
            json_object_set_new(o, "version", json_string(ni->version));
            json_object_set_new(o, "breaker", json_integer(nl_peer_breaker(cl->peers, ni->id)));
            json_object_set_new(o, "reachable", json_boolean(json_object_get(reports, ids[k]) != NULL));
            json_t *rep = json_object_get(reports, ids[k]);
            if (json_is_integer(json_object_get(rep, "compacting")))
                json_object_set(o, "compacting", json_object_get(rep, "compacting"));
        }
        json_array_append_new(nodes, o);
    }

    json_t *colls = json_array(), *moves = json_array(), *lag = json_array();
    uint64_t now = wall_ms();
    int under = 0;
    for (size_t c = 0; c < s->ncolls; c++) {
        const cl_coll *cc = &s->colls[c];
        json_t *shards = json_array();
        for (uint32_t sh = 0; cc->has_map && sh < cc->map.nshards; sh++) {
            const nl_shard_entry *e = &cc->map.shard[sh];
            json_t *o = json_pack("{s:i,s:I,s:s,s:b,s:o,s:o,s:s}", "shard", (int)sh, "epoch", (json_int_t)e->epoch,
                                  "primary", e->primary, "primary_live", cl_snap_node(s, e->primary) != NULL,
                                  "replicas", names(e->replicas, e->nreplicas), "in_sync",
                                  names(e->in_sync, e->nin_sync), "state", nl_shard_state_name(e->state));
            under += e->nin_sync < cc->cc.replicas;
            json_t *pe = primary_entry(reports, e->primary, cc->cc.name, sh);
            if (pe) {
                json_object_set(o, "last_seq", json_object_get(pe, "last_seq"));
                json_object_set(o, "committed_seq", json_object_get(pe, "committed_seq"));
            }
            for (uint32_t r = 0; r < e->nreplicas; r++) {
                if (!strcmp(e->replicas[r], e->primary))
                    continue;
                json_t *f = follower_entry(pe, e->replicas[r]);
                json_t *l = json_pack("{s:s,s:i,s:s,s:s,s:b}", "collection", cc->cc.name, "shard", (int)sh, "primary",
                                      e->primary, "follower", e->replicas[r], "in_sync",
                                      nl_shard_map_in_sync(&cc->map, sh, e->replicas[r]));
                if (f) {
                    json_object_set(l, "lag_ops", json_object_get(f, "lag_ops"));
                    json_object_set(l, "lag_ms", json_object_get(f, "lag_ms"));
                    json_object_set(l, "acked_seq", json_object_get(f, "acked_seq"));
                } else {
                    json_object_set_new(l, "lag_ops", json_null()); /* the primary did not report */
                }
                json_array_append_new(lag, l);
            }
            if (e->state == NL_SHARD_MOVING) {
                const nl_shard_move *mv = &e->move;
                json_t *mo = json_pack("{s:I,s:s,s:s,s:s,s:i,s:I,s:I,s:s}", "id", (json_int_t)mv->id, "reason",
                                       mv->reason, "from", mv->from, "to", mv->to, "shard", (int)sh, "started_ms",
                                       (json_int_t)mv->started_ms, "age_s",
                                       (json_int_t)(now > mv->started_ms ? (now - mv->started_ms) / 1000 : 0),
                                       "collection", cc->cc.name);
                json_t *f = follower_entry(pe, mv->to);
                const char *phase = "planned";
                if (nl_shard_map_in_sync(&cc->map, sh, mv->to))
                    phase = json_is_true(json_object_get(pe, "handing_over")) ? "handing_over" : "joined";
                else if (f && json_is_true(json_object_get(f, "copying")))
                    phase = "copying";
                else if (f && json_is_true(json_object_get(f, "known")))
                    phase = "catching_up";
                json_object_set_new(mo, "phase", json_string(phase));
                json_object_set_new(mo, "to_live", json_boolean(cl_snap_node(s, mv->to) != NULL));
                if (f) {
                    json_object_set(mo, "copy_done", json_object_get(f, "copy_done"));
                    json_object_set(mo, "copy_total", json_object_get(f, "copy_total"));
                    json_object_set(mo, "lag_ops", json_object_get(f, "lag_ops"));
                }
                json_object_set(o, "move", mo);
                json_array_append_new(moves, mo);
            }
            json_array_append_new(shards, o);
        }
        json_array_append_new(colls, json_pack("{s:s,s:b,s:i,s:i,s:s,s:o}", "name", cc->cc.name, "placed", cc->has_map,
                                               "map_version", cc->has_map ? cc->map.version : -1, "replicas",
                                               (int)cc->cc.replicas, "write_quorum",
                                               nl_quorum_name(cc->cc.write_quorum), "shards", shards));
    }
    json_t *dr = json_array();
    for (size_t i = 0; i < s->ndrained; i++)
        json_array_append_new(dr, json_string(s->drained[i]));
    json_object_set_new(self, "nodes", nodes);
    json_object_set_new(self, "collections", colls);
    json_object_set_new(self, "moves", moves);
    json_object_set_new(self, "lag", lag);
    json_object_set_new(self, "draining", dr);
    json_object_set_new(self, "rebalance_requested", json_boolean(s->rebalance));
    json_object_set_new(self, "under_replicated_shards", json_integer(under));
    json_object_set_new(self, "unreachable", unreachable);
    json_object_set_new(self, "time_ms", json_integer((json_int_t)now));
    json_decref(reports);
    cl_snap_put(cl, s);
    *out = self;
    return 200;
}

/* ---------------------------------------------------------------- this node */

int nl_cluster_node_status(nl_cluster *cl, json_t **out)
{
    cl_snapshot *s = cl_snap_get(cl);
    json_t *nodes = json_array(), *colls = json_array(), *ref = json_array(), *un = json_array();
    for (size_t i = 0; i < s->nnodes; i++) {
        const nl_node_info *n = &s->nodes[i];
        json_array_append_new(nodes, json_pack("{s:s,s:s,s:I,s:f,s:i,s:s,s:i}", "id", n->id, "address", n->address,
                                               "disk_free", (json_int_t)n->disk_free, "load", n->load, "shards",
                                               (int)n->shards, "version", n->version, "breaker",
                                               nl_peer_breaker(cl->peers, n->id)));
    }
    for (size_t i = 0; i < s->ncolls; i++)
        json_array_append_new(colls, json_pack("{s:s,s:b,s:i}", "name", s->colls[i].cc.name, "placed",
                                               s->colls[i].has_map, "map_version",
                                               s->colls[i].has_map ? s->colls[i].map.version : -1));
    pthread_mutex_lock(&cl->report.mu);
    for (size_t i = 0; i < cl->report.nrefused; i++)
        json_array_append_new(ref, json_string(cl->report.refused[i]));
    for (size_t i = 0; i < cl->report.nunassigned; i++)
        json_array_append_new(un, json_string(cl->report.unassigned[i]));
    pthread_mutex_unlock(&cl->report.mu);
    *out = json_pack("{s:s,s:s,s:b,s:s,s:b,s:o,s:o,s:o,s:o,s:o}", "node_id", cl->node_id, "root", cl->root,
                     "registered", atomic_load(&cl->zk.registered), "coordinator", s->coordinator, "is_coordinator",
                     atomic_load(&cl->is_coordinator), "nodes", nodes, "collections", colls, "refused_shards", ref,
                     "unassigned_local_shards", un, "primary_of", cl_repl_status(cl));
    json_object_set_new(*out, "compacting", json_integer(atomic_load(&cl->moves.compacting)));
    cl_snap_put(cl, s);
    return 200;
}

void nl_cluster_metrics(nl_cluster *cl, FILE *f)
{
    cl_snapshot *s = cl_snap_get(cl);
    size_t nn = s->nnodes, nc = s->ncolls;
    cl_snap_put(cl, s);
    pthread_mutex_lock(&cl->report.mu);
    size_t nref = cl->report.nrefused, nun = cl->report.nunassigned;
    pthread_mutex_unlock(&cl->report.mu);
#define G(name, help, v) fprintf(f, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " %lld\n", (long long)(v))
#define C(name, help, v) fprintf(f, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n", (unsigned long long)(v))
    G("nearline_cluster_registered", "1 when this node is registered in ZooKeeper.", atomic_load(&cl->zk.registered));
    G("nearline_cluster_is_coordinator", "1 when this node is the coordinator.", atomic_load(&cl->is_coordinator));
    G("nearline_cluster_nodes", "Live nodes this node sees.", nn);
    G("nearline_cluster_collections", "Collections in the cluster.", nc);
    G("nearline_cluster_map_version", "Sum over collections of their shard map versions (changes when any map does).",
      atomic_load(&cl->map_version_sum));
    G("nearline_cluster_refused_shards", "Local shards refused because they differ from the cluster's config.", nref);
    G("nearline_cluster_unassigned_local_shards", "Shards on this node's disk that the map does not give it.", nun);
    C("nearline_cluster_coordinator_changes_total", "Times this node saw the coordinator change.",
      atomic_load(&cl->coordinator_changes));
    C("nearline_cluster_sessions_total", "ZooKeeper sessions this node registered with.", atomic_load(&cl->sessions));
    C("nearline_cluster_map_writes_total", "Shard maps this node wrote as coordinator.", atomic_load(&cl->map_writes));
    C("nearline_cluster_map_conflicts_total", "Map writes refused by ZooKeeper (lost a race, or fenced).",
      atomic_load(&cl->map_conflicts));
    C("nearline_router_partial_answers_total", "Searches answered without some shards (partial: true).",
      atomic_load(&cl->partial_answers));
    C("nearline_router_incomplete_refused_total", "Searches refused (503) because they required every shard.",
      atomic_load(&cl->complete_refusals));
    C("nearline_router_fanouts_total", "Requests the router fanned out to shards.", atomic_load(&cl->fanout_calls));
    C("nearline_router_fanout_shards_total", "Shard calls of those fan-outs (their sum: the mean fan-out width).",
      atomic_load(&cl->fanout_shards));
    C("nearline_router_search_requeries_total", "Shards of a search asked again for the whole k (their first, scaled "
      "answer could hold more of it).", atomic_load(&cl->fanout_requeries));
    C("nearline_router_write_part_failures_total", "Per-shard parts of writes that failed.",
      atomic_load(&cl->write_part_failures));
    C("nearline_router_write_retries_total", "Write parts sent again to a shard's new primary (a move or a failover).",
      atomic_load(&cl->write_retries));
    C("nearline_moves_started_total", "Replica moves this node planned as coordinator.", atomic_load(&cl->moves_started));
    C("nearline_moves_finished_total", "Replica moves this node finished as the shard's primary.",
      atomic_load(&cl->moves_finished));
    C("nearline_moves_rolled_back_total", "Replica moves abandoned by this node as coordinator (the target went).",
      atomic_load(&cl->moves_rolled_back));
    C("nearline_moves_handoffs_total", "Primary roles this node handed to a move's target.", atomic_load(&cl->handoffs));
    C("nearline_moves_copies_dropped_total", "Local shard copies removed after the map moved them away.",
      atomic_load(&cl->copies_dropped));
    C("nearline_snapshot_pieces_sent_total", "Snapshot pieces this node sent.", atomic_load(&cl->pieces_sent));
    C("nearline_snapshot_raw_bytes_total", "Bytes of shard files the snapshot copies this node installed elsewhere "
      "carried (before compression).", atomic_load(&cl->snapshot_raw_bytes));
    C("nearline_snapshot_pieces_resent_total", "Snapshot pieces sent again after the receiver refused their checksum.",
      atomic_load(&cl->pieces_resent));
    G("nearline_compactions_running", "Background compactions running on this node.", atomic_load(&cl->moves.compacting));
    C("nearline_compactions_deferred_total", "Background compactions put off (the node's bound, or another replica of "
      "the shard compacting).", atomic_load(&cl->compactions_deferred));
#undef G
#undef C
    cl_repl_metrics(cl, f);
    nl_peer_metrics(cl->peers, f);
}
