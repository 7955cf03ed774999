/*
 * Server-Sent Events — GET /v1/sse (WHATWG HTML §9.2). One hr_sse_t per stream.
 *
 * Each event is written as the connection's own `id: CURSOR` line followed by the message's
 * shared encoding (msg.h: HR_ENC_SSE_DATA, or HR_ENC_SSE_JSON plus the connection's `CURSOR"}`
 * tail for format=json), so a message published to 10,000 subscribers is encoded once.
 * Events queued during one loop iteration go out as one write per connection (a uv_check
 * handle flushes every connection with queued events), which is where the CPU per delivery goes.
 *
 * Backpressure: the queue (queued + written-but-not-yet-sent bytes) is bounded by --queue-bytes.
 * A client that cannot keep up is cut off: nothing more is queued, what is queued still goes out
 * (its last event's id is the client's cursor, so EventSource resumes exactly), and the
 * connection closes once written or after --slow-client-grace ms, whichever comes first.
 */
#include "sse.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "query.h"
#include "sub.h"
#include "topic.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "sse"

/* One piece of queued output: a shared payload, or a range of the connection's own bytes. */
typedef struct {
    hr_payload_t *payload; /* NULL: bytes [off, off+len) of the batch's own buffer */
    uint32_t off, len;
} hr_sse_piece_t;

/* Output queued for one write. Owned by the connection until flushed, then by the write. */
typedef struct hr_sse_batch {
    struct hr_sse *sse; /* NULL once the connection is gone */
    char *own;
    size_t own_len, own_cap;
    hr_sse_piece_t *pieces;
    size_t n_pieces, cap_pieces;
    size_t bytes;
} hr_sse_batch_t;

typedef enum {
    HR_SSE_OPEN,    /* streaming events */
    HR_SSE_CUT_OFF, /* too slow, or shutting down: no more events; closing once written */
    HR_SSE_CLOSED,  /* the connection is gone; freed when the last write completes */
} hr_sse_state_t;

typedef struct hr_sse {
    hr_edge_t *edge;
    hr_http_conn_t *conn;
    hr_subscriber_t *sub;
    hr_sse_state_t state;
    bool json;                 /* format=json */
    hr_sse_batch_t *queue;     /* not yet written; NULL when empty */
    size_t inflight;           /* batches handed to the connection, not yet done */
    struct hr_sse *dirty_next; /* in the flush list while queue != NULL */
    bool dirty;
    uv_timer_t grace; /* closes a cut-off client that does not take its last bytes */
    bool grace_started;
} hr_sse_t;

/* Connections with queued output, flushed by the uv_check handle once per loop iteration. */
static hr_sse_t *hr_sse_dirty;
static uv_check_t hr_sse_flush_check;
static uv_timer_t hr_sse_heartbeat_timer;
static bool hr_sse_started;

static void hr_sse_batch_free(hr_sse_batch_t *b)
{
    for (size_t i = 0; i < b->n_pieces; i++)
        if (b->pieces[i].payload != NULL)
            hr_payload_unref(&b->pieces[i].payload);
    hr_free(b->pieces);
    hr_free(b->own);
    hr_free(b);
}

static hr_sse_piece_t *hr_sse_piece(hr_sse_batch_t *b)
{
    if (b->n_pieces == b->cap_pieces) {
        b->cap_pieces = b->cap_pieces ? b->cap_pieces * 2 : 8;
        b->pieces = hr_realloc(b->pieces, b->cap_pieces * sizeof *b->pieces);
    }
    return &b->pieces[b->n_pieces++];
}

static hr_sse_batch_t *hr_sse_queue(hr_sse_t *s)
{
    if (s->queue == NULL) {
        s->queue = hr_calloc(1, sizeof *s->queue);
        s->queue->sse = s;
    }
    if (!s->dirty) {
        s->dirty = true;
        s->dirty_next = hr_sse_dirty;
        hr_sse_dirty = s;
    }
    return s->queue;
}

static void hr_sse_own(hr_sse_t *s, const char *bytes, size_t len)
{
    hr_sse_batch_t *b = hr_sse_queue(s);
    if (b->own_len + len > b->own_cap) {
        while (b->own_len + len > b->own_cap)
            b->own_cap = b->own_cap ? b->own_cap * 2 : 512;
        b->own = hr_realloc(b->own, b->own_cap);
    }
    memcpy(b->own + b->own_len, bytes, len);
    /* Adjacent own bytes extend the previous piece: fewer iovecs. */
    if (b->n_pieces > 0 && b->pieces[b->n_pieces - 1].payload == NULL) {
        b->pieces[b->n_pieces - 1].len += (uint32_t)len;
    } else {
        hr_sse_piece_t *p = hr_sse_piece(b);
        *p = (hr_sse_piece_t){NULL, (uint32_t)b->own_len, (uint32_t)len};
    }
    b->own_len += len;
    b->bytes += len;
}

