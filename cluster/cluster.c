/*
 * cluster.c — a node's life in the cluster (nl_cluster.h): its ZooKeeper session,
 * membership, the coordinator election and what the coordinator does, and the shards this
 * node opens because the map gives them to it. The router's side is front.c.
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
#include "nl_util.h"

#define NL_VERSION "0.14"

/* ---------------------------------------------------------------- small helpers */

void cl_log(nl_cluster *cl, int level, const char *fmt, ...)
{
    if (!cl->opt.log)
        return;
    char msg[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cl->opt.log(cl->opt.log_ctx, level, msg);
}

json_t *cl_error(const char *code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

void cl_node_url(const nl_node_info *n, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s://%s", n->tls ? "https" : "http", n->address);
}

void cl_path(nl_cluster *cl, char *buf, size_t cap, const char *a, const char *b);
#define path_of cl_path
void cl_path(nl_cluster *cl, char *buf, size_t cap, const char *a, const char *b)
{
    if (b)
        snprintf(buf, cap, "%s/%s/%s", cl->root, a, b);
    else if (a)
        snprintf(buf, cap, "%s/%s", cl->root, a);
    else
        snprintf(buf, cap, "%s", cl->root);
}

static int zerr(int zrc)
{
    switch (zrc) {
    case ZOK: return 0;
    case ZNONODE: return NL_ENOTFOUND;
    case ZNODEEXISTS: return NL_EEXISTS;
    case ZBADVERSION: return -ESTALE;
    case ZCONNECTIONLOSS: case ZOPERATIONTIMEOUT: case ZSESSIONEXPIRED: case ZINVALIDSTATE: return NL_EUNAVAILABLE;
    default: return -EIO;
    }
}

/* ---------------------------------------------------------------- snapshot */

static void snap_free(cl_snapshot *s)
{
    if (s) {
        free(s->colls);
        free(s);
    }
}

cl_snapshot *cl_snap_get(nl_cluster *cl)
{
    pthread_mutex_lock(&cl->snap_mu);
    cl_snapshot *s = cl->snap;
    NL_ASSERT(s->refs >= 1); /* the published one holds its own */
    s->refs++;
    pthread_mutex_unlock(&cl->snap_mu);
    return s;
}

void cl_snap_put(nl_cluster *cl, cl_snapshot *s)
{
    pthread_mutex_lock(&cl->snap_mu);
    NL_ASSERT(s->refs >= 1);
    int last = --s->refs == 0;
    pthread_mutex_unlock(&cl->snap_mu);
    if (last)
        snap_free(s);
}

static void snap_publish(nl_cluster *cl, cl_snapshot *n)
{
    n->refs = 1;
    pthread_mutex_lock(&cl->snap_mu);
    cl_snapshot *old = cl->snap;
    cl->snap = n;
    int last = old && --old->refs == 0;
    pthread_mutex_unlock(&cl->snap_mu);
    if (last)
        snap_free(old);
}

const cl_coll *cl_snap_coll(const cl_snapshot *s, const char *name)
{
    for (size_t i = 0; i < s->ncolls; i++)
        if (!strcmp(s->colls[i].cc.name, name))
            return &s->colls[i];
    return NULL;
}

const nl_node_info *cl_snap_node(const cl_snapshot *s, const char *id)
{
    for (size_t i = 0; i < s->nnodes; i++)
        if (!strcmp(s->nodes[i].id, id))
            return &s->nodes[i];
    return NULL;
}

/* ---------------------------------------------------------------- the session */

static void wake(nl_cluster *cl)
{
    pthread_mutex_lock(&cl->mu);
    cl->dirty = 1;
    pthread_cond_signal(&cl->cv);
    pthread_mutex_unlock(&cl->mu);
}

void cl_wake(nl_cluster *cl) { wake(cl); }

static void watcher(zhandle_t *zh, int type, int state, const char *path, void *ctx)
{
    (void)zh;
    (void)path;
    nl_cluster *cl = ctx;
    if (type == ZOO_SESSION_EVENT) {
        atomic_store(&cl->zstate, state);
        if (state != ZOO_CONNECTED_STATE)
            atomic_store(&cl->map_fresh, 0); /* acknowledge no write until the maps are read again */
        if (state == ZOO_EXPIRED_SESSION_STATE)
            atomic_store(&cl->expired, 1);
    }
    wake(cl);
}

/* Reads a znode into a malloc'd NUL-terminated buffer; watch: leave a watch. */
static int zget(nl_cluster *cl, const char *path, int watch, char **out, int *len, struct Stat *st)
{
    if (!cl->zh)
        return NL_EUNAVAILABLE; /* left the cluster (shutting down) */
    struct Stat s;
    if (!st)
        st = &s;
    /* 64 KiB holds any map of up to a few hundred shards; a larger znode is read again at
     * its size (zoo_get truncates, and says the real length in the stat) */
    int cap = 64 << 10;
    for (int attempt = 0; attempt < 2; attempt++) {
        char *buf = malloc((size_t)cap + 1);
        if (!buf)
            return -ENOMEM;
        int n = cap;
        int zrc = nl_zk_get(cl->zh, CL_ZK_MS(cl), path, watch, buf, &n, st);
        if (zrc != ZOK) {
            free(buf);
            return zerr(zrc);
        }
        if (st->dataLength <= cap) {
            n = n < 0 ? 0 : n;
            buf[n] = 0;
            *out = buf;
            *len = n;
            return 0;
        }
        free(buf);
        cap = st->dataLength;
    }
    return nl_fail(-EAGAIN, "znode %s kept growing while it was read", path);
}

static int zcreate(nl_cluster *cl, const char *path, const char *data, int flags, char *made, int madecap)
{
    if (!cl->zh)
        return NL_EUNAVAILABLE;
    int zrc = nl_zk_create(cl->zh, CL_ZK_MS(cl), path, data, data ? (int)strlen(data) : -1, flags, made, madecap);
    return zerr(zrc);
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
    int zrc = nl_zk_children(cl->zh, CL_ZK_MS(cl), cl->root, 0, &ch);
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
                int rc = zcreate(cl, part, NULL, 0, NULL, 0);
                if (rc && rc != NL_EEXISTS)
                    return nl_fail(rc, "cannot create %s", part);
                if (!*q)
                    break;
            }
        }
        cl_log(cl, 1, "\"event\":\"cluster_root_created\",\"root\":\"%s\"", cl->root);
    } else {
        return zerr(zrc);
    }
    /* drain: the operator's drained nodes; compacting: locks staggering the compactions of
     * one shard's replicas (moves.c) */
    static const char *const kids[] = {"nodes", "collections", "maps", "election", "drain", "compacting"};
    for (int i = 0; i < 6; i++) {
        path_of(cl, p, sizeof p, kids[i], NULL);
        int rc = zcreate(cl, p, NULL, 0, NULL, 0);
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
            atomic_store(&cl->fatal, NL_EINVAL);
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
    path_of(cl, p, sizeof p, "nodes", cl->node_id);
    rc = zcreate(cl, p, data, ZOO_EPHEMERAL, NULL, 0);
    free(data);
    if (rc == NL_EEXISTS) {
        struct Stat st;
        int zrc = nl_zk_exists(cl->zh, CL_ZK_MS(cl), p, 0, &st);
        const clientid_t *me_id = zoo_client_id(cl->zh);
        uint64_t now = nl_now_ns();
        if (zrc == ZOK && me_id && st.ephemeralOwner == me_id->client_id) {
            rc = 0; /* ours: registered before a reconnect */
        } else if (zrc == ZOK && (!cl->dup_since_ns || now - cl->dup_since_ns <
                                                          ((uint64_t)cl->opt.session_ms * 3 / 2 + 1000) * 1000000ull)) {
            /* the znode of this id's previous process (killed a moment ago) goes when its
             * session expires: a node restarted at once waits for that, and only a znode
             * that outlives a session timeout is another live process */
            if (!cl->dup_since_ns) {
                cl->dup_since_ns = now;
                cl_log(cl, 2, "\"event\":\"previous_session_pending\",\"node_id\":\"%s\",\"message\":\"node id %s is "
                       "registered by session 0x%llx (this node's previous run, if it was killed: waiting for it to "
                       "expire)\"", cl->node_id, cl->node_id, (unsigned long long)st.ephemeralOwner);
            }
            return nl_fail(NL_EUNAVAILABLE, "waiting for the previous session of node id %s to expire", cl->node_id);
        } else if (zrc == ZOK) {
            atomic_store(&cl->fatal, NL_EEXISTS);
            cl_log(cl, 3, "\"event\":\"duplicate_node_id\",\"node_id\":\"%s\",\"message\":\"node id %s is held by "
                   "another live process (session 0x%llx)\"", cl->node_id, cl->node_id,
                   (unsigned long long)st.ephemeralOwner);
            return nl_fail(NL_EEXISTS, "node id %s is already registered by another live process", cl->node_id);
        } else {
            return zerr(zrc);
        }
    }
    if (rc)
        return rc;
    cl->dup_since_ns = 0;
    char made[300] = {0};
    path_of(cl, p, sizeof p, "election", "n_");
    if ((rc = zcreate(cl, p, cl->node_id, ZOO_EPHEMERAL | ZOO_SEQUENCE, made, sizeof made - 1)) != 0)
        return rc;
    snprintf(cl->election_node, sizeof cl->election_node, "%s", made);
    atomic_store(&cl->registered, 1);
    atomic_fetch_add(&cl->sessions, 1);
    cl_log(cl, 1, "\"event\":\"registered\",\"node_id\":\"%s\",\"address\":\"%s\",\"election\":\"%s\"", cl->node_id,
           cl->advertise, made);
    return 0;
}

