/*
 * shardmap.c — the znode payloads of the cluster (nl_shardmap.h) and placement.
 *
 * The payloads are JSON so an operator can read them with zkCli; they are decoded like any
 * other untrusted input: unknown fields are ignored (a newer node may add some), missing
 * or mistyped ones are NL_ECORRUPT naming the field, and every string is length-checked
 * before it is copied into a fixed array.
 *
 * Placement is greedy and deterministic: shards are placed in order, each replica on the
 * least-loaded eligible node. "Load" here is the number of shard replicas a node holds
 * (its share of data and of search fan-out), with free disk and the load average only as
 * tie-breakers: the figures a node reports move with time, and a placement that followed
 * them closely would differ between two coordinators looking a second apart.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "nl_shardmap.h"

int nl_node_id_check(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= NL_NODE_ID_MAX)
        return nl_fail(NL_EINVAL, "a node id is 1..%d characters of [A-Za-z0-9_-]", NL_NODE_ID_MAX - 1);
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return nl_fail(NL_EINVAL, "node id \"%s\": only [A-Za-z0-9_-] are allowed", id);
    }
    return 0;
}

static char *dump(json_t *j)
{
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

static json_t *load(const char *buf, size_t len, const char *what)
{
    json_error_t e;
    json_t *j = buf && len ? json_loadb(buf, len, 0, &e) : NULL;
    if (!j || !json_is_object(j)) {
        json_decref(j);
        nl_fail(NL_ECORRUPT, "%s: not a JSON object", what);
        return NULL;
    }
    return j;
}

static int get_str(json_t *o, const char *k, char *out, size_t cap, const char *what)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v) || json_string_length(v) >= cap)
        return nl_fail(NL_ECORRUPT, "%s: \"%s\" must be a string of under %zu bytes", what, k, cap);
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

static int get_u64(json_t *o, const char *k, uint64_t lo, uint64_t hi, uint64_t *out, const char *what)
{
    json_t *v = json_object_get(o, k);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < lo ||
        (uint64_t)json_integer_value(v) > hi)
        return nl_fail(NL_ECORRUPT, "%s: \"%s\" must be an integer in %llu..%llu", what, k, (unsigned long long)lo,
                       (unsigned long long)hi);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_u32(json_t *o, const char *k, uint32_t lo, uint32_t hi, uint32_t *out, const char *what)
{
    uint64_t v = 0;
    int rc = get_u64(o, k, lo, hi, &v, what);
    if (!rc)
        *out = (uint32_t)v;
    return rc;
}

/* ---------------------------------------------------------------- nodes */

char *nl_node_info_encode(const nl_node_info *n)
{
    return dump(json_pack("{s:s,s:s,s:b,s:I,s:I,s:I,s:f,s:i,s:s,s:I}", "id", n->id, "address", n->address, "tls",
                          n->tls, "disk_free", (json_int_t)n->disk_free, "used_bytes", (json_int_t)n->used_bytes, "ram",
                          (json_int_t)n->ram, "load", n->load, "shards", (int)n->shards, "version", n->version,
                          "started_ms", (json_int_t)n->started_ms));
}

