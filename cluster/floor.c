/*
 * floor.c — what every duty of a cluster node stands on: the log line, error bodies and
 * paths, calls to ZooKeeper that read and create znodes, the published snapshot of the
 * cluster (members, collections, maps) that request threads read without locks of their
 * own, the one way a shard map is written (a fenced compare-and-set), and attaching the
 * local copy of a shard the map gives this node.
 *
 * Invariants:
 *  - A snapshot is immutable once published; it lives while its count is >= 1 (the
 *    published one holds a reference; readers take one with cl_snap_get).
 *  - A map write carries the version read and, from the coordinator, a check of its own
 *    election znode in the same multi-op: a deposed coordinator cannot write, and of two
 *    racing writers one version wins.
 *  - A local shard is attached only when the collection's uid on disk matches the
 *    cluster's (a collection dropped and created again under the same name is another).
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
#include "cl_floor.h"
#include "nl_util.h"


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

void cl_path(nl_cluster *cl, char *buf, size_t cap, const char *a, const char *b)
{
    if (b)
        snprintf(buf, cap, "%s/%s/%s", cl->root, a, b);
    else if (a)
        snprintf(buf, cap, "%s/%s", cl->root, a);
    else
        snprintf(buf, cap, "%s", cl->root);
}

int cl_zerr(int zrc)
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

void cl_snap_free(cl_snapshot *s)
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
        cl_snap_free(s);
}

void cl_snap_publish(nl_cluster *cl, cl_snapshot *n)
{
    n->refs = 1;
    pthread_mutex_lock(&cl->snap_mu);
    cl_snapshot *old = cl->snap;
    cl->snap = n;
    int last = old && --old->refs == 0;
    pthread_mutex_unlock(&cl->snap_mu);
    if (last)
        cl_snap_free(old);
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

void cl_wake(nl_cluster *cl)
{
    pthread_mutex_lock(&cl->worker.mu);
    cl->worker.dirty = 1;
    pthread_cond_signal(&cl->worker.cv);
    pthread_mutex_unlock(&cl->worker.mu);
}

/* Reads a znode into a malloc'd NUL-terminated buffer; watch: leave a watch. */
int cl_zget(nl_cluster *cl, const char *path, int watch, char **out, int *len, struct Stat *st)
{
    if (!cl->zk.h)
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
        int zrc = nl_zk_get(cl->zk.h, CL_ZK_MS(cl), path, watch, buf, &n, st);
        if (zrc != ZOK) {
            free(buf);
            return cl_zerr(zrc);
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

int cl_zcreate(nl_cluster *cl, const char *path, const char *data, int flags, char *made, int madecap)
{
    if (!cl->zk.h)
        return NL_EUNAVAILABLE;
    int zrc = nl_zk_create(cl->zk.h, CL_ZK_MS(cl), path, data, data ? (int)strlen(data) : -1, flags, made, madecap);
    return cl_zerr(zrc);
}

int cl_map_write(nl_cluster *cl, const nl_shard_map *m, int32_t version, int fenced, int32_t *newv)
{
    char *data = nl_shard_map_encode(m), mp[512];
    if (!data)
        return -ENOMEM;
    cl_path(cl, mp, sizeof mp, "maps", m->collection);
    zoo_op_t ops[2];
    zoo_op_result_t res[2];
    struct Stat st;
    memset(&st, 0, sizeof st);
    int n = 0;
    if (fenced)
        zoo_check_op_init(&ops[n++], cl->zk.election_node, -1);
    zoo_set_op_init(&ops[n++], mp, data, (int)strlen(data), version, &st);
    pthread_rwlock_rdlock(&cl->zk.lock);
    int zrc = cl->zk.h ? nl_zk_multi(cl->zk.h, CL_ZK_MS(cl), n, ops, res) : ZINVALIDSTATE;
    pthread_rwlock_unlock(&cl->zk.lock);
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
    return nl_fail(cl_zerr(zrc) == -ESTALE ? NL_EUNAVAILABLE : cl_zerr(zrc), "map write of '%s': %s", m->collection,
                   zerror(zrc));
}

/* ---------------------------------------------------------------- local shards */

void cl_uid_path(nl_cluster *cl, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/.cluster/%s.uid", cl->db_dir, name);
}

int cl_uid_read(nl_cluster *cl, const char *name, char *uid, size_t cap)
{
    char p[4400];
    cl_uid_path(cl, name, p, sizeof p);
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
    cl_uid_path(cl, name, p, sizeof p);
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
    pthread_mutex_lock(&cl->report.mu);
    int known = 0;
    for (size_t i = 0; i < cl->report.nrefused; i++)
        known |= !strcmp(cl->report.refused[i], line);
    if (!known && cl->report.nrefused < 64)
        snprintf(cl->report.refused[cl->report.nrefused++], sizeof cl->report.refused[0], "%s", line);
    pthread_mutex_unlock(&cl->report.mu);
    if (!known)
        cl_log(cl, 3, "\"event\":\"shard_refused\",\"collection\":\"%s\",\"shard\":%u,\"message\":\"%s\"", name, s, why);
}

/* Opens (creating when missing) shard s of c locally; checks an existing copy first. */
static int verified(nl_cluster *cl, const nl_cluster_collection *cc, int add)
{
    char key[96];
    snprintf(key, sizeof key, "%s %s", cc->name, cc->uid);
    pthread_mutex_lock(&cl->report.mu);
    int found = 0;
    for (size_t i = 0; i < cl->report.nverified && !found; i++)
        found = !strcmp(cl->report.verified[i], key);
    if (!found && add && cl->report.nverified < NL_MAX_COLLECTIONS)
        snprintf(cl->report.verified[cl->report.nverified++], sizeof cl->report.verified[0], "%s", key);
    pthread_mutex_unlock(&cl->report.mu);
    return found;
}

void cl_unverify(nl_cluster *cl, const char *name)
{
    size_t n = strlen(name);
    pthread_mutex_lock(&cl->report.mu);
    for (size_t i = 0; i < cl->report.nverified;)
        if (!strncmp(cl->report.verified[i], name, n) && cl->report.verified[i][n] == ' ')
            memmove(cl->report.verified[i], cl->report.verified[--cl->report.nverified], sizeof cl->report.verified[0]);
        else
            i++;
    pthread_mutex_unlock(&cl->report.mu);
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
    } else if (cl_uid_read(cl, cc->name, uid, sizeof uid) == 0 && strcmp(uid, cc->uid)) {
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

/* ---------------------------------------------------------------- reading a collection */

/* Re-reads one collection's config and map (a request thread; the worker's snapshot may
 * lag a map that was just written). */
int cl_fresh_coll(nl_cluster *cl, const char *name, cl_coll *out)
{
    char p[512], *buf;
    int len, rc;
    struct Stat st;
    memset(out, 0, sizeof *out);
    pthread_rwlock_rdlock(&cl->zk.lock);
    cl_path(cl, p, sizeof p, "collections", name);
    if ((rc = cl_zget(cl, p, 0, &buf, &len, NULL)) == 0) {
        rc = nl_cluster_collection_decode(buf, (size_t)len, &out->cc);
        free(buf);
    }
    cl_path(cl, p, sizeof p, "maps", name);
    if (!rc && cl_zget(cl, p, 0, &buf, &len, &st) == 0) {
        if (nl_shard_map_decode(buf, (size_t)len, &out->map) == 0 && !strcmp(out->map.uid, out->cc.uid)) {
            out->map.version = st.version;
            out->has_map = 1;
        }
        free(buf);
    }
    pthread_rwlock_unlock(&cl->zk.lock);
    return rc;
}

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

/* ---------------------------------------------------------------- calls to a peer by id */

int cl_peer_live(nl_cluster *cl, const char *peer)
{
    cl_snapshot *s = cl_snap_get(cl);
    int live = cl_snap_node(s, peer) != NULL;
    cl_snap_put(cl, s);
    return live;
}

int cl_link_call(nl_cluster *cl, void **conn, const char *peer, const char *path, const void *body, size_t len,
                 const char *content_type, uint32_t timeout_ms, json_t **answer)
{
    *answer = NULL;
    cl_snapshot *s = cl_snap_get(cl);
    const nl_node_info *n = cl_snap_node(s, peer);
    char url[1200];
    if (n) {
        cl_node_url(n, url, 300);
        snprintf(url + strlen(url), sizeof url - strlen(url), "%s", path);
    }
    cl_snap_put(cl, s);
    if (!n)
        return 0; /* not a live node */
    char *b;
    size_t bl;
    int st = nl_peer_stream_call(cl->peers, conn, url, body, len, content_type, timeout_ms, &b, &bl);
    if (st && bl) {
        json_error_t je;
        *answer = json_loadb(b, bl, 0, &je);
    }
    free(b);
    return st;
}
