/*
 * api_proto.c — the protobuf form of the points and search endpoints (proto/nearline.proto),
 * as an adapter around the JSON ones: a protobuf body is decoded (protobuf-c, which checks
 * the wire format and bounds) into the very JSON object the JSON API would have received,
 * and a JSON answer is encoded back into the endpoint's protobuf message. So both APIs
 * share one validation path and cannot drift apart; the price is a conversion through
 * jansson, small next to a search.
 *
 * Metadata and filters are JSON text inside the messages; text that does not parse is a
 * 400 like any other malformed input.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_proto.h"
#include "nearline.pb-c.h"

/* A varint at b[*off..len); -1 when it runs past the end or over 10 bytes. */
static int wire_varint(const uint8_t *b, size_t len, size_t *off, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 70 && *off < len; shift += 7) {
        uint8_t c = b[(*off)++];
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

/* Walks the wire form of a message that protobuf-c has already unpacked (so the framing is
 * known to be sound) and checks what protobuf-c does not: a string field must be UTF-8 and
 * hold no NUL, since the unpacked C string ends at the first NUL ("ab\0cd" would become
 * "ab", another point's id) and the JSON API refuses both. 0, or -1 with err set. */
static int check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *b, size_t len, int depth, char *err,
                         size_t errlen)
{
    size_t off = 0;
    if (depth > 8)
        return 0; /* nearline's messages nest three deep; the unpack bounded the rest */
    while (off < len) {
        uint64_t key, n;
        if (wire_varint(b, len, &off, &key))
            return -1;
        switch (key & 7) {
        case 0: if (wire_varint(b, len, &off, &n)) return -1; continue;
        case 1: off += 8; continue;
        case 5: off += 4; continue;
        case 2: break;
        default: snprintf(err, errlen, "the body uses protobuf groups"); return -1;
        }
        if (wire_varint(b, len, &off, &n) || n > len - off)
            return -1;
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
        const char *s = (const char *)b + off;
        if (f && f->type == PROTOBUF_C_TYPE_STRING) {
            json_t *utf8 = json_stringn(s, (size_t)n); /* jansson checks UTF-8, and takes NULs */
            int bad_utf8 = utf8 == NULL;
            json_decref(utf8);
            if (bad_utf8 || memchr(s, 0, (size_t)n)) {
                snprintf(err, errlen, "the string field '%s' of %s %s", f->name, d->short_name,
                         bad_utf8 ? "is not valid UTF-8" : "holds a NUL byte");
                return -1;
            }
        } else if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                   check_strings(f->descriptor, b + off, (size_t)n, depth + 1, err, errlen)) {
            return -1;
        }
        off += (size_t)n;
    }
    return 0;
}

/* The first value of v[0..n) that is NaN or infinite, or -1 (json_real refuses them, so
 * they would vanish from the array and read as a wrong dimension). */
static long first_nonfinite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return (long)i;
    return -1;
}

static json_t *id_json(const Nearline__Id *id)
{
    if (!id)
        return json_null();
    if (id->kind_case == NEARLINE__ID__KIND_NUM)
        return id->num <= (uint64_t)INT64_MAX ? json_integer((json_int_t)id->num) : json_null();
    if (id->kind_case == NEARLINE__ID__KIND_STR)
        return json_string(id->str); /* NULL (not UTF-8) becomes a bad id below */
    return json_null();
}

/* JSON text (possibly empty) to a value; *ok = 0 when it does not parse. */
static json_t *text_json(const char *text, int *ok)
{
    if (!text || !*text)
        return NULL;
    json_error_t err;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        *ok = 0;
    return j;
}

