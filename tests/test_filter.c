/* Filters: the parser's rejections (each kind, with its location), the reference
 * evaluator's semantics, the Roaring-style bitmap against a plain bit array, hostile
 * bytes, and the engine end to end: random composite filters over random metadata, on
 * points spread over segments, the fresh index, replacements and deletes, checked
 * against brute force with the reference evaluator; delete by filter; the postings
 * backfill of a store that predates them. */
#include <criterion/criterion.h>
#include <math.h>

#include <jansson.h>

#include "nearline.h"
#include "nl_bitmap.h"
#include "nl_filter.h"
#include "test_util.h"

static char dir[256];
static void setup(void) { tu_tmpdir(dir, sizeof dir); }
static void teardown(void) { tu_rmtree(dir); }
TestSuite(filter, .init = setup, .fini = teardown, .timeout = 900);

/* ---------------------------------------------------------------- parser */

static void expect_error(const char *json, const char *needle)
{
    nl_filter *f = NULL;
    int rc = nl_filter_parse(json, strlen(json), &f);
    cr_assert_eq(rc, NL_EFILTER, "accepted %s", json);
    cr_assert_null(f);
    cr_assert(strstr(nl_errdetail(), needle) != NULL, "for %s: detail '%s' lacks '%s'", json, nl_errdetail(), needle);
}

static nl_filter *parse_ok(const char *json)
{
    nl_filter *f = NULL;
    int rc = nl_filter_parse(json, strlen(json), &f);
    cr_assert_eq(rc, 0, "rejected %s: %s", json, nl_errdetail());
    return f;
}

Test(filter, malformed_filters_say_what_and_where)
{
    expect_error("{\"field\":\"a\",\"eq\":", "not valid JSON");
    expect_error("[1,2]", "at $: a filter is a JSON object");
    expect_error("{\"field\":\"a\",\"like\":\"x\"}", "at $.like: unknown operator \"like\"");
    expect_error("{\"and\":[{\"field\":\"a\",\"eq\":1},{\"field\":\"b\",\"in\":[1,{}]}]}",
                 "at $.and[1].in[1]: in takes a string, number or boolean, not an object");
    expect_error("{\"or\":[]}", "at $.or: \"or\" takes a non-empty array");
    expect_error("{\"and\":{\"field\":\"a\",\"eq\":1}}", "\"and\" takes a non-empty array");
    expect_error("{\"not\":[{\"field\":\"a\",\"eq\":1}]}", "at $.not: a filter is a JSON object");
    expect_error("{\"field\":\"a\",\"eq\":null}", "eq takes a string, number or boolean, not null");
    expect_error("{\"field\":\"a\",\"eq\":[1]}", "not an array");
    expect_error("{\"field\":\"a\",\"gt\":\"5\"}", "at $.gt: \"gt\" takes a number");
    expect_error("{\"field\":\"a\",\"gt\":1,\"gte\":2}", "one lower bound");
    expect_error("{\"field\":\"a\",\"eq\":1,\"lt\":2}", "one kind of operator");
    expect_error("{\"field\":\"a\",\"eq\":1,\"in\":[2]}", "one kind of operator"); /* found by libFuzzer: leaked */
    expect_error("{\"field\":\"a\",\"in\":[2],\"eq\":1}", "one kind of operator");
    expect_error("{\"field\":\"a\",\"eq\":1,\"like\":2}", "unknown operator \"like\"");
    expect_error("{\"field\":\"a\",\"exists\":1}", "\"exists\" takes true or false");
    expect_error("{\"field\":\"a\"}", "a leaf needs an operator");
    expect_error("{\"field\":7,\"eq\":1}", "at $.field: \"field\" must be a non-empty string");
    expect_error("{\"field\":\"\",\"eq\":1}", "non-empty string");
    expect_error("{\"eq\":1}", "unknown operator \"eq\" (expected \"field\"");
    expect_error("{}", "empty filter object");
    expect_error("{\"and\":[{\"field\":\"a\",\"eq\":1}],\"field\":\"b\"}", "stands alone");
    expect_error("{\"field\":\"a\",\"eq\":1,\"eq\":2}", "not valid JSON"); /* duplicate key */
    /* depth: 32 nested nots are fine, 33 are not */
    char deep[2048] = "", tail[64] = "{\"field\":\"a\",\"eq\":1}";
    for (int i = 0; i < 31; i++) strcat(deep, "{\"not\":");
    strcat(deep, tail);
    for (int i = 0; i < 31; i++) strcat(deep, "}");
    nl_filter_destroy(parse_ok(deep));
    char deeper[2048] = "";
    for (int i = 0; i < 32; i++) strcat(deeper, "{\"not\":");
    strcat(deeper, tail);
    for (int i = 0; i < 32; i++) strcat(deeper, "}");
    expect_error(deeper, "nesting deeper than 32");
    /* size */
    size_t big = NL_FILTER_MAX_BYTES + 10;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    memcpy(huge, tail, strlen(tail));
    huge[big] = 0;
    expect_error(huge, "over the 65536-byte limit");
    free(huge);
    cr_assert_str_eq(nl_strerror(NL_EFILTER), "malformed filter");
}

