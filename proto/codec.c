#include "codec.h"

#include "hr_alloc.h"
#include "hr_error.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>

/*
 * Field number 0 is invalid in protobuf, and protobuf-c 1.4 refuses it in a one-byte tag
 * (0x02) but accepts it spelled with a redundant varint byte (0x82 0x00), keeping it as an
 * unknown field that it then re-encodes as 0x02 0x00, which it refuses to read. A request a
 * broker decodes and re-encodes to forward to the partition owner would then fail at the
 * owner, so such messages are refused here, at every depth (found by fuzz_request).
 */
static int has_field_zero(const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const char *base = (const char *)m;

    for (unsigned i = 0; i < m->n_unknown_fields; i++)
        if (m->unknown_fields[i].tag == 0)
            return 1;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];

        if (f->type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            ProtobufCMessage *const *items = *(ProtobufCMessage *const *const *)(base + f->offset);
            for (size_t j = 0; j < n; j++)
                if (has_field_zero(items[j]))
                    return 1;
        } else {
            const ProtobufCMessage *sub;
            /* Members of a oneof share their storage: only the set one is a message. */
            if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0 &&
                *(const uint32_t *)(base + f->quantifier_offset) != f->id)
                continue;
            sub = *(const ProtobufCMessage *const *)(base + f->offset);
            if (sub != NULL && has_field_zero(sub))
                return 1;
        }
    }
    return 0;
}

/* herald.proto: a version of 0 (unset) reads as 1, so a minimal sender may leave it out. */
static int version_check(uint32_t version, const char *what, char *why, size_t why_len)
{
    uint32_t v = version == 0 ? 1 : version;

    if (v > HR_PROTOCOL_VERSION) {
        hr_why(why, why_len, "%s protocol version %u is not supported; this build speaks %d", what,
               (unsigned)v, HR_PROTOCOL_VERSION);
        return HR_E_VERSION;
    }
    return 0;
}

static int size_check(size_t len, size_t max_bytes, const char *what, char *why, size_t why_len)
{
    if (len > max_bytes) {
        hr_why(why, why_len, "%s is %zu bytes; the limit is %zu", what, len, max_bytes);
        return HR_E_PAYLOAD_TOO_LARGE;
    }
    return 0;
}

/*
 * Decoding memory is bounded by the input: a small frame of many tiny messages would otherwise
 * unpack into structures dozens of times its size (16 MiB of 5-byte messages is over 1 GiB).
 * The allocator counts what protobuf-c asks for and refuses past the budget; it allocates with
 * malloc, so the result is freed by protobuf-c's default allocator as usual.
 */
typedef struct {
    size_t used, budget;
    int exceeded;
} hr_decode_budget_t;

static void *hr_budget_alloc(void *data, size_t size)
{
    hr_decode_budget_t *b = data;
    if (size > b->budget - b->used) {
        b->exceeded = 1;
        return NULL;
    }
    b->used += size;
    return hr_malloc(size);
}

static void hr_budget_free(void *data, void *ptr)
{
    (void)data;
    hr_free(ptr);
}

int hr_codec_decode_request(const uint8_t *buf, size_t len, size_t max_bytes, hr_request_t **out,
                            char *why, size_t why_len)
{
    hr_request_t *req;
    int rc;

    *out = NULL;
    rc = size_check(len, max_bytes, "request", why, why_len);
    if (rc != 0)
        return rc;
    hr_decode_budget_t budget = {0, HR_CODEC_DECODE_BUDGET(len), 0};
    ProtobufCAllocator allocator = {hr_budget_alloc, hr_budget_free, &budget};
    req = herald__v1__request__unpack(&allocator, len, buf);
    if (req == NULL && budget.exceeded) {
        hr_why(why, why_len,
               "request of %zu bytes needs more than %zu bytes to decode (too many messages "
               "in one request)",
               len, budget.budget);
        return HR_E_PAYLOAD_TOO_LARGE;
    }
    if (req != NULL && has_field_zero(&req->base))
        hr_codec_request_free(&req);
    if (req == NULL) {
        hr_why(why, why_len, "not a valid herald.v1.Request");
        return HR_E_PROTO;
    }
    *out = req;
    rc = version_check(req->version, "request", why, why_len);
    if (rc != 0)
        return rc;
    /* A body field this build does not know is kept by protobuf-c as an unknown field, which
     * leaves the oneof unset: the sender is newer than its version says, or sent nothing. */
    if (req->body_case == HERALD__V1__REQUEST__BODY__NOT_SET) {
        hr_why(why, why_len, "unknown or missing request type");
        return HR_E_INVALID_REQUEST;
    }
    hr_why_clear(why, why_len);
    return 0;
}

