/*
 * replication.c — a shard's primary and its followers (docs/cluster.md, "Replication").
 * The rules are nl_repl.h (pure, model-checked by tests/test_repl.c); this file applies
 * them to the engine's operation log (nearline.h), to peers over HTTP and to the shard map
 * in ZooKeeper.
 *
 * The primary of a shard (the map says so, at an epoch) holds a role: it orders every
 * write in the shard's log at its epoch (the engine does, in the write's own synced
 * batch), and one link per follower streams the log to that follower over a keep-alive
 * HTTP connection: a POST .../replicate carries the entries after what the follower has,
 * with the (sequence, epoch) they follow; the follower applies them through the engine
 * (synced) and answers its new position. A writer waits until the write quorum of the
 * in-sync set has applied its entry (nl_repl_committed), then the client is answered.
 *
 * A link learns its follower's position with an empty request first; nl_repl_catchup
 * then says stream (from the log) or snapshot (transfer.c: a checkpoint of the shard,
 * installed whole, after which the log goes on from its sequence).
 *
 * The in-sync set changes only by the primary's versioned write of the map: a follower
 * that made no progress for the replica timeout while entries waited for it is removed
 * (when nl_repl_may_leave allows: under majority it may hold writes the rest lack), and
 * one that has caught up is added. A writer waiting on a removed follower then completes
 * against the smaller set; one that cannot (ZooKeeper unreachable) times out with 503.
 *
 * Fencing: every request carries the epoch; a follower raises its durable fence to it and
 * refuses anything older (409), as it does after a failover's fence call (coordinator,
 * cluster.c). A primary told 409, or whose ZooKeeper session is not connected with a
 * fresh read of the maps, acknowledges nothing (503) until the map says again what it is.
 *
 * Threads: the worker (cluster.c) creates and ends roles after each read of the maps
 * (cl_repl_reconcile); request threads write through roles; each link has its thread.
 * Lock order: cl->repl_mu (the role table) -> role->mu. No lock is held across a network
 * call or an engine write.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "cluster_internal.h"
#include "nl_repl.h"
#include "nl_util.h"

#define RP_MAGIC 0x50524c4eu /* "NLRP" */
#define RP_HDR 40u
#define RP_MAX_BATCH (1u << 20) /* entry bytes per request */

/* ---------------------------------------------------------------- small helpers */

static uint64_t now_ms(void) { return nl_now_ns() / 1000000u; }

static void sleep_ms(uint32_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void abs_deadline(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int cl_session_ok(nl_cluster *cl)
{
    return atomic_load(&cl->zstate) == ZOO_CONNECTED_STATE && atomic_load(&cl->registered) &&
           !atomic_load(&cl->expired) && atomic_load(&cl->map_fresh);
}

/* ---------------------------------------------------------------- roles */

static void role_free(repl_role *r)
{
    if (r->h)
        nl_collection_close(r->h);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static void role_put(repl_role *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1)
        role_free(r);
}

/* The role of (name, s) with a reference, or NULL when this node is not its primary. */
static repl_role *role_get(nl_cluster *cl, const char *name, uint32_t s)
{
    pthread_mutex_lock(&cl->repl_mu);
    repl_role *r = cl->roles;
    while (r && (r->s != s || strcmp(r->coll, name)))
        r = r->next;
    if (r)
        atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&cl->repl_mu);
    return r;
}

static void deposed(repl_role *r, const char *why)
{
    pthread_mutex_lock(&r->mu);
    int was = r->deposed;
    r->deposed = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (!was) {
        cl_log(r->cl, 2, "\"event\":\"primary_deposed\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu,"
               "\"message\":\"%s\"", r->coll, r->s, (unsigned long long)r->epoch, why);
        cl_wake(r->cl); /* re-read the maps now */
    }
}

void cl_role_deposed(repl_role *r, const char *why) { deposed(r, why); }

size_t cl_role_acked_locked(const repl_role *r, const nl_shard_entry *e, const char *skip, uint64_t *out)
{
    NL_ASSERT_HELD((pthread_mutex_t *)&r->mu);
    size_t n = 0;
    for (uint32_t i = 0; i < e->nin_sync && n < NL_MAX_REPLICAS; i++) {
        if (!strcmp(e->in_sync[i], r->cl->node_id) || (skip && !strcmp(e->in_sync[i], skip)))
            continue;
        uint64_t a = 0;
        for (int k = 0; k < r->nlinks; k++)
            if (!strcmp(r->links[k].peer, e->in_sync[i]) && r->links[k].known)
                a = r->links[k].acked;
        out[n++] = a;
    }
    return n;
}

/* The highest sequence a write quorum of the in-sync set holds (role->mu held). */
static uint64_t committed_locked(const repl_role *r)
{
    NL_ASSERT_HELD((pthread_mutex_t *)&r->mu);
    uint64_t acked[NL_MAX_REPLICAS];
    size_t n = 0;
    for (uint32_t i = 0; i < r->view.nin_sync; i++) {
        const char *id = r->view.in_sync[i];
        if (!strcmp(id, r->cl->node_id))
            continue;
        uint64_t a = 0;
        for (int k = 0; k < r->nlinks; k++)
            if (!strcmp(r->links[k].peer, id) && r->links[k].known)
                a = r->links[k].acked;
        acked[n++] = a;
    }
    uint64_t c = nl_repl_committed(r->last, acked, n, r->quorum);
    uint64_t joining[NL_MAX_REPLICAS];
    size_t nj = 0;
    for (int k = 0; k < r->nlinks; k++)
        if (r->links[k].adding)
            joining[nj++] = r->links[k].known ? r->links[k].acked : 0;
    return nl_repl_committed_joining(c, joining, nj);
}

/* ---------------------------------------------------------------- the map */

/* The primary's versioned write of its shard's in-sync set: node in or out. 0 when the map
 * now says so; NL_ESTALE when this node is no longer the primary of that epoch. */
int cl_role_fresh(repl_role *r, cl_coll *c)
{
    int rc = cl_fresh_coll(r->cl, r->coll, c);
    if (!rc && (!c->has_map || strcmp(c->cc.uid, r->uid) || r->s >= c->map.nshards))
        rc = NL_ESTALE;
    if (!rc && (c->map.shard[r->s].epoch != r->epoch || strcmp(c->map.shard[r->s].primary, r->cl->node_id)))
        rc = NL_ESTALE;
    return rc;
}

static int change_in_sync(repl_role *r, const char *node, int in)
{
    nl_cluster *cl = r->cl;
    for (int attempt = 0; attempt < 5; attempt++) {
        cl_coll *c = malloc(sizeof *c);
        if (!c)
            return -ENOMEM;
        int rc = cl_role_fresh(r, c);
        nl_shard_entry *e = rc ? NULL : &c->map.shard[r->s];
        if (!rc && !in) {
            /* under majority, a member holding writes the rest lack must stay */
            uint64_t rest[NL_MAX_REPLICAS];
            pthread_mutex_lock(&r->mu);
            size_t nr = cl_role_acked_locked(r, e, node, rest);
            int may = nl_repl_may_leave(r->last, rest, nr, r->quorum, r->high);
            pthread_mutex_unlock(&r->mu);
            if (!may)
                rc = -EAGAIN;
        }
        int same = 0;
        if (!rc) {
            int sr = nl_shard_map_set_in_sync(&c->map, r->s, node, in);
            same = sr == 1;
            rc = sr < 0 ? sr : 0;
        }
        int32_t nv = c->map.version;
        if (!rc && !same)
            rc = cl_map_write(cl, &c->map, c->map.version, 0, &nv);
        if (!rc) {
            pthread_mutex_lock(&r->mu);
            r->view = c->map.shard[r->s];
            r->version = nv;
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
            if (!same) {
                atomic_fetch_add(in ? &cl->isr_adds : &cl->isr_removals, 1);
                cl_log(cl, in ? 1 : 2, "\"event\":\"%s\",\"collection\":\"%s\",\"shard\":%u,\"node\":\"%s\","
                       "\"epoch\":%llu,\"in_sync\":%u", in ? "in_sync_added" : "in_sync_removed", r->coll, r->s,
                       node, (unsigned long long)r->epoch, r->view.nin_sync);
                cl_wake(cl);
            }
        }
        free(c);
        if (rc != -ESTALE) /* -ESTALE: the version moved (a race): read again */
            return rc;
    }
    return -ESTALE;
}

/* ---------------------------------------------------------------- the link (primary side) */

typedef struct {
    char *p;
    size_t len, cap;
} buf;

static size_t on_body(char *d, size_t sz, size_t n, void *ctx)
{
    buf *b = ctx;
    size_t add = sz * n;
    if (b->len + add + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->len + add + 1)
            nc *= 2;
        char *q = realloc(b->p, nc);
        if (!q)
            return 0;
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->len, d, add);
    b->len += add;
    b->p[b->len] = 0;
    return add;
}

