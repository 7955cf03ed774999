"""12 SSE resume (DESIGN.md invariants 3-5, §Client contract): a subscriber continues exactly
where it stopped on another edge, with Last-Event-ID or ?last_event_id=, across several topics;
`earliest`, no cursor, cursors naming other topics; resets for trimmed history and for a log
that was recreated."""

import time

from conftest import cursor_position, make_cursor


def publish_n(edge, topic, n, start=1):
    return [edge.publish(topic, f"m{i}".encode()) for i in range(start, start + n)]


def datas(events):
    return [e.data for e in events]


def expect_exactly(stream, want, settle=0.3, timeout=10.0):
    """The stream's message events are exactly `want` (data), also after `settle` s more."""
    stream.wait_messages(len(want), timeout)
    stream.drain(settle)
    assert datas(stream.messages()) == want


def publish_until_received(edge, stream, topic, first, tries=50):
    """Publish m<first>, m<first+1>, ... every 50 ms until the stream shows a message: the way
    to start a subscription that has no position without guessing when it is in place. Returns
    the number published."""
    for k in range(tries):
        edge.publish(topic, f"m{first + k}".encode())
        stream.drain(0.05)
        if stream.messages():
            return k + 1
    raise AssertionError(f"nothing arrived after {tries} publishes")


