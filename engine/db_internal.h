/* db_internal.h — the database and collection handles, shared by db.c (the calls of
 * nearline.h) and db_recover.c (the reopening of failed shards). Invariants:
 *  - c->shards[s] is written under c->swap (held exclusively) and db->mu, read with an
 *    acquire load (shard_at); NULL means not held, or failed and not reopened yet;
 *  - c->broken[s].code is non-zero exactly while shard s failed and its reopen failed too
 *    (or an install's directory sync did), so c->shards[s] is NULL; calls on it answer
 *    NL_EDOWN; written under swap held exclusively;
 *  - db->open lists the open collections; each holds one reference for the list. */
#ifndef NL_DB_INTERNAL_H
#define NL_DB_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "nearline.h"
#include "nl_shard.h"

typedef struct {
    int code;       /* the reopen's error, 0 when the shard is not broken */
    char msg[240];  /* its detail */
} db_broken;

struct nl_collection {
    nl_db *db;
    char name[72];
    char dir[4200];
    int refs;    /* under db->mu */
    int dropped; /* under db->mu */
    nl_collection_config cfg;
    nl_shard **shards; /* cfg.shards entries; NULL = not held (partial collections only) */
    db_broken *broken; /* cfg.shards entries */
    int partial;
    /* Held shared by every call that uses a shard, exclusively by an install (which
     * replaces a shard) and a reopen: writers first, so a stream of searches cannot starve
     * them. */
    pthread_rwlock_t swap;
    atomic_uint_fast64_t reopens; /* failed shards reopened since the collection opened */
    struct nl_collection *next;
};

struct nl_db {
    char dir[4096];
    nl_db_options opt;
    pthread_mutex_t mu;
    nl_collection *open;
    unsigned long trash_seq;
    /* the recovery thread (db_recover.c) */
    pthread_t recovery;
    int recovery_running, recovery_stop;
    pthread_mutex_t rmu;
    pthread_cond_t rcv;
    atomic_uint_fast64_t reopens;
};

static inline nl_shard *shard_at(const nl_collection *c, uint32_t s)
{
    return __atomic_load_n(&c->shards[s], __ATOMIC_ACQUIRE);
}

/* The shard config of a collection config (db.c). */
void db_shard_config(const nl_collection_config *c, nl_shard_config *s);
/* Shard s of a live collection, for a per-shard call (db.c): 0, NL_ENOTFOUND, NL_EDOWN (a
 * failed shard), or the collection's error. */
int db_live_shard(const nl_collection *c, uint32_t s, nl_shard **sh);

/* Starts and stops the thread that reopens failed shards (db_recover.c). */
int db_recovery_start(nl_db *db);
void db_recovery_stop(nl_db *db);

#endif
