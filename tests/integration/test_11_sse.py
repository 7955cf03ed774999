"""11 SSE framing (WHATWG HTML §9.2, DESIGN.md §Client contract, SSE): the exact bytes on the
wire for each kind of data, and what a browser's parser makes of them (conftest.SSEParser,
which is checked here first)."""

import base64
import json
import socket
import time

import pytest

from conftest import SSEParser, assert_error


# ---- the test's own parser, against the examples of WHATWG HTML §9.2.6 ---------------------------

def parse_all(data, split=None):
    p = SSEParser()
    if split is None:
        return p.feed(data, final=True), p
    events = []
    for i in range(0, len(data), split):
        events += p.feed(data[i:i + split])
    return events + p.feed(b"", final=True), p


SPEC_STREAM = (b"\xef\xbb\xbf: comment\r\ndata: YHOO\ndata: +2\r\ndata: 10\r\rid: 7\n"
               b"event: add\ndata\ndata:  two spaces\n\nretry: 1234\nretry: x\n\n"
               b"data:first\r\ndata\r\n\r\nid\ndata: after empty id\n\nevent: lost\n\n"
               b"data: incomplete")


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7])
def test_parser_follows_whatwg(split):
    events, p = parse_all(SPEC_STREAM, split)
    assert [(e.type, e.data, e.last_event_id) for e in events] == [
        ("message", "YHOO\n+2\n10", ""),
        ("add", "\n two spaces", "7"),
        ("message", "first\n", "7"),
        ("message", "after empty id", ""),
    ]
    assert p.comments == [" comment"]
    assert p.retry == 1234
    assert p.dispatched_id == ""  # the event with only event: is not dispatched, but sets it


# ---- the edge's stream ---------------------------------------------------------------------------

def sse_event_bytes(cursor, lines, event=None):
    out = b"id: " + cursor.encode() + b"\n"
    if event is not None:
        out += b"event: " + event.encode() + b"\n"
    for line in lines:
        out += b"data: " + line + b"\n"
    return out + b"\n"


