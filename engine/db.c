/*
 * db.c — the database and its collections (nearline.h) over shards (nl_shard.h).
 *
 * A collection spreads its points over its shards by a hash of the external id (FNV-1a
 * 64 of the id's store key, modulo the shard count), so every operation on one id goes
 * to one shard and a search fans out to all of them and merges by distance.
 *
 * Open collections are cached in the database: the cache holds one reference and every
 * handle another, so shards stay open between requests. A drop marks the collection,
 * releases the cache's reference, and the last reference closes the shards and removes
 * the files (renamed to .trash-* first, so a crash midway leaves nothing that looks
 * like a collection). Until then the name is busy.
 *
 * A collection can hold only some of its shards (cluster mode: a node holds the shards the
 * shard map gives it). Such a collection is marked PARTIAL on disk; its missing shards are
 * NULL in c->shards, whole-collection calls work on the shards held and per-shard calls
 * (nl_collection_shard_*) on one. A shard is attached under c->swap (written) and db->mu
 * and published with a release store; readers load the pointer with acquire (shard_at).
 * Per-shard calls hold swap for reading; the calls that take a shard out or replace it
 * (detach, install of a copy: db_shards.c) hold it for writing, so no call sees a shard
 * closed under it and no attach opens a directory while it is being renamed. Lock order:
 * swap, then db->mu. Failed shards are reopened by db_recover.c.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "nearline.h"
#include "nl_catalog.h"
#include "nl_import.h"
#include "nl_quant.h"
#include "nl_shard.h"
#include "nl_util.h"

#include "db_internal.h"

/* ---------------------------------------------------------------- database */

int nl_db_open(const char *dir, const nl_db_options *opt, nl_db **out)
{
    *out = NULL;
    if (!dir || !*dir || strlen(dir) >= 3000)
        return nl_fail(NL_EINVAL, "database directory name is empty or too long");
    int mk = nl_mkdirs(dir);
    if (mk)
        return nl_fail(mk, "cannot create database directory %s: %s", dir, strerror(-mk));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return nl_fail(NL_EINVAL, "%s is not a directory", dir);
    if (access(dir, W_OK | X_OK) != 0)
        return nl_fail(-errno, "database directory %s is not writable: %s", dir, strerror(errno));
    nl_db *db = calloc(1, sizeof *db);
    if (!db)
        return -ENOMEM;
    snprintf(db->dir, sizeof db->dir, "%s", dir);
    if (opt)
        db->opt = *opt;
    pthread_mutex_init(&db->mu, NULL);
    pthread_mutex_init(&db->rmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&db->rcv, &ca);
    pthread_condattr_destroy(&ca);
    /* Leftovers of creates, imports and drops that a crash interrupted. */
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char p[8200];
        snprintf(p, sizeof p, "%s/%s/DROPPED", dir, e->d_name);
        int dropped = nl_collection_name_check(e->d_name) == 0 && stat(p, &st) == 0;
        nl_clear_errdetail();
        if (dropped || !strncmp(e->d_name, ".tmp-", 5) || !strncmp(e->d_name, ".trash-", 7)) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            nl_remove_tree(p);
        }
    }
    if (d)
        closedir(d);
    if (!db->opt.no_background && (mk = db_recovery_start(db)) != 0) {
        nl_db_close(db);
        return mk;
    }
    *out = db;
    return 0;
}

static void collection_free(nl_collection *c)
{
    for (uint32_t i = 0; c->shards && i < c->cfg.shards; i++)
        if (c->shards[i])
            nl_shard_close(c->shards[i]);
    free(c->shards);
    free(c->broken);
    pthread_rwlock_destroy(&c->swap);
    free(c);
}

/* Drops a reference (db->mu held); the last one closes, and removes a dropped
 * collection's files. */
