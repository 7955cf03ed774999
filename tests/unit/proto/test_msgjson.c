/* hr_msgjson: the message JSON clients parse (DESIGN.md §Client contract) and strict base64. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "hr_alloc.h"
#include "hr_error.h"
#include "msgjson.h"

static ProtobufCBinaryData bin(const char *s, size_t len)
{
    ProtobufCBinaryData b = {len, (uint8_t *)s};
    return b;
}

/* The compact JSON text of the message, for exact comparison; caller frees. */
static char *dump(const Herald__V1__Message *msg, const char *id)
{
    json_t *obj = hr_msgjson_from_message(msg, id);
    char *text;

    assert_non_null(obj);
    text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    assert_non_null(text);
    return text;
}

static void test_text_message(void **state)
{
    Herald__V1__Message msg = HERALD__V1__MESSAGE__INIT;
    char *text;
    (void)state;

    msg.topic = bin("news", 4);
    msg.seq = 7;
    msg.epoch = 0xff;
    msg.event = bin("update", 6);
    msg.content_type = bin("text/plain; charset=utf-8", 25);
    msg.data = bin("h\xc3\xa9llo \"w\"", 10);
    msg.time_ms = 1700000000123ULL;
    text = dump(&msg, "a5UlbuqA6ZSYBI0VniavN76wCntS4BQ");
    assert_string_equal(text, "{\"topic\":\"news\",\"id\":\"a5UlbuqA6ZSYBI0VniavN76wCntS4BQ\","
                              "\"seq\":7,\"epoch\":\"00000000000000ff\",\"event\":\"update\","
                              "\"content_type\":\"text/plain; charset=utf-8\","
                              "\"data\":\"h\xc3\xa9llo \\\"w\\\"\",\"time\":1700000000123}");
    free(text);
}

static void test_omitted_fields_and_empty_data(void **state)
{
    Herald__V1__Message msg = HERALD__V1__MESSAGE__INIT; /* data.data is NULL, len 0 */
    char *text;
    (void)state;

    msg.topic = bin("t", 1);
    msg.seq = 1;
    msg.epoch = 0x0123456789abcdefULL;
    text = dump(&msg, "x");
    assert_string_equal(text,
                        "{\"topic\":\"t\",\"id\":\"x\",\"seq\":1,\"epoch\":\"0123456789abcdef\","
                        "\"data\":\"\",\"time\":0}");
    free(text);
}

static void test_binary_message(void **state)
{
    Herald__V1__Message msg = HERALD__V1__MESSAGE__INIT;
    uint8_t all[256];
    json_t *obj;
    const char *data;
    uint8_t *back;
    size_t back_len;
    char *text;
    (void)state;

    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    msg.topic = bin("bin", 3);
    msg.seq = 2;
    msg.epoch = UINT64_MAX;
    msg.data.len = sizeof all;
    msg.data.data = all;
    msg.time_ms = 5;
    obj = hr_msgjson_from_message(&msg, "id");
    assert_non_null(obj);
    assert_string_equal(json_string_value(json_object_get(obj, "encoding")), "base64");
    assert_string_equal(json_string_value(json_object_get(obj, "epoch")), "ffffffffffffffff");
    data = json_string_value(json_object_get(obj, "data"));
    assert_int_equal(strlen(data), 344);
    assert_int_equal(hr_base64_decode(data, strlen(data), &back, &back_len), 0);
    assert_int_equal(back_len, 256);
    assert_memory_equal(back, all, 256);
    hr_free(back);
    json_decref(obj);

    /* Exact text, with "encoding" right after "data". */
    msg.data = bin("\xff\xfe\x00", 3);
    text = dump(&msg, "id");
    assert_string_equal(text,
                        "{\"topic\":\"bin\",\"id\":\"id\",\"seq\":2,\"epoch\":\"ffffffffffffffff\","
                        "\"data\":\"//4A\",\"encoding\":\"base64\",\"time\":5}");
    free(text);
}

