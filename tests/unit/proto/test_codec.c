/* hr_codec: the checks every receiver of a Request, Reply or Message relies on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "codec.h"
#include "hr_alloc.h"
#include "hr_error.h"

#define MIB (1024 * 1024)

static ProtobufCBinaryData bin(const char *s)
{
    ProtobufCBinaryData b = {strlen(s), (uint8_t *)s};
    return b;
}

static void assert_bin(ProtobufCBinaryData b, const char *s)
{
    assert_int_equal(b.len, strlen(s));
    if (b.len > 0)
        assert_memory_equal(b.data, s, b.len);
}

static void test_publish_round_trip(void **state)
{
    Herald__V1__Request req = HERALD__V1__REQUEST__INIT;
    Herald__V1__PublishRequest pub = HERALD__V1__PUBLISH_REQUEST__INIT;
    Herald__V1__PublishMessage m1 = HERALD__V1__PUBLISH_MESSAGE__INIT;
    Herald__V1__PublishMessage m2 = HERALD__V1__PUBLISH_MESSAGE__INIT;
    Herald__V1__PublishMessage *msgs[] = {&m1, &m2};
    hr_request_t *out = NULL;
    uint8_t *buf;
    size_t len;
    char why[128] = "unchanged";
    (void)state;

    m1.topic = bin("news");
    m1.event = bin("update");
    m1.content_type = bin("text/plain");
    m1.data = bin("hello");
    m1.idempotency_key = bin("k1");
    m2.topic = bin("chat:room@1");
    m2.data.len = 3;
    m2.data.data = (uint8_t *)"\x00\xff\x80";
    pub.n_messages = 2;
    pub.messages = msgs;
    req.version = 1;
    req.request_id = 42;
    req.forwarded = 1;
    req.body_case = HERALD__V1__REQUEST__BODY_PUBLISH;
    req.publish = &pub;

    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(len, herald__v1__request__get_packed_size(&req));
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, why, sizeof why), 0);
    assert_string_equal(why, "");
    assert_non_null(out);
    assert_int_equal(out->version, 1);
    assert_int_equal(out->request_id, 42);
    assert_int_equal(out->forwarded, 1);
    assert_int_equal(out->body_case, HERALD__V1__REQUEST__BODY_PUBLISH);
    assert_int_equal(out->publish->n_messages, 2);
    assert_bin(out->publish->messages[0]->topic, "news");
    assert_bin(out->publish->messages[0]->event, "update");
    assert_bin(out->publish->messages[0]->content_type, "text/plain");
    assert_bin(out->publish->messages[0]->data, "hello");
    assert_bin(out->publish->messages[0]->idempotency_key, "k1");
    assert_bin(out->publish->messages[1]->topic, "chat:room@1");
    assert_int_equal(out->publish->messages[1]->data.len, 3);
    assert_memory_equal(out->publish->messages[1]->data.data, "\x00\xff\x80", 3);
    assert_int_equal(out->publish->messages[1]->event.len, 0);
    hr_codec_request_free(&out);
    assert_null(out);
    hr_codec_request_free(&out); /* NULL is fine */

    /* Exactly at the limit is accepted; one byte over is not. */
    assert_int_equal(hr_codec_decode_request(buf, len, len, &out, NULL, 0), 0);
    hr_codec_request_free(&out);
    assert_int_equal(hr_codec_decode_request(buf, len, len - 1, &out, why, sizeof why),
                     HR_E_PAYLOAD_TOO_LARGE);
    assert_null(out);
    hr_free(buf);
}

static void test_other_request_types(void **state)
{
    Herald__V1__Request req = HERALD__V1__REQUEST__INIT;
    Herald__V1__FetchRequest fetch = HERALD__V1__FETCH_REQUEST__INIT;
    Herald__V1__Hello hello = HERALD__V1__HELLO__INIT;
    Herald__V1__Heartbeat hb = HERALD__V1__HEARTBEAT__INIT;
    Herald__V1__StatsRequest stats = HERALD__V1__STATS_REQUEST__INIT;
    hr_request_t *out;
    uint8_t *buf;
    size_t len;
    (void)state;

    fetch.topic = bin("news");
    fetch.after_seq = 10;
    fetch.epoch = 0xfedcba9876543210ULL;
    fetch.limit = 5;
    req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
    req.fetch = &fetch;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, NULL, 0), 0);
    assert_int_equal(out->body_case, HERALD__V1__REQUEST__BODY_FETCH);
    assert_bin(out->fetch->topic, "news");
    assert_int_equal(out->fetch->after_seq, 10);
    assert_true(out->fetch->epoch == 0xfedcba9876543210ULL);
    assert_int_equal(out->fetch->limit, 5);
    /* version 0 (unset) reads as 1 */
    assert_int_equal(out->version, 0);
    hr_codec_request_free(&out);
    hr_free(buf);

    hello.version = 1;
    hello.client = "test";
    req.body_case = HERALD__V1__REQUEST__BODY_HELLO;
    req.hello = &hello;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, NULL, 0), 0);
    assert_int_equal(out->body_case, HERALD__V1__REQUEST__BODY_HELLO);
    assert_string_equal(out->hello->client, "test");
    hr_codec_request_free(&out);
    hr_free(buf);

    hb.node_id = 3;
    hb.time_ms = 1700000000000ULL;
    req.body_case = HERALD__V1__REQUEST__BODY_HEARTBEAT;
    req.heartbeat = &hb;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, NULL, 0), 0);
    assert_int_equal(out->body_case, HERALD__V1__REQUEST__BODY_HEARTBEAT);
    assert_int_equal(out->heartbeat->node_id, 3);
    assert_true(out->heartbeat->time_ms == 1700000000000ULL);
    hr_codec_request_free(&out);
    hr_free(buf);

    /* An empty message body still sets the oneof. */
    req.body_case = HERALD__V1__REQUEST__BODY_STATS;
    req.stats = &stats;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(len, 2);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, NULL, 0), 0);
    assert_int_equal(out->body_case, HERALD__V1__REQUEST__BODY_STATS);
    hr_codec_request_free(&out);
    hr_free(buf);
}

