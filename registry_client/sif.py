"""Read and write Singularity Image Format (SIF) files, stdlib only.

The on-disk layout is the one of sylabs/sif v2 (``pkg/sif``), used by SingularityCE and
Apptainer. Every integer is little-endian and the records are packed (no padding)::

    offset 0      global header, 128 bytes (HEADER_STRUCT)
    offset 128    zeros up to descriptors_offset (4096 in every image the Go library creates)
    offset 4096   descriptor table: descriptors_total records of 585 bytes (DESCRIPTOR_STRUCT),
                  48 by default; unused slots are all zeros
    data_offset   data objects, in descriptor order (data_offset = 4096 + 48 * 585 = 32176);
                  partitions start on a 4096-byte boundary of the file, other objects are
                  packed without alignment

Reading: :func:`is_sif`, :func:`read_header`, :func:`read_sif`, :func:`read_object`,
:func:`iter_object`. Writing: :func:`write_sif` with :class:`SifObject`, and
:func:`make_test_sif` for synthetic images. Malformed or truncated input raises
:class:`SifError`; bad arguments to the writer raise :class:`ValueError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
import os
import secrets
import struct
import uuid as _uuid
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO, TypeAlias

__all__ = [
    "ARCHES",
    "DEFAULT_DESCRIPTOR_CAPACITY",
    "DEFAULT_DESCRIPTORS_OFFSET",
    "DEFAULT_LAUNCH_SCRIPT",
    "DESCRIPTOR_STRUCT",
    "GO_ZERO_TIME",
    "GROUP_MASK",
    "HEADER_STRUCT",
    "PARTITION_ALIGNMENT",
    "CryptoFormat",
    "CryptoMessage",
    "DataType",
    "Descriptor",
    "FsType",
    "HashType",
    "PartType",
    "SbomFormat",
    "SifError",
    "SifHeader",
    "SifImage",
    "SifObject",
    "arch_code",
    "arch_name",
    "crypto_message_extra",
    "is_sif",
    "iter_object",
    "iter_test_data",
    "make_test_sif",
    "partition_extra",
    "read_header",
    "read_object",
    "read_sif",
    "sbom_extra",
    "signature_extra",
    "write_sif",
]


class SifError(ValueError):
    """The input is not a SIF image, or its header, descriptors or objects are malformed.

    Raised for bad magic, an unsupported version, a truncated file, and offsets or sizes that
    point outside the file. Never raised for I/O errors (those stay ``OSError``).
    """


# --------------------------------------------------------------------------------------------
# Layout (pkg/sif/sif.go, descriptor.go, create.go, descriptor_input.go, arch.go)
# --------------------------------------------------------------------------------------------

#: Global header: launch script [32], magic [10], version [3], arch [3], uuid [16], then int64
#: ctime, mtime, descriptors free, total, offset, size, data offset, data size. 128 bytes.
HEADER_STRUCT = struct.Struct("<32s10s3s3s16s8q")
#: Descriptor: datatype int32, used bool, id uint32, groupid uint32, linkedid uint32, then int64
#: offset, size, size with padding, ctime, mtime, uid, gid, then name [128], extra [384].
#: 585 bytes.
DESCRIPTOR_STRUCT = struct.Struct("<i?III7q128s384s")

MAGIC = b"SIF_MAGIC\x00"
VERSION = b"01\x00"
LAUNCH_SCRIPT_LEN = 32
NAME_LEN = 128
EXTRA_LEN = 384
ENTITY_LEN = 256
#: Group IDs are stored OR-ed with this mask; a linked ID with the mask set names a group.
GROUP_MASK = 0xF0000000
_MAX_ID = ~GROUP_MASK & 0xFFFFFFFF
DEFAULT_GROUP = 1
DEFAULT_DESCRIPTOR_CAPACITY = 48
# Readers stop here (2.4 MB of table): a header is untrusted input, and the table it
# declares is read whole (and, for a remote image, with one ranged GET). Writers too.
MAX_DESCRIPTORS = 4096
DEFAULT_DESCRIPTORS_OFFSET = 4096
#: Partitions are aligned to this file offset; other objects are not aligned.
PARTITION_ALIGNMENT = 4096
#: What ``singularity build`` / ``apptainer build`` write; ``siftool new`` writes "".
DEFAULT_LAUNCH_SCRIPT = "#!/usr/bin/env run-singularity\n"
#: ``time.Time{}.Unix()`` in Go: the timestamp of images made with OptCreateDeterministic.
GO_ZERO_TIME = -62135596800

_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_UTC)
_CHUNK = 1 << 20


class DataType(enum.IntEnum):
    """Data object types (``sif.DataType``)."""

    DEFFILE = 0x4001
    ENVVAR = 0x4002
    LABELS = 0x4003
    PARTITION = 0x4004
    SIGNATURE = 0x4005
    GENERIC_JSON = 0x4006
    GENERIC = 0x4007
    CRYPTO_MESSAGE = 0x4008
    SBOM = 0x4009
    OCI_ROOT_INDEX = 0x400A
    OCI_BLOB = 0x400B


class FsType(enum.IntEnum):
    """File system of a partition (``sif.FSType``)."""

    SQUASHFS = 1
    EXT3 = 2
    IMMUTABLE_OBJECT = 3
    RAW = 4
    ENCRYPTED_SQUASHFS = 5


class PartType(enum.IntEnum):
    """Role of a partition (``sif.PartType``)."""

    SYSTEM = 1
    PRIMARY_SYSTEM = 2
    DATA = 3
    OVERLAY = 4


class HashType(enum.IntEnum):
    """Hash of a signature object (``hashType``)."""

    SHA256 = 1
    SHA384 = 2
    SHA512 = 3
    BLAKE2S_256 = 4
    BLAKE2B_256 = 5


class CryptoFormat(enum.IntEnum):
    """Format of a cryptographic message object (``sif.FormatType``)."""

    OPENPGP = 1
    PEM = 2


class CryptoMessage(enum.IntEnum):
    """Kind of a cryptographic message object (``sif.MessageType``)."""

    CLEAR_SIGNATURE = 0x100
    RSA_OAEP = 0x200


class SbomFormat(enum.IntEnum):
    """Format of an SBOM object (``sif.SBOMFormat``)."""

    CYCLONEDX_JSON = 1
    CYCLONEDX_XML = 2
    GITHUB_JSON = 3
    SPDX_JSON = 4
    SPDX_RDF = 5
    SPDX_TAG_VALUE = 6
    SPDX_YAML = 7
    SYFT_JSON = 8


#: Two-digit header/partition arch codes and the Go architecture names they stand for.
ARCHES: dict[str, str] = {
    "00": "unknown",
    "01": "386",
    "02": "amd64",
    "03": "arm",
    "04": "arm64",
    "05": "ppc64",
    "06": "ppc64le",
    "07": "mips",
    "08": "mipsle",
    "09": "mips64",
    "10": "mips64le",
    "11": "s390x",
    "12": "riscv64",
    "13": "loong64",
}
_ARCH_CODES = {name: code for code, name in ARCHES.items() if code != "00"}
#: `uname -m` spellings accepted by :func:`arch_code` besides the Go names.
_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}


def arch_name(code: str | bytes) -> str:
    """Go architecture name ("amd64", ...) for an arch code ("02" or b"02\\0"), else "unknown"."""
    if isinstance(code, bytes):
        if len(code) != 3 or code[2] != 0:
            return "unknown"
        code = code[:2].decode("ascii", errors="replace")
    return ARCHES.get(code, "unknown")


def arch_code(name: str) -> str:
    """Two-digit SIF arch code for a Go architecture name (or x86_64/aarch64/i386/i686).

    Raises ValueError for an architecture SIF has no code for.
    """
    name = _ARCH_ALIASES.get(name, name)
    try:
        return _ARCH_CODES[name]
    except KeyError:
        raise ValueError(f"unknown SIF architecture {name!r}") from None


def _enum_label(enum_cls: type[enum.IntEnum], value: int) -> str:
    try:
        return enum_cls(value).name.lower()
    except ValueError:
        return "unknown"


def _to_datetime(seconds: int) -> _dt.datetime | None:
    """UTC datetime for Unix seconds; None outside years 1-9999 (Go accepts any int64)."""
    try:
        return _EPOCH + _dt.timedelta(seconds=seconds)
    except OverflowError:
        return None


def _iso(value: _dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _to_unix(value: _dt.datetime | int) -> int:
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware datetimes")
    return (value - _EPOCH) // _dt.timedelta(seconds=1)


def _cstr(raw: bytes) -> str:
    """Decode a fixed-size byte field the way the Go library does (trailing NULs trimmed)."""
    return raw.rstrip(b"\x00").decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SifHeader:
    """The global header.

    ``created``/``modified`` are UTC datetimes (year 1 for the Go library's deterministic
    images), or None when the stored Unix time (``created_unix``/``modified_unix``) lies
    outside what a datetime can hold.
    """

    launch_script: str
    version: str
    arch_code: str
    arch: str
    uuid: str
    created: _dt.datetime | None
    modified: _dt.datetime | None
    created_unix: int
    modified_unix: int
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (datetimes as ISO 8601 strings)."""
        out = dataclasses.asdict(self)
        out["created"] = _iso(self.created)
        out["modified"] = _iso(self.modified)
        return out


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """One used descriptor of the table.

    ``group_id`` and ``linked_id`` have the group mask removed; ``group_id`` 0 means "in no
    group" and ``linked_id`` 0 means "not linked". ``link_is_group`` tells whether
    ``linked_id`` names an object group rather than an object. ``extra`` is the decoded
    type-specific metadata (see :func:`_decode_extra`); ``raw_extra`` the 384 stored bytes.
    """

    index: int
    datatype: int
    datatype_name: str
    id: int
    group_id: int
    linked_id: int
    link_is_group: bool
    offset: int
    size: int
    size_with_padding: int
    created: _dt.datetime | None
    modified: _dt.datetime | None
    created_unix: int
    modified_unix: int
    uid: int
    gid: int
    name: str
    extra: dict[str, Any]
    raw_extra: bytes = dataclasses.field(repr=False)

    @property
    def is_primary_partition(self) -> bool:
        """True for the primary system partition (the one a container runs from)."""
        return (
            self.datatype == DataType.PARTITION
            and self.extra.get("parttype") == PartType.PRIMARY_SYSTEM
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view (datetimes as ISO strings, raw extra left out)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["raw_extra"]
        out["created"] = _iso(self.created)
        out["modified"] = _iso(self.modified)
        out["extra"] = dict(self.extra)
        return out


@dataclasses.dataclass(frozen=True)
class SifImage:
    """A parsed SIF file: its header and its used descriptors, in table order."""

    path: str | None
    file_size: int
    header: SifHeader
    descriptors: list[Descriptor]

    def primary_partition(self) -> Descriptor | None:
        """The primary system partition, if the image has one."""
        return next((d for d in self.descriptors if d.is_primary_partition), None)

    def primary_arch(self) -> str:
        """Go name of the primary partition's arch, else of the header arch ("unknown")."""
        part = self.primary_partition()
        if part is not None and part.extra.get("arch", "unknown") != "unknown":
            return str(part.extra["arch"])
        return self.header.arch

    def find(self, datatype: int | None = None, *, name: str | None = None) -> list[Descriptor]:
        """Descriptors of the given data type and/or name."""
        return [
            d
            for d in self.descriptors
            if (datatype is None or d.datatype == datatype) and (name is None or d.name == name)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view of the whole image."""
        return {
            "path": self.path,
            "file_size": self.file_size,
            "primary_arch": self.primary_arch(),
            "header": self.header.to_dict(),
            "descriptors": [d.to_dict() for d in self.descriptors],
        }


# --------------------------------------------------------------------------------------------
# "extra" (type-specific metadata) encoders and decoder
# --------------------------------------------------------------------------------------------

_PARTITION_EXTRA = struct.Struct("<ii3s")
_SIGNATURE_EXTRA = struct.Struct(f"<i{ENTITY_LEN}s")
_CRYPTO_EXTRA = struct.Struct("<ii")
_SBOM_EXTRA = struct.Struct("<i")
_FINGERPRINT_LEN = 20  # the Go reader looks at the first 20 bytes of the entity only


def _coerce_enum(enum_cls: type[enum.IntEnum], value: int | str) -> int:
    if isinstance(value, str):
        try:
            return int(enum_cls[value.upper()])
        except KeyError:
            raise ValueError(f"unknown {enum_cls.__name__} {value!r}") from None
    return int(value)


def partition_extra(fstype: int | str, parttype: int | str, arch: str) -> bytes:
    """The ``extra`` of a partition: fstype int32, parttype int32, arch [3]byte."""
    return _PARTITION_EXTRA.pack(
        _coerce_enum(FsType, fstype),
        _coerce_enum(PartType, parttype),
        arch_code(arch).encode("ascii") + b"\x00",
    )


def signature_extra(hashtype: int | str, fingerprint: bytes | str = b"") -> bytes:
    """The ``extra`` of a signature: hash type int32, entity [256]byte (key fingerprint)."""
    if isinstance(fingerprint, str):
        fingerprint = bytes.fromhex(fingerprint)
    if len(fingerprint) > ENTITY_LEN:
        raise ValueError("signature entity is longer than 256 bytes")
    return _SIGNATURE_EXTRA.pack(_coerce_enum(HashType, hashtype), fingerprint)


def crypto_message_extra(fmt: int | str, message: int | str) -> bytes:
    """The ``extra`` of a cryptographic message: format int32, message type int32."""
    return _CRYPTO_EXTRA.pack(_coerce_enum(CryptoFormat, fmt), _coerce_enum(CryptoMessage, message))


def sbom_extra(fmt: int | str) -> bytes:
    """The ``extra`` of an SBOM object: format int32."""
    return _SBOM_EXTRA.pack(_coerce_enum(SbomFormat, fmt))


_SBOM_NAMES = {
    1: "cyclonedx-json",
    2: "cyclonedx-xml",
    3: "github-json",
    4: "spdx-json",
    5: "spdx-rdf",
    6: "spdx-tag-value",
    7: "spdx-yaml",
    8: "syft-json",
}


def _decode_extra(datatype: int, raw: bytes) -> dict[str, Any]:
    """Decode the ``extra`` field the way pkg/sif does for the types that define one."""
    if datatype == DataType.PARTITION:
        fs, pt, arch = _PARTITION_EXTRA.unpack_from(raw)
        return {
            "fstype": fs,
            "fstype_name": _enum_label(FsType, fs),
            "parttype": pt,
            "parttype_name": _enum_label(PartType, pt),
            "arch_code": _cstr(arch),
            "arch": arch_name(arch),
        }
    if datatype == DataType.SIGNATURE:
        ht, entity = _SIGNATURE_EXTRA.unpack_from(raw)
        fingerprint = entity[:_FINGERPRINT_LEN]
        return {
            "hashtype": ht,
            "hash": _enum_label(HashType, ht),
            "entity": fingerprint.hex().upper() if any(fingerprint) else None,
        }
    if datatype == DataType.CRYPTO_MESSAGE:
        fmt, msg = _CRYPTO_EXTRA.unpack_from(raw)
        return {
            "format": fmt,
            "format_name": _enum_label(CryptoFormat, fmt),
            "message": msg,
            "message_name": _enum_label(CryptoMessage, msg),
        }
    if datatype == DataType.SBOM:
        (fmt,) = _SBOM_EXTRA.unpack_from(raw)
        return {"format": fmt, "format_name": _SBOM_NAMES.get(fmt, "unknown")}
    if datatype in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB):
        return {"digest": raw.split(b"\x00", 1)[0].decode("ascii", errors="replace")}
    return {}


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

Source: TypeAlias = "str | os.PathLike[str] | BinaryIO"


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[tuple[IO[bytes], int, str | None]]:
    """Yield (binary file, its size, its path or None); close it only if we opened it."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size, path
    else:
        size = source.seek(0, os.SEEK_END)
        name = getattr(source, "name", None)
        yield source, size, name if isinstance(name, str) else None


def _pread(f: IO[bytes], offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def is_sif(source: Source) -> bool:
    """True if the file starts with a SIF global header magic. Reads only the first 42 bytes.

    ``OSError`` (missing file, permissions) is not swallowed.
    """
    with _opened(source) as (f, _size, _path):
        start = _pread(f, 0, LAUNCH_SCRIPT_LEN + len(MAGIC))
    return start[LAUNCH_SCRIPT_LEN:] == MAGIC


def _parse_header(raw: bytes, file_size: int) -> SifHeader:
    if raw[LAUNCH_SCRIPT_LEN : LAUNCH_SCRIPT_LEN + len(MAGIC)] != MAGIC:
        raise SifError("not a SIF image: no SIF_MAGIC at byte 32")
    if len(raw) < HEADER_STRUCT.size:
        raise SifError(
            f"truncated SIF header: the file has {file_size} bytes, "
            f"the header needs {HEADER_STRUCT.size}"
        )
    (launch, _magic, version, arch, ident, ctime, mtime, dfree, dtotal, doff, dsize, data_off,
     data_size) = HEADER_STRUCT.unpack_from(raw)  # fmt: skip
    if version != VERSION:
        raise SifError(f"unsupported SIF version {version!r} (only 01 is defined)")
    table = dtotal * DESCRIPTOR_STRUCT.size if dtotal >= 0 else -1
    checks = [
        (dtotal < 0, f"negative descriptor count {dtotal}"),
        (dtotal > MAX_DESCRIPTORS,
         f"{dtotal} descriptors declared; readers stop at {MAX_DESCRIPTORS}"),
        (not 0 <= dfree <= dtotal, f"free descriptor count {dfree} not in [0, {dtotal}]"),
        (doff < HEADER_STRUCT.size, f"descriptor table offset {doff} overlaps the header"),
        (dsize < table, f"descriptor table size {dsize} is below {dtotal} x 585 bytes"),
        (doff + table > file_size,
         f"truncated SIF: descriptor table ends at {doff + table}, file has {file_size} bytes"),
        (data_off < 0 or data_size < 0, f"negative data offset/size {data_off}/{data_size}"),
        (data_off > file_size,
         f"truncated SIF: data section starts at {data_off}, file has {file_size} bytes"),
    ]  # fmt: skip
    for failed, message in checks:
        if failed:
            raise SifError(message)
    return SifHeader(
        launch_script=_cstr(launch),
        version=_cstr(version),
        arch_code=_cstr(arch),
        arch=arch_name(arch),
        uuid=str(_uuid.UUID(bytes=ident)),
        created=_to_datetime(ctime),
        modified=_to_datetime(mtime),
        created_unix=ctime,
        modified_unix=mtime,
        descriptors_free=dfree,
        descriptors_total=dtotal,
        descriptors_offset=doff,
        descriptors_size=dsize,
        data_offset=data_off,
        data_size=data_size,
    )


def read_header(source: Source) -> SifHeader:
    """Read and validate the global header (magic, version, descriptor table within the file).

    ``source`` is a path or a seekable binary file object. Raises SifError if malformed.
    """
    with _opened(source) as (f, size, _path):
        return _parse_header(_pread(f, 0, HEADER_STRUCT.size), size)


def _parse_descriptor(index: int, raw: bytes, file_size: int) -> Descriptor | None:
    (dtype, used, ident, group, link, offset, size, padded, ctime, mtime, uid, gid, name,
     extra) = DESCRIPTOR_STRUCT.unpack(raw)  # fmt: skip
    if not used:
        return None
    where = f"descriptor {index} (id {ident})"
    if offset < 0 or size < 0 or padded < 0:
        raise SifError(f"{where}: negative offset/size {offset}/{size}/{padded}")
    if size > 0 and offset + size > file_size:
        raise SifError(
            f"truncated SIF: {where} ends at byte {offset + size}, file has {file_size} bytes"
        )
    return Descriptor(
        index=index,
        datatype=dtype,
        datatype_name=_enum_label(DataType, dtype),
        id=ident,
        group_id=group & ~GROUP_MASK,
        linked_id=link & ~GROUP_MASK,
        link_is_group=link & GROUP_MASK == GROUP_MASK,
        offset=offset,
        size=size,
        size_with_padding=padded,
        created=_to_datetime(ctime),
        modified=_to_datetime(mtime),
        created_unix=ctime,
        modified_unix=mtime,
        uid=uid,
        gid=gid,
        name=_cstr(name),
        extra=_decode_extra(dtype, extra),
        raw_extra=extra,
    )


def read_sif(source: Source) -> SifImage:
    """Read the header and every used descriptor; check that all objects lie inside the file.

    ``source`` is a path or a seekable binary file object. Raises SifError if malformed or
    truncated.
    """
    with _opened(source) as (f, size, path):
        header = _parse_header(_pread(f, 0, HEADER_STRUCT.size), size)
        rec = DESCRIPTOR_STRUCT.size
        table = _pread(f, header.descriptors_offset, header.descriptors_total * rec)
    if len(table) != header.descriptors_total * rec:
        raise SifError("truncated SIF: short read in the descriptor table")
    descriptors = [
        d
        for i in range(header.descriptors_total)
        if (d := _parse_descriptor(i, table[i * rec : (i + 1) * rec], size)) is not None
    ]
    data_end = header.data_offset + header.data_size
    if data_end > size:
        # The Go writer leaves no bytes for a trailing empty (aligned) object, so the data
        # section may end past EOF only where the descriptors say so.
        objects_end = max((d.offset + d.size for d in descriptors), default=header.data_offset)
        if data_end != objects_end:
            raise SifError(
                f"truncated SIF: data section ends at byte {data_end}, file has {size} bytes"
            )
    return SifImage(path=path, file_size=size, header=header, descriptors=descriptors)


def iter_object(
    source: Source, descriptor: Descriptor, chunk_size: int = _CHUNK
) -> Iterator[bytes]:
    """Yield the bytes of a data object in chunks (for partitions and other large objects)."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    with _opened(source) as (f, _size, _path):
        f.seek(descriptor.offset)
        left = descriptor.size
        while left > 0:
            chunk = f.read(min(chunk_size, left))
            if not chunk:
                raise SifError(
                    f"truncated SIF: object {descriptor.id} is missing its last {left} bytes"
                )
            left -= len(chunk)
            yield chunk


def read_object(source: Source, descriptor: Descriptor, *, max_size: int = 64 << 20) -> bytes:
    """Return a small data object (def file, JSON, signature) whole.

    Raises SifError if the object is larger than ``max_size`` or the file is truncated.
    """
    if descriptor.size > max_size:
        raise SifError(
            f"object {descriptor.id} has {descriptor.size} bytes, more than max_size={max_size};"
            " use iter_object()"
        )
    return b"".join(iter_object(source, descriptor))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

ObjectData: TypeAlias = (
    "bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO | Iterable[bytes]"
)


@dataclasses.dataclass
class SifObject:
    """A data object to write.

    ``data``: bytes, a path (streamed), a readable binary file object, or an iterable of byte
    chunks. ``partition``: ``(fstype, parttype)`` or ``(fstype, parttype, arch)`` with enum
    values or names ("squashfs", "primary_system"); the arch defaults to ``write_sif(arch=)``.
    ``group_id`` 0 puts the object in no group. ``link`` is an object ID, or a group ID when
    ``link_is_group``. ``extra`` sets the raw metadata of non-partition types (see
    :func:`signature_extra`, :func:`sbom_extra`, :func:`crypto_message_extra`); OCI blobs and
    root indexes get their ``sha256:`` digest computed. ``alignment`` defaults to 4096 for
    partitions and 0 (none) otherwise, like the Go library. ``created`` defaults to the image's.
    """

    datatype: int
    data: ObjectData
    name: str = ""
    partition: tuple[Any, ...] | None = None
    group_id: int = DEFAULT_GROUP
    link: int = 0
    link_is_group: bool = False
    extra: bytes | None = None
    alignment: int | None = None
    created: _dt.datetime | int | None = None


@dataclasses.dataclass(frozen=True)
class _Planned:
    """A validated object: its encoded ``extra``, alignment and primary-partition flag."""

    obj: SifObject
    extra: bytes
    alignment: int
    primary: bool


def _object_extra(obj: SifObject, default_arch: str) -> tuple[bytes, bool]:
    """Return (extra, is primary partition) for ``obj``; validate its metadata."""
    if obj.datatype == DataType.PARTITION:
        if obj.partition is None or not 2 <= len(obj.partition) <= 3:
            raise ValueError("a partition object needs partition=(fstype, parttype[, arch])")
        if obj.extra is not None:
            raise ValueError("give a partition's metadata with partition=, not extra=")
        fstype, parttype, *rest = obj.partition
        arch = rest[0] if rest and rest[0] is not None else default_arch
        extra = partition_extra(fstype, parttype, arch)
        return extra, _coerce_enum(PartType, parttype) == PartType.PRIMARY_SYSTEM
    if obj.partition is not None:
        raise ValueError("partition= is only valid for DataType.PARTITION objects")
    extra = obj.extra or b""
    if len(extra) > EXTRA_LEN:
        raise ValueError(f"extra is {len(extra)} bytes, the field holds {EXTRA_LEN}")
    return extra, False


def _check_id(value: int, what: str) -> None:
    """IDs share their 32 bits with the group mask, so only the low 28 bits are usable."""
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{what} {value} must be in [0, 0x{_MAX_ID:x}]")


def _check_time(value: _dt.datetime | int) -> int:
    seconds = _to_unix(value)
    if not -(1 << 63) <= seconds < 1 << 63:
        raise ValueError(f"timestamp {value} does not fit in an int64")
    return seconds


def _plan_object(obj: SifObject, default_arch: str) -> _Planned:
    if not -(1 << 31) <= obj.datatype < 1 << 31:
        raise ValueError(f"data type {obj.datatype} does not fit in an int32")
    if obj.created is not None:
        _check_time(obj.created)
    _check_id(obj.group_id, "group_id")
    _check_id(obj.link, "link")
    if obj.link_is_group and obj.link == 0:
        raise ValueError("link_is_group needs a non-zero link")
    _fixed(obj.name, NAME_LEN, "object name")
    default_alignment = PARTITION_ALIGNMENT if obj.datatype == DataType.PARTITION else 0
    alignment = default_alignment if obj.alignment is None else obj.alignment
    if alignment < 0:
        raise ValueError("alignment must be >= 0")
    extra, primary = _object_extra(obj, default_arch)
    return _Planned(obj, extra, alignment, primary)


def _plan(objects: list[SifObject], capacity: int, default_arch: str) -> list[_Planned]:
    """Validate every object before a byte is written."""
    if not 0 < capacity <= MAX_DESCRIPTORS:
        raise ValueError(f"descriptor capacity {capacity} out of range")
    if len(objects) > capacity:
        raise ValueError(f"{len(objects)} objects do not fit in {capacity} descriptors")
    planned = [_plan_object(obj, default_arch) for obj in objects]
    if sum(p.primary for p in planned) > 1:
        raise ValueError("an image can hold only one primary system partition")
    return planned


def _chunks(data: ObjectData) -> Iterator[bytes]:
    """Stream ``data`` in chunks of at most 1 MiB without loading files into memory."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
    elif isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            yield from iter(lambda: f.read(_CHUNK), b"")
    elif hasattr(data, "read"):
        yield from iter(lambda: data.read(_CHUNK), b"")
    elif isinstance(data, Iterable):
        for chunk in data:
            yield bytes(chunk)
    else:
        raise TypeError(f"unsupported SIF object data {type(data).__name__}")


def _write_object(f: IO[bytes], p: _Planned, offset: int) -> tuple[int, bytes]:
    """Write an object at ``offset``; return (bytes written, final ``extra``).

    OCI blobs and root indexes without an explicit ``extra`` get ``sha256:<hex>`` of their
    content, as the Go library computes it while copying.
    """
    oci = p.obj.datatype in (DataType.OCI_BLOB, DataType.OCI_ROOT_INDEX) and p.obj.extra is None
    digest = hashlib.sha256()
    f.seek(offset)  # a gap before it reads back as zeros, as with the Go writer's Seek
    written = 0
    for chunk in _chunks(p.obj.data):
        f.write(chunk)
        written += len(chunk)
        if oci:
            digest.update(chunk)
    return written, (f"sha256:{digest.hexdigest()}".encode() if oci else p.extra)


def _next_aligned(offset: int, alignment: int) -> int:
    if alignment <= 0 or offset % alignment == 0:
        return offset
    return offset + alignment - offset % alignment


def _fixed(text: str, size: int, what: str) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: a bad argument, not a crash
        raise ValueError(f"{what} is not valid Unicode text") from None
    if len(raw) > size:
        raise ValueError(f"{what} is longer than {size} bytes")
    return raw


def _write_objects(
    f: IO[bytes], planned: list[_Planned], data_offset: int, stamp: int
) -> tuple[list[bytes], int, bytes]:
    """Write the data section; return (descriptor records, data end, header arch field)."""
    records, end, header_arch = [], data_offset, b"00\x00"
    for index, p in enumerate(planned):
        offset = _next_aligned(end, p.alignment)
        size, extra = _write_object(f, p, offset)
        if p.primary:
            header_arch = extra[8:11]  # the Go writer copies the primary partition's arch
        t = _check_time(p.obj.created) if p.obj.created is not None else stamp
        link = p.obj.link | GROUP_MASK if p.obj.link_is_group else p.obj.link
        name = _fixed(p.obj.name, NAME_LEN, "object name")
        padded = offset - end + size  # leading alignment padding counts, as in Go
        records.append(
            DESCRIPTOR_STRUCT.pack(
                p.obj.datatype, True, index + 1, p.obj.group_id | GROUP_MASK, link,
                offset, size, padded, t, t, 0, 0, name, extra,
            )
        )  # fmt: skip
        end = offset + size
    return records, end, header_arch


def write_sif(
    dest_path: str | os.PathLike[str],
    objects: list[SifObject],
    *,
    arch: str = "amd64",
    created: _dt.datetime | int | None = None,
    uuid: str | _uuid.UUID | None = None,
    launch_script: str = DEFAULT_LAUNCH_SCRIPT,
    descriptor_capacity: int = DEFAULT_DESCRIPTOR_CAPACITY,
) -> SifImage:
    """Write a SIF image laid out exactly as sylabs/sif ``CreateContainer`` lays it out.

    Objects get IDs 1, 2, ... in list order and are written after the descriptor table,
    partitions aligned to 4096 bytes. ``arch`` is the default arch of partitions; the header
    arch is the primary partition's (``"00"`` unknown when there is none, as in Go).
    ``created`` (aware datetime or Unix seconds, default now) sets the header and object times;
    ``uuid`` defaults to a random one. Pass ``created=GO_ZERO_TIME`` and
    ``uuid=uuid.UUID(int=0)`` for the Go library's deterministic images. The file is written
    to a temporary name in the same directory and renamed into place (mode 0755 & ~umask).
    Returns the written image as read back.
    """
    planned = _plan(objects, descriptor_capacity, arch)
    launch = _fixed(launch_script, LAUNCH_SCRIPT_LEN - 1, "launch script")
    stamp = _check_time(created if created is not None else _dt.datetime.now(_UTC))
    ident = uuid if isinstance(uuid, _uuid.UUID) else _uuid.UUID(uuid) if uuid else _uuid.uuid4()
    table_size = descriptor_capacity * DESCRIPTOR_STRUCT.size
    data_offset = DEFAULT_DESCRIPTORS_OFFSET + table_size
    dest = os.fspath(dest_path)
    tmp = f"{dest}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o755)
    try:
        with os.fdopen(fd, "wb") as f:
            records, end, header_arch = _write_objects(f, planned, data_offset, stamp)
            records += [bytes(DESCRIPTOR_STRUCT.size)] * (descriptor_capacity - len(objects))
            header = HEADER_STRUCT.pack(
                launch, MAGIC, VERSION, header_arch, ident.bytes, stamp, stamp,
                descriptor_capacity - len(objects), descriptor_capacity,
                DEFAULT_DESCRIPTORS_OFFSET, table_size, data_offset, end - data_offset,
            )  # fmt: skip
            f.seek(0)
            f.write(header.ljust(DEFAULT_DESCRIPTORS_OFFSET, b"\x00"))
            f.write(b"".join(records))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return read_sif(dest)


# --------------------------------------------------------------------------------------------
# Synthetic test images
# --------------------------------------------------------------------------------------------

_TEST_BLOCK = 1 << 20


def iter_test_data(size: int, seed: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes, in 1 MiB chunks, that never repeat a block.

    Block ``i`` is SHAKE-128 of (seed, i), so any block can be recomputed on its own.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    prefix = b"registry-client test data\x00" + seed.to_bytes(16, "little", signed=True)
    for index, start in enumerate(range(0, size, _TEST_BLOCK)):
        length = min(_TEST_BLOCK, size - start)
        yield hashlib.shake_128(prefix + index.to_bytes(8, "little")).digest(length)


def make_test_sif(
    path: str | os.PathLike[str], size: int, *, arch: str = "amd64", seed: int = 0
) -> SifImage:
    """Write a valid, fully deterministic SIF whose primary partition is ``size`` bytes.

    The partition holds :func:`iter_test_data` (labelled squashfs, but it is not a file system:
    the image cannot be run). A small def file comes first. UUID and times derive from the
    seed and a fixed date, so the same (size, arch, seed) gives the same bytes. Memory use is
    flat; the file is about 36 KiB larger than ``size``.
    """
    deffile = (
        "Bootstrap: scratch\n"
        f"# registry-client synthetic test image: seed={seed}, size={size}, arch={arch}\n"
        "# The primary partition is pseudo-random data, not a real squashfs.\n"
    ).encode()
    ident = _uuid.UUID(
        bytes=hashlib.shake_128(b"registry-client test uuid" + str(seed).encode()).digest(16),
        version=4,
    )
    objects = [
        SifObject(DataType.DEFFILE, deffile),
        SifObject(
            DataType.PARTITION,
            iter_test_data(size, seed),
            partition=(FsType.SQUASHFS, PartType.PRIMARY_SYSTEM, arch),
        ),
    ]
    created = _dt.datetime(2024, 1, 1, tzinfo=_UTC)
    return write_sif(path, objects, arch=arch, created=created, uuid=ident)
