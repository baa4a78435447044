/*
 * nlpowerfs.c — a FUSE file system for power-cut tests: a passthrough over a backing
 * directory that remembers what has not been made durable, and forgets it on request.
 *
 * Model (POSIX's, stricter than ext4's): a file's data is durable once the file is
 * fsynced (fsync or fdatasync); a name (create, unlink, rename, mkdir, rmdir) once its
 * directory is fsynced. Writing "cut" to the control file /.powercut (at the mount's
 * root) undoes everything that is not durable, as if the machine had lost power:
 *   - every file modified since its last fsync gets back the bytes it overwrote below its
 *     durable size, then is truncated to that size (appends vanish);
 *   - every name operation since its directory's last fsync is undone, newest first: a
 *     created name is removed, an unlinked file comes back (unlink moves it to a hidden
 *     trash until the directory is fsynced), a rename is reversed.
 * A test kills the writer first (so nothing writes during the cut), cuts, then reopens the
 * database on the mount and checks every acknowledged write.
 *
 * Single-threaded (-s): the state needs no locks and a cut sees no write in progress.
 * Data undo is by the backing file's descriptor, so renames do not lose track of it.
 * Usage: nlpowerfs BACKING_DIR MOUNTPOINT [fuse options]; fusermount3 -u to unmount.
 * A test tool, not part of the product.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static char backing[2048];
static char trashdir[2100];
static unsigned long trash_seq;

/* A file modified since its last fsync. */
typedef struct ovw {
    off_t off;
    size_t len;
    char *old;
} ovw;
typedef struct fent {
    ino_t ino;
    int fd; /* the backing file, kept open for the undo */
    off_t synced;
    ovw *ov;
    size_t nov, cap;
    struct fent *next;
} fent;
static fent *files;

enum { OP_CREATE, OP_UNLINK, OP_RENAME, OP_MKDIR, OP_RMDIR };
typedef struct nop {
    int kind;
    char a[PATH_MAX], b[PATH_MAX], trash[PATH_MAX]; /* backing paths; trash "" when none */
    struct nop *prev;
} nop;
static nop *ops; /* newest first */
static unsigned long undone_files, undone_bytes, undone_names;

static void real(const char *path, char *out)
{
    snprintf(out, PATH_MAX, "%s%s", backing, path);
}

static void parent_of(const char *p, char *out)
{
    snprintf(out, PATH_MAX, "%s", p);
    char *s = strrchr(out, '/');
    if (s && s != out)
        *s = '\0';
    else if (s)
        s[1] = '\0';
}

static fent *tracked(ino_t ino)
{
    for (fent *f = files; f; f = f->next)
        if (f->ino == ino)
            return f;
    return NULL;
}

/* Starts tracking the file behind fd before its first change since the last fsync. */
static fent *track(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return NULL;
    fent *f = tracked(st.st_ino);
    if (f)
        return f;
    f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->ino = st.st_ino;
    f->fd = dup(fd);
    f->synced = st.st_size;
    f->next = files;
    files = f;
    return f;
}

static void untrack(ino_t ino)
{
    for (fent **pp = &files; *pp; pp = &(*pp)->next)
        if ((*pp)->ino == ino) {
            fent *f = *pp;
            *pp = f->next;
            for (size_t i = 0; i < f->nov; i++)
                free(f->ov[i].old);
            free(f->ov);
            close(f->fd);
            free(f);
            return;
        }
}

/* Saves the bytes of [off, off+len) below the durable size before they are overwritten. */
static int save_old(fent *f, off_t off, size_t len)
{
    if (off >= f->synced)
        return 0;
    size_t n = (size_t)(f->synced - off) < len ? (size_t)(f->synced - off) : len;
    char *old = malloc(n ? n : 1);
    if (!old)
        return -ENOMEM;
    ssize_t got = pread(f->fd, old, n, off);
    if (got < 0) {
        free(old);
        return -errno;
    }
    if (f->nov == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 8;
        ovw *nv = realloc(f->ov, nc * sizeof *nv);
        if (!nv) {
            free(old);
            return -ENOMEM;
        }
        f->ov = nv;
        f->cap = nc;
    }
    f->ov[f->nov++] = (ovw){off, (size_t)got, old};
    return 0;
}

