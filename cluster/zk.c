/*
 * zk.c — bounded calls to ZooKeeper (nl_zk.h): each synchronous call of the C client,
 * made as its asynchronous call and a wait on a deadline.
 *
 * A call's state (zk_call) has two owners: the caller, until it returns, and the
 * completion, which the client calls once (with the answer, or failed when the handle is
 * closed). Whichever lets go last frees it. The completion copies the answer into the state
 * under its mutex and marks it done; the caller reads it only if done before the deadline.
 * Completions run on the client's completion thread: they copy and signal, nothing more.
 *
 * An asynchronous call that returns ZBADARGUMENTS or ZINVALIDSTATE has registered no
 * completion (the client checks both before it queues anything): the caller is then the
 * only owner. Any other failure may have registered one, so the completion keeps its
 * reference (at worst a few bytes are never freed, if the client never calls it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nl_util.h"
#include "nl_zk.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs, done, rc;
    char *value; /* get: the value (NULL for a null one); create: the path made */
    int len;
    struct Stat st; /* get, exists, set */
    struct String_vector sv; /* children */
    int n; /* multi: its ops with outputs pointing here, and their results */
    zoo_op_t *ops;
    zoo_op_result_t *res;
    struct Stat *stats;
    char **bufs;
} zk_call;

static zk_call *call_new(int nops)
{
    zk_call *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    if (nops > 0) {
        k->n = nops;
        k->ops = calloc((size_t)nops, sizeof *k->ops);
        k->res = calloc((size_t)nops, sizeof *k->res);
        k->stats = calloc((size_t)nops, sizeof *k->stats);
        k->bufs = calloc((size_t)nops, sizeof *k->bufs);
        if (!k->ops || !k->res || !k->stats || !k->bufs) {
            free(k->ops), free(k->res), free(k->stats), free(k->bufs), free(k);
            return NULL;
        }
    }
    pthread_mutex_init(&k->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&k->cv, &ca);
    pthread_condattr_destroy(&ca);
    k->refs = 2;
    return k;
}

static void call_put(zk_call *k)
{
    pthread_mutex_lock(&k->mu);
    NL_ASSERT(k->refs >= 1);
    int last = --k->refs == 0;
    pthread_mutex_unlock(&k->mu);
    if (!last)
        return;
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
    free(k->value);
    deallocate_String_vector(&k->sv);
    for (int i = 0; i < k->n; i++)
        free(k->bufs[i]);
    free(k->ops), free(k->res), free(k->stats), free(k->bufs);
    free(k);
}

/* The completion's last step (k->mu held, the answer copied). */
static void finish_locked(zk_call *k, int rc)
{
    NL_ASSERT_HELD(&k->mu);
    k->rc = rc;
    k->done = 1;
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
    call_put(k);
}

static void on_void(int rc, const void *d)
{
    zk_call *k = (zk_call *)d;
    pthread_mutex_lock(&k->mu);
    finish_locked(k, rc);
}

static void on_stat(int rc, const struct Stat *st, const void *d)
{
    zk_call *k = (zk_call *)d;
    pthread_mutex_lock(&k->mu);
    if (st)
        k->st = *st;
    finish_locked(k, rc);
}

static void on_data(int rc, const char *value, int len, const struct Stat *st, const void *d)
{
    zk_call *k = (zk_call *)d;
    pthread_mutex_lock(&k->mu);
    if (rc == ZOK && value && len >= 0) {
        k->value = malloc((size_t)len + 1);
        if (k->value) {
            memcpy(k->value, value, (size_t)len);
            k->len = len;
        } else {
            rc = ZSYSTEMERROR;
        }
    } else {
        k->len = -1;
    }
    if (st)
        k->st = *st;
    finish_locked(k, rc);
}

static void on_strings(int rc, const struct String_vector *sv, const void *d)
{
    zk_call *k = (zk_call *)d;
    pthread_mutex_lock(&k->mu);
    if (rc == ZOK && sv && sv->count > 0) {
        k->sv.data = calloc((size_t)sv->count, sizeof *k->sv.data);
        for (int i = 0; k->sv.data && i < sv->count; i++) {
            if (!(k->sv.data[i] = strdup(sv->data[i] ? sv->data[i] : "")))
                break;
            k->sv.count = i + 1;
        }
        if (k->sv.count != sv->count)
            rc = ZSYSTEMERROR;
    }
    finish_locked(k, rc);
}

static void on_string(int rc, const char *value, const void *d)
{
    zk_call *k = (zk_call *)d;
    pthread_mutex_lock(&k->mu);
    if (rc == ZOK && value)
        k->value = strdup(value);
    finish_locked(k, rc);
}

/* After the asynchronous call returned arc: the answer's code, or ZOPERATIONTIMEOUT.
 * Returns with k->mu held when the answer came (the caller copies, then unlocks). */
static int await(zk_call *k, int arc, uint32_t timeout_ms, int *answered)
{
    *answered = 0;
    if (arc != ZOK) {
        if (arc == ZBADARGUMENTS || arc == ZINVALIDSTATE)
            call_put(k); /* no completion was registered: its reference too */
        return arc;
    }
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&k->mu);
    while (!k->done)
        if (pthread_cond_timedwait(&k->cv, &k->mu, &dl) == ETIMEDOUT)
            break;
    if (!k->done) {
        pthread_mutex_unlock(&k->mu);
        return ZOPERATIONTIMEOUT;
    }
    *answered = 1;
    return k->rc;
}

