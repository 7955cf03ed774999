/*
 * hr_cursor: exact texts (checked against an independent encoder in this file), round trips up
 * to the limits, and every way a cursor text must be refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cursor.h"
#include "hr_error.h"
#include "partition.h"

#define NEWS_HASH 0xe5495bbaa03a6526ULL /* FNV-1a 64 of "news" */

/* --- an independent encoder of the format, for building texts the parser must refuse ---- */

static uint32_t fnv32(const uint8_t *p, size_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x01000193u;
    return h;
}

static size_t put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
    return 8;
}

/* "a" + unpadded base64url of `body` (+ its FNV-1a 32 when `add_check`). `out` gets NUL. */
static void make_text(const uint8_t *body, size_t n, int add_check, char *out)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t *b = malloc(n + 4);
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    memcpy(b, body, n);
    if (add_check) {
        uint32_t c = fnv32(body, n);
        b[n++] = (uint8_t)(c >> 24);
        b[n++] = (uint8_t)(c >> 16);
        b[n++] = (uint8_t)(c >> 8);
        b[n++] = (uint8_t)c;
    }
    out[o++] = 'a';
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | b[i];
        bits += 8;
        while (bits >= 6) {
            out[o++] = alpha[(acc >> (bits - 6)) & 63];
            bits -= 6;
        }
    }
    if (bits > 0)
        out[o++] = alpha[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    free(b);
}

static int parse_str(hr_cursor_t *c, const char *text)
{
    return hr_cursor_parse(c, text, strlen(text));
}

/* Parse must refuse `text` and leave the cursor LATEST and empty, whatever it held before. */
static void assert_refused(const char *text, size_t len)
{
    hr_cursor_t c;

    hr_cursor_init(&c);
    assert_int_equal(hr_cursor_set(&c, 1, 2, 3), 0);
    assert_int_equal(hr_cursor_parse(&c, text, len), HR_E_INVALID_CURSOR);
    assert_int_equal(c.kind, HR_CURSOR_LATEST);
    assert_int_equal(c.n, 0);
    assert_null(hr_cursor_find(&c, 1));
    hr_cursor_reset(&c);
}

static void assert_refused_str(const char *text)
{
    assert_refused(text, strlen(text));
}

static void assert_body_refused(const uint8_t *body, size_t n)
{
    char text[HR_CURSOR_MAX_TEXT + 16];
    make_text(body, n, 1, text);
    assert_refused_str(text);
}

/* --- tests ------------------------------------------------------------------------------- */

static void test_special_words(void **state)
{
    hr_cursor_t c;
    char buf[HR_CURSOR_TEXT_CAP(0)];
    size_t len = 99;
    (void)state;

    hr_cursor_init(&c);
    assert_int_equal(c.kind, HR_CURSOR_LATEST);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, "latest");
    assert_int_equal(len, 6);

    assert_int_equal(parse_str(&c, "earliest"), 0);
    assert_int_equal(c.kind, HR_CURSOR_EARLIEST);
    assert_int_equal(c.n, 0);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, "earliest");
    assert_int_equal(len, 8);

    assert_int_equal(parse_str(&c, "latest"), 0);
    assert_int_equal(c.kind, HR_CURSOR_LATEST);
    assert_int_equal(parse_str(&c, "earliest"), 0);
    assert_int_equal(hr_cursor_parse(&c, "", 0), 0);
    assert_int_equal(c.kind, HR_CURSOR_LATEST);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, NULL), 0);
    assert_string_equal(buf, "latest");
    /* `len` bounds the text: "latestx" cut to 6 bytes is "latest". */
    assert_int_equal(hr_cursor_parse(&c, "latestx", 6), 0);
    hr_cursor_reset(&c);

    assert_refused_str("Latest");
    assert_refused_str("LATEST");
    assert_refused_str("latestx");
    assert_refused_str("earliest ");
    assert_refused_str(" latest");
    assert_refused_str("late");
    assert_refused_str("none");
    assert_refused("latest\0", 7);
}

