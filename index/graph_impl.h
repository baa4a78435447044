/* graph_impl.h — the nl_graph layout, shared inside index/ so the Vamana build can work
 * on lists in place. Invariant: deg[u] <= cap for every u. */
#ifndef NL_GRAPH_IMPL_H
#define NL_GRAPH_IMPL_H
#include "nl_graph.h"

struct nl_graph {
    size_t n;
    uint32_t R;   /* the degree bound of a finished graph */
    uint32_t cap; /* slots per node (>= R) */
    uint32_t *deg;
    uint32_t *adj; /* n * cap */
};

static inline uint32_t *nl_graph_list(nl_graph *g, uint32_t u) { return g->adj + (size_t)u * g->cap; }
#endif
