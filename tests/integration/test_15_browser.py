"""15 a real browser fails over between edges (DESIGN.md invariant 5): chromium, driven by
tests/browser/sse_failover.mjs (node + playwright-core), opens the edge's demo page through
HAProxy in front of two edges. After 10 of 30 messages the edge the browser is on is SIGKILLed;
the browser's own EventSource reconnects, HAProxy sends it to the other edge, and its
Last-Event-ID resumes the stream: the page ends with all 30 messages, once each, in order.
(conftest.browser_sse_failover; test 43 runs the same in a three-broker cluster.)"""

from conftest import browser_marks, browser_sse_failover

TOPIC = "browser.t"

pytestmark = browser_marks


def test_browser_eventsource_fails_over_to_the_other_edge(broker, edge_factory, tmp_path):
    a = edge_factory(broker, "--retry", "300", name="a")
    b = edge_factory(broker, "--retry", "300", name="b")

    def head_fetches():
        with broker.client() as c:
            return c.stats().fetches

    browser_sse_failover(tmp_path, [a, b], lambda data: b.publish(TOPIC, data.encode()),
                         head_fetches, TOPIC)
