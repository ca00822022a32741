"""Reads through the site's cache proxies: a thousand nodes, about one copy from the store.

A backend wrapper (like registry_client.retry): the HEAD, the layout and every write go to
the store as always; only `read_range` changes. Each range is a GET of a URL that every node
of the site computes identically — an S3 presigned URL or a Swift TempURL signed at the start
of a fixed window, for the store's host — sent to a cache as an HTTP proxy request, pinned to
the ETag with If-Match. The caches are tried in order (rack, then site), then the store.
Verification does not change: the transfer engine hashes what arrives exactly as without a
cache, and a download that fails it is read again, first with a refresh of the cache's
copy, then from the store (`bypass_caches`, called by the service). docs/fleet.md has the
site set-up, the nginx configuration and the traps.

The failure ladder, per range: a connection error, timeout, 5xx or malformed answer (not
206, wrong Content-Range or ETag, short body) → the next cache (the failed one is skipped
for `DOWN_FOR` seconds by every thread) → the store. 412 → ObjectChanged (the pull starts
again from a fresh HEAD). 403 and other answers from the store behind the cache → the store.
Every step down to the store waits a random part of `fallback_spread` first and then reads
at most `fallback_concurrency` ranges at once, so a cache outage spreads the herd's return
to the store instead of bringing all of it at once.

HTTP by hand (http.client) rather than urllib3: urllib3 logs every request URL at DEBUG,
and these URLs are bearer secrets; a proxy GET is one request line. Nothing here puts a
URL in a message, a log line or an exception.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from registry_client.backends._wire import shut_socket
from registry_client.backends.base import (
    Backend,
    EtagPlan,
    Metadata,
    ObjectInfo,
    ReadCancelled,
    Reader,
    ReadWatch,
    Upload,
)
from registry_client.errors import ConfigError, ObjectChanged, RegistryClientError
from registry_client.sigv4 import host_header

if TYPE_CHECKING:
    from registry_client.config import Config, RemoteConfig

log = logging.getLogger("registry_client.fleet")

ENV_PROXIES = "REGISTRY_CLIENT_CACHE_PROXIES"
REFRESH_HEADER = "X-Cache-Refresh"
READ_BLOCK = 1024 * 1024
DOWN_FOR = 30.0  # seconds a failed cache is skipped before it is tried again
KINDS = ("s3", "swift")  # remotes whose reads can go through a cache
ROUTES = ("cached", "refresh", "direct")


@dataclass(frozen=True)
class FleetSettings:
    """How this node reads through the site's caches ([fleet] in the config, docs/fleet.md)."""

    cache_proxies: tuple[str, ...] = ()
    #: every node signs at the start of the same window, so all compute the same URL
    sign_window: int = 3600
    connect_timeout: float = 3.0
    #: longer than a slice fill under the herd: nodes wait on the cache's lock meanwhile
    read_timeout: float = 300.0
    fallback_spread: float = 10.0
    fallback_concurrency: int = 2

    @property
    def expires(self) -> int:
        """A URL signed at the start of a window stays valid until the end of the next."""
        return 2 * self.sign_window


def fleet_settings(config: Config, remote: RemoteConfig) -> FleetSettings | None:
    """The settings for reads from `remote`, or None when they go to the store directly.

    Caches: $REGISTRY_CLIENT_CACHE_PROXIES (comma-separated; empty for none), else the
    remote's `cache_proxies`, else `[fleet] cache_proxies` (site-wide).
    """
    settings = parse_fleet_table(config.settings.get("fleet", {}), str(config.path))
    if remote.type not in KINDS:
        return None
    env = os.environ.get(ENV_PROXIES)
    if env is not None:
        proxies = check_proxies([p for p in env.replace(",", " ").split() if p], ENV_PROXIES)
    elif "cache_proxies" in remote.options:
        proxies = check_proxies(remote.options["cache_proxies"], f"remote {remote.name}")
    else:
        proxies = settings.cache_proxies
    return replace(settings, cache_proxies=proxies) if proxies else None


def parse_fleet_table(table: Any, where: str) -> FleetSettings:
    """[fleet], checked against its schema (config.FLEET_SCHEMA), as settings."""
    from registry_client.config import FLEET_SCHEMA
    from registry_client.schema import check_table

    values = dict(check_table(table, FLEET_SCHEMA, "[fleet]", where))
    proxies = check_proxies(values.pop("cache_proxies", []), f"{where} [fleet]")
    return FleetSettings(proxies, **values)


def check_proxies(value: Any, where: str) -> tuple[str, ...]:
    """http(s)://HOST[:PORT] URLs, normalised; anything else is a ConfigError."""
    from registry_client.schema import PROXY_LIST, proxy_url

    if not PROXY_LIST.accepts(list(value) if isinstance(value, (list, tuple)) else value):
        raise ConfigError(
            f"{where}: cache_proxies must be {PROXY_LIST.what}",
            hint="each a cache's http(s)://HOST[:PORT], with no path or credentials",
        )
    return tuple(proxy_url(url) or url for url in value)


# -- one GET through one cache --------------------------------------------------------------


