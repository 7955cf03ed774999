#include "hr_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct hr_error_info {
    int err;
    const char *code;
    const char *text;
};

static const struct hr_error_info hr_errors[] = {
    {HR_E_INVALID_TOPIC, "invalid_topic", "invalid topic name"},
    {HR_E_INVALID_CURSOR, "invalid_cursor", "invalid cursor"},
    {HR_E_INVALID_REQUEST, "invalid_request", "invalid request"},
    {HR_E_PAYLOAD_TOO_LARGE, "payload_too_large", "payload too large"},
    {HR_E_PROTO, "malformed_message", "malformed protobuf message"},
    {HR_E_VERSION, "unsupported_version", "unsupported protocol version"},
    {HR_E_NOT_FOUND, "not_found", "not found"},
    {HR_E_STORAGE_FULL, "storage_full", "storage full (LMDB map size reached)"},
    {HR_E_STORAGE, "storage_error", "storage error"},
    {HR_E_CORRUPT, "corrupt", "data is not a Herald store or is corrupt"},
    {HR_E_UNAVAILABLE, "unavailable", "broker unavailable"},
    {HR_E_NOT_OWNER, "not_owner", "partition owned by another broker"},
    {HR_E_MISCONFIGURED, "misconfigured", "the cluster configuration is inconsistent"},
    {HR_E_INTERNAL, "internal", "internal error"},
};

static const struct hr_error_info *hr_error_find(int err)
{
    if (err < HR_E_FIRST || err > HR_E_LAST)
        return NULL;
    return &hr_errors[err - HR_E_FIRST];
}

const char *hr_strerror(int err)
{
    const struct hr_error_info *info = hr_error_find(err);
    if (info != NULL)
        return info->text;
    if (err == 0)
        return "success";
    if (err < 0)
        return strerror(-err);
    return "unknown error";
}

const char *hr_error_code(int err)
{
    const struct hr_error_info *info = hr_error_find(err);
    return info != NULL ? info->code : "internal";
}

int hr_error_from_code(const char *code)
{
    for (size_t i = 0; i < sizeof hr_errors / sizeof hr_errors[0]; i++)
        if (strcmp(hr_errors[i].code, code) == 0)
            return hr_errors[i].err;
    return HR_E_INTERNAL;
}

void hr_why(char *why, size_t why_len, const char *fmt, ...)
{
    if (why == NULL || why_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

void hr_why_clear(char *why, size_t why_len)
{
    if (why != NULL && why_len > 0)
        why[0] = '\0';
}
