/* herald-edge: the edge process. Options: hr_edge_options below; --help lists them. */
#include "api.h"
#include "brokers.h"
#include "edge.h"
#include "hr_alloc.h"
#include "hr_error.h"
#include "hr_log.h"
#include "outq.h"
#include "polling.h"
#include "sub.h"
#include "ws.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MOD "edge"

/* How often the edge refreshes the brokers' figures it exports in /metrics. */
#define HR_BROKER_STATS_INTERVAL_MS 5000

const hr_option_t hr_edge_options[] = {
#define OPT(name, type, def, min, max, field, help)                                                \
    {                                                                                              \
        name, type, def, min, max, offsetof(hr_edge_config_t, field), help                         \
    }
    OPT("listen", HR_OPT_STRING, "127.0.0.1:8080", 0, 0, listen, "HTTP address, host:port"),
    OPT("brokers", HR_OPT_STRING, "tcp://127.0.0.1:7400", 0, 0, brokers,
        "comma-separated broker request endpoints; one is enough to learn the cluster"),
    OPT("cors-origins", HR_OPT_STRING, "*", 0, 0, cors_origins,
        "comma-separated origins allowed by CORS, '*' for any, empty for none"),
    OPT("max-topics", HR_OPT_INT, "64", 1, HR_CURSOR_MAX_ENTRIES, max_topics,
        "topics per subscription"),
    OPT("max-data-bytes", HR_OPT_BYTES, "1M", 0, 256 * 1048576LL, max_data_bytes,
        "largest message data published over HTTP, bytes"),
    OPT("max-body-bytes", HR_OPT_BYTES, "16M", 1024, 1024 * 1048576LL, max_body_bytes,
        "largest HTTP request body (a JSON batch), bytes"),
    OPT("max-header-bytes", HR_OPT_BYTES, "16K", 1024, 1048576, max_header_bytes,
        "largest request line plus headers, bytes"),
    OPT("max-headers", HR_OPT_INT, "100", 1, 10000, max_headers, "most request headers"),
    OPT("header-timeout", HR_OPT_INT, "10000", 10, 3600000, header_timeout,
        "ms a client may take to send a whole request (slow senders are cut off)"),
    OPT("idle-timeout", HR_OPT_INT, "60000", 10, 86400000, idle_timeout,
        "ms an idle keep-alive connection stays open"),
    OPT("request-timeout", HR_OPT_INT, "5000", 10, 600000, request_timeout,
        "ms to wait for a broker's reply before answering 503"),
    OPT("broker-down-after", HR_OPT_INT, "3000", 10, 600000, broker_down_after,
        "ms without a heartbeat after which a broker counts as down"),
    OPT("heartbeat", HR_OPT_INT, "15000", 10, 3600000, heartbeat,
        "ms between heartbeats on streams (SSE comment lines, NDJSON empty lines)"),
    OPT("retry", HR_OPT_INT, "2000", 0, 3600000, retry,
        "ms, the reconnect hint (SSE retry:); jittered up to twice this on shutdown"),
    OPT("poll-wait", HR_OPT_INT, "25", 0, 3600, poll_wait,
        "seconds a long poll waits when the request names no wait"),
    OPT("poll-max-wait", HR_OPT_INT, "60", 0, 3600, poll_max_wait,
        "largest wait in seconds; a larger one is clamped to it"),
    OPT("poll-limit", HR_OPT_INT, "100", 1, 100000, poll_limit,
        "messages per poll answer when the request names no limit"),
    OPT("poll-max-limit", HR_OPT_INT, "1000", 1, 100000, poll_max_limit,
        "largest limit; a larger one is clamped to it"),
    OPT("queue-bytes", HR_OPT_BYTES, "1M", 4096, 1024 * 1048576LL, queue_bytes,
        "per-subscriber outgoing queue bound, bytes; a client past it is cut off"),
    OPT("slow-client-grace", HR_OPT_INT, "5000", 0, 600000, slow_client_grace,
        "ms a client may stay over half its queue before it is cut off, and then has to read "
        "its last bytes before the connection closes"),
    OPT("fetch-page", HR_OPT_INT, "1000", 1, 10000, fetch_page,
        "messages per history read while a subscriber catches up"),
    OPT("drain-grace", HR_OPT_INT, "0", 0, 3600000, drain_grace,
        "ms to keep serving after SIGTERM (readyz false) before giving clients their cursors"),
    OPT("hwm", HR_OPT_INT, "100000", 0, INT32_MAX, hwm,
        "ZeroMQ high-water mark for live messages, messages"),
    OPT("queue-messages", HR_OPT_INT, "10000", 1, 100000000, queue_messages,
        "per-subscriber outgoing queue bound, messages; a client past it is cut off"),
    OPT("ws-max-message", HR_OPT_BYTES, "2M", 1024, 1024 * 1048576LL, ws_max_message,
        "largest WebSocket message accepted, bytes (larger: close 1009)"),
    OPT("ws-ping-interval", HR_OPT_INT, "20000", 0, 3600000, ws_ping_interval,
        "ms between WebSocket pings to each client; 0 disables them"),
    OPT("ws-ping-timeout", HR_OPT_INT, "10000", 10, 3600000, ws_ping_timeout,
        "ms a WebSocket client has to answer a ping before the connection is dropped"),
    OPT("ws-max-inflight", HR_OPT_INT, "1024", 1, 1000000, ws_max_inflight,
        "WebSocket publishes awaiting their commit per connection; reading pauses beyond"),
    OPT("log-level", HR_OPT_STRING, "info", 0, 0, log_level, "debug, info, warn or error"),
#undef OPT
};
const size_t hr_edge_options_count = sizeof hr_edge_options / sizeof hr_edge_options[0];

