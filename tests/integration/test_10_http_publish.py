"""10 HTTP publish, history, health, readiness and metrics of herald-edge (DESIGN.md §Edge HTTP
API): one edge in front of one broker; what the HTTP API stores is checked over ZeroMQ too."""

import base64
import re
import time

from conftest import assert_error, cursor_position, make_cursor

HEX16 = re.compile(r"^[0-9a-f]{16}$")
PUBLISH_KEYS = {"topic", "id", "seq", "epoch", "time", "duplicate"}


def now_ms():
    return int(time.time() * 1000)


def test_publish_one_returns_201_with_its_ids(broker, edge):
    t0 = now_ms()
    r = edge.post("/v1/topics/pub.one/messages", data=b"hello",
                  params={"event": "greeting"}, headers={"Content-Type": "text/plain"})
    assert r.status_code == 201, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == PUBLISH_KEYS
    assert (body["topic"], body["seq"], body["duplicate"]) == ("pub.one", 1, False)
    assert HEX16.match(body["epoch"]), body
    assert t0 - 1000 <= body["time"] <= now_ms() + 1000
    # the id is the cursor right after this message: (epoch, seq 1) for this topic
    assert body["id"] == make_cursor({"pub.one": (body["epoch"], 1)})
    assert cursor_position(body["id"], "pub.one") == (int(body["epoch"], 16), 1)

    # the Herald-Event header names the event type too; seqs go on by one
    r2 = edge.publish("pub.one", b'{"n":2}', headers={"Herald-Event": "update",
                                                       "Content-Type": "application/json"})
    assert (r2["seq"], r2["epoch"], r2["duplicate"]) == (2, body["epoch"], False)
    r3 = edge.publish("pub.one", b"plain")  # neither event nor content type
    assert r3["seq"] == 3

    # what the broker stored: event, content type and data as given
    with broker.client() as c:
        _, last, msgs = c.fetch_all("pub.one")
    assert last == 3
    assert [(m.seq, m.event, m.content_type, m.data) for m in msgs] == [
        (1, b"greeting", b"text/plain", b"hello"),
        (2, b"update", b"application/json", b'{"n":2}'),
        (3, b"", b"", b"plain")]
    assert msgs[0].time_ms == body["time"]
    assert "%016x" % msgs[0].epoch == body["epoch"]


def test_query_event_wins_over_header_and_reserved_events_are_refused(edge):
    r = edge.publish("pub.ev", b"x", event="from-query", headers={"Herald-Event": "from-header"})
    h = edge.history("pub.ev", after="earliest")
    assert [(m["seq"], m["event"]) for m in h["messages"]] == [(r["seq"], "from-query")]
    for name in ("herald.reset", "herald.anything"):
        assert_error(edge.post("/v1/topics/pub.ev/messages", data=b"x", params={"event": name}),
                     400, "invalid_request")
        assert_error(edge.post("/v1/topics/pub.ev/messages", data=b"x",
                               headers={"Herald-Event": name}), 400, "invalid_request")
    assert_error(edge.post("/v1/topics/pub.ev/messages", data=b"x", params={"event": "e" * 65}),
                 400, "invalid_request")
    assert len(edge.history("pub.ev", after="earliest")["messages"]) == 1


def test_idempotency_key_dedupes(broker, edge):
    a = edge.publish("pub.idem", b"order 1", headers={"Idempotency-Key": "k-1"})
    b = edge.publish("pub.idem", b"order 1", headers={"Idempotency-Key": "k-1"})
    assert (a["seq"], a["duplicate"]) == (1, False)
    assert (b["seq"], b["id"], b["epoch"], b["duplicate"]) == (1, a["id"], a["epoch"], True)
    c = edge.publish("pub.idem", b"order 2", headers={"Idempotency-Key": "k-2"})
    assert (c["seq"], c["duplicate"]) == (2, False)
    with broker.client() as cl:
        _, last, msgs = cl.fetch_all("pub.idem")
    assert [(m.seq, m.data) for m in msgs] == [(1, b"order 1"), (2, b"order 2")]


