/*
 * rebalance.c — the coordinator's move planner (nl_rebalance.h: the rules and their
 * order). Pure and deterministic.
 *
 * Load of a node = shard replicas it will hold once the moves in progress are done (a
 * move counts for its target, not its source), so a planner run while moves are under way
 * does not plan them a second time. Bytes, when nodes report them, are the tie-breaker
 * and the second trigger: replica counts alone would call a node holding ten small
 * replicas as loaded as one holding ten large ones.
 */
#include <stdio.h>
#include <string.h>

#include "nl_rebalance.h"

typedef struct {
    const nl_node_info *info;
    int live, drained;
    int64_t load;  /* replicas once moves in progress end */
    uint32_t busy; /* moves it takes part in */
} pnode;

typedef struct {
    pnode n[NL_MAX_NODES * 2];
    size_t nn;
} pstate;

static pnode *find(pstate *p, const char *id)
{
    for (size_t i = 0; i < p->nn; i++)
        if (!strcmp(p->n[i].info ? p->n[i].info->id : "", id))
            return &p->n[i];
    return NULL;
}

static int listed(const char (*l)[NL_NODE_ID_MAX], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(l[i], id))
            return 1;
    return 0;
}

static uint64_t bytes_of(const pnode *x) { return x->info ? x->info->used_bytes : 0; }

/* 1 when a is the better target than b. */
static int better_target(const pnode *a, const pnode *b)
{
    if (a->load != b->load) return a->load < b->load;
    if (bytes_of(a) != bytes_of(b)) return bytes_of(a) < bytes_of(b);
    if (a->info->disk_free != b->info->disk_free) return a->info->disk_free > b->info->disk_free;
    return strcmp(a->info->id, b->info->id) < 0;
}

static pnode *target_for(pstate *p, const nl_shard_entry *e, uint32_t maxm)
{
    pnode *best = NULL;
    for (size_t i = 0; i < p->nn; i++) {
        pnode *x = &p->n[i];
        if (!x->live || x->drained || x->busy >= maxm)
            continue;
        int holds = 0;
        for (uint32_t r = 0; r < e->nreplicas; r++)
            holds |= !strcmp(e->replicas[r], x->info->id);
        if (!holds && (!best || better_target(x, best)))
            best = x;
    }
    return best;
}

typedef struct {
    const nl_plan_input *in;
    pstate *p;
    nl_move_plan *out;
    size_t cap, n;
    /* shards given a move by this plan ("collection/shard" as map index, shard) */
    struct { size_t map; uint32_t shard; } planned[NL_MAX_NODES * 4];
    size_t nplanned;
} planner;

static int planned_already(const planner *pl, size_t mi, uint32_t s)
{
    for (size_t i = 0; i < pl->nplanned; i++)
        if (pl->planned[i].map == mi && pl->planned[i].shard == s)
            return 1;
    return 0;
}

static int add(planner *pl, size_t mi, uint32_t s, const char *from, pnode *to, const char *why)
{
    if (pl->n >= pl->cap || pl->nplanned >= sizeof pl->planned / sizeof pl->planned[0])
        return 0;
    nl_move_plan *m = &pl->out[pl->n++];
    memset(m, 0, sizeof *m);
    memcpy(m->collection, pl->in->maps[mi]->collection, sizeof m->collection);
    m->shard = s;
    snprintf(m->from, sizeof m->from, "%s", from);
    snprintf(m->to, sizeof m->to, "%s", to->info->id);
    snprintf(m->reason, sizeof m->reason, "%s", why);
    pl->planned[pl->nplanned].map = mi;
    pl->planned[pl->nplanned++].shard = s;
    pnode *f = find(pl->p, from);
    if (f) {
        f->load--;
        f->busy++;
    }
    to->load++;
    to->busy++;
    return 1;
}

/* Moves every replica held by nodes in list (gone or drained) off them. */
static void evacuate(planner *pl, const char (*list)[NL_NODE_ID_MAX], size_t nlist, const char *why, uint32_t maxm)
{
    const nl_plan_input *in = pl->in;
    for (size_t mi = 0; mi < in->nmaps; mi++) {
        const nl_shard_map *m = in->maps[mi];
        for (uint32_t s = 0; s < m->nshards; s++) {
            const nl_shard_entry *e = &m->shard[s];
            if (e->state != NL_SHARD_ACTIVE || planned_already(pl, mi, s))
                continue;
            pnode *prim = find(pl->p, e->primary);
            if (!prim || !prim->live)
                continue; /* a failover comes first */
            for (uint32_t r = 0; r < e->nreplicas; r++) {
                if (!listed(list, nlist, e->replicas[r]))
                    continue;
                pnode *f = find(pl->p, e->replicas[r]);
                if (f && f->live && f->busy >= maxm)
                    continue;
                pnode *t = target_for(pl->p, e, maxm);
                if (t)
                    add(pl, mi, s, e->replicas[r], t, why);
                break; /* one replica of a shard at a time */
            }
        }
    }
}

static int eligible(const pnode *x) { return x->live && !x->drained; }

