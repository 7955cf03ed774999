#include "sub.h"

#include "codec.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "partition.h"
#include "topic.h"

#include <czmq.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MOD "sub"

/* Live messages held for a topic while its gap is backfilled; past this, they are dropped and
 * the backfill simply reads further (the log has them all). */
#define HR_HELD_MAX 10000
/* How often waiting catch-ups and backfills retry after the broker was unavailable, ms. */
#define HR_RETRY_MS 500

typedef struct hr_topic hr_topic_t;
typedef struct hr_sub_topic hr_sub_topic_t;

typedef enum {
    HR_ST_HEAD,    /* asking the broker for the topic's head (start after it: new messages) */
    HR_ST_START,   /* has a position; its catch-up waits for the heads of the subscription's
                      new topics, so that the first cursor handed out names every topic */
    HR_ST_CATCHUP, /* reading history from the position; live messages are ignored meanwhile */
    HR_ST_PAUSED,  /* catch-up waits for the transport's queue to drain (backpressure) */
    HR_ST_WAIT,    /* the broker was unavailable: retry on the next tick */
    HR_ST_LIVE,    /* in step with the registry's live stream */
    HR_ST_STOPPED, /* the subscriber was cut off: nothing more */
} hr_sub_state_t;

/* One topic of one subscriber: its position and its link in the topic's subscriber list. */
struct hr_sub_topic {
    hr_subscriber_t *sub;
    hr_topic_t *topic;
    hr_sub_topic_t *prev, *next; /* the topic's subscribers */
    hr_sub_state_t state;
    hr_sub_state_t retry_state; /* HEAD or CATCHUP, to redo after WAIT */
    uint64_t epoch, seq;        /* position: last delivered (seq 0 = none in this epoch) */
    bool reset_invalid;         /* owe the client an invalid_cursor reset */
    hr_brokers_call_t *call;
};

struct hr_subscriber {
    hr_edge_t *edge;
    const hr_transport_t *transport;
    void *data;
    hr_subscriber_t *prev, *next; /* all subscribers of the registry */
    size_t n_topics;
    hr_sub_topic_t *topics;
    hr_cursor_t cursor;
    char *cursor_text;
    size_t cursor_len, cursor_cap;
    bool cursor_dirty;
    bool stopped;
    bool positioned; /* the transport was told every topic has a position */
};

/* A topic with local subscribers. */
struct hr_topic {
    hr_registry_t *registry;
    char *name; /* NUL-terminated: the registry's key */
    size_t len;
    uint64_t hash;
    uint64_t epoch;     /* epoch of live_last; 0 until known */
    uint64_t live_last; /* last seq the live path delivered in order; 0 until known */
    hr_sub_topic_t *subs;
    size_t n_subs;
    bool backfilling;
    bool backfill_wait; /* the broker was unavailable: retry on the next tick */
    hr_brokers_call_t *call;
    hr_msg_t **held;
    size_t n_held, cap_held;
    bool held_overflow;
};

struct hr_registry {
    hr_edge_t *edge;
    zhashx_t *topics; /* name -> hr_topic_t */
    hr_subscriber_t *subs;
    uv_timer_t retry_timer;
};

static void hr_sub_topic_catchup(hr_sub_topic_t *st);
static void hr_sub_topic_head(hr_sub_topic_t *st);
static void hr_topic_backfill(hr_registry_t *r, hr_topic_t *t);
static void hr_topic_live(hr_registry_t *r, hr_topic_t *t, hr_msg_t *msg);

/* ---- cursor ------------------------------------------------------------------------------- */

static void hr_sub_set_position(hr_sub_topic_t *st, uint64_t epoch, uint64_t seq)
{
    st->epoch = epoch;
    st->seq = seq;
    hr_cursor_set(&st->sub->cursor, st->topic->hash, epoch, seq);
    st->sub->cursor_dirty = true;
}

