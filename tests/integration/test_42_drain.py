"""Graceful drain under load behind HAProxy (the Kubernetes rollout path, docs/kubernetes.md).

SIGTERM on an edge turns its /readyz to 503 at once, so HAProxy's health check takes it out of
rotation while it keeps serving for --drain-grace ms; then every client gets its cursor (SSE
final event, NDJSON shutdown line, WebSocket shutdown frame + close 1001, the long poll's
answer) and the edge exits 0. Every client reconnects through HAProxy to the other edge with
its cursor and ends with every message of its topics exactly once, in order.
"""
import asyncio
import json
import random
import signal
import time

import aiohttp
import requests
import websockets

from conftest import (AsyncPoller, AsyncStreamReader, AsyncSubscriber, free_port,
                      start_haproxy, wait_http)

TOPICS = [f"drain.{i}" for i in range(4)]
PER_TOPIC = 150  # messages published to each topic
DRAIN_GRACE_MS = 1500


class AsyncWsClient:
    """A WebSocket subscriber that reconnects through `url` with the id of the last message it
    saw, as docs/websocket.md tells clients to."""

    def __init__(self, url, topics, want):
        self.url, self.topics, self.want = url, topics, want
        self.messages, self.cursor, self.connects, self.closes = [], "earliest", 0, []

    async def run(self, deadline):
        while len(self.messages) < self.want and time.monotonic() < deadline:
            self.connects += 1
            try:
                async with websockets.connect(self.url, subprotocols=["herald.v1"],
                                              open_timeout=5) as ws:
                    await ws.send(json.dumps({"type": "subscribe", "req": "s",
                                              "topics": self.topics, "cursor": self.cursor}))
                    while len(self.messages) < self.want:
                        left = deadline - time.monotonic()
                        frame = json.loads(await asyncio.wait_for(ws.recv(), max(left, 0.1)))
                        if frame["type"] == "message":
                            self.messages.append(frame)
                            self.cursor = frame["id"]
                        elif frame["type"] == "shutdown":
                            self.cursor = frame["cursor"]
            except websockets.ConnectionClosed as e:
                self.closes.append(e.rcvd.code if e.rcvd else None)
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake):
                pass
            if len(self.messages) < self.want:
                await asyncio.sleep(0.1)
        return self


def data_of(transport, m):
    if transport == "sse":
        return m.data
    return m["data"]


def topics_of(i):
    rng = random.Random(i)
    return sorted(rng.sample(TOPICS, rng.randint(1, 2)))


def test_drain_under_load_loses_nothing(broker, edge_factory, tmp_path):
    draining = edge_factory(broker, "--drain-grace", str(DRAIN_GRACE_MS), "--retry", "200",
                            "--heartbeat", "500")
    other = edge_factory(broker, "--heartbeat", "500")
    port = free_port()
    start_haproxy(tmp_path, port, draining, other, balance="roundrobin")
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/readyz")

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            clients = []
            for i in range(120):
                kind = ("sse", "poll", "stream", "ws")[i % 4]
                topics = topics_of(i)
                want = PER_TOPIC * len(topics)
                if kind == "sse":
                    c = AsyncSubscriber(session, [base], topics, want,
                                        params={"cursor": "earliest"}, max_connects=20)
                elif kind == "poll":
                    c = AsyncPoller(session, [base], topics, want, cursor="earliest", wait=2)
                elif kind == "stream":
                    c = AsyncStreamReader(session, [base], topics, want, cursor="earliest",
                                          max_connects=20)
                else:
                    c = AsyncWsClient(f"ws://127.0.0.1:{port}/v1/ws", topics, want)
                clients.append((kind, topics, c))
            deadline = time.monotonic() + 60
            tasks = [asyncio.create_task(c.run(deadline)) for _, _, c in clients]

            acked = {t: [] for t in TOPICS}
            loop = asyncio.get_running_loop()

            def publish(n):
                # through HAProxy, with an idempotency key: a publish cut by the drain is retried
                topic = TOPICS[n % len(TOPICS)]
                body = f"{topic}:{n // len(TOPICS):04d}".encode()
                for _ in range(50):
                    try:
                        r = requests.post(f"{base}/v1/topics/{topic}/messages", data=body,
                                          headers={"Idempotency-Key": body.decode()}, timeout=5)
                        if r.status_code == 201:
                            acked[topic].append(body.decode())
                            return
                    except requests.RequestException:
                        pass
                    time.sleep(0.05)
                raise AssertionError(f"publish {body!r} never acknowledged")

            drained_at = None
            for n in range(PER_TOPIC * len(TOPICS)):
                await loop.run_in_executor(None, publish, n)
                if n == PER_TOPIC:  # a quarter in: drain one edge
                    draining.ended_by_test = True
                    draining.proc.send_signal(signal.SIGTERM)
                    drained_at = time.monotonic()
                    # not ready at once (as soon as the signal is handled), while still serving
                    def not_ready():
                        while True:
                            r = requests.get(draining.url("/readyz"), timeout=2)
                            if r.status_code == 503 or time.monotonic() - drained_at > 0.5:
                                return r
                            time.sleep(0.01)
                    r = await loop.run_in_executor(None, not_ready)
                    assert r.status_code == 503 and r.json()["draining"] is True
                    assert (time.monotonic() - drained_at) < DRAIN_GRACE_MS / 1000
                await asyncio.sleep(0.004)
            await asyncio.wait_for(asyncio.gather(*tasks), 70)
            return clients, acked, drained_at

    clients, acked, drained_at = asyncio.run(main())
    rc = draining.proc.wait(timeout=15)
    assert rc == 0, f"the drained edge exited {rc}"
    reconnected = {k: 0 for k in ("sse", "poll", "stream", "ws")}
    for kind, topics, c in clients:
        got = [data_of(kind, m) for m in c.messages]
        for t in topics:
            mine = [d for d in got if d.startswith(t + ":")]
            assert mine == acked[t], (kind, t, len(mine), len(acked[t]), mine[:3])
        assert len(got) == PER_TOPIC * len(topics), (kind, len(got))
        if kind in ("sse", "stream", "ws") and c.connects > 1:
            reconnected[kind] += 1
    # the drained edge really had clients of every streaming kind, and they moved
    assert all(reconnected[k] > 0 for k in ("sse", "stream", "ws")), reconnected
    print(f"drain: clients that reconnected after the drain by transport {reconnected}")
