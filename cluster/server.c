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
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "api_proto.h"
#include "nl_cluster.h"
#include "nl_filter.h"
#include "nl_server.h"
#include "nl_util.h"

/* ---------------------------------------------------------------- metrics */

enum {
    EP_HEALTHZ, EP_READYZ, EP_METRICS, EP_LIST, EP_CREATE, EP_DESCRIBE, EP_DROP, EP_UPSERT, EP_DELETE,
    EP_GET, EP_SEARCH, EP_SEARCH_BATCH, EP_INTERNAL, EP_INTERNAL_SEARCH, EP_OTHER, EP_COUNT
};
static const char *const ep_names[EP_COUNT] = {"healthz", "readyz", "metrics", "list_collections",
                                               "create_collection", "describe_collection", "drop_collection",
                                               "upsert", "delete", "get", "search", "search_batch", "internal",
                                               "internal_search", "other"};
static const int codes[] = {200, 201, 400, 401, 403, 404, 405, 409, 413, 500, 503};
#define NCODES ((int)(sizeof codes / sizeof codes[0]))
static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};
#define NBUCKETS ((int)(sizeof buckets / sizeof buckets[0]))

typedef struct {
    atomic_uint_fast64_t count[EP_COUNT][NCODES + 1]; /* last: any other status */
    atomic_uint_fast64_t hist[EP_COUNT][NBUCKETS + 1];
    atomic_uint_fast64_t sum_us[EP_COUNT];
    atomic_uint_fast64_t queries, filtered, ios, cache_hits, hops, results;
    atomic_uint_fast64_t points_upserted, points_deleted, overloaded, body_too_large;
} metrics;

/* ---------------------------------------------------------------- server state */

enum { ROLE_NONE = 0, ROLE_READ = 1, ROLE_WRITE = 2, ROLE_ADMIN = 3 };

typedef struct {
    char *key;
    size_t len;
    int role;
} api_key;

struct nl_server {
    nl_db *db;
    nl_server_options opt;
    struct MHD_Daemon *d;
    api_key *keys;
    size_t nkeys;
    char *tls_cert, *tls_key;
    atomic_uint inflight;
    atomic_int ready;
    atomic_uint_fast64_t next_rid;
    uint32_t rid_salt;
    metrics m;
    pthread_mutex_t logmu;
};

typedef struct {
    char rid[32];
    uint64_t t0;
    char *body;
    size_t len, cap;
    int too_large, overloaded, admitted;
    int endpoint, status;
    int proto_in, proto_out; /* protobuf body / protobuf answer wanted */
    char method[8];
    char path[256];
    /* the collection the request names: its config (local, or the cluster's), and in an
     * internal call the one shard it is for (-1: all) */
    const char *cname;
    nl_collection_config ccfg;
    int shard;
    const char *traceparent;
} req;

/* ---------------------------------------------------------------- logging */

static void logf_(nl_server *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void logf_(nl_server *s, int level, const char *fmt, ...)
{
    if (level < s->opt.log_level)
        return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    pthread_mutex_lock(&s->logmu);
    fprintf(s->opt.log, "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",%s}\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, names[level], msg);
    fflush(s->opt.log);
    pthread_mutex_unlock(&s->logmu);
}

void nl_server_log(void *server, int level, const char *fields) { logf_(server, level, "%s", fields); }

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
    logf_(s, NL_LOG_WARN, "\"event\":\"http\",\"message\":%s", q ? q : "\"?\"");
    free(q);
    json_decref(j);
}

/* ---------------------------------------------------------------- responses */

static nl_api_endpoint api_ep(int e)
{
    switch (e) {
    case EP_UPSERT: return NL_API_UPSERT;
    case EP_DELETE: return NL_API_DELETE;
    case EP_SEARCH: return NL_API_SEARCH;
    case EP_SEARCH_BATCH: return NL_API_SEARCH_BATCH;
    default: return NL_API_OTHER;
    }
}

/* Queues buf (malloc'd, taken over) as the answer, with the headers every answer carries. */
static enum MHD_Result send_buffer(struct MHD_Connection *c, req *r, int status, void *buf, size_t len,
                                   const char *ctype)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, buf, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(buf);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "X-Request-Id", r->rid);
    if (status == 503)
        MHD_add_response_header(resp, "Retry-After", "1");
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* body (taken over) as the answer: protobuf for a request that wants it on an endpoint that
 * has it, JSON otherwise. */
static enum MHD_Result send_json(struct MHD_Connection *c, req *r, int status, json_t *body)
{
    uint8_t *pb;
    size_t len;
    if (r->proto_out && api_ep(r->endpoint) != NL_API_OTHER &&
        nl_proto_response(api_ep(r->endpoint), status, body, &pb, &len) == 0) {
        json_decref(body);
        return send_buffer(c, r, status, pb, len, "application/x-protobuf");
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        text = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
        status = 500;
        if (!text)
            return MHD_NO;
    }
    return send_buffer(c, r, status, text, strlen(text), "application/json");
}

