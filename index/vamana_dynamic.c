/*
 * vamana_dynamic.c — a Vamana index that grows by insertion (see nl_vamana.h). It reuses
 * the bulk build's insert (nl_vam_insert_point) and its 1.3 R list slack; sealing prunes
 * every list back to R. Inserters take scratch from a pool (nl_objpool); the first point
 * becomes the entry point and is published (vector in place) before any other insert may
 * search from it. Searches copy each list under its node lock (vamana_search.c), so they
 * never see a list mid-rewrite.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "nl_util.h"
#include "vamana_impl.h"

struct nl_vam_dyn {
    nl_vam_ins ins;
    void *store;
    size_t capacity;
    size_t row_bytes;
    atomic_size_t claimed;
    atomic_size_t done;
    atomic_int entry_ready;
    atomic_int sealed;
    atomic_uchar *ready; /* a slot's vector is in place (scans read only those) */
    nl_objpool scratch; /* nl_vam_scratch, one per concurrent inserter */
};

static void scratch_free(void *p) { nl_vam_scratch_destroy(p); }

int nl_vamana_create_dynamic(uint32_t dim, nl_dtype dtype, nl_metric metric, const nl_vamana_params *p,
                             size_t capacity, nl_vamana **out)
{
    *out = NULL;
    if (dim == 0 || dtype > NL_DTYPE_I8 || capacity == 0 || capacity > UINT32_MAX - 1 || !p || p->R < 1 ||
        p->R > 1024 || p->L < 1 || !(p->alpha >= 1.0f))
        return nl_fail(NL_EINVAL, "dynamic vamana: dim=%u capacity=%zu R=%u L=%u", dim, capacity, p ? p->R : 0,
                       p ? p->L : 0);
    nl_vamana *ix = calloc(1, sizeof *ix);
    struct nl_vam_dyn *d = calloc(1, sizeof *d);
    if (!ix || !d) {
        free(ix);
        free(d);
        return -ENOMEM;
    }
    ix->dyn = d;
    d->capacity = capacity;
    d->row_bytes = (size_t)dim * nl_dtype_size(dtype);
    d->store = malloc(d->row_bytes * capacity);
    d->ins.locks = calloc(capacity, sizeof(atomic_uchar));
    d->ready = calloc(capacity, sizeof(atomic_uchar));
    nl_objpool_init(&d->scratch, scratch_free);
    int rc = 0;
    if (!d->store || !d->ins.locks || !d->ready) {
        rc = -ENOMEM;
        goto fail;
    }
    nl_vecset vs = {d->store, capacity, dim, dtype};
    ix->vs = vs;
    ix->metric = metric;
    /* ip: without a global norm bound known up front, build with L2 geometry. */
    ix->build_metric = metric == NL_METRIC_IP ? NL_METRIC_L2 : metric;
    ix->dist = nl_distance_fn(metric, dtype);
    ix->build_dist = nl_distance_fn(ix->build_metric, dtype);
    ix->medoid = 0;
    /* The bulk build's 1.3 R slack: a full list is pruned only every 0.3 R reverse
     * edges instead of at each one, which is most of an insert's cost. The seal prunes
     * every list back to R before the graph becomes a segment. */
    if ((rc = nl_graph_create(capacity, p->R, p->R + (p->R * 3 + 9) / 10, &ix->g)) != 0)
        goto fail;
    d->ins.ix = ix;
    d->ins.R = p->R;
    d->ins.L = p->L;
    d->ins.alpha = p->alpha;
    d->ins.keep_in_edge = 1;
    *out = ix;
    return 0;
fail:
    nl_vamana_destroy(ix);
    return rc;
}

int nl_vamana_create_dynamic_seeded(uint32_t dim, nl_dtype dtype, nl_metric metric, const nl_vamana_params *p,
                                    size_t capacity, const void *vecs, size_t n, const uint32_t *adj,
                                    uint32_t adj_stride, const uint32_t *deg, uint32_t medoid, nl_vamana **out)
{
    *out = NULL;
    if (n == 0 || n > capacity || medoid >= n || !vecs || !adj || !deg)
        return nl_fail(NL_EINVAL, "dynamic vamana: seed of %zu points (capacity %zu, medoid %u)", n, capacity, medoid);
    nl_vamana *ix;
    int rc = nl_vamana_create_dynamic(dim, dtype, metric, p, capacity, &ix);
    if (rc)
        return rc;
    struct nl_vam_dyn *d = ix->dyn;
    memcpy(d->store, vecs, d->row_bytes * n);
    nl_graph *g = ix->g;
    for (size_t u = 0; u < n; u++) {
        const uint32_t *l = adj + u * adj_stride;
        if (deg[u] > g->R) {
            nl_vamana_destroy(ix);
            return nl_fail(NL_EINVAL, "dynamic vamana: seed node %zu has degree %u over R=%u", u, deg[u], g->R);
        }
        for (uint32_t i = 0; i < deg[u]; i++)
            if (l[i] >= n) {
                nl_vamana_destroy(ix);
                return nl_fail(NL_EINVAL, "dynamic vamana: seed node %zu links to %u of %zu", u, l[i], n);
            }
        memcpy(nl_graph_list(g, (uint32_t)u), l, sizeof(uint32_t) * deg[u]);
        g->deg[u] = deg[u];
    }
    ix->medoid = medoid;
    for (size_t u = 0; u < n; u++)
        atomic_store_explicit(&d->ready[u], 1, memory_order_relaxed);
    atomic_store(&d->claimed, n);
    atomic_store(&d->done, n);
    atomic_store(&d->entry_ready, 1);
    *out = ix;
    return 0;
}

