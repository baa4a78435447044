/*
 * pq.c — product quantizer (see nl_pq.h). Training runs one k-means per chunk, chunks in
 * parallel (DiskANN trains them one after another, which dominates its build time).
 * Centroids are kept twice: chunk-major as serialised (cent[off_j*256 + c*len_j + s])
 * and transposed per chunk (tr[off_j*256 + s*256 + c]) so that encoding and table
 * building vectorise across the 256 centroids.
 */
#include "nl_pq.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nl_kmeans.h"
#include "nl_util.h"

struct nl_pq {
    uint32_t dim, m;
    nl_metric metric;
    uint32_t *off;  /* m+1 chunk start dimensions */
    float *mean;    /* dim */
    float *cent;    /* 256*dim, chunk-major */
    float *tr;      /* 256*dim, transposed per chunk */
};

uint32_t nl_pq_dim(const nl_pq *pq) { return pq->dim; }
uint32_t nl_pq_m(const nl_pq *pq) { return pq->m; }
nl_metric nl_pq_metric(const nl_pq *pq) { return pq->metric; }

void nl_pq_destroy(nl_pq *pq)
{
    if (!pq)
        return;
    free(pq->off);
    free(pq->mean);
    free(pq->cent);
    free(pq->tr);
    free(pq);
}

static nl_pq *pq_alloc(uint32_t dim, uint32_t m, nl_metric metric)
{
    nl_pq *pq = calloc(1, sizeof *pq);
    if (!pq)
        return NULL;
    pq->dim = dim;
    pq->m = m;
    pq->metric = metric;
    pq->off = malloc(sizeof(uint32_t) * (m + 1));
    pq->mean = calloc(dim, sizeof(float));
    pq->cent = calloc((size_t)256 * dim, sizeof(float));
    pq->tr = calloc((size_t)256 * dim, sizeof(float));
    if (!pq->off || !pq->mean || !pq->cent || !pq->tr) {
        nl_pq_destroy(pq);
        return NULL;
    }
    uint32_t base = dim / m, extra = dim % m, o = 0;
    for (uint32_t j = 0; j < m; j++) {
        pq->off[j] = o;
        o += base + (j < extra ? 1 : 0);
    }
    pq->off[m] = dim;
    return pq;
}

static void pq_build_transpose(nl_pq *pq)
{
    for (uint32_t j = 0; j < pq->m; j++) {
        uint32_t o = pq->off[j], len = pq->off[j + 1] - o;
        const float *cj = pq->cent + (size_t)o * 256;
        float *tj = pq->tr + (size_t)o * 256;
        for (uint32_t c = 0; c < 256; c++)
            for (uint32_t s = 0; s < len; s++)
                tj[(size_t)s * 256 + c] = cj[(size_t)c * len + s];
    }
}

static void normalize(float *v, uint32_t d)
{
    double s = 0;
    for (uint32_t i = 0; i < d; i++)
        s += (double)v[i] * v[i];
    if (s > 0) {
        float inv = (float)(1.0 / sqrt(s));
        for (uint32_t i = 0; i < d; i++)
            v[i] *= inv;
    }
}

/* Into out: row i of vs, widened, normalised for cosine, centred. */
static void prepare_row(const nl_pq *pq, const nl_vecset *vs, size_t i, float *out)
{
    nl_convert_to_f32(vs->dtype, nl_vecset_row(vs, i), out, vs->dim);
    if (pq->metric == NL_METRIC_COSINE)
        normalize(out, pq->dim);
    for (uint32_t s = 0; s < pq->dim; s++)
        out[s] -= pq->mean[s];
}

typedef struct {
    nl_pq *pq;
    const float *sample; /* ns x dim, centred */
    size_t ns;
    uint32_t iters;
    uint64_t seed;
} train_ctx;

