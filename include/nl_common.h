/*
 * nl_common.h — the conventions every nearline module shares.
 *
 * Errors: every fallible call returns 0 on success or a negative code. Codes in
 * [-4095, -1] are negated errno values (the system said no); codes at or below
 * NL_ERR_BASE are nearline's own. nl_strerror() names both. A failing call may also
 * leave a human-readable detail (which row, which field) in a per-thread buffer read by
 * nl_errdetail(); libraries never print.
 *
 * Types: vectors are stored as f32, f16, u8 or i8 and always compared against an f32
 * query. NL_DTYPE_I32 exists only so dataset readers can hand back ivecs ground truth.
 */
#ifndef NL_COMMON_H
#define NL_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    NL_OK = 0,
    NL_ERR_BASE = -30900,
    NL_EINVAL = NL_ERR_BASE,   /* an argument is out of range or inconsistent */
    NL_EFORMAT = -30901,       /* an input file is malformed */
    NL_ETRUNCATED = -30902,    /* an input file ends early */
    NL_EDIM = -30903,          /* dimensions disagree */
    NL_ECORRUPT = -30904,      /* stored bytes fail validation or checksum */
    NL_EUNSUPPORTED = -30905,  /* a valid request this build cannot serve */
    NL_EBADVALUE = -30906,     /* a vector holds NaN or Inf */
    NL_ENOTFOUND = -30907,     /* a named object does not exist */
    NL_EEXISTS = -30908,       /* a named object exists already */
    NL_EEMPTY = -30909,        /* an input holds no rows */
    NL_EFILTER = -30910,       /* a filter is malformed (the detail says where) */
    NL_EUNAVAILABLE = -30911,  /* a peer or shard cannot be reached now (cluster) */
    NL_ESTALE = -30912,        /* an operation from an older epoch, or out of order (replication) */
    NL_EFAILED = -30913,       /* a durable step failed and its outcome is unknown: the shard
                                * takes no write until it has been reopened (docs/decisions.md) */
    NL_ENOSPACE = -30914,      /* free disk space is below the low watermark: writes refused */
    NL_EREFUSED = -30915,      /* refused before anything was applied (cluster: not the primary,
                                * fenced, no ZooKeeper session, handing over): safe to retry */
    NL_EDOWN = -30916,         /* the shard failed earlier (NL_EFAILED) and takes no write until it
                                * has been reopened: nothing of this call was applied */
    NL_ERR_LAST = -30916
};

/* Returns a static string naming code (nearline's own or a negated errno). */
const char *nl_strerror(int code);

/* Detail of the most recent failure on this thread ("" if none). Valid until the next
 * nearline call on this thread that fails. */
const char *nl_errdetail(void);

/* Records a detail for the current thread and returns code, so callers can write
 * `return nl_fail(NL_EFORMAT, "row %zu: ...", i);`. */
int nl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void nl_clear_errdetail(void);

typedef enum { NL_DTYPE_F32 = 0, NL_DTYPE_F16 = 1, NL_DTYPE_U8 = 2, NL_DTYPE_I8 = 3,
               NL_DTYPE_I32 = 4 } nl_dtype;

typedef enum { NL_METRIC_L2 = 0, NL_METRIC_IP = 1, NL_METRIC_COSINE = 2 } nl_metric;

/* Bytes per element; 0 for an unknown dtype. */
size_t nl_dtype_size(nl_dtype t);
const char *nl_dtype_name(nl_dtype t);
const char *nl_metric_name(nl_metric m);
/* Parse "f32"/"f16"/"u8"/"i8" and "l2"/"ip"/"cosine"; NL_EINVAL when unknown. */
int nl_dtype_parse(const char *s, nl_dtype *out);
int nl_metric_parse(const char *s, nl_metric *out);

/* A borrowed, row-major view of n vectors of one stored type. It owns nothing. */
typedef struct {
    const void *data;
    size_t n;
    uint32_t dim;
    nl_dtype dtype;
} nl_vecset;

static inline const void *nl_vecset_row(const nl_vecset *vs, size_t i)
{
    return (const char *)vs->data + i * (size_t)vs->dim * nl_dtype_size(vs->dtype);
}

/* IEEE half <-> single, round to nearest even; portable, no F16C needed. */
float nl_f16_to_f32(uint16_t h);
uint16_t nl_f32_to_f16(float f);

/* Widen n elements of type t at src into dst. */
void nl_convert_to_f32(nl_dtype t, const void *src, float *dst, size_t n);

/* 0 when all n floats are finite; otherwise NL_EBADVALUE (only f32/f16 can fail). */
int nl_check_finite(nl_dtype t, const void *src, size_t n);

#ifdef __cplusplus
}
#endif
#endif
