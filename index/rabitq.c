/*
 * rabitq.c — training, encoding, serialisation and query preparation of the RaBitQ
 * quantizer (nl_rabitq.h has the method). The scalar kernel is here; the SIMD ones are
 * in rabitq_avx2.c and rabitq_avx512.c, compiled with their instruction-set flags.
 *
 * Invariants of a quantizer: 1 <= dim <= NL_RABITQ_MAX_DIM, 1 <= bits <= 8, the rotation
 * is orthogonal to float precision (built by modified Gram-Schmidt in double from a
 * seeded Gaussian matrix, then stored: a segment never depends on regenerating it), the
 * centroid and beta are finite. Encoding is exact for the grid (the best scale is found
 * by visiting every event), so the same input and quantizer give the same bytes.
 */
#include <cblas.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nl_rabitq.h"
#include "nl_util.h"

struct nl_rabitq {
    uint32_t dim, bits, pb; /* pb = ceil(dim/8) bytes per bit plane */
    nl_metric metric;
    uint64_t seed;
    float beta;   /* quantile of sqrt(|y|^2/<y,o'>^2 - 1) over the training sample */
    float *cent;  /* dim */
    float *rot;   /* dim x dim, row-major: r_j = sum_i rot[j][i] x_i */
};

#define RBQ_MAGIC "NLRBQ01\0"
#define RBQ_HEADER 40 /* magic 8, dim, bits, metric, pad, seed 8, beta, reserved */
#define RBQ_BETA_QUANTILE 0.999

uint32_t nl_rabitq_dim(const nl_rabitq *q) { return q->dim; }
uint32_t nl_rabitq_bits(const nl_rabitq *q) { return q->bits; }
nl_metric nl_rabitq_metric(const nl_rabitq *q) { return q->metric; }
float nl_rabitq_beta(const nl_rabitq *q) { return q->beta; }
uint32_t nl_rabitq_code_bytes(const nl_rabitq *q) { return nl_rabitq_code_bytes_for(q->dim, q->bits); }

void nl_rabitq_destroy(nl_rabitq *q)
{
    if (!q)
        return;
    free(q->cent);
    free(q->rot);
    free(q);
}

static nl_rabitq *rbq_alloc(uint32_t dim, uint32_t bits, nl_metric metric)
{
    nl_rabitq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->dim = dim;
    q->bits = bits;
    q->pb = (dim + 7) / 8;
    q->metric = metric;
    q->cent = calloc(dim, sizeof(float));
    q->rot = malloc(sizeof(float) * (size_t)dim * dim);
    if (!q->cent || !q->rot) {
        nl_rabitq_destroy(q);
        return NULL;
    }
    return q;
}

/* A random orthogonal matrix: Gaussian rows made orthonormal one by one (modified
 * Gram-Schmidt, twice for stability). A row that comes out degenerate is drawn again. */
static int random_rotation(uint32_t d, uint64_t seed, float *out)
{
    double *m = malloc(sizeof(double) * (size_t)d * d);
    if (!m)
        return -ENOMEM;
    nl_rng r;
    nl_rng_seed(&r, seed ^ 0x5241426974510001ull);
    for (uint32_t j = 0; j < d; j++) {
        double *v = m + (size_t)j * d;
        for (int tries = 0;; tries++) {
            for (uint32_t i = 0; i < d; i++)
                v[i] = nl_rng_normal(&r);
            for (int pass = 0; pass < 2; pass++)
                for (uint32_t k = 0; k < j; k++) {
                    const double *u = m + (size_t)k * d;
                    double dot = 0.0;
                    for (uint32_t i = 0; i < d; i++)
                        dot += u[i] * v[i];
                    for (uint32_t i = 0; i < d; i++)
                        v[i] -= dot * u[i];
                }
            double nn = 0.0;
            for (uint32_t i = 0; i < d; i++)
                nn += v[i] * v[i];
            if (nn > 1e-12 || tries > 8) {
                double inv = nn > 0 ? 1.0 / sqrt(nn) : 0.0;
                for (uint32_t i = 0; i < d; i++)
                    v[i] *= inv;
                break;
            }
        }
    }
    for (size_t i = 0; i < (size_t)d * d; i++)
        out[i] = (float)m[i];
    free(m);
    return 0;
}

