/*
 * common.c — error strings, per-thread error detail, type names and conversions.
 * Everything here is pure and thread-safe; the detail buffer is thread-local so
 * concurrent callers never see each other's messages.
 */
#include "nl_common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char tl_detail[512];

const char *nl_strerror(int code)
{
    switch (code) {
    case NL_OK: return "success";
    case NL_EINVAL: return "invalid argument";
    case NL_EFORMAT: return "malformed input";
    case NL_ETRUNCATED: return "input truncated";
    case NL_EDIM: return "dimension mismatch";
    case NL_ECORRUPT: return "data corruption detected";
    case NL_EUNSUPPORTED: return "unsupported";
    case NL_EBADVALUE: return "vector holds NaN or Inf";
    case NL_ENOTFOUND: return "not found";
    case NL_EEXISTS: return "already exists";
    case NL_EEMPTY: return "input is empty";
    case NL_EFILTER: return "malformed filter";
    case NL_EUNAVAILABLE: return "unavailable";
    case NL_ESTALE: return "stale";
    case NL_EFAILED: return "a durable write failed; refusing writes until reopened";
    case NL_ENOSPACE: return "free disk space below the low watermark";
    case NL_EREFUSED: return "refused, nothing applied";
    case NL_EDOWN: return "the shard failed earlier and takes no write until reopened";
    default: break;
    }
    if (code < 0 && code >= -4095)
        return strerror(-code);
    return "unknown error";
}

const char *nl_errdetail(void) { return tl_detail; }

void nl_clear_errdetail(void) { tl_detail[0] = '\0'; }

int nl_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_detail, sizeof tl_detail, fmt, ap);
    va_end(ap);
    return code;
}

size_t nl_dtype_size(nl_dtype t)
{
    switch (t) {
    case NL_DTYPE_F32: return 4;
    case NL_DTYPE_F16: return 2;
    case NL_DTYPE_U8: return 1;
    case NL_DTYPE_I8: return 1;
    case NL_DTYPE_I32: return 4;
    }
    return 0;
}

const char *nl_dtype_name(nl_dtype t)
{
    switch (t) {
    case NL_DTYPE_F32: return "f32";
    case NL_DTYPE_F16: return "f16";
    case NL_DTYPE_U8: return "u8";
    case NL_DTYPE_I8: return "i8";
    case NL_DTYPE_I32: return "i32";
    }
    return "?";
}

const char *nl_metric_name(nl_metric m)
{
    switch (m) {
    case NL_METRIC_L2: return "l2";
    case NL_METRIC_IP: return "ip";
    case NL_METRIC_COSINE: return "cosine";
    }
    return "?";
}

int nl_dtype_parse(const char *s, nl_dtype *out)
{
    static const struct { const char *name; nl_dtype t; } tab[] = {
        {"f32", NL_DTYPE_F32}, {"float32", NL_DTYPE_F32}, {"f16", NL_DTYPE_F16},
        {"float16", NL_DTYPE_F16}, {"u8", NL_DTYPE_U8}, {"uint8", NL_DTYPE_U8},
        {"i8", NL_DTYPE_I8}, {"int8", NL_DTYPE_I8}};
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(s, tab[i].name) == 0) { *out = tab[i].t; return 0; }
    return nl_fail(NL_EINVAL, "unknown element type '%s' (use f32, f16, u8 or i8)", s);
}

int nl_metric_parse(const char *s, nl_metric *out)
{
    if (strcmp(s, "l2") == 0) *out = NL_METRIC_L2;
    else if (strcmp(s, "ip") == 0) *out = NL_METRIC_IP;
    else if (strcmp(s, "cosine") == 0) *out = NL_METRIC_COSINE;
    else return nl_fail(NL_EINVAL, "unknown metric '%s' (use l2, ip or cosine)", s);
    return 0;
}

float nl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do { e++; mant <<= 1; } while ((mant & 0x400u) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t nl_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* Inf or NaN (keep a quiet NaN) */
        return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
    if (absx >= 0x477ff000u) /* rounds to above the largest half: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* subnormal or zero in half precision */
        if (absx < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = absx >> 23;
        uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14 .. 24 */
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (half & 1u)))
        half++;
    return (uint16_t)(sign | half);
}

void nl_convert_to_f32(nl_dtype t, const void *src, float *dst, size_t n)
{
    switch (t) {
    case NL_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case NL_DTYPE_F16: {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + i, 2);
            dst[i] = nl_f16_to_f32(h);
        }
        break;
    }
    case NL_DTYPE_U8: {
        const uint8_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    case NL_DTYPE_I8: {
        const int8_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    case NL_DTYPE_I32: {
        const int32_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    }
}

int nl_check_finite(nl_dtype t, const void *src, size_t n)
{
    if (t == NL_DTYPE_F32) {
        const float *s = src;
        for (size_t i = 0; i < n; i++)
            if (!isfinite(s[i])) return NL_EBADVALUE;
    } else if (t == NL_DTYPE_F16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + i, 2);
            if ((h & 0x7c00u) == 0x7c00u) return NL_EBADVALUE;
        }
    }
    return 0;
}