static void hr_sse_shared(hr_sse_t *s, hr_payload_t *payload)
{
    hr_sse_batch_t *b = hr_sse_queue(s);
    hr_sse_piece_t *p = hr_sse_piece(b);
    *p = (hr_sse_piece_t){hr_payload_ref(payload), 0, payload->len};
    b->bytes += payload->len;
}

static size_t hr_sse_pending(hr_subscriber_t *sub)
{
    hr_sse_t *s = hr_subscriber_data(sub);
    return (s->queue != NULL ? s->queue->bytes : 0) +
           (s->conn != NULL ? hr_http_pending_bytes(s->conn) : 0);
}

static void hr_sse_free_if_done(hr_sse_t *s);

static void hr_sse_grace_closed(uv_handle_t *handle)
{
    hr_sse_t *s = handle->data;
    s->grace_started = false;
    hr_sse_free_if_done(s);
}

static void hr_sse_free_if_done(hr_sse_t *s)
{
    if (s->state != HR_SSE_CLOSED || s->inflight > 0 || s->dirty)
        return;
    if (s->grace_started) {
        if (!uv_is_closing((uv_handle_t *)&s->grace))
            uv_close((uv_handle_t *)&s->grace, hr_sse_grace_closed);
        return;
    }
    hr_free(s);
}

static void hr_sse_on_grace(uv_timer_t *timer)
{
    hr_sse_t *s = timer->data;
    if (s->conn != NULL)
        hr_http_close(s->conn);
}

/* Stop queueing and close once what is queued is written, or after the grace period. */
static void hr_sse_cut_off(hr_sse_t *s)
{
    if (s->state != HR_SSE_OPEN)
        return;
    s->state = HR_SSE_CUT_OFF;
    hr_subscriber_stop(s->sub);
    if (!s->grace_started) {
        uv_timer_init(s->edge->loop, &s->grace);
        s->grace.data = s;
        s->grace_started = true;
        uv_timer_start(&s->grace, hr_sse_on_grace, (uint64_t)s->edge->config.slow_client_grace, 0);
    }
    if (!s->dirty && s->inflight == 0 && s->conn != NULL)
        hr_http_stream_end(s->conn);
}

static void hr_sse_write_queued(hr_sse_t *s);

static bool hr_sse_over_limit(hr_sse_t *s)
{
    /* One loop iteration can bring more than the bound at once (a broker commits a batch of
     * thousands of messages; a catch-up page): hand a large batch to the kernel now rather than
     * at the end of the iteration, so that only what a client has really not taken counts, and
     * a client that keeps up is not cut off for the size of a burst. */
    if (s->queue != NULL && s->queue->bytes >= (size_t)s->edge->config.queue_bytes / 4 &&
        s->conn != NULL)
        hr_sse_write_queued(s);
    return hr_sse_pending(s->sub) > (size_t)s->edge->config.queue_bytes;
}

static int hr_sse_deliver(hr_subscriber_t *sub, hr_msg_t *msg, const char *cursor, size_t len)
{
    hr_sse_t *s = hr_subscriber_data(sub);
    if (s->state != HR_SSE_OPEN)
        return -ENOBUFS;
    if (hr_sse_over_limit(s)) {
        s->edge->metrics.slow_disconnects++;
        HR_INFO(MOD, "event=slow_client peer=%s pending_bytes=%zu", hr_http_conn_peer(s->conn),
                hr_sse_pending(sub));
        hr_sse_cut_off(s);
        return -ENOBUFS;
    }
    hr_sse_own(s, "id: ", 4);
    hr_sse_own(s, cursor, len);
    hr_sse_own(s, "\n", 1);
    if (s->json) {
        hr_sse_shared(s, hr_msg_encoded(msg, HR_ENC_SSE_JSON));
        hr_sse_own(s, cursor, len);
        hr_sse_own(s, "\"}\n\n", 4);
    } else {
        hr_sse_shared(s, hr_msg_encoded(msg, HR_ENC_SSE_DATA));
    }
    return 0;
}

static int hr_sse_reset(hr_subscriber_t *sub, const char *topic, size_t topic_len,
                        const char *reason, uint64_t next_seq, const char *cursor, size_t len)
{
    hr_sse_t *s = hr_subscriber_data(sub);
    if (s->state != HR_SSE_OPEN)
        return -ENOBUFS;
    json_t *j = json_pack("{s:s, s:s%, s:s, s:I}", "type", "reset", "topic", topic, topic_len,
                          "reason", reason, "next_seq", (json_int_t)next_seq);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    hr_sse_own(s, "id: ", 4);
    hr_sse_own(s, cursor, len);
    hr_sse_own(s, "\nevent: herald.reset\ndata: ", 27);
    hr_sse_own(s, text, strlen(text));
    hr_sse_own(s, "\n\n", 2);
    free(text);
    return 0;
}

