/*
 * nl_vamana.h — the Vamana graph of DiskANN, built and searched in memory.
 *
 * Build (Subramanya et al., NeurIPS'19, Algorithm 3): start from an empty graph and the
 * medoid s; visit every point p in a random order, GreedySearch(s, x_p, L) from s, and
 * set N_out(p) = RobustPrune(p, V, alpha, R) over the visited set V; then add p to
 * each new neighbour's list, pruning that list when it overflows. Two passes: alpha = 1
 * (a sparse, navigable graph), then the user's alpha (long-range edges). Threads take
 * points from a shared cursor; each list is guarded by its own spin lock.
 *
 * Metrics: l2 and cosine build and search with their own distance; ip searches by
 * negated inner product over a graph built with L2 geometry (the prune rule needs a
 * non-negative distance).
 *
 * Lifecycle: nl_vamana_build (or nl_vamana_from_graph for a loaded graph) -> searches,
 * each through its own nl_vamana_searcher (one per thread; searchers are not shared)
 * -> destroy searchers -> nl_vamana_destroy. The index borrows the vectors: the caller
 * keeps vs->data alive and unchanged until nl_vamana_destroy.
 */
#ifndef NL_VAMANA_H
#define NL_VAMANA_H

#include "nl_common.h"
#include "nl_distance.h"
#include "nl_graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    uint32_t R;       /* max degree (default 64) */
    uint32_t L;       /* build list size (default 100) */
    float alpha;      /* second-pass prune factor (default 1.2) */
    unsigned threads; /* 0 = all CPUs */
    uint64_t seed;    /* insertion order */
    int single_pass;  /* skip the alpha = 1 pass (faster, slightly worse graph) */
} nl_vamana_params;

void nl_vamana_params_default(nl_vamana_params *p);

/* Progress: phase name, units done, units total. Called from build threads, at most a
 * few times a second; must be thread-safe and must not call back into the index. */
typedef void (*nl_progress_fn)(void *ctx, const char *phase, uint64_t done, uint64_t total);

typedef struct nl_vamana nl_vamana;

/* Builds over vs (borrowed). On success *out is owned by the caller. */
int nl_vamana_build(const nl_vecset *vs, nl_metric metric, const nl_vamana_params *p,
                    nl_progress_fn progress, void *progress_ctx, nl_vamana **out);
/* Wraps an existing graph (ownership of g passes to the index, even on failure). */
int nl_vamana_from_graph(const nl_vecset *vs, nl_metric metric, nl_graph *g, uint32_t medoid,
                         nl_vamana **out);

/* RobustPrune(p, V, alpha, R) as the build runs it, for callers that prune lists outside
 * a build (the partitioned import's merge). ids[0..nc) are the candidates sorted by d[]
 * ascending (their distances to p by `dist`; p itself and duplicates removed). alpha is
 * raised from 1 by factors of 1.2, so the nearest non-occluded candidates are taken
 * before the ones only alpha lets through; a candidate is dropped once alpha times its
 * distance to a taken one is at most its distance to p. Distances between candidates:
 * dist(f32 copy of one, stored row of the other) over vs, plus (ext[a] - ext[b])^2 when
 * ext (one value per row) is given. Exact copies of p (d 0) are never occluded, but at
 * most R/2 of them are taken, so a group of identical vectors stays connected within
 * itself. occl: nc floats, xbuf: vs->dim floats, both scratch. Writes at most R ids to
 * out and returns how many. */
uint32_t nl_vamana_prune(const nl_vecset *vs, nl_dist_fn dist, const float *ext, const uint32_t *ids, const float *d,
                         uint32_t nc, float alpha, uint32_t R, float *occl, float *xbuf, uint32_t *out);
void nl_vamana_destroy(nl_vamana *ix);

/* Delete consolidation (FreshDiskANN) over a graph in arrays, in place: vs->n nodes, the
 * list of u at adj[u * stride], deg[u] entries (<= stride, ids < vs->n); dead[u] nonzero
 * marks the deleted. Every live node that lists a deleted one gets a new list, by
 * RobustPrune(u, alpha, R) over its live neighbours and those reached through deleted
 * ones, with the geometry a dynamic index of this metric builds with; deleted nodes end
 * with deg 0 and no live list names one. A deleted *medoid moves to a live node near it.
 * *repaired (optional) counts the lists rewritten. Runs on `threads` (0: all CPUs).
 * vamana_consolidate.c says how. */
int nl_vamana_consolidate(const nl_vecset *vs, nl_metric metric, uint32_t *adj, uint32_t stride, uint32_t *deg,
                          const uint8_t *dead, uint32_t R, float alpha, unsigned threads, uint32_t *medoid,
                          size_t *repaired);

