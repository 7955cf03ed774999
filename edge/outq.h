/*
 * hr_outq — the outgoing side of a streaming transport (SSE, HTTP streaming, WebSocket): at most
 * one subscriber carried by one streaming HTTP response or upgraded connection, with a bounded,
 * coalescing output queue.
 *
 * Queued output is a list of pieces: shared payloads (a message's encoding, referenced, never
 * copied) and the connection's own bytes (cursor, framing). Everything queued during one loop
 * iteration goes out as one write per connection: a uv_check handle flushes every connection
 * with queued output (this is where the CPU per delivery goes).
 *
 * Backpressure: queued bytes plus bytes the kernel has not taken are bounded by --queue-bytes.
 * A client past the bound is cut off: nothing more is queued, what is queued still goes out (its
 * last message carries the client's cursor, so it resumes exactly), and the connection closes
 * once written or after --slow-client-grace ms, whichever comes first.
 *
 * A transport provides the framing (hr_outq_framing_t) and a static hr_transport_t whose
 * functions are the generic ones below. Loop thread only.
 */
#ifndef HR_OUTQ_H
#define HR_OUTQ_H

#include "api.h"
#include "msg.h"
#include "sub.h"

typedef struct hr_outq hr_outq_t;

/* How a transport writes each kind of output into the queue (hr_outq_own / hr_outq_shared). */
typedef struct {
    /* A message; `cursor` is the subscription's cursor right after it. */
    void (*message)(hr_outq_t *q, hr_msg_t *msg, const char *cursor, size_t cursor_len);
    /* A reset notice: `json` is {"type":"reset","topic","reason","next_seq"} (NUL-terminated). */
    void (*reset)(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len);
    /* A keep-alive that carries no data. */
    void (*heartbeat)(hr_outq_t *q);
    /* The last output before the edge closes the stream: `json` is
     * {"type":"shutdown","cursor","retry_ms","reason":"draining"}. */
    void (*shutdown)(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len,
                     uint64_t retry_ms);
    /* Optional. The last output to a client cut off for its full queue: `json` is as for
     * shutdown with "reason":"slow_consumer" and retry_ms = --retry. Without it the stream just
     * ends (its last message carries the cursor). */
    void (*slow)(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len,
                 uint64_t retry_ms);
    /* Optional. The queue has drained below half its bound after a write. */
    void (*drained)(hr_outq_t *q);
    /* Optional. The connection is gone or the stream ended: the subscriber is destroyed and no
     * output can be queued any more; release the framing data. Called once. */
    void (*closed)(hr_outq_t *q);
} hr_outq_framing_t;

/*
 * Start a streaming response on `conn` for the subscription `parsed` (topics and cursor; not
 * taken over) with `headers`, chunked or close-delimited; queue `preamble` (may be NULL); create
 * the subscriber with `transport` (whose functions must be the hr_outq_* ones below) and start
 * delivering. The outq frees itself when the connection has closed and its writes completed.
 */
hr_outq_t *hr_outq_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_transport_t *transport,
                        const hr_outq_framing_t *framing, void *framing_data,
                        const hr_http_header_t *headers, size_t n_headers, bool chunked,
                        const char *preamble, size_t preamble_len, const hr_edge_request_t *parsed);

/*
 * The parts hr_outq_open is made of, for a transport that starts its own response (WebSocket's
 * 101) and changes its subscription over time: a queue on `conn` (already streaming) with no
 * subscriber, which sets the connection's close callback; and (re)subscribing, which destroys
 * the current subscriber and, for n > 0, creates one (arguments as hr_subscriber_new; nothing is
 * taken over) while the queue is open.
 */
hr_outq_t *hr_outq_new(hr_edge_t *edge, hr_http_conn_t *conn, const hr_outq_framing_t *framing,
                       void *framing_data);
void hr_outq_subscribe(hr_outq_t *q, const hr_transport_t *transport, const char *const *names,
                       const size_t *lens, size_t n, const hr_cursor_t *cursor,
                       bool cursor_untrusted);
/* Bytes queued and not yet taken by the kernel (what the bound applies to). */
size_t hr_outq_queued_bytes(const hr_outq_t *q);
/* The current subscriber, or NULL. */
hr_subscriber_t *hr_outq_subscriber(const hr_outq_t *q);
/* True until the queue is cut off or its connection closed: output may still be queued. */
bool hr_outq_is_open(const hr_outq_t *q);
/* Stop queueing (the subscriber stops): what is queued is written, then the stream ends, or the
 * connection closes after --slow-client-grace ms. Does nothing unless open. */
void hr_outq_cut_off(hr_outq_t *q);
/* The framing's shutdown output with the subscriber's cursor (or "" without one) and
 * `retry_ms`, then cut off: hr_outq_shutdown for a queue, with or without a subscriber. */
void hr_outq_close_with(hr_outq_t *q, uint64_t retry_ms);
/* Build {"type":"shutdown","cursor","retry_ms","reason"} for the current cursor and hand it
 * to `emit` (a framing's shutdown or slow). */
void hr_outq_final_json(hr_outq_t *q,
                        void (*emit)(hr_outq_t *q, const char *json, const char *cursor,
                                     size_t cursor_len, uint64_t retry_ms),
                        const char *reason, uint64_t retry_ms);

/* Queue bytes the connection owns (copied) or a shared payload (referenced). */
void hr_outq_own(hr_outq_t *q, const char *bytes, size_t len);
void hr_outq_shared(hr_outq_t *q, hr_payload_t *payload);

/* The `framing_data` given to hr_outq_open (e.g. the SSE format). */
void *hr_outq_framing_data(const hr_outq_t *q);

/* The generic transport functions (sub.h), for a transport's static table. */
int hr_outq_deliver(hr_subscriber_t *sub, hr_msg_t *msg, const char *cursor, size_t cursor_len);
int hr_outq_reset(hr_subscriber_t *sub, const char *topic, size_t topic_len, const char *reason,
                  uint64_t next_seq, const char *cursor, size_t cursor_len);
size_t hr_outq_pending(hr_subscriber_t *sub);
void hr_outq_heartbeat(hr_subscriber_t *sub);
void hr_outq_shutdown(hr_subscriber_t *sub, uint64_t retry_ms);

/* Start the flush handle (once, at edge start) and stop it at exit. */
void hr_outq_start(hr_edge_t *edge);
void hr_outq_stop(void);

#endif
