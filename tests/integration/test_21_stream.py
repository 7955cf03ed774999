"""21 HTTP streaming — GET /v1/stream (DESIGN.md §Client contract; docs/http-api.md): a chunked
response (RFC 9112 §7.1) of newline-delimited JSON, one object a line, each with a `type`;
heartbeats as empty lines; reset lines; on SIGTERM a last shutdown line and a proper end of the
chunked body; a client that stops reading is cut off with bounded edge memory while the others
keep receiving, and resumes from its last id."""

import base64
import json
import os
import signal
import socket
import time


from conftest import assert_error, cursor_position, make_cursor

STREAMS = 'herald_edge_connections{transport="stream"}'


class RawStream:
    """GET a stream over a plain socket, to see the chunked coding itself: chunk() returns one
    chunk's data (b"" for the last chunk), after checking its framing."""

    def __init__(self, edge, target, headers=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((edge.host, edge.port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        self.buf = b""
        self.body = b""  # de-chunked
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"stream: nothing more within the time; have {self.buf[-200:]!r}")
        self.sock.settimeout(left)
        data = self.sock.recv(1 << 20)
        if not data:
            raise AssertionError(f"stream: EOF inside the chunked body; have {self.buf[-200:]!r}")
        self.buf += data

    def chunk(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        size_line = self.buf.split(b"\r\n", 1)[0]
        assert size_line and all(c in b"0123456789abcdef" for c in size_line), size_line
        size = int(size_line, 16)
        start = len(size_line) + 2
        while len(self.buf) < start + size + 2:
            self._fill(deadline)
        data = self.buf[start:start + size]
        assert self.buf[start + size:start + size + 2] == b"\r\n", self.buf[:start + size + 2]
        self.buf = self.buf[start + size + 2:]
        self.body += data
        return data

    def objects(self, n, timeout=10.0):
        """Read chunks until the body holds n complete lines; returns them parsed (None for an
        empty line). Every chunk ends at a line end: a line is never split across chunks."""
        deadline = time.monotonic() + timeout
        while self.body.count(b"\n") < n:
            data = self.chunk(max(0.01, deadline - time.monotonic()))
            assert data, "the stream ended"
            assert data.endswith(b"\n"), data
        return [json.loads(line) if line else None for line in self.body.split(b"\n")[:n]]

    def eof(self, timeout):
        """True when the edge closes the connection within `timeout` s (nothing else arrives)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.buf += data
        return False

    def close(self):
        self.sock.close()


def msg(topic, reply, data, **extra):
    m = {"type": "message", "topic": topic, "seq": reply["seq"], "epoch": reply["epoch"]}
    m.update(extra)
    m.update({"data": data, "time": reply["time"], "id": reply["id"]})
    return m


def test_chunked_ndjson_framing(broker, edge):
    topic = "stream.frame"
    blob = bytes([0, 255, 10, 13, 128])
    r1 = edge.publish(topic, b'{"p":3}', event="price",
                      headers={"Content-Type": "application/json"})
    r2 = edge.publish(topic, blob)
    s = RawStream(edge, f"/v1/stream?topic={topic}&cursor=earliest")
    try:
        assert s.status_line == "HTTP/1.1 200 OK"
        assert s.headers["content-type"] == "application/x-ndjson"
        assert s.headers["cache-control"] == "no-cache"
        assert s.headers["x-accel-buffering"] == "no"
        assert s.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in s.headers
        first = s.objects(2)
        assert first == [
            msg(topic, r1, '{"p":3}', event="price", content_type="application/json"),
            msg(topic, r2, base64.b64encode(blob).decode(), encoding="base64")]
        # "type" leads each line
        assert all(line.startswith(b'{"type":"') for line in s.body.split(b"\n")[:2])
        r3 = edge.publish(topic, b"two\nlines\r\nhere")
        third = s.objects(3)[2]
        assert third == msg(topic, r3, "two\nlines\r\nhere")
        assert s.body.count(b"\n") == 3  # the newlines of the data are escaped in the JSON
    finally:
        s.close()

    # several topics: every line names its topic, and its id is the cursor of the whole stream
    other = "stream.frame.other"
    with edge.stream([topic, other], params={"cursor": r3["id"]}) as st:
        assert st.status == 200
        assert st.headers["Content-Type"] == "application/x-ndjson"
        time.sleep(0.2)
        o1 = edge.publish(other, b"o1")
        r4 = edge.publish(topic, b"t4")
        st.wait_messages(2)
        got = st.messages()
        # order is guaranteed per topic, not across topics (each has its own log)
        by_topic = {m["topic"]: m for m in got}
        assert sorted((m["topic"], m["data"]) for m in got) == [(topic, "t4"), (other, "o1")]
        m_o1, m_t4 = by_topic[other], by_topic[topic]
        assert cursor_position(m_o1["id"], other) == (int(o1["epoch"], 16), 1)
        assert cursor_position(m_t4["id"], topic)[1] == r4["seq"]
        # the later line's cursor holds both positions
        last = got[1]["id"]
        assert cursor_position(last, topic)[1] == r4["seq"]
        assert cursor_position(last, other)[1] == 1


def test_every_id_names_every_topic_of_the_stream(broker, edge):
    """A stream whose cursor names topic a only (with history to read) and topic b (new): the
    id of its very first line already names b at its head, so a client that resumes from any
    line gets what b received meanwhile (and does not start b over "from now")."""
    a, b = "stream.ids.a", "stream.ids.b"
    first = edge.publish_batch([{"topic": a, "data": f"a{i}"} for i in range(1, 301)])["messages"]
    rb = edge.publish(b, b"b1")
    head_b = (int(rb["epoch"], 16), 1)
    with edge.stream([a, b], params={"cursor": first[0]["id"]}) as st, \
            edge.sse([a, b], params={"format": "json"},
                     headers={"Last-Event-ID": first[0]["id"]}) as sse:
        st.wait_messages(299)
        sse.wait_messages(299)
        assert [m["data"] for m in st.messages()] == [f"a{i}" for i in range(2, 301)]
        assert all(cursor_position(m["id"], b) == head_b for m in st.messages())
        assert all(cursor_position(ev.last_event_id, b) == head_b for ev in sse.messages())
        resume_from = st.messages()[0]["id"]
    edge.publish(b, b"b2")
    with edge.stream([a, b], params={"cursor": resume_from}) as st:
        st.wait_messages(299)
        st.drain(0.2)
        got = [(m["topic"], m["data"]) for m in st.messages()]
    assert [d for t, d in got if t == b] == ["b2"]
    assert [d for t, d in got if t == a] == [f"a{i}" for i in range(3, 301)]


def test_head_answers_the_stream_head_without_a_stream(broker, edge):
    r = edge.http.head(edge.url("/v1/stream?topic=stream.head"), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/x-ndjson"
    assert r.content == b""
    assert edge.metrics()[STREAMS] == 0


def test_heartbeat_is_an_empty_line(broker, edge_factory):
    e = edge_factory(broker, "--heartbeat", "200")
    topic = "stream.hb"
    s = RawStream(e, f"/v1/stream?topic={topic}")
    try:
        t0 = time.monotonic()
        assert s.objects(3, timeout=3) == [None, None, None]
        assert time.monotonic() - t0 < 2.5
        assert s.body == b"\n\n\n"
        r = e.publish(topic, b"between beats")
        deadline = time.monotonic() + 5
        while b"between beats" not in s.body:
            s.chunk(max(0.01, deadline - time.monotonic()))
        lines = s.body.split(b"\n")
        assert json.loads(lines[-2]) == msg(topic, r, "between beats")
        assert set(lines[:-2]) == {b""}
        n = s.body.count(b"\n")
        s.objects(n + 2, timeout=3)  # and beats go on
        assert s.body.split(b"\n")[n:n + 2] == [b"", b""]
    finally:
        s.close()
    with e.stream(topic) as st:
        st.wait(lambda x: x.parser.heartbeats >= 2, 3, "2 heartbeats")
        assert st.events == []


def test_reset_lines(broker_factory, edge_factory):
    b = broker_factory("--retention-messages", "5", "--trim-interval", "50")
    e = edge_factory(b)
    topic = "stream.trim"
    sent = [e.publish(topic, f"m{i}".encode()) for i in range(1, 21)]
    with b.client() as c:
        deadline = time.monotonic() + 5
        while c.fetch(topic).first_seq < 16:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    epoch = sent[0]["epoch"]
    for kw, reason in (({"params": {"cursor": sent[1]["id"]}}, "retention"),
                       ({"headers": {"Last-Event-ID": sent[1]["id"]}}, "retention"),
                       ({"headers": {"Last-Event-ID": "garbage!"}}, "invalid_cursor"),
                       ({"headers": {"If-None-Match": 'W/"' + sent[3]["id"][:-2] + '"'}},
                        "invalid_cursor")):
        with e.stream(topic, **kw) as st:
            st.wait(lambda x: len(x.events) >= 6, 10, "a reset and 5 messages")
            st.drain(0.2)
            assert st.events == [
                {"type": "reset", "topic": topic, "reason": reason, "next_seq": 16,
                 "id": make_cursor({topic: (epoch, 15)})}] + [
                msg(topic, r, f"m{i}") for i, r in enumerate(sent[15:], 16)], kw
    m = e.metrics()
    assert m['herald_edge_resets_total{reason="retention"}'] == 2
    assert m['herald_edge_resets_total{reason="invalid_cursor"}'] == 2


def test_sigterm_ends_with_a_shutdown_line_and_the_last_chunk(broker, edge_factory):
    a = edge_factory(broker, "--retry", "1000", name="a")
    b = edge_factory(broker, name="b")
    topic = "stream.term"
    sent = [a.publish(topic, f"m{i}".encode()) for i in (1, 2)]
    raw = RawStream(a, f"/v1/stream?topic={topic}&cursor=earliest")
    st = a.stream(topic, params={"cursor": sent[0]["id"]})
    try:
        assert raw.objects(2) == [msg(topic, r, f"m{i}") for i, r in enumerate(sent, 1)]
        st.wait_messages(1)
        os.kill(a.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        shutdown = raw.objects(3)[2]
        assert shutdown["type"] == "shutdown" and shutdown["cursor"] == sent[-1]["id"]
        assert 1000 <= shutdown["retry_ms"] < 2000, shutdown
        assert list(shutdown) == ["type", "cursor", "retry_ms", "reason"]
        assert raw.chunk(5) == b""  # the last chunk: the body ends properly ...
        assert raw.buf == b""  # ... with nothing after it (no trailer)
        st.wait_closed(5)  # http.client saw a complete chunked body
        assert st.events[-1]["type"] == "shutdown" and st.events[-1]["cursor"] == sent[-1]["id"]
        assert time.monotonic() - t0 < 5.0
    finally:
        raw.close()
        st.close()
    assert a.proc.wait(timeout=10) == 0, a.stderr_text()
    # the cursor of the shutdown line resumes on another edge
    r3 = b.publish(topic, b"m3")
    with b.stream(topic, params={"cursor": shutdown["cursor"]}) as again:
        again.wait_messages(1)
        again.drain(0.2)
        assert again.events == [msg(topic, r3, "m3")]


def test_a_draining_edge_closes_the_connection_after_the_last_chunk(broker, edge_factory):
    a = edge_factory(broker, "--slow-client-grace", "3000")
    raw = RawStream(a, "/v1/stream?topic=stream.drain")
    try:
        time.sleep(0.2)
        os.kill(a.proc.pid, signal.SIGTERM)
        assert raw.objects(1)[0]["type"] == "shutdown"
        assert raw.chunk(5) == b""
        assert raw.eof(1.5), "the connection stays open after the stream ended"
    finally:
        raw.close()
        a.proc.wait(timeout=10)


def test_a_burst_longer_than_the_queue_paces_a_client_that_reads(broker, edge_factory):
    # One commit of 8,000 messages (8 MB) to a client with a small receive window, whose queue at
    # the edge holds 256 KiB / 64 messages: the edge must not push it all at once and cut the
    # client off; it reads the log at the client's pace instead, and the client, which keeps
    # reading, gets everything on its one connection.
    e = edge_factory(broker, "--queue-bytes", "256K", "--queue-messages", "64")
    topic = "stream.burst"
    start = e.publish(topic, b"start")
    n, payload = 8000, "b" * 1000
    st = RawStream(e, f"/v1/stream?topic={topic}&cursor={start['id']}", rcvbuf=4096)
    try:
        e.publish(topic, b"probe")
        e.publish_batch([{"topic": topic, "data": f"{i:05d} {payload}"} for i in range(n)])
        deadline = time.monotonic() + 60
        NL = b"\n"
        while st.body.count(NL) < n + 1:  # chunk() keeps the de-chunked body
            data = st.chunk(max(0.01, deadline - time.monotonic()))
            assert data != b"", f"the stream ended after {st.body.count(NL)} lines"
        lines = [json.loads(x) for x in st.body.split(b"\n") if x]
    finally:
        st.sock.close()
    got = [o["data"] for o in lines if o["type"] == "message"]
    assert got == ["probe"] + [f"{i:05d} {payload}" for i in range(n)]
    m = e.metrics()
    assert m["herald_edge_slow_client_disconnects_total"] == 0
    assert m["herald_edge_catchups_total"] >= 2  # it was sent back to the log to be paced


def test_a_client_that_stops_reading_is_cut_off(broker, edge_factory):
    e = edge_factory(broker, "--queue-bytes", "256K", "--slow-client-grace", "2000")
    topic = "stream.slow"
    n, size, batch = 10000, 1024, 500
    start = e.publish(topic, b"start")
    slow = RawStream(e, f"/v1/stream?topic={topic}&cursor={start['id']}", rcvbuf=4096)
    good = e.stream(topic, params={"cursor": start["id"]})
    try:
        probe = e.publish(topic, b"probe")
        assert slow.objects(1)[0]["data"] == "probe"  # both subscribers are live
        good.wait_messages(1)
        rss_before = e.rss_kib()
        payload = "p" * (size - 8)
        want = [f"{i:07d} {payload}" for i in range(n)]
        cut_at = None
        for k in range(0, n, batch):
            e.publish_batch([{"topic": topic, "data": d} for d in want[k:k + batch]])
            good.drain(0)
            if cut_at is None and e.metrics()["herald_edge_slow_client_disconnects_total"] >= 1:
                cut_at = k + batch
                break
        # a client whose queue stays over half full for --slow-client-grace is cut off (until
        # then the edge paces it, reading the log at its speed)
        deadline = time.monotonic() + 2.0 + 5
        while cut_at is None and time.monotonic() < deadline:
            if e.metrics()["herald_edge_slow_client_disconnects_total"] >= 1:
                cut_at = n
            time.sleep(0.05)
        assert cut_at is not None, "the client that stopped reading was not cut off"
        # the client reads again, within the grace: it gets what was queued for it, then the end
        # of the chunked body (not a reset connection) ...
        deadline = time.monotonic() + 10
        while (data := slow.chunk(max(0.01, deadline - time.monotonic()))) != b"":
            assert data.endswith(b"\n")
        # ... and its connection serves its next request, also after the grace
        slow.sock.sendall(b"GET /v1/poll?topic=stream.idle&wait=3 HTTP/1.1\r\n"
                          b"Host: x\r\n\r\n")
        poll_sent = time.monotonic()
        for k in range(cut_at, n, batch):  # the rest, for the other stream
            e.publish_batch([{"topic": topic, "data": d} for d in want[k:k + batch]])
            good.drain(0)
        good.wait(lambda s: len(s.messages()) >= n + 1, 60, f"{n} messages")
        assert [m["data"] for m in good.messages()[1:]] == want  # the other stream has all
        rss_after = e.rss_kib()
        if not e.sanitized():
            assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)

        lines = [json.loads(x) for x in slow.body.split(b"\n") if x]
        assert lines[0]["data"] == "probe" and lines[0]["id"] == probe["id"]
        got = [o["data"] for o in lines[1:]]
        assert all(o["type"] == "message" for o in lines)
        assert 0 < len(got) < n and got == want[:len(got)]
        assert len(slow.body) < n * size // 2
        print(f"cut off after {len(got)} messages ({len(slow.body)} bytes) of the first {cut_at};"
              f" edge RSS {rss_before} -> {rss_after} KiB")
        # the cut-off stream is gone from the edge: only the good one is left
        deadline = time.monotonic() + 5
        while e.metrics()[STREAMS] != 1:
            assert time.monotonic() < deadline, e.metrics()[STREAMS]
            time.sleep(0.05)
        # the poll sent on the same connection is answered after its wait, past the grace
        deadline = poll_sent + 10
        while b"\r\n\r\n" not in slow.buf or not slow.buf.endswith(b'"reset":[]}'):
            slow._fill(deadline)
        assert slow.buf.startswith(b"HTTP/1.1 200 OK\r\n"), slow.buf[:200]
        assert time.monotonic() - poll_sent >= 3.0
        last_id = lines[-1]["id"]
    finally:
        slow.close()
        good.close()
    # it resumes from its last line's id, losing nothing
    with e.stream(topic, params={"cursor": last_id}) as again:
        rest = n - len(got)
        again.wait(lambda s: len(s.messages()) >= rest, 60, f"{rest} messages")
        assert [m["data"] for m in again.messages()] == want[len(got):]


def test_bad_subscription_is_refused_before_the_stream(broker, edge):
    assert_error(edge.get("/v1/stream"), 400, "invalid_request")
    assert_error(edge.get("/v1/stream", params={"topic": "a b"}), 400, "invalid_topic")
    assert_error(edge.get("/v1/stream", params={"topic": "t", "cursor": "nope"}), 400,
                 "invalid_cursor")
    assert edge.metrics()[STREAMS] == 0
