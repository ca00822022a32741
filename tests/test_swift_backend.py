"""The native Swift backend against the real Swift all-in-one (no mocks of Swift).

Swift-only cases: SLOs with many segments, re-push and rm cleaning segments, a segment
damaged in place, objects uploaded by the `swift` CLI and by the S3 API, a token revoked
mid-pull, DLOs and nested SLOs; plus the generic backend contract. Keystone v3 is the
one thing not run for real: a small stand-in speaks its token API and hands out real
tempauth tokens, so everything after the token request is real Swift.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from swiftclient.client import Connection
from swiftclient.exceptions import ClientException

from registry_client import service
from registry_client.backends.swift import SwiftBackend, fit_segment_size
from registry_client.backends.swift_config import SwiftAuth
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.digests import hash_file
from registry_client.errors import AuthError, ConfigError, IntegrityError, NotFound
from registry_client.names import parse_image_ref
from registry_client.reporting import Reporter
from registry_client.transfer import TransferSettings
from tests.support.backend_contract import BackendContract, OpenBackend, write_random
from tests.support.helpers import make_context, run_cli, s3_client

MiB = 1024 * 1024


# -- fixtures --------------------------------------------------------------------------


def admin(server: Any) -> Connection:
    """A plain swiftclient connection, to set up and inspect what the backend did."""
    return Connection(server.auth_url, server.user, server.key, retries=0)


def auth_options(server: Any) -> dict[str, str]:
    return {"auth_url": server.auth_url, "user": server.user, "key": server.key}


@pytest.fixture
def container(swift_server: Any) -> str:
    name = f"rc-{uuid.uuid4().hex[:12]}"
    admin(swift_server).put_container(name)
    return name


@pytest.fixture
def remote(swift_server: Any, container: str) -> RemoteConfig:
    return RemoteConfig("lab", "swift", {"bucket": container, **auth_options(swift_server)})


@pytest.fixture
def ctx(tmp_path: Path, remote: RemoteConfig) -> Context:
    # 1 MiB segments and 3 MiB ranges: our SLOs are fetched segment by segment, objects of
    # unknown layout in ranges that span several segments.
    return make_context(
        tmp_path,
        {"lab": remote},
        default="lab",
        part_size=MiB,
        transfer=TransferSettings(chunk_size=3 * MiB, concurrency=4),
    )


@pytest.fixture
def backend(remote: RemoteConfig) -> Iterator[SwiftBackend]:
    backend = SwiftBackend.from_remote(remote)
    yield backend
    backend.close()


def segment_names(server: Any, container: str) -> list[str]:
    try:
        return [o["name"] for o in admin(server).get_container(f"{container}_segments")[1]]
    except ClientException as exc:
        if exc.http_status == 404:
            return []
        raise


def manifest(server: Any, container: str, obj: str) -> list[dict[str, Any]]:
    _, body = admin(server).get_object(container, obj, query_string="multipart-manifest=get")
    return json.loads(body)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nothing_published(ctx: Context) -> bool:
    return ctx.cache.entries() == [] and list((ctx.cache.base / "tmp").iterdir()) == []


def flush_tokens(server: Any) -> None:
    """Revoke every tempauth token: they live only in the proxy's memcached."""
    with socket.create_connection(("127.0.0.1", server.ports.memcached), timeout=5) as sock:
        sock.sendall(b"flush_all\r\n")
        assert sock.recv(64).startswith(b"OK")


def token_works(server: Any, url: str, token: str) -> bool:
    try:
        Connection(preauthurl=url, preauthtoken=token, retries=0).head_account()
    except ClientException as exc:
        assert exc.http_status == 401
        return False
    return True


# -- the generic contract ---------------------------------------------------------------

pytestmark = pytest.mark.servers


class TestSwiftBackendContract(BackendContract):
    part_size = MiB  # SLOs of a few segments, quickly

    @pytest.fixture
    def open_backend(self, swift_server: Any, container: str) -> OpenBackend:
        options = auth_options(swift_server)
        return lambda prefix: SwiftBackend(container, prefix, options=options, env={})