static void collection_unref_locked(nl_collection *c)
{
    NL_ASSERT_HELD(&c->db->mu);
    NL_ASSERT(c->refs >= 1);
    if (--c->refs > 0)
        return;
    nl_db *db = c->db;
    for (nl_collection **pp = &db->open; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    int dropped = c->dropped;
    char dir[4200], trash[4400];
    snprintf(dir, sizeof dir, "%s", c->dir);
    snprintf(trash, sizeof trash, "%s/.trash-%s-%d-%lu", db->dir, c->name, (int)getpid(), ++db->trash_seq);
    collection_free(c);
    if (dropped) /* renamed first, so a crash midway leaves nothing named like a collection */
        nl_remove_tree(rename(dir, trash) == 0 ? trash : dir);
}

void nl_db_close(nl_db *db)
{
    if (!db)
        return;
    db_recovery_stop(db);
    pthread_mutex_lock(&db->mu);
    while (db->open) {
        nl_collection *c = db->open;
        c->refs = 1; /* the caller promised no handle is open */
        collection_unref_locked(c);
    }
    pthread_mutex_unlock(&db->mu);
    pthread_mutex_destroy(&db->mu);
    pthread_mutex_destroy(&db->rmu);
    pthread_cond_destroy(&db->rcv);
    free(db);
}

/* ---------------------------------------------------------------- collections */

static nl_collection *find_locked(nl_db *db, const char *name)
{
    NL_ASSERT_HELD(&db->mu);
    for (nl_collection *c = db->open; c; c = c->next)
        if (!strcmp(c->name, name))
            return c;
    return NULL;
}

void db_shard_config(const nl_collection_config *c, nl_shard_config *s)
{
    *s = (nl_shard_config){c->dim, c->dtype, c->metric, c->R, c->L, c->alpha, c->pq_bytes, c->fresh_capacity, c->code};
}

int nl_collection_config_defaults(nl_collection_config *cfg)
{
    if (!cfg->shards)
        cfg->shards = 1;
    if (cfg->shards > NL_MAX_SHARDS)
        return nl_fail(NL_EINVAL, "shards must be 1..%d", NL_MAX_SHARDS);
    nl_shard_config sc;
    db_shard_config(cfg, &sc);
    int rc = nl_shard_config_check(&sc);
    if (rc)
        return rc;
    cfg->R = sc.R;
    cfg->L = sc.L;
    cfg->alpha = sc.alpha;
    cfg->pq_bytes = sc.pq_m;
    cfg->fresh_capacity = sc.fresh_capacity;
    cfg->code = sc.code;
    return 0;
}

static int create_impl(nl_db *db, const char *name, const nl_collection_config *cfg_in, const uint32_t *held,
                       size_t nheld, int partial)
{
    int rc = nl_collection_name_check(name);
    if (rc)
        return rc;
    if (!cfg_in)
        return nl_fail(NL_EINVAL, "no collection config");
    nl_collection_config cfg = *cfg_in;
    if (!cfg.shards)
        cfg.shards = 1;
    if (cfg.shards > NL_MAX_SHARDS)
        return nl_fail(NL_EINVAL, "shards must be 1..%d", NL_MAX_SHARDS);
    nl_shard_config sc;
    db_shard_config(&cfg, &sc);
    if ((rc = nl_shard_config_check(&sc)) != 0)
        return rc;
    cfg.R = sc.R;
    cfg.L = sc.L;
    cfg.alpha = sc.alpha;
    cfg.pq_bytes = sc.pq_m;
    cfg.fresh_capacity = sc.fresh_capacity;
    cfg.code = sc.code;

    char final_dir[4200], tmp[4300], sdir[4400];
    snprintf(final_dir, sizeof final_dir, "%s/%s", db->dir, name);
    pthread_mutex_lock(&db->mu);
    nl_collection *busy = find_locked(db, name);
    struct stat st;
    if (busy && busy->dropped)
        rc = nl_fail(-EBUSY, "collection '%s' is being dropped; retry when its last handle is closed", name);
    else if (busy || stat(final_dir, &st) == 0)
        rc = nl_fail(NL_EEXISTS, "collection '%s' already exists", name);
    if (rc) {
        pthread_mutex_unlock(&db->mu);
        return rc;
    }
    snprintf(tmp, sizeof tmp, "%s/.tmp-create-%s-%d", db->dir, name, (int)getpid());
    nl_remove_tree(tmp);
    if (mkdir(tmp, 0755) != 0)
        rc = nl_fail(-errno, "cannot create %s: %s", tmp, strerror(errno));
    for (size_t k = 0; k < (partial ? nheld : cfg.shards) && !rc; k++) {
        uint32_t i = partial ? held[k] : (uint32_t)k;
        if (i >= cfg.shards) {
            rc = nl_fail(NL_EINVAL, "shard %u of a collection of %u shards", i, cfg.shards);
            break;
        }
        nl_db_options o = db->opt;
        o.no_background = 1;
        nl_shard *sh;
        snprintf(sdir, sizeof sdir, "%s/%u", tmp, i);
        if ((rc = nl_shard_create(sdir, &sc, &o, &sh)) == 0)
            nl_shard_close(sh);
    }
    if (!rc && partial) {
        snprintf(sdir, sizeof sdir, "%s/PARTIAL", tmp);
        int fd = open(sdir, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || fsync(fd) != 0)
            rc = nl_fail(-errno, "cannot write %s: %s", sdir, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    if (!rc)
        rc = nl_catalog_write_config(tmp, &cfg);
    if (!rc && (rc = nl_fsync_dir(tmp)) != 0)
        nl_fail(rc, "cannot sync %s", tmp);
    if (!rc && rename(tmp, final_dir) != 0)
        rc = errno == EEXIST || errno == ENOTEMPTY
                 ? nl_fail(NL_EEXISTS, "collection '%s' was created by someone else meanwhile", name)
                 : nl_fail(-errno, "cannot publish %s: %s", final_dir, strerror(errno));
    if (rc)
        nl_remove_tree(tmp);
    else if ((rc = nl_fsync_dir(db->dir)) != 0) /* the rename's outcome is unknown: it stays */
        nl_fail(rc, "cannot sync %s after creating '%s': %s", db->dir, name, strerror(-rc));
    pthread_mutex_unlock(&db->mu);
    return rc;
}

int nl_collection_create(nl_db *db, const char *name, const nl_collection_config *cfg)
{
    return create_impl(db, name, cfg, NULL, 0, 0);
}

int nl_collection_create_shards(nl_db *db, const char *name, const nl_collection_config *cfg, const uint32_t *held,
                                size_t nheld)
{
    if (nheld && !held)
        return nl_fail(NL_EINVAL, "no shard list");
    return create_impl(db, name, cfg, held, nheld, 1);
}

static int open_locked(nl_db *db, const char *name, nl_collection **out)
{
    nl_collection *c = find_locked(db, name);
    if (c) {
        if (c->dropped)
            return nl_fail(NL_ENOTFOUND, "collection '%s' was dropped", name);
        *out = c;
        return 0;
    }
    c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->db = db;
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&c->swap, &ra);
    pthread_rwlockattr_destroy(&ra);
    snprintf(c->name, sizeof c->name, "%s", name);
    snprintf(c->dir, sizeof c->dir, "%s/%s", db->dir, name);
    int rc = nl_catalog_read_config(c->dir, &c->cfg);
    if (!rc) {
        c->shards = calloc(c->cfg.shards, sizeof *c->shards);
        c->broken = calloc(c->cfg.shards, sizeof *c->broken);
        if (!c->shards || !c->broken)
            rc = -ENOMEM;
    }
    char mark[4400];
    snprintf(mark, sizeof mark, "%s/PARTIAL", c->dir);
    struct stat st;
    c->partial = stat(mark, &st) == 0;
    for (uint32_t i = 0; i < c->cfg.shards && !rc; i++) {
        char sdir[4400];
        snprintf(sdir, sizeof sdir, "%s/%u", c->dir, i);
        if (c->partial && stat(sdir, &st) != 0)
            continue; /* not held here */
        if ((rc = nl_shard_open(sdir, &db->opt, &c->shards[i])) != 0)
            break;
        nl_shard_config sc;
        nl_shard_get_config(c->shards[i], &sc);
        if (sc.dim != c->cfg.dim || sc.metric != c->cfg.metric || sc.dtype != c->cfg.dtype)
            rc = nl_fail(NL_ECORRUPT, "shard %u of '%s' disagrees with collection.json", i, name);
    }
    if (rc) {
        collection_free(c);
        return rc;
    }
    c->refs = 1; /* the cache's */
    c->next = db->open;
    db->open = c;
    *out = c;
    return 0;
}

int nl_collection_open(nl_db *db, const char *name, nl_collection **out)
{
    *out = NULL;
    int rc = nl_collection_name_check(name);
    if (rc)
        return rc;
    pthread_mutex_lock(&db->mu);
    nl_collection *c;
    if ((rc = open_locked(db, name, &c)) == 0) {
        c->refs++;
        *out = c;
    }
    pthread_mutex_unlock(&db->mu);
    return rc;
}

void nl_collection_close(nl_collection *c)
{
    if (!c)
        return;
    nl_db *db = c->db;
    pthread_mutex_lock(&db->mu);
    collection_unref_locked(c);
    pthread_mutex_unlock(&db->mu);
}

int nl_collection_drop(nl_db *db, const char *name)
{
    int rc = nl_collection_name_check(name);
    if (rc)
        return rc;
    pthread_mutex_lock(&db->mu);
    nl_collection *c;
    if ((rc = open_locked(db, name, &c)) != 0) {
        pthread_mutex_unlock(&db->mu);
        return rc;
    }
    /* Durable at once: a marker that opening and listing honour, and that nl_db_open
     * clears up after a crash. The files go with the last handle (calls in flight on
     * other threads finish on the shards first). */
    char marker[4400];
    snprintf(marker, sizeof marker, "%s/DROPPED", c->dir);
    int fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || fsync(fd) != 0) {
        rc = nl_fail(-errno, "cannot drop %s: %s", c->dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        pthread_mutex_unlock(&db->mu);
        return rc;
    }
    close(fd);
    nl_fsync_dir(c->dir);
    c->dropped = 1;
    collection_unref_locked(c); /* the cache's reference */
    pthread_mutex_unlock(&db->mu);
    return 0;
}

int nl_collection_list(nl_db *db, char ***names, size_t *count)
{
    return nl_catalog_list_collections(db->dir, names, count);
}

void nl_names_free(char **names, size_t count) { nl_string_list_free(names, count); }

void nl_collection_describe(const nl_collection *c, nl_collection_config *cfg) { *cfg = c->cfg; }
const char *nl_collection_name(const nl_collection *c) { return c->name; }

/* ---------------------------------------------------------------- routing */

uint32_t nl_shard_of(const nl_id *id, uint32_t shards)
{
    if (shards <= 1)
        return 0;
    unsigned char ek[NL_EKEY_MAX];
    size_t n = nl_ekey_encode(id, ek);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= ek[i];
        h *= 1099511628211ull;
    }
    return (uint32_t)(h % shards);
}

static uint32_t shard_of(const nl_collection *c, const nl_id *id) { return nl_shard_of(id, c->cfg.shards); }

/* Shard s, or NULL with NL_ENOTFOUND when this node does not hold it. */
static nl_shard *held_shard(const nl_collection *c, uint32_t s)
{
    nl_shard *sh = s < c->cfg.shards ? shard_at(c, s) : NULL;
    if (!sh && s < c->cfg.shards && c->broken[s].code)
        nl_fail(NL_EDOWN, "shard %u of '%s' failed and has not reopened yet: %s", s, c->name, c->broken[s].msg);
    else if (!sh)
        nl_fail(NL_ENOTFOUND, "shard %u of '%s' is not held here", s, c->name);
    return sh;
}

/* The code held_shard's failure means: NL_EDOWN for a failed shard, else NL_ENOTFOUND. */
static int unheld_code(const nl_collection *c, uint32_t s)
{
    return s < c->cfg.shards && c->broken[s].code ? NL_EDOWN : NL_ENOTFOUND;
}

/* NL_EDOWN when a shard of the collection failed to reopen (a whole-collection read
 * would silently miss its points). */
static int any_broken(const nl_collection *c)
{
    for (uint32_t s = 0; s < c->cfg.shards; s++)
        if (!shard_at(c, s) && c->broken[s].code)
            return nl_fail(NL_EDOWN, "shard %u of '%s' failed and has not reopened yet: %s", s, c->name,
                           c->broken[s].msg);
    return 0;
}

int nl_collection_shard_held(const nl_collection *c, uint32_t s)
{
    return s < c->cfg.shards && shard_at(c, s) != NULL;
}

/* Calls on a dropped collection fail; shards are NULL once the drop closed them. */
static int live(const nl_collection *c)
{
    pthread_mutex_lock(&c->db->mu);
    int ok = !c->dropped;
    pthread_mutex_unlock(&c->db->mu);
    return ok ? 0 : nl_fail(NL_ENOTFOUND, "collection '%s' was dropped", c->name);
}

/* Any held shard (for checks that only need the configuration), or NULL. */
static nl_shard *any_shard(const nl_collection *c)
{
    for (uint32_t s = 0; s < c->cfg.shards; s++)
        if (shard_at(c, s))
            return shard_at(c, s);
    nl_fail(NL_ENOTFOUND, "no shard of '%s' is held here", c->name);
    return NULL;
}

static int collection_upsert_impl(nl_collection *c, const nl_point *pts, size_t n)
{
    int rc = live(c);
    if (rc || n == 0)
        return rc;
    if (!pts)
        return nl_fail(NL_EINVAL, "no points");
    nl_shard *first = any_shard(c);
    if (!first)
        return NL_ENOTFOUND;
    if (c->cfg.shards == 1)
        return nl_shard_upsert(first, pts, n);
    /* The whole batch is checked, and every shard it needs found, before any shard writes. */
    if ((rc = nl_shard_validate(first, pts, n)) != 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (!held_shard(c, shard_of(c, &pts[i].id)))
            return unheld_code(c, shard_of(c, &pts[i].id));
    nl_point *part = malloc(sizeof *part * n);
    if (!part)
        return -ENOMEM;
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (shard_of(c, &pts[i].id) == s)
                part[m++] = pts[i];
        if (m)
            rc = nl_shard_upsert(shard_at(c, s), part, m);
    }
    free(part);
    return rc;
}

int nl_collection_upsert(nl_collection *c, const nl_point *pts, size_t n)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_upsert_impl(c, pts, n);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

int db_live_shard(const nl_collection *c, uint32_t s, nl_shard **sh)
{
    int rc = live(c);
    if (rc)
        return rc;
    *sh = held_shard(c, s);
    return *sh ? 0 : unheld_code(c, s);
}

static int collection_shard_upsert_impl(nl_collection *c, uint32_t s, const nl_point *pts, size_t n)
{
    nl_shard *sh;
    int rc = db_live_shard(c, s, &sh);
    if (rc || n == 0)
        return rc;
    if (!pts)
        return nl_fail(NL_EINVAL, "no points");
    for (size_t i = 0; i < n; i++)
        if (shard_of(c, &pts[i].id) != s) /* a misrouted write would be unreachable by get */
            return nl_fail(NL_EINVAL, "point %zu belongs to shard %u, not %u", i, shard_of(c, &pts[i].id), s);
    return nl_shard_upsert(sh, pts, n);
}

int nl_collection_shard_upsert(nl_collection *c, uint32_t s, const nl_point *pts, size_t n)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_shard_upsert_impl(c, s, pts, n);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_delete_by_filter_impl(nl_collection *c, const nl_filter *f, size_t *deleted)
{
    if (deleted)
        *deleted = 0;
    int rc = live(c);
    if (rc)
        return rc;
    if (!f)
        return nl_fail(NL_EINVAL, "delete by filter: no filter");
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++) {
        size_t d = 0;
        if (shard_at(c, s) && (rc = nl_shard_delete_by_filter(shard_at(c, s), f, &d)) == 0 && deleted)
            *deleted += d;
    }
    return rc;
}

