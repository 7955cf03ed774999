"""24 a real browser long-polls and streams across an edge restart (DESIGN.md invariant 5):
chromium, driven by tests/browser/poll_stream_failover.mjs (node + playwright-core), opens
tests/browser/poll_stream.html from a page server on another origin than the edges (CORS). The
page runs a long-polling client (fetch() in a loop) and a streaming client (fetch() and a
ReadableStream reader of NDJSON) of one topic, through HAProxy in front of two edges. After 10
of 30 messages the edge both are on is SIGKILLed: both move to the other edge with their
cursors; after 20 it is started again, and the long poller moves back to it. Each client ends
with all 30 messages, once each, in order."""

import time

from conftest import BROWSER_DIR, BrowserRig, browser_marks

SCRIPT = BROWSER_DIR / "poll_stream_failover.mjs"
PAGE = BROWSER_DIR / "poll_stream.html"
TOPIC = "browser.ps"

pytestmark = browser_marks

POLLS = 'herald_edge_connections{transport="poll"}'
STREAMS = 'herald_edge_connections{transport="stream"}'


def wait_metric(edge, name, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while (got := edge.metrics()[name]) != value:
        assert time.monotonic() < deadline, f"{name} is {got}, want {value}"
        time.sleep(0.05)


def test_browser_long_polling_and_streaming_survive_an_edge_restart(broker, edge_factory,
                                                                    tmp_path):
    a = edge_factory(broker, name="a")
    b = edge_factory(broker, name="b")
    with BrowserRig(tmp_path, [a, b], PAGE, SCRIPT, "browser-poll-stream.png") as rig:
        start = b.publish(TOPIC, b"start")  # both clients start right after it
        node = rig.start(f"edge={rig.proxy}&topic={TOPIC}&cursor={start['id']}&wait=2",
                         "--report-at", "10,20", "--expect", "30", "--timeout-ms", "90000")
        node.expect("connected", 60)
        wait_metric(a, STREAMS, 1)  # HAProxy sends both to edge a while it is up
        wait_metric(a, POLLS, 1)
        assert (b.metrics()[STREAMS], b.metrics()[POLLS]) == (0, 0)
        sent = [b.publish(TOPIC, f"m{i}".encode()) for i in range(1, 11)]
        node.expect("reached", 30)

        a.kill()  # SIGKILL the edge both clients are on
        # committed before either client can be back: only a resume from its cursor brings them
        sent += [b.publish(TOPIC, f"m{i}".encode()) for i in range(11, 21)]
        node.expect("reached", 30)
        # both moved to b (the long poll counts only while a request is held: wait for it)
        wait_metric(b, STREAMS, 1)
        wait_metric(b, POLLS, 1)

        a.start()  # the edge comes back: the next long poll goes to it, the stream stays on b
        wait_metric(a, POLLS, 1, timeout=15)
        assert (a.metrics()[STREAMS], b.metrics()[STREAMS]) == (0, 1)
        sent += [b.publish(TOPIC, f"m{i}".encode()) for i in range(21, 31)]
        done = node.expect("done", 60)
        assert node.proc.wait(timeout=30) == 0

        want = [(TOPIC, f"m{i}", r["id"], r["seq"]) for i, r in enumerate(sent, 1)]
        for client in ("poll", "stream"):
            got = [(m["topic"], m["data"], m["id"], m["seq"]) for m in done[client]["received"]]
            assert got == want, (client, got)
            log = done[client]["log"]
            assert not any(line.startswith(("reset", "etag", "unknown")) for line in log), log
        # the stream broke once and reconnected once (the long poll that was held on the
        # killed edge was retried by the proxy or the browser, or failed and was repeated by
        # the page with the same cursor: either way it went on from its cursor)
        assert done["stream"]["connects"] == 2, done["stream"]["log"]
        assert rig.screenshot.exists() and rig.screenshot.stat().st_size > 0
        print(f"poll: {done['poll']['requests']} requests; log {done['poll']['log']}; "
              f"stream: {done['stream']['log']}; screenshot: {rig.screenshot}")
