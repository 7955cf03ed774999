#include "outq.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MOD "outq"

/* One piece of queued output: a shared payload, or a range of the batch's own bytes. */
typedef struct {
    hr_payload_t *payload; /* NULL: bytes [off, off+len) of the batch's own buffer */
    uint32_t off, len;
} hr_outq_piece_t;

/* Output queued for one write. Owned by the queue until flushed, then by the write. */
typedef struct hr_outq_batch {
    hr_outq_t *q; /* NULL once the connection is gone */
    char *own;
    size_t own_len, own_cap;
    hr_outq_piece_t *pieces;
    size_t n_pieces, cap_pieces;
    size_t bytes;
    size_t messages; /* messages (deliveries) among the pieces */
} hr_outq_batch_t;

typedef enum {
    HR_OUTQ_OPEN,    /* streaming */
    HR_OUTQ_CUT_OFF, /* too slow, or shutting down: nothing more queued; closing once written */
    HR_OUTQ_CLOSED,  /* the connection is gone; freed when the last write completes */
} hr_outq_state_t;

struct hr_outq {
    hr_edge_t *edge;
    hr_http_conn_t *conn;
    hr_subscriber_t *sub;
    const hr_outq_framing_t *framing;
    void *framing_data;
    hr_outq_state_t state;
    bool slow_pending;      /* cut off for a full queue: the framing's `slow` output is still due */
    hr_outq_batch_t *queue; /* not yet written; NULL when empty */
    size_t inflight;        /* batches handed to the connection, not yet done */
    size_t inflight_messages; /* messages in those batches */
    hr_outq_t *dirty_next;    /* in the flush list while dirty */
    bool dirty;
    /* While open: the stall watch, armed while the queue is over half full — a client whose
     * queue stays there for --slow-client-grace ms is cut off (one that reads slowly is paced
     * by the registry instead, which reads the log at its speed). Once cut off: closes a client
     * that does not take its last bytes. */
    uv_timer_t grace;
    bool grace_started; /* initialised (must be closed) */
    bool watching;      /* the stall watch is armed */
};

/* Queues with output, flushed by the uv_check handle once per loop iteration. While the list is
 * not empty an idle handle is active, so the loop does not block in its poll phase before the
 * check runs: output queued from an idle or timer callback (a broker reply drained on the
 * brokers' idle pass) leaves in this iteration, not after the next event. */
static hr_outq_t *hr_outq_dirty;
static uv_check_t hr_outq_flush_check;
static uv_idle_t hr_outq_nudge;
static bool hr_outq_started;

static void hr_outq_on_nudge(uv_idle_t *idle)
{
    (void)idle; /* its being active is the point: a zero poll timeout */
}

static void hr_outq_batch_free(hr_outq_batch_t *b)
{
    for (size_t i = 0; i < b->n_pieces; i++)
        if (b->pieces[i].payload != NULL)
            hr_payload_unref(&b->pieces[i].payload);
    hr_free(b->pieces);
    hr_free(b->own);
    hr_free(b);
}

static hr_outq_piece_t *hr_outq_piece(hr_outq_batch_t *b)
{
    if (b->n_pieces == b->cap_pieces) {
        b->cap_pieces = b->cap_pieces ? b->cap_pieces * 2 : 8;
        b->pieces = hr_realloc(b->pieces, b->cap_pieces * sizeof *b->pieces);
    }
    return &b->pieces[b->n_pieces++];
}

/* Put the queue on the flush list (flushed at the end of this loop iteration). */
static void hr_outq_mark_dirty(hr_outq_t *q)
{
    if (!q->dirty) {
        q->dirty = true;
        q->dirty_next = hr_outq_dirty;
        if (hr_outq_dirty == NULL && hr_outq_started)
            uv_idle_start(&hr_outq_nudge, hr_outq_on_nudge);
        hr_outq_dirty = q;
    }
}

static hr_outq_batch_t *hr_outq_batch(hr_outq_t *q)
{
    if (q->queue == NULL) {
        q->queue = hr_calloc(1, sizeof *q->queue);
        q->queue->q = q;
    }
    hr_outq_mark_dirty(q);
    return q->queue;
}

