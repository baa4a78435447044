/* The replication rules (nl_repl.h) under thousands of seeded fault schedules, in
 * milliseconds: a model of one shard's replicas (durable logs and fences, volatile
 * primary state, stale views of the map) runs writes, replication, acknowledgements,
 * in-sync removals and additions by versioned compare-and-set, crashes, restarts,
 * failovers (also of a primary that is alive but cut off, as a pause or a partition
 * makes it) and catch-up by stream or snapshot, each step chosen by the seed. After every
 * step: every acknowledged write is in the current primary's log (and, with quorum all,
 * in every in-sync replica's), and no log holds a value that was never written. The real
 * processes are tested by tests/cluster/replication_test.py; this is the argument. */
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

typedef struct {
    char id[16];
    ent log[MAXLOG + 1]; /* log[1..last] */
    uint64_t last, fence;
    int alive;
    nl_shard_map view;   /* what it last read of the map */
    int32_t view_version;
    /* as the primary of view (volatile) */
    uint64_t acked[MAXN];
    int sent_any[MAXN];
    uint64_t high; /* the highest sequence it acknowledged (or may have: its last when it became primary) */
    int adding[MAXN]; /* followers it has begun to add to the in-sync set (the map write not landed yet) */
    int uncertain[MAXN]; /* ... whose map write's answer was lost: required until it reads the map again */
} node;

typedef struct {
    node n[MAXN];
    int nn, quorum;
    nl_shard_map m; /* the truth (ZooKeeper) */
    int32_t version;
    uint32_t next_val;
    unsigned char acked[MAXLOG * 4]; /* per value: acknowledged to its client */
    uint64_t acks, failovers, snapshots, refused;
    nl_rng r;
} world;

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

static void refresh(world *w, int i)
{
    node *x = &w->n[i];
    memset(x->uncertain, 0, sizeof x->uncertain); /* the map it reads says what landed */
    int was = believes_primary(w, i) ? (int)x->view.shard[0].epoch : -1;
    x->view = w->m;
    x->view_version = w->version;
    if (believes_primary(w, i) && (int)x->view.shard[0].epoch != was) {
        /* newly primary (a restart reads the map fresh): nothing known of the followers */
        memset(x->acked, 0, sizeof x->acked);
        memset(x->sent_any, 0, sizeof x->sent_any);
        memset(x->adding, 0, sizeof x->adding);
        x->high = x->last;
    }
}

/* The message a primary's link sends and the follower's answer, in one step (a link has
 * one request in flight, so nothing reorders on it). */
static void replicate(world *w, int p, int f)
{
    node *P = &w->n[p], *F = &w->n[f];
    uint64_t epoch = P->view.shard[0].epoch;
    if (!F->alive)
        return;
    if (epoch < F->fence) {
        w->refused++;
        return; /* refused: the real primary re-reads the map on this answer */
    }
    F->fence = epoch; /* durable before it answers */
    uint64_t prev = P->sent_any[f] ? P->acked[f] : F->last; /* hello first */
    if (!P->sent_any[f] || F->last != prev || prev > P->last || (prev && F->log[prev].epoch != P->log[prev].epoch)) {
        /* the follower's position decides: stream or snapshot */
        int has = F->last <= P->last;
        nl_catchup c = nl_repl_catchup(F->last, F->log[F->last].epoch, has, has ? P->log[F->last].epoch : 0, P->last);
        if (F->last == 0)
            c = nl_repl_catchup(0, 0, 1, 0, P->last);
        if (c == NL_CATCHUP_SNAPSHOT) {
            memcpy(F->log, P->log, sizeof(ent) * (P->last + 1));
            F->last = P->last;
            w->snapshots++;
        }
        P->acked[f] = F->last;
        P->sent_any[f] = 1;
        return;
    }
    /* stream up to a few entries */
    uint64_t upto = prev + 1 + nl_rng_below(&w->r, 4);
    if (upto > P->last)
        upto = P->last;
    for (uint64_t s = prev + 1; s <= upto; s++)
        F->log[s] = P->log[s];
    if (upto > F->last)
        F->last = upto;
    P->acked[f] = F->last;
}

