/*
 * hr_http — the edge's HTTP/1.1 server. See http.h for the contract; this file explains why.
 *
 * Memory per connection: one hr_http_conn_t (the libuv handle, the llhttp parser, list links and
 * a few words of state). Reads land in one buffer shared by the server (the loop calls alloc, read
 * and the read callback back to back for one stream, and everything read is parsed or copied before
 * the callback returns), so an idle or streaming connection holds no read buffer. A request's
 * memory (one block for request-target and headers, one for the body) exists from its first byte
 * until it is finished. Bytes read past a complete request (pipelining) are copied into a
 * per-connection buffer that is freed once it has been parsed.
 *
 * Timeouts: all connections waiting for the same kind of timeout wait for the same duration, so
 * a FIFO list per kind is sorted by deadline, and one uv_timer per server, armed for the earliest
 * head, serves them all (O(1) per request instead of a per-connection timer in libuv's heap).
 */
#include "http.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define MOD "http"

#define http_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* The shared read buffer: libuv's suggested size. */
#define HTTP_READ_BUF 65536
/* Unparsed bytes kept while a request is being handled; above this, reading stops until the
 * request is finished, so a pipelining client cannot make the edge buffer without bound. */
#define HTTP_MAX_BUFFERED 65536
/* Response bytes the kernel has not taken yet above which the next pipelined request waits for
 * the client to read (RESPONDING), rather than queueing more responses. */
#define HTTP_MAX_PENDING (256u * 1024)
/* How long a closing connection keeps reading (and discarding) after its last response, so that
 * unread request bytes do not turn the close into a reset that destroys the response in flight
 * (RFC 9112 §9.6). */
#define HTTP_LINGER_MS 5000
/* First allocation of a request's head block; it doubles as needed, up to max_header_bytes. */
#define HTTP_REQ_INITIAL 1024

/* Connection states (h2o / Mosquitto style: one explicit state per connection). */
enum http_state {
    HTTP_IDLE,         /* no request in progress (keep-alive, or a new connection); idle timeout */
    HTTP_READING_HEAD, /* request line and header fields arriving; header timeout runs */
    HTTP_READING_BODY, /* headers complete, body arriving; the same header timeout still runs */
    HTTP_HANDLING,     /* the handler owns the complete request; parser paused; no timeout */
    HTTP_RESPONDING,   /* response queued (keep-alive) but over HTTP_MAX_PENDING bytes unsent:
                          the next request waits for the write callback */
    HTTP_STREAMING,    /* streaming response; input read only to notice EOF; no timeout */
    HTTP_LINGERING,    /* last response queued, FIN queued after it; input discarded until the
                          peer closes or the linger timeout (RFC 9112 §9.6) */
    HTTP_CLOSING,      /* uv_close issued; freed in the close callback */
};

/* Why parsing stopped, when the callbacks decided it (else llhttp's own error). */
enum http_fail {
    HTTP_FAIL_PARSE,
    HTTP_FAIL_HEAD_TOO_LARGE,
    HTTP_FAIL_TOO_MANY_HEADERS,
    HTTP_FAIL_BODY_TOO_LARGE,
    HTTP_FAIL_EXPECT,
    HTTP_FAIL_VERSION,
    HTTP_FAIL_HOST,
    HTTP_FAIL_HEADER_NAME,
    HTTP_FAIL_TIMEOUT,
};

/* Timeout lists, one per kind. */
enum http_tq { HTTP_TQ_NONE, HTTP_TQ_IDLE, HTTP_TQ_HEAD, HTTP_TQ_LINGER, HTTP_TQ_COUNT };

/* A header's position in a request's text while the head is still growing (the block moves). */
typedef struct {
    uint32_t name_off, name_len, value_off, value_len;
} http_span_t;

/* One request: a single block holding the public request, the request-target and header text,
 * and (once the head is complete) the header array. Freed when the request is finished. */
typedef struct {
    hr_http_request_t pub;
    http_span_t *spans; /* headers while the head is parsed; NULL afterwards */
    uint32_t n_spans, spans_cap;
    uint32_t text_len, text_cap; /* bytes used and available in text[] */
    uint32_t target_len;
    uint32_t trailer_bytes; /* chunked trailer fields: counted against max_header_bytes, dropped */
    size_t body_cap;
    bool in_header; /* a header field has started and its value is not complete */
    char text[];    /* request-target NUL, names and values; then the hr_http_header_t array */
} http_req_t;

typedef struct {
    hr_http_conn_t *head, *tail;
} http_list_t;

struct hr_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t timer;
    llhttp_settings_t settings;
    size_t max_header_bytes, max_headers, max_body_bytes;
    uint64_t timeout_ms[HTTP_TQ_COUNT];
    hr_http_handler handler;
    void *handler_ctx;
    char *cors;     /* the allowed origins, comma-separated; NULL for none */
    bool cors_any;  /* "*" */
    bool listening; /* the listener is open */
    bool draining;  /* stop_accepting was called: every response closes its connection */
    bool destroying;
    int open_handles; /* listener and timer, until their close callbacks */
    int port;
    hr_http_conn_t *conns; /* every connection, doubly linked */
    size_t n_conns;
    http_list_t tq[HTTP_TQ_COUNT];
    uint64_t timer_due; /* loop time the timer is armed for; 0 when stopped */
    time_t date_at;     /* second of `date` */
    char date[64];      /* IMF-fixdate (RFC 9110 §5.6.7) */
    char peer[64];      /* hr_http_conn_peer's buffer */
    char rbuf[HTTP_READ_BUF];
};

struct hr_http_conn {
    uv_tcp_t tcp;
    llhttp_t parser;
    hr_http_server_t *server;
    hr_http_conn_t *prev, *next;   /* server->conns */
    hr_http_conn_t *tprev, *tnext; /* server->tq[tq] */
    uint64_t deadline;             /* loop ms, while in a timeout list */
    http_req_t *req;               /* the request in progress; NULL when idle */
    uint8_t *body_buf;             /* its body (req->pub.body once complete) */
    char *in;                      /* unparsed input kept while a request is handled */
    uint32_t in_len, in_cap;
    size_t head_fed;       /* bytes of the current head given to llhttp in earlier calls */
    const char *feed_base; /* start of the bytes given to the current llhttp_execute */
    void (*close_cb)(void *arg);
    void *close_arg;
    hr_http_read_cb read_cb; /* an upgraded connection's input */
    void *read_arg;
    uint8_t state; /* enum http_state */
    uint8_t tq;    /* enum http_tq */
    uint8_t fail;  /* enum http_fail, set by a callback that stops the parser */
    bool keep_alive : 1;
    bool in_input : 1;     /* inside http_input: a synchronous response must not re-enter it */
    bool read_stopped : 1; /* uv_read_stop while too much input is buffered */
    bool discarded : 1;    /* input arrived during a stream and was thrown away */
    bool chunked : 1;      /* the stream uses chunked coding */
    bool upgraded : 1;     /* a 101 was sent: input belongs to read_cb */
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } peer;
};

/* Thousands of idle SSE connections each hold one of these: keep it small (488 bytes on x86-64
 * with libuv 1.44 and llhttp 8). */
