/*
 * The edge's HTTP API: one route table (the transports register here, one line each),
 * publishing over HTTP, history, health, readiness, Prometheus metrics and the demo page.
 */
#include "api.h"

#include "brokers.h"
#include "codec.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "msgjson.h"
#include "partition.h"
#include "query.h"
#include "polling.h"
#include "sse.h"
#include "stream.h"
#include "sub.h"
#include "topic.h"
#include "ws.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MOD "api"

/* Most messages in one POST /v1/messages batch. */
/* Most messages in one POST /v1/messages batch: the broker's default --max-batch, since a batch
 * is one broker request and the broker refuses larger ones. */
#define HR_BATCH_MAX 8192
/* Default and largest page of GET /v1/topics/{topic}/messages. */
#define HR_HISTORY_LIMIT     100
#define HR_HISTORY_LIMIT_MAX 1000

extern const unsigned char hr_page_html[];
extern const unsigned long hr_page_html_len;

const char *const hr_transport_names[HR_TRANSPORT_COUNT] = {"sse", "poll", "stream", "ws"};

const double hr_latency_bounds_ms[HR_LATENCY_BUCKETS] = {0.5, 1,   2.5, 5,   10,   25,
                                                         50,  100, 250, 500, 1000, 2500};

uint64_t hr_edge_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static double hr_now_ms_precise(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

void hr_edge_observe_latency(hr_edge_t *edge, double ms)
{
    size_t i = 0;
    while (i < HR_LATENCY_BUCKETS && ms > hr_latency_bounds_ms[i])
        i++;
    edge->metrics.latency_buckets[i]++;
    edge->metrics.latency_sum_ms += ms;
}

/* ---- responses ---------------------------------------------------------------------------- */

static void hr_respond_json(hr_http_conn_t *conn, int status, json_t *body,
                            const hr_http_header_t *extra, size_t n_extra)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    hr_http_header_t headers[4] = {{"Content-Type", 12, "application/json", 16}};
    size_t n = 1;
    for (size_t i = 0; i < n_extra && n < 4; i++)
        headers[n++] = extra[i];
    hr_http_respond(conn, status, headers, n, text, strlen(text));
    free(text);
}

/* HTTP status for a broker error code (DESIGN.md §Client contract, Errors). */
static int hr_status_for_code(const char *code)
{
    static const struct {
        const char *code;
        int status;
    } map[] = {
        {"invalid_topic", 400},     {"invalid_cursor", 400},      {"invalid_request", 400},
        {"malformed_message", 400}, {"payload_too_large", 413},   {"storage_full", 507},
        {"unavailable", 503},       {"not_owner", 503},           {"not_found", 404},
        {"misconfigured", 503},     {"unsupported_version", 500},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(map[i].code, code) == 0)
            return map[i].status;
    return 500;
}

static void hr_respond_unavailable(hr_http_conn_t *conn, const char *message)
{
    static const hr_http_header_t retry = {"Retry-After", 11, "1", 1};
    json_t *body = json_pack("{s:{s:s, s:s}}", "error", "code", "unavailable", "message", message);
    hr_respond_json(conn, 503, body, &retry, 1);
}

static void hr_respond_broker_error(hr_http_conn_t *conn, const Herald__V1__Error *err)
{
    int status = hr_status_for_code(err->code);
    if (status == 503) {
        hr_respond_unavailable(conn, err->message);
        return;
    }
    hr_http_respond_error(conn, status, err->code, err->message);
}

/* ---- subscription parsing (shared by the transports) --------------------------------------- */

void hr_edge_request_free(hr_edge_request_t *r)
{
    for (size_t i = 0; i < r->n_topics; i++)
        hr_free(r->topics[i]);
    hr_free(r->topics);
    hr_free(r->topic_lens);
    hr_cursor_reset(&r->cursor);
    memset(r, 0, sizeof *r);
    hr_cursor_init(&r->cursor);
}

/* The cursor text of a header value: If-None-Match carries it as a (weak) entity tag. */
static const char *hr_etag_value(const char *v, size_t *len)
{
    /* RFC 9110 §13.1.2: "*" or a list of entity tags. "*" names no position; of a list, the
     * first tag is the one this edge sent (a client sends back the ETag it got). */
    if (*len == 1 && v[0] == '*')
        return NULL;
    for (size_t i = 0, quoted = 0; i < *len; i++) {
        if (v[i] == '"')
            quoted = !quoted;
        else if (v[i] == ',' && !quoted) {
            *len = i;
            break;
        }
    }
    while (*len > 0 && (v[*len - 1] == ' ' || v[*len - 1] == '\t'))
        (*len)--;
    if (*len >= 2 && v[0] == 'W' && v[1] == '/') {
        v += 2;
        *len -= 2;
    }
    if (*len >= 2 && v[0] == '"' && v[*len - 1] == '"') {
        v++;
        *len -= 2;
    }
    return v;
}