static void commit(world *w, int p)
{
    node *P = &w->n[p];
    const nl_shard_entry *e = &P->view.shard[0];
    uint64_t acked[MAXN];
    size_t na = 0;
    for (uint32_t i = 0; i < e->nin_sync; i++)
        if (strcmp(e->in_sync[i], P->id))
            acked[na++] = P->acked[idx(w, e->in_sync[i])];
    uint64_t c = nl_repl_committed(P->last, acked, na, w->quorum);
    uint64_t joining[MAXN];
    size_t nj = 0;
    for (int f = 0; f < w->nn; f++)
        if (P->adding[f] || P->uncertain[f])
            joining[nj++] = P->acked[f];
    c = nl_repl_committed_joining(c, joining, nj);
    if (c > P->high)
        P->high = c;
    for (uint64_t s = 1; s <= c; s++)
        if (P->log[s].epoch == e->epoch && !w->acked[P->log[s].val]) { /* its own writes: their clients wait on it */
            w->acked[P->log[s].val] = 1;
            w->acks++;
            T("ack %u by %s (committed %llu)\n", P->log[s].val, P->id, (unsigned long long)c);
        }
}

/* The primary's versioned write of the in-sync set. */
static void set_in_sync(world *w, int p, int f, int in)
{
    node *P = &w->n[p];
    if (P->view_version != w->version) {
        refresh(w, p); /* the compare-and-set failed: re-read */
        return;
    }
    if (!in) {
        const nl_shard_entry *e = &P->view.shard[0];
        uint64_t rest[MAXN];
        size_t nr = 0;
        for (uint32_t i = 0; i < e->nin_sync; i++)
            if (strcmp(e->in_sync[i], P->id) && strcmp(e->in_sync[i], w->n[f].id))
                rest[nr++] = P->acked[idx(w, e->in_sync[i])];
        if (!nl_repl_may_leave(P->last, rest, nr, w->quorum, P->high))
            return;
    }
    nl_shard_map m = w->m;
    if (nl_shard_map_set_in_sync(&m, 0, w->n[f].id, in) != 0)
        return;
    w->m = m;
    w->version++;
    refresh(w, p);
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
    int best = nl_repl_choose(c, nc, nl_repl_failover_quorum(e->nin_sync, w->quorum));
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
    int p = idx(w, c[best].node);
    refresh(w, p);
    for (int f = 0; f < w->nn; f++) /* what it knows from the fence's answers */
        for (size_t i = 0; i < n; i++)
            if (!strcmp(w->n[f].id, in[i])) {
                w->n[p].acked[f] = w->n[f].last;
                w->n[p].sent_any[f] = 1;
            }
}

static void check(world *w, uint64_t seed, int step)
{
    const nl_shard_entry *e = &w->m.shard[0];
    for (int i = 0; i < w->nn; i++)
        for (uint64_t s = 1; s <= w->n[i].last; s++)
            cr_assert(w->n[i].log[s].val < w->next_val, "seed %llu: a value never written", (unsigned long long)seed);
    for (uint32_t r = 0; r < e->nin_sync; r++) {
        if (strcmp(e->in_sync[r], e->primary) && w->quorum == NL_QUORUM_MAJORITY)
            continue;
        const node *x = &w->n[idx(w, e->in_sync[r])];
        unsigned char seen[sizeof w->acked] = {0};
        for (uint64_t s = 1; s <= x->last; s++)
            seen[x->log[s].val] = 1;
        for (uint32_t v = 1; v < w->next_val; v++)
            cr_assert(!w->acked[v] || seen[v],
                      "seed %llu step %d: acknowledged write %u is not on %s (%s, epoch %llu, quorum %s)",
                      (unsigned long long)seed, step, v, x->id, strcmp(x->id, e->primary) ? "in sync" : "primary",
                      (unsigned long long)e->epoch, nl_quorum_name(w->quorum));
    }
}

typedef struct {
    uint64_t acks, failovers, snapshots, refused;
} totals;

