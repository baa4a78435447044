/*
 * bitmap.c — the Roaring-style set of nl_bitmap.h. Invariants: chunk keys strictly
 * ascend; every chunk is non-empty; an array chunk holds 1..ARRAY_MAX sorted distinct
 * offsets; a bitset chunk's card equals its popcount and exceeds ARRAY_MAX (results of
 * set operations are normalised back to arrays when they shrink).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nl_bitmap.h"

#define ARRAY_MAX 4096u
#define WORDS 1024u /* 65536 bits */

typedef struct {
    uint64_t key;   /* value >> 16 */
    uint32_t card;
    uint32_t cap;   /* array capacity; 0 for a bitset */
    uint16_t *arr;  /* when cap > 0 */
    uint64_t *bits; /* when cap == 0 */
} chunk;

struct nl_bitmap {
    chunk *c;
    size_t n, cap;
};

nl_bitmap *nl_bitmap_create(void) { return calloc(1, sizeof(nl_bitmap)); }

static void chunk_free(chunk *c)
{
    free(c->arr);
    free(c->bits);
}

void nl_bitmap_destroy(nl_bitmap *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->n; i++)
        chunk_free(&b->c[i]);
    free(b->c);
    free(b);
}

/* Index of the chunk with key, or -(insertion point) - 1. */
static long find_chunk(const nl_bitmap *b, uint64_t key)
{
    if (b->n && b->c[b->n - 1].key == key)
        return (long)b->n - 1;
    size_t lo = 0, hi = b->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (b->c[mid].key < key) lo = mid + 1;
        else hi = mid;
    }
    if (lo < b->n && b->c[lo].key == key)
        return (long)lo;
    return -(long)lo - 1;
}

static int to_bitset(chunk *c)
{
    uint64_t *bits = calloc(WORDS, 8);
    if (!bits)
        return -ENOMEM;
    for (uint32_t i = 0; i < c->card; i++)
        bits[c->arr[i] >> 6] |= 1ull << (c->arr[i] & 63);
    free(c->arr);
    c->arr = NULL;
    c->cap = 0;
    c->bits = bits;
    return 0;
}

static int append_chunk(nl_bitmap *b, size_t at, uint64_t key)
{
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4;
        chunk *c = realloc(b->c, nc * sizeof *c);
        if (!c)
            return -ENOMEM;
        b->c = c;
        b->cap = nc;
    }
    memmove(&b->c[at + 1], &b->c[at], (b->n - at) * sizeof(chunk));
    b->c[at] = (chunk){key, 0, 0, NULL, NULL};
    b->n++;
    return 0;
}

int nl_bitmap_add(nl_bitmap *b, uint64_t x)
{
    uint64_t key = x >> 16;
    uint16_t low = (uint16_t)(x & 0xffff);
    long ci = find_chunk(b, key);
    if (ci < 0) {
        size_t at = (size_t)(-ci - 1);
        int rc = append_chunk(b, at, key);
        if (rc)
            return rc;
        ci = (long)at;
    }
    chunk *c = &b->c[ci];
    if (c->bits) {
        uint64_t m = 1ull << (low & 63);
        if (!(c->bits[low >> 6] & m)) {
            c->bits[low >> 6] |= m;
            c->card++;
        }
        return 0;
    }
    /* array chunk (possibly brand new) */
    uint32_t pos = c->card;
    if (c->card && c->arr[c->card - 1] >= low) {
        uint32_t lo = 0, hi = c->card;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (c->arr[mid] < low) lo = mid + 1;
            else hi = mid;
        }
        if (lo < c->card && c->arr[lo] == low)
            return 0;
        pos = lo;
    }
    if (c->card == ARRAY_MAX) {
        int rc = to_bitset(c);
        if (rc)
            return rc;
        c->bits[low >> 6] |= 1ull << (low & 63);
        c->card++;
        return 0;
    }
    if (c->card == c->cap) {
        uint32_t nc = c->cap ? c->cap * 2 : 8;
        if (nc > ARRAY_MAX) nc = ARRAY_MAX;
        uint16_t *a = realloc(c->arr, nc * sizeof(uint16_t));
        if (!a)
            return -ENOMEM;
        c->arr = a;
        c->cap = nc;
    }
    memmove(&c->arr[pos + 1], &c->arr[pos], (c->card - pos) * sizeof(uint16_t));
    c->arr[pos] = low;
    c->card++;
    return 0;
}

