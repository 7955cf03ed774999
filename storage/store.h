/*
 * hr_store — the LMDB topic log. Owns one LMDB environment (a directory holding data.mdb and
 * lock.mdb) with four named databases:
 *
 *   meta      "format" -> u32 format version, "next_topic_id" -> u64
 *   topics    topic name -> hr_store_topic_t record (topic id, epoch, last seq, first retained
 *             seq, creation time)
 *   messages  big-endian (topic id u64, seq u64) -> message record, so a range read is one
 *             cursor walk
 *   dedupe    big-endian topic id u64 + idempotency key -> (seq u64, time_ms u64), plus an
 *             expiry index under the never-assigned topic id 0: (0 u64, time_ms u64, topic id
 *             u64, key) -> empty, so trimming expired keys walks only the expired ones
 *
 * store.c documents the exact byte layout of every record.
 *
 * A library: no logging, no globals, no threads of its own. One hr_store_t may be used from one
 * thread at a time (the broker's loop); read functions may run concurrently with one writer only
 * if the caller serialises calls on the same handle. Every function returns 0 or a negative
 * error: Herald's HR_E_* codes (hr_error.h) or -errno.
 *
 * Invariants (DESIGN.md invariant 1): per topic, seq = 1, 2, 3, ... assigned at commit, never
 * reused — not after a restart, a crash or trimming (the topic record keeps last_seq even when
 * every message is trimmed). Each topic log has a random nonzero 64-bit epoch fixed at creation.
 *
 * Durability (invariant 2): hr_store_append returns only after the write transaction has
 * committed; with opts.sync (the default) LMDB has also synced it to disk.
 *
 * Space: opts.map_size limits the pages IN USE (pages holding data; not free pages). LMDB's map,
 * and so the data file at most, is map_size plus headroom: 5% of it, at least 1 MiB, rounded up
 * to 64 KiB. Appends stop at the limit; the headroom is what LMDB, being copy-on-write, needs
 * for trimming (even deleting takes free pages) and for free pages it cannot reuse yet. So a
 * full store recovers by itself once retention trims something: hr_store_trim finds room to
 * delete in a full store, and what it frees is reusable by the very next append.
 */
#ifndef HR_STORE_H
#define HR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HR_STORE_MAX_TOPIC    255 /* bytes */
#define HR_STORE_MAX_EVENT    64  /* bytes */
#define HR_STORE_MAX_CTYPE    255 /* bytes */
#define HR_STORE_MAX_IDEM_KEY 255 /* bytes */

typedef struct hr_store hr_store_t;

typedef struct {
    uint64_t map_size;         /* bytes of pages in use appends may fill; default 1 GiB. The
                                  data file may grow to this plus headroom (see "Space") */
    bool sync;                 /* true: fsync every commit (default); false: MDB_NOSYNC, a crash
                                  may lose the last commits (but never corrupts or reuses seqs
                                  that survived) */
    uint64_t dedupe_window_ms; /* idempotency keys are remembered this long; default 300000;
                                  0 disables deduplication (keys are ignored) */
    unsigned max_readers;      /* LMDB reader slots; default 126 */
} hr_store_options_t;

/* Fill `opts` with the defaults above. (hr_store_open also reads a map_size or max_readers of 0
 * as the default.) */
void hr_store_options_default(hr_store_options_t *opts);

/*
 * Open the environment in directory `dir` (created if missing, mode 0700) or create a new one.
 * `opts` may be NULL for defaults. On success *out owns the handle; close with hr_store_close.
 * Errors: -EACCES/-EROFS/-ENOTDIR... when the directory cannot be used; HR_E_CORRUPT when it holds
 * a file that is not an LMDB environment or an LMDB environment Herald did not create (wrong
 * format version); HR_E_STORAGE for other LMDB failures.
 * LMDB's map is map_size plus headroom (see "Space" above). When the data already stored needs a
 * larger map than that, LMDB raises the map to it, and the limit becomes the largest whose map
 * fits (never less than map_size); the same happens when another process grows the map while
 * this handle is open. A larger map_size than before grows the map: a full store also recovers
 * through a restart with a bigger --map-size.
 */
int hr_store_open(hr_store_t **out, const char *dir, const hr_store_options_t *opts);

/* Close and free; *store becomes NULL. NULL or *store == NULL is a no-op. */
void hr_store_close(hr_store_t **store);

