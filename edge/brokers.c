/*
 * hr_brokers — see brokers.h. The ZeroMQ sockets are driven from the libuv loop:
 *
 *   - one uv_poll_t per socket on its ZMQ_FD. That descriptor only says "the socket's state may
 *     have changed" and is edge-triggered: each wake-up drains the socket while ZMQ_EVENTS
 *     reports ZMQ_POLLIN. A send (or a ZMQ_SUBSCRIBE) processes the socket's command queue and
 *     can consume an edge that announced incoming messages, so after each one the socket is
 *     marked for a drain on the next uv_idle pass rather than trusting the descriptor.
 *   - drains are bounded (HR_BROKERS_DRAIN_MAX messages per socket per pass) so one busy broker
 *     cannot starve the loop; what remains continues from the uv_idle handle.
 *   - one repeating uv_timer (the tick) expires calls, detects silent brokers and re-sends Hello.
 *     Every call gets the same timeout and calls are created in time order, so the in-flight
 *     list is in deadline order and the tick only looks at its head.
 *
 * Callbacks never run inside hr_brokers_request: a call that fails at once is queued and
 * completed from the uv_idle handle.
 */
#include "brokers.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "partition.h"

#include <assert.h>
#include <czmq.h>
#include <stdio.h>
#include <string.h>
#include <zmq.h>

#define MOD "brokers"

#define HR_BROKERS_DRAIN_MAX       1000                 /* messages per socket per pass */
#define HR_BROKERS_HELLO_INTERVAL  1000                 /* ms between unanswered Hellos */
#define HR_BROKERS_LIVE_MAX        (64u * 1024 * 1024)  /* bytes of one live Message */
#define HR_BROKERS_REPLY_MAX       (512u * 1024 * 1024) /* bytes of one Reply */
#define HR_BROKERS_DEALER_HWM      10000                /* requests queued per broker */
#define HR_BROKERS_TIMEOUT_DEFAULT 5000                 /* ms */
#define HR_BROKERS_DOWN_DEFAULT    3000                 /* ms */
#define HR_BROKERS_TICK_MIN        10                   /* ms */
#define HR_BROKERS_TICK_MAX        100                  /* ms */

#define hr_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

typedef struct hr_brokers_conn hr_brokers_conn_t;

typedef struct {
    hr_brokers_call_t *head, *tail;
} hr_brokers_list_t;

struct hr_brokers_call {
    hr_brokers_t *brokers;
    uint64_t request_id;  /* key in brokers->calls while in flight */
    uint64_t deadline_ms; /* uv_now() time after which it fails */
    hr_brokers_reply_cb cb;
    void *arg;
    hr_brokers_list_t *list; /* &brokers->inflight or &brokers->failed; NULL once completing */
    hr_brokers_call_t *prev, *next;
};

/* One broker connection: a DEALER for requests and, once the broker's own HelloReply has named
 * its live endpoint, a SUB. A *seed* (index < 0) is a configured endpoint used only to learn the
 * cluster; a *member* is entry `index` of the cluster list. */
struct hr_brokers_conn {
    hr_brokers_t *brokers; /* not used from the close callbacks: they may run after it is freed */
    int32_t index;         /* position in the cluster list; -1 for a seed */
    char *endpoint;        /* request endpoint, as configured or as listed */
    char *live_endpoint;   /* from the broker's HelloReply; NULL until then */
    zsock_t *dealer;
    zsock_t *sub;
    void *dealer_raw; /* zsock_resolve(dealer), for zmq_msg_* calls */
    void *sub_raw;
    uv_poll_t dealer_poll; /* on the DEALER's ZMQ_FD */
    uv_poll_t sub_poll;    /* on the SUB's ZMQ_FD */
    bool dealer_polled;    /* dealer_poll initialised (so it must be closed) */
    bool sub_polled;
    int handles;      /* initialised poll handles, not yet closed */
    bool closing;     /* close requested: the sockets go in the last close callback */
    bool dealer_more; /* the DEALER may hold messages: drain it from the idle handle */
    bool sub_more;    /* the same for the SUB */
    bool known;       /* answered a Hello at least once: live endpoint adopted */
    bool hello_due;   /* a Hello is wanted (never answered, or the broker went down) */
    uint64_t hello_next_ms;
    bool up;
    uint64_t heard_ms; /* last reply, heartbeat or live message */
    uint64_t instance; /* the broker process's instance from its last SUB heartbeat; 0 = none */
};

struct hr_brokers {
    uv_loop_t *loop;
    hr_brokers_options_t opts; /* endpoints points at nothing after hr_brokers_new */
    uint64_t tick_ms;
    uv_timer_t timer;
    uv_idle_t idle;
    int handles; /* timer + idle not yet closed; freed when 0 after destroy */
    bool destroying;
    int in_callback; /* depth of user callbacks running (destroy must not be one of them) */

    hr_brokers_conn_t **seeds; /* configured endpoints, until the cluster list is known */
    size_t n_seeds;
    hr_brokers_conn_t **members; /* the cluster list, in order */
    uint32_t n_members;
    uint32_t partitions;

    zhashx_t *calls;            /* request_id -> in-flight call */
    hr_brokers_list_t inflight; /* sent calls, in deadline order */
    hr_brokers_list_t failed;   /* calls failing with HR_E_UNAVAILABLE on the next idle pass */
    uint64_t next_id;

    zhashx_t *topics; /* subscribed topic -> hr_brokers_topic_t (reference count) */
    uint64_t dropped;
};

/* Keys of brokers->topics: bytes with a length (topic frames are not NUL-terminated). */
typedef struct {
    const char *data;
    size_t len;
} hr_brokers_key_t;

