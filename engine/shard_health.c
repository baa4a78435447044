/*
 * shard_health.c — whether a shard takes writes: the failed state after a durable step
 * whose outcome is unknown (the store's sticky failure, nl_store.h; reopened by
 * db_recover.c) and the free-space watermarks of the disk it lives on.
 *
 * Invariants: neither check changes anything on disk; a shard below the low watermark
 * stays refused until it is above the high one (space_low holds which side it is on), so
 * a disk at the edge does not flap between refusing and taking writes.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/statvfs.h>

#include "nl_util.h"
#include "shard_internal.h"

int nl_shard_failed(nl_shard *sh, char *msg, size_t len)
{
    int code = nl_store_failed(sh->st, msg, len);
    return code ? NL_EFAILED : 0;
}

int sh_space_check(nl_shard *sh, uint64_t need)
{
    struct statvfs v;
    if (sh->opt.disk_watermarks_off || statvfs(sh->dir, &v) != 0)
        return 0; /* no figure: let the write find out */
    uint64_t size = (uint64_t)v.f_blocks * v.f_frsize, avail = (uint64_t)v.f_bavail * v.f_frsize;
    uint64_t low = sh->opt.disk_low_free ? sh->opt.disk_low_free : size / 50 < (1ull << 30) ? size / 50 : 1ull << 30;
    uint64_t high = sh->opt.disk_high_free > low ? sh->opt.disk_high_free : 2 * low;
    char a[32], l[32], h[32];
    if (need) {
        /* The file, plus the room a RocksDB write of its manifest batch needs. */
        uint64_t want = need + need / 10 + (8u << 20);
        if (avail >= want)
            return 0;
        return nl_fail(NL_ENOSPACE, "the disk has %s free, a %s segment needs %s", nl_fmt_bytes(avail, a, sizeof a),
                       nl_fmt_bytes(need, l, sizeof l), nl_fmt_bytes(want, h, sizeof h));
    }
    int was = atomic_load(&sh->space_low);
    int now = was ? avail < high : avail < low;
    if (now != was)
        atomic_store(&sh->space_low, now);
    if (!now)
        return 0;
    return nl_fail(NL_ENOSPACE, "the disk has %s free, below the low watermark of %s: writes resume above %s",
                   nl_fmt_bytes(avail, a, sizeof a), nl_fmt_bytes(low, l, sizeof l), nl_fmt_bytes(high, h, sizeof h));
}

int sh_check_failed(nl_shard *sh)
{
    char msg[256];
    int code = nl_store_failed(sh->st, msg, sizeof msg);
    if (!code)
        return 0;
    return nl_fail(NL_EDOWN, "an earlier write to disk failed (%s), the shard takes no write until it is reopened: %s",
                   nl_strerror(code), msg);
}
