/*
 * cluster.c — a node's life in the cluster (nl_cluster.h): its ZooKeeper session,
 * membership, the coordinator election and what the coordinator does, and the shards this
 * node opens because the map gives them to it. The router's side is router.c.
 *
 * The znodes (docs/cluster.md), under the root:
 *   nodes/<id>          ephemeral; the node record (nl_node_info) — membership
 *   collections/<name>  persistent; the collection config (nl_cluster_collection)
 *   maps/<name>         persistent; the shard map; its znode version is the CAS token
 *   election/n_<seq>    ephemeral sequential; the lowest is the coordinator
 *
 * ZooKeeper's recipes as written:
 *   - election: each node creates election/n_ (EPHEMERAL|SEQUENCE); the lowest sequence
 *     leads; every other node watches only the node just below its own (no herd), and on
 *     that watch re-reads the children;
 *   - map writes: a multi-op of check(own election znode) + create/set(map, version), so
 *     a coordinator whose session has ended (its election znode is gone) can never write,
 *     and two coordinators racing on one map cannot both win (one version wins).
 *
 * The worker thread does every ZooKeeper call of the node's own life; watches only set
 * `dirty` and wake it (it then re-reads everything); it also re-reads every 2 s, so nothing depends on a
 * watch being delivered (a few small reads per second: cheap next to what ZooKeeper
 * serves). Request threads read the snapshot it publishes.
 *
 * Failure behaviour: ZooKeeper unreachable at start -> the worker keeps connecting (the
 * client library retries, the worker logs what it waits for every 5 s) and the node is
 * not ready; connection lost later -> the node serves from its last snapshot; session
 * expired -> a new handle, a new session, the node re-registers and re-reads the maps.
 * Every call goes through nl_zk.h (a deadline of one session timeout) under a read lock
 * of the handle; the worker replaces the handle under the write lock (writers first), so
 * it waits at most one deadline, never for a call the client library will not answer.
 * A shard's local copy that disagrees with the cluster's config is refused and reported;
 * a local shard the map does not give this node is kept, not deleted, and reported.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include "cluster_internal.h"
#include "cl_coordinator.h"
#include "cl_floor.h"
#include "cl_repl.h"
#include "cl_transfer.h"
#include "nl_util.h"

#define NL_VERSION "0.14"

/* ---------------------------------------------------------------- the session */

static void watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    nl_cluster *cl = ctx;
    if (type == ZOO_SESSION_EVENT) {
        atomic_store(&cl->zk.state, state);
        if (state != ZOO_CONNECTED_STATE)
            atomic_store(&cl->zk.map_fresh, 0); /* acknowledge no write until the maps are read again */
        if (state == ZOO_EXPIRED_SESSION_STATE)
            atomic_store(&cl->zk.expired, 1);
    }
    cl_wake(cl);
}

static uint64_t du_total;
static int du_add(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)path, (void)f;
    if (flag == FTW_F && S_ISREG(st->st_mode))
        du_total += (uint64_t)st->st_blocks * 512u;
    return 0;
}

static void node_info_now(nl_cluster *cl, nl_node_info *n, uint32_t shards)
{
    memset(n, 0, sizeof *n);
    snprintf(n->id, sizeof n->id, "%s", cl->node_id);
    snprintf(n->address, sizeof n->address, "%s", cl->advertise);
    n->tls = cl->opt.tls;
    struct statvfs vf;
    if (statvfs(cl->db_dir, &vf) == 0)
        n->disk_free = (uint64_t)vf.f_bavail * vf.f_frsize;
    du_total = 0; /* only the worker thread calls this */
    nftw(cl->db_dir, du_add, 16, FTW_PHYS); /* a file removed during the walk only makes it short */
    n->used_bytes = du_total;
    struct sysinfo si;
    if (sysinfo(&si) == 0) {
        n->ram = (uint64_t)si.totalram * si.mem_unit;
        n->load = (double)si.loads[0] / (double)(1 << SI_LOAD_SHIFT);
    }
    n->shards = shards;
    snprintf(n->version, sizeof n->version, "%s", NL_VERSION);
    static uint64_t started;
    if (!started) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        started = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    }
    n->started_ms = started;
}

/* The root and its four children; a root that exists with other children and none of
 * ours is somebody else's znode: refused. */