# -- push and pull through the service ------------------------------------------------------


def test_slo_with_many_segments_round_trip(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    from registry_client import sif

    image = tmp_path / "big.sif"
    sif.make_test_sif(image, 10 * MiB, seed=4)
    ref = parse_image_ref("lab/app:1.2")
    pushed = service.push(ctx, str(image), ref, labels={"k": "v"})
    assert pushed.sha256 == sha256_of(image)
    segs = manifest(swift_server, container, "lab/app:1.2.sif")
    assert len(segs) == 11 and {s["bytes"] for s in segs[:-1]} == {MiB}
    assert all(s["name"].startswith(f"/{container}_segments/lab/app:1.2.sif/slo/") for s in segs)
    result = service.pull(ctx, ref)
    assert set(result.verified) == {"size", "etag", "sha256"} and not result.cached
    assert Path(result.path).read_bytes() == image.read_bytes()
    assert service.pull(ctx, ref).cached
    info = SwiftBackend.from_remote(ctx.config.remote("lab")).stat("lab/app:1.2.sif")
    assert info.metadata["arch"] == "amd64" and info.metadata["layout"] == "1"
    assert json.loads(info.metadata["labels"]) == {"k": "v"} and info.part_size == MiB
    listed = service.list_images(SwiftBackend.from_remote(ctx.config.remote("lab")), "", "lab")
    assert [(r["ref"], r["size"], r["digest"]) for r in listed] == [
        ("lab:lab/app:1.2", image.stat().st_size, f"sha256:{pushed.sha256}")
    ]


def test_metadata_is_asked_for_after_the_segments(
    backend: SwiftBackend, swift_server: Any, container: str, tmp_path: Path
) -> None:
    """So a push hashes the file while the segments upload (Swift takes metadata last)."""
    write_random(tmp_path / "m.sif", 3 * MiB + 5, seed=6)
    seen: list[int] = []

    def metadata() -> dict[str, str]:
        seen.append(len(segment_names(swift_server, container)))
        return {"sha256": "ab" * 32, "part-size": str(MiB)}

    info = backend.put(
        "lab/m:1.sif", str(tmp_path / "m.sif"), metadata, part_size=MiB, concurrency=2
    )
    assert seen == [4] and info.sha256 == "ab" * 32 and info.part_size == MiB


def test_segment_whose_stored_md5_differs_from_what_was_sent_fails_the_push(
    backend: SwiftBackend,
    swift_server: Any,
    container: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Segment md5s are taken while sending; Swift's ETag of what it stored must match."""
    from registry_client.backends import swift as swift_module

    real_put = swift_module.SwiftConnection.put_object

    def lossy_put(
        self: Any, container_name: str, obj: str, contents: Any, *args: Any, **kwargs: Any
    ) -> str:
        etag = real_put(self, container_name, obj, contents, *args, **kwargs)
        return "0" * 32 if obj.endswith("00000002") else etag  # as if bytes changed on the way

    monkeypatch.setattr(swift_module.SwiftConnection, "put_object", lossy_put)
    write_random(tmp_path / "x.sif", 4 * MiB, seed=8)
    with pytest.raises(IntegrityError, match="segment"):
        backend.put("lab/x:1.sif", str(tmp_path / "x.sif"), {}, part_size=MiB, concurrency=2)
    assert segment_names(swift_server, container) == []
    with pytest.raises(ClientException):
        admin(swift_server).head_object(container, "lab/x:1.sif")


def test_push_of_a_file_not_matching_its_pinned_digest_leaves_nothing(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    write_random(tmp_path / "d.sif", 3 * MiB, seed=7)
    with pytest.raises(IntegrityError, match="not the digest"):
        service.push(ctx, str(tmp_path / "d.sif"), parse_image_ref(f"lab/d:1@sha256:{'0' * 64}"))
    assert segment_names(swift_server, container) == []
    with pytest.raises(ClientException):
        admin(swift_server).head_object(container, "lab/d:1.sif")


def test_small_image_is_one_object(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    write_random(tmp_path / "s.sif", 300_000, seed=2)
    service.push(ctx, str(tmp_path / "s.sif"), parse_image_ref("lab/small:1"))
    head = admin(swift_server).head_object(container, "lab/small:1.sif")
    assert "x-static-large-object" not in head
    assert head["etag"] == hashlib.md5((tmp_path / "s.sif").read_bytes()).hexdigest()
    assert segment_names(swift_server, container) == []
    result = service.pull(ctx, parse_image_ref("lab/small:1"))
    assert set(result.verified) == {"size", "etag", "sha256"}


def test_repush_replaces_and_removes_old_segments(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    ref = parse_image_ref("lab/app:moving")
    write_random(tmp_path / "a", 3 * MiB + 5, seed=1)
    write_random(tmp_path / "b", 2 * MiB + 7, seed=2)
    service.push(ctx, str(tmp_path / "a"), ref)
    old = set(segment_names(swift_server, container))
    assert len(old) == 4
    service.push(ctx, str(tmp_path / "b"), ref)
    new = set(segment_names(swift_server, container))
    assert len(new) == 3 and not old & new
    assert Path(service.pull(ctx, ref).path).read_bytes() == (tmp_path / "b").read_bytes()
    # A small re-push over an SLO leaves no segments behind either.
    write_random(tmp_path / "c", 1000, seed=3)
    service.push(ctx, str(tmp_path / "c"), ref)
    assert segment_names(swift_server, container) == []


def test_rm_and_tag_keep_segments_consistent(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    write_random(tmp_path / "a", 4 * MiB + 1, seed=5)
    src, dst = parse_image_ref("lab/app:1"), parse_image_ref("lab/app:stable")
    service.push(ctx, str(tmp_path / "a"), src)
    service.tag(ctx, src, dst)
    assert len(segment_names(swift_server, container)) == 10  # the tag owns its own copies
    service.remove(ctx, src)
    assert len(segment_names(swift_server, container)) == 5
    result = service.pull(ctx, dst)
    assert set(result.verified) == {"size", "etag", "sha256"}
    service.remove(ctx, dst)
    assert segment_names(swift_server, container) == []
    assert admin(swift_server).get_container(container)[1] == []
    with pytest.raises(NotFound):
        service.remove(ctx, dst)


@pytest.mark.parametrize("index", [0, 5])  # 409 before any byte / a read cut short
def test_segment_damaged_in_place_is_exit_4(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path, index: int
) -> None:
    write_random(tmp_path / "a", 8 * MiB + 3, seed=6)
    ref = parse_image_ref("lab/app:1")
    service.push(ctx, str(tmp_path / "a"), ref)
    segment = manifest(swift_server, container, "lab/app:1.sif")[index]["name"]
    seg_container, _, seg_obj = segment.lstrip("/").partition("/")
    admin(swift_server).put_object(seg_container, seg_obj, os.urandom(MiB))  # same size
    with pytest.raises(IntegrityError) as caught:
        service.pull(ctx, ref)
    assert caught.value.exit_code == 4 and segment in str(caught.value)
    assert nothing_published(ctx)


def test_tag_of_a_damaged_image_is_refused(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    write_random(tmp_path / "a", 3 * MiB, seed=16)
    src = parse_image_ref("lab/app:1")
    service.push(ctx, str(tmp_path / "a"), src)
    before = set(segment_names(swift_server, container))
    seg_obj = manifest(swift_server, container, "lab/app:1.sif")[1]["name"].split("/", 2)[2]
    admin(swift_server).put_object(f"{container}_segments", seg_obj, os.urandom(MiB))
    with pytest.raises(IntegrityError, match="refused the manifest"):
        service.tag(ctx, src, parse_image_ref("lab/app:2"))
    assert set(segment_names(swift_server, container)) == before  # its copies are gone


def test_object_from_the_swift_cli_pulls_verified(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "cli.sif", 5 * MiB + 333, seed=7)
    env = {
        **os.environ,
        "ST_AUTH": swift_server.auth_url,
        "ST_USER": swift_server.user,
        "ST_KEY": swift_server.key,
    }
    done = subprocess.run(
        [
            "swift",
            "upload",
            "--use-slo",
            "-S",
            str(MiB + 4096),
            "--object-name",
            "other/cli:v1.sif",
            container,
            str(tmp_path / "cli.sif"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(manifest(swift_server, container, "other/cli:v1.sif")) == 5
    result = service.pull(ctx, parse_image_ref("lab:other/cli:v1"))
    assert set(result.verified) == {"size", "etag"}  # no sha256 metadata: the ETag says it
    assert Path(result.path).read_bytes() == data


def test_object_from_s3_multipart_pulls_verified(
    ctx: Context, swift_server: Any, container: str, tmp_path: Path
) -> None:
    """s3api stores a multipart upload as an SLO whose segments are in BUCKET+segments."""
    data = write_random(tmp_path / "s3.sif", 3 * MiB + 10, seed=8)
    s3 = s3_client(swift_server)
    key = "other/s3:v1.sif"
    upload = s3.create_multipart_upload(Bucket=container, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), MiB), 1):
        etag = s3.upload_part(
            Bucket=container,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=data[start : start + MiB],
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(
        Bucket=container, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    segs = manifest(swift_server, container, key)
    assert len(segs) == 4 and segs[0]["name"].startswith(f"/{container}+segments/")
    result = service.pull(ctx, parse_image_ref("lab:other/s3:v1"))
    assert set(result.verified) == {"size", "etag"}
    assert Path(result.path).read_bytes() == data


class _RevokeAfterFirstBytes(Reporter):
    """Revokes every token once the first bytes of the pull have arrived."""

    def __init__(self, revoke: Callable[[], None]) -> None:
        self.revoke = revoke
        self.revoked = False

    def progress(self, description: str, total: int) -> Any:
        import contextlib

        @contextlib.contextmanager
        def advance() -> Iterator[Callable[[int], None]]:
            def moved(_n: int) -> None:
                if not self.revoked:
                    self.revoked = True
                    self.revoke()

            yield moved

        return advance()


def test_token_revoked_mid_pull_is_renewed(ctx: Context, swift_server: Any, tmp_path: Path) -> None:
    write_random(tmp_path / "a", 6 * MiB, seed=9)
    ref = parse_image_ref("lab/app:tok")
    service.push(ctx, str(tmp_path / "a"), ref)
    url, token = admin(swift_server).get_auth()
    ctx.reporter = _RevokeAfterFirstBytes(lambda: flush_tokens(swift_server))
    ctx.transfer = TransferSettings(chunk_size=MiB, concurrency=2)
    result = service.pull(ctx, ref)
    assert ctx.reporter.revoked and not token_works(swift_server, url, token)
    assert set(result.verified) == {"size", "etag", "sha256"}
    assert Path(result.path).read_bytes() == (tmp_path / "a").read_bytes()


def test_token_store_renews_once_for_all_threads(
    backend: SwiftBackend, swift_server: Any, tmp_path: Path
) -> None:
    write_random(tmp_path / "a", 4 * MiB, seed=10)
    info = backend.put("c/t:1.sif", str(tmp_path / "a"), {}, part_size=MiB, concurrency=4)
    assert backend.tokens.renewals == 1
    flush_tokens(swift_server)
    from concurrent.futures import ThreadPoolExecutor

    def read(i: int) -> bytes:
        return b"".join(backend.read_range("c/t:1.sif", i * MiB, (i + 1) * MiB, info.etag))

    with ThreadPoolExecutor(4) as pool:
        assert b"".join(pool.map(read, range(4))) == (tmp_path / "a").read_bytes()
    assert backend.tokens.renewals == 2
    flush_tokens(swift_server)  # uploads re-send their body after the new token
    backend.put("c/t:2.sif", str(tmp_path / "a"), {}, part_size=MiB, concurrency=4)
    backend.put("c/t:3.sif", str(tmp_path / "a"), {}, part_size=8 * MiB, concurrency=1)
    assert backend.tokens.renewals == 3
    assert backend.stat("c/t:3.sif").etag == hashlib.md5((tmp_path / "a").read_bytes()).hexdigest()


def test_premade_token_from_env(
    swift_server: Any, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, token = admin(swift_server).get_auth()
    monkeypatch.setenv("OS_STORAGE_URL", url)
    monkeypatch.setenv("OS_AUTH_TOKEN", token)
    write_random(tmp_path / "a", 2 * MiB + 1, seed=11)
    direct = parse_image_ref(f"swift://{container}/site/app:1")
    ctx = make_context(tmp_path, part_size=MiB)
    service.push(ctx, str(tmp_path / "a"), direct)
    assert Path(service.pull(ctx, direct).path).read_bytes() == (tmp_path / "a").read_bytes()
    flush_tokens(swift_server)  # no credentials to renew it: exit 5, not a hang or retries
    with pytest.raises(AuthError) as caught:
        service.pull(ctx, direct, force=True)
    assert caught.value.exit_code == 5 and token not in str(caught.value)


def test_dlo_pulls_verified(ctx: Context, swift_server: Any, container: str) -> None:
    conn = admin(swift_server)
    conn.put_container(f"{container}_segments")
    parts = [os.urandom(MiB + i) for i in range(3)]
    for i, part in enumerate(parts):
        conn.put_object(f"{container}_segments", f"dlo/img/{i:03d}", part)
    conn.put_object(
        container,
        "other/dlo:1.sif",
        b"",
        headers={"X-Object-Manifest": f"{container}_segments/dlo/img/"},
    )
    result = service.pull(ctx, parse_image_ref("lab:other/dlo:1"))
    assert set(result.verified) == {"size", "etag"}
    assert Path(result.path).read_bytes() == b"".join(parts)
    service.remove(ctx, parse_image_ref("lab:other/dlo:1"))
    assert segment_names(swift_server, container) == []


def test_nested_and_ranged_slos(
    backend: SwiftBackend, swift_server: Any, container: str, tmp_path: Path
) -> None:
    data = write_random(tmp_path / "a", 3 * MiB, seed=12)
    inner = backend.put("c/inner:1.sif", str(tmp_path / "a"), {}, part_size=MiB, concurrency=2)
    tail = os.urandom(1000)
    conn = admin(swift_server)
    conn.put_object(container, "tail", tail)
    outer = [
        {"path": f"/{container}/c/inner:1.sif", "etag": inner.etag},
        {"path": f"/{container}/tail", "etag": None},
    ]
    conn.put_object(
        container, "c/outer:1.sif", json.dumps(outer), query_string="multipart-manifest=put"
    )
    (tmp_path / "outer").write_bytes(data + tail)
    info = backend.stat("c/outer:1.sif")
    plan = backend.etag_plan(info)
    assert plan.verifiable and plan.schemes == [[MiB, MiB, MiB, 1000]]
    assert plan.check(hash_file(str(tmp_path / "outer"), plan.schemes).segment_md5s)
    # A slice of an object: Swift's ETag then covers bytes we never download.
    ranged = [{"path": f"/{container}/tail", "etag": None, "range": "10-99"}]
    conn.put_object(
        container, "c/ranged:1.sif", json.dumps(ranged), query_string="multipart-manifest=put"
    )
    assert not backend.etag_plan(backend.stat("c/ranged:1.sif")).verifiable
    # rm of the outer SLO removes its nested manifest and that one's segments as well.
    backend.delete("c/outer:1.sif")
    assert segment_names(swift_server, container) == []
    with pytest.raises(NotFound):
        backend.stat("c/inner:1.sif")


# -- auth ---------------------------------------------------------------------------------


class _Keystone(BaseHTTPRequestHandler):
    """Keystone's POST /v3/auth/tokens, answering with real tempauth tokens."""

    swift: Any = None
    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        identity = body["auth"]["identity"]
        ok = (
            identity["methods"] == ["password"]
            and identity["password"]["user"]
            == {"name": "demo", "password": "s3cret-pw", "domain": {"name": "Default"}}
            and body["auth"]["scope"]["project"]["name"] == "images"
        ) or (
            identity["methods"] == ["application_credential"]
            and identity["application_credential"] == {"id": "ac1", "secret": "ac-s3cret"}
        )
        if not ok:
            self.send_response(401)
            self.end_headers()
            return
        url, token = admin(self.swift).get_auth()
        catalog = [
            {
                "type": "object-store",
                "endpoints": [
                    {
                        "interface": "public",
                        "region_id": "other",
                        "url": "http://127.0.0.1:9/nowhere",
                    },
                    {"interface": "public", "region_id": "RegionOne", "url": url},
                ],
            }
        ]
        payload = json.dumps({"token": {"catalog": catalog}}).encode()
        self.send_response(201)
        self.send_header("X-Subject-Token", token)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def keystone(swift_server: Any) -> Iterator[str]:
    _Keystone.swift, _Keystone.requests = swift_server, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Keystone)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/identity"
    finally:
        httpd.shutdown()
        httpd.server_close()


KEYSTONE_PASSWORD_ENV = {
    "OS_USERNAME": "demo",
    "OS_PASSWORD": "s3cret-pw",
    "OS_PROJECT_NAME": "images",
    "OS_USER_DOMAIN_NAME": "Default",
    "OS_PROJECT_DOMAIN_NAME": "Default",
    "OS_REGION_NAME": "RegionOne",
}


def test_keystone_v3_password_from_openrc_env(
    keystone: str, swift_server: Any, container: str, tmp_path: Path
) -> None:
    env = {"OS_AUTH_URL": keystone, **KEYSTONE_PASSWORD_ENV}
    backend = SwiftBackend(container, options={}, env=env)
    write_random(tmp_path / "a", 2 * MiB + 3, seed=13)
    info = backend.put("c/k:1.sif", str(tmp_path / "a"), {}, part_size=MiB, concurrency=2)
    flush_tokens(swift_server)
    assert (
        b"".join(backend.read_range("c/k:1.sif", 0, info.size, info.etag))
        == (tmp_path / "a").read_bytes()
    )
    assert backend.tokens.renewals == 2 and len(_Keystone.requests) == 2
    assert "s3cret-pw" not in repr(backend) + repr(backend.auth)


def test_keystone_v3_application_credential_in_remote(
    keystone: str, container: str, tmp_path: Path
) -> None:
    remote = RemoteConfig(
        "lab",
        "swift",
        {
            "bucket": container,
            "auth_url": keystone + "/v3",
            "region_name": "RegionOne",
            "application_credential_id": "ac1",
            "application_credential_secret": "ac-s3cret",
        },
    )
    ctx = make_context(tmp_path, {"lab": remote}, default="lab", part_size=MiB)
    write_random(tmp_path / "a", 1500, seed=14)
    service.push(ctx, str(tmp_path / "a"), parse_image_ref("lab/app:1"))
    assert service.pull(ctx, parse_image_ref("lab/app:1")).verified == ("size", "etag", "sha256")
    assert "scope" not in _Keystone.requests[0]["auth"]


def test_wrong_key_is_auth_error_without_the_key(swift_server: Any, container: str) -> None:
    options = {**auth_options(swift_server), "key": "not-the-key-xyz"}
    backend = SwiftBackend(container, options=options, env={})
    with pytest.raises(AuthError) as caught:
        backend.stat("c/n:1.sif")
    assert caught.value.exit_code == 5 and "not-the-key-xyz" not in str(caught.value)


def test_cli_direct_swift_url_with_st_env(
    swift_server: Any, container: str, tmp_path: Path
) -> None:
    from registry_client import sif

    sif.make_test_sif(tmp_path / "a.sif", 2 * MiB, seed=15)
    env = {
        "ST_AUTH": swift_server.auth_url,
        "ST_USER": swift_server.user,
        "ST_KEY": swift_server.key,
        "REGISTRY_CLIENT_CACHE_DIR": str(tmp_path / "c"),
    }
    url = f"swift://{container}/site/app:2"
    pushed = run_cli("push", str(tmp_path / "a.sif"), url, env=env)
    assert pushed.returncode == 0, pushed.stderr
    pulled = run_cli("pull", url, env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert Path(pulled.stdout.strip()).read_bytes() == (tmp_path / "a.sif").read_bytes()
    listed = run_cli("ls", "--json", f"swift://{container}", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [r["size"] for r in json.loads(listed.stdout)] == [(tmp_path / "a.sif").stat().st_size]
    inspected = run_cli("inspect", "--json", url, env=env)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["arch"] == "amd64"
    assert run_cli("rm", url, env=env).returncode == 0
    assert segment_names(swift_server, container) == []
    gone = run_cli("pull", "--force", url, env=env)
    assert gone.returncode == 3 and gone.stderr.startswith("error: ")
    everything = pushed.stderr + pulled.stdout + pulled.stderr + listed.stderr + gone.stderr
    assert swift_server.key not in everything


def test_ctrl_c_mid_push_exits_130_promptly_and_leaves_no_segments(
    swift_server: Any, container: str, tmp_path: Path
) -> None:
    from tests.support.helpers import push_then_ctrl_c

    write_random(tmp_path / "big.sif", 96 * MiB, seed=16)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[transfer]\npart_size = 1048576\npush_concurrency = 2\n")
    env = {
        "ST_AUTH": swift_server.auth_url,
        "ST_USER": swift_server.user,
        "ST_KEY": swift_server.key,
        "REGISTRY_CLIENT_CONFIG": str(cfg),
    }
    took = push_then_ctrl_c(
        [str(tmp_path / "big.sif"), f"swift://{container}/lab/big:1"],
        env,
        lambda: len(segment_names(swift_server, container)) >= 4,
    )
    assert took < 10
    assert segment_names(swift_server, container) == []
    with pytest.raises(ClientException):
        admin(swift_server).head_object(container, "lab/big:1.sif")


# -- units (no server) ------------------------------------------------------------------------


def test_auth_precedence_and_missing_settings() -> None:
    env = {
        "ST_AUTH": "http://h/auth/v1.0",
        "ST_USER": "a:b",
        "ST_KEY": "k-secret",
        "OS_AUTH_URL": "http://ks/v3",
        "OS_PASSWORD": "pw",
    }
    assert SwiftAuth.from_sources({}, env).version == "1"
    # The remote's options win, key by key; secrets may stay in the environment.
    auth = SwiftAuth.from_sources({"auth_url": "http://other/auth/v1.0"}, env)
    assert (auth.auth_url, auth.user, auth.key) == ("http://other/auth/v1.0", "a:b", "k-secret")
    assert SwiftAuth.from_sources({"username": "u"}, env).version == "3"
    assert "k-secret" not in repr(auth)
    with pytest.raises(AuthError) as caught:
        SwiftAuth.from_sources({}, {"OS_AUTH_URL": "http://ks/v3", "OS_PASSWORD": "pw-xyz"})
    assert "OS_USERNAME" in str(caught.value) and "pw-xyz" not in str(caught.value)
    with pytest.raises(AuthError):
        SwiftAuth.from_sources({}, {})
    with pytest.raises(ConfigError):
        SwiftAuth.from_sources({"auth_version": "2.0", "username": "u"}, {})
    token_only = SwiftAuth.from_sources(
        {}, {"OS_STORAGE_URL": "http://s/v1/AUTH_x", "OS_AUTH_TOKEN": "tk"}
    )
    assert token_only.version is None and not token_only.renewable


def test_segment_size_fits_cluster_limits() -> None:
    assert fit_segment_size(10 * MiB, 64 * MiB, 1000, 5 * 1024**3) == 64 * MiB
    assert fit_segment_size(2000 * MiB + 1, MiB, 1000, 5 * 1024**3) == 3 * MiB
    with pytest.raises(Exception, match="limits"):
        fit_segment_size(10 * 1024**3, MiB, 1, 5 * 1024**3)