uint64_t hr_codec_peek_request_id(const uint8_t *buf, size_t len)
{
    /* Unknown fields (the body) are kept as copies, so this needs about the input's size. */
    hr_decode_budget_t budget = {0, len + 4096, 0};
    ProtobufCAllocator allocator = {hr_budget_alloc, hr_budget_free, &budget};
    Herald__V1__RequestHeader *h = herald__v1__request_header__unpack(&allocator, len, buf);
    if (h == NULL)
        return 0;
    uint64_t id = h->request_id;
    herald__v1__request_header__free_unpacked(h, NULL);
    return id;
}

void hr_codec_request_free(hr_request_t **req)
{
    if (*req != NULL)
        herald__v1__request__free_unpacked(*req, NULL);
    *req = NULL;
}

int hr_codec_decode_reply(const uint8_t *buf, size_t len, size_t max_bytes, hr_reply_t **out,
                          char *why, size_t why_len)
{
    hr_reply_t *reply;
    int rc;

    *out = NULL;
    rc = size_check(len, max_bytes, "reply", why, why_len);
    if (rc != 0)
        return rc;
    reply = herald__v1__reply__unpack(NULL, len, buf);
    if (reply != NULL && has_field_zero(&reply->base))
        hr_codec_reply_free(&reply);
    if (reply == NULL) {
        hr_why(why, why_len, "not a valid herald.v1.Reply");
        return HR_E_PROTO;
    }
    *out = reply;
    rc = version_check(reply->version, "reply", why, why_len);
    if (rc != 0)
        return rc;
    if (reply->body_case == HERALD__V1__REPLY__BODY__NOT_SET) {
        hr_why(why, why_len, "unknown or missing reply type");
        return HR_E_INVALID_REQUEST;
    }
    hr_why_clear(why, why_len);
    return 0;
}

void hr_codec_reply_free(hr_reply_t **reply)
{
    if (*reply != NULL)
        herald__v1__reply__free_unpacked(*reply, NULL);
    *reply = NULL;
}

int hr_codec_decode_message(const uint8_t *buf, size_t len, size_t max_bytes,
                            Herald__V1__Message **out)
{
    *out = NULL;
    if (len > max_bytes)
        return HR_E_PAYLOAD_TOO_LARGE;
    *out = herald__v1__message__unpack(NULL, len, buf);
    if (*out != NULL && has_field_zero(&(*out)->base))
        hr_codec_message_free(out);
    return *out != NULL ? 0 : HR_E_PROTO;
}

void hr_codec_message_free(Herald__V1__Message **msg)
{
    if (*msg != NULL)
        herald__v1__message__free_unpacked(*msg, NULL);
    *msg = NULL;
}

void hr_codec_encode_request(const hr_request_t *req, uint8_t **buf, size_t *len)
{
    size_t size = herald__v1__request__get_packed_size(req);
    size_t packed;

    *buf = hr_malloc(size);
    packed = herald__v1__request__pack(req, *buf);
    assert(packed == size);
    (void)packed;
    *len = size;
}

void hr_codec_encode_reply(const hr_reply_t *reply, uint8_t **buf, size_t *len)
{
    size_t size = herald__v1__reply__get_packed_size(reply);
    size_t packed;

    *buf = hr_malloc(size);
    packed = herald__v1__reply__pack(reply, *buf);
    assert(packed == size);
    (void)packed;
    *len = size;
}
