/*
 * endpoints.c — the endpoints of the HTTP API (docs/api.md): each parses its body whole with
 * jansson (protobuf bodies arrive converted, api_proto.c), checks it against the collection
 * (ids, dimensions, values, metadata, k, filters, unknown fields), and only then makes one
 * engine call (one node) or one router call (cluster mode, nl_cluster.h), which apply a
 * batch all or nothing. In an internal call (r->shard >= 0) the engine call is on that one
 * shard. server.c routes to them and owns the connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "nl_filter.h"
#include "nl_util.h"
#include "server_internal.h"

/* ---------------------------------------------------------------- JSON helpers */

/* Reserves the memory decoding r's body may take from the server's parse budget, waiting up
 * to two seconds for bodies being decoded to finish: 0, or -1 with the answer queued. So
 * concurrent large bodies cannot take more than max_parse_memory between them, whatever
 * their count (each alone is bounded by max_body). */
static int reserve_parse(struct MHD_Connection *c, req *r, enum MHD_Result *res)
{
    nl_server *s = r->srv;
    uint64_t need = (uint64_t)r->len * NL_PARSE_AMPLIFICATION, cap = s->opt.max_parse_memory;
    if (need > cap) {
        *res = nl_srv_send_error(c, r, 413, "too_large",
                                 "a %zu-byte body would take about %llu bytes to decode, over the server's parse "
                                 "budget of %llu (--max-parse-memory)", r->len, (unsigned long long)need,
                                 (unsigned long long)cap);
        return -1;
    }
    for (int tries = 0; tries < 200; tries++) {
        uint64_t used = atomic_load(&s->parse_used);
        while (used + need <= cap) {
            if (atomic_compare_exchange_weak(&s->parse_used, &used, used + need)) {
                r->parse_reserved = need;
                return 0;
            }
        }
        struct timespec ten_ms = {0, 10 * 1000000L};
        nanosleep(&ten_ms, NULL);
    }
    *res = nl_srv_send_error(c, r, 503, "overloaded",
                             "bodies being decoded hold the server's parse budget (%llu bytes); retry later",
                             (unsigned long long)cap);
    return -1;
}

json_t *nl_srv_parse_body(struct MHD_Connection *c, req *r, enum MHD_Result *res)
{
    if (r->len && !r->parse_reserved && reserve_parse(c, r, res) != 0)
        return NULL;
    if (r->proto_in) {
        char msg[200];
        json_t *j = nl_proto_request(nl_srv_api_ep(r->endpoint), r->body ? r->body : "", r->len, msg, sizeof msg);
        if (!j)
            *res = nl_srv_send_error(c, r, 400, "bad_protobuf", "%s", msg);
        return j;
    }
    json_error_t err;
    json_t *j = r->len ? json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &err) : NULL;
    if (!r->len) {
        *res = nl_srv_send_error(c, r, 400, "bad_json", "the request needs a JSON body");
        return NULL;
    }
    if (!j) {
        *res = nl_srv_send_error(c, r, 400, "bad_json", "invalid JSON at line %d column %d: %s", err.line, err.column,
                          err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *res = nl_srv_send_error(c, r, 400, "bad_json", "the body must be a JSON object");
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
static nl_cluster_call nl_srv_cluster_call(req *r, json_t *body, uint32_t def_ms)
{
    json_t *t = json_object_get(body, "timeout_ms"), *rc = json_object_get(body, "require_complete");
    nl_cluster_call k = {.request_id = r->rid, .traceparent = r->traceparent, .timeout_ms = def_ms};
    if (json_is_integer(t) && json_integer_value(t) >= 1 && json_integer_value(t) <= 600000)
        k.timeout_ms = (uint32_t)json_integer_value(t);
    k.require_complete = json_is_true(rc);
    const char *ps = json_string_value(json_object_get(body, "per_shard"));
    k.per_shard_full = ps && !strcmp(ps, "full");
    return k;
}

/* Bad "timeout_ms" / "require_complete" in a search body: 400 queued, returns 1. */
static int bad_call_fields(json_t *j, struct MHD_Connection *c, req *r, enum MHD_Result *res)
{
    json_t *t = json_object_get(j, "timeout_ms"), *rc = json_object_get(j, "require_complete");
    if (t && (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > 600000)) {
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"timeout_ms\" must be an integer in 1..600000");
        return 1;
    }
    if (rc && !json_is_boolean(rc)) {
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"require_complete\" must be true or false");
        return 1;
    }
    json_t *ps = json_object_get(j, "per_shard");
    if (ps && (!json_is_string(ps) || (strcmp(json_string_value(ps), "scaled") && strcmp(json_string_value(ps), "full")))) {
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"per_shard\" must be \"scaled\" or \"full\"");
        return 1;
    }
    return 0;
}

