/*
 * Polling — GET /v1/poll?topic=T&cursor=C&wait=S&limit=N. One hr_poll_t per request.
 *
 * A poll is a short-lived subscriber: it starts from the request's cursor, reads what the log
 * holds after it and, when nothing is there, waits for the live stream — up to `wait` seconds
 * (long polling; 0 = regular polling, answered at once). The cursor, not timing, decides what
 * an answer holds, so a message published between two polls of a client is never missed, and
 * two polls with the same cursor get the same answer.
 *
 * Answers are sent from a uv_check handle at the end of the loop iteration in which they became
 * ready, so messages arriving together go out together, and so a subscriber is never destroyed
 * from inside its own delivery. Every held poll for a topic wakes from the one shared live
 * message; only the per-request cursor (`id`) is written per answer.
 *
 * HTTP caching (RFC 9110 §8.8.3, §13.1.2): every answer carries the weak ETag W/"CURSOR", and
 * If-None-Match is accepted as the cursor; a conditional poll that ends with nothing new is
 * answered 304 Not Modified.
 */
#include "polling.h"

#include "hr_alloc.h"
#include "hr_log.h"
#include "msg.h"
#include "query.h"
#include "sub.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MOD "poll"

typedef enum {
    HR_POLL_COLLECTING, /* reading the log / waiting for the live stream */
    HR_POLL_READY,      /* on the answer list: answered at the end of this loop iteration; still
                           takes what else arrives in this iteration, up to the limit */
    HR_POLL_CLOSED,     /* the client went away while the poll was on the answer list */
} hr_poll_state_t;

typedef struct hr_poll {
    hr_edge_t *edge;
    hr_http_conn_t *conn;
    hr_subscriber_t *sub;
    hr_poll_state_t state;
    size_t limit;     /* most messages in the answer */
    uint64_t wait_ms; /* 0: answer as soon as the log has been read */
    bool conditional; /* If-None-Match was given: 304 when nothing is new */
    bool held;        /* counted in metrics.polls_held */
    bool caught_up;   /* every topic has read the log: a live message answers at once */
    uv_timer_t timer; /* the wait; for wait=0, --request-timeout in case the log is unreachable */
    hr_msg_t **msgs;  /* collected messages (references) and their ids */
    char **ids;
    size_t n, cap;
    json_t *resets; /* [{"type":"reset",...}] */
    char *cursor;   /* the cursor after the last message or reset taken; NULL: none taken */
    struct hr_poll *ready_next;
} hr_poll_t;

static hr_poll_t *hr_poll_ready;
static uv_check_t hr_poll_check;
static bool hr_poll_started;

static void hr_poll_mark_ready(hr_poll_t *p)
{
    if (p->state != HR_POLL_COLLECTING)
        return;
    p->state = HR_POLL_READY;
    p->ready_next = hr_poll_ready;
    hr_poll_ready = p;
    /* The subscriber keeps delivering until the answer goes out at the end of this loop
     * iteration, so messages that arrive together (one commit of a batch) go out together. */
}

static void hr_poll_take_cursor(hr_poll_t *p, const char *cursor, size_t len)
{
    hr_free(p->cursor);
    p->cursor = hr_strndup(cursor, len);
}

static int hr_poll_deliver(hr_subscriber_t *sub, hr_msg_t *msg, const char *cursor, size_t len)
{
    hr_poll_t *p = hr_subscriber_data(sub);
    if (p->state == HR_POLL_CLOSED || p->n >= p->limit) {
        hr_poll_mark_ready(p);
        return -ENOBUFS; /* not taken (nothing more is): the answer's cursor stays before it */
    }
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 16;
        p->msgs = hr_realloc(p->msgs, p->cap * sizeof *p->msgs);
        p->ids = hr_realloc(p->ids, p->cap * sizeof *p->ids);
    }
    p->msgs[p->n] = hr_msg_ref(msg);
    p->ids[p->n] = hr_strndup(cursor, len);
    p->n++;
    hr_poll_take_cursor(p, cursor, len);
    /* A live message (the log has been read) answers the poll; during catch-up the answer waits
     * for caught_up or the limit, so one answer carries the whole page. */
    if (p->n >= p->limit) {
        hr_poll_mark_ready(p);
        hr_subscriber_stop(sub); /* full: read no further page */
    } else if (p->caught_up) {
        hr_poll_mark_ready(p);
    }
    return 0;
}

