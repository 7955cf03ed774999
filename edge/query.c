#include "query.h"

#include <string.h>

static int hr_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static long hr_decode(const char *s, size_t len, char *out, size_t cap, bool plus_is_space)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int hi = hr_hex(s[i + 1]), lo = hr_hex(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (n + 1 >= cap)
            return -1;
        out[n++] = c;
    }
    out[n] = '\0';
    return (long)n;
}

long hr_percent_decode(const char *s, size_t len, char *out, size_t cap)
{
    return hr_decode(s, len, out, cap, false);
}

void hr_query_init(hr_query_iter_t *it, const char *query, size_t len)
{
    it->p = query;
    it->end = query + len;
}

int hr_query_next(hr_query_iter_t *it, char *name, size_t name_cap, char *value, size_t value_cap,
                  size_t *value_len)
{
    while (it->p < it->end && *it->p == '&')
        it->p++;
    if (it->p >= it->end)
        return 0;
    const char *start = it->p;
    const char *amp = memchr(start, '&', (size_t)(it->end - start));
    const char *stop = amp != NULL ? amp : it->end;
    it->p = stop;
    const char *eq = memchr(start, '=', (size_t)(stop - start));
    const char *name_end = eq != NULL ? eq : stop;
    long nl = hr_decode(start, (size_t)(name_end - start), name, name_cap, true);
    long vl = eq != NULL ? hr_decode(eq + 1, (size_t)(stop - eq - 1), value, value_cap, true) : 0;
    if (eq == NULL && value_cap > 0)
        value[0] = '\0';
    if (nl < 0 || vl < 0)
        return -1;
    if (value_len != NULL)
        *value_len = (size_t)vl;
    return 1;
}
