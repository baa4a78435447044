/*
 * util.c — implementation of nl_util.h. The parallel-for creates threads per call; the
 * callers run long phases (k-means iterations, graph passes), so thread start-up cost
 * is noise next to the work and a persistent pool would only add shutdown hazards.
 */
#define _GNU_SOURCE
#include "nl_util.h"

#include "nl_common.h"
#include <cblas.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    nl_task_fn fn;
    void *ctx;
    size_t ntasks;
    atomic_size_t next;
    atomic_int err;
} pf_shared;

typedef struct {
    pf_shared *sh;
    unsigned index;
} pf_arg;

static void *pf_worker(void *p)
{
    pf_arg *a = p;
    pf_shared *sh = a->sh;
    for (;;) {
        if (atomic_load_explicit(&sh->err, memory_order_relaxed) != 0)
            break;
        size_t t = atomic_fetch_add_explicit(&sh->next, 1, memory_order_relaxed);
        if (t >= sh->ntasks)
            break;
        int rc = sh->fn(sh->ctx, t, a->index);
        if (rc < 0) {
            int zero = 0;
            atomic_compare_exchange_strong(&sh->err, &zero, rc);
        }
    }
    return NULL;
}

int nl_parallel_for(size_t ntasks, unsigned threads, nl_task_fn fn, void *ctx)
{
    if (ntasks == 0)
        return 0;
    if (threads > ntasks)
        threads = (unsigned)ntasks;
    pf_shared sh = {.fn = fn, .ctx = ctx, .ntasks = ntasks};
    atomic_init(&sh.next, 0);
    atomic_init(&sh.err, 0);
    if (threads <= 1) {
        pf_arg a = {&sh, 0};
        pf_worker(&a);
        return atomic_load(&sh.err);
    }
    pthread_t *tids = calloc(threads, sizeof *tids);
    pf_arg *args = calloc(threads, sizeof *args);
    if (!tids || !args) {
        free(tids);
        free(args);
        return -12; /* -ENOMEM */
    }
    unsigned started = 0;
    for (unsigned i = 1; i < threads; i++) {
        args[i] = (pf_arg){&sh, i};
        if (pthread_create(&tids[i], NULL, pf_worker, &args[i]) != 0)
            break;
        started = i;
    }
    args[0] = (pf_arg){&sh, 0};
    pf_worker(&args[0]);
    for (unsigned i = 1; i <= started; i++)
        pthread_join(tids[i], NULL);
    free(tids);
    free(args);
    return atomic_load(&sh.err);
}

unsigned nl_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1u;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void nl_rng_seed(nl_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t nl_rng_next(nl_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t nl_rng_below(nl_rng *r, uint64_t bound)
{
    /* Lemire's method with rejection. */
    uint64_t x = nl_rng_next(r);
    __uint128_t m = (__uint128_t)x * bound;
    uint64_t l = (uint64_t)m;
    if (l < bound) {
        uint64_t t = (0 - bound) % bound;
        while (l < t) {
            x = nl_rng_next(r);
            m = (__uint128_t)x * bound;
            l = (uint64_t)m;
        }
    }
    return (uint64_t)(m >> 64);
}

double nl_rng_double(nl_rng *r) { return (double)(nl_rng_next(r) >> 11) * 0x1.0p-53; }

double nl_rng_normal(nl_rng *r)
{
    double u1 = nl_rng_double(r), u2 = nl_rng_double(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t nl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void *nl_aligned_alloc(size_t alignment, size_t size)
{
    void *p = NULL;
    if (size == 0)
        size = alignment;
    if (posix_memalign(&p, alignment, size) != 0)
        return NULL;
    return p;
}

uint64_t nl_peak_rss_bytes(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (uint64_t)ru.ru_maxrss * 1024ull;
}

int nl_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t r = pread(fd, (char *)buf + done, len - done, (off_t)(off + done));
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (r == 0)
            return NL_ETRUNCATED;
        done += (size_t)r;
    }
    return 0;
}

void nl_objpool_init(nl_objpool *p, void (*destroy)(void *))
{
    pthread_mutex_init(&p->mu, NULL);
    p->items = NULL;
    p->n = p->cap = 0;
    p->destroy = destroy;
}

void nl_objpool_fini(nl_objpool *p)
{
    for (size_t i = 0; i < p->n; i++)
        p->destroy(p->items[i]);
    free(p->items);
    p->items = NULL;
    p->n = p->cap = 0;
    pthread_mutex_destroy(&p->mu);
}

void *nl_objpool_take(nl_objpool *p)
{
    void *obj = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->n)
        obj = p->items[--p->n];
    pthread_mutex_unlock(&p->mu);
    return obj;
}

void nl_objpool_give(nl_objpool *p, void *obj)
{
    pthread_mutex_lock(&p->mu);
    if (p->n == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 4;
        void **ni = realloc(p->items, nc * sizeof *ni);
        if (!ni) {
            pthread_mutex_unlock(&p->mu);
            p->destroy(obj);
            return;
        }
        p->items = ni;
        p->cap = nc;
    }
    p->items[p->n++] = obj;
    pthread_mutex_unlock(&p->mu);
}

void nl_kill_point(const char *point)
{
    const char *at = getenv("NEARLINE_KILL_AT");
    if (at && strcmp(at, point) == 0)
        raise(SIGKILL);
}

static void blas_set_one_thread(void) { openblas_set_num_threads(1); }

void nl_blas_single_thread(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, blas_set_one_thread);
}

const char *nl_fmt_bytes(uint64_t bytes, char *buf, size_t len)
{
    static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB"};
    if (bytes < 1024) {
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
        return buf;
    }
    double v = (double)bytes / 1024.0;
    int u = 0;
    while (v >= 1024.0 && u < 3) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, len, "%.1f %s", v, unit[u]);
    return buf;
}

/* ---------------------------------------------------------------- invariants */

#ifdef NL_ASSERTS
void nl_assert_fail(const char *what, const char *file, int line, const char *func)
{
    /* The one place a library writes to stderr: the process is about to abort, and the
     * failed invariant is what its operator needs to see. */
    fprintf(stderr, "nearline: invariant failed: %s (%s:%d, %s)\n", what, file, line, func);
    fflush(stderr);
    abort();
}

int nl_mutex_held(pthread_mutex_t *mu)
{
    if (pthread_mutex_trylock(mu) == 0) {
        pthread_mutex_unlock(mu);
        return 0;
    }
    return 1;
}

int nl_rwlock_held(pthread_rwlock_t *rw)
{
    /* a write try-lock fails while anyone holds it, readers included */
    if (pthread_rwlock_trywrlock(rw) == 0) {
        pthread_rwlock_unlock(rw);
        return 0;
    }
    return 1;
}
#endif