static enum MHD_Result send_error(struct MHD_Connection *c, req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(struct MHD_Connection *c, req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *e = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", msg, "request_id", r->rid);
    return send_json(c, r, status, e ? e : json_object());
}

/* An engine error as an HTTP status and code. */
static enum MHD_Result send_engine_error(struct MHD_Connection *c, req *r, int rc, const char *what)
{
    const char *detail = nl_errdetail();
    char msg[900];
    snprintf(msg, sizeof msg, "%s: %s", what, detail[0] ? detail : nl_strerror(rc));
    switch (rc) {
    case NL_EDIM: return send_error(c, r, 400, "wrong_dimension", "%s", msg);
    case NL_EFILTER: return send_error(c, r, 400, "bad_filter", "%s", msg);
    case NL_EINVAL: case NL_EBADVALUE: case NL_EFORMAT: case NL_EEMPTY:
        return send_error(c, r, 400, "bad_request", "%s", msg);
    case NL_ENOTFOUND: return send_error(c, r, 404, "not_found", "%s", msg);
    case NL_EEXISTS: return send_error(c, r, 409, "exists", "%s", msg);
    case -ETIMEDOUT: case -EAGAIN: case -EBUSY: return send_error(c, r, 503, "overloaded", "%s", msg);
    default: return send_error(c, r, 500, "internal", "%s", msg);
    }
}

/* ---------------------------------------------------------------- JSON helpers */

static json_t *parse_body(struct MHD_Connection *c, req *r, enum MHD_Result *res)
{
    if (r->proto_in) {
        char msg[200];
        json_t *j = nl_proto_request(api_ep(r->endpoint), r->body ? r->body : "", r->len, msg, sizeof msg);
        if (!j)
            *res = send_error(c, r, 400, "bad_protobuf", "%s", msg);
        return j;
    }
    json_error_t err;
    json_t *j = r->len ? json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &err) : NULL;
    if (!r->len) {
        *res = send_error(c, r, 400, "bad_json", "the request needs a JSON body");
        return NULL;
    }
    if (!j) {
        *res = send_error(c, r, 400, "bad_json", "invalid JSON at line %d column %d: %s", err.line, err.column,
                          err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *res = send_error(c, r, 400, "bad_json", "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* Rejects keys outside allowed (a NULL-terminated list); 0 when all are known. */
static int unknown_key(json_t *obj, const char *const *allowed, const char **bad)
{
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0) ok = 1;
        if (!ok) {
            *bad = k;
            return 1;
        }
    }
    return 0;
}

/* A point id from JSON: a non-negative integer or a 1..256-byte string. */
static int id_from_json(json_t *j, nl_id *id)
{
    memset(id, 0, sizeof *id);
    if (json_is_integer(j) && json_integer_value(j) >= 0) {
        id->num = (uint64_t)json_integer_value(j);
        return 0;
    }
    if (json_is_string(j) && json_string_length(j) >= 1 && json_string_length(j) <= NL_MAX_ID_BYTES) {
        id->is_str = 1;
        id->str = json_string_value(j);
        id->len = json_string_length(j);
        return 0;
    }
    return -1;
}

static json_t *id_to_json(const nl_hit *h)
{
    return h->is_str ? json_stringn(h->str, h->len) : json_integer((json_int_t)h->num);
}

/* dim finite numbers of a JSON array into out; 0, or -1 (type) / -2 (length). */
static int vector_from_json(json_t *j, uint32_t dim, float *out)
{
    if (!json_is_array(j))
        return -1;
    if (json_array_size(j) != dim)
        return -2;
    for (uint32_t i = 0; i < dim; i++) {
        json_t *x = json_array_get(j, i);
        if (!json_is_number(x))
            return -1;
        out[i] = (float)json_number_value(x);
    }
    return 0;
}

static int u32_field(json_t *obj, const char *key, uint32_t lo, uint32_t hi, uint32_t def, uint32_t *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)lo || json_integer_value(v) > (json_int_t)hi)
        return -1;
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

/* ---------------------------------------------------------------- endpoints */

/* The router's context of a request; search bodies may set the deadline and completeness. */
static nl_cluster_call cluster_call(req *r, json_t *body, uint32_t def_ms)
{
    json_t *t = json_object_get(body, "timeout_ms"), *rc = json_object_get(body, "require_complete");
    nl_cluster_call k = {.request_id = r->rid, .traceparent = r->traceparent, .timeout_ms = def_ms};
    if (json_is_integer(t) && json_integer_value(t) >= 1 && json_integer_value(t) <= 600000)
        k.timeout_ms = (uint32_t)json_integer_value(t);
    k.require_complete = json_is_true(rc);
    return k;
}

/* A cluster answer: errors get the request id like every other error. */
static enum MHD_Result send_cluster(struct MHD_Connection *c, req *r, int status, json_t **outp)
{
    /* *outp is read here, after the call that fills it (an argument of this call) ran */
    json_t *body = *outp;
    json_t *e = json_object_get(body, "error");
    if (json_is_object(e))
        json_object_set_new(e, "request_id", json_string(r->rid));
    return send_json(c, r, status, body ? body : json_object());
}

/* Bad "timeout_ms" / "require_complete" in a search body: 400 queued, returns 1. */
static int bad_call_fields(json_t *j, struct MHD_Connection *c, req *r, enum MHD_Result *res)
{
    json_t *t = json_object_get(j, "timeout_ms"), *rc = json_object_get(j, "require_complete");
    if (t && (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > 600000)) {
        *res = send_error(c, r, 400, "bad_request", "\"timeout_ms\" must be an integer in 1..600000");
        return 1;
    }
    if (rc && !json_is_boolean(rc)) {
        *res = send_error(c, r, 400, "bad_request", "\"require_complete\" must be true or false");
        return 1;
    }
    return 0;
}

static json_t *describe_json(nl_collection *h)
{
    nl_collection_config cfg;
    nl_collection_describe(h, &cfg);
    nl_collection_stats st;
    nl_collection_stats_get(h, &st);
    return json_pack("{s:s,s:i,s:s,s:s,s:i,s:i,s:{s:i,s:i,s:f,s:i,s:i},s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}",
                     "name", nl_collection_name(h), "dim", (int)cfg.dim, "metric", nl_metric_name(cfg.metric), "dtype",
                     nl_dtype_name(cfg.dtype), "shards", (int)cfg.shards, "replicas", 1, "index", "R", (int)cfg.R,
                     "L", (int)cfg.L, "alpha", round((double)cfg.alpha * 1e6) / 1e6, "pq_bytes", (int)cfg.pq_bytes, "fresh_capacity",
                     (int)cfg.fresh_capacity, "stats", "points", (json_int_t)st.points, "fresh_points",
                     (json_int_t)st.fresh_points, "segments", (json_int_t)st.segments, "tombstones",
                     (json_int_t)st.tombstones, "disk_bytes", (json_int_t)st.disk_bytes, "ram_bytes",
                     (json_int_t)st.ram_bytes, "flushes", (json_int_t)st.flushes, "compactions",
                     (json_int_t)st.compactions, "cached_nodes", (json_int_t)st.cached_nodes, "search_retries",
                     (json_int_t)st.search_retries, "search_exhaustive", (json_int_t)st.search_exhaustive);
}

/* The config of a create body; 0, or -1 with the 400 queued. Cluster mode: shards
 * default to 8 and replicas may be given (1 until replication is built). */
static int create_config(nl_server *s, struct MHD_Connection *c, req *r, json_t *j, nl_collection_config *cfg,
                         uint32_t *replicas, enum MHD_Result *res)
{
    static const char *const top[] = {"dim", "metric", "dtype", "shards", "replicas", "index", NULL};
    static const char *const idx[] = {"R", "L", "alpha", "pq_bytes", "fresh_capacity", NULL};
    const char *bad;
    memset(cfg, 0, sizeof *cfg);
    json_t *ix = json_object_get(j, "index");
    json_t *metric = json_object_get(j, "metric"), *dtype = json_object_get(j, "dtype");
    if (unknown_key(j, top, &bad))
        *res = send_error(c, r, 400, "bad_request", "unknown field \"%s\" (expected dim, metric, dtype, shards, "
                          "replicas, index)", bad);
    else if (u32_field(j, "dim", 1, 65535, 0, &cfg->dim) || cfg->dim == 0)
        *res = send_error(c, r, 400, "bad_request", "\"dim\" must be an integer in 1..65535");
    else if (metric && (!json_is_string(metric) || nl_metric_parse(json_string_value(metric), &cfg->metric)))
        *res = send_error(c, r, 400, "bad_request", "\"metric\" must be \"l2\", \"ip\" or \"cosine\"");
    else if (dtype && (!json_is_string(dtype) || nl_dtype_parse(json_string_value(dtype), &cfg->dtype)))
        *res = send_error(c, r, 400, "bad_request", "\"dtype\" must be \"f32\", \"f16\", \"u8\" or \"i8\"");
    else if (u32_field(j, "shards", 1, NL_MAX_SHARDS, s->opt.cluster ? 8 : 1, &cfg->shards))
        *res = send_error(c, r, 400, "bad_request", "\"shards\" must be an integer in 1..%d", NL_MAX_SHARDS);
    else if (u32_field(j, "replicas", 1, 1, 1, replicas))
        *res = send_error(c, r, 400, "bad_request", "\"replicas\" must be 1: replication is not built yet");
    else if (ix && !json_is_object(ix))
        *res = send_error(c, r, 400, "bad_request", "\"index\" must be an object");
    else if (ix && unknown_key(ix, idx, &bad))
        *res = send_error(c, r, 400, "bad_request", "unknown field \"index.%s\" (expected R, L, alpha, pq_bytes, "
                          "fresh_capacity)", bad);
    else if (ix && (u32_field(ix, "R", 1, 1024, 0, &cfg->R) || u32_field(ix, "L", 1, NL_MAX_K, 0, &cfg->L) ||
                    u32_field(ix, "pq_bytes", 1, 65535, 0, &cfg->pq_bytes) ||
                    u32_field(ix, "fresh_capacity", 1, 100000000, 0, &cfg->fresh_capacity)))
        *res = send_error(c, r, 400, "bad_request", "index parameters out of range (R 1..1024, L 1..%d)", NL_MAX_K);
    else if (ix && json_object_get(ix, "alpha") && !json_is_number(json_object_get(ix, "alpha")))
        *res = send_error(c, r, 400, "bad_request", "\"index.alpha\" must be a number");
    else {
        if (ix && json_object_get(ix, "alpha"))
            cfg->alpha = (float)json_number_value(json_object_get(ix, "alpha"));
        int rc = nl_collection_config_defaults(cfg);
        if (!rc)
            return 0;
        *res = send_engine_error(c, r, rc, "collection config");
    }
    return -1;
}

static enum MHD_Result ep_create(nl_server *s, struct MHD_Connection *c, req *r, const char *name)
{
    enum MHD_Result res;
    json_t *j = parse_body(c, r, &res);
    if (!j)
        return res;
    nl_collection_config cfg;
    uint32_t replicas;
    if (create_config(s, c, r, j, &cfg, &replicas, &res) == 0) {
        int rc = nl_collection_create(s->db, name, &cfg);
        if (rc) {
            res = send_engine_error(c, r, rc, "create collection");
        } else {
            nl_collection *h;
            rc = nl_collection_open(s->db, name, &h);
            res = rc ? send_engine_error(c, r, rc, "open collection") : send_json(c, r, 201, describe_json(h));
            if (!rc)
                nl_collection_close(h);
        }
    }
    json_decref(j);
    return res;
}

static enum MHD_Result ep_list(nl_server *s, struct MHD_Connection *c, req *r)
{
    char **names;
    size_t n;
    int rc = nl_collection_list(s->db, &names, &n);
    if (rc)
        return send_engine_error(c, r, rc, "list collections");
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(names[i]));
    nl_names_free(names, n);
    return send_json(c, r, 200, json_pack("{s:o}", "collections", a));
}

