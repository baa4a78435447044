/*
 * server.c — the HTTP/JSON API of one node (nl_server.h, docs/api.md) on libmicrohttpd.
 *
 * A request goes through four steps, each of which can end it:
 *   1. admission (first callback): a request id, the start time, a slot among
 *      max_concurrent (none free: 503 + Retry-After, decided after the body is drained);
 *   2. the body, accumulated up to max_body (beyond: 413; the rest is drained, not kept);
 *   3. routing and auth: the path picks an endpoint, the endpoint a minimum role;
 *   4. the endpoint: the body parsed whole with jansson and checked against the
 *      collection (ids, dimensions, k, filters) before a single engine call, which then
 *      applies it all or nothing.
 * The completion callback writes the log line and the metrics and frees the request.
 *
 * Invariants: every response is JSON (errors: {"error":{"code","message","request_id"}})
 * and carries X-Request-Id; a request holds at most one collection handle, closed before
 * the response is queued; nothing here keeps engine state between requests except the
 * database handle.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <malloc.h>
#include <microhttpd.h>

#include "api_proto.h"
#include "nl_cluster.h"
#include "nl_filter.h"
#include "nl_server.h"
#include "nl_util.h"

#include "server_internal.h"

/* libmicrohttpd's own messages, as log lines of ours. */
static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    nl_server *s = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = 0;
    json_t *j = json_string(msg);
    char *q = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    nl_srv_logf(s, NL_LOG_WARN, "\"event\":\"http\",\"message\":%s", q ? q : "\"?\"");
    free(q);
    json_decref(j);
}

/* ---------------------------------------------------------------- routing */

/* Splits path into up to 9 segments (in place in buf); 10 when there are more. */
#define MAXSEG 9
static int split_path(const char *url, char *buf, size_t cap, char **seg)
{
    snprintf(buf, cap, "%s", url);
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, "/", &save); t && n < MAXSEG; t = strtok_r(NULL, "/", &save))
        seg[n++] = t;
    return strtok_r(NULL, "/", &save) ? MAXSEG + 1 : n;
}

/* The points and search endpoints of a collection (seg[0..n) after the collection name);
 * EP_OTHER when none. *need gets the role. */
static int points_endpoint(char **seg, int n, int *need)
{
    *need = ROLE_READ;
    if (n == 1 && !strcmp(seg[0], "points")) return *need = ROLE_WRITE, EP_UPSERT;
    if (n == 2 && !strcmp(seg[0], "points") && !strcmp(seg[1], "delete")) return *need = ROLE_WRITE, EP_DELETE;
    if (n == 2 && !strcmp(seg[0], "points")) return EP_GET;
    if (n == 1 && !strcmp(seg[0], "search")) return EP_SEARCH;
    if (n == 2 && !strcmp(seg[0], "search") && !strcmp(seg[1], "batch")) return EP_SEARCH_BATCH;
    return EP_OTHER;
}

static enum MHD_Result run_endpoint(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r, const char *idtext)
{
    switch (r->endpoint) {
    case EP_UPSERT: return nl_srv_ep_upsert(s, h, c, r);
    case EP_DELETE: return nl_srv_ep_delete(s, h, c, r);
    case EP_GET: return nl_srv_ep_get(s, h, c, r, idtext);
    case EP_SEARCH: return nl_srv_ep_search(s, h, c, r);
    default: return nl_srv_ep_search_batch(s, h, c, r);
    }
}

/* /internal/v1/collections/{c}[/shards/{s}[/...]]: calls between cluster nodes. They
 * carry the cluster key (when one is set) instead of an API key. */
