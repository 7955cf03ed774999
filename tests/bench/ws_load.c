/*
 * herald-ws-load — WebSocket load generator for tests/bench/edge_ws.sh (Herald's GET /v1/ws and
 * Nchan's websocket subscriber and publisher alike; plain C, epoll, one thread). The shared
 * scaffolding (options, epoll loop, connects, delivery check, latency, paced publisher, CPU
 * sampling) is load_common.c; this file is the RFC 6455 client side: the opening handshake,
 * masked client frames, reading server frames (fragments, pings answered with pongs, close).
 *
 *   herald-ws-load --port PORT --sub-path TARGET --conns N [options]          (fan-out / idle)
 *   herald-ws-load --mode publish --port PORT --pub-ws TARGET --conns N [options]
 *
 * Fan-out (--mode sub, the default): opens N WebSocket connections to TARGET (at most
 * --connect-burst connects in flight, round-robin over the --sources addresses). Once every one
 * answered 101 and --settle-ms have passed, it publishes RATE messages/s for SECONDS, each
 * message's data being "SEQ SENT_NS" (CLOCK_MONOTONIC just before it was written): over one
 * WebSocket connection to --pub-ws when given, else as HTTP POSTs to --pub-path (keep-alive,
 * pipelined). A publish is a Herald frame {"type":"publish","topic":T,"data":"SEQ SENT_NS"}
 * (--frame herald, --topic T) or the data itself (--frame raw: Nchan's websocket publisher,
 * where the channel is in the URL). Every text frame a subscriber receives is a Herald frame
 * ({"type":"message",...,"data":"SEQ SENT_NS",...}; `subscribed` frames are counted, any other
 * type is reported) or, not starting with {"type":", the raw data (Nchan). Latency is receive
 * time minus SENT_NS; afterwards it checks that every subscriber received every message once,
 * in order. Without --pub-ws and --pub-path it is the idle mode: connect, print "connected ...",
 * hold --hold seconds (or until SIGTERM/SIGINT), answering pings.
 *
 * Publish throughput (--mode publish): N connections, connection i to --pub-ws with "%d"
 * replaced by i mod --topics, each sending publish frames of --bytes bytes of data ("%d" in
 * --topic likewise) and keeping --window of them in flight: a new one goes out for every
 * answer. Herald answers each with `published` (after the broker's commit) or `error`; Nchan's
 * websocket publisher answers each message with a text frame (its channel info). After every
 * connection is open it publishes --warmup-ms unmeasured, then counts answers for SECONDS.
 *
 * Output: "connected n=N of=N seconds=S failed=F", then for fan-out one "ws ..." line of
 * key=value pairs like herald-sse-load's (deliveries_per_s, p50_ms ... max_ms, pub_p50_ms,
 * server_cpu_s, cpu_us_per_delivery, loadgen_cpu_s, subscribed_frames, other_frames,
 * failed_subscribers, skipped, gaps, late, dups, dropped), for publish mode one "publish ..."
 * line (acked, publishes_per_s, ack_p50_ms, ack_p99_ms, ack_max_ms, errors, server_cpu_s,
 * cpu_us_per_publish, loadgen_cpu_s, dropped); then up to 10 "failure ..." lines. Exit 0 when
 * every subscriber got every message once and in order (publish mode: no errors and no
 * connection lost; idle mode: every connection open), 1 otherwise, 2 on bad usage.
 */
#define _GNU_SOURCE
#include "load_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* RFC 6455 §1.3's example: this key's Sec-WebSocket-Accept is the value below. */
#define WS_KEY      "dGhlIHNhbXBsZSBub25jZQ=="
#define WS_ACCEPT   "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define WS_HEAD_MAX 4096
#define WS_MSG_MAX  (1 << 20) /* longest message kept; longer ones fail the connection */

enum ws_op { OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };
enum ws_state { WS_CONNECTING, WS_HANDSHAKE, WS_OPEN, WS_CLOSED };
enum { MODE_SUB, MODE_PUBLISH };
enum { FRAME_HERALD, FRAME_RAW };