const char *hr_subscriber_cursor(hr_subscriber_t *sub, size_t *len)
{
    if (sub->cursor_dirty || sub->cursor_text == NULL) {
        size_t need = HR_CURSOR_TEXT_CAP(sub->cursor.n);
        if (need > sub->cursor_cap) {
            sub->cursor_cap = need;
            sub->cursor_text = hr_realloc(sub->cursor_text, need);
        }
        hr_cursor_format(&sub->cursor, sub->cursor_text, sub->cursor_cap, &sub->cursor_len);
        sub->cursor_dirty = false;
    }
    if (len != NULL)
        *len = sub->cursor_len;
    return sub->cursor_text;
}

/* ---- delivery to one subscriber ------------------------------------------------------------ */

static void hr_sub_count_reset(hr_edge_t *edge, const char *reason)
{
    if (strcmp(reason, "retention") == 0)
        edge->metrics.resets_retention++;
    else if (strcmp(reason, "epoch") == 0)
        edge->metrics.resets_epoch++;
    else
        edge->metrics.resets_invalid_cursor++;
}

static int hr_sub_reset(hr_sub_topic_t *st, const char *reason, uint64_t next_seq)
{
    hr_subscriber_t *sub = st->sub;
    hr_sub_count_reset(sub->edge, reason);
    size_t len;
    const char *cursor = hr_subscriber_cursor(sub, &len);
    int rc =
        sub->transport->reset(sub, st->topic->name, st->topic->len, reason, next_seq, cursor, len);
    if (rc != 0)
        hr_subscriber_stop(sub);
    return rc;
}

/* Hand one in-order message to the transport. */
static int hr_sub_deliver(hr_sub_topic_t *st, hr_msg_t *msg)
{
    hr_subscriber_t *sub = st->sub;
    uint64_t epoch = st->epoch, seq = st->seq;
    hr_sub_set_position(st, msg->epoch, msg->seq);
    size_t len;
    const char *cursor = hr_subscriber_cursor(sub, &len);
    int rc = sub->transport->deliver(sub, msg, cursor, len);
    if (rc != 0) {
        /* Not delivered: the cursor must not claim it (a transport's last word carries it). */
        hr_sub_set_position(st, epoch, seq);
        hr_subscriber_stop(sub);
        return rc;
    }
    sub->edge->metrics.deliveries[sub->transport->id]++;
    return 0;
}

/* The client's queue is over half its bound (hr_transport_t.pending_bytes). */
static bool hr_sub_congested(hr_subscriber_t *sub)
{
    return sub->transport->pending_bytes(sub) > (size_t)sub->edge->config.queue_bytes / 2;
}

/* A live message for a LIVE subscriber: deliver it if it follows the position exactly;
 * otherwise go back to the log, which has everything in order. A subscriber whose queue is over
 * half full goes back to the log too, where it reads at its own pace (pausing until its queue
 * drains): a burst or a backfill longer than the queue slows a client that reads instead of
 * cutting it off. One that does not read at all is cut off by its transport's stall watch
 * (hr_outq: over half full for --slow-client-grace). */
static void hr_sub_topic_live(hr_sub_topic_t *st, hr_msg_t *msg)
{
    if (st->state != HR_ST_LIVE)
        return;
    if (msg->epoch == st->epoch && msg->seq <= st->seq)
        return; /* already delivered */
    if (msg->epoch == st->epoch && msg->seq == st->seq + 1 && !hr_sub_congested(st->sub)) {
        hr_sub_deliver(st, msg);
        return;
    }
    hr_sub_topic_catchup(st);
}

/* ---- catch-up and head, per subscriber topic ------------------------------------------------ */

static void hr_sub_topic_wait(hr_sub_topic_t *st, hr_sub_state_t redo)
{
    st->state = HR_ST_WAIT;
    st->retry_state = redo;
}

/* Catch-up finished a page at the broker's head: join the live stream, unless the live path has
 * already moved past our position (messages that arrived while we read the log). */
/* Tell the transport when every topic is in step with the live stream. */
/* A topic whose broker is down does not hold the others back: what it has cannot be read
 * until the broker returns (its position stays in the cursor), and the reachable topics are
 * answered meanwhile (DESIGN.md: other partitions are unaffected). */
