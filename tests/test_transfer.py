"""The transfer engine's range layouts: by chunk, or by the object's known segments."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_client.backends.file import FileBackend
from registry_client.digests import hash_file, segments
from registry_client.transfer import MAX_SEGMENT_RANGE, TransferSettings, download, segment_ranges
from tests.backend_contract import write_random

MiB = 1024 * 1024
SETTINGS = TransferSettings(chunk_size=MiB, concurrency=4)


class RecordingBackend(FileBackend):
    """The file backend, remembering which ranges were asked for (and corrupting one)."""

    def __init__(self, root: Path, corrupt_at: int | None = None) -> None:
        super().__init__(root)
        self.asked: list[tuple[int, int]] = []
        self.corrupt_at = corrupt_at

    def read_range(self, key: str, start: int, end: int, etag: str | None) -> Iterator[bytes]:
        self.asked.append((start, end))
        pos = start
        for chunk in super().read_range(key, start, end, etag):
            if self.corrupt_at is not None and pos <= self.corrupt_at < pos + len(chunk):
                flipped = bytearray(chunk)
                flipped[self.corrupt_at - pos] ^= 0xFF
                chunk = bytes(flipped)
            pos += len(chunk)
            yield chunk


def part_md5s(data: bytes, part: int) -> list[bytes]:
    return [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[RecordingBackend, bytes]:
    backend = RecordingBackend(tmp_path / "b")
    data = write_random(tmp_path / "f", 5 * MiB + 77, seed=9)
    backend.put("c/n:1.sif", str(tmp_path / "f"), {}, part_size=0, concurrency=1)
    return backend, data


def test_segment_layout_only_for_one_known_segmentation() -> None:
    size = 10 * MiB
    assert segment_ranges(size, [segments(size, 4 * MiB)]) == [
        (0, 4 * MiB), (4 * MiB, 8 * MiB), (8 * MiB, size)]
    assert segment_ranges(size, [segments(size, 4 * MiB), segments(size, 5 * MiB)]) is None
    assert segment_ranges(size, [[size]]) is None  # one md5 over everything: in order only
    assert segment_ranges(size, []) is None
    assert segment_ranges(size, [[5 * MiB, 0, 5 * MiB]]) is None  # empty segments
    assert segment_ranges(size, [[MiB] * 9]) is None  # does not add up to the size
    big = 3 * MAX_SEGMENT_RANGE
    assert segment_ranges(big, [segments(big, MAX_SEGMENT_RANGE + MiB)]) is None


def test_known_segments_are_the_ranges_and_hashed_by_the_workers(
        stored: tuple[RecordingBackend, bytes], tmp_path: Path) -> None:
    backend, data = stored
    info = backend.stat("c/n:1.sif")
    part = 2 * MiB
    result = download(backend, info, tmp_path / "out", [segments(info.size, part)],
                      settings=SETTINGS)
    assert sorted(backend.asked) == segment_ranges(info.size, [segments(info.size, part)])
    assert result.segment_md5s == [part_md5s(data, part)]
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert (tmp_path / "out").read_bytes() == data


def test_a_corrupted_segment_changes_only_its_md5(tmp_path: Path) -> None:
    backend = RecordingBackend(tmp_path / "b", corrupt_at=3 * MiB + 5)
    data = write_random(tmp_path / "f", 5 * MiB, seed=2)
    info = backend.put("c/n:1.sif", str(tmp_path / "f"), {}, part_size=0, concurrency=1)
    result = download(backend, info, tmp_path / "out", [segments(info.size, MiB)],
                      settings=SETTINGS)
    expected = part_md5s(data, MiB)
    got = result.segment_md5s[0]
    assert [i for i in range(5) if got[i] != expected[i]] == [3]
    assert result.sha256 != hashlib.sha256(data).hexdigest()


def test_resumed_segments_are_hashed_from_disk_not_fetched(
        stored: tuple[RecordingBackend, bytes], tmp_path: Path) -> None:
    backend, data = stored
    info = backend.stat("c/n:1.sif")
    scheme = [segments(info.size, MiB)]
    layout = segment_ranges(info.size, scheme)
    assert layout is not None
    held = layout[1:3]
    out = tmp_path / "out"
    with open(out, "wb") as fh:  # what an interrupted download left: some segments
        fh.truncate(info.size)
        for start, end in held:
            fh.seek(start)
            fh.write(data[start:end])
    result = download(backend, info, out, scheme, settings=SETTINGS, have=held)
    assert sorted(backend.asked) == [r for r in layout if r not in held]
    assert result.segment_md5s == [part_md5s(data, MiB)]
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_held_ranges_of_another_layout_are_fetched_again(
        stored: tuple[RecordingBackend, bytes], tmp_path: Path) -> None:
    backend, data = stored
    info = backend.stat("c/n:1.sif")
    out = tmp_path / "out"
    out.write_bytes(b"\0" * info.size)  # zeros: trusting them would fail the hashes
    odd = [(0, 3 * MiB)]  # a range of an older chunk size, not a segment now
    result = download(backend, info, out, [segments(info.size, MiB)], settings=SETTINGS,
                      have=odd)
    assert sum(end - start for start, end in backend.asked) == info.size
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert out.read_bytes() == data


def test_unknown_part_size_keeps_chunks_and_follower_md5s(
        stored: tuple[RecordingBackend, bytes], tmp_path: Path) -> None:
    backend, data = stored
    info = backend.stat("c/n:1.sif")
    schemes = [segments(info.size, 2 * MiB), segments(info.size, 3 * MiB)]
    result = download(backend, info, tmp_path / "out", schemes, settings=SETTINGS)
    assert all(end - start <= MiB for start, end in backend.asked)
    assert result.segment_md5s == hash_file(str(tmp_path / "f"), schemes).segment_md5s
    assert result.segment_md5s[1] == part_md5s(data, 3 * MiB)
