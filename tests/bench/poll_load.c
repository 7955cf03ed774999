/*
 * herald-poll-load — long-poll and HTTP-streaming load generator for tests/bench/edge_poll.sh
 * (Herald and Nchan alike; plain C, epoll).
 *
 *   herald-poll-load --mode poll|stream --port PORT --sub-path TARGET --conns N [options]
 *
 * --mode poll: N long-pollers, each on its own keep-alive connection (round-robin over the
 * --sources addresses, at most --connect-burst connects in flight). Each sends GET TARGET and,
 * as soon as an answer is complete, the next one, carrying the validators of the last answer
 * that had any: If-None-Match with its ETag, If-Modified-Since with its Last-Modified. That is
 * Herald's protocol (ETag W/"CURSOR"; If-None-Match accepted as the cursor; 304 when nothing is
 * new) and Nchan's long-poll protocol (Last-Modified + Etag of the message, sent back as
 * If-Modified-Since + If-None-Match to get the next one) alike. A connection the server closes
 * is reopened and the poll repeated with the same validators (counted as reconnects).
 *
 * --mode stream: N HTTP streams (GET TARGET with "TE: chunked" — Nchan's http-chunked
 * subscriber needs it — and Accept: application/x-ndjson), chunked or raw bodies, read as lines.
 *
 * Messages. Once every poll is sent (or stream open) and --settle-ms have passed, it publishes
 * RATE messages/s for SECONDS over one keep-alive connection (POST --pub-path, pipelined when a
 * reply is slower than the interval); each body is "SEQ SENT_NS\n", SENT_NS the CLOCK_MONOTONIC
 * time just before the request was written. A message is found in an answer or stream line as
 * the JSON string after "data":" (Herald: {"messages":[{...,"data":"SEQ SENT\n",...}]} and
 * NDJSON lines) or, without one, as a line "SEQ SENT" (Nchan: the raw message). Latency is the
 * time the answer was complete (poll) or the line read (stream) minus SENT_NS. Afterwards it
 * checks that every client received every message exactly once and in order.
 *
 * Without --pub-path: hold mode. After every poll is sent (stream: opened) it prints
 * "connected n=N ..." and holds them --hold seconds or until SIGTERM/SIGINT.
 *
 * --cpu-pids P,Q,...: utime+stime of those processes (all threads) from the first publish until
 * every client has every message (or --drain-ms passed): server CPU per delivery.
 *
 * Output: "connected ...", then one "poll ..." (or "stream ...") line of key=value pairs:
 * deliveries, deliveries_per_s, p50/p90/p99/max_ms, pub_p50/p99_ms, server_cpu_s,
 * cpu_us_per_delivery, loadgen_cpu_s, requests (poll answers), answers_200, answers_304,
 * answers_other, msgs_per_answer, reconnects, failed_clients, skipped, gaps, late, dups,
 * dropped; then up to 10 "failure ..." lines. Exit 0 when every client got every message once
 * and in order, 1 otherwise, 2 on bad usage. Every phase is bounded in time.
 *
 * The scaffolding shared with herald-sse-load and herald-ws-load (options, epoll loop, connects,
 * delivery check, latency samples, the paced HTTP publisher, CPU sampling) is load_common.c.
 */
#define _GNU_SOURCE
#include "load_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <unistd.h>

#define LOAD_LINE_MAX 512
#define LOAD_VAL_MAX  160 /* ETag / Last-Modified kept */

enum { MODE_POLL, MODE_STREAM };

enum cl_state {
    CL_IDLE,
    CL_CONNECTING, /* non-blocking connect in progress */
    CL_WAITING,    /* poll: request sent, answer not complete; stream: head not complete */
    CL_STREAM,     /* stream: head read, body lines flowing */
    CL_CLOSED,
};

enum chunk_state { CH_SIZE, CH_DATA, CH_DATA_END, CH_RAW };

typedef struct {
    int fd;
    uint8_t state;
    uint8_t chunk;   /* enum chunk_state (stream mode) */
    bool ever_ready; /* the first request went out (poll) / the stream opened */
    bool line_long;
    uint16_t line_len;
    uint64_t chunk_left;
    load_seq_t seq;
    uint32_t reconnects;
    const char *why;
    char *buf; /* poll: the answer so far; stream: the head so far */
    size_t len, cap;
    char etag[LOAD_VAL_MAX];
    char lastmod[LOAD_VAL_MAX];
    char line[LOAD_LINE_MAX];
} cl_t;

static int mode = MODE_POLL;
static cl_t *cls;
static uint64_t answers_200, answers_304, answers_other, reconnects_total, msgs_in_answers;
static char first_other[200];