static void test_exact_text(void **state)
{
    hr_cursor_t c;
    char buf[HR_CURSOR_TEXT_CAP(2)];
    size_t len;
    (void)state;

    assert_true(hr_fnv1a64("news", 4) == NEWS_HASH);
    hr_cursor_init(&c);
    assert_int_equal(hr_cursor_set(&c, NEWS_HASH, 0x0123456789abcdefULL, 300), 0);
    assert_int_equal(c.kind, HR_CURSOR_POSITIONS);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, "a5UlbuqA6ZSYBI0VniavN76wCntS4BQ");
    assert_int_equal(len, strlen("a5UlbuqA6ZSYBI0VniavN76wCntS4BQ"));

    assert_int_equal(hr_cursor_format_one("news", 4, 0x0123456789abcdefULL, 300, buf,
                                          HR_CURSOR_TEXT_CAP(1), &len),
                     0);
    assert_string_equal(buf, "a5UlbuqA6ZSYBI0VniavN76wCntS4BQ");

    /* A second topic (hash of "chat"), epoch 1, seq 0, sorts before "news". */
    assert_int_equal(hr_cursor_set(&c, hr_fnv1a64("chat", 4), 1, 0), 0);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, "a5UlbuqA6ZSYBI0VniavN76wC8qONkQtbNIsAAAAAAAAAAQAEb_74");

    assert_int_equal(parse_str(&c, "a5UlbuqA6ZSYBI0VniavN76wCntS4BQ"), 0);
    assert_int_equal(c.kind, HR_CURSOR_POSITIONS);
    assert_int_equal(c.n, 1);
    assert_true(c.entries[0].topic_hash == NEWS_HASH);
    assert_true(c.entries[0].epoch == 0x0123456789abcdefULL);
    assert_true(c.entries[0].seq == 300);
    hr_cursor_reset(&c);
    assert_null(c.entries);
    assert_int_equal(c.n, 0);
    assert_int_equal(c.cap, 0);
}

static void test_zero_entries(void **state)
{
    hr_cursor_t c;
    char buf[HR_CURSOR_TEXT_CAP(0)];
    size_t len;
    (void)state;

    /* "a" + base64url of just the check, FNV-1a 32 of nothing = 0x811c9dc5. */
    hr_cursor_init(&c);
    assert_int_equal(parse_str(&c, "agRydxQ"), 0);
    assert_int_equal(c.kind, HR_CURSOR_POSITIONS);
    assert_int_equal(c.n, 0);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, "agRydxQ");
    assert_int_equal(len, 7);
    hr_cursor_reset(&c);
}

/* Build n entries with maximal varints, format, parse back, compare. */
static void round_trip_max(size_t n)
{
    hr_cursor_t c, back;
    size_t cap = HR_CURSOR_TEXT_CAP(n);
    char *buf = malloc(cap);
    size_t len;
    /* 26 bytes an entry + 4 check bytes, unpadded base64url, plus the version character. */
    size_t body = n * 26 + 4;
    size_t expect_len = 1 + (body * 4 + 2) / 3;

    hr_cursor_init(&c);
    hr_cursor_init(&back);
    for (size_t i = 0; i < n; i++) {
        /* Spread hashes over the whole range, inserted out of order. */
        uint64_t h = UINT64_MAX - (uint64_t)((i * 7919) % (n ? n : 1)) * 0x0100000000000001ULL;
        assert_int_equal(hr_cursor_set(&c, h, UINT64_MAX, UINT64_MAX), 0);
    }
    assert_int_equal(c.n, n);
    c.kind = HR_CURSOR_POSITIONS;
    assert_int_equal(hr_cursor_format(&c, buf, cap, &len), 0);
    assert_int_equal(len, expect_len);
    assert_int_equal(strlen(buf), expect_len);
    assert_true(len < cap);
    /* One byte short of the documented capacity is refused without writing. */
    memset(buf, '#', cap);
    assert_int_equal(hr_cursor_format(&c, buf, cap - 1, &len), -ENOSPC);
    assert_int_equal(buf[0], '#');
    assert_int_equal(hr_cursor_format(&c, buf, cap, &len), 0);

    assert_int_equal(hr_cursor_parse(&back, buf, len), 0);
    assert_int_equal(back.kind, HR_CURSOR_POSITIONS);
    assert_int_equal(back.n, n);
    if (n > 0)
        assert_memory_equal(back.entries, c.entries, n * sizeof c.entries[0]);
    for (size_t i = 1; i < n; i++)
        assert_true(back.entries[i - 1].topic_hash < back.entries[i].topic_hash);
    hr_cursor_reset(&c);
    hr_cursor_reset(&back);
    free(buf);
}

