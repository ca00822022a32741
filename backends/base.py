"""The backend interface: a few verbs every storage kind implements.

Modelled on restic's backend: stat / read_range / list / start_upload / delete are
required; optional features (server-side `copy`) are declared in `Capabilities`, which
wrappers forward. `Reader` is the read half (stat / read_range) that the transfer engine
needs, shared with read-only sources. Retries and logging are wrappers stacked in one
place (registry_client.retry), never inside a backend. Keys are bucket-relative object
names ("collection/name:tag.sif"); a backend adds its own prefix. The conformance suite
every backend passes is tests/support/backend_contract.py.

Writing is split into steps so that a failure costs one step, not the object: a backend
opens an `Upload` (an S3 multipart upload, a Swift SLO, a temp file), which takes the
object's parts one by one from a `PartSource` (a local file, or a buffer filled from
another store) and is then completed or aborted. `put` drives those steps, parts in
parallel; the retry policy (registry_client.retry) wraps each step, never the whole.
Every request to one remote runs under that remote's `Limiter`, sized from its config.
"""

from __future__ import annotations

import abc
import contextlib
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, BinaryIO, Protocol, TypeVar

from registry_client.digests import EtagPlan, plain_md5_plan
from registry_client.errors import IntegrityError, RemoteUnavailable, Unsupported
from registry_client.names import is_sha256

__all__ = [
    "Backend",
    "Capabilities",
    "ChunkBody",
    "RangeBody",
    "Reader",
    "EtagPlan",
    "FileParts",
    "Limiter",
    "Metadata",
    "ObjectInfo",
    "PartSource",
    "Progress",
    "RangeReader",
    "ReadCancelled",
    "ReadWatch",
    "Upload",
    "innermost",
    "metadata_of",
    "parallel",
    "upload",
]

T = TypeVar("T")
R = TypeVar("R")
DEFAULT_CONNECTIONS = 16

Progress = Callable[[int], None]
"""Called with a number of bytes just moved."""

Metadata = Mapping[str, str] | Callable[[], Mapping[str, str]]
"""Object metadata, or a function giving it. A backend calls the function only when it
needs the metadata (Swift: with the manifest, after the segments), so a caller can work
it out (e.g. hash the file) while the upload already runs."""


def metadata_of(source: Metadata) -> dict[str, str]:
    return dict(source() if callable(source) else source)


