/*
 * coordinator.c — what the elected coordinator does on each of its passes (the worker,
 * cluster.c, calls cl_coordinate after every read of the cluster while this node leads):
 *   1. places the shards of every collection that has no map yet and writes the map;
 *   2. fails over every shard whose primary is gone (below);
 *   3. plans moves: tracks nodes missing from /nodes (replaced after --replace-after-s),
 *      reads the drained nodes and a rebalance request, rolls back moves whose target is
 *      gone, and plans new moves with nl_plan_moves (nl_rebalance.h), at most
 *      --moves-per-node per node at once (docs/cluster.md, "Moves"; the primary's side of
 *      a move is moves.c).
 * Every map it writes goes through the fenced compare-and-set (a check of its own
 * election znode in the same multi-op), so a coordinator that lost its session, or raced
 * a primary's own change, writes nothing and tries again on its next pass.
 *
 * Failover: the promotion of a new primary when a shard's primary is gone (its ZooKeeper
 * session ended, so its node znode went). Rules: nl_repl.h.
 *
 * For each such shard, the coordinator fences the live members of the in-sync set at
 * epoch + 1 (POST .../fence: each raises its durable fence, so the old primary can no
 * longer get an acknowledgement from it, and answers its log position), and once enough
 * have answered (nl_repl_failover_quorum: one under quorum all, |S| - Q + 1 under
 * majority) promotes the one furthest along: the map's entry gets it as primary at epoch
 * + 1, with the in-sync set of those at exactly its position; the others catch up from it
 * and join again. The map is written with the coordinator's fenced compare-and-set, so a
 * coordinator that lost its session, or raced a primary's own in-sync change, writes
 * nothing (it tries again on its next pass, every 2 s or on a watch). A shard whose
 * in-sync set has nobody else left waits for its primary: promoting anyone else could
 * lose acknowledged writes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_internal.h"
#include "cl_coordinator.h"
#include "cl_floor.h"
#include "nl_rebalance.h"
#include "nl_repl.h"
#include "nl_util.h"

#define MAX_PLAN 32

static uint64_t mono_ms(void) { return nl_now_ns() / 1000000u; }

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---------------------------------------------------------------- maps of new collections */

/* Places and writes the map of every collection that has none. */
static void place_new(nl_cluster *cl, const cl_snapshot *s)
{
    /* a draining node takes no new shards (unless too few others are left) */
    nl_node_info *nodes = malloc(sizeof *nodes * NL_MAX_NODES);
    if (!nodes)
        return;
    size_t nn = 0;
    for (size_t n = 0; n < s->nnodes; n++) {
        int dr = 0;
        for (size_t k = 0; k < s->ndrained; k++)
            dr |= !strcmp(s->drained[k], s->nodes[n].id);
        if (!dr)
            nodes[nn++] = s->nodes[n];
    }
    uint32_t need = 1;
    for (size_t i = 0; i < s->ncolls; i++)
        if (!s->colls[i].has_map && s->colls[i].cc.replicas > need)
            need = s->colls[i].cc.replicas;
    if (nn < need) {
        memcpy(nodes, s->nodes, sizeof *nodes * s->nnodes);
        nn = s->nnodes;
    }
    uint32_t held[NL_MAX_NODES] = {0};
    for (size_t i = 0; i < s->ncolls; i++)
        for (uint32_t sh = 0; s->colls[i].has_map && sh < s->colls[i].map.nshards; sh++)
            for (size_t n = 0; n < nn; n++)
                held[n] += (uint32_t)nl_shard_map_holds(&s->colls[i].map, sh, nodes[n].id);
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        if (c->has_map)
            continue;
        nl_shard_map *m = malloc(sizeof *m);
        if (!m)
            break;
        if (nl_shard_map_place(nodes, nn, held, &c->cc, m) != 0) {
            cl_log(cl, 2, "\"event\":\"placement_failed\",\"collection\":\"%s\",\"message\":\"%s\"", c->cc.name,
                   nl_errdetail());
            free(m);
            continue;
        }
        char *data = nl_shard_map_encode(m);
        char mp[512], cp[512];
        cl_path(cl, mp, sizeof mp, "maps", c->cc.name);
        cl_path(cl, cp, sizeof cp, "collections", c->cc.name);
        /* fenced: only while our election znode exists, and only while the collection
         * exists (a drop racing the placement wins) */
        zoo_op_t ops[3];
        zoo_op_result_t res[3];
        zoo_check_op_init(&ops[0], cl->zk.election_node, -1);
        zoo_check_op_init(&ops[1], cp, -1);
        zoo_create_op_init(&ops[2], mp, data, data ? (int)strlen(data) : 0, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);
        int zrc = data ? nl_zk_multi(cl->zk.h, CL_ZK_MS(cl), 3, ops, res) : ZSYSTEMERROR;
        if (zrc == ZOK) {
            atomic_fetch_add(&cl->map_writes, 1);
            for (size_t n = 0; n < nn; n++)
                for (uint32_t sh = 0; sh < m->nshards; sh++)
                    held[n] += (uint32_t)nl_shard_map_holds(m, sh, nodes[n].id);
            cl_log(cl, 1, "\"event\":\"map_written\",\"collection\":\"%s\",\"shards\":%u,\"map\":%s", c->cc.name,
                   m->nshards, data);
        } else {
            atomic_fetch_add(&cl->map_conflicts, 1);
            cl_log(cl, 2, "\"event\":\"map_write_refused\",\"collection\":\"%s\",\"zerror\":\"%s\"", c->cc.name,
                   zerror(zrc));
        }
        free(data);
        free(m);
    }
    free(nodes);
}