json_t *nl_srv_describe_json(nl_collection *h)
{
    nl_collection_config cfg;
    nl_collection_describe(h, &cfg);
    nl_collection_stats st;
    nl_collection_stats_get(h, &st);
    char code[32];
    json_t *j = json_pack("{s:s,s:i,s:s,s:s,s:i,s:i,s:{s:i,s:i,s:f,s:i,s:i},s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}}",
                     "name", nl_collection_name(h), "dim", (int)cfg.dim, "metric", nl_metric_name(cfg.metric), "dtype",
                     nl_dtype_name(cfg.dtype), "shards", (int)cfg.shards, "replicas", 1, "index", "R", (int)cfg.R,
                     "L", (int)cfg.L, "alpha", round((double)cfg.alpha * 1e6) / 1e6, "pq_bytes", (int)cfg.pq_bytes, "fresh_capacity",
                     (int)cfg.fresh_capacity, "stats", "points", (json_int_t)st.points, "fresh_points",
                     (json_int_t)st.fresh_points, "segments", (json_int_t)st.segments, "tombstones",
                     (json_int_t)st.tombstones, "disk_bytes", (json_int_t)st.disk_bytes, "ram_bytes",
                     (json_int_t)st.ram_bytes, "flushes", (json_int_t)st.flushes, "compactions",
                     (json_int_t)st.compactions, "cached_nodes", (json_int_t)st.cached_nodes, "search_retries",
                     (json_int_t)st.search_retries, "search_exhaustive", (json_int_t)st.search_exhaustive);
    if (j) {
        json_object_set_new(json_object_get(j, "index"), "code",
                            json_string(nl_collection_code_name(&cfg, code, sizeof code)));
        json_t *sj = json_object_get(j, "stats");
        json_object_set_new(sj, "flush_bytes", json_integer((json_int_t)st.flush_bytes));
        json_object_set_new(sj, "compaction_bytes", json_integer((json_int_t)st.compaction_bytes));
    }
    return j;
}

/* The config of a create body; 0, or -1 with the 400 queued. Cluster mode: shards
 * default to 8, replicas (1..5) and write_quorum ("all" or "majority") may be given. */
