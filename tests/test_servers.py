"""The loopback test servers themselves: each starts, serves a real round trip, and stops clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
import swiftclient
from botocore.config import Config

from tests.support.helpers import azure_service, gcs_client
from tests.support.servers._util import http_request, pid_running
from tests.support.servers.azurite import start_azurite
from tests.support.servers.fake_gcs import start_fake_gcs
from tests.support.servers.moto_server import start_moto
from tests.support.servers.registry import start_registry
from tests.support.servers.swift_aio import start_swift

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[1]


def require(*programs: str) -> None:
    """Skip where the Debian packages are missing, but never on CI, where that is a bug."""
    missing = [p for p in programs if not os.access(p, os.X_OK)]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"missing {missing}: run .ci/install-system-deps")


def s3(server: Any) -> Any:
    # "when_required": do not send the CRC trailers boto3 adds by default since 1.36.
    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 1},
    )
    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=config,
    )


def s3_roundtrip(server: Any, bucket: str = "roundtrip") -> None:
    client = s3(server)
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="dir/a.sif", Body=b"payload")
    assert client.get_object(Bucket=bucket, Key="dir/a.sif")["Body"].read() == b"payload"


def multipart(client: Any, bucket: str, chunks: list[bytes]) -> bytes:
    """Upload ``chunks`` as the parts of one multipart object; return what reads back."""
    upload = client.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    parts = []
    for number, chunk in enumerate(chunks, start=1):
        etag = client.upload_part(
            Bucket=bucket, Key="mp", UploadId=upload, PartNumber=number, Body=chunk
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    return client.get_object(Bucket=bucket, Key="mp")["Body"].read()


def assert_stopped(pids: list[int]) -> None:
    assert pids
    assert [p for p in pids if pid_running(p)] == []


def test_swift_serves_s3_and_native_swift(tmp_path: Path) -> None:
    require("/usr/bin/swift-proxy-server", "/usr/bin/memcached")
    with start_swift(tmp_path) as server:
        pids = server.pids
        assert len(pids) == 5 and all(pid_running(p) for p in pids)
        s3_roundtrip(server)

        # Tiny multipart parts are allowed here (s3api min_segment_size = 1).
        assert multipart(s3(server), "roundtrip", [b"\1" * 3, b"\2" * 3]) == b"\1\1\1\2\2\2"

        conn = swiftclient.Connection(authurl=server.auth_url, user=server.user, key=server.key)
        conn.put_container("native")
        conn.put_object("native", "obj", b"swift-data")
        assert conn.get_object("native", "obj")[1] == b"swift-data"
        assert conn.get_auth()[0] == server.storage_url
    assert_stopped(pids)


def test_two_swifts_start_concurrently_and_stay_separate(tmp_path: Path) -> None:
    require("/usr/bin/swift-proxy-server", "/usr/bin/memcached")
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(start_swift, [tmp_path / "a", tmp_path / "b"])
    with first, second:
        assert first.s3_endpoint != second.s3_endpoint
        s3_roundtrip(first, "only-in-first")
        names = [b["Name"] for b in s3(second).list_buckets()["Buckets"]]
        assert "only-in-first" not in names
        pids = first.pids + second.pids
    assert_stopped(pids)


def test_moto_roundtrip() -> None:
    with start_moto() as server:
        pids = server.pids
        s3_roundtrip(server)
        server.reset()
        assert s3(server).list_buckets()["Buckets"] == []
    assert_stopped(pids)


def test_registry_answers_v2(tmp_path: Path) -> None:
    require("/usr/bin/docker-registry")
    with start_registry(tmp_path) as server:
        pids = server.pids
        result = http_request(f"{server.url}/v2/")
        assert result is not None and result[0] == 200
        assert result[1].get("Docker-Distribution-Api-Version") == "registry/2.0"
    assert_stopped(pids)


def test_azurite_roundtrip(tmp_path: Path) -> None:
    with start_azurite(tmp_path) as server:
        pids = server.pids
        container = azure_service(server).create_container("roundtrip")
        container.upload_blob("dir/a.sif", b"payload")
        assert container.download_blob("dir/a.sif").readall() == b"payload"
    assert_stopped(pids)


def test_fake_gcs_roundtrip(tmp_path: Path) -> None:
    with start_fake_gcs(tmp_path) as server:
        pids = server.pids
        bucket = gcs_client(server).create_bucket("roundtrip")
        bucket.blob("dir/a.sif").upload_from_string(b"payload")
        assert bucket.blob("dir/a.sif").download_as_bytes() == b"payload"
    assert_stopped(pids)


def test_cli_prints_json_then_stops_children_on_sigterm(tmp_path: Path) -> None:
    """`scripts/servers` works from any folder (here: an empty one), without Docker."""
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "servers"), "moto"],
        cwd=tmp_path,
        env={**os.environ, "VIRTUAL_ENV": sys.prefix},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["kind"] == "moto" and info["access_key"]
        s3_roundtrip(SimpleNamespace(**info))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_stopped(info["pids"])
