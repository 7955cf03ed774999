/*
 * herald — the command-line client. Talks ZeroMQ to a broker (proto/herald.proto).
 *
 *   herald publish TOPIC [DATA|-]     print the assigned id (a cursor)
 *   herald fetch TOPIC                print history as message JSON lines (DESIGN.md)
 *   herald tail TOPIC                 print live messages as message JSON lines
 *   herald stats                      print the broker's counters as JSON
 *   herald ping                       check that the broker answers
 *
 * Exit codes (docs/cli.md): 0 success; 1 the broker refused the request (bad topic, cursor,
 * data...); 2 usage error; 3 broker unreachable or no reply in time; 4 the broker's storage
 * failed (storage_full, storage_error) — retrying later may succeed.
 */
#include "codec.h"
#include "cursor.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_options.h"
#include "msgjson.h"
#include "partition.h"
#include "topic.h"

#include <czmq.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

enum {
    EXIT_REFUSED = 1,
    EXIT_USAGE = 2,
    EXIT_UNAVAILABLE = 3,
    EXIT_STORAGE = 4,
};

typedef struct {
    const char *broker;
    int64_t timeout;
    const char *event;
    const char *content_type;
    const char *idempotency_key;
    const char *after;
    int64_t limit;
    int64_t count;
    bool json;
} hr_cli_config_t;

static const hr_option_t hr_cli_options[] = {
#define OPT(name, type, def, min, max, field, help)                                                \
    {                                                                                              \
        name, type, def, min, max, offsetof(hr_cli_config_t, field), help                          \
    }
    OPT("broker", HR_OPT_STRING, "tcp://127.0.0.1:7400", 0, 0, broker,
        "a broker's ROUTER endpoint"),
    OPT("timeout", HR_OPT_INT, "5000", 1, 3600000, timeout, "ms to wait for a reply"),
    OPT("event", HR_OPT_STRING, "", 0, 0, event, "publish: event type (SSE event:)"),
    OPT("content-type", HR_OPT_STRING, "", 0, 0, content_type, "publish: content type"),
    OPT("idempotency-key", HR_OPT_STRING, "", 0, 0, idempotency_key,
        "publish: a repeat within the broker's window returns the original id"),
    OPT("after", HR_OPT_STRING, "earliest", 0, 0, after,
        "fetch: a cursor, 'earliest', 'latest' or a seq number; messages after it"),
    OPT("limit", HR_OPT_INT, "1000", 1, INT64_MAX, limit, "fetch: most messages to print"),
    OPT("count", HR_OPT_INT, "0", 0, INT64_MAX, count,
        "tail: exit after this many messages; 0 = run until interrupted"),
    OPT("json", HR_OPT_BOOL, "false", 0, 0, json, "publish: print the whole reply as JSON"),
#undef OPT
};
#define HR_CLI_N_OPTIONS (sizeof hr_cli_options / sizeof hr_cli_options[0])

static volatile sig_atomic_t hr_cli_interrupted;

static void hr_cli_on_signal(int sig)
{
    (void)sig;
    hr_cli_interrupted = 1;
}

static int hr_cli_usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "herald: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see herald --help)\n");
    return EXIT_USAGE;
}

static void hr_cli_help(void)
{
    printf("usage: herald [options] COMMAND [ARGS]\n\n"
           "commands:\n"
           "  publish TOPIC [DATA|-]  publish DATA (or standard input) and print its id\n"
           "  fetch TOPIC             print history after --after as message JSON lines\n"
           "  tail TOPIC              print live messages as message JSON lines\n"
           "  stats                   print the broker's counters as JSON\n"
           "  ping                    check that the broker answers\n\n"
           "exit codes: 0 ok, 1 refused by the broker, 2 usage, 3 broker unreachable,\n"
           "            4 broker storage failure\n\noptions (each also reads HERALD_<NAME>):\n");
    hr_options_print_help(stdout, hr_cli_options, HR_CLI_N_OPTIONS, "HERALD_");
}

/* ---- request/reply ------------------------------------------------------------------------ */

typedef struct {
    const hr_cli_config_t *config;
    zsock_t *dealer;
    char endpoint[512]; /* the broker the dealer is connected to */
    bool followed;      /* a not_owner was followed once already */
    uint64_t next_id;
} hr_cli_t;

