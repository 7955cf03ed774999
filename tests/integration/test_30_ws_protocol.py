"""30 WebSocket protocol conformance — GET /v1/ws (docs/websocket.md, RFC 6455): every row of the
handshake table, answered with the exact status and headers; the frame rules over a raw socket
with exact bytes — each protocol fault answered with its close code (1002, 1003, 1007, 1009)
and the TCP connection closed, valid corner cases (fragments, interleaved control frames, UTF-8
split across fragments, every length form) accepted; and after each fault the other clients of
the same edge (a "witness" subscriber opened before it) are unaffected."""

import base64
import json
import struct
import time

import pytest
import requests

from conftest import make_cursor
from wsclient import (OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWS, Witness,
                      accept_for, close_payload, frame, handshake, new_key, text_frame,
                      upgrade_request)

PING = b'{"type":"ping","req":"p"}'


@pytest.fixture
def witness_edge(broker, edge_factory, request):
    """An edge (flags from @pytest.mark.edge_args) with a witness WebSocket subscriber; checked
    before and after the test, and the edge must still run."""
    mark = request.node.get_closest_marker("edge_args")
    e = edge_factory(broker, *(mark.args if mark else ()))
    w = Witness(e)
    w.check()
    yield e, w
    w.check()
    assert e.alive(), e.stderr_text()
    w.close()


def upgrade(edge, **kw):
    req, key = upgrade_request(**kw)
    answer, ws = handshake(edge, req)
    return answer, ws, key


def assert_json_error(answer, status, code=None):
    """`answer` is `status` with the JSON error body (DESIGN.md invariant 6); `code` checked when
    given."""
    assert answer.status == status, answer
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    body = answer.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


# ---- the handshake (docs/websocket.md, Handshake) ------------------------------------------------

def test_101_with_the_accept_of_rfc_6455(witness_edge):
    e, w = witness_edge
    # the example of RFC 6455 §1.3, then a fresh key
    for key in ("dGhlIHNhbXBsZSBub25jZQ==", new_key()):
        answer, ws, _ = upgrade(e, key=key)
        assert accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert (answer.status, answer.reason) == (101, "Switching Protocols"), answer
        assert answer.headers["upgrade"].lower() == "websocket", answer
        tokens = [t.strip().lower() for t in answer.headers["connection"].split(",")]
        assert "upgrade" in tokens, answer
        assert answer.headers["sec-websocket-accept"] == accept_for(key), answer
        assert answer.headers["sec-websocket-protocol"] == "herald.v1", answer
        assert "sec-websocket-extensions" not in answer.headers, answer
        assert answer.headers.get("content-length", "0") == "0", answer
        with ws:
            assert ws.buf == b""  # nothing before the client speaks (no topic in the query)
            ws.ping("after-upgrade")
            ws.send_close(1000, "done")
            assert ws.expect_close()[0] == 1000
    w.check()


