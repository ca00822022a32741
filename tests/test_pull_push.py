"""Push and pull through the service and the installed CLI, against real S3 servers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from registry_client import service
from registry_client.backends.s3 import S3Backend
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.errors import IntegrityError, ObjectChanged
from registry_client.names import parse_image_ref
from registry_client.settings import TransferSettings
from tests.support.backend_contract import write_random
from tests.support.helpers import (
    make_context,
    push_then_ctrl_c,
    run_cli,
    s3_client,
    write_config,
)

pytestmark = pytest.mark.servers
MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ctx(tmp_path: Path, s3_remote: RemoteConfig) -> Context:
    return make_context(tmp_path, {"lab": s3_remote}, default="lab", part_size=5 * MiB)


def test_push_then_pull_multipart(ctx: Context, tmp_path: Path) -> None:
    from registry_client import sif

    image = tmp_path / "big.sif"
    sif.make_test_sif(image, 12 * MiB, seed=4)
    pushed = service.push(ctx, str(image), parse_image_ref("lab/app:1.2"), labels={"k": "v"})
    assert pushed.sha256 == sha256_of(image)
    result = service.pull(ctx, parse_image_ref("lab/app:1.2"))
    assert result.sha256 == pushed.sha256 and not result.cached
    assert set(result.verified) == {"size", "etag", "sha256"}
    path = Path(result.path)
    assert path.read_bytes() == image.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.parent == ctx.cache.image_path(pushed.sha256).parent
    again = service.pull(ctx, parse_image_ref("lab/app:1.2"))
    assert again.cached and again.path == result.path
    info = S3Backend.from_remote(ctx.config.remote("lab")).stat("lab/app:1.2.sif")
    assert info.metadata["arch"] == "amd64" and info.metadata["layout"] == "1"
    assert json.loads(info.metadata["labels"]) == {"k": "v"}
    assert info.part_size == 5 * MiB and info.etag.endswith("-3")


def test_foreign_multipart_object_with_unusual_part_size(
    ctx: Context, tmp_path: Path, s3_server: Any
) -> None:
    """Uploaded by plain boto3 with a 6 MiB part size and no metadata: verified by ETag."""
    from boto3.s3.transfer import TransferConfig

    data = write_random(tmp_path / "foreign.sif", 20 * MiB + 17, seed=9)
    bucket = ctx.config.remote("lab").location
    s3_client(s3_server).upload_file(
        str(tmp_path / "foreign.sif"),
        bucket,
        "other/img:v1.sif",
        Config=TransferConfig(multipart_threshold=6 * MiB, multipart_chunksize=6 * MiB),
    )
    result = service.pull(ctx, parse_image_ref("lab:other/img:v1"))
    assert "etag" in result.verified and "sha256" not in result.verified
    assert Path(result.path).read_bytes() == data
    # The ETag → sha256 record makes the next pull a hit without downloading.
    assert service.pull(ctx, parse_image_ref("lab:other/img:v1")).cached


def test_corrupted_object_is_refused_and_nothing_published(
    ctx: Context, tmp_path: Path, s3_server: Any
) -> None:
    image = tmp_path / "a.sif"
    write_random(image, 3 * MiB, seed=1)
    service.push(ctx, str(image), parse_image_ref("lab/app:1"))
    # Same size, different bytes, our metadata kept: only the sha256 can tell.
    remote = ctx.config.remote("lab")
    client = s3_client(s3_server)
    meta = client.head_object(Bucket=remote.location, Key="lab/app:1.sif")["Metadata"]
    client.put_object(
        Bucket=remote.location, Key="lab/app:1.sif", Metadata=meta, Body=os.urandom(3 * MiB)
    )
    with pytest.raises(IntegrityError):
        service.pull(ctx, parse_image_ref("lab/app:1"))
    assert ctx.cache.entries() == []
    assert list((ctx.cache.base / "tmp").iterdir()) == []


def test_repush_during_download_restarts_cleanly(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / "old.sif", tmp_path / "new.sif"
    write_random(old, 11 * MiB, seed=1)
    write_random(new, 11 * MiB, seed=2)
    ref = parse_image_ref("lab/app:moving")
    service.push(ctx, str(old), ref)
    ctx.transfer = TransferSettings(chunk_size=1 * MiB, concurrency=2)
    real_open = S3Backend.open_range
    calls = {"n": 0}

    def open_and_repush(
        self: S3Backend, key: str, start: int, end: int, etag: str | None, **kw: Any
    ) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # mid-download, a new version lands under the same tag
            service.push(ctx, str(new), ref)
        return real_open(self, key, start, end, etag, **kw)

    monkeypatch.setattr(S3Backend, "open_range", open_and_repush)
    result = service.pull(ctx, ref)
    assert result.sha256 == sha256_of(new)
    assert Path(result.path).read_bytes() == new.read_bytes()


def test_object_changed_every_time_gives_up(
    ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_random(tmp_path / "a", 1000)
    service.push(ctx, str(tmp_path / "a"), parse_image_ref("lab/app:x"))

    def always_changed(
        self: S3Backend, key: str, start: int, end: int, etag: str | None, **kw: Any
    ):
        raise ObjectChanged("changed")

    monkeypatch.setattr(S3Backend, "open_range", always_changed)
    with pytest.raises(ObjectChanged):
        service.pull(ctx, parse_image_ref("lab/app:x"))
    assert ctx.cache.entries() == []


def test_pull_output_path(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 5000)
    service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref("lab/app:o"))
    out = tmp_path / "out" / "app.sif"
    out.parent.mkdir()
    result = service.pull(ctx, parse_image_ref("lab/app:o"), output=str(out))
    assert result.path == str(out) and out.read_bytes() == (tmp_path / "a.sif").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["app.sif"]


# -- through the installed console script ------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, s3_remote: RemoteConfig) -> dict[str, str]:
    cfg = write_config(tmp_path / "config.toml", {"lab": s3_remote}, "lab")
    return {
        "REGISTRY_CLIENT_CONFIG": str(cfg),
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "nodecache"),
    }


def test_cli_push_pull_ls_rm(cli_env: dict[str, str], sample_sif: Path) -> None:
    pushed = run_cli("push", str(sample_sif), "lab/app:1.2", env=cli_env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout == f"sha256:{sha256_of(sample_sif)}\n"
    pulled = run_cli("pull", "lab/app:1.2", env=cli_env)
    assert pulled.returncode == 0, pulled.stderr
    path = pulled.stdout.strip()
    assert pulled.stdout == path + "\n" and os.path.isabs(path)
    assert Path(path).read_bytes() == sample_sif.read_bytes()
    listed = json.loads(run_cli("ls", "--json", env=cli_env).stdout)
    assert [r["ref"] for r in listed] == ["lab/app:1.2"]
    assert listed[0]["digest"] == f"sha256:{sha256_of(sample_sif)}"
    inspected = json.loads(run_cli("inspect", "lab/app:1.2", "--json", env=cli_env).stdout)
    assert inspected["arch"] == "amd64" and inspected["sif"]["descriptors"]
    assert run_cli("rm", "lab/app:1.2", env=cli_env).returncode == 0
    gone = run_cli("pull", "lab/app:1.2", "--force", env=cli_env)
    assert gone.returncode == 3 and gone.stderr.startswith("error: ")


def test_cli_direct_s3_url_with_aws_env(
    s3_server: Any, s3_bucket: str, tmp_path: Path, sample_sif: Path
) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.s3_endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    url = f"s3://{s3_bucket}/site/lab/app:2"
    assert run_cli("push", str(sample_sif), url, env=env).returncode == 0
    pulled = run_cli("pull", url, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert Path(pulled.stdout.strip()).read_bytes() == sample_sif.read_bytes()
    assert s3_server.secret_key not in pulled.stdout + pulled.stderr


def test_cli_aws_profile_from_shared_files(
    s3_server: Any, s3_bucket: str, tmp_path: Path, sample_sif: Path
) -> None:
    """AWS_PROFILE picks the keys from the shared credentials file; a missing one is exit 5."""
    creds = tmp_path / "home" / "aws-creds"  # where the autouse fixture points the AWS SDKs
    creds.parent.mkdir(parents=True, exist_ok=True)
    creds.write_text(
        f"[site]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    env = {
        "AWS_PROFILE": "site",
        "AWS_ENDPOINT_URL": s3_server.s3_endpoint,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    url = f"s3://{s3_bucket}/lab/app:3"
    assert run_cli("push", str(sample_sif), url, env=env).returncode == 0
    assert run_cli("pull", url, env=env).returncode == 0
    missing = run_cli("pull", "--force", url, env={**env, "AWS_PROFILE": "nope"})
    assert missing.returncode == 5 and "profile not found" in missing.stderr


def test_cli_wrong_secret_is_exit_5_without_the_secret(
    s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    if type(s3_server).__name__.lower().startswith("moto"):
        pytest.skip("moto accepts any secret")
    remote = RemoteConfig(
        "lab",
        "s3",
        {
            "bucket": s3_bucket,
            "endpoint_url": s3_server.s3_endpoint,
            "access_key_id": s3_server.access_key,
            "secret_access_key": "not-the-secret-xyz",
        },
    )
    cfg = write_config(tmp_path / "c.toml", {"lab": remote}, "lab")
    result = run_cli(
        "--config",
        str(cfg),
        "pull",
        "lab/app:1",
        env={"REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c")},
    )
    assert result.returncode == 5, result.stderr
    assert "not-the-secret-xyz" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_mid_push_exits_130_promptly_and_aborts_the_upload(
    s3_server: Any, s3_bucket: str, tmp_path: Path
) -> None:
    write_random(tmp_path / "big.sif", 200 * MiB, seed=17)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[transfer]\npart_size = 5242880\npush_concurrency = 2\n")
    env = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.s3_endpoint,
        "REGISTRY_CLIENT_CONFIG": str(cfg),
    }
    client = s3_client(s3_server)
    took = push_then_ctrl_c(
        [str(tmp_path / "big.sif"), f"s3://{s3_bucket}/lab/big:1"],
        env,
        lambda: client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads"),
    )
    assert took < 10
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert client.list_objects_v2(Bucket=s3_bucket).get("KeyCount") == 0