int hr_edge_parse_subscription(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req,
                               hr_edge_request_t *out)
{
    memset(out, 0, sizeof *out);
    hr_cursor_init(&out->cursor);
    size_t cap = (size_t)edge->config.max_topics;
    out->topics = hr_calloc(cap, sizeof *out->topics);
    out->topic_lens = hr_calloc(cap, sizeof *out->topic_lens);
    char name[32], why[192];
    char *value = hr_malloc(HR_CURSOR_MAX_TEXT + 2);
    char *query_cursor = NULL;
    size_t query_cursor_len = 0, value_len;
    hr_query_iter_t it;
    hr_query_init(&it, req->query, req->query_len);
    int rc;
    const char *code = NULL;
    while ((rc = hr_query_next(&it, name, sizeof name, value, HR_CURSOR_MAX_TEXT + 2,
                               &value_len)) != 0) {
        if (rc < 0) {
            code = "invalid_request";
            snprintf(why, sizeof why, "a query parameter is malformed or too long");
            goto fail;
        }
        if (strcmp(name, "topic") == 0) {
            if (hr_topic_validate(value, value_len, why, sizeof why) != 0) {
                code = "invalid_topic";
                goto fail;
            }
            bool dup = false;
            for (size_t i = 0; i < out->n_topics && !dup; i++)
                dup = out->topic_lens[i] == value_len &&
                      memcmp(out->topics[i], value, value_len) == 0;
            if (dup)
                continue;
            if (out->n_topics == cap) {
                code = "too_many_topics";
                snprintf(why, sizeof why, "a subscription may name at most %zu topics", cap);
                goto fail;
            }
            out->topics[out->n_topics] = hr_strndup(value, value_len);
            out->topic_lens[out->n_topics++] = value_len;
        } else if (strcmp(name, "cursor") == 0 || strcmp(name, "last_event_id") == 0) {
            hr_free(query_cursor);
            query_cursor = hr_strndup(value, value_len);
            query_cursor_len = value_len;
        }
    }
    if (out->n_topics == 0) {
        code = "invalid_request";
        snprintf(why, sizeof why, "at least one topic parameter is required");
        goto fail;
    }
    /* What the client runtime resent on its own is the newer position and wins (DESIGN.md
     * §Client contract): Last-Event-ID, then If-None-Match, then the query. */
    size_t hlen;
    const char *h = hr_http_header(req, "Last-Event-ID", &hlen);
    if (h == NULL) {
        h = hr_http_header(req, "If-None-Match", &hlen);
        if (h != NULL)
            h = hr_etag_value(h, &hlen);
    }
    if (h != NULL && hlen > 0) {
        if (hr_cursor_parse(&out->cursor, h, hlen) != 0)
            out->cursor_untrusted = true; /* a reset, then from the oldest retained message */
    } else if (query_cursor != NULL) {
        if (hr_cursor_parse(&out->cursor, query_cursor, query_cursor_len) != 0) {
            code = "invalid_cursor";
            snprintf(why, sizeof why,
                     "the cursor is not a Herald cursor (any edge's cursor works; this one does "
                     "not parse) (%zu bytes)",
                     query_cursor_len);
            goto fail;
        }
    }
    hr_free(query_cursor);
    hr_free(value);
    return 0;
fail:
    hr_free(query_cursor);
    hr_free(value);
    hr_edge_request_free(out);
    hr_http_respond_error(conn, 400, code, why);
    return -1;
}

/* ---- publishing --------------------------------------------------------------------------- */

typedef struct {
    hr_edge_t *edge;
    hr_http_conn_t *conn;
    hr_brokers_call_t *call;
    double started_ms;
    size_t n;
    char **topics; /* per message, for the reply */
    bool single;   /* POST /v1/topics/{topic}/messages: reply with one object */
} hr_publish_t;

static void hr_publish_free(hr_publish_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        hr_free(p->topics[i]);
    hr_free(p->topics);
    hr_free(p);
}

/* The client went away before the commit: the publish may still commit (it was sent); there
 * is just no one to tell. */
static void hr_publish_on_close(void *arg)
{
    hr_publish_t *p = arg;
    if (p->call != NULL)
        hr_brokers_cancel(p->call);
    hr_publish_free(p);
}

json_t *hr_edge_publish_result_json(const char *topic, const Herald__V1__PublishResult *r)
{
    char id[HR_CURSOR_TEXT_CAP(1)], epoch[17];
    hr_cursor_format_one(topic, strlen(topic), r->epoch, r->seq, id, sizeof id, NULL);
    hr_epoch_hex(r->epoch, epoch);
    return json_pack("{s:s, s:s, s:I, s:s, s:I, s:b}", "topic", topic, "id", id, "seq",
                     (json_int_t)r->seq, "epoch", epoch, "time", (json_int_t)r->time_ms,
                     "duplicate", r->duplicate);
}

static void hr_publish_on_reply(void *arg, int status, const hr_reply_t *reply)
{
    hr_publish_t *p = arg;
    p->call = NULL;
    hr_http_conn_set_close_cb(p->conn, NULL, NULL);
    hr_edge_t *edge = p->edge;
    if (status != 0) {
        edge->metrics.publish_errors++;
        hr_respond_unavailable(p->conn, "the broker owning this topic cannot be reached");
    } else if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR) {
        edge->metrics.publish_errors++;
        hr_respond_broker_error(p->conn, reply->error);
    } else if (reply->body_case != HERALD__V1__REPLY__BODY_PUBLISH ||
               reply->publish->n_results != p->n) {
        edge->metrics.publish_errors++;
        hr_http_respond_error(p->conn, 500, "internal", "unexpected reply from the broker");
    } else {
        hr_edge_observe_latency(edge, hr_now_ms_precise() - p->started_ms);
        edge->metrics.messages_in += p->n;
        json_t *body;
        if (p->single) {
            body = hr_edge_publish_result_json(p->topics[0], reply->publish->results[0]);
        } else {
            json_t *list = json_array();
            for (size_t i = 0; i < p->n; i++)
                json_array_append_new(
                    list, hr_edge_publish_result_json(p->topics[i], reply->publish->results[i]));
            body = json_pack("{s:o}", "messages", list);
        }
        hr_respond_json(p->conn, 201, body, NULL, 0);
    }
    hr_publish_free(p);
}

