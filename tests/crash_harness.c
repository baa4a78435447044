/*
 * crash_harness.c — kills a writer with SIGKILL at random moments and checks what
 * survives (issue 4's crash test).
 *
 * Each round forks a child that opens the database (recovering whatever the previous
 * child left) and loops forever over random operations on ids 0..NIDS-1: upsert a
 * batch (new ids and replacements), delete a batch, flush, full compaction; the
 * maintenance thread flushes and compacts on its own too, with a tiny fresh capacity so
 * both happen all the time. Before an operation the child appends an INTENT record to a
 * log, after it an ACK. The parent sleeps a random while, kills the child, then opens
 * the database itself and checks against a model built from the log:
 *   - every acknowledged upsert is there with its exact vector, every acknowledged
 *     delete is gone (get); the one operation in flight is all-or-nothing;
 *   - searches find live points, never return a deleted one, and answer min(k, live)
 *     results every time;
 *   - the live count matches and nearline's verify passes.
 * With --powercut CTL the kill is followed by a simulated power cut: "cut" written to CTL,
 * the control file of tests/powercut/nlpowerfs (a FUSE file system that then drops every
 * write not made durable by an fsync), so what is checked is what a machine that lost
 * power would find. --log PATH puts the log of intents and acknowledgements outside it.
 * Usage: crash_harness DIR [--rounds N] [--seed S] [--log PATH] [--powercut CTL]. Exit 0
 * when every round passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nearline.h"
#include "nl_catalog.h"
#include "nl_util.h"

#define D 16
#define NIDS 3000u
#define MAGIC 0x4e4c4352u

enum { INTENT = 1, ACK = 2 };
enum { OP_UPSERT = 1, OP_DELETE, OP_FLUSH, OP_COMPACT };

typedef struct {
    uint32_t magic, kind, op, pad;
    uint64_t first, count, version;
} rec;

static void vec_for(uint64_t id, uint64_t version, float *v)
{
    nl_rng r;
    nl_rng_seed(&r, id * 1000003ull + version * 7919ull + 1);
    for (int j = 0; j < D; j++) v[j] = (float)nl_rng_normal(&r);
}

static void log_rec(int fd, uint32_t kind, uint32_t op, uint64_t first, uint64_t count, uint64_t version)
{
    rec r = {MAGIC, kind, op, 0, first, count, version};
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r)
        _exit(20);
}

static nl_db_options child_options(void)
{
    nl_db_options o;
    memset(&o, 0, sizeof o);
    o.flush_points = 150;
    o.flush_age_ms = 200;
    o.compact_max_segments = 3;
    o.write_timeout_ms = 60000;
    o.threads = 2;
    return o;
}

/* ---------------------------------------------------------------- the child */