static enum MHD_Result ep_upsert(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = parse_body(c, r, &res);
    if (!j)
        return res;
    nl_collection_config cfg = r->ccfg;
    json_t *pts = json_object_get(j, "points");
    static const char *const top[] = {"points", NULL};
    static const char *const pk[] = {"id", "vector", "metadata", NULL};
    const char *bad;
    if (unknown_key(j, top, &bad)) {
        res = send_error(c, r, 400, "bad_request", "unknown field \"%s\" (expected points)", bad);
        json_decref(j); /* bad points into j */
        return res;
    }
    if (!json_is_array(pts) || json_array_size(pts) == 0) {
        json_decref(j);
        return send_error(c, r, 400, "bad_request", "\"points\" must be a non-empty array");
    }
    size_t n = json_array_size(pts);
    if (n > s->opt.max_batch) {
        json_decref(j);
        return send_error(c, r, 400, "batch_too_large", "%zu points in one request; the limit is %u", n,
                          s->opt.max_batch);
    }
    nl_point *p = calloc(n, sizeof *p);
    float *vecs = malloc(sizeof(float) * n * cfg.dim);
    char **metas = calloc(n, sizeof *metas);
    res = MHD_YES;
    int done = 0;
    if (!p || !vecs || !metas) {
        res = send_error(c, r, 500, "internal", "out of memory");
        done = 1;
    }
    for (size_t i = 0; i < n && !done; i++) {
        json_t *pt = json_array_get(pts, i), *meta;
        if (!json_is_object(pt)) {
            res = send_error(c, r, 400, "bad_request", "points[%zu] must be an object", i);
            done = 1;
            break;
        }
        if (unknown_key(pt, pk, &bad)) {
            res = send_error(c, r, 400, "bad_request", "points[%zu]: unknown field \"%s\"", i, bad);
            done = 1;
            break;
        }
        if (id_from_json(json_object_get(pt, "id"), &p[i].id)) {
            res = send_error(c, r, 400, "bad_request",
                             "points[%zu].id must be an integer >= 0 or a string of 1..%d bytes", i, NL_MAX_ID_BYTES);
            done = 1;
            break;
        }
        int vr = vector_from_json(json_object_get(pt, "vector"), cfg.dim, vecs + i * cfg.dim);
        if (vr == -2) {
            res = send_error(c, r, 400, "wrong_dimension", "points[%zu].vector has %zu values; the collection has "
                             "dimension %u", i, json_array_size(json_object_get(pt, "vector")), cfg.dim);
            done = 1;
            break;
        }
        if (vr) {
            res = send_error(c, r, 400, "bad_request", "points[%zu].vector must be an array of %u numbers", i,
                             cfg.dim);
            done = 1;
            break;
        }
        p[i].vector = vecs + i * cfg.dim;
        p[i].dim = cfg.dim;
        meta = json_object_get(pt, "metadata");
        if (meta && !json_is_null(meta)) {
            if (!json_is_object(meta)) {
                res = send_error(c, r, 400, "bad_request", "points[%zu].metadata must be an object", i);
                done = 1;
                break;
            }
            metas[i] = json_dumps(meta, JSON_COMPACT);
            if (!metas[i]) {
                res = send_error(c, r, 500, "internal", "out of memory");
                done = 1;
                break;
            }
            p[i].metadata = metas[i];
            p[i].metadata_len = strlen(metas[i]);
        }
    }
    if (!done && !h) {
        json_t *out = NULL;
        nl_cluster_call k = cluster_call(r, NULL, 10000);
        int st = nl_cluster_upsert(s->opt.cluster, &k, r->cname, p, n, &out);
        if (st == 200)
            atomic_fetch_add(&s->m.points_upserted, n);
        res = send_cluster(c, r, st, &out);
    } else if (!done) {
        int rc = r->shard >= 0 ? nl_collection_shard_upsert(h, (uint32_t)r->shard, p, n) : nl_collection_upsert(h, p, n);
        if (rc) {
            res = send_engine_error(c, r, rc, "upsert");
        } else {
            atomic_fetch_add(&s->m.points_upserted, n);
            res = send_json(c, r, 200, json_pack("{s:I}", "upserted", (json_int_t)n));
        }
    }
    for (size_t i = 0; metas && i < n; i++)
        free(metas[i]);
    free(metas);
    free(vecs);
    free(p);
    json_decref(j);
    return res;
}

/* A filter from a JSON value (re-serialised so the parser sees exactly what came). */
static int filter_from_json(json_t *v, nl_filter **out)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return -ENOMEM;
    int rc = nl_filter_parse(text, strlen(text), out);
    free(text);
    return rc;
}

