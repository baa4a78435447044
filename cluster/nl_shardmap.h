/*
 * nl_shardmap.h — the shard map of a collection, the node records and the collection
 * config as they live in ZooKeeper (docs/cluster.md), and the coordinator's placement
 * rule. Pure: no I/O, no ZooKeeper; cluster.c reads and writes the bytes, tests drive
 * these functions directly.
 *
 * Every decoder takes untrusted bytes (another node, an operator with zkCli) and checks
 * every field; an error names the field. Encoders produce compact JSON (jansson).
 *
 * Ownership: structs are plain values (fixed arrays); nothing here allocates beyond the
 * returned JSON text (malloc'd, caller frees).
 */
#ifndef NL_SHARDMAP_H
#define NL_SHARDMAP_H

#include <stddef.h>
#include <stdint.h>

#include "nearline.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NL_NODE_ID_MAX 64
#define NL_ADDR_MAX 128
/* Replicas a shard's map entry can list: a replication factor of up to NL_MAX_RF, plus the
 * copy a move adds before it removes the one it replaces. */
#define NL_MAX_RF 5
#define NL_MAX_REPLICAS (NL_MAX_RF + 1)
#define NL_MAX_NODES 64

/* Node ids: [A-Za-z0-9_-]{1,63}. 0 or NL_EINVAL. */
int nl_node_id_check(const char *id);

/* /nodes/<id>: what a node says of itself (ephemeral). */
typedef struct {
    char id[NL_NODE_ID_MAX];
    char address[NL_ADDR_MAX]; /* host:port the router calls */
    int tls;                   /* 1: https */
    uint64_t disk_free;        /* bytes free under --db */
    uint64_t used_bytes;       /* bytes its shards take on disk (0: not reported) */
    uint64_t ram;              /* bytes of RAM */
    double load;               /* 1-minute load average */
    uint32_t shards;           /* shard replicas it holds */
    char version[32];
    uint64_t started_ms;
} nl_node_info;

char *nl_node_info_encode(const nl_node_info *n);
int nl_node_info_decode(const char *buf, size_t len, nl_node_info *n);

/* /collections/<name>: the configuration every node that holds a shard must agree on. */
typedef struct {
    char name[72];
    nl_collection_config cfg; /* shards, dim, metric, dtype, index parameters */
    uint32_t replicas;
    int write_quorum;         /* NL_QUORUM_ALL (default) or NL_QUORUM_MAJORITY */
    char uid[20];             /* random hex, tells a re-created collection from the old */
} nl_cluster_collection;

enum { NL_QUORUM_ALL = 0, NL_QUORUM_MAJORITY = 1 };
const char *nl_quorum_name(int q);

char *nl_cluster_collection_encode(const nl_cluster_collection *c);
int nl_cluster_collection_decode(const char *buf, size_t len, nl_cluster_collection *c);
/* 0 when a shard created with local is the same collection as c (dim, metric, dtype,
 * shards, R, L, alpha, pq_bytes); NL_ECORRUPT naming the first difference otherwise. */
int nl_cluster_collection_match(const nl_cluster_collection *c, const nl_collection_config *local);

typedef enum { NL_SHARD_ACTIVE = 0, NL_SHARD_MOVING = 1, NL_SHARD_OFFLINE = 2 } nl_shard_state;
const char *nl_shard_state_name(nl_shard_state s);

/* A move of one replica of a shard (cluster/moves.c, docs/cluster.md "Moves"): `to` is
 * listed among the replicas (not in sync) while it copies and catches up; the primary
 * finishes the move, once `to` is in sync, with one versioned map write that removes
 * `from` (handing its role to `to` first when `from` is the primary). Recorded in the map,
 * so a new coordinator or primary carries on what an old one started. */
typedef struct {
    char from[NL_NODE_ID_MAX], to[NL_NODE_ID_MAX];
    uint64_t id;               /* unique per move (for logs and the operator) */
    uint64_t started_ms;       /* wall clock when it was planned */
    char reason[16];           /* "balance", "drain", "replace", "operator" */
} nl_shard_move;

