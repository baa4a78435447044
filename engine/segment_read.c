/*
 * segment_read.c — opening a segment: the header is checked field by field (magic,
 * version, CRC, ranges, and that the geometry it implies is the one it states), each
 * section's bounds are checked against the file size and its neighbours before any byte
 * is read, and the in-RAM sections are checksummed as they load. The node cache is then
 * filled from the hot list, every cached sector checked like a search read would be.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nl_crc32c.h"
#include "nl_graph.h"
#include "nl_util.h"
#include "segment_internal.h"

#define CORRUPT(seg, ...) nl_fail(NL_ECORRUPT, __VA_ARGS__)

/* A segment that ends early is corrupt, whatever the reason it is short. */
static int read_all(int fd, void *buf, size_t len, uint64_t off)
{
    int rc = nl_pread_full(fd, buf, len, off);
    return rc == NL_ETRUNCATED ? NL_ECORRUPT : rc;
}


int seg_extract_record(const struct nl_segment *s, uint32_t u, const unsigned char *buf,
                       unsigned char *scratch, const unsigned char **rec)
{
    for (uint32_t i = 0; i < s->geo.spn; i++) {
        const unsigned char *sp = buf + (size_t)i * SEG_SECTOR;
        if (nl_crc32c(0, sp, SEG_PAYLOAD) != seg_get32(sp, SEG_PAYLOAD))
            return nl_fail(NL_ECORRUPT, "%s: node sector %llu fails its checksum", s->path,
                           (unsigned long long)(seg_node_sector(&s->geo, u) + i));
    }
    if (s->geo.nps) {
        *rec = buf + seg_node_offset(&s->geo, u);
    } else {
        for (uint32_t i = 0; i < s->geo.spn; i++) {
            uint32_t off = i * SEG_PAYLOAD;
            uint32_t len = s->geo.node_bytes - off < SEG_PAYLOAD ? s->geo.node_bytes - off : SEG_PAYLOAD;
            memcpy(scratch + off, buf + (size_t)i * SEG_SECTOR, len);
        }
        *rec = scratch;
    }
    if (!seg_record_ok(s, *rec))
        return nl_fail(NL_ECORRUPT, "%s: node %u has a degree over R or a neighbour out of range", s->path, u);
    return 0;
}

static int load_section(nl_segment *s, const unsigned char *h, int sec, void *dst, uint64_t want_len)
{
    uint64_t off = seg_get64(h, H_SECTIONS + sec * H_SECTION_SIZE);
    uint64_t len = seg_get64(h, H_SECTIONS + sec * H_SECTION_SIZE + 8);
    uint32_t crc = seg_get32(h, H_SECTIONS + sec * H_SECTION_SIZE + 16);
    static const char *names[] = {"nodes", "codebook", "codes", "id map", "hot list"};
    if (len != want_len)
        return CORRUPT(s, "%s: %s section is %llu bytes, expected %llu", s->path, names[sec],
                       (unsigned long long)len, (unsigned long long)want_len);
    int rc = read_all(s->fd_buf, dst, len, off);
    if (rc)
        return rc == NL_ECORRUPT ? CORRUPT(s, "%s: %s section runs past the end", s->path, names[sec]) : rc;
    if (nl_crc32c(0, dst, len) != crc)
        return CORRUPT(s, "%s: %s section fails its checksum", s->path, names[sec]);
    return 0;
}

