"""13 bad input at the edge (DESIGN.md invariant 6, §Client contract, Errors): every bad request
gets a clear status and the JSON error body, nothing is lost, and the other clients of the same
edge (a "witness" SSE stream opened before the bad input) are unaffected. Bad cursors: 400 where
the client chose them, a reset where a browser resent them. Slow senders and readers are cut off
with bounded memory."""

import base64
import json
import select
import socket
import time
from urllib.parse import quote

import pytest

from conftest import SSEParser, assert_error, make_cursor


class Witness:
    """An SSE stream on witness.t, opened before the bad input: check() publishes one more
    message and asserts the stream has received every witness message so far, in order."""

    def __init__(self, edge):
        self.edge = edge
        self.sent = []
        self.stream = edge.sse("witness.t", params={"last_event_id": "earliest"})
        assert self.stream.status == 200

    def check(self, timeout=10.0):
        data = f"w{len(self.sent) + 1}"
        self.edge.publish("witness.t", data.encode())
        self.sent.append(data)
        self.stream.wait_messages(len(self.sent), timeout)
        assert [m.data for m in self.stream.messages()] == self.sent
        assert not self.stream.closed

    def close(self):
        self.stream.close()


@pytest.fixture
def witness_edge(broker, edge_factory, request):
    """An edge (flags from @pytest.mark.edge_args) with a witness stream; checked at the end."""
    mark = request.node.get_closest_marker("edge_args")
    e = edge_factory(broker, *(mark.args if mark else ()))
    w = Witness(e)
    w.check()
    yield e, w
    w.check()
    assert e.alive(), e.stderr_text()
    w.close()


def raw_exchange(edge, data, timeout=5.0):
    """Send raw bytes, read until the edge closes (or `timeout`); returns the bytes read."""
    out = b""
    with socket.create_connection((edge.host, edge.port), timeout=timeout) as s:
        s.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
    return out