static int m(const char *filter, const char *meta)
{
    nl_filter *f = parse_ok(filter);
    int r = nl_filter_match_json(f, meta, meta ? strlen(meta) : 0);
    nl_filter_destroy(f);
    return r;
}

Test(filter, evaluator_semantics)
{
    cr_assert_eq(m("{\"field\":\"a\",\"eq\":3}", "{\"a\":3.0}"), 1);
    cr_assert_eq(m("{\"field\":\"a\",\"eq\":3.0}", "{\"a\":3}"), 1);
    cr_assert_eq(m("{\"field\":\"a\",\"eq\":3.5}", "{\"a\":3}"), 0);
    cr_assert_eq(m("{\"field\":\"a\",\"eq\":\"3\"}", "{\"a\":3}"), 0);
    cr_assert_eq(m("{\"field\":\"t\",\"eq\":\"x\"}", "{\"t\":[\"y\",\"x\"]}"), 1);
    cr_assert_eq(m("{\"field\":\"t\",\"in\":[\"q\",\"y\"]}", "{\"t\":[\"y\",\"x\"]}"), 1);
    cr_assert_eq(m("{\"field\":\"t\",\"eq\":1}", "{\"t\":[1]}"), 0); /* lists hold strings */
    cr_assert_eq(m("{\"field\":\"b\",\"eq\":true}", "{\"b\":true}"), 1);
    cr_assert_eq(m("{\"field\":\"b\",\"eq\":1}", "{\"b\":true}"), 0);
    cr_assert_eq(m("{\"field\":\"x\",\"gte\":1,\"lt\":2}", "{\"x\":1}"), 1);
    cr_assert_eq(m("{\"field\":\"x\",\"gte\":1,\"lt\":2}", "{\"x\":2}"), 0);
    cr_assert_eq(m("{\"field\":\"x\",\"gt\":1}", "{\"x\":\"5\"}"), 0);
    cr_assert_eq(m("{\"field\":\"x\",\"exists\":true}", "{\"x\":null}"), 0);
    cr_assert_eq(m("{\"field\":\"x\",\"exists\":false}", NULL), 1);
    cr_assert_eq(m("{\"not\":{\"field\":\"x\",\"eq\":1}}", "{}"), 1);
    cr_assert_eq(m("{\"and\":[{\"field\":\"x\",\"eq\":1},{\"or\":[{\"field\":\"y\",\"eq\":\"a\"},"
                   "{\"field\":\"y\",\"eq\":\"b\"}]}]}",
                   "{\"x\":1,\"y\":\"b\"}"),
               1);
}

Test(filter, hostile_bytes_never_crash)
{
    nl_rng r;
    nl_rng_seed(&r, 42);
    const char *seeds[] = {"{\"and\":[{\"field\":\"a\",\"in\":[1,\"x\",true]},{\"not\":{\"field\":\"b\",\"gte\":1.5}}]}",
                           "{\"or\":[{\"field\":\"t\",\"exists\":true},{\"field\":\"u\",\"lt\":-3}]}"};
    char buf[512];
    for (int it = 0; it < 20000; it++) {
        const char *s = seeds[it % 2];
        size_t n = strlen(s);
        memcpy(buf, s, n);
        if (it % 3 == 0) {
            n = nl_rng_next(&r) % n; /* truncated */
        } else {
            int flips = 1 + (int)(nl_rng_next(&r) % 4);
            for (int f = 0; f < flips; f++)
                buf[nl_rng_next(&r) % n] = (char)(nl_rng_next(&r) & 0xff);
        }
        nl_filter *f = NULL;
        int rc = nl_filter_parse(buf, n, &f);
        cr_assert(rc == 0 || rc == NL_EFILTER, "code %d", rc);
        if (rc == 0) {
            const char *meta = "{\"a\":1,\"b\":2,\"t\":[\"x\"]}";
            cr_assert(nl_filter_match_json(f, meta, strlen(meta)) >= 0);
            nl_filter_destroy(f);
        }
    }
}