/* (Re)connect the request socket to `endpoint`. */
static int hr_cli_dial(hr_cli_t *cli, const char *endpoint)
{
    zsock_destroy(&cli->dealer);
    snprintf(cli->endpoint, sizeof cli->endpoint, "%s", endpoint);
    cli->dealer = zsock_new(ZMQ_DEALER);
    if (cli->dealer == NULL)
        return HR_E_UNAVAILABLE;
    zsock_set_linger(cli->dealer, 0);
    zsock_set_rcvtimeo(cli->dealer, (int)cli->config->timeout);
    zsock_set_sndtimeo(cli->dealer, (int)cli->config->timeout);
    if (zmq_connect(zsock_resolve(cli->dealer), endpoint) != 0) {
        fprintf(stderr, "herald: cannot connect to %s: %s\n", endpoint, zmq_strerror(zmq_errno()));
        return HR_E_UNAVAILABLE;
    }
    return 0;
}

static int hr_cli_connect(hr_cli_t *cli, const hr_cli_config_t *config)
{
    cli->config = config;
    cli->next_id = 1;
    zsys_handler_set(NULL);
    return hr_cli_dial(cli, config->broker);
}

/* Exit code for a Herald error. */
static int hr_cli_exit_for(int err)
{
    switch (err) {
    case HR_E_UNAVAILABLE:
        return EXIT_UNAVAILABLE;
    case HR_E_STORAGE_FULL:
    case HR_E_STORAGE:
    case HR_E_INTERNAL:
        return EXIT_STORAGE;
    default:
        return EXIT_REFUSED;
    }
}

/* Send `req` and wait for its reply. Returns 0 with *out set, or an error already reported on
 * stderr: HR_E_UNAVAILABLE (no reply in time), or the error the broker replied with. */
static int hr_cli_call(hr_cli_t *cli, hr_request_t *req, hr_reply_t **out)
{
    void *sock = zsock_resolve(cli->dealer);
    req->version = HR_PROTOCOL_VERSION;
    req->request_id = cli->next_id++;
    uint8_t *buf;
    size_t len;
    hr_codec_encode_request(req, &buf, &len);
    int rc = zmq_send(sock, "", 0, ZMQ_SNDMORE);
    if (rc >= 0)
        rc = zmq_send(sock, buf, len, 0);
    hr_free(buf);
    if (rc < 0) {
        fprintf(stderr, "herald: cannot send to %s: %s\n", cli->endpoint,
                zmq_strerror(zmq_errno()));
        return HR_E_UNAVAILABLE;
    }
    for (;;) {
        zmq_msg_t delim, body;
        zmq_msg_init(&delim);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&delim, sock, 0) < 0 || !zmq_msg_more(&delim) ||
            zmq_msg_recv(&body, sock, 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(&delim);
            zmq_msg_close(&body);
            if (e == EINTR && !hr_cli_interrupted)
                continue;
            fprintf(stderr, "herald: no reply from %s within %lld ms\n", cli->endpoint,
                    (long long)cli->config->timeout);
            return HR_E_UNAVAILABLE;
        }
        hr_reply_t *reply = NULL;
        char why[256];
        rc = hr_codec_decode_reply(zmq_msg_data(&body), zmq_msg_size(&body), SIZE_MAX, &reply, why,
                                   sizeof why);
        zmq_msg_close(&delim);
        zmq_msg_close(&body);
        if (rc != 0) {
            fprintf(stderr, "herald: the broker's reply does not decode: %s\n", why);
            hr_codec_reply_free(&reply);
            return HR_E_PROTO;
        }
        /* A request the broker could not decode (e.g. over --max-request-bytes) is answered
         * with request_id 0: with one request in flight, that answer is ours. */
        bool undecoded =
            reply->request_id == 0 && reply->body_case == HERALD__V1__REPLY__BODY_ERROR;
        if (reply->request_id != req->request_id && !undecoded) {
            hr_codec_reply_free(&reply); /* a late reply to an earlier request */
            continue;
        }
        if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR &&
            strcmp(reply->error->code, "not_owner") == 0 && reply->error->owner[0] != '\0' &&
            !cli->followed) {
            /* The partition lives on another broker of the cluster: ask it instead (once). */
            char owner[sizeof cli->endpoint];
            snprintf(owner, sizeof owner, "%s", reply->error->owner);
            hr_codec_reply_free(&reply);
            cli->followed = true;
            if (hr_cli_dial(cli, owner) != 0)
                return HR_E_UNAVAILABLE;
            return hr_cli_call(cli, req, out);
        }
        if (reply->body_case == HERALD__V1__REPLY__BODY_ERROR) {
            fprintf(stderr, "herald: %s: %s\n", reply->error->code, reply->error->message);
            rc = hr_error_from_code(reply->error->code);
            hr_codec_reply_free(&reply);
            return rc;
        }
        *out = reply;
        return 0;
    }
}

