"""WebSocket clients for the 3x tests (docs/websocket.md, RFC 6455).

- RawWS: a WebSocket client on a plain socket that writes exactly the bytes a test asks for
  (frame() builds any frame, valid or not: mask bit, RSV bits, opcode, 7/16/64-bit lengths) and
  checks every frame the edge sends (unmasked, RSV clear, a known opcode, control frames short
  and unfragmented, text frames valid UTF-8 holding one JSON object with a "type").
- handshake(): one raw upgrade request, its parsed answer.
- AsyncWS: a client on the `websockets` library (Debian's python3-websockets 10.4, asyncio),
  with request() matching answers by `req` and every other frame kept in order.
- Witness: a RawWS subscriber on its own topic, opened before a test's bad input; check()
  proves the edge still serves it (the other clients are unaffected).

Every read has a deadline: a client that waits for something that never comes fails the test.
"""

import asyncio
import base64
import hashlib
import json
import os
import select
import socket
import struct
import time

import websockets

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
KNOWN_OPCODES = {OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG}


def new_key():
    """A Sec-WebSocket-Key: 16 random bytes in base64."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key):
    """The Sec-WebSocket-Accept a server must answer `key` with (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode, payload=b"", fin=True, rsv=0, mask=True, key=None, length=None):
    """One frame's bytes. `rsv` is the three RSV bits (0..7), `length` overrides the length the
    header declares (the payload sent is `payload` whatever it says); the length is written in
    the shortest form (7, 16 or 64 bits) unless `length` forces a longer one."""
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 1 << 16:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4) if key is None else key
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code=None, reason=b""):
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack(">H", code) + reason


def text_frame(obj, **kw):
    """A masked text frame holding `obj` as JSON (or `obj` itself when it is bytes or str)."""
    if not isinstance(obj, (bytes, str)):
        obj = json.dumps(obj)
    return frame(OP_TEXT, obj, **kw)


class Frame:
    __slots__ = ("fin", "rsv", "opcode", "payload")

    def __init__(self, fin, rsv, opcode, payload):
        self.fin, self.rsv, self.opcode, self.payload = fin, rsv, opcode, payload

    def json(self):
        return json.loads(self.payload)

    def close_code(self):
        """(code, reason) of a close frame; (None, "") when it has no body."""
        assert self.opcode == OP_CLOSE
        if not self.payload:
            return None, ""
        assert len(self.payload) >= 2, f"close frame body of one byte: {self.payload!r}"
        return struct.unpack(">H", self.payload[:2])[0], self.payload[2:].decode("utf-8")

    def __repr__(self):
        p = self.payload if len(self.payload) <= 80 else self.payload[:77] + b"..."
        return f"Frame(fin={self.fin}, rsv={self.rsv}, op={self.opcode:#x}, {p!r})"


class Closed(AssertionError):
    """The edge closed the TCP connection (EOF or reset) while a frame was awaited."""


def parse_head(data):
    """(status, {lower-case name: value}, reason phrase) of a response head (bytes)."""
    lines = data.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        assert name not in headers, f"header {name} twice: {data!r}"  # none here may repeat
        headers[name] = value.strip()
    return int(status), headers, reason[0] if reason else ""


def upgrade_request(path="/v1/ws", key=None, protocol="herald.v1", headers=None,
                    version="HTTP/1.1", method="GET", omit=()):
    """The bytes of an upgrade request. `headers` adds or replaces fields (None drops one);
    `omit` names default fields to leave out."""
    fields = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": key or new_key(), "Sec-WebSocket-Version": "13"}
    if protocol is not None:
        fields["Sec-WebSocket-Protocol"] = protocol
    for name in omit:
        fields.pop(name, None)
    for name, value in (headers or {}).items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return (head + "\r\n").encode(), fields.get("Sec-WebSocket-Key")