ACCEPTED = {
    # name: (upgrade_request arguments, the subprotocol the 101 names or None)
    "herald.v1 among others": (dict(protocol="chat, herald.v1, superchat"), "herald.v1"),
    "no subprotocol": (dict(protocol=None), None),
    "tokens in any case and Connection with several tokens (Firefox)": (
        dict(headers={"Upgrade": "WebSocket", "Connection": "keep-alive, Upgrade"}),
        "herald.v1"),
    "permessage-deflate offered, not negotiated": (
        dict(headers={"Sec-WebSocket-Extensions":
                      "permessage-deflate; client_max_window_bits"}), "herald.v1"),
    "any Origin while --cors-origins is *": (
        dict(headers={"Origin": "http://anywhere.example"}), "herald.v1"),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_handshakes(witness_edge, case):
    e, w = witness_edge
    kw, protocol = ACCEPTED[case]
    answer, ws, key = upgrade(e, **kw)
    assert answer.status == 101, answer
    assert answer.headers["sec-websocket-accept"] == accept_for(key)
    assert answer.headers.get("sec-websocket-protocol") == protocol, answer
    assert "sec-websocket-extensions" not in answer.headers, answer
    with ws:
        ws.ping(case[:30])  # the protocol is herald.v1 either way
    w.check()


REFUSED = {
    # name: (upgrade_request arguments, status, error code or None when the spec names none)
    "only unknown subprotocols": (dict(protocol="chat, superchat"), 400, "invalid_request"),
    "version 12": (dict(headers={"Sec-WebSocket-Version": "12"}), 426, None),
    "version 14": (dict(headers={"Sec-WebSocket-Version": "14"}), 426, None),
    "version not a number": (dict(headers={"Sec-WebSocket-Version": "thirteen"}), 426, None),
    "no Upgrade": (dict(omit=("Upgrade",)), 426, None),
    "Upgrade: h2c": (dict(headers={"Upgrade": "h2c"}), 426, None),
    "no key": (dict(omit=("Sec-WebSocket-Key",)), 400, "invalid_request"),
    "empty key": (dict(headers={"Sec-WebSocket-Key": ""}), 400, "invalid_request"),
    "key of 15 bytes": (dict(key=base64.b64encode(b"x" * 15).decode()), 400, "invalid_request"),
    "key of 17 bytes": (dict(key=base64.b64encode(b"x" * 17).decode()), 400, "invalid_request"),
    "key without its padding": (dict(key="dGhlIHNhbXBsZSBub25jZQ"), 400, "invalid_request"),
    "key not base64": (dict(key="!!!!!!!!!!!!!!!!!!!!!!=="), 400, "invalid_request"),
    "no Connection": (dict(omit=("Connection",)), 400, "invalid_request"),
    "Connection: keep-alive": (dict(headers={"Connection": "keep-alive"}), 400,
                               "invalid_request"),
    "HTTP/1.0": (dict(version="HTTP/1.0"), 400, "invalid_request"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_handshakes(witness_edge, case):
    e, w = witness_edge
    kw, status, code = REFUSED[case]
    answer, ws, _ = upgrade(e, **kw)
    assert ws is None, f"upgraded: {answer}"
    assert_json_error(answer, status, code)
    assert "sec-websocket-accept" not in answer.headers, answer
    if status == 426:
        if case.startswith("version"):
            assert answer.headers.get("sec-websocket-version") == "13", answer
        else:
            assert answer.headers.get("upgrade", "").lower() == "websocket", answer
    w.check()


def test_missing_version_is_refused(witness_edge):
    """The spec's table does not name a missing Sec-WebSocket-Version; RFC 6455 §4.2.1 requires
    it, so the request must be refused (400 or 426), never upgraded."""
    e, w = witness_edge
    answer, ws, _ = upgrade(e, omit=("Sec-WebSocket-Version",))
    assert ws is None and answer.status in (400, 426), answer
    assert_json_error(answer, answer.status)
    w.check()


def test_plain_get_is_426_with_upgrade_websocket(witness_edge):
    e, w = witness_edge
    r = requests.get(e.url("/v1/ws?topic=a"), timeout=10)
    assert r.status_code == 426, (r.status_code, r.headers, r.text)
    assert r.headers.get("Upgrade", "").lower() == "websocket", r.headers
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["error"]["message"]
    w.check()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405(witness_edge, method):
    e, w = witness_edge
    answer, ws, _ = upgrade(e, method=method, headers={"Content-Length": "0"})
    assert ws is None, answer
    assert_json_error(answer, 405, "method_not_allowed")
    assert "GET" in [m.strip() for m in answer.headers["allow"].split(",")], answer
    r = requests.post(e.url("/v1/ws"), data=b"x", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
    w.check()


def test_origin_not_in_cors_origins_is_403(broker, edge_factory):
    e = edge_factory(broker, "--cors-origins", "http://good.example")
    w = Witness(e)  # no Origin: not a browser, accepted
    try:
        w.check()
        answer, ws, _ = upgrade(e, headers={"Origin": "http://evil.example"})
        assert ws is None, answer
        assert_json_error(answer, 403, "forbidden")
        answer, ws, _ = upgrade(e, headers={"Origin": "http://good.example.evil.example"})
        assert ws is None and answer.status == 403, answer
        answer, ws, key = upgrade(e, headers={"Origin": "http://good.example"})
        assert answer.status == 101, answer
        assert answer.headers["sec-websocket-accept"] == accept_for(key)
        with ws:
            ws.ping("good-origin")
        w.check()
    finally:
        w.close()


# ---- subscriptions in the query --------------------------------------------------------------------

def test_query_topic_subscribes_at_once_new_messages_only(witness_edge):
    e, w = witness_edge
    topic = "ws.query.new"
    e.publish(topic, b"old")
    with RawWS(e, f"/v1/ws?topic={topic}") as ws:
        first = ws.recv_json()
        assert first["type"] == "subscribed" and first["topics"] == [topic], first
        assert isinstance(first["cursor"], str) and "req" not in first, first
        # "from now" starts once the edge knows the topic's head: publish until one arrives,
        # then every later message arrives, once, in order, and "old" never does
        sent = []
        got = None
        for i in range(100):
            sent.append(e.publish(topic, f"new{i}".encode()))
            if ws.readable(0.05):
                got = ws.recv_json()
                break
        assert got is not None, "no message on a query subscription"
        k = [r["id"] for r in sent].index(got["id"])
        assert got["data"] == f"new{k}", got
        more = [e.publish(topic, f"new{i}".encode()) for i in range(len(sent), len(sent) + 5)]
        sent += more
        rest = [ws.recv_json() for _ in range(len(sent) - k - 1)]
        assert [m["data"] for m in [got] + rest] == [f"new{i}" for i in range(k, len(sent))]
        assert [m["id"] for m in [got] + rest] == [r["id"] for r in sent[k:]]
        assert not ws.readable(0.2)
    w.check()


@pytest.mark.parametrize("param", ["cursor", "last_event_id"])
def test_query_cursor_resumes(witness_edge, param):
    e, w = witness_edge
    a, b = "ws.query.a", "ws.query.b"
    start = e.publish_batch([{"topic": a, "data": "a0"}, {"topic": b, "data": "b0"}])
    cursor = make_cursor({m["topic"]: (m["epoch"], m["seq"]) for m in start["messages"]})
    later = [e.publish(a, b"a1"), e.publish(b, b"b1"), e.publish(a, b"a2")]
    with RawWS(e, f"/v1/ws?topic={a}&topic={b}&{param}={cursor}") as ws:
        first = ws.recv_json()
        assert first["type"] == "subscribed" and sorted(first["topics"]) == [a, b], first
        assert first["cursor"] == cursor, first  # its position: right after the cursor's
        got = [ws.recv_json() for _ in range(3)]
        # each topic's messages in order (the order across topics is not specified)
        assert [(m["data"], m["seq"]) for m in got if m["topic"] == a] == [
            ("a1", later[0]["seq"]), ("a2", later[2]["seq"])]
        assert [(m["data"], m["seq"]) for m in got if m["topic"] == b] == [
            ("b1", later[1]["seq"])]
        assert not ws.readable(0.2)
    with RawWS(e, f"/v1/ws?topic={a}&cursor=earliest") as ws:
        assert ws.recv_json()["type"] == "subscribed"
        assert [ws.recv_json()["data"] for _ in range(3)] == ["a0", "a1", "a2"]
    w.check()


BAD_QUERIES = {
    "topic=a%20b": "invalid_topic",
    "topic=": "invalid_topic",
    "topic=" + "a" * 256: "invalid_topic",
    "topic=a%2Fb": "invalid_topic",
    "topic=ok&topic=b%C3%A9": "invalid_topic",
    "topic=ok&cursor=zzz": "invalid_cursor",
    "topic=ok&last_event_id=a!!": "invalid_cursor",
    "&".join(f"topic=t{i}" for i in range(65)): "too_many_topics",
}


@pytest.mark.parametrize("query", list(BAD_QUERIES), ids=lambda q: q[:40])
def test_bad_query_is_refused_before_upgrading(witness_edge, query):
    e, w = witness_edge
    answer, ws, _ = upgrade(e, path=f"/v1/ws?{query}")
    assert ws is None, answer
    assert_json_error(answer, 400, BAD_QUERIES[query])
    w.check()


# ---- frames: protocol errors (docs/websocket.md, Close codes) -------------------------------------

def bad_close(code):
    return frame(OP_CLOSE, close_payload(code, b"x"))


def ping_with_16_bit_length():
    """A ping whose 16-bit length form says 125: a control frame's length must be 7-bit."""
    payload, key = b"p" * 125, b"\x01\x02\x03\x04"
    return (bytes([0x80 | OP_PING, 0x80 | 126]) + struct.pack(">H", 125) + key +
            bytes(b ^ key[i % 4] for i, b in enumerate(payload)))


PROTOCOL_ERRORS = {
    "unmasked text frame": frame(OP_TEXT, PING, mask=False),
    "unmasked ping": frame(OP_PING, b"x", mask=False),
    "unmasked close": frame(OP_CLOSE, close_payload(1000), mask=False),
    "RSV1": frame(OP_TEXT, PING, rsv=4),
    "RSV2": frame(OP_TEXT, PING, rsv=2),
    "RSV3": frame(OP_TEXT, PING, rsv=1),
    "RSV1 on a ping": frame(OP_PING, b"x", rsv=4),
    "opcode 0x3": frame(0x3, b""),
    "opcode 0x7": frame(0x7, b"x"),
    "opcode 0xB": frame(0xB, b""),
    "opcode 0xF": frame(0xF, b"x"),
    "ping of 126 bytes": frame(OP_PING, b"p" * 126),
    "pong of 126 bytes": frame(OP_PONG, b"p" * 126),
    "close of 126 bytes": frame(OP_CLOSE, close_payload(1000, b"r" * 124)),
    "ping with a 16-bit length of 125": ping_with_16_bit_length(),
    "fragmented ping": frame(OP_PING, b"x", fin=False),
    "fragmented pong": frame(OP_PONG, b"x", fin=False),
    "fragmented close": frame(OP_CLOSE, close_payload(1000), fin=False),
    "continuation without a start": frame(OP_CONT, PING),
    "unfinished continuation without a start": frame(OP_CONT, b"{", fin=False),
    "text frame inside a fragmented message": (frame(OP_TEXT, b'{"type":', fin=False) +
                                               frame(OP_TEXT, PING)),
    "binary frame inside a fragmented message": (frame(OP_TEXT, b'{"type":', fin=False) +
                                                 frame(OP_BINARY, b"x")),
    "close with a one-byte body": frame(OP_CLOSE, b"\x03"),
    **{f"close code {c}": bad_close(c)
       for c in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)},
}


@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS))
def test_protocol_errors_close_with_1002(witness_edge, case):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.ping("before")
        t0 = time.monotonic()
        ws.send(PROTOCOL_ERRORS[case])
        code, reason = ws.expect_close()
        assert code == 1002, (case, code, reason)
        assert time.monotonic() - t0 < 3
    w.check()


INVALID_UTF8 = {
    "0xFF": frame(OP_TEXT, b'{"type":"ping","req":"\xff"}'),
    "lone continuation byte": frame(OP_TEXT, b'{"type":"ping","req":"\x80"}'),
    "overlong slash": frame(OP_TEXT, b'{"type":"ping","req":"\xc0\xaf"}'),
    "overlong 3 bytes": frame(OP_TEXT, b'{"type":"ping","req":"\xe0\x80\xaf"}'),
    "surrogate": frame(OP_TEXT, b'{"type":"ping","req":"\xed\xa0\x80"}'),
    "above U+10FFFF": frame(OP_TEXT, b'{"type":"ping","req":"\xf4\x90\x80\x80"}'),
    "truncated at the end of the message": frame(OP_TEXT, b'{"type":"ping"} \xe2\x82'),
    "invalid in the data of a publish": frame(
        OP_TEXT, b'{"type":"publish","req":"p","topic":"ws.utf8","data":"\xc3\x28"}'),
    "split across two fragments (E2 82 | 28)": (
        frame(OP_TEXT, b'{"type":"ping","req":"\xe2\x82', fin=False) +
        frame(OP_CONT, b'\x28"}')),
    "split across three fragments (F0 | 90 | 28)": (
        frame(OP_TEXT, b'{"type":"ping","req":"\xf0', fin=False) +
        frame(OP_CONT, b"\x90", fin=False) + frame(OP_CONT, b'\x28"}')),
    "fragmented, the last fragment ends inside a sequence": (
        frame(OP_TEXT, b'{"type":"ping"}', fin=False) + frame(OP_CONT, b" \xf0\x90\x80")),
}


@pytest.mark.parametrize("case", list(INVALID_UTF8))
def test_invalid_utf8_closes_with_1007(witness_edge, case):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(INVALID_UTF8[case])
        code, reason = ws.expect_close()
        assert code == 1007, (case, code, reason)
    assert e.history("ws.utf8")["messages"] == []  # nothing stored
    w.check()


def test_binary_frames_close_with_1003(witness_edge):
    e, w = witness_edge
    for data in (frame(OP_BINARY, b"\x00\x01\xff"), frame(OP_BINARY, PING),
                 frame(OP_BINARY, b"x", fin=False) + frame(OP_CONT, b"y")):
        with RawWS(e) as ws:
            ws.ping("before")
            ws.send(data)
            code, reason = ws.expect_close()
            assert code == 1003, (data, code, reason)
    w.check()


# ---- frames: sizes (1009) -------------------------------------------------------------------------

def header_only(opcode, length, fin=True):
    """A masked frame header declaring `length` bytes, without its payload."""
    return frame(opcode, b"", fin=fin, length=length, key=b"\x11\x22\x33\x44")


def test_a_2_gib_frame_is_refused_from_its_header(witness_edge):
    """docs/websocket.md: refused from the length its frame header declares as soon as the
    first payload bytes arrive, nothing of it buffered."""
    e, w = witness_edge
    rss = e.rss_kib()
    with RawWS(e) as ws:
        ws.send(header_only(OP_TEXT, 1 << 31))
        time.sleep(0.3)  # the header alone: the edge may wait for the payload ...
        t0 = time.monotonic()
        ws.send(b"{")  # ... and refuses at its first byte
        code, reason = ws.expect_close(timeout=3)
        assert code == 1009, (code, reason)
        assert time.monotonic() - t0 < 2.0
    with RawWS(e) as ws:  # header and first bytes in one write
        ws.send(header_only(OP_TEXT, 1 << 31) + b'{"type":"publish"')
        assert ws.expect_close(timeout=3)[0] == 1009
    with RawWS(e) as ws:  # a fragment declaring 2 GiB after a small first one
        ws.send(frame(OP_TEXT, b'{"type":', fin=False) + header_only(OP_CONT, 1 << 31) + b'"')
        assert ws.expect_close(timeout=3)[0] == 1009
    with RawWS(e) as ws:  # a 64-bit length with its most significant bit set (RFC 6455 §5.2)
        ws.send(header_only(OP_TEXT, 1 << 63) + b"{")
        assert ws.expect_close(timeout=3)[0] in (1002, 1009)
    if not e.sanitized():
        assert e.rss_kib() - rss < 20 * 1024, (rss, e.rss_kib())
    w.check()


@pytest.mark.edge_args("--ws-max-message", "4096")
def test_ws_max_message(witness_edge):
    e, w = witness_edge
    topic = "ws.max"

    def publish_frame(size, req):
        """A publish request of exactly `size` bytes."""
        head = json.dumps({"type": "publish", "req": req, "topic": topic, "data": ""})
        pad = size - len(head.encode())
        return head[:-2] + "d" * pad + "\"}"

    with RawWS(e) as ws:
        # exactly the limit: accepted, in one frame and in three fragments
        msg = publish_frame(4096, "exact").encode()
        assert len(msg) == 4096
        answer, _ = ws.request({"type": "ping", "req": "warm"})
        ws.send(frame(OP_TEXT, msg))
        answer, _ = ws.recv_until(lambda o: o.get("req") == "exact")
        assert answer["type"] == "published", answer
        msg2 = publish_frame(4096, "exact2").encode()
        ws.send(frame(OP_TEXT, msg2[:1000], fin=False) + frame(OP_CONT, msg2[1000:3000], fin=False)
                + frame(OP_CONT, msg2[3000:]))
        answer, _ = ws.recv_until(lambda o: o.get("req") == "exact2")
        assert answer["type"] == "published", answer
    # one byte over, in one frame: refused from the header, before the payload is there
    with RawWS(e) as ws:
        msg = publish_frame(4097, "over").encode()
        t0 = time.monotonic()
        ws.send(frame(OP_TEXT, msg)[:100])  # the header and the first bytes only
        assert ws.expect_close(timeout=3)[0] == 1009
        assert time.monotonic() - t0 < 2.0
    with RawWS(e) as ws:
        ws.send(frame(OP_TEXT, publish_frame(4097, "over").encode()))  # the whole frame
        assert ws.expect_close(timeout=3)[0] == 1009
    # over across fragments: 2000 + 2000, then a fragment whose header makes it 6000
    with RawWS(e) as ws:
        msg = publish_frame(6000, "frag").encode()
        ws.send(frame(OP_TEXT, msg[:2000], fin=False) + frame(OP_CONT, msg[2000:4000], fin=False))
        t0 = time.monotonic()
        ws.send(header_only(OP_CONT, 2000) + b"d")
        assert ws.expect_close(timeout=3)[0] == 1009
        assert time.monotonic() - t0 < 2.0
    got = [m["data"] for m in e.history(topic)["messages"]]
    assert [len(d) for d in got] == [4096 - len(publish_frame(0, r)) for r in ("exact", "exact2")]
    w.check()


# ---- frames: close handshake ----------------------------------------------------------------------

@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000,
                                  4000, 4999])