/* ---- commands ----------------------------------------------------------------------------- */

static int hr_cli_read_all(FILE *in, uint8_t **out, size_t *len)
{
    size_t cap = 65536, n = 0;
    uint8_t *buf = hr_malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = hr_realloc(buf, cap);
        }
        size_t got = fread(buf + n, 1, cap - n, in);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(in)) {
        hr_free(buf);
        return -EIO;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int hr_cli_publish(hr_cli_t *cli, const char *topic, const char *data_arg)
{
    const hr_cli_config_t *c = cli->config;
    char why[256];
    if (hr_topic_validate(topic, strlen(topic), why, sizeof why) != 0)
        return hr_cli_usage_error("invalid topic: %s", why);
    uint8_t *data = NULL;
    size_t data_len = 0;
    if (data_arg == NULL || strcmp(data_arg, "-") == 0) {
        if (hr_cli_read_all(stdin, &data, &data_len) != 0) {
            fprintf(stderr, "herald: cannot read standard input: %s\n", strerror(errno));
            return EXIT_USAGE;
        }
    } else {
        data_len = strlen(data_arg);
        data = (uint8_t *)hr_strndup(data_arg, data_len);
    }
    Herald__V1__PublishMessage msg = HERALD__V1__PUBLISH_MESSAGE__INIT;
    msg.topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
    msg.event = (ProtobufCBinaryData){strlen(c->event), (uint8_t *)c->event};
    msg.content_type = (ProtobufCBinaryData){strlen(c->content_type), (uint8_t *)c->content_type};
    msg.data = (ProtobufCBinaryData){data_len, data};
    msg.idempotency_key =
        (ProtobufCBinaryData){strlen(c->idempotency_key), (uint8_t *)c->idempotency_key};
    Herald__V1__PublishMessage *msgs[1] = {&msg};
    Herald__V1__PublishRequest pub = HERALD__V1__PUBLISH_REQUEST__INIT;
    pub.n_messages = 1;
    pub.messages = msgs;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_PUBLISH;
    req.publish = &pub;
    hr_reply_t *reply = NULL;
    int rc = hr_cli_call(cli, &req, &reply);
    hr_free(data);
    if (rc != 0)
        return hr_cli_exit_for(rc);
    if (reply->body_case != HERALD__V1__REPLY__BODY_PUBLISH || reply->publish->n_results != 1) {
        fprintf(stderr, "herald: unexpected reply to publish\n");
        hr_codec_reply_free(&reply);
        return EXIT_STORAGE;
    }
    const Herald__V1__PublishResult *r = reply->publish->results[0];
    char id[HR_CURSOR_TEXT_CAP(1)];
    hr_cursor_format_one(topic, strlen(topic), r->epoch, r->seq, id, sizeof id, NULL);
    if (c->json) {
        char epoch[17];
        hr_epoch_hex(r->epoch, epoch);
        json_t *out = json_pack("{s:s, s:s, s:I, s:s, s:I, s:b}", "topic", topic, "id", id, "seq",
                                (json_int_t)r->seq, "epoch", epoch, "time", (json_int_t)r->time_ms,
                                "duplicate", r->duplicate);
        json_dumpf(out, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(out);
    } else {
        printf("%s\n", id);
    }
    hr_codec_reply_free(&reply);
    return 0;
}

/* Resolve --after for one topic into (after_seq, epoch). Accepts a cursor, "earliest",
 * "latest" or a decimal seq. Returns 0, or EXIT_USAGE after reporting why. */
static int hr_cli_resolve_after(hr_cli_t *cli, const char *topic, uint64_t *after, uint64_t *epoch,
                                bool *latest)
{
    const char *text = cli->config->after;
    if (text[0] == '\0')
        return hr_cli_usage_error("%s", "--after is empty (an unset variable?): give a cursor, "
                                        "'earliest', 'latest' or a seq number");
    *after = 0;
    *epoch = 0;
    *latest = false;
    if (text[0] >= '0' && text[0] <= '9') {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(text, &end, 10);
        if (*end != '\0' || errno != 0)
            return hr_cli_usage_error("--after: '%s' is not a seq number or a cursor", text);
        *after = v;
        return 0;
    }
    hr_cursor_t cursor;
    hr_cursor_init(&cursor);
    if (hr_cursor_parse(&cursor, text, strlen(text)) != 0)
        return hr_cli_usage_error("--after: invalid_cursor: '%s' is not a cursor, 'earliest', "
                                  "'latest' or a seq number",
                                  text);
    if (cursor.kind == HR_CURSOR_LATEST) {
        *latest = true;
    } else if (cursor.kind == HR_CURSOR_POSITIONS) {
        const hr_cursor_entry_t *e = hr_cursor_find(&cursor, hr_fnv1a64(topic, strlen(topic)));
        if (e != NULL) {
            *after = e->seq;
            *epoch = e->epoch;
        } else {
            *latest = true; /* DESIGN.md: a topic missing from the cursor starts from now */
        }
    }
    hr_cursor_reset(&cursor);
    return 0;
}

static void hr_cli_print_message(const Herald__V1__Message *m)
{
    char id[HR_CURSOR_TEXT_CAP(1)];
    hr_cursor_format_one((const char *)m->topic.data, m->topic.len, m->epoch, m->seq, id, sizeof id,
                         NULL);
    json_t *j = hr_msgjson_from_message(m, id);
    json_dumpf(j, stdout, JSON_COMPACT);
    putchar('\n');
    json_decref(j);
}

static int hr_cli_fetch(hr_cli_t *cli, const char *topic)
{
    char why[256];
    if (hr_topic_validate(topic, strlen(topic), why, sizeof why) != 0)
        return hr_cli_usage_error("invalid topic: %s", why);
    uint64_t after, epoch;
    bool latest;
    int rc = hr_cli_resolve_after(cli, topic, &after, &epoch, &latest);
    if (rc != 0)
        return rc;
    uint64_t remaining = (uint64_t)cli->config->limit;
    bool first = true;
    while (remaining > 0 && !hr_cli_interrupted) {
        Herald__V1__FetchRequest f = HERALD__V1__FETCH_REQUEST__INIT;
        f.topic = (ProtobufCBinaryData){strlen(topic), (uint8_t *)topic};
        f.after_seq = after;
        f.epoch = epoch;
        f.limit = remaining < 1000 ? (uint32_t)remaining : 1000;
        hr_request_t req = HERALD__V1__REQUEST__INIT;
        req.body_case = HERALD__V1__REQUEST__BODY_FETCH;
        req.fetch = &f;
        hr_reply_t *reply = NULL;
        rc = hr_cli_call(cli, &req, &reply);
        if (rc != 0)
            return hr_cli_exit_for(rc);
        const Herald__V1__FetchReply *fr = reply->fetch;
        if (first && latest) {
            /* "latest": nothing before now; report the position and stop. */
            hr_codec_reply_free(&reply);
            return 0;
        }
        /* Every page may carry a reset: retention can trim past the position between pages.
         * Loss is never silent (DESIGN.md invariant 3). */
        if (fr->reset != NULL) {
            static const char *const reasons[] = {"unspecified", "retention", "epoch",
                                                  "invalid_cursor"};
            json_t *j = json_pack("{s:s, s:s, s:s, s:I}", "type", "reset", "topic", topic, "reason",
                                  reasons[fr->reset->reason & 3], "next_seq",
                                  (json_int_t)fr->reset->next_seq);
            json_dumpf(j, stdout, JSON_COMPACT);
            putchar('\n');
            json_decref(j);
        }
        first = false;
        for (size_t i = 0; i < fr->n_messages; i++)
            hr_cli_print_message(fr->messages[i]);
        size_t got = fr->n_messages;
        if (got > 0) {
            after = fr->messages[got - 1]->seq;
            epoch = fr->messages[got - 1]->epoch;
        }
        remaining -= got < remaining ? got : remaining;
        bool done = got == 0 || after >= fr->last_seq;
        hr_codec_reply_free(&reply);
        if (done)
            break;
    }
    fflush(stdout);
    return 0;
}

static int hr_cli_tail(hr_cli_t *cli, const char *topic)
{
    char why[256];
    if (hr_topic_validate(topic, strlen(topic), why, sizeof why) != 0)
        return hr_cli_usage_error("invalid topic: %s", why);
    Herald__V1__Hello hello = HERALD__V1__HELLO__INIT;
    hello.version = HR_PROTOCOL_VERSION;
    hello.client = "herald-cli";
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_HELLO;
    req.hello = &hello;
    hr_reply_t *reply = NULL;
    int rc = hr_cli_call(cli, &req, &reply);
    if (rc != 0)
        return hr_cli_exit_for(rc);
    const Herald__V1__HelloReply *h = reply->hello;
    if (h->n_cluster > 1 && h->partitions > 0) {
        /* Live messages come from the topic's owner: ask it for its live endpoint. */
        uint32_t owner = hr_partition_owner(hr_partition_of(topic, strlen(topic), h->partitions),
                                            (uint32_t)h->n_cluster);
        if (owner != h->node_id && owner < h->n_cluster) {
            char endpoint[sizeof cli->endpoint];
            snprintf(endpoint, sizeof endpoint, "%s", h->cluster[owner]);
            hr_codec_reply_free(&reply);
            if (hr_cli_dial(cli, endpoint) != 0)
                return EXIT_UNAVAILABLE;
            rc = hr_cli_call(cli, &req, &reply);
            if (rc != 0)
                return hr_cli_exit_for(rc);
        }
    }
    zsock_t *sub = zsock_new(ZMQ_SUB);
    zsock_set_linger(sub, 0);
    rc = zmq_connect(zsock_resolve(sub), reply->hello->live_endpoint);
    if (rc != 0) {
        fprintf(stderr, "herald: cannot connect to %s: %s\n", reply->hello->live_endpoint,
                zmq_strerror(zmq_errno()));
        hr_codec_reply_free(&reply);
        zsock_destroy(&sub);
        return EXIT_UNAVAILABLE;
    }
    hr_codec_reply_free(&reply);
    /* ZeroMQ filters by prefix; the exact topic is checked below. */
    zmq_setsockopt(zsock_resolve(sub), ZMQ_SUBSCRIBE, topic, strlen(topic));
    zsock_set_rcvtimeo(sub, 200);
    /* Tell scripts the subscription is in place (ZeroMQ joins take a moment). */
    usleep(100 * 1000);
    fprintf(stderr, "herald: tailing %s\n", topic);
    int64_t seen = 0;
    while (!hr_cli_interrupted && (cli->config->count == 0 || seen < cli->config->count)) {
        zmq_msg_t t, body;
        zmq_msg_init(&t);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&t, zsock_resolve(sub), 0) < 0) {
            zmq_msg_close(&t);
            zmq_msg_close(&body);
            continue;
        }
        if (zmq_msg_more(&t) && zmq_msg_recv(&body, zsock_resolve(sub), 0) >= 0 &&
            zmq_msg_size(&t) == strlen(topic) &&
            memcmp(zmq_msg_data(&t), topic, strlen(topic)) == 0) {
            Herald__V1__Message *m = NULL;
            if (hr_codec_decode_message(zmq_msg_data(&body), zmq_msg_size(&body), SIZE_MAX, &m) ==
                0) {
                hr_cli_print_message(m);
                fflush(stdout);
                seen++;
            }
            hr_codec_message_free(&m);
        }
        zmq_msg_close(&t);
        zmq_msg_close(&body);
    }
    zsock_destroy(&sub);
    return 0;
}