typedef struct {
    hr_brokers_key_t key; /* points at name; the map's key for this entry */
    size_t refs;
    char name[];
} hr_brokers_topic_t;

static void hr_brokers_drain_dealer(hr_brokers_conn_t *c);
static void hr_brokers_drain_sub(hr_brokers_conn_t *c);
static void hr_brokers_on_idle(uv_idle_t *h);

/* ---- small helpers ------------------------------------------------------------------------ */

static size_t hr_brokers_key_hash(const void *key)
{
    const hr_brokers_key_t *k = key;
    return (size_t)hr_fnv1a64(k->data, k->len);
}

static int hr_brokers_key_cmp(const void *a, const void *b)
{
    const hr_brokers_key_t *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return memcmp(x->data, y->data, x->len);
}

static void hr_brokers_topic_free(void **item)
{
    hr_free(*item);
    *item = NULL;
}

static size_t hr_brokers_id_hash(const void *key)
{
    return (size_t)(*(const uint64_t *)key * 0x9e3779b97f4a7c15u);
}

static int hr_brokers_id_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void hr_brokers_list_push(hr_brokers_list_t *l, hr_brokers_call_t *c)
{
    c->list = l;
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static void hr_brokers_list_unlink(hr_brokers_call_t *c)
{
    hr_brokers_list_t *l = c->list;
    if (l == NULL)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    c->list = NULL;
}

static void hr_brokers_schedule(hr_brokers_t *b)
{
    if (!b->destroying && !uv_is_active((uv_handle_t *)&b->idle))
        uv_idle_start(&b->idle, hr_brokers_on_idle);
}

static bool hr_brokers_readable(void *raw)
{
    int events = 0;
    size_t len = sizeof events;
    if (zmq_getsockopt(raw, ZMQ_EVENTS, &events, &len) != 0)
        return false;
    return (events & ZMQ_POLLIN) != 0;
}

/* Remove the call from its list (and the in-flight map), run its callback, free it. The call is
 * unreachable before the callback runs, so hr_brokers_cancel on it from inside is a no-op (its
 * list is NULL) and nothing else can complete it twice. */
static void hr_brokers_complete(hr_brokers_call_t *call, int status, const hr_reply_t *reply)
{
    hr_brokers_t *b = call->brokers;
    if (call->list == &b->inflight)
        zhashx_delete(b->calls, &call->request_id);
    hr_brokers_list_unlink(call);
    b->in_callback++;
    call->cb(call->arg, status, reply);
    b->in_callback--;
    hr_free(call);
}

/* ---- broker state ------------------------------------------------------------------------- */

static void hr_brokers_set_up(hr_brokers_conn_t *c, bool up)
{
    hr_brokers_t *b = c->brokers;
    if (c->up == up)
        return;
    c->up = up;
    if (up) {
        HR_DEBUG(MOD, "event=broker_up index=%d endpoint=%s", c->index, c->endpoint);
    } else {
        HR_WARN(MOD, "event=broker_down index=%d endpoint=%s silent_ms=%llu", c->index, c->endpoint,
                (unsigned long long)(uv_now(b->loop) - c->heard_ms));
        /* Ask again: a broker that restarts may come back with another live endpoint. */
        c->hello_due = true;
        c->hello_next_ms = 0;
        /* Start the connections afresh. Requests still queued for a broker that stopped
         * answering are dropped here — their callers get `unavailable` at their deadline —
         * rather than delivered (and committed) long after the caller was told 503; and a TCP
         * connection left behind by a network partition would keep its retransmission backoff
         * for about as long as the partition lasted. */
        if (c->dealer_raw != NULL && zmq_disconnect(c->dealer_raw, c->endpoint) == 0)
            zmq_connect(c->dealer_raw, c->endpoint);
        if (c->sub_raw != NULL && c->live_endpoint != NULL &&
            zmq_disconnect(c->sub_raw, c->live_endpoint) == 0)
            zmq_connect(c->sub_raw, c->live_endpoint);
    }
    if (b->opts.on_state != NULL) {
        b->in_callback++;
        b->opts.on_state(b->opts.arg, (uint32_t)c->index, up);
        b->in_callback--;
    }
}

/* Anything from a broker proves it alive. Only members have a state, and only once their own
 * HelloReply has connected the SUB that carries their heartbeats. */
static void hr_brokers_heard(hr_brokers_conn_t *c)
{
    c->heard_ms = uv_now(c->brokers->loop);
    if (c->index >= 0 && c->known && !c->closing)
        hr_brokers_set_up(c, true);
}

/* ---- sockets and connections -------------------------------------------------------------- */

static void hr_brokers_conn_free(hr_brokers_conn_t *c)
{
    zsock_destroy(&c->dealer);
    zsock_destroy(&c->sub);
    hr_free(c->endpoint);
    hr_free(c->live_endpoint);
    hr_free(c);
}

static void hr_brokers_on_conn_closed(uv_handle_t *h)
{
    hr_brokers_conn_t *c = h->data;
    if (--c->handles == 0)
        hr_brokers_conn_free(c);
}

/* Stop polling now; the sockets and the memory go once libuv has closed the poll handles (a
 * poll handle must be stopped before its descriptor is closed). Safe from inside the
 * connection's own drain: the drain loops check `closing`. */
static void hr_brokers_conn_close(hr_brokers_conn_t *c)
{
    c->closing = true;
    if (c->handles == 0) {
        hr_brokers_conn_free(c);
        return;
    }
    if (c->dealer_polled)
        uv_close((uv_handle_t *)&c->dealer_poll, hr_brokers_on_conn_closed);
    if (c->sub_polled)
        uv_close((uv_handle_t *)&c->sub_poll, hr_brokers_on_conn_closed);
}

static void hr_brokers_on_dealer_poll(uv_poll_t *h, int status, int events)
{
    (void)status; /* on an error the drain finds nothing and the next wake-up retries */
    (void)events;
    hr_brokers_drain_dealer(hr_container_of(h, hr_brokers_conn_t, dealer_poll));
}

static void hr_brokers_on_sub_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    hr_brokers_drain_sub(hr_container_of(h, hr_brokers_conn_t, sub_poll));
}

