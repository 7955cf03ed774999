"""40 the cluster (DESIGN.md §Cluster): three brokers split the partitions, each topic lives on
its owner only; a publish sent over ZeroMQ to any broker is forwarded to the owner and its ids
are right; the CLI follows not_owner; a forwarded request is never forwarded again. The bad
inputs: a broker restarted against its data with another --node-id, --partitions or broker
count refuses to start; brokers that disagree about the broker list, a node id or P refuse
publishes and fetches (misconfigured) until the odd one is fixed; two brokers with swapped
lists cannot loop; edges given unreachable brokers. And one broker's clock a day off (faketime):
ids do not depend on clocks."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import (CLI_BIN, Client, closed_endpoint, cursor_position, end_process,
                      fetch_request, make_cursor, partition_of, publish_message,
                      publish_request, run_broker_binary, run_cli, track)

P = 12


def one_topic_per_partition(c, prefix):
    """A topic name for each partition 0..P-1, in partition order."""
    out = {}
    for k in range(100000):
        t = f"{prefix}.{k}"
        out.setdefault(partition_of(t, c.partitions), t)
        if len(out) == c.partitions:
            return [out[p] for p in range(c.partitions)]
    raise AssertionError("not every partition has a topic")


def error_of(reply):
    assert reply.WhichOneof("body") == "error", f"expected an error reply, got {reply}"
    return reply.error


def cli_json(args, timeout=20.0):
    rc, out, err = run_cli(args, timeout=timeout)
    assert rc == 0, (args, rc, out, err)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_until(pred, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(interval)


# ---- partitioning and forwarding ----------------------------------------------------------------

def test_topics_land_on_their_owner(cluster):
    c = cluster(3, P)
    topics = one_topic_per_partition(c, "own")
    # publish every topic through every broker in turn: the non-owners forward
    clients = [b.client() for b in c]
    try:
        for k in range(3):
            for i, t in enumerate(topics):
                r = clients[(i + k) % 3].publish(t, f"{t}-{k}".encode())
                assert r.seq == k + 1 and not r.duplicate, (t, k, r)
        for t in topics:
            owner = c.owner_index(t)
            for i, cl in enumerate(clients):
                reply = cl.call(fetch_request(t))
                if i == owner:
                    fr = reply.fetch
                    assert [(m.seq, m.data.decode()) for m in fr.messages] == \
                        [(k + 1, f"{t}-{k}") for k in range(3)]
                    assert fr.last_seq == 3
                else:
                    err = error_of(reply)
                    assert err.code == "not_owner", err
                    assert err.owner == c.endpoints[owner], (err, c.endpoints)
                    assert f"owned by broker {owner}" in err.message, err.message
                    assert f"partition {partition_of(t, P)} " in err.message, err.message
    finally:
        for cl in clients:
            cl.close()
    # herald stats per broker: each holds exactly the topics of its partitions
    for i, b in enumerate(c):
        mine = [t for t in topics if c.owner_index(t) == i]
        assert len(mine) == P // 3
        rc, out, err = run_cli(["stats", "--broker", b.listen])
        assert rc == 0, err
        stats = json.loads(out)
        assert stats["node_id"] == i
        assert stats["topics"] == len(mine), (i, stats)
        assert stats["messages_appended"] == 3 * len(mine), (i, stats)


def test_publish_through_any_broker_is_forwarded_with_the_right_ids(cluster):
    c = cluster(3, P)
    topics = [t for owner in range(3) for t in c.topics(f"fwd{owner}", 3, owner=owner)]
    # pipelined: every broker gets publishes for every topic, many in flight at once
    clients = [b.client() for b in c]
    sent = {}  # (client index, request id) -> (topic, data)
    try:
        for n in range(20):
            for i, t in enumerate(topics):
                k = (n + i) % 3
                data = f"{t}/{n}"
                req = publish_request([publish_message(t, data)])
                req.request_id = (1 << 62) + n * 100 + i  # echoed unchanged through a forward
                sent[(k, clients[k].send(req))] = (t, data)
        acked = {t: [] for t in topics}
        for k, cl in enumerate(clients):
            ids = [rid for (kk, rid) in sent if kk == k]
            replies = cl.recv_replies(ids, timeout=30)
            for rid, reply in replies.items():
                assert reply.request_id == rid
                assert reply.WhichOneof("body") == "publish", reply
                t, data = sent[(k, rid)]
                res = reply.publish.results[0]
                acked[t].append((res.seq, res.epoch, data))
    finally:
        for cl in clients:
            cl.close()
    for t in topics:
        owner = c.owner(t)
        with owner.client() as oc:
            epoch, last, stored = oc.fetch_all(t)
        # seqs 1..20 with no gap or repeat, one epoch, and each ack names what is stored there
        assert sorted(s for s, _, _ in acked[t]) == list(range(1, 21)), t
        assert {e for _, e, _ in acked[t]} == {epoch}
        assert {s: d for s, _, d in acked[t]} == {m.seq: m.data.decode() for m in stored}
        assert last == 20

    # a batch for one owner, sent to another broker: one commit there, forwarded whole
    t2 = c.topics("batch", 2, owner=2)
    with c[0].client() as cl:
        before = c[2].client().stats().batches
        res = cl.publish_batch([publish_message(t2[0], "x1"), publish_message(t2[1], "y1"),
                                publish_message(t2[0], "x2")])
        assert [r.seq for r in res] == [1, 1, 2]
        with c[2].client() as c2:
            assert c2.stats().batches == before + 1
        # a batch whose topics belong to different brokers is refused whole: nothing stored
        t0 = c.topics("batch", 1, owner=0)[0]
        err = cl.call_error(publish_request([publish_message(t0, "a"),
                                             publish_message(t2[0], "b")]))
        assert err.code == "invalid_request" and "split it by partition owner" in err.message, err
    with c[0].client() as c0:
        assert c0.fetch(t0).last_seq == 0
    with c[2].client() as c2:
        assert c2.fetch(t2[0]).last_seq == 2

    # the id the CLI prints for a forwarded publish is the owner's one-topic cursor
    t = c.topics("cliid", 1, owner=1)[0]
    first = cli_json(["publish", "--broker", c[2].listen, t, "one", "--json"])[0]
    second = cli_json(["publish", "--broker", c[0].listen, t, "two", "--json"])[0]
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["id"] == make_cursor({t: (second["epoch"], 2)})
    assert cursor_position(first["id"], t) == (int(first["epoch"], 16), 1)
    # and continues right after it, read through yet another broker
    rest = cli_json(["fetch", "--broker", c[2].listen, t, "--after", first["id"]])
    assert [(m["seq"], m["data"], m["id"]) for m in rest] == [(2, "two", second["id"])]


def test_cli_fetch_and_tail_through_a_non_owner_follow_to_the_owner(cluster):
    c = cluster(3, P)
    t = c.topics("follow", 1, owner=2)[0]
    ids = [cli_json(["publish", "--broker", c[0].listen, t, f"m{i}", "--json"])[0]["id"]
           for i in range(1, 6)]
    for via in (0, 1):
        got = cli_json(["fetch", "--broker", c[via].listen, t])
        assert [(m["seq"], m["data"], m["id"]) for m in got] == \
            [(i, f"m{i}", ids[i - 1]) for i in range(1, 6)]
        got = cli_json(["fetch", "--broker", c[via].listen, t, "--after", ids[2], "--limit", "1"])
        assert [m["data"] for m in got] == ["m4"]

    # tail through broker 1 reads the owner's live stream
    proc = track(subprocess.Popen([str(CLI_BIN), "--broker", c[1].listen, "tail", t, "--count",
                                   "3"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE))
    try:
        ready = threading.Event()
        err_lines = []

        def read_stderr():
            for line in proc.stderr:
                err_lines.append(line.decode())
                if b"tailing" in line:
                    ready.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        assert ready.wait(10), f"no 'tailing' line from herald tail: {err_lines}"
        time.sleep(0.2)  # a ZeroMQ subscription takes a moment to reach the publisher
        with c[0].client() as cl:
            for i in range(6, 9):
                cl.publish(t, f"m{i}".encode())
        assert proc.wait(timeout=10) == 0, err_lines
        out = proc.stdout.read().decode()
    finally:
        end_process(proc)
    assert [(m["seq"], m["data"]) for m in map(json.loads, out.splitlines())] == \
        [(6, "m6"), (7, "m7"), (8, "m8")]


def test_forwarded_request_is_never_forwarded_again(cluster):
    c = cluster(3, P)
    t = c.topics("loop", 1, owner=1)[0]
    with Client(c[0].listen) as raw:
        # what a broker sends when it forwards: Request.forwarded set
        req = publish_request([publish_message(t, "looped")])
        req.forwarded = True
        err = raw.call_error(req)
        assert err.code == "not_owner", err
        assert err.owner == c.endpoints[1]
        req = fetch_request(t)
        req.forwarded = True
        assert raw.call_error(req).code == "not_owner"
        assert raw.stats().errors["not_owner"] == 2
    with c[1].client() as owner:
        assert owner.fetch(t).last_seq == 0  # nothing stored anywhere
        assert owner.stats().messages_appended == 0
        # a forwarded request that reaches the owner is simply served
        req = publish_request([publish_message(t, "direct")])
        req.forwarded = True
        assert owner.call_ok(req, "publish").results[0].seq == 1


def test_forward_to_an_owner_that_is_down_or_silent(cluster):
    c = cluster(3, P, "--forward-timeout", "1000")
    t = c.topics("gone", 1, owner=2)[0]
    # the owner is dead: broker 0 knows it (no Hello answered) and refuses at once
    c.kill(2)
    with c[0].client() as cl:
        t0 = time.monotonic()
        err = cl.call_error(publish_request([publish_message(t, "while-dead")]))
        assert err.code == "unavailable", err
        assert f"broker 2 ({c.endpoints[2]})" in err.message and "cannot be reached" in \
            err.message, err.message
        assert time.monotonic() - t0 < 0.5
    c.restart(2)
    # the owner is alive but silent (SIGSTOP) before broker 0 notices: the forward times out,
    # the client is told `unavailable`, and the owner commits it once it runs again — which a
    # retry with the same idempotency key finds instead of appending again
    with c[2].client() as cl:
        assert cl.publish(t, b"first").seq == 1
    os.kill(c[2].proc.pid, signal.SIGSTOP)
    try:
        with c[0].client() as cl:
            t0 = time.monotonic()
            err = cl.call_error(publish_request([publish_message(t, "while-silent",
                                                                 idempotency_key="k1")]))
            took = time.monotonic() - t0
            assert err.code == "unavailable", err
            assert "did not answer in time" in err.message or "cannot be reached" in \
                err.message, err.message
            assert took < 3, took
    finally:
        os.kill(c[2].proc.pid, signal.SIGCONT)
    c.wait_peers()
    with c[0].client() as cl:
        again = wait_until(lambda: (lambda r: r if r.WhichOneof("body") == "publish" else None)(
            cl.call(publish_request([publish_message(t, "while-silent", idempotency_key="k1")]))),
            10, "the retry to be accepted")
        res = again.publish.results[0]
    with c[2].client() as cl:
        _, last, stored = cl.fetch_all(t)
    assert [m.data for m in stored].count(b"while-silent") == 1
    assert res.seq == stored[-1].seq == last == 2
    # whether the timed-out forward had committed first or not, there is one copy; when it had,
    # the retry says so
    assert res.duplicate == (err.message.find("did not answer in time") >= 0)


# ---- configurations that disagree ---------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"node_id": 2}, "this broker was started as node 2 of 3 with --partitions 12"),
    ({"partitions": 13}, "this broker was started as node 1 of 3 with --partitions 13"),
    ({"endpoints": "four"}, "this broker was started as node 1 of 4 with --partitions 12"),
])
def test_restart_against_its_data_with_another_identity_refuses_to_start(cluster, change,
                                                                          message):
    c = cluster(3, P)
    t = c.topics("ident", 1, owner=1)[0]
    with c[0].client() as cl:
        for i in range(3):
            cl.publish(t, f"m{i}".encode())
    assert c.kill(1, signal.SIGTERM) == 0
    if change.get("endpoints") == "four":
        change = {"endpoints": c.endpoints + [closed_endpoint()]}
    b = c[1]
    argv = ["--listen", b.listen_bind, "--live", b.live_bind, "--data-dir", str(b.data_dir),
            *c.args(1, **change)]
    rc, out, err = run_broker_binary(argv)
    assert rc == 1, (rc, out, err)
    assert f"the data in {b.data_dir} belongs to node 1 of a 3-broker cluster with 12 " \
           f"partitions" in err, err
    assert message in err, err
    assert "--node-id" in err and "--partitions" in err and "--cluster" in err, err
    # nothing was changed: started as it was, it serves its log and the count goes on
    b.start()
    c.wait_peers()
    with c[2].client() as cl:
        assert cl.publish(t, b"m3").seq == 4
    with b.client() as cl:
        assert [m.data for m in cl.fetch_all(t)[2]] == [b"m0", b"m1", b"m2", b"m3"]


def misconfigured_reply(client, req):
    reply = client.call(req)
    if reply.WhichOneof("body") != "error" or reply.error.code != "misconfigured":
        return None
    return reply.error


@pytest.mark.parametrize("kind", ["broker_list", "node_id", "partitions"])
def test_brokers_that_disagree_refuse_requests_until_fixed(cluster, edge_factory, tmp_path,
                                                           kind):
    c = cluster(3, P)
    e = edge_factory(c.brokers, "--broker-down-after", "1000", "--request-timeout", "2000")
    c.wait_edge(e)
    topics = [c.topics(f"agree{owner}", 1, owner=owner)[0] for owner in range(3)]
    for t in topics:
        assert e.publish(t, b"before")["seq"] == 1

    # broker 2 comes back with a configuration its peers disagree with
    b = c[2]
    c.kill(2, edges=[e])
    if kind == "broker_list":
        # same length (its log accepts it), broker 1's entry wrong
        b.extra_args = c.args(2, endpoints=[c.endpoints[0], closed_endpoint(), c.endpoints[2]])
        problem = "was started with a different --cluster"
    elif kind == "node_id":
        # a fresh data dir (its own would refuse the id), node id 1 at position 2
        b.data_dir = tmp_path / "fresh-data"
        b.extra_args = c.args(2, node_id=1)
        problem = "says it is node 1: every broker's --node-id must be its position in --cluster"
    else:
        b.data_dir = tmp_path / "fresh-data"
        b.extra_args = c.args(2, partitions=P + 1)
        problem = "has --partitions"
    original_data = c.workdir / "node2" / "data"
    b.start()
    for x in c:
        wait_until(lambda x=x: "event=cluster_misconfigured" in x.stderr_text(), 10,
                   "the consistency check")
    before = {}
    for i in range(3):
        with c[i].client() as cl:
            before[i] = cl.stats().messages_appended

    # every broker refuses publishes and fetches of every topic, naming the problem
    clients = [x.client() for x in c]
    try:
        for i, cl in enumerate(clients):
            err = wait_until(lambda cl=cl: misconfigured_reply(
                cl, publish_request([publish_message(topics[i], "during")])), 10,
                f"misconfigured from broker {i}")
            assert "refuses requests until the cluster agrees" in err.message, err.message
            for t in topics:
                for req in (publish_request([publish_message(t, "during")]), fetch_request(t)):
                    err = error_of(cl.call(req))
                    assert err.code == "misconfigured", (i, t, err)
                    if i != 2:
                        # names the odd broker by its place and its endpoint
                        assert re.search(r"broker 2 (of --cluster )?\(" +
                                         re.escape(c.endpoints[2]) + r"\)", err.message), \
                            err.message
                        assert problem in err.message, err.message
        assert problem in c[0].stderr_text() and "event=cluster_misconfigured" in \
            c[0].stderr_text()
        # through the edge: 503 with Retry-After, the broker's reason in the message
        r = e.post(f"/v1/topics/{topics[0]}/messages", data=b"during")
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable" and int(r.headers["Retry-After"]) >= 1
        assert "cluster agrees" in r.json()["error"]["message"], r.json()
        r = e.get(f"/v1/topics/{topics[1]}/messages")
        assert r.status_code == 503, r.text
        for i, cl in enumerate(clients):
            assert cl.stats().messages_appended == before[i], "a refused publish was stored"
    finally:
        for cl in clients:
            cl.close()

    # fixed: broker 2 restarted with its own data and the right flags; serving resumes
    c.kill(2, edges=[e])
    b.data_dir = original_data
    b.extra_args = c.args(2)
    b.start()
    c.wait_peers()
    for x in c[:2]:
        wait_until(lambda x=x: "event=cluster_consistent" in x.stderr_text(), 10,
                   "the cluster agreeing again")
    for i in range(3):
        with c[i].client() as cl:
            wait_until(lambda cl=cl: cl.call(fetch_request(topics[i])).WhichOneof("body")
                       == "fetch", 10, f"broker {i} serving again")
    c.wait_edge(e)
    for t in topics:
        assert e.publish(t, b"after")["seq"] == 2
    with c[1].client() as cl:
        for t in topics:
            assert cl.publish(t, b"zmq").seq == 3
    for t in topics:
        with c.owner(t).client() as cl:
            assert [m.data for m in cl.fetch_all(t)[2]] == [b"before", b"after", b"zmq"]


def test_two_brokers_with_swapped_lists_cannot_loop(cluster):
    # A says [A, B] and is node 0; B says [B, A] and is node 0 too: for half the partitions
    # each thinks the other owns them (a forward loop, were forwards re-forwarded), for the
    # other half each thinks it owns them itself (two logs for one topic)
    c = cluster(2, P, start=False)
    a, b = c[0], c[1]
    a.extra_args = c.args(0, endpoints=[a.listen, b.listen])
    b.extra_args = c.args(0, node_id=0, endpoints=[b.listen, a.listen])
    a.start()
    b.start()
    for x in (a, b):
        wait_until(lambda x=x: "event=cluster_misconfigured" in x.stderr_text(), 10,
                   "the consistency check")
    other_half = c.topics("swap.odd", 2, owner=1)   # each thinks the other owns these
    own_half = c.topics("swap.even", 2, owner=0)    # each thinks it owns these
    for x in (a, b):
        with x.client() as cl:
            for t in other_half + own_half:
                t0 = time.monotonic()
                err = cl.call_error(publish_request([publish_message(t, "x")]), timeout=5)
                assert err.code == "misconfigured", err
                assert "says it is node 0" in err.message, err.message
                assert time.monotonic() - t0 < 2, "the refusal took a forward timeout"
            st = cl.stats()
            assert st.messages_appended == 0 and st.topics == 0
            assert st.errors["misconfigured"] == 4
            assert "not_owner" not in st.errors and "unavailable" not in st.errors


# ---- edges and unreachable brokers --------------------------------------------------------------

def test_edge_with_an_unreachable_broker_among_good_ones(cluster, edge_factory):
    c = cluster(3, P)
    dead = closed_endpoint()
    for brokers in ([dead, c[1].listen], [c[0].listen, dead, c[2].listen]):
        e = edge_factory(",".join(brokers), "--broker-down-after", "1000")
        body = c.wait_edge(e)
        assert [x["endpoint"] for x in body["brokers"]] == c.endpoints  # the dead one is gone
        topics = [c.topics(f"good{len(brokers)}.{o}", 1, owner=o)[0] for o in range(3)]
        with e.sse(topics, params={"last_event_id": "earliest", "format": "json"}) as s:
            for i in range(1, 4):
                for t in topics:
                    assert e.publish(t, f"{t}-{i}".encode())["seq"] == i
            s.wait_messages(9)
            s.drain(0.3)
            got = [ev.json() for ev in s.messages()]
        for t in topics:
            assert [m["data"] for m in got if m["topic"] == t] == [f"{t}-{i}" for i in (1, 2, 3)]
        assert e.get("/readyz").json()["unavailable_partitions"] == []
        e.kill()


def test_edge_with_no_reachable_broker_starts_and_serves_once_one_appears(cluster,
                                                                           edge_factory):
    c = cluster(3, P, start=False)  # ports chosen, nobody listening yet
    e = edge_factory(c[1].listen, "--broker-down-after", "1000", ready=False)
    r = e.get("/readyz")
    assert r.status_code == 503 and r.json()["ready"] is False, r.text
    t = c.topics("late", 1, owner=2)[0]
    r = e.post(f"/v1/topics/{t}/messages", data=b"x")
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
    assert int(r.headers["Retry-After"]) >= 1
    with e.sse(t, params={"last_event_id": "earliest"}) as s:
        assert s.status == 200
        time.sleep(0.5)
        assert e.get("/readyz").status_code == 503
        c.start()
        body = c.wait_edge(e, timeout=15)
        assert body["ready"] is True and len(body["brokers"]) == 3
        sent = [e.publish(t, f"m{i}".encode()) for i in range(1, 4)]
        assert [r["seq"] for r in sent] == [1, 2, 3]
        s.wait_messages(3)
        assert [m.data for m in s.messages()] == ["m1", "m2", "m3"]
    for o in range(3):
        t = c.topics("late.all", 1, owner=o)[0]
        assert e.publish(t, b"y")["seq"] == 1


# ---- clocks -------------------------------------------------------------------------------------

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime_env(offset):
    """The environment of a process whose wall clock is `offset` ("-1d", "+1d") away from the
    machine's; the monotonic clock is left alone, as an NTP step leaves it."""
    env = dict(os.environ, LD_PRELOAD=str(LIBFAKETIME), FAKETIME=offset,
               FAKETIME_DONT_FAKE_MONOTONIC="1")
    # an ASan build wants its runtime first; libfaketime in front of it is harmless here
    env["ASAN_OPTIONS"] = ":".join(filter(None, [os.environ.get("ASAN_OPTIONS", ""),
                                                 "verify_asan_link_order=0"]))
    return env


