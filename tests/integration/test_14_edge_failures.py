"""14 load and failures around the edge (DESIGN.md invariants 2-5, §Processes): 200 concurrent
SSE subscribers on two edges under mixed HTTP and ZeroMQ publishing; a broker SIGKILLed
mid-stream and restarted; an edge stopped with SIGTERM; an edge started before its broker."""

import asyncio
import os
import random
import signal
import subprocess
import threading
import time

import aiohttp

from conftest import AsyncSubscriber, make_cursor, publish_message


def run(coro):
    return asyncio.run(coro)


async def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.05)


async def sse_connections(session, edges):
    total = 0
    for e in edges:
        async with session.get(e.url("/metrics")) as r:
            for line in (await r.text()).splitlines():
                if line.startswith('herald_edge_connections{transport="sse"} '):
                    total += int(line.split()[1])
    return total


async def wait_connections(session, edges, n, timeout=20):
    deadline = time.monotonic() + timeout
    while (got := await sse_connections(session, edges)) != n:
        assert time.monotonic() < deadline, f"{got} SSE connections, want {n}"
        await asyncio.sleep(0.05)


def wait_live_path(edge, broker_client, topic, timeout=10.0):
    """Publish to `topic` (which has a subscriber on `edge`) every 50 ms until the edge counts a
    live message from the broker: its SUB socket is connected again. (Messages a restarted
    broker commits before that reach no edge until the topic's next message: see the report
    on edge/brokers.c.)"""
    before = edge.metrics()["herald_edge_live_messages_total"]
    deadline = time.monotonic() + timeout
    while edge.metrics()["herald_edge_live_messages_total"] == before:
        assert time.monotonic() < deadline, "the edge receives no live messages"
        broker_client.publish(topic, b"probe")
        time.sleep(0.05)


def test_200_subscribers_on_two_edges_get_every_message_once_in_order(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topic, n, n_subs = "load.t", 2000, 200
    start = a.publish(topic, b"start")  # subscribers start right after it: no race with "new"
    expected = [f"m{i}" for i in range(n)]
    acked = []

    def publish_all():
        """HTTP (single and batch, to either edge) and ZeroMQ (single and batch) mixed, in
        bursts with pauses, from one thread: commit order is publish order."""
        rnd = random.Random(20261129)
        i = 0
        with broker.client() as zc:
            while i < n:
                kind = rnd.choice(["http", "http-batch", "zmq", "zmq-batch"])
                k = 1 if kind in ("http", "zmq") else min(rnd.randint(2, 60), n - i)
                chunk = expected[i:i + k]
                edge = a if rnd.random() < 0.5 else b
                if kind == "http":
                    seqs = [edge.publish(topic, chunk[0].encode())["seq"]]
                elif kind == "http-batch":
                    body = edge.publish_batch([{"topic": topic, "data": d} for d in chunk])
                    seqs = [m["seq"] for m in body["messages"]]
                elif kind == "zmq":
                    seqs = [zc.publish(topic, chunk[0].encode()).seq]
                else:
                    seqs = [r.seq for r in zc.publish_batch(
                        [publish_message(topic, d.encode()) for d in chunk])]
                assert seqs == list(range(i + 2, i + 2 + k)), (kind, seqs)
                acked.extend(chunk)
                i += k
                pause = rnd.choice([0, 0, 0, 0, 0.002, 0.01, 0.03])
                if pause:
                    time.sleep(pause)

    async def main():
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            subs = [AsyncSubscriber(session, [(a if i % 2 == 0 else b).base], topic, n,
                                    last_event_id=start["id"], reconnect=False)
                    for i in range(n_subs)]
            deadline = time.monotonic() + 60
            tasks = [asyncio.create_task(s.run(deadline)) for s in subs]
            await wait_connections(session, [a, b], n_subs)
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, publish_all)
            published_s = time.monotonic() - t0
            await asyncio.wait_for(asyncio.gather(*tasks), 65)
            print(f"{n} messages published in {published_s:.1f} s; all delivered after "
                  f"{time.monotonic() - t0:.1f} s")
            return subs

    subs = run(main())
    assert acked == expected
    final = make_cursor({topic: (start["epoch"], n + 1)})
    for i, s in enumerate(subs):
        got = [m.data for m in s.messages]
        assert s.statuses == [200] and s.connects == 1, (i, s.statuses, s.error)
        assert got == expected, (i, len(got), got[:3], got[-3:])
        assert s.others == []
        assert s.messages[-1].last_event_id == final
    for e in (a, b):
        m = e.metrics()
        assert m["herald_edge_slow_client_disconnects_total"] == 0
        assert m['herald_edge_deliveries_total{transport="sse"}'] == n * n_subs // 2


