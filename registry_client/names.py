"""Image references: parsing and validation, before any I/O.

Grammar (see docs/references.md):

    [REMOTE:]COLLECTION/NAME[:TAG][@sha256:HEX]         a named (or the default) remote
    s3://BUCKET/[PREFIX/]COLLECTION/NAME[:TAG][@...]    direct S3 URL, no config needed
    swift://CONTAINER/[PREFIX/]COLLECTION/NAME[:TAG]    direct Swift URL
    azure://CONTAINER/[PREFIX/]COLLECTION/NAME[:TAG]    direct Azure Blob Storage URL
    gs://BUCKET/[PREFIX/]COLLECTION/NAME[:TAG]          direct Google Cloud Storage URL
    file:///DIR/COLLECTION/NAME[:TAG]                   a local directory laid out like a bucket
    docker://... library://... shub://...               fetcher references (kept as text here)

Names are lower-case `[a-z0-9]+([._-][a-z0-9]+)*` segments and tags
`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`: neither can hold `/`, `..` or a control character,
so an object key or cache path built from them cannot leave its prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeGuard

from registry_client.errors import InvalidReference

SEGMENT_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*\Z")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
TAG_SAFE = re.compile(r"[^A-Za-z0-9._-]")
DIGEST_RE = re.compile(r"sha256:([a-f0-9]{64})\Z")
SHA256_RE = re.compile(r"[a-f0-9]{64}\Z")
# S3 bucket names (and Swift containers, which are looser) as the S3 rules allow.
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
SWIFT_CONTAINER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,255}\Z")
# Azure containers: 3-63 of lower-case letters, digits and single hyphens between them.
AZURE_CONTAINER_RE = re.compile(r"(?=.{3,63}\Z)[a-z0-9]+(?:-[a-z0-9]+)*\Z")
# GCS buckets (without dots: dotted names are domain-verified and rare): 3-63 characters.
GCS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]\Z")
PREFIX_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")

MAX_SEGMENT = 128
MAX_REFERENCE = 1024
DEFAULT_TAG = "latest"
FETCHER_SCHEMES = ("docker", "library", "shub")
BUCKET_SCHEMES = ("s3", "swift", "file", "azure", "gs")
#: the remote type behind each direct-URL scheme (gs:// is type "gcs")
SCHEME_TYPES = {"s3": "s3", "swift": "swift", "file": "file", "azure": "azure", "gs": "gcs"}
LOCATION_RES = {
    "s3": BUCKET_RE,
    "swift": SWIFT_CONTAINER_RE,
    "azure": AZURE_CONTAINER_RE,
    "gs": GCS_BUCKET_RE,
}
IMAGE_SUFFIXES = (".sif", ".simg")


def is_sha256(value: object) -> TypeGuard[str]:
    """64 lower-case hex digits: the only form a sha256 takes in names, paths and records."""
    return isinstance(value, str) and SHA256_RE.match(value) is not None


@dataclass(frozen=True)
class ImageRef:
    """A reference to one image in a bucket-like remote."""

    collection: str
    name: str
    tag: str = DEFAULT_TAG
    digest: str | None = None  # hex sha256 when pinned
    remote: str | None = None  # named remote; None = default remote (or a direct URL)
    scheme: str | None = None  # "s3" | "swift" | "file" | "azure" | "gs" for direct URLs
    location: str | None = None  # bucket, container or absolute directory of a direct URL
    prefix: str = ""  # extra key prefix of a direct URL, "" or ending in "/"

    @property
    def is_direct(self) -> bool:
        return self.scheme is not None

    def key(self, suffix: str = ".sif") -> str:
        """Object key relative to the remote's own prefix (sregistry-cli's naming)."""
        return f"{self.prefix}{self.collection}/{self.name}:{self.tag}{suffix}"

    @property
    def short(self) -> str:
        """COLLECTION/NAME:TAG — no remote, no digest."""
        return f"{self.collection}/{self.name}:{self.tag}"

    def __str__(self) -> str:
        text = self.short
        if self.scheme == "file":
            text = f"file://{self.location}/{self.prefix}{text}"
        elif self.scheme:
            text = f"{self.scheme}://{self.location}/{self.prefix}{text}"
        elif self.remote:
            text = f"{self.remote}:{text}"
        if self.digest:
            text += f"@sha256:{self.digest}"
        return text

    def with_tag(self, tag: str) -> ImageRef:
        from dataclasses import replace

        return replace(self, tag=check_tag(tag), digest=None)


@dataclass(frozen=True)
class FetcherRef:
    """docker://, library:// or shub:// — parsed further by its fetcher."""

    scheme: str
    body: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.body}"


Reference = ImageRef | FetcherRef


def _reject(text: str, why: str) -> InvalidReference:
    shown = text if text.isprintable() and len(text) <= 200 else repr(text[:200])
    return InvalidReference(
        f"invalid reference {shown}: {why}",
        hint="expected [REMOTE:]COLLECTION/NAME[:TAG][@sha256:HEX], e.g. lab/app:1.2",
    )


def check_segment(value: str, what: str = "name") -> str:
    if len(value) > MAX_SEGMENT or not SEGMENT_RE.match(value):
        raise InvalidReference(
            f"invalid {what} {value[:200]!r}: use lower-case letters, digits and . _ - "
            f"between them (at most {MAX_SEGMENT} characters)"
        )
    return value


def check_tag(value: str) -> str:
    if not TAG_RE.match(value):
        raise InvalidReference(
            f"invalid tag {value[:200]!r}: use letters, digits, _ . - (at most 128, "
            "not starting with . or -)"
        )
    return value


