"""A faithful Library API server for tests (the subset SingularityCE/Apptainer pull uses).

Two servers: the API (images, imagefile, search) and an object store on another port that
plays the presigned URL the imagefile endpoint 303-redirects to. The API can require a
Bearer token (401 with a JSON error otherwise); the store logs every request so a test can
check that the token never reached it. `corrupt` flips one byte of what the store sends.

It accepts what the real Library accepts from scs-library-client: the auth scheme in any
case (`BEARER` is what that client sends; RFC 7235 schemes are case-insensitive), short
paths resolved on the server (`NAME` is `library/default/NAME`, `COLLECTION/NAME` is
`library/COLLECTION/NAME`), and images recorded by SIF UUID (`hash: sif.<uuid>`, as for
older uploads) as well as by sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from registry_client import sif
from tests.support.fixtures_http import FixtureServer, Request, Response, json_response, serve_bytes


@dataclass
class LibraryImage:
    data: bytes
    arch: str = "amd64"
    description: str = ""
    by_uuid: bool = False  # recorded as `sif.<uuid of its SIF header>`, not by sha256

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def hash(self) -> str:
        if self.by_uuid:
            return f"sif.{uuid.UUID(bytes=self.data[48:64])}"  # the SIF header's UUID field
        return f"sha256.{self.sha256}"


@dataclass
class LibraryFixture:
    token: str | None = None
    images: dict[str, LibraryImage] = field(default_factory=dict)  # "ent/col/name:tag"
    corrupt: bool = False
    redirect: bool = True  # False: imagefile answers 200 with the bytes itself
    store_ranges: bool = True
    unavailable: int = 0  # answer the next N API requests with 503 (Retry-After: 0)
    broken_reads: int = 0  # cut the next N object-store bodies in half
    store_front: str | None = None  # the store's URL as redirects name it (a proxy before it)

    def __post_init__(self) -> None:
        self.api = FixtureServer(self._api)
        self.store = FixtureServer(self._store)
        self.url = self.api.url

    def add(self, path: str, image: LibraryImage) -> LibraryImage:
        self.images[path] = image
        return image

    # -- the API ------------------------------------------------------------------
    def _authorized(self, req: Request) -> bool:
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        return self.token is None or (scheme.lower() == "bearer" and token == self.token)

    def _api(self, req: Request) -> Response:
        if self.unavailable:
            self.unavailable -= 1
            return Response(503, b"busy", {"Retry-After": "0"})
        if not self._authorized(req):
            return _error(401, "Unauthorized: invalid or missing token")
        for prefix, handler in (
            ("/v1/images/", self._image),
            ("/v1/imagefile/", self._file),
            ("/v1/search", self._search),
        ):
            if req.path.startswith(prefix):
                return handler(req, unquote(req.path[len(prefix) :]))
        return _error(404, "no such endpoint")

    def _find(self, path: str, arch: str) -> LibraryImage | None:
        path = resolve(path)
        image = self.images.get(path)
        if image is None and ":sha256." in path:  # by hash, as the Library allows
            digest = path.rpartition(":sha256.")[2]
            image = next((i for i in self.images.values() if i.sha256 == digest), None)
        return image if image and image.arch == arch else None

    def _image(self, req: Request, path: str) -> Response:
        image = self._find(path, req.query.get("arch", ""))
        if image is None:
            return _error(404, f"image {path} not found")
        entity, collection, rest = resolve(path).split("/", 2)
        return json_response(
            {
                "data": {
                    "id": image.sha256[:24],
                    "hash": image.hash,
                    "size": len(image.data),
                    "arch": image.arch,
                    "entityName": entity,
                    "collectionName": collection,
                    "containerName": rest.partition(":")[0],
                    "uploaded": True,
                    "description": image.description,
                }
            }
        )

    def _file(self, req: Request, path: str) -> Response:
        image = self._find(path, req.query.get("arch", ""))
        if image is None:
            return _error(404, f"image {path} not found")
        if not self.redirect:
            return serve_bytes(req, self._bytes(image), ranges=False)
        # Like S3: a signed, expiring URL on another host:port.
        store = self.store_front or self.store.url
        location = f"{store}/objects/{image.sha256}?X-Amz-Signature=sig&Expires=9"
        return Response(303, b"", {"Location": location})

    def _search(self, req: Request, _rest: str) -> Response:
        value = req.query.get("value", "")
        hits = [
            {
                "hash": img.hash,
                "size": len(img.data),
                "arch": img.arch,
                "entityName": path.split("/")[0],
                "collectionName": path.split("/")[1],
                "containerName": path.split("/")[2].partition(":")[0],
                "tags": [path.rpartition(":")[2]],
                "description": img.description,
            }
            for path, img in self.images.items()
            if value in path
        ]
        return json_response(
            {"data": {"entity": [], "collection": [], "container": [], "image": hits}}
        )

    # -- the object store ---------------------------------------------------------------
    def _store(self, req: Request) -> Response:
        if "X-Amz-Signature" not in req.query:
            return Response(403, b"<Error>AccessDenied</Error>")
        digest = req.path.rpartition("/")[2]
        image = next((i for i in self.images.values() if i.sha256 == digest), None)
        if image is None:
            return Response(404, b"<Error>NoSuchKey</Error>")
        resp = serve_bytes(req, self._bytes(image), ranges=self.store_ranges, etag=digest[:32])
        if self.broken_reads and len(resp.body) > 1:
            self.broken_reads -= 1
            resp.cut = len(resp.body) // 2
        return resp

    def _bytes(self, image: LibraryImage) -> bytes:
        if not self.corrupt:
            return image.data
        middle = len(image.data) // 2
        return image.data[:middle] + bytes([image.data[middle] ^ 0xFF]) + image.data[middle + 1 :]

    def stop(self) -> None:
        self.api.stop()
        self.store.stop()


def resolve(path: str) -> str:
    """The Library's own reading of a short path: NAME:TAG or COLLECTION/NAME:TAG."""
    names, colon, tag = path.partition(":")
    parts = names.split("/")
    parts = ["library", "default"][: max(3 - len(parts), 0)] + parts
    return "/".join(parts) + colon + tag


def _error(code: int, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, code)


TOKEN = "s3cr3t-library-token"
APP = "lab/tools/app:1.0"  # the sample's SIF image


@contextlib.contextmanager
def sample_library(tmp: Path) -> Iterator[LibraryFixture]:
    """A Library that wants TOKEN, holding APP (a 3 MiB SIF) and library/default/alpine."""
    server = LibraryFixture(token=TOKEN)
    image = tmp / "app.sif"
    sif.make_test_sif(image, 3 * 1024 * 1024 + 12345, seed=7)
    server.add(APP, LibraryImage(image.read_bytes(), description="an app"))
    server.add("library/default/alpine:latest", LibraryImage(b"not really alpine" * 100))
    try:
        yield server
    finally:
        server.stop()
