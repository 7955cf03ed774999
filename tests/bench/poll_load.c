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
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define LOAD_LINE_MAX    512
#define LOAD_READ_BUF    (256 * 1024)
#define LOAD_MAX_SOURCES 16
#define LOAD_MAX_PIDS    16
#define LOAD_MAX_FAILS   10
#define LOAD_PUB_BACKLOG 10000
#define LOAD_VAL_MAX     160 /* ETag / Last-Modified kept */

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
    uint64_t next_seq;
    uint64_t received, gaps, skipped, dups;
    uint32_t reconnects;
    const char *why;
    char *buf; /* poll: the answer so far; stream: the head so far */
    size_t len, cap;
    char etag[LOAD_VAL_MAX];
    char lastmod[LOAD_VAL_MAX];
    char line[LOAD_LINE_MAX];
} cl_t;

typedef struct {
    int mode;
    const char *host;
    int port;
    const char *sub_path, *pub_path;
    long conns, rate;
    double seconds, hold;
    long settle_ms, drain_ms, connect_timeout_ms, burst;
    struct in_addr sources[LOAD_MAX_SOURCES];
    int n_sources;
    int pids[LOAD_MAX_PIDS];
    int n_pids;
} opts_t;

static opts_t o = {
    .mode = MODE_POLL,
    .host = "127.0.0.1",
    .conns = 1000,
    .rate = 500,
    .seconds = 10,
    .hold = 30,
    .settle_ms = 1000,
    .drain_ms = 30000,
    .connect_timeout_ms = 60000,
    .burst = 256,
};

static cl_t *cls;
static int ep;
static char rbuf[LOAD_READ_BUF];
static uint32_t *lat;
static size_t n_lat, cap_lat;
static long ready_count, closed_count, in_flight, next_to_connect;
static uint64_t total_delivered, complete, total_msgs;
static uint64_t answers_200, answers_304, answers_other, reconnects_total, msgs_in_answers;
static char first_other[200];

static int pub_fd = -1;
static char *pub_out;
static size_t pub_out_len, pub_out_cap;
static char pub_in[65536];
static size_t pub_in_len;
static uint64_t published, pub_replies, pub_errors;
static int64_t pub_sent_ns[LOAD_PUB_BACKLOG];
static uint32_t *pub_lat;
static char pub_first_error[200];
static int64_t last_delivery_ns;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "herald-poll-load: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double server_cpu(void)
{
    double ticks = 0;
    for (int i = 0; i < o.n_pids; i++) {
        char path[64], b[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", o.pids[i]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(b, 1, sizeof b - 1, f);
        fclose(f);
        b[n] = '\0';
        char *p = strrchr(b, ')');
        unsigned long long ut = 0, st = 0;
        if (p &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
            ticks += (double)(ut + st);
    }
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void lat_add(int64_t ns)
{
    if (n_lat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 1 << 20;
        lat = realloc(lat, cap_lat * sizeof *lat);
        if (lat == NULL)
            die("realloc");
    }
    int64_t us = ns / 1000;
    lat[n_lat++] = us < 0 ? 0 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return -1;
    return (double)v[(size_t)(p / 100.0 * (double)(n - 1) + 0.5)] / 1000.0;
}

static void ep_add(int fd, uint32_t events, uint64_t id)
{
    struct epoll_event ev = {.events = events, .data.u64 = id};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        die("epoll_ctl add");
}

static void ep_mod(int fd, uint32_t events, uint64_t id)
{
    struct epoll_event ev = {.events = events, .data.u64 = id};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) != 0)
        die("epoll_ctl mod");
}

#define ID_PUB    ((uint64_t)1 << 40)
#define ID_TIMER  (ID_PUB + 1)
#define ID_SIGNAL (ID_PUB + 2)

static int tcp_socket(long index, bool nodelay)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    if (o.n_sources > 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = o.sources[index % o.n_sources]};
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            die("bind source address");
    }
    if (nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    inet_pton(AF_INET, o.host, &dst.sin_addr);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -errno;
    }
    return fd;
}