static int add_op(int kind, const char *a, const char *b, const char *trash)
{
    nop *o = calloc(1, sizeof *o);
    if (!o)
        return -ENOMEM;
    o->kind = kind;
    snprintf(o->a, sizeof o->a, "%s", a);
    snprintf(o->b, sizeof o->b, "%s", b ? b : "");
    snprintf(o->trash, sizeof o->trash, "%s", trash ? trash : "");
    o->prev = ops;
    ops = o;
    return 0;
}

static void trash_name(char *out)
{
    snprintf(out, PATH_MAX, "%s/%lu", trashdir, ++trash_seq);
}

static int remove_tree(const char *p)
{
    struct stat st;
    if (lstat(p, &st) != 0)
        return 0;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(p);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char c[PATH_MAX];
            snprintf(c, sizeof c, "%s/%s", p, e->d_name);
            remove_tree(c);
        }
        if (d)
            closedir(d);
        return rmdir(p);
    }
    return unlink(p);
}

/* fsync of directory dir (a backing path): its name operations become durable. */
static void commit_dir(const char *dir)
{
    for (nop **pp = &ops; *pp;) {
        nop *o = *pp;
        char pa[PATH_MAX];
        parent_of(o->kind == OP_RENAME ? o->b : o->a, pa);
        if (strcmp(pa, dir) == 0) {
            if (o->trash[0])
                remove_tree(o->trash);
            *pp = o->prev;
            free(o);
        } else {
            pp = &o->prev;
        }
    }
}

static void power_cut(void)
{
    while (files) {
        fent *f = files;
        for (size_t i = f->nov; i-- > 0;) {
            if (pwrite(f->fd, f->ov[i].old, f->ov[i].len, f->ov[i].off) < 0) { /* best effort */ }
            undone_bytes += f->ov[i].len;
        }
        struct stat st;
        if (fstat(f->fd, &st) == 0 && st.st_size > f->synced)
            undone_bytes += (unsigned long)(st.st_size - f->synced);
        if (ftruncate(f->fd, f->synced) != 0) { /* best effort */ }
        undone_files++;
        untrack(f->ino);
    }
    while (ops) {
        nop *o = ops;
        switch (o->kind) {
        case OP_CREATE: unlink(o->a); break;
        case OP_MKDIR: remove_tree(o->a); break;
        case OP_RMDIR: mkdir(o->a, 0755); break;
        case OP_UNLINK: rename(o->trash, o->a); break;
        case OP_RENAME:
            rename(o->b, o->a);
            if (o->trash[0])
                rename(o->trash, o->b);
            break;
        }
        undone_names++;
        if (getenv("NLPOWERFS_VERBOSE"))
            fprintf(stderr, "nlpowerfs: undo %s %s%s%s\n",
                    (const char *[]){"create", "unlink", "rename", "mkdir", "rmdir"}[o->kind], o->a,
                    o->b[0] ? " -> " : "", o->b);
        ops = o->prev;
        free(o);
    }
    fprintf(stderr, "nlpowerfs: power cut: %lu files, %lu bytes, %lu names undone so far\n", undone_files,
            undone_bytes, undone_names);
}

/* ---------------------------------------------------------------- operations */

#define CTL "/.powercut"

static int pf_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    if (!strcmp(path, CTL)) {
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFREG | 0600;
        st->st_nlink = 1;
        return 0;
    }
    if (fi)
        return fstat((int)fi->fh, st) == 0 ? 0 : -errno;
    char p[PATH_MAX];
    real(path, p);
    return lstat(p, st) == 0 ? 0 : -errno;
}

static int pf_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags fl)
{
    (void)off, (void)fi, (void)fl;
    char p[PATH_MAX];
    real(path, p);
    DIR *d = opendir(p);
    if (!d)
        return -errno;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(path, "/") && !strcmp(e->d_name, ".powerfs-trash"))
            continue;
        fill(buf, e->d_name, NULL, 0, 0);
    }
    closedir(d);
    return 0;
}

