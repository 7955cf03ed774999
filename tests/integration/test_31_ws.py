"""31 WebSocket transport — GET /v1/ws (docs/websocket.md; DESIGN.md §Client contract) with a real
client library (`websockets`): subscribe, publish with durable acks, unsubscribe, application
ping; message frames that are the message JSON of every other transport; one cursor across
transports and edges (a WebSocket id resumes SSE and polling, their cursors resume a WebSocket,
a reconnect to another edge is exactly-once); SIGTERM gives every client a shutdown frame and
close 1001; a client that stops reading is cut off with 4008 and bounded edge memory; keepalive
pings; ping floods; and bad requests answered with error frames on a connection that stays
usable."""

import asyncio
import base64
import json
import os
import re
import select
import signal
import struct
import threading
import time

import websockets

from conftest import cursor_position, make_cursor, parse_cursor
from wsclient import (OP_CLOSE, OP_PING, OP_PONG, AsyncWS, Closed, RawWS, Witness, frame,
                      ws_url)

WS = 'herald_edge_connections{transport="ws"}'


def run(coro, timeout=90):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def in_thread(fn, *args):
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def http_msg(reply, topic, data, **extra):
    """The message JSON of a message published with `reply` (the HTTP or WS publish answer)."""
    m = {"type": "message", "topic": topic, "seq": reply["seq"], "epoch": reply["epoch"],
         "data": data, "time": reply["time"], "id": reply["id"]}
    m.update(extra)
    return m


def start_cursor(edge, topics):
    """Publish "start" to each topic; the cursor right after them (a subscription from it has
    no race with "new messages only")."""
    body = edge.publish_batch([{"topic": t, "data": "start"} for t in topics])
    return make_cursor({m["topic"]: (m["epoch"], m["seq"]) for m in body["messages"]}), body