_Static_assert(sizeof(struct hr_http_conn) <= 512, "hr_http_conn grew");

static const char http_crlf[] = "\r\n";
static const char http_last_chunk[] = "0\r\n\r\n";
static const char http_continue[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void http_input(hr_http_conn_t *conn, const char *data, size_t len);
static void http_conn_close(hr_http_conn_t *conn);
static void http_fail(hr_http_conn_t *conn, int fail);

/* ---- small helpers ---------------------------------------------------------------------- */

static const char *http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 417:
        return "Expectation Failed";
    case 426:
        return "Upgrade Required";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 507:
        return "Insufficient Storage";
    default:
        break;
    }
    /* RFC 9112 §4: the reason phrase may be empty; clients ignore it. */
    return "";
}

/* RFC 9110 §5.6.2 tchar: what a field name is made of. */
static bool http_is_token(const char *s, size_t len)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch != '\0' && strchr(extra, ch) != NULL)))
            return false;
    }
    return true;
}

static bool http_token_eq(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

/* IMF-fixdate without locale dependence, refreshed once a second. */
static const char *http_date(hr_http_server_t *s)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t now = time(NULL);
    if (now != s->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(s->date, sizeof s->date, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
                 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        s->date_at = now;
    }
    return s->date;
}

/* {"error":{"code":...,"message":...}} into buf; returns its length, which may exceed cap (then
 * call again with a larger buffer). */
static size_t http_error_json(char *buf, size_t cap, const char *code, const char *message)
{
    json_t *o =
        json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message ? message : "");
    size_t n = 0;
    if (o != NULL) {
        n = json_dumpb(o, buf, cap, JSON_COMPACT);
        json_decref(o);
    }
    if (n == 0) { /* message not UTF-8: keep the code */
        n = (size_t)snprintf(buf, cap, "{\"error\":{\"code\":\"%s\",\"message\":\"\"}}", code);
    }
    return n;
}

/* ---- timeouts ----------------------------------------------------------------------------- */

static void http_timer_arm(hr_http_server_t *s, uint64_t due);

static void http_tq_remove(hr_http_conn_t *conn)
{
    if (conn->tq == HTTP_TQ_NONE)
        return;
    http_list_t *l = &conn->server->tq[conn->tq];
    if (conn->tprev)
        conn->tprev->tnext = conn->tnext;
    else
        l->head = conn->tnext;
    if (conn->tnext)
        conn->tnext->tprev = conn->tprev;
    else
        l->tail = conn->tprev;
    conn->tprev = conn->tnext = NULL;
    conn->tq = HTTP_TQ_NONE;
}

/* Move the connection to the tail of timeout list `q` (its deadline is the latest there). */
static void http_tq_set(hr_http_conn_t *conn, int q)
{
    hr_http_server_t *s = conn->server;
    http_tq_remove(conn);
    if (s->timeout_ms[q] == 0)
        return;
    conn->deadline = uv_now(s->loop) + s->timeout_ms[q];
    conn->tq = (uint8_t)q;
    http_list_t *l = &s->tq[q];
    conn->tprev = l->tail;
    if (l->tail)
        l->tail->tnext = conn;
    else
        l->head = conn;
    l->tail = conn;
    if (s->timer_due == 0 || conn->deadline < s->timer_due)
        http_timer_arm(s, conn->deadline);
}

static void http_on_timer(uv_timer_t *t)
{
    hr_http_server_t *s = http_container_of(t, hr_http_server_t, timer);
    uint64_t now = uv_now(s->loop);
    s->timer_due = 0;
    for (int q = HTTP_TQ_IDLE; q < HTTP_TQ_COUNT; q++) {
        hr_http_conn_t *c;
        while ((c = s->tq[q].head) != NULL && c->deadline <= now) {
            http_tq_remove(c);
            if (q == HTTP_TQ_HEAD)
                http_fail(c, HTTP_FAIL_TIMEOUT);
            else
                http_conn_close(c); /* idle keep-alive or linger over: close silently */
        }
    }
    uint64_t due = 0;
    for (int q = HTTP_TQ_IDLE; q < HTTP_TQ_COUNT; q++)
        if (s->tq[q].head && (due == 0 || s->tq[q].head->deadline < due))
            due = s->tq[q].head->deadline;
    if (due)
        http_timer_arm(s, due);
}

static void http_timer_arm(hr_http_server_t *s, uint64_t due)
{
    if (s->destroying)
        return;
    uint64_t now = uv_now(s->loop);
    s->timer_due = due;
    uv_timer_start(&s->timer, http_on_timer, due > now ? due - now : 0, 0);
}

/* ---- request memory ----------------------------------------------------------------------- */

static void http_req_free(hr_http_conn_t *conn)
{
    if (conn->req) {
        hr_free(conn->req->spans);
        hr_free(conn->req);
        conn->req = NULL;
    }
    hr_free(conn->body_buf);
    conn->body_buf = NULL;
}

static void http_text_append(hr_http_conn_t *conn, const char *at, size_t len)
{
    http_req_t *r = conn->req;
    if ((size_t)r->text_len + len + 1 > r->text_cap) {
        size_t cap = r->text_cap;
        while ((size_t)r->text_len + len + 1 > cap)
            cap *= 2;
        r = hr_realloc(r, offsetof(http_req_t, text) + cap);
        r->text_cap = (uint32_t)cap;
        conn->req = r;
    }
    memcpy(r->text + r->text_len, at, len);
    r->text_len += (uint32_t)len;
}

/* The request line and header section may not exceed max_header_bytes: count every byte given
 * to llhttp for this head up to the end of the current piece. */
static int http_head_check(hr_http_conn_t *conn, const char *at, size_t len)
{
    size_t used = conn->head_fed + (size_t)(at + len - conn->feed_base);
    if (used > conn->server->max_header_bytes) {
        conn->fail = HTTP_FAIL_HEAD_TOO_LARGE;
        return -1;
    }
    return 0;
}

static const hr_http_header_t *http_find(const hr_http_request_t *req, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name_len == nl && strncasecmp(req->headers[i].name, name, nl) == 0)
            return &req->headers[i];
    return NULL;
}

const char *hr_http_header(const hr_http_request_t *req, const char *name, size_t *len)
{
    const hr_http_header_t *h = http_find(req, name);
    if (h == NULL)
        return NULL;
    if (len)
        *len = h->value_len;
    return h->value;
}

/* ---- llhttp callbacks --------------------------------------------------------------------- */

static int http_on_message_begin(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    assert(conn->req == NULL);
    http_req_t *r = hr_malloc(HTTP_REQ_INITIAL);
    memset(r, 0, sizeof *r);
    r->text_cap = HTTP_REQ_INITIAL - (uint32_t)offsetof(http_req_t, text);
    conn->req = r;
    return 0;
}

static int http_on_url(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    if (http_head_check(conn, at, len))
        return -1;
    http_text_append(conn, at, len);
    return 0;
}

static int http_on_url_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    conn->req->target_len = conn->req->text_len;
    http_text_append(conn, "", 1); /* the target is NUL-terminated */
    return 0;
}

