/*
 * nl_catalog.h — where collections live on disk:
 *
 *   <db>/<collection>/collection.json    the configuration (shards, dim, metric, ...)
 *   <db>/<collection>/<shard>/           one shard (nl_shard.h): meta/ and seg-<n>.nls
 *
 * A collection directory appears only complete: create and import assemble it under
 * <db>/.tmp-*-<name>-<pid>/ and rename it into place; drop renames it to <db>/.trash-*
 * before removing it. nl_db_open removes leftovers of both. Names are
 * [A-Za-z0-9_-]{1,64}, so a name can never be a path.
 */
#ifndef NL_CATALOG_H
#define NL_CATALOG_H

#include <stddef.h>

#include "nearline.h"
#include "nl_files.h"
#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 0 when name is a valid collection name, NL_EINVAL with a detail otherwise. */
int nl_collection_name_check(const char *name);

/* Sorted collection names under db. *names is malloc'd (and each entry); free with
 * nl_string_list_free. */
int nl_catalog_list_collections(const char *db, char ***names, size_t *count);
void nl_string_list_free(char **list, size_t count);
/* <coll_dir>/collection.json: the collection's configuration, written atomically (temp
 * file, fsync, rename) and read as untrusted (NL_ECORRUPT naming the bad field). */
int nl_catalog_write_config(const char *coll_dir, const nl_collection_config *cfg);
int nl_catalog_read_config(const char *coll_dir, nl_collection_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
