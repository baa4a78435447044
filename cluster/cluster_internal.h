/* cluster_internal.h — the state shared by cluster.c (ZooKeeper, membership, coordinator,
 * local shards) and front.c (the router's handling of public calls). Not installed. */
#ifndef NL_CLUSTER_INTERNAL_H
#define NL_CLUSTER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#define THREADED 1 /* the multi-threaded library: synchronous calls */
#include <zookeeper/zookeeper.h>

#include "nl_cluster.h"
#include "nl_router.h"
#include "nl_shardmap.h"

#define NL_MAX_COLLECTIONS 256

typedef struct {
    nl_cluster_collection cc;
    int has_map;
    nl_shard_map map; /* valid when has_map */
} cl_coll;

/* What request threads read: replaced whole by the worker (under snap_mu). */
typedef struct {
    nl_node_info nodes[NL_MAX_NODES];
    size_t nnodes;
    cl_coll *colls; /* ncolls entries, sorted by name */
    size_t ncolls;
    char coordinator[NL_NODE_ID_MAX];
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

    /* metrics */
    atomic_uint_fast64_t coordinator_changes, map_writes, map_conflicts, sessions, partial_answers,
        complete_refusals, fanout_calls, fanout_shards, write_part_failures;
    atomic_int is_coordinator;
    atomic_int_fast64_t map_version_sum;
};

void cl_log(nl_cluster *cl, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The current snapshot with a reference; release with cl_snap_put. Never NULL. */
cl_snapshot *cl_snap_get(nl_cluster *cl);
void cl_snap_put(nl_cluster *cl, cl_snapshot *s);
const cl_coll *cl_snap_coll(const cl_snapshot *s, const char *name);
const nl_node_info *cl_snap_node(const cl_snapshot *s, const char *id);
/* Re-reads one collection's config and map from ZooKeeper into out. */
int cl_fresh_coll(nl_cluster *cl, const char *name, cl_coll *out);
/* "http://addr" or "https://addr" of a node into buf. */
void cl_node_url(const nl_node_info *n, char *buf, size_t cap);
/* An error answer {"error":{"code","message"}} (new reference). */
json_t *cl_error(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
