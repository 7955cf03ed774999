#include "broker.h"

#include "codec.h"
#include "cursor.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "partition.h"
#include "peers.h"
#include "store.h"
#include "topic.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MOD "broker"

/* Frame 1 of a heartbeat on the PUB socket. No topic name can start with a NUL byte, so a
 * subscriber can tell heartbeats from messages by the first byte alone. */
static const char hr_heartbeat_frame[] = "\0hb";
#define HR_HEARTBEAT_FRAME_LEN 3

/* Largest fetch a client may ask for, whatever it requests. */
#define HR_FETCH_LIMIT_MAX 10000
#define HR_FETCH_BYTES_MAX (64u * 1024 * 1024)

/* Most brokers in --cluster (--node-id is at most 1023). */
#define HR_CLUSTER_MAX 1024

/* Most requests read in one drain before the pending batch is committed. */
#define HR_DRAIN_MAX_REQUESTS 4096

/* Group-commit size buckets reported by stats: <=1, <=4, <=16, <=64, <=256, <=1024, more. */
#define HR_BATCH_BUCKETS 7

const hr_option_t hr_broker_options[] = {
#define OPT(name, type, def, min, max, field, help)                                                \
    {                                                                                              \
        name, type, def, min, max, offsetof(hr_broker_config_t, field), help                       \
    }
    OPT("listen", HR_OPT_STRING, "tcp://127.0.0.1:7400", 0, 0, listen,
        "ROUTER endpoint for requests from edges, the CLI and publishers"),
    OPT("live", HR_OPT_STRING, "tcp://127.0.0.1:7401", 0, 0, live,
        "PUB endpoint carrying every committed message"),
    OPT("data-dir", HR_OPT_STRING, "./herald-data", 0, 0, data_dir,
        "directory of the LMDB environment (created if missing)"),
    OPT("cluster", HR_OPT_STRING, "", 0, 0, cluster,
        "comma-separated ordered list of every broker's advertised request endpoint; "
        "empty = just this broker"),
    OPT("node-id", HR_OPT_INT, "0", 0, 1023, node_id, "this broker's index in --cluster"),
    OPT("advertise", HR_OPT_STRING, "", 0, 0, advertise,
        "host name or address peers and edges dial for this broker; empty = the host in --listen"),
    OPT("partitions", HR_OPT_INT, "64", 1, 65536, partitions,
        "number of partitions P, fixed when the cluster is created"),
    OPT("map-size", HR_OPT_BYTES, "1G", 1048576, INT64_MAX, map_size,
        "LMDB map size in bytes (K/M/G suffixes): the most data the store can hold"),
    OPT("sync", HR_OPT_BOOL, "true", 0, 0, sync,
        "fsync every group commit before acknowledging; false = relaxed mode (MDB_NOSYNC): a "
        "crash may lose the last acknowledged commits"),
    OPT("max-data-bytes", HR_OPT_BYTES, "1M", 0, 256 * 1048576LL, max_data_bytes,
        "largest message data in bytes"),
    OPT("max-request-bytes", HR_OPT_BYTES, "16M", 1024, 1024 * 1048576LL, max_request_bytes,
        "largest request frame in bytes (a publish batch)"),
    OPT("max-batch", HR_OPT_INT, "8192", 1, 1000000, max_batch,
        "most messages committed in one group commit"),
    OPT("retention-messages", HR_OPT_INT, "100000", 0, INT64_MAX, retention_messages,
        "messages kept per topic; 0 = unlimited"),
    OPT("retention-age", HR_OPT_INT, "604800", 0, INT64_MAX / 1000, retention_age,
        "seconds a message is kept; 0 = unlimited"),
    OPT("dedupe-window", HR_OPT_INT, "300", 0, INT64_MAX / 1000, dedupe_window,
        "seconds an idempotency key is remembered"),
    OPT("trim-interval", HR_OPT_INT, "1000", 10, 3600000, trim_interval,
        "ms between retention trimming passes"),
    OPT("heartbeat-interval", HR_OPT_INT, "1000", 10, 3600000, heartbeat_interval,
        "ms between heartbeats on the PUB socket"),
    OPT("renew-epochs", HR_OPT_BOOL, "false", 0, 0, renew_epochs,
        "give every topic a new epoch at start: after restoring a backup, so cursors issued "
        "since the backup get a reset instead of being misapplied"),
    OPT("forward-timeout", HR_OPT_INT, "5000", 10, 600000, forward_timeout,
        "ms to wait for the owner's reply to a forwarded publish before answering unavailable"),
    OPT("hwm", HR_OPT_INT, "100000", 0, INT32_MAX, hwm,
        "ZeroMQ high-water mark in messages for both sockets (0 = unlimited)"),
    OPT("fetch-limit", HR_OPT_INT, "1000", 1, HR_FETCH_LIMIT_MAX, fetch_limit,
        "messages per fetch reply when the request names no limit"),
    OPT("fetch-max-bytes", HR_OPT_BYTES, "4M", 1024, HR_FETCH_BYTES_MAX, fetch_max_bytes,
        "data bytes per fetch reply when the request names no limit"),
    OPT("log-level", HR_OPT_STRING, "info", 0, 0, log_level, "debug, info, warn or error"),
#undef OPT
};
const size_t hr_broker_options_count = sizeof hr_broker_options / sizeof hr_broker_options[0];

/* One request received on the ROUTER, held until its reply is sent. */
typedef struct {
    zmq_msg_t identity; /* routing id frame from the ROUTER */
    hr_request_t *req;  /* decoded request; owns the bytes the messages point to */
    size_t first_msg;   /* publish: index of its first message in the batch arrays */
    size_t n_msgs;      /* publish: message count */
} hr_pending_t;

struct hr_broker {
    hr_broker_config_t config;
    hr_store_t *store;
    zsock_t *router;
    zsock_t *pub;
    void *router_raw; /* zsock_resolve(router): libzmq handle for zmq_msg_* calls */
    void *pub_raw;
    char **cluster; /* ordered broker list (request endpoints) */
    size_t n_cluster;
    hr_peers_t *peers; /* links to the other brokers; NULL when alone */
    char *live_advertised;
    int lock_fd; /* flock(2) on <data-dir>/broker.lock: one broker per data directory */
    volatile sig_atomic_t stopping;
    uint64_t started_ms;
    uint64_t instance; /* random per process start, in heartbeats (restart detection) */
    uint64_t next_heartbeat_ms;
    uint64_t next_trim_ms;

