#include "cursor.h"

#include "hr_alloc.h"
#include "hr_error.h"
#include "partition.h"

#include <errno.h>
#include <openssl/evp.h>
#include <string.h>

#define HR_CURSOR_ENTRY_MAX_BYTES 26 /* topic_hash 8 + epoch 8 + seq varint <= 10 */
#define HR_CURSOR_CHECK_BYTES     4
#define HR_CURSOR_BODY_MAX                                                                         \
    (HR_CURSOR_MAX_ENTRIES * HR_CURSOR_ENTRY_MAX_BYTES + HR_CURSOR_CHECK_BYTES)

/* FNV-1a 32 (offset basis 0x811c9dc5, prime 0x01000193): the cursor's check. It is not a MAC:
 * it catches truncation and accidental edits; a client forging a position only hurts itself. */
static uint32_t fnv1a32(const uint8_t *p, size_t len)
{
    uint32_t h = 0x811c9dc5u;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

static uint8_t *put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        *p++ = (uint8_t)(v >> (8 * i));
    }
    return p;
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Unsigned LEB128, accepted only in the form put_varint writes: at most 10 bytes, no bits
 * beyond 64 (the 10th byte can only be 0x01), and no redundant final 0x00 group. */
static int get_varint(const uint8_t *p, size_t len, uint64_t *v, size_t *used)
{
    uint64_t x = 0;

    for (size_t i = 0; i < len && i < 10; i++) {
        uint8_t b = p[i];
        if (i == 9 && b > 1)
            return -1;
        x |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            if (b == 0 && i > 0)
                return -1;
            *v = x;
            *used = i + 1;
            return 0;
        }
    }
    return -1;
}

/* The 6-bit value of a base64url character (RFC 4648 §5, Table 2), or -1. */
static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Bytes that `chars` characters of unpadded base64 decode to; `chars % 4` must not be 1. */
static size_t b64_decoded_len(size_t chars)
{
    return chars / 4 * 3 + (chars % 4 == 0 ? 0 : chars % 4 - 1);
}

/*
 * Strict unpadded base64url (RFC 4648 §5) through OpenSSL's standard-alphabet decoder: the
 * text is checked and translated a block at a time, padding is restored for the last quantum,
 * and the true length comes from the character count. Anything but the one text that encodes
 * a byte string is refused: other characters (whitespace, '=', '+', '/'), a length no byte
 * string encodes to (chars % 4 == 1), and nonzero unused bits in the last character.
 */
static int b64url_decode(const char *text, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    const unsigned char *t = (const unsigned char *)text;
    static const char std_alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char block[256]; /* a multiple of 4 characters */
    unsigned char quantum[3 * sizeof block / 4];
    size_t o = 0;

    if (len % 4 == 1 || b64_decoded_len(len) > cap)
        return -1;
    for (size_t i = 0; i < len;) {
        size_t k = len - i < sizeof block ? len - i : sizeof block;
        size_t padded = (k + 3) / 4 * 4;
        size_t bytes = b64_decoded_len(k);
        int v = 0;

        for (size_t j = 0; j < k; j++) {
            v = b64url_value(t[i + j]);
            if (v < 0)
                return -1;
            block[j] = (unsigned char)std_alphabet[v];
        }
        if (k % 4 == 2 && (v & 0x0f) != 0)
            return -1;
        if (k % 4 == 3 && (v & 0x03) != 0)
            return -1;
        memset(block + k, '=', padded - k);
        if (EVP_DecodeBlock(quantum, block, (int)padded) != (int)(padded / 4 * 3))
            return -1;
        memcpy(out + o, quantum, bytes);
        o += bytes;
        i += k;
    }
    *out_len = o;
    return 0;
}

/* Unpadded base64url of `len` bytes into `out`, which has room for EVP_EncodeBlock's padded
 * output and its NUL; returns the text length. */
