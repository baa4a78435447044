/* RaBitQ: every SIMD kernel against the scalar reference over dimensions 1..1024 and
 * 1..8 bits; the estimate within its stated error bound on random data, for every
 * stored type and metric; error falls as bits grow; serialisation round-trips and
 * rejects hostile bytes. */
#include <math.h>

#include "nl_distance.h"
#include "nl_rabitq.h"
#include "test_util.h"

Test(rabitq, kernels_match_scalar)
{
    nl_rabitq_ip_fn ref = nl_rabitq_kernel(NL_ISA_SCALAR);
    cr_assert(ref != NULL);
    nl_rng r;
    nl_rng_seed(&r, 3);
    size_t checked = 0;
    for (nl_isa isa = NL_ISA_AVX2; isa <= NL_ISA_AVX512; isa++) {
        nl_rabitq_ip_fn f = nl_rabitq_kernel(isa);
        if (!f)
            continue; /* this CPU lacks it */
        for (uint32_t d = 1; d <= 1024; d += (d < 64 ? 1 : 37)) {
            uint32_t pb = (d + 7) / 8;
            float *q = calloc(8 * pb, sizeof(float));
            uint8_t *planes = malloc((size_t)pb * 8);
            tu_fill_f32(&r, q, d, 3.0f);
            for (uint32_t bits = 1; bits <= 8; bits++) {
                for (size_t i = 0; i < (size_t)pb * bits; i++)
                    planes[i] = (uint8_t)nl_rng_next(&r);
                float a = ref(planes, q, pb, bits), b = f(planes, q, pb, bits);
                double scale = 0;
                for (uint32_t i = 0; i < d; i++)
                    scale += fabs(q[i]);
                scale *= (double)(1u << bits);
                cr_assert(fabs(a - b) <= 1e-5 * scale + 1e-6, "%s d=%u bits=%u: %g vs %g", nl_isa_name(isa), d, bits,
                          (double)a, (double)b);
                checked++;
            }
            free(q);
            free(planes);
        }
    }
    cr_log_info("rabitq kernels: %zu cases matched the scalar reference", checked);
}

/* n rows of dimension d, Gaussian clusters, converted to dtype t. */
static void *rows_of(nl_dtype t, size_t n, uint32_t d, uint64_t seed, float *f32)
{
    nl_rng r;
    nl_rng_seed(&r, seed);
    for (size_t i = 0; i < n * d; i++) {
        float v = (float)nl_rng_normal(&r) * 20.0f + (i % d % 7) * 3.0f;
        if (t == NL_DTYPE_U8) v = roundf(fminf(255.0f, fmaxf(0.0f, v + 128.0f)));
        if (t == NL_DTYPE_I8) v = roundf(fminf(127.0f, fmaxf(-128.0f, v)));
        f32[i] = v;
    }
    size_t es = nl_dtype_size(t);
    unsigned char *out = malloc(es * n * d);
    for (size_t i = 0; i < n * d; i++) {
        if (t == NL_DTYPE_F32) memcpy(out + 4 * i, &f32[i], 4);
        else if (t == NL_DTYPE_U8) out[i] = (uint8_t)f32[i];
        else if (t == NL_DTYPE_I8) ((int8_t *)out)[i] = (int8_t)f32[i];
        else ((uint16_t *)out)[i] = nl_f32_to_f16(f32[i]);
    }
    if (t == NL_DTYPE_F16)
        nl_convert_to_f32(NL_DTYPE_F16, out, f32, n * d); /* compare against what is stored */
    return out;
}

/* Fraction of (query, point) pairs whose estimate misses the exact distance by more than
 * its bound, and the mean relative error. */