    /* The batch being assembled for the next group commit. Arrays grow and are reused. */
    hr_pending_t *pending;
    size_t n_pending, cap_pending;
    hr_store_msg_t *msgs;
    hr_store_result_t *results;
    size_t n_msgs, cap_msgs;
    uint8_t *encode_buf; /* reused buffer for live messages */
    size_t encode_cap;

    struct {
        uint64_t messages_appended, bytes_appended, batches, batch_max, duplicates;
        uint64_t batch_buckets[HR_BATCH_BUCKETS];
        uint64_t fetches, messages_fetched, messages_trimmed;
        uint64_t errors[HR_E_LAST - HR_E_FIRST + 1];
    } stats;
};

static uint64_t hr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t hr_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- replies ---------------------------------------------------------------------------- */

static void hr_broker_free_frame(void *data, void *hint)
{
    (void)hint;
    hr_free(data);
}

/* Send [identity][""][reply]. The identity frame is consumed. A peer that went away is not an
 * error of ours: ROUTER drops the reply. */
static void hr_broker_send_reply(hr_broker_t *b, zmq_msg_t *identity, hr_reply_t *reply)
{
    uint8_t *buf;
    size_t len;
    reply->version = HR_PROTOCOL_VERSION;
    hr_codec_encode_reply(reply, &buf, &len);
    /* Zero-copy: ZeroMQ's I/O thread frees the buffer once it is on the wire. */
    zmq_msg_t body;
    zmq_msg_init_data(&body, buf, len, hr_broker_free_frame, NULL);
    if (zmq_msg_send(identity, b->router_raw, ZMQ_SNDMORE) < 0 ||
        zmq_send(b->router_raw, "", 0, ZMQ_SNDMORE) < 0 ||
        zmq_msg_send(&body, b->router_raw, 0) < 0)
        HR_WARN(MOD, "event=reply_dropped error=\"%s\"", zmq_strerror(zmq_errno()));
    zmq_msg_close(&body);
    zmq_msg_close(identity);
}

/* Send an Error reply; `owner` (may be NULL) names the owning broker of a not_owner. */
static void hr_broker_send_error_owner(hr_broker_t *b, zmq_msg_t *identity, uint64_t request_id,
                                       int err, const char *detail, const char *owner)
{
    if (err >= HR_E_FIRST && err <= HR_E_LAST)
        b->stats.errors[err - HR_E_FIRST]++;
    HR_DEBUG(MOD, "event=request_refused code=%s detail=\"%s\"", hr_error_code(err), detail);
    Herald__V1__Error error = HERALD__V1__ERROR__INIT;
    error.code = (char *)hr_error_code(err);
    error.message = (char *)(detail != NULL && detail[0] != '\0' ? detail : hr_strerror(err));
    if (owner != NULL)
        error.owner = (char *)owner;
    hr_reply_t reply = HERALD__V1__REPLY__INIT;
    reply.request_id = request_id;
    reply.body_case = HERALD__V1__REPLY__BODY_ERROR;
    reply.error = &error;
    hr_broker_send_reply(b, identity, &reply);
}

static void hr_broker_send_error(hr_broker_t *b, zmq_msg_t *identity, uint64_t request_id, int err,
                                 const char *detail)
{
    hr_broker_send_error_owner(b, identity, request_id, err, detail, NULL);
}

/* ---- publish: validation and group commit -------------------------------------------------- */

/* The broker owning `topic`'s partition. */
static uint32_t hr_broker_owner(const hr_broker_t *b, const ProtobufCBinaryData *topic)
{
    if (b->n_cluster <= 1)
        return 0;
    uint32_t p =
        hr_partition_of((const char *)topic->data, topic->len, (uint32_t)b->config.partitions);
    return hr_partition_owner(p, (uint32_t)b->n_cluster);
}

static int hr_broker_owner_check(hr_broker_t *b, const ProtobufCBinaryData *topic, char *why,
                                 size_t why_len)
{
    uint32_t owner = hr_broker_owner(b, topic);
    if (owner == (uint32_t)b->config.node_id)
        return 0;
    snprintf(why, why_len, "partition %u of topic '%.*s' is owned by broker %u (%s)",
             hr_partition_of((const char *)topic->data, topic->len, (uint32_t)b->config.partitions),
             (int)topic->len, (const char *)topic->data, owner, b->cluster[owner]);
    return HR_E_NOT_OWNER;
}

/* Refuse a request for `topic` with `rc`, naming the owner when it is not_owner. */
static void hr_broker_refuse(hr_broker_t *b, zmq_msg_t *identity, uint64_t request_id, int rc,
                             const char *why, const ProtobufCBinaryData *topic)
{
    const char *owner = NULL;
    if (rc == HR_E_NOT_OWNER)
        owner = b->cluster[hr_broker_owner(b, topic)];
    hr_broker_send_error_owner(b, identity, request_id, rc, why, owner);
}

/* A cluster whose brokers disagree must not assign IDs or serve reads (hr_peers). */
static int hr_broker_consistency_check(hr_broker_t *b, char *why, size_t why_len)
{
    const char *problem = b->peers != NULL ? hr_peers_problem(b->peers) : NULL;
    if (problem == NULL)
        return 0;
    snprintf(why, why_len, "this broker refuses requests until the cluster agrees: %s", problem);
    return HR_E_MISCONFIGURED;
}

/* Check every message of a publish request before it joins the batch, so one bad request never
 * fails the others it would have been committed with. */
