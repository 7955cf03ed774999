#include "msgjson.h"

#include "hr_alloc.h"
#include "hr_error.h"

#include <assert.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* OpenSSL's block functions take an int length, so large inputs go through in chunks; each
 * chunk is a whole number of base64 quanta (3 bytes in, 4 characters out). */
#define HR_B64_CHUNK_BYTES ((size_t)3 << 20)
#define HR_B64_CHUNK_CHARS ((size_t)4 << 20)

/* The 6-bit value of a character of the standard alphabet (RFC 4648 §4, Table 1), or -1.
 * OpenSSL's EVP_DecodeBlock is lenient (it skips leading and trailing whitespace and reads '='
 * anywhere as zero bits), so every character is checked here before it is called. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

char *hr_base64_encode(const uint8_t *bytes, size_t len, size_t *out_len)
{
    assert(len <= (SIZE_MAX - 1) / 4 * 3 - 2);
    size_t n = (len + 2) / 3 * 4;
    char *out = hr_malloc(n + 1);
    size_t o = 0;

    for (size_t i = 0; i < len;) {
        size_t chunk = len - i < HR_B64_CHUNK_BYTES ? len - i : HR_B64_CHUNK_BYTES;
        o += (size_t)EVP_EncodeBlock((unsigned char *)out + o, bytes + i, (int)chunk);
        i += chunk;
    }
    assert(o == n);
    out[o] = '\0';
    if (out_len != NULL)
        *out_len = o;
    return out;
}

int hr_base64_decode(const char *text, size_t len, uint8_t **out, size_t *out_len)
{
    const unsigned char *t = (const unsigned char *)text;
    size_t pad = 0;
    uint8_t *buf;
    size_t o = 0;

    *out = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (len % 4 != 0)
        return HR_E_INVALID_REQUEST;
    if (len > 0 && t[len - 1] == '=')
        pad++;
    if (len > 1 && t[len - 2] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (b64_value(t[i]) < 0)
            return HR_E_INVALID_REQUEST;
    /* Canonical form only (RFC 4648 §3.5): the bits of the last character that fall beyond the
     * final byte must be zero, so each byte string has exactly one accepted encoding. */
    if (pad > 0 && (b64_value(t[len - pad - 1]) & (pad == 1 ? 0x03 : 0x0f)) != 0)
        return HR_E_INVALID_REQUEST;

    buf = hr_malloc(len / 4 * 3);
    for (size_t i = 0; i < len;) {
        size_t chunk = len - i < HR_B64_CHUNK_CHARS ? len - i : HR_B64_CHUNK_CHARS;
        /* EVP_DecodeBlock counts the zero bytes that padding stands for; the true length is
         * computed from the '=' count below. */
        int n = EVP_DecodeBlock(buf + o, t + i, (int)chunk);
        if (n < 0 || (size_t)n != chunk / 4 * 3) {
            hr_free(buf);
            return HR_E_INVALID_REQUEST;
        }
        o += (size_t)n;
        i += chunk;
    }
    *out = buf;
    if (out_len != NULL)
        *out_len = o - pad;
    return 0;
}

void hr_epoch_hex(uint64_t epoch, char buf[17])
{
    snprintf(buf, 17, "%016" PRIx64, epoch);
}

/* A protobuf `bytes` field as a JSON string, or NULL when it is not valid UTF-8 (jansson
 * checks). protobuf-c leaves .data NULL for an empty field. */
static json_t *bytes_string(ProtobufCBinaryData b)
{
    return json_stringn(b.len > 0 ? (const char *)b.data : "", b.len);
}

json_t *hr_msgjson_from_message(const Herald__V1__Message *msg, const char *id)
{
    json_t *obj = json_object();
    json_t *data;
    char epoch[17];

    assert(msg != NULL && id != NULL);
    if (obj == NULL)
        return NULL;
    hr_epoch_hex(msg->epoch, epoch);
    /* json_object_set_new takes the reference even on failure, and fails for a NULL value. */
    if (json_object_set_new(obj, "topic", bytes_string(msg->topic)) != 0 ||
        json_object_set_new(obj, "id", json_string(id)) != 0 ||
        json_object_set_new(obj, "seq", json_integer((json_int_t)msg->seq)) != 0 ||
        json_object_set_new(obj, "epoch", json_string(epoch)) != 0)
        goto fail;
    if (msg->event.len > 0 && json_object_set_new(obj, "event", bytes_string(msg->event)) != 0)
        goto fail;
    if (msg->content_type.len > 0 &&
        json_object_set_new(obj, "content_type", bytes_string(msg->content_type)) != 0)
        goto fail;

    data = bytes_string(msg->data);
    if (data != NULL) {
        if (json_object_set_new(obj, "data", data) != 0)
            goto fail;
    } else {
        size_t b64_len;
        char *b64 = hr_base64_encode(msg->data.data, msg->data.len, &b64_len);
        data = json_stringn(b64, b64_len);
        hr_free(b64);
        if (json_object_set_new(obj, "data", data) != 0 ||
            json_object_set_new(obj, "encoding", json_string("base64")) != 0)
            goto fail;
    }
    if (json_object_set_new(obj, "time", json_integer((json_int_t)msg->time_ms)) != 0)
        goto fail;
    return obj;

fail:
    json_decref(obj);
    return NULL;
}
