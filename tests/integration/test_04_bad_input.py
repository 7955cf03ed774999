"""04 bad input: each gets a clear error, nothing stored is lost, and the broker keeps serving.

One broker serves the whole module. A ledger of messages is published first; after every test an
autouse check fetches the ledger back (bytes intact) and publishes + fetches a fresh message.
"""

import json
import random
import time
import warnings

import pytest
import zmq

from conftest import (Broker, fetch_request, free_port, pb, publish_message,
                      publish_request, run_broker_binary, run_cli)

MAX_DATA = 65536
MAX_REQUEST = 262144


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("bad-input"),
               ["--max-data-bytes", str(MAX_DATA), "--max-request-bytes", str(MAX_REQUEST)])
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def ledger(shared):
    """Messages stored before any bad input: {topic: [data, ...]} (seq = index + 1)."""
    rng = random.Random(4)
    want = {}
    with shared.client() as c:
        for i in range(30):
            topic = f"ledger.t{i % 3}"
            data = rng.randbytes(rng.randrange(0, 2000))
            r = c.publish(topic, data)
            want.setdefault(topic, []).append(data)
            assert r.seq == len(want[topic])
    return want


@pytest.fixture(autouse=True)
def still_serving(shared, ledger):
    yield
    assert shared.alive(), f"broker died:\n{shared.stderr_text()}"
    with shared.client() as c:
        for topic, datas in ledger.items():
            _, last, msgs = c.fetch_all(topic)
            assert [m.data for m in msgs] == datas, f"{topic}: stored data changed"
            assert last == len(datas)
        marker = f"alive {time.monotonic_ns()}".encode()
        r = c.publish("health.check", marker)
        fr = c.fetch("health.check", after_seq=r.seq - 1)
        assert [(m.seq, m.data) for m in fr.messages] == [(r.seq, marker)]


@pytest.fixture
def c(shared):
    with shared.client() as client:
        yield client


def herald(shared, *args, input=None):
    return run_cli(["--broker", shared.listen, "--timeout", "5000", *args], input=input)


# ---- frames and protobuf --------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"\xff" * 16,                      # a varint longer than 10 bytes
    b"\x0f",                           # wire type 7 does not exist
    b"\x52\x05ab",                     # publish (field 10) says 5 bytes, has 2
    b"\x08",                           # a tag with no value
    b"\x08\x01\x52\xff\xff\xff\x0f",  # version 1, then a publish of about 4 GiB
], ids=["long-varint", "wire-type-7", "truncated-field", "tag-only", "huge-length"])
def test_malformed_protobuf(c, raw):
    c.send_frames([b"", raw])
    reply = c.recv_raw_reply()
    assert reply.WhichOneof("body") == "error"
    assert reply.error.code == "malformed_message"
    assert reply.error.message != ""
    assert reply.request_id == 0
    assert reply.version == 1