static void normalize(float *v, uint32_t d)
{
    double s = 0.0;
    for (uint32_t i = 0; i < d; i++)
        s += (double)v[i] * v[i];
    if (s > 0.0) {
        float inv = (float)(1.0 / sqrt(s));
        for (uint32_t i = 0; i < d; i++)
            v[i] *= inv;
    }
}

/* ---------------------------------------------------------------- the code search */

/* A binary heap of (t, dimension): the next scale at which a coordinate moves up. */
typedef struct { float t; uint32_t i; } ev;

static void heap_push(ev *h, uint32_t *n, ev e)
{
    uint32_t k = (*n)++;
    while (k > 0) {
        uint32_t p = (k - 1) / 2;
        if (h[p].t < e.t || (h[p].t == e.t && h[p].i < e.i))
            break;
        h[k] = h[p];
        k = p;
    }
    h[k] = e;
}

static ev heap_pop(ev *h, uint32_t *n)
{
    ev top = h[0], last = h[--(*n)];
    uint32_t k = 0;
    for (;;) {
        uint32_t c = 2 * k + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && (h[c + 1].t < h[c].t || (h[c + 1].t == h[c].t && h[c + 1].i < h[c].i)))
            c++;
        if (last.t < h[c].t || (last.t == h[c].t && last.i <= h[c].i))
            break;
        h[k] = h[c];
        k = c;
    }
    h[k] = last;
    return top;
}

/* Scratch for encoding one vector. */
typedef struct {
    float *x, *r;   /* dim each */
    uint8_t *lvl;   /* level k_i in [0, 2^(B-1)) of |y_i| = k_i + 1/2 */
    ev *heap;
} enc_scratch;

/* Finds the levels that maximise cos(y, o') for a = |o'| (unit), by visiting every event
 * in order of scale. Returns <y, o'> and |y|^2 through the pointers; levels in lvl. */
static void best_levels(const float *a, uint32_t d, uint32_t bits, enc_scratch *s, double *yo, double *yy)
{
    const uint32_t K = 1u << (bits - 1); /* levels per sign */
    double num = 0.0, den = 0.25 * d;
    for (uint32_t i = 0; i < d; i++) {
        num += 0.5 * a[i];
        s->lvl[i] = 0;
    }
    double best = num / sqrt(den), best_num = num, best_den = den;
    uint64_t best_step = 0, step = 0;
    if (K > 1) {
        uint32_t hn = 0;
        for (uint32_t i = 0; i < d; i++)
            if (a[i] > 0.0f)
                heap_push(s->heap, &hn, (ev){1.0f / a[i], i});
        while (hn > 0) {
            ev e = heap_pop(s->heap, &hn);
            uint32_t k = ++s->lvl[e.i];
            num += a[e.i];
            den += 2.0 * k; /* (k + 1/2)^2 - (k - 1/2)^2 */
            step++;
            double c = num / sqrt(den);
            if (c > best) {
                best = c;
                best_num = num;
                best_den = den;
                best_step = step;
            }
            if (k + 1 < K)
                heap_push(s->heap, &hn, (ev){(float)(k + 1) / a[e.i], e.i});
        }
        /* Replay the sweep up to the best step (same order: the heap is deterministic). */
        hn = 0;
        for (uint32_t i = 0; i < d; i++) {
            s->lvl[i] = 0;
            if (a[i] > 0.0f && best_step > 0)
                heap_push(s->heap, &hn, (ev){1.0f / a[i], i});
        }
        for (uint64_t t = 0; t < best_step && hn > 0; t++) {
            ev e = heap_pop(s->heap, &hn);
            uint32_t k = ++s->lvl[e.i];
            if (k + 1 < K)
                heap_push(s->heap, &hn, (ev){(float)(k + 1) / a[e.i], e.i});
        }
    }
    *yo = best_num;
    *yy = best_den;
}

