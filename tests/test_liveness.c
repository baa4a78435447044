/* The search's promise under deletes: every answer holds min(k, live points) results
 * (min(k, matching live points) with a filter), none of them deleted, and the nearest
 * live points among them — also when a whole neighbourhood of the query was deleted, so
 * that every node the walk meets near the query is a tombstone. That is the shape of a
 * streaming workload (contiguous id ranges inserted cluster by cluster, then deleted),
 * where answers came back with 0 to 9 of 10 results (issue 13). Each case runs on the
 * fresh in-memory index, on a disk segment, and across shards. */
#include "nearline.h"
#include "nl_filter.h"
#include "test_util.h"

static char dir[256];
static void setup(void) { tu_tmpdir(dir, sizeof dir); }
static void teardown(void) { tu_rmtree(dir); }
TestSuite(liveness, .init = setup, .fini = teardown, .timeout = 600);

#define D 16
#define CLUSTERS 8
#define PER 600 /* points per cluster: far more than the list size the searches use */

/* Cluster c's centre; point id's vector is its cluster's centre plus small noise. */
static void centre(uint32_t c, float *v)
{
    nl_rng r;
    nl_rng_seed(&r, 1000 + c);
    for (int j = 0; j < D; j++) v[j] = (float)nl_rng_normal(&r) * 10.0f;
}

static void vec_for(uint64_t id, float *v)
{
    centre((uint32_t)(id / PER) % CLUSTERS, v);
    nl_rng r;
    nl_rng_seed(&r, id * 7919 + 3);
    for (int j = 0; j < D; j++) v[j] += (float)nl_rng_normal(&r) * 0.5f;
}

static nl_collection *make(nl_db **db, uint32_t shards)
{
    nl_db_options o = {.no_background = 1, .threads = 2};
    cr_assert_eq(nl_db_open(dir, &o, db), 0, "%s", nl_errdetail());
    nl_collection_config c = {.dim = D, .metric = NL_METRIC_L2, .dtype = NL_DTYPE_F32, .shards = shards, .R = 16,
                              .L = 40, .pq_bytes = 8, .fresh_capacity = 20000};
    cr_assert_eq(nl_collection_create(*db, "c", &c), 0, "%s", nl_errdetail());
    nl_collection *h;
    cr_assert_eq(nl_collection_open(*db, "c", &h), 0, "%s", nl_errdetail());
    return h;
}

/* Upserts ids [from, to), each with metadata {"odd": id % 2 == 1}. */
static void upsert_range(nl_collection *c, uint64_t from, uint64_t to)
{
    enum { B = 200 };
    nl_point p[B];
    float v[B * D];
    char meta[B][32];
    while (from < to) {
        size_t n = to - from < B ? (size_t)(to - from) : B;
        for (size_t i = 0; i < n; i++) {
            vec_for(from + i, v + i * D);
            int len = snprintf(meta[i], sizeof meta[i], "{\"odd\":%s}", (from + i) % 2 ? "true" : "false");
            p[i] = (nl_point){.id = {.num = from + i}, .vector = v + i * D, .dim = D, .metadata = meta[i],
                              .metadata_len = (size_t)len};
        }
        cr_assert_eq(nl_collection_upsert(c, p, n), 0, "%s", nl_errdetail());
        from += n;
    }
}

static void delete_range(nl_collection *c, uint64_t from, uint64_t to)
{
    for (uint64_t id = from; id < to; id++) {
        nl_id x = {.num = id};
        cr_assert_eq(nl_collection_delete(c, &x, 1, NULL), 0, "%s", nl_errdetail());
    }
}

static float l2(const float *a, const float *b)
{
    double s = 0;
    for (int j = 0; j < D; j++) s += (double)(a[j] - b[j]) * (a[j] - b[j]);
    return (float)s;
}

/* Searches queries inside cluster 0 (which the caller has emptied but for `keep`) and
 * checks each answer: exactly min(k, live matching) hits, none deleted, none failing the
 * filter, distinct, nearest first with exact distances. Half the queries sit on deleted
 * points of the cluster, half next to a survivor, which must then come first: the walk
 * routes through the tombstones to it. live[id] says which ids are live. */
