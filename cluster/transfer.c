/*
 * transfer.c — a snapshot of a shard, sent from its primary to a follower that the log
 * cannot catch up (its position was trimmed away, or it holds entries the primary lacks).
 *
 * The primary takes a consistent copy (nl_collection_shard_checkpoint: a RocksDB
 * checkpoint and hard links to the segment files, between two writes, so it is the shard
 * at one log position) under <db>/.repl/, and sends its files in pieces of 1 MiB:
 * each piece zstd-compressed, with the CRC-32C of its raw bytes. The follower keeps what
 * it receives under <db>/<collection>/.incoming-<shard>/, named by the copy's id, appends
 * a piece only at the end of what it has of that file and only after its checksum holds,
 * and tells what it has when asked, so an interrupted transfer resumes where it stopped
 * (the primary keeps its copy while the link lives, for 10 minutes at most). The last call
 * names every file and its size; the follower checks them, syncs them and installs the
 * copy in place of its shard (nl_collection_shard_install), and the link then streams
 * the log from the copy's position.
 *
 * Everything the follower receives is untrusted: file names are one path component (or
 * meta/ and one), pieces are bounded, sizes and offsets checked before anything is
 * written, and a piece whose checksum fails is refused (400) and sent again.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

#include "cluster_internal.h"
#include "cl_floor.h"
#include "cl_repl.h"
#include "cl_transfer.h"
#include "nl_files.h"
#include "nl_crc32c.h"
#include "nl_util.h"

#define CHUNK (1u << 20)
#define MAX_FILES 4096
#define KEEP_MS 600000u

typedef struct {
    char name[128];
    uint64_t size;
} snap_file;

struct cl_snapshot_out {
    char id[24];
    char dir[4400];
    snap_file *files;
    size_t nfiles;
    nl_log_state at;
    uint64_t created_ms;
};

static uint64_t now_ms(void) { return nl_now_ns() / 1000000u; }

/* A file name the follower accepts: "x" or "meta/x", x of [A-Za-z0-9._-], not starting
 * with a dot. */
static int name_ok(const char *n)
{
    const char *b = !strncmp(n, "meta/", 5) ? n + 5 : n;
    size_t l = strlen(b);
    if (l == 0 || l > 100 || b[0] == '.')
        return 0;
    for (const char *q = b; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '.' ||
              *q == '_' || *q == '-'))
            return 0;
    return 1;
}

/* Regular files of dir (and dir/meta) with their sizes. */
static int list_files(const char *dir, snap_file **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    snap_file *v = calloc(MAX_FILES, sizeof *v);
    if (!v)
        return -ENOMEM;
    const char *subs[2] = {"", "meta/"};
    for (int k = 0; k < 2; k++) {
        char d[4600];
        snprintf(d, sizeof d, "%s/%s", dir, subs[k]);
        DIR *dd = opendir(d);
        struct dirent *e;
        while (dd && (e = readdir(dd)) != NULL) {
            char p[4900];
            struct stat st;
            if (strlen(e->d_name) > 100)
                continue;
            snprintf(p, sizeof p, "%s/%.100s", d, e->d_name);
            if (e->d_name[0] == '.' || stat(p, &st) != 0 || !S_ISREG(st.st_mode) || *n >= MAX_FILES)
                continue;
            snprintf(v[*n].name, sizeof v[*n].name, "%s%.100s", subs[k], e->d_name);
            if (!name_ok(v[*n].name))
                continue;
            v[(*n)++].size = (uint64_t)st.st_size;
        }
        if (dd)
            closedir(dd);
    }
    *out = v;
    return 0;
}

/* ---------------------------------------------------------------- the primary's side */

static void snap_free(cl_snapshot_out *o)
{
    if (!o)
        return;
    nl_remove_tree(o->dir);
    free(o->files);
    free(o);
}

void cl_snapshot_link_done(repl_link *l)
{
    snap_free(l->snap);
    l->snap = NULL;
}

