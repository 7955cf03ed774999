/*
 * The SSE transport (sse.c): GET /v1/sse. Loop thread only.
 */
#ifndef HR_SSE_H
#define HR_SSE_H

#include "api.h"

/* Answer GET /v1/sse: validate, start the event stream, create the subscriber. */
void hr_sse_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req);

#endif
