/*
 * Shared scaffolding of the edge load generators: see load_common.h.
 */
#define _GNU_SOURCE
#include "load_common.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
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

load_opts_t lo = {
    .prog = "herald-load",
    .clients = "clients",
    .host = "127.0.0.1",
    .conns = 1000,
    .rate = 50,
    .seconds = 10,
    .hold = 30,
    .settle_ms = 1000,
    .drain_ms = 30000,
    .connect_timeout_ms = 60000,
    .burst = 256,
};
char load_rbuf[LOAD_READ_BUF];
int load_ep = -1;
void (*load_on_conn)(long i, uint32_t events, int64_t t);
void (*load_on_poll)(int64_t t);
int load_stop_requested;
long load_ready, load_closed, load_in_flight;

uint64_t load_total_msgs, load_complete, load_delivered;
int64_t load_last_delivery_ns;
load_samples_t load_lat;

const load_publisher_t *load_pub = &load_http_publisher;
uint64_t load_published, load_pub_replies, load_pub_errors;
static int64_t pub_sent_ns[LOAD_PUB_BACKLOG]; /* by (seq - 1) % LOAD_PUB_BACKLOG */
static uint32_t *pub_lat;                     /* reply latency per publish, microseconds */
static char pub_first_error[200];

static int timer_fd = -1;
static uint64_t timer_due; /* publish ticks not yet acted on */

/* ---- basics ------------------------------------------------------------------------------- */

int64_t load_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void load_die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", lo.prog, what, strerror(errno));
    exit(1);
}

double load_server_cpu(void)
{
    double ticks = 0;
    for (int i = 0; i < lo.n_pids; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", lo.pids[i]);
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

double load_self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* ---- latency samples ---------------------------------------------------------------------- */

void load_samples_add(load_samples_t *s, int64_t ns)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1 << 20;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        if (s->v == NULL)
            load_die("realloc");
    }
    int64_t us = ns / 1000;
    s->v[s->n++] = us < 0 ? 0 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

void load_sort(uint32_t *v, size_t n)
{
    if (n > 0)
        qsort(v, n, sizeof *v, cmp_u32);
}

double load_pct_ms(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return -1;
    return (double)v[(size_t)(p / 100.0 * (double)(n - 1) + 0.5)] / 1000.0;
}

/* ---- epoll and sockets -------------------------------------------------------------------- */

void load_ep_add(int fd, uint32_t events, uint64_t id)
{
    struct epoll_event ev = {.events = events, .data.u64 = id};
    if (epoll_ctl(load_ep, EPOLL_CTL_ADD, fd, &ev) != 0)
        load_die("epoll_ctl add");
}

void load_ep_mod(int fd, uint32_t events, uint64_t id)
{
    struct epoll_event ev = {.events = events, .data.u64 = id};
    if (epoll_ctl(load_ep, EPOLL_CTL_MOD, fd, &ev) != 0)
        load_die("epoll_ctl mod");
}

int load_tcp_socket(long index, bool nodelay)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        load_die("socket");
    if (lo.n_sources > 0) {
        /* Pick the port at connect time, per destination: bind() alone would reserve one
         * port per source address for any destination. */
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_addr = lo.sources[index % lo.n_sources]};
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
            load_die("bind source address");
    }
    if (nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lo.port)};
    inet_pton(AF_INET, lo.host, &dst.sin_addr);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0 && errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

void load_out_append(load_out_t *o, const void *data, size_t n)
{
    if (o->len + n > o->cap) {
        o->cap = (o->len + n) * 2;
        o->p = realloc(o->p, o->cap);
        if (o->p == NULL)
            load_die("realloc");
    }
    memcpy(o->p + o->len, data, n);
    o->len += n;
}

bool load_out_flush(load_out_t *o, int fd, uint64_t id, uint32_t events)
{
    size_t off = 0;
    while (off < o->len) {
        ssize_t n = write(fd, o->p + off, o->len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                return false;
            break;
        }
        off += (size_t)n;
    }
    memmove(o->p, o->p + off, o->len - off);
    o->len -= off;
    bool want = o->len > 0;
    if (want != o->armed) {
        load_ep_mod(fd, events | (want ? EPOLLOUT : 0), id);
        o->armed = want;
    }
    return true;
}

void load_out_free(load_out_t *o)
{
    free(o->p);
    *o = (load_out_t){0};
}

/* ---- HTTP --------------------------------------------------------------------------------- */

bool load_header_value(const char *h, const char *end, const char *name, char *out, size_t cap)
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

int load_http_status(const char *head)
{
    int status = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    return status;
}

