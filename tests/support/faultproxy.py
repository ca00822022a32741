"""A fault-injecting HTTP/1.1 reverse proxy on loopback, for tests.

    with FaultProxy(moto.s3_endpoint) as proxy:          # listens on 127.0.0.1:<free port>
        proxy.add_fault(Fault.status(503, times=2, retry_after=1))
        proxy.add_fault(Fault.reset_after(1 << 20, has_range=False))
        ...  # point the client at proxy.url
        proxy.stats.get_bytes, proxy.stats.requests, proxy.stats.statuses, proxy.stats.log

The proxy sits between a client (boto3, swiftclient, requests) and a loopback server (moto,
Swift's s3api, plain Swift, or a tiny ``http.server``) and misbehaves on request.

Requests pass through byte-exact: the request head (request line, Host, every header, in the
client's spelling and order) and the body (``Content-Length``, ``chunked`` and the
``aws-chunked`` payloads inside them) are copied as they arrived, so AWS SigV4 signatures
stay valid. Each request gets a fresh upstream connection (no pooling state to reason
about), while the client's own connection is kept alive across requests, as boto3 and
urllib3 expect. ``Expect: 100-continue`` is honoured by relaying the upstream's interim
answer. Responses are relayed as they come, except where a fault rewrites them.

Faults are rules checked in order against each request (method, path substring, presence of
a ``Range`` header, ``min_range_bytes``: how many bytes a ranged request asks for at least, so
that a client's one-byte probe ``Range: bytes=0-0`` passes untouched while its body requests
match); the first one with budget left (``times``) applies to that request:

``status``        answer ``code`` (500/503/429...) with an S3-style XML error body and an
                  optional ``Retry-After``; upstream is never contacted.
``reset_after``   relay the head and ``n_bytes`` of body, then abort with a TCP RST
                  (``SO_LINGER`` 0, then close). The proxy first waits (max 1 s) for the
                  client to acknowledge those bytes, so it really holds them.
``truncate``      relay the head and ``n_bytes`` of body, then close cleanly (FIN): the
                  client sees fewer bytes than ``Content-Length`` promised.
``stall``         relay the head and ``n_bytes``, send nothing for ``seconds``, then carry
                  on relaying (a client whose read timeout is longer completes).
``slow``          relay the whole body at ``rate`` bytes per second.
``hold``          send nothing, not even the response head, for ``seconds``, then relay as
                  usual (a server that has not answered yet: a cache waiting on its store).
``wrong_length``  rewrite ``Content-Length`` to the real length + ``delta``. With a positive
                  delta the real body is sent, then the connection is closed (FIN): the
                  client sees a short body. With a negative delta only the advertised
                  (shorter) length is sent and the connection stays usable: the client gets a
                  well-formed 2xx response holding a prefix of the object, which only its own
                  size/ETag/digest checks can catch. Responses without ``Content-Length``
                  (chunked, read-until-close) are relayed unchanged.
``corrupt``       XOR ``length`` bytes at ``offset`` of the body with ``xor`` (same length,
                  headers untouched).
``headers``       rewrite response headers: each name in ``set_headers`` is removed and, if
                  its value is not None, sent with that value instead (a store that lies
                  about metadata, ETags or sizes). Headers that frame the body
                  (Content-Length, Transfer-Encoding) may only be rewritten on HEAD.

Byte positions count the body bytes as sent on the wire (for a chunked response that
includes the chunk framing). A body shorter than ``n_bytes`` is relayed whole, and the
fault's action (RST, FIN, pause) happens after its last byte.

Every client connection whose request matched no fault behaves as a plain proxy; an
unreachable upstream gets a 502. ``stats`` counts requests by method, statuses, faults
applied, client connections, the GET body bytes sent to clients (total and by path), and the
request body bytes relayed upstream (uploads, by method).

Everything is bounded: sockets poll a stop flag every ``POLL`` seconds, ``stop()`` shuts
down every socket, ends stalls and slow bodies at once, and joins all threads (~2 s max).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import socket
import struct
import termios
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

LOOPBACK = "127.0.0.1"
POLL = 0.1  # how often blocked socket calls look at the stop flag
MAX_HEAD = 64 * 1024  # longest request/response head accepted
PIECE = 64 * 1024  # relay granularity
CONTINUE_WAIT = 1.0  # as botocore: send the body anyway if no "100 Continue" comes by then
DRAIN_WAIT = 1.0  # how long reset_after waits for the client to ack what it was sent
LOG_LIMIT = 10_000  # request records kept in Stats.log

S3_ERROR_CODES = {500: "InternalError", 503: "SlowDown", 429: "SlowDown"}


class Kind(str, enum.Enum):
    STATUS = "status"
    RESET = "reset_after"
    TRUNCATE = "truncate"
    STALL = "stall"
    SLOW = "slow"
    WRONG_LENGTH = "wrong_length"
    CORRUPT = "corrupt"
    HEADERS = "headers"
    HOLD = "hold"


@dataclass
class Fault:
    """One rule: what to match, how often (``times``; None = always), and what to do.

    Build them with the class methods (``Fault.status(503, times=2, retry_after=1)``...).
    ``fired`` counts the requests the rule has been applied to.
    """

    kind: Kind
    times: int | None = 1
    method: str | None = "GET"  # None matches every method
    path: str | None = None  # substring of the request target (path and query)
    has_range: bool | None = None  # True: only ranged GETs; False: only whole ones
    min_range_bytes: int = 0  # a ranged request must ask at least this many bytes
    code: int = 503
    retry_after: int | float | str | None = None
    error_code: str | None = None  # <Code> of the XML error; default by status
    body: bytes | None = None  # replaces the whole XML error body
    n_bytes: int = 0  # body bytes relayed before reset/truncate/stall
    seconds: float = 0.0
    rate: float = 0.0  # bytes per second for slow
    delta: int = 0
    offset: int = 0
    length: int = 1
    xor: int = 0xFF
    set_headers: dict[str, str | None] = field(default_factory=dict)
    fired: int = field(default=0, compare=False)

    @classmethod
    def status(
        cls,
        code: int = 503,
        times: int | None = 1,
        *,
        retry_after: int | float | str | None = None,
        error_code: str | None = None,
        body: bytes | None = None,
        **match: Any,
    ) -> Fault:
        return cls(
            Kind.STATUS,
            times,
            code=code,
            retry_after=retry_after,
            error_code=error_code,
            body=body,
            **match,
        )

    @classmethod
    def reset_after(cls, n_bytes: int, times: int | None = 1, **match: Any) -> Fault:
        return cls(Kind.RESET, times, n_bytes=n_bytes, **match)

    @classmethod
    def truncate(cls, n_bytes: int, times: int | None = 1, **match: Any) -> Fault:
        return cls(Kind.TRUNCATE, times, n_bytes=n_bytes, **match)

    @classmethod
    def stall(cls, after_bytes: int, seconds: float, times: int | None = 1, **match: Any) -> Fault:
        return cls(Kind.STALL, times, n_bytes=after_bytes, seconds=seconds, **match)

    @classmethod
    def slow(cls, bytes_per_second: float, times: int | None = 1, **match: Any) -> Fault:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        return cls(Kind.SLOW, times, rate=bytes_per_second, **match)

    @classmethod
    def hold(cls, seconds: float, times: int | None = 1, **match: Any) -> Fault:
        return cls(Kind.HOLD, times, seconds=seconds, **match)

    @classmethod
    def wrong_length(cls, delta: int, times: int | None = 1, **match: Any) -> Fault:
        return cls(Kind.WRONG_LENGTH, times, delta=delta, **match)

    @classmethod
    def corrupt(
        cls, offset: int, length: int = 1, times: int | None = 1, *, xor: int = 0xFF, **match: Any
    ) -> Fault:
        if not 1 <= xor <= 0xFF:
            raise ValueError("xor must be 1..255 so that every byte really changes")
        return cls(Kind.CORRUPT, times, offset=offset, length=length, xor=xor, **match)

    @classmethod
    def headers(
        cls, set_headers: dict[str, str | None], times: int | None = 1, **match: Any
    ) -> Fault:
        return cls(Kind.HEADERS, times, set_headers=dict(set_headers), **match)

    @property
    def remaining(self) -> int | None:
        return None if self.times is None else max(0, self.times - self.fired)

    def matches(self, req: _Request) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.method is not None and req.method != self.method.upper():
            return False
        if self.path is not None and self.path not in req.target:
            return False
        spec = req.header("range")
        if self.min_range_bytes and spec is not None and _range_bytes(spec) < self.min_range_bytes:
            return False
        return self.has_range is None or self.has_range == (spec is not None)


def _range_bytes(spec: str) -> float:
    """How many bytes ``bytes=FIRST-LAST`` asks for; open or odd ranges count as many."""
    first, dash, last = spec.strip().removeprefix("bytes=").partition("-")
    if dash and first.isdigit() and last.isdigit():
        return int(last) - int(first) + 1
    return float("inf")


@dataclass
class RequestRecord:
    method: str
    target: str
    range: str | None
    fault: str | None
    status: int | None = None  # None: no response head was sent to the client
    body_bytes: int = 0  # response body bytes sent to the client


class Stats:
    """Thread-safe counters; every property returns a snapshot copy.

    Counters are updated just *before* the bytes they count are handed to the socket, so a
    client that has read a whole response always finds it counted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: Counter[str] = Counter()
            self._statuses: Counter[int] = Counter()
            self._faults: Counter[str] = Counter()
            self._get_bytes = 0
            self._get_bytes_by_path: Counter[str] = Counter()
            self._sent_bytes: Counter[str] = Counter()
            self._connections = 0
            self._log: list[RequestRecord] = []

    @property
    def requests(self) -> dict[str, int]:
        """Requests received, by method."""
        with self._lock:
            return dict(self._requests)

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self._requests.values())

    @property
    def statuses(self) -> dict[int, int]:
        """Responses sent to clients, by status code (synthetic fault answers included)."""
        with self._lock:
            return dict(self._statuses)

    @property
    def faults(self) -> dict[str, int]:
        """Faults applied, by kind."""
        with self._lock:
            return dict(self._faults)

    @property
    def get_bytes(self) -> int:
        """Response body bytes relayed to clients for GET requests, after faults.

        Whatever the upstream answered (error bodies too); the XML bodies of injected
        ``status`` faults are not counted, since the store never served them.
        """
        with self._lock:
            return self._get_bytes

    @property
    def get_bytes_by_path(self) -> dict[str, int]:
        """Same, by request path (without the query string, as spelled on the wire)."""
        with self._lock:
            return dict(self._get_bytes_by_path)

    @property
    def sent_bytes(self) -> dict[str, int]:
        """Request body bytes relayed upstream (uploads), by method, as sent on the wire."""
        with self._lock:
            return dict(self._sent_bytes)

    def _sent(self, method: str, n: int) -> None:
        with self._lock:
            self._sent_bytes[method] += n

    @property
    def connections(self) -> int:
        """Client connections accepted (a keep-alive client reuses one)."""
        with self._lock:
            return self._connections

    @property
    def log(self) -> list[RequestRecord]:
        """One record per request, in arrival order (the first LOG_LIMIT ones)."""
        with self._lock:
            return [replace(record) for record in self._log]

    def get_bytes_matching(self, fragment: str) -> int:
        """GET body bytes sent for every path that contains ``fragment`` (raw or unquoted)."""
        with self._lock:
            return sum(
                n
                for path, n in self._get_bytes_by_path.items()
                if fragment in path or fragment in unquote(path)
            )

    def _connection(self) -> None:
        with self._lock:
            self._connections += 1

    def _open(self, req: _Request, fault: Fault | None) -> RequestRecord:
        record = RequestRecord(
            req.method, req.target, req.header("range"), fault.kind.value if fault else None
        )
        with self._lock:
            self._requests[req.method] += 1
            if fault is not None:
                self._faults[fault.kind.value] += 1
            if len(self._log) < LOG_LIMIT:
                self._log.append(record)
        return record

    def _status(self, record: RequestRecord, code: int) -> None:
        with self._lock:
            record.status = code
            self._statuses[code] += 1

    def _body(self, record: RequestRecord, req: _Request, n: int) -> None:
        with self._lock:
            record.body_bytes += n
            if req.method == "GET":
                self._get_bytes += n
                self._get_bytes_by_path[req.path] += n