static enum MHD_Result route_internal(nl_server *s, struct MHD_Connection *c, req *r, char **seg, int n,
                                      const char *method)
{
    nl_cluster *cl = s->opt.cluster;
    r->endpoint = EP_INTERNAL;
    if (!cl)
        return nl_srv_send_error(c, r, 404, "not_found", "this node is not in a cluster");
    if (!nl_cluster_key_ok(cl, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Nearline-Cluster-Key")))
        return nl_srv_send_error(c, r, 401, "unauthorized", "internal calls need the cluster key (X-Nearline-Cluster-Key)");
    if (n == 3 && !strcmp(seg[1], "v1") && !strcmp(seg[2], "node")) { /* this node's own report (status.c) */
        if (strcmp(method, "GET"))
            return nl_srv_send_error(c, r, 405, "method_not_allowed", "use GET");
        json_t *out = NULL;
        return nl_srv_send_cluster(c, r, nl_cluster_node_status(cl, &out), &out);
    }
    if (n < 4 || strcmp(seg[1], "v1") || strcmp(seg[2], "collections"))
        return nl_srv_send_error(c, r, 404, "not_found", "no such internal endpoint");
    const char *name = seg[3];
    if (n == 4) {
        if (strcmp(method, "DELETE"))
            return nl_srv_send_error(c, r, 405, "method_not_allowed", "use DELETE");
        int rc = nl_cluster_local_drop(cl, name);
        return rc ? nl_srv_send_engine_error(c, r, rc, "drop local copy") : nl_srv_send_json(c, r, 200, json_pack("{s:s}", "dropped", name));
    }
    char *end;
    unsigned long sh = n >= 6 && !strcmp(seg[4], "shards") ? strtoul(seg[5], &end, 10) : NL_MAX_SHARDS;
    if (sh >= NL_MAX_SHARDS || *end)
        return nl_srv_send_error(c, r, 404, "not_found", "no such internal endpoint");
    nl_collection *h;
    int rc = nl_cluster_local_shard(cl, name, (uint32_t)sh, &h);
    if (rc)
        return rc == NL_EUNAVAILABLE ? nl_srv_send_error(c, r, 503, "unavailable", "%s", nl_errdetail())
               : rc == NL_EREFUSED   ? nl_srv_send_error(c, r, 503, "refused", "%s (nothing was applied)", nl_errdetail())
                                     : nl_srv_send_engine_error(c, r, rc, "shard");
    enum MHD_Result res;
    r->cname = name;
    r->shard = (int)sh;
    nl_collection_describe(h, &r->ccfg);
    int need;
    json_t *out = NULL;
    const char *op = n == 7 ? seg[6] : NULL;
    if (op && nl_cluster_internal_op(op)) {
        /* replication between nodes: decoded and answered by the cluster */
        res = strcmp(method, "POST") ? nl_srv_send_error(c, r, 405, "method_not_allowed", "use POST")
                                     : nl_srv_send_cluster(c, r, nl_cluster_internal_call(cl, h, name, (uint32_t)sh,
                                                                                          op, r->body, r->len, &out),
                                                           &out);
        nl_collection_close(h);
        return res;
    }
    if (n == 6 && strcmp(method, "GET")) {
        res = nl_srv_send_error(c, r, 405, "method_not_allowed", "use GET");
    } else if (n == 6) {
        nl_collection_stats st;
        nl_collection_shard_stats(h, (uint32_t)sh, &st);
        res = nl_srv_send_json(c, r, 200, json_pack("{s:i,s:{s:I,s:I,s:I,s:I,s:I}}", "shard", (int)sh, "stats", "points",
                                             (json_int_t)st.points, "fresh_points", (json_int_t)st.fresh_points,
                                             "segments", (json_int_t)st.segments, "tombstones",
                                             (json_int_t)st.tombstones, "disk_bytes", (json_int_t)st.disk_bytes));
    } else if ((r->endpoint = points_endpoint(seg + 6, n - 6, &need)) == EP_OTHER || r->endpoint == EP_SEARCH) {
        r->endpoint = EP_INTERNAL;
        res = nl_srv_send_error(c, r, 404, "not_found", "no such internal endpoint");
    } else if (strcmp(method, r->endpoint == EP_GET ? "GET" : "POST")) {
        res = nl_srv_send_error(c, r, 405, "method_not_allowed", "wrong method");
    } else if ((r->endpoint == EP_SEARCH_BATCH || r->endpoint == EP_GET) && !nl_cluster_serves_reads(cl, name, (uint32_t)sh)) {
        /* a replica outside the in-sync set may lack acknowledged writes */
        res = nl_srv_send_error(c, r, 503, "not_in_sync", "this node's replica of shard %lu of '%s' is not in sync: it "
                                "serves no reads", sh, name);
        r->endpoint = EP_INTERNAL;
    } else {
        res = run_endpoint(s, h, c, r, n > 7 ? seg[7] : NULL);
        r->endpoint = r->endpoint == EP_SEARCH_BATCH ? EP_INTERNAL_SEARCH : EP_INTERNAL;
    }
    nl_collection_close(h);
    return res;
}

/* The collection endpoints in cluster mode: configs and maps from ZooKeeper, points and
 * searches through the router. */
static enum MHD_Result route_cluster(nl_server *s, struct MHD_Connection *c, req *r, const char *name, char **rest,
                                     int nrest, const char *method)
{
    nl_cluster *cl = s->opt.cluster;
    enum MHD_Result res;
    json_t *out = NULL;
    nl_cluster_call k = {.request_id = r->rid, .traceparent = r->traceparent};
    if (nrest == 0 && r->endpoint == EP_CREATE) {
        json_t *j = nl_srv_parse_body(c, r, &res);
        if (!j)
            return res;
        nl_collection_config cfg;
        uint32_t replicas;
        int quorum;
        if (nl_srv_create_config(s, c, r, j, &cfg, &replicas, &quorum, &res) == 0)
            res = nl_srv_send_cluster(c, r, nl_cluster_create(cl, &k, name, &cfg, replicas, quorum, &out), &out);
        json_decref(j);
        return res;
    }
    if (nrest == 0 && r->endpoint == EP_DROP)
        return nl_srv_send_cluster(c, r, nl_cluster_drop(cl, &k, name, &out), &out);
    if (nrest == 0)
        return nl_srv_send_cluster(c, r, nl_cluster_describe(cl, &k, name, &out), &out);
    int rc = nl_cluster_config(cl, name, &r->ccfg, NULL);
    if (rc)
        return rc == NL_ENOTFOUND ? nl_srv_send_error(c, r, 404, "not_found", "no collection named \"%s\"", name)
                                  : nl_srv_send_engine_error(c, r, rc, "collection");
    r->cname = name;
    return run_endpoint(s, NULL, c, r, nrest > 1 ? rest[1] : NULL);
}

/* What a URL or query argument holding a control byte is unescaped to (route refuses it
 * with 400): libmicrohttpd hands the access handler a NUL-terminated string, so without
 * this "prod%00-staging" would arrive as "prod" and name another collection. */
#define BAD_ESCAPE "/\x7f"

static size_t unescape_strict(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    size_t room = strlen(s) + 1, n = MHD_http_unescape(s);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] == 0x7f) {
            if (room >= sizeof BAD_ESCAPE) {
                memcpy(s, BAD_ESCAPE, sizeof BAD_ESCAPE);
                return sizeof BAD_ESCAPE - 1;
            }
            s[0] = 0x7f; /* a one-byte raw control character: still refused */
            s[1] = '\0';
            return 1;
        }
    return n;
}