static int hr_poll_reset(hr_subscriber_t *sub, const char *topic, size_t topic_len,
                         const char *reason, uint64_t next_seq, const char *cursor, size_t len)
{
    hr_poll_t *p = hr_subscriber_data(sub);
    if (p->state == HR_POLL_CLOSED)
        return -ENOBUFS;
    json_array_append_new(p->resets,
                          json_pack("{s:s, s:s%, s:s, s:I}", "type", "reset", "topic", topic,
                                    topic_len, "reason", reason, "next_seq", (json_int_t)next_seq));
    hr_poll_take_cursor(p, cursor, len);
    return 0;
}

static size_t hr_poll_pending(hr_subscriber_t *sub)
{
    (void)sub;
    return 0; /* bounded by `limit` instead */
}

/* A poll answers with at most `limit` messages: reading more from the log would be wasted. */
static size_t hr_poll_page_limit(hr_subscriber_t *sub)
{
    hr_poll_t *p = hr_subscriber_data(sub);
    return p->limit;
}

static void hr_poll_on_timeout(uv_timer_t *timer)
{
    hr_poll_mark_ready(timer->data);
}

/* Every topic has read the log: answer now if there is anything, else wait for live. */
static void hr_poll_caught_up(hr_subscriber_t *sub)
{
    hr_poll_t *p = hr_subscriber_data(sub);
    if (p->state == HR_POLL_CLOSED)
        return;
    p->caught_up = true; /* also when the wait ended in this iteration: not a 503 then */
    if (p->state != HR_POLL_COLLECTING)
        return;
    if (p->n > 0 || json_array_size(p->resets) > 0 || p->wait_ms == 0) {
        hr_poll_mark_ready(p);
        return;
    }
    if (!p->held) {
        p->held = true; /* nothing yet: held until a message arrives or the wait ends */
        p->edge->metrics.polls_held++;
    }
}

/* SIGTERM: answer with what there is (the client polls again elsewhere with the cursor). */
static void hr_poll_shutdown(hr_subscriber_t *sub, uint64_t retry_ms)
{
    (void)retry_ms;
    hr_poll_mark_ready(hr_subscriber_data(sub));
}

static const hr_transport_t hr_poll_transport = {
    .name = "poll",
    .id = HR_TRANSPORT_POLL,
    .deliver = hr_poll_deliver,
    .reset = hr_poll_reset,
    .pending_bytes = hr_poll_pending,
    .shutdown = hr_poll_shutdown,
    .caught_up = hr_poll_caught_up,
    .page_limit = hr_poll_page_limit,
};

/* ---- answering ---------------------------------------------------------------------------- */

static void hr_poll_timer_closed(uv_handle_t *handle)
{
    hr_poll_t *p = handle->data;
    for (size_t i = 0; i < p->n; i++) {
        hr_msg_unref(&p->msgs[i]);
        hr_free(p->ids[i]);
    }
    hr_free(p->msgs);
    hr_free(p->ids);
    hr_free(p->cursor);
    json_decref(p->resets);
    hr_free(p);
}

static void hr_poll_free(hr_poll_t *p)
{
    if (p->held) {
        p->held = false;
        p->edge->metrics.polls_held--;
    }
    hr_subscriber_destroy(&p->sub);
    uv_close((uv_handle_t *)&p->timer, hr_poll_timer_closed);
}

static void hr_poll_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n > *cap) {
        while (*len + n > *cap)
            *cap *= 2;
        *buf = hr_realloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n);
    *len += n;
}

