/*
 * postings.c — the filter index (writer, backfill) and the filter executor with its
 * per-shard leaf cache. Key layout and the caching argument: nl_postings.h.
 *
 * Invariants: a posting key is (kind, field, [value,] pid) with pid the last 8 bytes,
 * big-endian, so the postings of one (kind, field, value) are one pid-ascending run; a
 * cached leaf entry built at next pid H holds every posting with pid < H that existed
 * when it was built; entries are immutable once published (an update replaces the entry
 * and the old bitmap lives until its last reader lets go).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nl_postings.h"

/* ---------------------------------------------------------------- keys */

typedef struct {
    unsigned char *p;
    size_t len, cap;
} kbuf;

static int kb_put(kbuf *k, const void *src, size_t n)
{
    if (k->len + n > k->cap) {
        size_t nc = k->cap ? k->cap : 256;
        while (nc < k->len + n) nc *= 2;
        unsigned char *p = realloc(k->p, nc);
        if (!p)
            return -ENOMEM;
        k->p = p;
        k->cap = nc;
    }
    memcpy(k->p + k->len, src, n);
    k->len += n;
    return 0;
}

static void be64(uint64_t v, unsigned char out[8])
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        out[i] = (unsigned char)v;
}

static uint64_t from_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Doubles in an order bytes compare the same way: sign bit flipped for positives, every
 * bit for negatives; -0 is 0. */
static uint64_t double_key(double d)
{
    if (d == 0)
        d = 0;
    uint64_t u;
    memcpy(&u, &d, 8);
    return (u >> 63) ? ~u : u ^ (1ull << 63);
}

