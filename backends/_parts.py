"""Uploading a file in parts, shared by the backends that upload parts in parallel.

Parts stream from disk through RangeFile (never whole in memory); threads share one file
descriptor through pread. The part-size rule grows the caller's size until a store's part
count limit is met.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from registry_client.digests import new_hash, segments

READ_BLOCK = 1024 * 1024
MiB = 1024 * 1024
T = TypeVar("T")


class RangeFile(io.RawIOBase):
    """A seekable, read-only view of [offset, offset+length) of a file descriptor.

    Uploads stream parts from disk through it instead of holding them in memory: an SDK
    may read it (to sign or checksum the payload), rewind it, then send it. pread keeps
    threads that share the descriptor independent.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
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
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return self.length

    def blocks(self, size: int = READ_BLOCK) -> Iterator[bytes]:
        self.seek(0)
        while block := self.read(size):
            yield block


def digest_of_range(fd: int, offset: int, length: int, algorithm: str = "md5") -> bytes:
    """md5 (or CRC32C) of a file range, read in blocks (flat memory)."""
    hasher = new_hash(algorithm)
    for block in RangeFile(fd, offset, length).blocks():
        hasher.update(block)
    return bytes(hasher.digest())


def md5_of_range(fd: int, offset: int, length: int) -> bytes:
    return digest_of_range(fd, offset, length, "md5")


def fit_part_size(size: int, wanted: int, *, minimum: int, max_parts: int) -> int:
    """At least `minimum`, and few enough parts for `max_parts` (grown in whole MiB)."""
    part = max(wanted, minimum)
    if size > part * max_parts:
        part = -(-size // max_parts)
        part = -(-part // MiB) * MiB
    return part


def upload_parts(
    path: str,
    size: int,
    part_size: int,
    concurrency: int,
    send: Callable[[int, int, int, int], T],
) -> list[T]:
    """Call send(fd, index, offset, length) for every part, `concurrency` at a time.

    The first failure is raised once the parts already in flight have ended; parts not
    yet started are dropped (also on Ctrl-C).
    """
    lengths = [n for n in segments(size, part_size) if n] if size else []
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="rc-put") as pool:
            futures = [pool.submit(send, fd, i, i * part_size, n) for i, n in enumerate(lengths)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        os.close(fd)


def whole_file_digest(path: str, algorithm: str) -> bytes:
    """One sequential pass, for a whole-object checksum some stores want at commit."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest_of_range(fd, 0, os.fstat(fd).st_size, algorithm)
    finally:
        os.close(fd)


__all__ = [
    "RangeFile",
    "digest_of_range",
    "fit_part_size",
    "md5_of_range",
    "upload_parts",
    "whole_file_digest",
]
