/* The engine through its public API (nearline.h): collections, read-your-writes,
 * replace, delete, whole-batch validation, flush to segments, search across fresh and
 * segments, compaction, recovery at open, sharding, writers waiting for flushes,
 * searches consistent while everything else runs, and a synced upsert surviving
 * SIGKILL. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "nearline_replica.h"
#include "nl_dataset.h"
#include "nl_eval.h"
#include "nl_import.h"
#include "test_util.h"

static char dir[256];
static void setup(void) { tu_tmpdir(dir, sizeof dir); }
static void teardown(void) { tu_rmtree(dir); }
TestSuite(engine, .init = setup, .fini = teardown, .timeout = 900);

#define D 24

static void vec_for(uint64_t id, float *v)
{
    nl_rng r;
    nl_rng_seed(&r, id * 7919 + 1);
    for (int j = 0; j < D; j++) v[j] = (float)nl_rng_normal(&r);
}

static float l2(const float *a, const float *b)
{
    double s = 0;
    for (int j = 0; j < D; j++) s += (double)(a[j] - b[j]) * (a[j] - b[j]);
    return (float)s;
}

/* A database (maintenance in the background unless no_bg) with collection "c". */
static nl_collection *make(nl_db **db, uint32_t cap, int no_bg, uint32_t shards)
{
    nl_db_options o = {.no_background = no_bg, .threads = 2};
    cr_assert_eq(nl_db_open(dir, &o, db), 0, "%s", nl_errdetail());
    nl_collection_config c = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .shards = shards, .R = 24,
                              .L = 48, .pq_bytes = 8, .fresh_capacity = cap};
    cr_assert_eq(nl_collection_create(*db, "c", &c), 0, "%s", nl_errdetail());
    nl_collection *h;
    cr_assert_eq(nl_collection_open(*db, "c", &h), 0, "%s", nl_errdetail());
    return h;
}

static nl_collection *reopen(nl_db **db, nl_collection *h, int no_bg)
{
    nl_collection_close(h);
    nl_db_close(*db);
    nl_db_options o = {.no_background = no_bg, .threads = 2};
    cr_assert_eq(nl_db_open(dir, &o, db), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_collection_open(*db, "c", &h), 0, "%s", nl_errdetail());
    return h;
}

/* Upserts ids [from, to) in batches of at most 100. */
static void upsert_range(nl_collection *c, uint64_t from, uint64_t to)
{
    for (; to - from > 100; from += 100)
        upsert_range(c, from, from + 100);
    size_t n = to - from;
    nl_point *p = calloc(n, sizeof *p);
    float *v = malloc(sizeof(float) * D * n);
    for (size_t i = 0; i < n; i++) {
        vec_for(from + i, v + i * D);
        p[i] = (nl_point){.id = {.num = from + i}, .vector = v + i * D, .dim = D};
    }
    cr_assert_eq(nl_collection_upsert(c, p, n), 0, "%s", nl_errdetail());
    free(p);
    free(v);
}

static int search(nl_collection *c, const float *q, uint32_t k, nl_hit *hits)
{
    nl_search_params p = {.k = k, .L = 64};
    int got = nl_collection_search(c, q, &p, hits, NULL);
    cr_assert_geq(got, 0, "%s", nl_errdetail());
    return got;
}

static uint64_t points(nl_collection *c)
{
    nl_collection_stats s;
    cr_assert_eq(nl_collection_stats_get(c, &s), 0);
    return s.points;
}

/* Searching each id's own vector finds it first. */
static void all_findable(nl_collection *c, uint64_t from, uint64_t to, uint64_t step)
{
    float v[D];
    nl_hit hits[10];
    for (uint64_t id = from; id < to; id += step) {
        vec_for(id, v);
        cr_assert_gt(search(c, v, 10, hits), 0);
        cr_assert_eq(hits[0].num, id, "id %llu: found %llu first", (unsigned long long)id,
                     (unsigned long long)hits[0].num);
    }
}

static void check_replace_and_delete(nl_collection *c)
{
    /* replace id 7: only the new vector is found, under id 7 */
    float old7[D], new7[D], v[D];
    vec_for(7, old7);
    vec_for(999999, new7);
    uint64_t before = points(c);
    nl_point p = {.id = {.num = 7}, .vector = new7, .dim = D};
    cr_assert_eq(nl_collection_upsert(c, &p, 1), 0);
    cr_assert_eq(points(c), before);
    nl_hit hits[10];
    int got = search(c, old7, 10, hits);
    for (int i = 0; i < got; i++)
        if (hits[i].num == 7)
            cr_assert_float_eq(hits[i].dist, l2(old7, new7), 1e-3 * l2(old7, new7), "id 7 came back with its old vector");
    got = search(c, new7, 10, hits);
    cr_assert(got > 0 && hits[0].num == 7);
    for (int i = 1; i < got; i++) cr_assert_neq(hits[i].num, 7, "two versions of id 7");
    float got7[D];
    cr_assert_eq(nl_collection_get(c, &p.id, got7, NULL, NULL), 0);
    cr_assert_arr_eq(got7, new7, sizeof got7);
    /* delete id 5 (and an id that does not exist) */
    nl_id del[2] = {{.num = 5}, {.num = 123456}};
    size_t deleted;
    cr_assert_eq(nl_collection_delete(c, del, 2, &deleted), 0);
    cr_assert_eq(deleted, 1);
    cr_assert_eq(points(c), before - 1);
    vec_for(5, v);
    got = search(c, v, 10, hits);
    for (int i = 0; i < got; i++) cr_assert_neq(hits[i].num, 5, "deleted id returned");
    cr_assert_eq(nl_collection_get(c, &del[0], v, NULL, NULL), NL_ENOTFOUND);
}

Test(engine, read_your_writes_in_the_fresh_index)
{
    nl_db *db;
    nl_collection *c = make(&db, 10000, 1, 1);
    float v[D];
    for (uint64_t b = 0; b < 20; b++) {
        upsert_range(c, b * 100, b * 100 + 100);
        nl_hit h[10];
        vec_for(b * 100 + 37, v);
        cr_assert_gt(search(c, v, 10, h), 0);
        cr_assert_eq(h[0].num, b * 100 + 37);
        cr_assert_float_eq(h[0].dist, 0.0f, 1e-6);
    }
    cr_assert_eq(points(c), 2000);
    check_replace_and_delete(c);
    nl_collection_close(c);
    nl_db_close(db);
}