typedef struct {
    int fd;
    uint8_t state;    /* enum ws_state */
    uint8_t hlen;     /* frame header bytes gathered in hdr */
    uint8_t frame_op; /* opcode of the frame being received */
    uint8_t msg_op;   /* opcode of the data message being received */
    bool in_frame;    /* header complete, `left` payload bytes to come */
    bool frame_fin;
    uint8_t ctl_len;
    uint8_t hdr[14];
    uint16_t close_code;
    uint64_t left;
    char *msg; /* the handshake answer, or a data message split over reads or frames */
    size_t msg_len, msg_cap;
    load_out_t out;
    load_seq_t seq;
    const char *why; /* for WS_CLOSED */
    /* publish mode */
    uint64_t sent, acked;
    int64_t *sent_ns; /* by index % window */
    char *frame;      /* this connection's publish frame, masked */
    size_t frame_len;
    char ctl[125];
} ws_t;

static struct {
    int mode, frame;
    const char *pub_ws, *topic, *subprotocol;
    long topics, window, bytes, warmup_ms;
} wo = {
    .mode = MODE_SUB,
    .frame = FRAME_HERALD,
    .topics = 100,
    .window = 512,
    .bytes = 100,
    .warmup_ms = 1000,
};

static ws_t *conns;
static ws_t pubws = {.fd = -1}; /* fan-out publisher over a WebSocket */
static uint64_t subscribed_frames, other_frames;
static char first_other[200];

/* publish mode */
static bool sending, measuring;
static uint64_t acks_total, pub_errs;
static load_samples_t ack_lat;
static char first_err[200];

static const uint8_t mask_key[4] = {0x37, 0xfa, 0x21, 0x3d};

/* tmpl with its first "%d" replaced by n. */
static void subst(char *out, size_t cap, const char *tmpl, long n)
{
    const char *d = strstr(tmpl, "%d");
    if (d == NULL)
        snprintf(out, cap, "%s", tmpl);
    else
        snprintf(out, cap, "%.*s%ld%s", (int)(d - tmpl), tmpl, n, d + 2);
}

