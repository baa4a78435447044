/*
 * test_rebalance.c — the move record in the shard map (nl_shard_map_move_*, its encoding
 * as untrusted bytes) and the coordinator's planner (nl_plan_moves), driven directly.
 *
 * The planner is checked the way it runs: plan, apply every move (begin, then finish as
 * the primary would once the target is in sync), plan again, until nothing is planned —
 * over thousands of seeded random clusters (nodes joining, drained, gone past their
 * grace period; several collections and replication factors). Invariants after every
 * step: no node holds two replicas of a shard, every shard keeps its replication factor,
 * a shard moves one replica at a time, no node takes part in more moves than allowed; at
 * the end: drained and gone nodes hold nothing (when enough other nodes exist), the rest
 * differ by at most the drift, and it got there in a bounded number of rounds (no
 * oscillation).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nl_rebalance.h"
#include "nl_shardmap.h"

static void node(nl_node_info *n, const char *id)
{
    memset(n, 0, sizeof *n);
    snprintf(n->id, sizeof n->id, "%.63s", id);
    snprintf(n->address, sizeof n->address, "127.0.0.1:1");
    n->disk_free = 1ull << 40;
}

/* A map of S shards over nodes ids[0..n) round robin, rf replicas each, all in sync. */
static void make_map(nl_shard_map *m, const char *name, uint32_t S, uint32_t rf, char (*ids)[NL_NODE_ID_MAX], size_t n,
                     size_t start)
{
    memset(m, 0, sizeof *m);
    snprintf(m->collection, sizeof m->collection, "%.71s", name);
    snprintf(m->uid, sizeof m->uid, "u%.18s", name);
    m->nshards = S;
    for (uint32_t s = 0; s < S; s++) {
        nl_shard_entry *e = &m->shard[s];
        e->epoch = 1;
        for (uint32_t r = 0; r < rf; r++)
            snprintf(e->replicas[r], NL_NODE_ID_MAX, "%.63s", ids[(start + s + r) % n]);
        e->nreplicas = rf;
        memcpy(e->in_sync, e->replicas, sizeof e->in_sync);
        e->nin_sync = rf;
        memcpy(e->primary, e->replicas[0], NL_NODE_ID_MAX);
    }
}

Test(moves, begin_finish_rollback)
{
    char ids[3][NL_NODE_ID_MAX] = {"a", "b", "c"};
    nl_shard_map m;
    make_map(&m, "x", 2, 2, ids, 2, 0); /* shard 0: a,b  shard 1: b,a */
    cr_assert_eq(nl_shard_map_move_begin(&m, 0, "c", "a", 1, 5, "balance"), NL_EINVAL); /* c holds none */
    cr_assert_eq(nl_shard_map_move_begin(&m, 0, "a", "b", 1, 5, "balance"), NL_EINVAL); /* b holds one */
    cr_assert_eq(nl_shard_map_move_begin(&m, 0, "b", "c", 7, 5, "drain"), 0);
    cr_assert_eq(m.shard[0].state, NL_SHARD_MOVING);
    cr_assert_eq(m.shard[0].nreplicas, 3);
    cr_assert_eq(m.shard[0].nin_sync, 2);
    cr_assert_eq(nl_shard_map_move_begin(&m, 0, "a", "c", 8, 5, "x"), NL_EINVAL); /* one move at a time */
    cr_assert_eq(nl_shard_map_move_finish(&m, 0), NL_EINVAL);                   /* c not in sync yet */
    /* rollback while not in sync: c goes */
    nl_shard_map r = m;
    cr_assert_eq(nl_shard_map_move_rollback(&r, 0), 0);
    cr_assert_eq(r.shard[0].nreplicas, 2);
    cr_assert_eq(r.shard[0].state, NL_SHARD_ACTIVE);
    cr_assert(!nl_shard_map_holds(&r, 0, "c"));
    /* c joins the in-sync set: no rollback now; finish removes b */
    cr_assert_eq(nl_shard_map_set_in_sync(&m, 0, "c", 1), 0);
    cr_assert_eq(nl_shard_map_move_rollback(&m, 0), NL_EINVAL);
    cr_assert_eq(nl_shard_map_move_finish(&m, 0), 0);
    cr_assert_eq(m.shard[0].nreplicas, 2);
    cr_assert(!nl_shard_map_holds(&m, 0, "b"));
    cr_assert(nl_shard_map_in_sync(&m, 0, "c"));
    cr_assert_str_eq(m.shard[0].primary, "a");
    cr_assert_eq(m.shard[0].epoch, 1); /* the primary did not change */
    /* a primary's move: the target becomes primary at epoch + 1, listed first */
    cr_assert_eq(nl_shard_map_move_begin(&m, 1, "b", "c", 9, 5, "operator"), 0);
    nl_shard_map_set_in_sync(&m, 1, "c", 1);
    cr_assert_eq(nl_shard_map_move_finish(&m, 1), 0);
    cr_assert_str_eq(m.shard[1].primary, "c");
    cr_assert_str_eq(m.shard[1].replicas[0], "c");
    cr_assert_eq(m.shard[1].epoch, 2);
    cr_assert(!nl_shard_map_in_sync(&m, 1, "b"));
}

