/*
 * shard_log.c — a shard's operation log (nearline.h, "the operation log"): the entries
 * replication ships, their encoding, and consistent copies of a shard for the followers
 * that the log can no longer catch up.
 *
 * Invariants (all under wmu):
 *  - the shard's contents are its log applied in order from the start up to log_last:
 *    an entry is put in the same synced RocksDB batch as the write it describes, with the
 *    manifest's "log" record (last sequence and epoch), so a crash keeps both or neither;
 *  - sequences are dense: entry log_last + 1 is the only one accepted next, and the log
 *    holds exactly [log_first, log_last] (trimming only removes from the front);
 *  - epochs never go back along the log, and nothing is accepted from a primary of an
 *    epoch below the fence (the entries a newer primary relays keep their own, older,
 *    epochs). The fence is raised (durably, in the manifest) by a failover that consults
 *    this replica and by every newer primary's first request, so a deposed primary can
 *    never again get this replica to acknowledge.
 *
 * An entry is the byte string that is stored, shipped and applied, unchanged:
 *
 *   0  u32 magic "NLOG"      4  u8 version (1)   5 u8 type (1 upsert, 2 delete)  6 u16 0
 *   8  u64 epoch             16 u64 wall-clock ms when the primary ordered it
 *   24 u32 count             28 u32 dim (upserts; 0 for deletes)
 *   32 u32 body bytes        36 u32 CRC-32C of bytes 0..35 and the body
 *   body, count items: u8 id kind (0 number, 1 string), u16 id bytes, the id (numbers:
 *   u64), then for upserts dim f32 and u32 metadata bytes + the metadata (JSON text).
 *
 * Little-endian throughout (read with memcpy). A decoder takes untrusted bytes (another
 * node's log) and checks every length before it reads; the engine's own validation of
 * points (finite values, metadata a JSON object, ids) runs after it as for any write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "nl_catalog.h"
#include "nl_crc32c.h"
#include "shard_internal.h"

#define LOG_MAGIC 0x474f4c4eu /* "NLOG" */
#define LOG_HDR 40u
#define LOG_UPSERT 1
#define LOG_DELETE 2
#define LOG_MAX_COUNT 1000000u

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

static void seq_key(uint64_t seq, unsigned char k[8])
{
    for (int i = 0; i < 8; i++)
        k[i] = (unsigned char)(seq >> (56 - 8 * i));
}

static uint64_t seq_from_key(const unsigned char *k)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | k[i];
    return v;
}

/* ---------------------------------------------------------------- encoding */

typedef struct {
    unsigned char *p;
    size_t len, cap;
    int oom;
} wbuf;

static void put(wbuf *b, const void *v, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->len + n)
            nc *= 2;
        unsigned char *q = realloc(b->p, nc);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->len, v, n);
    b->len += n;
}

static void put_id(wbuf *b, const nl_id *id)
{
    unsigned char kind = id->is_str ? 1 : 0;
    uint16_t n = id->is_str ? (uint16_t)id->len : 8;
    put(b, &kind, 1);
    put(b, &n, 2);
    if (id->is_str)
        put(b, id->str, id->len);
    else
        put(b, &id->num, 8);
}

