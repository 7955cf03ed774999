/*
 * Fuzz target: the naming rules (hr_topic_validate, hr_event_validate,
 * hr_content_type_validate) on arbitrary bytes, checked against a plain restatement of
 * DESIGN.md §Data model, with the explanation always NUL-terminated within its buffer, however
 * small.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hr_error.h"
#include "partition.h"
#include "topic.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static int topic_ok(const uint8_t *p, size_t n)
{
    if (n < 1 || n > HR_TOPIC_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0 ||
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:@", p[i]) ==
                NULL)
            return 0;
    return 1;
}

static int event_ok(const uint8_t *p, size_t n)
{
    if (n > HR_EVENT_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x21 || p[i] > 0x7e)
            return 0;
    return !(n >= 7 && memcmp(p, "herald.", 7) == 0);
}

static int ctype_ok(const uint8_t *p, size_t n)
{
    if (n > HR_CONTENT_TYPE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return 0;
    return 1;
}

/* The explanation must be empty on success, non-empty on failure, and terminated. */
static void check_why(int rc, const char *why, size_t why_len)
{
    CHECK(memchr(why, '\0', why_len) != NULL);
    if (why_len > 1)
        CHECK((rc == 0) == (why[0] == '\0'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    /* The first byte, when there is one, picks the size of the explanation buffer. */
    size_t why_len = size > 0 ? (size_t)data[0] % 130 : 64;
    char *why = malloc(why_len > 0 ? why_len : 1);
    int rc;

    CHECK(why != NULL);
    if (why_len > 0)
        why[0] = 'X';

    rc = hr_topic_validate(s, size, why, why_len);
    CHECK(rc == (topic_ok(data, size) ? 0 : HR_E_INVALID_TOPIC));
    if (why_len > 0)
        check_why(rc, why, why_len);
    if (rc == 0)
        CHECK(hr_partition_of(s, size, HR_PARTITIONS_DEFAULT) < HR_PARTITIONS_DEFAULT);

    rc = hr_event_validate(s, size, why, why_len);
    CHECK(rc == (event_ok(data, size) ? 0 : HR_E_INVALID_REQUEST));
    if (why_len > 0)
        check_why(rc, why, why_len);

    rc = hr_content_type_validate(s, size, why, why_len);
    CHECK(rc == (ctype_ok(data, size) ? 0 : HR_E_INVALID_REQUEST));
    if (why_len > 0)
        check_why(rc, why, why_len);

    CHECK(hr_topic_validate(s, size, NULL, 0) == (topic_ok(data, size) ? 0 : HR_E_INVALID_TOPIC));
    free(why);
    return 0;
}
