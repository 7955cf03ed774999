"""05 the `herald` CLI and herald-broker's command line: commands, options, output formats
(DESIGN.md §Client contract message JSON) and exit codes (docs/cli.md)."""

import base64
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import (BROKER_BIN, CLI_BIN, SOURCE_DIR, closed_endpoint, end_process,
                      publish_message, publish_request, run_broker_binary, run_cli, track)

EPOCH_RE = re.compile(r"^[0-9a-f]{16}$")
ID_RE = re.compile(r"^a[A-Za-z0-9_-]+$")  # cursor format 'a', base64url: URL-safe


def lines_json(text):
    return [json.loads(line) for line in text.splitlines()]


# ---- publish --------------------------------------------------------------------------------

def test_publish_from_argument_prints_its_id(cli, client):
    rc, out, err = cli("publish", "cli.arg", "hello world")
    assert (rc, err) == (0, "")
    ident = out.strip()
    assert out == ident + "\n"
    assert ID_RE.match(ident), ident
    _, _, msgs = client.fetch_all("cli.arg")
    assert [(m.seq, m.data) for m in msgs] == [(1, b"hello world")]


def test_publish_from_stdin(cli, client):
    rc, _, err = cli("publish", "cli.stdin", "-", input=b"line one\nline two\n")
    assert (rc, err) == (0, "")
    rc, _, err = cli("publish", "cli.stdin", input=b"no dash")
    assert (rc, err) == (0, "")
    binary = bytes(range(256))
    rc, _, err = cli("publish", "cli.stdin", "-", input=binary)
    assert (rc, err) == (0, "")
    _, _, msgs = client.fetch_all("cli.stdin")
    assert [m.data for m in msgs] == [b"line one\nline two\n", b"no dash", binary]


def test_publish_json_event_content_type(cli):
    rc, out, err = cli("publish", "cli.json", "{\"a\":1}", "--json", "--event", "update",
                       "--content-type", "application/json")
    assert (rc, err) == (0, "")
    j = json.loads(out)
    assert set(j) == {"topic", "id", "seq", "epoch", "time", "duplicate"}
    assert j["topic"] == "cli.json"
    assert j["seq"] == 1
    assert EPOCH_RE.match(j["epoch"])
    assert j["duplicate"] is False
    assert abs(j["time"] - time.time() * 1000) < 60_000
    rc, out, _ = cli("fetch", "cli.json")
    (m,) = lines_json(out)
    assert m == {"topic": "cli.json", "id": j["id"], "seq": 1, "epoch": j["epoch"],
                 "event": "update", "content_type": "application/json", "data": "{\"a\":1}",
                 "time": j["time"]}


def test_publish_idempotency_key_prints_the_same_id(cli, client):
    rc1, out1, _ = cli("publish", "cli.idem", "once", "--idempotency-key", "job-7")
    rc2, out2, _ = cli("publish", "cli.idem", "once", "--idempotency-key", "job-7")
    assert (rc1, rc2) == (0, 0)
    assert out1 == out2
    rc, out, _ = cli("publish", "cli.idem", "once", "--idempotency-key", "job-7", "--json")
    j = json.loads(out)
    assert (j["id"], j["seq"], j["duplicate"]) == (out1.strip(), 1, True)
    _, last, _ = client.fetch_all("cli.idem")
    assert last == 1


# ---- fetch ----------------------------------------------------------------------------------

def test_fetch_prints_message_json_lines(cli):
    ids = []
    for args, stdin in [(["text"], None), (["-"], b"\x00\x01\xfe\xff"),
                        (["evt", "--event", "tick"], None),
                        (["ct", "--content-type", "text/plain; charset=utf-8"], None),
                        (["caf\u00e9 \u2603"], None)]:
        rc, out, err = cli("publish", "cli.fetch", *args, "--json", input=stdin)
        assert rc == 0, err
        ids.append(json.loads(out))
    rc, out, err = cli("fetch", "cli.fetch")
    assert (rc, err) == (0, "")
    msgs = lines_json(out)
    assert len(msgs) == 5
    base = {"topic", "id", "seq", "epoch", "data", "time"}
    assert set(msgs[0]) == base
    assert set(msgs[1]) == base | {"encoding"}
    assert set(msgs[2]) == base | {"event"}
    assert set(msgs[3]) == base | {"content_type"}
    assert set(msgs[4]) == base
    for i, (m, pub) in enumerate(zip(msgs, ids)):
        assert m["topic"] == "cli.fetch"
        assert m["seq"] == i + 1
        assert m["id"] == pub["id"]
        assert m["epoch"] == pub["epoch"]
        assert EPOCH_RE.match(m["epoch"])
        assert m["time"] == pub["time"]
    assert msgs[0]["data"] == "text"
    assert msgs[1]["encoding"] == "base64"
    assert base64.b64decode(msgs[1]["data"], validate=True) == b"\x00\x01\xfe\xff"
    assert msgs[1]["data"] == "AAH+/w=="
    assert msgs[2]["event"] == "tick"
    assert msgs[3]["content_type"] == "text/plain; charset=utf-8"
    assert msgs[4]["data"] == "caf\u00e9 \u2603"  # valid UTF-8 travels as text