static void hr_sub_check_caught_up(hr_subscriber_t *sub)
{
    if (sub->stopped || sub->transport->caught_up == NULL)
        return;
    hr_brokers_t *brokers = sub->edge->brokers;
    size_t live = 0;
    for (size_t i = 0; i < sub->n_topics; i++) {
        const hr_sub_topic_t *st = &sub->topics[i];
        if (st->state == HR_ST_LIVE) {
            live++;
            continue;
        }
        if (hr_brokers_count(brokers) == 0 ||
            hr_brokers_up(brokers, hr_brokers_owner(brokers, st->topic->name, st->topic->len)))
            return;
    }
    if (live > 0)
        sub->transport->caught_up(sub);
}

static void hr_sub_topic_go_live(hr_sub_topic_t *st)
{
    hr_topic_t *t = st->topic;
    /* The transport may have stopped the subscriber while taking the page (a poll that reached
     * its limit): a stopped topic stays stopped, and asks the broker nothing more. */
    if (st->state == HR_ST_STOPPED || st->sub->stopped)
        return;
    st->state = HR_ST_LIVE;
    /* Epochs that differ are settled by the next live message, which sends whichever side is
     * stale back to the log; comparing here could only loop. */
    if (t->epoch != 0 && t->epoch == st->epoch && t->live_last > st->seq && !t->backfilling)
        hr_sub_topic_catchup(st);
    else
        hr_sub_check_caught_up(st->sub);
}

static void hr_sub_topic_on_fetch(void *arg, int status, const hr_reply_t *reply)
{
    hr_sub_topic_t *st = arg;
    hr_subscriber_t *sub = st->sub;
    st->call = NULL;
    if (st->state == HR_ST_STOPPED)
        return;
    if (status != 0) {
        hr_sub_topic_wait(st, HR_ST_CATCHUP);
        return;
    }
    if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR) {
        if (strcmp(reply->error->code, "invalid_cursor") == 0) {
            /* A position beyond the topic's head (a cursor from the future, or from a log that
             * lost its newest commits): say so and continue from the head. */
            HR_DEBUG(MOD, "event=cursor_beyond_head topic=%s seq=%llu", st->topic->name,
                     (unsigned long long)st->seq);
            st->reset_invalid = true;
            hr_sub_topic_head(st);
        } else {
            HR_WARN(MOD, "event=fetch_failed topic=%s code=%s", st->topic->name,
                    reply->error->code);
            hr_sub_topic_wait(st, HR_ST_CATCHUP);
        }
        return;
    }
    const Herald__V1__FetchReply *f = reply->fetch;
    if (st->reset_invalid || f->reset != NULL) {
        const char *reason = "invalid_cursor";
        if (!st->reset_invalid && f->reset->reason == HERALD__V1__RESET__REASON__RETENTION)
            reason = "retention";
        else if (!st->reset_invalid && f->reset->reason == HERALD__V1__RESET__REASON__EPOCH)
            reason = "epoch";
        st->reset_invalid = false;
        uint64_t next = f->reset != NULL    ? f->reset->next_seq
                        : f->n_messages > 0 ? f->messages[0]->seq
                                            : f->last_seq + 1;
        /* The reset moves the position to just before `next`, in the log's current epoch. */
        hr_sub_set_position(st, f->epoch, next - 1);
        if (hr_sub_reset(st, reason, next) != 0)
            return;
    }
    for (size_t i = 0; i < f->n_messages; i++) {
        if (hr_sub_congested(sub)) {
            /* The client has not taken what it has (several topics catching up at once fill a
             * queue page by page): the rest of this page is read again from the position once
             * the queue has drained. */
            st->state = HR_ST_PAUSED;
            return;
        }
        hr_msg_t *msg = hr_msg_from_proto(f->messages[i]);
        int rc = hr_sub_deliver(st, msg);
        hr_msg_unref(&msg);
        if (rc != 0)
            return;
    }
    if (f->n_messages == 0 && f->epoch != 0 && f->epoch != st->epoch)
        hr_sub_set_position(st, f->epoch, st->seq);
    if (f->n_messages > 0 && st->seq < f->last_seq) {
        /* More history: read on, unless the client has not taken what it has. */
        if (hr_sub_congested(sub))
            st->state = HR_ST_PAUSED;
        else
            hr_sub_topic_catchup(st);
        return;
    }
    if (f->n_messages > 0 && hr_sub_congested(sub)) {
        /* At the head, but the client has not taken this page yet: join the live stream once
         * it has (on_drain reads on from the log, then goes live). */
        st->state = HR_ST_PAUSED;
        return;
    }
    hr_sub_topic_go_live(st);
}

