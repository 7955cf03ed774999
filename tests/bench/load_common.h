/*
 * Shared scaffolding of the edge load generators (herald-sse-load, herald-poll-load,
 * herald-ws-load; plain C, epoll, one thread): options common to all three, the epoll loop,
 * non-blocking connects from a set of source addresses, the per-client sequence check and
 * latency samples, the paced publisher (an HTTP POST publisher here; herald-ws-load adds a
 * WebSocket one behind the same interface), and server CPU sampling from /proc/PID/stat.
 *
 * A tool fills `lo` (defaults, then load_parse_args), sets load_on_conn to its handler for
 * client events (epoll ids 0..conns-1), calls load_init, opens its clients through
 * load_connect_all, and runs load_publish_and_drain (or load_hold for the idle mode).
 */
#ifndef HERALD_BENCH_LOAD_COMMON_H
#define HERALD_BENCH_LOAD_COMMON_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOAD_READ_BUF    (256 * 1024)
#define LOAD_MAX_SOURCES 16
#define LOAD_MAX_PIDS    16
#define LOAD_MAX_FAILS   10
/* Publishes awaiting a reply before the publisher counts as stuck. */
#define LOAD_PUB_BACKLOG 10000

/* Epoll ids: clients are 0..conns-1; these follow. */
#define LOAD_ID_PUB    ((uint64_t)1 << 40)
#define LOAD_ID_TIMER  (LOAD_ID_PUB + 1)
#define LOAD_ID_SIGNAL (LOAD_ID_PUB + 2)

typedef struct {
    const char *prog;    /* for messages: "herald-sse-load" */
    const char *clients; /* what a client is, plural: "streams" */
    const char *host;
    int port;
    int pub_port; /* the publisher's port when not `port` (0: `port`) */
    const char *sub_path, *pub_path;
    long conns, rate;
    double seconds, hold;
    long settle_ms, drain_ms, connect_timeout_ms, burst;
    struct in_addr sources[LOAD_MAX_SOURCES];
    int n_sources;
    int pids[LOAD_MAX_PIDS];
    int n_pids;
    int body_pad; /* extra bytes appended to each message body */
    bool body_nl; /* each message body ends with a newline */
} load_opts_t;

extern load_opts_t lo;
extern char load_rbuf[LOAD_READ_BUF]; /* one read buffer for every client */

/* ---- basics ------------------------------------------------------------------------------- */

int64_t load_now_ns(void);
void load_die(const char *what) __attribute__((noreturn));
double load_server_cpu(void); /* utime+stime of lo.pids (all threads), seconds */
double load_self_cpu(void);

/* ---- latency samples (microseconds) -------------------------------------------------------- */

typedef struct {
    uint32_t *v;
    size_t n, cap;
} load_samples_t;

void load_samples_add(load_samples_t *s, int64_t ns);
void load_sort(uint32_t *v, size_t n);
/* Percentile `p` of `n` sorted samples (microseconds), in ms; -1 when there are none. */
double load_pct_ms(const uint32_t *v, size_t n, double p);

/* ---- epoll and sockets -------------------------------------------------------------------- */

extern int load_ep;
void load_ep_add(int fd, uint32_t events, uint64_t id);
void load_ep_mod(int fd, uint32_t events, uint64_t id);
/* Non-blocking connect to lo.host:lo.port from source address index % n_sources; the
 * descriptor, or -errno when connect failed at once. */
int load_tcp_socket(long index, bool nodelay);

/* Output buffered until the socket takes it (EPOLLOUT armed meanwhile). */
typedef struct {
    char *p;
    size_t len, cap;
    bool armed; /* EPOLLOUT is in the registered events */
} load_out_t;

void load_out_append(load_out_t *o, const void *data, size_t n);
/* Write what the socket takes; arm EPOLLOUT (on top of `events`) while anything is left.
 * Returns false on a write error. */
bool load_out_flush(load_out_t *o, int fd, uint64_t id, uint32_t events);
void load_out_free(load_out_t *o);

/* ---- HTTP --------------------------------------------------------------------------------- */

/* Value of header `name` (with ':') in head [h, end), copied to out; false when absent. */
bool load_header_value(const char *h, const char *end, const char *name, char *out, size_t cap);
int load_http_status(const char *head); /* from "HTTP/1.x NNN"; 0 when absent */

/* ---- messages and the delivery check ------------------------------------------------------ */

/* What one client received. */
typedef struct {
    uint64_t next_seq; /* next expected seq; starts at 1 */
    uint64_t received;
    uint64_t gaps, skipped, dups; /* skipped: messages jumped over; dups: a seq at or below
                                     the last one (a duplicate or out of order) */
} load_seq_t;