/* A masked client frame (RFC 6455 §5.2), FIN set. */
static void ws_frame(load_out_t *o, int op, const char *payload, size_t len)
{
    uint8_t h[14];
    size_t hl = 0;
    h[hl++] = (uint8_t)(0x80 | op);
    if (len < 126) {
        h[hl++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        h[hl++] = 0x80 | 126;
        h[hl++] = (uint8_t)(len >> 8);
        h[hl++] = (uint8_t)len;
    } else {
        h[hl++] = 0x80 | 127;
        for (int k = 7; k >= 0; k--)
            h[hl++] = (uint8_t)((uint64_t)len >> (8 * k));
    }
    memcpy(h + hl, mask_key, 4);
    hl += 4;
    load_out_append(o, h, hl);
    size_t at = o->len;
    load_out_append(o, payload, len);
    for (size_t k = 0; k < len; k++)
        o->p[at + k] ^= (char)mask_key[k & 3];
}

static uint64_t ws_id(long i)
{
    return i < 0 ? LOAD_ID_PUB : (uint64_t)i;
}

static void ws_close(long i, ws_t *c, const char *why)
{
    if (c->state == WS_CLOSED)
        return;
    if (i < 0) {
        fprintf(stderr, "herald-ws-load: the publish connection: %s (close code %u)\n", why,
                c->close_code);
        exit(1);
    }
    if (c->state == WS_CONNECTING || c->state == WS_HANDSHAKE)
        load_in_flight--;
    if (c->state == WS_OPEN)
        load_ready--;
    c->state = WS_CLOSED;
    c->why = why;
    load_closed++;
    free(c->msg);
    c->msg = NULL;
    c->msg_len = c->msg_cap = 0;
    load_out_free(&c->out);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void ws_flush(long i, ws_t *c)
{
    if (c->state != WS_CLOSED && !load_out_flush(&c->out, c->fd, ws_id(i), EPOLLIN))
        ws_close(i, c, "write error");
}

static void msg_append(ws_t *c, const char *d, size_t n)
{
    if (c->msg_len + n + 1 > c->msg_cap) {
        c->msg_cap = (c->msg_len + n + 1) * 2;
        c->msg = realloc(c->msg, c->msg_cap);
        if (c->msg == NULL)
            load_die("realloc");
    }
    memcpy(c->msg + c->msg_len, d, n);
    c->msg_len += n;
    c->msg[c->msg_len] = '\0';
}

/* The frame type of a Herald frame ({"type":"X"...): X and its length; NULL for raw data. */
static const char *herald_type(const char *p, size_t len, size_t *tl)
{
    static const char pre[] = "{\"type\":\"";
    if (len < sizeof pre || memcmp(p, pre, sizeof pre - 1) != 0)
        return NULL;
    const char *s = p + sizeof pre - 1, *q = memchr(s, '"', len - (sizeof pre - 1));
    if (q == NULL)
        return NULL;
    *tl = (size_t)(q - s);
    return s;
}

static bool is_type(const char *type, size_t tl, const char *want)
{
    return type != NULL && tl == strlen(want) && memcmp(type, want, tl) == 0;
}

/* ---- publishing ------------------------------------------------------------------------- */

/* Publish-mode connection: one more publish frame in flight. */
static void pubconn_send_one(ws_t *c, int64_t t)
{
    c->sent_ns[c->sent % (uint64_t)wo.window] = t;
    c->sent++;
    load_out_append(&c->out, c->frame, c->frame_len);
}

static void pubconn_fill(long i, ws_t *c)
{
    int64_t t = load_now_ns();
    while (c->sent - c->acked < (uint64_t)wo.window)
        pubconn_send_one(c, t);
    ws_flush(i, c);
}

static void note_error(char *first, size_t cap, uint64_t *count, const char *p, size_t len)
{
    if ((*count)++ == 0)
        snprintf(first, cap, "%.*s", (int)(len < 150 ? len : 150), p);
}

/* An answer on a publish-mode connection. */
static void pubconn_answer(ws_t *c, const char *p, size_t len, int64_t t)
{
    size_t tl = 0;
    const char *type = herald_type(p, len, &tl);
    if (wo.frame == FRAME_HERALD && !is_type(type, tl, "published") && !is_type(type, tl, "error"))
        return; /* pong and the like */
    if (c->acked == c->sent)
        return; /* not an answer to a publish */
    if (measuring)
        load_samples_add(&ack_lat, t - c->sent_ns[c->acked % (uint64_t)wo.window]);
    c->acked++;
    acks_total++;
    if (is_type(type, tl, "error"))
        note_error(first_err, sizeof first_err, &pub_errs, p, len);
    if (sending)
        pubconn_send_one(c, t);
}

/* The fan-out publisher's answer. */
static void pubws_answer(const char *p, size_t len)
{
    size_t tl = 0;
    const char *type = herald_type(p, len, &tl);
    if (wo.frame == FRAME_HERALD && is_type(type, tl, "error"))
        load_pub_failed("%.*s", (int)(len < 150 ? len : 150), p);
    else if (wo.frame == FRAME_RAW || is_type(type, tl, "published"))
        load_pub_replied();
}

/* ---- receiving -------------------------------------------------------------------------- */

static void on_message(long i, ws_t *c, const char *p, size_t len, int64_t t)
{
    if (i < 0) {
        pubws_answer(p, len);
        return;
    }
    if (wo.mode == MODE_PUBLISH) {
        pubconn_answer(c, p, len, t);
        return;
    }
    size_t tl = 0;
    const char *type = herald_type(p, len, &tl);
    if (type == NULL || is_type(type, tl, "message"))
        load_scan_messages(&c->seq, p, len, t);
    else if (is_type(type, tl, "subscribed"))
        subscribed_frames++;
    else
        note_error(first_other, sizeof first_other, &other_frames, p, len);
}

static void on_control(long i, ws_t *c)
{
    if (c->frame_op == OP_PING) {
        ws_frame(&c->out, OP_PONG, c->ctl, c->ctl_len);
        ws_flush(i, c);
    } else if (c->frame_op == OP_CLOSE) {
        c->close_code =
            c->ctl_len >= 2 ? (uint16_t)((uint8_t)c->ctl[0] << 8 | (uint8_t)c->ctl[1]) : 0;
        ws_close(i, c, "closed by the server (close frame)");
    }
}

/* Header bytes gathered; true once the header is complete (then decoded into c). */
static bool frame_header(long i, ws_t *c)
{
    if (c->hlen < 2)
        return false;
    uint8_t l7 = c->hdr[1] & 0x7f;
    size_t need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
    if (c->hdr[1] & 0x80) {
        ws_close(i, c, "masked frame from the server");
        return false;
    }
    if (c->hlen < need)
        return false;
    uint64_t len = l7;
    if (l7 == 126)
        len = (uint64_t)c->hdr[2] << 8 | c->hdr[3];
    else if (l7 == 127)
        for (int k = 0; k < 8; k++)
            len = len << 8 | c->hdr[2 + k];
    c->frame_fin = (c->hdr[0] & 0x80) != 0;
    c->frame_op = c->hdr[0] & 0x0f;
    c->left = len;
    c->hlen = 0;
    c->in_frame = true;
    c->ctl_len = 0;
    if (c->frame_op >= OP_CLOSE && (len > 125 || !c->frame_fin)) {
        ws_close(i, c, "bad control frame");
        return false;
    }
    if (c->frame_op != OP_CONT && c->frame_op < OP_CLOSE) {
        c->msg_op = c->frame_op;
        c->msg_len = 0;
    }
    return true;
}

static void ws_bytes(long i, ws_t *c, const char *p, size_t n, int64_t t)
{
    const char *end = p + n;
    while (c->state == WS_OPEN && (p < end || (c->in_frame && c->left == 0))) {
        if (!c->in_frame) {
            while (p < end && c->hlen < sizeof c->hdr && !frame_header(i, c))
                c->hdr[c->hlen++] = (uint8_t)*p++;
            if (!c->in_frame && !frame_header(i, c))
                continue;
        }
        size_t k = (size_t)(end - p) < c->left ? (size_t)(end - p) : (size_t)c->left;
        bool control = c->frame_op >= OP_CLOSE;
        if (control) {
            memcpy(c->ctl + c->ctl_len, p, k);
            c->ctl_len += (uint8_t)k;
        } else if (!(c->frame_fin && c->msg_len == 0 && k == c->left)) {
            if (c->msg_len + k > WS_MSG_MAX) {
                ws_close(i, c, "message too large");
                return;
            }
            msg_append(c, p, k);
        }
        const char *frame_data = p;
        p += k;
        c->left -= k;
        if (c->left > 0)
            continue;
        c->in_frame = false;
        if (control)
            on_control(i, c);
        else if (c->frame_fin && c->msg_len == 0)
            on_message(i, c, frame_data, k, t); /* whole in this read: parsed in place */
        else if (c->frame_fin)
            on_message(i, c, c->msg, c->msg_len, t), c->msg_len = 0;
    }
}

/* ---- connections ------------------------------------------------------------------------ */

static void ws_connect(long i, ws_t *c)
{
    int fd = load_tcp_socket(i < 0 ? 0 : i, i < 0 || wo.mode == MODE_PUBLISH);
    c->fd = fd < 0 ? -1 : fd;
    c->state = WS_CONNECTING;
    if (i >= 0)
        load_in_flight++;
    if (fd < 0) {
        errno = -fd;
        ws_close(i, c, "connect failed");
        return;
    }
    load_ep_add(fd, EPOLLOUT, ws_id(i));
}

static void ws_start(long i)
{
    ws_t *c = &conns[i];
    load_seq_init(&c->seq);
    if (wo.mode == MODE_PUBLISH) {
        char topic[256], data[65536 + 1], frame[70000];
        long ti = i % wo.topics;
        subst(topic, sizeof topic, wo.topic ? wo.topic : "bench.%d", ti);
        memset(data, 'x', (size_t)wo.bytes);
        data[wo.bytes] = '\0';
        int fl =
            wo.frame == FRAME_RAW
                ? snprintf(frame, sizeof frame, "%s", data)
                : snprintf(frame, sizeof frame,
                           "{\"type\":\"publish\",\"topic\":\"%s\",\"data\":\"%s\"}", topic, data);
        load_out_t f = {0};
        ws_frame(&f, OP_TEXT, frame, (size_t)fl);
        c->frame = f.p;
        c->frame_len = f.len;
        c->sent_ns = calloc((size_t)wo.window, sizeof *c->sent_ns);
        if (c->sent_ns == NULL)
            load_die("calloc");
    }
    ws_connect(i, c);
}

/* Connected: send the opening handshake. */
static void ws_handshake(long i, ws_t *c)
{
    char target[1024], req[2048];
    const char *path = i < 0 || wo.mode == MODE_PUBLISH ? wo.pub_ws : lo.sub_path;
    subst(target, sizeof target, path, i < 0 ? 0 : i % wo.topics);
    char proto[128] = "";
    if (wo.subprotocol)
        snprintf(proto, sizeof proto, "Sec-WebSocket-Protocol: %s\r\n", wo.subprotocol);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: " WS_KEY "\r\n"
                     "Sec-WebSocket-Version: 13\r\n%s\r\n",
                     target, lo.host, lo.port, proto);
    if (write(c->fd, req, (size_t)n) != n) {
        ws_close(i, c, "request write failed");
        return;
    }
    c->state = WS_HANDSHAKE;
    load_ep_mod(c->fd, EPOLLIN, ws_id(i));
}

/* Handshake answer bytes; on 101 the connection is open and what follows are frames. */
static void ws_answer(long i, ws_t *c, const char *d, size_t n, int64_t t)
{
    size_t before = c->msg_len;
    msg_append(c, d, n);
    char *end = memmem(c->msg, c->msg_len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->msg_len > WS_HEAD_MAX)
            ws_close(i, c, "handshake answer too large");
        return;
    }
    char v[128];
    if (load_http_status(c->msg) != 101) {
        ws_close(i, c, "status not 101");
        return;
    }
    if (!load_header_value(c->msg, end, "sec-websocket-accept:", v, sizeof v) ||
        strcmp(v, WS_ACCEPT) != 0) {
        ws_close(i, c, "bad Sec-WebSocket-Accept");
        return;
    }
    size_t rest = (size_t)(end + 4 - c->msg) - before; /* offset in d of the first frame */
    c->msg_len = 0;
    c->state = WS_OPEN;
    if (i >= 0) {
        load_in_flight--;
        load_ready++;
    }
    if (wo.mode == MODE_PUBLISH && i >= 0 && sending)
        pubconn_fill(i, c);
    if (rest < n)
        ws_bytes(i, c, d + rest, n - rest, t);
}

