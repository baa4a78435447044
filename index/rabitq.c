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

#include "nl_distance.h"
#include "nl_kmeans.h"
#include "nl_rabitq.h"
#include "nl_util.h"

struct nl_rabitq {
    uint32_t dim, bits, pb, C; /* pb = ceil(dim/8) bytes per bit plane; C centroids */
    nl_metric metric;
    uint64_t seed;
    float kappa;  /* quantile of sqrt(|y|^2 - <y,o'>^2) over the training sample */
    float *cent;  /* C x dim (normalised space for cosine) */
    float *scale; /* C: s_c, the typical A of the centroid's points */
    float *rot;   /* dim x dim, row-major: r_j = sum_i rot[j][i] x_i */
    float *rcent; /* C x dim: P c, derived */
    /* Kernels resolved once (a lookup per query showed in profiles): the code's inner
     * product, and the query-centroid distance (squared L2; negated inner product for ip). */
    nl_rabitq_ip_fn ip;
    nl_dist_fn cdist;
    nl_dist_fn rdot; /* the f32 inner-product kernel (negated), for the rotation's rows */
};

#define RBQ_MAGIC "NLRBQ02\0"
#define RBQ_HEADER 48 /* magic 8, dim, bits, metric, C, seed 8, kappa, 3 x reserved */
#define RBQ_KAPPA_QUANTILE 0.99

uint32_t nl_rabitq_dim(const nl_rabitq *q) { return q->dim; }
uint32_t nl_rabitq_bits(const nl_rabitq *q) { return q->bits; }
nl_metric nl_rabitq_metric(const nl_rabitq *q) { return q->metric; }
float nl_rabitq_kappa(const nl_rabitq *q) { return q->kappa; }
uint32_t nl_rabitq_centroids(const nl_rabitq *q) { return q->C; }
uint32_t nl_rabitq_code_bytes(const nl_rabitq *q) { return nl_rabitq_code_bytes_for(q->dim, q->bits); }
size_t nl_rabitq_query_floats(const nl_rabitq *q) { return 8 * (size_t)q->pb + 3 * (size_t)q->C; }

void nl_rabitq_destroy(nl_rabitq *q)
{
    if (!q)
        return;
    free(q->cent);
    free(q->scale);
    free(q->rot);
    free(q->rcent);
    free(q);
}

