/*
 * kmeans.c — see nl_kmeans.h. Assignment: rows are cut into fixed blocks; each block
 * computes its dot products with all centroids in one sgemm (OpenBLAS pinned to one
 * thread, since we parallelise over blocks ourselves), then adds the norms and takes the
 * minimum. Update: points are bucketed by cluster with a counting sort (stable, so
 * sums run in row order), and clusters are summed in parallel in double precision; this
 * keeps results identical for any thread count.
 */
#include "nl_kmeans.h"

#include <cblas.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nl_util.h"


typedef struct {
    const float *x;
    size_t n;
    uint32_t d;
    const float *c;
    uint32_t k;
    uint32_t top;
    const float *cnorm;
    size_t block;
    float **scratch; /* per thread: block*k floats */
    uint32_t *assign;
    float *dist;
} assign_ctx;

static int assign_task(void *vctx, size_t task, unsigned th)
{
    assign_ctx *a = vctx;
    size_t r0 = task * a->block;
    size_t rows = a->n - r0 < a->block ? a->n - r0 : a->block;
    float *ip = a->scratch[th];
    const float *xb = a->x + r0 * a->d;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)a->k, (int)a->d, -2.0f,
                xb, (int)a->d, a->c, (int)a->d, 0.0f, ip, (int)a->k);
    for (size_t i = 0; i < rows; i++) {
        const float *xi = xb + i * a->d;
        float xn = 0.0f;
        for (uint32_t j = 0; j < a->d; j++)
            xn += xi[j] * xi[j];
        const float *row = ip + i * a->k;
        float b0 = FLT_MAX, b1 = FLT_MAX;
        uint32_t i0 = 0, i1 = 0;
        for (uint32_t c = 0; c < a->k; c++) {
            float v = row[c] + a->cnorm[c];
            if (v < b0) {
                b1 = b0; i1 = i0;
                b0 = v; i0 = c;
            } else if (v < b1) {
                b1 = v; i1 = c;
            }
        }
        float d0 = b0 + xn, d1 = b1 + xn;
        if (d0 < 0) d0 = 0;
        if (d1 < 0) d1 = 0;
        a->assign[(r0 + i) * a->top] = i0;
        if (a->dist) a->dist[(r0 + i) * a->top] = d0;
        if (a->top == 2) {
            if (a->k == 1) { i1 = i0; d1 = d0; }
            a->assign[(r0 + i) * 2 + 1] = i1;
            if (a->dist) a->dist[(r0 + i) * 2 + 1] = d1;
        }
    }
    return 0;
}

int nl_kmeans_assign(const float *x, size_t n, uint32_t d, const float *centroids, uint32_t k,
                     uint32_t top, unsigned threads, uint32_t *assign, float *dist)
{
    if (n == 0 || d == 0 || k == 0 || (top != 1 && top != 2))
        return nl_fail(NL_EINVAL, "kmeans_assign: n=%zu d=%u k=%u top=%u", n, d, k, top);
    nl_blas_single_thread();
    if (threads == 0)
        threads = nl_cpu_count();
    size_t block = (4u << 20) / k; /* at most 16 MB of scratch per thread */
    if (block > 1024) block = 1024;
    if (block < 16) block = 16;
    size_t ntasks = (n + block - 1) / block;
    if (threads > ntasks) threads = (unsigned)ntasks;
    float *cnorm = malloc(sizeof(float) * k);
    float **scratch = calloc(threads, sizeof *scratch);
    int rc = 0;
    if (!cnorm || !scratch) { rc = -ENOMEM; goto out; }
    for (unsigned t = 0; t < threads; t++)
        if (!(scratch[t] = malloc(sizeof(float) * block * k))) { rc = -ENOMEM; goto out; }
    for (uint32_t c = 0; c < k; c++) {
        float s = 0;
        for (uint32_t j = 0; j < d; j++)
            s += centroids[(size_t)c * d + j] * centroids[(size_t)c * d + j];
        cnorm[c] = s;
    }
    assign_ctx a = {x, n, d, centroids, k, top, cnorm, block, scratch, assign, dist};
    rc = nl_parallel_for(ntasks, threads, assign_task, &a);
out:
    if (scratch)
        for (unsigned t = 0; t < threads; t++) free(scratch[t]);
    free(scratch);
    free(cnorm);
    return rc;
}

