"""22 one cursor everywhere (DESIGN.md invariants 3-5, §Client contract): a client reads three
topics over Server-Sent Events on edge A, goes on with long polling on edge B, then with HTTP
streaming on edge C — each time from the cursor the previous transport gave it — while messages
keep being published through all three edges, and sees every message exactly once, in order.
Then the other way round, with each transport's own way of resending a cursor (stream id ->
SSE Last-Event-ID -> poll If-None-Match -> stream cursor=)."""

import random
import threading
import time

from conftest import cursor_position, make_cursor, parse_cursor

TOPICS = ["switch.a", "switch.b", "switch.c"]


class Publisher(threading.Thread):
    """Publishes <topic>-<i> for i = 1..per_topic on every topic, in a shuffled topic order,
    through the edges in turn, with uneven pauses; `acked` per topic, in commit order."""

    def __init__(self, edges, topics, per_topic, seed):
        super().__init__(daemon=True)
        self.edges, self.topics, self.per_topic = edges, topics, per_topic
        self.rnd = random.Random(seed)
        self.acked = {t: [] for t in topics}
        self.error = None
        self.progress = 0

    def run(self):
        try:
            for i in range(1, self.per_topic + 1):
                order = self.topics[:]
                self.rnd.shuffle(order)
                if self.rnd.random() < 0.3:  # sometimes one batch for all three
                    edge = self.rnd.choice(self.edges)
                    body = edge.publish_batch([{"topic": t, "data": f"{t}-{i}"} for t in order])
                    for t, m in zip(order, body["messages"]):
                        self.acked[t].append((m["seq"], f"{t}-{i}"))
                else:
                    for t in order:
                        r = self.rnd.choice(self.edges).publish(t, f"{t}-{i}".encode())
                        self.acked[t].append((r["seq"], f"{t}-{i}"))
                self.progress = i
                time.sleep(self.rnd.choice([0, 0.005, 0.02, 0.03, 0.05, 0.06]))
        except Exception as e:  # noqa: BLE001  (reported by the test)
            self.error = e


def check_exactly_once(received, per_topic, start_seq):
    """`received`: (topic, seq, data) in arrival order over all transports."""
    for t in TOPICS:
        mine = [(seq, data) for topic, seq, data in received if topic == t]
        first = start_seq[t] + 1
        assert [s for s, _ in mine] == list(range(first, first + per_topic)), t
        assert [d for _, d in mine] == [f"{t}-{i}" for i in range(1, per_topic + 1)], t


def start_cursor(edge):
    """Publish one message to each topic; the cursor right after them (so the client starts
    exactly there, with no race against "from now")."""
    body = edge.publish_batch([{"topic": t, "data": "start"} for t in TOPICS])
    with_all = {}
    for t, m in zip(TOPICS, body["messages"]):
        with_all[t] = (m["epoch"], m["seq"])
    return make_cursor(with_all), {t: m["seq"] for t, m in zip(TOPICS, body["messages"])}


