/*
 * The HTTP streaming transport (stream.c): GET /v1/stream, chunked NDJSON. Loop thread only.
 */
#ifndef HR_STREAM_H
#define HR_STREAM_H

#include "api.h"

/* Answer GET /v1/stream: validate, start the chunked NDJSON stream, create the subscriber. */
void hr_stream_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req);

#endif