int nl_node_info_decode(const char *buf, size_t len, nl_node_info *n)
{
    memset(n, 0, sizeof *n);
    json_t *j = load(buf, len, "node record");
    if (!j)
        return NL_ECORRUPT;
    const char *w = "node record";
    json_t *load_ = json_object_get(j, "load"), *tls = json_object_get(j, "tls");
    int rc = get_str(j, "id", n->id, sizeof n->id, w);
    if (!rc) rc = get_str(j, "address", n->address, sizeof n->address, w);
    if (!rc) rc = get_u64(j, "disk_free", 0, UINT64_MAX >> 1, &n->disk_free, w);
    if (!rc) rc = get_u64(j, "ram", 0, UINT64_MAX >> 1, &n->ram, w);
    if (!rc) rc = get_u32(j, "shards", 0, UINT32_MAX, &n->shards, w);
    if (!rc && (!json_is_number(load_) || !isfinite(json_number_value(load_)) || json_number_value(load_) < 0))
        rc = nl_fail(NL_ECORRUPT, "%s: \"load\" must be a number >= 0", w);
    if (!rc && !json_is_boolean(tls))
        rc = nl_fail(NL_ECORRUPT, "%s: \"tls\" must be true or false", w);
    if (!rc) {
        n->load = json_number_value(load_);
        n->tls = json_is_true(tls);
        if (get_str(j, "version", n->version, sizeof n->version, w))
            snprintf(n->version, sizeof n->version, "?");
        uint64_t t = 0;
        if (get_u64(j, "started_ms", 0, UINT64_MAX >> 1, &t, w) == 0)
            n->started_ms = t;
        t = 0; /* optional: a node from before moves reports none */
        if (get_u64(j, "used_bytes", 0, UINT64_MAX >> 1, &t, w) == 0)
            n->used_bytes = t;
        nl_clear_errdetail();
        rc = nl_node_id_check(n->id) ? NL_ECORRUPT : 0;
    }
    json_decref(j);
    return rc;
}

/* ---------------------------------------------------------------- collections */

const char *nl_quorum_name(int q) { return q == NL_QUORUM_MAJORITY ? "majority" : "all"; }

char *nl_cluster_collection_encode(const nl_cluster_collection *c)
{
    const nl_collection_config *g = &c->cfg;
    char code[32];
    return dump(json_pack("{s:s,s:s,s:i,s:s,s:s,s:i,s:i,s:s,s:{s:i,s:i,s:f,s:i,s:i,s:s}}", "name", c->name, "uid", c->uid,
                          "dim", (int)g->dim, "metric", nl_metric_name(g->metric), "dtype", nl_dtype_name(g->dtype),
                          "shards", (int)g->shards, "replicas", (int)c->replicas, "write_quorum",
                          nl_quorum_name(c->write_quorum), "index", "R", (int)g->R, "L",
                          (int)g->L, "alpha", round((double)g->alpha * 1e6) / 1e6, "pq_bytes", (int)g->pq_bytes,
                          "fresh_capacity", (int)g->fresh_capacity, "code", nl_collection_code_name(g, code, sizeof code)));
}

int nl_cluster_collection_decode(const char *buf, size_t len, nl_cluster_collection *c)
{
    memset(c, 0, sizeof *c);
    const char *w = "collection record";
    json_t *j = load(buf, len, w);
    if (!j)
        return NL_ECORRUPT;
    json_t *ix = json_object_get(j, "index"), *alpha = json_object_get(ix, "alpha");
    char metric[16], dtype[16];
    nl_collection_config *g = &c->cfg;
    int rc = get_str(j, "name", c->name, sizeof c->name, w);
    if (!rc) rc = get_str(j, "uid", c->uid, sizeof c->uid, w);
    if (!rc) rc = get_u32(j, "dim", 1, 65535, &g->dim, w);
    if (!rc) rc = get_u32(j, "shards", 1, NL_MAX_SHARDS, &g->shards, w);
    if (!rc) rc = get_u32(j, "replicas", 1, NL_MAX_RF, &c->replicas, w);
    if (!rc) rc = get_str(j, "metric", metric, sizeof metric, w);
    if (!rc) rc = get_str(j, "dtype", dtype, sizeof dtype, w);
    if (!rc && nl_metric_parse(metric, &g->metric)) rc = nl_fail(NL_ECORRUPT, "%s: unknown metric", w);
    if (!rc && nl_dtype_parse(dtype, &g->dtype)) rc = nl_fail(NL_ECORRUPT, "%s: unknown dtype", w);
    if (!rc && !json_is_object(ix)) rc = nl_fail(NL_ECORRUPT, "%s: \"index\" must be an object", w);
    if (!rc) rc = get_u32(ix, "R", 1, 1024, &g->R, w);
    if (!rc) rc = get_u32(ix, "L", 1, NL_MAX_K, &g->L, w);
    if (!rc) rc = get_u32(ix, "pq_bytes", 1, 65535, &g->pq_bytes, w);
    if (!rc) rc = get_u32(ix, "fresh_capacity", 1, 100000000, &g->fresh_capacity, w);
    if (!rc && (!json_is_number(alpha) || !isfinite(json_number_value(alpha))))
        rc = nl_fail(NL_ECORRUPT, "%s: \"index.alpha\" must be a number", w);
    if (!rc)
        g->alpha = (float)json_number_value(alpha);
    /* Records written before codes had kinds name none: those collections are PQ. */
    json_t *code = json_object_get(ix, "code");
    if (!rc) {
        uint32_t pqb = g->pq_bytes;
        g->code = NL_COLL_CODE_PQ;
        if (code && (!json_is_string(code) || nl_collection_code_parse(json_string_value(code), g) != 0 ||
                     g->code == NL_COLL_CODE_DEFAULT || g->pq_bytes != pqb))
            rc = nl_fail(NL_ECORRUPT, "%s: \"index.code\" must be pq:%u or rabitq:1..8", w, pqb);
    }
    json_t *q = json_object_get(j, "write_quorum");
    if (!rc && q) {
        const char *qs = json_string_value(q);
        if (qs && !strcmp(qs, "all"))
            c->write_quorum = NL_QUORUM_ALL;
        else if (qs && !strcmp(qs, "majority"))
            c->write_quorum = NL_QUORUM_MAJORITY;
        else
            rc = nl_fail(NL_ECORRUPT, "%s: \"write_quorum\" must be \"all\" or \"majority\"", w);
    }
    json_decref(j);
    return rc;
}

