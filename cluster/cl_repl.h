/* cl_repl.h — replication (replication.c: the primary's links and writes, status;
 * repl_follower.c: the follower's side). Not installed. */
#ifndef NL_CL_REPL_H
#define NL_CL_REPL_H

#include "cluster_internal.h"
#include "cl_role.h"

void cl_repl_reconcile(nl_cluster *cl, const cl_snapshot *s);
void cl_repl_stop_all(nl_cluster *cl);
json_t *cl_repl_status(nl_cluster *cl);
void cl_repl_metrics(nl_cluster *cl, FILE *f);
pthread_mutex_t *cl_follow_lock(nl_cluster *cl, const char *name, uint32_t s);
/* The internal calls nl_cluster_internal_call dispatches (internal.c). */
/* The follower's side of the stream: a replicate request (binary, replication.c) applied
 * in order. Answers {status, last_seq, last_epoch, fence}: 200 ok or mismatch (the
 * follower's position does not follow the entries), 409 stale (an older epoch than this
 * replica knows), 4xx for bad bytes. *out a new reference. */
int nl_cluster_replicate(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const void *body, size_t len,
                         json_t **out);
/* A failover's fence: refuse epochs below epoch from now on; answers the position. */
int nl_cluster_fence_shard(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, uint64_t epoch, json_t **out);

#endif
