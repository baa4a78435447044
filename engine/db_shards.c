/*
 * db_shards.c — a collection's shards coming and going on this node: attach (open a held
 * shard, or create an empty one), detach (close it and remove its files) and install (put a
 * copy sent by a primary in its place). The calls of nearline.h; db.c has the rest.
 *
 * Invariants: each takes the collection's swap lock exclusively, so no call runs on a shard
 * while its directory is renamed; a name change is made durable (the directory synced)
 * before anything that depends on it, and when that sync fails the outcome is unknown
 * (docs/decisions.md, "Unknown outcomes"): both copies are kept and the shard is left out
 * (c->broken) until the recovery thread (db_recover.c) has synced and reopened it. A crash
 * between an install's two renames leaves the old copy under its trash name only; attach
 * takes it back rather than creating an empty shard.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "db_internal.h"
#include "nl_catalog.h"
#include "nl_shard.h"
#include "nl_util.h"

int nl_collection_shard_attach(nl_collection *c, uint32_t s)
{
    if (s >= c->cfg.shards)
        return nl_fail(NL_EINVAL, "shard %u of a collection of %u shards", s, c->cfg.shards);
    nl_db *db = c->db;
    /* swap written, as install and detach hold it: a shard they have taken out for a moment
     * (its slot NULL while its directory is renamed) is never opened here meanwhile, which
     * would open the copy being replaced (or the new one under its lock) and leave two
     * handles on one directory */
    pthread_rwlock_wrlock(&c->swap);
    pthread_mutex_lock(&db->mu);
    int rc = c->dropped ? nl_fail(NL_ENOTFOUND, "collection '%s' was dropped", c->name) : 0;
    /* a shard left out after a failure is reopened by the recovery thread alone, which
     * waits for disk space and counts it (db_recover.c) */
    if (!rc && !c->shards[s] && c->broken[s].code)
        rc = nl_fail(NL_EDOWN, "shard %u of '%s' failed and has not reopened yet: %s", s, c->name, c->broken[s].msg);
    if (!rc && !c->shards[s]) {
        char sdir[4400];
        struct stat st;
        snprintf(sdir, sizeof sdir, "%s/%u", c->dir, s);
        nl_shard *sh = NULL;
        char trash[4400];
        snprintf(trash, sizeof trash, "%s/.trash-shard-%u", c->dir, s);
        /* a crash between an install's two renames leaves the old copy under its trash
         * name and none under the shard's: that copy is the shard, not an empty new one */
        if (stat(sdir, &st) != 0 && stat(trash, &st) == 0 && rename(trash, sdir) == 0)
            rc = nl_fsync_dir(c->dir);
        if (!rc && stat(sdir, &st) == 0) {
            rc = nl_shard_open(sdir, &db->opt, &sh);
        } else if (!rc) {
            nl_shard_config sc;
            db_shard_config(&c->cfg, &sc);
            nl_shard *tmp;
            nl_db_options o = db->opt;
            o.no_background = 1;
            char tdir[4500];
            snprintf(tdir, sizeof tdir, "%s/.tmp-shard-%u", c->dir, s);
            nl_remove_tree(tdir);
            /* assembled aside and renamed, so a crash never leaves half a shard */
            if ((rc = nl_shard_create(tdir, &sc, &o, &tmp)) == 0) {
                nl_shard_close(tmp);
                if (rename(tdir, sdir) != 0)
                    rc = nl_fail(-errno, "cannot publish %s: %s", sdir, strerror(errno));
                else
                    nl_fsync_dir(c->dir);
            }
            if (rc)
                nl_remove_tree(tdir);
            else
                rc = nl_shard_open(sdir, &db->opt, &sh);
        }
        if (!rc)
            __atomic_store_n(&c->shards[s], sh, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&db->mu);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

int nl_collection_shard_detach(nl_collection *c, uint32_t s)
{
    pthread_rwlock_wrlock(&c->swap);
    nl_shard *old;
    int rc = db_live_shard(c, s, &old);
    if (!rc) {
        char sdir[4400], trash[4400];
        snprintf(sdir, sizeof sdir, "%s/%u", c->dir, s);
        snprintf(trash, sizeof trash, "%s/.trash-shard-%u", c->dir, s);
        nl_shard_close(old);
        __atomic_store_n(&c->shards[s], NULL, __ATOMIC_RELEASE);
        /* renamed first, so a crash mid-removal leaves a trash directory (removed at the
         * next open) rather than half a shard that would open */
        nl_remove_tree(trash);
        if (rename(sdir, trash) == 0) {
            nl_fsync_dir(c->dir);
            nl_remove_tree(trash);
        } else {
            rc = nl_fail(-errno, "cannot remove %s: %s", sdir, strerror(errno));
        }
    }
    pthread_rwlock_unlock(&c->swap);
    return rc;
}

int nl_collection_shard_install(nl_collection *c, uint32_t s, const char *dir)
{
    pthread_rwlock_wrlock(&c->swap);
    nl_shard *old;
    int rc = db_live_shard(c, s, &old);
    if (rc) {
        pthread_rwlock_unlock(&c->swap);
        return rc;
    }
    char sdir[4400], trash[4400];
    snprintf(sdir, sizeof sdir, "%s/%u", c->dir, s);
    snprintf(trash, sizeof trash, "%s/.trash-shard-%u", c->dir, s);
    nl_remove_tree(trash);
    /* The old copy is closed and set aside, the new one moved into place and opened; if it
     * does not open as a shard of this collection the old one comes back. */
    int unknown = 0;
    nl_shard_close(old);
    __atomic_store_n(&c->shards[s], NULL, __ATOMIC_RELEASE);
    nl_shard *sh = NULL;
    if (rename(sdir, trash) != 0) {
        rc = nl_fail(-errno, "cannot set %s aside: %s", sdir, strerror(errno));
    } else if (rename(dir, sdir) != 0) {
        rc = nl_fail(-errno, "cannot move %s into place: %s", dir, strerror(errno));
        rename(trash, sdir);
    } else if ((rc = nl_fsync_dir(c->dir)) != 0) {
        /* Unknown which names the disk holds (docs/decisions.md, "Unknown outcomes"): both
         * copies are kept and the shard is left out as failed; the recovery thread reopens
         * it once the directory syncs (db_recover.c), and only then is the set-aside copy
         * removed. Until then it answers NL_EDOWN, so it acknowledges nothing. */
        unknown = 1;
        c->broken[s].code = NL_EFAILED;
        snprintf(c->broken[s].msg, sizeof c->broken[s].msg,
                 "the directory sync after installing a copy failed; it reopens once the directory syncs");
        nl_fail(rc, "cannot sync %s after moving shard %u's copy into place", c->dir, s);
    } else {
        if ((rc = nl_shard_open(sdir, &c->db->opt, &sh)) == 0) {
            nl_shard_config got, want;
            nl_shard_get_config(sh, &got);
            db_shard_config(&c->cfg, &want);
            if (got.dim != want.dim || got.metric != want.metric || got.dtype != want.dtype || got.R != want.R ||
                got.pq_m != want.pq_m || got.code != want.code)
                rc = nl_fail(NL_ECORRUPT, "the copy installed as shard %u is of another configuration", s);
        }
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", nl_errdetail());
            nl_shard_close(sh);
            sh = NULL;
            rename(sdir, dir);
            rename(trash, sdir);
            nl_fail(rc, "%s", msg);
        }
    }
    if (!sh && !unknown) {
        struct stat st;
        /* a rename back above can fail too: the old copy is under its trash name then */
        if (stat(sdir, &st) != 0 && stat(trash, &st) == 0 && rename(trash, sdir) == 0)
            nl_fsync_dir(c->dir);
        char msg[512];
        snprintf(msg, sizeof msg, "%s", nl_errdetail());
        int orc = nl_shard_open(sdir, &c->db->opt, &sh); /* the old copy again */
        if (orc) {
            /* out until the recovery thread's reopen succeeds (db_recover.c), never left
             * NULL unnoticed */
            sh = NULL;
            c->broken[s].code = orc;
            snprintf(c->broken[s].msg, sizeof c->broken[s].msg, "reopen after a failed install: %s", nl_errdetail());
        }
        nl_fail(rc, "%s", msg);
    } else if (!rc) {
        nl_remove_tree(trash);
    }
    __atomic_store_n(&c->shards[s], sh, __ATOMIC_RELEASE);
    pthread_rwlock_unlock(&c->swap);
    return rc;
}