Test(engine, flush_then_search_across_segments_and_fresh)
{
    nl_db *db;
    nl_collection *c = make(&db, 1000, 1, 1); /* no maintenance thread: writers flush when full */
    upsert_range(c, 0, 2500);
    nl_collection_stats s;
    nl_collection_stats_get(c, &s);
    cr_assert_geq(s.segments, 2, "a full fresh index is flushed by the writer: %llu segments",
                  (unsigned long long)s.segments);
    cr_assert_eq(s.points, 2500);
    cr_assert_lt(s.fresh_points, 1000);
    all_findable(c, 0, 2500, 7);
    check_replace_and_delete(c); /* ids 5 and 7 now live in a segment */
    cr_assert_eq(nl_collection_flush(c), 0, "%s", nl_errdetail());
    nl_collection_stats_get(c, &s);
    cr_assert_eq(s.fresh_points, 0);
    all_findable(c, 8, 2500, 11);
    /* get reads a flushed vector back from its segment */
    float v[D], back[D];
    nl_id id = {.num = 1234};
    vec_for(1234, v);
    cr_assert_eq(nl_collection_get(c, &id, back, NULL, NULL), 0, "%s", nl_errdetail());
    cr_assert_arr_eq(back, v, sizeof v);
    nl_verify_report r;
    cr_assert_eq(nl_collection_verify(c, &r), 0, "%s", nl_errdetail());
    cr_assert_eq(r.ids_checked, 2499);
    /* everything survives a reopen */
    c = reopen(&db, c, 1);
    cr_assert_eq(points(c), 2499);
    all_findable(c, 8, 2500, 13);
    cr_assert_eq(nl_collection_get(c, &(nl_id){.num = 5}, v, NULL, NULL), NL_ENOTFOUND);
    nl_collection_close(c);
    nl_db_close(db);
}

/* Recall@10 of query q against brute force over the live ids [0, n) (those for which
 * dead(id) is 0); also checks that every hit's distance is that of its id's vector (a
 * joint walk numbers several segments' ordinals: a wrong mapping shows up here). */
static double recall_of(const nl_hit *hits, int got, const float *q, uint64_t n, int (*dead)(uint64_t))
{
    float best[10];
    int nb = 0;
    float v[D];
    for (uint64_t id = 0; id < n; id++) {
        if (dead && dead(id)) continue;
        vec_for(id, v);
        float d = l2(q, v);
        if (nb == 10 && d >= best[9]) continue;
        int i = nb < 10 ? nb++ : 9;
        while (i > 0 && best[i - 1] > d) { best[i] = best[i - 1]; i--; }
        best[i] = d;
    }
    int hit = 0;
    for (int i = 0; i < got; i++) {
        vec_for(hits[i].num, v);
        cr_assert_float_eq(hits[i].dist, l2(q, v), 1e-3f * (1.0f + hits[i].dist), "hit %d: id %llu", i,
                           (unsigned long long)hits[i].num);
        cr_assert(!dead || !dead(hits[i].num), "deleted id %llu returned", (unsigned long long)hits[i].num);
        hit += hits[i].dist <= best[nb - 1] * (1.0f + 1e-6f);
    }
    return (double)hit / (nb < 10 ? nb : 10);
}

static int every_tenth_below_1000(uint64_t id) { return id < 1000 && id % 10 == 3; }

/* A shard of several RaBitQ segments (with seed tables) is walked as one beam with one
 * list (nl_search_params.segments = 0): it finds what a walk per segment finds for fewer
 * nodes read (measured here: 1.000 with 219 against 1.000 with 323), returns no deleted
 * point, and numbers each segment's points right. */
Test(engine, one_beam_across_segments_reads_less_for_the_same_answers)
{
    nl_db *db;
    nl_db_options o = {.no_background = 1, .threads = 2};
    cr_assert_eq(nl_db_open(dir, &o, &db), 0, "%s", nl_errdetail());
    nl_collection_config cc = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .shards = 1, .R = 24,
                               .L = 48, .fresh_capacity = 4600};
    cr_assert_eq(nl_collection_code_parse("rabitq:2", &cc), 0);
    cr_assert_eq(nl_collection_create(db, "c", &cc), 0, "%s", nl_errdetail());
    nl_collection *c;
    cr_assert_eq(nl_collection_open(db, "c", &c), 0, "%s", nl_errdetail());
    const uint64_t n = 23000; /* segments of 4,600 (a seed table needs 1,024 points) */
    upsert_range(c, 0, n);
    cr_assert_eq(nl_collection_flush(c), 0, "%s", nl_errdetail());
    nl_id del[100];
    for (int i = 0; i < 100; i++) del[i] = (nl_id){.num = (uint64_t)i * 10 + 3};
    cr_assert_eq(nl_collection_delete(c, del, 100, NULL), 0);
    nl_collection_stats s;
    nl_collection_stats_get(c, &s);
    cr_assert_geq(s.segments, 4, "%llu segments", (unsigned long long)s.segments);
    cr_assert_gt(s.seed_members, 0);
    const int nq = 60;
    double rec[2] = {0, 0}, ios[2] = {0, 0};
    nl_hit hits[10];
    float q[D];
    for (int mode = 0; mode < 2; mode++)
        for (int i = 0; i < nq; i++) {
            vec_for(5000000 + (uint64_t)i, q);
            /* one list of 256 against 64 for each of the segments (each walk its own) */
            nl_search_params p = {.k = 10, .L = mode ? 64 : 256, .segments = mode ? -1 : 0};
            nl_query_stats st;
            int got = nl_collection_search(c, q, &p, hits, &st);
            cr_assert_eq(got, 10, "%s", nl_errdetail());
            rec[mode] += recall_of(hits, got, q, n, every_tenth_below_1000) / nq;
            ios[mode] += (double)(st.ios + st.cache_hits) / nq; /* nodes read or found cached */
        }
    cr_log_info("joint: recall %.3f, %.1f nodes; a walk per segment: recall %.3f, %.1f nodes", rec[0], ios[0],
                rec[1], ios[1]);
    cr_assert_geq(rec[0], rec[1] - 0.01, "joint recall %.3f, per segment %.3f", rec[0], rec[1]);
    cr_assert_lt(ios[0], 0.85 * ios[1], "joint %.1f nodes, per segment %.1f", ios[0], ios[1]);
    /* every live point found first by its own vector, through the default (joint) list */
    float v[D];
    for (uint64_t id = 1; id < n; id += 97) {
        if (every_tenth_below_1000(id)) continue;
        vec_for(id, v);
        nl_search_params p = {.k = 10};
        cr_assert_gt(nl_collection_search(c, v, &p, hits, NULL), 0);
        cr_assert_eq(hits[0].num, id, "id %llu: found %llu first", (unsigned long long)id,
                     (unsigned long long)hits[0].num);
    }
    nl_collection_close(c);
    nl_db_close(db);
}