def test_a_client_close_is_answered_with_its_code(witness_edge, code):
    """docs/websocket.md: the answer to a client's close echoes its status code (RFC 6455
    §5.5.1), then the edge closes the TCP connection."""
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.ping("before")
        ws.send_close(code, "bye ✓")
        got, reason = ws.expect_close()
        assert got == code, (code, got, reason)
    w.check()


def test_an_empty_close_is_answered_with_an_empty_close(witness_edge):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(frame(OP_CLOSE, b""))
        code, reason = ws.expect_close()
        assert (code, reason) == (None, ""), (code, reason)  # no code to echo
    w.check()


def test_a_close_reason_that_is_not_utf8_is_refused(witness_edge):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(frame(OP_CLOSE, struct.pack(">H", 1000) + b"\xff\xfe"))
        code, reason = ws.expect_close()
        assert code in (1002, 1007), (code, reason)
    w.check()


def test_nothing_is_answered_after_the_close(witness_edge):
    """After its close frame a client's further frames are not answered (RFC 6455 §5.5.1)."""
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(frame(OP_CLOSE, close_payload(1000)) + frame(OP_TEXT, PING))
        assert ws.expect_close(reply=False)[0] == 1000
        texts = [f for f in ws.frames if f.opcode == OP_TEXT]
        assert texts == [], texts
    w.check()


