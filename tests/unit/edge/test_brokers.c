/* Unit tests for edge/brokers.c (hr_brokers): the edge's ZeroMQ client, driven from a libuv
 * loop, against a real cluster of two herald-broker processes (HERALD_BROKER_BIN) on free
 * loopback ports with temporary data directories, started once for the group; and against a
 * fake broker inside the test for frames a real broker never sends. Every wait is bounded. */
#include "brokers.h"
#include "codec.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "partition.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>
#include <zmq.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#ifndef HERALD_BROKER_BIN
#error "define HERALD_BROKER_BIN as the path of the herald-broker binary"
#endif

#define N_BROKERS  2
#define PARTITIONS 64 /* the brokers' default */
#define WAIT_MS    5000

/* ---- the broker cluster (group fixture) --------------------------------------------------- */

typedef struct {
    char root[64];
    pid_t pid[N_BROKERS];
    char endpoint[N_BROKERS][64]; /* request endpoints, as --cluster lists them */
    char endpoints[160];          /* "ep0,ep1" */
} cluster_t;

static cluster_t cluster;

static void remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        char child[512];
        while (d != NULL && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            remove_tree(child);
        }
        if (d != NULL)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* `n` distinct free TCP ports on 127.0.0.1: bind port 0 for each, keeping all bound until every
 * one is known so none repeats. */
static int free_ports(int *ports, int n)
{
    int fds[8];
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof a) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&a, &len) != 0)
            return -1;
        ports[i] = ntohs(a.sin_port);
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return 0;
}

static int cluster_setup(void **state)
{
    (void)state;
    int ports[2 * N_BROKERS];
    memset(&cluster, 0, sizeof cluster);
    strcpy(cluster.root, "/tmp/hr-brokers-XXXXXX");
    if (mkdtemp(cluster.root) == NULL || free_ports(ports, 2 * N_BROKERS) != 0)
        return -1;
    for (int i = 0; i < N_BROKERS; i++) {
        snprintf(cluster.endpoint[i], sizeof cluster.endpoint[i], "tcp://127.0.0.1:%d", ports[i]);
        size_t used = strlen(cluster.endpoints);
        snprintf(cluster.endpoints + used, sizeof cluster.endpoints - used, "%s%s",
                 i > 0 ? "," : "", cluster.endpoint[i]);
    }
    for (int i = 0; i < N_BROKERS; i++) {
        char dir[128], live[64], node[8];
        snprintf(dir, sizeof dir, "%s/b%d", cluster.root, i);
        snprintf(live, sizeof live, "tcp://127.0.0.1:%d", ports[N_BROKERS + i]);
        snprintf(node, sizeof node, "%d", i);
        pid_t pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
            execl(HERALD_BROKER_BIN, "herald-broker", "--listen", cluster.endpoint[i], "--live",
                  live, "--data-dir", dir, "--cluster", cluster.endpoints, "--node-id", node,
                  "--heartbeat-interval", "100", "--map-size", "16M", "--log-level", "warn",
                  (char *)NULL);
            _exit(127);
        }
        cluster.pid[i] = pid;
    }
    return 0;
}

static int cluster_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_BROKERS; i++) {
        if (cluster.pid[i] <= 0)
            continue;
        kill(cluster.pid[i], SIGKILL);
        waitpid(cluster.pid[i], NULL, 0);
    }
    remove_tree(cluster.root);
    return 0;
}

/* A topic name starting with `prefix` whose partition belongs to broker `owner`. */
static void topic_owned_by(char *out, size_t cap, const char *prefix, uint32_t owner)
{
    for (int i = 0; i < 1000; i++) {
        snprintf(out, cap, "%s%d", prefix, i);
        if (hr_partition_owner(hr_partition_of(out, strlen(out), PARTITIONS), N_BROKERS) == owner)
            return;
    }
    fail_msg("no topic with prefix %s for broker %u", prefix, owner);
}

/* ---- the loop, the module and what its callbacks saw -------------------------------------- */

typedef struct {
    uint32_t index;
    bool up;
} state_event_t;

typedef struct {
    char topic[64];
    uint64_t seq, epoch;
    char data[64];
    bool frame_matches; /* the frame argument decodes to the same message */
} live_t;

typedef struct {
    uv_loop_t loop;
    uv_timer_t guard; /* bounds every wait */
    bool expired;
    hr_brokers_t *b;
    state_event_t states[32];
    size_t n_states;
    live_t live[64];
    size_t n_live;
} env_t;

static env_t env;