/* Send a publish request for `msgs` (all owned by one broker) and answer when it commits. */
static void hr_publish_send(hr_edge_t *edge, hr_http_conn_t *conn, hr_publish_t *p,
                            Herald__V1__PublishMessage **msgs, size_t n)
{
    Herald__V1__PublishRequest pub = HERALD__V1__PUBLISH_REQUEST__INIT;
    pub.n_messages = n;
    pub.messages = msgs;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_PUBLISH;
    req.publish = &pub;
    p->edge = edge;
    p->conn = conn;
    p->started_ms = hr_now_ms_precise();
    edge->metrics.publishes++;
    const char *topic = (const char *)msgs[0]->topic.data;
    if (hr_brokers_request(edge->brokers, topic, msgs[0]->topic.len, &req, hr_publish_on_reply, p,
                           &p->call) != 0) {
        edge->metrics.publish_errors++;
        hr_publish_free(p);
        hr_respond_unavailable(conn, "no broker is reachable yet");
        return;
    }
    /* The reply is sent only after the broker's durable commit; until then, watch the client. */
    hr_http_conn_set_close_cb(conn, hr_publish_on_close, p);
}

int hr_edge_publish_check(hr_edge_t *edge, const Herald__V1__PublishMessage *m, const char **code,
                          char *why, size_t cap)
{
    *code = "invalid_request";
    if (hr_topic_validate((const char *)m->topic.data, m->topic.len, why, cap) != 0) {
        *code = "invalid_topic";
        return 400;
    }
    if (hr_event_validate((const char *)m->event.data, m->event.len, why, cap) != 0 ||
        hr_content_type_validate((const char *)m->content_type.data, m->content_type.len, why,
                                 cap) != 0)
        return 400;
    if (m->idempotency_key.len > HR_IDEM_KEY_MAX) {
        snprintf(why, cap, "idempotency key is %zu bytes; the limit is %d", m->idempotency_key.len,
                 HR_IDEM_KEY_MAX);
        return 400;
    }
    if (m->data.len > (size_t)edge->config.max_data_bytes) {
        *code = "payload_too_large";
        snprintf(why, cap, "data is %zu bytes; the limit is %lld", m->data.len,
                 (long long)edge->config.max_data_bytes);
        return 413;
    }
    return 0;
}

/* A string member of a JSON message, or "" when absent or null; -1 when not a string. */
static int hr_json_str(json_t *obj, const char *key, const char **s, size_t *len)
{
    json_t *v = json_object_get(obj, key);
    *s = "";
    *len = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *s = json_string_value(v);
    *len = json_string_length(v);
    return 0;
}

int hr_edge_publish_from_json(hr_edge_t *edge, json_t *obj, Herald__V1__PublishMessage *m,
                              uint8_t **decoded, const char **code, char *why, size_t cap)
{
    const char *topic, *data, *event, *ctype, *enc, *key;
    size_t topic_len, data_len, event_len, ctype_len, enc_len, key_len;
    *decoded = NULL;
    *code = "invalid_request";
    if (!json_is_object(obj) || hr_json_str(obj, "topic", &topic, &topic_len) != 0 ||
        hr_json_str(obj, "data", &data, &data_len) != 0 ||
        hr_json_str(obj, "event", &event, &event_len) != 0 ||
        hr_json_str(obj, "content_type", &ctype, &ctype_len) != 0 ||
        hr_json_str(obj, "encoding", &enc, &enc_len) != 0 ||
        hr_json_str(obj, "idempotency_key", &key, &key_len) != 0) {
        snprintf(why, cap,
                 "expected an object whose fields (topic, data, event, content_type, "
                 "encoding, idempotency_key) are strings");
        return 400;
    }
    if (json_object_get(obj, "topic") == NULL || json_object_get(obj, "data") == NULL) {
        snprintf(why, cap, "%s is missing",
                 json_object_get(obj, "topic") == NULL ? "topic" : "data");
        return 400;
    }
    if (enc_len > 0) {
        size_t raw_len;
        if (strcmp(enc, "base64") != 0 ||
            hr_base64_decode(data, data_len, decoded, &raw_len) != 0) {
            snprintf(why, cap, "encoding must be \"base64\" with base64 data");
            return 400;
        }
        data = (const char *)*decoded;
        data_len = raw_len;
    }
    herald__v1__publish_message__init(m);
    m->topic = (ProtobufCBinaryData){topic_len, (uint8_t *)topic};
    m->data = (ProtobufCBinaryData){data_len, (uint8_t *)data};
    m->event = (ProtobufCBinaryData){event_len, (uint8_t *)event};
    m->content_type = (ProtobufCBinaryData){ctype_len, (uint8_t *)ctype};
    m->idempotency_key = (ProtobufCBinaryData){key_len, (uint8_t *)key};
    return hr_edge_publish_check(edge, m, code, why, cap);
}

