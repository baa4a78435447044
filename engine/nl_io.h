/*
 * nl_io.h — the one module through which nearline reads segment data: io_uring when the
 * kernel allows it, pread otherwise, with the same interface so callers never care.
 *
 * An nl_io is a private ring for one thread: queue reads with nl_io_read (at most
 * `depth` in flight), then nl_io_reap submits them and collects completions. Short reads
 * are requeued for the remainder and -EAGAIN/-EINTR are retried inside the module, so a
 * completion is either the whole request or a final error. Buffers for O_DIRECT files
 * must be aligned to 4096 bytes, as must offsets and lengths.
 *
 * Lifecycle: nl_io_create -> (nl_io_read ... nl_io_reap)* -> nl_io_destroy. Not
 * thread-safe: one per thread.
 */
#ifndef NL_IO_H
#define NL_IO_H

#include <stdint.h>

#include "nl_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NL_IO_AUTO = 0, NL_IO_URING = 1, NL_IO_PREAD = 2 } nl_io_mode;

typedef struct nl_io nl_io;

typedef struct {
    uint64_t user; /* as given to nl_io_read */
    int res;       /* bytes read (the full length) or a negative errno */
} nl_io_done;

/* mode AUTO tries io_uring and falls back to pread; URING fails if it is unavailable.
 * *out is owned by the caller. */
int nl_io_create(unsigned depth, nl_io_mode mode, nl_io **out);
/* How long nl_io_reap polls the completion ring before sleeping in the kernel (default
 * 100 us: the latency of a read on fast NVMe). Threads that outnumber the CPUs (a server's
 * pool) should barely poll, or they steal the CPU from the threads with work. */
void nl_io_set_spin(nl_io *io, uint64_t ns);
void nl_io_destroy(nl_io *io);

/* NL_IO_URING or NL_IO_PREAD: what this instance actually uses. */
nl_io_mode nl_io_engine(const nl_io *io);
const char *nl_io_mode_name(nl_io_mode m);
unsigned nl_io_inflight(const nl_io *io);

/* Queues one read; -EBUSY when `depth` requests are already in flight. */
int nl_io_read(nl_io *io, int fd, void *buf, uint32_t len, uint64_t off, uint64_t user);

/* Submits queued reads and waits until at least min_done completions are available (or
 * none are in flight); writes up to max of them to out. Returns the count or a negative
 * errno for a failure of the ring itself. */
int nl_io_reap(nl_io *io, unsigned min_done, nl_io_done *out, unsigned max);

#ifdef __cplusplus
}
#endif
#endif
