/*
 * router.c — the router's side of the public API in cluster mode (nl_cluster.h): every
 * call that names points goes to the shards that own them, on the nodes the shard map
 * names, as protobuf over the node-to-node transport (peer.c, nl_peer.h).
 *
 * The rules (docs/cluster.md):
 *   - search: one call per shard, all in parallel, each asking for its share of k and L
 *     (nl_shard_map_budget: hash placement gives every shard a random sample); a shard
 *     whose last result would still make the answer may hold more of it and is asked again
 *     for the whole k. The answer is the k best by score, ties by id (numbers before
 *     strings, then by value), so every node merges the same answer from the same parts. A shard with no live primary, or
 *     that does not answer by the deadline, is left out: the answer says "partial": true
 *     and lists "missing_shards", or is a 503 naming them when require_complete is set;
 *   - upsert and delete: the batch split by shard, one call per shard to its primary, in
 *     parallel; each part is applied all or nothing by its node; the answer says which
 *     shards failed (a retry with the same ids is safe: upserts replace, deletes of a
 *     missing id are no-ops);
 *   - get: to the primary of the id's shard.
 * The point-to-shard function is the engine's nl_shard_of, so router and engine agree.
 *
 * Input reaching this file was validated whole by the server (ids, vectors, k, filters);
 * what comes back from peers is untrusted and decoded with protobuf-c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "nearline.pb-c.h"
#include "nl_util.h"

#define DEFAULT_TIMEOUT_MS 1000

/* The collection and its map from the snapshot (re-read once when absent). 0, or an HTTP
 * status with *out set. */
static int coll_of(nl_cluster *cl, cl_snapshot *s, const char *name, const cl_coll **c, cl_coll *tmp, json_t **out)
{
    *c = cl_snap_coll(s, name);
    if (!*c || !(*c)->has_map) {
        nl_collection_config cfg;
        if (nl_cluster_config(cl, name, &cfg, NULL) == NL_ENOTFOUND) {
            *out = cl_error("not_found", "no collection named \"%s\"", name);
            return 404;
        }
        if (cl_fresh_coll(cl, name, tmp) == 0 && tmp->has_map) {
            *c = tmp;
        } else {
            *out = cl_error("unavailable", "collection '%s' has no shard map yet", name);
            return 503;
        }
    }
    return 0;
}

/* The start of every routed call: the snapshot (a reference), and the collection with its
 * map (c, pointing into the snapshot or into tmp). 0, or an HTTP status with *out set and
 * nothing held; end() releases what begin() took. */
typedef struct {
    cl_snapshot *s;
    const cl_coll *c;
    cl_coll *tmp;
} routed;

static int begin(nl_cluster *cl, const char *name, routed *rt, json_t **out)
{
    rt->s = cl_snap_get(cl);
    if (rt->s->nnodes == 0) { /* starting: membership not read yet (a registered node sees itself) */
        cl_snap_put(cl, rt->s);
        *out = cl_error("not_ready", "node %s has not read the cluster's membership yet; try another node or again",
                        cl->node_id);
        if (*out)
            json_object_set_new(*out, "applied", json_false());
        return 503;
    }
    rt->tmp = malloc(sizeof *rt->tmp);
    int st = rt->tmp ? coll_of(cl, rt->s, name, &rt->c, rt->tmp, out) : 500;
    if (st) {
        if (!rt->tmp)
            *out = cl_error("internal", "out of memory");
        if (st == 503 && *out) /* refused before routing: nothing was applied */
            json_object_set_new(*out, "applied", json_false());
        free(rt->tmp);
        cl_snap_put(cl, rt->s);
    }
    return st;
}

static void end(nl_cluster *cl, routed *rt)
{
    free(rt->tmp);
    cl_snap_put(cl, rt->s);
}

/* Fills call k for shard s of c: its primary's URL, or returns -1 when the primary is not
 * a live node (no call is made: the shard is missing at once). */
static int target(const cl_snapshot *s, const cl_coll *c, uint32_t sh, nl_peer_call *k, char *url, size_t cap)
{
    const nl_node_info *n = cl_snap_node(s, c->map.shard[sh].primary);
    if (!n || c->map.shard[sh].state == NL_SHARD_OFFLINE)
        return -1;
    memset(k, 0, sizeof *k);
    k->peer = n->id;
    cl_node_url(n, url, cap);
    k->base_url = url;
    return 0;
}

/* A read's call for shard sh of c: to an in-sync replica on a live node whose breaker is
 * not open, the one with the fewest calls in flight (ties broken by a rotating start, so
 * equal replicas share the load), with the next best as the alternative the router
 * hedges to after the chosen peer's p95 latency, or fails over to. -1 when no in-sync
 * replica is live. url and alt_url: cap bytes each. */