int nl_collection_delete_by_filter(nl_collection *c, const nl_filter *f, size_t *deleted)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_delete_by_filter_impl(c, f, deleted);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_shard_delete_by_filter_impl(nl_collection *c, uint32_t s, const nl_filter *f, size_t *deleted)
{
    if (deleted)
        *deleted = 0;
    nl_shard *sh;
    int rc = db_live_shard(c, s, &sh);
    if (rc)
        return rc;
    if (!f)
        return nl_fail(NL_EINVAL, "delete by filter: no filter");
    return nl_shard_delete_by_filter(sh, f, deleted);
}

int nl_collection_shard_delete_by_filter(nl_collection *c, uint32_t s, const nl_filter *f, size_t *deleted)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_shard_delete_by_filter_impl(c, s, f, deleted);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_delete_impl(nl_collection *c, const nl_id *ids, size_t n, size_t *deleted)
{
    if (deleted)
        *deleted = 0;
    int rc = live(c);
    if (rc || n == 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (!held_shard(c, shard_of(c, &ids[i])))
            return unheld_code(c, shard_of(c, &ids[i]));
    if (c->cfg.shards == 1)
        return nl_shard_delete(shard_at(c, 0), ids, n, deleted);
    nl_id *part = malloc(sizeof *part * n);
    if (!part)
        return -ENOMEM;
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++) {
        size_t m = 0, d = 0;
        for (size_t i = 0; i < n; i++)
            if (shard_of(c, &ids[i]) == s)
                part[m++] = ids[i];
        if (m && (rc = nl_shard_delete(shard_at(c, s), part, m, &d)) == 0 && deleted)
            *deleted += d;
    }
    free(part);
    return rc;
}

