/* Replication under thousands of seeded fault schedules, in milliseconds. The primary is
 * the shipped state machine (nl_repl_step, cluster/repl_primary.c: the same code
 * replication.c drives with threads and HTTP); around it, a model of one shard's other
 * parts (durable logs and fences of the followers, the coordinator's failover, ZooKeeper's
 * map with versioned compare-and-set, stale views of it) runs writes, link exchanges,
 * acknowledgements, in-sync removals and additions (some of whose answers are lost),
 * crashes, restarts, failovers (also of a primary that is alive but cut off, as a pause or
 * a partition makes it) and catch-up by stream or snapshot, each step chosen by the seed.
 * After every step: every acknowledged write is in the current primary's log (and, with
 * quorum all, in every in-sync replica's), and no log holds a value that was never
 * written. each_rule_is_needed removes one rule at a time and requires a schedule to break
 * the history. The real processes are tested by tests/cluster/replication_test.py; this is
 * the argument. */
#include <string.h>

#include "nl_repl.h"
#include "test_util.h"

#define MAXN 5
#define MAXLOG 2048
#define STEPS 400

static int trace; /* NL_REPL_TRACE=seed prints that schedule's steps */
#define T(...) do { if (trace) fprintf(stderr, __VA_ARGS__); } while (0)

typedef struct {
    uint64_t epoch;
    uint32_t val;
} ent;

/* Rules a mutation run removes, to show the schedules catch each one missing. */
enum { MUT_NONE = 0, MUT_JOINING, MUT_MAY_LEAVE, MUT_FAILOVER_QUORUM, MUT_FENCE };

typedef struct {
    char id[16];
    ent log[MAXLOG + 1]; /* log[1..last] */
    uint64_t last, fence;
    int alive;
    nl_shard_map view;   /* what it last read of the map */
    int32_t view_version;
    /* as the primary of view (volatile): the shipped state machine */
    nl_repl_primary sm;
    int has_sm;
    int settling[MAXN];  /* slots whose add's answer was lost: settled by its next read */
} node;

typedef struct {
    node n[MAXN];
    int nn, quorum, mutation;
    nl_shard_map m; /* the truth (ZooKeeper) */
    int32_t version;
    uint32_t next_val;
    uint64_t now_ms;
    unsigned char acked[MAXLOG * 4]; /* per value: acknowledged to its client */
    uint64_t acks, failovers, snapshots, refused, removals, additions, lost_adds;
    char violation[300];
    nl_rng r;
} world;

#define TIMEOUT_MS 60 /* the replica timeout, in model time (a step is 10 ms) */

static int idx(const world *w, const char *id)
{
    for (int i = 0; i < w->nn; i++)
        if (!strcmp(w->n[i].id, id))
            return i;
    cr_assert_fail("unknown node %s", id);
    return -1;
}

static int believes_primary(const world *w, int i)
{
    return w->n[i].alive && !strcmp(w->n[i].view.shard[0].primary, w->n[i].id);
}

static void step(world *w, node *P, nl_repl_event *ev, nl_repl_actions *a)
{
    ev->now_ms = w->now_ms;
    nl_repl_step(&P->sm, ev, a);
    (void)w;
}

/* A node reads the map. A primary whose epoch is new to it (a promotion, a restart)
 * starts its state machine; one that was primary steps the read (settling the adds whose
 * answers were lost). */
