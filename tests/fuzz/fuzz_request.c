/*
 * Fuzz target: hr_codec_decode_request with a 1 MiB limit, as a broker decodes every frame on
 * its ROUTER socket. A decoded Request must re-encode and decode again to the same bytes. The
 * same bytes also go through the Reply and Message decoders (edges and the CLI read those from
 * brokers) and a decoded Message through hr_msgjson_from_message, whose UTF-8 and base64 paths
 * see arbitrary data that way.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "msgjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

#define MAX_BYTES (1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_request_t *req;
    hr_reply_t *reply;
    Herald__V1__Message *msg;
    char why[160];
    int rc;

    rc = hr_codec_decode_request(data, size, MAX_BYTES, &req, why, sizeof why);
    CHECK(rc == 0 || rc == HR_E_PROTO || rc == HR_E_VERSION || rc == HR_E_INVALID_REQUEST ||
          rc == HR_E_PAYLOAD_TOO_LARGE);
    CHECK((req != NULL) == (rc == 0 || rc == HR_E_VERSION || rc == HR_E_INVALID_REQUEST));
    CHECK(memchr(why, '\0', sizeof why) != NULL);
    if (req != NULL) {
        uint8_t *buf, *buf2;
        size_t len, len2;
        hr_request_t *again;

        hr_codec_encode_request(req, &buf, &len);
        CHECK(hr_codec_decode_request(buf, len, SIZE_MAX, &again, NULL, 0) == rc);
        hr_codec_encode_request(again, &buf2, &len2);
        CHECK(len2 == len && memcmp(buf, buf2, len) == 0);
        CHECK(again->request_id == req->request_id && again->body_case == req->body_case);
        hr_codec_request_free(&again);
        hr_free(buf);
        hr_free(buf2);
        hr_codec_request_free(&req);
        CHECK(req == NULL);
    }

    rc = hr_codec_decode_reply(data, size, MAX_BYTES, &reply, why, sizeof why);
    CHECK((reply != NULL) == (rc == 0 || rc == HR_E_VERSION || rc == HR_E_INVALID_REQUEST));
    hr_codec_reply_free(&reply);

    rc = hr_codec_decode_message(data, size, MAX_BYTES, &msg);
    CHECK((msg != NULL) == (rc == 0));
    if (msg != NULL) {
        json_t *obj = hr_msgjson_from_message(msg, "id");
        if (obj != NULL) {
            json_t *enc = json_object_get(obj, "encoding");
            json_t *d = json_object_get(obj, "data");
            CHECK(json_is_string(d));
            if (enc != NULL) {
                uint8_t *raw;
                size_t raw_len;
                CHECK(hr_base64_decode(json_string_value(d), json_string_length(d), &raw,
                                       &raw_len) == 0);
                CHECK(raw_len == msg->data.len &&
                      (raw_len == 0 || memcmp(raw, msg->data.data, raw_len) == 0));
                hr_free(raw);
            } else {
                CHECK(json_string_length(d) == msg->data.len);
            }
            json_decref(obj);
        }
        hr_codec_message_free(&msg);
    }
    return 0;
}