static void check_estimates(nl_dtype t, nl_metric m, uint32_t d, uint32_t bits, float eps0, double *miss, double *rel)
{
    size_t n = 1500, nq = 20;
    float *x = malloc(sizeof(float) * n * d), *qs = malloc(sizeof(float) * nq * d);
    void *data = rows_of(t, n, d, 11 + d + bits, x);
    void *qd = rows_of(t, nq, d, 99 + d, qs);
    free(qd);
    nl_vecset vs = {data, n, d, t};
    nl_rabitq *rq = NULL;
    nl_rabitq_params p = {.bits = bits, .seed = 5, .threads = 2};
    cr_assert_eq(nl_rabitq_train(&vs, m, &p, &rq), 0, "%s", nl_errdetail());
    uint32_t cb = nl_rabitq_code_bytes(rq);
    cr_assert_eq(cb, bits * ((d + 7) / 8) + 6);
    uint8_t *codes = malloc((size_t)cb * n);
    cr_assert_eq(nl_rabitq_encode(rq, &vs, codes, 2), 0);
    float *qr = malloc(sizeof(float) * nl_rabitq_query_floats(rq));
    nl_dist_fn exact = nl_distance_fn(m, NL_DTYPE_F32);
    size_t bad = 0, pairs = 0;
    double relsum = 0;
    for (size_t qi = 0; qi < nq; qi++) {
        nl_rabitq_query s;
        nl_rabitq_prepare(rq, qs + qi * d, eps0, qr, &s);
        for (size_t i = 0; i < n; i++) {
            float err, est = nl_rabitq_estimate(&s, codes + i * cb, &err);
            float tr = exact(qs + qi * d, x + i * d, d);
            cr_assert(isfinite(est) && isfinite(err) && err >= 0);
            if (fabsf(est - tr) > err + 1e-4f * fabsf(tr))
                bad++;
            relsum += fabs(est - tr) / (fabs(tr) + 1e-9);
            pairs++;
        }
    }
    *miss = (double)bad / (double)pairs;
    *rel = relsum / (double)pairs;
    nl_rabitq_destroy(rq);
    free(codes);
    free(qr);
    free(x);
    free(qs);
    free(data);
}

/* The stated bound: the estimate's error behaves like |r| |q_r| beta / sqrt(D - 1) times
 * a standard normal, so eps0 standard deviations leave out at most the two-sided normal
 * tail, 2 (1 - Phi(eps0)): 5.7 % at 1.9, 0.27 % at 3. */
Test(rabitq, estimate_within_bound_every_type_and_metric)
{
    nl_dtype types[] = {NL_DTYPE_F32, NL_DTYPE_F16, NL_DTYPE_U8, NL_DTYPE_I8};
    const float eps[] = {1.9f, 3.0f};
    const double tail[] = {0.057, 0.0027};
    for (int ti = 0; ti < 4; ti++)
        for (nl_metric m = NL_METRIC_L2; m <= NL_METRIC_COSINE; m++)
            for (uint32_t bits = 1; bits <= 4; bits += 3)
                for (int e = 0; e < 2; e++) {
                    double miss, rel;
                    check_estimates(types[ti], m, 96, bits, eps[e], &miss, &rel);
                    cr_log_info("rabitq %s %s bits=%u eps0=%.1f: %.4f of pairs outside the bound (tail %.4f), "
                                "mean rel error %.4f", nl_dtype_name(types[ti]), nl_metric_name(m), bits,
                                (double)eps[e], miss, tail[e], rel);
                    cr_assert(miss <= tail[e], "%s %s bits=%u eps0=%.1f: %.4f of estimates outside their bound",
                              nl_dtype_name(types[ti]), nl_metric_name(m), bits, (double)eps[e], miss);
                }
}

Test(rabitq, error_falls_with_bits_and_dimensions_are_any)
{
    double prev = INFINITY;
    for (uint32_t bits = 1; bits <= 8; bits++) {
        double miss, rel;
        check_estimates(NL_DTYPE_F32, NL_METRIC_L2, 128, bits, 3.0f, &miss, &rel);
        cr_log_info("rabitq d=128 bits=%u: mean rel error %.5f, %.4f outside the bound at eps0=3", bits, rel, miss);
        cr_assert(rel < prev, "bits=%u: mean relative error %.5f did not fall (was %.5f)", bits, rel, prev);
        cr_assert(miss <= 0.0027);
        prev = rel;
    }
    cr_assert(prev < 0.01, "8 bits: mean relative error %.5f", prev);
    uint32_t dims[] = {1, 2, 3, 7, 9, 100, 257};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++) {
        double miss, rel;
        check_estimates(NL_DTYPE_F32, NL_METRIC_L2, dims[i], 2, 3.0f, &miss, &rel);
        cr_assert(isfinite(rel) && (dims[i] < 8 || miss <= 0.0027), "d=%u: miss %.4f rel %.4f", dims[i], miss, rel);
    }
}

