/*
 * hr_msgjson — the message JSON of DESIGN.md §Client contract, built with jansson:
 *   {"topic", "id", "seq", "epoch", "event", "content_type", "data", "encoding", "time"}
 * `epoch` is 16 lower-case hex digits; `data` is the text when it is valid UTF-8, otherwise
 * standard base64 (RFC 4648 §4) with "encoding": "base64"; `event` and `content_type` are
 * present only when non-empty.
 * Pure functions; any thread.
 */
#ifndef HR_MSGJSON_H
#define HR_MSGJSON_H

#include "herald.pb-c.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* New JSON object for `msg` with "id" set to `id` (NUL-terminated cursor text, not NULL), keys
 * in the order above. The caller owns the reference (json_decref). Returns NULL when `topic`,
 * `event` or `content_type` is not valid UTF-8 (never the case for fields that passed hr_topic's
 * rules) or when jansson cannot allocate. `seq` and `time` are JSON integers. */
json_t *hr_msgjson_from_message(const Herald__V1__Message *msg, const char *id);

/* Standard base64 (RFC 4648 §4, padded) of `len` bytes, via OpenSSL, as a new NUL-terminated
 * string from hr_malloc (caller frees with hr_free); *out_len (may be NULL) gets its length. */
char *hr_base64_encode(const uint8_t *bytes, size_t len, size_t *out_len);

/* Decode standard base64 (padding required, no whitespace) into a new buffer from hr_malloc
 * (caller frees with hr_free; *out_len, may be NULL, gets its length). Strict: only the canonical
 * encoding is accepted, so nonzero unused bits before the padding are refused too. Returns 0 or
 * HR_E_INVALID_REQUEST for text that is not base64, with *out NULL. */
int hr_base64_decode(const char *text, size_t len, uint8_t **out, size_t *out_len);

/* Epoch as 16 lower-case hex digits into `buf` (>= 17 bytes). */
void hr_epoch_hex(uint64_t epoch, char buf[17]);

#endif
