/*
 * nl_server.h — the HTTP/JSON front of one node: the API of docs/api.md (DESIGN.md
 * section 6) over an open database, on libmicrohttpd with a thread pool.
 *
 * What it guards: bodies are bounded (413), batches and k are bounded (400), concurrent
 * requests are bounded (503 with Retry-After), every endpoint but the health checks needs
 * an API key when a key file is given (401 without or with an unknown key, 403 when its
 * role is too low), and no request body, however malformed, reaches the engine before it
 * has been parsed and checked whole — the engine then applies a batch all or nothing.
 * Every response carries an X-Request-Id; one JSON log line per request goes to the log
 * stream at level info.
 *
 * Lifecycle: nl_server_start (the database stays the caller's, open for the server's
 * lifetime) -> requests on the pool's threads -> nl_server_quiesce (stop accepting;
 * in-flight requests finish) -> nl_server_stop (waits for them, frees everything).
 */
#ifndef NL_SERVER_H
#define NL_SERVER_H

#include <stdint.h>
#include <stdio.h>

#include "nearline.h"
#include "nl_cluster.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { NL_LOG_DEBUG = 0, NL_LOG_INFO = 1, NL_LOG_WARN = 2, NL_LOG_ERROR = 3 };

typedef struct {
    const char *listen_addr;   /* IPv4 address; NULL = 127.0.0.1 */
    uint16_t port;             /* 0 = 7700 */
    const char *api_keys_path; /* "key role" lines (read|write|admin); NULL = no auth */
    const char *tls_cert_path; /* PEM; both or neither */
    const char *tls_key_path;
    uint64_t max_body;         /* bytes; 0 = 64 MiB */
    uint32_t max_batch;        /* points per upsert / queries per batch search; 0 = 10000 */
    uint32_t max_k;            /* 0 = NL_MAX_K */
    uint32_t max_concurrent;   /* requests being served at once; 0 = 64 */
    uint32_t max_connections;  /* open connections, idle and partial ones included; 0 = 4096 */
    uint64_t max_parse_memory; /* bytes all bodies being decoded at once may take, counted as
                                * 24 x their size; 0 = a quarter of RAM, at most 4 GiB. A body
                                * that does not fit now waits briefly, then is refused (503) */
    uint32_t max_connections_per_client; /* from one client address; 0 = 512 (peers of a
                                          * cluster on one host share 127.0.0.1) */
    uint32_t threads;          /* pool size; 0 = 4 x CPUs, at least 16 (searches wait on disk) */
    int log_level;             /* NL_LOG_*; messages below it are dropped */
    FILE *log;                 /* NULL = stderr */
    nl_cluster *cluster;       /* cluster mode (borrowed; outlives the server): collections
                                * from ZooKeeper, points and searches through the router,
                                * and the /internal endpoints; NULL = one node */
} nl_server_options;

typedef struct nl_server nl_server;

/* Starts serving db. NL_EINVAL (bad option or key file, detail says which line) or a
 * negated errno (e.g. -EADDRINUSE). *out owned by the caller: nl_server_stop. */
int nl_server_start(nl_db *db, const nl_server_options *opt, nl_server **out);
/* The port actually bound (useful with port 0 in tests: not supported; returns opt's). */
uint16_t nl_server_port(const nl_server *s);
/* A log line in the server's format from another module (fields: the inside of a JSON
 * object), at level NL_LOG_*. Usable as an nl_cluster_log_fn with ctx = the server. */
void nl_server_log(void *server, int level, const char *fields);
/* Stops accepting connections and marks the server not ready; requests in flight go on. */
void nl_server_quiesce(nl_server *s);
/* Requests still being served. */
uint32_t nl_server_inflight(const nl_server *s);
/* Waits for the requests in flight and frees the server. */
void nl_server_stop(nl_server *s);

#ifdef __cplusplus
}
#endif
#endif
