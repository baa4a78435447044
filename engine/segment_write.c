/*
 * segment_write.c — writes a segment file (layout in segment_format.h). The file is
 * streamed front to back through one buffered stream: a zero header sector, the node
 * sectors (each checksummed as it is filled), then the sections, each padded to a sector
 * boundary and checksummed on the way out; the real header goes in last. Durability:
 * temporary name, fsync, rename, fsync of the directory.
 *
 * Two entry points share the stream: nl_segment_write takes a whole in-memory index
 * (flushes, compactions, in-memory imports); nl_segment_writer takes nodes one at a time
 * in ordinal order, and codes and ids through callbacks, so a partitioned import can
 * write a segment far larger than its memory budget. Without a precomputed hot list the
 * writer finds it by a breadth-first walk over the node sectors already written.
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
#include "nl_util.h"
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

struct nl_segment_writer {
    char path[4096], tmp[4096];
    out_stream o;
    nl_segment_writer_params p;
    seg_geom geo;
    uint32_t vec_bytes;
    unsigned char *sector; /* one node group: spn sectors */
    unsigned char *rec;
    uint64_t next;         /* ordinal the next add writes */
    uint64_t nodes_off;
};

uint32_t nl_segment_records_per_sector(uint32_t dim, nl_dtype dtype, uint32_t R)
{
    return seg_geometry(1, (uint32_t)(dim * nl_dtype_size(dtype)), R).nps;
}

int nl_segment_writer_create(const char *path, const nl_segment_writer_params *p, nl_segment_writer **out)
{
    *out = NULL;
    if (!p->quant || p->count == 0 || p->count > UINT32_MAX - 1 || p->dim == 0 || p->R == 0)
        return nl_fail(NL_EINVAL, "segment: empty or oversized (count %llu, dim %u, R %u)",
                       (unsigned long long)p->count, p->dim, p->R);
    if (nl_quant_dim(p->quant) != p->dim)
        return nl_fail(NL_EDIM, "segment: codes of dimension %u for %u-dimensional vectors", nl_quant_dim(p->quant),
                       p->dim);
    nl_segment_writer *w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->p = *p;
    w->vec_bytes = (uint32_t)(p->dim * nl_dtype_size(p->dtype));
    w->geo = seg_geometry(p->count, w->vec_bytes, p->R);
    if (snprintf(w->path, sizeof w->path, "%s", path) >= (int)sizeof w->path ||
        snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof w->tmp) {
        free(w);
        return nl_fail(NL_EINVAL, "segment: path too long");
    }
    w->sector = aligned_alloc(SEG_SECTOR, SEG_SECTOR * (size_t)w->geo.spn);
    w->rec = malloc(w->geo.node_bytes);
    w->o.f = fopen(w->tmp, "wb");
    if (!w->sector || !w->rec || !w->o.f) {
        int rc = !w->o.f ? nl_fail(-errno, "%s: %s", w->tmp, strerror(errno)) : -ENOMEM;
        nl_segment_writer_abort(w);
        return rc;
    }
    setvbuf(w->o.f, NULL, _IOFBF, 1 << 20);
    memset(w->sector, 0, SEG_SECTOR);
    put(&w->o, w->sector, SEG_SECTOR, NULL); /* header placeholder */
    w->nodes_off = w->o.pos;
    *out = w;
    return 0;
}

void nl_segment_writer_abort(nl_segment_writer *w)
{
    if (!w)
        return;
    if (w->o.f) {
        fclose(w->o.f);
        unlink(w->tmp);
    }
    free(w->sector);
    free(w->rec);
    free(w);
}

static void emit_group(nl_segment_writer *w)
{
    for (uint32_t s = 0; s < w->geo.spn; s++) {
        unsigned char *sp = w->sector + (size_t)s * SEG_SECTOR;
        seg_put32(sp, SEG_PAYLOAD, nl_crc32c(0, sp, SEG_PAYLOAD));
    }
    put(&w->o, w->sector, SEG_SECTOR * (size_t)w->geo.spn, NULL);
}