static void balance(planner *pl, uint32_t maxm)
{
    const nl_plan_input *in = pl->in;
    uint32_t drift = in->drift ? in->drift : 1;
    double dd = in->disk_drift > 0 ? in->disk_drift : 0.5;
    int by_bytes_on = in->disk_drift >= 0;
    uint64_t floor = in->min_bytes ? in->min_bytes : 1ull << 30;
    for (int round = 0; round < NL_MAX_NODES * 8 && pl->n < pl->cap; round++) {
        pnode *hi = NULL, *lo = NULL;
        uint64_t total = 0;
        size_t ne = 0;
        for (size_t i = 0; i < pl->p->nn; i++) {
            pnode *x = &pl->p->n[i];
            if (!eligible(x))
                continue;
            total += bytes_of(x);
            ne++;
            if (x->busy < maxm && (!hi || x->load > hi->load || (x->load == hi->load && bytes_of(x) > bytes_of(hi))))
                hi = x;
            if (x->busy < maxm && (!lo || better_target(x, lo)))
                lo = x;
        }
        if (!hi || !lo || hi == lo || hi->load <= 0)
            return;
        int by_count = hi->load - lo->load > (int64_t)drift;
        /* bytes: the largest node well above the mean, and a move that does not just swap
         * the roles of the two (one replica's estimated bytes) */
        pnode *bhi = NULL, *blo = NULL;
        for (size_t i = 0; i < pl->p->nn && ne > 1 && total; i++) {
            pnode *x = &pl->p->n[i];
            if (!eligible(x) || x->busy >= maxm)
                continue;
            if (!bhi || bytes_of(x) > bytes_of(bhi)) bhi = x;
            if (!blo || bytes_of(x) < bytes_of(blo)) blo = x;
        }
        int by_bytes = 0;
        if (!by_count && by_bytes_on && bhi && blo && bhi != blo && bhi->load > 0 && bytes_of(bhi) >= floor) {
            double mean = (double)total / (double)ne;
            double one = (double)bytes_of(bhi) / (double)bhi->load;
            by_bytes = (double)bytes_of(bhi) > (1.0 + dd) * mean && (double)bytes_of(blo) + one < (double)bytes_of(bhi) - one &&
                       blo->load <= bhi->load;
            if (by_bytes) {
                hi = bhi;
                lo = blo;
            }
        }
        if (!by_count && !by_bytes)
            return;
        /* a replica on hi that lo lacks: followers first, then primaries */
        int done = 0;
        for (int want_primary = 0; want_primary < 2 && !done; want_primary++)
            for (size_t mi = 0; mi < in->nmaps && !done; mi++) {
                const nl_shard_map *m = in->maps[mi];
                for (uint32_t s = 0; s < m->nshards && !done; s++) {
                    const nl_shard_entry *e = &m->shard[s];
                    if (e->state != NL_SHARD_ACTIVE || planned_already(pl, mi, s) ||
                        (!strcmp(e->primary, hi->info->id)) != want_primary)
                        continue;
                    pnode *prim = find(pl->p, e->primary);
                    if (!prim || !prim->live || e->nin_sync < e->nreplicas)
                        continue; /* a shard short of in-sync copies is not moved for balance */
                    int on_hi = 0, on_lo = 0;
                    for (uint32_t r = 0; r < e->nreplicas; r++) {
                        on_hi |= !strcmp(e->replicas[r], hi->info->id);
                        on_lo |= !strcmp(e->replicas[r], lo->info->id);
                    }
                    if (on_hi && !on_lo)
                        done = add(pl, mi, s, hi->info->id, lo, "balance");
                }
            }
        if (!done)
            return;
    }
}

int nl_plan_moves(const nl_plan_input *in, nl_move_plan *out, size_t cap, size_t *n)
{
    static __thread pstate p; /* large; one planner per thread at a time */
    memset(&p, 0, sizeof p);
    uint32_t maxm = in->max_moves_per_node ? in->max_moves_per_node : 1;
    for (size_t i = 0; i < in->nnodes && p.nn < NL_MAX_NODES; i++) {
        pnode *x = &p.n[p.nn++];
        x->info = &in->nodes[i];
        x->live = 1;
        x->drained = listed(in->drained, in->ndrained, in->nodes[i].id);
    }
    for (size_t mi = 0; mi < in->nmaps; mi++) {
        const nl_shard_map *m = in->maps[mi];
        for (uint32_t s = 0; s < m->nshards; s++) {
            const nl_shard_entry *e = &m->shard[s];
            for (uint32_t r = 0; r < e->nreplicas; r++) {
                pnode *x = find(&p, e->replicas[r]);
                if (x)
                    x->load++;
            }
            if (e->state == NL_SHARD_MOVING) {
                pnode *f = find(&p, e->move.from), *t = find(&p, e->move.to);
                if (f) f->load--, f->busy++;
                if (t) t->busy++;
            }
        }
    }
    planner *pl = &(planner){.in = in, .p = &p, .out = out, .cap = cap};
    for (size_t mi = 0; mi < in->nmaps; mi++) /* shards moving now are not planned again */
        for (uint32_t s = 0; s < in->maps[mi]->nshards; s++)
            if (in->maps[mi]->shard[s].state == NL_SHARD_MOVING && pl->nplanned < sizeof pl->planned / sizeof pl->planned[0]) {
                pl->planned[pl->nplanned].map = mi;
                pl->planned[pl->nplanned++].shard = s;
            }
    evacuate(pl, in->gone, in->ngone, "replace", maxm);
    evacuate(pl, in->drained, in->ndrained, "drain", maxm);
    balance(pl, maxm);
    *n = pl->n;
    return 0;
}
