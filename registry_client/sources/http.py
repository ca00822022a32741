"""HTTP plumbing shared by the fetchers (docker://, library://, shub://).

- one `requests` session per fetcher, with our User-Agent and timeouts;
- HTTP status and JSON error bodies mapped to our exceptions (exit codes), with URLs shown
  without their query strings (presigned URLs carry signatures) or user info;
- `HttpSource`, a read-only Reader over a single URL, so an image or a blob goes through
  the same parallel ranged download, resume (RetryingReader) and in-order hashing
  (transfer.download) as a bucket object;
- `http_download`: that download as the acquire pipeline's producer, checked against the
  size, sha256 and md5 the registry publishes (registry_client.verify).

Credentials are passed as headers bound to one origin (scheme, host, port); they are
never sent to another origin, in particular not after a redirect to a presigned URL.
Nothing here retries: wrap sources in RetryingReader and calls in retry.retry_call.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import requests.adapters
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

if TYPE_CHECKING:
    from registry_client.acquire import Producer

from registry_client import __version__
from registry_client.backends._wire import retry_after, shut_down, shut_socket
from registry_client.backends.base import (
    MAX_OBJECT_SIZE,
    EtagPlan,
    Limiter,
    ObjectInfo,
    Progress,
    Reader,
    ReadWatch,
)
from registry_client.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
    RemoteUnavailable,
    UsageError,
)

USER_AGENT = f"registry-client/{__version__}"
TIMEOUT = (15.0, 120.0)  # connect, read: a stalled read becomes a retryable error
BLOCK = 1024 * 1024
MAX_REDIRECTS = 10
API_DEADLINE = 120.0  # seconds for a whole small answer (JSON, a manifest)
MAX_JSON = 8 * 1024 * 1024  # manifests, records and tokens are small; refuse anything huge
ERROR_BODY = 64 * 1024
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# HOST[:PORT] inside a reference (docker://, shub://): DNS labels or a bracketed IPv6.
HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?\Z"
)
REGISTRY_CONNECTIONS = 8  # requests at once to one registry (all of a pull's blobs together)


def new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    session.trust_env = True  # honour HTTPS_PROXY / NO_PROXY like every other HTTP client
    adapter = _WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# -- a watch over a whole exchange --------------------------------------------------------
# A server (or the store behind it) that has a request and has not answered yet is as
# silent as a body that stopped, and Ctrl-C must end that wait too. requests hands out the
# response only once its head has come, so the connection tells the read in progress on
# its thread which socket it sends on: the read's watch can shut it from the moment the
# request is made, not only once the body flows.


class _Exchange:
    """The socket of one read's current request, shut down from any thread by `stop`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: Any = None
        self._stopped = False

    def bind(self, sock: Any) -> None:
        with self._lock:
            self._sock = sock
            stopped = self._stopped
        if stopped:
            shut_socket(sock)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            sock = self._sock
        shut_socket(sock)


_reading = threading.local()  # .exchange: the _Exchange of the read this thread makes


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().request(*args, **kwargs)
        finally:  # sent (or failing): the head is awaited on this socket
            exchange: _Exchange | None = getattr(_reading, "exchange", None)
            if exchange is not None and self.sock is not None:
                exchange.bind(self.sock)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, its pools making connections that bind to the read in progress
    (requests through an HTTP(S)_PROXY keep urllib3's own: they wait as they did)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


@contextlib.contextmanager
def watched_exchange(watch: ReadWatch | None) -> Iterator[_Exchange]:
    """While the block runs, `watch` may shut the connection of this thread's request
    down: waiting for the head as well as reading the body."""
    exchange = _Exchange()
    with watch.attach(exchange.stop) if watch is not None else contextlib.nullcontext():
        yield exchange


@contextlib.contextmanager
def _binding(exchange: _Exchange) -> Iterator[None]:
    """Requests made by this thread in the block bind their sockets to `exchange`."""
    outer = getattr(_reading, "exchange", None)
    _reading.exchange = exchange
    try:
        yield
    finally:
        _reading.exchange = outer


# -- URLs and origins ------------------------------------------------------------------


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with default ports filled in: what credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def safe_url(url: str) -> str:
    """A URL fit for messages: no user info, no query (signatures), no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_url(host: str) -> str:
    """The base URL of a host named in a reference: plain HTTP on loopback, as Docker
    does, HTTPS everywhere else."""
    scheme = "http" if is_loopback(urlsplit(f"//{host}").hostname or "") else "https"
    return f"{scheme}://{host}"


def check_base_url(url: str, what: str) -> str:
    """A configured endpoint: http(s), a host, no user info; trailing slash removed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what} {url!r} is not an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(
            f"{what} must not hold credentials, a query or a fragment",
            hint="give tokens through the environment",
        )
    return url.rstrip("/")