def test_sse_then_long_polling_then_streaming_on_three_edges(broker, edge_factory):
    a, b, c = (edge_factory(broker, name=n) for n in "abc")
    per_topic = 60
    cursor, start_seq = start_cursor(a)
    pub = Publisher([a, b, c], TOPICS, per_topic, seed=22)
    received = []  # (topic, seq, data, transport)
    pub.start()
    try:
        # 1. Server-Sent Events on edge A, format=json (one stream, three topics)
        with a.sse(TOPICS, params={"format": "json", "last_event_id": cursor}) as s:
            s.wait_messages(40, timeout=30)
            s.close()
            events = s.messages()
        for ev in events:
            m = ev.json()
            assert m["id"] == ev.last_event_id
            received.append((m["topic"], m["seq"], m["data"], "sse"))
        cursor = events[-1].last_event_id  # what EventSource would resend
        n_sse = len(events)
        switches = [pub.progress]

        # 2. long polling on edge B from the SSE id, small pages
        polls = 0
        deadline = time.monotonic() + 30
        while len(received) < 110:
            assert time.monotonic() < deadline, len(received)
            r = b.poll(TOPICS, cursor=cursor, wait=1, limit=17)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["reset"] == []
            for m in body["messages"]:
                received.append((m["topic"], m["seq"], m["data"], "poll"))
            cursor = body["cursor"]
            polls += 1
        n_poll = len(received) - n_sse
        switches.append(pub.progress)

        # 3. HTTP streaming on edge C from the poll cursor, until everything has come
        with c.stream(TOPICS, params={"cursor": cursor}) as st:
            st.wait(lambda x: len(received) + len(x.messages()) >= 3 * per_topic, 30,
                    "every message")
            st.drain(0.3)  # and nothing more (no duplicate)
            for m in st.messages():
                received.append((m["topic"], m["seq"], m["data"], "stream"))
            assert [o["type"] for o in st.events] == ["message"] * len(st.messages())
    finally:
        pub.join(timeout=60)
    assert pub.error is None, pub.error
    assert not pub.is_alive()
    check_exactly_once([(t, s, d) for t, s, d, _ in received], per_topic, start_seq)
    # the publisher was still going when the client switched
    assert switches[0] < switches[1] < per_topic, switches
    # published acks agree with what the client saw
    for t in TOPICS:
        assert [d for _, d in sorted(pub.acked[t])] == [f"{t}-{i}" for i in range(1, per_topic + 1)]
    print(f"sse {n_sse}, poll {n_poll} in {polls} polls, stream {len(received) - n_sse - n_poll}")


def test_stream_then_sse_then_conditional_polls_then_stream(broker, edge_factory):
    a, b, c = (edge_factory(broker, name=n) for n in "abc")
    per_topic = 40
    cursor, start_seq = start_cursor(c)
    pub = Publisher([c, b, a], TOPICS, per_topic, seed=2222)
    received = []
    pub.start()
    try:
        # 1. streaming on A; the id of the last line is the cursor
        with a.stream(TOPICS, params={"cursor": cursor}) as st:
            st.wait_messages(25, timeout=30)
            st.close()
            lines = st.messages()
        received += [(m["topic"], m["seq"], m["data"]) for m in lines]
        cursor = lines[-1]["id"]

        # 2. SSE on B, the cursor resent as Last-Event-ID (what a browser does on reconnect)
        with b.sse(TOPICS, params={"format": "json"}, headers={"Last-Event-ID": cursor}) as s:
            s.wait_messages(25, timeout=30)
            s.close()
            events = s.messages()
        received += [(ev.json()["topic"], ev.json()["seq"], ev.json()["data"]) for ev in events]
        cursor = events[-1].last_event_id

        # 3. conditional long polls on C: the cursor travels as If-None-Match / ETag only
        etag = f'W/"{cursor}"'
        deadline = time.monotonic() + 30
        not_modified = 0
        while len(received) < 3 * per_topic - 20:
            assert time.monotonic() < deadline, len(received)
            r = c.poll(TOPICS, wait=0.3, limit=11, headers={"If-None-Match": etag})
            if r.status_code == 304:
                not_modified += 1
                assert r.headers["ETag"] == etag
                continue
            assert r.status_code == 200, r.text
            body = r.json()
            received += [(m["topic"], m["seq"], m["data"]) for m in body["messages"]]
            etag = r.headers["ETag"]
            assert etag == f'W/"{body["cursor"]}"'

        # 4. streaming again, on A, from the last ETag's cursor
        with a.stream(TOPICS, params={"cursor": etag[3:-1]}) as st:
            st.wait(lambda x: len(received) + len(x.messages()) >= 3 * per_topic, 30,
                    "every message")
            st.drain(0.3)
            received += [(m["topic"], m["seq"], m["data"]) for m in st.messages()]
            final = st.messages()[-1]["id"] if st.messages() else etag[3:-1]
    finally:
        pub.join(timeout=60)
    assert pub.error is None, pub.error
    check_exactly_once(received, per_topic, start_seq)
    # the final cursor records every topic's last message
    for t in TOPICS:
        assert cursor_position(final, t)[1] == start_seq[t] + per_topic
    assert len(parse_cursor(final)) == 3
    print(f"{not_modified} polls answered 304")