static void refresh(world *w, int i)
{
    node *x = &w->n[i];
    int was = x->has_sm && believes_primary(w, i) ? (int)x->sm.epoch : -1;
    x->view = w->m;
    x->view_version = w->version;
    if (!believes_primary(w, i)) {
        x->has_sm = 0;
        return;
    }
    if ((int)x->view.shard[0].epoch != was) {
        nl_repl_primary_init(&x->sm, x->id, x->view.shard[0].epoch, w->quorum, &x->view.shard[0], w->version, x->last,
                             w->now_ms);
        if (w->mutation == MUT_JOINING)
            x->sm.rules &= ~NL_REPL_RULE_JOINING;
        if (w->mutation == MUT_MAY_LEAVE)
            x->sm.rules &= ~NL_REPL_RULE_MAY_LEAVE;
        x->has_sm = 1;
        memset(x->settling, 0, sizeof x->settling);
        return;
    }
    nl_repl_actions a;
    for (int k = 0; k < x->sm.nf; k++) {
        nl_repl_event ev = {.kind = NL_REPL_MAP, .i = x->settling[k] ? k : -1, .entry = &w->m.shard[0],
                            .version = w->version, .settled = x->settling[k]};
        if (x->settling[k] || k == 0)
            step(w, x, &ev, &a);
        x->settling[k] = 0;
    }
    if (x->sm.nf == 0) {
        nl_repl_event ev = {.kind = NL_REPL_MAP, .i = -1, .entry = &w->m.shard[0], .version = w->version};
        step(w, x, &ev, &a);
    }
    if (x->sm.deposed)
        x->has_sm = 0;
}

/* The follower's side: does it take a message of this epoch (the fence check)? Raises
 * its durable fence when it does. */
static int follower_accepts(world *w, node *F, uint64_t epoch)
{
    if (w->mutation != MUT_FENCE && !nl_repl_accepts(epoch, F->fence, 0))
        return 0;
    if (epoch > F->fence)
        F->fence = epoch; /* durable before it answers */
    return 1;
}

/* The primary's versioned write of the in-sync set the state machine asked for. */
static void set_in_sync(world *w, int p, int k, int in)
{
    node *P = &w->n[p];
    const char *id = P->sm.f[k].peer;
    nl_repl_event ev = {.kind = NL_REPL_WRITTEN, .i = k, .in = in};
    nl_repl_actions a;
    uint64_t roll = nl_rng_below(&w->r, 8);
    if (in && roll == 0) {
        /* the map write lands but its answer is lost: the primary's view stays old */
        nl_shard_map m = w->m;
        if (!strcmp(m.shard[0].primary, P->id) && m.shard[0].epoch == P->sm.epoch &&
            nl_shard_map_set_in_sync(&m, 0, id, 1) == 0) {
            w->m = m;
            w->version++;
        }
        ev.result = NL_REPL_WRITE_LOST;
    } else if (in && roll == 1) {
        ev.result = NL_REPL_WRITE_LOST; /* lost before it reached ZooKeeper */
    } else if (strcmp(w->m.shard[0].primary, P->id) || w->m.shard[0].epoch != P->sm.epoch) {
        ev.result = NL_REPL_WRITE_DEPOSED;
    } else if (!in && !nl_repl_primary_may_leave(&P->sm, &w->m.shard[0], id)) {
        ev.result = NL_REPL_WRITE_REFUSED;
    } else {
        nl_shard_map m = w->m;
        int sr = nl_shard_map_set_in_sync(&m, 0, id, in);
        if (sr < 0) {
            ev.result = NL_REPL_WRITE_REFUSED;
        } else {
            if (sr == 0) {
                w->m = m;
                w->version++;
                if (in)
                    w->additions++;
                else
                    w->removals++;
            }
            ev.result = NL_REPL_WRITE_LANDED;
            ev.entry = &w->m.shard[0];
            ev.version = w->version;
        }
    }
    step(w, P, &ev, &a);
    if (a.act & NL_REPL_ACT_SETTLE) {
        P->settling[k] = 1;
        w->lost_adds++;
    }
    if (P->sm.deposed)
        P->has_sm = 0;
}

/* One exchange of p's link to follower slot k (a link has one request in flight, so
 * nothing reorders on it), then the link's upkeep. */
