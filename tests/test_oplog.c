/* The operation log of a shard (nearline.h, "the operation log"): what replication relies
 * on. A follower that applies a primary's entries in order holds exactly the primary's
 * points; entries out of order, of an older epoch or below the fence are refused with
 * nothing applied; hostile bytes are refused, never applied and never crash; trimming
 * keeps what it must; the state survives a reopen; and a checkpoint installed on another
 * node is the same shard, from which the log carries on. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "nearline_replica.h"
#include "nl_filter.h"
#include "test_util.h"

static char dir[256];
static void setup(void) { tu_tmpdir(dir, sizeof dir); }
static void teardown(void) { tu_rmtree(dir); }
TestSuite(oplog, .init = setup, .fini = teardown, .timeout = 600);

#define D 8
#define SHARDS 2

static nl_db *open_db(const char *sub)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, sub);
    nl_db_options o = {.no_background = 1, .threads = 2};
    nl_db *db;
    cr_assert_eq(nl_db_open(p, &o, &db), 0, "%s", nl_errdetail());
    return db;
}

/* Collection "c" of SHARDS shards holding shard 0 only (as a cluster node does). */
static nl_collection *make(nl_db *db)
{
    nl_collection_config c = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .shards = SHARDS, .R = 16,
                              .L = 32, .pq_bytes = 4, .fresh_capacity = 20000};
    uint32_t held = 0;
    int rc = nl_collection_create_shards(db, "c", &c, &held, 1);
    cr_assert(rc == 0 || rc == NL_EEXISTS, "%s", nl_errdetail());
    nl_collection *h;
    cr_assert_eq(nl_collection_open(db, "c", &h), 0, "%s", nl_errdetail());
    return h;
}

/* The n-th id of shard 0 from start (ids are spread over shards by hash). */
static uint64_t shard0_id(uint64_t *cursor)
{
    for (;;) {
        nl_id x = {.num = (*cursor)++};
        if (nl_shard_of(&x, SHARDS) == 0)
            return x.num;
    }
}

static void vec_for(uint64_t id, uint32_t version, float *v)
{
    for (int j = 0; j < D; j++) v[j] = (float)((id * 31 + (uint64_t)j * 7 + version * 13) % 101) / 10.0f;
}

/* Upserts ids through the primary's log at epoch; returns the sequence. */
static uint64_t log_upsert(nl_collection *c, uint64_t epoch, const uint64_t *ids, size_t n, uint32_t version)
{
    nl_point p[64];
    float v[64 * D];
    char meta[64][40];
    cr_assert(n <= 64);
    for (size_t i = 0; i < n; i++) {
        vec_for(ids[i], version, v + i * D);
        int len = snprintf(meta[i], sizeof meta[i], "{\"v\":%u,\"odd\":%s}", version, ids[i] % 2 ? "true" : "false");
        p[i] = (nl_point){.id = {.num = ids[i]}, .vector = v + i * D, .dim = D, .metadata = meta[i],
                          .metadata_len = (size_t)len};
    }
    uint64_t seq = 0;
    cr_assert_eq(nl_collection_shard_log_upsert(c, 0, &(nl_log_order){.epoch = epoch}, p, n, &seq), 0, "%s", nl_errdetail());
    return seq;
}

/* Ships every entry of src after what dst holds, in chunks of max_bytes. */
static size_t ship(nl_collection *src, nl_collection *dst, size_t max_bytes)
{
    nl_log_state a, b;
    cr_assert_eq(nl_collection_shard_log_state(src, 0, &a), 0);
    cr_assert_eq(nl_collection_shard_log_state(dst, 0, &b), 0);
    size_t shipped = 0;
    while (b.last_seq < a.last_seq) {
        nl_log_entry *e;
        size_t n;
        cr_assert_eq(nl_collection_shard_log_read(src, 0, b.last_seq + 1, max_bytes, &e, &n), 0, "%s", nl_errdetail());
        cr_assert_gt(n, 0);
        for (size_t i = 0; i < n; i++) {
            cr_assert_eq(e[i].seq, b.last_seq + 1 + i);
            cr_assert_eq(nl_collection_shard_log_apply(dst, 0, e[i].epoch, e[i].seq, e[i].data, e[i].len), 0, "%s", nl_errdetail());
        }
        shipped += n;
        nl_log_entries_free(e, n);
        cr_assert_eq(nl_collection_shard_log_state(dst, 0, &b), 0);
    }
    return shipped;
}

