/* api_proto.h — the protobuf adapter of the server (api_proto.c): protobuf request bodies
 * to the JSON objects the endpoints take, JSON answers to protobuf messages. */
#ifndef NL_API_PROTO_H
#define NL_API_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "nl_common.h"

typedef enum { NL_API_UPSERT, NL_API_DELETE, NL_API_SEARCH, NL_API_SEARCH_BATCH, NL_API_OTHER } nl_api_endpoint;

/* The JSON form of a protobuf body (new reference), or NULL with a message in err. */
json_t *nl_proto_request(nl_api_endpoint ep, const void *buf, size_t len, char *err, size_t errlen);
/* The protobuf form of an answer (status >= 400: an Error message). *out malloc'd.
 * NL_EUNSUPPORTED for endpoints that speak JSON only. */
int nl_proto_response(nl_api_endpoint ep, int status, json_t *body, uint8_t **out, size_t *len);

#endif