static void on_live(void *arg, const Herald__V1__Message *m, const uint8_t *frame, size_t len)
{
    env_t *e = arg;
    if (e->n_live == sizeof e->live / sizeof e->live[0])
        return;
    live_t *l = &e->live[e->n_live++];
    snprintf(l->topic, sizeof l->topic, "%.*s", (int)m->topic.len, (const char *)m->topic.data);
    snprintf(l->data, sizeof l->data, "%.*s", (int)m->data.len, (const char *)m->data.data);
    l->seq = m->seq;
    l->epoch = m->epoch;
    Herald__V1__Message *again = NULL;
    l->frame_matches = hr_codec_decode_message(frame, len, 1 << 20, &again) == 0 &&
                       again->seq == m->seq && again->epoch == m->epoch &&
                       again->data.len == m->data.len &&
                       memcmp(again->data.data, m->data.data, m->data.len) == 0;
    hr_codec_message_free(&again);
}

static void on_state(void *arg, uint32_t index, bool up)
{
    env_t *e = arg;
    if (e->n_states < sizeof e->states / sizeof e->states[0])
        e->states[e->n_states++] = (state_event_t){index, up};
}

static void on_guard(uv_timer_t *t)
{
    ((env_t *)t->data)->expired = true;
}

static void guard_start(uint64_t ms)
{
    env.expired = false;
    uv_timer_start(&env.guard, on_guard, ms, 0);
}

/* Run the loop until `cond` holds; fail the test if `ms` pass first. */
#define WAIT_UNTIL(cond, ms)                                                                       \
    do {                                                                                           \
        guard_start(ms);                                                                           \
        while (!(cond) && !env.expired)                                                            \
            uv_run(&env.loop, UV_RUN_ONCE);                                                        \
        uv_timer_stop(&env.guard);                                                                 \
        if (!(cond))                                                                               \
            fail_msg("%s:%d: no '%s' within %d ms", __FILE__, __LINE__, #cond, (int)(ms));         \
    } while (0)

/* Run the loop for `ms`. */
static void run_for(uint64_t ms)
{
    guard_start(ms);
    while (!env.expired)
        uv_run(&env.loop, UV_RUN_ONCE);
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void env_open(const char *endpoints, uint64_t timeout_ms, uint64_t down_ms)
{
    /* A test that failed while a broker was stopped must not take the next ones with it. */
    for (int i = 0; i < N_BROKERS; i++)
        kill(cluster.pid[i], SIGCONT);
    memset(&env, 0, sizeof env);
    assert_int_equal(uv_loop_init(&env.loop), 0);
    uv_timer_init(&env.loop, &env.guard);
    env.guard.data = &env;
    hr_brokers_options_t o = {
        .endpoints = endpoints,
        .request_timeout_ms = timeout_ms,
        .down_after_ms = down_ms,
        .hwm = 10000,
        .on_live = on_live,
        .on_state = on_state,
        .arg = &env,
    };
    char err[256] = "";
    int rc = hr_brokers_new(&env.b, &env.loop, &o, err, sizeof err);
    if (rc != 0)
        fail_msg("hr_brokers_new: %s (%s)", hr_strerror(rc), err);
}

/* Every handle closes and the loop has nothing left once the module is destroyed. */
static void env_close(void)
{
    hr_brokers_destroy(&env.b);
    assert_null(env.b);
    uv_close((uv_handle_t *)&env.guard, NULL);
    for (int i = 0; i < 10; i++)
        uv_run(&env.loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&env.loop), 0);
}

static bool all_up(void)
{
    if (hr_brokers_count(env.b) != N_BROKERS)
        return false;
    for (uint32_t i = 0; i < N_BROKERS; i++)
        if (!hr_brokers_up(env.b, i))
            return false;
    return true;
}

static bool saw_state(uint32_t index, bool up)
{
    for (size_t i = 0; i < env.n_states; i++)
        if (env.states[i].index == index && env.states[i].up == up)
            return true;
    return false;
}

/* ---- calls -------------------------------------------------------------------------------- */

typedef struct {
    int calls; /* times the callback ran: must end as 1, or 0 when cancelled */
    int status;
    bool had_reply;
    int body_case;
    char error_code[32];
    uint64_t seq, epoch, first_seq, last_seq;
    size_t n_messages;
    uint64_t msg_seq[8];
    uint64_t done_ms;
    hr_brokers_call_t *cancel_other; /* cancelled from inside this callback */
    bool request_inside;             /* make a request from inside this callback ... */
    int request_inside_rc;           /* ... and keep what it returned */
} result_t;

static void on_noop_reply(void *arg, int status, const hr_reply_t *reply)
{
    (void)status;
    (void)reply;
    ((result_t *)arg)->calls++;
}

static void on_reply(void *arg, int status, const hr_reply_t *reply)
{
    result_t *r = arg;
    r->calls++;
    r->status = status;
    r->done_ms = now_ms();
    r->had_reply = reply != NULL;
    if (reply != NULL) {
        r->body_case = reply->body_case;
        if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR)
            snprintf(r->error_code, sizeof r->error_code, "%s", reply->error->code);
        if (reply->body_case == HERALD__V1__REPLY__BODY_PUBLISH && reply->publish->n_results > 0) {
            r->seq = reply->publish->results[0]->seq;
            r->epoch = reply->publish->results[0]->epoch;
        }
        if (reply->body_case == HERALD__V1__REPLY__BODY_FETCH) {
            r->epoch = reply->fetch->epoch;
            r->first_seq = reply->fetch->first_seq;
            r->last_seq = reply->fetch->last_seq;
            r->n_messages = reply->fetch->n_messages;
            for (size_t i = 0; i < r->n_messages && i < 8; i++)
                r->msg_seq[i] = reply->fetch->messages[i]->seq;
        }
    }
    if (r->cancel_other != NULL)
        hr_brokers_cancel(r->cancel_other);
    if (r->request_inside) {
        Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
        hr_request_t req = HERALD__V1__REQUEST__INIT;
        req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
        req.fetch = &f;
        r->request_inside_rc = hr_brokers_request(env.b, "x", 1, &req, on_noop_reply, NULL, NULL);
    }
}