/* Start polling `raw` (a socket of `c`) on its ZMQ_FD; *polled says whether `poll` was
 * initialised (and so must be closed), whatever the result. */
static int hr_brokers_poll_start(hr_brokers_conn_t *c, void *raw, uv_poll_t *poll, bool *polled,
                                 uv_poll_cb cb)
{
#ifdef _WIN32
    SOCKET fd;
#else
    int fd;
#endif
    size_t len = sizeof fd;
    if (zmq_getsockopt(raw, ZMQ_FD, &fd, &len) != 0)
        return -zmq_errno();
    int rc = uv_poll_init(c->brokers->loop, poll, fd);
    if (rc != 0)
        return rc;
    poll->data = c;
    *polled = true;
    c->handles++;
    return uv_poll_start(poll, UV_READABLE, cb);
}

/* ZMTP heartbeats (RFC 37): a connection whose peer stops answering PINGs within the down
 * delay is dropped and redialled by ZeroMQ itself, so a half-open TCP connection (a network
 * partition, a host that vanished) does not hold requests or live messages. */
static void hr_brokers_keepalive(void *raw, uint64_t down_after_ms)
{
    int ivl = (int)(down_after_ms / 3 > 100 ? down_after_ms / 3 : 100);
    int timeout = (int)down_after_ms;
    zmq_setsockopt(raw, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(raw, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout);
}

/* A new connection with its DEALER connected to `endpoint` (`len` bytes). Returns NULL with
 * `err` set when the socket cannot be created or the endpoint is not one ZeroMQ can dial. */
static hr_brokers_conn_t *hr_brokers_conn_new(hr_brokers_t *b, const char *endpoint, size_t len,
                                              int32_t index, char *err, size_t errlen)
{
    hr_brokers_conn_t *c = hr_calloc(1, sizeof *c);
    c->brokers = b;
    c->index = index;
    c->endpoint = hr_strndup(endpoint, len);
    c->hello_due = true;
    c->dealer = zsock_new(ZMQ_DEALER);
    if (c->dealer == NULL) {
        snprintf(err, errlen, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        goto fail;
    }
    void *raw = zsock_resolve(c->dealer);
    zsock_set_linger(c->dealer, 0);
    /* A request to a broker that is not connected fails at once instead of waiting in a queue
     * for a reconnect that may come after its caller gave up. */
    zsock_set_immediate(c->dealer, 1);
    zsock_set_sndhwm(c->dealer, HR_BROKERS_DEALER_HWM);
    zsock_set_rcvhwm(c->dealer, HR_BROKERS_DEALER_HWM);
    hr_brokers_keepalive(raw, b->opts.down_after_ms);
    if (zmq_connect(raw, c->endpoint) != 0) {
        snprintf(err, errlen, "cannot connect to broker %s: %s", c->endpoint,
                 zmq_strerror(zmq_errno()));
        goto fail;
    }
    int rc = hr_brokers_poll_start(c, raw, &c->dealer_poll, &c->dealer_polled,
                                   hr_brokers_on_dealer_poll);
    if (rc != 0) {
        snprintf(err, errlen, "cannot poll the socket of broker %s: %s", c->endpoint,
                 hr_strerror(rc));
        goto fail;
    }
    c->dealer_raw = raw;
    return c;
fail:
    hr_brokers_conn_close(c);
    return NULL;
}

/* Connect (or re-point) the member's SUB to `live`, subscribing to heartbeats and to every
 * subscribed topic this member owns. */
static void hr_brokers_sub_connect(hr_brokers_conn_t *c, const char *live)
{
    hr_brokers_t *b = c->brokers;
    if (c->sub_raw != NULL) {
        if (strcmp(c->live_endpoint, live) == 0)
            return;
        /* The broker moved its PUB: subscriptions belong to the socket and carry over. */
        HR_WARN(MOD, "event=live_endpoint_changed index=%d from=%s to=%s", c->index,
                c->live_endpoint, live);
        zmq_disconnect(c->sub_raw, c->live_endpoint);
        hr_free(c->live_endpoint);
        c->live_endpoint = hr_strndup(live, strlen(live));
        if (zmq_connect(c->sub_raw, c->live_endpoint) != 0)
            HR_WARN(MOD, "event=connect_failed index=%d endpoint=%s error=\"%s\"", c->index,
                    c->live_endpoint, zmq_strerror(zmq_errno()));
        return;
    }
    zsock_t *sub = zsock_new(ZMQ_SUB);
    if (sub == NULL) {
        HR_WARN(MOD, "event=socket_failed index=%d error=\"%s\"", c->index,
                zmq_strerror(zmq_errno()));
        return;
    }
    void *raw = zsock_resolve(sub);
    zsock_set_linger(sub, 0);
    hr_brokers_keepalive(raw, b->opts.down_after_ms);
    if (b->opts.hwm > 0)
        zsock_set_rcvhwm(sub, b->opts.hwm);
    /* Heartbeat frames start with a NUL byte, which no topic name can (DESIGN.md §Data model). */
    zmq_setsockopt(raw, ZMQ_SUBSCRIBE, "\0", 1);
    for (hr_brokers_topic_t *t = zhashx_first(b->topics); t != NULL; t = zhashx_next(b->topics))
        if (hr_brokers_owner(b, t->name, t->key.len) == (uint32_t)c->index)
            zmq_setsockopt(raw, ZMQ_SUBSCRIBE, t->name, t->key.len);
    if (zmq_connect(raw, live) != 0) {
        HR_WARN(MOD, "event=connect_failed index=%d endpoint=%s error=\"%s\"", c->index, live,
                zmq_strerror(zmq_errno()));
        zsock_destroy(&sub);
        return;
    }
    c->sub = sub;
    c->sub_raw = raw;
    c->live_endpoint = hr_strndup(live, strlen(live));
    int rc = hr_brokers_poll_start(c, raw, &c->sub_poll, &c->sub_polled, hr_brokers_on_sub_poll);
    if (rc != 0) /* the idle pass still drains it after sends; this is not expected to happen */
        HR_WARN(MOD, "event=poll_failed index=%d error=\"%s\"", c->index, hr_strerror(rc));
    c->sub_more = true;
    hr_brokers_schedule(b);
}

/* ---- sending ------------------------------------------------------------------------------ */

static void hr_brokers_free_frame(void *data, void *hint)
{
    (void)hint;
    hr_free(data); /* runs on a ZeroMQ I/O thread; hr_free is as thread-safe as free */
}

/* Send [""][req] without blocking. Returns 0 or HR_E_UNAVAILABLE (no connected peer, the queue
 * at its high-water mark, or the socket gone). The send may have consumed the ZMQ_FD edge of
 * an incoming reply, so a drain is scheduled either way. */
static int hr_brokers_send(hr_brokers_conn_t *c, const hr_request_t *req)
{
    if (c->dealer_raw == NULL || c->closing)
        return HR_E_UNAVAILABLE;
    uint8_t *buf;
    size_t len;
    hr_codec_encode_request(req, &buf, &len);
    int rc = 0;
    if (zmq_send(c->dealer_raw, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        hr_free(buf);
        rc = HR_E_UNAVAILABLE;
    } else {
        /* Zero-copy: ZeroMQ frees the buffer once it is on the wire. The second frame of a
         * message whose first frame was accepted is accepted too (the high-water mark counts
         * whole messages). */
        zmq_msg_t body;
        zmq_msg_init_data(&body, buf, len, hr_brokers_free_frame, NULL);
        if (zmq_msg_send(&body, c->dealer_raw, ZMQ_DONTWAIT) < 0)
            rc = HR_E_UNAVAILABLE;
        zmq_msg_close(&body);
    }
    c->dealer_more = true;
    hr_brokers_schedule(c->brokers);
    return rc;
}

static void hr_brokers_send_hello(hr_brokers_conn_t *c)
{
    hr_brokers_t *b = c->brokers;
    Herald__V1__Hello hello = HERALD__V1__HELLO__INIT;
    hello.version = HR_PROTOCOL_VERSION;
    hello.client = "herald-edge";
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.version = HR_PROTOCOL_VERSION;
    /* Not a call: a HelloReply is recognised by its body and the socket it arrives on. */
    req.request_id = b->next_id++;
    req.body_case = HERALD__V1__REQUEST__BODY_HELLO;
    req.hello = &hello;
    uint64_t now = uv_now(b->loop);
    /* Right after connecting, ZMQ_IMMEDIATE refuses until the handshake is done: retry on the
     * next tick rather than a whole interval later. */
    if (hr_brokers_send(c, &req) == 0)
        c->hello_next_ms = now + HR_BROKERS_HELLO_INTERVAL;
    else
        c->hello_next_ms = now + b->tick_ms;
}

/* ---- the cluster list --------------------------------------------------------------------- */

static bool hr_brokers_same_cluster(const hr_brokers_t *b, const Herald__V1__HelloReply *h)
{
    if (h->n_cluster != b->n_members || h->partitions != b->partitions)
        return false;
    for (size_t i = 0; i < h->n_cluster; i++)
        if (strcmp(h->cluster[i], b->members[i]->endpoint) != 0)
            return false;
    return true;
}

/* The first HelloReply: take its ordered list and partition count. Configured endpoints that
 * appear in the list (by string equality) become those members, keeping their connection; the
 * others (a load-balanced name, another spelling of a host) served only to say hello and are
 * closed. */
static void hr_brokers_adopt(hr_brokers_t *b, const Herald__V1__HelloReply *h)
{
    uint32_t n = (uint32_t)h->n_cluster;
    b->members = hr_calloc(n, sizeof *b->members);
    b->partitions = h->partitions;
    for (uint32_t i = 0; i < n; i++) {
        for (size_t s = 0; s < b->n_seeds; s++) {
            hr_brokers_conn_t *seed = b->seeds[s];
            if (seed != NULL && strcmp(seed->endpoint, h->cluster[i]) == 0) {
                seed->index = (int32_t)i;
                b->members[i] = seed;
                b->seeds[s] = NULL;
                break;
            }
        }
    }
    for (size_t s = 0; s < b->n_seeds; s++)
        if (b->seeds[s] != NULL)
            hr_brokers_conn_close(b->seeds[s]);
    hr_free(b->seeds);
    b->seeds = NULL;
    b->n_seeds = 0;
    /* Publish the map only once every member exists: routing reads b->members[owner]. */
    for (uint32_t i = 0; i < n; i++) {
        if (b->members[i] != NULL)
            continue;
        char err[256];
        const char *ep = h->cluster[i];
        b->members[i] = hr_brokers_conn_new(b, ep, strlen(ep), (int32_t)i, err, sizeof err);
        if (b->members[i] == NULL) {
            /* Keep the slot (the partition map needs every index); this broker stays down. */
            HR_WARN(MOD, "event=member_unusable index=%u endpoint=%s error=\"%s\"", i, ep, err);
            hr_brokers_conn_t *c = hr_calloc(1, sizeof *c);
            c->brokers = b;
            c->index = (int32_t)i;
            c->endpoint = hr_strndup(ep, strlen(ep));
            b->members[i] = c;
        }
    }
    b->n_members = n;
    HR_DEBUG(MOD, "event=cluster brokers=%u partitions=%u", n, b->partitions);
}

static void hr_brokers_on_hello(hr_brokers_conn_t *c, const Herald__V1__HelloReply *h)
{
    hr_brokers_t *b = c->brokers;
    if (h->n_cluster == 0 || h->n_cluster > INT32_MAX || h->partitions == 0) {
        HR_WARN(MOD, "event=hello_invalid endpoint=%s brokers=%zu partitions=%u", c->endpoint,
                h->n_cluster, h->partitions);
        return;
    }
    if (b->members == NULL)
        hr_brokers_adopt(b, h);
    else if (!hr_brokers_same_cluster(b, h))
        /* N is fixed for a cluster (DESIGN.md §Cluster): a different list is a configuration
         * error on some broker; keep routing by the first one. */
        HR_WARN(MOD, "event=cluster_mismatch endpoint=%s brokers=%zu partitions=%u", c->endpoint,
                h->n_cluster, h->partitions);
    if (c->index < 0 || c->closing)
        return;
    if (h->live_endpoint == NULL || h->live_endpoint[0] == '\0') {
        HR_WARN(MOD, "event=hello_without_live_endpoint index=%d endpoint=%s", c->index,
                c->endpoint);
        return;
    }
    hr_brokers_sub_connect(c, h->live_endpoint);
    if (c->sub_raw != NULL) {
        c->known = true;
        c->hello_due = false;
    }
}

/* ---- receiving ---------------------------------------------------------------------------- */

/* Receive the rest of a multipart message and throw it away; returns how many frames. */
static size_t hr_brokers_discard_rest(void *raw)
{
    size_t n = 0;
    int more = 1;
    size_t len = sizeof more;
    while (zmq_getsockopt(raw, ZMQ_RCVMORE, &more, &len) == 0 && more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, raw, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            break;
        }
        zmq_msg_close(&f);
        n++;
    }
    return n;
}

/* One [""][Reply] from a DEALER. */
static void hr_brokers_recv_reply(hr_brokers_conn_t *c)
{
    hr_brokers_t *b = c->brokers;
    zmq_msg_t delim, body;
    zmq_msg_init(&delim);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&delim, c->dealer_raw, ZMQ_DONTWAIT) < 0)
        goto done;
    bool ok = zmq_msg_size(&delim) == 0 && zmq_msg_more(&delim);
    if (zmq_msg_more(&delim) && zmq_msg_recv(&body, c->dealer_raw, ZMQ_DONTWAIT) < 0)
        ok = false;
    if (hr_brokers_discard_rest(c->dealer_raw) > 0)
        ok = false;
    hr_reply_t *reply = NULL;
    int rc = ok ? hr_codec_decode_reply(zmq_msg_data(&body), zmq_msg_size(&body),
                                        HR_BROKERS_REPLY_MAX, &reply, NULL, 0)
                : HR_E_PROTO;
    if (rc == 0 && reply->body_case == HERALD__V1__REPLY__BODY_HELLO)
        hr_brokers_on_hello(c, reply->hello);
    hr_brokers_heard(c);
    if (rc != 0)
        b->dropped++;
    /* A reply this build cannot use (a newer version, an unknown body) still names its call:
     * fail it now rather than at its timeout. */
    hr_brokers_call_t *call = reply != NULL ? zhashx_lookup(b->calls, &reply->request_id) : NULL;
    if (call != NULL)
        hr_brokers_complete(call, rc == 0 ? 0 : HR_E_UNAVAILABLE, rc == 0 ? reply : NULL);
    hr_codec_reply_free(&reply);
done:
    zmq_msg_close(&delim);
    zmq_msg_close(&body);
}