/* ---------------------------------------------------------------- failover */

#define FENCE_TIMEOUT_MS 2000

typedef struct {
    uint32_t shard;
    const char *node; /* a member of the in-sync set (points into the map copy) */
} fence_call;

/* 1 the first time a blocked failover of (collection, shard, epoch) is seen: it is logged
 * once, not on every pass while the shard waits. */
static int blocked_once(nl_cluster *cl, const char *coll, uint32_t sh, uint64_t epoch)
{
    char key[128];
    snprintf(key, sizeof key, "%s/%u/%llu", coll, sh, (unsigned long long)epoch);
    pthread_mutex_lock(&cl->report.mu);
    int seen = 0;
    for (size_t i = 0; i < CL_BLOCKED_KEEP && !seen; i++)
        seen = !strcmp(cl->report.blocked[i], key);
    if (!seen)
        snprintf(cl->report.blocked[cl->report.nblocked++ % CL_BLOCKED_KEEP], sizeof cl->report.blocked[0], "%s", key);
    pthread_mutex_unlock(&cl->report.mu);
    return !seen;
}

static void failover_collection(nl_cluster *cl, const cl_snapshot *s, const cl_coll *c)
{
    const nl_shard_map *cur = &c->map;
    enum { MAXC = NL_MAX_SHARDS * 2 };
    struct {
        fence_call fc[MAXC];
        nl_peer_call calls[MAXC];
        char url[MAXC][200], body[MAXC][64];
    } *t = calloc(1, sizeof *t);
    if (!t)
        return;
    fence_call *fc = t->fc;
    nl_peer_call *calls = t->calls;
    char (*url)[200] = t->url, (*body)[64] = t->body;
    size_t n = 0;
    uint32_t want[NL_MAX_SHARDS];
    size_t nwant = 0;
    for (uint32_t sh = 0; sh < cur->nshards; sh++) {
        const nl_shard_entry *e = &cur->shard[sh];
        if (cl_snap_node(s, e->primary) || e->state == NL_SHARD_OFFLINE || e->nreplicas < 2)
            continue; /* alive, or a shard of one replica: nobody to promote */
        want[nwant++] = sh;
        for (uint32_t i = 0; i < e->nin_sync && n < MAXC; i++) {
            const nl_node_info *nd = cl_snap_node(s, e->in_sync[i]);
            if (!strcmp(e->in_sync[i], e->primary) || !nd)
                continue;
            nl_peer_call *k = &calls[n];
            memset(k, 0, sizeof *k);
            k->peer = nd->id;
            cl_node_url(nd, url[n], sizeof url[0]);
            k->base_url = url[n];
            k->method = "POST";
            snprintf(k->path, sizeof k->path, "/internal/v1/collections/%s/shards/%u/fence", cur->collection, sh);
            int bl = snprintf(body[n], sizeof body[0], "{\"epoch\":%llu}", (unsigned long long)(e->epoch + 1));
            k->body = body[n];
            k->body_len = (size_t)bl;
            fc[n] = (fence_call){sh, e->in_sync[i]};
            n++;
        }
    }
    if (!nwant) {
        free(t);
        return;
    }
    if (n)
        nl_peer_run(cl->peers, calls, n, FENCE_TIMEOUT_MS, "failover", NULL);
    nl_shard_map *m = malloc(sizeof *m);
    if (!m)
        goto out;
    *m = *cur;
    uint32_t promoted = 0;
    for (size_t w = 0; w < nwant; w++) {
        uint32_t sh = want[w];
        const nl_shard_entry *e = &cur->shard[sh];
        nl_repl_candidate cand[NL_MAX_REPLICAS];
        size_t nc = 0;
        for (size_t i = 0; i < n && nc < NL_MAX_REPLICAS; i++) {
            if (fc[i].shard != sh || calls[i].status != 200 || !calls[i].body_out)
                continue;
            json_error_t je;
            json_t *a = json_loadb(calls[i].body_out, calls[i].body_out_len, 0, &je);
            json_t *ls = json_object_get(a, "last_seq"), *le = json_object_get(a, "last_epoch");
            if (json_is_integer(ls) && json_is_integer(le))
                cand[nc++] = (nl_repl_candidate){fc[i].node, (uint64_t)json_integer_value(ls),
                                                 (uint64_t)json_integer_value(le)};
            json_decref(a);
        }
        uint32_t need = nl_repl_failover_quorum(e->nin_sync, c->cc.write_quorum);
        int best = e->nin_sync > 1 ? nl_repl_choose(cand, nc, need) : -1;
        if (best < 0 && blocked_once(cl, cur->collection, sh, e->epoch)) {
            cl_log(cl, 3, "\"event\":\"failover_blocked\",\"collection\":\"%s\",\"shard\":%u,\"primary\":\"%s\","
                   "\"epoch\":%llu,\"in_sync\":%u,\"answered\":%zu,\"needed\":%u,\"message\":\"the primary is gone and "
                   "too few in-sync replicas answered to promote one without losing acknowledged writes; writes to "
                   "this shard wait for its primary or for more replicas\"", cur->collection, sh, e->primary,
                   (unsigned long long)e->epoch, e->nin_sync, nc, need);
        }
        if (best < 0)
            continue;
        const char *in[NL_MAX_REPLICAS];
        size_t ni = 0;
        in[ni++] = cand[best].node;
        for (size_t i = 0; i < nc; i++)
            if ((int)i != best && cand[i].last_seq == cand[best].last_seq && cand[i].last_epoch == cand[best].last_epoch)
                in[ni++] = cand[i].node;
        char chosen[NL_NODE_ID_MAX];
        snprintf(chosen, sizeof chosen, "%s", cand[best].node);
        if (nl_shard_map_promote(m, sh, chosen, in, ni) == 0) {
            promoted++;
            cl_log(cl, 2, "\"event\":\"failover\",\"collection\":\"%s\",\"shard\":%u,\"old_primary\":\"%s\","
                   "\"new_primary\":\"%s\",\"epoch\":%llu,\"last_seq\":%llu,\"in_sync\":%zu", cur->collection, sh,
                   e->primary, chosen, (unsigned long long)m->shard[sh].epoch,
                   (unsigned long long)cand[best].last_seq, ni);
        }
    }
    if (promoted) {
        int32_t nv;
        int rc = cl_map_write(cl, m, cur->version, 1, &nv);
        if (rc == 0) {
            atomic_fetch_add(&cl->failovers, promoted);
            cl_log(cl, 1, "\"event\":\"failover_map_written\",\"collection\":\"%s\",\"shards\":%u,\"version\":%d",
                   cur->collection, promoted, nv);
            cl_wake(cl);
        } else {
            cl_log(cl, 2, "\"event\":\"failover_map_refused\",\"collection\":\"%s\",\"message\":\"%s\"",
                   cur->collection, rc == -ESTALE ? "the map changed meanwhile; trying again" : nl_errdetail());
        }
    }
    free(m);
out:
    for (size_t i = 0; i < n; i++)
        free(calls[i].body_out);
    free(t);
}

