/*
 * HTTP streaming — GET /v1/stream, a framing on top of hr_outq: a chunked response
 * (RFC 9112 §7.1) of newline-delimited JSON (application/x-ndjson), one object per line, each
 * with a `type`:
 *   {"type":"message", <message JSON>, "id":"CURSOR"}   the shared encoding + the cursor tail
 *   {"type":"reset","topic","reason","next_seq","id":"CURSOR"}
 *   {"type":"shutdown","cursor","retry_ms"}             the last line before the edge closes
 * and an empty line as the heartbeat.
 */
#include "stream.h"

#include "outq.h"
#include "query.h"
#include "sub.h"

#include <string.h>

static void hr_stream_message(hr_outq_t *q, hr_msg_t *msg, const char *cursor, size_t len)
{
    hr_outq_shared(q, hr_msg_encoded(msg, HR_ENC_JSON));
    hr_outq_own(q, cursor, len);
    hr_outq_own(q, "\"}\n", 3);
}

static void hr_stream_reset(hr_outq_t *q, const char *json, const char *cursor, size_t len)
{
    /* json ends with '}': add the cursor to resume from, like a message's id. */
    hr_outq_own(q, json, strlen(json) - 1);
    hr_outq_own(q, ",\"id\":\"", 7);
    hr_outq_own(q, cursor, len);
    hr_outq_own(q, "\"}\n", 3);
}

static void hr_stream_heartbeat(hr_outq_t *q)
{
    hr_outq_own(q, "\n", 1);
}

static void hr_stream_shutdown(hr_outq_t *q, const char *json, const char *cursor, size_t len,
                               uint64_t retry_ms)
{
    (void)cursor;
    (void)len;
    (void)retry_ms;
    hr_outq_own(q, json, strlen(json));
    hr_outq_own(q, "\n", 1);
}

static const hr_outq_framing_t hr_stream_framing = {
    .message = hr_stream_message,
    .reset = hr_stream_reset,
    .heartbeat = hr_stream_heartbeat,
    .shutdown = hr_stream_shutdown,
};

static const hr_transport_t hr_stream_transport = {
    .name = "stream",
    .id = HR_TRANSPORT_STREAM,
    .deliver = hr_outq_deliver,
    .reset = hr_outq_reset,
    .pending_bytes = hr_outq_pending,
    .heartbeat = hr_outq_heartbeat,
    .shutdown = hr_outq_shutdown,
};

void hr_stream_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    hr_edge_request_t parsed;
    if (hr_edge_parse_subscription(edge, conn, req, &parsed) != 0)
        return; /* answered with the error */
    static const hr_http_header_t headers[] = {
        {"Content-Type", 12, "application/x-ndjson", 20},
        {"Cache-Control", 13, "no-cache", 8},
        {"X-Accel-Buffering", 17, "no", 2},
    };
    if (strcmp(req->method, "HEAD") == 0) {
        hr_edge_request_free(&parsed);
        hr_http_respond(conn, 200, headers, 3, "", 0);
        return;
    }
    hr_outq_open(edge, conn, &hr_stream_transport, &hr_stream_framing, NULL, headers, 3, true, NULL,
                 0, &parsed);
    hr_edge_request_free(&parsed);
}
