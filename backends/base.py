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
class EtagPlan:
    """How to verify an object's ETag from md5 digests of its bytes.

    `schemes` are candidate segmentations (lists of segment lengths summing to the
    size); the downloader computes the md5 of every segment of every scheme in one
    pass. `check` gets, per scheme, the list of segment md5 digests and answers
    True (verified), False (mismatch) — it never raises.
    `verifiable` is False when the ETag is known not to be an md5 (e.g. SSE-KMS).
    `more_schemes` keeps the common case to one or two md5 passes: they are hashed in a
    second pass over the downloaded file, only when no scheme of the first pass matched.
    """

    schemes: list[list[int]]
    check: Callable[[list[list[bytes]]], bool]
    verifiable: bool = True
    description: str = ""
    #: less likely segmentations, hashed from the local copy only if `schemes` fail
    more_schemes: list[list[int]] = field(default_factory=list)


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
        from registry_client.digests import plain_md5_plan

        return plain_md5_plan(info)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
