/*
 * peer.c — the one libcurl client of node-to-node calls (nl_peer.h): fan-outs over the
 * multi interface with breakers and hedges (the router's calls, the coordinator's
 * fences), and a replication link's stream of calls on a connection it keeps.
 *
 * One thread owns the CURLM handle: callers queue a job (a set of calls and a deadline)
 * and wake it with curl_multi_wakeup; it adds one easy handle per call, drives every
 * transfer in parallel with curl_multi_poll, and signals the job when its last call ends
 * or its deadline passes. The multi handle keeps its connections alive between jobs
 * (HTTP/1.1 keep-alive, up to max_per_peer per host), so a steady stream of requests to a
 * peer reuses the same few connections: the pool per peer is libcurl's connection cache.
 *
 * Invariants: a job is owned by its caller, who waits on its condition variable until
 * job->pending reaches 0; the transport thread only touches a job while it has calls in
 * flight, and never after signalling that pending is 0. Peers are found by node id in a
 * small array under mu (a cluster has tens of nodes, not thousands).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "nearline.h" /* NL_MAX_K */
#include "nl_peer.h"
#include "nl_util.h"

static const double lat_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define NLB ((int)(sizeof lat_buckets / sizeof lat_buckets[0]))

#define RECENT 128 /* latencies kept per peer for its p95 */

typedef struct {
    char id[64];
    int state; /* 0 closed, 1 open, 2 half-open */
    uint32_t fails;
    uint64_t open_until_ns;
    int probing;
    uint64_t requests, errors, breaker_rejects, opened, hedges;
    uint64_t hist[NLB + 1];
    uint64_t sum_us;
    uint32_t recent[RECENT]; /* latencies of the last calls (us), a ring */
    uint32_t nrecent, at;
    uint32_t inflight;
} peer;

struct xfer;

typedef struct {
    struct xfer *x[2]; /* live transfers: [0] to the call's peer, [1] to its alternative */
    int done, alt_started;
    uint64_t t0;
} cstate;

typedef struct job {
    nl_peer_call *calls;
    cstate *cs;     /* one per call (transport thread only) */
    size_t n;
    uint64_t deadline_ns;
    size_t pending; /* calls not done, under router mu */
    int added;
    char rid[64], trace_id[33];
    pthread_cond_t cv;
    struct job *next;  /* the queue */
    struct job *anext; /* jobs with calls in flight (transport thread only) */
} job;

typedef struct xfer {
    job *j;
    size_t ci;
    int alt;
    nl_peer_call *c;
    CURL *e;
    struct curl_slist *hdrs;
    char *buf;
    size_t len, cap;
    int probe;
    uint64_t t0;
} xfer;

struct nl_peer {
    nl_peer_options opt;
    char *key_header;
    CURLM *m;
    pthread_t th;
    pthread_mutex_t mu;
    job *queue;
    int stop;
    peer *peers;
    size_t npeers;
    job *active;
    atomic_uint_fast64_t span_seq;
};

/* ---------------------------------------------------------------- peers (under mu) */

static peer *peer_get(nl_peer *r, const char *id)
{
    for (size_t i = 0; i < r->npeers; i++)
        if (!strcmp(r->peers[i].id, id))
            return &r->peers[i];
    peer *np = realloc(r->peers, (r->npeers + 1) * sizeof *np);
    if (!np)
        return NULL;
    r->peers = np;
    peer *p = &np[r->npeers++];
    memset(p, 0, sizeof *p);
    snprintf(p->id, sizeof p->id, "%s", id);
    return p;
}

/* May a call to p start now? Sets *probe when it is the half-open probe. */
static int breaker_admit(nl_peer *r, peer *p, int *probe)
{
    *probe = 0;
    if (p->state == 0)
        return 1;
    if (p->state == 1 && nl_now_ns() >= p->open_until_ns)
        p->state = 2, p->probing = 0;
    if (p->state == 2 && !p->probing) {
        p->probing = 1;
        *probe = 1;
        return 1;
    }
    (void)r;
    return 0; /* open, or half-open with its probe out */
}

