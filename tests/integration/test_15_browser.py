"""15 a real browser fails over between edges (DESIGN.md invariant 5): chromium, driven by
tests/browser/sse_failover.mjs (node + playwright-core), opens the edge's demo page through
HAProxy in front of two edges. After 10 of 30 messages the edge the browser is on is SIGKILLed;
the browser's own EventSource reconnects, HAProxy sends it to the other edge, and its
Last-Event-ID resumes the stream: the page ends with all 30 messages, once each, in order."""

import json
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import SOURCE_DIR, end_process, free_port, track

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DIR = SOURCE_DIR / "tests" / "browser"
SCRIPT = BROWSER_DIR / "sse_failover.mjs"
TOPIC = "browser.t"

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed"),
    pytest.mark.skipif(not (BROWSER_DIR / "node_modules" / "playwright-core").exists(),
                       reason="tests/browser/node_modules is missing: run `npm ci` there"),
]

HAPROXY_CFG = """\
global
    maxconn 2000

defaults
    mode http
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    # a connection refused by a dead edge is retried on the other one, never answered 503
    # (EventSource gives up for good on a non-200 answer)
    retries 3
    option redispatch 1

frontend herald
    bind 127.0.0.1:{port}
    default_backend edges

backend edges
    # the first edge takes every connection while it is up: the browser starts on edge a
    balance first
    option httpchk GET /readyz
    http-check expect status 200
    server a 127.0.0.1:{port_a} check inter 200ms fall 2 rise 1
    server b 127.0.0.1:{port_b} check inter 200ms fall 2 rise 1
"""


def start_haproxy(tmp_path, port, edge_a, edge_b):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, port_a=edge_a.port, port_b=edge_b.port))
    check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=20)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "haproxy.log", "wb")
    proc = track(subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT))
    log.close()
    return proc


def wait_http(url, timeout=10.0):
    import requests
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


class Node:
    """The node script as a child process; its stdout lines (JSON) arrive on a queue."""

    def __init__(self, args, cwd, stderr_path):
        self.stderr = open(stderr_path, "wb")
        self.proc = track(subprocess.Popen(["node", str(SCRIPT), *args], cwd=cwd,
                                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                           stderr=self.stderr))
        self.lines = queue.Queue()
        self.stderr_path = stderr_path
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.decode("utf-8", "replace"))
        self.lines.put(None)

    def expect(self, event, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
            if line is None or (not line and left <= 0):
                raise AssertionError(f"node: no {event!r} event (exit {self.proc.poll()}):\n"
                                     f"{Path(self.stderr_path).read_text(errors='replace')}")
            if not line.strip():
                continue
            msg = json.loads(line)
            assert msg["event"] != "error", msg["message"]
            if msg["event"] == event:
                return msg

    def stop(self):
        # SIGTERM first: playwright's handler closes the browser it launched; then SIGKILL
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        end_process(self.proc)
        self.stderr.close()


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
        node = Node(["--url", f"http://127.0.0.1:{proxy_port}/?topic={TOPIC}",
                     "--user-data-dir", str(tmp_path / "chromium-profile"),
                     "--screenshot", str(screenshot), "--expect", "30", "--pause-at", "10",
                     "--timeout-ms", "90000"],
                    BROWSER_DIR, tmp_path / "node-stderr.log")
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
