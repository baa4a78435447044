/* cluster_internal.h — the state shared by cluster.c (ZooKeeper, membership, coordinator,
 * local shards) and front.c (the router's handling of public calls). Not installed. */
#ifndef NL_CLUSTER_INTERNAL_H
#define NL_CLUSTER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#define THREADED 1 /* the multi-threaded library: synchronous calls */
#include <zookeeper/zookeeper.h>

#include "nl_zk.h"

#include "nl_cluster.h"
#include "nl_repl.h"
#include "nl_router.h"
#include "nl_shardmap.h"

#define NL_MAX_COLLECTIONS 256

typedef struct {
    nl_cluster_collection cc;
    int has_map;
    nl_shard_map map; /* valid when has_map */
} cl_coll;


/* Replication (replication.c, transfer.c). */
/* The deadline of one ZooKeeper call (nl_zk.h): a session timeout. Past it the session may
 * be over, and a call that waits longer could hold the handle's lock against the worker
 * that must replace an expired handle. */
#define CL_ZK_MS(cl) ((uint32_t)(cl)->opt.session_ms)

typedef struct repl_role repl_role;
typedef struct cl_snapshot_out cl_snapshot_out;

typedef struct {
    repl_role *role;
    char peer[NL_NODE_ID_MAX];
    pthread_t th;
    int started;
    atomic_int stop;
    int retiring;          /* its follower left the replicas: the thread ends, the slot is freed */
    void *e;               /* the link's connection (its thread's alone; nl_router_stream_call) */
    /* under role->mu; what the primary knows of the follower is role->sm.f[slot] */
    int slot;              /* this link's index in role->links and role->sm.f */
    char last_error[160];
    uint64_t snapshots, snapshot_bytes;
    uint64_t snap_done, snap_total; /* raw bytes of the copy being sent: sent so far, all */
    cl_snapshot_out *snap; /* a copy being sent (transfer.c), kept to resume */
} repl_link;

struct repl_role {
    char coll[72], uid[20];
    uint32_t s;
    nl_collection *h;
    struct nl_cluster *cl;
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* acknowledgements, new entries, view changes */
    /* under mu: the primary's state (epoch, quorum, view of the map, last, high, deposed,
     * and what it knows of each follower): changed only by nl_repl_step (nl_repl.h) */
    nl_repl_primary sm;
    /* a move handing this primary's role over (moves.c): writers wait before ordering
     * anything new while handoff is set; writing counts those already past that point */
    int handoff;
    uint64_t handoff_ms, move_retry_ms;
    int writing;
    repl_link links[NL_MAX_REPLICAS];
    int nlinks;
    atomic_int refs;
    repl_role *next;
};

#define CL_FOLLOW_LOCKS 64
#define CL_BLOCKED_KEEP 64

/* What request threads read: replaced whole by the worker (under snap_mu). */
typedef struct {
    nl_node_info nodes[NL_MAX_NODES];
    size_t nnodes;
    cl_coll *colls; /* ncolls entries, sorted by name */
    size_t ncolls;
    char coordinator[NL_NODE_ID_MAX];
    char drained[NL_MAX_NODES][NL_NODE_ID_MAX]; /* nodes the operator drains (<root>/drain) */
    size_t ndrained;
    int rebalance;  /* an operator asked for a rebalance (<root>/rebalance exists) */
    uint64_t refs;
} cl_snapshot;

struct nl_cluster {
    nl_cluster_options opt;
    char root[256];
    char node_id[NL_NODE_ID_MAX];
    char advertise[NL_ADDR_MAX];
    char db_dir[4096];
    char *key;
    size_t key_len;

    /* ZooKeeper: the handle is replaced after a session expiry (zh_lock write side). */
    pthread_rwlock_t zh_lock;
    zhandle_t *zh;
    atomic_int zstate;      /* last session state seen by the watcher */
    atomic_int expired;
    atomic_int registered;
    atomic_int fatal;       /* NL_EEXISTS (duplicate id) / NL_EINVAL (bad root) */
    char election_node[300];
    uint64_t dup_since_ns;  /* when registration first found this id's znode held by another session */

    /* the worker */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, dirty;

    pthread_mutex_t snap_mu;
    cl_snapshot *snap;

    /* local shards refused (config differs) and held but not assigned, for status */
    pthread_mutex_t rep_mu;
    char refused[64][200];
    size_t nrefused;
    char unassigned[64][100];
    size_t nunassigned;
    /* local collections already checked against the cluster's config ("name uid"), so an
     * internal call on a shard held does not re-read the uid file */
    char verified[NL_MAX_COLLECTIONS][96];
    size_t nverified;

    nl_router *router;

