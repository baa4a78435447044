/*
 * repl_role.c — a primary's role as the rest of the cluster code touches it: found by
 * (collection, shard) with a reference, stepped (nl_repl_step under the role's lock, then
 * the actions that need no I/O: waking waiters, the log line and a re-read of the maps
 * when it was deposed), and the primitives the links (replication.c) and the primary's
 * side of moves (moves.c) share: the fresh read of its map entry, the acknowledged
 * positions, whether the session may acknowledge writes.
 *
 * Invariants: a role lives while its count is >= 1 (the role table holds one); its state
 * machine (role->sm) changes only inside a step, under role->mu.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_role.h"
#include "nl_repl.h"
#include "nl_util.h"

static uint64_t now_ms(void) { return nl_now_ns() / 1000000u; }

int cl_session_ok(nl_cluster *cl)
{
    return atomic_load(&cl->zk.state) == ZOO_CONNECTED_STATE && atomic_load(&cl->zk.registered) &&
           !atomic_load(&cl->zk.expired) && atomic_load(&cl->zk.map_fresh);
}

/* ---------------------------------------------------------------- roles */

static void role_free(repl_role *r)
{
    if (r->h)
        nl_collection_close(r->h);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

void cl_role_put(repl_role *r)
{
    NL_ASSERT(atomic_load(&r->refs) >= 1);
    if (atomic_fetch_sub(&r->refs, 1) == 1)
        role_free(r);
}

/* The role of (name, s) with a reference, or NULL when this node is not its primary. */
repl_role *cl_role_get(nl_cluster *cl, const char *name, uint32_t s)
{
    pthread_mutex_lock(&cl->repl.mu);
    repl_role *r = cl->repl.roles;
    while (r && (r->s != s || strcmp(r->coll, name)))
        r = r->next;
    if (r)
        atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&cl->repl.mu);
    return r;
}

/* Carries out a step's actions that need no I/O of the caller's own: wake the waiters,
 * and log and re-read the maps once when the step deposed the role. Called with r->mu
 * held; it is released and taken again around the log line. */
static void after_step_locked(repl_role *r, const nl_repl_actions *a)
{
    if (a->act & (NL_REPL_ACT_WAKE | NL_REPL_ACT_DEPOSED))
        pthread_cond_broadcast(&r->cv);
    if (a->act & NL_REPL_ACT_DEPOSED) {
        pthread_mutex_unlock(&r->mu);
        cl_log(r->cl, 2, "\"event\":\"primary_deposed\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu,"
               "\"message\":\"%s\"", r->coll, r->s, (unsigned long long)r->sm.epoch, a->why ? a->why : "");
        cl_wake(r->cl); /* re-read the maps now */
        pthread_mutex_lock(&r->mu);
    }
}

/* One event through the role's state machine, under its lock; the actions out. */
void cl_role_step(repl_role *r, nl_repl_event *ev, nl_repl_actions *a)
{
    pthread_mutex_lock(&r->mu);
    if (!ev->now_ms)
        ev->now_ms = now_ms();
    nl_repl_step(&r->sm, ev, a);
    after_step_locked(r, a);
    pthread_mutex_unlock(&r->mu);
}

void cl_role_deposed(repl_role *r, const char *why)
{
    nl_repl_event ev = {.kind = NL_REPL_DEPOSE, .i = -1, .why = why};
    nl_repl_actions a;
    cl_role_step(r, &ev, &a);
}


void cl_role_map(repl_role *r, const nl_shard_entry *e, int32_t version)
{
    nl_repl_event ev = {.kind = NL_REPL_MAP, .i = -1, .entry = e, .version = version};
    nl_repl_actions a;
    cl_role_step(r, &ev, &a);
}

size_t cl_role_acked_locked(const repl_role *r, const nl_shard_entry *e, const char *skip, uint64_t *out)
{
    NL_ASSERT_HELD((pthread_mutex_t *)&r->mu);
    return nl_repl_primary_acked(&r->sm, e, skip, out);
}


/* ---------------------------------------------------------------- the map */

/* The primary's versioned write of its shard's in-sync set: node in or out. 0 when the map
 * now says so; NL_ESTALE when this node is no longer the primary of that epoch. */
int cl_role_fresh(repl_role *r, cl_coll *c)
{
    int rc = cl_fresh_coll(r->cl, r->coll, c);
    if (!rc && (!c->has_map || strcmp(c->cc.uid, r->uid) || r->s >= c->map.nshards))
        rc = NL_ESTALE;
    if (!rc && (c->map.shard[r->s].epoch != r->sm.epoch || strcmp(c->map.shard[r->s].primary, r->cl->node_id)))
        rc = NL_ESTALE;
    return rc;
}

/* A step with r->mu already held. */
void cl_role_step_locked(repl_role *r, nl_repl_event *ev)
{
    nl_repl_actions a;
    if (!ev->now_ms)
        ev->now_ms = now_ms();
    nl_repl_step(&r->sm, ev, &a);
    after_step_locked(r, &a);
}