static void ws_event(long i, ws_t *c, uint32_t events, int64_t t)
{
    if (c->state == WS_CLOSED)
        return;
    if (c->state == WS_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            ws_close(i, c, "connect failed");
            return;
        }
        ws_handshake(i, c);
        return;
    }
    if (events & EPOLLOUT) {
        ws_flush(i, c);
        if (c->state == WS_CLOSED)
            return;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return;
    ssize_t n = read(c->fd, load_rbuf, sizeof load_rbuf);
    if (n == 0) {
        ws_close(i, c,
                 c->close_code ? "closed by the server (close frame)" : "closed by the server");
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            ws_close(i, c, "read error");
        return;
    }
    if (c->state == WS_HANDSHAKE)
        ws_answer(i, c, load_rbuf, (size_t)n, t);
    else
        ws_bytes(i, c, load_rbuf, (size_t)n, t);
    if (c->out.len > 0)
        ws_flush(i, c);
}

static void conn_event(long i, uint32_t events, int64_t t)
{
    ws_event(i, &conns[i], events, t);
}

/* ---- the fan-out publisher over a WebSocket ----------------------------------------------- */

static void wspub_open(void)
{
    ws_connect(-1, &pubws);
}

static bool wspub_ready(void)
{
    return pubws.state == WS_OPEN;
}