/* ---- messages and the delivery check ------------------------------------------------------ */

void load_seq_init(load_seq_t *s)
{
    *s = (load_seq_t){.next_seq = 1};
}

void load_got(load_seq_t *s, uint64_t seq, int64_t sent, int64_t t)
{
    s->received++;
    load_delivered++;
    load_last_delivery_ns = t;
    load_samples_add(&load_lat, t - sent);
    if (seq == s->next_seq) {
        s->next_seq++;
    } else if (seq > s->next_seq) {
        s->gaps++;
        s->skipped += seq - s->next_seq;
        s->next_seq = seq + 1;
    } else {
        s->dups++;
    }
    if (load_total_msgs > 0 && seq == load_total_msgs && s->next_seq == load_total_msgs + 1)
        load_complete++;
}

uint64_t load_seq_late(const load_seq_t *s)
{
    return s->next_seq - 1 < load_published ? load_published - (s->next_seq - 1) : 0;
}

bool load_seq_ok(const load_seq_t *s, bool open)
{
    return s->skipped + load_seq_late(s) == 0 && s->dups == 0 && open &&
           s->received == load_published;
}

bool load_parse_pair(const char *p, const char *end, uint64_t *seq, int64_t *sent)
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

size_t load_scan_messages(load_seq_t *s, const char *p, size_t len, int64_t t)
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
            if (load_parse_pair(q, end, &seq, &sent))
                load_got(s, seq, sent, t), found++;
            q = memmem(q, (size_t)(end - q), key, sizeof key - 1);
        }
        return found;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        if (load_parse_pair(p, stop, &seq, &sent))
            load_got(s, seq, sent, t), found++;
        p = nl ? nl + 1 : end;
    }
    return found;
}

void load_verdict_add(load_verdict_t *v, const load_seq_t *s, bool open)
{
    v->skipped += s->skipped;
    v->late += load_seq_late(s);
    v->gaps += s->gaps;
    v->dups += s->dups;
    v->dropped += !open;
    v->failed += !load_seq_ok(s, open);
}

/* ---- the HTTP publisher ------------------------------------------------------------------- */

static int pub_fd = -1;
static load_out_t pub_out;
static char pub_in[65536];
static size_t pub_in_len;

static void http_pub_open(void)
{
    int port = lo.port;
    if (lo.pub_port > 0)
        lo.port = lo.pub_port;
    pub_fd = load_tcp_socket(0, true);
    lo.port = port;
    if (pub_fd < 0) {
        errno = -pub_fd;
        load_die("publisher connect");
    }
    load_ep_add(pub_fd, EPOLLIN, LOAD_ID_PUB);
}

static bool http_pub_ready(void)
{
    return true;
}

static void http_pub_flush(void)
{
    if (!load_out_flush(&pub_out, pub_fd, LOAD_ID_PUB, EPOLLIN))
        load_die("publisher write");
}

static void http_pub_send(uint64_t seq)
{
    char body[64 + 256], head[512];
    int64_t t = load_now_ns();
    int bl = load_pub_body(body, sizeof body, seq, t);
    int hl = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %d\r\n\r\n",
                      lo.pub_path, lo.host, lo.port, bl);
    load_out_append(&pub_out, head, (size_t)hl);
    load_out_append(&pub_out, body, (size_t)bl);
    load_pub_sent(seq, t);
    http_pub_flush();
}

/* Consume complete responses (Content-Length framed) from pub_in. */
static void http_pub_parse(void)
{
    for (;;) {
        pub_in[pub_in_len < sizeof pub_in ? pub_in_len : sizeof pub_in - 1] = '\0';
        char *end = memmem(pub_in, pub_in_len, "\r\n\r\n", 4);
        if (end == NULL)
            return;
        int status = load_http_status(pub_in);
        char v[64];
        size_t clen = load_header_value(pub_in, end, "content-length:", v, sizeof v)
                          ? strtoul(v, NULL, 10)
                          : 0;
        size_t total = (size_t)(end + 4 - pub_in) + clen;
        if (total > pub_in_len)
            return;
        /* Replies come in request order (HTTP/1.1 pipelining). */
        if (status < 200 || status > 299)
            load_pub_failed("status %d body %.*s", status, (int)(clen < 120 ? clen : 120), end + 4);
        else
            load_pub_replied();
        memmove(pub_in, pub_in + total, pub_in_len - total);
        pub_in_len -= total;
    }
}