static int chunk_has(const chunk *c, uint16_t low)
{
    if (c->bits)
        return (int)((c->bits[low >> 6] >> (low & 63)) & 1);
    uint32_t lo = 0, hi = c->card;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (c->arr[mid] < low) lo = mid + 1;
        else hi = mid;
    }
    return lo < c->card && c->arr[lo] == low;
}

int nl_bitmap_contains(const nl_bitmap *b, uint64_t x)
{
    long ci = find_chunk(b, x >> 16);
    return ci >= 0 && chunk_has(&b->c[ci], (uint16_t)(x & 0xffff));
}

uint64_t nl_bitmap_cardinality(const nl_bitmap *b)
{
    uint64_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        n += b->c[i].card;
    return n;
}

/* Members of c below low (an offset in 0..65536). */
static uint32_t chunk_rank(const chunk *c, uint32_t low)
{
    if (low >= 65536)
        return c->card;
    if (c->bits) {
        uint32_t r = 0, w = low >> 6;
        for (uint32_t i = 0; i < w; i++)
            r += (uint32_t)__builtin_popcountll(c->bits[i]);
        if (low & 63)
            r += (uint32_t)__builtin_popcountll(c->bits[w] & ((1ull << (low & 63)) - 1));
        return r;
    }
    uint32_t lo = 0, hi = c->card;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (c->arr[mid] < low) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

uint64_t nl_bitmap_range_cardinality(const nl_bitmap *b, uint64_t lo, uint64_t hi)
{
    if (hi <= lo)
        return 0;
    uint64_t n = 0;
    for (size_t i = 0; i < b->n; i++) {
        const chunk *c = &b->c[i];
        uint64_t base = c->key << 16;
        if (base + 65536 <= lo)
            continue;
        if (base >= hi)
            break;
        uint32_t a = lo > base ? (uint32_t)(lo - base) : 0;
        uint32_t z = hi - base >= 65536 ? 65536 : (uint32_t)(hi - base);
        n += chunk_rank(c, z) - chunk_rank(c, a);
    }
    return n;
}

size_t nl_bitmap_bytes(const nl_bitmap *b)
{
    size_t s = sizeof *b + b->cap * sizeof(chunk);
    for (size_t i = 0; i < b->n; i++)
        s += b->c[i].bits ? WORDS * 8 : b->c[i].cap * 2;
    return s;
}

/* ---------------------------------------------------------------- set algebra */

enum { OP_AND, OP_OR, OP_ANDNOT };

/* Appends a chunk built from bits (popcount card) to out, as an array when small. */
static int emit_bits(nl_bitmap *out, uint64_t key, uint64_t *bits, uint32_t card)
{
    if (card == 0) {
        free(bits);
        return 0;
    }
    int rc = append_chunk(out, out->n, key);
    if (rc) {
        free(bits);
        return rc;
    }
    chunk *c = &out->c[out->n - 1];
    c->card = card;
    if (card > ARRAY_MAX) {
        c->bits = bits;
        return 0;
    }
    c->arr = malloc(card * sizeof(uint16_t));
    if (!c->arr) {
        free(bits);
        out->n--;
        return -ENOMEM;
    }
    c->cap = card;
    uint32_t k = 0;
    for (uint32_t w = 0; w < WORDS; w++)
        for (uint64_t x = bits[w]; x; x &= x - 1)
            c->arr[k++] = (uint16_t)(w * 64 + (uint32_t)__builtin_ctzll(x));
    free(bits);
    return 0;
}

static uint64_t *chunk_bits(const chunk *c)
{
    uint64_t *bits = malloc(WORDS * 8);
    if (!bits)
        return NULL;
    if (c->bits) {
        memcpy(bits, c->bits, WORDS * 8);
    } else {
        memset(bits, 0, WORDS * 8);
        for (uint32_t i = 0; i < c->card; i++)
            bits[c->arr[i] >> 6] |= 1ull << (c->arr[i] & 63);
    }
    return bits;
}

static int emit_copy(nl_bitmap *out, const chunk *c)
{
    uint64_t *bits = chunk_bits(c);
    return bits ? emit_bits(out, c->key, bits, c->card) : -ENOMEM;
}

static int combine(nl_bitmap *out, const chunk *x, const chunk *y, int op)
{
    uint64_t *bx = chunk_bits(x);
    if (!bx)
        return -ENOMEM;
    uint32_t card = 0;
    if (y->bits) {
        for (uint32_t w = 0; w < WORDS; w++) {
            uint64_t v = op == OP_AND ? bx[w] & y->bits[w] : op == OP_OR ? bx[w] | y->bits[w] : bx[w] & ~y->bits[w];
            bx[w] = v;
            card += (uint32_t)__builtin_popcountll(v);
        }
    } else {
        /* y is an array: touch only its members (and recount once). */
        if (op == OP_AND) {
            uint64_t *r = calloc(WORDS, 8);
            if (!r) {
                free(bx);
                return -ENOMEM;
            }
            for (uint32_t i = 0; i < y->card; i++) {
                uint16_t v = y->arr[i];
                if ((bx[v >> 6] >> (v & 63)) & 1) {
                    r[v >> 6] |= 1ull << (v & 63);
                    card++;
                }
            }
            free(bx);
            return emit_bits(out, x->key, r, card);
        }
        for (uint32_t i = 0; i < y->card; i++) {
            uint16_t v = y->arr[i];
            if (op == OP_OR) bx[v >> 6] |= 1ull << (v & 63);
            else bx[v >> 6] &= ~(1ull << (v & 63));
        }
        for (uint32_t w = 0; w < WORDS; w++)
            card += (uint32_t)__builtin_popcountll(bx[w]);
    }
    return emit_bits(out, x->key, bx, card);
}

static nl_bitmap *setop(const nl_bitmap *a, const nl_bitmap *b, int op)
{
    nl_bitmap *out = nl_bitmap_create();
    if (!out)
        return NULL;
    size_t i = 0, j = 0;
    int rc = 0;
    while (!rc && (i < a->n || j < b->n)) {
        if (j >= b->n || (i < a->n && a->c[i].key < b->c[j].key)) {
            if (op != OP_AND)
                rc = emit_copy(out, &a->c[i]);
            i++;
        } else if (i >= a->n || b->c[j].key < a->c[i].key) {
            if (op == OP_OR)
                rc = emit_copy(out, &b->c[j]);
            j++;
        } else {
            rc = combine(out, &a->c[i], &b->c[j], op);
            i++, j++;
        }
    }
    if (rc) {
        nl_bitmap_destroy(out);
        return NULL;
    }
    return out;
}

nl_bitmap *nl_bitmap_and(const nl_bitmap *a, const nl_bitmap *b) { return setop(a, b, OP_AND); }
nl_bitmap *nl_bitmap_or(const nl_bitmap *a, const nl_bitmap *b) { return setop(a, b, OP_OR); }
nl_bitmap *nl_bitmap_andnot(const nl_bitmap *a, const nl_bitmap *b) { return setop(a, b, OP_ANDNOT); }

nl_bitmap *nl_bitmap_clone(const nl_bitmap *a)
{
    nl_bitmap empty = {0};
    return setop(a, &empty, OP_OR);
}

/* ---------------------------------------------------------------- iteration */

void nl_bitmap_iter_init(nl_bitmap_iter *it, const nl_bitmap *b, uint64_t from)
{
    it->b = b;
    long ci = find_chunk(b, from >> 16);
    if (ci < 0) {
        it->chunk = (size_t)(-ci - 1);
        it->pos = 0;
        return;
    }
    it->chunk = (size_t)ci;
    const chunk *c = &b->c[ci];
    uint32_t low = (uint32_t)(from & 0xffff);
    it->pos = c->bits ? low : chunk_rank(c, low);
}

int nl_bitmap_iter_next(nl_bitmap_iter *it, uint64_t *x)
{
    const nl_bitmap *b = it->b;
    while (it->chunk < b->n) {
        const chunk *c = &b->c[it->chunk];
        if (c->bits) {
            /* pos is the next bit offset to look at */
            while (it->pos < 65536) {
                uint32_t w = it->pos >> 6;
                uint64_t word = c->bits[w] & (~0ull << (it->pos & 63));
                if (word) {
                    uint32_t bit = w * 64 + (uint32_t)__builtin_ctzll(word);
                    it->pos = bit + 1;
                    *x = (c->key << 16) | bit;
                    return 1;
                }
                it->pos = (w + 1) * 64;
            }
        } else if (it->pos < c->card) {
            *x = (c->key << 16) | c->arr[it->pos++];
            return 1;
        }
        it->chunk++;
        it->pos = 0;
    }
    return 0;
}