int nl_collection_delete(nl_collection *c, const nl_id *ids, size_t n, size_t *deleted)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_delete_impl(c, ids, n, deleted);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_shard_delete_impl(nl_collection *c, uint32_t s, const nl_id *ids, size_t n, size_t *deleted)
{
    if (deleted)
        *deleted = 0;
    nl_shard *sh;
    int rc = db_live_shard(c, s, &sh);
    if (rc || n == 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (shard_of(c, &ids[i]) != s)
            return nl_fail(NL_EINVAL, "id %zu belongs to shard %u, not %u", i, shard_of(c, &ids[i]), s);
    return nl_shard_delete(sh, ids, n, deleted);
}

int nl_collection_shard_delete(nl_collection *c, uint32_t s, const nl_id *ids, size_t n, size_t *deleted)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_shard_delete_impl(c, s, ids, n, deleted);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_get_impl(nl_collection *c, const nl_id *id, float *vec, char **meta, size_t *meta_len)
{
    int rc = live(c);
    if (rc)
        return rc;
    nl_shard *sh = held_shard(c, shard_of(c, id));
    return sh ? nl_shard_get(sh, id, vec, meta, meta_len) : unheld_code(c, shard_of(c, id));
}

int nl_collection_get(nl_collection *c, const nl_id *id, float *vec, char **meta, size_t *meta_len)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_get_impl(c, id, vec, meta, meta_len);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_get_metadata_impl(nl_collection *c, const nl_id *id, char **meta, size_t *meta_len)
{
    *meta = NULL;
    *meta_len = 0;
    int rc = live(c);
    if (rc)
        return rc;
    nl_shard *sh = held_shard(c, shard_of(c, id));
    return sh ? nl_shard_get_metadata(sh, id, meta, meta_len) : unheld_code(c, shard_of(c, id));
}

int nl_collection_get_metadata(nl_collection *c, const nl_id *id, char **meta, size_t *meta_len)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_get_metadata_impl(c, id, meta, meta_len);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int hit_cmp(const void *a, const void *b)
{
    const nl_hit *x = a, *y = b;
    return x->dist < y->dist ? -1 : x->dist > y->dist;
}

/* The search of nl_collection_search_batch over the shards in which[0..S). */
static int search_shards(nl_collection *c, const uint32_t *which, uint32_t S, const float *qs, size_t nq,
                         const nl_search_params *p, nl_hit *hits, uint32_t *counts, nl_query_stats *stats)
{
    int rc = live(c);
    if (rc)
        return rc;
    if (!p || p->k == 0 || p->k > NL_MAX_K)
        return nl_fail(NL_EINVAL, "k must be 1..%d", NL_MAX_K);
    if (p->L > NL_MAX_K)
        return nl_fail(NL_EINVAL, "L must be at most %d", NL_MAX_K);
    for (size_t i = 0; i < nq * c->cfg.dim; i++)
        if (!isfinite(qs[i]))
            return nl_fail(NL_EBADVALUE, "query %zu: value %zu is NaN or Inf", i / c->cfg.dim, i % c->cfg.dim);
    if (S == 0) {
        memset(counts, 0, sizeof *counts * nq);
        if (stats)
            memset(stats, 0, sizeof *stats * nq);
        return 0;
    }
    if (S == 1)
        return nl_shard_search_batch(shard_at(c, which[0]), qs, nq, p, hits, counts, stats);
    uint32_t k = p->k;
    nl_hit *all = malloc(sizeof *all * k * S * (nq ? nq : 1));
    uint32_t *cnt = malloc(sizeof *cnt * S * (nq ? nq : 1));
    nl_query_stats *st = stats ? calloc(nq ? nq : 1, sizeof *st) : NULL;
    if (!all || !cnt || (stats && !st)) {
        free(all);
        free(cnt);
        free(st);
        return -ENOMEM;
    }
    if (stats)
        memset(stats, 0, sizeof *stats * nq);
    nl_hit *tmp = malloc(sizeof *tmp * k * (nq ? nq : 1));
    for (uint32_t s = 0; s < S && !rc; s++) {
        if (!tmp) {
            rc = -ENOMEM;
            break;
        }
        if ((rc = nl_shard_search_batch(shard_at(c, which[s]), qs, nq, p, tmp, cnt + (size_t)s * nq, st)) != 0)
            break;
        for (size_t q = 0; q < nq; q++) {
            memcpy(all + (q * S + s) * k, tmp + q * k, sizeof *tmp * cnt[(size_t)s * nq + q]);
            if (stats) {
                stats[q].latency_ns += st[q].latency_ns;
                stats[q].ios += st[q].ios;
                stats[q].cache_hits += st[q].cache_hits;
                stats[q].bound_skips += st[q].bound_skips;
                stats[q].sector_expands += st[q].sector_expands;
                stats[q].hops += st[q].hops;
                stats[q].filter_plan |= st[q].filter_plan;
                stats[q].scanned += st[q].scanned;
                stats[q].matches += st[q].matches;
            }
        }
    }
    for (size_t q = 0; q < nq && !rc; q++) {
        /* Compact this query's shard results, sort, keep k. */
        size_t m = 0;
        for (uint32_t s = 0; s < S; s++) {
            memmove(all + q * S * k + m, all + (q * S + s) * k, sizeof *all * cnt[(size_t)s * nq + q]);
            m += cnt[(size_t)s * nq + q];
        }
        qsort(all + q * S * k, m, sizeof *all, hit_cmp);
        counts[q] = (uint32_t)(m < k ? m : k);
        memcpy(hits + q * k, all + q * S * k, sizeof *hits * counts[q]);
    }
    free(tmp);
    free(all);
    free(cnt);
    free(st);
    return rc;
}

static int collection_search_batch_impl(nl_collection *c, const float *qs, size_t nq, const nl_search_params *p,
                               nl_hit *hits, uint32_t *counts, nl_query_stats *stats)
{
    uint32_t which[NL_MAX_SHARDS], S = 0;
    int rc = any_broken(c);
    if (rc)
        return rc;
    for (uint32_t s = 0; s < c->cfg.shards; s++)
        if (shard_at(c, s))
            which[S++] = s;
    return search_shards(c, which, S, qs, nq, p, hits, counts, stats);
}

int nl_collection_search_batch(nl_collection *c, const float *qs, size_t nq, const nl_search_params *p,
                               nl_hit *hits, uint32_t *counts, nl_query_stats *stats)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_search_batch_impl(c, qs, nq, p, hits, counts, stats);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_shard_search_batch_impl(nl_collection *c, uint32_t s, const float *qs, size_t nq,
                                     const nl_search_params *p, nl_hit *hits, uint32_t *counts,
                                     nl_query_stats *stats)
{
    if (!held_shard(c, s))
        return unheld_code(c, s);
    return search_shards(c, &s, 1, qs, nq, p, hits, counts, stats);
}

int nl_collection_shard_search_batch(nl_collection *c, uint32_t s, const float *qs, size_t nq,
                                     const nl_search_params *p, nl_hit *hits, uint32_t *counts,
                                     nl_query_stats *stats)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_shard_search_batch_impl(c, s, qs, nq, p, hits, counts, stats);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

int nl_collection_search(nl_collection *c, const float *q, const nl_search_params *p, nl_hit *hits,
                         nl_query_stats *stats)
{
    uint32_t n = 0;
    int rc = nl_collection_search_batch(c, q, 1, p, hits, &n, stats);
    return rc ? rc : (int)n;
}

/* ---------------------------------------------------------------- maintenance */

static int collection_flush_impl(nl_collection *c)
{
    int rc = live(c);
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++)
        if (shard_at(c, s))
            rc = nl_shard_flush(shard_at(c, s));
    return rc;
}