GiB = 1024**3
#: Limits of the stores themselves, which bound what a HEAD or metadata may claim:
#: S3 takes at most 10,000 parts of at most 5 GiB (Swift's default SLO limits are lower).
MAX_PARTS = 10_000
MAX_PART_SIZE = 5 * GiB
MAX_OBJECT_SIZE = MAX_PARTS * MAX_PART_SIZE
MAX_METADATA_VALUE = 4096  # S3 allows 2 KiB of metadata in all, Swift 256 bytes a value
# RFC 9110 entity-tag characters (quotes already stripped): no space, DQUOTE or control.
_ETAG_RE = re.compile(r"(?:W/)?[\x21\x23-\x7e]{1,512}\Z")
_DECIMAL_RE = re.compile(r"[0-9]{1,20}\Z")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store says about one object; every field is checked here, where it enters.

    A store (or anything between us and it) may lie. Building an ObjectInfo validates
    what later becomes a file name, an allocation or a loop bound: the size must be one
    the stores allow (IntegrityError otherwise: nothing is downloaded), the ETag a valid
    entity-tag (it is sent back in If-Match), and our metadata well-formed — `sha256` 64
    lower-case hex digits, `part-size` a part size within the stores' limits, `size`
    equal to the object's size. A value that fails is dropped from `metadata` and said
    in `ignored`: the pull warns and verifies by the ETag instead (service.verify).
    """

    key: str
    size: int  # -1: not known (an HTTP source that did not say)
    etag: str | None = None  # without quotes
    metadata: dict[str, str] = field(default_factory=dict)  # our metadata, lower-case keys
    modified: datetime | None = None
    #: checksums the store keeps of the whole object, validated lower-case hex by the
    #: backend: "md5" (Azure Content-MD5, GCS md5Hash), "crc32c" (GCS)
    checksums: dict[str, str] = field(default_factory=dict)
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        size = self.size
        if not isinstance(size, int) or isinstance(size, bool) or not -1 <= size <= MAX_OBJECT_SIZE:
            raise IntegrityError(
                f"{self.key}: the store reports a size of {size!r} bytes, beyond what any "
                "store holds; nothing was downloaded",
                hint="the store, or something between it and this node, is not answering "
                "truthfully; ask its operator",
            )
        ignored = list(self.ignored)
        if self.etag is not None and not _ETAG_RE.match(self.etag):
            ignored.append(f"ETag {self.etag[:80]!r} is not a valid entity-tag; ignored")
            object.__setattr__(self, "etag", None)
        metadata = _checked_metadata(self.metadata, size, ignored)
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "ignored", tuple(ignored))

    @property
    def sha256(self) -> str | None:
        return self.metadata.get("sha256")

    @property
    def part_size(self) -> int | None:
        value = self.metadata.get("part-size")
        return int(value) if value else None


def _checked_metadata(metadata: Mapping[str, str], size: int, ignored: list[str]) -> dict[str, str]:
    """Our metadata with every value that fails its check removed (and said in `ignored`)."""
    meta = {
        str(k).lower(): v
        for k, v in metadata.items()
        if isinstance(v, str) and len(v) <= MAX_METADATA_VALUE
    }
    if len(meta) != len(metadata):
        ignored.append("metadata values that are not short strings; ignored")
    stated = meta.get("size")
    if stated is not None and stated != str(size) and size >= 0:
        # Metadata of another version (the bytes were replaced, the metadata kept):
        # its sha256 and part size describe other bytes.
        ignored.append(f"metadata size {stated[:24]!r} is not the object's {size}; ignored")
        for key in ("sha256", "part-size", "size"):
            meta.pop(key, None)
    sha = meta.get("sha256")
    if sha is not None and not is_sha256(sha):
        ignored.append(f"metadata sha256 {sha[:80]!r} is not 64 lower-case hex digits; ignored")
        del meta["sha256"]
    part = meta.get("part-size")
    if part is not None and not _part_size_fits(part, size):
        ignored.append(
            f"metadata part-size {part[:24]!r} is outside the stores' limits "
            f"(1 byte to 5 GiB, at most {MAX_PARTS} parts); ignored"
        )
        del meta["part-size"]
    return meta


def _part_size_fits(text: str, size: int) -> bool:
    if not _DECIMAL_RE.match(text):
        return False
    part = int(text)
    return 0 < part <= MAX_PART_SIZE and (size < 0 or -(-size // part) <= MAX_PARTS)


class ReadCancelled(Exception):
    """A read stopped because the download it belongs to failed or was interrupted."""


class ReadWatch:
    """One ranged read, as the transfer engine watches it from its own thread.

    The engine notes each block that arrives (`moved`) and, from the thread that waits
    for the download, stops a read that has been silent for too long (`stop` with a
    Stalled error: retried) or every read of a download that failed or was interrupted
    (`cancel`). A read blocked in a socket cannot notice either by itself, so a backend
    that reads a body over the network `attach`es a function that shuts that
    connection down: the blocked read then returns at once, wherever it waits.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self.reason: RemoteUnavailable | None = None  # why the current attempt was stopped
        self.cancelled = threading.Event()
        self.mark = time.monotonic()  # when the last block arrived (or the attempt began)

    def moved(self) -> None:
        self.mark = time.monotonic()

    @contextlib.contextmanager
    def attach(self, stop: Callable[[], None]) -> Iterator[None]:
        """While the body is read: `stop()` ends it (called at once if already stopped)."""
        with self._lock:
            self._stop = stop
            stopped = self.reason is not None or self.cancelled.is_set()
        if stopped:
            _quietly(stop)
        try:
            yield
        finally:
            # Only our own: a body dropped without being closed leaves its context to the
            # garbage collector, which may end it after the next attempt attached.
            with self._lock:
                if self._stop is stop:
                    self._stop = None

    def stop(self, reason: RemoteUnavailable) -> None:
        """End the current attempt (it fails with `reason`, which a retry may follow)."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            stop = self._stop
        if stop is not None:
            _quietly(stop)

    def cancel(self) -> None:
        """End the read for good: no retry follows (see ReadCancelled)."""
        self.cancelled.set()
        with self._lock:
            stop = self._stop
        if stop is not None:
            _quietly(stop)

    def restart(self) -> None:
        """A new attempt begins: its clock starts now."""
        with self._lock:
            self.reason = None
            self.mark = time.monotonic()

    def check(self, error: RemoteUnavailable) -> RemoteUnavailable:
        """The error an attempt ended with, as the watch explains it: ReadCancelled if the
        download is over, the stall that stopped it, or `error` itself."""
        if self.cancelled.is_set():
            raise ReadCancelled
        return self.reason or error

    def pause(self, seconds: float) -> None:
        """Sleep between attempts; ReadCancelled as soon as the download is over."""
        if self.cancelled.wait(seconds):
            raise ReadCancelled


def _quietly(stop: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        stop()


@dataclass(frozen=True)
class Capabilities:
    """The optional features a backend has, declared (rclone's optional features).

    Callers and the contract suite read this instead of calling and catching; wrappers
    forward the inner backend's value unchanged.
    """

    #: `copy()` makes a new object from another one inside the store (no bytes through us)
    copy: bool = False
    #: `copy_from()` copies from another bucket or container of the same store, verified
    copy_from: bool = False
    #: `resume_upload()`, `pending_uploads()`, `discard_pending()`: interrupted uploads
    #: (S3 multipart uploads, Swift segments) are found again, continued or removed
    resume: bool = False


class Reader(abc.ABC):
    """What the transfer engine reads from: one store's objects, by key and byte range.

    Every Backend is a Reader; read-only sources (an image behind a URL) are Readers only.
    """

    kind: str = "abstract"

    #: a human-readable location, never containing credentials
    location: str = ""

    _limiter: Limiter | None = None

    @property
    def limiter(self) -> Limiter:
        """Requests in flight to this store, across every pool that talks to it; a
        store sets its own from its config, anything else gets a default one."""
        if self._limiter is None:
            self._limiter = Limiter()
        return self._limiter

    @limiter.setter
    def limiter(self, value: Limiter) -> None:
        self._limiter = value

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, ETag and metadata of one object; NotFound if absent."""

    @abc.abstractmethod
    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        """Yield bytes [start, end) of the object.

        When `etag` is given the read is pinned to it: if the object changed, raise
        ObjectChanged rather than return bytes of another version. Implementations
        check the server's Content-Range and length. A network reader attaches to
        `watch` a way to shut its connection while it reads the body (ReadWatch).
        """

    def open_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> RangeBody:
        """Bytes [start, end) as a body to `readinto` the caller's memory (same pinning,
        checks and `watch` as read_range). Stores whose client can receive into a given
        buffer override it; the default copies read_range's pieces."""
        return ChunkBody(self.read_range(key, start, end, etag, watch=watch))

    def etag_plan(self, info: ObjectInfo) -> EtagPlan:
        """How to verify this object's ETag. Default: plain md5 of the whole object."""
        return plain_md5_plan(info)

    def shared_url(self, key: str, signed_at: int, expires: int) -> str | None:
        """A GET URL of `key` that every node computes identically: signed at `signed_at`
        (Unix seconds) for the store's own host, valid `expires` seconds from then — what
        a site cache can serve many nodes from (registry_client.fleet). A bearer secret:
        never log it. None when this store cannot make one. Optional."""
        return None

    def bypass_caches(self) -> str | None:
        """After a download from this backend failed verification: read more directly next
        time (refresh the caches' copies, then the store) and name the new route; None
        when reads already go to the store. Optional (registry_client.fleet)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class RangeBody(Protocol):
    """The body of one ranged read, received into memory the caller owns."""

    def readinto(self, view: memoryview, /) -> int:
        """Fill the start of `view`; the number of bytes, 0 once the range is complete."""

    def close(self) -> None:
        """Release the connection (for reuse only if the body was read to its end)."""


class ChunkBody:
    """A RangeBody over an iterator of byte strings (read_range's), copying each piece."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def readinto(self, view: memoryview, /) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(view), len(self._left))
        view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class BodyReads(Reader):
    """read_range as the pieces of open_range: for stores whose client hands out a body
    to read into the caller's memory (S3, Swift), so each has one read path."""

    read_block = 1024 * 1024

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> Iterator[bytes]:
        if end <= start:
            return
        body = self.open_range(key, start, end, etag, watch=watch)
        try:
            view = memoryview(bytearray(self.read_block))
            while n := body.readinto(view):
                yield bytes(view[:n])
        finally:
            body.close()

    @abc.abstractmethod
    def open_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,
    ) -> RangeBody: ...


class Backend(Reader):
    """A bucket-like store of objects: a Reader that can also list, write and delete."""

    capabilities: Capabilities = Capabilities()

    #: objects a listing asks the server for per request (the contract suite lowers it)
    page_size: int = 1000

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under prefix (metadata may be empty: call stat for it)."""

    @abc.abstractmethod
    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        """Open an upload of `size` bytes cut in parts of about `part_size` (the backend
        fits it to its limits). `metadata` is read when the backend needs it."""

    def put(
        self,
        key: str,
        source: str | os.PathLike[str] | PartSource,
        metadata: Metadata,
        *,
        part_size: int,
        concurrency: int,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        """Upload a local file (a path) or a PartSource as one object, with checksums the
        server verifies; parts go `concurrency` at a time.

        Either the whole object becomes visible or, on failure, nothing changes: a
        previous object under `key` stays as it was.
        """
        return upload(
            self,
            key,
            source,
            metadata,
            part_size=part_size,
            concurrency=concurrency,
            progress=progress,
        )

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object (and its segments); NotFound if absent."""

    # -- optional capabilities (declared in `capabilities`) -----------------------------
    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Server-side copy, keeping the metadata or replacing it with `metadata`; only
        where `capabilities.copy`."""
        raise Unsupported(
            f"{self.location} cannot copy objects inside the store",
            hint="pull and push instead: registry-client copy SRC DST",
        )

    def copy_from(
        self, source: Reader, info: ObjectInfo, dst_key: str, metadata: Mapping[str, str]
    ) -> ObjectInfo | None:
        """Server-side copy of `info` from `source` (another bucket or container of the same
        store, or this one) to `dst_key`, with `metadata`; the copy's ETag is checked against
        the source's. None when the two are not one store, or when the copy could not be
        checked that way: the caller streams the bytes instead. Only where
        `capabilities.copy_from`."""
        raise Unsupported(f"{self.location} cannot copy objects from another bucket")

    def resume_upload(
        self,
        key: str,
        size: int,
        metadata: Metadata,
        *,
        part_size: int,
        since: datetime | None,
    ) -> Upload | None:
        """Continue an interrupted upload of `key` with the same size and layout, begun
        after `since` (the source's last change: metadata set when such an upload began
        still holds), if there is one: its `stored` parts need not be sent again. Other
        interrupted uploads of `key` are removed. None when there is none. Only where
        `capabilities.resume`."""
        raise Unsupported(f"{self.location} cannot resume uploads")

    def pending_uploads(self, prefix: str = "") -> set[str]:
        """Keys under `prefix` that may have interrupted uploads left behind (S3 multipart
        uploads never completed, Swift segments no manifest names). Only where
        `capabilities.resume`."""
        raise Unsupported(f"{self.location} cannot list interrupted uploads")

    def discard_pending(self, key: str) -> int:
        """Remove the interrupted uploads of `key` (never the object itself); how many.
        Only where `capabilities.resume`."""
        raise Unsupported(f"{self.location} cannot list interrupted uploads")


def innermost(reader: Reader) -> Reader:
    """The storage backend under its wrappers (retries, cache proxies), which keep it as
    `inner`: a server-side copy asks whether two backends are the same store."""
    for _ in range(8):
        inner = getattr(reader, "inner", None)
        if not isinstance(inner, Reader):
            break
        reader = inner
    return reader


# -- limits -------------------------------------------------------------------------------


class Limiter:
    """At most `slots` requests in flight to one remote, whichever pool sends them.

    Sized once per remote from its config (`max_connections`), it replaces fixed thread
    counts at the call sites: a pool is `width(wanted)` threads and each of its requests
    holds a slot (`with limiter:`), so three docker layers of eight ranges each, or a push
    beside a listing, never open more connections than the remote was given. Slots are
    taken only around single requests, never around work that takes more slots itself.
    """

    def __init__(self, slots: int = DEFAULT_CONNECTIONS) -> None:
        if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
            raise ValueError("a limiter needs at least one slot")
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots)

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any], default: int = DEFAULT_CONNECTIONS
    ) -> Limiter:
        """`max_connections` of a remote's table (a positive integer), else `default`."""
        from registry_client.errors import ConfigError

        value = options.get("max_connections", default)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1024:
            raise ConfigError("max_connections must be an integer from 1 to 1024")
        return cls(value)

    def width(self, wanted: int, items: int | None = None) -> int:
        """Threads for a pool that wants `wanted` (and has `items` jobs): at least one."""
        width = min(wanted, self.slots, items if items is not None else wanted)
        return max(1, width)

    def __enter__(self) -> Limiter:
        self._sem.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sem.release()

    def map(self, fn: Callable[[T], R], items: Sequence[T], wanted: int | None = None) -> list[R]:
        """fn over items in parallel, each call holding a slot; results in order."""

        def limited(item: T) -> R:
            with self:
                return fn(item)

        return parallel(limited, items, self.width(wanted or self.slots, len(items)))


def parallel(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """fn over items on up to `workers` threads, results in order. The first failure
    cancels what is still queued and is raised once the running calls end; so does Ctrl-C."""
    if len(items) <= 1 or workers <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items)), thread_name_prefix="rc-io") as pool:
        futures = [pool.submit(fn, item) for item in items]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: drop what is queued, let the running calls end
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        for fut in done:
            if (error := fut.exception()) is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                raise error
        return [fut.result() for fut in futures]


