"""02 crash and restart: every acknowledged message survives SIGKILL and SIGTERM with its exact
bytes; seqs continue after a restart (never reused); epochs do not change."""

import random
import signal
import threading
import time

from conftest import Client, publish_message, publish_request

N_PUBLISHERS = 4
N_TOPICS = 20
WINDOW = 100
KILL_CYCLES = 3


class Load:
    """Pipelined publishers running until stop(); acks[(topic, seq)] = (data, epoch)."""

    def __init__(self, endpoint, cycle):
        self.endpoint = endpoint
        self.cycle = cycle
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.acks = {}
        self.sent = {}  # data -> topic, for every message sent (acked or not)
        self.errors = []
        self.threads = [threading.Thread(target=self._run, args=(p,))
                        for p in range(N_PUBLISHERS)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)
            assert not t.is_alive(), "publisher thread hung"
        assert self.errors == []

    def _run(self, pub):
        rng = random.Random(pub * 1000 + self.cycle)
        c = Client(self.endpoint)
        inflight = {}
        counter = 0
        try:
            # Send until told to stop, then drain: replies already received by ZeroMQ's I/O
            # thread before a crash are real acknowledgements and must be counted.
            deadline = time.monotonic() + 60
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                while len(inflight) < WINDOW:
                    topic = f"crash.t{rng.randrange(N_TOPICS):02d}"
                    data = (f"c{self.cycle}p{pub}n{counter}:".encode()
                            + rng.randbytes(rng.randrange(0, 300)))
                    counter += 1
                    rid = c.send(publish_request([publish_message(topic, data)]))
                    inflight[rid] = (topic, data)
                    with self.lock:
                        self.sent[data] = topic
                if c.sock.poll(100):
                    self._take(c.recv_raw_reply(1.0), inflight)
            while inflight and c.sock.poll(300):
                self._take(c.recv_raw_reply(1.0), inflight)
        except BaseException as e:
            self.errors.append(f"publisher {pub}: {e!r}")
        finally:
            c.close()  # linger 0: nothing queued reaches the restarted broker

    def _take(self, reply, inflight):
        topic, data = inflight.pop(reply.request_id)
        assert reply.WhichOneof("body") == "publish", str(reply)
        r = reply.publish.results[0]
        with self.lock:
            assert (topic, r.seq) not in self.acks, f"seq {r.seq} of {topic} acked twice"
            self.acks[(topic, r.seq)] = (data, r.epoch)


def verify_after_restart(client, acked, sent, epochs):
    """Every acked message is present with its bytes; the log has no gap; next seq = last + 1;
    epochs unchanged. Returns the probe acks (which then count as acked too)."""
    topics = sorted({t for t, _ in acked})
    probes = {}
    for topic in topics:
        epoch, last, msgs = client.fetch_all(topic)
        assert epoch == epochs[topic], f"{topic}: epoch changed across the restart"
        assert [m.seq for m in msgs] == list(range(1, last + 1)), f"{topic}: gap in the log"
        by_seq = {m.seq: m.data for m in msgs}
        for (t, seq), (data, ack_epoch) in acked.items():
            if t != topic:
                continue
            assert ack_epoch == epoch
            assert seq in by_seq, f"acknowledged {topic} seq {seq} lost"
            assert by_seq[seq] == data, f"acknowledged {topic} seq {seq}: bytes differ"
        # a committed-but-unacknowledged message may exist; it must be one that was sent
        for m in msgs:
            assert m.data in sent and sent[m.data] == topic, f"{topic} seq {m.seq}: unknown data"
        max_acked = max(seq for t, seq in acked if t == topic)
        assert last >= max_acked
        probe = f"probe {topic} after {last}".encode()
        r = client.publish(topic, probe)
        assert r.seq == last + 1, f"{topic}: seq {r.seq} after restart, want {last + 1}"
        assert r.epoch == epoch
        probes[(topic, r.seq)] = (probe, r.epoch)
        sent[probe] = topic
    return probes


def test_sigkill_during_load_loses_no_acknowledged_message(broker):
    rng = random.Random(2024)
    acked = {}
    sent = {}
    epochs = {}
    for cycle in range(KILL_CYCLES):
        load = Load(broker.listen, cycle)
        load.start()
        time.sleep(rng.uniform(0.3, 1.0))
        status = broker.kill(signal.SIGKILL)
        assert status == -signal.SIGKILL
        load.stop()
        assert len(load.acks) > 0, f"cycle {cycle}: nothing was acknowledged before the kill"
        for (topic, seq), (data, epoch) in load.acks.items():
            assert (topic, seq) not in acked, f"{topic} seq {seq} reused in cycle {cycle}"
            assert epochs.setdefault(topic, epoch) == epoch, f"{topic}: epoch changed"
        acked.update(load.acks)
        sent.update(load.sent)

        broker.restart()
        with broker.client() as c:
            acked.update(verify_after_restart(c, acked, sent, epochs))
    assert len(epochs) == N_TOPICS


def test_sigterm_during_load_exits_0_and_keeps_acknowledged(broker):
    load = Load(broker.listen, 0)
    load.start()
    time.sleep(0.5)
    broker.terminate()
    load.stop()
    assert len(load.acks) > 0
    assert "event=stopped" in broker.stderr_text()
    epochs = {}
    for (topic, _), (_, epoch) in load.acks.items():
        assert epochs.setdefault(topic, epoch) == epoch
    broker.restart()
    with broker.client() as c:
        verify_after_restart(c, load.acks, load.sent, epochs)