static nl_rabitq *rbq_alloc(uint32_t dim, uint32_t bits, uint32_t C, nl_metric metric)
{
    nl_rabitq *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->dim = dim;
    q->bits = bits;
    q->pb = (dim + 7) / 8;
    q->C = C;
    q->metric = metric;
    q->cent = calloc((size_t)C * dim, sizeof(float));
    q->scale = malloc(sizeof(float) * C);
    q->rot = malloc(sizeof(float) * (size_t)dim * dim);
    q->rcent = malloc(sizeof(float) * (size_t)C * dim);
    if (!q->cent || !q->scale || !q->rot || !q->rcent) {
        nl_rabitq_destroy(q);
        return NULL;
    }
    for (uint32_t c = 0; c < C; c++)
        q->scale[c] = 1.0f;
    q->ip = nl_rabitq_kernel(nl_isa_best());
    q->cdist = nl_distance_fn(metric == NL_METRIC_IP ? NL_METRIC_IP : NL_METRIC_L2, NL_DTYPE_F32);
    q->rdot = nl_distance_fn(NL_METRIC_IP, NL_DTYPE_F32);
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

/* r = P x for one row (a query, a centroid): a dot product per row through the SIMD
 * inner-product kernel, no BLAS call overhead. The plain loop it replaced could not be
 * vectorised (a float sum in order), and at 512 dimensions it was 15% of a cached search's
 * CPU (issue 28's profile). */
static void rotate_row(const nl_rabitq *q, const float *x, float *r)
{
    const uint32_t d = q->dim;
    for (uint32_t j = 0; j < d; j++)
        r[j] = -q->rdot(x, q->rot + (size_t)j * d, d);
}

static void derive(nl_rabitq *q)
{
    for (uint32_t c = 0; c < q->C; c++)
        rotate_row(q, q->cent + (size_t)c * q->dim, q->rcent + (size_t)c * q->dim);
}

/* What encoding one point leaves besides its bits. */
typedef struct {
    float A, kappa;
} enc_out;

/* Encodes the rotated residual r (dim floats) of a point whose centroid is cid into
 * code. A is written relative to the centroid's scale. */
static enc_out encode_rotated(const nl_rabitq *q, const float *r, uint32_t cid, uint8_t *code, enc_scratch *s)
{
    const uint32_t d = q->dim, K = 1u << (q->bits - 1);
    const float half = (float)((1u << q->bits) - 1) * 0.5f;
    double nn = 0.0;
    for (uint32_t i = 0; i < d; i++)
        nn += (double)r[i] * r[i];
    memset(code, 0, (size_t)q->bits * q->pb);
    enc_out e = {0.0f, 0.0f};
    double F = nn;
    if (nn > 0.0) {
        double inv = 1.0 / sqrt(nn);
        for (uint32_t i = 0; i < d; i++)
            s->x[i] = (float)(fabs((double)r[i]) * inv);
        double yo, yy;
        best_levels(s->x, d, q->bits, s, &yo, &yy);
        e.A = (float)(sqrt(nn) / yo);
        double k2 = yy - yo * yo;
        e.kappa = (float)(k2 > 0 ? sqrt(k2) : 0.0);
        const float *pc = q->rcent + (size_t)cid * d;
        double yc = 0.0; /* <y, P c> */
        for (uint32_t i = 0; i < d; i++) {
            uint32_t u = r[i] >= 0.0f ? K + s->lvl[i] : K - 1 - s->lvl[i];
            yc += ((double)u - half) * pc[i];
            for (uint32_t b = 0; b < q->bits; b++)
                if ((u >> b) & 1u)
                    code[(size_t)b * q->pb + i / 8] |= (uint8_t)(1u << (i % 8));
        }
        F = nn + 2.0 * e.A * yc;
    } else {
        for (uint32_t i = 0; i < d; i++) /* u = K: y = +1/2 everywhere; A = 0 makes it inert */
            for (uint32_t b = 0; b < q->bits; b++)
                if ((K >> b) & 1u)
                    code[(size_t)b * q->pb + i / 8] |= (uint8_t)(1u << (i % 8));
    }
    if (q->metric == NL_METRIC_IP)
        F = 0.0; /* ip needs no |r|^2 */
    uint8_t *f = code + (size_t)q->bits * q->pb;
    float Ff = (float)F;
    uint32_t w;
    memcpy(&w, &Ff, 4);
    w = (w & ~((1u << NL_RABITQ_CID_BITS) - 1)) | cid;
    uint16_t ah = nl_f32_to_f16(e.A / q->scale[cid]);
    memcpy(f, &w, 4);
    memcpy(f + 4, &ah, 2);
    return e;
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

/* Row i of vs, widened and normalised for cosine. */
static void prepare_row(const nl_rabitq *q, const nl_vecset *vs, size_t i, float *out)
{
    nl_convert_to_f32(vs->dtype, nl_vecset_row(vs, i), out, vs->dim);
    if (q->metric == NL_METRIC_COSINE)
        normalize(out, q->dim);
}

typedef struct {
    const nl_rabitq *q;
    const nl_vecset *vs;
    uint8_t *codes;
    enc_out *outs;     /* training: one per row, else NULL */
    uint32_t *cids;    /* training: one per row, else NULL */
    size_t block;
} enc_ctx;

static int encode_task(void *vctx, size_t task, unsigned th)
{
    (void)th;
    enc_ctx *e = vctx;
    const nl_rabitq *q = e->q;
    const uint32_t d = q->dim;
    enc_scratch s = {0};
    size_t r0 = task * e->block, r1 = r0 + e->block < e->vs->n ? r0 + e->block : e->vs->n, nr = r1 - r0;
    float *x = malloc(sizeof(float) * d * nr * 2); /* the block's rows (then residuals), then rotated */
    uint32_t *cid = malloc(sizeof(uint32_t) * nr);
    int rc = 0;
    if (!x || !cid || scratch_init(&s, d) != 0) {
        rc = -ENOMEM;
        goto out;
    }
    float *rx = x + (size_t)d * nr;
    for (size_t i = r0; i < r1; i++)
        prepare_row(q, e->vs, i, x + (i - r0) * d);
    if ((rc = nl_kmeans_assign(x, nr, d, q->cent, q->C, 1, 1, cid, NULL)) != 0)
        goto out;
    for (size_t i = 0; i < nr; i++) {
        const float *c = q->cent + (size_t)cid[i] * d;
        for (uint32_t j = 0; j < d; j++)
            x[i * d + j] -= c[j];
    }
    /* R = X P^T for the whole block at once */
    nl_blas_single_thread();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nr, (int)d, (int)d, 1.0f, x, (int)d, q->rot, (int)d,
                0.0f, rx, (int)d);
    uint32_t cb = nl_rabitq_code_bytes(q);
    for (size_t i = r0; i < r1; i++) {
        enc_out o = encode_rotated(q, rx + (i - r0) * d, cid[i - r0], e->codes + i * cb, &s);
        if (e->outs) {
            e->outs[i] = o;
            e->cids[i] = cid[i - r0];
        }
    }
out:
    free(x);
    free(cid);
    scratch_free(&s);
    return rc;
}

int nl_rabitq_encode(const nl_rabitq *q, const nl_vecset *vs, uint8_t *codes, unsigned threads)
{
    if (vs->dim != q->dim)
        return nl_fail(NL_EDIM, "rabitq: encoding dimension %u with a %u-dimensional quantizer", vs->dim, q->dim);
    enc_ctx e = {q, vs, codes, NULL, NULL, 512};
    return nl_parallel_for((vs->n + e.block - 1) / e.block, threads ? threads : nl_cpu_count(), encode_task, &e);
}

int nl_rabitq_check_codes(const nl_rabitq *q, const uint8_t *codes, size_t n)
{
    uint32_t cb = nl_rabitq_code_bytes(q);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *f = codes + i * cb + (size_t)q->bits * q->pb;
        uint32_t w, cid;
        uint16_t ah;
        memcpy(&w, f, 4);
        memcpy(&ah, f + 4, 2);
        float F = nl_rabitq_unpack_f(w, &cid);
        float A = nl_f16_to_f32(ah);
        if (cid >= q->C || !isfinite(F) || !isfinite(A) || A < 0.0f)
            return nl_fail(NL_ECORRUPT, "rabitq: code %zu names centroid %u of %u or holds non-finite factors", i,
                           cid, q->C);
    }
    return 0;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* One centroid per 256 rows served, at most 1,024 and C x D <= 2^18. */
static uint32_t auto_centroids(uint64_t rows, uint32_t dim)
{
    uint64_t c = rows / 256;
    uint64_t cap = (1u << 18) / dim;
    if (c > NL_RABITQ_MAX_CENTROIDS) c = NL_RABITQ_MAX_CENTROIDS;
    if (c > cap) c = cap;
    return c ? (uint32_t)c : 1;
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
    const uint32_t d = vs->dim;
    uint32_t C = p->centroids ? p->centroids : auto_centroids(p->rows_hint ? p->rows_hint : vs->n, d);
    if (C > NL_RABITQ_MAX_CENTROIDS)
        C = NL_RABITQ_MAX_CENTROIDS;
    size_t ns = p->max_sample ? p->max_sample : (size_t)C * 64;
    if (ns < 2000)
        ns = 2000;
    if (ns > vs->n)
        ns = vs->n;
    if (C > ns)
        C = (uint32_t)ns;
    nl_rabitq *q = rbq_alloc(d, p->bits, C, metric);
    if (!q)
        return -ENOMEM;
    q->seed = p->seed;
    unsigned threads = p->threads ? p->threads : nl_cpu_count();
    int rc = random_rotation(d, p->seed, q->rot);
    size_t stride = vs->n / ns, esz = nl_dtype_size(vs->dtype) * d;
    float *xs = malloc(sizeof(float) * ns * d);
    unsigned char *rows = malloc(esz * ns);
    uint8_t *codes = malloc((size_t)nl_rabitq_code_bytes(q) * ns);
    enc_out *outs = malloc(sizeof(enc_out) * ns);
    uint32_t *cids = malloc(sizeof(uint32_t) * ns);
    float *tmp = malloc(sizeof(float) * ns);
    double *sum = calloc(C, sizeof(double));
    uint32_t *cnt = calloc(C, sizeof(uint32_t));
    if (rc || !xs || !rows || !codes || !outs || !cids || !tmp || !sum || !cnt) {
        rc = rc ? rc : -ENOMEM;
        goto done;
    }
    /* A strided sample: rows for encoding, floats (normalised for cosine) for k-means. */
    for (size_t s = 0; s < ns; s++) {
        memcpy(rows + s * esz, nl_vecset_row(vs, s * stride), esz);
        nl_convert_to_f32(vs->dtype, rows + s * esz, xs + s * d, d);
        if (metric == NL_METRIC_COSINE)
            normalize(xs + s * d, d);
        for (uint32_t j = 0; j < d; j++)
            if (!isfinite(xs[s * d + j])) {
                rc = nl_fail(NL_EBADVALUE, "rabitq: the training rows hold values that are not finite");
                goto done;
            }
    }
    if (C > 1) {
        nl_kmeans_params kp = {C, 8, p->seed ^ 0x7261626974710002ull, threads};
        if ((rc = nl_kmeans(xs, ns, d, &kp, q->cent, NULL, NULL)) != 0)
            goto done;
    } else {
        for (size_t s = 0; s < ns; s++)
            for (uint32_t j = 0; j < d; j++)
                q->cent[j] += xs[s * d + j] / (float)ns;
    }
    derive(q);
    /* Encode the sample (scales 1) to learn each centroid's typical A and kappa. */
    nl_vecset sub = {rows, ns, d, vs->dtype};
    enc_ctx e = {q, &sub, codes, outs, cids, 256};
    if ((rc = nl_parallel_for((ns + e.block - 1) / e.block, threads, encode_task, &e)) != 0)
        goto done;
    double all = 0.0;
    size_t nz = 0;
    for (size_t s = 0; s < ns; s++) {
        sum[cids[s]] += outs[s].A;
        cnt[cids[s]]++;
        all += outs[s].A;
        nz += outs[s].A > 0;
        tmp[s] = outs[s].kappa;
    }
    for (uint32_t c = 0; c < C; c++) {
        double m = cnt[c] ? sum[c] / cnt[c] : (nz ? all / (double)nz : 1.0);
        q->scale[c] = m > 0 && isfinite(m) ? (float)m : 1.0f;
    }
    qsort(tmp, ns, sizeof(float), cmp_float);
    q->kappa = tmp[(size_t)(RBQ_KAPPA_QUANTILE * (double)(ns - 1))];
done:
    free(xs);
    free(rows);
    free(codes);
    free(outs);
    free(cids);
    free(tmp);
    free(sum);
    free(cnt);
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

void nl_rabitq_prepare(const nl_rabitq *rq, const float *q, float eps0, float *buf, nl_rabitq_query *s)
{
    const uint32_t d = rq->dim, C = rq->C;
    float stack[1024];
    float *x = d <= 1024 ? stack : malloc(sizeof(float) * d);
    s->qr = buf;
    float *cq = buf + 8 * (size_t)rq->pb, *cs = cq + C, *ce = cs + C;
    s->cq = cq;
    s->cs = cs;
    s->ce = ce;
    s->pb = rq->pb;
    s->bits = rq->bits;
    s->C = C;
    s->metric = rq->metric;
    s->ip = rq->ip;
    s->scale = rq->metric == NL_METRIC_COSINE ? 0.5f : 1.0f;
    memset(buf, 0, sizeof(float) * nl_rabitq_query_floats(rq));
    s->usum = 0.0f;
    if (!x) /* out of memory: a zero query ranks nothing but stays safe */
        return;
    memcpy(x, q, sizeof(float) * d);
    if (rq->metric == NL_METRIC_COSINE)
        normalize(x, d);
    rotate_row(rq, x, s->qr);
    double sum = 0.0, qq = 0.0;
    for (uint32_t j = 0; j < d; j++) {
        sum += s->qr[j];
        qq += (double)x[j] * x[j];
    }
    s->usum = (float)(sum * (double)((1u << rq->bits) - 1) * 0.5);
    /* Per centroid: the estimate's constant part and the error per unit of A:
     * l2 2 |q - c| eps0 kappa / sqrt(D - 1) (cosine halves it with the estimate), ip
     * |q| eps0 kappa / sqrt(D - 1). */
    double ek = eps0 * rq->kappa / sqrt(d > 1 ? (double)(d - 1) : 1.0);
    /* The distance kernel (SIMD) per centroid: |q - c|^2 directly, with no cancellation of
     * |q|^2 - 2 <q, c> + |c|^2; the scalar loop in double it replaced was a fifth of a
     * sift search's CPU at 1,024 centroids. */
    for (uint32_t c = 0; c < C; c++) {
        float dc = rq->cdist(x, rq->cent + (size_t)c * d, d);
        cs[c] = rq->scale[c];
        if (rq->metric == NL_METRIC_IP) {
            cq[c] = dc; /* -<q, c> */
            ce[c] = (float)(sqrt(qq) * ek);
        } else {
            double qc2 = dc > 0.0f ? (double)dc : 0.0;
            cq[c] = (float)qc2;
            ce[c] = (float)(2.0 * sqrt(qc2) * ek * s->scale);
        }
    }
    if (x != stack)
        free(x);
}

/* ---------------------------------------------------------------- serialisation */

size_t nl_rabitq_serialized_size(const nl_rabitq *q)
{
    return RBQ_HEADER + sizeof(float) * ((size_t)q->C * q->dim + q->C + (size_t)q->dim * q->dim);
}

int nl_rabitq_serialize(const nl_rabitq *q, void *buf, size_t len)
{
    if (len < nl_rabitq_serialized_size(q))
        return nl_fail(NL_EINVAL, "rabitq: serialising into %zu bytes, need %zu", len, nl_rabitq_serialized_size(q));
    unsigned char *p = buf;
    memset(p, 0, RBQ_HEADER);
    memcpy(p, RBQ_MAGIC, 8);
    uint32_t v[4] = {q->dim, q->bits, (uint32_t)q->metric, q->C};
    memcpy(p + 8, v, 16);
    memcpy(p + 24, &q->seed, 8);
    memcpy(p + 32, &q->kappa, 4);
    size_t o = RBQ_HEADER;
    memcpy(p + o, q->cent, sizeof(float) * q->C * q->dim);
    o += sizeof(float) * q->C * q->dim;
    memcpy(p + o, q->scale, sizeof(float) * q->C);
    o += sizeof(float) * q->C;
    memcpy(p + o, q->rot, sizeof(float) * (size_t)q->dim * q->dim);
    return 0;
}

int nl_rabitq_deserialize(const void *buf, size_t len, nl_rabitq **out)
{
    *out = NULL;
    const unsigned char *p = buf;
    if (len < RBQ_HEADER || memcmp(p, RBQ_MAGIC, 8) != 0)
        return nl_fail(NL_ECORRUPT, "rabitq: bad magic or %zu bytes", len);
    uint32_t v[4], reserved[3];
    memcpy(v, p + 8, 16);
    memcpy(reserved, p + 36, 12);
    if (v[0] == 0 || v[0] > NL_RABITQ_MAX_DIM || v[1] < 1 || v[1] > NL_RABITQ_MAX_BITS || v[2] > 2 || v[3] == 0 ||
        v[3] > NL_RABITQ_MAX_CENTROIDS || reserved[0] || reserved[1] || reserved[2])
        return nl_fail(NL_ECORRUPT, "rabitq: dim %u, bits %u, metric %u, centroids %u out of range", v[0], v[1], v[2],
                       v[3]);
    size_t want = RBQ_HEADER + sizeof(float) * ((size_t)v[3] * v[0] + v[3] + (size_t)v[0] * v[0]);
    if (len != want)
        return nl_fail(NL_ECORRUPT, "rabitq: %zu bytes for dimension %u and %u centroids, want %zu", len, v[0], v[3],
                       want);
    float kappa;
    memcpy(&kappa, p + 32, 4);
    if (!isfinite(kappa) || kappa < 0.0f || kappa > 1e6f)
        return nl_fail(NL_ECORRUPT, "rabitq: kappa %g out of range", (double)kappa);
    nl_rabitq *q = rbq_alloc(v[0], v[1], v[3], (nl_metric)v[2]);
    if (!q)
        return -ENOMEM;
    memcpy(&q->seed, p + 24, 8);
    q->kappa = kappa;
    size_t o = RBQ_HEADER;
    memcpy(q->cent, p + o, sizeof(float) * q->C * q->dim);
    o += sizeof(float) * q->C * q->dim;
    memcpy(q->scale, p + o, sizeof(float) * q->C);
    o += sizeof(float) * q->C;
    memcpy(q->rot, p + o, sizeof(float) * (size_t)q->dim * q->dim);
    /* A rotation's entries are in [-1, 1]; centroids are finite; scales positive.
     * Anything else would make every estimate garbage (or NaN), so it is corruption. */
    const char *bad = NULL;
    size_t at = 0;
    for (size_t i = 0; !bad && i < (size_t)q->dim * q->dim; i++)
        if (!(q->rot[i] >= -1.0001f && q->rot[i] <= 1.0001f)) { bad = "rotation"; at = i; }
    for (size_t i = 0; !bad && i < (size_t)q->C * q->dim; i++)
        if (!isfinite(q->cent[i])) { bad = "centroid"; at = i; }
    for (size_t i = 0; !bad && i < q->C; i++)
        if (!(q->scale[i] > 0.0f && isfinite(q->scale[i]))) { bad = "scale"; at = i; }
    if (bad) {
        nl_rabitq_destroy(q);
        return nl_fail(NL_ECORRUPT, "rabitq: %s entry %zu out of range", bad, at);
    }
    derive(q);
    *out = q;
    return 0;
}