static void failover(nl_cluster *cl, const cl_snapshot *s)
{
    for (size_t i = 0; i < s->ncolls; i++)
        if (s->colls[i].has_map)
            failover_collection(cl, s, &s->colls[i]);
}

/* ---------------------------------------------------------------- moves: plans, rollbacks, nodes gone */

/* Nodes named by a map and not live: since when (coordinator memory; a new coordinator
 * starts the clock again, which only delays a replacement). */
static void track_gone(nl_cluster *cl, const cl_snapshot *s, char (*gone)[NL_NODE_ID_MAX], size_t *ngone)
{
    uint64_t t = mono_ms();
    char seen[NL_MAX_NODES][NL_NODE_ID_MAX];
    size_t nseen = 0;
    for (size_t i = 0; i < s->ncolls; i++)
        for (uint32_t sh = 0; s->colls[i].has_map && sh < s->colls[i].map.nshards; sh++) {
            const nl_shard_entry *e = &s->colls[i].map.shard[sh];
            for (uint32_t r = 0; r < e->nreplicas; r++) {
                if (cl_snap_node(s, e->replicas[r]))
                    continue;
                int dup = 0;
                for (size_t k = 0; k < nseen && !dup; k++)
                    dup = !strcmp(seen[k], e->replicas[r]);
                if (!dup && nseen < NL_MAX_NODES)
                    memcpy(seen[nseen++], e->replicas[r], NL_NODE_ID_MAX);
            }
        }
    char ids[NL_MAX_NODES][NL_NODE_ID_MAX];
    uint64_t since[NL_MAX_NODES];
    size_t n = 0;
    for (size_t k = 0; k < nseen; k++) {
        uint64_t at = t;
        for (size_t j = 0; j < cl->coord.ngone; j++)
            if (!strcmp(cl->coord.gone_ids[j], seen[k]))
                at = cl->coord.gone_since[j];
        memcpy(ids[n], seen[k], NL_NODE_ID_MAX);
        since[n++] = at;
    }
    memcpy(cl->coord.gone_ids, ids, sizeof ids[0] * n);
    memcpy(cl->coord.gone_since, since, sizeof since[0] * n);
    cl->coord.ngone = n;
    *ngone = 0;
    for (size_t k = 0; k < n; k++)
        if (t - since[k] >= cl->moves.replace_after_ms)
            memcpy(gone[(*ngone)++], ids[k], NL_NODE_ID_MAX);
}