/* (Re)creates the handle after an expiry or at start (zh_lock held for writing). */
static int session_open(nl_cluster *cl)
{
    if (cl->zh)
        zookeeper_close(cl->zh);
    atomic_store(&cl->expired, 0);
    atomic_store(&cl->registered, 0);
    atomic_store(&cl->zstate, 0);
    cl->election_node[0] = 0;
    cl->zh = zookeeper_init(cl->opt.zookeeper, watcher, (int)cl->opt.session_ms, NULL, cl, 0);
    return cl->zh ? 0 : -errno;
}

/* ---------------------------------------------------------------- reading the cluster */

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
    path_of(cl, p, sizeof p, "nodes", NULL);
    int zrc = nl_zk_children(cl->zh, CL_ZK_MS(cl), p, 1, &ch);
    if (zrc != ZOK) {
        free(s);
        return zerr(zrc);
    }
    for (int i = 0; i < ch.count && s->nnodes < NL_MAX_NODES; i++) {
        char *buf;
        int len;
        path_of(cl, p, sizeof p, "nodes", ch.data[i]);
        if (zget(cl, p, 0, &buf, &len, NULL) == 0) {
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

    path_of(cl, p, sizeof p, "collections", NULL);
    if ((zrc = nl_zk_children(cl->zh, CL_ZK_MS(cl), p, 1, &ch)) != ZOK) {
        free(s);
        return zerr(zrc);
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
        path_of(cl, p, sizeof p, "collections", ch.data[i]);
        if (zget(cl, p, 0, &buf, &len, NULL) != 0)
            continue; /* dropped meanwhile */
        int ok = nl_cluster_collection_decode(buf, (size_t)len, &c->cc) == 0 && !strcmp(c->cc.name, ch.data[i]);
        free(buf);
        if (!ok) {
            cl_log(cl, 2, "\"event\":\"bad_collection_record\",\"collection\":\"%s\"", ch.data[i]);
            continue;
        }
        struct Stat st;
        path_of(cl, p, sizeof p, "maps", ch.data[i]);
        if (zget(cl, p, 1, &buf, &len, &st) == 0) {
            if (nl_shard_map_decode(buf, (size_t)len, &c->map) == 0 && c->map.nshards == c->cc.cfg.shards &&
                !strcmp(c->map.uid, c->cc.uid)) {
                c->map.version = st.version;
                c->has_map = 1;
            } else {
                cl_log(cl, 2, "\"event\":\"bad_shard_map\",\"collection\":\"%s\"", ch.data[i]);
            }
            free(buf);
        } else {
            nl_zk_exists(cl->zh, CL_ZK_MS(cl), p, 1, NULL); /* a watch for its creation */
        }
        s->ncolls++;
    }
    deallocate_String_vector(&ch);
    qsort(s->colls, s->ncolls, sizeof *s->colls, cmp_coll);

    path_of(cl, p, sizeof p, "drain", NULL);
    if (nl_zk_children(cl->zh, CL_ZK_MS(cl), p, 1, &ch) == ZOK) {
        for (int i = 0; i < ch.count && s->ndrained < NL_MAX_NODES; i++)
            if (nl_node_id_check(ch.data[i]) == 0)
                snprintf(s->drained[s->ndrained++], NL_NODE_ID_MAX, "%s", ch.data[i]);
        deallocate_String_vector(&ch);
    }
    nl_clear_errdetail();
    path_of(cl, p, sizeof p, "rebalance", NULL);
    struct Stat rst;
    s->rebalance = nl_zk_exists(cl->zh, CL_ZK_MS(cl), p, 1, &rst) == ZOK;
    path_of(cl, p, sizeof p, "election", NULL);
    if ((zrc = nl_zk_children(cl->zh, CL_ZK_MS(cl), p, 0, &ch)) != ZOK) {
        snap_free(s);
        return zerr(zrc);
    }
    qsort(ch.data, (size_t)ch.count, sizeof *ch.data, cmp_str); /* n_<10-digit seq>: sorts by sequence */
    *nelect = 0;
    for (int i = 0; i < ch.count && i < 64; i++)
        snprintf(sorted_election[(*nelect)++], 300, "%s", ch.data[i]);
    if (ch.count) {
        char *buf;
        int len;
        path_of(cl, p, sizeof p, "election", ch.data[0]);
        if (zget(cl, p, 0, &buf, &len, NULL) == 0) {
            snprintf(s->coordinator, sizeof s->coordinator, "%.*s", len, buf);
            free(buf);
        }
    }
    deallocate_String_vector(&ch);
    *out = s;
    return 0;
}

/* ---------------------------------------------------------------- the coordinator */

/* Places and writes the map of every collection that has none. */
static void coordinate(nl_cluster *cl, const cl_snapshot *s)
{
    /* a draining node takes no new shards (unless too few others are left) */
    nl_node_info *nodes = malloc(sizeof *nodes * NL_MAX_NODES);
    if (!nodes)
        return;
    size_t nn = 0;
    for (size_t n = 0; n < s->nnodes; n++) {
        int dr = 0;
        for (size_t k = 0; k < s->ndrained; k++)
            dr |= !strcmp(s->drained[k], s->nodes[n].id);
        if (!dr)
            nodes[nn++] = s->nodes[n];
    }
    uint32_t need = 1;
    for (size_t i = 0; i < s->ncolls; i++)
        if (!s->colls[i].has_map && s->colls[i].cc.replicas > need)
            need = s->colls[i].cc.replicas;
    if (nn < need) {
        memcpy(nodes, s->nodes, sizeof *nodes * s->nnodes);
        nn = s->nnodes;
    }
    uint32_t held[NL_MAX_NODES] = {0};
    for (size_t i = 0; i < s->ncolls; i++)
        for (uint32_t sh = 0; s->colls[i].has_map && sh < s->colls[i].map.nshards; sh++)
            for (size_t n = 0; n < nn; n++)
                held[n] += (uint32_t)nl_shard_map_holds(&s->colls[i].map, sh, nodes[n].id);
    for (size_t i = 0; i < s->ncolls; i++) {
        const cl_coll *c = &s->colls[i];
        if (c->has_map)
            continue;
        nl_shard_map *m = malloc(sizeof *m);
        if (!m)
            break;
        if (nl_shard_map_place(nodes, nn, held, &c->cc, m) != 0) {
            cl_log(cl, 2, "\"event\":\"placement_failed\",\"collection\":\"%s\",\"message\":\"%s\"", c->cc.name,
                   nl_errdetail());
            free(m);
            continue;
        }
        char *data = nl_shard_map_encode(m);
        char mp[512], cp[512];
        path_of(cl, mp, sizeof mp, "maps", c->cc.name);
        path_of(cl, cp, sizeof cp, "collections", c->cc.name);
        /* fenced: only while our election znode exists, and only while the collection
         * exists (a drop racing the placement wins) */
        zoo_op_t ops[3];
        zoo_op_result_t res[3];
        zoo_check_op_init(&ops[0], cl->election_node, -1);
        zoo_check_op_init(&ops[1], cp, -1);
        zoo_create_op_init(&ops[2], mp, data, data ? (int)strlen(data) : 0, &ZOO_OPEN_ACL_UNSAFE, 0, NULL, 0);
        int zrc = data ? nl_zk_multi(cl->zh, CL_ZK_MS(cl), 3, ops, res) : ZSYSTEMERROR;
        if (zrc == ZOK) {
            atomic_fetch_add(&cl->map_writes, 1);
            for (size_t n = 0; n < nn; n++)
                for (uint32_t sh = 0; sh < m->nshards; sh++)
                    held[n] += (uint32_t)nl_shard_map_holds(m, sh, nodes[n].id);
            cl_log(cl, 1, "\"event\":\"map_written\",\"collection\":\"%s\",\"shards\":%u,\"map\":%s", c->cc.name,
                   m->nshards, data);
        } else {
            atomic_fetch_add(&cl->map_conflicts, 1);
            cl_log(cl, 2, "\"event\":\"map_write_refused\",\"collection\":\"%s\",\"zerror\":\"%s\"", c->cc.name,
                   zerror(zrc));
        }
        free(data);
        free(m);
    }
    free(nodes);
}

int cl_map_write(nl_cluster *cl, const nl_shard_map *m, int32_t version, int fenced, int32_t *newv)
{
    char *data = nl_shard_map_encode(m), mp[512];
    if (!data)
        return -ENOMEM;
    path_of(cl, mp, sizeof mp, "maps", m->collection);
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    struct Stat st;
    memset(&st, 0, sizeof st);
    int n = 0;
    if (fenced)
        zoo_check_op_init(&ops[n++], cl->election_node, -1);
    zoo_set_op_init(&ops[n++], mp, data, (int)strlen(data), version, &st);
    pthread_rwlock_rdlock(&cl->zh_lock);
    int zrc = cl->zh ? nl_zk_multi(cl->zh, CL_ZK_MS(cl), n, ops, res) : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zh_lock);
    free(data);
    if (zrc == ZOK) {
        atomic_fetch_add(&cl->map_writes, 1);
        if (newv)
            *newv = st.version;
        return 0;
    }
    atomic_fetch_add(&cl->map_conflicts, 1);
    if (zrc == ZBADVERSION)
        return -ESTALE;
    return nl_fail(zerr(zrc) == -ESTALE ? NL_EUNAVAILABLE : zerr(zrc), "map write of '%s': %s", m->collection,
                   zerror(zrc));
}