/* ---------------------------------------------------------------- bitmap */

Test(filter, bitmap_matches_a_bit_array)
{
    nl_rng r;
    nl_rng_seed(&r, 7);
    const uint64_t U = 400000; /* spans several chunks, sparse and dense */
    for (int round = 0; round < 6; round++) {
        unsigned char *ra = calloc(U, 1), *rb = calloc(U, 1);
        nl_bitmap *a = nl_bitmap_create(), *b = nl_bitmap_create();
        double pa = round < 3 ? 0.002 : 0.4, pb = round % 3 == 0 ? 0.001 : round % 3 == 1 ? 0.3 : 0.9;
        for (uint64_t x = 0; x < U; x++) {
            /* a in ascending order; b in random order (inserts in the middle) */
            if (nl_rng_double(&r) < pa) { ra[x] = 1; cr_assert_eq(nl_bitmap_add(a, x), 0); }
        }
        for (uint64_t i = 0; i < U; i++) {
            uint64_t x = nl_rng_next(&r) % U;
            if (nl_rng_double(&r) < pb) { rb[x] = 1; cr_assert_eq(nl_bitmap_add(b, x), 0); }
        }
        nl_bitmap *o[3] = {nl_bitmap_and(a, b), nl_bitmap_or(a, b), nl_bitmap_andnot(a, b)};
        uint64_t ca = 0, cnt[3] = {0, 0, 0};
        for (uint64_t x = 0; x < U; x++) {
            int want[3] = {ra[x] && rb[x], ra[x] || rb[x], ra[x] && !rb[x]};
            ca += ra[x];
            cr_assert_eq(nl_bitmap_contains(a, x), ra[x]);
            cr_assert_eq(nl_bitmap_contains(b, x), rb[x]);
            for (int k = 0; k < 3; k++) {
                cr_assert_eq(nl_bitmap_contains(o[k], x), want[k], "op %d at %llu", k, (unsigned long long)x);
                cnt[k] += want[k];
            }
        }
        cr_assert_eq(nl_bitmap_cardinality(a), ca);
        for (int k = 0; k < 3; k++)
            cr_assert_eq(nl_bitmap_cardinality(o[k]), cnt[k]);
        uint64_t lo = 70000, hi = 200001, inr = 0;
        for (uint64_t x = lo; x < hi; x++) inr += rb[x];
        cr_assert_eq(nl_bitmap_range_cardinality(b, lo, hi), inr);
        /* iteration from a point */
        nl_bitmap_iter it;
        nl_bitmap_iter_init(&it, o[1], 131071);
        uint64_t x, expect = 131071;
        while (nl_bitmap_iter_next(&it, &x)) {
            while (expect < U && !(ra[expect] || rb[expect])) expect++;
            cr_assert_eq(x, expect);
            expect++;
        }
        while (expect < U && !(ra[expect] || rb[expect])) expect++;
        cr_assert_eq(expect, U);
        for (int k = 0; k < 3; k++) nl_bitmap_destroy(o[k]);
        nl_bitmap_destroy(a);
        nl_bitmap_destroy(b);
        free(ra);
        free(rb);
    }
}

/* ---------------------------------------------------------------- engine */

#define D 16
#define NPTS 3000

static void vec_for(uint64_t id, uint32_t gen, float *v)
{
    nl_rng r;
    nl_rng_seed(&r, id * 7919 + gen * 104729 + 1);
    for (int j = 0; j < D; j++) v[j] = (float)nl_rng_normal(&r);
}

typedef struct {
    int live;
    uint32_t gen;
    char meta[256];
} ref_point;

