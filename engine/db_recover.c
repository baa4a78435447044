/*
 * db_recover.c — reopening shards after a durable step failed with an unknown outcome.
 *
 * The rule (docs/decisions.md, "Unknown outcomes"): after a failed sync nobody knows
 * whether the bytes reached the disk, so the process that saw it must not guess. The
 * store stops taking writes at once (nl_store.h), nothing deletes a file either outcome
 * could need (shard_maint.c), and the shard is closed and opened again: the open replays
 * RocksDB's WAL and lists the segments the manifest names, so the state it serves is the
 * one a restart of the whole process would find. Until then reads go on against the old
 * in-memory view, which holds nothing that was not acknowledged or is not on disk.
 *
 * A reopen takes the collection's swap lock exclusively (as a shard install does), so no
 * call runs against a shard while it is closed. If the open fails (the disk is still full,
 * a segment the manifest lists is missing) the shard is left out: c->shards[s] is NULL and
 * c->broken[s] says why; its calls fail with NL_EDOWN and the next round tries again.
 * Nothing here deletes anything: recovery at open removes only orphans, and only after
 * every listed segment has opened.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "db_internal.h"
#include "nl_catalog.h"
#include "nl_util.h"

#define REOPEN_MIN_FREE (16ull << 20)

/* Reopens shard s of c if it failed. 1 when it was reopened, 0 when there was nothing to
 * do, or the reopen's error. */
static int reopen_shard(nl_collection *c, uint32_t s)
{
    /* The common case, nothing failed, under the shared lock: the exclusive one would stall
     * every call on the collection once a second. */
    pthread_rwlock_rdlock(&c->swap);
    nl_shard *cur = shard_at(c, s);
    int failed = cur ? nl_shard_failed(cur, NULL, 0) != 0 : c->broken[s].code != 0;
    pthread_rwlock_unlock(&c->swap);
    if (!failed)
        return 0;
    pthread_rwlock_wrlock(&c->swap);
    nl_shard *old = shard_at(c, s);
    int rc = 0;
    if ((old && !nl_shard_failed(old, NULL, 0)) || (!old && !c->broken[s].code)) {
        pthread_rwlock_unlock(&c->swap);
        return 0;
    }
    pthread_mutex_lock(&c->db->mu);
    int dropped = c->dropped;
    pthread_mutex_unlock(&c->db->mu);
    if (dropped) { /* its files go with its last reference */
        pthread_rwlock_unlock(&c->swap);
        return 0;
    }
    char sdir[4400];
    snprintf(sdir, sizeof sdir, "%s/%u", c->dir, s);
    /* An open writes (RocksDB's LOG header and a new WAL, an SST of the replayed one): on a
     * full disk it would only fail again, and a failed append inside RocksDB's open is one
     * its asserts do not survive. Wait for room. */
    struct statvfs v;
    uint64_t need = c->db->opt.disk_low_free > REOPEN_MIN_FREE ? c->db->opt.disk_low_free : REOPEN_MIN_FREE;
    if (statvfs(c->dir, &v) == 0 && (uint64_t)v.f_bavail * v.f_frsize < need) {
        char have[32], want[32];
        if (!old) { /* already out: say why it stays out */
            c->broken[s].code = NL_ENOSPACE;
            snprintf(c->broken[s].msg, sizeof c->broken[s].msg, "waiting for free disk space to reopen (%s free, %s needed)",
                     nl_fmt_bytes((uint64_t)v.f_bavail * v.f_frsize, have, sizeof have), nl_fmt_bytes(need, want, sizeof want));
        }
        pthread_rwlock_unlock(&c->swap);
        return nl_fail(NL_ENOSPACE, "shard %u of '%s' waits for free disk space to reopen", s, c->name);
    }
    if (old) {
        pthread_mutex_lock(&c->db->mu);
        __atomic_store_n(&c->shards[s], NULL, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&c->db->mu);
        nl_shard_close(old);
    }
    nl_shard *sh = NULL;
    /* the directory's names first: an install whose directory sync failed left the shard
     * out until they are known to be on disk */
    rc = nl_fsync_dir(c->dir);
    if (!rc)
        rc = nl_shard_open(sdir, &c->db->opt, &sh);
    if (!rc) {
        nl_shard_config sc;
        nl_shard_get_config(sh, &sc);
        if (sc.dim != c->cfg.dim || sc.metric != c->cfg.metric || sc.dtype != c->cfg.dtype)
            rc = nl_fail(NL_ECORRUPT, "shard %u of '%s' disagrees with collection.json", s, c->name);
    }
    if (rc) {
        nl_shard_close(sh);
        c->broken[s].code = rc;
        snprintf(c->broken[s].msg, sizeof c->broken[s].msg, "%s", nl_errdetail()[0] ? nl_errdetail() : nl_strerror(rc));
    } else {
        c->broken[s].code = 0;
        c->broken[s].msg[0] = '\0';
        pthread_mutex_lock(&c->db->mu);
        __atomic_store_n(&c->shards[s], sh, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&c->db->mu);
        atomic_fetch_add(&c->db->reopens, 1);
        atomic_fetch_add(&c->reopens, 1);
        char trash[4400];
        snprintf(trash, sizeof trash, "%s/.trash-shard-%u", c->dir, s);
        nl_remove_tree(trash); /* an install's set-aside copy, of no use once its names synced */
    }
    pthread_rwlock_unlock(&c->swap);
    return rc ? rc : 1;
}

