/*
 * WebSocket — GET /v1/ws (RFC 6455), the frames of docs/websocket.md.
 *
 * Input: libuv reads are handed to wslay (hr_http_conn_set_read_cb → wslay_event_recv), which
 * enforces the frame rules of RFC 6455 §5 (masking, reserved bits and opcodes, control frame
 * size and fragmentation, continuation order, UTF-8 of text messages, close codes) and the
 * message size limit, answers pings and closes, and hands complete messages to
 * hr_ws_on_msg_recv.
 *
 * Output: everything wslay sends (pongs, close frames, answers such as `published`) goes through
 * its send callback into the connection's hr_outq, in order, at once (the callback never
 * blocks, so wslay's own queue is always empty between calls). Live messages bypass wslay: a
 * message frame is a 2-10 byte header plus the message's shared HR_ENC_JSON encoding plus the
 * subscriber's cursor, so fan-out shares one encoding among every subscriber. Nothing is queued
 * once a close frame has been sent (the outq is cut off at that moment).
 *
 * Memory: wslay's context (8.8 KiB, mostly its frame buffers) exists only while a frame is under
 * way or output is being framed; between frames it is freed (hr_ws_release_ctx), so an idle
 * connection costs about 1.6 KiB. Whether wslay holds anything is tracked from its frame
 * callbacks: bytes fed versus bytes of finished frames, and whether a fragmented message is
 * open.
 *
 * Publishes read from one chunk of input go to the broker as one request per partition owner
 * (a commit is all-or-nothing, and every message was checked here first, so batching only saves
 * round trips). Answers go out in the order the publishes came in: a FIFO of pending publishes
 * is flushed from its head as commits return.
 */
#include "ws.h"

#include "api.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "outq.h"
#include "partition.h"
#include "sub.h"
#include "topic.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>

#define MOD "ws"

/* RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing. */
#define HR_WS_GUID        "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HR_WS_SUBPROTOCOL "herald.v1"
/* Longest `req` echoed back, bytes. */
#define HR_WS_REQ_MAX 64
/* Most publishes in one broker request built from one chunk of input. */
#define HR_WS_BATCH_MAX 1024
/* Close code for a client that does not read fast enough (private range, RFC 6455 §7.4.2). */
#define HR_WS_CLOSE_SLOW 4008

typedef struct hr_ws hr_ws_t;
typedef struct hr_ws_batch hr_ws_batch_t;

/* One publish, from its frame to its answer (kept in arrival order). */
typedef struct hr_ws_pub {
    struct hr_ws_pub *next;
    char *req;    /* the client's `req`, or NULL */
    char *topic;  /* NUL-terminated */
    char *answer; /* the `published` or `error` frame once known */
} hr_ws_pub_t;

/* A publish read from the current input, waiting to go out in this input's batch. */
typedef struct {
    Herald__V1__PublishMessage msg;
    json_t *root;     /* the frame: holds the strings `msg` points to */
    uint8_t *decoded; /* base64-decoded data, or NULL */
    hr_ws_pub_t *pub;
} hr_ws_item_t;

/* Publishes sent to one broker in one request. */
struct hr_ws_batch {
    hr_ws_t *ws; /* NULL once the connection is gone */
    hr_brokers_call_t *call;
    double started_ms;
    size_t n;
    hr_ws_pub_t **pubs;
    hr_ws_batch_t *prev, *next; /* ws->batches */
};

typedef enum {
    HR_WS_OPEN,    /* frames flow both ways */
    HR_WS_CLOSING, /* a close frame was sent: the outq is cut off, closing once written */
    HR_WS_GONE,    /* the connection is closed; freed when the ping timer has closed */
} hr_ws_state_t;

struct hr_ws {
    hr_edge_t *edge;
    hr_http_conn_t *conn;
    hr_outq_t *q;
    wslay_event_context_ptr ctx;
    hr_ws_state_t state;
    const uint8_t *in; /* input being fed to wslay_event_recv */
    size_t in_len;
    /* the subscription: topic names (owned) */
    char **topics;
    size_t *lens;
    size_t n_topics;
    json_t *pending_subscribes; /* `req`s (or null) of subscribes not answered yet */
    /* publishes: answers are sent in arrival order */
    hr_ws_pub_t *pub_head, *pub_tail;
    size_t n_pubs;
    hr_ws_batch_t *batches; /* in flight */
    /* the batch being built from the current chunk of input */
    hr_ws_item_t *items;
    size_t b_n, b_cap;
    uint32_t b_owner;
    uint64_t msg_len; /* bytes of the data message being received, declared so far */
    /* wslay's context (8.8 KiB) is held only while a frame is under way: fed counts the bytes
     * handed to it, framed the bytes of the frames it has finished (header + payload), and
     * `fragmented` says a data message continues in a later frame. */
    uint64_t fed, framed, frame_bytes;
    bool fragmented;
    bool in_recv; /* inside wslay_event_recv: its context must stay */
    bool paused;  /* reading stopped: too many publishes in flight or too much queued */
    uv_timer_t ping;
    bool awaiting_pong;
    hr_ws_t *prev, *next; /* hr_ws_all */
};

static hr_ws_t *hr_ws_all;

static double hr_ws_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- output -------------------------------------------------------------------------------- */

static ssize_t hr_ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                             int flags, void *user)
{
    (void)flags;
    hr_ws_t *ws = user;
    if (len == 2 && data[0] == (0x80 | WSLAY_CONNECTION_CLOSE) && data[1] == 0 &&
        !wslay_event_get_close_received(ctx)) {
        /* wslay 1.1.1 refuses some malformed frames (a control frame over 125 bytes or
         * fragmented) with a close frame that has no status code; name the reason, 1002
         * (RFC 6455 §7.4.1). An empty close answering the client's empty close stays empty. */
        static const char protocol_error[] = {(char)0x88, 2, 0x03, (char)0xEA};
        hr_outq_own(ws->q, protocol_error, sizeof protocol_error);
        return (ssize_t)len;
    }
    hr_outq_own(ws->q, (const char *)data, len);
    return (ssize_t)len;
}

