/*
 * cmd_serve.c — `nearline serve`: opens the database (background flush and compaction
 * on) and serves it over HTTP (cluster/nl_server.h) until SIGTERM or SIGINT.
 *
 * Shutdown: the first signal stops accepting connections, lets requests in flight finish
 * (readyz turns 503 meanwhile), flushes every collection's fresh index to segments and
 * closes the database. A second signal exits at once: every acknowledged write is already
 * in RocksDB's synced log, so nothing is lost or corrupted, only the flush is skipped
 * (the next open replays the log).
 *
 * Cluster mode (--zookeeper): the node joins the cluster under --cluster-root as
 * --node-id, reachable at --advertise (docs/cluster.md). It serves at once but is not
 * ready (/readyz 503) until it has registered; a node id held by another live process or
 * a root that is not nearline's ends it with exit status 1. Shutdown leaves the cluster
 * first (its ephemeral znodes go with its session), then drains and flushes as above.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "nearline.h"
#include "nl_server.h"

static int help(FILE *f)
{
    fprintf(f,
            "usage: nearline serve --db DIR [--listen ADDR:PORT] [--api-keys FILE] [--tls-cert PEM --tls-key PEM]\n"
            "         [--max-body SIZE] [--max-batch N] [--max-k N] [--max-concurrent N] [--threads N]\n"
            "         [--log-level debug|info|warn|error] [--max-connections N] [--max-connections-per-client N]\n"
            "         [--disk-low-watermark SIZE|off] [--disk-high-watermark SIZE] [--max-parse-memory SIZE]\n"
            "         [--flush-points N] [--flush-age-ms MS] [--compact-dead-ratio X] [--compact-max-segments N]\n"
            "         [--zookeeper HOST:PORT[,...] --node-id ID [--advertise ADDR:PORT] [--cluster-root PATH]\n"
            "          [--cluster-key FILE] [--session-timeout-ms MS] [--peer-connections N]\n"
            "          [--replica-timeout-ms MS] [--repl-log-bytes SIZE] [--repl-log-age-s S]\n"
            "          [--move-rate-mb MB] [--moves-per-node N] [--move-drift N] [--move-disk-drift PCT]\n"
            "          [--replace-after-s S]\n"
            "          [--compactions-per-node N]]\n"
            "Defaults: --listen 127.0.0.1:7700, --max-body 64M, --max-batch 10000, --max-k 1024,\n"
            "--max-concurrent 64, --max-connections 4096 (open connections, partial requests included),\n"
            "--max-connections-per-client 512 (from one address). --api-keys: one \"KEY ROLE\" per line\n"
            "(read, write, admin). --max-parse-memory (a quarter of RAM, at most 4G): what all bodies being\n"
            "decoded at once may take, counted as 24x their size (a body over it alone is a 413; one that\n"
            "does not fit for 2 s a 503).\n"
            "Disk: upserts are refused (507 insufficient_storage) while the file system has less free than\n"
            "--disk-low-watermark (default: 2 %% of it, at most 1G) and taken again above --disk-high-watermark\n"
            "(default: twice the low one); reads and deletes go on. A shard whose write to disk failed\n"
            "refuses writes (503 shard_failed) until it has been reopened, which happens by itself.\n"
            "Background maintenance, per shard: a flush when the fresh index holds --flush-points points\n"
            "(default half its capacity) or its oldest is --flush-age-ms old (60000); a compaction of a\n"
            "segment whose deleted share reaches --compact-dead-ratio (0.2), and of the smallest when a\n"
            "shard holds more than --compact-max-segments segments (8).\n"
            "Cluster mode: --zookeeper joins the cluster under --cluster-root (/nearline) as --node-id; peers\n"
            "call it at --advertise (default: the --listen address). --cluster-key: a file whose first line\n"
            "(16+ characters) every node shares; internal calls without it are refused. --peer-connections:\n"
            "connections (and calls in flight) kept per peer node (32). Replication: a follower that makes no\n"
            "progress for --replica-timeout-ms (3000) leaves the in-sync set; a primary fails over once its\n"
            "ZooKeeper session (--session-timeout-ms, 6000) ends. Each shard's operation log is trimmed past\n"
            "--repl-log-bytes (256M) or --repl-log-age-s (3600), never past what an in-sync follower needs;\n"
            "a follower left behind that is caught up by a snapshot copy.\n"
            "Moves (the coordinator's): a rebalance when node replica counts differ by more than --move-drift (1)\n"
            "or a node holds --move-disk-drift (50; -1: never) percent more bytes than the mean and at least\n"
            "1 GiB; a node takes part in --moves-per-node (1) moves at once; the\n"
            "replicas of a node gone --replace-after-s (300) are re-created elsewhere; snapshot copies are sent\n"
            "at --move-rate-mb MB/s per node (0: no limit). --compactions-per-node (1): background compactions\n"
            "at once, and one replica of a shard at a time cluster-wide.\n");
    return f == stdout ? 0 : 2;
}

/* The cluster's log lines go through the server's logger once it runs (before: stderr). */
static _Atomic(nl_server *) log_srv;
static void log_fwd(void *ctx, int level, const char *fields)
{
    (void)ctx;
    nl_server *s = atomic_load(&log_srv);
    if (s)
        nl_server_log(s, level, fields);
    else if (level >= NL_LOG_INFO)
        fprintf(stderr, "{\"level\":\"%s\",%s}\n", level >= NL_LOG_ERROR ? "error" : level >= NL_LOG_WARN ? "warn" : "info",
                fields);
}