def test_batch_publishes_with_consecutive_seqs_and_base64_binary(broker, edge):
    binary = bytes(range(256))
    body = edge.publish_batch([
        {"topic": "pub.batch", "data": "one"},
        {"topic": "pub.batch", "data": base64.b64encode(binary).decode(), "encoding": "base64",
         "content_type": "application/octet-stream"},
        {"topic": "pub.batch", "data": "three", "event": "third", "idempotency_key": "b-3"},
        {"topic": "pub.batch2", "data": "other topic"},
    ])
    assert list(body) == ["messages"]
    msgs = body["messages"]
    assert [(m["topic"], m["seq"]) for m in msgs] == [
        ("pub.batch", 1), ("pub.batch", 2), ("pub.batch", 3), ("pub.batch2", 1)]
    for m in msgs:
        assert set(m) == PUBLISH_KEYS and m["duplicate"] is False
        assert m["id"] == make_cursor({m["topic"]: (m["epoch"], m["seq"])})
    # one batch, one commit: the same publish time
    assert len({m["time"] for m in msgs}) == 1

    # the next batch continues the seqs; a repeated idempotency key is a duplicate
    body = edge.publish_batch([{"topic": "pub.batch", "data": "four"},
                               {"topic": "pub.batch", "data": "three", "idempotency_key": "b-3"}])
    assert [(m["seq"], m["duplicate"]) for m in body["messages"]] == [(4, False), (3, True)]

    with broker.client() as c:
        _, _, stored = c.fetch_all("pub.batch")
    assert [(m.seq, m.data, m.event, m.content_type) for m in stored] == [
        (1, b"one", b"", b""), (2, binary, b"", b"application/octet-stream"),
        (3, b"three", b"third", b""), (4, b"four", b"", b"")]

    # history gives binary data back as base64, marked so; text stays text
    h = edge.history("pub.batch", after="earliest")
    assert [(m["seq"], m["data"], m.get("encoding")) for m in h["messages"]] == [
        (1, "one", None), (2, base64.b64encode(binary).decode(), "base64"), (3, "three", None),
        (4, "four", None)]


def test_batch_text_may_hold_nul(broker, edge):
    # "\u0000" is valid JSON; the data is stored as given and read back the same
    body = edge.publish_batch([{"topic": "pub.nul", "data": "a\u0000b",
                                "idempotency_key": "k\u0000"}])
    assert body["messages"][0]["seq"] == 1
    again = edge.publish_batch([{"topic": "pub.nul", "data": "a\u0000b",
                                 "idempotency_key": "k\u0000"},
                                {"topic": "pub.nul", "data": "c", "idempotency_key": "k"}])
    assert [(m["seq"], m["duplicate"]) for m in again["messages"]] == [(1, True), (2, False)]
    with broker.client() as c:
        _, _, stored = c.fetch_all("pub.nul")
    assert [m.data for m in stored] == [b"a\x00b", b"c"]
    assert [m["data"] for m in edge.history("pub.nul")["messages"]] == ["a\u0000b", "c"]


def test_bad_batches_commit_nothing(broker, edge):
    def bad(body, code="invalid_request", status=400, **kw):
        assert_error(edge.post("/v1/messages", data=body, **kw), status, code)

    bad(b"not json")
    bad(b"{}")
    bad(b'{"messages": []}')
    bad(b'{"messages": {"topic": "pub.bad"}}')
    bad(b'{"messages": [{"topic": "pub.bad", "data": 5}]}')
    bad(b'{"messages": [{"topic": "pub.bad"}]}')  # data is required
    bad(b'{"messages": [{"data": "x"}]}')  # and so is the topic
    bad(b'{"messages": [{"topic": "pub.bad", "data": "x", "encoding": "hex"}]}')
    bad(b'{"messages": [{"topic": "pub.bad", "data": "***", "encoding": "base64"}]}')
    bad(b'{"messages": [{"topic": "pub.bad", "data": "x", "event": "herald.x"}]}')
    # one bad message refuses the whole batch
    bad(b'{"messages": [{"topic": "pub.bad", "data": "ok"}, {"topic": "bad topic", "data": "x"}]}',
        code="invalid_topic")
    with broker.client() as c:
        fr = c.fetch("pub.bad")
    assert (fr.last_seq, list(fr.messages)) == (0, [])
    assert edge.publish("pub.bad", b"fine")["seq"] == 1


def test_history_pages_with_a_next_cursor(edge):
    ids = [edge.publish("hist.t", f"m{i}".encode())["id"] for i in range(1, 26)]

    page = edge.history("hist.t", after="earliest", limit=10)
    assert set(page) == {"messages", "cursor", "reset"}
    assert page["reset"] == []
    assert [m["seq"] for m in page["messages"]] == list(range(1, 11))
    first = page["messages"][0]
    assert set(first) == {"topic", "id", "seq", "epoch", "data", "time"}
    assert (first["topic"], first["id"], first["data"]) == ("hist.t", ids[0], "m1")
    assert page["cursor"] == ids[9]

    page = edge.history("hist.t", after=page["cursor"], limit=10)
    assert [m["seq"] for m in page["messages"]] == list(range(11, 21))
    assert [m["id"] for m in page["messages"]] == ids[10:20]
    page = edge.history("hist.t", after=page["cursor"], limit=10)
    assert [m["data"] for m in page["messages"]] == [f"m{i}" for i in range(21, 26)]
    assert page["cursor"] == ids[24]
    # at the head: nothing, and the cursor stays where it was
    page = edge.history("hist.t", after=page["cursor"])
    assert (page["messages"], page["cursor"], page["reset"]) == ([], ids[24], [])

    # no `after`: from the oldest retained; default limit 100
    assert [m["seq"] for m in edge.history("hist.t")["messages"]] == list(range(1, 26))
    # `latest`: nothing old, but a cursor at the head to read on from
    page = edge.history("hist.t", after="latest")
    assert page["messages"] == [] and page["cursor"] == ids[24]
    edge.publish("hist.t", b"m26")
    assert [m["data"] for m in edge.history("hist.t", after=page["cursor"])["messages"]] == \
        ["m26"]
    # a cursor of another topic: this topic from now on
    other = edge.publish("hist.other", b"x")["id"]
    assert edge.history("hist.t", after=other)["messages"] == []

    for params, code in (({"limit": "0"}, "invalid_request"),
                         ({"limit": "1001"}, "invalid_request"),
                         ({"limit": "ten"}, "invalid_request"),
                         ({"after": "garbage"}, "invalid_cursor"),
                         ({"after": "-5"}, "invalid_cursor"),
                         ({"after": ids[3][:-2]}, "invalid_cursor")):
        assert_error(edge.get("/v1/topics/hist.t/messages", params=params), 400, code)