static int pf_open(const char *path, struct fuse_file_info *fi)
{
    if (!strcmp(path, CTL)) {
        fi->fh = (uint64_t)-1;
        fi->direct_io = 1;
        return 0;
    }
    char p[PATH_MAX];
    real(path, p);
    int flags = fi->flags & ~(O_DIRECT | O_APPEND | O_TRUNC);
    int fd = open(p, flags);
    if (fd < 0)
        return -errno;
    if ((fi->flags & O_TRUNC) && (fi->flags & O_ACCMODE) != O_RDONLY) {
        /* truncated here, after its durable bytes are saved */
        fent *f = track(fd);
        struct stat st;
        int rc = !f ? -ENOMEM : fstat(fd, &st) != 0 ? -errno : save_old(f, 0, (size_t)st.st_size);
        if (!rc && ftruncate(fd, 0) != 0)
            rc = -errno;
        if (rc) {
            close(fd);
            return rc;
        }
    }
    fi->fh = (uint64_t)fd;
    return 0;
}

static int pf_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    char p[PATH_MAX];
    real(path, p);
    struct stat st;
    int existed = lstat(p, &st) == 0;
    int fd = open(p, (fi->flags & ~(O_DIRECT | O_APPEND)) | O_CREAT, mode);
    if (fd < 0)
        return -errno;
    fi->fh = (uint64_t)fd;
    if (!existed) {
        add_op(OP_CREATE, p, NULL, NULL);
        fent *f = track(fd);
        if (f)
            f->synced = 0;
    }
    return 0;
}

static int pf_read(const char *path, char *buf, size_t len, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    if (fi->fh == (uint64_t)-1)
        return 0;
    ssize_t n = pread((int)fi->fh, buf, len, off);
    return n < 0 ? -errno : (int)n;
}

static int pf_write(const char *path, const char *buf, size_t len, off_t off, struct fuse_file_info *fi)
{
    (void)path;
    if (fi->fh == (uint64_t)-1) {
        if (len >= 3 && !memcmp(buf, "cut", 3))
            power_cut();
        return (int)len;
    }
    int fd = (int)fi->fh;
    fent *f = track(fd);
    if (!f)
        return -ENOMEM;
    int rc = save_old(f, off, len);
    if (rc)
        return rc;
    ssize_t n = pwrite(fd, buf, len, off);
    return n < 0 ? -errno : (int)n;
}

static int pf_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)path, (void)datasync;
    if (fi->fh == (uint64_t)-1)
        return 0;
    struct stat st;
    if (fdatasync((int)fi->fh) != 0)
        return -errno;
    if (fstat((int)fi->fh, &st) == 0)
        untrack(st.st_ino);
    return 0;
}

static int pf_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
    (void)datasync, (void)fi;
    char p[PATH_MAX];
    real(path, p);
    size_t n = strlen(p);
    if (n > 1 && p[n - 1] == '/')
        p[n - 1] = '\0';
    commit_dir(p);
    return 0;
}

static int pf_release(const char *path, struct fuse_file_info *fi)
{
    (void)path;
    if (fi->fh != (uint64_t)-1)
        close((int)fi->fh);
    return 0;
}

static int pf_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    if (!strcmp(path, CTL))
        return 0;
    char p[PATH_MAX];
    real(path, p);
    int fd = fi ? (int)fi->fh : open(p, O_RDWR);
    if (fd < 0)
        return -errno;
    fent *f = track(fd);
    struct stat st;
    int rc = 0;
    if (f && fstat(fd, &st) == 0 && size < st.st_size)
        rc = save_old(f, size, (size_t)(st.st_size - size));
    if (!rc && ftruncate(fd, size) != 0)
        rc = -errno;
    if (!fi)
        close(fd);
    return rc;
}

static int pf_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi)
{
    (void)path;
    int fd = (int)fi->fh;
    if (!(mode & FALLOC_FL_KEEP_SIZE) && !track(fd))
        return -ENOMEM;
    return fallocate(fd, mode, off, len) == 0 ? 0 : -errno;
}

static int pf_unlink(const char *path)
{
    char p[PATH_MAX], t[PATH_MAX];
    real(path, p);
    trash_name(t);
    if (rename(p, t) != 0)
        return -errno;
    return add_op(OP_UNLINK, p, NULL, t);
}

