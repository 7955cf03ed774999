"""Shared fixtures of Herald's integration suite: real herald-broker processes on loopback with
temporary LMDB directories, a ZeroMQ client speaking proto/herald.proto, the `herald` CLI, and
herald-edge processes with an SSE parser and stream reader for the edge tests (1x), and NDJSON
and polling clients for the polling and HTTP-streaming tests (2x).

Environment (set by CTest, see CMakeLists.txt here):
  HERALD_BUILD_DIR   build tree holding broker/herald-broker, edge/herald-edge and cli/herald
  HERALD_SOURCE_DIR  source tree (proto/herald.proto, docs/examples/)
Both default to the checkout this file lives in (<repo>/build and <repo>).

Every process started here is ended by PID in fixture teardown, and every wait is bounded in
time: a test that hangs is a failing test, never a stuck suite.
"""

import asyncio
import atexit
import base64
import codecs
import functools
import http.client
import http.server
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import pytest
import requests
import zmq

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = Path(os.environ.get("HERALD_SOURCE_DIR") or REPO)
BUILD_DIR = Path(os.environ.get("HERALD_BUILD_DIR") or REPO / "build")
BROKER_BIN = BUILD_DIR / "broker" / "herald-broker"
CLI_BIN = BUILD_DIR / "cli" / "herald"

READY_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0


# ---- generated protobuf module ------------------------------------------------------------------

def _generate_pb2():
    """protoc --python_out once per session; returns the imported herald_pb2 module."""
    out = Path(tempfile.mkdtemp(prefix="herald-pb2-"))
    atexit.register(shutil.rmtree, out, True)
    proto_dir = SOURCE_DIR / "proto"
    subprocess.run(
        ["protoc", f"--python_out={out}", f"--proto_path={proto_dir}", "herald.proto"],
        check=True, timeout=60)
    sys.path.insert(0, str(out))
    import herald_pb2  # noqa: E402  (generated just above)
    return herald_pb2, out


pb, PB2_DIR = _generate_pb2()


@pytest.fixture(scope="session")
def herald_pb2():
    return pb


@pytest.fixture(scope="session")
def pb2_dir():
    """Directory holding the generated herald_pb2.py (for PYTHONPATH of child processes)."""
    return PB2_DIR


# ---- process bookkeeping ------------------------------------------------------------------------

_children = []  # every Popen this suite started, ended by PID at teardown


def track(proc):
    _children.append(proc)
    return proc