static int drained(const cl_snapshot *s, const char *id)
{
    for (size_t i = 0; i < s->ndrained; i++)
        if (!strcmp(s->drained[i], id))
            return 1;
    return 0;
}

static uint64_t move_id(void)
{
    uint64_t x = nl_now_ns() ^ ((uint64_t)rand() << 20);
    return (x ^ (x >> 31)) & (UINT64_MAX >> 1);
}

static void plan_moves(nl_cluster *cl, const cl_snapshot *s)
{
    char gone[NL_MAX_NODES][NL_NODE_ID_MAX];
    size_t ngone = 0;
    track_gone(cl, s, gone, &ngone);
    nl_shard_map *m = malloc(sizeof *m);
    const nl_shard_map **maps = calloc(s->ncolls ? s->ncolls : 1, sizeof *maps);
    nl_move_plan *plan = calloc(MAX_PLAN, sizeof *plan);
    if (!m || !maps || !plan)
        goto out;
    /* moves to abandon: the target is gone or drained, and the primary has taken it out
     * of the in-sync set (or never put it in) */
    size_t nmaps = 0, moving = 0;
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        if (!c->has_map)
            continue;
        maps[nmaps++] = &c->map;
        *m = c->map;
        uint32_t undo = 0;
        for (uint32_t sh = 0; sh < m->nshards; sh++) {
            nl_shard_entry *e = &m->shard[sh];
            if (e->state != NL_SHARD_MOVING)
                continue;
            moving++;
            int dead = !cl_snap_node(s, e->move.to), dr = drained(s, e->move.to);
            if ((dead || dr) && !nl_shard_map_in_sync(m, sh, e->move.to)) {
                char to[NL_NODE_ID_MAX];
                memcpy(to, e->move.to, sizeof to);
                if (nl_shard_map_move_rollback(m, sh) == 0) {
                    undo++;
                    cl_log(cl, 2, "\"event\":\"move_rolled_back\",\"collection\":\"%s\",\"shard\":%u,\"to\":\"%s\","
                           "\"message\":\"the target is %s\"", m->collection, sh, to, dead ? "gone" : "drained");
                }
            }
        }
        if (undo && cl_map_write(cl, m, c->map.version, 1, NULL) == 0) {
            atomic_fetch_add(&cl->moves_rolled_back, undo);
            cl_wake(cl);
            goto out; /* plan on the next pass, from the map as it is now */
        }
    }
    nl_plan_input in = {.nodes = s->nodes, .nnodes = s->nnodes, .drained = s->drained, .ndrained = s->ndrained,
                        .gone = gone, .ngone = ngone, .maps = maps, .nmaps = nmaps,
                        .max_moves_per_node = cl->moves.per_node, .drift = s->rebalance ? 1 : cl->moves.drift,
                        .disk_drift = cl->moves.disk_drift};
    size_t np = 0;
    nl_plan_moves(&in, plan, MAX_PLAN, &np);
    if (np == 0 && moving == 0 && s->rebalance) { /* done: the request is answered */
        char p[512];
        cl_path(cl, p, sizeof p, "rebalance", NULL);
        if (nl_zk_delete(cl->zk.h, CL_ZK_MS(cl), p, -1) == ZOK)
            cl_log(cl, 1, "\"event\":\"rebalance_done\"");
    }
    /* one map write per collection with all its new moves */
    for (size_t i = 0; i < s->ncolls && np; i++) {
        const cl_coll *c = &s->colls[i];
        if (!c->has_map)
            continue;
        *m = c->map;
        uint32_t added = 0;
        for (size_t k = 0; k < np; k++) {
            if (strcmp(plan[k].collection, c->cc.name))
                continue;
            if (nl_shard_map_move_begin(m, plan[k].shard, plan[k].from, plan[k].to, move_id(), wall_ms(),
                                        plan[k].reason) == 0)
                added++;
        }
        if (!added)
            continue;
        int rc = cl_map_write(cl, m, c->map.version, 1, NULL);
        for (size_t k = 0; k < np; k++)
            if (!strcmp(plan[k].collection, c->cc.name) && rc == 0)
                cl_log(cl, 1, "\"event\":\"move_started\",\"collection\":\"%s\",\"shard\":%u,\"from\":\"%s\",\"to\":\"%s\","
                       "\"reason\":\"%s\",\"id\":%llu", plan[k].collection, plan[k].shard, plan[k].from, plan[k].to,
                       plan[k].reason, (unsigned long long)m->shard[plan[k].shard].move.id);
        if (rc == 0) {
            atomic_fetch_add(&cl->moves_started, added);
            cl_wake(cl);
        } else {
            cl_log(cl, 2, "\"event\":\"move_map_refused\",\"collection\":\"%s\",\"message\":\"%s\"", c->cc.name,
                   rc == -ESTALE ? "the map changed meanwhile; planning again" : nl_errdetail());
        }
    }
out:
    free(plan);
    free(maps);
    free(m);
}

/* ---------------------------------------------------------------- a pass */

void cl_coordinate(nl_cluster *cl, const cl_snapshot *s)
{
    place_new(cl, s);
    failover(cl, s);
    plan_moves(cl, s);
}