/* POST /v1/topics/{topic}/messages: the body is the data. */
static void hr_api_publish_one(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req,
                               const char *topic, size_t topic_len)
{
    char event[HR_EVENT_MAX * 3 + 8] = "", name[16];
    size_t event_len = 0, vlen;
    hr_query_iter_t it;
    hr_query_init(&it, req->query, req->query_len);
    int rc;
    while ((rc = hr_query_next(&it, name, sizeof name, event, sizeof event, &vlen)) != 0) {
        if (rc < 0) {
            hr_http_respond_error(conn, 400, "invalid_request",
                                  "a query parameter is malformed or too long");
            return;
        }
        if (strcmp(name, "event") == 0) {
            event_len = vlen;
            break;
        }
    }
    if (event_len == 0) {
        event[0] = '\0';
        const char *h = hr_http_header(req, "Herald-Event", &vlen);
        if (h != NULL && vlen < sizeof event) {
            memcpy(event, h, vlen);
            event_len = vlen;
        } else if (h != NULL) {
            hr_http_respond_error(conn, 400, "invalid_request", "the event type is too long");
            return;
        }
    }
    size_t ctype_len = 0, key_len = 0;
    const char *ctype = hr_http_header(req, "Content-Type", &ctype_len);
    const char *key = hr_http_header(req, "Idempotency-Key", &key_len);
    if (ctype == NULL)
        ctype = "";
    if (key == NULL)
        key = "";
    Herald__V1__PublishMessage m = HERALD__V1__PUBLISH_MESSAGE__INIT;
    m.topic = (ProtobufCBinaryData){topic_len, (uint8_t *)topic};
    m.event = (ProtobufCBinaryData){event_len, (uint8_t *)event};
    m.content_type = (ProtobufCBinaryData){ctype_len, (uint8_t *)ctype};
    m.data = (ProtobufCBinaryData){req->body_len, (uint8_t *)req->body};
    m.idempotency_key = (ProtobufCBinaryData){key_len, (uint8_t *)key};
    const char *code;
    char why[192];
    int status = hr_edge_publish_check(edge, &m, &code, why, sizeof why);
    if (status != 0) {
        hr_http_respond_error(conn, status, code, why);
        return;
    }
    Herald__V1__PublishMessage *msgs[1] = {&m};
    hr_publish_t *p = hr_calloc(1, sizeof *p);
    p->n = 1;
    p->single = true;
    p->topics = hr_calloc(1, sizeof *p->topics);
    p->topics[0] = hr_strndup(topic, topic_len);
    hr_publish_send(edge, conn, p, msgs, 1);
}

/* POST /v1/messages: {"messages":[{topic, data, event, content_type, encoding,
 * idempotency_key}, ...]} committed in one transaction. */
static void hr_api_publish_batch(hr_edge_t *edge, hr_http_conn_t *conn,
                                 const hr_http_request_t *req)
{
    json_error_t jerr;
    /* JSON_ALLOW_NUL: "\u0000" is valid JSON, and data (or an idempotency key) may hold it;
     * names are checked by length, so a NUL in a topic is refused as invalid_topic. */
    json_t *root = json_loadb((const char *)req->body, req->body_len, JSON_ALLOW_NUL, &jerr);
    json_t *list = root != NULL ? json_object_get(root, "messages") : NULL;
    char why[256];
    if (root == NULL || !json_is_array(list) || json_array_size(list) == 0) {
        snprintf(why, sizeof why, "expected {\"messages\": [...]} with at least one message%s%s",
                 root == NULL ? ": " : "", root == NULL ? jerr.text : "");
        json_decref(root);
        hr_http_respond_error(conn, 400, "invalid_request", why);
        return;
    }
    size_t n = json_array_size(list);
    if (n > HR_BATCH_MAX) {
        snprintf(why, sizeof why, "a batch holds at most %d messages", HR_BATCH_MAX);
        json_decref(root);
        hr_http_respond_error(conn, 400, "invalid_request", why);
        return;
    }
    Herald__V1__PublishMessage *ms = hr_calloc(n, sizeof *ms);
    Herald__V1__PublishMessage **ptrs = hr_calloc(n, sizeof *ptrs);
    uint8_t **decoded = hr_calloc(n, sizeof *decoded);
    hr_publish_t *p = hr_calloc(1, sizeof *p);
    p->topics = hr_calloc(n, sizeof *p->topics);
    p->n = n;
    uint32_t owner = 0;
    for (size_t i = 0; i < n; i++) {
        const char *code;
        char one[192];
        int status = hr_edge_publish_from_json(edge, json_array_get(list, i), &ms[i], &decoded[i],
                                               &code, one, sizeof one);
        if (status != 0) {
            snprintf(why, sizeof why, "message %zu: %s", i, one);
            hr_http_respond_error(conn, status, code, why);
            goto done;
        }
        const char *topic = (const char *)ms[i].topic.data;
        size_t topic_len = ms[i].topic.len;
        uint32_t o_i = hr_brokers_count(edge->brokers) > 0
                           ? hr_brokers_owner(edge->brokers, topic, topic_len)
                           : 0;
        if (i > 0 && o_i != owner) {
            /* One batch is one durable transaction on one broker. */
            snprintf(why, sizeof why,
                     "message %zu: its topic lives on another broker than message 0's; a batch "
                     "commits on one broker, so split it by partition owner",
                     i);
            hr_http_respond_error(conn, 400, "invalid_request", why);
            goto done;
        }
        owner = o_i;
        ptrs[i] = &ms[i];
        p->topics[i] = hr_strndup(topic, topic_len);
    }
    hr_publish_send(edge, conn, p, ptrs, n);
    p = NULL;
done:
    if (p != NULL)
        hr_publish_free(p);
    for (size_t i = 0; i < n; i++)
        hr_free(decoded[i]);
    hr_free(decoded);
    hr_free(ptrs);
    hr_free(ms);
    json_decref(root);
}

/* ---- history ------------------------------------------------------------------------------ */

typedef struct {
    hr_edge_t *edge;
    hr_http_conn_t *conn;
    hr_brokers_call_t *call;
    char *topic;
    uint64_t after, epoch; /* the position asked for, for the cursor when nothing comes */
    bool head_only;        /* `latest`, or a cursor without this topic: from the head on */
} hr_history_t;