def wait_metric(edge, name, pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        got = edge.metrics().get(name)
        if got is not None and pred(got):
            return got
        assert time.monotonic() < deadline, f"{name} is {got}"
        time.sleep(0.05)


# ---- subscribe, publish, unsubscribe, ping -------------------------------------------------------

def test_subscribe_publish_and_durable_ack(broker, edge):
    topic = "ws.pub"

    async def main():
        start = edge.publish(topic, b"start")
        ws = await AsyncWS.open(edge)
        assert ws.conn.subprotocol == "herald.v1"
        sub = await ws.request({"type": "subscribe", "req": "s1", "topics": [topic],
                                "cursor": start["id"]})
        assert sub == {"type": "subscribed", "req": "s1", "topics": [topic],
                       "cursor": start["id"]}, sub
        pub = await ws.request({"type": "publish", "req": "p1", "topic": topic, "data": "hello",
                                "event": "created", "content_type": "text/plain"})
        assert set(pub) == {"type", "req", "topic", "id", "seq", "epoch", "time", "duplicate"}, pub
        assert (pub["type"], pub["req"], pub["topic"]) == ("published", "p1", topic)
        assert pub["seq"] == start["seq"] + 1 and pub["epoch"] == start["epoch"]
        assert re.fullmatch(r"[0-9a-f]{16}", pub["epoch"]) and pub["duplicate"] is False
        assert abs(pub["time"] - time.time() * 1000) < 60000
        # the id is the same cursor as the HTTP publish answer's: right after this message
        assert cursor_position(pub["id"], topic) == (int(pub["epoch"], 16), pub["seq"])
        # durable: the broker has it when the answer comes
        with broker.client() as c:
            fr = c.fetch(topic, after_seq=start["seq"])
            assert [(m.seq, m.data, m.event, m.content_type) for m in fr.messages] == [
                (pub["seq"], b"hello", b"created", b"text/plain")]
        await ws.wait_messages(1)
        assert ws.messages == [http_msg(pub, topic, "hello", event="created",
                                        content_type="text/plain")]
        ans = await ws.request({"type": "publish", "topic": topic, "data": "no-req"})
        assert ans["type"] == "published" and ans["seq"] == start["seq"] + 2, ans
        # without req, the answer has none
        await ws.send({"type": "publish", "topic": topic, "data": "really-no-req"})
        await ws.wait(lambda s: any(f["type"] == "published" for f in s.frames), 10,
                      "an answer without req")
        bare = [f for f in ws.frames if f["type"] == "published"][0]
        assert "req" not in bare and bare["seq"] == start["seq"] + 3, bare
        await ws.wait_messages(3)
        assert [m["data"] for m in ws.messages] == ["hello", "no-req", "really-no-req"]
        await ws.close()
        assert ws.close_code() == 1000  # the edge answered our close with 1000

    run(main())


def test_idempotency_key_and_base64_publish(edge):
    topic = "ws.idem"

    async def main():
        ws = await AsyncWS.open(edge)
        first = await ws.publish(topic, "AAH/", encoding="base64", idempotency_key="k-1")
        again = await ws.publish(topic, "AAH/", encoding="base64", idempotency_key="k-1")
        assert again["duplicate"] is True and first["duplicate"] is False
        assert (again["id"], again["seq"], again["epoch"]) == (first["id"], first["seq"],
                                                               first["epoch"])
        # the same key over HTTP is the same message too
        r = edge.post(f"/v1/topics/{topic}/messages", data=b"\x00\x01\xff",
                      headers={"Idempotency-Key": "k-1"})
        assert r.status_code in (200, 201) and r.json()["seq"] == first["seq"], r.text
        # base64 of valid UTF-8 is stored as bytes and travels as text
        text = await ws.publish(topic, base64.b64encode("hé".encode()).decode(),
                                encoding="base64")
        assert text["seq"] == first["seq"] + 1
        await ws.close()

    run(main())
    got = edge.history(topic)["messages"]
    assert [(m["data"], m.get("encoding")) for m in got] == [("AAH/", "base64"), ("hé", None)]


HTTP_CASES = [
    # (published bytes, query event, Content-Type, the data the frame carries, encoding)
    (b"hello", None, None, "hello", None),
    ("héllo ✓\nline two\r\n".encode(), None, None, "héllo ✓\nline two\r\n", None),
    (b"", None, None, "", None),
    (b"a\x00b", None, None, "a\x00b", None),
    (b"\x00\x01\xff", None, None, "AAH/", "base64"),
    (b"\xc3\x28 invalid", None, None, base64.b64encode(b"\xc3\x28 invalid").decode(), "base64"),
    (b'{"x": 1}', "created", "application/json", '{"x": 1}', None),
]


def test_message_frames_are_the_message_json(broker, edge):
    """Each message frame is DESIGN.md's message JSON plus "type": the same object history
    answers with (the same JSON on every transport), binary data in base64 with "encoding"."""
    topic = "ws.json"

    async def main():
        start = edge.publish(topic, b"start")
        ws = await AsyncWS.open(edge)
        await ws.subscribe([topic], start["id"])
        sent = []
        for data, event, ctype, _, _ in HTTP_CASES:
            sent.append(edge.publish(topic, data, event=event,
                                     headers={"Content-Type": ctype} if ctype else None))
        await ws.wait_messages(len(HTTP_CASES))
        await ws.drain(0.2)
        await ws.close()
        return start, sent, ws.messages, ws.frames

    start, sent, frames, others = run(main())
    assert len(frames) == len(HTTP_CASES) and others == frames, others
    history = edge.history(topic, after=start["id"])["messages"]
    for f, h, r, (_, event, ctype, data, enc) in zip(frames, history, sent, HTTP_CASES):
        assert f["type"] == "message"
        assert {k: v for k, v in f.items() if k != "type"} == h, (f, h)
        assert f["data"] == data and f.get("encoding") == enc, f
        assert ("encoding" in f) == (enc is not None), f
        assert f.get("event", "") == (event or "") and f.get("content_type", "") == (ctype or "")
        assert (f["topic"], f["id"], f["seq"], f["epoch"]) == (topic, r["id"], r["seq"],
                                                               r["epoch"])
        assert isinstance(f["seq"], int) and re.fullmatch(r"[0-9a-f]{16}", f["epoch"])
        assert isinstance(f["time"], int) and abs(f["time"] - time.time() * 1000) < 60000


def test_unsubscribe(edge):
    a, b = "ws.unsub.a", "ws.unsub.b"

    async def main():
        cursor, _ = start_cursor(edge, [a, b])
        ws = await AsyncWS.open(edge)
        sub = await ws.request({"type": "subscribe", "req": "s", "topics": [a, b],
                                "cursor": cursor})
        assert sorted(sub["topics"]) == [a, b] and sub["cursor"] == cursor, sub
        edge.publish(a, b"a1")
        edge.publish(b, b"b1")
        await ws.wait_messages(2)
        un = await ws.request({"type": "unsubscribe", "req": "u1", "topics": [b]})
        assert un["type"] == "unsubscribed" and un["req"] == "u1", un
        assert b in un["topics"] and a not in un["topics"], un
        assert isinstance(un["cursor"], str)
        assert cursor_position(un["cursor"], a)[1] == 2  # a's position is kept
        # names not subscribed are ignored
        again = await ws.request({"type": "unsubscribe", "req": "u2", "topics": [b, "ws.never"]})
        assert again["type"] == "unsubscribed", again
        edge.publish(b, b"b2")  # no longer delivered
        edge.publish(a, b"a2")
        await ws.wait_messages(3)
        await ws.drain(0.3)
        assert [(m["topic"], m["data"]) for m in ws.messages] == [(a, "a1"), (b, "b1"), (a, "a2")]
        # subscribing b again from the cursor b1 left: b2 is delivered, a keeps its place
        back = await ws.request({"type": "subscribe", "req": "s2", "topics": [b],
                                 "cursor": ws.messages[1]["id"]})
        assert sorted(back["topics"]) == [a, b], back
        await ws.wait_messages(4)
        edge.publish(a, b"a3")
        await ws.wait_messages(5)
        await ws.drain(0.3)
        assert [(m["topic"], m["data"]) for m in ws.messages[3:]] == [(b, "b2"), (a, "a3")]
        # every id covers both topics
        last = parse_cursor(ws.messages[-1]["id"])
        assert len(last) == 2
        assert cursor_position(ws.messages[-1]["id"], b)[1] == 3
        await ws.close()

    run(main())


def test_application_ping(edge):
    async def main():
        ws = await AsyncWS.open(edge)
        await ws.send({"type": "ping", "req": "k1"})
        assert json.loads(await asyncio.wait_for(ws_next(ws), 10)) == {"type": "pong",
                                                                       "req": "k1"}
        await ws.send({"type": "ping"})
        assert json.loads(await asyncio.wait_for(ws_next(ws), 10)) == {"type": "pong"}
        # the library's own ping frame gets a pong frame
        pong_waiter = await ws.conn.ping(b"lib")
        await asyncio.wait_for(pong_waiter, 10)
        await ws.close()

    async def ws_next(ws):
        await ws.wait(lambda s: s.frames, 10, "a frame")
        return json.dumps(ws.frames.pop(0))

    run(main())


def test_subscribe_adds_topics_keeping_the_positions_of_subscribed_ones(edge_factory, broker):
    e = edge_factory(broker, "--max-topics", "8")
    a, b = "ws.add.a", "ws.add.b"

    async def main():
        cursor, body = start_cursor(e, [a, b])
        e.publish(b, b"b-old")
        ws = await AsyncWS.open(e)
        await ws.subscribe([a], cursor)
        e.publish(a, b"a1")
        await ws.wait_messages(1)
        # adding b with "earliest": b from its oldest, a not restarted
        sub = await ws.subscribe([a, b], "earliest")
        assert sorted(sub["topics"]) == [a, b]
        await ws.wait_messages(3)
        e.publish(a, b"a2")
        await ws.wait_messages(4)
        await ws.drain(0.3)
        assert [(m["topic"], m["data"]) for m in ws.messages] == [
            (a, "a1"), (b, "start"), (b, "b-old"), (a, "a2")]
        # the limit counts the topics already subscribed: 2 + 7 > 8
        err = await ws.request({"type": "subscribe", "req": "big",
                                "topics": [f"ws.add.{i}" for i in range(7)]})
        assert err["type"] == "error" and err["code"] == "too_many_topics", err
        ok = await ws.subscribe([f"ws.add.{i}" for i in range(6)])  # 8: fine
        assert len(ok["topics"]) == 8
        await ws.ping()
        await ws.close()

    run(main())


def test_reset_for_trimmed_history(broker_factory, edge_factory):
    br = broker_factory("--retention-messages", "5", "--trim-interval", "50")
    e = edge_factory(br)
    topic = "ws.trim"
    sent = [e.publish(topic, f"m{i}".encode()) for i in range(1, 21)]
    with br.client() as c:
        deadline = time.monotonic() + 5
        while c.fetch(topic).first_seq < 16:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    async def main():
        ws = await AsyncWS.open(e)
        await ws.subscribe([topic], sent[1]["id"])
        await ws.wait(lambda s: len(s.frames) >= 6, 10, "a reset and 5 messages")
        await ws.drain(0.3)
        reset, *msgs = ws.frames
        assert reset == {"type": "reset", "topic": topic, "reason": "retention", "next_seq": 16,
                         "id": make_cursor({topic: (sent[0]["epoch"], 15)})}, reset
        assert [m["data"] for m in msgs] == [f"m{i}" for i in range(16, 21)]
        assert [m["id"] for m in msgs] == [r["id"] for r in sent[15:]]
        await ws.close()

    run(main())


# ---- one cursor: transports and edges ----------------------------------------------------------

def by_topic(pairs):
    """{topic: [data, ...]} of (topic, data) pairs, each topic's in order."""
    out = {}
    for t, d in pairs:
        out.setdefault(t, []).append(d)
    return out


def test_ws_ids_resume_sse_and_polling_on_other_edges(broker, edge_factory):
    a, b, c = (edge_factory(broker, name=n) for n in "abc")
    t1, t2 = "ws.x.1", "ws.x.2"
    topic_of = {i: t1 if i % 3 else t2 for i in range(1, 9)}

    async def main():
        cursor, _ = start_cursor(a, [t1, t2])
        ws = await AsyncWS.open(a)
        await ws.subscribe([t1, t2], cursor)
        for i in range(1, 7):
            (a if i % 2 else b).publish(topic_of[i], f"m{i}".encode())
        await ws.wait_messages(6)
        await ws.drain(0.2)
        await ws.close()
        return ws.messages

    got = run(main())
    assert by_topic((m["topic"], m["data"]) for m in got) == by_topic(
        (topic_of[i], f"m{i}") for i in range(1, 7))
    k = 3
    mid = got[k - 1]["id"]  # after the first 3 messages the client got
    for i in range(7, 9):
        c.publish(topic_of[i], f"m{i}".encode())
    everything = by_topic((topic_of[i], f"m{i}") for i in range(1, 9))

    def check_rest(first, rest):
        """The client's first k messages and the rest from another transport: every topic's
        messages exactly once, in order."""
        seen = by_topic(first + rest)
        assert seen == everything, (first, rest)

    first = [(m["topic"], m["data"]) for m in got[:k]]
    # SSE on b, the WS id as Last-Event-ID
    with b.sse([t1, t2], params={"format": "json"}, headers={"Last-Event-ID": mid}) as s:
        s.wait_messages(5)
        s.drain(0.3)
        check_rest(first, [(ev.json()["topic"], ev.json()["data"]) for ev in s.messages()])
        sse_last = s.messages()[-1].last_event_id
    # long polling on c: cursor= and If-None-Match
    for kw in ({"cursor": mid}, {"headers": {"If-None-Match": f'W/"{mid}"'}}):
        r = c.poll([t1, t2], wait=0, **kw)
        assert r.status_code == 200, r.text
        check_rest(first, [(m["topic"], m["data"]) for m in r.json()["messages"]])
        # the same position as SSE's last id (a cursor is canonical)
        assert r.json()["cursor"] == sse_last
    r = c.poll([t1, t2], cursor=sse_last, wait=0)
    assert r.json()["messages"] == [] and r.json()["reset"] == []


def test_sse_and_poll_cursors_resume_a_websocket(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    t1, t2 = "ws.y.1", "ws.y.2"
    topic_of = {i: t1 if i % 2 else t2 for i in range(1, 7)}
    cursor, _ = start_cursor(a, [t1, t2])
    for i in range(1, 5):
        a.publish(topic_of[i], f"m{i}".encode())
    with a.sse([t1, t2], params={"format": "json"}, headers={"Last-Event-ID": cursor}) as s:
        s.wait_messages(2)
        s.close()
        sse_first = [(ev.json()["topic"], ev.json()["data"]) for ev in s.messages()[:2]]
        sse_id = s.messages()[1].last_event_id
    r = a.poll([t1, t2], cursor=cursor, wait=0, limit=3)
    poll_first = [(m["topic"], m["data"]) for m in r.json()["messages"]]
    assert len(poll_first) == 3
    poll_cursor = r.json()["cursor"]
    for i in range(5, 7):
        b.publish(topic_of[i], f"m{i}".encode())
    everything = by_topic((topic_of[i], f"m{i}") for i in range(1, 7))

    async def main():
        for start, first in ((sse_id, sse_first), (poll_cursor, poll_first)):
            ws = await AsyncWS.open(b)
            sub = await ws.subscribe([t1, t2], start)
            assert sub["cursor"] == start, sub
            await ws.wait_messages(6 - len(first))
            await ws.drain(0.3)
            await ws.close()
            rest = [(m["topic"], m["data"]) for m in ws.messages]
            assert by_topic(first + rest) == everything, (first, rest)

    run(main())


def test_reconnect_to_another_edge_with_the_last_id_is_exactly_once(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topic = "ws.reconnect"

    async def main():
        start = a.publish(topic, b"start")
        sent = []

        def publish(lo, hi, via):
            sent.extend(via.publish(topic, f"m{i}".encode()) for i in range(lo, hi))

        one = await AsyncWS.open(a)
        await one.subscribe([topic], start["id"])
        publish(1, 11, b)
        await one.wait_messages(10)
        await one.close()
        publish(11, 21, a)  # while the client is away
        two = await AsyncWS.open(b)
        await two.subscribe([topic], one.last_id)
        await two.wait_messages(10)
        # and the client publishes over its new connection too
        for i in range(21, 26):
            sent.append(await two.publish(topic, f"m{i}"))
        await two.wait_messages(15)
        await two.drain(0.3)
        await two.close()
        got = one.messages + two.messages
        assert [m["data"] for m in got] == [f"m{i}" for i in range(1, 26)]
        assert [m["id"] for m in got] == [r["id"] for r in sent]
        assert [m["seq"] for m in got] == list(range(start["seq"] + 1, start["seq"] + 26))

    run(main())


def test_edge_sigkill_mid_stream_resume_on_another_edge(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topic = "ws.kill"
    n = 60
    start = b.publish(topic, b"start")
    done = threading.Event()
    acked = []

    def publisher():
        for i in range(1, n + 1):
            acked.append(b.publish(topic, f"m{i}".encode())["seq"])
            time.sleep(0.01)
        done.set()

    async def main():
        one = await AsyncWS.open(a)
        await one.subscribe([topic], start["id"])
        pub = in_thread(publisher)
        await one.wait_messages(15, 20)
        a.kill()  # SIGKILL: no close frame, no shutdown frame
        closed = await one.wait_closed(10)
        assert one.close_code() is None or one.close_code() == 1006, closed
        two = await AsyncWS.open(b)
        await two.subscribe([topic], one.last_id)
        await pub
        await two.wait(lambda s: len(one.messages) + len(s.messages) >= n, 20, "every message")
        await two.drain(0.3)
        await two.close()
        got = [m["data"] for m in one.messages + two.messages]
        assert got == [f"m{i}" for i in range(1, n + 1)], got

    run(main())
    assert len(acked) == n


def test_sigterm_sends_shutdown_then_1001_and_the_cursor_resumes(broker, edge_factory):
    a = edge_factory(broker, "--retry", "1000", "--drain-grace", "500", name="a")
    b = edge_factory(broker, name="b")
    t, u = "ws.term.t", "ws.term.u"

    async def main():
        cursor, body = start_cursor(b, [t, u])
        start_t = body["messages"][0]
        clients = [await AsyncWS.open(a) for _ in range(3)]
        await clients[0].subscribe([t], start_t["id"])
        await clients[1].subscribe([t, u], cursor)
        clients.append(await AsyncWS.open(a, f"/v1/ws?topic={t}&cursor={start_t['id']}"))
        idle = await AsyncWS.open(a)  # subscribed to nothing
        clients.append(idle)
        await clients[3].wait(lambda s: s.frames and s.frames[0]["type"] == "subscribed", 10,
                              "subscribed")
        await clients[2].subscribe([t], "earliest")
        for i in range(1, 11):
            a.publish(t, f"m{i}".encode())
        a.publish(u, b"u1")
        for c, n in zip(clients, (10, 11, 11, 10)):
            await c.wait_messages(n)
        a.http.close()
        t0 = time.monotonic()
        os.kill(a.proc.pid, signal.SIGTERM)
        r = await in_thread(a.wait_status, "/readyz", 503, 2)
        assert r.json()["draining"] is True
        # still served during the grace
        b.publish(t, b"m11")
        for c, n in zip(clients, (11, 12, 12, 11)):
            await c.wait_messages(n, 5)
        for c in clients:
            await c.wait_closed(10)
        assert await in_thread(a.proc.wait, 10) == 0, a.stderr_text()
        assert time.monotonic() - t0 < 4.0
        for i, c in enumerate(clients):
            last = c.frames[-1]
            assert last["type"] == "shutdown", (i, c.frames[-3:])
            assert set(last) == {"type", "cursor", "retry_ms", "reason"}, last
            assert last["reason"] == "draining"
            assert isinstance(last["retry_ms"], int) and 0 < last["retry_ms"] <= 2000, last
            assert c.close_code() == 1001, (i, c.closed)
            if c is not idle:
                assert last["cursor"] == c.messages[-1]["id"], (i, last)
            else:
                assert isinstance(last["cursor"], str)
        for i in range(12, 21):  # while the clients are away
            b.publish(t, f"m{i}".encode())
        b.publish(u, b"u2")
        # each resumes on b from its shutdown cursor: exactly the rest
        want_t = [f"m{k}" for k in range(1, 21)]
        for i, (c, topics) in enumerate(zip(clients[:4], ([t], [t, u], [t], [t]))):
            again = await AsyncWS.open(b)
            await again.subscribe(topics, c.frames[-1]["cursor"])
            await again.wait_messages(9 + (u in topics))
            await again.drain(0.3)
            await again.close()
            got = by_topic((m["topic"], m["data"]) for m in c.messages + again.messages)
            want = {t: ["start"] * (i == 2) + want_t}
            if u in topics:
                want[u] = ["u1", "u2"]
            assert got == want, (i, got)

    run(main())


# ---- slow readers, keepalive, floods ----------------------------------------------------------------

def read_raw_until_close(ws, timeout):
    """Every frame a raw client reads until the edge's close frame: (JSON frames, close code).
    Bounded by `timeout`; pings are not answered (the client only reads)."""
    ws.auto_pong = False
    out = []
    deadline = time.monotonic() + timeout
    while True:
        f = ws.recv_frame(max(0.01, deadline - time.monotonic()))
        if f.opcode == OP_CLOSE:
            return out, f.close_code()[0]
        if f.opcode in (OP_PING, OP_PONG):
            continue
        out.append(f.json())


def test_slow_consumer_is_cut_off_with_4008_and_memory_stays_bounded(broker, edge_factory):
    e = edge_factory(broker, "--queue-bytes", "256K", "--slow-client-grace", "3000")
    topic = "ws.slow"
    n, size, batch = 10000, 1024, 500
    payload = "p" * (size - 8)
    want = [f"{i:07d} {payload}" for i in range(n)]
    start = e.publish(topic, b"start")
    slow = RawWS(e, f"/v1/ws?topic={topic}&cursor={start['id']}", rcvbuf=4096)
    result = {}

    def publish_and_watch():
        """Publishes every batch; once the edge counts the cut, the slow client reads what it
        was given (within the grace)."""
        for k in range(0, n, batch):
            e.publish_batch([{"topic": topic, "data": d} for d in want[k:k + batch]])
            if "frames" not in result and \
                    e.metrics()["herald_edge_slow_client_disconnects_total"] >= 1:
                result["cut_at"] = k + batch
                result["frames"], result["code"] = read_raw_until_close(slow, 10)
                result["eof"] = slow.eof(3)
        # the edge paces a client whose queue is over half full (it reads the log at the
        # client's speed); one whose queue stays there for --slow-client-grace is cut off
        deadline = time.monotonic() + 3.0 + 5
        while "frames" not in result and time.monotonic() < deadline:
            if e.metrics()["herald_edge_slow_client_disconnects_total"] >= 1:
                result["cut_at"] = n
                result["frames"], result["code"] = read_raw_until_close(slow, 10)
                result["eof"] = slow.eof(3)
            time.sleep(0.05)

    async def main():
        good = await AsyncWS.open(e, max_queue=None)
        await good.subscribe([topic], start["id"])
        assert slow.recv_json()["type"] == "subscribed"
        probe = e.publish(topic, b"probe")
        assert slow.recv_json()["id"] == probe["id"]
        await good.wait_messages(1)
        rss_before = e.rss_kib()
        await in_thread(publish_and_watch)
        await good.wait_messages(n + 1, 60)
        await good.drain(0.2)
        rss_after = e.rss_kib()
        assert [m["data"] for m in good.messages[1:]] == want  # the other client has all
        assert good.closed is None
        await good.close()
        return rss_before, rss_after

    try:
        rss_before, rss_after = run(main())
    finally:
        slow.close()
    assert "frames" in result, "the client that stopped reading was not cut off"
    frames = result["frames"]
    *msgs, shutdown = frames
    assert all(m["type"] == "message" for m in msgs), [m["type"] for m in msgs][-5:]
    got = [m["data"] for m in msgs]
    assert 0 < len(got) < n and got == want[:len(got)], len(got)
    assert shutdown["type"] == "shutdown" and shutdown["reason"] == "slow_consumer", shutdown
    assert result["code"] == 4008
    assert result["eof"], "the connection stays open after close 4008"
    if not e.sanitized():
        assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)
    print(f"cut off after {len(got)} messages of the first {result['cut_at']}; "
          f"edge RSS {rss_before} -> {rss_after} KiB")

    # the shutdown cursor resumes exactly after what the client got
    async def resume():
        again = await AsyncWS.open(e, max_queue=None)
        sub = await again.subscribe([topic], shutdown["cursor"])
        assert sub["cursor"] == shutdown["cursor"]
        await again.wait(lambda s: s.messages and s.messages[-1]["data"] == want[-1], 60,
                         "the last message")
        await again.drain(0.2)
        await again.close()
        return [m["data"] for m in again.messages]

    rest = run(resume())
    assert rest[:1] == want[len(got):len(got) + 1], (
        f"the client got {len(got)} messages, up to {got[-1][:7]}; resuming from the shutdown "
        f"cursor starts at {rest[0][:7]}")
    assert rest == want[len(got):]
    wait_metric(e, WS, lambda v: v == 0)


def test_slow_consumer_by_message_count(broker, edge_factory):
    """--queue-messages bounds the queue by messages: small messages, a client that does not
    read, cut off with 4008 well before --queue-bytes would be reached."""
    e = edge_factory(broker, "--queue-messages", "64", "--slow-client-grace", "3000")
    topic = "ws.slow.frames"
    n, batch = 30000, 2000
    start = e.publish(topic, b"start")
    slow = RawWS(e, f"/v1/ws?topic={topic}&cursor={start['id']}", rcvbuf=4096)
    try:
        assert slow.recv_json()["type"] == "subscribed"
        cut = None
        for k in range(0, n, batch):
            e.publish_batch([{"topic": topic, "data": f"s{i}"} for i in range(k, k + batch)])
            if e.metrics()["herald_edge_slow_client_disconnects_total"] >= 1:
                cut = k + batch
                break
        # over half of --queue-messages the edge paces the client from the log; stalled there
        # for --slow-client-grace, it is cut off
        deadline = time.monotonic() + 3.0 + 5
        while cut is None and time.monotonic() < deadline:
            if e.metrics()["herald_edge_slow_client_disconnects_total"] >= 1:
                cut = n
            time.sleep(0.05)
        assert cut is not None, "not cut off by --queue-messages"
        frames, code = read_raw_until_close(slow, 10)
        assert code == 4008 and frames[-1]["type"] == "shutdown", frames[-2:]
        assert frames[-1]["reason"] == "slow_consumer"
        got = [f["data"] for f in frames[:-1]]
        assert got == [f"s{i}" for i in range(len(got))]
        assert slow.eof(3)
    finally:
        slow.close()
    # resumes on another edge (default bounds), over another transport
    other = edge_factory(broker, name="other")
    with other.stream(topic, params={"cursor": frames[-1]["cursor"]}) as st:
        other.publish(topic, b"after")
        st.wait(lambda s: any(m["data"] == "after" for m in s.messages()), 30, "after")
        datas = [m["data"] for m in st.messages()]
        assert datas[0] == f"s{len(got)}" and datas[-1] == "after"
        assert len(datas) == cut - len(got) + 1


def test_keepalive_closes_a_peer_that_does_not_answer_pings(broker, edge_factory):
    e = edge_factory(broker, "--ws-ping-interval", "200", "--ws-ping-timeout", "300")

    def silent():
        """A raw client that reads but never answers a ping."""
        ws = RawWS(e)
        ws.auto_pong = False
        t0 = time.monotonic()
        try:
            while True:
                try:
                    ws.recv_frame(max(0.01, t0 + 4 - time.monotonic()))
                except Closed:
                    return time.monotonic() - t0, ws.frames
                except TimeoutError:
                    return None, ws.frames
        finally:
            ws.close()

    def answering():
        """A raw client that answers every ping: stays open."""
        ws = RawWS(e)
        try:
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                try:
                    ws.recv_data_frame(max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    pass
            ws.ping("still-here")
            return ws.pings
        finally:
            ws.close()

    async def main():
        lib = await AsyncWS.open(e, ping_interval=None)  # the library answers pings itself
        gone, pinged = await asyncio.gather(in_thread(silent), in_thread(answering))
        after, frames = gone
        assert after is not None, f"a peer that does not answer pings is still open: {frames}"
        assert after < 2.0, after
        assert any(f.opcode == OP_PING for f in frames), frames
        assert not any(f.opcode == OP_CLOSE for f in frames), frames  # no close frame
        assert pinged >= 3, pinged
        await lib.ping()
        assert lib.closed is None
        await lib.close()

    run(main())


def test_a_ping_flood_is_answered_or_throttled_and_others_are_unaffected(broker, edge_factory):
    e = edge_factory(broker, "--queue-bytes", "64K")
    w = Witness(e)
    n = 60000
    pad = b"f" * 121  # 125-byte pings: 7.9 MB each way, more than the socket buffers hold
    pings = b"".join(frame(OP_PING, struct.pack(">I", i) + pad, key=b"\x01\x02\x03\x04")
                     for i in range(n))
    flood = RawWS(e, rcvbuf=4096)
    rss_before = e.rss_kib()
    try:
        w.check()
        # 1. send as fast as the edge takes them, reading nothing, until all are sent or the
        #    edge stops reading (throttled) for a second
        flood.sock.setblocking(False)
        sent, stalled_since = 0, None
        deadline = time.monotonic() + 20
        while sent < len(pings) and time.monotonic() < deadline:
            try:
                sent += flood.sock.send(pings[sent:sent + 65536])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break
                select.select([], [flood.sock], [], 0.05)
            except (BrokenPipeError, ConnectionResetError):
                break
        throttled = sent < len(pings)
        w.check()  # the edge serves the others meanwhile
        # 2. read the pongs, sending the rest as the edge takes it
        pongs, closed = [], None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not pongs or pongs[-1] != n - 1):
            want_write = [flood.sock] if sent < len(pings) else []
            r, wr, _ = select.select([flood.sock], want_write, [], 0.2)
            if wr:
                try:
                    sent += flood.sock.send(pings[sent:sent + 65536])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    closed = "reset while sending"
                    break
            if r:
                try:
                    data = flood.sock.recv(1 << 20)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    closed = "reset"
                    break
                if not data:
                    closed = "eof"
                    break
                flood.buf += data
                while len(flood.buf) >= 2 and len(flood.buf) >= 2 + (flood.buf[1] & 0x7F):
                    f = flood.recv_frame(1)
                    if f.opcode == OP_CLOSE:
                        closed = f"close {f.close_code()}"
                        break
                    assert f.opcode == OP_PONG and f.payload[4:] == pad, f
                    pongs.append(struct.unpack(">I", f.payload[:4])[0])
                if closed:
                    break
        # pongs answer pings in order; the edge may skip some (RFC 6455 §5.5.3) but never
        # invents or repeats one
        assert all(x < y for x, y in zip(pongs, pongs[1:])), "pongs out of order"
        assert all(0 <= x < n for x in pongs)
        if closed is None:
            assert pongs and pongs[-1] == n - 1, (len(pongs), pongs[-3:], sent)
            flood.sock.setblocking(True)
            flood.ping("after-flood")
        rss_after = e.rss_kib()
        if not e.sanitized():
            assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)
        print(f"{sent} of {len(pings)} bytes sent before reading (the sender blocked: "
              f"{throttled}; the socket buffers hold megabytes either way); "
              f"{len(pongs)} pongs; closed: {closed}; RSS {rss_before} -> {rss_after} KiB")
        w.check()
        assert e.alive(), e.stderr_text()
    finally:
        flood.close()
        w.close()


# ---- bad requests: error frames, the connection stays usable -------------------------------------

BIG_TOPIC = "t" * (1 << 20)
BAD_REQUESTS = [
    # (frame text, error code, the req the error must echo, or None)
    ("not json", "invalid_request", None),
    ('{"type":"ping"', "invalid_request", None),
    ("[1, 2, 3]", "invalid_request", None),
    ('[{"type":"ping","req":"in-array"}]', "invalid_request", None),
    ('"ping"', "invalid_request", None),
    ("42", "invalid_request", None),
    ("null", "invalid_request", None),
    ("{}", "invalid_request", None),
    ('{"req":"no-type"}', "invalid_request", "no-type"),
    ('{"type":"nope","req":"u1"}', "invalid_request", "u1"),
    ('{"type":42,"req":"u2"}', "invalid_request", "u2"),
    ('{"type":"subscribe","req":"s1"}', "invalid_request", "s1"),
    ('{"type":"subscribe","req":"s2","topics":"ws.bad"}', "invalid_request", "s2"),
    ('{"type":"subscribe","req":"s3","topics":[]}', "invalid_request", "s3"),
    ('{"type":"subscribe","req":"s4","topics":[1]}', "invalid_request", "s4"),
    ('{"type":"subscribe","req":"s5","topics":["ws.bad"],"cursor":5}', "invalid_request", "s5"),
    ('{"type":"subscribe","req":"s6","topics":["ws.bad"],"cursor":"zzz"}', "invalid_cursor",
     "s6"),
    ('{"type":"subscribe","req":"s7","topics":["a b"]}', "invalid_topic", "s7"),
    ('{"type":"subscribe","req":"s8","topics":["' + BIG_TOPIC + '"]}', "invalid_topic", "s8"),
    (json.dumps({"type": "subscribe", "req": "s9", "topics": [f"t{i}" for i in range(10000)]}),
     "too_many_topics", "s9"),
    (json.dumps({"type": "subscribe", "req": "s10", "topics": [f"t{i}" for i in range(65)]}),
     "too_many_topics", "s10"),
    ('{"type":"unsubscribe","req":"n1"}', "invalid_request", "n1"),
    ('{"type":"unsubscribe","req":"n2","topics":"ws.bad"}', "invalid_request", "n2"),
    ('{"type":"publish","req":"p1","topic":"ws.bad","data":5}', "invalid_request", "p1"),
    ('{"type":"publish","req":"p2","data":"x"}', "invalid_request", "p2"),
    ('{"type":"publish","req":"p3","topic":"ws.bad"}', "invalid_request", "p3"),
    ('{"type":"publish","req":"p4","topic":5,"data":"x"}', "invalid_request", "p4"),
    ('{"type":"publish","req":"p5","topic":"a b","data":"x"}', "invalid_topic", "p5"),
    ('{"type":"publish","req":"p6","topic":"' + BIG_TOPIC + '","data":"x"}', "invalid_topic",
     "p6"),
    ('{"type":"publish","req":"p7","topic":"ws.bad","data":"!!!","encoding":"base64"}',
     "invalid_request", "p7"),
    ('{"type":"publish","req":"p8","topic":"ws.bad","data":"AAH/","encoding":"rot13"}',
     "invalid_request", "p8"),
    ('{"type":"publish","req":"p9","topic":"ws.bad","data":"x","event":"herald.x"}',
     "invalid_request", "p9"),
    ('{"type":"publish","req":"p10","topic":"ws.bad","data":"x","event":5}', "invalid_request",
     "p10"),
    ('{"type":"publish","req":"p11","topic":"ws.bad","data":"x","event":"' + "e" * 65 + '"}',
     "invalid_request", "p11"),
    ('{"type":"publish","req":"p12","topic":"ws.bad","data":"x","idempotency_key":7}',
     "invalid_request", "p12"),
    ('{"type":"ping","req":5}', "invalid_request", None),
    ('{"type":"ping","req":"' + "r" * 65 + '"}', "invalid_request", None),
]


def original_req(text):
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj.get("req") if isinstance(obj, dict) else None


def test_bad_requests_get_error_frames_and_the_connection_stays_usable(broker, edge):
    w = Witness(edge)
    w.check()

    async def main():
        ws = await websockets.connect(ws_url(edge), subprotocols=["herald.v1"], max_size=8 << 20,
                                      open_timeout=10)
        try:
            wrong = []  # every answer that is not the one expected (all listed at the end)
            for i, (text, code, req) in enumerate(BAD_REQUESTS):
                await ws.send(text)
                raw = await asyncio.wait_for(ws.recv(), 10)
                err = json.loads(raw)
                label = text[:60]
                if err.get("type") != "error" or err.get("code") != code:
                    wrong.append((label, f"want {code}", err))
                assert isinstance(err.get("message"), str) and err["message"], (label, err)
                assert len(err["message"]) < 2048, (label, len(err["message"]))
                if req is not None:
                    if err.get("req") != req:
                        wrong.append((label, f"want req {req}", err))
                elif "req" in err and err["req"] != original_req(text):
                    # no req, or one that is not a string of at most 64 bytes
                    wrong.append((label, "want no req", err))
                await ws.send(json.dumps({"type": "ping", "req": f"after{i}"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {
                    "type": "pong", "req": f"after{i}"}, label
        finally:
            await ws.close()
        assert wrong == [], "\n".join(map(str, wrong))
        assert ws.close_code == 1000

    run(main())
    assert edge.history("ws.bad")["messages"] == []
    w.check()
    w.close()
    assert edge.alive()


def test_publish_errors_payload_too_large_and_unavailable(broker, edge_factory):
    e = edge_factory(broker, "--max-data-bytes", "1K", "--request-timeout", "1000",
                     "--broker-down-after", "1000")
    topic = "ws.perr"

    async def main():
        ws = await AsyncWS.open(e)
        for data, extra in (("x" * 1025, {}),
                            (base64.b64encode(b"\xff" * 1025).decode(), {"encoding": "base64"})):
            err = await ws.request({"type": "publish", "topic": topic, "data": data, **extra})
            assert err["type"] == "error" and err["code"] == "payload_too_large", err
        ok = await ws.publish(topic, "x" * 1024)
        assert ok["seq"] == 1
        broker.kill()
        err = await ws.request({"type": "publish", "topic": topic, "data": "lost?",
                                "idempotency_key": "retry-me"}, timeout=15)
        assert err["type"] == "error" and err["code"] == "unavailable", err
        await ws.ping()  # the connection stays open
        await in_thread(broker.start)
        deadline = time.monotonic() + 15
        while True:  # retry with the same key until the edge reaches the broker again
            ans = await ws.request({"type": "publish", "topic": topic, "data": "lost?",
                                    "idempotency_key": "retry-me"}, timeout=15)
            if ans["type"] == "published":
                break
            assert ans["code"] == "unavailable" and time.monotonic() < deadline, ans
            await asyncio.sleep(0.2)
        # stored once whichever way: the edge's request may have reached the restarted broker
        # (then the retry is its duplicate) or not
        assert ans["seq"] == 2, ans
        await ws.close()

    run(main())
    assert [m["data"] for m in e.history(topic)["messages"]] == ["x" * 1024, "lost?"]


def test_publish_answers_come_in_the_order_the_publishes_were_sent(broker, edge):
    topics = ["ws.order.a", "ws.order.b", "ws.order.c"]

    async def main():
        ws = await AsyncWS.open(edge, max_queue=None)
        n = 300
        futs = []
        for i in range(n):
            req = f"o{i}"
            futs.append(ws.expect_answer(req))
            await ws.send({"type": "publish", "req": req, "topic": topics[i % 3],
                           "data": f"d{i}"})
        answers = [await asyncio.wait_for(f, 30) for f in futs]
        await ws.close()
        # the answers arrived in the order the publishes were sent
        assert [req for _, req in ws.arrivals] == [f"o{i}" for i in range(n)], ws.arrivals[:10]
        return answers

    answers = run(main())
    assert all(a["type"] == "published" for a in answers), [a for a in answers
                                                            if a["type"] != "published"][:3]
    for k, t in enumerate(topics):
        seqs = [a["seq"] for a in answers[k::3]]
        assert seqs == list(range(1, 101)), (t, seqs[:5])
        assert all(a["topic"] == t for a in answers[k::3])


def test_publishes_cut_by_a_close_are_retried_with_their_keys_exactly_once(broker, edge):
    """docs/websocket.md: a publish still waiting for its commit when the connection closes may
    commit without an answer; retried with the same idempotency_key it is stored once, and the
    answer says duplicate when it had been."""
    topic = "ws.cut"
    n = 300

    async def main():
        ws = await AsyncWS.open(edge, max_queue=None)
        for i in range(n):
            await ws.send({"type": "publish", "req": f"c{i}", "topic": topic, "data": f"d{i}",
                           "idempotency_key": f"k{i}"})
        await ws.conn.close()  # at once: some answers never come
        await ws.close()
        answered = {req for kind, req in ws.arrivals if kind == "published"}
        again = await AsyncWS.open(edge, max_queue=None)
        retried = []
        for i in range(n):
            retried.append(await again.publish(topic, f"d{i}", idempotency_key=f"k{i}"))
        await again.close()
        return answered, retried

    answered, retried = run(main())
    for i, r in enumerate(retried):
        if f"c{i}" in answered:
            assert r["duplicate"] is True, (i, r)
    with broker.client() as c:
        _, last, msgs = c.fetch_all(topic)
    datas = [m.data.decode() for m in msgs]
    assert sorted(datas) == sorted(f"d{i}" for i in range(n)), len(datas)  # each once
    assert last == n
    assert sorted(r["seq"] for r in retried) == list(range(1, n + 1))
    print(f"{len(answered)} of {n} answered before the close")


def test_a_publish_right_after_subscribed_is_always_delivered(broker, edge, edge_factory):
    # `subscribed` is sent once every topic's starting position is known, so a client that
    # subscribes "from now" and publishes as soon as it has the answer receives its message —
    # over and over. The publish goes through another edge (its own connection to the broker),
    # so without that rule it could commit before this edge's head lookup and be skipped.
    other = edge_factory(broker, name="other")

    async def main():
        ws = await AsyncWS.open(edge)
        for i in range(40):
            topic = f"ws.after.{i}"
            await ws.subscribe([topic])  # no cursor: new messages only
            await in_thread(other.publish, topic, f"m{i}".encode())
            await ws.wait(lambda s: any(m["topic"] == topic for m in s.messages), 10,
                          f"the message published right after subscribing to {topic}")
        assert [m["data"] for m in ws.messages] == [f"m{i}" for i in range(40)]
        await ws.close()

    run(main())
