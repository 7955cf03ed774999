/*
 * Unit tests for edge/http (hr_http): a real server on loopback, its libuv loop in a thread, and
 * plain blocking-with-timeout client sockets in the test thread. Responses are compared byte for
 * byte, with only the Date header's value left out (its presence and format are checked).
 *
 * The handler's behaviour is chosen by the request path:
 *   /echo             200, JSON of method, path, query, body and headers, at once;
 *   /later?ms=N       the same after N ms (a uv_timer);
 *   /stream?n=N&ms=M&chunked=1&end=1
 *                     a stream of N events ("data: i\n\n"), one every M ms, written as two
 *                     buffers each, then hr_http_stream_end; N=0 streams until the client goes;
 *   /empty            204 (with a body the server must leave out);
 *   /big?kb=N         200 with N KiB of 'x';
 *   /hstat            200, text: header count, value bytes, target length, the value of X-Last;
 *   /badheader        200 with one good header and one holding CRLF (to be dropped);
 *   /drain            hr_http_server_stop_accepting, then 204;
 *   /conns            200, text: hr_http_server_connections (read on the loop thread);
 *   /upgrade          hr_http_stream_start(101), one event, then hr_http_close;
 *   /close            hr_http_close.
 */
#define _GNU_SOURCE /* asprintf, strcasestr */
#include "http.h"

#include "hr_alloc.h"
#include "hr_error.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

/* ---- server fixture: the loop runs in its own thread ---------------------------------------- */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
    hr_http_server_t *server;
    int port;
    bool running;
    atomic_int close_cbs;      /* close callbacks run */
    atomic_int writes;         /* hr_http_stream_write calls that returned 0 (done follows) */
    atomic_int dones;          /* their done callbacks */
    atomic_int done_errors;    /* ... with a negative status */
    atomic_int requests;       /* handler calls */
    atomic_size_t max_pending; /* largest hr_http_pending_bytes seen by a stream */
} fixture_t;

static fixture_t fx;

typedef struct {
    uv_timer_t timer;
    hr_http_conn_t *conn;
    const hr_http_request_t *req;
    int n, i, ms;
    size_t kb, max_pending; /* event size (0: "data: i"); close the stream above max_pending */
    bool stream, chunked, end;
    bool keep_cb; /* leave the close callback set at the end of the stream */
} job_t;

static long query_int(const hr_http_request_t *req, const char *key, long def)
{
    size_t kl = strlen(key);
    const char *q = req->query, *end = req->query + req->query_len;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *e = amp ? amp : end;
        if ((size_t)(e - q) > kl && memcmp(q, key, kl) == 0 && q[kl] == '=')
            return strtol(q + kl + 1, NULL, 10);
        q = e + 1;
    }
    return def;
}

static bool path_is(const hr_http_request_t *req, const char *p)
{
    return req->path_len == strlen(p) && memcmp(req->path, p, req->path_len) == 0;
}

static void respond_echo(hr_http_conn_t *conn, const hr_http_request_t *req)
{
    json_t *h = json_array();
    for (size_t i = 0; i < req->n_headers; i++) {
        char line[512];
        snprintf(line, sizeof line, "%.*s: %.*s", (int)req->headers[i].name_len,
                 req->headers[i].name, (int)req->headers[i].value_len, req->headers[i].value);
        json_array_append_new(h, json_string(line));
    }
    json_t *o =
        json_pack("{s:s,s:s%,s:s%,s:i}", "method", req->method, "path", req->path, req->path_len,
                  "query", req->query, req->query_len, "body_len", (json_int_t)req->body_len);
    if (req->body_len)
        json_object_set_new(o, "body", json_stringn((const char *)req->body, req->body_len));
    json_object_set_new(o, "headers", h);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    hr_http_header_t ct = {"Content-Type", 12, "application/json", 16};
    hr_http_respond(conn, 200, &ct, 1, s, strlen(s));
    free(s);
}

static void job_free(uv_handle_t *h)
{
    hr_free(h->data);
}

static void job_done(job_t *job)
{
    uv_timer_stop(&job->timer);
    uv_close((uv_handle_t *)&job->timer, job_free);
}

/* The client went away (or the server closes): abandon the request. */
static void on_conn_close(void *arg)
{
    job_t *job = arg;
    atomic_fetch_add(&fx.close_cbs, 1);
    job_done(job);
}

static void on_write_done(void *arg, int status)
{
    hr_free(arg);
    atomic_fetch_add(&fx.dones, 1);
    if (status < 0)
        atomic_fetch_add(&fx.done_errors, 1);
}

static void on_job_timer(uv_timer_t *t)
{
    job_t *job = t->data;
    if (!job->stream) {
        hr_http_conn_set_close_cb(job->conn, NULL, NULL);
        respond_echo(job->conn, job->req);
        job_done(job);
        return;
    }
    size_t pending = hr_http_pending_bytes(job->conn);
    if (pending > atomic_load(&fx.max_pending))
        atomic_store(&fx.max_pending, pending);
    if (job->max_pending && pending > job->max_pending) {
        /* A consumer too slow to keep up is cut off (DESIGN.md invariant 6). */
        hr_http_conn_set_close_cb(job->conn, NULL, NULL);
        hr_http_close(job->conn);
        job_done(job);
        return;
    }
    /* One event as two buffers in one write: one chunk must wrap both. */
    size_t size = job->kb ? job->kb * 1024 : 32;
    char *ev = hr_malloc(size);
    int n = snprintf(ev, 32, "data: %d\n\n", job->i);
    if (job->kb) {
        memset(ev, 'e', size);
        n = (int)size;
    }
    uv_buf_t bufs[2] = {uv_buf_init(ev, 6), uv_buf_init(ev + 6, (unsigned)n - 6)};
    if (hr_http_stream_write(job->conn, bufs, 2, on_write_done, ev) == 0)
        atomic_fetch_add(&fx.writes, 1);
    else
        hr_free(ev);
    job->i++;
    if (job->n > 0 && job->i == job->n) {
        if (!job->keep_cb)
            hr_http_conn_set_close_cb(job->conn, NULL, NULL);
        if (job->end)
            hr_http_stream_end(job->conn);
        else
            hr_http_close(job->conn);
        if (job->keep_cb && !job->chunked) {
            uv_timer_stop(&job->timer); /* the close callback frees the job */
            return;
        }
        job_done(job);
    }
}