Test(moves, full_entry_and_rf5)
{
    char ids[6][NL_NODE_ID_MAX] = {"a", "b", "c", "d", "e", "f"};
    nl_shard_map m;
    make_map(&m, "x", 1, 5, ids, 5, 0);
    cr_assert_eq(nl_shard_map_move_begin(&m, 0, "a", "f", 1, 1, "balance"), 0); /* RF 5 moves: a sixth copy */
    cr_assert_eq(m.shard[0].nreplicas, 6);
    char *t = nl_shard_map_encode(&m);
    nl_shard_map d;
    cr_assert_eq(nl_shard_map_decode(t, strlen(t), &d), 0);
    cr_assert_eq(d.shard[0].nreplicas, 6);
    free(t);
}

Test(moves, encoding_round_trip_and_hostile_bytes)
{
    char ids[3][NL_NODE_ID_MAX] = {"a", "b", "c"};
    nl_shard_map m, d;
    make_map(&m, "x", 3, 2, ids, 3, 0);
    cr_assert_eq(nl_shard_map_move_begin(&m, 1, "c", "a", 123456789, 42, "replace"), 0);
    char *t = nl_shard_map_encode(&m);
    cr_assert_eq(nl_shard_map_decode(t, strlen(t), &d), 0);
    cr_assert_eq(d.shard[1].state, NL_SHARD_MOVING);
    cr_assert_str_eq(d.shard[1].move.from, "c");
    cr_assert_str_eq(d.shard[1].move.to, "a");
    cr_assert_eq(d.shard[1].move.id, 123456789);
    cr_assert_eq(d.shard[1].move.started_ms, 42);
    cr_assert_str_eq(d.shard[1].move.reason, "replace");
    cr_assert_eq(d.shard[0].state, NL_SHARD_ACTIVE);
    /* every truncation and every single-byte change is refused or decodes to a map whose
     * moves still name two of their shard's replicas */
    size_t n = strlen(t);
    for (size_t cut = 0; cut < n; cut++)
        (void)nl_shard_map_decode(t, cut, &d);
    for (size_t i = 0; i < n; i++) {
        char *b = strdup(t);
        b[i] = (char)(b[i] ^ 0x21);
        if (nl_shard_map_decode(b, n, &d) == 0)
            for (uint32_t s = 0; s < d.nshards; s++)
                if (d.shard[s].state == NL_SHARD_MOVING) {
                    cr_assert(nl_shard_map_holds(&d, s, d.shard[s].move.to));
                    cr_assert(nl_shard_map_holds(&d, s, d.shard[s].move.from));
                }
        free(b);
    }
    free(t);
    /* a moving state without its record, and a record naming a node that holds nothing */
    const char *bad1 = "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\","
                       "\"replicas\":[\"a\"],\"in_sync\":[\"a\"],\"state\":\"moving\"}]}";
    const char *bad2 = "{\"collection\":\"x\",\"uid\":\"u\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"a\","
                       "\"replicas\":[\"a\",\"b\"],\"in_sync\":[\"a\"],\"state\":\"moving\",\"move\":{\"from\":\"a\","
                       "\"to\":\"z\",\"id\":1,\"started_ms\":1,\"reason\":\"x\"}}]}";
    cr_assert_eq(nl_shard_map_decode(bad1, strlen(bad1), &d), NL_ECORRUPT);
    cr_assert_eq(nl_shard_map_decode(bad2, strlen(bad2), &d), NL_ECORRUPT);
}