static int hr_cli_stats(hr_cli_t *cli)
{
    Herald__V1__StatsRequest st = HERALD__V1__STATS_REQUEST__INIT;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_STATS;
    req.stats = &st;
    hr_reply_t *reply = NULL;
    int rc = hr_cli_call(cli, &req, &reply);
    if (rc != 0)
        return hr_cli_exit_for(rc);
    const Herald__V1__StatsReply *s = reply->stats;
    json_t *buckets = json_array();
    for (size_t i = 0; i < s->n_batch_size_buckets; i++)
        json_array_append_new(buckets, json_integer((json_int_t)s->batch_size_buckets[i]));
    json_t *errors = json_object();
    for (size_t i = 0; i < s->n_errors; i++)
        json_object_set_new(errors, s->errors[i]->key,
                            json_integer((json_int_t)s->errors[i]->value));
    json_t *j = json_object();
    const struct {
        const char *key;
        uint64_t value;
    } counters[] = {
        {"node_id", s->node_id},
        {"uptime_ms", s->uptime_ms},
        {"messages_appended", s->messages_appended},
        {"bytes_appended", s->bytes_appended},
        {"batches", s->batches},
        {"batch_messages_max", s->batch_messages_max},
        {"duplicates", s->duplicates},
        {"fetches", s->fetches},
        {"messages_fetched", s->messages_fetched},
        {"messages_trimmed", s->messages_trimmed},
        {"topics", s->topics},
        {"map_size", s->map_size},
        {"map_used", s->map_used},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        json_object_set_new(j, counters[i].key, json_integer((json_int_t)counters[i].value));
        if (strcmp(counters[i].key, "batch_messages_max") == 0)
            json_object_set_new(j, "batch_size_buckets", buckets);
    }
    json_object_set_new(j, "errors", errors);
    json_dumpf(j, stdout, JSON_INDENT(2));
    putchar('\n');
    json_decref(j);
    hr_codec_reply_free(&reply);
    return 0;
}