/* ---------------------------------------------------------------- local shards */

static void uid_path(nl_cluster *cl, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/.cluster/%s.uid", cl->db_dir, name);
}

static int uid_read(nl_cluster *cl, const char *name, char *uid, size_t cap)
{
    char p[4400];
    uid_path(cl, name, p, sizeof p);
    FILE *f = fopen(p, "r");
    if (!f)
        return -1;
    int ok = fgets(uid, (int)cap, f) != NULL;
    fclose(f);
    uid[strcspn(uid, "\n")] = 0;
    return ok ? 0 : -1;
}

static int uid_write(nl_cluster *cl, const char *name, const char *uid)
{
    char d[4200], p[4400], t[4500];
    snprintf(d, sizeof d, "%s/.cluster", cl->db_dir);
    mkdir(d, 0755);
    uid_path(cl, name, p, sizeof p);
    snprintf(t, sizeof t, "%s.tmp", p);
    FILE *f = fopen(t, "w");
    if (!f)
        return -errno;
    fprintf(f, "%s\n", uid);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    fclose(f);
    if (bad || rename(t, p) != 0)
        return -EIO;
    return 0;
}

static void report_refused(nl_cluster *cl, const char *name, uint32_t s, const char *why)
{
    char line[200];
    snprintf(line, sizeof line, "%s/%u: %s", name, s, why);
    pthread_mutex_lock(&cl->rep_mu);
    int known = 0;
    for (size_t i = 0; i < cl->nrefused; i++)
        known |= !strcmp(cl->refused[i], line);
    if (!known && cl->nrefused < 64)
        snprintf(cl->refused[cl->nrefused++], sizeof cl->refused[0], "%s", line);
    pthread_mutex_unlock(&cl->rep_mu);
    if (!known)
        cl_log(cl, 3, "\"event\":\"shard_refused\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"%s\"", name, s, why);
}