int nl_cluster_collection_match(const nl_cluster_collection *c, const nl_collection_config *l)
{
    const nl_collection_config *g = &c->cfg;
    const char *what = g->dim != l->dim ? "dim" : g->metric != l->metric ? "metric" : g->dtype != l->dtype ? "dtype"
                     : g->shards != l->shards ? "shards" : g->R != l->R ? "R" : g->L != l->L ? "L"
                     : fabsf(g->alpha - l->alpha) > 1e-5f ? "alpha" : g->pq_bytes != l->pq_bytes ? "pq_bytes"
                     : nl_collection_code_resolved(g) != nl_collection_code_resolved(l) ? "code" : NULL;
    return what ? nl_fail(NL_ECORRUPT, "the local copy of '%s' differs from the cluster's config in %s", c->name, what)
                : 0;
}

/* ---------------------------------------------------------------- maps */

static const char *const state_names[] = {"active", "moving", "offline"};
const char *nl_shard_state_name(nl_shard_state s) { return (unsigned)s < 3 ? state_names[s] : "?"; }

char *nl_shard_map_encode(const nl_shard_map *m)
{
    json_t *a = json_array();
    for (uint32_t s = 0; s < m->nshards; s++) {
        const nl_shard_entry *e = &m->shard[s];
        json_t *r = json_array(), *in = json_array();
        for (uint32_t i = 0; i < e->nreplicas; i++)
            json_array_append_new(r, json_string(e->replicas[i]));
        for (uint32_t i = 0; i < e->nin_sync; i++)
            json_array_append_new(in, json_string(e->in_sync[i]));
        json_t *o = json_pack("{s:i,s:I,s:s,s:o,s:o,s:s}", "shard", (int)s, "epoch", (json_int_t)e->epoch, "primary",
                              e->primary, "replicas", r, "in_sync", in, "state", nl_shard_state_name(e->state));
        if (e->state == NL_SHARD_MOVING)
            json_object_set_new(o, "move", json_pack("{s:s,s:s,s:I,s:I,s:s}", "from", e->move.from, "to", e->move.to,
                                                     "id", (json_int_t)e->move.id, "started_ms",
                                                     (json_int_t)e->move.started_ms, "reason", e->move.reason));
        json_array_append_new(a, o);
    }
    return dump(json_pack("{s:s,s:s,s:o}", "collection", m->collection, "uid", m->uid, "shards", a));
}

