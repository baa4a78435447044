/*
 * filter.c — the filter language: a hostile-input parser from JSON (jansson) into the
 * nl_fnode tree, and the brute-force evaluator over one metadata object.
 *
 * Parsing keeps the jansson document alive for the filter's lifetime, so string constants
 * and field names point into it. Every rejection names its place as a path ($ = the root,
 * .and[2] = the third child of an "and"), because a filter of a few hundred clauses that
 * just says "bad filter" is useless to whoever wrote it.
 *
 * Equality of numbers is by value, decided on the normalised form: a number whose value
 * is an integer that fits int64 is an integer (3.0 == 3); anything else is a real. The
 * engine's posting writer normalises stored values the same way (nl_filter_integral), so
 * the index and this evaluator cannot disagree.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nl_filter.h"

struct nl_filter {
    json_t *doc;
    nl_fnode *root;
    char *text;
};

/* ---------------------------------------------------------------- parse */

typedef struct {
    char path[512];
    size_t len;
} fpath;

static void path_push(fpath *p, size_t *mark, const char *fmt, const char *key, long idx)
{
    *mark = p->len;
    int w;
    if (idx >= 0)
        w = snprintf(p->path + p->len, sizeof p->path - p->len, fmt, key, idx);
    else
        w = snprintf(p->path + p->len, sizeof p->path - p->len, fmt, key);
    if (w > 0)
        p->len = p->len + (size_t)w < sizeof p->path ? p->len + (size_t)w : sizeof p->path - 1;
}

static void path_pop(fpath *p, size_t mark)
{
    p->len = mark;
    p->path[mark] = 0;
}

#define FAIL(p, ...) fail_at(p, __VA_ARGS__)

__attribute__((format(printf, 2, 3))) static int fail_at(const fpath *p, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return nl_fail(NL_EFILTER, "filter at %s: %s", p->path, msg);
}

int nl_filter_integral(double d, int64_t *i)
{
    /* 2^63 itself does not fit int64; every double below it in magnitude that is integral
     * does. */
    if (!isfinite(d) || d != floor(d) || d >= 9223372036854775808.0 || d < -9223372036854775808.0)
        return 0;
    *i = (int64_t)d;
    return 1;
}

static int parse_value(const json_t *v, nl_fvalue *out, fpath *p, const char *what)
{
    memset(out, 0, sizeof *out);
    if (json_is_string(v)) {
        out->type = NL_FV_STR;
        out->s = json_string_value(v);
        out->len = json_string_length(v);
        return 0;
    }
    if (json_is_integer(v)) {
        out->type = NL_FV_INT;
        out->i = (int64_t)json_integer_value(v);
        out->d = (double)out->i;
        return 0;
    }
    if (json_is_real(v)) {
        out->d = json_real_value(v);
        out->type = nl_filter_integral(out->d, &out->i) ? NL_FV_INT : NL_FV_REAL;
        return 0;
    }
    if (json_is_boolean(v)) {
        out->type = NL_FV_BOOL;
        out->i = json_is_true(v);
        return 0;
    }
    return FAIL(p, "%s takes a string, number or boolean, not %s", what,
                json_is_null(v) ? "null" : json_is_array(v) ? "an array" : "an object");
}

static void node_free(nl_fnode *n)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->nkids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->vals);
    free(n);
}

static int parse_node(const json_t *j, int depth, fpath *p, nl_fnode **out);

static int parse_composite(const json_t *j, const char *op, const json_t *arg, int depth, fpath *p, nl_fnode *n)
{
    size_t mark;
    if (strcmp(op, "not") == 0) {
        n->kind = NL_FN_NOT;
        n->kids = calloc(1, sizeof *n->kids);
        if (!n->kids)
            return -ENOMEM;
        n->nkids = 1;
        path_push(p, &mark, ".%s", "not", -1);
        int rc = parse_node(arg, depth + 1, p, &n->kids[0]);
        if (!rc)
            path_pop(p, mark);
        return rc;
    }
    n->kind = strcmp(op, "and") == 0 ? NL_FN_AND : NL_FN_OR;
    if (!json_is_array(arg) || json_array_size(arg) == 0) {
        path_push(p, &mark, ".%s", op, -1);
        return FAIL(p, "\"%s\" takes a non-empty array of filters", op);
    }
    size_t cnt = json_array_size(arg);
    n->kids = calloc(cnt, sizeof *n->kids);
    if (!n->kids)
        return -ENOMEM;
    for (size_t i = 0; i < cnt; i++) {
        path_push(p, &mark, ".%s[%ld]", op, (long)i);
        int rc = parse_node(json_array_get(arg, i), depth + 1, p, &n->kids[i]);
        n->nkids = (uint32_t)(i + 1);
        if (rc)
            return rc;
        path_pop(p, mark);
    }
    (void)j;
    return 0;
}