/* A heartbeat on the SUB. Its instance changes when the broker process restarts; the first one
 * also proves the SUB itself connected. Either way live messages may have been lost in between
 * (a PUB drops what is sent before a subscriber connects), so report "up" again: the edge then
 * backfills every topic of this broker from the log. */
static void hr_brokers_on_heartbeat(hr_brokers_conn_t *c, zmq_msg_t *body, size_t frames)
{
    if (frames != 2 || c->index < 0 || !c->known || c->closing)
        return;
    Herald__V1__Heartbeat *hb =
        herald__v1__heartbeat__unpack(NULL, zmq_msg_size(body), zmq_msg_data(body));
    if (hb == NULL)
        return;
    uint64_t instance = hb->instance;
    herald__v1__heartbeat__free_unpacked(hb, NULL);
    if (instance == c->instance)
        return;
    bool restarted = c->instance != 0;
    c->instance = instance;
    hr_brokers_t *b = c->brokers;
    HR_DEBUG(MOD, "event=live_path index=%d restarted=%d", c->index, restarted);
    if (c->up && b->opts.on_state != NULL) {
        b->in_callback++;
        b->opts.on_state(b->opts.arg, (uint32_t)c->index, true);
        b->in_callback--;
    }
}

/* One [topic][Message] or ["\x00hb"][Heartbeat] from a SUB. */
static void hr_brokers_recv_live(hr_brokers_conn_t *c)
{
    hr_brokers_t *b = c->brokers;
    zmq_msg_t topic, body;
    zmq_msg_init(&topic);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&topic, c->sub_raw, ZMQ_DONTWAIT) < 0)
        goto done;
    size_t frames = 1;
    if (zmq_msg_more(&topic) && zmq_msg_recv(&body, c->sub_raw, ZMQ_DONTWAIT) >= 0)
        frames++;
    frames += hr_brokers_discard_rest(c->sub_raw);
    hr_brokers_heard(c);
    const char *name = zmq_msg_data(&topic);
    size_t name_len = zmq_msg_size(&topic);
    if (name_len > 0 && name[0] == '\0') {
        hr_brokers_on_heartbeat(c, &body, frames);
        goto done;
    }
    /* ZeroMQ matched a prefix; only an exact subscription counts ("foo" must not get
     * "foo.bar"). */
    hr_brokers_key_t key = {name, name_len};
    if (zhashx_lookup(b->topics, &key) == NULL)
        goto done;
    Herald__V1__Message *msg = NULL;
    if (frames != 2 || hr_codec_decode_message(zmq_msg_data(&body), zmq_msg_size(&body),
                                               HR_BROKERS_LIVE_MAX, &msg) != 0) {
        b->dropped++;
        goto done;
    }
    if (msg->topic.len != name_len || memcmp(msg->topic.data, name, name_len) != 0) {
        b->dropped++;
    } else if (b->opts.on_live != NULL) {
        b->in_callback++;
        b->opts.on_live(b->opts.arg, msg, zmq_msg_data(&body), zmq_msg_size(&body));
        b->in_callback--;
    }
    hr_codec_message_free(&msg);