/* Trailer fields of a chunked body (RFC 9112 §7.1.2) are counted against the header limit and
 * dropped: nothing in Herald uses them. */
static int http_trailer(hr_http_conn_t *conn, size_t len)
{
    conn->req->trailer_bytes += (uint32_t)len;
    if (conn->req->trailer_bytes > conn->server->max_header_bytes) {
        conn->fail = HTTP_FAIL_HEAD_TOO_LARGE;
        return -1;
    }
    return 0;
}

/* A field name may arrive in several pieces (split across reads): a new header starts only with
 * the first piece after the previous value completed. */
static int http_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    /* llhttp 8 lets spaces and empty names through; RFC 9112 §5.1: a server MUST reject
     * whitespace between a field name and the colon (400): a proxy may read it otherwise. */
    if (!http_is_token(at, len)) {
        conn->fail = HTTP_FAIL_HEADER_NAME;
        return -1;
    }
    if (conn->state != HTTP_READING_HEAD)
        return http_trailer(conn, len);
    if (http_head_check(conn, at, len))
        return -1;
    http_req_t *r = conn->req;
    if (!r->in_header) {
        if (r->n_spans >= conn->server->max_headers) {
            conn->fail = HTTP_FAIL_TOO_MANY_HEADERS;
            return -1;
        }
        if (r->n_spans == r->spans_cap) {
            r->spans_cap = r->spans_cap ? r->spans_cap * 2 : 16;
            r->spans = hr_realloc(r->spans, r->spans_cap * sizeof *r->spans);
        }
        r->spans[r->n_spans++] = (http_span_t){r->text_len, 0, 0, 0};
        r->in_header = true;
    }
    r->spans[r->n_spans - 1].name_len += (uint32_t)len;
    http_text_append(conn, at, len);
    return 0;
}

static int http_on_header_field_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    if (conn->state != HTTP_READING_HEAD)
        return 0;
    http_span_t *sp = &conn->req->spans[conn->req->n_spans - 1];
    if (sp->name_len == 0) {
        conn->fail = HTTP_FAIL_HEADER_NAME;
        return -1;
    }
    sp->value_off = conn->req->text_len;
    return 0;
}

static int http_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    if (conn->state != HTTP_READING_HEAD)
        return http_trailer(conn, len);
    if (http_head_check(conn, at, len))
        return -1;
    conn->req->spans[conn->req->n_spans - 1].value_len += (uint32_t)len;
    http_text_append(conn, at, len);
    return 0;
}

static int http_on_header_value_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    conn->req->in_header = false;
    return 0;
}

/* The head is complete: fix its memory in place (shrunk to fit, with the header array after the
 * text) so the pointers handed to the handler stay valid until the request is finished. */
static void http_req_finalize(hr_http_conn_t *conn)
{
    http_req_t *r = conn->req;
    size_t text = ((offsetof(http_req_t, text) + r->text_len + 7) & ~(size_t)7);
    r = hr_realloc(r, text + r->n_spans * sizeof(hr_http_header_t));
    conn->req = r;
    hr_http_header_t *h = (hr_http_header_t *)(void *)((char *)r + text);
    for (uint32_t i = 0; i < r->n_spans; i++) {
        const http_span_t *sp = &r->spans[i];
        const char *v = r->text + sp->value_off;
        size_t vl = sp->value_len;
        /* llhttp drops leading whitespace; trailing OWS is not part of the value (RFC 9110
         * §5.5), and an obs-fold's continuation keeps its leading whitespace (RFC 9112 §5.2
         * allows replacing the fold with SP). */
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        h[i] = (hr_http_header_t){r->text + sp->name_off, sp->name_len, v, vl};
    }
    hr_free(r->spans);
    r->spans = NULL;
    r->text_cap = r->text_len;

    hr_http_request_t *q = &r->pub;
    q->method = llhttp_method_name((llhttp_method_t)conn->parser.method);
    q->target = r->text;
    q->headers = r->n_spans ? h : NULL;
    q->n_headers = r->n_spans;
    q->http_minor = conn->parser.http_minor;
    /* RFC 9112 §3.2.2: accept the absolute form; the path starts after the authority. */
    const char *t = r->text, *end = r->text + r->target_len;
    if (r->target_len > 7 &&
        (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0)) {
        t = memchr(t + 7, '/', (size_t)(end - t - 7));
        if (t == NULL)
            t = end;
    }
    const char *qm = memchr(t, '?', (size_t)(end - t));
    q->path = t;
    q->path_len = (size_t)((qm ? qm : end) - t);
    q->query = qm ? qm + 1 : end;
    q->query_len = qm ? (size_t)(end - qm - 1) : 0;
}

static void http_write_raw(hr_http_conn_t *conn, const char *data, size_t len);

static int http_on_headers_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    hr_http_server_t *s = conn->server;
    http_req_finalize(conn);
    hr_http_request_t *q = &conn->req->pub;
    conn->state = HTTP_READING_BODY;

    if (p->http_major != 1) {
        conn->fail = HTTP_FAIL_VERSION;
        return -1;
    }
    /* RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without a Host header
     * field, or with more than one. */
    if (p->http_minor >= 1) {
        size_t hosts = 0;
        for (size_t i = 0; i < q->n_headers; i++)
            hosts += http_token_eq(q->headers[i].name, q->headers[i].name_len, "host");
        if (hosts != 1) {
            conn->fail = HTTP_FAIL_HOST;
            return -1;
        }
    }
    conn->keep_alive = llhttp_should_keep_alive(p) && !s->draining;
    q->keep_alive = conn->keep_alive;

    /* RFC 9112 §6.3: Transfer-Encoding chunked (llhttp refuses any other final coding and a
     * Content-Length alongside it, in strict mode), else Content-Length, else no body. The
     * declared length is checked before a byte of it is read or 100 Continue is sent. */
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool body = chunked || p->content_length > 0;
    if (!chunked && p->content_length > s->max_body_bytes) {
        conn->fail = HTTP_FAIL_BODY_TOO_LARGE;
        return -1;
    }
    if (!chunked && p->content_length > 0) {
        conn->body_buf = hr_malloc((size_t)p->content_length);
        conn->req->body_cap = (size_t)p->content_length;
    }

    /* RFC 9110 §10.1.1: only 100-continue is defined; another expectation may get 417. An
     * HTTP/1.0 client's expectation is ignored. */
    size_t elen;
    const char *expect = hr_http_header(q, "expect", &elen);
    if (expect != NULL && p->http_minor >= 1) {
        if (!http_token_eq(expect, elen, "100-continue")) {
            conn->fail = HTTP_FAIL_EXPECT;
            return -1;
        }
        if (body) {
            http_write_raw(conn, http_continue, sizeof http_continue - 1);
            if (conn->state == HTTP_CLOSING)
                return -1;
        }
    }
    return 0;
}