int cl_peer_live(nl_cluster *cl, const char *peer)
{
    cl_snapshot *s = cl_snap_get(cl);
    int live = cl_snap_node(s, peer) != NULL;
    cl_snap_put(cl, s);
    return live;
}

/* Why the link's last exchange failed, for its status (written under role->mu, which the
 * status report reads it under). */
static void __attribute__((format(printf, 2, 3))) link_error(repl_link *l, const char *fmt, ...)
{
    char m[sizeof l->last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&l->role->mu);
    memcpy(l->last_error, m, sizeof m);
    pthread_mutex_unlock(&l->role->mu);
}

/* One call of a link to its follower: POST (body) or GET (body NULL). *answer: the JSON
 * answer (new reference) when there was one. The HTTP status, or 0 with nothing reached. */
int cl_link_call(nl_cluster *cl, CURL **ep, const char *peer, const char *path, const void *body, size_t len,
                 const char *content_type, uint32_t timeout_ms, json_t **answer)
{
    *answer = NULL;
    cl_snapshot *s = cl_snap_get(cl);
    const nl_node_info *n = cl_snap_node(s, peer);
    char url[1200];
    if (n) {
        cl_node_url(n, url, 300);
        snprintf(url + strlen(url), sizeof url - strlen(url), "%s", path);
    }
    cl_snap_put(cl, s);
    if (!n)
        return 0; /* not a live node */
    if (!*ep && !(*ep = curl_easy_init()))
        return 0;
    CURL *e = *ep;
    curl_easy_reset(e); /* keeps the connection: the stream stays on one */
    buf b = {0};
    struct curl_slist *h = NULL;
    char ct[128], key[600];
    snprintf(ct, sizeof ct, "Content-Type: %s", content_type ? content_type : "application/octet-stream");
    h = curl_slist_append(h, ct);
    h = curl_slist_append(h, "Expect:");
    if (cl->key) {
        snprintf(key, sizeof key, "X-Nearline-Cluster-Key: %s", cl->key);
        h = curl_slist_append(h, key);
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(timeout_ms < 1000 ? timeout_ms : 1000));
    if (body) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, (const char *)body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    if (cl->opt.tls && cl->opt.tls_ca) {
        curl_easy_setopt(e, CURLOPT_CAINFO, cl->opt.tls_ca);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L); /* peers share one certificate */
    }
    CURLcode cc = curl_easy_perform(e);
    long code = 0;
    if (cc == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(h);
    if (cc == CURLE_OK && b.len) {
        json_error_t je;
        *answer = json_loadb(b.p, b.len, 0, &je);
    }
    free(b.p);
    return cc == CURLE_OK ? (int)code : 0;
}