static void hr_sub_topic_catchup(hr_sub_topic_t *st)
{
    hr_edge_t *edge = st->sub->edge;
    if (st->call != NULL || st->state == HR_ST_STOPPED || st->sub->stopped)
        return;
    st->state = HR_ST_CATCHUP;
    edge->metrics.catchups++;
    Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
    f.topic = (ProtobufCBinaryData){st->topic->len, (uint8_t *)st->topic->name};
    f.after_seq = st->seq;
    f.epoch = st->epoch;
    f.limit = (uint32_t)edge->config.fetch_page;
    size_t page =
        st->sub->transport->page_limit != NULL ? st->sub->transport->page_limit(st->sub) : 0;
    if (page > 0 && page < f.limit)
        f.limit = (uint32_t)page;
    /* A page never fills more than a quarter of the client's queue: the edge sets the pace of a
     * catch-up, so the client must not be cut off as slow because of its size. */
    f.max_bytes = (uint32_t)(edge->config.queue_bytes / 4);
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
    req.fetch = &f;
    if (hr_brokers_request(edge->brokers, st->topic->name, st->topic->len, &req,
                           hr_sub_topic_on_fetch, st, &st->call) != 0)
        hr_sub_topic_wait(st, HR_ST_CATCHUP);
}

/* No head is being asked for any more (answered, or the broker is unavailable): start the
 * catch-ups that waited for them. Until then no message of the subscription is delivered, so
 * every cursor it hands out names each of its topics (a client that resumes from it must not
 * start a topic over "from now" and miss what was published meanwhile). */
static void hr_sub_start_waiting(hr_subscriber_t *sub)
{
    for (size_t i = 0; i < sub->n_topics; i++)
        if (sub->topics[i].state == HR_ST_HEAD)
            return;
    if (!sub->positioned && !sub->stopped) {
        sub->positioned = true;
        if (sub->transport->positioned != NULL)
            sub->transport->positioned(sub);
    }
    for (size_t i = 0; i < sub->n_topics && !sub->stopped; i++)
        if (sub->topics[i].state == HR_ST_START)
            hr_sub_topic_catchup(&sub->topics[i]);
}

static void hr_sub_topic_on_head(void *arg, int status, const hr_reply_t *reply)
{
    hr_sub_topic_t *st = arg;
    hr_subscriber_t *sub = st->sub;
    st->call = NULL;
    if (st->state == HR_ST_STOPPED)
        return;
    if (status != 0 || reply->body_case != HERALD__V1__REPLY__BODY_FETCH) {
        hr_sub_topic_wait(st, HR_ST_HEAD);
        hr_sub_start_waiting(sub);
        return;
    }
    const Herald__V1__FetchReply *f = reply->fetch;
    hr_sub_set_position(st, f->epoch, f->last_seq);
    if (st->reset_invalid) {
        st->reset_invalid = false;
        if (hr_sub_reset(st, "invalid_cursor", f->last_seq + 1) != 0)
            return;
    }
    hr_sub_topic_go_live(st);
    if (!sub->stopped)
        hr_sub_start_waiting(sub);
}

static void hr_sub_topic_head(hr_sub_topic_t *st)
{
    hr_edge_t *edge = st->sub->edge;
    if (st->call != NULL || st->state == HR_ST_STOPPED || st->sub->stopped)
        return;
    st->state = HR_ST_HEAD;
    Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
    f.topic = (ProtobufCBinaryData){st->topic->len, (uint8_t *)st->topic->name};
    f.head_only = true;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
    req.fetch = &f;
    if (hr_brokers_request(edge->brokers, st->topic->name, st->topic->len, &req,
                           hr_sub_topic_on_head, st, &st->call) != 0) {
        hr_sub_topic_wait(st, HR_ST_HEAD);
        hr_sub_start_waiting(st->sub);
    }
}