static void test_round_trip_limits(void **state)
{
    (void)state;
    round_trip_max(0);
    round_trip_max(1);
    round_trip_max(64);
    round_trip_max(HR_CURSOR_MAX_ENTRIES);
    /* DESIGN.md: 64 topics with ordinary seqs stay under 2 KiB; with UINT64_MAX ones, 2225. */
    assert_true(HR_CURSOR_TEXT_CAP(64) >= 2226);
    assert_true(HR_CURSOR_TEXT_CAP(HR_CURSOR_MAX_ENTRIES) <= HR_CURSOR_MAX_TEXT);
}

static void test_round_trip_seqs(void **state)
{
    /* Every varint length, including both sides of each 7-bit boundary. */
    hr_cursor_t c, back;
    char buf[HR_CURSOR_TEXT_CAP(130)];
    size_t len, k = 0;
    (void)state;

    hr_cursor_init(&c);
    hr_cursor_init(&back);
    for (int bit = 0; bit < 64; bit++) {
        uint64_t v = (uint64_t)1 << bit;
        assert_int_equal(hr_cursor_set(&c, k++, bit, v), 0);
        assert_int_equal(hr_cursor_set(&c, k++, bit, v - 1), 0);
    }
    assert_int_equal(hr_cursor_set(&c, k++, 0, UINT64_MAX), 0);
    assert_int_equal(hr_cursor_format(&c, buf, sizeof buf, &len), 0);
    assert_int_equal(hr_cursor_parse(&back, buf, len), 0);
    assert_int_equal(back.n, k);
    assert_memory_equal(back.entries, c.entries, k * sizeof c.entries[0]);
    hr_cursor_reset(&c);
    hr_cursor_reset(&back);
}

static void test_set_find(void **state)
{
    hr_cursor_t c;
    const hr_cursor_entry_t *e;
    uint64_t hashes[] = {50, 10, 40, 20, 30, UINT64_MAX, 0};
    (void)state;

    hr_cursor_init(&c);
    assert_null(hr_cursor_find(&c, 10));
    for (size_t i = 0; i < sizeof hashes / sizeof hashes[0]; i++)
        assert_int_equal(hr_cursor_set(&c, hashes[i], 100 + i, 1000 + i), 0);
    assert_int_equal(c.n, 7);
    for (size_t i = 1; i < c.n; i++)
        assert_true(c.entries[i - 1].topic_hash < c.entries[i].topic_hash);
    assert_true(c.entries[0].topic_hash == 0);
    assert_true(c.entries[6].topic_hash == UINT64_MAX);

    e = hr_cursor_find(&c, 40);
    assert_non_null(e);
    assert_int_equal(e->epoch, 102);
    assert_int_equal(e->seq, 1002);
    assert_null(hr_cursor_find(&c, 41));
    assert_null(hr_cursor_find(&c, 1));

    /* Update in place: no new entry. */
    assert_int_equal(hr_cursor_set(&c, 40, 7, 8), 0);
    assert_int_equal(c.n, 7);
    e = hr_cursor_find(&c, 40);
    assert_int_equal(e->epoch, 7);
    assert_int_equal(e->seq, 8);

    /* EARLIEST becomes POSITIONS once a position is set. */
    hr_cursor_reset(&c);
    assert_int_equal(parse_str(&c, "earliest"), 0);
    assert_int_equal(hr_cursor_set(&c, NEWS_HASH, 1, 1), 0);
    assert_int_equal(c.kind, HR_CURSOR_POSITIONS);
    hr_cursor_reset(&c);
}

