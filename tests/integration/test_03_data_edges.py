"""03 data edges: every byte value, empty data, data of exactly the limit, one byte over."""

import pytest

from conftest import publish_message, publish_request

LIMIT = 65536


@pytest.fixture
def broker(broker_factory):
    return broker_factory("--max-data-bytes", str(LIMIT))


def test_all_256_byte_values_round_trip(client):
    data = bytes(range(256)) * 3 + bytes(reversed(range(256)))
    r = client.publish("edges.binary", data)
    assert r.seq == 1
    _, last, msgs = client.fetch_all("edges.binary")
    assert last == 1
    assert msgs[0].data == data
    # each single byte value as its own message, including NUL and 0xff
    results = client.publish_batch([publish_message("edges.bytes", bytes([b])) for b in range(256)])
    assert [r.seq for r in results] == list(range(1, 257))
    _, last, msgs = client.fetch_all("edges.bytes")
    assert [m.data for m in msgs] == [bytes([b]) for b in range(256)]


def test_empty_data(client):
    r = client.publish("edges.empty", b"")
    assert r.seq == 1
    r = client.publish("edges.empty", b"", event=b"ping")
    assert r.seq == 2
    _, last, msgs = client.fetch_all("edges.empty")
    assert [(m.seq, m.data, m.event) for m in msgs] == [(1, b"", b""), (2, b"", b"ping")]


def test_data_of_exactly_the_limit_is_accepted(client):
    data = bytes((i * 7 + 3) % 256 for i in range(LIMIT))
    r = client.publish("edges.big", data)
    assert r.seq == 1
    _, _, msgs = client.fetch_all("edges.big")
    assert len(msgs) == 1 and msgs[0].data == data


def test_one_byte_over_the_limit_is_refused_and_broker_keeps_serving(client):
    client.publish("edges.over", b"before")
    err = client.call_error(publish_request([publish_message("edges.over", b"x" * (LIMIT + 1))]))
    assert err.code == "payload_too_large"
    assert str(LIMIT + 1) in err.message and str(LIMIT) in err.message
    # one oversize message in a batch refuses the whole batch
    err = client.call_error(publish_request([publish_message("edges.over", b"ok"),
                                             publish_message("edges.over", b"y" * (LIMIT + 1))]))
    assert err.code == "payload_too_large"
    assert client.publish("edges.over", b"after").seq == 2
    _, last, msgs = client.fetch_all("edges.over")
    assert [m.data for m in msgs] == [b"before", b"after"]
    assert client.stats().errors["payload_too_large"] == 2
