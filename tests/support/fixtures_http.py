"""A tiny threaded HTTP server on 127.0.0.1 for fixture APIs (Library, Hub, object storage).

Handlers are plain functions of a Request; every request is logged with its headers so
tests can assert what was (not) sent, e.g. that no Authorization header reached a
presigned URL. `serve_bytes` answers GETs of a blob with or without Range support.
`hold_until(n)` holds requests until n are in flight at once: a test of a client that
should send n requests in parallel reads `max_in_flight`, with no bound on time.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str] = field(default_factory=dict)  # a POSTed urlencoded body


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    cut: int | None = None  # send only this many body bytes, then drop the connection


Handler = Callable[[Request], Response]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


def serve_bytes(
    req: Request, data: bytes, *, ranges: bool = True, etag: str | None = None
) -> Response:
    """200 with the whole body, or 206 for a satisfiable `Range: bytes=a-b`."""
    headers = {"Content-Type": "application/octet-stream"}
    if etag:
        headers["ETag"] = f'"{etag}"'
    spec = req.headers.get("range", "")
    if ranges:
        headers["Accept-Ranges"] = "bytes"
    if ranges and spec.startswith("bytes="):
        first, _, last = spec[6:].partition("-")
        start = int(first)
        end = min(int(last) if last else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return Response(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(206, data[start : end + 1], headers)
    return Response(200, data, headers)


class FixtureServer:
    """ThreadingHTTPServer on a random loopback port; `handler` answers every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)  # a request came in or went out
        self.in_flight = 0
        self.max_in_flight = 0  # most requests being answered at once
        self._hold = 0  # hold_until's n (0: answer at once)
        self._hold_timeout = 0.0
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner._serve(self, "GET")

            def do_HEAD(self) -> None:  # noqa: N802
                owner._serve(self, "HEAD")

            def do_POST(self) -> None:  # noqa: N802
                owner._serve(self, "POST")

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        req = Request(method, parts.path, query, {k.lower(): v for k, v in h.headers.items()})
        if method == "POST":
            length = min(int(h.headers.get("Content-Length") or 0), 1 << 20)
            form = parse_qs(h.rfile.read(length).decode(errors="replace"))
            req.form = {k: v[0] for k, v in form.items()}
        with self._lock:
            self.log.append(req)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._moved.notify_all()
            if self._hold:
                hold = self._hold
                self._moved.wait_for(
                    lambda: self.in_flight >= hold or not self._hold, self._hold_timeout
                )
                self._hold = 0  # the gate opens for good: reached, or waited out
                self._moved.notify_all()
        try:
            self._answer(h, method, req)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, method: str, req: Request) -> None:
        resp = self.handler(req)
        h.send_response(resp.status)
        for key, value in resp.headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(resp.body)))
        h.end_headers()
        if method != "HEAD":
            # The client may stop reading (a one-byte probe of a server without Range).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                h.wfile.write(resp.body[: resp.cut])
        if resp.cut is not None:
            h.close_connection = True

    def hold_until(self, n: int, timeout: float = 10.0) -> None:
        """Hold each request until `n` are in flight at once, then answer all of them and
        every later one at once; if a request waits `timeout` seconds first, the gate opens
        anyway. A client that sends n requests in parallel
        shows it in `max_in_flight`; a sequential one reaches 1 (after one timeout)."""
        with self._lock:
            self._hold, self._hold_timeout = n, timeout

    def requests_to(self, prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.path.startswith(prefix)]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
