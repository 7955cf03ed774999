"""15 a real browser fails over between edges (DESIGN.md invariant 5): chromium, driven by
tests/browser/sse_failover.mjs (node + playwright-core), opens the edge's demo page through
HAProxy in front of two edges. After 10 of 30 messages the edge the browser is on is SIGKILLed;
the browser's own EventSource reconnects, HAProxy sends it to the other edge, and its
Last-Event-ID resumes the stream: the page ends with all 30 messages, once each, in order."""

import time

from conftest import BROWSER_DIR, NodeScript, browser_marks, end_process, free_port, \
    start_haproxy, wait_http

SCRIPT = BROWSER_DIR / "sse_failover.mjs"
TOPIC = "browser.t"

pytestmark = browser_marks


def edge_sse_connections(edge):
    return edge.metrics()['herald_edge_connections{transport="sse"}']


def test_browser_eventsource_fails_over_to_the_other_edge(broker, edge_factory, tmp_path):
    a = edge_factory(broker, "--retry", "300", name="a")
    b = edge_factory(broker, "--retry", "300", name="b")
    proxy_port = free_port()
    haproxy = start_haproxy(tmp_path, proxy_port, a, b)
    node = None
    try:
        wait_http(f"http://127.0.0.1:{proxy_port}/readyz")
        with broker.client() as c:
            fetches = c.stats().fetches
        screenshot = tmp_path / "browser-failover.png"
        node = NodeScript(SCRIPT, ["--url", f"http://127.0.0.1:{proxy_port}/?topic={TOPIC}",
                                   "--user-data-dir", str(tmp_path / "chromium-profile"),
                                   "--screenshot", str(screenshot), "--expect", "30",
                                   "--pause-at", "10", "--timeout-ms", "90000"],
                          tmp_path / "node-stderr.log")
        node.expect("connected", 60)
        # the page subscribes with no cursor (new messages only): its edge asks the broker for
        # the topic's head, the one fetch since `fetches` was read; publish once it is answered
        with broker.client() as c:
            deadline = time.monotonic() + 10
            while c.stats().fetches == fetches:
                assert time.monotonic() < deadline, "the page's subscription never asked"
                time.sleep(0.02)
        time.sleep(0.05)
        assert (edge_sse_connections(a), edge_sse_connections(b)) == (1, 0)
        sent = [b.publish(TOPIC, f"m{i}".encode()) for i in range(1, 11)]
        node.expect("reached", 30)

        a.kill()  # SIGKILL the edge the browser is on
        sent += [b.publish(TOPIC, f"m{i}".encode()) for i in range(11, 31)]
        # all 20 were committed before the browser came back (it waits retry: 300 ms), so only
        # a resume from its Last-Event-ID can bring them
        assert edge_sse_connections(b) == 0
        done = node.expect("done", 60)
        assert node.proc.wait(timeout=30) == 0

        received = done["received"]
        assert [m["data"] for m in received] == [f"m{i}" for i in range(1, 31)], received
        assert all(m["topic"] == TOPIC for m in received)
        assert [m["id"] for m in received] == [r["id"] for r in sent]
        assert not any(line.startswith("reset") for line in done["log"]), done["log"]
        assert done["status"] == f"connected to {TOPIC}"
        # the browser came back through the proxy, on edge b, with its Last-Event-ID
        assert edge_sse_connections(b) == 1
        assert screenshot.exists() and screenshot.stat().st_size > 0
        print(f"screenshot: {screenshot}")
    finally:
        if node is not None:
            node.stop()
        end_process(haproxy)