/* Opens (creating when missing) shard s of c locally; checks an existing copy first. */
static int verified(nl_cluster *cl, const nl_cluster_collection *cc, int add)
{
    char key[96];
    snprintf(key, sizeof key, "%s %s", cc->name, cc->uid);
    pthread_mutex_lock(&cl->rep_mu);
    int found = 0;
    for (size_t i = 0; i < cl->nverified && !found; i++)
        found = !strcmp(cl->verified[i], key);
    if (!found && add && cl->nverified < NL_MAX_COLLECTIONS)
        snprintf(cl->verified[cl->nverified++], sizeof cl->verified[0], "%s", key);
    pthread_mutex_unlock(&cl->rep_mu);
    return found;
}

static void unverify(nl_cluster *cl, const char *name)
{
    size_t n = strlen(name);
    pthread_mutex_lock(&cl->rep_mu);
    for (size_t i = 0; i < cl->nverified;)
        if (!strncmp(cl->verified[i], name, n) && cl->verified[i][n] == ' ')
            memmove(cl->verified[i], cl->verified[--cl->nverified], sizeof cl->verified[0]);
        else
            i++;
    pthread_mutex_unlock(&cl->rep_mu);
}

int cl_attach(nl_cluster *cl, const nl_cluster_collection *cc, uint32_t s, nl_collection **out)
{
    *out = NULL;
    nl_collection *h = NULL;
    int rc = nl_collection_open(cl->opt.db, cc->name, &h);
    if (rc == 0 && nl_collection_shard_held(h, s) && verified(cl, cc, 0)) {
        *out = h; /* the common case: an internal call on a shard already open and checked */
        return 0;
    }
    if (rc == NL_ENOTFOUND) {
        nl_clear_errdetail();
        rc = nl_collection_create_shards(cl->opt.db, cc->name, &cc->cfg, &s, 1);
        if (rc == 0 || rc == NL_EEXISTS)
            rc = uid_write(cl, cc->name, cc->uid);
        if (rc == 0 || rc == NL_EEXISTS)
            rc = nl_collection_open(cl->opt.db, cc->name, &h);
    }
    if (rc)
        return rc;
    nl_collection_config local;
    nl_collection_describe(h, &local);
    char uid[64] = {0};
    if ((rc = nl_cluster_collection_match(cc, &local)) != 0) {
        report_refused(cl, cc->name, s, nl_errdetail());
    } else if (uid_read(cl, cc->name, uid, sizeof uid) == 0 && strcmp(uid, cc->uid)) {
        rc = nl_fail(NL_ECORRUPT, "the local copy of '%s' belongs to an earlier collection of that name (uid %s, "
                     "the cluster's is %s)", cc->name, uid, cc->uid);
        report_refused(cl, cc->name, s, nl_errdetail());
    } else {
        if (!uid[0])
            uid_write(cl, cc->name, cc->uid);
        if (!nl_collection_shard_held(h, s) && (rc = nl_collection_shard_attach(h, s)) != 0)
            report_refused(cl, cc->name, s, nl_errdetail());
        if (!rc)
            verified(cl, cc, 1);
    }
    if (rc) {
        nl_collection_close(h);
        return rc;
    }
    *out = h;
    return 0;
}

#define DROP_GRACE_MS 10000

/* A local copy of shard sh the map no longer gives this node, of the same collection (its
 * uid), while the shard has its full in-sync set elsewhere (a move finished, or a replica
 * replaced): removed once that has been so for DROP_GRACE_MS (searches that started on it
 * end first; a map that changes back within the grace keeps it). 1 when dropped. */
static int drop_moved(nl_cluster *cl, const cl_coll *c, nl_collection *h, uint32_t sh)
{
    char uid[64] = {0}, key[100];
    const nl_shard_entry *e = sh < c->map.nshards ? &c->map.shard[sh] : NULL;
    if (!e || uid_read(cl, c->cc.name, uid, sizeof uid) != 0 || strcmp(uid, c->cc.uid) || e->nin_sync < c->cc.replicas)
        return 0;
    snprintf(key, sizeof key, "%s/%u", c->cc.name, sh);
    uint64_t t = nl_now_ns() / 1000000u;
    size_t i = 0;
    while (i < cl->ndropping && strcmp(cl->dropping[i], key))
        i++;
    if (i == cl->ndropping) {
        if (cl->ndropping == 64)
            return 0;
        snprintf(cl->dropping[cl->ndropping], sizeof cl->dropping[0], "%s", key);
        cl->dropping_since[cl->ndropping++] = t;
        return 0;
    }
    if (t - cl->dropping_since[i] < DROP_GRACE_MS)
        return 0;
    int rc = nl_collection_shard_detach(h, sh);
    memmove(cl->dropping[i], cl->dropping[i + 1], (cl->ndropping - i - 1) * sizeof cl->dropping[0]);
    memmove(&cl->dropping_since[i], &cl->dropping_since[i + 1], (cl->ndropping - i - 1) * sizeof cl->dropping_since[0]);
    cl->ndropping--;
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
    pthread_mutex_lock(&cl->rep_mu);
    for (size_t i = 0; i < nun; i++) {
        int known = 0;
        for (size_t k = 0; k < cl->nunassigned; k++)
            known |= !strcmp(cl->unassigned[k], un[i]);
        if (!known)
            cl_log(cl, 2, "\"event\":\"unassigned_local_shard\",\"shard\":\"%s\",\"message\":\"kept on disk, not "
                   "served: the shard map does not give it to this node\"", un[i]);
    }
    memcpy(cl->unassigned, un, sizeof un[0] * nun);
    cl->nunassigned = nun;
    pthread_mutex_unlock(&cl->rep_mu);
    return mine;
}

/* ---------------------------------------------------------------- the worker */

