"""Shared fixtures of Herald's integration suite: real herald-broker processes on loopback with
temporary LMDB directories, a ZeroMQ client speaking proto/herald.proto, and the `herald` CLI.

Environment (set by CTest, see CMakeLists.txt here):
  HERALD_BUILD_DIR   build tree holding broker/herald-broker and cli/herald
  HERALD_SOURCE_DIR  source tree (proto/herald.proto, docs/examples/)
Both default to the checkout this file lives in (<repo>/build and <repo>).

Every process started here is ended by PID in fixture teardown, and every wait is bounded in
time: a test that hangs is a failing test, never a stuck suite.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
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

class Broker:
    """One herald-broker on loopback: --listen and --live on free ports, --data-dir in tmp.

    start() waits until it answers a heartbeat; stderr goes to a file per start (stderr_text()).
    kill(), terminate() and restart() keep the data dir and ports.
    """

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

    def stderr_text(self):
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout=10.0):
        """Send `sig` and wait for the exit; returns the exit status (negative for a signal)."""
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_process(self.proc)
            raise AssertionError(f"herald-broker did not exit within {timeout} s of {sig!r}:\n"
                                 f"{self.stderr_text()}")

    def terminate(self, timeout=10.0):
        """SIGTERM; asserts a clean exit (status 0)."""
        rc = self.kill(signal.SIGTERM, timeout)
        assert rc == 0, f"herald-broker exited with {rc} on SIGTERM:\n{self.stderr_text()}"
        return rc

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
