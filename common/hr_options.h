/*
 * hr_options — one table of options drives flag parsing, environment variables, --help and the
 * configuration docs (the pattern of Redis's static_configs[]).
 *
 * Each option `name` is the flag `--name` and the environment variable PREFIX + NAME (upper
 * case, '-' becomes '_'), where each program has its own prefix (HERALD_BROKER_, HERALD_EDGE_,
 * HERALD_ for the CLI) so one environment can configure several programs without clashes.
 * Precedence: the default, then the environment, then the command line. Values are written into a
 * caller-owned config struct at `offset`: HR_OPT_STRING  const char *   (points into argv, environ
 * or the default: static lifetime) HR_OPT_INT     int64_t        decimal, checked against [min,
 * max] HR_OPT_BYTES   int64_t        bytes; accepts K, M, G suffixes (powers of 1024) HR_OPT_BOOL
 * bool           true/false/1/0/yes/no; a bare `--name` means true, `--no-name` false Not
 * thread-safe; call once at start-up.
 */
#ifndef HR_OPTIONS_H
#define HR_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    HR_OPT_STRING,
    HR_OPT_INT,
    HR_OPT_BYTES,
    HR_OPT_BOOL,
} hr_opt_type_t;

typedef struct {
    const char *name;   /* flag name without dashes, e.g. "data-dir" */
    hr_opt_type_t type; /* how the text is parsed */
    const char *def;    /* default as text ("" for an empty string) */
    int64_t min, max;   /* bounds for HR_OPT_INT and HR_OPT_BYTES */
    size_t offset;      /* offsetof(config struct, field) */
    const char *help;   /* one line, with units */
} hr_option_t;

/*
 * Apply defaults, environment and argv to `config`. Non-option arguments are collected, in
 * order, into `positional` (at most `max_positional`; the count is stored in *n_positional);
 * "--" ends option parsing. `--help` sets *want_help and returns 0.
 * Returns 0, or HR_E_INVALID_REQUEST with a message for the user in `err` (`errlen` bytes).
 */
int hr_options_parse(const hr_option_t *table, size_t n, const char *env_prefix, void *config,
                     int argc, char **argv, char **positional, size_t max_positional,
                     size_t *n_positional, int *want_help, char *err, size_t errlen);

/* Print every option with its environment twin, default and help text. */
void hr_options_print_help(FILE *out, const hr_option_t *table, size_t n, const char *env_prefix);

/* Print a Markdown table of the options (name, environment variable, default, meaning). */
void hr_options_print_markdown(FILE *out, const hr_option_t *table, size_t n,
                               const char *env_prefix);

#endif
