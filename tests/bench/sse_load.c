/*
 * herald-sse-load — SSE fan-out load generator for tests/bench/edge.sh (Herald and Nchan alike).
 *
 *   herald-sse-load --port PORT --sub-path TARGET --conns N [options]
 *
 * Opens N Server-Sent Events streams (GET TARGET, Accept: text/event-stream) to HOST:PORT, at
 * most --connect-burst connects in flight, round-robin over the --sources addresses. Once every
 * stream has answered 200 and --settle-ms have passed, it publishes RATE messages/s for SECONDS
 * over one keep-alive HTTP connection (POST --pub-path; requests are pipelined when a reply is
 * slower than the interval), each message's body being "SEQ SENT_NS": a sequence number from 1
 * and the CLOCK_MONOTONIC time just before the request was written. Every subscriber parses its
 * stream (WHATWG HTML §9.2.6: lines, comments, data: fields, events ended by a blank line), takes
 * SEQ and SENT_NS from the event's first data: line, and records now - SENT_NS as the
 * publish-to-delivery latency. It then checks that every subscriber received every message
 * exactly once and in order, and reports failures by kind.
 *
 * Without --pub-path it is the idle mode: after connecting it prints "connected n=N ..." and
 * holds the streams --hold seconds (or until SIGTERM/SIGINT), reading whatever arrives.
 *
 * --cpu-pids P,Q,...: server processes whose utime+stime (/proc/PID/stat; all threads of each)
 * are sampled when publishing starts and again once every subscriber has every message (or the
 * --drain-ms deadline passed), giving the servers' CPU time per delivery.
 *
 * Output: "connected n=N of=N seconds=S failed=F", then one "sse ..." line of key=value pairs:
 * deliveries_per_s (deliveries / time from the first publish to the last delivery); p50_ms,
 * p90_ms, p99_ms, max_ms (publish to delivery); pub_p50_ms, pub_p99_ms, pub_max_ms (publish
 * request to its reply); server_cpu_s, cpu_us_per_delivery, loadgen_cpu_s; and the check:
 * failed_subscribers, skipped (messages jumped over, in `gaps` places), late (not received by
 * the deadline), dups (a seq at or below the previous one), dropped (streams closed). Then up to
 * 10 "failure ..." lines. Exit 0 when every subscriber got every message exactly once and in
 * order (idle mode: every stream connected and none dropped), 1 otherwise, 2 on bad usage.
 * Every phase is bounded in time: connecting by --connect-timeout-ms, publishing by 3 x SECONDS,
 * draining by --drain-ms, idle mode by --hold.
 *
 * The scaffolding shared with herald-poll-load and herald-ws-load (options, epoll loop, connects,
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

/* Bytes of a line kept; longer lines are truncated (only data: lines matter; they are short). */
#define LOAD_LINE_MAX 128
#define LOAD_HEAD_MAX 4096 /* response head of a stream */

enum sub_state {
    SUB_IDLE,       /* not yet connecting */
    SUB_CONNECTING, /* non-blocking connect in progress */
    SUB_HEAD,       /* request sent, reading the response head */
    SUB_STREAM,     /* 200 received, reading events */
    SUB_CLOSED,     /* dropped or failed; `why` says how */
};

typedef struct {
    int fd;
    uint8_t state;  /* enum sub_state */
    bool ev_data;   /* the event being parsed has had a data: line */
    bool line_long; /* the current line went past LOAD_LINE_MAX */
    uint16_t head_len;
    uint16_t line_len;
    load_seq_t seq;
    uint64_t ev_seq;
    int64_t ev_sent;
    const char *why; /* for SUB_CLOSED */
    char *head;      /* response head while in SUB_HEAD; freed afterwards */
    char line[LOAD_LINE_MAX];
} sub_t;

static sub_t *subs;

/* ---- subscribers -------------------------------------------------------------------------- */