static int snap_make(repl_link *l)
{
    repl_role *r = l->role;
    nl_cluster *cl = r->cl;
    cl_snapshot_out *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    uint64_t x = nl_now_ns() * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)o;
    snprintf(o->id, sizeof o->id, "%016llx", (unsigned long long)x);
    char base[4200];
    snprintf(base, sizeof base, "%s/.repl", cl->db_dir);
    mkdir(base, 0755);
    snprintf(o->dir, sizeof o->dir, "%s/%s-%u-%s", base, r->coll, r->s, o->id);
    int rc = nl_collection_shard_checkpoint(r->h, r->s, o->dir, &o->at);
    if (!rc)
        rc = list_files(o->dir, &o->files, &o->nfiles);
    if (rc) {
        snap_free(o);
        return rc;
    }
    o->created_ms = now_ms();
    l->snap = o;
    cl_log(cl, 1, "\"event\":\"snapshot_taken\",\"collection\":\"%s\",\"shard\":%u,\"id\":\"%s\",\"files\":%zu,"
           "\"last_seq\":%llu", r->coll, r->s, o->id, o->nfiles, (unsigned long long)o->at.last_seq);
    return 0;
}

static int post_json(repl_link *l, const char *op, json_t *body, json_t **ans)
{
    repl_role *r = l->role;
    char *txt = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!txt)
        return 0;
    char path[400];
    snprintf(path, sizeof path, "/internal/v1/collections/%s/shards/%u/%s", r->coll, r->s, op);
    int st = cl_link_call(r->cl, &l->e, l->peer, path, txt, strlen(txt), "application/json", 30000, ans);
    free(txt);
    return st;
}

/* Sends one piece; the follower's size of the file after it (or what it has, on 409). */
static int send_piece(repl_link *l, const snap_file *f, uint64_t off, int fd, unsigned char *raw, unsigned char *z,
                      size_t zcap, uint64_t *have, uint64_t *sent)
{
    repl_role *r = l->role;
    size_t n = f->size - off < CHUNK ? (size_t)(f->size - off) : CHUNK;
    if (nl_pread_full(fd, raw, n, off) != 0)
        return -EIO;
    size_t zn = ZSTD_compress(z + 4 + 512, zcap - 4 - 512, raw, n, 1);
    if (ZSTD_isError(zn))
        return -EIO;
    uint32_t crc = nl_crc32c(0, raw, n);
    /* the rate limit: pieces of all copies this node sends share it (a move must leave the
     * disk and the network to searches) */
    nl_cluster *cl = r->cl;
    if (cl->moves.rate_bps) {
        pthread_mutex_lock(&cl->moves.pace_mu);
        uint64_t t = nl_now_ns(), at = cl->moves.pace_next_ns > t ? cl->moves.pace_next_ns : t;
        cl->moves.pace_next_ns = at + (uint64_t)n * 1000000000ull / cl->moves.rate_bps;
        pthread_mutex_unlock(&cl->moves.pace_mu);
        while (at > nl_now_ns() && !atomic_load(&l->stop)) {
            uint64_t w = at - nl_now_ns();
            struct timespec ts = {0, (long)(w > 50000000 ? 50000000 : w)};
            nanosleep(&ts, NULL);
        }
    }
    uint64_t nth = atomic_fetch_add(&cl->pieces_sent, 1) + 1;
    int spoil = cl->moves.fault_corrupt_every && nth % cl->moves.fault_corrupt_every == 0;
    char meta[512];
    int jl = snprintf(meta, sizeof meta, "{\"id\":\"%s\",\"file\":\"%s\",\"offset\":%llu,\"size\":%zu,\"total\":%llu,"
                      "\"crc\":%u}", l->snap->id, f->name, (unsigned long long)off, n, (unsigned long long)f->size, crc);
    /* the header's JSON sits right before the compressed bytes: move it up to them */
    uint32_t ujl = (uint32_t)jl;
    unsigned char *start = z + 512 - jl;
    memcpy(start, &ujl, 4);
    memcpy(start + 4, meta, (size_t)jl);
    char path[400];
    snprintf(path, sizeof path, "/internal/v1/collections/%s/shards/%u/snapshot-chunk", r->coll, r->s);
    if (spoil) { /* the test hook: one byte flipped, or the piece cut short (every other time) */
        if ((nth / cl->moves.fault_corrupt_every) % 2)
            zn = zn > 8 ? zn / 2 : zn;
        else
            z[4 + 512 + zn / 2] ^= 0x5a;
    }
    json_t *a = NULL;
    int st = cl_link_call(r->cl, &l->e, l->peer, path, start, 4 + (size_t)jl + zn, NULL, 30000, &a);
    json_int_t h = json_integer_value(json_object_get(a, "have"));
    json_decref(a);
    if (st == 200 || st == 409) {
        *have = (uint64_t)h;
        *sent += 4 + (size_t)jl + zn;
        return st;
    }
    return st ? st : -EIO;
}