/* The entry for count items; pts (upserts) or ids (deletes). *out malloc'd. */
static int encode(int type, uint64_t epoch, uint32_t dim, const nl_point *pts, const nl_id *ids, size_t count,
                  void **out, size_t *len)
{
    if (count == 0 || count > LOG_MAX_COUNT)
        return nl_fail(NL_EINVAL, "a log entry holds 1..%u operations, not %zu", LOG_MAX_COUNT, count);
    wbuf b = {0};
    unsigned char hdr[LOG_HDR] = {0};
    put(&b, hdr, sizeof hdr);
    for (size_t i = 0; i < count; i++) {
        const nl_id *id = type == LOG_UPSERT ? &pts[i].id : &ids[i];
        if (id->is_str && (id->len == 0 || id->len > NL_MAX_ID_BYTES || !id->str)) {
            free(b.p);
            return nl_fail(NL_EINVAL, "id %zu: a string id has 1..%d bytes", i, NL_MAX_ID_BYTES);
        }
        put_id(&b, id);
        if (type == LOG_UPSERT) {
            if (pts[i].dim != dim || !pts[i].vector) {
                free(b.p);
                return nl_fail(NL_EDIM, "point %zu has dimension %u, not %u", i, pts[i].dim, dim);
            }
            put(&b, pts[i].vector, sizeof(float) * dim);
            uint32_t ml = pts[i].metadata ? (uint32_t)pts[i].metadata_len : 0;
            put(&b, &ml, 4);
            if (ml)
                put(&b, pts[i].metadata, ml);
        }
    }
    if (b.oom) {
        free(b.p);
        return -ENOMEM;
    }
    uint32_t magic = LOG_MAGIC, cnt = (uint32_t)count, d = type == LOG_UPSERT ? dim : 0,
             body = (uint32_t)(b.len - LOG_HDR);
    uint64_t t = wall_ms();
    memcpy(b.p, &magic, 4);
    b.p[4] = 1;
    b.p[5] = (unsigned char)type;
    memcpy(b.p + 8, &epoch, 8);
    memcpy(b.p + 16, &t, 8);
    memcpy(b.p + 24, &cnt, 4);
    memcpy(b.p + 28, &d, 4);
    memcpy(b.p + 32, &body, 4);
    uint32_t crc = nl_crc32c(0, b.p, 36);
    crc = nl_crc32c(crc, b.p + LOG_HDR, body);
    memcpy(b.p + 36, &crc, 4);
    *out = b.p;
    *len = b.len;
    return 0;
}

/* A decoded entry: pointers into the entry's bytes, except vecs (aligned copies). */
typedef struct {
    int type;
    uint64_t epoch, time_ms;
    size_t count;
    nl_point *pts;
    nl_id *ids;
    float *vecs;
} logop;

static void logop_free(logop *o)
{
    free(o->pts);
    free(o->ids);
    free(o->vecs);
}

/* Header fields only (checks magic, version and the checksum when full). */
static int decode_header(const unsigned char *e, size_t len, int full, uint64_t *epoch, uint64_t *time_ms)
{
    uint32_t magic, body, crc;
    if (len < LOG_HDR)
        return nl_fail(NL_ECORRUPT, "log entry of %zu bytes", len);
    memcpy(&magic, e, 4);
    memcpy(&body, e + 32, 4);
    if (magic != LOG_MAGIC || e[4] != 1 || (e[5] != LOG_UPSERT && e[5] != LOG_DELETE))
        return nl_fail(NL_ECORRUPT, "log entry: bad magic, version or type");
    if ((size_t)body != len - LOG_HDR)
        return nl_fail(NL_ECORRUPT, "log entry: body of %u bytes in %zu", body, len);
    if (full) {
        memcpy(&crc, e + 36, 4);
        uint32_t c = nl_crc32c(nl_crc32c(0, e, 36), e + LOG_HDR, body);
        if (c != crc)
            return nl_fail(NL_ECORRUPT, "log entry: checksum mismatch");
    }
    memcpy(epoch, e + 8, 8);
    if (time_ms)
        memcpy(time_ms, e + 16, 8);
    return 0;
}