/* ---- k-means++ seeding ---- */

typedef struct {
    const float *x;
    uint32_t d;
    size_t n;
    const float *c; /* the newest centre */
    float *mind;
    size_t block;
} pp_ctx;

static int pp_task(void *vctx, size_t task, unsigned th)
{
    (void)th;
    pp_ctx *p = vctx;
    size_t r0 = task * p->block, r1 = r0 + p->block < p->n ? r0 + p->block : p->n;
    for (size_t i = r0; i < r1; i++) {
        const float *xi = p->x + i * p->d;
        float s = 0;
        for (uint32_t j = 0; j < p->d; j++) {
            float t = xi[j] - p->c[j];
            s += t * t;
        }
        if (s < p->mind[i])
            p->mind[i] = s;
    }
    return 0;
}

static int kmeanspp(const float *x, size_t n, uint32_t d, uint32_t k, nl_rng *rng, unsigned threads,
                    float *centroids)
{
    float *mind = malloc(sizeof(float) * n);
    if (!mind)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        mind[i] = FLT_MAX;
    size_t first = nl_rng_below(rng, n);
    memcpy(centroids, x + first * d, sizeof(float) * d);
    pp_ctx p = {x, d, n, centroids, mind, 4096};
    size_t ntasks = (n + p.block - 1) / p.block;
    for (uint32_t c = 1; c < k; c++) {
        p.c = centroids + (size_t)(c - 1) * d;
        nl_parallel_for(ntasks, threads, pp_task, &p);
        double total = 0;
        for (size_t i = 0; i < n; i++)
            total += mind[i];
        size_t pick;
        if (total <= 0) {
            pick = nl_rng_below(rng, n); /* all points coincide with centres */
        } else {
            double r = nl_rng_double(rng) * total, acc = 0;
            pick = n - 1;
            for (size_t i = 0; i < n; i++) {
                acc += mind[i];
                if (acc > r) { pick = i; break; }
            }
        }
        memcpy(centroids + (size_t)c * d, x + pick * d, sizeof(float) * d);
    }
    free(mind);
    return 0;
}

/* ---- Lloyd update ---- */

typedef struct {
    const float *x;
    uint32_t d;
    uint32_t k;
    const size_t *start;   /* k+1 bucket offsets */
    const uint32_t *order; /* rows by cluster, ascending row within a cluster */
    float *centroids;
    size_t cblock;
} upd_ctx;

static int update_task(void *vctx, size_t task, unsigned th)
{
    (void)th;
    upd_ctx *u = vctx;
    uint32_t c0 = (uint32_t)(task * u->cblock);
    uint32_t c1 = c0 + u->cblock < u->k ? (uint32_t)(c0 + u->cblock) : u->k;
    double *acc = malloc(sizeof(double) * u->d);
    if (!acc)
        return -ENOMEM;
    for (uint32_t c = c0; c < c1; c++) {
        size_t cnt = u->start[c + 1] - u->start[c];
        if (cnt == 0)
            continue; /* repaired afterwards */
        memset(acc, 0, sizeof(double) * u->d);
        for (size_t t = u->start[c]; t < u->start[c + 1]; t++) {
            const float *xi = u->x + (size_t)u->order[t] * u->d;
            for (uint32_t j = 0; j < u->d; j++)
                acc[j] += xi[j];
        }
        for (uint32_t j = 0; j < u->d; j++)
            u->centroids[(size_t)c * u->d + j] = (float)(acc[j] / (double)cnt);
    }
    free(acc);
    return 0;
}

