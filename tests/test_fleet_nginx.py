"""Many nodes, one copy from the store: the shipped nginx site cache, end to end.

Swift all-in-one is the store (S3 through s3api, and native Swift with TempURLs), behind a
counting proxy that says how many bytes the store served; Debian's nginx runs the
repository's contrib/nginx/registry-client-cache.conf; each node is a `registry-client pull`
process with a cache of its own, all started at once. docs/fleet.md explains the set-up.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from registry_client import sif
from registry_client.sigv4 import Credentials, host_header, presign_url
from tests.support.faultproxy import FaultProxy
from tests.support.helpers import clear_of_window_boundary, console_script, s3_client
from tests.support.servers.nginx_cache import NginxCache, flip_byte, start_nginx_cache

pytestmark = pytest.mark.servers

MiB = 1024 * 1024
IMAGE = 24 * MiB
CHUNK = 2 * MiB  # the nodes' range size = the cache's slice
SLICE = "2m"
NODES = 6
SECRETS = ("X-Amz-Signature", "temp_url_sig", "Signature=")


@dataclass
class Node:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.out)


class Site:
    """The store (counted), images, node configs, and herds of node processes."""

    def __init__(self, swift: Any, store: FaultProxy, work: Path) -> None:
        self.swift = swift
        self.store = store
        self.work = work
        self.bucket = f"fleet-{uuid.uuid4().hex[:10]}"
        s3_client(swift).create_bucket(Bucket=self.bucket)
        self.image = work / "app.sif"
        sif.make_test_sif(self.image, IMAGE, seed=7)
        self.sha256 = hashlib.sha256(self.image.read_bytes()).hexdigest()
        self.size = self.image.stat().st_size

    def s3_remote(self) -> dict[str, Any]:
        return {
            "type": "s3",
            "bucket": self.bucket,
            "endpoint_url": self.store.url,  # the nodes (and the caches) reach the store here
            "region": "us-east-1",
            "access_key_id": self.swift.access_key,
            "secret_access_key": self.swift.secret_key,
        }

    def config(self, name: str, remote: dict[str, Any], **fleet: Any) -> Path:
        data = {
            "default_remote": "lab",
            "remotes": {"lab": remote},
            "transfer": {"chunk_size": CHUNK, "part_size": 8 * MiB},
            "fleet": {"fallback_spread": 0.5, **fleet},
        }
        path = self.work / f"{name}.toml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(tomlkit.dumps(data))
        return path

    def env(self, config: Path, cache: str) -> dict[str, str]:
        return {
            **os.environ,
            "REGISTRY_CLIENT_CONFIG": str(config),
            "REGISTRY_CLIENT_CACHE_DIR": str(self.work / "nodes" / cache),
        }

    def push(self, config: Path, ref: str = "lab/app:1") -> None:
        cmd = [*console_script(), "push", str(self.image), ref]
        done = subprocess.run(cmd, env=self.env(config, "pusher"), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def herd(self, config: Path, n: int, ref: str = "lab/app:1", tag: str = "") -> list[Node]:
        """n nodes pulling at once, each into its own cache."""
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [*console_script(), "-v", "pull", "--json", ref],
                env=self.env(config, f"node-{tag}{i}-{uuid.uuid4().hex[:6]}"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            for i in range(n)
        ]
        nodes = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            nodes.append(Node(proc.returncode, out, err, time.monotonic() - started))
        return nodes

    def assert_verified(self, nodes: list[Node], *, direct: bool = False) -> None:
        for node in nodes:
            assert node.code == 0, node.err
            assert direct or "reading from the store" not in node.err, node.err
            result = node.result
            assert result["sha256"] == self.sha256 and "sha256" in result["verified"]
            assert hashlib.sha256(Path(result["path"]).read_bytes()).hexdigest() == self.sha256
            assert not any(s in node.err for s in SECRETS), node.err

    def store_copies(self) -> float:
        return self.store.stats.get_bytes / self.size


@pytest.fixture
def site(swift_server: Any, tmp_path: Path) -> Iterator[Site]:
    clear_of_window_boundary()
    with FaultProxy(swift_server.s3_endpoint, idle_timeout=120) as store:
        yield Site(swift_server, store, tmp_path)


@pytest.fixture
def nginx() -> Iterator[Callable[..., NginxCache]]:
    started: list[NginxCache] = []

    def start(upstream: str, authz: str | None = None) -> NginxCache:
        server = start_nginx_cache(
            _hostport(upstream), authz=authz and _hostport(authz), slice_size=SLICE
        )
        started.append(server)
        return server

    yield start
    for server in started:
        logs = server.logs_text()
        server.stop()
        assert not any(s in logs for s in SECRETS), "a signed URL reached the cache's logs"


def _hostport(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


def test_a_herd_through_the_cache_costs_the_store_one_copy(site: Site, nginx: Any) -> None:
    cache = nginx(site.store.url)
    config = site.config("site", site.s3_remote(), cache_proxies=[cache.url])
    site.push(config)
    site.store.reset_stats()
    nodes = site.herd(config, NODES)
    site.assert_verified(nodes)
    copies = site.store_copies()
    print(f"\n{NODES} nodes through the site cache: the store served {copies:.3f} copies")
    assert copies <= 1.05


def test_without_the_cache_the_store_serves_every_node(site: Site) -> None:
    config = site.config("direct", site.s3_remote())
    site.push(config)
    site.store.reset_stats()
    site.assert_verified(site.herd(config, 3), direct=True)
    assert site.store_copies() >= 2.95


def test_a_flipped_byte_in_the_cache_is_caught_and_healed_once(site: Site, nginx: Any) -> None:
    cache = nginx(site.store.url)
    config = site.config("site", site.s3_remote(), cache_proxies=[cache.url])
    site.push(config)
    site.store.reset_stats()
    site.assert_verified(site.herd(config, 1))  # fills the cache
    slices = cache.slice_files()
    assert len(slices) == -(-site.size // CHUNK)
    flip_byte(slices[len(slices) // 2])
    nodes = site.herd(config, 4)
    site.assert_verified(nodes)  # every node still ends with the verified image
    refreshed = sum("refreshed" in node.err for node in nodes)
    print(f"\n{refreshed} of 4 nodes got the flipped byte and refreshed", [n.err for n in nodes])
    assert refreshed >= 1  # (a node that read the slice after the first refresh got it healed)
    copies = site.store_copies()
    print(f"\nfill + flipped byte + 4 nodes refreshing: the store served {copies:.3f} copies")
    assert copies <= 2.05  # the refreshes of the herd cost the store one copy, not four
    later = site.herd(config, 2)  # the cache's entry was healed for everyone
    site.assert_verified(later)
    assert not any("refreshed" in node.err for node in later)
    assert site.store_copies() <= copies + 0.01


def _get(cache: NginxCache, url: str, start: int = 0, end: int = MiB) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    try:
        headers = {"Host": host_header(url), "Range": f"bytes={start}-{end - 1}"}
        conn.request("GET", url, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_bad_or_expired_signature_gets_403_never_the_bytes(site: Site, nginx: Any) -> None:
    cache = nginx(site.store.url)
    config = site.config("site", site.s3_remote(), cache_proxies=[cache.url])
    site.push(config)
    site.assert_verified(site.herd(config, 1))  # the slices are in the cache now
    creds = Credentials(site.swift.access_key, site.swift.secret_key)
    base = f"{site.store.url}/{site.bucket}/lab/app%3A1.sif"
    now = int(time.time())
    good = presign_url(base, creds, "us-east-1", signed_at=now - 60, expires=3600)
    head = site.image.read_bytes()[:MiB]
    assert _get(cache, good) == (206, head)
    wrong_key = Credentials(site.swift.access_key, "not-the-key")
    bad = {
        "tampered": good[:-6] + ("000000" if not good.endswith("000000") else "111111"),
        "expired": presign_url(base, creds, "us-east-1", signed_at=now - 7200, expires=3600),
        "wrong key": presign_url(base, wrong_key, "us-east-1", signed_at=now - 60, expires=3600),
        "unsigned": base,
    }
    for what, url in bad.items():
        status, body = _get(cache, url)
        # (Swift answers a request with no signature at all with 400, which nginx's
        # auth_request turns into 500; AWS answers 403. Either way: no bytes.)
        assert status == 403 or (what == "unsigned" and status == 500), what
        assert head[:4096] not in body, what


def _hung_listener() -> tuple[socket.socket, str]:
    """A cache that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def _refused() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_caches_down_nodes_fall_back_within_the_timeout(site: Site) -> None:
    hung, hung_url = _hung_listener()
    try:
        config = site.config(
            "down",
            site.s3_remote(),
            cache_proxies=[_refused(), hung_url],
            connect_timeout=1,
            read_timeout=2,
            fallback_spread=2,
        )
        site.push(config)
        site.store.reset_stats()
        nodes = site.herd(config, 3)
    finally:
        hung.close()
    site.assert_verified(nodes, direct=True)
    for node in nodes:
        # The first range: refused at once, then 2 s of silence from the hung cache; the
        # node then waits a random part of the 2 s spread before reading from the store.
        gave_up, delay = _fell_back(node.err)
        assert gave_up < 2 + 8, node.err  # (8 s of slack for a loaded machine)
        assert 0 <= delay <= 2
    assert site.store_copies() >= 2.95