/* r = P x for one row (a query): a plain loop, no BLAS call overhead per query. */
static void rotate_row(const nl_rabitq *q, const float *x, float *r)
{
    const uint32_t d = q->dim;
    for (uint32_t j = 0; j < d; j++) {
        const float *pj = q->rot + (size_t)j * d;
        float s = 0.0f;
        for (uint32_t i = 0; i < d; i++)
            s += pj[i] * x[i];
        r[j] = s;
    }
}

/* Encodes the rotated residual r (dim floats) into code; returns beta of the point
 * (0 for a point at the centroid). */
static float encode_rotated(const nl_rabitq *q, const float *r, uint8_t *code, enc_scratch *s)
{
    const uint32_t d = q->dim, K = 1u << (q->bits - 1);
    double nn = 0.0;
    for (uint32_t i = 0; i < d; i++)
        nn += (double)r[i] * r[i];
    memset(code, 0, (size_t)q->bits * q->pb);
    float fadd = (float)nn, fres = 0.0f, beta = 0.0f;
    if (nn > 0.0) {
        double inv = 1.0 / sqrt(nn);
        for (uint32_t i = 0; i < d; i++)
            s->x[i] = (float)(fabs((double)r[i]) * inv);
        double yo, yy;
        best_levels(s->x, d, q->bits, s, &yo, &yy);
        fres = (float)(sqrt(nn) / yo);
        double b2 = yy / (yo * yo) - 1.0;
        beta = (float)(b2 > 0 ? sqrt(b2) : 0.0);
        for (uint32_t i = 0; i < d; i++) {
            uint32_t u = r[i] >= 0.0f ? K + s->lvl[i] : K - 1 - s->lvl[i];
            for (uint32_t b = 0; b < q->bits; b++)
                if ((u >> b) & 1u)
                    code[(size_t)b * q->pb + i / 8] |= (uint8_t)(1u << (i % 8));
        }
    } else {
        for (uint32_t i = 0; i < d; i++) /* u = K: y = +1/2 everywhere; fres = 0 makes it inert */
            for (uint32_t b = 0; b < q->bits; b++)
                if ((K >> b) & 1u)
                    code[(size_t)b * q->pb + i / 8] |= (uint8_t)(1u << (i % 8));
    }
    uint8_t *f = code + (size_t)q->bits * q->pb;
    memcpy(f, &fadd, 4);
    memcpy(f + 4, &fres, 4);
    return beta;
}

static int scratch_init(enc_scratch *s, uint32_t d)
{
    s->x = malloc(sizeof(float) * d * 2);
    s->r = s->x ? s->x + d : NULL;
    s->lvl = malloc(d);
    s->heap = malloc(sizeof(ev) * d);
    return s->x && s->lvl && s->heap ? 0 : -ENOMEM;
}

static void scratch_free(enc_scratch *s)
{
    free(s->x);
    free(s->lvl);
    free(s->heap);
}

/* Row i of vs, widened, normalised for cosine, minus the centroid. */
static void prepare_row(const nl_rabitq *q, const nl_vecset *vs, size_t i, float *out)
{
    nl_convert_to_f32(vs->dtype, nl_vecset_row(vs, i), out, vs->dim);
    if (q->metric == NL_METRIC_COSINE)
        normalize(out, q->dim);
    for (uint32_t j = 0; j < q->dim; j++)
        out[j] -= q->cent[j];
}

typedef struct {
    const nl_rabitq *q;
    const nl_vecset *vs;
    uint8_t *codes;
    float *betas; /* training: one per row, else NULL */
    size_t block;
} enc_ctx;

