/*
 * Server-Sent Events — GET /v1/sse (WHATWG HTML §9.2), a framing on top of hr_outq.
 *
 * Each event is the connection's own `id: CURSOR` line followed by the message's shared
 * encoding (msg.h: HR_ENC_SSE_DATA, or HR_ENC_SSE_JSON plus the connection's `CURSOR"}` tail for
 * format=json), so a message published to 10,000 subscribers is encoded once. The stream is
 * close-delimited; heartbeats are comment lines; a reset is `event: herald.reset`; shutdown sends
 * a `retry:` hint and `event: herald.shutdown` with the cursor.
 */
#include "sse.h"

#include "hr_alloc.h"
#include "outq.h"
#include "query.h"
#include "sub.h"

#include <stdio.h>
#include <string.h>

/* format=json: the framing data is this address; format=data: NULL. */
static const char hr_sse_json_format[] = "json";

static void hr_sse_message(hr_outq_t *q, hr_msg_t *msg, const char *cursor, size_t len)
{
    hr_outq_own(q, "id: ", 4);
    hr_outq_own(q, cursor, len);
    hr_outq_own(q, "\n", 1);
    if (hr_outq_framing_data(q) != NULL) {
        hr_outq_shared(q, hr_msg_encoded(msg, HR_ENC_SSE_JSON));
        hr_outq_own(q, cursor, len);
        hr_outq_own(q, "\"}\n\n", 4);
    } else {
        hr_outq_shared(q, hr_msg_encoded(msg, HR_ENC_SSE_DATA));
    }
}

static void hr_sse_event(hr_outq_t *q, const char *event, const char *json, const char *cursor,
                         size_t len)
{
    if (len > 0 && strcmp(cursor, "latest") != 0) {
        hr_outq_own(q, "id: ", 4);
        hr_outq_own(q, cursor, len);
        hr_outq_own(q, "\n", 1);
    }
    hr_outq_own(q, "event: ", 7);
    hr_outq_own(q, event, strlen(event));
    hr_outq_own(q, "\ndata: ", 7);
    hr_outq_own(q, json, strlen(json));
    hr_outq_own(q, "\n\n", 2);
}

static void hr_sse_reset_event(hr_outq_t *q, const char *json, const char *cursor, size_t len)
{
    hr_sse_event(q, "herald.reset", json, cursor, len);
}

static void hr_sse_heartbeat(hr_outq_t *q)
{
    /* A comment line keeps proxies and load balancers from timing the stream out (§9.2.7). */
    hr_outq_own(q, ":\n\n", 3);
}

static void hr_sse_shutdown(hr_outq_t *q, const char *json, const char *cursor, size_t len,
                            uint64_t retry_ms)
{
    char head[64];
    int n = snprintf(head, sizeof head, "retry: %llu\n", (unsigned long long)retry_ms);
    hr_outq_own(q, head, (size_t)n);
    hr_sse_event(q, "herald.shutdown", json, cursor, len);
}

static const hr_outq_framing_t hr_sse_framing = {
    .message = hr_sse_message,
    .reset = hr_sse_reset_event,
    .heartbeat = hr_sse_heartbeat,
    .shutdown = hr_sse_shutdown,
};

static const hr_transport_t hr_sse_transport = {
    .name = "sse",
    .id = HR_TRANSPORT_SSE,
    .deliver = hr_outq_deliver,
    .reset = hr_outq_reset,
    .pending_bytes = hr_outq_pending,
    .heartbeat = hr_outq_heartbeat,
    .shutdown = hr_outq_shutdown,
};

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
    char preamble[48];
    int n =
        snprintf(preamble, sizeof preamble, ":ok\nretry: %lld\n\n", (long long)edge->config.retry);
    hr_outq_open(edge, conn, &hr_sse_transport, &hr_sse_framing,
                 strcmp(format, "json") == 0 ? (void *)hr_sse_json_format : NULL, headers, 3, false,
                 preamble, (size_t)n, &parsed);
    hr_edge_request_free(&parsed);
}