/* ---------------------------------------------------------------- the planner */

typedef struct {
    nl_node_info nodes[NL_MAX_NODES];
    size_t nnodes;
    char drained[NL_MAX_NODES][NL_NODE_ID_MAX];
    size_t ndrained;
    char gone[NL_MAX_NODES][NL_NODE_ID_MAX];
    size_t ngone;
    nl_shard_map maps[3];
    uint32_t rf[3];
    size_t nmaps;
    uint32_t maxm, drift;
    double disk_drift;
} world;

static nl_shard_map *map_of(world *w, const char *name)
{
    for (size_t i = 0; i < w->nmaps; i++)
        if (!strcmp(w->maps[i].collection, name))
            return &w->maps[i];
    return NULL;
}

static size_t plan(world *w, nl_move_plan *out, size_t cap)
{
    const nl_shard_map *mp[3];
    for (size_t i = 0; i < w->nmaps; i++)
        mp[i] = &w->maps[i];
    nl_plan_input in = {.nodes = w->nodes, .nnodes = w->nnodes, .drained = w->drained, .ndrained = w->ndrained,
                        .gone = w->gone, .ngone = w->ngone, .maps = mp, .nmaps = w->nmaps,
                        .max_moves_per_node = w->maxm, .drift = w->drift, .disk_drift = w->disk_drift,
                        .min_bytes = 1};
    size_t n = 0;
    cr_assert_eq(nl_plan_moves(&in, out, cap, &n), 0);
    return n;
}

static int listed(char (*l)[NL_NODE_ID_MAX], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(l[i], id))
            return 1;
    return 0;
}

static uint32_t held(world *w, const char *id)
{
    uint32_t h = 0;
    for (size_t i = 0; i < w->nmaps; i++)
        for (uint32_t s = 0; s < w->maps[i].nshards; s++)
            h += (uint32_t)nl_shard_map_holds(&w->maps[i], s, id);
    return h;
}