/* ---- messages ----------------------------------------------------------------------------- */

static void got_message(cl_t *c, uint64_t seq, int64_t sent, int64_t t)
{
    c->received++;
    total_delivered++;
    last_delivery_ns = t;
    lat_add(t - sent);
    if (seq == c->next_seq) {
        c->next_seq++;
    } else if (seq > c->next_seq) {
        c->gaps++;
        c->skipped += seq - c->next_seq;
        c->next_seq = seq + 1;
    } else {
        c->dups++;
    }
    if (total_msgs > 0 && c->next_seq == total_msgs + 1 && seq == total_msgs)
        complete++;
}

/* "SEQ SENT" at p; returns false when p holds no digits. */
static bool parse_pair(const char *p, const char *end, uint64_t *seq, int64_t *sent)
{
    uint64_t s = 0;
    int64_t t = 0;
    if (p >= end || !isdigit((unsigned char)*p))
        return false;
    while (p < end && isdigit((unsigned char)*p))
        s = s * 10 + (uint64_t)(*p++ - '0');
    if (p < end && *p == ' ')
        p++;
    while (p < end && isdigit((unsigned char)*p))
        t = t * 10 + (*p++ - '0');
    *seq = s;
    *sent = t;
    return true;
}

/* Every message in text: after each "data":" or, when there is none, one per line. */
static size_t scan_messages(cl_t *c, const char *p, size_t len, int64_t t)
{
    static const char key[] = "\"data\":\"";
    const char *end = p + len;
    size_t found = 0;
    uint64_t seq;
    int64_t sent;
    const char *q = memmem(p, len, key, sizeof key - 1);
    if (q != NULL) {
        while (q != NULL) {
            q += sizeof key - 1;
            if (parse_pair(q, end, &seq, &sent))
                got_message(c, seq, sent, t), found++;
            q = memmem(q, (size_t)(end - q), key, sizeof key - 1);
        }
        return found;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        if (parse_pair(p, stop, &seq, &sent))
            got_message(c, seq, sent, t), found++;
        p = nl ? nl + 1 : end;
    }
    return found;
}

/* ---- HTTP helpers --------------------------------------------------------------------------- */

/* Value of header `name` (with ':') in head [h, end), copied to out; false when absent. */
static bool header_value(const char *h, const char *end, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = h; p + nl < end; p++) {
        if (p[0] != '\n' || strncasecmp(p + 1, name, nl) != 0)
            continue;
        const char *v = p + 1 + nl;
        while (v < end && (*v == ' ' || *v == '\t'))
            v++;
        const char *e = v;
        while (e < end && *e != '\r' && *e != '\n')
            e++;
        size_t n = (size_t)(e - v) < cap - 1 ? (size_t)(e - v) : cap - 1;
        memcpy(out, v, n);
        out[n] = '\0';
        return true;
    }
    return false;
}

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
            die("realloc");
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
        in_flight--;
    c->state = CL_CLOSED;
    c->why = why;
    closed_count++;
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
    int fd = tcp_socket(i, o.mode == MODE_POLL);
    c->fd = fd < 0 ? -1 : fd;
    c->state = CL_CONNECTING;
    if (fd < 0) {
        c->state = CL_WAITING; /* so that cl_close counts it right */
        cl_close(c, "connect failed");
        return;
    }
    ep_add(fd, EPOLLOUT, (uint64_t)i);
}

static void cl_start(long i)
{
    cls[i].next_seq = 1;
    in_flight++;
    cl_connect(i);
}

