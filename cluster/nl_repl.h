/*
 * nl_repl.h — the rules of replication as pure functions: no I/O, no clocks, no threads.
 * cluster/replication.c applies them to real logs, peers and ZooKeeper; tests/test_repl.c
 * drives them through thousands of seeded fault schedules against a model of the nodes.
 * The protocol and its argument: docs/cluster.md, "Replication".
 *
 * Terms: a shard's in-sync set S is in its map (the primary always in it); quorum is
 * NL_QUORUM_ALL or NL_QUORUM_MAJORITY (nl_shardmap.h); a replica's position is its last
 * applied (sequence, epoch).
 */
#ifndef NL_REPL_H
#define NL_REPL_H

#include <stddef.h>
#include <stdint.h>

#include "nearline_replica.h"
#include "nl_shardmap.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Members of S (the primary included) that must hold a write before it is acknowledged:
 * |S| for all, |S|/2 + 1 for majority. */
uint32_t nl_repl_write_quorum(uint32_t nin_sync, int quorum);

/* Members of S other than the lost primary that a failover must fence and hear from
 * before it may promote one: enough that every write quorum meets them (1 for all;
 * |S| - quorum + 1 for majority). When the rest of S is fewer, the shard waits for its
 * primary: no failover can then be sure to keep every acknowledged write. */
uint32_t nl_repl_failover_quorum(uint32_t nin_sync, int quorum);

/* The highest sequence a write quorum of S holds, given the primary's last sequence and
 * the acknowledged sequence of each other member of S (nacked = |S| - 1). */
uint64_t nl_repl_committed(uint64_t primary_last, const uint64_t *acked, size_t nacked, int quorum);

/* committed, lowered to what every member joining S holds (joining[0..n): their
 * acknowledged sequences). A follower counts from the moment the primary decides to add it
 * until its map write has landed and the primary's view has it: writes acknowledged
 * meanwhile must be on it too, or S would gain a member lacking an acknowledged write (and
 * a failover under quorum all, which trusts any member of S, could lose it). */
uint64_t nl_repl_committed_joining(uint64_t committed, const uint64_t *joining, size_t n);

/* 1 when a member of S may leave it (the primary's versioned write drops a follower that
 * stopped acknowledging): every write acknowledged so far (up to `acknowledged`) must
 * still be on a write quorum of what remains, given the primary's last sequence and the
 * acknowledged sequences of the other members that stay (nrest = |S| - 2). With all that
 * always holds; with majority a member holding writes the rest lack must stay until they
 * have them. */
int nl_repl_may_leave(uint64_t primary_last, const uint64_t *acked_rest, size_t nrest, int quorum,
                      uint64_t acknowledged);

typedef struct {
    const char *node;
    uint64_t last_seq, last_epoch;
} nl_repl_candidate;

/* The candidate to promote among those that answered the fence: the one furthest along
 * (every candidate's log is a prefix of the lost primary's, so that one holds what any
 * of them holds); ties to the first listed. -1 when fewer than needed answered. */
int nl_repl_choose(const nl_repl_candidate *c, size_t n, uint32_t needed);

typedef enum { NL_CATCHUP_NONE = 0, NL_CATCHUP_STREAM = 1, NL_CATCHUP_SNAPSHOT = 2 } nl_catchup;

/* How a primary brings a follower at (f_last, f_epoch) up to date. p_has: the primary's
 * log still holds entry f_last (or f_last is 0, or its own last), with epoch p_epoch_at.
 * The follower streams from f_last + 1 only when that entry is the same on both (same
 * sequence and epoch: then, entries being accepted only in order from one primary per
 * epoch, the whole prefix is the same); otherwise (it holds entries the primary lacks, or
 * the primary can no longer tell) it needs a snapshot. */
nl_catchup nl_repl_catchup(uint64_t f_last, uint64_t f_epoch, int p_has, uint64_t p_epoch_at, uint64_t p_last);

/* Shard s gets primary (one of its replicas) at epoch + 1, in-sync set in[0..n) (which
 * must hold primary; others not replicas are refused), replicas reordered primary first.
 * 0 or NL_EINVAL. */
int nl_shard_map_promote(nl_shard_map *m, uint32_t s, const char *primary, const char *const *in, size_t n);

/* 1 when a replica fenced at `fence`, whose map says its shard is at `map_epoch`, takes
 * entries (or a fence) from a primary of `epoch`: never from an older one (the fence
 * check; repl_follower.c applies it, the model checker drives it). */
int nl_repl_accepts(uint64_t epoch, uint64_t fence, uint64_t map_epoch);