static enum MHD_Result ep_delete(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = parse_body(c, r, &res);
    if (!j)
        return res;
    json_t *ids = json_object_get(j, "ids"), *filter = json_object_get(j, "filter");
    static const char *const top[] = {"ids", "filter", NULL};
    const char *bad;
    if (unknown_key(j, top, &bad)) {
        res = send_error(c, r, 400, "bad_request", "unknown field \"%s\" (expected ids or filter)", bad);
    } else if (!!ids == !!filter) {
        res = send_error(c, r, 400, "bad_request", "give exactly one of \"ids\" and \"filter\"");
    } else if (filter) {
        nl_filter *f;
        int rc = filter_from_json(filter, &f);
        if (rc) {
            res = send_engine_error(c, r, rc, "filter");
        } else if (!h) {
            nl_filter_destroy(f);
            char *text = json_dumps(filter, JSON_COMPACT | JSON_ENCODE_ANY);
            json_t *out = NULL;
            nl_cluster_call k = cluster_call(r, NULL, 10000);
            int st = text ? nl_cluster_delete(s->opt.cluster, &k, r->cname, NULL, 0, text, &out) : 500;
            free(text);
            res = (out = out ? out : json_pack("{s:{s:s,s:s}}", "error", "code", "internal",
                                                              "message", "out of memory"), send_cluster(c, r, st, &out));
        } else {
            size_t deleted = 0;
            rc = r->shard >= 0 ? nl_collection_shard_delete_by_filter(h, (uint32_t)r->shard, f, &deleted)
                               : nl_collection_delete_by_filter(h, f, &deleted);
            nl_filter_destroy(f);
            atomic_fetch_add(&s->m.points_deleted, deleted);
            res = rc ? send_engine_error(c, r, rc, "delete") :
                       send_json(c, r, 200, json_pack("{s:I}", "deleted", (json_int_t)deleted));
        }
    } else if (!json_is_array(ids) || json_array_size(ids) == 0) {
        res = send_error(c, r, 400, "bad_request", "\"ids\" must be a non-empty array");
    } else if (json_array_size(ids) > s->opt.max_batch) {
        res = send_error(c, r, 400, "batch_too_large", "%zu ids in one request; the limit is %u", json_array_size(ids),
                         s->opt.max_batch);
    } else {
        size_t n = json_array_size(ids);
        nl_id *v = calloc(n, sizeof *v);
        size_t i;
        for (i = 0; v && i < n; i++)
            if (id_from_json(json_array_get(ids, i), &v[i]))
                break;
        if (!v) {
            res = send_error(c, r, 500, "internal", "out of memory");
        } else if (i < n) {
            res = send_error(c, r, 400, "bad_request", "ids[%zu] must be an integer >= 0 or a string of 1..%d bytes",
                             i, NL_MAX_ID_BYTES);
        } else if (!h) {
            json_t *out = NULL;
            nl_cluster_call k = cluster_call(r, NULL, 10000);
            int st = nl_cluster_delete(s->opt.cluster, &k, r->cname, v, n, NULL, &out);
            res = send_cluster(c, r, st, &out);
        } else {
            size_t deleted = 0;
            int rc = r->shard >= 0 ? nl_collection_shard_delete(h, (uint32_t)r->shard, v, n, &deleted)
                                   : nl_collection_delete(h, v, n, &deleted);
            atomic_fetch_add(&s->m.points_deleted, deleted);
            res = rc ? send_engine_error(c, r, rc, "delete") :
                       send_json(c, r, 200, json_pack("{s:I}", "deleted", (json_int_t)deleted));
        }
        free(v);
    }
    json_decref(j);
    return res;
}

static json_t *meta_json(nl_collection *h, const nl_id *id)
{
    char *meta = NULL;
    size_t ml = 0;
    if (nl_collection_get_metadata(h, id, &meta, &ml) != 0 || !meta)
        return json_null();
    json_error_t err;
    json_t *m = json_loadb(meta, ml, 0, &err);
    free(meta);
    return m ? m : json_null();
}

static enum MHD_Result ep_get(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r, const char *idtext)
{
    nl_id id = {0};
    const char *type = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "id_type");
    size_t len = strlen(idtext);
    char *end;
    errno = 0;
    unsigned long long v = strtoull(idtext, &end, 10);
    int numeric = len > 0 && idtext[0] >= '0' && idtext[0] <= '9' && !*end && !errno &&
                  v <= (unsigned long long)INT64_MAX && !(type && strcmp(type, "string") == 0);
    if (numeric) {
        id.num = v;
    } else if (len >= 1 && len <= NL_MAX_ID_BYTES) {
        id.is_str = 1;
        id.str = idtext;
        id.len = len;
    } else {
        return send_error(c, r, 400, "bad_request", "a point id is an integer or a string of 1..%d bytes",
                          NL_MAX_ID_BYTES);
    }
    nl_collection_config cfg = r->ccfg;
    if (!h) {
        json_t *out = NULL;
        nl_cluster_call k = cluster_call(r, NULL, 1000);
        int st = nl_cluster_get(s->opt.cluster, &k, r->cname, &id, &out);
        return send_cluster(c, r, st, &out);
    }
    float *vec = malloc(sizeof(float) * cfg.dim);
    char *meta = NULL;
    size_t ml = 0;
    int rc = vec ? nl_collection_get(h, &id, vec, &meta, &ml) : -ENOMEM;
    if (rc) {
        free(vec);
        return send_engine_error(c, r, rc, "get");
    }
    json_t *a = json_array();
    for (uint32_t i = 0; i < cfg.dim; i++)
        json_array_append_new(a, json_real(vec[i]));
    free(vec);
    json_t *m = NULL;
    if (meta) {
        json_error_t err;
        m = json_loadb(meta, ml, 0, &err);
        free(meta);
    }
    json_t *out = json_pack("{s:o,s:o,s:o}", "id", id.is_str ? json_stringn(id.str, id.len) : json_integer((json_int_t)id.num),
                            "vector", a, "metadata", m ? m : json_null());
    return send_json(c, r, 200, out);
}

typedef struct {
    uint32_t k, L, W;
    int with_meta;
    uint32_t plan;
} search_opts;

/* k, L, beam, with_metadata, plan of a search body; an error response when out of range. */
static int search_opts_from(nl_server *s, json_t *j, struct MHD_Connection *c, req *r, search_opts *o,
                            enum MHD_Result *res)
{
    json_t *wm = json_object_get(j, "with_metadata"), *plan = json_object_get(j, "plan");
    if (u32_field(j, "k", 1, UINT32_MAX, 10, &o->k)) {
        *res = send_error(c, r, 400, "bad_request", "\"k\" must be a positive integer");
        return -1;
    }
    if (o->k > s->opt.max_k) {
        *res = send_error(c, r, 400, "k_too_large", "k=%u is over the limit of %u", o->k, s->opt.max_k);
        return -1;
    }
    if (u32_field(j, "L", 1, NL_MAX_K, 0, &o->L) || u32_field(j, "beam", 1, 16, 0, &o->W)) {
        *res = send_error(c, r, 400, "bad_request", "\"L\" must be in 1..%d and \"beam\" in 1..16", NL_MAX_K);
        return -1;
    }
    if (wm && !json_is_boolean(wm)) {
        *res = send_error(c, r, 400, "bad_request", "\"with_metadata\" must be true or false");
        return -1;
    }
    o->with_meta = !wm || json_is_true(wm);
    o->plan = 0;
    if (plan) {
        const char *p = json_is_string(plan) ? json_string_value(plan) : "";
        if (!strcmp(p, "graph")) o->plan = NL_PLAN_GRAPH;
        else if (!strcmp(p, "scan")) o->plan = NL_PLAN_SCAN;
        else if (strcmp(p, "auto")) {
            *res = send_error(c, r, 400, "bad_request", "\"plan\" must be \"auto\", \"graph\" or \"scan\"");
            return -1;
        }
    }
    return 0;
}

static json_t *hits_json(nl_collection *h, const nl_hit *hits, uint32_t n, int with_meta)
{
    json_t *a = json_array();
    for (uint32_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:o,s:f}", "id", id_to_json(&hits[i]), "score", (double)hits[i].dist);
        if (with_meta) {
            nl_id id = {hits[i].is_str, hits[i].num, hits[i].str, hits[i].len};
            json_object_set_new(o, "metadata", meta_json(h, &id));
        }
        json_array_append_new(a, o);
    }
    return a;
}

static void count_search(nl_server *s, const nl_query_stats *st, size_t nq, const uint32_t *counts, int filtered)
{
    atomic_fetch_add(&s->m.queries, nq);
    if (filtered)
        atomic_fetch_add(&s->m.filtered, nq);
    for (size_t i = 0; i < nq; i++) {
        atomic_fetch_add(&s->m.ios, st[i].ios);
        atomic_fetch_add(&s->m.cache_hits, st[i].cache_hits);
        atomic_fetch_add(&s->m.hops, st[i].hops);
        atomic_fetch_add(&s->m.results, counts[i]);
    }
}

