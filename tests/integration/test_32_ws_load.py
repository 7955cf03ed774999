"""32 WebSocket under load (docs/websocket.md; DESIGN.md invariants 2-3): 500 WebSocket
subscribers on two edges, each of one or two of five topics, while 2,000 messages are published
over HTTP (single and batch), ZeroMQ (single and batch) and WebSocket at once: every subscriber
gets every message of its topics exactly once, in order. And one client publishing 10,000
messages over one WebSocket as fast as it can (all sent before any answer is read): every one
acknowledged, answers in the order sent, none lost. (Heavier load belongs in tests/bench.)"""

import asyncio
import json
import random
import threading
import time

import pytest
import websockets

from conftest import make_cursor, publish_message
from wsclient import AsyncWS

TOPICS = [f"wsload.{k}" for k in range(5)]
N = 2000
N_SUBS = 500


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def plan(seed):
    """N messages: (index, topic, channel) with channel http, http-batch, zmq, zmq-batch or ws;
    the batch channels take runs of consecutive indexes."""
    rnd = random.Random(seed)
    out = []
    i = 0
    while i < N:
        channel = rnd.choice(["http", "http-batch", "zmq", "zmq-batch", "ws", "ws"])
        k = 1 if channel in ("http", "zmq") else min(rnd.randint(2, 40), N - i)
        for j in range(i, i + k):
            out.append((j, rnd.choice(TOPICS), channel))
        i += k
    return out