def test_broker_sigkill_mid_stream_loses_no_acknowledged_message(broker_factory, edge_factory):
    br = broker_factory()
    a = edge_factory(br, "--broker-down-after", "1000", "--request-timeout", "2000", name="a")
    b = edge_factory(br, "--broker-down-after", "1000", "--request-timeout", "2000", name="b")
    topic = "crash.t"
    start = a.publish(topic, b"start")
    acked, refused = [], []
    stop = threading.Event()

    def publisher():
        """Publish m0, m1, ... every 5 ms through both edges until told to stop."""
        k = 0
        while not stop.is_set() and k < 5000:
            edge = a if k % 2 == 0 else b
            data = f"m{k}"
            k += 1
            try:
                r = edge.post(f"/v1/topics/{topic}/messages", data=data.encode(), timeout=10)
            except Exception as e:  # noqa: BLE001  (a timeout is a refusal too)
                refused.append((data, repr(e)))
                continue
            if r.status_code == 201:
                acked.append((data, r.json()["seq"]))
            else:
                assert r.status_code == 503, r.text
                assert int(r.headers["Retry-After"]) >= 1
                assert r.json()["error"]["code"] == "unavailable"
                refused.append((data, 503))
            time.sleep(0.005)

    async def main():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            # 5 subscribers per edge; after a drop each reconnects (to the other edge next)
            subs = [AsyncSubscriber(session, [a.base, b.base] if i % 2 == 0 else
                                    [b.base, a.base], topic, 10**9,
                                    last_event_id=start["id"], reconnect=True)
                    for i in range(10)]
            deadline = time.monotonic() + 60
            tasks = [asyncio.create_task(s.run(deadline)) for s in subs]
            await wait_connections(session, [a, b], 10)
            pub = threading.Thread(target=publisher)
            pub.start()
            try:
                await wait_for(lambda: len(acked) >= 40, 20, "40 acknowledged publishes")
                br.kill()  # SIGKILL, mid-stream
                killed_at = len(acked)
                # while it is down: not ready, and publishing answers 503 with Retry-After
                for e in (a, b):
                    await asyncio.get_running_loop().run_in_executor(
                        None, e.wait_status, "/readyz", 503, 5)
                    r = await asyncio.get_running_loop().run_in_executor(
                        None, lambda e=e: e.post(f"/v1/topics/{topic}/messages", data=b"down"))
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["code"] == "unavailable"
                    assert int(r.headers["Retry-After"]) >= 1
                await asyncio.sleep(0.5)
                br.start()
                for e in (a, b):
                    await asyncio.get_running_loop().run_in_executor(
                        None, e.wait_status, "/readyz", 200, 10)
                await wait_for(lambda: len(acked) >= killed_at + 40, 20,
                               "40 more acknowledged publishes after the restart")
            finally:
                stop.set()
                await asyncio.get_running_loop().run_in_executor(None, pub.join, 30)
            with br.client() as c:
                _, _, stored = c.fetch_all(topic)
            committed = [m.data.decode() for m in stored][1:]  # after "start"
            await wait_for(lambda: all(len(s.messages) >= len(committed) for s in subs), 30,
                           "every committed message at every subscriber")
            await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return subs, committed

    subs, committed = run(main())
    acked_data = [d for d, _ in acked]
    assert refused, "no publish was refused while the broker was down"
    assert set(acked_data) <= set(committed), "an acknowledged message was lost"
    assert [d for d in committed if d in set(acked_data)] == acked_data  # in ack order
    assert [s for _, s in acked] == sorted(s for _, s in acked)
    for i, s in enumerate(subs):
        got = [m.data for m in s.messages]
        assert got == committed, (i, len(got), len(committed), s.statuses, s.error)
        assert [e.type for e in s.others] == [], s.others


