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

/* Bytes of a line kept; longer lines are truncated (only data: lines matter; they are short). */
#define LOAD_LINE_MAX    128
#define LOAD_HEAD_MAX    4096 /* response head of a stream */
#define LOAD_READ_BUF    (256 * 1024)
#define LOAD_MAX_SOURCES 16
#define LOAD_MAX_PIDS    16
#define LOAD_MAX_FAILS   10
/* Publishes awaiting a reply before the publisher counts as stuck. */
#define LOAD_PUB_BACKLOG 10000

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
    uint64_t next_seq; /* next expected seq; starts at 1 */
    uint64_t received;
    uint64_t gaps, skipped, dups; /* skipped: messages jumped over; dups: a seq at or below
                                     the last one (a duplicate or out of order) */
    uint64_t ev_seq;
    int64_t ev_sent;
    const char *why; /* for SUB_CLOSED */
    char *head;      /* response head while in SUB_HEAD; freed afterwards */
    char line[LOAD_LINE_MAX];
} sub_t;

typedef struct {
    const char *host;
    int port;
    const char *sub_path, *pub_path;
    long conns;
    long rate;
    double seconds;
    long settle_ms, drain_ms, connect_timeout_ms;
    long burst;
    double hold;
    struct in_addr sources[LOAD_MAX_SOURCES];
    int n_sources;
    int pids[LOAD_MAX_PIDS];
    int n_pids;
    int body_pad; /* extra bytes appended to each message body */
} opts_t;

static opts_t o = {
    .host = "127.0.0.1",
    .conns = 1000,
    .rate = 50,
    .seconds = 10,
    .settle_ms = 1000,
    .drain_ms = 30000,
    .connect_timeout_ms = 60000,
    .burst = 256,
    .hold = 30,
};

static sub_t *subs;
static int ep;
static char rbuf[LOAD_READ_BUF];

/* Latency samples, microseconds. */
static uint32_t *lat;
static size_t n_lat, cap_lat;

/* Publisher. */
static int pub_fd = -1;
static char *pub_out;
static size_t pub_out_len, pub_out_cap;
static char pub_in[65536];
static size_t pub_in_len;
static uint64_t published, pub_replies, pub_errors;
static int64_t pub_sent_ns[LOAD_PUB_BACKLOG]; /* by (seq - 1) % LOAD_PUB_BACKLOG */
static uint32_t *pub_lat;                     /* reply latency per publish, microseconds */
static char pub_first_error[200];