static enum MHD_Result route(nl_server *s, struct MHD_Connection *c, req *r, const char *url, const char *method)
{
    if (strchr(url, 0x7f) || strlen(url) >= 2048)
        return nl_srv_send_error(c, r, 400, "bad_request",
                                 strlen(url) >= 2048 ? "the path is too long"
                                                     : "the path holds a control character (NUL, %%00..%%1f or %%7f)");
    char buf[2048];
    char *seg[MAXSEG] = {0};
    int n = split_path(url, buf, sizeof buf, seg);
    int get = !strcmp(method, "GET"), post = !strcmp(method, "POST"), put = !strcmp(method, "PUT"),
        del = !strcmp(method, "DELETE");
    enum MHD_Result res;
    r->shard = -1;
    r->traceparent = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
    if (n == 1 && !strcmp(seg[0], "healthz") && get) {
        r->endpoint = EP_HEALTHZ;
        return nl_srv_send_json(c, r, 200, json_pack("{s:s}", "status", "ok"));
    }
    if (n == 1 && !strcmp(seg[0], "readyz") && get) {
        r->endpoint = EP_READYZ;
        char why[128];
        if (!atomic_load(&s->ready))
            return nl_srv_send_error(c, r, 503, "shutting_down", "the server is shutting down");
        if (s->opt.cluster && !nl_cluster_ready(s->opt.cluster, why, sizeof why))
            return nl_srv_send_error(c, r, 503, "not_ready", "%s", why);
        char failed[400], clean[400];
        uint32_t nf = nl_db_failed_shards(s->db, failed, sizeof failed);
        if (nf) {
            nl_srv_redact_paths(failed, clean, sizeof clean);
            return nl_srv_send_error(c, r, 503, "shard_failed",
                                     "%u shard(s) refuse writes after a failed write to disk and are being reopened; "
                                     "%s", nf, clean);
        }
        return nl_srv_send_json(c, r, 200, json_pack("{s:s}", "status", "ready"));
    }
    if (n == 1 && !strcmp(seg[0], "metrics") && get) {
        r->endpoint = EP_METRICS;
        return nl_srv_check_auth(s, c, r, ROLE_READ, &res) ? res : nl_srv_ep_metrics(s, c, r);
    }
    if (n >= 1 && !strcmp(seg[0], "internal"))
        return route_internal(s, c, r, seg, n, method);
    if (n == 1 && !strcmp(seg[0], "ui") && get) {
        /* the status page: static, no data in it (it fetches /v1/cluster, with the API key
         * the operator gives it), so it needs no key itself */
        r->endpoint = EP_OTHER;
        if (!s->opt.cluster)
            return nl_srv_send_error(c, r, 404, "not_found", "this node runs alone (no --zookeeper): no cluster to show");
        return nl_srv_send_text(c, r, 200, "text/html; charset=utf-8", nl_ui_page, nl_ui_page_len);
    }
    if (n == 2 && !strcmp(seg[0], "v1") && !strcmp(seg[1], "cluster") && get) {
        r->endpoint = EP_OTHER;
        if (nl_srv_check_auth(s, c, r, ROLE_READ, &res))
            return res;
        if (!s->opt.cluster)
            return nl_srv_send_error(c, r, 404, "not_found", "this node runs alone (no --zookeeper)");
        json_t *out = NULL;
        return nl_srv_send_cluster(c, r, nl_cluster_status(s->opt.cluster, &out), &out);
    }
    if (n < 2 || n > 6 || strcmp(seg[0], "v1") || strcmp(seg[1], "collections")) {
        r->endpoint = EP_OTHER;
        return nl_srv_send_error(c, r, 404, "not_found", "no such endpoint: %s %s", method, url);
    }
    if (n == 2) {
        r->endpoint = EP_LIST;
        if (!get)
            return nl_srv_send_error(c, r, 405, "method_not_allowed", "%s /v1/collections: use GET", method);
        if (nl_srv_check_auth(s, c, r, ROLE_READ, &res))
            return res;
        if (s->opt.cluster) {
            json_t *out = NULL;
            return nl_srv_send_cluster(c, r, nl_cluster_list(s->opt.cluster, &out), &out);
        }
        return nl_srv_ep_list(s, c, r);
    }
    const char *name = seg[2];
    if (n == 3) {
        r->endpoint = put ? EP_CREATE : del ? EP_DROP : EP_DESCRIBE;
        if (!put && !del && !get)
            return nl_srv_send_error(c, r, 405, "method_not_allowed", "%s on a collection: use GET, PUT or DELETE", method);
        if (nl_srv_check_auth(s, c, r, put || del ? ROLE_ADMIN : ROLE_READ, &res))
            return res;
        if (strlen(name) > 64 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
                                     strlen(name))
            return nl_srv_send_error(c, r, 400, "bad_request", "collection names are 1..64 characters of [A-Za-z0-9_-]");
        if (s->opt.cluster)
            return route_cluster(s, c, r, name, NULL, 0, method);
        if (put)
            return nl_srv_ep_create(s, c, r, name);
        if (del) {
            int rc = nl_collection_drop(s->db, name);
            return rc ? nl_srv_send_engine_error(c, r, rc, "drop collection")
                      : nl_srv_send_json(c, r, 200, json_pack("{s:s}", "dropped", name));
        }
    }
    /* Everything else works on an existing collection. */
    int need = ROLE_READ;
    if (n > 3 && (r->endpoint = points_endpoint(seg + 3, n - 3, &need)) == EP_OTHER)
        return nl_srv_send_error(c, r, 404, "not_found", "no such endpoint: %s %s", method, url);
    int want_post = r->endpoint == EP_UPSERT || r->endpoint == EP_DELETE || r->endpoint == EP_SEARCH ||
                    r->endpoint == EP_SEARCH_BATCH;
    if ((want_post && !post) || (!want_post && !get))
        return nl_srv_send_error(c, r, 405, "method_not_allowed", "%s %s: use %s", method, url, want_post ? "POST" : "GET");
    if (nl_srv_check_auth(s, c, r, need, &res))
        return res;
    if (s->opt.cluster)
        return route_cluster(s, c, r, name, seg + 3, n - 3, method);
    nl_collection *h;
    int rc = nl_collection_open(s->db, name, &h);
    if (rc)
        return rc == NL_ENOTFOUND ? nl_srv_send_error(c, r, 404, "not_found", "no collection named \"%s\"", name)
                                  : nl_srv_send_engine_error(c, r, rc, "open collection");
    r->cname = name;
    nl_collection_describe(h, &r->ccfg);
    res = r->endpoint == EP_DESCRIBE ? nl_srv_send_json(c, r, 200, nl_srv_describe_json(h)) : run_endpoint(s, h, c, r, n > 4 ? seg[4] : NULL);
    nl_collection_close(h);
    return res;
}