static bool cl_send(long i)
{
    cl_t *c = &cls[i];
    char req[1024];
    int n;
    if (o.mode == MODE_POLL) {
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: */*\r\n",
                     o.sub_path, o.host, o.port);
        if (c->etag[0])
            n += snprintf(req + n, sizeof req - (size_t)n, "If-None-Match: %s\r\n", c->etag);
        if (c->lastmod[0])
            n += snprintf(req + n, sizeof req - (size_t)n, "If-Modified-Since: %s\r\n", c->lastmod);
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    } else {
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: application/x-ndjson, */*\r\n"
                     "TE: chunked\r\n\r\n",
                     o.sub_path, o.host, o.port);
    }
    if (write(c->fd, req, (size_t)n) != n) {
        cl_close(c, "request write failed");
        return false;
    }
    c->state = CL_WAITING;
    c->len = 0;
    if (o.mode == MODE_POLL && !c->ever_ready) {
        c->ever_ready = true;
        in_flight--;
        ready_count++;
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
        header_value(c->buf, end, "connection:", v, sizeof v) && strcasecmp(v, "close") == 0;
    int status = 0;
    sscanf(c->buf, "HTTP/1.%*d %d", &status);
    if (header_value(c->buf, end, "transfer-encoding:", v, sizeof v)) {
        if ((blen = dechunk(body, have)) < 0)
            return;
    } else if (header_value(c->buf, end, "content-length:", v, sizeof v)) {
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
        msgs_in_answers += scan_messages(c, body, (size_t)blen, t);
    } else if (status == 304) {
        answers_304++;
    } else {
        if (answers_other++ == 0)
            snprintf(first_other, sizeof first_other, "status %d body %.*s", status,
                     (int)(blen < 100 ? blen : 100), body);
    }
    if (status == 200 || status == 304) {
        char tag[LOAD_VAL_MAX], lm[LOAD_VAL_MAX];
        if (header_value(c->buf, end, "etag:", tag, sizeof tag))
            memcpy(c->etag, tag, sizeof tag);
        if (header_value(c->buf, end, "last-modified:", lm, sizeof lm))
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
        scan_messages(c, p, n, t);
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
    int status = 0;
    sscanf(c->buf, "HTTP/1.%*d %d", &status);
    if (status != 200) {
        cl_close(c, "status not 200");
        return;
    }
    char v[LOAD_VAL_MAX];
    c->chunk =
        header_value(c->buf, end, "transfer-encoding:", v, sizeof v) && strcasestr(v, "chunked")
            ? CH_SIZE
            : CH_RAW;
    size_t off = (size_t)(end + 4 - c->buf), total = c->len;
    char *rest = c->buf;
    c->buf = NULL;
    c->len = c->cap = 0;
    c->state = CL_STREAM;
    c->ever_ready = true;
    in_flight--;
    ready_count++;
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
        ep_mod(c->fd, EPOLLIN, (uint64_t)i);
        cl_send(i);
        return;
    }
    ssize_t n = read(c->fd, rbuf, sizeof rbuf);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        if (o.mode == MODE_POLL && c->state == CL_WAITING && c->ever_ready && c->len == 0 &&
            c->reconnects < 100)
            cl_reopen(i);
        else
            cl_close(c, n == 0 ? "closed by the server" : "read error");
        return;
    }
    if (n < 0)
        return;
    if (c->state == CL_STREAM) {
        stream_bytes(c, rbuf, (size_t)n, t);
        return;
    }
    buf_append(c, rbuf, (size_t)n);
    if (o.mode == MODE_POLL)
        poll_answer(i, t);
    else
        stream_head(i, t);
}

/* ---- publisher ---------------------------------------------------------------------------- */

static void pub_flush(void)
{
    while (pub_out_len > 0) {
        ssize_t n = write(pub_fd, pub_out, pub_out_len);
        if (n < 0) {
            if (errno == EAGAIN) {
                ep_mod(pub_fd, EPOLLIN | EPOLLOUT, ID_PUB);
                return;
            }
            die("publisher write");
        }
        memmove(pub_out, pub_out + n, pub_out_len - (size_t)n);
        pub_out_len -= (size_t)n;
    }
    ep_mod(pub_fd, EPOLLIN, ID_PUB);
}