# ---- frames: valid traffic ------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["0", "5", "125"])
def test_ping_frame_is_answered_with_the_same_payload(witness_edge, payload):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(frame(OP_PING, payload))
        f = ws.recv_frame()
        assert (f.fin, f.rsv, f.opcode, f.payload) == (True, 0, OP_PONG, payload)
        # the exact bytes: FIN + pong, unmasked 7-bit length, the payload
        ws.send(frame(OP_PING, payload))
        ws._need(2 + len(payload), time.monotonic() + 5)
        assert ws.buf == bytes([0x8A, len(payload)]) + payload
        ws.buf = b""
    w.check()


def test_unsolicited_pong_is_ignored(witness_edge):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(frame(OP_PONG, b"") + frame(OP_PONG, b"unsolicited"))
        ws.ping("after-pongs")
        assert [f.opcode for f in ws.frames] == [OP_TEXT]
    w.check()


def test_fragments_with_interleaved_control_frames_and_split_utf8(witness_edge):
    e, w = witness_edge
    with RawWS(e) as ws:
        # € (E2 82 AC) split across fragments, a ping between them: the pong comes first
        ws.send(frame(OP_TEXT, b'{"type":"ping","req":"\xe2\x82', fin=False) +
                frame(OP_PING, b"mid") + frame(OP_CONT, b'\xac"}'))
        f = ws.recv_frame()
        assert (f.opcode, f.payload) == (OP_PONG, b"mid")
        assert ws.recv_json() == {"type": "pong", "req": "€"}
        # empty fragments, and a fragment per byte
        ws.send(frame(OP_TEXT, b"", fin=False) + frame(OP_CONT, PING, fin=False) +
                frame(OP_CONT, b""))
        assert ws.recv_json() == {"type": "pong", "req": "p"}
        parts = [frame(OP_TEXT if i == 0 else OP_CONT, PING[i:i + 1], fin=i == len(PING) - 1)
                 for i in range(len(PING))]
        ws.send(b"".join(parts))
        assert ws.recv_json() == {"type": "pong", "req": "p"}
        # an unsolicited pong inside a fragmented message is fine too
        ws.send(frame(OP_TEXT, PING[:5], fin=False) + frame(OP_PONG, b"x") +
                frame(OP_CONT, PING[5:]))
        assert ws.recv_json() == {"type": "pong", "req": "p"}
    w.check()


