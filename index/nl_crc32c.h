/*
 * nl_crc32c.h — CRC-32C (Castagnoli), the checksum of every segment section and node
 * sector. Uses the SSE4.2 crc32 instruction when the CPU has it (checked at run time),
 * a table otherwise; both give the same value.
 */
#ifndef NL_CRC32C_H
#define NL_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (start with 0) over len bytes. */
uint32_t nl_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
