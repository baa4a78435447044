/* server_internal.h — what the server's files share. Not installed: nl_server.h is the
 * module's interface. The files, from the top:
 *   server.c      libmicrohttpd, admission, path routing, lifecycle
 *   endpoints.c   the public endpoints and their JSON parsing
 *   auth.c        API keys and the role check
 *   metrics.c     counters and the Prometheus exposition
 *   http_reply.c  the log line and every reply helper (calls nothing above it)
 *   api_proto.c   the protobuf codec of the public API; ui.c the status page */
#ifndef NL_SERVER_INTERNAL_H
#define NL_SERVER_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

#include "api_proto.h"
#include "nl_cluster.h"
#include "nl_server.h"

/* the status codes and latency buckets counted per endpoint (arrays in server.c) */
#define NCODES 13
#define NBUCKETS 13

enum {
    EP_HEALTHZ, EP_READYZ, EP_METRICS, EP_LIST, EP_CREATE, EP_DESCRIBE, EP_DROP, EP_UPSERT, EP_DELETE,
    EP_GET, EP_SEARCH, EP_SEARCH_BATCH, EP_INTERNAL, EP_INTERNAL_SEARCH, EP_OTHER, EP_COUNT
};
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
    atomic_uint_fast64_t parse_used; /* bytes of max_parse_memory reserved by bodies being decoded */
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
    char detail[900]; /* a 5xx's full engine detail (paths included): logged, never sent */
    struct nl_server *srv;
    uint64_t parse_reserved; /* bytes of the parse budget this request holds (released when done) */
} req;

/* A decoded JSON body takes up to this many times its size in memory (jansson: a number of
 * two characters becomes a 24-byte value and an 8-byte slot; measured 22x on a vector of
 * one-digit numbers). The parse budget is counted in these terms. */
#define NL_PARSE_AMPLIFICATION 24u

/* ---------------------------------------------------------------- http_reply.c */

/* A log line in the server's format (fields: the inside of a JSON object), at level NL_LOG_*. */
void nl_srv_logf(nl_server *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Copies msg into out with every absolute path replaced by "<path>": a client learns what
 * failed, not where the server keeps its files (the log has the whole message). */
void nl_srv_redact_paths(const char *msg, char *out, size_t cap);

/* Responses: each queues the answer (taking over body) and returns MHD's result. */
nl_api_endpoint nl_srv_api_ep(int e);
/* buf (malloc'd, taken over) as the answer, with the headers every answer carries. */
enum MHD_Result nl_srv_send_buffer(struct MHD_Connection *c, req *r, int status, void *buf, size_t len,
                                   const char *ctype);
enum MHD_Result nl_srv_send_json(struct MHD_Connection *c, req *r, int status, json_t *body);
/* text (copied) as the answer with its content type. */
enum MHD_Result nl_srv_send_text(struct MHD_Connection *c, req *r, int status, const char *ctype, const char *text,
                                 size_t len);
/* The status page (ui.c). */
extern const char nl_ui_page[];
extern const size_t nl_ui_page_len;
enum MHD_Result nl_srv_send_error(struct MHD_Connection *c, req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* An error whose code does not say by itself that nothing was applied, for a call that
 * certainly applied nothing ("applied": false). */
enum MHD_Result nl_srv_send_refusal(struct MHD_Connection *c, req *r, int status, const char *code, const char *fmt,
                                    ...) __attribute__((format(printf, 5, 6)));
/* An engine error as an HTTP status and code. The detail of a server-side failure (5xx)
 * goes to the log whole and to the client without paths. */
enum MHD_Result nl_srv_send_engine_error(struct MHD_Connection *c, req *r, int rc, const char *what);
/* A cluster answer (*outp, read after the call that fills it). */
enum MHD_Result nl_srv_send_cluster(struct MHD_Connection *c, req *r, int status, json_t **outp);
/* The body as JSON (protobuf bodies converted); NULL with the 400 queued in *res. */
json_t *nl_srv_parse_body(struct MHD_Connection *c, req *r, enum MHD_Result *res);

/* ---------------------------------------------------------------- auth.c, metrics.c */

/* The key file into s->keys: 0 or NL_EINVAL naming the line. */
int nl_srv_load_keys(nl_server *s, const char *path);
/* Wipes and frees the keys. */
void nl_srv_keys_free(nl_server *s);
/* 0 when the request's key has at least role need; otherwise the 401/403 is queued in *res. */
int nl_srv_check_auth(nl_server *s, struct MHD_Connection *c, req *r, int need, enum MHD_Result *res);

/* /metrics: the Prometheus text exposition. */
enum MHD_Result nl_srv_ep_metrics(nl_server *s, struct MHD_Connection *c, req *r);
/* Counts a completed request (endpoint EP_*, its status, its latency). */
void nl_srv_metrics_done(metrics *m, int e, int status, uint64_t us);
const char *nl_srv_endpoint_name(int e);

/* ---------------------------------------------------------------- endpoints.c */

/* Endpoints (endpoints.c). h is the local collection, or NULL in cluster mode (then the
 * router answers, with r->cname and r->ccfg). */
json_t *nl_srv_describe_json(nl_collection *h);
#define NL_MAX_REPLICAS_API 5
int nl_srv_create_config(nl_server *s, struct MHD_Connection *c, req *r, json_t *j, nl_collection_config *cfg,
                         uint32_t *replicas, int *quorum, enum MHD_Result *res);
enum MHD_Result nl_srv_ep_create(nl_server *s, struct MHD_Connection *c, req *r, const char *name);
enum MHD_Result nl_srv_ep_list(nl_server *s, struct MHD_Connection *c, req *r);
enum MHD_Result nl_srv_ep_upsert(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r);
enum MHD_Result nl_srv_ep_delete(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r);
enum MHD_Result nl_srv_ep_get(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r, const char *idtext);
enum MHD_Result nl_srv_ep_search(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r);
enum MHD_Result nl_srv_ep_search_batch(nl_server *s, nl_collection *h, struct MHD_Connection *c, req *r);

#endif
