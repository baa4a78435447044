/* cl_floor.h — what every duty of a node stands on (floor.c): the log line, paths and
 * error bodies, znode reads, the published snapshot, map writes, attaching a local shard,
 * fresh reads of a collection, a call to a peer by node id. Not installed. */
#ifndef NL_CL_FLOOR_H
#define NL_CL_FLOOR_H

#include "cluster_internal.h"

/* root/a/b (b, a may be NULL) */
void cl_path(nl_cluster *cl, char *buf, size_t cap, const char *a, const char *b);
void cl_log(nl_cluster *cl, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* An error answer {"error":{"code","message"}} (new reference). */
json_t *cl_error(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "http://addr" or "https://addr" of a node into buf. */
void cl_node_url(const nl_node_info *n, char *buf, size_t cap);
/* The current snapshot with a reference; release with cl_snap_put. Never NULL. */
cl_snapshot *cl_snap_get(nl_cluster *cl);
void cl_snap_put(nl_cluster *cl, cl_snapshot *s);
const cl_coll *cl_snap_coll(const cl_snapshot *s, const char *name);
const nl_node_info *cl_snap_node(const cl_snapshot *s, const char *id);
/* Publishes n (refs set to 1) as the cluster's snapshot; frees one nobody holds. */
void cl_snap_publish(nl_cluster *cl, cl_snapshot *n);
void cl_snap_free(cl_snapshot *s);
/* Re-reads one collection's config and map from ZooKeeper into out. */
int cl_fresh_coll(nl_cluster *cl, const char *name, cl_coll *out);
/* Wakes the worker to re-read the cluster now. */
void cl_wake(nl_cluster *cl);
/* A ZooKeeper return code as an engine code (NL_EUNAVAILABLE, NL_ENOTFOUND, ...). */
int cl_zerr(int zrc);
/* Reads a znode into a malloc'd NUL-terminated buffer (*out, *len); watch: leave a watch. */
int cl_zget(nl_cluster *cl, const char *path, int watch, char **out, int *len, struct Stat *st);
int cl_zcreate(nl_cluster *cl, const char *path, const char *data, int flags, char *made, int madecap);
/* Writes map m over version (compare-and-set); with fenced, only while this node's
 * election znode exists (a coordinator's write). *newv gets the new version. 0, -ESTALE
 * (the version moved), or NL_EUNAVAILABLE. */
int cl_map_write(nl_cluster *cl, const nl_shard_map *m, int32_t version, int fenced, int32_t *newv);
/* Opens shard s of cc locally (creating it), checked against the cluster's config. */
int cl_attach(nl_cluster *cl, const nl_cluster_collection *cc, uint32_t s, nl_collection **out);
/* The uid of the local copy of a collection (a file beside its shards). */
void cl_uid_path(nl_cluster *cl, const char *name, char *buf, size_t cap);
int cl_uid_read(nl_cluster *cl, const char *name, char *uid, size_t cap);
/* Forgets that a collection's local copy was checked against the cluster's config. */
void cl_unverify(nl_cluster *cl, const char *name);
/* 1 when peer is registered in this node's snapshot of the cluster (links reach only those). */
int cl_peer_live(nl_cluster *cl, const char *peer);
/* A call of a link (its own connection *ep): the HTTP status (0: nothing reached). */
int cl_link_call(nl_cluster *cl, void **conn, const char *peer, const char *path, const void *body, size_t len,
                 const char *content_type, uint32_t timeout_ms, json_t **answer);

#endif
