/*
 * files.c — the few file-system steps every layer that writes files needs (nl_files.h):
 * making a directory's entries durable, mkdir -p with each new directory made durable in
 * its parent, removing a tree, and small checksummed files written atomically (what a
 * resumable job records between its phases).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdint.h>
#include <stdlib.h>

#include "nl_common.h"
#include "nl_crc32c.h"
#include "nl_files.h"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int nl_remove_tree(const char *path)
{
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        return -errno;
    return 0;
}

int nl_mkdirs(const char *path)
{
    char buf[4096];
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof buf)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0) {
            if (errno != EEXIST)
                return -errno;
        } else {
            /* A new directory's name is durable once its parent is synced. */
            char parent[4096];
            memcpy(parent, buf, i + 1);
            char *slash = strrchr(parent, '/');
            if (slash == parent)
                slash[1] = '\0';
            else if (slash)
                *slash = '\0';
            else
                snprintf(parent, sizeof parent, ".");
            int rc = nl_fsync_dir(parent);
            if (rc)
                return rc;
        }
        buf[i] = c;
    }
    return 0;
}

int nl_fsync_dir(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) == 0 ? 0 : -errno;
    close(fd);
    return rc;
}

/* ---------------------------------------------------------------- small files */

/* magic, payload, CRC-32C of the payload; written atomically. */
int nl_file_write_small(const char *path, const char magic[8], const void *a, size_t alen, const void *b, size_t blen)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return nl_fail(-errno, "%s: %s", tmp, strerror(errno));
    uint32_t crc = nl_crc32c(0, a, alen);
    crc = nl_crc32c(crc, b, blen);
    uint64_t len = alen + blen;
    int ok = fwrite(magic, 1, 8, f) == 8 && fwrite(&len, 8, 1, f) == 1 && fwrite(a, 1, alen, f) == alen &&
             (blen == 0 || fwrite(b, 1, blen, f) == blen) && fwrite(&crc, 4, 1, f) == 1 && fflush(f) == 0 &&
             fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    if (!ok || rename(tmp, path) != 0) {
        err = ok ? errno : err;
        unlink(tmp);
        return nl_fail(-(err ? err : EIO), "%s: write failed: %s", path, strerror(err ? err : EIO));
    }
    return 0;
}

/* The payload of a small file, or NULL when absent or damaged (the phase is redone). */
void *nl_file_read_small(const char *path, const char magic[8], size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char m[8];
    uint64_t l;
    void *buf = NULL;
    uint32_t crc;
    if (fread(m, 1, 8, f) == 8 && memcmp(m, magic, 8) == 0 && fread(&l, 8, 1, f) == 1 && l < (1ull << 34) &&
        (buf = malloc(l ? l : 1)) && fread(buf, 1, l, f) == l && fread(&crc, 4, 1, f) == 1 &&
        crc == nl_crc32c(0, buf, l)) {
        fclose(f);
        *len = l;
        return buf;
    }
    free(buf);
    fclose(f);
    return NULL;
}

int nl_file_sync_close(FILE *f, const char *path)
{
    int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        err = errno;
    }
    return ok ? 0 : nl_fail(-(err ? err : EIO), "%s: write failed: %s", path, strerror(err ? err : EIO));
}