def end_process(proc, timeout=5.0):
    """SIGKILL `proc` (by its PID) if it still runs, and reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture(autouse=True, scope="session")
def _reap_children():
    yield
    for proc in _children:
        end_process(proc)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_endpoint():
    """An endpoint nobody listens on."""
    return f"tcp://127.0.0.1:{free_port()}"


# ---- requests and replies -----------------------------------------------------------------------

def publish_message(topic, data=b"", event=b"", content_type=b"", idempotency_key=b""):
    def b(v):
        return v.encode() if isinstance(v, str) else v
    return pb.PublishMessage(topic=b(topic), data=b(data), event=b(event),
                             content_type=b(content_type), idempotency_key=b(idempotency_key))


def publish_request(messages, version=1):
    req = pb.Request(version=version)
    req.publish.messages.extend(messages)
    return req


def fetch_request(topic, after_seq=0, epoch=0, limit=0, max_bytes=0):
    req = pb.Request(version=1)
    req.fetch.topic = topic.encode() if isinstance(topic, str) else topic
    req.fetch.after_seq = after_seq
    req.fetch.epoch = epoch
    req.fetch.limit = limit
    req.fetch.max_bytes = max_bytes
    return req


def heartbeat_request():
    req = pb.Request(version=1)
    req.heartbeat.version = 1
    return req


def stats_request():
    req = pb.Request(version=1)
    req.stats.SetInParent()
    return req


def hello_request():
    req = pb.Request(version=1)
    req.hello.version = 1
    req.hello.client = "integration-tests"
    return req


class ReplyError(AssertionError):
    pass


class Client:
    """A DEALER speaking the request framing of proto/herald.proto: [""][Request] -> [""][Reply].

    call() sends one request and waits for its reply; send()/recv_replies() pipeline: send many,
    then collect replies matched by request_id.
    """

    def __init__(self, endpoint, ctx=None):
        self.endpoint = endpoint
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.next_id = 1

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # raw frames ---------------------------------------------------------------------------------
    def send_frames(self, frames):
        self.sock.send_multipart(frames)

    def recv_frames(self, timeout=REPLY_TIMEOUT_S):
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            raise TimeoutError(f"no reply from {self.endpoint} within {timeout} s")
        return self.sock.recv_multipart()

    def recv_raw_reply(self, timeout=REPLY_TIMEOUT_S):
        """Receive [""][Reply] and decode it."""
        frames = self.recv_frames(timeout)
        assert len(frames) == 2, f"reply has {len(frames)} frames: {frames!r}"
        assert frames[0] == b"", f"reply delimiter frame is {frames[0]!r}"
        reply = pb.Reply()
        reply.ParseFromString(frames[1])
        return reply

    # requests -----------------------------------------------------------------------------------
    def send(self, req):
        """Assign a request_id (unless set), send, return the id."""
        if req.request_id == 0:
            req.request_id = self.next_id
            self.next_id += 1
        self.sock.send_multipart([b"", req.SerializeToString()])
        return req.request_id

    def recv_replies(self, ids, timeout=REPLY_TIMEOUT_S):
        """Collect the replies to every id in `ids`; returns {request_id: Reply}."""
        want = set(ids)
        got = {}
        deadline = time.monotonic() + timeout
        while want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(want)} replies missing after {timeout} s")
            reply = self.recv_raw_reply(left)
            if reply.request_id in want:
                want.discard(reply.request_id)
                got[reply.request_id] = reply
        return got

    def call(self, req, timeout=REPLY_TIMEOUT_S):
        rid = self.send(req)
        return self.recv_replies([rid], timeout)[rid]

    def call_ok(self, req, kind, timeout=REPLY_TIMEOUT_S):
        reply = self.call(req, timeout)
        body = reply.WhichOneof("body")
        if body != kind:
            raise ReplyError(f"expected a {kind} reply, got {body}: {reply}")
        return getattr(reply, kind)

    def call_error(self, req, timeout=REPLY_TIMEOUT_S):
        reply = self.call(req, timeout)
        assert reply.WhichOneof("body") == "error", f"expected an error reply, got {reply}"
        return reply.error

    # conveniences -------------------------------------------------------------------------------
    def publish(self, topic, data=b"", **kw):
        """Publish one message; returns its PublishResult."""
        res = self.call_ok(publish_request([publish_message(topic, data, **kw)]), "publish")
        assert len(res.results) == 1
        return res.results[0]

    def publish_batch(self, messages):
        return self.call_ok(publish_request(messages), "publish").results

    def fetch(self, topic, after_seq=0, epoch=0, limit=0, max_bytes=0):
        return self.call_ok(fetch_request(topic, after_seq, epoch, limit, max_bytes), "fetch")

    def fetch_all(self, topic, max_pages=1000):
        """Page through a topic with after_seq; returns (epoch, last_seq, [Message])."""
        out = []
        after = 0
        epoch = 0
        last = 0
        for _ in range(max_pages):
            fr = self.fetch(topic, after_seq=after)
            assert not fr.HasField("reset"), f"unexpected reset: {fr.reset}"
            epoch, last = fr.epoch, fr.last_seq
            out.extend(fr.messages)
            if not fr.messages or fr.messages[-1].seq >= fr.last_seq:
                return epoch, last, out
            after = fr.messages[-1].seq
        raise AssertionError(f"fetch of {topic!r} did not finish in {max_pages} pages")

    def stats(self):
        return self.call_ok(stats_request(), "stats")

    def heartbeat(self, timeout=REPLY_TIMEOUT_S):
        return self.call_ok(heartbeat_request(), "heartbeat", timeout)


# ---- the broker process -------------------------------------------------------------------------

class HeraldProcess:
    """What Broker and Edge share: one herald-* process started by the test, its stderr in a
    file, and ending it by PID. Subclasses set NAME, proc and stderr_path."""

    NAME = "herald"
    ended_by_test = False  # set by kill()/terminate(); start() clears it

    def report_unexpected_exit(self):
        """At teardown: a process that exited on its own (a crash) leaves its stderr in the test
        output and in /tmp/herald-unexpected-exit-<pid>.log, so a rare failure can be read."""
        if self.proc is None or self.proc.poll() is None or self.ended_by_test:
            return
        text = self.stderr_text()
        path = Path(f"/tmp/herald-unexpected-exit-{self.proc.pid}.log")
        path.write_text(f"{self.NAME} exited with {self.proc.returncode}\n{text}")
        print(f"\n{self.NAME} (pid {self.proc.pid}) exited on its own with "
              f"{self.proc.returncode}; stderr kept in {path}:\n{text[-4000:]}", file=sys.stderr)

    def stderr_text(self):
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout=10.0):
        """Send `sig` to the PID and wait for the exit; returns the exit status (negative for a
        signal)."""
        self.ended_by_test = True
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_process(self.proc)
            raise AssertionError(f"{self.NAME} did not exit within {timeout} s of {sig!r}:\n"
                                 f"{self.stderr_text()}")

    def terminate(self, timeout=10.0):
        """SIGTERM; asserts a clean exit (status 0)."""
        rc = self.kill(signal.SIGTERM, timeout)
        assert rc == 0, f"{self.NAME} exited with {rc} on SIGTERM:\n{self.stderr_text()}"
        return rc


class Broker(HeraldProcess):
    """One herald-broker on loopback: --listen and --live on free ports, --data-dir in tmp.

    start() waits until it answers a heartbeat; stderr goes to a file per start (stderr_text()).
    kill(), terminate() and restart() keep the data dir and ports.
    """

    NAME = "herald-broker"

    def __init__(self, workdir, extra_args=(), data_dir=None, bind_host="127.0.0.1", env=None):
        self.env = env  # environment of the process (None = inherit)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = Path(data_dir) if data_dir else self.workdir / "data"
        self.extra_args = list(extra_args)
        listen_port, live_port = free_port(), free_port()
        # what clients dial, and what the broker binds (bind_host "*" binds every interface)
        self.listen = f"tcp://127.0.0.1:{listen_port}"
        self.live = f"tcp://127.0.0.1:{live_port}"
        self.listen_bind = f"tcp://{bind_host}:{listen_port}"
        self.live_bind = f"tcp://{bind_host}:{live_port}"
        self.proc = None
        self.starts = 0
        self.stderr_path = None

    def argv(self):
        return [str(BROKER_BIN), "--listen", self.listen_bind, "--live", self.live_bind,
                "--data-dir", str(self.data_dir), *self.extra_args]

    def start(self, timeout=READY_TIMEOUT_S):
        self.ended_by_test = False
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        self.stderr_path = self.workdir / f"broker-stderr-{self.starts}.log"
        with open(self.stderr_path, "wb") as err, open(os.devnull, "wb") as out:
            self.proc = track(subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                               stdout=out, stderr=err, env=self.env))
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=READY_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        with Client(self.listen) as c:
            c.send(heartbeat_request())
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"herald-broker exited with {self.proc.returncode} before answering:\n"
                        f"{self.stderr_text()}")
                if c.sock.poll(100, zmq.POLLIN):
                    reply = c.recv_raw_reply(1.0)
                    assert reply.WhichOneof("body") == "heartbeat", str(reply)
                    return
        raise AssertionError(f"herald-broker did not answer a heartbeat within {timeout} s:\n"
                             f"{self.stderr_text()}")

    def restart(self, extra_args=None, timeout=READY_TIMEOUT_S):
        """Start again on the same data dir and ports (kill first if it still runs)."""
        if self.alive():
            self.kill()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        return self.start(timeout)

    def stop(self):
        if self.proc is not None:
            end_process(self.proc)

    def client(self):
        return Client(self.listen)


@pytest.fixture
def broker_factory(tmp_path):
    """Start brokers with extra args: broker_factory("--max-data-bytes", "64K")."""
    started = []

    def make(*extra_args, name=None, data_dir=None, start=True, bind_host="127.0.0.1", env=None):
        b = Broker(tmp_path / (name or f"broker{len(started)}"), extra_args, data_dir, bind_host,
                   env)
        started.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


@pytest.fixture
def client(broker):
    c = broker.client()
    yield c
    c.close()


# ---- the CLI ------------------------------------------------------------------------------------

def run_cli(args, input=None, timeout=20.0, env=None):
    """Run the `herald` binary; returns (exit code, stdout, stderr) as text."""
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    proc = track(subprocess.Popen([str(CLI_BIN), *[str(a) for a in args]], stdin=stdin,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        end_process(proc)
        raise AssertionError(f"herald {' '.join(map(str, args))} did not finish in {timeout} s")
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@pytest.fixture
def cli(broker):
    """cli("publish", "t", "x") runs herald against the `broker` fixture."""
    def run(*args, input=None, timeout=20.0):
        return run_cli(["--broker", broker.listen, *args], input=input, timeout=timeout)
    return run


def run_broker_binary(args, timeout=10.0):
    """Run herald-broker to completion (for --help, bad flags, bad data dirs)."""
    proc = track(subprocess.Popen([str(BROKER_BIN), *[str(a) for a in args]],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_process(proc)
        raise AssertionError(f"herald-broker {args} did not exit within {timeout} s")
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


# ---- the edge process (tests 1x) -----------------------------------------------------------------
#
# herald-edge on a free loopback port in front of one or more brokers, a small WHATWG SSE parser,
# a synchronous SSE stream reader (http.client, one reader thread per stream), an asynchronous
# subscriber for tests with many concurrent streams (aiohttp), helpers for the HTTP API
# (requests) and for cursors.

EDGE_BIN = BUILD_DIR / "edge" / "herald-edge"
HTTP_TIMEOUT_S = 10.0


class Edge(HeraldProcess):
    """One herald-edge: --listen 127.0.0.1:<free port> --brokers <endpoint> plus extra flags.

    start() waits until /readyz answers 200 (or, with ready=False, until /healthz answers, for
    an edge whose broker is not there yet); stderr goes to a file per start (stderr_text()).
    kill(), terminate() and restart() act on the PID and keep the port.
    """

    NAME = "herald-edge"

    def __init__(self, workdir, brokers, extra_args=(), port=None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if isinstance(brokers, Broker):
            brokers = brokers.listen
        elif not isinstance(brokers, str):
            brokers = ",".join(b.listen if isinstance(b, Broker) else b for b in brokers)
        self.brokers = brokers
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.base = f"http://{self.host}:{self.port}"
        self.proc = None
        self.starts = 0
        self.stderr_path = None
        self.http = requests.Session()

    def argv(self):
        return [str(EDGE_BIN), "--listen", f"{self.host}:{self.port}", "--brokers", self.brokers,
                *self.extra_args]

    def url(self, path):
        return self.base + path

    def start(self, ready=True, timeout=READY_TIMEOUT_S):
        self.ended_by_test = False
        assert self.proc is None or self.proc.poll() is not None, "edge already running"
        self.starts += 1
        self.stderr_path = self.workdir / f"edge-stderr-{self.starts}.log"
        with open(self.stderr_path, "wb") as err, open(os.devnull, "wb") as out:
            self.proc = track(subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                               stdout=out, stderr=err))
        self.wait_status("/readyz" if ready else "/healthz", 200, timeout)
        return self

    def wait_status(self, path, status, timeout=READY_TIMEOUT_S):
        """Poll GET `path` every 50 ms until it answers `status`; returns the response."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"herald-edge exited with {self.proc.returncode}:\n"
                                     f"{self.stderr_text()}")
            try:
                last = requests.get(self.url(path), timeout=2)
                if last.status_code == status:
                    return last
            except requests.RequestException as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"{path} of the edge did not answer {status} within {timeout} s "
                             f"(last: {last!r}):\n{self.stderr_text()}")

    def restart(self, extra_args=None, ready=True, timeout=READY_TIMEOUT_S):
        if self.alive():
            self.kill()
        if extra_args is not None:
            self.extra_args = list(extra_args)
        return self.start(ready, timeout)

    def stop(self):
        self.http.close()
        if self.proc is not None:
            end_process(self.proc)

    def sanitized(self):
        """True when the running binary was built with AddressSanitizer (its allocator keeps
        freed memory in quarantine, so RSS says nothing about leaks or bounds)."""
        with open(f"/proc/{self.proc.pid}/maps") as f:
            return "libasan" in f.read()

    def rss_kib(self):
        """VmRSS of the process in KiB, from /proc/<pid>/status."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    # the HTTP API -------------------------------------------------------------------------------
    def get(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.http.get(self.url(path), **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", HTTP_TIMEOUT_S)
        return self.http.post(self.url(path), **kw)

    def publish(self, topic, data=b"", event=None, headers=None, expect=201):
        """POST /v1/topics/{topic}/messages; returns the JSON reply (asserts `expect`)."""
        params = {"event": event} if event is not None else None
        r = self.post(f"/v1/topics/{topic}/messages", data=data, params=params,
                      headers=headers or {})
        assert r.status_code == expect, f"publish {topic}: {r.status_code} {r.text}"
        return r.json()

    def publish_batch(self, messages, expect=201):
        r = self.post("/v1/messages", json={"messages": messages})
        assert r.status_code == expect, f"batch: {r.status_code} {r.text}"
        return r.json()

    def history(self, topic, after=None, limit=None):
        params = {}
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        r = self.get(f"/v1/topics/{topic}/messages", params=params)
        assert r.status_code == 200, f"history {topic}: {r.status_code} {r.text}"
        return r.json()

    def metrics(self):
        """/metrics as {"name{labels}": float}."""
        r = self.get("/metrics")
        assert r.status_code == 200
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def poll(self, topics, cursor=None, wait=None, limit=None, headers=None, params=None,
             timeout=None, session=None):
        """GET /v1/poll for `topics` (a name or a list); returns the response, whatever its
        status. The HTTP timeout is `wait` plus HTTP_TIMEOUT_S. `session`: the requests session
        to use (default: this edge's; pass `requests` for a connection of its own, e.g. from
        another thread)."""
        if isinstance(topics, str):
            topics = [topics]
        q = [("topic", t) for t in topics]
        for name, value in (("cursor", cursor), ("wait", wait), ("limit", limit)):
            if value is not None:
                q.append((name, str(value)))
        q += list((params or {}).items())
        if timeout is None:
            try:
                timeout = HTTP_TIMEOUT_S + float(wait if wait is not None else 25)
            except ValueError:
                timeout = HTTP_TIMEOUT_S
        return (session or self.http).get(self.url("/v1/poll"), params=q, headers=headers or {},
                                          timeout=timeout)

    def stream(self, topics, params=None, headers=None, **kw):
        """Open GET /v1/stream for `topics` (a name or a list); returns an NDJSONStream."""
        if isinstance(topics, str):
            topics = [topics]
        q = [("topic", t) for t in topics] + list((params or {}).items())
        path = "/v1/stream?" + "&".join(f"{k}={requests.utils.quote(str(v), safe='')}"
                                        for k, v in q)
        return NDJSONStream(self.host, self.port, path, headers, **kw)

    def sse(self, topics, params=None, headers=None, **kw):
        """Open GET /v1/sse for `topics` (a name or a list); returns an SSEStream."""
        if isinstance(topics, str):
            topics = [topics]
        q = [("topic", t) for t in topics] + list((params or {}).items())
        path = "/v1/sse?" + "&".join(f"{k}={requests.utils.quote(str(v), safe='')}"
                                     for k, v in q)
        return SSEStream(self.host, self.port, path, headers, **kw)


def pytest_configure(config):
    config.addinivalue_line("markers", "edge_args(*flags): herald-edge flags for a test's edge")


@pytest.fixture
def edge_factory(tmp_path):
    """edge_factory(broker_or_endpoint, "--heartbeat", "200", start=True, ready=True)."""
    started = []

    def make(brokers, *extra_args, name=None, start=True, ready=True, port=None):
        e = Edge(tmp_path / (name or f"edge{len(started)}"), brokers, extra_args, port)
        started.append(e)
        if start:
            e.start(ready=ready)
        return e

    yield make
    for e in started:
        e.report_unexpected_exit()
        e.stop()


@pytest.fixture
def edge(broker, edge_factory):
    return edge_factory(broker)


# ---- Server-Sent Events (WHATWG HTML §9.2) ------------------------------------------------------

class SSEEvent:
    """A dispatched event: type ("message" unless event: said otherwise), data, last_event_id."""

    __slots__ = ("type", "data", "last_event_id")

    def __init__(self, type, data, last_event_id):
        self.type, self.data, self.last_event_id = type, data, last_event_id

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        data = self.data if len(self.data) <= 80 else self.data[:77] + "..."
        return f"SSEEvent({self.type!r}, {data!r}, id={self.last_event_id!r})"


_EOL = re.compile(r"\r\n|\r|\n")


class SSEParser:
    """The event stream interpretation of WHATWG HTML §9.2.6, fed with bytes as they arrive.

    UTF-8 decoding (a leading BOM dropped), lines ended by CRLF, LF or CR (a CR at the end of one
    chunk and an LF at the start of the next are one line end), fields id/event/data/retry, a
    line starting with ':' is a comment, anything else is ignored; a blank line dispatches: no
    event when the data buffer is empty, else the data without its last LF. `retry` holds the
    last valid retry: value, `comments` every comment, `last_event_id` the id buffer and
    `dispatched_id` what an EventSource would resend as Last-Event-ID (the buffer's value at the
    last blank line).
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._pending = ""  # text of an incomplete line
        self._skip_lf = False  # the previous chunk ended with CR
        self.data = ""
        self.event_type = ""
        self.last_event_id = ""
        self.dispatched_id = ""
        self.retry = None
        self.comments = []

    def feed(self, chunk, final=False):
        """Returns the events `chunk` completes."""
        text = self._decoder.decode(chunk, final)
        if not text:
            return []
        if self._first:
            self._first = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]  # the LF of a CRLF split between two chunks
        lines = _EOL.split(self._pending + text)
        self._pending = lines.pop()  # "" after a line end, else an incomplete line
        self._skip_lf = text.endswith("\r")
        events = []
        for line in lines:
            self._line(line, events)
        return events

    def _line(self, line, events):
        if line == "":
            self._dispatch(events)
            return
        if line[0] == ":":
            self.comments.append(line[1:])
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.event_type = value
        elif name == "data":
            self.data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value and all("0" <= ch <= "9" for ch in value):
                self.retry = int(value)

    def _dispatch(self, events):
        self.dispatched_id = self.last_event_id  # EventSource's "last event ID string"
        if self.data == "":
            self.event_type = ""
            return
        data = self.data[:-1] if self.data.endswith("\n") else self.data
        events.append(SSEEvent(self.event_type or "message", data, self.last_event_id))
        self.data = ""
        self.event_type = ""