int nl_srv_create_config(nl_server *s, struct MHD_Connection *c, req *r, json_t *j, nl_collection_config *cfg,
                         uint32_t *replicas, int *quorum, enum MHD_Result *res)
{
    static const char *const top[] = {"dim", "metric", "dtype", "shards", "replicas", "write_quorum", "index", NULL};
    static const char *const idx[] = {"R", "L", "alpha", "pq_bytes", "fresh_capacity", "code", NULL};
    const char *bad;
    memset(cfg, 0, sizeof *cfg);
    json_t *ix = json_object_get(j, "index");
    json_t *metric = json_object_get(j, "metric"), *dtype = json_object_get(j, "dtype");
    if (unknown_key(j, top, &bad))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "unknown field \"%s\" (expected dim, metric, dtype, shards, "
                          "replicas, write_quorum, index)", bad);
    else if (u32_field(j, "dim", 1, 65535, 0, &cfg->dim) || cfg->dim == 0)
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"dim\" must be an integer in 1..65535");
    else if (metric && (!json_is_string(metric) || nl_metric_parse(json_string_value(metric), &cfg->metric)))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"metric\" must be \"l2\", \"ip\" or \"cosine\"");
    else if (dtype && (!json_is_string(dtype) || nl_dtype_parse(json_string_value(dtype), &cfg->dtype)))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"dtype\" must be \"f32\", \"f16\", \"u8\" or \"i8\"");
    else if (u32_field(j, "shards", 1, NL_MAX_SHARDS, s->opt.cluster ? 8 : 1, &cfg->shards))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"shards\" must be an integer in 1..%d", NL_MAX_SHARDS);
    else if (u32_field(j, "replicas", 1, s->opt.cluster ? NL_MAX_REPLICAS_API : 1, 1, replicas))
        *res = s->opt.cluster ? nl_srv_send_error(c, r, 400, "bad_request", "\"replicas\" must be an integer in 1..%d",
                                                  NL_MAX_REPLICAS_API)
                              : nl_srv_send_error(c, r, 400, "bad_request", "\"replicas\" must be 1 on a single node "
                                                  "(replication is cluster mode's)");
    else if (json_object_get(j, "write_quorum") &&
             (!json_is_string(json_object_get(j, "write_quorum")) ||
              (strcmp(json_string_value(json_object_get(j, "write_quorum")), "all") &&
               strcmp(json_string_value(json_object_get(j, "write_quorum")), "majority"))))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"write_quorum\" must be \"all\" or \"majority\"");
    else if (ix && !json_is_object(ix))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"index\" must be an object");
    else if (ix && unknown_key(ix, idx, &bad))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "unknown field \"index.%s\" (expected R, L, alpha, pq_bytes, "
                          "fresh_capacity, code)", bad);
    else if (ix && (u32_field(ix, "R", 1, 1024, 0, &cfg->R) || u32_field(ix, "L", 1, NL_MAX_K, 0, &cfg->L) ||
                    u32_field(ix, "pq_bytes", 1, 65535, 0, &cfg->pq_bytes) ||
                    u32_field(ix, "fresh_capacity", 1, 100000000, 0, &cfg->fresh_capacity)))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "index parameters out of range (R 1..1024, L 1..%d)", NL_MAX_K);
    else if (ix && json_object_get(ix, "alpha") && !json_is_number(json_object_get(ix, "alpha")))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"index.alpha\" must be a number");
    else if (ix && json_object_get(ix, "code") &&
             (!json_is_string(json_object_get(ix, "code")) ||
              nl_collection_code_parse(json_string_value(json_object_get(ix, "code")), cfg) != 0 ||
              (json_object_get(ix, "pq_bytes") && cfg->code != NL_COLL_CODE_PQ)))
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"index.code\" must be \"auto\", \"pq:BYTES\" or "
                                 "\"rabitq:BITS\" (1..8), and pq_bytes goes only with a PQ code");
    else {
        *quorum = json_object_get(j, "write_quorum") &&
                  !strcmp(json_string_value(json_object_get(j, "write_quorum")), "majority");
        if (ix && json_object_get(ix, "alpha"))
            cfg->alpha = (float)json_number_value(json_object_get(ix, "alpha"));
        int rc = nl_collection_config_defaults(cfg);
        if (!rc)
            return 0;
        *res = nl_srv_send_engine_error(c, r, rc, "collection config");
    }
    return -1;
}

enum MHD_Result nl_srv_ep_create(nl_server *s, struct MHD_Connection *c, req *r, const char *name)
{
    enum MHD_Result res;
    json_t *j = nl_srv_parse_body(c, r, &res);
    if (!j)
        return res;
    nl_collection_config cfg;
    uint32_t replicas;
    int quorum;
    if (nl_srv_create_config(s, c, r, j, &cfg, &replicas, &quorum, &res) == 0) {
        int rc = nl_collection_create(s->db, name, &cfg);
        if (rc) {
            res = nl_srv_send_engine_error(c, r, rc, "create collection");
        } else {
            nl_collection *h;
            rc = nl_collection_open(s->db, name, &h);
            res = rc ? nl_srv_send_engine_error(c, r, rc, "open collection") : nl_srv_send_json(c, r, 201, nl_srv_describe_json(h));
            if (!rc)
                nl_collection_close(h);
        }
    }
    json_decref(j);
    return res;
}

