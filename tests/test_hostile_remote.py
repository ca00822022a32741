"""What a store sends is untrusted: attacks by real metadata on real servers, and by a
store that lies (the fault proxy rewriting its answers), against the installed CLI.

Each test performs the attack end to end and checks what the user gets: the right bytes
or a clean exit 4, a warning that names what was ignored, nothing else on the node
touched, and bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from swiftclient.client import Connection

from registry_client.config import RemoteConfig
from tests.support.backend_contract import write_random
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.helpers import (
    run_cli,
    run_cli_measured,
    s3_client,
    s3_options,
    write_config,
)

pytestmark = pytest.mark.servers
MiB = 1024 * 1024


def _env(tmp_path: Path, remote: RemoteConfig) -> dict[str, str]:
    cfg = write_config(tmp_path / "config.toml", {"lab": remote}, "lab")
    return {
        "REGISTRY_CLIENT_CONFIG": str(cfg),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "nodecache"),
    }


def _traversal_to(target: Path, env: dict[str, str]) -> str:
    """The `sha256` that made a pull return `target` (any *.sif on the node): the path
    from the cache's image folder to it, without its .sif suffix."""
    images = Path(env["REGISTRY_CLIENT_CACHE_DIR"]) / "v1" / "sif" / "sha256"
    return os.path.relpath(str(target)[: -len(".sif")], images)


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "someone-elses" / "image.sif"
    victim.parent.mkdir()
    victim.write_bytes(b"not what the remote holds")
    return victim


def _check_pulled_the_real_bytes(
    env: dict[str, str], data: bytes, victim: Path, ref: str = "lab/evil:1"
) -> None:
    for args in (["pull", ref], ["pull", "--offline", ref]):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        path = Path(result.stdout.strip())
        assert path.read_bytes() == data and path != victim
        assert path.parent == Path(env["REGISTRY_CLIENT_CACHE_DIR"]) / "v1" / "sif" / "sha256"
        assert path.name == f"{hashlib.sha256(data).hexdigest()}.sif"
    first = run_cli("pull", "--force", ref, env=env)
    assert "is not 64 lower-case hex digits; ignored" in first.stderr
    assert victim.read_bytes() == b"not what the remote holds"


# -- remote metadata never becomes a path -------------------------------------------------


def test_s3_sha256_metadata_is_not_a_path(
    tmp_path: Path, s3_server: Any, s3_remote: RemoteConfig
) -> None:
    """x-amz-meta-sha256 `../../…/image` used to return that file, downloading nothing."""
    env, victim = _env(tmp_path, s3_remote), _victim(tmp_path)
    data = write_random(tmp_path / "evil.sif", MiB + 7, seed=3)
    s3_client(s3_server).put_object(
        Bucket=s3_remote.location,
        Key="lab/evil:1.sif",
        Body=data,
        Metadata={"sha256": _traversal_to(victim, env)},
    )
    _check_pulled_the_real_bytes(env, data, victim)


def test_swift_sha256_metadata_is_not_a_path(tmp_path: Path, swift_server: Any) -> None:
    container = f"rc-{uuid.uuid4().hex[:12]}"
    conn = Connection(swift_server.auth_url, swift_server.user, swift_server.key, retries=0)
    conn.put_container(container)
    remote = RemoteConfig(
        "lab",
        "swift",
        {
            "bucket": container,
            "auth_url": swift_server.auth_url,
            "user": swift_server.user,
            "key": swift_server.key,
        },
    )
    env, victim = _env(tmp_path, remote), _victim(tmp_path)
    data = write_random(tmp_path / "evil.sif", MiB + 7, seed=4)
    conn.put_object(
        container,
        "lab/evil:1.sif",
        data,
        headers={"X-Object-Meta-Sha256": _traversal_to(victim, env)},
    )
    _check_pulled_the_real_bytes(env, data, victim)