static wslay_event_context_ptr hr_ws_ctx(hr_ws_t *ws);
static void hr_ws_release_ctx(hr_ws_t *ws);

/* Hand what wslay has queued to the outq (never blocks: see the file comment). */
static void hr_ws_flush_wslay(hr_ws_t *ws)
{
    if (ws->state != HR_WS_GONE && ws->ctx != NULL)
        wslay_event_send(ws->ctx);
}

static void hr_ws_send_text(hr_ws_t *ws, const char *text, size_t len)
{
    if (ws->state != HR_WS_OPEN)
        return;
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};
    if (wslay_event_queue_msg(hr_ws_ctx(ws), &m) == 0)
        hr_ws_flush_wslay(ws);
}

/* Serialise and send `obj` (reference taken over), with "req" when the request had one. */
static void hr_ws_send_json(hr_ws_t *ws, json_t *obj, const char *req)
{
    if (req != NULL)
        json_object_set_new(obj, "req", json_string(req));
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    hr_ws_send_text(ws, text, strlen(text));
    free(text);
}

static void hr_ws_send_error(hr_ws_t *ws, const char *req, const char *code, const char *message)
{
    hr_ws_send_json(
        ws, json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message), req);
}

/* Send a close frame (RFC 6455 §5.5.1) and stop queueing: the connection closes once what is
 * queued has been written (or after --slow-client-grace). */
static void hr_ws_close(hr_ws_t *ws, uint16_t code, const char *reason)
{
    if (ws->state != HR_WS_OPEN)
        return;
    wslay_event_queue_close(hr_ws_ctx(ws), code, (const uint8_t *)reason, strlen(reason));
    hr_ws_flush_wslay(ws);
    ws->state = HR_WS_CLOSING;
    hr_outq_cut_off(ws->q);
}

/* ---- the framing of hr_outq ----------------------------------------------------------------- */

