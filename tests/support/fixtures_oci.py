"""Build OCI images in memory and push them to a registry through the distribution HTTP API.

    POST /v2/<name>/blobs/uploads/            -> 202, Location
    PUT  <Location>?digest=sha256:...          (monolithic upload) -> 201
    PUT  /v2/<name>/manifests/<reference>      -> 201, Docker-Content-Digest

Layers are tar archives we write member by member, so tests can also make the hostile
ones (absolute paths, `..`, links out of the root) that no image tool would produce.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

#: for tests that build SIFs from images pushed to the Debian docker-registry
NEEDS_REGISTRY = pytest.mark.skipif(
    not (shutil.which("docker-registry") or os.path.exists("/usr/bin/docker-registry"))
    or not shutil.which("mksquashfs"),
    reason="needs docker-registry and squashfs-tools (.ci/install-system-deps)",
)
MTIME = 1_700_000_000
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    None: "application/vnd.oci.image.layer.v1.tar",
}


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# -- tar members ----------------------------------------------------------------------------


def _info(name: str, kind: bytes, mode: int, **extra: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, MTIME
    info.uname = info.gname = "root"
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def file(name: str, data: bytes | str, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    raw = data.encode() if isinstance(data, str) else data
    return _info(name, tarfile.REGTYPE, mode, size=len(raw)), raw


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE, mode), b""


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target), b""


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), b""


def whiteout(path: str) -> tuple[tarfile.TarInfo, bytes]:
    folder, _, base = path.rpartition("/")
    return file(f"{folder}/.wh.{base}" if folder else f".wh.{base}", b"")


def opaque(folder: str) -> tuple[tarfile.TarInfo, bytes]:
    return file(f"{folder}/.wh..wh..opq", b"")


# -- layers and images ----------------------------------------------------------------------


@dataclass
class Layer:
    blob: bytes
    media_type: str
    diff_id: str

    @property
    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": sha256(self.blob), "size": len(self.blob)}


def make_layer(
    members: list[tuple[tarfile.TarInfo, bytes]], compression: str | None = "gzip"
) -> Layer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    tar_bytes = buf.getvalue()
    if compression == "gzip":
        blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    elif compression == "zstd":
        blob = subprocess.run(
            [shutil.which("zstd") or "zstd", "-q", "-c", "-1"],
            input=tar_bytes,
            capture_output=True,
            check=True,
        ).stdout
    else:
        blob = tar_bytes
    return Layer(blob, LAYER_TYPES[compression], sha256(tar_bytes))


@dataclass
class Image:
    layers: list[Layer]
    arch: str = "amd64"
    config: dict[str, Any] = field(default_factory=dict)  # Env, Entrypoint, Cmd, Labels...
    variant: str | None = None
    docker_types: bool = False  # Docker v2 media types instead of OCI ones

    @property
    def media_type(self) -> str:
        return DOCKER_MANIFEST if self.docker_types else OCI_MANIFEST

    @property
    def config_blob(self) -> bytes:
        return json.dumps(
            {
                "architecture": self.arch,
                "os": "linux",
                "created": "2024-05-01T12:00:00Z",
                "config": self.config,
                "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in self.layers]},
            },
            sort_keys=True,
        ).encode()

    @property
    def manifest(self) -> bytes:
        config = self.config_blob
        layers = [la.descriptor for la in self.layers]
        if self.docker_types:
            layers = [{**d, "mediaType": DOCKER_LAYER} for d in layers]
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": self.media_type,
                "config": {
                    "mediaType": DOCKER_CONFIG if self.docker_types else OCI_CONFIG,
                    "digest": sha256(config),
                    "size": len(config),
                },
                "layers": layers,
            }
        ).encode()

    @property
    def platform(self) -> dict[str, str]:
        plat = {"os": "linux", "architecture": self.arch}
        return {**plat, "variant": self.variant} if self.variant else plat


# -- pushing ---------------------------------------------------------------------------------


class Pusher:
    """Pushes blobs and manifests to one registry (anonymous, as the test registry allows)."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self.session = requests.Session()

    def blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        head = self.session.head(f"{self.base}/v2/{repo}/blobs/{digest}", timeout=30)
        if head.status_code == 200:
            return digest
        start = self.session.post(f"{self.base}/v2/{repo}/blobs/uploads/", timeout=30)
        assert start.status_code == 202, start.text
        location = urljoin(f"{self.base}/", start.headers["Location"])
        sep = "&" if "?" in location else "?"
        put = self.session.put(
            f"{location}{sep}digest={digest}",
            data=data,
            timeout=120,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201, put.text
        return digest

    def manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        put = self.session.put(
            f"{self.base}/v2/{repo}/manifests/{reference}",
            data=body,
            headers={"Content-Type": media_type},
            timeout=30,
        )
        assert put.status_code == 201, put.text
        assert put.headers["Docker-Content-Digest"] == sha256(body)
        return sha256(body)

    def image(self, repo: str, image: Image, tag: str | None = None) -> str:
        for layer in image.layers:
            self.blob(repo, layer.blob)
        self.blob(repo, image.config_blob)
        body = image.manifest
        return self.manifest(repo, tag or sha256(body), body, image.media_type)

    def index(self, repo: str, tag: str, images: list[Image]) -> str:
        entries = []
        for image in images:
            digest = self.image(repo, image)
            entries.append(
                {
                    "mediaType": image.media_type,
                    "digest": digest,
                    "size": len(image.manifest),
                    "platform": image.platform,
                }
            )
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        ).encode()
        return self.manifest(repo, tag, body, OCI_INDEX)


