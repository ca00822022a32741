"""A faithful Singularity Hub API for tests: the manifest endpoint and the image files.

    GET /api/container/USER/REPO[:TAG][@VERSION] -> {"image", "name", "tag", "version", "commit"}

`version` is the md5 of the image file, as on the Hub. Files are served from another port
(the Hub kept them in cloud storage); `ranges` says whether that server honours Range,
and `corrupt` flips one byte of what it sends.

Like a self-hosted Singularity Registry Server it can hold private collections (`private`):
without an Authorization header they answer 403, and the header must be sregistry-cli's
`SREGISTRY-HMAC-SHA256 Credential=pull/<b64 user>/<UTC hour>,Signature=<hex>`, checked
the way the server checks it: HMAC-SHA256 of `pull|COLLECTION|<this hour>|NAME|TAG|`
keyed with the user's token (`accounts`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from tests.support.fixtures_http import FixtureServer, Request, Response, json_response, serve_bytes


@dataclass
class HubImage:
    data: bytes
    commit: str = "0123456789abcdef0123456789abcdef01234567"

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()


@dataclass
class ShubFixture:
    images: dict[str, HubImage] = field(default_factory=dict)  # "user/repo:tag"
    ranges: bool = False
    corrupt: bool = False
    wrong_version: bool = False  # the manifest's md5 does not match the file
    private: set[str] = field(default_factory=set)  # collections (users) that need an account
    accounts: dict[str, str] = field(default_factory=dict)  # user name -> token
    files_front: str | None = None  # the files' URL as manifests name it (a proxy before it)

    def __post_init__(self) -> None:
        self.api = FixtureServer(self._api)
        self.files = FixtureServer(self._file)
        self.url = self.api.url

    def _find(self, spec: str) -> tuple[str, HubImage] | None:
        """USER/REPO[:TAG][@VERSION]; a version (md5 or commit) finds its image under any
        tag, as the Hub looked versions up by themselves."""
        name, _, version = spec.partition("@")
        base, colon, tag = name.partition(":")
        for key, image in self.images.items():
            if version:
                if key.startswith(f"{base}:") and version in (image.md5, image.commit):
                    return key, image
            elif key == f"{base}:{tag if colon else 'latest'}":
                return key, image
        return None

    def _api(self, req: Request) -> Response:
        prefix = "/api/container/"
        found = (
            self._find(unquote(req.path[len(prefix) :])) if req.path.startswith(prefix) else None
        )
        if found is None:
            return json_response({"detail": "Not found."}, 404)
        key, image = found
        name, _, tag = key.partition(":")
        collection, _, container = name.partition("/")
        if collection in self.private:
            auth = req.headers.get("authorization")
            if auth is None:
                return json_response({"detail": "Authentication Required"}, 403)
            if not self._valid(auth, collection, container, tag):
                return json_response({"detail": "Unauthorized"}, 403)
        version = "0" * 32 if self.wrong_version else image.md5
        return json_response(
            {
                "image": f"{self.files_front or self.files.url}/files/{image.md5}.simg",
                "name": name,
                "tag": tag,
                "version": version,
                "commit": image.commit,
                "id": 42,
            }
        )

    def _valid(self, auth: str, collection: str, name: str, tag: str) -> bool:
        scheme, _, content = auth.partition(" ")
        values = dict(item.split("=", 1) for item in content.split(",") if "=" in item)
        if scheme != "SREGISTRY-HMAC-SHA256" or not {"Credential", "Signature"} <= set(values):
            return False
        kind, user_b64, stamp = (values["Credential"].split("/") + ["", "", ""])[:3]
        user = base64.b64decode(user_b64).decode(errors="replace")
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%HZ")
        if kind != "pull" or stamp != now or user not in self.accounts:
            return False
        payload = f"pull|{collection}|{now}|{name}|{tag}|".encode()
        want = hmac.new(self.accounts[user].encode(), payload, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, values["Signature"])

    def _file(self, req: Request) -> Response:
        md5 = req.path.rpartition("/")[2].removesuffix(".simg")
        image = next((i for i in self.images.values() if i.md5 == md5), None)
        if image is None:
            return Response(404, b"")
        data = image.data
        if self.corrupt:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return serve_bytes(req, data, ranges=self.ranges)

    def stop(self) -> None:
        self.api.stop()
        self.files.stop()


def make_simg(tmp: Path, content: bytes) -> bytes:
    """A Singularity 2.x style image: a bare squashfs, no SIF header."""
    root = tmp / f"simg-root-{hashlib.md5(content).hexdigest()[:8]}"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_bytes(content)
    (root / "singularity").write_text("#!/bin/sh\necho hello\n")
    out = root.with_suffix(".simg")
    subprocess.run(
        ["mksquashfs", str(root), str(out), "-noappend", "-all-root", "-quiet", "-no-progress"],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


@contextlib.contextmanager
def sample_hub(tmp: Path) -> Iterator[ShubFixture]:
    """A Hub holding vsoch/hello-world:latest and :v2 (another image, another commit)."""
    server = ShubFixture()
    server.images["vsoch/hello-world:latest"] = HubImage(make_simg(tmp, b"hello"))
    server.images["vsoch/hello-world:v2"] = HubImage(
        make_simg(tmp, os.urandom(50_000)), commit="f" * 40
    )
    try:
        yield server
    finally:
        server.stop()