static int read_target(nl_cluster *cl, const cl_snapshot *s, const cl_coll *c, uint32_t sh, nl_peer_call *k, char *url,
                       char *alt_url, size_t cap)
{
    const nl_shard_entry *e = &c->map.shard[sh];
    if (e->state == NL_SHARD_OFFLINE)
        return -1;
    static atomic_uint spin;
    unsigned start = atomic_fetch_add(&spin, 1);
    const nl_node_info *best[2] = {NULL, NULL};
    uint64_t score[2] = {UINT64_MAX, UINT64_MAX};
    for (uint32_t i = 0; i < e->nin_sync; i++) {
        const char *id = e->in_sync[(start + i) % e->nin_sync];
        const nl_node_info *n = cl_snap_node(s, id);
        if (!n)
            continue;
        /* an open breaker ranks last but still counts: better than nothing */
        uint64_t sc = (uint64_t)nl_peer_inflight(cl->peers, id) + (nl_peer_breaker(cl->peers, id) == 1 ? 1000000 : 0);
        if (sc < score[0]) {
            best[1] = best[0];
            score[1] = score[0];
            best[0] = n;
            score[0] = sc;
        } else if (sc < score[1]) {
            best[1] = n;
            score[1] = sc;
        }
    }
    if (!best[0])
        return -1;
    memset(k, 0, sizeof *k);
    k->peer = best[0]->id;
    cl_node_url(best[0], url, cap);
    k->base_url = url;
    if (best[1]) {
        k->alt_peer = best[1]->id;
        cl_node_url(best[1], alt_url, cap);
        k->alt_base_url = alt_url;
        /* the hedge waits the p95 of the faster of the two: a replica that has become
         * slow is not waited for as long as its own slowness */
        uint32_t h0 = nl_peer_hedge_ms(cl->peers, best[0]->id), h1 = nl_peer_hedge_ms(cl->peers, best[1]->id);
        k->hedge_ms = h0 < h1 ? h0 : h1;
    }
    return 0;
}

/* A peer's 4xx that blames the request (every shard would say the same), as opposed to
 * the peer: 401/403 mean the nodes disagree on the cluster key, 404 that a shard is not
 * there; those are the shard's failure, reported as missing. */
static int request_fault(int status) { return status >= 400 && status < 500 && status != 401 && status != 403 && status != 404; }

static uint32_t timeout_of(const nl_cluster_call *call) { return call->timeout_ms ? call->timeout_ms : DEFAULT_TIMEOUT_MS; }

/* Error codes of a peer's 503 that applied nothing (server.c's refusals). */
static int refusal_code(const char *code)
{
    return code && (!strcmp(code, "refused") || !strcmp(code, "overloaded") || !strcmp(code, "not_ready") ||
                    !strcmp(code, "shutting_down"));
}

/* Whether a failed call certainly applied nothing: it was never sent (the peer's breaker
 * was open) or the peer refused it before ordering it (a refusal code, or "applied":
 * false). A timeout or a dropped connection may have applied it, and so may a refused
 * connection: libcurl sends a request on a kept-alive connection and, when that dies
 * before any answer, connects again and reports only the second try's failure; the first
 * may have been applied by a node killed right after (the 20-round schedule caught a write
 * reported "applied": false that every replica held). */
static int call_refused(const nl_peer_call *k)
{
    if (!k->status)
        return k->err == NL_EUNAVAILABLE;
    if (k->status != 503 || !k->body_out_len)
        return 0;
    int refused = 0;
    if (k->body_out[0] == '{') {
        json_error_t je;
        json_t *j = json_loadb(k->body_out, k->body_out_len, 0, &je);
        const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
        refused = refusal_code(code) || json_is_false(json_object_get(j, "applied"));
        json_decref(j);
    } else {
        Nearline__Error *e = nearline__error__unpack(NULL, k->body_out_len, (const uint8_t *)k->body_out);
        refused = e && (refusal_code(e->code) || e->not_applied);
        if (e)
            nearline__error__free_unpacked(e, NULL);
    }
    return refused;
}

/* Why a call failed, in words. */
static void call_error(const nl_peer_call *k, char *buf, size_t cap)
{
    if (k->status == 401 || k->status == 403) {
        snprintf(buf, cap, "HTTP %d: the node refused this node's cluster key (check --cluster-key on both)", k->status);
    } else if (k->status && k->body_out_len && k->body_out[0] == '{') { /* a JSON error (before routing) */
        json_error_t je;
        json_t *j = json_loadb(k->body_out, k->body_out_len, 0, &je);
        const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
        snprintf(buf, cap, "HTTP %d%s%s", k->status, m ? ": " : "", m ? m : "");
        json_decref(j);
    } else if (k->status) {
        Nearline__Error *e = nearline__error__unpack(NULL, k->body_out_len, (const uint8_t *)k->body_out);
        snprintf(buf, cap, "HTTP %d%s%s", k->status, e && e->message ? ": " : "", e && e->message ? e->message : "");
        if (e)
            nearline__error__free_unpacked(e, NULL);
    } else {
        snprintf(buf, cap, "%s", k->err == -ETIMEDOUT ? "no answer within the deadline"
                                 : k->err == NL_EUNAVAILABLE ? "circuit breaker open (the node failed recently)"
                                 : k->err == -ECONNREFUSED ? "connection refused" : "node unreachable");
    }
}

static void id_pb(const nl_id *id, Nearline__Id *p)
{
    nearline__id__init(p);
    if (id->is_str) {
        p->kind_case = NEARLINE__ID__KIND_STR;
        /* protobuf strings are C strings here: ids with NUL bytes cannot travel (the JSON
         * API cannot carry them either) */
        p->str = strndup(id->str, id->len);
    } else {
        p->kind_case = NEARLINE__ID__KIND_NUM;
        p->num = id->num;
    }
}

static void id_pb_free(Nearline__Id *p)
{
    if (p->kind_case == NEARLINE__ID__KIND_STR)
        free(p->str);
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len ? *len : 1);
    if (b)
        protobuf_c_message_pack(m, b);
    return b;
}

/* ---------------------------------------------------------------- writes */

typedef struct {
    size_t *idx; /* the batch's entries for this shard */
    size_t n;
} part;

/* The answer of a write fanned out over parts: 200 when all parts succeeded; otherwise
 * 503 (or the parts' common 4xx) with "failed_shards". */
