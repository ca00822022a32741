"""Hashing in one pass: sha256 of the whole object plus md5s of candidate segmentations.

An S3 ETag is the md5 of a single-part object, or md5(concat(part md5s)) + "-N" for a
multipart one; a Swift SLO ETag is md5(concat(hex segment etags)). Both are checked from
the md5 of each segment, so the downloader asks a backend for an EtagPlan (candidate
segmentations plus a check); registry_client.transfer hashes the segments in parallel as
the bytes land. A Digester does the same in one sequential pass, for local files.

A plan may name another segment hash than md5: GCS composite objects carry only a CRC32C
(`algorithm="crc32c"`, google-crc32c, imported only then).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from registry_client.backends.base import ObjectInfo

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3's multipart limits: 1 to 10,000 parts, each 5 MiB to 5 GiB but the last.
S3_MAX_PARTS = 10_000
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
# Part sizes other tools pick, tried first when an object's multipart layout is unknown:
# boto3/awscli 8 MiB, s3cmd 15 MiB, rclone/mc 5 and 16 MiB, s5cmd 50 MiB, 64/100/128 MiB.
COMMON_PART_SIZES_MIB = (8, 5, 16, 15, 50, 64, 10, 32, 100, 128, 25, 20, 256, 512)
MAX_CANDIDATES = 24


def segments(size: int, part_size: int) -> list[int]:
    """Lengths of the parts of a `size`-byte object cut every `part_size` bytes."""
    if size == 0:
        return [0]
    full, rest = divmod(size, part_size)
    return [part_size] * full + ([rest] if rest else [])


class _Crc32c:
    """CRC32C with hashlib's update/digest shape (digest: 4 bytes, big-endian, as GCS)."""

    __slots__ = ("_sum",)

    def __init__(self) -> None:
        import google_crc32c

        self._sum: Any = google_crc32c.Checksum()  # type: ignore[no-untyped-call]

    def update(self, data: bytes | memoryview) -> None:
        # The C extension takes bytes only (not even a read-only memoryview): one memcpy.
        self._sum.update(data if isinstance(data, bytes) else bytes(data))

    def digest(self) -> bytes:
        return bytes(self._sum.digest())


ALGORITHMS = ("md5", "crc32c")


def new_hash(algorithm: str) -> Any:
    """A fresh segment hash: hashlib's md5, or CRC32C."""
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "crc32c":
        return _Crc32c()
    raise ValueError(f"unknown segment hash {algorithm!r}")


