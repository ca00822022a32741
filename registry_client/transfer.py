"""Moving bytes: parallel ranged reads into a preallocated temp file, hashed as they land.

Workers fetch ranges concurrently (Reader.open_range + readinto), each into one reused
1 MiB buffer and pwrite, then start the disk writes of the finished range at once
(sync_file_range: write-behind, so the fsync before publishing waits for little). A
mapping of the temp file as the receive buffer was measured against this and dropped:
it cost more CPU (docs/performance.md, "What was changed") and needed reserved blocks
to be safe on a full disk.
Two kinds of hash follow the bytes:

* sha256 of the whole file, the one hash that must see every byte in order: one thread
  follows the contiguous prefix already written, reading it from the page cache through
  short read-only mappings (no copy).
* the md5 of every segment (S3 part, Swift SLO segment) of every candidate segmentation
  (EtagPlan.schemes): a `_Chain` per segment, computed by the range workers themselves.
  Segments are independent, so many are hashed at once; within one segment the bytes
  are hashed in order, range after range. A worker whose range starts where a chain
  stands hashes it from the bytes it receives; a range that arrives before its
  predecessor is hashed from the page cache by whichever worker completes the gap.

So the busiest thread does sha256 alone (~0.6 CPU s/GiB with SHA-NI), not md5 as well,
and memory stays flat: one 1 MiB buffer per worker and a 4 MiB mapping for the sha256
thread.
Ranges are cut along a known segmentation where there is one (a 64 MiB part as four
16 MiB ranges; 5 MiB parts three to a range), so most chains are hashed as received.

The thread that waits for the ranges also watches them (a ReadWatch each): a read that
delivers nothing for `stall_timeout` seconds is stopped and retried (exit 6 once the
retries are spent), so a server that trickles a body never holds the node's download
lock for good; and when the download fails or is interrupted (Ctrl-C), every read still
running is stopped at once, wherever it is blocked.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import hashlib
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from registry_client.backends.base import ObjectInfo, Progress, ReadCancelled, Reader, ReadWatch
from registry_client.digests import DigestResult, new_hash
from registry_client.errors import IntegrityError, Interrupted, Stalled
from registry_client.settings import TransferSettings

T = TypeVar("T")
MiB = 1024 * 1024
SHA_BLOCK = 4 * MiB  # read-back block of the sha256 thread
MD5_BLOCK = 2 * MiB  # read-back block of a worker catching a chain up
RECV_BLOCK = 1 * MiB  # a worker's receive buffer, reused for every block it receives
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writing the range, do not wait
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # fault the pages in with the mapping, at once
MAX_CHAINS = 100_000  # md5 states kept at once (10,000 S3 parts × a few candidates)
WATCH_EVERY = 0.2  # seconds between looks at the reads in progress
MAX_IN_MEMORY = 16 * MiB  # the most read_bytes holds


class _Abandoned(Exception):
    """A range given up because the download as a whole failed."""


class Watches:
    """The reads in progress, each with a ReadWatch: those silent for `stall_timeout`
    seconds are stopped (and retried by the retry wrapper), and a failed or interrupted
    transfer cancels its own at once, wherever they are blocked. A download watches its
    reads from the thread that waits for it; a migration from one thread for all its
    relays (registry_client.relay.Watchdog), each relay cancelling its own (`owner`)."""

    def __init__(self, stall_timeout: float, what: str = "") -> None:
        self.stall_timeout = stall_timeout
        self._what = f"read {what}: " if what else ""
        self._lock = threading.Lock()
        self._live: dict[ReadWatch, object] = {}
        self._cancelled = False

    @contextlib.contextmanager
    def track(self, owner: object = None) -> Iterator[ReadWatch]:
        watch = ReadWatch()
        with self._lock:
            self._live[watch] = owner
            if self._cancelled:
                watch.cancel()
        try:
            yield watch
        finally:
            with self._lock:
                self._live.pop(watch, None)

    def stop_stalled(self) -> None:
        now = time.monotonic()
        with self._lock:
            stalled = [w for w in self._live if now - w.mark > self.stall_timeout]
        for watch in stalled:
            watch.stop(
                Stalled(
                    f"{self._what}no data for {self.stall_timeout:g} s",
                    hint="the store stopped sending; [transfer] stall_timeout sets the wait",
                )
            )

    def cancel(self, owner: object = None) -> None:
        """Cancel the reads of `owner`; with no owner, every read now and any later one."""
        with self._lock:
            if owner is None:
                self._cancelled = True
            live = [w for w, o in self._live.items() if owner is None or o is owner]
        for watch in live:
            watch.cancel()


class Scope:
    """Downloads that worker threads run for one caller (docker's layer blobs, fetched side
    by side). Ctrl-C reaches only the main thread, and a download is ended by the thread
    that waits for its ranges: so when the caller fails or is interrupted, `cancel` has
    every download of the scope end as its own Ctrl-C would (each read shut down wherever
    it is blocked, within WATCH_EVERY), rather than the caller waiting for bodies that
    may trickle for hours while it holds their locks."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in this thread, inside the scope."""
        outer = getattr(_scope, "current", None)
        _scope.current = self
        try:
            self.check()
            return fn(*args, **kwargs)
        finally:
            _scope.current = outer

    def cancel(self) -> None:
        self._cancelled.set()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise Interrupted("interrupted")