/* Publish `count` messages of `data` to `topic` in one request. */
static int publish_n(const char *topic, const char *data, size_t count, result_t *r,
                     hr_brokers_call_t **call)
{
    Herald__V1__PublishMessage m[4], *ptrs[4];
    assert_true(count <= 4);
    for (size_t i = 0; i < count; i++) {
        herald__v1__publish_message__init(&m[i]);
        m[i].topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
        m[i].data = (ProtobufCBinaryData){strlen(data), (uint8_t *)data};
        ptrs[i] = &m[i];
    }
    Herald__V1__PublishRequest p = HERALD__V1__PUBLISH_REQUEST__INIT;
    p.n_messages = count;
    p.messages = ptrs;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_PUBLISH;
    req.publish = &p;
    return hr_brokers_request(env.b, topic, strlen(topic), &req, on_reply, r, call);
}

static int publish(const char *topic, const char *data, result_t *r, hr_brokers_call_t **call)
{
    return publish_n(topic, data, 1, r, call);
}

static int fetch(const char *topic, uint64_t after, bool head_only, result_t *r,
                 hr_brokers_call_t **call)
{
    Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
    f.topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
    f.after_seq = after;
    f.head_only = head_only;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
    req.fetch = &f;
    return hr_brokers_request(env.b, topic, strlen(topic), &req, on_reply, r, call);
}

/* Publish and wait for a successful reply; returns the seq. */
static uint64_t publish_ok(const char *topic, const char *data, uint64_t *epoch)
{
    result_t r = {0};
    assert_int_equal(publish(topic, data, &r, NULL), 0);
    WAIT_UNTIL(r.calls == 1, WAIT_MS);
    if (r.status != 0 || r.body_case != HERALD__V1__REPLY__BODY_PUBLISH)
        fail_msg("publish to %s: status %s, body %d, error '%s'", topic, hr_strerror(r.status),
                 r.body_case, r.error_code);
    if (epoch != NULL)
        *epoch = r.epoch;
    return r.seq;
}