/* ---- HTTP helpers --------------------------------------------------------------------------- */

/* Decode a complete chunked body in place; returns its length, or -1 when incomplete. */
static long dechunk(char *body, size_t len)
{
    size_t r = 0, w = 0;
    for (;;) {
        char *nl = memchr(body + r, '\n', len - r);
        if (nl == NULL)
            return -1;
        unsigned long n = strtoul(body + r, NULL, 16);
        r = (size_t)(nl - body) + 1;
        if (n == 0)
            return len - r >= 2 ? (long)w : -1; /* the last chunk's CRLF (no trailers) */
        if (r + n + 2 > len)
            return -1;
        memmove(body + w, body + r, n);
        w += n;
        r += n + 2;
    }
}

static void buf_append(cl_t *c, const char *d, size_t n)
{
    if (c->len + n + 1 > c->cap) {
        c->cap = (c->len + n + 1) * 2;
        c->buf = realloc(c->buf, c->cap);
        if (c->buf == NULL)
            load_die("realloc");
    }
    memcpy(c->buf + c->len, d, n);
    c->len += n;
    c->buf[c->len] = '\0';
}

/* ---- clients ------------------------------------------------------------------------------ */

static void cl_close(cl_t *c, const char *why)
{
    if (c->state == CL_CLOSED)
        return;
    if (!c->ever_ready)
        load_in_flight--;
    c->state = CL_CLOSED;
    c->why = why;
    load_closed++;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void cl_connect(long i)
{
    cl_t *c = &cls[i];
    int fd = load_tcp_socket(i, mode == MODE_POLL);
    c->fd = fd < 0 ? -1 : fd;
    c->state = CL_CONNECTING;
    if (fd < 0) {
        c->state = CL_WAITING; /* so that cl_close counts it right */
        cl_close(c, "connect failed");
        return;
    }
    load_ep_add(fd, EPOLLOUT, (uint64_t)i);
}

static void cl_start(long i)
{
    load_seq_init(&cls[i].seq);
    load_in_flight++;
    cl_connect(i);
}

static bool cl_send(long i)
{
    cl_t *c = &cls[i];
    char req[1024];
    int n;
    if (mode == MODE_POLL) {
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: */*\r\n",
                     lo.sub_path, lo.host, lo.port);
        if (c->etag[0])
            n += snprintf(req + n, sizeof req - (size_t)n, "If-None-Match: %s\r\n", c->etag);
        if (c->lastmod[0])
            n += snprintf(req + n, sizeof req - (size_t)n, "If-Modified-Since: %s\r\n", c->lastmod);
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    } else {
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/x-ndjson, */*\r\n"
                     "TE: chunked\r\n\r\n",
                     lo.sub_path, lo.host, lo.port);
    }
    if (write(c->fd, req, (size_t)n) != n) {
        cl_close(c, "request write failed");
        return false;
    }
    c->state = CL_WAITING;
    c->len = 0;
    if (mode == MODE_POLL && !c->ever_ready) {
        c->ever_ready = true;
        load_in_flight--;
        load_ready++;
    }
    return true;
}

/* The server closed a poll connection between answers: reopen, repeat the poll. */
static void cl_reopen(long i)
{
    cl_t *c = &cls[i];
    close(c->fd);
    c->reconnects++;
    reconnects_total++;
    c->len = 0;
    cl_connect(i);
}

/* Poll mode: is the answer in c->buf complete? Then handle it and send the next poll. */
static void poll_answer(long i, int64_t t)
{
    cl_t *c = &cls[i];
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL)
        return;
    char *body = end + 4;
    size_t have = c->len - (size_t)(body - c->buf);
    char v[LOAD_VAL_MAX];
    long blen;
    bool close_after =
        load_header_value(c->buf, end, "connection:", v, sizeof v) && strcasecmp(v, "close") == 0;
    int status = load_http_status(c->buf);
    if (load_header_value(c->buf, end, "transfer-encoding:", v, sizeof v)) {
        if ((blen = dechunk(body, have)) < 0)
            return;
    } else if (load_header_value(c->buf, end, "content-length:", v, sizeof v)) {
        blen = atol(v);
        if ((size_t)blen > have)
            return;
    } else if (status == 304 || status == 204) {
        blen = 0;
    } else {
        return; /* read to close: handled when the server closes */
    }
    if (status == 200) {
        answers_200++;
        msgs_in_answers += load_scan_messages(&c->seq, body, (size_t)blen, t);
    } else if (status == 304) {
        answers_304++;
    } else {
        if (answers_other++ == 0)
            snprintf(first_other, sizeof first_other, "status %d body %.*s", status,
                     (int)(blen < 100 ? blen : 100), body);
    }
    if (status == 200 || status == 304) {
        char tag[LOAD_VAL_MAX], lm[LOAD_VAL_MAX];
        if (load_header_value(c->buf, end, "etag:", tag, sizeof tag))
            memcpy(c->etag, tag, sizeof tag);
        if (load_header_value(c->buf, end, "last-modified:", lm, sizeof lm))
            memcpy(c->lastmod, lm, sizeof lm);
    }
    c->len = 0;
    if (close_after) {
        cl_reopen(i);
        return;
    }
    cl_send(i); /* after any answer, errors included: the check counts what went missing */
}

