"""Bounded time for a pull whatever the store does: a body that trickles or stops is
stopped and retried, then the pull exits 6 and frees the node's download lock; Ctrl-C
ends a pull within a second even mid-body. The fault proxy sits in front of the real
servers (moto's S3, Swift's own API, Azurite, fake-gcs-server) and slows or stalls their
bodies.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from swiftclient.client import Connection

from registry_client.config import RemoteConfig
from tests.support.backend_contract import write_random
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.helpers import (
    azure_options,
    azure_service,
    gcs_client,
    gcs_options,
    run_cli,
    s3_client,
    s3_options,
)
from tests.support.stalls import MiB, ctrl_c, stall_config

pytestmark = pytest.mark.servers
SIZE = 3 * MiB + 11


def _behind(url: str, proxy: FaultProxy) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, urlsplit(proxy.url).netloc, parts.path, "", ""))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture(params=["s3", "swift", "azure", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FaultProxy, Any]]:
    """(proxy, remote) with lab/app:1 holding SIZE bytes, every request through the proxy."""
    data = write_random(tmp_path / "app.sif", SIZE, seed=7)
    if request.param == "azure":
        server = request.getfixturevalue("azurite_server")
        container = request.getfixturevalue("azure_container")
        azure_service(server).get_blob_client(container, "lab/app:1.sif").upload_blob(data)
        with FaultProxy(_origin(server.blob_endpoint)) as proxy:
            options = {
                **azure_options(server, container),
                "account_url": _behind(server.blob_endpoint, proxy),
            }
            yield proxy, (RemoteConfig("lab", "azure", options), data)  # ranges in x-ms-range
        return
    if request.param == "gcs":
        server = request.getfixturevalue("gcs_server")
        bucket = request.getfixturevalue("gcs_bucket")
        gcs_client(server).bucket(bucket).blob("lab/app:1.sif").upload_from_string(data)
        with FaultProxy(_origin(server.endpoint)) as proxy:
            options = {**gcs_options(server, bucket), "endpoint_url": proxy.url}
            yield proxy, (RemoteConfig("lab", "gcs", options), data)
        return
    if request.param == "s3":
        server = request.getfixturevalue("moto_server")
        bucket = f"rc-{uuid.uuid4().hex[:12]}"
        client = s3_client(server)
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="lab/app:1.sif", Body=data)
        with FaultProxy(server.s3_endpoint) as proxy:
            options = {**s3_options(server, bucket), "endpoint_url": proxy.url}
            yield proxy, (RemoteConfig("lab", "s3", options), data)
        return
    server = request.getfixturevalue("swift_server")
    conn = Connection(server.auth_url, server.user, server.key, retries=0)
    container = f"rc-{uuid.uuid4().hex[:12]}"
    conn.put_container(container)
    conn.put_object(container, "lab/app:1.sif", data)
    storage_url, token = conn.get_auth()
    with FaultProxy(_origin(storage_url)) as proxy:
        options = {
            "bucket": container,
            "storage_url": _behind(storage_url, proxy),
            "auth_token": token,
        }
        yield proxy, (RemoteConfig("lab", "swift", options), data)


def _bodies(remote: RemoteConfig) -> dict[str, Any]:
    """What the faults match: the ranged GETs of the image (Azure's SDK asks for ranges in
    x-ms-range, and a pull sends it no other GET)."""
    return {} if remote.type == "azure" else {"has_range": True}


def test_a_trickling_body_ends_in_exit_6_and_frees_the_lock(
    store: tuple[FaultProxy, Any], tmp_path: Path
) -> None:
    """1 byte every 2 s used to keep a pull, and the lock other jobs wait on, forever."""
    proxy, (remote, data) = store
    env = stall_config(tmp_path / "config.toml", 1, remote)
    proxy.add_fault(Fault.slow(0.5, times=None, **_bodies(remote)))
    start = time.monotonic()
    result = run_cli("pull", "lab/app:1", env=env, timeout=120)
    took = time.monotonic() - start
    print(f"\ntrickling body: exit {result.returncode} after {took:.1f}s")
    assert result.returncode == 6, result.stderr
    assert "no data for 1 s" in result.stderr and "gave up after" in result.stderr
    assert "Traceback" not in result.stderr
    assert took < 60
    proxy.clear_faults()  # the store recovers: the next pull is not blocked by a lock
    again = run_cli("pull", "lab/app:1", env=env, timeout=60)
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == data


def test_a_stalled_body_is_retried_and_the_pull_completes(
    store: tuple[FaultProxy, Any], tmp_path: Path
) -> None:
    proxy, (remote, data) = store
    env = stall_config(tmp_path / "config.toml", 1, remote)
    stall = proxy.add_fault(Fault.stall(after_bytes=300_000, seconds=60, **_bodies(remote)))
    start = time.monotonic()
    result = run_cli("pull", "lab/app:1", env=env, timeout=60)
    took = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).read_bytes() == data
    assert stall.fired == 1 and took < 20, took


def test_ctrl_c_mid_body_exits_130_within_a_second(
    store: tuple[FaultProxy, Any], tmp_path: Path
) -> None:
    """One Ctrl-C during a slow body used to be ignored for a minute."""
    proxy, (remote, _data) = store
    env = stall_config(tmp_path / "config.toml", 600, remote)
    proxy.add_fault(Fault.slow(1000, times=None, **_bodies(remote)))
    # Pressed once bodies are flowing, slowly.
    ended = ctrl_c(["pull", "lab/app:1"], env, lambda: proxy.stats.get_bytes >= 4000, wait=30)
    print(f"\nCtrl-C mid-body: exit {ended.code} after {ended.seconds:.2f}s")
    assert ended.code == 130 and ended.out == ""
    assert ended.err.strip().splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in ended.err
    assert ended.seconds < 1.0


def test_a_trickling_source_ends_a_migration_in_exit_6(tmp_path: Path, moto_server: Any) -> None:
    """migrate streams store to store (relay.py): its reads are watched the same way."""
    bucket = f"rc-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_server)
    client.create_bucket(Bucket=bucket)
    data = write_random(tmp_path / "app.sif", SIZE, seed=8)
    client.put_object(Bucket=bucket, Key="lab/app:1.sif", Body=data)
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        source = RemoteConfig(
            "lab", "s3", {**s3_options(moto_server, bucket), "endpoint_url": proxy.url}
        )
        env = stall_config(tmp_path / "config.toml", 1, source)
        target = tmp_path / "target"
        proxy.add_fault(Fault.slow(0.5, times=None, has_range=True))
        start = time.monotonic()
        result = run_cli("migrate", "--json", "lab", f"file://{target}", env=env, timeout=120)
        took = time.monotonic() - start
    print(f"\ntrickling source: migrate exit {result.returncode} after {took:.1f}s")
    rows = [json.loads(line) for line in result.stdout.splitlines() if '"ref"' in line]
    assert result.returncode == 6, result.stderr
    assert rows and rows[0]["status"] == "failed" and rows[0]["exit_code"] == 6, rows
    assert "no data for 1 s" in result.stdout + result.stderr
    assert took < 60 and not list(target.rglob("*.sif"))
