#include "store.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "topic.h"

#include <assert.h>
#include <errno.h>
#include <lmdb.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

/*
 * On-disk layout (format 1). Keys that must sort are big-endian; values are little-endian,
 * encoded byte by byte so the files do not depend on the host's struct layout.
 *
 * meta      "format"        -> u32 LE  HR_STORE_FORMAT
 *           "next_topic_id" -> u64 LE  id the next new topic gets (ids start at 1, never reused)
 *           "reclaims"      -> u64 LE  number of reclaim commits (see store_reclaim); absent
 *                                      until the first, and read by nothing else
 *           "cluster"       -> 3 x u32 LE  partitions, brokers, node id: the cluster identity the
 *                                      log was created for (hr_store_identity); absent until
 *                                      the first broker start
 *
 * topics    topic name (1..255 bytes) -> topic record, 40 bytes:
 *             0  u64 LE topic_id
 *             8  u64 LE epoch
 *            16  u64 LE last_seq
 *            24  u64 LE first_seq
 *            32  u64 LE created_ms
 *
 * messages  u64 BE topic_id, u64 BE seq -> message record:
 *             0  u64 LE time_ms
 *             8  u8     event_len (0..64)
 *             9  u8     content_type_len (0..255)
 *            10  event bytes, content type bytes, data bytes (the rest of the value)
 *
 * dedupe    u64 BE topic_id (>= 1), key bytes -> u64 LE seq, u64 LE time_ms
 *           u64 BE 0, u64 BE time_ms, u64 BE topic_id, key bytes -> empty
 *             The second form is an expiry index: topic id 0 is never assigned, so these
 *             entries sort first, oldest first, and trimming expired keys costs a walk over the
 *             expired entries only instead of a scan of every key.
 */
#define HR_STORE_FORMAT 1u
#define TOPIC_REC_SIZE  40
#define MSG_KEY_SIZE    16
#define MSG_HDR_SIZE    10
#define DEDUPE_VAL_SIZE 16
#define DEDUPE_KEY_MAX  (8 + HR_STORE_MAX_IDEM_KEY)
#define EXPIRY_KEY_MAX  (24 + HR_STORE_MAX_IDEM_KEY)

#define DEFAULT_MAP_SIZE         (UINT64_C(1) << 30)
#define DEFAULT_DEDUPE_WINDOW_MS UINT64_C(300000)
#define DEFAULT_MAX_READERS      126u

/*
 * Space accounting: why the LMDB map is larger than opts.map_size.
 *
 * LMDB is copy-on-write: every transaction, including one that only deletes, needs free pages
 * for the new copies of the pages it touches and for the free-page list it writes at commit. A
 * map filled to the last page therefore cannot even be trimmed (MDB_MAP_FULL on delete), and
 * the store would stay full forever, restarts included. So opts.map_size is the store's limit
 * on DATA, and LMDB's map is that limit plus headroom (map_for_limit below):
 *
 *   - An append is refused with HR_E_STORAGE_FULL (transaction aborted, log unchanged) when,
 *     after the batch, the pages in use would exceed the limit. "Pages in use" is
 *     store_pages_in_use: the two meta pages plus every branch, leaf and overflow page of the
 *     main database and Herald's four, as the write transaction sees them. That is the same
 *     number as LMDB's (last page number + 1) minus the free pages its free list records
 *     minus the pages of that list, but it costs five O(1) mdb_stat calls instead of a walk
 *     over the free list, so every append checks it, and it includes the batch's own pages.
 *   - Trimming is never refused by the limit, and it only lowers the pages in use. So at
 *     least the headroom's worth of the map is always free pages or not yet part of the file,
 *     and a trim finds the pages it needs even when appends are refused. (A delete copies
 *     only the pages on its path, and pages a transaction copied and then emptied are reused
 *     within it.) Should LMDB still run out, hr_store_trim retries with smaller transactions
 *     (see there).
 *   - After a trim, a second tiny commit makes the freed pages reusable by the very next
 *     append (store_reclaim).
 *   - LMDB's own MDB_MAP_FULL still maps to HR_E_STORAGE_FULL: it remains possible when the
 *     free pages beyond the limit are ones LMDB cannot reuse yet (another process's long read
 *     transaction pins them) or cannot use for a large record (no run of consecutive free
 *     pages long enough for its overflow pages). A long-running store with records of mixed
 *     sizes does spread its free pages over the headroom, so the data file grows to the full
 *     map, limit plus headroom, in time.
 *
 * The headroom is 5% of the limit, at least 1 MiB, rounded up to 64 KiB (a multiple of every
 * page size LMDB supports). The free list LMDB writes at commit takes 8 bytes per free page,
 * well under 1% of the pages it describes, so 5% leaves a wide margin.
 */
#define HEADROOM_MIN     (UINT64_C(1) << 20)
#define HEADROOM_DIVISOR 20
#define HEADROOM_ALIGN   (UINT64_C(1) << 16)
#define META_PAGES       2 /* LMDB's two meta pages, pages 0 and 1 */

/* One topic touched by the batch being appended: a slot of an open-addressing hash table that
 * lives in hr_store_t and is reused across batches. A slot is in use when its gen equals the
 * table's current generation, so starting a batch costs an increment rather than a memset. */
typedef struct {
    uint32_t gen;
    bool dirty;       /* rec differs from the stored record and is written before commit */
    const char *name; /* borrowed from the caller's hr_store_msg_t */
    size_t name_len;
    uint64_t hash;
    hr_store_topic_t rec;
} hr_store_slot_t;

struct hr_store {
    MDB_env *env;
    MDB_dbi dbi_main; /* LMDB's main database: it holds the four below */
    MDB_dbi dbi_meta;
    MDB_dbi dbi_topics;
    MDB_dbi dbi_messages;
    MDB_dbi dbi_dedupe;
    hr_store_options_t opts;

    /* Space accounting (see the comment at HEADROOM_MIN). limit is opts.map_size, or more when
     * LMDB's map turned out larger than the one requested (map_adopt). */
    uint64_t limit;       /* bytes of pages in use appends may not exceed */
    uint64_t limit_pages; /* limit / psize */
    unsigned psize;       /* LMDB page size */
    bool reclaim_pending; /* a reclaim commit is owed (see store_reclaim) */

    /* A read transaction and cursor kept reset between reads (mdb_txn_renew is much cheaper than
     * mdb_txn_begin). NULL until the first read. */
    MDB_txn *rtxn;
    MDB_cursor *rcursor;

    /* The append batch's topic cache (see hr_store_slot_t). */
    hr_store_slot_t *slots;
    size_t slot_cap; /* power of two, or 0 */
    uint32_t *used;  /* indexes of the slots in use, in first-touch order */
    size_t used_cap;
    size_t used_n;
    uint32_t gen;

