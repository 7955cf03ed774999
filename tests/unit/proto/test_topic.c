/* hr_topic: the naming rules of DESIGN.md §Data model and the exact explanations users see. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "hr_error.h"
#include "topic.h"

#define TOPIC_BYTES "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:@"

static int topic(const char *name, size_t len, char *why)
{
    return hr_topic_validate(name, len, why, 128);
}

static void test_topic_valid(void **state)
{
    char why[128] = "unchanged";
    char name[HR_TOPIC_MAX];
    (void)state;

    assert_int_equal(topic("news", 4, why), 0);
    assert_string_equal(why, "");
    assert_int_equal(topic("a", 1, why), 0);
    assert_int_equal(topic(TOPIC_BYTES, strlen(TOPIC_BYTES), why), 0);
    assert_int_equal(topic("chat:room@1.users", 17, why), 0);
    memset(name, 'x', sizeof name);
    assert_int_equal(topic(name, 255, why), 0);
    /* `why` is optional. */
    assert_int_equal(hr_topic_validate("news", 4, NULL, 0), 0);
}

static void test_topic_each_punctuation(void **state)
{
    const char *punct = "_-.:@";
    char why[128];
    (void)state;

    for (const char *p = punct; *p != '\0'; p++) {
        char name[3] = {'a', *p, 'b'};
        assert_int_equal(topic(name, 3, why), 0);
        assert_int_equal(topic(p, 1, why), 0); /* alone, too */
    }
}

static void test_topic_every_byte(void **state)
{
    char why[128];
    (void)state;

    for (int c = 0; c < 256; c++) {
        char name[2] = {'a', (char)c};
        int allowed = c != 0 && strchr(TOPIC_BYTES, c) != NULL;
        assert_int_equal(topic(name, 2, why), allowed ? 0 : HR_E_INVALID_TOPIC);
    }
}

static void test_topic_empty(void **state)
{
    char why[128];
    (void)state;

    assert_int_equal(topic("", 0, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "topic is empty");
}

static void test_topic_too_long(void **state)
{
    char why[128];
    char name[300];
    (void)state;

    memset(name, 'x', sizeof name);
    assert_int_equal(topic(name, 256, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "topic is 256 bytes; the limit is 255");
    assert_int_equal(topic(name, 300, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "topic is 300 bytes; the limit is 255");
}

static void test_topic_bad_bytes(void **state)
{
    char why[128];
    (void)state;

    assert_int_equal(topic("abc/def", 7, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0x2f ('/') at offset 3 is not allowed");
    assert_int_equal(topic("a b", 3, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0x20 (' ') at offset 1 is not allowed");
    assert_int_equal(topic("caf\xc3\xa9", 5, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0xc3 at offset 3 is not allowed");
    assert_int_equal(topic("a\0b", 3, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0x00 at offset 1 is not allowed");
    assert_int_equal(topic("ab\n", 3, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0x0a at offset 2 is not allowed");
    assert_int_equal(topic("a*", 2, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0x2a ('*') at offset 1 is not allowed");
    assert_int_equal(topic("\x7f", 1, why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "byte 0x7f at offset 0 is not allowed");
}

static void test_why_truncated(void **state)
{
    char why[8];
    (void)state;

    memset(why, '#', sizeof why);
    assert_int_equal(hr_topic_validate("", 0, why, sizeof why), HR_E_INVALID_TOPIC);
    assert_string_equal(why, "topic i");
    assert_int_equal(hr_topic_validate("", 0, why, 0), HR_E_INVALID_TOPIC);
}

static void test_event(void **state)
{
    char why[128];
    char ev[70];
    (void)state;

    assert_int_equal(hr_event_validate("", 0, why, sizeof why), 0);
    assert_int_equal(hr_event_validate("update", 6, why, sizeof why), 0);
    assert_string_equal(why, "");
    assert_int_equal(hr_event_validate("!~{}/\"'", 7, why, sizeof why), 0);
    assert_int_equal(hr_event_validate("herald", 6, why, sizeof why), 0);
    assert_int_equal(hr_event_validate("heraldx.y", 9, why, sizeof why), 0);
    assert_int_equal(hr_event_validate("my.herald.x", 11, why, sizeof why), 0);
    memset(ev, 'e', sizeof ev);
    assert_int_equal(hr_event_validate(ev, 64, why, sizeof why), 0);

    assert_int_equal(hr_event_validate(ev, 65, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "event type is 65 bytes; the limit is 64");
    assert_int_equal(hr_event_validate("herald.reset", 12, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "event types starting with 'herald.' are reserved");
    assert_int_equal(hr_event_validate("herald.", 7, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "event types starting with 'herald.' are reserved");
    assert_int_equal(hr_event_validate("a b", 3, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "byte 0x20 (' ') at offset 1 is not allowed in an event type");
    assert_int_equal(hr_event_validate("ab\r\n", 4, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "byte 0x0d at offset 2 is not allowed in an event type");
    assert_int_equal(hr_event_validate("\xc3\xa9", 2, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "byte 0xc3 at offset 0 is not allowed in an event type");
    assert_int_equal(hr_event_validate("\x7f", 1, why, sizeof why), HR_E_INVALID_REQUEST);

    for (int c = 0; c < 256; c++) {
        char one = (char)c;
        assert_int_equal(hr_event_validate(&one, 1, NULL, 0),
                         c >= 0x21 && c <= 0x7e ? 0 : HR_E_INVALID_REQUEST);
    }
}

static void test_content_type(void **state)
{
    char why[128];
    char ct[300];
    const char *json = "application/json; charset=utf-8";
    (void)state;

    assert_int_equal(hr_content_type_validate("", 0, why, sizeof why), 0);
    assert_int_equal(hr_content_type_validate(json, strlen(json), why, sizeof why), 0);
    assert_string_equal(why, "");
    memset(ct, 'c', sizeof ct);
    assert_int_equal(hr_content_type_validate(ct, 255, why, sizeof why), 0);
    assert_int_equal(hr_content_type_validate(ct, 256, why, sizeof why), HR_E_INVALID_REQUEST);
    assert_string_equal(why, "content type is 256 bytes; the limit is 255");
    assert_int_equal(hr_content_type_validate("text/plain\r\nX-Evil: 1", 21, why, sizeof why),
                     HR_E_INVALID_REQUEST);
    assert_string_equal(why, "byte 0x0d at offset 10 is not allowed in a content type");
    assert_int_equal(hr_content_type_validate("text/\xff", 6, why, sizeof why),
                     HR_E_INVALID_REQUEST);
    assert_string_equal(why, "byte 0xff at offset 5 is not allowed in a content type");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_valid),      cmocka_unit_test(test_topic_each_punctuation),
        cmocka_unit_test(test_topic_every_byte), cmocka_unit_test(test_topic_empty),
        cmocka_unit_test(test_topic_too_long),   cmocka_unit_test(test_topic_bad_bytes),
        cmocka_unit_test(test_why_truncated),    cmocka_unit_test(test_event),
        cmocka_unit_test(test_content_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