static int parse_header(nl_segment *s, const unsigned char *h)
{
    if (memcmp(h + H_MAGIC, SEG_MAGIC, 8) != 0)
        return CORRUPT(s, "%s: not a nearline segment (bad magic)", s->path);
    if (nl_crc32c(0, h, H_CRC) != seg_get32(h, H_CRC))
        return CORRUPT(s, "%s: header fails its checksum", s->path);
    s->format = seg_get32(h, H_VERSION);
    if (s->format != 1 && s->format != SEG_VERSION)
        return nl_fail(NL_EUNSUPPORTED, "%s: segment format version %u (this build reads 1..%u)", s->path,
                       s->format, SEG_VERSION);
    if (seg_get32(h, H_HEADER_BYTES) != SEG_SECTOR)
        return CORRUPT(s, "%s: header size field is wrong", s->path);
    s->n = seg_get64(h, H_COUNT);
    s->dim = seg_get32(h, H_DIM);
    uint32_t dt = seg_get32(h, H_DTYPE), mt = seg_get32(h, H_METRIC);
    s->R = seg_get32(h, H_R);
    s->medoid = seg_get32(h, H_MEDOID);
    s->m = seg_get32(h, H_PQ_M);
    /* Format 1 is PQ with m bytes; format 2 says the kind and its size. */
    s->code = (nl_code_spec){NL_CODE_PQ, s->m};
    if (s->format >= 2)
        s->code = (nl_code_spec){(nl_code_kind)seg_get32(h, H_CODE_KIND), seg_get32(h, H_CODE_PARAM)};
    s->flags = seg_get32(h, H_FLAGS);
    s->build_L = seg_get32(h, H_BUILD_L);
    memcpy(&s->build_alpha, h + H_BUILD_ALPHA, 4);
    if (s->n == 0 || s->n >= UINT32_MAX || s->dim == 0 || s->dim > 65536 || dt > NL_DTYPE_I8 ||
        mt > NL_METRIC_COSINE || s->R == 0 || s->R > 1024 || s->medoid >= s->n || s->m == 0 ||
        (uint32_t)s->code.kind > NL_CODE_RABITQ || nl_code_spec_bytes(s->code, s->dim) != s->m ||
        (s->flags & ~(SEG_FLAG_IDENTITY_IDS | SEG_FLAG_BLOCK_LAYOUT)))
        return CORRUPT(s, "%s: header field out of range (n=%llu dim=%u type=%u metric=%u R=%u medoid=%u m=%u)",
                       s->path, (unsigned long long)s->n, s->dim, dt, mt, s->R, s->medoid, s->m);
    s->dtype = (nl_dtype)dt;
    s->metric = (nl_metric)mt;
    s->vec_bytes = s->dim * (uint32_t)nl_dtype_size(s->dtype);
    s->geo = seg_geometry(s->n, s->vec_bytes, s->R);
    if (seg_get32(h, H_NODE_BYTES) != s->geo.node_bytes || seg_get32(h, H_NODES_PER_SECTOR) != s->geo.nps ||
        seg_get32(h, H_SECTORS_PER_NODE) != s->geo.spn || seg_get64(h, H_NODE_SECTORS) != s->geo.node_sectors)
        return CORRUPT(s, "%s: node layout fields disagree with dim, type and R", s->path);
    /* Sections: in order, sector-aligned, not overlapping, inside the file. */
    uint64_t prev_end = SEG_SECTOR;
    for (int i = 0; i < SEC_COUNT; i++) {
        uint64_t off = seg_get64(h, H_SECTIONS + i * H_SECTION_SIZE);
        uint64_t len = seg_get64(h, H_SECTIONS + i * H_SECTION_SIZE + 8);
        if (off % SEG_SECTOR || off < prev_end || len > s->file_bytes || off > s->file_bytes - len)
            return CORRUPT(s, "%s: section %d (offset %llu, %llu bytes) is out of bounds", s->path, i,
                           (unsigned long long)off, (unsigned long long)len);
        prev_end = off + len;
    }
    if (seg_get64(h, H_SECTIONS + SEC_NODES * H_SECTION_SIZE) != SEG_SECTOR ||
        seg_get64(h, H_SECTIONS + SEC_NODES * H_SECTION_SIZE + 8) != s->geo.node_sectors * SEG_SECTOR)
        return CORRUPT(s, "%s: node section does not match the node count", s->path);
    return 0;
}