def test_edge_sigterm_gives_each_client_its_cursor_and_nothing_is_lost(broker, edge_factory):
    a = edge_factory(broker, "--retry", "1000", "--drain-grace", "300", name="a")
    b = edge_factory(broker, name="b")
    topic, other = "term.t", "term.other"
    for i in range(1, 11):
        a.publish(topic, f"m{i}".encode())
    a.publish(other, b"o1")
    streams = [a.sse(topic, params={"last_event_id": "earliest"}) for _ in range(4)]
    streams.append(a.sse([topic, other], params={"last_event_id": "earliest",
                                                 "format": "json"}))
    try:
        for s in streams[:4]:
            s.wait_messages(10)
        streams[4].wait_messages(11)
        a.http.close()  # no idle keep-alive connection (see the next test)
        t0 = time.monotonic()
        os.kill(a.proc.pid, signal.SIGTERM)
        # draining: /readyz false at once, streams still served during the grace
        r = a.wait_status("/readyz", 503, 2)
        assert r.json()["draining"] is True and r.json()["ready"] is False
        for s in streams:
            s.wait_closed(10)
        assert a.proc.wait(timeout=10) == 0, a.stderr_text()
        assert time.monotonic() - t0 < 3.0
        assert "event=stopped" in a.stderr_text()
        for i in range(11, 21):  # published while the clients are away
            b.publish(topic, f"m{i}".encode())
        for s in streams:
            last = s.events[-1]
            assert last.type == "herald.shutdown", s.events[-3:]
            body = last.json()
            assert set(body) == {"type", "cursor", "retry_ms", "reason"} and body["type"] == "shutdown"
            assert 1000 <= body["retry_ms"] < 2000
            assert s.parser.retry == body["retry_ms"]
            # the cursor is the stream's position: the last delivered event's id
            delivered = s.messages()
            assert body["cursor"] == delivered[-1].last_event_id == last.last_event_id
            assert s.parser.dispatched_id == body["cursor"]
            tail = (f"retry: {body['retry_ms']}\nid: {body['cursor']}\n"
                    f"event: herald.shutdown\ndata: ").encode()
            assert tail in s.raw and s.raw.endswith(b"\n\n")
        # each client resumes on the other edge with its cursor, losing nothing
        for s in streams[:4]:
            cursor = s.events[-1].json()["cursor"]
            with b.sse(topic, headers={"Last-Event-ID": cursor}) as again:
                again.wait_messages(10)
                again.drain(0.2)
                got = [m.data for m in s.messages()] + [m.data for m in again.messages()]
                assert got == [f"m{i}" for i in range(1, 21)]
        cursor = streams[4].events[-1].json()["cursor"]
        b.publish(other, b"o2")
        with b.sse([topic, other], params={"format": "json"},
                   headers={"Last-Event-ID": cursor}) as again:
            again.wait_messages(11)
            again.drain(0.2)
            got = [m.json()["data"] for m in streams[4].messages() + again.messages()]
            assert sorted(got) == sorted([f"m{i}" for i in range(1, 21)] + ["o1", "o2"])
            assert [d for d in got if d.startswith("m")] == [f"m{i}" for i in range(1, 21)]
    finally:
        for s in streams:
            s.close()


def test_edge_sigterm_with_an_idle_keep_alive_client_exits_promptly(broker, edge_factory):
    a = edge_factory(broker, "--slow-client-grace", "2000")
    assert a.publish("idle.t", b"x")["seq"] == 1  # leaves the session's connection idle, open
    t0 = time.monotonic()
    os.kill(a.proc.pid, signal.SIGTERM)
    assert a.proc.wait(timeout=10) == 0, a.stderr_text()
    assert time.monotonic() - t0 < 1.5, f"exit took {time.monotonic() - t0:.1f} s"


def test_a_second_sigterm_cuts_the_drain_grace_short(broker, edge_factory):
    a = edge_factory(broker, "--drain-grace", "20000", "--retry", "100")
    topic = "twice.t"
    with a.sse(topic) as s:
        a.publish(topic, b"x")
        s.wait(lambda st: len(st.messages()) == 1, 10, "the message")
        t0 = time.monotonic()
        os.kill(a.proc.pid, signal.SIGTERM)
        a.wait_status("/readyz", 503, 5)  # draining: not ready, still serving
        assert a.proc.poll() is None
        os.kill(a.proc.pid, signal.SIGTERM)  # the second: clients get their cursors now
        assert a.proc.wait(timeout=10) == 0, a.stderr_text()
        assert time.monotonic() - t0 < 5, "the second SIGTERM did not cut the 20 s grace short"
        s.wait(lambda st: any(e.type == "herald.shutdown" for e in st.events), 5, "shutdown")
    a.ended_by_test = True
    assert "event=drain_hurried" in a.stderr_text()