static void hr_history_free(hr_history_t *h)
{
    hr_free(h->topic);
    hr_free(h);
}

static void hr_history_on_close(void *arg)
{
    hr_history_t *h = arg;
    if (h->call != NULL)
        hr_brokers_cancel(h->call);
    hr_history_free(h);
}

static void hr_history_on_reply(void *arg, int status, const hr_reply_t *reply)
{
    hr_history_t *h = arg;
    h->call = NULL;
    hr_http_conn_set_close_cb(h->conn, NULL, NULL);
    if (status != 0) {
        hr_respond_unavailable(h->conn, "the broker owning this topic cannot be reached");
    } else if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR) {
        hr_respond_broker_error(h->conn, reply->error);
    } else {
        const Herald__V1__FetchReply *f = reply->fetch;
        json_t *msgs = json_array(), *resets = json_array();
        char id[HR_CURSOR_TEXT_CAP(1)];
        size_t tlen = strlen(h->topic);
        uint64_t epoch = h->epoch, seq = h->after;
        if (h->head_only) {
            /* No messages, and a cursor at the head: what comes next is what is new. */
            epoch = f->epoch;
            seq = f->last_seq;
        }
        if (f->reset != NULL) {
            static const char *const reasons[] = {"invalid_cursor", "retention", "epoch",
                                                  "invalid_cursor"};
            json_array_append_new(resets,
                                  json_pack("{s:s, s:s, s:s, s:I}", "type", "reset", "topic",
                                            h->topic, "reason", reasons[f->reset->reason & 3],
                                            "next_seq", (json_int_t)f->reset->next_seq));
            epoch = f->epoch;
            seq = f->reset->next_seq - 1;
        }
        for (size_t i = 0; i < f->n_messages; i++) {
            const Herald__V1__Message *m = f->messages[i];
            hr_cursor_format_one(h->topic, tlen, m->epoch, m->seq, id, sizeof id, NULL);
            json_array_append_new(msgs, hr_msgjson_from_message(m, id));
            epoch = m->epoch;
            seq = m->seq;
        }
        if (epoch == 0)
            epoch = f->epoch;
        hr_cursor_format_one(h->topic, tlen, epoch, seq, id, sizeof id, NULL);
        json_t *body =
            json_pack("{s:o, s:s, s:o}", "messages", msgs, "cursor", id, "reset", resets);
        hr_respond_json(h->conn, 200, body, NULL, 0);
    }
    hr_history_free(h);
}

/* GET /v1/topics/{topic}/messages?after=C&limit=N */
static void hr_api_history(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req,
                           const char *topic, size_t topic_len)
{
    char why[192];
    if (hr_topic_validate(topic, topic_len, why, sizeof why) != 0) {
        hr_http_respond_error(conn, 400, "invalid_topic", why);
        return;
    }
    char name[16];
    char *value = hr_malloc(HR_CURSOR_MAX_TEXT + 2);
    size_t vlen;
    long limit = HR_HISTORY_LIMIT;
    hr_cursor_t cursor;
    hr_cursor_init(&cursor);
    cursor.kind = HR_CURSOR_EARLIEST;
    hr_query_iter_t it;
    hr_query_init(&it, req->query, req->query_len);
    int rc;
    const char *code = NULL;
    while ((rc = hr_query_next(&it, name, sizeof name, value, HR_CURSOR_MAX_TEXT + 2, &vlen)) !=
           0) {
        if (rc < 0) {
            code = "invalid_request";
            snprintf(why, sizeof why, "a query parameter is malformed or too long");
            break;
        }
        if (strcmp(name, "after") == 0 || strcmp(name, "cursor") == 0) {
            if (vlen == 0)
                continue; /* empty: the default, earliest */
            if (hr_cursor_parse(&cursor, value, vlen) != 0) {
                code = "invalid_cursor";
                snprintf(why, sizeof why,
                         "the cursor is not a Herald cursor (any edge's cursor works; this one "
                         "does not parse)");
                break;
            }
        } else if (strcmp(name, "limit") == 0) {
            char *end;
            limit = strtol(value, &end, 10);
            if (*end != '\0' || vlen == 0 || limit < 1 || limit > HR_HISTORY_LIMIT_MAX) {
                code = "invalid_request";
                snprintf(why, sizeof why, "limit must be an integer from 1 to %d",
                         HR_HISTORY_LIMIT_MAX);
                break;
            }
        }
    }
    hr_free(value);
    if (code != NULL) {
        hr_cursor_reset(&cursor);
        hr_http_respond_error(conn, 400, code, why);
        return;
    }
    hr_history_t *h = hr_calloc(1, sizeof *h);
    h->edge = edge;
    h->conn = conn;
    h->topic = hr_strndup(topic, topic_len);
    Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
    f.topic = (ProtobufCBinaryData){topic_len, (uint8_t *)topic};
    f.limit = (uint32_t)limit;
    if (cursor.kind == HR_CURSOR_POSITIONS) {
        const hr_cursor_entry_t *e = hr_cursor_find(&cursor, hr_fnv1a64(topic, topic_len));
        if (e != NULL) {
            f.after_seq = h->after = e->seq;
            f.epoch = h->epoch = e->epoch;
        } else {
            f.head_only = true; /* a cursor without this topic: from now on */
        }
    } else if (cursor.kind == HR_CURSOR_LATEST) {
        f.head_only = true;
    }
    h->head_only = f.head_only;
    hr_cursor_reset(&cursor);
    hr_request_t r = HERALD__V1__REQUEST__INIT;
    r.body_case = HERALD__V1__REQUEST__BODY_FETCH;
    r.fetch = &f;
    if (hr_brokers_request(edge->brokers, topic, topic_len, &r, hr_history_on_reply, h, &h->call) !=
        0) {
        hr_history_free(h);
        hr_respond_unavailable(conn, "no broker is reachable yet");
        return;
    }
    hr_http_conn_set_close_cb(conn, hr_history_on_close, h);
}