class _Stopped(Exception):
    """The proxy is stopping: unwind this connection's thread."""


class _Closed(Exception):
    """The connection is gone (peer closed it, or a fault ended it on purpose)."""


class _Reader:
    """Buffered reads from a socket that poll the stop flag and give up after ``idle``."""

    def __init__(self, sock: socket.socket, stop: threading.Event, idle: float) -> None:
        self.sock = sock
        self.stop = stop
        self.idle = idle
        self.buf = bytearray()
        sock.settimeout(POLL)

    def _recv(self, deadline: float | None = None) -> bytes:
        """One recv; b"" at EOF. Raises TimeoutError once ``deadline`` (or idle) passed."""
        limit = time.monotonic() + self.idle
        if deadline is not None:
            limit = min(limit, deadline)
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return self.sock.recv(PIECE)
            except TimeoutError:
                if time.monotonic() >= limit:
                    raise TimeoutError("no data from peer") from None

    def _fill(self, deadline: float | None = None) -> bool:
        data = self._recv(deadline)
        self.buf += data
        return bool(data)

    def read_until(self, delim: bytes, limit: int, deadline: float | None = None) -> bytes:
        """Bytes up to and including ``delim``; b"" on EOF before any byte."""
        start = 0
        while True:
            idx = self.buf.find(delim, start)
            if idx >= 0:
                return self.take(idx + len(delim))
            if len(self.buf) > limit:
                raise ValueError("head or line too long")
            start = max(0, len(self.buf) - len(delim) + 1)
            if not self._fill(deadline):
                if self.buf:
                    raise _Closed("EOF inside a head or line")
                return b""

    def take(self, n: int) -> bytes:
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one); b"" at EOF."""
        if not self.buf and not self._fill():
            return b""
        return self.take(min(n, len(self.buf)))

    def read_exact(self, n: int) -> Iterator[bytes]:
        """Exactly ``n`` bytes in pieces; _Closed if the peer stops early."""
        while n > 0:
            data = self.read_some(min(n, PIECE))
            if not data:
                raise _Closed("EOF inside a body")
            n -= len(data)
            yield data

    def read_to_eof(self) -> Iterator[bytes]:
        while data := self.read_some(PIECE):
            yield data

    def read_chunked(self) -> Iterator[bytes]:
        """A chunked body, framing and trailers included, exactly as received."""
        while True:
            line = self.read_until(b"\n", MAX_HEAD)
            if not line:
                raise _Closed("EOF inside a chunked body")
            yield line
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            yield from self.read_exact(size + 2)  # data + CRLF
        while True:  # trailer fields, then the empty line
            line = self.read_until(b"\n", MAX_HEAD)
            if not line:
                raise _Closed("EOF inside chunked trailers")
            yield line
            if line.strip() == b"":
                return


def _send(
    sock: socket.socket, data: bytes | memoryview, stop: threading.Event, idle: float
) -> None:
    """sendall that keeps polling the stop flag (sendall with a timeout loses track)."""
    view = memoryview(data)
    limit = time.monotonic() + idle
    while view:
        if stop.is_set():
            raise _Stopped
        try:
            sent = sock.send(view)
        except TimeoutError:
            if time.monotonic() >= limit:
                raise TimeoutError("peer does not read") from None
            continue
        view = view[sent:]
        limit = time.monotonic() + idle


def _parse_head(head: bytes) -> tuple[list[str], list[tuple[str, str]]]:
    """Start line split in three, and (lower-case name, value) header pairs."""
    lines = head.decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) < 2:
        raise ValueError(f"bad start line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return start, headers


class _Message:
    """Header access shared by requests and responses."""

    headers: list[tuple[str, str]]
    version: str

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for t in (self.header(name) or "").split(",") if t.strip()}

    @property
    def chunked(self) -> bool:
        return "chunked" in self.tokens("transfer-encoding")

    @property
    def content_length(self) -> int | None:
        value = self.header("content-length")
        if value is None:
            return None
        length = int(value.split(",")[0])
        if length < 0:
            raise ValueError("negative Content-Length")
        return length

    @property
    def wants_close(self) -> bool:
        conn = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" not in conn
        return "close" in conn


class _Request(_Message):
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        start, self.headers = _parse_head(raw)
        if len(start) != 3:
            raise ValueError("bad request line")
        self.method, self.target, self.version = start[0].upper(), start[1], start[2]

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def expects_continue(self) -> bool:
        return (self.header("expect") or "").lower() == "100-continue"

    def body(self, reader: _Reader) -> Iterator[bytes]:
        if self.chunked:
            return reader.read_chunked()
        return reader.read_exact(self.content_length or 0)


class _Response(_Message):
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        start, self.headers = _parse_head(raw)
        self.version = start[0]
        self.code = int(start[1])

    def has_body(self, method: str) -> bool:
        return method != "HEAD" and self.code not in (204, 304) and self.code >= 200

    def with_headers(self, changes: dict[str, str | None]) -> bytes:
        """The raw head with the named headers dropped, and re-added where given a value."""
        drop = {name.lower() for name in changes}
        lines = [
            line
            for line in self.raw.split(b"\r\n")
            if line.split(b":", 1)[0].strip().lower().decode("latin-1") not in drop
        ]
        while lines and not lines[-1]:
            lines.pop()
        lines += [f"{k}: {v}".encode("latin-1") for k, v in changes.items() if v is not None]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def with_length(self, length: int) -> bytes:
        """The raw head with every Content-Length value replaced (nothing else changes)."""
        lines = self.raw.split(b"\r\n")
        for i, line in enumerate(lines):
            if line.split(b":", 1)[0].strip().lower() == b"content-length":
                lines[i] = b"Content-Length: " + str(length).encode()
        return b"\r\n".join(lines)


def _s3_error(fault: Fault, req: _Request) -> bytes:
    if fault.body is not None:
        return fault.body
    code = fault.error_code or S3_ERROR_CODES.get(fault.code, "ServiceUnavailable")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by faultproxy</Message>"
        f"<Resource>{req.path}</Resource><RequestId>faultproxy</RequestId></Error>"
    ).encode()


def _status_head(fault: Fault, body: bytes, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {fault.code} Injected Fault",
        "Content-Type: application/xml",
        f"Content-Length: {len(body)}",
        "x-amz-request-id: faultproxy",
    ]
    if fault.retry_after is not None:
        lines.append(f"Retry-After: {fault.retry_after}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _unacked_bytes(sock: socket.socket) -> int:
    """Bytes the peer has not acknowledged yet (Linux SIOCOUTQ); 0 where unsupported."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except (OSError, AttributeError):
        return 0
    return int(struct.unpack("i", out)[0])