void hr_outq_own(hr_outq_t *q, const char *bytes, size_t len)
{
    hr_outq_batch_t *b = hr_outq_batch(q);
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
        hr_outq_piece_t *p = hr_outq_piece(b);
        *p = (hr_outq_piece_t){NULL, (uint32_t)b->own_len, (uint32_t)len};
    }
    b->own_len += len;
    b->bytes += len;
}

void hr_outq_shared(hr_outq_t *q, hr_payload_t *payload)
{
    hr_outq_batch_t *b = hr_outq_batch(q);
    hr_outq_piece_t *p = hr_outq_piece(b);
    *p = (hr_outq_piece_t){hr_payload_ref(payload), 0, payload->len};
    b->bytes += payload->len;
}

void *hr_outq_framing_data(const hr_outq_t *q)
{
    return q->framing_data;
}

static size_t hr_outq_pending_bytes(const hr_outq_t *q)
{
    return (q->queue != NULL ? q->queue->bytes : 0) +
           (q->conn != NULL ? hr_http_pending_bytes(q->conn) : 0);
}

size_t hr_outq_queued_bytes(const hr_outq_t *q)
{
    return hr_outq_pending_bytes(q);
}

/* How full the queue is, in bytes of --queue-bytes: the bytes not yet taken, or the messages
 * not yet taken scaled to bytes (messages × queue_bytes / queue_messages) when that bound is the
 * tighter one, so the registry's "over half" tests see whichever bound comes first. */
size_t hr_outq_pending(hr_subscriber_t *sub)
{
    hr_outq_t *q = hr_subscriber_data(sub);
    size_t bytes = hr_outq_pending_bytes(q);
    size_t messages = q->inflight_messages + (q->queue != NULL ? q->queue->messages : 0);
    size_t scaled = (size_t)((double)messages * (double)q->edge->config.queue_bytes /
                             (double)q->edge->config.queue_messages);
    return scaled > bytes ? scaled : bytes;
}

/* ---- closing ------------------------------------------------------------------------------ */

static void hr_outq_free_if_done(hr_outq_t *q);

static void hr_outq_grace_closed(uv_handle_t *handle)
{
    hr_outq_t *q = handle->data;
    q->grace_started = false;
    hr_outq_free_if_done(q);
}

static void hr_outq_free_if_done(hr_outq_t *q)
{
    if (q->state != HR_OUTQ_CLOSED || q->inflight > 0 || q->dirty)
        return;
    if (q->grace_started) {
        if (!uv_is_closing((uv_handle_t *)&q->grace))
            uv_close((uv_handle_t *)&q->grace, hr_outq_grace_closed);
        return;
    }
    hr_free(q);
}

static void hr_outq_cut_off_slow(hr_outq_t *q);

static void hr_outq_on_grace(uv_timer_t *timer)
{
    hr_outq_t *q = timer->data;
    if (q->state == HR_OUTQ_OPEN) {
        q->watching = false;
        hr_outq_cut_off_slow(q); /* stalled over half full for the whole grace */
        return;
    }
    if (q->conn != NULL)
        hr_http_close(q->conn);
}

static void hr_outq_timer(hr_outq_t *q)
{
    if (!q->grace_started) {
        uv_timer_init(q->edge->loop, &q->grace);
        q->grace.data = q;
        q->grace_started = true;
    }
    uv_timer_start(&q->grace, hr_outq_on_grace, (uint64_t)q->edge->config.slow_client_grace, 0);
}

static void hr_outq_on_close(void *arg);

/* Stop queueing; end the stream once what is queued is written, or close after the grace. */
void hr_outq_cut_off(hr_outq_t *q)
{
    if (q->state != HR_OUTQ_OPEN)
        return;
    q->state = HR_OUTQ_CUT_OFF;
    if (q->sub != NULL)
        hr_subscriber_stop(q->sub);
    q->watching = false;
    hr_outq_timer(q); /* from now on: the closing grace */
    /* Ended by the flush handle, never from here: we may be inside a delivery to q->sub. */
    hr_outq_mark_dirty(q);
}