def test_resume_on_another_edge_with_last_event_id(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    sent = publish_n(a, "resume.t", 20)
    with a.sse("resume.t", params={"last_event_id": "earliest"}) as s:
        got = s.wait_messages(5)
    fifth = got[4]
    assert (fifth.data, fifth.last_event_id) == ("m5", sent[4]["id"])

    with b.sse("resume.t", headers={"Last-Event-ID": fifth.last_event_id}) as s:
        expect_exactly(s, [f"m{i}" for i in range(6, 21)])
        assert [e.last_event_id for e in s.messages()] == [r["id"] for r in sent[5:]]
        assert [e.type for e in s.events] == ["message"] * 15  # no reset
        # and it goes on live
        r = b.publish("resume.t", b"m21")
        expect_exactly(s, [f"m{i}" for i in range(6, 22)])
        assert s.messages()[-1].last_event_id == r["id"]


def test_resume_three_topics_on_one_connection(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topics = ["multi.a", "multi.b", "multi.c"]
    for i in range(1, 11):
        for t in topics:
            a.publish(t, f"{t}-{i}".encode())
    with a.sse(topics, params={"last_event_id": "earliest", "format": "json"}) as s:
        got = s.wait_messages(8)
    seen = [e.json() for e in got[:8]]
    cursor = got[7].last_event_id
    # the cursor holds a position for each topic delivered so far, and only those
    for t in topics:
        delivered = [m["seq"] for m in seen if m["topic"] == t]
        pos = cursor_position(cursor, t)
        assert (pos[1] if pos else 0) == (delivered[-1] if delivered else 0), (t, pos)

    with b.sse(topics, params={"format": "json"}, headers={"Last-Event-ID": cursor}) as s:
        rest = s.wait_messages(30 - 8)
        s.drain(0.3)
        rest = [e.json() for e in s.messages()]
    assert len(rest) == 22
    for t in topics:
        before = [m["seq"] for m in seen if m["topic"] == t]
        after = [m["seq"] for m in rest if m["topic"] == t]
        assert before + after == list(range(1, 11)), t
        assert [m["data"] for m in rest if m["topic"] == t] == [f"{t}-{i}" for i in after]


def test_last_event_id_query_parameter_and_header_wins(broker, edge_factory):
    a = edge_factory(broker)
    sent = publish_n(a, "query.t", 20)
    with a.sse("query.t", params={"last_event_id": sent[4]["id"]}) as s:
        expect_exactly(s, [f"m{i}" for i in range(6, 21)])
    # header (what the browser resent) wins over the query (its original URL)
    with a.sse("query.t", params={"last_event_id": sent[2]["id"]},
               headers={"Last-Event-ID": sent[9]["id"]}) as s:
        expect_exactly(s, [f"m{i}" for i in range(11, 21)])
    # the `cursor` parameter is a synonym
    with a.sse("query.t", params={"cursor": sent[17]["id"]}) as s:
        expect_exactly(s, ["m19", "m20"])


def test_earliest_and_no_cursor(broker, edge_factory):
    a = edge_factory(broker)
    publish_n(a, "start.t", 20)
    with a.sse("start.t", params={"last_event_id": "earliest"}) as s:
        expect_exactly(s, [f"m{i}" for i in range(1, 21)])
    with a.sse("start.t", headers={"Last-Event-ID": "earliest"}) as s:
        expect_exactly(s, [f"m{i}" for i in range(1, 21)])
    # no cursor (or `latest`): only what is published from now on
    head = 20
    for kw in ({}, {"params": {"last_event_id": "latest"}}):
        with a.sse("start.t", **kw) as s:
            n = publish_until_received(a, s, "start.t", head + 1)
            got = [int(d[1:]) for d in datas(s.messages())]
            assert got[0] > head and got == list(range(got[0], head + n + 1)), (got, head)
            publish_n(a, "start.t", 5, head + n + 1)
            expect_exactly(s, [f"m{i}" for i in range(got[0], head + n + 6)])
            head += n + 5


def test_cursor_of_other_topics(broker, edge_factory):
    a = edge_factory(broker)
    x = publish_n(a, "other.x", 5)
    y = publish_n(a, "other.y", 3)
    # a cursor that names only other.y: other.x starts from now (nothing old)
    with a.sse("other.x", headers={"Last-Event-ID": y[-1]["id"]}) as s:
        n = publish_until_received(a, s, "other.x", 6)
        got = [int(d[1:]) for d in datas(s.messages())]
        assert got[0] > 5 and got == list(range(got[0], 5 + n + 1)), got
        a.publish("other.y", b"y-not-wanted")
        a.publish("other.x", f"m{5 + n + 1}".encode())
        expect_exactly(s, [f"m{i}" for i in range(got[0], 5 + n + 2)])
    last_x = 5 + n + 1

    # a cursor naming both topics, a request for other.x only: other.y is ignored, other.x
    # resumes from its position
    with a.sse(["other.x", "other.y"], params={"format": "json",
                                               "last_event_id": "earliest"}) as s:
        s.wait_messages(last_x + 4)
        both = s.messages()[-1].last_event_id
        assert cursor_position(both, "other.y")[1] == 4
        assert cursor_position(both, "other.x")[1] == last_x
    x3 = make_cursor({"other.x": (x[0]["epoch"], 3),
                      "other.y": (y[0]["epoch"], 1)})
    with a.sse("other.x", headers={"Last-Event-ID": x3}) as s:
        expect_exactly(s, [f"m{i}" for i in range(4, last_x + 1)])
        a.publish("other.y", b"y-again")
        s.drain(0.3)
        assert len(s.messages()) == last_x - 3
        ids = [cursor_position(e.last_event_id, "other.x")[1] for e in s.messages()]
        assert ids == list(range(4, last_x + 1))


def wait_first_seq(client, topic, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    fr = client.fetch(topic)
    while fr.first_seq < want and time.monotonic() < deadline:
        time.sleep(0.05)
        fr = client.fetch(topic)
    assert fr.first_seq == want, f"first_seq {fr.first_seq}, want {want}"


def test_reset_for_trimmed_history(broker_factory, edge_factory):
    b = broker_factory("--retention-messages", "5", "--trim-interval", "50")
    a = edge_factory(b)
    sent = publish_n(a, "trim.t", 20)
    with b.client() as c:
        wait_first_seq(c, "trim.t", 16)
    for fmt in ("data", "json"):
        with a.sse("trim.t", params={"format": fmt},
                   headers={"Last-Event-ID": sent[1]["id"]}) as s:
            s.wait(lambda st: len(st.events) >= 6, 10, "a reset and 5 messages")
            s.drain(0.3)
            reset, *msgs = s.events
            assert reset.type == "herald.reset"
            assert reset.json() == {"type": "reset", "topic": "trim.t", "reason": "retention",
                                    "next_seq": 16}
            # the reset's id: the position just before the first retained message
            assert reset.last_event_id == make_cursor({"trim.t": (sent[0]["epoch"], 15)})
            assert len(msgs) == 5 and all(m.type == "message" for m in msgs)
            if fmt == "json":
                assert [m.json()["seq"] for m in msgs] == [16, 17, 18, 19, 20]
            else:
                assert datas(msgs) == [f"m{i}" for i in range(16, 21)]
            assert [m.last_event_id for m in msgs] == [r["id"] for r in sent[15:]]
    # a position just before the oldest retained message is not a reset
    with a.sse("trim.t", headers={"Last-Event-ID": sent[14]["id"]}) as s:
        expect_exactly(s, [f"m{i}" for i in range(16, 21)])
        assert [e.type for e in s.events] == ["message"] * 5
    m = a.metrics()
    assert m['herald_edge_resets_total{reason="retention"}'] == 2


def test_reset_when_the_log_was_recreated(broker_factory, edge_factory, tmp_path):
    b = broker_factory()
    a = edge_factory(b, "--broker-down-after", "1000")
    old = publish_n(a, "epoch.t", 5)
    # the broker loses its data: same endpoints, a fresh data dir
    b.kill()
    b.data_dir = tmp_path / "fresh-data"
    b.start()
    a.wait_status("/readyz", 200)
    deadline = time.monotonic() + 10
    while True:  # the edge may still be reconnecting: 503 until it is back
        r = a.post("/v1/topics/epoch.t/messages", data=b"n1")
        if r.status_code == 201:
            break
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(0.1)
    new = [r.json()] + [a.publish("epoch.t", f"n{i}".encode()) for i in (2, 3)]
    assert [r["seq"] for r in new] == [1, 2, 3]
    assert new[0]["epoch"] != old[0]["epoch"]

    with a.sse("epoch.t", params={"format": "json"},
               headers={"Last-Event-ID": old[2]["id"]}) as s:
        s.wait(lambda st: len(st.events) >= 4, 10, "a reset and 3 messages")
        s.drain(0.3)
        reset, *msgs = s.events
        assert reset.type == "herald.reset"
        assert reset.json() == {"type": "reset", "topic": "epoch.t", "reason": "epoch",
                                "next_seq": 1}
        assert cursor_position(reset.last_event_id, "epoch.t") == (int(new[0]["epoch"], 16), 0)
        assert [(m.json()["seq"], m.json()["epoch"], m.json()["data"]) for m in msgs] == [
            (1, new[0]["epoch"], "n1"), (2, new[0]["epoch"], "n2"), (3, new[0]["epoch"], "n3")]
    assert a.metrics()['herald_edge_resets_total{reason="epoch"}'] == 1