static int hr_broker_validate_publish(hr_broker_t *b, const Herald__V1__PublishRequest *pub,
                                      char *why, size_t why_len)
{
    char detail[192];
    if (pub->n_messages == 0) {
        snprintf(why, why_len, "a publish request needs at least one message");
        return HR_E_INVALID_REQUEST;
    }
    if (pub->n_messages > (size_t)b->config.max_batch) {
        snprintf(why, why_len,
                 "a publish request holds at most %lld messages (--max-batch); "
                 "this one has %zu",
                 (long long)b->config.max_batch, pub->n_messages);
        return HR_E_PAYLOAD_TOO_LARGE;
    }
    for (size_t i = 0; i < pub->n_messages; i++) {
        const Herald__V1__PublishMessage *m = pub->messages[i];
        int rc =
            hr_topic_validate((const char *)m->topic.data, m->topic.len, detail, sizeof detail);
        if (rc == 0)
            rc =
                hr_event_validate((const char *)m->event.data, m->event.len, detail, sizeof detail);
        if (rc == 0)
            rc = hr_content_type_validate((const char *)m->content_type.data, m->content_type.len,
                                          detail, sizeof detail);
        if (rc == 0 && m->idempotency_key.len > HR_IDEM_KEY_MAX) {
            snprintf(detail, sizeof detail, "idempotency key is %zu bytes; the limit is %d",
                     m->idempotency_key.len, HR_IDEM_KEY_MAX);
            rc = HR_E_INVALID_REQUEST;
        }
        if (rc == 0 && m->data.len > (size_t)b->config.max_data_bytes) {
            snprintf(detail, sizeof detail, "data is %zu bytes; the limit is %lld", m->data.len,
                     (long long)b->config.max_data_bytes);
            rc = HR_E_PAYLOAD_TOO_LARGE;
        }
        if (rc != 0) {
            snprintf(why, why_len, "message %zu: %s", i, detail);
            return rc;
        }
    }
    return 0;
}

/*
 * Where a valid publish goes: 0 when this broker owns every message's partition; otherwise
 * forward it to the owner (a client that publishes through any broker needs no partition map),
 * unless it was forwarded already (then not_owner: a forward never loops) or its messages
 * belong to several brokers (one request is one commit on one broker). Returns 1 when the
 * request was forwarded, 0 to commit here, or an error code with `why`.
 */
static int hr_broker_route_publish(hr_broker_t *b, zmq_msg_t *identity, hr_request_t *req,
                                   char *why, size_t why_len)
{
    const Herald__V1__PublishRequest *pub = req->publish;
    uint32_t owner = hr_broker_owner(b, &pub->messages[0]->topic);
    for (size_t i = 1; i < pub->n_messages; i++) {
        if (hr_broker_owner(b, &pub->messages[i]->topic) != owner) {
            snprintf(why, why_len,
                     "message %zu's topic belongs to another broker than message 0's; a publish "
                     "request commits on one broker, so split it by partition owner",
                     i);
            return HR_E_INVALID_REQUEST;
        }
    }
    if (owner == (uint32_t)b->config.node_id)
        return 0;
    if (req->forwarded || b->peers == NULL)
        return hr_broker_owner_check(b, &pub->messages[0]->topic, why, why_len);
    int rc = hr_peers_forward(b->peers, owner, req, identity, why, why_len);
    return rc == 0 ? 1 : rc;
}

/* A forwarded publish's answer from its owner, relayed with the client's request id. */
static void hr_broker_on_forward_reply(void *arg, zmq_msg_t *identity, uint64_t request_id,
                                       hr_reply_t *reply, const char *why)
{
    hr_broker_t *b = arg;
    if (reply != NULL)
        hr_broker_send_reply(b, identity, reply);
    else
        hr_broker_send_error(b, identity, request_id, HR_E_UNAVAILABLE, why);
}

static void hr_broker_add_publish(hr_broker_t *b, zmq_msg_t *identity, hr_request_t *req)
{
    const Herald__V1__PublishRequest *pub = req->publish;
    if (b->n_pending == b->cap_pending) {
        b->cap_pending = b->cap_pending ? b->cap_pending * 2 : 64;
        b->pending = hr_realloc(b->pending, b->cap_pending * sizeof *b->pending);
    }
    if (b->n_msgs + pub->n_messages > b->cap_msgs) {
        while (b->n_msgs + pub->n_messages > b->cap_msgs)
            b->cap_msgs = b->cap_msgs ? b->cap_msgs * 2 : 1024;
        b->msgs = hr_realloc(b->msgs, b->cap_msgs * sizeof *b->msgs);
        b->results = hr_realloc(b->results, b->cap_msgs * sizeof *b->results);
    }
    hr_pending_t *p = &b->pending[b->n_pending++];
    zmq_msg_init(&p->identity);
    zmq_msg_move(&p->identity, identity);
    p->req = req;
    p->first_msg = b->n_msgs;
    p->n_msgs = pub->n_messages;
    for (size_t i = 0; i < pub->n_messages; i++) {
        const Herald__V1__PublishMessage *m = pub->messages[i];
        b->msgs[b->n_msgs++] = (hr_store_msg_t){
            .topic = (const char *)m->topic.data,
            .topic_len = m->topic.len,
            .event = (const char *)m->event.data,
            .event_len = m->event.len,
            .content_type = (const char *)m->content_type.data,
            .content_type_len = m->content_type.len,
            .data = m->data.data,
            .data_len = m->data.len,
            .idempotency_key = (const char *)m->idempotency_key.data,
            .idempotency_key_len = m->idempotency_key.len,
        };
    }
}