static int decode(const unsigned char *e, size_t len, uint32_t dim, logop *o)
{
    memset(o, 0, sizeof *o);
    int rc = decode_header(e, len, 1, &o->epoch, &o->time_ms);
    if (rc)
        return rc;
    uint32_t count, d;
    memcpy(&count, e + 24, 4);
    memcpy(&d, e + 28, 4);
    o->type = e[5];
    if (count == 0 || count > LOG_MAX_COUNT)
        return nl_fail(NL_ECORRUPT, "log entry of %u operations", count);
    if (o->type == LOG_UPSERT && d != dim)
        return nl_fail(NL_EDIM, "log entry of dimension %u for a shard of %u", d, dim);
    /* every item takes at least 3 bytes: a count the body cannot hold is refused before
     * anything is allocated for it */
    if ((size_t)count * 3 > len - LOG_HDR)
        return nl_fail(NL_ECORRUPT, "log entry: %u operations in %zu bytes", count, len - LOG_HDR);
    o->count = count;
    if (o->type == LOG_UPSERT) {
        if ((size_t)count * (3 + 4 + sizeof(float) * dim) > len - LOG_HDR)
            return nl_fail(NL_ECORRUPT, "log entry: %u points in %zu bytes", count, len - LOG_HDR);
        o->pts = calloc(count, sizeof *o->pts);
        o->vecs = malloc(sizeof(float) * dim * count);
    } else {
        o->ids = calloc(count, sizeof *o->ids);
    }
    if ((o->type == LOG_UPSERT && (!o->pts || !o->vecs)) || (o->type == LOG_DELETE && !o->ids)) {
        logop_free(o);
        return -ENOMEM;
    }
    size_t at = LOG_HDR;
    for (uint32_t i = 0; i < count; i++) {
        nl_id id = {0};
        uint16_t n;
        if (len - at < 3)
            goto trunc;
        unsigned char kind = e[at];
        memcpy(&n, e + at + 1, 2);
        at += 3;
        if (kind > 1 || (kind == 0 && n != 8) || (kind == 1 && (n == 0 || n > NL_MAX_ID_BYTES)) || len - at < n)
            goto bad;
        if (kind == 0) {
            memcpy(&id.num, e + at, 8);
        } else {
            id.is_str = 1;
            id.str = (const char *)e + at;
            id.len = n;
        }
        at += n;
        if (o->type == LOG_DELETE) {
            o->ids[i] = id;
            continue;
        }
        size_t vb = sizeof(float) * dim;
        uint32_t ml;
        if (len - at < vb + 4)
            goto trunc;
        memcpy(o->vecs + (size_t)i * dim, e + at, vb);
        at += vb;
        memcpy(&ml, e + at, 4);
        at += 4;
        if (ml > NL_MAX_METADATA_BYTES || len - at < ml)
            goto bad;
        o->pts[i] = (nl_point){id, o->vecs + (size_t)i * dim, dim, ml ? (const char *)e + at : NULL, ml};
        at += ml;
    }
    if (at != len)
        goto bad;
    return 0;
trunc:
    logop_free(o);
    return nl_fail(NL_ECORRUPT, "log entry ends inside an operation");
bad:
    logop_free(o);
    return nl_fail(NL_ECORRUPT, "log entry: an operation's lengths are out of range");
}

/* ---------------------------------------------------------------- staging (wmu held) */

int sh_log_stage_locked(nl_shard *sh, nl_store_batch *b, sh_logrec *lr)
{
    NL_ASSERT_HELD(&sh->wmu);
    uint64_t seq = lr->seq ? lr->seq : sh->log_last + 1;
    if (seq != sh->log_last + 1)
        return nl_fail(NL_ESTALE, "log entry %llu out of order: the log ends at %llu", (unsigned long long)seq,
                       (unsigned long long)sh->log_last);
    uint64_t by = lr->by ? lr->by : lr->epoch;
    if (by < sh->log_fence)
        return nl_fail(NL_ESTALE, "log entry %llu from a primary of epoch %llu: this replica is fenced at epoch %llu",
                       (unsigned long long)seq, (unsigned long long)by, (unsigned long long)sh->log_fence);
    if (lr->epoch > by)
        return nl_fail(NL_ECORRUPT, "log entry of epoch %llu sent by a primary of epoch %llu",
                       (unsigned long long)lr->epoch, (unsigned long long)by);
    if (lr->epoch < sh->log_last_epoch)
        return nl_fail(NL_ESTALE, "log entry of epoch %llu after one of epoch %llu", (unsigned long long)lr->epoch,
                       (unsigned long long)sh->log_last_epoch);
    unsigned char k[8];
    seq_key(seq, k);
    nl_store_batch_put(b, NL_CF_OPLOG, k, 8, lr->entry, lr->len);
    uint64_t rec[2] = {seq, lr->epoch};
    nl_store_batch_put(b, NL_CF_MANIFEST, "log", 3, rec, sizeof rec);
    lr->seq = seq;
    return 0;
}