static void hr_ws_message(hr_outq_t *q, hr_msg_t *msg, const char *cursor, size_t cursor_len)
{
    hr_payload_t *body = hr_msg_encoded(msg, HR_ENC_JSON);
    uint64_t len = (uint64_t)body->len + cursor_len + 2;
    uint8_t head[10];
    size_t hl;
    head[0] = 0x80 | WSLAY_TEXT_FRAME; /* FIN, no RSV, text; server frames are not masked */
    if (len < 126) {
        head[1] = (uint8_t)len;
        hl = 2;
    } else if (len <= 0xFFFF) {
        head[1] = 126;
        head[2] = (uint8_t)(len >> 8);
        head[3] = (uint8_t)len;
        hl = 4;
    } else {
        head[1] = 127;
        for (int i = 0; i < 8; i++)
            head[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        hl = 10;
    }
    hr_outq_own(q, (const char *)head, hl);
    hr_outq_shared(q, body);
    hr_outq_own(q, cursor, cursor_len);
    hr_outq_own(q, "\"}", 2);
}

/* `json` is {...} without an id: send it with "id":CURSOR appended. */
static void hr_ws_reset(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len)
{
    hr_ws_t *ws = hr_outq_framing_data(q);
    size_t jl = strlen(json);
    char *text = hr_malloc(jl + cursor_len + 9);
    memcpy(text, json, jl - 1);
    size_t n = jl - 1;
    memcpy(text + n, ",\"id\":\"", 7);
    n += 7;
    memcpy(text + n, cursor, cursor_len);
    n += cursor_len;
    memcpy(text + n, "\"}", 2);
    n += 2;
    hr_ws_send_text(ws, text, n);
    hr_free(text);
    hr_ws_release_ctx(ws); /* sent outside a read: nothing else needs the context now */
}

/* The last frames the edge sends on its own initiative: `json` ({"type":"shutdown","cursor",
 * "retry_ms","reason"}) then a close frame with `code`. */
static void hr_ws_final(hr_outq_t *q, const char *json, uint16_t code, const char *reason)
{
    hr_ws_t *ws = hr_outq_framing_data(q);
    hr_ws_send_text(ws, json, strlen(json));
    hr_ws_close(ws, code, reason);
}

static void hr_ws_shutdown(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len,
                           uint64_t retry_ms)
{
    (void)cursor, (void)cursor_len, (void)retry_ms;
    hr_ws_final(q, json, WSLAY_CODE_GOING_AWAY, "edge shutting down");
}

static void hr_ws_slow(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len,
                       uint64_t retry_ms)
{
    (void)cursor, (void)cursor_len, (void)retry_ms;
    hr_ws_final(q, json, HR_WS_CLOSE_SLOW, "slow consumer");
}

static void hr_ws_resume_reading(hr_ws_t *ws);

static void hr_ws_drained(hr_outq_t *q)
{
    hr_ws_resume_reading(hr_outq_framing_data(q));
}

static void hr_ws_closed(hr_outq_t *q);

static const hr_outq_framing_t hr_ws_framing = {
    .message = hr_ws_message,
    .reset = hr_ws_reset,
    .shutdown = hr_ws_shutdown,
    .slow = hr_ws_slow,
    .drained = hr_ws_drained,
    .closed = hr_ws_closed,
};

static void hr_ws_positioned(hr_subscriber_t *sub);

static const hr_transport_t hr_ws_transport = {
    .name = "ws",
    .id = HR_TRANSPORT_WS,
    .deliver = hr_outq_deliver,
    .reset = hr_outq_reset,
    .pending_bytes = hr_outq_pending,
    .shutdown = hr_outq_shutdown,
    .positioned = hr_ws_positioned,
};

/* ---- flow control ------------------------------------------------------------------------- */

static bool hr_ws_should_pause(const hr_ws_t *ws)
{
    size_t pending = hr_outq_queued_bytes(ws->q);
    return ws->n_pubs >= (size_t)ws->edge->config.ws_max_inflight ||
           pending > (size_t)ws->edge->config.queue_bytes / 2;
}

static void hr_ws_maybe_pause(hr_ws_t *ws)
{
    if (!ws->paused && ws->state == HR_WS_OPEN && hr_ws_should_pause(ws)) {
        ws->paused = true;
        hr_http_conn_pause_reading(ws->conn, true);
    }
}

static void hr_ws_resume_reading(hr_ws_t *ws)
{
    if (ws->paused && ws->state != HR_WS_GONE && !hr_ws_should_pause(ws)) {
        ws->paused = false;
        hr_http_conn_pause_reading(ws->conn, false);
    }
}

/* ---- publishing ---------------------------------------------------------------------------- */

static void hr_ws_pub_free(hr_ws_pub_t *p)
{
    hr_free(p->req);
    hr_free(p->topic);
    free(p->answer); /* from json_dumps */
    hr_free(p);
}

/* Send the answers at the head of the FIFO that are known, in order. */
static void hr_ws_flush_answers(hr_ws_t *ws)
{
    while (ws->pub_head != NULL && ws->pub_head->answer != NULL) {
        hr_ws_pub_t *p = ws->pub_head;
        ws->pub_head = p->next;
        if (ws->pub_head == NULL)
            ws->pub_tail = NULL;
        ws->n_pubs--;
        hr_ws_send_text(ws, p->answer, strlen(p->answer));
        hr_ws_pub_free(p);
    }
    hr_ws_resume_reading(ws);
}

static hr_ws_pub_t *hr_ws_pub_new(hr_ws_t *ws, const char *req, const char *topic, size_t topic_len)
{
    hr_ws_pub_t *p = hr_calloc(1, sizeof *p);
    p->req = req != NULL ? hr_strndup(req, strlen(req)) : NULL;
    p->topic = hr_strndup(topic, topic_len);
    if (ws->pub_tail != NULL)
        ws->pub_tail->next = p;
    else
        ws->pub_head = p;
    ws->pub_tail = p;
    ws->n_pubs++;
    return p;
}

static void hr_ws_pub_answer_error(hr_ws_pub_t *p, const char *code, const char *message)
{
    json_t *j = json_pack("{s:s, s:s, s:s}", "type", "error", "code", code, "message", message);
    if (p->req != NULL)
        json_object_set_new(j, "req", json_string(p->req));
    p->answer = json_dumps(j, JSON_COMPACT);
    json_decref(j);
}

static void hr_ws_batch_free(hr_ws_batch_t *b)
{
    hr_free(b->pubs);
    hr_free(b);
}

static void hr_ws_on_publish_reply(void *arg, int status, const hr_reply_t *reply)
{
    hr_ws_batch_t *b = arg;
    hr_ws_t *ws = b->ws;
    b->call = NULL;
    if (ws == NULL) {
        hr_ws_batch_free(b);
        return;
    }
    if (b->prev != NULL)
        b->prev->next = b->next;
    else
        ws->batches = b->next;
    if (b->next != NULL)
        b->next->prev = b->prev;
    hr_edge_t *edge = ws->edge;
    for (size_t i = 0; i < b->n; i++) {
        hr_ws_pub_t *p = b->pubs[i];
        if (status != 0) {
            hr_ws_pub_answer_error(p, "unavailable",
                                   "the broker owning this topic cannot be reached");
        } else if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR) {
            hr_ws_pub_answer_error(p, reply->error->code, reply->error->message);
        } else if (reply->body_case != HERALD__V1__REPLY__BODY_PUBLISH ||
                   reply->publish->n_results != b->n) {
            hr_ws_pub_answer_error(p, "internal", "unexpected reply from the broker");
        } else {
            json_t *j = json_pack("{s:s}", "type", "published");
            json_object_update_new(
                j, hr_edge_publish_result_json(p->topic, reply->publish->results[i]));
            if (p->req != NULL)
                json_object_set_new(j, "req", json_string(p->req));
            p->answer = json_dumps(j, JSON_COMPACT);
            json_decref(j);
        }
    }
    if (status == 0 && reply->body_case == HERALD__V1__REPLY__BODY_PUBLISH) {
        hr_edge_observe_latency(edge, hr_ws_now_ms() - b->started_ms);
        edge->metrics.messages_in += b->n;
    } else {
        edge->metrics.ws_publish_errors += b->n;
    }
    hr_ws_batch_free(b);
    hr_ws_flush_answers(ws);
    hr_ws_release_ctx(ws);
}

static void hr_ws_batch_reset(hr_ws_t *ws)
{
    for (size_t i = 0; i < ws->b_n; i++) {
        json_decref(ws->items[i].root);
        hr_free(ws->items[i].decoded);
    }
    /* Released, not kept: most connections publish rarely or never, and an idle connection
     * should cost as little as possible. */
    hr_free(ws->items);
    ws->items = NULL;
    ws->b_n = ws->b_cap = 0;
}

/* Send the publishes collected from the current input as one broker request. */
static void hr_ws_batch_send(hr_ws_t *ws)
{
    if (ws->b_n == 0)
        return;
    hr_ws_batch_t *b = hr_calloc(1, sizeof *b);
    b->ws = ws;
    b->n = ws->b_n;
    b->pubs = hr_calloc(b->n, sizeof *b->pubs);
    Herald__V1__PublishMessage **ptrs = hr_calloc(b->n, sizeof *ptrs);
    for (size_t i = 0; i < b->n; i++) {
        b->pubs[i] = ws->items[i].pub;
        ptrs[i] = &ws->items[i].msg;
    }
    b->started_ms = hr_ws_now_ms();
    Herald__V1__PublishRequest pub = HERALD__V1__PUBLISH_REQUEST__INIT;
    pub.n_messages = b->n;
    pub.messages = ptrs;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_PUBLISH;
    req.publish = &pub;
    ws->edge->metrics.ws_publishes += b->n;
    const Herald__V1__PublishMessage *m0 = ptrs[0];
    if (hr_brokers_request(ws->edge->brokers, (const char *)m0->topic.data, m0->topic.len, &req,
                           hr_ws_on_publish_reply, b, &b->call) != 0) {
        for (size_t i = 0; i < b->n; i++)
            hr_ws_pub_answer_error(b->pubs[i], "unavailable", "no broker is reachable yet");
        ws->edge->metrics.ws_publish_errors += b->n;
        hr_ws_batch_free(b);
    } else {
        b->next = ws->batches;
        if (ws->batches != NULL)
            ws->batches->prev = b;
        ws->batches = b;
    }
    hr_free(ptrs);
    hr_ws_batch_reset(ws);
}

