/*
 * hr_alloc — the one allocation wrapper. Out-of-memory is not a runtime error Herald recovers
 * from: every allocation goes through here and aborts with a message when the system refuses.
 * Tests may install a hook (hr_alloc_set_fail_hook) to make chosen allocations fail, which
 * exercises that abort path deliberately. Thread-safe as malloc is; the hook is process-global
 * and meant for tests only.
 */
#ifndef HR_ALLOC_H
#define HR_ALLOC_H

#include <stddef.h>

void *hr_malloc(size_t size);
void *hr_calloc(size_t count, size_t size);
void *hr_realloc(void *ptr, size_t size);
char *hr_strndup(const char *s, size_t len); /* NUL-terminated copy of len bytes */
void hr_free(void *ptr);

/* Test hook: when set and it returns nonzero for a request of `size` bytes, the allocation
 * is treated as failed (and so aborts). NULL removes it. */
void hr_alloc_set_fail_hook(int (*hook)(size_t size));

#endif