static int write_answer(nl_cluster *cl, nl_peer_call *calls, uint32_t *shard_of_call, const uint8_t *maybe, size_t ncalls,
                        const uint32_t *unreach, size_t nunreach, const char *count_key, int is_delete, json_t **out)
{
    uint64_t done = 0;
    json_t *failed = json_array();
    int status4xx = 0, all4xx = 1;
    for (size_t i = 0; i < ncalls; i++) {
        nl_peer_call *k = &calls[i];
        if (k->status == 200) {
            if (is_delete) {
                Nearline__DeleteResponse *d = nearline__delete_response__unpack(NULL, k->body_out_len, (uint8_t *)k->body_out);
                if (d) done += d->deleted, nearline__delete_response__free_unpacked(d, NULL);
            } else {
                Nearline__UpsertResponse *u = nearline__upsert_response__unpack(NULL, k->body_out_len, (uint8_t *)k->body_out);
                if (u) done += u->upserted, nearline__upsert_response__free_unpacked(u, NULL);
            }
            continue;
        }
        char why[600];
        call_error(k, why, sizeof why);
        if (request_fault(k->status))
            status4xx = k->status;
        else
            all4xx = 0;
        /* "applied": false when the part certainly applied nothing; absent when it may have */
        json_t *f = json_pack("{s:i,s:s,s:s}", "shard", (int)shard_of_call[i], "node", k->peer, "error", why);
        if (f && !request_fault(k->status) && call_refused(k) && !maybe[i])
            json_object_set_new(f, "applied", json_false());
        json_array_append_new(failed, f);
    }
    for (size_t i = 0; i < nunreach; i++) {
        all4xx = 0;
        json_array_append_new(failed, json_pack("{s:i,s:s,s:b}", "shard", (int)unreach[i], "error",
                                                "the shard's primary is not a live node", "applied", 0));
    }
    size_t nf = json_array_size(failed);
    atomic_fetch_add(&cl->write_part_failures, nf);
    if (nf == 0) {
        json_decref(failed);
        *out = json_pack("{s:I}", count_key, (json_int_t)done);
        return 200;
    }
    int st = all4xx && status4xx ? status4xx : 503;
    *out = json_pack("{s:{s:s,s:s},s:I,s:o}", "error", "code", st == 503 ? "shards_unavailable" : "bad_request",
                     "message", st == 503 ? "some shards did not apply their part; retrying the same request is safe"
                                          : "a shard refused its part",
                     count_key, (json_int_t)done, "failed_shards", failed);
    return st;
}

/* The per-shard parts of one write: a call (and its body) per shard that has a part and a
 * live primary, the shards that have none. */
typedef struct {
    nl_peer_call *calls;
    char (*url)[200];
    uint32_t *sc;     /* the shard of each call */
    uint8_t **bodies;
    size_t nc;
    uint32_t unreach[NL_MAX_SHARDS];
    size_t nun;
    char name[72];          /* the collection */
    char (*peer)[NL_NODE_ID_MAX]; /* the node each call went to last (a retry's own) */
    uint8_t *maybe;   /* 1: an earlier try of this part may have applied it (a retry's
                       * refusal then does not make the part "applied": false) */
} parts;

static int parts_init(parts *w, uint32_t S)
{
    memset(w, 0, sizeof *w);
    w->calls = calloc(S, sizeof *w->calls);
    w->url = calloc(S, 200);
    w->sc = calloc(S, sizeof *w->sc);
    w->bodies = calloc(S, sizeof *w->bodies);
    w->peer = calloc(S, sizeof *w->peer);
    w->maybe = calloc(S, 1);
    return w->calls && w->url && w->sc && w->bodies && w->peer && w->maybe ? 0 : -ENOMEM;
}

/* Shard sh's call (to its primary), or 0 when it has no live primary (noted unreachable). */
static nl_peer_call *parts_add(parts *w, const cl_snapshot *s, const cl_coll *c, uint32_t sh)
{
    if (target(s, c, sh, &w->calls[w->nc], w->url[w->nc], 200) != 0) {
        w->unreach[w->nun++] = sh;
        return NULL;
    }
    w->sc[w->nc] = sh;
    return &w->calls[w->nc];
}

/* Sets the body and path of the call parts_add returned, and counts it. */
static void parts_commit(parts *w, uint8_t *body, size_t len, const char *name, const char *what)
{
    nl_peer_call *k = &w->calls[w->nc];
    snprintf(w->name, sizeof w->name, "%s", name);
    k->method = "POST";
    snprintf(k->path, sizeof k->path, "/internal/v1/collections/%s/shards/%u/%s", name, w->sc[w->nc], what);
    w->bodies[w->nc] = body;
    k->body = body;
    k->body_len = len;
    w->nc++;
}

/* Parts refused (503) by a node the map, read again now, no longer names as the shard's
 * primary (a move handed the role over, or a failover) are sent once more to the primary it
 * names: upserts replace and deletes of ids are idempotent, so a part applied twice is the
 * same as once. A 503 from the node that still is primary (no quorum in time) is left as
 * it is: the client decides. */