static void pub_send(uint64_t seq)
{
    char body[64], head[512];
    int64_t t = now_ns();
    int bl = snprintf(body, sizeof body, "%llu %lld\n", (unsigned long long)seq, (long long)t);
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %d\r\n\r\n",
                      o.pub_path, o.host, o.port, bl);
    size_t need = pub_out_len + (size_t)hl + (size_t)bl;
    if (need > pub_out_cap) {
        pub_out_cap = need * 2;
        if ((pub_out = realloc(pub_out, pub_out_cap)) == NULL)
            die("realloc");
    }
    memcpy(pub_out + pub_out_len, head, (size_t)hl);
    memcpy(pub_out + pub_out_len + hl, body, (size_t)bl);
    pub_out_len += (size_t)hl + (size_t)bl;
    pub_sent_ns[(seq - 1) % LOAD_PUB_BACKLOG] = t;
    published = seq;
    pub_flush();
}

static void pub_parse(void)
{
    for (;;) {
        pub_in[pub_in_len < sizeof pub_in ? pub_in_len : sizeof pub_in - 1] = '\0';
        char *end = memmem(pub_in, pub_in_len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        int status = 0;
        sscanf(pub_in, "HTTP/1.%*d %d", &status);
        char v[64];
        size_t clen =
            header_value(pub_in, end, "content-length:", v, sizeof v) ? strtoul(v, 0, 10) : 0;
        size_t total = (size_t)(end + 4 - pub_in) + clen;
        if (total > pub_in_len)
            return;
        int64_t us = (now_ns() - pub_sent_ns[pub_replies % LOAD_PUB_BACKLOG]) / 1000;
        if (pub_lat != NULL)
            pub_lat[pub_replies] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        pub_replies++;
        if ((status < 200 || status > 299) && pub_errors++ == 0)
            snprintf(pub_first_error, sizeof pub_first_error, "status %d body %.*s", status,
                     (int)(clen < 120 ? clen : 120), end + 4);
        memmove(pub_in, pub_in + total, pub_in_len - total);
        pub_in_len -= total;
    }
}

static void pub_ready(uint32_t events)
{
    if (events & EPOLLOUT)
        pub_flush();
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = read(pub_fd, pub_in + pub_in_len, sizeof pub_in - 1 - pub_in_len);
        if (n == 0) {
            fprintf(stderr, "herald-poll-load: the publish connection was closed by the server\n");
            exit(1);
        }
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            die("publisher read");
        }
        pub_in_len += (size_t)n;
        pub_parse();
        if (pub_in_len == sizeof pub_in - 1) {
            fprintf(stderr, "herald-poll-load: publish response too large\n");
            exit(1);
        }
    }
}

/* ---- main loop ---------------------------------------------------------------------------- */

static int stop_requested, timer_fd = -1;
static uint64_t timer_due;

static void poll_once(int timeout_ms)
{
    struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return;
        die("epoll_wait");
    }
    int64_t t = now_ns();
    for (int k = 0; k < n; k++) {
        uint64_t id = evs[k].data.u64;
        if (id == ID_PUB) {
            pub_ready(evs[k].events);
        } else if (id == ID_TIMER) {
            uint64_t exp;
            if (read(timer_fd, &exp, sizeof exp) == sizeof exp)
                timer_due += exp;
        } else if (id == ID_SIGNAL) {
            stop_requested = 1;
        } else {
            cl_ready((long)id, evs[k].events, t);
        }
    }
}

static void connect_more(void)
{
    while (next_to_connect < o.conns && in_flight < o.burst)
        cl_start(next_to_connect++);
}

static void parse_list(const char *arg, void (*add)(const char *item))
{
    char *copy = strdup(arg), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        add(tok);
    free(copy);
}

static void add_source(const char *item)
{
    if (o.n_sources == LOAD_MAX_SOURCES || inet_pton(AF_INET, item, &o.sources[o.n_sources]) != 1) {
        fprintf(stderr, "herald-poll-load: bad --sources entry '%s'\n", item);
        exit(2);
    }
    o.n_sources++;
}