static size_t b64url_encode(const uint8_t *bytes, size_t len, char *out)
{
    size_t n = (size_t)EVP_EncodeBlock((unsigned char *)out, bytes, (int)len);

    while (n > 0 && out[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    out[n] = '\0';
    return n;
}

/* Index of the first entry whose topic_hash is >= `topic_hash`. */
static size_t lower_bound(const hr_cursor_t *c, uint64_t topic_hash)
{
    size_t lo = 0, hi = c->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->entries[mid].topic_hash < topic_hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static void reserve(hr_cursor_t *c, size_t need)
{
    size_t cap = c->cap > 0 ? c->cap : 4;

    if (need <= c->cap)
        return;
    while (cap < need)
        cap *= 2;
    c->entries = hr_realloc(c->entries, cap * sizeof c->entries[0]);
    c->cap = cap;
}

void hr_cursor_init(hr_cursor_t *cursor)
{
    cursor->kind = HR_CURSOR_LATEST;
    cursor->n = 0;
    cursor->cap = 0;
    cursor->entries = NULL;
}

void hr_cursor_reset(hr_cursor_t *cursor)
{
    hr_free(cursor->entries);
    hr_cursor_init(cursor);
}

static int is_word(const char *text, size_t len, const char *word)
{
    return len == strlen(word) && memcmp(text, word, len) == 0;
}

int hr_cursor_parse(hr_cursor_t *cursor, const char *text, size_t len)
{
    uint8_t body[HR_CURSOR_BODY_MAX];
    size_t blen, off = 0, end;

    cursor->kind = HR_CURSOR_LATEST;
    cursor->n = 0;
    if (len > HR_CURSOR_MAX_TEXT)
        return HR_E_INVALID_CURSOR;
    if (len == 0 || is_word(text, len, "latest"))
        return 0;
    if (is_word(text, len, "earliest")) {
        cursor->kind = HR_CURSOR_EARLIEST;
        return 0;
    }
    if (text[0] != HR_CURSOR_VERSION_CHAR)
        return HR_E_INVALID_CURSOR;
    if (b64url_decode(text + 1, len - 1, body, sizeof body, &blen) != 0)
        goto fail;
    if (blen < HR_CURSOR_CHECK_BYTES)
        goto fail;
    end = blen - HR_CURSOR_CHECK_BYTES;
    if (fnv1a32(body, end) != ((uint32_t)body[end] << 24 | (uint32_t)body[end + 1] << 16 |
                               (uint32_t)body[end + 2] << 8 | body[end + 3]))
        goto fail;

    /* Every entry takes at least 17 bytes, which bounds the allocation before the loop. */
    reserve(cursor, end / 17 < HR_CURSOR_MAX_ENTRIES ? end / 17 : HR_CURSOR_MAX_ENTRIES);
    while (off < end) {
        hr_cursor_entry_t e;
        size_t used;

        if (cursor->n == HR_CURSOR_MAX_ENTRIES || end - off < 16)
            goto fail;
        e.topic_hash = get_be64(body + off);
        e.epoch = get_be64(body + off + 8);
        off += 16;
        if (get_varint(body + off, end - off, &e.seq, &used) != 0)
            goto fail;
        off += used;
        if (cursor->n > 0 && e.topic_hash <= cursor->entries[cursor->n - 1].topic_hash)
            goto fail;
        cursor->entries[cursor->n++] = e;
    }
    cursor->kind = HR_CURSOR_POSITIONS;
    return 0;

fail:
    cursor->kind = HR_CURSOR_LATEST;
    cursor->n = 0;
    return HR_E_INVALID_CURSOR;
}

int hr_cursor_format(const hr_cursor_t *cursor, char *buf, size_t cap, size_t *len)
{
    uint8_t body[HR_CURSOR_BODY_MAX];
    uint8_t *p = body;
    const char *word;
    size_t n;
    uint32_t check;

    if (cap < HR_CURSOR_TEXT_CAP(cursor->n))
        return -ENOSPC;
    switch (cursor->kind) {
    case HR_CURSOR_LATEST:
        word = "latest";
        goto write_word;
    case HR_CURSOR_EARLIEST:
        word = "earliest";
        goto write_word;
    case HR_CURSOR_POSITIONS:
        break;
    }
    /* Only reachable by filling the struct by hand: hr_cursor_set and parse never exceed it. */
    if (cursor->n > HR_CURSOR_MAX_ENTRIES)
        return HR_E_INVALID_CURSOR;
    for (size_t i = 0; i < cursor->n; i++) {
        p = put_be64(p, cursor->entries[i].topic_hash);
        p = put_be64(p, cursor->entries[i].epoch);
        p = put_varint(p, cursor->entries[i].seq);
    }
    check = fnv1a32(body, (size_t)(p - body));
    *p++ = (uint8_t)(check >> 24);
    *p++ = (uint8_t)(check >> 16);
    *p++ = (uint8_t)(check >> 8);
    *p++ = (uint8_t)check;
    /* HR_CURSOR_TEXT_CAP leaves room for the version character, the padded encoding of the
     * largest body and the NUL, so EVP_EncodeBlock can write straight into `buf`. */
    buf[0] = HR_CURSOR_VERSION_CHAR;
    n = 1 + b64url_encode(body, (size_t)(p - body), buf + 1);
    if (len != NULL)
        *len = n;
    return 0;

write_word:
    n = strlen(word);
    memcpy(buf, word, n + 1);
    if (len != NULL)
        *len = n;
    return 0;
}

const hr_cursor_entry_t *hr_cursor_find(const hr_cursor_t *cursor, uint64_t topic_hash)
{
    size_t i = lower_bound(cursor, topic_hash);

    if (i < cursor->n && cursor->entries[i].topic_hash == topic_hash)
        return &cursor->entries[i];
    return NULL;
}

int hr_cursor_set(hr_cursor_t *cursor, uint64_t topic_hash, uint64_t epoch, uint64_t seq)
{
    size_t i = lower_bound(cursor, topic_hash);
    hr_cursor_entry_t *e;

    if (i < cursor->n && cursor->entries[i].topic_hash == topic_hash) {
        e = &cursor->entries[i];
    } else {
        if (cursor->n >= HR_CURSOR_MAX_ENTRIES)
            return HR_E_INVALID_CURSOR;
        reserve(cursor, cursor->n + 1);
        e = &cursor->entries[i];
        memmove(e + 1, e, (cursor->n - i) * sizeof *e);
        cursor->n++;
        e->topic_hash = topic_hash;
    }
    e->epoch = epoch;
    e->seq = seq;
    cursor->kind = HR_CURSOR_POSITIONS;
    return 0;
}

int hr_cursor_format_one(const char *topic, size_t topic_len, uint64_t epoch, uint64_t seq,
                         char *buf, size_t cap, size_t *len)
{
    hr_cursor_entry_t entry = {hr_fnv1a64(topic, topic_len), epoch, seq};
    hr_cursor_t one = {HR_CURSOR_POSITIONS, 1, 1, &entry};

    return hr_cursor_format(&one, buf, cap, len);
}