static void hr_ws_on_publish(hr_ws_t *ws, json_t *root, const char *req)
{
    hr_ws_item_t item = {.root = NULL};
    const char *code;
    char why[192];
    int status =
        hr_edge_publish_from_json(ws->edge, root, &item.msg, &item.decoded, &code, why, sizeof why);
    if (status != 0) {
        hr_free(item.decoded);
        /* Answered in its place among the publishes, so answers stay in order. */
        hr_ws_pub_t *p = hr_ws_pub_new(ws, req, "", 0);
        hr_ws_pub_answer_error(p, code, why);
        hr_ws_flush_answers(ws);
        return;
    }
    const char *topic = (const char *)item.msg.topic.data;
    uint32_t owner = hr_brokers_count(ws->edge->brokers) > 0
                         ? hr_brokers_owner(ws->edge->brokers, topic, item.msg.topic.len)
                         : 0;
    /* One request commits on one broker: a message for another owner starts another. */
    if (ws->b_n == HR_WS_BATCH_MAX || (ws->b_n > 0 && owner != ws->b_owner))
        hr_ws_batch_send(ws);
    if (ws->b_n == ws->b_cap) {
        ws->b_cap = ws->b_cap ? ws->b_cap * 2 : 8;
        ws->items = hr_realloc(ws->items, ws->b_cap * sizeof *ws->items);
    }
    ws->b_owner = owner;
    item.root = json_incref(root); /* the message's strings live in it */
    item.pub = hr_ws_pub_new(ws, req, topic, item.msg.topic.len);
    ws->items[ws->b_n++] = item;
}

/* ---- subscribing ---------------------------------------------------------------------------- */

static bool hr_ws_has_topic(const hr_ws_t *ws, const char *name, size_t len)
{
    for (size_t i = 0; i < ws->n_topics; i++)
        if (ws->lens[i] == len && memcmp(ws->topics[i], name, len) == 0)
            return true;
    return false;
}

/* The current subscription's positions (empty when there is none). */
static void hr_ws_current_cursor(hr_ws_t *ws, hr_cursor_t *out)
{
    hr_cursor_init(out);
    hr_subscriber_t *sub = hr_outq_subscriber(ws->q);
    if (sub != NULL) {
        size_t len;
        const char *text = hr_subscriber_cursor(sub, &len);
        if (hr_cursor_parse(out, text, len) != 0)
            hr_cursor_reset(out);
    }
    out->kind = HR_CURSOR_POSITIONS;
}

static json_t *hr_ws_topics_json(char *const *names, const size_t *lens, size_t n)
{
    json_t *list = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, json_stringn(names[i], lens[i]));
    return list;
}

static json_t *hr_ws_cursor_json(hr_ws_t *ws)
{
    hr_subscriber_t *sub = hr_outq_subscriber(ws->q);
    if (sub == NULL)
        return json_string("latest");
    size_t len;
    const char *text = hr_subscriber_cursor(sub, &len);
    return json_stringn(text, len);
}

/* Subscribe to `names` (validated, unique, not yet subscribed) from `from` (their positions, or
 * EARLIEST, or LATEST), keeping every subscribed topic's position, and answer `subscribed`. */
static void hr_ws_add_topics(hr_ws_t *ws, char **names, size_t *lens, size_t n,
                             const hr_cursor_t *from, bool untrusted, const char *req)
{
    hr_cursor_t merged;
    hr_ws_current_cursor(ws, &merged);
    size_t total = ws->n_topics + n;
    ws->topics = hr_realloc(ws->topics, total * sizeof *ws->topics);
    ws->lens = hr_realloc(ws->lens, total * sizeof *ws->lens);
    for (size_t i = 0; i < n; i++) {
        uint64_t hash = hr_fnv1a64(names[i], lens[i]);
        const hr_cursor_entry_t *e =
            from->kind == HR_CURSOR_POSITIONS ? hr_cursor_find(from, hash) : NULL;
        if (e != NULL)
            hr_cursor_set(&merged, hash, e->epoch, e->seq);
        else if (from->kind == HR_CURSOR_EARLIEST)
            hr_cursor_set(&merged, hash, 0, 0); /* before the oldest retained message */
        ws->topics[ws->n_topics] = names[i];
        ws->lens[ws->n_topics++] = lens[i];
    }
    /* Answered by hr_ws_positioned, once every topic's position is known. */
    json_array_append_new(ws->pending_subscribes, req != NULL ? json_string(req) : json_null());
    hr_outq_subscribe(ws->q, &hr_ws_transport, (const char *const *)ws->topics, ws->lens,
                      ws->n_topics, &merged, untrusted);
    hr_cursor_reset(&merged);
}

/* The subscription knows where every topic starts: answer the subscribes that built it. From
 * here on every committed message of its topics reaches the client, so a client may publish
 * once it has `subscribed` and count on receiving it. */
static void hr_ws_positioned(hr_subscriber_t *sub)
{
    hr_outq_t *q = hr_subscriber_data(sub);
    hr_ws_t *ws = hr_outq_framing_data(q);
    size_t len;
    const char *cursor = hr_subscriber_cursor(sub, &len);
    size_t i;
    json_t *req;
    json_array_foreach(ws->pending_subscribes, i, req)
    {
        hr_ws_send_json(ws,
                        json_pack("{s:s, s:o, s:s%}", "type", "subscribed", "topics",
                                  hr_ws_topics_json(ws->topics, ws->lens, ws->n_topics), "cursor",
                                  cursor, len),
                        json_string_value(req));
    }
    json_array_clear(ws->pending_subscribes);
    hr_ws_release_ctx(ws); /* no-op inside a read; after a head lookup, frees the context */
}