static void replicate(world *w, int p, int k)
{
    node *P = &w->n[p];
    nl_repl_follower *fo = &P->sm.f[k];
    node *F = &w->n[idx(w, fo->peer)];
    uint64_t epoch = P->sm.epoch;
    nl_repl_event ev = {.i = k};
    nl_repl_actions a = {0};
    int failed = 0;
    if (!F->alive) {
        failed = 1; /* nothing came back */
    } else if (!fo->known) {
        ev.kind = NL_REPL_POSITION;
        if (!follower_accepts(w, F, epoch)) {
            ev.status = 409;
            w->refused++;
        } else {
            ev.status = 200;
            ev.f_last = F->last;
            ev.f_epoch = F->log[F->last].epoch;
            ev.p_has = F->last <= P->last;
            ev.p_epoch_at = ev.p_has ? P->log[F->last].epoch : 0;
            ev.p_last = P->last;
        }
        step(w, P, &ev, &a);
        if (a.act & NL_REPL_ACT_SNAPSHOT) {
            memcpy(F->log, P->log, sizeof(ent) * (P->last + 1));
            F->last = P->last;
            w->snapshots++;
        }
    } else {
        uint64_t from;
        if (nl_repl_primary_next(&P->sm, k, &from)) {
            ev.kind = NL_REPL_ACK;
            if (!follower_accepts(w, F, epoch)) {
                ev.status = 409;
                w->refused++;
            } else if (F->last != from - 1 || F->log[from - 1].epoch != P->log[from - 1].epoch) {
                ev.status = 200;
                ev.answer = NL_REPL_ANSWER_MISMATCH;
                ev.f_last = F->last;
            } else {
                uint64_t upto = from + nl_rng_below(&w->r, 4);
                if (upto > P->last)
                    upto = P->last;
                for (uint64_t s = from; s <= upto; s++)
                    F->log[s] = P->log[s];
                F->last = upto; /* entries after what it follows replace its own */
                ev.status = 200;
                ev.answer = NL_REPL_ANSWER_OK;
                ev.f_last = F->last;
            }
            step(w, P, &ev, &a);
        }
    }
    if (P->sm.deposed) {
        P->has_sm = 0;
        return;
    }
    nl_repl_event t = {.kind = NL_REPL_TICK, .i = k, .timeout_ms = TIMEOUT_MS, .failed = failed};
    step(w, P, &t, &a);
    if (a.act & NL_REPL_ACT_IN_SYNC)
        set_in_sync(w, p, k, a.in);
}

static void commit(world *w, int p)
{
    node *P = &w->n[p];
    uint64_t c = nl_repl_primary_committed(&P->sm);
    for (uint64_t s = 1; s <= c && s <= P->last; s++)
        if (P->log[s].epoch == P->sm.epoch && !w->acked[P->log[s].val]) { /* its own writes: their clients wait */
            w->acked[P->log[s].val] = 1;
            w->acks++;
            nl_repl_event ev = {.kind = NL_REPL_ANSWERED, .i = -1, .seq = s};
            nl_repl_actions a;
            step(w, P, &ev, &a);
            T("ack %u by %s (committed %llu)\n", P->log[s].val, P->id, (unsigned long long)c);
        }
}

static void failover(world *w)
{
    nl_shard_entry *e = &w->m.shard[0];
    nl_repl_candidate c[MAXN];
    size_t nc = 0;
    uint64_t ne = e->epoch + 1;
    for (uint32_t i = 0; i < e->nin_sync; i++) {
        int k = idx(w, e->in_sync[i]);
        if (!strcmp(e->in_sync[i], e->primary) || !w->n[k].alive || nl_rng_below(&w->r, 5) == 0)
            continue; /* the old primary, a dead node, or one the coordinator cannot reach */
        node *x = &w->n[k];
        if (x->fence > ne)
            continue;
        x->fence = ne;
        c[nc++] = (nl_repl_candidate){x->id, x->last, x->log[x->last].epoch};
    }
    uint32_t needed = w->mutation == MUT_FAILOVER_QUORUM ? 1 : nl_repl_failover_quorum(e->nin_sync, w->quorum);
    int best = nl_repl_choose(c, nc, needed);
    if (best < 0)
        return;
    const char *in[MAXN];
    size_t n = 0;
    in[n++] = c[best].node;
    for (size_t i = 0; i < nc; i++)
        if ((int)i != best && c[i].last_seq == c[best].last_seq && c[i].last_epoch == c[best].last_epoch)
            in[n++] = c[i].node;
    nl_shard_map m = w->m;
    cr_assert_eq(nl_shard_map_promote(&m, 0, c[best].node, in, n), 0);
    cr_assert_eq(m.shard[0].epoch, ne);
    w->m = m;
    w->version++;
    w->failovers++;
    refresh(w, idx(w, c[best].node));
}

