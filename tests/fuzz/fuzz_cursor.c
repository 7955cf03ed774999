/*
 * Fuzz target: hr_cursor_parse on arbitrary text (cursors arrive in query strings, SSE
 * Last-Event-ID headers, If-None-Match and WebSocket frames). On success the cursor must
 * satisfy its invariants and format→parse must reproduce it; since only canonical text is
 * accepted, the formatted text must also equal the input (except "", which formats as
 * "latest").
 *
 * Random text almost never carries a correct FNV-1a 32 check, which would leave the entry
 * parser (varints, ordering, limits) unexplored, so each input is also read as a binary body:
 * given its check and encoded as format 'a', it goes through the same checks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cursor.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "msgjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Not assert(): the replay build defines NDEBUG, and these checks must run there too. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static void check_text(const char *in, size_t size)
{
    hr_cursor_t c, back;
    char *text;
    size_t cap, len;
    int rc;

    hr_cursor_init(&c);
    hr_cursor_init(&back);
    rc = hr_cursor_parse(&c, in, size);
    if (rc != 0) {
        CHECK(rc == HR_E_INVALID_CURSOR);
        CHECK(c.kind == HR_CURSOR_LATEST && c.n == 0);
        hr_cursor_reset(&c);
        return;
    }
    CHECK(c.n <= HR_CURSOR_MAX_ENTRIES);
    CHECK(c.kind == HR_CURSOR_POSITIONS || c.n == 0);
    for (size_t i = 1; i < c.n; i++)
        CHECK(c.entries[i - 1].topic_hash < c.entries[i].topic_hash);
    for (size_t i = 0; i < c.n; i++)
        CHECK(hr_cursor_find(&c, c.entries[i].topic_hash) == &c.entries[i]);

    cap = HR_CURSOR_TEXT_CAP(c.n);
    text = malloc(cap);
    CHECK(text != NULL);
    CHECK(hr_cursor_format(&c, text, cap, &len) == 0);
    CHECK(len < cap && strlen(text) == len);
    if (size > 0)
        CHECK(len == size && memcmp(text, in, size) == 0);

    CHECK(hr_cursor_parse(&back, text, len) == 0);
    CHECK(back.kind == c.kind && back.n == c.n);
    if (c.n > 0)
        CHECK(memcmp(back.entries, c.entries, c.n * sizeof c.entries[0]) == 0);

    free(text);
    hr_cursor_reset(&c);
    hr_cursor_reset(&back);
}

/* "a" + unpadded base64url of `data` followed by its FNV-1a 32, big-endian. */
static char *body_text(const uint8_t *data, size_t size, size_t *len)
{
    uint8_t *body = hr_malloc(size + 4);
    uint32_t h = 0x811c9dc5u;
    char *b64, *text;
    size_t n;

    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 0x01000193u;
    if (size > 0)
        memcpy(body, data, size);
    body[size] = (uint8_t)(h >> 24);
    body[size + 1] = (uint8_t)(h >> 16);
    body[size + 2] = (uint8_t)(h >> 8);
    body[size + 3] = (uint8_t)h;
    b64 = hr_base64_encode(body, size + 4, &n);
    while (n > 0 && b64[n - 1] == '=')
        n--;
    text = hr_malloc(n + 1);
    text[0] = 'a';
    for (size_t i = 0; i < n; i++)
        text[i + 1] = b64[i] == '+' ? '-' : b64[i] == '/' ? '_' : b64[i];
    *len = n + 1;
    hr_free(b64);
    hr_free(body);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t len;
    char *text;

    check_text((const char *)data, size);
    text = body_text(data, size, &len);
    check_text(text, len);
    hr_free(text);
    return 0;
}