static const hr_transport_t hr_sse_transport = {
    .name = "sse",
    .id = HR_TRANSPORT_SSE,
    .deliver = hr_sse_deliver,
    .reset = hr_sse_reset,
    .pending_bytes = hr_sse_pending,
};

/* ---- writing ------------------------------------------------------------------------------ */

static void hr_sse_on_written(void *arg, int status)
{
    hr_sse_batch_t *b = arg;
    hr_sse_t *s = b->sse;
    hr_sse_batch_free(b);
    if (s == NULL)
        return;
    s->inflight--;
    if (s->state == HR_SSE_CLOSED) {
        hr_sse_free_if_done(s);
        return;
    }
    if (status != 0)
        return; /* the connection is closing; its close callback follows */
    if (s->state == HR_SSE_CUT_OFF) {
        if (!s->dirty && s->inflight == 0)
            hr_http_stream_end(s->conn);
        return;
    }
    if (hr_sse_pending(s->sub) <= (size_t)s->edge->config.queue_bytes / 2)
        hr_subscriber_on_drain(s->sub);
}

/* Hand the queued batch to the connection (libuv writes what the kernel takes at once). The
 * connection stays on the flush list if it is there. */
static void hr_sse_write_queued(hr_sse_t *s)
{
    hr_sse_batch_t *b = s->queue;
    s->queue = NULL;
    if (b == NULL)
        return;
    uv_buf_t stack[64];
    uv_buf_t *bufs = b->n_pieces <= 64 ? stack : hr_malloc(b->n_pieces * sizeof *bufs);
    for (size_t i = 0; i < b->n_pieces; i++) {
        const hr_sse_piece_t *p = &b->pieces[i];
        bufs[i] = p->payload != NULL ? uv_buf_init(p->payload->data, p->payload->len)
                                     : uv_buf_init(b->own + p->off, p->len);
    }
    if (hr_http_stream_write(s->conn, bufs, b->n_pieces, hr_sse_on_written, b) == 0)
        s->inflight++;
    else
        hr_sse_batch_free(b);
    if (bufs != stack)
        hr_free(bufs);
}

static void hr_sse_flush_one(hr_sse_t *s)
{
    s->dirty = false;
    if (s->state == HR_SSE_CLOSED || s->conn == NULL) {
        if (s->queue != NULL) {
            hr_sse_batch_free(s->queue);
            s->queue = NULL;
        }
        hr_sse_free_if_done(s);
        return;
    }
    hr_sse_write_queued(s);
}

static void hr_sse_on_check(uv_check_t *check)
{
    (void)check;
    while (hr_sse_dirty != NULL) {
        hr_sse_t *s = hr_sse_dirty;
        hr_sse_dirty = s->dirty_next;
        hr_sse_flush_one(s);
    }
}

/* ---- heartbeats and shutdown --------------------------------------------------------------- */

static void hr_sse_heartbeat_one(hr_subscriber_t *sub, void *arg)
{
    (void)arg;
    if (hr_subscriber_transport(sub) != &hr_sse_transport)
        return;
    hr_sse_t *s = hr_subscriber_data(sub);
    /* A comment line keeps proxies and load balancers from timing the stream out (§9.2.7). */
    if (s->state == HR_SSE_OPEN && s->queue == NULL)
        hr_sse_own(s, ":\n\n", 3);
}

static void hr_sse_on_heartbeat(uv_timer_t *timer)
{
    hr_edge_t *edge = timer->data;
    hr_registry_foreach(edge->registry, hr_sse_heartbeat_one, NULL);
}

static void hr_sse_shutdown_one(hr_subscriber_t *sub, void *arg)
{
    hr_edge_t *edge = arg;
    if (hr_subscriber_transport(sub) != &hr_sse_transport)
        return;
    hr_sse_t *s = hr_subscriber_data(sub);
    if (s->state != HR_SSE_OPEN)
        return;
    /* Spread reconnects over [retry, 2 * retry) so clients of a drained edge do not all
     * arrive at the others in the same millisecond. */
    uint64_t retry = (uint64_t)edge->config.sse_retry;
    retry += retry > 0 ? (uint64_t)rand() % retry : 0;
    size_t len;
    const char *cursor = hr_subscriber_cursor(sub, &len);
    json_t *j = json_pack("{s:s, s:s%, s:I}", "type", "shutdown", "cursor", cursor, len, "retry_ms",
                          (json_int_t)retry);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    char head[64];
    int n = snprintf(head, sizeof head, "retry: %llu\n", (unsigned long long)retry);
    hr_sse_own(s, head, (size_t)n);
    if (len > 0 && strcmp(cursor, "latest") != 0) {
        hr_sse_own(s, "id: ", 4);
        hr_sse_own(s, cursor, len);
        hr_sse_own(s, "\n", 1);
    }
    hr_sse_own(s, "event: herald.shutdown\ndata: ", 29);
    hr_sse_own(s, text, strlen(text));
    hr_sse_own(s, "\n\n", 2);
    free(text);
    hr_sse_cut_off(s);
}

