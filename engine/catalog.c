/*
 * catalog.c — collection and segment discovery on disk (see nl_catalog.h). Everything
 * here is directory listing; leftovers of crashed imports (.tmp-import-*) are never
 * listed as collections, and are removed by the next import of the same name.
 */
#define _GNU_SOURCE
#include "nl_catalog.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int nl_collection_name_check(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64)
        return nl_fail(NL_EINVAL, "collection name must be 1 to 64 characters of [A-Za-z0-9_-]");
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return nl_fail(NL_EINVAL, "collection name '%s' has '%c': only [A-Za-z0-9_-] is allowed", name, c);
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void nl_string_list_free(char **list, size_t count)
{
    for (size_t i = 0; list && i < count; i++)
        free(list[i]);
    free(list);
}

static int push(char ***list, size_t *n, size_t *cap, const char *s)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        char **nl = realloc(*list, nc * sizeof *nl);
        if (!nl)
            return -ENOMEM;
        *list = nl;
        *cap = nc;
    }
    if (!((*list)[*n] = strdup(s)))
        return -ENOMEM;
    (*n)++;
    return 0;
}

int nl_catalog_list_collections(const char *db, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    DIR *d = opendir(db);
    if (!d)
        return nl_fail(-errno, "%s: %s", db, strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (nl_collection_name_check(e->d_name) != 0)
            continue;
        char p[4096];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", db, e->d_name);
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        if ((rc = push(names, count, &cap, e->d_name)) != 0)
            break;
    }
    closedir(d);
    nl_clear_errdetail();
    if (rc) {
        nl_string_list_free(*names, *count);
        *names = NULL;
        *count = 0;
        return rc;
    }
    qsort(*names, *count, sizeof **names, cmp_str);
    return 0;
}

int nl_catalog_list_segments(const char *db, const char *name, char ***paths, size_t *count)
{
    *paths = NULL;
    *count = 0;
    int rc = nl_collection_name_check(name);
    if (rc)
        return rc;
    char cdir[4096];
    snprintf(cdir, sizeof cdir, "%s/%s", db, name);
    DIR *d = opendir(cdir);
    if (!d)
        return errno == ENOENT ? nl_fail(NL_ENOTFOUND, "collection '%s' not found in %s", name, db)
                               : nl_fail(-errno, "%s: %s", cdir, strerror(errno));
    size_t cap = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char sdir[4096 + 256];
        snprintf(sdir, sizeof sdir, "%s/%s", cdir, e->d_name);
        DIR *sd = opendir(sdir);
        if (!sd)
            continue;
        struct dirent *f;
        while (rc == 0 && (f = readdir(sd)) != NULL) {
            size_t l = strlen(f->d_name);
            if (l < 9 || strncmp(f->d_name, "seg-", 4) != 0 || strcmp(f->d_name + l - 4, ".nls") != 0)
                continue;
            char p[4096 + 512];
            snprintf(p, sizeof p, "%s/%s", sdir, f->d_name);
            rc = push(paths, count, &cap, p);
        }
        closedir(sd);
    }
    closedir(d);
    if (rc) {
        nl_string_list_free(*paths, *count);
        *paths = NULL;
        *count = 0;
        return rc;
    }
    qsort(*paths, *count, sizeof **paths, cmp_str);
    return 0;
}

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