/* 0 when the history holds; otherwise 1 with the violation described. */
static int check(world *w, uint64_t seed, int step_no)
{
    const nl_shard_entry *e = &w->m.shard[0];
    for (int i = 0; i < w->nn; i++)
        for (uint64_t s = 1; s <= w->n[i].last; s++)
            if (w->n[i].log[s].val >= w->next_val) {
                snprintf(w->violation, sizeof w->violation, "seed %llu: a value never written",
                         (unsigned long long)seed);
                return 1;
            }
    for (uint32_t r = 0; r < e->nin_sync; r++) {
        if (strcmp(e->in_sync[r], e->primary) && w->quorum == NL_QUORUM_MAJORITY)
            continue;
        const node *x = &w->n[idx(w, e->in_sync[r])];
        unsigned char seen[sizeof w->acked] = {0};
        for (uint64_t s = 1; s <= x->last; s++)
            seen[x->log[s].val] = 1;
        for (uint32_t v = 1; v < w->next_val; v++)
            if (w->acked[v] && !seen[v]) {
                snprintf(w->violation, sizeof w->violation,
                         "seed %llu step %d: acknowledged write %u is not on %s (%s, epoch %llu, quorum %s)",
                         (unsigned long long)seed, step_no, v, x->id, strcmp(x->id, e->primary) ? "in sync" : "primary",
                         (unsigned long long)e->epoch, nl_quorum_name(w->quorum));
                return 1;
            }
    }
    return 0;
}

typedef struct {
    uint64_t acks, failovers, snapshots, refused, removals, additions, lost_adds;
} totals;

/* One schedule; 1 when it broke the history (w->violation says how, printed when
 * report is set). */
