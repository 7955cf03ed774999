#include "hr_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int hr_log_threshold = HR_LOG_INFO;

static const char *const hr_log_names[] = {"debug", "info", "warn", "error"};

int hr_log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, hr_log_names[i]) == 0)
            return i;
    return -1;
}

void hr_log_write(int level, const char *mod, const char *fmt, ...)
{
    char line[2048];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     now.tv_nsec / 1000000, hr_log_names[level & 3], mod);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write per line so lines from concurrent processes never interleave. */
    fwrite(line, 1, len, stderr);
}
