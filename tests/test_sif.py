"""Tests of registry_client.sif: layout, round trips, malformed input, test images.

The expected hashes and field values below come from the SIF images that sylabs/sif (the Go
library used by SingularityCE and Apptainer) keeps in test/images/ and generates with
test/images/gen_sifs.go. Our writer rebuilds those images from the same inputs; where an
input is not ours to ship (a squashfs, an ext3 image, a signature) a same-sized stand-in is
used and only the header + descriptor table (bytes 0..32176) is compared, since no field there
depends on object content for those types.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_client import sif
from registry_client.sif import DataType, FsType, PartType, SifError, SifObject

UTC = dt.timezone.utc
TABLE_END = 4096 + 48 * 585  # == 32176, where the data section starts by default
GO_DETERMINISTIC = {"created": sif.GO_ZERO_TIME, "uuid": uuid.UUID(int=0), "launch_script": ""}
FINGERPRINT = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"  # the upstream test PGP key


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def part_system() -> SifObject:
    """gen_sifs.go partSystem: 4 bytes, raw, system, 386."""
    return SifObject(
        DataType.PARTITION, b"\xfa\xce\xfe\xed", partition=(FsType.RAW, "system", "386")
    )


def part_primary() -> SifObject:
    """gen_sifs.go partPrimSys (root.squashfs is 4096 bytes; stand-in content)."""
    return SifObject(
        DataType.PARTITION, bytes(4096), partition=("squashfs", "primary_system", "386")
    )


def part_group2() -> SifObject:
    """gen_sifs.go partSystemGroup2 (root.ext3 is 262144 bytes; stand-in content)."""
    return SifObject(
        DataType.PARTITION,
        bytes(262144),
        partition=(FsType.EXT3, PartType.SYSTEM, "amd64"),
        group_id=2,
    )


def signature(size: int, group: int, *, entity: str = "") -> SifObject:
    return SifObject(
        DataType.SIGNATURE,
        bytes(size),
        group_id=0,
        link=group,
        link_is_group=True,
        extra=sif.signature_extra("sha256", entity),
    )


# --- layout constants -----------------------------------------------------------------------


def test_record_sizes_match_the_go_structs() -> None:
    assert sif.HEADER_STRUCT.size == 128
    assert sif.DESCRIPTOR_STRUCT.size == 585
    assert sif.DEFAULT_DESCRIPTORS_OFFSET + 48 * 585 == TABLE_END == 32176


# --- byte-for-byte agreement with upstream images -------------------------------------------

WHOLE_FILE = {
    "empty.sif": (
        [],
        {},
        "1987d6041b278a3a87810475ce3bbe5416bc0301471c29c1e2f020579a61f815",
    ),
    "empty-id.sif": (
        [],
        {"uuid": "3fa802cc-358b-45e3-bcc0-69dc7a45f9f8"},
        "e69ae87e8234646a5cea26af912dbdf40e28b8ac4917f591eb66f94af3073b6e",
    ),
    "empty-launch-script.sif": (
        [],
        {"launch_script": "#!/usr/bin/env run-script\n"},
        "c403ae5756610316b5a138386ae6fbbf052e5c3d21579c1f0c77066ec84fc2a1",
    ),
    "one-object-time.sif": (
        [SifObject(DataType.GENERIC_JSON, b"{}", name="data.json")],
        {"created": dt.datetime(2020, 6, 30, 0, 1, 56, tzinfo=UTC)},
        "848041a0fab06236b18b55b4bf1f9df4763033b0494f80bcb566e1ba03476140",
    ),
    "one-object-generic-json.sif": (
        [SifObject(DataType.GENERIC_JSON, b"{}", name="data.json")],
        {},
        "710a9262f63f5fbde75973110767922d42fdf26673ed19c6093b44da0fcbbef9",
    ),
    "one-object-crypt-message.sif": (
        [
            SifObject(
                DataType.CRYPTO_MESSAGE,
                b"\xfe\xfe\xf0\xf0",
                extra=sif.crypto_message_extra("openpgp", "clear_signature"),
            )
        ],
        {},
        "da3d848c3b6fe26ee6340cdc731865c9d273a233cddb62794aecd132bfea71a4",
    ),
}


@pytest.mark.parametrize("name", sorted(WHOLE_FILE))
def test_writer_reproduces_upstream_image_exactly(tmp_path: Path, name: str) -> None:
    objects, options, expected = WHOLE_FILE[name]
    dest = tmp_path / name
    sif.write_sif(dest, objects, **{**GO_DETERMINISTIC, **options})
    assert sha256(dest.read_bytes()) == expected


HEADER_REGION = {
    "one-group.sif": (
        lambda: [part_system(), part_primary()],
        40960,
        "7018cc4b1fe57613364dd66d3714ebffda466c6bfe7b77333c501ea3262e4bf5",
    ),
    "two-groups.sif": (
        lambda: [part_system(), part_primary(), part_group2()],
        303104,
        "5a87f8beca8941949e08dd8fc23d655100895f06b0df17e8f6defcafa054c1c3",
    ),
    "one-group-signed-dsse.sif": (
        lambda: [part_system(), part_primary(), signature(1694, 1)],
        42654,
        "83f7115ab26a8d2dec4d2df1600e5bca4028c7bff78c8096189b9246a8b249b0",
    ),
    "two-groups-signed-pgp.sif": (
        lambda: [
            part_system(),
            part_primary(),
            part_group2(),
            signature(1048, 1, entity=FINGERPRINT),
            signature(849, 2, entity=FINGERPRINT),
        ],
        305001,
        "9e4684a38c19ed39eb25b739a62c10c773f2b8016d8a35ba2db7565dbf7052c6",
    ),
    "one-object-sbom.sif": (
        lambda: [SifObject(DataType.SBOM, bytes(454), extra=sif.sbom_extra("cyclonedx_json"))],
        32630,
        "adcfb888497d5c24aa393f7539970ae465dd415b4a177dcd5f606dc8fc93d7fb",
    ),
}


@pytest.mark.parametrize("name", sorted(HEADER_REGION))
def test_writer_reproduces_upstream_header_and_descriptors(tmp_path: Path, name: str) -> None:
    make_objects, file_size, expected = HEADER_REGION[name]
    dest = tmp_path / name
    sif.write_sif(dest, make_objects(), **GO_DETERMINISTIC)
    data = dest.read_bytes()
    assert len(data) == file_size
    assert sha256(data[:TABLE_END]) == expected


def test_reader_on_upstream_two_groups_signed_layout(tmp_path: Path) -> None:
    """Field values as `siftool header` / `siftool list` print them for the upstream image."""
    dest = tmp_path / "two-groups-signed-pgp.sif"
    sif.write_sif(dest, HEADER_REGION["two-groups-signed-pgp.sif"][0](), **GO_DETERMINISTIC)
    img = sif.read_sif(dest)
    h = img.header
    assert (h.version, h.arch_code, h.arch, img.primary_arch()) == ("01", "01", "386", "386")
    assert (h.descriptors_free, h.descriptors_total) == (43, 48)
    assert (h.descriptors_offset, h.descriptors_size) == (4096, 28080)
    assert (h.data_offset, h.data_size) == (32176, 272825)
    assert h.created_unix == h.modified_unix == sif.GO_ZERO_TIME
    assert h.created == dt.datetime(1, 1, 1, tzinfo=UTC)
    assert h.uuid == "00000000-0000-0000-0000-000000000000"
    rows = [
        (d.id, d.group_id, d.linked_id, d.link_is_group, d.offset, d.offset + d.size)
        for d in img.descriptors
    ]
    assert rows == [
        (1, 1, 0, False, 32768, 32772),
        (2, 1, 0, False, 36864, 40960),
        (3, 2, 0, False, 40960, 303104),
        (4, 0, 1, True, 303104, 304152),
        (5, 0, 2, True, 304152, 305001),
    ]
    assert [d.size_with_padding for d in img.descriptors] == [596, 8188, 262144, 1048, 849]
    parts = [
        (d.extra["fstype_name"], d.extra["parttype_name"], d.extra["arch"])
        for d in img.descriptors[:3]
    ]
    assert parts == [
        ("raw", "system", "386"),
        ("squashfs", "primary_system", "386"),
        ("ext3", "system", "amd64"),
    ]
    sig = img.descriptors[3]
    assert sig.datatype_name == "signature"
    assert sig.extra == {"hashtype": 1, "hash": "sha256", "entity": FINGERPRINT}
    assert img.primary_partition() is img.descriptors[1]


def test_oci_objects_get_their_sha256_digest(tmp_path: Path) -> None:
    blob, index = b'{"architecture":"amd64"}', b'{"schemaVersion":2}'
    objects = [SifObject(DataType.OCI_BLOB, blob), SifObject(DataType.OCI_ROOT_INDEX, index)]
    img = sif.write_sif(tmp_path / "oci.sif", objects)
    assert [d.extra["digest"] for d in img.descriptors] == [
        f"sha256:{sha256(blob)}",
        f"sha256:{sha256(index)}",
    ]


# --- architecture table ---------------------------------------------------------------------

ARCH_TABLE = [
    ("01", "386"),
    ("02", "amd64"),
    ("03", "arm"),
    ("04", "arm64"),
    ("05", "ppc64"),
    ("06", "ppc64le"),
    ("07", "mips"),
    ("08", "mipsle"),
    ("09", "mips64"),
    ("10", "mips64le"),
    ("11", "s390x"),
    ("12", "riscv64"),
    ("13", "loong64"),
]


@pytest.mark.parametrize(("code", "name"), ARCH_TABLE)
def test_arch_table(code: str, name: str) -> None:
    assert sif.arch_code(name) == code
    assert sif.arch_name(code) == name
    assert sif.arch_name(code.encode() + b"\x00") == name


def test_arch_table_is_complete_and_aliases() -> None:
    assert dict(ARCH_TABLE) | {"00": "unknown"} == sif.ARCHES
    assert sif.arch_code("x86_64") == "02"
    assert sif.arch_code("aarch64") == "04"
    assert sif.arch_name("00") == sif.arch_name("99") == sif.arch_name(b"020") == "unknown"
    with pytest.raises(ValueError, match="unknown SIF architecture"):
        sif.arch_code("sparc64")


@pytest.mark.parametrize(("code", "name"), ARCH_TABLE)
def test_header_arch_follows_primary_partition(tmp_path: Path, code: str, name: str) -> None:
    obj = SifObject(DataType.PARTITION, b"x", partition=("squashfs", "primary_system"))
    img = sif.write_sif(tmp_path / "a.sif", [obj], arch=name)
    assert (img.header.arch_code, img.header.arch, img.primary_arch()) == (code, name, name)
    assert img.descriptors[0].extra["arch_code"] == code


def test_header_arch_unknown_without_primary_partition(tmp_path: Path) -> None:
    obj = SifObject(DataType.PARTITION, b"x", partition=("squashfs", "data"))
    img = sif.write_sif(tmp_path / "a.sif", [obj], arch="arm64")
    assert img.header.arch_code == "00"
    assert img.primary_arch() == "unknown"
    assert img.descriptors[0].extra["arch"] == "arm64"


# --- round trip -----------------------------------------------------------------------------


def test_round_trip_every_field(tmp_path: Path) -> None:
    payload = tmp_path / "rootfs.squashfs"
    payload.write_bytes(os.urandom(10_000))
    when = dt.datetime(2023, 5, 17, 12, 30, 5, tzinfo=UTC)
    objects = [
        SifObject(DataType.DEFFILE, b"Bootstrap: docker\nFrom: alpine\n"),
        SifObject(DataType.GENERIC_JSON, io.BytesIO(b'{"a": 1}'), name="oci-config.json"),
        SifObject(DataType.LABELS, iter([b'{"l":', b' "v"}']), name="labels.json"),
        SifObject(
            DataType.PARTITION, payload, partition=(FsType.SQUASHFS, PartType.PRIMARY_SYSTEM)
        ),
        SifObject(
            DataType.PARTITION,
            b"overlay",
            partition=("ext3", "overlay", "riscv64"),
            group_id=3,
            created=1_000_000,
        ),
        SifObject(
            DataType.SIGNATURE, b"sig", group_id=0, link=4, extra=sif.signature_extra(3, "ab" * 20)
        ),
        SifObject(DataType.SBOM, b"sbom", link=1, link_is_group=True, extra=sif.sbom_extra(8)),
        SifObject(DataType.GENERIC, b"", name="n" * 128),
    ]
    dest = tmp_path / "image.sif"
    ident = uuid.uuid4()
    img = sif.write_sif(
        dest, objects, arch="ppc64le", created=when, uuid=ident, launch_script="#!/bin/x\n",
        descriptor_capacity=10,
    )  # fmt: skip
    assert img == sif.read_sif(dest)
    from_buffer = sif.read_sif(io.BytesIO(dest.read_bytes()))
    assert (from_buffer.header, from_buffer.descriptors) == (img.header, img.descriptors)
    h = img.header
    assert h == sif.read_header(dest)
    assert (h.launch_script, h.version, h.uuid) == ("#!/bin/x\n", "01", str(ident))
    assert (h.arch_code, h.arch) == ("06", "ppc64le")
    assert h.created == h.modified == when
    assert (h.descriptors_free, h.descriptors_total) == (2, 10)
    assert (h.descriptors_offset, h.descriptors_size, h.data_offset) == (4096, 5850, 9946)
    assert h.data_offset + h.data_size == img.file_size == dest.stat().st_size

    d = img.descriptors
    assert [x.id for x in d] == list(range(1, 9))
    assert [x.index for x in d] == list(range(8))
    assert [x.datatype for x in d] == [o.datatype for o in objects]
    assert [x.datatype_name for x in d] == [
        "deffile", "generic_json", "labels", "partition", "partition", "signature", "sbom",
        "generic",
    ]  # fmt: skip
    assert [x.group_id for x in d] == [1, 1, 1, 1, 3, 0, 1, 1]
    assert [(x.linked_id, x.link_is_group) for x in d][5:7] == [(4, False), (1, True)]
    assert [x.name for x in d] == ["", "oci-config.json", "labels.json", "", "", "", "", "n" * 128]
    million = dt.datetime.fromtimestamp(10**6, UTC)
    assert [x.created for x in d] == [when] * 4 + [million] + [when] * 3
    assert all(x.modified_unix == x.created_unix and (x.uid, x.gid) == (0, 0) for x in d)
    assert d[3].offset % 4096 == 0 and d[4].offset % 4096 == 0
    assert d[1].offset == d[0].offset + d[0].size  # non-partitions are packed
    for x in d:
        prev_end = max((y.offset + y.size for y in d if y.id < x.id), default=h.data_offset)
        assert x.size_with_padding == x.offset - prev_end + x.size
    assert d[3].extra == {
        "fstype": 1, "fstype_name": "squashfs", "parttype": 2, "parttype_name": "primary_system",
        "arch_code": "06", "arch": "ppc64le",
    }  # fmt: skip
    assert d[4].extra["parttype_name"] == "overlay" and d[4].extra["arch"] == "riscv64"
    assert d[5].extra == {"hashtype": 3, "hash": "sha512", "entity": "AB" * 20}
    assert d[6].extra == {"format": 8, "format_name": "syft-json"}
    assert d[0].extra == {}

    assert sif.read_object(dest, d[0]) == b"Bootstrap: docker\nFrom: alpine\n"
    assert sif.read_object(dest, d[2]) == b'{"l": "v"}'
    assert sif.read_object(dest, d[3]) == payload.read_bytes()
    assert b"".join(sif.iter_object(dest, d[3], chunk_size=999)) == payload.read_bytes()
    assert sif.read_object(dest, d[7]) == b""
    assert img.find(DataType.PARTITION) == [d[3], d[4]]
    assert img.find(name="labels.json") == [d[2]]

    as_json = json.loads(json.dumps(img.to_dict()))
    assert as_json["primary_arch"] == "ppc64le"
    assert as_json["header"]["created"] == "2023-05-17T12:30:05+00:00"
    assert as_json["descriptors"][3]["extra"]["fstype_name"] == "squashfs"
    assert "raw_extra" not in as_json["descriptors"][0]


def test_written_file_is_executable_and_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "x.sif"
    dest.write_bytes(b"old")
    sif.write_sif(dest, [SifObject(DataType.DEFFILE, b"x")])
    assert dest.stat().st_mode & 0o100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.sif"]
    with pytest.raises(FileNotFoundError):
        sif.write_sif(dest, [SifObject(DataType.DEFFILE, tmp_path / "missing")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.sif"]
    assert sif.is_sif(dest)


def test_trailing_empty_partition_like_the_go_writer(tmp_path: Path) -> None:
    """Go seeks to the aligned offset but writes nothing: data_size reaches past EOF."""
    objects = [
        SifObject(DataType.DEFFILE, b"abc"),
        SifObject(DataType.PARTITION, b"", partition=("squashfs", "primary_system")),
    ]
    img = sif.write_sif(tmp_path / "e.sif", objects)
    assert img.file_size == TABLE_END + 3
    assert img.header.data_offset + img.header.data_size == 32768
    assert img.descriptors[1].offset == 32768 and img.descriptors[1].size == 0


object_strategy = st.builds(
    SifObject,
    datatype=st.sampled_from([t for t in DataType if t != DataType.PARTITION]) | st.integers(0, 9),
    data=st.binary(max_size=300),
    name=st.text(
        st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=32
    ),
    group_id=st.integers(0, 0x0FFFFFFF),
    link=st.integers(0, 50),
    alignment=st.none() | st.integers(0, 5000),
    created=st.none() | st.integers(-(2**63), 2**63 - 1),
)
partition_strategy = st.builds(
    SifObject,
    datatype=st.just(DataType.PARTITION),
    data=st.binary(max_size=5000),
    partition=st.tuples(
        st.sampled_from(list(FsType)),
        st.sampled_from([PartType.SYSTEM, PartType.DATA, PartType.OVERLAY]),
        st.sampled_from([name for _, name in ARCH_TABLE]),
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    objects=st.lists(object_strategy | partition_strategy, max_size=8), stamp=st.integers(0, 2**40)
)
def test_round_trip_fuzz(tmp_path: Path, objects: list[SifObject], stamp: int) -> None:
    dest = tmp_path / "fuzz.sif"
    img = sif.write_sif(dest, objects, created=stamp, descriptor_capacity=8)
    assert len(img.descriptors) == len(objects)
    assert img.header.created_unix == stamp
    assert img.header.descriptors_free == 8 - len(objects)
    for obj, d in zip(objects, img.descriptors, strict=True):
        assert (d.datatype, d.name, d.group_id, d.linked_id) == (
            obj.datatype, obj.name, obj.group_id, obj.link,
        )  # fmt: skip
        assert d.created_unix == (stamp if obj.created is None else obj.created)
        assert sif.read_object(dest, d) == obj.data
        default = 4096 if obj.datatype == DataType.PARTITION else 0
        alignment = default if obj.alignment is None else obj.alignment
        if alignment:
            assert d.offset % alignment == 0
    json.dumps(img.to_dict())


# --- malformed input ------------------------------------------------------------------------


@pytest.fixture
def small_sif(tmp_path: Path) -> Path:
    dest = tmp_path / "small.sif"
    objects = [
        SifObject(DataType.DEFFILE, b"Bootstrap: scratch\n"),
        SifObject(DataType.PARTITION, os.urandom(5000), partition=("squashfs", "primary_system")),
    ]
    sif.write_sif(dest, objects)
    return dest


def test_truncated_header_raises(tmp_path: Path, small_sif: Path) -> None:
    data = small_sif.read_bytes()
    for length in range(sif.HEADER_STRUCT.size):
        cut = tmp_path / "cut.sif"
        cut.write_bytes(data[:length])
        with pytest.raises(SifError):
            sif.read_header(cut)
        with pytest.raises(SifError):
            sif.read_sif(cut)
        assert sif.is_sif(cut) == (length >= 42)
    cut.write_bytes(data[:100])
    with pytest.raises(SifError, match="truncated SIF header"):
        sif.read_header(cut)


@pytest.mark.parametrize(
    "length", [128, 4096, 4096 + 585, TABLE_END - 1, TABLE_END + 5, 32768 + 4999]
)
def test_truncated_file_raises(tmp_path: Path, small_sif: Path, length: int) -> None:
    cut = tmp_path / "cut.sif"
    cut.write_bytes(small_sif.read_bytes()[:length])
    with pytest.raises(SifError, match="truncated"):
        sif.read_sif(cut)


def test_object_truncated_after_reading(tmp_path: Path, small_sif: Path) -> None:
    img = sif.read_sif(small_sif)
    with open(small_sif, "r+b") as f:
        f.truncate(img.file_size - 10)
    with pytest.raises(SifError, match="truncated"):
        sif.read_object(small_sif, img.descriptors[1])
    with pytest.raises(SifError, match="max_size"):
        sif.read_object(small_sif, img.descriptors[1], max_size=100)


def patched(path: Path, offset: int, fmt: str, value: object) -> io.BytesIO:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    return io.BytesIO(bytes(data))


HEADER_FIELD = {name: 64 + 8 * i for i, name in enumerate(
    ["ctime", "mtime", "free", "total", "doff", "dsize", "data_off", "data_size"]
)}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("total", -1, "negative descriptor count"),
        ("total", 10, "not in"),
        ("total", 2**62, "readers stop at 4096"),
        ("total", 4097, "readers stop at 4096"),
        ("free", 49, "not in"),
        ("doff", 0, "overlaps the header"),
        ("doff", 10**9, "descriptor table ends"),
        ("dsize", 585, "descriptor table size"),
        ("data_off", -5, "negative data offset"),
        ("data_size", 10**9, "data section ends"),
    ],
)
def test_bad_header_fields_raise(small_sif: Path, field: str, value: int, message: str) -> None:
    with pytest.raises(SifError, match=message):
        sif.read_sif(patched(small_sif, HEADER_FIELD[field], "<q", value))


def test_bad_magic_and_version(small_sif: Path) -> None:
    bad_magic = patched(small_sif, 32, "10s", b"SIF_MAGIK\x00")
    assert not sif.is_sif(bad_magic)
    with pytest.raises(SifError, match="not a SIF image"):
        sif.read_header(bad_magic)
    with pytest.raises(SifError, match="unsupported SIF version"):
        sif.read_header(patched(small_sif, 42, "3s", b"02\x00"))


def test_bad_descriptor_raises(small_sif: Path) -> None:
    second = 4096 + 585 + 4 + 1 + 12  # the int64 offset field of descriptor 1
    with pytest.raises(SifError, match="descriptor 1"):
        sif.read_sif(patched(small_sif, second, "<q", -1))
    with pytest.raises(SifError, match="descriptor 1 .* ends at byte"):
        sif.read_sif(patched(small_sif, second + 8, "<q", 10**12))


def test_unrepresentable_timestamps_are_kept_raw(small_sif: Path) -> None:
    img = sif.read_sif(patched(small_sif, HEADER_FIELD["ctime"], "<q", 2**62))
    assert img.header.created is None and img.header.created_unix == 2**62
    assert img.to_dict()["header"]["created"] is None


def test_not_a_sif(tmp_path: Path) -> None:
    for content in (b"", b"hello", b"\x7fELF" + bytes(200), os.urandom(4096)):
        path = tmp_path / "x"
        path.write_bytes(content)
        assert not sif.is_sif(path)
        with pytest.raises(SifError):
            sif.read_sif(path)


_HOT = st.integers(0, 127) | st.integers(4096, 4096 + 3 * 585) | st.integers(0, 33000)


@settings(max_examples=400, deadline=None)
@given(edits=st.lists(st.tuples(_HOT, st.integers(0, 255)), max_size=12), cut=st.integers(0, 33000))
def test_corruption_raises_only_sif_error(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_small_image_bytes())
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    if cut % 3 == 0:
        del data[cut:]
    try:
        img = sif.read_sif(io.BytesIO(bytes(data)))
    except SifError:
        return
    json.dumps(img.to_dict())
    for d in img.descriptors:
        assert d.size == 0 or d.offset + d.size <= len(data)


@settings(max_examples=200, deadline=None)
@given(tail=st.binary(min_size=0, max_size=700))
def test_garbage_after_magic_raises_only_sif_error(tail: bytes) -> None:
    data = b"#!".ljust(32, b"\x00") + sif.MAGIC + b"01\x00" + tail
    with contextlib.suppress(SifError):
        sif.read_sif(io.BytesIO(data))


@functools.cache
def _small_image_bytes() -> bytes:
    objects = [
        SifObject(DataType.DEFFILE, b"Bootstrap: scratch\n"),
        SifObject(DataType.PARTITION, b"p" * 100, partition=("squashfs", 2)),
        SifObject(DataType.SIGNATURE, b"s", link=2, extra=sif.signature_extra(1, "01" * 20)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.sif"
        sif.write_sif(path, objects, created=0, uuid=uuid.UUID(int=1))
        return path.read_bytes()


# --- writer argument checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("objects", "options", "message"),
    [
        ([SifObject(DataType.PARTITION, b"", partition=(1, 2))] * 2, {}, "only one primary"),
        ([], {"launch_script": "x" * 32}, "launch script"),
        ([SifObject(DataType.DEFFILE, b"", name="é" * 65)], {}, "name"),
        ([SifObject(DataType.DEFFILE, b"")] * 2, {"descriptor_capacity": 1}, "do not fit"),
        ([SifObject(DataType.PARTITION, b"", partition=(1, 2, "vax"))], {}, "architecture"),
        ([SifObject(DataType.PARTITION, b"")], {}, "needs partition="),
        ([SifObject(DataType.PARTITION, b"", partition=(1, 2), extra=b"x")], {}, "not extra="),
        ([SifObject(DataType.DEFFILE, b"", partition=(1, 2))], {}, "only valid"),
        ([SifObject(DataType.DEFFILE, b"", extra=bytes(385))], {}, "extra"),
        ([SifObject(DataType.DEFFILE, b"", link_is_group=True)], {}, "non-zero link"),
        ([SifObject(DataType.DEFFILE, b"", group_id=0x10000000)], {}, "group_id"),
        ([SifObject(DataType.DEFFILE, b"", link=-1)], {}, "link"),
        ([SifObject(DataType.PARTITION, b"", partition=("zfs", 1))], {}, "FsType"),
        ([], {"created": dt.datetime(2020, 1, 1)}, "timezone-aware"),
        ([], {"created": 2**63}, "int64"),
    ],
)
def test_writer_rejects_bad_arguments(
    tmp_path: Path, objects: list[SifObject], options: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sif.write_sif(tmp_path / "bad.sif", objects, **options)
    assert list(tmp_path.iterdir()) == []


# --- make_test_sif --------------------------------------------------------------------------


def test_make_test_sif_layout_and_determinism(tmp_path: Path) -> None:
    size = 3 * (1 << 20) + 12345
    a = sif.make_test_sif(tmp_path / "a.sif", size, arch="arm64", seed=7)
    sif.make_test_sif(tmp_path / "b.sif", size, arch="arm64", seed=7)
    c = sif.make_test_sif(tmp_path / "c.sif", size, arch="arm64", seed=8)
    assert (tmp_path / "a.sif").read_bytes() == (tmp_path / "b.sif").read_bytes()
    assert a.header.uuid != c.header.uuid
    part = a.primary_partition()
    assert part is not None
    assert part.size == size and part.offset == 32768
    assert a.file_size == 32768 + size
    assert (a.primary_arch(), a.header.arch_code) == ("arm64", "04")
    assert part.extra["fstype_name"] == "squashfs"
    deffile = a.find(DataType.DEFFILE)[0]
    assert sif.read_object(tmp_path / "a.sif", deffile).startswith(b"Bootstrap: scratch\n")
    data = b"".join(sif.iter_object(tmp_path / "a.sif", part))
    assert data == b"".join(sif.iter_test_data(size, 7))
    other = b"".join(sif.iter_object(tmp_path / "c.sif", c.primary_partition()))
    assert data != other
    blocks = {data[i : i + 4096] for i in range(0, len(data) - 4096, 4096)}
    assert len(blocks) == len(range(0, len(data) - 4096, 4096))  # no repeated blocks


def test_make_test_sif_zero_size(tmp_path: Path) -> None:
    img = sif.make_test_sif(tmp_path / "z.sif", 0)
    assert img.primary_partition() is not None and img.primary_partition().size == 0


def test_make_test_sif_memory_is_flat(tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        sif.make_test_sif(tmp_path / "m.sif", 64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.slow
def test_make_test_sif_one_gib(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 3 << 30:
        pytest.skip("needs 3 GiB free in the temporary directory")
    start = time.monotonic()
    img = sif.make_test_sif(tmp_path / "big.sif", 1 << 30)
    assert time.monotonic() - start < 60
    assert img.primary_partition().size == 1 << 30
    assert img.file_size == 32768 + (1 << 30)


def test_name_with_lone_surrogate_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not valid Unicode"):
        sif.write_sif(tmp_path / "x.sif", [sif.SifObject(sif.DataType.DEFFILE, b"", name="\ud800")])
