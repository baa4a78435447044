/*
 * cli.h — helpers shared by the `nearline` subcommands: strict number parsing that names
 * the offending flag, sizes with K/M/G suffixes, and one-line error reporting. Tools
 * print; the libraries they call do not.
 */
#ifndef NL_CLI_H
#define NL_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "nl_common.h"
#include "nl_filter.h"

/* Prints "nearline CMD: message" (and the library detail, if any) to stderr. */
void cli_error(const char *cmd, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

int cli_u32(const char *cmd, const char *flag, const char *s, uint32_t lo, uint32_t hi, uint32_t *out);
int cli_u64(const char *cmd, const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out);
int cli_float(const char *cmd, const char *flag, const char *s, float lo, float hi, float *out);
/* "512M", "2G", "4096" (bytes). */
int cli_size(const char *cmd, const char *flag, const char *s, uint64_t *out);
/* A comma-separated list of u32 appended to list (up to cap). */
int cli_u32_list(const char *cmd, const char *flag, const char *s, uint32_t lo, uint32_t hi,
                 uint32_t *list, uint32_t *count, uint32_t cap);

/* Filters for --filter TEXT and --filters FILE.jsonl (cli_filter.c); 0 or 2 (reported). */
int cli_parse_filter(const char *cmd, const char *text, nl_filter **out);
int cli_load_filters(const char *cmd, const char *path, nl_filter ***out, size_t *n);
void cli_free_filters(nl_filter **f, size_t n);

int cmd_gen(int argc, char **argv);
int cmd_codes(int argc, char **argv);
int cmd_membench(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_search(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_compact(int argc, char **argv);
int cmd_groundtruth(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_cluster(int argc, char **argv);

#endif