class _Segmenter:
    """The digest of each segment of one segmentation, fed sequential bytes."""

    __slots__ = ("lengths", "index", "left", "current", "digests", "algorithm")

    def __init__(self, lengths: Sequence[int], algorithm: str = "md5") -> None:
        self.lengths = list(lengths)
        self.algorithm = algorithm
        self.index = 0
        self.left = self.lengths[0] if self.lengths else 0
        self.current = new_hash(algorithm)
        self.digests: list[bytes] = []

    def update(self, data: memoryview) -> None:
        while data:
            if self.left == 0:
                self._next()
            take = min(self.left, len(data))
            self.current.update(data[:take])
            self.left -= take
            data = data[take:]

    def _next(self) -> None:
        self.digests.append(self.current.digest())
        self.index += 1
        if self.index >= len(self.lengths):
            raise ValueError("more bytes than the segmentation covers")
        self.left = self.lengths[self.index]
        self.current = new_hash(self.algorithm)

    def finish(self) -> list[bytes]:
        # Zero-length trailing segments still get a digest of their (empty) bytes.
        while self.index < len(self.lengths):
            self.digests.append(self.current.digest())
            self.index += 1
            self.current = new_hash(self.algorithm)
        return self.digests


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
    `impossible` says the ETag is not one the store could have made (e.g. more parts
    than S3 allows): a lie or damage, so the object needs another checksum to be pulled.
    """

    schemes: list[list[int]]
    check: Callable[[list[list[bytes]]], bool]
    verifiable: bool = True
    description: str = ""
    impossible: bool = False
    #: less likely segmentations, hashed from the local copy only if `schemes` fail
    more_schemes: list[list[int]] = field(default_factory=list)
    #: the hash of each segment: "md5" (S3, Swift, Azure, most GCS objects) or "crc32c"
    algorithm: str = "md5"
    #: what the check is called in a pull's "verified" list
    name: str = "etag"


@dataclass(frozen=True)
class DigestResult:
    size: int
    sha256: str
    segment_md5s: list[list[bytes]]  # digests of the plan's algorithm (md5 unless told)


class Digester:
    """Feed bytes in order; get sha256 and the md5 (or CRC32C) of every segment of every scheme.

    sha256 runs on a helper thread while this one computes the md5s: hashlib releases the
    GIL on large buffers, so the two hashes take max(sha256, md5) of wall time, not the sum.
    """

    def __init__(
        self,
        schemes: Sequence[Sequence[int]] = (),
        algorithm: str = "md5",
        *,
        helper: bool | None = None,
    ) -> None:
        """`helper`: sha256 on its own thread (by default when there are segment hashes to
        run beside it); False where many Digesters run at once (a migration's images) and
        the hand-off per block would cost more than it overlaps."""
        self._sha = hashlib.sha256()
        self._segmenters = [_Segmenter(s, algorithm) for s in schemes]
        parallel = bool(self._segmenters) if helper is None else helper
        self._pool = ThreadPoolExecutor(1, "rc-sha256") if parallel else None
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview, beside: Sequence[Any] = ()) -> None:
        """Hash the next bytes. `beside`: other hash objects (e.g. the md5 of the part
        these bytes belong to) updated with them on this thread."""
        view = memoryview(data)
        pending = self._pool.submit(self._sha.update, view) if self._pool else None
        if pending is None:
            self._sha.update(view)
        for other in beside:
            other.update(view)
        for seg in self._segmenters:
            seg.update(view)
        if pending is not None:
            pending.result()
        self.size += len(view)

    def result(self) -> DigestResult:
        if self._pool:
            self._pool.shutdown()
        md5s = [s.finish() for s in self._segmenters]
        return DigestResult(self.size, self._sha.hexdigest(), md5s)


def s3_multipart_etag(part_md5s: Sequence[bytes]) -> str:
    return f"{hashlib.md5(b''.join(part_md5s), usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


def candidate_part_sizes(size: int, parts: int, known: int | None = None) -> list[int]:
    """Part sizes that cut `size` bytes into exactly `parts` parts, most likely first:
    the known one (our metadata, or a PartNumber HEAD) if it does, else sizes other tools
    use, then the whole-MiB sizes in between (bounded). Every size is one S3 allows."""

    def fits(p: int) -> bool:
        return (parts == 1 or S3_MIN_PART <= p <= S3_MAX_PART) and -(-size // p) == parts

    if known and fits(known):
        return [known]

    found = [mib * MiB for mib in COMMON_PART_SIZES_MIB if fits(mib * MiB)]
    lo = max(1, -(-size // (parts * MiB)))  # smallest whole MiB that gives <= parts parts
    for mib in range(lo, lo + 4096):
        p = mib * MiB
        if len(found) >= MAX_CANDIDATES or -(-size // p) < parts:
            break
        if fits(p) and p not in found:
            found.append(p)
    return found


def plain_md5_plan(info: ObjectInfo) -> EtagPlan:
    """The ETag of a single-part S3 object / plain Swift object: md5 of the bytes."""

    etag = (info.etag or "").lower()
    if not _is_md5_hex(etag):
        return EtagPlan([], lambda _: False, verifiable=False, description=f"etag {etag!r}")
    return EtagPlan(
        [[info.size]], lambda md5s: md5s[0][0].hex() == etag, description="md5 of the object"
    )


def s3_etag_plan(info: ObjectInfo) -> EtagPlan:
    """Single-part md5 or `md5-of-part-md5s-N`, trying candidate part sizes in one pass."""

    etag = (info.etag or "").lower()
    base, dash, count = etag.partition("-")
    if not dash:
        return plain_md5_plan(info)
    if not (_is_md5_hex(base) and count.isdigit() and int(count) > 0):
        return EtagPlan([], lambda _: False, verifiable=False, description=f"etag {etag!r}")
    parts = int(count)
    if parts > S3_MAX_PARTS or info.size < (parts - 1) * S3_MIN_PART:
        return EtagPlan(
            [],
            lambda _: False,
            verifiable=False,
            description=f"etag {etag!r} names {parts} parts of a {info.size}-byte object, "
            f"which S3 cannot make (at most {S3_MAX_PARTS} parts, all but the last of "
            "at least 5 MiB)",
            impossible=True,
        )
    sizes = candidate_part_sizes(info.size, parts, info.part_size)
    if not sizes:
        return EtagPlan([], lambda _: False, verifiable=False, description="no part size fits")
    # Sizes other tools use are hashed while downloading; the long tail of other
    # candidates only if none of those match, in a second pass over the local file.
    common = {m * MiB for m in COMMON_PART_SIZES_MIB}
    first = [p for p in sizes if p in common or p == info.part_size] or sizes[:1]
    rest = [p for p in sizes if p not in first]

    def check(md5s: list[list[bytes]]) -> bool:
        return any(s3_multipart_etag(m) == etag for m in md5s)

    return EtagPlan(
        [segments(info.size, p) for p in first],
        check,
        description=f"multipart etag over {parts} parts",
        more_schemes=[segments(info.size, p) for p in rest],
    )


def _is_md5_hex(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def hash_file(
    path: str,
    schemes: Sequence[Sequence[int]] = (),
    block: int = 4 * MiB,
    stop: threading.Event | None = None,
    algorithm: str = "md5",
) -> DigestResult:
    """One sequential pass over a local file; `stop` abandons it (HashingStopped)."""
    digester = Digester(schemes, algorithm)
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            if stop is not None and stop.is_set():
                raise HashingStopped(path)
            digester.update(view[:n])
    return digester.result()


class HashingStopped(Exception):
    """hash_file was asked to stop before the end of the file."""


def copy_hashing(
    src: str, dest: os.PathLike[str] | str, schemes: Sequence[Sequence[int]], algorithm: str = "md5"
) -> DigestResult:
    """Copy src to a new dest (never through a symlink), hashing exactly the bytes written:
    src may change meanwhile, and only what was written is verified."""
    digester = Digester(schemes, algorithm)
    block = bytearray(4 * MiB)
    view = memoryview(block)
    with open(src, "rb", buffering=0) as inp:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb", buffering=0) as out:
            while n := inp.readinto(block):
                digester.update(view[:n])
                out.write(view[:n])
    return digester.result()
