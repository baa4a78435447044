/* Product quantization: error falls as codes grow; tables agree with decoded vectors;
 * serialisation round-trips and rejects corrupt bytes. */
#include <math.h>

#include "nl_dataset.h"
#include "nl_pq.h"
#include "test_util.h"

static float *clustered(size_t n, uint32_t d, uint64_t seed)
{
    nl_rng r;
    nl_rng_seed(&r, seed);
    float *cent = malloc(sizeof(float) * 32 * d);
    tu_fill_f32(&r, cent, 32 * (size_t)d, 5.0f);
    float *x = malloc(sizeof(float) * n * d);
    for (size_t i = 0; i < n; i++) {
        const float *c = cent + nl_rng_below(&r, 32) * d;
        for (uint32_t j = 0; j < d; j++)
            x[i * d + j] = c[j] + (float)nl_rng_normal(&r);
    }
    free(cent);
    return x;
}

static double recon_mse(const nl_pq *pq, const nl_vecset *vs)
{
    uint32_t m = nl_pq_m(pq), d = vs->dim;
    uint8_t *codes = malloc(vs->n * m);
    cr_assert_eq(nl_pq_encode(pq, vs, codes, 2), 0);
    float *rec = malloc(sizeof(float) * d);
    double err = 0;
    for (size_t i = 0; i < vs->n; i++) {
        nl_pq_decode(pq, codes + i * m, rec);
        const float *x = (const float *)vs->data + i * d;
        for (uint32_t j = 0; j < d; j++)
            err += (x[j] - rec[j]) * (x[j] - rec[j]);
    }
    free(codes);
    free(rec);
    return err / (double)vs->n;
}

Test(pq, reconstruction_error_decreases_with_more_codes)
{
    uint32_t d = 64;
    size_t n = 6000;
    float *x = clustered(n, d, 1);
    nl_vecset vs = {x, n, d, NL_DTYPE_F32};
    double prev = INFINITY;
    uint32_t ms[] = {4, 8, 16, 32, 64};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        nl_pq *pq;
        nl_pq_params p = {.m = ms[i], .iters = 10, .seed = 3, .threads = 2};
        cr_assert_eq(nl_pq_train(&vs, NL_METRIC_L2, &p, &pq), 0);
        double e = recon_mse(pq, &vs);
        cr_assert(e < prev * 0.95, "m=%u: error %g not below %g", ms[i], e, prev);
        prev = e;
        nl_pq_destroy(pq);
    }
    free(x);
}

Test(pq, tables_match_decoded_vectors_for_l2_and_ip)
{
    uint32_t d = 30; /* not a multiple of m: uneven chunks */
    size_t n = 3000;
    float *x = clustered(n, d, 2);
    nl_vecset vs = {x, n, d, NL_DTYPE_F32};
    for (int metric = NL_METRIC_L2; metric <= NL_METRIC_IP; metric++) {
        nl_pq *pq;
        nl_pq_params p = {.m = 8, .iters = 8, .seed = 4, .threads = 2};
        cr_assert_eq(nl_pq_train(&vs, (nl_metric)metric, &p, &pq), 0);
        uint8_t *codes = malloc(n * 8);
        cr_assert_eq(nl_pq_encode(pq, &vs, codes, 2), 0);
        float table[256 * 8], rec[30], q[30];
        nl_rng r;
        nl_rng_seed(&r, 9);
        tu_fill_f32(&r, q, d, 5.0f);
        nl_pq_table(pq, q, table);
        for (size_t i = 0; i < 50; i++) {
            nl_pq_decode(pq, codes + i * 8, rec);
            double want = 0;
            for (uint32_t j = 0; j < d; j++)
                want += metric == NL_METRIC_L2 ? (q[j] - rec[j]) * (q[j] - rec[j]) : -(double)q[j] * rec[j];
            float got = nl_pq_adc(table, codes + i * 8, 8);
            cr_assert(fabs(got - want) <= 1e-3 * (fabs(want) + 1), "metric %d row %zu: %g vs %g", metric, i,
                      (double)got, want);
        }
        free(codes);
        nl_pq_destroy(pq);
    }
    free(x);
}