static void meta_for(nl_rng *r, char *out, size_t len)
{
    static const char *colors[] = {"red", "green", "blue", "black"};
    int n = snprintf(out, len, "{\"c\":\"%s\",\"n\":%d,\"x\":%.3f", colors[nl_rng_next(r) % 4],
                     (int)(nl_rng_next(r) % 50), nl_rng_double(r) * 10);
    if (nl_rng_next(r) % 3)
        n += snprintf(out + n, len - (size_t)n, ",\"b\":%s", nl_rng_next(r) % 2 ? "true" : "false");
    if (nl_rng_next(r) % 2)
        n += snprintf(out + n, len - (size_t)n, ",\"t\":[\"t%d\",\"t%d\"]", (int)(nl_rng_next(r) % 6),
                      (int)(nl_rng_next(r) % 6));
    if (nl_rng_next(r) % 50 == 0)
        n += snprintf(out + n, len - (size_t)n, ",\"rare\":1");
    snprintf(out + n, len - (size_t)n, "}");
}

static void random_leaf(nl_rng *r, char *out, size_t len)
{
    switch (nl_rng_next(r) % 7) {
    case 0: snprintf(out, len, "{\"field\":\"c\",\"eq\":\"%s\"}", nl_rng_next(r) % 2 ? "red" : "blue"); break;
    case 1: snprintf(out, len, "{\"field\":\"n\",\"in\":[%d,%d,%d.0]}", (int)(nl_rng_next(r) % 50),
                     (int)(nl_rng_next(r) % 50), (int)(nl_rng_next(r) % 50)); break;
    case 2: snprintf(out, len, "{\"field\":\"x\",\"gte\":%.2f,\"lt\":%.2f}", nl_rng_double(r) * 5,
                     5 + nl_rng_double(r) * 5); break;
    case 3: snprintf(out, len, "{\"field\":\"b\",\"eq\":%s}", nl_rng_next(r) % 2 ? "true" : "false"); break;
    case 4: snprintf(out, len, "{\"field\":\"t\",\"eq\":\"t%d\"}", (int)(nl_rng_next(r) % 6)); break;
    case 5: snprintf(out, len, "{\"field\":\"%s\",\"exists\":%s}", nl_rng_next(r) % 2 ? "t" : "rare",
                     nl_rng_next(r) % 3 ? "true" : "false"); break;
    default: snprintf(out, len, "{\"field\":\"n\",\"lte\":%d}", (int)(nl_rng_next(r) % 10)); break;
    }
}

static void random_filter(nl_rng *r, int depth, char *out, size_t len)
{
    if (depth >= 3 || nl_rng_next(r) % 3 == 0) {
        random_leaf(r, out, len);
        return;
    }
    char a[1024], b[1024];
    random_filter(r, depth + 1, a, sizeof a);
    random_filter(r, depth + 1, b, sizeof b);
    switch (nl_rng_next(r) % 3) {
    case 0: snprintf(out, len, "{\"and\":[%s,%s]}", a, b); break;
    case 1: snprintf(out, len, "{\"or\":[%s,%s]}", a, b); break;
    default: snprintf(out, len, "{\"not\":%s}", a); break;
    }
}

static float l2(const float *a, const float *b)
{
    double s = 0;
    for (int j = 0; j < D; j++) s += (double)(a[j] - b[j]) * (a[j] - b[j]);
    return (float)s;
}

static void upsert_one(nl_collection *c, ref_point *ref, uint64_t id, nl_rng *r)
{
    float v[D];
    ref[id].gen++;
    vec_for(id, ref[id].gen, v);
    meta_for(r, ref[id].meta, sizeof ref[id].meta);
    ref[id].live = 1;
    nl_point p = {.id = {.num = id}, .vector = v, .dim = D, .metadata = ref[id].meta,
                  .metadata_len = strlen(ref[id].meta)};
    cr_assert_eq(nl_collection_upsert(c, &p, 1), 0, "%s", nl_errdetail());
}

static uint32_t g_plan; /* the plan check_filters forces (0 = chosen by cost) */

/* Checks nq random filters: count = min(k, matches), every hit matches, and recall@k
 * against brute force over the live reference points. Returns the mean recall. */