/* A call's outcome: success closes a half-open breaker; failures count towards opening
 * it, and a failed probe re-opens it at once. */
static void breaker_result(nl_peer *r, peer *p, int ok, int probe)
{
    if (ok) {
        p->fails = 0;
        if (p->state != 0 && (probe || p->state == 2))
            p->state = 0;
        p->probing = 0;
        return;
    }
    p->fails++;
    if (probe || (p->state == 0 && p->fails >= r->opt.breaker_failures)) {
        p->state = 1;
        p->opened++;
        p->probing = 0;
        p->open_until_ns = nl_now_ns() + (uint64_t)r->opt.breaker_open_ms * 1000000ull;
    }
}

/* ---------------------------------------------------------------- transfers */

static size_t on_data(char *ptr, size_t sz, size_t nm, void *ud)
{
    xfer *x = ud;
    size_t n = sz * nm;
    if (x->len + n + 1 > x->cap) {
        size_t nc = x->cap ? x->cap * 2 : 4096;
        while (nc < x->len + n + 1) nc *= 2;
        char *nb = realloc(x->buf, nc);
        if (!nb)
            return 0;
        x->buf = nb;
        x->cap = nc;
    }
    memcpy(x->buf + x->len, ptr, n);
    x->len += n;
    x->buf[x->len] = 0;
    return n;
}

int nl_peer_stream_call(nl_peer *r, void **conn, const char *url, const void *body, size_t len,
                          const char *content_type, uint32_t timeout_ms, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!*conn && !(*conn = curl_easy_init()))
        return 0;
    CURL *e = *conn;
    curl_easy_reset(e); /* keeps the connection: the stream stays on one */
    xfer x;
    memset(&x, 0, sizeof x);
    struct curl_slist *h = NULL;
    char ct[128];
    snprintf(ct, sizeof ct, "Content-Type: %s", content_type ? content_type : "application/octet-stream");
    h = curl_slist_append(h, ct);
    h = curl_slist_append(h, "Expect:");
    if (r->key_header)
        h = curl_slist_append(h, r->key_header);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 1000 ? timeout_ms : 1000));
    if (body) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    if (r->opt.ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, r->opt.ca_file);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L); /* peers share one certificate */
    }
    CURLcode cc = curl_easy_perform(e);
    long code = 0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    if (cc == CURLE_OK && x.len) {
        *out = x.buf;
        *out_len = x.len;
    } else {
        free(x.buf);
    }
    return cc == CURLE_OK ? (int)code : 0;
}

void nl_peer_stream_close(void *conn)
{
    if (conn)
        curl_easy_cleanup(conn);
}

/* Counts a transfer's outcome against its peer (mu held). */
static void peer_result(nl_peer *r, const char *id, uint64_t lat_us, int ok, int probe)
{
    peer *p = peer_get(r, id);
    if (!p)
        return;
    p->requests++;
    if (!ok) p->errors++;
    int b = 0;
    while (b < NLB && (double)lat_us / 1e6 > lat_buckets[b]) b++;
    p->hist[b]++;
    p->sum_us += lat_us;
    if (ok) {
        p->recent[p->at] = lat_us > UINT32_MAX ? UINT32_MAX : (uint32_t)lat_us;
        p->at = (p->at + 1) % RECENT;
        if (p->nrecent < RECENT) p->nrecent++;
    }
    if (p->inflight) p->inflight--;
    breaker_result(r, p, ok, probe);
}

static void xfer_free(nl_peer *r, xfer *x);

/* Ends call ci of j with x's outcome (x NULL: err, no answer). The last call of the job
 * takes the job off the active list and wakes its caller, after which j is not touched. */