static int run(uint64_t seed, totals *t, int mutation, int report)
{
    world *w = calloc(1, sizeof *w);
    nl_rng_seed(&w->r, seed);
    w->mutation = mutation;
    w->nn = 2 + (int)nl_rng_below(&w->r, 4); /* RF 2..5 */
    w->quorum = nl_rng_below(&w->r, 2) ? NL_QUORUM_MAJORITY : NL_QUORUM_ALL;
    w->next_val = 1;
    nl_node_info nodes[MAXN];
    for (int i = 0; i < w->nn; i++) {
        snprintf(w->n[i].id, sizeof w->n[i].id, "n%d", i);
        memset(&nodes[i], 0, sizeof nodes[i]);
        snprintf(nodes[i].id, sizeof nodes[i].id, "n%d", i);
        w->n[i].alive = 1;
    }
    nl_cluster_collection cc = {.name = "c", .cfg = {.shards = 1}, .replicas = (uint32_t)w->nn};
    cr_assert_eq(nl_shard_map_place(nodes, (size_t)w->nn, NULL, &cc, &w->m), 0);
    for (int i = 0; i < w->nn; i++)
        refresh(w, i);
    int broke = 0;
    for (int step_no = 0; step_no < STEPS && !broke; step_no++) {
        w->now_ms += 10;
        int i = (int)nl_rng_below(&w->r, (uint64_t)w->nn);
        node *x = &w->n[i];
        int primary = believes_primary(w, i) && x->has_sm && !x->sm.deposed;
        switch (nl_rng_below(&w->r, 20)) {
        case 0: case 1: case 2: case 3: /* a client's write */
            if (primary && x->last < MAXLOG && w->next_val < sizeof w->acked &&
                nl_repl_accepts(x->sm.epoch, x->fence, 0) && x->sm.epoch >= x->log[x->last].epoch) {
                x->log[++x->last] = (ent){x->sm.epoch, w->next_val++};
                nl_repl_event ev = {.kind = NL_REPL_DURABLE, .i = -1, .seq = x->last};
                nl_repl_actions a;
                step(w, x, &ev, &a);
                T("write %u on %s at %llu\n", w->next_val - 1, x->id, (unsigned long long)x->last);
            }
            break;
        case 4: case 5: case 6: case 7: case 8: case 12: case 13: /* one exchange of a link, and its upkeep */
            if (primary && x->sm.nf > 0) {
                int k = (int)nl_rng_below(&w->r, (uint64_t)x->sm.nf);
                if (x->sm.f[k].peer[0])
                    replicate(w, i, k);
            }
            break;
        case 9: case 10: case 11: /* writers waiting on the primary look at what is committed */
            if (primary)
                commit(w, i);
            break;
        case 14: /* crash (logs and fences are durable) */
            if (nl_rng_below(&w->r, 3) == 0) {
                x->alive = 0;
                x->has_sm = 0;
            }
            break;
        case 15:
            if (!x->alive) {
                x->alive = 1;
                refresh(w, i);
            }
            break;
        case 16: case 17: /* the primary's session ended: dead, or alive but cut off */
            if (!w->n[idx(w, w->m.shard[0].primary)].alive || nl_rng_below(&w->r, 4) == 0)
                failover(w);
            break;
        default: /* a node reads the map */
            if (x->alive)
                refresh(w, i);
            break;
        }
        if (trace) {
            T("step %d: map epoch %llu primary %s in_sync", step_no, (unsigned long long)w->m.shard[0].epoch,
              w->m.shard[0].primary);
            for (uint32_t q = 0; q < w->m.shard[0].nin_sync; q++) T(" %s", w->m.shard[0].in_sync[q]);
            T(" | ");
            for (int q = 0; q < w->nn; q++) T("%s%s last %llu fence %llu view %llu; ", w->n[q].id, w->n[q].alive ? "" : "(dead)",
                (unsigned long long)w->n[q].last, (unsigned long long)w->n[q].fence, (unsigned long long)w->n[q].view.shard[0].epoch);
            T("\n");
        }
        broke = check(w, seed, step_no);
    }
    if (broke && report)
        cr_log_error("%s", w->violation);
    t->acks += w->acks;
    t->failovers += w->failovers;
    t->snapshots += w->snapshots;
    t->refused += w->refused;
    t->removals += w->removals;
    t->additions += w->additions;
    t->lost_adds += w->lost_adds;
    free(w);
    return broke;
}

Test(repl, rules)
{
    cr_assert_eq(nl_repl_write_quorum(3, NL_QUORUM_ALL), 3);
    cr_assert_eq(nl_repl_write_quorum(3, NL_QUORUM_MAJORITY), 2);
    cr_assert_eq(nl_repl_write_quorum(2, NL_QUORUM_MAJORITY), 2);
    cr_assert_eq(nl_repl_failover_quorum(3, NL_QUORUM_ALL), 1);
    cr_assert_eq(nl_repl_failover_quorum(3, NL_QUORUM_MAJORITY), 2);
    cr_assert_eq(nl_repl_failover_quorum(5, NL_QUORUM_MAJORITY), 3);
    cr_assert_eq(nl_repl_failover_quorum(2, NL_QUORUM_MAJORITY), 1);
    uint64_t a[2] = {7, 4};
    cr_assert_eq(nl_repl_committed(9, a, 2, NL_QUORUM_ALL), 4);
    cr_assert_eq(nl_repl_committed(9, a, 2, NL_QUORUM_MAJORITY), 7);
    cr_assert_eq(nl_repl_committed(9, NULL, 0, NL_QUORUM_ALL), 9);
    uint64_t stale[1] = {12};
    cr_assert_eq(nl_repl_committed(9, stale, 1, NL_QUORUM_ALL), 9, "an answer above the primary is clamped");
    nl_repl_candidate c[3] = {{"a", 5, 2}, {"b", 9, 1}, {"c", 5, 2}};
    cr_assert_eq(nl_repl_choose(c, 3, 1), 0, "a later epoch wins over a longer log");
    cr_assert_eq(nl_repl_choose(c, 1, 2), -1);
    cr_assert_eq(nl_repl_catchup(5, 2, 1, 2, 9), NL_CATCHUP_STREAM);
    cr_assert_eq(nl_repl_catchup(9, 2, 1, 2, 9), NL_CATCHUP_NONE);
    cr_assert_eq(nl_repl_catchup(5, 1, 1, 2, 9), NL_CATCHUP_SNAPSHOT, "a divergent entry");
    cr_assert_eq(nl_repl_catchup(10, 2, 0, 0, 9), NL_CATCHUP_SNAPSHOT, "entries the primary lacks");
    cr_assert_eq(nl_repl_catchup(3, 1, 0, 0, 9), NL_CATCHUP_SNAPSHOT, "trimmed away");
}