/* The caller's end of a call: unlocks what await left locked, drops its reference. */
static int done(zk_call *k, int rc, int answered)
{
    if (answered)
        pthread_mutex_unlock(&k->mu);
    call_put(k);
    return rc;
}

int nl_zk_get(zhandle_t *zh, uint32_t timeout_ms, const char *path, int watch, char *buf, int *len, struct Stat *st)
{
    zk_call *k = call_new(0);
    if (!k)
        return ZSYSTEMERROR;
    int answered, rc = await(k, zoo_aget(zh, path, watch, on_data, k), timeout_ms, &answered);
    if (answered && rc == ZOK) {
        int n = k->len < 0 ? -1 : k->len < *len ? k->len : *len;
        if (n > 0)
            memcpy(buf, k->value, (size_t)n);
        *len = n;
        if (st)
            *st = k->st;
    }
    return done(k, rc, answered);
}

int nl_zk_exists(zhandle_t *zh, uint32_t timeout_ms, const char *path, int watch, struct Stat *st)
{
    zk_call *k = call_new(0);
    if (!k)
        return ZSYSTEMERROR;
    int answered, rc = await(k, zoo_aexists(zh, path, watch, on_stat, k), timeout_ms, &answered);
    if (answered && rc == ZOK && st)
        *st = k->st;
    return done(k, rc, answered);
}

int nl_zk_children(zhandle_t *zh, uint32_t timeout_ms, const char *path, int watch, struct String_vector *out)
{
    out->count = 0;
    out->data = NULL;
    zk_call *k = call_new(0);
    if (!k)
        return ZSYSTEMERROR;
    int answered, rc = await(k, zoo_aget_children(zh, path, watch, on_strings, k), timeout_ms, &answered);
    if (answered && rc == ZOK) {
        *out = k->sv; /* handed over */
        k->sv.count = 0;
        k->sv.data = NULL;
    }
    return done(k, rc, answered);
}

int nl_zk_create(zhandle_t *zh, uint32_t timeout_ms, const char *path, const char *value, int len, int flags,
                 char *made, int made_len)
{
    zk_call *k = call_new(0);
    if (!k)
        return ZSYSTEMERROR;
    int answered, rc = await(k, zoo_acreate(zh, path, value, len, &ZOO_OPEN_ACL_UNSAFE, flags, on_string, k),
                             timeout_ms, &answered);
    if (answered && rc == ZOK && made && made_len > 0) {
        size_t n = k->value ? strlen(k->value) : 0;
        if (n > (size_t)made_len - 1)
            n = (size_t)made_len - 1;
        memcpy(made, k->value ? k->value : "", n);
        made[n] = 0;
    }
    return done(k, rc, answered);
}

int nl_zk_set(zhandle_t *zh, uint32_t timeout_ms, const char *path, const char *value, int len, int version,
              struct Stat *st)
{
    zk_call *k = call_new(0);
    if (!k)
        return ZSYSTEMERROR;
    int answered, rc = await(k, zoo_aset(zh, path, value, len, version, on_stat, k), timeout_ms, &answered);
    if (answered && rc == ZOK && st)
        *st = k->st;
    return done(k, rc, answered);
}

int nl_zk_delete(zhandle_t *zh, uint32_t timeout_ms, const char *path, int version)
{
    zk_call *k = call_new(0);
    if (!k)
        return ZSYSTEMERROR;
    int answered, rc = await(k, zoo_adelete(zh, path, version, on_void, k), timeout_ms, &answered);
    return done(k, rc, answered);
}

int nl_zk_multi(zhandle_t *zh, uint32_t timeout_ms, int n, const zoo_op_t *ops, zoo_op_result_t *results)
{
    if (n <= 0)
        return ZBADARGUMENTS;
    zk_call *k = call_new(n);
    if (!k)
        return ZSYSTEMERROR;
    /* the outputs the client writes when the answer comes point into the call's state */
    for (int i = 0; i < n; i++) {
        k->ops[i] = ops[i];
        if (ops[i].type == ZOO_SETDATA_OP)
            k->ops[i].set_op.stat = &k->stats[i];
        if (ops[i].type == ZOO_CREATE_OP && ops[i].create_op.buf && ops[i].create_op.buflen > 0) {
            if (!(k->bufs[i] = calloc(1, (size_t)ops[i].create_op.buflen))) {
                k->refs = 1;
                call_put(k);
                return ZSYSTEMERROR;
            }
            k->ops[i].create_op.buf = k->bufs[i];
        }
    }
    int answered, rc = await(k, zoo_amulti(zh, n, k->ops, k->res, on_void, k), timeout_ms, &answered);
    if (answered) {
        for (int i = 0; i < n; i++) {
            results[i] = k->res[i];
            results[i].stat = NULL;
            results[i].value = NULL;
            if (ops[i].type == ZOO_SETDATA_OP && ops[i].set_op.stat) {
                *ops[i].set_op.stat = k->stats[i];
                results[i].stat = ops[i].set_op.stat;
            }
            if (k->bufs[i]) {
                memcpy(ops[i].create_op.buf, k->bufs[i], (size_t)ops[i].create_op.buflen);
                results[i].value = ops[i].create_op.buf;
            }
        }
    }
    return done(k, rc, answered);
}