class _CacheFailed(Exception):
    """This cache could not answer (down, slow, 5xx, malformed): try the next one."""


class _StoreRefused(Exception):
    """The store behind the cache said no (403, 404...): read from the store directly."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Connections(threading.local):
    def __init__(self) -> None:
        self.by_proxy: dict[str, http.client.HTTPConnection] = {}


class ProxyClient:
    """GETs through HTTP proxies, one kept-alive connection per proxy and thread."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = _Connections()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, proxy: str) -> http.client.HTTPConnection:
        conn = self._local.by_proxy.get(proxy)
        if conn is None:
            parts = urlsplit(proxy)
            https = parts.scheme == "https"
            cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
            conn = cls(parts.hostname or "", parts.port, timeout=self.connect_timeout)
            self._local.by_proxy[proxy] = conn
            with self._lock:
                self._all.append(conn)
        if conn.sock is None:
            conn.connect()  # connect_timeout: a dead cache is found out fast
            sock: Any = conn.sock
            sock.settimeout(self.read_timeout)
        return conn

    def _drop(self, proxy: str) -> None:
        conn = self._local.by_proxy.pop(proxy, None)
        if conn is not None:
            conn.close()

    def get(
        self,
        proxy: str,
        url: str,
        start: int,
        end: int,
        etag: str,
        refresh: bool,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        """Bytes [start, end) of `url`, pinned to `etag`, through `proxy`; `watch` may shut
        the connection down (ReadWatch) from the request on: a cache that holds its answer
        back (nginx does while the slice it fills trickles in from the store) is as silent
        as a body that stops, and Ctrl-C must end the wait for it as well.

        Raises _CacheFailed, _StoreRefused or ObjectChanged; never names the URL.
        """
        headers = {
            "Host": host_header(url),
            "Range": f"bytes={start}-{end - 1}",
            "If-Match": f'"{etag}"',
        }
        if refresh:
            headers[REFRESH_HEADER] = "1"
        try:
            conn = self._connection(proxy)
            sock = conn.sock  # this exchange's: a reconnect after it is not ours to stop
            with watch.attach(lambda: shut_socket(sock)) if watch else nullcontext():
                conn.request("GET", url, headers=headers)
                resp = conn.getresponse()
                _check_answer(resp, start, end, etag)
                pos = start
                while pos < end:
                    chunk = resp.read(min(READ_BLOCK, end - pos))
                    if not chunk:
                        raise _CacheFailed(f"body ended at {pos} of {end}")
                    pos += len(chunk)
                    yield chunk
            if resp.read(1):
                raise _CacheFailed("more bytes than the range")
        except (OSError, http.client.HTTPException) as exc:
            self._drop(proxy)
            raise _CacheFailed(type(exc).__name__) from None
        except BaseException:  # our own checks, GeneratorExit: the connection is mid-body
            self._drop(proxy)
            raise

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


def _check_answer(resp: http.client.HTTPResponse, start: int, end: int, etag: str) -> None:
    status = resp.status
    if status == 412:
        raise ObjectChanged("the object changed during the transfer")
    if status >= 500 or status in (408, 429):
        raise _CacheFailed(f"HTTP {status}")
    if status != 206:
        if 400 <= status < 500:
            raise _StoreRefused(status)
        raise _CacheFailed(f"HTTP {status}, not 206")
    content_range = resp.getheader("Content-Range") or ""
    if not content_range.startswith(f"bytes {start}-{end - 1}/"):
        raise _CacheFailed("wrong Content-Range")
    if _bare(resp.getheader("ETag")) != etag:
        raise _CacheFailed("ETag differs from the one pinned")


def _bare(etag: str | None) -> str:
    value = (etag or "").strip()
    value = value.removeprefix("W/")
    return value.strip('"')


# -- the backend wrapper ----------------------------------------------------------------------


class CacheProxies(Backend):
    """`inner` with its ranged reads going through the site's caches (module docstring)."""

    def __init__(
        self,
        inner: Backend,
        settings: FleetSettings,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.inner = inner
        self.settings = settings
        self.kind = inner.kind
        self.location = inner.location
        self.capabilities = inner.capabilities
        self.page_size = inner.page_size
        self.limiter = inner.limiter  # requests in flight, whichever way they go
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = ProxyClient(settings.connect_timeout, settings.read_timeout)
        self._lock = threading.Lock()
        self._route = "cached"
        self._down_until: dict[str, float] = {}
        self._urls: dict[tuple[str, int], str | None] = {}
        self._signing = threading.Lock()
        #: when reads on the current fallback route may start (a random part of the spread)
        self._route_from: dict[str, float] = {}
        self._direct_slots = threading.BoundedSemaphore(settings.fallback_concurrency)
        #: bytes read through a cache and from the store, and cache failures (for --json, tests)
        self.stats = {"cache_bytes": 0, "direct_bytes": 0, "cache_failures": 0}

    # -- unchanged verbs ----------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        return self.inner.start_upload(key, size, metadata, part_size=part_size)  # (and put)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        return self.inner.copy(src_key, dst_key, metadata)

    def copy_from(
        self, source: Reader, info: ObjectInfo, dst_key: str, metadata: Mapping[str, str]
    ) -> ObjectInfo | None:
        return self.inner.copy_from(source, info, dst_key, metadata)

    def resume_upload(
        self,
        key: str,
        size: int,
        metadata: Metadata,
        *,
        part_size: int,
        since: datetime | None,
    ) -> Upload | None:
        return self.inner.resume_upload(key, size, metadata, part_size=part_size, since=since)

    def pending_uploads(self, prefix: str = "") -> set[str]:
        return self.inner.pending_uploads(prefix)

    def discard_pending(self, key: str) -> int:
        return self.inner.discard_pending(key)

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        return self.inner.etag_plan(info)

    def close(self) -> None:
        self._client.close()
        self.inner.close()

    # -- the read path ----------------------------------------------------------------------
    def bypass_caches(self) -> str | None:
        """After a download failed verification: refresh the caches' copies, then read
        from the store. The new route, or None when already reading from the store."""
        with self._lock:
            if self._route == "direct":
                return None
            self._route = ROUTES[ROUTES.index(self._route) + 1]
            self._schedule(self._route)
            return self._route

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
        pos = start
        route = self._route
        url = self._shared_url(key) if route != "direct" and etag else None
        if url is not None and etag is not None:
            self._wait_for(route)
            for proxy in self._live_proxies():
                refresh = route == "refresh"
                try:
                    for chunk in self._client.get(proxy, url, pos, end, etag, refresh, watch):
                        pos += len(chunk)
                        self._count("cache_bytes", len(chunk))
                        yield chunk
                    return
                except _CacheFailed as exc:
                    if watch is not None:  # stopped by us: over, or stalled (next source)
                        if watch.cancelled.is_set():
                            raise ReadCancelled from None
                        watch.restart()
                    self._mark_down(proxy, key, str(exc))
                except _StoreRefused as exc:
                    self._give_up_caches(
                        f"the store refused the shared URL through {proxy} (HTTP {exc.status})"
                    )
                    break
            else:
                self._give_up_caches("no cache proxy answered")
        yield from self._direct(key, pos, end, etag, url is not None, watch)

    def _direct(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        fallback: bool,
        watch: ReadWatch | None,
    ) -> Iterator[bytes]:
        if not fallback and self._route != "direct":
            yield from self.inner.read_range(key, start, end, etag, watch=watch)
            return
        self._wait_for("direct")
        with self._direct_slots:
            for chunk in self.inner.read_range(key, start, end, etag, watch=watch):
                self._count("direct_bytes", len(chunk))
                yield chunk

    def _count(self, what: str, n: int) -> None:
        with self._lock:
            self.stats[what] += n

    def _shared_url(self, key: str) -> str | None:
        """The URL of this window, made once: the other ranges wait for it rather than
        each asking the store (a Swift cluster's /info and key) at the same moment."""
        window = self.settings.sign_window
        signed_at = int(self._clock()) // window * window
        with self._signing:
            if (key, signed_at) not in self._urls:
                try:
                    url = self.inner.shared_url(key, signed_at, self.settings.expires)
                except RegistryClientError as exc:  # e.g. no credentials: the store
                    log.warning("no shared URL for %s (%s); reading from the store", key, exc)
                    url = None
                self._urls[(key, signed_at)] = url
            return self._urls[(key, signed_at)]

    def _live_proxies(self) -> tuple[str, ...]:
        now = time.monotonic()
        with self._lock:
            return tuple(
                p for p in self.settings.cache_proxies if self._down_until.get(p, 0) <= now
            )

    def _mark_down(self, proxy: str, key: str, why: str) -> None:
        with self._lock:
            self.stats["cache_failures"] += 1
            first = self._down_until.get(proxy, 0) <= time.monotonic()
            self._down_until[proxy] = time.monotonic() + DOWN_FOR
        if first:
            log.warning("cache proxy %s failed reading %s (%s); trying the next", proxy, key, why)

    def _give_up_caches(self, why: str) -> None:
        """Every cache failed, or the store refused the shared URL: to the store, spread."""
        with self._lock:
            if self._route == "direct":
                return
            self._route = "direct"
            delay = self._schedule("direct")
        log.warning("%s; reading from the store in %.1fs", why, delay)

    def _schedule(self, route: str) -> float:
        """Pick (once) when reads on a fallback route may start; lock held."""
        if route not in self._route_from:
            delay = self._rng.uniform(0, self.settings.fallback_spread)
            self._route_from[route] = time.monotonic() + delay
        return max(0.0, self._route_from[route] - time.monotonic())

    def _wait_for(self, route: str) -> None:
        with self._lock:
            start = self._route_from.get(route)
        if start is not None and (delay := start - time.monotonic()) > 0:
            self._sleep(delay)


def with_cache_proxies(backend: Backend, settings: FleetSettings | None) -> Backend:
    """`backend`, reading through the caches when there are any."""
    if settings is None or not settings.cache_proxies:
        return backend
    return CacheProxies(backend, settings)