/* Every id below max: present in both with the same vector and metadata, or in neither. */
static size_t assert_same(nl_collection *x, nl_collection *y, uint64_t max)
{
    size_t present = 0;
    for (uint64_t id = 0; id < max; id++) {
        nl_id k = {.num = id};
        if (nl_shard_of(&k, SHARDS) != 0)
            continue;
        float a[D], b[D];
        char *ma = NULL, *mb = NULL;
        size_t la = 0, lb = 0;
        int ra = nl_collection_get(x, &k, a, &ma, &la), rb = nl_collection_get(y, &k, b, &mb, &lb);
        cr_assert_eq(ra, rb, "id %llu: %d vs %d", (unsigned long long)id, ra, rb);
        if (ra == 0) {
            present++;
            cr_assert_eq(memcmp(a, b, sizeof a), 0, "id %llu: vectors differ", (unsigned long long)id);
            cr_assert(ma && mb && la == lb && memcmp(ma, mb, la) == 0, "id %llu: metadata differs", (unsigned long long)id);
        }
        free(ma);
        free(mb);
    }
    return present;
}

Test(oplog, follower_applies_to_the_same_contents)
{
    nl_db *pdb = open_db("p"), *fdb = open_db("f");
    nl_collection *p = make(pdb), *f = make(fdb);
    uint64_t cur = 0, ids[64];
    uint64_t last = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 40; i++) ids[i] = shard0_id(&cur);
        last = log_upsert(p, 1, ids, 40, 1);
        /* replace some, delete some (and one id that does not exist: nothing is logged) */
        uint64_t rep[5] = {ids[0], ids[3], ids[7], ids[7], ids[11]};
        log_upsert(p, 1, rep, 5, 2);
        nl_id del[3] = {{.num = ids[1]}, {.num = ids[2]}, {.num = ids[0]}};
        size_t deleted = 0;
        uint64_t s = 0;
        cr_assert_eq(nl_collection_shard_log_delete(p, 0, &(nl_log_order){.epoch = 1}, del, 3, &deleted, &s), 0, "%s", nl_errdetail());
        cr_assert_eq(deleted, 3);
        cr_assert_gt(s, last);
        last = s;
        nl_id none = {.num = 1000003};
        while (nl_shard_of(&none, SHARDS) != 0) none.num++;
        s = 0;
        cr_assert_eq(nl_collection_shard_log_delete(p, 0, &(nl_log_order){.epoch = 1}, &none, 1, &deleted, &s), 0);
        cr_assert_eq(deleted, 0);
        cr_assert_eq(s, 0, "a delete that removes nothing logs nothing");
        if (round % 5 == 4)
            cr_assert_eq(nl_collection_flush(p), 0); /* a segment in between: the log is not the index */
    }
    /* delete by filter: resolved at the primary to the ids it removes */
    nl_filter *flt;
    const char *fj = "{\"field\":\"odd\",\"eq\":true}";
    cr_assert_eq(nl_filter_parse(fj, strlen(fj), &flt), 0, "%s", nl_errdetail());
    size_t deleted = 0;
    uint64_t s = 0;
    cr_assert_eq(nl_collection_shard_log_delete_by_filter(p, 0, &(nl_log_order){.epoch = 2}, flt, &deleted, &s), 0, "%s", nl_errdetail());
    nl_filter_destroy(flt);
    cr_assert_gt(deleted, 100);
    cr_assert_gt(s, last);
    nl_log_state ps;
    cr_assert_eq(nl_collection_shard_log_state(p, 0, &ps), 0);
    cr_assert_eq(ps.last_seq, s);
    cr_assert_eq(ps.last_epoch, 2);
    cr_assert_eq(ps.first_seq, 1);
    cr_assert_eq(ps.entries, s);
    size_t shipped = ship(p, f, 3000);
    cr_assert_eq(shipped, s);
    nl_collection_flush(f);
    size_t present = assert_same(p, f, cur + 10);
    cr_assert_gt(present, 300);
    nl_log_state fs;
    nl_collection_shard_log_state(f, 0, &fs);
    cr_assert_eq(fs.last_seq, ps.last_seq);
    cr_assert_eq(fs.last_epoch, 2);
    uint64_t e;
    cr_assert_eq(nl_collection_shard_log_epoch_at(f, 0, 1, &e), 0);
    cr_assert_eq(e, 1);
    /* the log survives a reopen, and the contents with it */
    nl_collection_close(f);
    nl_db_close(fdb);
    fdb = open_db("f");
    f = make(fdb);
    nl_log_state again;
    nl_collection_shard_log_state(f, 0, &again);
    cr_assert_eq(memcmp(&again, &fs, sizeof fs), 0);
    assert_same(p, f, cur + 10);
    nl_collection_close(p);
    nl_collection_close(f);
    nl_db_close(pdb);
    nl_db_close(fdb);
}