void sh_log_commit_locked(nl_shard *sh, const sh_logrec *lr)
{
    NL_ASSERT_HELD(&sh->wmu);
    NL_ASSERT(lr->seq == sh->log_last + 1); /* staged under the same wmu */
    if (sh->log_entries == 0) {
        sh->log_first = lr->seq;
        sh->log_oldest_ms = lr->time_ms;
    }
    sh->log_last = lr->seq;
    sh->log_last_epoch = lr->epoch;
    sh->log_entries++;
    sh->log_bytes += lr->len;
}

/* ---------------------------------------------------------------- open */

int sh_log_load(nl_shard *sh)
{
    void *v;
    size_t vl;
    int rc = nl_store_get(sh->st, NL_CF_MANIFEST, "log", 3, &v, &vl);
    if (rc == 0) {
        uint64_t rec[2];
        if (vl != sizeof rec) {
            free(v);
            return nl_fail(NL_ECORRUPT, "shard manifest: log record of %zu bytes", vl);
        }
        memcpy(rec, v, sizeof rec);
        free(v);
        sh->log_last = rec[0];
        sh->log_last_epoch = rec[1];
    } else if (rc != NL_ENOTFOUND) {
        return rc;
    }
    if ((rc = nl_store_get(sh->st, NL_CF_MANIFEST, "log_fence", 9, &v, &vl)) == 0) {
        if (vl == 8)
            memcpy(&sh->log_fence, v, 8);
        free(v);
        if (vl != 8)
            return nl_fail(NL_ECORRUPT, "shard manifest: fence of %zu bytes", vl);
    } else if (rc != NL_ENOTFOUND) {
        return rc;
    }
    nl_store_iter *it;
    if ((rc = nl_store_iter_create(sh->st, NL_CF_OPLOG, &it)) != 0)
        return rc;
    uint64_t expect = 0;
    for (nl_store_iter_seek_first(it); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl, len;
        const unsigned char *k = nl_store_iter_key(it, &kl);
        const unsigned char *e = nl_store_iter_value(it, &len);
        uint64_t epoch = 0, t = 0;
        if (kl != 8 || decode_header(e, len, 0, &epoch, &t) != 0) {
            rc = nl_fail(NL_ECORRUPT, "shard log: a bad entry");
            break;
        }
        uint64_t seq = seq_from_key(k);
        if (sh->log_entries == 0) {
            sh->log_first = seq;
            sh->log_oldest_ms = t;
        } else if (seq != expect) {
            rc = nl_fail(NL_ECORRUPT, "shard log: entry %llu follows %llu", (unsigned long long)seq,
                         (unsigned long long)(expect - 1));
            break;
        }
        expect = seq + 1;
        sh->log_entries++;
        sh->log_bytes += len;
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    if (!rc && sh->log_entries && expect != sh->log_last + 1)
        rc = nl_fail(NL_ECORRUPT, "shard log ends at %llu; the manifest says %llu", (unsigned long long)(expect - 1),
                     (unsigned long long)sh->log_last);
    if (!sh->log_entries)
        sh->log_first = sh->log_last + 1;
    return rc;
}

/* ---------------------------------------------------------------- writes */

int nl_shard_log_upsert(nl_shard *sh, const nl_log_order *o, const nl_point *pts, size_t n, uint64_t *seq)
{
    void *e;
    size_t len;
    int rc = nl_shard_validate(sh, pts, n);
    if (rc || (rc = encode(LOG_UPSERT, o->epoch, sh->cfg.dim, pts, NULL, n, &e, &len)) != 0)
        return rc;
    sh_logrec lr = {0, o->epoch, 0, e, len, 0, o->durable, o->ctx};
    memcpy(&lr.time_ms, (unsigned char *)e + 16, 8);
    rc = sh_upsert(sh, pts, n, &lr);
    free(e);
    if (!rc && seq)
        *seq = lr.seq;
    return rc;
}

int nl_shard_log_delete(nl_shard *sh, const nl_log_order *o, const nl_id *ids, size_t n, size_t *deleted,
                        uint64_t *seq)
{
    sh_logrec lr = {0, o->epoch, 0, NULL, 0, 0, o->durable, o->ctx};
    int rc = sh_delete(sh, ids, NULL, n, deleted, &lr);
    if (!rc && seq && lr.seq)
        *seq = lr.seq;
    return rc;
}

int nl_shard_log_delete_by_filter(nl_shard *sh, const nl_log_order *o, const nl_filter *f, size_t *deleted,
                                  uint64_t *seq)
{
    sh_logrec lr = {0, o->epoch, 0, NULL, 0, 0, o->durable, o->ctx};
    int rc = sh_delete_by_filter(sh, f, deleted, &lr);
    if (!rc && seq && lr.seq)
        *seq = lr.seq;
    return rc;
}

int sh_log_encode_delete(uint64_t epoch, const nl_id *ids, size_t n, void **out, size_t *len, uint64_t *time_ms)
{
    int rc = encode(LOG_DELETE, epoch, 0, NULL, ids, n, out, len);
    if (!rc)
        memcpy(time_ms, (unsigned char *)*out + 16, 8);
    return rc;
}

int nl_shard_log_entry_check(const void *entry, size_t len, uint32_t dim)
{
    logop o;
    int rc = decode(entry, len, dim, &o);
    if (!rc)
        logop_free(&o);
    return rc;
}

int nl_shard_log_apply(nl_shard *sh, uint64_t by, uint64_t seq, const void *entry, size_t len)
{
    if (seq == 0)
        return nl_fail(NL_EINVAL, "log sequences start at 1");
    logop o;
    int rc = decode(entry, len, sh->cfg.dim, &o);
    if (rc)
        return rc;
    sh_logrec lr = {seq, o.epoch, o.time_ms, entry, len, by, NULL, NULL};
    size_t deleted;
    rc = o.type == LOG_UPSERT ? sh_upsert(sh, o.pts, o.count, &lr) : sh_delete(sh, o.ids, NULL, o.count, &deleted, &lr);
    logop_free(&o);
    return rc;
}

/* ---------------------------------------------------------------- reading and trimming */

int nl_shard_log_state(nl_shard *sh, nl_log_state *st)
{
    pthread_mutex_lock(&sh->wmu);
    *st = (nl_log_state){sh->log_last, sh->log_last_epoch, sh->log_first, sh->log_entries, sh->log_bytes,
                         sh->log_fence, sh->log_entries ? sh->log_oldest_ms : 0};
    pthread_mutex_unlock(&sh->wmu);
    return 0;
}

void nl_log_entries_free(nl_log_entry *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++)
        free(e[i].data);
    free(e);
}

