"""The store-to-store relay and the migration's pure parts, on local directory remotes.

The servers' side (S3, Swift, kill -9, resumes) is in test_migrate.py; here: the order of
hashing, verification and sending, the spool's bound, metadata kept and cleaned, shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from registry_client.backends.base import ObjectInfo
from registry_client.backends.file import FileBackend
from registry_client.copier import image_metadata
from registry_client.digests import DigestResult
from registry_client.errors import IntegrityError, RegistryClientError, UsageError
from registry_client.migrate import Summary, in_shard, parse_shard
from registry_client.names import ImageRef
from registry_client.relay import Lanes, Spool, StreamReader, relay

MiB = 1024 * 1024


def lanes(budget: int = 8 * MiB, chunk: int = MiB) -> Lanes:
    return Lanes.create(connections=4, budget=budget, chunk_size=chunk, window=4)


def source_with(tmp_path: Path, data: bytes) -> tuple[FileBackend, ObjectInfo]:
    src = FileBackend(tmp_path / "src")
    path = tmp_path / "payload"
    path.write_bytes(data)
    src.put(
        "lab/app:1.sif",
        str(path),
        {"sha256": hashlib.sha256(data).hexdigest()},
        part_size=0,
        concurrency=1,
    )
    return src, src.stat("lab/app:1.sif")


def test_relay_hashes_in_order_and_sends_each_part_with_its_md5(tmp_path: Path) -> None:
    data = bytes(range(256)) * (12 * 4096 + 7)  # about 12 MiB, not a multiple of a part
    src, info = source_with(tmp_path, data)
    sent: dict[int, bytes] = {}

    class Parts:
        key = "k"
        parts = [(o, min(4 * MiB, len(data) - o)) for o in range(0, len(data), 4 * MiB)]
        stored: dict[int, bytes] = {}

        def put_part(self, index: int, body: io.RawIOBase, *, md5: bytes | None = None) -> None:
            got = body.read()
            assert md5 == hashlib.md5(got).digest()  # the md5 sent is the bytes'
            sent[index] = got

    schemes = [[n for _, n in Parts.parts], [len(data)]]
    ln = lanes()
    try:
        done = relay(src, info, schemes, Parts(), ln)  # type: ignore[arg-type]
    finally:
        ln.close()
    assert b"".join(sent[i] for i in sorted(sent)) == data
    assert done.digest.sha256 == hashlib.sha256(data).hexdigest()
    assert done.digest.segment_md5s[1] == [hashlib.md5(data).digest()]
    assert done.digest.segment_md5s[0] == done.part_md5s  # one pass for the aligned scheme
    assert done.sent == len(data) and ln.spool.held == 0


def test_a_failed_check_stops_the_last_part(tmp_path: Path) -> None:
    """verify() runs after the last byte is hashed and before the last part goes: a source
    that does not match never becomes a complete (or a single-part) object."""
    data = b"x" * (3 * MiB + 5)
    src, info = source_with(tmp_path, data)
    sent: list[int] = []

    class Parts:
        key = "k"
        parts = [(0, 2 * MiB), (2 * MiB, MiB + 5)]
        stored: dict[int, bytes] = {}

        def put_part(self, index: int, body: Any, *, md5: bytes | None = None) -> None:
            sent.append(index)

    def refuse(result: DigestResult) -> None:
        raise IntegrityError("the source does not match its ETag")

    ln = lanes()
    try:
        with pytest.raises(IntegrityError):
            relay(src, info, [], Parts(), ln, verify=refuse)  # type: ignore[arg-type]
    finally:
        ln.close()
    assert 1 not in sent and ln.spool.held == 0


def test_parts_held_in_the_spool_stay_within_its_budget(tmp_path: Path) -> None:
    data = b"y" * (20 * MiB)
    src, info = source_with(tmp_path, data)
    ln = lanes(budget=3 * MiB, chunk=MiB)
    try:
        relay(src, info, [[len(data)]], None, ln)
    finally:
        ln.close()
    assert 0 < ln.spool.peak <= 3 * MiB


def test_a_part_larger_than_the_budget_goes_alone() -> None:
    spool = Spool(budget=10)
    assert spool.acquire(25)  # nothing else held: let in
    assert not spool.acquire(1, block=False)
    spool.release(25)
    assert spool.acquire(4, block=False) and spool.acquire(6, block=False)


def test_stream_reader_serves_ranges_in_order_to_concurrent_readers() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    reader = StreamReader(io.BytesIO(data), ObjectInfo("s", len(data)), "s")
    got: dict[int, bytes] = {}

    def read(start: int) -> None:
        got[start] = b"".join(reader.read_range("s", start, start + 256 * 1024, None))

    threads = [threading.Thread(target=read, args=(s,)) for s in (786432, 262144, 0, 524288)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert b"".join(got[s] for s in sorted(got)) == data


def test_a_short_stream_is_an_integrity_error() -> None:
    reader = StreamReader(io.BytesIO(b"abc"), ObjectInfo("s", 10), "s")
    with pytest.raises(IntegrityError, match="ended"):
        list(reader.read_range("s", 0, 10, None))
    with pytest.raises(RegistryClientError):  # spent: the next part fails, it does not wait
        list(reader.read_range("s", 10, 20, None))


# -- metadata --------------------------------------------------------------------------------


def test_metadata_keeps_the_sources_and_adds_migrated_from() -> None:
    src = ObjectInfo(
        "lab/app:1.sif",
        1234,
        "d41d8cd98f00b204e9800998ecf8427e",
        {
            "sha256": "0" * 64,
            "created": "2021-03-04T05:06:07Z",
            "labels": json.dumps({"team": "bio"}),
            "client": "sregistry",  # what sregistry-cli writes
            "sizemb": "1",
            "Bad Key": "x",
            "tool": "registry-client/0.0.1",
            "evil": "line\nbreak",
            "1starts-with-digit": "x",
        },
        datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
    )
    meta = image_metadata(src, "a" * 64, 8 * MiB, "onprem")
    assert (
        meta["sha256"] == "a" * 64 and meta["size"] == "1234" and meta["part-size"] == str(8 * MiB)
    )
    assert meta["created"] == "2021-03-04T05:06:07Z"  # the original push date
    assert json.loads(meta["labels"]) == {"team": "bio", "migrated-from": "onprem"}
    assert meta["client"] == "sregistry" and meta["sizemb"] == "1"
    assert meta["source-etag"] == src.etag and meta["tool"] == "registry-client/0.0.1"
    assert "Bad Key" not in meta and "evil" not in meta and "1starts-with-digit" not in meta


def test_metadata_of_a_foreign_object_dates_it_by_its_last_change() -> None:
    src = ObjectInfo("k", 5, None, {}, datetime(2019, 5, 6, 7, 8, 9, tzinfo=timezone.utc))
    meta = image_metadata(src, "b" * 64, MiB, "x" * 300)
    assert meta["created"] == "2019-05-06T07:08:09Z" and meta["layout"] == "1"
    assert json.loads(meta["labels"]) == {"migrated-from": "x" * 100}
    assert "source-etag" not in meta


def test_metadata_stays_within_the_stores_limits() -> None:
    big = {f"k{i}": "v" * 500 for i in range(10)}
    meta = image_metadata(ObjectInfo("k", 1, "e", big), "c" * 64, MiB, "o")
    assert sum(len(k) + len(v) for k, v in meta.items()) <= 2048
    assert meta["sha256"] == "c" * 64


# -- shards, summaries -------------------------------------------------------------------------


def test_shards_are_deterministic_disjoint_and_keep_tags_together() -> None:
    refs = [ImageRef(f"c{i % 5}", f"n{i}", tag) for i in range(200) for tag in ("1", "2")]
    owners = {ref: [k for k in range(7) if in_shard(ref, (k, 7))] for ref in refs}
    assert all(len(found) == 1 for found in owners.values())
    assert all(owners[ImageRef(r.collection, r.name, "1")] == owners[r] for r in refs)
    assert len({found[0] for found in owners.values()}) == 7  # every shard gets some
    assert parse_shard("3/8") == (3, 8)
    for bad in ("8/8", "-1/3", "1", "a/b", "1/0"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_the_exit_code_is_4_over_anything_else_then_the_most_severe() -> None:
    summary = Summary()
    for row in ({"status": "copied"}, {"status": "failed", "exit_code": 6}):
        summary.add(row)
    assert summary.exit_code == 6
    summary.add({"status": "failed", "exit_code": 4})
    summary.add({"status": "conflict", "exit_code": 1})
    summary.add({"status": "failed", "exit_code": 5})
    assert summary.exit_code == 4 and summary.counts == {"copied": 1, "failed": 3, "conflict": 1}
