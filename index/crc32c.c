/*
 * crc32c.c — CRC-32C, reflected polynomial 0x82F63B78. The hardware path handles 8 bytes
 * per instruction; the table path is the portable reference it is tested against.
 */
#include "nl_crc32c.h"

#include <string.h>

static uint32_t table[256];
static int have_table;
static int hw = -1;

static void make_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        table[i] = c;
    }
    have_table = 1;
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len)
{
    if (!have_table)
        make_table(); /* idempotent; a race writes the same values */
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xffu] ^ (crc >> 8);
    return ~crc;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = ~crc & 0xffffffffu;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

uint32_t nl_crc32c(uint32_t crc, const void *buf, size_t len)
{
    if (hw < 0) {
        __builtin_cpu_init();
        hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    return hw ? crc_hw(crc, buf, len) : crc_sw(crc, buf, len);
}

/* For tests: the portable path regardless of the CPU. */
uint32_t nl_crc32c_portable(uint32_t crc, const void *buf, size_t len);
uint32_t nl_crc32c_portable(uint32_t crc, const void *buf, size_t len) { return crc_sw(crc, buf, len); }