Test(engine, string_ids_metadata_and_whole_batch_validation)
{
    nl_db *db;
    nl_collection *c = make(&db, 1000, 1, 1);
    float a[D], b[D];
    vec_for(1, a);
    vec_for(2, b);
    const char *meta = "{\"lang\":\"en\",\"year\":2024,\"tags\":[\"x\",\"y\"]}";
    nl_point good = {.id = {.is_str = 1, .str = "doc-1", .len = 5}, .vector = a, .dim = D, .metadata = meta,
                     .metadata_len = strlen(meta)};
    char longid[300];
    memset(longid, 'x', sizeof longid);
    float nanv[D];
    memcpy(nanv, b, sizeof nanv);
    nanv[3] = NAN;
    struct { nl_point bad; int code; const char *says; } cases[] = {
        {{.id = {.is_str = 1, .str = longid, .len = 257}, .vector = b, .dim = D}, NL_EINVAL, "256"},
        {{.id = {.is_str = 1, .str = "", .len = 0}, .vector = b, .dim = D}, NL_EINVAL, "1 to 256"},
        {{.id = {.num = 2}, .vector = b, .dim = D - 1}, NL_EDIM, "dimension"},
        {{.id = {.num = 2}, .vector = nanv, .dim = D}, NL_EBADVALUE, "NaN"},
        {{.id = {.num = 2}, .vector = b, .dim = D, .metadata = "[1,2]", .metadata_len = 5}, NL_EINVAL, "object"},
        {{.id = {.num = 2}, .vector = b, .dim = D, .metadata = "{\"a\":", .metadata_len = 5}, NL_EINVAL, "JSON"},
        {{.id = {.num = 2}, .vector = b, .dim = D, .metadata = meta, .metadata_len = 70000}, NL_EINVAL, "limit"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        nl_point batch[2] = {good, cases[k].bad};
        cr_assert_eq(nl_collection_upsert(c, batch, 2), cases[k].code, "case %zu: %s", k, nl_errdetail());
        cr_assert(strstr(nl_errdetail(), cases[k].says) != NULL, "case %zu: '%s'", k, nl_errdetail());
        cr_assert_eq(points(c), 0, "case %zu: half-applied batch", k);
        cr_assert_eq(nl_collection_get(c, &good.id, NULL, NULL, NULL), NL_ENOTFOUND);
    }
    cr_assert_eq(nl_collection_upsert(c, &good, 1), 0, "%s", nl_errdetail());
    char *m;
    size_t ml;
    float back[D];
    cr_assert_eq(nl_collection_get(c, &good.id, back, &m, &ml), 0);
    cr_assert_str_eq(m, meta);
    cr_assert_arr_eq(back, a, sizeof back);
    free(m);
    nl_hit h[10];
    cr_assert_gt(search(c, a, 10, h), 0);
    cr_assert(h[0].is_str && h[0].len == 5 && strcmp(h[0].str, "doc-1") == 0);
    /* the string id survives a flush (segments store versions, not ids) */
    cr_assert_eq(nl_collection_flush(c), 0);
    cr_assert_gt(search(c, a, 10, h), 0);
    cr_assert(h[0].is_str && strcmp(h[0].str, "doc-1") == 0);
    /* upserting without metadata clears it */
    good.metadata = NULL;
    good.metadata_len = 0;
    cr_assert_eq(nl_collection_upsert(c, &good, 1), 0);
    cr_assert_eq(nl_collection_get(c, &good.id, NULL, &m, &ml), 0);
    cr_assert_null(m);
    /* queries are checked too */
    nl_search_params sp = {.k = 0};
    cr_assert_eq(nl_collection_search(c, a, &sp, h, NULL), NL_EINVAL);
    sp.k = 5;
    cr_assert_eq(nl_collection_search(c, nanv, &sp, h, NULL), NL_EBADVALUE);
    nl_collection_close(c);
    nl_db_close(db);
}

Test(engine, collections_create_list_describe_drop)
{
    nl_db *db;
    cr_assert_eq(nl_db_open(dir, NULL, &db), 0);
    nl_collection_config c = {.dim = 8, .metric = NL_METRIC_COSINE, .dtype = NL_DTYPE_F16, .shards = 2};
    const char *bad_names[] = {"", "../x", "a/b", "x y", ".hidden",
                               "a123456789012345678901234567890123456789012345678901234567890123456789"};
    for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++)
        cr_assert_eq(nl_collection_create(db, bad_names[i], &c), NL_EINVAL, "name '%s'", bad_names[i]);
    nl_collection_config zero = {0};
    cr_assert_eq(nl_collection_create(db, "z", &zero), NL_EINVAL);
    cr_assert_eq(nl_collection_create(db, "beta", &c), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_collection_create(db, "alpha-1", &c), 0);
    cr_assert_eq(nl_collection_create(db, "beta", &c), NL_EEXISTS);
    char **names;
    size_t n;
    cr_assert_eq(nl_collection_list(db, &names, &n), 0);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(names[0], "alpha-1");
    cr_assert_str_eq(names[1], "beta");
    nl_names_free(names, n);
    nl_collection *h;
    cr_assert_eq(nl_collection_open(db, "nope", &h), NL_ENOTFOUND);
    cr_assert_eq(nl_collection_open(db, "beta", &h), 0);
    nl_collection_config got;
    nl_collection_describe(h, &got);
    cr_assert(got.dim == 8 && got.metric == NL_METRIC_COSINE && got.dtype == NL_DTYPE_F16 && got.shards == 2);
    cr_assert(got.R == 64 && got.L == 100 && got.pq_bytes > 0 && got.fresh_capacity == 100000, "defaults filled");
    /* drop with a handle open: the name goes at once, calls on the handle fail */
    cr_assert_eq(nl_collection_drop(db, "beta"), 0);
    cr_assert_eq(nl_collection_list(db, &names, &n), 0);
    cr_assert_eq(n, 1);
    nl_names_free(names, n);
    float v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    nl_point p = {.id = {.num = 1}, .vector = v, .dim = 8};
    cr_assert_eq(nl_collection_upsert(h, &p, 1), NL_ENOTFOUND);
    cr_assert_eq(nl_collection_create(db, "beta", &c), -EBUSY);
    nl_collection_close(h);
    cr_assert_eq(nl_collection_create(db, "beta", &c), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_collection_drop(db, "nope"), NL_ENOTFOUND);
    nl_db_close(db);
    /* the database reopens with what is there */
    cr_assert_eq(nl_db_open(dir, NULL, &db), 0);
    cr_assert_eq(nl_collection_list(db, &names, &n), 0);
    cr_assert_eq(n, 2);
    nl_names_free(names, n);
    nl_db_close(db);
}