static void parts_retry_moved(nl_cluster *cl, parts *w, const nl_cluster_call *call, uint32_t timeout_ms)
{
    size_t idx[NL_MAX_SHARDS], n = 0;
    for (size_t i = 0; i < w->nc && n < NL_MAX_SHARDS; i++)
        if (w->calls[i].status == 503)
            idx[n++] = i;
    if (!n || !w->name[0])
        return;
    cl_coll *f = malloc(sizeof *f);
    nl_peer_call *rc = calloc(n, sizeof *rc);
    size_t which[NL_MAX_SHARDS], nr = 0;
    if (!f || !rc || cl_fresh_coll(cl, w->name, f) != 0 || !f->has_map) {
        free(rc);
        free(f);
        return;
    }
    cl_snapshot *sn = cl_snap_get(cl);
    for (size_t j = 0; j < n; j++) {
        size_t i = idx[j];
        uint32_t sh = w->sc[i];
        if (sh >= f->map.nshards || !w->calls[i].peer || !strcmp(f->map.shard[sh].primary, w->calls[i].peer))
            continue;
        if (target(sn, f, sh, &rc[nr], w->url[i], 200) != 0)
            continue;
        memcpy(w->peer[i], rc[nr].peer, NL_NODE_ID_MAX);
        rc[nr].peer = w->peer[i];
        rc[nr].method = w->calls[i].method;
        memcpy(rc[nr].path, w->calls[i].path, sizeof rc[nr].path);
        rc[nr].body = w->calls[i].body;
        rc[nr].body_len = w->calls[i].body_len;
        which[nr++] = i;
    }
    cl_snap_put(cl, sn);
    if (nr) {
        atomic_fetch_add(&cl->write_retries, nr);
        nl_peer_run(cl->peers, rc, nr, timeout_ms, call->request_id, call->traceparent);
        for (size_t j = 0; j < nr; j++) {
            nl_peer_call *k = &w->calls[which[j]];
            if (!call_refused(k)) /* the first try's 503 may have been applied */
                w->maybe[which[j]] = 1;
            free(k->body_out);
            *k = rc[j];
            k->base_url = w->url[which[j]];
        }
    }
    free(rc);
    free(f);
}

/* Sends every part in parallel and makes the answer (write_answer). */
static int parts_send(nl_cluster *cl, parts *w, const nl_cluster_call *call, uint32_t timeout_ms, int oom,
                      const char *count_key, int is_delete, json_t **out)
{
    if (oom) {
        *out = cl_error("internal", "out of memory");
        return 500;
    }
    atomic_fetch_add(&cl->fanout_calls, 1);
    atomic_fetch_add(&cl->fanout_shards, w->nc);
    nl_peer_run(cl->peers, w->calls, w->nc, timeout_ms, call->request_id, call->traceparent);
    parts_retry_moved(cl, w, call, timeout_ms);
    return write_answer(cl, w->calls, w->sc, w->maybe, w->nc, w->unreach, w->nun, count_key, is_delete, out);
}

static void parts_free(parts *w)
{
    for (size_t i = 0; w->calls && w->bodies && i < w->nc; i++) {
        free(w->bodies[i]);
        free(w->calls[i].body_out);
    }
    free(w->bodies);
    free(w->peer);
    free(w->maybe);
    free(w->sc);
    free(w->url);
    free(w->calls);
}

/* The UpsertRequest of the points of pts[] whose shard (of[]) is sh; NULL when out of memory. */
static uint8_t *upsert_body(const nl_point *pts, const uint32_t *of, size_t n, size_t cnt, uint32_t sh, size_t *len)
{
    Nearline__UpsertRequest m = NEARLINE__UPSERT_REQUEST__INIT;
    Nearline__Vector *vs = calloc(cnt, sizeof *vs), **vp = calloc(cnt, sizeof *vp);
    Nearline__Id *ids = calloc(cnt, sizeof *ids);
    size_t m_n = 0;
    for (size_t i = 0; vs && vp && ids && i < n; i++) {
        if (of[i] != sh)
            continue;
        Nearline__Vector *v = &vs[m_n];
        nearline__vector__init(v);
        id_pb(&pts[i].id, &ids[m_n]);
        v->id = &ids[m_n];
        v->n_values = pts[i].dim;
        v->values = (float *)pts[i].vector;
        v->metadata = pts[i].metadata ? strndup(pts[i].metadata, pts[i].metadata_len) : (char *)"";
        vp[m_n++] = v;
    }
    m.n_points = m_n;
    m.points = vp;
    uint8_t *body = vs && vp && ids ? pack(&m.base, len) : NULL;
    for (size_t i = 0; vs && ids && i < m_n; i++) {
        id_pb_free(&ids[i]);
        if (vs[i].metadata && *vs[i].metadata)
            free(vs[i].metadata);
    }
    free(vs);
    free(vp);
    free(ids);
    return body;
}

int nl_cluster_upsert(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_point *pts, size_t n,
                      json_t **out)
{
    routed rt;
    int st = begin(cl, name, &rt, out);
    if (st)
        return st;
    uint32_t S = rt.c->map.nshards;
    uint32_t *of = malloc(sizeof *of * (n ? n : 1));
    size_t cnt[NL_MAX_SHARDS] = {0};
    for (size_t i = 0; of && i < n; i++)
        cnt[of[i] = nl_shard_of(&pts[i].id, S)]++;
    parts w;
    int oom = parts_init(&w, S) != 0 || !of;
    for (uint32_t sh = 0; !oom && sh < S; sh++) {
        if (!cnt[sh] || !parts_add(&w, rt.s, rt.c, sh))
            continue;
        size_t len = 0;
        uint8_t *body = upsert_body(pts, of, n, cnt[sh], sh, &len);
        oom = !body;
        parts_commit(&w, body, len, name, "points");
    }
    st = parts_send(cl, &w, call, timeout_of(call), oom, "upserted", 0, out);
    parts_free(&w);
    free(of);
    end(cl, &rt);
    return st;
}