static double double_from_key(uint64_t k)
{
    uint64_t u = (k >> 63) ? k ^ (1ull << 63) : ~k;
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* kind, then the field with its length */
static int kb_field(kbuf *k, char kind, const char *field, size_t flen)
{
    k->len = 0;
    unsigned char h[3] = {(unsigned char)kind, (unsigned char)(flen >> 8), (unsigned char)flen};
    return kb_put(k, h, 3) || kb_put(k, field, flen) ? -ENOMEM : 0;
}

static int kb_str(kbuf *k, const char *s, size_t len)
{
    unsigned char h[5] = {'s', (unsigned char)(len >> 24), (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                          (unsigned char)len};
    return kb_put(k, h, 5) || kb_put(k, s, len) ? -ENOMEM : 0;
}

static int kb_int(kbuf *k, int64_t i)
{
    unsigned char h[9];
    h[0] = 'i';
    be64((uint64_t)i ^ (1ull << 63), h + 1);
    return kb_put(k, h, 9);
}

static int kb_bool(kbuf *k, int b)
{
    unsigned char h[2] = {'b', (unsigned char)(b != 0)};
    return kb_put(k, h, 2);
}

static int kb_double(kbuf *k, double d)
{
    unsigned char h[8];
    be64(double_key(d), h);
    return kb_put(k, h, 8);
}

/* ---------------------------------------------------------------- writer */

static int emit(nl_store_batch *b, kbuf *k, uint64_t pid, int put)
{
    unsigned char pk[8];
    be64(pid, pk);
    size_t keep = k->len;
    if (kb_put(k, pk, 8))
        return -ENOMEM;
    if (put)
        nl_store_batch_put(b, NL_CF_POSTINGS, k->p, k->len, "", 0);
    else
        nl_store_batch_delete(b, NL_CF_POSTINGS, k->p, k->len);
    k->len = keep;
    return 0;
}

static int emit_number(nl_store_batch *b, kbuf *k, const char *f, size_t fl, double d, int is_int, int64_t iv,
                       uint64_t pid, int put)
{
    int rc;
    int64_t i = iv;
    if (is_int || nl_filter_integral(d, &i)) {
        if ((rc = kb_field(k, 'v', f, fl)) || (rc = kb_int(k, i)) || (rc = emit(b, k, pid, put)))
            return rc;
    }
    if ((rc = kb_field(k, 'n', f, fl)) || (rc = kb_double(k, d)) || (rc = emit(b, k, pid, put)))
        return rc;
    return 0;
}

int nl_postings_write(nl_store_batch *b, uint64_t pid, const char *meta, size_t len, int put)
{
    if (!meta || len == 0)
        return 0;
    json_error_t err;
    json_t *m = json_loadb(meta, len, 0, &err);
    if (!m || !json_is_object(m)) {
        json_decref(m);
        return nl_fail(NL_EINVAL, "metadata of version %llu is not a JSON object", (unsigned long long)pid);
    }
    kbuf k = {0};
    int rc = 0;
    void *iter = json_object_iter(m);
    for (; iter && !rc; iter = json_object_iter_next(m, iter)) {
        const char *f = json_object_iter_key(iter);
        size_t fl = json_object_iter_key_len(iter);
        json_t *v = json_object_iter_value(iter);
        if (json_is_null(v) || fl > 65535)
            continue;
        if ((rc = kb_field(&k, 'e', f, fl)) || (rc = emit(b, &k, pid, put)))
            break;
        if (json_is_string(v)) {
            if (!(rc = kb_field(&k, 'v', f, fl)) && !(rc = kb_str(&k, json_string_value(v), json_string_length(v))))
                rc = emit(b, &k, pid, put);
        } else if (json_is_boolean(v)) {
            if (!(rc = kb_field(&k, 'v', f, fl)) && !(rc = kb_bool(&k, json_is_true(v))))
                rc = emit(b, &k, pid, put);
        } else if (json_is_integer(v)) {
            json_int_t iv = json_integer_value(v);
            rc = emit_number(b, &k, f, fl, (double)iv, 1, (int64_t)iv, pid, put);
        } else if (json_is_real(v)) {
            rc = emit_number(b, &k, f, fl, json_real_value(v), 0, 0, pid, put);
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                if (!json_is_string(e))
                    continue;
                if ((rc = kb_field(&k, 'v', f, fl)) || (rc = kb_str(&k, json_string_value(e), json_string_length(e))) ||
                    (rc = emit(b, &k, pid, put)))
                    break;
            }
        }
    }
    free(k.p);
    json_decref(m);
    return rc;
}

int nl_postings_backfill(nl_store *st, uint64_t *indexed)
{
    *indexed = 0;
    nl_store_iter *it;
    int rc = nl_store_iter_create(st, NL_CF_META, &it);
    if (rc)
        return rc;
    nl_store_batch *b = nl_store_batch_create(st);
    if (!b) {
        nl_store_iter_destroy(it);
        return -ENOMEM;
    }
    for (nl_store_iter_seek_first(it); nl_store_iter_valid(it) && !rc; nl_store_iter_next(it)) {
        size_t kl, vl;
        const void *ek = nl_store_iter_key(it, &kl);
        const char *meta = nl_store_iter_value(it, &vl);
        void *pk;
        size_t pkl;
        int g = nl_store_get(st, NL_CF_IDMAP, ek, kl, &pk, &pkl);
        if (g == NL_ENOTFOUND)
            continue;
        if (g) {
            rc = g;
            break;
        }
        uint64_t pid = pkl == 8 ? from_be64(pk) : 0;
        free(pk);
        if (pkl != 8) {
            rc = nl_fail(NL_ECORRUPT, "id map entry of %zu bytes", pkl);
            break;
        }
        if (nl_postings_write(b, pid, meta, vl, 1) == 0)
            ++*indexed;
        if (nl_store_batch_count(b) >= 20000) {
            rc = nl_store_write(b, 0);
            nl_store_batch_clear(b);
        }
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    if (!rc) {
        nl_store_batch_put(b, NL_CF_MANIFEST, "postings", 8, "1", 1);
        rc = nl_store_write(b, 1);
    }
    nl_store_batch_destroy(b);
    nl_store_iter_destroy(it);
    return rc;
}

/* ---------------------------------------------------------------- shared bitmaps */

typedef struct fbm {
    atomic_int refs;
    nl_bitmap *bm;
} fbm;

static fbm *fbm_wrap(nl_bitmap *bm)
{
    if (!bm)
        return NULL;
    fbm *h = malloc(sizeof *h);
    if (!h) {
        nl_bitmap_destroy(bm);
        return NULL;
    }
    atomic_init(&h->refs, 1);
    h->bm = bm;
    return h;
}

static void fbm_unref(fbm *h)
{
    if (h && atomic_fetch_sub(&h->refs, 1) == 1) {
        nl_bitmap_destroy(h->bm);
        free(h);
    }
}

/* ---------------------------------------------------------------- cache */

typedef struct {
    unsigned char *key;
    size_t klen;
    fbm *h;
    uint64_t hi;     /* next pid when built: postings below it are all in */
    uint64_t used;   /* tick of last use */
    size_t bytes;
} centry;

#define FCACHE_ENTRIES 256

struct nl_fcache {
    pthread_mutex_t mu;
    centry e[FCACHE_ENTRIES];
    size_t n, bytes, budget;
    uint64_t tick;
};

nl_fcache *nl_fcache_create(size_t budget)
{
    nl_fcache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->budget = budget ? budget : (64u << 20);
    return c;
}

void nl_fcache_destroy(nl_fcache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].key);
        fbm_unref(c->e[i].h);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* The cached bitmap of key (a new reference) and the pid it was built to, or NULL. */
static fbm *cache_get(nl_fcache *c, const unsigned char *key, size_t klen, uint64_t *hi)
{
    if (!c)
        return NULL;
    fbm *h = NULL;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].klen == klen && memcmp(c->e[i].key, key, klen) == 0) {
            h = c->e[i].h;
            atomic_fetch_add(&h->refs, 1);
            *hi = c->e[i].hi;
            c->e[i].used = ++c->tick;
            break;
        }
    pthread_mutex_unlock(&c->mu);
    return h;
}