def test_frames_split_anywhere_and_batched_in_one_write(witness_edge):
    e, w = witness_edge
    with RawWS(e) as ws:
        data = text_frame({"type": "ping", "req": "bytewise"})
        for i in range(len(data)):  # one byte per write
            ws.send(data[i:i + 1])
            time.sleep(0.002)
        assert ws.recv_json() == {"type": "pong", "req": "bytewise"}
        ws.send(b"".join(text_frame({"type": "ping", "req": f"b{i}"}) for i in range(50)))
        assert [ws.recv_json()["req"] for _ in range(50)] == [f"b{i}" for i in range(50)]
    w.check()


def test_every_length_form_and_mask_key(witness_edge):
    e, w = witness_edge
    topic = "ws.lengths"
    # publish requests of these sizes: 7-bit, 16-bit and 64-bit lengths at their boundaries
    sizes = [70, 125, 126, 200, 65535, 65536, 300000]
    pads = []
    with RawWS(e) as ws:
        for i, n in enumerate(sizes):
            head = json.dumps({"type": "publish", "req": f"n{n}", "topic": topic, "data": ""})
            pads.append(n - len(head))
            body = head[:-2] + "x" * pads[-1] + "\"}"
            assert len(body) == n
            key = [b"\0\0\0\0", b"\xff\xff\xff\xff", None][i % 3]
            data = frame(OP_TEXT, body, key=key)
            assert data[1] & 0x7F == (n if n < 126 else 126 if n < 65536 else 127)
            ws.send(data)
            answer, _ = ws.recv_until(lambda o: o.get("req") == f"n{n}")
            assert answer["type"] == "published", answer
        text = "é ✓ \u0000 \U0001F600"  # UTF-8 of 2, 3 and 4 bytes, and a NUL (as \u0000)
        ws.send(frame(OP_TEXT, json.dumps({"type": "publish", "req": "utf8", "topic": topic,
                                           "data": text}, ensure_ascii=False)))
        answer, _ = ws.recv_until(lambda o: o.get("req") == "utf8")
        assert answer["type"] == "published", answer
    got = e.history(topic)["messages"]
    assert [len(m["data"]) for m in got[:-1]] == pads
    assert got[-1]["data"] == text and "encoding" not in got[-1]
    w.check()