int nl_kmeans(const float *x, size_t n, uint32_t d, const nl_kmeans_params *p, float *centroids,
              uint32_t *assign_out, double *inertia_out)
{
    if (!x || !centroids || !p || n == 0 || d == 0 || p->k == 0 || p->k > n)
        return nl_fail(NL_EINVAL, "kmeans: n=%zu d=%u k=%u (need 1 <= k <= n)", n, d, p ? p->k : 0);
    uint32_t k = p->k;
    unsigned threads = p->threads ? p->threads : nl_cpu_count();
    nl_rng rng;
    nl_rng_seed(&rng, p->seed);
    uint32_t *assign = assign_out ? assign_out : malloc(sizeof(uint32_t) * n);
    float *dist = malloc(sizeof(float) * n);
    size_t *start = malloc(sizeof(size_t) * (k + 1));
    uint32_t *order = malloc(sizeof(uint32_t) * n);
    int rc = 0;
    if (!assign || !dist || !start || !order) {
        rc = -ENOMEM;
        goto out;
    }
    /* Seed on a strided subsample: k-means++ costs O(n k d), and beyond a few dozen
     * points per cluster more rows do not improve the seeds, only the Lloyd steps. */
    {
        size_t ns = (size_t)k * 32 > 4096 ? (size_t)k * 32 : 4096;
        if (ns >= n) {
            rc = kmeanspp(x, n, d, k, &rng, threads, centroids);
        } else {
            float *sub = malloc(sizeof(float) * ns * d);
            if (!sub) { rc = -ENOMEM; goto out; }
            double stride = (double)n / (double)ns;
            for (size_t i = 0; i < ns; i++)
                memcpy(sub + i * d, x + (size_t)(i * stride) * d, sizeof(float) * d);
            rc = kmeanspp(sub, ns, d, k, &rng, threads, centroids);
            free(sub);
        }
        if (rc)
            goto out;
    }
    double prev = HUGE_VAL, inertia = 0;
    uint32_t iters = p->iters ? p->iters : 1;
    for (uint32_t it = 0; it < iters; it++) {
        if ((rc = nl_kmeans_assign(x, n, d, centroids, k, 1, threads, assign, dist)) != 0)
            goto out;
        inertia = 0;
        for (size_t i = 0; i < n; i++)
            inertia += dist[i];
        /* Bucket rows by cluster (stable counting sort). */
        memset(start, 0, sizeof(size_t) * (k + 1));
        for (size_t i = 0; i < n; i++)
            start[assign[i] + 1]++;
        for (uint32_t c = 0; c < k; c++)
            start[c + 1] += start[c];
        {
            size_t *fill = malloc(sizeof(size_t) * k);
            if (!fill) { rc = -ENOMEM; goto out; }
            memcpy(fill, start, sizeof(size_t) * k);
            for (size_t i = 0; i < n; i++)
                order[fill[assign[i]]++] = (uint32_t)i;
            free(fill);
        }
        upd_ctx u = {x, d, k, start, order, centroids, 8};
        if ((rc = nl_parallel_for((k + u.cblock - 1) / u.cblock, threads, update_task, &u)) != 0)
            goto out;
        /* Empty clusters: split the currently largest cluster in two (FAISS-style
         * symmetric perturbation), in cluster order so the result is deterministic. */
        size_t *cnt = malloc(sizeof(size_t) * k);
        if (!cnt) { rc = -ENOMEM; goto out; }
        for (uint32_t c = 0; c < k; c++)
            cnt[c] = start[c + 1] - start[c];
        for (uint32_t c = 0; c < k; c++) {
            if (cnt[c] != 0)
                continue;
            uint32_t big = 0;
            for (uint32_t j = 1; j < k; j++)
                if (cnt[j] > cnt[big]) big = j;
            float *cb = centroids + (size_t)big * d, *cc = centroids + (size_t)c * d;
            for (uint32_t j = 0; j < d; j++) {
                float eps = (j % 2 ? 1.0f : -1.0f) * (1.0f / 1024.0f);
                cc[j] = cb[j] * (1.0f + eps) + eps;
                cb[j] = cb[j] * (1.0f - eps) - eps;
            }
            cnt[c] = cnt[big] / 2;
            cnt[big] -= cnt[c];
        }
        free(cnt);
        if (prev != HUGE_VAL && fabs(prev - inertia) <= 1e-5 * prev)
            break;
        prev = inertia;
    }
    /* Final assignment against the final centroids. */
    if ((rc = nl_kmeans_assign(x, n, d, centroids, k, 1, threads, assign, dist)) != 0)
        goto out;
    inertia = 0;
    for (size_t i = 0; i < n; i++)
        inertia += dist[i];
    if (inertia_out)
        *inertia_out = inertia;
out:
    if (!assign_out)
        free(assign);
    free(dist);
    free(start);
    free(order);
    return rc;
}
