"""Helpers the part-uploading cloud backends share (Azure blocks, GCS composite parts).

`fit_part_size` grows a part size until a store's part-count limit is met. `digests_of`
hashes a part's reader (and rewinds it for sending). `InOrder` hashes a whole object
from parts that arrive in any order, for the whole-object checksum some stores want at
commit (Azure's Content-MD5, a GCS composite's CRC32C): the frontier-following idea of
registry_client.transfer, applied to uploads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import BinaryIO

from registry_client.digests import new_hash, segments

READ_BLOCK = 1024 * 1024
MiB = 1024 * 1024


def fit_part_size(size: int, wanted: int, *, minimum: int, max_parts: int) -> int:
    """At least `minimum`, and few enough parts for `max_parts` (grown in whole MiB)."""
    part = max(wanted, minimum)
    if size > part * max_parts:
        part = -(-size // max_parts)
        part = -(-part // MiB) * MiB
    return part


def cut(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each part; an empty object has no parts."""
    if size == 0:
        return []
    lengths = segments(size, part_size)
    return [(i * part_size, n) for i, n in enumerate(lengths)]


def digests_of(body: BinaryIO, algorithms: Sequence[str]) -> list[bytes]:
    """The digests of a reader's bytes (read in blocks: flat memory), then rewind it."""
    hashers = [new_hash(a) for a in algorithms]
    while block := body.read(READ_BLOCK):
        for hasher in hashers:
            hasher.update(block)
    body.seek(0)
    return [bytes(h.digest()) for h in hashers]


class InOrder:
    """One hash of a whole object, fed from parts that finish in any order.

    `add(index, body)` after part `index` was sent: when it is the next part in order,
    it and any later parts already waiting are read again (rewound) into the hash, under
    a lock; otherwise the reader waits. At most the parts in flight wait (their readers
    only: a file's part reader holds no bytes). A part added twice (a retried step) is
    hashed once.
    """

    def __init__(self, count: int, algorithm: str) -> None:
        self.count = count
        self._hash = new_hash(algorithm)
        self._next = 0
        self._waiting: dict[int, BinaryIO] = {}
        self._lock = threading.Lock()

    def add(self, index: int, body: BinaryIO) -> None:
        with self._lock:
            if index < self._next or index in self._waiting:
                return
            self._waiting[index] = body
            while self._next in self._waiting:
                part = self._waiting.pop(self._next)
                part.seek(0)
                while block := part.read(READ_BLOCK):
                    self._hash.update(block)
                self._next += 1

    def digest(self) -> bytes:
        """The whole object's digest; only once every part was added."""
        with self._lock:
            if self._next != self.count:
                raise RuntimeError(f"{self.count - self._next} parts were never hashed")
            return bytes(self._hash.digest())


__all__ = ["InOrder", "cut", "digests_of", "fit_part_size"]