static int ensure_root(nl_cluster *cl)
{
    char p[512];
    struct String_vector ch = {0, NULL};
    int zrc = nl_zk_children(cl->zk.h, CL_ZK_MS(cl), cl->root, 0, &ch);
    if (zrc == ZOK) {
        int ours = 0, theirs = 0;
        for (int i = 0; i < ch.count; i++) {
            const char *c = ch.data[i];
            if (!strcmp(c, "nodes") || !strcmp(c, "collections") || !strcmp(c, "maps") || !strcmp(c, "election"))
                ours++;
            else
                theirs++;
        }
        deallocate_String_vector(&ch);
        if (theirs && !ours)
            return nl_fail(NL_EINVAL, "znode %s exists and is not a nearline cluster root (it has other children); "
                           "check --cluster-root", cl->root);
    } else if (zrc == ZNONODE) {
        /* created level by level: a root under a missing parent is created with it */
        char part[256];
        for (const char *q = cl->root + 1;; q++) {
            if (*q == '/' || *q == 0) {
                snprintf(part, sizeof part, "%.*s", (int)(q - cl->root), cl->root);
                int rc = cl_zcreate(cl, part, NULL, 0, NULL, 0);
                if (rc && rc != NL_EEXISTS)
                    return nl_fail(rc, "cannot create %s", part);
                if (!*q)
                    break;
            }
        }
        cl_log(cl, 1, "\"event\":\"cluster_root_created\",\"root\":\"%s\"", cl->root);
    } else {
        return cl_zerr(zrc);
    }
    /* drain: the operator's drained nodes; compacting: locks staggering the compactions of
     * one shard's replicas (moves.c) */
    static const char *const kids[] = {"nodes", "collections", "maps", "election", "drain", "compacting"};
    for (int i = 0; i < 6; i++) {
        cl_path(cl, p, sizeof p, kids[i], NULL);
        int rc = cl_zcreate(cl, p, NULL, 0, NULL, 0);
        if (rc && rc != NL_EEXISTS)
            return nl_fail(rc, "cannot create %s", p);
    }
    return 0;
}

static int do_register(nl_cluster *cl)
{
    int rc = ensure_root(cl);
    if (rc) {
        if (rc == NL_EINVAL) {
            atomic_store(&cl->zk.fatal, NL_EINVAL);
            cl_log(cl, 3, "\"event\":\"bad_cluster_root\",\"root\":\"%s\",\"message\":\"not a nearline root\"", cl->root);
        }
        return rc;
    }
    char p[512];
    nl_node_info me;
    node_info_now(cl, &me, 0);
    char *data = nl_node_info_encode(&me);
    if (!data)
        return -ENOMEM;
    cl_path(cl, p, sizeof p, "nodes", cl->node_id);
    rc = cl_zcreate(cl, p, data, ZOO_EPHEMERAL, NULL, 0);
    free(data);
    if (rc == NL_EEXISTS) {
        struct Stat st;
        int zrc = nl_zk_exists(cl->zk.h, CL_ZK_MS(cl), p, 0, &st);
        const clientid_t *me_id = zoo_client_id(cl->zk.h);
        uint64_t now = nl_now_ns();
        if (zrc == ZOK && me_id && st.ephemeralOwner == me_id->client_id) {
            rc = 0; /* ours: registered before a reconnect */
        } else if (zrc == ZOK && (!cl->zk.dup_since_ns || now - cl->zk.dup_since_ns <
                                                          ((uint64_t)cl->opt.session_ms * 3 / 2 + 1000) * 1000000ull)) {
            /* the znode of this id's previous process (killed a moment ago) goes when its
             * session expires: a node restarted at once waits for that, and only a znode
             * that outlives a session timeout is another live process */
            if (!cl->zk.dup_since_ns) {
                cl->zk.dup_since_ns = now;
                cl_log(cl, 2, "\"event\":\"previous_session_pending\",\"node_id\":\"%s\",\"message\":\"node id %s is "
                       "registered by session 0x%llx (this node's previous run, if it was killed: waiting for it to "
                       "expire)\"", cl->node_id, cl->node_id, (unsigned long long)st.ephemeralOwner);
            }
            return nl_fail(NL_EUNAVAILABLE, "waiting for the previous session of node id %s to expire", cl->node_id);
        } else if (zrc == ZOK) {
            atomic_store(&cl->zk.fatal, NL_EEXISTS);
            cl_log(cl, 3, "\"event\":\"duplicate_node_id\",\"node_id\":\"%s\",\"message\":\"node id %s is held by "
                   "another live process (session 0x%llx)\"", cl->node_id, cl->node_id,
                   (unsigned long long)st.ephemeralOwner);
            return nl_fail(NL_EEXISTS, "node id %s is already registered by another live process", cl->node_id);
        } else {
            return cl_zerr(zrc);
        }
    }
    if (rc)
        return rc;
    cl->zk.dup_since_ns = 0;
    char made[300] = {0};
    cl_path(cl, p, sizeof p, "election", "n_");
    if ((rc = cl_zcreate(cl, p, cl->node_id, ZOO_EPHEMERAL | ZOO_SEQUENCE, made, sizeof made - 1)) != 0)
        return rc;
    snprintf(cl->zk.election_node, sizeof cl->zk.election_node, "%s", made);
    atomic_store(&cl->zk.registered, 1);
    atomic_fetch_add(&cl->sessions, 1);
    cl_log(cl, 1, "\"event\":\"registered\",\"node_id\":\"%s\",\"address\":\"%s\",\"election\":\"%s\"", cl->node_id,
           cl->advertise, made);
    return 0;
}

