/*
 * repl_primary.c — the primary of a shard as a state machine (nl_repl.h): every decision
 * the primary's role and its links make, with nothing of how they are carried out. No
 * I/O, clock, thread or lock in here: time comes in with the events, and the caller
 * (replication.c) holds the role's lock around each step and carries out the actions
 * after it. tests/test_repl.c drives this same code through seeded fault schedules.
 *
 * The rules it applies (docs/cluster.md, "Replication"):
 *  - a follower's position decides how it catches up: stream from the entry both logs
 *    share, or a snapshot (nl_repl_catchup; a follower outside S at 0 gets a snapshot of
 *    a shard with history, not the whole log replayed);
 *  - an answer at a later epoch (409) deposes the primary: it acknowledges nothing more;
 *  - a member of S that made no progress for the replica timeout while entries waited
 *    for it is written out of S, when nl_repl_may_leave allows; one that has caught up is
 *    written back in, and from the moment that is decided until the map says whether it
 *    landed, every write waits for it too (the joining rule);
 *  - a write is acknowledged once a write quorum of S holds it (nl_repl_committed).
 *
 * Invariants (asserted): acked <= last for a known follower's answer clamped to last at
 * commit time; a deposed primary stays deposed; a slot's peer is unique.
 */
#include <stdio.h>
#include <string.h>

#include "nl_repl.h"
#include "nl_util.h"

void nl_repl_primary_init(nl_repl_primary *p, const char *self, uint64_t epoch, int quorum,
                          const nl_shard_entry *entry, int32_t version, uint64_t last, uint64_t now_ms)
{
    memset(p, 0, sizeof *p);
    snprintf(p->self, sizeof p->self, "%s", self);
    p->epoch = epoch;
    p->quorum = quorum;
    p->view = *entry;
    p->version = version;
    p->last = last;
    p->high = last; /* all of it may have been acknowledged before */
    p->rules = NL_REPL_RULES_ALL;
    for (uint32_t i = 0; i < entry->nreplicas; i++)
        if (strcmp(entry->replicas[i], self))
            nl_repl_primary_add(p, entry->replicas[i], now_ms);
}

int nl_repl_primary_add(nl_repl_primary *p, const char *peer, uint64_t now_ms)
{
    int slot = -1;
    for (int i = 0; i < p->nf && slot < 0; i++)
        if (!p->f[i].peer[0])
            slot = i;
    if (slot < 0 && p->nf < NL_MAX_REPLICAS)
        slot = p->nf++;
    if (slot < 0)
        return -1;
    nl_repl_primary_set(p, slot, peer, now_ms);
    return slot;
}

void nl_repl_primary_set(nl_repl_primary *p, int i, const char *peer, uint64_t now_ms)
{
    NL_ASSERT(i >= 0 && i < NL_MAX_REPLICAS);
    nl_repl_follower *f = &p->f[i];
    memset(f, 0, sizeof *f);
    snprintf(f->peer, sizeof f->peer, "%s", peer);
    f->progress_ms = now_ms;
    if (i >= p->nf)
        p->nf = i + 1;
}

void nl_repl_primary_drop(nl_repl_primary *p, int i)
{
    NL_ASSERT(i >= 0 && i < p->nf);
    memset(&p->f[i], 0, sizeof p->f[i]);
}

static int in_list(const char (*list)[NL_NODE_ID_MAX], uint32_t n, const char *id)
{
    for (uint32_t k = 0; k < n; k++)
        if (!strcmp(list[k], id))
            return 1;
    return 0;
}

/* The known acknowledged sequence of peer (0 when unknown or not a follower). */
static uint64_t acked_of(const nl_repl_primary *p, const char *peer)
{
    uint64_t a = 0;
    for (int k = 0; k < p->nf; k++)
        if (p->f[k].peer[0] && !strcmp(p->f[k].peer, peer) && p->f[k].known)
            a = p->f[k].acked;
    return a;
}

size_t nl_repl_primary_acked(const nl_repl_primary *p, const nl_shard_entry *e, const char *skip, uint64_t *out)
{
    size_t n = 0;
    for (uint32_t i = 0; i < e->nin_sync && n < NL_MAX_REPLICAS; i++) {
        if (!strcmp(e->in_sync[i], p->self) || (skip && !strcmp(e->in_sync[i], skip)))
            continue;
        out[n++] = acked_of(p, e->in_sync[i]);
    }
    return n;
}

