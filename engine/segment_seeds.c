/*
 * segment_seeds.c — where a disk search starts: a few points near the query, found in
 * RAM, so the walk does not spend its first reads getting from the medoid to the query's
 * neighbourhood.
 *
 * A Vamana walk from the medoid pays a read for every hop of the approach, and on real
 * data those hops are a large share of a query: on sift-images-420k at L = 20 the walk
 * from the medoid reads 22.8 sectors with the node cache (the records of the first hops)
 * and 29.5 without it. Starling (SIGMOD 2024) starts from the nearest points of an
 * in-memory navigation graph over a sample; nearline already holds what such a start
 * needs. A RaBitQ code names the k-means centroid its residual is to (about 256 points a
 * centroid), and a prepared query has its distance to every centroid (nl_quant_group_dist;
 * computed for the estimate anyway). So the groups are an inverted file the search gets
 * for free: the probes nearest groups, up to M members of each estimated by their codes,
 * and the best few of those join the candidate list beside the medoid.
 *
 * The table is members only: M ordinals a group (4 bytes each), a uniform sample of the
 * group when it has more (reservoir sampling with a fixed seed, so a segment always gets
 * the same table). It is built at open from the codes (one pass, no I/O) and paid from the
 * node cache's budget before the cached records, because per byte it saves more reads:
 * on sift-images-420k, 1 MiB of table alone reads 19.2 sectors at L = 20 where 9 MiB of
 * cached records alone read 22.8 (docs/decisions.md). A segment without groups (PQ
 * codes), too small to gain, or with too little budget for SEG_SEED_MIN_MEMBERS a group
 * has no table and starts from the medoid alone, as before.
 *
 * Invariants: seed_M == 0 or (seed_C == nl_quant_groups(quant), seed_cnt[g] <= seed_M,
 * and every ordinal in seed_ids[g * seed_M .. + seed_cnt[g]) is < n and names group g).
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "nl_util.h"
#include "segment_internal.h"

/* A segment smaller than this gains nothing a few hops would not give. Lowered from 4,096
 * when a shard's segments came to be walked as one beam (segment_search.c), which starves a
 * segment entered only at its medoid: flushes of 2,500 points are common. */
#define SEG_SEED_MIN_POINTS 1024u

int64_t seg_seeds_build(nl_segment *s, uint64_t budget)
{
    const uint32_t C = nl_quant_groups(s->quant);
    if (C == 0 || s->n < SEG_SEED_MIN_POINTS)
        return 0;
    uint64_t fit = budget / (4ull * C); /* M members a group and a count: 4 (M + 1) C bytes */
    fit = fit > 0 ? fit - 1 : 0;
    uint32_t M = fit < SEG_SEED_MEMBERS ? (uint32_t)fit : SEG_SEED_MEMBERS;
    if (M < SEG_SEED_MIN_MEMBERS)
        return 0;
    uint32_t *cnt = calloc(C, sizeof *cnt), *ids = calloc((size_t)C * M, sizeof *ids);
    uint64_t *seen = calloc(C, sizeof *seen);
    if (!cnt || !ids || !seen) {
        free(cnt);
        free(ids);
        free(seen);
        return -ENOMEM;
    }
    nl_rng rng;
    nl_rng_seed(&rng, s->n * 0x2545f4914f6cdd1dull + C);
    for (uint64_t u = 0; u < s->n; u++) {
        uint32_t g = nl_quant_group_of(s->quant, s->codes + (size_t)u * s->m);
        if (g >= C)
            continue; /* cannot happen for checked codes; stays harmless if it does */
        uint64_t k = seen[g]++;
        if (cnt[g] < M) {
            ids[(size_t)g * M + cnt[g]++] = (uint32_t)u;
        } else {
            uint64_t r = nl_rng_below(&rng, k + 1); /* Algorithm R: keep u with chance M/(k+1) */
            if (r < M)
                ids[(size_t)g * M + r] = (uint32_t)u;
        }
    }
    free(seen);
    s->seed_C = C;
    s->seed_M = M;
    s->seed_cnt = cnt;
    s->seed_ids = ids;
    return (int64_t)C * M * 4 + (int64_t)C * 4;
}

void seg_seeds_free(nl_segment *s)
{
    free(s->seed_cnt);
    free(s->seed_ids);
    s->seed_cnt = s->seed_ids = NULL;
    s->seed_C = s->seed_M = 0;
}

/* Keeps the `cap` smallest (d, id) pairs in ascending order; *n of them held. */
static inline void keep_best(uint32_t *id, float *d, float *lb, uint32_t *n, uint32_t cap, uint32_t u, float du,
                             float lbu)
{
    if (*n == cap && !(du < d[cap - 1]))
        return;
    uint32_t j = *n < cap ? (*n)++ : cap - 1;
    while (j > 0 && d[j - 1] > du) {
        d[j] = d[j - 1];
        id[j] = id[j - 1];
        if (lb)
            lb[j] = lb[j - 1];
        j--;
    }
    d[j] = du;
    id[j] = u;
    if (lb)
        lb[j] = lbu;
}

uint32_t seg_seeds_pick(const nl_segment *s, const nl_quant_query *qq, float eps0, uint32_t *ids, float *d,
                        float *lb)
{
    if (s->seed_M == 0)
        return 0;
    uint32_t g[SEG_SEED_PROBES], ng = 0;
    float gd[SEG_SEED_PROBES];
    for (uint32_t c = 0; c < s->seed_C; c++)
        keep_best(g, gd, NULL, &ng, SEG_SEED_PROBES, c, nl_quant_group_dist(qq, c), 0.0f);
    uint32_t n = 0;
    for (uint32_t i = 0; i < ng; i++) {
        const uint32_t *mem = s->seed_ids + (size_t)g[i] * s->seed_M;
        for (uint32_t j = 0; j < s->seed_cnt[g[i]]; j++) {
            if (j + 8 < s->seed_cnt[g[i]])
                __builtin_prefetch(s->codes + (size_t)mem[j + 8] * s->m);
            float err, e = nl_quant_estimate(qq, s->codes + (size_t)mem[j] * s->m, &err);
            keep_best(ids, d, lb, &n, SEG_SEED_TAKE, mem[j], e, eps0 > 0 ? e - err : -INFINITY);
        }
    }
    return n;
}