enum MHD_Result nl_srv_ep_list(nl_server *s, struct MHD_Connection *c, req *r)
{
    char **names;
    size_t n;
    int rc = nl_collection_list(s->db, &names, &n);
    if (rc)
        return nl_srv_send_engine_error(c, r, rc, "list collections");
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(names[i]));
    nl_names_free(names, n);
    return nl_srv_send_json(c, r, 200, json_pack("{s:o}", "collections", a));
}

enum MHD_Result nl_srv_ep_upsert(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = nl_srv_parse_body(c, r, &res);
    if (!j)
        return res;
    nl_collection_config cfg = r->ccfg;
    json_t *pts = json_object_get(j, "points");
    static const char *const top[] = {"points", NULL};
    static const char *const pk[] = {"id", "vector", "metadata", NULL};
    const char *bad;
    if (unknown_key(j, top, &bad)) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "unknown field \"%s\" (expected points)", bad);
        json_decref(j); /* bad points into j */
        return res;
    }
    if (!json_is_array(pts) || json_array_size(pts) == 0) {
        json_decref(j);
        return nl_srv_send_error(c, r, 400, "bad_request", "\"points\" must be a non-empty array");
    }
    size_t n = json_array_size(pts);
    if (n > s->opt.max_batch) {
        json_decref(j);
        return nl_srv_send_error(c, r, 400, "batch_too_large", "%zu points in one request; the limit is %u", n,
                          s->opt.max_batch);
    }
    nl_point *p = calloc(n, sizeof *p);
    float *vecs = malloc(sizeof(float) * n * cfg.dim);
    char **metas = calloc(n, sizeof *metas);
    res = MHD_YES;
    int done = 0;
    if (!p || !vecs || !metas) {
        res = nl_srv_send_error(c, r, 500, "internal", "out of memory");
        done = 1;
    }
    for (size_t i = 0; i < n && !done; i++) {
        json_t *pt = json_array_get(pts, i), *meta;
        if (!json_is_object(pt)) {
            res = nl_srv_send_error(c, r, 400, "bad_request", "points[%zu] must be an object", i);
            done = 1;
            break;
        }
        if (unknown_key(pt, pk, &bad)) {
            res = nl_srv_send_error(c, r, 400, "bad_request", "points[%zu]: unknown field \"%s\"", i, bad);
            done = 1;
            break;
        }
        if (id_from_json(json_object_get(pt, "id"), &p[i].id)) {
            res = nl_srv_send_error(c, r, 400, "bad_request",
                             "points[%zu].id must be an integer >= 0 or a string of 1..%d bytes", i, NL_MAX_ID_BYTES);
            done = 1;
            break;
        }
        int vr = vector_from_json(json_object_get(pt, "vector"), cfg.dim, vecs + i * cfg.dim);
        if (vr == -2) {
            res = nl_srv_send_error(c, r, 400, "wrong_dimension", "points[%zu].vector has %zu values; the collection has "
                             "dimension %u", i, json_array_size(json_object_get(pt, "vector")), cfg.dim);
            done = 1;
            break;
        }
        if (vr) {
            res = nl_srv_send_error(c, r, 400, "bad_request", "points[%zu].vector must be an array of %u numbers", i,
                             cfg.dim);
            done = 1;
            break;
        }
        p[i].vector = vecs + i * cfg.dim;
        p[i].dim = cfg.dim;
        meta = json_object_get(pt, "metadata");
        if (meta && !json_is_null(meta)) {
            if (!json_is_object(meta)) {
                res = nl_srv_send_error(c, r, 400, "bad_request", "points[%zu].metadata must be an object", i);
                done = 1;
                break;
            }
            metas[i] = json_dumps(meta, JSON_COMPACT);
            if (!metas[i]) {
                res = nl_srv_send_error(c, r, 500, "internal", "out of memory");
                done = 1;
                break;
            }
            p[i].metadata = metas[i];
            p[i].metadata_len = strlen(metas[i]);
        }
    }
    if (!done && !h) {
        json_t *out = NULL;
        nl_cluster_call k = nl_srv_cluster_call(r, NULL, 10000);
        int st = nl_cluster_upsert(s->opt.cluster, &k, r->cname, p, n, &out);
        if (st == 200)
            atomic_fetch_add(&s->m.points_upserted, n);
        res = nl_srv_send_cluster(c, r, st, &out);
    } else if (!done) {
        int rc = r->shard >= 0 ? nl_cluster_shard_upsert(s->opt.cluster, h, r->cname, (uint32_t)r->shard, p, n)
                               : nl_collection_upsert(h, p, n);
        if (rc) {
            res = nl_srv_send_engine_error(c, r, rc, "upsert");
        } else {
            atomic_fetch_add(&s->m.points_upserted, n);
            res = nl_srv_send_json(c, r, 200, json_pack("{s:I}", "upserted", (json_int_t)n));
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

enum MHD_Result nl_srv_ep_delete(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = nl_srv_parse_body(c, r, &res);
    if (!j)
        return res;
    json_t *ids = json_object_get(j, "ids"), *filter = json_object_get(j, "filter");
    static const char *const top[] = {"ids", "filter", NULL};
    const char *bad;
    if (unknown_key(j, top, &bad)) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "unknown field \"%s\" (expected ids or filter)", bad);
    } else if (!!ids == !!filter) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "give exactly one of \"ids\" and \"filter\"");
    } else if (filter) {
        nl_filter *f;
        int rc = filter_from_json(filter, &f);
        if (rc) {
            res = nl_srv_send_engine_error(c, r, rc, "filter");
        } else if (!h) {
            nl_filter_destroy(f);
            char *text = json_dumps(filter, JSON_COMPACT | JSON_ENCODE_ANY);
            json_t *out = NULL;
            nl_cluster_call k = nl_srv_cluster_call(r, NULL, 10000);
            int st = text ? nl_cluster_delete(s->opt.cluster, &k, r->cname, NULL, 0, text, &out) : 500;
            free(text);
            res = (out = out ? out : json_pack("{s:{s:s,s:s}}", "error", "code", "internal",
                                                              "message", "out of memory"), nl_srv_send_cluster(c, r, st, &out));
        } else {
            size_t deleted = 0;
            rc = r->shard >= 0 ? nl_cluster_shard_delete_by_filter(s->opt.cluster, h, r->cname, (uint32_t)r->shard, f,
                                                                   &deleted)
                               : nl_collection_delete_by_filter(h, f, &deleted);
            nl_filter_destroy(f);
            atomic_fetch_add(&s->m.points_deleted, deleted);
            res = rc ? nl_srv_send_engine_error(c, r, rc, "delete") :
                       nl_srv_send_json(c, r, 200, json_pack("{s:I}", "deleted", (json_int_t)deleted));
        }
    } else if (!json_is_array(ids) || json_array_size(ids) == 0) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "\"ids\" must be a non-empty array");
    } else if (json_array_size(ids) > s->opt.max_batch) {
        res = nl_srv_send_error(c, r, 400, "batch_too_large", "%zu ids in one request; the limit is %u", json_array_size(ids),
                         s->opt.max_batch);
    } else {
        size_t n = json_array_size(ids);
        nl_id *v = calloc(n, sizeof *v);
        size_t i;
        for (i = 0; v && i < n; i++)
            if (id_from_json(json_array_get(ids, i), &v[i]))
                break;
        if (!v) {
            res = nl_srv_send_error(c, r, 500, "internal", "out of memory");
        } else if (i < n) {
            res = nl_srv_send_error(c, r, 400, "bad_request", "ids[%zu] must be an integer >= 0 or a string of 1..%d bytes",
                             i, NL_MAX_ID_BYTES);
        } else if (!h) {
            json_t *out = NULL;
            nl_cluster_call k = nl_srv_cluster_call(r, NULL, 10000);
            int st = nl_cluster_delete(s->opt.cluster, &k, r->cname, v, n, NULL, &out);
            res = nl_srv_send_cluster(c, r, st, &out);
        } else {
            size_t deleted = 0;
            int rc = r->shard >= 0 ? nl_cluster_shard_delete(s->opt.cluster, h, r->cname, (uint32_t)r->shard, v, n,
                                                             &deleted)
                                   : nl_collection_delete(h, v, n, &deleted);
            atomic_fetch_add(&s->m.points_deleted, deleted);
            res = rc ? nl_srv_send_engine_error(c, r, rc, "delete") :
                       nl_srv_send_json(c, r, 200, json_pack("{s:I}", "deleted", (json_int_t)deleted));
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

enum MHD_Result nl_srv_ep_get(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r, const char *idtext)
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
        return nl_srv_send_error(c, r, 400, "bad_request", "a point id is an integer or a string of 1..%d bytes",
                          NL_MAX_ID_BYTES);
    }
    nl_collection_config cfg = r->ccfg;
    if (!h) {
        json_t *out = NULL;
        nl_cluster_call k = nl_srv_cluster_call(r, NULL, 1000);
        int st = nl_cluster_get(s->opt.cluster, &k, r->cname, &id, &out);
        return nl_srv_send_cluster(c, r, st, &out);
    }
    float *vec = malloc(sizeof(float) * cfg.dim);
    char *meta = NULL;
    size_t ml = 0;
    int rc = vec ? nl_collection_get(h, &id, vec, &meta, &ml) : -ENOMEM;
    if (rc) {
        free(vec);
        return nl_srv_send_engine_error(c, r, rc, "get");
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
    return nl_srv_send_json(c, r, 200, out);
}

typedef struct {
    uint32_t k, L, W;
    int with_meta;
    uint32_t plan;
    int segments_each; /* "segments": "each" (nl_search_params.segments < 0) */
} search_opts;

/* k, L, beam, with_metadata, plan, segments of a search body; an error response when out
 * of range. */
static int search_opts_from(nl_server *s, json_t *j, struct MHD_Connection *c, req *r, search_opts *o,
                            enum MHD_Result *res)
{
    json_t *wm = json_object_get(j, "with_metadata"), *plan = json_object_get(j, "plan");
    json_t *segs = json_object_get(j, "segments");
    if (u32_field(j, "k", 1, UINT32_MAX, 10, &o->k)) {
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"k\" must be a positive integer");
        return -1;
    }
    if (o->k > s->opt.max_k) {
        *res = nl_srv_send_error(c, r, 400, "k_too_large", "k=%u is over the limit of %u", o->k, s->opt.max_k);
        return -1;
    }
    if (u32_field(j, "L", 1, NL_MAX_K, 0, &o->L) || u32_field(j, "beam", 1, 16, 0, &o->W)) {
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"L\" must be in 1..%d and \"beam\" in 1..16", NL_MAX_K);
        return -1;
    }
    if (wm && !json_is_boolean(wm)) {
        *res = nl_srv_send_error(c, r, 400, "bad_request", "\"with_metadata\" must be true or false");
        return -1;
    }
    o->with_meta = !wm || json_is_true(wm);
    o->plan = 0;
    if (plan) {
        const char *p = json_is_string(plan) ? json_string_value(plan) : "";
        if (!strcmp(p, "graph")) o->plan = NL_PLAN_GRAPH;
        else if (!strcmp(p, "scan")) o->plan = NL_PLAN_SCAN;
        else if (strcmp(p, "auto")) {
            *res = nl_srv_send_error(c, r, 400, "bad_request", "\"plan\" must be \"auto\", \"graph\" or \"scan\"");
            return -1;
        }
    }
    o->segments_each = 0;
    if (segs) {
        const char *v = json_is_string(segs) ? json_string_value(segs) : "";
        if (!strcmp(v, "each")) o->segments_each = 1;
        else if (strcmp(v, "joint")) {
            *res = nl_srv_send_error(c, r, 400, "bad_request", "\"segments\" must be \"joint\" or \"each\"");
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

static void nl_srv_count_search(nl_server *s, const nl_query_stats *st, size_t nq, const uint32_t *counts, int filtered)
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

enum MHD_Result nl_srv_ep_search(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = nl_srv_parse_body(c, r, &res);
    if (!j)
        return res;
    static const char *const top[] = {"vector", "k", "filter", "L", "beam", "with_metadata", "plan", "timeout_ms",
                                      "require_complete", "per_shard", "segments", NULL};
    const char *bad;
    search_opts o;
    nl_collection_config cfg = r->ccfg;
    float *q = malloc(sizeof(float) * cfg.dim);
    nl_filter *f = NULL;
    json_t *fj = json_object_get(j, "filter");
    int vr;
    if (!q) {
        res = nl_srv_send_error(c, r, 500, "internal", "out of memory");
    } else if (unknown_key(j, top, &bad)) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "unknown field \"%s\"", bad);
    } else if (search_opts_from(s, j, c, r, &o, &res) || bad_call_fields(j, c, r, &res)) {
        /* answered */
    } else if ((vr = vector_from_json(json_object_get(j, "vector"), cfg.dim, q)) != 0) {
        res = vr == -2 ? nl_srv_send_error(c, r, 400, "wrong_dimension", "\"vector\" has %zu values; the collection has "
                                    "dimension %u", json_array_size(json_object_get(j, "vector")), cfg.dim)
                       : nl_srv_send_error(c, r, 400, "bad_request", "\"vector\" must be an array of %u numbers", cfg.dim);
    } else {
        int rc = fj && !json_is_null(fj) ? filter_from_json(fj, &f) : 0;
        if (rc) {
            res = nl_srv_send_engine_error(c, r, rc, "filter");
        } else if (!h) {
            char *text = f ? json_dumps(fj, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
            nl_cluster_search_params sp = {o.k, o.L, o.W, o.plan, o.with_meta, o.segments_each, text, NULL};
            nl_cluster_call k = nl_srv_cluster_call(r, j, 1000);
            json_t *out = NULL;
            int st = nl_cluster_search(s->opt.cluster, &k, r->cname, q, 1, cfg.dim, &sp, 0, &out);
            free(text);
            res = nl_srv_send_cluster(c, r, st, &out);
        } else {
            nl_hit *hits = calloc(o.k, sizeof *hits);
            nl_search_params p = {.k = o.k, .L = o.L, .W = o.W, .filter = f, .plan = o.plan,
                                  .segments = o.segments_each ? -1 : 0};
            nl_query_stats st;
            uint64_t t0 = nl_now_ns();
            int got = hits ? nl_collection_search(h, q, &p, hits, &st) : -ENOMEM;
            uint64_t took = (nl_now_ns() - t0) / 1000;
            if (got < 0) {
                res = nl_srv_send_engine_error(c, r, got, "search");
            } else {
                uint32_t cnt = (uint32_t)got;
                nl_srv_count_search(s, &st, 1, &cnt, f != NULL);
                json_t *out = json_pack("{s:o,s:I,s:i}", "results", hits_json(h, hits, cnt, o.with_meta), "took_us",
                                        (json_int_t)took, "ios", (int)st.ios);
                res = nl_srv_send_json(c, r, 200, out);
            }
            free(hits);
        }
    }
    nl_filter_destroy(f);
    free(q);
    json_decref(j);
    return res;
}

enum MHD_Result nl_srv_ep_search_batch(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r)
{
    enum MHD_Result res;
    json_t *j = nl_srv_parse_body(c, r, &res);
    if (!j)
        return res;
    static const char *const top[] = {"vectors", "k", "filter", "filters", "L", "beam", "with_metadata", "plan",
                                      "timeout_ms", "require_complete", "per_shard", "segments", NULL};
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
        res = nl_srv_send_error(c, r, 400, "bad_request", "unknown field \"%s\"", bad);
        goto out;
    }
    if (search_opts_from(s, j, c, r, &o, &res) || bad_call_fields(j, c, r, &res))
        goto out;
    if (nq == 0) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "\"vectors\" must be a non-empty array of vectors");
        goto out;
    }
    if (nq > s->opt.max_batch) {
        res = nl_srv_send_error(c, r, 400, "batch_too_large", "%zu queries in one request; the limit is %u", nq,
                         s->opt.max_batch);
        goto out;
    }
    if (fj && fs) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "give \"filter\" (all queries) or \"filters\" (one each), not both");
        goto out;
    }
    if (fs && (!json_is_array(fs) || json_array_size(fs) != nq)) {
        res = nl_srv_send_error(c, r, 400, "bad_request", "\"filters\" must be an array with one filter (or null) per vector");
        goto out;
    }
    q = malloc(sizeof(float) * nq * cfg.dim);
    hits = calloc(nq * o.k, sizeof *hits);
    counts = calloc(nq, sizeof *counts);
    st = calloc(nq, sizeof *st);
    per = fs ? calloc(nq, sizeof *per) : NULL;
    if (!q || !hits || !counts || !st || (fs && !per)) {
        res = nl_srv_send_error(c, r, 500, "internal", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nq; i++) {
        int vr = vector_from_json(json_array_get(vs, i), cfg.dim, q + i * cfg.dim);
        if (vr) {
            res = vr == -2 ? nl_srv_send_error(c, r, 400, "wrong_dimension", "vectors[%zu] has %zu values; the collection "
                                        "has dimension %u", i, json_array_size(json_array_get(vs, i)), cfg.dim)
                           : nl_srv_send_error(c, r, 400, "bad_request", "vectors[%zu] must be an array of %u numbers", i,
                                        cfg.dim);
            goto out;
        }
        if (per && !json_is_null(json_array_get(fs, i))) {
            int rc = filter_from_json(json_array_get(fs, i), &per[i]);
            if (rc) {
                res = nl_srv_send_error(c, r, 400, "bad_filter", "filters[%zu]: %s", i, nl_errdetail());
                goto out;
            }
        }
    }
    if (fj && !json_is_null(fj)) {
        int rc = filter_from_json(fj, &f);
        if (rc) {
            res = nl_srv_send_engine_error(c, r, rc, "filter");
            goto out;
        }
    }
    if (!h) {
        char **texts = calloc(nq, sizeof *texts), *ftext = f ? json_dumps(fj, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        for (size_t i = 0; per && texts && i < nq; i++)
            if (per[i])
                texts[i] = json_dumps(json_array_get(fs, i), JSON_COMPACT | JSON_ENCODE_ANY);
        nl_cluster_search_params sp = {o.k,   o.L, o.W, o.plan, o.with_meta, o.segments_each,
                                       ftext, per ? (const char *const *)texts : NULL};
        nl_cluster_call k = nl_srv_cluster_call(r, j, 1000);
        json_t *ans = NULL;
        int stc = texts ? nl_cluster_search(s->opt.cluster, &k, r->cname, q, nq, cfg.dim, &sp, 1, &ans) : 500;
        for (size_t i = 0; texts && i < nq; i++)
            free(texts[i]);
        free(texts);
        free(ftext);
        res = (ans = ans ? ans : json_pack("{s:{s:s,s:s}}", "error", "code", "internal", "message",
                                                             "out of memory"), nl_srv_send_cluster(c, r, stc, &ans));
    } else {
        nl_search_params p = {.k = o.k, .L = o.L, .W = o.W, .filter = f, .filters = (const nl_filter *const *)per,
                              .plan = o.plan, .segments = o.segments_each ? -1 : 0};
        uint64_t t0 = nl_now_ns();
        int rc = r->shard >= 0 ? nl_collection_shard_search_batch(h, (uint32_t)r->shard, q, nq, &p, hits, counts, st)
                               : nl_collection_search_batch(h, q, nq, &p, hits, counts, st);
        uint64_t took = (nl_now_ns() - t0) / 1000;
        if (rc) {
            res = nl_srv_send_engine_error(c, r, rc, "search");
            goto out;
        }
        nl_srv_count_search(s, st, nq, counts, f || per);
        json_t *all = json_array(), *ios = json_array();
        for (size_t i = 0; i < nq; i++) {
            json_array_append_new(all, hits_json(h, hits + i * o.k, counts[i], o.with_meta));
            json_array_append_new(ios, json_integer((json_int_t)st[i].ios));
        }
        res = nl_srv_send_json(c, r, 200,
                               json_pack("{s:o,s:I,s:o}", "results", all, "took_us", (json_int_t)took, "ios", ios));
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

