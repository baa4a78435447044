/*
 * nl_zk.h — calls to ZooKeeper that end: the C client's synchronous calls, rebuilt on its
 * asynchronous ones with a deadline.
 *
 * Why: a synchronous call of libzookeeper-mt made in the moment its session expires can
 * wait for ever. The call checks the handle's state, and the client's I/O thread fails
 * every pending request when it sees the expiry; a request registered between the two is
 * never answered and never failed until zookeeper_close. A node calls ZooKeeper under a
 * read lock of its handle and replaces an expired handle under the write lock, so one such
 * call held the lock, the new session was never opened and the node stayed out of the
 * cluster (it looked registered to itself and was gone to the others).
 *
 * Each call here returns what the synchronous call would (ZOK, ZNONODE, ...), or
 * ZOPERATIONTIMEOUT when no answer came within timeout_ms: the outcome of a write is then
 * unknown, as after ZCONNECTIONLOSS. The answer of a call given up on still arrives (or the
 * handle's close fails it): the call's state is reference-counted between the caller and
 * the completion, so neither outlives the other's use of it. Outputs are written only on
 * an answer within the deadline. Caller-owned pointers are never kept past the return.
 */
#ifndef NL_ZK_H
#define NL_ZK_H

#include <stdint.h>

#include <zookeeper/zookeeper.h>

#ifdef __cplusplus
extern "C" {
#endif

/* zoo_get: up to *len bytes of the value into buf; *len is set to the bytes copied (-1 for
 * a null value); st (may be NULL) gets the stat, whose dataLength is the full length. */
int nl_zk_get(zhandle_t *zh, uint32_t timeout_ms, const char *path, int watch, char *buf, int *len,
              struct Stat *st);

/* zoo_exists: ZOK or ZNONODE (a watch is left either way when watch is set). */
int nl_zk_exists(zhandle_t *zh, uint32_t timeout_ms, const char *path, int watch, struct Stat *st);

/* zoo_get_children: on ZOK *out holds a copy the caller frees with deallocate_String_vector. */
int nl_zk_children(zhandle_t *zh, uint32_t timeout_ms, const char *path, int watch, struct String_vector *out);

/* zoo_create with the open ACL: len -1 for a null value; made (may be NULL) gets the path
 * created (the sequence number included), cut to made_len - 1 bytes. */
int nl_zk_create(zhandle_t *zh, uint32_t timeout_ms, const char *path, const char *value, int len, int flags,
                 char *made, int made_len);

/* zoo_set: st (may be NULL) gets the new stat. */
int nl_zk_set(zhandle_t *zh, uint32_t timeout_ms, const char *path, const char *value, int len, int version,
              struct Stat *st);

/* zoo_delete. */
int nl_zk_delete(zhandle_t *zh, uint32_t timeout_ms, const char *path, int version);

/* zoo_multi: the ops' output pointers (a set's stat, a create's buffer) and results[0..n)
 * are filled only on an answer within the deadline. */
int nl_zk_multi(zhandle_t *zh, uint32_t timeout_ms, int n, const zoo_op_t *ops, zoo_op_result_t *results);

#ifdef __cplusplus
}
#endif
#endif