typedef struct {
    uint64_t epoch;            /* bumped whenever the primary changes; fences the old one */
    char primary[NL_NODE_ID_MAX];
    char replicas[NL_MAX_REPLICAS][NL_NODE_ID_MAX]; /* primary first */
    uint32_t nreplicas;
    /* The replicas that hold every acknowledged write (the primary always among them):
     * the only ones that serve reads, and the ones a failover chooses from. A map
     * written before replication had none: decoded as every replica. */
    char in_sync[NL_MAX_REPLICAS][NL_NODE_ID_MAX];
    uint32_t nin_sync;
    nl_shard_state state;      /* NL_SHARD_MOVING exactly while a move is recorded */
    nl_shard_move move;        /* valid when state == NL_SHARD_MOVING */
} nl_shard_entry;

/* /maps/<name>. version is the znode's version (the compare-and-set token), not stored. */
typedef struct {
    char collection[72];
    char uid[20];              /* the collection's uid it was made for */
    uint32_t nshards;
    nl_shard_entry shard[NL_MAX_SHARDS];
    int32_t version;
} nl_shard_map;

char *nl_shard_map_encode(const nl_shard_map *m);
int nl_shard_map_decode(const char *buf, size_t len, nl_shard_map *m);

/* The coordinator's placement of a new collection's shards: replica r of shard s goes to
 * the live node holding the fewest shard replicas so far (counting held[] and what this
 * placement already gave), ties broken by most free disk, then lowest load, then id —
 * never two replicas of one shard on one node. held[i] = replicas node i holds already.
 * Deterministic. NL_EINVAL when replicas > nnodes or no node. */
int nl_shard_map_place(const nl_node_info *nodes, size_t nnodes, const uint32_t *held, const nl_cluster_collection *c,
                       nl_shard_map *out);

/* 1 when node holds a replica of shard s. */
int nl_shard_map_holds(const nl_shard_map *m, uint32_t s, const char *node);
/* 1 when node is in shard s's in-sync set. */
int nl_shard_map_in_sync(const nl_shard_map *m, uint32_t s, const char *node);
/* Adds node (a replica of s) to, or removes it from, s's in-sync set; the primary is never
 * removed. 0 when changed, 1 when it already was so, NL_EINVAL otherwise. */
int nl_shard_map_set_in_sync(nl_shard_map *m, uint32_t s, const char *node, int in);

/* ---------------------------------------------------------------- moves (pure) */

/* Records a move of shard s's replica on `from` to `to`: `to` joins the replicas (not in
 * sync). NL_EINVAL when from holds no replica, to holds one, the shard is already moving,
 * or its entry is full. */
int nl_shard_map_move_begin(nl_shard_map *m, uint32_t s, const char *from, const char *to, uint64_t id,
                            uint64_t now_ms, const char *reason);
/* Abandons shard s's move: `to` leaves the replicas. It must not be in sync (the primary
 * takes it out of the in-sync set first, with its own rules): NL_EINVAL otherwise. */
int nl_shard_map_move_rollback(nl_shard_map *m, uint32_t s);
/* Completes shard s's move: `to` must be in sync. `from` leaves the replicas and the
 * in-sync set; when it was the primary, `to` becomes primary at epoch + 1 (the caller has
 * made sure every member of the in-sync set holds everything `from` acknowledged).
 * NL_EINVAL otherwise. */
int nl_shard_map_move_finish(nl_shard_map *m, uint32_t s);

/* What a search asks each of `shards` hash-placed shards for (docs/decisions.md, "What a
 * search asks each shard"). Every shard holds a uniform random 1/shards of the points, so
 * of the query's k nearest a shard holds X ~ Binomial(k, 1/shards): *ks is the smallest
 * count, at least ceil(k / shards), that loses in expectation at most 1/1000 of the k over
 * all shards (shards x E[max(0, X - ks)] <= k / 1000); the router asks again, for the
 * whole k, a shard whose ks-th result would still make the answer. *Ls is the list size
 * for a 1/shards share, the rule the engine uses for a segment: L x sqrt(1/shards), at
 * least *ks and at most L. L is the request's list size (0: max(k, 64)). One shard: k and L. */
void nl_shard_map_budget(uint32_t k, uint32_t L, uint32_t shards, uint32_t *ks, uint32_t *Ls);

#ifdef __cplusplus
}
#endif
#endif
