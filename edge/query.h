/*
 * hr_query — reading request targets: query-string parameters (application/x-www-form-urlencoded,
 * WHATWG URL §5.1: '&'-separated, '+' is a space, %XX decoded) and percent-decoded path segments.
 * Pure functions; any thread.
 */
#ifndef HR_QUERY_H
#define HR_QUERY_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    const char *p, *end;
} hr_query_iter_t;

/* Start iterating `query` (`len` bytes, without the '?'). */
void hr_query_init(hr_query_iter_t *it, const char *query, size_t len);

/*
 * Next parameter: its decoded name and value are written NUL-terminated into `name` (`name_cap`
 * bytes) and `value` (`value_cap` bytes). Returns 1 for a parameter, 0 at the end, or -1 for one
 * that cannot be decoded (a bad %XX escape) or does not fit (the iterator still moves past it).
 */
int hr_query_next(hr_query_iter_t *it, char *name, size_t name_cap, char *value, size_t value_cap,
                  size_t *value_len);

/* Percent-decode `len` bytes into `out` (`cap` bytes, NUL-terminated); '+' stays '+'.
 * Returns the decoded length, or -1 for a bad escape or overflow. */
long hr_percent_decode(const char *s, size_t len, char *out, size_t cap);

#endif
