/*
 * failover.c — the coordinator's promotion of a new primary when a shard's primary is gone
 * (its ZooKeeper session ended, so its node znode went). Rules: nl_repl.h.
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

#include "cluster_internal.h"
#include "nl_repl.h"

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
    pthread_mutex_lock(&cl->rep_mu);
    int seen = 0;
    for (size_t i = 0; i < CL_BLOCKED_KEEP && !seen; i++)
        seen = !strcmp(cl->blocked[i], key);
    if (!seen)
        snprintf(cl->blocked[cl->nblocked++ % CL_BLOCKED_KEEP], sizeof cl->blocked[0], "%s", key);
    pthread_mutex_unlock(&cl->rep_mu);
    return !seen;
}

static void failover_collection(nl_cluster *cl, const cl_snapshot *s, const cl_coll *c)
{
    const nl_shard_map *cur = &c->map;
    enum { MAXC = NL_MAX_SHARDS * 2 };
    struct {
        fence_call fc[MAXC];
        nl_rcall calls[MAXC];
        char url[MAXC][200], body[MAXC][64];
    } *t = calloc(1, sizeof *t);
    if (!t)
        return;
    fence_call *fc = t->fc;
    nl_rcall *calls = t->calls;
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
            nl_rcall *k = &calls[n];
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
        nl_router_run(cl->router, calls, n, FENCE_TIMEOUT_MS, "failover", NULL);
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

void cl_failover(nl_cluster *cl, const cl_snapshot *s)
{
    for (size_t i = 0; i < s->ncolls; i++)
        if (s->colls[i].has_map)
            failover_collection(cl, s, &s->colls[i]);
}
