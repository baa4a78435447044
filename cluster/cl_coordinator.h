/* cl_coordinator.h — the elected coordinator's pass (coordinator.c). Not installed. */
#ifndef NL_CL_COORDINATOR_H
#define NL_CL_COORDINATOR_H

#include "cluster_internal.h"
#include "cl_floor.h"

/* One pass of the elected coordinator (coordinator.c): maps of new collections,
 * failovers, move plans. Worker thread. */
void cl_coordinate(nl_cluster *cl, const cl_snapshot *s);

#endif
