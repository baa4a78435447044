/*
 * io.c — io_uring reads with a pread fallback (see nl_io.h). Requests live in a fixed
 * slot table (depth entries); the SQE's user_data is the slot index, so a completion
 * finds its request without a search. A short read resubmits the remainder from the same
 * slot; -EAGAIN and -EINTR resubmit the whole remainder. In pread mode nl_io_read performs
 * the read at once and parks its completion until nl_io_reap.
 */
#define _GNU_SOURCE
#include "nl_io.h"
#include "nl_util.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    char *buf;
    uint32_t len, done;
    uint64_t off;
    uint64_t user;
    int busy;
} io_slot;

struct nl_io {
    nl_io_mode engine;
    unsigned depth;
    unsigned inflight;   /* slots busy */
    unsigned unsubmitted;
    struct io_uring ring;
    io_slot *slots;
    uint32_t *free_list;
    unsigned nfree;
    nl_io_done *parked;  /* pread mode: finished, not yet reaped */
    unsigned nparked;
    uint64_t spin_ns;    /* how long reap polls before sleeping */
};

const char *nl_io_mode_name(nl_io_mode m)
{
    switch (m) {
    case NL_IO_URING: return "io_uring";
    case NL_IO_PREAD: return "pread";
    default: return "auto";
    }
}

int nl_io_create(unsigned depth, nl_io_mode mode, nl_io **out)
{
    *out = NULL;
    if (depth == 0 || depth > 4096)
        return nl_fail(NL_EINVAL, "io: depth %u out of range 1..4096", depth);
    nl_io *io = calloc(1, sizeof *io);
    if (!io)
        return -ENOMEM;
    io->depth = depth;
    io->spin_ns = 100000; /* SPIN_NS below */
    io->slots = calloc(depth, sizeof *io->slots);
    io->free_list = malloc(sizeof(uint32_t) * depth);
    io->parked = malloc(sizeof(nl_io_done) * depth);
    if (!io->slots || !io->free_list || !io->parked) {
        nl_io_destroy(io);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < depth; i++)
        io->free_list[i] = depth - 1 - i;
    io->nfree = depth;
    io->engine = NL_IO_PREAD;
    if (mode != NL_IO_PREAD) {
        unsigned entries = 1;
        while (entries < depth) entries <<= 1;
        int rc = io_uring_queue_init(entries, &io->ring, 0);
        if (rc == 0) {
            io->engine = NL_IO_URING;
        } else if (mode == NL_IO_URING) {
            nl_io_destroy(io);
            return nl_fail(rc, "io_uring unavailable: %s", strerror(-rc));
        }
    }
    *out = io;
    return 0;
}

void nl_io_destroy(nl_io *io)
{
    if (!io)
        return;
    if (io->engine == NL_IO_URING) {
        /* Drain what the kernel still owns before the buffers' owner frees them. */
        while (io->inflight > 0) {
            struct io_uring_cqe *cqe;
            if (io->unsubmitted) {
                io_uring_submit(&io->ring);
                io->unsubmitted = 0;
            }
            int wr = io_uring_wait_cqe(&io->ring, &cqe);
            if (wr == -EINTR || wr == -EAGAIN)
                continue; /* a stop and continue of the process (SIGSTOP) interrupts the wait */
            if (wr != 0)
                break;
            io_uring_cqe_seen(&io->ring, cqe);
            io->inflight--;
        }
        io_uring_queue_exit(&io->ring);
    }
    free(io->slots);
    free(io->free_list);
    free(io->parked);
    free(io);
}

nl_io_mode nl_io_engine(const nl_io *io) { return io->engine; }
unsigned nl_io_inflight(const nl_io *io) { return io->inflight + io->nparked; }

static int pread_full(int fd, char *buf, uint32_t len, uint64_t off)
{
    int rc = nl_pread_full(fd, buf, len, off);
    /* Past the end: the file is shorter than its header says. */
    return rc == 0 ? (int)len : rc == NL_ETRUNCATED ? -EIO : rc;
}

