/*
 * hr_log — one line per event on stderr, in logfmt so it is machine-parseable:
 *
 *   ts=2026-11-29T20:10:00.123Z level=info mod=broker event=listening endpoint=tcp://...
 *
 * Callers pass the part after `mod=` as a printf format, by convention `event=NAME key=value`.
 * HR_LOG checks the level before any formatting happens, so a filtered debug line costs one
 * comparison. Daemons only: storage/ and proto/ never log, they return errors.
 * The level is process-global; set it once at start-up, before threads exist.
 */
#ifndef HR_LOG_H
#define HR_LOG_H

enum hr_log_level {
    HR_LOG_DEBUG = 0,
    HR_LOG_INFO = 1,
    HR_LOG_WARN = 2,
    HR_LOG_ERROR = 3,
};

extern int hr_log_threshold;

#define HR_LOG(level, mod, ...)                                                                    \
    do {                                                                                           \
        if ((level) >= hr_log_threshold)                                                           \
            hr_log_write((level), (mod), __VA_ARGS__);                                             \
    } while (0)

#define HR_DEBUG(mod, ...) HR_LOG(HR_LOG_DEBUG, mod, __VA_ARGS__)
#define HR_INFO(mod, ...)  HR_LOG(HR_LOG_INFO, mod, __VA_ARGS__)
#define HR_WARN(mod, ...)  HR_LOG(HR_LOG_WARN, mod, __VA_ARGS__)
#define HR_ERROR(mod, ...) HR_LOG(HR_LOG_ERROR, mod, __VA_ARGS__)

void hr_log_write(int level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Parse "debug", "info", "warn" or "error"; returns the level or -1. */
int hr_log_level_parse(const char *name);

#endif