Test(rabitq, serialisation_round_trips_and_rejects_hostile_bytes)
{
    uint32_t d = 24;
    size_t n = 400;
    float *x = malloc(sizeof(float) * n * d);
    void *data = rows_of(NL_DTYPE_F32, n, d, 7, x);
    nl_vecset vs = {data, n, d, NL_DTYPE_F32};
    nl_rabitq *rq = NULL, *back = NULL;
    nl_rabitq_params p = {.bits = 3, .seed = 9, .threads = 1};
    cr_assert_eq(nl_rabitq_train(&vs, NL_METRIC_L2, &p, &rq), 0);
    size_t len = nl_rabitq_serialized_size(rq);
    unsigned char *buf = malloc(len);
    cr_assert_eq(nl_rabitq_serialize(rq, buf, len), 0);
    cr_assert_eq(nl_rabitq_deserialize(buf, len, &back), 0);
    uint32_t cb = nl_rabitq_code_bytes(rq);
    uint8_t *c1 = malloc(cb * n), *c2 = malloc(cb * n);
    cr_assert_eq(nl_rabitq_encode(rq, &vs, c1, 1), 0);
    cr_assert_eq(nl_rabitq_encode(back, &vs, c2, 2), 0);
    cr_assert_eq(memcmp(c1, c2, cb * n), 0, "a deserialised quantizer encodes differently");
    cr_assert_eq(nl_rabitq_kappa(rq), nl_rabitq_kappa(back));
    cr_assert_eq(nl_rabitq_centroids(rq), nl_rabitq_centroids(back));
    nl_rabitq_destroy(back);
    for (size_t l = 0; l < len; l += (l < 64 ? 1 : 97)) {
        back = NULL;
        cr_assert_eq(nl_rabitq_deserialize(buf, l, &back), NL_ECORRUPT, "truncated to %zu", l);
        cr_assert_null(back);
    }
    for (size_t i = 0; i < 48; i++) { /* the header: every byte that is checked */
        if (i >= 24 && i < 32) continue; /* the seed is informational */
        unsigned char *h = malloc(len);
        memcpy(h, buf, len);
        h[i] ^= 0x5a;
        back = NULL;
        int rc = nl_rabitq_deserialize(h, len, &back);
        if (i >= 32 && i < 36 && rc == 0) { /* kappa may change to another valid value */
            nl_rabitq_destroy(back);
        } else {
            cr_assert_eq(rc, NL_ECORRUPT, "header byte %zu spoilt: %d", i, rc);
        }
        free(h);
    }
    float nan = NAN; /* a NaN in the centroid or an impossible rotation entry */
    memcpy(buf + 48 + 4 * 3, &nan, 4);
    cr_assert_eq(nl_rabitq_deserialize(buf, len, &back), NL_ECORRUPT);
    nl_rabitq_serialize(rq, buf, len);
    float big = 7.0f;
    uint32_t C = nl_rabitq_centroids(rq);
    memcpy(buf + 48 + 4 * (C * d + C) + 4 * 5, &big, 4);
    cr_assert_eq(nl_rabitq_deserialize(buf, len, &back), NL_ECORRUPT);
    nl_rabitq_params bad = {.bits = 9};
    cr_assert_eq(nl_rabitq_train(&vs, NL_METRIC_L2, &bad, &back), NL_EINVAL);
    nl_rabitq_destroy(rq);
    free(buf);
    free(c1);
    free(c2);
    free(x);
    free(data);
}