static int queue_sqe(nl_io *io, uint32_t s)
{
    io_slot *sl = &io->slots[s];
    struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
    if (!sqe) {
        io_uring_submit(&io->ring);
        io->unsubmitted = 0;
        sqe = io_uring_get_sqe(&io->ring);
        if (!sqe)
            return -EBUSY;
    }
    io_uring_prep_read(sqe, sl->fd, sl->buf + sl->done, sl->len - sl->done, sl->off + sl->done);
    io_uring_sqe_set_data64(sqe, s);
    io->unsubmitted++;
    return 0;
}

int nl_io_read(nl_io *io, int fd, void *buf, uint32_t len, uint64_t off, uint64_t user)
{
    if (io->engine == NL_IO_PREAD) {
        if (io->nparked >= io->depth)
            return -EBUSY;
        io->parked[io->nparked++] = (nl_io_done){user, pread_full(fd, buf, len, off)};
        return 0;
    }
    if (io->nfree == 0)
        return -EBUSY;
    uint32_t s = io->free_list[--io->nfree];
    io->slots[s] = (io_slot){fd, buf, len, 0, off, user, 1};
    int rc = queue_sqe(io, s);
    if (rc) {
        io->slots[s].busy = 0;
        io->free_list[io->nfree++] = s;
        return rc;
    }
    io->inflight++;
    return 0;
}

/* Spin this long on the completion ring before sleeping in the kernel: on a VM a sleep
 * and its wake-up cost more than a typical 4 KiB read takes, and the thread has nothing
 * else to do while its queries wait. */
#define SPIN_NS 100000ull

void nl_io_set_spin(nl_io *io, uint64_t ns) { io->spin_ns = ns; }

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int nl_io_reap(nl_io *io, unsigned min_done, nl_io_done *out, unsigned max)
{
    if (io->engine == NL_IO_PREAD) {
        unsigned n = io->nparked < max ? io->nparked : max;
        memcpy(out, io->parked, sizeof(nl_io_done) * n);
        memmove(io->parked, io->parked + n, sizeof(nl_io_done) * (io->nparked - n));
        io->nparked -= n;
        return (int)n;
    }
    unsigned got = 0;
    if (min_done > io->inflight)
        min_done = io->inflight;
    uint64_t spin_until = 0;
    unsigned spins = 0;
    for (;;) {
        struct io_uring_cqe *cqe = NULL;
        int rc = io_uring_peek_cqe(&io->ring, &cqe);
        if (rc == -EAGAIN) {
            if (got >= min_done && !io->unsubmitted)
                break;
            if (io->unsubmitted) {
                /* Hand new reads to the device first: one syscall, one doorbell. */
                rc = io_uring_submit(&io->ring);
                if (rc < 0 && rc != -EAGAIN && rc != -EINTR)
                    return rc;
                if (rc >= 0)
                    io->unsubmitted = 0;
                continue;
            }
            /* Read the clock only every 64 spins: it is not free either. */
            if ((++spins & 63) != 0) {
                __builtin_ia32_pause();
                continue;
            }
            uint64_t t = now_ns();
            if (!spin_until)
                spin_until = t + io->spin_ns;
            if (t < spin_until)
                continue;
            rc = io_uring_wait_cqe(&io->ring, &cqe);
            if (rc == -EINTR || rc == -EAGAIN)
                continue;
        }
        if (rc < 0)
            return rc;
        uint32_t s = (uint32_t)io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&io->ring, cqe);
        if (s >= io->depth || !io->slots[s].busy)
            return -EIO; /* a completion we never asked for: the ring is confused */
        io_slot *sl = &io->slots[s];
        if (res == -EAGAIN || res == -EINTR || (res > 0 && sl->done + (uint32_t)res < sl->len)) {
            if (res > 0)
                sl->done += (uint32_t)res;
            if ((rc = queue_sqe(io, s)) != 0)
                return rc;
            continue;
        }
        int final = res < 0 ? res : res == 0 ? -EIO : (int)sl->len;
        out[got++] = (nl_io_done){sl->user, final};
        sl->busy = 0;
        io->free_list[io->nfree++] = s;
        io->inflight--;
        if (got == max || io->inflight == 0)
            break;
    }
    return (int)got;
}