/* ---- health, readiness, metrics ------------------------------------------------------------ */

/* ---- broker stats, for /metrics ---------------------------------------------------------- */

typedef struct {
    hr_edge_t *edge;
    uint32_t index;
} hr_stats_call_t;

static void hr_stats_on_reply(void *arg, int status, const hr_reply_t *reply)
{
    hr_stats_call_t *c = arg;
    hr_edge_t *edge = c->edge;
    if (status == 0 && reply->body_case == HERALD__V1__REPLY__BODY_STATS &&
        c->index < edge->n_broker_stats) {
        const Herald__V1__StatsReply *s = reply->stats;
        edge->broker_stats[c->index] = (hr_broker_stats_t){
            .known = true,
            .map_size = s->map_size,
            .map_used = s->map_used,
            .topics = s->topics,
            .messages_appended = s->messages_appended,
            .messages_trimmed = s->messages_trimmed,
        };
    }
    hr_free(c);
}

void hr_edge_poll_broker_stats(hr_edge_t *edge)
{
    uint32_t n = hr_brokers_count(edge->brokers);
    if (n != edge->n_broker_stats) {
        edge->broker_stats = hr_realloc(edge->broker_stats, n * sizeof *edge->broker_stats);
        memset(edge->broker_stats, 0, n * sizeof *edge->broker_stats);
        edge->n_broker_stats = n;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (!hr_brokers_up(edge->brokers, i))
            continue;
        Herald__V1__StatsRequest st = HERALD__V1__STATS_REQUEST__INIT;
        hr_request_t req = HERALD__V1__REQUEST__INIT;
        req.body_case = HERALD__V1__REQUEST__BODY_STATS;
        req.stats = &st;
        hr_stats_call_t *c = hr_calloc(1, sizeof *c);
        c->edge = edge;
        c->index = i;
        if (hr_brokers_request_to(edge->brokers, i, &req, hr_stats_on_reply, c, NULL) != 0)
            hr_free(c);
    }
}

/* Partitions whose owning broker is down (0 before the partition map is known). */
static uint32_t hr_api_partitions_unavailable(hr_brokers_t *b, json_t *list)
{
    uint32_t n = hr_brokers_count(b), parts = hr_brokers_partitions(b), count = 0;
    for (uint32_t p = 0; n > 0 && p < parts; p++) {
        if (hr_brokers_up(b, hr_partition_owner(p, n)))
            continue;
        count++;
        if (list != NULL)
            json_array_append_new(list, json_integer(p));
    }
    return count;
}

static void hr_api_readyz(hr_edge_t *edge, hr_http_conn_t *conn)
{
    hr_brokers_t *b = edge->brokers;
    uint32_t n = hr_brokers_count(b);
    json_t *brokers = json_array(), *unavailable = json_array();
    for (uint32_t i = 0; i < n; i++)
        json_array_append_new(brokers,
                              json_pack("{s:s, s:b}", "endpoint", hr_brokers_endpoint(b, i), "up",
                                        hr_brokers_up(b, i)));
    hr_api_partitions_unavailable(b, unavailable);
    bool ready = hr_brokers_ready(b) && !edge->draining;
    json_t *body = json_pack("{s:b, s:b, s:o, s:o}", "ready", ready, "draining", edge->draining,
                             "brokers", brokers, "unavailable_partitions", unavailable);
    hr_respond_json(conn, ready ? 200 : 503, body, NULL, 0);
}

static void hr_metric(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void hr_metric(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < *cap - *len) {
            *len += (size_t)n;
            return;
        }
        *cap *= 2;
        *buf = hr_realloc(*buf, *cap);
    }
}

