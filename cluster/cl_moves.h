/* cl_moves.h — the primary's side of a move, the drop of copies moved away and the
 * compaction stagger (moves.c). Not installed. */
#ifndef NL_CL_MOVES_H
#define NL_CL_MOVES_H

#include "cluster_internal.h"
#include "cl_role.h"

/* The primary's part of a move (after each exchange of the link to its target), and a
 * node's removal of its copies moved away (the worker). */
void cl_move_step(repl_link *l);
void cl_moves_drop_local(nl_cluster *cl, const cl_snapshot *s);
/* The engine's compaction gate (nl_db_options.compact_gate). */
int cl_compact_gate(void *ctx, const char *shard_dir, int begin);

#endif
