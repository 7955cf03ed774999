"""08 retention and the dedupe window: trimmed history is signalled with a RETENTION reset,
seqs are never reused after trimming (even of everything, even across a restart), and an
idempotency key is forgotten after --dedupe-window."""

import json
import time

from conftest import pb, run_cli


def wait_first_seq(client, topic, want, timeout=5.0):
    """Poll until the topic's first retained seq reaches `want` (trimming is asynchronous)."""
    deadline = time.monotonic() + timeout
    fr = client.fetch(topic)
    while fr.first_seq < want and time.monotonic() < deadline:
        time.sleep(0.05)
        fr = client.fetch(topic)
    assert fr.first_seq == want, f"first_seq {fr.first_seq} after {timeout} s, want {want}"
    return fr


def test_retention_messages_trims_oldest_and_resets_old_positions(broker_factory):
    b = broker_factory("--retention-messages", "5", "--trim-interval", "20")
    with b.client() as c:
        epoch = None
        for i in range(1, 21):
            epoch = c.publish("ret.count", f"m{i}".encode()).epoch
        wait_first_seq(c, "ret.count", 16)

        # a position inside the trimmed range: reset RETENTION, delivery continues at 16
        fr = c.fetch("ret.count", after_seq=3)
        assert fr.reset.reason == pb.Reset.RETENTION
        assert fr.reset.next_seq == 16
        assert (fr.epoch, fr.first_seq, fr.last_seq) == (epoch, 16, 20)
        assert [(m.seq, m.data) for m in fr.messages] == [(i, f"m{i}".encode())
                                                         for i in range(16, 21)]
        # 14 -> 15 was trimmed too; 15 is exactly the position before the oldest retained
        assert c.fetch("ret.count", after_seq=14).reset.next_seq == 16
        fr = c.fetch("ret.count", after_seq=15)
        assert not fr.HasField("reset") and [m.seq for m in fr.messages] == [16, 17, 18, 19, 20]
        # 0 means "from the oldest retained": not a reset
        fr = c.fetch("ret.count", after_seq=0)
        assert not fr.HasField("reset") and fr.messages[0].seq == 16
        assert c.stats().messages_trimmed == 15
        assert c.publish("ret.count", b"m21").seq == 21


def test_cli_fetch_after_a_trimmed_position_prints_a_reset(broker_factory):
    b = broker_factory("--retention-messages", "2", "--trim-interval", "20")
    ids = []
    for i in range(5):
        rc, out, err = run_cli(["--broker", b.listen, "publish", "ret.cli", f"m{i}"])
        assert rc == 0, err
        ids.append(out.strip())
    with b.client() as c:
        wait_first_seq(c, "ret.cli", 4)
    rc, out, err = run_cli(["--broker", b.listen, "fetch", "ret.cli", "--after", ids[0]])
    assert (rc, err) == (0, "")
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0] == {"type": "reset", "topic": "ret.cli", "reason": "retention",
                        "next_seq": 4}
    assert [(m["seq"], m["data"], m["id"]) for m in lines[1:]] == [(4, "m3", ids[3]),
                                                                  (5, "m4", ids[4])]


def test_seq_never_reused_after_everything_is_trimmed(broker_factory):
    b = broker_factory("--retention-age", "1", "--trim-interval", "50")
    with b.client() as c:
        first = [c.publish("ret.age", f"m{i}".encode()) for i in range(3)]
        fr = wait_first_seq(c, "ret.age", 4, timeout=6)
        assert (fr.epoch, fr.last_seq, len(fr.messages)) == (first[0].epoch, 3, 0)
        assert c.publish("ret.age", b"m3").seq == 4
    b.terminate()
    b.restart()
    with b.client() as c:
        r = c.publish("ret.age", b"m4")
        assert (r.seq, r.epoch) == (5, first[0].epoch)


def test_idempotency_key_is_forgotten_after_the_window(broker_factory):
    b = broker_factory("--dedupe-window", "1", "--trim-interval", "50")
    with b.client() as c:
        r1 = c.publish("dedupe.t", b"a", idempotency_key=b"k")
        r2 = c.publish("dedupe.t", b"a", idempotency_key=b"k")
        assert (r1.seq, r1.duplicate, r2.seq, r2.duplicate) == (1, False, 1, True)
        time.sleep(1.5)
        r3 = c.publish("dedupe.t", b"a", idempotency_key=b"k")
        assert (r3.seq, r3.duplicate) == (2, False)
        r4 = c.publish("dedupe.t", b"a", idempotency_key=b"k")
        assert (r4.seq, r4.duplicate) == (2, True)