# -- uploads ------------------------------------------------------------------------------


class RangeReader(io.RawIOBase):
    """A seekable, read-only view of [offset, offset+length) of a file descriptor.

    Parts are streamed from disk through it instead of being held in memory; pread keeps
    threads that share the descriptor independent. Rewinding (seek) is how a client
    library re-sends a body, and how a retried part is read again.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        super().__init__()
        self.fd, self.offset, self.length, self.pos = fd, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = min(max(0, base + pos), self.length)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int | None = -1) -> bytes:
        left = self.length - self.pos
        size = left if size is None or size < 0 else min(size, left)
        if size <= 0:
            return b""
        data = os.pread(self.fd, size, self.offset + self.pos)
        if not data:
            from registry_client.errors import IntegrityError

            raise IntegrityError("the file shrank while it was being uploaded")
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return self.length


class PartSource(abc.ABC):
    """Where the bytes of an upload come from.

    `open(offset, length)` gives a fresh reader of exactly those bytes each time it is
    called: several parts are read at once (one reader each, from several threads), and a
    retried part is opened again. A local file (FileParts) reads them with pread; a
    store-to-store copy can hand out buffers it filled with ranged reads.
    """

    size: int

    @abc.abstractmethod
    def open(self, offset: int, length: int) -> BinaryIO:
        """A reader of bytes [offset, offset + length), positioned at its start."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the source holds (a file descriptor, buffers)."""