_scope = threading.local()


def _check_scope() -> None:
    """Raise Interrupted if the scope this thread works in was cancelled."""
    scope: Scope | None = getattr(_scope, "current", None)
    if scope is not None:
        scope.check()


class _Chain:
    """One segment hash (md5, or the plan's algorithm) over bytes [start, end) of the
    file, fed strictly in order."""

    __slots__ = ("start", "end", "pos", "busy", "hash")

    def __init__(self, start: int, end: int, algorithm: str) -> None:
        self.start = self.pos = start
        self.end = end
        self.busy = False  # a thread is feeding it (outside the lock)
        self.hash = new_hash(algorithm)

    @property
    def done(self) -> bool:
        return self.pos >= self.end


class _State:
    """What is on disk, where each chain stands, and whether the download failed.

    One lock guards both, so that a worker finishing a range and a worker releasing a
    chain always see each other's change: whoever acts second catches the chain up.
    """

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._starts: list[int] = []  # disjoint written runs, sorted: [start, end)
        self._ends: list[int] = []
        self.failed = False

    def add(self, start: int, end: int) -> None:
        """Record [start, end) as written, merging it with its neighbours (lock held)."""
        i = bisect.bisect_left(self._starts, start)
        if i > 0 and self._ends[i - 1] >= start:
            i -= 1
            start = self._starts[i]
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            end = max(end, self._ends[j])
            j += 1
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]
        self.lock.notify_all()

    def until(self, pos: int) -> int:
        """End of the written run that holds byte `pos` (pos itself if it is not written)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        return self._ends[i] if i >= 0 and self._ends[i] > pos else pos

    def fail(self) -> None:
        with self.lock:
            self.failed = True
            self.lock.notify_all()


class _Digests:
    """The chains of every scheme, and the catching up of chains from the page cache."""

    def __init__(
        self, fd: int, schemes: Sequence[Sequence[int]], state: _State, algorithm: str = "md5"
    ) -> None:
        self.fd, self.state = fd, state
        self.schemes: list[list[_Chain]] = []
        for lengths in schemes:
            chains, pos = [], 0
            for length in lengths:
                chains.append(_Chain(pos, pos + length, algorithm))
                pos += length
            self.schemes.append(chains)
        if sum(map(len, self.schemes)) > MAX_CHAINS:
            raise IntegrityError("too many segments to verify")
        self._all = sorted((c for s in self.schemes for c in s), key=lambda c: c.start)
        self._starts = [c.start for c in self._all]

    def overlapping(self, start: int, end: int) -> list[_Chain]:
        """Chains with bytes in [start, end)."""
        hi = bisect.bisect_left(self._starts, end)
        return [c for c in self._all[:hi] if c.end > start]

    def claim(self, chains: Iterable[_Chain], start: int) -> list[_Chain]:
        """Chains the caller can feed from the bytes of [start, ...) it is about to
        receive: those standing at `start`, and those beginning inside the range (nobody
        else has their bytes). A chain still being caught up to `start` is left to that
        thread, which will find these bytes on disk."""
        with self.state.lock:
            mine = [c for c in chains if not c.busy and not c.done and c.pos >= start]
            for chain in mine:
                chain.busy = True
        return mine

    def release(self, chains: Iterable[_Chain]) -> None:
        with self.state.lock:
            for chain in chains:
                chain.busy = False

    def catch_up(self, chain: _Chain) -> None:
        """Hash the written bytes after chain.pos, until a gap or its end; then look again."""
        while True:
            with self.state.lock:
                if chain.busy or chain.done or self.state.failed:
                    return
                upto = min(chain.end, self.state.until(chain.pos))
                if upto <= chain.pos:
                    return
                chain.busy = True
            try:
                _hash_file_range(self.fd, chain.pos, upto, chain.hash.update, MD5_BLOCK)
            finally:
                with self.state.lock:
                    chain.pos = upto
                    chain.busy = False

    def result(self) -> list[list[bytes]]:
        if not all(c.done for c in self._all):
            raise IntegrityError("some bytes were never hashed")
        return [[c.hash.digest() for c in chains] for chains in self.schemes]


def _hash_file_range(
    fd: int, start: int, end: int, update: Callable[[memoryview], object], block: int
) -> None:
    """Feed bytes [start, end) of the file to `update`, block by block, straight from the
    page cache through a short-lived mapping (no copy into a buffer); pread where the
    file cannot be mapped."""
    pos = start
    while pos < end:
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        limit = min(end, pos + block)
        try:
            mapping = mmap.mmap(
                fd, limit - base, mmap.MAP_SHARED | _POPULATE, mmap.PROT_READ, offset=base
            )
        except (OSError, ValueError):
            data = os.pread(fd, limit - pos, pos)
            if not data:
                raise IntegrityError("temp file shorter than the bytes written to it") from None
            update(memoryview(data))
            pos += len(data)
            continue
        with mapping, memoryview(mapping) as view:
            update(view[pos - base :])
        pos = limit


def _follow_sha256(fd: int, size: int, state: _State) -> str:
    """sha256 of the file in order, hashing each written prefix as it grows."""
    sha, pos = hashlib.sha256(), 0
    while pos < size:
        with state.lock:
            while state.until(pos) <= pos and not state.failed:
                state.lock.wait()
            if state.failed:
                raise _Abandoned
            end = state.until(pos)
        _hash_file_range(fd, pos, end, sha.update, SHA_BLOCK)
        pos = end
    return sha.hexdigest()


def hash_segments(
    path: str | os.PathLike[str],
    schemes: Sequence[Sequence[int]],
    algorithm: str = "md5",
    workers: int = 8,
) -> list[list[bytes]]:
    """md5 of every segment of every scheme of a local file, segments hashed in parallel
    (the second pass over a download whose layout was not among the likely ones)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        state = _State()
        with state.lock:
            state.add(0, size)
        digests = _Digests(fd, schemes, state, algorithm)
        chains = [c for chains in digests.schemes for c in chains]
        jobs = [chains[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers, thread_name_prefix="rc-md5") as pool:
            _wait_all([pool.submit(_catch_up_all, digests, job) for job in jobs if job])
        return digests.result()
    finally:
        os.close(fd)


def ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, size)) for s in range(0, size, chunk)]