int nl_collection_flush(nl_collection *c)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_flush_impl(c);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_compact_impl(nl_collection *c, nl_compact_mode mode, int dry_run, nl_compact_report *rep)
{
    nl_compact_report r;
    memset(&r, 0, sizeof r);
    uint64_t t0 = nl_now_ns();
    int rc = live(c);
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++)
        if (shard_at(c, s))
            rc = nl_shard_compact(shard_at(c, s), mode, dry_run, &r);
    r.seconds = (double)(nl_now_ns() - t0) / 1e9;
    if (rep)
        *rep = r;
    return rc;
}

int nl_collection_compact(nl_collection *c, nl_compact_mode mode, int dry_run, nl_compact_report *rep)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_compact_impl(c, mode, dry_run, rep);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static void stats_add(nl_collection_stats *st, const nl_collection_stats *x, int first)
{
    st->points += x->points;
    st->fresh_points += x->fresh_points;
    st->segments += x->segments;
    st->segment_points += x->segment_points;
    st->tombstones += x->tombstones;
    st->disk_bytes += x->disk_bytes;
    st->ram_bytes += x->ram_bytes;
    st->flushes += x->flushes;
    st->compactions += x->compactions;
    st->flush_seconds += x->flush_seconds;
    st->compaction_seconds += x->compaction_seconds;
    st->flush_bytes += x->flush_bytes;
    st->compaction_bytes += x->compaction_bytes;
    st->write_waits += x->write_waits;
    st->search_retries += x->search_retries;
    st->search_exhaustive += x->search_exhaustive;
    st->store_sst_bytes += x->store_sst_bytes;
    st->store_memtable_bytes += x->store_memtable_bytes;
    st->store_pending_compaction_bytes += x->store_pending_compaction_bytes;
    st->store_running_compactions += x->store_running_compactions;
    st->store_keys += x->store_keys;
    st->store_block_cache_bytes += x->store_block_cache_bytes;
    st->cached_nodes += x->cached_nodes;
    st->seed_members += x->seed_members;
    st->block_layout_points += x->block_layout_points;
    st->direct_io = first ? x->direct_io : st->direct_io && x->direct_io;
    st->failed_shards += x->failed_shards;
    if (x->background_error)
        st->background_error = x->background_error;
}