int nl_shard_log_read(nl_shard *sh, uint64_t seq, size_t max_bytes, nl_log_entry **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&sh->wmu);
    uint64_t first = sh->log_first, last = sh->log_last;
    pthread_mutex_unlock(&sh->wmu);
    if (seq > last)
        return 0;
    if (seq < first || seq == 0)
        return nl_fail(NL_ENOTFOUND, "log entry %llu was trimmed (the log starts at %llu)", (unsigned long long)seq,
                       (unsigned long long)first);
    nl_store_iter *it;
    int rc = nl_store_iter_create(sh->st, NL_CF_OPLOG, &it);
    if (rc)
        return rc;
    unsigned char k[8];
    seq_key(seq, k);
    size_t cap = 0, bytes = 0;
    nl_log_entry *v = NULL;
    uint64_t want = seq;
    for (nl_store_iter_seek(it, k, 8); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl, len;
        const unsigned char *key = nl_store_iter_key(it, &kl);
        const void *e = nl_store_iter_value(it, &len);
        if (kl != 8 || seq_from_key(key) != want)
            break; /* trimmed meanwhile (a gap at the front), or the end */
        if (*n && bytes + len > max_bytes)
            break;
        uint64_t epoch = 0;
        if ((rc = decode_header(e, len, 0, &epoch, NULL)) != 0)
            break;
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            nl_log_entry *q = realloc(v, nc * sizeof *q);
            if (!q) {
                rc = -ENOMEM;
                break;
            }
            v = q;
            cap = nc;
        }
        void *d = malloc(len);
        if (!d) {
            rc = -ENOMEM;
            break;
        }
        memcpy(d, e, len);
        v[(*n)++] = (nl_log_entry){want, epoch, d, len};
        bytes += len;
        want++;
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    if (!rc && *n == 0)
        rc = nl_fail(NL_ENOTFOUND, "log entry %llu was trimmed", (unsigned long long)seq);
    if (rc) {
        nl_log_entries_free(v, *n);
        *n = 0;
        return rc;
    }
    *out = v;
    return 0;
}