int nl_shard_map_decode(const char *buf, size_t len, nl_shard_map *m)
{
    memset(m, 0, sizeof *m);
    const char *w = "shard map";
    json_t *j = load(buf, len, w);
    if (!j)
        return NL_ECORRUPT;
    json_t *a = json_object_get(j, "shards");
    int rc = get_str(j, "collection", m->collection, sizeof m->collection, w);
    if (!rc) rc = get_str(j, "uid", m->uid, sizeof m->uid, w);
    if (!rc && (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > NL_MAX_SHARDS))
        rc = nl_fail(NL_ECORRUPT, "%s: \"shards\" must be an array of 1..%d entries", w, NL_MAX_SHARDS);
    for (size_t s = 0; !rc && s < json_array_size(a); s++) {
        json_t *o = json_array_get(a, s), *r = json_object_get(o, "replicas");
        nl_shard_entry *e = &m->shard[s];
        uint32_t idx;
        char st[16];
        if (!json_is_object(o)) { rc = nl_fail(NL_ECORRUPT, "%s: shard %zu is not an object", w, s); break; }
        if ((rc = get_u32(o, "shard", 0, NL_MAX_SHARDS, &idx, w)) != 0) break;
        if (idx != s) { rc = nl_fail(NL_ECORRUPT, "%s: entry %zu says shard %u", w, s, idx); break; }
        if ((rc = get_u64(o, "epoch", 1, UINT64_MAX >> 1, &e->epoch, w)) != 0) break;
        if ((rc = get_str(o, "primary", e->primary, sizeof e->primary, w)) != 0) break;
        if ((rc = get_str(o, "state", st, sizeof st, w)) != 0) break;
        e->state = !strcmp(st, "active") ? NL_SHARD_ACTIVE : !strcmp(st, "moving") ? NL_SHARD_MOVING
                 : !strcmp(st, "offline") ? NL_SHARD_OFFLINE : (nl_shard_state)-1;
        if ((int)e->state < 0) { rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: unknown state \"%s\"", w, s, st); break; }
        if (!json_is_array(r) || json_array_size(r) < 1 || json_array_size(r) > NL_MAX_REPLICAS) {
            rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: \"replicas\" must hold 1..%d node ids", w, s, NL_MAX_REPLICAS);
            break;
        }
        e->nreplicas = (uint32_t)json_array_size(r);
        int primary_listed = 0;
        for (uint32_t i = 0; !rc && i < e->nreplicas; i++) {
            json_t *v = json_array_get(r, i);
            if (!json_is_string(v) || nl_node_id_check(json_string_value(v)))
                rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: replica %u is not a node id", w, s, i);
            else
                snprintf(e->replicas[i], sizeof e->replicas[i], "%s", json_string_value(v));
            for (uint32_t k = 0; !rc && k < i; k++)
                if (!strcmp(e->replicas[k], e->replicas[i]))
                    rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: node %s holds two replicas", w, s, e->replicas[i]);
            if (!rc && !strcmp(e->replicas[i], e->primary))
                primary_listed = 1;
        }
        if (!rc && !primary_listed)
            rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: the primary is not among the replicas", w, s);
        json_t *in = json_object_get(o, "in_sync");
        if (!rc && !in) { /* a map from before replication: every replica */
            memcpy(e->in_sync, e->replicas, sizeof e->in_sync);
            e->nin_sync = e->nreplicas;
        } else if (!rc && (!json_is_array(in) || json_array_size(in) > e->nreplicas)) {
            rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: \"in_sync\" must list replicas", w, s);
        }
        for (size_t i = 0; !rc && in && i < json_array_size(in); i++) {
            const char *v = json_string_value(json_array_get(in, i));
            int listed = 0, twice = 0;
            for (uint32_t k = 0; v && k < e->nreplicas; k++)
                listed |= !strcmp(e->replicas[k], v);
            for (uint32_t k = 0; v && k < e->nin_sync; k++)
                twice |= !strcmp(e->in_sync[k], v);
            if (!listed || twice)
                rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: in_sync entry %zu is not a replica listed once", w, s, i);
            else
                snprintf(e->in_sync[e->nin_sync++], NL_NODE_ID_MAX, "%s", v);
        }
        m->nshards = (uint32_t)s + 1;
        if (!rc && !nl_shard_map_in_sync(m, (uint32_t)s, e->primary))
            rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: the primary is not in sync", w, s);
        json_t *mv = json_object_get(o, "move");
        if (!rc && (e->state == NL_SHARD_MOVING) != (mv != NULL))
            rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: a \"move\" exactly when the state is moving", w, s);
        if (!rc && mv) {
            nl_shard_move *x = &e->move;
            if (!json_is_object(mv)) rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: \"move\" is not an object", w, s);
            if (!rc) rc = get_str(mv, "from", x->from, sizeof x->from, w);
            if (!rc) rc = get_str(mv, "to", x->to, sizeof x->to, w);
            if (!rc) rc = get_u64(mv, "id", 0, UINT64_MAX >> 1, &x->id, w);
            if (!rc) rc = get_u64(mv, "started_ms", 0, UINT64_MAX >> 1, &x->started_ms, w);
            if (!rc) rc = get_str(mv, "reason", x->reason, sizeof x->reason, w);
            if (!rc && (!nl_shard_map_holds(m, (uint32_t)s, x->to) || !nl_shard_map_holds(m, (uint32_t)s, x->from) ||
                        !strcmp(x->from, x->to)))
                rc = nl_fail(NL_ECORRUPT, "%s: shard %zu: a move's from and to must be two of its replicas", w, s);
        }
    }
    json_decref(j);
    return rc;
}

