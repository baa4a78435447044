/*
 * segment_write.c — writes a segment file (layout in segment_format.h). The file is
 * streamed front to back through one buffered stream: a zero header sector, the node
 * sectors (each checksummed as it is filled), then the sections, each padded to a sector
 * boundary and checksummed on the way out; the real header goes in last. Durability:
 * temporary name, fsync, rename, fsync of the directory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nl_crc32c.h"
#include "nl_graph.h"
#include "nl_segment.h"
#include "segment_format.h"

typedef struct {
    FILE *f;
    uint64_t pos;
    int err;
} out_stream;

static void put(out_stream *o, const void *p, size_t len, uint32_t *crc)
{
    if (o->err || len == 0)
        return;
    if (fwrite(p, 1, len, o->f) != len)
        o->err = errno ? errno : EIO;
    if (crc)
        *crc = nl_crc32c(*crc, p, len);
    o->pos += len;
}

static void pad_to_sector(out_stream *o)
{
    static const unsigned char zero[SEG_SECTOR];
    uint64_t rem = o->pos % SEG_SECTOR;
    if (rem)
        put(o, zero, SEG_SECTOR - rem, NULL);
}

/* BFS order from the medoid, at most max nodes. */
static uint32_t *hot_list(const nl_graph *g, uint32_t medoid, uint32_t max, uint32_t *count)
{
    size_t n = nl_graph_size(g);
    uint8_t *seen = calloc(n, 1);
    uint32_t *q = malloc(sizeof(uint32_t) * (max ? max : 1));
    if (!seen || !q) {
        free(seen);
        free(q);
        return NULL;
    }
    uint32_t head = 0, tail = 0;
    q[tail++] = medoid;
    seen[medoid] = 1;
    while (head < tail && tail < max) {
        uint32_t deg;
        const uint32_t *l = nl_graph_neighbors(g, q[head++], &deg);
        for (uint32_t i = 0; i < deg && tail < max; i++)
            if (!seen[l[i]]) {
                seen[l[i]] = 1;
                q[tail++] = l[i];
            }
    }
    free(seen);
    *count = tail;
    return q;
}

