"""Small helpers every network backend shares: wire errors into our exceptions, and a
way to stop a response's body read from another thread."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from registry_client.backends.base import ReadWatch


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (any case); None when absent or an HTTP date."""
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def is_transport_error(exc: BaseException) -> bool:
    """urllib3 / http.client failures: the connection broke, not the request."""
    return type(exc).__module__.startswith(("urllib3", "http.client"))


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's first line, bounded, for one-line error messages."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text else ""


MAX_META_ENTRIES = 64
MAX_META_VALUE = 8192


def store_metadata(meta: Mapping[str, object] | None) -> dict[str, str]:
    """Object metadata as a store returned it (untrusted): string names and values only,
    bounded in count and length, names lower-case."""
    out: dict[str, str] = {}
    for key, value in (meta or {}).items():
        if len(out) >= MAX_META_ENTRIES:
            break
        if isinstance(key, str) and isinstance(value, str) and len(value) <= MAX_META_VALUE:
            out[key.lower()[:128]] = value
    return out


def check_content_range(header: str | None, start: int, end: int, what: str) -> None:
    """A ranged GET's Content-Range must be the range asked for (any total)."""
    from registry_client.errors import IntegrityError

    expected = f"bytes {start}-{end - 1}/"
    if header is None or not header.startswith(expected):
        raise IntegrityError(
            f"{what}: server answered range {header!r}, asked for {start}-{end - 1}"
        )


def watched(watch: ReadWatch | None, response: Any) -> AbstractContextManager[None]:
    """While a body is read from `response` (a urllib3 response: botocore's and
    requests' both are), `watch` may shut its connection down (ReadWatch.attach)."""
    if watch is None:
        return contextlib.nullcontext()
    return watch.attach(lambda: shut_down(response))


def shut_down(response: Any) -> None:
    """Shut the socket under a urllib3 response down, from any thread: a read blocked on
    it returns at once (EOF, so the read fails as a broken connection), and the
    connection is never reused. The socket is reached the way botocore's own
    set_socket_timeout reaches it when the response no longer names its connection."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is None:
        fp = getattr(getattr(response, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    shut_socket(sock)


def shut_socket(sock: object) -> None:
    """Shut a socket down for reading and writing, from any thread (see shut_down)."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class RawBody:
    """A urllib3 response body received straight into the caller's memory.

    urllib3 (under botocore and requests) hands out each piece of a body as a new bytes
    object, and urllib3 2 copies it once more through its queue of decoded bytes: at a
    GiB per second, allocating, faulting in and freeing those buffers costs more CPU than
    the copy out of the socket itself. Underneath sits an http.client response whose
    readinto() receives from the socket into any buffer. It is used when the body is
    plain (a Content-Length, not chunked, no Content-Encoding, nothing read yet);
    anything else goes through urllib3's read() and one copy.
    """

    def __init__(
        self,
        raw: Any,
        translate: Callable[[Exception], Exception],
        watch: ReadWatch | None = None,
    ) -> None:
        self._raw = raw
        self._translate = translate
        # While the body is open, the engine's watch may shut its connection (a stall).
        self._watched = watched(watch, raw)
        self._watched.__enter__()
        fp = getattr(raw, "_fp", None)
        headers = getattr(raw, "headers", {}) or {}
        self._direct = (
            fp is not None
            and callable(getattr(fp, "readinto", None))
            and getattr(fp, "length", None) is not None
            and not getattr(fp, "chunked", False)
            and not headers.get("content-encoding")
            and not getattr(raw, "_decoded_buffer", None)
        )
        self._fp = fp if self._direct else None
        self._ended = False

    def readinto(self, view: memoryview, /) -> int:
        if not view or self._ended:
            return 0
        try:
            if self._fp is not None:
                n = int(self._fp.readinto(view))
            else:
                data = self._raw.read(len(view))
                n = len(data)
                view[:n] = data
        except Exception as exc:
            raise self._translate(exc) from None
        self._ended = n == 0
        return n

    def close(self) -> None:
        self._watched.__exit__(None, None, None)
        fp = self._fp
        try:
            if fp is not None and fp.isclosed() and getattr(fp, "length", None) == 0:
                self._raw.release_conn()  # read to its end: the connection can be reused
            else:
                self._raw.close()  # cut short, broken or shut down: never reused
        except Exception:  # noqa: BLE001 - closing never hides the error being reported
            pass