static void http_pub_event(uint32_t events)
{
    if (events & EPOLLOUT)
        http_pub_flush();
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        ssize_t n = read(pub_fd, pub_in + pub_in_len, sizeof pub_in - 1 - pub_in_len);
        if (n == 0) {
            fprintf(stderr, "%s: the publish connection was closed by the server\n", lo.prog);
            exit(1);
        }
        if (n < 0) {
            if (errno == EAGAIN)
                return;
            load_die("publisher read");
        }
        pub_in_len += (size_t)n;
        http_pub_parse();
        if (pub_in_len == sizeof pub_in - 1) {
            fprintf(stderr, "%s: publish response too large\n", lo.prog);
            exit(1);
        }
    }
}

const load_publisher_t load_http_publisher = {
    .open = http_pub_open,
    .ready = http_pub_ready,
    .send = http_pub_send,
    .event = http_pub_event,
};

int load_pub_body(char *buf, size_t cap, uint64_t seq, int64_t t)
{
    int bl = snprintf(buf, cap < 64 ? cap : 64, "%llu %lld%s", (unsigned long long)seq,
                      (long long)t, lo.body_nl ? "\n" : "");
    for (int i = 0; i < lo.body_pad && bl < (int)cap - 1; i++)
        buf[bl++] = i == 0 ? ' ' : 'x';
    return bl;
}

void load_pub_sent(uint64_t seq, int64_t t)
{
    pub_sent_ns[(seq - 1) % LOAD_PUB_BACKLOG] = t;
    load_published = seq;
}

void load_pub_replied(void)
{
    int64_t us = (load_now_ns() - pub_sent_ns[load_pub_replies % LOAD_PUB_BACKLOG]) / 1000;
    if (pub_lat != NULL && load_pub_replies < load_total_msgs)
        pub_lat[load_pub_replies] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
    load_pub_replies++;
}

void load_pub_failed(const char *fmt, ...)
{
    load_pub_replied();
    if (load_pub_errors++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pub_first_error, sizeof pub_first_error, fmt, ap);
        va_end(ap);
    }
}

/* ---- options ------------------------------------------------------------------------------ */

void load_parse_list(const char *arg, void (*add)(const char *item))
{
    char *copy = strdup(arg), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        add(tok);
    free(copy);
}

static void add_source(const char *item)
{
    if (lo.n_sources == LOAD_MAX_SOURCES ||
        inet_pton(AF_INET, item, &lo.sources[lo.n_sources]) != 1) {
        fprintf(stderr, "%s: bad --sources entry '%s'\n", lo.prog, item);
        exit(2);
    }
    lo.n_sources++;
}

static void add_pid(const char *item)
{
    if (lo.n_pids == LOAD_MAX_PIDS) {
        fprintf(stderr, "%s: too many --cpu-pids\n", lo.prog);
        exit(2);
    }
    lo.pids[lo.n_pids++] = atoi(item);
}

void load_parse_args(int argc, char **argv, bool (*extra)(const char *a, const char *v),
                     void (*usage)(void))
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            usage();
        i++;
        if (strcmp(a, "--host") == 0)
            lo.host = v;
        else if (strcmp(a, "--port") == 0)
            lo.port = atoi(v);
        else if (strcmp(a, "--sub-path") == 0)
            lo.sub_path = v;
        else if (strcmp(a, "--pub-path") == 0)
            lo.pub_path = v;
        else if (strcmp(a, "--pub-port") == 0)
            lo.pub_port = atoi(v);
        else if (strcmp(a, "--conns") == 0)
            lo.conns = atol(v);
        else if (strcmp(a, "--rate") == 0)
            lo.rate = atol(v);
        else if (strcmp(a, "--seconds") == 0)
            lo.seconds = atof(v);
        else if (strcmp(a, "--settle-ms") == 0)
            lo.settle_ms = atol(v);
        else if (strcmp(a, "--drain-ms") == 0)
            lo.drain_ms = atol(v);
        else if (strcmp(a, "--connect-timeout-ms") == 0)
            lo.connect_timeout_ms = atol(v);
        else if (strcmp(a, "--connect-burst") == 0)
            lo.burst = atol(v);
        else if (strcmp(a, "--sources") == 0)
            load_parse_list(v, add_source);
        else if (strcmp(a, "--cpu-pids") == 0)
            load_parse_list(v, add_pid);
        else if (strcmp(a, "--hold") == 0)
            lo.hold = atof(v);
        else if (extra == NULL || !extra(a, v))
            usage();
    }
    if (lo.port <= 0 || lo.conns <= 0 || lo.rate <= 0 || lo.seconds <= 0 || lo.burst <= 0)
        usage();
}

