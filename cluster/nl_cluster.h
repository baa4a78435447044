/*
 * nl_cluster.h — a node of a nearline cluster: its ZooKeeper session, membership, the
 * coordinator election and duties, the shard map it serves from, and the router's
 * handling of every public call (docs/cluster.md).
 *
 * Lifecycle: nl_cluster_start (connects in the background; the node is not ready until it
 * has registered) -> nl_cluster_wait_registered -> calls from the HTTP front on any thread
 * -> nl_cluster_leave (shutdown begins) -> the last call returns -> nl_cluster_stop. The database stays the caller's and must outlive the cluster.
 *
 * Everything a node does in ZooKeeper happens on one worker thread: watches only wake it,
 * and it re-reads what changed, so a watch that fires during a reconnect is never lost
 * (the worker also re-reads everything every few seconds). Request threads read a
 * snapshot of membership, configs and maps under a lock and never wait on ZooKeeper,
 * except create and drop, which write to it.
 *
 * Errors: 0 or a negative code (nl_common.h); the front's calls return an HTTP status and
 * a JSON answer (new reference) instead.
 */
#ifndef NL_CLUSTER_H
#define NL_CLUSTER_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "nearline_replica.h"
#include "nl_filter.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nl_cluster nl_cluster;

/* A log line: fields is the inside of a JSON object ("\"event\":\"...\",..."). */
typedef void (*nl_cluster_log_fn)(void *ctx, int level, const char *fields);

typedef struct {
    const char *zookeeper;    /* "host:port[,host:port...]" */
    const char *root;         /* znode under which everything lives; NULL = "/nearline" */
    const char *node_id;      /* [A-Za-z0-9_-]{1,63} */
    const char *advertise;    /* host:port peers call */
    const char *db_dir;       /* the node's --db (free disk, the uid records) */
    const char *cluster_key;  /* shared secret of internal calls; NULL = none */
    int tls;                  /* the node serves https; peers are called over https */
    const char *tls_ca;       /* certificate peers are verified with */
    uint32_t session_ms;      /* ZooKeeper session timeout; 0 = 6000 */
    uint32_t peer_connections; /* keep-alive connections (and calls in flight) per peer; 0 = 32 */
    uint32_t replica_timeout_ms; /* a follower that makes no progress this long leaves the in-sync set; 0 = 3000 */
    uint64_t log_max_bytes;   /* a shard's operation log is trimmed beyond this; 0 = 256 MiB */
    uint64_t log_max_age_ms;  /* ... or past this age; 0 = 1 hour */
    uint64_t move_rate_bps;   /* snapshot bytes per second this node sends (moves, catch-up); 0 = no limit */
    uint32_t moves_per_node;  /* moves a node takes part in at once; 0 = 1 */
    uint32_t move_drift;      /* replicas of difference between nodes tolerated before a rebalance; 0 = 1 */
    int move_disk_drift_pct;  /* a node holding this % more bytes than the mean (and >= 1 GiB) gives a
                               * replica away; 0 = 50; < 0 = never by bytes */
    uint64_t replace_after_ms; /* a node gone this long has its replicas re-created elsewhere; 0 = 5 minutes */
    uint32_t compactions_per_node; /* background compactions at once on this node; 0 = 1 */
    nl_db *db;
    nl_cluster_log_fn log;
    void *log_ctx;
} nl_cluster_options;

int nl_cluster_start(const nl_cluster_options *opt, nl_cluster **out);
/* Waits up to timeout_ms for the node to register. 0 registered; NL_EEXISTS when another
 * live process holds the node id; NL_EINVAL when the root is not a nearline root;
 * -ETIMEDOUT when still waiting (it goes on trying). */
int nl_cluster_wait_registered(nl_cluster *cl, uint32_t timeout_ms);
/* 1 when registered; otherwise 0 with what it waits for in why. */
int nl_cluster_ready(nl_cluster *cl, char *why, size_t cap);
/* A fatal condition found after start (duplicate node id), or 0. */
int nl_cluster_fatal(nl_cluster *cl);
/* Leaves the cluster (ends the ZooKeeper session, so the node's ephemeral znodes go and
 * routers stop sending here) but keeps routing for requests still in flight. */
void nl_cluster_leave(nl_cluster *cl);
/* Leaves if it has not, and frees everything; no call may be in flight. */
void nl_cluster_stop(nl_cluster *cl);

/* ---------------------------------------------------------------- internal calls */

/* 1 when key (the X-Nearline-Cluster-Key header, may be NULL) is the cluster's key (or no
 * key is configured). Constant time. */
int nl_cluster_key_ok(nl_cluster *cl, const char *key);
/* A handle on collection name with shard s attached, for an internal call: the map must
 * give s to this node (the map is re-read once when it does not, in case this node has not
 * seen the newest), and the local copy must match the cluster's config. NL_ENOTFOUND /
 * NL_EREFUSED (not assigned here) / NL_EUNAVAILABLE / NL_ECORRUPT with a detail.
 * *out: nl_collection_close. */
