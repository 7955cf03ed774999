/*
 * hr_outq — the outgoing side of a streaming transport (SSE, HTTP streaming): one subscriber
 * carried by one streaming HTTP response, with a bounded, coalescing output queue.
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
     * {"type":"shutdown","cursor","retry_ms"}. */
    void (*shutdown)(hr_outq_t *q, const char *json, const char *cursor, size_t cursor_len,
                     uint64_t retry_ms);
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