def test_fetch_after_an_id_returns_only_later_messages(cli):
    ids = []
    for i in range(5):
        rc, out, _ = cli("publish", "cli.after", f"m{i}")
        assert rc == 0
        ids.append(out.strip())
    rc, out, err = cli("fetch", "cli.after", "--after", ids[2])
    assert (rc, err) == (0, "")
    msgs = lines_json(out)
    assert [(m["seq"], m["data"], m["id"]) for m in msgs] == [(4, "m3", ids[3]),
                                                             (5, "m4", ids[4])]
    rc, out, _ = cli("fetch", "cli.after", "--after", ids[4])
    assert (rc, out) == (0, "")
    # a seq number works too, and --limit bounds the output
    rc, out, _ = cli("fetch", "cli.after", "--after", "1", "--limit", "2")
    assert [m["seq"] for m in lines_json(out)] == [2, 3]
    # earliest is the default; latest prints nothing
    rc, out, _ = cli("fetch", "cli.after", "--after", "earliest")
    assert [m["seq"] for m in lines_json(out)] == [1, 2, 3, 4, 5]
    rc, out, _ = cli("fetch", "cli.after", "--after", "latest")
    assert (rc, out) == (0, "")


def test_fetch_pages_through_more_than_one_reply(cli, client):
    msgs = [publish_message("cli.pages", f"n{i}".encode()) for i in range(2500)]
    for i in range(0, 2500, 500):
        client.publish_batch(msgs[i:i + 500])
    rc, out, err = cli("fetch", "cli.pages", "--limit", "100000")
    assert (rc, err) == (0, "")
    got = lines_json(out)
    assert [m["seq"] for m in got] == list(range(1, 2501))
    assert got[-1]["data"] == "n2499"


def test_fetch_of_an_unknown_topic_prints_nothing(cli):
    rc, out, err = cli("fetch", "cli.never")
    assert (rc, out, err) == (0, "", "")


# ---- tail -----------------------------------------------------------------------------------