int nl_cluster_delete(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_id *ids, size_t n,
                      const char *filter_json, json_t **out)
{
    routed rt;
    int st = begin(cl, name, &rt, out);
    if (st)
        return st;
    uint32_t S = rt.c->map.nshards;
    size_t cnt[NL_MAX_SHARDS] = {0};
    for (size_t i = 0; ids && i < n; i++)
        cnt[nl_shard_of(&ids[i], S)]++;
    parts w;
    int oom = parts_init(&w, S) != 0;
    for (uint32_t sh = 0; !oom && sh < S; sh++) {
        if ((ids && !cnt[sh]) || !parts_add(&w, rt.s, rt.c, sh))
            continue;
        Nearline__DeleteRequest m = NEARLINE__DELETE_REQUEST__INIT;
        Nearline__Id *pid = ids ? calloc(cnt[sh], sizeof *pid) : NULL, **pp = ids ? calloc(cnt[sh], sizeof *pp) : NULL;
        size_t k = 0;
        for (size_t i = 0; ids && pid && pp && i < n; i++)
            if (nl_shard_of(&ids[i], S) == sh) {
                id_pb(&ids[i], &pid[k]);
                pp[k] = &pid[k];
                k++;
            }
        m.n_ids = k;
        m.ids = pp;
        m.filter = filter_json && !ids ? (char *)filter_json : (char *)"";
        size_t len = 0;
        uint8_t *body = !ids || (pid && pp) ? pack(&m.base, &len) : NULL;
        oom = !body;
        for (size_t i = 0; pid && i < k; i++)
            id_pb_free(&pid[i]);
        free(pid);
        free(pp);
        parts_commit(&w, body, len, name, "points/delete");
    }
    /* a delete by filter scans every shard: it gets longer */
    st = parts_send(cl, &w, call, filter_json ? 10 * timeout_of(call) : timeout_of(call), oom, "deleted", 1, out);
    parts_free(&w);
    end(cl, &rt);
    return st;
}

/* ---------------------------------------------------------------- get */

int nl_cluster_get(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_id *id, json_t **out)
{
    routed rt;
    int st = begin(cl, name, &rt, out);
    if (st)
        return st;
    uint32_t sh = nl_shard_of(id, rt.c->map.nshards);
    nl_peer_call k;
    char url[200], alt_url[200];
    if (read_target(cl, rt.s, rt.c, sh, &k, url, alt_url, sizeof url) != 0) {
        *out = json_pack("{s:{s:s,s:s},s:[i]}", "error", "code", "shards_unavailable", "message",
                         "no in-sync replica of the point's shard is a live node", "missing_shards", (int)sh);
        end(cl, &rt);
        return 503;
    }
    char *esc = NULL;
    if (id->is_str) {
        CURL *e = curl_easy_init();
        esc = e ? curl_easy_escape(e, id->str, (int)id->len) : NULL;
        if (e)
            curl_easy_cleanup(e);
        snprintf(k.path, sizeof k.path, "/internal/v1/collections/%s/shards/%u/points/%s?id_type=string", name, sh,
                 esc ? esc : "");
        curl_free(esc);
    } else {
        snprintf(k.path, sizeof k.path, "/internal/v1/collections/%s/shards/%u/points/%llu", name, sh,
                 (unsigned long long)id->num);
    }
    k.method = "GET";
    nl_peer_run(cl->peers, &k, 1, timeout_of(call), call->request_id, call->traceparent);
    json_error_t je;
    json_t *j = k.status ? json_loadb(k.body_out ? k.body_out : "", k.body_out_len, 0, &je) : NULL;
    if (k.status && j) {
        *out = j;
        st = k.status;
    } else {
        char why[600];
        call_error(&k, why, sizeof why);
        *out = json_pack("{s:{s:s,s:s},s:[i]}", "error", "code", "shards_unavailable", "message", why,
                         "missing_shards", (int)sh);
        json_decref(j);
        st = 503;
    }
    free(k.body_out);
    end(cl, &rt);
    return st;
}

/* ---------------------------------------------------------------- search */

typedef struct {
    int is_str;
    uint64_t num;
    const char *str; /* into the decoded message */
    float score;
    const char *meta;
} cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? -1 : 1;
    if (x->is_str != y->is_str)
        return x->is_str ? 1 : -1;
    if (!x->is_str)
        return x->num < y->num ? -1 : x->num > y->num;
    return strcmp(x->str, y->str);
}

/* The candidates of query qi from every part (each the answer of one shard, or NULL),
 * sorted; returns how many. cs has room for nc x k. */
static size_t gather(const Nearline__SearchResponse **part, size_t nc, size_t nq, size_t qi, uint32_t k, cand *cs)
{
    size_t n = 0;
    for (size_t i = 0; i < nc; i++) {
        const Nearline__SearchResponse *r = part[i * nq + qi];
        for (size_t h = 0; r && h < r->n_results && h < k; h++) {
            const Nearline__SearchResult *x = r->results[h];
            if (!x->id)
                continue;
            cand *y = &cs[n++];
            y->is_str = x->id->kind_case == NEARLINE__ID__KIND_STR;
            y->num = y->is_str ? 0 : x->id->num;
            y->str = y->is_str ? x->id->str : NULL;
            y->score = x->score;
            y->meta = x->metadata;
        }
    }
    qsort(cs, n, sizeof *cs, cand_cmp);
    return n;
}

/* The second round of a scaled search: a shard that answered ks results of which the last
 * still scores within the merged k best may hold more of them (more than ks of the k
 * nearest fell in it, or its walk with the smaller list missed some): it is asked again,
 * for those queries only, with the whole k and L, and its new answers replace its first
 * ones in part (kept alive in again[], nc entries, freed by the caller). Adds the reads to
 * ios. Returns how many shards were asked again. */
