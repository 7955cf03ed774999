/*
 * herald-bench — load generator for one broker (tests/bench/run.sh drives it).
 *
 *   herald-bench publish ENDPOINT PUBLISHERS BATCH TOTAL [TOPICS] [BYTES] [OWNER/BROKERS/P]
 *       PUBLISHERS threads, each with its own DEALER keeping up to 1,000 messages in flight
 *       (ceil(1000 / BATCH) requests), publish TOTAL messages in all, spread over TOPICS topics,
 *       BYTES of data each. Prints "publish publishers=P batch=B messages=N seconds=S rate=R".
 *       Topics are bench.t0, bench.t1, ...; with OWNER/BROKERS/P (e.g. 1/3/64) only the names
 *       whose partition (FNV-1a-64 mod P) is owned by broker OWNER of BROKERS (partition mod
 *       BROKERS) are taken, so each broker of a cluster can be given its own topics.
 *   herald-bench fetch ENDPOINT TOPIC RANGE ROUNDS
 *       Reads ROUNDS ranges of RANGE messages from TOPIC, walking the log from the start and
 *       wrapping. Prints "fetch range=N messages=M seconds=S rate=R".
 *
 * Exits nonzero if any reply is an error. Every loop is bounded by its counts.
 */
#include "codec.h"
#include "hr_alloc.h"
#include "partition.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define BENCH_IN_FLIGHT_MESSAGES 1000
#define BENCH_REPLY_TIMEOUT_MS   30000

static double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct {
    void *ctx;
    const char *endpoint;
    int id;
    long batch, messages, topics, bytes;
    int failed;
    long owner, brokers, partitions; /* owner < 0: every name */
} bench_publisher_t;

static void bench_send(void *sock, const hr_request_t *req)
{
    uint8_t *buf;
    size_t len;
    hr_codec_encode_request(req, &buf, &len);
    zmq_send(sock, "", 0, ZMQ_SNDMORE);
    zmq_send(sock, buf, len, 0);
    hr_free(buf);
}

/* Receive one reply; returns it or NULL on timeout or an error reply (reported). */
static hr_reply_t *bench_recv(void *sock)
{
    zmq_msg_t delim, body;
    zmq_msg_init(&delim);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&delim, sock, 0) < 0 || zmq_msg_recv(&body, sock, 0) < 0) {
        fprintf(stderr, "bench: no reply within %d ms\n", BENCH_REPLY_TIMEOUT_MS);
        return NULL;
    }
    hr_reply_t *reply = NULL;
    char why[128];
    int rc = hr_codec_decode_reply(zmq_msg_data(&body), zmq_msg_size(&body), SIZE_MAX, &reply, why,
                                   sizeof why);
    zmq_msg_close(&delim);
    zmq_msg_close(&body);
    if (rc != 0 || reply->body_case == HERALD__V1__REPLY__BODY_ERROR) {
        fprintf(stderr, "bench: error reply: %s\n", rc != 0 ? why : reply->error->message);
        hr_codec_reply_free(&reply);
        return NULL;
    }
    return reply;
}

static void *bench_publisher_run(void *arg)
{
    bench_publisher_t *p = arg;
    void *sock = zmq_socket(p->ctx, ZMQ_DEALER);
    int timeout = BENCH_REPLY_TIMEOUT_MS, hwm = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_connect(sock, p->endpoint);

    uint8_t *data = hr_malloc((size_t)p->bytes);
    memset(data, 'x', (size_t)p->bytes);
    char(*topics)[32] = hr_malloc((size_t)p->topics * sizeof *topics);
    for (long t = 0, k = 0; t < p->topics; k++) {
        snprintf(topics[t], sizeof topics[t], "bench.t%ld", k);
        if (p->owner < 0 || hr_partition_owner(hr_partition_of(topics[t], strlen(topics[t]),
                                                               (uint32_t)p->partitions),
                                               (uint32_t)p->brokers) == (uint32_t)p->owner)
            t++;
    }
    Herald__V1__PublishMessage *msgs = hr_malloc((size_t)p->batch * sizeof *msgs);
    Herald__V1__PublishMessage **ptrs = hr_malloc((size_t)p->batch * sizeof *ptrs);

    long window = (BENCH_IN_FLIGHT_MESSAGES + p->batch - 1) / p->batch;
    long requests = p->messages / p->batch, sent = 0, acked = 0, next_topic = p->id;
    uint64_t request_id = 1;
    while (acked < requests) {
        while (sent < requests && sent - acked < window) {
            for (long i = 0; i < p->batch; i++) {
                herald__v1__publish_message__init(&msgs[i]);
                const char *topic = topics[next_topic++ % p->topics];
                msgs[i].topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
                msgs[i].data = (ProtobufCBinaryData){(size_t)p->bytes, data};
                ptrs[i] = &msgs[i];
            }
            Herald__V1__PublishRequest pub = HERALD__V1__PUBLISH_REQUEST__INIT;
            pub.n_messages = (size_t)p->batch;
            pub.messages = ptrs;
            hr_request_t req = HERALD__V1__REQUEST__INIT;
            req.version = HR_PROTOCOL_VERSION;
            req.request_id = request_id++;
            req.body_case = HERALD__V1__REQUEST__BODY_PUBLISH;
            req.publish = &pub;
            bench_send(sock, &req);
            sent++;
        }
        hr_reply_t *reply = bench_recv(sock);
        if (reply == NULL) {
            p->failed = 1;
            break;
        }
        hr_codec_reply_free(&reply);
        acked++;
    }
    hr_free(ptrs);
    hr_free(msgs);
    hr_free(topics);
    hr_free(data);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    return NULL;
}