/* The replicate request: entries e[0..n) after (prev, prev_epoch). *out malloc'd. */
static int rp_encode(const repl_role *r, uint64_t prev, uint64_t prev_epoch, const nl_log_entry *e, size_t n,
                     void **out, size_t *len)
{
    size_t uid = strlen(r->uid), total = RP_HDR + uid;
    for (size_t i = 0; i < n; i++)
        total += 12 + e[i].len;
    unsigned char *p = malloc(total);
    if (!p)
        return -ENOMEM;
    uint32_t magic = RP_MAGIC, ver = 1, cnt = (uint32_t)n, ul = (uint32_t)uid;
    memcpy(p, &magic, 4);
    memcpy(p + 4, &ver, 4);
    memcpy(p + 8, &r->epoch, 8);
    memcpy(p + 16, &prev, 8);
    memcpy(p + 24, &prev_epoch, 8);
    memcpy(p + 32, &cnt, 4);
    memcpy(p + 36, &ul, 4);
    memcpy(p + RP_HDR, r->uid, uid);
    size_t at = RP_HDR + uid;
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

typedef struct {
    int status; /* HTTP */
    const char *what; /* "ok", "mismatch", "stale", "error", or NULL (points into buf) */
    char buf[16];
    uint64_t last, last_epoch;
} rp_answer;

static void rp_read(int status, json_t *a, rp_answer *o)
{
    o->status = status;
    const char *w = json_string_value(json_object_get(a, "status"));
    snprintf(o->buf, sizeof o->buf, "%s", w ? w : "");
    o->what = w ? o->buf : NULL;
    o->last = (uint64_t)json_integer_value(json_object_get(a, "last_seq"));
    o->last_epoch = (uint64_t)json_integer_value(json_object_get(a, "last_epoch"));
}

/* Sends entries after prev; fills ans. 0, or -EIO when nothing usable came back. */
static int send_entries(repl_link *l, uint64_t prev, const nl_log_entry *e, size_t n, rp_answer *ans, json_t **keep)
{
    repl_role *r = l->role;
    uint64_t pe = 0;
    int rc = nl_collection_shard_log_epoch_at(r->h, r->s, prev, &pe);
    if (rc)
        return rc;
    void *body;
    size_t len;
    if ((rc = rp_encode(r, prev, pe, e, n, &body, &len)) != 0)
        return rc;
    char path[400];
    snprintf(path, sizeof path, "/internal/v1/collections/%s/shards/%u/replicate", r->coll, r->s);
    json_t *a = NULL;
    uint32_t tmo = r->cl->replica_timeout_ms + 2000;
    int st = cl_link_call(r->cl, &l->e, l->peer, path, body, len, NULL, tmo, &a);
    free(body);
    rp_read(st, a, ans);
    if (st && ans->what && strcmp(ans->what, "ok") && strcmp(ans->what, "mismatch")) {
        const char *m = json_string_value(json_object_get(a, "message"));
        link_error(l, "HTTP %d %s: %s", st, ans->what, m ? m : "");
    }
    if (keep)
        *keep = a;
    else
        json_decref(a);
    if (st == 0 || !ans->what) {
        if (st == 0 && !cl_peer_live(r->cl, l->peer))
            link_error(l, "not registered in ZooKeeper (not a live node)");
        else if (st == 0)
            link_error(l, "unreachable");
        else
            link_error(l, "HTTP %d without an answer", st);
        return -EIO;
    }
    return 0;
}

/* Learns the follower's position and decides how it catches up. */
static int hello(repl_link *l)
{
    repl_role *r = l->role;
    nl_log_state ps;
    nl_collection_shard_log_state(r->h, r->s, &ps);
    rp_answer a;
    int rc = send_entries(l, ps.last_seq, NULL, 0, &a, NULL);
    if (rc)
        return rc;
    if (a.status == 409) {
        deposed(r, "a follower is fenced at a later epoch");
        return -EIO;
    }
    if (a.status != 200) {
        link_error(l, "its position: HTTP %d", a.status);
        return -EIO;
    }
    uint64_t pe = 0;
    int has = nl_collection_shard_log_epoch_at(r->h, r->s, a.last, &pe) == 0;
    nl_catchup how = nl_repl_catchup(a.last, a.last_epoch, has, pe, ps.last_seq);
    /* a follower with nothing outside the in-sync set (a move's target, a replica
     * re-created) gets the segments, not the whole history replayed and its graph rebuilt;
     * a member of the set at 0 (a collection just created) streams, as it always did */
    pthread_mutex_lock(&r->mu);
    int member = 0;
    for (uint32_t i = 0; i < r->view.nin_sync; i++)
        member |= !strcmp(r->view.in_sync[i], l->peer);
    pthread_mutex_unlock(&r->mu);
    if (a.last == 0 && ps.last_seq > 0 && !member)
        how = NL_CATCHUP_SNAPSHOT;
    if (how == NL_CATCHUP_SNAPSHOT) {
        cl_log(r->cl, 1, "\"event\":\"snapshot_needed\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\","
               "\"follower_seq\":%llu,\"follower_epoch\":%llu,\"primary_seq\":%llu,\"log_first\":%llu", r->coll, r->s,
               l->peer, (unsigned long long)a.last, (unsigned long long)a.last_epoch,
               (unsigned long long)ps.last_seq, (unsigned long long)ps.first_seq);
        int sr = cl_snapshot_send(l);
        if (sr)
            link_error(l, "snapshot copy: %s", nl_strerror(sr));
        return sr;
    }
    pthread_mutex_lock(&r->mu);
    l->acked = a.last;
    l->known = 1;
    l->progress_ms = now_ms();
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* After a map write adding l's follower whose answer was lost (ZooKeeper's connection
 * dropped): it may have landed. Until a read of the map made after it says whether it
 * did, the follower stays required for every write (l->adding), so no write is
 * acknowledged without a member the map may already list. */
static void settle_add(repl_role *r, repl_link *l)
{
    cl_coll *c = malloc(sizeof *c);
    while (c && !atomic_load(&l->stop)) {
        pthread_mutex_lock(&r->mu);
        int dep = r->deposed;
        pthread_mutex_unlock(&r->mu);
        if (dep)
            break;
        if (cl_fresh_coll(r->cl, r->coll, c) == 0 && c->has_map && r->s < c->map.nshards &&
            !strcmp(c->cc.uid, r->uid)) {
            const nl_shard_entry *e = &c->map.shard[r->s];
            if (e->epoch != r->epoch || strcmp(e->primary, r->cl->node_id)) {
                deposed(r, "the map has a newer epoch for this shard");
                break;
            }
            pthread_mutex_lock(&r->mu);
            if (c->map.version >= r->version) {
                r->view = *e;
                r->version = c->map.version;
            }
            pthread_cond_broadcast(&r->cv);
            pthread_mutex_unlock(&r->mu);
            break;
        }
        sleep_ms(200);
    }
    free(c);
}

/* In-sync upkeep after each exchange: out after the timeout without progress, in once
 * caught up. */
static void upkeep(repl_link *l)
{
    repl_role *r = l->role;
    pthread_mutex_lock(&r->mu);
    uint64_t t = now_ms();
    int in = 0, listed = 0;
    for (uint32_t i = 0; i < r->view.nin_sync; i++)
        in |= !strcmp(r->view.in_sync[i], l->peer);
    for (uint32_t i = 0; i < r->view.nreplicas; i++)
        listed |= !strcmp(r->view.replicas[i], l->peer);
    int caught_up = l->known && l->acked >= r->last;
    if (caught_up)
        l->progress_ms = t;
    int stalled = !caught_up && t - l->progress_ms > r->cl->replica_timeout_ms;
    int dep = r->deposed;
    pthread_mutex_unlock(&r->mu);
    if (dep || !listed || l->retiring)
        return;
    int rc = 0;
    if (in && stalled) {
        rc = change_in_sync(r, l->peer, 0);
    } else if (!in && caught_up) {
        /* from now until the map says so, writes wait for this follower too: none may be
         * acknowledged without it while it joins (nl_repl_committed_joining) */
        pthread_mutex_lock(&r->mu);
        l->adding = 1;
        int still = l->acked >= r->last;
        pthread_mutex_unlock(&r->mu);
        if (still)
            rc = change_in_sync(r, l->peer, 1);
        if (still && rc && rc != -EAGAIN && rc != -ESTALE && rc != NL_ESTALE)
            settle_add(r, l); /* the map write may have landed (its answer was lost) */
        pthread_mutex_lock(&r->mu);
        l->adding = 0;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (rc == NL_ESTALE)
        deposed(r, "the map has a newer epoch for this shard");
    else
        cl_move_step(l);
}

static void *link_main(void *arg)
{
    repl_link *l = arg;
    repl_role *r = l->role;
    uint32_t backoff = 50;
    while (!atomic_load(&l->stop)) {
        int rc = 0;
        if (!l->known) {
            rc = hello(l);
        } else {
            pthread_mutex_lock(&r->mu);
            if (l->acked >= r->last && !atomic_load(&l->stop) && !r->deposed) {
                struct timespec ts;
                abs_deadline(&ts, 200);
                pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            }
            uint64_t from = l->acked + 1, last = r->last;
            int dep = r->deposed;
            pthread_mutex_unlock(&r->mu);
            if (dep)
                break;
            if (from <= last) {
                nl_log_entry *e = NULL;
                size_t n = 0;
                rc = nl_collection_shard_log_read(r->h, r->s, from, RP_MAX_BATCH, &e, &n);
                if (rc == NL_ENOTFOUND) {
                    l->known = 0; /* trimmed past it: the position decides again */
                    rc = 0;
                } else if (!rc && n) {
                    rp_answer a;
                    rc = send_entries(l, from - 1, e, n, &a, NULL);
                    if (rc == NL_ENOTFOUND) {
                        /* the entry the follower is at was trimmed, the next one not yet:
                         * the request cannot name what it follows; the position decides */
                        l->known = 0;
                        rc = 0;
                    } else if (!rc && a.status == 409) {
                        deposed(r, "a follower is fenced at a later epoch");
                    } else if (!rc && a.status == 200 && a.what && !strcmp(a.what, "ok")) {
                        pthread_mutex_lock(&r->mu);
                        if (a.last > l->acked)
                            l->progress_ms = now_ms();
                        l->acked = a.last;
                        pthread_cond_broadcast(&r->cv);
                        pthread_mutex_unlock(&r->mu);
                    } else if (!rc && a.what && !strcmp(a.what, "mismatch")) {
                        l->known = 0;
                    } else if (!rc) {
                        rc = -EIO; /* refused an entry (its message is in the follower's log) */
                    }
                }
                nl_log_entries_free(e, n);
            }
        }
        pthread_mutex_lock(&r->mu);
        l->failing = rc != 0;
        pthread_mutex_unlock(&r->mu);
        upkeep(l);
        if (rc) {
            sleep_ms(backoff);
            backoff = backoff < 1000 ? backoff * 2 : 1000;
        } else {
            backoff = 50;
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------- role lifecycle */

static void role_stop(repl_role *r)
{
    pthread_mutex_lock(&r->mu);
    r->deposed = 1;
    for (int i = 0; i < r->nlinks; i++)
        atomic_store(&r->links[i].stop, 1);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nlinks; i++) {
        if (r->links[i].started)
            pthread_join(r->links[i].th, NULL);
        if (r->links[i].e)
            curl_easy_cleanup(r->links[i].e);
        cl_snapshot_link_done(&r->links[i]);
    }
}

static repl_role *role_start(nl_cluster *cl, const cl_coll *c, uint32_t s)
{
    nl_collection *h;
    if (cl_attach(cl, &c->cc, s, &h) != 0)
        return NULL;
    repl_role *r = calloc(1, sizeof *r);
    if (!r) {
        nl_collection_close(h);
        return NULL;
    }
    snprintf(r->coll, sizeof r->coll, "%s", c->cc.name);
    snprintf(r->uid, sizeof r->uid, "%s", c->cc.uid);
    r->s = s;
    r->cl = cl;
    r->h = h;
    r->epoch = c->map.shard[s].epoch;
    r->quorum = c->cc.write_quorum;
    r->view = c->map.shard[s];
    r->version = c->map.version;
    atomic_store(&r->refs, 1);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    nl_log_state ls;
    nl_collection_shard_log_state(h, s, &ls);
    r->last = ls.last_seq;
    r->high = ls.last_seq; /* all of it may have been acknowledged before */
    for (uint32_t i = 0; i < r->view.nreplicas; i++) {
        if (!strcmp(r->view.replicas[i], cl->node_id))
            continue;
        repl_link *l = &r->links[r->nlinks++];
        l->role = r;
        memcpy(l->peer, r->view.replicas[i], sizeof l->peer);
        l->progress_ms = now_ms();
    }
    for (int i = 0; i < r->nlinks; i++)
        r->links[i].started = pthread_create(&r->links[i].th, NULL, link_main, &r->links[i]) == 0;
    cl_log(cl, 1, "\"event\":\"primary\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu,\"last_seq\":%llu,"
           "\"in_sync\":%u,\"quorum\":\"%s\"", r->coll, s, (unsigned long long)r->epoch, (unsigned long long)r->last,
           r->view.nin_sync, nl_quorum_name(r->quorum));
    return r;
}

/* The log's bounds, on every shard held here: a primary keeps what an in-sync follower
 * still needs (its last entry too, which the next request names). */
static void trim(nl_cluster *cl, nl_collection *h, uint32_t s, uint64_t keep_from)
{
    uint64_t n = 0;
    if (nl_collection_shard_log_trim(h, s, keep_from, cl->log_max_bytes, cl->log_max_age_ms, &n) == 0 && n)
        atomic_fetch_add(&cl->log_trimmed, n);
}

/* The links of a role as its view's replicas change at one epoch (a move adds its target,
 * and removes it or its source at the end): a link starts for a replica that has none,
 * and one whose follower is no longer listed ends (its slot is freed once its thread has,
 * so the worker never waits on a link's call). Worker thread only. */
static void links_sync(repl_role *r)
{
    nl_cluster *cl = r->cl;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->nlinks; i++) {
        repl_link *l = &r->links[i];
        if (!l->peer[0])
            continue;
        int listed = 0;
        for (uint32_t k = 0; k < r->view.nreplicas; k++)
            listed |= !strcmp(r->view.replicas[k], l->peer);
        if (!listed && !l->retiring) {
            l->retiring = 1;
            atomic_store(&l->stop, 1);
            pthread_cond_broadcast(&r->cv);
        }
    }
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < r->nlinks; i++) {
        repl_link *l = &r->links[i];
        if (!l->retiring || (l->started && pthread_tryjoin_np(l->th, NULL) != 0))
            continue;
        if (l->e)
            curl_easy_cleanup(l->e);
        cl_snapshot_link_done(l);
        pthread_mutex_lock(&r->mu);
        cl_log(cl, 1, "\"event\":\"link_ended\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\"", r->coll, r->s,
               l->peer);
        memset(l, 0, sizeof *l);
        pthread_mutex_unlock(&r->mu);
    }
    for (uint32_t k = 0; k < r->view.nreplicas; k++) {
        const char *id = r->view.replicas[k];
        int have = !strcmp(id, cl->node_id);
        for (int i = 0; i < r->nlinks && !have; i++)
            have = !strcmp(r->links[i].peer, id) && !r->links[i].retiring;
        if (have)
            continue;
        int slot = -1;
        for (int i = 0; i < r->nlinks && slot < 0; i++)
            if (!r->links[i].peer[0])
                slot = i;
        if (slot < 0 && r->nlinks < NL_MAX_REPLICAS)
            slot = r->nlinks;
        if (slot < 0)
            continue; /* every slot is a link still ending: the next pass */
        pthread_mutex_lock(&r->mu);
        repl_link *l = &r->links[slot];
        memset(l, 0, sizeof *l);
        l->role = r;
        memcpy(l->peer, id, sizeof l->peer);
        l->progress_ms = now_ms();
        if (slot == r->nlinks)
            r->nlinks++;
        pthread_mutex_unlock(&r->mu);
        l->started = pthread_create(&l->th, NULL, link_main, l) == 0;
        cl_log(cl, 1, "\"event\":\"link_started\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\"", r->coll,
               r->s, id);
    }
}

void cl_repl_reconcile(nl_cluster *cl, const cl_snapshot *s)
{
    /* roles this node should have */
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        for (uint32_t sh = 0; c->has_map && sh < c->map.nshards; sh++) {
            const nl_shard_entry *e = &c->map.shard[sh];
            if (strcmp(e->primary, cl->node_id) || e->state == NL_SHARD_OFFLINE)
                continue;
            repl_role *r = role_get(cl, c->cc.name, sh);
            if (r && (r->epoch != e->epoch || strcmp(r->uid, c->cc.uid))) {
                role_put(r);
                r = NULL; /* a new epoch: the old role ends below */
            } else if (r) {
                pthread_mutex_lock(&r->mu);
                if (c->map.version > r->version) { /* the in-sync set as the map has it now */
                    r->view = *e;
                    r->version = c->map.version;
                    pthread_cond_broadcast(&r->cv);
                }
                pthread_mutex_unlock(&r->mu);
                links_sync(r);
                role_put(r);
                continue;
            }
            /* end an older role of this shard first */
            pthread_mutex_lock(&cl->repl_mu);
            repl_role **pp = &cl->roles, *old = NULL;
            for (; *pp; pp = &(*pp)->next)
                if ((*pp)->s == sh && !strcmp((*pp)->coll, c->cc.name)) {
                    old = *pp;
                    *pp = old->next;
                    break;
                }
            pthread_mutex_unlock(&cl->repl_mu);
            if (old) {
                role_stop(old);
                role_put(old);
            }
            repl_role *nr = role_start(cl, c, sh);
            if (nr) {
                pthread_mutex_lock(&cl->repl_mu);
                nr->next = cl->roles;
                cl->roles = nr;
                pthread_mutex_unlock(&cl->repl_mu);
            }
        }
    }
    /* roles this node no longer has: deposed by the map */
    for (;;) {
        pthread_mutex_lock(&cl->repl_mu);
        repl_role **pp = &cl->roles, *gone = NULL;
        for (; *pp; pp = &(*pp)->next) {
            const cl_coll *c = cl_snap_coll(s, (*pp)->coll);
            const nl_shard_entry *e = c && c->has_map && (*pp)->s < c->map.nshards ? &c->map.shard[(*pp)->s] : NULL;
            if (!e || strcmp(e->primary, cl->node_id) || e->epoch != (*pp)->epoch || strcmp(c->cc.uid, (*pp)->uid)) {
                gone = *pp;
                *pp = gone->next;
                break;
            }
        }
        pthread_mutex_unlock(&cl->repl_mu);
        if (!gone)
            break;
        cl_log(cl, 1, "\"event\":\"primary_ended\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu", gone->coll,
               gone->s, (unsigned long long)gone->epoch);
        role_stop(gone);
        role_put(gone);
    }
    /* log bounds */
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        for (uint32_t sh = 0; c->has_map && sh < c->map.nshards; sh++) {
            if (!nl_shard_map_holds(&c->map, sh, cl->node_id))
                continue;
            repl_role *r = role_get(cl, c->cc.name, sh);
            if (r) {
                uint64_t keep = UINT64_MAX;
                pthread_mutex_lock(&r->mu);
                for (uint32_t k = 0; k < r->view.nin_sync; k++) {
                    if (!strcmp(r->view.in_sync[k], cl->node_id))
                        continue;
                    uint64_t a = 0;
                    for (int q = 0; q < r->nlinks; q++)
                        if (!strcmp(r->links[q].peer, r->view.in_sync[k]) && r->links[q].known)
                            a = r->links[q].acked;
                    if (a < keep)
                        keep = a;
                }
                pthread_mutex_unlock(&r->mu);
                trim(cl, r->h, sh, keep);
                role_put(r);
            } else {
                nl_collection *h;
                if (nl_collection_open(cl->opt.db, c->cc.name, &h) == 0) {
                    if (nl_collection_shard_held(h, sh))
                        trim(cl, h, sh, UINT64_MAX);
                    nl_collection_close(h);
                }
            }
        }
    }
}