static void sub_close(sub_t *s, const char *why)
{
    if (s->state == SUB_CLOSED)
        return;
    if (s->state == SUB_CONNECTING || s->state == SUB_HEAD)
        load_in_flight--;
    if (s->state == SUB_STREAM)
        load_ready--;
    s->state = SUB_CLOSED;
    s->why = why;
    load_closed++;
    free(s->head);
    s->head = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

static void sub_start(long i)
{
    sub_t *s = &subs[i];
    int fd = load_tcp_socket(i, false);
    s->fd = fd < 0 ? -1 : fd;
    s->state = SUB_CONNECTING;
    load_seq_init(&s->seq);
    load_in_flight++;
    if (fd < 0) {
        sub_close(s, "connect failed");
        return;
    }
    load_ep_add(fd, EPOLLOUT, (uint64_t)i);
}

static void sub_event(sub_t *s, int64_t t)
{
    if (!s->ev_data)
        return;
    s->ev_data = false;
    load_got(&s->seq, s->ev_seq, s->ev_sent, t);
}

static void sub_line(sub_t *s, const char *line, size_t len, int64_t t)
{
    if (len == 0) {
        sub_event(s, t);
        return;
    }
    if (line[0] == ':' || len < 5 || memcmp(line, "data:", 5) != 0 || s->ev_data)
        return; /* comments, id:, event:, retry:, and later data: lines of one event */
    const char *p = line + 5, *end = line + len;
    if (p < end && *p == ' ')
        p++;
    if (!load_parse_pair(p, end, &s->ev_seq, &s->ev_sent))
        s->ev_seq = 0, s->ev_sent = 0;
    s->ev_data = true;
}

static void sub_bytes(sub_t *s, const char *data, size_t len, int64_t t)
{
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        size_t n = (size_t)(stop - p);
        if (nl != NULL && s->line_len == 0 && !s->line_long) {
            /* Whole line in the buffer: parse in place. */
            size_t l = n;
            if (l > 0 && p[l - 1] == '\r')
                l--;
            sub_line(s, p, l, t);
        } else {
            size_t room = LOAD_LINE_MAX - s->line_len;
            if (n > room) {
                n = room;
                s->line_long = true;
            }
            memcpy(s->line + s->line_len, p, n);
            s->line_len += (uint16_t)n;
            if (nl != NULL) {
                size_t l = s->line_len;
                if (l > 0 && s->line[l - 1] == '\r')
                    l--;
                sub_line(s, s->line, l, t);
                s->line_len = 0;
                s->line_long = false;
            }
        }
        p = nl ? nl + 1 : end;
    }
}

static void sub_head(sub_t *s, const char *data, size_t len, int64_t t)
{
    if (s->head == NULL)
        s->head = malloc(LOAD_HEAD_MAX + 1);
    size_t room = LOAD_HEAD_MAX - s->head_len;
    size_t n = len < room ? len : room;
    memcpy(s->head + s->head_len, data, n);
    s->head_len += (uint16_t)n;
    s->head[s->head_len] = '\0';
    char *end = strstr(s->head, "\r\n\r\n");
    if (end == NULL) {
        if (s->head_len == LOAD_HEAD_MAX)
            sub_close(s, "response head too large");
        return;
    }
    if (load_http_status(s->head) != 200) {
        sub_close(s, "status not 200");
        return;
    }
    char v[64];
    if (load_header_value(s->head, end, "transfer-encoding:", v, sizeof v)) {
        sub_close(s, "chunked streams are not supported");
        return;
    }
    size_t head_bytes = (size_t)(end + 4 - s->head);
    size_t rest_off = head_bytes - (s->head_len - n); /* offset in `data` of the body */
    free(s->head);
    s->head = NULL;
    s->state = SUB_STREAM;
    load_in_flight--;
    load_ready++;
    if (rest_off < len)
        sub_bytes(s, data + rest_off, len - rest_off, t);
}

