#include "hr_alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int (*hr_alloc_fail_hook)(size_t size);

void hr_alloc_set_fail_hook(int (*hook)(size_t size))
{
    hr_alloc_fail_hook = hook;
}

static void *hr_alloc_check(void *p, size_t size)
{
    if (p == NULL && size != 0) {
        fprintf(stderr, "herald: out of memory allocating %zu bytes\n", size);
        abort();
    }
    return p;
}

static int hr_alloc_should_fail(size_t size)
{
    return hr_alloc_fail_hook != NULL && hr_alloc_fail_hook(size);
}

void *hr_malloc(size_t size)
{
    if (hr_alloc_should_fail(size))
        return hr_alloc_check(NULL, size ? size : 1);
    return hr_alloc_check(malloc(size ? size : 1), size ? size : 1);
}

void *hr_calloc(size_t count, size_t size)
{
    if (hr_alloc_should_fail(count * size))
        return hr_alloc_check(NULL, 1);
    return hr_alloc_check(calloc(count ? count : 1, size ? size : 1), 1);
}

void *hr_realloc(void *ptr, size_t size)
{
    if (hr_alloc_should_fail(size))
        return hr_alloc_check(NULL, size ? size : 1);
    return hr_alloc_check(realloc(ptr, size ? size : 1), size ? size : 1);
}

char *hr_strndup(const char *s, size_t len)
{
    char *copy = hr_malloc(len + 1);
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

void hr_free(void *ptr)
{
    free(ptr);
}