static void call_finish(nl_peer *r, job *j, size_t ci, xfer *x, int status, int err)
{
    nl_peer_call *c = &j->calls[ci];
    cstate *cs = &j->cs[ci];
    c->status = status;
    c->err = err;
    c->body_out = x ? x->buf : NULL;
    c->body_out_len = x ? x->len : 0;
    c->latency_us = (nl_now_ns() - cs->t0) / 1000;
    c->served_by_alt = x ? x->alt : 0;
    c->hedged = cs->alt_started;
    if (x)
        x->buf = NULL;
    cs->done = 1;
    for (int k = 0; k < 2; k++) /* the other transfer, if still out, is cancelled */
        if (cs->x[k] && cs->x[k] != x) {
            pthread_mutex_lock(&r->mu);
            peer *p = peer_get(r, k ? c->alt_peer : c->peer);
            if (p && p->inflight) p->inflight--;
            if (p && cs->x[k]->probe) p->probing = 0;
            pthread_mutex_unlock(&r->mu);
            xfer_free(r, cs->x[k]);
            cs->x[k] = NULL;
        }
    pthread_mutex_lock(&r->mu);
    if (j->pending == 1) /* last: off the active list while the job is still ours */
        for (job **pp = &r->active; *pp; pp = &(*pp)->anext)
            if (*pp == j) {
                *pp = j->anext;
                break;
            }
    if (--j->pending == 0)
        pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&r->mu);
}

static int xfer_start(nl_peer *r, job *j, size_t ci, int alt, size_t *probed, size_t *nprobed);

/* A transfer ended: a usable answer ends its call; a failure tries the alternative if it
 * has not been tried, else waits for the other transfer, else ends the call. */
/* Whether an answer shows the peer alive and able, for its breaker: anything below 500,
 * and a 503 that refuses this request but not every request (no ZooKeeper session, not the
 * primary, not in sync: the node is up and serves what it can). A 503 "overloaded" and
 * other 5xx count against it. The code is found in the body as it travels (JSON or a
 * protobuf Error: the string is in it verbatim either way). */
static int answered_alive(int status, const char *body, size_t len)
{
    if (status > 0 && status < 500)
        return 1;
    return status == 503 && body && !memmem(body, len, "overloaded", 10);
}

static void xfer_done(nl_peer *r, xfer *x, int status, int err)
{
    job *j = x->j;
    size_t ci = x->ci;
    cstate *cs = &j->cs[ci];
    nl_peer_call *c = &j->calls[ci];
    int ok = err == 0 && status > 0 && status < 500;
    int alive = err == 0 && answered_alive(status, x->buf, x->len);
    pthread_mutex_lock(&r->mu);
    peer_result(r, x->alt ? c->alt_peer : c->peer, (nl_now_ns() - x->t0) / 1000, alive, x->probe);
    pthread_mutex_unlock(&r->mu);
    cs->x[x->alt] = NULL;
    /* with an alternative, a peer that lacks the shard or refuses the key is worth
     * replacing too (the breaker does not count those against it) */
    if (ok && !(c->alt_peer && (status == 401 || status == 403 || status == 404))) {
        call_finish(r, j, ci, x, status, err);
        xfer_free(r, x);
        return;
    }
    if (c->alt_peer && !cs->alt_started && !x->alt) {
        cs->alt_started = 1;
        if (xfer_start(r, j, ci, 1, NULL, NULL) == 0) {
            xfer_free(r, x);
            return;
        }
    }
    if (cs->x[0] || cs->x[1]) { /* the other is still out: its answer decides */
        xfer_free(r, x);
        return;
    }
    call_finish(r, j, ci, x, status, err);
    xfer_free(r, x);
}

static int curl_err(CURLcode cc)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT: return -ETIMEDOUT;
    case CURLE_COULDNT_CONNECT: return -ECONNREFUSED;
    case CURLE_COULDNT_RESOLVE_HOST: return -EHOSTUNREACH;
    default: return -EIO;
    }
}

