/*
 * repl_rules.c — the pure rules of replication (nl_repl.h). Each is small enough to
 * check by eye; tests/test_repl.c checks them together, under faults, against a model.
 *
 * Why the quorums are what they are: an acknowledged write is on a write quorum Q of S
 * (primary included), so on at least Q - 1 members of S other than the primary. A
 * failover that fences F of those |S| - 1 members meets every such set when
 * F > (|S| - 1) - (Q - 1), that is F >= |S| - Q + 1; and once they are fenced the old
 * primary can no longer gather Q - 1 acknowledgements, since at most Q - 2 unfenced
 * members remain. For all (Q = |S|) that is one member; for majority, |S| - Q + 1.
 * That argument needs every acknowledged write on a write quorum of the S of the moment,
 * which a member leaving S can break under majority (it may be one of the few holding a
 * write): nl_repl_may_leave keeps it; a member joins only once it holds everything, and
 * from the moment it is chosen to join until the map says so, writes also wait for it
 * (nl_repl_committed_joining): found by the fault schedule of the real processes, where
 * writes were acknowledged during the map write that added a member that lacked them.
 */
#include <stdio.h>
#include <string.h>

#include "nl_repl.h"

uint32_t nl_repl_write_quorum(uint32_t nin_sync, int quorum)
{
    if (nin_sync == 0)
        return 1;
    return quorum == NL_QUORUM_MAJORITY ? nin_sync / 2 + 1 : nin_sync;
}

uint32_t nl_repl_failover_quorum(uint32_t nin_sync, int quorum)
{
    if (nin_sync <= 1)
        return 1; /* nobody else holds the writes: no failover can succeed */
    return nin_sync - nl_repl_write_quorum(nin_sync, quorum) + 1;
}

uint64_t nl_repl_committed(uint64_t primary_last, const uint64_t *acked, size_t nacked, int quorum)
{
    uint32_t q = nl_repl_write_quorum((uint32_t)nacked + 1, quorum);
    /* the q-th largest of {primary_last} and acked (none is above primary_last for a
     * follower of this primary, but a stale answer is clamped) */
    uint64_t v[NL_MAX_REPLICAS];
    size_t n = 0;
    v[n++] = primary_last;
    for (size_t i = 0; i < nacked && n < NL_MAX_REPLICAS; i++)
        v[n++] = acked[i] < primary_last ? acked[i] : primary_last;
    for (size_t i = 1; i < n; i++) /* insertion sort, descending */
        for (size_t j = i; j > 0 && v[j] > v[j - 1]; j--) {
            uint64_t t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return v[(q <= n ? q : n) - 1];
}

uint64_t nl_repl_committed_joining(uint64_t committed, const uint64_t *joining, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (joining[i] < committed)
            committed = joining[i];
    return committed;
}

int nl_repl_may_leave(uint64_t primary_last, const uint64_t *acked_rest, size_t nrest, int quorum,
                      uint64_t acknowledged)
{
    return nl_repl_committed(primary_last, acked_rest, nrest, quorum) >= acknowledged;
}

int nl_repl_choose(const nl_repl_candidate *c, size_t n, uint32_t needed)
{
    if (n < needed || n == 0)
        return -1;
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (c[i].last_epoch > c[best].last_epoch ||
            (c[i].last_epoch == c[best].last_epoch && c[i].last_seq > c[best].last_seq))
            best = i;
    return (int)best;
}

nl_catchup nl_repl_catchup(uint64_t f_last, uint64_t f_epoch, int p_has, uint64_t p_epoch_at, uint64_t p_last)
{
    if (f_last > p_last || !p_has || p_epoch_at != f_epoch)
        return NL_CATCHUP_SNAPSHOT;
    return f_last == p_last ? NL_CATCHUP_NONE : NL_CATCHUP_STREAM;
}

int nl_shard_map_promote(nl_shard_map *m, uint32_t s, const char *primary, const char *const *in, size_t n)
{
    if (s >= m->nshards || !nl_shard_map_holds(m, s, primary) || n == 0 || n > NL_MAX_REPLICAS)
        return NL_EINVAL;
    nl_shard_entry *e = &m->shard[s];
    int has_primary = 0;
    for (size_t i = 0; i < n; i++) {
        if (!nl_shard_map_holds(m, s, in[i]))
            return NL_EINVAL;
        has_primary |= !strcmp(in[i], primary);
        for (size_t k = 0; k < i; k++)
            if (!strcmp(in[k], in[i]))
                return NL_EINVAL;
    }
    if (!has_primary)
        return NL_EINVAL;
    char reps[NL_MAX_REPLICAS][NL_NODE_ID_MAX];
    uint32_t r = 0;
    snprintf(reps[r++], NL_NODE_ID_MAX, "%s", primary);
    for (uint32_t i = 0; i < e->nreplicas; i++)
        if (strcmp(e->replicas[i], primary))
            memcpy(reps[r++], e->replicas[i], NL_NODE_ID_MAX);
    memcpy(e->replicas, reps, sizeof reps);
    snprintf(e->primary, sizeof e->primary, "%s", primary);
    e->nin_sync = 0;
    for (size_t i = 0; i < n; i++)
        snprintf(e->in_sync[e->nin_sync++], NL_NODE_ID_MAX, "%s", in[i]);
    e->epoch++;
    return 0;
}

int nl_repl_accepts(uint64_t epoch, uint64_t fence, uint64_t map_epoch) { return epoch >= fence && epoch >= map_epoch; }
