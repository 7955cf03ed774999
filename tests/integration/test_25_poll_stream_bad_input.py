"""25 bad input to polling and streaming (DESIGN.md invariant 6, §Client contract): `wait` and
`limit` out of range or not numbers, cursors that do not parse (400 where the client chose them,
a reset where the client runtime resent them), cursors naming other topics, invalid and too many
topics. Every bad request gets its status and JSON error body, and a witness stream on the same
edge keeps receiving."""

import http.client
import json
import time
from urllib.parse import quote

import pytest

from conftest import assert_error, cursor_position, make_cursor

BAD_TOPICS = ["", "a" * 256, "a/b", "a b", "é", "a\x00b", "a?b", "a#b"]


class Witness:
    """An NDJSON stream on witness.s opened before the bad input: check() publishes one more
    message and asserts the stream has every witness message so far, in order."""

    def __init__(self, edge):
        self.edge = edge
        self.sent = []
        self.stream = edge.stream("witness.s", params={"cursor": "earliest"})
        assert self.stream.status == 200

    def check(self, timeout=10.0):
        data = f"w{len(self.sent) + 1}"
        self.edge.publish("witness.s", data.encode())
        self.sent.append(data)
        self.stream.wait_messages(len(self.sent), timeout)
        assert [m["data"] for m in self.stream.messages()] == self.sent
        assert not self.stream.closed


@pytest.fixture
def witness_edge(broker, edge_factory, request):
    mark = request.node.get_closest_marker("edge_args")
    e = edge_factory(broker, *(mark.args if mark else ()))
    w = Witness(e)
    w.check()
    yield e, w
    w.check()
    assert e.alive(), e.stderr_text()
    w.stream.close()


def ok(r):
    assert r.status_code == 200, f"{r.status_code}: {r.text}"
    return r.json()


@pytest.mark.edge_args("--poll-max-wait", "1")
def test_wait_out_of_range_or_not_a_number(witness_edge):
    e, w = witness_edge
    topic = "bad.wait"
    for wait in ("-1", "-0.5", "-1e-9", "abc", "", "1s", "1,5", "nan", "inf", "-inf", "0x",
                 "1e999", " ", "1 ", "9" * 100, "x" * 300):
        r = e.poll(topic, wait=wait, timeout=10)
        assert_error(r, 400, "invalid_request")
        assert "wait" in r.json()["error"]["message"], (wait, r.text)
    # above --poll-max-wait: clamped, so answered after 1 s rather than refused
    for wait in ("100", "1e9", "3600.5", "1.5", "9" * 60):
        t0 = time.monotonic()
        body = ok(e.poll(topic, wait=wait, timeout=10))
        took = time.monotonic() - t0
        assert body["messages"] == [] and 1.0 <= took < 4.0, (wait, took)
    # without a wait: --poll-wait (25), clamped to the cap as well
    t0 = time.monotonic()
    ok(e.poll(topic, timeout=10))
    assert 1.0 <= time.monotonic() - t0 < 4.0
    w.check()


@pytest.mark.edge_args("--poll-wait", "1", "--poll-limit", "7", "--poll-max-limit", "50")
def test_limit_out_of_range_or_not_a_number(witness_edge):
    e, w = witness_edge
    topic = "bad.limit"
    e.publish_batch([{"topic": topic, "data": f"m{i}"} for i in range(1, 121)])
    for limit in ("0", "-1", "-100", "1.5", "abc", "", "1e3", "ten", "9" * 100):
        r = e.poll(topic, cursor="earliest", limit=limit, wait=0)
        assert_error(r, 400, "invalid_request")
        assert "limit" in r.json()["error"]["message"], (limit, r.text)

    def seqs(**kw):
        return [m["seq"] for m in ok(e.poll(topic, cursor="earliest", wait=0, **kw))["messages"]]

    assert seqs() == list(range(1, 8))  # --poll-limit
    assert seqs(limit=1) == [1]
    for huge in ("51", "1000", "100000", str(10 ** 30), "9" * 60):  # clamped to the cap
        assert seqs(limit=huge) == list(range(1, 51)), huge
    # a wait given together with a bad limit is not waited for
    t0 = time.monotonic()
    assert_error(e.poll(topic, wait=5, limit="0"), 400, "invalid_request")
    assert time.monotonic() - t0 < 3.0
    w.check()