/* (Re)creates the handle after an expiry or at start (zk.lock held for writing). */
static int session_open(nl_cluster *cl)
{
    if (cl->zk.h)
        zookeeper_close(cl->zk.h);
    atomic_store(&cl->zk.expired, 0);
    atomic_store(&cl->zk.registered, 0);
    atomic_store(&cl->zk.state, 0);
    cl->zk.election_node[0] = 0;
    cl->zk.h = zookeeper_init(cl->opt.zookeeper, watcher, (int)cl->opt.session_ms, NULL, cl, 0);
    return cl->zk.h ? 0 : -errno;
}

/* ---------------------------------------------------------------- reading the cluster */

#define DROP_GRACE_MS 10000

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int cmp_node(const void *a, const void *b) { return strcmp(((const nl_node_info *)a)->id, ((const nl_node_info *)b)->id); }
static int cmp_coll(const void *a, const void *b) { return strcmp(((const cl_coll *)a)->cc.name, ((const cl_coll *)b)->cc.name); }

/* A fresh snapshot from ZooKeeper, leaving watches on the lists and the maps. */
static int read_cluster(nl_cluster *cl, cl_snapshot **out, char sorted_election[][300], int *nelect)
{
    char p[512];
    cl_snapshot *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    struct String_vector ch = {0, NULL};
    cl_path(cl, p, sizeof p, "nodes", NULL);
    int zrc = nl_zk_children(cl->zk.h, CL_ZK_MS(cl), p, 1, &ch);
    if (zrc != ZOK) {
        free(s);
        return cl_zerr(zrc);
    }
    for (int i = 0; i < ch.count && s->nnodes < NL_MAX_NODES; i++) {
        char *buf;
        int len;
        cl_path(cl, p, sizeof p, "nodes", ch.data[i]);
        if (cl_zget(cl, p, 0, &buf, &len, NULL) == 0) {
            if (nl_node_info_decode(buf, (size_t)len, &s->nodes[s->nnodes]) == 0 &&
                !strcmp(s->nodes[s->nnodes].id, ch.data[i]))
                s->nnodes++;
            else
                cl_log(cl, 2, "\"event\":\"bad_node_record\",\"node\":\"%s\"", ch.data[i]);
            free(buf);
        }
    }
    deallocate_String_vector(&ch);
    qsort(s->nodes, s->nnodes, sizeof *s->nodes, cmp_node);

    cl_path(cl, p, sizeof p, "collections", NULL);
    if ((zrc = nl_zk_children(cl->zk.h, CL_ZK_MS(cl), p, 1, &ch)) != ZOK) {
        free(s);
        return cl_zerr(zrc);
    }
    s->colls = calloc(ch.count ? (size_t)ch.count : 1, sizeof *s->colls);
    if (!s->colls) { /* never publish a snapshot that silently lacks collections */
        deallocate_String_vector(&ch);
        free(s);
        return -ENOMEM;
    }
    for (int i = 0; i < ch.count && i < NL_MAX_COLLECTIONS; i++) {
        cl_coll *c = &s->colls[s->ncolls];
        char *buf;
        int len;
        cl_path(cl, p, sizeof p, "collections", ch.data[i]);
        if (cl_zget(cl, p, 0, &buf, &len, NULL) != 0)
            continue; /* dropped meanwhile */
        int ok = nl_cluster_collection_decode(buf, (size_t)len, &c->cc) == 0 && !strcmp(c->cc.name, ch.data[i]);
        free(buf);
        if (!ok) {
            cl_log(cl, 2, "\"event\":\"bad_collection_record\",\"collection\":\"%s\"", ch.data[i]);
            continue;
        }
        struct Stat st;
        cl_path(cl, p, sizeof p, "maps", ch.data[i]);
        if (cl_zget(cl, p, 1, &buf, &len, &st) == 0) {
            if (nl_shard_map_decode(buf, (size_t)len, &c->map) == 0 && c->map.nshards == c->cc.cfg.shards &&
                !strcmp(c->map.uid, c->cc.uid)) {
                c->map.version = st.version;
                c->has_map = 1;
            } else {
                cl_log(cl, 2, "\"event\":\"bad_shard_map\",\"collection\":\"%s\"", ch.data[i]);
            }
            free(buf);
        } else {
            nl_zk_exists(cl->zk.h, CL_ZK_MS(cl), p, 1, NULL); /* a watch for its creation */
        }
        s->ncolls++;
    }
    deallocate_String_vector(&ch);
    qsort(s->colls, s->ncolls, sizeof *s->colls, cmp_coll);

    cl_path(cl, p, sizeof p, "drain", NULL);
    if (nl_zk_children(cl->zk.h, CL_ZK_MS(cl), p, 1, &ch) == ZOK) {
        for (int i = 0; i < ch.count && s->ndrained < NL_MAX_NODES; i++)
            if (nl_node_id_check(ch.data[i]) == 0)
                snprintf(s->drained[s->ndrained++], NL_NODE_ID_MAX, "%s", ch.data[i]);
        deallocate_String_vector(&ch);
    }
    nl_clear_errdetail();
    cl_path(cl, p, sizeof p, "rebalance", NULL);
    struct Stat rst;
    s->rebalance = nl_zk_exists(cl->zk.h, CL_ZK_MS(cl), p, 1, &rst) == ZOK;
    cl_path(cl, p, sizeof p, "election", NULL);
    if ((zrc = nl_zk_children(cl->zk.h, CL_ZK_MS(cl), p, 0, &ch)) != ZOK) {
        cl_snap_free(s);
        return cl_zerr(zrc);
    }
    qsort(ch.data, (size_t)ch.count, sizeof *ch.data, cmp_str); /* n_<10-digit seq>: sorts by sequence */
    *nelect = 0;
    for (int i = 0; i < ch.count && i < 64; i++)
        snprintf(sorted_election[(*nelect)++], 300, "%s", ch.data[i]);
    if (ch.count) {
        char *buf;
        int len;
        cl_path(cl, p, sizeof p, "election", ch.data[0]);
        if (cl_zget(cl, p, 0, &buf, &len, NULL) == 0) {
            snprintf(s->coordinator, sizeof s->coordinator, "%.*s", len, buf);
            free(buf);
        }
    }
    deallocate_String_vector(&ch);
    *out = s;
    return 0;
}

