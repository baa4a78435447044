/*
 * nl_graph.h — a directed graph over ordinals 0..n-1 with at most `max_degree`
 * out-neighbours per node, stored as a flat n x capacity array; plus the validator that
 * every built or loaded graph must pass.
 *
 * Lifecycle: nl_graph_create -> set/get neighbours -> nl_graph_destroy. Concurrent
 * writers to the same node must serialise themselves (the Vamana build holds per-node
 * locks); readers of a finished graph need no locking.
 */
#ifndef NL_GRAPH_H
#define NL_GRAPH_H

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nl_graph nl_graph;

/* capacity >= max_degree lets a builder overfill lists before pruning them. */
int nl_graph_create(size_t n, uint32_t max_degree, uint32_t capacity, nl_graph **out);
void nl_graph_destroy(nl_graph *g);

size_t nl_graph_size(const nl_graph *g);
uint32_t nl_graph_max_degree(const nl_graph *g);
/* Neighbours of u (borrowed, valid until the list is next changed). */
const uint32_t *nl_graph_neighbors(const nl_graph *g, uint32_t u, uint32_t *degree);
/* Replaces u's list; NL_EINVAL if degree exceeds the capacity. */
int nl_graph_set_neighbors(nl_graph *g, uint32_t u, const uint32_t *nbrs, uint32_t degree);

typedef struct {
    size_t nodes;
    size_t edges;
    uint32_t min_degree;
    uint32_t max_degree;
    double mean_degree;
    size_t over_degree;      /* nodes with more than max_degree neighbours */
    size_t out_of_range;     /* neighbour ids >= n */
    size_t self_loops;
    size_t duplicate_edges;  /* the same neighbour twice in one list */
    size_t unreachable;      /* nodes not reachable from the entry point */
} nl_graph_report;

/* Fills rep and returns 0 when the graph is sound (no over-degree, out-of-range,
 * self-loop or duplicate edges, and every node reachable from entry), else
 * NL_ECORRUPT with a detail naming the first fault. */
int nl_graph_validate(const nl_graph *g, uint32_t entry, nl_graph_report *rep);

#ifdef __cplusplus
}
#endif
#endif