/* Put one committed message on the PUB socket as [topic][Message]. */
static void hr_broker_publish_live(hr_broker_t *b, const hr_store_msg_t *m,
                                   const hr_store_result_t *r)
{
    Herald__V1__Message msg = HERALD__V1__MESSAGE__INIT;
    msg.topic = (ProtobufCBinaryData){m->topic_len, (uint8_t *)m->topic};
    msg.seq = r->seq;
    msg.epoch = r->epoch;
    msg.event = (ProtobufCBinaryData){m->event_len, (uint8_t *)m->event};
    msg.content_type = (ProtobufCBinaryData){m->content_type_len, (uint8_t *)m->content_type};
    msg.data = (ProtobufCBinaryData){m->data_len, (uint8_t *)m->data};
    msg.time_ms = r->time_ms;
    size_t len = herald__v1__message__get_packed_size(&msg);
    if (len > b->encode_cap) {
        b->encode_cap = len * 2;
        b->encode_buf = hr_realloc(b->encode_buf, b->encode_cap);
    }
    herald__v1__message__pack(&msg, b->encode_buf);
    /* PUB never blocks: at the high-water mark it drops, and edges backfill the gap from the
     * log (DESIGN.md §Cluster). */
    zmq_send(b->pub_raw, m->topic, m->topic_len, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(b->pub_raw, b->encode_buf, len, ZMQ_DONTWAIT);
}

static void hr_broker_reply_published(hr_broker_t *b, hr_pending_t *p)
{
    Herald__V1__PublishResult *results = hr_malloc(p->n_msgs * sizeof *results);
    Herald__V1__PublishResult **ptrs = hr_malloc(p->n_msgs * sizeof *ptrs);
    for (size_t i = 0; i < p->n_msgs; i++) {
        const hr_store_result_t *r = &b->results[p->first_msg + i];
        herald__v1__publish_result__init(&results[i]);
        results[i].seq = r->seq;
        results[i].epoch = r->epoch;
        results[i].time_ms = r->time_ms;
        results[i].duplicate = r->duplicate;
        ptrs[i] = &results[i];
    }
    Herald__V1__PublishReply pub = HERALD__V1__PUBLISH_REPLY__INIT;
    pub.n_results = p->n_msgs;
    pub.results = ptrs;
    hr_reply_t reply = HERALD__V1__REPLY__INIT;
    reply.request_id = p->req->request_id;
    reply.body_case = HERALD__V1__REPLY__BODY_PUBLISH;
    reply.publish = &pub;
    hr_broker_send_reply(b, &p->identity, &reply);
    hr_free(ptrs);
    hr_free(results);
}

static void hr_broker_count_batch(hr_broker_t *b, size_t n)
{
    static const size_t limits[HR_BATCH_BUCKETS - 1] = {1, 4, 16, 64, 256, 1024};
    size_t bucket = 0;
    while (bucket < HR_BATCH_BUCKETS - 1 && n > limits[bucket])
        bucket++;
    b->stats.batch_buckets[bucket]++;
    b->stats.batches++;
    if (n > b->stats.batch_max)
        b->stats.batch_max = n;
}

/* Commit messages [first, first+n) in one transaction. */
static int hr_broker_append(hr_broker_t *b, size_t first, size_t n)
{
    uint64_t now = hr_now_ms();
    for (size_t i = first; i < first + n; i++)
        b->msgs[i].time_ms = now;
    int rc = hr_store_append(b->store, &b->msgs[first], n, &b->results[first]);
    if (rc != 0)
        return rc;
    hr_broker_count_batch(b, n);
    for (size_t i = first; i < first + n; i++) {
        if (b->results[i].duplicate) {
            b->stats.duplicates++;
            continue;
        }
        b->stats.messages_appended++;
        b->stats.bytes_appended += b->msgs[i].data_len;
    }
    return 0;
}

static void hr_broker_finish_pending(hr_broker_t *b, hr_pending_t *p, int rc)
{
    if (rc == 0) {
        hr_broker_reply_published(b, p);
        for (size_t i = p->first_msg; i < p->first_msg + p->n_msgs; i++)
            if (!b->results[i].duplicate)
                hr_broker_publish_live(b, &b->msgs[i], &b->results[i]);
    } else {
        char why[256];
        snprintf(why, sizeof why, "commit failed: %s; nothing of this request was stored",
                 hr_strerror(rc));
        hr_broker_send_error(b, &p->identity, p->req->request_id, rc, why);
    }
    hr_codec_request_free(&p->req);
}

/* The group commit: every pending publish in one durable transaction, then replies and live
 * messages. When the map is full, the batch is retried request by request so that requests
 * small enough to fit still succeed and each failure names its own request. */
static void hr_broker_commit(hr_broker_t *b)
{
    if (b->n_pending == 0)
        return;
    int rc = hr_broker_append(b, 0, b->n_msgs);
    if (rc == HR_E_STORAGE_FULL && b->n_pending > 1) {
        HR_WARN(MOD, "event=storage_full requests=%zu action=retry_each", b->n_pending);
        for (size_t i = 0; i < b->n_pending; i++) {
            hr_pending_t *p = &b->pending[i];
            hr_broker_finish_pending(b, p, hr_broker_append(b, p->first_msg, p->n_msgs));
        }
    } else {
        if (rc != 0)
            HR_WARN(MOD, "event=commit_failed error=\"%s\" messages=%zu", hr_strerror(rc),
                    b->n_msgs);
        for (size_t i = 0; i < b->n_pending; i++)
            hr_broker_finish_pending(b, &b->pending[i], rc);
    }
    b->n_pending = 0;
    b->n_msgs = 0;
}

/* ---- fetch -------------------------------------------------------------------------------- */

typedef struct {
    Herald__V1__Message **msgs;
    size_t n, cap;
    ProtobufCBinaryData topic;
    uint64_t epoch;
    size_t bytes;
} hr_fetch_ctx_t;

/* Copy one stored message out of the read transaction into the reply. One allocation holds the
 * Message struct and its bytes. */
static int hr_broker_fetch_cb(void *ctx_, const hr_store_entry_t *e)
{
    hr_fetch_ctx_t *ctx = ctx_;
    if (ctx->n == ctx->cap) {
        ctx->cap = ctx->cap ? ctx->cap * 2 : 64;
        ctx->msgs = hr_realloc(ctx->msgs, ctx->cap * sizeof *ctx->msgs);
    }
    size_t extra = e->event_len + e->content_type_len + e->data_len;
    Herald__V1__Message *m = hr_malloc(sizeof *m + extra);
    herald__v1__message__init(m);
    uint8_t *bytes = (uint8_t *)(m + 1);
    memcpy(bytes, e->event, e->event_len);
    memcpy(bytes + e->event_len, e->content_type, e->content_type_len);
    memcpy(bytes + e->event_len + e->content_type_len, e->data, e->data_len);
    m->topic = ctx->topic;
    m->seq = e->seq;
    m->epoch = ctx->epoch;
    m->event = (ProtobufCBinaryData){e->event_len, bytes};
    m->content_type = (ProtobufCBinaryData){e->content_type_len, bytes + e->event_len};
    m->data = (ProtobufCBinaryData){e->data_len, bytes + e->event_len + e->content_type_len};
    m->time_ms = e->time_ms;
    ctx->msgs[ctx->n++] = m;
    ctx->bytes += e->data_len;
    return 0;
}

static void hr_broker_handle_fetch(hr_broker_t *b, zmq_msg_t *identity, hr_request_t *req)
{
    const Herald__V1__FetchRequest *f = req->fetch;
    char why[256];
    int rc = hr_topic_validate((const char *)f->topic.data, f->topic.len, why, sizeof why);
    if (rc == 0)
        rc = hr_broker_consistency_check(b, why, sizeof why);
    if (rc == 0)
        rc = hr_broker_owner_check(b, &f->topic, why, sizeof why);
    if (rc != 0) {
        hr_broker_refuse(b, identity, req->request_id, rc, why, &f->topic);
        return;
    }
    size_t limit = f->limit ? f->limit : (size_t)b->config.fetch_limit;
    if (limit > HR_FETCH_LIMIT_MAX)
        limit = HR_FETCH_LIMIT_MAX;
    size_t max_bytes = f->max_bytes ? f->max_bytes : (size_t)b->config.fetch_max_bytes;
    if (max_bytes > HR_FETCH_BYTES_MAX)
        max_bytes = HR_FETCH_BYTES_MAX;

    hr_store_topic_t info;
    Herald__V1__Reset reset = HERALD__V1__RESET__INIT;
    bool has_reset = false;
    uint64_t after = f->after_seq;
    rc = hr_store_topic_info(b->store, (const char *)f->topic.data, f->topic.len, &info);
    if (rc == HR_E_NOT_FOUND) {
        memset(&info, 0, sizeof info);
        info.first_seq = 1;
    } else if (rc != 0) {
        hr_broker_send_error(b, identity, req->request_id, rc, "cannot read the topic log");
        return;
    }
    if (f->head_only) {
        limit = 0; /* no messages: the reply carries the topic's state only */
    } else if (f->epoch != 0 && f->epoch != info.epoch) {
        /* The position belongs to a log that no longer exists (lost and recreated, or never
         * here): deliver from the oldest retained message and say so. */
        has_reset = true;
        reset.reason = HERALD__V1__RESET__REASON__EPOCH;
        reset.next_seq = info.first_seq;
        after = 0;
    } else if (after > info.last_seq) {
        snprintf(why, sizeof why,
                 "position seq %llu is beyond the topic's last seq %llu: a cursor from the "
                 "future or from another log",
                 (unsigned long long)after, (unsigned long long)info.last_seq);
        hr_broker_send_error(b, identity, req->request_id, HR_E_INVALID_CURSOR, why);
        return;
    } else if (after != 0 && after + 1 < info.first_seq) {
        has_reset = true;
        reset.reason = HERALD__V1__RESET__REASON__RETENTION;
        reset.next_seq = info.first_seq;
    }

    hr_fetch_ctx_t ctx = {.topic = f->topic, .epoch = info.epoch};
    if (info.epoch != 0 && !f->head_only) {
        rc = hr_store_read(b->store, (const char *)f->topic.data, f->topic.len, after, limit,
                           max_bytes, hr_broker_fetch_cb, &ctx, &info);
        if (rc != 0 && rc != HR_E_NOT_FOUND) {
            for (size_t i = 0; i < ctx.n; i++)
                hr_free(ctx.msgs[i]);
            hr_free(ctx.msgs);
            hr_broker_send_error(b, identity, req->request_id, rc, "cannot read the topic log");
            return;
        }
    }
    b->stats.fetches++;
    b->stats.messages_fetched += ctx.n;

    Herald__V1__FetchReply fr = HERALD__V1__FETCH_REPLY__INIT;
    fr.epoch = info.epoch;
    fr.first_seq = info.first_seq;
    fr.last_seq = info.last_seq;
    fr.n_messages = ctx.n;
    fr.messages = ctx.msgs;
    fr.reset = has_reset ? &reset : NULL;
    hr_reply_t reply = HERALD__V1__REPLY__INIT;
    reply.request_id = req->request_id;
    reply.body_case = HERALD__V1__REPLY__BODY_FETCH;
    reply.fetch = &fr;
    hr_broker_send_reply(b, identity, &reply);
    for (size_t i = 0; i < ctx.n; i++)
        hr_free(ctx.msgs[i]);
    hr_free(ctx.msgs);
}

/* ---- hello, heartbeat, stats ---------------------------------------------------------------- */

static void hr_broker_handle_hello(hr_broker_t *b, zmq_msg_t *identity, hr_request_t *req)
{
    Herald__V1__HelloReply hello = HERALD__V1__HELLO_REPLY__INIT;
    hello.version = HR_PROTOCOL_VERSION;
    hello.node_id = (uint32_t)b->config.node_id;
    hello.n_cluster = b->n_cluster;
    hello.cluster = b->cluster;
    hello.live_endpoint = b->live_advertised;
    hello.partitions = (uint32_t)b->config.partitions;
    hr_reply_t reply = HERALD__V1__REPLY__INIT;
    reply.request_id = req->request_id;
    reply.body_case = HERALD__V1__REPLY__BODY_HELLO;
    reply.hello = &hello;
    hr_broker_send_reply(b, identity, &reply);
}

static void hr_broker_handle_heartbeat(hr_broker_t *b, zmq_msg_t *identity, hr_request_t *req)
{
    Herald__V1__Heartbeat hb = HERALD__V1__HEARTBEAT__INIT;
    hb.version = HR_PROTOCOL_VERSION;
    hb.node_id = (uint32_t)b->config.node_id;
    hb.time_ms = hr_now_ms();
    hr_reply_t reply = HERALD__V1__REPLY__INIT;
    reply.request_id = req->request_id;
    reply.body_case = HERALD__V1__REPLY__BODY_HEARTBEAT;
    reply.heartbeat = &hb;
    hr_broker_send_reply(b, identity, &reply);
}

static void hr_broker_handle_stats(hr_broker_t *b, zmq_msg_t *identity, hr_request_t *req)
{
    hr_store_stats_t ss = {0};
    hr_store_stats(b->store, &ss);
    Herald__V1__StatsReply st = HERALD__V1__STATS_REPLY__INIT;
    st.node_id = (uint32_t)b->config.node_id;
    st.uptime_ms = hr_mono_ms() - b->started_ms;
    st.messages_appended = b->stats.messages_appended;
    st.bytes_appended = b->stats.bytes_appended;
    st.batches = b->stats.batches;
    st.batch_messages_max = b->stats.batch_max;
    st.n_batch_size_buckets = HR_BATCH_BUCKETS;
    st.batch_size_buckets = b->stats.batch_buckets;
    st.duplicates = b->stats.duplicates;
    st.fetches = b->stats.fetches;
    st.messages_fetched = b->stats.messages_fetched;
    st.messages_trimmed = b->stats.messages_trimmed;
    st.topics = ss.topics;
    st.map_size = ss.map_size;
    st.map_used = ss.map_used;
    enum { N_ERR = HR_E_LAST - HR_E_FIRST + 1 };
    Herald__V1__StatsReply__ErrorsEntry entries[N_ERR];
    Herald__V1__StatsReply__ErrorsEntry *ptrs[N_ERR];
    size_t n = 0;
    for (int i = 0; i < N_ERR; i++) {
        if (b->stats.errors[i] == 0)
            continue;
        herald__v1__stats_reply__errors_entry__init(&entries[n]);
        entries[n].key = (char *)hr_error_code(HR_E_FIRST + i);
        entries[n].value = b->stats.errors[i];
        ptrs[n] = &entries[n];
        n++;
    }
    st.n_errors = n;
    st.errors = ptrs;
    hr_reply_t reply = HERALD__V1__REPLY__INIT;
    reply.request_id = req->request_id;
    reply.body_case = HERALD__V1__REPLY__BODY_STATS;
    reply.stats = &st;
    hr_broker_send_reply(b, identity, &reply);
}

/* ---- receiving ---------------------------------------------------------------------------- */

/* Receive one whole multipart message from the ROUTER without blocking and dispatch it.
 * Returns 1 when a message was handled, 0 when none was waiting. */
static int hr_broker_receive_one(hr_broker_t *b)
{
    zmq_msg_t frames[3];
    size_t n = 0, total = 0;
    int more = 1;
    while (more) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, b->router_raw, n == 0 ? ZMQ_DONTWAIT : 0) < 0) {
            zmq_msg_close(&frame);
            if (n == 0)
                return 0; /* EAGAIN (or EINTR): nothing waiting */
            break;        /* cannot happen mid-message: ZeroMQ delivers messages whole */
        }
        more = zmq_msg_more(&frame);
        total++;
        if (n < 3) {
            frames[n++] = frame;
        } else {
            zmq_msg_close(&frame);
        }
    }
    zmq_msg_t *identity = &frames[0];
    char why[256];
    if (total != 3 || zmq_msg_size(&frames[1]) != 0) {
        snprintf(why, sizeof why,
                 "expected 2 frames after the routing id: an empty delimiter and one Request; "
                 "got %zu frame(s)%s",
                 total - 1, total == 3 ? " with a non-empty first frame" : "");
        hr_broker_send_error(b, identity, 0, HR_E_INVALID_REQUEST, why);
        for (size_t i = 1; i < n; i++)
            zmq_msg_close(&frames[i]);
        return 1;
    }
    zmq_msg_close(&frames[1]);
    hr_request_t *req = NULL;
    int rc = hr_codec_decode_request(zmq_msg_data(&frames[2]), zmq_msg_size(&frames[2]),
                                     (size_t)b->config.max_request_bytes, &req, why, sizeof why);
    if (rc != 0) {
        uint64_t request_id = req != NULL ? req->request_id : 0;
        if (req == NULL && rc != HR_E_PROTO)
            request_id =
                hr_codec_peek_request_id(zmq_msg_data(&frames[2]), zmq_msg_size(&frames[2]));
        zmq_msg_close(&frames[2]);
        hr_broker_send_error(b, identity, request_id, rc, why);
        hr_codec_request_free(&req);
        return 1;
    }
    zmq_msg_close(&frames[2]);
    switch (req->body_case) {
    case HERALD__V1__REQUEST__BODY_PUBLISH:
        rc = hr_broker_validate_publish(b, req->publish, why, sizeof why);
        if (rc == 0)
            rc = hr_broker_consistency_check(b, why, sizeof why);
        if (rc == 0)
            rc = hr_broker_route_publish(b, identity, req, why, sizeof why);
        if (rc == 1)
            break; /* forwarded: the answer is relayed when the owner replies */
        if (rc != 0) {
            hr_broker_refuse(b, identity, req->request_id, rc, why,
                             req->publish->n_messages > 0 ? &req->publish->messages[0]->topic
                                                          : NULL);
            break;
        }
        hr_broker_add_publish(b, identity, req);
        return 1; /* the pending entry owns req and identity now */
    case HERALD__V1__REQUEST__BODY_FETCH:
        /* Reads see every commit made so far: commit what is pending first, so a client that
         * pipelines a fetch behind its own publish reads its write. */
        hr_broker_commit(b);
        hr_broker_handle_fetch(b, identity, req);
        break;
    case HERALD__V1__REQUEST__BODY_HELLO:
        hr_broker_handle_hello(b, identity, req);
        break;
    case HERALD__V1__REQUEST__BODY_HEARTBEAT:
        hr_broker_handle_heartbeat(b, identity, req);
        break;
    case HERALD__V1__REQUEST__BODY_STATS:
        hr_broker_handle_stats(b, identity, req);
        break;
    default:
        hr_broker_send_error(b, identity, req->request_id, HR_E_INVALID_REQUEST,
                             "unknown request type");
        break;
    }
    hr_codec_request_free(&req);
    return 1;
}

