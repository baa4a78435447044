/*
 * segment_format.h — the byte layout of a segment file (docs/format.md is the prose
 * version; keep the two in step). Internal to engine/.
 *
 *   sector 0          header: fixed fields, a section table, CRC-32C of bytes 0..4091
 *   sectors 1..S      node sectors: payload bytes 0..4091, CRC-32C of the payload at 4092
 *   then, each at a 4096-aligned offset: codebook, codes, id map, hot list
 *
 * Format 2 names the code kind (H_CODE_KIND: 0 PQ, 1 RaBitQ) and its size (H_CODE_PARAM:
 * PQ bytes or RaBitQ bits); H_PQ_M is the bytes of one code of either kind. Format 1
 * segments (issue 17 and before) are PQ and still open.
 *
 * A node record is: vector (dim x element size), u32 degree, R x u32 neighbour ordinals
 * (unused slots zero). Records never straddle a sector when one fits in a payload
 * (nodes_per_sector = floor(4092 / node_bytes) of them per sector); a larger record takes
 * sectors_per_node whole sectors and is split across their payloads in order.
 */
#ifndef NL_SEGMENT_FORMAT_H
#define NL_SEGMENT_FORMAT_H

#include <stdint.h>
#include <string.h>

#define SEG_SECTOR 4096u
#define SEG_PAYLOAD 4092u
#define SEG_MAGIC "NLSEGMT\0"
#define SEG_VERSION 2u /* written; 1 is still read */

enum { SEC_NODES = 0, SEC_PQ_PIVOTS, SEC_PQ_CODES, SEC_IDMAP, SEC_HOT, SEC_COUNT };

#define SEG_FLAG_IDENTITY_IDS 1u /* no id map: a point's id is its ordinal */
#define SEG_FLAG_BLOCK_LAYOUT 2u /* records laid out by nl_layout_blocks: a sector's records are
                                  * graph neighbours, and the search expands them with the one read */

/* Header field offsets. */
enum {
    H_MAGIC = 0,           /* 8 bytes */
    H_VERSION = 8,         /* u32 */
    H_HEADER_BYTES = 12,   /* u32 = 4096 */
    H_COUNT = 16,          /* u64 */
    H_DIM = 24,            /* u32 */
    H_DTYPE = 28,          /* u32 */
    H_METRIC = 32,         /* u32 */
    H_R = 36,              /* u32 */
    H_NODE_BYTES = 40,     /* u32 */
    H_NODES_PER_SECTOR = 44, /* u32, 0 when a node spans sectors */
    H_SECTORS_PER_NODE = 48, /* u32, 1 when nodes are packed */
    H_MEDOID = 52,         /* u32 */
    H_PQ_M = 56,           /* u32 */
    H_FLAGS = 60,          /* u32 */
    H_BUILD_L = 64,        /* u32 */
    H_BUILD_ALPHA = 68,    /* f32 */
    H_NODE_SECTORS = 72,   /* u64 */
    H_SECTIONS = 80,       /* SEC_COUNT x {u64 offset, u64 length, u32 crc32c, u32 zero} */
    H_SECTION_SIZE = 24,
    H_CODE_KIND = 200,     /* u32, format 2 */
    H_CODE_PARAM = 204,    /* u32, format 2 */
    H_CRC = 4092           /* u32 over bytes 0..4091 */
};

static inline uint32_t seg_get32(const unsigned char *p, size_t off) { uint32_t v; memcpy(&v, p + off, 4); return v; }
static inline uint64_t seg_get64(const unsigned char *p, size_t off) { uint64_t v; memcpy(&v, p + off, 8); return v; }
static inline void seg_put32(unsigned char *p, size_t off, uint32_t v) { memcpy(p + off, &v, 4); }
static inline void seg_put64(unsigned char *p, size_t off, uint64_t v) { memcpy(p + off, &v, 8); }

/* Geometry shared by the writer and the reader. */
typedef struct {
    uint32_t node_bytes, nps, spn;
    uint64_t node_sectors;
} seg_geom;

static inline seg_geom seg_geometry(uint64_t n, uint32_t vec_bytes, uint32_t R)
{
    seg_geom g;
    g.node_bytes = vec_bytes + 4 + 4 * R;
    if (g.node_bytes <= SEG_PAYLOAD) {
        g.nps = SEG_PAYLOAD / g.node_bytes;
        g.spn = 1;
        g.node_sectors = (n + g.nps - 1) / g.nps;
    } else {
        g.nps = 0;
        g.spn = (g.node_bytes + SEG_PAYLOAD - 1) / SEG_PAYLOAD;
        g.node_sectors = n * g.spn;
    }
    return g;
}

/* First sector of node u (sector 0 is the header). */
static inline uint64_t seg_node_sector(const seg_geom *g, uint64_t u)
{
    return 1 + (g->nps ? u / g->nps : u * g->spn);
}

/* Byte offset of node u's record inside its first sector's payload (0 when spanning). */
static inline uint32_t seg_node_offset(const seg_geom *g, uint64_t u)
{
    return g->nps ? (uint32_t)(u % g->nps) * g->node_bytes : 0;
}

#endif
