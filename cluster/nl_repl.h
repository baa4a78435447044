/*
 * nl_repl.h — the rules of replication as pure functions: no I/O, no clocks, no threads.
 * cluster/replication.c applies them to real logs, peers and ZooKeeper; tests/test_repl.c
 * drives them through thousands of seeded fault schedules against a model of the nodes.
 * The protocol and its argument: docs/cluster.md, "Replication".
 *
 * Terms: a shard's in-sync set S is in its map (the primary always in it); quorum is
 * NL_QUORUM_ALL or NL_QUORUM_MAJORITY (nl_shardmap.h); a replica's position is its last
 * applied (sequence, epoch).
 */
#ifndef NL_REPL_H
#define NL_REPL_H

#include <stddef.h>
#include <stdint.h>

#include "nl_shardmap.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Members of S (the primary included) that must hold a write before it is acknowledged:
 * |S| for all, |S|/2 + 1 for majority. */
uint32_t nl_repl_write_quorum(uint32_t nin_sync, int quorum);

/* Members of S other than the lost primary that a failover must fence and hear from
 * before it may promote one: enough that every write quorum meets them (1 for all;
 * |S| - quorum + 1 for majority). When the rest of S is fewer, the shard waits for its
 * primary: no failover can then be sure to keep every acknowledged write. */
uint32_t nl_repl_failover_quorum(uint32_t nin_sync, int quorum);

/* The highest sequence a write quorum of S holds, given the primary's last sequence and
 * the acknowledged sequence of each other member of S (nacked = |S| - 1). */
uint64_t nl_repl_committed(uint64_t primary_last, const uint64_t *acked, size_t nacked, int quorum);

/* committed, lowered to what every member joining S holds (joining[0..n): their
 * acknowledged sequences). A follower counts from the moment the primary decides to add it
 * until its map write has landed and the primary's view has it: writes acknowledged
 * meanwhile must be on it too, or S would gain a member lacking an acknowledged write (and
 * a failover under quorum all, which trusts any member of S, could lose it). */
uint64_t nl_repl_committed_joining(uint64_t committed, const uint64_t *joining, size_t n);

/* 1 when a member of S may leave it (the primary's versioned write drops a follower that
 * stopped acknowledging): every write acknowledged so far (up to `acknowledged`) must
 * still be on a write quorum of what remains, given the primary's last sequence and the
 * acknowledged sequences of the other members that stay (nrest = |S| - 2). With all that
 * always holds; with majority a member holding writes the rest lack must stay until they
 * have them. */
int nl_repl_may_leave(uint64_t primary_last, const uint64_t *acked_rest, size_t nrest, int quorum,
                      uint64_t acknowledged);

typedef struct {
    const char *node;
    uint64_t last_seq, last_epoch;
} nl_repl_candidate;

/* The candidate to promote among those that answered the fence: the one furthest along
 * (every candidate's log is a prefix of the lost primary's, so that one holds what any
 * of them holds); ties to the first listed. -1 when fewer than needed answered. */
int nl_repl_choose(const nl_repl_candidate *c, size_t n, uint32_t needed);

typedef enum { NL_CATCHUP_NONE = 0, NL_CATCHUP_STREAM = 1, NL_CATCHUP_SNAPSHOT = 2 } nl_catchup;

/* How a primary brings a follower at (f_last, f_epoch) up to date. p_has: the primary's
 * log still holds entry f_last (or f_last is 0, or its own last), with epoch p_epoch_at.
 * The follower streams from f_last + 1 only when that entry is the same on both (same
 * sequence and epoch: then, entries being accepted only in order from one primary per
 * epoch, the whole prefix is the same); otherwise (it holds entries the primary lacks, or
 * the primary can no longer tell) it needs a snapshot. */
nl_catchup nl_repl_catchup(uint64_t f_last, uint64_t f_epoch, int p_has, uint64_t p_epoch_at, uint64_t p_last);

/* Shard s gets primary (one of its replicas) at epoch + 1, in-sync set in[0..n) (which
 * must hold primary; others not replicas are refused), replicas reordered primary first.
 * 0 or NL_EINVAL. */
int nl_shard_map_promote(nl_shard_map *m, uint32_t s, const char *primary, const char *const *in, size_t n);

#ifdef __cplusplus
}
#endif
#endif