class FileParts(PartSource):
    """The parts of a local file, read with pread from one descriptor."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def open(self, offset: int, length: int) -> BinaryIO:
        return RangeReader(self.fd, offset, length)  # type: ignore[return-value]

    def close(self) -> None:
        os.close(self.fd)


class Upload(abc.ABC):
    """One object being written part by part (Backend.start_upload).

    `parts` lists (offset, length) of each part as the backend cut the object. Each step
    may be retried on its own: `put_part` again replaces that part; `complete` again after
    a lost answer must not fail if the first one took effect.
    """

    key: str
    parts: list[tuple[int, int]]
    #: Parts that an interrupted upload of the same object, which this one continues
    #: (Backend.resume_upload), already holds: index -> md5 of the stored bytes.
    stored: Mapping[int, bytes] = MappingProxyType({})

    @abc.abstractmethod
    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        """Send part `index` from a reader of exactly its bytes; IntegrityError if the
        checksum the server computed differs from the bytes read. `md5`: the part's md5
        when the caller already took it (hashing the bytes on their way); it is sent for
        the store to check (Content-MD5, Swift's ETag) instead of reading the part twice."""

    def keep_part(self, index: int, md5: bytes) -> None:
        """Count part `index` as sent: it is in `stored` with this md5, which the caller
        found equal to the md5 of the bytes it would send."""
        raise NotImplementedError

    @abc.abstractmethod
    def complete(self) -> ObjectInfo:
        """Make the object live (metadata included) and check its final ETag."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Remove what was uploaded; best effort, never raises."""


class Attempt(Protocol):
    """Runs one step of an upload (`what` names it): once, or under a retry policy."""

    def __call__(self, what: str, step: Callable[[], T], /) -> T: ...


def once(what: str, step: Callable[[], T]) -> T:
    return step()


def upload(
    backend: Backend,
    key: str,
    source: str | os.PathLike[str] | PartSource,
    metadata: Metadata,
    *,
    part_size: int,
    concurrency: int,
    progress: Progress | None = None,
    attempt: Attempt = once,
) -> ObjectInfo:
    """Open an upload on `backend`, send its parts `concurrency` at a time (each under
    `attempt`, holding a slot of the remote's limiter), complete it; abort on any failure
    or Ctrl-C. A retried part costs that part, never the object."""
    owned = not isinstance(source, PartSource)
    parts_of = source if isinstance(source, PartSource) else FileParts(source)
    try:
        session = attempt(
            f"upload {key}",
            lambda: backend.start_upload(key, parts_of.size, metadata, part_size=part_size),
        )
        try:

            def send(index: int) -> None:
                offset, length = session.parts[index]

                def step() -> None:
                    with backend.limiter:
                        session.put_part(index, parts_of.open(offset, length))

                attempt(f"part {index + 1} of {key}", step)
                if progress:
                    progress(length)

            parallel(send, range(len(session.parts)), backend.limiter.width(concurrency))
            return attempt(f"upload {key}", session.complete)
        except BaseException:
            session.abort()
            raise
    finally:
        if owned:
            parts_of.close()
