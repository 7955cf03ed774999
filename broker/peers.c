#include "peers.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"

#include <stdio.h>
#include <string.h>

#define MOD "peers"

/* Most forwards queued to one peer before further ones fail as unavailable. */
#define HR_PEER_SNDHWM 10000

typedef struct {
    char *endpoint;
    void *dealer; /* NULL for this broker's own entry */
    bool up;
    bool answered; /* ever */
    uint64_t last_reply_ms;
    uint64_t next_hello_ms;
    char problem[320]; /* the disagreement its last HelloReply showed; "" = none */
} hr_peer_t;

/* A forwarded request waiting for the owner's reply. */
typedef struct {
    bool live;
    uint32_t owner;
    uint64_t client_request_id;
    uint64_t deadline_ms;
    zmq_msg_t identity;
} hr_forward_t;

struct hr_peers {
    hr_peers_options_t opts;
    void *zctx;
    hr_peer_t *peers;
    size_t n;
    /* Forwards by request id: ids are handed out in order, so the pending ones are the window
     * [base, next) of a ring (power-of-two capacity), oldest (and first to expire) at base. */
    hr_forward_t *ring;
    size_t cap;
    uint64_t base, next;
    size_t pending;
    uint64_t forwarded;
    uint64_t now_ms;
};

static hr_forward_t *hr_peers_slot(hr_peers_t *ps, uint64_t id)
{
    return &ps->ring[id & (ps->cap - 1)];
}

/* ---- the forward ring ------------------------------------------------------------------ */

static uint64_t hr_peers_add_forward(hr_peers_t *ps)
{
    if (ps->next - ps->base == ps->cap) {
        size_t cap = ps->cap * 2;
        hr_forward_t *ring = hr_calloc(cap, sizeof *ring);
        for (uint64_t id = ps->base; id < ps->next; id++)
            ring[id & (cap - 1)] = *hr_peers_slot(ps, id);
        hr_free(ps->ring);
        ps->ring = ring;
        ps->cap = cap;
    }
    return ps->next++;
}

/* Drop finished entries from the front of the window. */
static void hr_peers_trim(hr_peers_t *ps)
{
    while (ps->base < ps->next && !hr_peers_slot(ps, ps->base)->live)
        ps->base++;
}

static void hr_peers_finish(hr_peers_t *ps, hr_forward_t *f, hr_reply_t *reply, const char *why)
{
    f->live = false;
    ps->pending--;
    ps->opts.on_reply(ps->opts.arg, &f->identity, f->client_request_id, reply, why);
    zmq_msg_close(&f->identity);
}

/* ---- hello --------------------------------------------------------------------------------- */

static void hr_peers_send(hr_peers_t *ps, hr_peer_t *p, const hr_request_t *req)
{
    uint8_t *buf;
    size_t len;
    hr_codec_encode_request(req, &buf, &len);
    if (zmq_send(p->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) == 0)
        zmq_send(p->dealer, buf, len, ZMQ_DONTWAIT);
    hr_free(buf);
    (void)ps;
}

static void hr_peers_hello(hr_peers_t *ps, hr_peer_t *p)
{
    Herald__V1__Hello hello = HERALD__V1__HELLO__INIT;
    hello.version = HR_PROTOCOL_VERSION;
    char client[64];
    snprintf(client, sizeof client, "herald-broker node %u", ps->opts.self);
    hello.client = client;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.version = HR_PROTOCOL_VERSION;
    req.body_case = HERALD__V1__REQUEST__BODY_HELLO;
    req.hello = &hello;
    hr_peers_send(ps, p, &req);
}

/* Compare a peer's view of the cluster with ours. */
static void hr_peers_check_hello(hr_peers_t *ps, size_t index, const Herald__V1__HelloReply *h)
{
    hr_peer_t *p = &ps->peers[index];
    char was[sizeof p->problem];
    snprintf(was, sizeof was, "%s", p->problem);
    p->problem[0] = '\0';
    bool same_list = h->n_cluster == ps->n;
    for (size_t i = 0; same_list && i < ps->n; i++)
        same_list = strcmp(h->cluster[i], ps->peers[i].endpoint) == 0;
    if (h->node_id != index) {
        snprintf(p->problem, sizeof p->problem,
                 "broker %zu of --cluster (%s) says it is node %u: every broker's --node-id must "
                 "be its position in --cluster",
                 index, p->endpoint, h->node_id);
    } else if (!same_list) {
        /* Name the first entry that differs, so the operator sees which address is wrong. */
        size_t at = 0;
        while (at < ps->n && at < h->n_cluster &&
               strcmp(h->cluster[at], ps->peers[at].endpoint) == 0)
            at++;
        snprintf(p->problem, sizeof p->problem,
                 "broker %zu (%s) was started with a different --cluster: %zu brokers, entry %zu "
                 "is '%s' there and '%s' here; every broker must be given the same ordered list",
                 index, p->endpoint, h->n_cluster, at,
                 at < h->n_cluster ? h->cluster[at] : "(none)",
                 at < ps->n ? ps->peers[at].endpoint : "(none)");
    } else if (h->partitions != ps->opts.partitions) {
        snprintf(p->problem, sizeof p->problem,
                 "broker %zu (%s) has --partitions %u, this broker %u: P is fixed for the cluster",
                 index, p->endpoint, h->partitions, ps->opts.partitions);
    }
    if (strcmp(was, p->problem) != 0) {
        if (p->problem[0] != '\0')
            HR_ERROR(MOD, "event=cluster_misconfigured problem=\"%s\" action=refusing_requests",
                     p->problem);
        else
            HR_INFO(MOD, "event=cluster_consistent peer=%s", p->endpoint);
    }
}