Test(engine, sharded_collection_routes_and_merges)
{
    nl_db *db;
    nl_collection *c = make(&db, 800, 1, 4);
    upsert_range(c, 0, 3000);
    cr_assert_eq(points(c), 3000);
    all_findable(c, 0, 3000, 9);
    check_replace_and_delete(c);
    /* the merged top-k is the exact top-k of the union (checked by brute force) */
    float *all = malloc(sizeof(float) * D * 3000), q[D];
    for (uint64_t i = 0; i < 3000; i++) vec_for(i, all + i * D);
    vec_for(7, all + 7 * D); /* replaced above: */
    vec_for(999999, all + 7 * D);
    vec_for(424242, q);
    nl_hit h[10];
    cr_assert_eq(search(c, q, 10, h), 10);
    for (int i = 1; i < 10; i++) cr_assert_leq(h[i - 1].dist, h[i].dist);
    float best = 1e30f;
    for (uint64_t i = 0; i < 3000; i++)
        if (i != 5 && l2(q, all + i * D) < best) best = l2(q, all + i * D);
    cr_assert_float_eq(h[0].dist, best, 1e-4 * best);
    free(all);
    c = reopen(&db, c, 1);
    cr_assert_eq(points(c), 2999);
    nl_collection_close(c);
    nl_db_close(db);
}

/* A collection holding shards 1 and 3 of 4 (what a cluster node holds): per-shard calls
 * route, refuse misrouted points, whole-collection calls work on the held shards only,
 * attach adds a shard, and a reopen finds exactly the shards that were held. */
Test(engine, partial_collection_holds_some_shards)
{
    nl_db *db;
    nl_db_options o = {.no_background = 1, .threads = 2};
    cr_assert_eq(nl_db_open(dir, &o, &db), 0, "%s", nl_errdetail());
    nl_collection_config cfg = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .shards = 4, .R = 24,
                                .L = 48, .pq_bytes = 8, .fresh_capacity = 2000};
    uint32_t held[] = {1, 3};
    cr_assert_eq(nl_collection_create_shards(db, "c", &cfg, held, 2), 0, "%s", nl_errdetail());
    nl_collection *c;
    cr_assert_eq(nl_collection_open(db, "c", &c), 0, "%s", nl_errdetail());
    cr_assert(!nl_collection_shard_held(c, 0) && nl_collection_shard_held(c, 1) && !nl_collection_shard_held(c, 2));
    float v[D];
    size_t n1 = 0, n3 = 0;
    for (uint64_t i = 0; i < 400; i++) {
        nl_id id = {.num = i};
        uint32_t s = nl_shard_of(&id, 4);
        vec_for(i, v);
        nl_point p = {.id = id, .vector = v, .dim = D};
        if (s == 1 || s == 3) {
            cr_assert_eq(nl_collection_shard_upsert(c, s, &p, 1), 0, "%s", nl_errdetail());
            cr_assert_eq(nl_collection_shard_upsert(c, s ^ 2, &p, 1), NL_EINVAL); /* misrouted */
            s == 1 ? n1++ : n3++;
        } else {
            cr_assert_eq(nl_collection_upsert(c, &p, 1), NL_ENOTFOUND);
            cr_assert_eq(nl_collection_shard_upsert(c, s, &p, 1), NL_ENOTFOUND);
        }
    }
    cr_assert(n1 > 50 && n3 > 50);
    nl_collection_stats st;
    cr_assert_eq(nl_collection_stats_get(c, &st), 0);
    cr_assert_eq(st.points, n1 + n3);
    cr_assert_eq(nl_collection_shard_stats(c, 1, &st), 0);
    cr_assert_eq(st.points, n1);
    /* one shard's search sees only its points; the collection's merges both */
    nl_hit h[10];
    uint32_t cnt;
    nl_search_params sp = {.k = 10, .L = 64};
    vec_for(424242, v);
    cr_assert_eq(nl_collection_shard_search_batch(c, 1, v, 1, &sp, h, &cnt, NULL), 0);
    cr_assert_eq(cnt, 10);
    for (uint32_t i = 0; i < cnt; i++) {
        nl_id id = {.num = h[i].num};
        cr_assert_eq(nl_shard_of(&id, 4), 1);
    }
    cr_assert_eq(nl_collection_shard_search_batch(c, 2, v, 1, &sp, h, &cnt, NULL), NL_ENOTFOUND);
    cr_assert_eq(nl_collection_search(c, v, &sp, h, NULL), 10);
    cr_assert_eq(nl_collection_shard_attach(c, 2), 0, "%s", nl_errdetail());
    cr_assert(nl_collection_shard_held(c, 2));
    cr_assert_eq(nl_collection_shard_attach(c, 4), NL_EINVAL);
    c = reopen(&db, c, 1);
    cr_assert(!nl_collection_shard_held(c, 0) && nl_collection_shard_held(c, 2) && nl_collection_shard_held(c, 3));
    cr_assert_eq(nl_collection_stats_get(c, &st), 0);
    cr_assert_eq(st.points, n1 + n3);
    nl_collection_close(c);
    nl_db_close(db);
}

Test(engine, writers_wait_for_background_flushes_instead_of_growing)
{
    nl_db *db;
    nl_collection *c = make(&db, 300, 0, 1);
    nl_collection_stats s;
    uint64_t max_fresh = 0;
    for (uint64_t b = 0; b < 30; b++) {
        upsert_range(c, b * 100, b * 100 + 100);
        nl_collection_stats_get(c, &s);
        if (s.fresh_points > max_fresh) max_fresh = s.fresh_points;
    }
    /* fresh points never exceed the active index plus the one being flushed */
    cr_assert_leq(max_fresh, 600, "fresh points grew to %llu", (unsigned long long)max_fresh);
    cr_assert_eq(points(c), 3000);
    nl_collection_stats_get(c, &s);
    cr_assert_gt(s.flushes, 0);
    all_findable(c, 0, 3000, 29);
    /* a batch larger than the fresh capacity can never fit: refused, not waited on */
    nl_point *p = calloc(301, sizeof *p);
    float v[D];
    vec_for(1, v);
    for (int i = 0; i < 301; i++) p[i] = (nl_point){.id = {.num = 100000 + (uint64_t)i}, .vector = v, .dim = D};
    cr_assert_eq(nl_collection_upsert(c, p, 301), NL_EINVAL);
    cr_assert(strstr(nl_errdetail(), "split") != NULL, "%s", nl_errdetail());
    free(p);
    nl_collection_close(c);
    nl_db_close(db);
}

