/*
 * nl_rebalance.h — the coordinator's choice of which shard replicas to move where, as a
 * pure function: the cluster as it is (live nodes, the maps, drained nodes, nodes gone
 * past their grace period, moves in progress) in, a list of moves out. No I/O, no clocks:
 * cluster/moves.c gathers the inputs and writes the moves; tests/test_rebalance.c drives
 * this directly.
 *
 * Order of concern (each move is one replica of one shard; a shard moves one replica at a
 * time; a node takes part in at most max_moves_per_node moves at once, counting those in
 * progress):
 *   1. replace: a replica on a node gone past its grace period is re-created elsewhere
 *      (the shard has fewer live copies than its replication factor);
 *   2. drain: a replica on a node the operator drains moves off it;
 *   3. balance: while the most and least loaded eligible nodes differ by more than drift
 *      replicas (or, when bytes are known, the most loaded holds more than 1 + disk_drift
 *      times the mean bytes), one replica moves from the most to the least loaded; a
 *      follower is preferred over a primary (a primary's move hands its role over).
 * A target is live, not drained, holds no replica of that shard, and is the least loaded
 * (then most free disk, then id). Deterministic: the same input gives the same moves.
 */
#ifndef NL_REBALANCE_H
#define NL_REBALANCE_H

#include <stddef.h>
#include <stdint.h>

#include "nl_shardmap.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char collection[72];
    uint32_t shard;
    char from[NL_NODE_ID_MAX], to[NL_NODE_ID_MAX];
    char reason[16];
} nl_move_plan;

typedef struct {
    const nl_node_info *nodes;  /* live nodes */
    size_t nnodes;
    const char (*drained)[NL_NODE_ID_MAX]; /* nodes being drained (may be live or not) */
    size_t ndrained;
    const char (*gone)[NL_NODE_ID_MAX];    /* nodes absent longer than the grace period */
    size_t ngone;
    const nl_shard_map *const *maps;       /* every placed collection's map */
    size_t nmaps;
    uint32_t max_moves_per_node;           /* 0 = 1 */
    uint32_t drift;                        /* replicas of difference tolerated; 0 = 1 */
    double disk_drift;                     /* the largest node's bytes above the mean that start a
                                            * move: 0 = 0.5 (1.5x the mean); < 0 = never by bytes */
    uint64_t min_bytes;                    /* no move by bytes while the largest node holds less;
                                            * 0 = 1 GiB (small clusters are balanced by counts) */
} nl_plan_input;

/* Up to cap moves into out; *n gets how many. 0 always (an empty plan is an answer). */
int nl_plan_moves(const nl_plan_input *in, nl_move_plan *out, size_t cap, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
