/*
 * metrics.c — what the server counts and how it shows it: requests by endpoint and
 * status, a latency histogram per endpoint, the search and write counters, and the
 * Prometheus text exposition of /metrics (with each collection's engine counters and, in
 * cluster mode, the cluster's own).
 *
 * Invariants: every counter is an atomic that only grows (gauges are read at exposition
 * time); a request is counted once, when it completes (nl_srv_metrics_done).
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <microhttpd.h>

#include "nl_cluster.h"
#include "server_internal.h"

static const char *const ep_names[EP_COUNT] = {"healthz", "readyz", "metrics", "list_collections",
                                               "create_collection", "describe_collection", "drop_collection",
                                               "upsert", "delete", "get", "search", "search_batch", "internal",
                                               "internal_search", "other"};
static const int codes[NCODES] = {200, 201, 400, 401, 403, 404, 405, 409, 413, 500, 501, 503, 507};
static const double buckets[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};

const char *nl_srv_endpoint_name(int e) { return e >= 0 && e < EP_COUNT ? ep_names[e] : "other"; }

void nl_srv_metrics_done(metrics *m, int e, int status, uint64_t us)
{
    int k = NCODES;
    for (int i = 0; i < NCODES; i++)
        if (codes[i] == status) k = i;
    atomic_fetch_add(&m->count[e][k], 1);
    int b = 0;
    while (b < NBUCKETS && (double)us / 1e6 > buckets[b]) b++;
    atomic_fetch_add(&m->hist[e][b], 1);
    atomic_fetch_add(&m->sum_us[e], us);
}

enum MHD_Result nl_srv_ep_metrics(nl_server *s, struct MHD_Connection *c, req *r)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        return nl_srv_send_error(c, r, 500, "internal", "out of memory");
    metrics *m = &s->m;
    fprintf(f, "# HELP nearline_requests_total HTTP requests by endpoint and status.\n"
               "# TYPE nearline_requests_total counter\n");
    for (int e = 0; e < EP_COUNT; e++)
        for (int k = 0; k <= NCODES; k++) {
            uint64_t v = atomic_load(&m->count[e][k]);
            if (v)
                fprintf(f, "nearline_requests_total{endpoint=\"%s\",code=\"%s%d\"} %llu\n", ep_names[e],
                        k == NCODES ? "other" : "", k == NCODES ? 0 : codes[k], (unsigned long long)v);
        }
    fprintf(f, "# HELP nearline_request_duration_seconds Request latency by endpoint.\n"
               "# TYPE nearline_request_duration_seconds histogram\n");
    for (int e = 0; e < EP_COUNT; e++) {
        uint64_t total = 0;
        for (int b = 0; b <= NBUCKETS; b++)
            total += atomic_load(&m->hist[e][b]);
        if (!total)
            continue;
        uint64_t cum = 0;
        for (int b = 0; b < NBUCKETS; b++) {
            cum += atomic_load(&m->hist[e][b]);
            fprintf(f, "nearline_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n", ep_names[e],
                    buckets[b], (unsigned long long)cum);
        }
        fprintf(f, "nearline_request_duration_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n", ep_names[e],
                (unsigned long long)total);
        fprintf(f, "nearline_request_duration_seconds_sum{endpoint=\"%s\"} %.6f\n", ep_names[e],
                (double)atomic_load(&m->sum_us[e]) / 1e6);
        fprintf(f, "nearline_request_duration_seconds_count{endpoint=\"%s\"} %llu\n", ep_names[e],
                (unsigned long long)total);
    }
    uint64_t hops = atomic_load(&m->hops), hits = atomic_load(&m->cache_hits);
    fprintf(f,
            "# HELP nearline_search_queries_total Queries searched on this node (a batch counts each).\n"
            "# TYPE nearline_search_queries_total counter\nnearline_search_queries_total %llu\n"
            "# HELP nearline_search_filtered_queries_total Queries with a metadata filter.\n"
            "# TYPE nearline_search_filtered_queries_total counter\nnearline_search_filtered_queries_total %llu\n"
            "# HELP nearline_search_ios_total Sector reads of searches.\n"
            "# TYPE nearline_search_ios_total counter\nnearline_search_ios_total %llu\n"
            "# HELP nearline_search_nodes_expanded_total Graph nodes expanded by searches.\n"
            "# TYPE nearline_search_nodes_expanded_total counter\nnearline_search_nodes_expanded_total %llu\n"
            "# HELP nearline_search_cache_hits_total Expanded nodes served by the node cache.\n"
            "# TYPE nearline_search_cache_hits_total counter\nnearline_search_cache_hits_total %llu\n"
            "# HELP nearline_search_cache_hit_ratio Expanded nodes served by the node cache.\n"
            "# TYPE nearline_search_cache_hit_ratio gauge\nnearline_search_cache_hit_ratio %.4f\n"
            "# HELP nearline_points_upserted_total Points upserted through this node.\n"
            "# TYPE nearline_points_upserted_total counter\nnearline_points_upserted_total %llu\n"
            "# HELP nearline_points_deleted_total Points deleted through this node.\n"
            "# TYPE nearline_points_deleted_total counter\nnearline_points_deleted_total %llu\n"
            "# HELP nearline_overloaded_total Requests refused with 503 because max_concurrent were being served.\n"
            "# TYPE nearline_overloaded_total counter\nnearline_overloaded_total %llu\n"
            "# HELP nearline_body_too_large_total Requests refused with 413.\n"
            "# TYPE nearline_body_too_large_total counter\nnearline_body_too_large_total %llu\n"
            "# HELP nearline_inflight_requests Requests being served now.\n"
            "# TYPE nearline_inflight_requests gauge\nnearline_inflight_requests %u\n"
            "# HELP nearline_failed_shards Shards refusing writes after a failed write to disk, until reopened.\n"
            "# TYPE nearline_failed_shards gauge\nnearline_failed_shards %u\n"
            "# HELP nearline_shard_reopens_total Failed shards reopened (recovered) since the server started.\n"
            "# TYPE nearline_shard_reopens_total counter\nnearline_shard_reopens_total %llu\n",
            (unsigned long long)atomic_load(&m->queries), (unsigned long long)atomic_load(&m->filtered),
            (unsigned long long)atomic_load(&m->ios), (unsigned long long)hops, (unsigned long long)hits,
            hops ? (double)hits / (double)hops : 0.0, (unsigned long long)atomic_load(&m->points_upserted),
            (unsigned long long)atomic_load(&m->points_deleted), (unsigned long long)atomic_load(&m->overloaded),
            (unsigned long long)atomic_load(&m->body_too_large), atomic_load(&s->inflight),
            nl_db_failed_shards(s->db, NULL, 0), (unsigned long long)nl_db_shard_reopens(s->db));
    /* Per collection: the engine's own counters. */
    char **names;
    size_t n;
    if (nl_collection_list(s->db, &names, &n) == 0) {
        static const char *const g[] = {"points", "fresh_points", "segments", "segment_points", "tombstones",
                                        "disk_bytes", "ram_bytes", "cached_nodes", "flushes_total",
                                        "compactions_total", "write_waits_total", "flush_seconds_total",
                                        "compaction_seconds_total", "background_error", "store_sst_bytes",
                                        "store_memtable_bytes", "store_pending_compaction_bytes",
                                        "store_running_compactions", "store_keys", "store_block_cache_bytes",
                                        "search_retries_total", "search_exhaustive_total", "failed_shards",
                                        "shard_reopens_total", "flush_bytes_total", "compaction_bytes_total"};
        for (size_t gi = 0; gi < sizeof g / sizeof g[0]; gi++) {
            fprintf(f, "# HELP nearline_collection_%s The engine's %s of the collection (this node's shards).\n",
                    g[gi], g[gi]);
            fprintf(f, "# TYPE nearline_collection_%s %s\n", g[gi], strstr(g[gi], "_total") ? "counter" : "gauge");
            for (size_t i = 0; i < n; i++) {
                nl_collection *h;
                if (nl_collection_open(s->db, names[i], &h) != 0)
                    continue;
                nl_collection_stats st;
                nl_collection_stats_get(h, &st);
                nl_collection_close(h);
                double v[] = {(double)st.points, (double)st.fresh_points, (double)st.segments,
                              (double)st.segment_points, (double)st.tombstones, (double)st.disk_bytes,
                              (double)st.ram_bytes, (double)st.cached_nodes, (double)st.flushes,
                              (double)st.compactions, (double)st.write_waits, st.flush_seconds, st.compaction_seconds,
                              (double)st.background_error, (double)st.store_sst_bytes,
                              (double)st.store_memtable_bytes, (double)st.store_pending_compaction_bytes,
                              (double)st.store_running_compactions, (double)st.store_keys,
                              (double)st.store_block_cache_bytes, (double)st.search_retries,
                              (double)st.search_exhaustive, (double)st.failed_shards,
                              (double)st.shard_reopens, (double)st.flush_bytes, (double)st.compaction_bytes};
                fprintf(f, "nearline_collection_%s{collection=\"%s\"} %.17g\n", g[gi], names[i], v[gi]);
            }
        }
        nl_names_free(names, n);
    }
    if (s->opt.cluster)
        nl_cluster_metrics(s->opt.cluster, f);
    fclose(f);
    return nl_srv_send_buffer(c, r, 200, buf, len, "text/plain; version=0.0.4");
}
