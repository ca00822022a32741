"""ETag arithmetic: single-part md5, multipart md5-of-md5s, candidate part sizes."""

from __future__ import annotations

import hashlib
import random

from registry_client.backends.base import ObjectInfo
from registry_client.digests import (
    Digester,
    candidate_part_sizes,
    s3_etag_plan,
    s3_multipart_etag,
    segments,
)

MiB = 1024 * 1024


def multipart_etag(data: bytes, part: int) -> str:
    md5s = [hashlib.md5(data[i : i + part]).digest() for i in range(0, len(data), part)]
    return s3_multipart_etag(md5s)


def run_plan(info: ObjectInfo, data: bytes, feed: int = 777_777) -> bool:
    plan = s3_etag_plan(info)
    digester = Digester(plan.schemes)
    for i in range(0, len(data), feed):
        digester.update(data[i : i + feed])
    result = digester.result()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    if plan.verifiable and plan.check(result.segment_md5s):
        return True
    second = Digester(plan.more_schemes)  # the fallback pass over the local copy
    second.update(data)
    return bool(plan.more_schemes) and plan.check(second.result().segment_md5s)


def test_segments() -> None:
    assert segments(10, 4) == [4, 4, 2]
    assert segments(8, 4) == [4, 4]
    assert segments(0, 4) == [0]


def test_single_part_etag() -> None:
    data = random.Random(1).randbytes(12345)
    info = ObjectInfo("k", len(data), hashlib.md5(data).hexdigest())
    assert run_plan(info, data)
    assert not run_plan(info, data[:-1] + b"x")


def test_multipart_with_unknown_part_size_is_found() -> None:
    data = random.Random(2).randbytes(23 * MiB + 5)
    for part in (5 * MiB, 6 * MiB, 8 * MiB, 7 * MiB):
        info = ObjectInfo("k", len(data), multipart_etag(data, part))
        assert run_plan(info, data), part


def test_multipart_known_part_size_from_metadata_not_aligned_to_mib() -> None:
    data = random.Random(3).randbytes(11 * MiB + 10)
    part = 5 * MiB + 12345
    info = ObjectInfo("k", len(data), multipart_etag(data, part), {"part-size": str(part)})
    assert run_plan(info, data)


def test_first_pass_is_short_and_known_size_is_used_alone() -> None:
    size = 512 * MiB
    info = ObjectInfo("k", size, "0" * 32 + "-8")
    plan = s3_etag_plan(info)
    assert len(plan.schemes) == 1 and plan.schemes[0][0] == 64 * MiB  # only 64 MiB is common
    assert len(plan.more_schemes) >= 5
    known = s3_etag_plan(ObjectInfo("k", size, "0" * 32 + "-8", {"part-size": str(70 * MiB)}))
    assert [s[0] for s in known.schemes] == [70 * MiB] and known.more_schemes == []


def test_candidates_cover_common_sizes_and_are_bounded() -> None:
    size = 10 * 1024 * MiB
    found = candidate_part_sizes(size, 1280)
    assert 8 * MiB in found and len(found) <= 24
    assert all(-(-size // p) == 1280 for p in found)


def test_unverifiable_etags_say_so() -> None:
    info = ObjectInfo("k", 10, "not-an-md5-etag")
    assert not s3_etag_plan(info).verifiable
    assert not s3_etag_plan(ObjectInfo("k", 10, None)).verifiable


def test_a_part_size_s3_cannot_have_is_not_used() -> None:
    """`part-size: 1` once made a pull hash every byte as its own part (~80 bytes of
    memory per image byte); below 5 MiB, or not cutting the object into the ETag's
    part count, the metadata is passed over for the sizes that do."""
    data = random.Random(4).randbytes(16 * MiB + 3)
    etag = multipart_etag(data, 8 * MiB)
    for bad in ("1", str(MiB), str(9 * MiB), str(6 * 1024**3)):
        info = ObjectInfo("k", len(data), etag, {"part-size": bad})
        plan = s3_etag_plan(info)
        assert all(len(s) <= 3 for s in plan.schemes + plan.more_schemes), bad
        assert run_plan(info, data), bad


def test_etags_s3_cannot_make_are_impossible() -> None:
    for etag in ("0" * 32 + "-10001", "0" * 32 + "-99999999999", "0" * 32 + "-3"):
        plan = s3_etag_plan(ObjectInfo("k", 10 * MiB - 1, etag))  # 3 parts: >= 10 MiB
        assert not plan.verifiable and plan.impossible and plan.schemes == [], etag
    assert not s3_etag_plan(ObjectInfo("k", 10, "not-an-md5-etag")).impossible
