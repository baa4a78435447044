/* The shard write path: read-your-writes, replace, delete, string ids, whole-batch
 * validation, recovery at open, and a synced upsert surviving SIGKILL. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>

#include "nl_shard.h"
#include "test_util.h"

static char dir[256], sdir[300];
static void setup(void)
{
    tu_tmpdir(dir, sizeof dir);
    snprintf(sdir, sizeof sdir, "%s/shard0", dir);
}
static void teardown(void) { tu_rmtree(dir); }
TestSuite(shard, .init = setup, .fini = teardown);

#define D 24

static void vec_for(uint64_t id, float *v)
{
    nl_rng r;
    nl_rng_seed(&r, id * 7919 + 1);
    for (int j = 0; j < D; j++) v[j] = (float)nl_rng_normal(&r);
}

static nl_shard *make(uint32_t cap)
{
    nl_shard_config c = {.dim = D, .dtype = NL_DTYPE_F32, .metric = NL_METRIC_L2, .R = 24, .L = 48, .fresh_capacity = cap};
    nl_shard *sh;
    cr_assert_eq(nl_shard_create(sdir, &c, &sh), 0, "%s", nl_errdetail());
    return sh;
}

static void upsert_range(nl_shard *sh, uint64_t from, uint64_t to)
{
    size_t n = to - from;
    nl_point *p = calloc(n, sizeof *p);
    float *v = malloc(sizeof(float) * D * n);
    for (size_t i = 0; i < n; i++) {
        vec_for(from + i, v + i * D);
        p[i] = (nl_point){.id = {.num = from + i}, .vector = v + i * D, .dim = D};
    }
    cr_assert_eq(nl_shard_upsert(sh, p, n), 0, "%s", nl_errdetail());
    free(p);
    free(v);
}

/* The id found first when searching for id's own vector. */
static int first_hit(nl_shard *sh, const float *v, nl_hit *h)
{
    nl_hit hits[10];
    int got = nl_shard_search(sh, v, 10, 64, hits);
    cr_assert_geq(got, 0, "%s", nl_errdetail());
    if (got > 0) *h = hits[0];
    return got;
}

Test(shard, read_your_writes_replace_and_delete)
{
    nl_shard *sh = make(10000);
    float v[D];
    for (uint64_t b = 0; b < 20; b++) {
        upsert_range(sh, b * 100, b * 100 + 100);
        /* the batch just acknowledged is searchable at once */
        nl_hit h;
        vec_for(b * 100 + 37, v);
        cr_assert_gt(first_hit(sh, v, &h), 0);
        cr_assert_eq(h.num, b * 100 + 37, "batch %llu: found %llu", (unsigned long long)b, (unsigned long long)h.num);
        cr_assert_float_eq(h.dist, 0.0f, 1e-6);
    }
    cr_assert_eq(nl_shard_count(sh), 2000);
    /* replace id 7: only the new vector is found, under id 7 */
    float old7[D], new7[D];
    vec_for(7, old7);
    vec_for(999999, new7);
    nl_point p = {.id = {.num = 7}, .vector = new7, .dim = D};
    cr_assert_eq(nl_shard_upsert(sh, &p, 1), 0);
    cr_assert_eq(nl_shard_count(sh), 2000);
    nl_hit hits[10];
    int got = nl_shard_search(sh, old7, 10, 64, hits);
    for (int i = 0; i < got; i++)
        if (hits[i].num == 7) {
            double dd = 0;
            for (int j = 0; j < D; j++) dd += (double)(old7[j] - new7[j]) * (old7[j] - new7[j]);
            cr_assert_float_eq(hits[i].dist, dd, 1e-3 * dd, "id 7 came back with its old vector");
        }
    nl_hit h;
    cr_assert_gt(first_hit(sh, new7, &h), 0);
    cr_assert_eq(h.num, 7);
    float got7[D];
    cr_assert_eq(nl_shard_get(sh, &p.id, got7, NULL, NULL), 0);
    cr_assert_arr_eq(got7, new7, sizeof got7);
    /* delete id 5 (and an id that does not exist) */
    nl_id del[2] = {{.num = 5}, {.num = 123456}};
    size_t deleted;
    cr_assert_eq(nl_shard_delete(sh, del, 2, &deleted), 0);
    cr_assert_eq(deleted, 1);
    cr_assert_eq(nl_shard_count(sh), 1999);
    vec_for(5, v);
    got = nl_shard_search(sh, v, 10, 64, hits);
    for (int i = 0; i < got; i++) cr_assert_neq(hits[i].num, 5, "deleted id returned");
    cr_assert_eq(nl_shard_get(sh, &del[0], v, NULL, NULL), NL_ENOTFOUND);
    nl_shard_close(sh);
}

