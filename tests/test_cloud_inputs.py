"""What Azure and GCS send back is untrusted: sizes, generations, checksums, metadata,
block lists and ranges are validated before use. The service's answers are faked here
(plain objects shaped like the SDKs'); tests/test_clouds.py runs the real emulators."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from registry_client.backends.azure import MAX_BLOCKS, AzureBackend
from registry_client.backends.base import ObjectInfo
from registry_client.backends.gcs import GcsBackend, _check_range
from registry_client.errors import IntegrityError

MD5 = hashlib.md5(b"x").digest()


def azure_props(**over: Any) -> Any:
    fields = {
        "size": 10,
        "etag": '"0x8D"',
        "metadata": {"sha256": "ab" * 32, "part_size": "1048576"},
        "last_modified": None,
        "content_settings": SimpleNamespace(content_md5=bytearray(MD5)),
    }
    return SimpleNamespace(**{**fields, **over})


def test_azure_properties_validated() -> None:
    info = AzureBackend._info("k", azure_props())
    assert info.etag == "0x8D" and info.checksums == {"md5": MD5.hex()}
    assert info.part_size == 1048576  # part_size (an Azure name) back as part-size
    for size in (-1, True, 2**60, "10", None):
        with pytest.raises(IntegrityError):
            AzureBackend._info("k", azure_props(size=size))
    odd = azure_props(content_settings=SimpleNamespace(content_md5=b"short"))
    assert AzureBackend._info("k", odd).checksums == {}  # then the block list decides
    junk = {"a": 1, "b": "x" * 9000, 3: "y", "ok": "v", **{f"m{i}": "v" for i in range(100)}}
    meta = AzureBackend._info("k", azure_props(metadata=junk)).metadata
    assert "a" not in meta and "b" not in meta and meta["ok"] == "v" and len(meta) <= 64


class _Blocks:
    """A blob client whose committed block list is given."""

    def __init__(self, blocks: list[tuple[str, Any]]) -> None:
        self.blocks = [SimpleNamespace(id=i, size=n) for i, n in blocks]

    def get_block_list(self, kind: str) -> tuple[list[Any], list[Any]]:
        return self.blocks, []


def block_plan(blocks: list[tuple[str, Any]], size: int) -> Any:
    backend = AzureBackend.__new__(AzureBackend)
    backend._blob = lambda key: _Blocks(blocks)  # type: ignore[method-assign]
    return backend.etag_plan(ObjectInfo("k", size, "e"))


def our_id(index: int, data: bytes) -> str:
    return f"rc1-0123abcd-{index:05d}-{hashlib.md5(data).hexdigest()}"


def test_azure_block_list_checked_before_use() -> None:
    good = block_plan([(our_id(0, b"ab"), 2), (our_id(1, b"c"), 1)], 3)
    assert good.verifiable and good.schemes == [[2, 1]]
    assert good.check([[hashlib.md5(b"ab").digest(), hashlib.md5(b"c").digest()]])
    assert not good.check([[hashlib.md5(b"ab").digest(), hashlib.md5(b"d").digest()]])
    unusable = [
        [("foreign-block-id", 3)],  # another uploader's ids record no md5
        [(our_id(0, b"abc"), 4)],  # sizes that do not add up to the blob
        [(our_id(0, b"abc"), 0), (our_id(1, b"abc"), 3)],  # an empty block
        [(our_id(0, b"abc"), "3")],  # a size that is not a number
        [(our_id(0, b"abc") + "/../x", 3)],
        [],
    ]
    for blocks in unusable:
        plan = block_plan(blocks, 3)
        assert not plan.verifiable and plan.schemes == [], blocks
    many = [(our_id(i, b"a"), 1) for i in range(MAX_BLOCKS + 1)]
    assert not block_plan(many, MAX_BLOCKS + 1).verifiable


def gcs_blob(**props: Any) -> Any:
    base = {"size": "5", "generation": "1700000000000001", "metadata": {"sha256": "cd" * 32}}
    return SimpleNamespace(_properties={**base, **props}, updated=None)


def test_gcs_resource_validated() -> None:
    b64 = base64.b64encode(MD5).decode()
    crc = base64.b64encode(b"\x01\x02\x03\x04").decode()
    info = GcsBackend._info("k", gcs_blob(md5Hash=b64, crc32c=crc))
    assert info.etag == "1700000000000001" and info.size == 5
    assert info.checksums == {"md5": MD5.hex(), "crc32c": "01020304"}
    for bad in ({"size": "-1"}, {"size": "1e9"}, {"size": "9" * 17}, {"generation": "1; x"}):
        with pytest.raises(IntegrityError):
            GcsBackend._info("k", gcs_blob(**bad))
    odd = GcsBackend._info(
        "k", gcs_blob(md5Hash="not base64!", crc32c=base64.b64encode(b"12345").decode())
    )
    assert odd.checksums == {}
    assert not GcsBackend.etag_plan(GcsBackend.__new__(GcsBackend), odd).verifiable
    crc_only = GcsBackend._info("k", gcs_blob(crc32c=crc))
    plan = GcsBackend.etag_plan(GcsBackend.__new__(GcsBackend), crc_only)
    assert plan.verifiable and plan.algorithm == "crc32c"


def response(status: int, **headers: str) -> Any:
    return SimpleNamespace(status_code=status, headers=headers)


def test_gcs_ranges_checked() -> None:
    _check_range(response(206, **{"Content-Range": "bytes 10-19/100"}), 10, 20, "r")
    _check_range(response(200, **{"Content-Length": "20"}), 0, 20, "r")
    bad = [
        response(206, **{"Content-Range": "bytes 0-19/100"}),  # another range
        response(206),  # no Content-Range at all
        response(200, **{"Content-Length": "100"}),  # the whole object, unasked
        response(206, **{"Content-Range": "bytes 10-19/100", "Content-Encoding": "gzip"}),
    ]
    for resp in bad:
        with pytest.raises(IntegrityError):
            _check_range(resp, 10, 20, "r")