Test(repl, map_edits)
{
    nl_node_info nodes[3] = {{.id = "a"}, {.id = "b"}, {.id = "c"}};
    nl_cluster_collection cc = {.name = "x", .cfg = {.shards = 2}, .replicas = 3};
    nl_shard_map m;
    cr_assert_eq(nl_shard_map_place(nodes, 3, NULL, &cc, &m), 0);
    cr_assert_eq(m.shard[0].nin_sync, 3);
    const char *p = m.shard[0].primary;
    cr_assert_eq(nl_shard_map_set_in_sync(&m, 0, p, 0), NL_EINVAL, "the primary stays in sync");
    const char *f = m.shard[0].replicas[1];
    cr_assert_eq(nl_shard_map_set_in_sync(&m, 0, f, 0), 0);
    cr_assert_eq(nl_shard_map_set_in_sync(&m, 0, f, 0), 1);
    cr_assert(!nl_shard_map_in_sync(&m, 0, f));
    cr_assert_eq(nl_shard_map_set_in_sync(&m, 0, "zz", 1), NL_EINVAL);
    /* round trip with the in-sync set */
    char *txt = nl_shard_map_encode(&m);
    nl_shard_map back;
    cr_assert_eq(nl_shard_map_decode(txt, strlen(txt), &back), 0, "%s", nl_errdetail());
    cr_assert_eq(back.shard[0].nin_sync, 2);
    cr_assert(!nl_shard_map_in_sync(&back, 0, f));
    free(txt);
    /* a map from before replication: every replica in sync */
    const char *old = "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\","
                      "\"replicas\":[\"a\",\"b\"],\"state\":\"active\"}]}";
    cr_assert_eq(nl_shard_map_decode(old, strlen(old), &back), 0, "%s", nl_errdetail());
    cr_assert_eq(back.shard[0].nin_sync, 2);
    /* hostile in-sync sets */
    const char *bad[] = {
        "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\",\"replicas\":[\"a\",\"b\"],\"in_sync\":[\"b\"],\"state\":\"active\"}]}",
        "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\",\"replicas\":[\"a\",\"b\"],\"in_sync\":[\"a\",\"a\"],\"state\":\"active\"}]}",
        "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\",\"replicas\":[\"a\",\"b\"],\"in_sync\":[\"a\",\"q\"],\"state\":\"active\"}]}",
        "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\",\"replicas\":[\"a\",\"b\"],\"in_sync\":\"a\",\"state\":\"active\"}]}",
        "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\",\"replicas\":[\"a\",\"b\"],\"in_sync\":[7],\"state\":\"active\"}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(nl_shard_map_decode(bad[i], strlen(bad[i]), &back), NL_ECORRUPT, "case %zu", i);
    /* promotion */
    cr_assert_eq(nl_shard_map_set_in_sync(&m, 0, f, 1), 0);
    const char *in[2] = {f, m.shard[0].replicas[2]};
    uint64_t e0 = m.shard[0].epoch;
    char newp[NL_NODE_ID_MAX];
    snprintf(newp, sizeof newp, "%s", f);
    cr_assert_eq(nl_shard_map_promote(&m, 0, newp, in, 2), 0);
    cr_assert_str_eq(m.shard[0].primary, newp);
    cr_assert_str_eq(m.shard[0].replicas[0], newp);
    cr_assert_eq(m.shard[0].epoch, e0 + 1);
    cr_assert_eq(m.shard[0].nreplicas, 3, "the old primary stays a replica, to catch up");
    cr_assert_eq(m.shard[0].nin_sync, 2);
    const char *nope[1] = {"c"};
    cr_assert_eq(nl_shard_map_promote(&m, 0, "a", nope, 1), NL_EINVAL, "the new primary must be in sync");
    /* the collection's quorum round-trips and defaults to all */
    cc.write_quorum = NL_QUORUM_MAJORITY;
    snprintf(cc.uid, sizeof cc.uid, "abc");
    cc.cfg = (nl_collection_config){.dim = 4, .shards = 2, .R = 8, .L = 8, .alpha = 1.2f, .pq_bytes = 2,
                                    .fresh_capacity = 10};
    txt = nl_cluster_collection_encode(&cc);
    nl_cluster_collection c2;
    cr_assert_eq(nl_cluster_collection_decode(txt, strlen(txt), &c2), 0, "%s", nl_errdetail());
    cr_assert_eq(c2.write_quorum, NL_QUORUM_MAJORITY);
    free(txt);
}

Test(repl, fault_schedules)
{
    totals t = {0};
    int n = 3000;
    const char *env = getenv("NL_REPL_SCHEDULES");
    const char *tr = getenv("NL_REPL_TRACE");
    if (tr) {
        trace = 1;
        run(strtoull(tr, NULL, 10), &t, MUT_NONE, 1);
        return;
    }
    if (env && atoi(env) > 0)
        n = atoi(env);
    int broken = 0;
    for (int s = 0; s < n && !broken; s++)
        broken = run(0xC0FFEEull + (uint64_t)s, &t, MUT_NONE, 1);
    cr_assert(!broken, "a schedule broke the history (the log above says how)");
    /* the schedules reach the cases that matter: not a vacuous pass */
    cr_log_info("%d schedules: %llu writes acknowledged, %llu failovers, %llu snapshot catch-ups, %llu messages of "
                "a deposed primary refused, %llu in-sync removals, %llu additions, %llu adds whose answer was lost",
                n, (unsigned long long)t.acks, (unsigned long long)t.failovers, (unsigned long long)t.snapshots,
                (unsigned long long)t.refused, (unsigned long long)t.removals, (unsigned long long)t.additions,
                (unsigned long long)t.lost_adds);
    cr_assert_gt(t.acks, (uint64_t)n * 5);
    cr_assert_gt(t.failovers, (uint64_t)n / 2);
    cr_assert_gt(t.snapshots, (uint64_t)n / 20);
    cr_assert_gt(t.refused, (uint64_t)n / 20);
    cr_assert_gt(t.removals, (uint64_t)n / 20);
    cr_assert_gt(t.additions, (uint64_t)n / 20);
    cr_assert_gt(t.lost_adds, (uint64_t)n / 50);
}

/* The schedules are only an argument if they fail without each rule: remove one at a
 * time (from the shipped state machine, or from the model's failover and follower, which
 * apply the shipped pure rules) and some schedule must break the history. */
Test(repl, each_rule_is_needed)
{
    static const struct {
        int mutation;
        const char *rule;
    } rules[] = {{MUT_JOINING, "the joining rule"},
                 {MUT_MAY_LEAVE, "a member holding writes the rest lack stays in sync"},
                 {MUT_FAILOVER_QUORUM, "the failover quorum"},
                 {MUT_FENCE, "the fence check"}};
    for (size_t r = 0; r < sizeof rules / sizeof rules[0]; r++) {
        totals t = {0};
        int found = -1;
        for (int s = 0; s < 20000 && found < 0; s++)
            if (run(0xBADC0DEull + (uint64_t)s, &t, rules[r].mutation, 0))
                found = s;
        cr_log_info("without %s: schedule %d broke the history", rules[r].rule, found);
        cr_assert_geq(found, 0, "without %s no schedule broke the history: the model does not test it", rules[r].rule);
    }
}
