/*
 * cli_filter.c — reading filters for the commands: one from --filter, or one per query
 * from --filters FILE.jsonl (line i is query i's). A bad filter is reported with its
 * line and the parser's located message, and the command exits 2.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cli_free_filters(nl_filter **f, size_t n)
{
    for (size_t i = 0; f && i < n; i++)
        nl_filter_destroy(f[i]);
    free(f);
}

int cli_parse_filter(const char *cmd, const char *text, nl_filter **out)
{
    int rc = nl_filter_parse(text, strlen(text), out);
    if (rc) {
        cli_error(cmd, 0, "--filter: %s", rc == NL_EFILTER ? nl_errdetail() : nl_strerror(rc));
        return 2;
    }
    return 0;
}

int cli_load_filters(const char *cmd, const char *path, nl_filter ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    FILE *f = fopen(path, "r");
    if (!f) {
        cli_error(cmd, -errno, "--filters %s", path);
        return 2;
    }
    nl_filter **v = NULL;
    size_t cnt = 0, cap = 0, lcap = 0;
    char *line = NULL;
    ssize_t len;
    int status = 0;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 256;
            nl_filter **nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                cli_error(cmd, -ENOMEM, "--filters");
                status = 2;
                break;
            }
            v = nv;
        }
        int rc = nl_filter_parse(line, (size_t)len, &v[cnt]);
        if (rc) {
            cli_error(cmd, 0, "--filters %s line %zu: %s", path, cnt + 1,
                      rc == NL_EFILTER ? nl_errdetail() : nl_strerror(rc));
            status = 2;
            break;
        }
        cnt++;
    }
    free(line);
    fclose(f);
    if (status) {
        cli_free_filters(v, cnt);
        return status;
    }
    *out = v;
    *n = cnt;
    return 0;
}