static void *worker(void *arg)
{
    nl_cluster *cl = arg;
    uint64_t last_wait_log = 0, last_info = 0, last_read = 0;
    char prev_coord[NL_NODE_ID_MAX] = {0};
    for (;;) {
        pthread_mutex_lock(&cl->mu);
        if (!cl->stop && !cl->dirty) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 500000000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&cl->cv, &cl->mu, &ts);
        }
        int stop = cl->stop, dirty = cl->dirty;
        cl->dirty = 0;
        pthread_mutex_unlock(&cl->mu);
        if (stop)
            break;
        if (atomic_load(&cl->fatal))
            continue;
        uint64_t now = nl_now_ns();
        if (atomic_load(&cl->expired)) {
            cl_log(cl, 2, "\"event\":\"session_expired\",\"message\":\"opening a new ZooKeeper session and "
                   "registering again\"");
            pthread_rwlock_wrlock(&cl->zh_lock);
            session_open(cl);
            pthread_rwlock_unlock(&cl->zh_lock);
            atomic_store(&cl->is_coordinator, 0);
        }
        if (atomic_load(&cl->zstate) != ZOO_CONNECTED_STATE) {
            if (now - last_wait_log > 5000000000ull) {
                cl_log(cl, 2, "\"event\":\"waiting_for_zookeeper\",\"zookeeper\":\"%s\",\"registered\":%s",
                       cl->opt.zookeeper, atomic_load(&cl->registered) ? "true" : "false");
                last_wait_log = now;
            }
            continue;
        }
        pthread_rwlock_rdlock(&cl->zh_lock);
        int fresh = !atomic_load(&cl->registered);
        if (fresh && do_register(cl) != 0) {
            if (!atomic_load(&cl->fatal) && now - last_wait_log > 5000000000ull) {
                cl_log(cl, 2, "\"event\":\"register_failed\",\"message\":\"%s\"", nl_errdetail());
                last_wait_log = now;
            }
            pthread_rwlock_unlock(&cl->zh_lock);
            continue;
        }
        /* a watch fired, or the node just registered, or 2 s passed: read everything */
        if (!dirty && !fresh && now - last_read < 2000000000ull) {
            pthread_rwlock_unlock(&cl->zh_lock);
            continue;
        }
        cl_snapshot *s = NULL;
        char elect[64][300];
        int nelect = 0;
        if (read_cluster(cl, &s, elect, &nelect) == 0) {
            last_read = now;
            atomic_store(&cl->last_read_ns, nl_now_ns());
            /* election: lead when ours is the lowest, else watch the one just below */
            const char *mine = strrchr(cl->election_node, '/');
            mine = mine ? mine + 1 : cl->election_node;
            int lead = nelect > 0 && !strcmp(elect[0], mine), found = 0;
            for (int i = 1; i < nelect && !lead; i++)
                if (!strcmp(elect[i], mine)) {
                    char p[512];
                    path_of(cl, p, sizeof p, "election", elect[i - 1]);
                    nl_zk_exists(cl->zh, CL_ZK_MS(cl), p, 1, NULL);
                    found = 1;
                }
            if (!lead && !found && nelect > 0) /* our znode is gone: the session is ending */
                atomic_store(&cl->registered, 0);
            if (strcmp(prev_coord, s->coordinator)) {
                if (prev_coord[0] || s->coordinator[0])
                    atomic_fetch_add(&cl->coordinator_changes, 1);
                cl_log(cl, 1, "\"event\":\"coordinator\",\"node_id\":\"%s\",\"this_node\":%s", s->coordinator,
                       lead ? "true" : "false");
                snprintf(prev_coord, sizeof prev_coord, "%s", s->coordinator);
            }
            atomic_store(&cl->is_coordinator, lead);
            atomic_store(&cl->map_fresh, 1);
            if (lead) {
                coordinate(cl, s);
                cl_failover(cl, s);
                cl_moves_coordinate(cl, s);
            }
            int64_t vs = 0;
            for (size_t i = 0; i < s->ncolls; i++)
                vs += s->colls[i].has_map ? s->colls[i].map.version + 1 : 0;
            atomic_store(&cl->map_version_sum, vs);
            uint32_t mine_n = reconcile(cl, s);
            snap_publish(cl, s);
            cl_snapshot *cur = cl_snap_get(cl);
            cl_repl_reconcile(cl, cur); /* the roles of shards this node is primary of */
            cl_snap_put(cl, cur);
            if (now - last_info > 5000000000ull) { /* the node record: free disk, load, shards */
                nl_node_info me;
                node_info_now(cl, &me, mine_n);
                char *data = nl_node_info_encode(&me), p[512];
                path_of(cl, p, sizeof p, "nodes", cl->node_id);
                if (data)
                    nl_zk_set(cl->zh, CL_ZK_MS(cl), p, data, (int)strlen(data), -1, NULL);
                free(data);
                last_info = now;
            }
        }
        pthread_rwlock_unlock(&cl->zh_lock);
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
    pthread_rwlock_init(&cl->zh_lock, &za);
    pthread_rwlockattr_destroy(&za);
    pthread_mutex_init(&cl->mu, NULL);
    pthread_cond_init(&cl->cv, NULL);
    pthread_mutex_init(&cl->snap_mu, NULL);
    pthread_mutex_init(&cl->rep_mu, NULL);
    pthread_mutex_init(&cl->repl_mu, NULL);
    for (int i = 0; i < CL_FOLLOW_LOCKS; i++)
        pthread_mutex_init(&cl->follow_mu[i], NULL);
    cl->replica_timeout_ms = opt->replica_timeout_ms ? opt->replica_timeout_ms : 3000;
    cl->write_wait_ms = cl->replica_timeout_ms * 2 + 2000; /* a follower's removal fits in it */
    cl->log_max_bytes = opt->log_max_bytes ? opt->log_max_bytes : 256ull << 20;
    cl->log_max_age_ms = opt->log_max_age_ms ? opt->log_max_age_ms : 3600000ull;
    cl->move_rate_bps = opt->move_rate_bps;
    cl->moves_per_node = opt->moves_per_node ? opt->moves_per_node : 1;
    cl->move_drift = opt->move_drift ? opt->move_drift : 1;
    cl->move_disk_drift = opt->move_disk_drift_pct < 0 ? -1.0 : opt->move_disk_drift_pct ? opt->move_disk_drift_pct / 100.0 : 0.5;
    cl->replace_after_ms = opt->replace_after_ms ? opt->replace_after_ms : 300000ull;
    cl->compactions_per_node = opt->compactions_per_node ? opt->compactions_per_node : 1;
    pthread_mutex_init(&cl->pace_mu, NULL);
    const char *fault = getenv("NEARLINE_FAULT_CORRUPT_PIECE"); /* tests only: docs/cluster.md */
    cl->fault_corrupt_every = fault ? (uint32_t)strtoul(fault, NULL, 10) : 0;
    cl_snapshot_cleanup(cl);
    cl_snapshot *empty = calloc(1, sizeof *empty);
    nl_router_options ro = {.cluster_key = opt->cluster_key, .ca_file = opt->tls ? opt->tls_ca : NULL,
                            .max_per_peer = opt->peer_connections};
    if (!hosts || !empty || (opt->cluster_key && !cl->key) || (rc = nl_router_create(&ro, &cl->router)) != 0) {
        free(empty);
        free(hosts);
        free(cl->key);
        free(cl);
        return rc ? rc : -ENOMEM;
    }
    snap_publish(cl, empty);
    zoo_set_debug_level(ZOO_LOG_LEVEL_ERROR);
    zoo_set_log_stream(stderr);
    if ((rc = session_open(cl)) != 0 || pthread_create(&cl->th, NULL, worker, cl) != 0) {
        if (cl->zh)
            zookeeper_close(cl->zh);
        nl_router_destroy(cl->router);
        snap_free(cl->snap);
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
        int f = atomic_load(&cl->fatal);
        if (f == NL_EEXISTS)
            return nl_fail(f, "node id %s is already registered by another live process", cl->node_id);
        if (f)
            return nl_fail(f, "znode %s is not a nearline cluster root (check --cluster-root)", cl->root);
        if (atomic_load(&cl->registered)) {
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
    if (atomic_load(&cl->registered)) { /* and has read the cluster once */
        cl_snapshot *s = cl_snap_get(cl);
        int have = s->nnodes > 0;
        cl_snap_put(cl, s);
        if (have)
            return 1;
    }
    snprintf(why, cap, "%s", atomic_load(&cl->fatal) ? "refused by the cluster (see the log)"
                           : atomic_load(&cl->zstate) == ZOO_CONNECTED_STATE ? "registering with ZooKeeper"
                                                                             : "waiting for ZooKeeper");
    return 0;
}

int nl_cluster_fatal(nl_cluster *cl) { return atomic_load(&cl->fatal); }

void nl_cluster_leave(nl_cluster *cl)
{
    if (!cl)
        return;
    pthread_mutex_lock(&cl->mu);
    int joined = cl->stop;
    cl->stop = 1;
    pthread_cond_signal(&cl->cv);
    pthread_mutex_unlock(&cl->mu);
    if (!joined)
        pthread_join(cl->th, NULL);
    cl_repl_stop_all(cl);
    pthread_rwlock_wrlock(&cl->zh_lock);
    if (cl->zh)
        zookeeper_close(cl->zh); /* ends the session: the ephemerals go at once */
    cl->zh = NULL;
    atomic_store(&cl->registered, 0);
    pthread_rwlock_unlock(&cl->zh_lock);
}

void nl_cluster_stop(nl_cluster *cl)
{
    if (!cl)
        return;
    nl_cluster_leave(cl);
    nl_router_destroy(cl->router);
    snap_free(cl->snap);
    pthread_rwlock_destroy(&cl->zh_lock);
    pthread_mutex_destroy(&cl->mu);
    pthread_cond_destroy(&cl->cv);
    pthread_mutex_destroy(&cl->snap_mu);
    pthread_mutex_destroy(&cl->rep_mu);
    pthread_mutex_destroy(&cl->repl_mu);
    for (int i = 0; i < CL_FOLLOW_LOCKS; i++)
        pthread_mutex_destroy(&cl->follow_mu[i]);
    if (cl->key) {
        memset(cl->key, 0, cl->key_len);
        free(cl->key);
    }
    free((char *)cl->opt.zookeeper);
    free(cl);
}

/* ---------------------------------------------------------------- internal calls */

int nl_cluster_key_ok(nl_cluster *cl, const char *key)
{
    if (!cl->key)
        return 1;
    if (!key)
        return 0;
    size_t n = strlen(key);
    unsigned char d = (unsigned char)(n != cl->key_len);
    for (size_t i = 0; i < cl->key_len; i++)
        d |= (unsigned char)(cl->key[i] ^ (i < n ? key[i] : 0));
    return d == 0;
}

/* Re-reads one collection's config and map (a request thread; the worker's snapshot may
 * lag a map that was just written). */
int cl_fresh_coll(nl_cluster *cl, const char *name, cl_coll *out)
{
    char p[512], *buf;
    int len, rc;
    struct Stat st;
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&cl->zh_lock);
    path_of(cl, p, sizeof p, "collections", name);
    if ((rc = zget(cl, p, 0, &buf, &len, NULL)) == 0) {
        rc = nl_cluster_collection_decode(buf, (size_t)len, &out->cc);
        free(buf);
    }
    path_of(cl, p, sizeof p, "maps", name);
    if (!rc && zget(cl, p, 0, &buf, &len, &st) == 0) {
        if (nl_shard_map_decode(buf, (size_t)len, &out->map) == 0 && !strcmp(out->map.uid, out->cc.uid)) {
            out->map.version = st.version;
            out->has_map = 1;
        }
        free(buf);
    }
    pthread_rwlock_unlock(&cl->zh_lock);
    return rc;
}