def test_file_remote_sidecar_sha256_is_not_a_path(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    remote = RemoteConfig("lab", "file", {"path": str(bucket)})
    env, victim = _env(tmp_path, remote), _victim(tmp_path)
    data = write_random(tmp_path / "evil.sif", 100_000, seed=5)
    (bucket / "lab").mkdir(parents=True)
    (bucket / "lab" / "evil:1.sif").write_bytes(data)
    sidecar = {
        "etag": hashlib.md5(data).hexdigest(),
        "size": str(len(data)),
        "sha256": _traversal_to(victim, env),
    }
    (bucket / "lab" / ".evil:1.sif.meta.json").write_text(json.dumps(sidecar))
    _check_pulled_the_real_bytes(env, data, victim)


# -- remote metadata never becomes a loop bound or an allocation --------------------------


def test_part_size_of_one_byte_is_ignored_and_memory_stays_flat(
    tmp_path: Path, moto_server: Any
) -> None:
    """`part-size: 1` on a 16 MiB multipart object made a pull allocate ~80 bytes per
    image byte (2.9 GB peak); now the value is ignored with a warning, the ETag verified."""
    from boto3.s3.transfer import TransferConfig

    bucket = f"rc-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_server)
    client.create_bucket(Bucket=bucket)
    remote = RemoteConfig("lab", "s3", s3_options(moto_server, bucket))
    env = _env(tmp_path, remote)
    data = write_random(tmp_path / "big.sif", 16 * MiB + 5, seed=6)
    client.upload_file(
        str(tmp_path / "big.sif"),
        bucket,
        "lab/big:1.sif",
        ExtraArgs={"Metadata": {"part-size": "1", "sha256": hashlib.sha256(data).hexdigest()}},
        Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB),
    )
    result, peak = run_cli_measured("pull", "lab/big:1", env=env)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).read_bytes() == data
    assert "metadata part-size '1' is outside the stores' limits" in result.stderr
    print(f"\npeak RSS of the pull: {peak} MiB")
    assert peak < 200


# -- a store that lies ------------------------------------------------------------------


@pytest.fixture
def lying(tmp_path: Path, moto_server: Any) -> Any:
    bucket = f"rc-{uuid.uuid4().hex[:12]}"
    s3_client(moto_server).create_bucket(Bucket=bucket)
    with FaultProxy(moto_server.s3_endpoint) as proxy:
        remote = RemoteConfig(
            "lab", "s3", {**s3_options(moto_server, bucket), "endpoint_url": proxy.url}
        )
        yield proxy, bucket, _env(tmp_path, remote)


def _put(moto_server: Any, bucket: str, data: bytes, **extra: Any) -> None:
    s3_client(moto_server).put_object(Bucket=bucket, Key="lab/img:1.sif", Body=data, **extra)


@pytest.mark.parametrize(
    ("headers", "said"),
    [
        ({"Content-Length": str(10**15)}, "beyond what any store holds"),
        ({"Content-Length": "-5"}, "beyond what any store holds"),
        ({"ETag": '"' + "0" * 32 + '-99999"'}, "which S3 cannot make"),
        ({"ETag": '"abc\\u001b[31m"', "x-amz-meta-sha256": "../x"}, "is not 64 lower-case hex"),
    ],
)
def test_lying_heads_exit_4_before_any_download(
    lying: Any, moto_server: Any, headers: dict[str, str], said: str
) -> None:
    proxy, bucket, env = lying
    _put(moto_server, bucket, os.urandom(MiB))
    proxy.add_fault(Fault.headers(headers, times=None, method="HEAD"))
    result = run_cli("pull", "lab/img:1", env=env)
    assert result.returncode == 4, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert proxy.stats.get_bytes == 0  # refused from the HEAD alone
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("error:")]) == 1
    assert lines[-1].startswith("hint: ")


def test_server_error_text_cannot_forge_lines(lying: Any, moto_server: Any) -> None:
    proxy, bucket, env = lying
    body = (
        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidArgument</Code>"
        b"<Message>no&#10;error: forged by the server&#13;hint: run rm -rf ~</Message>"
        b"</Error>"
    )
    proxy.add_fault(Fault.status(400, times=None, body=body))
    result = run_cli("ls", env=env)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) <= 2 and lines[0].startswith("error: ")
    assert "no\\nerror: forged by the server\\rhint: run rm -rf ~" in lines[0]
    assert not any(line.startswith(("error: forged", "hint: run")) for line in lines)
