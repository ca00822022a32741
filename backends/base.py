"""The backend interface: a few verbs every storage kind implements.

Modelled on restic's backend: stat / read_range / list / put / delete are required;
optional features (server-side `copy`) are declared in `Capabilities`, which wrappers
forward. `Reader` is the read half (stat / read_range) that the transfer engine needs,
shared with read-only sources. Retries, limits and logging are wrappers stacked in one
place (registry_client.retry), never inside a backend. Keys are bucket-relative object
names ("collection/name:tag.sif"); a backend adds its own prefix. The conformance suite
every backend passes is tests/support/backend_contract.py.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from registry_client.digests import EtagPlan, plain_md5_plan
from registry_client.errors import Unsupported

__all__ = [
    "Backend",
    "Capabilities",
    "Reader",
    "EtagPlan",
    "Metadata",
    "ObjectInfo",
    "Progress",
    "metadata_of",
]

Progress = Callable[[int], None]
"""Called with a number of bytes just moved."""

Metadata = Mapping[str, str] | Callable[[], Mapping[str, str]]
"""Object metadata, or a function giving it. A backend calls the function only when it
needs the metadata (Swift: with the manifest, after the segments), so a caller can work
it out (e.g. hash the file) while the upload already runs."""


def metadata_of(source: Metadata) -> dict[str, str]:
    return dict(source() if callable(source) else source)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None  # without quotes
    metadata: dict[str, str] = field(default_factory=dict)  # our metadata, lower-case keys
    modified: datetime | None = None

    @property
    def sha256(self) -> str | None:
        value = self.metadata.get("sha256")
        return value.lower() if value else None

    @property
    def part_size(self) -> int | None:
        value = self.metadata.get("part-size")
        return int(value) if value and value.isdigit() else None


@dataclass(frozen=True)
class Capabilities:
    """The optional features a backend has, declared (rclone's optional features).

    Callers and the contract suite read this instead of calling and catching; wrappers
    forward the inner backend's value unchanged.
    """

    #: `copy()` makes a new object from another one inside the store (no bytes through us)
    copy: bool = False


class Reader(abc.ABC):
    """What the transfer engine reads from: one store's objects, by key and byte range.

    Every Backend is a Reader; read-only sources (an image behind a URL) are Readers only.
    """

    kind: str = "abstract"

    #: a human-readable location, never containing credentials
    location: str = ""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, ETag and metadata of one object; NotFound if absent."""

    @abc.abstractmethod
    def read_range(self, key: str, start: int, end: int, etag: str | None) -> Iterator[bytes]:
        """Yield bytes [start, end) of the object.

        When `etag` is given the read is pinned to it: if the object changed, raise
        ObjectChanged rather than return bytes of another version. Implementations
        check the server's Content-Range and length.
        """

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        """How to verify this object's ETag. Default: plain md5 of the whole object."""
        return plain_md5_plan(info)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class Backend(Reader):
    """A bucket-like store of objects: a Reader that can also list, write and delete."""

    capabilities: Capabilities = Capabilities()

    #: objects a listing asks the server for per request (the contract suite lowers it)
    page_size: int = 1000

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under prefix (metadata may be empty: call stat for it)."""

    @abc.abstractmethod
    def put(
        self,
        key: str,
        path: str,
        metadata: Metadata,
        *,
        part_size: int,
        concurrency: int,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Upload a local file as one object, with checksums the server verifies.

        Either the whole object becomes visible or, on failure, nothing changes: a
        previous object under `key` stays as it was.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (and its segments); NotFound if absent."""

    # -- optional capabilities (declared in `capabilities`) -----------------------------
    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Server-side copy keeping metadata; only where `capabilities.copy`."""
        raise Unsupported(
            f"{self.location} cannot copy objects inside the store",
            hint="pull and push instead: registry-client copy SRC DST",
        )