void cl_repl_stop_all(nl_cluster *cl)
{
    for (;;) {
        pthread_mutex_lock(&cl->repl_mu);
        repl_role *r = cl->roles;
        if (r)
            cl->roles = r->next;
        pthread_mutex_unlock(&cl->repl_mu);
        if (!r)
            break;
        role_stop(r);
        role_put(r);
    }
}

/* ---------------------------------------------------------------- the write path */

/* The engine's word that a write is durable (before its graph links are built here): the
 * links may ship it now. */
static void on_durable(void *ctx, uint64_t seq)
{
    repl_role *r = ctx;
    pthread_mutex_lock(&r->mu);
    if (seq > r->last)
        r->last = seq;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

typedef struct {
    int type; /* 1 upsert, 2 delete, 3 delete by filter */
    const nl_point *pts;
    const nl_id *ids;
    size_t n;
    const nl_filter *f;
} repl_write;

/* A write through this node's primary role. Refusals before the entry is ordered (not the
 * primary, no session, deposed, handing over, fenced) are NL_EREFUSED: certainly not
 * applied, so a client and the history checker can tell them from the indeterminate
 * NL_EUNAVAILABLE of a write that was ordered but not acknowledged by its quorum. */
static int write_through(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const repl_write *w,
                         size_t *count)
{
    if (count)
        *count = 0;
    repl_role *r = role_get(cl, name, s);
    if (!r) {
        /* a map that has just made this node primary (a new collection, a failover): the
         * worker starts the role on its next read; wait for it a moment */
        cl_coll *f = malloc(sizeof *f);
        int mine = f && cl_fresh_coll(cl, name, f) == 0 && f->has_map && s < f->map.nshards &&
                   !strcmp(f->map.shard[s].primary, cl->node_id);
        free(f);
        for (int i = 0; mine && !r && i < 300; i++) {
            if (i % 50 == 0)
                cl_wake(cl);
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
            r = role_get(cl, name, s);
        }
    }
    if (!r) {
        cl_snapshot *sn = cl_snap_get(cl);
        const cl_coll *c = cl_snap_coll(sn, name);
        int rc = nl_fail(NL_EREFUSED, "node %s is not the primary of shard %u of '%s'%s%s", cl->node_id, s, name,
                         c && c->has_map && s < c->map.nshards ? "; the map says " : "",
                         c && c->has_map && s < c->map.nshards ? c->map.shard[s].primary : "");
        cl_snap_put(cl, sn);
        return rc;
    }
    (void)h;
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    int alone = r->view.nreplicas == 1; /* nobody else can be promoted: nobody can depose it */
    pthread_mutex_unlock(&r->mu);
    if (!alone && !cl_session_ok(cl))
        rc = nl_fail(NL_EREFUSED, "node %s is not connected to ZooKeeper with a fresh map: it acknowledges no "
                     "write to a replicated shard until it is", cl->node_id);
    pthread_mutex_lock(&r->mu);
    /* a move handing the role over: nothing new is ordered until it lands (then this
     * write goes to the new primary: the router retries there) or is given up */
    for (uint64_t until = nl_now_ns() + (uint64_t)cl->write_wait_ms * 1000000ull;
         !rc && r->handoff && !r->deposed && nl_now_ns() < until;) {
        struct timespec ts;
        abs_deadline(&ts, 20);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    if (!rc && r->deposed)
        rc = nl_fail(NL_EREFUSED, "node %s is no longer the primary of shard %u of '%s' (a later epoch)",
                     cl->node_id, s, name);
    if (!rc && r->handoff)
        rc = nl_fail(NL_EREFUSED, "shard %u of '%s' is handing its primary over", s, name);
    if (!rc)
        r->writing++;
    uint64_t epoch = r->epoch;
    pthread_mutex_unlock(&r->mu);
    int counted = !rc;
    uint64_t seq = 0;
    size_t done = 0;
    if (!rc) {
        nl_log_order o = {epoch, on_durable, r};
        rc = w->type == 1 ? nl_collection_shard_log_upsert(r->h, s, &o, w->pts, w->n, &seq)
           : w->type == 2 ? nl_collection_shard_log_delete(r->h, s, &o, w->ids, w->n, &done, &seq)
                          : nl_collection_shard_log_delete_by_filter(r->h, s, &o, w->f, &done, &seq);
        if (rc == NL_ESTALE) {
            deposed(r, nl_errdetail());
            rc = nl_fail(NL_EREFUSED, "node %s is fenced for shard %u of '%s'", cl->node_id, s, name);
        }
    }
    if (counted) {
        pthread_mutex_lock(&r->mu);
        if (seq > r->last)
            r->last = seq;
        r->writing--;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    if (!rc && seq) {
        uint64_t t0 = nl_now_ns(), deadline = t0 + (uint64_t)cl->write_wait_ms * 1000000ull;
        pthread_mutex_lock(&r->mu);
        if (seq > r->last)
            r->last = seq;
        pthread_cond_broadcast(&r->cv); /* the links have something to send */
        for (;;) {
            if (committed_locked(r) >= seq)
                break;
            if (r->deposed) {
                rc = nl_fail(NL_EUNAVAILABLE, "shard %u of '%s': deposed before the write quorum acknowledged (the "
                             "write may or may not survive)", s, name);
                break;
            }
            if (nl_now_ns() >= deadline) {
                rc = nl_fail(NL_EUNAVAILABLE, "shard %u of '%s': the write quorum did not acknowledge within %u ms "
                             "(the write may or may not survive)", s, name, cl->write_wait_ms);
                break;
            }
            struct timespec ts;
            abs_deadline(&ts, 20);
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        }
        if (!rc && seq > r->high)
            r->high = seq;
        pthread_mutex_unlock(&r->mu);
        atomic_fetch_add(rc ? &cl->repl_write_failures : &cl->repl_writes, 1);
        if (!rc)
            atomic_fetch_add(&cl->repl_wait_us, (nl_now_ns() - t0) / 1000);
    }
    if (count)
        *count = w->type == 1 ? w->n : done;
    role_put(r);
    return rc;
}

int nl_cluster_shard_upsert(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const nl_point *pts,
                            size_t n)
{
    repl_write w = {1, pts, NULL, n, NULL};
    return write_through(cl, h, name, s, &w, NULL);
}

int nl_cluster_shard_delete(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const nl_id *ids, size_t n,
                            size_t *deleted)
{
    repl_write w = {2, NULL, ids, n, NULL};
    return write_through(cl, h, name, s, &w, deleted);
}

int nl_cluster_shard_delete_by_filter(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s,
                                      const nl_filter *f, size_t *deleted)
{
    repl_write w = {3, NULL, NULL, 0, f};
    return write_through(cl, h, name, s, &w, deleted);
}

/* ---------------------------------------------------------------- the follower's side */

static pthread_mutex_t *follow_lock(nl_cluster *cl, const char *name, uint32_t s)
{
    uint64_t h = 1469598103934665603ull ^ s;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return &cl->follow_mu[h % CL_FOLLOW_LOCKS];
}

static json_t *position(const char *status, const nl_log_state *st, const char *msg)
{
    json_t *j = json_pack("{s:s,s:I,s:I,s:I}", "status", status, "last_seq", (json_int_t)st->last_seq, "last_epoch",
                          (json_int_t)st->last_epoch, "fence", (json_int_t)st->fence);
    if (msg)
        json_object_set_new(j, "message", json_string(msg));
    return j;
}

/* The epoch of shard s in this node's snapshot of the map (0 when unknown). */
static uint64_t map_epoch(nl_cluster *cl, const char *name, uint32_t s, char *uid, size_t cap)
{
    cl_snapshot *sn = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(sn, name);
    uint64_t e = c && c->has_map && s < c->map.nshards ? c->map.shard[s].epoch : 0;
    if (uid)
        snprintf(uid, cap, "%s", c ? c->cc.uid : "");
    cl_snap_put(cl, sn);
    return e;
}

int nl_cluster_replicate(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const void *body, size_t len,
                         json_t **out)
{
    const unsigned char *p = body;
    uint32_t magic, ver, cnt, ul;
    uint64_t epoch, prev, prev_epoch;
    if (!p || len < RP_HDR) {
        *out = cl_error("bad_request", "a replicate request of %zu bytes", len);
        return 400;
    }
    memcpy(&magic, p, 4);
    memcpy(&ver, p + 4, 4);
    memcpy(&epoch, p + 8, 8);
    memcpy(&prev, p + 16, 8);
    memcpy(&prev_epoch, p + 24, 8);
    memcpy(&cnt, p + 32, 4);
    memcpy(&ul, p + 36, 4);
    if (magic != RP_MAGIC || ver != 1 || ul == 0 || ul >= 20 || len - RP_HDR < ul || cnt > 1000000) {
        *out = cl_error("bad_request", "not a replicate request");
        return 400;
    }
    char uid[20], known_uid[32];
    memcpy(uid, p + RP_HDR, ul);
    uid[ul] = 0;
    uint64_t me = map_epoch(cl, name, s, known_uid, sizeof known_uid);
    if (known_uid[0] && strcmp(uid, known_uid)) {
        *out = cl_error("not_found", "the request is for another collection of the name '%s'", name);
        return 404;
    }
    pthread_mutex_t *mu = follow_lock(cl, name, s);
    pthread_mutex_lock(mu);
    nl_log_state st;
    int rc = nl_collection_shard_log_state(h, s, &st);
    int status = 200;
    if (!rc && (epoch < st.fence || epoch < me)) {
        *out = position("stale", &st, "an older epoch than this replica knows");
        pthread_mutex_unlock(mu);
        return 409;
    }
    if (!rc && epoch > st.fence)
        rc = nl_collection_shard_fence(h, s, epoch, &st); /* nothing older from now on */
    uint64_t have_epoch = 0;
    if (!rc && (st.last_seq != prev || nl_collection_shard_log_epoch_at(h, s, prev, &have_epoch) != 0 ||
                have_epoch != prev_epoch)) {
        *out = position("mismatch", &st, NULL);
        pthread_mutex_unlock(mu);
        return 200;
    }
    size_t at = RP_HDR + ul;
    const char *msg = NULL;
    char err[300];
    for (uint32_t i = 0; !rc && i < cnt; i++) {
        uint64_t seq;
        uint32_t el;
        if (len - at < 12) {
            msg = "the request ends inside an entry";
            break;
        }
        memcpy(&seq, p + at, 8);
        memcpy(&el, p + at + 8, 4);
        if (len - at - 12 < el) {
            msg = "the request ends inside an entry";
            break;
        }
        int ar = nl_collection_shard_log_apply(h, s, epoch, seq, p + at + 12, el);
        if (ar) {
            snprintf(err, sizeof err, "entry %llu: %s", (unsigned long long)seq, nl_errdetail());
            msg = err;
            cl_log(cl, 3, "\"event\":\"replicate_refused\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"%s\"",
                   name, s, err);
            status = ar == NL_ESTALE ? 409 : 422;
            break;
        }
        at += 12 + el;
    }
    nl_collection_shard_log_state(h, s, &st);
    pthread_mutex_unlock(mu);
    if (rc) {
        *out = cl_error("internal", "%s", nl_errdetail());
        return 500;
    }
    if (msg && status == 200)
        status = 400;
    *out = position(msg ? (status == 409 ? "stale" : "error") : "ok", &st, msg);
    return status;
}

int nl_cluster_fence_shard(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, uint64_t epoch, json_t **out)
{
    pthread_mutex_t *mu = follow_lock(cl, name, s);
    pthread_mutex_lock(mu);
    nl_log_state st;
    int rc = nl_collection_shard_fence(h, s, epoch, &st);
    pthread_mutex_unlock(mu);
    if (rc == NL_ESTALE) {
        *out = position("stale", &st, nl_errdetail());
        return 409;
    }
    if (rc) {
        *out = cl_error("internal", "%s", nl_errdetail());
        return 500;
    }
    cl_log(cl, 1, "\"event\":\"fenced\",\"collection\":\"%s\",\"shard\":%u,\"epoch\":%llu,\"last_seq\":%llu", name, s,
           (unsigned long long)epoch, (unsigned long long)st.last_seq);
    *out = position("ok", &st, NULL);
    return 200;
}

pthread_mutex_t *cl_follow_lock(nl_cluster *cl, const char *name, uint32_t s) { return follow_lock(cl, name, s); }

/* ---------------------------------------------------------------- reads and status */

int nl_cluster_serves_reads(nl_cluster *cl, const char *name, uint32_t s)
{
    cl_snapshot *sn = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(sn, name);
    int ok = c && c->has_map && nl_shard_map_in_sync(&c->map, s, cl->node_id);
    /* A view of a replicated shard older than a session timeout (the process was paused,
     * or cut off from ZooKeeper) may be one the cluster has moved past: its primary may have
     * dropped this replica from the in-sync set and gone on acknowledging without it. Such
     * a replica serves no reads until its map is read again (the router asks another one).
     * A shard of one replica is always in sync: nobody can drop it. */
    uint64_t age = nl_now_ns() - (uint64_t)atomic_load(&cl->last_read_ns);
    if (ok && c->map.shard[s].nreplicas > 1 && age > (uint64_t)cl->opt.session_ms * 1000000ull)
        ok = 0;
    cl_snap_put(cl, sn);
    if (!ok) {
        /* this node's snapshot may lag the map the router read (a collection just made,
         * a replica just added): ask ZooKeeper before refusing */
        cl_coll *f = malloc(sizeof *f);
        if (f && cl_fresh_coll(cl, name, f) == 0)
            ok = f->has_map && nl_shard_map_in_sync(&f->map, s, cl->node_id);
        free(f);
    }
    return ok;
}

json_t *cl_repl_status(nl_cluster *cl)
{
    json_t *a = json_array();
    pthread_mutex_lock(&cl->repl_mu);
    for (repl_role *r = cl->roles; r; r = r->next) {
        json_t *fs = json_array();
        pthread_mutex_lock(&r->mu);
        uint64_t t = now_ms();
        for (int i = 0; i < r->nlinks; i++) {
            const repl_link *l = &r->links[i];
            if (!l->peer[0])
                continue;
            int in = 0;
            for (uint32_t k = 0; k < r->view.nin_sync; k++)
                in |= !strcmp(r->view.in_sync[k], l->peer);
            uint64_t lag = l->known && r->last > l->acked ? r->last - l->acked : 0;
            json_array_append_new(fs, json_pack("{s:s,s:b,s:b,s:I,s:I,s:I,s:b,s:I,s:I}", "node", l->peer, "in_sync", in,
                                                "known", l->known, "acked_seq", (json_int_t)l->acked, "lag_ops",
                                                (json_int_t)(l->known ? lag : r->last), "lag_ms",
                                                (json_int_t)(lag && t > l->progress_ms ? t - l->progress_ms : 0),
                                                "failing", l->failing, "snapshots", (json_int_t)l->snapshots,
                                                "snapshot_bytes", (json_int_t)l->snapshot_bytes));
            json_t *f = json_array_get(fs, json_array_size(fs) - 1);
            json_object_set_new(f, "copying", json_boolean(l->snap != NULL));
            json_object_set_new(f, "last_error", json_string(l->failing ? l->last_error : ""));
            json_object_set_new(f, "copy_done", json_integer((json_int_t)l->snap_done));
            json_object_set_new(f, "copy_total", json_integer((json_int_t)l->snap_total));
        }
        json_array_append_new(a, json_pack("{s:s,s:i,s:I,s:I,s:I,s:s,s:i,s:o}", "collection", r->coll, "shard", (int)r->s,
                                           "epoch", (json_int_t)r->epoch, "last_seq", (json_int_t)r->last,
                                           "committed_seq", (json_int_t)committed_locked(r), "quorum",
                                           nl_quorum_name(r->quorum), "in_sync", (int)r->view.nin_sync, "followers", fs));
        json_object_set_new(json_array_get(a, json_array_size(a) - 1), "handing_over", json_boolean(r->handoff));
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_unlock(&cl->repl_mu);
    return a;
}

void cl_repl_metrics(nl_cluster *cl, FILE *f)
{
    fprintf(f, "# HELP nearline_replication_lag_ops Log entries a follower has not applied, per shard this node is "
               "primary of.\n# TYPE nearline_replication_lag_ops gauge\n");
    pthread_mutex_lock(&cl->repl_mu);
    for (repl_role *r = cl->roles; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < r->nlinks; i++)
            if (r->links[i].peer[0])
            fprintf(f, "nearline_replication_lag_ops{collection=\"%s\",shard=\"%u\",follower=\"%s\"} %llu\n", r->coll,
                    r->s, r->links[i].peer,
                    (unsigned long long)(r->links[i].known && r->last > r->links[i].acked ? r->last - r->links[i].acked
                                         : r->links[i].known ? 0 : r->last));
        pthread_mutex_unlock(&r->mu);
    }
    fprintf(f, "# HELP nearline_replication_lag_ms Milliseconds since a lagging follower last made progress.\n"
               "# TYPE nearline_replication_lag_ms gauge\n");
    uint64_t t = now_ms();
    for (repl_role *r = cl->roles; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        for (int i = 0; i < r->nlinks; i++) {
            const repl_link *l = &r->links[i];
            if (!l->peer[0])
                continue;
            int lag = !l->known || l->acked < r->last;
            fprintf(f, "nearline_replication_lag_ms{collection=\"%s\",shard=\"%u\",follower=\"%s\"} %llu\n", r->coll,
                    r->s, l->peer, (unsigned long long)(lag && t > l->progress_ms ? t - l->progress_ms : 0));
        }
        pthread_mutex_unlock(&r->mu);
    }
    fprintf(f, "# HELP nearline_replication_in_sync Replicas in the in-sync set (primary included), per shard this "
               "node is primary of.\n# TYPE nearline_replication_in_sync gauge\n");
    for (repl_role *r = cl->roles; r; r = r->next)
        fprintf(f, "nearline_replication_in_sync{collection=\"%s\",shard=\"%u\"} %u\n", r->coll, r->s,
                r->view.nin_sync);
    fprintf(f, "# HELP nearline_replication_epoch The epoch of each shard this node is primary of.\n"
               "# TYPE nearline_replication_epoch gauge\n");
    for (repl_role *r = cl->roles; r; r = r->next)
        fprintf(f, "nearline_replication_epoch{collection=\"%s\",shard=\"%u\"} %llu\n", r->coll, r->s,
                (unsigned long long)r->epoch);
    pthread_mutex_unlock(&cl->repl_mu);
#define C(name, help, v) fprintf(f, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n", (unsigned long long)(v))
    C("nearline_replication_writes_total", "Writes this node acknowledged as a primary, after the write quorum.",
      atomic_load(&cl->repl_writes));
    C("nearline_replication_write_failures_total", "Writes this node ordered as a primary but could not acknowledge.",
      atomic_load(&cl->repl_write_failures));
    fprintf(f, "# HELP nearline_replication_wait_seconds_total Time writers waited for the write quorum (sum).\n"
               "# TYPE nearline_replication_wait_seconds_total counter\nnearline_replication_wait_seconds_total %.6f\n",
            (double)atomic_load(&cl->repl_wait_us) / 1e6);
    C("nearline_replication_in_sync_removals_total", "Followers this node removed from an in-sync set.",
      atomic_load(&cl->isr_removals));
    C("nearline_replication_in_sync_additions_total", "Followers this node added back to an in-sync set.",
      atomic_load(&cl->isr_adds));
    C("nearline_replication_failovers_total", "Primaries this node promoted as coordinator.", atomic_load(&cl->failovers));
    C("nearline_replication_log_trimmed_total", "Log entries trimmed on this node.", atomic_load(&cl->log_trimmed));
    C("nearline_replication_snapshots_total", "Snapshot copies this node sent to followers.",
      atomic_load(&cl->snapshots_sent));
    C("nearline_replication_snapshot_bytes_total", "Bytes of snapshot copies sent (compressed).",
      atomic_load(&cl->snapshot_bytes));
    fprintf(f, "# HELP nearline_replication_snapshot_seconds_total Time spent sending snapshot copies.\n"
               "# TYPE nearline_replication_snapshot_seconds_total counter\nnearline_replication_snapshot_seconds_total "
               "%.3f\n", (double)atomic_load(&cl->snapshot_ms) / 1000.0);
    C("nearline_router_hedged_requests_total", "Shard reads sent to a second replica because the first was slow.",
      atomic_load(&cl->hedged));
#undef C
}
