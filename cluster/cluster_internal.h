/* cluster_internal.h — the state the files of cluster/ share (struct nl_cluster, roles and
 * links, the published snapshot) and their cl_* calls, grouped by the file that defines
 * them (docs/architecture.md lists the files by layer). Not installed: nl_cluster.h is
 * the module's interface. */
#ifndef NL_CLUSTER_INTERNAL_H
#define NL_CLUSTER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#define THREADED 1 /* the multi-threaded library: synchronous calls */
#include <zookeeper/zookeeper.h>

#include "nl_zk.h"

#include "nl_cluster.h"
#include "nl_repl.h"
#include "nl_peer.h"
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
    void *e;               /* the link's connection (its thread's alone; nl_peer_stream_call) */
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

    /* ZooKeeper: the handle is replaced after a session expiry (lock's write side). */
    struct {
        pthread_rwlock_t lock;
        zhandle_t *h;
        atomic_int state;      /* last session state seen by the watcher */
        atomic_int expired;
        atomic_int registered;
        atomic_int fatal;      /* NL_EEXISTS (duplicate id) / NL_EINVAL (bad root) */
        atomic_int map_fresh;  /* the maps were read since the session was last connected */
        char election_node[300];
        uint64_t dup_since_ns; /* when registration first found this id's znode held by another session */
    } zk;

    /* the worker (cluster.c): every ZooKeeper call of the node's own life */
    struct {
        pthread_t th;
        pthread_mutex_t mu;
        pthread_cond_t cv;
        int stop, dirty;
        atomic_uint_fast64_t last_read_ns; /* when it last read the cluster from ZooKeeper */
    } worker;

    /* the published snapshot (floor.c) */
    pthread_mutex_t snap_mu;
    cl_snapshot *snap;

    /* what status reports (under mu): local shards refused (config differs) and held
     * but not assigned; local collections already checked against the cluster's config
     * ("name uid"), so an internal call on a shard held does not re-read the uid file;
     * blocked failovers already logged */
    struct {
        pthread_mutex_t mu;
        char refused[64][200];
        size_t nrefused;
        char unassigned[64][100];
        size_t nunassigned;
        char verified[NL_MAX_COLLECTIONS][96];
        size_t nverified;
        char blocked[CL_BLOCKED_KEEP][128];
        size_t nblocked;
    } report;

    nl_peer *peers;        /* the transport of every node-to-node call (peer.c) */

    /* replication (repl_role.c, replication.c, repl_follower.c) */
    struct {
        pthread_mutex_t mu;    /* the role table */
        repl_role *roles;
        pthread_mutex_t follow_mu[CL_FOLLOW_LOCKS]; /* a follower's shard: one stream or install at a time */
        uint32_t replica_timeout_ms, write_wait_ms;
        uint64_t log_max_bytes, log_max_age_ms;
    } repl;

    /* moves, copies and compactions (moves.c, transfer.c) */
    struct {
        uint64_t rate_bps;     /* snapshot bytes per second this node sends, all copies together; 0 = no limit */
        pthread_mutex_t pace_mu;
        uint64_t pace_next_ns;
        uint32_t fault_corrupt_every; /* test hook NEARLINE_FAULT_CORRUPT_PIECE: spoil every n-th piece once */
        uint32_t per_node, drift, compactions_per_node;
        double disk_drift;     /* nl_plan_input.disk_drift */
        uint64_t replace_after_ms; /* a node gone this long has its replicas re-created elsewhere */
        char dropping[64][100]; /* local copies moved away, since when (worker) */
        uint64_t dropping_since[64];
        size_t ndropping;
        atomic_int compacting; /* compactions running here */
    } moves;

    /* the coordinator's memory (coordinator.c): nodes missing, since when */
    struct {
        char gone_ids[NL_MAX_NODES][NL_NODE_ID_MAX];
        uint64_t gone_since[NL_MAX_NODES];
        size_t ngone;
    } coord;

    /* counters (metrics and status) */
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

/* The calls each file offers the others are in its own header: cl_floor.h (floor.c),
 * cl_role.h (repl_role.c), cl_repl.h (replication.c, repl_follower.c), cl_transfer.h
 * (transfer.c), cl_moves.h (moves.c), cl_coordinator.h (coordinator.c). */

#endif
