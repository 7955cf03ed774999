"""23 polling and streaming under load (DESIGN.md invariants 3-5): 2,000 messages published at
an uneven rate — bursts of 100 (one batch commit, or 100 single publishes racing through both
edges), quiet gaps shorter and longer than a long poll's wait — reach, exactly once and in
order, 500 concurrent long-pollers on two edges, 100 regular (wait=0) pollers, and 200
concurrent HTTP streams. (Heavier load belongs in tests/bench.)"""

import asyncio
import concurrent.futures
import random
import threading
import time

import aiohttp

from conftest import AsyncPoller, AsyncStreamReader, make_cursor

N = 2000
BURST = 100


def publish_bursts(edges, topic, gaps, seed):
    """Publish m0..m1999 in 20 bursts of 100, alternately one batch commit and 100 single
    publishes from 4 threads through every edge (the broker commits them in groups), with
    `gaps[i]` s of quiet after burst i. Returns the data in commit (seq) order."""
    rnd = random.Random(seed)
    by_seq = {}
    lock = threading.Lock()
    pool = concurrent.futures.ThreadPoolExecutor(4)

    def single(i):
        edge = edges[i % len(edges)]
        r = edge.post(f"/v1/topics/{topic}/messages", data=f"m{i}".encode())
        assert r.status_code == 201, r.text
        with lock:
            by_seq[r.json()["seq"]] = f"m{i}"

    try:
        for k in range(N // BURST):
            first = k * BURST
            if k % 2 == 0:
                body = rnd.choice(edges).publish_batch(
                    [{"topic": topic, "data": f"m{i}"} for i in range(first, first + BURST)])
                for m in body["messages"]:
                    by_seq[m["seq"]] = f"m{m['seq'] - 2}"
            else:
                list(pool.map(single, range(first, first + BURST)))
            if k < len(gaps):
                time.sleep(gaps[k])
    finally:
        pool.shutdown(wait=True)
    return [by_seq[s] for s in sorted(by_seq)]


def gap_plan(long_gaps, seed):
    """19 quiet gaps: `long_gaps` of 1.5 s (longer than wait=1), the rest 0 to 0.3 s."""
    rnd = random.Random(seed)
    gaps = [rnd.choice([0, 0.05, 0.1, 0.2, 0.3]) for _ in range(N // BURST - 1)]
    for i in rnd.sample(range(len(gaps)), long_gaps):
        gaps[i] = 1.5
    return gaps


async def metric_sum(session, edges, name):
    total = 0
    for e in edges:
        async with session.get(e.url("/metrics")) as r:
            for line in (await r.text()).splitlines():
                if line.startswith(name + " "):
                    total += float(line.split()[1])
    return total


async def wait_metric_sum(session, edges, name, want, timeout=30):
    # Most clients in place is enough: they start from a cursor, so none can miss a message;
    # held long polls also come and go as their 1 s waits end, so the sum rarely sits at `want`.
    deadline = time.monotonic() + timeout
    while (got := await metric_sum(session, edges, name)) < want * 9 // 10:
        assert time.monotonic() < deadline, f"{name} = {got}, want {want}"
        await asyncio.sleep(0.05)


def run_load(edges, topic, clients, gaps, wait_for=None, deadline_s=90):
    """Start `clients` (AsyncPoller or AsyncStreamReader factories of a session), wait until
    `wait_for` = (metric, value) holds over the edges, publish, and wait for every client."""
    async def main():
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            subs = [make(session) for make in clients]
            deadline = time.monotonic() + deadline_s
            tasks = [asyncio.create_task(s.run(deadline)) for s in subs]
            if wait_for is not None:
                await wait_metric_sum(session, edges, *wait_for)
            t0 = time.monotonic()
            sent = await asyncio.get_running_loop().run_in_executor(
                None, publish_bursts, edges, topic, gaps, 23)
            published = time.monotonic() - t0
            await asyncio.wait_for(asyncio.gather(*tasks), deadline_s + 5)
            print(f"{len(subs)} clients: {N} messages published in {published:.1f} s, all "
                  f"delivered after {time.monotonic() - t0:.1f} s")
            return subs, sent

    return asyncio.run(main())


def data_of(m):
    return m["data"]


def test_500_long_pollers_on_two_edges(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topic = "load.poll"
    start = a.publish(topic, b"start")
    n = 500
    clients = [lambda s, i=i: AsyncPoller(s, [(a, b)[i % 2].base, (b, a)[i % 2].base], topic, N,
                                          cursor=start["id"], wait=1, keep=data_of)
               for i in range(n)]
    subs, sent = run_load([a, b], topic, clients, gap_plan(4, 1),
                          wait_for=("herald_edge_long_polls_held", n))
    assert sorted(int(d[1:]) for d in sent) == list(range(N))  # in commit order: seq 2..2001
    final = make_cursor({topic: (start["epoch"], N + 1)})
    for i, p in enumerate(subs):
        assert p.messages == sent, (i, len(p.messages), p.errors[:3])
        assert p.resets == [] and p.statuses == {200: p.requests}, (i, p.statuses, p.errors[:3])
        assert p.last_id == final and p.cursor == final
    requests_ = sum(p.requests for p in subs)
    empty = sum(p.empty for p in subs)
    print(f"{requests_} polls ({requests_ / n:.0f} per poller), {empty} timed out empty")
    # the quiet gaps were longer than the wait: long polls timed out and went on from their
    # cursors (how many depends on how fast this machine serves 500 pollers, so: some)
    assert empty > 0
    for e in (a, b):
        m = e.metrics()
        assert m["herald_edge_long_polls_held"] == 0
        assert m['herald_edge_connections{transport="poll"}'] == 0


def test_100_regular_pollers(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topic = "load.regular"
    start = a.publish(topic, b"start")
    n = 100
    clients = [lambda s, i=i: AsyncPoller(s, [(a, b)[i % 2].base, (b, a)[i % 2].base], topic, N,
                                          cursor=start["id"], wait=0, interval=0.1,
                                          keep=data_of)
               for i in range(n)]
    subs, sent = run_load([a, b], topic, clients, gap_plan(1, 2))
    assert sorted(int(d[1:]) for d in sent) == list(range(N))  # in commit order: seq 2..2001
    final = make_cursor({topic: (start["epoch"], N + 1)})
    for i, p in enumerate(subs):
        assert p.messages == sent, (i, len(p.messages), p.errors[:3])
        assert p.statuses == {200: p.requests} and p.last_id == final, (i, p.statuses)
    print(f"{sum(p.requests for p in subs)} polls, {sum(p.empty for p in subs)} empty")
    assert a.metrics()["herald_edge_long_polls_held"] == 0


def test_200_streams_on_two_edges(broker, edge_factory):
    a, b = edge_factory(broker, name="a"), edge_factory(broker, name="b")
    topic = "load.stream"
    start = a.publish(topic, b"start")
    n = 200
    clients = [lambda s, i=i: AsyncStreamReader(s, [(a, b)[i % 2].base], topic, N,
                                                cursor=start["id"], reconnect=False,
                                                keep=data_of)
               for i in range(n)]
    subs, sent = run_load([a, b], topic, clients, gap_plan(1, 3),
                          wait_for=('herald_edge_connections{transport="stream"}', n))
    assert sorted(int(d[1:]) for d in sent) == list(range(N))  # in commit order: seq 2..2001
    final = make_cursor({topic: (start["epoch"], N + 1)})
    for i, s in enumerate(subs):
        assert s.messages == sent, (i, len(s.messages), s.error)
        assert s.statuses == [200] and s.others == [] and s.cursor == final, (i, s.error)
    for e in (a, b):
        m = e.metrics()
        assert m["herald_edge_slow_client_disconnects_total"] == 0
        assert m['herald_edge_deliveries_total{transport="stream"}'] == N * n // 2