static int pf_rename(const char *from, const char *to, unsigned int flags)
{
    char a[PATH_MAX], b[PATH_MAX], t[PATH_MAX] = "";
    real(from, a);
    real(to, b);
    struct stat st;
    if (flags & RENAME_EXCHANGE)
        return -EINVAL;
    if (lstat(b, &st) == 0) {
        if (flags & RENAME_NOREPLACE)
            return -EEXIST;
        if (S_ISDIR(st.st_mode))
            return -EISDIR;
        trash_name(t);
        if (rename(b, t) != 0)
            return -errno;
    }
    if (rename(a, b) != 0) {
        int e = errno;
        if (t[0])
            rename(t, b);
        return -e;
    }
    /* A directory moved: pending operations inside it now live under its new name. */
    size_t al = strlen(a);
    for (nop *o = ops; o; o = o->prev)
        for (char *f = o->a; f; f = f == o->a ? o->b : NULL)
            if (!strncmp(f, a, al) && f[al] == '/') {
                char moved[PATH_MAX];
                snprintf(moved, sizeof moved, "%s%s", b, f + al);
                snprintf(f, PATH_MAX, "%s", moved);
            }
    return add_op(OP_RENAME, a, b, t[0] ? t : NULL);
}

static int pf_mkdir(const char *path, mode_t mode)
{
    char p[PATH_MAX];
    real(path, p);
    if (mkdir(p, mode) != 0)
        return -errno;
    return add_op(OP_MKDIR, p, NULL, NULL);
}

static int pf_rmdir(const char *path)
{
    char p[PATH_MAX];
    real(path, p);
    if (rmdir(p) != 0)
        return -errno;
    return add_op(OP_RMDIR, p, NULL, NULL);
}

static int pf_statfs(const char *path, struct statvfs *st)
{
    (void)path;
    return statvfs(backing, st) == 0 ? 0 : -errno;
}

static int pf_access(const char *path, int mask)
{
    if (!strcmp(path, CTL))
        return 0;
    char p[PATH_MAX];
    real(path, p);
    return access(p, mask) == 0 ? 0 : -errno;
}

static int pf_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)fi;
    char p[PATH_MAX];
    real(path, p);
    return chmod(p, mode) == 0 ? 0 : -errno;
}

static int pf_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    (void)fi;
    char p[PATH_MAX];
    real(path, p);
    return utimensat(AT_FDCWD, p, tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

static int pf_link(const char *from, const char *to)
{
    char a[PATH_MAX], b[PATH_MAX];
    real(from, a);
    real(to, b);
    if (link(a, b) != 0)
        return -errno;
    return add_op(OP_CREATE, b, NULL, NULL);
}

static void *pf_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    cfg->use_ino = 1;
    cfg->attr_timeout = 0; /* sizes change underneath at a cut: never cache them */
    cfg->entry_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->direct_io = 1; /* no page cache above us: after a cut, reads see the backing files */
    return NULL;
}

static const struct fuse_operations pf_ops = {
    .init = pf_init, .getattr = pf_getattr, .readdir = pf_readdir, .open = pf_open, .create = pf_create,
    .read = pf_read, .write = pf_write, .fsync = pf_fsync, .fsyncdir = pf_fsyncdir, .release = pf_release,
    .truncate = pf_truncate, .fallocate = pf_fallocate, .unlink = pf_unlink, .rename = pf_rename,
    .mkdir = pf_mkdir, .rmdir = pf_rmdir, .statfs = pf_statfs, .access = pf_access, .chmod = pf_chmod,
    .utimens = pf_utimens, .link = pf_link,
};

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: nlpowerfs BACKING_DIR MOUNTPOINT [fuse options]\n");
        return 2;
    }
    char full[PATH_MAX];
    if (!realpath(argv[1], full) || strlen(full) >= sizeof backing) {
        fprintf(stderr, "nlpowerfs: %s: not a directory, or its path is too long\n", argv[1]);
        return 2;
    }
    snprintf(backing, sizeof backing, "%s", full);
    snprintf(trashdir, sizeof trashdir, "%s/.powerfs-trash", backing);
    remove_tree(trashdir);
    if (mkdir(trashdir, 0700) != 0) {
        perror(trashdir);
        return 2;
    }
    /* fuse_main(argv: prog MOUNTPOINT -s -f [options]) */
    char *fargv[32];
    int fargc = 0;
    fargv[fargc++] = argv[0];
    fargv[fargc++] = argv[2];
    fargv[fargc++] = "-s";
    fargv[fargc++] = "-f";
    for (int i = 3; i < argc && fargc < 31; i++)
        fargv[fargc++] = argv[i];
    fargv[fargc] = NULL;
    return fuse_main(fargc, fargv, &pf_ops, NULL);
}