static void handler(void *ctx, hr_http_conn_t *conn, const hr_http_request_t *req)
{
    (void)ctx;
    atomic_fetch_add(&fx.requests, 1);
    if (path_is(req, "/close")) {
        hr_http_close(conn);
        return;
    }
    if (path_is(req, "/empty")) {
        hr_http_respond(conn, 204, NULL, 0, "ignored", 7);
        return;
    }
    if (path_is(req, "/big")) {
        size_t n = (size_t)query_int(req, "kb", 1) * 1024;
        char *b = malloc(n);
        memset(b, 'x', n);
        hr_http_respond(conn, 200, NULL, 0, b, n);
        free(b);
        return;
    }
    if (path_is(req, "/hstat")) {
        size_t bytes = 0, ll = 0;
        for (size_t i = 0; i < req->n_headers; i++)
            bytes += req->headers[i].value_len;
        const char *last = hr_http_header(req, "x-LAST", &ll);
        char b[256];
        int n = snprintf(b, sizeof b, "headers=%zu bytes=%zu target=%zu last=%.*s", req->n_headers,
                         bytes, strlen(req->target), (int)ll, last ? last : "");
        hr_http_respond(conn, 200, NULL, 0, b, (size_t)n);
        return;
    }
    if (path_is(req, "/badheader")) {
        hr_http_header_t h[2] = {{"X-Bad", 5, "a\r\nSet-Cookie: x=1", 19}, {"X-Ok", 4, "1", 1}};
        hr_http_respond(conn, 200, h, 2, "ok", 2);
        return;
    }
    if (path_is(req, "/conns")) {
        char b[32];
        int n = snprintf(b, sizeof b, "%zu", hr_http_server_connections(fx.server));
        hr_http_respond(conn, 200, NULL, 0, b, (size_t)n);
        return;
    }
    if (path_is(req, "/drain")) {
        hr_http_server_stop_accepting(fx.server);
        hr_http_respond(conn, 204, NULL, 0, NULL, 0);
        return;
    }
    bool later = path_is(req, "/later"), stream = path_is(req, "/stream");
    bool upgrade = path_is(req, "/upgrade");
    if (upgrade) {
        stream = true;
        req = NULL; /* not used after the stream starts */
    }
    if (!later && !stream) {
        respond_echo(conn, req);
        return;
    }
    job_t *job = hr_calloc(1, sizeof *job);
    job->conn = conn;
    job->req = req;
    job->stream = stream;
    job->n = upgrade ? 1 : (int)query_int(req, "n", 3);
    job->ms = upgrade ? 10 : (int)query_int(req, "ms", 10);
    job->chunked = !upgrade && query_int(req, "chunked", 0) != 0;
    job->end = !upgrade && query_int(req, "end", 1) != 0;
    job->kb = upgrade ? 0 : (size_t)query_int(req, "kb", 0);
    job->max_pending = upgrade ? 0 : (size_t)query_int(req, "max_pending", 0);
    job->keep_cb = !upgrade && query_int(req, "keepcb", 0) != 0;
    uv_timer_init(&fx.loop, &job->timer);
    job->timer.data = job;
    hr_http_conn_set_close_cb(conn, on_conn_close, job);
    if (upgrade) {
        hr_http_header_t h[2] = {{"Upgrade", 7, "test", 4}, {"Connection", 10, "Upgrade", 7}};
        hr_http_stream_start(conn, 101, h, 2, false);
        uv_timer_start(&job->timer, on_job_timer, (uint64_t)job->ms, (uint64_t)job->ms);
    } else if (stream) {
        hr_http_header_t h[2] = {{"Content-Type", 12, "text/event-stream", 17},
                                 {"Cache-Control", 13, "no-cache", 8}};
        hr_http_stream_start(conn, 200, h, 2, job->chunked);
        uv_timer_start(&job->timer, on_job_timer, (uint64_t)job->ms, (uint64_t)job->ms);
    } else {
        uv_timer_start(&job->timer, on_job_timer, (uint64_t)job->ms, 0);
    }
}

static void on_stop(uv_async_t *a)
{
    hr_http_server_destroy(&fx.server);
    uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg)
{
    (void)arg;
    uv_run(&fx.loop, UV_RUN_DEFAULT);
    return NULL;
}

typedef struct {
    size_t max_header_bytes, max_headers, max_body_bytes;
    uint64_t header_timeout_ms, idle_timeout_ms;
    const char *cors;
} opts_t;

static void fx_start(const opts_t *o)
{
    memset(&fx, 0, sizeof fx);
    assert_int_equal(uv_loop_init(&fx.loop), 0);
    hr_http_options_t opts = {
        .listen = "127.0.0.1:0",
        .max_header_bytes = o && o->max_header_bytes ? o->max_header_bytes : 8192,
        .max_headers = o && o->max_headers ? o->max_headers : 64,
        .max_body_bytes = o && o->max_body_bytes ? o->max_body_bytes : 1024,
        .header_timeout_ms = o && o->header_timeout_ms ? o->header_timeout_ms : 5000,
        .idle_timeout_ms = o && o->idle_timeout_ms ? o->idle_timeout_ms : 5000,
        .cors_origins = o && o->cors ? o->cors : "",
        .backlog = 64,
        .handler = handler,
        .handler_ctx = &fx,
    };
    char err[256];
    assert_int_equal(hr_http_server_new(&fx.server, &fx.loop, &opts, err, sizeof err), 0);
    fx.port = hr_http_server_port(fx.server);
    assert_true(fx.port > 0);
    uv_async_init(&fx.loop, &fx.stop, on_stop);
    assert_int_equal(pthread_create(&fx.thread, NULL, loop_main, NULL), 0);
    fx.running = true;
}

/* Destroy the server inside the loop, wait for the loop to end (every handle closed), and check
 * that nothing is left. */