/* One round: plan, check the plan, apply it (begin, the target catches up, finish). */
static size_t round_once(world *w)
{
    nl_move_plan p[64];
    size_t n = plan(w, p, 64);
    uint32_t busy[NL_MAX_NODES] = {0};
    for (size_t k = 0; k < n; k++) {
        nl_shard_map *m = map_of(w, p[k].collection);
        cr_assert(m);
        for (size_t j = 0; j < k; j++) /* one move per shard */
            cr_assert(strcmp(p[j].collection, p[k].collection) || p[j].shard != p[k].shard);
        cr_assert(!listed(w->drained, w->ndrained, p[k].to), "a drained node is a target");
        cr_assert(!listed(w->gone, w->ngone, p[k].to), "a gone node is a target");
        int live_to = 0;
        for (size_t i = 0; i < w->nnodes; i++) {
            if (!strcmp(w->nodes[i].id, p[k].to)) live_to = 1, busy[i]++;
            if (!strcmp(w->nodes[i].id, p[k].from)) busy[i]++;
        }
        cr_assert(live_to, "a target that is not live");
        cr_assert_eq(nl_shard_map_move_begin(m, p[k].shard, p[k].from, p[k].to, k + 1, 1, p[k].reason), 0,
                     "planned an impossible move %s/%u %s->%s", p[k].collection, p[k].shard, p[k].from, p[k].to);
    }
    for (size_t i = 0; i < w->nnodes; i++)
        cr_assert_leq(busy[i], w->maxm ? w->maxm : 1, "node %s in %u moves", w->nodes[i].id, busy[i]);
    for (size_t i = 0; i < w->nmaps; i++)
        for (uint32_t s = 0; s < w->maps[i].nshards; s++) {
            nl_shard_map *m = &w->maps[i];
            if (m->shard[s].state != NL_SHARD_MOVING)
                continue;
            cr_assert_eq(nl_shard_map_set_in_sync(m, s, m->shard[s].move.to, 1), 0);
            cr_assert_eq(nl_shard_map_move_finish(m, s), 0);
            cr_assert_eq(m->shard[s].nreplicas, w->rf[i], "a shard lost or gained a replica");
            for (uint32_t a = 0; a < m->shard[s].nreplicas; a++)
                for (uint32_t b = 0; b < a; b++)
                    cr_assert(strcmp(m->shard[s].replicas[a], m->shard[s].replicas[b]), "two replicas on one node");
        }
    return n;
}

static void settle(world *w, int max_rounds)
{
    int r = 0;
    while (round_once(w) && ++r < max_rounds) {}
    cr_assert_lt(r, max_rounds, "the planner did not settle in %d rounds", max_rounds);
}

static void grow(world *w, const char *id) { node(&w->nodes[w->nnodes++], id); }

Test(planner, scale_out_balances)
{
    world *w = calloc(1, sizeof *w);
    char ids[3][NL_NODE_ID_MAX] = {"a", "b", "c"};
    grow(w, "a"), grow(w, "b"), grow(w, "c");
    make_map(&w->maps[0], "x", 8, 2, ids, 3, 0);
    w->rf[0] = 2;
    w->nmaps = 1;
    nl_move_plan p[8];
    cr_assert_eq(plan(w, p, 8), 0, "a balanced cluster moves nothing");
    grow(w, "d");
    settle(w, 50);
    for (size_t i = 0; i < w->nnodes; i++)
        cr_assert_eq(held(w, w->nodes[i].id), 4, "%s holds %u", w->nodes[i].id, held(w, w->nodes[i].id));
    free(w);
}

Test(planner, drain_and_replace)
{
    world *w = calloc(1, sizeof *w);
    char ids[4][NL_NODE_ID_MAX] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        grow(w, ids[i]);
    make_map(&w->maps[0], "x", 12, 2, ids, 4, 0);
    w->rf[0] = 2;
    w->nmaps = 1;
    snprintf(w->drained[w->ndrained++], NL_NODE_ID_MAX, "b");
    settle(w, 60);
    cr_assert_eq(held(w, "b"), 0);
    /* d goes: its replicas are re-created on the others, except shards whose primary it is
     * (a failover comes first) */
    w->nnodes = 3; /* a, b, c live: b drained */
    snprintf(w->gone[w->ngone++], NL_NODE_ID_MAX, "d");
    uint32_t prim = 0;
    for (uint32_t s = 0; s < 12; s++)
        prim += !strcmp(w->maps[0].shard[s].primary, "d");
    settle(w, 60);
    cr_assert_eq(held(w, "d"), prim, "d still holds %u, primary of %u", held(w, "d"), prim);
    cr_assert_eq(held(w, "b"), 0);
    free(w);
}