int nl_segment_writer_add(nl_segment_writer *w, const void *vec, const uint32_t *nbrs, uint32_t deg)
{
    if (w->next >= w->p.count || deg > w->p.R)
        return nl_fail(NL_EINVAL, "segment: node %llu of %llu with degree %u (R %u)", (unsigned long long)w->next,
                       (unsigned long long)w->p.count, deg, w->p.R);
    for (uint32_t i = 0; i < deg; i++)
        if (nbrs[i] >= w->p.count)
            return nl_fail(NL_EINVAL, "segment: node %llu links to %u of %llu", (unsigned long long)w->next, nbrs[i],
                           (unsigned long long)w->p.count);
    const seg_geom *geo = &w->geo;
    unsigned char *rec = w->rec;
    memcpy(rec, vec, w->vec_bytes);
    memset(rec + w->vec_bytes, 0, geo->node_bytes - w->vec_bytes);
    memcpy(rec + w->vec_bytes, &deg, 4);
    memcpy(rec + w->vec_bytes + 4, nbrs, 4 * (size_t)deg);
    uint64_t u = w->next++;
    if (geo->nps) {
        uint32_t slot = (uint32_t)(u % geo->nps);
        if (slot == 0)
            memset(w->sector, 0, SEG_SECTOR);
        memcpy(w->sector + (size_t)slot * geo->node_bytes, rec, geo->node_bytes);
        if (slot == geo->nps - 1 || w->next == w->p.count)
            emit_group(w);
    } else {
        memset(w->sector, 0, SEG_SECTOR * (size_t)geo->spn);
        for (uint32_t s = 0; s < geo->spn; s++) {
            uint32_t off = s * SEG_PAYLOAD;
            uint32_t len = geo->node_bytes - off < SEG_PAYLOAD ? geo->node_bytes - off : SEG_PAYLOAD;
            memcpy(w->sector + (size_t)s * SEG_SECTOR, rec + off, len);
        }
        emit_group(w);
    }
    return w->o.err ? nl_fail(-w->o.err, "%s: write failed: %s", w->tmp, strerror(w->o.err)) : 0;
}

/* Node u's neighbour list, read back from the node sectors already in the file. */
static int read_back_list(nl_segment_writer *w, int fd, unsigned char *buf, uint64_t u, uint32_t *nbrs, uint32_t *deg)
{
    const seg_geom *geo = &w->geo;
    if (nl_pread_full(fd, buf, SEG_SECTOR * (size_t)geo->spn, seg_node_sector(geo, u) * SEG_SECTOR) != 0)
        return nl_fail(-EIO, "%s: cannot read back node %llu", w->tmp, (unsigned long long)u);
    for (uint32_t s = 0; s < geo->spn; s++) {
        uint32_t off = s * SEG_PAYLOAD;
        uint32_t len = geo->node_bytes - off < SEG_PAYLOAD ? geo->node_bytes - off : SEG_PAYLOAD;
        memcpy(w->rec + off, buf + (size_t)s * SEG_SECTOR + (geo->nps ? seg_node_offset(geo, u) : 0), len);
        if (geo->nps)
            break; /* packed: the whole record is in the first sector */
    }
    memcpy(deg, w->rec + w->vec_bytes, 4);
    if (*deg > w->p.R)
        return nl_fail(NL_ECORRUPT, "%s: node %llu read back with degree %u", w->tmp, (unsigned long long)u, *deg);
    memcpy(nbrs, w->rec + w->vec_bytes + 4, 4 * (size_t)*deg);
    return 0;
}

/* BFS from the medoid over the written node sectors, at most max nodes. */
static int hot_list_from_file(nl_segment_writer *w, uint32_t medoid, uint32_t max, uint32_t **out, uint32_t *count)
{
    *out = NULL;
    *count = 0;
    uint64_t n = w->p.count;
    int fd = open(w->tmp, O_RDONLY | O_CLOEXEC);
    uint8_t *seen = calloc((n + 7) / 8, 1);
    uint32_t *q = malloc(sizeof(uint32_t) * (max ? max : 1));
    uint32_t *nbrs = malloc(sizeof(uint32_t) * w->p.R);
    unsigned char *buf = aligned_alloc(SEG_SECTOR, SEG_SECTOR * (size_t)w->geo.spn);
    int rc = fd < 0 ? nl_fail(-errno, "%s: %s", w->tmp, strerror(errno)) : 0;
    if (!rc && (!seen || !q || !nbrs || !buf))
        rc = -ENOMEM;
    uint32_t head = 0, tail = 0;
    if (!rc && max) {
        q[tail++] = medoid;
        seen[medoid / 8] |= (uint8_t)(1u << (medoid % 8));
    }
    while (!rc && head < tail && tail < max) {
        uint32_t deg = 0;
        if ((rc = read_back_list(w, fd, buf, q[head++], nbrs, &deg)) != 0)
            break;
        for (uint32_t i = 0; i < deg && tail < max; i++) {
            uint32_t v = nbrs[i];
            if (!(seen[v / 8] & (1u << (v % 8)))) {
                seen[v / 8] |= (uint8_t)(1u << (v % 8));
                q[tail++] = v;
            }
        }
    }
    if (fd >= 0)
        close(fd);
    free(seen);
    free(nbrs);
    free(buf);
    if (rc) {
        free(q);
        return rc;
    }
    *out = q;
    *count = tail;
    return 0;
}