static void hr_poll_answer(hr_poll_t *p)
{
    size_t cursor_len;
    const char *cursor = p->cursor;
    if (cursor == NULL)
        cursor = hr_subscriber_cursor(p->sub, &cursor_len);
    else
        cursor_len = strlen(cursor);
    char etag[HR_CURSOR_MAX_TEXT + 8];
    int etag_len = snprintf(etag, sizeof etag, "W/\"%.*s\"", (int)cursor_len, cursor);
    hr_http_header_t headers[3] = {
        {"ETag", 4, etag, (size_t)etag_len},
        {"Cache-Control", 13, "no-cache", 8},
        {"Content-Type", 12, "application/json", 16},
    };
    hr_http_conn_set_close_cb(p->conn, NULL, NULL);
    if (!p->caught_up && p->n == 0 && json_array_size(p->resets) == 0) {
        /* The log could not be read in time (the owning broker is unreachable): no position
         * was lost, the client retries with the same cursor. */
        static const hr_http_header_t retry = {"Retry-After", 11, "1", 1};
        json_t *err = json_pack("{s:{s:s, s:s}}", "error", "code", "unavailable", "message",
                                "the broker owning a topic of this poll cannot be reached");
        char *text = json_dumps(err, JSON_COMPACT);
        json_decref(err);
        hr_http_header_t h[2] = {retry, headers[2]};
        hr_http_respond(p->conn, 503, h, 2, text, strlen(text));
        free(text);
        return;
    }
    if (p->conditional && p->n == 0 && json_array_size(p->resets) == 0) {
        hr_http_respond(p->conn, 304, headers, 2, NULL, 0);
        return;
    }
    size_t cap = 1024, len = 0;
    char *body = hr_malloc(cap);
    hr_poll_append(&body, &len, &cap, "{\"messages\":[", 13);
    for (size_t i = 0; i < p->n; i++) {
        hr_payload_t *enc = hr_msg_encoded(p->msgs[i], HR_ENC_JSON);
        if (i > 0)
            hr_poll_append(&body, &len, &cap, ",", 1);
        hr_poll_append(&body, &len, &cap, enc->data, enc->len);
        hr_poll_append(&body, &len, &cap, p->ids[i], strlen(p->ids[i]));
        hr_poll_append(&body, &len, &cap, "\"}", 2);
    }
    hr_poll_append(&body, &len, &cap, "],\"cursor\":\"", 12);
    hr_poll_append(&body, &len, &cap, cursor, cursor_len);
    hr_poll_append(&body, &len, &cap, "\",\"reset\":", 10);
    char *resets = json_dumps(p->resets, JSON_COMPACT);
    hr_poll_append(&body, &len, &cap, resets, strlen(resets));
    free(resets);
    hr_poll_append(&body, &len, &cap, "}", 1);
    hr_http_respond(p->conn, 200, headers, 3, body, len);
    hr_free(body);
}

static void hr_poll_on_check(uv_check_t *check)
{
    (void)check;
    while (hr_poll_ready != NULL) {
        hr_poll_t *p = hr_poll_ready;
        hr_poll_ready = p->ready_next;
        if (p->state == HR_POLL_READY)
            hr_poll_answer(p);
        hr_poll_free(p);
    }
}

/* The client went away while its poll was held: release it at once. */
static void hr_poll_on_close(void *arg)
{
    hr_poll_t *p = arg;
    p->conn = NULL;
    if (p->state == HR_POLL_READY) {
        p->state = HR_POLL_CLOSED; /* freed by the answer handle, unanswered */
        return;
    }
    uv_timer_stop(&p->timer);
    hr_poll_free(p);
}

/* ---- opening ------------------------------------------------------------------------------ */

