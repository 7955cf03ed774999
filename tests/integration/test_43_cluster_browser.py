"""43 a real browser fails over between edges of a three-broker cluster (DESIGN.md invariant 5,
§Cluster): test 15's chromium EventSource (conftest.browser_sse_failover) through HAProxy in
front of three edges, on a topic owned by broker 2; messages are published alternately over
HTTP through another edge and over ZeroMQ to broker 0 (which forwards them to broker 2). The
edge the browser is on is SIGKILLed after 10 of 30 messages: the page ends with all 30, once
each, in order, with the ids their publishers were given."""

from conftest import browser_marks, browser_sse_failover, make_cursor

pytestmark = browser_marks


def test_browser_eventsource_fails_over_in_a_three_broker_cluster(cluster, edge_factory,
                                                                   tmp_path):
    c = cluster(3, 12)
    edges = [edge_factory(c.brokers, "--retry", "300", name=n) for n in "abc"]
    for e in edges:
        c.wait_edge(e)
    topic = c.topics("browser.cluster", 1, owner=2)[0]
    owner = c[2]
    zmq_client = c[0].client()

    def publish(data):
        k = int(data[1:])
        if k % 2:
            return edges[2].publish(topic, data.encode())
        r = zmq_client.publish(topic, data.encode())  # forwarded by broker 0
        return {"id": make_cursor({topic: (r.epoch, r.seq)})}

    def head_fetches():
        with owner.client() as cl:
            return cl.stats().fetches

    try:
        browser_sse_failover(tmp_path, edges, publish, head_fetches, topic)
    finally:
        zmq_client.close()