static void xfer_free(nl_peer *r, xfer *x)
{
    curl_multi_remove_handle(r->m, x->e);
    curl_easy_cleanup(x->e);
    curl_slist_free_all(x->hdrs);
    free(x->buf);
    free(x);
}

/* Starts the transfer of call ci to its peer (alt 0) or its alternative (alt 1). 0, or
 * why it could not (the breaker, memory). probed: peers whose half-open probe this job
 * holds (a node holds several shards: every call of the job to it is the probe). */
static int xfer_start(nl_peer *r, job *j, size_t ci, int alt, size_t *probed, size_t *nprobed)
{
    nl_peer_call *c = &j->calls[ci];
    const char *pid = alt ? c->alt_peer : c->peer, *base = alt ? c->alt_base_url : c->base_url;
    uint64_t now = nl_now_ns();
    int probe = 0, admit;
    pthread_mutex_lock(&r->mu);
    peer *p = peer_get(r, pid);
    int same = 0;
    for (size_t k = 0; p && probed && k < *nprobed; k++)
        same |= probed[k] == (size_t)(p - r->peers);
    admit = same ? 1 : p ? breaker_admit(r, p, &probe) : 1;
    if (probe && probed && *nprobed < 64)
        probed[(*nprobed)++] = (size_t)(p - r->peers);
    if (!admit && p)
        p->breaker_rejects++;
    if (admit && p) {
        p->inflight++;
        if (alt)
            p->hedges++;
    }
    pthread_mutex_unlock(&r->mu);
    if (!admit)
        return NL_EUNAVAILABLE;
    xfer *x = calloc(1, sizeof *x);
    CURL *e = x ? curl_easy_init() : NULL;
    if (!e) {
        free(x);
        pthread_mutex_lock(&r->mu);
        if (p && p->inflight) p->inflight--;
        pthread_mutex_unlock(&r->mu);
        return -ENOMEM;
    }
    x->j = j;
    x->ci = ci;
    x->alt = alt;
    x->c = c;
    x->e = e;
    x->probe = probe;
    x->t0 = now;
    char url[1024], h[256];
    snprintf(url, sizeof url, "%s%s", base, c->path);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    long left = j->deadline_ns > now ? (long)((j->deadline_ns - now) / 1000000) : 1;
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, left < 1 ? 1L : left);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, left < 1 ? 1L : left);
    if (!strcmp(c->method, "POST")) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body ? c->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
    } else if (strcmp(c->method, "GET")) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
    }
    if (r->opt.ca_file) {
        curl_easy_setopt(e, CURLOPT_CAINFO, r->opt.ca_file);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L); /* peers share one certificate */
    }
    x->hdrs = curl_slist_append(x->hdrs, "Content-Type: application/x-protobuf");
    x->hdrs = curl_slist_append(x->hdrs, "Accept: application/x-protobuf");
    x->hdrs = curl_slist_append(x->hdrs, "Expect:");
    snprintf(h, sizeof h, "X-Request-Id: %s", j->rid);
    x->hdrs = curl_slist_append(x->hdrs, h);
    uint64_t span = atomic_fetch_add(&r->span_seq, 1) * 0x9e3779b97f4a7c15ull ^ now;
    snprintf(h, sizeof h, "traceparent: 00-%s-%016llx-01", j->trace_id, (unsigned long long)(span | 1));
    x->hdrs = curl_slist_append(x->hdrs, h);
    if (r->key_header)
        x->hdrs = curl_slist_append(x->hdrs, r->key_header);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
    curl_multi_add_handle(r->m, e);
    j->cs[ci].x[alt] = x;
    return 0;
}

/* Starts every call of j (transport thread). A call whose peer's breaker is open goes to its
 * alternative at once, if it has one; with neither it ends at once. */