/* A local copy of shard sh the map no longer gives this node, of the same collection (its
 * uid), while the shard has its full in-sync set elsewhere (a move finished, or a replica
 * replaced): removed once that has been so for DROP_GRACE_MS (searches that started on it
 * end first; a map that changes back within the grace keeps it). 1 when dropped. */
static int drop_moved(nl_cluster *cl, const cl_coll *c, nl_collection *h, uint32_t sh)
{
    char uid[64] = {0}, key[100];
    const nl_shard_entry *e = sh < c->map.nshards ? &c->map.shard[sh] : NULL;
    if (!e || cl_uid_read(cl, c->cc.name, uid, sizeof uid) != 0 || strcmp(uid, c->cc.uid) || e->nin_sync < c->cc.replicas)
        return 0;
    snprintf(key, sizeof key, "%s/%u", c->cc.name, sh);
    uint64_t t = nl_now_ns() / 1000000u;
    size_t i = 0;
    while (i < cl->moves.ndropping && strcmp(cl->moves.dropping[i], key))
        i++;
    if (i == cl->moves.ndropping) {
        if (cl->moves.ndropping == 64)
            return 0;
        snprintf(cl->moves.dropping[cl->moves.ndropping], sizeof cl->moves.dropping[0], "%s", key);
        cl->moves.dropping_since[cl->moves.ndropping++] = t;
        return 0;
    }
    if (t - cl->moves.dropping_since[i] < DROP_GRACE_MS)
        return 0;
    int rc = nl_collection_shard_detach(h, sh);
    memmove(cl->moves.dropping[i], cl->moves.dropping[i + 1], (cl->moves.ndropping - i - 1) * sizeof cl->moves.dropping[0]);
    memmove(&cl->moves.dropping_since[i], &cl->moves.dropping_since[i + 1], (cl->moves.ndropping - i - 1) * sizeof cl->moves.dropping_since[0]);
    cl->moves.ndropping--;
    if (rc == 0) {
        atomic_fetch_add(&cl->copies_dropped, 1);
        cl_log(cl, 1, "\"event\":\"copy_dropped\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"the shard map moved "
               "this replica to another node\"", c->cc.name, sh);
    } else {
        cl_log(cl, 2, "\"event\":\"copy_drop_failed\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"%s\"", c->cc.name,
               sh, nl_errdetail());
    }
    return rc == 0;
}

