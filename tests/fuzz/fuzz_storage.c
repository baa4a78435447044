/* libFuzzer target for the bytes nearline reads back from disk or from a peer: the first
 * byte picks the reader.
 *   0: an op-log entry as a follower receives it (nl_shard_log_entry_check), as is;
 *   1: the same with a valid header and checksum computed over the input, so the fuzzer
 *      explores the body's counts, ids, vectors and metadata lengths, not only the CRC;
 *   2: a segment file (nl_segment_open on the bytes, then nl_segment_verify): header,
 *      section table, checksums, id map, graph and codes;
 *   3: a snapshot piece (cl_piece_parse, then cl_piece_payload: header fields,
 *      decompression, CRC).
 * Build: make fuzz (clang, -fsanitize=fuzzer,address,undefined); the ASan test build links
 * it with replay_main.c, which runs the seed corpus and seeded mutations of it. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cl_transfer.h"
#include "nl_crc32c.h"
#include "nl_segment.h"
#include "nl_shard.h"

#define FUZZ_DIM 4u
#define LOG_HDR 40u

static void log_entry(const uint8_t *data, size_t size, int fix)
{
    if (!fix) {
        int rc = nl_shard_log_entry_check(data, size, FUZZ_DIM);
        if (getenv("NL_FUZZ_VERBOSE"))
            fprintf(stderr, "log entry (as is): %d %s\n", rc, nl_errdetail());
        return;
    }
    /* header: magic, version 1, type (upsert or delete, from the input), epoch, time,
     * count (from the input, kept small), dimension, body length, CRC over both parts */
    uint8_t *e = malloc(LOG_HDR + size);
    if (!e)
        return;
    memset(e, 0, LOG_HDR);
    uint32_t magic = 0x474f4c4eu, count = size ? 1u + data[0] % 8u : 1u, dim = FUZZ_DIM, body = (uint32_t)size;
    memcpy(e, &magic, 4);
    e[4] = 1;
    e[5] = size > 1 && (data[1] & 1) ? 2 : 1;
    uint64_t epoch = 1, t = 1;
    memcpy(e + 8, &epoch, 8);
    memcpy(e + 16, &t, 8);
    memcpy(e + 24, &count, 4);
    memcpy(e + 28, &dim, 4);
    memcpy(e + 32, &body, 4);
    memcpy(e + LOG_HDR, data, size);
    uint32_t crc = nl_crc32c(nl_crc32c(0, e, 36), e + LOG_HDR, body);
    memcpy(e + 36, &crc, 4);
    int rc = nl_shard_log_entry_check(e, LOG_HDR + size, FUZZ_DIM);
    if (getenv("NL_FUZZ_VERBOSE")) /* to see which seeds get past the checks */
        fprintf(stderr, "log entry (header made): %d %s\n", rc, nl_errdetail());
    free(e);
}

static void segment(const uint8_t *data, size_t size)
{
    int fd = memfd_create("nl-fuzz-seg", MFD_CLOEXEC);
    if (fd < 0)
        return;
    if (write(fd, data, size) == (ssize_t)size) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        nl_segment_options so = {1u << 20, NL_IO_PREAD, 1};
        nl_segment *seg;
        int rc = nl_segment_open(path, &so, &seg);
        if (rc == 0) {
            nl_segment_verify_report r;
            rc = nl_segment_verify(seg, &r);
            nl_segment_close(seg);
        }
        if (getenv("NL_FUZZ_VERBOSE"))
            fprintf(stderr, "segment: %d %s\n", rc, nl_errdetail());
    }
    close(fd);
}

static void piece(const uint8_t *data, size_t size)
{
    cl_piece pc;
    unsigned char *raw;
    int rc = cl_piece_parse(data, size, &pc);
    if (rc == 0 && (rc = cl_piece_payload(&pc, &raw)) == 0)
        free(raw);
    if (getenv("NL_FUZZ_VERBOSE"))
        fprintf(stderr, "piece: %d %s\n", rc, nl_errdetail());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned which = data[0] % 4;
    data++, size--;
    switch (which) {
    case 0: log_entry(data, size, 0); break;
    case 1: log_entry(data, size, 1); break;
    case 2: segment(data, size); break;
    default: piece(data, size); break;
    }
    return 0;
}