static int train_chunk(void *vctx, size_t j, unsigned th)
{
    (void)th;
    train_ctx *t = vctx;
    nl_pq *pq = t->pq;
    uint32_t o = pq->off[j], len = pq->off[j + 1] - o;
    float *sub = malloc(sizeof(float) * t->ns * len);
    if (!sub)
        return -ENOMEM;
    for (size_t i = 0; i < t->ns; i++)
        memcpy(sub + i * len, t->sample + i * pq->dim + o, sizeof(float) * len);
    uint32_t k = t->ns < 256 ? (uint32_t)t->ns : 256;
    nl_kmeans_params kp = {.k = k, .iters = t->iters, .seed = t->seed + j * 7919, .threads = 1};
    float *cj = pq->cent + (size_t)o * 256;
    int rc = nl_kmeans(sub, t->ns, len, &kp, cj, NULL, NULL);
    /* With fewer than 256 samples, repeat centroid 0: encoding picks the first minimum,
     * so the copies are never used. */
    for (uint32_t c = k; rc == 0 && c < 256; c++)
        memcpy(cj + (size_t)c * len, cj, sizeof(float) * len);
    free(sub);
    return rc;
}

int nl_pq_train(const nl_vecset *vs, nl_metric metric, const nl_pq_params *p, nl_pq **out)
{
    *out = NULL;
    if (!vs || vs->n == 0 || vs->dim == 0 || !p || p->m == 0 || p->m > vs->dim)
        return nl_fail(NL_EINVAL, "pq: %u code bytes for dimension %u (need 1..dim)", p ? p->m : 0,
                       vs ? vs->dim : 0);
    if (vs->dtype > NL_DTYPE_I8)
        return nl_fail(NL_EINVAL, "pq: unsupported element type");
    nl_pq *pq = pq_alloc(vs->dim, p->m, metric);
    if (!pq)
        return -ENOMEM;
    size_t max_sample = p->max_sample ? p->max_sample : 100000;
    size_t ns = vs->n < max_sample ? vs->n : max_sample;
    float *sample = malloc(sizeof(float) * ns * vs->dim);
    if (!sample) {
        nl_pq_destroy(pq);
        return -ENOMEM;
    }
    /* A strided subset: deterministic and spread over the whole input. */
    double stride = (double)vs->n / (double)ns;
    double *acc = calloc(vs->dim, sizeof(double));
    if (!acc) {
        free(sample);
        nl_pq_destroy(pq);
        return -ENOMEM;
    }
    for (size_t i = 0; i < ns; i++) {
        float *row = sample + i * vs->dim;
        nl_convert_to_f32(vs->dtype, nl_vecset_row(vs, (size_t)(i * stride)), row, vs->dim);
        if (metric == NL_METRIC_COSINE)
            normalize(row, vs->dim);
        for (uint32_t s = 0; s < vs->dim; s++)
            acc[s] += row[s];
    }
    for (uint32_t s = 0; s < vs->dim; s++)
        pq->mean[s] = (float)(acc[s] / (double)ns);
    free(acc);
    for (size_t i = 0; i < ns; i++)
        for (uint32_t s = 0; s < vs->dim; s++)
            sample[i * vs->dim + s] -= pq->mean[s];
    train_ctx t = {pq, sample, ns, p->iters ? p->iters : 12, p->seed};
    int rc = nl_parallel_for(pq->m, p->threads ? p->threads : nl_cpu_count(), train_chunk, &t);
    free(sample);
    if (rc) {
        nl_pq_destroy(pq);
        return rc;
    }
    pq_build_transpose(pq);
    *out = pq;
    return 0;
}

static void encode_one(const nl_pq *pq, const float *x, uint8_t *code, float *acc)
{
    for (uint32_t j = 0; j < pq->m; j++) {
        uint32_t o = pq->off[j], len = pq->off[j + 1] - o;
        const float *tj = pq->tr + (size_t)o * 256;
        for (uint32_t c = 0; c < 256; c++)
            acc[c] = 0.0f;
        for (uint32_t s = 0; s < len; s++) {
            float xs = x[o + s];
            const float *row = tj + (size_t)s * 256;
            for (uint32_t c = 0; c < 256; c++) {
                float t = xs - row[c];
                acc[c] += t * t;
            }
        }
        uint32_t best = 0;
        for (uint32_t c = 1; c < 256; c++)
            if (acc[c] < acc[best]) best = c;
        code[j] = (uint8_t)best;
    }
}