Test(oplog, refuses_out_of_order_stale_and_fenced)
{
    nl_db *pdb = open_db("p"), *fdb = open_db("f");
    nl_collection *p = make(pdb), *f = make(fdb);
    uint64_t cur = 0, ids[4];
    for (int i = 0; i < 4; i++) ids[i] = shard0_id(&cur);
    log_upsert(p, 3, ids, 2, 1);     /* seq 1, epoch 3 */
    log_upsert(p, 3, ids + 2, 2, 1); /* seq 2 */
    nl_log_entry *e;
    size_t n;
    cr_assert_eq(nl_collection_shard_log_read(p, 0, 1, 1 << 20, &e, &n), 0);
    cr_assert_eq(n, 2);
    /* seq 2 before 1 */
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 3, 2, e[1].data, e[1].len), NL_ESTALE);
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 3, 1, e[0].data, e[0].len), 0, "%s", nl_errdetail());
    /* a repeat of 1 */
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 3, 1, e[0].data, e[0].len), NL_ESTALE);
    /* fenced at 4: entry 2 (epoch 3) is refused, and nothing of it applied */
    nl_log_state st;
    cr_assert_eq(nl_collection_shard_fence(f, 0, 4, &st), 0);
    cr_assert_eq(st.fence, 4);
    cr_assert_eq(st.last_seq, 1);
    cr_assert_eq(nl_collection_shard_fence(f, 0, 3, NULL), NL_ESTALE, "a fence never goes down");
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 3, 2, e[1].data, e[1].len), NL_ESTALE);
    nl_id x = {.num = ids[2]};
    float v[D];
    cr_assert_eq(nl_collection_get(f, &x, v, NULL, NULL), NL_ENOTFOUND);
    /* ... but a newer primary may relay the same older entry */
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 2, 2, e[1].data, e[1].len), NL_ESTALE, "a sender below the fence");
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 5, 2, e[1].data, e[1].len), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_collection_get(f, &x, v, NULL, NULL), 0);
    /* the primary itself refuses to order a write of an older epoch than its last */
    uint64_t seq;
    nl_point pt = {.id = {.num = ids[0]}, .vector = v, .dim = D};
    vec_for(ids[0], 9, v);
    cr_assert_eq(nl_collection_shard_log_upsert(p, 0, &(nl_log_order){.epoch = 2}, &pt, 1, &seq), NL_ESTALE);
    /* the fence survives a reopen */
    nl_collection_close(f);
    nl_db_close(fdb);
    fdb = open_db("f");
    f = make(fdb);
    nl_collection_shard_log_state(f, 0, &st);
    cr_assert_eq(st.fence, 4);
    cr_assert_eq(st.last_seq, 2);
    /* a point of the other shard is refused by the primary */
    uint64_t other = 0;
    for (;; other++) {
        nl_id k = {.num = other};
        if (nl_shard_of(&k, SHARDS) == 1)
            break;
    }
    pt.id.num = other;
    cr_assert_eq(nl_collection_shard_log_upsert(p, 0, &(nl_log_order){.epoch = 3}, &pt, 1, &seq), NL_EINVAL);
    nl_log_entries_free(e, n);
    nl_collection_close(p);
    nl_collection_close(f);
    nl_db_close(pdb);
    nl_db_close(fdb);
}

