/*
 * nl_layout.h — the order in which a graph's node records go to disk, so that one sector
 * read brings nodes a search is likely to expand next (Starling, SIGMOD 2024: "block
 * shuffling"). Pure: a graph in, a permutation out; the segment writer applies it.
 *
 * A block is the records one sector holds (per_block of them). nl_layout_blocks fills
 * each block from a seed with the nodes most linked to what the block already holds; its
 * quality is measured by the overlap ratio (Starling's OR): the share of a node's block
 * mates that are its out-neighbours, averaged over nodes.
 */
#ifndef NL_LAYOUT_H
#define NL_LAYOUT_H

#include "nl_graph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* order[u] (n = nl_graph_size(g) entries, caller's) = the node at file position u, blocks
 * of per_block consecutive positions. Seeds are taken in breadth-first order from entry
 * (then the unreachable, by ordinal), so the blocks near the entry point fill first.
 * per_block <= 1 gives the identity. 0 or -ENOMEM. */
int nl_layout_blocks(const nl_graph *g, uint32_t entry, uint32_t per_block, uint32_t *order);

/* The overlap ratio of order (NULL = identity) for blocks of per_block: the mean over
 * nodes of (out-neighbours in the node's block) / (the block's other members). 0..1; -1
 * when the inverse cannot be allocated. */
double nl_layout_overlap(const nl_graph *g, const uint32_t *order, uint32_t per_block);

/* The same over a graph read through a callback (a segment on disk): nbrs returns u's
 * list (at most R entries, ids >= n ignored), valid until the next call. */
typedef const uint32_t *(*nl_layout_nbrs_fn)(void *ctx, uint32_t u, uint32_t *degree);
int nl_layout_blocks_fn(size_t n, uint32_t R, nl_layout_nbrs_fn nbrs, void *ctx, uint32_t entry, uint32_t per_block,
                        uint32_t *order);
double nl_layout_overlap_fn(size_t n, nl_layout_nbrs_fn nbrs, void *ctx, const uint32_t *order, uint32_t per_block);

#ifdef __cplusplus
}
#endif
#endif