int nl_repl_primary_may_leave(const nl_repl_primary *p, const nl_shard_entry *e, const char *node)
{
    if (!(p->rules & NL_REPL_RULE_MAY_LEAVE))
        return 1;
    uint64_t rest[NL_MAX_REPLICAS];
    size_t nr = nl_repl_primary_acked(p, e, node, rest);
    return nl_repl_may_leave(p->last, rest, nr, p->quorum, p->high);
}

uint64_t nl_repl_primary_committed(const nl_repl_primary *p)
{
    uint64_t acked[NL_MAX_REPLICAS];
    size_t n = nl_repl_primary_acked(p, &p->view, NULL, acked);
    uint64_t c = nl_repl_committed(p->last, acked, n, p->quorum);
    if (!(p->rules & NL_REPL_RULE_JOINING))
        return c;
    uint64_t joining[NL_MAX_REPLICAS];
    size_t nj = 0;
    for (int k = 0; k < p->nf; k++)
        if (p->f[k].peer[0] && p->f[k].adding)
            joining[nj++] = p->f[k].known ? p->f[k].acked : 0;
    return nl_repl_committed_joining(c, joining, nj);
}

int nl_repl_primary_next(const nl_repl_primary *p, int i, uint64_t *from)
{
    const nl_repl_follower *f = &p->f[i];
    if (p->deposed || !f->peer[0] || !f->known || f->acked >= p->last)
        return 0;
    *from = f->acked + 1;
    return 1;
}

uint64_t nl_repl_primary_keep(const nl_repl_primary *p)
{
    uint64_t keep = UINT64_MAX;
    for (uint32_t k = 0; k < p->view.nin_sync; k++) {
        if (!strcmp(p->view.in_sync[k], p->self))
            continue;
        uint64_t a = acked_of(p, p->view.in_sync[k]);
        if (a < keep)
            keep = a;
    }
    return keep;
}

static void depose(nl_repl_primary *p, nl_repl_actions *out, const char *why)
{
    if (!p->deposed) {
        out->act |= NL_REPL_ACT_DEPOSED;
        out->why = why;
    }
    p->deposed = 1;
    out->act |= NL_REPL_ACT_WAKE;
}

/* A read of the map: the view follows it while this primary's epoch is current. */
static void map_read(nl_repl_primary *p, const nl_shard_entry *e, int32_t version, nl_repl_actions *out)
{
    if (e->epoch != p->epoch || strcmp(e->primary, p->self)) {
        depose(p, out, "the map has a newer epoch for this shard");
        return;
    }
    if (version >= p->version) {
        p->view = *e;
        p->version = version;
    }
    out->act |= NL_REPL_ACT_WAKE;
}

static void position(nl_repl_primary *p, const nl_repl_event *ev, nl_repl_actions *out)
{
    nl_repl_follower *f = &p->f[ev->i];
    if (ev->status == 409) {
        depose(p, out, "a follower is fenced at a later epoch");
        return;
    }
    if (ev->status != 200) {
        f->failing = 1;
        return;
    }
    uint64_t p_last = ev->p_last ? ev->p_last : p->last;
    nl_catchup how = nl_repl_catchup(ev->f_last, ev->f_epoch, ev->p_has, ev->p_epoch_at, p_last);
    /* a follower with nothing, outside S (a move's target, a replica re-created), gets
     * the segments, not the whole history replayed and its graph rebuilt; a member of S
     * at 0 (a collection just created) streams */
    if (ev->f_last == 0 && p_last > 0 && !in_list(p->view.in_sync, p->view.nin_sync, f->peer))
        how = NL_CATCHUP_SNAPSHOT;
    if (how == NL_CATCHUP_SNAPSHOT) {
        out->act |= NL_REPL_ACT_SNAPSHOT;
        return;
    }
    f->acked = ev->f_last;
    f->known = 1;
    f->progress_ms = ev->now_ms;
    out->act |= NL_REPL_ACT_WAKE;
}

