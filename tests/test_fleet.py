"""Reads through site cache proxies (registry_client.fleet): settings and the failure ladder.

The read path runs against small HTTP servers started here that act as caches, good and
bad, in front of an in-memory store; tests/test_fleet_nginx.py runs the whole thing with the
shipped nginx configuration, Swift and many node processes.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from registry_client.backends.base import Backend, ObjectInfo, ReadCancelled, ReadWatch
from registry_client.config import Config, RemoteConfig
from registry_client.errors import ConfigError, NotFound, ObjectChanged, Stalled
from registry_client.fleet import (
    ENV_PROXIES,
    REFRESH_HEADER,
    CacheProxies,
    FleetSettings,
    fleet_settings,
)

SIZE = 5 * 1024 * 1024 + 123
DATA = os.urandom(SIZE)
ETAG = hashlib.md5(DATA).hexdigest()
URL = "http://store.example:9000/bkt/lab/app:1.sif?X-Amz-Signature=SECRETSIGNATURE"


# -- settings ---------------------------------------------------------------------------------


def _config(tmp_path: Path, fleet: Any = None) -> Config:
    settings = {} if fleet is None else {"fleet": fleet}
    return Config(tmp_path / "config.toml", {}, "lab", settings)


def _remote(kind: str = "s3", **options: Any) -> RemoteConfig:
    return RemoteConfig("lab", kind, {"bucket": "b", **options})


def test_site_list_remote_list_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = _config(tmp_path, {"cache_proxies": ["http://rack7:8080", "https://site/"]})
    got = fleet_settings(site, _remote())
    assert got is not None and got.cache_proxies == ("http://rack7:8080", "https://site")
    assert got.sign_window == 3600 and got.expires == 7200
    own = fleet_settings(site, _remote(cache_proxies=["http://mine:81"]))
    assert own is not None and own.cache_proxies == ("http://mine:81",)
    assert fleet_settings(site, _remote(cache_proxies=[])) is None  # a remote opts out
    assert fleet_settings(site, _remote("file", path="/x")) is None  # nothing to cache
    monkeypatch.setenv(ENV_PROXIES, "http://a:1, http://[::1]:2")
    env = fleet_settings(site, _remote(cache_proxies=["http://mine:81"]))
    assert env is not None and env.cache_proxies == ("http://a:1", "http://[::1]:2")
    monkeypatch.setenv(ENV_PROXIES, "")
    assert fleet_settings(site, _remote()) is None
    monkeypatch.delenv(ENV_PROXIES)
    assert fleet_settings(_config(tmp_path), _remote()) is None


@pytest.mark.parametrize(
    "fleet",
    [
        {"cache_proxies": "http://a:1"},
        {"cache_proxies": ["ftp://a"]},
        {"cache_proxies": ["http://user:pw@a:1"]},
        {"cache_proxies": ["http://a:1/path"]},
        {"cache_proxies": ["http://a:99999"]},
        {"cache_proxies": ["http://a?x=1"]},
        {"sign_window": 30},
        {"sign_window": 400_000},  # the URL would outlive S3's 7-day limit
        {"connect_timeout": "3"},
        {"fallback_concurrency": 0},
        {"fallback_spread": True},
        {"cache_proxy": ["http://a"]},
        "http://a",
    ],
)
def test_bad_fleet_settings_are_config_errors(tmp_path: Path, fleet: Any) -> None:
    with pytest.raises(ConfigError):
        fleet_settings(_config(tmp_path, fleet), _remote())


def test_config_file_accepts_fleet_table(tmp_path: Path) -> None:
    from registry_client.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[fleet]\ncache_proxies = ["http://site-cache:8080"]\nsign_window = 900\n')
    got = fleet_settings(load_config(path), _remote())
    assert got is not None and got.sign_window == 900 and got.expires == 1800


# -- the read path against small caches ---------------------------------------------------


class MemoryStore(Backend):
    """The store: serves DATA; counts bytes and the largest number of reads at once."""

    kind = "s3"
    location = "memory"

    def __init__(self, url: str | None = URL) -> None:
        self.url = url
        self.bytes = 0
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()
        self.slow: threading.Event | None = None

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, SIZE, ETAG)

    def read_range(
        self, key: str, start: int, end: int, etag: str | None, *, watch: Any = None
    ) -> Iterator[bytes]:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.slow is not None:
                self.slow.wait(0.2)
            for pos in range(start, end, 65536):
                chunk = DATA[pos : min(end, pos + 65536)]
                with self.lock:
                    self.bytes += len(chunk)
                yield chunk
        finally:
            with self.lock:
                self.active -= 1

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise NotFound("no listing")

    def start_upload(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
        return self.url


Behaviour = Callable[["CacheHandler", int, int], None]


class CacheHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CacheServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.seen.append((self.path, dict(self.headers)))
        first, _, last = self.headers["Range"].removeprefix("bytes=").partition("-")
        self.server.behaviour(self, int(first), int(last) + 1)

    def answer(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def good(handler: CacheHandler, start: int, end: int) -> None:
    handler.answer(
        206,
        DATA[start:end],
        Content_Range=f"bytes {start}-{end - 1}/{SIZE}",
        ETag=f'"{ETAG}"',
    )


class CacheServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: Behaviour) -> None:
        super().__init__(("127.0.0.1", 0), CacheHandler)
        self.behaviour = behaviour
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stopped reading a bad answer: expected here


@pytest.fixture
def caches() -> Iterator[Callable[[Behaviour], CacheServer]]:
    started: list[CacheServer] = []

    def start(behaviour: Behaviour) -> CacheServer:
        server = CacheServer(behaviour)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _reader(store: Backend, proxies: list[str], **settings: Any) -> CacheProxies:
    sleeps: list[float] = []
    options = {"fallback_spread": 2.0, "connect_timeout": 1.0, "read_timeout": 5.0, **settings}
    reader = CacheProxies(store, FleetSettings(tuple(proxies), **options), sleep=sleeps.append)
    reader.sleeps = sleeps  # type: ignore[attr-defined]
    return reader


def _read(reader: Backend, start: int = 0, end: int = SIZE) -> bytes:
    return b"".join(reader.read_range("lab/app:1.sif", start, end, ETAG))


def _refused_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_good_cache_serves_every_byte(caches: Any) -> None:
    cache = caches(good)
    store = MemoryStore()
    reader = _reader(store, [cache.url])
    assert _read(reader, 1000, SIZE - 7) == DATA[1000 : SIZE - 7]
    assert store.bytes == 0 and reader.stats["cache_bytes"] == SIZE - 1007
    path, headers = cache.seen[0]
    assert path == URL  # an absolute-URI proxy request for the store's own host
    assert headers["Host"] == "store.example:9000"
    assert headers["If-Match"] == f'"{ETAG}"' and REFRESH_HEADER not in headers


def test_caches_in_order_then_the_store_spread_and_capped(caches: Any) -> None:
    def unavailable(handler: CacheHandler, start: int, end: int) -> None:
        handler.answer(503, b"busy")

    rack = caches(unavailable)
    store = MemoryStore()
    reader = _reader(store, [_refused_port(), rack.url], fallback_concurrency=2)
    assert _read(reader, 0, 1000) == DATA[:1000]  # both caches fail and are skipped...
    store.slow = threading.Event()  # (hold each read a moment so that they overlap)
    with ThreadPoolExecutor(8) as pool:
        parts = list(
            pool.map(lambda s: _read(reader, s, min(SIZE, s + 2**20)), range(0, SIZE, 2**20))
        )
    assert b"".join(parts) == DATA
    assert len(rack.seen) == 1  # ...by every thread, not asked again for each range
    assert store.most_active <= 2  # the herd comes back to the store at a bounded rate
    assert len(reader.sleeps) >= 1 and all(0 <= s <= 2.0 for s in reader.sleeps)  # type: ignore[attr-defined]
    assert reader.stats["direct_bytes"] == SIZE + 1000


@pytest.mark.parametrize(
    "behaviour",
    [
        lambda h, s, e: h.answer(200, DATA, ETag=f'"{ETAG}"'),  # the whole object
        lambda h, s, e: h.answer(
            206, DATA[s:e], Content_Range=f"bytes 0-{e - s - 1}/{SIZE}", ETag=f'"{ETAG}"'
        ),
        lambda h, s, e: h.answer(
            206, DATA[s:e], Content_Range=f"bytes {s}-{e - 1}/{SIZE}", ETag='"0123"'
        ),
        lambda h, s, e: h.answer(206, DATA[s:e], Content_Range=f"bytes {s}-{e - 1}/{SIZE}"),
    ],
    ids=["200", "content-range", "etag", "no-etag"],
)
def test_a_malformed_answer_is_a_failed_cache(caches: Any, behaviour: Behaviour) -> None:
    bad, site = caches(behaviour), caches(good)
    store = MemoryStore()
    reader = _reader(store, [bad.url, site.url])
    assert _read(reader, 100) == DATA[100:]
    assert store.bytes == 0 and reader.stats["cache_failures"] == 1


def test_a_body_cut_short_continues_where_it_stopped(caches: Any) -> None:
    def cut(handler: CacheHandler, start: int, end: int) -> None:
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{SIZE}")
        handler.send_header("ETag", f'"{ETAG}"')
        handler.send_header("Content-Length", str(end - start))
        handler.end_headers()
        handler.wfile.write(DATA[start : start + 100_000])
        handler.close_connection = True

    store = MemoryStore()
    reader = _reader(store, [caches(cut).url])
    assert _read(reader) == DATA
    assert reader.stats["cache_bytes"] == 100_000 and store.bytes == SIZE - 100_000


def test_a_cache_holding_its_answer_back_is_stopped_by_the_watch(caches: Any) -> None:
    """nginx sends no head while the slice it fills trickles in from the store: the pull's
    stall watch and its Ctrl-C end that wait as they end a silent body (it used to last
    read_timeout, 300 s, per cache, with the download lock held)."""
    release = threading.Event()

    def holds(handler: CacheHandler, start: int, end: int) -> None:
        release.wait(60)
        good(handler, start, end)

    cache = caches(holds)
    try:
        store = MemoryStore()
        reader = _reader(store, [cache.url], read_timeout=60.0)
        stalled = ReadWatch()
        threading.Timer(0.3, stalled.stop, [Stalled("no data for 0.3 s")]).start()
        began = time.monotonic()
        assert _read_watched(reader, stalled) == DATA and store.bytes == SIZE  # on to the store
        assert reader.stats["cache_failures"] == 1 and time.monotonic() - began < 10

        interrupted = ReadWatch()  # Ctrl-C while a cache holds back its answer
        threading.Timer(0.3, interrupted.cancel).start()
        began = time.monotonic()
        with pytest.raises(ReadCancelled):
            _read_watched(_reader(MemoryStore(), [cache.url], read_timeout=60.0), interrupted)
        assert time.monotonic() - began < 10
    finally:
        release.set()


def _read_watched(reader: Backend, watch: ReadWatch) -> bytes:
    return b"".join(reader.read_range("lab/app:1.sif", 0, SIZE, ETAG, watch=watch))


def test_412_means_the_object_changed(caches: Any) -> None:
    store = MemoryStore()
    reader = _reader(store, [caches(lambda h, s, e: h.answer(412, b"")).url])
    with pytest.raises(ObjectChanged):
        _read(reader)
    assert store.bytes == 0


def test_403_goes_to_the_store_not_to_the_next_cache(caches: Any) -> None:
    refused, site = caches(lambda h, s, e: h.answer(403, b"no")), caches(good)
    store = MemoryStore()
    reader = _reader(store, [refused.url, site.url])
    assert _read(reader) == DATA
    assert store.bytes == SIZE and site.seen == []


def test_verification_failures_refresh_then_bypass(caches: Any) -> None:
    cache = caches(good)
    store = MemoryStore()
    reader = _reader(store, [cache.url])
    _read(reader)
    assert reader.bypass_caches() == "refresh"
    _read(reader)
    assert cache.seen[-1][1][REFRESH_HEADER] == "1"
    assert reader.bypass_caches() == "direct"
    seen = len(cache.seen)
    assert _read(reader) == DATA and len(cache.seen) == seen and store.bytes == SIZE
    assert reader.bypass_caches() is None
    assert len(reader.sleeps) == 2  # type: ignore[attr-defined]  # each step down is spread


def test_no_shared_url_reads_from_the_store_unthrottled(caches: Any) -> None:
    cache = caches(good)
    store = MemoryStore(url=None)  # e.g. Swift without TempURLs
    reader = _reader(store, [cache.url])
    assert _read(reader) == DATA and cache.seen == [] and reader.sleeps == []  # type: ignore[attr-defined]
    assert reader.bypass_caches() == "refresh"  # and then the same reads again


def test_a_store_that_cannot_sign_is_read_directly(caches: Any) -> None:
    from registry_client.errors import AuthError

    class NoKeys(MemoryStore):
        def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
            raise AuthError("no S3 credentials found")

    cache = caches(good)
    reader = _reader(NoKeys(), [cache.url])
    assert _read(reader) == DATA and cache.seen == []


def test_the_ranges_of_a_pull_sign_once(caches: Any) -> None:
    class SlowSigner(MemoryStore):
        calls = 0

        def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
            SlowSigner.calls += 1
            threading.Event().wait(0.2)  # e.g. a Swift cluster's /info and account HEAD
            return URL

    cache = caches(good)
    reader = _reader(SlowSigner(), [cache.url])
    with ThreadPoolExecutor(8) as pool:
        parts = list(
            pool.map(lambda s: _read(reader, s, min(SIZE, s + 2**20)), range(0, SIZE, 2**20))
        )
    assert b"".join(parts) == DATA and SlowSigner.calls == 1 and reader.stats["direct_bytes"] == 0


def test_the_url_never_reaches_logs_or_errors(
    caches: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = caches(lambda h, s, e: h.answer(502, URL.encode()))
    reader = _reader(MemoryStore(), [bad.url, _refused_port()])
    assert _read(reader) == DATA
    with pytest.raises(ObjectChanged) as info:
        _read(_reader(MemoryStore(), [caches(lambda h, s, e: h.answer(412, b"")).url]))
    assert "SECRETSIGNATURE" not in caplog.text + str(info.value)
    assert "cache proxy" in caplog.text


# -- cache import: the no-cache-server path ------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, str]:
    """A file remote with one pushed image, a config naming it, and a copy of the image."""
    from registry_client import sif
    from tests.support.helpers import run_cli

    image = tmp_path / "app.sif"
    sif.make_test_sif(image, 2 * 1024 * 1024, seed=5)
    config = tmp_path / "config.toml"
    config.write_text(
        f'default_remote = "lab"\n[remotes.lab]\ntype = "file"\npath = "{tmp_path / "bucket"}"\n'
    )
    env = {
        "REGISTRY_CLIENT_CONFIG": str(config),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "node"),
    }
    assert run_cli("push", str(image), "lab/app:1", env=env).returncode == 0
    delivered = tmp_path / "delivered.sif"  # what sbcast would have left on the node
    delivered.write_bytes(image.read_bytes())
    return {**env, "image": str(image), "delivered": str(delivered)}


def _cli(lab: dict[str, str], *args: str) -> Any:
    from tests.support.helpers import run_cli

    env = {k: v for k, v in lab.items() if k.startswith("REGISTRY_CLIENT_")}
    return run_cli(*args, env=env)


def test_cache_import_verifies_and_publishes(lab: dict[str, str]) -> None:
    import json

    done = _cli(lab, "cache", "import", "--json", lab["delivered"], "lab/app:1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    sha = hashlib.sha256(Path(lab["image"]).read_bytes()).hexdigest()
    assert result["sha256"] == sha and {"etag", "sha256"} <= set(result["verified"])
    published = Path(result["path"])
    assert published.read_bytes() == Path(lab["image"]).read_bytes()
    assert published.stat().st_ino != Path(lab["delivered"]).stat().st_ino  # a copy of ours
    assert published.stat().st_mode & 0o777 == 0o444
    Path(lab["delivered"]).unlink()
    pulled = _cli(lab, "pull", "--offline", "lab/app:1")  # the tag is recorded: a cache hit
    assert pulled.returncode == 0 and pulled.stdout.strip() == str(published)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_cache_import_refuses_a_file_that_does_not_match(lab: dict[str, str], damage: str) -> None:
    path = Path(lab["delivered"])
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
    else:
        del data[-1]
    path.write_bytes(bytes(data))
    done = _cli(lab, "cache", "import", str(path), "lab/app:1")
    assert (
        done.returncode == 4
        and done.stderr.startswith("error: ")
        and "Traceback" not in done.stderr
    )
    assert not list((Path(lab["REGISTRY_CLIENT_CACHE_DIR"]) / "v1" / "sif" / "sha256").glob("*"))


def test_cache_import_refuses_what_cannot_be_verified(lab: dict[str, str], tmp_path: Path) -> None:
    other = tmp_path / "bucket" / "lab" / "other:1.sif"  # written by another tool: no metadata
    other.write_bytes(Path(lab["image"]).read_bytes())
    done = _cli(lab, "cache", "import", lab["delivered"], "lab/other:1")
    assert done.returncode == 4 and "cannot be verified" in done.stderr
    missing = _cli(lab, "cache", "import", str(tmp_path / "nope.sif"), "lab/app:1")
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