static void job_start(nl_peer *r, job *j)
{
    size_t probed[64], nprobed = 0;
    uint64_t now = nl_now_ns();
    pthread_mutex_lock(&r->mu);
    j->anext = r->active;
    r->active = j;
    pthread_mutex_unlock(&r->mu);
    size_t n = j->n; /* j is the caller's again once its last call ends: read nothing after */
    for (size_t i = 0; i < n; i++)
        j->cs[i].t0 = now;
    for (size_t i = 0; i < n; i++) {
        int rc = xfer_start(r, j, i, 0, probed, &nprobed);
        if (rc && j->calls[i].alt_peer) {
            j->cs[i].alt_started = 1;
            rc = xfer_start(r, j, i, 1, probed, &nprobed);
        }
        if (rc)
            call_finish(r, j, i, NULL, 0, rc);
    }
}

/* Hedges: a call still waiting on its peer after its hedge delay goes to its alternative
 * too (the first answer wins). Returns the ms until the next hedge is due (or 100). */
static long hedge_due(nl_peer *r)
{
    uint64_t now = nl_now_ns();
    long next = 100;
    pthread_mutex_lock(&r->mu);
    job *list = r->active;
    pthread_mutex_unlock(&r->mu);
    for (job *j = list; j; j = j->anext) /* only this thread changes the list's links */
        for (size_t i = 0; i < j->n; i++) {
            nl_peer_call *c = &j->calls[i];
            cstate *cs = &j->cs[i];
            if (cs->done || cs->alt_started || !c->alt_peer || !c->hedge_ms)
                continue;
            uint64_t due = cs->t0 + (uint64_t)c->hedge_ms * 1000000ull;
            if (now >= due) {
                cs->alt_started = 1;
                xfer_start(r, j, i, 1, NULL, NULL);
            } else if ((long)((due - now) / 1000000) < next) {
                next = (long)((due - now) / 1000000);
            }
        }
    return next < 1 ? 1 : next;
}

static void *loop(void *arg)
{
    nl_peer *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        job *q = r->queue;
        r->queue = NULL;
        int stop = r->stop;
        pthread_mutex_unlock(&r->mu);
        for (job *j = q, *nx; j; j = nx) {
            nx = j->next;
            job_start(r, j);
        }
        int running = 0;
        curl_multi_perform(r->m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(r->m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            xfer *x = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            long code = 0;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            CURLcode cc = msg->data.result;
            xfer_done(r, x, cc == CURLE_OK ? (int)code : 0, cc == CURLE_OK ? 0 : curl_err(cc));
        }
        if (stop && running == 0)
            break;
        long wait = hedge_due(r);
        curl_multi_poll(r->m, NULL, 0, (int)wait, NULL);
    }
    return NULL;
}

static void global_init(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

int nl_peer_create(const nl_peer_options *opt, nl_peer **out)
{
    *out = NULL;
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, global_init);
    nl_peer *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    if (opt)
        r->opt = *opt;
    if (!r->opt.breaker_failures) r->opt.breaker_failures = 3;
    if (!r->opt.breaker_open_ms) r->opt.breaker_open_ms = 2000;
    if (!r->opt.max_per_peer) r->opt.max_per_peer = 32;
    if (r->opt.cluster_key) {
        size_t n = strlen(r->opt.cluster_key) + 32;
        r->key_header = malloc(n);
        if (!r->key_header) {
            free(r);
            return -ENOMEM;
        }
        snprintf(r->key_header, n, "X-Nearline-Cluster-Key: %s", r->opt.cluster_key);
        r->opt.cluster_key = NULL; /* the header holds it */
    }
    r->m = curl_multi_init();
    if (!r->m) {
        free(r->key_header);
        free(r);
        return -ENOMEM;
    }
    curl_multi_setopt(r->m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)r->opt.max_per_peer);
    curl_multi_setopt(r->m, CURLMOPT_MAXCONNECTS, (long)r->opt.max_per_peer * 16);
    pthread_mutex_init(&r->mu, NULL);
    if (pthread_create(&r->th, NULL, loop, r) != 0) {
        curl_multi_cleanup(r->m);
        pthread_mutex_destroy(&r->mu);
        free(r->key_header);
        free(r);
        return -EAGAIN;
    }
    *out = r;
    return 0;
}