Test(pq, serialisation_round_trips_and_rejects_corruption)
{
    uint32_t d = 16;
    size_t n = 500; /* fewer than 256 per chunk is fine; also exercises small n */
    float *x = clustered(n, d, 3);
    nl_vecset vs = {x, n, d, NL_DTYPE_F32};
    nl_pq *pq, *back;
    nl_pq_params p = {.m = 4, .iters = 5, .seed = 1, .threads = 1};
    cr_assert_eq(nl_pq_train(&vs, NL_METRIC_COSINE, &p, &pq), 0);
    size_t len = nl_pq_serialized_size(pq);
    unsigned char *buf = malloc(len);
    cr_assert_eq(nl_pq_serialize(pq, buf, len), 0);
    cr_assert_eq(nl_pq_deserialize(buf, len, &back), 0);
    cr_assert_eq(nl_pq_metric(back), NL_METRIC_COSINE);
    float t1[256 * 4], t2[256 * 4];
    nl_pq_table(pq, x, t1);
    nl_pq_table(back, x, t2);
    cr_assert_arr_eq(t1, t2, sizeof t1);
    nl_pq_destroy(back);
    /* corruptions */
    cr_assert_eq(nl_pq_deserialize(buf, len - 1, &back), NL_ECORRUPT);
    cr_assert_eq(nl_pq_deserialize(buf, 10, &back), NL_ECORRUPT);
    size_t spots[] = {0, 4, 8, 12, 16, 24, 28};
    for (size_t i = 0; i < sizeof spots / sizeof spots[0]; i++) {
        unsigned char *c = malloc(len);
        memcpy(c, buf, len);
        c[spots[i]] ^= 0x5a;
        cr_assert_eq(nl_pq_deserialize(c, len, &back), NL_ECORRUPT, "flip at %zu accepted", spots[i]);
        cr_assert_null(back);
        free(c);
    }
    unsigned char *c = malloc(len);
    memcpy(c, buf, len);
    float nan = NAN;
    memcpy(c + len - 4, &nan, 4);
    cr_assert_eq(nl_pq_deserialize(c, len, &back), NL_ECORRUPT);
    free(c);
    free(buf);
    nl_pq_destroy(pq);
    free(x);
}

Test(pq, refuses_more_codes_than_dimensions)
{
    float x[8] = {0};
    nl_vecset vs = {x, 2, 4, NL_DTYPE_F32};
    nl_pq *pq;
    nl_pq_params p = {.m = 5};
    cr_assert_eq(nl_pq_train(&vs, NL_METRIC_L2, &p, &pq), NL_EINVAL);
    cr_assert_null(pq);
}

Test(pq, trains_on_u8_sift_when_available)
{
    char path[1024];
    TU_REQUIRE_DATA(path, "sift-5k/base.bvecs");
    void *data;
    size_t n;
    uint32_t d;
    nl_dtype t;
    cr_assert_eq(nl_dataset_load(path, NL_FORMAT_AUTO, &data, &n, &d, &t), 0);
    nl_vecset vs = {data, n, d, t};
    nl_pq *pq;
    nl_pq_params p = {.m = 32, .iters = 8, .seed = 1, .threads = 2};
    cr_assert_eq(nl_pq_train(&vs, NL_METRIC_L2, &p, &pq), 0);
    uint8_t *codes = malloc(n * 32);
    cr_assert_eq(nl_pq_encode(pq, &vs, codes, 2), 0);
    /* the code of a vector ranks that vector among the closest by ADC */
    float *table = malloc(sizeof(float) * 256 * 32), q[128];
    nl_convert_to_f32(t, data, q, d);
    nl_pq_table(pq, q, table);
    float self = nl_pq_adc(table, codes, 32);
    size_t better = 0;
    for (size_t i = 1; i < n; i++)
        if (nl_pq_adc(table, codes + i * 32, 32) < self) better++;
    cr_assert(better < 10, "%zu codes closer than the vector's own", better);
    free(table);
    free(codes);
    free(data);
    nl_pq_destroy(pq);
}