def test_response_head_and_stream_start(broker, edge_factory):
    e = edge_factory(broker, "--retry", "1500")
    # the whole response head, as curl -i shows it
    with socket.create_connection((e.host, e.port), timeout=10) as s:
        s.sendall(b"GET /v1/sse?topic=frame.head HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in data or not data.endswith(b"retry: 1500\n\n"):
            assert time.monotonic() < deadline, data
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    fields = {}
    for line in lines[1:]:
        name, value = line.split(b": ", 1)
        fields[name.decode().lower()] = value.decode()
    assert fields["content-type"] == "text/event-stream; charset=utf-8"
    assert fields["cache-control"] == "no-cache"
    assert fields["x-accel-buffering"] == "no"
    assert "content-length" not in fields and "transfer-encoding" not in fields
    assert body == b":ok\nretry: 1500\n\n"

    with e.sse("frame.head") as st:
        assert st.status == 200
        assert st.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert st.headers["Cache-Control"] == "no-cache"
        assert st.headers["X-Accel-Buffering"] == "no"
        st.wait(lambda s: s.parser.retry == 1500, 5, "retry: line")


@pytest.fixture
def stream(broker, edge_factory):
    """An edge and a stream on topic frame.t from its beginning."""
    e = edge_factory(broker)
    st = e.sse("frame.t", params={"last_event_id": "earliest"})
    yield e, st
    st.close()


CASES = [
    # (published bytes, data lines on the wire, what the browser's event.data is)
    (b"hello", [b"hello"], "hello"),
    (b"a\nb\nc", [b"a", b"b", b"c"], "a\nb\nc"),
    (b"a\r\nb\r\nc", [b"a", b"b", b"c"], "a\nb\nc"),
    (b"a\rb\rc", [b"a", b"b", b"c"], "a\nb\nc"),
    (b"x\r\n\r\ny\n\rz", [b"x", b"", b"y", b"", b"z"], "x\n\ny\n\nz"),
    (b"ends with a newline\n", [b"ends with a newline", b""], "ends with a newline\n"),
    (b"\n", [b"", b""], "\n"),
    (b": not a comment", [b": not a comment"], ": not a comment"),
    (b"data: nested\n\nid: 9", [b"data: nested", b"", b"id: 9"], "data: nested\n\nid: 9"),
    ("héllo ✓".encode(), ["héllo ✓".encode()], "héllo ✓"),
    (b"", [b""], ""),
]


def test_data_lines_on_the_wire(stream):
    e, st = stream
    ids = [e.publish("frame.t", data)["id"] for data, _, _ in CASES]
    msgs = st.wait_messages(len(CASES))
    assert [m.data for m in msgs] == [want for _, _, want in CASES]
    assert [m.last_event_id for m in msgs] == ids
    expected = b":ok\nretry: 2000\n\n" + b"".join(
        sse_event_bytes(i, lines) for i, (_, lines, _) in zip(ids, CASES))
    assert bytes(st.raw) == expected


def test_empty_message_is_one_empty_data_line_and_is_dispatched(stream):
    e, st = stream
    first = e.publish("frame.t", b"")["id"]
    second = e.publish("frame.t", b"after")["id"]
    msgs = st.wait_messages(2)
    assert [(m.type, m.data, m.last_event_id) for m in msgs] == [
        ("message", "", first), ("message", "after", second)]
    assert bytes(st.raw).endswith(b"id: " + first.encode() + b"\ndata: \n\n" +
                                  b"id: " + second.encode() + b"\ndata: after\n\n")


def test_event_type(stream):
    e, st = stream
    a = e.publish("frame.t", b"1.5", event="price")["id"]
    b = e.publish("frame.t", b"x\ny", headers={"Herald-Event": "two-lines"})["id"]
    c = e.publish("frame.t", b"untyped")["id"]
    st.wait(lambda s: len(s.events) >= 3, 10, "3 events")
    assert [(ev.type, ev.data) for ev in st.events] == [
        ("price", "1.5"), ("two-lines", "x\ny"), ("message", "untyped")]
    assert bytes(st.raw).endswith(sse_event_bytes(a, [b"1.5"], "price") +
                                  sse_event_bytes(b, [b"x", b"y"], "two-lines") +
                                  sse_event_bytes(c, [b"untyped"]))


def test_binary_data_is_base64_and_format_json_says_so(broker, edge_factory):
    e = edge_factory(broker)
    blob = bytes([0, 255, 254, 10, 13, 128]) + b"\xc3\x28"  # not UTF-8, with CR and LF inside
    b64 = base64.b64encode(blob).decode()
    with e.sse("frame.bin", params={"last_event_id": "earliest"}) as plain, \
            e.sse("frame.bin", params={"last_event_id": "earliest", "format": "json"}) as js:
        r = e.publish("frame.bin", blob, headers={"Content-Type": "application/octet-stream"})
        t = e.publish("frame.bin", "text ✓".encode(), event="txt")
        plain.wait(lambda s: len(s.events) >= 2, 10, "2 events")
        assert [(ev.type, ev.data) for ev in plain.events] == [("message", b64),
                                                               ("txt", "text ✓")]
        assert sse_event_bytes(r["id"], [b64.encode()]) in plain.raw

        js.wait(lambda s: len(s.events) >= 2, 10, "2 events")
        first, second = js.events
        assert first.type == "message" and second.type == "txt"
        assert first.json() == {"topic": "frame.bin", "id": r["id"], "seq": 1,
                                "epoch": r["epoch"], "content_type": "application/octet-stream",
                                "data": b64, "encoding": "base64", "time": r["time"]}
        assert second.json() == {"topic": "frame.bin", "id": t["id"], "seq": 2,
                                 "epoch": t["epoch"], "event": "txt", "data": "text ✓",
                                 "time": t["time"]}
        # the JSON's id and the SSE id are the same cursor; the JSON is one data: line
        assert [ev.last_event_id for ev in js.events] == [r["id"], t["id"]]
        raw_events = bytes(js.raw).split(b"\n\n")
        assert raw_events[0] == b":ok\nretry: 2000"
        assert raw_events[1].split(b"\n")[0] == b"id: " + r["id"].encode()
        assert raw_events[2].split(b"\n")[:2] == [b"id: " + t["id"].encode(), b"event: txt"]
        assert len(raw_events[2].split(b"\n")) == 3
        assert json.loads(raw_events[2].split(b"\n")[2][len(b"data: "):]) == second.json()


def test_format_json_multiline_text_stays_one_data_line(stream, broker, edge_factory):
    e, _ = stream
    with e.sse("frame.t", params={"format": "json", "last_event_id": "earliest"}) as js:
        r = e.publish("frame.t", b"a\r\nb\rc\n")
        js.wait_messages(1)
        assert js.messages()[0].json()["data"] == "a\r\nb\rc\n"
        assert bytes(js.raw).count(b"\ndata: ") == 1
        assert r["id"] == js.messages()[0].last_event_id


def test_comment_heartbeats(broker, edge_factory):
    e = edge_factory(broker, "--heartbeat", "200")
    with e.sse("frame.hb") as st:
        t0 = time.monotonic()
        st.wait(lambda s: s.parser.comments.count("") >= 3, 5, "3 heartbeats")
        assert time.monotonic() - t0 < 2.0
        assert st.parser.comments[0] == "ok"
        assert st.events == []  # comments dispatch nothing
        assert b"\n:\n\n:\n\n:\n\n" in bytes(st.raw)
        # heartbeats do not disturb events
        r = e.publish("frame.hb", b"between beats")
        st.wait_messages(1)
        assert (st.events[0].data, st.events[0].last_event_id) == ("between beats", r["id"])


def test_bad_format_is_refused(edge):
    r = edge.get("/v1/sse", params={"topic": "frame.t", "format": "xml"})
    assert_error(r, 400, "invalid_request")
    r = edge.get("/v1/sse")
    assert_error(r, 400, "invalid_request")


def test_head_answers_the_stream_head_without_a_stream(broker, edge):
    edge.publish("frame.head2", b"one")
    with socket.create_connection((edge.host, edge.port), timeout=10) as s:
        # HEAD, then a GET on the same connection: the HEAD answer has no body (RFC 9110 §9.3.2)
        s.sendall(b"HEAD /v1/sse?topic=frame.head2&last_event_id=earliest HTTP/1.1\r\n"
                  b"Host: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        deadline = time.monotonic() + 10
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b'{"status":"ok"}'):
            assert time.monotonic() < deadline, data
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/event-stream; charset=utf-8\r\n" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest  # the next answer, no event before it
    assert edge.metrics()['herald_edge_connections{transport="sse"}'] == 0
    # and a HEAD with a bad subscription is refused as a GET would be
    r = edge.http.head(edge.url("/v1/sse?topic=bad%20topic"), timeout=10)
    assert r.status_code == 400