int nl_shard_log_epoch_at(nl_shard *sh, uint64_t seq, uint64_t *epoch)
{
    *epoch = 0;
    if (seq == 0)
        return 0;
    pthread_mutex_lock(&sh->wmu);
    uint64_t last = sh->log_last, last_epoch = sh->log_last_epoch;
    pthread_mutex_unlock(&sh->wmu);
    if (seq == last) {
        *epoch = last_epoch; /* known even when the log was trimmed to nothing */
        return 0;
    }
    unsigned char k[8];
    seq_key(seq, k);
    void *v;
    size_t vl;
    int rc = nl_store_get(sh->st, NL_CF_OPLOG, k, 8, &v, &vl);
    if (rc == NL_ENOTFOUND)
        return nl_fail(NL_ENOTFOUND, "log entry %llu is not in the log", (unsigned long long)seq);
    if (rc)
        return rc;
    rc = decode_header(v, vl, 0, epoch, NULL);
    free(v);
    return rc;
}

int nl_shard_log_trim(nl_shard *sh, uint64_t keep_from, uint64_t max_bytes, uint64_t max_age_ms, uint64_t *trimmed)
{
    if (trimmed)
        *trimmed = 0;
    nl_store_iter *it;
    int rc = nl_store_iter_create(sh->st, NL_CF_OPLOG, &it);
    if (rc)
        return rc;
    uint64_t now = wall_ms();
    pthread_mutex_lock(&sh->wmu);
    uint64_t first = sh->log_first, end = first, bytes = sh->log_bytes, entries = sh->log_entries, oldest = 0;
    unsigned char k[8];
    seq_key(first, k);
    /* The iterator's snapshot predates wmu: entries appended since are beyond its end,
     * which only stops the walk early. */
    for (nl_store_iter_seek(it, k, 8); nl_store_iter_valid(it); nl_store_iter_next(it)) {
        size_t kl, len;
        const unsigned char *key = nl_store_iter_key(it, &kl);
        const unsigned char *e = nl_store_iter_value(it, &len);
        uint64_t epoch = 0, t = 0;
        if (kl != 8 || seq_from_key(key) != end || decode_header(e, len, 0, &epoch, &t) != 0)
            break;
        oldest = t;
        if (end >= keep_from || !(bytes > max_bytes || now - t >= max_age_ms || t > now + 3600000ull))
            break;
        bytes -= len;
        entries--;
        end++;
        oldest = 0;
        if (end - first >= 100000)
            break; /* bounded work under wmu; the next call goes on */
    }
    rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    if (!rc && end > first) {
        nl_store_batch *b = nl_store_batch_create(sh->st);
        unsigned char from[8], to[8];
        seq_key(first, from);
        seq_key(end, to);
        if (!b)
            rc = -ENOMEM;
        else {
            nl_store_batch_delete_range(b, NL_CF_OPLOG, from, 8, to, 8);
            rc = nl_store_write(b, 0); /* a trim lost in a crash is only redone */
            nl_store_batch_destroy(b);
        }
        if (!rc) {
            sh->log_first = end;
            sh->log_bytes = bytes;
            sh->log_entries = entries;
            if (entries == 0)
                sh->log_first = sh->log_last + 1;
            if (oldest)
                sh->log_oldest_ms = oldest;
            else if (entries) {
                /* the walk stopped at the 100,000 bound: the next entry's time */
                uint64_t ep;
                void *v;
                size_t vl;
                seq_key(end, k);
                if (nl_store_get(sh->st, NL_CF_OPLOG, k, 8, &v, &vl) == 0) {
                    decode_header(v, vl, 0, &ep, &sh->log_oldest_ms);
                    free(v);
                }
            }
            if (trimmed)
                *trimmed = end - first;
        }
    }
    pthread_mutex_unlock(&sh->wmu);
    return rc;
}