    /* replication */
    pthread_mutex_t repl_mu;
    repl_role *roles;
    pthread_mutex_t follow_mu[CL_FOLLOW_LOCKS]; /* a follower's shard: one stream or install at a time */
    atomic_int map_fresh;  /* the maps were read since the session was last connected */
    atomic_uint_fast64_t last_read_ns; /* when the worker last read the cluster from ZooKeeper */
    uint32_t replica_timeout_ms, write_wait_ms;
    uint64_t log_max_bytes, log_max_age_ms;
    char blocked[CL_BLOCKED_KEEP][128]; /* blocked failovers already logged (rep_mu) */
    size_t nblocked;
    /* moves (moves.c, transfer.c) */
    uint64_t move_rate_bps;     /* snapshot bytes per second this node sends, all copies together; 0 = no limit */
    pthread_mutex_t pace_mu;
    uint64_t pace_next_ns;
    uint32_t fault_corrupt_every; /* test hook NEARLINE_FAULT_CORRUPT_PIECE: spoil every n-th piece once */
    uint32_t moves_per_node, move_drift, compactions_per_node;
    double move_disk_drift;     /* nl_plan_input.disk_drift */
    uint64_t replace_after_ms;  /* a node gone this long has its replicas re-created elsewhere */
    char gone_ids[NL_MAX_NODES][NL_NODE_ID_MAX]; /* coordinator: nodes missing, since when */
    uint64_t gone_since[NL_MAX_NODES];
    size_t ngone;
    char dropping[64][100];     /* local copies moved away, since when (worker) */
    uint64_t dropping_since[64];
    size_t ndropping;
    atomic_int compacting;      /* compactions running here */
    atomic_uint_fast64_t snapshot_raw_bytes, pieces_sent, pieces_resent, moves_started, moves_finished, moves_rolled_back, handoffs,
        copies_dropped, compactions_deferred;
    atomic_uint_fast64_t repl_writes, repl_write_failures, repl_wait_us, isr_adds, isr_removals, failovers,
        log_trimmed, snapshots_sent, snapshot_bytes, snapshot_ms, hedged;

    /* metrics */
    atomic_uint_fast64_t coordinator_changes, map_writes, map_conflicts, sessions, partial_answers,
        complete_refusals, fanout_calls, fanout_shards, write_part_failures, write_retries,
        fanout_requeries;
    atomic_int is_coordinator;
    atomic_int_fast64_t map_version_sum;
};