/* One message to append. All pointers are borrowed for the duration of the call. */
typedef struct {
    const char *topic;
    size_t topic_len; /* bytes, 1..255, validated with hr_topic_validate */
    const char *event;
    size_t event_len; /* bytes, 0..64 */
    const char *content_type;
    size_t content_type_len; /* bytes, 0..255 */
    const uint8_t *data;
    size_t data_len; /* bytes; the caller enforces the data limit */
    const char *idempotency_key;
    size_t idempotency_key_len; /* bytes, 0 (none)..255 */
    uint64_t time_ms;           /* publish time, ms since the Unix epoch */
} hr_store_msg_t;

/* What append assigned to one message. */
typedef struct {
    uint64_t seq;
    uint64_t epoch;
    uint64_t time_ms; /* the stored publish time (the original's for a duplicate) */
    bool duplicate;   /* the idempotency key matched within the window: nothing was appended */
} hr_store_result_t;

/*
 * Append `n` messages, possibly spanning many topics, in ONE write transaction (group commit).
 * `results[i]` receives message i's seq and epoch. Messages of one topic get consecutive seqs
 * in array order. Topics are created on first append with a fresh random epoch.
 * A key repeated within the batch or within the dedupe window yields the original seq with
 * duplicate = true. "Within the window" means the message's time_ms is before the original's
 * time_ms + dedupe_window_ms.
 * Atomic: on any error nothing of the batch is stored and the log is exactly as before, and
 * `results` holds nothing meaningful. The whole batch is validated before anything is written.
 * Errors: HR_E_INVALID_TOPIC, HR_E_INVALID_REQUEST (event, content type or key too long; data
 * of 4 GiB or more), HR_E_STORAGE_FULL (the batch would take the pages in use past map_size; or,
 * rarely, LMDB's MDB_MAP_FULL: no reusable free page is left even in the headroom, say because
 * another process's read transaction pins the free pages or no run of free pages is long
 * enough for a large message), HR_E_STORAGE, HR_E_CORRUPT (a stored record is not what Herald
 * wrote), -errno (getrandom(2) failed).
 */
int hr_store_append(hr_store_t *store, const hr_store_msg_t *msgs, size_t n,
                    hr_store_result_t *results);

/* A topic's log state. */
typedef struct {
    uint64_t topic_id;   /* internal key, assigned at creation */
    uint64_t epoch;      /* random, nonzero */
    uint64_t last_seq;   /* newest seq ever assigned; 0 = none yet */
    uint64_t first_seq;  /* oldest retained seq; last_seq + 1 when nothing is retained */
    uint64_t created_ms; /* ms since the Unix epoch */
} hr_store_topic_t;

/* Look a topic up. Errors: HR_E_NOT_FOUND (never published to), HR_E_INVALID_TOPIC. */
int hr_store_topic_info(hr_store_t *store, const char *topic, size_t topic_len,
                        hr_store_topic_t *info);

/* One stored message, as handed to a read callback. The pointers point into LMDB's map and are
 * valid only until the callback returns: copy what must outlive it. */
typedef struct {
    uint64_t seq;
    uint64_t time_ms;
    const char *event;
    size_t event_len;
    const char *content_type;
    size_t content_type_len;
    const uint8_t *data;
    size_t data_len;
} hr_store_entry_t;

/* Called once per message in seq order; return 0 to continue, nonzero to stop early (the value
 * is not an error). It must not call hr_store functions on the same handle (the read holds the
 * handle's read transaction). */
typedef int (*hr_store_read_cb)(void *ctx, const hr_store_entry_t *entry);

/*
 * Read messages of `topic` with seq > after_seq, oldest first, in one read transaction: at most
 * `max_count` messages (0 = no limit) and, after the first message, no more than `max_bytes` of
 * data in total (0 = no limit; the first message is always delivered so a large message cannot
 * block a reader). When after_seq < first_seq - 1 the walk starts at first_seq (the caller sees
 * the gap through info->first_seq and signals a reset). after_seq >= last_seq yields nothing.
 * `info` (may be NULL) receives the topic state as of the read transaction.
 * Errors: HR_E_NOT_FOUND (no such topic; *info is zeroed), HR_E_INVALID_TOPIC, HR_E_CORRUPT,
 * HR_E_STORAGE.
 */