static void hr_ws_on_subscribe(hr_ws_t *ws, json_t *root, const char *req)
{
    json_t *topics = json_object_get(root, "topics");
    json_t *cursor = json_object_get(root, "cursor");
    size_t max = (size_t)ws->edge->config.max_topics;
    char why[192];
    if (!json_is_array(topics) || json_array_size(topics) == 0 ||
        (cursor != NULL && !json_is_null(cursor) && !json_is_string(cursor))) {
        hr_ws_send_error(ws, req, "invalid_request",
                         "subscribe needs \"topics\": a non-empty array of topic names, and an "
                         "optional string \"cursor\"");
        return;
    }
    size_t n = json_array_size(topics);
    if (n + ws->n_topics > max) {
        snprintf(why, sizeof why,
                 "a connection may subscribe to at most %zu topics (%zu asked, "
                 "%zu already subscribed)",
                 max, n, ws->n_topics);
        hr_ws_send_error(ws, req, "too_many_topics", why);
        return;
    }
    hr_cursor_t from;
    hr_cursor_init(&from);
    if (json_is_string(cursor) &&
        hr_cursor_parse(&from, json_string_value(cursor), json_string_length(cursor)) != 0) {
        snprintf(why, sizeof why,
                 "the cursor is not a Herald cursor (any edge's cursor works; this one does not "
                 "parse) (%zu bytes)",
                 json_string_length(cursor));
        hr_ws_send_error(ws, req, "invalid_cursor", why);
        return;
    }
    char **names = hr_calloc(n, sizeof *names);
    size_t *lens = hr_calloc(n, sizeof *lens);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(topics, i);
        if (!json_is_string(t)) {
            hr_ws_send_error(ws, req, "invalid_request", "every topic must be a string");
            goto fail;
        }
        const char *name = json_string_value(t);
        size_t len = json_string_length(t);
        if (hr_topic_validate(name, len, why, sizeof why) != 0) {
            hr_ws_send_error(ws, req, "invalid_topic", why);
            goto fail;
        }
        bool dup = hr_ws_has_topic(ws, name, len);
        for (size_t j = 0; j < k && !dup; j++)
            dup = lens[j] == len && memcmp(names[j], name, len) == 0;
        if (!dup) {
            names[k] = hr_strndup(name, len);
            lens[k++] = len;
        }
    }
    hr_ws_add_topics(ws, names, lens, k, &from, false, req);
    hr_free(names);
    hr_free(lens);
    hr_cursor_reset(&from);
    return;
fail:
    for (size_t i = 0; i < k; i++)
        hr_free(names[i]);
    hr_free(names);
    hr_free(lens);
    hr_cursor_reset(&from);
}

static void hr_ws_on_unsubscribe(hr_ws_t *ws, json_t *root, const char *req)
{
    json_t *topics = json_object_get(root, "topics");
    if (!json_is_array(topics) || json_array_size(topics) == 0) {
        hr_ws_send_error(ws, req, "invalid_request",
                         "unsubscribe needs \"topics\": a non-empty array of topic names");
        return;
    }
    size_t n = json_array_size(topics);
    for (size_t i = 0; i < n; i++) {
        if (!json_is_string(json_array_get(topics, i))) {
            hr_ws_send_error(ws, req, "invalid_request", "every topic must be a string");
            return;
        }
    }
    json_t *removed = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(topics, i);
        const char *name = json_string_value(t);
        size_t len = json_string_length(t);
        for (size_t j = 0; j < ws->n_topics; j++) {
            if (ws->lens[j] != len || memcmp(ws->topics[j], name, len) != 0)
                continue;
            json_array_append(removed, t);
            hr_free(ws->topics[j]);
            ws->topics[j] = ws->topics[ws->n_topics - 1];
            ws->lens[j] = ws->lens[ws->n_topics - 1];
            ws->n_topics--;
            break;
        }
    }
    if (json_array_size(removed) > 0) {
        hr_cursor_t keep;
        hr_ws_current_cursor(ws, &keep);
        hr_outq_subscribe(ws->q, &hr_ws_transport, (const char *const *)ws->topics, ws->lens,
                          ws->n_topics, &keep, false);
        hr_cursor_reset(&keep);
    }
    hr_ws_send_json(ws,
                    json_pack("{s:s, s:o, s:o}", "type", "unsubscribed", "topics", removed,
                              "cursor", hr_ws_cursor_json(ws)),
                    req);
}

/* ---- input --------------------------------------------------------------------------------- */

static void hr_ws_on_text(hr_ws_t *ws, const uint8_t *data, size_t len)
{
    json_error_t jerr;
    /* JSON_ALLOW_NUL: "\u0000" is valid JSON and data may hold it (names are checked by
     * length, so a NUL in a topic is refused as invalid_topic). */
    json_t *root = len > 0 ? json_loadb((const char *)data, len, JSON_ALLOW_NUL, &jerr) : NULL;
    char why[256];
    if (len == 0)
        snprintf(jerr.text, sizeof jerr.text, "the frame is empty");
    if (root == NULL || !json_is_object(root)) {
        snprintf(why, sizeof why, "a frame must be a JSON object%s%s", root == NULL ? ": " : "",
                 root == NULL ? jerr.text : "");
        json_decref(root);
        hr_ws_send_error(ws, NULL, "invalid_request", why);
        return;
    }
    json_t *jreq = json_object_get(root, "req");
    const char *req = NULL;
    if (jreq != NULL && !json_is_null(jreq)) {
        if (!json_is_string(jreq) || json_string_length(jreq) > HR_WS_REQ_MAX ||
            strlen(json_string_value(jreq)) != json_string_length(jreq)) {
            snprintf(why, sizeof why, "\"req\" must be a string of at most %d bytes",
                     HR_WS_REQ_MAX);
            hr_ws_send_error(ws, NULL, "invalid_request", why);
            json_decref(root);
            return;
        }
        req = json_string_value(jreq);
    }
    const char *type = json_string_value(json_object_get(root, "type"));
    if (type == NULL) {
        hr_ws_send_error(ws, req, "invalid_request", "a frame needs a string \"type\"");
    } else if (strcmp(type, "publish") == 0) {
        hr_ws_on_publish(ws, root, req);
    } else if (strcmp(type, "subscribe") == 0) {
        hr_ws_on_subscribe(ws, root, req);
    } else if (strcmp(type, "unsubscribe") == 0) {
        hr_ws_on_unsubscribe(ws, root, req);
    } else if (strcmp(type, "ping") == 0) {
        hr_ws_send_json(ws, json_pack("{s:s}", "type", "pong"), req);
    } else {
        snprintf(why, sizeof why,
                 "unknown type \"%.64s\"; expected subscribe, unsubscribe, publish or ping", type);
        hr_ws_send_error(ws, req, "invalid_request", why);
    }
    json_decref(root);
}