static int encode_task(void *vctx, size_t task, unsigned th)
{
    (void)th;
    enc_ctx *e = vctx;
    const nl_rabitq *q = e->q;
    enc_scratch s = {0};
    size_t r0 = task * e->block, r1 = r0 + e->block < e->vs->n ? r0 + e->block : e->vs->n, nr = r1 - r0;
    float *x = malloc(sizeof(float) * q->dim * nr * 2); /* the block's rows, then rotated */
    if (!x || scratch_init(&s, q->dim) != 0) {
        free(x);
        scratch_free(&s);
        return -ENOMEM;
    }
    float *rx = x + (size_t)q->dim * nr;
    for (size_t i = r0; i < r1; i++)
        prepare_row(q, e->vs, i, x + (i - r0) * q->dim);
    /* R = X P^T for the whole block at once */
    nl_blas_single_thread();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)q->dim, (int)q->dim, 1.0f, x, (int)q->dim,
                q->rot, (int)q->dim, 0.0f, rx, (int)q->dim);
    uint32_t cb = nl_rabitq_code_bytes(q);
    for (size_t i = r0; i < r1; i++) {
        float b = encode_rotated(q, rx + (i - r0) * q->dim, e->codes + i * cb, &s);
        if (e->betas)
            e->betas[i] = b;
    }
    free(x);
    scratch_free(&s);
    return 0;
}