Test(oplog, hostile_entries_are_refused)
{
    nl_db *pdb = open_db("p"), *fdb = open_db("f");
    nl_collection *p = make(pdb), *f = make(fdb);
    uint64_t cur = 0, ids[8];
    for (int i = 0; i < 8; i++) ids[i] = shard0_id(&cur);
    log_upsert(p, 1, ids, 8, 1);
    nl_log_entry *e;
    size_t n;
    cr_assert_eq(nl_collection_shard_log_read(p, 0, 1, 1 << 20, &e, &n), 0);
    unsigned char *b = malloc(e[0].len);
    nl_rng r;
    nl_rng_seed(&r, 77);
    /* every single-byte change and every truncation is refused */
    for (size_t i = 0; i < e[0].len; i++) {
        memcpy(b, e[0].data, e[0].len);
        b[i] ^= (unsigned char)(1 + nl_rng_below(&r, 255));
        int rc = nl_collection_shard_log_apply(f, 0, 1, 1, b, e[0].len);
        cr_assert(rc == NL_ECORRUPT || rc == NL_EDIM, "byte %zu: %d", i, rc);
    }
    for (size_t len = 0; len < e[0].len; len += 1 + len / 8) {
        int rc = nl_collection_shard_log_apply(f, 0, 1, 1, e[0].data, len);
        cr_assert(rc == NL_ECORRUPT, "length %zu: %d", len, rc);
    }
    /* random bytes */
    for (int t = 0; t < 2000; t++) {
        size_t len = (size_t)nl_rng_below(&r, 200);
        for (size_t i = 0; i < len; i++) b[i % e[0].len] = (unsigned char)nl_rng_next(&r);
        int rc = nl_collection_shard_log_apply(f, 0, 1, 1, b, len < e[0].len ? len : e[0].len);
        cr_assert(rc < 0);
    }
    nl_log_state st;
    nl_collection_shard_log_state(f, 0, &st);
    cr_assert_eq(st.last_seq, 0, "nothing was applied");
    cr_assert_eq(nl_collection_shard_log_apply(f, 0, 3, 1, e[0].data, e[0].len), 0, "%s", nl_errdetail());
    free(b);
    nl_log_entries_free(e, n);
    nl_collection_close(p);
    nl_collection_close(f);
    nl_db_close(pdb);
    nl_db_close(fdb);
}