extern uint64_t load_total_msgs; /* messages to publish; 0 until publishing starts */
extern uint64_t load_complete;   /* clients that have every message */
extern uint64_t load_delivered;  /* deliveries, every client */
extern int64_t load_last_delivery_ns;
extern load_samples_t load_lat; /* publish-to-delivery latency */

void load_seq_init(load_seq_t *s);
/* Client `s` received message `seq` sent at `sent` (CLOCK_MONOTONIC ns) at time `t`. */
void load_got(load_seq_t *s, uint64_t seq, int64_t sent, int64_t t);
/* Messages after the last one the client received that never came. */
uint64_t load_seq_late(const load_seq_t *s);
/* Every message once, in order, and the client still open. */
bool load_seq_ok(const load_seq_t *s, bool open);
/* "SEQ SENT" at p; false when p holds no digits. */
bool load_parse_pair(const char *p, const char *end, uint64_t *seq, int64_t *sent);
/* Every message in text: after each "data":" or, when there is none, one per line. */
size_t load_scan_messages(load_seq_t *s, const char *p, size_t len, int64_t t);

typedef struct {
    uint64_t skipped, late, gaps, dups, failed, dropped;
} load_verdict_t;

void load_verdict_add(load_verdict_t *v, const load_seq_t *s, bool open);

/* ---- the publisher -------------------------------------------------------------------------- */

/* How messages are published; events on LOAD_ID_PUB go to `event`. */
typedef struct {
    void (*open)(void);         /* connect (during the settle phase) */
    bool (*ready)(void);        /* may publish now */
    void (*send)(uint64_t seq); /* publish message `seq` now */
    void (*event)(uint32_t events);
} load_publisher_t;

extern const load_publisher_t load_http_publisher; /* POST lo.pub_path, keep-alive, pipelined */
extern const load_publisher_t *load_pub;           /* the one in use (default: HTTP) */

extern uint64_t load_published, load_pub_replies, load_pub_errors;

/* The body of message `seq` sent at `t`: "SEQ SENT_NS", then the --pad bytes or a newline. */
int load_pub_body(char *buf, size_t cap, uint64_t seq, int64_t t);
void load_pub_sent(uint64_t seq, int64_t t);
/* The reply to the oldest unanswered publish (replies come in order): a success, or a failure
 * described printf-style. */
void load_pub_replied(void);
void load_pub_failed(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- the main loop -------------------------------------------------------------------------- */

/* Client i became readable/writable (events) at time t. */
extern void (*load_on_conn)(long i, uint32_t events, int64_t t);
/* Optional: called after every poll with the time (reconnects, progress checks). */
extern void (*load_on_poll)(int64_t t);
extern int load_stop_requested;
/* Clients: ready (connected, or their first request sent), closed, and connects in flight;
 * maintained by the tool. */
extern long load_ready, load_closed, load_in_flight;

/* Parse argv: the options every tool has, and `extra` for the tool's own (it returns false for
 * an unknown one); `usage` on anything wrong. Checks the common numeric options. */
void load_parse_args(int argc, char **argv, bool (*extra)(const char *a, const char *v),
                     void (*usage)(void));
void load_parse_list(const char *arg, void (*add)(const char *item));
/* The usage lines of the common options; `idle` names the mode without --pub-path. */
void load_usage_common(const char *idle);
/* SIGPIPE ignored, descriptor limit raised (exit 2 when too low), epoll, signalfd. */
void load_init(void);
int load_poll_once(int timeout_ms);
/* Start clients (`start(i)`, at most lo.burst in flight) until every one is ready or closed,
 * or the connect timeout passed; prints "connected n=READY of=N seconds=S failed=CLOSED". */
void load_connect_all(void (*start)(long i));
/* Idle mode: poll until --hold seconds passed or SIGTERM/SIGINT; returns the seconds held. */
double load_hold(void);

/* The measured window of a publish run. */
typedef struct {
    uint64_t deliveries;
    double secs;       /* first publish to last delivery */
    double server_cpu; /* seconds of the --cpu-pids meanwhile */
    double self_cpu;
    size_t n_pub_lat;
    uint32_t *pub_lat; /* sorted reply latencies */
} load_window_t;

/* Settle with the publisher open, publish lo.rate messages/s for lo.seconds, drain until every
 * open client has every message (or --drain-ms passed); samples sorted. */
void load_publish_and_drain(load_window_t *w);
/* The key=value pairs every tool reports, from published= to loadgen_cpu_s=, with a leading
 * space and no newline. */
void load_print_window(const load_window_t *w);
/* " failed_KEY=.. skipped=.. gaps=.. late=.. dups=.. dropped=..\n" */
void load_print_verdict(const load_verdict_t *v, const char *failed_key);
/* "failure publisher ..." lines; true when the publisher had no trouble. */
bool load_print_pub_failures(void);

#endif