class _Exchange:
    """One request/response on a client connection, with its fault (if any)."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: socket.socket,
        reader: _Reader,
        req: _Request,
        fault: Fault | None,
    ) -> None:
        self.proxy = proxy
        self.record = proxy.stats._open(req, fault)
        self.client = client
        self.reader = reader
        self.req = req
        self.fault = fault
        self.kind = fault.kind if fault else None
        self.sent = 0  # response body bytes sent to the client
        self.triggered = False  # the reset/truncate/stall point has been handled
        self.slow_start = 0.0
        self.body_incomplete = False  # the client's body was not read to its end

    # -- sending to the client ----------------------------------------------------------
    def send_client(self, data: bytes) -> None:
        _send(self.client, data, self.proxy._stop, self.proxy.idle_timeout)

    def send_head(self, head: bytes, code: int) -> None:
        self.proxy.stats._status(self.record, code)
        self.send_client(head)

    def write_body(self, data: bytes) -> None:
        if self.kind is Kind.CORRUPT:
            data = self._corrupted(data)
        if self.kind is Kind.SLOW:
            self._throttled(data)
            return
        self._count(len(data))
        self.send_client(data)

    def _count(self, n: int) -> None:
        self.sent += n
        self.proxy.stats._body(self.record, self.req, n)

    def _corrupted(self, data: bytes) -> bytes:
        assert self.fault is not None
        lo = max(self.fault.offset, self.sent)
        hi = min(self.fault.offset + self.fault.length, self.sent + len(data))
        if lo >= hi:
            return data
        buf = bytearray(data)
        for i in range(lo - self.sent, hi - self.sent):
            buf[i] ^= self.fault.xor
        return bytes(buf)

    def _throttled(self, data: bytes) -> None:
        """Send in small slices, each no earlier than its due time at ``rate``."""
        assert self.fault is not None
        rate = self.fault.rate
        if not self.slow_start:
            self.slow_start = time.monotonic()
        step = max(1, int(rate / 20))  # about 20 sends per second
        for i in range(0, len(data), step):
            due = self.slow_start + self.sent / rate  # self.sent: body bytes already out
            if self.proxy._stop.wait(max(0.0, due - time.monotonic())):
                raise _Stopped
            piece = data[i : i + step]
            self._count(len(piece))
            self.send_client(piece)

    # -- the fault's cut point ----------------------------------------------------------
    def _cut_point(self) -> int | None:
        if self.kind in (Kind.RESET, Kind.TRUNCATE, Kind.STALL) and not self.triggered:
            assert self.fault is not None
            return self.fault.n_bytes
        return None

    def feed(self, data: bytes) -> None:
        """Relay one piece of body, acting at the cut point; _Closed once a fault ended it."""
        while data:
            point = self._cut_point()
            if point is not None and self.sent >= point:
                self.trigger()
                continue
            room = len(data) if point is None else point - self.sent
            self.write_body(data[:room])
            data = data[room:]

    def trigger(self) -> None:
        """Do the reset/truncate/stall action (once)."""
        self.triggered = True
        assert self.fault is not None
        if self.kind is Kind.STALL:
            if self.proxy._stop.wait(self.fault.seconds):
                raise _Stopped
            return
        if self.kind is Kind.RESET:
            self._wait_drained()
            # Linger on with timeout 0: close() discards the socket and sends RST, not FIN.
            self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:  # TRUNCATE: an orderly FIN after the bytes already queued
            with contextlib.suppress(OSError):
                self.client.shutdown(socket.SHUT_WR)
        self.client.close()
        raise _Closed(self.kind.value if self.kind else "closed")

    def _wait_drained(self) -> None:
        """Let the client ack what it was sent: an RST drops data still in flight."""
        deadline = time.monotonic() + DRAIN_WAIT
        while _unacked_bytes(self.client) and time.monotonic() < deadline:
            if self.proxy._stop.wait(0.005):
                raise _Stopped

    # -- the exchange ---------------------------------------------------------------------
    def run(self) -> bool:
        """Serve the request; True if the client connection may carry another one."""
        if self.kind is Kind.STATUS:
            return self.answer_status()
        if self.kind is Kind.HOLD:
            assert self.fault is not None
            if self.proxy._stop.wait(self.fault.seconds):
                raise _Stopped
        try:
            up = self.proxy._connect_upstream()
        except OSError:
            return self.bad_gateway()
        try:
            return self.forward(up)
        finally:
            self.proxy._untrack(up)

    def bad_gateway(self) -> bool:
        """Upstream unreachable: say so rather than close silently."""
        self.send_head(
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 502
        )
        return False

    def answer_status(self) -> bool:
        assert self.fault is not None
        # A client waiting for "100 Continue" will not send its body after a final answer,
        # so the connection's state is unknown afterwards: close it. Otherwise drain the body
        # so that the next request on this connection starts where it should.
        close = self.req.expects_continue or self.req.wants_close
        if not close:
            for _ in self.req.body(self.reader):
                pass
        body = _s3_error(self.fault, self.req)
        self.send_head(_status_head(self.fault, body, close), self.fault.code)
        if self.req.method != "HEAD":
            # Not counted in Stats.get_bytes: those are the bytes the store served.
            self.send_client(body)
        return not close

    def forward(self, up: socket.socket) -> bool:
        up_reader = _Reader(up, self.proxy._stop, self.proxy.idle_timeout)
        self.send_up(up, self.req.raw)
        resp: _Response | None = None
        if self.req.expects_continue:
            resp = self.await_continue(up_reader)
        if resp is None:
            self.send_body_up(up)
            resp = self.final_response(up_reader)
            keep = self.relay(resp, up_reader)
            return keep and not self.req.wants_close and not self.body_incomplete
        # Final answer instead of "100 Continue": the body was never sent. Closing the
        # client connection afterwards keeps both sides from disagreeing about it.
        self.relay(resp, up_reader)
        return False

    def send_up(self, up: socket.socket, data: bytes) -> None:
        _send(up, data, self.proxy._stop, self.proxy.idle_timeout)

    def send_body_up(self, up: socket.socket) -> None:
        try:
            for piece in self.req.body(self.reader):
                self.send_up(up, piece)
                self.proxy.stats._sent(self.req.method, len(piece))
        except (BrokenPipeError, ConnectionResetError):
            # Upstream answered early (e.g. 403) and hung up; relay that answer, and drop the
            # client connection after it since its body was not read to the end.
            self.body_incomplete = True

    def await_continue(self, up_reader: _Reader) -> _Response | None:
        """Relay the upstream's "100 Continue"; return a final response if it sent one."""
        deadline = time.monotonic() + CONTINUE_WAIT
        try:
            head = up_reader.read_until(b"\r\n\r\n", MAX_HEAD, deadline)
        except TimeoutError:
            return None  # silent upstream: the client sends its body after its own wait
        if not head:
            raise _Closed("upstream closed before answering")
        resp = _Response(head)
        if resp.code == 100:
            self.send_client(head)
            return None
        if 100 < resp.code < 200:
            self.send_client(head)
            return self.final_response(up_reader)
        return resp

    def final_response(self, up_reader: _Reader) -> _Response:
        """The next non-1xx response head; interim ones go to the client as they are."""
        while True:
            head = up_reader.read_until(b"\r\n\r\n", MAX_HEAD)
            if not head:
                raise _Closed("upstream closed before answering")
            resp = _Response(head)
            if resp.code >= 200:
                return resp
            self.send_client(head)

    def relay(self, resp: _Response, up_reader: _Reader) -> bool:
        """Send the response on, applying the fault; True if the connection stays usable."""
        if self.kind is Kind.HEADERS:
            assert self.fault is not None
            raw = resp.with_headers(self.fault.set_headers)
            if not resp.has_body(self.req.method):
                self.send_head(raw, resp.code)
                return not resp.wants_close
            resp = _Response(raw)
        if not resp.has_body(self.req.method):
            self.send_head(resp.raw, resp.code)
            return not resp.wants_close
        if resp.chunked:
            body, keep = up_reader.read_chunked(), True
        elif resp.content_length is not None:
            body, keep = up_reader.read_exact(resp.content_length), True
        else:
            body, keep = up_reader.read_to_eof(), False
        limit: int | None = None
        head = resp.raw
        if self.kind is Kind.WRONG_LENGTH and resp.content_length is not None and not resp.chunked:
            assert self.fault is not None
            advertised = max(0, resp.content_length + self.fault.delta)
            head = resp.with_length(advertised)
            limit = advertised
            keep = keep and self.fault.delta <= 0  # too long a promise: FIN after the body
        self.send_head(head, resp.code)
        self.relay_body(body, limit)
        if self._cut_point() is not None:  # body shorter than n_bytes: act at its end
            self.trigger()
        return keep and not resp.wants_close

    def relay_body(self, body: Iterator[bytes], limit: int | None) -> None:
        for piece in body:
            if limit is not None:
                if self.sent >= limit:
                    return  # the rest is dropped: its connection to upstream closes anyway
                piece = piece[: limit - self.sent]
            self.feed(piece)


