/* k-means: separable clusters are recovered exactly; results do not depend on the
 * thread count; empty clusters are repaired; bad arguments are refused. */
#include <math.h>

#include "nl_kmeans.h"
#include "test_util.h"

/* k blobs of m points in d dims, centres 100 apart, noise 1. */
static float *blobs(uint32_t k, uint32_t m, uint32_t d, uint32_t *truth)
{
    nl_rng r;
    nl_rng_seed(&r, 11);
    float *x = malloc(sizeof(float) * k * m * d);
    for (uint32_t c = 0; c < k; c++)
        for (uint32_t i = 0; i < m; i++) {
            /* interleave clusters so rows of one blob are not contiguous */
            size_t row = (size_t)i * k + c;
            truth[row] = c;
            for (uint32_t j = 0; j < d; j++)
                x[row * d + j] = (j == c % d ? 100.0f * (float)(c + 1) : 0.0f) + (float)nl_rng_normal(&r);
        }
    return x;
}

Test(kmeans, recovers_separable_clusters)
{
    uint32_t k = 8, m = 200, d = 16, n = k * m;
    uint32_t *truth = malloc(sizeof(uint32_t) * n), *assign = malloc(sizeof(uint32_t) * n);
    float *x = blobs(k, m, d, truth);
    float *cent = malloc(sizeof(float) * k * d);
    nl_kmeans_params p = {.k = k, .iters = 20, .seed = 1, .threads = 2};
    double inertia;
    cr_assert_eq(nl_kmeans(x, n, d, &p, cent, assign, &inertia), 0);
    /* each true cluster maps to exactly one found cluster, and vice versa */
    int map[8];
    for (uint32_t c = 0; c < k; c++) map[c] = -1;
    for (uint32_t i = 0; i < n; i++) {
        if (map[truth[i]] < 0) map[truth[i]] = (int)assign[i];
        cr_assert_eq((int)assign[i], map[truth[i]], "row %u split from its blob", i);
    }
    for (uint32_t a = 0; a < k; a++)
        for (uint32_t b = a + 1; b < k; b++)
            cr_assert_neq(map[a], map[b], "blobs %u and %u merged", a, b);
    /* noise variance 1 per dimension: inertia close to n * d */
    cr_assert(inertia < 1.3 * n * d && inertia > 0.7 * n * d, "inertia %g", inertia);
    free(truth); free(assign); free(x); free(cent);
}

Test(kmeans, same_result_for_any_thread_count)
{
    uint32_t k = 5, m = 300, d = 12, n = k * m;
    uint32_t *truth = malloc(sizeof(uint32_t) * n);
    float *x = blobs(k, m, d, truth);
    float *c1 = malloc(sizeof(float) * 20 * d), *c2 = malloc(sizeof(float) * 20 * d);
    nl_kmeans_params p = {.k = 20, .iters = 10, .seed = 5, .threads = 1};
    cr_assert_eq(nl_kmeans(x, n, d, &p, c1, NULL, NULL), 0);
    p.threads = 3;
    cr_assert_eq(nl_kmeans(x, n, d, &p, c2, NULL, NULL), 0);
    cr_assert_arr_eq(c1, c2, sizeof(float) * 20 * d);
    free(truth); free(x); free(c1); free(c2);
}

Test(kmeans, repairs_empty_clusters)
{
    /* 10 distinct points repeated 10 times; k = 15 forces empty clusters. */
    uint32_t n = 100, d = 4, k = 15;
    float *x = malloc(sizeof(float) * n * d);
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < d; j++)
            x[i * d + j] = (float)((i % 10) * 10 + j);
    float *cent = malloc(sizeof(float) * k * d);
    uint32_t *assign = malloc(sizeof(uint32_t) * n);
    nl_kmeans_params p = {.k = k, .iters = 10, .seed = 2, .threads = 2};
    double inertia;
    cr_assert_eq(nl_kmeans(x, n, d, &p, cent, assign, &inertia), 0);
    for (uint32_t i = 0; i < k * d; i++)
        cr_assert(isfinite(cent[i]));
    for (uint32_t i = 0; i < n; i++)
        cr_assert_lt(assign[i], k);
    cr_assert(inertia < 1.0, "10 distinct points with 15 clusters: inertia %g", inertia);
    free(x); free(cent); free(assign);
}

Test(kmeans, assign_top2_orders_nearest_first)
{
    float c[3 * 2] = {0, 0, 10, 0, 0, 10};
    float x[2 * 2] = {1, 1, 9, 2};
    uint32_t a[4];
    float dd[4];
    cr_assert_eq(nl_kmeans_assign(x, 2, 2, c, 3, 2, 1, a, dd), 0);
    cr_assert_eq(a[0], 0);
    cr_assert_eq(a[2], 1);
    cr_assert_eq(a[3], 0);
    cr_assert_float_eq(dd[0], 2.0f, 1e-4);
    cr_assert(dd[0] <= dd[1] && dd[2] <= dd[3]);
}

Test(kmeans, refuses_bad_arguments)
{
    float x[4] = {0};
    float c[8];
    nl_kmeans_params p = {.k = 3, .iters = 2, .seed = 1, .threads = 1};
    cr_assert_eq(nl_kmeans(x, 2, 2, &p, c, NULL, NULL), NL_EINVAL);
    p.k = 0;
    cr_assert_eq(nl_kmeans(x, 2, 2, &p, c, NULL, NULL), NL_EINVAL);
    cr_assert_eq(nl_kmeans_assign(x, 2, 2, c, 1, 3, 1, (uint32_t[6]){0}, NULL), NL_EINVAL);
}