Test(engine, compaction_purges_deletes_and_keeps_results)
{
    nl_db *db;
    nl_collection *c = make(&db, 1000, 1, 1);
    upsert_range(c, 0, 4000);
    cr_assert_eq(nl_collection_flush(c), 0);
    /* delete every third id */
    nl_id *ids = malloc(sizeof *ids * 1400);
    size_t nd = 0;
    for (uint64_t i = 0; i < 4000; i += 3) ids[nd++] = (nl_id){.num = i};
    size_t deleted;
    cr_assert_eq(nl_collection_delete(c, ids, nd, &deleted), 0);
    cr_assert_eq(deleted, nd);
    free(ids);
    nl_collection_stats s0, s1;
    nl_collection_stats_get(c, &s0);
    cr_assert_eq(s0.tombstones, nd);
    nl_compact_report dry, r;
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_FULL, 1, &dry), 0);
    cr_assert_eq(dry.segments_in, s0.segments);
    cr_assert_eq(dry.purged, nd);
    nl_collection_stats_get(c, &s1);
    cr_assert_eq(s1.segments, s0.segments, "a dry run changed something");
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_FULL, 0, &r), 0, "%s", nl_errdetail());
    cr_assert_eq(r.purged, nd);
    cr_assert_eq(r.points_out, 4000 - nd);
    nl_collection_stats_get(c, &s1);
    cr_assert_eq(s1.segments, 1);
    cr_assert_eq(s1.tombstones, 0);
    cr_assert_eq(s1.points, 4000 - nd);
    cr_assert_lt(s1.disk_bytes, s0.disk_bytes);
    /* deleted ids stay gone, live ones are found */
    float v[D];
    nl_hit h[10];
    for (uint64_t i = 0; i < 4000; i += 37) {
        vec_for(i, v);
        int got = search(c, v, 10, h);
        if (i % 3 == 0)
            for (int j = 0; j < got; j++) cr_assert_neq(h[j].num, i, "purged id %llu returned", (unsigned long long)i);
        else
            cr_assert_eq(h[0].num, i);
    }
    nl_verify_report vr;
    cr_assert_eq(nl_collection_verify(c, &vr), 0, "%s", nl_errdetail());
    /* nothing left to do; and the state survives a reopen */
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_POLICY, 0, &r), 0);
    cr_assert_eq(r.segments_in, 0);
    c = reopen(&db, c, 1);
    cr_assert_eq(points(c), 4000 - nd);
    all_findable(c, 1, 4000, 31 * 3);
    nl_collection_close(c);
    nl_db_close(db);
}

static int merged_deleted(uint64_t id)
{
    return (id < 2000 && id % 97 == 0 && id / 97 < 20) || (id >= 2000 && (id - 2000) % 53 == 0 && (id - 2000) / 53 < 20);
}

Test(engine, policy_merges_many_segments_into_the_largest_by_insertion)
{
    nl_db *db;
    nl_db_options o = {.no_background = 1, .threads = 2, .compact_max_segments = 3};
    cr_assert_eq(nl_db_open(dir, &o, &db), 0);
    nl_collection_config cc = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .R = 24, .L = 48,
                               .pq_bytes = 8, .fresh_capacity = 4000};
    nl_collection *c;
    cr_assert_eq(nl_collection_create(db, "c", &cc), 0);
    cr_assert_eq(nl_collection_open(db, "c", &c), 0);
    upsert_range(c, 0, 2000); /* the biggest segment */
    cr_assert_eq(nl_collection_flush(c), 0);
    for (int b = 0; b < 4; b++) {
        upsert_range(c, 2000 + (uint64_t)b * 300, 2300 + (uint64_t)b * 300);
        cr_assert_eq(nl_collection_flush(c), 0);
    }
    nl_collection_stats s0, s1;
    nl_collection_stats_get(c, &s0);
    cr_assert_geq(s0.segments, 5);
    /* a few deletes in the big segment (removed by delete consolidation: the lists that
     * named them repaired) and in the small ones (their live points inserted) */
    nl_id del[40];
    for (int i = 0; i < 20; i++) del[i] = (nl_id){.num = (uint64_t)i * 97};
    for (int i = 0; i < 20; i++) del[20 + i] = (nl_id){.num = 2000 + (uint64_t)i * 53};
    cr_assert_eq(nl_collection_delete(c, del, 40, NULL), 0);
    nl_compact_report r;
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_POLICY, 0, &r), 0, "%s", nl_errdetail());
    cr_assert_eq(r.segments_in, s0.segments);
    cr_assert_eq(r.segments_out, 1);
    cr_assert_eq(r.purged, 40, "every delete is purged: %llu", (unsigned long long)r.purged);
    cr_assert_gt(r.repaired, 0, "the lists that named the big segment's deleted points were repaired");
    nl_collection_stats_get(c, &s1);
    cr_assert_eq(s1.segments, 1);
    cr_assert_eq(s1.points, 3200 - 40);
    cr_assert_eq(s1.segment_points, 3200 - 40, "the deleted nodes left the graph");
    cr_assert_eq(s1.tombstones, 0);
    float v[D];
    nl_hit h[10];
    for (uint64_t id = 0; id < 3200; id += 3) {
        vec_for(id, v);
        int got = search(c, v, 10, h);
        if (merged_deleted(id))
            for (int j = 0; j < got; j++) cr_assert_neq(h[j].num, id, "deleted %llu returned", (unsigned long long)id);
        else
            cr_assert_eq(h[0].num, id, "id %llu: found %llu first", (unsigned long long)id, (unsigned long long)h[0].num);
    }
    nl_id one = {.num = 2999};
    float back[D];
    vec_for(2999, v);
    cr_assert_eq(nl_collection_get(c, &one, back, NULL, NULL), 0);
    cr_assert_arr_eq(back, v, sizeof v);
    nl_verify_report vr;
    cr_assert_eq(nl_collection_verify(c, &vr), 0, "%s", nl_errdetail());
    /* a full compaction has nothing left to purge */
    memset(&r, 0, sizeof r);
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_FULL, 0, &r), 0);
    cr_assert_eq(r.purged, 0);
    c = reopen(&db, c, 1);
    cr_assert_eq(points(c), 3200 - 40);
    for (uint64_t id = 1; id < 3200; id += 41)
        if (!merged_deleted(id))
            all_findable(c, id, id + 1, 1);
    nl_collection_close(c);
    nl_db_close(db);
}