class SSEStream:
    """GET an event stream with http.client and parse it as it arrives.

    A reader thread does blocking reads (http.client's read1: whatever has arrived) into a
    queue; the test side waits on the queue with deadlines, so no read ever hangs a test.
    `raw` keeps every body byte, `events` every dispatched event, `closed` is set at EOF.
    """

    KIND = "SSE"

    def __init__(self, host, port, path, headers=None, timeout=HTTP_TIMEOUT_S, parser=None):
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.request("GET", path, headers=headers or {})
        # http.client lets go of the socket of a close-delimited response: keep it to end it
        self.sock = self.conn.sock
        self.resp = self.conn.getresponse()
        self.sock.settimeout(None)  # reads block; the reader thread ends at close or EOF
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.parser = parser or SSEParser()
        self.raw = bytearray()
        self.events = []
        self.closed = False
        self._q = queue.Queue()
        self._thread = None
        if self.status == 200:
            self._thread = threading.Thread(target=self._reader, daemon=True)
            self._thread.start()
        else:
            self.body = self.resp.read()
            self.closed = True

    def _reader(self):
        try:
            while True:
                chunk = self.resp.read1(65536)
                self._q.put(chunk)
                if not chunk:
                    return
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            self._q.put(b"")  # the connection ended (or close() ended it)

    def _take(self, timeout):
        """Process what arrived within `timeout` s; False once nothing more can come."""
        if self.closed:
            return False
        try:
            chunk = self._q.get(timeout=max(timeout, 0))
        except queue.Empty:
            return True
        while True:
            if not chunk:
                self.closed = True
                self.events.extend(self.parser.feed(b"", final=True))
                self.close()  # as EventSource does at the end of a stream
                return False
            self.raw += chunk
            self.events.extend(self.parser.feed(chunk))
            try:
                chunk = self._q.get_nowait()
            except queue.Empty:
                return True

    def wait(self, pred, timeout=10.0, what="condition"):
        """Read until pred(self) holds; AssertionError after `timeout` s or at EOF without it."""
        deadline = time.monotonic() + timeout
        while not pred(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.KIND}: no {what} within {timeout} s; "
                                     f"{len(self.events)} events: {self.events[-5:]}")
            if not self._take(min(left, 0.2)) and not pred(self):
                raise AssertionError(f"{self.KIND}: stream closed before {what}; "
                                     f"{len(self.events)} events: {self.events[-5:]}")
        return self

    def messages(self):
        """Events of the default type ("message")."""
        return [e for e in self.events if e.type == "message"]

    def wait_messages(self, n, timeout=10.0):
        self.wait(lambda s: len(s.messages()) >= n, timeout, f"{n} messages")
        return self.messages()

    def wait_raw(self, needle, timeout=10.0):
        self.wait(lambda s: needle in s.raw, timeout, f"bytes {needle!r}")
        return self

    def wait_closed(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.KIND}: stream still open after {timeout} s")
            self._take(min(left, 0.2))
        return self

    def drain(self, seconds):
        """Read whatever arrives during `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self._take(deadline - time.monotonic()):
            pass
        return self

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.resp.close()
        self.conn.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- HTTP streaming and polling (tests 2x) -------------------------------------------------------

class NDJSONParser:
    """Newline-delimited JSON (GET /v1/stream), fed with body bytes as they arrive: feed()
    returns the objects of the lines it completes. An empty line is a heartbeat (counted in
    `heartbeats`); every other line must be a JSON object with a "type" (DESIGN.md §Client
    contract), else AssertionError."""

    def __init__(self):
        self._pending = b""
        self.heartbeats = 0

    def feed(self, chunk, final=False):
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        out = []
        for line in lines:
            if line == b"":
                self.heartbeats += 1
                continue
            obj = json.loads(line)
            assert isinstance(obj, dict) and isinstance(obj.get("type"), str), line
            out.append(obj)
        return out  # at `final`, an incomplete last line (a cut connection) is dropped


class NDJSONStream(SSEStream):
    """GET /v1/stream with http.client (which undoes the chunked coding), parsed as it arrives:
    `events` holds every JSON line, `raw` the de-chunked body, `closed` is set at the end."""

    KIND = "stream"

    def __init__(self, host, port, path, headers=None, timeout=HTTP_TIMEOUT_S):
        super().__init__(host, port, path, headers, timeout, parser=NDJSONParser())

    def messages(self):
        return [o for o in self.events if o["type"] == "message"]

    def last_id(self):
        """The cursor to resume from: the id of the last message or reset line, or the cursor
        of a shutdown line."""
        for o in reversed(self.events):
            if o["type"] in ("message", "reset"):
                return o["id"]
            if o["type"] == "shutdown":
                return o["cursor"]
        return None


def _query(topics, extra):
    topics = [topics] if isinstance(topics, str) else list(topics)
    return [("topic", t) for t in topics] + [(k, str(v)) for k, v in extra if v is not None]


class AsyncPoller:
    """One polling client on aiohttp, for tests with many concurrent pollers.

    run() polls `topics` on the edges in `bases` (base URLs; it starts on bases[0]) until `want`
    messages have arrived or `deadline` (time.monotonic()) passes, each request with the
    `cursor` of the previous answer: long polling with `wait` > 0, regular polling with wait=0
    and a pause of `interval` s after an empty answer. A request that fails or is not answered
    200 is retried with the same cursor on the next base after 0.1 s. `keep(message)` is what is
    stored of each message (the whole JSON by default; load tests keep less).
    """

    def __init__(self, session, bases, topics, want, cursor=None, wait=1, limit=None,
                 interval=0.0, keep=None, max_requests=100000):
        self.session = session
        self.bases = list(bases)
        self.topics = topics
        self.want = want
        self.cursor = cursor
        self.wait = wait
        self.limit = limit
        self.interval = interval
        self.keep = keep or (lambda m: m)
        self.max_requests = max_requests
        self.messages = []
        self.resets = []
        self.last_id = None  # id of the last message
        self.requests = 0
        self.empty = 0  # answers 200 without a message or reset
        self.statuses = {}
        self.errors = []
        self.base_index = 0

    async def run(self, deadline):
        while len(self.messages) < self.want and self.requests < self.max_requests:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            base = self.bases[self.base_index % len(self.bases)]
            self.requests += 1
            q = _query(self.topics, [("cursor", self.cursor), ("wait", self.wait),
                                     ("limit", self.limit)])
            try:
                timeout = aiohttp.ClientTimeout(total=min(left, float(self.wait) + 10),
                                                sock_connect=5)
                async with self.session.get(base + "/v1/poll", params=q,
                                            timeout=timeout) as resp:
                    body = await resp.read()
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                    etag = resp.headers.get("ETag")
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                self.errors.append(repr(e))
                self.base_index += 1
                await asyncio.sleep(0.1)
                continue
            if resp.status != 200:
                self.errors.append(f"{resp.status} {body[:200]!r}")
                self.base_index += 1
                await asyncio.sleep(0.1)
                continue
            answer = json.loads(body)
            assert etag == f'W/"{answer["cursor"]}"', (etag, answer["cursor"])
            for m in answer["messages"]:
                self.messages.append(self.keep(m))
            if answer["messages"]:
                self.last_id = answer["messages"][-1]["id"]
            self.resets.extend(answer["reset"])
            self.cursor = answer["cursor"]
            if not answer["messages"] and not answer["reset"]:
                self.empty += 1
                if self.interval:
                    await asyncio.sleep(self.interval)
        return self


class AsyncStreamReader:
    """One HTTP-streaming client (GET /v1/stream) on aiohttp, for tests with many streams.

    run() reads `topics` from the edges in `bases` until `want` messages have arrived or
    `deadline` passes. When the stream ends or fails and `reconnect` is set it connects again,
    to the next base in turn, with cursor= the id of the last line it saw (what a fetch()
    client does). `keep` as for AsyncPoller.
    """

    def __init__(self, session, bases, topics, want, cursor=None, reconnect=True,
                 max_connects=50, keep=None):
        self.session = session
        self.bases = list(bases)
        self.topics = topics
        self.want = want
        self.cursor = cursor
        self.reconnect = reconnect
        self.max_connects = max_connects
        self.keep = keep or (lambda m: m)
        self.messages = []
        self.others = []  # reset and shutdown lines
        self.heartbeats = 0
        self.connects = 0
        self.statuses = []
        self.error = None

    async def run(self, deadline):
        while len(self.messages) < self.want and self.connects < self.max_connects:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            base = self.bases[self.connects % len(self.bases)]
            self.connects += 1
            try:
                timeout = aiohttp.ClientTimeout(total=left, sock_connect=5)
                async with self.session.get(base + "/v1/stream",
                                            params=_query(self.topics, [("cursor", self.cursor)]),
                                            timeout=timeout) as resp:
                    self.statuses.append(resp.status)
                    if resp.status != 200:
                        self.error = f"status {resp.status}: {await resp.text()}"
                    else:
                        await self._read(resp)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                self.error = repr(e)
            if not self.reconnect:
                break
            if len(self.messages) < self.want:
                await asyncio.sleep(0.1)
        return self

    async def _read(self, resp):
        parser = NDJSONParser()
        try:
            async for chunk in resp.content.iter_any():
                for obj in parser.feed(chunk):
                    if obj["type"] == "message":
                        self.messages.append(self.keep(obj))
                        self.cursor = obj["id"]
                    else:
                        self.others.append(obj)
                        self.cursor = obj.get("id") or obj.get("cursor") or self.cursor
                if len(self.messages) >= self.want:
                    return
        finally:
            self.heartbeats += parser.heartbeats


class AsyncSubscriber:
    """One SSE subscriber on aiohttp, for tests with many concurrent streams.

    run() reads `topics` from the edges in `bases` (base URLs; it starts on bases[0]) until
    `want` messages have arrived or `deadline` (time.monotonic()) passes. When the stream ends
    or fails and `reconnect` is set it connects again, to the next base in turn, with
    Last-Event-ID = the last event id it saw — what a browser's EventSource does.
    """

    def __init__(self, session, bases, topics, want, last_event_id=None, params=None,
                 reconnect=True, max_connects=50):
        self.session = session
        self.bases = list(bases)
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.want = want
        self.last_event_id = last_event_id
        self.params = dict(params or {})
        self.reconnect = reconnect
        self.max_connects = max_connects
        self.messages = []  # message events, in arrival order
        self.others = []  # events of other types (herald.reset, herald.shutdown)
        self.connects = 0
        self.statuses = []
        self.error = None

    def path(self):
        q = [("topic", t) for t in self.topics] + list(self.params.items())
        return "/v1/sse?" + "&".join(f"{k}={requests.utils.quote(str(v), safe='')}"
                                     for k, v in q)

    async def run(self, deadline):
        while len(self.messages) < self.want and self.connects < self.max_connects:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            base = self.bases[self.connects % len(self.bases)]
            self.connects += 1
            headers = {}
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            try:
                timeout = aiohttp.ClientTimeout(total=left, sock_connect=5)
                async with self.session.get(base + self.path(), headers=headers,
                                            timeout=timeout) as resp:
                    self.statuses.append(resp.status)
                    if resp.status != 200:
                        self.error = f"status {resp.status}: {await resp.text()}"
                    else:
                        await self._read(resp)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
                self.error = repr(e)
            if not self.reconnect:
                break
            if len(self.messages) < self.want:
                await asyncio.sleep(0.1)
        return self

    async def _read(self, resp):
        parser = SSEParser()
        async for chunk in resp.content.iter_any():
            for ev in parser.feed(chunk):
                if ev.type == "message":
                    self.messages.append(ev)
                else:
                    self.others.append(ev)
            self.last_event_id = parser.dispatched_id or self.last_event_id
            if len(self.messages) >= self.want:
                return


# ---- browser tests: chromium driven by node + playwright-core behind HAProxy (15, 24, 33, 4x) ---

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DIR = SOURCE_DIR / "tests" / "browser"

browser_marks = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed"),
    pytest.mark.skipif(not (BROWSER_DIR / "node_modules" / "playwright-core").exists(),
                       reason="tests/browser/node_modules is missing: run `npm ci` there"),
]

HAPROXY_CFG = """\
global
    maxconn {maxconn}
    stats socket {socket} mode 600 level admin

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
    maxconn {maxconn}
    default_backend edges