static void hr_ws_arm_ping(hr_ws_t *ws, uint64_t ms);

static void hr_ws_on_msg_recv(wslay_event_context_ptr ctx,
                              const struct wslay_event_on_msg_recv_arg *arg, void *user)
{
    (void)ctx;
    hr_ws_t *ws = user;
    if (ws->state != HR_WS_OPEN)
        return;
    switch (arg->opcode) {
    case WSLAY_TEXT_FRAME:
        ws->edge->metrics.ws_frames_in++;
        hr_ws_on_text(ws, arg->msg, arg->msg_length);
        break;
    case WSLAY_BINARY_FRAME:
        ws->edge->metrics.ws_protocol_errors++;
        hr_ws_close(ws, WSLAY_CODE_UNSUPPORTED_DATA, "binary frames are not accepted");
        break;
    case WSLAY_PONG:
        if (ws->awaiting_pong) {
            ws->awaiting_pong = false;
            hr_ws_arm_ping(ws, (uint64_t)ws->edge->config.ws_ping_interval);
        }
        break;
    default: /* ping (wslay queues the pong), close (wslay queues the answer) */
        break;
    }
}

/* Refuse a message over --ws-max-message from its frame header, before any of its payload is
 * buffered (wslay itself checks only once payload bytes arrive). */
static void hr_ws_on_frame_start(wslay_event_context_ptr ctx,
                                 const struct wslay_event_on_frame_recv_start_arg *arg, void *user)
{
    hr_ws_t *ws = user;
    /* A client frame's header: 2 bytes, the extended length, the 4-byte mask (RFC 6455 §5.2). */
    uint64_t len = arg->payload_length;
    ws->frame_bytes = 2 + (len < 126 ? 0 : len <= 0xFFFF ? 2 : 8) + 4 + len;
    if (arg->opcode >= WSLAY_CONNECTION_CLOSE) {
        /* RFC 6455 §5.5: a control frame is final and carries at most 125 bytes; a close body is
         * empty or starts with a 2-byte code (§5.5.1). (wslay refuses the first two with a close
         * frame that has no status code, and lets the last one through.) */
        bool bad = arg->payload_length > 125 || !arg->fin ||
                   (arg->opcode == WSLAY_CONNECTION_CLOSE && arg->payload_length == 1);
        if (bad && ws->state == HR_WS_OPEN) {
            wslay_event_shutdown_read(ctx);
            ws->edge->metrics.ws_protocol_errors++;
            hr_ws_close(ws, WSLAY_CODE_PROTOCOL_ERROR, "invalid control frame");
        }
        return;
    }
    if (arg->opcode != WSLAY_CONTINUATION_FRAME)
        ws->msg_len = 0;
    ws->msg_len += arg->payload_length;
    ws->fragmented = !arg->fin;
    if (ws->msg_len > (uint64_t)ws->edge->config.ws_max_message && ws->state == HR_WS_OPEN) {
        wslay_event_shutdown_read(ctx);
        ws->edge->metrics.ws_protocol_errors++;
        hr_ws_close(ws, WSLAY_CODE_MESSAGE_TOO_BIG, "message too big");
    }
}

static void hr_ws_on_frame_end(wslay_event_context_ptr ctx, void *user)
{
    (void)ctx;
    hr_ws_t *ws = user;
    ws->framed += ws->frame_bytes;
    ws->frame_bytes = 0;
}

static ssize_t hr_ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                             void *user)
{
    (void)flags;
    hr_ws_t *ws = user;
    if (ws->in_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < ws->in_len ? len : ws->in_len;
    memcpy(buf, ws->in, n);
    ws->in += n;
    ws->in_len -= n;
    ws->fed += n;
    return (ssize_t)n;
}

/* Between frames, with nothing buffered and nothing to send, wslay holds no state worth its
 * memory: free its context (idle connections are most connections). Never from inside one of
 * wslay's callbacks. */
static void hr_ws_release_ctx(hr_ws_t *ws)
{
    if (ws->ctx == NULL || ws->in_recv || ws->state != HR_WS_OPEN || ws->fed != ws->framed ||
        ws->fragmented || wslay_event_want_write(ws->ctx))
        return;
    wslay_event_context_free(ws->ctx);
    ws->ctx = NULL;
    ws->fed = ws->framed = 0;
}

static void hr_ws_on_read(void *arg, const char *data, size_t len)
{
    hr_ws_t *ws = arg;
    if (ws->state == HR_WS_GONE)
        return;
    ws->in = (const uint8_t *)data;
    ws->in_len = len;
    ws->in_recv = true;
    int rc = wslay_event_recv(hr_ws_ctx(ws));
    ws->in_recv = false;
    ws->in_len = 0;
    hr_ws_batch_send(ws);
    hr_ws_flush_wslay(ws);
    if (rc != 0 && !wslay_event_get_close_sent(ws->ctx)) {
        /* wslay gave up without a close frame: say why ourselves. */
        wslay_event_queue_close(ws->ctx, WSLAY_CODE_PROTOCOL_ERROR, NULL, 0);
        hr_ws_flush_wslay(ws);
    }
    if (ws->state == HR_WS_OPEN && (rc != 0 || wslay_event_get_close_sent(ws->ctx))) {
        /* wslay answered a close, or refused a frame with 1002/1007/1009: the connection ends
         * once that is written (RFC 6455 §7.1.1: the server closes the TCP connection). */
        if (wslay_event_get_status_code_sent(ws->ctx) != WSLAY_CODE_NORMAL_CLOSURE)
            ws->edge->metrics.ws_protocol_errors++;
        ws->state = HR_WS_CLOSING;
        hr_outq_cut_off(ws->q);
        return;
    }
    hr_ws_release_ctx(ws);
    hr_ws_maybe_pause(ws);
}

/* ---- keepalive ----------------------------------------------------------------------------- */

static void hr_ws_on_ping_timer(uv_timer_t *timer)
{
    hr_ws_t *ws = timer->data;
    if (ws->state != HR_WS_OPEN)
        return;
    if (ws->awaiting_pong) {
        /* No pong within --ws-ping-timeout: the peer is gone or stuck; a close frame would not
         * be read either. */
        HR_INFO(MOD, "event=ping_timeout peer=%s", hr_http_conn_peer(ws->conn));
        ws->edge->metrics.ws_ping_timeouts++;
        hr_http_close(ws->conn);
        return;
    }
    struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"hr", 2};
    if (wslay_event_queue_msg(hr_ws_ctx(ws), &m) == 0)
        hr_ws_flush_wslay(ws);
    hr_ws_release_ctx(ws);
    ws->awaiting_pong = true;
    hr_ws_arm_ping(ws, (uint64_t)ws->edge->config.ws_ping_timeout);
}