int cl_snapshot_send(repl_link *l)
{
    repl_role *r = l->role;
    nl_cluster *cl = r->cl;
    uint64_t t0 = now_ms(), sent = 0;
    if (l->snap && t0 - l->snap->created_ms > KEEP_MS)
        cl_snapshot_link_done(l); /* too old to resume: the log has moved on far */
    int rc = l->snap ? 0 : snap_make(l);
    if (rc)
        return rc;
    cl_snapshot_out *o = l->snap;
    json_t *a = NULL;
    int st = post_json(l, "snapshot", json_pack("{s:s}", "id", o->id), &a);
    json_t *have = json_object_get(a, "files");
    if (st != 200 || !json_is_object(have)) {
        json_decref(a);
        return -EIO;
    }
    pthread_mutex_lock(&r->mu);
    l->snap_total = l->snap_done = 0;
    for (size_t i = 0; i < o->nfiles; i++) {
        uint64_t off = (uint64_t)json_integer_value(json_object_get(have, o->files[i].name));
        l->snap_total += o->files[i].size;
        l->snap_done += off < o->files[i].size ? off : o->files[i].size;
    }
    uint64_t raw0 = l->snap_done;
    pthread_mutex_unlock(&r->mu);
    unsigned char *raw = malloc(CHUNK);
    size_t zcap = ZSTD_compressBound(CHUNK) + 4 + 512;
    unsigned char *z = malloc(zcap);
    rc = raw && z ? 0 : -ENOMEM;
    for (size_t i = 0; !rc && i < o->nfiles && !atomic_load(&l->stop); i++) {
        const snap_file *f = &o->files[i];
        uint64_t off = (uint64_t)json_integer_value(json_object_get(have, f->name));
        if (off >= f->size)
            continue;
        char p[4600];
        snprintf(p, sizeof p, "%s/%s", o->dir, f->name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            rc = -errno;
            break;
        }
        int bad = 0;
        while (!rc && off < f->size && !atomic_load(&l->stop)) {
            uint64_t got = 0;
            int s2 = send_piece(l, f, off, fd, raw, z, zcap, &got, &sent);
            if (s2 == 200 || (s2 == 409 && got <= f->size)) {
                pthread_mutex_lock(&r->mu);
                l->snap_done += got > off ? got - off : 0;
                pthread_mutex_unlock(&r->mu);
                off = got;
                bad = 0;
            } else if (s2 == 400 && ++bad < 3) {
                atomic_fetch_add(&cl->pieces_resent, 1);
                cl_log(cl, 2, "\"event\":\"snapshot_piece_resent\",\"collection\":\"%s\",\"shard\":%u,\"follower\":"
                       "\"%s\",\"file\":\"%s\",\"offset\":%llu,\"message\":\"the follower refused the piece (its checksum or "
                       "size did not match): sent again\"", r->coll, r->s, l->peer, f->name, (unsigned long long)off);
                continue; /* the checksum failed on the way: the same piece again */
            } else {
                rc = -EIO;
            }
        }
        close(fd);
    }
    json_decref(a);
    free(raw);
    free(z);
    if (!rc && atomic_load(&l->stop))
        rc = -ECANCELED;
    if (rc) {
        cl_log(cl, 2, "\"event\":\"snapshot_interrupted\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\","
               "\"id\":\"%s\",\"bytes\":%llu", r->coll, r->s, l->peer, o->id, (unsigned long long)sent);
        atomic_fetch_add(&cl->snapshot_bytes, sent);
        return rc;
    }
    json_t *files = json_object();
    for (size_t i = 0; i < o->nfiles; i++)
        json_object_set_new(files, o->files[i].name, json_integer((json_int_t)o->files[i].size));
    a = NULL;
    st = post_json(l, "snapshot-install", json_pack("{s:s,s:o,s:I}", "id", o->id, "files", files, "last_seq",
                                                    (json_int_t)o->at.last_seq), &a);
    json_decref(a);
    uint64_t ms = now_ms() - t0;
    pthread_mutex_lock(&r->mu);
    uint64_t raw_sent = l->snap_done - raw0;
    pthread_mutex_unlock(&r->mu);
    atomic_fetch_add(&cl->snapshot_raw_bytes, raw_sent);
    atomic_fetch_add(&cl->snapshot_bytes, sent);
    atomic_fetch_add(&cl->snapshot_ms, ms);
    if (st != 200) {
        cl_log(cl, 2, "\"event\":\"snapshot_install_failed\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\","
               "\"status\":%d", r->coll, r->s, l->peer, st);
        cl_snapshot_link_done(l);
        return -EIO;
    }
    atomic_fetch_add(&cl->snapshots_sent, 1);
    pthread_mutex_lock(&r->mu);
    l->snapshots++;
    l->snapshot_bytes += sent;
    pthread_mutex_unlock(&r->mu);
    cl_log(cl, 1, "\"event\":\"snapshot_installed\",\"collection\":\"%s\",\"shard\":%u,\"follower\":\"%s\",\"id\":\"%s\","
           "\"bytes\":%llu,\"raw_bytes\":%llu,\"ms\":%llu,\"last_seq\":%llu", r->coll, r->s, l->peer, o->id,
           (unsigned long long)sent, (unsigned long long)raw_sent, (unsigned long long)ms,
           (unsigned long long)o->at.last_seq);
    cl_snapshot_link_done(l);
    return 0;
}