int nl_cluster_local_shard(nl_cluster *cl, const char *name, uint32_t s, nl_collection **out);
/* Drops the local copy of a collection the cluster dropped (a call from the node that
 * dropped it). */
int nl_cluster_local_drop(nl_cluster *cl, const char *name);

/* Writes to shard s on its primary (h holds it; replication.c): ordered in the shard's log
 * at this node's epoch, applied here, and returned once the write quorum of the in-sync
 * set has applied it. 0, an engine error, NL_EREFUSED (not the primary, no ZooKeeper
 * session with a fresh map, deposed, handing over, fenced: nothing was applied), or
 * NL_EUNAVAILABLE (deposed after ordering it, or no quorum in time: the write may or may
 * not survive). */
int nl_cluster_shard_upsert(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const nl_point *pts,
                            size_t n);
int nl_cluster_shard_delete(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const nl_id *ids, size_t n,
                            size_t *deleted);
int nl_cluster_shard_delete_by_filter(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s,
                                      const nl_filter *f, size_t *deleted);
/* The calls between nodes about one shard (POST /internal/v1/collections/{c}/shards/{s}/OP),
 * decoded and answered here so that the server only routes them:
 *   replicate         the follower's side of the replication stream (binary entries)
 *   fence             a failover's fence: {"epoch": N}
 *   snapshot, snapshot-chunk, snapshot-install   the snapshot transfer (transfer.c)
 * nl_cluster_internal_op says whether op is one of them. The call returns the HTTP status;
 * *out (a new reference) is the JSON answer. h holds shard s (borrowed). */
int nl_cluster_internal_op(const char *op);
int nl_cluster_internal_call(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const char *op,
                             const void *body, size_t len, json_t **out);
/* 1 when this node's replica of shard s is in the in-sync set (it may serve reads). */
int nl_cluster_serves_reads(nl_cluster *cl, const char *name, uint32_t s);

/* ---------------------------------------------------------------- the router's side */

typedef struct {
    const char *request_id;
    const char *traceparent;
    uint32_t timeout_ms;      /* 0 = 1000 */
    int require_complete;     /* searches: 503 instead of a partial answer */
    int per_shard_full;       /* searches: ask every shard for the whole k and L (nl_shard_map_budget) */
} nl_cluster_call;

/* The cluster's config of a collection; NL_ENOTFOUND when there is none. */
int nl_cluster_config(nl_cluster *cl, const char *name, nl_collection_config *cfg, uint32_t *replicas);

int nl_cluster_list(nl_cluster *cl, json_t **out);
/* quorum: NL_QUORUM_ALL (0) or NL_QUORUM_MAJORITY (1), nl_shardmap.h. */
int nl_cluster_create(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_collection_config *cfg,
                      uint32_t replicas, int quorum, json_t **out);
int nl_cluster_drop(nl_cluster *cl, const nl_cluster_call *call, const char *name, json_t **out);
int nl_cluster_describe(nl_cluster *cl, const nl_cluster_call *call, const char *name, json_t **out);
/* pts validated whole by the caller. */
int nl_cluster_upsert(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_point *pts, size_t n,
                      json_t **out);
/* ids, or filter_json (the filter as JSON text) when ids is NULL. */
int nl_cluster_delete(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_id *ids, size_t n,
                      const char *filter_json, json_t **out);
int nl_cluster_get(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_id *id, json_t **out);

typedef struct {
    uint32_t k, L, W, plan;
    int with_meta;
    int segments_each;                  /* each shard walks its segments one by one */
    const char *filter_json;            /* for all queries, or NULL */
    const char *const *filters_json;    /* one per query (entries may be NULL), or NULL */
} nl_cluster_search_params;

/* nq queries (dim floats each); batch: the answer's "results" is a list per query. */
int nl_cluster_search(nl_cluster *cl, const nl_cluster_call *call, const char *name, const float *q, size_t nq,
                      uint32_t dim, const nl_cluster_search_params *p, int batch, json_t **out);
/* The cluster's state (GET /v1/cluster, `nearline cluster status`): nodes (live or gone,
 * draining, replicas held, disk), every collection's shards (primary, epoch, replicas,
 * in-sync set, move), the moves in progress with their copy progress and the followers'
 * lag — the shard map from this node's view of ZooKeeper, progress and lag from each
 * live node's own report (GET /internal/v1/node, asked in parallel; a node that does not
 * answer within 1 s is listed under "unreachable"). */
int nl_cluster_status(nl_cluster *cl, json_t **out);
/* What this node itself reports: its registration, the shards it is primary of with each
 * follower's position, lag and copy progress, and local shards refused or unassigned. */
int nl_cluster_node_status(nl_cluster *cl, json_t **out);

/* The engine's compaction gate (nl_db_options.compact_gate) of a node: ctx is the
 * cluster (see moves.c). A database opened before the cluster starts passes a trampoline
 * that allows everything until the cluster is there. */
int nl_cluster_compact_gate(void *cluster, const char *shard_dir, int begin);

/* Prometheus text of the cluster metrics (HELP and TYPE on every family). */
void nl_cluster_metrics(nl_cluster *cl, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