done:
    zmq_msg_close(&topic);
    zmq_msg_close(&body);
}

static void hr_brokers_drain_dealer(hr_brokers_conn_t *c)
{
    c->dealer_more = false;
    for (int n = 0; n < HR_BROKERS_DRAIN_MAX; n++) {
        if (c->closing || c->dealer_raw == NULL || !hr_brokers_readable(c->dealer_raw))
            return;
        hr_brokers_recv_reply(c);
    }
    c->dealer_more = true;
    hr_brokers_schedule(c->brokers);
}

static void hr_brokers_drain_sub(hr_brokers_conn_t *c)
{
    c->sub_more = false;
    for (int n = 0; n < HR_BROKERS_DRAIN_MAX; n++) {
        if (c->closing || c->sub_raw == NULL || !hr_brokers_readable(c->sub_raw))
            return;
        hr_brokers_recv_live(c);
    }
    c->sub_more = true;
    hr_brokers_schedule(c->brokers);
}

/* ---- idle pass and tick ------------------------------------------------------------------- */

static bool hr_brokers_conn_pending(const hr_brokers_conn_t *c)
{
    return c != NULL && !c->closing && (c->dealer_more || c->sub_more);
}

static void hr_brokers_drain_conn(hr_brokers_conn_t *c)
{
    if (c == NULL || c->closing)
        return;
    if (c->dealer_more)
        hr_brokers_drain_dealer(c);
    if (c->sub_more && !c->closing)
        hr_brokers_drain_sub(c);
}

