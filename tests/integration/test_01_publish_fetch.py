"""01 publish and fetch: concurrent pipelined publishers, per-topic seq assignment with no gap,
bytes intact, per-publisher order, epochs; batches spanning topics; idempotency keys."""

import hashlib
import os
import threading
import time

import zmq

from conftest import Client, publish_message, publish_request

N_PUBLISHERS = 8
N_MESSAGES = 10_000
N_TOPICS = 100
WINDOW = 200  # requests in flight per publisher


def payload(pub, counter):
    """Publisher `pub`'s message number `counter`: a text header then 0-199 binary bytes."""
    head = f"{pub}:{counter}:".encode()
    body = hashlib.sha256(head).digest() * 7
    return head + body[: (pub * 31 + counter * 17) % 200]


def parse_payload(data):
    pub, counter, _ = data.split(b":", 2)
    return int(pub), int(counter)


def topic_of(pub, counter):
    return f"load.t{(counter * 7 + pub * 13) % N_TOPICS:03d}"


def run_publisher(endpoint, pub, count, acks, errors):
    """Publish `count` messages with at most WINDOW requests in flight; record every ack as
    (topic, data) -> (seq, epoch)."""
    with Client(endpoint) as c:
        sent = 0
        inflight = {}  # request_id -> (topic, data)
        deadline = time.monotonic() + 120
        try:
            while sent < count or inflight:
                assert time.monotonic() < deadline, f"publisher {pub} ran out of time"
                while sent < count and len(inflight) < WINDOW:
                    topic = topic_of(pub, sent)
                    data = payload(pub, sent)
                    rid = c.send(publish_request([publish_message(topic, data)]))
                    inflight[rid] = (topic, data)
                    sent += 1
                reply = c.recv_raw_reply(timeout=10)
                topic, data = inflight.pop(reply.request_id)
                assert reply.WhichOneof("body") == "publish", str(reply)
                assert len(reply.publish.results) == 1
                r = reply.publish.results[0]
                assert not r.duplicate
                acks[(topic, data)] = (r.seq, r.epoch)
        except BaseException as e:  # reported by the main thread
            errors.append(f"publisher {pub}: {e!r}")


