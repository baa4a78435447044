/*
 * code_choice.c — estimating, before a build, which code reaches the recall target
 * (nl_code_choice.h has the method and why it is a fair proxy).
 *
 * Passes over the input: one scan for the exact 4L neighbours of the sample queries (in
 * blocks, each brute-forced against every query and merged into per-query sorted
 * lists), then random reads of the rows those lists name and of a strided training
 * sample. Memory: the lists (queries x 4L), one block, the named rows and the sample.
 * Everything is seeded, so the same input gives the same choice.
 *
 * Also here: the default code of a dimension (what a collection created without one, or
 * an import told not to choose, navigates by) and the collection config's code as text
 * ("pq:32", "rabitq:2", "auto"), so that every layer that names a code asks this file.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nl_code_choice.h"
#include "nl_eval.h"
#include "nearline.h"
#include "nl_rabitq.h"
#include "nl_util.h"

#define CC_BLOCK 65536u
#define CC_CHUNK 4096u /* rows per chunk when the scan samples a larger input */
#define CC_SAMPLE 65536u

/* ---------------------------------------------------------------- defaults and names */

uint32_t nl_code_default_pq_m(uint32_t dim)
{
    /* 32 bytes for the common 96..256-d embeddings (DiskANN's usual choice), more for
     * wide vectors where 32 chunks would each span many dimensions. */
    uint32_t m = dim <= 256 ? 32 : dim <= 512 ? 64 : 96;
    return m < dim ? m : dim;
}

uint32_t nl_code_default(uint32_t dim)
{
    /* The most RaBitQ bits whose code fits in the default PQ size plus 8 bytes (the
     * factors' room): 2 bits at 96..256-d, 1 bit at 512-d and 784-d; PQ where not even
     * one bit fits (over ~800-d) or the rotation would be too big to keep. */
    uint32_t room = nl_code_default_pq_m(dim) + 8;
    for (uint32_t b = NL_RABITQ_MAX_BITS; b >= 1 && dim <= NL_RABITQ_MAX_DIM; b--)
        if (nl_rabitq_code_bytes_for(dim, b) <= room)
            return NL_COLL_CODE_RABITQ(b);
    return NL_COLL_CODE_PQ;
}

int nl_collection_code_parse(const char *s, nl_collection_config *cfg)
{
    if (!strcmp(s, "auto")) {
        cfg->code = NL_COLL_CODE_DEFAULT;
        return 0;
    }
    nl_code_spec c;
    int rc = nl_code_spec_parse(s, &c);
    if (rc)
        return rc;
    if (c.kind == NL_CODE_PQ) {
        cfg->code = NL_COLL_CODE_PQ;
        cfg->pq_bytes = c.param;
    } else {
        cfg->code = NL_COLL_CODE_RABITQ(c.param);
    }
    return 0;
}

uint32_t nl_collection_code_resolved(const nl_collection_config *cfg)
{
    if (cfg->code != NL_COLL_CODE_DEFAULT)
        return cfg->code;
    return cfg->pq_bytes ? NL_COLL_CODE_PQ : nl_code_default(cfg->dim);
}

const char *nl_collection_code_name(const nl_collection_config *cfg, char *buf, size_t len)
{
    uint32_t code = nl_collection_code_resolved(cfg);
    if (NL_COLL_CODE_IS_RABITQ(code))
        snprintf(buf, len, "rabitq:%u", NL_COLL_CODE_BITS(code));
    else
        snprintf(buf, len, "pq:%u", cfg->pq_bytes ? cfg->pq_bytes : nl_code_default_pq_m(cfg->dim));
    return buf;
}

/* ---------------------------------------------------------------- the estimate */

typedef struct {
    float d;
    uint32_t id; /* row of the input (inputs beyond 2^32 rows are sampled below it) */
} nbr;

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Merges the sorted run add (na) into the sorted list cur (*nc of at most cap), leaving
 * out `self`. */
static void merge_into(nbr *cur, uint32_t *nc, uint32_t cap, const nbr *add, uint32_t na, uint32_t self, nbr *tmp)
{
    uint32_t i = 0, j = 0, o = 0;
    while (o < cap && (i < *nc || j < na)) {
        if (j < na && add[j].id == self) {
            j++;
            continue;
        }
        if (j >= na || (i < *nc && (cur[i].d < add[j].d || (cur[i].d == add[j].d && cur[i].id < add[j].id))))
            tmp[o++] = cur[i++];
        else
            tmp[o++] = add[j++];
    }
    memcpy(cur, tmp, sizeof(nbr) * o);
    *nc = o;
}

