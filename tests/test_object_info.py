"""ObjectInfo checks what a store says where it enters: sizes, ETags, our metadata.

Property tests feed it anything a hostile store could send and check that whatever
comes out is safe to use as a file name, an allocation size or a loop bound.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_client.backends.base import (
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    ObjectInfo,
)
from registry_client.digests import s3_etag_plan
from registry_client.errors import IntegrityError

HEX = "0123456789abcdef"
SHA = "ab" * 32

texts = st.text(max_size=300) | st.sampled_from(
    ["../../../etc/passwd", "/abs", SHA.upper(), SHA + "\n", " " + SHA, "٣" * 64, SHA[:-1]]
)
decimals = st.integers(min_value=-(10**30), max_value=10**30).map(str) | texts
sizes = st.integers(min_value=0, max_value=MAX_OBJECT_SIZE)


@given(sizes, texts, decimals, decimals, st.dictionaries(texts, texts, max_size=5))
@settings(max_examples=400, deadline=None)
def test_whatever_the_store_sends_what_comes_out_is_safe(
    size: int, sha: str, part: str, stated: str, other: dict[str, str]
) -> None:
    meta = {**other, "Sha256": sha, "part-size": part, "size": stated}
    info = ObjectInfo("k", size, "0" * 32 + "-4", meta)
    assert info.sha256 is None or (len(info.sha256) == 64 and set(info.sha256) <= set(HEX))
    if info.part_size is not None:
        assert 0 < info.part_size <= MAX_PART_SIZE and -(-size // info.part_size) <= MAX_PARTS
    assert all(len(v) <= 4096 for v in info.metadata.values())
    plan = s3_etag_plan(info)
    assert len(plan.schemes) + len(plan.more_schemes) <= 24
    assert all(len(s) <= MAX_PARTS and sum(s) == size for s in plan.schemes + plan.more_schemes)


@given(st.text(max_size=600))
def test_an_etag_is_a_valid_entity_tag_or_none(etag: str) -> None:
    info = ObjectInfo("k", 1, etag)
    assert info.etag is None or (
        info.etag.isascii() and info.etag.isprintable() and " " not in info.etag
    )
    assert (info.etag is None) == bool(info.ignored) or info.etag == etag


def test_good_metadata_is_kept() -> None:
    info = ObjectInfo("k", 12, "e", {"SHA256": SHA, "Part-Size": "8", "size": "12", "arch": "x"})
    assert (info.sha256, info.part_size, info.ignored) == (SHA, 8, ())
    assert info.metadata["arch"] == "x"


@pytest.mark.parametrize(
    ("meta", "said"),
    [
        ({"sha256": "../../x"}, "sha256 '../../x' is not 64 lower-case hex digits"),
        ({"sha256": SHA.upper()}, "is not 64 lower-case hex digits"),
        ({"part-size": "1"}, "part-size '1' is outside"),
        ({"part-size": "-5"}, "part-size '-5' is outside"),
        ({"part-size": str(6 * 1024**3)}, "is outside"),
        ({"sha256": SHA, "size": "13"}, "metadata size '13' is not the object's 12"),
    ],
)
def test_bad_metadata_is_dropped_and_said(meta: dict[str, str], said: str) -> None:
    info = ObjectInfo("k", 12 * 1024**2 if "part-size" in meta else 12, "e", meta)
    assert info.sha256 is None and info.part_size is None
    assert any(said in note for note in info.ignored), info.ignored


@pytest.mark.parametrize("size", [-2, MAX_OBJECT_SIZE + 1, 10**30, True, 1.5])
def test_sizes_no_store_allows_are_refused(size: object) -> None:
    with pytest.raises(IntegrityError, match="beyond what any store holds"):
        ObjectInfo("k", size)  # type: ignore[arg-type]