static json_t *floats_json(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

static json_t *search_json(const Nearline__SearchRequest *q, int *ok)
{
    json_t *o = json_object();
    json_object_set_new(o, "vector", floats_json(q->query, q->n_query));
    if (q->k)
        json_object_set_new(o, "k", json_integer(q->k));
    if (q->l)
        json_object_set_new(o, "L", json_integer(q->l));
    if (q->without_metadata)
        json_object_set_new(o, "with_metadata", json_false());
    if (q->beam)
        json_object_set_new(o, "beam", json_integer(q->beam));
    if (q->plan)
        json_object_set_new(o, "plan", json_string(q->plan == 1 ? "graph" : q->plan == 2 ? "scan" : "bad"));
    if (q->segments)
        json_object_set_new(o, "segments", json_string(q->segments == 1 ? "each" : "bad"));
    json_t *f = text_json(q->filter, ok);
    if (f)
        json_object_set_new(o, "filter", f);
    return o;
}

json_t *nl_proto_request(nl_api_endpoint ep, const void *buf, size_t len, char *err, size_t errlen)
{
    const uint8_t *b = buf;
    json_t *out = NULL;
    int ok = 1;
    char why[200] = "";
    switch (ep) {
    case NL_API_UPSERT: {
        Nearline__UpsertRequest *m = nearline__upsert_request__unpack(NULL, len, b);
        if (!m)
            break;
        json_t *pts = json_array();
        if (check_strings(&nearline__upsert_request__descriptor, b, len, 0, why, sizeof why) && !why[0])
            snprintf(why, sizeof why, "the body's framing is unsound");
        for (size_t i = 0; i < m->n_points && !why[0]; i++) {
            const Nearline__Vector *v = m->points[i];
            long bad = first_nonfinite(v->values, v->n_values);
            if (bad >= 0) {
                snprintf(why, sizeof why, "point %zu: value %ld is NaN or Inf", i, bad);
                break;
            }
            json_t *p = json_pack("{s:o,s:o}", "id", id_json(v->id), "vector", floats_json(v->values, v->n_values));
            if (!p) { /* never dropped silently: that point would go missing from the batch */
                snprintf(why, sizeof why, "point %zu: its id or vector cannot be read", i);
                break;
            }
            json_t *meta = text_json(v->metadata, &ok);
            if (meta)
                json_object_set_new(p, "metadata", meta);
            json_array_append_new(pts, p);
        }
        out = json_pack("{s:o}", "points", pts);
        nearline__upsert_request__free_unpacked(m, NULL);
        break;
    }
    case NL_API_DELETE: {
        Nearline__DeleteRequest *m = nearline__delete_request__unpack(NULL, len, b);
        if (!m)
            break;
        out = json_object();
        if (check_strings(&nearline__delete_request__descriptor, b, len, 0, why, sizeof why) && !why[0])
            snprintf(why, sizeof why, "the body's framing is unsound");
        if (m->n_ids) {
            json_t *ids = json_array();
            for (size_t i = 0; i < m->n_ids; i++)
                json_array_append_new(ids, id_json(m->ids[i]));
            json_object_set_new(out, "ids", ids);
        }
        json_t *f = text_json(m->filter, &ok);
        if (f)
            json_object_set_new(out, "filter", f);
        nearline__delete_request__free_unpacked(m, NULL);
        break;
    }
    case NL_API_SEARCH: {
        Nearline__SearchRequest *m = nearline__search_request__unpack(NULL, len, b);
        if (!m)
            break;
        if (check_strings(&nearline__search_request__descriptor, b, len, 0, why, sizeof why) && !why[0])
            snprintf(why, sizeof why, "the body's framing is unsound");
        if (!why[0] && first_nonfinite(m->query, m->n_query) >= 0)
            snprintf(why, sizeof why, "query value %ld is NaN or Inf", first_nonfinite(m->query, m->n_query));
        out = search_json(m, &ok);
        nearline__search_request__free_unpacked(m, NULL);
        break;
    }
    case NL_API_SEARCH_BATCH: {
        Nearline__BatchSearchRequest *m = nearline__batch_search_request__unpack(NULL, len, b);
        if (!m)
            break;
        out = json_object();
        json_t *vs = json_array(), *fs = json_array();
        int any_filter = 0;
        if (check_strings(&nearline__batch_search_request__descriptor, b, len, 0, why, sizeof why) && !why[0])
            snprintf(why, sizeof why, "the body's framing is unsound");
        for (size_t i = 0; i < m->n_queries; i++) {
            const Nearline__SearchRequest *q = m->queries[i];
            if (!why[0] && first_nonfinite(q->query, q->n_query) >= 0)
                snprintf(why, sizeof why, "query %zu: value %ld is NaN or Inf", i, first_nonfinite(q->query, q->n_query));
            json_array_append_new(vs, floats_json(q->query, q->n_query));
            json_t *f = text_json(q->filter, &ok);
            any_filter |= f != NULL;
            json_array_append_new(fs, f ? f : json_null());
        }
        json_object_set_new(out, "vectors", vs);
        if (any_filter)
            json_object_set_new(out, "filters", fs);
        else
            json_decref(fs);
        if (m->n_queries) {
            const Nearline__SearchRequest *q0 = m->queries[0];
            if (q0->k) json_object_set_new(out, "k", json_integer(q0->k));
            if (q0->l) json_object_set_new(out, "L", json_integer(q0->l));
            if (q0->without_metadata) json_object_set_new(out, "with_metadata", json_false());
            if (q0->beam) json_object_set_new(out, "beam", json_integer(q0->beam));
            if (q0->plan)
                json_object_set_new(out, "plan", json_string(q0->plan == 1 ? "graph" : q0->plan == 2 ? "scan" : "bad"));
            if (q0->segments)
                json_object_set_new(out, "segments", json_string(q0->segments == 1 ? "each" : "bad"));
        }
        nearline__batch_search_request__free_unpacked(m, NULL);
        break;
    }
    default:
        snprintf(err, errlen, "this endpoint speaks JSON only");
        return NULL;
    }
    if (why[0]) {
        json_decref(out);
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    if (!out) {
        snprintf(err, errlen, "the body is not a valid protobuf message for this endpoint");
        return NULL;
    }
    if (!ok) {
        json_decref(out);
        snprintf(err, errlen, "metadata or filter text inside the message is not valid JSON");
        return NULL;
    }
    return out;
}

/* ---------------------------------------------------------------- responses */

static void id_from(json_t *j, Nearline__Id *id)
{
    nearline__id__init(id);
    if (json_is_integer(j)) {
        id->kind_case = NEARLINE__ID__KIND_NUM;
        id->num = (uint64_t)json_integer_value(j);
    } else if (json_is_string(j)) {
        id->kind_case = NEARLINE__ID__KIND_STR;
        id->str = (char *)json_string_value(j);
    }
}

/* Keeps p for freeing after the message is packed. */
static int keep(char ***texts, size_t *n, void *p)
{
    char **t = realloc(*texts, (*n + 1) * sizeof **texts);
    if (!t) {
        free(p);
        return -ENOMEM;
    }
    *texts = t;
    t[(*n)++] = p;
    return 0;
}

/* "partial" and "missing_shards" of a cluster answer; the array kept in *texts. */
static int partial_from(json_t *body, protobuf_c_boolean *partial, size_t *n, uint32_t **miss, char ***texts,
                        size_t *ntexts)
{
    json_t *ms = json_object_get(body, "missing_shards");
    *partial = json_is_true(json_object_get(body, "partial"));
    *n = json_array_size(ms);
    *miss = NULL;
    if (!*n)
        return 0;
    *miss = calloc(*n, sizeof **miss);
    if (!*miss || keep(texts, ntexts, *miss))
        return -ENOMEM;
    for (size_t i = 0; i < *n; i++)
        (*miss)[i] = (uint32_t)json_integer_value(json_array_get(ms, i));
    return 0;
}

/* One result list; everything allocated is kept in *texts (freed by the caller). */
static int results_from(json_t *arr, Nearline__SearchResponse *r, char ***texts, size_t *ntexts)
{
    size_t n = json_array_size(arr);
    Nearline__SearchResult *res = calloc(n ? n : 1, sizeof *res);
    Nearline__Id *ids = calloc(n ? n : 1, sizeof *ids);
    Nearline__SearchResult **ptrs = calloc(n ? n : 1, sizeof *ptrs);
    if (keep(texts, ntexts, res) || keep(texts, ntexts, ids) || keep(texts, ntexts, ptrs) || !res || !ids || !ptrs)
        return -ENOMEM;
    r->n_results = n;
    r->results = ptrs;
    for (size_t i = 0; i < n; i++) {
        json_t *h = json_array_get(arr, i), *meta = json_object_get(h, "metadata");
        nearline__search_result__init(&res[i]);
        id_from(json_object_get(h, "id"), &ids[i]);
        res[i].id = &ids[i];
        res[i].score = (float)json_number_value(json_object_get(h, "score"));
        if (meta && !json_is_null(meta)) {
            char *m = json_dumps(meta, JSON_COMPACT);
            if (!m || keep(texts, ntexts, m))
                return -ENOMEM;
            res[i].metadata = m;
        }
        ptrs[i] = &res[i];
    }
    return 0;
}

int nl_proto_response(nl_api_endpoint ep, int status, json_t *body, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    ProtobufCMessage *msg = NULL;
    Nearline__Error e = NEARLINE__ERROR__INIT;
    Nearline__UpsertResponse u = NEARLINE__UPSERT_RESPONSE__INIT;
    Nearline__DeleteResponse d = NEARLINE__DELETE_RESPONSE__INIT;
    Nearline__SearchResponse s = NEARLINE__SEARCH_RESPONSE__INIT;
    Nearline__BatchSearchResponse bs = NEARLINE__BATCH_SEARCH_RESPONSE__INIT;
    Nearline__SearchResponse *subs = NULL;
    char **texts = NULL;
    size_t ntexts = 0;
    int rc = 0;
    if (status >= 400) {
        json_t *err = json_object_get(body, "error");
        e.code = (char *)json_string_value(json_object_get(err, "code"));
        e.message = (char *)json_string_value(json_object_get(err, "message"));
        e.request_id = (char *)json_string_value(json_object_get(err, "request_id"));
        if (!e.code) e.code = (char *)"";
        if (!e.message) e.message = (char *)"";
        if (!e.request_id) e.request_id = (char *)"";
        e.not_applied = json_is_false(json_object_get(body, "applied"));
        msg = &e.base;
    } else if (ep == NL_API_UPSERT) {
        u.upserted = (uint64_t)json_integer_value(json_object_get(body, "upserted"));
        msg = &u.base;
    } else if (ep == NL_API_DELETE) {
        d.deleted = (uint64_t)json_integer_value(json_object_get(body, "deleted"));
        msg = &d.base;
    } else if (ep == NL_API_SEARCH) {
        s.took_us = (uint64_t)json_integer_value(json_object_get(body, "took_us"));
        s.ios = (uint64_t)json_integer_value(json_object_get(body, "ios"));
        rc = results_from(json_object_get(body, "results"), &s, &texts, &ntexts);
        if (!rc)
            rc = partial_from(body, &s.partial, &s.n_missing_shards, &s.missing_shards, &texts, &ntexts);
        msg = &s.base;
    } else if (ep == NL_API_SEARCH_BATCH) {
        json_t *all = json_object_get(body, "results");
        size_t n = json_array_size(all);
        bs.took_us = (uint64_t)json_integer_value(json_object_get(body, "took_us"));
        bs.n_responses = n;
        bs.responses = calloc(n ? n : 1, sizeof *bs.responses);
        subs = calloc(n ? n : 1, sizeof *subs);
        if (!bs.responses || !subs)
            rc = -ENOMEM;
        for (size_t i = 0; !rc && i < n; i++) {
            nearline__search_response__init(&subs[i]);
            rc = results_from(json_array_get(all, i), &subs[i], &texts, &ntexts);
            subs[i].ios = (uint64_t)json_integer_value(json_array_get(json_object_get(body, "ios"), i));
            bs.responses[i] = &subs[i];
        }
        if (!rc)
            rc = partial_from(body, &bs.partial, &bs.n_missing_shards, &bs.missing_shards, &texts, &ntexts);
        msg = &bs.base;
    } else {
        return NL_EUNSUPPORTED;
    }
    if (!rc) {
        *len = protobuf_c_message_get_packed_size(msg);
        *out = malloc(*len ? *len : 1);
        if (!*out)
            rc = -ENOMEM;
        else
            protobuf_c_message_pack(msg, *out);
    }
    for (size_t i = 0; i < ntexts; i++)
        free(texts[i]);
    free(texts);
    free(subs);
    free(bs.responses);
    return rc;
}
