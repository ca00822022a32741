"""flock-based locks for the cache. They save work; correctness never depends on them.

- An exclusive *work* lock per object version: one puller downloads, the others wait.
  The kernel drops a dead process's flock, so a waiter takes over from a holder that died.
- A shared *use* lock per published image, held by a pull from the moment it looks the
  image up until it returns its path; `cache prune` takes it exclusively (without waiting)
  before deleting, so it never removes an image a running pull is about to hand out.

Where flock is unsupported (ENOLCK on some NFS mounts) or the lock file cannot be opened,
the code goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_BUSY = (errno.EAGAIN, errno.EACCES)


def _open(path: Path, mode: int) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    except OSError:
        return None
    # The umask may have narrowed the mode; a shared cache needs its group bits.
    st = os.fstat(fd)
    if st.st_uid == os.getuid() and st.st_mode & 0o777 != mode:
        with contextlib.suppress(OSError):
            os.fchmod(fd, mode)
    return fd


@contextlib.contextmanager
def exclusive(
    path: Path, mode: int = 0o600, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock; if busy, tell on_wait who holds it, then block."""
    fd = _open(path, mode)
    if fd is None:
        yield
        return
    try:
        if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is False:
            if on_wait:
                on_wait(holder(fd))
            _flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.time():.0f}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def shared(path: Path, mode: int = 0o600) -> Iterator[None]:
    """Hold a shared lock (blocks only while someone holds it exclusively)."""
    fd = _open(path, mode)
    try:
        if fd is not None:
            _flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def try_exclusive(path: Path) -> Iterator[bool]:
    """Take an exclusive lock without waiting; yield whether we got it."""
    fd = _open(path, 0o600)
    if fd is None:
        yield True  # no lock file possible: nobody else can hold one either
        return
    try:
        yield _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is not False
    finally:
        os.close(fd)


def _flock(fd: int, op: int) -> bool | None:
    """True when locked, False when busy (non-blocking), None when flock is unsupported."""
    try:
        fcntl.flock(fd, op)
    except OSError as exc:
        if exc.errno == errno.ENOLCK:
            return None
        if exc.errno in _BUSY and op & fcntl.LOCK_NB:
            return False
        raise
    return True


def holder(fd: int) -> str:
    """Who holds a lock, from the pid its holder wrote into the file."""
    try:
        words = os.pread(fd, 64, 0).decode(errors="replace").split()
    except OSError:
        words = []
    return f"pid {words[0]}" if words else "another process"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