static enum MHD_Result ep_search(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = parse_body(c, r, &res);
    if (!j)
        return res;
    static const char *const top[] = {"vector", "k", "filter", "L", "beam", "with_metadata", "plan", "timeout_ms",
                                      "require_complete", NULL};
    const char *bad;
    search_opts o;
    nl_collection_config cfg = r->ccfg;
    float *q = malloc(sizeof(float) * cfg.dim);
    nl_filter *f = NULL;
    json_t *fj = json_object_get(j, "filter");
    int vr;
    if (!q) {
        res = send_error(c, r, 500, "internal", "out of memory");
    } else if (unknown_key(j, top, &bad)) {
        res = send_error(c, r, 400, "bad_request", "unknown field \"%s\"", bad);
    } else if (search_opts_from(s, j, c, r, &o, &res) || bad_call_fields(j, c, r, &res)) {
        /* answered */
    } else if ((vr = vector_from_json(json_object_get(j, "vector"), cfg.dim, q)) != 0) {
        res = vr == -2 ? send_error(c, r, 400, "wrong_dimension", "\"vector\" has %zu values; the collection has "
                                    "dimension %u", json_array_size(json_object_get(j, "vector")), cfg.dim)
                       : send_error(c, r, 400, "bad_request", "\"vector\" must be an array of %u numbers", cfg.dim);
    } else {
        int rc = fj && !json_is_null(fj) ? filter_from_json(fj, &f) : 0;
        if (rc) {
            res = send_engine_error(c, r, rc, "filter");
        } else if (!h) {
            char *text = f ? json_dumps(fj, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
            nl_cluster_search_params sp = {o.k, o.L, o.W, o.plan, o.with_meta, text, NULL};
            nl_cluster_call k = cluster_call(r, j, 1000);
            json_t *out = NULL;
            int st = nl_cluster_search(s->opt.cluster, &k, r->cname, q, 1, cfg.dim, &sp, 0, &out);
            free(text);
            res = send_cluster(c, r, st, &out);
        } else {
            nl_hit *hits = calloc(o.k, sizeof *hits);
            nl_search_params p = {.k = o.k, .L = o.L, .W = o.W, .filter = f, .plan = o.plan};
            nl_query_stats st;
            uint64_t t0 = nl_now_ns();
            int got = hits ? nl_collection_search(h, q, &p, hits, &st) : -ENOMEM;
            uint64_t took = (nl_now_ns() - t0) / 1000;
            if (got < 0) {
                res = send_engine_error(c, r, got, "search");
            } else {
                uint32_t cnt = (uint32_t)got;
                count_search(s, &st, 1, &cnt, f != NULL);
                json_t *out = json_pack("{s:o,s:I,s:i}", "results", hits_json(h, hits, cnt, o.with_meta), "took_us",
                                        (json_int_t)took, "ios", (int)st.ios);
                res = send_json(c, r, 200, out);
            }
            free(hits);
        }
    }
    nl_filter_destroy(f);
    free(q);
    json_decref(j);
    return res;
}

static enum MHD_Result ep_search_batch(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = parse_body(c, r, &res);
    if (!j)
        return res;
    static const char *const top[] = {"vectors", "k", "filter", "filters", "L", "beam", "with_metadata", "plan",
                                      "timeout_ms", "require_complete", NULL};
    const char *bad;
    search_opts o;
    nl_collection_config cfg = r->ccfg;
    json_t *vs = json_object_get(j, "vectors"), *fj = json_object_get(j, "filter"), *fs = json_object_get(j, "filters");
    size_t nq = json_is_array(vs) ? json_array_size(vs) : 0;
    float *q = NULL;
    nl_filter *f = NULL, **per = NULL;
    nl_hit *hits = NULL;
    uint32_t *counts = NULL;
    nl_query_stats *st = NULL;
    if (unknown_key(j, top, &bad)) {
        res = send_error(c, r, 400, "bad_request", "unknown field \"%s\"", bad);
        goto out;
    }
    if (search_opts_from(s, j, c, r, &o, &res) || bad_call_fields(j, c, r, &res))
        goto out;
    if (nq == 0) {
        res = send_error(c, r, 400, "bad_request", "\"vectors\" must be a non-empty array of vectors");
        goto out;
    }
    if (nq > s->opt.max_batch) {
        res = send_error(c, r, 400, "batch_too_large", "%zu queries in one request; the limit is %u", nq,
                         s->opt.max_batch);
        goto out;
    }
    if (fj && fs) {
        res = send_error(c, r, 400, "bad_request", "give \"filter\" (all queries) or \"filters\" (one each), not both");
        goto out;
    }
    if (fs && (!json_is_array(fs) || json_array_size(fs) != nq)) {
        res = send_error(c, r, 400, "bad_request", "\"filters\" must be an array with one filter (or null) per vector");
        goto out;
    }
    q = malloc(sizeof(float) * nq * cfg.dim);
    hits = calloc(nq * o.k, sizeof *hits);
    counts = calloc(nq, sizeof *counts);
    st = calloc(nq, sizeof *st);
    per = fs ? calloc(nq, sizeof *per) : NULL;
    if (!q || !hits || !counts || !st || (fs && !per)) {
        res = send_error(c, r, 500, "internal", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nq; i++) {
        int vr = vector_from_json(json_array_get(vs, i), cfg.dim, q + i * cfg.dim);
        if (vr) {
            res = vr == -2 ? send_error(c, r, 400, "wrong_dimension", "vectors[%zu] has %zu values; the collection "
                                        "has dimension %u", i, json_array_size(json_array_get(vs, i)), cfg.dim)
                           : send_error(c, r, 400, "bad_request", "vectors[%zu] must be an array of %u numbers", i,
                                        cfg.dim);
            goto out;
        }
        if (per && !json_is_null(json_array_get(fs, i))) {
            int rc = filter_from_json(json_array_get(fs, i), &per[i]);
            if (rc) {
                res = send_error(c, r, 400, "bad_filter", "filters[%zu]: %s", i, nl_errdetail());
                goto out;
            }
        }
    }
    if (fj && !json_is_null(fj)) {
        int rc = filter_from_json(fj, &f);
        if (rc) {
            res = send_engine_error(c, r, rc, "filter");
            goto out;
        }
    }
    if (!h) {
        char **texts = calloc(nq, sizeof *texts), *ftext = f ? json_dumps(fj, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        for (size_t i = 0; per && texts && i < nq; i++)
            if (per[i])
                texts[i] = json_dumps(json_array_get(fs, i), JSON_COMPACT | JSON_ENCODE_ANY);
        nl_cluster_search_params sp = {o.k, o.L, o.W, o.plan, o.with_meta, ftext, per ? (const char *const *)texts : NULL};
        nl_cluster_call k = cluster_call(r, j, 1000);
        json_t *ans = NULL;
        int stc = texts ? nl_cluster_search(s->opt.cluster, &k, r->cname, q, nq, cfg.dim, &sp, 1, &ans) : 500;
        for (size_t i = 0; texts && i < nq; i++)
            free(texts[i]);
        free(texts);
        free(ftext);
        res = (ans = ans ? ans : json_pack("{s:{s:s,s:s}}", "error", "code", "internal", "message",
                                                             "out of memory"), send_cluster(c, r, stc, &ans));
    } else {
        nl_search_params p = {.k = o.k, .L = o.L, .W = o.W, .filter = f, .filters = (const nl_filter *const *)per,
                              .plan = o.plan};
        uint64_t t0 = nl_now_ns();
        int rc = r->shard >= 0 ? nl_collection_shard_search_batch(h, (uint32_t)r->shard, q, nq, &p, hits, counts, st)
                               : nl_collection_search_batch(h, q, nq, &p, hits, counts, st);
        uint64_t took = (nl_now_ns() - t0) / 1000;
        if (rc) {
            res = send_engine_error(c, r, rc, "search");
            goto out;
        }
        count_search(s, st, nq, counts, f || per);
        json_t *all = json_array();
        for (size_t i = 0; i < nq; i++)
            json_array_append_new(all, hits_json(h, hits + i * o.k, counts[i], o.with_meta));
        res = send_json(c, r, 200, json_pack("{s:o,s:I}", "results", all, "took_us", (json_int_t)took));
    }
out:
    for (size_t i = 0; per && i < nq; i++)
        nl_filter_destroy(per[i]);
    free(per);
    nl_filter_destroy(f);
    free(q);
    free(hits);
    free(counts);
    free(st);
    json_decref(j);
    return res;
}

/* Prometheus text exposition. */
static enum MHD_Result ep_metrics(nl_server *s, struct MHD_Connection *c, req *r)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return send_error(c, r, 500, "internal", "out of memory");
    metrics *m = &s->m;
    fprintf(f, "# HELP nearline_requests_total HTTP requests by endpoint and status.\n"
               "# TYPE nearline_requests_total counter\n");
    for (int e = 0; e < EP_COUNT; e++)
        for (int k = 0; k <= NCODES; k++) {
            uint64_t v = atomic_load(&m->count[e][k]);
            if (v)
                fprintf(f, "nearline_requests_total{endpoint=\"%s\",code=\"%s%d\"} %llu\n", ep_names[e],
                        k == NCODES ? "other" : "", k == NCODES ? 0 : codes[k], (unsigned long long)v);
        }
    fprintf(f, "# HELP nearline_request_duration_seconds Request latency by endpoint.\n"
               "# TYPE nearline_request_duration_seconds histogram\n");
    for (int e = 0; e < EP_COUNT; e++) {
        uint64_t total = 0;
        for (int b = 0; b <= NBUCKETS; b++)
            total += atomic_load(&m->hist[e][b]);
        if (!total)
            continue;
        uint64_t cum = 0;
        for (int b = 0; b < NBUCKETS; b++) {
            cum += atomic_load(&m->hist[e][b]);
            fprintf(f, "nearline_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", ep_names[e],
                    buckets[b], (unsigned long long)cum);
        }
        fprintf(f, "nearline_request_duration_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", ep_names[e],
                (unsigned long long)total);
        fprintf(f, "nearline_request_duration_seconds_sum{endpoint=\"%s\"} %.6f\n", ep_names[e],
                (double)atomic_load(&m->sum_us[e]) / 1e6);
        fprintf(f, "nearline_request_duration_seconds_count{endpoint=\"%s\"} %llu\n", ep_names[e],
                (unsigned long long)total);
    }
    uint64_t hops = atomic_load(&m->hops), hits = atomic_load(&m->cache_hits);
    fprintf(f,
            "# HELP nearline_search_queries_total Queries searched on this node (a batch counts each).\n"
            "# TYPE nearline_search_queries_total counter\nnearline_search_queries_total %llu\n"
            "# HELP nearline_search_filtered_queries_total Queries with a metadata filter.\n"
            "# TYPE nearline_search_filtered_queries_total counter\nnearline_search_filtered_queries_total %llu\n"
            "# HELP nearline_search_ios_total Sector reads of searches.\n"
            "# TYPE nearline_search_ios_total counter\nnearline_search_ios_total %llu\n"
            "# HELP nearline_search_nodes_expanded_total Graph nodes expanded by searches.\n"
            "# TYPE nearline_search_nodes_expanded_total counter\nnearline_search_nodes_expanded_total %llu\n"
            "# HELP nearline_search_cache_hits_total Expanded nodes served by the node cache.\n"
            "# TYPE nearline_search_cache_hits_total counter\nnearline_search_cache_hits_total %llu\n"
            "# HELP nearline_search_cache_hit_ratio Expanded nodes served by the node cache.\n"
            "# TYPE nearline_search_cache_hit_ratio gauge\nnearline_search_cache_hit_ratio %.4f\n"
            "# HELP nearline_points_upserted_total Points upserted through this node.\n"
            "# TYPE nearline_points_upserted_total counter\nnearline_points_upserted_total %llu\n"
            "# HELP nearline_points_deleted_total Points deleted through this node.\n"
            "# TYPE nearline_points_deleted_total counter\nnearline_points_deleted_total %llu\n"
            "# HELP nearline_overloaded_total Requests refused with 503 because max_concurrent were being served.\n"
            "# TYPE nearline_overloaded_total counter\nnearline_overloaded_total %llu\n"
            "# HELP nearline_body_too_large_total Requests refused with 413.\n"
            "# TYPE nearline_body_too_large_total counter\nnearline_body_too_large_total %llu\n"
            "# HELP nearline_inflight_requests Requests being served now.\n"
            "# TYPE nearline_inflight_requests gauge\nnearline_inflight_requests %u\n",
            (unsigned long long)atomic_load(&m->queries), (unsigned long long)atomic_load(&m->filtered),
            (unsigned long long)atomic_load(&m->ios), (unsigned long long)hops, (unsigned long long)hits,
            hops ? (double)hits / (double)hops : 0.0, (unsigned long long)atomic_load(&m->points_upserted),
            (unsigned long long)atomic_load(&m->points_deleted), (unsigned long long)atomic_load(&m->overloaded),
            (unsigned long long)atomic_load(&m->body_too_large), atomic_load(&s->inflight));
    /* Per collection: the engine's own counters. */
    char **names;
    size_t n;
    if (nl_collection_list(s->db, &names, &n) == 0) {
        static const char *const g[] = {"points", "fresh_points", "segments", "segment_points", "tombstones",
                                        "disk_bytes", "ram_bytes", "cached_nodes", "flushes_total",
                                        "compactions_total", "write_waits_total", "flush_seconds_total",
                                        "compaction_seconds_total", "background_error", "store_sst_bytes",
                                        "store_memtable_bytes", "store_pending_compaction_bytes",
                                        "store_running_compactions", "store_keys", "store_block_cache_bytes",
                                        "search_retries_total", "search_exhaustive_total"};
        for (size_t gi = 0; gi < sizeof g / sizeof g[0]; gi++) {
            fprintf(f, "# HELP nearline_collection_%s The engine's %s of the collection (this node's shards).\n",
                    g[gi], g[gi]);
            fprintf(f, "# TYPE nearline_collection_%s %s\n", g[gi], strstr(g[gi], "_total") ? "counter" : "gauge");
            for (size_t i = 0; i < n; i++) {
                nl_collection *h;
                if (nl_collection_open(s->db, names[i], &h) != 0)
                    continue;
                nl_collection_stats st;
                nl_collection_stats_get(h, &st);
                nl_collection_close(h);
                double v[] = {(double)st.points, (double)st.fresh_points, (double)st.segments,
                              (double)st.segment_points, (double)st.tombstones, (double)st.disk_bytes,
                              (double)st.ram_bytes, (double)st.cached_nodes, (double)st.flushes,
                              (double)st.compactions, (double)st.write_waits, st.flush_seconds, st.compaction_seconds,
                              (double)st.background_error, (double)st.store_sst_bytes,
                              (double)st.store_memtable_bytes, (double)st.store_pending_compaction_bytes,
                              (double)st.store_running_compactions, (double)st.store_keys,
                              (double)st.store_block_cache_bytes, (double)st.search_retries,
                              (double)st.search_exhaustive};
                fprintf(f, "nearline_collection_%s{collection=\"%s\"} %.17g\n", g[gi], names[i], v[gi]);
            }
        }
        nl_names_free(names, n);
    }
    if (s->opt.cluster)
        nl_cluster_metrics(s->opt.cluster, f);
    fclose(f);
    return send_buffer(c, r, 200, buf, len, "text/plain; version=0.0.4");
}

/* ---------------------------------------------------------------- auth */

static int key_role(const nl_server *s, const char *key, size_t len)
{
    int role = ROLE_NONE;
    for (size_t i = 0; i < s->nkeys; i++) {
        if (s->keys[i].len != len)
            continue;
        unsigned char diff = 0; /* constant time over the key's bytes */
        for (size_t b = 0; b < len; b++)
            diff |= (unsigned char)(s->keys[i].key[b] ^ key[b]);
        if (!diff)
            role = s->keys[i].role;
    }
    return role;
}

/* 0 when allowed; otherwise the response is queued. */
static int check_auth(nl_server *s, struct MHD_Connection *c, req *r, int need, enum MHD_Result *res)
{
    if (!s->nkeys || need == ROLE_NONE)
        return 0;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0 || !h[7]) {
        *res = send_error(c, r, 401, "unauthorized", "this endpoint needs an API key: Authorization: Bearer KEY");
        return -1;
    }
    int role = key_role(s, h + 7, strlen(h + 7));
    if (role == ROLE_NONE) {
        *res = send_error(c, r, 401, "unauthorized", "unknown API key");
        return -1;
    }
    if (role < need) {
        static const char *rn[] = {"none", "read", "write", "admin"};
        *res = send_error(c, r, 403, "forbidden", "this request needs the %s role; the key has %s", rn[need], rn[role]);
        return -1;
    }
    return 0;
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
    case EP_UPSERT: return ep_upsert(s, h, c, r);
    case EP_DELETE: return ep_delete(s, h, c, r);
    case EP_GET: return ep_get(s, h, c, r, idtext);
    case EP_SEARCH: return ep_search(s, h, c, r);
    default: return ep_search_batch(s, h, c, r);
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
        return send_error(c, r, 404, "not_found", "this node is not in a cluster");
    if (!nl_cluster_key_ok(cl, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Nearline-Cluster-Key")))
        return send_error(c, r, 401, "unauthorized", "internal calls need the cluster key (X-Nearline-Cluster-Key)");
    if (n < 4 || strcmp(seg[1], "v1") || strcmp(seg[2], "collections"))
        return send_error(c, r, 404, "not_found", "no such internal endpoint");
    const char *name = seg[3];
    if (n == 4) {
        if (strcmp(method, "DELETE"))
            return send_error(c, r, 405, "method_not_allowed", "use DELETE");
        int rc = nl_cluster_local_drop(cl, name);
        return rc ? send_engine_error(c, r, rc, "drop local copy") : send_json(c, r, 200, json_pack("{s:s}", "dropped", name));
    }
    char *end;
    unsigned long sh = n >= 6 && !strcmp(seg[4], "shards") ? strtoul(seg[5], &end, 10) : NL_MAX_SHARDS;
    if (sh >= NL_MAX_SHARDS || *end)
        return send_error(c, r, 404, "not_found", "no such internal endpoint");
    nl_collection *h;
    int rc = nl_cluster_local_shard(cl, name, (uint32_t)sh, &h);
    if (rc)
        return rc == NL_EUNAVAILABLE ? send_error(c, r, 503, "unavailable", "%s", nl_errdetail())
                                     : send_engine_error(c, r, rc, "shard");
    enum MHD_Result res;
    r->cname = name;
    r->shard = (int)sh;
    nl_collection_describe(h, &r->ccfg);
    int need;
    if (n == 6) {
        nl_collection_stats st;
        nl_collection_shard_stats(h, (uint32_t)sh, &st);
        res = send_json(c, r, 200, json_pack("{s:i,s:{s:I,s:I,s:I,s:I,s:I}}", "shard", (int)sh, "stats", "points",
                                             (json_int_t)st.points, "fresh_points", (json_int_t)st.fresh_points,
                                             "segments", (json_int_t)st.segments, "tombstones",
                                             (json_int_t)st.tombstones, "disk_bytes", (json_int_t)st.disk_bytes));
    } else if ((r->endpoint = points_endpoint(seg + 6, n - 6, &need)) == EP_OTHER || r->endpoint == EP_SEARCH) {
        r->endpoint = EP_INTERNAL;
        res = send_error(c, r, 404, "not_found", "no such internal endpoint");
    } else if (strcmp(method, r->endpoint == EP_GET ? "GET" : "POST")) {
        res = send_error(c, r, 405, "method_not_allowed", "wrong method");
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
        json_t *j = parse_body(c, r, &res);
        if (!j)
            return res;
        nl_collection_config cfg;
        uint32_t replicas;
        if (create_config(s, c, r, j, &cfg, &replicas, &res) == 0)
            res = send_cluster(c, r, nl_cluster_create(cl, &k, name, &cfg, replicas, &out), &out);
        json_decref(j);
        return res;
    }
    if (nrest == 0 && r->endpoint == EP_DROP)
        return send_cluster(c, r, nl_cluster_drop(cl, &k, name, &out), &out);
    if (nrest == 0)
        return send_cluster(c, r, nl_cluster_describe(cl, &k, name, &out), &out);
    int rc = nl_cluster_config(cl, name, &r->ccfg, NULL);
    if (rc)
        return rc == NL_ENOTFOUND ? send_error(c, r, 404, "not_found", "no collection named \"%s\"", name)
                                  : send_engine_error(c, r, rc, "collection");
    r->cname = name;
    return run_endpoint(s, NULL, c, r, nrest > 1 ? rest[1] : NULL);
}

static enum MHD_Result route(nl_server *s, struct MHD_Connection *c, req *r, const char *url, const char *method)
{
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
        return send_json(c, r, 200, json_pack("{s:s}", "status", "ok"));
    }
    if (n == 1 && !strcmp(seg[0], "readyz") && get) {
        r->endpoint = EP_READYZ;
        char why[128];
        if (!atomic_load(&s->ready))
            return send_error(c, r, 503, "shutting_down", "the server is shutting down");
        if (s->opt.cluster && !nl_cluster_ready(s->opt.cluster, why, sizeof why))
            return send_error(c, r, 503, "not_ready", "%s", why);
        return send_json(c, r, 200, json_pack("{s:s}", "status", "ready"));
    }
    if (n == 1 && !strcmp(seg[0], "metrics") && get) {
        r->endpoint = EP_METRICS;
        return check_auth(s, c, r, ROLE_READ, &res) ? res : ep_metrics(s, c, r);
    }
    if (n >= 1 && !strcmp(seg[0], "internal"))
        return route_internal(s, c, r, seg, n, method);
    if (n == 2 && !strcmp(seg[0], "v1") && !strcmp(seg[1], "cluster") && get) {
        r->endpoint = EP_OTHER;
        if (check_auth(s, c, r, ROLE_READ, &res))
            return res;
        if (!s->opt.cluster)
            return send_error(c, r, 404, "not_found", "this node runs alone (no --zookeeper)");
        json_t *out = NULL;
        return send_cluster(c, r, nl_cluster_status(s->opt.cluster, &out), &out);
    }
    if (n < 2 || n > 6 || strcmp(seg[0], "v1") || strcmp(seg[1], "collections")) {
        r->endpoint = EP_OTHER;
        return send_error(c, r, 404, "not_found", "no such endpoint: %s %s", method, url);
    }
    if (n == 2) {
        r->endpoint = EP_LIST;
        if (!get)
            return send_error(c, r, 405, "method_not_allowed", "%s /v1/collections: use GET", method);
        if (check_auth(s, c, r, ROLE_READ, &res))
            return res;
        if (s->opt.cluster) {
            json_t *out = NULL;
            return send_cluster(c, r, nl_cluster_list(s->opt.cluster, &out), &out);
        }
        return ep_list(s, c, r);
    }
    const char *name = seg[2];
    if (n == 3) {
        r->endpoint = put ? EP_CREATE : del ? EP_DROP : EP_DESCRIBE;
        if (!put && !del && !get)
            return send_error(c, r, 405, "method_not_allowed", "%s on a collection: use GET, PUT or DELETE", method);
        if (check_auth(s, c, r, put || del ? ROLE_ADMIN : ROLE_READ, &res))
            return res;
        if (strlen(name) > 64 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
                                     strlen(name))
            return send_error(c, r, 400, "bad_request", "collection names are 1..64 characters of [A-Za-z0-9_-]");
        if (s->opt.cluster)
            return route_cluster(s, c, r, name, NULL, 0, method);
        if (put)
            return ep_create(s, c, r, name);
        if (del) {
            int rc = nl_collection_drop(s->db, name);
            return rc ? send_engine_error(c, r, rc, "drop collection")
                      : send_json(c, r, 200, json_pack("{s:s}", "dropped", name));
        }
    }
    /* Everything else works on an existing collection. */
    int need = ROLE_READ;
    if (n > 3 && (r->endpoint = points_endpoint(seg + 3, n - 3, &need)) == EP_OTHER)
        return send_error(c, r, 404, "not_found", "no such endpoint: %s %s", method, url);
    int want_post = r->endpoint == EP_UPSERT || r->endpoint == EP_DELETE || r->endpoint == EP_SEARCH ||
                    r->endpoint == EP_SEARCH_BATCH;
    if ((want_post && !post) || (!want_post && !get))
        return send_error(c, r, 405, "method_not_allowed", "%s %s: use %s", method, url, want_post ? "POST" : "GET");
    if (check_auth(s, c, r, need, &res))
        return res;
    if (s->opt.cluster)
        return route_cluster(s, c, r, name, seg + 3, n - 3, method);
    nl_collection *h;
    int rc = nl_collection_open(s->db, name, &h);
    if (rc)
        return rc == NL_ENOTFOUND ? send_error(c, r, 404, "not_found", "no collection named \"%s\"", name)
                                  : send_engine_error(c, r, rc, "open collection");
    r->cname = name;
    nl_collection_describe(h, &r->ccfg);
    res = r->endpoint == EP_DESCRIBE ? send_json(c, r, 200, describe_json(h)) : run_endpoint(s, h, c, r, n > 4 ? seg[4] : NULL);
    nl_collection_close(h);
    return res;
}

/* ---------------------------------------------------------------- libmicrohttpd glue */

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
        unsigned now = atomic_fetch_add(&s->inflight, 1) + 1;
        r->admitted = 1;
        if (now > s->opt.max_concurrent)
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
        return send_error(c, r, 503, "overloaded", "%u requests are being served; retry later", s->opt.max_concurrent);
    }
    if (r->too_large) {
        atomic_fetch_add(&s->m.body_too_large, 1);
        return send_error(c, r, 413, "too_large", "the body is over the %llu-byte limit",
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
    int k = NCODES;
    for (int i = 0; i < NCODES; i++)
        if (codes[i] == r->status) k = i;
    atomic_fetch_add(&s->m.count[e][k], 1);
    int b = 0;
    while (b < NBUCKETS && (double)us / 1e6 > buckets[b]) b++;
    atomic_fetch_add(&s->m.hist[e][b], 1);
    atomic_fetch_add(&s->m.sum_us[e], us);
    json_t *p = json_string(r->path);
    char *path = p ? json_dumps(p, JSON_ENCODE_ANY) : NULL;
    logf_(s, r->status >= 500 ? NL_LOG_WARN : NL_LOG_INFO,
          "\"event\":\"request\",\"request_id\":\"%s\",\"method\":\"%s\",\"path\":%s,\"endpoint\":\"%s\","
          "\"status\":%d,\"latency_us\":%llu,\"bytes_in\":%zu%s",
          r->rid, r->method, path ? path : "\"?\"", ep_names[e], r->status, (unsigned long long)us, r->len,
          toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : ",\"aborted\":true");
    free(path);
    json_decref(p);
    if (r->admitted)
        atomic_fetch_sub(&s->inflight, 1);
    free(r->body);
    free(r);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- lifecycle */

static int load_keys(nl_server *s, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return nl_fail(-errno, "api keys %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    int rc = 0;
    while (!rc && getline(&line, &cap, f) >= 0) {
        lineno++;
        char key[512], role[32], extra[8];
        char *h = line + strspn(line, " \t");
        if (*h == '#' || *h == '\n' || *h == 0)
            continue;
        int got = sscanf(h, "%511s %31s %7s", key, role, extra);
        int rv = got == 2 ? (!strcmp(role, "read") ? ROLE_READ : !strcmp(role, "write") ? ROLE_WRITE
                                                              : !strcmp(role, "admin") ? ROLE_ADMIN : 0)
                          : 0;
        if (!rv || strlen(key) < 8) {
            rc = nl_fail(NL_EINVAL, "api keys %s line %zu: expected \"KEY ROLE\" (a key of 8+ characters, role "
                         "read, write or admin)", path, lineno);
            break;
        }
        api_key *nk = realloc(s->keys, (s->nkeys + 1) * sizeof *nk);
        if (!nk || !(nk[s->nkeys].key = strdup(key))) {
            if (nk) s->keys = nk;
            rc = -ENOMEM;
            break;
        }
        s->keys = nk;
        s->keys[s->nkeys].len = strlen(key);
        s->keys[s->nkeys].role = rv;
        s->nkeys++;
    }
    free(line);
    fclose(f);
    if (!rc && s->nkeys == 0)
        rc = nl_fail(NL_EINVAL, "api keys %s holds no key", path);
    return rc;
}

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
    for (size_t i = 0; i < s->nkeys; i++) {
        memset(s->keys[i].key, 0, s->keys[i].len);
        free(s->keys[i].key);
    }
    free(s->keys);
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
        rc = load_keys(s, s->opt.api_keys_path);
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
    struct MHD_OptionItem conns[] = {{MHD_OPTION_CONNECTION_LIMIT, 4096, NULL}, {MHD_OPTION_END, 0, NULL}};
    s->d = MHD_start_daemon(flags, s->opt.port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, s,
                            MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_ARRAY, s->opt.cluster ? conns : pool,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT, 60u,
                            MHD_OPTION_ARRAY, s->tls_cert ? tls : none, MHD_OPTION_END);
    if (!s->d) {
        rc = nl_fail(-EADDRINUSE, "cannot listen on %s:%u (in use, not permitted, or a bad TLS certificate/key)",
                     s->opt.listen_addr, s->opt.port);
        server_free(s);
        return rc;
    }
    logf_(s, NL_LOG_INFO, "\"event\":\"listening\",\"address\":\"%s:%u\",\"tls\":%s,\"auth\":%s,\"threads\":%u",
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
    logf_(s, NL_LOG_INFO, "\"event\":\"stopped\"");
    server_free(s);
}
