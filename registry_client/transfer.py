"""Moving bytes: parallel ranged reads into a preallocated temp file, hashed in order.

Workers fetch ranges concurrently and write them with os.pwrite at their offsets; one
hashing thread follows the contiguous prefix that is already on disk (reading it back
from the page cache) and feeds a Digester, so hashing overlaps the download and memory
stays flat: at most `concurrency` network buffers plus one hashing block.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from registry_client.backends.base import ObjectInfo, Progress, Reader
from registry_client.digests import Digester, DigestResult
from registry_client.errors import IntegrityError
from registry_client.settings import TransferSettings

MiB = 1024 * 1024
HASH_BLOCK = 4 * MiB


class _Abandoned(Exception):
    """A range given up because the download as a whole failed."""


class _Frontier:
    """The length of the prefix [0, n) whose bytes are all written."""

    def __init__(self) -> None:
        self._done: dict[int, int] = {}  # start -> end of finished ranges
        self.end = 0
        self.failed = False
        self._cond = threading.Condition()

    def finish(self, start: int, end: int) -> None:
        with self._cond:
            self._done[start] = end
            while self.end in self._done:
                self.end = self._done.pop(self.end)
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self.failed = True
            self._cond.notify_all()

    def wait_beyond(self, pos: int) -> int:
        with self._cond:
            while self.end <= pos and not self.failed:
                self._cond.wait()
            return self.end


def _hash_follow(fd: int, size: int, frontier: _Frontier, digester: Digester) -> None:
    pos = 0
    while pos < size:
        end = frontier.wait_beyond(pos)
        if frontier.failed:
            return
        while pos < end:
            data = os.pread(fd, min(HASH_BLOCK, end - pos), pos)
            if not data:
                raise IntegrityError("temp file shorter than the bytes written to it")
            digester.update(data)
            pos += len(data)


def _fetch_range(
    backend: Reader,
    info: ObjectInfo,
    fd: int,
    start: int,
    end: int,
    progress: Progress | None,
    frontier: _Frontier,
) -> None:
    pos = start
    for chunk in backend.read_range(info.key, start, end, info.etag):
        if frontier.failed:
            raise _Abandoned  # another range failed or the user interrupted: stop reading
        if pos + len(chunk) > end:
            raise IntegrityError(f"{info.key}: server sent more bytes than asked for")
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, pos)
            pos += written
            view = view[written:]
        if progress:
            progress(len(chunk))
    if pos != end:
        raise IntegrityError(f"{info.key}: range {start}-{end} ended at {pos}")


def ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, size)) for s in range(0, size, chunk)]


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
    """Fetch the object into dest (preallocated) and hash it in order.

    `have` lists ranges dest already holds (a resumed download): they are not fetched
    again, only re-read for hashing, so the whole file is still verified. `on_range` is
    told of each range once it is written (to persist resume state). `algorithm` is the
    segment hash of the schemes (the EtagPlan's).
    """
    digester = Digester(schemes, algorithm)
    frontier = _Frontier()
    have = [(start, end) for start, end in have]
    flags = os.O_RDWR | os.O_CREAT | (0 if have else os.O_EXCL)
    fd = os.open(dest, flags, 0o600)
    try:
        _preallocate(fd, info.size)
        for start, end in have:
            frontier.finish(start, end)
        held = set(have)
        jobs = [r for r in ranges(info.size, settings.chunk_size) if r not in held]
        workers = backend.limiter.width(settings.concurrency, len(jobs))
        with ThreadPoolExecutor(workers + 1, thread_name_prefix="rc-get") as pool:
            hasher = pool.submit(_hash_follow, fd, info.size, frontier, digester)
            futures = [
                pool.submit(_run_range, backend, info, fd, r, frontier, progress, on_range)
                for r in jobs
            ]
            try:
                _wait_all(futures)
            except BaseException:  # a failed range, or Ctrl-C in this thread
                frontier.fail()  # workers stop at their next chunk, the hasher at once
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            hasher.result()
    finally:
        os.close(fd)
    return digester.result()


def _run_range(
    backend: Reader,
    info: ObjectInfo,
    fd: int,
    rng: tuple[int, int],
    frontier: _Frontier,
    progress: Progress | None,
    on_range: Callable[[int, int], None] | None,
) -> None:
    if frontier.failed:
        return
    try:
        with backend.limiter:
            _fetch_range(backend, info, fd, rng[0], rng[1], progress, frontier)
    except _Abandoned:
        return  # the failure that stopped us is reported by the range that had it
    except BaseException:
        frontier.fail()
        raise
    frontier.finish(*rng)
    if on_range:
        on_range(*rng)


def _wait_all(futures: list[Future[None]]) -> None:
    """Wait for every range; raise the first failure as soon as it happens."""
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    for fut in done:
        if (error := fut.exception()) is not None:
            raise error
    for fut in futures:
        fut.result()


def _preallocate(fd: int, size: int) -> None:
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        import errno

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        os.ftruncate(fd, size)  # filesystems without fallocate (some NFS): sparse is fine