static double check_filters(nl_collection *c, ref_point *ref, nl_rng *r, int nq, uint32_t k)
{
    nl_hit *hits = calloc(k, sizeof *hits);
    uint64_t *truth = malloc(sizeof(uint64_t) * NPTS);
    float *td = malloc(sizeof(float) * NPTS);
    double recall = 0;
    int counted = 0;
    for (int qi = 0; qi < nq; qi++) {
        char fs[4096];
        random_filter(r, 0, fs, sizeof fs);
        nl_filter *f = parse_ok(fs);
        float q[D];
        for (int j = 0; j < D; j++) q[j] = (float)nl_rng_normal(r);
        /* brute force */
        size_t nt = 0;
        for (uint64_t id = 0; id < NPTS; id++) {
            if (!ref[id].live || nl_filter_match_json(f, ref[id].meta, strlen(ref[id].meta)) != 1)
                continue;
            float v[D];
            vec_for(id, ref[id].gen, v);
            float d = l2(q, v);
            size_t i = nt++;
            while (i > 0 && td[i - 1] > d) { td[i] = td[i - 1]; truth[i] = truth[i - 1]; i--; }
            td[i] = d;
            truth[i] = id;
        }
        nl_search_params p = {.k = k, .L = 64, .filter = f, .plan = g_plan};
        nl_query_stats st;
        int got = nl_collection_search(c, q, &p, hits, &st);
        cr_assert_geq(got, 0, "%s", nl_errdetail());
        uint32_t want = nt < k ? (uint32_t)nt : k;
        cr_assert_eq((uint32_t)got, want, "filter %s: %d results, %zu match (plans %u)", fs, got, nt, st.filter_plan);
        size_t hit = 0;
        for (int i = 0; i < got; i++) {
            uint64_t id = hits[i].num;
            cr_assert(id < NPTS && ref[id].live, "filter %s returned a dead point %llu", fs, (unsigned long long)id);
            cr_assert_eq(nl_filter_match_json(f, ref[id].meta, strlen(ref[id].meta)), 1,
                         "filter %s returned %llu whose metadata %s does not match", fs, (unsigned long long)id,
                         ref[id].meta);
            for (uint32_t j = 0; j < want; j++)
                if (truth[j] == id) { hit++; break; }
        }
        if (want) {
            recall += (double)hit / want;
            counted++;
        }
        nl_filter_destroy(f);
    }
    free(hits);
    free(truth);
    free(td);
    return counted ? recall / counted : 1.0;
}

static nl_collection *open_coll(nl_db **db, int create)
{
    nl_db_options o = {.no_background = 1, .threads = 2};
    cr_assert_eq(nl_db_open(dir, &o, db), 0, "%s", nl_errdetail());
    if (create) {
        nl_collection_config cfg = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .R = 24, .L = 48,
                                    .pq_bytes = 8, .fresh_capacity = 4000};
        cr_assert_eq(nl_collection_create(*db, "c", &cfg), 0, "%s", nl_errdetail());
    }
    nl_collection *h;
    cr_assert_eq(nl_collection_open(*db, "c", &h), 0, "%s", nl_errdetail());
    return h;
}

