"""library:// — the Sylabs Library API, as SingularityCE and Apptainer speak it.

    GET {base}/v1/images/{entity}/{collection}/{container}:{tag}?arch=ARCH
        -> {"data": {"hash": "sha256.<hex>", "size": N, ...}}
    GET {base}/v1/imagefile/{entity}/{collection}/{container}:{tag}?arch=ARCH
        -> 303 to a presigned URL (often another host), or 200 with the bytes
    GET {base}/v1/search?value=QUERY
    errors: {"error": {"code": N, "message": "..."}}

The reference's path goes to the server as written (`library://alpine` asks for
`alpine:latest`): the Library resolves short names itself, as it does for
scs-library-client. The Bearer token goes to the library's origin only; the presigned URL
gets no Authorization header unless it is on that same origin (as scs-library-client
does). The download is verified against the record before it is published: its size,
and its sha256 (`hash: sha256.<hex>`) or, for images the Library names by SIF UUID
(`hash: sif.<uuid>`, older uploads), the UUID in the downloaded SIF's header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from registry_client.cache import short_id
from registry_client.errors import (
    IntegrityError,
    InvalidReference,
    RegistryClientError,
    UnverifiableError,
    UsageError,
)
from registry_client.names import DEFAULT_TAG
from registry_client.sources import Download, FetchOptions, Source, Version, endpoint, setting
from registry_client.sources.http import (
    Credentials,
    HttpSource,
    check_base_url,
    env_first,
    get_json,
    http_download,
    int_field,
    list_field,
    new_session,
    text_field,
)

if TYPE_CHECKING:
    from registry_client.acquire import Producer
    from registry_client.context import Context

DEFAULT_URL = "https://library.sylabs.io"
ENV_URL = "REGISTRY_CLIENT_LIBRARY_URL"
ENV_TOKENS = ("REGISTRY_CLIENT_LIBRARY_TOKEN", "SYLABS_TOKEN")
# Library names: lower-case letters, digits and . _ - (the Library refuses the rest).
NAME_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
HASH_TAG_RE = re.compile(r"sha256\.([a-f0-9]{64})\Z")
SIF_HASH_RE = re.compile(r"sif\.([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\Z")
MIN_QUERY = 3


@dataclass(frozen=True)
class LibraryRef:
    names: tuple[str, ...]  # [ENTITY/][COLLECTION/]CONTAINER, as written
    tag: str = DEFAULT_TAG

    @property
    def path(self) -> str:
        return f"{'/'.join(self.names)}:{self.tag}"

    @property
    def container(self) -> str:
        return self.names[-1]

    @property
    def pinned_sha256(self) -> str | None:
        """library://...:sha256.<hex> names the image by its hash, as the Library allows."""
        match = HASH_TAG_RE.match(self.tag)
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f"library://{self.path}"


def parse(body: str) -> LibraryRef:
    """`[ENTITY/][COLLECTION/]CONTAINER[:TAG]`; anything else is InvalidReference (exit 2)."""
    text = f"library://{body}"
    path, sep, tag = body.partition(":")
    if sep and not TAG_RE.match(tag):
        raise InvalidReference(
            f"invalid reference {text}: bad tag {tag[:130]!r}",
            hint="tags are letters, digits, _ . - (at most 128)",
        )
    parts = path.split("/")
    if len(parts) > 3:
        raise InvalidReference(
            f"invalid reference {text}: expected library://[ENTITY/]COLLECTION/NAME[:TAG]",
            hint="to use another library host, give --library-url",
        )
    for part in parts:
        if len(part) > 128 or not NAME_RE.match(part):
            raise InvalidReference(
                f"invalid reference {text}: bad name {part[:130]!r}",
                hint="names are lower-case letters, digits and . _ -",
            )
    return LibraryRef(tuple(parts), tag if sep else DEFAULT_TAG)


@dataclass(frozen=True)
class ImageRecord:
    sha256: str | None  # from `hash: sha256.<hex>`
    size: int
    data: dict[str, Any]
    sif_uuid: str | None = None  # from `hash: sif.<uuid>`, when there is no sha256

    @property
    def version(self) -> str:
        """What names this content upstream: the sha256, else the SIF UUID."""
        return self.sha256 or f"sif.{self.sif_uuid}"


class LibraryClient:
    """Talks to one Library API endpoint; the token never leaves its origin."""

    def __init__(self, base_url: str | None = None, token: str | None = None) -> None:
        self.base = check_base_url(base_url or env_first(ENV_URL) or DEFAULT_URL, "library URL")
        token = token or env_first(*ENV_TOKENS)
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.credentials = Credentials(self.base, auth)
        self.session = new_session()

    def _url(self, path: str, **query: str) -> str:
        url = f"{self.base}/{quote(path, safe='/:.')}"
        return f"{url}?{urlencode(query)}" if query else url

    def _get_json(self, url: str, what: str) -> Any:
        return get_json(self.session, url, what, self.credentials)

    def image(self, ref: LibraryRef, arch: str) -> ImageRecord:
        """The image record a tag names for this arch: its sha256 and size."""
        what = f"library image {ref}"
        body = self._get_json(self._url(f"v1/images/{ref.path}", arch=arch), what)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise RegistryClientError(f"{what}: the library answered without an image record")
        sha256, sif_uuid = _record_hash(ref, data)
        return ImageRecord(sha256, _record_size(ref, data), data, sif_uuid)

    def source(self, ref: LibraryRef, arch: str) -> HttpSource:
        url = self._url(f"v1/imagefile/{ref.path}", arch=arch)
        return HttpSource(
            url, session=self.session, credentials=self.credentials, label=f"{ref} ({arch})"
        )

    def search(self, query: str, arch: str | None = None) -> dict[str, Any]:
        if len(query) < MIN_QUERY:
            raise UsageError(f"search for at least {MIN_QUERY} characters")
        params = {"value": query, **({"arch": arch} if arch else {})}
        body = self._get_json(self._url("v1/search", **params), f"library search {query!r}")
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, dict) else {}

    def close(self) -> None:
        self.session.close()