int nl_shard_map_holds(const nl_shard_map *m, uint32_t s, const char *node)
{
    if (s >= m->nshards)
        return 0;
    for (uint32_t i = 0; i < m->shard[s].nreplicas; i++)
        if (!strcmp(m->shard[s].replicas[i], node))
            return 1;
    return 0;
}

int nl_shard_map_in_sync(const nl_shard_map *m, uint32_t s, const char *node)
{
    if (s >= m->nshards)
        return 0;
    for (uint32_t i = 0; i < m->shard[s].nin_sync; i++)
        if (!strcmp(m->shard[s].in_sync[i], node))
            return 1;
    return 0;
}

int nl_shard_map_set_in_sync(nl_shard_map *m, uint32_t s, const char *node, int in)
{
    if (s >= m->nshards || !nl_shard_map_holds(m, s, node))
        return nl_fail(NL_EINVAL, "node %s holds no replica of shard %u", node, s);
    nl_shard_entry *e = &m->shard[s];
    int now = nl_shard_map_in_sync(m, s, node);
    if (now == !!in)
        return 1;
    if (in) {
        snprintf(e->in_sync[e->nin_sync++], NL_NODE_ID_MAX, "%s", node);
        return 0;
    }
    if (!strcmp(node, e->primary))
        return nl_fail(NL_EINVAL, "the primary of shard %u is always in sync", s);
    for (uint32_t i = 0; i < e->nin_sync; i++)
        if (!strcmp(e->in_sync[i], node)) {
            memmove(e->in_sync[i], e->in_sync[i + 1], (size_t)(e->nin_sync - i - 1) * NL_NODE_ID_MAX);
            e->nin_sync--;
            break;
        }
    return 0;
}

/* ---------------------------------------------------------------- placement */

/* 1 when node a is the better choice than b. */
static int better(const nl_node_info *a, uint32_t la, const nl_node_info *b, uint32_t lb)
{
    if (la != lb) return la < lb;
    if (a->disk_free != b->disk_free) return a->disk_free > b->disk_free;
    if (a->load != b->load) return a->load < b->load;
    return strcmp(a->id, b->id) < 0;
}

