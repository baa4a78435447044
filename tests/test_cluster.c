/*
 * test_cluster.c — the cluster's pure parts and its router, without ZooKeeper:
 *   - placement (nl_shard_map_place) over thousands of seeded random clusters: never two
 *     replicas of a shard on one node, the primary first, deterministic and independent of
 *     the order nodes are listed in, balanced when the nodes start empty;
 *   - the znode payloads: encode/decode round trips, and hostile bytes (mutations of valid
 *     records, and hand-written bad ones) that decode to an error or to a record that
 *     keeps the invariants, never to a crash;
 *   - the router against a local HTTP server: headers on every call, the deadline, and
 *     the breaker's closed -> open -> half-open -> closed cycle;
 *   - the bounded ZooKeeper calls (nl_zk.h) against a socket that accepts and never
 *     answers: each returns at its deadline, and the handle's close frees what they left.
 * The real-process tests with ZooKeeper are tests/cluster/cluster_test.py.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>
#include <string.h>
#include <time.h>

#include "nl_peer.h"
#include "nl_shardmap.h"
#include "nl_zk.h"
#include "test_util.h"

TestSuite(cluster, .timeout = 300);

static void rand_nodes(nl_rng *r, nl_node_info *nodes, uint32_t *held, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        memset(&nodes[i], 0, sizeof nodes[i]);
        snprintf(nodes[i].id, sizeof nodes[i].id, "node-%02zu", (i * 7 + 3) % 97);
        snprintf(nodes[i].address, sizeof nodes[i].address, "127.0.0.1:%zu", 7000 + i);
        nodes[i].disk_free = (uint64_t)(nl_rng_next(r) % 4) << 30; /* ties on purpose */
        nodes[i].load = (double)(nl_rng_next(r) % 3);
        held[i] = (uint32_t)(nl_rng_next(r) % 5);
    }
}

static void cfg_of(nl_cluster_collection *c, uint32_t shards, uint32_t replicas)
{
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "c");
    snprintf(c->uid, sizeof c->uid, "00ff");
    c->cfg = (nl_collection_config){.dim = 8, .shards = shards, .R = 16, .L = 32, .alpha = 1.2f, .pq_bytes = 8,
                                    .fresh_capacity = 1000};
    c->replicas = replicas;
}

Test(cluster, placement_invariants_over_seeded_clusters)
{
    static nl_shard_map m, m2;
    nl_rng r;
    nl_rng_seed(&r, 2026);
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = 1 + nl_rng_next(&r) % 12;
        nl_node_info nodes[16], perm[16];
        uint32_t held[16], hperm[16];
        rand_nodes(&r, nodes, held, n);
        uint32_t shards = 1 + (uint32_t)(nl_rng_next(&r) % 64);
        uint32_t replicas = 1 + (uint32_t)(nl_rng_next(&r) % (n < 3 ? n : 3));
        nl_cluster_collection c;
        cfg_of(&c, shards, replicas);
        cr_assert_eq(nl_shard_map_place(nodes, n, held, &c, &m), 0, "%s", nl_errdetail());
        cr_assert_eq(m.nshards, shards);
        uint32_t got[16] = {0};
        for (uint32_t s = 0; s < shards; s++) {
            const nl_shard_entry *e = &m.shard[s];
            cr_assert_eq(e->nreplicas, replicas);
            cr_assert_str_eq(e->primary, e->replicas[0]);
            cr_assert_eq(e->epoch, 1);
            for (uint32_t a = 0; a < replicas; a++) {
                for (uint32_t b = 0; b < a; b++)
                    cr_assert_str_neq(e->replicas[a], e->replicas[b], "two replicas of shard %u on one node", s);
                for (size_t i = 0; i < n; i++)
                    if (!strcmp(nodes[i].id, e->replicas[a]))
                        got[i]++;
            }
        }
        /* nodes that start with the same load end within one replica of each other */
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < n; k++)
                if (held[i] == held[k])
                    cr_assert_leq(got[i] > got[k] ? got[i] - got[k] : got[k] - got[i], 1);
        /* the same cluster listed in another order places the same way */
        for (size_t i = 0; i < n; i++) {
            perm[i] = nodes[n - 1 - i];
            hperm[i] = held[n - 1 - i];
        }
        cr_assert_eq(nl_shard_map_place(perm, n, hperm, &c, &m2), 0);
        cr_assert_eq(memcmp(&m, &m2, sizeof m), 0, "placement depends on the order of the node list");
        /* and survives its own encoding */
        char *text = nl_shard_map_encode(&m);
        cr_assert_not_null(text);
        cr_assert_eq(nl_shard_map_decode(text, strlen(text), &m2), 0, "%s", nl_errdetail());
        m2.version = m.version;
        cr_assert_eq(memcmp(&m, &m2, sizeof m), 0);
        free(text);
    }
    nl_node_info one[1];
    uint32_t h1[1];
    rand_nodes(&r, one, h1, 1);
    nl_cluster_collection c;
    cfg_of(&c, 4, 2);
    cr_assert_eq(nl_shard_map_place(one, 1, h1, &c, &m), NL_EINVAL, "2 replicas on 1 node must be refused");
    cr_assert_eq(nl_shard_map_place(one, 0, h1, &c, &m), NL_EINVAL);
}

