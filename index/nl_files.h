/*
 * nl_files.h — file-system helpers shared by the engine, the cluster's snapshot transfer
 * and the tools: 0 or a negated errno, nothing printed. Not part of the public API.
 */
#ifndef NL_FILES_H
#define NL_FILES_H

#ifdef __cplusplus
extern "C" {
#endif

/* fsync of a directory (after creating, renaming or removing entries in it). */
int nl_fsync_dir(const char *path);
/* mkdir -p: creates path and any missing parent, each made durable in its parent. */
int nl_mkdirs(const char *path);
/* Removes a directory tree; a missing one is not an error. */
int nl_remove_tree(const char *path);

#include <stddef.h>
#include <stdio.h>

/* A small file: an 8-byte magic, the length, the payload a then b, and the CRC-32C of
 * the payload; written to a temporary name, fsynced and renamed. 0 or an error (nl_fail). */
int nl_file_write_small(const char *path, const char magic[8], const void *a, size_t alen, const void *b,
                        size_t blen);
/* Its payload (malloc'd, *len bytes), or NULL when absent, of another magic, or damaged. */
void *nl_file_read_small(const char *path, const char magic[8], size_t *len);
/* fflush, fsync and fclose of f (path for the error): 0 or an error (nl_fail). */
int nl_file_sync_close(FILE *f, const char *path);

#ifdef __cplusplus
}
#endif
#endif
