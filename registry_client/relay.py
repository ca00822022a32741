"""Store to store: one object streamed from a source backend into a destination upload.

The shape of transfer.py, with an upload at the end instead of a cache file:

    ranged reads (fetch pool) → one spool file per part → hashed in order (the calling
    thread) → each part sent with its md5 (send pool) → ... → source verified → last part

* Bounded: a part waits in an anonymous temp file of a `Spool` (at most `budget` bytes
  held at once by every relay of a migration together), not in memory and never in the
  node cache, so memory stays flat whatever the image sizes and the parallelism, and a
  kill -9 leaves nothing behind (the files have no name).
* Verified while streaming: sha256 of the whole object and the md5 of every segment of
  the source's ETag plan are taken in order as parts arrive; each part goes out with its
  md5 (S3 Content-MD5, Swift ETag), which the store checks. The caller's `verify` sees
  the digests after the last byte is hashed and before the last part is sent: a source
  that does not match its ETag or sha256 never becomes a complete upload (the caller
  aborts it), and a single-part upload (live as soon as it is sent) is never sent.
* One md5 pass where layouts agree: when the destination's parts are a segmentation the
  source's ETag plan needs (our own multipart/SLO layout on both sides, a single-part
  object on both sides), each part's md5 serves as its Content-MD5 and as the segment md5
  the source's ETag is checked with.
* Resumable: parts an interrupted upload already holds (`stored`: index → md5) are read
  and hashed again, and sent only if their bytes differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import IO, BinaryIO, cast

from registry_client.backends.base import (
    ObjectInfo,
    RangeBody,
    RangeReader,
    ReadCancelled,
    Reader,
    ReadWatch,
    Upload,
)
from registry_client.digests import Digester, DigestResult
from registry_client.errors import (
    IntegrityError,
    Interrupted,
    RegistryClientError,
    RemoteUnavailable,
)
from registry_client.retry import RetryPolicy, retry_call
from registry_client.transfer import Watches

MiB = 1024 * 1024
HASH_BLOCK = 4 * MiB
STREAM_BLOCK = MiB

Progress = Callable[[int], None]


class Spool:
    """The bounded temp area parts wait in: at most `budget` bytes held at once.

    A part larger than the whole budget is let in alone. Waiting is first come, first
    served: `acquire(block=False)` (a relay reading ahead) never overtakes a relay that
    waits for the part it needs next.
    """

    def __init__(self, budget: int, directory: str | None = None) -> None:
        self.budget = max(1, budget)
        self.directory = directory
        self.held = 0
        self.peak = 0
        self._waiting = 0
        self._cond = threading.Condition()

    def _fits(self, n: int) -> bool:
        return self.held == 0 or self.held + n <= self.budget

    def acquire(self, n: int, *, block: bool = True, stop: threading.Event | None = None) -> bool:
        with self._cond:
            if not block:
                if self._waiting or not self._fits(n):
                    return False
            else:
                self._waiting += 1
                try:
                    while not self._fits(n):
                        if stop is not None and stop.is_set():
                            raise Interrupted("stopped")
                        self._cond.wait(0.5)
                finally:
                    self._waiting -= 1
            self.held += n
            self.peak = max(self.peak, self.held)
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()

    def file(self) -> IO[bytes]:
        # O_TMPFILE where the filesystem has it: the file never has a name.
        return tempfile.TemporaryFile(dir=self.directory)


class Watchdog(Watches):
    """Every ranged read of a migration, watched from one thread: a read that delivers
    nothing for `stall_timeout` seconds is stopped (its connection shut) and retried by
    the retry wrapper, as a pull's are; a relay that fails or is stopped cancels its own
    reads at once instead of waiting for them to end."""

    def __init__(self, stall_timeout: float) -> None:
        super().__init__(stall_timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()

    @contextlib.contextmanager
    def track(self, owner: object = None) -> Iterator[ReadWatch]:
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rc-stalls", daemon=True)
                self._thread.start()
        with super().track(owner) as watch:
            yield watch

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.stop_stalled()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Lanes:
    """What every relay of one migration shares: the spool, the fetch and send pools,
    the range size, the retry policy for each step, and a stop switch (Ctrl-C)."""

    spool: Spool
    fetchers: ThreadPoolExecutor
    senders: ThreadPoolExecutor
    chunk_size: int = 16 * MiB
    window: int = 4  # parts of one object read ahead of the one being hashed
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    stop: threading.Event = field(default_factory=threading.Event)
    watchdog: Watchdog = field(default_factory=lambda: Watchdog(30.0))

    @classmethod
    def create(
        cls,
        *,
        connections: int,
        budget: int,
        directory: str | None = None,
        chunk_size: int = 16 * MiB,
        window: int = 4,
        policy: RetryPolicy | None = None,
        stall_timeout: float = 30.0,
    ) -> Lanes:
        return cls(
            Spool(budget, directory),
            ThreadPoolExecutor(max(1, connections), thread_name_prefix="rc-relay-get"),
            ThreadPoolExecutor(max(1, connections), thread_name_prefix="rc-relay-put"),
            chunk_size,
            max(1, window),
            policy or RetryPolicy(),
            watchdog=Watchdog(stall_timeout),
        )

    def close(self) -> None:
        self.stop.set()
        self.fetchers.shutdown(wait=True, cancel_futures=True)
        self.senders.shutdown(wait=True, cancel_futures=True)
        self.watchdog.close()


@dataclass(frozen=True)
class Relayed:
    digest: DigestResult  # segment_md5s follow the `schemes` given to relay()
    part_md5s: list[bytes]  # of the destination's parts (empty without an upload)
    sent: int  # bytes sent to the destination
    reused: int  # bytes an interrupted upload already held, not sent again


class _Abandoned(Exception):
    """A part given up because the relay as a whole failed or was stopped."""


@dataclass
class _Part:
    index: int
    offset: int
    length: int
    spool: Spool
    file: IO[bytes] | None = None
    fetched: Future[None] | None = None
    sent: Future[None] | None = None
    _retired: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retire(self) -> None:
        """Close the spool file and give its bytes back (once)."""
        with self._lock:
            if self._retired:
                return
            self._retired = True
            if self.file is not None:
                self.file.close()
        self.spool.release(self.length)


def relay(
    source: Reader,
    info: ObjectInfo,
    schemes: Sequence[Sequence[int]],
    upload: Upload | None,
    lanes: Lanes,
    *,
    verify: Callable[[DigestResult], None] = lambda _result: None,
    stored: Mapping[int, bytes] | None = None,
    progress: Progress | None = None,
    algorithm: str = "md5",
) -> Relayed:
    """Stream `info` from `source` into the parts of `upload` (or, without an upload, only
    hash it, in ranges of lanes.chunk_size), hashing every byte in order.

    `schemes` are the source segmentations whose digests the caller needs (its ETag plan,
    hashed with the plan's `algorithm`).
    `verify` gets the digests once the last byte is hashed, before the last part is sent;
    it raises to stop the relay. The upload is not completed here: the caller completes
    it (or aborts it if this raises).
    """
    return _Relay(
        source, info, schemes, upload, lanes, verify, stored or {}, progress, algorithm
    ).run()


class _Relay:
    def __init__(
        self,
        source: Reader,
        info: ObjectInfo,
        schemes: Sequence[Sequence[int]],
        upload: Upload | None,
        lanes: Lanes,
        verify: Callable[[DigestResult], None],
        stored: Mapping[int, bytes],
        progress: Progress | None,
        algorithm: str,
    ) -> None:
        self.source, self.info, self.upload, self.lanes = source, info, upload, lanes
        self.verify, self.stored, self.progress = verify, stored, progress
        if upload is not None:
            layout = list(upload.parts)
        else:
            step = max(1, lanes.chunk_size)
            layout = [(s, min(step, info.size - s)) for s in range(0, info.size, step)]
        if sum(n for _, n in layout) != info.size:
            raise IntegrityError(f"{info.key}: the upload's parts do not cover {info.size} bytes")
        self.parts = [_Part(i, off, n, lanes.spool) for i, (off, n) in enumerate(layout)]
        lengths = [n for _, n in layout]
        # A scheme equal to the destination's parts is not hashed twice: the part md5s are it.
        md5s = algorithm == "md5"
        self.aligned = [md5s and upload is not None and list(s) == lengths for s in schemes]
        self.schemes = [list(s) for s in schemes]
        self.digester = Digester(
            [s for s, same in zip(self.schemes, self.aligned, strict=True) if not same],
            algorithm,
            helper=True,  # sha256 beside the md5s: an object's hashing is on its critical path
        )
        self.block = bytearray(HASH_BLOCK)  # read into again and again: no page faults
        self.part_md5s: list[bytes] = []
        self.failed = threading.Event()
        self.sent = 0
        self.reused = 0
        self._count = threading.Lock()
        self._sent_parts: set[int] = set()
        self._next_retire = 0

    # -- the hashing thread (the caller's) ------------------------------------------------
    def run(self) -> Relayed:
        try:
            digest = self._pump()
            for part in self.parts:
                if part.sent is not None:
                    part.sent.result()
        except BaseException:
            self.failed.set()
            self._drain()
            raise
        return Relayed(digest, self.part_md5s, self.sent, self.reused)

    def _pump(self) -> DigestResult:
        submitted = 0
        last = len(self.parts) - 1
        digest: DigestResult | None = None
        for part in self.parts:
            submitted = self._read_ahead(submitted, part.index)
            self._wait(part.fetched)
            md5 = self._hash(part)
            self.part_md5s.append(md5)
            if part.index == last:
                digest = self._result()
                self.verify(digest)
            self._send(part, md5)
        if digest is None:  # an object of no parts cannot happen: segments() gives [0]
            raise IntegrityError(f"{self.info.key}: nothing was read")
        return digest

    def _read_ahead(self, submitted: int, needed: int) -> int:
        """Start fetching parts up to the window; block only for the part needed now."""
        while submitted < len(self.parts) and submitted <= needed + self.lanes.window:
            part = self.parts[submitted]
            block = submitted == needed
            if not self.lanes.spool.acquire(part.length, block=block, stop=self.lanes.stop):
                break
            part.fetched = self.lanes.fetchers.submit(self._fetch, part)
            submitted += 1
        return submitted

    def _wait(self, future: Future[None] | None) -> None:
        assert future is not None
        while True:
            done, _ = wait([future], timeout=0.5)
            if done:
                future.result()
                return
            if self.lanes.stop.is_set():
                raise Interrupted("stopped")

    def _hash(self, part: _Part) -> bytes:
        md5 = hashlib.md5(usedforsecurity=False)
        assert part.file is not None
        fd, pos, view = part.file.fileno(), 0, memoryview(self.block)
        while pos < part.length:
            n = os.preadv(fd, [view[: min(HASH_BLOCK, part.length - pos)]], pos)
            if not n:
                raise IntegrityError("spool file shorter than the bytes written to it")
            self.digester.update(view[:n], beside=(md5,))
            pos += n
        return md5.digest()

    def _result(self) -> DigestResult:
        raw = self.digester.result()
        others = iter(raw.segment_md5s)
        md5s = [list(self.part_md5s) if same else next(others) for same in self.aligned]
        return DigestResult(raw.size, raw.sha256, md5s)

    # -- pool threads -----------------------------------------------------------------------
    def _fetch(self, part: _Part) -> None:
        if self.failed.is_set() or self.lanes.stop.is_set():
            raise _Abandoned
        part.file = self.lanes.spool.file()
        fd, info = part.file.fileno(), self.info
        step = max(1, self.lanes.chunk_size)
        end = part.offset + part.length
        for start in range(part.offset, end, step):
            stop = min(start + step, end)
            pos = start
            with self.lanes.watchdog.track(self) as watch:
                try:
                    body = self.source.open_range(info.key, start, stop, info.etag, watch=watch)
                except ReadCancelled:
                    raise _Abandoned from None
                try:
                    pos = self._receive(body, fd, pos, stop, part.offset, watch)
                except ReadCancelled:
                    raise _Abandoned from None
                finally:
                    body.close()
            if pos != stop:
                raise IntegrityError(f"{info.key}: range {start}-{stop} ended at {pos}")

    def _receive(
        self, body: RangeBody, fd: int, pos: int, stop: int, base: int, watch: ReadWatch
    ) -> int:
        """Receive a range's body into this thread's buffer and write it to the spool file
        at its place (`base`: the file's first byte in the object); the new position."""
        view = _receive_buffer()
        while n := body.readinto(view):
            watch.moved()
            if self.failed.is_set() or self.lanes.stop.is_set():
                raise _Abandoned
            if pos + n > stop:
                raise IntegrityError(f"{self.info.key}: the store sent more than asked for")
            _write_all(fd, view[:n], pos - base)
            pos += n
        return pos

    def _send(self, part: _Part, md5: bytes) -> None:
        if self.upload is None:
            part.retire()
            return
        part.sent = self.lanes.senders.submit(self._put, part, md5)

    def _put(self, part: _Part, md5: bytes) -> None:
        if self.failed.is_set() or self.lanes.stop.is_set():
            raise _Abandoned
        upload, index = self.upload, part.index
        assert upload is not None and part.file is not None
        if self.stored.get(index) == md5:
            upload.keep_part(index, md5)
            self._count_bytes(part.length, reused=True)
        else:
            fd = part.file.fileno()
            retry_call(
                f"part {index + 1} of {upload.key}",
                lambda: upload.put_part(index, _reader(fd, part.length), md5=md5),
                self.lanes.policy,
            )
            self._count_bytes(part.length, reused=False)
        self._retire_sent(index)

    def _retire_sent(self, index: int) -> None:
        """Spool files go back in order: a backend may read a sent part's reader again
        until every earlier part is sent (a whole-object hash fed in order, Azure's and
        GCS's InOrder)."""
        with self._count:
            self._sent_parts.add(index)
            while self._next_retire in self._sent_parts:
                self.parts[self._next_retire].retire()
                self._next_retire += 1

    def _count_bytes(self, n: int, *, reused: bool) -> None:
        with self._count:
            if reused:
                self.reused += n
            else:
                self.sent += n
        if self.progress:
            self.progress(n)

    def _drain(self) -> None:
        """After a failure: let running parts stop, then give every spool file back."""
        self.lanes.watchdog.cancel(self)  # reads blocked in a socket end now
        futures = [f for p in self.parts for f in (p.fetched, p.sent) if f is not None]
        for fut in futures:
            fut.cancel()
        wait(futures)
        for part in self.parts:
            if part.fetched is not None or part.file is not None:
                part.retire()


_local = threading.local()


def _receive_buffer() -> memoryview:
    """One receive buffer per fetch thread, reused: no new bytes object per block."""
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(STREAM_BLOCK))
    return view


def _reader(fd: int, length: int) -> BinaryIO:
    return cast(BinaryIO, RangeReader(fd, 0, length))


def _write_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        pos += written
        view = view[written:]


class StreamReader(Reader):
    """A Reader over one forward-only stream (a download read as a plain stream): ranges
    are served in order, each as soon as the ones before it were read. A relay asks for
    its parts in order, so a part fetched early waits its turn; once one is abandoned,
    the stream is spent and the others fail rather than wait."""

    kind = "stream"

    def __init__(self, stream: IO[bytes], info: ObjectInfo, label: str) -> None:
        self.stream, self.info, self.label = stream, info, label
        self.location = label
        self.pos = 0
        self.spent = False
        self._turn = threading.Condition()

    def stat(self, key: str) -> ObjectInfo:
        return self.info

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,  # the stream's own timeout bounds a silent read
    ) -> Iterator[bytes]:
        with self._turn:
            while self.pos != start and not self.spent:
                if self.pos > start:
                    raise RegistryClientError(f"{self.label}: read out of order")
                self._turn.wait(0.5)
            if self.spent:
                raise RemoteUnavailable(f"{self.label}: the download stopped")
            try:
                while self.pos < end:
                    data = self.stream.read(min(STREAM_BLOCK, end - self.pos))
                    if not data:
                        raise IntegrityError(
                            f"{self.label}: the download ended at byte {self.pos} of {end}"
                        )
                    self.pos += len(data)
                    yield data
            except BaseException:
                self.spent = True
                raise
            finally:
                self._turn.notify_all()

    def close(self) -> None:
        self.stream.close()