void load_usage_common(const char *idle)
{
    fprintf(stderr,
            "  --host ADDR             server IPv4 address (127.0.0.1)\n"
            "  --conns N               %s (%ld)\n"
            "  --pub-path TARGET       POST target for publishing; absent: %s mode\n"
            "  --pub-port PORT         the publisher's port, when not --port\n"
            "  --rate R                messages/s (%ld)\n"
            "  --seconds S             seconds of publishing (%g)\n"
            "  --settle-ms MS          wait after every client is ready, before publishing (%ld)\n"
            "  --drain-ms MS           wait for deliveries after the last publish (%ld)\n"
            "  --connect-timeout-ms MS bound on opening every client (%ld)\n"
            "  --connect-burst N       connects in flight at once (%ld)\n"
            "  --sources A,B,...       local source addresses, round-robin\n"
            "  --cpu-pids P,Q,...      server processes whose CPU time is measured\n"
            "  --hold S                %s mode: seconds to hold the %s (%g)\n",
            lo.clients, lo.conns, idle, lo.rate, lo.seconds, lo.settle_ms, lo.drain_ms,
            lo.connect_timeout_ms, lo.burst, idle, lo.clients, lo.hold);
}

/* ---- the main loop ------------------------------------------------------------------------ */

void load_init(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* Every client is a descriptor: take the hard limit. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)lo.conns + 64) {
        fprintf(stderr, "%s: %ld %s need ulimit -n >= %ld (it is %llu)\n", lo.prog, lo.conns,
                lo.clients, lo.conns + 64, (unsigned long long)rl.rlim_cur);
        exit(2);
    }
    load_ep = epoll_create1(EPOLL_CLOEXEC);
    if (load_ep < 0)
        load_die("epoll_create1");
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    load_ep_add(sfd, EPOLLIN, LOAD_ID_SIGNAL);
}

int load_poll_once(int timeout_ms)
{
    struct epoll_event evs[1024];
    int n = epoll_wait(load_ep, evs, 1024, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return 0;
        load_die("epoll_wait");
    }
    int64_t t = load_now_ns();
    for (int k = 0; k < n; k++) {
        uint64_t id = evs[k].data.u64;
        if (id == LOAD_ID_PUB) {
            load_pub->event(evs[k].events);
        } else if (id == LOAD_ID_TIMER) {
            uint64_t exp;
            if (read(timer_fd, &exp, sizeof exp) == sizeof exp)
                timer_due += exp;
        } else if (id == LOAD_ID_SIGNAL) {
            load_stop_requested = 1;
        } else {
            load_on_conn((long)id, evs[k].events, t);
        }
    }
    if (load_on_poll != NULL)
        load_on_poll(n > 0 ? load_now_ns() : t);
    return n;
}

static int64_t t_start;
static double connect_s;

void load_connect_all(void (*start)(long i))
{
    long next = 0;
    t_start = load_now_ns();
    int64_t deadline = t_start + lo.connect_timeout_ms * 1000000LL;
    for (;;) {
        while (next < lo.conns && load_in_flight < lo.burst)
            start(next++);
        if (load_ready + load_closed >= lo.conns || load_now_ns() >= deadline ||
            load_stop_requested)
            break;
        load_poll_once(100);
    }
    connect_s = (double)(load_now_ns() - t_start) / 1e9;
    printf("connected n=%ld of=%ld seconds=%.2f failed=%ld\n", load_ready, lo.conns, connect_s,
           load_closed);
    fflush(stdout);
}

double load_hold(void)
{
    int64_t until = load_now_ns() + (int64_t)(lo.hold * 1e9);
    while (!load_stop_requested && load_now_ns() < until)
        load_poll_once(200);
    return (double)(load_now_ns() - t_start) / 1e9 - connect_s;
}

