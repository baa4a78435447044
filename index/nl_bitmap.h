/*
 * nl_bitmap.h — compressed sets of 64-bit integers (a shard's versions, "pids"), in the
 * manner of Roaring bitmaps: the value space is cut into chunks of 65536, and each
 * non-empty chunk is a sorted array of 16-bit offsets while it holds at most 4096 of them
 * and a 65536-bit bitset beyond that. A chunk therefore never costs more than 8 KiB, a
 * sparse set costs ~2 bytes a member, and membership is a bisection over chunk keys plus
 * a bit test or a bisection of at most 4096 entries.
 *
 * The filter executor builds one per leaf from the posting index and combines them with
 * and/or/andnot; searches test membership per candidate. Adds in ascending order (how
 * postings arrive) append without moving anything.
 *
 * Lifecycle: nl_bitmap_create -> adds -> any number of readers (no writer) -> destroy.
 * Results of and/or/andnot are new bitmaps owned by the caller.
 */
#ifndef NL_BITMAP_H
#define NL_BITMAP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nl_bitmap nl_bitmap;

/* NULL when out of memory. */
nl_bitmap *nl_bitmap_create(void);
void nl_bitmap_destroy(nl_bitmap *b);
/* 0 or -ENOMEM. */
int nl_bitmap_add(nl_bitmap *b, uint64_t x);
int nl_bitmap_contains(const nl_bitmap *b, uint64_t x);
uint64_t nl_bitmap_cardinality(const nl_bitmap *b);
/* Members in [lo, hi). */
uint64_t nl_bitmap_range_cardinality(const nl_bitmap *b, uint64_t lo, uint64_t hi);
/* Bytes held (for cache accounting). */
size_t nl_bitmap_bytes(const nl_bitmap *b);
/* New bitmaps (NULL when out of memory). */
nl_bitmap *nl_bitmap_and(const nl_bitmap *a, const nl_bitmap *b);
nl_bitmap *nl_bitmap_or(const nl_bitmap *a, const nl_bitmap *b);
nl_bitmap *nl_bitmap_andnot(const nl_bitmap *a, const nl_bitmap *b);
nl_bitmap *nl_bitmap_clone(const nl_bitmap *a);

/* Ascending iteration from a starting value. */
typedef struct {
    const nl_bitmap *b;
    size_t chunk;
    uint32_t pos;
} nl_bitmap_iter;

void nl_bitmap_iter_init(nl_bitmap_iter *it, const nl_bitmap *b, uint64_t from);
/* 1 and *x = the next member, or 0 at the end. */
int nl_bitmap_iter_next(nl_bitmap_iter *it, uint64_t *x);

#ifdef __cplusplus
}
#endif
#endif
