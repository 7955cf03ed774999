/*
 * hr_http — the edge's HTTP/1.1 server (RFC 9112) on libuv, parsing with llhttp.
 *
 * Owns the listening socket and one hr_http_conn_t per client connection (an explicit state
 * machine, below). It handles keep-alive and pipelining (requests on one connection are answered
 * strictly in order: the next request is parsed only once the current response is complete),
 * request bodies with Content-Length or chunked transfer coding, `Expect: 100-continue`, limits
 * on header bytes, header count and body bytes, header/body and idle timeouts, and CORS
 * (allowed origins, preflight) for every response. Protocol errors are answered here with the
 * JSON error body of DESIGN.md §Client contract and the connection is closed:
 *   400 invalid_request     malformed request line or header, Content-Length together with
 *                           Transfer-Encoding, a Transfer-Encoding other than chunked, an HTTP/1.1
 *                           request without exactly one Host, an HTTP major version other than 1;
 *   408 invalid_request     the request did not arrive within header_timeout_ms;
 *   413 payload_too_large   a body over max_body_bytes (declared, or counted when chunked);
 *   417 invalid_request     an Expect other than 100-continue;
 *   431 headers_too_large   more than max_header_bytes or max_headers.
 * CORS preflights (OPTIONS with Origin and Access-Control-Request-Method) are answered here too,
 * without the handler: 204 for an allowed origin, 403 `forbidden` otherwise.
 *
 * A complete request is handed to the handler given at creation. The handler must eventually
 * finish it with exactly one of:
 *   - hr_http_respond            a whole response (Content-Length);
 *   - hr_http_stream_start ...   a streaming response (SSE: close-delimited; or chunked), fed
 *     with hr_http_stream_write and finished with hr_http_stream_end;
 *   - hr_http_close              drop the connection.
 * It may finish it later (a long poll, a publish waiting for the broker's commit): the request
 * and the connection stay valid until then, unless the client goes away first, in which case the
 * close callback set with hr_http_conn_set_close_cb runs and the request must be abandoned.
 *
 * Threading: everything runs on the libuv loop thread that created the server.
 */
#ifndef HR_HTTP_H
#define HR_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct hr_http_server hr_http_server_t;
typedef struct hr_http_conn hr_http_conn_t;

typedef struct {
    const char *name; /* as received; compare case-insensitively */
    size_t name_len;
    const char *value; /* leading and trailing whitespace removed */
    size_t value_len;
} hr_http_header_t;

/* A parsed request. All memory belongs to the connection and stays valid until the request is
 * finished (response complete, stream ended, connection closed). */
typedef struct {
    const char *method; /* "GET", "POST", ... NUL-terminated */
    const char *target; /* the raw request-target, NUL-terminated */
    const char *path;   /* target up to '?', percent-decoding NOT applied; not NUL-terminated */
    size_t path_len;
    const char *query; /* after '?', raw; empty when absent; not NUL-terminated */
    size_t query_len;
    const hr_http_header_t *headers;
    size_t n_headers;
    const uint8_t *body; /* de-chunked body bytes; NULL when empty */
    size_t body_len;
    int http_minor;  /* 0 or 1 (HTTP/1.0 or 1.1) */
    bool keep_alive; /* the connection will be reused after this response */
} hr_http_request_t;

/* Called once per complete request. `ctx` is the handler_ctx given to hr_http_server_new. */
typedef void (*hr_http_handler)(void *ctx, hr_http_conn_t *conn, const hr_http_request_t *req);

typedef struct {
    const char *listen;         /* "host:port", e.g. "127.0.0.1:8080"; IPv6 as "[::1]:8080" */
    size_t max_header_bytes;    /* request line + headers, bytes; over it: 431 */
    size_t max_headers;         /* header count; over it: 431 */
    size_t max_body_bytes;      /* request body, bytes; over it: 413 */
    uint64_t header_timeout_ms; /* from first byte of a request to its complete body: 408;
                                   0 = none */
    uint64_t idle_timeout_ms;   /* keep-alive connection with no request in progress (also a new
                                   connection before its first byte): closed; 0 = none */
    const char *cors_origins;   /* comma-separated allowed origins, "*" for any, "" for none;
                                   copied */
    int backlog;                /* listen(2) backlog; 0 = 511 */
    hr_http_handler handler;
    void *handler_ctx;
} hr_http_options_t;

/* Bind and listen. `listen` is a numeric IPv4 address, "[IPv6]", "localhost", or "" / "*" (any
 * IPv4 address), then ":port"; port 0 picks a free port (see hr_http_server_port). Returns 0, or
 * a -errno from libuv (e.g. -EADDRINUSE) or HR_E_INVALID_REQUEST for an unparsable `listen`, with
 * a message in `err`. On failure *out is NULL and a little memory is released only when the loop
 * next runs (a libuv handle was opened and must be closed through it). */
int hr_http_server_new(hr_http_server_t **out, uv_loop_t *loop, const hr_http_options_t *opts,
                       char *err, size_t errlen);

/* The TCP port the server is bound to (useful with port 0), or 0 once it no longer listens. */
int hr_http_server_port(const hr_http_server_t *server);

/* Stop accepting new connections (SIGTERM drain). Existing connections continue, but every
 * response sent from now on carries `Connection: close`, so keep-alive clients move to another
 * edge after their current request. */
void hr_http_server_stop_accepting(hr_http_server_t *server);

/* Close every connection and the listener, then free the server once libuv has released every
 * handle (run the loop afterwards: close callbacks of requests in progress run then, so their
 * handler context must outlive that). *server becomes NULL; NULL is accepted. */
void hr_http_server_destroy(hr_http_server_t **server);