static int hr_cli_ping(hr_cli_t *cli)
{
    Herald__V1__Heartbeat hb = HERALD__V1__HEARTBEAT__INIT;
    hb.version = HR_PROTOCOL_VERSION;
    hr_request_t req = HERALD__V1__REQUEST__INIT;
    req.body_case = HERALD__V1__REQUEST__BODY_HEARTBEAT;
    req.heartbeat = &hb;
    hr_reply_t *reply = NULL;
    int rc = hr_cli_call(cli, &req, &reply);
    if (rc != 0)
        return hr_cli_exit_for(rc);
    printf("ok node_id=%u\n", reply->heartbeat->node_id);
    hr_codec_reply_free(&reply);
    return 0;
}

int main(int argc, char **argv)
{
    hr_cli_config_t config;
    char *args[4];
    size_t n_args;
    int want_help;
    char err[512];
    if (hr_options_parse(hr_cli_options, HR_CLI_N_OPTIONS, "HERALD_", &config, argc, argv, args, 4,
                         &n_args, &want_help, err, sizeof err) != 0) {
        fprintf(stderr, "herald: %s\n", err);
        return EXIT_USAGE;
    }
    if (want_help) {
        hr_cli_help();
        return 0;
    }
    if (n_args == 0)
        return hr_cli_usage_error("%s", "a command is needed: publish, fetch, tail, stats or ping");
    const char *cmd = args[0];
    size_t want_min = 1, want_max = 1;
    if (strcmp(cmd, "publish") == 0) {
        want_min = 2;
        want_max = 3;
    } else if (strcmp(cmd, "fetch") == 0 || strcmp(cmd, "tail") == 0) {
        want_min = want_max = 2;
    } else if (strcmp(cmd, "stats") != 0 && strcmp(cmd, "ping") != 0) {
        return hr_cli_usage_error("unknown command '%s'", cmd);
    }
    if (n_args < want_min || n_args > want_max)
        return hr_cli_usage_error("wrong number of arguments for '%s'", cmd);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = hr_cli_on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    hr_cli_t cli = {0};
    int rc;
    if (hr_cli_connect(&cli, &config) != 0) {
        rc = EXIT_UNAVAILABLE;
    } else if (strcmp(cmd, "publish") == 0) {
        rc = hr_cli_publish(&cli, args[1], n_args == 3 ? args[2] : NULL);
    } else if (strcmp(cmd, "fetch") == 0) {
        rc = hr_cli_fetch(&cli, args[1]);
    } else if (strcmp(cmd, "tail") == 0) {
        rc = hr_cli_tail(&cli, args[1]);
    } else if (strcmp(cmd, "stats") == 0) {
        rc = hr_cli_stats(&cli);
    } else {
        rc = hr_cli_ping(&cli);
    }
    zsock_destroy(&cli.dealer);
    return rc;
}