static int http_on_body(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    http_req_t *r = conn->req;
    size_t have = r->pub.body_len;
    if (have + len > conn->server->max_body_bytes) {
        conn->fail = HTTP_FAIL_BODY_TOO_LARGE;
        return -1;
    }
    if (have + len > r->body_cap) { /* chunked: grow, bounded by the limit */
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < have + len)
            cap *= 2;
        if (cap > conn->server->max_body_bytes)
            cap = conn->server->max_body_bytes;
        conn->body_buf = hr_realloc(conn->body_buf, cap);
        r->body_cap = cap;
    }
    memcpy(conn->body_buf + have, at, len);
    r->pub.body_len = have + len;
    return 0;
}

/* One request at a time (RFC 9112 §9.3: responses go in request order): pause the parser here;
 * bytes after this message stay unparsed until the response is complete. */
static int http_on_message_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    http_tq_remove(conn);
    conn->req->pub.body = conn->req->pub.body_len ? conn->body_buf : NULL;
    conn->state = HTTP_HANDLING;
    return HPE_PAUSED;
}

/* ---- writing ---------------------------------------------------------------------------- */

typedef struct {
    uv_write_t req;
    hr_http_write_done done; /* stream writes only */
    void *arg;
    char data[]; /* the response head and body, or a chunk-size line */
} http_write_t;

static void http_resume(hr_http_conn_t *conn);

static void http_on_write(uv_write_t *req, int status)
{
    http_write_t *w = http_container_of(req, http_write_t, req);
    hr_http_conn_t *conn = http_container_of(req->handle, hr_http_conn_t, tcp);
    if (w->done)
        w->done(w->arg, status);
    hr_free(w);
    if (status < 0) {
        /* EPIPE, ECONNRESET: the peer is gone. ECANCELED: already closing. */
        if (status != UV_ECANCELED)
            HR_DEBUG(MOD, "event=write_failed peer=%s error=\"%s\"", hr_http_conn_peer(conn),
                     uv_strerror(status));
        http_conn_close(conn);
        return;
    }
    if (conn->state == HTTP_RESPONDING &&
        uv_stream_get_write_queue_size((uv_stream_t *)&conn->tcp) <= HTTP_MAX_PENDING) {
        conn->state = HTTP_IDLE;
        http_resume(conn);
    }
}

/* Queue `w` with its buffers. Returns 0, or a libuv error after closing the connection (then `w`
 * is freed and its done callback not called). */
static int http_write(hr_http_conn_t *conn, http_write_t *w, const uv_buf_t *bufs, size_t n)
{
    int rc = uv_write(&w->req, (uv_stream_t *)&conn->tcp, bufs, (unsigned)n, http_on_write);
    if (rc < 0) {
        hr_free(w);
        http_conn_close(conn);
    }
    return rc;
}

static void http_write_raw(hr_http_conn_t *conn, const char *data, size_t len)
{
    http_write_t *w = hr_malloc(sizeof *w);
    w->done = NULL;
    w->arg = NULL;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    http_write(conn, w, &b, 1);
}

enum http_framing {
    HTTP_LENGTH,    /* Content-Length (none for 204 and 304) */
    HTTP_CHUNKED,   /* Transfer-Encoding: chunked */
    HTTP_UNTIL_EOF, /* close-delimited */
    HTTP_UPGRADE,   /* 101: the caller's headers only */
};

static bool http_origin_allowed(const hr_http_server_t *s, const char *o, size_t olen)
{
    if (s->cors_any)
        return true;
    for (const char *p = s->cors; p != NULL;) {
        const char *e = strchr(p, ',');
        const char *a = p, *b = e ? e : p + strlen(p);
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '/'))
            b--;
        /* RFC 6454 §6.2: an origin is scheme://host[:port]; compare case-insensitively. */
        if ((size_t)(b - a) == olen && strncasecmp(a, o, olen) == 0)
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

/* The request's Origin when it is allowed, else NULL (no CORS headers). */
static const char *http_cors_origin(const hr_http_conn_t *conn, size_t *len)
{
    if (conn->req == NULL || conn->req->pub.method == NULL)
        return NULL; /* head not parsed */
    const char *o = hr_http_header(&conn->req->pub, "origin", len);
    if (o == NULL || !http_origin_allowed(conn->server, o, *len))
        return NULL;
    if (conn->server->cors_any) {
        *len = 1;
        return "*";
    }
    return o;
}

static char *http_put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define HTTP_PUTS(p, lit) http_put((p), (lit), sizeof(lit) - 1)

static bool http_header_ok(const hr_http_header_t *h)
{
    /* A CR or LF would let a value end the header line: response splitting. */
    return h->name_len > 0 && !memchr(h->name, '\r', h->name_len) &&
           !memchr(h->name, '\n', h->name_len) && !memchr(h->value, '\r', h->value_len) &&
           !memchr(h->value, '\n', h->value_len);
}

/* Write a status line, headers and body as one write. The framing headers follow the state of
 * the connection (keep_alive must already be final). `preflight` leaves out Expose-Headers. */
static void http_send(hr_http_conn_t *conn, int status, const hr_http_header_t *hdrs, size_t n,
                      const void *body, size_t body_len, int framing, bool preflight)
{
    hr_http_server_t *s = conn->server;
    assert(status >= 100 && status <= 999);
    const char *reason = http_reason(status), *date = http_date(s);
    size_t olen = 0;
    const char *origin = http_cors_origin(conn, &olen);
    if (s->draining && framing != HTTP_UPGRADE)
        conn->keep_alive = false;
    /* RFC 9110 §8.6: no Content-Length (and no content) in 1xx and 204; for 304 it could only
     * repeat the 200's length, which we do not know. */
    bool no_content = framing == HTTP_LENGTH && (status < 200 || status == 204 || status == 304);
    if (no_content || framing != HTTP_LENGTH)
        body_len = 0;
    size_t length_value = body_len;
    /* RFC 9110 §9.3.2: a response to HEAD has the headers of the GET response, no content. */
    if (conn->req && conn->req->pub.method && strcmp(conn->req->pub.method, "HEAD") == 0)
        body_len = 0;

    size_t size = 9 + 4 + strlen(reason) + 2 + 6 + strlen(date) + 2 + 2;
    for (size_t i = 0; i < n; i++)
        size += hdrs[i].name_len + 2 + hdrs[i].value_len + 2;
    if (origin)
        size += 100 + olen + 60;
    size += 40 + 20 + 30; /* Content-Length or Transfer-Encoding, Connection */
    http_write_t *w = hr_malloc(sizeof *w + size + body_len);
    w->done = NULL;
    w->arg = NULL;
    char *p = w->data;
    p += snprintf(p, size, "HTTP/1.1 %03d %s\r\nDate: %s\r\n", status, reason, date);
    for (size_t i = 0; i < n; i++) {
        if (!http_header_ok(&hdrs[i])) {
            HR_WARN(MOD, "event=header_dropped name=\"%.*s\"", (int)hdrs[i].name_len, hdrs[i].name);
            continue;
        }
        p = http_put(p, hdrs[i].name, hdrs[i].name_len);
        p = HTTP_PUTS(p, ": ");
        p = http_put(p, hdrs[i].value, hdrs[i].value_len);
        p = HTTP_PUTS(p, "\r\n");
    }
    if (origin) {
        p = HTTP_PUTS(p, "Access-Control-Allow-Origin: ");
        p = http_put(p, origin, olen);
        p = HTTP_PUTS(p, "\r\nVary: Origin\r\n");
        if (!preflight)
            p = HTTP_PUTS(p, "Access-Control-Expose-Headers: ETag, Retry-After\r\n");
    }
    switch (framing) {
    case HTTP_LENGTH:
        if (!no_content)
            p += sprintf(p, "Content-Length: %zu\r\n", length_value);
        break;
    case HTTP_CHUNKED:
        p = HTTP_PUTS(p, "Transfer-Encoding: chunked\r\n");
        break;
    default:
        break;
    }
    if (framing != HTTP_UPGRADE) {
        if (!conn->keep_alive)
            p = HTTP_PUTS(p, "Connection: close\r\n");
        else if (conn->req && conn->req->pub.http_minor == 0)
            p = HTTP_PUTS(p, "Connection: keep-alive\r\n"); /* RFC 9112 §C.2.2 */
    }
    p = HTTP_PUTS(p, "\r\n");
    if (body_len)
        p = http_put(p, body, body_len);
    assert((size_t)(p - w->data) <= size + body_len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)(p - w->data));
    http_write(conn, w, &b, 1);
}

