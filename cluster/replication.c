/*
 * replication.c — a shard's primary and its followers (docs/cluster.md, "Replication").
 * The rules are nl_repl.h (pure, model-checked by tests/test_repl.c); this file applies
 * them to the engine's operation log (nearline.h), to peers over HTTP and to the shard map
 * in ZooKeeper.
 *
 * The primary of a shard (the map says so, at an epoch) holds a role: it orders every
 * write in the shard's log at its epoch (the engine does, in the write's own synced
 * batch), and one link per follower streams the log to that follower over a keep-alive
 * HTTP connection: a POST .../replicate carries the entries after what the follower has,
 * with the (sequence, epoch) they follow; the follower applies them through the engine
 * (synced) and answers its new position. A writer waits until the write quorum of the
 * in-sync set has applied its entry (nl_repl_committed), then the client is answered.
 *
 * A link learns its follower's position with an empty request first; nl_repl_catchup
 * then says stream (from the log) or snapshot (transfer.c: a checkpoint of the shard,
 * installed whole, after which the log goes on from its sequence).
 *
 * The in-sync set changes only by the primary's versioned write of the map: a follower
 * that made no progress for the replica timeout while entries waited for it is removed
 * (when nl_repl_may_leave allows: under majority it may hold writes the rest lack), and
 * one that has caught up is added. A writer waiting on a removed follower then completes
 * against the smaller set; one that cannot (ZooKeeper unreachable) times out with 503.
 *
 * Fencing: every request carries the epoch; a follower raises its durable fence to it and
 * refuses anything older (409), as it does after a failover's fence call
 * (coordinator.c). A primary told 409, or whose ZooKeeper session is not connected with a
 * fresh read of the maps, acknowledges nothing (503) until the map says again what it is.
 *
 * The follower's side (applying what a link sends, the fence, whether a replica serves
 * reads) is repl_follower.c; the request's bytes are repl_wire.c.
 *
 * Threads: the worker (cluster.c) creates and ends roles after each read of the maps
 * (cl_repl_reconcile); request threads write through roles; each link has its thread.
 * Lock order: cl->repl.mu (the role table) -> role->mu. No lock is held across a network
 * call or an engine write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_moves.h"
#include "cl_repl.h"
#include "cl_role.h"
#include "cl_transfer.h"
#include "nl_repl.h"
#include "nl_util.h"

#define RP_MAX_BATCH (1u << 20) /* entry bytes per request */

/* ---------------------------------------------------------------- small helpers */