void hr_subscriber_on_drain(hr_subscriber_t *sub)
{
    for (size_t i = 0; i < sub->n_topics; i++)
        if (sub->topics[i].state == HR_ST_PAUSED)
            hr_sub_topic_catchup(&sub->topics[i]);
}

/* ---- the registry: topic-level live path --------------------------------------------------- */

static void hr_topic_fanout(hr_topic_t *t, hr_msg_t *msg)
{
    hr_sub_topic_t *st = t->subs;
    while (st != NULL) {
        hr_sub_topic_t *next = st->next;
        hr_sub_topic_live(st, msg);
        st = next;
    }
}

static void hr_topic_hold(hr_topic_t *t, hr_msg_t *msg)
{
    if (t->n_held >= HR_HELD_MAX) {
        t->held_overflow = true;
        return;
    }
    if (t->n_held == t->cap_held) {
        t->cap_held = t->cap_held ? t->cap_held * 2 : 16;
        t->held = hr_realloc(t->held, t->cap_held * sizeof *t->held);
    }
    t->held[t->n_held++] = hr_msg_ref(msg);
}

/* One live message for topic `t`, in the order the broker committed it. */
static void hr_topic_live(hr_registry_t *r, hr_topic_t *t, hr_msg_t *msg)
{
    if (t->backfilling) {
        hr_topic_hold(t, msg);
        return;
    }
    if (t->live_last == 0 || msg->epoch != t->epoch) {
        /* First message seen, or the log was recreated: this is where the live path starts;
         * subscribers behind it catch up from the log themselves. */
        t->epoch = msg->epoch;
        t->live_last = msg->seq;
        hr_topic_fanout(t, msg);
        return;
    }
    if (msg->seq <= t->live_last)
        return; /* a duplicate, e.g. already backfilled */
    if (msg->seq == t->live_last + 1) {
        t->live_last = msg->seq;
        hr_topic_fanout(t, msg);
        return;
    }
    /* A gap: the PUB socket dropped messages. Fill it from the log before going on. */
    hr_topic_hold(t, msg);
    hr_topic_backfill(r, t);
}

static void hr_topic_on_backfill(void *arg, int status, const hr_reply_t *reply)
{
    hr_topic_t *t = arg;
    hr_registry_t *r = t->registry;
    t->call = NULL;
    if (status != 0 || reply->body_case != HERALD__V1__REPLY__BODY_FETCH) {
        t->backfill_wait = true; /* retried by the registry's tick */
        return;
    }
    const Herald__V1__FetchReply *f = reply->fetch;
    if (f->epoch != t->epoch || f->reset != NULL) {
        /* The log changed under us (recreated, or trimmed past our position): restart the live
         * path at its head; subscribers see the gap and catch up with a reset of their own. */
        t->epoch = f->epoch;
        t->live_last = f->last_seq;
    }
    for (size_t i = 0; i < f->n_messages; i++) {
        const Herald__V1__Message *m = f->messages[i];
        if (m->seq <= t->live_last)
            continue;
        hr_msg_t *msg = hr_msg_from_proto(m);
        t->live_last = msg->seq;
        hr_topic_fanout(t, msg);
        hr_msg_unref(&msg);
    }
    if (f->n_messages > 0 && t->live_last < f->last_seq) {
        t->backfilling = false;
        hr_topic_backfill(r, t);
        return;
    }
    /* Caught up: replay what was held, in order, through the normal live path. */
    t->backfilling = false;
    size_t n = t->n_held;
    hr_msg_t **held = t->held;
    bool overflow = t->held_overflow;
    t->held = NULL;
    t->n_held = t->cap_held = 0;
    t->held_overflow = false;
    for (size_t i = 0; i < n; i++) {
        if (!t->backfilling)
            hr_topic_live(r, t, held[i]);
        else
            hr_topic_hold(t, held[i]);
        hr_msg_unref(&held[i]);
    }
    hr_free(held);
    if (overflow && !t->backfilling)
        hr_topic_backfill(r, t); /* some live messages were dropped: read to the head again */
}