Test(cluster, a_new_empty_node_takes_the_new_shards)
{
    static nl_shard_map m;
    nl_node_info nodes[4];
    uint32_t held[4] = {2, 2, 2, 0};
    nl_rng r;
    nl_rng_seed(&r, 1);
    rand_nodes(&r, nodes, held, 4);
    held[0] = held[1] = held[2] = 2;
    held[3] = 0;
    nl_cluster_collection c;
    cfg_of(&c, 6, 1);
    cr_assert_eq(nl_shard_map_place(nodes, 4, held, &c, &m), 0);
    uint32_t to_new = 0;
    for (uint32_t s = 0; s < 6; s++)
        to_new += !strcmp(m.shard[s].primary, nodes[3].id);
    cr_assert_eq(to_new, 3, "the empty node should get 3 of 6 shards (to 2+1 each), got %u", to_new);
}

static const char *good_map =
    "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":3,\"primary\":\"n1\",\"replicas\":"
    "[\"n1\",\"n2\"],\"state\":\"active\"},{\"shard\":1,\"epoch\":1,\"primary\":\"n2\",\"replicas\":[\"n2\",\"n3\"],"
    "\"in_sync\":[\"n2\"],\"state\":\"moving\",\"move\":{\"from\":\"n2\",\"to\":\"n3\",\"id\":5,\"started_ms\":1,"
    "\"reason\":\"operator\"}}]}";

static void check_map_invariants(const nl_shard_map *m)
{
    cr_assert(m->nshards >= 1 && m->nshards <= NL_MAX_SHARDS);
    for (uint32_t s = 0; s < m->nshards; s++) {
        const nl_shard_entry *e = &m->shard[s];
        cr_assert(e->nreplicas >= 1 && e->nreplicas <= NL_MAX_REPLICAS);
        int listed = 0;
        for (uint32_t a = 0; a < e->nreplicas; a++) {
            cr_assert_eq(nl_node_id_check(e->replicas[a]), 0);
            listed |= !strcmp(e->replicas[a], e->primary);
            for (uint32_t b = 0; b < a; b++)
                cr_assert_str_neq(e->replicas[a], e->replicas[b]);
        }
        cr_assert(listed, "the primary must be a replica");
    }
}