static int parse_leaf(const json_t *j, fpath *p, nl_fnode *n)
{
    const json_t *field = json_object_get(j, "field");
    size_t mark;
    if (!json_is_string(field) || json_string_length(field) == 0) {
        path_push(p, &mark, ".%s", "field", -1);
        return FAIL(p, "\"field\" must be a non-empty string");
    }
    n->field = json_string_value(field);
    n->field_len = json_string_length(field);
    int kinds = 0; /* eq, in, exists, range: exactly one kind per leaf */
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)j, key, v)
    {
        if (strcmp(key, "field") == 0)
            continue;
        int rc;
        path_push(p, &mark, ".%s", key, -1);
        /* One kind per leaf, checked before anything is allocated for this key. */
        int bit = strcmp(key, "eq") == 0       ? 1
                  : strcmp(key, "in") == 0     ? 2
                  : strcmp(key, "exists") == 0 ? 4
                  : (strcmp(key, "gt") == 0 || strcmp(key, "gte") == 0 || strcmp(key, "lt") == 0 ||
                     strcmp(key, "lte") == 0)
                      ? 8
                      : 0; /* unknown: reported below */
        if (bit && kinds && (kinds != bit || bit != 8))
            return FAIL(p, "a leaf takes one kind of operator (eq, in, exists, or range bounds), not several");
        if (strcmp(key, "eq") == 0) {
            kinds |= 1;
            n->kind = NL_FN_EQ;
            if (!(n->vals = calloc(1, sizeof *n->vals)))
                return -ENOMEM;
            n->nvals = 1;
            if ((rc = parse_value(v, &n->vals[0], p, "eq")) != 0)
                return rc;
        } else if (strcmp(key, "in") == 0) {
            kinds |= 2;
            n->kind = NL_FN_IN;
            if (!json_is_array(v) || json_array_size(v) == 0)
                return FAIL(p, "\"in\" takes a non-empty array of strings, numbers or booleans");
            size_t cnt = json_array_size(v);
            if (!(n->vals = calloc(cnt, sizeof *n->vals)))
                return -ENOMEM;
            n->nvals = (uint32_t)cnt;
            for (size_t i = 0; i < cnt; i++) {
                size_t m2;
                path_push(p, &m2, "[%s%ld]", "", (long)i);
                if ((rc = parse_value(json_array_get(v, i), &n->vals[i], p, "in")) != 0)
                    return rc;
                path_pop(p, m2);
            }
        } else if (strcmp(key, "exists") == 0) {
            kinds |= 4;
            n->kind = NL_FN_EXISTS;
            if (!json_is_boolean(v))
                return FAIL(p, "\"exists\" takes true or false");
            n->exists = json_is_true(v);
        } else if (strcmp(key, "gt") == 0 || strcmp(key, "gte") == 0 || strcmp(key, "lt") == 0 ||
                   strcmp(key, "lte") == 0) {
            kinds |= 8;
            n->kind = NL_FN_RANGE;
            if (!json_is_number(v))
                return FAIL(p, "\"%s\" takes a number", key);
            double d = json_number_value(v);
            int lower = key[0] == 'g', incl = key[2] == 'e';
            if (lower) {
                if (n->has_lo)
                    return FAIL(p, "a range has one lower bound (gt or gte), not both");
                n->has_lo = 1, n->lo = d, n->lo_incl = incl;
            } else {
                if (n->has_hi)
                    return FAIL(p, "a range has one upper bound (lt or lte), not both");
                n->has_hi = 1, n->hi = d, n->hi_incl = incl;
            }
        } else {
            return FAIL(p, "unknown operator \"%s\" (a leaf takes eq, in, gt, gte, lt, lte or exists)", key);
        }
        path_pop(p, mark);
    }
    if (kinds == 0)
        return FAIL(p, "a leaf needs an operator: eq, in, gt, gte, lt, lte or exists");
    if (kinds & (kinds - 1))
        return FAIL(p, "a leaf takes one kind of operator (eq, in, exists, or range bounds), not several");
    return 0;
}

static int parse_node(const json_t *j, int depth, fpath *p, nl_fnode **out)
{
    *out = NULL;
    if (depth > NL_FILTER_MAX_DEPTH)
        return FAIL(p, "nesting deeper than %d", NL_FILTER_MAX_DEPTH);
    if (!json_is_object(j))
        return FAIL(p, "a filter is a JSON object");
    nl_fnode *n = calloc(1, sizeof *n);
    if (!n)
        return -ENOMEM;
    *out = n;
    const char *ops[] = {"and", "or", "not"};
    for (int i = 0; i < 3; i++) {
        const json_t *arg = json_object_get(j, ops[i]);
        if (!arg)
            continue;
        if (json_object_size(j) != 1) {
            const char *other = NULL, *key;
            const json_t *v;
            json_object_foreach((json_t *)j, key, v)
            {
                if (strcmp(key, ops[i]) != 0) {
                    other = key;
                    break;
                }
            }
            return FAIL(p, "\"%s\" stands alone in its object; found \"%s\" beside it", ops[i], other ? other : "?");
        }
        return parse_composite(j, ops[i], arg, depth, p, n);
    }
    if (!json_object_get(j, "field")) {
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)j, key, v)
        {
            return FAIL(p, "unknown operator \"%s\" (expected \"field\", \"and\", \"or\" or \"not\")", key);
        }
        return FAIL(p, "empty filter object (expected \"field\", \"and\", \"or\" or \"not\")");
    }
    return parse_leaf(j, p, n);
}

