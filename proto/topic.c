#include "topic.h"

#include "hr_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The reserved prefix of Herald's own SSE events (DESIGN.md §Data model), e.g. herald.reset. */
#define HR_EVENT_RESERVED_PREFIX "herald."

/* "byte 0x2f ('/') at offset 3 is not allowed<where>"; the character itself is shown only when
 * it is printable ASCII, so the text never carries control or non-ASCII bytes. */
static void why_bad_byte(char *why, size_t why_len, unsigned char c, size_t offset,
                         const char *where)
{
    if (c >= 0x20 && c <= 0x7e)
        hr_why(why, why_len, "byte 0x%02x ('%c') at offset %zu is not allowed%s", c, c, offset,
               where);
    else
        hr_why(why, why_len, "byte 0x%02x at offset %zu is not allowed%s", c, offset, where);
}

static int is_name_byte(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || c == ':' || c == '@';
}

int hr_topic_validate(const char *name, size_t len, char *why, size_t why_len)
{
    const unsigned char *p = (const unsigned char *)name;

    if (len == 0) {
        hr_why(why, why_len, "topic is empty");
        return HR_E_INVALID_TOPIC;
    }
    if (len > HR_TOPIC_MAX) {
        hr_why(why, why_len, "topic is %zu bytes; the limit is %d", len, HR_TOPIC_MAX);
        return HR_E_INVALID_TOPIC;
    }
    for (size_t i = 0; i < len; i++) {
        if (!is_name_byte(p[i])) {
            why_bad_byte(why, why_len, p[i], i, "");
            return HR_E_INVALID_TOPIC;
        }
    }
    hr_why_clear(why, why_len);
    return 0;
}

int hr_event_validate(const char *event, size_t len, char *why, size_t why_len)
{
    const unsigned char *p = (const unsigned char *)event;
    const size_t prefix_len = sizeof HR_EVENT_RESERVED_PREFIX - 1;

    if (len > HR_EVENT_MAX) {
        hr_why(why, why_len, "event type is %zu bytes; the limit is %d", len, HR_EVENT_MAX);
        return HR_E_INVALID_REQUEST;
    }
    /* Visible ASCII only: an SSE `event:` line ends at CR or LF (WHATWG HTML §9.2.6), and a
     * space or control byte in a type name is never intended. */
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x21 || p[i] > 0x7e) {
            why_bad_byte(why, why_len, p[i], i, " in an event type");
            return HR_E_INVALID_REQUEST;
        }
    }
    if (len >= prefix_len && memcmp(event, HR_EVENT_RESERVED_PREFIX, prefix_len) == 0) {
        hr_why(why, why_len, "event types starting with 'herald.' are reserved");
        return HR_E_INVALID_REQUEST;
    }
    hr_why_clear(why, why_len);
    return 0;
}

int hr_content_type_validate(const char *ctype, size_t len, char *why, size_t why_len)
{
    const unsigned char *p = (const unsigned char *)ctype;

    if (len > HR_CONTENT_TYPE_MAX) {
        hr_why(why, why_len, "content type is %zu bytes; the limit is %d", len,
               HR_CONTENT_TYPE_MAX);
        return HR_E_INVALID_REQUEST;
    }
    /* Visible ASCII or space (RFC 9110 §8.3 media types with parameters); no control bytes, so
     * the value can be echoed in a Content-Type header without header injection. */
    for (size_t i = 0; i < len; i++) {
        if (p[i] < 0x20 || p[i] > 0x7e) {
            why_bad_byte(why, why_len, p[i], i, " in a content type");
            return HR_E_INVALID_REQUEST;
        }
    }
    hr_why_clear(why, why_len);
    return 0;
}
