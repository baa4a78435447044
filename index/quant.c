/*
 * quant.c — one handle over the two code kinds (nl_quant.h). Exactly one of pq / rbq is
 * set; everything else forwards.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nl_quant.h"

struct nl_quant {
    nl_code_spec spec;
    nl_pq *pq;
    nl_rabitq *rbq;
};

int nl_code_spec_parse(const char *s, nl_code_spec *out)
{
    const char *num;
    nl_code_kind k;
    if (strncmp(s, "pq", 2) == 0) {
        k = NL_CODE_PQ;
        num = s + 2;
    } else if (strncmp(s, "rabitq", 6) == 0) {
        k = NL_CODE_RABITQ;
        num = s + 6;
    } else {
        return nl_fail(NL_EINVAL, "code '%s': expected pq:BYTES or rabitq:BITS", s);
    }
    if (*num == ':')
        num++;
    char *end;
    unsigned long v = strtoul(num, &end, 10);
    if (!*num || *end || v == 0 || v > (k == NL_CODE_PQ ? 4096ul : NL_RABITQ_MAX_BITS))
        return nl_fail(NL_EINVAL, "code '%s': %s", s, k == NL_CODE_PQ ? "PQ bytes 1..4096" : "RaBitQ bits 1..8");
    out->kind = k;
    out->param = (uint32_t)v;
    return 0;
}

const char *nl_code_spec_name(nl_code_spec c, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%u", c.kind == NL_CODE_PQ ? "pq" : "rabitq", c.param);
    return buf;
}

uint32_t nl_code_spec_bytes(nl_code_spec c, uint32_t dim)
{
    if (nl_code_spec_check(c, dim) != 0)
        return 0;
    return c.kind == NL_CODE_PQ ? c.param : nl_rabitq_code_bytes_for(dim, c.param);
}

int nl_code_spec_check(nl_code_spec c, uint32_t dim)
{
    if (c.kind == NL_CODE_PQ) {
        if (c.param == 0 || c.param > dim)
            return nl_fail(NL_EINVAL, "PQ of %u bytes for %u dimensions (1..dim)", c.param, dim);
        return 0;
    }
    if (c.kind != NL_CODE_RABITQ || c.param == 0 || c.param > NL_RABITQ_MAX_BITS)
        return nl_fail(NL_EINVAL, "RaBitQ of %u bits per dimension (1..8)", c.param);
    if (dim > NL_RABITQ_MAX_DIM)
        return nl_fail(NL_EINVAL, "RaBitQ serves at most %u dimensions, not %u", NL_RABITQ_MAX_DIM, dim);
    return 0;
}

static nl_quant *wrap(nl_code_spec spec, nl_pq *pq, nl_rabitq *rbq)
{
    nl_quant *q = calloc(1, sizeof *q);
    if (!q) {
        nl_pq_destroy(pq);
        nl_rabitq_destroy(rbq);
        return NULL;
    }
    q->spec = spec;
    q->pq = pq;
    q->rbq = rbq;
    return q;
}

int nl_quant_train(const nl_vecset *vs, nl_metric metric, nl_code_spec spec, const nl_quant_params *p,
                   nl_quant **out)
{
    *out = NULL;
    int rc = nl_code_spec_check(spec, vs->dim);
    if (rc)
        return rc;
    if (spec.kind == NL_CODE_PQ) {
        nl_pq *pq = NULL;
        nl_pq_params pp = {.m = spec.param, .max_sample = p->max_sample, .iters = 0, .seed = p->seed,
                           .threads = p->threads};
        if ((rc = nl_pq_train(vs, metric, &pp, &pq)) != 0)
            return rc;
        return nl_quant_from_pq(pq, out);
    }
    nl_rabitq *r = NULL;
    nl_rabitq_params rp = {.bits = spec.param, .max_sample = 0, .rows_hint = p->rows_hint, .seed = p->seed,
                           .threads = p->threads};
    if ((rc = nl_rabitq_train(vs, metric, &rp, &r)) != 0)
        return rc;
    *out = wrap(spec, NULL, r);
    return *out ? 0 : -ENOMEM;
}

int nl_quant_from_pq(nl_pq *pq, nl_quant **out)
{
    *out = wrap((nl_code_spec){NL_CODE_PQ, nl_pq_m(pq)}, pq, NULL);
    return *out ? 0 : -ENOMEM;
}

void nl_quant_destroy(nl_quant *q)
{
    if (!q)
        return;
    nl_pq_destroy(q->pq);
    nl_rabitq_destroy(q->rbq);
    free(q);
}

nl_code_spec nl_quant_spec(const nl_quant *q) { return q->spec; }
uint32_t nl_quant_code_bytes(const nl_quant *q) { return q->pq ? nl_pq_m(q->pq) : nl_rabitq_code_bytes(q->rbq); }
uint32_t nl_quant_dim(const nl_quant *q) { return q->pq ? nl_pq_dim(q->pq) : nl_rabitq_dim(q->rbq); }
nl_metric nl_quant_metric(const nl_quant *q) { return q->pq ? nl_pq_metric(q->pq) : nl_rabitq_metric(q->rbq); }
const nl_pq *nl_quant_pq(const nl_quant *q) { return q->pq; }
const nl_rabitq *nl_quant_rabitq(const nl_quant *q) { return q->rbq; }

int nl_quant_encode(const nl_quant *q, const nl_vecset *vs, uint8_t *codes, unsigned threads)
{
    return q->pq ? nl_pq_encode(q->pq, vs, codes, threads) : nl_rabitq_encode(q->rbq, vs, codes, threads);
}

int nl_quant_check_codes(const nl_quant *q, const uint8_t *codes, size_t n)
{
    return q->pq ? 0 : nl_rabitq_check_codes(q->rbq, codes, n);
}

uint32_t nl_quant_groups(const nl_quant *q) { return q->pq ? 0 : nl_rabitq_centroids(q->rbq); }

uint32_t nl_quant_group_of(const nl_quant *q, const uint8_t *code)
{
    const uint8_t *f = code + (size_t)nl_rabitq_bits(q->rbq) * ((nl_rabitq_dim(q->rbq) + 7) / 8);
    uint32_t w, cid;
    memcpy(&w, f, 4);
    (void)nl_rabitq_unpack_f(w, &cid);
    return cid;
}

size_t nl_quant_query_floats(const nl_quant *q)
{
    return q->pq ? (size_t)NL_PQ_CENTROIDS * nl_pq_m(q->pq) : nl_rabitq_query_floats(q->rbq);
}

void nl_quant_prepare(const nl_quant *q, const float *query, float eps0, float *buf, nl_quant_query *out)
{
    memset(out, 0, sizeof *out);
    out->kind = q->spec.kind;
    if (q->pq) {
        out->m = nl_pq_m(q->pq);
        out->table = buf;
        nl_pq_table(q->pq, query, buf);
        return;
    }
    nl_rabitq_prepare(q->rbq, query, eps0, buf, &out->rq);
}

size_t nl_quant_serialized_size(const nl_quant *q)
{
    return q->pq ? nl_pq_serialized_size(q->pq) : nl_rabitq_serialized_size(q->rbq);
}

int nl_quant_serialize(const nl_quant *q, void *buf, size_t len)
{
    return q->pq ? nl_pq_serialize(q->pq, buf, len) : nl_rabitq_serialize(q->rbq, buf, len);
}

int nl_quant_deserialize(nl_code_kind kind, const void *buf, size_t len, nl_quant **out)
{
    *out = NULL;
    int rc;
    if (kind == NL_CODE_PQ) {
        nl_pq *pq = NULL;
        if ((rc = nl_pq_deserialize(buf, len, &pq)) != 0)
            return rc;
        return nl_quant_from_pq(pq, out);
    }
    if (kind != NL_CODE_RABITQ)
        return nl_fail(NL_ECORRUPT, "code kind %u unknown", (unsigned)kind);
    nl_rabitq *r = NULL;
    if ((rc = nl_rabitq_deserialize(buf, len, &r)) != 0)
        return rc;
    *out = wrap((nl_code_spec){NL_CODE_RABITQ, nl_rabitq_bits(r)}, NULL, r);
    return *out ? 0 : -ENOMEM;
}
