/* cl_transfer.h — snapshot copies between nodes (transfer.c). Not installed. */
#ifndef NL_CL_TRANSFER_H
#define NL_CL_TRANSFER_H

#include "cluster_internal.h"
#include "cl_floor.h"

/* A snapshot piece as it travels (transfer.c): 4 bytes of header length, a JSON header
 * {id, file, offset, size, total, crc}, then the zstd-compressed bytes. Parsing checks the
 * header (NL_EFORMAT); the payload call decompresses and checks the CRC-32C of the raw
 * bytes (NL_ECORRUPT; *raw malloc'd on success). Pure: the fuzz target calls them. */
typedef struct {
    char id[24], file[112];
    uint64_t off;
    size_t n;
    uint32_t crc;
    const unsigned char *z;
    size_t zlen;
} cl_piece;
int cl_piece_parse(const unsigned char *b, size_t len, cl_piece *pc);
int cl_piece_payload(const cl_piece *pc, unsigned char **raw);
/* transfer.c: sends a snapshot of the link's shard to its follower and has it installed. */
int cl_snapshot_send(repl_link *l);
void cl_snapshot_link_done(repl_link *l);
/* Removes copies left by an earlier run (at start). */
void cl_snapshot_cleanup(nl_cluster *cl);
/* Snapshot transfer (transfer.c), all POST: op "snapshot" (what this node has received
 * of a copy), "snapshot-chunk" (one checksummed, compressed piece of a file) or
 * "snapshot-install" (install the copy received). */
int nl_cluster_snapshot_call(nl_cluster *cl, nl_collection *h, const char *name, uint32_t s, const char *op,
                             const void *body, size_t len, json_t **out);

#endif