static void hr_topic_backfill(hr_registry_t *r, hr_topic_t *t)
{
    if (t->backfilling)
        return;
    t->backfilling = true;
    t->backfill_wait = false;
    r->edge->metrics.backfills++;
    Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
    f.topic = (ProtobufCBinaryData){t->len, (uint8_t *)t->name};
    f.after_seq = t->live_last;
    f.epoch = t->epoch;
    f.limit = (uint32_t)r->edge->config.fetch_page;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
    req.fetch = &f;
    if (hr_brokers_request(r->edge->brokers, t->name, t->len, &req, hr_topic_on_backfill, t,
                           &t->call) != 0)
        t->backfill_wait = true;
}

void hr_registry_on_live(hr_registry_t *r, const Herald__V1__Message *m)
{
    char name[HR_TOPIC_MAX + 1];
    if (m->topic.len == 0 || m->topic.len > HR_TOPIC_MAX)
        return;
    memcpy(name, m->topic.data, m->topic.len);
    name[m->topic.len] = '\0';
    hr_topic_t *t = zhashx_lookup(r->topics, name);
    if (t == NULL)
        return;
    r->edge->metrics.live_messages++;
    hr_msg_t *msg = hr_msg_from_proto(m);
    hr_topic_live(r, t, msg);
    hr_msg_unref(&msg);
}

void hr_registry_on_broker_state(hr_registry_t *r, uint32_t index, bool up)
{
    if (!up) {
        /* Its topics no longer hold back subscribers that also read reachable ones. */
        for (hr_subscriber_t *sub = r->subs; sub != NULL; sub = sub->next)
            hr_sub_check_caught_up(sub);
        return;
    }
    /* After losing and regaining a broker, anything it committed meanwhile reached no one:
     * backfill every topic it owns from where the live path stopped. */
    for (hr_topic_t *t = zhashx_first(r->topics); t != NULL; t = zhashx_next(r->topics)) {
        if (hr_brokers_owner(r->edge->brokers, t->name, t->len) != index)
            continue;
        if (t->live_last != 0) {
            hr_topic_backfill(r, t);
            continue;
        }
        /* No live message seen yet, so no topic-level position: each subscriber in step with
         * the (empty) live stream checks the log from its own position instead. */
        for (hr_sub_topic_t *st = t->subs; st != NULL; st = st->next)
            if (st->state == HR_ST_LIVE)
                hr_sub_topic_catchup(st);
    }
}

/* Retry what waited for an unavailable broker. */
static void hr_registry_on_tick(uv_timer_t *timer)
{
    hr_registry_t *r = timer->data;
    for (hr_topic_t *t = zhashx_first(r->topics); t != NULL; t = zhashx_next(r->topics)) {
        if (t->backfill_wait) {
            t->backfilling = false;
            hr_topic_backfill(r, t);
        }
    }
    for (hr_subscriber_t *sub = r->subs; sub != NULL; sub = sub->next) {
        for (size_t i = 0; i < sub->n_topics; i++) {
            hr_sub_topic_t *st = &sub->topics[i];
            if (st->state != HR_ST_WAIT)
                continue;
            if (st->retry_state == HR_ST_HEAD)
                hr_sub_topic_head(st);
            else
                hr_sub_topic_catchup(st);
        }
    }
}

static void hr_registry_heartbeat_one(hr_subscriber_t *sub, void *arg)
{
    (void)arg;
    if (!sub->stopped && sub->transport->heartbeat != NULL)
        sub->transport->heartbeat(sub);
}

void hr_registry_heartbeat(hr_registry_t *r)
{
    hr_registry_foreach(r, hr_registry_heartbeat_one, NULL);
}