static void sub_ready(long i, uint32_t events, int64_t t)
{
    sub_t *s = &subs[i];
    if (s->state == SUB_CLOSED)
        return;
    if (s->state == SUB_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            sub_close(s, "connect failed");
            return;
        }
        char req[1024];
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                         "Cache-Control: no-cache\r\n\r\n",
                         lo.sub_path, lo.host, lo.port);
        if (write(s->fd, req, (size_t)n) != n) {
            sub_close(s, "request write failed");
            return;
        }
        s->state = SUB_HEAD;
        load_ep_mod(s->fd, EPOLLIN, (uint64_t)i);
        return;
    }
    ssize_t n = read(s->fd, load_rbuf, sizeof load_rbuf);
    if (n == 0) {
        sub_close(s, "closed by the server");
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        sub_close(s, "read error");
        return;
    }
    if (s->state == SUB_HEAD)
        sub_head(s, load_rbuf, (size_t)n, t);
    else
        sub_bytes(s, load_rbuf, (size_t)n, t);
}

/* ---- main --------------------------------------------------------------------------------- */

static bool sse_option(const char *a, const char *v)
{
    if (strcmp(a, "--pad") != 0)
        return false;
    lo.body_pad = atoi(v) > 200 ? 200 : atoi(v);
    return true;
}

static void usage(void)
{
    fprintf(stderr, "usage: herald-sse-load --port PORT --sub-path TARGET [options]\n"
                    "  --pad BYTES             extra bytes in each message body (0)\n");
    load_usage_common("idle");
    exit(2);
}

static void print_failures(bool connected_only)
{
    for (long i = 0, shown = 0; i < lo.conns && shown < LOAD_MAX_FAILS; i++) {
        sub_t *s = &subs[i];
        bool open = s->state == SUB_STREAM;
        if (connected_only) {
            if (!open)
                printf("failure subscriber=%ld %s\n", i,
                       s->state == SUB_CLOSED ? s->why : "not connected in time"),
                    shown++;
            continue;
        }
        if (load_seq_ok(&s->seq, open))
            continue;
        printf("failure subscriber=%ld received=%llu of %llu skipped=%llu in %llu gaps, "
               "late=%llu, dups_or_reordered=%llu, stream %s\n",
               i, (unsigned long long)s->seq.received, (unsigned long long)load_published,
               (unsigned long long)s->seq.skipped, (unsigned long long)s->seq.gaps,
               (unsigned long long)load_seq_late(&s->seq), (unsigned long long)s->seq.dups,
               open ? "open" : s->why);
        shown++;
    }
}

int main(int argc, char **argv)
{
    lo.prog = "herald-sse-load";
    lo.clients = "streams";
    lo.rate = 50;
    load_parse_args(argc, argv, sse_option, usage);
    if (lo.sub_path == NULL)
        usage();
    load_init();
    subs = calloc((size_t)lo.conns, sizeof *subs);
    if (subs == NULL)
        load_die("setup");
    load_on_conn = sub_ready;

    /* Phase 1: open every stream. */
    load_connect_all(sub_start);

    if (lo.pub_path == NULL) {
        /* Idle mode: hold the streams. */
        double held = load_hold();
        printf("idle streams=%ld held_seconds=%.1f dropped=%ld\n", load_ready, held,
               lo.conns - load_ready);
        print_failures(true);
        return load_ready == lo.conns ? 0 : 1;
    }
    if (load_ready < lo.conns) {
        print_failures(true);
        return 1;
    }

    /* Phases 2-4: settle, publish at the rate, drain. */
    load_window_t w;
    load_publish_and_drain(&w);

    load_verdict_t v = {0};
    for (long i = 0; i < lo.conns; i++)
        load_verdict_add(&v, &subs[i].seq, subs[i].state == SUB_STREAM);
    printf("sse subscribers=%ld rate=%ld seconds=%.1f", lo.conns, lo.rate, lo.seconds);
    load_print_window(&w);
    load_print_verdict(&v, "failed_subscribers");
    bool pub_ok = load_print_pub_failures();
    print_failures(false);
    return v.failed == 0 && pub_ok ? 0 : 1;
}