static int fx_stop(void **state)
{
    (void)state;
    if (!fx.running)
        return 0;
    fx.running = false;
    uv_async_send(&fx.stop);
    pthread_join(fx.thread, NULL);
    assert_null(fx.server);
    assert_int_equal(uv_loop_close(&fx.loop), 0);
    assert_int_equal(atomic_load(&fx.writes), atomic_load(&fx.dones));
    return 0;
}

/* ---- client ------------------------------------------------------------------------------ */

typedef struct {
    int fd;
    size_t len;
    char buf[1 << 22];
} client_t;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static client_t *cli_new(void)
{
    client_t *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return c;
}

static void cli_free(client_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

static void cli_send(client_t *c, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        s += w;
        n -= (size_t)w;
    }
}

/* Read more within timeout_ms: >0 bytes, 0 at EOF, -1 on timeout, -2 on error (reset). */
static int cli_fill(client_t *c, int timeout_ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    assert_true(c->len < sizeof c->buf - 1);
    ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    if (r < 0)
        return -2;
    c->len += (size_t)r;
    c->buf[c->len] = '\0';
    return (int)r;
}

static char *cli_take(client_t *c, size_t n)
{
    char *s = malloc(n + 1);
    memcpy(s, c->buf, n);
    s[n] = '\0';
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
    c->buf[c->len] = '\0';
    return s;
}

/* Remove "Date: <IMF-fixdate>\r\n" from a response head after checking its shape. */
static void strip_date(char *s)
{
    char *d = strstr(s, "\r\nDate: ");
    assert_non_null(d);
    char *e = strstr(d + 2, "\r\n");
    assert_int_equal(e - (d + 8), 29); /* "Sun, 06 Nov 1994 08:49:37 GMT" */
    assert_memory_equal(d + 8 + 25, " GMT", 4);
    memmove(d, e, strlen(e) + 1);
}

/* Position just past the end of a chunked body starting at `p`, or NULL if incomplete. */
static const char *chunked_end(const char *p, const char *end)
{
    for (;;) {
        const char *nl = strstr(p, "\r\n");
        if (nl == NULL || nl >= end)
            return NULL;
        size_t size = strtoul(p, NULL, 16);
        p = nl + 2;
        if (size == 0)
            return p + 2 <= end ? p + 2 : NULL; /* no trailers here */
        if ((size_t)(end - p) < size + 2)
            return NULL;
        p += size + 2;
    }
}

/* One whole response (head and body), Date removed; NULL on timeout or EOF before it ends. */
static char *cli_response(client_t *c, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        char *he = strstr(c->buf, "\r\n\r\n");
        if (he != NULL) {
            size_t head = (size_t)(he + 4 - c->buf);
            int status = atoi(c->buf + 9);
            const char *cl = strcasestr(c->buf, "\r\nContent-Length: ");
            size_t total = 0;
            bool done = false;
            if (cl != NULL && cl < he) {
                total = head + strtoul(cl + 18, NULL, 10);
                done = c->len >= total;
            } else if (status < 200 || status == 204 || status == 304) {
                total = head;
                done = true;
            } else if (strcasestr(c->buf, "Transfer-Encoding: chunked") != NULL) {
                const char *e = chunked_end(c->buf + head, c->buf + c->len);
                done = e != NULL;
                total = e ? (size_t)(e - c->buf) : 0;
            }
            if (done) {
                char *r = cli_take(c, total);
                if (status != 100)
                    strip_date(r);
                return r;
            }
        }
        int left = (int)(deadline - now_ms());
        int rc = left > 0 ? cli_fill(c, left) : -1;
        if (rc <= 0) {
            if (rc == 0 && c->len > 0 && strstr(c->buf, "\r\n\r\n") != NULL) {
                char *r = cli_take(c, c->len); /* close-delimited */
                strip_date(r);
                return r;
            }
            return NULL;
        }
    }
}

/* True when the server closes (EOF or reset) within timeout_ms, with nothing more to read. */
static bool cli_closed(client_t *c, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(deadline - now_ms());
        int rc = left > 0 ? cli_fill(c, left) : -1;
        if (rc == 0 || rc == -2)
            return c->len == 0;
        if (rc < 0)
            return false;
    }
}

/* Read until the server closes; true on EOF (or reset) within timeout_ms. */
static bool cli_read_all(client_t *c, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(deadline - now_ms());
        int rc = left > 0 ? cli_fill(c, left) : -1;
        if (rc == 0 || rc == -2)
            return true;
        if (rc < 0)
            return false;
    }
}

/* "HTTP/1.1 <status>\r\n<headers>Content-Length: <n>\r\n<tail>\r\n<body>" */
static char *expect_len(const char *status, const char *headers, const char *tail, const char *body)
{
    char *s;
    assert_true(asprintf(&s, "HTTP/1.1 %s\r\n%sContent-Length: %zu\r\n%s\r\n%s", status, headers,
                         strlen(body), tail, body) > 0);
    return s;
}

static void assert_response(client_t *c, const char *expected)
{
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    assert_string_equal(r, expected);
    free(r);
}

#define JSON "Content-Type: application/json\r\n"

static void assert_error(client_t *c, const char *status, const char *code, const char *message)
{
    char body[256], *e;
    snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, message);
    e = expect_len(status, JSON, "Connection: close\r\n", body);
    assert_response(c, e);
    free(e);
    assert_true(cli_closed(c, 2000));
}

