/* Unit tests for storage/: the LMDB topic log (hr_store). Each test works in its own temporary
 * directory under /tmp, removed at the end. */
#include "hr_alloc.h"
#include "hr_error.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <lmdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

/* ---- helpers ----------------------------------------------------------------------------- */

typedef struct {
    char path[64];
} tmpdir_t;

/* rm -r: the trees here are a directory or two of plain files. */
static void remove_tree(const char *path)
{
    struct stat sb;
    DIR *d;
    struct dirent *e;
    char child[512];

    assert_int_equal(lstat(path, &sb), 0);
    if (S_ISDIR(sb.st_mode)) {
        d = opendir(path);
        assert_non_null(d);
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(child, sizeof child, "%s/%s", path, e->d_name);
            remove_tree(child);
        }
        closedir(d);
        assert_int_equal(rmdir(path), 0);
    } else {
        assert_int_equal(unlink(path), 0);
    }
}

/* cmocka fixtures: every test gets a fresh directory in *state, removed even if it fails. */
static int tmpdir_setup(void **state)
{
    tmpdir_t *t = hr_calloc(1, sizeof *t);
    strcpy(t->path, "/tmp/hr-store-XXXXXX");
    if (mkdtemp(t->path) == NULL) {
        hr_free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int tmpdir_teardown(void **state)
{
    tmpdir_t *t = *state;
    remove_tree(t->path);
    hr_free(t);
    return 0;
}

/* The store's own directory inside the temporary one (so open also exercises mkdir). */
static void store_path(const tmpdir_t *t, char *out, size_t len)
{
    snprintf(out, len, "%s/store", t->path);
}

static hr_store_t *open_store(const tmpdir_t *t, const hr_store_options_t *opts)
{
    char path[96];
    hr_store_t *st = NULL;

    store_path(t, path, sizeof path);
    assert_int_equal(hr_store_open(&st, path, opts), 0);
    assert_non_null(st);
    return st;
}

static hr_store_msg_t msg(const char *topic, const char *data)
{
    hr_store_msg_t m = {0};
    m.topic = topic;
    m.topic_len = strlen(topic);
    m.data = (const uint8_t *)data;
    m.data_len = strlen(data);
    m.time_ms = 1000;
    return m;
}

static hr_store_msg_t msg_key(const char *topic, const char *data, const char *key,
                              uint64_t time_ms)
{
    hr_store_msg_t m = msg(topic, data);
    m.idempotency_key = key;
    m.idempotency_key_len = strlen(key);
    m.time_ms = time_ms;
    return m;
}

/* Append one message and return its result. */
static hr_store_result_t append1(hr_store_t *st, hr_store_msg_t m)
{
    hr_store_result_t r;
    memset(&r, 0xee, sizeof r);
    assert_int_equal(hr_store_append(st, &m, 1, &r), 0);
    return r;
}

static hr_store_topic_t info_of(hr_store_t *st, const char *topic)
{
    hr_store_topic_t info;
    assert_int_equal(hr_store_topic_info(st, topic, strlen(topic), &info), 0);
    return info;
}

/* What a read delivered, copied out of the callback. */
typedef struct {
    uint64_t seq;
    uint64_t time_ms;
    char event[HR_STORE_MAX_EVENT + 1];
    char ctype[HR_STORE_MAX_CTYPE + 1];
    uint8_t *data;
    size_t data_len;
} got_t;

typedef struct {
    got_t items[128];
    size_t n;
    size_t stop_after; /* 0: never ask to stop */
} collect_t;

static int collect_cb(void *ctx, const hr_store_entry_t *e)
{
    collect_t *c = ctx;
    got_t *g;

    assert_true(c->n < 128);
    g = &c->items[c->n++];
    g->seq = e->seq;
    g->time_ms = e->time_ms;
    memcpy(g->event, e->event, e->event_len);
    g->event[e->event_len] = '\0';
    memcpy(g->ctype, e->content_type, e->content_type_len);
    g->ctype[e->content_type_len] = '\0';
    g->data = hr_malloc(e->data_len);
    if (e->data_len > 0)
        memcpy(g->data, e->data, e->data_len);
    g->data_len = e->data_len;
    return c->stop_after > 0 && c->n >= c->stop_after;
}

static void collect_free(collect_t *c)
{
    for (size_t i = 0; i < c->n; i++)
        hr_free(c->items[i].data);
    c->n = 0;
}

/* Read and return the number of messages delivered; asserts the read succeeds. */
static size_t read_all(hr_store_t *st, const char *topic, uint64_t after, size_t max_count,
                       size_t max_bytes, collect_t *c, hr_store_topic_t *info)
{
    collect_free(c);
    assert_int_equal(
        hr_store_read(st, topic, strlen(topic), after, max_count, max_bytes, collect_cb, c, info),
        0);
    return c->n;
}

static void assert_seqs(const collect_t *c, uint64_t first, size_t n)
{
    assert_int_equal(c->n, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(c->items[i].seq, first + i);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_options_default(void **state)
{
    hr_store_options_t o;
    (void)state;

    memset(&o, 0xff, sizeof o);
    hr_store_options_default(&o);
    assert_int_equal(o.map_size, UINT64_C(1) << 30);
    assert_true(o.sync);
    assert_int_equal(o.dedupe_window_ms, 300000);
    assert_int_equal(o.max_readers, 126);
}

static void test_order_single_topic(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_msg_t m[10];
    hr_store_result_t r[10];
    char data[10][8];
    collect_t c = {0};
    hr_store_topic_t info;

    st = open_store(t, NULL);
    for (int i = 0; i < 10; i++) {
        snprintf(data[i], sizeof data[i], "m%d", i + 1);
        m[i] = msg("news.sport", data[i]);
        m[i].event = "score";
        m[i].event_len = 5;
        m[i].content_type = "text/plain";
        m[i].content_type_len = 10;
        m[i].time_ms = 5000 + (uint64_t)i;
    }
    assert_int_equal(hr_store_append(st, m, 10, r), 0);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(r[i].seq, (uint64_t)i + 1);
        assert_int_equal(r[i].epoch, r[0].epoch);
        assert_int_equal(r[i].time_ms, 5000 + (uint64_t)i);
        assert_false(r[i].duplicate);
    }
    assert_int_not_equal(r[0].epoch, 0);
    for (int i = 0; i < 5; i++) {
        hr_store_result_t one = append1(st, msg("news.sport", "later"));
        assert_int_equal(one.seq, 11 + (uint64_t)i);
        assert_int_equal(one.epoch, r[0].epoch);
    }
    assert_int_equal(hr_store_append(st, m, 0, r), 0); /* empty batch: nothing */

    assert_int_equal(read_all(st, "news.sport", 0, 0, 0, &c, &info), 15);
    assert_seqs(&c, 1, 15);
    assert_string_equal(c.items[0].event, "score");
    assert_string_equal(c.items[0].ctype, "text/plain");
    assert_int_equal(c.items[0].time_ms, 5000);
    assert_int_equal(c.items[9].data_len, 3);
    assert_memory_equal(c.items[9].data, "m10", 3);
    assert_int_equal(c.items[10].data_len, 5);
    assert_string_equal(c.items[10].event, "");
    assert_int_equal(c.items[14].time_ms, 1000);
    assert_int_equal(info.last_seq, 15);
    assert_int_equal(info.first_seq, 1);
    assert_int_equal(info.epoch, r[0].epoch);
    assert_int_equal(info.created_ms, 5000);
    assert_true(info.topic_id > 0);

    collect_free(&c);
    hr_store_close(&st);
    assert_null(st);
    hr_store_close(&st); /* NULL: no-op */
    hr_store_close(NULL);
}

static void test_batch_across_topics(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    const char *topics[] = {"a", "b", "a", "c", "b", "a", "c", "a"};
    const uint64_t want[] = {1, 1, 2, 1, 2, 3, 2, 4};
    hr_store_msg_t m[8];
    hr_store_result_t r[8];
    hr_store_topic_t ia, ib, ic;
    hr_store_stats_t stats;
    collect_t c = {0};

    st = open_store(t, NULL);
    for (int i = 0; i < 8; i++)
        m[i] = msg(topics[i], topics[i]);
    assert_int_equal(hr_store_append(st, m, 8, r), 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(r[i].seq, want[i]);
    ia = info_of(st, "a");
    ib = info_of(st, "b");
    ic = info_of(st, "c");
    assert_int_equal(ia.last_seq, 4);
    assert_int_equal(ib.last_seq, 2);
    assert_int_equal(ic.last_seq, 2);
    assert_int_equal(r[0].epoch, ia.epoch);
    assert_int_equal(r[1].epoch, ib.epoch);
    assert_int_equal(r[3].epoch, ic.epoch);
    /* Topic ids in order of first appearance, epochs distinct and nonzero. */
    assert_int_equal(ib.topic_id, ia.topic_id + 1);
    assert_int_equal(ic.topic_id, ia.topic_id + 2);
    assert_int_not_equal(ia.epoch, 0);
    assert_int_not_equal(ib.epoch, 0);
    assert_int_not_equal(ic.epoch, 0);
    assert_int_not_equal(ia.epoch, ib.epoch);
    assert_int_not_equal(ib.epoch, ic.epoch);
    assert_int_not_equal(ia.epoch, ic.epoch);

    /* A second batch: the older topic "a" after the newest "c" (not appendable at the end). */
    m[0] = msg("c", "c3");
    m[1] = msg("a", "a5");
    m[2] = msg("d", "d1");
    m[3] = msg("a", "a6");
    assert_int_equal(hr_store_append(st, m, 4, r), 0);
    assert_int_equal(r[0].seq, 3);
    assert_int_equal(r[1].seq, 5);
    assert_int_equal(r[2].seq, 1);
    assert_int_equal(r[3].seq, 6);

    assert_int_equal(read_all(st, "a", 0, 0, 0, &c, NULL), 6);
    assert_seqs(&c, 1, 6);
    assert_memory_equal(c.items[5].data, "a6", 2);
    assert_int_equal(read_all(st, "c", 0, 0, 0, &c, NULL), 3);
    assert_seqs(&c, 1, 3);
    assert_memory_equal(c.items[2].data, "c3", 2);
    assert_int_equal(read_all(st, "b", 0, 0, 0, &c, NULL), 2);
    assert_int_equal(read_all(st, "d", 0, 0, 0, &c, NULL), 1);

    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_int_equal(stats.topics, 4);
    assert_int_equal(stats.map_size, UINT64_C(1) << 30);
    assert_true(stats.map_used > 0 && stats.map_used % 4096 == 0);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_read_edges(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_topic_t info;
    hr_store_retention_t keep4 = {4, 0};
    uint64_t trimmed = 99;
    bool more = true;

    st = open_store(t, NULL);
    for (int i = 0; i < 10; i++)
        append1(st, msg("t", "x"));

    assert_int_equal(read_all(st, "t", 0, 0, 0, &c, &info), 10);
    assert_seqs(&c, 1, 10);
    assert_int_equal(read_all(st, "t", 9, 0, 0, &c, &info), 1);
    assert_int_equal(c.items[0].seq, 10);
    assert_int_equal(read_all(st, "t", 10, 0, 0, &c, &info), 0);
    assert_int_equal(info.last_seq, 10);
    assert_int_equal(read_all(st, "t", 50, 0, 0, &c, &info), 0);
    assert_int_equal(read_all(st, "t", UINT64_MAX, 0, 0, &c, &info), 0);
    assert_int_equal(info.last_seq, 10);

    assert_int_equal(hr_store_trim(st, &keep4, 0, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 6);
    assert_false(more);
    /* after inside the trimmed range: the walk starts at first_seq; info shows the gap. */
    assert_int_equal(read_all(st, "t", 2, 0, 0, &c, &info), 4);
    assert_seqs(&c, 7, 4);
    assert_int_equal(info.first_seq, 7);
    assert_int_equal(info.last_seq, 10);
    assert_int_equal(read_all(st, "t", 0, 0, 0, &c, &info), 4);
    assert_seqs(&c, 7, 4);
    assert_int_equal(read_all(st, "t", 6, 0, 0, &c, &info), 4);
    assert_seqs(&c, 7, 4);
    assert_int_equal(read_all(st, "t", 8, 0, 0, &c, &info), 2);
    assert_seqs(&c, 9, 2);

    /* Unknown and invalid topics. */
    collect_free(&c);
    memset(&info, 0x55, sizeof info);
    assert_int_equal(hr_store_read(st, "nope", 4, 0, 0, 0, collect_cb, &c, &info), HR_E_NOT_FOUND);
    assert_int_equal(info.topic_id, 0);
    assert_int_equal(info.epoch, 0);
    assert_int_equal(info.last_seq, 0);
    assert_int_equal(hr_store_topic_info(st, "nope", 4, &info), HR_E_NOT_FOUND);
    assert_int_equal(hr_store_read(st, "a/b", 3, 0, 0, 0, collect_cb, &c, NULL),
                     HR_E_INVALID_TOPIC);
    assert_int_equal(hr_store_read(st, "", 0, 0, 0, 0, collect_cb, &c, NULL), HR_E_INVALID_TOPIC);
    assert_int_equal(hr_store_topic_info(st, "a b", 3, &info), HR_E_INVALID_TOPIC);
    assert_int_equal(c.n, 0);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_read_limits(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    char big[101];
    hr_store_msg_t m;

    st = open_store(t, NULL);
    memset(big, 'b', 100);
    big[100] = '\0';
    for (int i = 0; i < 6; i++)
        append1(st, msg("lim", big)); /* 100 bytes each */
    m = msg("lim", "");
    append1(st, m); /* seq 7: empty data */

    assert_int_equal(read_all(st, "lim", 0, 3, 0, &c, NULL), 3);
    assert_seqs(&c, 1, 3);
    assert_int_equal(read_all(st, "lim", 4, 1, 0, &c, NULL), 1);
    assert_seqs(&c, 5, 1);
    /* max_bytes: the total never exceeds it after the first message... */
    assert_int_equal(read_all(st, "lim", 0, 0, 250, &c, NULL), 2);
    assert_int_equal(read_all(st, "lim", 0, 0, 200, &c, NULL), 2);
    assert_int_equal(read_all(st, "lim", 0, 0, 199, &c, NULL), 1);
    assert_int_equal(read_all(st, "lim", 0, 0, 600, &c, NULL), 7); /* + the empty one */
    /* ...but the first is always delivered, however large. */
    assert_int_equal(read_all(st, "lim", 0, 0, 10, &c, NULL), 1);
    assert_seqs(&c, 1, 1);
    assert_int_equal(c.items[0].data_len, 100);
    assert_int_equal(read_all(st, "lim", 2, 2, 1000, &c, NULL), 2);
    assert_seqs(&c, 3, 2);

    /* The callback stops the walk early: not an error. */
    collect_free(&c);
    c.stop_after = 2;
    assert_int_equal(hr_store_read(st, "lim", 3, 0, 0, 0, collect_cb, &c, NULL), 0);
    assert_seqs(&c, 1, 2);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_large_message(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_msg_t m = {0};
    size_t len = 300 * 1024;
    uint8_t *data = hr_malloc(len);

    for (size_t i = 0; i < len; i++)
        data[i] = (uint8_t)(i * 7 + 3);
    st = open_store(t, NULL);
    m.topic = "big";
    m.topic_len = 3;
    m.data = data;
    m.data_len = len;
    assert_int_equal(append1(st, m).seq, 1);
    assert_int_equal(append1(st, msg("big", "small")).seq, 2);
    assert_int_equal(read_all(st, "big", 0, 0, 0, &c, NULL), 2);
    assert_int_equal(c.items[0].data_len, len);
    assert_memory_equal(c.items[0].data, data, len);
    assert_memory_equal(c.items[1].data, "small", 5);

    hr_free(data);
    collect_free(&c);
    hr_store_close(&st);
}

static void test_trim_count(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_retention_t keep3 = {3, 0};
    hr_store_topic_t info;
    uint64_t trimmed;
    bool more;

    st = open_store(t, NULL);
    for (int i = 0; i < 10; i++)
        append1(st, msg("ten", "x"));
    for (int i = 0; i < 2; i++)
        append1(st, msg("two", "y"));
    for (int i = 0; i < 5; i++)
        append1(st, msg("five", "z"));

    assert_int_equal(hr_store_trim(st, &keep3, 0, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 7 + 0 + 2);
    assert_false(more);
    info = info_of(st, "ten");
    assert_int_equal(info.first_seq, 8);
    assert_int_equal(info.last_seq, 10);
    info = info_of(st, "two");
    assert_int_equal(info.first_seq, 1);
    assert_int_equal(info.last_seq, 2);
    info = info_of(st, "five");
    assert_int_equal(info.first_seq, 3);
    assert_int_equal(read_all(st, "ten", 0, 0, 0, &c, NULL), 3);
    assert_seqs(&c, 8, 3);
    assert_int_equal(read_all(st, "five", 0, 0, 0, &c, NULL), 3);
    assert_seqs(&c, 3, 3);

    /* Again: nothing left to do. A NULL policy trims only expired keys. */
    assert_int_equal(hr_store_trim(st, &keep3, 0, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 0);
    assert_int_equal(hr_store_trim(st, NULL, 0, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, 0);

    /* Appends continue the sequence. */
    assert_int_equal(append1(st, msg("ten", "x")).seq, 11);
    assert_int_equal(hr_store_trim(st, &keep3, 0, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, 1);
    assert_int_equal(info_of(st, "ten").first_seq, 9);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_trim_age(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_retention_t age = {0, 5000};
    hr_store_retention_t both = {2, 5000};
    hr_store_topic_t info;
    uint64_t trimmed;
    bool more;

    st = open_store(t, NULL);
    for (uint64_t i = 1; i <= 10; i++) {
        hr_store_msg_t m = msg("aged", "x");
        m.time_ms = i * 1000; /* seq i at time i s */
        append1(st, m);
    }
    /* Nothing is older than now - max_age when now < max_age. */
    assert_int_equal(hr_store_trim(st, &age, 4000, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 0);
    /* now 12 s, age 5 s: cutoff 7 s; times 1..6 s are older and go. */
    assert_int_equal(hr_store_trim(st, &age, 12000, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 6);
    assert_false(more);
    info = info_of(st, "aged");
    assert_int_equal(info.first_seq, 7);
    assert_int_equal(info.last_seq, 10);
    assert_int_equal(read_all(st, "aged", 0, 0, 0, &c, NULL), 4);
    assert_seqs(&c, 7, 4);
    assert_int_equal(c.items[0].time_ms, 7000);
    /* Exactly at the cutoff is kept: cutoff 7 s keeps time 7 s. */
    assert_int_equal(hr_store_trim(st, &age, 12000, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 0);
    /* Count and age together: whichever removes more. */
    assert_int_equal(hr_store_trim(st, &both, 12500, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 2); /* count keeps 9, 10 */
    assert_int_equal(info_of(st, "aged").first_seq, 9);
    /* Now age removes more than count would: cutoff 9.5 s drops seq 9, count keeps it. */
    assert_int_equal(hr_store_trim(st, &both, 14500, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, 1);
    info = info_of(st, "aged");
    assert_int_equal(info.first_seq, 10);
    assert_int_equal(info.last_seq, 10);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_trim_everything_then_append(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_retention_t age = {0, 1000};
    hr_store_topic_t info;
    uint64_t trimmed;
    hr_store_result_t r;

    st = open_store(t, NULL);
    for (int i = 0; i < 10; i++)
        append1(st, msg("gone", "x")); /* time 1000 */
    assert_int_equal(hr_store_trim(st, &age, 100000, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, 10);
    info = info_of(st, "gone");
    assert_int_equal(info.first_seq, 11);
    assert_int_equal(info.last_seq, 10);
    assert_int_equal(read_all(st, "gone", 0, 0, 0, &c, &info), 0);
    assert_int_equal(info.first_seq, 11);
    assert_int_equal(read_all(st, "gone", 10, 0, 0, &c, &info), 0);

    /* Survives a reopen, and the next append continues at last_seq + 1. */
    hr_store_close(&st);
    st = open_store(t, NULL);
    info = info_of(st, "gone");
    assert_int_equal(info.first_seq, 11);
    assert_int_equal(info.last_seq, 10);
    r = append1(st, msg("gone", "back"));
    assert_int_equal(r.seq, 11);
    assert_int_equal(r.epoch, info.epoch);
    assert_int_equal(read_all(st, "gone", 0, 0, 0, &c, &info), 1);
    assert_seqs(&c, 11, 1);
    assert_int_equal(info.first_seq, 11);
    assert_int_equal(info.last_seq, 11);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_trim_budget(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_retention_t keep2 = {2, 0};
    const uint64_t want_trimmed[] = {5, 5, 5, 1, 0};
    const bool want_more[] = {true, true, true, false, false};
    uint64_t trimmed;
    bool more;

    st = open_store(t, NULL);
    for (int i = 0; i < 10; i++) {
        hr_store_msg_t m[2] = {msg("ta", "a"), msg("tb", "b")};
        hr_store_result_t r[2];
        assert_int_equal(hr_store_append(st, m, 2, r), 0);
    }
    /* 16 messages to trim, 5 at a time. */
    for (int i = 0; i < 5; i++) {
        assert_int_equal(hr_store_trim(st, &keep2, 0, 5, &trimmed, &more), 0);
        assert_int_equal(trimmed, want_trimmed[i]);
        assert_int_equal(more, want_more[i]);
        if (i == 0) {
            assert_int_equal(info_of(st, "ta").first_seq, 6);
            assert_int_equal(info_of(st, "tb").first_seq, 1);
        }
    }
    assert_int_equal(info_of(st, "ta").first_seq, 9);
    assert_int_equal(info_of(st, "tb").first_seq, 9);
    assert_int_equal(read_all(st, "ta", 0, 0, 0, &c, NULL), 2);
    assert_seqs(&c, 9, 2);
    assert_int_equal(read_all(st, "tb", 0, 0, 0, &c, NULL), 2);
    assert_seqs(&c, 9, 2);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_dedupe(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_options_t opts;
    hr_store_result_t r, rb[4];
    hr_store_msg_t batch[4];
    collect_t c = {0};
    uint64_t trimmed;

    hr_store_options_default(&opts);
    opts.dedupe_window_ms = 1000;
    st = open_store(t, &opts);

    r = append1(st, msg_key("a", "first", "k1", 10000));
    assert_int_equal(r.seq, 1);
    assert_false(r.duplicate);
    /* A repeat within the window: the original, nothing appended. */
    r = append1(st, msg_key("a", "again", "k1", 10999));
    assert_int_equal(r.seq, 1);
    assert_true(r.duplicate);
    assert_int_equal(r.time_ms, 10000);
    assert_int_equal(r.epoch, info_of(st, "a").epoch);
    assert_int_equal(info_of(st, "a").last_seq, 1);
    /* The same key on another topic is independent. */
    r = append1(st, msg_key("b", "other", "k1", 10500));
    assert_int_equal(r.seq, 1);
    assert_false(r.duplicate);
    /* Outside the window (time >= original + window) it appends anew... */
    r = append1(st, msg_key("a", "third", "k1", 11000));
    assert_int_equal(r.seq, 2);
    assert_false(r.duplicate);
    /* ...and the new message is the one later repeats refer to. */
    r = append1(st, msg_key("a", "fourth", "k1", 11500));
    assert_int_equal(r.seq, 2);
    assert_true(r.duplicate);
    assert_int_equal(r.time_ms, 11000);

    /* A repeat inside one batch. */
    batch[0] = msg_key("a", "x", "k2", 12000);
    batch[1] = msg("a", "no key");
    batch[1].time_ms = 12000;
    batch[2] = msg_key("a", "x again", "k2", 12001);
    batch[3] = msg_key("b", "b2", "k2", 12001);
    assert_int_equal(hr_store_append(st, batch, 4, rb), 0);
    assert_int_equal(rb[0].seq, 3);
    assert_false(rb[0].duplicate);
    assert_int_equal(rb[1].seq, 4);
    assert_false(rb[1].duplicate);
    assert_int_equal(rb[2].seq, 3);
    assert_true(rb[2].duplicate);
    assert_int_equal(rb[2].time_ms, 12000);
    assert_int_equal(rb[3].seq, 2);
    assert_false(rb[3].duplicate);

    assert_int_equal(read_all(st, "a", 0, 0, 0, &c, NULL), 4);
    assert_seqs(&c, 1, 4);
    assert_memory_equal(c.items[0].data, "first", 5);
    assert_memory_equal(c.items[1].data, "third", 5);
    assert_memory_equal(c.items[2].data, "x", 1);
    assert_memory_equal(c.items[3].data, "no key", 6);
    assert_int_equal(info_of(st, "b").last_seq, 2);

    /* Trimming keys: not yet expired at 12999 (k2 stored at 12000), so still a duplicate... */
    assert_int_equal(hr_store_trim(st, NULL, 12999, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, 0); /* keys are not messages */
    r = append1(st, msg_key("a", "dup", "k2", 12500));
    assert_int_equal(r.seq, 3);
    assert_true(r.duplicate);
    /* ...expired at 13000: the key is forgotten, so even a time inside the old window appends. */
    assert_int_equal(hr_store_trim(st, NULL, 13000, 0, &trimmed, NULL), 0);
    r = append1(st, msg_key("a", "new", "k2", 12500));
    assert_int_equal(r.seq, 5);
    assert_false(r.duplicate);
    /* k1 (last stored at 11000) expired at 12000 and was trimmed with its index entry. */
    r = append1(st, msg_key("a", "k1 new", "k1", 12100));
    assert_int_equal(r.seq, 6);
    assert_false(r.duplicate);

    /* Keys survive a reopen. */
    hr_store_close(&st);
    st = open_store(t, &opts);
    r = append1(st, msg_key("a", "k1 dup", "k1", 12200));
    assert_int_equal(r.seq, 6);
    assert_true(r.duplicate);

    /* A window of 0 disables deduplication. */
    hr_store_close(&st);
    opts.dedupe_window_ms = 0;
    st = open_store(t, &opts);
    r = append1(st, msg_key("a", "k1 nodedupe", "k1", 12200));
    assert_int_equal(r.seq, 7);
    assert_false(r.duplicate);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_dedupe_trim_budget(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_options_t opts;
    hr_store_result_t r;
    uint64_t trimmed;
    bool more;
    char key[16];

    hr_store_options_default(&opts);
    opts.dedupe_window_ms = 100;
    st = open_store(t, &opts);
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof key, "key%d", i);
        append1(st, msg_key("d", "x", key, 1000 + (uint64_t)i));
    }
    /* At 1103 the keys of times 1000..1003 have expired; budget 3 stops after three. */
    assert_int_equal(hr_store_trim(st, NULL, 1103, 3, &trimmed, &more), 0);
    assert_int_equal(trimmed, 0);
    assert_true(more);
    assert_int_equal(hr_store_trim(st, NULL, 1103, 3, &trimmed, &more), 0);
    assert_false(more);
    /* key3 (time 1003) is gone, key4 (1004) is not. */
    r = append1(st, msg_key("d", "x", "key3", 1050));
    assert_false(r.duplicate);
    assert_int_equal(r.seq, 7);
    r = append1(st, msg_key("d", "x", "key4", 1050));
    assert_true(r.duplicate);
    assert_int_equal(r.seq, 5);

    hr_store_close(&st);
}

/* The cluster identity is recorded on first use and compared afterwards, across reopens. */
static void test_cluster_identity(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st = open_store(t, NULL);
    hr_store_identity_t want = {64, 3, 1}, have;
    assert_int_equal(hr_store_identity(st, &want, &have), 0);
    assert_memory_equal(&want, &have, sizeof want);
    append1(st, msg("alpha", "x"));
    hr_store_close(&st);

    st = open_store(t, NULL);
    assert_int_equal(hr_store_identity(st, &want, &have), 0);
    hr_store_identity_t other_p = {32, 3, 1}, other_node = {64, 3, 2}, other_n = {64, 4, 1};
    assert_int_equal(hr_store_identity(st, &other_p, &have), HR_E_MISCONFIGURED);
    assert_memory_equal(&want, &have, sizeof want); /* reports what is recorded */
    assert_int_equal(hr_store_identity(st, &other_node, &have), HR_E_MISCONFIGURED);
    assert_int_equal(hr_store_identity(st, &other_n, &have), HR_E_MISCONFIGURED);
    /* a refused identity changes nothing */
    assert_int_equal(hr_store_identity(st, &want, &have), 0);
    assert_int_equal(info_of(st, "alpha").last_seq, 1);
    hr_store_close(&st);
}

/* Renewing epochs keeps every message and seq, changes every epoch, durably. */
static void test_renew_epochs(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st = open_store(t, NULL);
    append1(st, msg("alpha", "x"));
    append1(st, msg("alpha", "y"));
    append1(st, msg("beta", "z"));
    hr_store_topic_t a1 = info_of(st, "alpha"), b1 = info_of(st, "beta");
    uint64_t renewed = 0;
    assert_int_equal(hr_store_renew_epochs(st, &renewed), 0);
    assert_int_equal(renewed, 2);
    hr_store_close(&st);

    st = open_store(t, NULL);
    hr_store_topic_t a2 = info_of(st, "alpha"), b2 = info_of(st, "beta");
    assert_int_not_equal(a2.epoch, a1.epoch);
    assert_int_not_equal(b2.epoch, b1.epoch);
    assert_int_equal(a2.last_seq, 2);
    assert_int_equal(a2.first_seq, a1.first_seq);
    assert_int_equal(a2.topic_id, a1.topic_id);
    hr_store_result_t r = append1(st, msg("alpha", "w"));
    assert_int_equal(r.seq, 3);
    assert_int_equal(r.epoch, a2.epoch);
    hr_store_close(&st);
}

static void test_reopen_keeps_seq_and_epoch(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_topic_t a1, b1, a2, b2;
    hr_store_result_t r;
    hr_store_stats_t stats;

    st = open_store(t, NULL);
    for (int i = 0; i < 3; i++)
        append1(st, msg("alpha", "x"));
    append1(st, msg("beta", "y"));
    a1 = info_of(st, "alpha");
    b1 = info_of(st, "beta");
    hr_store_close(&st);

    st = open_store(t, NULL);
    a2 = info_of(st, "alpha");
    b2 = info_of(st, "beta");
    assert_memory_equal(&a1, &a2, sizeof a1);
    assert_memory_equal(&b1, &b2, sizeof b1);
    assert_int_not_equal(a2.epoch, b2.epoch);
    r = append1(st, msg("alpha", "x"));
    assert_int_equal(r.seq, 4);
    assert_int_equal(r.epoch, a1.epoch);
    /* A topic created after the reopen gets a fresh id. */
    append1(st, msg("gamma", "z"));
    assert_int_equal(info_of(st, "gamma").topic_id, b1.topic_id + 1);
    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_int_equal(stats.topics, 3);

    hr_store_close(&st);
}

static void test_invalid_input(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_msg_t m[4];
    hr_store_result_t r[4];
    char longname[257], event[66], ctype[257], key[257];
    hr_store_topic_t info;

    memset(longname, 't', 256);
    longname[256] = '\0';
    memset(event, 'e', 65);
    event[65] = '\0';
    memset(ctype, 'c', 256);
    ctype[256] = '\0';
    memset(key, 'k', 256);
    key[256] = '\0';

    st = open_store(t, NULL);
    append1(st, msg("exists", "x"));

    m[0] = msg("", "x");
    assert_int_equal(hr_store_append(st, m, 1, r), HR_E_INVALID_TOPIC);
    m[0] = msg("a/b", "x");
    assert_int_equal(hr_store_append(st, m, 1, r), HR_E_INVALID_TOPIC);
    m[0] = msg(longname, "x");
    assert_int_equal(hr_store_append(st, m, 1, r), HR_E_INVALID_TOPIC);
    m[0] = msg("ok", "x");
    m[0].event = event;
    m[0].event_len = 65;
    assert_int_equal(hr_store_append(st, m, 1, r), HR_E_INVALID_REQUEST);
    m[0] = msg("ok", "x");
    m[0].content_type = ctype;
    m[0].content_type_len = 256;
    assert_int_equal(hr_store_append(st, m, 1, r), HR_E_INVALID_REQUEST);
    m[0] = msg_key("ok", "x", key, 1000);
    assert_int_equal(hr_store_append(st, m, 1, r), HR_E_INVALID_REQUEST);
    assert_int_equal(hr_store_topic_info(st, "ok", 2, &info), HR_E_NOT_FOUND);

    /* A batch whose third message is invalid stores nothing at all. */
    m[0] = msg("exists", "1");
    m[1] = msg("newtopic", "2");
    m[2] = msg("exists", "3");
    m[2].event = event;
    m[2].event_len = 65;
    m[3] = msg("exists", "4");
    assert_int_equal(hr_store_append(st, m, 4, r), HR_E_INVALID_REQUEST);
    m[2] = msg("bad topic", "3");
    assert_int_equal(hr_store_append(st, m, 4, r), HR_E_INVALID_TOPIC);
    assert_int_equal(info_of(st, "exists").last_seq, 1);
    assert_int_equal(hr_store_topic_info(st, "newtopic", 8, &info), HR_E_NOT_FOUND);

    /* The limits themselves are accepted. */
    m[0] = msg_key(longname + 1, "x", key + 1, 1000); /* 255-byte topic and key */
    m[0].event = event + 1;
    m[0].event_len = 64;
    m[0].content_type = ctype + 1;
    m[0].content_type_len = 255;
    assert_int_equal(hr_store_append(st, m, 1, r), 0);
    assert_int_equal(r[0].seq, 1);
    {
        collect_t c = {0};
        assert_int_equal(read_all(st, longname + 1, 0, 0, 0, &c, NULL), 1);
        assert_int_equal(strlen(c.items[0].event), 64);
        assert_int_equal(strlen(c.items[0].ctype), 255);
        collect_free(&c);
    }
    assert_int_equal(append1(st, msg("exists", "x")).seq, 2);

    hr_store_close(&st);
}

static void test_map_full(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_options_t opts;
    hr_store_stats_t stats;
    hr_store_topic_t before, after;
    hr_store_msg_t m[4];
    hr_store_result_t r[4];
    collect_t c = {0};
    static char data[2001];
    char *huge;
    int rc = 0, batches = 0;

    memset(data, 'd', 2000);
    data[2000] = '\0';
    hr_store_options_default(&opts);
    opts.map_size = 256 * 1024;
    st = open_store(t, &opts);
    append1(st, msg("full", "seed"));
    while (batches < 1000) {
        before = info_of(st, "full");
        for (int i = 0; i < 4; i++)
            m[i] = msg("full", data);
        rc = hr_store_append(st, m, 4, r);
        if (rc != 0)
            break;
        batches++;
    }
    assert_int_equal(rc, HR_E_STORAGE_FULL);
    assert_true(batches > 5);
    after = info_of(st, "full");
    assert_memory_equal(&before, &after, sizeof before);

    /* A batch creating a topic next to a too-large message: neither is stored. */
    huge = hr_malloc(200 * 1024 + 1);
    memset(huge, 'h', 200 * 1024);
    huge[200 * 1024] = '\0';
    m[0] = msg("other", "x");
    m[1] = msg("full", huge);
    assert_int_equal(hr_store_append(st, m, 2, r), HR_E_STORAGE_FULL);
    hr_free(huge);
    assert_int_equal(hr_store_topic_info(st, "other", 5, &after), HR_E_NOT_FOUND);
    after = info_of(st, "full");
    assert_memory_equal(&before, &after, sizeof before);

    /* Reads still work. */
    {
        size_t n = 0;
        uint64_t last = 0;
        for (;;) {
            size_t got = read_all(st, "full", last, 100, 0, &c, NULL);
            if (got == 0)
                break;
            assert_int_equal(c.items[0].seq, last + 1);
            last = c.items[got - 1].seq;
            n += got;
        }
        assert_int_equal(n, before.last_seq);
        assert_int_equal(last, before.last_seq);
    }
    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_int_equal(stats.map_size, 256 * 1024);
    assert_true(stats.map_used <= stats.map_size);
    hr_store_close(&st);

    /* A restart with a bigger map recovers, and the sequence continues. */
    opts.map_size = 8 * 1024 * 1024;
    st = open_store(t, &opts);
    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_int_equal(stats.map_size, 8 * 1024 * 1024);
    for (int i = 0; i < 4; i++)
        m[i] = msg("full", data);
    assert_int_equal(hr_store_append(st, m, 4, r), 0);
    assert_int_equal(r[0].seq, before.last_seq + 1);
    assert_int_equal(r[3].seq, before.last_seq + 4);
    assert_int_equal(append1(st, msg("other", "x")).seq, 1);
    assert_int_equal(info_of(st, "full").epoch, before.epoch);

    collect_free(&c);
    hr_store_close(&st);
}

/* Another process grows the map while this one has the store open: LMDB reports
 * MDB_MAP_RESIZED, which the store absorbs by adopting the new size. */
static void test_map_resized(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_options_t small, big;
    hr_store_stats_t stats;
    collect_t c = {0};
    pid_t pid;
    int status;

    hr_store_options_default(&small);
    small.map_size = 512 * 1024;
    big = small;
    big.map_size = 16 * 1024 * 1024;
    st = open_store(t, &small);
    append1(st, msg("grow", "parent"));
    assert_int_equal(read_all(st, "grow", 0, 0, 0, &c, NULL), 1); /* a cached read txn */

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static uint8_t blob[100 * 1024];
        hr_store_t *cst = NULL;
        hr_store_msg_t m = {0};
        hr_store_result_t r;
        char path[96];

        store_path(t, path, sizeof path);
        if (hr_store_open(&cst, path, &big) != 0)
            _exit(1);
        m.topic = "grow";
        m.topic_len = 4;
        m.data = blob;
        m.data_len = sizeof blob;
        for (int i = 0; i < 40; i++) /* 4 MB: far past the parent's 512 KiB map */
            if (hr_store_append(cst, &m, 1, &r) != 0 || r.seq != (uint64_t)i + 2)
                _exit(2);
        hr_store_close(&cst);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);

    /* Reads and appends in the parent see the child's work. */
    assert_int_equal(info_of(st, "grow").last_seq, 41);
    assert_int_equal(read_all(st, "grow", 39, 0, 0, &c, NULL), 2);
    assert_seqs(&c, 40, 2);
    assert_int_equal(c.items[1].data_len, 100 * 1024);
    assert_int_equal(append1(st, msg("grow", "parent again")).seq, 42);
    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_int_equal(stats.map_size, 16 * 1024 * 1024);

    collect_free(&c);
    hr_store_close(&st);
}

/* ---- a full store recovers through retention ------------------------------------------- */

#define SMALL_MAP (UINT64_C(1) << 20)
#define BIG_DATA  (20 * 1024)

static uint8_t big_data[BIG_DATA];

/* A message of `len` bytes of big_data, patterned by `tag` so reads can check what they got. */
static hr_store_msg_t msg_len(const char *topic, size_t len, uint8_t tag)
{
    hr_store_msg_t m = msg(topic, "");
    memset(big_data, tag, len);
    m.data = big_data;
    m.data_len = len;
    return m;
}

static off_t data_file_size(const tmpdir_t *t)
{
    char path[128];
    struct stat sb;

    snprintf(path, sizeof path, "%s/store/data.mdb", t->path);
    assert_int_equal(stat(path, &sb), 0);
    return sb.st_size;
}

static hr_store_t *open_small(const tmpdir_t *t)
{
    hr_store_options_t opts;

    hr_store_options_default(&opts);
    opts.map_size = SMALL_MAP;
    opts.sync = false; /* page accounting does not depend on fsync; keeps the fills fast */
    return open_store(t, &opts);
}

/* Append `len`-byte messages round-robin over `topics` until the store refuses one with
 * HR_E_STORAGE_FULL; check the refusal changed nothing. Returns how many were appended. */
static uint64_t fill(hr_store_t *st, const char *const *topics, size_t ntopics, size_t len)
{
    uint64_t n = 0;

    for (;;) {
        const char *topic = topics[n % ntopics];
        hr_store_topic_t before = {0}, after = {0};
        hr_store_msg_t m = msg_len(topic, len, (uint8_t)n);
        hr_store_result_t r;
        int rc, irc;

        irc = hr_store_topic_info(st, topic, strlen(topic), &before);
        rc = hr_store_append(st, &m, 1, &r);
        if (rc != 0) {
            assert_int_equal(rc, HR_E_STORAGE_FULL);
            assert_int_equal(hr_store_topic_info(st, topic, strlen(topic), &after), irc);
            assert_memory_equal(&before, &after, sizeof before);
            return n;
        }
        n++;
        assert_true(n < 100000);
    }
}

/* Every topic holds its last `keep` messages, seqs first_seq..last_seq, with data intact. */
static void assert_kept(hr_store_t *st, const char *topic, uint64_t last_seq, uint64_t keep)
{
    collect_t c = {0};
    hr_store_topic_t info = info_of(st, topic);

    assert_int_equal(info.last_seq, last_seq);
    assert_int_equal(info.first_seq, last_seq - keep + 1);
    assert_int_equal(read_all(st, topic, 0, 0, 0, &c, NULL), keep);
    assert_seqs(&c, last_seq - keep + 1, keep);
    collect_free(&c);
}

/* After a trim, appends of both sizes succeed again and continue every topic's sequence. */
static void assert_appends_work(hr_store_t *st, const char *const *topics, size_t ntopics,
                                int rounds)
{
    collect_t c = {0};

    for (int i = 0; i < rounds; i++) {
        for (size_t ti = 0; ti < ntopics; ti++) {
            uint64_t last = info_of(st, topics[ti]).last_seq;
            assert_int_equal(append1(st, msg_len(topics[ti], BIG_DATA, 0xb1)).seq, last + 1);
            assert_int_equal(append1(st, msg_len(topics[ti], 1000, 0x5a)).seq, last + 2);
            assert_int_equal(read_all(st, topics[ti], last, 0, 0, &c, NULL), 2);
            assert_seqs(&c, last + 1, 2);
            assert_int_equal(c.items[0].data_len, BIG_DATA);
            assert_int_equal(c.items[0].data[0], 0xb1);
            assert_int_equal(c.items[0].data[BIG_DATA - 1], 0xb1);
            assert_int_equal(c.items[1].data_len, 1000);
            assert_int_equal(c.items[1].data[999], 0x5a);
        }
    }
    collect_free(&c);
}

/* map_used counts the pages holding data: with LMDB's own figures, the pages up to the last one
 * used, minus the free pages LMDB lists and minus the pages of that list itself. */
static void assert_map_used_matches_lmdb(const tmpdir_t *t, uint64_t map_used)
{
    char dir[96];
    MDB_env *env;
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_envinfo ei;
    MDB_stat es, fs;
    MDB_val k, v;
    uint64_t free_pages = 0;

    store_path(t, dir, sizeof dir);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
    assert_int_equal(mdb_env_open(env, dir, MDB_RDONLY, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    assert_int_equal(mdb_cursor_open(txn, 0, &cur), 0); /* FREE_DBI */
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        size_t first;
        assert_true(v.mv_size >= sizeof first);
        memcpy(&first, v.mv_data, sizeof first); /* an IDL: its first word is the count */
        free_pages += first;
    }
    mdb_cursor_close(cur);
    assert_int_equal(mdb_stat(txn, 0, &fs), 0);
    assert_int_equal(mdb_env_info(env, &ei), 0);
    assert_int_equal(mdb_env_stat(env, &es), 0);
    assert_int_equal(map_used, ((uint64_t)ei.me_last_pgno + 1 - free_pages - fs.ms_branch_pages -
                                fs.ms_leaf_pages - fs.ms_overflow_pages) *
                                   es.ms_psize);
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

/* The tester's case (a): ~1000-byte messages fill the map; trimming must still work (LMDB
 * needs free pages even to delete) and free room for new messages, small and large. */
static void test_full_recovers_small(void **state)
{
    static const char *const topics[] = {"fill.a", "fill.b", "fill.c"};
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_retention_t keep10 = {10, 0};
    hr_store_stats_t stats;
    uint64_t n, trimmed, last[3];
    bool more;

    st = open_small(t);
    n = fill(st, topics, 3, 1000);
    assert_true(n > 500); /* 1 MiB of ~1000-byte records */
    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_int_equal(stats.map_size, SMALL_MAP);
    assert_true(stats.map_used <= stats.map_size);
    assert_true(stats.map_used > stats.map_size - 16384); /* refused only when really full */
    /* Still full: the refused message is refused again, and a large one does not fit. */
    {
        hr_store_msg_t m = msg_len(topics[n % 3], 1000, 1);
        hr_store_result_t r;
        assert_int_equal(hr_store_append(st, &m, 1, &r), HR_E_STORAGE_FULL);
        m = msg_len("fill.a", BIG_DATA, 1);
        assert_int_equal(hr_store_append(st, &m, 1, &r), HR_E_STORAGE_FULL);
    }

    for (size_t i = 0; i < 3; i++)
        last[i] = info_of(st, topics[i]).last_seq;
    assert_int_equal(last[0] + last[1] + last[2], n);
    assert_int_equal(hr_store_trim(st, &keep10, 0, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, n - 30);
    assert_false(more);
    for (size_t i = 0; i < 3; i++)
        assert_kept(st, topics[i], last[i], 10);
    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_true(stats.map_used < stats.map_size / 4);

    /* The very next append reuses the freed pages: no other commit needed in between. */
    assert_appends_work(st, topics, 3, 4);

    /* And the cycle repeats: fill again, trim again, append again. */
    n = fill(st, topics, 3, 1000);
    assert_true(n > 300);
    for (size_t i = 0; i < 3; i++)
        last[i] = info_of(st, topics[i]).last_seq;
    assert_int_equal(hr_store_trim(st, &keep10, 0, 0, &trimmed, &more), 0);
    assert_int_equal(trimmed, n + 3 * 4 * 2);
    for (size_t i = 0; i < 3; i++)
        assert_kept(st, topics[i], last[i], 10);
    assert_appends_work(st, topics, 3, 2);

    assert_int_equal(hr_store_stats(st, &stats), 0);
    hr_store_close(&st);
    assert_map_used_matches_lmdb(t, stats.map_used);
}

/* The tester's case (b): 20 KB messages fill the map; after the trim the next 20 KB append must
 * succeed at once, although LMDB reuses no page freed by the latest commit. A read before the
 * trim leaves the handle's reset read transaction behind: it must not pin the old pages. */
static void test_full_recovers_large(void **state)
{
    static const char *const topics[] = {"big"};
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_retention_t keep10 = {10, 0};
    hr_store_stats_t stats;
    collect_t c = {0};
    uint64_t n, trimmed;
    off_t size;

    st = open_small(t);
    n = fill(st, topics, 1, BIG_DATA);
    assert_true(n > 30); /* 1 MiB of 20 KB records (6 pages each) */
    assert_true(n < 52);
    assert_int_equal(info_of(st, "big").last_seq, n);
    assert_int_equal(read_all(st, "big", n - 1, 0, 0, &c, NULL), 1);
    assert_int_equal(c.items[0].data_len, BIG_DATA);

    assert_int_equal(hr_store_trim(st, &keep10, 0, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, n - 10);
    assert_kept(st, "big", n, 10);
    /* The appends reuse the freed pages rather than growing the data file into the headroom:
     * LMDB hands out pages freed by a commit only from the second commit after it, so this
     * shows the store made the trim's pages reusable at once. */
    size = data_file_size(t);
    assert_appends_work(st, topics, 1, 8);
    assert_int_equal(data_file_size(t), size);
    assert_int_equal(info_of(st, "big").last_seq, n + 16);

    /* A trim that stops on its budget frees room too, one slice at a time. */
    n = n + 16 + fill(st, topics, 1, BIG_DATA);
    assert_int_equal(hr_store_trim(st, &keep10, 0, 5, &trimmed, NULL), 0);
    assert_int_equal(trimmed, 5);
    for (int i = 0; i < 4; i++)
        assert_int_equal(append1(st, msg_len("big", BIG_DATA, 7)).seq, n + 1 + (uint64_t)i);

    assert_int_equal(hr_store_stats(st, &stats), 0);
    assert_true(stats.map_used <= stats.map_size);
    collect_free(&c);
    hr_store_close(&st);
    assert_map_used_matches_lmdb(t, stats.map_used);
}

/* A full store reopened with the same map size recovers through trimming too. */
static void test_full_reopen_recovers(void **state)
{
    static const char *const topics[] = {"re.a", "re.b"};
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_retention_t keep10 = {10, 0};
    uint64_t n, trimmed;
    hr_store_topic_t a, b;

    st = open_small(t);
    n = fill(st, topics, 2, 1000);
    hr_store_close(&st);

    st = open_small(t);
    a = info_of(st, "re.a");
    b = info_of(st, "re.b");
    assert_int_equal(a.last_seq + b.last_seq, n);
    {
        /* The message fill() saw refused is refused still. */
        hr_store_msg_t m = msg_len(topics[n % 2], 1000, 1);
        hr_store_result_t r;
        assert_int_equal(hr_store_append(st, &m, 1, &r), HR_E_STORAGE_FULL);
    }
    assert_int_equal(hr_store_trim(st, &keep10, 0, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, n - 20);
    assert_kept(st, "re.a", a.last_seq, 10);
    assert_kept(st, "re.b", b.last_seq, 10);
    assert_appends_work(st, topics, 2, 4);
    assert_int_equal(info_of(st, "re.a").epoch, a.epoch);
    hr_store_close(&st);
}

/* A store filled to LMDB's own MDB_MAP_FULL, with no page to spare (as a version of the store
 * without headroom left it), recovers once reopened with the same map size. */
static void test_full_to_the_brim_recovers(void **state)
{
    static const char *const topics[] = {"brim"};
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_retention_t keep10 = {10, 0};
    char dir[96];
    MDB_env *env;
    MDB_dbi dbi_topics, dbi_messages;
    uint8_t rec[40], key[16], val[10 + 1000];
    uint64_t last = 0, trimmed;
    int rc = 0;

    st = open_small(t);
    append1(st, msg("brim", "first"));
    hr_store_close(&st);

    /* Behind the store's back, with a map of exactly the configured size: append records the
     * way the store does until LMDB itself runs out of pages. */
    store_path(t, dir, sizeof dir);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
    assert_int_equal(mdb_env_set_mapsize(env, SMALL_MAP), 0);
    assert_int_equal(mdb_env_open(env, dir, MDB_NOSYNC, 0600), 0);
    memset(val, 0, sizeof val);
    memset(val + 10, 'b', 1000);
    for (;;) {
        MDB_txn *txn;
        MDB_val k = {4, "brim"}, v;

        assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
        assert_int_equal(mdb_dbi_open(txn, "topics", 0, &dbi_topics), 0);
        assert_int_equal(mdb_dbi_open(txn, "messages", 0, &dbi_messages), 0);
        assert_int_equal(mdb_get(txn, dbi_topics, &k, &v), 0);
        assert_int_equal(v.mv_size, sizeof rec);
        memcpy(rec, v.mv_data, sizeof rec);
        last = 0;
        for (int i = 7; i >= 0; i--)
            last = (last << 8) | rec[16 + i]; /* last_seq, u64 LE at offset 16 */
        last++;
        for (int i = 0; i < 8; i++) {
            key[i] = i == 7; /* topic id 1, big-endian */
            key[8 + i] = (uint8_t)(last >> (8 * (7 - i)));
            rec[16 + i] = (uint8_t)(last >> (8 * i));
        }
        val[0] = 0xe8; /* time_ms 1000, u64 LE */
        val[1] = 0x03;
        k = (MDB_val){16, key};
        v = (MDB_val){sizeof val, val};
        rc = mdb_put(txn, dbi_messages, &k, &v, MDB_APPEND);
        if (rc == 0) {
            k = (MDB_val){4, "brim"};
            v = (MDB_val){sizeof rec, rec};
            rc = mdb_put(txn, dbi_topics, &k, &v, 0);
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != 0)
            break;
    }
    assert_int_equal(rc, MDB_MAP_FULL);
    mdb_env_close(env);
    last--; /* the last attempt failed */
    assert_true(last > 500);

    st = open_small(t);
    assert_int_equal(info_of(st, "brim").last_seq, last);
    assert_int_equal(hr_store_trim(st, &keep10, 0, 0, &trimmed, NULL), 0);
    assert_int_equal(trimmed, last - 10);
    assert_kept(st, "brim", last, 10);
    assert_appends_work(st, topics, 1, 6);
    hr_store_close(&st);
}

/* The broker's loop in miniature: publish forever under a count retention, trimming on a timer
 * and whenever the store is full. Once the first trim has run, no publish stays refused. */
static void test_full_steady_state(void **state)
{
    static const char *const topics[] = {"s.a", "s.b", "s.c"};
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_retention_t keep10 = {10, 0};
    uint64_t next[3] = {1, 1, 1}, trims = 0, full = 0;

    st = open_small(t);
    for (int i = 0; i < 6000; i++) {
        size_t ti = (size_t)i % 3;
        hr_store_msg_t m = msg_len(topics[ti], i % 7 == 0 ? BIG_DATA : 1000, (uint8_t)i);
        hr_store_result_t r;
        int rc = hr_store_append(st, &m, 1, &r);

        if (rc == HR_E_STORAGE_FULL) {
            full++;
            assert_int_equal(hr_store_trim(st, &keep10, 0, 0, NULL, NULL), 0);
            trims++;
            rc = hr_store_append(st, &m, 1, &r);
        }
        assert_int_equal(rc, 0);
        assert_int_equal(r.seq, next[ti]);
        next[ti]++;
        if (i % 500 == 499) {
            assert_int_equal(hr_store_trim(st, &keep10, 0, 0, NULL, NULL), 0);
            trims++;
        }
    }
    assert_true(full > 0); /* the timer alone trims too rarely for this map */
    assert_true(trims > full);
    for (size_t ti = 0; ti < 3; ti++)
        assert_int_equal(info_of(st, topics[ti]).last_seq, 2000);
    hr_store_close(&st);
}

/* A random workload in a 32 MiB map: batches of up to 16 messages over 10 topics, a quarter of
 * them up to 60 KB, under a retention of 50 per topic, trimming whenever the store is full. The
 * headroom fills with scattered free pages (large records need runs of consecutive pages), and
 * a trim deleting most of the store would need a run of pages for the list of the pages it
 * frees: the store then trims in smaller transactions. Every trim succeeds, and so does every
 * append retried after one. */
static void test_full_random_workload(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    hr_store_options_t opts;
    hr_store_retention_t keep50 = {50, 0};
    static const char *const names[] = {"r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9"};
    static uint8_t data[60001];
    uint64_t x = UINT64_C(88172645463325252), next[10], full = 0;

    hr_store_options_default(&opts);
    opts.map_size = 32 << 20;
    opts.sync = false;
    st = open_store(t, &opts);
    for (size_t i = 0; i < 10; i++)
        next[i] = 1;
    for (int it = 0; it < 1500; it++) {
        hr_store_msg_t m[16];
        hr_store_result_t r[16];
        unsigned n;
        int rc;

#define RND() (x ^= x << 13, x ^= x >> 7, x ^= x << 17, x)
        n = 1 + (unsigned)(RND() % 16);
        for (unsigned i = 0; i < n; i++) {
            const char *name = names[RND() % 10];
            size_t len = RND() % 4 == 0 ? RND() % sizeof data : RND() % 2000;
            m[i] = msg(name, "");
            m[i].data = data;
            m[i].data_len = len;
        }
#undef RND
        rc = hr_store_append(st, m, n, r);
        if (rc == HR_E_STORAGE_FULL) {
            bool more = true;
            full++;
            while (more)
                assert_int_equal(hr_store_trim(st, &keep50, 0, 0, NULL, &more), 0);
            rc = hr_store_append(st, m, n, r);
        }
        assert_int_equal(rc, 0);
        for (unsigned i = 0; i < n; i++) {
            size_t ti = (size_t)(m[i].topic[1] - '0');
            assert_int_equal(r[i].seq, next[ti]);
            next[ti]++;
        }
    }
    assert_true(full >= 3);
    hr_store_close(&st);
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static void test_corrupt(void **state)
{
    tmpdir_t *t = *state;
    char path[160], dir[128];
    hr_store_t *st = (hr_store_t *)&st; /* open must NULL it on failure */
    static uint8_t garbage[16384];
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t fmt[4] = {2, 0, 0, 0};
    MDB_val k, v;

    /* A data.mdb full of garbage. */
    snprintf(dir, sizeof dir, "%s/garbage", t->path);
    assert_int_equal(mkdir(dir, 0700), 0);
    memset(garbage, 0xa5, sizeof garbage);
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    write_file(path, garbage, sizeof garbage);
    assert_int_equal(hr_store_open(&st, dir, NULL), HR_E_CORRUPT);
    assert_null(st);
    /* A short one. */
    write_file(path, "not an lmdb file", 16);
    assert_int_equal(hr_store_open(&st, dir, NULL), HR_E_CORRUPT);

    /* A valid LMDB environment some other program wrote. */
    snprintf(dir, sizeof dir, "%s/foreign", t->path);
    assert_int_equal(mkdir(dir, 0700), 0);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
    k = (MDB_val){3, "foo"};
    v = (MDB_val){3, "bar"};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    assert_int_equal(hr_store_open(&st, dir, NULL), HR_E_CORRUPT);

    /* A Herald store with another format version. */
    st = open_store(t, NULL);
    append1(st, msg("x", "y"));
    hr_store_close(&st);
    store_path(t, dir, sizeof dir);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
    k = (MDB_val){6, "format"};
    v = (MDB_val){4, fmt};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    assert_int_equal(hr_store_open(&st, dir, NULL), HR_E_CORRUPT);
    assert_null(st);
}

/* Records damaged behind Herald's back are reported, not misread. */
static void test_corrupt_record(void **state)
{
    tmpdir_t *t = *state;
    hr_store_t *st;
    collect_t c = {0};
    hr_store_topic_t info;
    char dir[128];
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k, v;
    uint8_t key[16] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2}; /* topic 1, seq 2 */

    st = open_store(t, NULL);
    append1(st, msg("t", "one"));
    append1(st, msg("t", "two"));
    append1(st, msg("u", "three"));
    assert_int_equal(info_of(st, "t").topic_id, 1);
    hr_store_close(&st);

    store_path(t, dir, sizeof dir);
    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "messages", 0, &dbi), 0);
    k = (MDB_val){16, key};
    v = (MDB_val){5, "short"}; /* shorter than the 10-byte header */
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_dbi_open(txn, "topics", 0, &dbi), 0);
    k = (MDB_val){1, "u"};
    v = (MDB_val){3, "bad"};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);

    st = open_store(t, NULL);
    assert_int_equal(hr_store_read(st, "t", 1, 0, 0, 0, collect_cb, &c, NULL), HR_E_CORRUPT);
    assert_seqs(&c, 1, 1); /* seq 1 was fine and delivered before the damage was found */
    assert_int_equal(hr_store_topic_info(st, "u", 1, &info), HR_E_CORRUPT);
    assert_int_equal(hr_store_append(st, &(hr_store_msg_t){.topic = "u", .topic_len = 1}, 1,
                                     &(hr_store_result_t){0}),
                     HR_E_CORRUPT);
    /* Reads and appends elsewhere are unaffected. */
    assert_int_equal(append1(st, msg("v", "fine")).seq, 1);

    collect_free(&c);
    hr_store_close(&st);
}

static void test_not_a_directory(void **state)
{
    tmpdir_t *t = *state;
    char file[96], under[128];
    hr_store_t *st = NULL;

    snprintf(file, sizeof file, "%s/file", t->path);
    write_file(file, "x", 1);
    snprintf(under, sizeof under, "%s/store", file);
    assert_int_equal(hr_store_open(&st, under, NULL), -ENOTDIR);
    assert_null(st);
    assert_int_equal(hr_store_open(&st, file, NULL), -ENOTDIR);
    assert_null(st);
}

/* ---- crash test -------------------------------------------------------------------------- */

#define CRASH_TOPICS    3
#define CRASH_MAX_DATA  3000
#define CRASH_MAX_BATCH 32

static const char *const crash_topics[CRASH_TOPICS] = {"crash.0", "crash.1", "crash:two"};

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

/* The data of message `seq` of crash topic `ti`: length and bytes follow from (ti, seq). */
static size_t crash_data(unsigned ti, uint64_t seq, uint8_t *out)
{
    uint64_t h = mix64(((uint64_t)ti << 56) ^ seq ^ UINT64_C(0x9e3779b97f4a7c15));
    size_t len = (size_t)(h % CRASH_MAX_DATA);
    for (size_t i = 0; i < len; i++) {
        h = mix64(h + i);
        out[i] = (uint8_t)h;
    }
    return len;
}

typedef struct {
    uint32_t topic;
    uint32_t pad;
    uint64_t seq;
} crash_rec_t;

/* The child: append random batches forever, reporting each committed message. Never returns;
 * any surprise exits with a code the parent would see instead of SIGKILL. */
static void crash_child(const char *dir, int fd, uint64_t rng)
{
    static uint8_t data[CRASH_MAX_BATCH][CRASH_MAX_DATA];
    hr_store_msg_t m[CRASH_MAX_BATCH];
    hr_store_result_t r[CRASH_MAX_BATCH];
    crash_rec_t rec[CRASH_MAX_BATCH];
    uint64_t next[CRASH_TOPICS], want[CRASH_MAX_BATCH];
    hr_store_t *st = NULL;

    if (hr_store_open(&st, dir, NULL) != 0)
        _exit(10);
    for (unsigned ti = 0; ti < CRASH_TOPICS; ti++) {
        hr_store_topic_t info;
        int rc = hr_store_topic_info(st, crash_topics[ti], strlen(crash_topics[ti]), &info);
        if (rc != 0 && rc != HR_E_NOT_FOUND)
            _exit(11);
        next[ti] = info.last_seq + 1;
    }
    for (;;) {
        size_t n;
        rng = mix64(rng);
        n = 1 + (size_t)(rng % CRASH_MAX_BATCH);
        for (size_t i = 0; i < n; i++) {
            unsigned ti;
            rng = mix64(rng);
            ti = (unsigned)(rng % CRASH_TOPICS);
            want[i] = next[ti]++;
            memset(&m[i], 0, sizeof m[i]);
            m[i].topic = crash_topics[ti];
            m[i].topic_len = strlen(crash_topics[ti]);
            m[i].data = data[i];
            m[i].data_len = crash_data(ti, want[i], data[i]);
            m[i].time_ms = want[i];
            rec[i].topic = ti;
            rec[i].pad = 0;
            rec[i].seq = want[i];
        }
        if (hr_store_append(st, m, n, r) != 0)
            _exit(12);
        for (size_t i = 0; i < n; i++)
            if (r[i].seq != want[i])
                _exit(13);
        /* At most 512 bytes: below PIPE_BUF, so the write is atomic. */
        if (write(fd, rec, n * sizeof rec[0]) != (ssize_t)(n * sizeof rec[0]))
            _exit(14);
    }
}

static uint64_t now_ms_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

typedef struct {
    unsigned ti;
    uint64_t next;
    bool bad;
    uint8_t buf[CRASH_MAX_DATA];
} crash_verify_t;

static int crash_verify_cb(void *ctx, const hr_store_entry_t *e)
{
    crash_verify_t *v = ctx;
    size_t len = crash_data(v->ti, v->next, v->buf);

    if (e->seq != v->next || e->data_len != len || memcmp(e->data, v->buf, len) != 0 ||
        e->time_ms != e->seq)
        v->bad = true;
    v->next++;
    return v->bad;
}

static void test_crash(void **state)
{
    tmpdir_t *t = *state;
    char dir[96];
    uint64_t rng = mix64((uint64_t)getpid() ^ now_ms_mono());
    size_t total_reported = 0;

    store_path(t, dir, sizeof dir);
    for (int cycle = 0; cycle < 3; cycle++) {
        int fds[2], status;
        pid_t pid;
        uint8_t *buf = NULL;
        size_t len = 0, cap = 0;
        uint64_t deadline, max_reported[CRASH_TOPICS] = {0};
        hr_store_t *st;

        assert_int_equal(pipe(fds), 0);
        rng = mix64(rng);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(dir, fds[1], rng);
        }
        close(fds[1]);
        rng = mix64(rng);
        deadline = now_ms_mono() + 50 + rng % 251;
        for (;;) {
            struct pollfd p = {fds[0], POLLIN, 0};
            uint64_t now = now_ms_mono();
            ssize_t got;
            if (now >= deadline)
                break;
            if (poll(&p, 1, (int)(deadline - now)) <= 0)
                continue;
            if (cap - len < 4096) {
                cap = cap ? cap * 2 : 65536;
                buf = hr_realloc(buf, cap);
            }
            got = read(fds[0], buf + len, cap - len);
            assert_true(got > 0); /* EOF here means the child died on its own */
            len += (size_t)got;
        }
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);
        for (;;) { /* drain what it reported before dying */
            ssize_t got;
            if (cap - len < 4096) {
                cap = cap ? cap * 2 : 65536;
                buf = hr_realloc(buf, cap);
            }
            got = read(fds[0], buf + len, cap - len);
            assert_true(got >= 0);
            if (got == 0)
                break;
            len += (size_t)got;
        }
        close(fds[0]);
        assert_int_equal(len % sizeof(crash_rec_t), 0);
        for (size_t off = 0; off < len; off += sizeof(crash_rec_t)) {
            crash_rec_t rec;
            memcpy(&rec, buf + off, sizeof rec);
            assert_true(rec.topic < CRASH_TOPICS);
            if (rec.seq > max_reported[rec.topic])
                max_reported[rec.topic] = rec.seq;
            total_reported++;
        }
        hr_free(buf);

        /* Every reported message is there with its bytes; so is everything up to last_seq. */
        st = open_store(t, NULL);
        for (unsigned ti = 0; ti < CRASH_TOPICS; ti++) {
            const char *name = crash_topics[ti];
            hr_store_topic_t info;
            crash_verify_t *v = hr_calloc(1, sizeof *v);
            uint8_t data[CRASH_MAX_DATA];
            hr_store_msg_t m = {0};
            hr_store_result_t r;
            int rc;

            v->ti = ti;
            v->next = 1;
            rc = hr_store_read(st, name, strlen(name), 0, 0, 0, crash_verify_cb, v, &info);

            if (rc == HR_E_NOT_FOUND) {
                assert_int_equal(max_reported[ti], 0);
                info.last_seq = 0;
            } else {
                assert_int_equal(rc, 0);
                assert_false(v->bad);
                assert_int_equal(info.first_seq, 1);
                assert_int_equal(v->next, info.last_seq + 1);
                assert_true(info.last_seq >= max_reported[ti]);
            }
            /* The next append continues right after the last committed seq. */
            m.topic = name;
            m.topic_len = strlen(name);
            m.data = data;
            m.data_len = crash_data(ti, info.last_seq + 1, data);
            m.time_ms = info.last_seq + 1;
            assert_int_equal(hr_store_append(st, &m, 1, &r), 0);
            assert_int_equal(r.seq, info.last_seq + 1);
            hr_free(v);
        }
        hr_store_close(&st);
    }
    assert_true(total_reported > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_default),
        cmocka_unit_test_setup_teardown(test_order_single_topic, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_batch_across_topics, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_read_edges, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_read_limits, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_large_message, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_trim_count, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_trim_age, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_trim_everything_then_append, tmpdir_setup,
                                        tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_trim_budget, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_dedupe, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_dedupe_trim_budget, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_seq_and_epoch, tmpdir_setup,
                                        tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_invalid_input, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_map_full, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_map_resized, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_full_recovers_small, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_full_recovers_large, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_full_reopen_recovers, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_full_to_the_brim_recovers, tmpdir_setup,
                                        tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_full_steady_state, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_full_random_workload, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_record, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_not_a_directory, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_crash, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_cluster_identity, tmpdir_setup, tmpdir_teardown),
        cmocka_unit_test_setup_teardown(test_renew_epochs, tmpdir_setup, tmpdir_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