typedef struct {
    const nl_pq *pq;
    const nl_vecset *vs;
    uint8_t *codes;
    size_t block;
} enc_ctx;

static int encode_task(void *vctx, size_t task, unsigned th)
{
    (void)th;
    enc_ctx *e = vctx;
    float *x = malloc(sizeof(float) * (e->pq->dim + 256));
    if (!x)
        return -ENOMEM;
    size_t r0 = task * e->block, r1 = r0 + e->block < e->vs->n ? r0 + e->block : e->vs->n;
    for (size_t i = r0; i < r1; i++) {
        prepare_row(e->pq, e->vs, i, x);
        encode_one(e->pq, x, e->codes + i * e->pq->m, x + e->pq->dim);
    }
    free(x);
    return 0;
}

int nl_pq_encode(const nl_pq *pq, const nl_vecset *vs, uint8_t *codes, unsigned threads)
{
    if (vs->dim != pq->dim)
        return nl_fail(NL_EDIM, "pq: encoding dimension %u with a %u-dimensional quantizer", vs->dim,
                       pq->dim);
    enc_ctx e = {pq, vs, codes, 1024};
    return nl_parallel_for((vs->n + e.block - 1) / e.block, threads ? threads : nl_cpu_count(),
                           encode_task, &e);
}

void nl_pq_decode(const nl_pq *pq, const uint8_t *code, float *out)
{
    for (uint32_t j = 0; j < pq->m; j++) {
        uint32_t o = pq->off[j], len = pq->off[j + 1] - o;
        const float *c = pq->cent + (size_t)o * 256 + (size_t)code[j] * len;
        for (uint32_t s = 0; s < len; s++)
            out[o + s] = c[s] + pq->mean[o + s];
    }
}

void nl_pq_table(const nl_pq *pq, const float *q, float *table)
{
    uint32_t d = pq->dim;
    float qstack[512];
    float *qbuf = d <= 512 ? qstack : malloc(sizeof(float) * d);
    if (!qbuf) { /* out of memory: a table of zeros ranks nothing but stays safe */
        memset(table, 0, sizeof(float) * 256 * pq->m);
        return;
    }
    memcpy(qbuf, q, sizeof(float) * d);
    if (pq->metric == NL_METRIC_COSINE)
        normalize(qbuf, d);
    if (pq->metric == NL_METRIC_IP) {
        /* -q.x ~= -q.mean - sum_j q_j . c_j: fold the constant into chunk 0. */
        float qm = 0.0f;
        for (uint32_t s = 0; s < d; s++)
            qm += qbuf[s] * pq->mean[s];
        for (uint32_t j = 0; j < pq->m; j++) {
            uint32_t o = pq->off[j], len = pq->off[j + 1] - o;
            const float *tj = pq->tr + (size_t)o * 256;
            float *tab = table + (size_t)j * 256;
            for (uint32_t c = 0; c < 256; c++)
                tab[c] = j == 0 ? -qm : 0.0f;
            for (uint32_t s = 0; s < len; s++) {
                float qs = qbuf[o + s];
                const float *row = tj + (size_t)s * 256;
                for (uint32_t c = 0; c < 256; c++)
                    tab[c] -= qs * row[c];
            }
        }
        if (qbuf != qstack)
            free(qbuf);
        return;
    }
    for (uint32_t s = 0; s < d; s++)
        qbuf[s] -= pq->mean[s];
    for (uint32_t j = 0; j < pq->m; j++) {
        uint32_t o = pq->off[j], len = pq->off[j + 1] - o;
        const float *tj = pq->tr + (size_t)o * 256;
        float *tab = table + (size_t)j * 256;
        for (uint32_t c = 0; c < 256; c++)
            tab[c] = 0.0f;
        for (uint32_t s = 0; s < len; s++) {
            float qs = qbuf[o + s];
            const float *row = tj + (size_t)s * 256;
            for (uint32_t c = 0; c < 256; c++) {
                float t = qs - row[c];
                tab[c] += t * t;
            }
        }
    }
    if (qbuf != qstack)
        free(qbuf);
}