/* ---- concurrency: searches stay consistent while writes, flushes and compactions run */

typedef struct {
    nl_collection *c;
    atomic_int stop;
    atomic_long searches, bad;
    atomic_int deleted_batches; /* ids [2000 + b*100, +50) of the batches b below are gone */
    char why[256];
} conc_ctx;

static void *searcher_main(void *arg)
{
    conc_ctx *x = arg;
    nl_rng r;
    nl_rng_seed(&r, (uint64_t)pthread_self());
    float q[D], v[D];
    nl_hit h[10];
    nl_search_params p = {.k = 10, .L = 48};
    while (!atomic_load(&x->stop)) {
        uint64_t target = nl_rng_below(&r, 6000);
        vec_for(target, q);
        int gone = atomic_load(&x->deleted_batches);
        int got = nl_collection_search(x->c, q, &p, h, NULL);
        if (got < 0) {
            snprintf(x->why, sizeof x->why, "search failed: %s", nl_errdetail());
            atomic_fetch_add(&x->bad, 1);
            break;
        }
        /* at least 1,500 points are live throughout: every answer is whole */
        if (got != 10) {
            snprintf(x->why, sizeof x->why, "%d results for k=10", got);
            atomic_fetch_add(&x->bad, 1);
        }
        for (int i = 0; i < got; i++) {
            /* ids below 2000 that are multiples of 4 were deleted before we started, and
             * the first half of each new batch below `gone` before this search began */
            uint64_t id = h[i].num;
            if ((id < 2000 && id % 4 == 0) ||
                (id >= 2000 && (id - 2000) / 100 < (uint64_t)gone && (id - 2000) % 100 < 50)) {
                snprintf(x->why, sizeof x->why, "deleted id %llu returned", (unsigned long long)id);
                atomic_fetch_add(&x->bad, 1);
            }
            /* the distance is that of the id's one and only vector */
            vec_for(h[i].num, v);
            if (fabsf(l2(q, v) - h[i].dist) > 1e-3f * (1.0f + h[i].dist)) {
                snprintf(x->why, sizeof x->why, "id %llu with distance %g, its vector is at %g",
                         (unsigned long long)h[i].num, (double)h[i].dist, (double)l2(q, v));
                atomic_fetch_add(&x->bad, 1);
            }
            for (int j = 0; j < i; j++)
                if (h[j].num == h[i].num) {
                    snprintf(x->why, sizeof x->why, "id %llu twice in one result", (unsigned long long)h[i].num);
                    atomic_fetch_add(&x->bad, 1);
                }
        }
        atomic_fetch_add(&x->searches, 1);
    }
    return NULL;
}

Test(engine, searches_consistent_during_upserts_flushes_and_compactions)
{
    nl_db *db;
    nl_collection *c = make(&db, 600, 0, 1);
    upsert_range(c, 0, 2000);
    nl_id *del = malloc(sizeof *del * 500);
    for (uint64_t i = 0; i < 500; i++) del[i] = (nl_id){.num = i * 4};
    cr_assert_eq(nl_collection_delete(c, del, 500, NULL), 0);
    free(del);
    conc_ctx x = {.c = c};
    pthread_t th[2];
    for (int t = 0; t < 2; t++) pthread_create(&th[t], NULL, searcher_main, &x);
    /* new ids, replacements of live ids with the same vector, contiguous deletes of the
     * newest ids (a streaming workload's shape), flushes and compactions */
    for (uint64_t b = 0; b < 40; b++) {
        upsert_range(c, 2000 + b * 100, 2000 + b * 100 + 100);
        upsert_range(c, 1 + b * 40, 1 + b * 40 + 3); /* ids not multiple of 4 at b*40+1.. */
        nl_id gone[50];
        for (int i = 0; i < 50; i++) gone[i] = (nl_id){.num = 2000 + b * 100 + (uint64_t)i};
        cr_assert_eq(nl_collection_delete(c, gone, 50, NULL), 0, "%s", nl_errdetail());
        atomic_store(&x.deleted_batches, (int)b + 1);
        if (b % 10 == 9) {
            cr_assert_eq(nl_collection_flush(c), 0, "%s", nl_errdetail());
            cr_assert_eq(nl_collection_compact(c, NL_COMPACT_FULL, 0, NULL), 0, "%s", nl_errdetail());
        }
    }
    atomic_store(&x.stop, 1);
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    cr_assert_eq(atomic_load(&x.bad), 0, "%ld bad results in %ld searches; last: %s", atomic_load(&x.bad),
                 atomic_load(&x.searches), x.why);
    cr_assert_gt(atomic_load(&x.searches), 0);
    cr_assert_eq(points(c), 6000 - 500 - 40 * 50);
    nl_verify_report vr;
    cr_assert_eq(nl_collection_verify(c, &vr), 0, "%s", nl_errdetail());
    nl_collection_close(c);
    nl_db_close(db);
}

Test(engine, acknowledged_upsert_survives_sigkill)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        nl_db *db;
        nl_db_options o = {.no_background = 1};
        nl_collection_config cc = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .R = 16, .L = 32,
                                   .pq_bytes = 8, .fresh_capacity = 1000};
        nl_collection *c;
        if (nl_db_open(dir, &o, &db) || nl_collection_create(db, "c", &cc) || nl_collection_open(db, "c", &c)) _exit(3);
        nl_point p[200];
        float v[200 * D];
        for (int i = 0; i < 200; i++) {
            vec_for((uint64_t)i, v + i * D);
            p[i] = (nl_point){.id = {.num = (uint64_t)i}, .vector = v + i * D, .dim = D};
        }
        if (nl_collection_upsert(c, p, 200) != 0) _exit(4);
        raise(SIGKILL);
        _exit(5);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status %d", status);
    nl_db *db;
    nl_collection *c;
    cr_assert_eq(nl_db_open(dir, NULL, &db), 0);
    cr_assert_eq(nl_collection_open(db, "c", &c), 0, "%s", nl_errdetail());
    cr_assert_eq(points(c), 200);
    all_findable(c, 0, 200, 17);
    nl_collection_close(c);
    nl_db_close(db);
}

/* The compaction test on real data: delete 30% of fashion-mnist-60k, compact,
 * and the recall@10 against the ground truth of the remaining points stays >= 0.95
 * while the disk usage drops. */