typedef struct {
    nl_dataset *ds;
    nl_metric metric;
    uint32_t d, nq, T, L;
    size_t esz;
    unsigned threads;
    float *q;          /* nq x d */
    uint32_t *qid;     /* the queries' own rows */
    nbr *top;          /* nq x T */
    uint32_t *ntop;
    uint32_t *uids;    /* sorted union of the rows in the lists */
    size_t nu;
    unsigned char *urows; /* nu rows, native type */
    nl_vecset sample;
    uint64_t n;
} cc_state;

/* Exact neighbours of every query over rows [first, first + count). */
static int scan_block(cc_state *s, uint64_t first, uint32_t count, unsigned char *buf, uint32_t *ids, float *dist,
                      nbr *run, nbr *tmp)
{
    int rc = nl_dataset_read(s->ds, first, count, buf);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < count; i++) /* bad input is named before it trains anything */
        if (nl_check_finite(nl_dataset_dtype(s->ds), buf + (size_t)i * s->esz, s->d) != 0)
            return nl_fail(NL_EBADVALUE, "row %llu holds NaN or Inf", (unsigned long long)(first + i));
    uint32_t k = s->T + 1 < count ? s->T + 1 : count;
    nl_vecset vs = {buf, count, s->d, nl_dataset_dtype(s->ds)};
    if ((rc = nl_groundtruth_exact(&vs, s->metric, s->q, s->nq, k, s->threads, ids, dist)) != 0)
        return rc;
    for (uint32_t qi = 0; qi < s->nq; qi++) {
        for (uint32_t j = 0; j < k; j++)
            run[j] = (nbr){dist[(size_t)qi * k + j], (uint32_t)(first + ids[(size_t)qi * k + j])};
        merge_into(s->top + (size_t)qi * s->T, &s->ntop[qi], s->T, run, k, s->qid[qi], tmp);
    }
    return 0;
}

/* Estimated recall@10 at L of one code over the queries' lists. */
static int evaluate(cc_state *s, nl_code_spec spec, uint64_t seed, double *recall)
{
    nl_quant *qz = NULL;
    nl_quant_params qp = {.max_sample = 0, .seed = seed, .threads = s->threads, .rows_hint = s->n};
    int rc = nl_quant_train(&s->sample, s->metric, spec, &qp, &qz);
    if (rc)
        return rc;
    uint32_t cb = nl_quant_code_bytes(qz);
    uint8_t *codes = malloc(s->nu * (size_t)cb);
    float *buf = malloc(sizeof(float) * nl_quant_query_floats(qz));
    float *est = malloc(sizeof(float) * s->T);
    nl_vecset uv = {s->urows, s->nu, s->d, nl_dataset_dtype(s->ds)};
    if (!codes || !buf || !est) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = nl_quant_encode(qz, &uv, codes, s->threads)) != 0)
        goto out;
    size_t hits = 0, want = 0;
    for (uint32_t qi = 0; qi < s->nq; qi++) {
        const nbr *t = s->top + (size_t)qi * s->T;
        uint32_t nt = s->ntop[qi];
        if (nt < 10)
            continue;
        nl_quant_query qq;
        nl_quant_prepare(qz, s->q + (size_t)qi * s->d, 0.0f, buf, &qq);
        for (uint32_t j = 0; j < nt; j++) {
            uint32_t *at = bsearch(&t[j].id, s->uids, s->nu, sizeof(uint32_t), cmp_u32);
            est[j] = nl_quant_estimate(&qq, codes + (size_t)(at - s->uids) * cb, NULL);
        }
        for (uint32_t j = 0; j < 10; j++) { /* the true 10 nearest: ranked in the code's top L? */
            uint32_t better = 0;
            for (uint32_t m = 0; m < nt; m++)
                better += est[m] < est[j] || (est[m] == est[j] && m < j);
            hits += better < s->L;
        }
        want += 10;
    }
    *recall = want ? (double)hits / (double)want : 0.0;
out:
    free(codes);
    free(buf);
    free(est);
    nl_quant_destroy(qz);
    return rc;
}