/* Read `wait` (seconds, decimals allowed) and `limit`. Returns 0 or answers 400 and returns -1. */
static int hr_poll_params(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req,
                          uint64_t *wait_ms, size_t *limit)
{
    double wait = (double)edge->config.poll_wait;
    long long lim = edge->config.poll_limit;
    char name[16], value[64], why[160];
    hr_query_iter_t it;
    hr_query_init(&it, req->query, req->query_len);
    int rc;
    for (;;) {
        char *end;
        memset(name, 0, sizeof name); /* a name that fails to decode is left as its prefix */
        if ((rc = hr_query_next(&it, name, sizeof name - 1, value, sizeof value, NULL)) == 0)
            break;
        if (rc < 0) {
            /* Long cursors and topics are checked by the subscription parser; a wait or limit
             * longer than any sensible number is refused, not ignored. */
            if (strcmp(name, "wait") == 0 || strcmp(name, "limit") == 0) {
                snprintf(why, sizeof why, "%s is malformed or too long", name);
                goto bad;
            }
            continue;
        }
        if (strcmp(name, "wait") == 0) {
            /* Decimal seconds (exponents allowed): strtod would also take hex, "inf", "nan". */
            bool decimal = value[0] != '\0' && strspn(value, "0123456789.eE+") == strlen(value);
            wait = strtod(value, &end);
            if (!decimal || *end != '\0' || !isfinite(wait) || wait < 0) {
                snprintf(why, sizeof why, "wait must be a number of seconds >= 0, not '%s'", value);
                goto bad;
            }
        } else if (strcmp(name, "limit") == 0) {
            lim = strtoll(value, &end, 10);
            if (value[0] == '\0' || *end != '\0' || lim < 1) {
                snprintf(why, sizeof why, "limit must be an integer >= 1, not '%s'", value);
                goto bad;
            }
        }
    }
    /* Above the caps, clamp (documented): a client asking for more is served the most the
     * edge allows rather than refused. */
    if (wait > (double)edge->config.poll_max_wait)
        wait = (double)edge->config.poll_max_wait;
    if (lim > edge->config.poll_max_limit)
        lim = edge->config.poll_max_limit;
    *wait_ms = (uint64_t)(wait * 1000.0);
    *limit = (size_t)lim;
    return 0;
bad:
    hr_http_respond_error(conn, 400, "invalid_request", why);
    return -1;
}

void hr_poll_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    uint64_t wait_ms;
    size_t limit;
    if (hr_poll_params(edge, conn, req, &wait_ms, &limit) != 0)
        return;
    hr_edge_request_t parsed;
    if (hr_edge_parse_subscription(edge, conn, req, &parsed) != 0)
        return; /* answered with the error */
    /* When no topic of the poll can be read (every owning broker is known to be down), say so
     * now rather than after the wait; the client keeps its cursor and retries. A poll with
     * some reachable topics is answered from those; the others keep their positions. */
    size_t unreachable = 0;
    for (size_t i = 0; i < parsed.n_topics; i++)
        unreachable +=
            hr_brokers_count(edge->brokers) == 0 ||
            !hr_brokers_up(edge->brokers,
                           hr_brokers_owner(edge->brokers, parsed.topics[i], parsed.topic_lens[i]));
    {
        if (unreachable == parsed.n_topics) {
            hr_edge_request_free(&parsed);
            static const hr_http_header_t retry = {"Retry-After", 11, "1", 1};
            static const char body[] = "{\"error\":{\"code\":\"unavailable\",\"message\":"
                                       "\"the broker owning a topic of this poll is down\"}}";
            hr_http_header_t h[2] = {retry, {"Content-Type", 12, "application/json", 16}};
            hr_http_respond(conn, 503, h, 2, body, sizeof body - 1);
            return;
        }
    }
    hr_poll_t *p = hr_calloc(1, sizeof *p);
    p->edge = edge;
    p->conn = conn;
    p->limit = limit;
    p->wait_ms = wait_ms;
    p->conditional = hr_http_header(req, "If-None-Match", NULL) != NULL &&
                     hr_http_header(req, "Last-Event-ID", NULL) == NULL;
    p->resets = json_array();
    uv_timer_init(edge->loop, &p->timer);
    p->timer.data = p;
    hr_http_conn_set_close_cb(conn, hr_poll_on_close, p);
    uint64_t deadline = wait_ms > 0 ? wait_ms : (uint64_t)edge->config.request_timeout;
    uv_timer_start(&p->timer, hr_poll_on_timeout, deadline, 0);
    p->sub = hr_subscriber_new(edge, &hr_poll_transport, p, (const char *const *)parsed.topics,
                               parsed.topic_lens, parsed.n_topics, &parsed.cursor,
                               parsed.cursor_untrusted);
    hr_edge_request_free(&parsed);
}

void hr_poll_start(hr_edge_t *edge)
{
    if (hr_poll_started)
        return;
    hr_poll_started = true;
    uv_check_init(edge->loop, &hr_poll_check);
    uv_check_start(&hr_poll_check, hr_poll_on_check);
    uv_unref((uv_handle_t *)&hr_poll_check);
}

void hr_poll_stop(void)
{
    if (!hr_poll_started)
        return;
    hr_poll_started = false;
    uv_close((uv_handle_t *)&hr_poll_check, NULL);
}
