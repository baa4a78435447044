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

#ifdef __cplusplus
}
#endif
#endif