    /* Where the next hr_store_trim resumes after one stopped on its budget. */
    uint8_t trim_from[HR_STORE_MAX_TOPIC];
    size_t trim_from_len; /* 0: start at the first topic */
};

/* ---- encoding ---------------------------------------------------------------------------- */

static void be64_put(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t be64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void le64_put(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t le64_get(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void le32_put(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint32_t le32_get(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void topic_encode(uint8_t *p, const hr_store_topic_t *t)
{
    le64_put(p, t->topic_id);
    le64_put(p + 8, t->epoch);
    le64_put(p + 16, t->last_seq);
    le64_put(p + 24, t->first_seq);
    le64_put(p + 32, t->created_ms);
}

static int topic_decode(const MDB_val *v, hr_store_topic_t *t)
{
    const uint8_t *p = v->mv_data;

    if (v->mv_size != TOPIC_REC_SIZE)
        return HR_E_CORRUPT;
    t->topic_id = le64_get(p);
    t->epoch = le64_get(p + 8);
    t->last_seq = le64_get(p + 16);
    t->first_seq = le64_get(p + 24);
    t->created_ms = le64_get(p + 32);
    if (t->topic_id == 0 || t->first_seq == 0 || t->first_seq > t->last_seq + 1)
        return HR_E_CORRUPT;
    return 0;
}

static void msg_key(uint8_t *k, uint64_t topic_id, uint64_t seq)
{
    be64_put(k, topic_id);
    be64_put(k + 8, seq);
}

static int msg_decode(const MDB_val *k, const MDB_val *v, hr_store_entry_t *e)
{
    const uint8_t *p = v->mv_data;
    size_t elen, clen;

    if (k->mv_size != MSG_KEY_SIZE || v->mv_size < MSG_HDR_SIZE)
        return HR_E_CORRUPT;
    elen = p[8];
    clen = p[9];
    if (elen > HR_STORE_MAX_EVENT || MSG_HDR_SIZE + elen + clen > v->mv_size)
        return HR_E_CORRUPT;
    e->seq = be64_get((const uint8_t *)k->mv_data + 8);
    e->time_ms = le64_get(p);
    e->event = (const char *)p + MSG_HDR_SIZE;
    e->event_len = elen;
    e->content_type = (const char *)p + MSG_HDR_SIZE + elen;
    e->content_type_len = clen;
    e->data = p + MSG_HDR_SIZE + elen + clen;
    e->data_len = v->mv_size - MSG_HDR_SIZE - elen - clen;
    return 0;
}

/* ---- LMDB plumbing ----------------------------------------------------------------------- */

/* Map an LMDB result inside a transaction to Herald's errors (store.h: the log is unchanged). */
static int store_err(int rc)
{
    switch (rc) {
    case MDB_SUCCESS:
        return 0;
    case MDB_MAP_FULL:
        return HR_E_STORAGE_FULL;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
    case MDB_VERSION_MISMATCH:
    case MDB_INCOMPATIBLE:
        return HR_E_CORRUPT;
    default:
        return HR_E_STORAGE;
    }
}

static void map_adopt(hr_store_t *st);

/* Begin a transaction. MDB_MAP_RESIZED means another process grew the map past ours: adopt its
 * size (mdb_env_set_mapsize with 0, as lmdb.h prescribes; map_adopt follows with the limit) and
 * try once more. */
static int store_txn_begin(hr_store_t *st, unsigned flags, MDB_txn **txn)
{
    int rc = mdb_txn_begin(st->env, NULL, flags, txn);
    if (rc == MDB_MAP_RESIZED) {
        rc = mdb_env_set_mapsize(st->env, 0);
        if (rc == 0) {
            map_adopt(st);
            rc = mdb_txn_begin(st->env, NULL, flags, txn);
        }
    }
    return rc;
}

/* Start the cached read transaction (and make rcursor usable on messages). */
static int store_read_begin(hr_store_t *st, MDB_txn **txn)
{
    int rc;

    if (st->rtxn != NULL) {
        rc = mdb_txn_renew(st->rtxn);
        if (rc == 0) {
            *txn = st->rtxn;
            return 0;
        }
        mdb_txn_abort(st->rtxn);
        st->rtxn = NULL;
    }
    rc = store_txn_begin(st, MDB_RDONLY, &st->rtxn);
    if (rc != 0) {
        st->rtxn = NULL;
        return store_err(rc);
    }
    *txn = st->rtxn;
    return 0;
}

/* Reset, not just left alone: a reset read transaction keeps its reader slot (so the next
 * read is a cheap renew) but holds no snapshot, so it never stops LMDB from reusing the pages a
 * trim freed. Every path out of a read comes through here. */
static void store_read_end(hr_store_t *st)
{
    mdb_txn_reset(st->rtxn);
}

static int store_read_cursor(hr_store_t *st, MDB_txn *txn, MDB_cursor **cur)
{
    int rc;

    if (st->rcursor != NULL) {
        rc = mdb_cursor_renew(txn, st->rcursor);
        if (rc == 0) {
            *cur = st->rcursor;
            return 0;
        }
        mdb_cursor_close(st->rcursor);
        st->rcursor = NULL;
    }
    rc = mdb_cursor_open(txn, st->dbi_messages, &st->rcursor);
    if (rc != 0) {
        st->rcursor = NULL;
        return store_err(rc);
    }
    *cur = st->rcursor;
    return 0;
}

static int random_epoch(uint64_t *out)
{
    uint64_t v = 0;

    while (v == 0) {
        ssize_t n = getrandom(&v, sizeof v, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if ((size_t)n != sizeof v)
            v = 0;
    }
    *out = v;
    return 0;
}

/* ---- space accounting (see the comment at HEADROOM_MIN) ----------------------------------- */

static uint64_t headroom_for(uint64_t limit)
{
    uint64_t h = limit / HEADROOM_DIVISOR;

    if (h < HEADROOM_MIN)
        h = HEADROOM_MIN;
    return (h + HEADROOM_ALIGN - 1) & ~(HEADROOM_ALIGN - 1);
}

/* The LMDB map for a limit: limit + headroom, saturating (mmap then fails cleanly). */
static uint64_t map_for_limit(uint64_t limit)
{
    uint64_t h = headroom_for(limit);
    return limit > UINT64_MAX - h ? UINT64_MAX : limit + h;
}

/* The inverse: the largest limit whose map fits in `map` bytes (0 if none does). map_for_limit
 * is strictly increasing, so a binary search finds it. */
static uint64_t limit_for_map(uint64_t map)
{
    uint64_t lo = 0, hi = map; /* the answer is in [lo, hi], or there is none */

    if (map_for_limit(0) > map)
        return 0;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2;
        if (map_for_limit(mid) <= map)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Follow LMDB's actual map size. It exceeds the one requested when the data file was already
 * larger (LMDB never maps less than the data), or after MDB_MAP_RESIZED, when another process
 * grew the map: then the limit becomes the one that map was made for, never less than
 * opts.map_size. */
static void map_adopt(hr_store_t *st)
{
    MDB_envinfo ei;
    uint64_t limit = st->opts.map_size;

    if (mdb_env_info(st->env, &ei) == 0 && limit_for_map(ei.me_mapsize) > limit)
        limit = limit_for_map(ei.me_mapsize);
    st->limit = limit;
    st->limit_pages = limit / st->psize;
}

/* The pages in use as `txn` sees them: LMDB's two meta pages plus every page of the main
 * database and Herald's four. mdb_stat reads counters LMDB keeps in each database record, so
 * this is cheap, and inside a write transaction it includes the pages the transaction added. */
static int store_pages_in_use(hr_store_t *st, MDB_txn *txn, uint64_t *pages)
{
    const MDB_dbi dbis[] = {st->dbi_main, st->dbi_meta, st->dbi_topics, st->dbi_messages,
                            st->dbi_dedupe};
    uint64_t n = META_PAGES;

    for (size_t i = 0; i < sizeof dbis / sizeof dbis[0]; i++) {
        MDB_stat ms;
        int rc = mdb_stat(txn, dbis[i], &ms);
        if (rc != 0)
            return store_err(rc);
        n += (uint64_t)ms.ms_branch_pages + ms.ms_leaf_pages + ms.ms_overflow_pages;
    }
    *pages = n;
    return 0;
}

/*
 * LMDB reuses a free page only once no snapshot can still see it. It keeps the previous commit
 * readable, so the pages freed by the LATEST commit are never reusable by the very next write
 * transaction: after a trim, the first append would find none of the freed pages and, in a
 * full store, fail with MDB_MAP_FULL. (It would succeed only after some other commit.) So after
 * a trim that deleted anything this commits one more tiny transaction, bumping meta "reclaims";
 * from then on the trim's pages are reusable by the next append. It costs one small commit (and
 * fsync, with opts.sync) per trim that deleted something.
 *
 * Best effort: the trim has committed either way. On failure reclaim_pending stays set and the
 * next hr_store_trim tries again even if it has nothing to delete; an append that LMDB refuses
 * with MDB_MAP_FULL sets it too (the latest commit may have been a trim whose reclaim never
 * happened, say before a crash).
 */
static void store_reclaim(hr_store_t *st)
{
    MDB_txn *txn;
    MDB_val k = {8, "reclaims"}, v;
    uint8_t buf[8];
    uint64_t n = 0;
    int rc;

    st->reclaim_pending = true;
    if (store_txn_begin(st, 0, &txn) != 0)
        return;
    rc = mdb_get(txn, st->dbi_meta, &k, &v);
    if (rc == 0 && v.mv_size == 8)
        n = le64_get(v.mv_data);
    else if (rc != 0 && rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return;
    }
    le64_put(buf, n + 1);
    v = (MDB_val){8, buf};
    rc = mdb_put(txn, st->dbi_meta, &k, &v, 0);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return;
    }
    if (mdb_txn_commit(txn) == 0)
        st->reclaim_pending = false;
}

/* ---- cluster identity --------------------------------------------------------------------- */

int hr_store_identity(hr_store_t *st, const hr_store_identity_t *want, hr_store_identity_t *stored)
{
    MDB_txn *txn;
    MDB_val k = {7, "cluster"}, v;
    uint8_t buf[12];
    int rc = store_txn_begin(st, 0, &txn);
    if (rc != 0)
        return store_err(rc);
    rc = mdb_get(txn, st->dbi_meta, &k, &v);
    if (rc == 0) {
        mdb_txn_abort(txn);
        if (v.mv_size != sizeof buf)
            return HR_E_CORRUPT;
        stored->partitions = le32_get(v.mv_data);
        stored->brokers = le32_get((const uint8_t *)v.mv_data + 4);
        stored->node_id = le32_get((const uint8_t *)v.mv_data + 8);
        return stored->partitions == want->partitions && stored->brokers == want->brokers &&
                       stored->node_id == want->node_id
                   ? 0
                   : HR_E_MISCONFIGURED;
    }
    if (rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return store_err(rc);
    }
    le32_put(buf, want->partitions);
    le32_put(buf + 4, want->brokers);
    le32_put(buf + 8, want->node_id);
    v = (MDB_val){sizeof buf, buf};
    rc = mdb_put(txn, st->dbi_meta, &k, &v, 0);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return store_err(rc);
    }
    *stored = *want;
    return store_err(mdb_txn_commit(txn));
}

/* ---- epochs ------------------------------------------------------------------------------- */

int hr_store_renew_epochs(hr_store_t *st, uint64_t *renewed)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    uint8_t buf[TOPIC_REC_SIZE];
    uint64_t n = 0;
    int rc = store_txn_begin(st, 0, &txn);
    if (rc != 0)
        return store_err(rc);
    rc = mdb_cursor_open(txn, st->dbi_topics, &cur);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return store_err(rc);
    }
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        hr_store_topic_t t;
        if ((rc = topic_decode(&v, &t)) != 0)
            break;
        uint64_t old = t.epoch;
        do {
            if ((rc = random_epoch(&t.epoch)) != 0)
                break;
        } while (t.epoch == old);
        if (rc != 0)
            break;
        topic_encode(buf, &t);
        v = (MDB_val){sizeof buf, buf};
        if ((rc = mdb_cursor_put(cur, &k, &v, MDB_CURRENT)) != 0) {
            rc = store_err(rc);
            break;
        }
        n++;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return rc;
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        return store_err(rc);
    if (renewed != NULL)
        *renewed = n;
    return 0;
}

/* ---- open / close ------------------------------------------------------------------------ */

void hr_store_options_default(hr_store_options_t *opts)
{
    opts->map_size = DEFAULT_MAP_SIZE;
    opts->sync = true;
    opts->dedupe_window_ms = DEFAULT_DEDUPE_WINDOW_MS;
    opts->max_readers = DEFAULT_MAX_READERS;
}

static int dbi_open_existing(MDB_txn *txn, const char *name, MDB_dbi *dbi)
{
    int rc = mdb_dbi_open(txn, name, 0, dbi);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE)
        return HR_E_CORRUPT; /* not a database Herald created */
    return store_err(rc);
}

/* Open (or, in an empty environment, create) the four databases and check the format. */
static int store_init_dbs(hr_store_t *st)
{
    MDB_txn *txn = NULL;
    MDB_stat ms;
    MDB_val k, v;
    uint8_t buf[8];
    int rc;

    rc = store_txn_begin(st, 0, &txn);
    if (rc != 0)
        return store_err(rc);
    rc = mdb_dbi_open(txn, NULL, 0, &st->dbi_main);
    if (rc == 0)
        rc = mdb_stat(txn, st->dbi_main, &ms);
    if (rc != 0) {
        rc = store_err(rc);
        goto fail;
    }

    if (ms.ms_entries == 0) {
        /* A new environment: create everything in this one transaction. */
        if ((rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &st->dbi_meta)) != 0 ||
            (rc = mdb_dbi_open(txn, "topics", MDB_CREATE, &st->dbi_topics)) != 0 ||
            (rc = mdb_dbi_open(txn, "messages", MDB_CREATE, &st->dbi_messages)) != 0 ||
            (rc = mdb_dbi_open(txn, "dedupe", MDB_CREATE, &st->dbi_dedupe)) != 0) {
            rc = store_err(rc);
            goto fail;
        }
        le32_put(buf, HR_STORE_FORMAT);
        k = (MDB_val){6, "format"};
        v = (MDB_val){4, buf};
        if ((rc = mdb_put(txn, st->dbi_meta, &k, &v, 0)) != 0) {
            rc = store_err(rc);
            goto fail;
        }
        le64_put(buf, 1);
        k = (MDB_val){13, "next_topic_id"};
        v = (MDB_val){8, buf};
        if ((rc = mdb_put(txn, st->dbi_meta, &k, &v, 0)) != 0) {
            rc = store_err(rc);
            goto fail;
        }
    } else {
        if ((rc = dbi_open_existing(txn, "meta", &st->dbi_meta)) != 0)
            goto fail;
        k = (MDB_val){6, "format"};
        rc = mdb_get(txn, st->dbi_meta, &k, &v);
        if (rc == MDB_NOTFOUND ||
            (rc == 0 && (v.mv_size != 4 || le32_get(v.mv_data) != HR_STORE_FORMAT))) {
            rc = HR_E_CORRUPT;
            goto fail;
        }
        if (rc != 0) {
            rc = store_err(rc);
            goto fail;
        }
        k = (MDB_val){13, "next_topic_id"};
        rc = mdb_get(txn, st->dbi_meta, &k, &v);
        if (rc == MDB_NOTFOUND || (rc == 0 && v.mv_size != 8)) {
            rc = HR_E_CORRUPT;
            goto fail;
        }
        if (rc != 0) {
            rc = store_err(rc);
            goto fail;
        }
        if ((rc = dbi_open_existing(txn, "topics", &st->dbi_topics)) != 0 ||
            (rc = dbi_open_existing(txn, "messages", &st->dbi_messages)) != 0 ||
            (rc = dbi_open_existing(txn, "dedupe", &st->dbi_dedupe)) != 0)
            goto fail;
    }
    /* Commit even when nothing changed: DBI handles opened in an aborted txn are closed. */
    rc = mdb_txn_commit(txn);
    return store_err(rc);

fail:
    mdb_txn_abort(txn);
    return rc;
}

int hr_store_open(hr_store_t **out, const char *dir, const hr_store_options_t *opts)
{
    hr_store_t *st;
    hr_store_options_t o;
    int rc;

    assert(out != NULL && dir != NULL);
    *out = NULL;
    hr_store_options_default(&o);
    if (opts != NULL) {
        o = *opts;
        if (o.map_size == 0)
            o.map_size = DEFAULT_MAP_SIZE;
        if (o.max_readers == 0)
            o.max_readers = DEFAULT_MAX_READERS;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return -errno;

    st = hr_calloc(1, sizeof *st);
    st->opts = o;
    rc = mdb_env_create(&st->env);
    if (rc != 0) {
        st->env = NULL;
        rc = rc > 0 ? -rc : store_err(rc);
        goto fail;
    }
    /* The map is the limit plus headroom (see the comment at HEADROOM_MIN). */
    if ((rc = mdb_env_set_maxdbs(st->env, 4)) != 0 ||
        (rc = mdb_env_set_mapsize(st->env, (size_t)map_for_limit(o.map_size))) != 0 ||
        (rc = mdb_env_set_maxreaders(st->env, o.max_readers)) != 0) {
        rc = rc > 0 ? -rc : store_err(rc);
        goto fail;
    }
    /* MDB_NOTLS: reader slots belong to transactions, not threads, so the cached read
     * transaction may be used from whichever thread the caller serialises on. */
    rc = mdb_env_open(st->env, dir, MDB_NOTLS | (o.sync ? 0 : MDB_NOSYNC), 0600);
    if (rc != 0) {
        /* Positive results are errno values (the directory or its files); negative ones are
         * LMDB's: MDB_INVALID and MDB_VERSION_MISMATCH mean data.mdb is not (our) LMDB. */
        rc = rc > 0 ? -rc : store_err(rc);
        goto fail;
    }
    {
        MDB_stat es;
        rc = mdb_env_stat(st->env, &es);
        if (rc != 0) {
            rc = store_err(rc);
            goto fail;
        }
        st->psize = es.ms_psize;
    }
    map_adopt(st);
    rc = store_init_dbs(st);
    if (rc != 0)
        goto fail;
    *out = st;
    return 0;

fail:
    if (st->env != NULL)
        mdb_env_close(st->env);
    hr_free(st);
    return rc;
}

void hr_store_close(hr_store_t **store)
{
    hr_store_t *st;

    if (store == NULL || *store == NULL)
        return;
    st = *store;
    if (st->rcursor != NULL)
        mdb_cursor_close(st->rcursor);
    if (st->rtxn != NULL)
        mdb_txn_abort(st->rtxn);
    mdb_env_close(st->env);
    hr_free(st->slots);
    hr_free(st->used);
    hr_free(st);
    *store = NULL;
}

/* ---- append ------------------------------------------------------------------------------ */

static uint64_t fnv1a(const char *s, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

/* Make room in the topic cache for a batch of n messages (at most n topics) and start a new
 * generation. Amortised: after warm-up a batch allocates nothing. */
static void cache_reset(hr_store_t *st, size_t n)
{
    size_t want = 16;

    while (want < 2 * n)
        want <<= 1;
    if (st->slot_cap < want) {
        hr_free(st->slots);
        st->slots = hr_calloc(want, sizeof *st->slots);
        st->slot_cap = want;
        st->gen = 0;
    }
    if (st->used_cap < n) {
        hr_free(st->used);
        st->used = hr_malloc(n * sizeof *st->used);
        st->used_cap = n;
    }
    st->used_n = 0;
    if (++st->gen == 0) {
        memset(st->slots, 0, st->slot_cap * sizeof *st->slots);
        st->gen = 1;
    }
}

/* The batch's record of the message's topic: from the cache, from the topics database, or a new
 * topic (id from *next_topic_id, fresh epoch). */
static int cache_get(hr_store_t *st, MDB_txn *txn, const hr_store_msg_t *m, uint64_t *next_topic_id,
                     hr_store_slot_t **out)
{
    uint64_t h = fnv1a(m->topic, m->topic_len);
    size_t mask = st->slot_cap - 1;
    size_t i = (size_t)h & mask;
    hr_store_slot_t *s;
    MDB_val k, v;
    int rc;

    for (; st->slots[i].gen == st->gen; i = (i + 1) & mask) {
        s = &st->slots[i];
        if (s->hash == h && s->name_len == m->topic_len &&
            memcmp(s->name, m->topic, m->topic_len) == 0) {
            *out = s;
            return 0;
        }
    }

    s = &st->slots[i];
    k = (MDB_val){m->topic_len, (void *)m->topic};
    rc = mdb_get(txn, st->dbi_topics, &k, &v);
    if (rc == 0) {
        rc = topic_decode(&v, &s->rec);
        if (rc != 0)
            return rc;
        s->dirty = false;
    } else if (rc == MDB_NOTFOUND) {
        rc = random_epoch(&s->rec.epoch);
        if (rc != 0)
            return rc;
        s->rec.topic_id = (*next_topic_id)++;
        s->rec.last_seq = 0;
        s->rec.first_seq = 1;
        s->rec.created_ms = m->time_ms;
        s->dirty = true;
    } else {
        return store_err(rc);
    }
    s->gen = st->gen;
    s->name = m->topic;
    s->name_len = m->topic_len;
    s->hash = h;
    st->used[st->used_n++] = (uint32_t)i;
    *out = s;
    return 0;
}

static int validate_msg(const hr_store_msg_t *m)
{
    int rc;

    if (m->topic == NULL || m->topic_len > HR_STORE_MAX_TOPIC)
        return HR_E_INVALID_TOPIC;
    rc = hr_topic_validate(m->topic, m->topic_len, NULL, 0);
    if (rc != 0)
        return rc;
    if (m->event_len > HR_STORE_MAX_EVENT || m->content_type_len > HR_STORE_MAX_CTYPE ||
        m->idempotency_key_len > HR_STORE_MAX_IDEM_KEY)
        return HR_E_INVALID_REQUEST;
    if ((m->event_len > 0 && m->event == NULL) ||
        (m->content_type_len > 0 && m->content_type == NULL) ||
        (m->data_len > 0 && m->data == NULL) ||
        (m->idempotency_key_len > 0 && m->idempotency_key == NULL))
        return HR_E_INVALID_REQUEST;
    /* An LMDB value is at most 4 GiB - 1. */
    if (m->data_len > UINT32_MAX - MSG_HDR_SIZE - HR_STORE_MAX_EVENT - HR_STORE_MAX_CTYPE)
        return HR_E_INVALID_REQUEST;
    return 0;
}

/* Look the message's idempotency key up. Sets *dup (and fills *res) when it names a message
 * appended within the window, counted back from this message's time. */
static int dedupe_lookup(hr_store_t *st, MDB_txn *txn, const hr_store_msg_t *m,
                         const hr_store_slot_t *s, bool *dup, hr_store_result_t *res)
{
    uint8_t kb[DEDUPE_KEY_MAX];
    MDB_val k = {8 + m->idempotency_key_len, kb}, v;
    uint64_t t0, horizon;
    int rc;

    *dup = false;
    be64_put(kb, s->rec.topic_id);
    memcpy(kb + 8, m->idempotency_key, m->idempotency_key_len);
    rc = mdb_get(txn, st->dbi_dedupe, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return store_err(rc);
    if (v.mv_size != DEDUPE_VAL_SIZE)
        return HR_E_CORRUPT;
    t0 = le64_get((const uint8_t *)v.mv_data + 8);
    horizon = t0 + st->opts.dedupe_window_ms;
    if (horizon < t0)
        horizon = UINT64_MAX;
    if (m->time_ms < horizon) {
        *dup = true;
        res->seq = le64_get(v.mv_data);
        res->epoch = s->rec.epoch;
        res->time_ms = t0;
        res->duplicate = true;
    }
    return 0;
}

/* Remember the key of a message just appended: the key itself and its expiry-index entry. */
static int dedupe_store(hr_store_t *st, MDB_txn *txn, const hr_store_msg_t *m, uint64_t topic_id,
                        uint64_t seq)
{
    uint8_t kb[EXPIRY_KEY_MAX];
    uint8_t vb[DEDUPE_VAL_SIZE];
    MDB_val k = {8 + m->idempotency_key_len, kb}, v = {DEDUPE_VAL_SIZE, vb};
    int rc;

    be64_put(kb, topic_id);
    memcpy(kb + 8, m->idempotency_key, m->idempotency_key_len);
    le64_put(vb, seq);
    le64_put(vb + 8, m->time_ms);
    rc = mdb_put(txn, st->dbi_dedupe, &k, &v, 0);
    if (rc != 0)
        return store_err(rc);

    be64_put(kb, 0);
    be64_put(kb + 8, m->time_ms);
    be64_put(kb + 16, topic_id);
    memcpy(kb + 24, m->idempotency_key, m->idempotency_key_len);
    k.mv_size = 24 + m->idempotency_key_len;
    v.mv_size = 0;
    return store_err(mdb_put(txn, st->dbi_dedupe, &k, &v, 0));
}

static int put_message(hr_store_t *st, MDB_txn *txn, const hr_store_msg_t *m, uint64_t topic_id,
                       uint64_t seq, bool append)
{
    uint8_t kb[MSG_KEY_SIZE];
    MDB_val k = {MSG_KEY_SIZE, kb};
    MDB_val v = {MSG_HDR_SIZE + m->event_len + m->content_type_len + m->data_len, NULL};
    uint8_t *p;
    int rc;

    msg_key(kb, topic_id, seq);
    /* MDB_RESERVE: LMDB hands back the space and the record is written once, in place. */
    rc = mdb_put(txn, st->dbi_messages, &k, &v, MDB_RESERVE | (append ? MDB_APPEND : 0));
    if (rc != 0)
        return store_err(rc);
    p = v.mv_data;
    le64_put(p, m->time_ms);
    p[8] = (uint8_t)m->event_len;
    p[9] = (uint8_t)m->content_type_len;
    p += MSG_HDR_SIZE;
    if (m->event_len > 0)
        memcpy(p, m->event, m->event_len);
    p += m->event_len;
    if (m->content_type_len > 0)
        memcpy(p, m->content_type, m->content_type_len);
    p += m->content_type_len;
    if (m->data_len > 0)
        memcpy(p, m->data, m->data_len);
    return 0;
}

int hr_store_append(hr_store_t *store, const hr_store_msg_t *msgs, size_t n,
                    hr_store_result_t *results)
{
    hr_store_t *st = store;
    MDB_txn *txn = NULL;
    MDB_val k, v;
    uint8_t buf[TOPIC_REC_SIZE];
    uint64_t next_topic_id, stored_next_topic_id;
    bool wrote = false;
    int rc;

    assert(st != NULL && (n == 0 || (msgs != NULL && results != NULL)));
    if (n == 0)
        return 0;
    /* Validate the whole batch first: an invalid message fails it before any write. */
    for (size_t i = 0; i < n; i++) {
        rc = validate_msg(&msgs[i]);
        if (rc != 0)
            return rc;
    }
    if (n > UINT32_MAX)
        return HR_E_INVALID_REQUEST;

    cache_reset(st, n);
    rc = store_txn_begin(st, 0, &txn);
    if (rc != 0)
        return store_err(rc);

    k = (MDB_val){13, "next_topic_id"};
    rc = mdb_get(txn, st->dbi_meta, &k, &v);
    if (rc != 0) {
        rc = rc == MDB_NOTFOUND ? HR_E_CORRUPT : store_err(rc);
        goto fail;
    }
    if (v.mv_size != 8) {
        rc = HR_E_CORRUPT;
        goto fail;
    }
    next_topic_id = stored_next_topic_id = le64_get(v.mv_data);

    for (size_t i = 0; i < n; i++) {
        const hr_store_msg_t *m = &msgs[i];
        hr_store_slot_t *s;
        bool dup = false;
        uint64_t seq;

        rc = cache_get(st, txn, m, &next_topic_id, &s);
        if (rc != 0)
            goto fail;
        /* A window of 0 disables deduplication: keys are neither looked up nor stored. */
        if (m->idempotency_key_len > 0 && st->opts.dedupe_window_ms > 0) {
            rc = dedupe_lookup(st, txn, m, s, &dup, &results[i]);
            if (rc != 0)
                goto fail;
            if (dup)
                continue;
        }
        seq = s->rec.last_seq + 1;
        /* MDB_APPEND skips the search and fills pages completely, but LMDB refuses it unless
         * the key sorts after every key in the database. That holds exactly for the topic with
         * the highest id ever assigned: every other topic's keys sort before its own. */
        rc = put_message(st, txn, m, s->rec.topic_id, seq, s->rec.topic_id == next_topic_id - 1);
        if (rc != 0)
            goto fail;
        s->rec.last_seq = seq;
        s->dirty = true;
        if (m->idempotency_key_len > 0 && st->opts.dedupe_window_ms > 0) {
            rc = dedupe_store(st, txn, m, s->rec.topic_id, seq);
            if (rc != 0)
                goto fail;
        }
        results[i].seq = seq;
        results[i].epoch = s->rec.epoch;
        results[i].time_ms = m->time_ms;
        results[i].duplicate = false;
    }

    /* One write per touched topic, however many messages it got. */
    for (size_t j = 0; j < st->used_n; j++) {
        hr_store_slot_t *s = &st->slots[st->used[j]];
        if (!s->dirty)
            continue;
        wrote = true;
        topic_encode(buf, &s->rec);
        k = (MDB_val){s->name_len, (void *)s->name};
        v = (MDB_val){TOPIC_REC_SIZE, buf};
        rc = mdb_put(txn, st->dbi_topics, &k, &v, 0);
        if (rc != 0) {
            rc = store_err(rc);
            goto fail;
        }
    }
    if (next_topic_id != stored_next_topic_id) {
        le64_put(buf, next_topic_id);
        k = (MDB_val){13, "next_topic_id"};
        v = (MDB_val){8, buf};
        rc = mdb_put(txn, st->dbi_meta, &k, &v, 0);
        if (rc != 0) {
            rc = store_err(rc);
            goto fail;
        }
    }
    if (!wrote) {
        /* Every message was a duplicate of one committed earlier: no commit, no fsync. */
        mdb_txn_abort(txn);
        return 0;
    }
    /* The limit: the batch may not take the pages in use past opts.map_size. */
    {
        uint64_t pages;
        rc = store_pages_in_use(st, txn, &pages);
        if (rc != 0)
            goto fail;
        if (pages > st->limit_pages) {
            mdb_txn_abort(txn);
            return HR_E_STORAGE_FULL;
        }
    }
    /* mdb_txn_commit frees the transaction whether or not it succeeds. */
    rc = mdb_txn_commit(txn);
    if (rc == MDB_MAP_FULL)
        st->reclaim_pending = true;
    return store_err(rc);

fail:
    if (rc == HR_E_STORAGE_FULL)
        st->reclaim_pending = true; /* LMDB's own MDB_MAP_FULL: see store_reclaim */
    mdb_txn_abort(txn);
    return rc;
}

/* ---- reads ------------------------------------------------------------------------------- */

static int topic_get(hr_store_t *st, MDB_txn *txn, const char *topic, size_t topic_len,
                     hr_store_topic_t *info)
{
    MDB_val k = {topic_len, (void *)topic}, v;
    int rc = mdb_get(txn, st->dbi_topics, &k, &v);

    if (rc == MDB_NOTFOUND)
        return HR_E_NOT_FOUND;
    if (rc != 0)
        return store_err(rc);
    return topic_decode(&v, info);
}

int hr_store_topic_info(hr_store_t *store, const char *topic, size_t topic_len,
                        hr_store_topic_t *info)
{
    MDB_txn *txn;
    hr_store_topic_t t;
    int rc;

    assert(store != NULL && info != NULL);
    memset(info, 0, sizeof *info);
    if (topic == NULL || hr_topic_validate(topic, topic_len, NULL, 0) != 0)
        return HR_E_INVALID_TOPIC;
    rc = store_read_begin(store, &txn);
    if (rc != 0)
        return rc;
    rc = topic_get(store, txn, topic, topic_len, &t);
    store_read_end(store);
    if (rc == 0)
        *info = t;
    return rc;
}

int hr_store_read(hr_store_t *store, const char *topic, size_t topic_len, uint64_t after_seq,
                  size_t max_count, size_t max_bytes, hr_store_read_cb cb, void *ctx,
                  hr_store_topic_t *info)
{
    hr_store_t *st = store;
    MDB_txn *txn;
    MDB_cursor *cur;
    hr_store_topic_t t;
    uint8_t kb[MSG_KEY_SIZE];
    MDB_val k, v;
    size_t count = 0, bytes = 0;
    uint64_t start;
    MDB_cursor_op op = MDB_SET_RANGE;
    int rc;

    assert(st != NULL && cb != NULL);
    if (info != NULL)
        memset(info, 0, sizeof *info);
    if (topic == NULL || hr_topic_validate(topic, topic_len, NULL, 0) != 0)
        return HR_E_INVALID_TOPIC;
    rc = store_read_begin(st, &txn);
    if (rc != 0)
        return rc;
    rc = topic_get(st, txn, topic, topic_len, &t);
    if (rc != 0)
        goto done;
    if (info != NULL)
        *info = t;
    if (after_seq >= t.last_seq)
        goto done;
    start = after_seq + 1 < t.first_seq ? t.first_seq : after_seq + 1;

    rc = store_read_cursor(st, txn, &cur);
    if (rc != 0)
        goto done;
    msg_key(kb, t.topic_id, start);
    k = (MDB_val){MSG_KEY_SIZE, kb};
    for (;;) {
        hr_store_entry_t e;

        rc = mdb_cursor_get(cur, &k, &v, op);
        op = MDB_NEXT;
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            rc = store_err(rc);
            break;
        }
        if (k.mv_size != MSG_KEY_SIZE) {
            rc = HR_E_CORRUPT;
            break;
        }
        if (be64_get(k.mv_data) != t.topic_id)
            break;
        rc = msg_decode(&k, &v, &e);
        if (rc != 0)
            break;
        if (e.seq > t.last_seq)
            break; /* cannot happen: last_seq and the messages commit together */
        if (count > 0 && max_bytes > 0 &&
            (e.data_len > max_bytes || bytes > max_bytes - e.data_len))
            break;
        count++;
        bytes += e.data_len;
        if (cb(ctx, &e) != 0)
            break;
        if (max_count > 0 && count >= max_count)
            break;
    }

done:
    store_read_end(st);
    if (rc == HR_E_NOT_FOUND && info != NULL)
        memset(info, 0, sizeof *info);
    return rc;
}

/* ---- trim -------------------------------------------------------------------------------- */

typedef struct {
    hr_store_t *st;
    MDB_txn *txn;
    MDB_cursor *mcur;
    const hr_store_retention_t *policy;
    uint64_t now_ms;
    size_t budget;  /* 0: unlimited */
    size_t deleted; /* records deleted so far: messages plus expired keys */
    uint64_t trimmed;
    bool more;
    bool wrote; /* something changed: commit */
} trim_ctx_t;

static bool trim_budget_left(trim_ctx_t *c)
{
    if (c->budget > 0 && c->deleted >= c->budget) {
        c->more = true;
        return false;
    }
    return true;
}

/* Delete the topic's messages outside the policy: a prefix of its log, since retention only
 * ever moves first_seq forward. Age uses each record's time_ms; the walk stops at the first
 * message young enough, so a message with an older time behind it is kept with it. */
static int trim_topic(trim_ctx_t *c, hr_store_topic_t *t)
{
    const hr_store_retention_t *p = c->policy;
    uint64_t count_upto = 0; /* delete seq <= count_upto */
    uint64_t age_cutoff = 0; /* delete time_ms < age_cutoff */
    uint64_t seq = t->first_seq;
    uint8_t kb[MSG_KEY_SIZE];
    MDB_val k, v;
    int rc;

    if (p->max_messages > 0 && t->last_seq > p->max_messages)
        count_upto = t->last_seq - p->max_messages;
    if (p->max_age_ms > 0 && c->now_ms > p->max_age_ms)
        age_cutoff = c->now_ms - p->max_age_ms;

    while (seq <= t->last_seq) {
        uint64_t found;

        /* Re-seek after every delete rather than trusting cursor position after
         * mdb_cursor_del: the cost is one short descent per trimmed record. */
        msg_key(kb, t->topic_id, seq);
        k = (MDB_val){MSG_KEY_SIZE, kb};
        rc = mdb_cursor_get(c->mcur, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND ||
            (rc == 0 && (k.mv_size != MSG_KEY_SIZE || be64_get(k.mv_data) != t->topic_id))) {
            seq = t->last_seq + 1; /* nothing retained */
            break;
        }
        if (rc != 0)
            return store_err(rc);
        found = be64_get((const uint8_t *)k.mv_data + 8);
        if (found > t->last_seq) {
            seq = t->last_seq + 1;
            break;
        }
        seq = found;
        if (v.mv_size < MSG_HDR_SIZE)
            return HR_E_CORRUPT;
        if (!(seq <= count_upto || le64_get(v.mv_data) < age_cutoff))
            break;
        if (!trim_budget_left(c))
            break;
        rc = mdb_cursor_del(c->mcur, 0);
        if (rc != 0)
            return store_err(rc);
        c->deleted++;
        c->trimmed++;
        c->wrote = true;
        seq++;
    }
    t->first_seq = seq;
    return 0;
}

static int trim_messages(trim_ctx_t *c)
{
    hr_store_t *st = c->st;
    MDB_cursor *tcur = NULL;
    uint8_t name[HR_STORE_MAX_TOPIC];
    size_t name_len;
    MDB_val k, v;
    MDB_cursor_op op;
    int rc;

    rc = mdb_cursor_open(c->txn, st->dbi_topics, &tcur);
    if (rc != 0)
        return store_err(rc);
    if (st->trim_from_len > 0) {
        k = (MDB_val){st->trim_from_len, st->trim_from};
        op = MDB_SET_RANGE;
    } else {
        op = MDB_FIRST;
    }
    for (;; op = MDB_NEXT) {
        hr_store_topic_t t;
        uint64_t old_first;

        rc = mdb_cursor_get(tcur, &k, &v, op);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            st->trim_from_len = 0; /* a full pass: the next call starts over */
            break;
        }
        if (rc != 0) {
            rc = store_err(rc);
            break;
        }
        if (k.mv_size == 0 || k.mv_size > HR_STORE_MAX_TOPIC) {
            rc = HR_E_CORRUPT;
            break;
        }
        rc = topic_decode(&v, &t);
        if (rc != 0)
            break;
        /* Copy the name now: writes below may move the page k points into. */
        memcpy(name, k.mv_data, k.mv_size);
        name_len = k.mv_size;
        old_first = t.first_seq;
        rc = trim_topic(c, &t);
        if (rc != 0)
            break;
        if (t.first_seq != old_first) {
            uint8_t buf[TOPIC_REC_SIZE];
            topic_encode(buf, &t);
            k = (MDB_val){name_len, name};
            v = (MDB_val){TOPIC_REC_SIZE, buf};
            rc = mdb_cursor_put(tcur, &k, &v, MDB_CURRENT);
            if (rc != 0) {
                rc = store_err(rc);
                break;
            }
            c->wrote = true;
        }
        if (c->more) {
            /* Resume at this topic next time (it may have more to trim). */
            memcpy(st->trim_from, name, name_len);
            st->trim_from_len = name_len;
            break;
        }
    }
    mdb_cursor_close(tcur);
    return rc;
}

/* Delete idempotency keys older than the window, oldest first, through the expiry index. */
static int trim_dedupe(trim_ctx_t *c)
{
    hr_store_t *st = c->st;
    uint64_t window = st->opts.dedupe_window_ms;
    MDB_cursor *cur = NULL;
    uint8_t kb[EXPIRY_KEY_MAX];
    MDB_val k, v;
    int rc;

    rc = mdb_cursor_open(c->txn, st->dbi_dedupe, &cur);
    if (rc != 0)
        return store_err(rc);
    for (;;) {
        uint64_t t0;
        size_t klen;
        MDB_val mk, mv;

        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            rc = store_err(rc);
            break;
        }
        if (k.mv_size < 8 || be64_get(k.mv_data) != 0)
            break; /* past the expiry index */
        if (k.mv_size < 24 || k.mv_size > EXPIRY_KEY_MAX) {
            rc = HR_E_CORRUPT;
            break;
        }
        t0 = be64_get((const uint8_t *)k.mv_data + 8);
        /* Expired once no message can be a duplicate of it: time_ms >= t0 + window. With a
         * window of 0 nothing new is stored, and anything left from before is dropped. */
        if (window > 0 && (t0 + window < t0 || t0 + window > c->now_ms))
            break;
        if (!trim_budget_left(c))
            break;
        klen = k.mv_size;
        memcpy(kb, k.mv_data, klen);
        rc = mdb_cursor_del(cur, 0);
        if (rc != 0) {
            rc = store_err(rc);
            break;
        }
        /* The key itself goes only if it still belongs to this index entry: a key reused after
         * expiring has a newer entry of its own. */
        mk = (MDB_val){klen - 16, kb + 16}; /* topic id + key: the key's own entry */
        rc = mdb_get(c->txn, st->dbi_dedupe, &mk, &mv);
        if (rc == 0 && mv.mv_size == DEDUPE_VAL_SIZE &&
            le64_get((const uint8_t *)mv.mv_data + 8) == t0)
            rc = mdb_del(c->txn, st->dbi_dedupe, &mk, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) {
            rc = store_err(rc);
            break;
        }
        rc = 0;
        c->deleted++;
        c->wrote = true;
    }
    mdb_cursor_close(cur);
    return rc;
}

/* One trim transaction with c's policy and budget: commit what it deleted, if anything. */
static int trim_txn(trim_ctx_t *c)
{
    hr_store_t *st = c->st;
    int rc;

    rc = store_txn_begin(st, 0, &c->txn);
    if (rc != 0)
        return store_err(rc);
    rc = mdb_cursor_open(c->txn, st->dbi_messages, &c->mcur);
    if (rc != 0) {
        mdb_txn_abort(c->txn);
        return store_err(rc);
    }
    if (c->policy->max_messages > 0 || c->policy->max_age_ms > 0)
        rc = trim_messages(c);
    if (rc == 0 && !c->more)
        rc = trim_dedupe(c);
    mdb_cursor_close(c->mcur);
    if (rc != 0 || !c->wrote) {
        mdb_txn_abort(c->txn); /* failed, or nothing to commit and no fsync to pay */
        return rc;
    }
    /* mdb_txn_commit frees the transaction whether or not it succeeds. */
    return store_err(mdb_txn_commit(c->txn));
}

int hr_store_trim(hr_store_t *store, const hr_store_retention_t *policy, uint64_t now_ms,
                  size_t budget, uint64_t *trimmed, bool *more)
{
    static const hr_store_retention_t none = {0, 0};
    uint8_t from[HR_STORE_MAX_TOPIC];
    size_t from_len;
    trim_ctx_t c;
    int rc;

    assert(store != NULL);
    if (trimmed != NULL)
        *trimmed = 0;
    if (more != NULL)
        *more = false;
    from_len = store->trim_from_len;
    memcpy(from, store->trim_from, from_len);
    for (;;) {
        c = (trim_ctx_t){0};
        c.st = store;
        c.policy = policy != NULL ? policy : &none;
        c.now_ms = now_ms;
        c.budget = budget;
        rc = trim_txn(&c);
        if (rc == 0)
            break;
        /* A failed attempt changed nothing on disk; neither may it move the resume point. */
        memcpy(store->trim_from, from, from_len);
        store->trim_from_len = from_len;
        /* LMDB ran out of pages. Deleting needs few new pages, but the commit writes the list
         * of every page the transaction freed as ONE record, which for a large trim spans
         * several consecutive pages; in a map whose headroom is taken by scattered free
         * pages there may be no such run. So try again deleting half as much, down to one
         * record at a time (a list that fits in one page); the caller sees *more and calls
         * again for the rest. */
        if (rc != HR_E_STORAGE_FULL || c.deleted < 2)
            return rc;
        budget = c.deleted / 2;
    }
    /* Make what the trim freed reusable by the next append (see store_reclaim). */
    if (c.wrote || store->reclaim_pending)
        store_reclaim(store);
    if (trimmed != NULL)
        *trimmed = c.trimmed;
    if (more != NULL)
        *more = c.more;
    return 0;
}

/* ---- stats ------------------------------------------------------------------------------- */

int hr_store_stats(hr_store_t *store, hr_store_stats_t *stats)
{
    MDB_stat ts;
    MDB_txn *txn;
    uint64_t pages = 0;
    int rc;

    assert(store != NULL && stats != NULL);
    memset(stats, 0, sizeof *stats);
    rc = store_read_begin(store, &txn);
    if (rc != 0)
        return rc;
    rc = store_err(mdb_stat(txn, store->dbi_topics, &ts));
    if (rc == 0)
        rc = store_pages_in_use(store, txn, &pages);
    store_read_end(store);
    if (rc != 0)
        return rc;
    stats->topics = ts.ms_entries;
    stats->map_size = store->limit;
    stats->map_used = pages * store->psize;
    return 0;
}