/* ---- request lifecycle -------------------------------------------------------------------- */

/* Half-close after the queued writes (FIN), keep reading until the peer closes (RFC 9112 §9.6). */
static void http_on_shutdown(uv_shutdown_t *req, int status)
{
    hr_http_conn_t *conn = http_container_of(req->handle, hr_http_conn_t, tcp);
    hr_free(req);
    if (status < 0)
        http_conn_close(conn);
}

static void http_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void http_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void http_read_start(hr_http_conn_t *conn)
{
    if (conn->read_stopped) {
        conn->read_stopped = false;
        if (uv_read_start((uv_stream_t *)&conn->tcp, http_on_alloc, http_on_read) < 0)
            http_conn_close(conn);
    }
}

static void http_linger(hr_http_conn_t *conn)
{
    conn->state = HTTP_LINGERING;
    if (!conn->in_input) { /* else http_input drops it when its loop ends */
        hr_free(conn->in);
        conn->in = NULL;
        conn->in_len = conn->in_cap = 0;
    }
    http_tq_set(conn, HTTP_TQ_LINGER);
    uv_shutdown_t *sd = hr_malloc(sizeof *sd);
    if (uv_shutdown(sd, (uv_stream_t *)&conn->tcp, http_on_shutdown) < 0) {
        hr_free(sd);
        http_conn_close(conn);
        return;
    }
    http_read_start(conn);
}

/* The current request is finished (response queued, stream ended, error answered): release it
 * and go on to the next request, or close. A close callback the handler left set still runs when
 * this connection closes (a transport that ends a close-delimited stream waits for it), but never
 * once the connection has moved on to another request. */
static void http_finish(hr_http_conn_t *conn)
{
    http_req_free(conn);
    if (conn->state == HTTP_CLOSING)
        return;
    if (!conn->keep_alive) {
        http_linger(conn);
        return;
    }
    conn->close_cb = NULL;
    conn->close_arg = NULL;
    conn->discarded = false;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&conn->tcp) > HTTP_MAX_PENDING) {
        conn->state = HTTP_RESPONDING;
        http_tq_set(conn, HTTP_TQ_IDLE); /* a client that never reads is idle too */
        return;
    }
    conn->state = HTTP_IDLE;
    if (!conn->in_input) /* else http_input's loop goes on with the next request */
        http_resume(conn);
}

/* Go on after a request finished outside http_input: parse what is buffered, then wait. */
static void http_resume(hr_http_conn_t *conn)
{
    if (conn->in_len > 0) {
        http_input(conn, conn->in, conn->in_len);
        return;
    }
    http_tq_set(conn, HTTP_TQ_IDLE);
    http_read_start(conn);
}

static void http_fail(hr_http_conn_t *conn, int fail)
{
    int status = 400;
    const char *code = "invalid_request", *msg = NULL;
    char reason[160];
    if (conn->state == HTTP_CLOSING)
        return;
    switch (fail) {
    case HTTP_FAIL_HEAD_TOO_LARGE:
        status = 431, code = "headers_too_large", msg = "request line and headers too large";
        break;
    case HTTP_FAIL_TOO_MANY_HEADERS:
        status = 431, code = "headers_too_large", msg = "too many header fields";
        break;
    case HTTP_FAIL_BODY_TOO_LARGE:
        status = 413, code = "payload_too_large", msg = "request body too large";
        break;
    case HTTP_FAIL_EXPECT:
        status = 417, msg = "unsupported expectation";
        break;
    case HTTP_FAIL_VERSION:
        msg = "unsupported HTTP version";
        break;
    case HTTP_FAIL_HOST:
        msg = "HTTP/1.1 request without exactly one Host header";
        break;
    case HTTP_FAIL_HEADER_NAME:
        msg = "invalid header field name";
        break;
    case HTTP_FAIL_TIMEOUT:
        status = 408, msg = "request timeout";
        break;
    default: {
        const char *why = llhttp_get_error_reason(&conn->parser);
        snprintf(reason, sizeof reason, "malformed request: %s", why ? why : "parse error");
        msg = reason;
    } break;
    }
    HR_DEBUG(MOD, "event=request_refused peer=%s status=%d message=\"%s\"", hr_http_conn_peer(conn),
             status, msg);
    http_tq_remove(conn);
    conn->keep_alive = false;
    char body[256];
    size_t blen = http_error_json(body, sizeof body, code, msg);
    if (blen >= sizeof body)
        blen = http_error_json(body, sizeof body, code, "invalid request");
    hr_http_header_t ct = {"Content-Type", 12, "application/json", 16};
    http_send(conn, status, &ct, 1, body, blen, HTTP_LENGTH, false);
    http_finish(conn);
}

/* Parse from `data`; returns how many bytes llhttp consumed. */
static size_t http_parse(hr_http_conn_t *conn, const char *data, size_t len)
{
    if (conn->state == HTTP_IDLE) {
        /* The first byte of a request starts its header timeout. */
        conn->state = HTTP_READING_HEAD;
        conn->head_fed = 0;
        http_tq_set(conn, HTTP_TQ_HEAD);
    }
    conn->feed_base = data;
    conn->fail = HTTP_FAIL_PARSE;
    enum llhttp_errno err = llhttp_execute(&conn->parser, data, len);
    switch (err) {
    case HPE_OK:
        if (conn->state == HTTP_READING_HEAD) {
            conn->head_fed += len;
            if (conn->head_fed > conn->server->max_header_bytes)
                http_fail(conn, HTTP_FAIL_HEAD_TOO_LARGE);
        }
        return len;
    case HPE_PAUSED: {
        size_t used = (size_t)(llhttp_get_error_pos(&conn->parser) - data);
        llhttp_resume(&conn->parser);
        return used;
    }
    case HPE_PAUSED_UPGRADE: {
        /* After an Upgrade request the handler answered with an ordinary response, so the
         * connection goes on in HTTP/1.1. */
        size_t used = (size_t)(llhttp_get_error_pos(&conn->parser) - data);
        llhttp_resume_after_upgrade(&conn->parser);
        return used;
    }
    default:
        http_fail(conn, conn->fail);
        return len;
    }
}