def bad_cursors(good):
    return {
        "garbage": "garbage!",
        "number": "12345",
        "truncated": good[:-3],
        "edited": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "unknown version": "b" + good[1:],
        "empty version": "a",
        "10 KiB": "a" + "A" * 10239,
    }


def test_explicit_bad_cursors_are_400(witness_edge):
    e, w = witness_edge
    good = e.publish("bad.cur", b"m1")["id"]
    for name, bad in bad_cursors(good).items():
        for param in ("cursor", "last_event_id"):
            for path in ("/v1/poll", "/v1/stream"):
                r = e.get(path, params={"topic": "bad.cur", param: bad, "wait": "0"})
                assert_error(r, 400, "invalid_cursor")
    # a cursor too long for the query parser is refused as a malformed request
    r = e.get("/v1/poll", params={"topic": "bad.cur", "cursor": "a" * 70000, "wait": "0"})
    assert r.status_code in (400, 431) and r.status_code != 200, r.text
    assert e.metrics()['herald_edge_connections{transport="stream"}'] == 1  # the witness
    w.check()


def test_resent_bad_cursors_reset_to_the_oldest_retained(witness_edge):
    e, w = witness_edge
    topic = "bad.resent"
    sent = [e.publish(topic, f"m{i}".encode()) for i in range(1, 6)]
    epoch = sent[0]["epoch"]
    want_reset = {"type": "reset", "topic": topic, "reason": "invalid_cursor", "next_seq": 1}
    n = 0
    for name, bad in bad_cursors(sent[0]["id"]).items():
        if name == "10 KiB":
            bad = bad[:4000]  # a header the HTTP layer accepts
        for header, value in (("Last-Event-ID", bad), ("If-None-Match", f'W/"{bad}"')):
            # the header wins over a good query cursor, and is the one that failed
            body = ok(e.poll(topic, cursor=sent[3]["id"], wait=0, headers={header: value}))
            assert body == {"messages": [
                {"type": "message", "topic": topic, "id": r["id"], "seq": r["seq"],
                 "epoch": epoch, "data": f"m{i}", "time": r["time"]}
                for i, r in enumerate(sent, 1)], "cursor": sent[-1]["id"],
                "reset": [want_reset]}, (name, header)
            with e.stream(topic, params={"cursor": sent[3]["id"]},
                          headers={header: value}) as st:
                st.wait(lambda s: len(s.events) >= 6, 10, f"reset and 5 messages ({name})")
                st.drain(0.1)
                assert st.events[0] == dict(want_reset, id=make_cursor({topic: (epoch, 0)}))
                assert [m["data"] for m in st.events[1:]] == ["m1", "m2", "m3", "m4", "m5"]
            n += 2
    assert e.metrics()['herald_edge_resets_total{reason="invalid_cursor"}'] == n
    w.check()


def test_cursor_naming_other_topics(witness_edge):
    e, w = witness_edge
    x, y = "bad.other.x", "bad.other.y"
    rx = [e.publish(x, f"x{i}".encode()) for i in (1, 2, 3)]
    ry = [e.publish(y, f"y{i}".encode()) for i in (1, 2)]
    # a cursor that names only x, a request for y: y starts from now (its old messages are not
    # sent), x is ignored
    body = ok(e.poll(y, cursor=rx[0]["id"], wait=0))
    assert body["messages"] == [] and body["reset"] == []
    assert cursor_position(body["cursor"], y) == (int(ry[0]["epoch"], 16), 2)
    assert cursor_position(body["cursor"], x) is None
    e.publish(x, b"x4")
    y3 = e.publish(y, b"y3")
    assert [m["data"] for m in ok(e.poll(y, cursor=body["cursor"], wait=0))["messages"]] == ["y3"]
    with e.stream(y, params={"cursor": rx[0]["id"]}) as st:
        time.sleep(0.3)  # the subscription is in place well before the next publish
        e.publish(x, b"x5")
        y4 = e.publish(y, b"y4")
        st.wait_messages(1)
        st.drain(0.2)
        assert [(m["topic"], m["data"], m["id"]) for m in st.messages()] == [(y, "y4", y4["id"])]
    # a cursor naming both, a request for x: x resumes from its position, y is ignored
    both = make_cursor({x: (rx[0]["epoch"], 1), y: (ry[0]["epoch"], 1)})
    body = ok(e.poll(x, cursor=both, wait=0))
    assert [m["data"] for m in body["messages"]] == ["x2", "x3", "x4", "x5"]
    assert cursor_position(body["cursor"], y) is None
    # the request's order and repeats do not matter
    body = ok(e.poll([y, x, y], cursor=both, wait=0))
    assert sorted(m["data"] for m in body["messages"]) == ["x2", "x3", "x4", "x5",
                                                           "y2", "y3", "y4"]
    assert cursor_position(body["cursor"], y)[1] == y4["seq"] == y3["seq"] + 1
    w.check()