/* ---- replies ------------------------------------------------------------------------------- */

static void hr_peers_on_reply(hr_peers_t *ps, size_t index, hr_reply_t *reply)
{
    hr_peer_t *p = &ps->peers[index];
    p->last_reply_ms = ps->now_ms;
    if (!p->up)
        HR_INFO(MOD, "event=peer_up peer=%s", p->endpoint);
    p->up = true;
    p->answered = true;
    if (reply->body_case == HERALD__V1__REPLY__BODY_HELLO) {
        hr_peers_check_hello(ps, index, reply->hello);
        return;
    }
    uint64_t id = reply->request_id;
    if (id < ps->base || id >= ps->next)
        return; /* timed out already */
    hr_forward_t *f = hr_peers_slot(ps, id);
    if (!f->live || f->owner != index)
        return;
    reply->request_id = f->client_request_id;
    hr_peers_finish(ps, f, reply, NULL);
    hr_peers_trim(ps);
}

static void hr_peers_drain(hr_peers_t *ps, size_t index)
{
    hr_peer_t *p = &ps->peers[index];
    for (;;) {
        zmq_msg_t frames[2];
        size_t n = 0, total = 0;
        int more = 1;
        while (more) {
            zmq_msg_t frame;
            zmq_msg_init(&frame);
            if (zmq_msg_recv(&frame, p->dealer, total == 0 ? ZMQ_DONTWAIT : 0) < 0) {
                zmq_msg_close(&frame);
                if (total == 0)
                    return;
                break;
            }
            more = zmq_msg_more(&frame);
            total++;
            if (n < 2)
                frames[n++] = frame;
            else
                zmq_msg_close(&frame);
        }
        if (total == 2 && zmq_msg_size(&frames[0]) == 0) {
            hr_reply_t *reply = NULL;
            char why[128];
            if (hr_codec_decode_reply(zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]),
                                      ps->opts.max_reply_bytes, &reply, why, sizeof why) == 0)
                hr_peers_on_reply(ps, index, reply);
            else
                HR_WARN(MOD, "event=bad_reply peer=%s error=\"%s\"", p->endpoint, why);
            hr_codec_reply_free(&reply);
        }
        for (size_t i = 0; i < n; i++)
            zmq_msg_close(&frames[i]);
    }
}

/* ---- the public functions ------------------------------------------------------------------ */