void load_publish_and_drain(load_window_t *w)
{
    /* Settle, so every subscription is live at the server (Herald asks the broker for the
     * topic's head first), with the publisher connected. */
    load_pub->open();
    int64_t settle_until = load_now_ns() + lo.settle_ms * 1000000LL;
    int64_t ready_until = settle_until + 10000000000LL;
    while (!load_stop_requested &&
           (load_now_ns() < settle_until || (!load_pub->ready() && load_now_ns() < ready_until)))
        load_poll_once(50);
    if (!load_pub->ready()) {
        fprintf(stderr, "%s: the publisher did not become ready\n", lo.prog);
        exit(1);
    }

    /* Publish at the rate, timed by a timerfd. */
    uint64_t total = (uint64_t)((double)lo.rate * lo.seconds + 0.5);
    pub_lat = calloc(total + 1, sizeof *pub_lat);
    timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    long period_ns = 1000000000L / lo.rate;
    struct itimerspec its = {.it_interval = {period_ns / 1000000000L, period_ns % 1000000000L},
                             .it_value = {0, 1}};
    load_ep_add(timer_fd, EPOLLIN, LOAD_ID_TIMER);
    timerfd_settime(timer_fd, 0, &its, NULL);
    double cpu0 = load_server_cpu(), self0 = load_self_cpu();
    int64_t pub_start = load_now_ns();
    load_total_msgs = total;
    load_complete = 0;
    uint64_t seq = 0, delivered0 = load_delivered;
    load_lat.n = 0;
    /* Bounded: publishing takes SECONDS; a publisher stuck behind LOAD_PUB_BACKLOG replies or
     * 3 x SECONDS gives up. */
    int64_t pub_deadline = pub_start + (int64_t)(lo.seconds * 3e9) + 1000000000LL;
    while (seq < total && !load_stop_requested && load_now_ns() < pub_deadline) {
        load_poll_once(100);
        while (timer_due > 0 && seq < total && seq - load_pub_replies < LOAD_PUB_BACKLOG) {
            timer_due--;
            load_pub->send(++seq);
        }
    }
    close(timer_fd);
    int64_t pub_end = load_now_ns();

    /* Drain until every open client has everything, bounded by --drain-ms. */
    int64_t drain_until = pub_end + lo.drain_ms * 1000000LL;
    while (
        !load_stop_requested && load_now_ns() < drain_until &&
        (load_complete < (uint64_t)(lo.conns - load_closed) || load_pub_replies < load_published))
        load_poll_once(10);
    double cpu1 = load_server_cpu(), self1 = load_self_cpu();
    int64_t end = load_last_delivery_ns > pub_start ? load_last_delivery_ns : load_now_ns();

    load_sort(load_lat.v, load_lat.n);
    w->n_pub_lat = load_pub_replies < total ? load_pub_replies : total;
    w->pub_lat = pub_lat;
    load_sort(w->pub_lat, w->n_pub_lat);
    w->deliveries = load_delivered - delivered0;
    w->secs = (double)(end - pub_start) / 1e9;
    w->server_cpu = cpu1 - cpu0;
    w->self_cpu = self1 - self0;
}

void load_print_window(const load_window_t *w)
{
    const uint32_t *l = load_lat.v;
    size_t n = load_lat.n;
    printf(" published=%llu pub_errors=%llu deliveries=%llu expected=%llu elapsed=%.3f "
           "deliveries_per_s=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "pub_p50_ms=%.3f pub_p99_ms=%.3f pub_max_ms=%.3f server_cpu_s=%.2f "
           "cpu_us_per_delivery=%.3f loadgen_cpu_s=%.2f",
           (unsigned long long)load_published, (unsigned long long)load_pub_errors,
           (unsigned long long)w->deliveries,
           (unsigned long long)(load_published * (uint64_t)lo.conns), w->secs,
           w->secs > 0 ? (double)w->deliveries / w->secs : 0, load_pct_ms(l, n, 50),
           load_pct_ms(l, n, 90), load_pct_ms(l, n, 99), load_pct_ms(l, n, 100),
           load_pct_ms(w->pub_lat, w->n_pub_lat, 50), load_pct_ms(w->pub_lat, w->n_pub_lat, 99),
           load_pct_ms(w->pub_lat, w->n_pub_lat, 100), w->server_cpu,
           w->deliveries ? w->server_cpu * 1e6 / (double)w->deliveries : -1, w->self_cpu);
}

void load_print_verdict(const load_verdict_t *v, const char *failed_key)
{
    printf(" %s=%llu skipped=%llu gaps=%llu late=%llu dups=%llu dropped=%llu\n", failed_key,
           (unsigned long long)v->failed, (unsigned long long)v->skipped,
           (unsigned long long)v->gaps, (unsigned long long)v->late, (unsigned long long)v->dups,
           (unsigned long long)v->dropped);
}

bool load_print_pub_failures(void)
{
    if (load_pub_errors > 0)
        printf("failure publisher errors=%llu first: %s\n", (unsigned long long)load_pub_errors,
               pub_first_error);
    if (load_published < load_total_msgs)
        printf("failure publisher sent %llu of %llu messages in time (replies %llu)\n",
               (unsigned long long)load_published, (unsigned long long)load_total_msgs,
               (unsigned long long)load_pub_replies);
    return load_pub_errors == 0 && load_published == load_total_msgs;
}