static void stream_line(cl_t *c, const char *p, size_t n, int64_t t)
{
    if (n > 0)
        load_scan_messages(&c->seq, p, n, t);
}

static void stream_text(cl_t *c, const char *p, size_t n, int64_t t)
{
    const char *end = p + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        size_t k = (size_t)(stop - p);
        if (nl && c->line_len == 0 && !c->line_long) {
            stream_line(c, p, k, t);
        } else {
            size_t room = LOAD_LINE_MAX - c->line_len;
            if (k > room)
                k = room, c->line_long = true;
            memcpy(c->line + c->line_len, p, k);
            c->line_len += (uint16_t)k;
            if (nl) {
                stream_line(c, c->line, c->line_len, t);
                c->line_len = 0;
                c->line_long = false;
            }
        }
        p = nl ? nl + 1 : end;
    }
}

/* Stream body bytes: undo chunked framing (when the head said so), then lines. */
static void stream_bytes(cl_t *c, const char *p, size_t n, int64_t t)
{
    const char *end = p + n;
    while (p < end) {
        switch (c->chunk) {
        case CH_RAW:
            stream_text(c, p, (size_t)(end - p), t);
            return;
        case CH_SIZE: {
            /* size line, kept in c->buf until its newline */
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t k = (size_t)((nl ? nl + 1 : end) - p);
            buf_append(c, p, k);
            p += k;
            if (nl) {
                c->chunk_left = strtoull(c->buf, NULL, 16);
                c->len = 0;
                c->chunk = c->chunk_left ? CH_DATA : CH_DATA_END;
            }
            break;
        }
        case CH_DATA: {
            size_t k = (size_t)(end - p) < c->chunk_left ? (size_t)(end - p) : c->chunk_left;
            stream_text(c, p, k, t);
            p += k;
            c->chunk_left -= k;
            if (c->chunk_left == 0)
                c->chunk = CH_DATA_END;
            break;
        }
        case CH_DATA_END: /* the CRLF after the data */
            if (*p++ == '\n')
                c->chunk = CH_SIZE;
            break;
        }
    }
}

static void stream_head(long i, int64_t t)
{
    cl_t *c = &cls[i];
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->len > 16384)
            cl_close(c, "response head too large");
        return;
    }
    int status = load_http_status(c->buf);
    if (status != 200) {
        cl_close(c, "status not 200");
        return;
    }
    char v[LOAD_VAL_MAX];
    c->chunk = load_header_value(c->buf, end, "transfer-encoding:", v, sizeof v) &&
                       strcasestr(v, "chunked")
                   ? CH_SIZE
                   : CH_RAW;
    size_t off = (size_t)(end + 4 - c->buf), total = c->len;
    char *rest = c->buf;
    c->buf = NULL;
    c->len = c->cap = 0;
    c->state = CL_STREAM;
    c->ever_ready = true;
    load_in_flight--;
    load_ready++;
    if (off < total)
        stream_bytes(c, rest + off, total - off, t);
    free(rest);
}

static void cl_ready(long i, uint32_t events, int64_t t)
{
    cl_t *c = &cls[i];
    if (c->state == CL_CLOSED)
        return;
    if (c->state == CL_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            cl_close(c, "connect failed");
            return;
        }
        load_ep_mod(c->fd, EPOLLIN, (uint64_t)i);
        cl_send(i);
        return;
    }
    ssize_t n = read(c->fd, load_rbuf, sizeof load_rbuf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        if (mode == MODE_POLL && c->state == CL_WAITING && c->ever_ready && c->len == 0 &&
            c->reconnects < 100)
            cl_reopen(i);
        else
            cl_close(c, n == 0 ? "closed by the server" : "read error");
        return;
    }
    if (n < 0)
        return;
    if (c->state == CL_STREAM) {
        stream_bytes(c, load_rbuf, (size_t)n, t);
        return;
    }
    buf_append(c, load_rbuf, (size_t)n);
    if (mode == MODE_POLL)
        poll_answer(i, t);
    else
        stream_head(i, t);
}