int hr_peers_new(hr_peers_t **out, const hr_peers_options_t *opts, char *err, size_t errlen)
{
    hr_peers_t *ps = hr_calloc(1, sizeof *ps);
    ps->opts = *opts;
    ps->opts.cluster = NULL;
    ps->n = opts->n_cluster;
    ps->peers = hr_calloc(ps->n, sizeof *ps->peers);
    ps->cap = 64;
    ps->ring = hr_calloc(ps->cap, sizeof *ps->ring);
    ps->base = ps->next = 1; /* 0 is the id of Hellos */
    ps->zctx = zmq_ctx_new();
    for (size_t i = 0; i < ps->n; i++) {
        hr_peer_t *p = &ps->peers[i];
        p->endpoint = hr_strndup(opts->cluster[i], strlen(opts->cluster[i]));
        if (i == opts->self)
            continue;
        p->dealer = zmq_socket(ps->zctx, ZMQ_DEALER);
        int linger = 0, hwm = HR_PEER_SNDHWM, ivl = 100, ivl_max = 1000;
        zmq_setsockopt(p->dealer, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(p->dealer, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(p->dealer, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
        zmq_setsockopt(p->dealer, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
        if (zmq_connect(p->dealer, p->endpoint) != 0) {
            snprintf(err, errlen, "--cluster: cannot dial broker %zu at %s: %s", i, p->endpoint,
                     zmq_strerror(zmq_errno()));
            hr_peers_destroy(&ps);
            return HR_E_INVALID_REQUEST;
        }
    }
    *out = ps;
    return 0;
}

void hr_peers_destroy(hr_peers_t **peers)
{
    hr_peers_t *ps = peers != NULL ? *peers : NULL;
    if (ps == NULL)
        return;
    for (uint64_t id = ps->base; id < ps->next; id++) {
        hr_forward_t *f = hr_peers_slot(ps, id);
        if (f->live)
            hr_peers_finish(ps, f, NULL, "the broker is stopping");
    }
    for (size_t i = 0; i < ps->n; i++) {
        if (ps->peers[i].dealer != NULL)
            zmq_close(ps->peers[i].dealer);
        hr_free(ps->peers[i].endpoint);
    }
    zmq_ctx_term(ps->zctx);
    hr_free(ps->peers);
    hr_free(ps->ring);
    hr_free(ps);
    *peers = NULL;
}

size_t hr_peers_pollitems(hr_peers_t *ps, zmq_pollitem_t *items, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < ps->n && k < cap; i++)
        if (ps->peers[i].dealer != NULL)
            items[k++] = (zmq_pollitem_t){ps->peers[i].dealer, 0, ZMQ_POLLIN, 0};
    return k;
}

void hr_peers_process(hr_peers_t *ps, uint64_t now_ms)
{
    ps->now_ms = now_ms;
    for (size_t i = 0; i < ps->n; i++) {
        hr_peer_t *p = &ps->peers[i];
        if (p->dealer == NULL)
            continue;
        hr_peers_drain(ps, i);
        if (p->up && now_ms - p->last_reply_ms > ps->opts.down_after_ms) {
            p->up = false;
            HR_WARN(MOD, "event=peer_down peer=%s silent_ms=%llu", p->endpoint,
                    (unsigned long long)(now_ms - p->last_reply_ms));
        }
        if (now_ms >= p->next_hello_ms) {
            hr_peers_hello(ps, p);
            p->next_hello_ms = now_ms + ps->opts.hello_interval_ms;
        }
    }
    while (ps->base < ps->next) {
        hr_forward_t *f = hr_peers_slot(ps, ps->base);
        if (f->live && f->deadline_ms > now_ms)
            break;
        if (f->live)
            hr_peers_finish(ps, f, NULL, "the partition owner did not answer in time");
        ps->base++;
    }
}

uint64_t hr_peers_next_due(const hr_peers_t *ps)
{
    uint64_t due = UINT64_MAX;
    for (size_t i = 0; i < ps->n; i++)
        if (ps->peers[i].dealer != NULL && ps->peers[i].next_hello_ms < due)
            due = ps->peers[i].next_hello_ms;
    for (uint64_t id = ps->base; id < ps->next; id++) {
        const hr_forward_t *f = &ps->ring[id & (ps->cap - 1)];
        if (f->live) {
            if (f->deadline_ms < due)
                due = f->deadline_ms;
            break;
        }
    }
    return due;
}

int hr_peers_forward(hr_peers_t *ps, uint32_t owner, hr_request_t *req, zmq_msg_t *identity,
                     char *why, size_t why_len)
{
    hr_peer_t *p = owner < ps->n ? &ps->peers[owner] : NULL;
    if (p == NULL || p->dealer == NULL || !p->up) {
        snprintf(why, why_len, "broker %u (%s), which owns this partition, cannot be reached",
                 owner, p != NULL ? p->endpoint : "?");
        return HR_E_UNAVAILABLE;
    }
    uint64_t client_id = req->request_id;
    uint64_t id = hr_peers_add_forward(ps);
    req->request_id = id;
    req->forwarded = true;
    req->version = HR_PROTOCOL_VERSION;
    uint8_t *buf;
    size_t len;
    hr_codec_encode_request(req, &buf, &len);
    req->request_id = client_id;
    int rc = zmq_send(p->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc == 0)
        rc = zmq_send(p->dealer, buf, len, ZMQ_DONTWAIT) < 0 ? -1 : 0;
    hr_free(buf);
    if (rc != 0) {
        ps->next--; /* never used */
        snprintf(why, why_len, "the queue to broker %u (%s) is full", owner, p->endpoint);
        return HR_E_UNAVAILABLE;
    }
    hr_forward_t *f = hr_peers_slot(ps, id);
    f->live = true;
    f->owner = owner;
    f->client_request_id = client_id;
    f->deadline_ms = ps->now_ms + ps->opts.forward_timeout_ms;
    zmq_msg_init(&f->identity);
    zmq_msg_move(&f->identity, identity);
    ps->pending++;
    ps->forwarded++;
    return 0;
}

bool hr_peers_up(const hr_peers_t *ps, uint32_t index)
{
    return index < ps->n && ps->peers[index].up;
}

const char *hr_peers_problem(const hr_peers_t *ps)
{
    for (size_t i = 0; i < ps->n; i++)
        if (ps->peers[i].problem[0] != '\0')
            return ps->peers[i].problem;
    return NULL;
}

uint64_t hr_peers_forwarded(const hr_peers_t *ps)
{
    return ps->forwarded;
}

size_t hr_peers_pending(const hr_peers_t *ps)
{
    return ps->pending;
}