/* Prometheus text exposition format 0.0.4. */
static void hr_api_metrics(hr_edge_t *edge, hr_http_conn_t *conn)
{
    const hr_edge_metrics_t *m = &edge->metrics;
    size_t cap = 8192, len = 0;
    char *buf = hr_malloc(cap);
#define COUNTER(name, help, value)                                                                 \
    hr_metric(&buf, &len, &cap, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name,    \
              name, (unsigned long long)(value))
#define GAUGE(name, help, value)                                                                   \
    hr_metric(&buf, &len, &cap, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name,      \
              name, (unsigned long long)(value))
    hr_metric(&buf, &len, &cap,
              "# HELP herald_edge_connections Open subscribers by transport (a held long poll "
              "is one).\n# TYPE herald_edge_connections gauge\n");
    for (int t = 0; t < HR_TRANSPORT_COUNT; t++)
        hr_metric(&buf, &len, &cap, "herald_edge_connections{transport=\"%s\"} %llu\n",
                  hr_transport_names[t], (unsigned long long)m->connections[t]);
    hr_metric(&buf, &len, &cap,
              "# HELP herald_edge_deliveries_total Messages delivered to clients by transport.\n"
              "# TYPE herald_edge_deliveries_total counter\n");
    for (int t = 0; t < HR_TRANSPORT_COUNT; t++)
        hr_metric(&buf, &len, &cap, "herald_edge_deliveries_total{transport=\"%s\"} %llu\n",
                  hr_transport_names[t], (unsigned long long)m->deliveries[t]);
    GAUGE("herald_edge_long_polls_held", "Long polls waiting for a message.", m->polls_held);
    GAUGE("herald_edge_ws_connections", "Open WebSocket connections.", m->ws_connections);
    COUNTER("herald_edge_ws_frames_in_total", "WebSocket text messages received.", m->ws_frames_in);
    COUNTER("herald_edge_ws_publishes_total", "Messages published over WebSocket.",
            m->ws_publishes);
    COUNTER("herald_edge_ws_publish_errors_total",
            "WebSocket publishes answered with an error by the broker or for its absence.",
            m->ws_publish_errors);
    COUNTER("herald_edge_ws_protocol_errors_total",
            "WebSocket connections closed for a protocol error (1002, 1003, 1007, 1009).",
            m->ws_protocol_errors);
    COUNTER("herald_edge_ws_ping_timeouts_total",
            "WebSocket connections dropped for an unanswered ping.", m->ws_ping_timeouts);
    GAUGE("herald_edge_http_connections", "Open HTTP connections.",
          hr_http_server_connections(edge->http));
    GAUGE("herald_edge_topics", "Topics with local subscribers.",
          hr_registry_topics(edge->registry));
    COUNTER("herald_edge_http_requests_total", "HTTP requests routed.", m->http_requests);
    COUNTER("herald_edge_publish_requests_total", "HTTP publish requests.", m->publishes);
    COUNTER("herald_edge_publish_errors_total", "HTTP publish requests that failed.",
            m->publish_errors);
    COUNTER("herald_edge_messages_in_total", "Messages published through this edge.",
            m->messages_in);
    COUNTER("herald_edge_live_messages_total", "Live messages received from brokers.",
            m->live_messages);
    COUNTER("herald_edge_slow_client_disconnects_total",
            "Clients cut off because their queue was full (queue drops).", m->slow_disconnects);
    hr_metric(&buf, &len, &cap,
              "# HELP herald_edge_resets_total Reset signals sent to clients, by reason.\n"
              "# TYPE herald_edge_resets_total counter\n"
              "herald_edge_resets_total{reason=\"retention\"} %llu\n"
              "herald_edge_resets_total{reason=\"epoch\"} %llu\n"
              "herald_edge_resets_total{reason=\"invalid_cursor\"} %llu\n",
              (unsigned long long)m->resets_retention, (unsigned long long)m->resets_epoch,
              (unsigned long long)m->resets_invalid_cursor);
    COUNTER("herald_edge_backfills_total", "Live-stream gaps filled from a broker.", m->backfills);
    COUNTER("herald_edge_catchups_total", "History reads for subscribers catching up.",
            m->catchups);
    hr_metric(&buf, &len, &cap,
              "# HELP herald_edge_publish_latency_ms HTTP publish to durable commit, ms.\n"
              "# TYPE herald_edge_publish_latency_ms histogram\n");
    uint64_t cumulative = 0;
    for (int i = 0; i < HR_LATENCY_BUCKETS; i++) {
        cumulative += m->latency_buckets[i];
        hr_metric(&buf, &len, &cap, "herald_edge_publish_latency_ms_bucket{le=\"%g\"} %llu\n",
                  hr_latency_bounds_ms[i], (unsigned long long)cumulative);
    }
    cumulative += m->latency_buckets[HR_LATENCY_BUCKETS];
    hr_metric(&buf, &len, &cap,
              "herald_edge_publish_latency_ms_bucket{le=\"+Inf\"} %llu\n"
              "herald_edge_publish_latency_ms_sum %.3f\n"
              "herald_edge_publish_latency_ms_count %llu\n",
              (unsigned long long)cumulative, m->latency_sum_ms, (unsigned long long)cumulative);
    hr_metric(&buf, &len, &cap,
              "# HELP herald_edge_broker_up Whether each broker answers (1) or not (0).\n"
              "# TYPE herald_edge_broker_up gauge\n");
    for (uint32_t i = 0; i < hr_brokers_count(edge->brokers); i++)
        hr_metric(&buf, &len, &cap, "herald_edge_broker_up{broker=\"%s\"} %d\n",
                  hr_brokers_endpoint(edge->brokers, i), hr_brokers_up(edge->brokers, i) ? 1 : 0);
    static const struct {
        const char *name, *type, *help;
        size_t offset;
    } bstats[] = {
        {"herald_broker_map_size_bytes", "gauge", "The broker's LMDB map limit (--map-size).",
         offsetof(hr_broker_stats_t, map_size)},
        {"herald_broker_map_used_bytes", "gauge",
         "LMDB pages in use at the broker; appends fail with storage_full at map_size.",
         offsetof(hr_broker_stats_t, map_used)},
        {"herald_broker_topics", "gauge", "Topic logs at the broker.",
         offsetof(hr_broker_stats_t, topics)},
        {"herald_broker_messages_appended_total", "counter", "Messages committed by the broker.",
         offsetof(hr_broker_stats_t, messages_appended)},
        {"herald_broker_messages_trimmed_total", "counter",
         "Messages removed by the broker's retention.",
         offsetof(hr_broker_stats_t, messages_trimmed)},
    };
    for (size_t k = 0; k < sizeof bstats / sizeof bstats[0]; k++) {
        hr_metric(&buf, &len, &cap,
                  "# HELP %s %s (Refreshed every few seconds by the edge.)\n# TYPE %s %s\n",
                  bstats[k].name, bstats[k].help, bstats[k].name, bstats[k].type);
        for (uint32_t i = 0; i < edge->n_broker_stats; i++) {
            const hr_broker_stats_t *s = &edge->broker_stats[i];
            if (s->known)
                hr_metric(
                    &buf, &len, &cap, "%s{broker=\"%s\"} %llu\n", bstats[k].name,
                    hr_brokers_endpoint(edge->brokers, i),
                    (unsigned long long)*(const uint64_t *)((const char *)s + bstats[k].offset));
        }
    }
    GAUGE("herald_edge_partitions", "Partitions of the cluster (P; 0 until known).",
          hr_brokers_partitions(edge->brokers));
    GAUGE("herald_edge_partitions_unavailable",
          "Partitions whose owning broker is down: their publishes get 503.",
          hr_api_partitions_unavailable(edge->brokers, NULL));
    GAUGE("herald_edge_draining", "1 after SIGTERM while the edge drains.", edge->draining);
#undef COUNTER
#undef GAUGE
    static const hr_http_header_t ct = {"Content-Type", 12, "text/plain; version=0.0.4", 25};
    hr_http_respond(conn, 200, &ct, 1, buf, len);
    hr_free(buf);
}