/* ---------------------------------------------------------------- libmicrohttpd glue */

/* Framing a request smuggler relies on, refused before the body is read (RFC 9112 6.3):
 * Content-Length headers that disagree, and a transfer coding other than chunked, which
 * libmicrohttpd would otherwise wait on until its timeout. */
typedef struct {
    const char *length;
    int lengths_differ, unknown_coding;
} framing;

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    framing *f = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        if (f->length && strcmp(f->length, value ? value : ""))
            f->lengths_differ = 1;
        f->length = value ? value : "";
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        const char *v = value ? value : "";
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strlen(v);
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        if (n != 7 || strncasecmp(v, "chunked", 7) != 0)
            f->unknown_coding = 1;
    }
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    nl_server *s = cls;
    req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        r->srv = s;
        r->t0 = nl_now_ns();
        r->endpoint = EP_OTHER;
        const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
        size_t gl = given ? strlen(given) : 0;
        int usable = gl > 0 && gl < sizeof r->rid;
        for (size_t i = 0; usable && i < gl; i++)
            usable = (given[i] >= '0' && given[i] <= '9') || (given[i] >= 'a' && given[i] <= 'z') ||
                     (given[i] >= 'A' && given[i] <= 'Z') || given[i] == '-' || given[i] == '_';
        if (usable)
            memcpy(r->rid, given, gl + 1);
        else
            snprintf(r->rid, sizeof r->rid, "%08x-%llu", s->rid_salt,
                     (unsigned long long)atomic_fetch_add(&s->next_rid, 1));
        snprintf(r->method, sizeof r->method, "%s", method);
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        const char *acc = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
        r->proto_in = ct && strncmp(ct, "application/x-protobuf", 22) == 0;
        r->proto_out = r->proto_in || (acc && strstr(acc, "application/x-protobuf"));
        snprintf(r->path, sizeof r->path, "%s", url);
        framing f = {0};
        MHD_get_connection_values(c, MHD_HEADER_KIND, framing_header, &f);
        if (f.lengths_differ)
            return nl_srv_send_error(c, r, 400, "bad_request", "the request has Content-Length headers that disagree");
        if (f.unknown_coding)
            return nl_srv_send_error(c, r, 501, "not_implemented",
                                     "Transfer-Encoding other than chunked is not supported");
        unsigned now = atomic_fetch_add(&s->inflight, 1) + 1;
        r->admitted = 1;
        /* Health checks are answered whatever the load: a load balancer must not take a
         * live, busy server for a dead one. */
        int health = !strcmp(url, "/healthz") || !strcmp(url, "/readyz");
        if (now > s->opt.max_concurrent && !health)
            r->overloaded = 1;
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->too_large && !r->overloaded) {
            if (r->len + *upload_size > s->opt.max_body) {
                r->too_large = 1;
                free(r->body);
                r->body = NULL;
                r->len = r->cap = 0;
            } else {
                if (r->len + *upload_size + 1 > r->cap) {
                    size_t nc = r->cap ? r->cap : 4096;
                    while (nc < r->len + *upload_size + 1) nc *= 2;
                    char *nb = realloc(r->body, nc);
                    if (!nb)
                        return MHD_NO;
                    r->body = nb;
                    r->cap = nc;
                }
                memcpy(r->body + r->len, upload, *upload_size);
                r->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->overloaded) {
        atomic_fetch_add(&s->m.overloaded, 1);
        return nl_srv_send_error(c, r, 503, "overloaded", "%u requests are being served; retry later", s->opt.max_concurrent);
    }
    if (r->too_large) {
        atomic_fetch_add(&s->m.body_too_large, 1);
        return nl_srv_send_error(c, r, 413, "too_large", "the body is over the %llu-byte limit",
                          (unsigned long long)s->opt.max_body);
    }
    return route(s, c, r, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)c;
    nl_server *s = cls;
    req *r = *con_cls;
    if (!r)
        return;
    uint64_t us = (nl_now_ns() - r->t0) / 1000;
    int e = r->endpoint;
    nl_srv_metrics_done(&s->m, e, r->status, us);
    json_t *p = json_string(r->path);
    char *path = p ? json_dumps(p, JSON_ENCODE_ANY) : NULL;
    json_t *dj = r->detail[0] ? json_string(r->detail) : NULL;
    char *detail = dj ? json_dumps(dj, JSON_ENCODE_ANY) : NULL;
    nl_srv_logf(s, r->status >= 500 ? NL_LOG_WARN : NL_LOG_INFO,
          "\"event\":\"request\",\"request_id\":\"%s\",\"method\":\"%s\",\"path\":%s,\"endpoint\":\"%s\","
          "\"status\":%d,\"latency_us\":%llu,\"bytes_in\":%zu%s%s%s",
          r->rid, r->method, path ? path : "\"?\"", nl_srv_endpoint_name(e), r->status, (unsigned long long)us, r->len,
          toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : ",\"aborted\":true", detail ? ",\"detail\":" : "",
          detail ? detail : "");
    free(detail);
    json_decref(dj);
    free(path);
    json_decref(p);
    if (r->admitted)
        atomic_fetch_sub(&s->inflight, 1);
    if (r->parse_reserved) {
        atomic_fetch_sub(&s->parse_used, r->parse_reserved);
        if (r->len >= (1u << 20))
            malloc_trim(0); /* a large decode's arenas go back to the system, not kept resident */
    }
    free(r->body);
    free(r);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- lifecycle */

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    char chunk[4096];
    size_t got;
    while (m && (got = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, got, m);
    fclose(f);
    if (m)
        fclose(m);
    return buf;
}

static void server_free(nl_server *s)
{
    nl_srv_keys_free(s);
    free(s->tls_cert);
    free(s->tls_key);
    pthread_mutex_destroy(&s->logmu);
    free(s);
}

int nl_server_start(nl_db *db, const nl_server_options *opt, nl_server **out)
{
    *out = NULL;
    nl_server *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    pthread_mutex_init(&s->logmu, NULL);
    s->db = db;
    s->opt = *opt;
    if (!s->opt.listen_addr) s->opt.listen_addr = "127.0.0.1";
    if (!s->opt.port) s->opt.port = 7700;
    if (!s->opt.max_body) s->opt.max_body = 64ull << 20;
    if (!s->opt.max_batch) s->opt.max_batch = 10000;
    if (!s->opt.max_k || s->opt.max_k > NL_MAX_K) s->opt.max_k = NL_MAX_K;
    if (!s->opt.max_concurrent) s->opt.max_concurrent = 64;
    if (!s->opt.max_parse_memory) {
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        uint64_t ram = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : 8ull << 30;
        s->opt.max_parse_memory = ram / 4 < (4ull << 30) ? ram / 4 : 4ull << 30;
    }
    /* A search blocks its thread on disk reads: more threads than CPUs keep the disk busy. */
    if (!s->opt.threads) s->opt.threads = 4 * nl_cpu_count() < 16 ? 16 : 4 * nl_cpu_count();
    if (!s->opt.log) s->opt.log = stderr;
    s->rid_salt = (uint32_t)(nl_now_ns() ^ (uint64_t)getpid() << 16);
    int rc = 0;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(s->opt.port);
    if (inet_pton(AF_INET, s->opt.listen_addr, &sa.sin_addr) != 1)
        rc = nl_fail(NL_EINVAL, "listen address \"%s\" is not an IPv4 address", s->opt.listen_addr);
    if (!rc && s->opt.api_keys_path)
        rc = nl_srv_load_keys(s, s->opt.api_keys_path);
    if (!rc && (!!s->opt.tls_cert_path != !!s->opt.tls_key_path))
        rc = nl_fail(NL_EINVAL, "TLS needs both a certificate and a key");
    if (!rc && s->opt.tls_cert_path) {
        s->tls_cert = read_file(s->opt.tls_cert_path);
        s->tls_key = read_file(s->opt.tls_key_path);
        if (!s->tls_cert || !s->tls_key)
            rc = nl_fail(NL_EINVAL, "cannot read the TLS certificate %s or key %s", s->opt.tls_cert_path,
                         s->opt.tls_key_path);
    }
    if (rc) {
        server_free(s);
        return rc;
    }
    atomic_store(&s->ready, 1);
    /* One node: a pool of threads over epoll (a search blocks only on its own disk reads).
     * Cluster mode: a thread per connection, because a routed request blocks its thread
     * until the shards answer, and in a pool the internal call it waits for (from this
     * node's router, or another node's) could be queued behind it on that same thread. */
    unsigned flags = s->opt.cluster ? MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                                          MHD_USE_ITC | MHD_USE_ERROR_LOG
                                    : MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (s->tls_cert)
        flags |= MHD_USE_TLS;
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert}, {MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key}, {MHD_OPTION_END, 0, NULL}};
    struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    struct MHD_OptionItem pool[] = {{MHD_OPTION_THREAD_POOL_SIZE, (intptr_t)s->opt.threads, NULL},
                                    {MHD_OPTION_END, 0, NULL}};
    /* Connections: a bound in all, and per client address, so one client holding partial
     * requests open cannot take every slot (a new client would time out even on /healthz). */
    unsigned maxc = s->opt.max_connections ? s->opt.max_connections : 4096;
    unsigned perc = s->opt.max_connections_per_client ? s->opt.max_connections_per_client : 512;
    struct MHD_OptionItem conns[] = {{MHD_OPTION_CONNECTION_LIMIT, (intptr_t)maxc, NULL},
                                     {MHD_OPTION_PER_IP_CONNECTION_LIMIT, (intptr_t)perc, NULL},
                                     {MHD_OPTION_END, 0, NULL}};
    s->d = MHD_start_daemon(flags, s->opt.port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s,
                            MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_ARRAY, conns, MHD_OPTION_ARRAY,
                            s->opt.cluster ? none : pool,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                            MHD_OPTION_UNESCAPE_CALLBACK, unescape_strict, NULL,
                            MHD_OPTION_ARRAY, s->tls_cert ? tls : none, MHD_OPTION_END);
    if (!s->d) {
        rc = nl_fail(-EADDRINUSE, "cannot listen on %s:%u (in use, not permitted, or a bad TLS certificate/key)",
                     s->opt.listen_addr, s->opt.port);
        server_free(s);
        return rc;
    }
    nl_srv_logf(s, NL_LOG_INFO, "\"event\":\"listening\",\"address\":\"%s:%u\",\"tls\":%s,\"auth\":%s,\"threads\":%u",
          s->opt.listen_addr, s->opt.port, s->tls_cert ? "true" : "false", s->nkeys ? "true" : "false",
          s->opt.threads);
    *out = s;
    return 0;
}

uint16_t nl_server_port(const nl_server *s) { return s->opt.port; }

void nl_server_quiesce(nl_server *s)
{
    atomic_store(&s->ready, 0);
    MHD_socket fd = MHD_quiesce_daemon(s->d);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

uint32_t nl_server_inflight(const nl_server *s) { return atomic_load(&s->inflight); }

void nl_server_stop(nl_server *s)
{
    if (!s)
        return;
    for (int i = 0; i < 3000 && atomic_load(&s->inflight) > 0; i++) { /* up to 30 s */
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    nl_srv_logf(s, NL_LOG_INFO, "\"event\":\"stopped\"");
    server_free(s);
}