static void hr_registry_shutdown_one(hr_subscriber_t *sub, void *arg)
{
    uint64_t retry = *(const uint64_t *)arg;
    retry += retry > 0 ? (uint64_t)rand() % retry : 0;
    if (sub->transport->shutdown != NULL)
        sub->transport->shutdown(sub, retry);
}

void hr_registry_shutdown(hr_registry_t *r, uint64_t retry_ms)
{
    hr_registry_foreach(r, hr_registry_shutdown_one, &retry_ms);
}

size_t hr_registry_topics(const hr_registry_t *r)
{
    return zhashx_size(r->topics);
}

void hr_registry_foreach(hr_registry_t *r, void (*fn)(hr_subscriber_t *sub, void *arg), void *arg)
{
    hr_subscriber_t *sub = r->subs;
    while (sub != NULL) {
        hr_subscriber_t *next = sub->next;
        fn(sub, arg);
        sub = next;
    }
}

static void hr_topic_free(hr_topic_t *t)
{
    if (t->call != NULL)
        hr_brokers_cancel(t->call);
    for (size_t i = 0; i < t->n_held; i++)
        hr_msg_unref(&t->held[i]);
    hr_free(t->held);
    hr_free(t->name);
    hr_free(t);
}

int hr_registry_new(hr_registry_t **out, hr_edge_t *edge)
{
    hr_registry_t *r = hr_calloc(1, sizeof *r);
    r->edge = edge;
    r->topics = zhashx_new();
    uv_timer_init(edge->loop, &r->retry_timer);
    r->retry_timer.data = r;
    uv_timer_start(&r->retry_timer, hr_registry_on_tick, HR_RETRY_MS, HR_RETRY_MS);
    uv_unref((uv_handle_t *)&r->retry_timer);
    *out = r;
    return 0;
}

static void hr_registry_free_cb(uv_handle_t *handle)
{
    hr_free(handle->data);
}

void hr_registry_destroy(hr_registry_t **registry)
{
    hr_registry_t *r = *registry;
    if (r == NULL)
        return;
    while (r->subs != NULL) {
        hr_subscriber_t *sub = r->subs;
        hr_subscriber_destroy(&sub);
    }
    for (hr_topic_t *t = zhashx_first(r->topics); t != NULL; t = zhashx_next(r->topics))
        hr_topic_free(t);
    zhashx_destroy(&r->topics);
    uv_close((uv_handle_t *)&r->retry_timer, hr_registry_free_cb);
    *registry = NULL;
}

/* ---- subscribers -------------------------------------------------------------------------- */

static hr_topic_t *hr_registry_attach(hr_registry_t *r, hr_sub_topic_t *st, const char *name,
                                      size_t len)
{
    char key[HR_TOPIC_MAX + 1];
    memcpy(key, name, len);
    key[len] = '\0';
    hr_topic_t *t = zhashx_lookup(r->topics, key);
    if (t == NULL) {
        t = hr_calloc(1, sizeof *t);
        t->registry = r;
        t->name = hr_strndup(name, len);
        t->len = len;
        t->hash = hr_fnv1a64(name, len);
        zhashx_insert(r->topics, t->name, t);
        /* Live messages first, then history: nothing can fall between the two. */
        hr_brokers_subscribe(r->edge->brokers, name, len);
    }
    st->topic = t;
    st->next = t->subs;
    if (t->subs != NULL)
        t->subs->prev = st;
    t->subs = st;
    t->n_subs++;
    return t;
}

static void hr_registry_detach(hr_registry_t *r, hr_sub_topic_t *st)
{
    hr_topic_t *t = st->topic;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        t->subs = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    if (--t->n_subs > 0)
        return;
    hr_brokers_unsubscribe(r->edge->brokers, t->name, t->len);
    zhashx_delete(r->topics, t->name);
    hr_topic_free(t);
}