static void test_malformed(void **state)
{
    hr_request_t *out = (hr_request_t *)&out; /* not NULL: must be reset */
    char why[128];
    (void)state;

    assert_int_equal(
        hr_codec_decode_request((const uint8_t *)"\xff\xff\xff", 3, MIB, &out, why, sizeof why),
        HR_E_PROTO);
    assert_null(out);
    assert_string_equal(why, "not a valid herald.v1.Request");
    /* A publish whose length prefix runs past the end. */
    assert_int_equal(
        hr_codec_decode_request((const uint8_t *)"\x52\x10\x0a", 3, MIB, &out, NULL, 0),
        HR_E_PROTO);
    assert_null(out);
    /* Wrong wire type for field 1 (version as length-delimited). */
    assert_int_equal(
        hr_codec_decode_request((const uint8_t *)"\x0a\x01\x01", 3, MIB, &out, NULL, 0),
        HR_E_PROTO);
}

static void test_field_number_zero(void **state)
{
    /* Field 0 spelled with a redundant tag byte: protobuf-c would accept it but could not read
     * its own re-encoding of it, so it is refused at any depth. */
    const struct {
        const char *bytes;
        size_t len;
    } cases[] = {
        {"\x82\x00\x00", 3},                 /* top level */
        {"\x52\x03\x82\x00\x00", 5},         /* inside the publish body */
        {"\x52\x05\x0a\x03\x82\x00\x00", 7}, /* inside a repeated PublishMessage */
        {"\x5a\x05\x10\x01\x82\x00\x00", 7}, /* inside a fetch, after a known field */
    };
    hr_request_t *out;
    Herald__V1__Message *msg;
    hr_reply_t *reply;
    (void)state;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(hr_codec_decode_request((const uint8_t *)cases[i].bytes, cases[i].len, MIB,
                                                 &out, NULL, 0),
                         HR_E_PROTO);
        assert_null(out);
    }
    assert_int_equal(
        hr_codec_decode_reply((const uint8_t *)"\x82\x00\x00", 3, MIB, &reply, NULL, 0),
        HR_E_PROTO);
    assert_null(reply);
    assert_int_equal(hr_codec_decode_message((const uint8_t *)"\x82\x00\x00", 3, MIB, &msg),
                     HR_E_PROTO);
    assert_null(msg);
    /* Control: the same publish body without the stray field decodes. */
    assert_int_equal(
        hr_codec_decode_request((const uint8_t *)"\x52\x02\x0a\x00", 4, MIB, &out, NULL, 0), 0);
    assert_int_equal(out->publish->n_messages, 1);
    hr_codec_request_free(&out);
}

static void test_oversize(void **state)
{
    static uint8_t big[MIB + 1];
    hr_request_t *out;
    char why[128];
    (void)state;

    assert_int_equal(hr_codec_decode_request(big, sizeof big, MIB, &out, why, sizeof why),
                     HR_E_PAYLOAD_TOO_LARGE);
    assert_null(out);
    assert_string_equal(why, "request is 1048577 bytes; the limit is 1048576");
}

static void test_future_version(void **state)
{
    Herald__V1__Request req = HERALD__V1__REQUEST__INIT;
    Herald__V1__StatsRequest stats = HERALD__V1__STATS_REQUEST__INIT;
    hr_request_t *out;
    uint8_t *buf;
    size_t len;
    char why[128];
    (void)state;

    req.version = 2;
    req.request_id = 77;
    req.body_case = HERALD__V1__REQUEST__BODY_STATS;
    req.stats = &stats;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, why, sizeof why), HR_E_VERSION);
    assert_non_null(out);
    assert_int_equal(out->request_id, 77); /* so the error reply can echo it */
    assert_string_equal(why, "request protocol version 2 is not supported; this build speaks 1");
    hr_codec_request_free(&out);
    hr_free(buf);

    req.version = 1;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, why, sizeof why), 0);
    hr_codec_request_free(&out);
    hr_free(buf);
}