int nl_rabitq_encode(const nl_rabitq *q, const nl_vecset *vs, uint8_t *codes, unsigned threads)
{
    if (vs->dim != q->dim)
        return nl_fail(NL_EDIM, "rabitq: encoding dimension %u with a %u-dimensional quantizer", vs->dim, q->dim);
    enc_ctx e = {q, vs, codes, NULL, 512};
    return nl_parallel_for((vs->n + e.block - 1) / e.block, threads ? threads : nl_cpu_count(), encode_task, &e);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int nl_rabitq_train(const nl_vecset *vs, nl_metric metric, const nl_rabitq_params *p, nl_rabitq **out)
{
    *out = NULL;
    if (!vs || vs->n == 0)
        return nl_fail(NL_EEMPTY, "rabitq: no rows to train on");
    if (vs->dim == 0 || vs->dim > NL_RABITQ_MAX_DIM)
        return nl_fail(NL_EINVAL, "rabitq: dimension %u outside 1..%u", vs->dim, NL_RABITQ_MAX_DIM);
    if (p->bits < 1 || p->bits > NL_RABITQ_MAX_BITS)
        return nl_fail(NL_EINVAL, "rabitq: %u bits per dimension outside 1..8", p->bits);
    if ((unsigned)metric > 2)
        return nl_fail(NL_EINVAL, "rabitq: unknown metric");
    nl_rabitq *q = rbq_alloc(vs->dim, p->bits, metric);
    if (!q)
        return -ENOMEM;
    q->seed = p->seed;
    int rc = random_rotation(q->dim, p->seed, q->rot);
    size_t ns = p->max_sample ? p->max_sample : 20000;
    if (ns > vs->n)
        ns = vs->n;
    size_t stride = vs->n / ns;
    float *row = malloc(sizeof(float) * q->dim);
    double *sum = calloc(q->dim, sizeof(double));
    if (rc || !row || !sum) {
        rc = rc ? rc : -ENOMEM;
        goto done;
    }
    /* The centroid of a strided sample (normalised rows for cosine). */
    for (size_t s = 0; s < ns; s++) {
        nl_convert_to_f32(vs->dtype, nl_vecset_row(vs, s * stride), row, q->dim);
        if (metric == NL_METRIC_COSINE)
            normalize(row, q->dim);
        for (uint32_t j = 0; j < q->dim; j++)
            sum[j] += row[j];
    }
    for (uint32_t j = 0; j < q->dim; j++) {
        q->cent[j] = (float)(sum[j] / (double)ns);
        if (!isfinite(q->cent[j])) {
            rc = nl_fail(NL_EBADVALUE, "rabitq: the training rows hold values that are not finite");
            goto done;
        }
    }
    /* beta: encode (part of) the sample and keep a high quantile. */
    {
        size_t nb = ns < 5000 ? ns : 5000, bstride = vs->n / nb;
        size_t esz = nl_dtype_size(vs->dtype) * vs->dim;
        unsigned char *rows = malloc(esz * nb);
        uint8_t *codes = malloc((size_t)nl_rabitq_code_bytes(q) * nb);
        float *betas = malloc(sizeof(float) * nb);
        if (!rows || !codes || !betas) {
            free(rows);
            free(codes);
            free(betas);
            rc = -ENOMEM;
            goto done;
        }
        for (size_t s = 0; s < nb; s++)
            memcpy(rows + s * esz, nl_vecset_row(vs, s * bstride), esz);
        nl_vecset sub = {rows, nb, vs->dim, vs->dtype};
        enc_ctx e = {q, &sub, codes, betas, 256};
        rc = nl_parallel_for((nb + e.block - 1) / e.block, p->threads ? p->threads : nl_cpu_count(), encode_task, &e);
        if (!rc) {
            qsort(betas, nb, sizeof(float), cmp_float);
            size_t at = (size_t)(RBQ_BETA_QUANTILE * (double)(nb - 1));
            q->beta = betas[at];
        }
        free(rows);
        free(codes);
        free(betas);
    }
done:
    free(row);
    free(sum);
    if (rc) {
        nl_rabitq_destroy(q);
        return rc;
    }
    *out = q;
    return 0;
}

/* ---------------------------------------------------------------- queries */

static float ip_scalar(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits)
{
    float total = 0.0f;
    for (uint32_t b = 0; b < bits; b++) {
        const uint8_t *p = planes + (size_t)b * pb;
        float s = 0.0f;
        for (uint32_t j = 0; j < pb; j++) {
            uint32_t byte = p[j];
            for (uint32_t t = 0; t < 8; t++)
                if ((byte >> t) & 1u)
                    s += q[8 * j + t];
        }
        total += s * (float)(1u << b);
    }
    return total;
}

float nl_rabitq_ip_avx2(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits);
float nl_rabitq_ip_avx512(const uint8_t *planes, const float *q, uint32_t pb, uint32_t bits);

nl_rabitq_ip_fn nl_rabitq_kernel(nl_isa isa)
{
    if (!nl_isa_supported(isa))
        return NULL;
    switch (isa) {
    case NL_ISA_SCALAR: return ip_scalar;
    case NL_ISA_AVX2: return nl_rabitq_ip_avx2;
    case NL_ISA_AVX512: return nl_rabitq_ip_avx512;
    }
    return NULL;
}

void nl_rabitq_prepare(const nl_rabitq *rq, const float *q, float eps0, nl_rabitq_query *s)
{
    const uint32_t d = rq->dim;
    float stack[1024];
    float *x = d <= 1024 ? stack : malloc(sizeof(float) * d);
    s->pb = rq->pb;
    s->bits = rq->bits;
    s->metric = rq->metric;
    s->ip = nl_rabitq_kernel(nl_isa_best());
    s->scale = rq->metric == NL_METRIC_COSINE ? 0.5f : 1.0f;
    memset(s->qr, 0, sizeof(float) * 8 * rq->pb);
    if (!x) { /* out of memory: a zero query ranks nothing but stays safe */
        s->qnorm2 = s->usum = s->qc = s->bcoef = 0.0f;
        return;
    }
    memcpy(x, q, sizeof(float) * d);
    if (rq->metric == NL_METRIC_COSINE)
        normalize(x, d);
    double qc = 0.0;
    if (rq->metric == NL_METRIC_IP) {
        /* -<o, q> = -(<o - c, q> + <c, q>) and <o - c, q> = <P(o - c), P q>: q is not centred */
        for (uint32_t j = 0; j < d; j++)
            qc += (double)rq->cent[j] * x[j];
    } else {
        for (uint32_t j = 0; j < d; j++)
            x[j] -= rq->cent[j];
    }
    rotate_row(rq, x, s->qr);
    double nn = 0.0, sum = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        nn += (double)s->qr[j] * s->qr[j];
        sum += s->qr[j];
    }
    s->qnorm2 = (float)nn;
    s->usum = (float)(sum * (double)((1u << rq->bits) - 1) * 0.5);
    s->qc = (float)qc;
    /* error of <r, q_r>: |r| |q_r| beta eps0 / sqrt(D - 1); l2 doubles it, cosine halves that */
    double e = sqrt(nn) * rq->beta * eps0 / sqrt(d > 1 ? (double)(d - 1) : 1.0);
    s->bcoef = (float)(rq->metric == NL_METRIC_IP ? e : 2.0 * e * s->scale);
    if (x != stack)
        free(x);
}