static void check_answers(nl_collection *c, const unsigned char *live, uint64_t nids, const uint64_t *keep,
                          size_t nkeep, const nl_filter *f, uint32_t k, uint32_t L)
{
    uint64_t matching = 0;
    for (uint64_t id = 0; id < nids; id++)
        matching += live[id] && (!f || id % 2 == 1);
    uint32_t want = matching < k ? (uint32_t)matching : k;
    enum { NQ = 40 };
    float qs[NQ * D];
    uint64_t near[NQ];
    nl_rng r;
    nl_rng_seed(&r, 77);
    for (int qi = 0; qi < NQ; qi++) {
        near[qi] = UINT64_MAX;
        if (qi % 2 == 0) {
            vec_for((uint64_t)qi * 13, qs + qi * D); /* a deleted point of cluster 0 */
            continue;
        }
        near[qi] = keep[(size_t)qi / 2 % nkeep];
        vec_for(near[qi], qs + qi * D);
        for (int j = 0; j < D; j++) qs[qi * D + j] += (float)nl_rng_normal(&r) * 0.02f;
        if (f && near[qi] % 2 == 0)
            near[qi] = UINT64_MAX; /* the filter refuses it */
    }
    nl_hit *hits = calloc((size_t)NQ * k, sizeof *hits);
    uint32_t counts[NQ];
    nl_search_params p = {.k = k, .L = L, .filter = f};
    cr_assert_eq(nl_collection_search_batch(c, qs, NQ, &p, hits, counts, NULL), 0, "%s", nl_errdetail());
    for (int qi = 0; qi < NQ; qi++) {
        const nl_hit *h = hits + (size_t)qi * k;
        cr_assert_eq(counts[qi], want, "query %d: %u results, want min(k=%u, live matching=%llu) = %u", qi,
                     counts[qi], k, (unsigned long long)matching, want);
        for (uint32_t i = 0; i < counts[qi]; i++) {
            cr_assert_lt(h[i].num, nids);
            cr_assert(live[h[i].num], "query %d: deleted id %llu returned", qi, (unsigned long long)h[i].num);
            cr_assert(!f || h[i].num % 2 == 1, "query %d: id %llu fails the filter", qi, (unsigned long long)h[i].num);
            for (uint32_t j = 0; j < i; j++)
                cr_assert_neq(h[i].num, h[j].num, "query %d: id %llu twice", qi, (unsigned long long)h[i].num);
            if (i > 0)
                cr_assert_geq(h[i].dist, h[i - 1].dist);
            float v[D];
            vec_for(h[i].num, v);
            cr_assert_float_eq(h[i].dist, l2(qs + qi * D, v), 1e-2 * (1 + h[i].dist));
        }
        if (near[qi] != UINT64_MAX && want > 0)
            cr_assert_eq(h[0].num, near[qi], "query %d (k=%u L=%u): survivor %llu not first (got %llu)", qi, k, L,
                         (unsigned long long)near[qi], (unsigned long long)h[0].num);
    }
    free(hits);
}

/* Inserts every cluster, optionally flushes, then deletes cluster 0 but for three
 * survivors (they stay where they were, amid the tombstones), and checks unfiltered and filtered answers; then deletes all but two
 * points of the whole collection and checks again (answers of 2). */
static void run_case(uint32_t shards, int flush)
{
    nl_db *db;
    nl_collection *c = make(&db, shards);
    const uint64_t n = (uint64_t)CLUSTERS * PER;
    unsigned char *live = calloc(n, 1);
    upsert_range(c, 0, n);
    memset(live, 1, n);
    if (flush)
        cr_assert_eq(nl_collection_flush(c), 0, "%s", nl_errdetail());
    const uint64_t keep[3] = {101, 250, 477};
    for (uint64_t id = 0; id < PER; id++)
        live[id] = id == keep[0] || id == keep[1] || id == keep[2];
    for (uint64_t id = 0; id < PER; id++)
        if (!live[id])
            delete_range(c, id, id + 1);
    nl_filter *odd;
    const char *ftext = "{\"field\":\"odd\",\"eq\":true}";
    cr_assert_eq(nl_filter_parse(ftext, strlen(ftext), &odd), 0, "%s", nl_errdetail());
    check_answers(c, live, n, keep, 3, NULL, 10, 16);
    check_answers(c, live, n, keep, 3, NULL, 10, 64);
    check_answers(c, live, n, keep, 3, odd, 10, 32);
    check_answers(c, live, n, keep, 3, NULL, 100, 100);
    /* Everything but two points gone: answers of exactly two. */
    delete_range(c, PER, n);
    for (uint64_t id = PER; id < n; id++)
        live[id] = 0;
    delete_range(c, keep[0], keep[0] + 1);
    live[keep[0]] = 0;
    check_answers(c, live, n, keep + 1, 2, NULL, 10, 16);
    check_answers(c, live, n, keep + 1, 2, odd, 10, 16);
    nl_filter_destroy(odd);
    free(live);
    nl_collection_close(c);
    nl_db_close(db);
}

Test(liveness, deleted_neighbourhood_in_the_fresh_index) { run_case(1, 0); }
Test(liveness, deleted_neighbourhood_in_a_segment) { run_case(1, 1); }
Test(liveness, deleted_neighbourhood_across_shards) { run_case(3, 1); }