static int bench_publish(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    const char *endpoint = argv[2];
    long publishers = atol(argv[3]), batch = atol(argv[4]), total = atol(argv[5]);
    long topics = argc > 6 ? atol(argv[6]) : 100, bytes = argc > 7 ? atol(argv[7]) : 100;
    long owner = -1, brokers = 1, partitions = 1;
    if (argc > 8 && sscanf(argv[8], "%ld/%ld/%ld", &owner, &brokers, &partitions) != 3)
        return 2;
    if (publishers < 1 || batch < 1 || total < publishers * batch || topics < 1 || bytes < 0 ||
        (owner >= 0 && (brokers < 1 || owner >= brokers || partitions < brokers)))
        return 2;
    void *ctx = zmq_ctx_new();
    bench_publisher_t *ps = hr_calloc((size_t)publishers, sizeof *ps);
    pthread_t *threads = hr_calloc((size_t)publishers, sizeof *threads);
    long per = total / publishers / batch * batch;
    double start = bench_now();
    for (long i = 0; i < publishers; i++) {
        ps[i] = (bench_publisher_t){ctx,   endpoint, (int)i, batch,   per,       topics,
                                    bytes, 0,        owner,  brokers, partitions};
        pthread_create(&threads[i], NULL, bench_publisher_run, &ps[i]);
    }
    int failed = 0;
    for (long i = 0; i < publishers; i++) {
        pthread_join(threads[i], NULL);
        failed |= ps[i].failed;
    }
    double secs = bench_now() - start;
    long done = per * publishers;
    printf("publish publishers=%ld batch=%ld bytes=%ld messages=%ld seconds=%.3f rate=%.0f\n",
           publishers, batch, bytes, done, secs, (double)done / secs);
    hr_free(threads);
    hr_free(ps);
    zmq_ctx_term(ctx);
    return failed;
}

static int bench_fetch(int argc, char **argv)
{
    if (argc < 6)
        return 2;
    const char *endpoint = argv[2], *topic = argv[3];
    long range = atol(argv[4]), rounds = atol(argv[5]);
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int timeout = BENCH_REPLY_TIMEOUT_MS;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_connect(sock, endpoint);
    uint64_t after = 0;
    long messages = 0;
    int failed = 0;
    double start = bench_now();
    for (long r = 0; r < rounds; r++) {
        Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
        f.topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
        f.after_seq = after;
        f.limit = (uint32_t)range;
        f.max_bytes = 64u * 1024 * 1024;
        hr_request_t req = HERALD__V1__REQUEST__INIT;
        req.version = HR_PROTOCOL_VERSION;
        req.request_id = (uint64_t)r + 1;
        req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
        req.fetch = &f;
        bench_send(sock, &req);
        hr_reply_t *reply = bench_recv(sock);
        if (reply == NULL) {
            failed = 1;
            break;
        }
        size_t n = reply->fetch->n_messages;
        messages += (long)n;
        after = n > 0 && reply->fetch->messages[n - 1]->seq < reply->fetch->last_seq
                    ? reply->fetch->messages[n - 1]->seq
                    : 0;
        hr_codec_reply_free(&reply);
    }
    double secs = bench_now() - start;
    printf("fetch range=%ld messages=%ld seconds=%.3f rate=%.0f\n", range, messages, secs,
           (double)messages / secs);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return failed;
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc > 1 && strcmp(argv[1], "publish") == 0)
        rc = bench_publish(argc, argv);
    else if (argc > 1 && strcmp(argv[1], "fetch") == 0)
        rc = bench_fetch(argc, argv);
    if (rc == 2)
        fprintf(
            stderr,
            "usage: herald-bench publish ENDPOINT PUBLISHERS BATCH TOTAL [TOPICS] "
            "[BYTES] [OWNER/BROKERS/P]\n       herald-bench fetch ENDPOINT TOPIC RANGE ROUNDS\n");
    return rc;
}