static void hr_brokers_on_idle(uv_idle_t *h)
{
    hr_brokers_t *b = hr_container_of(h, hr_brokers_t, idle);
    /* Calls failed by requests made during this pass wait for the next one, so a callback that
     * retries at once cannot keep this loop going. */
    uint64_t bound = b->next_id;
    hr_brokers_call_t *call;
    while ((call = b->failed.head) != NULL && call->request_id < bound)
        hr_brokers_complete(call, HR_E_UNAVAILABLE, NULL);
    /* Indexes and counts are re-read on every step: a HelloReply drained here may replace the
     * seeds with the members. */
    for (size_t i = 0; i < b->n_seeds; i++)
        hr_brokers_drain_conn(b->seeds[i]);
    for (uint32_t i = 0; i < b->n_members; i++)
        hr_brokers_drain_conn(b->members[i]);

    bool more = b->failed.head != NULL;
    for (size_t i = 0; i < b->n_seeds && !more; i++)
        more = hr_brokers_conn_pending(b->seeds[i]);
    for (uint32_t i = 0; i < b->n_members && !more; i++)
        more = hr_brokers_conn_pending(b->members[i]);
    if (!more)
        uv_idle_stop(&b->idle);
}

static void hr_brokers_on_tick(uv_timer_t *h)
{
    hr_brokers_t *b = hr_container_of(h, hr_brokers_t, timer);
    uint64_t now = uv_now(b->loop);

    /* Expire calls. Those made by the callbacks run here have later deadlines (timeout > 0). */
    hr_brokers_call_t *call;
    while ((call = b->inflight.head) != NULL && call->deadline_ms <= now)
        hr_brokers_complete(call, HR_E_UNAVAILABLE, NULL);

    for (uint32_t i = 0; i < b->n_members; i++) {
        hr_brokers_conn_t *c = b->members[i];
        if (c->up && now - c->heard_ms >= b->opts.down_after_ms)
            hr_brokers_set_up(c, false);
        if (c->hello_due && now >= c->hello_next_ms)
            hr_brokers_send_hello(c);
    }
    for (size_t i = 0; i < b->n_seeds; i++) {
        hr_brokers_conn_t *c = b->seeds[i];
        if (now >= c->hello_next_ms)
            hr_brokers_send_hello(c);
    }
}

/* ---- life cycle --------------------------------------------------------------------------- */

static void hr_brokers_on_closed(uv_handle_t *h)
{
    hr_brokers_t *b = h->data;
    if (--b->handles == 0)
        hr_free(b);
}