def test_invalid_topics(witness_edge):
    e, w = witness_edge
    for path in ("/v1/poll", "/v1/stream"):
        for t in BAD_TOPICS:
            assert_error(e.get(path, params={"topic": t, "wait": "0"}), 400, "invalid_topic")
            assert_error(e.get(path, params=[("topic", "ok.t"), ("topic", t)]), 400,
                         "invalid_topic")
        assert_error(e.get(path + "?topic=a+b"), 400, "invalid_topic")
        conn = http.client.HTTPConnection(e.host, e.port, timeout=10)
        try:  # (requests would re-encode the bad escape)
            conn.request("GET", path + "?topic=a%zz&wait=0")
            r = conn.getresponse()
            assert (r.status, json.loads(r.read())["error"]["code"]) == (400, "invalid_request")
        finally:
            conn.close()
        assert_error(e.get(path, params={"wait": "0"}), 400, "invalid_request")  # no topic
        assert_error(e.get(path + "?topic"), 400, "invalid_topic")  # an empty name
    # the longest and the oddest valid names are fine
    for t in ("a" * 255, "A-z_0.9:@"):
        r = e.publish(t, b"ok")
        assert [m["data"] for m in ok(e.poll(t, cursor="earliest", wait=0))["messages"]] == ["ok"]
        assert quote(t, safe="") in e.poll(t, cursor="earliest", wait=0).url
        assert r["seq"] == 1
    w.check()


@pytest.mark.edge_args("--max-topics", "3")
def test_too_many_topics(witness_edge):
    e, w = witness_edge
    for path in ("/v1/poll", "/v1/stream"):
        r = e.get(path, params=[("topic", f"many.{i}") for i in range(4)] + [("wait", "0")])
        assert_error(r, 400, "too_many_topics")
    # three distinct topics (a repeat counts once) are fine
    for i in range(3):
        e.publish(f"many.{i}", b"x")
    body = ok(e.poll(["many.0", "many.1", "many.2", "many.1"], cursor="earliest", wait=0))
    assert sorted(m["topic"] for m in body["messages"]) == ["many.0", "many.1", "many.2"]
    w.check()


def test_if_none_match_lists_and_star(witness_edge):
    # RFC 9110 §13.1.2: a list of entity tags (the first is the one this edge sent) or "*"
    e, w = witness_edge
    topic = "inm.t"
    first = e.publish(topic, b"m1")
    second = e.publish(topic, b"m2")
    r = e.poll(topic, wait=0, headers={"If-None-Match": f'W/"{first["id"]}", W/"other"'})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["data"] for m in body["messages"]] == ["m2"] and body["reset"] == []
    assert body["cursor"] == second["id"]
    # "*" names no position: new messages only, and nothing new is a 304
    r = e.poll(topic, wait=0, headers={"If-None-Match": "*"})
    assert r.status_code == 304, r.text
    w.check()


def test_hex_and_infinite_waits_are_refused(witness_edge):
    e, w = witness_edge
    for wait in ("0x10", "inf", "nan", "1,5"):
        r = e.get(f"/v1/poll?topic=hex.t&wait={quote(wait)}")
        assert_error(r, 400, "invalid_request")
    w.check()


def test_empty_after_in_history_means_earliest(witness_edge):
    e, _ = witness_edge
    e.publish("hist.empty", b"h1")
    r = e.get("/v1/topics/hist.empty/messages?after=")
    assert r.status_code == 200, r.text
    assert [m["data"] for m in r.json()["messages"]] == ["h1"]