hr_subscriber_t *hr_subscriber_new(hr_edge_t *edge, const hr_transport_t *transport, void *data,
                                   const char *const *names, const size_t *lens, size_t n,
                                   const hr_cursor_t *cursor, bool cursor_untrusted)
{
    hr_registry_t *r = edge->registry;
    hr_subscriber_t *sub = hr_calloc(1, sizeof *sub);
    sub->edge = edge;
    sub->transport = transport;
    sub->data = data;
    sub->n_topics = n;
    sub->topics = hr_calloc(n, sizeof *sub->topics);
    hr_cursor_init(&sub->cursor);
    sub->cursor_dirty = true;
    sub->next = r->subs;
    if (r->subs != NULL)
        r->subs->prev = sub;
    r->subs = sub;
    edge->metrics.connections[transport->id]++;
    for (size_t i = 0; i < n; i++) {
        hr_sub_topic_t *st = &sub->topics[i];
        st->sub = sub;
        hr_registry_attach(r, st, names[i], lens[i]);
    }
    /* Start each topic where the cursor says (DESIGN.md §Client contract): its position when
     * the cursor names it, the oldest retained message for `earliest` or an untrusted cursor
     * that did not parse, and the head (new messages only) otherwise. Topics with a position
     * wait (START) for the heads of the others before they catch up (hr_sub_start_waiting). */
    for (size_t i = 0; i < n; i++) {
        hr_sub_topic_t *st = &sub->topics[i];
        const hr_cursor_entry_t *e = NULL;
        if (cursor != NULL && cursor->kind == HR_CURSOR_POSITIONS)
            e = hr_cursor_find(cursor, st->topic->hash);
        st->state = HR_ST_START;
        if (cursor_untrusted) {
            st->reset_invalid = true;
            hr_sub_set_position(st, 0, 0);
        } else if (e != NULL) {
            hr_sub_set_position(st, e->epoch, e->seq);
        } else if (cursor != NULL && cursor->kind == HR_CURSOR_EARLIEST) {
            /* Recorded in the cursor at once as "before the oldest retained message" (epoch 0,
             * seq 0): a client that resumes before this topic's first delivery (its cursor
             * came from another topic's event) must still get this topic from its start,
             * not from the head. */
            hr_sub_set_position(st, 0, 0);
        } else {
            st->state = HR_ST_HEAD; /* asked for below */
        }
    }
    for (size_t i = 0; i < n && !sub->stopped; i++)
        if (sub->topics[i].state == HR_ST_HEAD && sub->topics[i].call == NULL)
            hr_sub_topic_head(&sub->topics[i]);
    if (!sub->stopped)
        hr_sub_start_waiting(sub);
    return sub;
}

void hr_subscriber_stop(hr_subscriber_t *sub)
{
    if (sub->stopped)
        return;
    sub->stopped = true;
    for (size_t i = 0; i < sub->n_topics; i++) {
        hr_sub_topic_t *st = &sub->topics[i];
        st->state = HR_ST_STOPPED;
        if (st->call != NULL) {
            hr_brokers_cancel(st->call);
            st->call = NULL;
        }
    }
}

void hr_subscriber_destroy(hr_subscriber_t **subp)
{
    hr_subscriber_t *sub = *subp;
    if (sub == NULL)
        return;
    hr_registry_t *r = sub->edge->registry;
    hr_subscriber_stop(sub);
    for (size_t i = 0; i < sub->n_topics; i++) {
        /* Whatever state the topic was left in, no broker reply may reach it after this. */
        if (sub->topics[i].call != NULL) {
            hr_brokers_cancel(sub->topics[i].call);
            sub->topics[i].call = NULL;
        }
        hr_registry_detach(r, &sub->topics[i]);
    }
    if (sub->prev != NULL)
        sub->prev->next = sub->next;
    else
        r->subs = sub->next;
    if (sub->next != NULL)
        sub->next->prev = sub->prev;
    sub->edge->metrics.connections[sub->transport->id]--;
    hr_cursor_reset(&sub->cursor);
    hr_free(sub->cursor_text);
    hr_free(sub->topics);
    hr_free(sub);
    *subp = NULL;
}

void *hr_subscriber_data(const hr_subscriber_t *sub)
{
    return sub->data;
}

const hr_transport_t *hr_subscriber_transport(const hr_subscriber_t *sub)
{
    return sub->transport;
}