static void open_ready(uint64_t timeout_ms, uint64_t down_ms)
{
    env_open(cluster.endpoints, timeout_ms, down_ms);
    WAIT_UNTIL(all_up(), WAIT_MS);
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_new_rejects_bad_endpoints(void **state)
{
    (void)state;
    static const char *const bad[] = {"", " , ", "nonsense://x", "tcp://"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uv_loop_t loop;
        assert_int_equal(uv_loop_init(&loop), 0);
        hr_brokers_options_t o = {.endpoints = bad[i]};
        hr_brokers_t *b = NULL;
        char err[256] = "";
        assert_int_equal(hr_brokers_new(&b, &loop, &o, err, sizeof err), HR_E_INVALID_REQUEST);
        assert_null(b);
        assert_true(err[0] != '\0');
        for (int j = 0; j < 10; j++)
            uv_run(&loop, UV_RUN_NOWAIT);
        assert_int_equal(uv_loop_close(&loop), 0);
    }
}

/* Before the first HelloReply there is no map: requests are refused at once, without a
 * callback, and nothing is ready. */
static void test_request_before_map(void **state)
{
    (void)state;
    env_open(cluster.endpoints, 1000, 1000);
    result_t r = {0};
    hr_brokers_call_t *call = (hr_brokers_call_t *)&r; /* must be overwritten with NULL */
    assert_int_equal(publish("early", "x", &r, &call), HR_E_UNAVAILABLE);
    assert_null(call);
    assert_false(hr_brokers_ready(env.b));
    assert_int_equal(hr_brokers_count(env.b), 0);
    assert_int_equal(hr_brokers_partitions(env.b), 0);
    assert_null(hr_brokers_endpoint(env.b, 0));
    WAIT_UNTIL(all_up(), WAIT_MS);
    run_for(50);
    assert_int_equal(r.calls, 0);
    /* czmq was told not to take SIGINT/SIGTERM: the edge handles them. */
    struct sigaction sa;
    assert_int_equal(sigaction(SIGINT, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_DFL);
    assert_int_equal(sigaction(SIGTERM, NULL, &sa), 0);
    assert_true(sa.sa_handler == SIG_DFL);
    env_close();
}

/* The cluster list and map come from the brokers; each broker turns up once; publishes go to
 * the owner of the topic's partition (a broker refuses a topic it does not own, so a wrong
 * route would come back as not_owner). */
static void test_ready_and_publish(void **state)
{
    (void)state;
    open_ready(2000, 1000);
    assert_true(hr_brokers_ready(env.b));
    assert_int_equal(hr_brokers_partitions(env.b), PARTITIONS);
    assert_null(hr_brokers_endpoint(env.b, N_BROKERS));
    assert_false(hr_brokers_up(env.b, N_BROKERS));
    for (uint32_t i = 0; i < N_BROKERS; i++)
        assert_string_equal(hr_brokers_endpoint(env.b, i), cluster.endpoint[i]);
    assert_int_equal(env.n_states, N_BROKERS);
    assert_true(saw_state(0, true));
    assert_true(saw_state(1, true));

    for (uint32_t owner = 0; owner < N_BROKERS; owner++) {
        char topic[64];
        topic_owned_by(topic, sizeof topic, "pub.", owner);
        assert_int_equal(hr_brokers_owner(env.b, topic, strlen(topic)), owner);
        uint64_t e1, e2;
        assert_int_equal(publish_ok(topic, "one", &e1), 1);
        assert_int_equal(publish_ok(topic, "two", &e2), 2);
        assert_true(e1 != 0);
        assert_true(e1 == e2);
    }
    assert_int_equal(env.n_states, N_BROKERS); /* no flapping */
    assert_int_equal(hr_brokers_dropped(env.b), 0);
    env_close();
}

/* A configured endpoint that is not in the cluster list (another spelling of the host) only
 * serves to learn the list; the members are then reached by their listed endpoints. */
static void test_seed_not_in_list(void **state)
{
    (void)state;
    const char *port = strrchr(cluster.endpoint[1], ':') + 1;
    char seed[64];
    snprintf(seed, sizeof seed, "tcp://localhost:%s", port);
    env_open(seed, 2000, 1000);
    WAIT_UNTIL(all_up(), WAIT_MS);
    assert_string_equal(hr_brokers_endpoint(env.b, 0), cluster.endpoint[0]);
    assert_string_equal(hr_brokers_endpoint(env.b, 1), cluster.endpoint[1]);
    char topic[64];
    topic_owned_by(topic, sizeof topic, "seed.", 0);
    assert_int_equal(publish_ok(topic, "x", NULL), 1);
    env_close();
}

/* Live messages reach on_live with exact seq and data; a topic sharing the subscribed topic as
 * a prefix ("foo" / "foo.bar") is not delivered; subscriptions are reference-counted. */
static void test_live_exact_topic(void **state)
{
    (void)state;
    open_ready(2000, 1000);
    /* Both on the same broker, so "foo.bar" really arrives on the SUB that subscribed "foo".
     * (With two brokers the owner is the parity of the hash, which FNV-1a takes from the low
     * bits of the bytes: ".bar" always moves a name to the other broker, ".bar1" never.) */
    char base[64], longer[80];
    bool found = false;
    for (int i = 0; i < 100 && !found; i++) {
        static const char *const suffixes[] = {".bar", ".bar1"};
        for (size_t s = 0; s < 2 && !found; s++) {
            snprintf(base, sizeof base, "foo%d", i);
            snprintf(longer, sizeof longer, "%s%s", base, suffixes[s]);
            found = hr_brokers_owner(env.b, base, strlen(base)) ==
                    hr_brokers_owner(env.b, longer, strlen(longer));
        }
    }
    assert_true(found);
    hr_brokers_subscribe(env.b, base, strlen(base));
    hr_brokers_subscribe(env.b, base, strlen(base)); /* two references */

    /* The subscription reaches the broker's PUB asynchronously: publish probes until one comes
     * back live, then wait for the last probe too (all probes after the first delivered one
     * are delivered, in order). */
    uint64_t last_probe = 0;
    for (int i = 0; i < 100 && env.n_live == 0; i++) {
        last_probe = publish_ok(base, "probe", NULL);
        run_for(20);
    }
    assert_true(env.n_live > 0);
    WAIT_UNTIL(env.live[env.n_live - 1].seq == last_probe, WAIT_MS);
    env.n_live = 0;

    uint64_t epoch;
    publish_ok(longer, "not for foo", NULL);
    uint64_t seq = publish_ok(base, "hello", &epoch);
    assert_int_equal(seq, last_probe + 1);
    WAIT_UNTIL(env.n_live >= 1, WAIT_MS);
    run_for(100); /* anything else that was coming has come */
    assert_int_equal(env.n_live, 1);
    assert_string_equal(env.live[0].topic, base);
    assert_int_equal(env.live[0].seq, seq);
    assert_int_equal(env.live[0].epoch, epoch);
    assert_string_equal(env.live[0].data, "hello");
    assert_true(env.live[0].frame_matches);

    /* One reference left: still delivered. */
    hr_brokers_unsubscribe(env.b, base, strlen(base));
    seq = publish_ok(base, "still", NULL);
    WAIT_UNTIL(env.n_live == 2, WAIT_MS);
    assert_int_equal(env.live[1].seq, seq);
    assert_string_equal(env.live[1].data, "still");

    /* Last reference gone: nothing more, whatever ZeroMQ still has in flight. */
    hr_brokers_unsubscribe(env.b, base, strlen(base));
    hr_brokers_unsubscribe(env.b, base, strlen(base)); /* one too many: ignored */
    publish_ok(base, "gone", NULL);
    run_for(200);
    assert_int_equal(env.n_live, 2);
    assert_int_equal(hr_brokers_dropped(env.b), 0);
    env_close();
}

static void test_fetch_head_only(void **state)
{
    (void)state;
    open_ready(2000, 1000);
    char topic[64];
    topic_owned_by(topic, sizeof topic, "head.", 1);

    result_t empty = {0};
    assert_int_equal(fetch(topic, 0, true, &empty, NULL), 0);
    WAIT_UNTIL(empty.calls == 1, WAIT_MS);
    assert_int_equal(empty.status, 0);
    assert_int_equal(empty.body_case, HERALD__V1__REPLY__BODY_FETCH);
    assert_int_equal(empty.epoch, 0);
    assert_int_equal(empty.first_seq, 1);
    assert_int_equal(empty.last_seq, 0);

    result_t pub = {0};
    assert_int_equal(publish_n(topic, "m", 3, &pub, NULL), 0);
    WAIT_UNTIL(pub.calls == 1, WAIT_MS);
    assert_int_equal(pub.body_case, HERALD__V1__REPLY__BODY_PUBLISH);
    assert_int_equal(pub.seq, 1);

    result_t head = {0};
    assert_int_equal(fetch(topic, 0, true, &head, NULL), 0);
    WAIT_UNTIL(head.calls == 1, WAIT_MS);
    assert_int_equal(head.status, 0);
    assert_int_equal(head.body_case, HERALD__V1__REPLY__BODY_FETCH);
    assert_int_equal(head.epoch, pub.epoch);
    assert_int_equal(head.first_seq, 1);
    assert_int_equal(head.last_seq, 3);
    assert_int_equal(head.n_messages, 0);

    result_t page = {0};
    assert_int_equal(fetch(topic, 1, false, &page, NULL), 0);
    WAIT_UNTIL(page.calls == 1, WAIT_MS);
    assert_int_equal(page.n_messages, 2);
    assert_int_equal(page.msg_seq[0], 2);
    assert_int_equal(page.msg_seq[1], 3);
    env_close();
}

/* A cancelled call's callback never runs, whether cancelled right away or from inside another
 * call's callback before its reply is handled: not for the reply that arrives later, nor when
 * its timeout passes. */
static void test_cancel(void **state)
{
    (void)state;
    open_ready(300, 1000);
    char topic[64];
    topic_owned_by(topic, sizeof topic, "cancel.", 0);

    result_t a = {0}, b = {0}, c = {0}, d = {0};
    hr_brokers_call_t *ca = NULL, *cc = NULL;
    assert_int_equal(publish(topic, "a", &a, &ca), 0);
    assert_non_null(ca);
    hr_brokers_cancel(ca);
    hr_brokers_cancel(NULL);

    /* The broker answers a fetch as it reads it, a publish after its commit: b's reply comes
     * before c's, and b's callback cancels c. */
    assert_int_equal(fetch(topic, 0, true, &b, NULL), 0);
    assert_int_equal(publish(topic, "c", &c, &cc), 0);
    b.cancel_other = cc;
    assert_int_equal(publish(topic, "d", &d, NULL), 0);
    WAIT_UNTIL(d.calls == 1, WAIT_MS);
    run_for(400); /* past the timeout */
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(c.calls, 0);
    assert_int_equal(d.status, 0);
    /* a and c were stored all the same (cancelling is local): d is the third message. */
    assert_int_equal(d.seq, 3);
    env_close();
}

/* A stopped broker: the call in flight times out with HR_E_UNAVAILABLE, the broker turns down,
 * the edge stays ready with the other one, requests for the stopped broker fail fast (never
 * inside hr_brokers_request), and it turns up again once it runs. */
static void test_broker_stopped(void **state)
{
    (void)state;
    const uint64_t timeout = 600, down = 400;
    open_ready(timeout, down);
    char t0[64], t1[64];
    topic_owned_by(t0, sizeof t0, "stop.", 0);
    topic_owned_by(t1, sizeof t1, "stop.", 1);
    publish_ok(t1, "before", NULL);

    assert_int_equal(kill(cluster.pid[1], SIGSTOP), 0);
    result_t r1 = {0};
    uint64_t start = now_ms();
    assert_int_equal(publish(t1, "lost", &r1, NULL), 0);
    WAIT_UNTIL(r1.calls == 1, WAIT_MS);
    assert_int_equal(r1.status, HR_E_UNAVAILABLE);
    assert_false(r1.had_reply);
    uint64_t took = r1.done_ms - start;
    if (took < timeout - 100 || took > timeout + 500)
        fail_msg("the timed-out call took %llu ms; the timeout is %llu ms",
                 (unsigned long long)took, (unsigned long long)timeout);

    WAIT_UNTIL(saw_state(1, false), WAIT_MS);
    assert_false(hr_brokers_up(env.b, 1));
    assert_true(hr_brokers_up(env.b, 0));
    assert_true(hr_brokers_ready(env.b));
    assert_false(saw_state(0, false));

    /* Fail fast, deferred; a deferred failure can be cancelled too. */
    result_t r2 = {0}, r3 = {0};
    hr_brokers_call_t *c3 = NULL;
    start = now_ms();
    assert_int_equal(publish(t1, "fast", &r2, NULL), 0);
    assert_int_equal(publish(t1, "cancelled", &r3, &c3), 0);
    assert_int_equal(r2.calls, 0);
    hr_brokers_cancel(c3);
    WAIT_UNTIL(r2.calls == 1, WAIT_MS);
    assert_int_equal(r2.status, HR_E_UNAVAILABLE);
    assert_true(r2.done_ms - start < 100);
    publish_ok(t0, "other broker", NULL);
    assert_int_equal(r3.calls, 0);

    assert_int_equal(kill(cluster.pid[1], SIGCONT), 0);
    WAIT_UNTIL(env.n_states > 0 && env.states[env.n_states - 1].index == 1 &&
                   env.states[env.n_states - 1].up,
               WAIT_MS);
    /* "before" (1) and the stopped broker's late "lost" (2) were committed. */
    assert_int_equal(publish_ok(t1, "after", NULL), 3);
    assert_int_equal(r1.calls, 1); /* its late reply was dropped */
    env_close();
}

/* Destroying with calls pending runs each callback once with HR_E_UNAVAILABLE (requests made
 * from them are refused; a call cancelled by one of them never runs). */
static void test_destroy_with_pending(void **state)
{
    (void)state;
    open_ready(2000, 1000);
    char t0[64];
    topic_owned_by(t0, sizeof t0, "destroy.", 0);
    result_t r[3] = {{0}};
    hr_brokers_call_t *c2 = NULL;
    assert_int_equal(publish(t0, "a", &r[0], NULL), 0);
    assert_int_equal(publish(t0, "b", &r[1], NULL), 0);
    assert_int_equal(publish(t0, "c", &r[2], &c2), 0);
    r[0].cancel_other = c2;
    r[1].request_inside = true;
    hr_brokers_destroy(&env.b);
    assert_null(env.b);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, HR_E_UNAVAILABLE);
        assert_false(r[i].had_reply);
    }
    assert_int_equal(r[1].request_inside_rc, HR_E_UNAVAILABLE);
    assert_int_equal(r[2].calls, 0);
    env_close(); /* destroy of NULL is a no-op; the handles close */
}