/* ---- timers ------------------------------------------------------------------------------- */

static void hr_broker_heartbeat(hr_broker_t *b)
{
    Herald__V1__Heartbeat hb = HERALD__V1__HEARTBEAT__INIT;
    hb.version = HR_PROTOCOL_VERSION;
    hb.node_id = (uint32_t)b->config.node_id;
    hb.time_ms = hr_now_ms();
    hb.instance = b->instance;
    uint8_t buf[64];
    size_t len = herald__v1__heartbeat__pack(&hb, buf);
    zmq_send(b->pub_raw, hr_heartbeat_frame, HR_HEARTBEAT_FRAME_LEN, ZMQ_SNDMORE | ZMQ_DONTWAIT);
    zmq_send(b->pub_raw, buf, len, ZMQ_DONTWAIT);
}

static void hr_broker_trim(hr_broker_t *b)
{
    hr_store_retention_t policy = {
        .max_messages = (uint64_t)b->config.retention_messages,
        .max_age_ms = (uint64_t)b->config.retention_age * 1000u,
    };
    uint64_t trimmed = 0;
    bool more = false;
    /* A bounded pass keeps publish latency flat; when work remains the next pass comes soon. */
    int rc = hr_store_trim(b->store, &policy, hr_now_ms(), 20000, &trimmed, &more);
    if (rc != 0)
        HR_WARN(MOD, "event=trim_failed error=\"%s\"", hr_strerror(rc));
    b->stats.messages_trimmed += trimmed;
    if (trimmed > 0)
        HR_DEBUG(MOD, "event=trimmed messages=%llu more=%d", (unsigned long long)trimmed, more);
    b->next_trim_ms = hr_mono_ms() + (more ? 10 : (uint64_t)b->config.trim_interval);
}

