#include "msg.h"

#include "hr_alloc.h"
#include "msgjson.h"
#include "partition.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

hr_payload_t *hr_payload_new(size_t len)
{
    hr_payload_t *p = hr_malloc(sizeof *p + len);
    p->refs = 1;
    p->len = (uint32_t)len;
    return p;
}

hr_payload_t *hr_payload_ref(hr_payload_t *p)
{
    p->refs++;
    return p;
}

void hr_payload_unref(hr_payload_t **p)
{
    if (*p != NULL && --(*p)->refs == 0)
        hr_free(*p);
    *p = NULL;
}

hr_msg_t *hr_msg_from_proto(const Herald__V1__Message *m)
{
    size_t extra = m->topic.len + m->event.len + m->content_type.len + m->data.len;
    hr_msg_t *msg = hr_calloc(1, sizeof *msg + extra);
    char *p = (char *)(msg + 1);
    msg->refs = 1;
    msg->seq = m->seq;
    msg->epoch = m->epoch;
    msg->time_ms = m->time_ms;
    /* An empty protobuf bytes field has data NULL: memcpy(p, NULL, 0) is undefined (C11
     * 7.24.1p2), so copy only what is there. */
#define HR_MSG_COPY(field)                                                                         \
    do {                                                                                           \
        if (m->field.len > 0)                                                                      \
            memcpy(p, m->field.data, m->field.len);                                                \
        msg->field = (void *)p;                                                                    \
        msg->field##_len = m->field.len;                                                           \
        p += m->field.len;                                                                         \
    } while (0)
    HR_MSG_COPY(topic);
    HR_MSG_COPY(event);
    HR_MSG_COPY(content_type);
    HR_MSG_COPY(data);
#undef HR_MSG_COPY
    msg->topic_hash = hr_fnv1a64(msg->topic, msg->topic_len);
    return msg;
}

hr_msg_t *hr_msg_ref(hr_msg_t *msg)
{
    msg->refs++;
    return msg;
}

void hr_msg_unref(hr_msg_t **msg)
{
    hr_msg_t *m = *msg;
    *msg = NULL;
    if (m == NULL || --m->refs > 0)
        return;
    for (int i = 0; i < HR_ENC_COUNT; i++)
        hr_payload_unref(&m->enc[i]);
    hr_free(m);
}

static void hr_buf_append(char **buf, size_t *cap, size_t *len, const void *bytes, size_t n)
{
    if (*len + n > *cap) {
        while (*len + n > *cap)
            *cap = *cap ? *cap * 2 : 256;
        *buf = hr_realloc(*buf, *cap);
    }
    memcpy(*buf + *len, bytes, n);
    *len += n;
}

size_t hr_sse_data_lines(char **buf, size_t *cap, size_t len, const char *text, size_t text_len)
{
    /* WHATWG HTML §9.2.6: CRLF, a lone LF and a lone CR each end a line; the browser joins data
     * lines with LF. So the text's lines become data lines one for one. */
    size_t start = 0;
    for (size_t i = 0; i <= text_len; i++) {
        if (i < text_len && text[i] != '\r' && text[i] != '\n')
            continue;
        hr_buf_append(buf, cap, &len, "data: ", 6);
        hr_buf_append(buf, cap, &len, text + start, i - start);
        hr_buf_append(buf, cap, &len, "\n", 1);
        if (i < text_len && text[i] == '\r' && i + 1 < text_len && text[i + 1] == '\n')
            i++;
        start = i + 1;
    }
    return len;
}

/* The message JSON of DESIGN.md §Client contract with "type":"message" first and without its
 * closing "}" and id, ending in ,"id":" so the transport appends CURSOR"}. */
static json_t *hr_msg_json(const hr_msg_t *m)
{
    Herald__V1__Message pm = HERALD__V1__MESSAGE__INIT;
    pm.topic = (ProtobufCBinaryData){m->topic_len, (uint8_t *)m->topic};
    pm.seq = m->seq;
    pm.epoch = m->epoch;
    pm.event = (ProtobufCBinaryData){m->event_len, (uint8_t *)m->event};
    pm.content_type = (ProtobufCBinaryData){m->content_type_len, (uint8_t *)m->content_type};
    pm.data = (ProtobufCBinaryData){m->data_len, (uint8_t *)m->data};
    pm.time_ms = m->time_ms;
    json_t *j = hr_msgjson_from_message(&pm, "");
    json_object_del(j, "id");
    return j;
}

static hr_payload_t *hr_msg_encode_json(const hr_msg_t *m, const char *prefix, size_t prefix_len,
                                        bool typed)
{
    json_t *body = json_object();
    if (typed)
        json_object_set_new(body, "type", json_string("message"));
    json_t *fields = hr_msg_json(m);
    json_object_update(body, fields);
    json_decref(fields);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    size_t text_len = strlen(text);
    /* text ends with '}': replace it with ,"id":" */
    static const char tail[] = ",\"id\":\"";
    hr_payload_t *p = hr_payload_new(prefix_len + text_len - 1 + sizeof tail - 1);
    memcpy(p->data, prefix, prefix_len);
    memcpy(p->data + prefix_len, text, text_len - 1);
    memcpy(p->data + prefix_len + text_len - 1, tail, sizeof tail - 1);
    free(text);
    return p;
}

static bool hr_is_utf8(const uint8_t *data, size_t len)
{
    /* jansson validates UTF-8 when it builds a string: the one validator in the project. */
    json_t *s = json_stringn((const char *)data, len);
    json_decref(s);
    return s != NULL;
}

static hr_payload_t *hr_msg_encode_sse(const hr_msg_t *m, hr_encoding_t enc)
{
    char *buf = NULL;
    size_t cap = 0, len = 0;
    if (m->event_len > 0) {
        hr_buf_append(&buf, &cap, &len, "event: ", 7);
        hr_buf_append(&buf, &cap, &len, m->event, m->event_len);
        hr_buf_append(&buf, &cap, &len, "\n", 1);
    }
    hr_payload_t *p;
    if (enc == HR_ENC_SSE_JSON) {
        hr_payload_t *json = hr_msg_encode_json(m, "data: ", 6, false);
        p = hr_payload_new(len + json->len);
        if (len > 0) /* buf is NULL for an untyped message */
            memcpy(p->data, buf, len);
        memcpy(p->data + len, json->data, json->len);
        hr_payload_unref(&json);
    } else {
        if (hr_is_utf8(m->data, m->data_len)) {
            len = hr_sse_data_lines(&buf, &cap, len, (const char *)m->data, m->data_len);
        } else {
            size_t b64_len;
            char *b64 = hr_base64_encode(m->data, m->data_len, &b64_len);
            len = hr_sse_data_lines(&buf, &cap, len, b64, b64_len);
            hr_free(b64);
        }
        hr_buf_append(&buf, &cap, &len, "\n", 1);
        p = hr_payload_new(len);
        memcpy(p->data, buf, len);
    }
    hr_free(buf);
    return p;
}

hr_payload_t *hr_msg_encoded(hr_msg_t *msg, hr_encoding_t enc)
{
    if (msg->enc[enc] != NULL)
        return msg->enc[enc];
    switch (enc) {
    case HR_ENC_SSE_DATA:
    case HR_ENC_SSE_JSON:
        msg->enc[enc] = hr_msg_encode_sse(msg, enc);
        break;
    case HR_ENC_JSON:
    default:
        msg->enc[enc] = hr_msg_encode_json(msg, "", 0, true);
        break;
    }
    return msg->enc[enc];
}
