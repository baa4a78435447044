/* cl_role.h — a primary's role (repl_role.c): found with a reference, stepped under
 * its lock, and the primitives its links and the primary's side of moves share. Not installed. */
#ifndef NL_CL_ROLE_H
#define NL_CL_ROLE_H

#include "cluster_internal.h"
#include "cl_floor.h"

/* replication.c */
int cl_session_ok(nl_cluster *cl);
/* The role of (name, s) with a reference (cl_role_put), or NULL when this node is not its
 * primary. */
repl_role *cl_role_get(nl_cluster *cl, const char *name, uint32_t s);
void cl_role_put(repl_role *r);
/* One event through the role's state machine under its lock (now_ms filled in when 0);
 * the actions out. _locked: r->mu held. */
void cl_role_step(repl_role *r, nl_repl_event *ev, nl_repl_actions *a);
void cl_role_step_locked(repl_role *r, nl_repl_event *ev);
/* replication.c, for moves.c */
void cl_role_deposed(repl_role *r, const char *why);
/* The role's view follows a map entry it read or wrote (a step of its state machine). */
void cl_role_map(repl_role *r, const nl_shard_entry *e, int32_t version);
/* The collection's map read from ZooKeeper now into c: 0 when it still makes this node the
 * primary of r's shard at r's epoch, NL_ESTALE when not, another error when unread. */
int cl_role_fresh(repl_role *r, cl_coll *c);
/* Acknowledged sequences of in-sync members of e other than this node and skip, into
 * out (at most NL_MAX_REPLICAS); role->mu held. */
size_t cl_role_acked_locked(const repl_role *r, const nl_shard_entry *e, const char *skip, uint64_t *out);

#endif