/* ---- life cycle --------------------------------------------------------------------------- */

int hr_broker_run(hr_broker_t *b)
{
    HR_INFO(MOD, "event=serving listen=%s live=%s node_id=%lld brokers=%zu sync=%d",
            b->config.listen, b->config.live, (long long)b->config.node_id, b->n_cluster,
            b->config.sync);
    while (!b->stopping) {
        uint64_t now = hr_mono_ms();
        if (now >= b->next_heartbeat_ms) {
            hr_broker_heartbeat(b);
            b->next_heartbeat_ms = now + (uint64_t)b->config.heartbeat_interval;
        }
        if (now >= b->next_trim_ms)
            hr_broker_trim(b);
        uint64_t next =
            b->next_heartbeat_ms < b->next_trim_ms ? b->next_heartbeat_ms : b->next_trim_ms;
        if (b->peers != NULL && hr_peers_next_due(b->peers) < next)
            next = hr_peers_next_due(b->peers);
        long timeout = next > now ? (long)(next - now) : 0;
        zmq_pollitem_t items[HR_CLUSTER_MAX + 1] = {{b->router_raw, 0, ZMQ_POLLIN, 0}};
        size_t n_items = 1;
        if (b->peers != NULL)
            n_items += hr_peers_pollitems(b->peers, items + 1, HR_CLUSTER_MAX);
        int rc = zmq_poll(items, (int)n_items, timeout);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            HR_ERROR(MOD, "event=poll_failed error=\"%s\"", zmq_strerror(zmq_errno()));
            return -zmq_errno();
        }
        if (b->peers != NULL)
            hr_peers_process(b->peers, hr_mono_ms());
        /* Drain what has arrived, up to one batch, then commit it as one transaction. The
         * request bound keeps a flood of non-publish requests from delaying the commit. */
        size_t requests = 0;
        while (b->n_msgs < (size_t)b->config.max_batch && requests < HR_DRAIN_MAX_REQUESTS &&
               hr_broker_receive_one(b))
            requests++;
        hr_broker_commit(b);
    }
    /* Stopping: requests already received are committed and answered (the loop above never
     * leaves a batch half-done); nothing new is read. */
    HR_INFO(MOD, "event=stopping");
    return 0;
}