Test(engine, fashion_mnist_compaction_keeps_recall)
{
    char base[512];
    TU_REQUIRE_DATA(base, "fashion-mnist-60k/base.u8bin");
    void *data;
    size_t n;
    uint32_t dim;
    nl_dtype t;
    cr_assert_eq(nl_dataset_load(base, NL_FORMAT_AUTO, &data, &n, &dim, &t), 0, "%s", nl_errdetail());
    char qpath[512];
    TU_REQUIRE_DATA(qpath, "fashion-mnist-60k/query.u8bin");
    void *qdata;
    size_t nq;
    uint32_t qdim;
    cr_assert_eq(nl_dataset_load(qpath, NL_FORMAT_AUTO, &qdata, &nq, &qdim, &t), 0);
    if (nq > 300) nq = 300;
    nl_db *db;
    nl_db_options o = {.no_background = 1};
    cr_assert_eq(nl_db_open(dir, &o, &db), 0);
    nl_collection_config cc = {.dim = dim, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_U8, .R = 32, .L = 64,
                               .pq_bytes = 64, .fresh_capacity = 20000};
    nl_collection *c;
    cr_assert_eq(nl_collection_create(db, "fm", &cc), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_collection_open(db, "fm", &c), 0);
    float *row = malloc(sizeof(float) * dim * 1000);
    nl_point *p = malloc(sizeof *p * 1000);
    for (size_t i = 0; i < n; i += 1000) {
        size_t m = n - i < 1000 ? n - i : 1000;
        nl_convert_to_f32(NL_DTYPE_U8, (uint8_t *)data + i * dim, row, (uint32_t)(m * dim));
        for (size_t j = 0; j < m; j++) p[j] = (nl_point){.id = {.num = i + j}, .vector = row + j * dim, .dim = dim};
        cr_assert_eq(nl_collection_upsert(c, p, m), 0, "%s", nl_errdetail());
    }
    cr_assert_eq(nl_collection_flush(c), 0);
    /* delete 30%: ids whose hash falls in the lowest 30% */
    nl_id *del = malloc(sizeof *del * n);
    uint8_t *gone = calloc(n, 1);
    size_t nd = 0;
    for (size_t i = 0; i < n; i++)
        if ((i * 2654435761u) % 1000 < 300) {
            del[nd++] = (nl_id){.num = i};
            gone[i] = 1;
        }
    cr_assert_eq(nl_collection_delete(c, del, nd, NULL), 0);
    nl_collection_stats s0, s1;
    nl_collection_stats_get(c, &s0);
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_FULL, 0, NULL), 0, "%s", nl_errdetail());
    nl_collection_stats_get(c, &s1);
    cr_assert_lt(s1.disk_bytes, s0.disk_bytes);
    cr_assert_eq(s1.points, n - nd);
    /* ground truth of the remaining points */
    size_t nl = n - nd;
    uint8_t *rest = malloc(nl * dim);
    uint32_t *map = malloc(sizeof(uint32_t) * nl);
    for (size_t i = 0, j = 0; i < n; i++)
        if (!gone[i]) {
            memcpy(rest + j * dim, (uint8_t *)data + i * dim, dim);
            map[j++] = (uint32_t)i;
        }
    float *qf = malloc(sizeof(float) * nq * dim);
    nl_convert_to_f32(NL_DTYPE_U8, qdata, qf, (uint32_t)(nq * dim));
    uint32_t *gt = malloc(sizeof(uint32_t) * nq * 10), *res = malloc(sizeof(uint32_t) * nq * 10);
    nl_vecset vs = {rest, nl, dim, NL_DTYPE_U8};
    cr_assert_eq(nl_groundtruth_exact(&vs, NL_METRIC_L2, qf, nq, 10, 0, gt, NULL), 0);
    for (size_t i = 0; i < nq * 10; i++) gt[i] = map[gt[i]];
    nl_hit *h = malloc(sizeof *h * nq * 10);
    uint32_t *cnt = malloc(sizeof(uint32_t) * nq);
    nl_search_params sp = {.k = 10, .L = 100};
    cr_assert_eq(nl_collection_search_batch(c, qf, nq, &sp, h, cnt, NULL), 0, "%s", nl_errdetail());
    for (size_t i = 0; i < nq; i++)
        for (uint32_t j = 0; j < 10; j++) res[i * 10 + j] = j < cnt[i] ? (uint32_t)h[i * 10 + j].num : UINT32_MAX;
    double recall = nl_recall_at_k(res, nq, 10, gt, 10, 10);
    cr_log_info("fashion-mnist-60k after deleting %zu and compacting: recall@10 %.4f at L=100; disk %llu -> %llu bytes",
                nd, recall, (unsigned long long)s0.disk_bytes, (unsigned long long)s1.disk_bytes);
    cr_assert_geq(recall, 0.95, "recall@10 %.4f", recall);
    nl_collection_close(c);
    nl_db_close(db);
    free(data); free(qdata); free(row); free(p); free(del); free(gone); free(rest); free(map); free(qf);
    free(gt); free(res); free(h); free(cnt);
}

/* A bulk import lands in the engine's layout: its ids (from a file) and JSON Lines
 * metadata are what get and search return, and the collection takes upserts and
 * deletes on top of its imported segment. */
