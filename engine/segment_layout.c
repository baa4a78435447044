/*
 * segment_layout.c — rewrites a segment in block layout (index/nl_layout.h) when its graph
 * was never whole in memory: the partitioned import streams its merged graph into the
 * writer in row order, and this pass lays it out afterwards.
 *
 * How: the segment is opened as any reader would (header, codes, ids validated); node
 * records are read back one sector at a time through the buffered descriptor (the file
 * was just written, so mostly from the page cache) into a small direct-mapped sector
 * cache, which is all the layout needs to walk the graph; the layout is computed; the
 * nodes are written to a new file in that order with their neighbours renumbered, the
 * codes permuted and the id sequence kept (ids ascend by ordinal, so the u-th smallest id
 * goes to new ordinal u and the caller reassigns rows to ids by inv); the new file then
 * replaces the old one atomically.
 *
 * Memory: O(n) words (order, inverse, the layout's scratch) plus the segment's in-RAM
 * sections and SECTOR_CACHE sectors; never the graph itself.
 * Invariant: every record read is checked (sector CRC, degree, neighbour range) before use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nl_catalog.h"
#include "nl_crc32c.h"
#include "nl_layout.h"
#include "nl_util.h"
#include "segment_internal.h"

#define SECTOR_CACHE 4096u /* sectors (16 MiB) */

typedef struct {
    nl_segment *seg;
    unsigned char *cache; /* SECTOR_CACHE x spn sectors */
    uint64_t *tag;        /* sector number + 1 held by each slot; 0 = empty */
    unsigned char *scratch;
    uint32_t *list;       /* the list handed out (R entries) */
    int err;
} reader;

/* u's record, read and checked; NULL (and r->err set) on a read or checksum failure. */
static const unsigned char *record(reader *r, uint32_t u)
{
    const nl_segment *s = r->seg;
    uint64_t sec = seg_node_sector(&s->geo, u);
    size_t bytes = (size_t)SEG_SECTOR * s->geo.spn;
    uint32_t slot = (uint32_t)(sec % SECTOR_CACHE);
    unsigned char *buf = r->cache + (size_t)slot * bytes;
    if (r->tag[slot] != sec + 1) {
        if (nl_pread_full(s->fd_buf, buf, bytes, sec * SEG_SECTOR) != 0) {
            r->err = nl_fail(NL_ECORRUPT, "%s: cannot read node sector %llu", s->path, (unsigned long long)sec);
            r->tag[slot] = 0;
            return NULL;
        }
        r->tag[slot] = sec + 1;
    }
    const unsigned char *rec;
    int rc = seg_extract_record(s, u, buf, r->scratch, &rec);
    if (rc) {
        r->err = rc;
        r->tag[slot] = 0;
        return NULL;
    }
    return rec;
}

static const uint32_t *nbrs(void *ctx, uint32_t u, uint32_t *deg)
{
    reader *r = ctx;
    const unsigned char *rec = record(r, u);
    if (!rec) {
        *deg = 0;
        return r->list;
    }
    memcpy(deg, rec + r->seg->vec_bytes, 4);
    memcpy(r->list, rec + r->seg->vec_bytes + 4, sizeof(uint32_t) * *deg);
    return r->list;
}

typedef struct {
    const nl_segment *seg;
    const uint32_t *order;
} fill_ctx;

static int fill_codes(void *ctx, uint64_t first, uint64_t count, void *dst)
{
    const fill_ctx *f = ctx;
    for (uint64_t u = first; u < first + count; u++)
        memcpy((uint8_t *)dst + (u - first) * f->seg->m, f->seg->codes + (size_t)f->order[u] * f->seg->m, f->seg->m);
    return 0;
}

static int fill_ids(void *ctx, uint64_t first, uint64_t count, void *dst)
{
    const fill_ctx *f = ctx;
    memcpy(dst, f->seg->ids + first, sizeof(uint64_t) * count); /* the sequence stays */
    return 0;
}

int nl_segment_relayout(const char *path, uint32_t *inv, double *overlap)
{
    nl_segment_options o = {0, NL_IO_PREAD, 1};
    nl_segment *s;
    int rc = nl_segment_open(path, &o, &s);
    if (rc)
        return rc;
    size_t n = s->n;
    uint32_t per = s->geo.nps;
    uint32_t *order = malloc(sizeof(uint32_t) * n), *nbuf = malloc(sizeof(uint32_t) * s->R);
    reader r = {s, NULL, NULL, NULL, NULL, 0};
    size_t bytes = (size_t)SEG_SECTOR * s->geo.spn;
    r.cache = nl_aligned_alloc(SEG_SECTOR, bytes * SECTOR_CACHE);
    r.tag = calloc(SECTOR_CACHE, sizeof(uint64_t));
    r.scratch = malloc(s->geo.node_bytes);
    r.list = malloc(sizeof(uint32_t) * s->R);
    nl_segment_writer *w = NULL;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.layout", path);
    if (!order || !nbuf || !r.cache || !r.tag || !r.scratch || !r.list) {
        rc = -ENOMEM;
        goto out;
    }
    if (per < 2 || s->flags & SEG_FLAG_BLOCK_LAYOUT) {
        rc = nl_fail(NL_EINVAL, "%s: %s", path, per < 2 ? "records do not pack several to a sector" : "already in block layout");
        goto out;
    }
    if ((rc = nl_layout_blocks_fn(n, s->R, nbrs, &r, s->medoid, per, order)) != 0 || (rc = r.err) != 0)
        goto out;
    for (size_t u = 0; u < n; u++)
        inv[order[u]] = (uint32_t)u;
    if (overlap)
        *overlap = nl_layout_overlap_fn(n, nbrs, &r, order, per);
    if ((rc = r.err) != 0)
        goto out;
    nl_segment_writer_params wp = {n, s->dim, s->dtype, s->metric, s->R, s->build_L, s->build_alpha, s->quant, 1};
    if ((rc = nl_segment_writer_create(tmp, &wp, &w)) != 0)
        goto out;
    for (size_t u = 0; u < n && !rc; u++) {
        const unsigned char *rec = record(&r, order[u]);
        if (!rec) {
            rc = r.err;
            break;
        }
        uint32_t deg;
        memcpy(&deg, rec + s->vec_bytes, 4);
        for (uint32_t i = 0; i < deg; i++) {
            uint32_t v;
            memcpy(&v, rec + s->vec_bytes + 4 + 4 * (size_t)i, 4);
            nbuf[i] = inv[v];
        }
        rc = nl_segment_writer_add(w, rec, nbuf, deg);
    }
    if (rc)
        goto out;
    fill_ctx f = {s, order};
    rc = nl_segment_writer_finish(w, inv[s->medoid], fill_codes, s->ids ? fill_ids : NULL, &f, NULL, 0, 0);
    w = NULL;
    if (rc)
        goto out;
    if (rename(tmp, path) != 0) {
        rc = nl_fail(-errno, "%s: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    rc = nl_fsync_dir(slash ? dir : ".");
out:
    nl_segment_writer_abort(w);
    nl_segment_close(s);
    free(order);
    free(nbuf);
    free(r.cache);
    free(r.tag);
    free(r.scratch);
    free(r.list);
    return rc;
}
