/*
 * nl_filter.h — metadata filters: the JSON filter language, parsed into a read-only tree,
 * and the reference evaluator that decides one point from its metadata object.
 *
 * The language (docs/filters.md has the full contract):
 *   leaf       {"field": NAME, "eq": V} | {"field": NAME, "in": [V, ...]}
 *              | {"field": NAME, "gt"|"gte"|"lt"|"lte": NUM, ...}   (one or more bounds)
 *              | {"field": NAME, "exists": BOOL}
 *   composite  {"and": [F, ...]} | {"or": [F, ...]} | {"not": F}
 * V is a string, a number or a boolean. A field holding a list of strings matches eq/in
 * when any element does. Numbers compare by value (3 and 3.0 are equal); a range matches
 * numbers only. "exists" means present and not null.
 *
 * Parsing treats the text as hostile: at most NL_FILTER_MAX_BYTES, nesting at most
 * NL_FILTER_MAX_DEPTH, every key and type checked. A rejection is NL_EFILTER with a detail
 * that names the place as a path from the root: `filter at $.and[1].in[0]: ...`.
 *
 * The tree is what the engine's executor walks (it turns leaves into posting scans and
 * composites into bitmap algebra); nl_filter_match is the brute-force truth both are
 * tested against. Lifecycle: nl_filter_parse -> any number of threads read it ->
 * nl_filter_destroy.
 */
#ifndef NL_FILTER_H
#define NL_FILTER_H

#include <stddef.h>
#include <stdint.h>

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NL_FILTER_MAX_BYTES 65536
#define NL_FILTER_MAX_DEPTH 32

typedef enum { NL_FV_STR = 0, NL_FV_INT = 1, NL_FV_REAL = 2, NL_FV_BOOL = 3 } nl_fvalue_type;

/* A constant of a leaf. Numbers with an integral value that fits int64 are NL_FV_INT
 * (so 3.0 is the integer 3); other numbers are NL_FV_REAL. */
typedef struct {
    nl_fvalue_type type;
    int64_t i;       /* NL_FV_INT, and NL_FV_BOOL (0/1) */
    double d;        /* the value as a double, for every number */
    const char *s;   /* NL_FV_STR: not NUL-terminated inside; len bytes */
    size_t len;
} nl_fvalue;

typedef enum {
    NL_FN_AND = 0, NL_FN_OR, NL_FN_NOT, /* composites: kids */
    NL_FN_EQ, NL_FN_IN,                 /* leaves: vals (EQ has one) */
    NL_FN_RANGE,                        /* leaf: lo/hi bounds */
    NL_FN_EXISTS                        /* leaf: exists */
} nl_fnode_kind;

typedef struct nl_fnode {
    nl_fnode_kind kind;
    struct nl_fnode **kids; /* AND/OR: nkids >= 1; NOT: 1 */
    uint32_t nkids;
    const char *field;      /* leaves: the field name (field_len bytes, may hold any byte) */
    size_t field_len;
    nl_fvalue *vals;        /* EQ: 1, IN: nvals >= 1 */
    uint32_t nvals;
    int has_lo, lo_incl, has_hi, hi_incl; /* RANGE */
    double lo, hi;
    int exists;             /* EXISTS: true or false */
} nl_fnode;

typedef struct nl_filter nl_filter;

/* Parses len bytes of JSON. *out owned by the caller (nl_filter_destroy). NL_EFILTER with
 * a located detail when malformed. */
int nl_filter_parse(const char *json, size_t len, nl_filter **out);
void nl_filter_destroy(nl_filter *f);
const nl_fnode *nl_filter_root(const nl_filter *f);
/* The filter's canonical text (compact JSON), owned by the filter. */
const char *nl_filter_text(const nl_filter *f);

/* 1 when the metadata (a JSON object, or NULL/absent = no fields) satisfies the filter,
 * 0 when not; NL_EINVAL when meta is not a JSON object. The reference evaluator. */
int nl_filter_match_json(const nl_filter *f, const char *meta, size_t len);
/* The same on a parsed jansson object (NULL = no fields). */
struct json_t;
int nl_filter_match(const nl_filter *f, const struct json_t *meta);

/* A leaf's constant against one metadata value, as the index encodes it: the number is
 * integral-int64 (*is_int, *i) or not. Used by the engine's posting writer so that the
 * index and nl_filter_match agree on what "equal" means. */
int nl_filter_integral(double d, int64_t *i);

#ifdef __cplusplus
}
#endif
#endif