Test(shard, string_ids_metadata_and_whole_batch_validation)
{
    nl_shard *sh = make(1000);
    float a[D], b[D];
    vec_for(1, a);
    vec_for(2, b);
    const char *meta = "{\"lang\":\"en\",\"year\":2024,\"tags\":[\"x\",\"y\"]}";
    nl_point good = {.id = {.is_str = 1, .str = "doc-1", .len = 5}, .vector = a, .dim = D, .metadata = meta,
                     .metadata_len = strlen(meta)};
    char longid[300];
    memset(longid, 'x', sizeof longid);
    struct { nl_point bad; int code; const char *says; } cases[] = {
        {{.id = {.is_str = 1, .str = longid, .len = 257}, .vector = b, .dim = D}, NL_EINVAL, "256"},
        {{.id = {.is_str = 1, .str = "", .len = 0}, .vector = b, .dim = D}, NL_EINVAL, "1 to 256"},
        {{.id = {.num = 2}, .vector = b, .dim = D - 1}, NL_EDIM, "dimension"},
        {{.id = {.num = 2}, .vector = b, .dim = D, .metadata = "[1,2]", .metadata_len = 5}, NL_EINVAL, "object"},
        {{.id = {.num = 2}, .vector = b, .dim = D, .metadata = "{\"a\":", .metadata_len = 5}, NL_EINVAL, "JSON"},
        {{.id = {.num = 2}, .vector = b, .dim = D, .metadata = meta, .metadata_len = 70000}, NL_EINVAL, "limit"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        nl_point batch[2] = {good, cases[c].bad};
        cr_assert_eq(nl_shard_upsert(sh, batch, 2), cases[c].code, "case %zu: %s", c, nl_errdetail());
        cr_assert(strstr(nl_errdetail(), cases[c].says) != NULL, "case %zu: '%s'", c, nl_errdetail());
        cr_assert_eq(nl_shard_count(sh), 0, "case %zu: half-applied batch", c);
        cr_assert_eq(nl_shard_get(sh, &good.id, NULL, NULL, NULL), NL_ENOTFOUND);
    }
    float nanv[D];
    memcpy(nanv, b, sizeof nanv);
    nanv[3] = NAN;
    nl_point nanp = {.id = {.num = 9}, .vector = nanv, .dim = D};
    nl_point batch[2] = {good, nanp};
    cr_assert_eq(nl_shard_upsert(sh, batch, 2), NL_EBADVALUE);
    cr_assert_eq(nl_shard_count(sh), 0);
    /* the good point alone goes in, with its metadata */
    cr_assert_eq(nl_shard_upsert(sh, &good, 1), 0, "%s", nl_errdetail());
    char *m;
    size_t ml;
    float back[D];
    cr_assert_eq(nl_shard_get(sh, &good.id, back, &m, &ml), 0);
    cr_assert_str_eq(m, meta);
    cr_assert_arr_eq(back, a, sizeof back);
    free(m);
    nl_hit h;
    cr_assert_gt(first_hit(sh, a, &h), 0);
    cr_assert(h.is_str && h.len == 5 && strcmp(h.str, "doc-1") == 0);
    /* upserting without metadata clears it */
    good.metadata = NULL;
    good.metadata_len = 0;
    cr_assert_eq(nl_shard_upsert(sh, &good, 1), 0);
    cr_assert_eq(nl_shard_get(sh, &good.id, NULL, &m, &ml), 0);
    cr_assert_null(m);
    /* a u8 collection refuses values it cannot hold */
    nl_shard_close(sh);
}

Test(shard, reopen_recovers_fresh_index_and_tombstones)
{
    nl_shard *sh = make(5000);
    upsert_range(sh, 0, 1500);
    float v[D];
    vec_for(4242, v);
    nl_point p = {.id = {.num = 10}, .vector = v, .dim = D};
    cr_assert_eq(nl_shard_upsert(sh, &p, 1), 0);
    nl_id del = {.num = 11};
    cr_assert_eq(nl_shard_delete(sh, &del, 1, NULL), 0);
    nl_shard_close(sh);
    cr_assert_eq(nl_shard_open(sdir, &sh), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_shard_count(sh), 1499);
    nl_hit h;
    cr_assert_gt(first_hit(sh, v, &h), 0);
    cr_assert_eq(h.num, 10, "the replacement survives a reopen");
    vec_for(11, v);
    nl_hit hits[10];
    int got = nl_shard_search(sh, v, 10, 64, hits);
    for (int i = 0; i < got; i++) cr_assert_neq(hits[i].num, 11, "a deletion did not survive a reopen");
    vec_for(777, v);
    cr_assert_gt(first_hit(sh, v, &h), 0);
    cr_assert_eq(h.num, 777);
    /* new writes after recovery continue the sequence */
    upsert_range(sh, 1500, 1600);
    cr_assert_eq(nl_shard_count(sh), 1599);
    nl_shard_close(sh);
    nl_shard_config c = {.dim = D, .dtype = NL_DTYPE_F32, .metric = NL_METRIC_L2};
    cr_assert_eq(nl_shard_create(sdir, &c, &sh), NL_EEXISTS);
}

Test(shard, full_fresh_index_refuses_instead_of_growing)
{
    nl_shard *sh = make(150);
    upsert_range(sh, 0, 100);
    nl_point p[60];
    float v[60 * D];
    for (int i = 0; i < 60; i++) {
        vec_for(1000 + i, v + i * D);
        p[i] = (nl_point){.id = {.num = 1000 + i}, .vector = v + i * D, .dim = D};
    }
    cr_assert_eq(nl_shard_upsert(sh, p, 60), -EBUSY);
    cr_assert_eq(nl_shard_count(sh), 100);
    nl_shard_close(sh);
}

Test(shard, acknowledged_upsert_survives_sigkill)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        nl_shard_config c = {.dim = D, .dtype = NL_DTYPE_F32, .metric = NL_METRIC_L2, .R = 16, .L = 32, .fresh_capacity = 1000};
        nl_shard *sh;
        if (nl_shard_create(sdir, &c, &sh) != 0) _exit(3);
        nl_point p[200];
        float v[200 * D];
        for (int i = 0; i < 200; i++) {
            vec_for((uint64_t)i, v + i * D);
            p[i] = (nl_point){.id = {.num = (uint64_t)i}, .vector = v + i * D, .dim = D};
        }
        if (nl_shard_upsert(sh, p, 200) != 0) _exit(4);
        raise(SIGKILL);
        _exit(5);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "status %d", status);
    nl_shard *sh;
    cr_assert_eq(nl_shard_open(sdir, &sh), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_shard_count(sh), 200);
    float v[D];
    for (uint64_t i = 0; i < 200; i += 17) {
        vec_for(i, v);
        nl_hit h;
        cr_assert_gt(first_hit(sh, v, &h), 0);
        cr_assert_eq(h.num, i);
    }
    nl_shard_close(sh);
}