static void wspub_send(uint64_t seq)
{
    char body[64 + 256], frame[512];
    int64_t t = load_now_ns();
    int bl = load_pub_body(body, sizeof body, seq, t);
    int fl = wo.frame == FRAME_RAW
                 ? snprintf(frame, sizeof frame, "%.*s", bl, body)
                 : snprintf(frame, sizeof frame,
                            "{\"type\":\"publish\",\"topic\":\"%s\",\"data\":\"%.*s\"}", wo.topic,
                            bl, body);
    ws_frame(&pubws.out, OP_TEXT, frame, (size_t)fl);
    load_pub_sent(seq, t);
    ws_flush(-1, &pubws);
}

static void wspub_event(uint32_t events)
{
    ws_event(-1, &pubws, events, load_now_ns());
}

static const load_publisher_t ws_publisher = {
    .open = wspub_open,
    .ready = wspub_ready,
    .send = wspub_send,
    .event = wspub_event,
};

/* ---- main ------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: herald-ws-load --port PORT --sub-path TARGET [options]     (fan-out, idle)\n"
            "       herald-ws-load --mode publish --port PORT --pub-ws TARGET [options]\n"
            "  --mode sub|publish      fan-out or idle (sub), or publish throughput (publish)\n"
            "  --pub-ws TARGET         WebSocket target to publish over (%%d: connection index\n"
            "                          mod --topics); fan-out without it publishes by HTTP POST\n"
            "                          to --pub-path\n"
            "  --frame herald|raw      publishes as Herald publish frames or raw data (herald)\n"
            "  --topic NAME            topic of Herald publish frames (%%d as above; bench.%%d)\n"
            "  --topics N              publish mode: topics the connections spread over (100)\n"
            "  --window N              publish mode: publishes in flight per connection (512)\n"
            "  --bytes N               publish mode: bytes of data per publish (100)\n"
            "  --warmup-ms MS          publish mode: unmeasured publishing first (1000)\n"
            "  --subprotocol NAME      Sec-WebSocket-Protocol to ask for (none)\n");
    load_usage_common("idle");
    exit(2);
}

static bool ws_option(const char *a, const char *v)
{
    if (strcmp(a, "--mode") == 0)
        wo.mode = strcmp(v, "publish") == 0 ? MODE_PUBLISH
                  : strcmp(v, "sub") == 0   ? MODE_SUB
                                            : (usage(), 0);
    else if (strcmp(a, "--pub-ws") == 0)
        wo.pub_ws = v;
    else if (strcmp(a, "--frame") == 0)
        wo.frame = strcmp(v, "raw") == 0      ? FRAME_RAW
                   : strcmp(v, "herald") == 0 ? FRAME_HERALD
                                              : (usage(), 0);
    else if (strcmp(a, "--topic") == 0)
        wo.topic = v;
    else if (strcmp(a, "--topics") == 0)
        wo.topics = atol(v);
    else if (strcmp(a, "--window") == 0)
        wo.window = atol(v);
    else if (strcmp(a, "--bytes") == 0)
        wo.bytes = atol(v);
    else if (strcmp(a, "--warmup-ms") == 0)
        wo.warmup_ms = atol(v);
    else if (strcmp(a, "--subprotocol") == 0)
        wo.subprotocol = v;
    else
        return false;
    return true;
}

static void print_conn_failures(bool check_seq)
{
    for (long i = 0, shown = 0; i < lo.conns && shown < LOAD_MAX_FAILS; i++) {
        ws_t *c = &conns[i];
        bool open = c->state == WS_OPEN;
        if (!check_seq) {
            if (!open)
                printf("failure connection=%ld %s%s\n", i,
                       c->state == WS_CLOSED ? c->why : "not open in time",
                       c->close_code ? " (close code in the frame above)" : ""),
                    shown++;
            continue;
        }
        if (load_seq_ok(&c->seq, open))
            continue;
        printf("failure subscriber=%ld received=%llu of %llu skipped=%llu in %llu gaps, "
               "late=%llu, dups_or_reordered=%llu, connection %s, close code %u\n",
               i, (unsigned long long)c->seq.received, (unsigned long long)load_published,
               (unsigned long long)c->seq.skipped, (unsigned long long)c->seq.gaps,
               (unsigned long long)load_seq_late(&c->seq), (unsigned long long)c->seq.dups,
               open ? "open" : c->why, c->close_code);
        shown++;
    }
}

/* Poll for `ms` milliseconds. */
static void run_for(long ms)
{
    int64_t until = load_now_ns() + ms * 1000000LL;
    while (!load_stop_requested && load_now_ns() < until)
        load_poll_once(10);
}

