/*
 * hr_brokers — the edge's connections to the brokers, driven from the libuv loop.
 *
 * For each broker of the cluster: a DEALER for requests (publish, fetch, hello) and a SUB for
 * live messages, both polled with uv_poll on ZMQ_FD. ZMQ_FD is edge-triggered: after every
 * wake-up (and after every send, which may consume the readiness) the sockets are drained while
 * ZMQ_EVENTS reports ZMQ_POLLIN. No extra threads.
 *
 * Start-up: the edge knows one or more request endpoints (--brokers). It sends each a Hello; the
 * first HelloReply gives the ordered cluster list, the partition count P and each broker's live
 * endpoint (its own HelloReply), and the edge then connects to every broker of the list.
 * Requests are routed to the owner of the topic's partition (proto/partition.h).
 *
 * Configured endpoints are matched to the list by string equality; one that is not in the list
 * (a load-balanced name, another spelling of the host) only serves to say hello and is closed
 * once the list is known. Each member's live endpoint comes from its own HelloReply. Hello is
 * re-sent every second to brokers that have not answered (and to a broker that went down, which
 * may come back with another live endpoint).
 *
 * Health: a broker is *up* while it answers and its PUB heartbeats ("\x00hb" frames) arrive; it
 * turns *down* when no heartbeat or reply has been seen for `down_after_ms`, and up again on the
 * next one. The state callback reports every transition (the first up included), so the edge can
 * backfill every topic a broker serves after it comes back (DESIGN.md §Cluster).
 *
 * Timing: one repeating timer ticks every min(request_timeout_ms, down_after_ms) / 10 ms, clamped
 * to 10..100 ms. On a tick, calls past their deadline fail, silent brokers turn down and due
 * Hellos go out, so a timeout or a down transition is noticed up to one tick late.
 *
 * Callbacks (reply, on_live, on_state) run from the loop: from a poll, idle or timer callback of
 * this module, never from inside one of its functions (except the pending calls' callbacks,
 * which hr_brokers_destroy runs). Inside them any function here may be called except
 * hr_brokers_destroy.
 *
 * Threading: the loop thread only.
 */
#ifndef HR_BROKERS_H
#define HR_BROKERS_H

#include "codec.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct hr_brokers hr_brokers_t;
typedef struct hr_brokers_call hr_brokers_call_t;

/* A live message from a broker's PUB socket. `msg` and `frame` (the packed Message bytes,
 * `frame_len` bytes) are valid only during the callback. */
typedef void (*hr_brokers_live_cb)(void *arg, const Herald__V1__Message *msg, const uint8_t *frame,
                                   size_t frame_len);

/* Broker `index` (in the cluster list) turned up (true) or down (false). `up` is also reported
 * again, without a down before it, when the broker's live path may have lost messages: the SUB
 * saw its first heartbeat, or a heartbeat from a new broker process (a restart faster than
 * down_after_ms). Each `up` means: backfill this broker's topics from the log. */
typedef void (*hr_brokers_state_cb)(void *arg, uint32_t index, bool up);

/*
 * The reply to a request, or a failure. `status` is 0 with `reply` set (which may be an Error
 * reply from the broker: check reply->body_case), or HR_E_UNAVAILABLE (no broker for the
 * partition is up, no usable reply within the timeout, or the module is being destroyed), with
 * `reply` NULL. `reply` is owned by the
 * library and freed after the callback returns.
 */
typedef void (*hr_brokers_reply_cb)(void *arg, int status, const hr_reply_t *reply);

/* Zero for request_timeout_ms, down_after_ms or hwm picks the default in brackets. */
typedef struct {
    const char *endpoints;       /* comma-separated broker request endpoints (--brokers); only
                                  * read during hr_brokers_new */
    uint64_t request_timeout_ms; /* a request with no reply by then fails with HR_E_UNAVAILABLE
                                  * [5000] */
    uint64_t down_after_ms;      /* silence after which a broker is considered down [3000] */
    int hwm; /* ZeroMQ receive high-water mark for the SUB sockets, messages [ZeroMQ's, 1000].
              * (DEALERs queue at most 10000 requests per broker; a send beyond fails.) */
    hr_brokers_live_cb on_live;
    hr_brokers_state_cb on_state;
    void *arg; /* passed to on_live and on_state */
} hr_brokers_options_t;