static int setup(cc_state *s, const nl_code_choice_params *p, nl_code_choice *out)
{
    const uint64_t n = s->n;
    uint64_t max_rows = p->max_rows ? p->max_rows : 2000000ull;
    if (max_rows > UINT32_MAX - 1)
        max_rows = UINT32_MAX - 1;
    /* The scanned rows: all, or evenly spaced chunks of them. */
    uint64_t nchunks = n <= max_rows ? 1 : max_rows / CC_CHUNK, chunk_rows = n <= max_rows ? n : CC_CHUNK;
    uint64_t step = nchunks > 1 ? n / nchunks : n;
    uint64_t S = nchunks * chunk_rows;
    out->rows_scanned = S;
    nl_rng r;
    nl_rng_seed(&r, p->seed ^ 0x636f646563686f31ull);
    s->q = malloc(sizeof(float) * (size_t)s->nq * s->d);
    s->qid = malloc(sizeof(uint32_t) * s->nq);
    s->top = malloc(sizeof(nbr) * (size_t)s->nq * s->T);
    s->ntop = calloc(s->nq, sizeof(uint32_t));
    if (!s->q || !s->qid || !s->top || !s->ntop)
        return -ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < s->nq && !rc; i++) {
        if (p->sample_queries) { /* given queries: none is a row, nothing is left out */
            s->qid[i] = UINT32_MAX;
            rc = nl_dataset_read_f32(p->sample_queries, i, 1, s->q + (size_t)i * s->d);
            continue;
        }
        uint64_t pos = nl_rng_below(&r, S);
        s->qid[i] = (uint32_t)((pos / chunk_rows) * step + pos % chunk_rows);
        rc = nl_dataset_read_f32(s->ds, s->qid[i], 1, s->q + (size_t)i * s->d);
    }
    uint32_t blk = CC_BLOCK;
    unsigned char *buf = malloc(s->esz * blk);
    uint32_t *ids = malloc(sizeof(uint32_t) * (size_t)s->nq * (s->T + 1));
    float *dist = malloc(sizeof(float) * (size_t)s->nq * (s->T + 1));
    nbr *run = malloc(sizeof(nbr) * (s->T + 1)), *tmp = malloc(sizeof(nbr) * s->T);
    if (!rc && (!buf || !ids || !dist || !run || !tmp))
        rc = -ENOMEM;
    for (uint64_t c = 0; c < nchunks && !rc; c++)
        for (uint64_t o = 0; o < chunk_rows && !rc; o += blk) {
            uint32_t cnt = (uint32_t)(chunk_rows - o < blk ? chunk_rows - o : blk);
            rc = scan_block(s, c * step + o, cnt, buf, ids, dist, run, tmp);
        }
    free(buf);
    free(ids);
    free(dist);
    free(run);
    free(tmp);
    if (rc)
        return rc;
    /* The rows the lists name, read once each. */
    size_t tot = 0;
    for (uint32_t i = 0; i < s->nq; i++)
        tot += s->ntop[i];
    s->uids = malloc(sizeof(uint32_t) * (tot ? tot : 1));
    if (!s->uids)
        return -ENOMEM;
    for (uint32_t i = 0; i < s->nq; i++)
        for (uint32_t j = 0; j < s->ntop[i]; j++)
            s->uids[s->nu++] = s->top[(size_t)i * s->T + j].id;
    qsort(s->uids, s->nu, sizeof(uint32_t), cmp_u32);
    size_t u = 0;
    for (size_t i = 0; i < s->nu; i++)
        if (u == 0 || s->uids[i] != s->uids[u - 1])
            s->uids[u++] = s->uids[i];
    s->nu = u;
    s->urows = malloc(s->esz * (s->nu ? s->nu : 1));
    if (!s->urows)
        return -ENOMEM;
    for (size_t i = 0; i < s->nu && !rc; i++)
        rc = nl_dataset_read(s->ds, s->uids[i], 1, s->urows + i * s->esz);
    /* The training sample: strided rows of the whole input. */
    size_t ns = n < CC_SAMPLE ? (size_t)n : CC_SAMPLE;
    unsigned char *smp = malloc(s->esz * ns);
    if (!rc && !smp)
        rc = -ENOMEM;
    for (size_t i = 0; i < ns && !rc; i++)
        rc = nl_dataset_read(s->ds, (size_t)(i * (n / ns)), 1, smp + i * s->esz);
    s->sample = (nl_vecset){smp, ns, s->d, nl_dataset_dtype(s->ds)};
    return rc;
}

/* The estimate of spec: the one made already, or a new one, listed. */
static int estimate(cc_state *s, nl_code_choice *out, nl_code_spec spec, uint64_t seed, double *recall)
{
    for (uint32_t i = 0; i < out->ncand; i++)
        if (out->cand[i].spec.kind == spec.kind && out->cand[i].spec.param == spec.param) {
            *recall = out->cand[i].recall;
            return 0;
        }
    int rc = evaluate(s, spec, seed, recall);
    if (!rc && out->ncand < NL_CODE_CHOICE_MAX)
        out->cand[out->ncand++] = (nl_code_candidate){spec, nl_code_spec_bytes(spec, s->d), *recall};
    return rc;
}