# -- a proxy in front of the registry: Docker-style token auth, and corruption ----------------


class RegistryProxy:
    """Forwards GETs to a real registry, adding what the test registry lacks.

    With `credentials` set it acts like Docker Hub: /v2/ answers 401 with a Bearer
    challenge whose realm is our /token endpoint, which wants those credentials as HTTP
    basic auth and hands out a token. With `corrupt` it flips one byte of every blob.
    """

    PASSED_HEADERS = (
        "content-type",
        "docker-content-digest",
        "content-range",
        "accept-ranges",
        "etag",
        "location",
        "docker-distribution-api-version",
    )

    def __init__(self, registry_url: str) -> None:
        from tests.support.fixtures_http import FixtureServer

        self.registry = registry_url.rstrip("/")
        self.credentials: tuple[str, str] | None = None
        self.refresh_token: str | None = None  # an identity token the token service takes
        self.token = "fixture-token-7f3a"
        self.token_ttl: float | None = None  # tokens are refused this many seconds after issue
        self.delay = 0.0  # seconds added to every forwarded request (a slow registry)
        self.issued: dict[str, float] = {}  # token -> monotonic time it stops working
        self.corrupt = False
        self._lock = threading.Lock()
        self.session = requests.Session()
        self.server = FixtureServer(self._handle)
        self.url = self.server.url
        self.host = self.url.split("//", 1)[1]

    def _handle(self, req: Any) -> Any:
        import base64

        from tests.support.fixtures_http import Response, json_response

        if req.path == "/token":
            user, password = self.credentials or ("", "")
            basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if req.method == "POST":  # OAuth2, as for identity tokens
                ok = req.form.get("grant_type") == "refresh_token" and (
                    self.refresh_token and req.form.get("refresh_token") == self.refresh_token
                )
            else:
                ok = req.headers.get("authorization") == basic
            if not ok:
                return json_response({"details": "incorrect username or password"}, 401)
            token = self._issue()
            key = "access_token" if req.method == "POST" else "token"
            return json_response({key: token, "expires_in": 300})
        if self.credentials and not self._accept(req.headers.get("authorization", "")):
            repo = req.path.split("/manifests/")[0].split("/blobs/")[0][len("/v2/") :]
            challenge = (
                f'Bearer realm="{self.url}/token",service="fixture-registry",'
                f'scope="repository:{repo}:pull"'
            )
            body = json.dumps(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            ).encode()
            return Response(
                401, body, {"WWW-Authenticate": challenge, "Content-Type": "application/json"}
            )
        return self._forward(req)

    def _issue(self) -> str:
        with self._lock:
            token = self.token
            if self.token_ttl is not None:
                token = f"{self.token}-{len(self.issued) + 1}"
            self.issued[token] = time.monotonic() + (self.token_ttl or float("inf"))
            return token

    def _accept(self, authorization: str) -> bool:
        """A token we issued that has not expired."""
        token = authorization.removeprefix("Bearer ")
        with self._lock:
            expires = self.issued.get(token) if authorization.startswith("Bearer ") else None
            return expires is not None and time.monotonic() < expires

    def _forward(self, req: Any) -> Any:
        from tests.support.fixtures_http import Response

        time.sleep(self.delay)
        headers = {k: v for k, v in req.headers.items() if k in ("accept", "range")}
        up = self.session.request(
            req.method,
            f"{self.registry}{req.path}",
            headers=headers,
            allow_redirects=False,
            timeout=60,
        )
        body = up.content
        if self.corrupt and "/blobs/" in req.path and body:
            body = body[:-1] + bytes([body[-1] ^ 0x55])
        kept = {k: v for k, v in up.headers.items() if k.lower() in self.PASSED_HEADERS}
        return Response(up.status_code, body, kept)

    def stop(self) -> None:
        self.server.stop()
        self.session.close()