static bool http_is_preflight(const hr_http_request_t *q)
{
    return strcmp(q->method, "OPTIONS") == 0 && http_find(q, "origin") &&
           http_find(q, "access-control-request-method");
}

/* A complete request: answer a CORS preflight here, hand anything else to the handler. */
static void http_dispatch(hr_http_conn_t *conn)
{
    const hr_http_request_t *q = &conn->req->pub;
    if (!http_is_preflight(q)) {
        conn->server->handler(conn->server->handler_ctx, conn, q);
        return;
    }
    size_t olen;
    if (http_cors_origin(conn, &olen) == NULL) {
        hr_http_respond_error(conn, 403, "forbidden", "origin not allowed");
        return;
    }
    size_t rlen;
    const char *rh = hr_http_header(q, "access-control-request-headers", &rlen);
    static const char fixed[] = "Content-Type, Last-Event-ID, Idempotency-Key, Herald-Event, "
                                "If-None-Match";
    hr_http_header_t h[3] = {
        {"Access-Control-Allow-Methods", 28, "GET, POST, OPTIONS", 18},
        {"Access-Control-Allow-Headers", 28, rh && rlen ? rh : fixed,
         rh && rlen ? rlen : sizeof fixed - 1},
        {"Access-Control-Max-Age", 22, "600", 3},
    };
    http_send(conn, 204, h, 3, NULL, 0, HTTP_LENGTH, true);
    http_finish(conn);
}

/* Keep what is left of the input for later, or drop it, according to the state. */
static void http_keep(hr_http_conn_t *conn, const char *data, size_t len)
{
    bool keep = conn->state == HTTP_HANDLING || conn->state == HTTP_RESPONDING ||
                (conn->upgraded && conn->read_cb == NULL && conn->state == HTTP_STREAMING);
    if (len > 0 && conn->upgraded && conn->read_cb != NULL && conn->state == HTTP_STREAMING) {
        /* Bytes that followed the upgrade request in the same read belong to the new protocol.
         * They may live in conn->in: hand them over before releasing it. */
        conn->in_input = true;
        conn->read_cb(conn->read_arg, data, len);
        conn->in_input = false;
        len = 0;
    }
    if (len == 0 || !keep) {
        if (len > 0 && conn->state == HTTP_STREAMING)
            conn->discarded = true;
        hr_free(conn->in);
        conn->in = NULL;
        conn->in_len = conn->in_cap = 0;
        return;
    }
    if (conn->in && data >= conn->in && data < conn->in + conn->in_cap) {
        memmove(conn->in, data, len);
    } else {
        assert(conn->in_len == 0);
        if (len > conn->in_cap) {
            hr_free(conn->in);
            conn->in = hr_malloc(len);
            conn->in_cap = (uint32_t)len;
        }
        memcpy(conn->in, data, len);
    }
    conn->in_len = (uint32_t)len;
}

static void http_input(hr_http_conn_t *conn, const char *data, size_t len)
{
    conn->in_input = true;
    while (len > 0 && conn->state <= HTTP_READING_BODY) {
        size_t used = http_parse(conn, data, len);
        data += used;
        len -= used;
        if (conn->state == HTTP_HANDLING)
            http_dispatch(conn); /* may finish it at once: then the loop goes on */
    }
    conn->in_input = false;
    http_keep(conn, data, len);
    switch (conn->state) {
    case HTTP_IDLE:
        http_tq_set(conn, HTTP_TQ_IDLE);
        http_read_start(conn);
        break;
    case HTTP_READING_HEAD:
    case HTTP_READING_BODY:
        http_read_start(conn);
        break;
    case HTTP_HANDLING:
    case HTTP_RESPONDING:
        if (conn->in_len > HTTP_MAX_BUFFERED && !conn->read_stopped) {
            uv_read_stop((uv_stream_t *)&conn->tcp);
            conn->read_stopped = true;
        }
        break;
    default:
        break;
    }
}

/* ---- connections -------------------------------------------------------------------------- */

static void http_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    hr_http_conn_t *conn = http_container_of(h, hr_http_conn_t, tcp);
    *buf = uv_buf_init(conn->server->rbuf, HTTP_READ_BUF);
}

static void http_append(hr_http_conn_t *conn, const char *data, size_t len)
{
    if ((size_t)conn->in_len + len > conn->in_cap) {
        size_t cap = conn->in_cap ? conn->in_cap : 4096;
        while (cap < (size_t)conn->in_len + len)
            cap *= 2;
        conn->in = hr_realloc(conn->in, cap);
        conn->in_cap = (uint32_t)cap;
    }
    memcpy(conn->in + conn->in_len, data, len);
    conn->in_len += (uint32_t)len;
}

static void http_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    hr_http_conn_t *conn = http_container_of(stream, hr_http_conn_t, tcp);
    if (nread == 0)
        return;
    if (nread < 0) {
        /* EOF or a reset. Half-closed clients waiting for a response are not supported: a
         * client that goes away during a long poll or a stream must be noticed. */
        http_conn_close(conn);
        return;
    }
    switch (conn->state) {
    case HTTP_IDLE:
    case HTTP_READING_HEAD:
    case HTTP_READING_BODY:
        if (conn->in_len > 0) {
            http_append(conn, buf->base, (size_t)nread);
            http_input(conn, conn->in, conn->in_len);
        } else {
            http_input(conn, buf->base, (size_t)nread);
        }
        break;
    case HTTP_HANDLING:
    case HTTP_RESPONDING:
        http_append(conn, buf->base, (size_t)nread);
        if (conn->in_len > HTTP_MAX_BUFFERED) {
            uv_read_stop(stream);
            conn->read_stopped = true;
        }
        break;
    case HTTP_STREAMING:
        if (conn->upgraded && conn->read_cb != NULL)
            conn->read_cb(conn->read_arg, buf->base, (size_t)nread);
        else
            conn->discarded = true;
        break;
    default: /* lingering: discard */
        break;
    }
}

static void http_server_maybe_free(hr_http_server_t *s)
{
    if (s->destroying && s->open_handles == 0 && s->n_conns == 0) {
        hr_free(s->cors);
        hr_free(s);
    }
}

static void http_on_conn_closed(uv_handle_t *h)
{
    hr_http_conn_t *conn = http_container_of(h, hr_http_conn_t, tcp);
    hr_http_server_t *s = conn->server;
    if (conn->close_cb)
        conn->close_cb(conn->close_arg);
    http_req_free(conn);
    hr_free(conn->in);
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        s->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    s->n_conns--;
    hr_free(conn);
    http_server_maybe_free(s);
}

static void http_conn_close(hr_http_conn_t *conn)
{
    if (conn->state == HTTP_CLOSING)
        return;
    conn->state = HTTP_CLOSING;
    http_tq_remove(conn);
    uv_close((uv_handle_t *)&conn->tcp, http_on_conn_closed);
}