int nl_code_choose(nl_dataset *ds, nl_metric metric, const nl_code_choice_params *p, nl_code_choice *out)
{
    uint64_t t0 = nl_now_ns();
    memset(out, 0, sizeof *out);
    cc_state s;
    memset(&s, 0, sizeof s);
    s.ds = ds;
    s.metric = metric;
    s.n = nl_dataset_count(ds);
    s.d = nl_dataset_dim(ds);
    s.esz = nl_dtype_size(nl_dataset_dtype(ds)) * s.d;
    s.threads = p->threads ? p->threads : nl_cpu_count();
    /* The estimate leaves out the graph's own losses and takes rows of the data for
     * queries, which can sit nearer their neighbours than real queries do (sift-5k's by
     * a factor of 2.6 in squared distance): it is asked to reach the target at 0.6 of the
     * list size it is for (measured: 0.5 warns on hard data that L=50 serves at 0.995;
     * 1.0 takes 1-bit codes for sift-5k that reach 0.83). */
    out->L = p->L ? p->L : 50;
    s.L = out->L * 3 / 5 > 10 ? out->L * 3 / 5 : 10;
    s.T = 8 * s.L;
    out->target = p->target > 0 ? p->target : 0.95;
    out->budget = p->budget;
    uint32_t nq = p->queries ? p->queries : 200;
    if (s.n < 1000)
        return nl_fail(NL_EINVAL, "code choice: %llu rows are too few to estimate from", (unsigned long long)s.n);
    if (nq > s.n / 10)
        nq = (uint32_t)(s.n / 10);
    if (p->sample_queries) {
        if (nl_dataset_dim(p->sample_queries) != s.d)
            return nl_fail(NL_EDIM, "code choice: sample queries of dimension %u for %u-dimensional data",
                           nl_dataset_dim(p->sample_queries), s.d);
        if (nl_dataset_count(p->sample_queries) < nq)
            nq = (uint32_t)nl_dataset_count(p->sample_queries);
        if (nq == 0)
            return nl_fail(NL_EEMPTY, "code choice: no sample queries");
    }
    if (s.T > s.n / 4)
        s.T = (uint32_t)(s.n / 4);
    s.nq = out->queries = nq;
    out->queries_given = p->sample_queries != NULL;
    int rc = setup(&s, p, out);
    const uint32_t d = s.d, budget = p->budget;
    int have = 0;
    double best = -1.0;
    if (!rc && p->nonly) {
        for (uint32_t i = 0; i < p->nonly && i < NL_CODE_CHOICE_MAX && !rc; i++) {
            double rec;
            if ((rc = nl_code_spec_check(p->only[i], d)) == 0)
                rc = estimate(&s, out, p->only[i], p->seed, &rec);
        }
        for (uint32_t i = 0; !rc && i < out->ncand; i++)
            if (out->cand[i].recall >= out->target &&
                (!out->meets_target || out->cand[i].bytes < out->chosen_bytes)) {
                out->chosen = out->cand[i].spec;
                out->chosen_bytes = out->cand[i].bytes;
                out->chosen_recall = out->cand[i].recall;
                out->meets_target = 1;
            }
        goto done;
    }
    /* RaBitQ in budget, cheapest first, until one reaches the target. */
    for (uint32_t b = 1; !rc && b <= NL_RABITQ_MAX_BITS && d <= NL_RABITQ_MAX_DIM; b++) {
        nl_code_spec c = {NL_CODE_RABITQ, b};
        if (budget && nl_code_spec_bytes(c, d) > budget)
            break;
        double rec;
        if ((rc = estimate(&s, out, c, p->seed, &rec)) != 0)
            break;
        if (rec > best) {
            best = rec;
            out->chosen = c;
            have = 1;
        }
        if (rec >= out->target) {
            out->chosen = c;
            out->meets_target = 1;
            break;
        }
    }
    /* None did: PQ at the most the budget allows (or where RaBitQ cannot serve). */
    if (!rc && !out->meets_target && budget) {
        nl_code_spec c = {NL_CODE_PQ, budget < d ? budget : d};
        double rec;
        if ((rc = estimate(&s, out, c, p->seed, &rec)) == 0) {
            if (rec > best) {
                best = rec;
                out->chosen = c;
                have = 1;
            }
            out->meets_target = rec >= out->target;
        }
    }
    /* Every candidate, when asked (the codes command, benchmarks). */
    for (uint32_t b = 1; !rc && p->evaluate_all && b <= NL_RABITQ_MAX_BITS && d <= NL_RABITQ_MAX_DIM; b++) {
        double rec;
        rc = estimate(&s, out, (nl_code_spec){NL_CODE_RABITQ, b}, p->seed, &rec);
    }
    uint32_t pqs[2] = {nl_code_default_pq_m(d), budget && budget < d ? budget : 0};
    for (int i = 0; !rc && p->evaluate_all && i < 2; i++) {
        double rec;
        if (pqs[i])
            rc = estimate(&s, out, (nl_code_spec){NL_CODE_PQ, pqs[i]}, p->seed, &rec);
    }
    /* Still short: what would reach it, for the warning. */
    nl_code_spec would = {NL_CODE_PQ, 0};
    double would_rec = 0.0;
    if (!rc && !out->meets_target) {
        for (uint32_t b = 1; b <= NL_RABITQ_MAX_BITS && d <= NL_RABITQ_MAX_DIM; b++) {
            nl_code_spec c = {NL_CODE_RABITQ, b};
            if (!budget || nl_code_spec_bytes(c, d) <= budget)
                continue;
            double rec;
            if ((rc = estimate(&s, out, c, p->seed, &rec)) != 0)
                break;
            if (rec >= out->target) {
                would = c;
                would_rec = rec;
                break;
            }
        }
    }
    if (!rc && !have) { /* a budget below every code: the smallest PQ that fits, said */
        out->chosen = (nl_code_spec){NL_CODE_PQ, budget ? (budget < d ? budget : d) : nl_code_default_pq_m(d)};
        best = 0.0;
    }
    if (!rc) {
        out->chosen_bytes = nl_code_spec_bytes(out->chosen, d);
        out->chosen_recall = best;
        for (uint32_t i = 0; i < out->ncand; i++)
            if (out->cand[i].spec.kind == out->chosen.kind && out->cand[i].spec.param == out->chosen.param)
                out->chosen_recall = out->cand[i].recall;
        if (!out->meets_target) {
            char a[32], b[32];
            int w = snprintf(out->warning, sizeof out->warning,
                             "no code within %u bytes a point reaches recall@10 %.2f at L=%u: the best, %s, is "
                             "estimated at %.3f",
                             budget, out->target, out->L, nl_code_spec_name(out->chosen, a, sizeof a),
                             out->chosen_recall);
            if (w > 0 && (size_t)w < sizeof out->warning) {
                if (would_rec > 0)
                    snprintf(out->warning + w, sizeof out->warning - (size_t)w,
                             "; %s (%u bytes a point) would reach %.3f: allow it with --search-memory",
                             nl_code_spec_name(would, b, sizeof b), nl_code_spec_bytes(would, d), would_rec);
                else
                    snprintf(out->warning + w, sizeof out->warning - (size_t)w,
                             "; no code up to 8-bit RaBitQ reaches it: search with a larger L");
            }
        }
    }
done:
    out->seconds = (double)(nl_now_ns() - t0) / 1e9;
    free(s.q);
    free(s.qid);
    free(s.top);
    free(s.ntop);
    free(s.uids);
    free(s.urows);
    free((void *)s.sample.data);
    return rc;
}

