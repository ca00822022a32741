"""flock-based locks for the cache. They save work; correctness never depends on them.

- An exclusive *work* lock per object version: one puller downloads, the others wait.
  The kernel drops a dead process's flock, so a waiter takes over from a holder that died.
- A shared *use* lock per published image, held by a pull from the moment it looks the
  image up until it returns its path; `cache prune` takes it exclusively (without waiting)
  before deleting, so it never removes an image a running pull is about to hand out. A use
  lock name that cannot hold a lock (something planted there) counts as held: the image
  is kept.

Lock files live in the cache's locks/ folder and are named relative to its descriptor,
never through a symlink. Where flock is unsupported (ENOLCK on some NFS mounts), or the
name holds something that cannot serve as our lock file (another user's unreadable file,
a symlink, a FIFO, a hard link), the code goes on unlocked and says so (`held` is False).

In a shared cache any member can open a lock file and hold it. A waiter therefore waits
without limit only while the holder runs as a trusted user; a holder of any other user
gets `untrusted_wait` seconds, after which the waiter goes on without the lock (content
addressing keeps two downloads correct). The holder's user comes from /proc/locks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Collection, Iterator

_BUSY = (errno.EAGAIN, errno.EACCES)
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
USE_WAIT = 2.0  # `cache prune` holds a use lock for a moment only


def _open(folder: int, name: str, mode: int) -> int | None:
    """The lock file, made if missing; None when it cannot be our lock file."""
    fd = None
    for _ in range(2):  # a file made by someone else between our two calls: open that one
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=folder)
            break
        except FileNotFoundError:
            try:
                fd = os.open(name, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, mode, dir_fd=folder)
                break
            except FileExistsError:
                continue
            except OSError:
                return None
        except OSError:  # a symlink (ELOOP), another user's unreadable file, a socket ...
            return None
    if fd is None:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        return None
    # The umask may have narrowed the mode; a shared cache needs its group bits.
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode:
        with contextlib.suppress(OSError):
            os.fchmod(fd, mode)
    return fd


@contextlib.contextmanager
def exclusive(
    folder: int,
    name: str,
    mode: int = 0o600,
    on_wait: Callable[[str], None] | None = None,
    *,
    trusted: Collection[int] | None = None,
    untrusted_wait: float = 60.0,
) -> Iterator[bool]:
    """Hold an exclusive lock; if busy, tell on_wait who holds it, then wait. Yields
    whether the lock is held. `trusted`: the users whose holds we wait out without limit
    (None: anyone's, for a private cache only its owner can open)."""
    fd = _open(folder, name, mode)
    if fd is None:
        yield False
        return
    try:
        held = _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if held is False:
            if on_wait:
                on_wait(holder(fd))
            held = _wait(fd, fcntl.LOCK_EX, trusted, untrusted_wait)
        if held and os.fstat(fd).st_uid == os.geteuid():
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {time.time():.0f}\n".encode(), 0)
        yield bool(held)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def shared(
    folder: int, name: str, mode: int = 0o600, *, max_wait: float | None = None
) -> Iterator[bool]:
    """Hold a shared lock (busy only while someone holds it exclusively); with max_wait,
    go on without it after that many seconds. Yields whether it is held."""
    fd = _open(folder, name, mode)
    try:
        held = False
        if fd is not None:
            if max_wait is None:
                held = bool(_flock(fd, fcntl.LOCK_SH))
            else:
                held = _wait(fd, fcntl.LOCK_SH, (), max_wait)
        yield held
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def try_exclusive(folder: int, name: str, mode: int = 0o600) -> Iterator[bool]:
    """Take an exclusive lock without waiting; yield whether we got it.

    False too when the name holds something that cannot be our lock file (a symlink,
    FIFO, hard link or unreadable file another member planted): a pull that met it went
    on without its shared lock and may be handing the file out right now, so whoever
    asks "may I remove it?" must hear no. (Where flock itself is unsupported nobody can
    hold a lock, and the answer stays yes.)"""
    fd = _open(folder, name, mode)
    if fd is None:
        yield False
        return
    try:
        yield _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is not False
    finally:
        os.close(fd)


def _wait(fd: int, op: int, trusted: Collection[int] | None, untrusted_wait: float) -> bool:
    """Wait for the lock: without limit for trusted holders, untrusted_wait seconds in all
    for others. Whether we got it."""
    if trusted is None:
        return bool(_flock(fd, op))
    patience = untrusted_wait
    delay = 0.02
    while True:
        got = _flock(fd, op | fcntl.LOCK_NB)
        if got is not False:
            return bool(got)
        if holder_uid(fd) not in trusted:
            if patience <= 0:
                return False
            patience -= delay
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


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
    """Who holds a lock: the pid its holder wrote into the file (digits only: the file may
    be another user's), else the pid the kernel lists."""
    try:
        words = os.pread(fd, 64, 0).decode(errors="replace").split()
    except OSError:
        words = []
    if words and words[0].isdigit() and len(words[0]) <= 10:
        return f"pid {words[0]}"
    pid = _holder_pid(fd)
    return f"pid {pid}" if pid else "another process"


def holder_uid(fd: int) -> int | None:
    """The user the process holding a flock on this file runs as; None when unknown."""
    pid = _holder_pid(fd)
    if not pid:
        return None
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _holder_pid(fd: int) -> int | None:
    """From /proc/locks: `N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END` (waiters'
    lines start with `->` and are skipped)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                words = line.split()
                if len(words) >= 6 and words[1] == "FLOCK" and words[5] == inode:
                    return int(words[4]) if words[4].isdigit() else None
    except OSError:
        pass
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