int nl_shard_map_place(const nl_node_info *nodes, size_t nnodes, const uint32_t *held, const nl_cluster_collection *c,
                       nl_shard_map *out)
{
    memset(out, 0, sizeof *out);
    if (nnodes == 0)
        return nl_fail(NL_EINVAL, "no live node to place shards on");
    if (nnodes > NL_MAX_NODES)
        nnodes = NL_MAX_NODES;
    if (c->replicas < 1 || c->replicas > NL_MAX_RF || c->replicas > nnodes)
        return nl_fail(NL_EINVAL, "%u replicas need as many live nodes; %zu are live", c->replicas, nnodes);
    if (c->cfg.shards < 1 || c->cfg.shards > NL_MAX_SHARDS)
        return nl_fail(NL_EINVAL, "shards must be 1..%d", NL_MAX_SHARDS);
    uint32_t load[NL_MAX_NODES];
    for (size_t i = 0; i < nnodes; i++)
        load[i] = held ? held[i] : 0;
    snprintf(out->collection, sizeof out->collection, "%s", c->name);
    snprintf(out->uid, sizeof out->uid, "%s", c->uid);
    out->nshards = c->cfg.shards;
    for (uint32_t s = 0; s < c->cfg.shards; s++) {
        nl_shard_entry *e = &out->shard[s];
        e->epoch = 1;
        e->state = NL_SHARD_ACTIVE;
        for (uint32_t r = 0; r < c->replicas; r++) {
            size_t best = nnodes;
            for (size_t i = 0; i < nnodes; i++) {
                int taken = 0;
                for (uint32_t k = 0; k < r; k++)
                    taken |= !strcmp(e->replicas[k], nodes[i].id);
                if (!taken && (best == nnodes || better(&nodes[i], load[i], &nodes[best], load[best])))
                    best = i;
            }
            snprintf(e->replicas[r], sizeof e->replicas[r], "%s", nodes[best].id);
            load[best]++;
        }
        e->nreplicas = c->replicas;
        memcpy(e->primary, e->replicas[0], sizeof e->primary); /* both NL_NODE_ID_MAX, NUL-terminated */
        memcpy(e->in_sync, e->replicas, sizeof e->in_sync);     /* all empty: all in sync */
        e->nin_sync = e->nreplicas;
    }
    return 0;
}

/* ---------------------------------------------------------------- moves */

static void drop_name(char (*list)[NL_NODE_ID_MAX], uint32_t *n, const char *id)
{
    for (uint32_t i = 0; i < *n; i++)
        if (!strcmp(list[i], id)) {
            memmove(list[i], list[i + 1], (size_t)(*n - i - 1) * NL_NODE_ID_MAX);
            (*n)--;
            memset(list[*n], 0, NL_NODE_ID_MAX);
            return;
        }
}

int nl_shard_map_move_begin(nl_shard_map *m, uint32_t s, const char *from, const char *to, uint64_t id,
                            uint64_t now_ms, const char *reason)
{
    if (s >= m->nshards)
        return nl_fail(NL_EINVAL, "no shard %u", s);
    nl_shard_entry *e = &m->shard[s];
    if (e->state != NL_SHARD_ACTIVE)
        return nl_fail(NL_EINVAL, "shard %u is %s", s, nl_shard_state_name(e->state));
    if (nl_node_id_check(to) || !nl_shard_map_holds(m, s, from))
        return nl_fail(NL_EINVAL, "node %s holds no replica of shard %u", from, s);
    if (nl_shard_map_holds(m, s, to))
        return nl_fail(NL_EINVAL, "node %s already holds a replica of shard %u", to, s);
    if (e->nreplicas >= NL_MAX_REPLICAS)
        return nl_fail(NL_EINVAL, "shard %u lists %u replicas already", s, e->nreplicas);
    snprintf(e->replicas[e->nreplicas++], NL_NODE_ID_MAX, "%s", to);
    e->state = NL_SHARD_MOVING;
    memset(&e->move, 0, sizeof e->move);
    snprintf(e->move.from, sizeof e->move.from, "%s", from);
    snprintf(e->move.to, sizeof e->move.to, "%s", to);
    snprintf(e->move.reason, sizeof e->move.reason, "%s", reason ? reason : "operator");
    e->move.id = id;
    e->move.started_ms = now_ms;
    return 0;
}