/* The open collections, each with a reference so none closes under us (*list malloc'd;
 * close each, then free it). -ENOMEM or 0. */
static int open_list(nl_db *db, nl_collection ***list, size_t *m)
{
    pthread_mutex_lock(&db->mu);
    size_t n = 0;
    for (nl_collection *c = db->open; c; c = c->next)
        n++;
    *list = n ? malloc(sizeof **list * n) : NULL;
    *m = 0;
    for (nl_collection *c = db->open; c && *list; c = c->next)
        if (!c->dropped) {
            c->refs++;
            (*list)[(*m)++] = c;
        }
    pthread_mutex_unlock(&db->mu);
    return n && !*list ? -ENOMEM : 0;
}

uint64_t nl_db_shard_reopens(nl_db *db) { return atomic_load(&db->reopens); }

uint32_t nl_db_failed_shards(nl_db *db, char *why, size_t len)
{
    nl_collection **list;
    size_t m;
    if (why && len)
        why[0] = '\0';
    if (open_list(db, &list, &m) != 0)
        return 0;
    uint32_t bad = 0;
    for (size_t i = 0; i < m; i++) {
        nl_collection *c = list[i];
        pthread_rwlock_rdlock(&c->swap);
        for (uint32_t s = 0; s < c->cfg.shards; s++) {
            nl_shard *sh = shard_at(c, s);
            char msg[300] = "";
            int failed = sh ? nl_shard_failed(sh, msg, sizeof msg) != 0 : c->broken[s].code != 0;
            if (!failed)
                continue;
            if (!sh)
                snprintf(msg, sizeof msg, "reopen failed: %s", c->broken[s].msg);
            if (bad++ == 0 && why && len)
                snprintf(why, len, "shard %u of '%s': %s", s, c->name, msg);
        }
        pthread_rwlock_unlock(&c->swap);
        nl_collection_close(c);
    }
    free(list);
    return bad;
}

int nl_db_recover(nl_db *db, uint32_t *reopened, uint32_t *still_failed)
{
    uint32_t ok = 0, bad = 0;
    nl_collection **list;
    size_t m;
    if (open_list(db, &list, &m) != 0)
        return -ENOMEM;
    int first = 0;
    for (size_t i = 0; i < m; i++) {
        for (uint32_t s = 0; s < list[i]->cfg.shards; s++) {
            int rc = reopen_shard(list[i], s);
            if (rc == 1) {
                ok++;
            } else if (rc) {
                bad++;
                if (!first)
                    first = rc;
            }
        }
        nl_collection_close(list[i]);
    }
    free(list);
    if (reopened)
        *reopened = ok;
    if (still_failed)
        *still_failed = bad;
    return first;
}

static void *recovery_main(void *arg)
{
    nl_db *db = arg;
    pthread_setname_np(pthread_self(), "nl-recover");
    uint32_t every = db->opt.recover_interval_ms ? db->opt.recover_interval_ms : 1000;
    pthread_mutex_lock(&db->rmu);
    while (!db->recovery_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)every * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&db->rcv, &db->rmu, &ts);
        if (db->recovery_stop)
            break;
        pthread_mutex_unlock(&db->rmu);
        nl_db_recover(db, NULL, NULL); /* what failed stays counted and is tried again */
        pthread_mutex_lock(&db->rmu);
    }
    pthread_mutex_unlock(&db->rmu);
    return NULL;
}

int db_recovery_start(nl_db *db)
{
    int rc = pthread_create(&db->recovery, NULL, recovery_main, db);
    if (rc)
        return nl_fail(-rc, "cannot start the recovery thread: %s", strerror(rc));
    db->recovery_running = 1;
    return 0;
}

void db_recovery_stop(nl_db *db)
{
    if (!db->recovery_running)
        return;
    pthread_mutex_lock(&db->rmu);
    db->recovery_stop = 1;
    pthread_cond_broadcast(&db->rcv);
    pthread_mutex_unlock(&db->rmu);
    pthread_join(db->recovery, NULL);
    db->recovery_running = 0;
}