/* A cut-off stream whose output has all been written: end the response and let go of the
 * connection. A chunked stream's connection stays open for the client's next request (RFC 9112
 * §9.3), so its close callback will not tell us: the queue is done with it now, and the grace
 * timer must not close a connection that may be serving another request by the time it fires. */
static void hr_outq_end(hr_outq_t *q)
{
    hr_http_conn_t *conn = q->conn;
    hr_http_conn_set_close_cb(conn, NULL, NULL);
    hr_http_stream_end(conn);
    hr_outq_on_close(q); /* destroys the subscriber; frees q */
}

static void hr_outq_on_close(void *arg)
{
    hr_outq_t *q = arg;
    q->state = HR_OUTQ_CLOSED;
    q->conn = NULL;
    hr_subscriber_destroy(&q->sub);
    if (q->framing->closed != NULL)
        q->framing->closed(q);
    if (q->queue != NULL) {
        hr_outq_batch_free(q->queue);
        q->queue = NULL;
    }
    /* Writes in flight complete (with an error) and drop their link to us. */
    hr_outq_free_if_done(q);
}

/* ---- writing ------------------------------------------------------------------------------ */

/* A write completed: end a cut-off stream once everything is out, or let a paused catch-up
 * read on when the queue has room. */
static void hr_outq_after_write(hr_outq_t *q)
{
    if (q->state == HR_OUTQ_CUT_OFF) {
        if (!q->dirty && q->inflight == 0)
            hr_outq_end(q);
        return;
    }
    if (q->sub != NULL ? hr_outq_pending(q->sub) > (size_t)q->edge->config.queue_bytes / 2
                       : hr_outq_pending_bytes(q) > (size_t)q->edge->config.queue_bytes / 2)
        return;
    if (q->watching) { /* drained below half: it keeps up */
        q->watching = false;
        uv_timer_stop(&q->grace);
    }
    if (q->sub != NULL)
        hr_subscriber_on_drain(q->sub);
    if (q->framing->drained != NULL)
        q->framing->drained(q);
}

static void hr_outq_on_written(void *arg, int status)
{
    hr_outq_batch_t *b = arg;
    hr_outq_t *q = b->q;
    size_t messages = b->messages;
    hr_outq_batch_free(b);
    if (q == NULL)
        return;
    q->inflight--;
    q->inflight_messages -= messages;
    if (q->state == HR_OUTQ_CLOSED) {
        hr_outq_free_if_done(q);
        return;
    }
    if (status != 0)
        return; /* the connection is closing; its close callback follows */
    hr_outq_after_write(q);
}

/* Hand the queued batch to the connection (libuv writes what the kernel takes at once). */
static void hr_outq_write_queued(hr_outq_t *q)
{
    hr_outq_batch_t *b = q->queue;
    q->queue = NULL;
    if (b == NULL)
        return;
    uv_buf_t stack[64];
    stack[0] = uv_buf_init(NULL, 0); /* all n_pieces are set below; this quiets -Wmaybe-uninit */
    uv_buf_t *bufs = b->n_pieces <= 64 ? stack : hr_malloc(b->n_pieces * sizeof *bufs);
    for (size_t i = 0; i < b->n_pieces; i++) {
        const hr_outq_piece_t *p = &b->pieces[i];
        bufs[i] = p->payload != NULL ? uv_buf_init(p->payload->data, p->payload->len)
                                     : uv_buf_init(b->own + p->off, p->len);
    }
    int rc = hr_http_stream_write(q->conn, bufs, b->n_pieces, hr_outq_on_written, b);
    if (bufs != stack)
        hr_free(bufs);
    if (rc == 0) {
        q->inflight++;
        q->inflight_messages += b->messages;
        return;
    }
    hr_outq_batch_free(b); /* written at once (1), or the connection is closing */
    if (rc == 1)
        hr_outq_after_write(q);
}