static void hr_ws_arm_ping(hr_ws_t *ws, uint64_t ms)
{
    if (ws->edge->config.ws_ping_interval > 0)
        uv_timer_start(&ws->ping, hr_ws_on_ping_timer, ms, 0);
}

/* ---- lifetime ------------------------------------------------------------------------------ */

/* The wslay context, created when first needed (see hr_ws_t.fed). */
static wslay_event_context_ptr hr_ws_ctx(hr_ws_t *ws)
{
    if (ws->ctx != NULL)
        return ws->ctx;
    static const struct wslay_event_callbacks cbs = {
        .recv_callback = hr_ws_recv_cb,
        .send_callback = hr_ws_send_cb,
        .on_frame_recv_start_callback = hr_ws_on_frame_start,
        .on_frame_recv_end_callback = hr_ws_on_frame_end,
        .on_msg_recv_callback = hr_ws_on_msg_recv,
    };
    if (wslay_event_context_server_init(&ws->ctx, &cbs, ws) != 0) {
        /* Its only failure is out of memory, which Herald does not recover from (hr_alloc.h). */
        HR_ERROR(MOD, "event=out_of_memory what=wslay_context");
        abort();
    }
    wslay_event_config_set_max_recv_msg_length(ws->ctx, (uint64_t)ws->edge->config.ws_max_message);
    return ws->ctx;
}

static void hr_ws_free(uv_handle_t *handle)
{
    hr_ws_t *ws = handle->data;
    for (size_t i = 0; i < ws->n_topics; i++)
        hr_free(ws->topics[i]);
    hr_free(ws->topics);
    hr_free(ws->lens);
    hr_free(ws->items);
    json_decref(ws->pending_subscribes);
    hr_free(ws);
}

/* The connection is gone (outq's closed hook): cancel what waits, then free. */
static void hr_ws_closed(hr_outq_t *q)
{
    hr_ws_t *ws = hr_outq_framing_data(q);
    ws->state = HR_WS_GONE;
    ws->edge->metrics.ws_connections--;
    hr_ws_batch_reset(ws);
    for (hr_ws_batch_t *b = ws->batches, *next; b != NULL; b = next) {
        next = b->next;
        hr_brokers_cancel(b->call); /* the publish may still commit: no one to tell */
        hr_ws_batch_free(b);
    }
    ws->batches = NULL;
    while (ws->pub_head != NULL) {
        hr_ws_pub_t *p = ws->pub_head;
        ws->pub_head = p->next;
        hr_ws_pub_free(p);
    }
    if (ws->ctx != NULL)
        wslay_event_context_free(ws->ctx);
    ws->ctx = NULL;
    if (ws->prev != NULL)
        ws->prev->next = ws->next;
    else
        hr_ws_all = ws->next;
    if (ws->next != NULL)
        ws->next->prev = ws->prev;
    uv_close((uv_handle_t *)&ws->ping, hr_ws_free);
}

void hr_ws_shutdown_all(uint64_t retry_ms)
{
    for (hr_ws_t *ws = hr_ws_all; ws != NULL; ws = ws->next) {
        if (ws->state != HR_WS_OPEN)
            continue;
        uint64_t jittered = retry_ms + (retry_ms > 0 ? (uint64_t)rand() % retry_ms : 0);
        hr_outq_close_with(ws->q, jittered);
    }
}

/* ---- the handshake (RFC 6455 §4.2) ---------------------------------------------------------- */

/* True when the comma-separated header value `v` holds `token` (case-insensitive). */
static bool hr_ws_has_token(const char *v, size_t len, const char *token)
{
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < len && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tl && strncasecmp(v + start, token, tl) == 0)
            return true;
    }
    return false;
}

/* Sec-WebSocket-Accept for `key`: base64(SHA-1(key + GUID)), 28 characters and a NUL. */
static int hr_ws_accept(const char *key, size_t key_len, char out[29])
{
    char buf[64];
    if (key_len + sizeof HR_WS_GUID > sizeof buf)
        return -1;
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, HR_WS_GUID, sizeof HR_WS_GUID - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (EVP_Digest(buf, key_len + sizeof HR_WS_GUID - 1, md, &md_len, EVP_sha1(), NULL) != 1 ||
        md_len != 20)
        return -1;
    return EVP_EncodeBlock((unsigned char *)out, md, 20) == 28 ? 0 : -1;
}