/* Opens every shard the snapshot gives this node; lists local shards it does not. */
static uint32_t reconcile(nl_cluster *cl, const cl_snapshot *s)
{
    uint32_t mine = 0;
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        for (uint32_t sh = 0; c->has_map && sh < c->map.nshards; sh++) {
            if (!nl_shard_map_holds(&c->map, sh, cl->node_id))
                continue;
            mine++;
            nl_collection *h;
            if (cl_attach(cl, &c->cc, sh, &h) == 0)
                nl_collection_close(h);
        }
    }
    /* held here but not given to this node: kept, reported */
    char **names;
    size_t n;
    char un[64][100];
    size_t nun = 0;
    if (nl_collection_list(cl->opt.db, &names, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            const cl_coll *c = cl_snap_coll(s, names[i]);
            nl_collection *h;
            if (nl_collection_open(cl->opt.db, names[i], &h) != 0)
                continue;
            nl_collection_config cfg;
            nl_collection_describe(h, &cfg);
            for (uint32_t sh = 0; sh < cfg.shards && nun < 64; sh++)
                if (nl_collection_shard_held(h, sh) && (!c || !c->has_map || !nl_shard_map_holds(&c->map, sh, cl->node_id))) {
                    if (c && c->has_map && drop_moved(cl, c, h, sh))
                        continue;
                    snprintf(un[nun++], sizeof un[0], "%s/%u", names[i], sh);
                }
            nl_collection_close(h);
        }
        nl_names_free(names, n);
    }
    pthread_mutex_lock(&cl->report.mu);
    for (size_t i = 0; i < nun; i++) {
        int known = 0;
        for (size_t k = 0; k < cl->report.nunassigned; k++)
            known |= !strcmp(cl->report.unassigned[k], un[i]);
        if (!known)
            cl_log(cl, 2, "\"event\":\"unassigned_local_shard\",\"shard\":\"%s\",\"message\":\"kept on disk, not "
                   "served: the shard map does not give it to this node\"", un[i]);
    }
    memcpy(cl->report.unassigned, un, sizeof un[0] * nun);
    cl->report.nunassigned = nun;
    pthread_mutex_unlock(&cl->report.mu);
    return mine;
}

/* ---------------------------------------------------------------- the worker */