def test_tail_count_receives_messages_published_after_it_starts(broker, client):
    client.publish("cli.tail", b"before tail")
    proc = track(subprocess.Popen([str(CLI_BIN), "--broker", broker.listen, "tail", "cli.tail",
                                   "--count", "3"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        ready = threading.Event()
        err_lines = []

        def read_stderr():
            for line in proc.stderr:
                err_lines.append(line.decode())
                if b"tailing" in line:
                    ready.set()

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        assert ready.wait(10), f"no 'tailing' line from herald tail: {err_lines}"
        assert err_lines == ["herald: tailing cli.tail\n"]
        client.publish("cli.tail.other", b"prefix match must be filtered")
        results = [client.publish("cli.tail", f"live {i}".encode()) for i in range(3)]
        client.publish("cli.tail", b"after count")
        assert proc.wait(timeout=10) == 0  # tail exits by itself after 3 messages
        out = proc.stdout.read()
        reader.join(timeout=5)
    finally:
        end_process(proc)
    msgs = lines_json(out.decode())
    assert [(m["topic"], m["seq"], m["data"]) for m in msgs] == [
        ("cli.tail", 2, "live 0"), ("cli.tail", 3, "live 1"), ("cli.tail", 4, "live 2")]
    assert all(m["epoch"] == f"{results[0].epoch:016x}" for m in msgs)


def test_tail_without_count_stops_on_sigint(broker):
    proc = track(subprocess.Popen([str(CLI_BIN), "--broker", broker.listen, "tail", "cli.sigint"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE))
    try:
        line = b""
        deadline = time.monotonic() + 10
        os.set_blocking(proc.stderr.fileno(), False)
        while b"tailing" not in line and time.monotonic() < deadline:
            line += proc.stderr.read() or b""
            time.sleep(0.02)
        assert b"herald: tailing cli.sigint" in line
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        assert proc.stdout.read() == b""
    finally:
        end_process(proc)


# ---- stats and ping -------------------------------------------------------------------------

def test_stats_reflects_messages_appended(cli, client):
    for i in range(7):
        client.publish(f"cli.stats{i % 2}", b"12345")
    client.publish("cli.stats0", b"dup", idempotency_key=b"k")
    client.publish("cli.stats0", b"dup", idempotency_key=b"k")
    client.call_error(publish_request([publish_message("bad/topic", b"x")]))
    rc, out, err = cli("stats")
    assert (rc, err) == (0, "")
    st = json.loads(out)
    assert set(st) == {"node_id", "uptime_ms", "messages_appended", "bytes_appended", "batches",
                       "batch_messages_max", "batch_size_buckets", "duplicates", "fetches",
                       "messages_fetched", "messages_trimmed", "topics", "map_size",
                       "map_used", "errors"}
    assert st["messages_appended"] == 8
    assert st["bytes_appended"] == 7 * 5 + 3
    assert st["duplicates"] == 1
    assert st["topics"] == 2
    assert st["node_id"] == 0
    assert st["map_size"] == 1 << 30
    assert 0 < st["map_used"] <= st["map_size"]
    assert len(st["batch_size_buckets"]) == 7
    assert sum(st["batch_size_buckets"]) == st["batches"]
    assert st["errors"] == {"invalid_topic": 1}


def test_ping(cli):
    rc, out, err = cli("ping")
    assert (rc, out, err) == (0, "ok node_id=0\n", "")


def test_environment_twin_of_broker(broker):
    env = dict(os.environ, HERALD_BROKER=broker.listen)
    rc, out, _ = run_cli(["ping"], env=env)
    assert (rc, out) == (0, "ok node_id=0\n")


# ---- exit codes -----------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["ping"], ["publish", "t", "x"], ["fetch", "t"], ["stats"],
                                  ["tail", "t"]])
def test_unreachable_broker_exits_3(args):
    endpoint = closed_endpoint()
    t0 = time.monotonic()
    rc, out, err = run_cli(["--broker", endpoint, "--timeout", "500", *args], timeout=10)
    assert rc == 3
    assert out == ""
    assert f"no reply from {endpoint} within 500 ms" in err
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("args", [
    [],                                    # no command
    ["frobnicate"],                        # unknown command
    ["publish"],                           # missing topic
    ["publish", "t", "x", "y"],            # too many arguments
    ["fetch"],
    ["ping", "extra"],
    ["publish", "bad/topic", "x"],         # topic outside the rules
    ["fetch", "t", "--limit", "0"],        # below the option's bounds
    ["fetch", "t", "--limit", "many"],
    ["--timeout"],                         # option without its value
    ["--no-such-flag", "ping"],            # unknown flag
])
def test_usage_errors_exit_2(args):
    rc, out, err = run_cli(["--broker", closed_endpoint(), *args])
    assert rc == 2
    assert out == ""
    assert err.startswith("herald: ")


def test_storage_full_exits_4(broker_factory):
    b = broker_factory("--map-size", "1M")
    with b.client() as c:
        for _ in range(300):
            reply = c.call(publish_request([publish_message("cli.full", b"f" * 100_000)]))
            if reply.WhichOneof("body") == "error":
                assert reply.error.code == "storage_full"
                break
        else:
            pytest.fail("1 MiB map never filled")
    rc, out, err = run_cli(["--broker", b.listen, "publish", "cli.full", "-"],
                           input=b"f" * 100_000)
    assert rc == 4
    assert out == ""
    assert "storage_full" in err


def test_refused_request_exits_1(cli):
    rc, out, err = cli("publish", "cli.refused", "x", "--event", "herald.reset")
    assert rc == 1
    assert out == ""
    assert err.startswith("herald: invalid_request: ")
    assert "reserved" in err


def test_cli_help_lists_commands_and_options():
    rc, out, _ = run_cli(["--help"])
    assert rc == 0
    for word in ["publish", "fetch", "tail", "stats", "ping", "--broker", "--timeout",
                 "--event", "--content-type", "--idempotency-key", "--after", "--limit",
                 "--count", "--json", "HERALD_BROKER"]:
        assert word in out, f"{word} missing from herald --help"


# ---- herald-broker's command line -----------------------------------------------------------

BROKER_OPTIONS = ["listen", "live", "data-dir", "cluster", "node-id", "advertise", "partitions",
                  "map-size", "sync", "max-data-bytes", "max-request-bytes", "max-batch",
                  "retention-messages", "retention-age", "dedupe-window", "trim-interval",
                  "heartbeat-interval", "renew-epochs", "forward-timeout", "hwm", "fetch-limit", "fetch-max-bytes", "log-level"]


def test_broker_help_lists_every_option():
    # the option table in broker.c is the source of truth; this list must follow it
    table = re.findall(r'OPT\("([a-z-]+)"', (SOURCE_DIR / "broker" / "broker.c").read_text())
    assert table == BROKER_OPTIONS
    rc, out, err = run_broker_binary(["--help"])
    assert (rc, err) == (0, "")
    assert out.startswith("usage: herald-broker [options]\n")
    for name in BROKER_OPTIONS:
        assert re.search(rf"^  --{name} ", out, re.M), f"--{name} missing from --help"
        env = "HERALD_BROKER_" + name.upper().replace("-", "_")
        assert f"env {env}, default '" in out


def test_broker_unknown_flag_exits_2():
    rc, out, err = run_broker_binary(["--no-such-flag"])
    assert rc == 2
    assert err == "herald-broker: unknown option '--no-such-flag' (see --help)\n"


@pytest.mark.parametrize("args,message", [
    (["--map-size", "foo"], "--map-size: 'foo' is not a byte size (e.g. 512M) or number"),
    (["--map-size", "1K"], "--map-size: 1024 is outside [1048576, "),
    (["--node-id", "x"], "--node-id: 'x' is not an integer number"),
    (["--sync=maybe"], "--sync: 'maybe' is not a boolean (true or false)"),
    (["--log-level", "loud"], "--log-level: 'loud' is not debug, info, warn or error"),
    (["--listen"], "option '--listen' needs a value"),
])
def test_broker_bad_option_value_exits_2(args, message):
    rc, out, err = run_broker_binary(args)
    assert rc == 2
    assert out == ""
    assert err.startswith("herald-broker: " + message)


def test_broker_bad_environment_value_exits_2(tmp_path):
    proc = subprocess.run([str(BROKER_BIN)], env=dict(os.environ, HERALD_BROKER_MAP_SIZE="lots"),
                          capture_output=True, timeout=10)
    assert proc.returncode == 2
    assert b"HERALD_BROKER_MAP_SIZE: 'lots' is not a byte size" in proc.stderr


def test_broker_cannot_bind_exits_1(broker, tmp_path):
    # the endpoint is taken by the running broker
    rc, _, err = run_broker_binary(["--listen", broker.listen, "--live", closed_endpoint(),
                                    "--data-dir", str(tmp_path / "other")])
    assert rc == 1
    assert f"cannot bind {broker.listen}" in err


# ---- docs/cli.md follows the binaries -------------------------------------------------------

def test_cli_doc_lists_every_option():
    doc = (SOURCE_DIR / "docs" / "cli.md").read_text()
    rc, out, _ = run_broker_binary(["--options-markdown"])
    assert rc == 0
    for line in out.splitlines()[2:]:
        assert line in doc, f"docs/cli.md lacks the broker option row: {line}"
    rc, out, _ = run_cli(["--help"])
    options = re.findall(r"^  --([a-z-]+) .*\n.*default '([^']*)'", out, re.M)
    assert [name for name, _ in options] == ["broker", "timeout", "event", "content-type",
                                             "idempotency-key", "after", "limit", "count", "json"]
    for name, default in options:
        shown = f"`{default}`" if default else "*(empty)*"
        env = "HERALD_" + name.upper().replace("-", "_")
        assert re.search(rf"^\| `--{name}` \| `{env}` \| {re.escape(shown)} \|", doc, re.M), \
            f"docs/cli.md lacks --{name} with default {shown}"


def test_fetch_with_an_empty_after_is_a_usage_error(cli):
    # an unset shell variable must not silently mean "latest"
    assert cli("publish", "cli.empty", "x")[0] == 0
    rc, out, err = cli("fetch", "cli.empty", "--after", "")
    assert (rc, out) == (2, "")
    assert "--after is empty" in err