/* Requests sent from a timer while replies stream in: a send can consume the ZMQ_FD edge of a
 * reply already queued, and the module must notice without a new wake-up. Every call gets its
 * reply. */
typedef struct {
    uv_timer_t timer;
    char topic[2][64];
    int sent, ok, failed;
} burst_t;

#define BURST_TOTAL 2000

static void on_burst_reply(void *arg, int status, const hr_reply_t *reply)
{
    burst_t *bu = arg;
    if (status == 0 && reply->body_case == HERALD__V1__REPLY__BODY_FETCH)
        bu->ok++;
    else
        bu->failed++;
}

static void on_burst_tick(uv_timer_t *t)
{
    burst_t *bu = t->data;
    /* Let replies to the last batch arrive before sending: their wake-up is then pending when
     * the sends below run, and a send may swallow it. */
    usleep(300);
    for (int i = 0; i < 10 && bu->sent < BURST_TOTAL; i++, bu->sent++) {
        const char *topic = bu->topic[bu->sent % 2];
        Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
        f.topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
        f.head_only = true;
        hr_request_t req = HERALD__V1__REQUEST__INIT;
        req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
        req.fetch = &f;
        assert_int_equal(
            hr_brokers_request(env.b, topic, strlen(topic), &req, on_burst_reply, bu, NULL), 0);
    }
    if (bu->sent == BURST_TOTAL)
        uv_timer_stop(t);
}