Test(oplog, trim_keeps_what_it_must)
{
    nl_db *pdb = open_db("p");
    nl_collection *p = make(pdb);
    uint64_t cur = 0, ids[4];
    for (int i = 0; i < 100; i++) {
        for (int j = 0; j < 4; j++) ids[j] = shard0_id(&cur);
        log_upsert(p, 1, ids, 4, 1);
    }
    nl_log_state st;
    nl_collection_shard_log_state(p, 0, &st);
    cr_assert_eq(st.entries, 100);
    uint64_t per = st.bytes / 100, trimmed;
    /* the size bound: down to 30 entries' worth, but never at or above keep_from 50 */
    cr_assert_eq(nl_collection_shard_log_trim(p, 0, 50, per * 30, UINT64_MAX, &trimmed), 0, "%s", nl_errdetail());
    cr_assert_eq(trimmed, 49);
    nl_collection_shard_log_state(p, 0, &st);
    cr_assert_eq(st.first_seq, 50);
    cr_assert_eq(st.entries, 51);
    nl_log_entry *e;
    size_t n;
    cr_assert_eq(nl_collection_shard_log_read(p, 0, 49, 1 << 20, &e, &n), NL_ENOTFOUND);
    cr_assert_eq(nl_collection_shard_log_read(p, 0, 50, 1, &e, &n), 0);
    cr_assert_eq(n, 1, "at least one entry, however small the limit");
    cr_assert_eq(e[0].seq, 50);
    nl_log_entries_free(e, n);
    cr_assert_eq(nl_collection_shard_log_trim(p, 0, UINT64_MAX, per * 30, UINT64_MAX, &trimmed), 0);
    nl_collection_shard_log_state(p, 0, &st);
    cr_assert_leq(st.bytes, per * 30 + per);
    cr_assert_eq(st.last_seq, 100);
    /* the age bound: nothing is older than an hour; everything is older than 0 ms */
    cr_assert_eq(nl_collection_shard_log_trim(p, 0, UINT64_MAX, UINT64_MAX, 3600000, &trimmed), 0);
    cr_assert_eq(trimmed, 0);
    cr_assert_eq(nl_collection_shard_log_trim(p, 0, UINT64_MAX, UINT64_MAX, 0, &trimmed), 0);
    nl_collection_shard_log_state(p, 0, &st);
    cr_assert_eq(st.entries, 0);
    cr_assert_eq(st.first_seq, 101);
    uint64_t ep;
    cr_assert_eq(nl_collection_shard_log_epoch_at(p, 0, 100, &ep), 0, "the last entry's epoch outlives it");
    cr_assert_eq(ep, 1);
    cr_assert_eq(nl_collection_shard_log_read(p, 0, 101, 1 << 20, &e, &n), 0);
    cr_assert_eq(n, 0);
    /* an empty log after a reopen, and the next write is 101 */
    nl_collection_close(p);
    nl_db_close(pdb);
    pdb = open_db("p");
    p = make(pdb);
    nl_collection_shard_log_state(p, 0, &st);
    cr_assert_eq(st.first_seq, 101);
    cr_assert_eq(st.last_seq, 100);
    ids[0] = shard0_id(&cur);
    cr_assert_eq(log_upsert(p, 1, ids, 1, 1), 101);
    nl_collection_close(p);
    nl_db_close(pdb);
}

Test(oplog, checkpoint_installs_and_the_log_carries_on)
{
    nl_db *pdb = open_db("p"), *fdb = open_db("f");
    nl_collection *p = make(pdb), *f = make(fdb);
    uint64_t cur = 0, ids[50];
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 50; i++) ids[i] = shard0_id(&cur);
        log_upsert(p, 1, ids, 50, 1);
        if (round == 4)
            nl_collection_flush(p); /* half in a segment, half fresh */
    }
    nl_id del[2] = {{.num = ids[0]}, {.num = ids[1]}};
    cr_assert_eq(nl_collection_shard_log_delete(p, 0, &(nl_log_order){.epoch = 1}, del, 2, NULL, NULL), 0);
    /* the follower holds something else (a divergent tail): the install replaces it */
    uint64_t mine = 5000000;
    uint64_t junk[3] = {shard0_id(&mine), shard0_id(&mine), shard0_id(&mine)};
    log_upsert(f, 1, junk, 3, 7);
    char cp[512], stage[512];
    snprintf(cp, sizeof cp, "%s/cp", dir);
    nl_log_state at;
    cr_assert_eq(nl_collection_shard_checkpoint(p, 0, cp, &at), 0, "%s", nl_errdetail());
    cr_assert_eq(at.last_seq, 11);
    /* writes after the checkpoint are not in it */
    for (int i = 0; i < 10; i++) ids[i] = shard0_id(&cur);
    log_upsert(p, 1, ids, 10, 3);
    /* shipped elsewhere (a copy of the files, as the transfer does) and installed */
    snprintf(stage, sizeof stage, "%s/f/c/.incoming-0", dir);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp -a '%s' '%s'", cp, stage);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(nl_collection_shard_install(f, 0, stage), 0, "%s", nl_errdetail());
    nl_log_state fs;
    nl_collection_shard_log_state(f, 0, &fs);
    cr_assert_eq(fs.last_seq, 11);
    nl_id j = {.num = junk[0]};
    float v[D];
    cr_assert_eq(nl_collection_get(f, &j, v, NULL, NULL), NL_ENOTFOUND, "the divergent point is gone");
    cr_assert_eq(ship(p, f, 1 << 20), 1);
    cr_assert_gt(assert_same(p, f, cur + 10), 490);
    /* searches on the installed copy work */
    nl_hit hits[10];
    nl_search_params sp = {.k = 10};
    vec_for(ids[5], 3, v);
    cr_assert_eq(nl_collection_search(f, v, &sp, hits, NULL), 10);
    /* an install of something that is not a shard leaves the old copy serving */
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/f/c/.bogus'", dir);
    cr_assert_eq(system(cmd), 0);
    snprintf(stage, sizeof stage, "%s/f/c/.bogus", dir);
    cr_assert_neq(nl_collection_shard_install(f, 0, stage), 0);
    cr_assert_eq(nl_collection_search(f, v, &sp, hits, NULL), 10);
    nl_collection_shard_log_state(f, 0, &fs);
    cr_assert_eq(fs.last_seq, 12);
    nl_collection_close(p);
    nl_collection_close(f);
    nl_db_close(pdb);
    nl_db_close(fdb);
}