int nl_cluster_local_shard(nl_cluster *cl, const char *name, uint32_t s, nl_collection **out)
{
    *out = NULL;
    cl_snapshot *snap = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(snap, name);
    cl_coll tmp;
    int rc = 0;
    if (!c || !c->has_map || !nl_shard_map_holds(&c->map, s, cl->node_id)) {
        if ((rc = cl_fresh_coll(cl, name, &tmp)) == 0)
            c = &tmp;
        else if (rc != NL_ENOTFOUND && c)
            rc = 0; /* ZooKeeper unreachable: serve from the snapshot */
    }
    if (!rc && (!c || !c->has_map))
        rc = nl_fail(NL_ENOTFOUND, "collection '%s' has no shard map", name);
    else if (!rc && !nl_shard_map_holds(&c->map, s, cl->node_id))
        rc = nl_fail(NL_EREFUSED, "shard %u of '%s' is not assigned to node %s", s, name, cl->node_id);
    if (!rc)
        rc = cl_attach(cl, &c->cc, s, out);
    cl_snap_put(cl, snap);
    return rc;
}

int nl_cluster_local_drop(nl_cluster *cl, const char *name)
{
    unverify(cl, name);
    int rc = nl_collection_drop(cl->opt.db, name);
    char p[4400];
    uid_path(cl, name, p, sizeof p);
    unlink(p);
    if (rc == 0)
        cl_log(cl, 1, "\"event\":\"local_copy_dropped\",\"collection\":\"%s\"", name);
    return rc == NL_ENOTFOUND ? 0 : rc;
}

/* ---------------------------------------------------------------- collections */

int nl_cluster_config(nl_cluster *cl, const char *name, nl_collection_config *cfg, uint32_t *replicas)
{
    cl_snapshot *s = cl_snap_get(cl);
    const cl_coll *c = cl_snap_coll(s, name);
    cl_coll tmp;
    int rc = 0;
    if (!c) { /* maybe created a moment ago through another node */
        if ((rc = cl_fresh_coll(cl, name, &tmp)) == 0)
            c = &tmp;
    }
    if (c) {
        *cfg = c->cc.cfg;
        if (replicas)
            *replicas = c->cc.replicas;
    } else if (rc == NL_ENOTFOUND || rc == 0) {
        rc = nl_fail(NL_ENOTFOUND, "no collection named \"%s\"", name);
    }
    cl_snap_put(cl, s);
    return rc;
}

