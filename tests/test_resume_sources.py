"""Every source resumes: a pull killed (kill -9) mid-download is continued by the next one —
only the missing ranges are fetched, the whole file is verified — for library:// and
shub:// images, docker:// layer blobs and bucket objects alike (one acquire pipeline).
The stores are slowed through the fault proxy so that the kill lands mid-body."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client.config import RemoteConfig
from tests.conftest import new_bucket
from tests.support.backend_contract import write_random
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.fixtures_library import LibraryFixture, LibraryImage
from tests.support.fixtures_oci import NEEDS_REGISTRY, Image, Pusher, file, make_layer
from tests.support.fixtures_shub import HubImage, ShubFixture
from tests.support.helpers import console_script, run_cli, s3_options, write_config

MiB = 1024 * 1024
SIZE = 6 * MiB + 7
RATE = 3 * MiB  # bytes per second per ranged GET: a 1 MiB range takes a third of a second


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    cfg = tmp_path / "config.toml"
    if not cfg.exists():
        cfg.write_text("[transfer]\nchunk_size = 1048576\nconcurrency = 2\n")
    return {
        "REGISTRY_CLIENT_CONFIG": str(cfg),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "node"),
        **extra,
    }


def _ranges_on_disk(cache: Path) -> int:
    """Bytes the resume state files of the cache say are on disk."""
    total = 0
    for state in (cache / "v1" / "tmp").glob("*.state"):
        try:
            done = json.loads(state.read_text() or "{}").get("done") or []
        except (OSError, ValueError):
            continue
        total += sum(b - a for a, b in done)
    return total


def kill_mid_download(ref: str, env: dict[str, str]) -> int:
    """Start `pull REF`, kill -9 it once some ranges are on disk; the bytes they hold."""
    cache = Path(env["REGISTRY_CLIENT_CACHE_DIR"])
    proc = subprocess.Popen(
        [*console_script(), "pull", ref],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    try:
        while not (held := _ranges_on_disk(cache)):
            assert proc.poll() is None, f"the pull ended before the kill: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "no range was ever written"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -9
    assert not any((cache / "v1" / "sif" / "sha256").glob("*")), "nothing partial is published"
    return held


def count_from_now(proxy: FaultProxy) -> None:
    """No more faults, and counters that start once the killed pull's exchanges have ended
    (under load the proxy may still be relaying a range the pull asked for before it died)."""
    proxy.clear_faults()
    proxy.wait_idle()
    proxy.reset_stats()


def served(proxy: FaultProxy, fragment: str = "") -> int:
    """Body bytes of the requests made since the proxy's stats were reset."""
    return sum(r.body_bytes for r in proxy.stats.log if fragment in r.target)


def resume(ref: str, env: dict[str, str]) -> dict[str, Any]:
    result = run_cli("pull", "--json", ref, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    cache = Path(env["REGISTRY_CLIENT_CACHE_DIR"])
    assert not list((cache / "v1" / "tmp").glob("*.partial"))
    out: dict[str, Any] = json.loads(result.stdout)
    return out


# -- library:// and shub:// -------------------------------------------------------------------


@pytest.fixture
def library(tmp_path: Path) -> Iterator[tuple[LibraryFixture, FaultProxy, bytes]]:
    data = write_random(tmp_path / "lib.sif", SIZE, seed=51)
    server = LibraryFixture()
    server.add("lab/tools/app:1", LibraryImage(data))
    with FaultProxy(server.store.url) as proxy:
        server.store.url = proxy.url  # the presigned URLs it hands out go through the proxy
        yield server, proxy, data
    server.stop()


def test_library_image_resumes_after_kill_9(
    library: tuple[LibraryFixture, FaultProxy, bytes], tmp_path: Path
) -> None:
    server, proxy, data = library
    env = _env(tmp_path, REGISTRY_CLIENT_LIBRARY_URL=server.url)
    proxy.add_fault(Fault.slow(RATE, times=None, path="/objects/"))
    ref = "library://lab/tools/app:1"
    held = kill_mid_download(ref, env)
    count_from_now(proxy)
    got = resume(ref, env)
    assert got["resumed_bytes"] >= held > 0
    assert Path(got["path"]).read_bytes() == data and "sha256" in got["verified"]
    assert served(proxy) <= SIZE - got["resumed_bytes"] + 1  # the rest, and the size probe


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[ShubFixture, FaultProxy, bytes]]:
    data = write_random(tmp_path / "hub.simg", SIZE, seed=52)
    server = ShubFixture(ranges=True)
    server.images["vsoch/big:latest"] = HubImage(data)
    with FaultProxy(server.files.url) as proxy:
        server.files.url = proxy.url
        yield server, proxy, data