static long connected, closed_count, in_flight, next_to_connect;
static uint64_t total_delivered, subs_complete;
static int64_t last_delivery_ns;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "herald-sse-load: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* utime + stime of the --cpu-pids, seconds. */
static double server_cpu(void)
{
    double ticks = 0;
    for (int i = 0; i < o.n_pids; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", o.pids[i]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* Fields after the command name "(...)", which may hold spaces: state is field 3,
         * utime field 14, stime field 15. */
        char *p = strrchr(buf, ')');
        if (p == NULL)
            continue;
        unsigned long long ut = 0, st = 0;
        if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
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

/* Percentile `p` of `n` sorted samples (microseconds), in ms; -1 when there are none. */
static double pct_ms(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return -1;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
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

/* Epoll ids: subscribers are 0..conns-1; these follow. */
#define ID_PUB    ((uint64_t)1 << 40)
#define ID_TIMER  (ID_PUB + 1)
#define ID_SIGNAL (ID_PUB + 2)

static int tcp_socket(long index, bool nodelay)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    if (o.n_sources > 0) {
        /* Pick the port at connect time, per destination: bind() alone would reserve one
         * port per source address for any destination. */
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

/* ---- subscribers -------------------------------------------------------------------------- */

static void sub_close(sub_t *s, const char *why)
{
    if (s->state == SUB_CLOSED)
        return;
    if (s->state == SUB_CONNECTING || s->state == SUB_HEAD)
        in_flight--;
    if (s->state == SUB_STREAM)
        connected--;
    s->state = SUB_CLOSED;
    s->why = why;
    closed_count++;
    free(s->head);
    s->head = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

static void sub_start(long i)
{
    sub_t *s = &subs[i];
    int fd = tcp_socket(i, false);
    s->fd = fd < 0 ? -1 : fd;
    s->state = SUB_CONNECTING;
    s->next_seq = 1;
    in_flight++;
    if (fd < 0) {
        sub_close(s, "connect failed");
        return;
    }
    ep_add(fd, EPOLLOUT, (uint64_t)i);
}

static void sub_event(sub_t *s, int64_t t)
{
    if (!s->ev_data)
        return;
    s->ev_data = false;
    s->received++;
    total_delivered++;
    last_delivery_ns = t;
    lat_add(t - s->ev_sent);
    if (s->ev_seq == s->next_seq) {
        s->next_seq++;
    } else if (s->ev_seq > s->next_seq) {
        s->gaps++;
        s->skipped += s->ev_seq - s->next_seq;
        s->next_seq = s->ev_seq + 1;
    } else {
        s->dups++;
    }
    if (published > 0 && s->next_seq == (uint64_t)(o.rate * o.seconds + 0.5) + 1)
        subs_complete++;
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
    uint64_t seq = 0;
    int64_t sent = 0;
    while (p < end && isdigit((unsigned char)*p))
        seq = seq * 10 + (uint64_t)(*p++ - '0');
    if (p < end && *p == ' ')
        p++;
    while (p < end && isdigit((unsigned char)*p))
        sent = sent * 10 + (*p++ - '0');
    s->ev_seq = seq;
    s->ev_sent = sent;
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
    int status = 0;
    if (sscanf(s->head, "HTTP/1.%*d %d", &status) != 1 || status != 200) {
        sub_close(s, "status not 200");
        return;
    }
    for (char *p = s->head; p < end; p++) {
        if (strncasecmp(p, "\ntransfer-encoding:", 19) == 0) {
            sub_close(s, "chunked streams are not supported");
            return;
        }
    }
    size_t head_bytes = (size_t)(end + 4 - s->head);
    size_t rest_off = head_bytes - (s->head_len - n); /* offset in `data` of the body */
    free(s->head);
    s->head = NULL;
    s->state = SUB_STREAM;
    in_flight--;
    connected++;
    if (rest_off < len)
        sub_bytes(s, data + rest_off, len - rest_off, t);
}

static void sub_ready(long i, uint32_t events, int64_t t)
{
    sub_t *s = &subs[i];
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
                         o.sub_path, o.host, o.port);
        if (write(s->fd, req, (size_t)n) != n) {
            sub_close(s, "request write failed");
            return;
        }
        s->state = SUB_HEAD;
        ep_mod(s->fd, EPOLLIN, (uint64_t)i);
        return;
    }
    ssize_t n = read(s->fd, rbuf, sizeof rbuf);
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
        sub_head(s, rbuf, (size_t)n, t);
    else
        sub_bytes(s, rbuf, (size_t)n, t);
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
    char body[64 + 256], head[512];
    int64_t t = now_ns();
    int bl = snprintf(body, 64, "%llu %lld", (unsigned long long)seq, (long long)t);
    for (int i = 0; i < o.body_pad && bl < (int)sizeof body - 1; i++)
        body[bl++] = i == 0 ? ' ' : 'x';
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %d\r\n\r\n",
                      o.pub_path, o.host, o.port, bl);
    size_t need = pub_out_len + (size_t)hl + (size_t)bl;
    if (need > pub_out_cap) {
        pub_out_cap = need * 2;
        pub_out = realloc(pub_out, pub_out_cap);
        if (pub_out == NULL)
            die("realloc");
    }
    memcpy(pub_out + pub_out_len, head, (size_t)hl);
    memcpy(pub_out + pub_out_len + hl, body, (size_t)bl);
    pub_out_len += (size_t)hl + (size_t)bl;
    pub_sent_ns[(seq - 1) % LOAD_PUB_BACKLOG] = t;
    published = seq;
    pub_flush();
}

/* Consume complete responses (Content-Length framed) from pub_in. */
static void pub_parse(void)
{
    for (;;) {
        pub_in[pub_in_len < sizeof pub_in ? pub_in_len : sizeof pub_in - 1] = '\0';
        char *end = memmem(pub_in, pub_in_len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        int status = 0;
        sscanf(pub_in, "HTTP/1.%*d %d", &status);
        size_t clen = 0;
        for (char *p = pub_in; p < end; p++)
            if (strncasecmp(p, "\ncontent-length:", 16) == 0)
                clen = strtoul(p + 16, NULL, 10);
        size_t total = (size_t)(end + 4 - pub_in) + clen;
        if (total > pub_in_len)
            return;
        /* Replies come in request order (HTTP/1.1 pipelining). */
        int64_t us = (now_ns() - pub_sent_ns[pub_replies % LOAD_PUB_BACKLOG]) / 1000;
        if (pub_lat != NULL)
            pub_lat[pub_replies] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
        pub_replies++;
        if (status < 200 || status > 299) {
            if (pub_errors++ == 0) {
                int bl = (int)(clen < 120 ? clen : 120);
                snprintf(pub_first_error, sizeof pub_first_error, "status %d body %.*s", status, bl,
                         end + 4);
            }
        }
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
            fprintf(stderr, "herald-sse-load: the publish connection was closed by the server\n");
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
            fprintf(stderr, "herald-sse-load: publish response too large\n");
            exit(1);
        }
    }
}

/* ---- main loop ---------------------------------------------------------------------------- */

static int stop_requested;
static int timer_fd = -1;
static uint64_t timer_due; /* publish ticks not yet acted on */

/* One epoll round; returns the number of events. */
static int poll_once(int timeout_ms)
{
    struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return 0;
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
            sub_ready((long)id, evs[k].events, t);
        }
    }
    return n;
}