Test(planner, moves_per_node_and_bytes)
{
    world *w = calloc(1, sizeof *w);
    char ids[2][NL_NODE_ID_MAX] = {"a", "b"};
    grow(w, "a"), grow(w, "b");
    make_map(&w->maps[0], "x", 16, 1, ids, 1, 0); /* all on a */
    w->rf[0] = 1;
    w->nmaps = 1;
    w->maxm = 2;
    nl_move_plan p[64];
    cr_assert_eq(plan(w, p, 64), 2, "at most 2 moves per node");
    settle(w, 40);
    cr_assert_eq(held(w, "a"), 8);
    /* equal counts, but a holds 4x the bytes: one replica goes */
    w->nodes[0].used_bytes = 4000, w->nodes[1].used_bytes = 1000;
    w->maxm = 1;
    cr_assert_eq(plan(w, p, 64), 1);
    cr_assert_str_eq(p[0].from, "a");
    /* the byte rule off */
    w->disk_drift = -1;
    cr_assert_eq(plan(w, p, 64), 0);
    w->disk_drift = 0;
    /* close to the mean: nothing */
    w->nodes[0].used_bytes = 1100;
    cr_assert_eq(plan(w, p, 64), 0);
    free(w);
}

Test(planner, random_clusters_settle)
{
    world *w = calloc(1, sizeof *w);
    unsigned seed = 12345;
    int worlds = getenv("NL_PLAN_WORLDS") ? atoi(getenv("NL_PLAN_WORLDS")) : 2000;
    for (int it = 0; it < worlds; it++) {
        memset(w, 0, sizeof *w);
        size_t nn = 2 + (size_t)(rand_r(&seed) % 9);
        char ids[16][NL_NODE_ID_MAX];
        for (size_t i = 0; i < nn; i++)
            snprintf(ids[i], NL_NODE_ID_MAX, "n%zu", i);
        size_t placed = 1 + (size_t)(rand_r(&seed) % nn); /* the nodes the maps were made on */
        w->nmaps = 1 + (size_t)(rand_r(&seed) % 3);
        for (size_t c = 0; c < w->nmaps; c++) {
            uint32_t rf = 1 + (uint32_t)(rand_r(&seed) % (placed < 3 ? placed : 3));
            char nm[32];
            snprintf(nm, sizeof nm, "c%zu", c);
            make_map(&w->maps[c], nm, 1 + (uint32_t)(rand_r(&seed) % 16), rf, ids, placed, (size_t)rand_r(&seed));
            w->rf[c] = rf;
        }
        for (size_t i = 0; i < nn; i++)
            grow(w, ids[i]);
        w->maxm = 1 + (uint32_t)(rand_r(&seed) % 3);
        w->drift = 1 + (uint32_t)(rand_r(&seed) % 2);
        uint32_t maxrf = 1;
        for (size_t c = 0; c < w->nmaps; c++)
            maxrf = w->rf[c] > maxrf ? w->rf[c] : maxrf;
        /* some drained, some gone (not the primaries' nodes' all), leaving enough eligible */
        for (size_t i = 0; i < nn; i++) {
            int r = rand_r(&seed) % 10;
            size_t eligible = nn - w->ndrained - w->ngone;
            if (eligible <= maxrf + 1)
                break;
            if (r == 0)
                snprintf(w->drained[w->ndrained++], NL_NODE_ID_MAX, "%.63s", ids[i]);
        }
        settle(w, 400);
        uint32_t lo = UINT32_MAX, hi = 0;
        for (size_t i = 0; i < w->nnodes; i++) {
            uint32_t h = held(w, w->nodes[i].id);
            if (listed(w->drained, w->ndrained, w->nodes[i].id)) {
                cr_assert_eq(h, 0, "world %d: drained %s holds %u", it, w->nodes[i].id, h);
                continue;
            }
            lo = h < lo ? h : lo;
            hi = h > hi ? h : hi;
        }
        cr_assert_leq(hi - lo, w->drift, "world %d: not balanced (%u..%u, drift %u)", it, lo, hi, w->drift);
    }
    free(w);
}
