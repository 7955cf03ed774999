/*
 * hr_msg — one message as the edge holds it: reference-counted, immutable, shared by every
 * subscriber that delivers it, with each wire encoding built once on first use and cached
 * (STYLE.md: fan-out shares one payload per message per wire format, no per-subscriber copies).
 *
 * Encodings leave the per-subscriber part out: a message's `id` is the subscriber's cursor, so
 * JSON encodings end just before it (`..."id":"`), and the transport appends `CURSOR"}`.
 *
 * Loop thread only (reference counts are not atomic).
 */
#ifndef HR_MSG_H
#define HR_MSG_H

#include "herald.pb-c.h"

#include <stddef.h>
#include <stdint.h>

typedef enum {
    /* SSE body after the id line (WHATWG HTML §9.2): "event: T\n" when typed, then one
     * "data: LINE\n" per line of the text (CR, LF and CRLF all end a line), or of the base64
     * of binary data, then the blank line "\n". */
    HR_ENC_SSE_DATA,
    /* SSE body for format=json, up to the cursor: "event: T\n" when typed, then
     * "data: {message JSON ...,"id":"" — the transport appends CURSOR"}\n\n. */
    HR_ENC_SSE_JSON,
    /* Message JSON with "type":"message", up to the cursor: {"type":"message",...,"id":" */
    HR_ENC_JSON,
    HR_ENC_COUNT
} hr_encoding_t;

typedef struct {
    uint32_t refs;
    uint32_t len;
    char data[]; /* len bytes */
} hr_payload_t;

typedef struct {
    uint32_t refs;
    uint64_t seq, epoch, time_ms;
    uint64_t topic_hash; /* hr_fnv1a64 of the topic name */
    const char *topic;   /* these point into the same allocation */
    size_t topic_len;
    const char *event;
    size_t event_len;
    const char *content_type;
    size_t content_type_len;
    const uint8_t *data;
    size_t data_len;
    hr_payload_t *enc[HR_ENC_COUNT]; /* built lazily by hr_msg_encoded */
} hr_msg_t;

/* A new message (refs = 1) copied from a decoded protobuf Message. */
hr_msg_t *hr_msg_from_proto(const Herald__V1__Message *m);

/* Take and drop references. hr_msg_unref frees on the last one and NULLs *msg. */
hr_msg_t *hr_msg_ref(hr_msg_t *msg);
void hr_msg_unref(hr_msg_t **msg);

/* The message in `enc`, built on first use; owned by the message (take a payload reference to
 * keep it past the message's life). */
hr_payload_t *hr_msg_encoded(hr_msg_t *msg, hr_encoding_t enc);

hr_payload_t *hr_payload_new(size_t len);
hr_payload_t *hr_payload_ref(hr_payload_t *p);
void hr_payload_unref(hr_payload_t **p);

/* Append `len` bytes of SSE data lines for `text` to a growing buffer: one "data: " line per
 * line (CR, LF, CRLF split lines, per WHATWG HTML §9.2.6), at least one line. Returns the new
 * length; *buf is reallocated as needed (*cap tracks its size). Used for reset and shutdown
 * events too. */
size_t hr_sse_data_lines(char **buf, size_t *cap, size_t len, const char *text, size_t text_len);

#endif
