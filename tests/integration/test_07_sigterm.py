"""07 SIGTERM and logs: an idle broker stops cleanly and fast; every log line is logfmt."""

import re
import signal
import time

from conftest import publish_message, publish_request

# logfmt: key=value pairs; a value is bare (no spaces or quotes) or a double-quoted string
PAIR = r'[a-z_]+=(?:"(?:[^"\\]|\\.)*"|[^\s"]*)'
LOGFMT_LINE = re.compile(rf"^{PAIR}(?: {PAIR})*$")
TS = re.compile(r"^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(debug|info|warn|error) "
                r"mod=[a-z]+ ")


def check_logfmt(text):
    lines = text.splitlines()
    assert lines, "no log lines"
    for line in lines:
        assert TS.match(line), f"line does not start with ts= level= mod=: {line!r}"
        assert LOGFMT_LINE.match(line), f"not logfmt: {line!r}"
    return lines


def test_sigterm_while_idle_exits_0_quickly(broker):
    with broker.client() as c:
        c.publish("sigterm.t", b"x")
    t0 = time.monotonic()
    broker.kill(signal.SIGTERM, timeout=5)
    assert broker.proc.returncode == 0, broker.stderr_text()
    assert time.monotonic() - t0 < 5
    lines = check_logfmt(broker.stderr_text())
    assert " event=serving " in lines[0]
    assert lines[-1].endswith(" level=info mod=broker event=stopped")
    # and the data is still there
    broker.restart()
    with broker.client() as c:
        _, last, msgs = c.fetch_all("sigterm.t")
        assert [m.data for m in msgs] == [b"x"]


def test_sigint_also_stops_cleanly(broker):
    rc = broker.kill(signal.SIGINT, timeout=5)
    assert rc == 0, broker.stderr_text()
    assert "event=stopped" in broker.stderr_text()


def test_debug_log_lines_are_logfmt(broker_factory):
    b = broker_factory("--log-level", "debug")
    with b.client() as c:
        c.publish("log.t", b"x")
        c.call_error(publish_request([publish_message("bad topic", b"x")]))
    b.terminate()
    lines = check_logfmt(b.stderr_text())
    refused = [line for line in lines if "event=request_refused" in line]
    assert len(refused) == 1
    assert " level=debug mod=broker event=request_refused code=invalid_topic detail=\"" in \
        refused[0]


def test_quiet_log_level_prints_nothing_at_info(broker_factory):
    b = broker_factory("--log-level", "error")
    b.terminate()
    assert b.stderr_text() == ""