static void add_pid(const char *item)
{
    if (o.n_pids == LOAD_MAX_PIDS) {
        fprintf(stderr, "herald-poll-load: too many --cpu-pids\n");
        exit(2);
    }
    o.pids[o.n_pids++] = atoi(item);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: herald-poll-load --mode poll|stream --port PORT --sub-path TARGET [options]\n"
            "  --host ADDR             server IPv4 address (127.0.0.1)\n"
            "  --conns N               long-pollers or streams (1000)\n"
            "  --pub-path TARGET       POST target for publishing; absent: hold mode\n"
            "  --rate R                messages/s (500)\n"
            "  --seconds S             seconds of publishing (10)\n"
            "  --settle-ms MS          wait after every client is ready, before publishing (1000)\n"
            "  --drain-ms MS           wait for deliveries after the last publish (30000)\n"
            "  --connect-timeout-ms MS bound on opening every client (60000)\n"
            "  --connect-burst N       connects in flight at once (256)\n"
            "  --sources A,B,...       local source addresses, round-robin\n"
            "  --cpu-pids P,Q,...      server processes whose CPU time is measured\n"
            "  --hold S                hold mode: seconds to hold the polls/streams (30)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            usage();
        i++;
        if (strcmp(a, "--mode") == 0)
            o.mode = strcmp(v, "stream") == 0 ? MODE_STREAM
                     : strcmp(v, "poll") == 0 ? MODE_POLL
                                              : (usage(), 0);
        else if (strcmp(a, "--host") == 0)
            o.host = v;
        else if (strcmp(a, "--port") == 0)
            o.port = atoi(v);
        else if (strcmp(a, "--sub-path") == 0)
            o.sub_path = v;
        else if (strcmp(a, "--pub-path") == 0)
            o.pub_path = v;
        else if (strcmp(a, "--conns") == 0)
            o.conns = atol(v);
        else if (strcmp(a, "--rate") == 0)
            o.rate = atol(v);
        else if (strcmp(a, "--seconds") == 0)
            o.seconds = atof(v);
        else if (strcmp(a, "--settle-ms") == 0)
            o.settle_ms = atol(v);
        else if (strcmp(a, "--drain-ms") == 0)
            o.drain_ms = atol(v);
        else if (strcmp(a, "--connect-timeout-ms") == 0)
            o.connect_timeout_ms = atol(v);
        else if (strcmp(a, "--connect-burst") == 0)
            o.burst = atol(v);
        else if (strcmp(a, "--sources") == 0)
            parse_list(v, add_source);
        else if (strcmp(a, "--cpu-pids") == 0)
            parse_list(v, add_pid);
        else if (strcmp(a, "--hold") == 0)
            o.hold = atof(v);
        else
            usage();
    }
    if (o.port <= 0 || o.sub_path == NULL || o.conns <= 0 || o.rate <= 0 || o.seconds <= 0 ||
        o.burst <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)o.conns + 64) {
        fprintf(stderr, "herald-poll-load: %ld clients need ulimit -n >= %ld (it is %llu)\n",
                o.conns, o.conns + 64, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    const char *kind = o.mode == MODE_POLL ? "poll" : "stream";
    ep = epoll_create1(EPOLL_CLOEXEC);
    cls = calloc((size_t)o.conns, sizeof *cls);
    if (ep < 0 || cls == NULL)
        die("setup");
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    ep_add(sfd, EPOLLIN, ID_SIGNAL);

    /* Phase 1: every poll sent / every stream open. */
    int64_t t0 = now_ns(), deadline = t0 + o.connect_timeout_ms * 1000000LL;
    connect_more();
    while (ready_count + closed_count < o.conns && now_ns() < deadline && !stop_requested) {
        poll_once(100);
        connect_more();
    }
    double connect_s = (double)(now_ns() - t0) / 1e9;
    printf("connected n=%ld of=%ld seconds=%.2f failed=%ld\n", ready_count, o.conns, connect_s,
           closed_count);
    fflush(stdout);

    if (o.pub_path == NULL) {
        int64_t until = now_ns() + (int64_t)(o.hold * 1e9);
        while (!stop_requested && now_ns() < until)
            poll_once(200);
        long open = 0;
        for (long i = 0; i < o.conns; i++)
            open += cls[i].state != CL_CLOSED;
        printf("hold %s=%ld held_seconds=%.1f dropped=%ld answered=%llu reconnects=%llu\n", kind,
               open, (double)(now_ns() - t0) / 1e9 - connect_s, o.conns - open,
               (unsigned long long)(answers_200 + answers_304 + answers_other),
               (unsigned long long)reconnects_total);
        for (long i = 0, shown = 0; i < o.conns && shown < LOAD_MAX_FAILS; i++)
            if (cls[i].state == CL_CLOSED)
                printf("failure client=%ld %s\n", i, cls[i].why), shown++;
        return open == o.conns ? 0 : 1;
    }
    if (ready_count < o.conns) {
        for (long i = 0, shown = 0; i < o.conns && shown < LOAD_MAX_FAILS; i++)
            if (!cls[i].ever_ready || cls[i].state == CL_CLOSED)
                printf("failure client=%ld %s\n", i,
                       cls[i].state == CL_CLOSED ? cls[i].why : "not ready in time"),
                    shown++;
        return 1;
    }

    /* Phase 2: settle (the server registers every poll/stream), publisher connected. */
    pub_fd = tcp_socket(0, true);
    if (pub_fd < 0) {
        errno = -pub_fd;
        die("publisher connect");
    }
    ep_add(pub_fd, EPOLLIN, ID_PUB);
    int64_t settle_until = now_ns() + o.settle_ms * 1000000LL;
    while (now_ns() < settle_until && !stop_requested)
        poll_once(50);

    /* Phase 3: publish at the rate. */
    total_msgs = (uint64_t)(o.rate * o.seconds + 0.5);
    pub_lat = calloc(total_msgs + 1, sizeof *pub_lat);
    timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    long period_ns = 1000000000L / o.rate;
    struct itimerspec its = {.it_interval = {period_ns / 1000000000L, period_ns % 1000000000L},
                             .it_value = {0, 1}};
    ep_add(timer_fd, EPOLLIN, ID_TIMER);
    timerfd_settime(timer_fd, 0, &its, NULL);
    uint64_t req0 = answers_200 + answers_304 + answers_other, msgs0 = msgs_in_answers;
    uint64_t a200_0 = answers_200;
    double cpu0 = server_cpu(), self0 = self_cpu();
    int64_t pub_start = now_ns();
    uint64_t seq = 0, delivered0 = total_delivered;
    n_lat = 0;
    int64_t pub_deadline = pub_start + (int64_t)(o.seconds * 3e9) + 1000000000LL;
    while (seq < total_msgs && !stop_requested && now_ns() < pub_deadline) {
        poll_once(100);
        while (timer_due > 0 && seq < total_msgs && seq - pub_replies < LOAD_PUB_BACKLOG) {
            timer_due--;
            pub_send(++seq);
        }
    }
    close(timer_fd);
    int64_t pub_end = now_ns();

    /* Phase 4: drain. */
    long live = 0;
    for (long i = 0; i < o.conns; i++)
        live += cls[i].state != CL_CLOSED;
    int64_t drain_until = pub_end + o.drain_ms * 1000000LL;
    while (!stop_requested && now_ns() < drain_until &&
           (complete < (uint64_t)live || pub_replies < published))
        poll_once(10);
    double cpu1 = server_cpu(), self1 = self_cpu();
    int64_t end = last_delivery_ns > pub_start ? last_delivery_ns : now_ns();

    uint64_t deliveries = total_delivered - delivered0;
    uint64_t skipped = 0, late = 0, gaps = 0, dups = 0, failed = 0, dropped = 0;
    for (long i = 0; i < o.conns; i++) {
        cl_t *c = &cls[i];
        uint64_t tail = c->next_seq - 1 < published ? published - (c->next_seq - 1) : 0;
        skipped += c->skipped;
        late += tail;
        gaps += c->gaps;
        dups += c->dups;
        dropped += c->state == CL_CLOSED;
        if (c->skipped + tail > 0 || c->dups > 0 || c->state == CL_CLOSED ||
            c->received != published)
            failed++;
    }
    qsort(lat, n_lat, sizeof *lat, cmp_u32);
    size_t n_pub = pub_replies < total_msgs ? pub_replies : total_msgs;
    qsort(pub_lat, n_pub, sizeof *pub_lat, cmp_u32);
    double secs = (double)(end - pub_start) / 1e9, cpu = cpu1 - cpu0;
    uint64_t reqs = answers_200 + answers_304 + answers_other - req0;
    uint64_t a200 = answers_200 - a200_0;
    printf("%s clients=%ld rate=%ld seconds=%.1f published=%llu pub_errors=%llu deliveries=%llu "
           "expected=%llu elapsed=%.3f deliveries_per_s=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f "
           "max_ms=%.3f pub_p50_ms=%.3f pub_p99_ms=%.3f server_cpu_s=%.2f "
           "cpu_us_per_delivery=%.3f loadgen_cpu_s=%.2f answers=%llu answers_per_s=%.0f "
           "answers_200=%llu answers_304=%llu answers_other=%llu msgs_per_answer=%.2f "
           "reconnects=%llu failed_clients=%llu skipped=%llu gaps=%llu late=%llu dups=%llu "
           "dropped=%llu\n",
           kind, o.conns, o.rate, o.seconds, (unsigned long long)published,
           (unsigned long long)pub_errors, (unsigned long long)deliveries,
           (unsigned long long)(published * (uint64_t)o.conns), secs,
           secs > 0 ? (double)deliveries / secs : 0, pct_ms(lat, n_lat, 50), pct_ms(lat, n_lat, 90),
           pct_ms(lat, n_lat, 99), pct_ms(lat, n_lat, 100), pct_ms(pub_lat, n_pub, 50),
           pct_ms(pub_lat, n_pub, 99), cpu, deliveries ? cpu * 1e6 / (double)deliveries : -1,
           self1 - self0, (unsigned long long)reqs, secs > 0 ? (double)reqs / secs : 0,
           (unsigned long long)a200, (unsigned long long)answers_304,
           (unsigned long long)answers_other,
           a200 ? (double)(msgs_in_answers - msgs0) / (double)a200 : 0,
           (unsigned long long)reconnects_total, (unsigned long long)failed,
           (unsigned long long)skipped, (unsigned long long)gaps, (unsigned long long)late,
           (unsigned long long)dups, (unsigned long long)dropped);
    if (answers_other > 0)
        printf("failure answers_other=%llu first: %s\n", (unsigned long long)answers_other,
               first_other);
    if (pub_errors > 0)
        printf("failure publisher errors=%llu first: %s\n", (unsigned long long)pub_errors,
               pub_first_error);
    if (published < total_msgs)
        printf("failure publisher sent %llu of %llu messages in time (replies %llu)\n",
               (unsigned long long)published, (unsigned long long)total_msgs,
               (unsigned long long)pub_replies);
    for (long i = 0, shown = 0; i < o.conns && shown < LOAD_MAX_FAILS; i++) {
        cl_t *c = &cls[i];
        uint64_t tail = c->next_seq - 1 < published ? published - (c->next_seq - 1) : 0;
        if (c->skipped + tail == 0 && c->dups == 0 && c->state != CL_CLOSED &&
            c->received == published)
            continue;
        printf("failure client=%ld received=%llu of %llu skipped=%llu in %llu gaps, late=%llu, "
               "dups_or_reordered=%llu, reconnects=%u, %s\n",
               i, (unsigned long long)c->received, (unsigned long long)published,
               (unsigned long long)c->skipped, (unsigned long long)c->gaps,
               (unsigned long long)tail, (unsigned long long)c->dups, c->reconnects,
               c->state == CL_CLOSED ? c->why : "open");
        shown++;
    }
    return failed == 0 && pub_errors == 0 && published == total_msgs ? 0 : 1;
}