class FaultProxy:
    """Reverse proxy from ``self.url`` to ``upstream`` with programmable faults.

    ``with FaultProxy("http://127.0.0.1:9000") as proxy: ...`` or ``start()`` / ``stop()``.
    """

    def __init__(
        self,
        upstream: str,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        idle_timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout  # longest silence from a peer inside an exchange
        self.connect_timeout = connect_timeout
        self.stats = Stats()
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()

    # -- public API -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        if self._listener is not None:
            raise RuntimeError("already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(POLL)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close every socket, end stalls, join every thread (within ``timeout``)."""
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        if self._listener is not None:
            sockets.append(self._listener)
        for sock in sockets:  # wakes blocked calls; the owning thread closes its socket
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in sockets:
            sock.close()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def reset_stats(self) -> None:
        self.stats.reset()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no client connection is being served: after a client was killed, the
        exchanges it left in flight end (and are counted) before a test resets the stats."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = [t for t in self._threads if t.name == "faultproxy-conn"]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(busy)} client connections still served")
            time.sleep(0.02)

    def __enter__(self) -> FaultProxy:
        return self.start() if self._listener is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        def run() -> None:
            try:
                target(*args)  # type: ignore[operator]
            finally:
                with self._lock:
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener shut down by stop()
            self._track(client)
            self.stats._connection()
            self._spawn(self._serve_client, "faultproxy-conn", client)

    def _connect_upstream(self) -> socket.socket:
        """A fresh upstream connection per request, tracked so that stop() can end it."""
        up = socket.create_connection(self.upstream, timeout=self.connect_timeout)
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(up)
        return up

    def _take_fault(self, req: _Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(req):
                    fault.fired += 1
                    return fault
        return None

    def _serve_client(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Between requests a keep-alive client may stay silent as long as it likes.
        reader = _Reader(client, self._stop, idle=float("inf"))
        try:
            while self._serve_one(client, reader):
                reader.idle = float("inf")
        except (_Stopped, _Closed, OSError, ValueError):
            pass  # TimeoutError is an OSError: a peer went silent mid-exchange
        finally:
            self._untrack(client)

    def _serve_one(self, client: socket.socket, reader: _Reader) -> bool:
        """One request on ``client``; True to wait for the next one."""
        head = b"\r\n"
        while head and not head.strip(b"\r\n"):  # skip stray CRLFs (RFC 9112 section 2.2)
            head = reader.read_until(b"\r\n\r\n", MAX_HEAD)
        head = head.lstrip(b"\r\n")
        if not head:
            return False  # the client closed its idle connection
        reader.idle = self.idle_timeout
        try:
            req = _Request(head)
            req.content_length  # noqa: B018 -- validates it before anything is sent
        except ValueError:
            _send(
                client,
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self._stop,
                self.idle_timeout,
            )
            return False
        fault = self._take_fault(req)
        return _Exchange(self, client, reader, req, fault).run()
