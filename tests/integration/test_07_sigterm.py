"""07 SIGTERM and logs: an idle broker stops cleanly and fast; every log line is logfmt."""

import re
import signal
import subprocess
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


def test_sigterm_during_start_up_exits_0(tmp_path):
    # A signal that arrives while the broker is still starting (opening its LMDB file, binding)
    # is kept and honoured once it is open: a clean exit 0, and the data directory is usable.
    from conftest import BROKER_BIN, free_port
    for delay in (0.02, 0.05, 0.1):
        data = tmp_path / f"d{delay}"
        argv = [str(BROKER_BIN), "--listen", f"tcp://127.0.0.1:{free_port()}", "--live",
                f"tcp://127.0.0.1:{free_port()}", "--data-dir", str(data), "--map-size", "4G"]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        assert p.returncode == 0, (delay, err.decode())
        assert b"event=stopped" in err, err.decode()