/* ---------------------------------------------------------------- a primary, as a state machine
 * (repl_primary.c, in the style of etcd's raft package): the role of a shard's primary
 * and its links to the followers, with no I/O, clock or lock inside. Events go in (a
 * write made durable, a follower's answer, a tick of a link's upkeep, a read of the map,
 * the outcome of a write of the map); actions come out (send a snapshot, write the
 * in-sync set, settle an add whose answer was lost, deposed) and queries say what to do
 * next (what a link streams, what writers may be told, what the log must keep).
 * cluster/replication.c drives it with threads, HTTP and ZooKeeper under the role's lock;
 * tests/test_repl.c drives the same code through thousands of seeded fault schedules. */

typedef struct {
    char peer[NL_NODE_ID_MAX]; /* empty: a free slot */
    int known;                 /* the follower's position is known */
    int adding;                /* being added to S: every write waits for it too, until the
                                * map says whether the add landed (the joining rule) */
    uint64_t acked;            /* its last applied sequence, when known */
    uint64_t progress_ms;      /* when it last applied something new, or was caught up */
    int failing;               /* its last exchange failed */
} nl_repl_follower;

/* Rules a test may turn off to show that each is needed (all on: NL_REPL_RULES_ALL). */
#define NL_REPL_RULE_JOINING 1u    /* writes wait for a follower being added */
#define NL_REPL_RULE_MAY_LEAVE 2u  /* a member holding writes the rest lack stays in S */
#define NL_REPL_RULES_ALL 3u

typedef struct {
    char self[NL_NODE_ID_MAX];
    uint64_t epoch;
    int quorum;                /* NL_QUORUM_* */
    nl_shard_entry view;       /* the shard's map entry as this primary knows it */
    int32_t version;           /* the map version it is from */
    uint64_t last;             /* the log's last durable sequence */
    uint64_t high;             /* acknowledged up to (its last, when it took over) */
    int deposed;               /* final: a later epoch exists */
    unsigned rules;            /* NL_REPL_RULE_* */
    int nf;                    /* slots in use: f[0..nf) (some may be free) */
    nl_repl_follower f[NL_MAX_REPLICAS];
} nl_repl_primary;

typedef enum {
    NL_REPL_DURABLE = 1, /* seq: an entry is durable in the primary's log */
    NL_REPL_POSITION,    /* follower i answered the request for its position (status,
                          * f_last, f_epoch; p_has, p_epoch_at: the primary's log at f_last;
                          * p_last: the log's last entry when the request was made) */
    NL_REPL_ACK,         /* follower i answered entries (status, answer, f_last) */
    NL_REPL_UNKNOWN,     /* follower i's position must be asked again (the log was
                          * trimmed past it, or what it follows can no longer be named) */
    NL_REPL_TICK,        /* the upkeep of follower i after an exchange (failed: it failed;
                          * retiring: its link is ending) */
    NL_REPL_MAP,         /* a read of the map: entry, version (the primary's own shard);
                          * settled: the read an add whose answer was lost waited for */
    NL_REPL_WRITTEN,     /* the outcome of the in-sync write for follower i (in): result */
    NL_REPL_ANSWERED,    /* seq: a writer was told its write is acknowledged (high rises) */
    NL_REPL_DEPOSE,      /* a later epoch was met elsewhere (a write refused by the fence): why */
    NL_REPL_STOP         /* the role ends (the map moved on, the node leaves): no more acknowledgements */
} nl_repl_event_kind;

enum { NL_REPL_ANSWER_OK = 1, NL_REPL_ANSWER_MISMATCH, NL_REPL_ANSWER_OTHER };
/* Outcomes of an in-sync write: landed (entry, version: the map written), refused with
 * nothing written (may not leave, a version race lost, no session), deposed (the map has
 * a later epoch), or lost (its answer never came: it may or may not have landed). */
enum { NL_REPL_WRITE_LANDED = 1, NL_REPL_WRITE_REFUSED, NL_REPL_WRITE_DEPOSED, NL_REPL_WRITE_LOST };

typedef struct {
    nl_repl_event_kind kind;
    int i;                     /* the follower's slot */
    uint64_t now_ms;
    uint64_t seq;              /* DURABLE, ANSWERED */
    int status, answer;        /* POSITION, ACK: HTTP status; NL_REPL_ANSWER_* */
    uint64_t f_last, f_epoch;  /* POSITION, ACK */
    int p_has;                 /* POSITION */
    uint64_t p_epoch_at, p_last;
    uint64_t timeout_ms;       /* TICK: the replica timeout */
    int failed, retiring;      /* TICK */
    int in, result;            /* WRITTEN */
    const nl_shard_entry *entry; /* MAP, WRITTEN (landed) */
    int32_t version;
    int settled;               /* MAP */
    const char *why;           /* DEPOSE (kept until the step's actions are carried out) */
} nl_repl_event;