def random_invalid_requests(n=30, seed=1234):
    """Seeded random byte strings that are not a valid Request (Python's parser agrees)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        raw = rng.randbytes(rng.randrange(1, 80))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "unexpected end-group tag" is only a warning
                pb.Request.FromString(raw)
        except Exception:
            out.append(raw)
    return out


def test_malformed_random_bytes(c):
    for raw in random_invalid_requests():
        c.send_frames([b"", raw])
        reply = c.recv_raw_reply()
        assert reply.WhichOneof("body") == "error", raw.hex()
        assert reply.error.code == "malformed_message", (raw.hex(), reply.error)
        assert reply.request_id == 0


PUB_BYTES = publish_request([publish_message("frames.t", b"x")]).SerializeToString()


@pytest.mark.parametrize("frames", [
    [PUB_BYTES],                           # no delimiter: 1 frame
    [b"", PUB_BYTES, b"extra"],            # 3 frames
    [b"", b"", PUB_BYTES],                 # 3 frames, 2 delimiters
    [b"", PUB_BYTES, b"a", b"b", b"c"],    # 5 frames
    [b"not-empty", PUB_BYTES],             # a non-empty delimiter
], ids=["1-frame", "3-frames", "double-delimiter", "5-frames", "non-empty-delimiter"])
def test_wrong_number_of_frames(c, frames):
    c.send_frames(frames)
    reply = c.recv_raw_reply()
    assert reply.WhichOneof("body") == "error"
    assert reply.error.code == "invalid_request"
    assert "frame" in reply.error.message
    # nothing was published by the misframed request
    fr = c.fetch("frames.t")
    assert len(fr.messages) == 0


def test_req_socket_framing_works(shared):
    ctx = zmq.Context.instance()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(shared.listen)
    try:
        r = pb.Request(version=1, request_id=77)
        r.heartbeat.version = 1
        req.send(r.SerializeToString())
        assert req.poll(5000), "no reply to a REQ socket"
        reply = pb.Reply.FromString(req.recv())
        assert reply.request_id == 77
        assert reply.WhichOneof("body") == "heartbeat"
    finally:
        req.close(linger=0)


def test_request_without_body(c):
    err_reply = c.call(pb.Request(version=1, request_id=4242))
    assert err_reply.request_id == 4242
    assert err_reply.WhichOneof("body") == "error"
    assert err_reply.error.code == "invalid_request"


def test_request_with_only_an_unknown_field(c):
    # field 99, varint 1: tag (99 << 3 | 0) = 792 = 0x98 0x06
    raw = pb.Request(version=1, request_id=4343).SerializeToString() + b"\x98\x06\x01"
    c.send_frames([b"", raw])
    reply = c.recv_raw_reply()
    assert reply.request_id == 4343
    assert reply.WhichOneof("body") == "error"
    assert reply.error.code == "invalid_request"


def test_protocol_version_from_the_future(c):
    req = publish_request([publish_message("future.t", b"x")], version=2)
    req.request_id = 9001
    reply = c.call(req)
    assert reply.request_id == 9001
    assert reply.WhichOneof("body") == "error"
    assert reply.error.code == "unsupported_version"
    assert reply.version == 1
    assert len(c.fetch("future.t").messages) == 0


def test_version_0_reads_as_1(c):
    req = publish_request([publish_message("version0.t", b"x")], version=0)
    reply = c.call(req)
    assert reply.WhichOneof("body") == "publish"
    assert reply.publish.results[0].seq == 1


# ---- topics, events, sizes ------------------------------------------------------------------

BAD_TOPICS = {
    "empty": b"",
    "256-bytes": b"t" * 256,
    "slash": b"a/b",
    "space": b"a b",
    "non-ascii": "caf\u00e9".encode(),
    "nul": b"a\x00b",
}


@pytest.mark.parametrize("topic", BAD_TOPICS.values(), ids=BAD_TOPICS.keys())
def test_invalid_topic(c, topic):
    err = c.call_error(publish_request([publish_message(topic, b"x")]))
    assert err.code == "invalid_topic"
    assert err.message != ""
    err = c.call_error(fetch_request(topic))
    assert err.code == "invalid_topic"


def test_topic_error_names_the_byte(c):
    err = c.call_error(publish_request([publish_message("ab/c", b"x")]))
    assert err.message == "message 0: byte 0x2f ('/') at offset 2 is not allowed"
    err = c.call_error(publish_request([publish_message("t" * 256, b"x")]))
    assert err.message == "message 0: topic is 256 bytes; the limit is 255"


def test_topic_of_255_bytes_is_accepted(c):
    topic = ("A-z_0.9:@" * 30)[:255]
    assert len(topic) == 255
    r = c.publish(topic, b"long name")
    assert r.seq == 1
    _, _, msgs = c.fetch_all(topic)
    assert [(m.topic, m.data) for m in msgs] == [(topic.encode(), b"long name")]


@pytest.mark.parametrize("event", [b"herald.x", b"herald.reset", b"e" * 65, b"has space",
                                   b"line\nbreak"],
                         ids=["herald.x", "herald.reset", "65-bytes", "space", "newline"])
def test_bad_event_type(c, event):
    err = c.call_error(publish_request([publish_message("events.t", b"x", event=event)]))
    assert err.code == "invalid_request"
    assert len(c.fetch("events.t").messages) == 0


def test_allowed_event_types(c):
    assert c.publish("events.ok", b"x", event=b"heraldic").seq == 1
    assert c.publish("events.ok", b"x", event=b"e" * 64).seq == 2


def test_data_over_the_limit(c):
    err = c.call_error(publish_request([publish_message("size.t", b"z" * (MAX_DATA + 1))]))
    assert err.code == "payload_too_large"
    assert c.publish("size.t", b"z" * MAX_DATA).seq == 1


def test_request_frame_over_the_limit(c):
    # 5 messages within the data limit, together over --max-request-bytes
    msgs = [publish_message("reqsize.t", bytes([i]) * 60000) for i in range(5)]
    req = publish_request(msgs)
    req.request_id = 555
    raw = req.SerializeToString()
    assert len(raw) > MAX_REQUEST
    c.send_frames([b"", raw])
    reply = c.recv_raw_reply()
    assert reply.WhichOneof("body") == "error"
    assert reply.error.code == "payload_too_large"
    assert reply.error.message == f"request is {len(raw)} bytes; the limit is {MAX_REQUEST}"
    # refused before it is decoded, yet its request_id is read from its leading fields
    assert reply.request_id == 555
    assert len(c.fetch("reqsize.t").messages) == 0
    # the same messages in requests under the limit go through
    assert [r.seq for r in c.publish_batch(msgs[:4])] == [1, 2, 3, 4]


def test_huge_frame_is_dropped_by_zeromq(shared):
    # Far over the limit (> 4 x --max-request-bytes) ZeroMQ itself drops the frame and the
    # connection (ZMQ_MAXMSGSIZE) instead of buffering it: no reply, and the broker serves on.
    with shared.client() as c:
        c.send_frames([b"", b"\x00" * (3 * 1024 * 1024)])
        assert not c.sock.poll(1000), "a 3 MiB frame reached the broker"
    with shared.client() as c:
        assert c.heartbeat().node_id == 0


# ---- fetch positions ------------------------------------------------------------------------

def test_fetch_from_a_future_position(c):
    for i in range(3):
        c.publish("cursor.t", f"m{i}".encode())
    err = c.call_error(fetch_request("cursor.t", after_seq=4))
    assert err.code == "invalid_cursor"
    # the last seq itself is a valid position: nothing after it
    fr = c.fetch("cursor.t", after_seq=3)
    assert len(fr.messages) == 0 and fr.last_seq == 3
    # a topic that was never published: any position > 0 is from the future
    err = c.call_error(fetch_request("cursor.never", after_seq=1))
    assert err.code == "invalid_cursor"


def test_fetch_with_a_wrong_epoch_resets(c):
    r = None
    for i in range(3):
        r = c.publish("epoch.t", f"m{i}".encode())
    wrong = r.epoch ^ 0x5A5A5A5A5A5A5A5A
    fr = c.fetch("epoch.t", after_seq=2, epoch=wrong)
    assert fr.HasField("reset")
    assert fr.reset.reason == pb.Reset.EPOCH
    assert fr.reset.next_seq == 1
    assert fr.epoch == r.epoch
    assert [(m.seq, m.data) for m in fr.messages] == [(1, b"m0"), (2, b"m1"), (3, b"m2")]
    # the right epoch is honoured as given
    fr = c.fetch("epoch.t", after_seq=2, epoch=r.epoch)
    assert not fr.HasField("reset")
    assert [m.seq for m in fr.messages] == [3]


# ---- the CLI's cursor handling --------------------------------------------------------------

def test_cli_after_garbage_is_a_usage_error(shared):
    rc, out, err = herald(shared, "fetch", "ledger.t0", "--after", "garbage")
    assert rc == 2
    assert out == ""
    assert "--after" in err and "'garbage'" in err and "invalid_cursor" in err


def test_cli_after_negative_is_a_usage_error(shared):
    rc, out, err = herald(shared, "fetch", "ledger.t0", "--after", "-5")
    assert rc == 2
    assert out == ""
    assert "--after" in err and "'-5'" in err and "cursor" in err


def test_cli_after_an_edited_cursor_is_a_usage_error(shared):
    rc, out, _ = herald(shared, "publish", "cli.edited", "x")
    assert rc == 0
    ident = out.strip()
    # change one character: the cursor's check no longer matches
    edited = ident[:-3] + ("B" if ident[-3] != "B" else "C") + ident[-2:]
    rc, out, err = herald(shared, "fetch", "cli.edited", "--after", edited)
    assert rc == 2
    assert out == ""
    assert f"'{edited}'" in err and "invalid_cursor" in err
    # truncated
    rc, _, err = herald(shared, "fetch", "cli.edited", "--after", ident[:10])
    assert rc == 2 and "invalid_cursor" in err


def test_cli_cursor_of_another_topic_means_new_messages_only(shared):
    rc, out, _ = herald(shared, "publish", "cli.cursor.a", "a1")
    assert rc == 0
    assert herald(shared, "publish", "cli.cursor.b", "b1")[0] == 0
    # DESIGN.md: a topic missing from the cursor starts as if no cursor were given
    rc, out2, err = herald(shared, "fetch", "cli.cursor.b", "--after", out.strip())
    assert (rc, out2, err) == (0, "", "")


def test_cli_after_a_future_seq_is_refused(shared):
    for i in range(2):
        assert herald(shared, "publish", "cli.future", f"m{i}")[0] == 0
    rc, out, err = herald(shared, "fetch", "cli.future", "--after", "99")
    assert rc == 1
    assert out == ""
    assert "invalid_cursor" in err and "99" in err


def test_cli_cursor_from_another_epoch_resets(shared, broker_factory):
    ids = []
    for i in range(3):
        rc, out, err = herald(shared, "publish", "cli.epoch", f"old{i}")
        assert rc == 0, err
        ids.append(out.strip())
    # the log is lost: a broker on a fresh data dir recreates the topic with a new epoch
    fresh = broker_factory()
    rc, _, err = run_cli(["--broker", fresh.listen, "publish", "cli.epoch", "new"])
    assert rc == 0, err
    rc, out, err = run_cli(["--broker", fresh.listen, "fetch", "cli.epoch", "--after", ids[2]])
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert lines[0] == {"type": "reset", "topic": "cli.epoch", "reason": "epoch", "next_seq": 1}
    assert (lines[1]["seq"], lines[1]["data"]) == (1, "new")


# ---- storage limits and unusable data directories --------------------------------------------

def test_map_full_then_restart_with_a_bigger_map(broker_factory):
    b = broker_factory("--map-size", "2M")
    acked = {"full.a": [], "full.b": []}
    full_error = None
    with b.client() as c:
        for i in range(3000):
            topic = "full.a" if i % 2 == 0 else "full.b"
            data = (f"{i}:".encode() + bytes([i % 251]) * 4096)[:4096]
            reply = c.call(publish_request([publish_message(topic, data)]))
            if reply.WhichOneof("body") == "error":
                full_error = reply.error
                break
            assert reply.publish.results[0].seq == len(acked[topic]) + 1
            acked[topic].append(data)
        assert full_error is not None, "2 MiB map never filled with 3000 x 4 KiB"
        assert full_error.code == "storage_full"
        assert sum(map(len, acked.values())) > 50
        # reads keep working, and nothing acknowledged is lost
        for topic, datas in acked.items():
            _, last, msgs = c.fetch_all(topic)
            assert [m.data for m in msgs] == datas
        # a small message may or may not fit; a big one still gets storage_full, not a crash
        err = c.call_error(publish_request([publish_message("full.a", b"q" * 60000)]))
        assert err.code == "storage_full"
        assert c.stats().errors["storage_full"] >= 2
        assert c.heartbeat().node_id == 0
    b.terminate()
    b.restart(["--map-size", "64M"])
    with b.client() as c:
        for topic, datas in acked.items():
            _, last, msgs = c.fetch_all(topic)
            assert [m.data for m in msgs] == datas
            r = c.publish(topic, b"after growing the map")
            assert r.seq == last + 1
        assert c.publish("full.new", b"y" * 60000).seq == 1


def test_map_full_under_pipelined_load(broker_factory):
    # Requests sharing a group commit that does not fit are retried one by one: each gets its
    # own answer, every acknowledged message is stored, and the log has no gap.
    b = broker_factory("--map-size", "2M")
    acked = {}
    full = 0
    with b.client() as c:
        for round_ in range(10):
            inflight = {}
            for i in range(100):
                topic = f"pfull.t{i % 4}"
                data = f"{round_}.{i}:".encode() + b"p" * 4000
                inflight[c.send(publish_request([publish_message(topic, data)]))] = (topic, data)
            for rid, reply in c.recv_replies(list(inflight)).items():
                topic, data = inflight[rid]
                if reply.WhichOneof("body") == "error":
                    assert reply.error.code == "storage_full"
                    full += 1
                else:
                    seq = reply.publish.results[0].seq
                    assert (topic, seq) not in acked
                    acked[(topic, seq)] = data
            if full:
                break
        assert full > 0, "the 2 MiB map never filled"
        assert len(acked) > 50
        for t in range(4):
            topic = f"pfull.t{t}"
            _, last, msgs = c.fetch_all(topic)
            assert [m.seq for m in msgs] == list(range(1, last + 1))
            assert {(topic, m.seq): m.data for m in msgs} == \
                {k: v for k, v in acked.items() if k[0] == topic}


def broker_args(data_dir):
    return ["--listen", f"tcp://127.0.0.1:{free_port()}",
            "--live", f"tcp://127.0.0.1:{free_port()}", "--data-dir", str(data_dir)]


def test_data_dir_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_bytes(b"not a directory\n")
    data_dir = tmp_path / "file" / "data"
    t0 = time.monotonic()
    rc, _, err = run_broker_binary(broker_args(data_dir))
    assert time.monotonic() - t0 < 5
    assert rc == 1
    assert str(data_dir) in err
    assert "Not a directory" in err


def test_data_dir_with_a_garbage_data_mdb(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    garbage = random.Random(1).randbytes(65536)
    (data_dir / "data.mdb").write_bytes(garbage)
    t0 = time.monotonic()
    rc, _, err = run_broker_binary(broker_args(data_dir))
    assert time.monotonic() - t0 < 5
    assert rc == 1
    assert str(data_dir) in err
    assert "corrupt" in err
    # the broker never overwrites what it does not understand
    assert (data_dir / "data.mdb").read_bytes() == garbage


def test_data_dir_that_is_a_file(tmp_path):
    data_dir = tmp_path / "plainfile"
    data_dir.write_bytes(b"x")
    rc, _, err = run_broker_binary(broker_args(data_dir))
    assert rc == 1
    assert str(data_dir) in err
    assert (data_dir).read_bytes() == b"x"


def test_second_broker_on_the_same_data_dir_is_refused(broker):
    # one broker per data directory: a second one's live stream would miss the first's commits
    with broker.client() as c:
        c.publish("lock.t", b"first")
    rc, _, err = run_broker_binary(broker_args(broker.data_dir))
    assert rc == 1
    assert "another herald-broker is using this data directory" in err
    with broker.client() as c:
        assert c.publish("lock.t", b"second").seq == 2