static void http_on_connection(uv_stream_t *listener, int status)
{
    hr_http_server_t *s = http_container_of(listener, hr_http_server_t, listener);
    if (status < 0) {
        HR_WARN(MOD, "event=accept_failed error=\"%s\"", uv_strerror(status));
        return;
    }
    hr_http_conn_t *conn = hr_calloc(1, sizeof *conn);
    conn->server = s;
    conn->state = HTTP_IDLE;
    conn->keep_alive = true;
    uv_tcp_init(s->loop, &conn->tcp);
    conn->next = s->conns;
    if (s->conns)
        s->conns->prev = conn;
    s->conns = conn;
    s->n_conns++;
    int rc = uv_accept(listener, (uv_stream_t *)&conn->tcp);
    if (rc < 0) {
        HR_WARN(MOD, "event=accept_failed error=\"%s\"", uv_strerror(rc));
        http_conn_close(conn);
        return;
    }
    /* Small responses and stream events must leave at once, not wait for Nagle. */
    uv_tcp_nodelay(&conn->tcp, 1);
    int alen = (int)sizeof conn->peer;
    if (uv_tcp_getpeername(&conn->tcp, &conn->peer.sa, &alen) < 0)
        conn->peer.sa.sa_family = AF_UNSPEC;
    llhttp_init(&conn->parser, HTTP_REQUEST, &s->settings);
    conn->parser.data = conn;
    http_tq_set(conn, HTTP_TQ_IDLE);
    rc = uv_read_start((uv_stream_t *)&conn->tcp, http_on_alloc, http_on_read);
    if (rc < 0)
        http_conn_close(conn);
}

/* ---- server ------------------------------------------------------------------------------- */

static void http_on_server_handle_closed(uv_handle_t *h)
{
    hr_http_server_t *s = h->data;
    s->open_handles--;
    http_server_maybe_free(s);
}

static int http_parse_listen(const char *listen, struct sockaddr_storage *ss, char *err,
                             size_t errlen)
{
    char host[64];
    const char *colon = strrchr(listen, ':');
    const char *h = listen;
    size_t hl;
    if (colon == NULL)
        goto fail;
    hl = (size_t)(colon - listen);
    if (hl >= 2 && listen[0] == '[' && colon[-1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= sizeof host)
        goto fail;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || port < 0 || port > 65535)
        goto fail;
    if (h != listen) {
        if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
            return 0;
    } else {
        if (hl == 0 || strcmp(host, "*") == 0)
            strcpy(host, "0.0.0.0");
        else if (strcmp(host, "localhost") == 0)
            strcpy(host, "127.0.0.1");
        if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
            return 0;
    }
fail:
    snprintf(err, errlen, "cannot parse listen address \"%s\" (want host:port or [v6]:port)",
             listen);
    return HR_E_INVALID_REQUEST;
}

int hr_http_server_new(hr_http_server_t **out, uv_loop_t *loop, const hr_http_options_t *opts,
                       char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    *out = NULL;
    assert(opts->handler != NULL);
    int rc = http_parse_listen(opts->listen, &ss, err, errlen);
    if (rc < 0)
        return rc;

    hr_http_server_t *s = hr_calloc(1, sizeof *s);
    s->loop = loop;
    s->max_header_bytes = opts->max_header_bytes;
    s->max_headers = opts->max_headers;
    s->max_body_bytes = opts->max_body_bytes;
    s->timeout_ms[HTTP_TQ_IDLE] = opts->idle_timeout_ms;
    s->timeout_ms[HTTP_TQ_HEAD] = opts->header_timeout_ms;
    s->timeout_ms[HTTP_TQ_LINGER] = HTTP_LINGER_MS;
    s->handler = opts->handler;
    s->handler_ctx = opts->handler_ctx;
    const char *c = opts->cors_origins ? opts->cors_origins : "";
    while (*c == ' ')
        c++;
    s->cors_any = c[0] == '*' && c[1 + strspn(c + 1, " ")] == '\0';
    if (*c && !s->cors_any)
        s->cors = hr_strndup(c, strlen(c));

    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = http_on_message_begin;
    s->settings.on_url = http_on_url;
    s->settings.on_url_complete = http_on_url_complete;
    s->settings.on_header_field = http_on_header_field;
    s->settings.on_header_field_complete = http_on_header_field_complete;
    s->settings.on_header_value = http_on_header_value;
    s->settings.on_header_value_complete = http_on_header_value_complete;
    s->settings.on_headers_complete = http_on_headers_complete;
    s->settings.on_body = http_on_body;
    s->settings.on_message_complete = http_on_message_complete;

    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->open_handles = 2;
    s->listening = true;
    /* libuv sets SO_REUSEADDR on bind; a bind error may only show at listen. */
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, opts->backlog > 0 ? opts->backlog : 511,
                       http_on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", opts->listen, uv_strerror(rc));
        hr_http_server_destroy(&s);
        return rc;
    }
    struct sockaddr_storage bound;
    int blen = (int)sizeof bound;
    if (uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen) == 0)
        s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                    : ((struct sockaddr_in *)&bound)->sin_port);
    *out = s;
    return 0;
}

int hr_http_server_port(const hr_http_server_t *server)
{
    return server->listening ? server->port : 0;
}

void hr_http_server_stop_accepting(hr_http_server_t *server)
{
    server->draining = true;
    if (server->listening) {
        server->listening = false;
        uv_close((uv_handle_t *)&server->listener, http_on_server_handle_closed);
    }
    /* Idle keep-alive connections carry no request: close them now, so a draining edge does
     * not wait for clients that merely pool connections. Busy ones close after their response
     * (draining responses carry Connection: close). */
    hr_http_conn_t *c = server->conns;
    while (c != NULL) {
        hr_http_conn_t *next = c->next;
        if (c->state == HTTP_IDLE && c->in_len == 0)
            http_conn_close(c);
        c = next;
    }
}

void hr_http_server_destroy(hr_http_server_t **server)
{
    hr_http_server_t *s = *server;
    if (s == NULL)
        return;
    *server = NULL;
    hr_http_server_stop_accepting(s);
    s->destroying = true;
    uv_close((uv_handle_t *)&s->timer, http_on_server_handle_closed);
    for (hr_http_conn_t *c = s->conns; c; c = c->next)
        http_conn_close(c);
}

size_t hr_http_server_connections(const hr_http_server_t *server)
{
    return server->n_conns;
}

/* ---- responses ---------------------------------------------------------------------------- */

/* The handler may call the response functions only while it owns the request; a connection
 * that is closing (close callback pending) ignores them. */
static bool http_owned(const hr_http_conn_t *conn)
{
    assert(conn->state == HTTP_HANDLING || conn->state == HTTP_CLOSING);
    return conn->state == HTTP_HANDLING;
}

void hr_http_respond(hr_http_conn_t *conn, int status, const hr_http_header_t *headers,
                     size_t n_headers, const void *body, size_t body_len)
{
    if (!http_owned(conn))
        return;
    http_send(conn, status, headers, n_headers, body, body_len, HTTP_LENGTH, false);
    http_finish(conn);
}

