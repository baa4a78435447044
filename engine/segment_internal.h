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
    uint8_t *codes;
    uint64_t *ids;        /* NULL when ids are ordinals */
    /* node cache: records of the first cache_n hot nodes, and a hash ordinal -> slot */
    uint32_t cache_n;
    unsigned char *cache_recs;
    uint32_t *cache_keys; /* ordinal + 1; 0 = empty */
    uint32_t *cache_vals;
    uint32_t cache_mask;
    nl_dist_fn dist;
    uint64_t ram_bytes;
};

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
