/*
 * cli.c — the helpers every `nearline` subcommand shares (cli.h): one-line errors with
 * the library's detail, and strict parsing of numbers, sizes and lists that names the
 * flag at fault and refuses trailing garbage, signs and out-of-range values.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cli_error(const char *cmd, int code, const char *fmt, ...)
{
    fprintf(stderr, "nearline %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    const char *detail = nl_errdetail();
    if (code != 0 && detail[0])
        fprintf(stderr, ": %s", detail);
    else if (code != 0)
        fprintf(stderr, ": %s", nl_strerror(code));
    fputc('\n', stderr);
}

int cli_u64(const char *cmd, const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi) goto bad;
    *out = v;
    return 0;
bad:
    cli_error(cmd, 0, "%s expects an integer in %llu..%llu, got '%s'", flag, (unsigned long long)lo,
              (unsigned long long)hi, s ? s : "");
    return -1;
}

int cli_u32(const char *cmd, const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    uint64_t v;
    if (cli_u64(cmd, flag, s, lo, hi, &v)) return -1;
    *out = (uint32_t)v;
    return 0;
}

int cli_float(const char *cmd, const char *flag, const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = s ? strtof(s, &end) : 0;
    if (!s || !*s || errno || *end || !(v >= lo && v <= hi)) {
        cli_error(cmd, 0, "%s expects a number in %g..%g, got '%s'", flag, (double)lo, (double)hi, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

int cli_size(const char *cmd, const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!s || !*s || *s == '-') goto bad;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) goto bad;
    double mul = 1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': mul = 1024.0; break;
        case 'm': case 'M': mul = 1024.0 * 1024; break;
        case 'g': case 'G': mul = 1024.0 * 1024 * 1024; break;
        case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; break;
        default: goto bad;
        }
        end++;
        if (*end == 'i') end++;
        if (*end == 'B' || *end == 'b') end++;
        if (*end) goto bad;
    }
    *out = (uint64_t)(v * mul);
    return 0;
bad:
    cli_error(cmd, 0, "%s expects a size such as 512M or 2G, got '%s'", flag, s ? s : "");
    return -1;
}

int cli_u32_list(const char *cmd, const char *flag, const char *s, uint32_t lo, uint32_t hi,
                 uint32_t *list, uint32_t *count, uint32_t cap)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*count >= cap) {
            cli_error(cmd, 0, "%s: at most %u values", flag, cap);
            return -1;
        }
        if (cli_u32(cmd, flag, tok, lo, hi, &list[*count])) return -1;
        (*count)++;
    }
    return 0;
}