static size_t requery(nl_cluster *cl, const nl_cluster_call *call, const routed *rt, const char *name,
                      const Nearline__SearchRequest *rq, size_t nq, const uint32_t *sc, size_t nc, uint32_t ks,
                      const nl_cluster_search_params *p, const Nearline__SearchResponse **part, uint64_t *ios, cand *cs,
                      Nearline__BatchSearchResponse **again)
{
    uint8_t *need = calloc(nc * nq, 1);
    size_t *count = calloc(nc, sizeof *count), asked = 0;
    nl_peer_call *calls = calloc(nc, sizeof *calls);
    char (*url)[200] = calloc(2 * nc, 200);
    uint8_t **body = calloc(nc, sizeof *body);
    size_t *who = calloc(nc, sizeof *who), ncalls = 0;
    Nearline__SearchRequest *sub = calloc(nq, sizeof *sub), **subp = calloc(nq, sizeof *subp);
    if (!need || !count || !calls || !url || !body || !who || !sub || !subp)
        goto done;
    for (size_t qi = 0; qi < nq; qi++) {
        size_t n = gather(part, nc, nq, qi, p->k, cs);
        float tau = n >= p->k ? cs[p->k - 1].score : INFINITY;
        for (size_t i = 0; i < nc; i++) {
            const Nearline__SearchResponse *r = part[i * nq + qi];
            if (r && r->n_results >= ks && r->results[ks - 1]->score <= tau) {
                need[i * nq + qi] = 1;
                count[i]++;
            }
        }
    }
    for (size_t i = 0; i < nc; i++) {
        if (!count[i] || read_target(cl, rt->s, rt->c, sc[i], &calls[ncalls], url[2 * ncalls], url[2 * ncalls + 1],
                                     200) != 0)
            continue;
        size_t m = 0;
        for (size_t qi = 0; qi < nq; qi++)
            if (need[i * nq + qi]) {
                sub[m] = rq[qi];
                sub[m].k = p->k;
                sub[m].l = p->L;
                subp[m] = &sub[m];
                m++;
            }
        Nearline__BatchSearchRequest b = NEARLINE__BATCH_SEARCH_REQUEST__INIT;
        b.n_queries = m;
        b.queries = subp;
        size_t len = 0;
        if (!(body[ncalls] = pack(&b.base, &len)))
            continue;
        calls[ncalls].method = "POST";
        snprintf(calls[ncalls].path, sizeof calls[ncalls].path, "/internal/v1/collections/%s/shards/%u/search/batch",
                 name, sc[i]);
        calls[ncalls].body = body[ncalls];
        calls[ncalls].body_len = len;
        who[ncalls++] = i;
    }
    if (!ncalls)
        goto done;
    nl_peer_run(cl->peers, calls, ncalls, timeout_of(call), call->request_id, call->traceparent);
    for (size_t c = 0; c < ncalls; c++) {
        size_t i = who[c];
        Nearline__BatchSearchResponse *r =
            calls[c].status == 200
                ? nearline__batch_search_response__unpack(NULL, calls[c].body_out_len, (uint8_t *)calls[c].body_out)
                : NULL;
        if (!r || r->n_responses != count[i]) { /* the first answer stands */
            if (r)
                nearline__batch_search_response__free_unpacked(r, NULL);
            continue;
        }
        again[i] = r;
        asked++;
        for (size_t qi = 0, j = 0; qi < nq; qi++)
            if (need[i * nq + qi]) {
                part[i * nq + qi] = r->responses[j];
                ios[qi] += r->responses[j++]->ios;
            }
    }
    atomic_fetch_add(&cl->fanout_requeries, ncalls);
done:
    for (size_t c = 0; calls && c < ncalls; c++)
        free(calls[c].body_out);
    for (size_t c = 0; body && c < nc; c++)
        free(body[c]);
    free(need);
    free(count);
    free(calls);
    free(url);
    free(body);
    free(who);
    free(sub);
    free(subp);
    return asked;
}

static json_t *cand_json(const cand *c, int with_meta)
{
    json_t *o = json_pack("{s:o,s:f}", "id", c->is_str ? json_string(c->str) : json_integer((json_int_t)c->num),
                          "score", (double)c->score);
    if (with_meta) {
        json_error_t e;
        json_t *m = c->meta && *c->meta ? json_loads(c->meta, 0, &e) : NULL;
        json_object_set_new(o, "metadata", m ? m : json_null());
    }
    return o;
}