def test_non_minimal_lengths_are_answered_or_refused_with_1002(witness_edge):
    """A 16-bit length for a short frame, a 64-bit one for a 16-bit frame: RFC 6455 §5.2 forbids
    the sender this but does not tell the receiver to refuse it; the edge answers, or closes with
    1002, and nothing else."""
    e, w = witness_edge
    body = b'{"type":"ping","req":"long-form"}'
    key = b"\x05\x06\x07\x08"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(body))
    for head in (bytes([0x81, 0x80 | 126]) + struct.pack(">H", len(body)),
                 bytes([0x81, 0x80 | 127]) + struct.pack(">Q", len(body))):
        with RawWS(e) as ws:
            ws.send(head + key + masked)
            f = ws.recv_frame()
            if f.opcode == OP_CLOSE:
                assert f.close_code()[0] == 1002, f
            else:
                assert f.opcode == OP_TEXT and f.json() == {"type": "pong", "req": "long-form"}
    w.check()


def test_empty_text_frame_is_an_error_frame_not_a_close(witness_edge):
    e, w = witness_edge
    with RawWS(e) as ws:
        ws.send(frame(OP_TEXT, b""))
        err = ws.recv_json()
        assert err["type"] == "error" and err["code"] == "invalid_request", err
        ws.ping("after-empty")
    w.check()