static void test_no_body(void **state)
{
    Herald__V1__Request req = HERALD__V1__REQUEST__INIT;
    hr_request_t *out;
    uint8_t *buf;
    size_t len;
    char why[128];
    (void)state;

    req.version = 1;
    req.request_id = 9;
    hr_codec_encode_request(&req, &buf, &len);
    assert_int_equal(hr_codec_decode_request(buf, len, MIB, &out, why, sizeof why),
                     HR_E_INVALID_REQUEST);
    assert_non_null(out);
    assert_int_equal(out->request_id, 9);
    assert_string_equal(why, "unknown or missing request type");
    hr_codec_request_free(&out);
    hr_free(buf);

    /* Zero bytes are an empty Request: no body either. */
    assert_int_equal(hr_codec_decode_request((const uint8_t *)"", 0, MIB, &out, why, sizeof why),
                     HR_E_INVALID_REQUEST);
    assert_non_null(out);
    hr_codec_request_free(&out);

    /* A body field this build does not know (field 20, varint 5) is an unknown type. */
    assert_int_equal(hr_codec_decode_request((const uint8_t *)"\x08\x01\x10\x05\xa0\x01\x05", 7,
                                             MIB, &out, why, sizeof why),
                     HR_E_INVALID_REQUEST);
    assert_int_equal(out->request_id, 5);
    assert_string_equal(why, "unknown or missing request type");
    hr_codec_request_free(&out);
}

static void test_reply(void **state)
{
    Herald__V1__Reply reply = HERALD__V1__REPLY__INIT;
    Herald__V1__Error err = HERALD__V1__ERROR__INIT;
    hr_reply_t *out;
    uint8_t *buf;
    size_t len;
    char why[128];
    (void)state;

    err.code = "invalid_topic";
    err.message = "topic is empty";
    reply.version = 1;
    reply.request_id = 12;
    reply.body_case = HERALD__V1__REPLY__BODY_ERROR;
    reply.error = &err;
    hr_codec_encode_reply(&reply, &buf, &len);
    assert_int_equal(hr_codec_decode_reply(buf, len, MIB, &out, why, sizeof why), 0);
    assert_int_equal(out->request_id, 12);
    assert_int_equal(out->body_case, HERALD__V1__REPLY__BODY_ERROR);
    assert_string_equal(out->error->code, "invalid_topic");
    assert_string_equal(out->error->message, "topic is empty");
    hr_codec_reply_free(&out);
    assert_null(out);
    assert_int_equal(hr_codec_decode_reply(buf, len, len - 1, &out, why, sizeof why),
                     HR_E_PAYLOAD_TOO_LARGE);
    assert_string_equal(why, "reply is 37 bytes; the limit is 36");
    hr_free(buf);

    reply.version = 3;
    hr_codec_encode_reply(&reply, &buf, &len);
    assert_int_equal(hr_codec_decode_reply(buf, len, MIB, &out, why, sizeof why), HR_E_VERSION);
    assert_non_null(out);
    hr_codec_reply_free(&out);
    hr_free(buf);

    reply.version = 1;
    reply.body_case = HERALD__V1__REPLY__BODY__NOT_SET;
    hr_codec_encode_reply(&reply, &buf, &len);
    assert_int_equal(hr_codec_decode_reply(buf, len, MIB, &out, why, sizeof why),
                     HR_E_INVALID_REQUEST);
    assert_string_equal(why, "unknown or missing reply type");
    hr_codec_reply_free(&out);
    hr_free(buf);

    assert_int_equal(
        hr_codec_decode_reply((const uint8_t *)"\xff\xff\xff", 3, MIB, &out, why, sizeof why),
        HR_E_PROTO);
    assert_null(out);
    assert_string_equal(why, "not a valid herald.v1.Reply");
}

static void test_message(void **state)
{
    Herald__V1__Message msg = HERALD__V1__MESSAGE__INIT;
    Herald__V1__Message *out;
    size_t len = 0;
    uint8_t *buf;
    (void)state;

    msg.topic = bin("news");
    msg.seq = 5;
    msg.epoch = 0x0102030405060708ULL;
    msg.data = bin("x");
    msg.time_ms = 1234;
    len = herald__v1__message__get_packed_size(&msg);
    buf = hr_malloc(len);
    herald__v1__message__pack(&msg, buf);
    assert_int_equal(hr_codec_decode_message(buf, len, MIB, &out), 0);
    assert_bin(out->topic, "news");
    assert_int_equal(out->seq, 5);
    assert_true(out->epoch == 0x0102030405060708ULL);
    assert_bin(out->data, "x");
    assert_int_equal(out->time_ms, 1234);
    hr_codec_message_free(&out);
    assert_null(out);
    assert_int_equal(hr_codec_decode_message(buf, len, len - 1, &out), HR_E_PAYLOAD_TOO_LARGE);
    assert_null(out);
    assert_int_equal(hr_codec_decode_message(buf, len - 1, MIB, &out), HR_E_PROTO);
    assert_null(out);
    hr_free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_round_trip),
        cmocka_unit_test(test_other_request_types),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_future_version),
        cmocka_unit_test(test_no_body),
        cmocka_unit_test(test_reply),
        cmocka_unit_test(test_message),
        cmocka_unit_test(test_field_number_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
