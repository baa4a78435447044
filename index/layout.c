/*
 * layout.c — block layout of node records (nl_layout.h).
 *
 * Why: a disk search reads one sector for one node, and with small records (128-d u8 at
 * R = 64 is 388 bytes, ten to a sector) the other nine come along unused when records lie
 * in ordinal order, which for imported data is arbitrary. If a sector held a node and the
 * nodes it links to most, the search could expand those too without another read
 * (segment_search.c does, for segments written in this layout).
 *
 * How (the greedy start of Starling's block shuffling, without its refinement rounds):
 * seeds are taken in breadth-first order from the entry point; a block starts from its
 * seed and repeatedly takes the unplaced node with the most out-edges from the nodes the
 * block holds (ties to the one seen first, which is the nearer: lists are mostly sorted
 * by distance), until it is full or no linked node is left, when the next seed fills it.
 * Cost O(n x per_block x R) time and 10 bytes a node; deterministic.
 *
 * Invariant: order is a permutation of 0..n-1 (every node placed exactly once).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nl_layout.h"

static const uint32_t *graph_nbrs(void *ctx, uint32_t u, uint32_t *deg)
{
    return nl_graph_neighbors(ctx, u, deg);
}

/* Breadth-first order from entry, then every node the walk missed, by ordinal. */
static void bfs_order(size_t n, nl_layout_nbrs_fn nbrs, void *ctx, uint32_t entry, uint8_t *seen, uint32_t *seq)
{
    size_t head = 0, tail = 0;
    if (entry < n) {
        seq[tail++] = entry;
        seen[entry] = 1;
    }
    for (size_t next = 0;;) {
        while (head < tail) {
            uint32_t deg;
            const uint32_t *l = nbrs(ctx, seq[head++], &deg);
            for (uint32_t i = 0; i < deg; i++)
                if (l[i] < n && !seen[l[i]]) {
                    seen[l[i]] = 1;
                    seq[tail++] = l[i];
                }
        }
        while (next < n && seen[next])
            next++;
        if (next >= n)
            break;
        seen[next] = 1;
        seq[tail++] = (uint32_t)next;
    }
}

int nl_layout_blocks(const nl_graph *g, uint32_t entry, uint32_t per_block, uint32_t *order)
{
    return nl_layout_blocks_fn(nl_graph_size(g), nl_graph_max_degree(g), graph_nbrs, (void *)g, entry, per_block, order);
}

int nl_layout_blocks_fn(size_t n, uint32_t R, nl_layout_nbrs_fn nbrs, void *ctx, uint32_t entry, uint32_t per_block,
                        uint32_t *order)
{
    if (per_block <= 1 || n <= 1) {
        for (size_t u = 0; u < n; u++)
            order[u] = (uint32_t)u;
        return 0;
    }
    uint8_t *placed = calloc(n, 1);
    uint32_t *seq = malloc(sizeof(uint32_t) * n);
    uint16_t *score = calloc(n, sizeof(uint16_t));
    size_t tcap = (size_t)per_block * (R ? R : 1);
    uint32_t *touched = malloc(sizeof(uint32_t) * tcap);
    if (!placed || !seq || !score || !touched) {
        free(placed);
        free(seq);
        free(score);
        free(touched);
        return -ENOMEM;
    }
    bfs_order(n, nbrs, ctx, entry, placed, seq); /* placed doubles as the walk's seen set */
    memset(placed, 0, n);
    size_t pos = 0, seed = 0;
    while (pos < n) {
        size_t start = pos, nt = 0;
        while (pos - start < per_block && pos < n) {
            uint32_t x = UINT32_MAX;
            /* the unplaced node most linked from the block (first seen on ties) */
            uint32_t best = 0;
            for (size_t i = 0; i < nt; i++) {
                uint32_t v = touched[i];
                if (!placed[v] && score[v] > best) {
                    best = score[v];
                    x = v;
                }
            }
            if (x == UINT32_MAX) { /* nothing linked is left: the next seed */
                while (seed < n && placed[seq[seed]])
                    seed++;
                x = seq[seed];
            }
            placed[x] = 1;
            order[pos++] = x;
            uint32_t deg;
            const uint32_t *l = nbrs(ctx, x, &deg);
            for (uint32_t i = 0; i < deg; i++) {
                uint32_t v = l[i];
                if (v >= n || placed[v])
                    continue;
                if (score[v] == 0) {
                    if (nt == tcap)
                        continue; /* cannot happen: per_block members x R edges */
                    touched[nt++] = v;
                }
                if (score[v] < UINT16_MAX)
                    score[v]++;
            }
        }
        for (size_t i = 0; i < nt; i++)
            score[touched[i]] = 0;
    }
    free(placed);
    free(seq);
    free(score);
    free(touched);
    return 0;
}

double nl_layout_overlap(const nl_graph *g, const uint32_t *order, uint32_t per_block)
{
    return nl_layout_overlap_fn(nl_graph_size(g), graph_nbrs, (void *)g, order, per_block);
}

double nl_layout_overlap_fn(size_t n, nl_layout_nbrs_fn nbrs, void *ctx, const uint32_t *order, uint32_t per_block)
{
    if (per_block <= 1 || n <= 1)
        return 0.0;
    uint32_t *pos = malloc(sizeof(uint32_t) * n);
    if (!pos)
        return -1.0;
    for (size_t u = 0; u < n; u++)
        pos[order ? order[u] : u] = (uint32_t)u;
    double sum = 0.0;
    for (size_t u = 0; u < n; u++) {
        uint64_t b = pos[u] / per_block;
        uint64_t first = b * per_block, last = first + per_block < n ? first + per_block : n;
        if (last - first <= 1)
            continue;
        uint32_t deg, in = 0;
        const uint32_t *l = nbrs(ctx, (uint32_t)u, &deg);
        for (uint32_t i = 0; i < deg; i++)
            in += l[i] < n && pos[l[i]] / per_block == b;
        sum += (double)in / (double)(last - first - 1);
    }
    free(pos);
    return sum / (double)n;
}
