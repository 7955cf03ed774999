/*
 * hr_edge — the edge process's shared state (DESIGN.md §Roles: stateless; terminates client
 * connections, forwards publishes and history reads to the owning broker, fans live messages out
 * to local subscribers). One hr_edge_t per process, used from the libuv loop thread only.
 */
#ifndef HR_EDGE_H
#define HR_EDGE_H

#include "brokers.h"
#include "hr_options.h"
#include "http.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

typedef struct {
    const char *listen;       /* HTTP "host:port" */
    const char *brokers;      /* comma-separated broker request endpoints */
    const char *cors_origins; /* comma-separated, "*" or "" */
    const char *log_level;
    int64_t max_topics;        /* topics per subscription */
    int64_t max_data_bytes;    /* bytes per published message (HTTP body) */
    int64_t max_body_bytes;    /* bytes per HTTP request body */
    int64_t max_header_bytes;  /* bytes */
    int64_t max_headers;       /* count */
    int64_t header_timeout;    /* ms */
    int64_t idle_timeout;      /* ms */
    int64_t request_timeout;   /* ms, broker requests */
    int64_t broker_down_after; /* ms of silence */
    int64_t heartbeat;         /* ms between heartbeats on streams */
    int64_t retry;             /* ms, the reconnect hint (SSE retry:, shutdown retry_ms) */
    int64_t poll_wait;         /* s, default long-poll wait */
    int64_t poll_max_wait;     /* s, the cap on wait */
    int64_t poll_limit;        /* default messages per poll answer */
    int64_t poll_max_limit;    /* the cap on limit */
    int64_t queue_bytes;       /* per-subscriber outgoing queue bound, bytes */
    int64_t slow_client_grace; /* ms a cut-off client gets to take its last bytes */
    int64_t fetch_page;        /* messages per history fetch while catching up */
    int64_t drain_grace;       /* ms to keep serving after SIGTERM before closing clients */
    int64_t hwm;               /* ZeroMQ SUB high-water mark, messages */
    int64_t queue_messages;    /* per-subscriber outgoing queue bound, messages */
    int64_t ws_max_message;    /* bytes, largest WebSocket message accepted */
    int64_t ws_ping_interval;  /* ms between WebSocket pings; 0 = none */
    int64_t ws_ping_timeout;   /* ms to wait for the pong */
    int64_t ws_max_inflight;   /* WebSocket publishes awaiting commit per connection */
} hr_edge_config_t;

extern const hr_option_t hr_edge_options[];
extern const size_t hr_edge_options_count;

/* Publish-latency histogram bucket upper bounds, ms. */
#define HR_LATENCY_BUCKETS 12
extern const double hr_latency_bounds_ms[HR_LATENCY_BUCKETS];

typedef enum {
    HR_TRANSPORT_SSE = 0,
    HR_TRANSPORT_POLL,
    HR_TRANSPORT_STREAM,
    HR_TRANSPORT_WS,
    HR_TRANSPORT_COUNT
} hr_transport_id_t;

/* "sse", "poll", "stream", "ws": metric labels, by hr_transport_id_t. */
extern const char *const hr_transport_names[HR_TRANSPORT_COUNT];

typedef struct {
    uint64_t connections[HR_TRANSPORT_COUNT]; /* open subscribers, by transport (gauge) */
    uint64_t deliveries[HR_TRANSPORT_COUNT];  /* messages handed to clients */
    uint64_t slow_disconnects;                /* clients cut off for a full queue */
    uint64_t resets_retention, resets_epoch, resets_invalid_cursor;
    uint64_t backfills;                               /* topic gaps filled from a broker */
    uint64_t catchups;                                /* subscriber history fetches */
    uint64_t live_messages;                           /* received from brokers' PUB sockets */
    uint64_t publishes, publish_errors;               /* HTTP publish requests */
    uint64_t messages_in;                             /* messages published through this edge */
    uint64_t latency_buckets[HR_LATENCY_BUCKETS + 1]; /* publish commit latency, +Inf last */
    double latency_sum_ms;
    uint64_t http_requests;
    uint64_t polls_held;         /* long polls waiting for a message (gauge) */
    uint64_t ws_connections;     /* open WebSocket connections (gauge) */
    uint64_t ws_frames_in;       /* text messages received */
    uint64_t ws_publishes;       /* messages published over WebSocket, sent to a broker */
    uint64_t ws_publish_errors;  /* of those, not committed (answered with an error) */
    uint64_t ws_protocol_errors; /* connections closed for a protocol error or binary frame */
    uint64_t ws_ping_timeouts;   /* connections closed for an unanswered ping */
} hr_edge_metrics_t;

typedef struct hr_registry hr_registry_t;

/* The last StatsReply figures of one broker, for /metrics (an edge is the place Prometheus
 * scrapes; brokers speak only ZeroMQ). */
typedef struct {
    bool known;                  /* a reply has arrived */
    uint64_t map_size, map_used; /* bytes */
    uint64_t topics, messages_appended, messages_trimmed;
} hr_broker_stats_t;

typedef struct hr_edge {
    uv_loop_t *loop;
    hr_edge_config_t config;
    hr_http_server_t *http;
    hr_brokers_t *brokers;
    hr_registry_t *registry;
    hr_edge_metrics_t metrics;
    bool draining;                   /* SIGTERM received: /readyz is false */
    hr_broker_stats_t *broker_stats; /* by broker index; n_broker_stats entries */
    uint32_t n_broker_stats;
    uint64_t started_ms;
} hr_edge_t;

/* The HTTP handler: routes a request to the API or a transport (api.c). */
void hr_edge_handle_request(void *edge, hr_http_conn_t *conn, const hr_http_request_t *req);

/* Ask every broker that is up for its stats (a StatsRequest each); the replies refresh
 * edge->broker_stats. Called on a timer. */
void hr_edge_poll_broker_stats(hr_edge_t *edge);

/* Record one publish's commit latency. */
void hr_edge_observe_latency(hr_edge_t *edge, double ms);

/* Milliseconds on the monotonic clock. */
uint64_t hr_edge_now_ms(void);

#endif
