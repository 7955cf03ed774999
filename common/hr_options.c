#include "hr_options.h"

#include "hr_error.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void hr_options_env_name(const char *prefix, const char *name, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%s", prefix);
    for (const char *p = name; *p != '\0' && n + 1 < cap; p++)
        out[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
    out[n] = '\0';
}

static int hr_options_set(const hr_option_t *opt, void *config, const char *text, const char *from,
                          char *err, size_t errlen)
{
    char *field = (char *)config + opt->offset;
    switch (opt->type) {
    case HR_OPT_STRING:
        *(const char **)field = text;
        return 0;
    case HR_OPT_BOOL:
        if (strcasecmp(text, "true") == 0 || strcmp(text, "1") == 0 ||
            strcasecmp(text, "yes") == 0) {
            *(bool *)field = true;
            return 0;
        }
        if (strcasecmp(text, "false") == 0 || strcmp(text, "0") == 0 ||
            strcasecmp(text, "no") == 0) {
            *(bool *)field = false;
            return 0;
        }
        snprintf(err, errlen, "%s: '%s' is not a boolean (true or false)", from, text);
        return HR_E_INVALID_REQUEST;
    case HR_OPT_INT:
    case HR_OPT_BYTES: {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (end == text || errno != 0)
            goto bad_number;
        if (opt->type == HR_OPT_BYTES && *end != '\0') {
            long long mult = 1;
            switch (toupper((unsigned char)*end)) {
            case 'K':
                mult = 1024LL;
                break;
            case 'M':
                mult = 1024LL * 1024;
                break;
            case 'G':
                mult = 1024LL * 1024 * 1024;
                break;
            default:
                goto bad_number;
            }
            end++;
            if (toupper((unsigned char)*end) == 'I')
                end++;
            if (toupper((unsigned char)*end) == 'B')
                end++;
            if (v > INT64_MAX / mult)
                goto bad_number;
            v *= mult;
        }
        if (*end != '\0')
            goto bad_number;
        if (v < opt->min || v > opt->max) {
            snprintf(err, errlen, "%s: %lld is outside [%lld, %lld]", from, v, (long long)opt->min,
                     (long long)opt->max);
            return HR_E_INVALID_REQUEST;
        }
        *(int64_t *)field = v;
        return 0;
    bad_number:
        snprintf(err, errlen, "%s: '%s' is not a%s number", from, text,
                 opt->type == HR_OPT_BYTES ? " byte size (e.g. 512M) or" : "n integer");
        return HR_E_INVALID_REQUEST;
    }
    }
    return HR_E_INTERNAL;
}

static const hr_option_t *hr_options_find(const hr_option_t *table, size_t n, const char *name,
                                          size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(table[i].name) == len && strncmp(table[i].name, name, len) == 0)
            return &table[i];
    return NULL;
}

int hr_options_parse(const hr_option_t *table, size_t n, const char *env_prefix, void *config,
                     int argc, char **argv, char **positional, size_t max_positional,
                     size_t *n_positional, int *want_help, char *err, size_t errlen)
{
    char from[128];
    *want_help = 0;
    *n_positional = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(from, sizeof from, "default of --%s", table[i].name);
        int rc = hr_options_set(&table[i], config, table[i].def, from, err, errlen);
        if (rc != 0)
            return rc;
    }
    for (size_t i = 0; i < n; i++) {
        char env[96];
        hr_options_env_name(env_prefix, table[i].name, env, sizeof env);
        const char *value = getenv(env);
        if (value == NULL)
            continue;
        int rc = hr_options_set(&table[i], config, value, env, err, errlen);
        if (rc != 0)
            return rc;
    }
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (*n_positional >= max_positional) {
                snprintf(err, errlen, "unexpected argument '%s'", arg);
                return HR_E_INVALID_REQUEST;
            }
            positional[(*n_positional)++] = argv[i];
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *want_help = 1;
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unknown option '%s' (options are spelled --name)", arg);
            return HR_E_INVALID_REQUEST;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq != NULL ? (size_t)(eq - name) : strlen(name);
        const hr_option_t *opt = hr_options_find(table, n, name, name_len);
        const char *value = eq != NULL ? eq + 1 : NULL;
        if (opt == NULL && eq == NULL && strncmp(name, "no-", 3) == 0) {
            opt = hr_options_find(table, n, name + 3, name_len - 3);
            if (opt != NULL && opt->type == HR_OPT_BOOL)
                value = "false";
            else
                opt = NULL;
        }
        if (opt == NULL) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)name_len, name);
            return HR_E_INVALID_REQUEST;
        }
        if (value == NULL && opt->type == HR_OPT_BOOL) {
            value = "true";
        } else if (value == NULL) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "option '--%s' needs a value", opt->name);
                return HR_E_INVALID_REQUEST;
            }
            value = argv[++i];
        }
        snprintf(from, sizeof from, "--%s", opt->name);
        int rc = hr_options_set(opt, config, value, from, err, errlen);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void hr_options_print_help(FILE *out, const hr_option_t *table, size_t n, const char *env_prefix)
{
    for (size_t i = 0; i < n; i++) {
        char env[96];
        hr_options_env_name(env_prefix, table[i].name, env, sizeof env);
        fprintf(out, "  --%-24s %s\n  %-26s env %s, default '%s'\n", table[i].name, table[i].help,
                "", env, table[i].def);
    }
}

void hr_options_print_markdown(FILE *out, const hr_option_t *table, size_t n,
                               const char *env_prefix)
{
    fprintf(out, "| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < n; i++) {
        char env[96];
        hr_options_env_name(env_prefix, table[i].name, env, sizeof env);
        if (table[i].def[0] == '\0')
            fprintf(out, "| `--%s` | `%s` | *(empty)* | %s |\n", table[i].name, env, table[i].help);
        else
            fprintf(out, "| `--%s` | `%s` | `%s` | %s |\n", table[i].name, env, table[i].def,
                    table[i].help);
    }
}
