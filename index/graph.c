/*
 * graph.c — graph storage and the validator. The validator is the library's own check on
 * every graph it builds or loads; it walks each list once and then runs a BFS from the
 * entry point, so it is O(n R) time and n bits + n ids of memory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph_impl.h"

int nl_graph_create(size_t n, uint32_t max_degree, uint32_t capacity, nl_graph **out)
{
    *out = NULL;
    if (n == 0 || n > UINT32_MAX || max_degree == 0 || capacity < max_degree)
        return nl_fail(NL_EINVAL, "graph: n=%zu R=%u capacity=%u", n, max_degree, capacity);
    nl_graph *g = calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->n = n;
    g->R = max_degree;
    g->cap = capacity;
    g->deg = calloc(n, sizeof(uint32_t));
    g->adj = malloc(sizeof(uint32_t) * n * capacity);
    if (!g->deg || !g->adj) {
        nl_graph_destroy(g);
        return nl_fail(-ENOMEM, "graph: cannot allocate %zu lists of %u", n, capacity);
    }
    *out = g;
    return 0;
}

void nl_graph_destroy(nl_graph *g)
{
    if (!g)
        return;
    free(g->deg);
    free(g->adj);
    free(g);
}

size_t nl_graph_size(const nl_graph *g) { return g->n; }
uint32_t nl_graph_max_degree(const nl_graph *g) { return g->R; }

const uint32_t *nl_graph_neighbors(const nl_graph *g, uint32_t u, uint32_t *degree)
{
    *degree = g->deg[u];
    return g->adj + (size_t)u * g->cap;
}

int nl_graph_set_neighbors(nl_graph *g, uint32_t u, const uint32_t *nbrs, uint32_t degree)
{
    if (u >= g->n || degree > g->cap)
        return nl_fail(NL_EINVAL, "graph: node %u degree %u (capacity %u)", u, degree, g->cap);
    memcpy(g->adj + (size_t)u * g->cap, nbrs, sizeof(uint32_t) * degree);
    g->deg[u] = degree;
    return 0;
}

int nl_graph_validate(const nl_graph *g, uint32_t entry, nl_graph_report *rep)
{
    nl_graph_report r;
    memset(&r, 0, sizeof r);
    r.nodes = g->n;
    r.min_degree = UINT32_MAX;
    char first[160] = "";
    uint8_t *seen = calloc((g->n + 7) / 8, 1);
    uint32_t *queue = malloc(sizeof(uint32_t) * g->n);
    if (!seen || !queue) {
        free(seen);
        free(queue);
        return -ENOMEM;
    }
    for (size_t u = 0; u < g->n; u++) {
        uint32_t deg = g->deg[u];
        if (deg < r.min_degree) r.min_degree = deg;
        if (deg > r.max_degree) r.max_degree = deg;
        if (deg > g->R) {
            r.over_degree++;
            if (!first[0]) snprintf(first, sizeof first, "node %zu has degree %u > %u", u, deg, g->R);
            if (deg > g->cap) deg = g->cap;
        }
        r.edges += deg;
        const uint32_t *l = g->adj + u * g->cap;
        for (uint32_t i = 0; i < deg; i++) {
            if (l[i] >= g->n) {
                r.out_of_range++;
                if (!first[0]) snprintf(first, sizeof first, "node %zu: neighbour %u >= n=%zu", u, l[i], g->n);
            } else if (l[i] == u) {
                r.self_loops++;
                if (!first[0]) snprintf(first, sizeof first, "node %zu links to itself", u);
            }
            for (uint32_t j = 0; j < i; j++)
                if (l[j] == l[i]) {
                    r.duplicate_edges++;
                    if (!first[0]) snprintf(first, sizeof first, "node %zu lists %u twice", u, l[i]);
                    break;
                }
        }
    }
    r.mean_degree = g->n ? (double)r.edges / (double)g->n : 0;
    size_t reached = 0;
    if (entry < g->n) {
        size_t head = 0, tail = 0;
        queue[tail++] = entry;
        seen[entry / 8] |= (uint8_t)(1u << (entry % 8));
        while (head < tail) {
            uint32_t u = queue[head++];
            uint32_t deg = g->deg[u] < g->cap ? g->deg[u] : g->cap;
            const uint32_t *l = g->adj + (size_t)u * g->cap;
            for (uint32_t i = 0; i < deg; i++) {
                uint32_t v = l[i];
                if (v >= g->n || (seen[v / 8] & (1u << (v % 8))))
                    continue;
                seen[v / 8] |= (uint8_t)(1u << (v % 8));
                queue[tail++] = v;
            }
        }
        reached = tail;
    } else if (!first[0]) {
        snprintf(first, sizeof first, "entry point %u >= n=%zu", entry, g->n);
    }
    r.unreachable = g->n - reached;
    if (r.unreachable && !first[0])
        snprintf(first, sizeof first, "%zu of %zu nodes unreachable from entry %u", r.unreachable, g->n, entry);
    free(seen);
    free(queue);
    if (rep)
        *rep = r;
    if (first[0])
        return nl_fail(NL_ECORRUPT, "graph: %s", first);
    return 0;
}