Test(cluster, hostile_znode_payloads)
{
    static nl_shard_map m;
    cr_assert_eq(nl_shard_map_decode(good_map, strlen(good_map), &m), 0, "%s", nl_errdetail());
    cr_assert_eq(m.nshards, 2);
    cr_assert_eq(m.shard[0].epoch, 3);
    cr_assert_eq(m.shard[1].state, NL_SHARD_MOVING);
    static const char *const bad[] = {
        "",
        "[]",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":1,\"epoch\":1,\"primary\":\"n1\",\"replicas\":[\"n1\"],\"state\":\"active\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"n9\",\"replicas\":[\"n1\"],\"state\":\"active\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"n1\",\"replicas\":[\"n1\",\"n1\"],\"state\":\"active\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":0,\"primary\":\"n1\",\"replicas\":[\"n1\"],\"state\":\"active\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"n1\",\"replicas\":[\"n/1\"],\"state\":\"active\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"n1\",\"replicas\":[\"n1\"],\"state\":\"gone\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":-1,\"primary\":\"n1\",\"replicas\":[\"n1\"],\"state\":\"active\"}]}",
        "{\"collection\":\"c\",\"uid\":\"ab\",\"shards\":[{\"shard\":0,\"epoch\":1,\"primary\":\"n1\",\"replicas\":\"n1\",\"state\":\"active\"}]}",
        "{\"collection\":\"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\",\"uid\":\"ab\",\"shards\":[]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(nl_shard_map_decode(bad[i], strlen(bad[i]), &m), NL_ECORRUPT, "accepted bad map %zu", i);
    /* mutations of the good one: an error or a map that keeps the invariants */
    nl_rng r;
    nl_rng_seed(&r, 99);
    static const char alphabet[] = "\"{}[],:0123456789an\\\x01\xff";
    size_t len = strlen(good_map), accepted = 0;
    char buf[1024];
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, good_map, len + 1);
        int muts = 1 + (int)(nl_rng_next(&r) % 3);
        for (int k = 0; k < muts; k++)
            buf[nl_rng_next(&r) % len] = alphabet[nl_rng_next(&r) % (sizeof alphabet - 1)];
        size_t l = nl_rng_next(&r) % 8 == 0 ? nl_rng_next(&r) % len : len;
        if (nl_shard_map_decode(buf, l, &m) == 0) {
            check_map_invariants(&m);
            accepted++;
        }
        nl_node_info n;
        if (nl_node_info_decode(buf, l, &n) == 0)
            cr_assert_eq(nl_node_id_check(n.id), 0);
        nl_cluster_collection cc;
        if (nl_cluster_collection_decode(buf, l, &cc) == 0)
            cr_assert(cc.cfg.dim >= 1 && cc.cfg.shards >= 1 && cc.cfg.shards <= NL_MAX_SHARDS);
    }
    cr_log_info("%zu of 20000 mutated maps decoded (all kept the invariants)", accepted);
    /* node and collection records round trip */
    nl_node_info a = {.tls = 1, .disk_free = 123456789, .ram = 1 << 30, .load = 0.5, .shards = 3, .started_ms = 17};
    snprintf(a.id, sizeof a.id, "node-1");
    snprintf(a.address, sizeof a.address, "127.0.0.1:7701");
    snprintf(a.version, sizeof a.version, "0.14");
    char *t = nl_node_info_encode(&a);
    nl_node_info b;
    cr_assert_eq(nl_node_info_decode(t, strlen(t), &b), 0, "%s", nl_errdetail());
    cr_assert_eq(memcmp(&a, &b, sizeof a), 0);
    free(t);
    nl_cluster_collection c, d;
    cfg_of(&c, 6, 1);
    t = nl_cluster_collection_encode(&c);
    cr_assert_eq(nl_cluster_collection_decode(t, strlen(t), &d), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_cluster_collection_match(&c, &d.cfg), 0);
    d.cfg.dim = 9;
    cr_assert_eq(nl_cluster_collection_match(&c, &d.cfg), NL_ECORRUPT);
    cr_assert(strstr(nl_errdetail(), "dim"));
    free(t);
    cr_assert_eq(nl_node_id_check("a-b_C9"), 0);
    cr_assert_eq(nl_node_id_check(""), NL_EINVAL);
    cr_assert_eq(nl_node_id_check("a/b"), NL_EINVAL);
}

/* ---------------------------------------------------------------- the router */

