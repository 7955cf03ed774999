/*
 * hr_broker — the broker role (DESIGN.md §Roles): owns an LMDB topic log (storage/), answers
 * requests on a ZeroMQ ROUTER (publish, fetch, hello, heartbeat, stats; proto/herald.proto) and
 * fans every committed message out on a PUB socket as [topic][Message].
 *
 * Group commit (DESIGN.md invariant 2): the loop drains every request that has arrived, commits
 * all their messages in one LMDB write transaction, and only then sends the replies and the live
 * messages. With sync on (the default) a reply means the messages are on disk.
 *
 * Single-threaded: every function below runs on the thread that created the broker, except
 * hr_broker_stop, which is async-signal-safe.
 */
#ifndef HR_BROKER_H
#define HR_BROKER_H

#include "hr_options.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *listen;         /* ROUTER bind endpoint */
    const char *live;           /* PUB bind endpoint */
    const char *data_dir;       /* LMDB environment directory */
    const char *cluster;        /* comma-separated ordered broker list; "" = just this broker */
    const char *advertise;      /* host peers dial; "" = the host in --listen */
    const char *log_level;      /* debug, info, warn, error */
    int64_t node_id;            /* index of this broker in the cluster list */
    int64_t partitions;         /* P */
    int64_t map_size;           /* bytes */
    bool sync;                  /* fsync each group commit */
    int64_t max_data_bytes;     /* bytes per message */
    int64_t max_request_bytes;  /* bytes per request frame */
    int64_t max_batch;          /* messages per group commit */
    int64_t retention_messages; /* per topic; 0 = unlimited */
    int64_t retention_age;      /* seconds; 0 = unlimited */
    int64_t dedupe_window;      /* seconds */
    int64_t trim_interval;      /* ms */
    int64_t heartbeat_interval; /* ms; also between Hellos to peer brokers */
    int64_t forward_timeout;    /* ms, a forwarded publish's wait for the owner */
    bool renew_epochs;          /* new epochs for every topic at start (after a restore) */
    int64_t hwm;                /* ZeroMQ high-water mark, messages, both sockets */
    int64_t fetch_limit;        /* default messages per fetch reply */
    int64_t fetch_max_bytes;    /* default data bytes per fetch reply */
} hr_broker_config_t;

/* The option table behind hr_broker_config_t (flags, HERALD_* variables, --help, docs). */
extern const hr_option_t hr_broker_options[];
extern const size_t hr_broker_options_count;

typedef struct hr_broker hr_broker_t;

/*
 * Open the store and bind both sockets. On failure returns a negative error and writes a message
 * for the operator into `err` (`errlen` bytes): a data directory that cannot be used, a file that
 * is not an LMDB environment, an endpoint that cannot be bound, an inconsistent cluster list.
 */
int hr_broker_new(hr_broker_t **out, const hr_broker_config_t *config, char *err, size_t errlen);

/* Serve until hr_broker_stop is called; then finish the in-flight commit and reply to it.
 * Returns 0 on a clean stop. */
int hr_broker_run(hr_broker_t *broker);

/* Ask a running broker to stop. Async-signal-safe. */
void hr_broker_stop(hr_broker_t *broker);

/* Close sockets and the store; *broker becomes NULL. */
void hr_broker_destroy(hr_broker_t **broker);

#endif
