"""shub:// against a faithful Singularity Hub API on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_client.errors import (
    AuthError,
    IntegrityError,
    InvalidReference,
    NotFound,
    UnverifiableError,
)
from registry_client.fetch import FetchOptions, pull_fetcher
from registry_client.names import parse_reference
from registry_client.transfer import TransferSettings
from tests.support.fixtures_shub import HubImage, ShubFixture, make_simg, sample_hub
from tests.support.helpers import make_context, run_cli

pytestmark = pytest.mark.skipif(not shutil.which("mksquashfs"), reason="needs squashfs-tools")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[ShubFixture]:
    with sample_hub(tmp_path) as server:
        yield server


@pytest.fixture
def ctx(tmp_path: Path):
    return make_context(tmp_path, transfer=TransferSettings(chunk_size=4096, concurrency=3))


def pull(ctx, hub: ShubFixture, ref: str, **kwargs):
    return pull_fetcher(ctx, parse_reference(ref), options=FetchOptions(shub_url=hub.url), **kwargs)


def published(ctx) -> list[Path]:
    return sorted((ctx.cache.base / "sif" / "sha256").glob("*"))


@pytest.mark.parametrize("ranges", [False, True], ids=["one-stream", "ranged"])
def test_pull_verifies_md5_and_keeps_squashfs(ctx, hub, ranges, tmp_path):
    hub.ranges = ranges
    image = hub.images["vsoch/hello-world:v2"]
    result = pull(ctx, hub, "shub://vsoch/hello-world:v2")
    data = Path(result.path).read_bytes()
    assert data == image.data and data[:4] == b"hsqs"  # squashfs, not SIF: still accepted
    assert "md5" in result.verified
    listing = subprocess.run(["unsquashfs", "-l", result.path], capture_output=True, text=True)
    assert "squashfs-root/etc/motd" in listing.stdout
    files = hub.files.requests_to("/files/")
    if ranges:
        assert len(files) > 2 and all("range" in r.headers for r in files[1:])
    else:
        assert len(files) == 2  # the one-byte probe (ignored) and one whole-body GET
    assert hub.api.log[0].path == "/api/container/vsoch/hello-world:v2"


def test_cache_hit_by_version_and_pinned_versions(ctx, hub):
    image = hub.images["vsoch/hello-world:latest"]
    first = pull(ctx, hub, "shub://vsoch/hello-world")
    downloads = len(hub.files.log)
    again = pull(ctx, hub, "shub://vsoch/hello-world:latest")
    assert again.cached and again.path == first.path and len(hub.files.log) == downloads
    pinned = pull(ctx, hub, f"shub://vsoch/hello-world@{image.md5}", offline=True)
    assert pinned.path == first.path  # md5-pinned: answered from the cache, no network
    by_commit = pull(ctx, hub, f"shub://vsoch/hello-world@{'f' * 40}")
    assert by_commit.sha256 != first.sha256
    # As sregistry-cli: a version without a tag is asked for as :latest@VERSION.
    assert hub.api.log[-1].path == f"/api/container/vsoch/hello-world:latest@{'f' * 40}"


def test_corrupt_or_mismatched_publish_nothing(ctx, hub):
    hub.corrupt = True
    with pytest.raises(IntegrityError, match="md5"):
        pull(ctx, hub, "shub://vsoch/hello-world")
    hub.corrupt, hub.wrong_version = False, True
    with pytest.raises(IntegrityError):
        pull(ctx, hub, "shub://vsoch/hello-world")
    assert published(ctx) == []


def test_errors(ctx, hub):
    with pytest.raises(NotFound):
        pull(ctx, hub, "shub://vsoch/nothing-here")
    hub.wrong_version = True  # the Hub answers a pinned version with another one
    md5 = hub.images["vsoch/hello-world:latest"].md5
    with pytest.raises(IntegrityError, match="answered with version"):
        pull(ctx, hub, f"shub://vsoch/hello-world@{md5}")
    hub.wrong_version = False
    for bad in (
        "shub://vsoch",
        "shub://a/b/c/d",
        "shub://bad_host!/b/c",
        "shub://vsoch/x@123",
        "shub://-x/y",
        "shub://vsoch/x:",
    ):
        with pytest.raises(InvalidReference):
            pull(ctx, hub, bad)


def test_unverifiable_manifest(ctx, hub):
    hub.images["vsoch/odd:latest"] = HubImage(b"x")
    original = hub.api.handler

    def no_version(req):
        resp = original(req)
        resp.body = resp.body.replace(b'"version"', b'"ignored"')
        return resp

    hub.api.handler = no_version
    with pytest.raises(UnverifiableError):
        pull(ctx, hub, "shub://vsoch/odd")


def test_cli_exit_codes(tmp_path, hub):
    env = {"REGISTRY_CLIENT_SHUB_URL": hub.url}
    base = ["--cache-dir", str(tmp_path / "cli-cache"), "pull"]
    ok = run_cli(*base, "shub://vsoch/hello-world", env=env)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).read_bytes() == hub.images["vsoch/hello-world:latest"].data
    assert run_cli(*base, "shub://vsoch/nope", env=env).returncode == 3
    hub.corrupt = True
    bad = run_cli(*base, "--force", "shub://vsoch/hello-world", env=env)
    assert bad.returncode == 4 and bad.stdout == ""


# -- self-hosted Singularity Registry Server ---------------------------------------------------


def test_a_host_in_the_reference_names_the_registry(ctx, hub):
    host = hub.url.split("://", 1)[1]
    image = hub.images["vsoch/hello-world:v2"]
    # No --shub-url: the reference names the server (plain HTTP because it is loopback).
    result = pull_fetcher(ctx, parse_reference(f"shub://{host}/vsoch/hello-world:v2"))
    assert Path(result.path).read_bytes() == image.data
    assert hub.api.log[-1].path == "/api/container/vsoch/hello-world:v2"


def test_private_collections_get_the_signed_header(ctx, hub, monkeypatch, tmp_path):
    hub.private.add("lab")
    hub.accounts["alice"] = "t0ken-of-alice"
    hub.images["lab/secret:1"] = HubImage(make_simg(tmp_path, b"private"))
    ref = "shub://lab/secret:1"
    with pytest.raises(AuthError, match="needs an account"):
        pull(ctx, hub, ref)
    assert "authorization" not in hub.api.log[-1].headers
    # sregistry-cli's secrets file, for this server only.
    secrets = tmp_path / "sregistry.json"
    other = {"registry": {"username": "alice", "token": "t0ken-of-alice", "base": "https://x.org"}}
    secrets.write_text(json.dumps(other))
    monkeypatch.setenv("SREGISTRY_CLIENT_SECRETS", str(secrets))
    with pytest.raises(AuthError):
        pull(ctx, hub, ref)  # its token is for another server: not sent here
    assert "authorization" not in hub.api.log[-1].headers
    secrets.write_text(json.dumps({"registry": {**other["registry"], "base": hub.url}}))
    result = pull(ctx, hub, ref)
    assert Path(result.path).read_bytes() == hub.images["lab/secret:1"].data
    assert "authorization" not in hub.api.log[-2].headers  # asked unsigned first
    signed = hub.api.log[-1].headers["authorization"]
    assert signed.startswith("SREGISTRY-HMAC-SHA256 Credential=pull/YWxpY2U=/")
    assert "t0ken" not in signed
    assert all("authorization" not in r.headers for r in hub.files.log)
    monkeypatch.setenv("REGISTRY_CLIENT_SHUB_USERNAME", "alice")
    monkeypatch.setenv("REGISTRY_CLIENT_SHUB_TOKEN", "wrong")
    with pytest.raises(AuthError) as err:
        pull(ctx, hub, ref, force=True)
    assert "wrong" not in str(err.value)


def test_signature_matches_the_servers_formula():
    import base64
    import datetime
    import hashlib
    import hmac

    from registry_client.sources.shub import ShubSecret, parse

    when = datetime.datetime(2024, 5, 1, 13, 59, tzinfo=datetime.timezone.utc)
    header = ShubSecret("bob", "k3y").header(parse("lab/app"), when)
    payload = b"pull|lab|20240501T13Z|app|latest|"
    signature = hmac.new(b"k3y", payload, hashlib.sha256).hexdigest()
    user = base64.b64encode(b"bob").decode()
    assert header == (
        f"SREGISTRY-HMAC-SHA256 Credential=pull/{user}/20240501T13Z,Signature={signature}"
    )


def test_copy_streams_the_hub_download_checked_by_its_md5(ctx, hub, tmp_path):
    from registry_client.migrate import Options, copy_fetched

    rows: list[dict] = []
    dst = f"file://{tmp_path / 'b'}/lab/hello:1"
    ref = parse_reference("shub://vsoch/hello-world:v2")
    copy_fetched(ctx, ref, dst, Options(), FetchOptions(shub_url=hub.url), rows.append)
    image = hub.images["vsoch/hello-world:v2"]
    assert rows[0]["status"] == "copied" and "md5" in rows[0]["verified"]
    assert (tmp_path / "b" / "lab" / "hello:1.sif").read_bytes() == image.data
    assert published(ctx) == []
    hub.corrupt = True
    copy_fetched(ctx, ref, f"{dst}-2", Options(), FetchOptions(shub_url=hub.url), rows.append)
    assert rows[1]["status"] == "failed" and rows[1]["exit_code"] == 4
