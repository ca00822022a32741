"""Files in folders other users may write to: every step relative to a folder descriptor,
no symlink ever followed, type and owner checked with fstat.

The node cache (registry_client.cache) and its locks reach every file through these.
A path handed to the kernel is looked up afresh on each call, and any symlink on the way
is followed: in a folder another user can write to, that lets them point our next write
at a file of their choosing. Opening each folder once, without following symlinks, and
then naming files relative to that descriptor (`dir_fd=`, `O_NOFOLLOW`, `O_EXCL`) leaves
them nothing to swap.

Written by hand: the standard library's path functions follow symlinks, and no well-kept
library walks folders by descriptor with owner checks (shutil.rmtree is descriptor-safe,
but only removes, and takes `dir_fd` only from Python 3.11).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Collection
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a name we open must not block us.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
FICLONE = 0x40049409  # linux/fs.h: share the source's blocks (btrfs, XFS, bcachefs)
COPY_BLOCK = 8 * 1024 * 1024


class UnsafePath(Exception):
    """A folder that must not be used: someone untrusted owns it or may change it."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path} is {reason}")
        self.path = Path(path)
        self.reason = reason


class NameTaken(Exception):
    """Another user's file holds the name, in a folder where we may not replace it."""


def owner_name(uid: int) -> str:
    """`alice (uid 1001)` for messages; just the uid when it has no name."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_folder(st: os.stat_result, path: Path | str, owners: Collection[int]) -> None:
    """UnsafePath unless a folder, owned by one of `owners`, that nobody else may change
    (writable by group or others only with the sticky bit, which keeps each user's
    entries their own)."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(path, "not a folder")
    if st.st_uid not in owners:
        raise UnsafePath(path, f"owned by {owner_name(st.st_uid)}")
    if st.st_mode & OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(path, "writable by other users and lacks the sticky bit")


def open_dir(dir_fd: int, name: str, label: Path, create_mode: int | None = None) -> int:
    """The folder `name` inside dir_fd, never through a symlink; made with exactly
    create_mode (umask aside) when missing and create_mode is given."""
    try:
        return _open_dir(dir_fd, name, label)
    except FileNotFoundError:
        if create_mode is None:
            raise
    try:
        os.mkdir(name, create_mode, dir_fd=dir_fd)
    except FileExistsError:  # another process made it first: use it (the caller checks it)
        return _open_dir(dir_fd, name, label)
    fd = _open_dir(dir_fd, name, label)
    # mkdir drops setgid/sticky on some systems and the umask narrows the rest.
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, create_mode)
    return fd


def _open_dir(dir_fd: int, name: str, label: Path) -> int:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(label, "a symlink") from None
        if exc.errno == errno.ENOTDIR:
            raise UnsafePath(label, "not a folder") from None
        raise


def open_path(path: Path, owners: Collection[int], create_mode: int | None = None) -> int:
    """The folder at an absolute, symlink-free `path`, opened one name at a time from `/`.

    Every folder on the way must belong to one of `owners`: anyone else could rename what
    lies below it. Missing folders are made with create_mode (when given).
    """
    fd = os.open("/", DIR_FLAGS)
    try:
        where = Path("/")
        _check_owner(fd, where, owners)
        for name in path.parts[1:]:
            where = where / name
            nxt = open_dir(fd, name, where, create_mode)
            os.close(fd)
            fd = nxt
            _check_owner(fd, where, owners)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _check_owner(fd: int, where: Path, owners: Collection[int]) -> None:
    uid = os.fstat(fd).st_uid
    if uid not in owners:
        raise UnsafePath(where, f"owned by {owner_name(uid)}")


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """What `name` is (a symlink stays a symlink); None when there is nothing."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def trusted_file(
    st: os.stat_result, owners: Collection[int], *, size: int | None = None, one_link: bool
) -> bool:
    """A regular file (not a symlink), owned by one of `owners`, that nobody else may write,
    of the expected size; with one_link, not also linked from elsewhere (a hard link planted
    into a shared folder can name a file its planter does not own)."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_uid in owners
        and not st.st_mode & OTHERS_WRITE
        and (st.st_nlink == 1 or not one_link)
        and (size is None or st.st_size == size)
    )


def read_small(dir_fd: int, name: str, owner: int, limit: int) -> bytes | None:
    """The bytes of a small record file owned by `owner` that nobody else may write; None
    when it is missing, of another owner or type, or larger than `limit`."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not trusted_file(st, (owner,), one_link=False) or st.st_size > limit:
            return None
        return os.pread(fd, st.st_size, 0)
    finally:
        os.close(fd)


def replace_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Write `name` atomically (a new file, then a rename over the old one).

    NameTaken when `name` is another user's in a sticky folder (or a folder): we may not
    replace it, and never write through it.
    """
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, NEW_FLAGS, mode, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb", closefd=False) as fh:
            fh.write(data)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        unlink_at(dir_fd, tmp)
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise NameTaken(name) from None
        raise


def create_new(dir_fd: int, name: str, data: bytes = b"", mode: int = 0o600) -> bool:
    """Make `name` with this content unless something is there already; whether we made it."""
    try:
        fd = os.open(name, NEW_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        return False
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)
    return True


def unlink_at(dir_fd: int, name: str) -> bool:
    """Remove a file (a symlink itself, never its target); whether it was there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def remove_tree_at(dir_fd: int, name: str, *, ignore_errors: bool = False) -> None:
    """Remove a file or a whole folder tree below dir_fd without following any symlink.

    Folders we own are made writable first: docker layers unpack read-only folders.
    """
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, 0o700)
            for child in os.listdir(fd):
                remove_tree_at(fd, child, ignore_errors=ignore_errors)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def clone_or_copy(src: int, dst: int) -> str:
    """Copy all of src into dst (both open files): a reflink where the filesystem shares
    blocks, else an in-kernel copy, else read/write. Says which it did."""
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.ioctl(dst, FICLONE, src)
        return "reflink"
    size = os.fstat(src).st_size
    pos = 0
    try:
        while pos < size:
            n = os.copy_file_range(src, dst, min(size - pos, 1 << 30), pos, pos)
            if n == 0:
                break
            pos += n
        return "copy"
    except OSError:
        pass  # not between these filesystems (older kernels): copy through user space
    while pos < size:
        data = os.pread(src, min(COPY_BLOCK, size - pos), pos)
        if not data:
            break
        view = memoryview(data)
        while view:
            written = os.pwrite(dst, view, pos)
            pos += written
            view = view[written:]
    return "copy"


def fsync_dir(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