int nl_shard_fence(nl_shard *sh, uint64_t epoch, nl_log_state *st)
{
    pthread_mutex_lock(&sh->wmu);
    int rc = 0;
    if (epoch < sh->log_fence) {
        rc = nl_fail(NL_ESTALE, "fenced at epoch %llu already", (unsigned long long)sh->log_fence);
    } else if (epoch > sh->log_fence) {
        nl_store_batch *b = nl_store_batch_create(sh->st);
        if (!b) {
            rc = -ENOMEM;
        } else {
            nl_store_batch_put(b, NL_CF_MANIFEST, "log_fence", 9, &epoch, 8);
            rc = nl_store_write(b, 1);
            nl_store_batch_destroy(b);
        }
        if (!rc)
            sh->log_fence = epoch;
    }
    pthread_mutex_unlock(&sh->wmu);
    if (st)
        nl_shard_log_state(sh, st);
    return rc;
}

/* ---------------------------------------------------------------- consistent copies */

int nl_shard_checkpoint(nl_shard *sh, const char *dir, nl_log_state *at)
{
    if (mkdir(dir, 0755) != 0)
        return errno == EEXIST ? nl_fail(NL_EEXISTS, "%s exists", dir) : nl_fail(-errno, "%s: %s", dir, strerror(errno));
    char meta[4200];
    if ((size_t)snprintf(meta, sizeof meta, "%s/meta", dir) >= sizeof meta)
        return nl_fail(NL_EINVAL, "copy directory name too long");
    /* Under wmu no write is between the store's checkpoint and the segment list: the
     * manifest copied lists exactly the segments linked (a flush or compaction installs
     * its segments under wmu too). */
    pthread_mutex_lock(&sh->wmu);
    int rc = nl_store_checkpoint(sh->st, meta);
    sh_view *v = rc ? NULL : sh_view_acquire(sh);
    for (uint32_t i = 0; v && !rc && i < v->nseg; i++) {
        const char *base = strrchr(v->segs[i]->path, '/');
        char dst[8800];
        snprintf(dst, sizeof dst, "%s/%s", dir, base ? base + 1 : v->segs[i]->path);
        if (link(v->segs[i]->path, dst) != 0)
            rc = nl_fail(-errno, "cannot link %s into the copy: %s", v->segs[i]->path, strerror(errno));
    }
    nl_log_state s = {sh->log_last, sh->log_last_epoch, sh->log_first, sh->log_entries, sh->log_bytes,
                      sh->log_fence, sh->log_entries ? sh->log_oldest_ms : 0};
    pthread_mutex_unlock(&sh->wmu);
    if (v)
        sh_view_release(v);
    if (!rc)
        rc = nl_fsync_dir(dir);
    if (rc) {
        nl_remove_tree(dir);
        return rc;
    }
    if (at)
        *at = s;
    return 0;
}