static int collection_stats_get_impl(nl_collection *c, nl_collection_stats *st)
{
    memset(st, 0, sizeof *st);
    int rc = live(c), first = 1;
    st->shard_reopens = atomic_load(&c->reopens);
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++) {
        if (!shard_at(c, s)) {
            st->failed_shards += c->broken[s].code != 0;
            continue;
        }
        nl_collection_stats x;
        nl_shard_stats(shard_at(c, s), &x);
        stats_add(st, &x, first);
        first = 0;
    }
    return rc;
}

int nl_collection_stats_get(nl_collection *c, nl_collection_stats *st)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_stats_get_impl(c, st);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_shard_stats_impl(nl_collection *c, uint32_t s, nl_collection_stats *st)
{
    memset(st, 0, sizeof *st);
    nl_shard *sh;
    int rc = db_live_shard(c, s, &sh);
    if (rc)
        return rc;
    nl_shard_stats(sh, st);
    return 0;
}

int nl_collection_shard_stats(nl_collection *c, uint32_t s, nl_collection_stats *st)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_shard_stats_impl(c, s, st);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

static int collection_verify_impl(nl_collection *c, nl_verify_report *rep)
{
    nl_verify_report r;
    memset(&r, 0, sizeof r);
    int rc = live(c);
    for (uint32_t s = 0; s < c->cfg.shards && !rc; s++) {
        if (!shard_at(c, s))
            continue;
        rc = nl_shard_verify(shard_at(c, s), &r);
        if (rc == NL_ECORRUPT)
            nl_fail(rc, "shard %u: %s", s, nl_errdetail());
    }
    if (rep)
        *rep = r;
    return rc;
}