def test_edge_sigterm_during_start_up_exits_0(broker, edge_factory):
    # The drain handler is installed a moment after start; a SIGTERM before that waits for it
    # (the default action would kill the edge half-started).
    for delay in (0.02, 0.05):
        e = edge_factory(broker, start=False)
        e.starts += 1
        e.stderr_path = e.workdir / f"edge-stderr-{e.starts}.log"
        with open(e.stderr_path, "wb") as err:
            e.proc = subprocess.Popen(e.argv(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err)
        time.sleep(delay)
        e.ended_by_test = True
        e.proc.send_signal(signal.SIGTERM)
        assert e.proc.wait(timeout=10) == 0, (delay, e.stderr_text())
        assert "event=stopped" in e.stderr_text()


def test_edge_started_before_its_broker(broker_factory, edge_factory):
    br = broker_factory(start=False)  # ports chosen, nobody listening yet
    e = edge_factory(br, "--broker-down-after", "1000", ready=False)
    r = e.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False
    assert not any(x["up"] for x in r.json()["brokers"]), r.json()
    for r in (e.post("/v1/topics/early.t/messages", data=b"x"),
              e.post("/v1/messages", json={"messages": [{"topic": "early.t", "data": "x"}]}),
              e.get("/v1/topics/early.t/messages")):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert int(r.headers["Retry-After"]) >= 1
    assert e.get("/healthz").status_code == 200
    # subscribers may connect meanwhile; they start once the broker is there
    from_start = e.sse("early.t", params={"last_event_id": "earliest"})
    from_now = e.sse("early.t")
    probe = e.sse("early.probe")
    try:
        assert (from_start.status, from_now.status) == (200, 200)
        from_start.drain(0.3)
        assert from_start.events == [] and not from_start.closed
        br.start()
        e.wait_status("/readyz", 200, 10)
        with br.client() as c:
            wait_live_path(e, c, "early.probe")
        for i in range(1, 6):
            e.publish("early.t", f"m{i}".encode())
        from_start.wait_messages(5)
        from_now.drain(0.3)
        assert [m.data for m in from_start.messages()] == [f"m{i}" for i in range(1, 6)]
        # from_now started at the head when the broker answered: a suffix, then everything new
        got = [m.data for m in from_now.messages()]
        assert got == [f"m{i}" for i in range(6 - len(got), 6)]
        e.publish("early.t", b"m6")
        from_now.wait(lambda s: s.messages() and s.messages()[-1].data == "m6", 10, "m6")
        from_start.wait_messages(6)
        assert [m.data for m in from_start.messages()] == [f"m{i}" for i in range(1, 7)]
    finally:
        from_start.close()
        from_now.close()
        probe.close()


def test_broker_losing_its_data_under_connected_subscribers_sends_an_epoch_reset(
        broker_factory, edge_factory, tmp_path):
    br = broker_factory()
    e = edge_factory(br, "--broker-down-after", "1000")
    old = [e.publish("lost.t", f"m{i}".encode()) for i in range(1, 4)]
    with e.sse("lost.t", params={"last_event_id": "earliest", "format": "json"}) as s, \
            e.sse("lost.probe") as probe:
        s.wait_messages(3)
        br.kill()
        br.data_dir = tmp_path / "fresh-data"  # the log is gone: a new epoch
        br.start()
        e.wait_status("/readyz", 200, 10)
        with br.client() as c:
            wait_live_path(e, c, "lost.probe")
        new = [e.publish("lost.t", f"n{i}".encode()) for i in (1, 2, 3)]
        assert new[0]["epoch"] != old[0]["epoch"] and new[0]["seq"] == 1
        s.wait(lambda st: len(st.messages()) >= 6, 10, "the new log's messages")
        s.drain(0.3)
        assert [(ev.type, ev.json().get("seq"), ev.json().get("data")) for ev in s.events] == [
            ("message", 1, "m1"), ("message", 2, "m2"), ("message", 3, "m3"),
            ("herald.reset", None, None),
            ("message", 1, "n1"), ("message", 2, "n2"), ("message", 3, "n3")]
        assert s.events[3].json() == {"type": "reset", "topic": "lost.t", "reason": "epoch",
                                      "next_seq": 1}
        assert [ev.json()["epoch"] for ev in s.events[4:]] == [new[0]["epoch"]] * 3
        assert not s.closed and not probe.closed


def test_fast_broker_restart_loses_no_tail_message(broker_factory, edge_factory):
    # A broker back before --broker-down-after never looks down; its PUB drops what it commits
    # before the edge's SUB reconnects. The new process's heartbeat instance triggers a backfill,
    # so the last message arrives even though nothing follows it.
    br = broker_factory("--heartbeat-interval", "100")
    e = edge_factory(br, "--broker-down-after", "3000")
    e.publish("fast.t", b"m0")
    with e.sse("fast.t", params={"last_event_id": "earliest"}) as s:
        s.wait_messages(1)
        for k in range(5):
            br.kill()
            br.start()
            with br.client() as c:
                c.publish("fast.t", f"after-restart-{k}".encode())
            s.wait_messages(2 + k, 5)
        assert [m.data for m in s.messages()] == \
            ["m0"] + [f"after-restart-{k}" for k in range(5)]
