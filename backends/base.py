"""The backend interface: a few verbs every remote kind implements.

Modelled on restic's backend: stat / read_range / list / put / delete are required;
`copy` and `integrity` refinements are optional capabilities. Retries, limits and
logging are wrappers stacked in one place (registry_client.retry), never inside a
backend. Keys are bucket-relative object names ("collection/name:tag.sif"); a backend
adds its own prefix.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from registry_client.digests import EtagPlan, plain_md5_plan

__all__ = [
    "Backend",
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


class Backend(abc.ABC):
    """A bucket-like store of objects."""

    kind: str = "abstract"

    #: a human-readable location, never containing credentials
    location: str = ""

    # -- required verbs -------------------------------------------------------
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
        """Upload a local file as one object, with checksums the server verifies."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (and its segments); NotFound if absent."""

    # -- optional capabilities -----------------------------------------------
    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        """Server-side copy keeping metadata. Optional."""
        raise NotImplementedError

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        """How to verify this object's ETag. Default: plain md5 of the whole object."""
        return plain_md5_plan(info)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