backend edges
    balance {balance}
    option httpchk GET /readyz
    http-check expect status 200
{servers}"""

HAPROXY_SERVER = "    server {name} 127.0.0.1:{port} check inter 200ms fall 2 rise 1{extra}\n"


def start_haproxy(tmp_path, port, *edges, balance="first", spare=0, maxconn=2000):
    """HAProxy on 127.0.0.1:`port` in front of `edges` (Edge objects, or one list of them),
    servers e0, e1, ... in that order (HAPROXY_CFG); returns its Popen.

    balance "first" (the default) sends every connection to the first edge that is up, so a
    browser test knows where its page starts; "roundrobin" or "leastconn" spread clients.
    `spare` servers spare0, spare1, ... start disabled: haproxy_add_edge() points one at a new
    edge at run time (the admin socket, no reload, no stream cut)."""
    if len(edges) == 1 and isinstance(edges[0], (list, tuple)):
        edges = tuple(edges[0])
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    sock = tmp_path / "haproxy.sock"
    if len(str(sock)) > 100:  # sun_path holds 108 bytes
        short = tempfile.mkdtemp(prefix="herald-hap-")
        atexit.register(shutil.rmtree, short, True)
        sock = Path(short) / "s.sock"
    servers = "".join(HAPROXY_SERVER.format(name=f"e{i}", port=e.port, extra="")
                      for i, e in enumerate(edges))
    # a spare slot's placeholder address is never dialled: it stays in maintenance until used
    servers += "".join(HAPROXY_SERVER.format(name=f"spare{i}", port=1, extra=" disabled")
                       for i in range(spare))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, socket=sock, balance=balance, maxconn=maxconn,
                                      servers=servers))
    check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                           timeout=20)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "haproxy.log", "wb")
    proc = track(subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT))
    log.close()
    proc.admin_socket = sock
    proc.spare_slots = [f"spare{i}" for i in range(spare)]
    return proc


def haproxy_command(proc, command, timeout=5.0):
    """One command on HAProxy's admin socket (start_haproxy); returns its answer as text."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(proc.admin_socket))
                s.sendall(command.encode() + b"\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
                return out.decode(errors="replace")
        except (FileNotFoundError, ConnectionRefusedError):
            # HAProxy creates the socket while it starts
            assert proc.poll() is None, f"haproxy exited with {proc.returncode}"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def haproxy_servers(proc):
    """{server name: status} of the edges backend ("UP", "DOWN", "MAINT", ...)."""
    lines = haproxy_command(proc, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname") == "edges" and row.get("svname") not in (None, "BACKEND"):
            out[row["svname"]] = row["status"]
    return out


def haproxy_add_edge(proc, edge, timeout=10.0):
    """Point the next spare slot of `proc` at `edge` and enable it; returns once HAProxy's health
    check has it UP. Returns the slot's name."""
    assert proc.spare_slots, "no spare HAProxy slot left (start_haproxy(spare=...))"
    name = proc.spare_slots.pop(0)
    for cmd in (f"set server edges/{name} addr 127.0.0.1 port {edge.port}",
                f"set server edges/{name} state ready"):
        answer = haproxy_command(proc, cmd).strip()
        assert answer == "" or "changed" in answer, (cmd, answer)
    deadline = time.monotonic() + timeout
    while (status := haproxy_servers(proc).get(name)) != "UP":
        assert time.monotonic() < deadline, f"HAProxy slot {name} is {status} after {timeout} s"
        time.sleep(0.05)
    return name


def wait_http(url, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


class NodeScript:
    """A node script of tests/browser as a child process; its stdout lines (JSON objects with an
    "event") arrive on a queue, read with expect()."""

    def __init__(self, script, args, stderr_path):
        self.stderr = open(stderr_path, "wb")
        self.proc = track(subprocess.Popen(["node", str(script), *args], cwd=BROWSER_DIR,
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
        """The next line with `event` (lines of other events are skipped; "error" fails)."""
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


class PageServer:
    """A static file server on loopback (a page's origin), in a thread of this process."""

    def __init__(self, directory):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class BrowserRig:
    """A browser test's setting (tests 24 and 33): HAProxy on a free port in front of `edges`
    (balance first: the page starts on edges[0]), and `page` served as index.html by a page
    server on another origin. start(query, *args) runs `script` (node + playwright-core) on the
    page with `query`, a chromium profile and a screenshot in tmp_path. A context manager: on
    exit the browser, the page server and HAProxy are stopped."""

    def __init__(self, tmp_path, edges, page, script, screenshot):
        self.tmp_path, self.script = tmp_path, script
        self.screenshot = tmp_path / screenshot
        self.proxy_port = free_port()
        self.proxy = f"http://127.0.0.1:{self.proxy_port}"
        self.haproxy = start_haproxy(tmp_path, self.proxy_port, edges)
        self.pages = self.node = None
        try:
            site = tmp_path / "site"
            site.mkdir()
            shutil.copy(page, site / "index.html")
            self.pages = PageServer(site)
            wait_http(self.proxy + "/readyz")
        except BaseException:
            self.close()
            raise

    def start(self, query, *args):
        url = f"http://127.0.0.1:{self.pages.port}/index.html?{query}"
        self.node = NodeScript(self.script, ["--url", url, "--user-data-dir",
                                             str(self.tmp_path / "chromium-profile"),
                                             "--screenshot", str(self.screenshot), *args],
                               self.tmp_path / "node-stderr.log")
        return self.node

    def close(self):
        if self.node is not None:
            self.node.stop()
        if self.pages is not None:
            self.pages.close()
        end_process(self.haproxy)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def browser_sse_failover(tmp_path, edges, publish, head_fetches, topic, n=30, pause_at=10):
    """The browser failover of tests 15 and 43: chromium (tests/browser/sse_failover.mjs) opens
    the edge's demo page for `topic` through HAProxy in front of `edges` (balance first: the
    page starts on edges[0]). Once the page's subscription has asked for the topic's head
    (`head_fetches()`, the owning broker's fetch count, moves), m1..m<pause_at> are published
    with `publish(data)` (returns the answer's {"id": ...}); then edges[0] is SIGKILLed and the
    rest published while the browser is away; its own EventSource comes back through HAProxy
    on edges[1] with Last-Event-ID. Asserts the page ends with m1..m<n>, once each, in order,
    with the published ids and no reset."""
    a, b = edges[0], edges[1]

    def sse_connections(edge):
        return edge.metrics()['herald_edge_connections{transport="sse"}']

    proxy_port = free_port()
    haproxy = start_haproxy(tmp_path, proxy_port, edges)
    node = None
    try:
        wait_http(f"http://127.0.0.1:{proxy_port}/readyz")
        fetches = head_fetches()
        screenshot = tmp_path / "browser-failover.png"
        node = NodeScript(BROWSER_DIR / "sse_failover.mjs",
                          ["--url", f"http://127.0.0.1:{proxy_port}/?topic={topic}",
                           "--user-data-dir", str(tmp_path / "chromium-profile"),
                           "--screenshot", str(screenshot), "--expect", str(n),
                           "--pause-at", str(pause_at), "--timeout-ms", "90000"],
                          tmp_path / "node-stderr.log")
        node.expect("connected", 60)
        # the page subscribes with no cursor (new messages only): its edge asks the owning
        # broker for the topic's head, the one fetch since `fetches` was read; publish once it
        # is answered
        deadline = time.monotonic() + 10
        while head_fetches() == fetches:
            assert time.monotonic() < deadline, "the page's subscription never asked"
            time.sleep(0.02)
        time.sleep(0.05)
        assert [sse_connections(e) for e in edges] == [1] + [0] * (len(edges) - 1)
        sent = [publish(f"m{i}") for i in range(1, pause_at + 1)]
        node.expect("reached", 30)

        a.kill()  # SIGKILL the edge the browser is on
        sent += [publish(f"m{i}") for i in range(pause_at + 1, n + 1)]
        # all were committed before the browser came back (it waits retry: 300 ms), so only a
        # resume from its Last-Event-ID can bring them
        assert sse_connections(b) == 0
        done = node.expect("done", 60)
        assert node.proc.wait(timeout=30) == 0

        received = done["received"]
        assert [m["data"] for m in received] == [f"m{i}" for i in range(1, n + 1)], received
        assert all(m["topic"] == topic for m in received)
        assert [m["id"] for m in received] == [r["id"] for r in sent]
        assert not any(line.startswith("reset") for line in done["log"]), done["log"]
        assert done["status"] == f"connected to {topic}"
        # the browser came back through the proxy, on edge b, with its Last-Event-ID
        assert sse_connections(b) == 1
        assert screenshot.exists() and screenshot.stat().st_size > 0
        print(f"screenshot: {screenshot}")
    finally:
        if node is not None:
            node.stop()
        end_process(haproxy)


# ---- cursors (proto/cursor.h, format 'a'), for tests that need one the edge never issued --------

def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def fnv1a32(data):
    h = 0x811c9dc5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def make_cursor(entries):
    """A format-'a' cursor from {topic name: (epoch, seq)} (epoch an int or 16 hex digits)."""
    rows = []
    for topic, (epoch, seq) in entries.items():
        if isinstance(epoch, str):
            epoch = int(epoch, 16)
        rows.append((fnv1a64(topic.encode()), epoch, seq))
    body = bytearray()
    for h, epoch, seq in sorted(rows):
        body += struct.pack(">QQ", h, epoch)
        while seq >= 0x80:
            body.append((seq & 0x7F) | 0x80)
            seq >>= 7
        body.append(seq)
    body += struct.pack(">I", fnv1a32(bytes(body)))
    return "a" + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")


def parse_cursor(text):
    """{topic hash: (epoch, seq)} of a format-'a' cursor (for assertions)."""
    assert text[0] == "a", text
    raw = base64.urlsafe_b64decode(text[1:] + "=" * (-len(text[1:]) % 4))
    body, check = raw[:-4], struct.unpack(">I", raw[-4:])[0]
    assert fnv1a32(body) == check, "cursor check fails"
    out, i = {}, 0
    while i < len(body):
        h, epoch = struct.unpack(">QQ", body[i:i + 16])
        i += 16
        seq, shift = 0, 0
        while True:
            b = body[i]
            i += 1
            seq |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out[h] = (epoch, seq)
    return out


def cursor_position(text, topic):
    """(epoch, seq) that cursor `text` records for `topic`, or None."""
    return parse_cursor(text).get(fnv1a64(topic.encode()))


def assert_error(resp, status, code):
    """`resp` is `status` with the JSON error body {"error": {"code": code, "message": ...}}."""
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body


# ---- clusters (tests 4x) -------------------------------------------------------------------------
#
# N herald-brokers forming one cluster (--cluster, --node-id, --partitions; DESIGN.md §Cluster):
# each is a Broker as above, its --listen endpoint the entry at its index of the list.

def partition_of(topic, partitions):
    """The partition of a topic name (proto/partition.h): FNV-1a 64 of its bytes, mod P."""
    return fnv1a64(topic.encode() if isinstance(topic, str) else topic) % partitions


class Cluster:
    """`n` brokers of one cluster with `partitions` partitions, on loopback (or on `hosts[i]`,
    an address of this machine each broker binds and is dialled at). `extra_args` go to every
    broker after the cluster flags; args(i, ...) builds a node's flags with something changed,
    for restarts with a wrong configuration."""

    def __init__(self, workdir, n, partitions, extra_args=(), hosts=None):
        self.workdir = Path(workdir)
        self.partitions = partitions
        self.common_args = list(extra_args)
        self.brokers = [Broker(self.workdir / f"node{i}") for i in range(n)]
        for i, b in enumerate(self.brokers):
            host = hosts[i] if hosts else "127.0.0.1"
            for attr in ("listen", "live", "listen_bind", "live_bind"):
                setattr(b, attr, getattr(b, attr).replace("127.0.0.1", host))
        self.endpoints = [b.listen for b in self.brokers]
        for i, b in enumerate(self.brokers):
            b.extra_args = self.args(i)

    def args(self, i, node_id=None, partitions=None, endpoints=None):
        return ["--cluster", ",".join(endpoints or self.endpoints),
                "--node-id", str(i if node_id is None else node_id),
                "--partitions", str(partitions or self.partitions), *self.common_args]

    def __getitem__(self, i):
        return self.brokers[i]

    def __len__(self):
        return len(self.brokers)

    def owner_index(self, topic):
        return partition_of(topic, self.partitions) % len(self.brokers)

    def owner(self, topic):
        return self.brokers[self.owner_index(topic)]

    def topics(self, prefix, count, owner=None, partitions=None):
        """`count` topic names prefix.0, prefix.1, ... skipping names whose partition's owner is
        not `owner` (an index) or whose partition is not in `partitions`."""
        out = []
        for k in range(100000):
            t = f"{prefix}.{k}"
            p = partition_of(t, self.partitions)
            if owner is not None and p % len(self.brokers) != owner:
                continue
            if partitions is not None and p not in partitions:
                continue
            out.append(t)
            if len(out) == count:
                return out
        raise AssertionError(f"no {count} topics {prefix}.* for owner {owner}")

    def start(self, timeout=READY_TIMEOUT_S):
        for b in self.brokers:
            b.start(timeout)
        self.wait_peers(timeout=timeout)
        return self

    def peer_states(self, i):
        """{peer endpoint: "up" | "down"} as broker i's log of this start last reported them."""
        states = {}
        for m in re.finditer(r"event=peer_(up|down) peer=(\S+)", self.brokers[i].stderr_text()):
            states[m.group(2)] = m.group(1)
        return states

    def wait_peers(self, indices=None, timeout=READY_TIMEOUT_S):
        """Until every running broker (of `indices`) sees every other running one up: the
        cluster forwards publishes between them."""
        deadline = time.monotonic() + timeout
        while True:
            running = [i for i, b in enumerate(self.brokers) if b.alive()]
            missing = [(i, self.endpoints[j]) for i in (indices or running) for j in running
                       if j != i and self.peer_states(i).get(self.endpoints[j]) != "up"]
            if not missing:
                return
            assert time.monotonic() < deadline, f"peers not up after {timeout} s: {missing}"
            time.sleep(0.05)

    def kill(self, i, sig=signal.SIGKILL, edges=(), timeout=READY_TIMEOUT_S):
        """Stop broker i with `sig`; returns once every other running broker, and each of
        `edges`, counts it down (so nothing that follows races their failure detection)."""
        rc = self.brokers[i].kill(sig)
        ep = self.endpoints[i]
        deadline = time.monotonic() + timeout
        for j, b in enumerate(self.brokers):
            while j != i and b.alive() and self.peer_states(j).get(ep) == "up":
                assert time.monotonic() < deadline, f"broker {j} still sees {ep} up"
                time.sleep(0.05)
        for e in edges:
            while any(x["endpoint"] == ep and x["up"]
                      for x in requests.get(e.url("/readyz"), timeout=2).json()["brokers"]):
                assert time.monotonic() < deadline, f"edge {e.base} still sees {ep} up"
                time.sleep(0.05)
        return rc

    def restart(self, i, edges=(), timeout=READY_TIMEOUT_S):
        """kill(i) if it runs, start it again on its data (with its current extra_args and
        env), and wait until its peers and `edges` see the whole cluster again."""
        if self.brokers[i].alive():
            self.kill(i, edges=edges, timeout=timeout)
        self.brokers[i].start(timeout)
        self.wait_peers(timeout=timeout)
        for e in edges:
            self.wait_edge(e, timeout)

    def wait_edge(self, edge, timeout=READY_TIMEOUT_S):
        """Until `edge`'s /readyz is 200 with every broker of the cluster up and no partition
        unavailable; returns the body."""
        deadline = time.monotonic() + timeout
        body = None
        while True:
            try:
                r = requests.get(edge.url("/readyz"), timeout=2)
                body = r.json()
                if r.status_code == 200 and not body["unavailable_partitions"] and \
                        [x["endpoint"] for x in body["brokers"]] == self.endpoints and \
                        all(x["up"] for x in body["brokers"]):
                    return body
            except (requests.RequestException, ValueError) as e:
                body = repr(e)
            assert edge.alive(), f"herald-edge exited:\n{edge.stderr_text()}"
            assert time.monotonic() < deadline, \
                f"edge does not see the whole cluster after {timeout} s: {body}"
            time.sleep(0.05)

    def stop(self):
        for b in self.brokers:
            b.report_unexpected_exit()
            b.stop()


@pytest.fixture
def cluster(tmp_path):
    """cluster(n=3, partitions=12, *extra_args, start=True, hosts=None): a started Cluster.
    Brokers send heartbeats and Hellos every 200 ms unless extra_args say otherwise."""
    made = []

    def make(n=3, partitions=12, *extra_args, start=True, hosts=None, name=None):
        if "--heartbeat-interval" not in extra_args:
            extra_args = ("--heartbeat-interval", "200", *extra_args)
        c = Cluster(tmp_path / (name or f"cluster{len(made)}"), n, partitions, extra_args, hosts)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.stop()