static void test_pipelined_burst(void **state)
{
    (void)state;
    open_ready(3000, 2000);
    burst_t bu = {0};
    topic_owned_by(bu.topic[0], sizeof bu.topic[0], "burst.", 0);
    topic_owned_by(bu.topic[1], sizeof bu.topic[1], "burst.", 1);
    uv_timer_init(&env.loop, &bu.timer);
    bu.timer.data = &bu;
    uv_timer_start(&bu.timer, on_burst_tick, 1, 1);
    WAIT_UNTIL(bu.ok + bu.failed == BURST_TOTAL, WAIT_MS);
    assert_int_equal(bu.ok, BURST_TOTAL);
    uv_close((uv_handle_t *)&bu.timer, NULL);
    env_close();
}

/* ---- a fake broker, for frames a real one never sends ------------------------------------- */

typedef struct {
    zsock_t *router, *xpub;
    char endpoint[64], live[64];
    uv_timer_t timer; /* services both sockets from the test's loop */
    uint64_t next_hb;
    bool sent;
    bool subscribed_all; /* someone subscribed to "" (every topic) */
} fake_t;

static void fake_send(void *sock, const void *a, size_t alen, const void *b, size_t blen, int parts)
{
    zmq_send(sock, a, alen, parts > 1 ? ZMQ_SNDMORE : 0);
    if (parts > 1)
        zmq_send(sock, b, blen, parts > 2 ? ZMQ_SNDMORE : 0);
    if (parts > 2)
        zmq_send(sock, "extra", 5, 0);
}