#define NL_REPL_ACT_SNAPSHOT 1u  /* send follower i a copy of the shard */
#define NL_REPL_ACT_IN_SYNC 2u   /* write the map: follower i into S (in) or out of it */
#define NL_REPL_ACT_SETTLE 4u    /* read the map until it says whether i's add landed, then MAP settled */
#define NL_REPL_ACT_DEPOSED 8u   /* this primary is deposed (why) */
#define NL_REPL_ACT_WAKE 16u     /* waiting writers and links should look again */

typedef struct {
    unsigned act;
    int in;                    /* NL_REPL_ACT_IN_SYNC */
    const char *why;           /* NL_REPL_ACT_DEPOSED: static text, or the event's why */
} nl_repl_actions;

/* A primary of epoch for entry (at version), its log ending at last; followers get slots
 * in the order of the entry's replicas (self excluded), progress from now. */
void nl_repl_primary_init(nl_repl_primary *p, const char *self, uint64_t epoch, int quorum,
                          const nl_shard_entry *entry, int32_t version, uint64_t last, uint64_t now_ms);
/* The slot of a new follower peer (a free one, or one more): -1 when none is left. */
int nl_repl_primary_add(nl_repl_primary *p, const char *peer, uint64_t now_ms);
/* Slot i (< NL_MAX_REPLICAS) becomes a new follower peer, known of nothing yet. */
void nl_repl_primary_set(nl_repl_primary *p, int i, const char *peer, uint64_t now_ms);
/* Frees slot i (its link ended). */
void nl_repl_primary_drop(nl_repl_primary *p, int i);
/* One event in; the actions it calls for out. */
void nl_repl_step(nl_repl_primary *p, const nl_repl_event *ev, nl_repl_actions *out);

/* What a write quorum of S holds, lowered by the joining rule: writers at or below it may
 * be acknowledged (then ANSWERED). */
uint64_t nl_repl_primary_committed(const nl_repl_primary *p);
/* 1 when follower i has entries to be sent: *from is the first. */
int nl_repl_primary_next(const nl_repl_primary *p, int i, uint64_t *from);
/* The acknowledged sequences of the members of entry's S other than self and skip
 * (may be NULL): out[0..return). */
size_t nl_repl_primary_acked(const nl_repl_primary *p, const nl_shard_entry *e, const char *skip, uint64_t *out);
/* 1 when node may leave S as entry has it (nl_repl_may_leave over what the rest hold). */
int nl_repl_primary_may_leave(const nl_repl_primary *p, const nl_shard_entry *e, const char *node);
/* The lowest sequence an in-sync follower still needs: the log keeps it (UINT64_MAX: none). */
uint64_t nl_repl_primary_keep(const nl_repl_primary *p);

/* ---------------------------------------------------------------- the replicate request
 * (repl_wire.c): entries of a shard's log after (prev, prev_epoch), sent by the primary
 * of an epoch for the collection whose uid it names. */

#define NL_REPL_UID_MAX 20

typedef struct {
    uint64_t epoch, prev, prev_epoch;
    uint32_t count;               /* entries the sender says follow (at most 1,000,000) */
    char uid[NL_REPL_UID_MAX];    /* NUL-terminated */
    const unsigned char *body;    /* the bytes decoded (borrowed) */
    size_t len, at;               /* their length; where the next entry starts */
} nl_repl_msg;

/* The request for entries e[0..n): *out malloc'd (the caller frees), *len its bytes.
 * -EINVAL for a uid of 0 or NL_REPL_UID_MAX+ bytes, -ENOMEM. */
int nl_repl_msg_encode(uint64_t epoch, uint64_t prev, uint64_t prev_epoch, const char *uid, const nl_log_entry *e,
                       size_t n, void **out, size_t *len);
/* The header of body (untrusted): 0, or -EINVAL when it is not a replicate request. m
 * borrows body. */
int nl_repl_msg_decode(const void *body, size_t len, nl_repl_msg *m);
/* The next entry: 1 with *seq, *data (into the body) and *len; 0 at the end of the body;
 * -EINVAL when the body ends inside an entry. */
int nl_repl_msg_next(nl_repl_msg *m, uint64_t *seq, const void **data, uint32_t *len);

#ifdef __cplusplus
}
#endif
#endif
