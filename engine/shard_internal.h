/* shard_internal.h — the state shard.c (open, writes, reads, search) and shard_maint.c
 * (flush, compaction, verify) share. Invariants:
 *  - slot_pid of a fresh index ascends with the slot (writers reserve under wmu in pid
 *    order), and every segment's id map ascends, so both are searched by bisection;
 *  - a pid lives in at most one of: the active index, the frozen index, the segments,
 *    except while a flush publishes (frozen and its new segment both hold it: searches
 *    merge by pid);
 *  - sh->view changes only under wmu and vmu together; segref.dead under wmu;
 *  - a flush and a compaction may run at once: each installs its result against the
 *    view current at that moment, under wmu. */
#ifndef NL_SHARD_INTERNAL_H
#define NL_SHARD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "nl_segment.h"
#include "nl_shard.h"
#include "nl_quant.h"
#include "nl_store.h"
#include "nl_util.h"

/* The version of a shard's encoded config (sh_config_encode; load refuses others). */
#define CONFIG_VERSION 2u
#include "nl_vamana.h"

#define TOMB_EMPTY UINT64_MAX
#define SH_MAX_W 16u

typedef struct sh_memidx {
    atomic_int refs;
    nl_vamana *ix;
    uint64_t *slot_pid;
    uint32_t cap;
    pthread_rwlock_t ins;  /* inserters hold it shared; a flush takes it to wait for them */
    nl_objpool searchers;
    uint64_t born_ns;      /* when its first point arrived */
} sh_memidx;

typedef struct sh_segref {
    atomic_int refs;
    uint32_t number;
    nl_segment *seg;
    uint64_t count, file_bytes, ram_bytes, cached_nodes, seed_members;
    int block_layout;
    int direct_io;
    atomic_uint_fast64_t dead; /* deleted versions it holds */
    atomic_int obsolete;       /* unlink the file when the last reference goes */
    /* Set by the compaction that replaced it: the tombstones of the versions it purged
     * from this segment (ascending), dropped from the shard's set only when the last view
     * holding this segment lets go, so a search on an older view still knows them dead. */
    struct nl_shard *owner;
    uint64_t *purge;
    size_t npurge;
    nl_objpool searchers;
    char path[4400];
} sh_segref;

typedef struct sh_view {
    atomic_int refs;
    sh_memidx *active, *frozen;
    uint32_t nseg;
    sh_segref *segs[];
} sh_view;

struct nl_shard {
    char dir[4096];
    nl_store *st;
    nl_shard_config cfg;
    nl_db_options opt;
    size_t row_bytes;
    pthread_mutex_t wmu;   /* writers, one at a time */
    pthread_cond_t space;  /* a flush made room in the fresh index */
    pthread_mutex_t vmu;   /* the view pointer */
    sh_view *view;
    pthread_mutex_t fmu;   /* one flush at a time */
    pthread_mutex_t cmu;   /* one compaction at a time (flushes run alongside) */
    pthread_rwlock_t tmu;  /* the tombstone set */
    uint64_t *tomb;        /* open addressing, TOMB_EMPTY = free */
    size_t tomb_cap, tomb_n;
    uint64_t next_pid;
    atomic_uint seg_alloc; /* segment numbers handed out */
    uint32_t next_seg;     /* the manifest's next_seg: above every listed number (wmu) */
    uint64_t live;
    /* maintenance thread */
    pthread_t bg_flush, bg_compact;
    int bg_running, bg_stop, bg_kick;
    pthread_mutex_t bgmu;
    pthread_cond_t bgcv;
    /* counters */
    atomic_uint_fast64_t flushes, compactions, flush_ns, compact_ns, write_waits, upserted, deleted;
    atomic_uint_fast64_t flush_bytes, compact_bytes; /* segment bytes each has written */
    atomic_uint_fast64_t search_retries, search_exhaustive; /* short answers searched again */
    atomic_int bg_error;
    atomic_int space_low;  /* below the low watermark, not yet back above the high one */
    uint64_t orphans_removed;
    /* the codebook flushes reuse (fmu held), and how many points trained it */
    struct nl_quant *flush_pq; /* the codebook flushes reuse (the shard's code kind) */
    uint64_t flush_pq_points;
    struct nl_fcache *fcache; /* leaf bitmaps of recent filters (nl_postings.h) */
    /* the operation log (shard_log.c), under wmu */
    uint64_t log_last, log_last_epoch, log_first, log_entries, log_bytes, log_fence, log_oldest_ms;
};

/* encodings */
void sh_config_encode(const nl_shard_config *c, uint32_t f[10]);
/* Rolls back an interrupted bulk append (shard_import.c); called at open. */
int nl_shard_import_recover(struct nl_store *st, uint64_t *rolled_back);
void sh_pid_key(uint64_t pid, unsigned char out[8]);
uint64_t sh_pid_from_key(const unsigned char k[8]);
void sh_seg_key(uint32_t number, unsigned char out[8]);
int sh_hit_from_ekey(const unsigned char *k, size_t len, nl_hit *h);
int sh_lookup_pid(nl_shard *sh, const unsigned char *ek, size_t ekl, uint64_t *pid, int *found);

