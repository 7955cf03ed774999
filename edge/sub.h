/*
 * hr_sub — subscribers, the transport interface and the edge's topic registry.
 *
 * A *subscriber* is topics plus a position per topic (epoch, last delivered seq), separate from
 * the connection that carries it (DESIGN.md §Edge transports). The *registry* maps each topic
 * with local subscribers to its live state and fans every live message out, in seq order, to
 * the subscribers that are in step with it.
 *
 * Delivery guarantee (DESIGN.md invariant 3): per subscriber and topic, messages are handed to
 * the transport in seq order with no gap and no duplicate, or after an explicit reset.
 *   - A new subscriber registers for live messages first, then reads history from the owning
 *     broker from its position (CATCHUP) page by page, and joins the live stream (LIVE) once the
 *     history is read; any live message that does not follow its position exactly sends it back
 *     to CATCHUP, so nothing can fall between history and live.
 *   - Without a position (no cursor, or a topic the cursor does not name) the subscriber asks
 *     the broker for the topic's head (HEAD) and starts after it: new messages only. The other
 *     topics start reading history only once those heads are known (or their broker is
 *     unavailable), so every cursor handed to the transport names every topic.
 *   - At topic level the registry checks seq continuity of the live stream (ZeroMQ PUB drops at
 *     its high-water mark) and backfills a gap from the broker once, for every subscriber, before
 *     delivering what follows; after a broker comes back it backfills every topic it owns.
 *
 * Loop thread only.
 */
#ifndef HR_SUB_H
#define HR_SUB_H

#include "cursor.h"
#include "edge.h"
#include "msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct hr_subscriber hr_subscriber_t;

/*
 * What a transport provides (STYLE.md: one static const table per transport file). Every
 * function receives the subscriber; the transport's own state is hr_subscriber_data(sub).
 */
typedef struct {
    const char *name; /* "sse", for logs and metrics */
    hr_transport_id_t id;
    /* Queue `msg` (take a reference to keep it). `cursor` (`cursor_len` bytes, NUL-terminated,
     * valid during the call) is the subscription's cursor right after this message. Return 0,
     * or -ENOBUFS when the client cannot keep up: the transport has started cutting it off and
     * the registry delivers nothing more to it. */
    int (*deliver)(hr_subscriber_t *sub, hr_msg_t *msg, const char *cursor, size_t cursor_len);
    /* Tell the client that `topic` lost its position: `reason` is "retention", "epoch" or
     * "invalid_cursor", delivery continues at `next_seq` (DESIGN.md §Client contract, Reset).
     * Return as deliver. */
    int (*reset)(hr_subscriber_t *sub, const char *topic, size_t topic_len, const char *reason,
                 uint64_t next_seq, const char *cursor, size_t cursor_len);
    /* Bytes queued for the client and not yet accepted by the kernel (catch-up pauses above
     * half the queue bound and resumes on hr_subscriber_on_drain). */
    size_t (*pending_bytes)(hr_subscriber_t *sub);
    /* Optional. Every --heartbeat ms: keep an idle stream alive through proxies. */
    void (*heartbeat)(hr_subscriber_t *sub);
    /* Optional. The edge is shutting down: give the client its cursor and a reconnect hint of
     * `retry_ms` (already jittered), then close. */
    void (*shutdown)(hr_subscriber_t *sub, uint64_t retry_ms);
    /* Optional. Most messages worth reading from the log in one page for this subscriber (a
     * poll needs no more than its answer's limit); 0 or absent = --fetch-page. */
    size_t (*page_limit)(hr_subscriber_t *sub);
    /* Optional. Every topic has read its history and is in step with the live stream (called
     * each time this becomes true; a long poll answers then if it holds messages). */
    void (*caught_up)(hr_subscriber_t *sub);
    /* Optional. Every topic has a position — the heads of the topics that start from "now" are
     * known — so the cursor names every topic and every message committed from here on will be
     * delivered. Called once per subscriber, possibly from inside hr_subscriber_new; not while
     * a topic's broker is unreachable (then once it answers). */
    void (*positioned)(hr_subscriber_t *sub);
} hr_transport_t;

/* Create the registry (one per edge) and free it. */
int hr_registry_new(hr_registry_t **out, hr_edge_t *edge);
void hr_registry_destroy(hr_registry_t **registry);

/* Feed a live message from a broker (hr_brokers_live_cb). */
void hr_registry_on_live(hr_registry_t *registry, const Herald__V1__Message *msg);

/* A broker turned up or down (hr_brokers_state_cb): on up, backfill every topic it owns. */
void hr_registry_on_broker_state(hr_registry_t *registry, uint32_t index, bool up);

/* Number of topics with local subscribers. */
size_t hr_registry_topics(const hr_registry_t *registry);

/* Every subscriber's transport heartbeat (if it has one). */
void hr_registry_heartbeat(hr_registry_t *registry);

/* SIGTERM: every subscriber's transport shutdown, each with its own jittered retry hint in
 * [retry_ms, 2 * retry_ms) so the clients of a drained edge do not reconnect all at once. */
void hr_registry_shutdown(hr_registry_t *registry, uint64_t retry_ms);

/* Call `fn` for every subscriber. `fn` may destroy the subscriber it is given. */
void hr_registry_foreach(hr_registry_t *registry, void (*fn)(hr_subscriber_t *sub, void *arg),
                         void *arg);

/*
 * Create a subscriber for `n` topics (validated names, unique; `names[i]` of `lens[i]` bytes,
 * copied) starting from `cursor` (borrowed) and start delivering. `cursor_untrusted` marks a
 * cursor the client runtime resent on its own (Last-Event-ID, If-None-Match) that failed to
 * parse: each topic then gets a reset with reason invalid_cursor and starts from the oldest
 * retained message (DESIGN.md §Client contract). `data` is the transport's state.
 * Deliveries may start before this returns: the transport must be ready to accept them.
 */
hr_subscriber_t *hr_subscriber_new(hr_edge_t *edge, const hr_transport_t *transport, void *data,
                                   const char *const *names, const size_t *lens, size_t n,
                                   const hr_cursor_t *cursor, bool cursor_untrusted);

/* Stop all delivery, cancel broker calls and free. *sub becomes NULL. */
void hr_subscriber_destroy(hr_subscriber_t **sub);

/* The transport's state given at creation. */
void *hr_subscriber_data(const hr_subscriber_t *sub);
const hr_transport_t *hr_subscriber_transport(const hr_subscriber_t *sub);

/* The subscription's current cursor text (NUL-terminated; valid until the next delivery). */
const char *hr_subscriber_cursor(hr_subscriber_t *sub, size_t *len);

/* The transport's queue has room again: resume paused catch-ups. */
void hr_subscriber_on_drain(hr_subscriber_t *sub);

/* The transport has cut the client off: deliver nothing more (the transport destroys it when
 * its connection closes). */
void hr_subscriber_stop(hr_subscriber_t *sub);

#endif
