"""33 a real browser's WebSocket fails over between edges (docs/websocket.md; DESIGN.md
invariant 5): chromium, driven by tests/browser/ws_failover.mjs (node + playwright-core), opens
tests/browser/ws.html from a page server on another origin than the edges. The page's
`new WebSocket(...)` goes through HAProxy in front of two edges, subscribes in its URL from a
cursor, and publishes m1..m10 itself over the WebSocket. Then the edge it is on is SIGKILLed:
m11..m20 are published over HTTP while it is away, and the page reconnects (to the other edge)
with a `subscribe` frame carrying the id of its last message; it publishes m21..m30 over its new
connection. Then the first edge is started again and the second stopped with SIGTERM: the page
gets the `shutdown` frame and close 1001, and reconnects to the restarted edge with the shutdown
cursor, while m31..m40 are published. The page ends with all 40 messages, once each, in order."""

import time

import requests

from conftest import BROWSER_DIR, BrowserRig, browser_marks

SCRIPT = BROWSER_DIR / "ws_failover.mjs"
PAGE = BROWSER_DIR / "ws.html"
TOPIC = "browser.ws"
WS = 'herald_edge_connections{transport="ws"}'

pytestmark = browser_marks


def ws_count(edge):
    return edge.metrics()[WS]


def wait_ws(edge, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while (got := ws_count(edge)) != value:
        assert time.monotonic() < deadline, f"{edge.base}: {got} WebSocket clients, want {value}"
        time.sleep(0.05)


def wait_proxy_on(proxy, edge, timeout=10.0):
    """Until the proxy sends requests to `edge` (restarted, so holding no WebSocket client,
    while the other edge holds the page's): its /metrics through the proxy say 0 clients."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(proxy + "/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith(WS + " "))
        if float(line.split()[1]) == 0:
            return
        assert time.monotonic() < deadline, f"the proxy does not send requests to {edge.base}"
        time.sleep(0.05)


def test_browser_websocket_fails_over_and_resumes_exactly_once(broker, edge_factory, tmp_path):
    a = edge_factory(broker, "--retry", "300", name="a")
    b = edge_factory(broker, "--retry", "300", name="b")
    with BrowserRig(tmp_path, [a, b], PAGE, SCRIPT, "browser-ws.png") as rig:
        proxy = rig.proxy
        start = b.publish(TOPIC, b"start")  # the page starts right after it
        node = rig.start(f"edge=ws://127.0.0.1:{rig.proxy_port}&topic={TOPIC}"
                         f"&cursor={start['id']}",
                         "--publish", "1-10@0,21-30@20", "--report-at", "10,20,30",
                         "--expect", "40", "--timeout-ms", "90000")
        node.expect("connected", 60)
        wait_ws(a, 1)  # HAProxy sends it to edge a while a is up
        assert ws_count(b) == 0
        first = node.expect("published", 30)
        assert [x["req"] for x in first["acks"]] == [f"p{i}" for i in range(1, 11)]
        node.expect("reached", 30)

        a.kill()  # SIGKILL the edge the page is on
        # committed before the page can be back: only a resume from its cursor brings them
        http = [b.publish(TOPIC, f"m{i}".encode()) for i in range(11, 21)]
        second = node.expect("published", 30)  # over the new connection, on b
        node.expect("reached", 30)
        assert ws_count(b) == 1
        node.expect("reached", 30)  # 30: its own publishes came back to it

        a.start()  # back: HAProxy's first server takes new connections once its check passes
        wait_proxy_on(proxy, a)
        b.terminate()  # SIGTERM: shutdown frame, close 1001, exit 0
        http += [a.publish(TOPIC, f"m{i}".encode()) for i in range(31, 41)]
        done = node.expect("done", 60)
        assert node.proc.wait(timeout=30) == 0

        received = done["received"]
        assert [m["data"] for m in received] == [f"m{i}" for i in range(1, 41)], received
        assert all(m["topic"] == TOPIC for m in received)
        assert [m["seq"] for m in received] == list(range(start["seq"] + 1, start["seq"] + 41))
        # the page's own publishes: acknowledged with the ids it then received
        acks = first["acks"] + second["acks"]
        assert [x["req"] for x in acks] == [f"p{i}" for i in list(range(1, 11)) +
                                            list(range(21, 31))]
        ids = {m["data"]: m["id"] for m in received}
        assert [x["id"] for x in acks] == [ids[f"m{i}"] for i in list(range(1, 11)) +
                                           list(range(21, 31))]
        assert [r["id"] for r in http] == [ids[f"m{i}"] for i in list(range(11, 21)) +
                                           list(range(31, 41))]
        log = done["log"]
        assert not any(line.startswith(("reset", "frame", "protocol")) for line in log), log
        assert "shutdown draining" in log, log
        # killed (no close frame: 1006 in the browser), then stopped (1001)
        assert done["closes"] == [1006, 1001], done["closes"]
        assert done["connects"] == 3, log
        # the page came back on the restarted edge: it delivered m31..m40 to it
        assert a.metrics()['herald_edge_deliveries_total{transport="ws"}'] == 10
        assert rig.screenshot.exists() and rig.screenshot.stat().st_size > 0
        print(f"log: {log}; screenshot: {rig.screenshot}")