int nl_shard_map_move_rollback(nl_shard_map *m, uint32_t s)
{
    if (s >= m->nshards || m->shard[s].state != NL_SHARD_MOVING)
        return nl_fail(NL_EINVAL, "shard %u is not moving", s);
    nl_shard_entry *e = &m->shard[s];
    if (nl_shard_map_in_sync(m, s, e->move.to))
        return nl_fail(NL_EINVAL, "shard %u: %s is in sync; it leaves the in-sync set first", s, e->move.to);
    drop_name(e->replicas, &e->nreplicas, e->move.to);
    e->state = NL_SHARD_ACTIVE;
    memset(&e->move, 0, sizeof e->move);
    return 0;
}

int nl_shard_map_move_finish(nl_shard_map *m, uint32_t s)
{
    if (s >= m->nshards || m->shard[s].state != NL_SHARD_MOVING)
        return nl_fail(NL_EINVAL, "shard %u is not moving", s);
    nl_shard_entry *e = &m->shard[s];
    if (!nl_shard_map_in_sync(m, s, e->move.to))
        return nl_fail(NL_EINVAL, "shard %u: %s is not in sync yet", s, e->move.to);
    if (!strcmp(e->primary, e->move.from)) {
        memcpy(e->primary, e->move.to, sizeof e->primary);
        e->epoch++;
    }
    drop_name(e->replicas, &e->nreplicas, e->move.from);
    drop_name(e->in_sync, &e->nin_sync, e->move.from);
    for (uint32_t i = 1; i < e->nreplicas; i++) /* primary first */
        if (!strcmp(e->replicas[i], e->primary)) {
            char t[NL_NODE_ID_MAX];
            memcpy(t, e->replicas[0], sizeof t);
            memcpy(e->replicas[0], e->replicas[i], sizeof t);
            memcpy(e->replicas[i], t, sizeof t);
        }
    e->state = NL_SHARD_ACTIVE;
    memset(&e->move, 0, sizeof e->move);
    return 0;
}

/* ---------------------------------------------------------------- search budget */

void nl_shard_map_budget(uint32_t k, uint32_t L, uint32_t shards, uint32_t *ks, uint32_t *Ls)
{
    uint32_t base = L ? L : (k > 64 ? k : 64);
    if (base < k)
        base = k;
    if (shards <= 1 || k == 0) {
        *ks = k;
        *Ls = base;
        return;
    }
    /* the Binomial(k, p) probabilities from the log of each term, then the expected loss
     * E[max(0, X - m)] = sum over x > m of (x - m) pmf(x) from suffix sums, for m from k
     * down while it stays within the bound (it grows as m falls) */
    if (k > NL_MAX_K)
        k = NL_MAX_K;
    double p = 1.0 / shards, lp = log(p), lq = log1p(-p), pmf[NL_MAX_K + 1];
    for (uint32_t x = 0; x <= k; x++)
        pmf[x] = exp(lgamma(k + 1.0) - lgamma(x + 1.0) - lgamma(k - x + 1.0) + x * lp + (k - x) * lq);
    uint32_t least = (k + shards - 1) / shards, m = k;
    double t0 = 0.0, t1 = 0.0; /* sums over x > m of pmf(x) and of x pmf(x) */
    while (m > least) {
        double n0 = t0 + pmf[m], n1 = t1 + m * pmf[m]; /* the sums for m - 1 */
        if (shards * (n1 - (m - 1) * n0) > k / 1000.0)
            break;
        t0 = n0;
        t1 = n1;
        m--;
    }
    *ks = m;
    uint32_t l = (uint32_t)ceil(base * sqrt(p));
    *Ls = l < m ? m : l > base ? base : l;
}