/* A Sec-WebSocket-Key is the base64 of 16 bytes (RFC 6455 §4.1 item 7): 24 characters. */
static bool hr_ws_key_ok(const char *key, size_t len)
{
    unsigned char raw[24];
    return len == 24 && key[22] == '=' && key[23] == '=' &&
           EVP_DecodeBlock(raw, (const unsigned char *)key, 24) == 18;
}

/* Answer an upgrade request that cannot be honoured with `status` and the JSON error. */
static void hr_ws_refuse(hr_http_conn_t *conn, int status, const char *code, const char *message,
                         const hr_http_header_t *extra)
{
    char body[320];
    int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                     message);
    hr_http_header_t h[2] = {{"Content-Type", 12, "application/json", 16}};
    size_t nh = 1;
    if (extra != NULL)
        h[nh++] = *extra;
    hr_http_respond(conn, status, h, nh, body, (size_t)n);
}

void hr_ws_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    size_t ul = 0, cl = 0, vl = 0, kl = 0, pl = 0, ol = 0;
    const char *upgrade = hr_http_header(req, "Upgrade", &ul);
    const char *connection = hr_http_header(req, "Connection", &cl);
    const char *version = hr_http_header(req, "Sec-WebSocket-Version", &vl);
    const char *key = hr_http_header(req, "Sec-WebSocket-Key", &kl);
    const char *protocols = hr_http_header(req, "Sec-WebSocket-Protocol", &pl);
    const char *origin = hr_http_header(req, "Origin", &ol);
    static const hr_http_header_t want_upgrade = {"Upgrade", 7, "websocket", 9};
    static const hr_http_header_t want_version = {"Sec-WebSocket-Version", 21, "13", 2};
    if (strcmp(req->method, "GET") != 0 || upgrade == NULL ||
        !hr_ws_has_token(upgrade, ul, "websocket")) {
        hr_ws_refuse(conn, 426, "invalid_request",
                     "this is a WebSocket endpoint: send GET with Upgrade: websocket",
                     &want_upgrade);
        return;
    }
    if (version == NULL || vl != 2 || memcmp(version, "13", 2) != 0) {
        hr_ws_refuse(conn, 426, "invalid_request", "only WebSocket version 13 is supported",
                     &want_version);
        return;
    }
    if (req->http_minor < 1 || connection == NULL || !hr_ws_has_token(connection, cl, "upgrade")) {
        hr_ws_refuse(conn, 400, "invalid_request",
                     "a WebSocket handshake is an HTTP/1.1 request with Connection: Upgrade", NULL);
        return;
    }
    if (key == NULL || !hr_ws_key_ok(key, kl)) {
        hr_ws_refuse(conn, 400, "invalid_request",
                     "Sec-WebSocket-Key must be the base64 of 16 bytes", NULL);
        return;
    }
    if (origin != NULL && !hr_http_conn_origin_allowed(conn, origin, ol)) {
        hr_ws_refuse(conn, 403, "forbidden", "origin not allowed", NULL);
        return;
    }
    bool herald_protocol = protocols != NULL && hr_ws_has_token(protocols, pl, HR_WS_SUBPROTOCOL);
    if (protocols != NULL && pl > 0 && !herald_protocol) {
        hr_ws_refuse(conn, 400, "invalid_request",
                     "the only subprotocol spoken here is " HR_WS_SUBPROTOCOL, NULL);
        return;
    }
    /* Topics in the query subscribe at once; their errors are answered before upgrading. */
    hr_edge_request_t parsed;
    bool subscribe = false;
    memset(&parsed, 0, sizeof parsed);
    hr_cursor_init(&parsed.cursor);
    for (size_t i = 0; i + 6 <= req->query_len && !subscribe; i++)
        subscribe =
            (i == 0 || req->query[i - 1] == '&') && memcmp(req->query + i, "topic=", 6) == 0;
    if (subscribe && hr_edge_parse_subscription(edge, conn, req, &parsed) != 0)
        return; /* answered */
    char accept[29];
    if (hr_ws_accept(key, kl, accept) != 0) {
        hr_edge_request_free(&parsed);
        hr_ws_refuse(conn, 500, "internal", "cannot compute Sec-WebSocket-Accept", NULL);
        return;
    }
    hr_http_header_t headers[4] = {
        {"Upgrade", 7, "websocket", 9},
        {"Connection", 10, "Upgrade", 7},
        {"Sec-WebSocket-Accept", 20, accept, 28},
        {"Sec-WebSocket-Protocol", 22, HR_WS_SUBPROTOCOL, sizeof HR_WS_SUBPROTOCOL - 1},
    };
    hr_http_stream_start(conn, 101, headers, herald_protocol ? 4 : 3, false);

    hr_ws_t *ws = hr_calloc(1, sizeof *ws);
    ws->edge = edge;
    ws->conn = conn;
    ws->pending_subscribes = json_array();
    ws->q = hr_outq_new(edge, conn, &hr_ws_framing, ws);
    uv_timer_init(edge->loop, &ws->ping);
    ws->ping.data = ws;
    hr_ws_arm_ping(ws, (uint64_t)edge->config.ws_ping_interval);
    ws->next = hr_ws_all;
    if (hr_ws_all != NULL)
        hr_ws_all->prev = ws;
    hr_ws_all = ws;
    edge->metrics.ws_connections++;
    HR_DEBUG(MOD, "event=open peer=%s topics=%zu", hr_http_conn_peer(conn), parsed.n_topics);
    if (subscribe) {
        /* Taken over: the names now belong to the connection's topic list. */
        hr_ws_add_topics(ws, parsed.topics, parsed.topic_lens, parsed.n_topics, &parsed.cursor,
                         parsed.cursor_untrusted, NULL);
        hr_free(parsed.topics);
        hr_free(parsed.topic_lens);
        parsed.topics = NULL;
        parsed.topic_lens = NULL;
        parsed.n_topics = 0;
    }
    hr_edge_request_free(&parsed);
    hr_http_conn_set_read_cb(conn, hr_ws_on_read, ws);
}