static void *worker(void *arg)
{
    nl_cluster *cl = arg;
    uint64_t last_wait_log = 0, last_info = 0, last_read = 0;
    char prev_coord[NL_NODE_ID_MAX] = {0};
    for (;;) {
        pthread_mutex_lock(&cl->worker.mu);
        if (!cl->worker.stop && !cl->worker.dirty) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 500000000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&cl->worker.cv, &cl->worker.mu, &ts);
        }
        int stop = cl->worker.stop, dirty = cl->worker.dirty;
        cl->worker.dirty = 0;
        pthread_mutex_unlock(&cl->worker.mu);
        if (stop)
            break;
        if (atomic_load(&cl->zk.fatal))
            continue;
        uint64_t now = nl_now_ns();
        if (atomic_load(&cl->zk.expired)) {
            cl_log(cl, 2, "\"event\":\"session_expired\",\"message\":\"opening a new ZooKeeper session and "
                   "registering again\"");
            pthread_rwlock_wrlock(&cl->zk.lock);
            session_open(cl);
            pthread_rwlock_unlock(&cl->zk.lock);
            atomic_store(&cl->is_coordinator, 0);
        }
        if (atomic_load(&cl->zk.state) != ZOO_CONNECTED_STATE) {
            if (now - last_wait_log > 5000000000ull) {
                cl_log(cl, 2, "\"event\":\"waiting_for_zookeeper\",\"zookeeper\":\"%s\",\"registered\":%s",
                       cl->opt.zookeeper, atomic_load(&cl->zk.registered) ? "true" : "false");
                last_wait_log = now;
            }
            continue;
        }
        pthread_rwlock_rdlock(&cl->zk.lock);
        int fresh = !atomic_load(&cl->zk.registered);
        if (fresh && do_register(cl) != 0) {
            if (!atomic_load(&cl->zk.fatal) && now - last_wait_log > 5000000000ull) {
                cl_log(cl, 2, "\"event\":\"register_failed\",\"message\":\"%s\"", nl_errdetail());
                last_wait_log = now;
            }
            pthread_rwlock_unlock(&cl->zk.lock);
            continue;
        }
        /* a watch fired, or the node just registered, or 2 s passed: read everything */
        if (!dirty && !fresh && now - last_read < 2000000000ull) {
            pthread_rwlock_unlock(&cl->zk.lock);
            continue;
        }
        cl_snapshot *s = NULL;
        char elect[64][300];
        int nelect = 0;
        if (read_cluster(cl, &s, elect, &nelect) == 0) {
            last_read = now;
            atomic_store(&cl->worker.last_read_ns, nl_now_ns());
            /* election: lead when ours is the lowest, else watch the one just below */
            const char *mine = strrchr(cl->zk.election_node, '/');
            mine = mine ? mine + 1 : cl->zk.election_node;
            int lead = nelect > 0 && !strcmp(elect[0], mine), found = 0;
            for (int i = 1; i < nelect && !lead; i++)
                if (!strcmp(elect[i], mine)) {
                    char p[512];
                    cl_path(cl, p, sizeof p, "election", elect[i - 1]);
                    nl_zk_exists(cl->zk.h, CL_ZK_MS(cl), p, 1, NULL);
                    found = 1;
                }
            if (!lead && !found && nelect > 0) /* our znode is gone: the session is ending */
                atomic_store(&cl->zk.registered, 0);
            if (strcmp(prev_coord, s->coordinator)) {
                if (prev_coord[0] || s->coordinator[0])
                    atomic_fetch_add(&cl->coordinator_changes, 1);
                cl_log(cl, 1, "\"event\":\"coordinator\",\"node_id\":\"%s\",\"this_node\":%s", s->coordinator,
                       lead ? "true" : "false");
                snprintf(prev_coord, sizeof prev_coord, "%s", s->coordinator);
            }
            atomic_store(&cl->is_coordinator, lead);
            atomic_store(&cl->zk.map_fresh, 1);
            if (lead) {
                cl_coordinate(cl, s);
            }
            int64_t vs = 0;
            for (size_t i = 0; i < s->ncolls; i++)
                vs += s->colls[i].has_map ? s->colls[i].map.version + 1 : 0;
            atomic_store(&cl->map_version_sum, vs);
            uint32_t mine_n = reconcile(cl, s);
            cl_snap_publish(cl, s);
            cl_snapshot *cur = cl_snap_get(cl);
            cl_repl_reconcile(cl, cur); /* the roles of shards this node is primary of */
            cl_snap_put(cl, cur);
            if (now - last_info > 5000000000ull) { /* the node record: free disk, load, shards */
                nl_node_info me;
                node_info_now(cl, &me, mine_n);
                char *data = nl_node_info_encode(&me), p[512];
                cl_path(cl, p, sizeof p, "nodes", cl->node_id);
                if (data)
                    nl_zk_set(cl->zk.h, CL_ZK_MS(cl), p, data, (int)strlen(data), -1, NULL);
                free(data);
                last_info = now;
            }
        }
        pthread_rwlock_unlock(&cl->zk.lock);
    }
    return NULL;
}

/* ---------------------------------------------------------------- lifecycle */

