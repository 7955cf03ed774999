/*
 * The edge's HTTP API (DESIGN.md §Edge HTTP API): routing, publishing, history, health,
 * readiness, metrics and the demo page, plus the subscription parsing every transport shares.
 * Loop thread only.
 */
#ifndef HR_API_H
#define HR_API_H

#include "cursor.h"
#include "herald.pb-c.h"
#include "edge.h"
#include "http.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* A parsed subscription request: topics and the cursor to start from. */
typedef struct {
    char **topics; /* validated, unique, NUL-terminated; owned */
    size_t *topic_lens;
    size_t n_topics;
    hr_cursor_t cursor;    /* LATEST when none was given */
    bool cursor_untrusted; /* a resent Last-Event-ID / If-None-Match failed to parse */
} hr_edge_request_t;

/*
 * Read `topic` parameters (1..--max-topics, duplicates ignored) and the cursor: the
 * Last-Event-ID header wins, then If-None-Match, then the `cursor` or `last_event_id` query
 * parameter (DESIGN.md §Client contract). On a problem, answers the request with 400
 * (invalid_topic, too_many_topics, invalid_request, invalid_cursor for an explicit cursor) and
 * returns nonzero. On success the caller frees `out` with hr_edge_request_free.
 */
int hr_edge_parse_subscription(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req,
                               hr_edge_request_t *out);
void hr_edge_request_free(hr_edge_request_t *r);

/*
 * Check one message to publish against the rules the broker applies (topic, event type,
 * content type, idempotency key length, --max-data-bytes). Returns 0, or the HTTP status of the
 * problem (400, or 413 payload_too_large) with *code (static) and a message in `why` (`cap`
 * bytes).
 */
int hr_edge_publish_check(hr_edge_t *edge, const Herald__V1__PublishMessage *m, const char **code,
                          char *why, size_t cap);

/*
 * One message to publish given as JSON (an element of POST /v1/messages, a WebSocket publish
 * frame): an object whose members topic, data (required), event, content_type, encoding
 * ("base64" for binary data) and idempotency_key are strings. Fills `m`, whose fields point into
 * `obj` and into *decoded (base64-decoded data, or NULL; the caller frees it with hr_free, also
 * on failure), and checks it with hr_edge_publish_check. Returns 0 or an HTTP status as that.
 */
int hr_edge_publish_from_json(hr_edge_t *edge, json_t *obj, Herald__V1__PublishMessage *m,
                              uint8_t **decoded, const char **code, char *why, size_t cap);

/* The publish reply JSON for one committed message: {"topic","id","seq","epoch","time",
 * "duplicate"}; `id` is the cursor right after it. The caller owns the result. */
json_t *hr_edge_publish_result_json(const char *topic, const Herald__V1__PublishResult *r);

#endif