def plan_ranges(size: int, chunk: int, schemes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """Ranges of about `chunk` bytes, cut along the segmentation when only one is
    candidate: big segments in equal pieces, small ones grouped whole."""
    if len(schemes) != 1 or len(schemes[0]) <= 1:
        return ranges(size, chunk)
    out: list[tuple[int, int]] = []
    group_start = pos = 0
    for length in schemes[0]:
        if length > chunk:
            if pos > group_start:
                out.append((group_start, pos))
            pieces = -(-length // chunk)
            cuts = [pos + length * i // pieces for i in range(pieces + 1)]
            out.extend(zip(cuts, cuts[1:], strict=False))
            group_start = pos + length
        elif pos + length - group_start > chunk:
            out.append((group_start, pos))
            group_start = pos
        pos += length
    if pos > group_start:
        out.append((group_start, pos))
    return [r for r in out if r[1] > r[0]]


def download(
    backend: Reader,
    info: ObjectInfo,
    dest: os.PathLike[str] | str,
    schemes: Sequence[Sequence[int]],
    *,
    settings: TransferSettings = TransferSettings(),
    progress: Progress | None = None,
    have: Iterable[tuple[int, int]] = (),
    on_range: Callable[[int, int], None] | None = None,
    algorithm: str = "md5",
) -> DigestResult:
    """Fetch the object into dest (preallocated): sha256 of it, md5 of every segment.

    `have` lists ranges dest already holds (a resumed download): they are not fetched
    again, only read back for hashing, so the whole file is still verified. `on_range` is
    told of each range once it is written (to persist resume state). `algorithm` is the
    segment hash of the schemes (the EtagPlan's).
    """
    have = [(int(a), int(b)) for a, b in have]
    fd = _open_dest(dest)
    try:
        _preallocate(fd, info.size)
        state = _State()
        digests = _Digests(fd, schemes, state, algorithm)
        return _run(backend, info, fd, digests, settings, progress, have, on_range)
    finally:
        os.close(fd)


def _run(
    backend: Reader,
    info: ObjectInfo,
    fd: int,
    digests: _Digests,
    settings: TransferSettings,
    progress: Progress | None,
    have: list[tuple[int, int]],
    on_range: Callable[[int, int], None] | None,
) -> DigestResult:
    state = digests.state
    with state.lock:
        for start, end in have:
            state.add(start, end)
    held = set(have)
    lengths = [[c.end - c.start for c in chains] for chains in digests.schemes]
    jobs = [r for r in plan_ranges(info.size, settings.chunk_size, lengths) if r not in held]
    workers = backend.limiter.width(settings.concurrency, len(jobs) + len(have))
    with ThreadPoolExecutor(
        workers + 1, thread_name_prefix="rc-get", initializer=os_thread_name, initargs=("rc-get",)
    ) as pool:
        sha = pool.submit(_named, "rc-sha256", _follow_sha256, fd, info.size, state)
        work = [pool.submit(_catch_up_all, digests, digests.overlapping(*r)) for r in have]
        watches = Watches(settings.stall_timeout, info.key)
        fetch = _Fetch(backend, info, fd, digests, progress, on_range, watches)
        work += [pool.submit(fetch.range, r) for r in jobs]
        try:
            _wait_all(work, watches)
            sha256 = sha.result()
        except BaseException:  # a failed range, or Ctrl-C in this thread
            state.fail()  # workers stop at their next chunk, the hasher at once
            watches.cancel()  # and reads blocked in a socket at once
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return DigestResult(info.size, sha256, digests.result())


class _Fetch:
    """One range: read it, write it at its offset, feed the chains it holds, record it."""

    def __init__(
        self,
        backend: Reader,
        info: ObjectInfo,
        fd: int,
        digests: _Digests,
        progress: Progress | None,
        on_range: Callable[[int, int], None] | None,
        watches: Watches,
    ) -> None:
        self.backend, self.info, self.fd, self.digests = backend, info, fd, digests
        self.progress, self.on_range, self.watches = progress, on_range, watches
        self._buffers = threading.local()

    def range(self, rng: tuple[int, int]) -> None:
        state = self.digests.state
        if state.failed:
            return
        start, end = rng
        chains = self.digests.overlapping(start, end)
        mine = self.digests.claim(chains, start)
        try:
            with self.backend.limiter:
                self._receive(start, end, mine)
        except (_Abandoned, ReadCancelled):
            return  # the failure that stopped us is reported by the range that had it
        except BaseException:
            state.fail()
            raise
        finally:
            self.digests.release(mine)
        with state.lock:
            state.add(start, end)
        if self.on_range:
            self.on_range(start, end)
        _catch_up_all(self.digests, chains)

    def _receive(self, start: int, end: int, mine: list[_Chain]) -> None:
        pos, key, state = start, self.info.key, self.digests.state
        buf = getattr(self._buffers, "buf", None)
        if buf is None:  # one per worker, reused: no allocation per block
            buf = self._buffers.buf = memoryview(bytearray(RECV_BLOCK))
        with self.watches.track() as watch:
            body = self.backend.open_range(key, start, end, self.info.etag, watch=watch)
            try:
                while pos < end:
                    if state.failed:
                        raise _Abandoned  # another range failed or the user interrupted
                    n = body.readinto(buf[: min(len(buf), end - pos)])
                    if n == 0:
                        raise IntegrityError(f"{key}: range {start}-{end} ended at {pos}")
                    watch.moved()
                    got = buf[:n]
                    _feed(mine, got, pos)
                    _write_all(self.fd, got, pos)
                    pos += n
                    if self.progress:
                        self.progress(n)
                if body.readinto(buf[:1]):
                    raise IntegrityError(f"{key}: server sent more bytes than asked for")
            finally:
                body.close()
        _write_behind(self.fd, start, end)


def _feed(chains: list[_Chain], view: memoryview, pos: int) -> None:
    """Give each chain the part of [pos, pos + len(view)) that continues it."""
    end = pos + len(view)
    for chain in chains:
        if chain.pos >= end or chain.done:
            continue
        if chain.pos < pos:
            raise IntegrityError("a segment hash lost its place")  # never: claimed at pos
        upto = min(end, chain.end)
        chain.hash.update(view[chain.pos - pos : upto - pos])
        chain.pos = upto


def _write_all(fd: int, view: memoryview, pos: int) -> None:
    while view:
        n = os.pwrite(fd, view, pos)
        pos += n
        view = view[n:]


def _write_behind(fd: int, start: int, end: int) -> None:
    """Start the disk writes of a finished range at once (sync_file_range), instead of
    leaving a whole image of dirty pages to the fsync before publishing: the disk works
    while the network does, and the final fsync waits for little. The pages stay in the
    page cache for the hashes, and for the job that runs the image next. Best effort."""
    call = _sync_file_range()
    if call is not None and end > start:
        call(fd, start, end - start, SYNC_FILE_RANGE_WRITE)


@functools.cache
def _sync_file_range() -> Any:
    """libc's sync_file_range through ctypes (the os module has none); None where libc
    lacks it (not Linux): the fsync then does it all."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return call


def _catch_up_all(digests: _Digests, chains: Iterable[_Chain]) -> None:
    for chain in chains:
        digests.catch_up(chain)


def os_thread_name(name: str) -> None:
    """Name the calling thread for the OS too (/proc/*/task/*/comm, top -H, py-spy), so
    CPU per thread can be told apart from outside the process."""
    path = f"/proc/self/task/{threading.get_native_id()}/comm"
    with contextlib.suppress(OSError), open(path, "w") as comm:
        comm.write(name[:15])


def _named(name: str, fn: Callable[..., str], *args: object) -> str:
    os_thread_name(name)  # kept afterwards: the thread's CPU is then mostly this job's
    return fn(*args)


def read_bytes(
    backend: Reader,
    info: ObjectInfo,
    start: int,
    end: int,
    *,
    settings: TransferSettings = TransferSettings(),
) -> bytes:
    """Bytes [start, end) in memory, for small reads (a header, a table) that get the
    watch a download's reads get: stopped and retried when silent, ended by Ctrl-C."""
    if not 0 <= start <= end <= start + MAX_IN_MEMORY:
        raise ValueError(f"a read of {end - start} bytes is not a small read")
    watches = Watches(settings.stall_timeout, info.key)

    def fetch() -> bytes:
        data = bytearray()
        with watches.track() as watch:
            for chunk in backend.read_range(info.key, start, end, info.etag, watch=watch):
                watch.moved()
                data += chunk
                if len(data) > end - start:
                    raise IntegrityError(f"{info.key}: server sent more bytes than asked for")
        return bytes(data)

    with ThreadPoolExecutor(1, thread_name_prefix="rc-get") as pool:
        future = pool.submit(fetch)
        try:
            _wait_all([future], watches)
        except BaseException:
            watches.cancel()
            raise
        return future.result()


def _wait_all(futures: Sequence[Future[Any]], watches: Watches | None = None) -> None:
    """Wait for every job, stopping stalled reads; raise the first failure at once."""
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=WATCH_EVERY, return_when=FIRST_EXCEPTION)
        for fut in done:
            if (error := fut.exception()) is not None:
                raise error
        if watches is not None:
            watches.stop_stalled()
        _check_scope()


def _open_dest(dest: os.PathLike[str] | str) -> int:
    """Open (or make) the file to download into: never through a symlink, and only a
    plain file of our own (the cache makes resumable ones before we get here)."""
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        os.close(fd)
        raise PermissionError(errno.EPERM, "not a plain file of yours", str(dest))
    return fd


def _preallocate(fd: int, size: int) -> None:
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        os.ftruncate(fd, size)  # filesystems without fallocate (some NFS): sparse is fine