static int load_cache(nl_segment *s, const uint32_t *hot, uint32_t hot_n, uint64_t budget)
{
    uint64_t fit = budget / s->geo.node_bytes;
    s->cache_n = (uint32_t)(fit < hot_n ? fit : hot_n);
    if (s->cache_n == 0)
        return 0;
    uint32_t cap = 1;
    while (cap < s->cache_n * 2u) cap <<= 1;
    s->cache_mask = cap - 1;
    s->cache_recs = malloc((size_t)s->cache_n * s->geo.node_bytes);
    s->cache_keys = calloc(cap, sizeof(uint32_t));
    s->cache_vals = malloc(sizeof(uint32_t) * cap);
    unsigned char *buf = malloc((size_t)SEG_SECTOR * s->geo.spn), *scratch = malloc(s->geo.node_bytes);
    int rc = 0;
    if (!s->cache_recs || !s->cache_keys || !s->cache_vals || !buf || !scratch) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint32_t i = 0; i < s->cache_n; i++) {
        uint32_t u = hot[i];
        if (u >= s->n) {
            rc = CORRUPT(s, "%s: hot list names node %u of %llu", s->path, u, (unsigned long long)s->n);
            goto out;
        }
        if ((rc = read_all(s->fd_buf, buf, (size_t)SEG_SECTOR * s->geo.spn,
                            seg_node_sector(&s->geo, u) * SEG_SECTOR)) != 0)
            goto out;
        const unsigned char *rec;
        if ((rc = seg_extract_record(s, u, buf, scratch, &rec)) != 0)
            goto out;
        memcpy(s->cache_recs + (size_t)i * s->geo.node_bytes, rec, s->geo.node_bytes);
        uint32_t h = (u * 2654435761u) & s->cache_mask;
        while (s->cache_keys[h] && s->cache_keys[h] != u + 1)
            h = (h + 1) & s->cache_mask;
        if (s->cache_keys[h]) {
            rc = CORRUPT(s, "%s: hot list names node %u twice", s->path, u);
            goto out;
        }
        s->cache_keys[h] = u + 1;
        s->cache_vals[h] = i;
    }
out:
    free(buf);
    free(scratch);
    return rc;
}