typedef struct {
    nl_collection *f;
    const char *cp;
    int installs, failed;
    volatile int done;
} install_loop;

static void *installing(void *arg)
{
    install_loop *t = arg;
    for (int i = 0; i < t->installs; i++) {
        char stage[600], cmd[1400];
        snprintf(stage, sizeof stage, "%s/f/c/.incoming-%d", dir, i);
        snprintf(cmd, sizeof cmd, "cp -a '%s' '%s'", t->cp, stage);
        if (system(cmd) != 0 || nl_collection_shard_install(t->f, 0, stage) != 0)
            t->failed++;
    }
    t->done = 1;
    return NULL;
}

/* The cluster attaches a shard it does not hold on any request for it, while a snapshot
 * copy may be replacing that shard: an attach in the moment the install has the shard out
 * (its slot empty, its directory being renamed) opened the copy being replaced, and the
 * install then failed on RocksDB's lock and left the shard refused for good. */
Test(oplog, installs_racing_attaches_keep_one_open_copy)
{
    nl_db *pdb = open_db("p"), *fdb = open_db("f");
    nl_collection *p = make(pdb), *f = make(fdb);
    uint64_t cur = 0, ids[50];
    for (int i = 0; i < 50; i++) ids[i] = shard0_id(&cur);
    log_upsert(p, 1, ids, 50, 1);
    char cp[512];
    snprintf(cp, sizeof cp, "%s/cp", dir);
    nl_log_state at;
    cr_assert_eq(nl_collection_shard_checkpoint(p, 0, cp, &at), 0, "%s", nl_errdetail());
    install_loop t = {f, cp, 12, 0, 0};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, installing, &t), 0);
    long attaches = 0, bad = 0;
    while (!t.done) {
        if (!nl_collection_shard_held(f, 0)) {
            attaches++;
            bad += nl_collection_shard_attach(f, 0) != 0;
        }
    }
    pthread_join(th, NULL);
    cr_assert_eq(t.failed, 0, "every install succeeds (%d of %d failed)", t.failed, t.installs);
    cr_assert_eq(bad, 0, "no attach fails (%ld of %ld)", bad, attaches);
    nl_log_state fs;
    cr_assert_eq(nl_collection_shard_log_state(f, 0, &fs), 0);
    cr_assert_eq(fs.last_seq, at.last_seq);
    cr_assert_eq(ship(p, f, 1 << 20), 0);
    cr_assert_eq(assert_same(p, f, cur), 50);
    /* one handle on the directory: the database closes and opens again */
    nl_collection_close(f);
    nl_db_close(fdb);
    fdb = open_db("f");
    cr_assert_eq(nl_collection_open(fdb, "c", &f), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_collection_shard_log_state(f, 0, &fs), 0);
    cr_assert_eq(fs.last_seq, at.last_seq);
    nl_collection_close(f);
    nl_collection_close(p);
    nl_db_close(pdb);
    nl_db_close(fdb);
}