json_t *nl_code_choice_json(const nl_code_choice *c)
{
    char name[32];
    json_t *cands = json_array();
    for (uint32_t i = 0; i < c->ncand; i++)
        json_array_append_new(cands, json_pack("{s:s, s:i, s:f}", "code",
                                               nl_code_spec_name(c->cand[i].spec, name, sizeof name), "bytes_per_point",
                                               (json_int_t)c->cand[i].bytes, "estimated_recall_at_10",
                                               (double)(int)(c->cand[i].recall * 10000 + 0.5) / 10000));
    json_t *j = json_pack("{s:s, s:i, s:f, s:b, s:f, s:i, s:i, s:i, s:I, s:f, s:o}", "code",
                          nl_code_spec_name(c->chosen, name, sizeof name), "bytes_per_point",
                          (json_int_t)c->chosen_bytes, "estimated_recall_at_10",
                          (double)(int)(c->chosen_recall * 10000 + 0.5) / 10000, "meets_target", c->meets_target,
                          "target", c->target, "L", (json_int_t)c->L, "budget_bytes_per_point", (json_int_t)c->budget,
                          "sample_queries", (json_int_t)c->queries, "rows_scanned", (json_int_t)c->rows_scanned,
                          "seconds", (double)(int)(c->seconds * 100 + 0.5) / 100, "candidates", cands);
    if (j)
        json_object_set_new(j, "queries_from", json_string(c->queries_given ? "file" : "rows"));
    if (j && c->warning[0])
        json_object_set_new(j, "warning", json_string(c->warning));
    return j;
}
