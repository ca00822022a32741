"""OCI layers → one root filesystem, held as a tree in memory → one canonical tar stream.

Why a tree and not a folder on disk: everything the SIF keeps about an entry (mode, time,
device numbers, extended attributes, file capabilities) must come from the layers alone,
never from who builds or where. A folder would cut modes by the umask, give FIFOs and
device nodes the build's clock, refuse device nodes and `security.*` attributes to a
non-root builder and lose xattrs on filesystems without them. The tree keeps each entry's
metadata as the layer gave it; only regular file contents go to disk (a private folder of
numbered files). `write_tar` then emits the whole root in sorted order for
`mksquashfs -tar`, so one manifest gives the same bytes for every user, umask and host
(given one squashfs-tools build: docs/fetchers.md).

Layers are applied as umoci and containerd apply them:

- `.wh.NAME` removes NAME from the lower layers, `.wh..wh..opq` hides a directory's lower
  content; neither touches what the same layer added. Other `.wh..wh.*` entries are aufs
  bookkeeping and are skipped. A whiteout naming nothing (`.wh.`) or a dot (`.wh..`,
  `.wh...`) is refused: it would otherwise name the folder itself or its parent.
- A member's parent path is resolved inside the root as in a chroot: symlinks met on the
  way are followed with `/` and `..` clamped to the root, so nothing can point out of it.
  The final component is never followed. A member name with an absolute path or a `..`
  component is refused, as are hard links to a directory, to the root or to nothing.
- A directory entry over an existing directory keeps its content and takes the new
  metadata; any other entry replaces what was there.

Every header field is untrusted: names and link targets are bounded in length (4096
bytes, components 255), PAX and GNU long-name records to 1 MiB, xattrs in count and size,
the number of entries in the root to MAX_ENTRIES, symlink hops to 40; times are clamped to
what squashfs stores (unsigned 32-bit seconds); device numbers to what it encodes.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote_to_bytes

from registry_client.errors import IntegrityError, UsageError

Warn = Callable[[str], None]

BLOCK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# aufs bookkeeping entries (.wh..wh.plnk, .wh..wh.aufs) carry no meaning for the image.
WHITEOUT, OPAQUE, AUFS_META = ".wh.", ".wh..wh..opq", ".wh..wh."
MAX_SYMLINK_HOPS = 40
MAX_PATH = 4096  # bytes, Linux PATH_MAX
MAX_COMPONENT = 255  # bytes, NAME_MAX (squashfs allows 256)
MAX_HEADER = 1024 * 1024  # a PAX or GNU long-name record
MAX_ENTRIES = 4_000_000  # entries alive in the root at once
MAX_XATTRS = 128  # per entry
MAX_XATTR_VALUE = 64 * 1024  # Linux XATTR_SIZE_MAX
MAX_TIME = 2**32 - 1  # squashfs stores unsigned 32-bit seconds
# What squashfs can store: the user., trusted. and security. namespaces. Of those we drop
# what only means something on the host that wrote the layer, as umoci does.
XATTR_NAMESPACES = ("user.", "trusted.", "security.")
HOST_ONLY_XATTRS = ("security.selinux", "trusted.overlay.")
# tar member names are bytes; these settings round-trip any bytes through str.
ENCODING, ERRORS = "utf-8", "surrogateescape"

DIR, FILE, SYMLINK, FIFO, CHAR, BLOCK_DEV = "dir", "file", "symlink", "fifo", "char", "block"
TAR_TYPES = {
    DIR: tarfile.DIRTYPE,
    FILE: tarfile.REGTYPE,
    SYMLINK: tarfile.SYMTYPE,
    FIFO: tarfile.FIFOTYPE,
    CHAR: tarfile.CHRTYPE,
    BLOCK_DEV: tarfile.BLKTYPE,
}


@dataclass(frozen=True)
class LayerFile:
    path: Path
    digest: str  # sha256:... of the blob, for messages
    diff_id: str | None = None  # sha256:... of the uncompressed tar, from the image config


class UnsafeLayer(IntegrityError):
    """A layer member that would leave the root or cannot be applied safely."""


@dataclass(eq=False)  # identity, not value: hard links share one Node
class Node:
    kind: str
    mode: int  # permission bits (0o7777)
    mtime: int
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data: Path | None = None  # FILE: its content, in the tree's private folder
    target: str = ""  # SYMLINK
    device: tuple[int, int] = (0, 0)  # CHAR, BLOCK_DEV
    children: dict[str, Node] | None = None  # DIR
    names: int = 0  # names in the tree that point at this node (hard links)


# -- decompression, with the diff_id computed on the way ---------------------------------


class _HashingReader:
    """Passes reads through and hashes what went by (the layer's uncompressed bytes)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(BLOCK):
            pass
        return f"sha256:{self.sha.hexdigest()}"


@contextlib.contextmanager
def uncompressed(path: Path) -> Iterator[BinaryIO]:
    """The layer as a tar stream: gzip, zstd or plain, told by magic bytes, not media type."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream  # type: ignore[misc]
        elif magic == ZSTD_MAGIC:
            with _zstd(path) as stream:
                yield stream
        else:
            yield raw


@contextlib.contextmanager
def _zstd(path: Path) -> Iterator[BinaryIO]:
    try:
        import zstandard
    except ImportError:
        zstandard = None
    if zstandard is not None:
        with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            yield stream
        return
    tool = shutil.which("zstd")
    if not tool:
        raise UsageError(
            "this image has zstd-compressed layers",
            hint="install zstd (apt-get install zstd) or `pip install zstandard`",
        )
    proc = subprocess.Popen(
        [tool, "-dcq", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout  # type: ignore[misc]
    finally:
        if proc.stdout:
            proc.stdout.close()
        if proc.wait() != 0:
            raise IntegrityError(f"{path.name}: zstd could not decompress the layer")


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads a PAX or GNU long-name record whole into memory: bound it first."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        records = (
            tarfile.XHDTYPE,
            tarfile.XGLTYPE,
            tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME,
            tarfile.GNUTYPE_LONGLINK,
        )
        if self.type in records and self.size > MAX_HEADER:
            raise UnsafeLayer(f"a tar header record of {self.size} bytes (limit {MAX_HEADER})")
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]


# -- names ------------------------------------------------------------------------------------


def _shown(name: str) -> str:
    return repr(name[:200])


def _parts(name: str, what: str | None = None) -> list[str]:
    """Path components of a member name; unsafe or oversized names raise UnsafeLayer."""
    what = what or f"layer member {_shown(name)}"
    raw = name.encode(ENCODING, ERRORS)
    if len(raw) > MAX_PATH or b"\0" in raw:
        raise UnsafeLayer(f"{what}: name longer than {MAX_PATH} bytes or with a NUL byte")
    if name.startswith("/"):
        raise UnsafeLayer(f"{what} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"{what} climbs out with '..'")
    if any(len(p.encode(ENCODING, ERRORS)) > MAX_COMPONENT for p in parts):
        raise UnsafeLayer(f"{what}: a component is longer than {MAX_COMPONENT} bytes")
    return parts


def _clamp_time(value: float) -> int:
    try:
        return min(max(int(value), 0), MAX_TIME)
    except (OverflowError, ValueError):
        return 0


def member_xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    """Extended attributes from PAX records: SCHILY.xattr.* (Go, GNU tar, umoci, buildah)
    and LIBARCHIVE.xattr.* (bsdtar: URL-encoded name, base64 value)."""
    found: dict[str, bytes] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            found[key[len("SCHILY.xattr.") :]] = value.encode(ENCODING, ERRORS)
        elif key.startswith("LIBARCHIVE.xattr."):
            raw_name = unquote_to_bytes(key[len("LIBARCHIVE.xattr.") :])
            with contextlib.suppress(ValueError):
                padded = value + "=" * (-len(value) % 4)
                found[raw_name.decode(ENCODING, ERRORS)] = base64.b64decode(padded)
    if len(found) > MAX_XATTRS or any(
        len(v) > MAX_XATTR_VALUE or len(k.encode(ENCODING, ERRORS)) > MAX_COMPONENT
        for k, v in found.items()
    ):
        raise UnsafeLayer(f"layer member {_shown(member.name)}: oversized extended attributes")
    return found


# -- the tree ---------------------------------------------------------------------------------


class RootfsTree:
    """Layers applied in order to a tree in memory; file contents in `store` (private)."""

    def __init__(self, store: Path, warn: Warn, epoch: int) -> None:
        store.mkdir(mode=0o700, exist_ok=True)
        self.store = store
        self.warn = warn
        self.epoch = _clamp_time(epoch)
        self.root = Node(DIR, 0o755, self.epoch, children={}, names=1)
        self.entries = 1
        self.layer_added: set[tuple[Node, str]] = set()  # (folder, name) this layer wrote
        self.dropped_xattrs: set[str] = set()
        self.skipped: dict[str, int] = {}
        self._next_file = 0

    # -- paths -------------------------------------------------------------------
    def folder(self, parts: list[str], member: str, *, create: bool) -> Node:
        """The directory `parts` names; symlinks on the way resolved inside the root, as
        in a chroot (`/` and `..` never leave it). Missing folders are created (tar omits
        parents) or, without `create`, raise FileNotFoundError."""
        stack = [self.root]
        todo = deque(parts)
        hops = 0
        while todo:
            comp = todo.popleft()
            if comp in ("", "."):
                continue
            if comp == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            here = stack[-1]
            assert here.children is not None
            node = here.children.get(comp)
            if node is None:
                if not create:
                    raise FileNotFoundError(comp)
                node = self._link(here, comp, Node(DIR, 0o755, self.epoch, children={}))
            if node.kind == SYMLINK:
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(f"layer member {_shown(member)}: too many symlinks")
                if node.target.startswith("/"):
                    stack = [self.root]
                todo.extendleft(reversed([p for p in node.target.split("/") if p]))
                continue
            if node.kind != DIR:
                raise UnsafeLayer(f"layer member {_shown(member)}: {comp[:80]!r} is not a folder")
            stack.append(node)
        return stack[-1]

    def lookup(self, name: str) -> Node | None:
        """The entry at `name` (its parents resolved, the last component not followed)."""
        parts = _parts(name)
        if not parts:
            return self.root
        try:
            folder = self.folder(parts[:-1], name, create=False)
        except (FileNotFoundError, UnsafeLayer):
            return None
        assert folder.children is not None
        return folder.children.get(parts[-1])

    # -- linking and unlinking ---------------------------------------------------
    def _link(self, folder: Node, name: str, node: Node) -> Node:
        assert folder.children is not None
        self._unlink(folder, name)
        if node.names == 0:
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                raise UnsafeLayer(f"the image has more than {MAX_ENTRIES} entries")
        node.names += 1
        folder.children[name] = node
        return node

    def _unlink(self, folder: Node, name: str) -> None:
        assert folder.children is not None
        gone = folder.children.pop(name, None)
        todo = [gone] if gone is not None else []
        while todo:  # a folder's whole subtree, without recursion
            node = todo.pop()
            node.names -= 1
            if node.names > 0:
                continue
            self.entries -= 1
            if node.children:
                todo.extend(node.children.values())
            if node.data is not None:
                node.data.unlink(missing_ok=True)

    # -- layers ------------------------------------------------------------------
    def apply(self, layer: LayerFile) -> None:
        self.layer_added = set()
        try:
            with uncompressed(layer.path) as stream:
                reader = _HashingReader(stream)
                with tarfile.open(  # type: ignore[call-overload]
                    fileobj=reader,
                    mode="r|",
                    tarinfo=_BoundedTarInfo,
                    encoding=ENCODING,
                    errors=ERRORS,
                ) as tar:
                    for member in tar:
                        self._member(tar, member)
                        tar.members.clear()  # stream mode keeps every header otherwise
                diff_id = reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise IntegrityError(
                f"layer {layer.digest[:19]} is not a valid tar archive "
                f"({type(exc).__name__}: {exc})"
            ) from None
        if layer.diff_id and diff_id != layer.diff_id:
            raise IntegrityError(
                f"layer {layer.digest[:19]}: uncompressed content is "
                f"{diff_id}, the image config says {layer.diff_id}"
            )

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _parts(member.name)
        base = parts[-1] if parts else ""
        if any(p.startswith(AUFS_META) for p in parts[:-1]):
            return  # inside aufs' own folders (.wh..wh.plnk/...)
        if base.startswith(WHITEOUT):
            self._whiteout(parts, member.name)
            return
        if not parts:  # "./": the root directory itself
            if member.isdir():
                self._set_meta(self.root, member)
            return
        folder = self.folder(parts[:-1], member.name, create=True)
        self.layer_added.add((folder, base))
        assert folder.children is not None
        existing = folder.children.get(base)
        if member.isdir():
            if existing is None or existing.kind != DIR:
                existing = self._link(folder, base, Node(DIR, 0, 0, children={}))
            self._set_meta(existing, member)
        elif member.islnk():
            self._hardlink(folder, base, member)
        elif member.isreg():  # also contiguous files and GNU sparse files
            self._link(folder, base, self._set_meta(self._file(tar, member), member))
        elif member.issym():
            target = member.linkname.encode(ENCODING, ERRORS)
            if len(target) > MAX_PATH or b"\0" in target:
                raise UnsafeLayer(f"symlink {_shown(member.name)}: target too long or with NUL")
            if not target:  # Linux cannot make it; mksquashfs would refuse the stream
                self._skip("symlink(s) with an empty target")
                return
            node = Node(SYMLINK, 0o777, 0, target=member.linkname)
            self._link(folder, base, self._set_meta(node, member))
        elif member.isfifo():
            self._link(folder, base, self._set_meta(Node(FIFO, 0, 0), member))
        elif member.ischr() or member.isblk():
            self._device(folder, base, member)
        else:
            self._skip("tar member(s) of an unsupported type")

    def _set_meta(self, node: Node, member: tarfile.TarInfo) -> Node:
        node.mode = member.mode & 0o7777
        node.mtime = _clamp_time(member.mtime)
        node.uid, node.gid = max(int(member.uid), 0), max(int(member.gid), 0)
        node.xattrs = {}
        for name, value in member_xattrs(member).items():
            if name.startswith(XATTR_NAMESPACES) and not name.startswith(HOST_ONLY_XATTRS):
                node.xattrs[name] = value
            else:
                self.dropped_xattrs.add(name)
        return node

    def _file(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> Node:
        self._next_file += 1
        path = self.store / f"{self._next_file:08d}"
        source = tar.extractfile(member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            if source is not None:
                shutil.copyfileobj(source, out, BLOCK)
        return Node(FILE, 0, 0, data=path)

    def _hardlink(self, folder: Node, base: str, member: tarfile.TarInfo) -> None:
        what = f"hard link {_shown(member.name)} -> {_shown(member.linkname)}"
        parts = _parts(member.linkname, what)
        if not parts:
            raise UnsafeLayer(f"{what}: a link to the root")
        source = self.lookup(member.linkname)
        if source is None:
            raise UnsafeLayer(f"{what}: the target does not exist")
        if source.kind == DIR:
            raise UnsafeLayer(f"{what}: a link to a directory")
        assert folder.children is not None
        if folder.children.get(base) is not source:
            self._link(folder, base, source)

    def _device(self, folder: Node, base: str, member: tarfile.TarInfo) -> None:
        major, minor = int(member.devmajor), int(member.devminor)
        # squashfs encodes a device as Linux's new_encode_dev: 12-bit major, 20-bit minor.
        if not (0 <= major < 1 << 12 and 0 <= minor < 1 << 20):
            self._skip("device node(s) with numbers squashfs cannot store")
            return
        node = Node(CHAR if member.ischr() else BLOCK_DEV, 0, 0, device=(major, minor))
        self._link(folder, base, self._set_meta(node, member))

    def _whiteout(self, parts: list[str], name: str) -> None:
        base = parts[-1]
        if base.startswith(AUFS_META) and base != OPAQUE:
            return
        victim = base[len(WHITEOUT) :]
        if base != OPAQUE and victim in ("", ".", ".."):
            raise UnsafeLayer(f"bad whiteout {_shown(name)}: it names no entry")
        try:
            folder = self.folder(parts[:-1], name, create=False)
        except (FileNotFoundError, UnsafeLayer):
            return  # nothing below to hide
        if base == OPAQUE:
            self._hide_lower(folder)
        elif (folder, victim) not in self.layer_added:  # never what this layer added
            self._unlink(folder, victim)

    def _hide_lower(self, top: Node) -> None:
        """Opaque directory: drop everything below it that this layer did not add."""
        todo = [top]
        while todo:
            folder = todo.pop()
            assert folder.children is not None
            for name, node in list(folder.children.items()):
                if (folder, name) not in self.layer_added:
                    self._unlink(folder, name)
                elif node.kind == DIR:
                    todo.append(node)

    def _skip(self, what: str) -> None:
        self.skipped[what] = self.skipped.get(what, 0) + 1

    # -- what we add ---------------------------------------------------------------
    def add_dir(self, name: str) -> None:
        """A directory Apptainer needs, unless the image has something there already."""
        parts = _parts(name)
        folder = self.folder(parts[:-1], name, create=True)
        assert folder.children is not None
        if parts[-1] not in folder.children:
            self._link(folder, parts[-1], Node(DIR, 0o755, self.epoch, children={}))

    def add_file(self, name: str, content: str, mode: int, *, replace: bool = True) -> None:
        parts = _parts(name)
        folder = self.folder(parts[:-1], name, create=True)
        assert folder.children is not None
        if not replace and parts[-1] in folder.children:
            return
        self._next_file += 1
        path = self.store / f"{self._next_file:08d}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(content.encode())
        self._link(folder, parts[-1], Node(FILE, mode, self.epoch, data=path))

    def add_symlink(self, name: str, target: str) -> None:
        parts = _parts(name)
        folder = self.folder(parts[:-1], name, create=True)
        assert folder.children is not None
        if parts[-1] not in folder.children:
            self._link(folder, parts[-1], Node(SYMLINK, 0o777, self.epoch, target=target))

    def finish(self) -> None:
        """Say once what the SIF does not keep."""
        for what, count in sorted(self.skipped.items()):
            self.warn(f"skipped {count} {what}")
        if self.dropped_xattrs:
            names = ", ".join(sorted(self.dropped_xattrs)[:5])
            more = "…" if len(self.dropped_xattrs) > 5 else ""
            self.warn(
                f"dropped extended attributes the SIF cannot keep or that belong to the "
                f"host that built the layer: {names}{more}"
            )

    # -- the tar stream --------------------------------------------------------------
    def entries_in_order(self) -> Iterator[tuple[str, Node]]:
        """(path, node) below the root, breadth first, names in byte order: parents come
        before their content and the order never depends on the builder."""
        todo: deque[tuple[str, Node]] = deque([("", self.root)])
        while todo:
            prefix, folder = todo.popleft()
            assert folder.children is not None
            for name in sorted(folder.children, key=lambda n: n.encode(ENCODING, ERRORS)):
                node = folder.children[name]
                yield f"{prefix}{name}", node
                if node.kind == DIR:
                    todo.append((f"{prefix}{name}/", node))

    def write_tar(self, out: BinaryIO) -> None:
        """The root as a PAX tar: owners squashed to root (setuid/setgid dropped where the
        owner or group was not root), modes, times, devices and xattrs as the layers said."""
        first_name: dict[int, str] = {}
        with tarfile.open(
            fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding=ENCODING, errors=ERRORS
        ) as tar:
            tar.copybufsize = BLOCK  # type: ignore[attr-defined]
            for path, node in self.entries_in_order():
                info = tarfile.TarInfo(path)
                info.uid = info.gid = 0
                info.uname = info.gname = ""  # else mksquashfs maps names to this host's ids
                info.mtime = node.mtime
                info.mode = squashed_mode(node)
                if node.names > 1 and node.kind != DIR and id(node) in first_name:
                    info.type, info.linkname = tarfile.LNKTYPE, first_name[id(node)]
                    tar.addfile(info)
                    continue
                first_name[id(node)] = path
                info.type = TAR_TYPES[node.kind]
                info.linkname = node.target
                info.devmajor, info.devminor = node.device
                info.pax_headers = {
                    f"SCHILY.xattr.{k}": v.decode(ENCODING, ERRORS)
                    for k, v in sorted(node.xattrs.items())
                }
                if node.kind == FILE:
                    assert node.data is not None
                    with open(node.data, "rb") as content:
                        info.size = os.fstat(content.fileno()).st_size
                        tar.addfile(info, content)
                else:
                    tar.addfile(info)

    def root_meta(self) -> tuple[int, int]:
        """(mode, mtime) of the root directory, which `mksquashfs -tar` takes separately."""
        return self.root.mode & 0o7777, self.root.mtime


def squashed_mode(node: Node) -> int:
    """Ownership becomes root's: a setuid file of uid 1000 must not become setuid-root,
    nor a setgid file of another group setgid-root. Directories keep setgid (harmless)."""
    mode = node.mode & 0o7777
    if node.kind != DIR:
        if node.uid != 0:
            mode &= ~stat.S_ISUID
        if node.gid != 0:
            mode &= ~stat.S_ISGID
    return mode