def _split_digest(text: str, body: str) -> tuple[str, str | None]:
    if "@" not in body:
        return body, None
    body, _, digest = body.rpartition("@")
    match = DIGEST_RE.match(digest)
    if not match:
        raise _reject(text, "digest must be sha256: followed by 64 lower-case hex digits")
    return body, match.group(1)


def _split_name_tag(text: str, last: str) -> tuple[str, str]:
    name, sep, tag = last.partition(":")
    if not sep:
        return name, DEFAULT_TAG
    if not tag:
        raise _reject(text, "empty tag")
    return name, tag


def _basic_checks(text: str) -> None:
    if not text:
        raise _reject(text, "empty")
    if len(text) > MAX_REFERENCE:
        raise _reject(text, f"longer than {MAX_REFERENCE} characters")
    if not text.isprintable() or not text.isascii():
        raise _reject(text, "control or non-ASCII characters")
    if any(c.isspace() for c in text):
        raise _reject(text, "whitespace")


def _check_no_slash_in_tag(text: str, parts: list[str]) -> None:
    """`lab/app:feature/x` (a CI branch name as the tag): say that, not "one slash"."""
    for i, part in enumerate(parts[:-1]):
        if ":" in part:
            tag = "/".join([part.partition(":")[2], *parts[i + 1 :]])
            raise InvalidReference(
                f"invalid reference {text[:200]}: the tag {tag[:130]!r} contains '/'; tags are "
                "letters, digits, _ . - (at most 128, not starting with . or -)",
                hint=f"replace the '/' (e.g. {TAG_SAFE.sub('-', tag)[:128].lstrip('.-')})",
            )


def _collection_name_tag(text: str, parts: list[str]) -> tuple[str, str, str]:
    _check_no_slash_in_tag(text, parts)
    if len(parts) < 2:
        raise _reject(text, "need COLLECTION/NAME")
    name, tag = _split_name_tag(text, parts[-1])
    try:
        return check_segment(parts[-2], "collection"), check_segment(name), check_tag(tag)
    except InvalidReference as exc:
        raise _reject(text, exc.message) from None


def _check_prefix(text: str, segments: list[str]) -> str:
    for seg in segments:
        if seg in ("", ".", "..") or not PREFIX_SEGMENT_RE.match(seg):
            raise _reject(text, f"bad path segment {seg!r}")
    return "".join(f"{s}/" for s in segments)


def _parse_direct(text: str, scheme: str, rest: str) -> ImageRef:
    rest, digest = _split_digest(text, rest)
    if scheme == "file":
        if not rest.startswith("/"):
            raise _reject(text, "file:// needs an absolute path: file:///DIR/COLLECTION/NAME:TAG")
        parts = rest[1:].split("/")
        collection, name, tag = _collection_name_tag(text, parts)
        _check_prefix(text, parts[:-2])
        location = "/" + "/".join(parts[:-2])
        return ImageRef(collection, name, tag, digest, None, scheme, location.rstrip("/") or "/")
    parts = rest.split("/")
    if len(parts) < 3:
        raise _reject(text, f"need {scheme}://BUCKET/COLLECTION/NAME[:TAG]")
    bucket = parts[0]
    if not LOCATION_RES[scheme].match(bucket) or ".." in bucket:
        raise _reject(text, f"invalid bucket/container name {bucket!r}")
    collection, name, tag = _collection_name_tag(text, parts[1:])
    prefix = _check_prefix(text, parts[1:-2])
    return ImageRef(collection, name, tag, digest, None, scheme, bucket, prefix)


def parse_image_ref(text: str) -> ImageRef:
    """Parse a bucket image reference; raise InvalidReference (exit 2) on anything else."""
    ref = parse_reference(text)
    if isinstance(ref, FetcherRef):
        raise _reject(text, f"{ref.scheme}:// references can be pulled or copied, not used here")
    return ref


def parse_reference(text: str) -> Reference:
    """Parse any reference kind; validation happens here, before any I/O."""
    _basic_checks(text)
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme in FETCHER_SCHEMES:
            if not rest or ".." in rest.split("/"):
                raise _reject(text, f"empty or unsafe {scheme}:// reference")
            return FetcherRef(scheme, rest)
        if scheme in BUCKET_SCHEMES:
            return _parse_direct(text, scheme, rest)
        raise _reject(text, f"unknown scheme {scheme!r}")
    body, digest = _split_digest(text, text)
    head, slash, tail = body.partition("/")
    if not slash:
        raise _reject(text, "need COLLECTION/NAME")
    remote = None
    if ":" in head:
        remote, _, head = head.partition(":")
        try:
            check_segment(remote, "remote")
        except InvalidReference as exc:
            raise _reject(text, exc.message) from None
    parts = [head, *tail.split("/")]
    _check_no_slash_in_tag(text, parts)
    if len(parts) != 2:
        raise _reject(text, "need exactly COLLECTION/NAME (one slash)")
    collection, name, tag = _collection_name_tag(text, parts)
    return ImageRef(collection, name, tag, digest, remote)


def ref_from_key(key: str, *, remote: str | None = None) -> ImageRef | None:
    """The reference an object key names, or None if the key is not an image we know."""
    for suffix in IMAGE_SUFFIXES:
        if key.endswith(suffix):
            stem = key[: -len(suffix)]
            break
    else:
        return None
    parts = stem.split("/")
    if len(parts) != 2:
        return None
    name, _, tag = parts[1].partition(":")
    try:
        return ImageRef(
            check_segment(parts[0]),
            check_segment(name),
            check_tag(tag or DEFAULT_TAG),
            remote=remote,
        )
    except InvalidReference:
        return None