def read_head(sock, timeout=10.0):
    """Read a response head; returns (head bytes, bytes after it)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no response head within {timeout} s: {buf!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"EOF before a response head: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


class Answer:
    """A handshake answer that is not 101: status, headers, body (read to its Content-Length)."""

    def __init__(self, status, headers, reason, body):
        self.status, self.headers, self.reason, self.body = status, headers, reason, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Answer({self.status} {self.reason}, {self.headers}, {self.body[:300]!r})"


def handshake(edge, request, timeout=10.0):
    """Send a raw upgrade request to `edge`; returns (Answer, RawWS or None): a RawWS on the
    open connection for a 101, else the answer with its whole body and the socket closed."""
    sock = socket.create_connection((edge.host, edge.port), timeout=timeout)
    try:
        sock.sendall(request)
        head, rest = read_head(sock, timeout)
        status, headers, reason = parse_head(head)
        if status == 101:
            return Answer(status, headers, reason, b""), RawWS(sock=sock, buf=rest)
        n = int(headers.get("content-length", "0"))
        deadline = time.monotonic() + timeout
        while len(rest) < n:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        sock.close()
        return Answer(status, headers, reason, rest[:n]), None
    except BaseException:
        sock.close()
        raise


class RawWS:
    """A WebSocket connection on a plain socket (see the module docstring).

    RawWS(edge, path) upgrades a new connection and asserts the 101; RawWS(sock=, buf=) wraps a
    socket handshake() upgraded. send() writes raw bytes; recv_frame() returns the next frame
    (control frames included); recv_json() the next text frame's object, answering pings with
    pongs on the way unless auto_pong is off."""

    def __init__(self, edge=None, path="/v1/ws", protocol="herald.v1", headers=None,
                 rcvbuf=None, sock=None, buf=b"", timeout=10.0):
        self.auto_pong = True
        self.pings = 0  # ping frames seen (and answered unless auto_pong is off)
        self.frames = []  # every frame received, in order
        if sock is not None:
            self.sock, self.buf = sock, buf
            self.accept_headers = None
            return
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((edge.host, edge.port))
        req, key = upgrade_request(path, protocol=protocol, headers=headers)
        self.sock.sendall(req)
        head, self.buf = read_head(self.sock, timeout)
        status, self.accept_headers, _ = parse_head(head)
        assert status == 101, (head, self.buf)
        assert self.accept_headers["sec-websocket-accept"] == accept_for(key), head

    # writing --------------------------------------------------------------------------------------
    def send(self, data):
        self.sock.settimeout(10)
        self.sock.sendall(data)

    def send_json(self, obj):
        self.send(text_frame(obj))

    def send_close(self, code=1000, reason=b""):
        self.send(frame(OP_CLOSE, close_payload(code, reason)))

    # reading --------------------------------------------------------------------------------------
    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"ws: nothing more within the time; have {self.buf[-200:]!r}")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise TimeoutError(f"ws: nothing more within the time; have {self.buf[-200:]!r}")
        except ConnectionResetError:
            data = b""
        if not data:
            raise Closed(f"ws: the edge closed the connection; have {self.buf[-200:]!r}")
        self.buf += data

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)

    def recv_frame(self, timeout=10.0):
        """The next frame, checked against what RFC 6455 allows a server to send."""
        deadline = time.monotonic() + timeout
        self._need(2, deadline)
        b0, b1 = self.buf[0], self.buf[1]
        fin, rsv, opcode = bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF
        assert not b1 & 0x80, f"a masked frame from the edge: {self.buf[:16]!r}"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4, deadline)
            n, pos = struct.unpack(">H", self.buf[2:4])[0], 4
            assert n >= 126, f"16-bit length {n} could have been 7-bit"
        elif n == 127:
            self._need(10, deadline)
            n, pos = struct.unpack(">Q", self.buf[2:10])[0], 10
            assert n >= 1 << 16 and n < 1 << 63, f"64-bit length {n}"
        self._need(pos + n, deadline)
        f = Frame(fin, rsv, opcode, bytes(self.buf[pos:pos + n]))
        self.buf = self.buf[pos + n:]
        assert rsv == 0, f"RSV bits set by the edge: {f!r}"
        assert opcode in KNOWN_OPCODES, f"opcode {opcode:#x} from the edge"
        assert opcode != OP_BINARY, f"the edge sent a binary frame: {f!r}"
        if opcode >= 8:
            assert fin and n <= 125, f"bad control frame from the edge: {f!r}"
        self.frames.append(f)
        return f

    def recv_data_frame(self, timeout=10.0):
        """The next text frame (whole: the edge's messages are one frame each); pings are
        answered (auto_pong) and pongs skipped; a close frame raises Closed."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            if f.opcode == OP_PING:
                self.pings += 1
                if self.auto_pong:
                    self.send(frame(OP_PONG, f.payload))
                continue
            if f.opcode == OP_PONG:
                continue
            if f.opcode == OP_CLOSE:
                raise Closed(f"ws: close frame {f.close_code()} while a text frame was awaited")
            assert f.opcode == OP_TEXT and f.fin, f"expected a whole text frame, got {f!r}"
            return f

    def recv_json(self, timeout=10.0):
        f = self.recv_data_frame(timeout)
        obj = json.loads(f.payload.decode("utf-8"))
        assert isinstance(obj, dict) and isinstance(obj.get("type"), str), obj
        return obj

    def recv_until(self, pred, timeout=10.0, what="frame"):
        """JSON frames until one satisfies pred; returns (that frame, the frames before it)."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"ws: no {what} within {timeout} s; got {before[-5:]}")
            obj = self.recv_json(left)
            if pred(obj):
                return obj, before
            before.append(obj)

    def request(self, obj, timeout=10.0):
        """Send a request with a `req` and return (its answer, the frames that came before)."""
        self.send_json(obj)
        return self.recv_until(lambda o: o.get("req") == obj["req"] and
                               o["type"] != "message", timeout, f"answer to {obj['req']!r}")

    def ping(self, req="alive", timeout=10.0):
        answer, _ = self.request({"type": "ping", "req": req}, timeout)
        assert answer == {"type": "pong", "req": req}, answer
        return answer

    def expect_close(self, timeout=5.0, reply=True):
        """Read (dropping data frames) until the edge's close frame; returns (code, reason).
        Then answers it (reply) and asserts the edge closes the TCP connection."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                f = self.recv_frame(max(0.001, deadline - time.monotonic()))
            except Closed:
                raise AssertionError(f"EOF without a close frame; frames: {self.frames[-5:]}")
            if f.opcode == OP_CLOSE:
                break
        code, reason = f.close_code()
        assert len(f.payload) <= 125
        if reply:
            try:
                self.send(frame(OP_CLOSE, f.payload[:2]))
            except OSError:
                pass  # the edge may already have closed the connection: fine
        assert self.eof(max(2.0, deadline - time.monotonic())), \
            f"the edge sent close {code} but kept the TCP connection open"
        return code, reason

    def eof(self, timeout):
        """True when the edge closes the connection within `timeout` s; bytes read meanwhile
        are kept in buf (unparsed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return True
            if not data:
                return True
            self.buf += data
        return False

    def readable(self, timeout=0.0):
        return bool(self.buf) or bool(select.select([self.sock], [], [], timeout)[0])

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Witness:
    """A raw WebSocket subscriber of witness.ws (a topic nobody else uses) on `edge`, opened
    before a test's bad input: check() publishes one more message over HTTP and asserts it has received every witness
    message so far, in order, and still answers an application ping."""

    TOPIC = "witness.ws"

    def __init__(self, edge):
        self.edge = edge
        self.sent = []
        self.got = []
        self.ws = RawWS(edge, f"/v1/ws?topic={self.TOPIC}&cursor=earliest")
        first = self.ws.recv_json()
        assert first["type"] == "subscribed" and first["topics"] == [self.TOPIC], first
        self.ws.ping("witness-start")

    def check(self, timeout=10.0):
        data = f"w{len(self.sent) + 1}"
        self.edge.publish(self.TOPIC, data.encode())
        self.sent.append(data)
        deadline = time.monotonic() + timeout
        while len(self.got) < len(self.sent):
            obj = self.ws.recv_json(max(0.01, deadline - time.monotonic()))
            if obj["type"] == "message":
                self.got.append(obj["data"])
        assert self.got == self.sent, self.got
        self.ws.ping(f"witness-{len(self.sent)}")

    def close(self):
        self.ws.close()


# ---- the websockets library ------------------------------------------------------------------

def ws_url(edge, path="/v1/ws"):
    return f"ws://{edge.host}:{edge.port}{path}"


class AsyncWS:
    """One `websockets` client connection. request() sends a frame with a fresh `req` and
    returns the answer naming it; every frame that is not such an answer (message, reset,
    shutdown, unsolicited ...) goes to `frames`, in arrival order, and to `messages` when it is
    a message. One task reads (pump); requests wait on futures."""

    def __init__(self, conn, keep=None):
        self.conn = conn
        self.keep = keep or (lambda m: m)
        self.frames = []  # every frame that is not an answer to a request
        self.messages = []  # kept form of every message frame
        self.last_id = None  # id of the last message or reset, or the cursor of a shutdown
        self.answers = {}  # req -> future
        self.arrivals = []  # (type, req) of every frame, in arrival order
        self.next_req = 0
        self.closed = None  # the ConnectionClosed that ended the pump
        self.changed = asyncio.Event()
        self.pump_task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def open(cls, edge_or_url, path="/v1/ws", subprotocols=("herald.v1",), keep=None,
                   **kw):
        url = edge_or_url if isinstance(edge_or_url, str) else ws_url(edge_or_url, path)
        kw.setdefault("open_timeout", 10)
        kw.setdefault("close_timeout", 5)
        kw.setdefault("max_size", 8 << 20)
        conn = await websockets.connect(url, subprotocols=list(subprotocols) or None, **kw)
        return cls(conn, keep)

    async def _pump(self):
        try:
            async for raw in self.conn:
                assert isinstance(raw, str), f"a binary frame from the edge: {raw[:50]!r}"
                obj = json.loads(raw)
                assert isinstance(obj, dict) and isinstance(obj.get("type"), str), obj
                req = obj.get("req")
                self.arrivals.append((obj["type"], req))
                fut = self.answers.get(req) if obj["type"] != "message" else None
                if fut is not None and not fut.done():
                    fut.set_result(obj)
                else:
                    if obj["type"] == "message":
                        self.messages.append(self.keep(obj))
                        self.last_id = obj["id"]
                    elif obj["type"] == "reset":
                        self.last_id = obj["id"]
                    elif obj["type"] == "shutdown":
                        self.last_id = obj["cursor"]
                    self.frames.append(obj)
                self.changed.set()
        except websockets.ConnectionClosed as e:
            self.closed = e
        finally:
            if self.closed is None:  # the iterator ends quietly on a normal close
                self.closed = ConnectionError(f"closed with {self.close_code()}")
            for fut in self.answers.values():
                if not fut.done():
                    fut.set_exception(AssertionError(f"connection closed: {self.closed!r}"))
            self.changed.set()

    def new_req(self):
        self.next_req += 1
        return f"r{self.next_req}"

    async def send(self, obj):
        await self.conn.send(obj if isinstance(obj, str) else json.dumps(obj))

    def expect_answer(self, req):
        fut = asyncio.get_running_loop().create_future()
        self.answers[req] = fut
        return fut

    async def request(self, obj, timeout=10.0):
        obj = dict(obj)
        obj.setdefault("req", self.new_req())
        fut = self.expect_answer(obj["req"])
        await self.send(obj)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.answers.pop(obj["req"], None)

    async def subscribe(self, topics, cursor=None, timeout=10.0):
        obj = {"type": "subscribe", "topics": list(topics)}
        if cursor is not None:
            obj["cursor"] = cursor
        answer = await self.request(obj, timeout)
        assert answer["type"] == "subscribed", answer
        return answer

    async def publish(self, topic, data, timeout=10.0, **extra):
        answer = await self.request({"type": "publish", "topic": topic, "data": data, **extra},
                                    timeout)
        assert answer["type"] == "published", answer
        return answer

    async def ping(self, timeout=10.0):
        req = self.new_req()
        answer = await self.request({"type": "ping", "req": req}, timeout)
        assert answer == {"type": "pong", "req": req}, answer
        return answer

    async def wait(self, pred, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        while not pred(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"ws: no {what} within {timeout} s; {len(self.messages)} "
                                     f"messages, last frames {self.frames[-3:]}")
            if self.pump_task.done() and not pred(self):
                raise AssertionError(f"ws: connection closed ({self.closed!r}) before {what}; "
                                     f"{len(self.messages)} messages, frames {self.frames[-3:]}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        return self

    async def wait_messages(self, n, timeout=10.0):
        await self.wait(lambda s: len(s.messages) >= n, timeout, f"{n} messages")
        return self.messages

    async def drain(self, seconds):
        await asyncio.sleep(seconds)
        return self

    async def wait_closed(self, timeout=10.0):
        await asyncio.wait_for(asyncio.shield(self.pump_task), timeout)
        return self.closed

    async def close(self):
        try:
            await asyncio.wait_for(self.conn.close(), 10)
        except (asyncio.TimeoutError, OSError):
            pass
        try:
            await asyncio.wait_for(self.pump_task, 10)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001  (closing regardless)
            pass

    def close_code(self):
        """The code of the close frame the edge sent (None if none came)."""
        rcvd = self.conn.close_rcvd
        return rcvd.code if rcvd is not None else None

    def close_reason(self):
        rcvd = self.conn.close_rcvd
        return rcvd.reason if rcvd is not None else None