static int publish_mode(void)
{
    if (load_ready < lo.conns) {
        print_conn_failures(false);
        return 1;
    }
    sending = true;
    for (long i = 0; i < lo.conns; i++)
        if (conns[i].state == WS_OPEN)
            pubconn_fill(i, &conns[i]);
    run_for(wo.warmup_ms);
    measuring = true;
    uint64_t acks0 = acks_total, errs0 = pub_errs;
    double cpu0 = load_server_cpu(), self0 = load_self_cpu();
    int64_t t0 = load_now_ns();
    run_for((long)(lo.seconds * 1000));
    double cpu1 = load_server_cpu(), self1 = load_self_cpu();
    int64_t t1 = load_now_ns();
    measuring = false;
    sending = false;
    uint64_t acked = acks_total - acks0;
    double secs = (double)(t1 - t0) / 1e9, cpu = cpu1 - cpu0;
    load_sort(ack_lat.v, ack_lat.n);
    long lost = lo.conns - load_ready;
    printf("publish conns=%ld window=%ld bytes=%ld seconds=%.3f acked=%llu publishes_per_s=%.0f "
           "ack_p50_ms=%.3f ack_p99_ms=%.3f ack_max_ms=%.3f errors=%llu server_cpu_s=%.2f "
           "cpu_us_per_publish=%.3f loadgen_cpu_s=%.2f dropped=%ld\n",
           lo.conns, wo.window, wo.bytes, secs, (unsigned long long)acked,
           secs > 0 ? (double)acked / secs : 0, load_pct_ms(ack_lat.v, ack_lat.n, 50),
           load_pct_ms(ack_lat.v, ack_lat.n, 99), load_pct_ms(ack_lat.v, ack_lat.n, 100),
           (unsigned long long)(pub_errs - errs0), cpu, acked ? cpu * 1e6 / (double)acked : -1,
           self1 - self0, lost);
    if (pub_errs > 0)
        printf("failure publish errors=%llu first: %s\n", (unsigned long long)pub_errs, first_err);
    print_conn_failures(false);
    return pub_errs == 0 && lost == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    lo.prog = "herald-ws-load";
    lo.clients = "connections";
    lo.rate = 500;
    load_parse_args(argc, argv, ws_option, usage);
    if (wo.topics <= 0 || wo.window <= 0 || wo.bytes < 0 || wo.bytes > 65536 ||
        (wo.mode == MODE_PUBLISH ? wo.pub_ws == NULL : lo.sub_path == NULL) ||
        (wo.pub_ws != NULL && wo.frame == FRAME_HERALD && wo.topic == NULL && wo.mode == MODE_SUB))
        usage();
    load_init();
    conns = calloc((size_t)lo.conns, sizeof *conns);
    if (conns == NULL)
        load_die("setup");
    load_on_conn = conn_event;
    if (wo.pub_ws != NULL)
        load_pub = &ws_publisher;

    load_connect_all(ws_start);
    if (wo.mode == MODE_PUBLISH)
        return publish_mode();

    if (wo.pub_ws == NULL && lo.pub_path == NULL) {
        double held = load_hold();
        printf("idle connections=%ld held_seconds=%.1f dropped=%ld other_frames=%llu\n", load_ready,
               held, lo.conns - load_ready, (unsigned long long)other_frames);
        print_conn_failures(false);
        return load_ready == lo.conns ? 0 : 1;
    }
    if (load_ready < lo.conns) {
        print_conn_failures(false);
        return 1;
    }

    load_window_t w;
    load_publish_and_drain(&w);
    load_verdict_t v = {0};
    for (long i = 0; i < lo.conns; i++)
        load_verdict_add(&v, &conns[i].seq, conns[i].state == WS_OPEN);
    printf("ws subscribers=%ld rate=%ld seconds=%.1f", lo.conns, lo.rate, lo.seconds);
    load_print_window(&w);
    printf(" subscribed_frames=%llu other_frames=%llu", (unsigned long long)subscribed_frames,
           (unsigned long long)other_frames);
    load_print_verdict(&v, "failed_subscribers");
    if (other_frames > 0)
        printf("failure other_frames=%llu first: %s\n", (unsigned long long)other_frames,
               first_other);
    bool pub_ok = load_print_pub_failures();
    print_conn_failures(true);
    return v.failed == 0 && pub_ok && other_frames == 0 ? 0 : 1;
}
