/* libFuzzer target for the decoders that read untrusted bytes off the network: the filter
 * parser (JSON) with the evaluator run on what it accepts, and the protobuf adapter of
 * every protobuf endpoint with the answer encoder run on what it decodes. The first byte
 * picks the decoder. Build: make fuzz (clang, -fsanitize=fuzzer,address,undefined). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_proto.h"
#include "nl_filter.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned which = data[0] % 5;
    data++, size--;
    if (which == 4) {
        nl_filter *f;
        if (nl_filter_parse((const char *)data, size, &f) == 0) {
            static const char *meta = "{\"a\":1,\"b\":\"x\",\"t\":[\"x\",\"y\"],\"r\":2.5,\"z\":null,\"q\":true}";
            (void)nl_filter_match_json(f, meta, strlen(meta));
            (void)nl_filter_text(f);
            nl_filter_destroy(f);
        }
        return 0;
    }
    char err[200];
    json_t *j = nl_proto_request((nl_api_endpoint)which, data, size, err, sizeof err);
    if (j) {
        /* Echo it back through the encoder as if it were an answer. */
        json_t *ans = json_pack("{s:i,s:i,s:i,s:o}", "upserted", 1, "deleted", 2, "took_us", 3, "results",
                                json_array());
        uint8_t *out;
        size_t len;
        if (nl_proto_response((nl_api_endpoint)which, 200, ans, &out, &len) == 0)
            free(out);
        json_decref(ans);
        json_decref(j);
    }
    return 0;
}