def parse_response(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


BAD_TOPICS = ["", "a" * 256, "a/b", "a b", "é", "a\x00b", "a?b", "a#b"]


def test_invalid_topics(witness_edge):
    e, w = witness_edge
    for t in BAD_TOPICS:
        path = f"/v1/topics/{quote(t, safe='')}/messages"
        assert_error(e.post(path, data=b"x"), 400, "invalid_topic")
        assert_error(e.get(path), 400, "invalid_topic")
        assert_error(e.get("/v1/sse", params={"topic": t}), 400, "invalid_topic")
        assert_error(e.get("/v1/sse", params=[("topic", "ok.t"), ("topic", t)]), 400,
                     "invalid_topic")
        assert_error(e.post("/v1/messages", json={"messages": [{"topic": t, "data": "x"}]}), 400,
                     "invalid_topic")
    # unencoded '/', a bad escape, '+' (a space in a query)
    assert_error(e.post("/v1/topics/a/b/messages", data=b"x"), 400, "invalid_topic")
    assert_error(e.post("/v1/topics/a%zz/messages", data=b"x"), 400, "invalid_topic")
    assert_error(e.get("/v1/sse?topic=a+b"), 400, "invalid_topic")
    # the longest and the oddest valid names are fine
    for t in ("a" * 255, "A-z_0.9:@"):
        assert e.publish(t, b"ok")["seq"] == 1
        assert [m["data"] for m in e.history(t, after="earliest")["messages"]] == ["ok"]
    w.check()


@pytest.mark.edge_args("--max-data-bytes", "1K", "--max-body-bytes", "8K")
def test_payload_too_large(witness_edge, broker):
    e, w = witness_edge
    assert_error(e.post("/v1/topics/big.t/messages", data=b"x" * 1025), 413, "payload_too_large")
    blob = base64.b64encode(b"y" * 1025).decode()
    assert_error(e.post("/v1/messages", json={"messages": [
        {"topic": "big.t", "data": "small"},
        {"topic": "big.t", "data": blob, "encoding": "base64"}]}), 413, "payload_too_large")
    # over the body limit: refused by the HTTP layer before it is read
    assert_error(e.post("/v1/topics/big.t/messages", data=b"z" * 9000), 413, "payload_too_large")
    assert e.publish("big.t", b"x" * 1024)["seq"] == 1
    with broker.client() as c:
        _, last, msgs = c.fetch_all("big.t")
    assert (last, [len(m.data) for m in msgs]) == (1, [1024])
    w.check()


@pytest.mark.edge_args("--max-topics", "3")
def test_too_many_topics(witness_edge):
    e, w = witness_edge
    r = e.get("/v1/sse", params=[("topic", f"many.{i}") for i in range(4)])
    assert_error(r, 400, "too_many_topics")
    # three distinct topics (a repeated one counts once) are fine
    with e.sse(["many.0", "many.1", "many.2", "many.1"],
               params={"format": "json", "last_event_id": "earliest"}) as s:
        assert s.status == 200
        for i in range(3):
            e.publish(f"many.{i}", b"x")
        s.wait_messages(3)
        assert sorted(m.json()["topic"] for m in s.messages()) == ["many.0", "many.1", "many.2"]
    w.check()


def bad_cursors(good):
    return {
        "garbage": "garbage!",
        "negative": "-5",
        "number": "12345",
        "truncated": good[:-3],
        "edited": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "unknown version": "b" + good[1:],
        "10 KiB": "a" + "A" * 10239,
    }


def test_explicit_bad_cursors_are_400(witness_edge):
    e, w = witness_edge
    good = e.publish("cur.t", b"m1")["id"]
    for name, bad in bad_cursors(good).items():
        for param in ("last_event_id", "cursor"):
            r = e.get("/v1/sse", params={"topic": "cur.t", param: bad})
            assert_error(r, 400, "invalid_cursor")
        assert_error(e.get("/v1/topics/cur.t/messages", params={"after": bad}), 400,
                     "invalid_cursor")
    w.check()


def test_resent_bad_cursors_reset_to_the_oldest_retained(witness_edge):
    e, w = witness_edge
    sent = [e.publish("cur.t", f"m{i}".encode()) for i in range(1, 6)]
    for name, bad in bad_cursors(sent[0]["id"]).items():
        # the header wins over a good query cursor, and is the one that failed
        with e.sse("cur.t", params={"last_event_id": sent[3]["id"]},
                   headers={"Last-Event-ID": bad}) as s:
            assert s.status == 200, name
            s.wait(lambda st: len(st.events) >= 6, 10, f"reset and 5 messages ({name})")
            s.drain(0.2)
            reset, *msgs = s.events
            assert reset.type == "herald.reset", name
            assert reset.json() == {"type": "reset", "topic": "cur.t",
                                    "reason": "invalid_cursor", "next_seq": 1}, name
            assert reset.last_event_id == make_cursor({"cur.t": (sent[0]["epoch"], 0)})
            assert [m.data for m in msgs] == ["m1", "m2", "m3", "m4", "m5"], name
            assert [m.last_event_id for m in msgs] == [r["id"] for r in sent]
    assert e.metrics()['herald_edge_resets_total{reason="invalid_cursor"}'] == 7
    w.check()


def test_cursor_beyond_the_head_continues_from_the_head(witness_edge):
    e, w = witness_edge
    sent = [e.publish("future.t", f"m{i}".encode()) for i in range(1, 6)]
    epoch = sent[0]["epoch"]
    n = 5  # the head
    for ahead in (1, 1000, 2**49, None):
        for how in ("query", "header"):
            seq = n + ahead if ahead is not None else 2**64 - 1
            future = make_cursor({"future.t": (epoch, seq)})
            kw = ({"params": {"last_event_id": future}} if how == "query"
                  else {"headers": {"Last-Event-ID": future}})
            with e.sse("future.t", **kw) as s:
                assert s.status == 200
                s.wait(lambda st: len(st.events) >= 1, 10, "a reset")
                reset = s.events[0]
                assert reset.type == "herald.reset", (seq, how)
                assert reset.json() == {"type": "reset", "topic": "future.t",
                                        "reason": "invalid_cursor", "next_seq": n + 1}
                assert reset.last_event_id == make_cursor({"future.t": (epoch, n)})
                n += 1
                r = e.publish("future.t", f"m{n}".encode())
                s.wait_messages(1)
                s.drain(0.2)
                assert [(m.data, m.last_event_id) for m in s.messages()] == [(f"m{n}", r["id"])]
    w.check()


def test_unknown_paths_and_wrong_methods(witness_edge):
    e, w = witness_edge
    for path in ("/v1/nope", "/v1", "/v1/topics/t", "/v1/topics/t/other", "/v1/sse/x",
                 "/metrics/x", "/favicon.ico"):
        assert_error(e.get(path), 404, "not_found")
    for method, path, allow in (("DELETE", "/v1/sse", "GET, HEAD, OPTIONS"),
                                ("POST", "/v1/sse", "GET, HEAD, OPTIONS"),
                                ("GET", "/v1/messages", "POST, OPTIONS"),
                                ("PUT", "/v1/topics/t/messages", "GET, POST, OPTIONS"),
                                ("DELETE", "/v1/topics/t/messages", "GET, POST, OPTIONS"),
                                ("POST", "/healthz", "GET, HEAD, OPTIONS")):
        r = e.http.request(method, e.url(path), timeout=10)
        assert_error(r, 405, "method_not_allowed")
        assert r.headers["Allow"] == allow
    w.check()


MALFORMED = {
    "request line": (b"GARBAGE\r\n\r\n", 400, "invalid_request"),
    "request line with spaces": (b"GET  / HTTP/1.1 x\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "header without a colon": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", 400,
                               "invalid_request"),
    "Content-Length and Transfer-Encoding": (
        b"POST /v1/topics/smuggle.t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, "invalid_request"),
    "oversized headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20000 +
                          b"\r\n\r\n", 431, "headers_too_large"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_http(witness_edge, broker, case):
    e, w = witness_edge
    data, want_status, want_code = MALFORMED[case]
    out = raw_exchange(e, data)
    assert out, "no response"
    status, headers, body = parse_response(out)
    assert status == want_status, out
    assert headers["content-type"] == "application/json"
    err = json.loads(body[:int(headers["content-length"])])
    assert err["error"]["code"] == want_code and err["error"]["message"], err
    assert headers.get("connection") == "close"
    with broker.client() as c:
        assert c.fetch("smuggle.t").last_seq == 0
    assert e.get("/healthz").status_code == 200
    w.check()


@pytest.mark.edge_args("--header-timeout", "1000")
def test_slow_sender_is_cut_off(witness_edge):
    e, w = witness_edge
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    got = b""
    closed_after = None
    with socket.create_connection((e.host, e.port), timeout=5) as s:
        t0 = time.monotonic()
        for i, byte in enumerate(request[:8]):  # at most 8 s; cut off long before the end
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            w.check(timeout=5)  # the stream on the same edge keeps receiving meanwhile
            readable, _, _ = select.select([s], [], [], max(0.0, t0 + i + 1 - time.monotonic()))
            if readable:
                try:
                    chunk = s.recv(4096)
                except ConnectionResetError:
                    chunk = b""
                got += chunk
                if not chunk:
                    closed_after = time.monotonic() - t0
                    break
    assert closed_after is not None, "a client sending one byte a second was not cut off"
    assert closed_after < 4.0, closed_after
    if got:
        status, headers, body = parse_response(got)
        assert status == 408, got
    w.check()


@pytest.mark.edge_args("--queue-bytes", "256K", "--slow-client-grace", "1000")
def test_slow_reader_is_cut_off_and_memory_stays_bounded(witness_edge):
    e, w = witness_edge
    topic = "slow.t"
    n, size, batch = 20000, 1024, 500
    # the client that stops reading: a small receive buffer, so the edge's queue fills quickly
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.settimeout(10)
    slow.connect((e.host, e.port))
    slow.sendall(f"GET /v1/sse?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    slow_raw = b""
    good = e.sse(topic)
    try:
        # read until both streams are live (a probe message arrives), then never again
        for k in range(50):
            e.publish(topic, b"probe")
            good.drain(0.05)
            r, _, _ = select.select([slow], [], [], 0.05)
            if r:
                slow_raw += slow.recv(65536)
            if good.messages() and b"data: probe" in slow_raw:
                break
        assert good.messages() and b"data: probe" in slow_raw, "streams did not start"
        good.wait(lambda s: s.raw.count(b"data: probe") == k + 1, 5, "all probes")
        probes = len(good.messages())
        rss_before = e.rss_kib()

        payload = "p" * (size - 8)
        for start in range(0, n, batch):
            e.publish_batch([{"topic": topic, "data": f"{i:07d} {payload}"}
                             for i in range(start, start + batch)])
            good.drain(0)  # parse what the reader thread has read so far
        want = [f"{i:07d} {payload}" for i in range(n)]
        good.wait(lambda s: len(s.messages()) >= probes + n, 60, f"{n} messages")
        assert [m.data for m in good.messages()[probes:]] == want
        rss_after = e.rss_kib()
        if not e.sanitized():  # ASan's quarantine holds up to 256 MiB of freed memory
            assert rss_after < 200 * 1024, (rss_before, rss_after)
            assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)

        # the edge paces a client whose queue is over half full; one whose queue stays there
        # for --slow-client-grace (5 s here) is cut off
        deadline = time.monotonic() + 5 + 5
        while e.metrics()["herald_edge_slow_client_disconnects_total"] < 1:
            assert time.monotonic() < deadline, "the slow reader was not cut off"
            time.sleep(0.05)

        # the slow client's connection was closed: it holds a prefix of the stream, then EOF
        slow.settimeout(0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                chunk = slow.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            slow_raw += chunk
        else:
            raise AssertionError("the slow client's connection is still open")
        # left: the witness and the good subscriber
        deadline = time.monotonic() + 5
        while e.metrics()['herald_edge_connections{transport="sse"}'] != 2:
            assert time.monotonic() < deadline, e.metrics()
            time.sleep(0.05)
    finally:
        slow.close()
    body = slow_raw.partition(b"\r\n\r\n")[2]
    print(f"slow client got {len(body)} bytes; edge RSS {rss_before} -> {rss_after} KiB")
    assert len(body) < n * size // 2, len(body)
    parser = SSEParser()
    events = parser.feed(body)
    datas = [ev.data for ev in events if ev.data != "probe"]
    assert 0 < len(datas) < n and datas == want[:len(datas)]
    good.close()

    # and it resumes with its last event id, losing nothing
    with e.sse(topic, headers={"Last-Event-ID": parser.dispatched_id}) as again:
        rest = n - len(datas)
        again.wait(lambda s: len(s.messages()) >= rest, 60, f"{rest} messages")
        assert [m.data for m in again.messages()] == want[len(datas):]
    w.check()