@pytest.mark.skipif(not LIBFAKETIME.exists(), reason="faketime is not installed "
                    "(scripts/deps.sh test)")
def test_ids_do_not_depend_on_a_brokers_clock(cluster, edge_factory):
    c = cluster(3, P, start=False)
    fake = c[1]
    fake.env = faketime_env("-1d")
    c.start()
    a = edge_factory(c.brokers, "--broker-down-after", "1000", name="a")
    b = edge_factory(c.brokers, "--broker-down-after", "1000", name="b")
    for e in (a, b):
        c.wait_edge(e)
    t = c.topics("clock", 1, owner=1)[0]
    day = 86400 * 1000
    acks = []  # (seq, time) of every publish, in order

    def publish_some(n, offset_days):
        for i in range(n):
            k = len(acks)
            if i % 2 == 0:
                r = a.publish(t, f"m{k}".encode())
                seq = r["seq"]
            else:
                with c[0].client() as cl:  # forwarded to the node with the odd clock
                    seq = cl.publish(t, f"m{k}".encode()).seq
            acks.append(seq)
        with c[1].client() as cl:
            last = cl.fetch_all(t)[2][-1]
        now = time.time() * 1000
        assert abs(last.time_ms - (now + offset_days * day)) < 60 * 1000, \
            (last.time_ms, now, offset_days)  # the broker's clock is off as intended

    publish_some(6, -1)
    with a.sse(t, params={"last_event_id": "earliest", "format": "json"}) as s:
        got = s.wait_messages(6)
        cursor = got[3].last_event_id  # after m3
    # the clock jumps two days ahead, then three days back (behind every stored time)
    for offset, days in (("+1d", 1), ("-2d", -2)):
        fake.env = faketime_env(offset)
        c.restart(1, edges=[a, b])
        publish_some(4, days)
    # and back to the machine's clock
    fake.env = None
    c.restart(1, edges=[a, b])
    publish_some(2, 0)
    n = len(acks)
    assert acks == list(range(1, n + 1))  # strictly increasing by one, whatever the clocks said
    with fake.client() as cl:
        _, last, stored = cl.fetch_all(t)
    assert last == n and [m.seq for m in stored] == list(range(1, n + 1))
    assert [m.data.decode() for m in stored] == [f"m{k}" for k in range(n)]
    times = [m.time_ms for m in stored]
    assert times != sorted(times)  # the clock did go backwards between them
    # resuming from a cursor taken under the old clock: exactly the rest, on the other edge
    with b.sse(t, params={"format": "json"}, headers={"Last-Event-ID": cursor}) as s:
        s.wait_messages(n - 4)
        s.drain(0.3)
        assert [ev.json()["seq"] for ev in s.messages()] == list(range(5, n + 1))
    r = b.poll(t, cursor=cursor, wait=0, limit=1000)
    assert [m["seq"] for m in r.json()["messages"]] == list(range(5, n + 1))
    # and the broker's live path still follows on (a new message after the jumps)
    with a.sse(t, headers={"Last-Event-ID": s.messages()[-1].last_event_id},
               params={"format": "json"}) as live:
        with c[2].client() as cl:
            assert cl.publish(t, b"last").seq == n + 1
        assert live.wait_messages(1)[0].json()["seq"] == n + 1
