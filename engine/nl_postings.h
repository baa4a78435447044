/*
 * nl_postings.h — the filter index of a shard (internal to the engine) and the executor
 * that turns a filter into the set of versions (pids) it allows.
 *
 * Index: keys in the store's postings family, one per (field, value, pid), no values:
 *   'e' F pid            the field is present and not null          (exists)
 *   'v' F 's' len S pid  a string, or one string of a list          (eq/in on strings)
 *   'v' F 'b' B pid      a boolean                                  (eq/in on booleans)
 *   'v' F 'i' I pid      an integral number (int64, order-flipped)  (eq/in on integers)
 *   'n' F D pid          any number as an order-preserving double   (ranges, real eq)
 * F is a 2-byte big-endian length and the name, pid 8 bytes big-endian, so each value's
 * postings are one contiguous, pid-ordered run. A version's metadata never changes (an
 * upsert makes a new version), so its postings are written with it and deleted with it.
 *
 * Executor: leaves become bitmaps by scanning their runs; and/or/not combine them, a
 * "not" kept as a complement flag rather than materialised over every pid. Leaf bitmaps
 * are cached per shard: a bitmap built when the shard's next pid was H holds every
 * posting below H forever (versions are immutable; a deleted one stays in the bitmap but
 * its tombstone hides it), so a cached eq/in/exists leaf is brought up to date by
 * scanning only the pids from H on; a range leaf is rebuilt.
 */
#ifndef NL_POSTINGS_H
#define NL_POSTINGS_H

#include "nl_bitmap.h"
#include "nl_filter.h"
#include "nl_store.h"

/* Adds (put = 1) or deletes (put = 0) to b the postings of version pid whose metadata is
 * the JSON object meta (len bytes; NULL = none). Returns 0, or NL_EINVAL when meta is not
 * an object (callers validated it already). */
int nl_postings_write(nl_store_batch *b, uint64_t pid, const char *meta, size_t len, int put);

typedef struct nl_fcache nl_fcache;
/* budget: bytes of cached leaf bitmaps (0 = 64 MiB). NULL when out of memory. */
nl_fcache *nl_fcache_create(size_t budget);
void nl_fcache_destroy(nl_fcache *c);

/* The versions f allows: *out (owned by the caller) and *negated: when 1, the allowed
 * set is every version NOT in *out. next_pid: the shard's next pid read before the call
 * (every posting below it is committed). cache may be NULL. */
int nl_filter_eval(nl_store *st, nl_fcache *cache, uint64_t next_pid, const nl_filter *f, nl_bitmap **out,
                   int *negated);

/* Fills the postings family from the meta and idmap families (a store written before
 * the index existed). *indexed counts the versions. */
int nl_postings_backfill(nl_store *st, uint64_t *indexed);

#endif