Test(engine, imported_collection_with_ids_and_metadata_takes_writes)
{
    size_t n = 1200;
    float *x = malloc(sizeof(float) * n * D);
    for (size_t i = 0; i < n; i++) vec_for(i, x + i * D);
    char vpath[512], ipath[512], mpath[512], db[512];
    snprintf(vpath, sizeof vpath, "%s/x.fvecs", dir);
    snprintf(ipath, sizeof ipath, "%s/ids.txt", dir);
    snprintf(mpath, sizeof mpath, "%s/meta.jsonl", dir);
    snprintf(db, sizeof db, "%s/db", dir);
    cr_assert_eq(nl_dataset_write(vpath, NL_FORMAT_FVECS, x, n, D), 0, "%s", nl_errdetail());
    FILE *fi = fopen(ipath, "w"), *fm = fopen(mpath, "w");
    for (size_t i = 0; i < n; i++) {
        fprintf(fi, "%zu\n", 1000000 + i);
        fprintf(fm, "{\"row\":%zu,\"lang\":\"%s\"}\n", i, i % 2 ? "en" : "fr");
    }
    fclose(fi);
    fclose(fm);
    nl_import_params ip = {.db = db, .collection = "imp", .input = vpath, .metric = NL_METRIC_L2, .ids_path = ipath,
                           .metadata_path = mpath, .R = 24, .L = 48, .pq_m = 8, .threads = 2};
    nl_import_result ir;
    cr_assert_eq(nl_import(&ip, &ir), 0, "%s", nl_errdetail());
    nl_db *h;
    nl_db_options o = {.no_background = 1};
    cr_assert_eq(nl_db_open(db, &o, &h), 0);
    nl_collection *c;
    cr_assert_eq(nl_collection_open(h, "imp", &c), 0, "%s", nl_errdetail());
    cr_assert_eq(points(c), n);
    char *m;
    size_t ml;
    float v[D];
    nl_id id = {.num = 1000000 + 7};
    cr_assert_eq(nl_collection_get(c, &id, v, &m, &ml), 0, "%s", nl_errdetail());
    cr_assert_str_eq(m, "{\"row\":7,\"lang\":\"en\"}");
    cr_assert_arr_eq(v, x + 7 * D, sizeof v);
    free(m);
    nl_hit hits[10];
    cr_assert_gt(search(c, x + 7 * D, 10, hits), 0);
    cr_assert_eq(hits[0].num, 1000007);
    /* writes on top of the imported segment: replace, delete, new ids */
    float nv[D];
    vec_for(777777, nv);
    nl_point p = {.id = {.num = 1000007}, .vector = nv, .dim = D};
    cr_assert_eq(nl_collection_upsert(c, &p, 1), 0);
    nl_id del = {.num = 1000008};
    cr_assert_eq(nl_collection_delete(c, &del, 1, NULL), 0);
    cr_assert_eq(points(c), n - 1);
    cr_assert_gt(search(c, nv, 10, hits), 0);
    cr_assert_eq(hits[0].num, 1000007);
    int got = search(c, x + 8 * D, 10, hits);
    for (int i = 0; i < got; i++) cr_assert_neq(hits[i].num, 1000008);
    cr_assert_eq(nl_collection_get(c, &id, NULL, &m, &ml), 0);
    cr_assert_null(m, "the replacement carried no metadata");
    nl_verify_report vr;
    cr_assert_eq(nl_collection_verify(c, &vr), 0, "%s", nl_errdetail());
    nl_collection_close(c);
    nl_db_close(h);
    free(x);
}

/* The partitioned import and --append through the library (this suite runs under ASan
 * too): a forced partitioned build with metadata, then a partitioned append whose ids
 * continue the numbering, a live upsert and flush on top, and an append with a colliding
 * id refused without touching the collection. */
Test(engine, partitioned_import_then_append)
{
    size_t n = 3000;
    float *x = malloc(sizeof(float) * 2 * n * D);
    for (size_t i = 0; i < 2 * n; i++) vec_for(i, x + i * D);
    char v1[512], v2[512], mpath[512], ipath[512], db[512];
    snprintf(v1, sizeof v1, "%s/a.fvecs", dir);
    snprintf(v2, sizeof v2, "%s/b.fvecs", dir);
    snprintf(mpath, sizeof mpath, "%s/b.jsonl", dir);
    snprintf(ipath, sizeof ipath, "%s/ids.txt", dir);
    snprintf(db, sizeof db, "%s/db", dir);
    cr_assert_eq(nl_dataset_write(v1, NL_FORMAT_FVECS, x, n, D), 0);
    cr_assert_eq(nl_dataset_write(v2, NL_FORMAT_FVECS, x + n * D, n, D), 0);
    FILE *fm = fopen(mpath, "w");
    for (size_t i = 0; i < n; i++) fprintf(fm, "{\"b\":%zu}\n", i);
    fclose(fm);
    nl_import_params ip = {.db = db, .collection = "p", .input = v1, .metric = NL_METRIC_L2, .R = 16, .L = 32,
                           .pq_m = 8, .threads = 2, .memory_budget = 256ull << 20, .force_partitioned = 1};
    nl_import_result ir;
    cr_assert_eq(nl_import(&ip, &ir), 0, "%s", nl_errdetail());
    cr_assert_geq(ir.partitions, 3);
    cr_assert(ir.exact_merge);
    cr_assert_eq(ir.navigation_points, n / 8, "navigation sample of %llu rows", (unsigned long long)ir.navigation_points);
    ip.input = v2;
    ip.metadata_path = mpath;
    ip.append = 1;
    cr_assert_eq(nl_import(&ip, &ir), 0, "%s", nl_errdetail());
    cr_assert_eq(ir.first_id, n);
    cr_assert(ir.appended);
    nl_db *h;
    nl_db_options o = {.no_background = 1};
    cr_assert_eq(nl_db_open(db, &o, &h), 0);
    nl_collection *c;
    cr_assert_eq(nl_collection_open(h, "p", &c), 0, "%s", nl_errdetail());
    cr_assert_eq(points(c), 2 * n);
    nl_hit hits[10];
    for (size_t i = 0; i < 2 * n; i += 397) {
        cr_assert_gt(search(c, x + i * D, 10, hits), 0);
        cr_assert_eq(hits[0].num, i, "row %zu found %llu", i, (unsigned long long)hits[0].num);
    }
    char *m;
    size_t ml;
    nl_id id = {.num = n + 5};
    cr_assert_eq(nl_collection_get(c, &id, NULL, &m, &ml), 0, "%s", nl_errdetail());
    cr_assert_str_eq(m, "{\"b\":5}");
    free(m);
    float nv[D];
    vec_for(999999, nv);
    nl_point pt = {.id = {.num = 2 * n + 100}, .vector = nv, .dim = D};
    cr_assert_eq(nl_collection_upsert(c, &pt, 1), 0);
    cr_assert_eq(nl_collection_flush(c), 0);
    nl_verify_report vr;
    cr_assert_eq(nl_collection_verify(c, &vr), 0, "%s", nl_errdetail());
    nl_collection_close(c);
    nl_db_close(h);
    /* The flushed point is now the largest id: a colliding --ids append is refused. */
    FILE *fi = fopen(ipath, "w");
    for (size_t i = 0; i < n; i++) fprintf(fi, "%zu\n", i == 17 ? 2 * n + 100 : 10 * n + i);
    fclose(fi);
    ip.ids_path = ipath;
    ip.metadata_path = NULL;
    cr_assert_eq(nl_import(&ip, &ir), NL_EEXISTS);
    cr_assert(strstr(nl_errdetail(), "line 18") != NULL, "%s", nl_errdetail());
    cr_assert_eq(nl_db_open(db, &o, &h), 0);
    cr_assert_eq(nl_collection_open(h, "p", &c), 0);
    cr_assert_eq(points(c), 2 * n + 1);
    nl_collection_close(c);
    nl_db_close(h);
    free(x);
}