int nl_segment_write(const char *path, const nl_segment_source *src)
{
    const nl_vamana *ix = src->index;
    const nl_graph *g = nl_vamana_graph(ix);
    const nl_vecset *vs = nl_vamana_vectors(ix);
    uint64_t n = vs->n;
    uint32_t R = nl_graph_max_degree(g);
    uint32_t m = nl_pq_m(src->pq);
    size_t esz = nl_dtype_size(vs->dtype);
    uint32_t vec_bytes = (uint32_t)(vs->dim * esz);
    if (nl_pq_dim(src->pq) != vs->dim)
        return nl_fail(NL_EDIM, "segment: PQ of dimension %u for %u-dimensional vectors", nl_pq_dim(src->pq), vs->dim);
    seg_geom geo = seg_geometry(n, vec_bytes, R);

    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return nl_fail(NL_EINVAL, "segment: path too long");
    out_stream o = {fopen(tmp, "wb"), 0, 0};
    if (!o.f)
        return nl_fail(-errno, "%s: %s", tmp, strerror(errno));
    setvbuf(o.f, NULL, _IOFBF, 1 << 20);
    unsigned char *sector = aligned_alloc(SEG_SECTOR, SEG_SECTOR * (size_t)geo.spn);
    unsigned char *rec = malloc(geo.node_bytes);
    uint32_t hot_n = 0;
    uint32_t hot_max = src->hot_max;
    if (!hot_max) {
        uint64_t h = n / 10 > 1024 ? n / 10 : 1024;
        hot_max = (uint32_t)(h < n ? h : n);
    }
    uint32_t *hot = hot_list(g, nl_vamana_medoid(ix), hot_max, &hot_n);
    unsigned char *pqbuf = malloc(nl_pq_serialized_size(src->pq));
    /* With an order, file ordinal u holds index node order[u]: inv maps node -> ordinal. */
    const uint32_t *order = src->order;
    uint32_t *inv = order ? malloc(sizeof(uint32_t) * (n ? n : 1)) : NULL;
    uint32_t *nbuf = malloc(sizeof(uint32_t) * (R ? R : 1));
    int rc = 0;
    if (!sector || !rec || !hot || !pqbuf || (order && !inv) || !nbuf) {
        rc = -ENOMEM;
        goto fail;
    }
    if (order) {
        memset(inv, 0xff, sizeof(uint32_t) * n);
        for (uint64_t u = 0; u < n; u++) {
            if (order[u] >= n || inv[order[u]] != UINT32_MAX) {
                rc = nl_fail(NL_EINVAL, "segment: order is not a permutation");
                goto fail;
            }
            inv[order[u]] = (uint32_t)u;
        }
        for (uint32_t i = 0; i < hot_n; i++)
            hot[i] = inv[hot[i]];
    }
    uint64_t sec_off[SEC_COUNT] = {0}, sec_len[SEC_COUNT] = {0};
    uint32_t sec_crc[SEC_COUNT] = {0};

    memset(sector, 0, SEG_SECTOR);
    put(&o, sector, SEG_SECTOR, NULL); /* header placeholder */

    /* Node sectors. */
    sec_off[SEC_NODES] = o.pos;
    for (uint64_t u = 0; u < n && !o.err;) {
        memset(sector, 0, SEG_SECTOR * (size_t)geo.spn);
        uint64_t first = u, last = geo.nps ? u + geo.nps : u + 1;
        if (last > n) last = n;
        for (; u < last; u++) {
            uint32_t node = order ? order[u] : (uint32_t)u;
            memcpy(rec, nl_vecset_row(vs, node), vec_bytes);
            uint32_t deg;
            const uint32_t *l = nl_graph_neighbors(g, node, &deg);
            if (order) {
                for (uint32_t i = 0; i < deg; i++)
                    nbuf[i] = inv[l[i]];
                l = nbuf;
            }
            memset(rec + vec_bytes, 0, geo.node_bytes - vec_bytes);
            memcpy(rec + vec_bytes, &deg, 4);
            memcpy(rec + vec_bytes + 4, l, 4 * (size_t)deg);
            if (geo.nps) {
                memcpy(sector + (u - first) * geo.node_bytes, rec, geo.node_bytes);
            } else {
                for (uint32_t s = 0; s < geo.spn; s++) {
                    uint32_t off = s * SEG_PAYLOAD;
                    uint32_t len = geo.node_bytes - off < SEG_PAYLOAD ? geo.node_bytes - off : SEG_PAYLOAD;
                    memcpy(sector + (size_t)s * SEG_SECTOR, rec + off, len);
                }
            }
        }
        for (uint32_t s = 0; s < geo.spn; s++) {
            unsigned char *sp = sector + (size_t)s * SEG_SECTOR;
            seg_put32(sp, SEG_PAYLOAD, nl_crc32c(0, sp, SEG_PAYLOAD));
        }
        put(&o, sector, SEG_SECTOR * (size_t)geo.spn, NULL);
    }
    sec_len[SEC_NODES] = o.pos - sec_off[SEC_NODES];

    /* PQ pivots. */
    sec_off[SEC_PQ_PIVOTS] = o.pos;
    nl_pq_serialize(src->pq, pqbuf, nl_pq_serialized_size(src->pq));
    put(&o, pqbuf, nl_pq_serialized_size(src->pq), &sec_crc[SEC_PQ_PIVOTS]);
    sec_len[SEC_PQ_PIVOTS] = o.pos - sec_off[SEC_PQ_PIVOTS];
    pad_to_sector(&o);

    /* PQ codes. */
    sec_off[SEC_PQ_CODES] = o.pos;
    if (order)
        for (uint64_t u = 0; u < n; u++)
            put(&o, src->codes + (size_t)order[u] * m, m, &sec_crc[SEC_PQ_CODES]);
    else
        put(&o, src->codes, (size_t)n * m, &sec_crc[SEC_PQ_CODES]);
    sec_len[SEC_PQ_CODES] = (uint64_t)n * m;
    pad_to_sector(&o);

    /* Id map (omitted when ids are ordinals). */
    uint32_t flags = 0;
    int identity = 1;
    if (src->ids)
        for (uint64_t u = 0; u < n && identity; u++)
            identity = src->ids[order ? order[u] : u] == u;
    sec_off[SEC_IDMAP] = o.pos;
    if (identity) {
        flags |= SEG_FLAG_IDENTITY_IDS;
    } else if (order) {
        for (uint64_t u = 0; u < n; u++)
            put(&o, &src->ids[order[u]], 8, &sec_crc[SEC_IDMAP]);
        sec_len[SEC_IDMAP] = (uint64_t)n * 8;
        pad_to_sector(&o);
    } else {
        put(&o, src->ids, (size_t)n * 8, &sec_crc[SEC_IDMAP]);
        sec_len[SEC_IDMAP] = (uint64_t)n * 8;
        pad_to_sector(&o);
    }

    /* Hot list. */
    sec_off[SEC_HOT] = o.pos;
    put(&o, &hot_n, 4, &sec_crc[SEC_HOT]);
    put(&o, hot, 4 * (size_t)hot_n, &sec_crc[SEC_HOT]);
    sec_len[SEC_HOT] = 4 + 4 * (uint64_t)hot_n;
    pad_to_sector(&o);

    /* Header. */
    unsigned char *h = sector;
    memset(h, 0, SEG_SECTOR);
    memcpy(h + H_MAGIC, SEG_MAGIC, 8);
    seg_put32(h, H_VERSION, SEG_VERSION);
    seg_put32(h, H_HEADER_BYTES, SEG_SECTOR);
    seg_put64(h, H_COUNT, n);
    seg_put32(h, H_DIM, vs->dim);
    seg_put32(h, H_DTYPE, (uint32_t)vs->dtype);
    seg_put32(h, H_METRIC, (uint32_t)nl_vamana_metric(ix));
    seg_put32(h, H_R, R);
    seg_put32(h, H_NODE_BYTES, geo.node_bytes);
    seg_put32(h, H_NODES_PER_SECTOR, geo.nps);
    seg_put32(h, H_SECTORS_PER_NODE, geo.spn);
    seg_put32(h, H_MEDOID, order ? inv[nl_vamana_medoid(ix)] : nl_vamana_medoid(ix));
    seg_put32(h, H_PQ_M, m);
    seg_put32(h, H_FLAGS, flags);
    seg_put32(h, H_BUILD_L, src->build_L);
    memcpy(h + H_BUILD_ALPHA, &src->build_alpha, 4);
    seg_put64(h, H_NODE_SECTORS, geo.node_sectors);
    for (int s = 0; s < SEC_COUNT; s++) {
        seg_put64(h, H_SECTIONS + s * H_SECTION_SIZE, sec_off[s]);
        seg_put64(h, H_SECTIONS + s * H_SECTION_SIZE + 8, sec_len[s]);
        seg_put32(h, H_SECTIONS + s * H_SECTION_SIZE + 16, sec_crc[s]);
    }
    seg_put32(h, H_CRC, nl_crc32c(0, h, H_CRC));
    if (!o.err && fflush(o.f) != 0)
        o.err = errno;
    if (!o.err && (fseek(o.f, 0, SEEK_SET) != 0 || fwrite(h, 1, SEG_SECTOR, o.f) != SEG_SECTOR))
        o.err = errno ? errno : EIO;
    if (!o.err && (fflush(o.f) != 0 || fsync(fileno(o.f)) != 0))
        o.err = errno;
    if (fclose(o.f) != 0 && !o.err)
        o.err = errno;
    o.f = NULL;
    if (o.err) {
        rc = nl_fail(-o.err, "%s: write failed: %s", tmp, strerror(o.err));
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        rc = nl_fail(-errno, "%s: rename failed: %s", path, strerror(errno));
        goto fail;
    }
    {
        char dirbuf[4096];
        snprintf(dirbuf, sizeof dirbuf, "%s", path);
        int dfd = open(dirname(dirbuf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    free(sector);
    free(rec);
    free(hot);
    free(pqbuf);
    free(inv);
    free(nbuf);
    return 0;
fail:
    if (o.f)
        fclose(o.f);
    unlink(tmp);
    free(sector);
    free(rec);
    free(hot);
    free(pqbuf);
    free(inv);
    free(nbuf);
    return rc;
}
