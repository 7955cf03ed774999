/*
 * WebSocket — GET /v1/ws (RFC 6455; the frames are documented in docs/websocket.md).
 *
 * One hr_ws_t per upgraded connection: wslay's event API parses and validates what the client
 * sends (fed from libuv reads through hr_http_conn_set_read_cb) and frames every control frame
 * and answer; live messages go out through hr_outq as pre-framed text frames around the
 * message's shared HR_ENC_JSON encoding, so a message fanned out to 10,000 WebSocket clients is
 * encoded once. Loop thread only.
 */
#ifndef HR_WS_H
#define HR_WS_H

#include "edge.h"
#include "http.h"

/* Handle GET /v1/ws: answer the handshake (101, or the error of docs/websocket.md) and run the
 * connection. */
void hr_ws_open(hr_edge_t *edge, hr_http_conn_t *conn, const hr_http_request_t *req);

/* SIGTERM: every WebSocket connection that is still open gets a `shutdown` frame with its
 * cursor and a retry hint jittered in [retry_ms, 2 * retry_ms), then close 1001. (Connections
 * with a subscriber already got theirs from hr_registry_shutdown; this reaches the rest.) */
void hr_ws_shutdown_all(uint64_t retry_ms);

#endif