int nl_cluster_start(const nl_cluster_options *opt, nl_cluster **out)
{
    *out = NULL;
    if (!opt || !opt->zookeeper || !*opt->zookeeper || !opt->db || !opt->advertise || !opt->db_dir)
        return nl_fail(NL_EINVAL, "cluster mode needs --zookeeper, --advertise and a database");
    int rc = nl_node_id_check(opt->node_id);
    if (rc)
        return rc;
    const char *root = opt->root ? opt->root : "/nearline";
    size_t rl = strlen(root);
    if (rl < 2 || rl > 200 || root[0] != '/' || root[rl - 1] == '/' || strstr(root, "//"))
        return nl_fail(NL_EINVAL, "--cluster-root must be an absolute znode path like /nearline (no trailing /)");
    for (const char *q = root; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '/' ||
              *q == '_' || *q == '-' || *q == '.'))
            return nl_fail(NL_EINVAL, "--cluster-root may hold only [A-Za-z0-9_./-]");
    nl_cluster *cl = calloc(1, sizeof *cl);
    if (!cl)
        return -ENOMEM;
    cl->opt = *opt;
    if (!cl->opt.session_ms)
        cl->opt.session_ms = 6000;
    snprintf(cl->root, sizeof cl->root, "%s", root);
    snprintf(cl->node_id, sizeof cl->node_id, "%s", opt->node_id);
    snprintf(cl->advertise, sizeof cl->advertise, "%s", opt->advertise);
    snprintf(cl->db_dir, sizeof cl->db_dir, "%s", opt->db_dir);
    if (opt->cluster_key) {
        cl->key = strdup(opt->cluster_key);
        cl->key_len = strlen(opt->cluster_key);
    }
    cl->opt.zookeeper = NULL; /* copied below */
    char *hosts = strdup(opt->zookeeper);
    cl->opt.zookeeper = hosts;
    /* writers first: the worker replacing an expired handle must not wait behind a stream
     * of short calls (each bounded, nl_zk.h); only the worker nests read locks, and no
     * writer but the worker runs while it does */
    pthread_rwlockattr_t za;
    pthread_rwlockattr_init(&za);
    pthread_rwlockattr_setkind_np(&za, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&cl->zk.lock, &za);
    pthread_rwlockattr_destroy(&za);
    pthread_mutex_init(&cl->worker.mu, NULL);
    pthread_cond_init(&cl->worker.cv, NULL);
    pthread_mutex_init(&cl->snap_mu, NULL);
    pthread_mutex_init(&cl->report.mu, NULL);
    pthread_mutex_init(&cl->repl.mu, NULL);
    for (int i = 0; i < CL_FOLLOW_LOCKS; i++)
        pthread_mutex_init(&cl->repl.follow_mu[i], NULL);
    cl->repl.replica_timeout_ms = opt->replica_timeout_ms ? opt->replica_timeout_ms : 3000;
    cl->repl.write_wait_ms = cl->repl.replica_timeout_ms * 2 + 2000; /* a follower's removal fits in it */
    cl->repl.log_max_bytes = opt->log_max_bytes ? opt->log_max_bytes : 256ull << 20;
    cl->repl.log_max_age_ms = opt->log_max_age_ms ? opt->log_max_age_ms : 3600000ull;
    cl->moves.rate_bps = opt->move_rate_bps;
    cl->moves.per_node = opt->moves_per_node ? opt->moves_per_node : 1;
    cl->moves.drift = opt->move_drift ? opt->move_drift : 1;
    cl->moves.disk_drift = opt->move_disk_drift_pct < 0 ? -1.0 : opt->move_disk_drift_pct ? opt->move_disk_drift_pct / 100.0 : 0.5;
    cl->moves.replace_after_ms = opt->replace_after_ms ? opt->replace_after_ms : 300000ull;
    cl->moves.compactions_per_node = opt->compactions_per_node ? opt->compactions_per_node : 1;
    pthread_mutex_init(&cl->moves.pace_mu, NULL);
    const char *fault = getenv("NEARLINE_FAULT_CORRUPT_PIECE"); /* tests only: docs/cluster.md */
    cl->moves.fault_corrupt_every = fault ? (uint32_t)strtoul(fault, NULL, 10) : 0;
    cl_snapshot_cleanup(cl);
    cl_snapshot *empty = calloc(1, sizeof *empty);
    nl_peer_options ro = {.cluster_key = opt->cluster_key, .ca_file = opt->tls ? opt->tls_ca : NULL,
                            .max_per_peer = opt->peer_connections};
    if (!hosts || !empty || (opt->cluster_key && !cl->key) || (rc = nl_peer_create(&ro, &cl->peers)) != 0) {
        free(empty);
        free(hosts);
        free(cl->key);
        free(cl);
        return rc ? rc : -ENOMEM;
    }
    cl_snap_publish(cl, empty);
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    zoo_set_log_stream(stderr);
    if ((rc = session_open(cl)) != 0 || pthread_create(&cl->worker.th, NULL, worker, cl) != 0) {
        if (cl->zk.h)
            zookeeper_close(cl->zk.h);
        nl_peer_destroy(cl->peers);
        cl_snap_free(cl->snap);
        free(hosts);
        free(cl->key);
        free(cl);
        return rc ? nl_fail(rc, "cannot start a ZooKeeper client for %s", opt->zookeeper) : -EAGAIN;
    }
    *out = cl;
    return 0;
}