int nl_collection_verify(nl_collection *c, nl_verify_report *rep)
{
    pthread_rwlock_rdlock(&c->swap);
    int rc = collection_verify_impl(c, rep);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

/* ---------------------------------------------------------------- the operation log */

/* Shard s for a per-shard call, the swap lock held shared until leave_shard. */
static nl_shard *enter_shard(nl_collection *c, uint32_t s, int *rc)
{
    pthread_rwlock_rdlock(&c->swap);
    nl_shard *sh = NULL;
    if ((*rc = db_live_shard(c, s, &sh)) != 0)
        pthread_rwlock_unlock(&c->swap);
    return *rc ? NULL : sh;
}

static int leave_shard(nl_collection *c, int rc)
{
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

int nl_collection_shard_log_upsert(nl_collection *c, uint32_t s, const nl_log_order *o, const nl_point *pts,
                                   size_t n, uint64_t *seq)
{
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    if (!sh)
        return rc;
    if (!pts || n == 0)
        rc = nl_fail(NL_EINVAL, "no points");
    for (size_t i = 0; i < n && !rc; i++)
        if (shard_of(c, &pts[i].id) != s)
            rc = nl_fail(NL_EINVAL, "point %zu belongs to shard %u, not %u", i, shard_of(c, &pts[i].id), s);
    if (!rc)
        rc = nl_shard_log_upsert(sh, o, pts, n, seq);
    return leave_shard(c, rc);
}

int nl_collection_shard_log_delete(nl_collection *c, uint32_t s, const nl_log_order *o, const nl_id *ids, size_t n,
                                   size_t *deleted, uint64_t *seq)
{
    if (deleted)
        *deleted = 0;
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    if (!sh)
        return rc;
    for (size_t i = 0; i < n && !rc; i++)
        if (shard_of(c, &ids[i]) != s)
            rc = nl_fail(NL_EINVAL, "id %zu belongs to shard %u, not %u", i, shard_of(c, &ids[i]), s);
    if (!rc && n)
        rc = nl_shard_log_delete(sh, o, ids, n, deleted, seq);
    return leave_shard(c, rc);
}

int nl_collection_shard_log_delete_by_filter(nl_collection *c, uint32_t s, const nl_log_order *o, const nl_filter *f,
                                             size_t *deleted, uint64_t *seq)
{
    *deleted = 0;
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    if (!sh)
        return rc;
    rc = f ? nl_shard_log_delete_by_filter(sh, o, f, deleted, seq) : nl_fail(NL_EINVAL, "no filter");
    return leave_shard(c, rc);
}

int nl_collection_shard_log_apply(nl_collection *c, uint32_t s, uint64_t by, uint64_t seq, const void *entry,
                                  size_t len)
{
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_log_apply(sh, by, seq, entry, len)) : rc;
}

int nl_collection_shard_log_state(nl_collection *c, uint32_t s, nl_log_state *st)
{
    memset(st, 0, sizeof *st);
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_log_state(sh, st)) : rc;
}