Test(filter, composite_filters_agree_with_brute_force)
{
    nl_db *db;
    nl_collection *c = open_coll(&db, 1);
    ref_point *ref = calloc(NPTS, sizeof *ref);
    nl_rng r;
    nl_rng_seed(&r, 99);
    /* two segments, then fresh points, replacements and deletes on top */
    for (uint64_t id = 0; id < 1500; id++) upsert_one(c, ref, id, &r);
    cr_assert_eq(nl_collection_flush(c), 0);
    for (uint64_t id = 1500; id < 2500; id++) upsert_one(c, ref, id, &r);
    cr_assert_eq(nl_collection_flush(c), 0);
    for (uint64_t id = 2500; id < NPTS; id++) upsert_one(c, ref, id, &r);
    for (int i = 0; i < 300; i++) upsert_one(c, ref, nl_rng_next(&r) % NPTS, &r); /* replace */
    for (int i = 0; i < 300; i++) {
        nl_id id = {.num = nl_rng_next(&r) % NPTS};
        cr_assert_eq(nl_collection_delete(c, &id, 1, NULL), 0);
        ref[id.num].live = 0;
    }
    double rec = check_filters(c, ref, &r, 150, 10);
    cr_assert_geq(rec, 0.95, "recall@10 %.3f over random composite filters", rec);
    /* each plan alone, on every index (the cost model picks scans at this size) */
    g_plan = NL_PLAN_GRAPH;
    rec = check_filters(c, ref, &r, 100, 10);
    cr_assert_geq(rec, 0.95, "graph plan: recall@10 %.3f", rec);
    g_plan = NL_PLAN_SCAN;
    rec = check_filters(c, ref, &r, 100, 10);
    cr_assert_geq(rec, 0.95, "scan plan: recall@10 %.3f", rec);
    g_plan = 0;
    /* k larger than most match sets: exactly min(k, matches) */
    check_filters(c, ref, &r, 40, 200);
    /* after a reopen (fresh index rebuilt, postings from the store) and a full compaction */
    nl_collection_close(c);
    nl_db_close(db);
    c = open_coll(&db, 0);
    rec = check_filters(c, ref, &r, 60, 10);
    cr_assert_geq(rec, 0.95, "after reopen: recall@10 %.3f", rec);
    nl_compact_report rep;
    cr_assert_eq(nl_collection_compact(c, NL_COMPACT_FULL, 0, &rep), 0, "%s", nl_errdetail());
    rec = check_filters(c, ref, &r, 60, 10);
    cr_assert_geq(rec, 0.95, "after compaction: recall@10 %.3f", rec);
    /* a batch with one filter per query and some unfiltered */
    enum { NQ = 8 };
    float qs[NQ * D];
    nl_filter *fs[NQ] = {0};
    for (int i = 0; i < NQ * D; i++) qs[i] = (float)nl_rng_normal(&r);
    for (int i = 0; i < NQ; i += 2) {
        char t[4096];
        random_filter(&r, 0, t, sizeof t);
        fs[i] = parse_ok(t);
    }
    nl_hit hits[NQ * 10];
    uint32_t counts[NQ];
    nl_search_params p = {.k = 10, .L = 64, .filters = (const nl_filter *const *)fs};
    cr_assert_eq(nl_collection_search_batch(c, qs, NQ, &p, hits, counts, NULL), 0, "%s", nl_errdetail());
    for (int qi = 0; qi < NQ; qi++)
        for (uint32_t i = 0; i < counts[qi]; i++) {
            uint64_t id = hits[qi * 10 + i].num;
            cr_assert(ref[id].live);
            if (fs[qi])
                cr_assert_eq(nl_filter_match_json(fs[qi], ref[id].meta, strlen(ref[id].meta)), 1);
        }
    for (int i = 0; i < NQ; i++) {
        if (!fs[i])
            cr_assert_eq(counts[i], 10u);
        nl_filter_destroy(fs[i]);
    }
    nl_collection_close(c);
    nl_db_close(db);
    free(ref);
}

Test(filter, delete_by_filter_removes_exactly_the_matches)
{
    nl_db *db;
    nl_collection *c = open_coll(&db, 1);
    ref_point *ref = calloc(NPTS, sizeof *ref);
    nl_rng r;
    nl_rng_seed(&r, 5);
    for (uint64_t id = 0; id < 2000; id++) upsert_one(c, ref, id, &r);
    cr_assert_eq(nl_collection_flush(c), 0);
    for (uint64_t id = 2000; id < NPTS; id++) upsert_one(c, ref, id, &r);
    const char *texts[] = {"{\"and\":[{\"field\":\"c\",\"eq\":\"red\"},{\"field\":\"n\",\"lt\":25}]}",
                           "{\"not\":{\"field\":\"t\",\"exists\":true}}"};
    for (int t = 0; t < 2; t++) {
        nl_filter *f = parse_ok(texts[t]);
        size_t want = 0, got = 0;
        for (uint64_t id = 0; id < NPTS; id++)
            if (ref[id].live && nl_filter_match_json(f, ref[id].meta, strlen(ref[id].meta)) == 1) {
                want++;
                ref[id].live = 0;
            }
        cr_assert_eq(nl_collection_delete_by_filter(c, f, &got), 0, "%s", nl_errdetail());
        cr_assert_eq(got, want, "%s: deleted %zu, %zu matched", texts[t], got, want);
        float q[D] = {0};
        nl_hit hits[10];
        nl_search_params p = {.k = 10, .filter = f};
        cr_assert_eq(nl_collection_search(c, q, &p, hits, NULL), 0, "matches remain after delete by filter");
        nl_filter_destroy(f);
    }
    nl_collection_stats st;
    nl_collection_stats_get(c, &st);
    size_t live = 0;
    for (uint64_t id = 0; id < NPTS; id++) live += ref[id].live;
    cr_assert_eq(st.points, live);
    cr_assert_geq(check_filters(c, ref, &r, 40, 10), 0.95);
    nl_collection_close(c);
    nl_db_close(db);
    free(ref);
}