static void fake_send_message(void *sock, const char *frame, const char *topic, uint64_t seq,
                              const char *data)
{
    Herald__V1__Message m = HERALD__V1__MESSAGE__INIT;
    m.topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
    m.seq = seq;
    m.epoch = 0x1234;
    m.data = (ProtobufCBinaryData){strlen(data), (uint8_t *)data};
    uint8_t buf[256];
    size_t len = herald__v1__message__pack(&m, buf);
    fake_send(sock, frame, strlen(frame), buf, len, 2);
}

static void fake_service(uv_timer_t *t)
{
    fake_t *f = t->data;
    void *router = zsock_resolve(f->router), *xpub = zsock_resolve(f->xpub);
    for (;;) {
        zmq_msg_t id, delim, body;
        zmq_msg_init(&id);
        if (zmq_msg_recv(&id, router, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&id);
            break;
        }
        zmq_msg_init(&delim);
        zmq_msg_init(&body);
        zmq_msg_recv(&delim, router, 0); /* a message arrives whole */
        zmq_msg_recv(&body, router, 0);
        hr_request_t *req = NULL;
        if (hr_codec_decode_request(zmq_msg_data(&body), zmq_msg_size(&body), 1 << 20, &req, NULL,
                                    0) == 0 &&
            req->body_case == HERALD__V1__REQUEST__BODY_HELLO) {
            char *list[1] = {f->endpoint};
            Herald__V1__HelloReply h = HERALD__V1__HELLO_REPLY__INIT;
            h.version = 1;
            h.n_cluster = 1;
            h.cluster = list;
            h.live_endpoint = f->live;
            h.partitions = 4;
            hr_reply_t reply = HERALD__V1__REPLY__INIT;
            reply.request_id = req->request_id;
            reply.body_case = HERALD__V1__REPLY__BODY_HELLO;
            reply.hello = &h;
            uint8_t *buf;
            size_t len;
            hr_codec_encode_reply(&reply, &buf, &len);
            zmq_msg_send(&id, router, ZMQ_SNDMORE);
            zmq_send(router, "", 0, ZMQ_SNDMORE);
            zmq_send(router, buf, len, 0);
            hr_free(buf);
        } else if (req != NULL) {
            /* Answer anything else in a protocol version from the future. */
            Herald__V1__FetchReply fr = HERALD__V1__FETCH_REPLY__INIT;
            hr_reply_t reply = HERALD__V1__REPLY__INIT;
            reply.version = 99;
            reply.request_id = req->request_id;
            reply.body_case = HERALD__V1__REPLY__BODY_FETCH;
            reply.fetch = &fr;
            uint8_t *buf;
            size_t len;
            hr_codec_encode_reply(&reply, &buf, &len);
            zmq_msg_send(&id, router, ZMQ_SNDMORE);
            zmq_send(router, "", 0, ZMQ_SNDMORE);
            zmq_send(router, buf, len, 0);
            hr_free(buf);
        }
        hr_codec_request_free(&req);
        zmq_msg_close(&id);
        zmq_msg_close(&delim);
        zmq_msg_close(&body);
    }
    for (;;) {
        char sub[64];
        int n = zmq_recv(xpub, sub, sizeof sub, ZMQ_DONTWAIT);
        if (n < 0)
            break;
        if (n == 1 && sub[0] == 1)
            f->subscribed_all = true;
        /* Once "fake" is subscribed, everything below reaches the edge's SUB. */
        if (n == 5 && sub[0] == 1 && memcmp(sub + 1, "fake", 4) == 0 && !f->sent) {
            f->sent = true;
            fake_send(xpub, "fake", 4, "\xff\xff\xff", 3, 2); /* not a Message */
            fake_send_message(xpub, "fake", "other", 1, "x"); /* names another topic */
            fake_send(xpub, "fake", 4, NULL, 0, 1);           /* no body */
            fake_send(xpub, "fake", 4, "y", 1, 3);            /* three frames */
            fake_send_message(xpub, "fake.x", "fake.x", 1, "prefix only: filtered, not dropped");
            fake_send_message(xpub, "fake", "fake", 7, "ok");
        }
    }
    uint64_t now = uv_now(t->loop);
    if (now >= f->next_hb) {
        f->next_hb = now + 50;
        Herald__V1__Heartbeat hb = HERALD__V1__HEARTBEAT__INIT;
        uint8_t buf[64];
        size_t len = herald__v1__heartbeat__pack(&hb, buf);
        fake_send(xpub, "\0hb", 3, buf, len, 2);
    }
}