int nl_cluster_search(nl_cluster *cl, const nl_cluster_call *call, const char *name, const float *q, size_t nq,
                      uint32_t dim, const nl_cluster_search_params *p, int batch, json_t **out)
{
    uint64_t t0 = nl_now_ns();
    routed rt;
    int st = begin(cl, name, &rt, out);
    if (st)
        return st;
    uint32_t S = rt.c->map.nshards;
    uint32_t ks = p->k, Ls = p->L;
    int scaled = S > 1 && !call->per_shard_full;
    if (scaled)
        nl_shard_map_budget(p->k, p->L, S, &ks, &Ls);
    /* one request, the same for every shard */
    Nearline__BatchSearchRequest m = NEARLINE__BATCH_SEARCH_REQUEST__INIT;
    Nearline__SearchRequest *rq = calloc(nq, sizeof *rq), **rp = calloc(nq, sizeof *rp);
    nl_peer_call *calls = calloc(S, sizeof *calls);
    char (*url)[200] = calloc(2 * (size_t)S, 200);
    uint32_t *sc = calloc(S, sizeof *sc), missing[NL_MAX_SHARDS];
    Nearline__BatchSearchResponse **resp = calloc(S, sizeof *resp), **again = calloc(S, sizeof *again);
    const Nearline__SearchResponse **part = calloc((size_t)S * (nq ? nq : 1), sizeof *part);
    uint64_t *ios = calloc(nq ? nq : 1, sizeof *ios);
    uint8_t *body = NULL;
    size_t len = 0, nc = 0, nmiss = 0;
    if (!rq || !rp || !calls || !url || !sc || !resp || !again || !part || !ios) {
        *out = cl_error("internal", "out of memory");
        st = 500;
        goto done;
    }
    for (size_t i = 0; i < nq; i++) {
        nearline__search_request__init(&rq[i]);
        rq[i].n_query = dim;
        rq[i].query = (float *)(q + i * dim);
        rq[i].k = ks;
        rq[i].l = Ls;
        rq[i].beam = p->W;
        rq[i].plan = p->plan;
        rq[i].segments = p->segments_each ? 1 : 0;
        rq[i].without_metadata = !p->with_meta;
        const char *f = p->filters_json ? p->filters_json[i] : p->filter_json;
        rq[i].filter = f ? (char *)f : (char *)"";
        rp[i] = &rq[i];
    }
    m.n_queries = nq;
    m.queries = rp;
    body = pack(&m.base, &len);
    if (!body) {
        *out = cl_error("internal", "out of memory");
        st = 500;
        goto done;
    }
    for (uint32_t sh = 0; sh < S; sh++) {
        if (read_target(cl, rt.s, rt.c, sh, &calls[nc], url[2 * nc], url[2 * nc + 1], 200) != 0) {
            missing[nmiss++] = sh;
            continue;
        }
        calls[nc].method = "POST";
        snprintf(calls[nc].path, sizeof calls[nc].path, "/internal/v1/collections/%s/shards/%u/search/batch", name, sh);
        calls[nc].body = body;
        calls[nc].body_len = len;
        sc[nc++] = sh;
    }
    atomic_fetch_add(&cl->fanout_calls, 1);
    atomic_fetch_add(&cl->fanout_shards, nc);
    nl_peer_run(cl->peers, calls, nc, timeout_of(call), call->request_id, call->traceparent);
    for (size_t i = 0; i < nc; i++)
        if (calls[i].hedged)
            atomic_fetch_add(&cl->hedged, 1);
    char firstwhy[600] = {0};
    int client_err = 0;
    for (size_t i = 0; i < nc; i++) {
        if (calls[i].status == 200)
            resp[i] = nearline__batch_search_response__unpack(NULL, calls[i].body_out_len, (uint8_t *)calls[i].body_out);
        if (request_fault(calls[i].status) && !client_err) {
            client_err = calls[i].status;
            call_error(&calls[i], firstwhy, sizeof firstwhy);
        }
        if (!resp[i] || resp[i]->n_responses != nq) {
            if (resp[i]) {
                nearline__batch_search_response__free_unpacked(resp[i], NULL);
                resp[i] = NULL;
            }
            missing[nmiss++] = sc[i];
            if (!firstwhy[0])
                call_error(&calls[i], firstwhy, sizeof firstwhy);
        }
    }
    if (client_err) { /* the request itself is bad (every shard says the same): a 4xx */
        *out = cl_error("bad_request", "%s", firstwhy);
        st = client_err;
        goto done;
    }
    json_t *miss = json_array();
    for (size_t i = 0; i < nmiss; i++)
        json_array_append_new(miss, json_integer(missing[i]));
    if (nmiss && call->require_complete) {
        atomic_fetch_add(&cl->complete_refusals, 1);
        *out = json_pack("{s:{s:s,s:s},s:o}", "error", "code", "shards_unavailable", "message",
                         "some shards did not answer and the request requires every shard", "missing_shards", miss);
        st = 503;
        goto done;
    }
    if (nmiss)
        atomic_fetch_add(&cl->partial_answers, 1);
    json_t *all = json_array();
    cand *cs = malloc(sizeof *cs * (S * (size_t)p->k + 1));
    if (!cs) {
        json_decref(all);
        json_decref(miss);
        *out = cl_error("internal", "out of memory");
        st = 500;
        goto done;
    }
    for (size_t i = 0; i < nc; i++)
        for (size_t qi = 0; resp[i] && qi < nq; qi++) {
            part[i * nq + qi] = resp[i]->responses[qi];
            ios[qi] += resp[i]->responses[qi]->ios;
        }
    if (scaled && ks < p->k)
        requery(cl, call, &rt, name, rq, nq, sc, nc, ks, p, part, ios, cs, again);
    json_t *ios_all = json_array();
    for (size_t qi = 0; qi < nq; qi++) {
        size_t nca = gather(part, nc, nq, qi, p->k, cs);
        json_t *a = json_array();
        for (size_t h = 0; h < nca && h < p->k; h++)
            json_array_append_new(a, cand_json(&cs[h], p->with_meta));
        json_array_append_new(all, a);
        json_array_append_new(ios_all, json_integer((json_int_t)ios[qi]));
    }
    free(cs);
    json_int_t took = (json_int_t)((nl_now_ns() - t0) / 1000);
    if (batch) {
        *out = json_pack("{s:o,s:I,s:o,s:b,s:o}", "results", all, "took_us", took, "ios", ios_all, "partial", nmiss > 0,
                         "missing_shards", miss);
    } else {
        json_t *one = json_incref(json_array_get(all, 0));
        json_decref(all);
        *out = json_pack("{s:o,s:I,s:I,s:b,s:o}", "results", one ? one : json_array(), "took_us", took, "ios",
                         (json_int_t)ios[0], "partial", nmiss > 0, "missing_shards", miss);
        json_decref(ios_all);
    }
    if (nmiss) /* why the first missing shard is missing: for the operator */
        json_object_set_new(*out, "missing_reason",
                            json_string(firstwhy[0] ? firstwhy : "no in-sync replica of the shard is a live node"));
    st = 200;
done:
    for (size_t i = 0; resp && i < nc; i++)
        if (resp[i])
            nearline__batch_search_response__free_unpacked(resp[i], NULL);
    for (size_t i = 0; again && i < nc; i++)
        if (again[i])
            nearline__batch_search_response__free_unpacked(again[i], NULL);
    free(again);
    free(part);
    free(ios);
    for (size_t i = 0; calls && i < nc; i++)
        free(calls[i].body_out);
    free(body);
    free(resp);
    free(sc);
    free(url);
    free(calls);
    free(rp);
    free(rq);
    end(cl, &rt);
    return st;
}