int nl_collection_shard_log_read(nl_collection *c, uint32_t s, uint64_t seq, size_t max_bytes, nl_log_entry **out,
                                 size_t *n)
{
    *out = NULL;
    *n = 0;
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_log_read(sh, seq, max_bytes, out, n)) : rc;
}

int nl_collection_shard_log_epoch_at(nl_collection *c, uint32_t s, uint64_t seq, uint64_t *epoch)
{
    *epoch = 0;
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_log_epoch_at(sh, seq, epoch)) : rc;
}

int nl_collection_shard_log_trim(nl_collection *c, uint32_t s, uint64_t keep_from, uint64_t max_bytes,
                                 uint64_t max_age_ms, uint64_t *trimmed)
{
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_log_trim(sh, keep_from, max_bytes, max_age_ms, trimmed)) : rc;
}

int nl_collection_shard_fence(nl_collection *c, uint32_t s, uint64_t epoch, nl_log_state *st)
{
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_fence(sh, epoch, st)) : rc;
}

int nl_collection_shard_checkpoint(nl_collection *c, uint32_t s, const char *dir, nl_log_state *at)
{
    int rc;
    nl_shard *sh = enter_shard(c, s, &rc);
    return sh ? leave_shard(c, nl_shard_checkpoint(sh, dir, at)) : rc;
}