void hr_broker_stop(hr_broker_t *b)
{
    b->stopping = 1;
}

/* `endpoint` as peers dial it, as a new string: its host replaced by --advertise, or by the host
 * of --listen when --advertise is empty; a wildcard host (`*`, 0.0.0.0) is never advertised, and
 * an endpoint without a host:port (ipc://, inproc://) is kept as it is. */
static char *hr_broker_advertised(const hr_broker_t *b, const char *endpoint)
{
    const char *host_start = strstr(endpoint, "://");
    const char *port = strrchr(endpoint, ':');
    char host[256] = "";
    if (b->config.advertise[0] != '\0') {
        snprintf(host, sizeof host, "%s", b->config.advertise);
    } else {
        const char *ls = strstr(b->config.listen, "://");
        const char *lp = strrchr(b->config.listen, ':');
        if (ls && lp && lp > ls + 3)
            snprintf(host, sizeof host, "%.*s", (int)(lp - ls - 3), ls + 3);
        /* A wildcard bind address is not one anyone can dial: advertise the host name. */
        if (strcmp(host, "*") == 0 || strcmp(host, "0.0.0.0") == 0) {
            if (gethostname(host, sizeof host) != 0)
                host[0] = '\0';
            host[sizeof host - 1] = '\0';
        }
    }
    char buf[600];
    if (host_start != NULL && port != NULL && port > host_start + 2 && host[0] != '\0' &&
        strcmp(host, "*") != 0 && strcmp(host, "0.0.0.0") != 0)
        snprintf(buf, sizeof buf, "%.*s%s%s", (int)(host_start + 3 - endpoint), endpoint, host,
                 port);
    else
        snprintf(buf, sizeof buf, "%s", endpoint);
    return hr_strndup(buf, strlen(buf));
}

static int hr_broker_parse_cluster(hr_broker_t *b, char *err, size_t errlen)
{
    const char *list = b->config.cluster;
    if (list[0] == '\0') {
        b->cluster = hr_malloc(sizeof *b->cluster);
        b->n_cluster = 1;
        /* Just this broker: the list names it as peers and edges dial it (DESIGN.md §Cluster:
         * a wildcard bind address is not one anyone can dial). */
        b->cluster[0] = hr_broker_advertised(b, b->config.listen);
    } else {
        size_t n = 1;
        for (const char *p = list; *p; p++)
            n += *p == ',';
        b->cluster = hr_calloc(n, sizeof *b->cluster);
        const char *start = list;
        for (size_t i = 0; i < n; i++) {
            const char *end = strchr(start, ',');
            size_t len = end ? (size_t)(end - start) : strlen(start);
            if (len == 0) {
                snprintf(err, errlen, "--cluster: entry %zu is empty", i);
                return HR_E_INVALID_REQUEST;
            }
            b->cluster[b->n_cluster++] = hr_strndup(start, len);
            start = end ? end + 1 : start + len;
        }
    }
    if ((size_t)b->config.node_id >= b->n_cluster) {
        snprintf(err, errlen, "--node-id %lld is not an index into the %zu broker(s) of --cluster",
                 (long long)b->config.node_id, b->n_cluster);
        return HR_E_INVALID_REQUEST;
    }
    return 0;
}

/* `max_msg` bytes (-1 = no limit) becomes ZMQ_MAXMSGSIZE. Every option is set before
 * zmq_bind: libzmq copies a socket's options into the listener when it binds, so an option
 * set afterwards never reaches the connections that listener accepts. */