static void test_set_limit(void **state)
{
    hr_cursor_t c;
    (void)state;

    hr_cursor_init(&c);
    for (uint64_t i = 0; i < HR_CURSOR_MAX_ENTRIES; i++)
        assert_int_equal(hr_cursor_set(&c, i * 3, 1, i), 0);
    assert_int_equal(hr_cursor_set(&c, 1, 1, 1), HR_E_INVALID_CURSOR);
    assert_int_equal(c.n, HR_CURSOR_MAX_ENTRIES);
    assert_null(hr_cursor_find(&c, 1));
    /* Updating an existing entry still works at the limit. */
    assert_int_equal(hr_cursor_set(&c, 3, 9, 9), 0);
    assert_int_equal(hr_cursor_find(&c, 3)->seq, 9);
    hr_cursor_reset(&c);
}

static void test_parse_replaces(void **state)
{
    hr_cursor_t c;
    (void)state;

    hr_cursor_init(&c);
    assert_int_equal(hr_cursor_set(&c, 1, 1, 1), 0);
    assert_int_equal(hr_cursor_set(&c, 2, 1, 1), 0);
    assert_int_equal(parse_str(&c, "a5UlbuqA6ZSYBI0VniavN76wCntS4BQ"), 0);
    assert_int_equal(c.n, 1);
    assert_null(hr_cursor_find(&c, 1));
    assert_non_null(hr_cursor_find(&c, NEWS_HASH));
    assert_int_equal(parse_str(&c, "latest"), 0);
    assert_int_equal(c.kind, HR_CURSOR_LATEST);
    assert_int_equal(c.n, 0);
    hr_cursor_reset(&c);
}