int hr_store_read(hr_store_t *store, const char *topic, size_t topic_len, uint64_t after_seq,
                  size_t max_count, size_t max_bytes, hr_store_read_cb cb, void *ctx,
                  hr_store_topic_t *info);

/* Retention policy for hr_store_trim. A zero field means "no limit" for that dimension. */
typedef struct {
    uint64_t max_messages; /* keep at most this many newest messages per topic */
    uint64_t max_age_ms;   /* drop messages older than now_ms - max_age_ms */
} hr_store_retention_t;

/*
 * Trim messages outside `policy` and expired idempotency keys (older than the dedupe window),
 * deleting at most `budget` records (0 = no limit) in one write transaction, so a caller can
 * spread the work. Updates each topic's first_seq; never lowers last_seq. *trimmed (may be NULL)
 * receives the number of messages deleted; *more (may be NULL) is set when the budget ran out
 * before the work was done. Errors: HR_E_STORAGE_FULL (LMDB found no free page even in the
 * headroom, even for deleting a single record), HR_E_STORAGE, HR_E_CORRUPT. `policy` may be NULL
 * (only keys are trimmed).
 *
 * Trimming works in a full store: the limit applies only to appends (see "Space"). After a
 * transaction that deleted anything, a second tiny write transaction commits (it bumps a
 * counter in the meta database): LMDB reuses no page freed by the latest commit, so without it
 * the next append could not use the space just freed. Should LMDB run out of pages during a
 * trim all the same (the commit records every page it freed in one record, which can need a
 * run of consecutive free pages), the transaction is aborted and retried deleting half as many
 * records, down to one; *more then tells the caller to call again for the rest.
 *
 * Details: records are messages and idempotency keys, one each. Retention removes a prefix of
 * each log: by age, the walk stops at the first message whose time_ms is not older than
 * now_ms - max_age_ms. Messages go before keys. A call that stopped on its budget remembers the
 * topic it stopped at (in the handle, not on disk) and the next call resumes there; a call that
 * reaches the last topic starts the next one over from the first. Nothing is committed (or
 * synced) when there was nothing to delete, except the tiny transaction above when one is still
 * owed: its earlier attempt failed, or LMDB refused an append with MDB_MAP_FULL since.
 */
int hr_store_trim(hr_store_t *store, const hr_store_retention_t *policy, uint64_t now_ms,
                  size_t budget, uint64_t *trimmed, bool *more);

/* The cluster a log belongs to (DESIGN.md §Cluster): its partition count P, the number of
 * brokers N and the node id of the broker that owns it. Fixed when the cluster is created. */
typedef struct {
    uint32_t partitions;
    uint32_t brokers;
    uint32_t node_id;
} hr_store_identity_t;

/*
 * Record `want` as the log's cluster identity if it has none yet (a new log, or one created
 * before identities were recorded), or compare it with the recorded one. Returns 0 when they
 * agree (or `want` was just recorded, durably), HR_E_MISCONFIGURED when they differ, with
 * *stored set to the recorded identity either way; HR_E_STORAGE / HR_E_CORRUPT on failure.
 */
int hr_store_identity(hr_store_t *store, const hr_store_identity_t *want,
                      hr_store_identity_t *stored);

/*
 * Give every topic log a new random epoch, keeping its messages and seqs, in one durable
 * transaction. For a log restored from a backup: positions handed out after the backup was
 * taken name seqs the restored log may assign again to other messages; under a new epoch such
 * a position is answered with a reset (reason epoch) instead of being misapplied. *renewed (may
 * be NULL) gets the number of topics. Returns 0, HR_E_STORAGE or HR_E_CORRUPT; on failure
 * nothing changed.
 */
int hr_store_renew_epochs(hr_store_t *store, uint64_t *renewed);

/* Whole-store figures. */
typedef struct {
    uint64_t topics;   /* number of topic logs */
    uint64_t map_size; /* bytes: the limit, opts.map_size (or more, see hr_store_open); LMDB's
                          map is larger by the headroom */
    uint64_t map_used; /* bytes: pages in use, i.e. holding data: LMDB's (last page number + 1)
                          minus its free pages and the pages listing them, times the page size.
                          Appends keep it <= map_size */
} hr_store_stats_t;

int hr_store_stats(hr_store_t *store, hr_store_stats_t *stats);

#endif