static zsock_t *hr_broker_bind(int type, const char *endpoint, int64_t hwm, int64_t max_msg,
                               char *err, size_t errlen)
{
    zsock_t *sock = zsock_new(type);
    if (sock == NULL) {
        snprintf(err, errlen, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
        return NULL;
    }
    zsock_set_linger(sock, 1000);
    zsock_set_sndhwm(sock, (int)hwm);
    zsock_set_rcvhwm(sock, (int)hwm);
    zmq_setsockopt(zsock_resolve(sock), ZMQ_MAXMSGSIZE, &max_msg, sizeof max_msg);
    if (zmq_bind(zsock_resolve(sock), endpoint) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", endpoint, zmq_strerror(zmq_errno()));
        zsock_destroy(&sock);
        return NULL;
    }
    return sock;
}

int hr_broker_new(hr_broker_t **out, const hr_broker_config_t *config, char *err, size_t errlen)
{
    hr_broker_t *b = hr_calloc(1, sizeof *b);
    b->config = *config;
    b->lock_fd = -1;
    int rc = hr_broker_parse_cluster(b, err, errlen);
    if (rc != 0)
        goto fail;
    b->live_advertised = hr_broker_advertised(b, b->config.live);

    hr_store_options_t so;
    hr_store_options_default(&so);
    so.map_size = (uint64_t)config->map_size;
    so.sync = config->sync;
    so.dedupe_window_ms = (uint64_t)config->dedupe_window * 1000u;
    rc = hr_store_open(&b->store, config->data_dir, &so);
    if (rc != 0) {
        snprintf(err, errlen, "cannot open the data directory %s: %s", config->data_dir,
                 hr_strerror(rc));
        goto fail;
    }
    /* LMDB lets several processes share an environment, and seqs would stay unique, but each
     * broker's live stream would carry only its own commits: one broker per data directory. */
    char lock_path[4096];
    snprintf(lock_path, sizeof lock_path, "%s/broker.lock", config->data_dir);
    b->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (b->lock_fd < 0 || flock(b->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot lock %s: %s", lock_path,
                 rc == -EWOULDBLOCK ? "another herald-broker is using this data directory"
                                    : strerror(-rc));
        goto fail;
    }
    /* P, N and the node id are fixed when the cluster is created: a log started under another
     * configuration would own other partitions than the ones it holds (DESIGN.md §Cluster). */
    hr_store_identity_t want = {(uint32_t)config->partitions, (uint32_t)b->n_cluster,
                                (uint32_t)config->node_id},
                        have;
    rc = hr_store_identity(b->store, &want, &have);
    if (rc == HR_E_MISCONFIGURED) {
        snprintf(err, errlen,
                 "the data in %s belongs to node %u of a %u-broker cluster with %u partitions; "
                 "this broker was started as node %u of %u with --partitions %u. Start it with "
                 "the original --node-id, --cluster and --partitions (they are fixed when the "
                 "cluster is created), or give it an empty --data-dir",
                 config->data_dir, have.node_id, have.brokers, have.partitions, want.node_id,
                 want.brokers, want.partitions);
        goto fail;
    }
    if (rc != 0) {
        snprintf(err, errlen, "cannot read the cluster identity in %s: %s", config->data_dir,
                 hr_strerror(rc));
        goto fail;
    }
    if (config->renew_epochs) {
        uint64_t renewed = 0;
        rc = hr_store_renew_epochs(b->store, &renewed);
        if (rc != 0) {
            snprintf(err, errlen, "--renew-epochs: %s", hr_strerror(rc));
            goto fail;
        }
        HR_WARN(MOD, "event=epochs_renewed topics=%llu", (unsigned long long)renewed);
    }
    /* czmq's own SIGINT handler would swallow the first signal; main() installs Herald's. */
    zsys_handler_set(NULL);
    /* A message larger than this is dropped by ZeroMQ with the connection; keep it well above
     * the request limit so oversize requests reach us and get a clear error instead. */
    int64_t max_msg = config->max_request_bytes * 4 + 4096;
    b->router = hr_broker_bind(ZMQ_ROUTER, config->listen, config->hwm, max_msg, err, errlen);
    if (b->router == NULL) {
        rc = HR_E_UNAVAILABLE;
        goto fail;
    }
    b->pub = hr_broker_bind(ZMQ_PUB, config->live, config->hwm, -1, err, errlen);
    if (b->pub == NULL) {
        rc = HR_E_UNAVAILABLE;
        goto fail;
    }
    b->router_raw = zsock_resolve(b->router);
    b->pub_raw = zsock_resolve(b->pub);
    if (b->n_cluster > 1) {
        uint64_t hb = (uint64_t)config->heartbeat_interval;
        hr_peers_options_t po = {
            .cluster = b->cluster,
            .n_cluster = b->n_cluster,
            .self = (uint32_t)config->node_id,
            .partitions = (uint32_t)config->partitions,
            .hello_interval_ms = hb,
            .down_after_ms = 3 * hb,
            .forward_timeout_ms = (uint64_t)config->forward_timeout,
            .max_reply_bytes = (size_t)config->max_request_bytes * 4 + 4096,
            .on_reply = hr_broker_on_forward_reply,
            .arg = b,
        };
        rc = hr_peers_new(&b->peers, &po, err, errlen);
        if (rc != 0)
            goto fail;
    }
    b->started_ms = hr_mono_ms();
    if (getrandom(&b->instance, sizeof b->instance, 0) != (ssize_t)sizeof b->instance)
        b->instance = hr_now_ms() ^ ((uint64_t)getpid() << 32);
    b->next_heartbeat_ms = b->started_ms;
    b->next_trim_ms = b->started_ms + (uint64_t)config->trim_interval;
    *out = b;
    return 0;
fail:
    hr_broker_destroy(&b);
    return rc;
}

void hr_broker_destroy(hr_broker_t **broker)
{
    hr_broker_t *b = broker ? *broker : NULL;
    if (b == NULL)
        return;
    for (size_t i = 0; i < b->n_pending; i++) {
        zmq_msg_close(&b->pending[i].identity);
        hr_codec_request_free(&b->pending[i].req);
    }
    hr_peers_destroy(&b->peers); /* fails pending forwards: before the router closes */
    zsock_destroy(&b->router);
    zsock_destroy(&b->pub);
    hr_store_close(&b->store);
    if (b->lock_fd >= 0)
        close(b->lock_fd);
    for (size_t i = 0; i < b->n_cluster; i++)
        hr_free(b->cluster[i]);
    hr_free(b->cluster);
    hr_free(b->live_advertised);
    hr_free(b->pending);
    hr_free(b->msgs);
    hr_free(b->results);
    hr_free(b->encode_buf);
    hr_free(b);
    *broker = NULL;
}