/* Rewrites node u's neighbour list in the written sectors (checksums recomputed). */
static int patch_list(nl_segment_writer *w, int fd, unsigned char *buf, uint64_t u, const uint32_t *nbrs, uint32_t deg)
{
    const seg_geom *geo = &w->geo;
    uint64_t off = seg_node_sector(geo, u) * SEG_SECTOR;
    size_t len = SEG_SECTOR * (size_t)geo->spn;
    if (nl_pread_full(fd, buf, len, off) != 0)
        return nl_fail(-EIO, "%s: cannot read back node %llu", w->tmp, (unsigned long long)u);
    /* The list part of the record: bytes [vec_bytes, node_bytes) of the record. */
    unsigned char *rec = w->rec;
    for (uint32_t s = 0; s < geo->spn; s++) {
        uint32_t ro = s * SEG_PAYLOAD;
        uint32_t l = geo->node_bytes - ro < SEG_PAYLOAD ? geo->node_bytes - ro : SEG_PAYLOAD;
        memcpy(rec + ro, buf + (size_t)s * SEG_SECTOR + (geo->nps ? seg_node_offset(geo, u) : 0), l);
        if (geo->nps)
            break;
    }
    memset(rec + w->vec_bytes, 0, geo->node_bytes - w->vec_bytes);
    memcpy(rec + w->vec_bytes, &deg, 4);
    memcpy(rec + w->vec_bytes + 4, nbrs, 4 * (size_t)deg);
    for (uint32_t s = 0; s < geo->spn; s++) {
        uint32_t ro = s * SEG_PAYLOAD;
        uint32_t l = geo->node_bytes - ro < SEG_PAYLOAD ? geo->node_bytes - ro : SEG_PAYLOAD;
        memcpy(buf + (size_t)s * SEG_SECTOR + (geo->nps ? seg_node_offset(geo, u) : 0), rec + ro, l);
        if (geo->nps)
            break;
    }
    for (uint32_t s = 0; s < geo->spn; s++) {
        unsigned char *sp = buf + (size_t)s * SEG_SECTOR;
        seg_put32(sp, SEG_PAYLOAD, nl_crc32c(0, sp, SEG_PAYLOAD));
    }
    ssize_t wr = pwrite(fd, buf, len, (off_t)off);
    if (wr != (ssize_t)len)
        return nl_fail(-(wr < 0 ? errno : EIO), "%s: cannot patch node %llu", w->tmp, (unsigned long long)u);
    return 0;
}

#define SEEN(u) (seen[(u) / 8] & (1u << ((u) % 8)))
#define MARK(u) (seen[(u) / 8] |= (uint8_t)(1u << ((u) % 8)))

/* Everything reachable from start over the written lists, marked in seen: a
 * level-synchronous breadth-first walk whose frontiers are bitmaps, so memory is three bits
 * a node whatever the graph (a queue would take 4 bytes a node: 4 GB at a billion), and
 * each level reads its nodes in ordinal order, close to sequential on disk. */