static void connect_more(void)
{
    while (next_to_connect < o.conns && in_flight < o.burst)
        sub_start(next_to_connect++);
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
        fprintf(stderr, "herald-sse-load: bad --sources entry '%s'\n", item);
        exit(2);
    }
    o.n_sources++;
}

static void add_pid(const char *item)
{
    if (o.n_pids == LOAD_MAX_PIDS) {
        fprintf(stderr, "herald-sse-load: too many --cpu-pids\n");
        exit(2);
    }
    o.pids[o.n_pids++] = atoi(item);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: herald-sse-load --port PORT --sub-path TARGET [options]\n"
            "  --host ADDR             server IPv4 address (127.0.0.1)\n"
            "  --conns N               SSE subscribers (1000)\n"
            "  --pub-path TARGET       POST target for publishing; absent: idle mode\n"
            "  --rate R                messages/s (50)\n"
            "  --seconds S             seconds of publishing (10)\n"
            "  --pad BYTES             extra bytes in each message body (0)\n"
            "  --settle-ms MS          wait after every stream is open, before publishing (1000)\n"
            "  --drain-ms MS           wait for deliveries after the last publish (30000)\n"
            "  --connect-timeout-ms MS bound on opening every stream (60000)\n"
            "  --connect-burst N       connects in flight at once (256)\n"
            "  --sources A,B,...       local source addresses, round-robin\n"
            "  --cpu-pids P,Q,...      server processes whose CPU time is measured\n"
            "  --hold S                idle mode: seconds to hold the streams (30)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            usage();
        i++;
        if (strcmp(a, "--host") == 0)
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
        else if (strcmp(a, "--pad") == 0)
            o.body_pad = atoi(v) > 200 ? 200 : atoi(v);
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

    /* Every stream is a descriptor: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)o.conns + 64) {
        fprintf(stderr, "herald-sse-load: %ld streams need ulimit -n >= %ld (it is %llu)\n",
                o.conns, o.conns + 64, (unsigned long long)rl.rlim_cur);
        return 2;
    }

    ep = epoll_create1(EPOLL_CLOEXEC);
    subs = calloc((size_t)o.conns, sizeof *subs);
    if (ep < 0 || subs == NULL)
        die("setup");
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    ep_add(sfd, EPOLLIN, ID_SIGNAL);

    /* Phase 1: open every stream. */
    int64_t t0 = now_ns();
    int64_t deadline = t0 + o.connect_timeout_ms * 1000000LL;
    connect_more();
    while (connected + closed_count < o.conns && now_ns() < deadline && !stop_requested) {
        poll_once(100);
        connect_more();
    }
    double connect_s = (double)(now_ns() - t0) / 1e9;
    printf("connected n=%ld of=%ld seconds=%.2f failed=%ld\n", connected, o.conns, connect_s,
           closed_count);
    fflush(stdout);
    int rc = 0;
    if (connected < o.conns)
        rc = 1;

    if (o.pub_path == NULL) {
        /* Idle mode: hold the streams. */
        int64_t until = now_ns() + (int64_t)(o.hold * 1e9);
        while (!stop_requested && now_ns() < until)
            poll_once(200);
        printf("idle streams=%ld held_seconds=%.1f dropped=%ld\n", connected,
               (double)(now_ns() - t0) / 1e9 - connect_s, o.conns - connected);
        for (long i = 0, shown = 0; i < o.conns && shown < LOAD_MAX_FAILS; i++)
            if (subs[i].state == SUB_CLOSED)
                printf("failure subscriber=%ld %s\n", i, subs[i].why), shown++;
        return connected == o.conns ? 0 : 1;
    }
    if (rc != 0) {
        for (long i = 0, shown = 0; i < o.conns && shown < LOAD_MAX_FAILS; i++)
            if (subs[i].state != SUB_STREAM)
                printf("failure subscriber=%ld %s\n", i,
                       subs[i].state == SUB_CLOSED ? subs[i].why : "not connected in time"),
                    shown++;
        return 1;
    }

    /* Phase 2: settle, so every subscription is live at the server (Herald asks the broker for
     * the topic's head first), with the publisher connected. */
    pub_fd = tcp_socket(0, true);
    if (pub_fd < 0) {
        errno = -pub_fd;
        die("publisher connect");
    }
    ep_add(pub_fd, EPOLLIN, ID_PUB);
    int64_t settle_until = now_ns() + o.settle_ms * 1000000LL;
    while (now_ns() < settle_until && !stop_requested)
        poll_once(50);

    /* Phase 3: publish at the rate, timed by a timerfd. */
    uint64_t total = (uint64_t)(o.rate * o.seconds + 0.5);
    pub_lat = calloc(total + 1, sizeof *pub_lat);
    timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    long period_ns = 1000000000L / o.rate;
    struct itimerspec its = {.it_interval = {period_ns / 1000000000L, period_ns % 1000000000L},
                             .it_value = {0, 1}};
    ep_add(timer_fd, EPOLLIN, ID_TIMER);
    timerfd_settime(timer_fd, 0, &its, NULL);
    double cpu0 = server_cpu(), self0 = self_cpu();
    int64_t pub_start = now_ns();
    subs_complete = 0;
    uint64_t seq = 0;
    uint64_t delivered0 = total_delivered;
    n_lat = 0;
    /* Bounded: publishing takes SECONDS; a publisher stuck behind LOAD_PUB_BACKLOG replies or
     * 3 x SECONDS gives up. */
    int64_t pub_deadline = pub_start + (int64_t)(o.seconds * 3e9) + 1000000000LL;
    while (seq < total && !stop_requested && now_ns() < pub_deadline) {
        poll_once(100);
        while (timer_due > 0 && seq < total && seq - pub_replies < LOAD_PUB_BACKLOG) {
            timer_due--;
            pub_send(++seq);
        }
    }
    close(timer_fd);
    int64_t pub_end = now_ns();

    /* Phase 4: drain until every live subscriber has everything, bounded by --drain-ms. */
    int64_t drain_until = pub_end + o.drain_ms * 1000000LL;
    while (!stop_requested && now_ns() < drain_until &&
           (subs_complete < (uint64_t)connected || pub_replies < published))
        poll_once(10);
    double cpu1 = server_cpu(), self1 = self_cpu();
    int64_t end = last_delivery_ns > pub_start ? last_delivery_ns : now_ns();

    /* Verdict. */
    uint64_t deliveries = total_delivered - delivered0;
    /* late: messages after the last one a subscriber received, not there by the deadline. */
    uint64_t skipped = 0, late = 0, gaps = 0, dups = 0, failed_subs = 0, dropped = 0;
    for (long i = 0; i < o.conns; i++) {
        sub_t *s = &subs[i];
        uint64_t tail = s->next_seq - 1 < published ? published - (s->next_seq - 1) : 0;
        skipped += s->skipped;
        late += tail;
        gaps += s->gaps;
        dups += s->dups;
        if (s->state != SUB_STREAM)
            dropped++;
        if (s->skipped + tail > 0 || s->dups > 0 || s->state != SUB_STREAM ||
            s->received != published)
            failed_subs++;
    }
    qsort(lat, n_lat, sizeof *lat, cmp_u32);
    size_t n_pub = pub_replies < total ? pub_replies : total;
    qsort(pub_lat, n_pub, sizeof *pub_lat, cmp_u32);
    double secs = (double)(end - pub_start) / 1e9;
    double cpu = cpu1 - cpu0;
    printf("sse subscribers=%ld rate=%ld seconds=%.1f published=%llu pub_errors=%llu "
           "deliveries=%llu expected=%llu elapsed=%.3f deliveries_per_s=%.0f p50_ms=%.3f "
           "p90_ms=%.3f p99_ms=%.3f max_ms=%.3f pub_p50_ms=%.3f pub_p99_ms=%.3f pub_max_ms=%.3f "
           "server_cpu_s=%.2f cpu_us_per_delivery=%.3f "
           "loadgen_cpu_s=%.2f failed_subscribers=%llu skipped=%llu gaps=%llu late=%llu dups=%llu "
           "dropped=%llu\n",
           o.conns, o.rate, o.seconds, (unsigned long long)published,
           (unsigned long long)pub_errors, (unsigned long long)deliveries,
           (unsigned long long)(published * (uint64_t)o.conns), secs,
           secs > 0 ? (double)deliveries / secs : 0, pct_ms(lat, n_lat, 50), pct_ms(lat, n_lat, 90),
           pct_ms(lat, n_lat, 99), pct_ms(lat, n_lat, 100), pct_ms(pub_lat, n_pub, 50),
           pct_ms(pub_lat, n_pub, 99), pct_ms(pub_lat, n_pub, 100), cpu,
           deliveries ? cpu * 1e6 / (double)deliveries : -1, self1 - self0,
           (unsigned long long)failed_subs, (unsigned long long)skipped, (unsigned long long)gaps,
           (unsigned long long)late, (unsigned long long)dups, (unsigned long long)dropped);
    if (pub_errors > 0)
        printf("failure publisher errors=%llu first: %s\n", (unsigned long long)pub_errors,
               pub_first_error);
    if (published < total)
        printf("failure publisher sent %llu of %llu messages in time (replies %llu)\n",
               (unsigned long long)published, (unsigned long long)total,
               (unsigned long long)pub_replies);
    int shown = 0;
    for (long i = 0; i < o.conns && shown < LOAD_MAX_FAILS; i++) {
        sub_t *s = &subs[i];
        uint64_t tail = s->next_seq - 1 < published ? published - (s->next_seq - 1) : 0;
        if (s->skipped + tail == 0 && s->dups == 0 && s->state == SUB_STREAM &&
            s->received == published)
            continue;
        printf("failure subscriber=%ld received=%llu of %llu skipped=%llu in %llu gaps, "
               "late=%llu, dups_or_reordered=%llu, stream %s\n",
               i, (unsigned long long)s->received, (unsigned long long)published,
               (unsigned long long)s->skipped, (unsigned long long)s->gaps,
               (unsigned long long)tail, (unsigned long long)s->dups,
               s->state == SUB_STREAM ? "open" : s->why);
        shown++;
    }
    return failed_subs == 0 && pub_errors == 0 && published == total ? 0 : 1;
}
