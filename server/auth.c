/*
 * auth.c — API keys: the key file ("KEY ROLE" lines, roles read < write < admin) and the
 * check every endpoint but the health checks makes (Authorization: Bearer KEY).
 *
 * Invariants: a key is compared in time that does not depend on where it differs; keys
 * are wiped from memory when the server is freed; with no key file every request is
 * allowed (the server then listens on loopback by default).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "server_internal.h"

static int key_role(const nl_server *s, const char *key, size_t len)
{
    int role = ROLE_NONE;
    for (size_t i = 0; i < s->nkeys; i++) {
        if (s->keys[i].len != len)
            continue;
        unsigned char diff = 0; /* constant time over the key's bytes */
        for (size_t b = 0; b < len; b++)
            diff |= (unsigned char)(s->keys[i].key[b] ^ key[b]);
        if (!diff)
            role = s->keys[i].role;
    }
    return role;
}

/* 0 when allowed; otherwise the response is queued. */
int nl_srv_check_auth(nl_server *s, struct MHD_Connection *c, req *r, int need, enum MHD_Result *res)
{
    if (!s->nkeys || need == ROLE_NONE)
        return 0;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7) != 0 || !h[7]) {
        *res = nl_srv_send_error(c, r, 401, "unauthorized", "this endpoint needs an API key: Authorization: Bearer KEY");
        return -1;
    }
    int role = key_role(s, h + 7, strlen(h + 7));
    if (role == ROLE_NONE) {
        *res = nl_srv_send_error(c, r, 401, "unauthorized", "unknown API key");
        return -1;
    }
    if (role < need) {
        static const char *rn[] = {"none", "read", "write", "admin"};
        *res = nl_srv_send_error(c, r, 403, "forbidden", "this request needs the %s role; the key has %s", rn[need], rn[role]);
        return -1;
    }
    return 0;
}

/* The key file: "KEY ROLE" lines; blank lines and # comments skipped. */
int nl_srv_load_keys(nl_server *s, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return nl_fail(-errno, "api keys %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    int rc = 0;
    while (!rc && getline(&line, &cap, f) >= 0) {
        lineno++;
        char key[512], role[32], extra[8];
        char *h = line + strspn(line, " \t");
        if (*h == '#' || *h == '\n' || *h == 0)
            continue;
        int got = sscanf(h, "%511s %31s %7s", key, role, extra);
        int rv = got == 2 ? (!strcmp(role, "read") ? ROLE_READ : !strcmp(role, "write") ? ROLE_WRITE
                                                              : !strcmp(role, "admin") ? ROLE_ADMIN : 0)
                          : 0;
        if (!rv || strlen(key) < 8) {
            rc = nl_fail(NL_EINVAL, "api keys %s line %zu: expected \"KEY ROLE\" (a key of 8+ characters, role "
                         "read, write or admin)", path, lineno);
            break;
        }
        api_key *nk = realloc(s->keys, (s->nkeys + 1) * sizeof *nk);
        if (!nk || !(nk[s->nkeys].key = strdup(key))) {
            if (nk) s->keys = nk;
            rc = -ENOMEM;
            break;
        }
        s->keys = nk;
        s->keys[s->nkeys].len = strlen(key);
        s->keys[s->nkeys].role = rv;
        s->nkeys++;
    }
    free(line);
    fclose(f);
    if (!rc && s->nkeys == 0)
        rc = nl_fail(NL_EINVAL, "api keys %s holds no key", path);
    return rc;
}

void nl_srv_keys_free(nl_server *s)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        memset(s->keys[i].key, 0, s->keys[i].len);
        free(s->keys[i].key);
    }
    free(s->keys);
    s->keys = NULL;
    s->nkeys = 0;
}
