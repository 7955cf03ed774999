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
 * --expect N (without --pub-path; tests/bench/cluster.sh's backfill): after connecting, wait
 * (at most --drain-ms) until every stream has received N events, whatever their data (someone
 * else publishes them); prints "expect ..." with the CLOCK_MONOTONIC times of the first and
 * the last event, events/s between them, and herald.reset events seen. Exit 0 when every stream
 * got exactly N events and no reset.
 *
 * --reconnect 1 (tests/bench/cluster.sh's edge kill): a stream that ends or fails is opened
 * again at once (then every 100 ms, at most 100 times) with Last-Event-ID set to the last id
 * dispatched on it, as an EventSource does, keeping its delivery check, so the final check
 * covers the resumption (nothing lost, nothing repeated). Prints "resume ..." after the "sse"
 * line: streams dropped, reconnects, and from the first drop the time until every stream was
 * open again (all_back_ms) and until every stream was open and had every message whose publish
 * had been acknowledged (complete_ms; -1: never). --pub-port sends the publisher elsewhere (to
 * an edge that stays up).
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
#define LOAD_LINE_MAX 1024
#define LOAD_HEAD_MAX 4096 /* response head of a stream */

enum sub_state {
    SUB_IDLE,       /* not yet connecting */
    SUB_CONNECTING, /* non-blocking connect in progress */
    SUB_HEAD,       /* request sent, reading the response head */
    SUB_STREAM,     /* 200 received, reading events */
    SUB_CLOSED,     /* dropped or failed; `why` says how */
    SUB_WAIT,       /* --reconnect: dropped, to be opened again at retry_at */
};

#define LAST_ID_MAX 1024
static bool reconnect;
static char (*last_id)[LAST_ID_MAX]; /* --reconnect: per stream, the last dispatched id */
static long expect;                  /* --expect N */
static uint64_t drops, reconnects, expect_complete, resets;
static int64_t first_drop_ns, all_back_ns, resumed_ns, first_event_ns, last_event_ns;

typedef struct {
    int fd;
    uint8_t state;  /* enum sub_state */
    bool ev_data;   /* the event being parsed has had a data: line */
    bool line_long; /* the current line went past LOAD_LINE_MAX */
    uint16_t head_len;
    uint16_t line_len;
    uint8_t attempts; /* --reconnect: reopenings since the stream was last open */
    bool id_long;     /* the pending id line was longer than LAST_ID_MAX */
    int64_t retry_at;
    uint64_t events; /* --expect: events received */
    char pending_id[LAST_ID_MAX];
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

/* --reconnect: give up the stream's connection and open it again later, keeping its state. */
static bool sub_drop(sub_t *s, const char *why, int64_t t)
{
    if (!reconnect || s->state == SUB_CLOSED || s->state == SUB_WAIT || s->attempts >= 100)
        return false;
    if (s->state == SUB_CONNECTING || s->state == SUB_HEAD)
        load_in_flight--;
    if (s->state == SUB_STREAM) {
        load_ready--;
        drops++;
        if (first_drop_ns == 0)
            first_drop_ns = t;
    }
    (void)why;
    free(s->head);
    s->head = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->state = SUB_WAIT;
    s->retry_at = t + (s->attempts == 0 ? 0 : 100000000LL);
    s->attempts++;
    return true;
}

static void sub_connect(long i)
{
    sub_t *s = &subs[i];
    int fd = load_tcp_socket(i, false);
    s->fd = fd < 0 ? -1 : fd;
    s->state = SUB_CONNECTING;
    s->head_len = 0;
    s->line_len = 0;
    s->line_long = false;
    s->ev_data = false;
    load_in_flight++;
    if (fd < 0) {
        sub_close(s, "connect failed");
        return;
    }
    load_ep_add(fd, EPOLLOUT, (uint64_t)i);
}

static void sub_start(long i)
{
    load_seq_init(&subs[i].seq);
    sub_connect(i);
}

static void sub_event(sub_t *s, int64_t t)
{
    if (last_id != NULL && s->pending_id[0] != '\0') {
        memcpy(last_id[s - subs], s->pending_id, LAST_ID_MAX);
        s->pending_id[0] = '\0';
    }
    if (!s->ev_data)
        return;
    s->ev_data = false;
    if (expect > 0) {
        if (first_event_ns == 0)
            first_event_ns = t;
        last_event_ns = t;
        if (++s->events == (uint64_t)expect)
            expect_complete++;
        return;
    }
    load_got(&s->seq, s->ev_seq, s->ev_sent, t);
}

static void sub_line(sub_t *s, const char *line, size_t len, int64_t t)
{
    if (len == 0) {
        sub_event(s, t);
        return;
    }
    if (len >= 3 && memcmp(line, "id:", 3) == 0 && last_id != NULL) {
        size_t o = len > 3 && line[3] == ' ' ? 4 : 3;
        if (s->line_long || len - o >= LAST_ID_MAX) {
            s->id_long = true;
            return;
        }
        memcpy(s->pending_id, line + o, len - o);
        s->pending_id[len - o] = '\0';
        return;
    }
    if (len >= 12 && memcmp(line, "event:", 6) == 0 && memmem(line, len, "reset", 5) != NULL)
        resets++;
    if (line[0] == ':' || len < 5 || memcmp(line, "data:", 5) != 0 || s->ev_data)
        return; /* comments, event:, retry:, and later data: lines of one event */
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
        if (!sub_drop(s, "status not 200", t))
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
    s->attempts = 0;
    load_in_flight--;
    load_ready++;
    if (rest_off < len)
        sub_bytes(s, data + rest_off, len - rest_off, t);
}

static void sub_ready(long i, uint32_t events, int64_t t)
{
    sub_t *s = &subs[i];
    if (s->state == SUB_CLOSED || s->state == SUB_WAIT)
        return;
    if (s->state == SUB_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            if (!sub_drop(s, "connect failed", t))
                sub_close(s, "connect failed");
            return;
        }
        char req[1024], lid[LAST_ID_MAX + 32] = "";
        if (last_id != NULL && last_id[i][0] != '\0')
            snprintf(lid, sizeof lid, "Last-Event-ID: %s\r\n", last_id[i]);
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                         "Cache-Control: no-cache\r\n%s\r\n",
                         lo.sub_path, lo.host, lo.port, lid);
        if (write(s->fd, req, (size_t)n) != n) {
            if (!sub_drop(s, "request write failed", t))
                sub_close(s, "request write failed");
            return;
        }
        s->state = SUB_HEAD;
        load_ep_mod(s->fd, EPOLLIN, (uint64_t)i);
        return;
    }
    ssize_t n = read(s->fd, load_rbuf, sizeof load_rbuf);
    if (n == 0) {
        if (!sub_drop(s, "closed by the server", t))
            sub_close(s, "closed by the server");
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        if (!sub_drop(s, "read error", t))
            sub_close(s, "read error");
        return;
    }
    if (s->state == SUB_HEAD)
        sub_head(s, load_rbuf, (size_t)n, t);
    else
        sub_bytes(s, load_rbuf, (size_t)n, t);
}

/* After every poll: reopen dropped streams when due; note when all are back and complete. */
static void sse_poll(int64_t t)
{
    if (!reconnect)
        return;
    for (long i = 0; i < lo.conns; i++)
        if (subs[i].state == SUB_WAIT && subs[i].retry_at <= t) {
            reconnects++;
            sub_connect(i);
        }
    if (first_drop_ns == 0 || resumed_ns != 0 || load_ready < lo.conns)
        return;
    if (all_back_ns == 0)
        all_back_ns = t;
    for (long i = 0; i < lo.conns; i++)
        if (subs[i].seq.next_seq - 1 < load_pub_replies)
            return;
    resumed_ns = t;
}

/* ---- main --------------------------------------------------------------------------------- */

static bool sse_option(const char *a, const char *v)
{
    if (strcmp(a, "--pad") == 0)
        lo.body_pad = atoi(v) > 200 ? 200 : atoi(v);
    else if (strcmp(a, "--reconnect") == 0)
        reconnect = atoi(v) != 0;
    else if (strcmp(a, "--expect") == 0)
        expect = atol(v);
    else
        return false;
    return true;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: herald-sse-load --port PORT --sub-path TARGET [options]\n"
            "  --pad BYTES             extra bytes in each message body (0)\n"
            "  --reconnect 1           reopen dropped streams with Last-Event-ID\n"
            "  --expect N              no publisher: wait until every stream has N events\n");
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
    load_on_poll = sse_poll;
    if (reconnect && (last_id = calloc((size_t)lo.conns, LAST_ID_MAX)) == NULL)
        load_die("setup");

    /* Phase 1: open every stream. */
    load_connect_all(sub_start);

    if (lo.pub_path == NULL && expect > 0) {
        /* Expect mode: someone else publishes; wait for N events on every stream. */
        int64_t until = load_now_ns() + lo.drain_ms * 1000000LL;
        while (!load_stop_requested && load_now_ns() < until &&
               expect_complete < (uint64_t)(lo.conns - load_closed))
            load_poll_once(10);
        uint64_t total = 0, over = 0;
        for (long i = 0; i < lo.conns; i++) {
            total += subs[i].events;
            over += subs[i].events > (uint64_t)expect;
        }
        double span = (double)(last_event_ns - first_event_ns) / 1e9;
        printf("expect streams=%ld events_each=%ld complete=%llu events=%llu over=%llu resets=%llu "
               "dropped=%ld first_event_ns=%lld last_event_ns=%lld span_s=%.3f events_per_s=%.0f\n",
               lo.conns, expect, (unsigned long long)expect_complete, (unsigned long long)total,
               (unsigned long long)over, (unsigned long long)resets, lo.conns - load_ready,
               (long long)first_event_ns, (long long)last_event_ns, span,
               span > 0 ? (double)total / span : 0);
        print_failures(true);
        return expect_complete == (uint64_t)lo.conns && over == 0 && resets == 0 ? 0 : 1;
    }
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
    if (reconnect) {
        bool id_long = false;
        for (long i = 0; i < lo.conns; i++)
            id_long |= subs[i].id_long;
        printf("resume dropped=%llu reconnects=%llu all_back_ms=%.1f complete_ms=%.1f "
               "resets=%llu%s\n",
               (unsigned long long)drops, (unsigned long long)reconnects,
               first_drop_ns && all_back_ns ? (double)(all_back_ns - first_drop_ns) / 1e6 : -1.0,
               first_drop_ns && resumed_ns ? (double)(resumed_ns - first_drop_ns) / 1e6 : -1.0,
               (unsigned long long)resets, id_long ? " (an id was too long to keep)" : "");
    }
    bool pub_ok = load_print_pub_failures();
    print_failures(false);
    return v.failed == 0 && pub_ok ? 0 : 1;
}
