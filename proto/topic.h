/*
 * hr_topic — the naming rules of DESIGN.md §Data model, shared by every role so a name is
 * accepted or refused identically everywhere.
 *
 *   topic name:  1-255 bytes of A-Z a-z 0-9 _ - . : @
 *   event type:  0-64 bytes of visible ASCII (0x21-0x7E); the prefix "herald." is reserved
 *   content type: 0-255 bytes of visible ASCII or space, no control bytes
 *   idempotency key: 0-255 bytes, any bytes
 *
 * Pure functions; any thread.
 */
#ifndef HR_TOPIC_H
#define HR_TOPIC_H

#include <stddef.h>

#define HR_TOPIC_MAX        255 /* bytes */
#define HR_EVENT_MAX        64  /* bytes */
#define HR_CONTENT_TYPE_MAX 255 /* bytes */
#define HR_IDEM_KEY_MAX     255 /* bytes */

/* 0 if `name` (`len` bytes, not NUL-terminated) is a valid topic name, else HR_E_INVALID_TOPIC.
 * When `why` is non-NULL it receives a NUL-terminated explanation (at most `why_len` bytes),
 * e.g. "topic is 256 bytes; the limit is 255" or "byte 0x2f ('/') at offset 3 is not allowed". */
int hr_topic_validate(const char *name, size_t len, char *why, size_t why_len);

/* 0 if `event` is a valid publisher event type (empty is valid: no type), else
 * HR_E_INVALID_REQUEST with an explanation in `why` as above. */
int hr_event_validate(const char *event, size_t len, char *why, size_t why_len);

/* 0 if `ctype` is an acceptable content type (empty is valid), else HR_E_INVALID_REQUEST. */
int hr_content_type_validate(const char *ctype, size_t len, char *why, size_t why_len);

#endif
