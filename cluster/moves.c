/*
 * moves.c — moving shard replicas between nodes (docs/cluster.md, "Moves"), and the
 * cluster-wide stagger of compactions.
 *
 * A move of shard s's replica from node A to node B is recorded in the shard's map entry
 * (nl_shard_move) and goes through these states, each a versioned map write:
 *
 *   planned   the coordinator adds B to the replicas (not in sync) with the move record;
 *   copying   the primary's link to B finds it empty and sends a snapshot (transfer.c:
 *             zstd pieces with a CRC-32C each, resumable, at --move-rate-mb), then
 *             streams the log from the snapshot's sequence;
 *   joined    the primary adds B to the in-sync set once it has caught up (its usual
 *             rule, replication.c): from now on writes wait for B too;
 *   finished  the primary removes A from the replicas and the in-sync set and clears the
 *             record (cl_move_step). When A is the primary itself, it first hands its
 *             role over: it stops ordering new writes, waits until every other in-sync
 *             member has applied its whole log, and writes the map with B as primary at
 *             epoch + 1 and the in-sync set without A — every member of which then holds
 *             every write A acknowledged. Writers that waited meanwhile are retried by
 *             the router at B.
 *
 * The in-sync set therefore never falls below the replication factor during a planned
 * move: B joins it before A leaves. Abandoning a move (B died, or was drained): the
 * coordinator removes B from the replicas once the primary has taken it out of the
 * in-sync set (its own timeout rule), never before, so a write acknowledged with B in the
 * quorum is never left on fewer members than the rules need. Because the whole state is
 * in the map, a new coordinator or a new primary (after a failover) carries on from it.
 *
 * This file is the primary's side (cl_move_step, from its links' upkeep); the
 * coordinator's side (planning, rollback, replacing nodes gone) is in coordinator.c.
 *
 * Compactions (cl_compact_gate, the engine's nl_db_options.compact_gate): at most
 * --compactions-per-node at once on a node, and for a shard of several replicas only one
 * replica at a time, by ZooKeeper's lock recipe (an ephemeral <root>/compacting/<coll>.<s>
 * znode: whoever creates it compacts; it goes with the session if the node dies). No
 * coordinator round trip: compaction goes on while the coordinator changes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_moves.h"
#include "cl_role.h"
#include "nl_rebalance.h"
#include "nl_repl.h"
#include "nl_util.h"

#define HANDOFF_MS 3000       /* a hand-over waits this long for the followers, then gives up */
#define HANDOFF_RETRY_MS 5000

static uint64_t mono_ms(void) { return nl_now_ns() / 1000000u; }


/* ---------------------------------------------------------------- the primary's part */

/* The move's last map write, from the primary: `from` leaves (B first made primary when
 * handoff). 0 written; 1 nothing to do (the move is not this one any more); NL_ESTALE no
 * longer the primary; -EAGAIN not yet allowed; -ESTALE the version moved; NL_EUNAVAILABLE
 * the answer was lost (it may have landed). */
static int finish(repl_role *r, uint64_t id, int handoff)
{
    nl_cluster *cl = r->cl;
    cl_coll *c = malloc(sizeof *c);
    if (!c)
        return -ENOMEM;
    int rc = cl_role_fresh(r, c);
    nl_shard_entry *e = rc ? NULL : &c->map.shard[r->s];
    if (!rc && (e->state != NL_SHARD_MOVING || e->move.id != id))
        rc = 1;
    char from[NL_NODE_ID_MAX] = {0}, to[NL_NODE_ID_MAX] = {0};
    if (!rc) {
        memcpy(from, e->move.from, sizeof from);
        memcpy(to, e->move.to, sizeof to);
    }
    if (!rc && !handoff && r->sm.quorum == NL_QUORUM_MAJORITY) {
        /* under majority `from` may hold writes the rest lack (nl_repl_may_leave) */
        pthread_mutex_lock(&r->mu);
        int may = !nl_shard_map_in_sync(&c->map, r->s, from) || nl_repl_primary_may_leave(&r->sm, e, from);
        pthread_mutex_unlock(&r->mu);
        if (!may)
            rc = -EAGAIN;
    }
    if (!rc)
        rc = nl_shard_map_move_finish(&c->map, r->s);
    int32_t nv = 0;
    if (!rc)
        rc = cl_map_write(cl, &c->map, c->map.version, 0, &nv);
    if (!rc) {
        if (!handoff) /* the role's view follows its own write */
            cl_role_map(r, &c->map.shard[r->s], nv);
        atomic_fetch_add(&cl->moves_finished, 1);
        if (handoff)
            atomic_fetch_add(&cl->handoffs, 1);
        cl_log(cl, 1, "\"event\":\"move_finished\",\"collection\":\"%s\",\"shard\":%u,\"from\":\"%s\",\"to\":\"%s\","
               "\"id\":%llu,\"primary\":\"%s\",\"epoch\":%llu,\"version\":%d", r->coll, r->s, from, to,
               (unsigned long long)id, c->map.shard[r->s].primary, (unsigned long long)c->map.shard[r->s].epoch, nv);
        cl_wake(cl);
    }
    free(c);
    return rc;
}