def _record_hash(ref: LibraryRef, data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(sha256, None) or (None, SIF UUID): what the download will be checked against."""
    value = (text_field(data, "hash", 200) or "").lower()
    match = HASH_TAG_RE.match(value)
    if match:
        sha = match.group(1)
        if ref.pinned_sha256 and ref.pinned_sha256 != sha:
            raise IntegrityError(f"{ref}: the library answered with sha256.{sha}")
        return sha, None
    match = SIF_HASH_RE.match(value)
    if match and not ref.pinned_sha256:
        return None, match.group(1)
    raise UnverifiableError(
        f"{ref}: the library records hash {value[:80]!r}, neither a sha256 nor a SIF UUID; "
        "the download could not be verified",
        hint="ask the library's operator to re-upload the image",
    )


def _record_size(ref: LibraryRef, data: dict[str, Any]) -> int:
    size = int_field(data, "size")
    if size is None:
        raise RegistryClientError(f"{ref}: the library's image record has no valid size")
    return size


def search_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Images of a search answer as rows: ref, size, arch, description."""
    rows = []
    for img in list_field(results, "image"):
        if not isinstance(img, dict):
            continue
        tags = [t for t in list_field(img, "tags") if isinstance(t, str)]
        tags = tags or [text_field(img, "hash", 200) or ""]
        name = "/".join(
            text_field(img, k, 200) or "?"
            for k in ("entityName", "collectionName", "containerName")
        )
        rows.append(
            {
                "ref": f"library://{name}:{','.join(tags)}",
                "size": int_field(img, "size"),
                "arch": text_field(img, "arch", 40),
                "description": text_field(img, "description") or "",
            }
        )
    return sorted(rows, key=lambda r: r["ref"])


def check_sif_uuid(ref: LibraryRef, path: Path, expected: str) -> None:
    """The Library names this image by the UUID in its SIF header: the file must carry it."""
    from registry_client import sif

    try:
        found = sif.read_sif(str(path)).header.uuid
    except (sif.SifError, OSError):
        found = None
    if found != expected:
        raise IntegrityError(
            f"{ref}: the download is not the SIF the library records "
            f"(UUID {found or 'unreadable'}, expected {expected}); nothing was published"
        )


# -- the source ----------------------------------------------------------------------


def library_client(ctx: Context, options: FetchOptions) -> LibraryClient:
    """A client for the Library the options, environment or config name, with its token."""
    url = endpoint(options.library_url, ENV_URL, ctx.config, "library")
    token = env_first(*ENV_TOKENS) or setting(ctx.config, "library", "token")
    return LibraryClient(url, token)


class LibrarySource(Source):
    scheme = "library"

    def __init__(self, ctx: Context, body: str, options: FetchOptions) -> None:
        from registry_client.sources.docker.registry import node_platform

        self.ref = parse(body)
        self.arch = node_platform(options.arch).architecture
        self.client = library_client(ctx, options)
        self.text = str(self.ref)
        self.remote_id = short_id("library", self.client.base)
        self.record: Any = None

    def slot(self) -> tuple[str, str, str]:
        return (
            "+".join(self.ref.names[:-1]) or "+",
            self.ref.container,
            f"{self.ref.tag}~{self.arch}",
        )

    def pinned(self, cache: Any) -> str | None:
        return self.ref.pinned_sha256

    def resolve(self) -> Version:
        from registry_client.retry import retry_call

        self.record = retry_call(
            f"library image {self.ref}", lambda: self.client.image(self.ref, self.arch)
        )
        return Version(
            ("library", self.client.base, self.record.version),
            self.record.sha256,
            {"arch": self.arch, "size": self.record.size, "hash": self.record.version},
        )

    def producer(self, ctx: Context, version: Version) -> Producer:
        record = self.record
        after = None
        if record.sif_uuid:
            ctx.reporter.warn(
                f"{self.text}: the library records no sha256 for this image (an older "
                f"upload, named by SIF UUID {record.sif_uuid}): only its size and "
                "UUID can be checked"
            )

            def after(path: Path) -> tuple[str, ...]:
                check_sif_uuid(self.ref, path, record.sif_uuid)
                return ("sif-uuid",)

        source = self.client.source(self.ref, self.arch)
        return http_download(source, size=record.size, sha256=record.sha256, after=after)

    def download(self) -> Download | None:
        if self.record is None or not self.record.sha256:
            return None  # an image named by SIF UUID is checked from its file: pull it
        source = self.client.source(self.ref, self.arch)
        return Download(
            source.url,
            source.session,
            source.credentials.for_url(source.url) if source.credentials else {},
            source.label,
            size=self.record.size,
            sha256=self.record.sha256,
        )

    def close(self) -> None:
        self.client.close()