static atomic_int srv_sleep_ms, srv_calls;
static char last_rid[64], last_trace[128], last_key[128];
static pthread_mutex_t hdr_mu = PTHREAD_MUTEX_INITIALIZER;

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)cls; (void)url; (void)method; (void)version; (void)upload;
    if (!*con_cls) {
        *con_cls = (void *)1;
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    atomic_fetch_add(&srv_calls, 1);
    const char *rid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    const char *tp = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Nearline-Cluster-Key");
    pthread_mutex_lock(&hdr_mu);
    snprintf(last_rid, sizeof last_rid, "%s", rid ? rid : "");
    snprintf(last_trace, sizeof last_trace, "%s", tp ? tp : "");
    snprintf(last_key, sizeof last_key, "%s", key ? key : "");
    pthread_mutex_unlock(&hdr_mu);
    int ms = atomic_load(&srv_sleep_ms);
    if (ms) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    static const char body[] = "pong";
    struct MHD_Response *r = MHD_create_response_from_buffer(4, (void *)body, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ok = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return ok;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

static struct MHD_Daemon *serve(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL,
                            (uint16_t)port, NULL, NULL, handler, NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_END);
}

static void one(nl_peer *r, const char *url, uint32_t timeout_ms, nl_peer_call *k)
{
    memset(k, 0, sizeof *k);
    k->peer = "p1";
    k->base_url = url;
    k->method = "POST";
    snprintf(k->path, sizeof k->path, "/internal/v1/x");
    k->body = "abc";
    k->body_len = 3;
    cr_assert_eq(nl_peer_run(r, k, 1, timeout_ms, "req-7",
                               "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), 0);
}

Test(cluster, router_headers_deadline_and_breaker)
{
    int port = free_port();
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    nl_peer_options o = {.cluster_key = "k-0123456789abcdef", .breaker_failures = 3, .breaker_open_ms = 200};
    nl_peer *r;
    cr_assert_eq(nl_peer_create(&o, &r), 0);
    nl_peer_call k;
    /* nothing listens: refused, three times, then the breaker fails calls fast */
    for (int i = 0; i < 3; i++) {
        one(r, url, 500, &k);
        cr_assert_eq(k.status, 0);
        cr_assert_eq(k.err, -ECONNREFUSED, "err %d", k.err);
    }
    cr_assert_eq(nl_peer_breaker(r, "p1"), 1);
    one(r, url, 500, &k);
    cr_assert_eq(k.err, NL_EUNAVAILABLE);
    /* after the open time, one probe goes through; it fails, so it is open again */
    struct timespec ts = {0, 250000000};
    nanosleep(&ts, NULL);
    cr_assert_eq(nl_peer_breaker(r, "p1"), 2);
    one(r, url, 500, &k);
    cr_assert_eq(k.err, -ECONNREFUSED);
    cr_assert_eq(nl_peer_breaker(r, "p1"), 1);
    /* the peer comes up: the next probe closes the breaker */
    struct MHD_Daemon *d = serve(port);
    cr_assert_not_null(d);
    nanosleep(&ts, NULL);
    one(r, url, 1000, &k);
    cr_assert_eq(k.status, 200, "status %d err %d", k.status, k.err);
    cr_assert_eq(k.body_out_len, 4);
    cr_assert_eq(memcmp(k.body_out, "pong", 4), 0);
    free(k.body_out);
    cr_assert_eq(nl_peer_breaker(r, "p1"), 0);
    pthread_mutex_lock(&hdr_mu);
    cr_assert_str_eq(last_rid, "req-7");
    cr_assert_str_eq(last_key, "k-0123456789abcdef");
    cr_assert_eq(strncmp(last_trace, "00-0af7651916cd43dd8448eb211c80319c-", 36), 0, "trace id not kept: %s", last_trace);
    cr_assert_eq(strlen(last_trace), 55);
    cr_assert_neq(strncmp(last_trace + 36, "b7ad6b7169203331", 16), 0, "a new span id per call");
    pthread_mutex_unlock(&hdr_mu);
    /* a slow peer: the call ends at the deadline, not when the peer answers */
    atomic_store(&srv_sleep_ms, 700);
    uint64_t t0 = nl_now_ns();
    one(r, url, 150, &k);
    double took = (double)(nl_now_ns() - t0) / 1e6;
    cr_assert_eq(k.err, -ETIMEDOUT, "err %d status %d", k.err, k.status);
    cr_assert(took < 150 + 100, "took %.0f ms for a 150 ms deadline", took);
    free(k.body_out);
    /* many calls at once run in parallel: 8 x 300 ms in well under 8 x 300 ms */
    atomic_store(&srv_sleep_ms, 300);
    nl_peer_call many[8];
    memset(many, 0, sizeof many);
    for (int i = 0; i < 8; i++) {
        many[i].peer = "p2";
        many[i].base_url = url;
        many[i].method = "GET";
        snprintf(many[i].path, sizeof many[i].path, "/x/%d", i);
    }
    t0 = nl_now_ns();
    cr_assert_eq(nl_peer_run(r, many, 8, 2000, "req-8", NULL), 0);
    took = (double)(nl_now_ns() - t0) / 1e6;
    for (int i = 0; i < 8; i++) {
        cr_assert_eq(many[i].status, 200);
        free(many[i].body_out);
    }
    cr_assert(took < 1200, "8 parallel 300 ms calls took %.0f ms", took);
    atomic_store(&srv_sleep_ms, 0);
    MHD_stop_daemon(d);
    nl_peer_destroy(r);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A "server" that completes TCP handshakes (the kernel does, from the backlog) and never
 * says a word: a ZooKeeper that hangs. Each call must come back at its own deadline. */
Test(cluster, zookeeper_calls_end_at_their_deadline)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(ls, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    cr_assert_eq(bind(ls, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(ls, 16), 0);
    cr_assert_eq(getsockname(ls, (struct sockaddr *)&a, &al), 0);
    char host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", ntohs(a.sin_port));
    zoo_set_debug_level(0);
    zhandle_t *zh = zookeeper_init(host, NULL, 30000, NULL, NULL, 0);
    cr_assert_not_null(zh);
    const uint32_t ms = 150;
    char buf[64];
    int len = sizeof buf;
    struct Stat st;
    struct String_vector sv;
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    zoo_check_op_init(&ops[0], "/a", -1);
    zoo_set_op_init(&ops[1], "/b", "x", 1, -1, &st);
    for (int call = 0; call < 7; call++) {
        double t0 = now_s();
        int rc = call == 0 ? nl_zk_get(zh, ms, "/a", 1, buf, &len, &st)
               : call == 1 ? nl_zk_exists(zh, ms, "/a", 1, &st)
               : call == 2 ? nl_zk_children(zh, ms, "/", 0, &sv)
               : call == 3 ? nl_zk_create(zh, ms, "/a", "v", 1, ZOO_EPHEMERAL, buf, sizeof buf)
               : call == 4 ? nl_zk_set(zh, ms, "/a", "v", 1, 3, &st)
               : call == 5 ? nl_zk_delete(zh, ms, "/a", -1)
                           : nl_zk_multi(zh, ms, 2, ops, res);
        double dt = now_s() - t0;
        /* no answer: the deadline (the client itself gives up only after its 30 s timeout) */
        cr_assert_eq(rc, ZOPERATIONTIMEOUT, "call %d: %d", call, rc);
        cr_assert(dt >= 0.1 && dt < 2.0, "call %d returned after %.3f s", call, dt);
    }
    /* refused before anything is queued: nothing is left for a completion */
    cr_assert_eq(nl_zk_get(zh, ms, "no-slash", 0, buf, &len, NULL), ZBADARGUMENTS);
    cr_assert_eq(nl_zk_multi(zh, ms, 0, ops, res), ZBADARGUMENTS);
    /* the server goes away: the client fails what it had pending (the calls given up on),
     * and their completions free the state the callers left behind (the leak check of the
     * ASan run says so) */
    int c = accept(ls, NULL, NULL);
    cr_assert_geq(c, 0);
    close(c);
    close(ls);
    struct timespec pause = {0, 500000000};
    nanosleep(&pause, NULL);
    zookeeper_close(zh);
}

/* The router's per-shard budget against a simulation of hash placement: k items thrown
 * uniformly into S shards; what a shard asked for ks keeps of them. The share lost must be
 * at most about 1/1000 (the model's bound), and asking one fewer must lose more. */
static double lost_share(uint32_t k, uint32_t S, uint32_t ks, nl_rng *r, int trials)
{
    uint32_t cnt[64];
    double lost = 0;
    for (int t = 0; t < trials; t++) {
        memset(cnt, 0, sizeof cnt);
        for (uint32_t i = 0; i < k; i++)
            cnt[nl_rng_below(r, S)]++;
        for (uint32_t s = 0; s < S; s++)
            lost += cnt[s] > ks ? cnt[s] - ks : 0;
    }
    return lost / ((double)trials * k);
}

Test(cluster, shard_budget_matches_a_simulation_of_hash_placement)
{
    uint32_t ks, Ls;
    nl_shard_map_budget(10, 0, 1, &ks, &Ls);
    cr_assert(ks == 10 && Ls == 64, "one shard: the request itself (%u %u)", ks, Ls);
    nl_shard_map_budget(10, 30, 8, &ks, &Ls);
    cr_assert(ks == 5 && Ls == 11, "k 10, L 30, 8 shards: 5 and 11 (%u %u)", ks, Ls);
    nl_rng r;
    nl_rng_seed(&r, 28);
    const uint32_t cases[][3] = {{10, 0, 2}, {10, 0, 8}, {10, 100, 16}, {100, 200, 8}, {50, 0, 32}, {1, 0, 8}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        uint32_t k = cases[c][0], L = cases[c][1], S = cases[c][2];
        nl_shard_map_budget(k, L, S, &ks, &Ls);
        uint32_t base = L ? L : (k > 64 ? k : 64);
        cr_assert(ks >= (k + S - 1) / S && ks <= k, "k %u S %u: ks %u", k, S, ks);
        cr_assert(Ls >= ks && Ls <= base, "k %u S %u: Ls %u outside [%u, %u]", k, S, Ls, ks, base);
        double lost = lost_share(k, S, ks, &r, 20000);
        cr_assert(lost <= 0.0015, "k %u S %u ks %u: %.5f of the k nearest lost", k, S, ks, lost);
        if (ks > (k + S - 1) / S)
            cr_assert(lost_share(k, S, ks - 1, &r, 20000) > 0.0008, "k %u S %u: ks %u is more than needed", k, S, ks);
    }
}