/* ---- main --------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: herald-poll-load --mode poll|stream --port PORT --sub-path TARGET "
                    "[options]\n");
    load_usage_common("hold");
    exit(2);
}

static bool poll_option(const char *a, const char *v)
{
    if (strcmp(a, "--mode") != 0)
        return false;
    if (strcmp(v, "stream") == 0)
        mode = MODE_STREAM;
    else if (strcmp(v, "poll") == 0)
        mode = MODE_POLL;
    else
        usage();
    return true;
}

int main(int argc, char **argv)
{
    lo.prog = "herald-poll-load";
    lo.clients = "clients";
    lo.rate = 500;
    lo.body_nl = true;
    load_parse_args(argc, argv, poll_option, usage);
    if (lo.sub_path == NULL)
        usage();
    const char *kind = mode == MODE_POLL ? "poll" : "stream";
    load_init();
    cls = calloc((size_t)lo.conns, sizeof *cls);
    if (cls == NULL)
        load_die("setup");
    load_on_conn = cl_ready;

    /* Phase 1: every poll sent / every stream open. */
    load_connect_all(cl_start);

    if (lo.pub_path == NULL) {
        double held = load_hold();
        long open = 0;
        for (long i = 0; i < lo.conns; i++)
            open += cls[i].state != CL_CLOSED;
        printf("hold %s=%ld held_seconds=%.1f dropped=%ld answered=%llu reconnects=%llu\n", kind,
               open, held, lo.conns - open,
               (unsigned long long)(answers_200 + answers_304 + answers_other),
               (unsigned long long)reconnects_total);
        for (long i = 0, shown = 0; i < lo.conns && shown < LOAD_MAX_FAILS; i++)
            if (cls[i].state == CL_CLOSED)
                printf("failure client=%ld %s\n", i, cls[i].why), shown++;
        return open == lo.conns ? 0 : 1;
    }
    if (load_ready < lo.conns) {
        for (long i = 0, shown = 0; i < lo.conns && shown < LOAD_MAX_FAILS; i++)
            if (!cls[i].ever_ready || cls[i].state == CL_CLOSED)
                printf("failure client=%ld %s\n", i,
                       cls[i].state == CL_CLOSED ? cls[i].why : "not ready in time"),
                    shown++;
        return 1;
    }

    /* Phases 2-4: settle (the server registers every poll/stream), publish at the rate, drain. */
    uint64_t req0 = answers_200 + answers_304 + answers_other, msgs0 = msgs_in_answers;
    uint64_t a200_0 = answers_200;
    load_window_t w;
    load_publish_and_drain(&w);

    load_verdict_t v = {0};
    for (long i = 0; i < lo.conns; i++)
        load_verdict_add(&v, &cls[i].seq, cls[i].state != CL_CLOSED);
    uint64_t reqs = answers_200 + answers_304 + answers_other - req0;
    uint64_t a200 = answers_200 - a200_0;
    printf("%s clients=%ld rate=%ld seconds=%.1f", kind, lo.conns, lo.rate, lo.seconds);
    load_print_window(&w);
    printf(" answers=%llu answers_per_s=%.0f answers_200=%llu answers_304=%llu "
           "answers_other=%llu msgs_per_answer=%.2f reconnects=%llu",
           (unsigned long long)reqs, w.secs > 0 ? (double)reqs / w.secs : 0,
           (unsigned long long)a200, (unsigned long long)answers_304,
           (unsigned long long)answers_other,
           a200 ? (double)(msgs_in_answers - msgs0) / (double)a200 : 0,
           (unsigned long long)reconnects_total);
    load_print_verdict(&v, "failed_clients");
    if (answers_other > 0)
        printf("failure answers_other=%llu first: %s\n", (unsigned long long)answers_other,
               first_other);
    bool pub_ok = load_print_pub_failures();
    for (long i = 0, shown = 0; i < lo.conns && shown < LOAD_MAX_FAILS; i++) {
        cl_t *c = &cls[i];
        bool open = c->state != CL_CLOSED;
        if (load_seq_ok(&c->seq, open))
            continue;
        printf("failure client=%ld received=%llu of %llu skipped=%llu in %llu gaps, late=%llu, "
               "dups_or_reordered=%llu, reconnects=%u, %s\n",
               i, (unsigned long long)c->seq.received, (unsigned long long)load_published,
               (unsigned long long)c->seq.skipped, (unsigned long long)c->seq.gaps,
               (unsigned long long)load_seq_late(&c->seq), (unsigned long long)c->seq.dups,
               c->reconnects, open ? "open" : c->why);
        shown++;
    }
    return v.failed == 0 && pub_ok ? 0 : 1;
}
