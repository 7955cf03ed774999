/*
 * The edge's HTTP API (DESIGN.md §Edge HTTP API): routing, publishing, history, health,
 * readiness, metrics and the demo page, plus the subscription parsing every transport shares.
 * Loop thread only.
 */
#ifndef HR_API_H
#define HR_API_H

#include "cursor.h"
#include "edge.h"
#include "http.h"

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

#endif