static void entry_drop(nl_fcache *c, size_t i)
{
    free(c->e[i].key);
    fbm_unref(c->e[i].h);
    c->bytes -= c->e[i].bytes;
    c->e[i] = c->e[--c->n];
}

/* Publishes h (the cache takes its own reference) for key, replacing an older entry and
 * evicting the least recently used ones beyond the budget. Failure to cache is silent:
 * the cache is an optimisation. */
static void cache_put(nl_fcache *c, const unsigned char *key, size_t klen, fbm *h, uint64_t hi)
{
    if (!c)
        return;
    size_t bytes = nl_bitmap_bytes(h->bm) + klen;
    if (bytes > c->budget / 2)
        return;
    unsigned char *k = malloc(klen);
    if (!k)
        return;
    memcpy(k, key, klen);
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].klen == klen && memcmp(c->e[i].key, key, klen) == 0) {
            entry_drop(c, i);
            break;
        }
    while (c->n && (c->n == FCACHE_ENTRIES || c->bytes + bytes > c->budget)) {
        size_t lru = 0;
        for (size_t i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[lru].used)
                lru = i;
        entry_drop(c, lru);
    }
    atomic_fetch_add(&h->refs, 1);
    c->e[c->n++] = (centry){k, klen, h, hi, ++c->tick, bytes};
    c->bytes += bytes;
    pthread_mutex_unlock(&c->mu);
}

/* ---------------------------------------------------------------- leaf scans */