/* Serialised layout: magic "NLPQ", u32 version=1, u32 dim, u32 m, u32 metric,
 * u32 reserved, then (m+1) u32 chunk offsets, dim f32 mean, 256*dim f32 centroids. */
#define PQ_MAGIC 0x51504c4eu /* "NLPQ" */

size_t nl_pq_serialized_size(const nl_pq *pq)
{
    return 24 + 4 * ((size_t)pq->m + 1) + 4 * (size_t)pq->dim + 4 * (size_t)256 * pq->dim;
}

static void put32(unsigned char **p, uint32_t v)
{
    memcpy(*p, &v, 4);
    *p += 4;
}

int nl_pq_serialize(const nl_pq *pq, void *buf, size_t len)
{
    if (len < nl_pq_serialized_size(pq))
        return nl_fail(NL_EINVAL, "pq: serialise buffer too small");
    unsigned char *p = buf;
    put32(&p, PQ_MAGIC);
    put32(&p, 1);
    put32(&p, pq->dim);
    put32(&p, pq->m);
    put32(&p, (uint32_t)pq->metric);
    put32(&p, 0);
    memcpy(p, pq->off, 4 * ((size_t)pq->m + 1));
    p += 4 * ((size_t)pq->m + 1);
    memcpy(p, pq->mean, 4 * (size_t)pq->dim);
    p += 4 * (size_t)pq->dim;
    memcpy(p, pq->cent, 4 * (size_t)256 * pq->dim);
    return 0;
}

int nl_pq_deserialize(const void *buf, size_t len, nl_pq **out)
{
    *out = NULL;
    const unsigned char *p = buf;
    uint32_t h[6];
    if (len < 24)
        return nl_fail(NL_ECORRUPT, "pq: section of %zu bytes is too short", len);
    memcpy(h, p, 24);
    if (h[0] != PQ_MAGIC || h[1] != 1)
        return nl_fail(NL_ECORRUPT, "pq: bad magic or version");
    uint32_t dim = h[2], m = h[3];
    if (dim == 0 || dim > (1u << 20) || m == 0 || m > dim || h[4] > 2)
        return nl_fail(NL_ECORRUPT, "pq: dim %u, m %u, metric %u out of range", dim, m, h[4]);
    size_t want = 24 + 4 * ((size_t)m + 1) + 4 * (size_t)dim + 4 * (size_t)256 * dim;
    if (len != want)
        return nl_fail(NL_ECORRUPT, "pq: section is %zu bytes, expected %zu", len, want);
    nl_pq *pq = pq_alloc(dim, m, (nl_metric)h[4]);
    if (!pq)
        return -ENOMEM;
    p += 24;
    uint32_t *off = malloc(4 * ((size_t)m + 1));
    if (!off) {
        nl_pq_destroy(pq);
        return -ENOMEM;
    }
    memcpy(off, p, 4 * ((size_t)m + 1));
    /* Offsets must be exactly the canonical split we would compute. */
    for (uint32_t j = 0; j <= m; j++)
        if (off[j] != pq->off[j]) {
            int rc = nl_fail(NL_ECORRUPT, "pq: chunk offset %u is %u, expected %u", j, off[j], pq->off[j]);
            free(off);
            nl_pq_destroy(pq);
            return rc;
        }
    free(off);
    p += 4 * ((size_t)m + 1);
    memcpy(pq->mean, p, 4 * (size_t)dim);
    p += 4 * (size_t)dim;
    memcpy(pq->cent, p, 4 * (size_t)256 * dim);
    for (size_t i = 0; i < dim; i++)
        if (!isfinite(pq->mean[i])) {
            nl_pq_destroy(pq);
            return nl_fail(NL_ECORRUPT, "pq: non-finite mean");
        }
    for (size_t i = 0; i < (size_t)256 * dim; i++)
        if (!isfinite(pq->cent[i])) {
            nl_pq_destroy(pq);
            return nl_fail(NL_ECORRUPT, "pq: non-finite centroid");
        }
    pq_build_transpose(pq);
    *out = pq;
    return 0;
}