/* ---------------------------------------------------------------- serialisation */

size_t nl_rabitq_serialized_size(const nl_rabitq *q)
{
    return RBQ_HEADER + sizeof(float) * ((size_t)q->dim + (size_t)q->dim * q->dim);
}

int nl_rabitq_serialize(const nl_rabitq *q, void *buf, size_t len)
{
    if (len < nl_rabitq_serialized_size(q))
        return nl_fail(NL_EINVAL, "rabitq: serialising into %zu bytes, need %zu", len, nl_rabitq_serialized_size(q));
    unsigned char *p = buf;
    memset(p, 0, RBQ_HEADER);
    memcpy(p, RBQ_MAGIC, 8);
    uint32_t v[4] = {q->dim, q->bits, (uint32_t)q->metric, 0};
    memcpy(p + 8, v, 16);
    memcpy(p + 24, &q->seed, 8);
    memcpy(p + 32, &q->beta, 4);
    memcpy(p + RBQ_HEADER, q->cent, sizeof(float) * q->dim);
    memcpy(p + RBQ_HEADER + sizeof(float) * q->dim, q->rot, sizeof(float) * (size_t)q->dim * q->dim);
    return 0;
}

int nl_rabitq_deserialize(const void *buf, size_t len, nl_rabitq **out)
{
    *out = NULL;
    const unsigned char *p = buf;
    if (len < RBQ_HEADER || memcmp(p, RBQ_MAGIC, 8) != 0)
        return nl_fail(NL_ECORRUPT, "rabitq: bad magic or %zu bytes", len);
    uint32_t v[4];
    memcpy(v, p + 8, 16);
    if (v[0] == 0 || v[0] > NL_RABITQ_MAX_DIM || v[1] < 1 || v[1] > NL_RABITQ_MAX_BITS || v[2] > 2 || v[3] != 0)
        return nl_fail(NL_ECORRUPT, "rabitq: dim %u, bits %u, metric %u out of range", v[0], v[1], v[2]);
    size_t want = RBQ_HEADER + sizeof(float) * ((size_t)v[0] + (size_t)v[0] * v[0]);
    if (len != want)
        return nl_fail(NL_ECORRUPT, "rabitq: %zu bytes for dimension %u, want %zu", len, v[0], want);
    float beta;
    uint32_t reserved;
    memcpy(&beta, p + 32, 4);
    memcpy(&reserved, p + 36, 4);
    if (reserved != 0)
        return nl_fail(NL_ECORRUPT, "rabitq: reserved header word is %u", reserved);
    if (!isfinite(beta) || beta < 0.0f || beta > 1e6f)
        return nl_fail(NL_ECORRUPT, "rabitq: beta %g out of range", (double)beta);
    nl_rabitq *q = rbq_alloc(v[0], v[1], (nl_metric)v[2]);
    if (!q)
        return -ENOMEM;
    memcpy(&q->seed, p + 24, 8);
    q->beta = beta;
    memcpy(q->cent, p + RBQ_HEADER, sizeof(float) * q->dim);
    memcpy(q->rot, p + RBQ_HEADER + sizeof(float) * q->dim, sizeof(float) * (size_t)q->dim * q->dim);
    /* A rotation's entries are in [-1, 1]; the centroid is finite. Anything else would
     * make every estimate garbage (or NaN), so it is corruption. */
    for (size_t i = 0; i < (size_t)q->dim * q->dim; i++)
        if (!(q->rot[i] >= -1.0001f && q->rot[i] <= 1.0001f)) {
            double bad = q->rot[i];
            nl_rabitq_destroy(q);
            return nl_fail(NL_ECORRUPT, "rabitq: rotation entry %zu is %g", i, bad);
        }
    for (uint32_t i = 0; i < q->dim; i++)
        if (!isfinite(q->cent[i])) {
            nl_rabitq_destroy(q);
            return nl_fail(NL_ECORRUPT, "rabitq: centroid entry %u is not finite", i);
        }
    *out = q;
    return 0;
}