/* ---- routing ------------------------------------------------------------------------------ */

static void hr_api_method_not_allowed(hr_http_conn_t *conn, const char *allow)
{
    hr_http_header_t h = {"Allow", 5, allow, strlen(allow)};
    json_t *body = json_pack("{s:{s:s, s:s}}", "error", "code", "method_not_allowed", "message",
                             "this path does not accept that method");
    hr_respond_json(conn, 405, body, &h, 1);
}

static bool hr_path_is(const hr_http_request_t *req, const char *path)
{
    return req->path_len == strlen(path) && memcmp(req->path, path, req->path_len) == 0;
}

static bool hr_method_is(const hr_http_request_t *req, const char *method)
{
    return strcmp(req->method, method) == 0;
}

/* /v1/topics/{topic}/messages: the topic segment, percent-decoded. Returns its length or -1. */
static long hr_topic_from_path(const hr_http_request_t *req, char *topic, size_t cap)
{
    static const char prefix[] = "/v1/topics/", suffix[] = "/messages";
    size_t pl = sizeof prefix - 1, sl = sizeof suffix - 1;
    if (req->path_len < pl + sl || memcmp(req->path, prefix, pl) != 0 ||
        memcmp(req->path + req->path_len - sl, suffix, sl) != 0)
        return -2;
    return hr_percent_decode(req->path + pl, req->path_len - pl - sl, topic, cap);
}

/* Routes with fixed paths: one line each. Transports register here. */
typedef void (*hr_route_fn)(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req);

static void hr_route_healthz(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    (void)edge;
    (void)req;
    hr_respond_json(conn, 200, json_pack("{s:s}", "status", "ok"), NULL, 0);
}

static void hr_route_readyz(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    (void)req;
    hr_api_readyz(edge, conn);
}

static void hr_route_metrics(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    (void)req;
    hr_api_metrics(edge, conn);
}

static void hr_route_page(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    (void)edge;
    (void)req;
    static const hr_http_header_t ct = {"Content-Type", 12, "text/html; charset=utf-8", 24};
    hr_http_respond(conn, 200, &ct, 1, hr_page_html, hr_page_html_len);
}

static void hr_route_batch(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    hr_api_publish_batch(edge, conn, req);
}

static const struct {
    const char *path;
    const char *method;
    hr_route_fn fn;
} hr_routes[] = {
    {"/v1/sse", "GET", hr_sse_open},
    {"/v1/poll", "GET", hr_poll_open},
    {"/v1/stream", "GET", hr_stream_open},
    {"/v1/ws", "GET", hr_ws_open},
    {"/v1/messages", "POST", hr_route_batch},
    {"/healthz", "GET", hr_route_healthz},
    {"/readyz", "GET", hr_route_readyz},
    {"/metrics", "GET", hr_route_metrics},
    {"/", "GET", hr_route_page},
    {"/index.html", "GET", hr_route_page},
};

void hr_edge_handle_request(void *ctx, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    hr_edge_t *edge = ctx;
    edge->metrics.http_requests++;
    for (size_t i = 0; i < sizeof hr_routes / sizeof hr_routes[0]; i++) {
        if (!hr_path_is(req, hr_routes[i].path))
            continue;
        bool head = hr_method_is(req, "HEAD") && strcmp(hr_routes[i].method, "GET") == 0;
        if (!hr_method_is(req, hr_routes[i].method) && !head) {
            hr_api_method_not_allowed(conn, strcmp(hr_routes[i].method, "GET") == 0
                                                ? "GET, HEAD, OPTIONS"
                                                : "POST, OPTIONS");
            return;
        }
        hr_routes[i].fn(edge, conn, req);
        return;
    }
    char topic[HR_TOPIC_MAX * 3 + 1];
    long tl = hr_topic_from_path(req, topic, sizeof topic);
    if (tl != -2) {
        if (tl < 0) {
            hr_http_respond_error(conn, 400, "invalid_topic",
                                  "the topic in the path is not validly percent-encoded or is "
                                  "too long");
        } else if (hr_method_is(req, "POST")) {
            hr_api_publish_one(edge, conn, req, topic, (size_t)tl);
        } else if (hr_method_is(req, "GET")) {
            hr_api_history(edge, conn, req, topic, (size_t)tl);
        } else {
            hr_api_method_not_allowed(conn, "GET, POST, OPTIONS");
        }
        return;
    }
    hr_http_respond_error(conn, 404, "not_found", "no such path");
}