void hr_sse_shutdown_all(hr_edge_t *edge)
{
    hr_registry_foreach(edge->registry, hr_sse_shutdown_one, edge);
}

void hr_sse_start(hr_edge_t *edge)
{
    if (hr_sse_started)
        return;
    hr_sse_started = true;
    uv_check_init(edge->loop, &hr_sse_flush_check);
    uv_check_start(&hr_sse_flush_check, hr_sse_on_check);
    uv_unref((uv_handle_t *)&hr_sse_flush_check);
    uv_timer_init(edge->loop, &hr_sse_heartbeat_timer);
    hr_sse_heartbeat_timer.data = edge;
    uv_timer_start(&hr_sse_heartbeat_timer, hr_sse_on_heartbeat,
                   (uint64_t)edge->config.sse_heartbeat, (uint64_t)edge->config.sse_heartbeat);
    uv_unref((uv_handle_t *)&hr_sse_heartbeat_timer);
}

void hr_sse_stop(void)
{
    if (!hr_sse_started)
        return;
    hr_sse_started = false;
    uv_close((uv_handle_t *)&hr_sse_flush_check, NULL);
    uv_close((uv_handle_t *)&hr_sse_heartbeat_timer, NULL);
}

/* ---- opening a stream ---------------------------------------------------------------------- */

static void hr_sse_on_close(void *arg)
{
    hr_sse_t *s = arg;
    s->state = HR_SSE_CLOSED;
    s->conn = NULL;
    hr_subscriber_destroy(&s->sub);
    if (s->queue != NULL) {
        hr_sse_batch_free(s->queue);
        s->queue = NULL;
    }
    /* Writes in flight complete (with an error) and drop their link to us. */
    hr_sse_free_if_done(s);
}

void hr_sse_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    hr_edge_request_t parsed;
    if (hr_edge_parse_subscription(edge, conn, req, &parsed) != 0)
        return; /* answered with the error */
    char format[16] = "";
    hr_query_iter_t it;
    char name[32], value[16];
    hr_query_init(&it, req->query, req->query_len);
    int rc;
    while ((rc = hr_query_next(&it, name, sizeof name, value, sizeof value, NULL)) != 0) {
        if (rc > 0 && strcmp(name, "format") == 0)
            snprintf(format, sizeof format, "%s", value);
    }
    if (format[0] != '\0' && strcmp(format, "json") != 0 && strcmp(format, "data") != 0) {
        hr_edge_request_free(&parsed);
        hr_http_respond_error(conn, 400, "invalid_request", "format must be 'data' or 'json'");
        return;
    }
    static const hr_http_header_t headers[] = {
        {"Content-Type", 12, "text/event-stream; charset=utf-8", 32},
        {"Cache-Control", 13, "no-cache", 8},
        {"X-Accel-Buffering", 17, "no", 2},
    };
    if (strcmp(req->method, "HEAD") == 0) {
        /* RFC 9110 §9.3.2: the head of what GET would answer, and no content (no stream, no
         * subscriber). */
        hr_edge_request_free(&parsed);
        hr_http_respond(conn, 200, headers, 3, "", 0);
        return;
    }
    hr_sse_t *s = hr_calloc(1, sizeof *s);
    s->edge = edge;
    s->conn = conn;
    s->json = strcmp(format, "json") == 0;
    hr_http_stream_start(conn, 200, headers, 3, false);
    hr_http_conn_set_close_cb(conn, hr_sse_on_close, s);
    char retry[48];
    int n =
        snprintf(retry, sizeof retry, ":ok\nretry: %lld\n\n", (long long)edge->config.sse_retry);
    s->sub = hr_subscriber_new(edge, &hr_sse_transport, s, (const char *const *)parsed.topics,
                               parsed.topic_lens, parsed.n_topics, &parsed.cursor,
                               parsed.cursor_untrusted);
    hr_sse_own(s, retry, (size_t)n);
    HR_DEBUG(MOD, "event=open peer=%s topics=%zu", hr_http_conn_peer(conn), parsed.n_topics);
    hr_edge_request_free(&parsed);
}