static void test_live_malformed_frames(void **state)
{
    (void)state;
    fake_t f = {0};
    f.router = zsock_new(ZMQ_ROUTER);
    f.xpub = zsock_new(ZMQ_XPUB);
    assert_non_null(f.router);
    assert_non_null(f.xpub);
    zsock_set_linger(f.router, 0);
    zsock_set_linger(f.xpub, 0);
    int port = zsock_bind(f.router, "tcp://127.0.0.1:*");
    int live = zsock_bind(f.xpub, "tcp://127.0.0.1:*");
    assert_true(port > 0 && live > 0);
    snprintf(f.endpoint, sizeof f.endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(f.live, sizeof f.live, "tcp://127.0.0.1:%d", live);

    env_open(f.endpoint, 2000, 1000);
    uv_timer_init(&env.loop, &f.timer);
    f.timer.data = &f;
    uv_timer_start(&f.timer, fake_service, 5, 5);
    /* Subscribed before the map is known: applied when the SUB is created. */
    hr_brokers_subscribe(env.b, "fake", 4);
    hr_brokers_subscribe(env.b, "", 0); /* not a topic: ignored */
    WAIT_UNTIL(hr_brokers_ready(env.b), WAIT_MS);
    assert_int_equal(hr_brokers_count(env.b), 1);
    assert_int_equal(hr_brokers_partitions(env.b), 4);
    assert_string_equal(hr_brokers_endpoint(env.b, 0), f.endpoint);

    WAIT_UNTIL(env.n_live == 1, WAIT_MS);
    run_for(100);
    assert_int_equal(env.n_live, 1);
    assert_string_equal(env.live[0].topic, "fake");
    assert_int_equal(env.live[0].seq, 7);
    assert_string_equal(env.live[0].data, "ok");
    assert_int_equal(hr_brokers_dropped(env.b), 4);
    assert_false(f.subscribed_all);

    /* A reply this build cannot read fails its call at once, not at the timeout. */
    result_t r = {0};
    uint64_t start = now_ms();
    assert_int_equal(fetch("fake", 0, false, &r, NULL), 0);
    WAIT_UNTIL(r.calls == 1, WAIT_MS);
    assert_int_equal(r.status, HR_E_UNAVAILABLE);
    assert_false(r.had_reply);
    assert_true(r.done_ms - start < 1000);
    assert_int_equal(hr_brokers_dropped(env.b), 5);

    /* Heartbeats keep it up well past down_after_ms. */
    run_for(1200);
    assert_true(hr_brokers_up(env.b, 0));
    assert_int_equal(env.n_states, 1);

    uv_close((uv_handle_t *)&f.timer, NULL);
    env_close();
    zsock_destroy(&f.router);
    zsock_destroy(&f.xpub);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_rejects_bad_endpoints),
        cmocka_unit_test(test_request_before_map),
        cmocka_unit_test(test_ready_and_publish),
        cmocka_unit_test(test_seed_not_in_list),
        cmocka_unit_test(test_live_exact_topic),
        cmocka_unit_test(test_fetch_head_only),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_broker_stopped),
        cmocka_unit_test(test_destroy_with_pending),
        cmocka_unit_test(test_pipelined_burst),
        cmocka_unit_test(test_live_malformed_frames),
    };
    return cmocka_run_group_tests(tests, cluster_setup, cluster_teardown);
}
