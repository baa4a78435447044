/*
 * nl_util.h — small internal helpers shared by index/ and engine/: a parallel-for over
 * task indices, a seeded PRNG, monotonic time and aligned allocation. Not part of the
 * public API. nl_parallel_for hands out task indices through one atomic counter, so the
 * work each task does must not depend on which thread runs it; that is what keeps
 * k-means and graph builds reproducible for a given seed.
 */
#ifndef NL_UTIL_H
#define NL_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- invariants
 *
 * NL_ASSERT(x): an invariant (SQLite's assert): checked in debug, sanitizer and
 * thread-sanitizer builds (NL_ASSERTS, set by CMake), compiled out of release builds, where
 * x is not evaluated (so it may be costly, but must have no effect). A failed one names
 * the condition and its place on stderr and aborts: an invariant that does not hold means
 * the process can no longer be trusted with data. Defensive checks of untrusted input
 * are never assertions: they stay in release and return an error.
 *
 * NL_ASSERT_HELD(mu) / NL_ASSERT_HELD_RW(rw): a function whose name ends in _locked is
 * called with its lock held. A mutex or rwlock does not say who holds it, so this checks
 * that someone does (a try-lock fails): it catches the call made without the lock, which
 * is the mistake a name cannot prevent. */
#ifdef NL_ASSERTS
void nl_assert_fail(const char *what, const char *file, int line, const char *func) __attribute__((noreturn));
#define NL_ASSERT(x) ((x) ? (void)0 : nl_assert_fail(#x, __FILE__, __LINE__, __func__))
int nl_mutex_held(pthread_mutex_t *mu);
int nl_rwlock_held(pthread_rwlock_t *rw);
#define NL_ASSERT_HELD(mu) NL_ASSERT(nl_mutex_held(mu))
#define NL_ASSERT_HELD_RW(rw) NL_ASSERT(nl_rwlock_held(rw))
#else
#define NL_ASSERT(x) ((void)sizeof(!(x)))
#define NL_ASSERT_HELD(mu) ((void)sizeof(mu))
#define NL_ASSERT_HELD_RW(rw) ((void)sizeof(rw))
#endif

/* fn(ctx, task, thread_index) for every task in [0, ntasks); threads <= 1 runs inline.
 * Returns 0, or the first negative value any fn returned (remaining tasks are skipped). */
typedef int (*nl_task_fn)(void *ctx, size_t task, unsigned thread_index);
int nl_parallel_for(size_t ntasks, unsigned threads, nl_task_fn fn, void *ctx);

/* A thread-safe stack of reusable objects (per-thread scratch that outlives one call).
 * take returns NULL when empty (the caller makes a new one); give keeps the object, or
 * destroys it with `destroy` if the stack cannot grow. */
typedef struct {
    pthread_mutex_t mu;
    void **items;
    size_t n, cap;
    void (*destroy)(void *);
} nl_objpool;
void nl_objpool_init(nl_objpool *p, void (*destroy)(void *));
void nl_objpool_fini(nl_objpool *p); /* destroys every object held */
void *nl_objpool_take(nl_objpool *p);
void nl_objpool_give(nl_objpool *p, void *obj);

/* Our threads split the work; OpenBLAS's own pool would only oversubscribe the cores.
 * Call before BLAS work: sets OpenBLAS to one thread, once per process. */
void nl_blas_single_thread(void);

/* Online CPU count (>= 1). */
unsigned nl_cpu_count(void);

/* splitmix64-seeded xoshiro256**: fast, reproducible, not cryptographic. */
typedef struct { uint64_t s[4]; } nl_rng;
void nl_rng_seed(nl_rng *r, uint64_t seed);
uint64_t nl_rng_next(nl_rng *r);
/* Uniform in [0, bound) without modulo bias; bound > 0. */
uint64_t nl_rng_below(nl_rng *r, uint64_t bound);
/* Uniform double in [0, 1). */
double nl_rng_double(nl_rng *r);
/* Standard normal via Box-Muller. */
double nl_rng_normal(nl_rng *r);

/* Monotonic clock in nanoseconds. */
uint64_t nl_now_ns(void);

/* Aligned allocation (alignment a power of two >= sizeof(void*)); free with free(). */
void *nl_aligned_alloc(size_t alignment, size_t size);

/* Reads exactly len bytes at off, retrying short reads and EINTR/EAGAIN. Returns 0,
 * NL_ETRUNCATED when the file ends first, or a negated errno. */
int nl_pread_full(int fd, void *buf, size_t len, uint64_t off);

/* Peak resident set size of this process in bytes (from getrusage). */
uint64_t nl_peak_rss_bytes(void);

/* bytes as "512 B", "3.2 MiB", "1.0 GiB" into buf; returns buf. */
const char *nl_fmt_bytes(uint64_t bytes, char *buf, size_t len);

/* Fault injection for crash tests: when the environment names this point in
 * NEARLINE_KILL_AT, the process SIGKILLs itself here. A no-op otherwise. */
void nl_kill_point(const char *point);

#endif
