/*
 * hr_peers — a broker's links to the other brokers of its cluster (DESIGN.md §Cluster).
 *
 * One DEALER per peer (every other entry of --cluster, dialled by its advertised endpoint;
 * ZeroMQ reconnects by itself, also to a name that does not resolve yet). Over it:
 *
 *   - Hello, every `hello_interval_ms`: the peer's HelloReply must name the same ordered broker
 *     list, the same P, and the node id of its place in the list. Any disagreement is a
 *     *problem* (hr_peers_problem): the broker then refuses to assign IDs or serve reads, so a
 *     misconfigured cluster never stores a message in the wrong place. A peer is *up* while its
 *     replies keep coming (any reply within `down_after_ms`).
 *   - Forwarding: a publish for a partition another broker owns is sent to that owner with
 *     Request.forwarded set and a request id of ours; the owner's reply is relayed to the client
 *     with the client's request id. A forwarded request is never forwarded again (the owner
 *     answers not_owner instead), so a publish cannot loop, whatever the configurations say.
 *     A forward to a peer that is down fails at once; one without a reply within
 *     `forward_timeout_ms` fails then: either way the client gets `unavailable`, and nothing was
 *     acknowledged (the owner may still commit it: a retry with the same idempotency key is
 *     safe).
 *
 * Single-threaded: driven by the broker's zmq_poll loop (hr_peers_pollitems, hr_peers_process).
 */
#ifndef HR_PEERS_H
#define HR_PEERS_H

#include "codec.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

typedef struct hr_peers hr_peers_t;

/* The answer to a forwarded request: `reply` (request id already set to the client's; owned by
 * the callee until it returns), or NULL when the owner is unreachable or did not answer in time
 * (`why` says which). `identity` is the client's routing id frame: the callee consumes it. */
typedef void (*hr_peers_reply_cb)(void *arg, zmq_msg_t *identity, uint64_t client_request_id,
                                  hr_reply_t *reply, const char *why);

typedef struct {
    char *const *cluster; /* ordered broker list (request endpoints); copied */
    size_t n_cluster;
    uint32_t self;               /* this broker's index */
    uint32_t partitions;         /* P */
    uint64_t hello_interval_ms;  /* between Hellos to each peer */
    uint64_t down_after_ms;      /* silence after which a peer is down */
    uint64_t forward_timeout_ms; /* a forward with no reply by then fails */
    size_t max_reply_bytes;      /* largest reply decoded from a peer */
    hr_peers_reply_cb on_reply;
    void *arg;
} hr_peers_options_t;

/* Create a DEALER per peer and connect (non-blocking). Returns 0, or HR_E_INVALID_REQUEST with
 * `err` set (an endpoint ZeroMQ cannot dial). */
int hr_peers_new(hr_peers_t **out, const hr_peers_options_t *opts, char *err, size_t errlen);

/* Fail every pending forward (callbacks run), close the sockets, free. NULL is accepted. */
void hr_peers_destroy(hr_peers_t **peers);

/* Fill up to `cap` poll items (ZMQ_POLLIN on each peer's DEALER); returns how many. */
size_t hr_peers_pollitems(hr_peers_t *peers, zmq_pollitem_t *items, size_t cap);

/* Read every waiting reply, send due Hellos, expire forwards. `now_ms` is monotonic. */
void hr_peers_process(hr_peers_t *peers, uint64_t now_ms);

/* The monotonic time by which hr_peers_process must run again. */
uint64_t hr_peers_next_due(const hr_peers_t *peers);

/*
 * Forward `req` (decoded, owned by the caller, which may free it once this returns) to broker
 * `owner` on behalf of the client `identity` (moved: on return the caller's frame is empty).
 * Returns 0 (the callback runs later, exactly once), or HR_E_UNAVAILABLE with `why` set when the
 * owner is down or its queue is full (the callback will not run; `identity` is untouched).
 */
int hr_peers_forward(hr_peers_t *peers, uint32_t owner, hr_request_t *req, zmq_msg_t *identity,
                     char *why, size_t why_len);

/* Whether peer `index` answers. */
bool hr_peers_up(const hr_peers_t *peers, uint32_t index);

/* The first disagreement a peer's Hello showed ("broker 1 (tcp://b1:7400) ..."), or NULL when
 * every peer that answered agrees. */
const char *hr_peers_problem(const hr_peers_t *peers);

/* Forwards sent, and pending now. */
uint64_t hr_peers_forwarded(const hr_peers_t *peers);
size_t hr_peers_pending(const hr_peers_t *peers);

#endif