const nl_graph *nl_vamana_graph(const nl_vamana *ix);
uint32_t nl_vamana_medoid(const nl_vamana *ix);
const nl_vecset *nl_vamana_vectors(const nl_vamana *ix);
nl_metric nl_vamana_metric(const nl_vamana *ix);

typedef struct nl_vamana_searcher nl_vamana_searcher;

/* Scratch for searches with list size up to max_L; *out owned by the caller. */
int nl_vamana_searcher_create(const nl_vamana *ix, uint32_t max_L, nl_vamana_searcher **out);
void nl_vamana_searcher_destroy(nl_vamana_searcher *s);

typedef struct {
    uint32_t hops;       /* nodes expanded */
    uint32_t dist_comps; /* distances computed */
} nl_search_stats;

/* k nearest of q (dim floats) with list size L (k <= L <= max_L). Writes k ids and
 * distances, nearest first; returns the number found (< k only when the graph holds
 * fewer reachable points) or a negative code. */
int nl_vamana_search(nl_vamana_searcher *s, const float *q, uint32_t k, uint32_t L,
                     uint32_t *ids, float *dists, nl_search_stats *stats);

/* Filtered search: the same walk, but only nodes with allow(ctx, id) != 0 become
 * results; the others are still expanded (they route the search to allowed nodes beyond
 * them). Every visited node has its exact distance, so the result is the k nearest
 * allowed nodes among all visited, not only the list. Returns how many were found. */
typedef int (*nl_vamana_allow_fn)(const void *ctx, uint32_t id);
int nl_vamana_search_filtered(nl_vamana_searcher *s, const float *q, uint32_t k, uint32_t L,
                              nl_vamana_allow_fn allow, const void *ctx, uint32_t *ids, float *dists,
                              nl_search_stats *stats);
/* Exact scan of the given nodes (any order; nodes of a dynamic index whose vector is not
 * yet in place are skipped): the k nearest into ids/dists, nearest first. Returns how
 * many. For a filter that allows few points, this beats any walk. */
int nl_vamana_scan(const nl_vamana *ix, const float *q, const uint32_t *nodes, size_t n, uint32_t k, uint32_t *ids,
                   float *dists);
/* 1 when node id's vector is in place (always, for a built index). */
int nl_vamana_slot_ready(const nl_vamana *ix, uint32_t id);

/* ---- dynamic indexes: grow by insertion, searchable while inserts run ----
 *
 * FreshDiskANN's insert: GreedySearch from the entry point (the first point inserted),
 * RobustPrune with the given alpha, reverse edges pruned when a list is full. The index
 * owns a copy of every vector, up to a capacity fixed at creation (the engine bounds its
 * fresh index by the flush threshold, so it never needs to grow). Any number of threads
 * may insert and search at once. Lists may hold up to 1.3 R while inserts run;
 * nl_vamana_seal prunes them to R, so a sealed graph can be written to a segment. */
int nl_vamana_create_dynamic(uint32_t dim, nl_dtype dtype, nl_metric metric, const nl_vamana_params *p,
                             size_t capacity, nl_vamana **out);
/* A dynamic index that starts from an existing graph (a segment being merged into):
 * n vectors (stored type) and their lists (row u of adj, adj_stride apart, deg[u] <= R
 * ids < n), entered at medoid. Later inserts link into it as into any dynamic index. */
int nl_vamana_create_dynamic_seeded(uint32_t dim, nl_dtype dtype, nl_metric metric, const nl_vamana_params *p,
                                    size_t capacity, const void *vecs, size_t n, const uint32_t *adj,
                                    uint32_t adj_stride, const uint32_t *deg, uint32_t medoid, nl_vamana **out);
/* Copies vec (dim elements of the stored type) in and links it. *slot (optional) gets its
 * ordinal, assigned in call order. NL_EINVAL when the index is full. */
int nl_vamana_insert(nl_vamana *ix, const void *vec, uint32_t *slot);
/* Two-step insert for callers that must know a point's slot before it becomes
 * reachable (the engine maps slots to versions): reserve n consecutive slots, then fill
 * each with nl_vamana_insert_at, from any threads. Every reserved slot must be filled. */
int nl_vamana_reserve(nl_vamana *ix, size_t n, uint32_t *first);
int nl_vamana_insert_at(nl_vamana *ix, uint32_t slot, const void *vec);
/* Points whose insert has completed, and slots reserved. */
size_t nl_vamana_size(const nl_vamana *ix);
size_t nl_vamana_reserved(const nl_vamana *ix);
/* Ends insertion: once every reserved slot is filled, shrinks the index to them and
 * repairs connectivity (nodes a later prune left with no in-edge get one), so the graph
 * can be written as a segment. Searches may run during and after the seal; inserts
 * fail afterwards. */
int nl_vamana_seal(nl_vamana *ix);

#ifdef __cplusplus
}
#endif
#endif
