"""The transfer engine: every segment md5 and the sha256 equal a sequential pass, however
the ranges arrive, whatever the segmentations, with or without a resumed part."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_client.backends.base import ChunkBody, Limiter, ObjectInfo, Reader
from registry_client.digests import hash_file, segments
from registry_client.errors import IntegrityError, RemoteUnavailable
from registry_client.retry import RetryingReader, RetryPolicy
from registry_client.settings import TransferSettings
from registry_client.transfer import download, plan_ranges


class Shuffled(Reader):
    """Bytes in memory served in small, unevenly delayed pieces: ranges finish in any order."""

    def __init__(
        self, data: bytes, seed: int, fail_at: int | None = None, breaks: bool = False
    ) -> None:
        self.data, self.fail_at, self.breaks = data, fail_at, breaks
        self.broken: set[int] = set()
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.limiter = Limiter(6)
        self.reads: list[tuple[int, int]] = []

    def stat(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.data), "e")

    def read_range(
        self, key: str, start: int, end: int, etag: str | None, *, watch: Any = None
    ) -> Iterator[bytes]:
        with self.lock:
            self.reads.append((start, end))
            delay = self.rng.random() / 200
        pos = start
        half = (start + end) // 2
        while pos < end:
            if self.fail_at is not None and pos <= self.fail_at < end:
                raise RemoteUnavailable("connection reset")
            if self.breaks and pos >= half and half not in self.broken and end - start > 1:
                self.broken.add(half)  # each range breaks once, half-way
                raise RemoteUnavailable("connection reset")
            with self.lock:
                step = self.rng.randint(1, 9000)
            time.sleep(delay)
            yield self.data[pos : min(end, pos + step)]
            pos = min(end, pos + step)


def cuts(draw: st.DrawFn, size: int) -> list[int]:
    """A random segmentation of `size` bytes."""
    points = sorted(set(draw(st.lists(st.integers(1, max(1, size - 1)), max_size=12))))
    points = [p for p in points if 0 < p < size]
    edges = [0, *points, size]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)] or [0]


@st.composite
def cases(draw: st.DrawFn) -> tuple[int, int, list[list[int]], int]:
    size = draw(st.integers(0, 200_000))
    chunk = draw(st.integers(1000, 70_000))
    schemes = [cuts(draw, size) for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()) and size:
        schemes.append(segments(size, draw(st.integers(1000, 50_000))))
    return size, chunk, schemes, draw(st.integers(0, 2**16))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=cases(), flaky=st.booleans())
def test_digests_equal_a_sequential_pass(tmp_path: Path, case: tuple, flaky: bool) -> None:
    """Read straight or through the retry wrapper with every range breaking once half-way."""
    size, chunk, schemes, seed = case
    data = random.Random(seed).randbytes(size)
    dest = tmp_path / f"out-{seed}-{size}-{chunk}"
    source: Reader = Shuffled(data, seed, breaks=flaky)
    if flaky:
        source = RetryingReader(source, RetryPolicy(base_delay=0), sleep=lambda _: None)
    got = download(
        source,
        source.stat("k"),
        dest,
        schemes,
        settings=TransferSettings(chunk_size=chunk, concurrency=5),
    )
    (tmp_path / "ref").write_bytes(data)
    expected = hash_file(str(tmp_path / "ref"), schemes)
    assert got == expected
    assert got.sha256 == hashlib.sha256(data).hexdigest() and dest.read_bytes() == data
    dest.unlink()


def test_resumed_ranges_are_read_back_not_fetched(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(300_000)
    schemes = [segments(len(data), 64_000), segments(len(data), 50_000)]
    rngs = plan_ranges(len(data), 40_000, [])
    have = rngs[1:4] + rngs[6:7]
    dest = tmp_path / "partial"
    with open(dest, "wb") as fh:  # what an interrupted download left
        fh.truncate(len(data))
        for start, end in have:
            fh.seek(start)
            fh.write(data[start:end])
    source = Shuffled(data, 1)
    got = download(
        source,
        source.stat("k"),
        dest,
        schemes,
        settings=TransferSettings(chunk_size=40_000, concurrency=4),
        have=have,
    )
    (tmp_path / "ref").write_bytes(data)
    assert got == hash_file(str(tmp_path / "ref"), schemes)
    assert not set(source.reads) & set(have)


def test_a_failed_range_stops_everything_and_is_raised(tmp_path: Path) -> None:
    data = bytes(500_000)
    source = Shuffled(data, 2, fail_at=333_333)
    with pytest.raises(RemoteUnavailable):
        download(
            source,
            source.stat("k"),
            tmp_path / "x",
            [segments(len(data), 64_000)],
            settings=TransferSettings(chunk_size=20_000, concurrency=4),
        )


def test_a_server_sending_too_much_is_refused(tmp_path: Path) -> None:
    class Generous(Shuffled):
        def read_range(
            self, key: str, start: int, end: int, etag: str | None, *, watch: Any = None
        ) -> Iterator[bytes]:
            yield self.data[start : end + 1]

    source = Generous(bytes(range(256)) * 10, 0)
    with pytest.raises(IntegrityError, match="more bytes"):
        download(source, ObjectInfo("k", 2000, "e"), tmp_path / "x", [[2000]])


def test_ranges_follow_a_known_segmentation() -> None:
    mib = 1024 * 1024
    assert plan_ranges(200 * mib, 16 * mib, [segments(200 * mib, 64 * mib)])[:5] == [
        (0, 16 * mib),
        (16 * mib, 32 * mib),
        (32 * mib, 48 * mib),
        (48 * mib, 64 * mib),
        (64 * mib, 80 * mib),
    ]
    five = plan_ranges(40 * mib, 16 * mib, [segments(40 * mib, 5 * mib)])
    assert five == [(0, 15 * mib), (15 * mib, 30 * mib), (30 * mib, 40 * mib)]
    odd = plan_ranges(100 * mib, 16 * mib, [segments(100 * mib, 100 * mib)])
    assert len(odd) == 7 and odd[-1][1] == 100 * mib
    assert all(b - a <= 16 * mib for a, b in odd)
    # several candidates or none: plain chunks
    assert plan_ranges(33, 10, []) == [(0, 10), (10, 20), (20, 30), (30, 33)]


def test_second_pass_over_a_local_file_hashes_segments_in_parallel(tmp_path: Path) -> None:
    from registry_client.transfer import hash_segments

    data = random.Random(9).randbytes(123_457)
    (tmp_path / "f").write_bytes(data)
    schemes = [segments(len(data), n) for n in (5000, 7777, 123_457, 200_000)]
    assert hash_segments(tmp_path / "f", schemes, workers=3) == [
        [hashlib.md5(data[i : i + n]).digest() for i in range(0, len(data), n)]
        for n in (5000, 7777, 123_457, 200_000)
    ]


def test_write_behind_starts_the_writes_of_a_range(tmp_path: Path) -> None:
    """The write-behind call is found and accepted by the kernel (Linux), never an error."""
    from registry_client import transfer

    path = tmp_path / "f"
    path.write_bytes(b"x" * 65536)
    call = transfer._sync_file_range()
    if not sys.platform.startswith("linux"):
        pytest.skip("sync_file_range is Linux only")
    fd = os.open(path, os.O_RDWR)
    try:
        assert call(fd, 0, 65536, transfer.SYNC_FILE_RANGE_WRITE) == 0
        transfer._write_behind(fd, 0, 65536)
    finally:
        os.close(fd)


def test_a_store_gone_mid_body_is_given_up_after_the_budget(tmp_path: Path) -> None:
    """A body that moved bytes, then a store that refuses every new connection (open_range
    fails, as a GET does): the bytes moved before the break renew the budget once, never
    again. It used to retry without end, holding the node's download lock."""

    class Gone(Shuffled):
        calls = 0

        def open_range(
            self, key: str, start: int, end: int, etag: str | None, *, watch: Any = None
        ) -> ChunkBody:
            with self.lock:
                Gone.calls += 1
                first, runaway = Gone.calls == 1, Gone.calls > 50
            if runaway:
                raise AssertionError("retried without end")
            if not first:
                raise RemoteUnavailable("connection refused")

            def some_then_broken() -> Iterator[bytes]:
                yield self.data[start : start + 1000]
                raise RemoteUnavailable("connection reset")

            return ChunkBody(some_then_broken())

    data = bytes(100_000)
    policy = RetryPolicy(attempts=3, base_delay=0)
    source = RetryingReader(Gone(data, 4), policy, sleep=lambda _: None)
    with pytest.raises(RemoteUnavailable, match="gave up after 3 attempts"):
        download(
            source,
            source.stat("k"),
            tmp_path / "x",
            [],
            settings=TransferSettings(chunk_size=100_000, concurrency=1),
        )
    assert Gone.calls == 3  # the body that broke (its bytes renewed the budget), two refusals