/* ---------------------------------------------------------------- the follower's side */

static void staging_dir(nl_cluster *cl, const char *name, uint32_t s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s/.incoming-%u", cl->db_dir, name, s);
}

static int staging_id(const char *dir, char *id, size_t cap)
{
    char p[4600];
    snprintf(p, sizeof p, "%s/.snapshot-id", dir);
    FILE *f = fopen(p, "r");
    if (!f)
        return -1;
    int ok = fgets(id, (int)cap, f) != NULL;
    fclose(f);
    id[strcspn(id, "\n")] = 0;
    return ok ? 0 : -1;
}

static int id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 20)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    return 1;
}

static json_t *staged_files(const char *dir)
{
    json_t *o = json_object();
    snap_file *f;
    size_t n;
    if (list_files(dir, &f, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            json_object_set_new(o, f[i].name, json_integer((json_int_t)f[i].size));
        free(f);
    }
    return o;
}

/* op "snapshot": begins (or resumes) receiving copy id. */
static int begin(nl_cluster *cl, const char *name, uint32_t s, const char *id, json_t **out)
{
    char dir[4400], have[32] = {0}, p[4600];
    staging_dir(cl, name, s, dir, sizeof dir);
    if (staging_id(dir, have, sizeof have) != 0 || strcmp(have, id)) {
        nl_remove_tree(dir); /* an older copy's pieces: of no use now */
        char meta[4500];
        snprintf(meta, sizeof meta, "%s/meta", dir);
        if (nl_mkdirs(meta) != 0) {
            *out = cl_error("internal", "cannot create %s", meta);
            return 500;
        }
        snprintf(p, sizeof p, "%s/.snapshot-id", dir);
        FILE *f = fopen(p, "w");
        if (!f || fprintf(f, "%s\n", id) < 0 || fclose(f) != 0) {
            *out = cl_error("internal", "cannot write %s", p);
            return 500;
        }
        cl_log(cl, 1, "\"event\":\"snapshot_receiving\",\"collection\":\"%s\",\"shard\":%u,\"id\":\"%s\"", name, s, id);
    }
    *out = json_pack("{s:s,s:o}", "id", id, "files", staged_files(dir));
    return 200;
}

int cl_piece_parse(const unsigned char *b, size_t len, cl_piece *pc)
{
    uint32_t jl;
    memset(pc, 0, sizeof *pc);
    if (len < 4 || (memcpy(&jl, b, 4), jl > 1024) || len - 4 < jl)
        return nl_fail(NL_EFORMAT, "not a snapshot piece");
    json_error_t je;
    json_t *m = json_loadb((const char *)b + 4, jl, 0, &je);
    const char *id = json_string_value(json_object_get(m, "id")), *file = json_string_value(json_object_get(m, "file"));
    json_t *jo = json_object_get(m, "offset"), *js = json_object_get(m, "size"), *jt = json_object_get(m, "total"),
           *jc = json_object_get(m, "crc");
    if (!id_ok(id) || !file || !name_ok(file) || !json_is_integer(jo) || !json_is_integer(js) || !json_is_integer(jt) ||
        !json_is_integer(jc) || json_integer_value(jo) < 0 || json_integer_value(js) < 1 ||
        json_integer_value(js) > CHUNK || json_integer_value(jt) < json_integer_value(jo) + json_integer_value(js)) {
        json_decref(m);
        return nl_fail(NL_EFORMAT, "a snapshot piece with bad fields");
    }
    snprintf(pc->id, sizeof pc->id, "%s", id);
    snprintf(pc->file, sizeof pc->file, "%s", file);
    pc->off = (uint64_t)json_integer_value(jo);
    pc->n = (size_t)json_integer_value(js);
    pc->crc = (uint32_t)json_integer_value(jc);
    pc->z = b + 4 + jl;
    pc->zlen = len - 4 - jl;
    json_decref(m);
    return 0;
}

int cl_piece_payload(const cl_piece *pc, unsigned char **raw)
{
    *raw = malloc(pc->n);
    size_t got = *raw ? ZSTD_decompress(*raw, pc->n, pc->z, pc->zlen) : 0;
    if (!*raw || ZSTD_isError(got) || got != pc->n || nl_crc32c(0, *raw, pc->n) != pc->crc) {
        free(*raw);
        *raw = NULL;
        return nl_fail(NL_ECORRUPT, "the piece fails its checksum or does not decompress");
    }
    return 0;
}

static int chunk(nl_cluster *cl, const char *name, uint32_t s, const unsigned char *b, size_t len, json_t **out)
{
    cl_piece pc;
    if (cl_piece_parse(b, len, &pc) != 0) {
        *out = cl_error("bad_request", "%s", nl_errdetail());
        return 400;
    }
    const char *file = pc.file;
    uint64_t off = pc.off;
    size_t n = pc.n;
    char dir[4400], have[32] = {0}, p[4800];
    staging_dir(cl, name, s, dir, sizeof dir);
    snprintf(p, sizeof p, "%s/%s", dir, file);
    int known = staging_id(dir, have, sizeof have) == 0 && !strcmp(have, pc.id);
    if (!known) {
        *out = json_pack("{s:{s:s,s:s},s:i}", "error", "code", "unknown_snapshot", "message",
                         "no transfer of that copy is under way here", "have", 0);
        return 409;
    }
    struct stat st;
    uint64_t cur = stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (cur != off) { /* resend or skip: say what is here */
        *out = json_pack("{s:I}", "have", (json_int_t)cur);
        return 409;
    }
    unsigned char *raw;
    if (cl_piece_payload(&pc, &raw) != 0) {
        *out = cl_error("bad_chunk", "the piece of %s at %llu fails its checksum (or does not decompress): send it "
                        "again", file, (unsigned long long)off);
        return 400;
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    ssize_t w = fd >= 0 ? pwrite(fd, raw, n, (off_t)off) : -1;
    if (fd >= 0)
        close(fd);
    free(raw);
    if (w != (ssize_t)n) {
        *out = cl_error("internal", "cannot write %s: %s", p, strerror(errno));
        return 500;
    }
    *out = json_pack("{s:I}", "have", (json_int_t)(off + n));
    return 200;
}

static int install(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const char *id, json_t *files,
                   json_t **out)
{
    char dir[4400], have[32] = {0};
    staging_dir(cl, name, s, dir, sizeof dir);
    if (staging_id(dir, have, sizeof have) != 0 || strcmp(have, id) || !json_is_object(files)) {
        *out = cl_error("unknown_snapshot", "no complete transfer of that copy is here");
        return 409;
    }
    const char *fname;
    json_t *v;
    json_object_foreach(files, fname, v)
    {
        char p[4800];
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", dir, fname);
        if (!name_ok(fname) || !json_is_integer(v) || stat(p, &st) != 0 || (json_int_t)st.st_size != json_integer_value(v)) {
            *out = cl_error("incomplete_snapshot", "file %s is missing or of the wrong size", fname);
            return 409;
        }
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) {
            if (fd >= 0)
                close(fd);
            *out = cl_error("internal", "cannot sync %s", p);
            return 500;
        }
        close(fd);
    }
    char p[4600], meta[4500];
    snprintf(p, sizeof p, "%s/.snapshot-id", dir);
    unlink(p);
    snprintf(meta, sizeof meta, "%s/meta", dir);
    /* The copy's names must be durable before it is moved into place: a failure here
     * leaves the old replica as it is (nothing installed yet). */
    int src = nl_fsync_dir(meta);
    if (!src)
        src = nl_fsync_dir(dir);
    if (src) {
        *out = cl_error("internal", "cannot sync the staged copy's directories: %s", nl_strerror(src));
        return 500;
    }
    nl_log_state before;
    nl_collection_shard_log_state(h, s, &before);
    int rc = nl_collection_shard_install(h, s, dir);
    if (!rc) /* the copy's fence may be lower than the one this replica promised: never go back */
        nl_collection_shard_fence(h, s, before.fence, NULL);
    if (rc) {
        *out = cl_error("install_failed", "%s", nl_errdetail());
        nl_remove_tree(dir);
        return 500;
    }
    nl_log_state ls;
    nl_collection_shard_log_state(h, s, &ls);
    cl_log(cl, 1, "\"event\":\"snapshot_installed_here\",\"collection\":\"%s\",\"shard\":%u,\"id\":\"%s\",\"last_seq\":%llu",
           name, s, id, (unsigned long long)ls.last_seq);
    *out = json_pack("{s:s,s:I,s:I}", "status", "ok", "last_seq", (json_int_t)ls.last_seq, "last_epoch",
                     (json_int_t)ls.last_epoch);
    return 200;
}

int nl_cluster_snapshot_call(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const char *op,
                             const void *body, size_t len, json_t **out)
{
    pthread_mutex_t *mu = cl_follow_lock(cl, name, s);
    int st;
    if (!strcmp(op, "snapshot-chunk")) {
        pthread_mutex_lock(mu);
        st = chunk(cl, name, s, body, len, out);
        pthread_mutex_unlock(mu);
        return st;
    }
    json_error_t je;
    json_t *j = body && len ? json_loadb(body, len, 0, &je) : NULL;
    const char *id = json_string_value(json_object_get(j, "id"));
    if (!id_ok(id)) {
        json_decref(j);
        *out = cl_error("bad_request", "the body must name a copy: {\"id\": \"...\"}");
        return 400;
    }
    pthread_mutex_lock(mu);
    st = !strcmp(op, "snapshot") ? begin(cl, name, s, id, out) : install(cl, h, name, s, id, json_object_get(j, "files"), out);
    pthread_mutex_unlock(mu);
    json_decref(j);
    return st;
}

void cl_snapshot_cleanup(nl_cluster *cl)
{
    char base[4200];
    snprintf(base, sizeof base, "%s/.repl", cl->db_dir);
    nl_remove_tree(base); /* copies of a previous run: their links are gone */
}