static void run(uint64_t seed, totals *t)
{
    world *w = calloc(1, sizeof *w);
    nl_rng_seed(&w->r, seed);
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
    for (int step = 0; step < STEPS; step++) {
        int i = (int)nl_rng_below(&w->r, (uint64_t)w->nn), j = (int)nl_rng_below(&w->r, (uint64_t)w->nn);
        node *x = &w->n[i];
        switch (nl_rng_below(&w->r, 20)) {
        case 0: case 1: case 2: case 3: /* a client's write */
            if (believes_primary(w, i) && x->last < MAXLOG && w->next_val < sizeof w->acked &&
                x->view.shard[0].epoch >= x->fence && x->view.shard[0].epoch >= x->log[x->last].epoch) {
                x->log[++x->last] = (ent){x->view.shard[0].epoch, w->next_val++};
                T("write %u on %s at %llu\n", w->next_val - 1, x->id, (unsigned long long)x->last);
            }
            break;
        case 4: case 5: case 6: case 7: case 8: /* replication */
            if (believes_primary(w, i) && i != j && nl_shard_map_holds(&x->view, 0, w->n[j].id))
                replicate(w, i, j);
            break;
        case 9: case 10: case 11:
            if (believes_primary(w, i))
                commit(w, i);
            break;
        case 12: /* a follower that stopped acknowledging is dropped from the in-sync set */
            if (believes_primary(w, i) && i != j && x->acked[j] < x->last)
                set_in_sync(w, i, j, 0);
            break;
        case 13: /* one that caught up is added back: decided now, the map write lands later */
            if (believes_primary(w, i) && i != j && x->adding[j] && nl_rng_below(&w->r, 4) == 0 &&
                x->view_version == w->version) {
                /* the map write lands but its answer is lost: the primary's view stays old */
                nl_shard_map m = w->m;
                if (nl_shard_map_set_in_sync(&m, 0, w->n[j].id, 1) == 0) {
                    w->m = m;
                    w->version++;
                }
                x->adding[j] = 0;
                x->uncertain[j] = 1;
            } else if (believes_primary(w, i) && i != j && x->adding[j]) {
                set_in_sync(w, i, j, 1);
                x->adding[j] = 0;
            } else if (believes_primary(w, i) && i != j && x->sent_any[j] && x->acked[j] == x->last &&
                       nl_shard_map_holds(&x->view, 0, w->n[j].id) && !nl_shard_map_in_sync(&x->view, 0, w->n[j].id)) {
                x->adding[j] = 1;
            }
            break;
        case 14: /* crash (logs and fences are durable) */
            if (nl_rng_below(&w->r, 3) == 0)
                x->alive = 0;
            break;
        case 15:
            if (!x->alive) {
                x->alive = 1;
                memset(x->acked, 0, sizeof x->acked);
                memset(x->sent_any, 0, sizeof x->sent_any);
                memset(x->adding, 0, sizeof x->adding);
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
            T("step %d: map epoch %llu primary %s in_sync", step, (unsigned long long)w->m.shard[0].epoch, w->m.shard[0].primary);
            for (uint32_t q = 0; q < w->m.shard[0].nin_sync; q++) T(" %s", w->m.shard[0].in_sync[q]);
            T(" | ");
            for (int q = 0; q < w->nn; q++) T("%s%s last %llu fence %llu view %llu; ", w->n[q].id, w->n[q].alive ? "" : "(dead)",
                (unsigned long long)w->n[q].last, (unsigned long long)w->n[q].fence, (unsigned long long)w->n[q].view.shard[0].epoch);
            T("\n");
        }
        check(w, seed, step);
    }
    t->acks += w->acks;
    t->failovers += w->failovers;
    t->snapshots += w->snapshots;
    t->refused += w->refused;
    free(w);
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
        run(strtoull(tr, NULL, 10), &t);
        return;
    }
    if (env && atoi(env) > 0)
        n = atoi(env);
    for (int s = 0; s < n; s++)
        run(0xC0FFEEull + (uint64_t)s, &t);
    /* the schedules reach the cases that matter: not a vacuous pass */
    cr_log_info("%d schedules: %llu writes acknowledged, %llu failovers, %llu snapshot catch-ups, %llu messages of "
                "a deposed primary refused", n, (unsigned long long)t.acks, (unsigned long long)t.failovers,
                (unsigned long long)t.snapshots, (unsigned long long)t.refused);
    cr_assert_gt(t.acks, (uint64_t)n * 5);
    cr_assert_gt(t.failovers, (uint64_t)n / 2);
    cr_assert_gt(t.snapshots, (uint64_t)n / 20);
    cr_assert_gt(t.refused, (uint64_t)n / 20);
}