int nl_cluster_wait_registered(nl_cluster *cl, uint32_t timeout_ms)
{
    uint64_t end = nl_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        int f = atomic_load(&cl->zk.fatal);
        if (f == NL_EEXISTS)
            return nl_fail(f, "node id %s is already registered by another live process", cl->node_id);
        if (f)
            return nl_fail(f, "znode %s is not a nearline cluster root (check --cluster-root)", cl->root);
        if (atomic_load(&cl->zk.registered)) {
            /* the first snapshot too, so the node answers from a map at once */
            cl_snapshot *s = cl_snap_get(cl);
            int have = s->nnodes > 0;
            cl_snap_put(cl, s);
            if (have)
                return 0;
        }
        if (nl_now_ns() >= end)
            return -ETIMEDOUT;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
}

int nl_cluster_ready(nl_cluster *cl, char *why, size_t cap)
{
    if (atomic_load(&cl->zk.registered)) { /* and has read the cluster once */
        cl_snapshot *s = cl_snap_get(cl);
        int have = s->nnodes > 0;
        cl_snap_put(cl, s);
        if (have)
            return 1;
    }
    snprintf(why, cap, "%s", atomic_load(&cl->zk.fatal) ? "refused by the cluster (see the log)"
                           : atomic_load(&cl->zk.state) == ZOO_CONNECTED_STATE ? "registering with ZooKeeper"
                                                                             : "waiting for ZooKeeper");
    return 0;
}

int nl_cluster_fatal(nl_cluster *cl) { return atomic_load(&cl->zk.fatal); }

void nl_cluster_leave(nl_cluster *cl)
{
    if (!cl)
        return;
    pthread_mutex_lock(&cl->worker.mu);
    int joined = cl->worker.stop;
    cl->worker.stop = 1;
    pthread_cond_signal(&cl->worker.cv);
    pthread_mutex_unlock(&cl->worker.mu);
    if (!joined)
        pthread_join(cl->worker.th, NULL);
    cl_repl_stop_all(cl);
    pthread_rwlock_wrlock(&cl->zk.lock);
    if (cl->zk.h)
        zookeeper_close(cl->zk.h); /* ends the session: the ephemerals go at once */
    cl->zk.h = NULL;
    atomic_store(&cl->zk.registered, 0);
    pthread_rwlock_unlock(&cl->zk.lock);
}

void nl_cluster_stop(nl_cluster *cl)
{
    if (!cl)
        return;
    nl_cluster_leave(cl);
    nl_peer_destroy(cl->peers);
    cl_snap_free(cl->snap);
    pthread_rwlock_destroy(&cl->zk.lock);
    pthread_mutex_destroy(&cl->worker.mu);
    pthread_cond_destroy(&cl->worker.cv);
    pthread_mutex_destroy(&cl->snap_mu);
    pthread_mutex_destroy(&cl->report.mu);
    pthread_mutex_destroy(&cl->repl.mu);
    for (int i = 0; i < CL_FOLLOW_LOCKS; i++)
        pthread_mutex_destroy(&cl->repl.follow_mu[i]);
    if (cl->key) {
        memset(cl->key, 0, cl->key_len);
        free(cl->key);
    }
    free((char *)cl->opt.zookeeper);
    free(cl);
}