static void child_main(const char *dir, const char *logpath, uint64_t seed, uint64_t version)
{
    nl_db_options o = child_options();
    nl_db *db;
    if (nl_db_open(dir, &o, &db) != 0)
        _exit(11);
    nl_collection_config cc = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .R = 16, .L = 32,
                               .pq_bytes = 8, .fresh_capacity = 400};
    int rc = nl_collection_create(db, "c", &cc);
    if (rc && rc != NL_EEXISTS)
        _exit(12);
    nl_collection *c;
    if (nl_collection_open(db, "c", &c) != 0) {
        fprintf(stderr, "child: open: %s\n", nl_errdetail());
        _exit(13);
    }
    int fd = open(logpath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        _exit(14);
    nl_rng r;
    nl_rng_seed(&r, seed);
    nl_point pts[64];
    nl_id ids[64];
    float vecs[64 * D];
    for (;;) {
        uint64_t roll = nl_rng_below(&r, 100);
        uint64_t first = nl_rng_below(&r, NIDS), n = 1 + nl_rng_below(&r, 48);
        if (first + n > NIDS)
            n = NIDS - first;
        version++;
        if (roll < 62) {
            for (uint64_t i = 0; i < n; i++) {
                vec_for(first + i, version, vecs + i * D);
                pts[i] = (nl_point){.id = {.num = first + i}, .vector = vecs + i * D, .dim = D};
            }
            log_rec(fd, INTENT, OP_UPSERT, first, n, version);
            if ((rc = nl_collection_upsert(c, pts, n)) != 0) {
                fprintf(stderr, "child: upsert: %s\n", nl_errdetail());
                _exit(15);
            }
            log_rec(fd, ACK, OP_UPSERT, first, n, version);
        } else if (roll < 90) {
            for (uint64_t i = 0; i < n; i++) ids[i] = (nl_id){.num = first + i};
            log_rec(fd, INTENT, OP_DELETE, first, n, version);
            if (nl_collection_delete(c, ids, n, NULL) != 0) {
                fprintf(stderr, "child: delete: %s\n", nl_errdetail());
                _exit(16);
            }
            log_rec(fd, ACK, OP_DELETE, first, n, version);
        } else if (roll < 97) {
            log_rec(fd, INTENT, OP_FLUSH, 0, 0, version);
            if (nl_collection_flush(c) != 0) {
                fprintf(stderr, "child: flush: %s\n", nl_errdetail());
                _exit(17);
            }
            log_rec(fd, ACK, OP_FLUSH, 0, 0, version);
        } else {
            log_rec(fd, INTENT, OP_COMPACT, 0, 0, version);
            if (nl_collection_compact(c, NL_COMPACT_FULL, 0, NULL) != 0) {
                fprintf(stderr, "child: compact: %s\n", nl_errdetail());
                _exit(18);
            }
            log_rec(fd, ACK, OP_COMPACT, 0, 0, version);
        }
    }
}

/* ---------------------------------------------------------------- the parent */

static uint64_t state[NIDS]; /* 0 = absent, else the version of the live vector */

typedef struct {
    int pending;  /* an operation in flight when the child died */
    rec intent;
    long stats[5]; /* ops acknowledged per kind */
    int in_flight_kind[5];
} model;

static void apply(const rec *r)
{
    for (uint64_t i = 0; i < r->count; i++)
        state[r->first + i] = r->op == OP_UPSERT ? r->version : 0;
}

/* Reads the log from *off, applying acknowledged operations. */
static int read_log(const char *path, off_t *off, model *m, uint64_t *max_version)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    struct stat st;
    fstat(fd, &st);
    rec r;
    m->pending = 0;
    off_t pos = *off;
    while (pos + (off_t)sizeof r <= st.st_size && pread(fd, &r, sizeof r, pos) == (ssize_t)sizeof r) {
        if (r.magic != MAGIC || r.op < OP_UPSERT || r.op > OP_COMPACT || r.first + r.count > NIDS) {
            close(fd);
            fprintf(stderr, "crash_harness: log record at %lld is malformed\n", (long long)pos);
            return -EINVAL;
        }
        pos += sizeof r;
        if (r.version > *max_version)
            *max_version = r.version;
        if (r.kind == INTENT) {
            m->pending = 1;
            m->intent = r;
        } else {
            apply(&r);
            m->stats[r.op]++;
            m->pending = 0;
        }
    }
    close(fd);
    /* A torn record (killed mid-write) is cut off so the next child appends cleanly. */
    if (pos != st.st_size && truncate(path, pos) != 0)
        return -errno;
    *off = pos;
    if (m->pending)
        m->in_flight_kind[m->intent.op]++;
    return 0;
}

static int fail(int round, const char *what)
{
    fprintf(stderr, "crash_harness: round %d: %s\n", round, what);
    return 1;
}