void nl_vam_dyn_free(nl_vamana *ix);
void nl_vam_dyn_free(nl_vamana *ix)
{
    struct nl_vam_dyn *d = ix->dyn;
    if (!d)
        return;
    nl_objpool_fini(&d->scratch);
    free(d->store);
    free(d->ins.locks);
    free(d->ready);
    free(d);
    ix->dyn = NULL;
}

atomic_uchar *nl_vam_dyn_locks(const nl_vamana *ix);
atomic_uchar *nl_vam_dyn_locks(const nl_vamana *ix) { return ix->dyn ? ix->dyn->ins.locks : NULL; }

size_t nl_vamana_size(const nl_vamana *ix)
{
    return ix->dyn ? atomic_load(&ix->dyn->done) : ix->vs.n;
}

size_t nl_vamana_reserved(const nl_vamana *ix)
{
    return ix->dyn ? atomic_load(&ix->dyn->claimed) : ix->vs.n;
}

int nl_vamana_reserve(nl_vamana *ix, size_t n, uint32_t *first)
{
    struct nl_vam_dyn *d = ix->dyn;
    if (!d)
        return nl_fail(NL_EINVAL, "vamana: insert into a built (static) index");
    if (atomic_load(&d->sealed))
        return nl_fail(NL_EINVAL, "vamana: the index is sealed");
    size_t s = atomic_fetch_add(&d->claimed, n);
    if (s + n > d->capacity) {
        atomic_fetch_sub(&d->claimed, n);
        return nl_fail(NL_EINVAL, "vamana: dynamic index is full (%zu points)", d->capacity);
    }
    *first = (uint32_t)s;
    return 0;
}

int nl_vamana_insert_at(nl_vamana *ix, uint32_t s, const void *vec)
{
    struct nl_vam_dyn *d = ix->dyn;
    if (!d || s >= atomic_load(&d->claimed))
        return nl_fail(NL_EINVAL, "vamana: slot %u was not reserved", s);
    memcpy((char *)d->store + (size_t)s * d->row_bytes, vec, d->row_bytes);
    atomic_store_explicit(&d->ready[s], 1, memory_order_release);
    if (s == 0) {
        atomic_store_explicit(&d->entry_ready, 1, memory_order_release);
        atomic_fetch_add(&d->done, 1);
        return 0;
    }
    while (!atomic_load_explicit(&d->entry_ready, memory_order_acquire))
        __builtin_ia32_pause(); /* the first insert is a memcpy away from done */
    nl_vam_scratch *sc = nl_objpool_take(&d->scratch);
    int rc = 0;
    if (!sc && (rc = nl_vam_scratch_create(ix, d->ins.L, &sc)) != 0) {
        atomic_fetch_add(&d->done, 1); /* unlinked: the seal's repair links it */
        return rc;
    }
    nl_vam_insert_point(&d->ins, sc, s);
    nl_objpool_give(&d->scratch, sc);
    atomic_fetch_add(&d->done, 1);
    return 0;
}

int nl_vamana_insert(nl_vamana *ix, const void *vec, uint32_t *slot)
{
    uint32_t s = 0;
    int rc = nl_vamana_reserve(ix, 1, &s);
    if (rc)
        return rc;
    if (slot)
        *slot = s;
    return nl_vamana_insert_at(ix, s, vec);
}

int nl_vamana_seal(nl_vamana *ix)
{
    struct nl_vam_dyn *d = ix->dyn;
    if (!d)
        return 0;
    size_t n = atomic_load(&d->claimed);
    if (atomic_load(&d->done) != n)
        return nl_fail(NL_EINVAL, "vamana: seal with %zu of %zu inserts still running", n - atomic_load(&d->done), n);
    if (n == 0)
        return nl_fail(NL_EINVAL, "vamana: seal of an empty index");
    atomic_store(&d->sealed, 1);
    /* Shrinking n is safe for running searches: they only follow edges, and every edge
     * points below n. */
    ix->vs.n = n;
    ix->g->n = n;
    nl_vam_scratch *sc = nl_objpool_take(&d->scratch);
    int rc = 0;
    if (!sc && (rc = nl_vam_scratch_create(ix, d->ins.L, &sc)) != 0)
        return rc;
    for (size_t u = 0; u < n; u++)
        nl_vam_prune_to_R_locked(&d->ins, sc, (uint32_t)u);
    rc = nl_vam_ensure_connected(&d->ins, sc);
    nl_objpool_give(&d->scratch, sc);
    return rc;
}

int nl_vamana_slot_ready(const nl_vamana *ix, uint32_t slot)
{
    if (!ix->dyn)
        return slot < ix->vs.n;
    return slot < atomic_load(&ix->dyn->claimed) && atomic_load_explicit(&ix->dyn->ready[slot], memory_order_acquire);
}