static void ack(nl_repl_primary *p, const nl_repl_event *ev, nl_repl_actions *out)
{
    nl_repl_follower *f = &p->f[ev->i];
    if (ev->status == 409) {
        depose(p, out, "a follower is fenced at a later epoch");
    } else if (ev->status == 200 && ev->answer == NL_REPL_ANSWER_OK) {
        if (ev->f_last > f->acked)
            f->progress_ms = ev->now_ms;
        f->acked = ev->f_last;
        out->act |= NL_REPL_ACT_WAKE;
    } else if (ev->answer == NL_REPL_ANSWER_MISMATCH) {
        f->known = 0; /* where the logs agree is asked again */
    } else {
        f->failing = 1; /* it refused an entry (its message is in the follower's log) */
    }
}

/* In-sync upkeep after each exchange: out after the timeout without progress, in once
 * caught up. */
static void tick(nl_repl_primary *p, const nl_repl_event *ev, nl_repl_actions *out)
{
    nl_repl_follower *f = &p->f[ev->i];
    f->failing = ev->failed;
    int in = in_list(p->view.in_sync, p->view.nin_sync, f->peer);
    int listed = in_list(p->view.replicas, p->view.nreplicas, f->peer);
    int caught_up = f->known && f->acked >= p->last;
    if (caught_up)
        f->progress_ms = ev->now_ms;
    int stalled = !caught_up && ev->now_ms - f->progress_ms > ev->timeout_ms;
    if (p->deposed || !listed || ev->retiring || f->adding)
        return;
    if (in && stalled) {
        out->act |= NL_REPL_ACT_IN_SYNC;
        out->in = 0;
    } else if (!in && caught_up) {
        /* from now until the map says so, writes wait for this follower too: none may be
         * acknowledged without it while it joins */
        f->adding = 1;
        out->act |= NL_REPL_ACT_IN_SYNC;
        out->in = 1;
    }
}

static void written(nl_repl_primary *p, const nl_repl_event *ev, nl_repl_actions *out)
{
    nl_repl_follower *f = &p->f[ev->i];
    switch (ev->result) {
    case NL_REPL_WRITE_LANDED:
        if (ev->version >= p->version) {
            p->view = *ev->entry;
            p->version = ev->version;
        }
        f->adding = 0;
        break;
    case NL_REPL_WRITE_DEPOSED:
        f->adding = 0;
        depose(p, out, "the map has a newer epoch for this shard");
        break;
    case NL_REPL_WRITE_LOST:
        if (ev->in) {
            /* it may have landed: the follower stays required until a read says */
            out->act |= NL_REPL_ACT_SETTLE;
            return;
        }
        break;
    default:
        f->adding = 0;
        break;
    }
    out->act |= NL_REPL_ACT_WAKE;
}

void nl_repl_step(nl_repl_primary *p, const nl_repl_event *ev, nl_repl_actions *out)
{
    memset(out, 0, sizeof *out);
    NL_ASSERT(ev->kind == NL_REPL_DURABLE || ev->kind == NL_REPL_MAP || ev->kind == NL_REPL_ANSWERED ||
              ev->kind == NL_REPL_DEPOSE || ev->kind == NL_REPL_STOP ||
              (ev->i >= 0 && ev->i < p->nf && p->f[ev->i].peer[0]));
    switch (ev->kind) {
    case NL_REPL_DURABLE:
        if (ev->seq > p->last)
            p->last = ev->seq;
        out->act |= NL_REPL_ACT_WAKE;
        break;
    case NL_REPL_ANSWERED:
        if (ev->seq > p->high)
            p->high = ev->seq;
        break;
    case NL_REPL_POSITION:
        position(p, ev, out);
        break;
    case NL_REPL_ACK:
        ack(p, ev, out);
        break;
    case NL_REPL_UNKNOWN:
        p->f[ev->i].known = 0;
        break;
    case NL_REPL_TICK:
        tick(p, ev, out);
        break;
    case NL_REPL_MAP:
        map_read(p, ev->entry, ev->version, out);
        if (ev->settled && ev->i >= 0 && ev->i < p->nf)
            p->f[ev->i].adding = 0;
        break;
    case NL_REPL_WRITTEN:
        written(p, ev, out);
        break;
    case NL_REPL_DEPOSE:
        depose(p, out, ev->why ? ev->why : "a later epoch");
        break;
    case NL_REPL_STOP:
        p->deposed = 1;
        out->act |= NL_REPL_ACT_WAKE;
        break;
    }
}