static int check(const char *dir, int round, model *m, nl_rng *r)
{
    nl_db_options o;
    memset(&o, 0, sizeof o);
    o.no_background = 1;
    nl_db *db;
    nl_collection *c;
    char msg[512];
    if (nl_db_open(dir, &o, &db) != 0)
        return fail(round, nl_errdetail());
    int rc = nl_collection_open(db, "c", &c);
    if (rc == NL_ENOTFOUND) { /* killed before the collection was created */
        for (uint32_t i = 0; i < NIDS; i++)
            if (state[i]) {
                nl_db_close(db);
                return fail(round, "collection missing but writes were acknowledged");
            }
        nl_db_close(db);
        return 0;
    }
    if (rc) {
        snprintf(msg, sizeof msg, "open after the crash: %s", nl_errdetail());
        nl_db_close(db);
        return fail(round, msg);
    }
    int bad = 0;
    /* The operation in flight happened entirely or not at all. */
    int in_flight_applied = -1;
    float v[D], want[D];
    for (uint32_t id = 0; id < NIDS && !bad; id++) {
        nl_id nid = {.num = id};
        int g = nl_collection_get(c, &nid, v, NULL, NULL);
        if (g != 0 && g != NL_ENOTFOUND) {
            snprintf(msg, sizeof msg, "get %u: %s", id, nl_errdetail());
            bad = fail(round, msg);
            break;
        }
        uint64_t got = 0; /* observed version: 0 absent, else matched below */
        int touched = m->pending && m->intent.op <= OP_DELETE && id >= m->intent.first &&
                      id < m->intent.first + m->intent.count;
        uint64_t expect = state[id], alt = touched ? (m->intent.op == OP_UPSERT ? m->intent.version : 0) : expect;
        if (g == 0) {
            uint64_t cands[2] = {expect, alt};
            for (int k = 0; k < 2 && !got; k++) {
                if (!cands[k]) continue;
                vec_for(id, cands[k], want);
                if (memcmp(v, want, sizeof v) == 0) got = cands[k];
            }
            if (!got) {
                snprintf(msg, sizeof msg, "id %u holds a vector of no acknowledged version (expected %llu)", id,
                         (unsigned long long)expect);
                bad = fail(round, msg);
                break;
            }
        }
        if (got != expect && got != alt) {
            snprintf(msg, sizeof msg, "id %u: %s, expected version %llu", id, got ? "present" : "absent",
                     (unsigned long long)expect);
            bad = fail(round, msg);
            break;
        }
        if (touched && expect != alt) {
            int applied = got == alt;
            if (in_flight_applied >= 0 && applied != in_flight_applied) {
                bad = fail(round, "the batch in flight was applied in part");
                break;
            }
            in_flight_applied = applied;
        }
        state[id] = got;
    }
    uint64_t live = 0;
    for (uint32_t id = 0; id < NIDS; id++)
        live += state[id] != 0;
    nl_collection_stats s;
    if (!bad && (nl_collection_stats_get(c, &s) != 0 || s.points != live)) {
        snprintf(msg, sizeof msg, "%llu live points, the model says %llu", (unsigned long long)s.points,
                 (unsigned long long)live);
        bad = fail(round, msg);
    }
    /* Searches: live points are found, deleted ones never come back. */
    int misses = 0, tried = 0;
    nl_search_params sp = {.k = 10, .L = 64};
    nl_hit h[10];
    for (int t = 0; t < 200 && !bad; t++) {
        uint32_t id = (uint32_t)nl_rng_below(r, NIDS);
        vec_for(id, state[id] ? state[id] : 1, v);
        int got = nl_collection_search(c, v, &sp, h, NULL);
        if (got < 0) {
            snprintf(msg, sizeof msg, "search: %s", nl_errdetail());
            bad = fail(round, msg);
            break;
        }
        uint32_t want = live < 10 ? (uint32_t)live : 10;
        if ((uint32_t)got != want) {
            snprintf(msg, sizeof msg, "search answered %d results with %llu live points (k=10)", got,
                     (unsigned long long)live);
            bad = fail(round, msg);
            break;
        }
        int found = 0;
        for (int i = 0; i < got; i++) {
            if (h[i].num >= NIDS || !state[h[i].num]) {
                snprintf(msg, sizeof msg, "search returned id %llu, which is deleted", (unsigned long long)h[i].num);
                bad = fail(round, msg);
                break;
            }
            found |= h[i].num == id;
        }
        if (state[id]) {
            tried++;
            misses += !found;
        }
    }
    if (!bad && tried && misses * 50 > tried) {
        snprintf(msg, sizeof msg, "%d of %d live points not found by searching their own vector", misses, tried);
        bad = fail(round, msg);
    }
    nl_verify_report vr;
    if (!bad && nl_collection_verify(c, &vr) != 0) {
        snprintf(msg, sizeof msg, "verify: %s", nl_errdetail());
        bad = fail(round, msg);
    }
    if (!bad && (round % 10 == 0))
        printf("round %d: %llu live, %llu segments, %llu fresh, %llu tombstones\n", round, (unsigned long long)live,
               (unsigned long long)s.segments, (unsigned long long)s.fresh_points, (unsigned long long)s.tombstones);
    fflush(stdout);
    nl_collection_close(c);
    nl_db_close(db);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: crash_harness DIR [--rounds N] [--seed S]\n");
        return 2;
    }
    const char *dir = argv[1], *powercut = NULL, *logarg = NULL;
    int rounds = 30;
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rounds")) rounds = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--powercut")) powercut = argv[i + 1];
        else if (!strcmp(argv[i], "--log")) logarg = argv[i + 1];
    }
    char logpath[4200];
    snprintf(logpath, sizeof logpath, "%s.log", dir);
    if (logarg)
        snprintf(logpath, sizeof logpath, "%s", logarg);
    unlink(logpath);
    nl_remove_tree(dir); /* a fresh start: the model begins empty */
    printf("crash_harness: %d rounds, seed %llu, db %s\n", rounds, (unsigned long long)seed, dir);
    fflush(stdout);
    nl_rng r;
    nl_rng_seed(&r, seed);
    model m;
    memset(&m, 0, sizeof m);
    off_t off = 0;
    uint64_t version = 0;
    for (int round = 0; round < rounds; round++) {
        pid_t pid = fork();
        if (pid < 0)
            return fail(round, "fork failed");
        if (pid == 0)
            child_main(dir, logpath, seed * 31 + (uint64_t)round, version);
        /* Long enough to get past recovery most of the time, short enough to land in
         * every phase of flushes and compactions. */
        struct timespec t = {0, (long)(20 + nl_rng_below(&r, 400)) * 1000000L};
        nanosleep(&t, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (!WIFSIGNALED(status)) {
            fprintf(stderr, "crash_harness: round %d: the child exited with %d before the kill\n", round,
                    WIFEXITED(status) ? WEXITSTATUS(status) : -1);
            return 1;
        }
        if (powercut) {
            int cfd = open(powercut, O_WRONLY | O_CLOEXEC);
            if (cfd < 0 || write(cfd, "cut", 3) != 3)
                return fail(round, "cannot cut the power (the control file of nlpowerfs)");
            close(cfd);
        }
        if (read_log(logpath, &off, &m, &version) != 0)
            return fail(round, "cannot read the log");
        if (check(dir, round, &m, &r) != 0)
            return 1;
    }
    printf("crash_harness: %d rounds passed; acknowledged: %ld upserts, %ld deletes, %ld flushes, %ld compactions; "
           "killed in flight: %d upserts, %d deletes, %d flushes, %d compactions\n",
           rounds, m.stats[OP_UPSERT], m.stats[OP_DELETE], m.stats[OP_FLUSH], m.stats[OP_COMPACT],
           m.in_flight_kind[OP_UPSERT], m.in_flight_kind[OP_DELETE], m.in_flight_kind[OP_FLUSH],
           m.in_flight_kind[OP_COMPACT]);
    return 0;
}
