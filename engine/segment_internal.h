/* segment_internal.h — the open-segment state shared by segment_read.c and
 * segment_search.c. Invariants after nl_segment_open succeeds: every in-RAM section has
 * passed its checksum; every hot-list and cached neighbour ordinal is < count; the cache
 * hash holds exactly cache_n keys. */
#ifndef NL_SEGMENT_INTERNAL_H
#define NL_SEGMENT_INTERNAL_H

#include "nl_distance.h"
#include "nl_segment.h"
#include "segment_format.h"

struct nl_segment {
    int fd;       /* O_DIRECT when direct */
    int fd_buf;   /* buffered descriptor for open-time section reads and verify */
    int direct;
    char path[1024];
    uint64_t n;
    uint32_t dim, R, m, medoid, flags, build_L; /* m: bytes of one code */
    uint32_t format;
    nl_code_spec code;
    float build_alpha;
    nl_dtype dtype;
    nl_metric metric;
    seg_geom geo;
    uint32_t vec_bytes;
    uint64_t file_bytes;
    nl_quant *quant;
    uint64_t quant_fp; /* fingerprint of the codebook's bytes: equal ones share a prepared query */
    uint8_t *codes;
    uint64_t *ids;        /* NULL when ids are ordinals */
    /* node cache: records of the first cache_n hot nodes, and a hash ordinal -> slot */
    uint32_t cache_n;
    unsigned char *cache_recs;
    uint32_t *cache_keys; /* ordinal + 1; 0 = empty */
    uint32_t *cache_vals;
    uint32_t cache_mask;
    /* seed table (segment_seeds.c): up to seed_M ordinals of each of seed_C groups */
    uint32_t seed_C, seed_M;
    uint32_t *seed_cnt; /* seed_C: members held per group */
    uint32_t *seed_ids; /* seed_C x seed_M */
    nl_dist_fn dist;
    uint64_t ram_bytes;
};

/* ---- segment_seeds.c: the search's starting points near the query ---- */
#define SEG_SEED_MEMBERS 256u    /* ordinals kept per group at most */
#define SEG_SEED_MIN_MEMBERS 8u  /* fewer a group than the budget allows: no table */
#define SEG_SEED_PROBES 8u       /* groups nearest the query whose members are estimated */
#define SEG_SEED_TAKE 8u         /* best members that join the candidate list */
/* Builds s's seed table within budget bytes; returns the bytes it holds (0: none) or
 * -ENOMEM. Needs s->quant and checked s->codes. */
int64_t seg_seeds_build(struct nl_segment *s, uint64_t budget);
void seg_seeds_free(struct nl_segment *s);
/* Up to SEG_SEED_TAKE members nearest the prepared query by their codes, nearest first:
 * ordinals into ids, estimates into d, lower bounds (estimate minus error; -inf when
 * eps0 is 0) into lb. Returns how many. */
uint32_t seg_seeds_pick(const struct nl_segment *s, const nl_quant_query *qq, float eps0, uint32_t *ids, float *d,
                        float *lb);

/* Cached record of u, or NULL. */
static inline const unsigned char *seg_cache_get(const struct nl_segment *s, uint32_t u)
{
    if (!s->cache_n)
        return NULL;
    uint32_t h = (u * 2654435761u) & s->cache_mask;
    for (;;) {
        uint32_t k = s->cache_keys[h];
        if (k == 0)
            return NULL;
        if (k == u + 1)
            return s->cache_recs + (size_t)s->cache_vals[h] * s->geo.node_bytes;
        h = (h + 1) & s->cache_mask;
    }
}

/* Checks one node record in place: degree <= R and neighbours < n. */
static inline int seg_record_ok(const struct nl_segment *s, const unsigned char *rec)
{
    uint32_t deg;
    memcpy(&deg, rec + s->vec_bytes, 4);
    if (deg > s->R)
        return 0;
    const unsigned char *nb = rec + s->vec_bytes + 4;
    for (uint32_t i = 0; i < deg; i++) {
        uint32_t v;
        memcpy(&v, nb + 4 * (size_t)i, 4);
        if (v >= s->n)
            return 0;
    }
    return 1;
}

/* Verifies the CRC of each sector in buf (spn sectors) and, for a packed sector, points
 * *rec at node u's record; for a spanning node copies the record into scratch. Returns
 * 0 or NL_ECORRUPT. */
int seg_extract_record(const struct nl_segment *s, uint32_t u, const unsigned char *buf,
                       unsigned char *scratch, const unsigned char **rec);

#endif
