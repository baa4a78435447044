/*
 * http_reply.c — how the server answers: the log line format, and the reply helpers every
 * endpoint uses (JSON or protobuf bodies, errors with their request id, engine errors
 * mapped to statuses). It calls nothing above it: server.c routes to endpoints.c, and
 * both answer through here, so no two files of server/ call each other in a circle.
 *
 * Invariants: every answer carries X-Request-Id and records its status in the request;
 * a 503 carries Retry-After; a 5xx's message reaches the client without file paths (the
 * log keeps the whole detail); an error certain to have applied nothing says
 * "applied": false.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "server_internal.h"

/* ---------------------------------------------------------------- logging */

void nl_srv_logf(nl_server *s, int level, const char *fmt, ...)
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

void nl_server_log(void *server, int level, const char *fields) { nl_srv_logf(server, level, "%s", fields); }

/* ---------------------------------------------------------------- responses */

nl_api_endpoint nl_srv_api_ep(int e)
{
    switch (e) {
    case EP_UPSERT: return NL_API_UPSERT;
    case EP_DELETE: return NL_API_DELETE;
    case EP_SEARCH: return NL_API_SEARCH;
    case EP_SEARCH_BATCH: return NL_API_SEARCH_BATCH;
    default: return NL_API_OTHER;
    }
}

enum MHD_Result nl_srv_send_buffer(struct MHD_Connection *c, req *r, int status, void *buf, size_t len,
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

enum MHD_Result nl_srv_send_text(struct MHD_Connection *c, req *r, int status, const char *ctype, const char *text,
                                 size_t len)
{
    void *b = malloc(len ? len : 1);
    if (!b)
        return MHD_NO;
    memcpy(b, text, len);
    return nl_srv_send_buffer(c, r, status, b, len, ctype);
}

enum MHD_Result nl_srv_send_json(struct MHD_Connection *c, req *r, int status, json_t *body)
{
    uint8_t *pb;
    size_t len;
    if (r->proto_out && nl_srv_api_ep(r->endpoint) != NL_API_OTHER &&
        nl_proto_response(nl_srv_api_ep(r->endpoint), status, body, &pb, &len) == 0) {
        json_decref(body);
        return nl_srv_send_buffer(c, r, status, pb, len, "application/x-protobuf");
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        text = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}");
        status = 500;
        if (!text)
            return MHD_NO;
    }
    return nl_srv_send_buffer(c, r, status, text, strlen(text), "application/json");
}

/* Error codes that certainly applied nothing although their status is a 5xx: the body says
 * so ("applied": false), so a client can tell them from an indeterminate 503 and retry. */
static int refusal(int status, const char *code)
{
    return status == 507 || (status == 503 && (!strcmp(code, "overloaded") || !strcmp(code, "refused") ||
                                                !strcmp(code, "not_ready") || !strcmp(code, "shutting_down")));
}

static enum MHD_Result send_error_v(struct MHD_Connection *c, req *r, int status, const char *code, int not_applied,
                                    const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    json_t *e = json_pack("{s:{s:s,s:s,s:s}}", "error", "code", code, "message", msg, "request_id", r->rid);
    if (e && (not_applied || refusal(status, code)))
        json_object_set_new(e, "applied", json_false());
    return nl_srv_send_json(c, r, status, e ? e : json_object());
}

enum MHD_Result nl_srv_send_error(struct MHD_Connection *c, req *r, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result res = send_error_v(c, r, status, code, 0, fmt, ap);
    va_end(ap);
    return res;
}

enum MHD_Result nl_srv_send_refusal(struct MHD_Connection *c, req *r, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result res = send_error_v(c, r, status, code, 1, fmt, ap);
    va_end(ap);
    return res;
}

void nl_srv_redact_paths(const char *msg, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; msg[i] && o + 8 < cap;) {
        int starts = msg[i] == '/' && (i == 0 || strchr(" (\"'=:,", msg[i - 1]) != NULL);
        if (!starts) {
            out[o++] = msg[i++];
            continue;
        }
        while (msg[i] && !strchr(" :,)\"'", msg[i]))
            i++;
        memcpy(out + o, "<path>", 6);
        o += 6;
    }
    out[o] = '\0';
}

enum MHD_Result nl_srv_send_engine_error(struct MHD_Connection *c, req *r, int rc, const char *what)
{
    const char *detail = nl_errdetail();
    char full[900], msg[900];
    snprintf(full, sizeof full, "%s: %s", what, detail[0] ? detail : nl_strerror(rc));
    int server_side = !(rc == NL_EDIM || rc == NL_EFILTER || rc == NL_EINVAL || rc == NL_EBADVALUE ||
                        rc == NL_EFORMAT || rc == NL_EEMPTY || rc == NL_ENOTFOUND || rc == NL_EEXISTS);
    if (server_side) {
        snprintf(r->detail, sizeof r->detail, "%s", full);
        nl_srv_redact_paths(full, msg, sizeof msg);
    } else {
        snprintf(msg, sizeof msg, "%s", full);
    }
    switch (rc) {
    case NL_EFAILED:
        return nl_srv_send_error(c, r, 503, "shard_failed",
                                 "%s (the write's outcome is unknown: it may or may not be applied; upserts and "
                                 "deletes are safe to retry once the shard has reopened)", msg);
    case NL_EDOWN:
        return nl_srv_send_refusal(c, r, 503, "shard_failed", "%s (nothing was applied; the shard reopens by itself)", msg);
    case NL_ENOSPACE: return nl_srv_send_error(c, r, 507, "insufficient_storage", "%s", msg);
    case -EIO: case -ENOSPC: case -EROFS: case -EDQUOT: case -ENXIO:
        return nl_srv_send_error(c, r, 500, "io_error", "%s", msg);
    case NL_ECORRUPT: return nl_srv_send_error(c, r, 500, "corrupt", "%s", msg);
    case NL_EDIM: return nl_srv_send_error(c, r, 400, "wrong_dimension", "%s", msg);
    case NL_EFILTER: return nl_srv_send_error(c, r, 400, "bad_filter", "%s", msg);
    case NL_EINVAL: case NL_EBADVALUE: case NL_EFORMAT: case NL_EEMPTY:
        return nl_srv_send_error(c, r, 400, "bad_request", "%s", msg);
    case NL_ENOTFOUND: return nl_srv_send_error(c, r, 404, "not_found", "%s", msg);
    case NL_EEXISTS: return nl_srv_send_error(c, r, 409, "exists", "%s", msg);
    case -ETIMEDOUT: case -EAGAIN: case -EBUSY: return nl_srv_send_error(c, r, 503, "overloaded", "%s", msg);
    case NL_EUNAVAILABLE: case NL_ESTALE: return nl_srv_send_error(c, r, 503, "unavailable", "%s", msg);
    case NL_EREFUSED: return nl_srv_send_error(c, r, 503, "refused", "%s (nothing was applied)", msg);
    default: return nl_srv_send_error(c, r, 500, "internal", "%s", msg);
    }
}

/* A cluster answer: errors get the request id like every other error. */
enum MHD_Result nl_srv_send_cluster(struct MHD_Connection *c, req *r, int status, json_t **outp)
{
    /* *outp is read here, after the call that fills it (an argument of this call) ran */
    json_t *body = *outp;
    json_t *e = json_object_get(body, "error");
    if (json_is_object(e))
        json_object_set_new(e, "request_id", json_string(r->rid));
    return nl_srv_send_json(c, r, status, body ? body : json_object());
}