/* root/a/b (b, a may be NULL) */
void cl_path(nl_cluster *cl, char *buf, size_t cap, const char *a, const char *b);
void cl_log(nl_cluster *cl, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The current snapshot with a reference; release with cl_snap_put. Never NULL. */
cl_snapshot *cl_snap_get(nl_cluster *cl);
void cl_snap_put(nl_cluster *cl, cl_snapshot *s);
const cl_coll *cl_snap_coll(const cl_snapshot *s, const char *name);
const nl_node_info *cl_snap_node(const cl_snapshot *s, const char *id);
/* Re-reads one collection's config and map from ZooKeeper into out. */
int cl_fresh_coll(nl_cluster *cl, const char *name, cl_coll *out);
/* Wakes the worker to re-read the cluster now. */
void cl_wake(nl_cluster *cl);
/* Opens shard s of cc locally (creating it), checked against the cluster's config. */
int cl_attach(nl_cluster *cl, const nl_cluster_collection *cc, uint32_t s, nl_collection **out);
/* Writes map m over version (compare-and-set); with fenced, only while this node's
 * election znode exists (a coordinator's write). *newv gets the new version. 0, -ESTALE
 * (the version moved), or NL_EUNAVAILABLE. */
int cl_map_write(nl_cluster *cl, const nl_shard_map *m, int32_t version, int fenced, int32_t *newv);

/* replication.c */
int cl_session_ok(nl_cluster *cl);
void cl_repl_reconcile(nl_cluster *cl, const cl_snapshot *s);
void cl_repl_stop_all(nl_cluster *cl);
json_t *cl_repl_status(nl_cluster *cl);
void cl_repl_metrics(nl_cluster *cl, FILE *f);
pthread_mutex_t *cl_follow_lock(nl_cluster *cl, const char *name, uint32_t s);
/* 1 when peer is registered in this node's snapshot of the cluster (links reach only those). */
int cl_peer_live(nl_cluster *cl, const char *peer);
/* A call of a link (its own connection *ep): the HTTP status (0: nothing reached). */
int cl_link_call(nl_cluster *cl, void **conn, const char *peer, const char *path, const void *body, size_t len,
                 const char *content_type, uint32_t timeout_ms, json_t **answer);
/* transfer.c: sends a snapshot of the link's shard to its follower and has it installed. */
int cl_snapshot_send(repl_link *l);
void cl_snapshot_link_done(repl_link *l);
/* Removes copies left by an earlier run (at start). */
void cl_snapshot_cleanup(nl_cluster *cl);
/* the coordinator's failover of shards whose primary is gone (cluster.c) */
void cl_failover(nl_cluster *cl, const cl_snapshot *s);
/* replication.c, for moves.c */
void cl_role_deposed(repl_role *r, const char *why);
/* The collection's map read from ZooKeeper now into c: 0 when it still makes this node the
 * primary of r's shard at r's epoch, NL_ESTALE when not, another error when unread. */
int cl_role_fresh(repl_role *r, cl_coll *c);
/* Acknowledged sequences of in-sync members of e other than this node and skip, into
 * out (at most NL_MAX_REPLICAS); role->mu held. */
size_t cl_role_acked_locked(const repl_role *r, const nl_shard_entry *e, const char *skip, uint64_t *out);
/* The role's view follows a map entry it read or wrote (a step of its state machine). */
void cl_role_map(repl_role *r, const nl_shard_entry *e, int32_t version);
/* The role of (name, s) with a reference (cl_role_put), or NULL when this node is not its
 * primary. */
repl_role *cl_role_get(nl_cluster *cl, const char *name, uint32_t s);
void cl_role_put(repl_role *r);
/* One event through the role's state machine under its lock (now_ms filled in when 0);
 * the actions out. _locked: r->mu held. */
void cl_role_step(repl_role *r, nl_repl_event *ev, nl_repl_actions *a);
void cl_role_step_locked(repl_role *r, nl_repl_event *ev);
/* moves.c: the primary's part of a move (after each exchange of the link to its target),
 * the coordinator's (each pass), and a node's removal of copies moved away. */
void cl_move_step(repl_link *l);
void cl_moves_coordinate(nl_cluster *cl, const cl_snapshot *s);
void cl_moves_drop_local(nl_cluster *cl, const cl_snapshot *s);
/* the engine's compaction gate (nl_db_options.compact_gate), moves.c */
int cl_compact_gate(void *ctx, const char *shard_dir, int begin);

/* "http://addr" or "https://addr" of a node into buf. */
void cl_node_url(const nl_node_info *n, char *buf, size_t cap);
/* An error answer {"error":{"code","message"}} (new reference). */
json_t *cl_error(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A snapshot piece as it travels (transfer.c): 4 bytes of header length, a JSON header
 * {id, file, offset, size, total, crc}, then the zstd-compressed bytes. Parsing checks the
 * header (NL_EFORMAT); the payload call decompresses and checks the CRC-32C of the raw
 * bytes (NL_ECORRUPT; *raw malloc'd on success). Pure: the fuzz target calls them. */
typedef struct {
    char id[24], file[112];
    uint64_t off;
    size_t n;
    uint32_t crc;
    const unsigned char *z;
    size_t zlen;
} cl_piece;
int cl_piece_parse(const unsigned char *b, size_t len, cl_piece *pc);
int cl_piece_payload(const cl_piece *pc, unsigned char **raw);

/* The internal calls nl_cluster_internal_call dispatches (internal.c). */
/* The follower's side of the stream: a replicate request (binary, replication.c) applied
 * in order. Answers {status, last_seq, last_epoch, fence}: 200 ok or mismatch (the
 * follower's position does not follow the entries), 409 stale (an older epoch than this
 * replica knows), 4xx for bad bytes. *out a new reference. */
int nl_cluster_replicate(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const void *body, size_t len,
                         json_t **out);
/* A failover's fence: refuse epochs below epoch from now on; answers the position. */
int nl_cluster_fence_shard(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, uint64_t epoch, json_t **out);
/* Snapshot transfer (transfer.c), all POST: op "snapshot" (what this node has received
 * of a copy), "snapshot-chunk" (one checksummed, compressed piece of a file) or
 * "snapshot-install" (install the copy received). */
int nl_cluster_snapshot_call(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const char *op,
                             const void *body, size_t len, json_t **out);

/* ---------------------------------------------------------------- the floor (floor.c) */

/* A ZooKeeper return code as an engine code (NL_EUNAVAILABLE, NL_ENOTFOUND, ...). */
int cl_zerr(int zrc);
/* Reads a znode into a malloc'd NUL-terminated buffer (*out, *len); watch: leave a watch. */
int cl_zget(nl_cluster *cl, const char *path, int watch, char **out, int *len, struct Stat *st);
int cl_zcreate(nl_cluster *cl, const char *path, const char *data, int flags, char *made, int madecap);
/* Publishes n (refs set to 1) as the cluster's snapshot; frees one nobody holds. */
void cl_snap_publish(nl_cluster *cl, cl_snapshot *n);
void cl_snap_free(cl_snapshot *s);
/* The uid of the local copy of a collection (a file beside its shards). */
void cl_uid_path(nl_cluster *cl, const char *name, char *buf, size_t cap);
int cl_uid_read(nl_cluster *cl, const char *name, char *uid, size_t cap);
/* Forgets that a collection's local copy was checked against the cluster's config. */
void cl_unverify(nl_cluster *cl, const char *name);

#endif