static void hr_outq_flush_one(hr_outq_t *q)
{
    q->dirty = false;
    if (q->state == HR_OUTQ_CLOSED || q->conn == NULL) {
        if (q->queue != NULL) {
            hr_outq_batch_free(q->queue);
            q->queue = NULL;
        }
        hr_outq_free_if_done(q);
        return;
    }
    if (q->slow_pending) {
        q->slow_pending = false;
        hr_outq_final_json(q, q->framing->slow, "slow_consumer", (uint64_t)q->edge->config.retry);
        if (q->dirty)
            return; /* back on the flush list: this same check pass writes it */
    }
    hr_outq_write_queued(q);
    if (q->state == HR_OUTQ_CUT_OFF && q->inflight == 0)
        hr_outq_end(q); /* nothing (more) to write */
}

static void hr_outq_on_check(uv_check_t *check)
{
    (void)check;
    while (hr_outq_dirty != NULL) {
        hr_outq_t *q = hr_outq_dirty;
        hr_outq_dirty = q->dirty_next;
        hr_outq_flush_one(q);
    }
    uv_idle_stop(&hr_outq_nudge);
}

static bool hr_outq_over_limit(hr_outq_t *q)
{
    /* One loop iteration can bring more than the bound at once (a broker commits a batch of
     * thousands of messages; a catch-up page): hand a large batch to the kernel now rather than
     * at the end of the iteration, so that only what a client has really not taken counts, and
     * a client that keeps up is not cut off for the size of a burst. */
    if (q->queue != NULL && q->queue->bytes >= (size_t)q->edge->config.queue_bytes / 4 &&
        q->conn != NULL)
        hr_outq_write_queued(q);
    size_t messages = q->inflight_messages + (q->queue != NULL ? q->queue->messages : 0);
    return hr_outq_pending_bytes(q) > (size_t)q->edge->config.queue_bytes ||
           messages >= (size_t)q->edge->config.queue_messages;
}

/* Cut off a client that cannot keep up (a full queue, or one stalled over half full). */
static void hr_outq_cut_off_slow(hr_outq_t *q)
{
    q->edge->metrics.slow_disconnects++;
    HR_INFO(MOD, "event=slow_client transport=%s peer=%s pending_bytes=%zu",
            q->sub != NULL ? hr_subscriber_transport(q->sub)->name : "-",
            q->conn != NULL ? hr_http_conn_peer(q->conn) : "-", hr_outq_pending_bytes(q));
    /* The last word goes out at the flush: by then the subscriber's cursor is back to the last
     * message really queued (a refused one is not counted). */
    q->slow_pending = q->framing->slow != NULL;
    hr_outq_cut_off(q);
}

/* ---- the transport functions --------------------------------------------------------------- */

int hr_outq_deliver(hr_subscriber_t *sub, hr_msg_t *msg, const char *cursor, size_t cursor_len)
{
    hr_outq_t *q = hr_subscriber_data(sub);
    if (q->state != HR_OUTQ_OPEN)
        return -ENOBUFS;
    if (hr_outq_over_limit(q)) {
        hr_outq_cut_off_slow(q);
        return -ENOBUFS;
    }
    q->framing->message(q, msg, cursor, cursor_len);
    if (q->queue != NULL)
        q->queue->messages++;
    if (!q->watching && hr_outq_pending(sub) > (size_t)q->edge->config.queue_bytes / 2) {
        q->watching = true; /* over half full: it must drain within the grace */
        hr_outq_timer(q);
    }
    return 0;
}

int hr_outq_reset(hr_subscriber_t *sub, const char *topic, size_t topic_len, const char *reason,
                  uint64_t next_seq, const char *cursor, size_t cursor_len)
{
    hr_outq_t *q = hr_subscriber_data(sub);
    if (q->state != HR_OUTQ_OPEN)
        return -ENOBUFS;
    json_t *j = json_pack("{s:s, s:s%, s:s, s:I}", "type", "reset", "topic", topic, topic_len,
                          "reason", reason, "next_seq", (json_int_t)next_seq);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    q->framing->reset(q, text, cursor, cursor_len);
    free(text);
    return 0;
}

void hr_outq_heartbeat(hr_subscriber_t *sub)
{
    hr_outq_t *q = hr_subscriber_data(sub);
    if (q->state == HR_OUTQ_OPEN && q->queue == NULL)
        q->framing->heartbeat(q);
}