static void test_refuse_text(void **state)
{
    const char *good = "a5UlbuqA6ZSYBI0VniavN76wCntS4BQ"; /* 30 base64 characters */
    char t[64];
    char *big;
    (void)state;

    /* Unknown version character, and a missing one. */
    assert_refused_str("b5UlbuqA6ZSYBI0VniavN76wCntS4BQ");
    assert_refused_str("A5UlbuqA6ZSYBI0VniavN76wCntS4BQ");
    assert_refused_str("5UlbuqA6ZSYBI0VniavN76wCntS4BQ");
    /* Empty body, and bodies too short to hold the check. */
    assert_refused_str("a");
    assert_refused_str("aAA");
    assert_refused_str("aAAAA");
    /* Characters outside base64url: standard alphabet, padding, whitespace, others. */
    assert_refused_str("a5UlbuqA6ZSYBI0VniavN76wCntS4BQ=");
    assert_refused_str("a5UlbuqA6ZSYBI0VniavN76wCntS4BQ==");
    assert_refused_str("a5UlbuqA6ZSYBI0VniavN76wCntS4BQ\n");
    assert_refused_str("a5UlbuqA6ZSYBI0VniavN76wCntS4BQ ");
    assert_refused_str("a 5UlbuqA6ZSYBI0VniavN76wCntS4BQ");
    assert_refused_str("a5UlbuqA6ZSYBI0V niavN76wCntS4BQ");
    assert_refused_str("a5UlbuqA6ZSYBI0VniavN76wCntS4B\t");
    assert_refused("a5UlbuqA6ZSYBI0VniavN76wCntS4BQ\0", 32);
    assert_refused("a5UlbuqA6ZSYBI0V\0iavN76wCntS4BQ", 31);
    strcpy(t, good);
    t[10] = '+';
    assert_refused_str(t);
    t[10] = '/';
    assert_refused_str(t);
    t[10] = '.';
    assert_refused_str(t);
    t[10] = (char)0xc3;
    assert_refused_str(t);
    /* A length no byte string encodes to (characters % 4 == 1): 30 + 3, and 1. */
    snprintf(t, sizeof t, "%sAAA", good);
    assert_refused_str(t);
    assert_refused_str("aA");
    assert_refused_str("agRydxQAA"); /* 6 + 2 characters: 6 bytes, check fails */
    /* Nonzero unused bits in the last character: 'Q' = 010000, 'R' = 010001 decode to the same
     * last byte, and only the canonical one is accepted. */
    assert_refused_str("agRydxR");
    assert_refused_str("agRydxf");
    strcpy(t, good);
    t[strlen(t) - 1] = 'R';
    assert_refused_str(t);
    /* Truncation: every proper prefix of a valid cursor is refused. */
    for (size_t n = 0; n < strlen(good); n++) {
        if (n == 0)
            continue; /* "" is LATEST */
        assert_refused(good, n);
    }
    /* Trailing garbage after a valid cursor. */
    snprintf(t, sizeof t, "%sAAAA", good);
    assert_refused_str(t);
    snprintf(t, sizeof t, "%sA", good);
    assert_refused_str(t);
    /* A flipped character anywhere fails the check. */
    for (size_t i = 1; i < strlen(good); i++) {
        strcpy(t, good);
        t[i] = t[i] == 'A' ? 'B' : 'A';
        assert_refused_str(t);
    }
    /* Text over HR_CURSOR_MAX_TEXT, refused before anything else is looked at. */
    big = malloc(HR_CURSOR_MAX_TEXT + 2);
    memset(big, 'A', HR_CURSOR_MAX_TEXT + 1);
    big[0] = 'a';
    assert_refused(big, HR_CURSOR_MAX_TEXT + 1);
    free(big);
}

static void test_refuse_body(void **state)
{
    uint8_t body[300 * 26];
    char *text = malloc(HR_CURSOR_MAX_TEXT + 16);
    hr_cursor_t c;
    size_t n;
    (void)state;

    hr_cursor_init(&c);
    /* Control: one entry with seq 1 is accepted by the parser. */
    n = put64(body, 5) + put64(body + 8, 6);
    body[n++] = 0x01;
    make_text(body, n, 1, text);
    assert_int_equal(parse_str(&c, text), 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.entries[0].seq, 1);

    /* Bad check: the same body with the check of a different one. */
    make_text(body, n, 0, text);
    assert_refused_str(text);
    body[n] = 0;
    body[n + 1] = 0;
    body[n + 2] = 0;
    body[n + 3] = 0;
    make_text(body, n + 4, 0, text);
    assert_refused_str(text);

    /* Truncated entries with a correct check: no varint, half a topic_hash, 16 bytes only. */
    assert_body_refused(body, 16);
    assert_body_refused(body, 4);
    assert_body_refused(body, 1);
    /* Trailing bytes after a whole entry, with a correct check. */
    body[17] = 0x07;
    assert_body_refused(body, 18);
    body[17] = 0x00;
    assert_body_refused(body, 18);

    /* Non-canonical varints: seq 1 as 0x81 0x00; seq 0 as 0x80 0x00. */
    body[16] = 0x81;
    body[17] = 0x00;
    assert_body_refused(body, 18);
    body[16] = 0x80;
    assert_body_refused(body, 18);
    /* Unterminated varint (continuation bit on the last byte). */
    body[16] = 0x81;
    assert_body_refused(body, 17);

    /* Ten-byte varints: the 10th byte may only be 0x01 (bit 63). */
    memset(body + 16, 0xff, 9);
    body[25] = 0x01;
    make_text(body, 26, 1, text);
    assert_int_equal(parse_str(&c, text), 0);
    assert_true(c.entries[0].seq == UINT64_MAX);
    body[25] = 0x02; /* bit 64: overflow */
    assert_body_refused(body, 26);
    body[25] = 0x7f;
    assert_body_refused(body, 26);
    body[25] = 0x00; /* redundant */
    assert_body_refused(body, 26);
    body[25] = 0x81; /* eleven bytes */
    body[26] = 0x00;
    assert_body_refused(body, 27);
    memset(body + 16, 0x80, 10);
    body[26] = 0x01;
    assert_body_refused(body, 27);

    /* Duplicate and unsorted topics. */
    n = put64(body, 5) + put64(body + 8, 6);
    body[n++] = 0x01;
    n += put64(body + n, 5);
    n += put64(body + n, 6);
    body[n++] = 0x02;
    assert_body_refused(body, n);
    put64(body + 17, 4);
    assert_body_refused(body, n);
    put64(body + 17, 6); /* control: sorted is fine */
    make_text(body, n, 1, text);
    assert_int_equal(parse_str(&c, text), 0);
    assert_int_equal(c.n, 2);

    /* HR_CURSOR_MAX_ENTRIES entries are accepted, one more is not. */
    n = 0;
    for (uint64_t i = 0; i < HR_CURSOR_MAX_ENTRIES + 1; i++) {
        n += put64(body + n, i + 1);
        n += put64(body + n, 1);
        body[n++] = 0x00;
    }
    make_text(body, n - 17, 1, text);
    assert_int_equal(parse_str(&c, text), 0);
    assert_int_equal(c.n, HR_CURSOR_MAX_ENTRIES);
    make_text(body, n, 1, text);
    assert_true(strlen(text) <= HR_CURSOR_MAX_TEXT);
    assert_refused_str(text);

    hr_cursor_reset(&c);
    free(text);
}