class Acked:
    """What the publishers were told: {topic: {seq: data}} (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_topic = {t: {} for t in TOPICS}

    def add(self, topic, seq, data):
        with self.lock:
            assert seq not in self.by_topic[topic], (topic, seq)
            self.by_topic[topic][seq] = data

    def ordered(self, topic):
        return [(s, self.by_topic[topic][s]) for s in sorted(self.by_topic[topic])]


def publish_http_and_zmq(edges, broker, items, acked, seed):
    """The http and zmq items, in runs, from one thread, with uneven pauses."""
    rnd = random.Random(seed)
    runs = []
    for idx, topic, channel in items:
        if runs and runs[-1][0] == channel and channel.endswith("batch") and \
                runs[-1][1][-1][0] == idx - 1:
            runs[-1][1].append((idx, topic))
        else:
            runs.append((channel, [(idx, topic)]))
    with broker.client() as zc:
        for channel, chunk in runs:
            datas = [(t, f"{t}#{i}") for i, t in chunk]
            edge = rnd.choice(edges)
            if channel == "http":
                (t, d), = datas
                r = edge.publish(t, d.encode())
                acked.add(t, r["seq"], d)
            elif channel == "http-batch":
                body = edge.publish_batch([{"topic": t, "data": d} for t, d in datas])
                for (t, d), m in zip(datas, body["messages"]):
                    assert m["topic"] == t
                    acked.add(t, m["seq"], d)
            elif channel == "zmq":
                (t, d), = datas
                acked.add(t, zc.publish(t, d.encode()).seq, d)
            else:
                results = zc.publish_batch([publish_message(t, d.encode()) for t, d in datas])
                for (t, d), r in zip(datas, results):
                    acked.add(t, r.seq, d)
            if rnd.random() < 0.2:
                time.sleep(rnd.choice([0.001, 0.005, 0.02]))


async def publish_ws(edge, items, acked, seed):
    """The ws items over one WebSocket: up to 40 publishes in flight, then the answers."""
    rnd = random.Random(seed)
    ws = await AsyncWS.open(edge, max_queue=None)
    try:
        pos = 0
        while pos < len(items):
            k = rnd.randint(1, 40)
            chunk = items[pos:pos + k]
            pos += k
            futs = []
            for idx, topic, _ in chunk:
                req = f"w{idx}"
                futs.append((topic, f"{topic}#{idx}", ws.expect_answer(req)))
                await ws.send({"type": "publish", "req": req, "topic": topic,
                               "data": f"{topic}#{idx}"})
            for topic, data, fut in futs:
                ans = await asyncio.wait_for(fut, 30)
                assert ans["type"] == "published" and ans["topic"] == topic, ans
                acked.add(topic, ans["seq"], data)
            if rnd.random() < 0.3:
                await asyncio.sleep(rnd.choice([0.001, 0.01, 0.03]))
    finally:
        await ws.close()


class Sub:
    """One subscriber: a bare `websockets` connection reading (topic, seq, data) of every
    message until it holds `want`."""

    def __init__(self, edge, topics, want):
        self.edge, self.topics, self.want = edge, topics, want
        self.got = []
        self.others = []
        self.conn = None
        self.done = asyncio.Event()

    async def connect(self, cursor):
        self.conn = await websockets.connect(f"ws://{self.edge.host}:{self.edge.port}/v1/ws",
                                             subprotocols=["herald.v1"], open_timeout=20,
                                             max_queue=None, ping_interval=None)
        await self.conn.send(json.dumps({"type": "subscribe", "req": "s", "topics": self.topics,
                                         "cursor": cursor}))
        answer = json.loads(await asyncio.wait_for(self.conn.recv(), 20))
        assert answer["type"] == "subscribed" and answer["req"] == "s", answer

    async def read(self):
        try:
            while len(self.got) < self.want:
                m = json.loads(await self.conn.recv())
                if m["type"] == "message":
                    self.got.append((m["topic"], m["seq"], m["data"]))
                else:
                    self.others.append(m)
        finally:
            self.done.set()

    async def close(self):
        try:
            await asyncio.wait_for(self.conn.close(), 10)
        except (asyncio.TimeoutError, OSError):
            pass


def test_500_subscribers_on_two_edges_get_every_message_once_in_order(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    body = a.publish_batch([{"topic": t, "data": "start"} for t in TOPICS])
    start = {m["topic"]: m["seq"] for m in body["messages"]}
    cursor = make_cursor({m["topic"]: (m["epoch"], m["seq"]) for m in body["messages"]})
    items = plan(3232)
    per_topic = {t: sum(1 for _, tt, _ in items if tt == t) for t in TOPICS}
    acked = Acked()

    def topics_of(i):
        first = TOPICS[i % 5]
        return [first, TOPICS[(i + 1) % 5]] if i % 4 == 0 else [first]

    async def main():
        subs = [Sub(a if i % 2 == 0 else b, topics_of(i), sum(per_topic[t] for t in topics_of(i)))
                for i in range(N_SUBS)]
        for k in range(0, N_SUBS, 50):  # connect in groups (the edges' accept backlog)
            await asyncio.gather(*(s.connect(cursor) for s in subs[k:k + 50]))
        readers = [asyncio.create_task(s.read()) for s in subs]
        t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        other = [x for x in items if x[2] != "ws"]
        ws_items = [x for x in items if x[2] == "ws"]
        await asyncio.gather(
            loop.run_in_executor(None, publish_http_and_zmq, [a, b], broker, other, acked, 7),
            publish_ws(b, ws_items, acked, 8))
        published_s = time.monotonic() - t0
        try:
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        finally:
            late = [i for i, s in enumerate(subs) if len(s.got) < s.want]
            print(f"{N} messages published in {published_s:.1f} s ({len(ws_items)} over "
                  f"WebSocket); delivered after {time.monotonic() - t0:.1f} s; "
                  f"{len(late)} subscribers short")
            for s in subs:
                await s.close()
        return subs

    subs = run(main(), timeout=150)
    for t in TOPICS:
        seqs = [s for s, _ in acked.ordered(t)]
        assert seqs == list(range(start[t] + 1, start[t] + 1 + per_topic[t])), t
    for i, s in enumerate(subs):
        assert s.others == [], (i, s.others[:3])
        for t in s.topics:
            mine = [(seq, d) for topic, seq, d in s.got if topic == t]
            assert mine == acked.ordered(t), (i, t, len(mine), per_topic[t])
    for e in (a, b):
        assert e.metrics()["herald_edge_slow_client_disconnects_total"] == 0


@pytest.mark.parametrize("inflight", [None, "8"], ids=["default-inflight", "inflight-8"])
def test_10000_publishes_on_one_websocket_sent_before_any_answer_is_read(broker, edge_factory,
                                                                         inflight):
    """10 MB of publishes: more than the socket buffers hold, so the edge's --ws-max-inflight
    pause (TCP backpressure) is what paces the sender."""
    edge = edge_factory(broker, *(["--ws-max-inflight", inflight] if inflight else []))
    topic = "wsload.burst"
    n = 10000
    pad = "p" * 1000

    async def main():
        start = edge.publish(topic, b"start")
        ws = await AsyncWS.open(edge, max_queue=None)
        futs = [ws.expect_answer(f"q{i}") for i in range(n)]
        t0 = time.monotonic()
        for i in range(n):  # as fast as the edge takes them; the answers are not awaited yet
            await ws.send({"type": "publish", "req": f"q{i}", "topic": topic,
                           "data": f"d{i} {pad}"})
        sent_s = time.monotonic() - t0
        answers = [await asyncio.wait_for(f, 60) for f in futs]
        acked_s = time.monotonic() - t0
        await ws.close()
        # read back by a subscriber from before the first (the edge paces its catch-up)
        reader = await AsyncWS.open(edge, max_queue=None, keep=lambda m: (m["seq"], m["data"]))
        await reader.subscribe([topic], start["id"])
        await reader.wait_messages(n, 60)
        await reader.drain(0.3)
        await reader.close()
        print(f"{n} publishes sent in {sent_s:.1f} s, all acknowledged after {acked_s:.1f} s, "
              f"read back after {time.monotonic() - t0:.1f} s")
        return start, answers, ws.arrivals, reader.messages

    start, answers, arrivals, got = run(main())
    bad = [x for x in answers if x["type"] != "published"]
    assert bad == [], bad[:3]
    assert [req for _, req in arrivals] == [f"q{i}" for i in range(n)]  # in the order sent
    assert [x["req"] for x in answers] == [f"q{i}" for i in range(n)]
    seqs = [x["seq"] for x in answers]
    assert seqs == list(range(start["seq"] + 1, start["seq"] + 1 + n))  # strictly increasing
    assert all(x["duplicate"] is False and x["topic"] == topic for x in answers)
    # none lost: a subscriber got them all, and the broker holds them all
    assert got == [(start["seq"] + 1 + i, f"d{i} {pad}") for i in range(n)]
    with broker.client() as c:
        _, last, msgs = c.fetch_all(topic)
        assert last == start["seq"] + n
        assert [m.data for m in msgs[1:]] == [f"d{i} {pad}".encode() for i in range(n)]