# -- errors ----------------------------------------------------------------------------


def _error_text(resp: requests.Response) -> str:
    """The server's own words from a JSON error body (Library API or OCI distribution)."""
    try:
        body = json.loads(next(resp.iter_content(ERROR_BODY), b""))  # bounded: errors are short
    except (ValueError, requests.exceptions.RequestException):
        return ""
    if not isinstance(body, dict):
        return ""
    err = body.get("error")
    if isinstance(err, dict):  # Library API: {"error": {"code": 404, "message": "..."}}
        return str(err.get("message") or err.get("code") or "")[:300]
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):  # OCI
        first = errors[0]
        return f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")[:300]
    return ""


def error_for(resp: requests.Response, what: str) -> RegistryClientError:
    """Our exception for a failed HTTP response (read its body only if small)."""
    status = resp.status_code
    detail = _error_text(resp) if status >= 400 else ""
    text = f"{what}: HTTP {status}" + (f" ({detail})" if detail else "")
    if status == 404:
        return NotFound(text)
    if status in (401, 403):
        return AuthError(text, hint="check the token or credentials for this registry")
    if status in RETRYABLE_STATUS:
        return RemoteUnavailable(text, retry_after=retry_after(resp.headers))
    if status == 412:
        return ObjectChanged(f"{what}: changed during the download")
    return RegistryClientError(text)


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
    stream: bool = False,
    allow_redirects: bool = False,
    **kwargs: Any,
) -> requests.Response:
    """One HTTP request; network failures become RemoteUnavailable (retryable)."""
    try:
        return session.request(
            method,
            url,
            headers=dict(headers or {}),
            stream=stream,
            allow_redirects=allow_redirects,
            timeout=TIMEOUT,
            **kwargs,
        )
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
    ):
        raise UsageError(f"{what}: invalid URL {safe_url(url)}") from None
    except requests.exceptions.SSLError as exc:
        raise RemoteUnavailable(
            f"{what}: TLS error with {safe_url(url)}: {type(exc).__name__}"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise RemoteUnavailable(
            f"{what}: cannot reach {safe_url(url)} ({type(exc).__name__})"
        ) from None


def raise_unless_ok(resp: requests.Response, what: str) -> requests.Response:
    """The response if it is a 200; else its error (and the connection released)."""
    if resp.status_code != 200:
        try:
            raise error_for(resp, what)
        finally:
            resp.close()
    return resp


def get_following(
    session: requests.Session, url: str, what: str, headers_for: Callable[[str], Mapping[str, str]]
) -> tuple[requests.Response, str]:
    """GET, following redirects by hand so that each hop gets only the headers meant for
    its origin; return the final response and the URL that gave it."""
    for _ in range(MAX_REDIRECTS + 1):
        resp = request(session, "GET", url, what=what, headers=headers_for(url), stream=True)
        if resp.status_code not in (301, 302, 303, 307, 308):
            return resp, url
        location = resp.headers.get("Location")
        resp.close()
        if not location:
            raise RegistryClientError(f"{what}: redirect without a Location")
        url = urljoin(url, location)
        if urlsplit(url).scheme not in ("http", "https"):
            raise RegistryClientError(f"{what}: redirect to a non-HTTP URL")
    raise RegistryClientError(f"{what}: more than {MAX_REDIRECTS} redirects")


def get_json(
    session: requests.Session, url: str, what: str, credentials: Credentials | None = None
) -> Any:
    """GET a small JSON document (an API answer); HTTP errors become our exceptions."""
    resp, _ = get_following(
        session, url, what, lambda u: credentials.for_url(u) if credentials else {}
    )
    return read_json(raise_unless_ok(resp, what), what)


def post_form(session: requests.Session, url: str, what: str, form: Mapping[str, str]) -> Any:
    """POST a form to a small JSON API (an OAuth2 token endpoint); no redirects followed."""
    resp = request(session, "POST", url, what=what, data=dict(form), stream=True)
    return read_json(raise_unless_ok(resp, what), what)


def read_json(resp: requests.Response, what: str) -> Any:
    """The JSON body of a successful response, bounded in size."""
    length = resp.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > MAX_JSON:
        raise RegistryClientError(f"{what}: response of {length} bytes is too large")
    try:
        body = read_limited(resp, MAX_JSON, what)
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than we parse
        raise RegistryClientError(f"{what}: the server did not answer JSON") from None


# -- typed fields of untrusted JSON -------------------------------------------------------
# A registry's answer is read through these: a field of another type (or absurd size) is
# as good as absent, so no str(), len() or iteration ever meets a value it does not expect.


def text_field(data: Any, key: str, limit: int = 4096) -> str | None:
    """`data[key]` if data is an object and that is a string of at most `limit` chars."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and len(value) <= limit else None


def int_field(data: Any, key: str, high: int = MAX_OBJECT_SIZE) -> int | None:
    """`data[key]` if it is an integer (not a boolean) in [0, high]."""
    value = data.get(key) if isinstance(data, dict) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high
    return value if ok else None


def list_field(data: Any, key: str) -> list[Any]:
    """`data[key]` if it is a list, else an empty one."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def dict_field(data: Any, key: str) -> dict[str, Any]:
    """`data[key]` if it is an object, else an empty one."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def read_limited(resp: requests.Response, limit: int, what: str) -> bytes:
    """A small answer (an API's JSON, a manifest), bounded in bytes and in time: a server
    that trickles it is cut off after API_DEADLINE seconds (retryable, exit 6 at last)."""
    chunks, total = [], 0
    expired = threading.Event()

    def cut_off() -> None:
        expired.set()
        shut_down(resp.raw)

    timer = threading.Timer(API_DEADLINE, cut_off)
    timer.daemon = True
    timer.start()
    try:
        for chunk in resp.iter_content(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise RegistryClientError(f"{what}: response larger than {limit} bytes")
            chunks.append(chunk)
    except requests.exceptions.RequestException as exc:
        if expired.is_set():
            raise RemoteUnavailable(
                f"{what}: no complete answer in {API_DEADLINE:g} s", retry_after=0
            ) from None
        raise RemoteUnavailable(f"{what}: connection broken ({type(exc).__name__})") from None
    finally:
        timer.cancel()
        resp.close()
    return b"".join(chunks)


# -- a read-only source over one URL -----------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """Headers (e.g. Authorization) that may only be sent to `origin_url`'s origin."""

    origin_url: str
    headers: Mapping[str, str]

    def for_url(self, url: str) -> dict[str, str]:
        return dict(self.headers) if same_origin(self.origin_url, url) else {}

    def renew(self, stale: Mapping[str, str]) -> bool:
        """After a 401 to headers `stale`: True if fresh ones may now be sent (a registry
        token that expired); the headers object decides, plain ones never renew."""
        renew = getattr(self.headers, "renew", None)
        return bool(stale) and callable(renew) and bool(renew(stale))

    def __repr__(self) -> str:  # keep tokens out of tracebacks
        return f"Credentials(origin={safe_url(self.origin_url)!r})"


class HttpSource(Reader):
    """One object behind a URL: stat by a one-byte ranged GET, reads by ranged GETs.

    Redirects are followed here, by hand, so credentials stay with their origin. If the
    server ignores Range, `ranges` is False and the caller reads the object in one range
    (a resumed read then skips the bytes it already has).
    """

    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session | None = None,
        credentials: Credentials | None = None,
        label: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.url = url
        self.limiter = limiter or Limiter(REGISTRY_CONNECTIONS)
        self.final_url = url
        self.session = session or new_session()
        self.credentials = credentials
        self.extra_headers = dict(extra_headers or {})
        self.location = safe_url(url)
        self.label = label or self.location
        self.ranges = False

    def _headers(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(self.extra_headers)
        if self.credentials:
            headers.update(self.credentials.for_url(url))
        headers.update(extra or {})
        return headers

    def _get(self, url: str, extra: Mapping[str, str]) -> tuple[requests.Response, str]:
        def attempt() -> tuple[requests.Response, str]:
            return get_following(
                self.session, url, f"GET {self.label}", lambda u: self._headers(u, extra)
            )

        sent = self.credentials.for_url(url) if self.credentials else {}
        resp, final = attempt()
        if resp.status_code == 401 and self.credentials and self.credentials.renew(sent):
            resp.close()  # a token that expired during a long download: once more, renewed
            resp, final = attempt()
        return resp, final

    def stat(self, key: str) -> ObjectInfo:
        resp, url = self._get(self.url, {"Range": "bytes=0-0", "Accept-Encoding": "identity"})
        try:
            if resp.status_code not in (200, 206, 416):
                raise error_for(resp, f"GET {self.label}")
            self.final_url = url
            size = _total_size(resp)
            self.ranges = resp.status_code in (206, 416)
        finally:
            resp.close()
        etag = (resp.headers.get("ETag") or "").strip('"') or None
        return ObjectInfo(key, -1 if size is None else size, etag)

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        if end <= start:
            return
        extra = {"Accept-Encoding": "identity"}
        if self.ranges:
            extra["Range"] = f"bytes={start}-{end - 1}"
        with watched_exchange(watch) as exchange:
            with _binding(exchange):  # only around the requests: the body is read later
                resp, _ = self._get(self.final_url, extra)
            try:
                skip = self._check_range(resp, start, end, etag)
                yield from _body(resp, skip, end - start, self.label)
            finally:
                resp.close()

    def _check_range(self, resp: requests.Response, start: int, end: int, etag: str | None) -> int:
        """Bytes to skip at the front of this response to reach `start`."""
        what = f"GET {self.label} bytes {start}-{end - 1}"
        got = (resp.headers.get("ETag") or "").strip('"') or None
        if resp.status_code == 206:
            first = _range_start(resp)
            if first != start:
                raise RemoteUnavailable(f"{what}: server sent a range from {first}")
            if etag and got and got != etag:
                raise ObjectChanged(f"{self.label} changed during the download")
            return 0
        if resp.status_code == 200:
            if etag and got and got != etag:
                raise ObjectChanged(f"{self.label} changed during the download")
            return start  # Range ignored: the whole body comes; skip what we have
        raise error_for(resp, what)

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        # An HTTP ETag is opaque; fetchers verify the digests their registry publishes.
        return EtagPlan([], lambda _: False, verifiable=False, description="http source")

    def close(self) -> None:
        self.session.close()


def _total_size(resp: requests.Response) -> int | None:
    if resp.status_code in (206, 416):  # 416 for bytes=0-0 of an empty object: "bytes */0"
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit():
            return int(total)
        raise RegistryClientError("ranged response without a total size")
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _range_start(resp: requests.Response) -> int:
    value = resp.headers.get("Content-Range", "")
    unit, _, spec = value.partition(" ")
    first = spec.partition("-")[0]
    if unit != "bytes" or not first.isdigit():
        raise RemoteUnavailable(f"bad Content-Range {value[:60]!r}")
    return int(first)


def _body(resp: requests.Response, skip: int, want: int, label: str) -> Iterator[bytes]:
    """Yield `want` bytes after skipping `skip`; a short body ends early (caller resumes)."""
    try:
        for chunk in resp.iter_content(BLOCK):
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            if len(chunk) >= want:
                yield chunk[:want]
                return
            want -= len(chunk)
            yield chunk
    except requests.exceptions.RequestException as exc:
        raise RemoteUnavailable(f"GET {label}: connection broken ({type(exc).__name__})") from None


# -- a verified download ------------------------------------------------------------------


def http_download(
    inner: HttpSource,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    progress: Progress | None = None,
    after: Callable[[Path], tuple[str, ...]] | None = None,
) -> Producer:
    """How one HTTP source is fetched into the cache (registry_client.acquire): its size
    learnt by one ranged GET, then ranged reads under the retry policy (one stream where
    the server ignores Range), checked against the `size`, `sha256` and `md5` its registry
    published; `after` adds checks of the received file."""
    from registry_client.acquire import Download
    from registry_client.retry import RetryingReader
    from registry_client.verify import registry_expect

    reader = RetryingReader(inner)
    info = reader.stat(inner.label)
    if size is not None and info.size != size:
        raise IntegrityError(
            f"{info.key}: server offers {info.size} bytes, the registry "
            f"recorded {size}; nothing was published"
        )
    expect = registry_expect(info.key, info.size, size=size, sha256=sha256, md5=md5)
    return Download(reader, info, expect, ranges=inner.ranges, progress=progress, after=after)


def env_first(*names: str) -> str | None:
    """The first non-empty environment variable among names."""
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None