/* Number of open client connections (including ones whose close is under way). */
size_t hr_http_server_connections(const hr_http_server_t *server);

/* Header value by case-insensitive name (first occurrence), or NULL; *len gets its length. */
const char *hr_http_header(const hr_http_request_t *req, const char *name, size_t *len);

/*
 * Send a whole response. `headers` are extra headers (Content-Length, Connection, Date and CORS
 * headers are added here: do not pass them; a header whose name or value holds CR or LF is
 * dropped). `body` is copied. After it, the connection reads the next request or closes, per
 * keep-alive. `status` is a 3-digit code; the reason phrase is standard. A 204 or 304 response
 * carries neither Content-Length nor body (RFC 9110 §8.6); a response to HEAD carries the
 * Content-Length of `body` but not the body. Call it only while the handler owns the request;
 * once the connection is closing (the close callback is pending) it does nothing.
 */
void hr_http_respond(hr_http_conn_t *conn, int status, const hr_http_header_t *headers,
                     size_t n_headers, const void *body, size_t body_len);

/* Convenience: a JSON error body {"error":{"code","message"}} with the given status. */
void hr_http_respond_error(hr_http_conn_t *conn, int status, const char *code, const char *message);

/*
 * Start a streaming response: status line and headers are sent now. With `chunked` true the body
 * uses chunked transfer coding (HTTP/1.1 only; falls back to close-delimited on HTTP/1.0);
 * otherwise it is close-delimited (the connection ends with the stream: what SSE wants).
 * After this, incoming bytes on the connection are ignored (but EOF and errors are noticed); a
 * chunked stream whose connection received bytes meanwhile closes at its end instead of keeping
 * the connection alive. Status 101 adds no framing or Connection header (the caller's headers
 * say Upgrade). No timeout applies while streaming: the transport sends heartbeats.
 */
void hr_http_stream_start(hr_http_conn_t *conn, int status, const hr_http_header_t *headers,
                          size_t n_headers, bool chunked);

/* Called when a stream write has been handed to the kernel (status 0) or failed (a negative
 * libuv error; UV_ECANCELED when the connection closed first): release what the buffers point to.
 * When the connection closes, the callbacks of its pending writes run before its close callback. */
typedef void (*hr_http_write_done)(void *arg, int status);

/*
 * Write `n` buffers as one write (coalesced: one syscall where possible; one chunk when
 * chunked). When nothing is queued before it and the socket takes every byte at once, returns 1:
 * the buffers are free to reuse and `done` is NOT called. Otherwise returns 0 and the buffers'
 * memory must stay valid until `done(arg, status)` is called — exactly once, also when the
 * connection closes first. Returns -EPIPE if the connection is closing (`done` is NOT called).
 */
int hr_http_stream_write(hr_http_conn_t *conn, const uv_buf_t *bufs, size_t n,
                         hr_http_write_done done, void *arg);

/* Bytes written with hr_http_stream_write or respond that the kernel has not yet accepted:
 * the connection's backpressure measure (libuv's write queue size). */
size_t hr_http_pending_bytes(const hr_http_conn_t *conn);

/* End a streaming response (the last chunk for chunked, else close once written). The request is
 * finished: its memory is released. A close callback still set runs when the connection closes,
 * unless the connection is kept alive for another request (then it is cleared). */
void hr_http_stream_end(hr_http_conn_t *conn);

/* Close the connection now (pending writes are dropped; their `done` runs with an error). */
void hr_http_close(hr_http_conn_t *conn);

/* Input of an upgraded connection: `len` bytes (> 0) at `data`, valid during the call. */
typedef void (*hr_http_read_cb)(void *arg, const char *data, size_t len);

/*
 * After hr_http_stream_start with status 101 (RFC 9110 §15.2.2), the connection's bytes belong
 * to the new protocol: every byte received from then on — including any that arrived with the
 * upgrade request — is handed to `cb(arg, ...)` in order. Bytes already buffered are handed
 * over from inside this call (or, when called from the request handler, as soon as the handler
 * returns). EOF and errors still close the connection (the close callback runs). Does nothing
 * on a connection that was not upgraded.
 */
void hr_http_conn_set_read_cb(hr_http_conn_t *conn, hr_http_read_cb cb, void *arg);

/* True when `origin` (`len` bytes, as in an Origin header) is among the server's allowed
 * origins (cors_origins; "*" allows any). */
bool hr_http_conn_origin_allowed(const hr_http_conn_t *conn, const char *origin, size_t len);

/* Stop (true) or resume (false) reading an upgraded connection: backpressure on a peer that
 * sends faster than its answers are taken. While paused, EOF is not noticed either. */
void hr_http_conn_pause_reading(hr_http_conn_t *conn, bool pause);

/* Set the callback run once when the connection closes for any reason while a request is being
 * handled (client went away, timeout, hr_http_close, server destroy). Pass NULL to clear it
 * (do so when the request is finished normally). If it is still set when the request is finished
 * (hr_http_respond, hr_http_stream_end), it runs when that response's connection closes — useful
 * after ending a close-delimited stream — or is cleared when the connection is kept alive for
 * the next request. It runs from libuv's close callback, never from inside an hr_http_* call:
 * after hr_http_close returns, the connection stays valid until then (writes fail with -EPIPE,
 * responses are ignored). */
void hr_http_conn_set_close_cb(hr_http_conn_t *conn, void (*cb)(void *arg), void *arg);

/* Peer address as text ("127.0.0.1:50123", "[::1]:50123"), for logs. The text lives in a buffer
 * shared by the server, valid until the next call for any of its connections. */
const char *hr_http_conn_peer(const hr_http_conn_t *conn);

#endif
