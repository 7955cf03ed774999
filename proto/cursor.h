/*
 * hr_cursor — the opaque, URL-safe resume position of DESIGN.md invariant 4 and §Client
 * contract. A cursor records, for each topic of a subscription, the topic log's epoch and the
 * last delivered seq. Clients never build or parse one; edges and the CLI validate every cursor
 * they receive with hr_cursor_parse.
 *
 * Text forms:
 *   "" or "latest"  HR_CURSOR_LATEST    only messages published from now on
 *   "earliest"      HR_CURSOR_EARLIEST  from the oldest retained message
 *   "a" + base64url (RFC 4648 §5, no padding) of the binary body below: HR_CURSOR_POSITIONS
 *
 * Binary body of format 'a':
 *   per topic, in strictly increasing topic_hash order (one entry per topic):
 *     topic_hash  u64 big-endian  (hr_fnv1a64 of the topic name, never the name itself)
 *     epoch       u64 big-endian
 *     seq         unsigned LEB128 varint, at most 10 bytes, canonical (no redundant 0x80 bytes)
 *   check         u32 big-endian: FNV-1a 32 of the preceding bytes, so a truncated or edited
 *                 cursor is recognised rather than misapplied
 * One topic costs 17-26 bytes binary, about 23-35 characters; 64 topics stay under 2 KiB while
 * every seq is below 2^49 (a varint of at most 7 bytes), and take at most 2225 characters with
 * seqs up to UINT64_MAX.
 * A format-'a' cursor with no entries (just the check) is valid: the position of a
 * subscription that has no topic position yet. It parses as HR_CURSOR_POSITIONS with n = 0, and
 * every topic in it starts as under HR_CURSOR_LATEST.
 * Only the one canonical text of a body is accepted, so format(parse(text)) == text for every
 * text that parses, except "" (which formats as "latest").
 *
 * Pure functions; any thread. Not thread-safe on one hr_cursor_t.
 */
#ifndef HR_CURSOR_H
#define HR_CURSOR_H

#include <stddef.h>
#include <stdint.h>

#define HR_CURSOR_MAX_ENTRIES  256   /* topics in one cursor */
#define HR_CURSOR_MAX_TEXT     12000 /* bytes of text accepted by hr_cursor_parse */
#define HR_CURSOR_VERSION_CHAR 'a'   /* first character of format 'a' */

/* Bytes of buffer that hr_cursor_format needs for `n` entries, including the NUL: the version
 * character, the padded base64 of the largest body (26 bytes an entry plus the 4-byte check)
 * and the NUL, plus one spare byte. HR_CURSOR_TEXT_CAP(0) also holds "latest" and "earliest". */
#define HR_CURSOR_TEXT_CAP(n) (2 + (((size_t)(n)*26 + 4 + 2) / 3) * 4 + 1)

typedef enum {
    HR_CURSOR_LATEST = 0,   /* no position: new messages only */
    HR_CURSOR_EARLIEST = 1, /* from the oldest retained message */
    HR_CURSOR_POSITIONS = 2 /* per-topic positions in entries[] */
} hr_cursor_kind_t;

typedef struct {
    uint64_t topic_hash; /* hr_fnv1a64 of the topic name */
    uint64_t epoch;      /* the topic log's epoch the seq belongs to */
    uint64_t seq;        /* last delivered seq (0 = nothing delivered yet in that epoch) */
} hr_cursor_entry_t;

typedef struct {
    hr_cursor_kind_t kind;
    size_t n;                   /* entries in use, sorted by topic_hash, unique */
    size_t cap;                 /* allocated entries */
    hr_cursor_entry_t *entries; /* owned; free with hr_cursor_reset */
} hr_cursor_t;

/* Initialise an empty HR_CURSOR_LATEST cursor (no allocation). */
void hr_cursor_init(hr_cursor_t *cursor);

/* Free the entries and return to the state of hr_cursor_init. */
void hr_cursor_reset(hr_cursor_t *cursor);

/*
 * Parse `len` bytes of text into `cursor` (which must be initialised; previous contents are
 * replaced). Returns 0 or HR_E_INVALID_CURSOR for anything that is not exactly a cursor this
 * module wrote: unknown version character, bad base64url, truncated or trailing bytes, a
 * non-canonical varint, unsorted or duplicate topics, more than HR_CURSOR_MAX_ENTRIES entries,
 * text longer than HR_CURSOR_MAX_TEXT, or a failed check. On error `cursor` is left as
 * HR_CURSOR_LATEST with no entries.
 */
int hr_cursor_parse(hr_cursor_t *cursor, const char *text, size_t len);

/*
 * Write the text form of `cursor` with a terminating NUL into `buf` (`cap` bytes); *len (may be
 * NULL) receives the length without the NUL. Returns 0 or -ENOSPC when `cap` is below
 * HR_CURSOR_TEXT_CAP(cursor->n) (`buf` untouched). HR_CURSOR_LATEST writes "latest",
 * HR_CURSOR_EARLIEST "earliest". A cursor filled by hand rather than through hr_cursor_set or
 * hr_cursor_parse must keep their invariants (sorted, unique, at most HR_CURSOR_MAX_ENTRIES);
 * more entries than that give HR_E_INVALID_CURSOR.
 */
int hr_cursor_format(const hr_cursor_t *cursor, char *buf, size_t cap, size_t *len);

/* The entry for `topic_hash`, or NULL. The pointer is valid until the cursor next changes. */
const hr_cursor_entry_t *hr_cursor_find(const hr_cursor_t *cursor, uint64_t topic_hash);

/* Insert or update the entry for `topic_hash` and make the cursor HR_CURSOR_POSITIONS.
 * Returns 0 or HR_E_INVALID_CURSOR when a new entry would exceed HR_CURSOR_MAX_ENTRIES. */
int hr_cursor_set(hr_cursor_t *cursor, uint64_t topic_hash, uint64_t epoch, uint64_t seq);

/* Convenience: the single-topic cursor text for (topic, epoch, seq) — the `id` a publish
 * reply and each message carry when read alone; the topic is keyed by hr_fnv1a64 of its
 * `topic_len` bytes. `buf` needs HR_CURSOR_TEXT_CAP(1) bytes. Returns 0 or -ENOSPC. No
 * allocation. */
int hr_cursor_format_one(const char *topic, size_t topic_len, uint64_t epoch, uint64_t seq,
                         char *buf, size_t cap, size_t *len);

#endif