static void wait_for(atomic_int *v, int want, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    while (atomic_load(v) != want && now_ms() < deadline)
        usleep(5000);
    assert_int_equal(atomic_load(v), want);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_simple_get(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /echo?a=1&b HTTP/1.1\r\nHost: x\r\nX-Pad:  v w \t\r\nX-Empty:\r\n\r\n");
    char *e =
        expect_len("200 OK", JSON, "",
                   "{\"method\":\"GET\",\"path\":\"/echo\",\"query\":\"a=1&b\",\"body_len\":0,"
                   "\"headers\":[\"Host: x\",\"X-Pad: v w\",\"X-Empty: \"]}");
    assert_response(c, e);
    free(e);
    cli_send(c, "GET /conns HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_response(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    cli_free(c);
}

static void test_keep_alive(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    for (int i = 0; i < 2; i++) {
        cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
        char *e = expect_len("200 OK", JSON, "",
                             "{\"method\":\"GET\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":0,"
                             "\"headers\":[\"Host: x\"]}");
        assert_response(c, e);
        free(e);
    }
    assert_int_equal(atomic_load(&fx.requests), 2);
    cli_free(c);
}

static void test_pipelined_in_order(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    /* The first answers last in time if the server did not keep order. */
    cli_send(c, "GET /later?ms=80&i=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /echo?i=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /later?ms=5&i=3 HTTP/1.1\r\nHost: x\r\n\r\n");
    const char *want[3] = {"/later\",\"query\":\"ms=80&i=1\"", "/echo\",\"query\":\"i=2\"",
                           "/later\",\"query\":\"ms=5&i=3\""};
    for (int i = 0; i < 3; i++) {
        char *r = cli_response(c, 3000);
        assert_non_null(r);
        assert_non_null(strstr(r, want[i]));
        assert_memory_equal(r, "HTTP/1.1 200 OK\r\n", 17);
        free(r);
    }
    cli_free(c);
}

/* Many pipelined requests answered later: the server buffers, stops reading past its bound and
 * resumes, and answers every one in order. */
static void test_pipelined_many(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    enum { N = 3000 };
    char *all = malloc((size_t)N * 64), *p = all;
    for (int i = 0; i < N; i++)
        p += sprintf(p, "GET /later?ms=0&i=%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    size_t len = (size_t)(p - all), sent = 0;
    int got = 0;
    int64_t deadline = now_ms() + 8000;
    while (got < N && now_ms() < deadline) {
        struct pollfd pf = {.fd = c->fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
        assert_true(poll(&pf, 1, 1000) > 0);
        if ((pf.revents & POLLOUT) && sent < len) {
            ssize_t w = send(c->fd, all + sent, len - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent += (size_t)w;
        }
        if (pf.revents & POLLIN) {
            assert_true(cli_fill(c, 0) > 0);
            char *r;
            while (strstr(c->buf, "\r\n\r\n") && (r = cli_response(c, 0)) != NULL) {
                char want[32];
                snprintf(want, sizeof want, "&i=%d\"", got);
                assert_non_null(strstr(r, want));
                free(r);
                got++;
            }
        }
    }
    assert_int_equal(got, N);
    free(all);
    cli_free(c);
}

static void test_post_content_length(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    char *e = expect_len("200 OK", JSON, "",
                         "{\"method\":\"POST\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":5,"
                         "\"body\":\"hello\",\"headers\":[\"Host: x\",\"Content-Length: 5\"]}");
    assert_response(c, e);
    free(e);
    cli_free(c);
}

/* Chunks, a header name and a header value all split across reads. */
static void test_chunked_split(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    const char *parts[] = {"POST /echo HTTP/1.1\r\nHost: x\r\nX-Sp", "lit: ab",
                           "c\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
                           "lo\r\n6\r\n world\r\n", "0\r\nX-Trailer: t\r\n\r\n"};
    for (size_t i = 0; i < 5; i++) {
        cli_send(c, parts[i]);
        usleep(30000);
    }
    char *e = expect_len("200 OK", JSON, "",
                         "{\"method\":\"POST\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":11,"
                         "\"body\":\"hello world\",\"headers\":[\"Host: x\",\"X-Split: abc\","
                         "\"Transfer-Encoding: chunked\"]}");
    assert_response(c, e);
    free(e);
    cli_free(c);
}

static void test_expect_continue(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c,
             "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    assert_string_equal(r, "HTTP/1.1 100 Continue\r\n\r\n");
    free(r);
    cli_send(c, "abc");
    char *e = expect_len("200 OK", JSON, "",
                         "{\"method\":\"POST\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":3,"
                         "\"body\":\"abc\",\"headers\":[\"Host: x\",\"Expect: 100-continue\","
                         "\"Content-Length: 3\"]}");
    assert_response(c, e);
    free(e);
    cli_free(c);

    /* Any other expectation: 417 (RFC 9110 §10.1.1). */
    c = cli_new();
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 3\r\n\r\n");
    assert_error(c, "417 Expectation Failed", "invalid_request", "unsupported expectation");
    cli_free(c);
    assert_int_equal(atomic_load(&fx.requests), 1);
}

static void test_body_too_large(void **state)
{
    (void)state;
    fx_start(NULL); /* max_body_bytes 1024 */
    client_t *c = cli_new();
    /* Declared: refused before the body, and no 100 Continue. */
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                "Content-Length: 1025\r\n\r\n");
    assert_error(c, "413 Content Too Large", "payload_too_large", "request body too large");
    cli_free(c);

    /* Chunked: counted as it arrives. */
    c = cli_new();
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[600];
    memset(chunk, 'a', sizeof chunk);
    memcpy(chunk, "200\r\n", 5); /* 512 bytes of data */
    strcpy(chunk + 5 + 512, "\r\n");
    cli_send(c, chunk);
    cli_send(c, chunk);
    cli_send(c, "1\r\nb\r\n");
    assert_error(c, "413 Content Too Large", "payload_too_large", "request body too large");
    cli_free(c);

    /* Exactly the limit is fine. */
    c = cli_new();
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    cli_send(c, chunk);
    cli_send(c, chunk);
    cli_send(c, "0\r\n\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    assert_non_null(strstr(r, "\"body_len\":1024"));
    free(r);
    cli_free(c);
    assert_int_equal(atomic_load(&fx.requests), 1);
}

static void test_headers_too_large(void **state)
{
    (void)state;
    opts_t o = {.max_header_bytes = 1024, .max_headers = 8};
    fx_start(&o);
    client_t *c = cli_new();
    char big[1200];
    memset(big, 'v', sizeof big);
    big[sizeof big - 1] = '\0';
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ");
    cli_send(c, big);
    assert_error(c, "431 Request Header Fields Too Large", "headers_too_large",
                 "request line and headers too large");
    cli_free(c);

    /* Whitespace is counted too, not only what the callbacks see. */
    c = cli_new();
    memset(big, ' ', sizeof big - 1);
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big:");
    cli_send(c, big);
    assert_error(c, "431 Request Header Fields Too Large", "headers_too_large",
                 "request line and headers too large");
    cli_free(c);

    c = cli_new();
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 8; i++)
        cli_send(c, "A: b\r\n");
    cli_send(c, "\r\n");
    assert_error(c, "431 Request Header Fields Too Large", "headers_too_large",
                 "too many header fields");
    cli_free(c);

    /* Eight fields are allowed. */
    c = cli_new();
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 7; i++)
        cli_send(c, "A: b\r\n");
    cli_send(c, "\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    assert_memory_equal(r, "HTTP/1.1 200 OK\r\n", 17);
    free(r);
    cli_free(c);
    assert_int_equal(atomic_load(&fx.requests), 1);
}

static void assert_bad_request(const char *request)
{
    client_t *c = cli_new();
    cli_send(c, request);
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    if (strncmp(r, "HTTP/1.1 400", 12) != 0)
        print_error("request: %s\nresponse: %s\n", request, r);
    const char *head = "HTTP/1.1 400 Bad Request\r\n" JSON "Content-Length: ";
    assert_memory_equal(r, head, strlen(head));
    const char *body = strstr(r, "\r\nConnection: close\r\n\r\n");
    assert_non_null(body);
    const char *prefix = "{\"error\":{\"code\":\"invalid_request\",\"message\":\"";
    assert_memory_equal(body + 23, prefix, strlen(prefix));
    free(r);
    assert_true(cli_closed(c, 2000));
    cli_free(c);
}

static void test_bad_requests(void **state)
{
    (void)state;
    fx_start(NULL);
    assert_bad_request("GET\r\n\r\n");                                      /* request line */
    assert_bad_request("GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n");          /* request line */
    assert_bad_request("GET /echo HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"); /* header */
    assert_bad_request("GET /echo HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n");
    assert_bad_request("GET /echo HTTP/1.1\r\nHost : x\r\n\r\n"); /* RFC 9112 §5.1 */
    assert_bad_request("GET /echo HTTP/1.1\r\nHost: x\r\n: empty\r\n\r\n");
    /* RFC 9112 §6.3: Content-Length with Transfer-Encoding, in either order. */
    assert_bad_request("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    assert_bad_request("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                       "Content-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    assert_bad_request("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_bad_request("GET /echo HTTP/1.1\r\n\r\n"); /* RFC 9112 §3.2: no Host */
    assert_bad_request("GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_bad_request("GET /echo HTTP/2.0\r\nHost: a\r\n\r\n");
    assert_int_equal(atomic_load(&fx.requests), 0);

    /* The exact text of one. */
    client_t *c = cli_new();
    cli_send(c, "GET /echo HTTP/1.1\r\n\r\n");
    assert_error(c, "400 Bad Request", "invalid_request",
                 "HTTP/1.1 request without exactly one Host header");
    cli_free(c);
}

/* A client trickling its head gets 408 at header_timeout_ms, while a stream on another
 * connection goes on undisturbed. */
static void test_slow_sender_timeout(void **state)
{
    (void)state;
    opts_t o = {.header_timeout_ms = 500};
    fx_start(&o);
    client_t *s = cli_new();
    cli_send(s, "GET /stream?n=0&ms=50 HTTP/1.1\r\nHost: x\r\n\r\n");
    client_t *c = cli_new();
    const char *req = "GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: 0123456789\r\n\r\n";
    int64_t t0 = now_ms();
    size_t i = 0;
    while (now_ms() - t0 < 2000) {
        char one[2] = {req[i++ % strlen(req)], '\0'};
        if (send(c->fd, one, 1, MSG_NOSIGNAL) < 0)
            break;
        if (cli_fill(c, 200) != -1)
            break; /* an answer (or the close) */
    }
    int64_t elapsed = now_ms() - t0;
    assert_true(elapsed >= 450 && elapsed < 1500);
    assert_error(c, "408 Request Timeout", "invalid_request", "request timeout");
    cli_free(c);

    /* The stream kept going during all that, and keeps going. */
    size_t before = 0;
    char *head = cli_response(s, 100); /* close-delimited: not complete */
    assert_null(head);
    before = s->len;
    assert_true(before > 200); /* head + at least a few events in ~600 ms */
    usleep(200000);
    while (cli_fill(s, 0) > 0)
        ;
    assert_true(s->len > before);
    assert_non_null(strstr(s->buf, "data: 5\n\n"));
    cli_free(s);
    wait_for(&fx.close_cbs, 1, 2000);
    assert_int_equal(atomic_load(&fx.requests), 1);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    opts_t o = {.idle_timeout_ms = 300};
    fx_start(&o);
    client_t *c = cli_new();
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    free(r);
    int64_t t0 = now_ms();
    assert_true(cli_closed(c, 2000)); /* silently: no bytes */
    int64_t elapsed = now_ms() - t0;
    assert_true(elapsed >= 250 && elapsed < 1000);
    cli_free(c);

    /* A connection that never sends anything is idle too. */
    c = cli_new();
    t0 = now_ms();
    assert_true(cli_closed(c, 2000));
    assert_true(now_ms() - t0 >= 250);
    cli_free(c);
}

#define ECHO_GET_ORIGIN(o)                                                                         \
    "{\"method\":\"GET\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":0,"                        \
    "\"headers\":[\"Host: x\",\"Origin: " o "\"]}"

static void test_cors(void **state)
{
    (void)state;
    opts_t o = {.cors = "https://a.example, https://b.example:8443"};
    fx_start(&o);
    client_t *c = cli_new();
    cli_send(c, "OPTIONS /v1/messages HTTP/1.1\r\nHost: x\r\nOrigin: https://b.example:8443\r\n"
                "Access-Control-Request-Method: POST\r\n"
                "Access-Control-Request-Headers: content-type, idempotency-key\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\n"
                       "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                       "Access-Control-Allow-Headers: content-type, idempotency-key\r\n"
                       "Access-Control-Max-Age: 600\r\n"
                       "Access-Control-Allow-Origin: https://b.example:8443\r\n"
                       "Vary: Origin\r\n\r\n");
    /* Without Access-Control-Request-Headers: the fixed list. */
    cli_send(c, "OPTIONS /v1/sse HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n"
                "Access-Control-Request-Method: GET\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\n"
                       "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                       "Access-Control-Allow-Headers: Content-Type, Last-Event-ID, "
                       "Idempotency-Key, Herald-Event, If-None-Match\r\n"
                       "Access-Control-Max-Age: 600\r\n"
                       "Access-Control-Allow-Origin: https://a.example\r\n"
                       "Vary: Origin\r\n\r\n");
    /* A disallowed origin's preflight: 403, and the connection stays usable. */
    cli_send(c, "OPTIONS /v1/sse HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n"
                "Access-Control-Request-Method: GET\r\n\r\n");
    char *e = expect_len("403 Forbidden", JSON, "",
                         "{\"error\":{\"code\":\"forbidden\",\"message\":\"origin not allowed\"}}");
    assert_response(c, e);
    free(e);
    assert_int_equal(atomic_load(&fx.requests), 0);

    /* An allowed origin on a normal request. */
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n");
    e = expect_len("200 OK",
                   JSON "Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n"
                        "Access-Control-Expose-Headers: ETag, Retry-After\r\n",
                   "", ECHO_GET_ORIGIN("https://a.example"));
    assert_response(c, e);
    free(e);
    /* A disallowed one is still answered, without CORS headers. */
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n");
    e = expect_len("200 OK", JSON, "", ECHO_GET_ORIGIN("https://evil.example"));
    assert_response(c, e);
    free(e);
    cli_free(c);
    fx_stop(NULL);

    /* "*": any origin, answered with "*". */
    o.cors = "*";
    fx_start(&o);
    c = cli_new();
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\nOrigin: https://any.example\r\n\r\n");
    e = expect_len("200 OK",
                   JSON "Access-Control-Allow-Origin: *\r\nVary: Origin\r\n"
                        "Access-Control-Expose-Headers: ETag, Retry-After\r\n",
                   "", ECHO_GET_ORIGIN("https://any.example"));
    assert_response(c, e);
    free(e);
    cli_free(c);
}

static void test_stream_close_delimited(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /stream?n=3&ms=10 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(cli_read_all(c, 3000));
    char *r = cli_take(c, c->len);
    strip_date(r);
    assert_string_equal(r, "HTTP/1.1 200 OK\r\n"
                           "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                           "Connection: close\r\n\r\n"
                           "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    free(r);
    cli_free(c);
    /* Writes the socket took at once return 1 and have no done callback; the rest have one. */
    wait_for(&fx.dones, atomic_load(&fx.writes), 2000);
    assert_int_equal(atomic_load(&fx.done_errors), 0);
    assert_int_equal(atomic_load(&fx.close_cbs), 0); /* ended normally */
}

static void test_stream_chunked(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /stream?n=2&ms=10&chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_response(c, "HTTP/1.1 200 OK\r\n"
                       "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n"
                       "9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n");
    /* The connection is kept alive after the last chunk. */
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    assert_memory_equal(r, "HTTP/1.1 200 OK\r\n", 17);
    free(r);
    cli_free(c);

    /* HTTP/1.0 has no chunked coding: close-delimited instead. */
    c = cli_new();
    cli_send(c, "GET /stream?n=1&ms=10&chunked=1 HTTP/1.0\r\n\r\n");
    assert_true(cli_read_all(c, 3000));
    r = cli_take(c, c->len);
    strip_date(r);
    assert_string_equal(r, "HTTP/1.1 200 OK\r\n"
                           "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                           "Connection: close\r\n\r\ndata: 0\n\n");
    free(r);
    cli_free(c);
}

/* A close callback left set at the end of a stream: it runs when a close-delimited stream's
 * connection closes, and never after a chunked stream's connection moved on to a new request. */
static void test_close_cb_after_stream_end(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /stream?n=2&ms=10&keepcb=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(cli_read_all(c, 3000));
    assert_non_null(strstr(c->buf, "data: 1\n\n"));
    cli_free(c);
    wait_for(&fx.close_cbs, 1, 2000); /* and it freed the job: LSan checks */

    c = cli_new();
    cli_send(c, "GET /stream?n=2&ms=10&chunked=1&keepcb=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    free(r);
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    r = cli_response(c, 3000);
    assert_non_null(r);
    free(r);
    cli_free(c);
    usleep(100000);
    assert_int_equal(atomic_load(&fx.close_cbs), 1); /* ASan would catch a stale call */
}

static void test_disconnect_during_stream(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /stream?n=0&ms=5 HTTP/1.1\r\nHost: x\r\n\r\n");
    while (strstr(c->buf, "data: 3\n\n") == NULL)
        assert_true(cli_fill(c, 2000) > 0);
    cli_free(c);
    wait_for(&fx.close_cbs, 1, 2000);
    usleep(50000);
    assert_int_equal(atomic_load(&fx.close_cbs), 1);
    client_t *q = cli_new(); /* only this one is left */
    cli_send(q, "GET /conns HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_response(q, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    cli_free(q);
    /* Every write's done ran exactly once (ASan would see a double free, LSan a leak). */
    assert_int_equal(atomic_load(&fx.writes), atomic_load(&fx.dones));
}

static void test_http10(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /echo HTTP/1.0\r\n\r\n");
    char *e = expect_len("200 OK", JSON, "Connection: close\r\n",
                         "{\"method\":\"GET\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":0,"
                         "\"headers\":[]}");
    assert_response(c, e);
    free(e);
    assert_true(cli_closed(c, 2000));
    cli_free(c);

    /* Keep-alive when asked for (RFC 9112 §C.2.2). */
    c = cli_new();
    cli_send(c, "GET /empty HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n");
    cli_send(c, "GET /empty HTTP/1.0\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    assert_true(cli_closed(c, 2000));
    cli_free(c);

    /* HTTP/1.1 with Connection: close. */
    c = cli_new();
    cli_send(c, "GET /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    assert_true(cli_closed(c, 2000));
    cli_free(c);
}

static void test_head_and_absolute_form(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    const char *body = "{\"method\":\"HEAD\",\"path\":\"/echo\",\"query\":\"\",\"body_len\":0,"
                       "\"headers\":[\"Host: x\"]}";
    char want[512];
    snprintf(want, sizeof want, "HTTP/1.1 200 OK\r\n" JSON "Content-Length: %zu\r\n\r\n",
             strlen(body));
    /* No body follows: the next response comes right after the head. */
    cli_send(c, "GET http://x/echo?q=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    while (strstr(c->buf, "\"query\":\"q=1\"") == NULL)
        assert_true(cli_fill(c, 2000) > 0);
    char *he = strstr(c->buf, "\r\n\r\n");
    char *r = cli_take(c, (size_t)(he + 4 - c->buf));
    strip_date(r);
    assert_string_equal(r, want);
    free(r);
    r = cli_response(c, 3000);
    assert_non_null(r);
    assert_non_null(strstr(r, "\"method\":\"GET\",\"path\":\"/echo\",\"query\":\"q=1\""));
    free(r);
    cli_free(c);
}

/* hr_http_close from the handler, and server destroy with a request outstanding. */
static void test_close_and_destroy(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /close HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(cli_closed(c, 2000));
    cli_free(c);

    c = cli_new();
    cli_send(c, "GET /later?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_for(&fx.requests, 2, 2000);
    fx_stop(NULL); /* destroys the server: the outstanding request's close callback runs */
    assert_int_equal(atomic_load(&fx.close_cbs), 1);
    assert_true(cli_closed(c, 2000));
    cli_free(c);
}

static void test_listen_errors(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    hr_http_server_t *s = NULL, *s2 = NULL;
    hr_http_options_t o = {.listen = "nonsense", .handler = handler};
    char err[256];
    assert_int_equal(hr_http_server_new(&s, &loop, &o, err, sizeof err), HR_E_INVALID_REQUEST);
    assert_null(s);
    o.listen = "[::1]:0";
    int rc = hr_http_server_new(&s, &loop, &o, err, sizeof err);
    if (rc == 0) { /* IPv6 loopback may be absent in a container */
        assert_true(hr_http_server_port(s) > 0);
        hr_http_server_destroy(&s);
    }
    o.listen = "localhost:0";
    assert_int_equal(hr_http_server_new(&s, &loop, &o, err, sizeof err), 0);
    hr_http_server_destroy(&s);
    o.listen = "*:0";
    assert_int_equal(hr_http_server_new(&s, &loop, &o, err, sizeof err), 0);
    hr_http_server_destroy(&s);
    o.listen = "127.0.0.1:99999";
    assert_int_equal(hr_http_server_new(&s, &loop, &o, err, sizeof err), HR_E_INVALID_REQUEST);
    o.listen = "127.0.0.1:0";
    assert_int_equal(hr_http_server_new(&s, &loop, &o, err, sizeof err), 0);
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", hr_http_server_port(s));
    o.listen = addr;
    assert_int_equal(hr_http_server_new(&s2, &loop, &o, err, sizeof err), UV_EADDRINUSE);
    assert_null(s2);
    hr_http_server_destroy(&s);
    assert_null(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A head of several KiB: the request's memory grows, and every header survives. */
static void test_large_head(void **state)
{
    (void)state;
    fx_start(NULL); /* max_header_bytes 8192 */
    client_t *c = cli_new();
    char path[600], line[200];
    memset(path, 'p', sizeof path);
    memcpy(path, "/hstat?", 7);
    path[sizeof path - 1] = '\0';
    cli_send(c, "GET ");
    cli_send(c, path);
    cli_send(c, " HTTP/1.1\r\nHost: x\r\n");
    memset(line, 'v', sizeof line);
    for (int i = 0; i < 38; i++) {
        snprintf(line, sizeof line, "X-H%02d: %0150d\r\n", i, i);
        cli_send(c, line);
    }
    cli_send(c, "X-Last: the end \r\n\r\n");
    char want[128];
    snprintf(want, sizeof want, "headers=40 bytes=%d target=%zu last=the end", 1 + 38 * 150 + 7,
             strlen(path));
    char *e = expect_len("200 OK", "", "", want);
    assert_response(c, e);
    free(e);
    cli_free(c);
}

static void test_big_chunked_body(void **state)
{
    (void)state;
    opts_t o = {.max_body_bytes = 100000};
    fx_start(&o);
    client_t *c = cli_new();
    cli_send(c, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    char *chunk = malloc(20000 + 16);
    int hl = sprintf(chunk, "4e20\r\n");
    memset(chunk + hl, 'z', 20000);
    strcpy(chunk + hl + 20000, "\r\n");
    for (int i = 0; i < 3; i++)
        cli_send(c, chunk);
    free(chunk);
    cli_send(c, "0\r\n\r\n");
    char *r = cli_response(c, 3000);
    assert_non_null(r);
    assert_non_null(strstr(r, "\"body_len\":60000,\"body\":\"zzzz"));
    free(r);
    cli_free(c);
}

/* An Upgrade request the handler answers normally: the connection goes on in HTTP/1.1. */
static void test_upgrade_refused(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c,
             "GET /empty HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
             "GET /empty HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\n\r\n");
    cli_free(c);

    /* 101 through hr_http_stream_start: no framing or Connection header of our own. */
    c = cli_new();
    cli_send(c, "GET /upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n");
    assert_true(cli_read_all(c, 3000));
    char *r = cli_take(c, c->len);
    strip_date(r);
    assert_string_equal(r, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\n"
                           "Connection: Upgrade\r\n\r\ndata: 0\n\n");
    free(r);
    cli_free(c);
}

/* Responses the client does not read pile up no further than a bound: the next pipelined
 * request waits (RESPONDING) and is answered once the client reads. */
static void test_unread_responses(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    enum { N = 8, KB = 1024 };
    for (int i = 0; i < N; i++)
        cli_send(c, "GET /big?kb=1024 HTTP/1.1\r\nHost: x\r\n\r\n");
    usleep(300000);
    /* The server has not run all eight handlers yet: it waits for the client. */
    assert_true(atomic_load(&fx.requests) < N);
    for (int i = 0; i < N; i++) {
        char *r = cli_response(c, 5000);
        assert_non_null(r);
        char *body = strstr(r, "\r\n\r\n") + 4;
        assert_int_equal(strlen(body), KB * 1024);
        assert_memory_equal(r, "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n", 44);
        free(r);
    }
    assert_int_equal(atomic_load(&fx.requests), N);
    cli_free(c);
}

static void test_stop_accepting(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /drain HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_response(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    assert_true(cli_closed(c, 2000));
    cli_free(c);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), -1);
    assert_int_equal(errno, ECONNREFUSED);
    close(fd);
}

/* Bytes sent during a chunked stream are discarded, so the connection closes at its end instead
 * of pretending to keep alive. */
static void test_stream_input_discarded(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /stream?n=3&ms=40&chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n");
    usleep(20000);
    cli_send(c, "GET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(cli_read_all(c, 3000));
    char *r = cli_take(c, c->len);
    strip_date(r);
    assert_string_equal(r, "HTTP/1.1 200 OK\r\n"
                           "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n"
                           "9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n");
    free(r);
    cli_free(c);
    assert_int_equal(atomic_load(&fx.requests), 1);
}

/* A client that resets its connection during a stream: the writes fail or are cancelled, every
 * done callback runs once, the close callback once, nothing crashes. */
static void test_reset_during_stream(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = cli_new();
        cli_send(c[i], "GET /stream?n=0&ms=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    for (int i = 0; i < 3; i++) {
        while (strstr(c[i]->buf, "data: 2\n\n") == NULL)
            assert_true(cli_fill(c[i], 2000) > 0);
        struct linger l = {1, 0}; /* close() sends RST */
        setsockopt(c[i]->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        cli_free(c[i]);
    }
    wait_for(&fx.close_cbs, 3, 2000);
    usleep(50000);
    assert_int_equal(atomic_load(&fx.close_cbs), 3);
    assert_int_equal(atomic_load(&fx.writes), atomic_load(&fx.dones));
}

/* A stream whose client does not read: hr_http_pending_bytes grows with the unsent bytes, and
 * the transport's cut-off closes the connection, cancelling what is still queued. */
static void test_slow_consumer(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)fx.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
    cli_send(c, "GET /stream?n=0&ms=2&kb=256&max_pending=1048576 HTTP/1.1\r\nHost: x\r\n\r\n");
    wait_for(&fx.requests, 1, 2000);
    int64_t deadline = now_ms() + 5000;
    while (atomic_load(&fx.max_pending) <= 1048576 && now_ms() < deadline)
        usleep(10000);
    assert_true(atomic_load(&fx.max_pending) > 1048576);
    usleep(50000);
    /* What the kernel held, then the close. */
    static char sink[65536];
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    ssize_t r = 1;
    while (r > 0 && poll(&pf, 1, 5000) == 1)
        r = recv(c->fd, sink, sizeof sink, 0);
    assert_true(r <= 0);
    cli_free(c);
    assert_int_equal(atomic_load(&fx.writes), atomic_load(&fx.dones));
    assert_true(atomic_load(&fx.done_errors) > 0); /* UV_ECANCELED for the queued ones */
    assert_int_equal(atomic_load(&fx.close_cbs), 0);
}

static void test_header_injection_dropped(void **state)
{
    (void)state;
    fx_start(NULL);
    client_t *c = cli_new();
    cli_send(c, "GET /badheader HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_response(c, "HTTP/1.1 200 OK\r\nX-Ok: 1\r\nContent-Length: 2\r\n\r\nok");
    cli_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_simple_get, fx_stop),
        cmocka_unit_test_teardown(test_keep_alive, fx_stop),
        cmocka_unit_test_teardown(test_pipelined_in_order, fx_stop),
        cmocka_unit_test_teardown(test_pipelined_many, fx_stop),
        cmocka_unit_test_teardown(test_post_content_length, fx_stop),
        cmocka_unit_test_teardown(test_chunked_split, fx_stop),
        cmocka_unit_test_teardown(test_expect_continue, fx_stop),
        cmocka_unit_test_teardown(test_body_too_large, fx_stop),
        cmocka_unit_test_teardown(test_headers_too_large, fx_stop),
        cmocka_unit_test_teardown(test_bad_requests, fx_stop),
        cmocka_unit_test_teardown(test_slow_sender_timeout, fx_stop),
        cmocka_unit_test_teardown(test_idle_timeout, fx_stop),
        cmocka_unit_test_teardown(test_cors, fx_stop),
        cmocka_unit_test_teardown(test_stream_close_delimited, fx_stop),
        cmocka_unit_test_teardown(test_stream_chunked, fx_stop),
        cmocka_unit_test_teardown(test_close_cb_after_stream_end, fx_stop),
        cmocka_unit_test_teardown(test_disconnect_during_stream, fx_stop),
        cmocka_unit_test_teardown(test_http10, fx_stop),
        cmocka_unit_test_teardown(test_head_and_absolute_form, fx_stop),
        cmocka_unit_test_teardown(test_close_and_destroy, fx_stop),
        cmocka_unit_test_teardown(test_large_head, fx_stop),
        cmocka_unit_test_teardown(test_big_chunked_body, fx_stop),
        cmocka_unit_test_teardown(test_upgrade_refused, fx_stop),
        cmocka_unit_test_teardown(test_unread_responses, fx_stop),
        cmocka_unit_test_teardown(test_stop_accepting, fx_stop),
        cmocka_unit_test_teardown(test_stream_input_discarded, fx_stop),
        cmocka_unit_test_teardown(test_reset_during_stream, fx_stop),
        cmocka_unit_test_teardown(test_slow_consumer, fx_stop),
        cmocka_unit_test_teardown(test_header_injection_dropped, fx_stop),
        cmocka_unit_test(test_listen_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