static uint64_t now_ms(void) { return nl_now_ns() / 1000000u; }

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void abs_deadline(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* The in-sync write the state machine asked for (link slot i: its follower in or out),
 * as a compare-and-set on the map read fresh; a lost race is read again. When it lands
 * (or the map already says so) the step learns it here (WRITTEN landed) and 0 is
 * returned; otherwise the caller tells the step how it ended: -EAGAIN (may not leave),
 * NL_ESTALE (a later epoch), or another error (the write's outcome may be unknown). */
static int change_in_sync(repl_role *r, int i, const char *node, int in)
{
    nl_cluster *cl = r->cl;
    for (int attempt = 0; attempt < 5; attempt++) {
        cl_coll *c = malloc(sizeof *c);
        if (!c)
            return -ENOMEM;
        int rc = cl_role_fresh(r, c);
        nl_shard_entry *e = rc ? NULL : &c->map.shard[r->s];
        if (!rc && !in) {
            /* under majority, a member holding writes the rest lack must stay */
            pthread_mutex_lock(&r->mu);
            int may = nl_repl_primary_may_leave(&r->sm, e, node);
            pthread_mutex_unlock(&r->mu);
            if (!may)
                rc = -EAGAIN;
        }
        int same = 0;
        if (!rc) {
            int sr = nl_shard_map_set_in_sync(&c->map, r->s, node, in);
            same = sr == 1;
            rc = sr < 0 ? sr : 0;
        }
        int32_t nv = c->map.version;
        if (!rc && !same)
            rc = cl_map_write(cl, &c->map, c->map.version, 0, &nv);
        if (!rc) {
            nl_repl_event ev = {.kind = NL_REPL_WRITTEN, .i = i, .in = in, .result = NL_REPL_WRITE_LANDED,
                                .entry = &c->map.shard[r->s], .version = nv};
            nl_repl_actions a;
            cl_role_step(r, &ev, &a);
            if (!same) {
                atomic_fetch_add(in ? &cl->isr_adds : &cl->isr_removals, 1);
                cl_log(cl, in ? 1 : 2, "\"event\":\"%s\",\"collection\":\"%s\",\"shard\":%u,\"node\":\"%s\","
                       "\"epoch\":%llu,\"in_sync\":%u", in ? "in_sync_added" : "in_sync_removed", r->coll, r->s,
                       node, (unsigned long long)c->map.shard[r->s].epoch, c->map.shard[r->s].nin_sync);
                cl_wake(cl);
            }
        }
        free(c);
        if (rc != -ESTALE) /* -ESTALE: the version moved (a race): read again */
            return rc;
    }
    return -ESTALE;
}

/* ---------------------------------------------------------------- the link (primary side) */


/* Why the link's last exchange failed, for its status (written under role->mu, which the
 * status report reads it under). */
static void __attribute__((format(printf, 2, 3))) link_error(repl_link *l, const char *fmt, ...)
{
    char m[sizeof l->last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&l->role->mu);
    memcpy(l->last_error, m, sizeof m);
    pthread_mutex_unlock(&l->role->mu);
}


typedef struct {
    int status; /* HTTP */
    const char *what; /* "ok", "mismatch", "stale", "error", or NULL (points into buf) */
    char buf[16];
    uint64_t last, last_epoch;
} rp_answer;

static void rp_read(int status, json_t *a, rp_answer *o)
{
    o->status = status;
    const char *w = json_string_value(json_object_get(a, "status"));
    snprintf(o->buf, sizeof o->buf, "%s", w ? w : "");
    o->what = w ? o->buf : NULL;
    o->last = (uint64_t)json_integer_value(json_object_get(a, "last_seq"));
    o->last_epoch = (uint64_t)json_integer_value(json_object_get(a, "last_epoch"));
}

/* Sends entries after prev; fills ans. 0, or -EIO when nothing usable came back. */
static int send_entries(repl_link *l, uint64_t prev, const nl_log_entry *e, size_t n, rp_answer *ans, json_t **keep)
{
    repl_role *r = l->role;
    uint64_t pe = 0;
    int rc = nl_collection_shard_log_epoch_at(r->h, r->s, prev, &pe);
    if (rc)
        return rc;
    void *body;
    size_t len;
    pthread_mutex_lock(&r->mu);
    uint64_t epoch = r->sm.epoch;
    pthread_mutex_unlock(&r->mu);
    if ((rc = nl_repl_msg_encode(epoch, prev, pe, r->uid, e, n, &body, &len)) != 0)
        return rc;
    char path[400];
    snprintf(path, sizeof path, "/internal/v1/collections/%s/shards/%u/replicate", r->coll, r->s);
    json_t *a = NULL;
    uint32_t tmo = r->cl->repl.replica_timeout_ms + 2000;
    int st = cl_link_call(r->cl, &l->e, l->peer, path, body, len, NULL, tmo, &a);
    free(body);
    rp_read(st, a, ans);
    if (st && ans->what && strcmp(ans->what, "ok") && strcmp(ans->what, "mismatch")) {
        const char *m = json_string_value(json_object_get(a, "message"));
        link_error(l, "HTTP %d %s: %s", st, ans->what, m ? m : "");
    }
    if (keep)
        *keep = a;
    else
        json_decref(a);
    if (st == 0 || !ans->what) {
        if (st == 0 && !cl_peer_live(r->cl, l->peer))
            link_error(l, "not registered in ZooKeeper (not a live node)");
        else if (st == 0)
            link_error(l, "unreachable");
        else
            link_error(l, "HTTP %d without an answer", st);
        return -EIO;
    }
    return 0;
}

/* Learns the follower's position; the step decides how it catches up. */
static int hello(repl_link *l)
{
    repl_role *r = l->role;
    nl_log_state ps;
    nl_collection_shard_log_state(r->h, r->s, &ps);
    rp_answer a;
    int rc = send_entries(l, ps.last_seq, NULL, 0, &a, NULL);
    if (rc)
        return rc;
    uint64_t pe = 0;
    nl_repl_event ev = {.kind = NL_REPL_POSITION, .i = l->slot, .status = a.status, .f_last = a.last,
                        .f_epoch = a.last_epoch, .p_last = ps.last_seq};
    ev.p_has = a.status == 200 && nl_collection_shard_log_epoch_at(r->h, r->s, a.last, &pe) == 0;
    ev.p_epoch_at = pe;
    nl_repl_actions act;
    cl_role_step(r, &ev, &act);
    if (a.status != 200) {
        if (a.status != 409)
            link_error(l, "its position: HTTP %d", a.status);
        return -EIO;
    }
    if (act.act & NL_REPL_ACT_SNAPSHOT) {
        cl_log(r->cl, 1, "\"event\":\"snapshot_needed\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\","
               "\"follower_seq\":%llu,\"follower_epoch\":%llu,\"primary_seq\":%llu,\"log_first\":%llu", r->coll, r->s,
               l->peer, (unsigned long long)a.last, (unsigned long long)a.last_epoch,
               (unsigned long long)ps.last_seq, (unsigned long long)ps.first_seq);
        int sr = cl_snapshot_send(l);
        if (sr)
            link_error(l, "snapshot copy: %s", nl_strerror(sr));
        return sr;
    }
    return 0;
}

/* After a map write adding l's follower whose answer was lost (ZooKeeper's connection
 * dropped): it may have landed. Until a read of the map made after it says whether it
 * did, the follower stays required for every write (the step keeps it adding), so no
 * write is acknowledged without a member the map may already list. */
static void settle_add(repl_role *r, repl_link *l)
{
    cl_coll *c = malloc(sizeof *c);
    int settled = 0;
    while (c && !atomic_load(&l->stop)) {
        pthread_mutex_lock(&r->mu);
        int dep = r->sm.deposed;
        pthread_mutex_unlock(&r->mu);
        if (dep)
            break;
        if (cl_fresh_coll(r->cl, r->coll, c) == 0 && c->has_map && r->s < c->map.nshards &&
            !strcmp(c->cc.uid, r->uid)) {
            nl_repl_event ev = {.kind = NL_REPL_MAP, .i = l->slot, .entry = &c->map.shard[r->s],
                                .version = c->map.version, .settled = 1};
            nl_repl_actions a;
            cl_role_step(r, &ev, &a);
            settled = 1;
            break;
        }
        sleep_ms(200);
    }
    free(c);
    if (!settled) { /* the role is ending: nothing waits on this follower any more */
        nl_repl_event ev = {.kind = NL_REPL_WRITTEN, .i = l->slot, .in = 1, .result = NL_REPL_WRITE_REFUSED};
        nl_repl_actions a;
        cl_role_step(r, &ev, &a);
    }
}

/* In-sync upkeep after each exchange (the step decides: out after the timeout without
 * progress, in once caught up); then a move this link drives takes its next step. */
static void upkeep(repl_link *l, int failed)
{
    repl_role *r = l->role;
    nl_repl_event ev = {.kind = NL_REPL_TICK, .i = l->slot, .timeout_ms = r->cl->repl.replica_timeout_ms,
                        .failed = failed, .retiring = l->retiring};
    nl_repl_actions a;
    cl_role_step(r, &ev, &a);
    pthread_mutex_lock(&r->mu);
    int listed = 0;
    for (uint32_t i = 0; i < r->sm.view.nreplicas; i++)
        listed |= !strcmp(r->sm.view.replicas[i], l->peer);
    int dep = r->sm.deposed;
    pthread_mutex_unlock(&r->mu);
    if (dep || !listed || l->retiring)
        return;
    if (a.act & NL_REPL_ACT_IN_SYNC) {
        int rc = change_in_sync(r, l->slot, l->peer, a.in);
        if (rc) {
            nl_repl_event w = {.kind = NL_REPL_WRITTEN, .i = l->slot, .in = a.in};
            w.result = rc == NL_ESTALE                              ? NL_REPL_WRITE_DEPOSED
                     : rc == -EAGAIN || rc == -ESTALE || rc == -ENOMEM ? NL_REPL_WRITE_REFUSED
                                                                    : NL_REPL_WRITE_LOST;
            nl_repl_actions wa;
            cl_role_step(r, &w, &wa);
            if (wa.act & NL_REPL_ACT_SETTLE)
                settle_add(r, l); /* the map write may have landed (its answer was lost) */
            if (rc == NL_ESTALE)
                return;
        }
    }
    cl_move_step(l);
}

static void *link_main(void *arg)
{
    repl_link *l = arg;
    repl_role *r = l->role;
    uint32_t backoff = 50;
    while (!atomic_load(&l->stop)) {
        int rc = 0;
        pthread_mutex_lock(&r->mu);
        int known = r->sm.f[l->slot].known;
        pthread_mutex_unlock(&r->mu);
        if (!known) {
            rc = hello(l);
        } else {
            pthread_mutex_lock(&r->mu);
            uint64_t from = 0;
            if (!nl_repl_primary_next(&r->sm, l->slot, &from) && !atomic_load(&l->stop) && !r->sm.deposed) {
                struct timespec ts;
                abs_deadline(&ts, 200);
                pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            }
            int more = nl_repl_primary_next(&r->sm, l->slot, &from);
            int dep = r->sm.deposed;
            pthread_mutex_unlock(&r->mu);
            if (dep)
                break;
            if (more) {
                nl_log_entry *e = NULL;
                size_t n = 0;
                rc = nl_collection_shard_log_read(r->h, r->s, from, RP_MAX_BATCH, &e, &n);
                nl_repl_event ev = {.i = l->slot};
                nl_repl_actions a;
                if (rc == NL_ENOTFOUND) {
                    ev.kind = NL_REPL_UNKNOWN; /* trimmed past it: the position decides again */
                    cl_role_step(r, &ev, &a);
                    rc = 0;
                } else if (!rc && n) {
                    rp_answer ans;
                    rc = send_entries(l, from - 1, e, n, &ans, NULL);
                    if (rc == NL_ENOTFOUND) {
                        /* the entry the follower is at was trimmed, the next one not yet:
                         * the request cannot name what it follows; the position decides */
                        ev.kind = NL_REPL_UNKNOWN;
                        cl_role_step(r, &ev, &a);
                        rc = 0;
                    } else if (!rc) {
                        ev.kind = NL_REPL_ACK;
                        ev.status = ans.status;
                        ev.answer = ans.what && !strcmp(ans.what, "ok")         ? NL_REPL_ANSWER_OK
                                  : ans.what && !strcmp(ans.what, "mismatch") ? NL_REPL_ANSWER_MISMATCH
                                                                              : NL_REPL_ANSWER_OTHER;
                        ev.f_last = ans.last;
                        cl_role_step(r, &ev, &a);
                        if (ans.status != 409 && !(ans.status == 200 && ev.answer == NL_REPL_ANSWER_OK) &&
                            ev.answer != NL_REPL_ANSWER_MISMATCH)
                            rc = -EIO; /* refused an entry (its message is in the follower's log) */
                    }
                }
                nl_log_entries_free(e, n);
            }
        }
        upkeep(l, rc != 0);
        if (rc) {
            sleep_ms(backoff);
            backoff = backoff < 1000 ? backoff * 2 : 1000;
        } else {
            backoff = 50;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- role lifecycle */


static void role_stop(repl_role *r)
{
    pthread_mutex_lock(&r->mu);
    cl_role_step_locked(r, &(nl_repl_event){.kind = NL_REPL_STOP, .i = -1});
    for (int i = 0; i < r->nlinks; i++)
        atomic_store(&r->links[i].stop, 1);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nlinks; i++) {
        if (r->links[i].started)
            pthread_join(r->links[i].th, NULL);
        if (r->links[i].e)
            nl_peer_stream_close(r->links[i].e);
        cl_snapshot_link_done(&r->links[i]);
    }
}

static repl_role *role_start(nl_cluster *cl, const cl_coll *c, uint32_t s)
{
    nl_collection *h;
    if (cl_attach(cl, &c->cc, s, &h) != 0)
        return NULL;
    repl_role *r = calloc(1, sizeof *r);
    if (!r) {
        nl_collection_close(h);
        return NULL;
    }
    snprintf(r->coll, sizeof r->coll, "%s", c->cc.name);
    snprintf(r->uid, sizeof r->uid, "%s", c->cc.uid);
    r->s = s;
    r->cl = cl;
    r->h = h;
    atomic_store(&r->refs, 1);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    nl_log_state ls;
    nl_collection_shard_log_state(h, s, &ls);
    /* all of its log may have been acknowledged before: high starts at its last */
    nl_repl_primary_init(&r->sm, cl->node_id, c->map.shard[s].epoch, c->cc.write_quorum, &c->map.shard[s],
                         c->map.version, ls.last_seq, now_ms());
    for (int i = 0; i < r->sm.nf; i++) {
        repl_link *l = &r->links[r->nlinks++];
        l->role = r;
        l->slot = i;
        memcpy(l->peer, r->sm.f[i].peer, sizeof l->peer);
    }
    for (int i = 0; i < r->nlinks; i++)
        r->links[i].started = pthread_create(&r->links[i].th, NULL, link_main, &r->links[i]) == 0;
    cl_log(cl, 1, "\"event\":\"primary\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu,\"last_seq\":%llu,"
           "\"in_sync\":%u,\"quorum\":\"%s\"", r->coll, s, (unsigned long long)r->sm.epoch,
           (unsigned long long)r->sm.last, r->sm.view.nin_sync, nl_quorum_name(r->sm.quorum));
    return r;
}

/* The log's bounds, on every shard held here: a primary keeps what an in-sync follower
 * still needs (its last entry too, which the next request names). */
static void trim(nl_cluster *cl, nl_collection *h, uint32_t s, uint64_t keep_from)
{
    uint64_t n = 0;
    if (nl_collection_shard_log_trim(h, s, keep_from, cl->repl.log_max_bytes, cl->repl.log_max_age_ms, &n) == 0 && n)
        atomic_fetch_add(&cl->log_trimmed, n);
}

/* The links of a role as its view's replicas change at one epoch (a move adds its target,
 * and removes it or its source at the end): a link starts for a replica that has none,
 * and one whose follower is no longer listed ends (its slot is freed once its thread has,
 * so the worker never waits on a link's call). Worker thread only. */
static void links_sync(repl_role *r)
{
    nl_cluster *cl = r->cl;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->nlinks; i++) {
        repl_link *l = &r->links[i];
        if (!l->peer[0])
            continue;
        int listed = 0;
        for (uint32_t k = 0; k < r->sm.view.nreplicas; k++)
            listed |= !strcmp(r->sm.view.replicas[k], l->peer);
        if (!listed && !l->retiring) {
            l->retiring = 1;
            atomic_store(&l->stop, 1);
            pthread_cond_broadcast(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nlinks; i++) {
        repl_link *l = &r->links[i];
        if (!l->retiring || (l->started && pthread_tryjoin_np(l->th, NULL) != 0))
            continue;
        if (l->e)
            nl_peer_stream_close(l->e);
        cl_snapshot_link_done(l);
        pthread_mutex_lock(&r->mu);
        cl_log(cl, 1, "\"event\":\"link_ended\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\"", r->coll, r->s,
               l->peer);
        nl_repl_primary_drop(&r->sm, i);
        memset(l, 0, sizeof *l);
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_lock(&r->mu);
    nl_shard_entry view = r->sm.view;
    pthread_mutex_unlock(&r->mu);
    for (uint32_t k = 0; k < view.nreplicas; k++) {
        const char *id = view.replicas[k];
        int have = !strcmp(id, cl->node_id);
        for (int i = 0; i < r->nlinks && !have; i++)
            have = !strcmp(r->links[i].peer, id) && !r->links[i].retiring;
        if (have)
            continue;
        int slot = -1;
        for (int i = 0; i < r->nlinks && slot < 0; i++)
            if (!r->links[i].peer[0])
                slot = i;
        if (slot < 0 && r->nlinks < NL_MAX_REPLICAS)
            slot = r->nlinks;
        if (slot < 0)
            continue; /* every slot is a link still ending: the next pass */
        pthread_mutex_lock(&r->mu);
        repl_link *l = &r->links[slot];
        memset(l, 0, sizeof *l);
        l->role = r;
        l->slot = slot;
        memcpy(l->peer, id, sizeof l->peer);
        nl_repl_primary_set(&r->sm, slot, id, now_ms());
        if (slot == r->nlinks)
            r->nlinks++;
        pthread_mutex_unlock(&r->mu);
        l->started = pthread_create(&l->th, NULL, link_main, l) == 0;
        cl_log(cl, 1, "\"event\":\"link_started\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\"", r->coll,
               r->s, id);
    }
}

void cl_repl_reconcile(nl_cluster *cl, const cl_snapshot *s)
{
    /* roles this node should have */
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        for (uint32_t sh = 0; c->has_map && sh < c->map.nshards; sh++) {
            const nl_shard_entry *e = &c->map.shard[sh];
            if (strcmp(e->primary, cl->node_id) || e->state == NL_SHARD_OFFLINE)
                continue;
            repl_role *r = cl_role_get(cl, c->cc.name, sh);
            if (r && (r->sm.epoch != e->epoch || strcmp(r->uid, c->cc.uid))) {
                cl_role_put(r);
                r = NULL; /* a new epoch: the old role ends below */
            } else if (r) {
                /* the in-sync set as the map has it now */
                nl_repl_event ev = {.kind = NL_REPL_MAP, .i = -1, .entry = e, .version = c->map.version};
                nl_repl_actions a;
                cl_role_step(r, &ev, &a);
                links_sync(r);
                cl_role_put(r);
                continue;
            }
            /* end an older role of this shard first */
            pthread_mutex_lock(&cl->repl.mu);
            repl_role **pp = &cl->repl.roles, *old = NULL;
            for (; *pp; pp = &(*pp)->next)
                if ((*pp)->s == sh && !strcmp((*pp)->coll, c->cc.name)) {
                    old = *pp;
                    *pp = old->next;
                    break;
                }
            pthread_mutex_unlock(&cl->repl.mu);
            if (old) {
                role_stop(old);
                cl_role_put(old);
            }
            repl_role *nr = role_start(cl, c, sh);
            if (nr) {
                pthread_mutex_lock(&cl->repl.mu);
                nr->next = cl->repl.roles;
                cl->repl.roles = nr;
                pthread_mutex_unlock(&cl->repl.mu);
            }
        }
    }
    /* roles this node no longer has: deposed by the map */
    for (;;) {
        pthread_mutex_lock(&cl->repl.mu);
        repl_role **pp = &cl->repl.roles, *gone = NULL;
        for (; *pp; pp = &(*pp)->next) {
            const cl_coll *c = cl_snap_coll(s, (*pp)->coll);
            const nl_shard_entry *e = c && c->has_map && (*pp)->s < c->map.nshards ? &c->map.shard[(*pp)->s] : NULL;
            if (!e || strcmp(e->primary, cl->node_id) || e->epoch != (*pp)->sm.epoch || strcmp(c->cc.uid, (*pp)->uid)) {
                gone = *pp;
                *pp = gone->next;
                break;
            }
        }
        pthread_mutex_unlock(&cl->repl.mu);
        if (!gone)
            break;
        cl_log(cl, 1, "\"event\":\"primary_ended\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu", gone->coll,
               gone->s, (unsigned long long)gone->sm.epoch);
        role_stop(gone);
        cl_role_put(gone);
    }
    /* log bounds */
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        for (uint32_t sh = 0; c->has_map && sh < c->map.nshards; sh++) {
            if (!nl_shard_map_holds(&c->map, sh, cl->node_id))
                continue;
            repl_role *r = cl_role_get(cl, c->cc.name, sh);
            if (r) {
                pthread_mutex_lock(&r->mu);
                uint64_t keep = nl_repl_primary_keep(&r->sm);
                pthread_mutex_unlock(&r->mu);
                trim(cl, r->h, sh, keep);
                cl_role_put(r);
            } else {
                nl_collection *h;
                if (nl_collection_open(cl->opt.db, c->cc.name, &h) == 0) {
                    if (nl_collection_shard_held(h, sh))
                        trim(cl, h, sh, UINT64_MAX);
                    nl_collection_close(h);
                }
            }
        }
    }
}

void cl_repl_stop_all(nl_cluster *cl)
{
    for (;;) {
        pthread_mutex_lock(&cl->repl.mu);
        repl_role *r = cl->repl.roles;
        if (r)
            cl->repl.roles = r->next;
        pthread_mutex_unlock(&cl->repl.mu);
        if (!r)
            break;
        role_stop(r);
        cl_role_put(r);
    }
}

/* ---------------------------------------------------------------- the write path */

/* The engine's word that a write is durable (before its graph links are built here): the
 * links may ship it now. */
static void on_durable(void *ctx, uint64_t seq)
{
    repl_role *r = ctx;
    pthread_mutex_lock(&r->mu);
    cl_role_step_locked(r, &(nl_repl_event){.kind = NL_REPL_DURABLE, .i = -1, .seq = seq});
    pthread_mutex_unlock(&r->mu);
}

typedef struct {
    int type; /* 1 upsert, 2 delete, 3 delete by filter */
    const nl_point *pts;
    const nl_id *ids;
    size_t n;
    const nl_filter *f;
} repl_write;

/* A write through this node's primary role. Refusals before the entry is ordered (not the
 * primary, no session, deposed, handing over, fenced) are NL_EREFUSED: certainly not
 * applied, so a client and the history checker can tell them from the indeterminate
 * NL_EUNAVAILABLE of a write that was ordered but not acknowledged by its quorum. */
static int write_through(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const repl_write *w,
                         size_t *count)
{
    if (count)
        *count = 0;
    repl_role *r = cl_role_get(cl, name, s);
    if (!r) {
        /* a map that has just made this node primary (a new collection, a failover): the
         * worker starts the role on its next read; wait for it a moment */
        cl_coll *f = malloc(sizeof *f);
        int mine = f && cl_fresh_coll(cl, name, f) == 0 && f->has_map && s < f->map.nshards &&
                   !strcmp(f->map.shard[s].primary, cl->node_id);
        free(f);
        for (int i = 0; mine && !r && i < 300; i++) {
            if (i % 50 == 0)
                cl_wake(cl);
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
            r = cl_role_get(cl, name, s);
        }
    }
    if (!r) {
        cl_snapshot *sn = cl_snap_get(cl);
        const cl_coll *c = cl_snap_coll(sn, name);
        int rc = nl_fail(NL_EREFUSED, "node %s is not the primary of shard %u of '%s'%s%s", cl->node_id, s, name,
                         c && c->has_map && s < c->map.nshards ? "; the map says " : "",
                         c && c->has_map && s < c->map.nshards ? c->map.shard[s].primary : "");
        cl_snap_put(cl, sn);
        return rc;
    }
    (void)h;
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    int alone = r->sm.view.nreplicas == 1; /* nobody else can be promoted: nobody can depose it */
    pthread_mutex_unlock(&r->mu);
    if (!alone && !cl_session_ok(cl))
        rc = nl_fail(NL_EREFUSED, "node %s is not connected to ZooKeeper with a fresh map: it acknowledges no "
                     "write to a replicated shard until it is", cl->node_id);
    pthread_mutex_lock(&r->mu);
    /* a move handing the role over: nothing new is ordered until it lands (then this
     * write goes to the new primary: the router retries there) or is given up */
    for (uint64_t until = nl_now_ns() + (uint64_t)cl->repl.write_wait_ms * 1000000ull;
         !rc && r->handoff && !r->sm.deposed && nl_now_ns() < until;) {
        struct timespec ts;
        abs_deadline(&ts, 20);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    if (!rc && r->sm.deposed)
        rc = nl_fail(NL_EREFUSED, "node %s is no longer the primary of shard %u of '%s' (a later epoch)",
                     cl->node_id, s, name);
    if (!rc && r->handoff)
        rc = nl_fail(NL_EREFUSED, "shard %u of '%s' is handing its primary over", s, name);
    if (!rc)
        r->writing++;
    uint64_t epoch = r->sm.epoch;
    pthread_mutex_unlock(&r->mu);
    int counted = !rc;
    uint64_t seq = 0;
    size_t done = 0;
    if (!rc) {
        nl_log_order o = {epoch, on_durable, r};
        rc = w->type == 1 ? nl_collection_shard_log_upsert(r->h, s, &o, w->pts, w->n, &seq)
           : w->type == 2 ? nl_collection_shard_log_delete(r->h, s, &o, w->ids, w->n, &done, &seq)
                          : nl_collection_shard_log_delete_by_filter(r->h, s, &o, w->f, &done, &seq);
        if (rc == NL_ESTALE) {
            cl_role_deposed(r, nl_errdetail());
            rc = nl_fail(NL_EREFUSED, "node %s is fenced for shard %u of '%s'", cl->node_id, s, name);
        }
    }
    if (counted) {
        pthread_mutex_lock(&r->mu);
        if (seq)
            cl_role_step_locked(r, &(nl_repl_event){.kind = NL_REPL_DURABLE, .i = -1, .seq = seq});
        r->writing--;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (!rc && seq) {
        uint64_t t0 = nl_now_ns(), deadline = t0 + (uint64_t)cl->repl.write_wait_ms * 1000000ull;
        pthread_mutex_lock(&r->mu);
        /* the links have something to send */
        cl_role_step_locked(r, &(nl_repl_event){.kind = NL_REPL_DURABLE, .i = -1, .seq = seq});
        for (;;) {
            if (nl_repl_primary_committed(&r->sm) >= seq)
                break;
            if (r->sm.deposed) {
                rc = nl_fail(NL_EUNAVAILABLE, "shard %u of '%s': deposed before the write quorum acknowledged (the "
                             "write may or may not survive)", s, name);
                break;
            }
            if (nl_now_ns() >= deadline) {
                rc = nl_fail(NL_EUNAVAILABLE, "shard %u of '%s': the write quorum did not acknowledge within %u ms "
                             "(the write may or may not survive)", s, name, cl->repl.write_wait_ms);
                break;
            }
            struct timespec ts;
            abs_deadline(&ts, 20);
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        }
        if (!rc)
            cl_role_step_locked(r, &(nl_repl_event){.kind = NL_REPL_ANSWERED, .i = -1, .seq = seq});
        pthread_mutex_unlock(&r->mu);
        atomic_fetch_add(rc ? &cl->repl_write_failures : &cl->repl_writes, 1);
        if (!rc)
            atomic_fetch_add(&cl->repl_wait_us, (nl_now_ns() - t0) / 1000);
    }
    if (count)
        *count = w->type == 1 ? w->n : done;
    cl_role_put(r);
    return rc;
}

int nl_cluster_shard_upsert(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const nl_point *pts,
                            size_t n)
{
    repl_write w = {1, pts, NULL, n, NULL};
    return write_through(cl, h, name, s, &w, NULL);
}

int nl_cluster_shard_delete(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const nl_id *ids, size_t n,
                            size_t *deleted)
{
    repl_write w = {2, NULL, ids, n, NULL};
    return write_through(cl, h, name, s, &w, deleted);
}

int nl_cluster_shard_delete_by_filter(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s,
                                      const nl_filter *f, size_t *deleted)
{
    repl_write w = {3, NULL, NULL, 0, f};
    return write_through(cl, h, name, s, &w, deleted);
}

/* ---------------------------------------------------------------- status */

json_t *cl_repl_status(nl_cluster *cl)
{
    json_t *a = json_array();
    pthread_mutex_lock(&cl->repl.mu);
    for (repl_role *r = cl->repl.roles; r; r = r->next) {
        json_t *fs = json_array();
        pthread_mutex_lock(&r->mu);
        uint64_t t = now_ms();
        for (int i = 0; i < r->nlinks; i++) {
            const repl_link *l = &r->links[i];
            if (!l->peer[0])
                continue;
            const nl_repl_follower *fo = &r->sm.f[i];
            int in = 0;
            for (uint32_t k = 0; k < r->sm.view.nin_sync; k++)
                in |= !strcmp(r->sm.view.in_sync[k], l->peer);
            uint64_t lag = fo->known && r->sm.last > fo->acked ? r->sm.last - fo->acked : 0;
            json_array_append_new(fs, json_pack("{s:s,s:b,s:b,s:I,s:I,s:I,s:b,s:I,s:I}", "node", l->peer, "in_sync", in,
                                                "known", fo->known, "acked_seq", (json_int_t)fo->acked, "lag_ops",
                                                (json_int_t)(fo->known ? lag : r->sm.last), "lag_ms",
                                                (json_int_t)(lag && t > fo->progress_ms ? t - fo->progress_ms : 0),
                                                "failing", fo->failing, "snapshots", (json_int_t)l->snapshots,
                                                "snapshot_bytes", (json_int_t)l->snapshot_bytes));
            json_t *f = json_array_get(fs, json_array_size(fs) - 1);
            json_object_set_new(f, "copying", json_boolean(l->snap != NULL));
            json_object_set_new(f, "last_error", json_string(fo->failing ? l->last_error : ""));
            json_object_set_new(f, "copy_done", json_integer((json_int_t)l->snap_done));
            json_object_set_new(f, "copy_total", json_integer((json_int_t)l->snap_total));
        }
        json_array_append_new(a, json_pack("{s:s,s:i,s:I,s:I,s:I,s:s,s:i,s:o}", "collection", r->coll, "shard", (int)r->s,
                                           "epoch", (json_int_t)r->sm.epoch, "last_seq", (json_int_t)r->sm.last,
                                           "committed_seq", (json_int_t)nl_repl_primary_committed(&r->sm), "quorum",
                                           nl_quorum_name(r->sm.quorum), "in_sync", (int)r->sm.view.nin_sync, "followers",
                                           fs));
        json_object_set_new(json_array_get(a, json_array_size(a) - 1), "handing_over", json_boolean(r->handoff));
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&cl->repl.mu);
    return a;
}

void cl_repl_metrics(nl_cluster *cl, FILE *f)
{
    fprintf(f, "# HELP nearline_replication_lag_ops Log entries a follower has not applied, per shard this node is "
               "primary of.\n# TYPE nearline_replication_lag_ops gauge\n");
    pthread_mutex_lock(&cl->repl.mu);
    for (repl_role *r = cl->repl.roles; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < r->nlinks; i++)
            if (r->links[i].peer[0])
            fprintf(f, "nearline_replication_lag_ops{collection=\"%s\",shard=\"%u\",follower=\"%s\"} %llu\n", r->coll,
                    r->s, r->links[i].peer,
                    (unsigned long long)(r->sm.f[i].known && r->sm.last > r->sm.f[i].acked
                                             ? r->sm.last - r->sm.f[i].acked
                                         : r->sm.f[i].known ? 0 : r->sm.last));
        pthread_mutex_unlock(&r->mu);
    }
    fprintf(f, "# HELP nearline_replication_lag_ms Milliseconds since a lagging follower last made progress.\n"
               "# TYPE nearline_replication_lag_ms gauge\n");
    uint64_t t = now_ms();
    for (repl_role *r = cl->repl.roles; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < r->nlinks; i++) {
            const repl_link *l = &r->links[i];
            if (!l->peer[0])
                continue;
            const nl_repl_follower *fo = &r->sm.f[i];
            int lag = !fo->known || fo->acked < r->sm.last;
            fprintf(f, "nearline_replication_lag_ms{collection=\"%s\",shard=\"%u\",follower=\"%s\"} %llu\n", r->coll,
                    r->s, l->peer, (unsigned long long)(lag && t > fo->progress_ms ? t - fo->progress_ms : 0));
        }
        pthread_mutex_unlock(&r->mu);
    }
    fprintf(f, "# HELP nearline_replication_in_sync Replicas in the in-sync set (primary included), per shard this "
               "node is primary of.\n# TYPE nearline_replication_in_sync gauge\n");
    for (repl_role *r = cl->repl.roles; r; r = r->next)
        fprintf(f, "nearline_replication_in_sync{collection=\"%s\",shard=\"%u\"} %u\n", r->coll, r->s,
                r->sm.view.nin_sync);
    fprintf(f, "# HELP nearline_replication_epoch The epoch of each shard this node is primary of.\n"
               "# TYPE nearline_replication_epoch gauge\n");
    for (repl_role *r = cl->repl.roles; r; r = r->next)
        fprintf(f, "nearline_replication_epoch{collection=\"%s\",shard=\"%u\"} %llu\n", r->coll, r->s,
                (unsigned long long)r->sm.epoch);
    pthread_mutex_unlock(&cl->repl.mu);
#define C(name, help, v) fprintf(f, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n", (unsigned long long)(v))
    C("nearline_replication_writes_total", "Writes this node acknowledged as a primary, after the write quorum.",
      atomic_load(&cl->repl_writes));
    C("nearline_replication_write_failures_total", "Writes this node ordered as a primary but could not acknowledge.",
      atomic_load(&cl->repl_write_failures));
    fprintf(f, "# HELP nearline_replication_wait_seconds_total Time writers waited for the write quorum (sum).\n"
               "# TYPE nearline_replication_wait_seconds_total counter\nnearline_replication_wait_seconds_total %.6f\n",
            (double)atomic_load(&cl->repl_wait_us) / 1e6);
    C("nearline_replication_in_sync_removals_total", "Followers this node removed from an in-sync set.",
      atomic_load(&cl->isr_removals));
    C("nearline_replication_in_sync_additions_total", "Followers this node added back to an in-sync set.",
      atomic_load(&cl->isr_adds));
    C("nearline_replication_failovers_total", "Primaries this node promoted as coordinator.", atomic_load(&cl->failovers));
    C("nearline_replication_log_trimmed_total", "Log entries trimmed on this node.", atomic_load(&cl->log_trimmed));
    C("nearline_replication_snapshots_total", "Snapshot copies this node sent to followers.",
      atomic_load(&cl->snapshots_sent));
    C("nearline_replication_snapshot_bytes_total", "Bytes of snapshot copies sent (compressed).",
      atomic_load(&cl->snapshot_bytes));
    fprintf(f, "# HELP nearline_replication_snapshot_seconds_total Time spent sending snapshot copies.\n"
               "# TYPE nearline_replication_snapshot_seconds_total counter\nnearline_replication_snapshot_seconds_total "
               "%.3f\n", (double)atomic_load(&cl->snapshot_ms) / 1000.0);
    C("nearline_router_hedged_requests_total", "Shard reads sent to a second replica because the first was slow.",
      atomic_load(&cl->hedged));
#undef C
}