/* The engine's compaction gate: the cluster's once it has started (the database opens
 * first); until then, and after it stops, compactions wait. */
static nl_cluster *gate_cl;
static pthread_rwlock_t gate_lock = PTHREAD_RWLOCK_INITIALIZER;
static int compact_gate(void *ctx, const char *dir, int begin)
{
    (void)ctx;
    pthread_rwlock_rdlock(&gate_lock);
    int rc = gate_cl ? nl_cluster_compact_gate(gate_cl, dir, begin) : (begin ? -EAGAIN : 0);
    pthread_rwlock_unlock(&gate_lock);
    return rc;
}

static void gate_set(nl_cluster *cl)
{
    pthread_rwlock_wrlock(&gate_lock);
    gate_cl = cl;
    pthread_rwlock_unlock(&gate_lock);
}

static void cluster_stop(nl_cluster *cl)
{
    gate_set(NULL); /* no compaction asks a cluster being freed */
    nl_cluster_stop(cl);
}

/* The cluster key: the first line of path, 16..500 characters. */
static int read_key(const char *path, char *key, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        cli_error("serve", -errno, "cannot read the cluster key %s", path);
        return -1;
    }
    int ok = fgets(key, (int)cap, f) != NULL;
    fclose(f);
    key[ok ? strcspn(key, "\r\n") : 0] = 0;
    if (strlen(key) < 16) {
        cli_error("serve", 0, "the cluster key in %s must be a line of at least 16 characters", path);
        return -1;
    }
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    const char *C = "serve";
    const char *db = NULL, *listen = "127.0.0.1:7700", *level = "info";
    const char *zk = NULL, *node_id = NULL, *advertise = NULL, *root = NULL, *key_file = NULL;
    uint32_t session_ms = 0, peer_conns = 0, replica_ms = 0, log_age_s = 0, move_mb = 0, moves_pn = 0, drift = 0,
             replace_s = 0, compactions = 0;
    int32_t disk_drift = 0;
    uint64_t log_bytes = 0;
    nl_server_options so;
    memset(&so, 0, sizeof so);
    uint64_t body = 0;
    static const struct option opts[] = {
        {"db", 1, 0, 'd'}, {"listen", 1, 0, 'l'}, {"api-keys", 1, 0, 'a'}, {"tls-cert", 1, 0, 'c'},
        {"tls-key", 1, 0, 'k'}, {"max-body", 1, 0, 'b'}, {"max-batch", 1, 0, 'B'}, {"max-k", 1, 0, 'K'},
        {"max-concurrent", 1, 0, 'm'}, {"threads", 1, 0, 't'}, {"log-level", 1, 0, 'L'},
        {"zookeeper", 1, 0, 'z'}, {"node-id", 1, 0, 'n'}, {"flush-points", 1, 0, 'F'}, {"flush-age-ms", 1, 0, 'A'},
        {"compact-dead-ratio", 1, 0, 'R'}, {"compact-max-segments", 1, 0, 'S'}, {"advertise", 1, 0, 'v'},
        {"cluster-root", 1, 0, 'r'}, {"cluster-key", 1, 0, 'y'}, {"session-timeout-ms", 1, 0, 'T'},
        {"peer-connections", 1, 0, 'P'}, {"replica-timeout-ms", 1, 0, 'E'}, {"repl-log-bytes", 1, 0, 'G'},
        {"repl-log-age-s", 1, 0, 'H'}, {"move-rate-mb", 1, 0, 'M'}, {"moves-per-node", 1, 0, 'N'},
        {"move-drift", 1, 0, 'D'}, {"move-disk-drift", 1, 0, 'Q'}, {"replace-after-s", 1, 0, 'X'},
        {"compactions-per-node", 1, 0, 'C'}, {"max-connections", 1, 0, 1001},
        {"max-connections-per-client", 1, 0, 1002}, {"disk-low-watermark", 1, 0, 1003},
        {"disk-high-watermark", 1, 0, 1004}, {"max-parse-memory", 1, 0, 1005},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    nl_db_options dopt;
    memset(&dopt, 0, sizeof dopt);
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'd': db = optarg; break;
        case 'l': listen = optarg; break;
        case 'a': so.api_keys_path = optarg; break;
        case 'c': so.tls_cert_path = optarg; break;
        case 'k': so.tls_key_path = optarg; break;
        case 'b': if (cli_size(C, "--max-body", optarg, &body)) return 2; so.max_body = body; break;
        case 'B': if (cli_u32(C, "--max-batch", optarg, 1, 1000000, &so.max_batch)) return 2; break;
        case 'K': if (cli_u32(C, "--max-k", optarg, 1, NL_MAX_K, &so.max_k)) return 2; break;
        case 'm': if (cli_u32(C, "--max-concurrent", optarg, 1, 100000, &so.max_concurrent)) return 2; break;
        case 't': if (cli_u32(C, "--threads", optarg, 1, 1024, &so.threads)) return 2; break;
        case 'L': level = optarg; break;
        case 'F': if (cli_u32(C, "--flush-points", optarg, 1, 100000000, &dopt.flush_points)) return 2; break;
        case 'A': if (cli_u32(C, "--flush-age-ms", optarg, 1, 86400000, &dopt.flush_age_ms)) return 2; break;
        case 'R': if (cli_float(C, "--compact-dead-ratio", optarg, 0.001f, 1.0f, &dopt.compact_dead_ratio)) return 2; break;
        case 'S': if (cli_u32(C, "--compact-max-segments", optarg, 1, 100000, &dopt.compact_max_segments)) return 2; break;
        case 'z': zk = optarg; break;
        case 'n': node_id = optarg; break;
        case 'v': advertise = optarg; break;
        case 'r': root = optarg; break;
        case 'y': key_file = optarg; break;
        case 'T': if (cli_u32(C, "--session-timeout-ms", optarg, 1000, 60000, &session_ms)) return 2; break;
        case 'P': if (cli_u32(C, "--peer-connections", optarg, 1, 1024, &peer_conns)) return 2; break;
        case 'E': if (cli_u32(C, "--replica-timeout-ms", optarg, 100, 600000, &replica_ms)) return 2; break;
        case 'G': if (cli_size(C, "--repl-log-bytes", optarg, &log_bytes)) return 2; break;
        case 'H': if (cli_u32(C, "--repl-log-age-s", optarg, 1, 30 * 86400, &log_age_s)) return 2; break;
        case 'M': if (cli_u32(C, "--move-rate-mb", optarg, 0, 100000, &move_mb)) return 2; break;
        case 'N': if (cli_u32(C, "--moves-per-node", optarg, 1, 64, &moves_pn)) return 2; break;
        case 'D': if (cli_u32(C, "--move-drift", optarg, 1, 100000, &drift)) return 2; break;
        case 'Q':
            if (!strcmp(optarg, "-1")) {
                disk_drift = -1;
            } else {
                uint32_t pct;
                if (cli_u32(C, "--move-disk-drift", optarg, 1, 10000, &pct)) return 2;
                disk_drift = (int32_t)pct;
            }
            break;
        case 'X': if (cli_u32(C, "--replace-after-s", optarg, 1, 30 * 86400, &replace_s)) return 2; break;
        case 'C': if (cli_u32(C, "--compactions-per-node", optarg, 1, 64, &compactions)) return 2; break;
        case 1001: if (cli_u32(C, "--max-connections", optarg, 16, 1000000, &so.max_connections)) return 2; break;
        case 1002:
            if (cli_u32(C, "--max-connections-per-client", optarg, 1, 1000000, &so.max_connections_per_client))
                return 2;
            break;
        case 1003:
            if (!strcmp(optarg, "off"))
                dopt.disk_watermarks_off = 1;
            else if (cli_size(C, "--disk-low-watermark", optarg, &dopt.disk_low_free))
                return 2;
            break;
        case 1004: if (cli_size(C, "--disk-high-watermark", optarg, &dopt.disk_high_free)) return 2; break;
        case 1005: if (cli_size(C, "--max-parse-memory", optarg, &so.max_parse_memory)) return 2; break;
        case 'h': return help(stdout);
        default: return help(stderr);
        }
    }
    if (!db) {
        cli_error(C, 0, "--db is required");
        return 2;
    }
    if (!strcmp(level, "debug")) so.log_level = NL_LOG_DEBUG;
    else if (!strcmp(level, "info")) so.log_level = NL_LOG_INFO;
    else if (!strcmp(level, "warn")) so.log_level = NL_LOG_WARN;
    else if (!strcmp(level, "error")) so.log_level = NL_LOG_ERROR;
    else {
        cli_error(C, 0, "--log-level must be debug, info, warn or error");
        return 2;
    }
    char addr[64];
    const char *colon = strrchr(listen, ':');
    uint32_t port;
    if (!colon || (size_t)(colon - listen) >= sizeof addr || colon == listen ||
        cli_u32(C, "--listen port", colon + 1, 1, 65535, &port)) {
        cli_error(C, 0, "--listen expects ADDR:PORT, e.g. 127.0.0.1:7700");
        return 2;
    }
    memcpy(addr, listen, (size_t)(colon - listen));
    addr[colon - listen] = 0;
    so.listen_addr = addr;
    so.port = (uint16_t)port;
    if (!zk && (node_id || advertise || root || key_file)) {
        cli_error(C, 0, "--node-id, --advertise, --cluster-root and --cluster-key need --zookeeper");
        return 2;
    }
    if (zk && !node_id) {
        cli_error(C, 0, "cluster mode needs --node-id (a name unique in the cluster, e.g. node-1)");
        return 2;
    }
    if (zk && !advertise && !strcmp(addr, "0.0.0.0")) {
        cli_error(C, 0, "--listen 0.0.0.0 needs --advertise ADDR:PORT (the address peers call)");
        return 2;
    }
    if (zk && so.api_keys_path && !key_file) {
        cli_error(C, 0, "--api-keys in cluster mode needs --cluster-key: internal calls carry the cluster key, "
                  "and without one they would bypass the API keys");
        return 2;
    }
    char key[512] = {0};
    if (key_file && read_key(key_file, key, sizeof key) != 0)
        return 2;

    /* Signals go to this thread only (sigwait), so the pool's threads never see them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    nl_db *dbh = NULL;
    /* The pool has more threads than CPUs (searches wait on disk): polling the ring
     * would take the CPU from the threads that have work. */
    dopt.io_spin_us = 1;
    if (zk) {
        dopt.compact_gate = compact_gate;
        dopt.compact_gate_ctx = NULL;
    }
    /* Every connection, segment file and RocksDB table is a descriptor: take the hard limit
     * rather than the usual soft 1024, which --max-connections would otherwise never reach. */
    struct rlimit nof;
    if (getrlimit(RLIMIT_NOFILE, &nof) == 0 && nof.rlim_cur < nof.rlim_max) {
        nof.rlim_cur = nof.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nof) != 0) { /* best effort: the soft limit stays */ }
    }
    int rc = nl_db_open(db, &dopt, &dbh);
    if (rc) {
        cli_error(C, rc, "cannot open database %s", db);
        return 1;
    }
    nl_cluster *cl = NULL;
    if (zk) {
        nl_cluster_options co = {.zookeeper = zk, .root = root, .node_id = node_id,
                                 .advertise = advertise ? advertise : listen, .db_dir = db,
                                 .cluster_key = key_file ? key : NULL, .tls = so.tls_cert_path != NULL,
                                 .tls_ca = so.tls_cert_path, .session_ms = session_ms,
                                 .peer_connections = peer_conns, .replica_timeout_ms = replica_ms,
                                 .log_max_bytes = log_bytes, .log_max_age_ms = (uint64_t)log_age_s * 1000,
                                 .move_rate_bps = (uint64_t)move_mb << 20, .moves_per_node = moves_pn,
                                 .move_drift = drift, .move_disk_drift_pct = disk_drift,
                                 .replace_after_ms = (uint64_t)replace_s * 1000,
                                 .compactions_per_node = compactions, .db = dbh, .log = log_fwd};
        if ((rc = nl_cluster_start(&co, &cl)) != 0) {
            cli_error(C, rc, "cannot join the cluster");
            nl_db_close(dbh);
            return rc == NL_EINVAL ? 2 : 1;
        }
        so.cluster = cl;
        gate_set(cl);
    }
    memset(key, 0, sizeof key);
    nl_server *srv;
    if ((rc = nl_server_start(dbh, &so, &srv)) != 0) {
        cli_error(C, rc, "cannot start the server");
        cluster_stop(cl);
        nl_db_close(dbh);
        return 1;
    }
    atomic_store(&log_srv, srv);
    int sig = 0, fatal = 0;
    for (;;) { /* signals; in cluster mode, also a refusal by the cluster */
        struct timespec ts = {0, 100000000};
        sig = sigtimedwait(&set, NULL, &ts);
        if (sig > 0)
            break;
        if (cl && (fatal = nl_cluster_fatal(cl)) != 0)
            break;
    }
    if (fatal) {
        cli_error(C, fatal, fatal == NL_EEXISTS ? "node id %s is already registered by another live process: refusing "
                  "to start" : "%s is not a nearline cluster root: refusing to start", fatal == NL_EEXISTS ? node_id
                  : root ? root : "/nearline");
        nl_server_quiesce(srv);
        nl_server_stop(srv);
        cluster_stop(cl);
        nl_db_close(dbh);
        return 1;
    }
    fprintf(stderr, "nearline serve: signal %d: finishing requests in flight, then flushing (again to exit now)\n",
            sig);
    nl_server_quiesce(srv);
    /* Leave the cluster first: routers stop sending here as soon as the session ends; the
     * requests in flight keep their router until the server has finished them. */
    nl_cluster_leave(cl);
    /* A second signal during the drain and flush ends the process at once. */
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    nl_server_stop(srv);
    atomic_store(&log_srv, NULL);
    cluster_stop(cl);
    char **names;
    size_t n;
    if (nl_collection_list(dbh, &names, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            nl_collection *h;
            if (nl_collection_open(dbh, names[i], &h) == 0) {
                if ((rc = nl_collection_flush(h)) != 0)
                    cli_error(C, rc, "flush of '%s' failed (its writes stay in the log)", names[i]);
                nl_collection_close(h);
            }
        }
        nl_names_free(names, n);
    }
    nl_db_close(dbh);
    fprintf(stderr, "nearline serve: stopped cleanly\n");
    return 0;
}