typedef struct {
    hr_edge_t edge;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    uv_timer_t heartbeat_timer;
    uv_timer_t stats_timer; /* brokers' stats for /metrics */
    int stage;              /* 0 serving, 1 draining (grace), 2 closing clients, 3 done */
} hr_edge_main_t;

static void hr_main_on_live(void *arg, const Herald__V1__Message *msg, const uint8_t *frame,
                            size_t frame_len)
{
    (void)frame;
    (void)frame_len;
    hr_edge_t *edge = arg;
    hr_registry_on_live(edge->registry, msg);
}

static void hr_main_on_state(void *arg, uint32_t index, bool up)
{
    hr_edge_t *edge = arg;
    HR_INFO(MOD, "event=broker_%s broker=%s", up ? "up" : "down",
            hr_brokers_endpoint(edge->brokers, index));
    if (edge->registry != NULL)
        hr_registry_on_broker_state(edge->registry, index, up);
}

static void hr_main_on_heartbeat(uv_timer_t *timer)
{
    hr_edge_t *edge = timer->data;
    hr_registry_heartbeat(edge->registry);
}

static void hr_main_on_stats(uv_timer_t *timer)
{
    hr_edge_poll_broker_stats(timer->data);
}

static void hr_main_close_walk(uv_handle_t *handle, void *arg)
{
    (void)arg;
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

/* Stage 3: every client has its cursor (or the wait is over): stop the loop. */
static void hr_main_finish(hr_edge_main_t *m)
{
    m->stage = 3;
    uv_stop(m->edge.loop);
}

static void hr_main_on_drain_timer(uv_timer_t *timer)
{
    hr_edge_main_t *m = timer->data;
    hr_edge_t *edge = &m->edge;
    if (m->stage == 1) {
        /* Grace period over: stop accepting, give every client its cursor, then close. */
        m->stage = 2;
        hr_http_server_stop_accepting(edge->http);
        hr_registry_shutdown(edge->registry, (uint64_t)edge->config.retry);
        hr_ws_shutdown_all((uint64_t)edge->config.retry);
        HR_INFO(MOD, "event=closing_clients connections=%zu",
                hr_http_server_connections(edge->http));
        uv_timer_start(timer, hr_main_on_drain_timer, 50, 50);
        return;
    }
    /* Stage 2: wait until the connections have taken their last bytes, bounded by the slow
     * client grace. */
    static uint64_t waited;
    waited += 50;
    if (hr_http_server_connections(edge->http) == 0 ||
        waited > (uint64_t)edge->config.slow_client_grace + 1000)
        hr_main_finish(m);
}

static void hr_main_on_signal(uv_signal_t *handle, int signum)
{
    hr_edge_main_t *m = handle->data;
    if (m->stage == 1) {
        /* A second signal cuts the grace short: clients get their cursors now. */
        HR_INFO(MOD, "event=drain_hurried signal=%d", signum);
        uv_timer_start(&m->drain_timer, hr_main_on_drain_timer, 0, 0);
        return;
    }
    if (m->stage == 2) {
        /* A third: stop without waiting for slow clients to take their last bytes. */
        HR_INFO(MOD, "event=stop_now signal=%d connections=%zu", signum,
                hr_http_server_connections(m->edge.http));
        hr_main_finish(m);
        return;
    }
    if (m->stage != 0)
        return;
    HR_INFO(MOD, "event=draining signal=%d grace_ms=%lld", signum,
            (long long)m->edge.config.drain_grace);
    m->stage = 1;
    m->edge.draining = true; /* /readyz turns false at once */
    uv_timer_start(&m->drain_timer, hr_main_on_drain_timer, (uint64_t)m->edge.config.drain_grace,
                   0);
}

int main(int argc, char **argv)
{
    static hr_edge_main_t m;
    /* A SIGTERM during start-up waits until the drain handler is installed (below), so the edge
     * still exits cleanly (0) rather than dying half-started. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigprocmask(SIG_BLOCK, &stop_signals, NULL);

    hr_edge_t *edge = &m.edge;
    char *positional[1];
    size_t n_positional;
    int want_help;
    char err[512];
    if (argc == 2 && strcmp(argv[1], "--options-markdown") == 0) {
        hr_options_print_markdown(stdout, hr_edge_options, hr_edge_options_count, "HERALD_EDGE_");
        return 0;
    }
    if (hr_options_parse(hr_edge_options, hr_edge_options_count, "HERALD_EDGE_", &edge->config,
                         argc, argv, positional, 0, &n_positional, &want_help, err,
                         sizeof err) != 0) {
        fprintf(stderr, "herald-edge: %s\n", err);
        return 2;
    }
    if (want_help) {
        printf("usage: herald-edge [options]\n\n"
               "Terminates client connections (SSE, HTTP publish and history) and forwards to\n"
               "the brokers. Every option also reads HERALD_EDGE_<NAME>.\n\n");
        hr_options_print_help(stdout, hr_edge_options, hr_edge_options_count, "HERALD_EDGE_");
        return 0;
    }
    int level = hr_log_level_parse(edge->config.log_level);
    if (level < 0) {
        fprintf(stderr, "herald-edge: --log-level: '%s' is not debug, info, warn or error\n",
                edge->config.log_level);
        return 2;
    }
    hr_log_threshold = level;
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());

    edge->loop = uv_default_loop();
    edge->started_ms = hr_edge_now_ms();
    hr_brokers_options_t bo = {
        .endpoints = edge->config.brokers,
        .request_timeout_ms = (uint64_t)edge->config.request_timeout,
        .down_after_ms = (uint64_t)edge->config.broker_down_after,
        .hwm = (int)edge->config.hwm,
        .on_live = hr_main_on_live,
        .on_state = hr_main_on_state,
        .arg = edge,
    };
    int rc = hr_brokers_new(&edge->brokers, edge->loop, &bo, err, sizeof err);
    if (rc == 0)
        rc = hr_registry_new(&edge->registry, edge);
    if (rc != 0) {
        fprintf(stderr, "herald-edge: %s\n", err);
        return 1;
    }
    hr_http_options_t ho = {
        .listen = edge->config.listen,
        .max_header_bytes = (size_t)edge->config.max_header_bytes,
        .max_headers = (size_t)edge->config.max_headers,
        .max_body_bytes = (size_t)edge->config.max_body_bytes,
        .header_timeout_ms = (uint64_t)edge->config.header_timeout,
        .idle_timeout_ms = (uint64_t)edge->config.idle_timeout,
        .cors_origins = edge->config.cors_origins,
        .backlog = 1024,
        .handler = hr_edge_handle_request,
        .handler_ctx = edge,
    };
    rc = hr_http_server_new(&edge->http, edge->loop, &ho, err, sizeof err);
    if (rc != 0) {
        HR_ERROR(MOD, "event=start_failed error=\"%s\"", err);
        fprintf(stderr, "herald-edge: %s\n", err);
        hr_registry_destroy(&edge->registry);
        hr_brokers_destroy(&edge->brokers);
        uv_walk(edge->loop, hr_main_close_walk, NULL);
        uv_run(edge->loop, UV_RUN_DEFAULT);
        return 1;
    }
    hr_outq_start(edge);
    hr_poll_start(edge);
    uv_timer_init(edge->loop, &m.heartbeat_timer);
    m.heartbeat_timer.data = edge;
    uv_timer_start(&m.heartbeat_timer, hr_main_on_heartbeat, (uint64_t)edge->config.heartbeat,
                   (uint64_t)edge->config.heartbeat);
    uv_unref((uv_handle_t *)&m.heartbeat_timer);
    uv_timer_init(edge->loop, &m.stats_timer);
    m.stats_timer.data = edge;
    uv_timer_start(&m.stats_timer, hr_main_on_stats, 1000, HR_BROKER_STATS_INTERVAL_MS);
    uv_unref((uv_handle_t *)&m.stats_timer);
    uv_signal_init(edge->loop, &m.sigterm);
    uv_signal_init(edge->loop, &m.sigint);
    m.sigterm.data = m.sigint.data = &m;
    uv_signal_start(&m.sigterm, hr_main_on_signal, SIGTERM);
    uv_signal_start(&m.sigint, hr_main_on_signal, SIGINT);
    sigprocmask(SIG_UNBLOCK, &stop_signals, NULL);
    uv_timer_init(edge->loop, &m.drain_timer);
    m.drain_timer.data = &m;
    HR_INFO(MOD, "event=serving listen=%s brokers=%s", edge->config.listen, edge->config.brokers);

    uv_run(edge->loop, UV_RUN_DEFAULT);

    hr_http_server_destroy(&edge->http);
    hr_registry_destroy(&edge->registry);
    hr_brokers_destroy(&edge->brokers);
    hr_free(edge->broker_stats);
    hr_outq_stop();
    hr_poll_stop();
    uv_walk(edge->loop, hr_main_close_walk, NULL);
    uv_run(edge->loop, UV_RUN_DEFAULT);
    uv_loop_close(edge->loop);
    HR_INFO(MOD, "event=stopped");
    return 0;
}