static int reach_from(nl_segment_writer *w, int fd, unsigned char *buf, uint32_t start, uint8_t *seen,
                      uint64_t *frontier, uint64_t *next, uint32_t *nbrs)
{
    uint64_t n = w->p.count, words = (n + 63) / 64;
    memset(seen, 0, (n + 7) / 8);
    memset(frontier, 0, words * 8);
    MARK(start);
    frontier[start / 64] |= 1ull << (start % 64);
    for (int more = 1; more;) {
        more = 0;
        memset(next, 0, words * 8);
        for (uint64_t wd = 0; wd < words; wd++) {
            for (uint64_t bits = frontier[wd]; bits; bits &= bits - 1) {
                uint64_t u = wd * 64 + (uint64_t)__builtin_ctzll(bits);
                uint32_t deg = 0;
                int rc = read_back_list(w, fd, buf, u, nbrs, &deg);
                if (rc)
                    return rc;
                for (uint32_t i = 0; i < deg; i++)
                    if (!SEEN(nbrs[i])) {
                        MARK(nbrs[i]);
                        next[nbrs[i] / 64] |= 1ull << (nbrs[i] % 64);
                        more = 1;
                    }
            }
        }
        uint64_t *t = frontier;
        frontier = next;
        next = t;
    }
    return 0;
}

int nl_segment_writer_connect(nl_segment_writer *w, uint32_t medoid, uint64_t *added)
{
    *added = 0;
    uint64_t n = w->p.count, words = (n + 63) / 64;
    if (w->next != n || medoid >= n)
        return nl_fail(NL_EINVAL, "segment: connect before every node is written");
    if (fflush(w->o.f) != 0)
        return nl_fail(-errno, "%s: %s", w->tmp, strerror(errno));
    int fd = open(w->tmp, O_RDWR | O_CLOEXEC);
    uint8_t *seen = malloc((n + 7) / 8), *repaired = calloc((n + 7) / 8, 1);
    uint64_t *fa = malloc(words * 8), *fb = malloc(words * 8);
    uint32_t *nbrs = malloc(sizeof(uint32_t) * w->p.R);
    uint32_t *hl = malloc(sizeof(uint32_t) * w->p.R);
    unsigned char *buf = aligned_alloc(SEG_SECTOR, SEG_SECTOR * (size_t)w->geo.spn);
    int rc = fd < 0 ? nl_fail(-errno, "%s: %s", w->tmp, strerror(errno)) : 0;
    if (!rc && (!seen || !repaired || !fa || !fb || !nbrs || !hl || !buf))
        rc = -ENOMEM;
    for (int sweep = 0; sweep < 8 && !rc; sweep++) {
        if ((rc = reach_from(w, fd, buf, medoid, seen, fa, fb, nbrs)) != 0)
            break;
        uint64_t missing = 0;
        for (uint64_t v = 0; v < n && !rc; v++) {
            if (SEEN(v))
                continue;
            missing++;
            /* Give v an in-edge from a reached node it links to (its neighbourhood is
             * likely to link back), one with room if there is one, else from the medoid.
             * A full host gives up its last edge to a node that no repair has linked, so
             * two repairs never keep displacing each other. v is then reached, and may
             * host later repairs; the next sweep rechecks everything (a displaced edge
             * may have cut something off). */
            uint32_t deg = 0, host = UINT32_MAX, hdeg = 0;
            if ((rc = read_back_list(w, fd, buf, v, nbrs, &deg)) != 0)
                break;
            for (uint32_t i = 0; i < deg && !rc; i++) {
                if (!SEEN(nbrs[i]))
                    continue;
                uint32_t d2 = 0;
                rc = read_back_list(w, fd, buf, nbrs[i], hl, &d2);
                if (host == UINT32_MAX || d2 < w->p.R)
                    host = nbrs[i];
                if (d2 < w->p.R)
                    break;
            }
            if (rc)
                break;
            if (host == UINT32_MAX)
                host = medoid;
            if ((rc = read_back_list(w, fd, buf, host, hl, &hdeg)) != 0)
                break;
            /* The host may list v already: it was reached only by an earlier repair of
             * this sweep (reachability is not re-propagated until the next one), e.g. two
             * nodes cut off together that list each other. Linking v again would put it
             * in the list twice; it is reached through the host as it is. */
            int listed = 0;
            for (uint32_t i = 0; i < hdeg && !listed; i++)
                listed = hl[i] == (uint32_t)v;
            if (listed) {
                MARK(v);
                continue;
            }
            if (hdeg < w->p.R) {
                hl[hdeg++] = (uint32_t)v;
            } else {
                uint32_t slot = hdeg - 1;
                while (slot > 0 && (repaired[hl[slot] / 8] & (1u << (hl[slot] % 8))))
                    slot--;
                hl[slot] = (uint32_t)v;
            }
            repaired[v / 8] |= (uint8_t)(1u << (v % 8));
            if ((rc = patch_list(w, fd, buf, host, hl, hdeg)) != 0)
                break;
            (*added)++;
            MARK(v);
        }
        if (!rc && missing == 0)
            break;
        if (!rc && sweep == 7)
            rc = nl_fail(NL_EINVAL, "segment: %llu nodes still unreachable after repair", (unsigned long long)missing);
    }
    if (fd >= 0)
        close(fd);
    free(seen);
    free(repaired);
    free(fa);
    free(fb);
    free(nbrs);
    free(hl);
    free(buf);
    return rc;
}