def test_concurrent_publishers_then_fetch_every_topic(broker, client):
    per_pub = N_MESSAGES // N_PUBLISHERS
    acks = {}
    errors = []
    threads = [threading.Thread(target=run_publisher,
                                args=(broker.listen, p, per_pub, acks, errors))
               for p in range(N_PUBLISHERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
        assert not t.is_alive(), "publisher thread hung"
    assert errors == []
    assert len(acks) == N_MESSAGES

    expected_by_topic = {}
    for (topic, data), (seq, epoch) in acks.items():
        expected_by_topic.setdefault(topic, {})[seq] = (data, epoch)
    assert len(expected_by_topic) == N_TOPICS

    total = 0
    for topic, expected in sorted(expected_by_topic.items()):
        epoch, last_seq, msgs = client.fetch_all(topic)
        n = len(expected)
        assert epoch != 0
        assert last_seq == n
        assert [m.seq for m in msgs] == list(range(1, n + 1)), f"gap or disorder in {topic}"
        epochs = {e for _, e in expected.values()}
        assert epochs == {epoch}, f"{topic}: acks carry epochs {epochs}, fetch says {epoch:x}"
        last_counter = {}
        for m in msgs:
            assert m.topic == topic.encode()
            assert m.epoch == epoch
            assert m.data == expected[m.seq][0], f"{topic} seq {m.seq}: bytes differ from ack"
            assert m.time_ms > 0
            pub, counter = parse_payload(m.data)
            assert counter > last_counter.get(pub, -1), f"{topic}: publisher {pub} reordered"
            last_counter[pub] = counter
        total += n
    assert total == N_MESSAGES

    st = client.stats()
    assert st.messages_appended == N_MESSAGES
    assert st.topics == N_TOPICS
    assert st.duplicates == 0


def test_batch_spanning_topics_gets_one_result_per_message_in_order(client):
    client.publish("batch.b", b"pre-existing")  # b already has seq 1
    topics = ["batch.a", "batch.b", "batch.a", "batch.c", "batch.b", "batch.a"]
    msgs = [publish_message(t, f"{t}#{i}".encode()) for i, t in enumerate(topics)]
    results = client.publish_batch(msgs)
    assert len(results) == len(topics)
    assert [r.seq for r in results] == [1, 2, 2, 1, 3, 3]
    assert all(not r.duplicate for r in results)
    epochs = {}
    for t, r in zip(topics, results):
        assert r.epoch != 0
        assert epochs.setdefault(t, r.epoch) == r.epoch
    assert len(set(epochs.values())) == 3
    # one commit: one publish time for the whole batch
    assert len({r.time_ms for r in results}) == 1

    for t in ["batch.a", "batch.b", "batch.c"]:
        epoch, last, got = client.fetch_all(t)
        assert epoch == epochs[t]
        want = [(r.seq, f"{t}#{i}".encode()) for i, (tt, r) in enumerate(zip(topics, results))
                if tt == t]
        if t == "batch.b":
            want = [(1, b"pre-existing")] + want
        assert [(m.seq, m.data) for m in got] == want
        assert last == len(want)


def test_empty_batch_is_refused(client):
    err = client.call_error(publish_request([]))
    assert err.code == "invalid_request"
    fr = client.fetch("nothing.here")
    assert (fr.epoch, fr.first_seq, fr.last_seq, len(fr.messages)) == (0, 1, 0, 0)


def test_batch_with_one_bad_message_stores_nothing(client):
    client.publish("atomic.a", b"one")
    err = client.call_error(publish_request([publish_message("atomic.a", b"two"),
                                             publish_message("bad topic", b"three")]))
    assert err.code == "invalid_topic"
    assert "message 1" in err.message
    _, last, msgs = client.fetch_all("atomic.a")
    assert last == 1
    assert [m.data for m in msgs] == [b"one"]
    assert client.publish("atomic.a", b"two").seq == 2


def test_idempotency_key_repeat_returns_original(client):
    first = client.publish("idem.t", b"payload", idempotency_key=b"order-42")
    assert (first.seq, first.duplicate) == (1, False)
    time.sleep(0.01)
    again = client.publish("idem.t", b"payload", idempotency_key=b"order-42")
    assert again.seq == first.seq
    assert again.epoch == first.epoch
    assert again.time_ms == first.time_ms
    assert again.duplicate is True
    # even with different data, the key wins: nothing is appended
    other = client.publish("idem.t", b"different", idempotency_key=b"order-42")
    assert (other.seq, other.duplicate) == (1, True)

    _, last, msgs = client.fetch_all("idem.t")
    assert last == 1
    assert [(m.seq, m.data) for m in msgs] == [(1, b"payload")]

    # keys are per topic: the same key on another topic is a new message
    elsewhere = client.publish("idem.other", b"x", idempotency_key=b"order-42")
    assert (elsewhere.seq, elsewhere.duplicate) == (1, False)
    # a new key, and no key, append
    assert client.publish("idem.t", b"next", idempotency_key=b"order-43").seq == 2
    assert client.publish("idem.t", b"nokey").seq == 3

    # a key repeated inside one batch: the second is a duplicate of the first
    res = client.publish_batch([publish_message("idem.t", b"b1", idempotency_key=b"k-batch"),
                                publish_message("idem.t", b"b2", idempotency_key=b"k-batch")])
    assert [(r.seq, r.duplicate) for r in res] == [(4, False), (4, True)]

    _, last, msgs = client.fetch_all("idem.t")
    assert [(m.seq, m.data) for m in msgs] == [(1, b"payload"), (2, b"next"), (3, b"nokey"),
                                              (4, b"b1")]
    st = client.stats()
    assert st.duplicates == 3
    assert st.messages_appended == 5


def test_fetch_paging_limit_and_max_bytes(client):
    for i in range(25):
        client.publish("page.t", bytes([i]) * 100)
    fr = client.fetch("page.t", after_seq=0, limit=10)
    assert [m.seq for m in fr.messages] == list(range(1, 11))
    assert (fr.first_seq, fr.last_seq) == (1, 25)
    fr = client.fetch("page.t", after_seq=10, limit=10)
    assert [m.seq for m in fr.messages] == list(range(11, 21))
    fr = client.fetch("page.t", after_seq=20, limit=10)
    assert [m.seq for m in fr.messages] == list(range(21, 26))
    fr = client.fetch("page.t", after_seq=25)
    assert len(fr.messages) == 0 and fr.last_seq == 25 and not fr.HasField("reset")
    # max_bytes: 250 bytes allow the first message plus one more (100 + 100 <= 250)
    fr = client.fetch("page.t", after_seq=0, max_bytes=250)
    assert [m.seq for m in fr.messages] == [1, 2]
    # the first message is always delivered, even over max_bytes
    fr = client.fetch("page.t", after_seq=3, max_bytes=1)
    assert [m.seq for m in fr.messages] == [4]
    assert fr.messages[0].data == bytes([3]) * 100


def test_live_stream_carries_committed_messages(broker, client, herald_pb2):
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"live.t")
    sub.setsockopt(zmq.SUBSCRIBE, b"\x00hb")
    sub.connect(broker.live)
    try:
        # wait for a heartbeat: then the subscription is in place
        deadline = time.monotonic() + 5
        hb = None
        while time.monotonic() < deadline and hb is None:
            if sub.poll(200):
                frames = sub.recv_multipart()
                if frames[0] == b"\x00hb":
                    hb = herald_pb2.Heartbeat.FromString(frames[1])
        assert hb is not None, "no heartbeat on the PUB socket within 5 s"
        assert hb.version == 1 and hb.node_id == 0 and hb.time_ms > 0

        r1 = client.publish("live.t", b"one", event=b"greeting", content_type=b"text/plain")
        r2 = client.publish("live.t", b"\xff\x00two")
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(got) < 2:
            if sub.poll(200):
                frames = sub.recv_multipart()
                if frames[0] != b"\x00hb":
                    assert len(frames) == 2
                    assert frames[0] == b"live.t"
                    got.append(herald_pb2.Message.FromString(frames[1]))
        assert [(m.topic, m.seq, m.epoch, m.data, m.time_ms) for m in got] == [
            (b"live.t", 1, r1.epoch, b"one", r1.time_ms),
            (b"live.t", 2, r2.epoch, b"\xff\x00two", r2.time_ms)]
        assert (got[0].event, got[0].content_type) == (b"greeting", b"text/plain")
    finally:
        sub.close(linger=0)


def test_hello_describes_the_broker(broker, client, herald_pb2):
    req = herald_pb2.Request(version=1)
    req.hello.version = 1
    req.hello.client = "test"
    hello = client.call_ok(req, "hello")
    assert hello.version == 1
    assert hello.node_id == 0
    assert list(hello.cluster) == [broker.listen]
    assert hello.live_endpoint == broker.live
    assert hello.partitions == 64


def test_hello_advertises_dialable_endpoints(broker_factory, herald_pb2):
    # bound on every interface: the hello reply must name endpoints a peer can dial
    b = broker_factory("--advertise", "127.0.0.1", bind_host="*")
    assert b.listen_bind.startswith("tcp://*:")
    with b.client() as c:
        req = herald_pb2.Request(version=1)
        req.hello.version = 1
        hello = c.call_ok(req, "hello")
    assert list(hello.cluster) == [b.listen]
    assert hello.live_endpoint == b.live


def test_max_batch_bounds_group_commits_and_requests(broker_factory):
    b = broker_factory("--max-batch", "10")
    with b.client() as c:
        ids = [c.send(publish_request([publish_message(f"mb.t{i % 3}", b"x")]))
               for i in range(300)]
        replies = c.recv_replies(ids)
        assert all(r.WhichOneof("body") == "publish" for r in replies.values())
        st = c.stats()
        assert st.messages_appended == 300
        assert st.batch_messages_max <= 10
        assert sum(st.batch_size_buckets) == st.batches
        # a request is atomic and never split, so one bigger than --max-batch is refused whole
        res = c.publish_batch([publish_message("mb.big", str(i).encode()) for i in range(10)])
        assert [r.seq for r in res] == list(range(1, 11))
        err = c.call_error(publish_request(
            [publish_message("mb.big", str(i).encode()) for i in range(11)]))
        assert err.code == "payload_too_large"
        assert "at most 10 messages" in err.message
        assert c.fetch("mb.big").last_seq == 10


def test_many_tiny_messages_cannot_blow_up_decoding(broker_factory):
    # 16 MiB of minimal messages would unpack into over 1 GiB: refused by the decode budget
    b = broker_factory("--max-batch", "1000000")
    with b.client() as c:
        c.publish("tiny.keep", b"kept")
        msg = publish_message("t", b"")
        req = publish_request([msg] * 2_000_000)
        err = c.call_error(req, timeout=30)
        assert err.code == "payload_too_large"
        assert "to decode" in err.message
        assert [m.data for m in c.fetch("tiny.keep").messages] == [b"kept"]
        assert c.fetch("t").last_seq == 0


def test_fetch_limit_is_capped_at_10000(client):
    msgs = [publish_message("cap.t", b"") for _ in range(1000)]
    for _ in range(11):
        client.publish_batch(msgs)
    fr = client.fetch("cap.t", limit=20000)
    assert len(fr.messages) == 10000
    assert (fr.messages[0].seq, fr.messages[-1].seq, fr.last_seq) == (1, 10000, 11000)
    assert len(client.fetch("cap.t").messages) == 1000  # --fetch-limit default


def test_broker_options_read_their_environment_twins(broker_factory):
    env = dict(os.environ, HERALD_BROKER_MAX_DATA_BYTES="1K", HERALD_BROKER_FETCH_LIMIT="2")
    b = broker_factory(env=env)
    with b.client() as c:
        assert c.publish("env.t", b"a" * 1024).seq == 1
        err = c.call_error(publish_request([publish_message("env.t", b"a" * 1025)]))
        assert err.code == "payload_too_large"
        c.publish("env.t", b"b")
        c.publish("env.t", b"c")
        assert [m.seq for m in c.fetch("env.t").messages] == [1, 2]
    # the command line wins over the environment
    b2 = broker_factory("--max-data-bytes", "2K", env=env)
    with b2.client() as c:
        assert c.publish("env.t", b"a" * 2048).seq == 1
