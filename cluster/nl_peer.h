/*
 * nl_peer.h — node-to-node calls: HTTP/1.1 keep-alive over libcurl's multi interface,
 * driven by one thread that fans every request out in parallel, with a circuit breaker
 * and metrics per peer.
 *
 * A caller hands in a set of calls (one per shard, say) and a deadline, and blocks until
 * every call has an outcome: an HTTP status with its body, or an error (-ETIMEDOUT when
 * the deadline passed, -ECONNREFUSED / -EHOSTUNREACH / -EIO when the peer could not be
 * reached, NL_EUNAVAILABLE when the peer's breaker is open). It never waits past the
 * deadline (plus the loop's wake-up latency).
 *
 * Breaker, per peer: closed -> open after `breaker_failures` consecutive failures (no
 * answer, or a 5xx) -> after `breaker_open_ms` half-open: one call goes through as a
 * probe, the others fail fast -> the probe's success closes it, its failure re-opens it.
 * So a dead node costs one timeout, not one per request.
 *
 * Every call carries X-Request-Id, a W3C traceparent (a new span id per call, the trace id
 * of the request) and, when a cluster key is set, X-Nearline-Cluster-Key.
 *
 * Ownership: calls[] and their inputs stay the caller's; each call's `body_out` is
 * malloc'd for the caller to free.
 */
#ifndef NL_PEER_H
#define NL_PEER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nl_peer nl_peer;

typedef struct {
    const char *cluster_key;    /* sent on every call; NULL = none */
    const char *ca_file;        /* https peers: the CA (or shared certificate) to verify with */
    uint32_t breaker_failures;  /* 0 = 3 */
    uint32_t breaker_open_ms;   /* 0 = 2000 */
    uint32_t max_per_peer;      /* connections kept per peer; 0 = 32 */
} nl_peer_options;

typedef struct {
    /* in */
    const char *peer;           /* node id (breaker and metrics key) */
    const char *base_url;       /* "http://127.0.0.1:7701" */
    const char *method;         /* "GET", "POST", "DELETE" */
    char path[600];             /* "/internal/v1/..." */
    const void *body;           /* NULL for none */
    size_t body_len;
    /* optional: another peer that can serve the same call (a replica). It is called when
     * the first fails (no answer, a 5xx, its breaker open) or, with hedge_ms, when the
     * first has not answered after hedge_ms; the first usable answer wins and the other
     * transfer is cancelled. */
    const char *alt_peer, *alt_base_url;
    uint32_t hedge_ms;
    /* out */
    int status;                 /* HTTP status, 0 when there was no answer */
    int err;                    /* 0 or why there was no answer */
    char *body_out;             /* malloc'd answer (NUL-terminated), or NULL */
    size_t body_out_len;
    uint64_t latency_us;
    int served_by_alt;          /* the answer is the alternative's */
    int hedged;                 /* the alternative was called */
} nl_peer_call;

int nl_peer_create(const nl_peer_options *opt, nl_peer **out);
void nl_peer_destroy(nl_peer *r);

/* Runs calls[0..n) in parallel; returns when all are done or timeout_ms has passed
 * (those still running are cancelled with err -ETIMEDOUT). request_id and traceparent
 * (the incoming one, or NULL to start a trace) go on every call. 0, or -ENOMEM. */
int nl_peer_run(nl_peer *r, nl_peer_call *calls, size_t n, uint32_t timeout_ms, const char *request_id,
                  const char *traceparent);

/* A stream's call: one blocking request on a connection the caller keeps (*conn: NULL
 * at first, made here; free it with nl_peer_stream_close), so that a stream of requests
 * to one peer (a replication link) goes in order on one kept-alive connection. POST
 * (body, len, content_type: NULL = application/octet-stream) or GET (body NULL); the
 * cluster key and the CA as for nl_peer_run; no breaker (a link keeps its own backoff).
 * The HTTP status, or 0 when nothing was reached; *out (malloc'd, NUL-terminated; may be
 * NULL) and *out_len the answer's body. */
int nl_peer_stream_call(nl_peer *r, void **conn, const char *url, const void *body, size_t len,
                          const char *content_type, uint32_t timeout_ms, char **out, size_t *out_len);
void nl_peer_stream_close(void *conn);

/* The hedge delay for calls to a peer: the 95th percentile of its last 128 successful
 * latencies, in ms (at least 1; 50 until 20 are known). */
uint32_t nl_peer_hedge_ms(nl_peer *r, const char *peer);
/* Calls to a peer in flight now. */
uint32_t nl_peer_inflight(nl_peer *r, const char *peer);
/* Breaker state of a peer: 0 closed, 1 open, 2 half-open (unknown peers: closed). */
int nl_peer_breaker(nl_peer *r, const char *peer);

/* Prometheus text (HELP and TYPE on every family) of the per-peer metrics. */
void nl_peer_metrics(nl_peer *r, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
