/*
 * hr_codec — decoding and encoding of the protobuf-c messages of proto/herald.proto, with the
 * checks every receiver needs before trusting a message: a size limit, a clean unpack, a
 * protocol version this build speaks, and a body that is set. Generated types come from
 * herald.pb-c.h (built from herald.proto at build time).
 * Pure functions; any thread.
 */
#ifndef HR_CODEC_H
#define HR_CODEC_H

#include "herald.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define HR_PROTOCOL_VERSION 1

typedef Herald__V1__Request hr_request_t;
typedef Herald__V1__Reply hr_reply_t;

/* Most bytes hr_codec_decode_request may allocate for a request of `len` bytes: four times its
 * size plus 2 MiB (room for 8,192 minimal messages). */
#define HR_CODEC_DECODE_BUDGET(len) ((size_t)(len)*4 + 2u * 1024 * 1024)

/*
 * Decode a Request from `len` bytes. On success *out is owned by the caller (free with
 * hr_codec_request_free). Errors, each with an explanation in `why` (`why_len` bytes, may be
 * NULL): HR_E_PAYLOAD_TOO_LARGE (len > max_bytes, or decoding would need more than
 * HR_CODEC_DECODE_BUDGET(len) bytes), HR_E_PROTO (not a valid Request, including
 * one carrying field number 0 at any depth, which protobuf-c would accept but not re-encode),
 * HR_E_VERSION (version above HR_PROTOCOL_VERSION; *out is still set so the caller can echo
 * request_id), HR_E_INVALID_REQUEST (no body: an unknown or missing request type; *out set too).
 * A version of 0 is read as 1 (and left as 0 in *out). *out is NULL after any other error.
 */
int hr_codec_decode_request(const uint8_t *buf, size_t len, size_t max_bytes, hr_request_t **out,
                            char *why, size_t why_len);
void hr_codec_request_free(hr_request_t **req);

/* The request_id of a Request that hr_codec_decode_request refused, read from its leading
 * fields (RequestHeader), so the error reply can still be matched; 0 when even that fails. */
uint64_t hr_codec_peek_request_id(const uint8_t *buf, size_t len);

/* As hr_codec_decode_request, for a Reply (used by the CLI and edges). */
int hr_codec_decode_reply(const uint8_t *buf, size_t len, size_t max_bytes, hr_reply_t **out,
                          char *why, size_t why_len);
void hr_codec_reply_free(hr_reply_t **reply);

/* Decode a Message (a live PUB frame). HR_E_PROTO / HR_E_PAYLOAD_TOO_LARGE as above. Free
 * with hr_codec_message_free. */
int hr_codec_decode_message(const uint8_t *buf, size_t len, size_t max_bytes,
                            Herald__V1__Message **out);
void hr_codec_message_free(Herald__V1__Message **msg);

/* Serialise into a new buffer from hr_malloc; *buf is owned by the caller (hr_free). */
void hr_codec_encode_request(const hr_request_t *req, uint8_t **buf, size_t *len);
void hr_codec_encode_reply(const hr_reply_t *reply, uint8_t **buf, size_t *len);

#endif