/* Split the comma-separated list into seeds (spaces around entries ignored, duplicates
 * dropped). */
static int hr_brokers_add_seeds(hr_brokers_t *b, const char *list, char *err, size_t errlen)
{
    const char *p = list != NULL ? list : "";
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        if (end == NULL)
            end = p + strlen(p);
        const char *s = p, *e = end;
        while (s < e && (*s == ' ' || *s == '\t'))
            s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        bool dup = false;
        for (size_t i = 0; i < b->n_seeds && !dup; i++)
            dup = strlen(b->seeds[i]->endpoint) == (size_t)(e - s) &&
                  memcmp(b->seeds[i]->endpoint, s, (size_t)(e - s)) == 0;
        if (e > s && !dup) {
            hr_brokers_conn_t *c = hr_brokers_conn_new(b, s, (size_t)(e - s), -1, err, errlen);
            if (c == NULL)
                return HR_E_INVALID_REQUEST;
            b->seeds = hr_realloc(b->seeds, (b->n_seeds + 1) * sizeof *b->seeds);
            b->seeds[b->n_seeds++] = c;
        }
        p = *end == ',' ? end + 1 : end;
    }
    if (b->n_seeds == 0) {
        snprintf(err, errlen, "no broker endpoint given");
        return HR_E_INVALID_REQUEST;
    }
    return 0;
}

int hr_brokers_new(hr_brokers_t **out, uv_loop_t *loop, const hr_brokers_options_t *opts, char *err,
                   size_t errlen)
{
    hr_brokers_t *b = hr_calloc(1, sizeof *b);
    b->loop = loop;
    b->opts = *opts;
    b->opts.endpoints = NULL;
    if (b->opts.request_timeout_ms == 0)
        b->opts.request_timeout_ms = HR_BROKERS_TIMEOUT_DEFAULT;
    if (b->opts.down_after_ms == 0)
        b->opts.down_after_ms = HR_BROKERS_DOWN_DEFAULT;
    uint64_t shortest = b->opts.request_timeout_ms < b->opts.down_after_ms
                            ? b->opts.request_timeout_ms
                            : b->opts.down_after_ms;
    b->tick_ms = shortest / 10;
    if (b->tick_ms < HR_BROKERS_TICK_MIN)
        b->tick_ms = HR_BROKERS_TICK_MIN;
    if (b->tick_ms > HR_BROKERS_TICK_MAX)
        b->tick_ms = HR_BROKERS_TICK_MAX;
    b->next_id = 1;

    b->calls = zhashx_new();
    zhashx_set_key_duplicator(b->calls, NULL);
    zhashx_set_key_destructor(b->calls, NULL);
    zhashx_set_key_hasher(b->calls, hr_brokers_id_hash);
    zhashx_set_key_comparator(b->calls, hr_brokers_id_cmp);
    b->topics = zhashx_new();
    zhashx_set_key_duplicator(b->topics, NULL);
    zhashx_set_key_destructor(b->topics, NULL);
    zhashx_set_key_hasher(b->topics, hr_brokers_key_hash);
    zhashx_set_key_comparator(b->topics, hr_brokers_key_cmp);
    zhashx_set_destructor(b->topics, hr_brokers_topic_free);

    uv_timer_init(loop, &b->timer);
    uv_idle_init(loop, &b->idle);
    b->timer.data = b;
    b->idle.data = b;
    b->handles = 2;

    /* czmq would otherwise install SIGINT/SIGTERM handlers of its own; the edge has its own. */
    zsys_handler_set(NULL);
    int rc = hr_brokers_add_seeds(b, opts->endpoints, err, errlen);
    if (rc != 0) {
        hr_brokers_destroy(&b);
        return rc;
    }
    uv_timer_start(&b->timer, hr_brokers_on_tick, b->tick_ms, b->tick_ms);
    *out = b;
    return 0;
}

void hr_brokers_destroy(hr_brokers_t **brokers)
{
    hr_brokers_t *b = brokers != NULL ? *brokers : NULL;
    if (b == NULL)
        return;
    assert(b->in_callback == 0 && "hr_brokers_destroy from inside a brokers callback");
    b->destroying = true;
    /* Callbacks may cancel other calls; new requests are refused from here on. */
    hr_brokers_call_t *call;
    while ((call = b->inflight.head) != NULL)
        hr_brokers_complete(call, HR_E_UNAVAILABLE, NULL);
    while ((call = b->failed.head) != NULL)
        hr_brokers_complete(call, HR_E_UNAVAILABLE, NULL);
    for (size_t i = 0; i < b->n_seeds; i++)
        hr_brokers_conn_close(b->seeds[i]);
    for (uint32_t i = 0; i < b->n_members; i++)
        hr_brokers_conn_close(b->members[i]);
    hr_free(b->seeds);
    hr_free(b->members);
    zhashx_destroy(&b->calls);
    zhashx_destroy(&b->topics);
    uv_close((uv_handle_t *)&b->timer, hr_brokers_on_closed);
    uv_close((uv_handle_t *)&b->idle, hr_brokers_on_closed);
    *brokers = NULL;
}

/* ---- requests ----------------------------------------------------------------------------- */

int hr_brokers_request(hr_brokers_t *b, const char *topic, size_t topic_len, hr_request_t *req,
                       hr_brokers_reply_cb cb, void *arg, hr_brokers_call_t **call_out)
{
    if (call_out != NULL)
        *call_out = NULL;
    if (b->destroying || b->n_members == 0)
        return HR_E_UNAVAILABLE;
    return hr_brokers_request_to(b, hr_brokers_owner(b, topic, topic_len), req, cb, arg, call_out);
}