def _fell_back(log: str) -> tuple[float, float]:
    """From a node's -v log: seconds from its first log line to giving up on the caches,
    and the random wait it then took."""
    import re
    from datetime import datetime

    def when(line: str) -> float:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

    lines = [line for line in log.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    warning = next(line for line in lines if "reading from the store in" in line)
    delay = float(re.findall(r"reading from the store in ([0-9.]+)s", warning)[0])
    return when(warning) - when(lines[0]), delay


def test_rack_caches_under_a_site_cache_one_store_copy(site: Site, nginx: Any) -> None:
    site_cache = nginx(site.store.url)
    racks = [nginx(site_cache.url, authz=site.store.url) for _ in range(2)]
    configs = [
        site.config(f"rack{i}", site.s3_remote(), cache_proxies=[rack.url, site_cache.url])
        for i, rack in enumerate(racks)
    ]
    site.push(configs[0])
    site.store.reset_stats()
    nodes = []
    for i, config in enumerate(configs):
        nodes += site.herd(config, 2, tag=f"r{i}")
    site.assert_verified(nodes)
    copies = site.store_copies()
    print(f"\n2 racks x 2 nodes under one site cache: the store served {copies:.3f} copies")
    assert copies <= 1.05
    assert sum(len(r.slice_files()) for r in racks) == 2 * -(-site.size // CHUNK)
    racks[0].stop()  # a rack cache dies: its nodes go to the site cache, not the store
    site.assert_verified(site.herd(configs[0], 2, tag="r0-again"))
    assert site.store_copies() <= copies + 0.01


# -- native Swift: TempURLs ----------------------------------------------------------------


def _swift_token(swift: Any, user: str, key: str) -> str:
    from swiftclient.client import get_auth

    return get_auth(swift.auth_url, user, key)[1]


def _swift_remote(
    site: Site, container: str, user: str = "test:tester", key: str = "testing"
) -> dict[str, Any]:
    from urllib.parse import urlsplit

    token = _swift_token(site.swift, user, key)
    from swiftclient.client import get_auth

    storage = get_auth(site.swift.auth_url, user, key)[0]
    return {
        "type": "swift",
        "bucket": container,
        "storage_url": site.store.url + urlsplit(storage).path,
        "auth_token": token,
    }


def test_swift_tempurls_through_the_cache(site: Site, nginx: Any) -> None:
    from swiftclient.client import Connection

    admin = Connection(site.swift.auth_url, "test:tester", "testing", retries=0)
    container = f"fleet-{uuid.uuid4().hex[:10]}"
    admin.put_container(container)
    # An account key: a container's key would not cover the segments (CONTAINER_segments).
    admin.post_account({"X-Account-Meta-Temp-URL-Key": "account-secret"})
    cache = nginx(site.store.url)
    config = site.config("swift", _swift_remote(site, container), cache_proxies=[cache.url])
    site.push(config)  # an SLO of 8 MiB segments
    site.store.reset_stats()
    nodes = site.herd(config, 4)
    site.assert_verified(nodes)
    copies = site.store_copies()
    print(f"\n4 Swift nodes through TempURLs: the store served {copies:.3f} copies")

    assert copies <= 1.05
    assert len(cache.slice_files()) == -(-site.size // CHUNK)


def test_swift_without_a_tempurl_key_reads_from_the_store(site: Site, nginx: Any) -> None:
    from swiftclient.client import Connection

    other = Connection(site.swift.auth_url, "test2:tester2", "testing2", retries=0)
    container = f"fleet-{uuid.uuid4().hex[:10]}"
    other.put_container(container)
    cache = nginx(site.store.url)
    remote = _swift_remote(site, container, "test2:tester2", "testing2")
    config = site.config("swift2", remote, cache_proxies=[cache.url])
    site.push(config)
    site.store.reset_stats()
    site.assert_verified(site.herd(config, 2), direct=True)
    assert cache.slice_files() == [] and site.store_copies() >= 1.95


def test_cache_import_costs_the_store_a_head(site: Site) -> None:
    config = site.config("import", site.s3_remote())
    site.push(config)
    site.store.reset_stats()
    cmd = [*console_script(), "cache", "import", "--json", str(site.image), "lab/app:1"]
    done = subprocess.run(cmd, env=site.env(config, "importer"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sha256"] == site.sha256 and {"etag", "sha256"} <= set(result["verified"])
    assert site.store.stats.get_bytes == 0 and site.store.stats.requests == {"HEAD": 1}