/* After a hand-over's map write whose answer was lost: read the map until it says whether
 * it landed. 1 landed (this role is over), 0 it did not. */
static int handoff_landed(repl_role *r, repl_link *l)
{
    cl_coll *c = malloc(sizeof *c);
    int landed = -1;
    for (int i = 0; c && landed < 0 && !atomic_load(&l->stop) && i < 100; i++) {
        if (cl_fresh_coll(r->cl, r->coll, c) == 0 && c->has_map && r->s < c->map.nshards) {
            const nl_shard_entry *e = &c->map.shard[r->s];
            landed = strcmp(c->cc.uid, r->uid) || e->epoch != r->sm.epoch || strcmp(e->primary, r->cl->node_id);
        } else {
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
        }
    }
    free(c);
    return landed != 0; /* still unknown: treated as landed (the role stays closed; the map decides) */
}

void cl_move_step(repl_link *l)
{
    repl_role *r = l->role;
    nl_cluster *cl = r->cl;
    uint64_t t = mono_ms();
    pthread_mutex_lock(&r->mu);
    const nl_shard_entry *e = &r->sm.view;
    int moving = e->state == NL_SHARD_MOVING && !r->sm.deposed;
    int ready = 0;
    for (uint32_t i = 0; moving && i < e->nin_sync; i++)
        ready |= !strcmp(e->in_sync[i], e->move.to);
    uint64_t id = e->move.id;
    int mine = moving && !strcmp(e->move.from, cl->node_id);
    /* one link drives the move at a time: the one to its target, or the first when the
     * target is this node (a failover made it primary) */
    const repl_link *first = NULL;
    for (int i = 0; i < r->nlinks && !first; i++)
        if (r->links[i].peer[0] && !r->links[i].retiring)
            first = &r->links[i];
    int driver = moving && (!strcmp(l->peer, e->move.to) || (!strcmp(e->move.to, cl->node_id) && l == first));
    if (!ready || !driver || t < r->move_retry_ms) {
        if (r->handoff && (!moving || !mine)) { /* the move went away meanwhile */
            r->handoff = 0;
            pthread_cond_broadcast(&r->cv);
        }
        pthread_mutex_unlock(&r->mu);
        return;
    }
    if (!mine) {
        pthread_mutex_unlock(&r->mu);
        int rc = finish(r, id, 0);
        if (rc == NL_ESTALE)
            cl_role_deposed(r, "the map has a newer epoch for this shard");
        else if (rc && rc != 1 && rc != -ESTALE) {
            pthread_mutex_lock(&r->mu);
            r->move_retry_ms = mono_ms() + 1000;
            pthread_mutex_unlock(&r->mu);
        }
        return;
    }
    /* the role itself moves: hand it over */
    if (!r->handoff) {
        r->handoff = 1;
        r->handoff_ms = t;
        pthread_mutex_unlock(&r->mu);
        cl_log(cl, 1, "\"event\":\"handoff_begun\",\"collection\":\"%s\",\"shard\":%u,\"to\":\"%s\",\"epoch\":%llu", r->coll,
               r->s, e->move.to, (unsigned long long)r->sm.epoch);
        return;
    }
    uint64_t acked[NL_MAX_REPLICAS];
    size_t na = cl_role_acked_locked(r, e, NULL, acked);
    int all = r->writing == 0;
    for (size_t i = 0; i < na; i++)
        all &= acked[i] >= r->sm.last;
    if (!all) {
        if (t - r->handoff_ms > HANDOFF_MS) {
            r->handoff = 0;
            r->move_retry_ms = t + HANDOFF_RETRY_MS;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
            cl_log(cl, 2, "\"event\":\"handoff_given_up\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"the in-sync "
                   "followers did not reach the primary's last entry in %d ms; writes go on, tried again later\"",
                   r->coll, r->s, HANDOFF_MS);
        } else {
            pthread_mutex_unlock(&r->mu);
        }
        return;
    }
    pthread_mutex_unlock(&r->mu);
    int rc = finish(r, id, 1);
    int over = rc == 0 || rc == NL_ESTALE || (rc == NL_EUNAVAILABLE && handoff_landed(r, l));
    if (over) {
        cl_role_deposed(r, rc == 0 ? "handed over to the move's target" : "the map has a newer epoch for this shard");
        return;
    }
    pthread_mutex_lock(&r->mu);
    r->handoff = 0;
    r->move_retry_ms = mono_ms() + (rc == -ESTALE ? 100 : HANDOFF_RETRY_MS);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* ---------------------------------------------------------------- compactions */

#define GATE_KEEP 64

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static char gate_held[GATE_KEEP][400]; /* lock znodes this process created */

/* ".../<coll>/<s>" -> coll, s. 0 or -1. */
static int shard_of_dir(const char *dir, char *coll, size_t cap, uint32_t *s)
{
    const char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return -1;
    const char *c = slash - 1;
    while (c > dir && *c != '/')
        c--;
    if (*c == '/')
        c++;
    if (slash == c || (size_t)(slash - c) >= cap)
        return -1;
    char *end;
    unsigned long v = strtoul(slash + 1, &end, 10);
    if (*end || end == slash + 1 || v >= NL_MAX_SHARDS)
        return -1;
    snprintf(coll, cap, "%.*s", (int)(slash - c), c);
    *s = (uint32_t)v;
    return 0;
}

int nl_cluster_compact_gate(void *cluster, const char *shard_dir, int begin)
{
    return cl_compact_gate(cluster, shard_dir, begin);
}

int cl_compact_gate(void *ctx, const char *dir, int begin)
{
    nl_cluster *cl = ctx;
    char coll[200], p[600], lock[300];
    uint32_t s = 0;
    int known = shard_of_dir(dir, coll, sizeof coll, &s) == 0;
    if (known)
        snprintf(lock, sizeof lock, "%s.%u", coll, s);
    if (!begin) {
        atomic_fetch_sub(&cl->moves.compacting, 1);
        pthread_mutex_lock(&gate_mu);
        for (int i = 0; known && i < GATE_KEEP; i++)
            if (!strcmp(gate_held[i], lock)) {
                cl_path(cl, p, sizeof p, "compacting", lock);
                pthread_rwlock_rdlock(&cl->zk.lock);
                if (cl->zk.h)
                    nl_zk_delete(cl->zk.h, CL_ZK_MS(cl), p, -1);
                pthread_rwlock_unlock(&cl->zk.lock);
                gate_held[i][0] = 0;
            }
        pthread_mutex_unlock(&gate_mu);
        return 0;
    }
    if (atomic_fetch_add(&cl->moves.compacting, 1) >= (int)cl->moves.compactions_per_node) {
        atomic_fetch_sub(&cl->moves.compacting, 1);
        atomic_fetch_add(&cl->compactions_deferred, 1);
        return -EAGAIN;
    }
    uint32_t replicas = 1;
    if (known) {
        cl_snapshot *sn = cl_snap_get(cl);
        const cl_coll *c = cl_snap_coll(sn, coll);
        if (c && c->has_map && s < c->map.nshards)
            replicas = c->map.shard[s].nreplicas;
        cl_snap_put(cl, sn);
    }
    if (replicas < 2)
        return 0; /* nothing to stagger */
    cl_path(cl, p, sizeof p, "compacting", lock);
    pthread_rwlock_rdlock(&cl->zk.lock);
    int zrc = cl->zk.h ? nl_zk_create(cl->zk.h, CL_ZK_MS(cl), p, cl->node_id, (int)strlen(cl->node_id), ZOO_EPHEMERAL,
                                     NULL, 0)
                     : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zk.lock);
    if (zrc != ZOK) { /* another replica compacts (or no ZooKeeper to ask): later */
        atomic_fetch_sub(&cl->moves.compacting, 1);
        atomic_fetch_add(&cl->compactions_deferred, 1);
        return -EAGAIN;
    }
    pthread_mutex_lock(&gate_mu);
    for (int i = 0; i < GATE_KEEP; i++)
        if (!gate_held[i][0]) {
            snprintf(gate_held[i], sizeof gate_held[i], "%s", lock);
            break;
        }
    pthread_mutex_unlock(&gate_mu);
    return 0;
}