int hr_brokers_request_to(hr_brokers_t *b, uint32_t index, hr_request_t *req,
                          hr_brokers_reply_cb cb, void *arg, hr_brokers_call_t **call_out)
{
    assert(cb != NULL);
    if (call_out != NULL)
        *call_out = NULL;
    if (b->destroying || index >= b->n_members)
        return HR_E_UNAVAILABLE;
    hr_brokers_conn_t *owner = b->members[index];
    hr_brokers_call_t *call = hr_calloc(1, sizeof *call);
    call->brokers = b;
    call->request_id = b->next_id++;
    call->cb = cb;
    call->arg = arg;
    req->request_id = call->request_id;
    req->version = HR_PROTOCOL_VERSION;
    /* A broker known to be down is not asked: the caller hears at once (a publish answers 503
     * quickly) instead of after the timeout. */
    if (owner->up && hr_brokers_send(owner, req) == 0) {
        call->deadline_ms = uv_now(b->loop) + b->opts.request_timeout_ms;
        hr_brokers_list_push(&b->inflight, call);
        if (zhashx_insert(b->calls, &call->request_id, call) != 0)
            abort(); /* ids are unique: only an allocation failure gets here */
    } else {
        hr_brokers_list_push(&b->failed, call);
        hr_brokers_schedule(b);
    }
    if (call_out != NULL)
        *call_out = call;
    return 0;
}

void hr_brokers_cancel(hr_brokers_call_t *call)
{
    if (call == NULL || call->list == NULL)
        return; /* its callback is running: it completes by itself */
    hr_brokers_t *b = call->brokers;
    if (call->list == &b->inflight)
        zhashx_delete(b->calls, &call->request_id);
    hr_brokers_list_unlink(call);
    hr_free(call);
}

/* ---- live subscriptions ------------------------------------------------------------------- */

/* The member whose SUB carries `topic`, if the map is known and its SUB exists. */
static void *hr_brokers_sub_for(hr_brokers_t *b, const char *topic, size_t topic_len)
{
    if (b->n_members == 0)
        return NULL; /* applied when the member's SUB is created (hr_brokers_sub_connect) */
    hr_brokers_conn_t *c = b->members[hr_brokers_owner(b, topic, topic_len)];
    if (c->sub_raw == NULL || c->closing)
        return NULL;
    /* A subscription is a message upstream: like a send, it may consume a read edge. */
    c->sub_more = true;
    hr_brokers_schedule(b);
    return c->sub_raw;
}

/* No topic name is empty or starts with NUL (DESIGN.md §Data model); subscribing to "" would
 * mean every topic, and "\0" is the heartbeats' prefix. */
static bool hr_brokers_topic_ok(const char *topic, size_t topic_len)
{
    return topic_len > 0 && topic[0] != '\0';
}

void hr_brokers_subscribe(hr_brokers_t *b, const char *topic, size_t topic_len)
{
    if (b->destroying || !hr_brokers_topic_ok(topic, topic_len))
        return;
    hr_brokers_key_t key = {topic, topic_len};
    hr_brokers_topic_t *t = zhashx_lookup(b->topics, &key);
    if (t != NULL) {
        t->refs++;
        return;
    }
    t = hr_malloc(sizeof *t + topic_len + 1);
    memcpy(t->name, topic, topic_len);
    t->name[topic_len] = '\0';
    t->key = (hr_brokers_key_t){t->name, topic_len};
    t->refs = 1;
    if (zhashx_insert(b->topics, &t->key, t) != 0)
        abort(); /* not present (looked up above): only an allocation failure gets here */
    void *raw = hr_brokers_sub_for(b, topic, topic_len);
    if (raw != NULL)
        zmq_setsockopt(raw, ZMQ_SUBSCRIBE, topic, topic_len);
}

void hr_brokers_unsubscribe(hr_brokers_t *b, const char *topic, size_t topic_len)
{
    if (b->destroying || !hr_brokers_topic_ok(topic, topic_len))
        return;
    hr_brokers_key_t key = {topic, topic_len};
    hr_brokers_topic_t *t = zhashx_lookup(b->topics, &key);
    if (t == NULL || --t->refs > 0)
        return;
    zhashx_delete(b->topics, &key);
    void *raw = hr_brokers_sub_for(b, topic, topic_len);
    if (raw != NULL)
        zmq_setsockopt(raw, ZMQ_UNSUBSCRIBE, topic, topic_len);
}

/* ---- state -------------------------------------------------------------------------------- */

bool hr_brokers_ready(const hr_brokers_t *b)
{
    for (uint32_t i = 0; i < b->n_members; i++)
        if (b->members[i]->up)
            return true;
    return false;
}

uint32_t hr_brokers_count(const hr_brokers_t *b)
{
    return b->n_members;
}

uint32_t hr_brokers_partitions(const hr_brokers_t *b)
{
    return b->n_members > 0 ? b->partitions : 0;
}

bool hr_brokers_up(const hr_brokers_t *b, uint32_t index)
{
    return index < b->n_members && b->members[index]->up;
}

const char *hr_brokers_endpoint(const hr_brokers_t *b, uint32_t index)
{
    return index < b->n_members ? b->members[index]->endpoint : NULL;
}

uint32_t hr_brokers_owner(const hr_brokers_t *b, const char *topic, size_t topic_len)
{
    assert(b->n_members > 0);
    return hr_partition_owner(hr_partition_of(topic, topic_len, b->partitions), b->n_members);
}

uint64_t hr_brokers_dropped(const hr_brokers_t *b)
{
    return b->dropped;
}