int nl_cluster_list(nl_cluster *cl, json_t **out)
{
    char p[512];
    struct String_vector ch = {0, NULL};
    pthread_rwlock_rdlock(&cl->zh_lock);
    path_of(cl, p, sizeof p, "collections", NULL);
    int zrc = cl->zh ? nl_zk_children(cl->zh, CL_ZK_MS(cl), p, 0, &ch) : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zh_lock);
    json_t *a = json_array();
    if (zrc == ZOK) {
        qsort(ch.data, (size_t)ch.count, sizeof *ch.data, cmp_str);
        for (int i = 0; i < ch.count; i++)
            json_array_append_new(a, json_string(ch.data[i]));
        deallocate_String_vector(&ch);
    } else { /* ZooKeeper unreachable: the last snapshot, said so */
        cl_snapshot *s = cl_snap_get(cl);
        for (size_t i = 0; i < s->ncolls; i++)
            json_array_append_new(a, json_string(s->colls[i].cc.name));
        cl_snap_put(cl, s);
        *out = json_pack("{s:o,s:b}", "collections", a, "stale", 1);
        return 200;
    }
    *out = json_pack("{s:o}", "collections", a);
    return 200;
}

int nl_cluster_create(nl_cluster *cl, const nl_cluster_call *call, const char *name, const nl_collection_config *cfg,
                      uint32_t replicas, int quorum, json_t **out)
{
    nl_cluster_collection cc;
    memset(&cc, 0, sizeof cc);
    snprintf(cc.name, sizeof cc.name, "%s", name);
    cc.cfg = *cfg;
    cc.replicas = replicas;
    cc.write_quorum = quorum;
    /* the defaults filled in (the server did), so every node creates the same shard */
    int rc0 = nl_collection_config_defaults(&cc.cfg);
    if (rc0) {
        *out = cl_error("bad_request", "%s", nl_errdetail());
        return 400;
    }
    uint64_t r = nl_now_ns() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)&cc;
    snprintf(cc.uid, sizeof cc.uid, "%016llx", (unsigned long long)r);
    cl_snapshot *s = cl_snap_get(cl);
    size_t live = s->nnodes;
    cl_snap_put(cl, s);
    if (replicas > live) {
        *out = cl_error("bad_request", "%u replicas need %u live nodes; %zu are live", replicas, replicas, live);
        return 400;
    }
    char *data = nl_cluster_collection_encode(&cc), p[512];
    path_of(cl, p, sizeof p, "collections", name);
    pthread_rwlock_rdlock(&cl->zh_lock);
    int rc = data ? zcreate(cl, p, data, 0, NULL, 0) : -ENOMEM;
    pthread_rwlock_unlock(&cl->zh_lock);
    free(data);
    if (rc == NL_EEXISTS) {
        *out = cl_error("exists", "collection '%s' already exists", name);
        return 409;
    }
    if (rc) {
        *out = cl_error("unavailable", "cannot write the collection to ZooKeeper: %s", nl_strerror(rc));
        return 503;
    }
    cl_log(cl, 1, "\"event\":\"collection_created\",\"collection\":\"%s\",\"shards\":%u,\"uid\":\"%s\"", name,
           cc.cfg.shards, cc.uid);
    /* The coordinator places the shards; the answer waits for the map (10 s at most). */
    uint64_t end = nl_now_ns() + 10000000000ull;
    cl_coll c;
    while (nl_now_ns() < end) {
        if (cl_fresh_coll(cl, name, &c) == 0 && c.has_map) {
            wake(cl);
            /* the describe opens every shard on its node (the first open creates it):
             * given time, so the answer comes once the collection takes writes */
            nl_cluster_call k = *call;
            k.timeout_ms = 30000;
            int st = nl_cluster_describe(cl, &k, name, out);
            return st == 200 ? 201 : st;
        }
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    *out = cl_error("unavailable", "collection '%s' was created but no coordinator has placed its shards yet; it "
                    "will be usable once one has", name);
    return 503;
}

int nl_cluster_drop(nl_cluster *cl, const nl_cluster_call *call, const char *name, json_t **out)
{
    cl_coll c;
    int rc = cl_fresh_coll(cl, name, &c);
    if (rc == NL_ENOTFOUND) {
        *out = cl_error("not_found", "no collection named \"%s\"", name);
        return 404;
    }
    if (rc) {
        *out = cl_error("unavailable", "ZooKeeper: %s", nl_strerror(rc));
        return 503;
    }
    char mp[512], cp[512];
    path_of(cl, mp, sizeof mp, "maps", name);
    path_of(cl, cp, sizeof cp, "collections", name);
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    int n = 0;
    if (c.has_map)
        zoo_delete_op_init(&ops[n++], mp, -1);
    zoo_delete_op_init(&ops[n++], cp, -1);
    pthread_rwlock_rdlock(&cl->zh_lock);
    int zrc = cl->zh ? nl_zk_multi(cl->zh, CL_ZK_MS(cl), n, ops, res) : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zh_lock);
    if (zrc != ZOK) {
        *out = zrc == ZNONODE ? cl_error("not_found", "collection '%s' was dropped meanwhile", name)
                              : cl_error("unavailable", "ZooKeeper: %s", zerror(zrc));
        return zrc == ZNONODE ? 404 : 503;
    }
    cl_log(cl, 1, "\"event\":\"collection_dropped\",\"collection\":\"%s\"", name);
    /* every node holding a shard drops its copy now; one that is down keeps it (reported
     * as unassigned when it returns) */
    cl_snapshot *s = cl_snap_get(cl);
    nl_rcall calls[NL_MAX_NODES];
    size_t nc = 0;
    for (size_t i = 0; c.has_map && i < s->nnodes; i++) {
        int holds = 0;
        for (uint32_t sh = 0; sh < c.map.nshards; sh++)
            holds |= nl_shard_map_holds(&c.map, sh, s->nodes[i].id);
        if (!holds)
            continue;
        nl_rcall *k = &calls[nc++];
        memset(k, 0, sizeof *k);
        k->peer = s->nodes[i].id;
        k->method = "DELETE";
        snprintf(k->path, sizeof k->path, "/internal/v1/collections/%s", name);
    }
    char url[NL_MAX_NODES][200];
    for (size_t i = 0; i < nc; i++) {
        const nl_node_info *nd = cl_snap_node(s, calls[i].peer);
        cl_node_url(nd, url[i], sizeof url[i]);
        calls[i].base_url = url[i];
    }
    nl_router_run(cl->router, calls, nc, call->timeout_ms ? call->timeout_ms : 5000, call->request_id,
                  call->traceparent);
    json_t *kept = json_array();
    for (size_t i = 0; i < nc; i++) {
        if (calls[i].status != 200)
            json_array_append_new(kept, json_string(calls[i].peer));
        free(calls[i].body_out);
    }
    cl_snap_put(cl, s);
    wake(cl);
    *out = json_pack("{s:s,s:o}", "dropped", name, "copies_kept_on", kept);
    return 200;
}