void hr_outq_final_json(hr_outq_t *q,
                        void (*emit)(hr_outq_t *q, const char *json, const char *cursor,
                                     size_t cursor_len, uint64_t retry_ms),
                        const char *reason, uint64_t retry_ms)
{
    size_t len = 0;
    const char *cursor = q->sub != NULL ? hr_subscriber_cursor(q->sub, &len) : "";
    json_t *j = json_pack("{s:s, s:s%, s:I, s:s}", "type", "shutdown", "cursor", cursor, len,
                          "retry_ms", (json_int_t)retry_ms, "reason", reason);
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    emit(q, text, cursor, len, retry_ms);
    free(text);
}

void hr_outq_close_with(hr_outq_t *q, uint64_t retry_ms)
{
    if (q->state != HR_OUTQ_OPEN)
        return;
    hr_outq_final_json(q, q->framing->shutdown, "draining", retry_ms);
    hr_outq_cut_off(q);
}

void hr_outq_shutdown(hr_subscriber_t *sub, uint64_t retry_ms)
{
    hr_outq_close_with(hr_subscriber_data(sub), retry_ms);
}

/* ---- opening ------------------------------------------------------------------------------ */

hr_outq_t *hr_outq_new(hr_edge_t *edge, hr_http_conn_t *conn, const hr_outq_framing_t *framing,
                       void *framing_data)
{
    hr_outq_t *q = hr_calloc(1, sizeof *q);
    q->edge = edge;
    q->conn = conn;
    q->framing = framing;
    q->framing_data = framing_data;
    hr_http_conn_set_close_cb(conn, hr_outq_on_close, q);
    return q;
}

void hr_outq_subscribe(hr_outq_t *q, const hr_transport_t *transport, const char *const *names,
                       const size_t *lens, size_t n, const hr_cursor_t *cursor,
                       bool cursor_untrusted)
{
    hr_subscriber_destroy(&q->sub);
    if (n > 0 && q->state == HR_OUTQ_OPEN)
        q->sub = hr_subscriber_new(q->edge, transport, q, names, lens, n, cursor, cursor_untrusted);
}

hr_subscriber_t *hr_outq_subscriber(const hr_outq_t *q)
{
    return q->sub;
}

bool hr_outq_is_open(const hr_outq_t *q)
{
    return q->state == HR_OUTQ_OPEN;
}

hr_outq_t *hr_outq_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_transport_t *transport,
                        const hr_outq_framing_t *framing, void *framing_data,
                        const hr_http_header_t *headers, size_t n_headers, bool chunked,
                        const char *preamble, size_t preamble_len, const hr_edge_request_t *parsed)
{
    hr_http_stream_start(conn, 200, headers, n_headers, chunked);
    hr_outq_t *q = hr_outq_new(edge, conn, framing, framing_data);
    if (preamble != NULL)
        hr_outq_own(q, preamble, preamble_len);
    hr_outq_subscribe(q, transport, (const char *const *)parsed->topics, parsed->topic_lens,
                      parsed->n_topics, &parsed->cursor, parsed->cursor_untrusted);
    HR_DEBUG(MOD, "event=open transport=%s peer=%s topics=%zu", transport->name,
             hr_http_conn_peer(conn), parsed->n_topics);
    return q;
}

void hr_outq_start(hr_edge_t *edge)
{
    if (hr_outq_started)
        return;
    hr_outq_started = true;
    uv_check_init(edge->loop, &hr_outq_flush_check);
    uv_check_start(&hr_outq_flush_check, hr_outq_on_check);
    uv_unref((uv_handle_t *)&hr_outq_flush_check);
    uv_idle_init(edge->loop, &hr_outq_nudge);
    uv_unref((uv_handle_t *)&hr_outq_nudge);
}

void hr_outq_stop(void)
{
    if (!hr_outq_started)
        return;
    hr_outq_started = false;
    uv_close((uv_handle_t *)&hr_outq_flush_check, NULL);
    uv_close((uv_handle_t *)&hr_outq_nudge, NULL);
}