int nl_segment_open(const char *path, const nl_segment_options *opt, nl_segment **out)
{
    *out = NULL;
    nl_segment_options dflt = {0};
    if (!opt)
        opt = &dflt;
    nl_segment *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->fd = s->fd_buf = -1;
    snprintf(s->path, sizeof s->path, "%s", path);
    int rc = 0;
    unsigned char *h = NULL, *pqbuf = NULL;
    uint32_t *hot = NULL;
    s->fd_buf = open(path, O_RDONLY | O_CLOEXEC);
    if (s->fd_buf < 0) {
        rc = nl_fail(-errno, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!opt->buffered)
        s->fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (s->fd >= 0) {
        s->direct = 1;
    } else {
        s->fd = dup(s->fd_buf); /* tmpfs and friends refuse O_DIRECT: fall back */
        s->direct = 0;
    }
    struct stat st;
    if (fstat(s->fd_buf, &st) != 0) {
        rc = -errno;
        goto fail;
    }
    s->file_bytes = (uint64_t)st.st_size;
    if (s->file_bytes < 2 * SEG_SECTOR || s->file_bytes % SEG_SECTOR) {
        rc = CORRUPT(s, "%s: size %llu is not a whole number of sectors (truncated?)", path,
                     (unsigned long long)s->file_bytes);
        goto fail;
    }
    h = malloc(SEG_SECTOR);
    if (!h) { rc = -ENOMEM; goto fail; }
    if ((rc = read_all(s->fd_buf, h, SEG_SECTOR, 0)) != 0 || (rc = parse_header(s, h)) != 0)
        goto fail;
    uint64_t pqlen = seg_get64(h, H_SECTIONS + SEC_PQ_PIVOTS * H_SECTION_SIZE + 8);
    if (pqlen > (64ull << 20)) {
        rc = CORRUPT(s, "%s: codebook section of %llu bytes is implausible", path, (unsigned long long)pqlen);
        goto fail;
    }
    pqbuf = malloc(pqlen ? pqlen : 1);
    s->codes = malloc((size_t)s->n * s->m);
    if (!pqbuf || !s->codes) { rc = -ENOMEM; goto fail; }
    if ((rc = load_section(s, h, SEC_PQ_PIVOTS, pqbuf, pqlen)) != 0)
        goto fail;
    if ((rc = nl_quant_deserialize(s->code.kind, pqbuf, pqlen, &s->quant)) != 0) {
        rc = CORRUPT(s, "%s: codebook: %s", path, nl_errdetail());
        goto fail;
    }
    /* Segments flushed with the same codebook prepare a query once between them in a
     * joint walk (segment_search.c): 64 bits of its bytes (two CRC-32Cs, of each half, and
     * the kind) name it. */
    s->quant_fp = ((uint64_t)nl_crc32c(0, pqbuf, pqlen / 2) << 32 |
                   nl_crc32c((uint32_t)s->code.kind + 1, pqbuf + pqlen / 2, pqlen - pqlen / 2)) ^ pqlen;
    if (nl_quant_dim(s->quant) != s->dim || nl_quant_code_bytes(s->quant) != s->m ||
        nl_quant_metric(s->quant) != s->metric || nl_quant_spec(s->quant).param != s->code.param) {
        rc = CORRUPT(s, "%s: codebook disagrees with the header", path);
        goto fail;
    }
    if ((rc = load_section(s, h, SEC_PQ_CODES, s->codes, s->n * s->m)) != 0)
        goto fail;
    if ((rc = nl_quant_check_codes(s->quant, s->codes, s->n)) != 0) {
        rc = CORRUPT(s, "%s: codes: %s", path, nl_errdetail());
        goto fail;
    }
    if (!(s->flags & SEG_FLAG_IDENTITY_IDS)) {
        s->ids = malloc(sizeof(uint64_t) * s->n);
        if (!s->ids) { rc = -ENOMEM; goto fail; }
        if ((rc = load_section(s, h, SEC_IDMAP, s->ids, s->n * 8)) != 0)
            goto fail;
    } else if (seg_get64(h, H_SECTIONS + SEC_IDMAP * H_SECTION_SIZE + 8) != 0) {
        rc = CORRUPT(s, "%s: id map present although ids are ordinals", path);
        goto fail;
    }
    uint64_t hotlen = seg_get64(h, H_SECTIONS + SEC_HOT * H_SECTION_SIZE + 8);
    if (hotlen < 4 || hotlen > 4 + 4 * s->n || hotlen % 4) {
        rc = CORRUPT(s, "%s: hot list section of %llu bytes", path, (unsigned long long)hotlen);
        goto fail;
    }
    hot = malloc(hotlen);
    if (!hot) { rc = -ENOMEM; goto fail; }
    if ((rc = load_section(s, h, SEC_HOT, hot, hotlen)) != 0)
        goto fail;
    if ((uint64_t)hot[0] * 4 + 4 != hotlen) {
        rc = CORRUPT(s, "%s: hot list count disagrees with its length", path);
        goto fail;
    }
    /* The seed table is paid from the cache's budget first (segment_seeds.c says why). */
    int64_t seeds = seg_seeds_build(s, opt->cache_budget);
    if (seeds < 0) { rc = (int)seeds; goto fail; }
    assert((uint64_t)seeds <= opt->cache_budget);
    if ((rc = load_cache(s, hot + 1, hot[0], opt->cache_budget - (uint64_t)seeds)) != 0)
        goto fail;
    s->dist = nl_distance_fn(s->metric, s->dtype);
    s->ram_bytes = sizeof *s + s->n * s->m + pqlen + (s->code.kind == NL_CODE_PQ ? 2 * 256 * (uint64_t)s->dim * 4
                                                 : (uint64_t)nl_rabitq_centroids(nl_quant_rabitq(s->quant)) * s->dim * 4) +
                   (s->ids ? s->n * 8 : 0) + (uint64_t)s->cache_n * s->geo.node_bytes +
                   (s->cache_n ? (uint64_t)(s->cache_mask + 1) * 8 : 0) + (uint64_t)seeds;
    /* The sections were read through the page cache once; do not let them linger. */
    posix_fadvise(s->fd_buf, 0, 0, POSIX_FADV_DONTNEED);
    free(h);
    free(pqbuf);
    free(hot);
    *out = s;
    return 0;
fail:
    free(h);
    free(pqbuf);
    free(hot);
    nl_segment_close(s);
    return rc;
}

void nl_segment_close(nl_segment *s)
{
    if (!s)
        return;
    if (s->fd >= 0) close(s->fd);
    if (s->fd_buf >= 0) close(s->fd_buf);
    nl_quant_destroy(s->quant);
    free(s->codes);
    free(s->ids);
    free(s->cache_recs);
    free(s->cache_keys);
    free(s->cache_vals);
    seg_seeds_free(s);
    free(s);
}

void nl_segment_get_info(const nl_segment *s, nl_segment_info *i)
{
    memset(i, 0, sizeof *i);
    i->count = s->n;
    i->dim = s->dim;
    i->R = s->R;
    i->pq_m = s->m;
    i->code = s->code;
    i->format = s->format;
    i->medoid = s->medoid;
    i->dtype = s->dtype;
    i->metric = s->metric;
    i->node_bytes = s->geo.node_bytes;
    i->nodes_per_sector = s->geo.nps;
    i->sectors_per_node = s->geo.spn;
    i->build_L = s->build_L;
    i->build_alpha = s->build_alpha;
    i->file_bytes = s->file_bytes;
    i->ram_bytes = s->ram_bytes;
    i->cached_nodes = s->cache_n;
    i->seed_groups = s->seed_C;
    i->seed_members = 0;
    for (uint32_t g = 0; g < s->seed_C; g++)
        i->seed_members += s->seed_cnt[g];
    i->direct_io = s->direct;
    i->identity_ids = s->ids == NULL;
    i->block_layout = (s->flags & SEG_FLAG_BLOCK_LAYOUT) != 0;
}

uint64_t nl_segment_id(const nl_segment *s, uint32_t u)
{
    return s->ids ? s->ids[u] : u;
}

int nl_segment_verify(nl_segment *s, nl_segment_verify_report *rep)
{
    nl_segment_verify_report r = {0};
    nl_graph *g = NULL;
    int rc = nl_graph_create(s->n, s->R, s->R, &g);
    if (rc)
        return rc;
    size_t chunk_sectors = 256;
    if (chunk_sectors < s->geo.spn) chunk_sectors = s->geo.spn;
    chunk_sectors -= chunk_sectors % s->geo.spn;
    unsigned char *buf = malloc(chunk_sectors * SEG_SECTOR), *scratch = malloc(s->geo.node_bytes);
    uint32_t *nb = malloc(sizeof(uint32_t) * s->R);
    char first[256] = "";
    if (!buf || !scratch || !nb) {
        rc = -ENOMEM;
        goto out;
    }
    for (uint64_t sec = 0; sec < s->geo.node_sectors; sec += chunk_sectors) {
        size_t cnt = s->geo.node_sectors - sec < chunk_sectors ? s->geo.node_sectors - sec : chunk_sectors;
        if ((rc = read_all(s->fd_buf, buf, cnt * SEG_SECTOR, (1 + sec) * SEG_SECTOR)) != 0) {
            if (rc == NL_ECORRUPT)
                rc = CORRUPT(s, "%s: node sectors run past the end of the file", s->path);
            goto out;
        }
        for (size_t i = 0; i < cnt; i += s->geo.spn) {
            const unsigned char *sp = buf + i * SEG_SECTOR;
            uint64_t first_node = s->geo.nps ? (sec + i) * s->geo.nps : (sec + i) / s->geo.spn;
            uint64_t nodes = s->geo.nps ? s->geo.nps : 1;
            int sector_ok = 1;
            for (uint32_t j = 0; j < s->geo.spn; j++) {
                r.sectors_checked++;
                if (nl_crc32c(0, sp + (size_t)j * SEG_SECTOR, SEG_PAYLOAD) != seg_get32(sp + (size_t)j * SEG_SECTOR, SEG_PAYLOAD)) {
                    r.bad_sectors++;
                    sector_ok = 0;
                    if (!first[0])
                        snprintf(first, sizeof first, "node sector %llu fails its checksum",
                                 (unsigned long long)(1 + sec + i + j));
                }
            }
            if (!sector_ok)
                continue;
            for (uint64_t u = first_node; u < first_node + nodes && u < s->n; u++) {
                const unsigned char *rec;
                if (seg_extract_record(s, (uint32_t)u, sp, scratch, &rec) != 0) {
                    r.bad_records++;
                    if (!first[0])
                        snprintf(first, sizeof first, "node %llu has a degree over R or a neighbour out of range",
                                 (unsigned long long)u);
                    continue;
                }
                uint32_t deg;
                memcpy(&deg, rec + s->vec_bytes, 4);
                memcpy(nb, rec + s->vec_bytes + 4, 4 * (size_t)deg);
                nl_graph_set_neighbors(g, (uint32_t)u, nb, deg);
            }
        }
    }
    nl_graph_report gr;
    if (nl_graph_validate(g, s->medoid, &gr) != 0 && !first[0])
        snprintf(first, sizeof first, "%s", nl_errdetail());
    r.unreachable = gr.unreachable;
    rc = first[0] ? CORRUPT(s, "%s: %s", s->path, first) : 0;
out:
    free(buf);
    free(scratch);
    free(nb);
    nl_graph_destroy(g);
    if (rep)
        *rep = r;
    return rc;
}

int nl_segment_find(const nl_segment *s, uint64_t id, uint32_t *ord)
{
    if (!s->ids) {
        if (id >= s->n)
            return NL_ENOTFOUND;
        *ord = (uint32_t)id;
        return 0;
    }
    uint64_t lo = 0, hi = s->n;
    while (lo < hi) {
        uint64_t mid = (lo + hi) / 2;
        if (s->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->n && s->ids[lo] == id) {
        *ord = (uint32_t)lo;
        return 0;
    }
    return NL_ENOTFOUND;
}

int nl_segment_ids_ascending(const nl_segment *s)
{
    for (uint64_t i = 1; s->ids && i < s->n; i++)
        if (s->ids[i] <= s->ids[i - 1])
            return 0;
    return 1;
}

int nl_segment_read_vectors(nl_segment *s, uint32_t first, uint32_t count, void *out)
{
    return nl_segment_read_nodes(s, first, count, out, NULL, NULL);
}

const nl_quant *nl_segment_quant(const nl_segment *s) { return s->quant; }
const uint8_t *nl_segment_codes(const nl_segment *s) { return s->codes; }

int nl_segment_read_nodes(nl_segment *s, uint32_t first, uint32_t count, void *out, uint32_t *adj, uint32_t *deg)
{
    if ((uint64_t)first + count > s->n)
        return nl_fail(NL_EINVAL, "%s: vectors %u..%u of %llu", s->path, first, first + count,
                       (unsigned long long)s->n);
    if (count == 0)
        return 0;
    /* Whole sectors, a bounded chunk at a time, through the buffered descriptor: this is
     * the sequential scan of compaction, where the page cache's read-ahead helps. */
    uint64_t s0 = seg_node_sector(&s->geo, first);
    uint64_t s1 = seg_node_sector(&s->geo, (uint64_t)first + count - 1) + s->geo.spn; /* exclusive */
    size_t chunk = 256 > s->geo.spn ? 256 - 256 % s->geo.spn : s->geo.spn;
    unsigned char *buf = malloc(chunk * SEG_SECTOR), *scratch = malloc(s->geo.node_bytes);
    if (!buf || !scratch) {
        free(buf);
        free(scratch);
        return -ENOMEM;
    }
    int rc = 0;
    uint32_t u = first;
    for (uint64_t sec = s0; sec < s1 && !rc; sec += chunk) {
        size_t cnt = s1 - sec < chunk ? (size_t)(s1 - sec) : chunk;
        if ((rc = read_all(s->fd_buf, buf, cnt * SEG_SECTOR, sec * SEG_SECTOR)) != 0)
            break;
        /* Every node whose sectors lie wholly inside this chunk. */
        while (u < first + count && seg_node_sector(&s->geo, u) + s->geo.spn <= sec + cnt) {
            const unsigned char *rec;
            const unsigned char *sp = buf + (seg_node_sector(&s->geo, u) - sec) * SEG_SECTOR;
            if ((rc = seg_extract_record(s, u, sp, scratch, &rec)) != 0)
                break;
            memcpy((char *)out + (size_t)(u - first) * s->vec_bytes, rec, s->vec_bytes);
            if (adj) {
                uint32_t d;
                memcpy(&d, rec + s->vec_bytes, 4); /* <= R: seg_extract_record checked it */
                deg[u - first] = d;
                memcpy(adj + (size_t)(u - first) * s->R, rec + s->vec_bytes + 4, 4 * (size_t)d);
            }
            u++;
        }
    }
    free(buf);
    free(scratch);
    return rc;
}