#define FILL_ROWS 65536u

int nl_segment_writer_finish(nl_segment_writer *w, uint32_t medoid, nl_segment_fill_fn codes, nl_segment_fill_fn ids,
                             void *ctx, const uint32_t *hot_in, uint32_t hot_n_in, uint32_t hot_max)
{
    uint64_t n = w->p.count;
    uint32_t m = nl_quant_code_bytes(w->p.quant);
    out_stream *o = &w->o;
    uint32_t *hot = NULL, hot_n = 0;
    size_t pqlen = nl_quant_serialized_size(w->p.quant);
    unsigned char *pqbuf = malloc(pqlen);
    void *chunk = malloc((size_t)FILL_ROWS * (m > 8 ? m : 8));
    int rc = 0;
    if (!pqbuf || !chunk) {
        rc = -ENOMEM;
        goto fail;
    }
    if (w->next != n || medoid >= n) {
        rc = nl_fail(NL_EINVAL, "segment: finished after %llu of %llu nodes (medoid %u)", (unsigned long long)w->next,
                     (unsigned long long)n, medoid);
        goto fail;
    }
    if (!o->err && fflush(o->f) != 0)
        o->err = errno;
    if (hot_in) {
        hot = malloc(sizeof(uint32_t) * (hot_n_in ? hot_n_in : 1));
        if (!hot) {
            rc = -ENOMEM;
            goto fail;
        }
        memcpy(hot, hot_in, sizeof(uint32_t) * hot_n_in);
        hot_n = hot_n_in;
    } else {
        if (!hot_max) { /* a tenth of the nodes, at most 4M (16 MB of list): the cache budget decides */
            uint64_t h = n / 10 > 1024 ? n / 10 : 1024;
            if (h > (4u << 20))
                h = 4u << 20;
            hot_max = (uint32_t)(h < n ? h : n);
        }
        if (!o->err && (rc = hot_list_from_file(w, medoid, hot_max, &hot, &hot_n)) != 0)
            goto fail;
    }
    uint64_t sec_off[SEC_COUNT] = {0}, sec_len[SEC_COUNT] = {0};
    uint32_t sec_crc[SEC_COUNT] = {0};
    sec_off[SEC_NODES] = w->nodes_off;
    sec_len[SEC_NODES] = o->pos - w->nodes_off;

    sec_off[SEC_PQ_PIVOTS] = o->pos;
    nl_quant_serialize(w->p.quant, pqbuf, pqlen);
    put(o, pqbuf, pqlen, &sec_crc[SEC_PQ_PIVOTS]);
    sec_len[SEC_PQ_PIVOTS] = o->pos - sec_off[SEC_PQ_PIVOTS];
    pad_to_sector(o);

    sec_off[SEC_PQ_CODES] = o->pos;
    for (uint64_t first = 0; first < n && !o->err; first += FILL_ROWS) {
        uint64_t cnt = n - first < FILL_ROWS ? n - first : FILL_ROWS;
        if ((rc = codes(ctx, first, cnt, chunk)) != 0)
            goto fail;
        put(o, chunk, (size_t)cnt * m, &sec_crc[SEC_PQ_CODES]);
    }
    sec_len[SEC_PQ_CODES] = n * m;
    pad_to_sector(o);

    /* Id map, omitted when every id equals its ordinal. */
    uint32_t flags = 0;
    int identity = 1;
    for (uint64_t first = 0; ids && identity && first < n; first += FILL_ROWS) {
        uint64_t cnt = n - first < FILL_ROWS ? n - first : FILL_ROWS;
        if ((rc = ids(ctx, first, cnt, chunk)) != 0)
            goto fail;
        const uint64_t *v = chunk;
        for (uint64_t i = 0; i < cnt && identity; i++)
            identity = v[i] == first + i;
    }
    sec_off[SEC_IDMAP] = o->pos;
    if (identity) {
        flags |= SEG_FLAG_IDENTITY_IDS;
    } else {
        for (uint64_t first = 0; first < n && !o->err; first += FILL_ROWS) {
            uint64_t cnt = n - first < FILL_ROWS ? n - first : FILL_ROWS;
            if ((rc = ids(ctx, first, cnt, chunk)) != 0)
                goto fail;
            put(o, chunk, (size_t)cnt * 8, &sec_crc[SEC_IDMAP]);
        }
        sec_len[SEC_IDMAP] = n * 8;
        pad_to_sector(o);
    }

    sec_off[SEC_HOT] = o->pos;
    put(o, &hot_n, 4, &sec_crc[SEC_HOT]);
    put(o, hot, 4 * (size_t)hot_n, &sec_crc[SEC_HOT]);
    sec_len[SEC_HOT] = 4 + 4 * (uint64_t)hot_n;
    pad_to_sector(o);

    unsigned char *h = w->sector;
    memset(h, 0, SEG_SECTOR);
    memcpy(h + H_MAGIC, SEG_MAGIC, 8);
    seg_put32(h, H_VERSION, SEG_VERSION);
    seg_put32(h, H_HEADER_BYTES, SEG_SECTOR);
    seg_put64(h, H_COUNT, n);
    seg_put32(h, H_DIM, w->p.dim);
    seg_put32(h, H_DTYPE, (uint32_t)w->p.dtype);
    seg_put32(h, H_METRIC, (uint32_t)w->p.metric);
    seg_put32(h, H_R, w->p.R);
    seg_put32(h, H_NODE_BYTES, w->geo.node_bytes);
    seg_put32(h, H_NODES_PER_SECTOR, w->geo.nps);
    seg_put32(h, H_SECTORS_PER_NODE, w->geo.spn);
    seg_put32(h, H_MEDOID, medoid);
    seg_put32(h, H_PQ_M, m);
    seg_put32(h, H_CODE_KIND, (uint32_t)nl_quant_spec(w->p.quant).kind);
    seg_put32(h, H_CODE_PARAM, nl_quant_spec(w->p.quant).param);
    if (w->p.block_layout)
        flags |= SEG_FLAG_BLOCK_LAYOUT;
    seg_put32(h, H_FLAGS, flags);
    seg_put32(h, H_BUILD_L, w->p.build_L);
    memcpy(h + H_BUILD_ALPHA, &w->p.build_alpha, 4);
    seg_put64(h, H_NODE_SECTORS, w->geo.node_sectors);
    for (int s = 0; s < SEC_COUNT; s++) {
        seg_put64(h, H_SECTIONS + s * H_SECTION_SIZE, sec_off[s]);
        seg_put64(h, H_SECTIONS + s * H_SECTION_SIZE + 8, sec_len[s]);
        seg_put32(h, H_SECTIONS + s * H_SECTION_SIZE + 16, sec_crc[s]);
    }
    seg_put32(h, H_CRC, nl_crc32c(0, h, H_CRC));
    if (!o->err && fflush(o->f) != 0)
        o->err = errno;
    if (!o->err && (fseek(o->f, 0, SEEK_SET) != 0 || fwrite(h, 1, SEG_SECTOR, o->f) != SEG_SECTOR))
        o->err = errno ? errno : EIO;
    if (!o->err && (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0))
        o->err = errno;
    if (fclose(o->f) != 0 && !o->err)
        o->err = errno;
    o->f = NULL;
    if (o->err) {
        rc = nl_fail(-o->err, "%s: write failed: %s", w->tmp, strerror(o->err));
        unlink(w->tmp);
        goto fail;
    }
    if (rename(w->tmp, w->path) != 0) {
        rc = nl_fail(-errno, "%s: rename failed: %s", w->path, strerror(errno));
        unlink(w->tmp);
        goto fail;
    }
    {
        char dirbuf[4096];
        snprintf(dirbuf, sizeof dirbuf, "%s", w->path);
        /* The rename is durable only once its directory is: a failure here fails the write
         * (the caller has not referenced the file yet, so it goes). */
        int dfd = open(dirname(dirbuf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int derr = dfd < 0 ? errno : fsync(dfd) != 0 ? errno : 0;
        if (dfd >= 0)
            close(dfd);
        if (derr) {
            rc = nl_fail(-derr, "%s: syncing its directory failed: %s", w->path, strerror(derr));
            unlink(w->path);
            goto fail;
        }
    }
fail:
    free(hot);
    free(pqbuf);
    free(chunk);
    nl_segment_writer_abort(w); /* closes and unlinks the temporary file if still open */
    return rc;
}

/* ---- the whole-index entry point ---- */

/* BFS order from the medoid over an in-memory graph, at most max nodes. */
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

typedef struct {
    const nl_segment_source *src;
    uint32_t m;
} index_fill;

static int fill_codes(void *ctx, uint64_t first, uint64_t count, void *dst)
{
    const index_fill *f = ctx;
    const uint32_t *order = f->src->order;
    for (uint64_t u = first; u < first + count; u++)
        memcpy((uint8_t *)dst + (u - first) * f->m, f->src->codes + (size_t)(order ? order[u] : u) * f->m, f->m);
    return 0;
}

static int fill_ids(void *ctx, uint64_t first, uint64_t count, void *dst)
{
    const index_fill *f = ctx;
    const uint32_t *order = f->src->order;
    uint64_t *out = dst;
    for (uint64_t u = first; u < first + count; u++)
        out[u - first] = f->src->ids[order ? order[u] : u];
    return 0;
}

int nl_segment_write(const char *path, const nl_segment_source *src)
{
    const nl_vamana *ix = src->index;
    const nl_graph *g = nl_vamana_graph(ix);
    const nl_vecset *vs = nl_vamana_vectors(ix);
    uint64_t n = vs->n;
    uint32_t R = nl_graph_max_degree(g);
    nl_segment_writer_params wp = {n, vs->dim, vs->dtype, nl_vamana_metric(ix), R, src->build_L, src->build_alpha,
                                   src->quant, src->block_layout && src->order};
    uint32_t hot_max = src->hot_max;
    if (!hot_max) {
        uint64_t h = n / 10 > 1024 ? n / 10 : 1024;
        hot_max = (uint32_t)(h < n ? h : n);
    }
    const uint32_t *order = src->order;
    uint32_t *inv = order ? malloc(sizeof(uint32_t) * (n ? n : 1)) : NULL;
    uint32_t *nbuf = malloc(sizeof(uint32_t) * (R ? R : 1));
    uint32_t hot_n = 0;
    uint32_t *hot = hot_list(g, nl_vamana_medoid(ix), hot_max, &hot_n);
    nl_segment_writer *w = NULL;
    int rc = 0;
    if ((order && !inv) || !nbuf || !hot) {
        rc = -ENOMEM;
        goto out;
    }
    if (order) {
        memset(inv, 0xff, sizeof(uint32_t) * n);
        for (uint64_t u = 0; u < n; u++) {
            if (order[u] >= n || inv[order[u]] != UINT32_MAX) {
                rc = nl_fail(NL_EINVAL, "segment: order is not a permutation");
                goto out;
            }
            inv[order[u]] = (uint32_t)u;
        }
        for (uint32_t i = 0; i < hot_n; i++)
            hot[i] = inv[hot[i]];
    }
    if ((rc = nl_segment_writer_create(path, &wp, &w)) != 0)
        goto out;
    for (uint64_t u = 0; u < n && !rc; u++) {
        uint32_t node = order ? order[u] : (uint32_t)u;
        uint32_t deg;
        const uint32_t *l = nl_graph_neighbors(g, node, &deg);
        if (order) {
            for (uint32_t i = 0; i < deg; i++)
                nbuf[i] = inv[l[i]];
            l = nbuf;
        }
        rc = nl_segment_writer_add(w, nl_vecset_row(vs, node), l, deg);
    }
    if (rc) {
        nl_segment_writer_abort(w);
        goto out;
    }
    index_fill f = {src, nl_quant_code_bytes(src->quant)};
    uint32_t medoid = order ? inv[nl_vamana_medoid(ix)] : nl_vamana_medoid(ix);
    rc = nl_segment_writer_finish(w, medoid, fill_codes, src->ids ? fill_ids : NULL, &f, hot, hot_n, 0);
out:
    free(inv);
    free(nbuf);
    free(hot);
    return rc;
}