def test_shub_image_resumes_after_kill_9(
    hub: tuple[ShubFixture, FaultProxy, bytes], tmp_path: Path
) -> None:
    server, proxy, data = hub
    env = _env(tmp_path, REGISTRY_CLIENT_SHUB_URL=server.url)
    proxy.add_fault(Fault.slow(RATE, times=None, path="/files/"))
    held = kill_mid_download("shub://vsoch/big", env)
    count_from_now(proxy)
    got = resume("shub://vsoch/big", env)
    assert got["resumed_bytes"] >= held > 0
    assert Path(got["path"]).read_bytes() == data and "md5" in got["verified"]
    assert served(proxy) <= SIZE - got["resumed_bytes"] + 1


# -- docker:// layer blobs ----------------------------------------------------------------------


@NEEDS_REGISTRY
def test_docker_layer_blob_resumes_after_kill_9(docker_registry: Any, tmp_path: Path) -> None:
    payload = write_random(tmp_path / "payload", SIZE, seed=53)
    layer = make_layer([file("data.bin", payload)], compression=None)
    Pusher(docker_registry.url).image("resume/big", Image([layer], "amd64", {}), "1")
    with FaultProxy(docker_registry.url) as proxy:
        host = proxy.url.split("//", 1)[1]
        blob = f"/blobs/{layer.descriptor['digest']}"
        proxy.add_fault(Fault.slow(RATE, times=None, path=blob, has_range=True))
        env = _env(tmp_path)
        ref = f"docker://{host}/resume/big:1"
        held = kill_mid_download(ref, env)
        count_from_now(proxy)
        got = resume(ref, env)
        fetched = served(proxy, blob)
    size = layer.descriptor["size"]
    assert held > 0 and fetched <= size - held + 1  # not the ranges on disk (+ the size probe)
    assert "blob-sha256" in got["verified"]
    digest = hashlib.sha256(Path(got["path"]).read_bytes()).hexdigest()
    assert got["sha256"] == digest


# -- a bucket object, for comparison: the same pipeline ----------------------------------------


@pytest.mark.servers
def test_bucket_object_resumes_after_kill_9(moto_server: Any, tmp_path: Path) -> None:
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        options = {**s3_options(moto_server, new_bucket(moto_server)), "endpoint_url": proxy.url}
        remote = RemoteConfig("lab", "s3", options)
        env = _env(tmp_path)
        write_config(Path(env["REGISTRY_CLIENT_CONFIG"]), {"lab": remote}, "lab")
        with open(env["REGISTRY_CLIENT_CONFIG"], "a") as fh:
            fh.write("\n[transfer]\nchunk_size = 1048576\nconcurrency = 2\n")
        data = write_random(tmp_path / "img.sif", SIZE, seed=54)
        assert run_cli("push", str(tmp_path / "img.sif"), "lab/app:1", env=env).returncode == 0
        proxy.add_fault(Fault.slow(RATE, times=None, method="GET", has_range=True))
        held = kill_mid_download("lab/app:1", env)
        count_from_now(proxy)
        got = resume("lab/app:1", env)
        assert got["resumed_bytes"] >= held > 0
        assert Path(got["path"]).read_bytes() == data
        assert served(proxy, "lab/app") <= SIZE - got["resumed_bytes"]