int nl_filter_parse(const char *json, size_t len, nl_filter **out)
{
    *out = NULL;
    if (!json)
        return nl_fail(NL_EFILTER, "filter: no text");
    if (len > NL_FILTER_MAX_BYTES)
        return nl_fail(NL_EFILTER, "filter: %zu bytes is over the %d-byte limit", len, NL_FILTER_MAX_BYTES);
    json_error_t err;
    json_t *doc = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!doc)
        return nl_fail(NL_EFILTER, "filter: not valid JSON at line %d column %d: %s", err.line, err.column, err.text);
    nl_filter *f = calloc(1, sizeof *f);
    if (!f) {
        json_decref(doc);
        return -ENOMEM;
    }
    f->doc = doc;
    fpath p = {"$", 1};
    int rc = parse_node(doc, 1, &p, &f->root);
    if (!rc && !(f->text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)))
        rc = -ENOMEM;
    if (rc) {
        nl_filter_destroy(f);
        return rc;
    }
    *out = f;
    return 0;
}

void nl_filter_destroy(nl_filter *f)
{
    if (!f)
        return;
    node_free(f->root);
    free(f->text);
    json_decref(f->doc);
    free(f);
}

const nl_fnode *nl_filter_root(const nl_filter *f) { return f->root; }
const char *nl_filter_text(const nl_filter *f) { return f->text; }

/* ---------------------------------------------------------------- evaluate */

/* One stored scalar equal to one constant, by the normalised rules above. */
static int scalar_eq(const json_t *v, const nl_fvalue *c)
{
    switch (c->type) {
    case NL_FV_STR:
        return json_is_string(v) && json_string_length(v) == c->len && memcmp(json_string_value(v), c->s, c->len) == 0;
    case NL_FV_BOOL:
        return json_is_boolean(v) && json_is_true(v) == (int)c->i;
    case NL_FV_INT: {
        if (json_is_integer(v))
            return (int64_t)json_integer_value(v) == c->i;
        int64_t i;
        return json_is_real(v) && nl_filter_integral(json_real_value(v), &i) && i == c->i;
    }
    case NL_FV_REAL:
        return json_is_real(v) && json_real_value(v) == c->d;
    }
    return 0;
}

static int value_eq(const json_t *v, const nl_fvalue *c)
{
    if (json_is_array(v)) {
        if (c->type != NL_FV_STR)
            return 0;
        size_t i;
        const json_t *e;
        json_array_foreach(v, i, e)
        {
            if (scalar_eq(e, c))
                return 1;
        }
        return 0;
    }
    return scalar_eq(v, c);
}

static int match_node(const nl_fnode *n, const json_t *meta)
{
    switch (n->kind) {
    case NL_FN_AND:
        for (uint32_t i = 0; i < n->nkids; i++)
            if (!match_node(n->kids[i], meta))
                return 0;
        return 1;
    case NL_FN_OR:
        for (uint32_t i = 0; i < n->nkids; i++)
            if (match_node(n->kids[i], meta))
                return 1;
        return 0;
    case NL_FN_NOT:
        return !match_node(n->kids[0], meta);
    default:
        break;
    }
    const json_t *v = meta ? json_object_getn(meta, n->field, n->field_len) : NULL;
    if (v && json_is_null(v))
        v = NULL;
    switch (n->kind) {
    case NL_FN_EXISTS:
        return (v != NULL) == n->exists;
    case NL_FN_EQ:
    case NL_FN_IN:
        if (!v)
            return 0;
        for (uint32_t i = 0; i < n->nvals; i++)
            if (value_eq(v, &n->vals[i]))
                return 1;
        return 0;
    case NL_FN_RANGE: {
        if (!v || !json_is_number(v))
            return 0;
        double d = json_number_value(v);
        if (n->has_lo && (n->lo_incl ? d < n->lo : d <= n->lo))
            return 0;
        if (n->has_hi && (n->hi_incl ? d > n->hi : d >= n->hi))
            return 0;
        return 1;
    }
    default:
        return 0;
    }
}

int nl_filter_match(const nl_filter *f, const json_t *meta)
{
    return match_node(f->root, meta && json_is_object(meta) ? meta : NULL);
}

int nl_filter_match_json(const nl_filter *f, const char *meta, size_t len)
{
    json_t *m = NULL;
    if (meta && len) {
        json_error_t err;
        m = json_loadb(meta, len, 0, &err);
        if (!m || !json_is_object(m)) {
            json_decref(m);
            return nl_fail(NL_EINVAL, "metadata is not a JSON object");
        }
    }
    int r = match_node(f->root, m);
    json_decref(m);
    return r;
}