/* shared by the write paths (shard.c, shard_delete.c) */
int sh_check_id(const nl_id *id, size_t i);
/* Point i checked whole (id, dimension, finite values that fit the stored type,
 * metadata); converted (row_bytes, may be NULL) gets the vector in the stored type. 0 or
 * NL_EINVAL / NL_EDIM / NL_EBADVALUE naming the point. */
int sh_check_point(const nl_shard *sh, const nl_point *p, size_t i, void *converted);
int sh_add_tombstones_locked(nl_shard *sh, const uint64_t *pids, const unsigned char *valid, size_t n);
/* Adds to b the deletion of version pid's postings, from its stored metadata (if any). */
int sh_drop_stored_postings(nl_shard *sh, nl_store_batch *b, const unsigned char *ek, size_t ekl, uint64_t pid);

/* tombstones */
int sh_tomb_has_locked(const nl_shard *sh, uint64_t pid);
int sh_tomb_has(nl_shard *sh, uint64_t pid);
int sh_tomb_add_locked(nl_shard *sh, uint64_t pid);
int sh_tomb_remove_sorted(nl_shard *sh, const uint64_t *pids, size_t n);

/* parts and views */
int sh_memidx_create(const nl_shard *sh, uint32_t capacity, sh_memidx **out);
void sh_memidx_unref(sh_memidx *m);
long sh_memidx_find(const sh_memidx *m, uint64_t pid);
int sh_segref_open(nl_shard *sh, uint32_t number, uint64_t cache_budget, sh_segref **out);
void sh_segref_unref(sh_segref *r);
sh_view *sh_view_acquire(nl_shard *sh);
void sh_view_release(sh_view *v);
sh_view *sh_view_make(sh_memidx *active, sh_memidx *frozen, sh_segref *const *segs, uint32_t nseg);
void sh_view_install(nl_shard *sh, sh_view *v);
sh_segref *sh_view_find_segment(const sh_view *v, uint64_t pid, uint32_t *ord);

/* Fills slots first.. of ix with consecutive rows of vecs, one task per row (for
 * nl_parallel_for; ctx is an sh_fill). */
typedef struct {
    nl_vamana *ix;
    const unsigned char *vecs;
    size_t row_bytes;
    uint32_t first;
} sh_fill;
int sh_fill_task(void *ctx, size_t i, unsigned thread);

/* The log entry a write carries (shard_log.c). seq 0: the next one (a primary's write;
 * set by staging). entry NULL on a delete: encoded from the ids actually deleted, under
 * wmu (nothing is logged when none is). */
typedef struct {
    uint64_t seq, epoch, time_ms;
    const void *entry;
    size_t len;
    uint64_t by; /* the epoch of the primary that sends it (the fence is checked against it) */
    void (*durable)(void *ctx, uint64_t seq); /* optional: called once it is durable, no lock held */
    void *ctx;
} sh_logrec;
int sh_upsert(nl_shard *sh, const nl_point *pts, size_t n, sh_logrec *lr);
int sh_delete(nl_shard *sh, const nl_id *ids, const uint64_t *expect, size_t n, size_t *deleted, sh_logrec *lr);
/* lr (optional): a template {0, epoch}; each chunk is logged, lr->seq the last one. */
int sh_delete_by_filter(nl_shard *sh, const nl_filter *f, size_t *deleted, sh_logrec *lr);
/* Adds lr's entry and the manifest's log record to b: NL_ESTALE when out of order, when its
 * sender's epoch is below the fence, or when its epoch goes back. */
int sh_log_stage_locked(nl_shard *sh, nl_store_batch *b, sh_logrec *lr);
/* After b is durable. */
void sh_log_commit_locked(nl_shard *sh, const sh_logrec *lr);
int sh_log_encode_delete(uint64_t epoch, const nl_id *ids, size_t n, void **out, size_t *len, uint64_t *time_ms);
/* Reads the log's state at open. */
int sh_log_load(nl_shard *sh);

/* Free space (nl_db_options' watermarks): need 0 asks whether writes are taken (with the
 * low/high hysteresis); need > 0 whether a file of need bytes fits. 0 or NL_ENOSPACE. */
int sh_space_check(nl_shard *sh, uint64_t need);

/* NL_EDOWN (with the detail set) when the shard's store has failed a write, else 0: the
 * refusal of a write that then applies nothing. */
int sh_check_failed(nl_shard *sh);

/* maintenance (shard_maint.c) */
int sh_flush_due(nl_shard *sh);
int sh_compaction_due(nl_shard *sh);
void sh_kick_background(nl_shard *sh);
/* The flush and compaction threads (shard_maint.c): started by create and open unless
 * opt.no_background; stopped (joined) by close. */
int sh_start_background(nl_shard *sh);
void sh_stop_background(nl_shard *sh);

/* The shard's code as a quantizer spec (cfg.code resolved by nl_shard_config_check). */
static inline nl_code_spec sh_code_spec(const nl_shard_config *c)
{
    return NL_COLL_CODE_IS_RABITQ(c->code) ? (nl_code_spec){NL_CODE_RABITQ, NL_COLL_CODE_BITS(c->code)}
                                           : (nl_code_spec){NL_CODE_PQ, c->pq_m};
}

#endif
