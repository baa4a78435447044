/*
 * nl_catalog.h — where collections and segments live on disk, until the RocksDB manifest
 * of the engine takes over (issue 4):
 *
 *   <db>/<collection>/<shard>/seg-<n>.nls
 *
 * A collection directory appears only complete: import builds it under
 * <db>/.tmp-import-<name>-<pid>/ and renames it into place. Names are
 * [A-Za-z0-9_-]{1,64}, so a name can never be a path.
 */
#ifndef NL_CATALOG_H
#define NL_CATALOG_H

#include <stddef.h>

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 0 when name is a valid collection name, NL_EINVAL with a detail otherwise. */
int nl_collection_name_check(const char *name);

/* Sorted collection names under db. *names is malloc'd (and each entry); free with
 * nl_string_list_free. */
int nl_catalog_list_collections(const char *db, char ***names, size_t *count);

/* Sorted paths of the segment files of collection `name` (every shard). NL_ENOTFOUND
 * when the collection does not exist. Free with nl_string_list_free. */
int nl_catalog_list_segments(const char *db, const char *name, char ***paths, size_t *count);

void nl_string_list_free(char **list, size_t count);

/* Removes a directory tree (used to clean up failed imports). */
int nl_remove_tree(const char *path);

#ifdef __cplusplus
}
#endif
#endif