/* Adds the pids of every key that is prefix + 8-byte pid, pid >= from. */
static int scan_run(nl_store *st, const kbuf *prefix, uint64_t from, nl_bitmap *bm)
{
    nl_store_iter *it;
    int rc = nl_store_iter_create(st, NL_CF_POSTINGS, &it);
    if (rc)
        return rc;
    kbuf k = {0};
    unsigned char pk[8];
    be64(from, pk);
    if (kb_put(&k, prefix->p, prefix->len) || kb_put(&k, pk, 8)) {
        nl_store_iter_destroy(it);
        free(k.p);
        return -ENOMEM;
    }
    for (nl_store_iter_seek(it, k.p, k.len); nl_store_iter_valid(it) && !rc; nl_store_iter_next(it)) {
        size_t kl;
        const unsigned char *key = nl_store_iter_key(it, &kl);
        if (kl != prefix->len + 8 || memcmp(key, prefix->p, prefix->len) != 0)
            break;
        rc = nl_bitmap_add(bm, from_be64(key + prefix->len));
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    free(k.p);
    return rc;
}

/* Numbers of field in [lo, hi] with the node's inclusivity. */
static int scan_range(nl_store *st, const nl_fnode *n, int has_lo, double lo, int lo_incl, int has_hi, double hi,
                      int hi_incl, nl_bitmap *bm)
{
    kbuf k = {0};
    int rc = kb_field(&k, 'n', n->field, n->field_len);
    size_t plen = k.len;
    if (!rc && has_lo)
        rc = kb_double(&k, lo);
    nl_store_iter *it = NULL;
    if (!rc)
        rc = nl_store_iter_create(st, NL_CF_POSTINGS, &it);
    if (rc) {
        free(k.p);
        return rc;
    }
    for (nl_store_iter_seek(it, k.p, k.len); nl_store_iter_valid(it) && !rc; nl_store_iter_next(it)) {
        size_t kl;
        const unsigned char *key = nl_store_iter_key(it, &kl);
        if (kl != plen + 16 || memcmp(key, k.p, plen) != 0)
            break;
        double d = double_from_key(from_be64(key + plen));
        if (has_lo && (lo_incl ? d < lo : d <= lo))
            continue;
        if (has_hi && (hi_incl ? d > hi : d >= hi))
            break;
        rc = nl_bitmap_add(bm, from_be64(key + plen + 8));
    }
    if (!rc)
        rc = nl_store_iter_status(it);
    nl_store_iter_destroy(it);
    free(k.p);
    return rc;
}

/* The run prefix of one eq constant; *is_range when it is a real (ordered index). */
static int value_prefix(kbuf *k, const nl_fnode *n, const nl_fvalue *v, int *is_range)
{
    *is_range = 0;
    switch (v->type) {
    case NL_FV_STR: return kb_field(k, 'v', n->field, n->field_len) || kb_str(k, v->s, v->len) ? -ENOMEM : 0;
    case NL_FV_BOOL: return kb_field(k, 'v', n->field, n->field_len) || kb_bool(k, (int)v->i) ? -ENOMEM : 0;
    case NL_FV_INT: return kb_field(k, 'v', n->field, n->field_len) || kb_int(k, v->i) ? -ENOMEM : 0;
    case NL_FV_REAL: *is_range = 1; return 0;
    }
    return NL_EINVAL;
}

/* The leaf's cache key: its canonical description. */
static int leaf_key(const nl_fnode *n, kbuf *k)
{
    int rc = kb_field(k, (char)('0' + n->kind), n->field, n->field_len);
    for (uint32_t i = 0; !rc && i < n->nvals; i++) {
        const nl_fvalue *v = &n->vals[i];
        unsigned char t = (unsigned char)v->type;
        rc = kb_put(k, &t, 1);
        if (!rc)
            rc = v->type == NL_FV_STR ? kb_str(k, v->s, v->len) : v->type == NL_FV_REAL ? kb_double(k, v->d)
                                                                                        : kb_int(k, v->i);
    }
    if (!rc && n->kind == NL_FN_RANGE) {
        unsigned char f[4] = {(unsigned char)n->has_lo, (unsigned char)n->lo_incl, (unsigned char)n->has_hi,
                              (unsigned char)n->hi_incl};
        rc = kb_put(k, f, 4) || kb_double(k, n->lo) || kb_double(k, n->hi) ? -ENOMEM : 0;
    }
    if (!rc && n->kind == NL_FN_EXISTS)
        rc = kb_put(k, "e", 1);
    return rc;
}

/* Postings of a leaf for pids >= from into bm (ranges and reals ignore from). */
static int leaf_scan(nl_store *st, const nl_fnode *n, uint64_t from, nl_bitmap *bm)
{
    kbuf k = {0};
    int rc = 0;
    if (n->kind == NL_FN_EXISTS) {
        if (!(rc = kb_field(&k, 'e', n->field, n->field_len)))
            rc = scan_run(st, &k, from, bm);
    } else if (n->kind == NL_FN_RANGE) {
        rc = scan_range(st, n, n->has_lo, n->lo, n->lo_incl, n->has_hi, n->hi, n->hi_incl, bm);
    } else {
        for (uint32_t i = 0; i < n->nvals && !rc; i++) {
            int is_range;
            if ((rc = value_prefix(&k, n, &n->vals[i], &is_range)) != 0)
                break;
            rc = is_range ? scan_range(st, n, 1, n->vals[i].d, 1, 1, n->vals[i].d, 1, bm) : scan_run(st, &k, from, bm);
        }
    }
    free(k.p);
    return rc;
}

static int leaf_has_real(const nl_fnode *n)
{
    if (n->kind == NL_FN_RANGE)
        return 1;
    for (uint32_t i = 0; i < n->nvals; i++)
        if (n->vals[i].type == NL_FV_REAL)
            return 1;
    return 0;
}

/* A leaf's bitmap (positive: EXISTS false is the complement of EXISTS true). */
static int leaf_eval(nl_store *st, nl_fcache *c, uint64_t next_pid, const nl_fnode *n, fbm **out)
{
    *out = NULL;
    kbuf key = {0};
    int rc = leaf_key(n, &key);
    if (rc) {
        free(key.p);
        return rc;
    }
    uint64_t hi = 0;
    fbm *old = cache_get(c, key.p, key.len, &hi);
    if (old && hi >= next_pid) {
        free(key.p);
        *out = old;
        return 0;
    }
    nl_bitmap *bm;
    uint64_t from = 0;
    if (old && !leaf_has_real(n)) {
        bm = nl_bitmap_clone(old->bm); /* extend: only the pids since it was built */
        from = hi;
    } else {
        bm = nl_bitmap_create();
    }
    fbm_unref(old);
    if (!bm) {
        free(key.p);
        return -ENOMEM;
    }
    if ((rc = leaf_scan(st, n, from, bm)) != 0) {
        nl_bitmap_destroy(bm);
        free(key.p);
        return rc;
    }
    fbm *h = fbm_wrap(bm);
    if (!h) {
        free(key.p);
        return -ENOMEM;
    }
    cache_put(c, key.p, key.len, h, next_pid);
    free(key.p);
    *out = h;
    return 0;
}

/* Combines (a, an) with (b, bn) into a new set; consumes both references. */
static int combine(fbm *a, int an, fbm *b, int bn, int is_and, fbm **out, int *neg)
{
    nl_bitmap *r;
    if (is_and) {
        if (!an && !bn) r = nl_bitmap_and(a->bm, b->bm), *neg = 0;
        else if (!an) r = nl_bitmap_andnot(a->bm, b->bm), *neg = 0;
        else if (!bn) r = nl_bitmap_andnot(b->bm, a->bm), *neg = 0;
        else r = nl_bitmap_or(a->bm, b->bm), *neg = 1;
    } else {
        if (!an && !bn) r = nl_bitmap_or(a->bm, b->bm), *neg = 0;
        else if (!an) r = nl_bitmap_andnot(b->bm, a->bm), *neg = 1;
        else if (!bn) r = nl_bitmap_andnot(a->bm, b->bm), *neg = 1;
        else r = nl_bitmap_and(a->bm, b->bm), *neg = 1;
    }
    fbm_unref(a);
    fbm_unref(b);
    *out = fbm_wrap(r);
    return *out ? 0 : -ENOMEM;
}

static int node_eval(nl_store *st, nl_fcache *c, uint64_t next_pid, const nl_fnode *n, fbm **out, int *neg)
{
    *out = NULL;
    *neg = 0;
    switch (n->kind) {
    case NL_FN_NOT: {
        int rc = node_eval(st, c, next_pid, n->kids[0], out, neg);
        *neg = !*neg;
        return rc;
    }
    case NL_FN_AND:
    case NL_FN_OR: {
        fbm *acc;
        int accn;
        int rc = node_eval(st, c, next_pid, n->kids[0], &acc, &accn);
        for (uint32_t i = 1; i < n->nkids && !rc; i++) {
            fbm *x;
            int xn;
            if ((rc = node_eval(st, c, next_pid, n->kids[i], &x, &xn)) != 0)
                break;
            rc = combine(acc, accn, x, xn, n->kind == NL_FN_AND, &acc, &accn);
        }
        if (rc) {
            fbm_unref(acc);
            return rc;
        }
        *out = acc;
        *neg = accn;
        return 0;
    }
    case NL_FN_EXISTS: {
        /* exists:false is the complement of exists:true (one cache entry for both). */
        nl_fnode pos = *n;
        pos.exists = 1;
        *neg = !n->exists;
        return leaf_eval(st, c, next_pid, &pos, out);
    }
    default:
        return leaf_eval(st, c, next_pid, n, out);
    }
}

int nl_filter_eval(nl_store *st, nl_fcache *cache, uint64_t next_pid, const nl_filter *f, nl_bitmap **out,
                   int *negated)
{
    *out = NULL;
    fbm *h;
    int rc = node_eval(st, cache, next_pid, nl_filter_root(f), &h, negated);
    if (rc)
        return rc;
    /* The caller owns what it gets: hand over the bitmap when this is the only reference,
     * copy it when the cache shares it. */
    if (atomic_load(&h->refs) == 1) {
        *out = h->bm;
        free(h);
        return 0;
    }
    *out = nl_bitmap_clone(h->bm);
    fbm_unref(h);
    return *out ? 0 : -ENOMEM;
}