static void test_format_nospace(void **state)
{
    hr_cursor_t c;
    char buf[HR_CURSOR_TEXT_CAP(1)];
    size_t len = 77;
    (void)state;

    hr_cursor_init(&c);
    assert_int_equal(hr_cursor_format(&c, buf, HR_CURSOR_TEXT_CAP(0) - 1, &len), -ENOSPC);
    assert_int_equal(len, 77);
    assert_int_equal(hr_cursor_format(&c, buf, 0, NULL), -ENOSPC);
    assert_int_equal(hr_cursor_format_one("news", 4, 1, 1, buf, HR_CURSOR_TEXT_CAP(1) - 1, &len),
                     -ENOSPC);
    assert_int_equal(hr_cursor_format_one("news", 4, 1, 1, buf, sizeof buf, &len), 0);
    assert_int_equal(len, strlen(buf));
    /* A hand-filled cursor over the limit is refused rather than overflowing. */
    {
        hr_cursor_t big = {HR_CURSOR_POSITIONS, HR_CURSOR_MAX_ENTRIES + 1,
                           HR_CURSOR_MAX_ENTRIES + 1, NULL};
        char *text = malloc(HR_CURSOR_TEXT_CAP(HR_CURSOR_MAX_ENTRIES + 1));
        big.entries = calloc(big.n, sizeof big.entries[0]);
        assert_int_equal(hr_cursor_format(&big, text, HR_CURSOR_TEXT_CAP(big.n), NULL),
                         HR_E_INVALID_CURSOR);
        free(big.entries);
        free(text);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_special_words),   cmocka_unit_test(test_exact_text),
        cmocka_unit_test(test_zero_entries),    cmocka_unit_test(test_round_trip_limits),
        cmocka_unit_test(test_round_trip_seqs), cmocka_unit_test(test_set_find),
        cmocka_unit_test(test_set_limit),       cmocka_unit_test(test_parse_replaces),
        cmocka_unit_test(test_refuse_text),     cmocka_unit_test(test_refuse_body),
        cmocka_unit_test(test_format_nospace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