int nl_cluster_node_status(nl_cluster *cl, json_t **out)
{
    cl_snapshot *s = cl_snap_get(cl);
    json_t *nodes = json_array(), *colls = json_array(), *ref = json_array(), *un = json_array();
    for (size_t i = 0; i < s->nnodes; i++) {
        const nl_node_info *n = &s->nodes[i];
        json_array_append_new(nodes, json_pack("{s:s,s:s,s:I,s:f,s:i,s:s,s:i}", "id", n->id, "address", n->address,
                                               "disk_free", (json_int_t)n->disk_free, "load", n->load, "shards",
                                               (int)n->shards, "version", n->version, "breaker",
                                               nl_router_breaker(cl->router, n->id)));
    }
    for (size_t i = 0; i < s->ncolls; i++)
        json_array_append_new(colls, json_pack("{s:s,s:b,s:i}", "name", s->colls[i].cc.name, "placed",
                                               s->colls[i].has_map, "map_version",
                                               s->colls[i].has_map ? s->colls[i].map.version : -1));
    pthread_mutex_lock(&cl->rep_mu);
    for (size_t i = 0; i < cl->nrefused; i++)
        json_array_append_new(ref, json_string(cl->refused[i]));
    for (size_t i = 0; i < cl->nunassigned; i++)
        json_array_append_new(un, json_string(cl->unassigned[i]));
    pthread_mutex_unlock(&cl->rep_mu);
    *out = json_pack("{s:s,s:s,s:b,s:s,s:b,s:o,s:o,s:o,s:o,s:o}", "node_id", cl->node_id, "root", cl->root,
                     "registered", atomic_load(&cl->registered), "coordinator", s->coordinator, "is_coordinator",
                     atomic_load(&cl->is_coordinator), "nodes", nodes, "collections", colls, "refused_shards", ref,
                     "unassigned_local_shards", un, "primary_of", cl_repl_status(cl));
    json_object_set_new(*out, "compacting", json_integer(atomic_load(&cl->compacting)));
    cl_snap_put(cl, s);
    return 200;
}

void nl_cluster_metrics(nl_cluster *cl, FILE *f)
{
    cl_snapshot *s = cl_snap_get(cl);
    size_t nn = s->nnodes, nc = s->ncolls;
    cl_snap_put(cl, s);
    pthread_mutex_lock(&cl->rep_mu);
    size_t nref = cl->nrefused, nun = cl->nunassigned;
    pthread_mutex_unlock(&cl->rep_mu);
#define G(name, help, v) fprintf(f, "# HELP " name " " help "\n# TYPE " name " gauge\n" name " %lld\n", (long long)(v))
#define C(name, help, v) fprintf(f, "# HELP " name " " help "\n# TYPE " name " counter\n" name " %llu\n", (unsigned long long)(v))
    G("nearline_cluster_registered", "1 when this node is registered in ZooKeeper.", atomic_load(&cl->registered));
    G("nearline_cluster_is_coordinator", "1 when this node is the coordinator.", atomic_load(&cl->is_coordinator));
    G("nearline_cluster_nodes", "Live nodes this node sees.", nn);
    G("nearline_cluster_collections", "Collections in the cluster.", nc);
    G("nearline_cluster_map_version", "Sum over collections of their shard map versions (changes when any map does).",
      atomic_load(&cl->map_version_sum));
    G("nearline_cluster_refused_shards", "Local shards refused because they differ from the cluster's config.", nref);
    G("nearline_cluster_unassigned_local_shards", "Shards on this node's disk that the map does not give it.", nun);
    C("nearline_cluster_coordinator_changes_total", "Times this node saw the coordinator change.",
      atomic_load(&cl->coordinator_changes));
    C("nearline_cluster_sessions_total", "ZooKeeper sessions this node registered with.", atomic_load(&cl->sessions));
    C("nearline_cluster_map_writes_total", "Shard maps this node wrote as coordinator.", atomic_load(&cl->map_writes));
    C("nearline_cluster_map_conflicts_total", "Map writes refused by ZooKeeper (lost a race, or fenced).",
      atomic_load(&cl->map_conflicts));
    C("nearline_router_partial_answers_total", "Searches answered without some shards (partial: true).",
      atomic_load(&cl->partial_answers));
    C("nearline_router_incomplete_refused_total", "Searches refused (503) because they required every shard.",
      atomic_load(&cl->complete_refusals));
    C("nearline_router_fanouts_total", "Requests the router fanned out to shards.", atomic_load(&cl->fanout_calls));
    C("nearline_router_fanout_shards_total", "Shard calls of those fan-outs (their sum: the mean fan-out width).",
      atomic_load(&cl->fanout_shards));
    C("nearline_router_search_requeries_total", "Shards of a search asked again for the whole k (their first, scaled "
      "answer could hold more of it).", atomic_load(&cl->fanout_requeries));
    C("nearline_router_write_part_failures_total", "Per-shard parts of writes that failed.",
      atomic_load(&cl->write_part_failures));
    C("nearline_router_write_retries_total", "Write parts sent again to a shard's new primary (a move or a failover).",
      atomic_load(&cl->write_retries));
    C("nearline_moves_started_total", "Replica moves this node planned as coordinator.", atomic_load(&cl->moves_started));
    C("nearline_moves_finished_total", "Replica moves this node finished as the shard's primary.",
      atomic_load(&cl->moves_finished));
    C("nearline_moves_rolled_back_total", "Replica moves abandoned by this node as coordinator (the target went).",
      atomic_load(&cl->moves_rolled_back));
    C("nearline_moves_handoffs_total", "Primary roles this node handed to a move's target.", atomic_load(&cl->handoffs));
    C("nearline_moves_copies_dropped_total", "Local shard copies removed after the map moved them away.",
      atomic_load(&cl->copies_dropped));
    C("nearline_snapshot_pieces_sent_total", "Snapshot pieces this node sent.", atomic_load(&cl->pieces_sent));
    C("nearline_snapshot_raw_bytes_total", "Bytes of shard files the snapshot copies this node installed elsewhere "
      "carried (before compression).", atomic_load(&cl->snapshot_raw_bytes));
    C("nearline_snapshot_pieces_resent_total", "Snapshot pieces sent again after the receiver refused their checksum.",
      atomic_load(&cl->pieces_resent));
    G("nearline_compactions_running", "Background compactions running on this node.", atomic_load(&cl->compacting));
    C("nearline_compactions_deferred_total", "Background compactions put off (the node's bound, or another replica of "
      "the shard compacting).", atomic_load(&cl->compactions_deferred));
#undef G
#undef C
    cl_repl_metrics(cl, f);
    nl_router_metrics(cl->router, f);
}