void nl_peer_destroy(nl_peer *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_mutex_unlock(&r->mu);
    curl_multi_wakeup(r->m);
    pthread_join(r->th, NULL);
    curl_multi_cleanup(r->m);
    pthread_mutex_destroy(&r->mu);
    if (r->key_header) {
        memset(r->key_header, 0, strlen(r->key_header));
        free(r->key_header);
    }
    free(r->peers);
    free(r);
}

/* A trace id: the incoming traceparent's, else a fresh one. */
static void trace_of(const char *tp, char out[33])
{
    /* version "00-" + 32 hex trace id + "-" + 16 hex parent + "-" + 2 hex flags */
    int ok = tp && strlen(tp) >= 55 && tp[2] == '-' && tp[35] == '-';
    for (int i = 3; ok && i < 35; i++)
        ok = (tp[i] >= '0' && tp[i] <= '9') || (tp[i] >= 'a' && tp[i] <= 'f');
    if (ok) {
        memcpy(out, tp + 3, 32);
    } else {
        uint64_t a = nl_now_ns() * 0x9e3779b97f4a7c15ull, b = (uint64_t)(uintptr_t)out ^ (a >> 17) ^ 0x5bd1e995u;
        snprintf(out, 33, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
    }
    out[32] = 0;
}

int nl_peer_run(nl_peer *r, nl_peer_call *calls, size_t n, uint32_t timeout_ms, const char *request_id,
                  const char *traceparent)
{
    if (n == 0)
        return 0;
    job j;
    memset(&j, 0, sizeof j);
    j.cs = calloc(n, sizeof *j.cs);
    if (!j.cs)
        return -ENOMEM;
    j.calls = calls;
    j.n = n;
    j.pending = n;
    j.deadline_ns = nl_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    snprintf(j.rid, sizeof j.rid, "%s", request_id && *request_id ? request_id : "-");
    trace_of(traceparent, j.trace_id);
    for (size_t i = 0; i < n; i++) {
        calls[i].status = 0;
        calls[i].err = -ETIMEDOUT;
        calls[i].body_out = NULL;
        calls[i].body_out_len = 0;
        calls[i].served_by_alt = 0;
        calls[i].hedged = 0;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j.cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&r->mu);
    j.next = r->queue;
    r->queue = &j;
    pthread_mutex_unlock(&r->mu);
    curl_multi_wakeup(r->m);
    pthread_mutex_lock(&r->mu);
    /* libcurl's per-transfer timeout ends every call by the deadline; the wait below has a
     * margin for the loop to notice, and never returns before pending is 0, because the
     * transport thread still points at the job until then. */
    while (j.pending > 0)
        pthread_cond_wait(&j.cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    pthread_cond_destroy(&j.cv);
    free(j.cs);
    return 0;
}

uint32_t nl_peer_hedge_ms(nl_peer *r, const char *id)
{
    uint32_t v[RECENT], n = 0, ms = 50; /* until it has a history: 50 ms */
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->npeers; i++)
        if (!strcmp(r->peers[i].id, id)) {
            n = r->peers[i].nrecent;
            memcpy(v, r->peers[i].recent, sizeof(uint32_t) * n);
        }
    pthread_mutex_unlock(&r->mu);
    if (n >= 20) {
        /* the 95th percentile by selection: n is at most 128 */
        uint32_t k = (n * 95) / 100;
        for (uint32_t i = 0; i <= k; i++) {
            uint32_t m = i;
            for (uint32_t q = i + 1; q < n; q++)
                if (v[q] < v[m])
                    m = q;
            uint32_t t = v[i];
            v[i] = v[m];
            v[m] = t;
        }
        ms = (v[k] + 999) / 1000;
    }
    return ms < 1 ? 1 : ms;
}

uint32_t nl_peer_inflight(nl_peer *r, const char *id)
{
    uint32_t n = 0;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->npeers; i++)
        if (!strcmp(r->peers[i].id, id))
            n = r->peers[i].inflight;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int nl_peer_breaker(nl_peer *r, const char *id)
{
    pthread_mutex_lock(&r->mu);
    int st = 0;
    for (size_t i = 0; i < r->npeers; i++)
        if (!strcmp(r->peers[i].id, id)) {
            peer *p = &r->peers[i];
            st = p->state == 1 && nl_now_ns() >= p->open_until_ns ? 2 : p->state;
        }
    pthread_mutex_unlock(&r->mu);
    return st;
}

void nl_peer_metrics(nl_peer *r, FILE *f)
{
    pthread_mutex_lock(&r->mu);
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
        {"requests_total", "Calls to another node, by peer.", offsetof(peer, requests)},
        {"errors_total", "Calls to another node that got no answer or a 5xx, by peer.", offsetof(peer, errors)},
        {"breaker_rejected_total", "Calls failed fast because the peer's breaker was open.",
         offsetof(peer, breaker_rejects)},
        {"breaker_opened_total", "Times the peer's breaker opened.", offsetof(peer, opened)},
        {"hedges_total", "Calls sent to this peer as the alternative of a slow or failed one.", offsetof(peer, hedges)},
    };
    for (size_t c = 0; c < sizeof counters / sizeof counters[0]; c++) {
        fprintf(f, "# HELP nearline_peer_%s %s\n# TYPE nearline_peer_%s counter\n", counters[c].name, counters[c].help,
                counters[c].name);
        for (size_t i = 0; i < r->npeers; i++)
            fprintf(f, "nearline_peer_%s{peer=\"%s\"} %llu\n", counters[c].name, r->peers[i].id,
                    (unsigned long long)*(const uint64_t *)((const char *)&r->peers[i] + counters[c].off));
    }
    fprintf(f, "# HELP nearline_peer_breaker_state Breaker of the peer: 0 closed, 1 open, 2 half-open.\n"
               "# TYPE nearline_peer_breaker_state gauge\n");
    for (size_t i = 0; i < r->npeers; i++) {
        peer *p = &r->peers[i];
        int st = p->state == 1 && nl_now_ns() >= p->open_until_ns ? 2 : p->state;
        fprintf(f, "nearline_peer_breaker_state{peer=\"%s\"} %d\n", p->id, st);
    }
    fprintf(f, "# HELP nearline_peer_latency_seconds Latency of calls to another node, by peer.\n"
               "# TYPE nearline_peer_latency_seconds histogram\n");
    for (size_t i = 0; i < r->npeers; i++) {
        peer *p = &r->peers[i];
        uint64_t cum = 0;
        for (int b = 0; b < NLB; b++) {
            cum += p->hist[b];
            fprintf(f, "nearline_peer_latency_seconds_bucket{peer=\"%s\",le=\"%g\"} %llu\n", p->id, lat_buckets[b],
                    (unsigned long long)cum);
        }
        cum += p->hist[NLB];
        fprintf(f, "nearline_peer_latency_seconds_bucket{peer=\"%s\",le=\"+Inf\"} %llu\n", p->id,
                (unsigned long long)cum);
        fprintf(f, "nearline_peer_latency_seconds_sum{peer=\"%s\"} %.6f\n", p->id, (double)p->sum_us / 1e6);
        fprintf(f, "nearline_peer_latency_seconds_count{peer=\"%s\"} %llu\n", p->id, (unsigned long long)cum);
    }
    pthread_mutex_unlock(&r->mu);
}