def test_healthz_readyz_and_the_demo_page(broker, edge):
    r = edge.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = edge.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "draining": False,
                        "brokers": [{"endpoint": broker.listen, "up": True}],
                        "unavailable_partitions": []}
    r = edge.get("/")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "window.heraldReceived" in r.text and "EventSource" in r.text


def test_metrics_are_prometheus_text_named_herald_edge(edge):
    for i in range(3):
        edge.publish("metrics.t", f"m{i}".encode())
    edge.post("/v1/topics/bad topic/messages", data=b"x")  # refused before the broker
    with edge.sse("metrics.t", params={"last_event_id": "earliest"}) as s:
        s.wait_messages(3)
        r = edge.get("/metrics")
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4"
        names, typed, helped = set(), set(), set()
        for line in r.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ")
                assert kind in ("counter", "gauge", "histogram"), line
                typed.add(name)
            elif line.startswith("# HELP "):
                helped.add(line.split(" ")[2])
            else:
                m = re.match(r'^([a-z_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? '
                             r'(\d+(\.\d+)?)$', line)
                assert m, f"not a sample line: {line!r}"
                names.add(m.group(1))
        # the edge's own figures, and the brokers' as the edge last read them
        assert all(n.startswith(("herald_edge_", "herald_broker_")) for n in names | typed), \
            names | typed
        assert typed == helped
        for n in names:
            base = re.sub(r"_(bucket|sum|count)$", "", n)
            assert n in typed or base in typed, n
        for want in ("herald_edge_connections", "herald_edge_deliveries_total",
                     "herald_edge_publish_requests_total",
                     "herald_edge_slow_client_disconnects_total", "herald_edge_resets_total",
                     "herald_edge_broker_up", "herald_edge_publish_latency_ms_bucket"):
            assert want in names, want
        m = edge.metrics()
        assert m['herald_edge_connections{transport="sse"}'] == 1
        assert m['herald_edge_deliveries_total{transport="sse"}'] == 3
        assert m["herald_edge_publish_requests_total"] == 3
        assert m["herald_edge_messages_in_total"] == 3
        assert m["herald_edge_publish_latency_ms_count"] == 3
        assert m['herald_edge_publish_latency_ms_bucket{le="+Inf"}'] == 3
        assert m["herald_edge_topics"] == 1
        assert m["herald_edge_draining"] == 0
    # the stream closed: the gauge goes back to 0
    deadline = time.monotonic() + 5
    while edge.metrics()['herald_edge_connections{transport="sse"}'] != 0:
        assert time.monotonic() < deadline, "herald_edge_connections stays above 0"
        time.sleep(0.05)


def test_metrics_carry_each_brokers_figures(broker, edge):
    # Brokers have no HTTP: the edge reads their stats over ZeroMQ every few seconds and exports
    # LMDB map use, topics and counters per broker, for alerts (docs/kubernetes.md).
    edge.publish("metrics.broker", b"x")
    deadline = time.monotonic() + 15
    while True:
        text = edge.get("/metrics").text
        used = re.search(r'^herald_broker_map_used_bytes\{broker="([^"]+)"\} (\d+)$', text, re.M)
        if used and re.search(r"^herald_broker_messages_appended_total\{[^}]+\} [1-9]", text,
                              re.M):
            break
        assert time.monotonic() < deadline, "no broker figures in /metrics"
        time.sleep(0.2)
    size = re.search(r'^herald_broker_map_size_bytes\{broker="[^"]+"\} (\d+)$', text, re.M)
    assert size and 0 < int(used.group(2)) <= int(size.group(1))
    assert re.search(r"^herald_broker_topics\{[^}]+\} [1-9]", text, re.M)