/* ---------------------------------------------------------------- describe */

int nl_cluster_describe(nl_cluster *cl, const nl_cluster_call *call, const char *name, json_t **out)
{
    routed rt;
    int st = begin(cl, name, &rt, out);
    if (st)
        return st;
    uint32_t S = rt.c->map.nshards;
    nl_peer_call *calls = calloc(S, sizeof *calls);
    char (*url)[200] = calloc(2 * (size_t)S, 200);
    int *callof = calloc(S, sizeof *callof);
    size_t nc = 0;
    for (uint32_t sh = 0; calls && url && callof && sh < S; sh++) {
        callof[sh] = -1;
        if (target(rt.s, rt.c, sh, &calls[nc], url[nc], 200) != 0)
            continue;
        calls[nc].method = "GET";
        snprintf(calls[nc].path, sizeof calls[nc].path, "/internal/v1/collections/%s/shards/%u", name, sh);
        callof[sh] = (int)nc++;
    }
    if (calls && url && callof)
        nl_peer_run(cl->peers, calls, nc, timeout_of(call), call->request_id, call->traceparent);
    const nl_collection_config *g = &rt.c->cc.cfg;
    json_t *shards = json_array(), *miss = json_array();
    json_int_t points = 0, segments = 0, disk = 0, fresh = 0;
    for (uint32_t sh = 0; calls && url && callof && sh < S; sh++) {
        const nl_shard_entry *e = &rt.c->map.shard[sh];
        json_t *reps = json_array(), *ins = json_array();
        for (uint32_t r = 0; r < e->nreplicas; r++)
            json_array_append_new(reps, json_string(e->replicas[r]));
        for (uint32_t r = 0; r < e->nin_sync; r++)
            json_array_append_new(ins, json_string(e->in_sync[r]));
        json_t *o = json_pack("{s:i,s:I,s:s,s:o,s:o,s:s}", "shard", (int)sh, "epoch", (json_int_t)e->epoch, "primary",
                              e->primary, "replicas", reps, "in_sync", ins, "state", nl_shard_state_name(e->state));
        json_error_t je;
        json_t *stj = callof[sh] >= 0 && calls[callof[sh]].status == 200
                          ? json_loadb(calls[callof[sh]].body_out, calls[callof[sh]].body_out_len, 0, &je) : NULL;
        if (stj && json_is_object(json_object_get(stj, "stats"))) {
            json_t *x = json_object_get(stj, "stats");
            points += json_integer_value(json_object_get(x, "points"));
            segments += json_integer_value(json_object_get(x, "segments"));
            disk += json_integer_value(json_object_get(x, "disk_bytes"));
            fresh += json_integer_value(json_object_get(x, "fresh_points"));
            json_object_set(o, "stats", x);
            json_object_set_new(o, "available", json_true());
        } else {
            json_object_set_new(o, "available", json_false());
            json_array_append_new(miss, json_integer(sh));
        }
        json_decref(stj);
        json_array_append_new(shards, o);
    }
    for (size_t i = 0; calls && i < nc; i++)
        free(calls[i].body_out);
    *out = json_pack("{s:s,s:i,s:s,s:s,s:i,s:i,s:s,s:{s:i,s:i,s:f,s:i,s:i},s:i,s:{s:I,s:I,s:I,s:I},s:o,s:b,s:o}",
                     "name", name, "dim", (int)g->dim, "metric", nl_metric_name(g->metric), "dtype",
                     nl_dtype_name(g->dtype), "shards", (int)S, "replicas", (int)rt.c->cc.replicas, "write_quorum",
                     nl_quorum_name(rt.c->cc.write_quorum), "index", "R", (int)g->R, "L", (int)g->L,
                     "alpha", round((double)g->alpha * 1e6) / 1e6, "pq_bytes", (int)g->pq_bytes, "fresh_capacity", (int)g->fresh_capacity,
                     "map_version", (int)rt.c->map.version, "stats", "points", points, "fresh_points", fresh, "segments",
                     segments, "disk_bytes", disk, "shard_map", shards, "partial", json_array_size(miss) > 0,
                     "missing_shards", miss);
    char code[32];
    if (*out)
        json_object_set_new(json_object_get(*out, "index"), "code", json_string(nl_collection_code_name(g, code, sizeof code)));
    free(callof);
    free(url);
    free(calls);
    end(cl, &rt);
    return 200;
}
