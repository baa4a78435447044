/* The RocksDB metadata store: column families are separate, batches are atomic and
 * synced writes survive a SIGKILL, iterators read a snapshot in key order. */
#include <signal.h>
#include <sys/wait.h>

#include "nl_store.h"
#include "test_util.h"

static char dir[256];
static void setup(void) { tu_tmpdir(dir, sizeof dir); }
static void teardown(void) { tu_rmtree(dir); }
TestSuite(store, .init = setup, .fini = teardown);

static void db_path(char *buf, size_t len) { snprintf(buf, len, "%s/meta", dir); }

Test(store, open_missing_without_create_is_not_found)
{
    char p[512];
    db_path(p, sizeof p);
    nl_store *st;
    cr_assert_eq(nl_store_open(p, 0, &st), NL_ENOTFOUND, "%s", nl_errdetail());
    cr_assert_null(st);
}

Test(store, batches_column_families_and_reopen)
{
    char p[512];
    db_path(p, sizeof p);
    nl_store *st;
    cr_assert_eq(nl_store_open(p, 1, &st), 0, "%s", nl_errdetail());
    nl_store_batch *b = nl_store_batch_create(st);
    nl_store_batch_put(b, NL_CF_IDMAP, "k", 1, "in-idmap", 8);
    nl_store_batch_put(b, NL_CF_META, "k", 1, "in-meta", 7);
    nl_store_batch_put(b, NL_CF_FRESH, "gone", 4, "x", 1);
    nl_store_batch_delete(b, NL_CF_FRESH, "gone", 4);
    cr_assert_eq(nl_store_batch_count(b), 4);
    cr_assert_eq(nl_store_write(b, 1), 0);
    nl_store_batch_destroy(b);
    void *v;
    size_t vl;
    cr_assert_eq(nl_store_get(st, NL_CF_IDMAP, "k", 1, &v, &vl), 0);
    cr_assert_eq(vl, 8);
    cr_assert_arr_eq(v, "in-idmap", 8);
    free(v);
    cr_assert_eq(nl_store_get(st, NL_CF_MANIFEST, "k", 1, &v, &vl), NL_ENOTFOUND);
    cr_assert_eq(nl_store_get(st, NL_CF_FRESH, "gone", 4, &v, &vl), NL_ENOTFOUND);
    nl_store_close(st);
    cr_assert_eq(nl_store_open(p, 0, &st), 0, "%s", nl_errdetail());
    cr_assert_eq(nl_store_get(st, NL_CF_META, "k", 1, &v, &vl), 0);
    cr_assert_arr_eq(v, "in-meta", 7);
    free(v);
    nl_store_close(st);
}

Test(store, iterators_are_ordered_snapshots)
{
    char p[512];
    db_path(p, sizeof p);
    nl_store *st;
    cr_assert_eq(nl_store_open(p, 1, &st), 0);
    nl_store_batch *b = nl_store_batch_create(st);
    const char *keys[] = {"b2", "a1", "c3", "b1"};
    for (int i = 0; i < 4; i++)
        nl_store_batch_put(b, NL_CF_TOMBSTONES, keys[i], 2, "v", 1);
    cr_assert_eq(nl_store_write(b, 0), 0);
    nl_store_iter *it;
    cr_assert_eq(nl_store_iter_create(st, NL_CF_TOMBSTONES, &it), 0);
    /* written after the iterator: invisible to it */
    nl_store_batch_clear(b);
    nl_store_batch_put(b, NL_CF_TOMBSTONES, "b3", 2, "v", 1);
    cr_assert_eq(nl_store_write(b, 0), 0);
    nl_store_iter_seek(it, "b", 1);
    const char *want[] = {"b1", "b2", "c3"};
    int n = 0;
    for (; nl_store_iter_valid(it); nl_store_iter_next(it), n++) {
        size_t kl;
        const char *k = nl_store_iter_key(it, &kl);
        cr_assert_lt(n, 3);
        cr_assert_eq(kl, 2);
        cr_assert_arr_eq(k, want[n], 2);
    }
    cr_assert_eq(n, 3);
    cr_assert_eq(nl_store_iter_status(it), 0);
    nl_store_iter_destroy(it);
    nl_store_batch_destroy(b);
    nl_store_close(st);
}

Test(store, synced_batch_survives_sigkill)
{
    char p[512];
    db_path(p, sizeof p);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        nl_store *st;
        if (nl_store_open(p, 1, &st) != 0)
            _exit(3);
        nl_store_batch *b = nl_store_batch_create(st);
        for (int i = 0; i < 1000; i++) {
            char k[16];
            snprintf(k, sizeof k, "id%05d", i);
            nl_store_batch_put(b, NL_CF_IDMAP, k, strlen(k), &i, sizeof i);
        }
        if (nl_store_write(b, 1) != 0)
            _exit(4);
        raise(SIGKILL); /* no close, no flush: only the WAL has it */
        _exit(5);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child did not die by SIGKILL (status %d)", status);
    nl_store *st;
    cr_assert_eq(nl_store_open(p, 0, &st), 0, "%s", nl_errdetail());
    for (int i = 0; i < 1000; i++) {
        char k[16];
        snprintf(k, sizeof k, "id%05d", i);
        void *v;
        size_t vl;
        cr_assert_eq(nl_store_get(st, NL_CF_IDMAP, k, strlen(k), &v, &vl), 0, "%s lost", k);
        cr_assert_eq(*(int *)v, i);
        free(v);
    }
    nl_store_close(st);
}
