/*
 * repl_wire.c — the replicate request's bytes (nl_repl.h): what a primary's link sends
 * and a follower reads. Pure: no I/O, no clocks; the follower's decoder is fed bytes
 * from the network, so every length is checked before it is used.
 *
 * Layout, little-endian (both ends are this program on x86-64):
 *   0  u32 magic "NLRP"   4 u32 version (1)   8 u64 the primary's epoch
 *   16 u64 prev (the sequence the entries follow)   24 u64 prev's epoch
 *   32 u32 entry count   36 u32 uid length (1..19)   40 uid bytes
 *   then per entry: u64 sequence, u32 length, the entry's bytes (the engine's log format).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nl_repl.h"

#define RP_MAGIC 0x50524c4eu /* "NLRP" */
#define RP_HDR 40u

int nl_repl_msg_encode(uint64_t epoch, uint64_t prev, uint64_t prev_epoch, const char *uid, const nl_log_entry *e,
                       size_t n, void **out, size_t *len)
{
    size_t ul = strlen(uid), total = RP_HDR + ul;
    if (ul == 0 || ul >= NL_REPL_UID_MAX)
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        total += 12 + e[i].len;
    unsigned char *p = malloc(total);
    if (!p)
        return -ENOMEM;
    uint32_t magic = RP_MAGIC, ver = 1, cnt = (uint32_t)n, u32 = (uint32_t)ul;
    memcpy(p, &magic, 4);
    memcpy(p + 4, &ver, 4);
    memcpy(p + 8, &epoch, 8);
    memcpy(p + 16, &prev, 8);
    memcpy(p + 24, &prev_epoch, 8);
    memcpy(p + 32, &cnt, 4);
    memcpy(p + 36, &u32, 4);
    memcpy(p + RP_HDR, uid, ul);
    size_t at = RP_HDR + ul;
    for (size_t i = 0; i < n; i++) {
        uint32_t l = (uint32_t)e[i].len;
        memcpy(p + at, &e[i].seq, 8);
        memcpy(p + at + 8, &l, 4);
        memcpy(p + at + 12, e[i].data, e[i].len);
        at += 12 + e[i].len;
    }
    *out = p;
    *len = total;
    return 0;
}

int nl_repl_msg_decode(const void *body, size_t len, nl_repl_msg *m)
{
    const unsigned char *p = body;
    memset(m, 0, sizeof *m);
    if (!p || len < RP_HDR)
        return -EINVAL;
    uint32_t magic, ver, ul;
    memcpy(&magic, p, 4);
    memcpy(&ver, p + 4, 4);
    memcpy(&m->epoch, p + 8, 8);
    memcpy(&m->prev, p + 16, 8);
    memcpy(&m->prev_epoch, p + 24, 8);
    memcpy(&m->count, p + 32, 4);
    memcpy(&ul, p + 36, 4);
    if (magic != RP_MAGIC || ver != 1 || ul == 0 || ul >= NL_REPL_UID_MAX || len - RP_HDR < ul || m->count > 1000000)
        return -EINVAL;
    memcpy(m->uid, p + RP_HDR, ul);
    m->uid[ul] = 0;
    m->body = p;
    m->len = len;
    m->at = RP_HDR + ul;
    return 0;
}

int nl_repl_msg_next(nl_repl_msg *m, uint64_t *seq, const void **data, uint32_t *len)
{
    if (m->at == m->len)
        return 0;
    if (m->len - m->at < 12)
        return -EINVAL;
    memcpy(seq, m->body + m->at, 8);
    memcpy(len, m->body + m->at + 8, 4);
    if (m->len - m->at - 12 < *len)
        return -EINVAL;
    *data = m->body + m->at + 12;
    m->at += 12 + (size_t)*len;
    return 1;
}
