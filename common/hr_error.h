/*
 * hr_error — Herald's error codes and their text.
 *
 * Every Herald function that can fail returns an int: 0 on success, a negative value on failure.
 * System errors are returned as -errno (the libuv convention); Herald's own errors live in the
 * reserved range [HR_E_FIRST, HR_E_LAST], far below any errno, as LMDB does with MDB_*.
 * hr_strerror() describes both kinds; hr_error_code() gives the stable snake_case code used in
 * wire error replies and HTTP bodies (DESIGN.md §Client contract, "Errors").
 *
 * Thread-safe: everything here is pure.
 */
#ifndef HR_ERROR_H
#define HR_ERROR_H

#include <stddef.h>

enum {
    HR_E_FIRST = -30999,
    HR_E_INVALID_TOPIC = HR_E_FIRST, /* topic name outside DESIGN.md §Data model rules */
    HR_E_INVALID_CURSOR,             /* a cursor that cannot be parsed or cannot apply */
    HR_E_INVALID_REQUEST,            /* malformed parameters, fields or frames */
    HR_E_PAYLOAD_TOO_LARGE,          /* data or request over the configured limit */
    HR_E_PROTO,                      /* bytes that do not decode as the expected protobuf */
    HR_E_VERSION,                    /* a protocol version this build does not speak */
    HR_E_NOT_FOUND,                  /* no such topic (or record) */
    HR_E_STORAGE_FULL,               /* the LMDB map is full (MDB_MAP_FULL) */
    HR_E_STORAGE,                    /* any other LMDB failure; the log is unchanged */
    HR_E_CORRUPT,                    /* a file or record that is not what Herald wrote */
    HR_E_UNAVAILABLE,                /* the broker cannot be reached or timed out */
    HR_E_NOT_OWNER,                  /* the partition belongs to another broker */
    HR_E_MISCONFIGURED,              /* the cluster configuration disagrees (P, node id, list) */
    HR_E_INTERNAL,                   /* a bug: reported rather than hidden */
    HR_E_LAST = HR_E_INTERNAL,
};

/* Human-readable text for a Herald error or a -errno value. Never NULL; static storage. */
const char *hr_strerror(int err);

/* Stable wire code ("invalid_topic", "storage_full", ...) for a Herald error; "internal" for
 * anything else (including -errno values). Never NULL; static storage. */
const char *hr_error_code(int err);

/* Map a wire code back to the Herald error; HR_E_INTERNAL for an unknown code. */
int hr_error_from_code(const char *code);

/* Write an explanation into a caller's optional `why` buffer (`why_len` bytes; NULL or 0 = the
 * caller does not want one), as the validating functions of proto/ and storage/ do. */
void hr_why(char *why, size_t why_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Empty a caller's optional `why` buffer. */
void hr_why_clear(char *why, size_t why_len);

#endif