static void test_utf8_boundaries(void **state)
{
    Herald__V1__Message msg = HERALD__V1__MESSAGE__INIT;
    json_t *obj;
    (void)state;

    msg.topic = bin("t", 1);
    /* Valid UTF-8, including NUL and a 4-byte sequence: text. */
    msg.data = bin("a\0b\xf0\x9f\x98\x80", 7);
    obj = hr_msgjson_from_message(&msg, "id");
    assert_null(json_object_get(obj, "encoding"));
    assert_int_equal(json_string_length(json_object_get(obj, "data")), 7);
    json_decref(obj);
    /* Overlong, surrogate, truncated, stray continuation: binary. */
    const char *bad[] = {"\xc0\xaf", "\xed\xa0\x80", "\xe2\x82", "\x80", "ok\xff"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msg.data = bin(bad[i], strlen(bad[i]));
        obj = hr_msgjson_from_message(&msg, "id");
        assert_string_equal(json_string_value(json_object_get(obj, "encoding")), "base64");
        json_decref(obj);
    }
    /* Fields that must be text but are not UTF-8: no object. */
    msg.data = bin("ok", 2);
    msg.event = bin("\xff", 1);
    assert_null(hr_msgjson_from_message(&msg, "id"));
    msg.event = bin("", 0);
    msg.topic = bin("\xc3", 1);
    assert_null(hr_msgjson_from_message(&msg, "id"));
}

static void test_epoch_hex(void **state)
{
    char buf[17];
    (void)state;

    hr_epoch_hex(0, buf);
    assert_string_equal(buf, "0000000000000000");
    hr_epoch_hex(0x0123456789abcdefULL, buf);
    assert_string_equal(buf, "0123456789abcdef");
    hr_epoch_hex(UINT64_MAX, buf);
    assert_string_equal(buf, "ffffffffffffffff");
    hr_epoch_hex(0xA, buf);
    assert_string_equal(buf, "000000000000000a");
}

static void test_base64_vectors(void **state)
{
    /* RFC 4648 §10. */
    const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    (void)state;

    for (size_t i = 0; i < 7; i++) {
        size_t len = 99;
        char *enc = hr_base64_encode((const uint8_t *)plain[i], strlen(plain[i]), &len);
        uint8_t *dec;
        assert_string_equal(enc, coded[i]);
        assert_int_equal(len, strlen(coded[i]));
        hr_free(enc);
        assert_int_equal(hr_base64_decode(coded[i], strlen(coded[i]), &dec, &len), 0);
        assert_int_equal(len, strlen(plain[i]));
        if (len > 0)
            assert_memory_equal(dec, plain[i], len);
        hr_free(dec);
    }
}

static void test_base64_large(void **state)
{
    size_t n = 5 * 1024 * 1024 + 1; /* crosses the internal chunk size */
    uint8_t *in = malloc(n);
    uint8_t *back;
    size_t len, back_len;
    char *enc;
    (void)state;

    for (size_t i = 0; i < n; i++)
        in[i] = (uint8_t)(i * 31 + (i >> 8));
    enc = hr_base64_encode(in, n, &len);
    assert_int_equal(len, (n + 2) / 3 * 4);
    assert_int_equal(strlen(enc), len);
    assert_int_equal(hr_base64_decode(enc, len, &back, &back_len), 0);
    assert_int_equal(back_len, n);
    assert_memory_equal(back, in, n);
    hr_free(back);
    hr_free(enc);
    free(in);
}

static void test_base64_refused(void **state)
{
    const char *bad[] = {
        "Zg=",          /* length not a multiple of 4 */
        "Zg",           /* padding required */
        "Zm9vY",        /* */
        "Zm9v\n",       /* whitespace */
        " Zm9v",        /* */
        "Zm9v ",        /* */
        "Zm 9v",        /* */
        "Zm9v\r\n",     /* */
        "Zm-v",         /* base64url alphabet */
        "Zm_v",         /* */
        "Z===",         /* too much padding */
        "====",         /* */
        "=Zm9",         /* padding first */
        "Zg==Zg==",     /* padding in the middle */
        "Zm=v",         /* */
        "Zh==",         /* nonzero unused bits */
        "Zm9=",         /* */
        "Zm9v\xc3\xa9", /* non-ASCII */
        "Zm*v",         /* */
    };
    uint8_t *out = (uint8_t *)"sentinel";
    size_t len = 99;
    (void)state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(hr_base64_decode(bad[i], strlen(bad[i]), &out, &len),
                         HR_E_INVALID_REQUEST);
        assert_null(out);
        assert_int_equal(len, 0);
    }
    assert_int_equal(hr_base64_decode("Zm9v\0\0\0\0", 8, &out, &len), HR_E_INVALID_REQUEST);
    /* `len` bounds the text. */
    assert_int_equal(hr_base64_decode("Zm9vjunk", 4, &out, &len), 0);
    assert_int_equal(len, 3);
    hr_free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_message),   cmocka_unit_test(test_omitted_fields_and_empty_data),
        cmocka_unit_test(test_binary_message), cmocka_unit_test(test_utf8_boundaries),
        cmocka_unit_test(test_epoch_hex),      cmocka_unit_test(test_base64_vectors),
        cmocka_unit_test(test_base64_large),   cmocka_unit_test(test_base64_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
