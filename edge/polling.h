/*
 * The polling transport (polling.c): GET /v1/poll, long polling (wait > 0) and regular polling
 * (wait = 0), answered with JSON. Loop thread only.
 */
#ifndef HR_POLL_H
#define HR_POLL_H

#include "api.h"

/* Answer GET /v1/poll (now, or when a message arrives or the wait ends). */
void hr_poll_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req);

/* Start the answer handle (once, at edge start) and stop it at exit. */
void hr_poll_start(hr_edge_t *edge);
void hr_poll_stop(void);

#endif