void hr_http_respond_error(hr_http_conn_t *conn, int status, const char *code, const char *message)
{
    char small[256];
    char *body = small;
    size_t n = http_error_json(small, sizeof small, code, message);
    if (n > sizeof small) {
        body = hr_malloc(n);
        n = http_error_json(body, n, code, message);
    }
    hr_http_header_t ct = {"Content-Type", 12, "application/json", 16};
    hr_http_respond(conn, status, &ct, 1, body, n);
    if (body != small)
        hr_free(body);
}

void hr_http_stream_start(hr_http_conn_t *conn, int status, const hr_http_header_t *headers,
                          size_t n_headers, bool chunked)
{
    if (!http_owned(conn))
        return;
    int framing = HTTP_UNTIL_EOF;
    if (status == 101)
        framing = HTTP_UPGRADE;
    else if (chunked && conn->req->pub.http_minor >= 1)
        framing = HTTP_CHUNKED; /* RFC 9112 §7.1; HTTP/1.0 has no chunked coding */
    if (framing != HTTP_CHUNKED)
        conn->keep_alive = false; /* RFC 9112 §6.3 item 8: the body ends at the close */
    conn->chunked = framing == HTTP_CHUNKED;
    http_send(conn, status, headers, n_headers, NULL, 0, framing, false);
    if (conn->state == HTTP_CLOSING)
        return;
    conn->state = HTTP_STREAMING;
    conn->upgraded = status == 101;
    /* Pipelined bytes already buffered cannot be answered in order any more. (Inside
     * http_input its loop drops them.) After a 101 they are the new protocol's: kept for the
     * read callback. */
    if (conn->in_len > 0 && !conn->in_input && !conn->upgraded) {
        conn->discarded = true;
        hr_free(conn->in);
        conn->in = NULL;
        conn->in_len = conn->in_cap = 0;
    }
    http_read_start(conn);
}

int hr_http_stream_write(hr_http_conn_t *conn, const uv_buf_t *bufs, size_t n,
                         hr_http_write_done done, void *arg)
{
    if (conn->state != HTTP_STREAMING)
        return -EPIPE;
    uv_buf_t small[16], *v = small;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += bufs[i].len;
    bool frame = conn->chunked && total > 0; /* an empty chunk would end the body */
    size_t nv = n + (frame ? 2 : 0);
    if (nv == 0)
        nv = 1;
    if (nv > sizeof small / sizeof small[0])
        v = hr_malloc(nv * sizeof *v);
    char head[24];
    size_t k = 0;
    if (frame) { /* RFC 9112 §7.1: chunk-size CRLF chunk-data CRLF */
        int hl = snprintf(head, sizeof head, "%zx\r\n", total);
        v[k++] = uv_buf_init(head, (unsigned)hl);
    }
    for (size_t i = 0; i < n; i++)
        v[k++] = bufs[i];
    if (frame)
        v[k++] = uv_buf_init((char *)http_crlf, 2);
    /* Nothing queued before us: write now. Most stream writes fit the socket buffer, which saves
     * the write request and, on libuv 1.44, an epoll_ctl per write. */
    size_t first = 0;
    if (k > 0 && uv_stream_get_write_queue_size((uv_stream_t *)&conn->tcp) == 0) {
        int wrote = uv_try_write((uv_stream_t *)&conn->tcp, v, (unsigned)k);
        size_t left = wrote > 0 ? (size_t)wrote : 0;
        if (wrote < 0 && wrote != UV_EAGAIN) {
            if (v != small)
                hr_free(v);
            http_conn_close(conn);
            return -EPIPE;
        }
        while (first < k && left >= v[first].len)
            left -= v[first++].len;
        if (first == k) {
            if (v != small)
                hr_free(v);
            return 1; /* all written: `done` will not be called */
        }
        v[first].base += left;
        v[first].len -= left;
    }
    /* The rest goes through uv_write; the chunk head must outlive this call. */
    http_write_t *w = hr_malloc(sizeof *w + 24);
    w->done = done;
    w->arg = arg;
    if (frame && first == 0) {
        memcpy(w->data, v[0].base, v[0].len);
        v[0].base = w->data;
    }
    if (k == 0)
        v[k++] = uv_buf_init(w->data, 0);
    int rc = http_write(conn, w, v + first, k - first);
    if (v != small)
        hr_free(v);
    return rc < 0 ? -EPIPE : 0;
}

size_t hr_http_pending_bytes(const hr_http_conn_t *conn)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&conn->tcp);
}

void hr_http_stream_end(hr_http_conn_t *conn)
{
    if (conn->state != HTTP_STREAMING)
        return;
    if (conn->chunked) {
        http_write_raw(conn, http_last_chunk, sizeof http_last_chunk - 1);
        /* Input read during the stream was thrown away: the next request is lost. A draining
         * server does not keep the connection either (its head went out before the drain, so it
         * could not say Connection: close). */
        if (conn->discarded || conn->server->draining)
            conn->keep_alive = false;
    }
    http_finish(conn);
}

void hr_http_close(hr_http_conn_t *conn)
{
    http_conn_close(conn);
}

void hr_http_conn_set_read_cb(hr_http_conn_t *conn, hr_http_read_cb cb, void *arg)
{
    if (!conn->upgraded || conn->state != HTTP_STREAMING)
        return;
    conn->read_cb = cb;
    conn->read_arg = arg;
    if (cb != NULL && conn->in_len > 0 && !conn->in_input) {
        char *in = conn->in;
        size_t len = conn->in_len;
        conn->in = NULL;
        conn->in_len = conn->in_cap = 0;
        cb(arg, in, len);
        hr_free(in);
    }
}

bool hr_http_conn_origin_allowed(const hr_http_conn_t *conn, const char *origin, size_t len)
{
    return http_origin_allowed(conn->server, origin, len);
}

void hr_http_conn_pause_reading(hr_http_conn_t *conn, bool pause)
{
    if (conn->state != HTTP_STREAMING || !conn->upgraded)
        return;
    if (pause && !conn->read_stopped) {
        uv_read_stop((uv_stream_t *)&conn->tcp);
        conn->read_stopped = true;
    } else if (!pause) {
        http_read_start(conn);
    }
}

void hr_http_conn_set_close_cb(hr_http_conn_t *conn, void (*cb)(void *arg), void *arg)
{
    conn->close_cb = cb;
    conn->close_arg = arg;
}

const char *hr_http_conn_peer(const hr_http_conn_t *conn)
{
    char *buf = conn->server->peer, ip[INET6_ADDRSTRLEN];
    size_t cap = sizeof conn->server->peer;
    if (conn->peer.sa.sa_family == AF_INET) {
        uv_ip4_name(&conn->peer.in4, ip, sizeof ip);
        snprintf(buf, cap, "%s:%d", ip, ntohs(conn->peer.in4.sin_port));
    } else if (conn->peer.sa.sa_family == AF_INET6) {
        uv_ip6_name(&conn->peer.in6, ip, sizeof ip);
        snprintf(buf, cap, "[%s]:%d", ip, ntohs(conn->peer.in6.sin6_port));
    } else {
        snprintf(buf, cap, "unknown");
    }
    return buf;
}