/* Create sockets and start connecting (non-blocking). Returns 0, or HR_E_INVALID_REQUEST with
 * `err` set (no endpoint, an endpoint ZeroMQ cannot dial, a socket that cannot be created). */
int hr_brokers_new(hr_brokers_t **out, uv_loop_t *loop, const hr_brokers_options_t *opts, char *err,
                   size_t errlen);

/* Close every socket and free; pending calls get their callback with HR_E_UNAVAILABLE first
 * (from inside this call; a request made by one of them returns HR_E_UNAVAILABLE). *brokers
 * becomes NULL. Must not be called from inside one of this module's callbacks. The libuv handles
 * are closed, not yet freed: as with any libuv handle, run the loop afterwards so their close
 * callbacks release the last memory and sockets (after a failed hr_brokers_new too). */
void hr_brokers_destroy(hr_brokers_t **brokers);

/*
 * Send `req` (request_id and version are set here; the caller keeps owning it, and it may go as
 * soon as this returns) to the owner of `topic`'s partition (`topic_len` bytes).
 * `cb(arg, ...)` runs exactly once, later (never from inside this call), unless the call is
 * cancelled first. When the owner is down, or its queue refuses the request, `cb` gets
 * HR_E_UNAVAILABLE on the next loop iteration rather than after the timeout. *call (may be
 * NULL) receives a handle valid until the callback has run or the call is cancelled. Returns
 * 0, or HR_E_UNAVAILABLE at once (with *call NULL, and `cb` never called) when the partition map
 * is not known yet or the module is being destroyed.
 */
int hr_brokers_request(hr_brokers_t *brokers, const char *topic, size_t topic_len,
                       hr_request_t *req, hr_brokers_reply_cb cb, void *arg,
                       hr_brokers_call_t **call);

/* As hr_brokers_request, to broker `index` of the cluster list (stats, for metrics). Returns
 * HR_E_UNAVAILABLE at once for an index that is not (yet) in the list. */
int hr_brokers_request_to(hr_brokers_t *brokers, uint32_t index, hr_request_t *req,
                          hr_brokers_reply_cb cb, void *arg, hr_brokers_call_t **call);

/* Cancel a call: its callback will not run (a reply that arrives later is dropped). Safe at any
 * time the handle is valid, including from inside another call's callback; from inside the
 * call's own callback it does nothing. NULL does nothing. */
void hr_brokers_cancel(hr_brokers_call_t *call);

/* Start/stop receiving live messages of `topic` (reference-counted per topic: one ZMQ_SUBSCRIBE
 * on the owner's SUB socket for the first subscriber, ZMQ_UNSUBSCRIBE after the last). ZeroMQ
 * filters by prefix; only messages whose topic equals `topic` exactly reach on_live. Before the
 * cluster list is known the subscription waits and is applied when the owner's SUB connects.
 * An empty name (or one starting with NUL, which no topic name does) is ignored; unsubscribing
 * a topic that is not subscribed does nothing. */
void hr_brokers_subscribe(hr_brokers_t *brokers, const char *topic, size_t topic_len);
void hr_brokers_unsubscribe(hr_brokers_t *brokers, const char *topic, size_t topic_len);

/* True while the partition map is known and at least one broker is up. */
bool hr_brokers_ready(const hr_brokers_t *brokers);

/* Cluster size and partition count (0 until the first HelloReply), and per-broker state: up,
 * and its request endpoint as the cluster list names it (valid until hr_brokers_destroy; NULL
 * for an index out of range). */
uint32_t hr_brokers_count(const hr_brokers_t *brokers);
uint32_t hr_brokers_partitions(const hr_brokers_t *brokers);
bool hr_brokers_up(const hr_brokers_t *brokers, uint32_t index);
const char *hr_brokers_endpoint(const hr_brokers_t *brokers, uint32_t index);

/* Index of the broker owning `topic` (valid only when hr_brokers_count() > 0). */
uint32_t hr_brokers_owner(const hr_brokers_t *brokers, const char *topic, size_t topic_len);

/* Frames from the brokers dropped as malformed: live frames of a subscribed topic that do not
 * decode as a Message (limit 64 MiB), whose Message names another topic, or that are not two
 * frames; replies that are not [""][Reply] or that this build cannot decode (a newer protocol
 * version, an unknown body: the call they name fails at once with HR_E_UNAVAILABLE). A counter
 * since hr_brokers_new. */
uint64_t hr_brokers_dropped(const hr_brokers_t *brokers);

#endif
