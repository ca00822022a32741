"""OCI image layers → root filesystem → squashfs → SIF, the way Apptainer builds docker://.

1. Unpack the layers in order into a private temp root, applying whiteouts (`.wh.NAME`
   deletes NAME of lower layers, `.wh..wh..opq` hides a directory's lower content) and
   checking each uncompressed layer against its diff_id from the image config.
2. Refuse unsafe members (absolute paths, `..`, links that lead out of the root): the
   whole build fails with IntegrityError and nothing is published. Symlinks met on the
   way to a member are resolved *inside* the root, as in a chroot, so a layer can never
   write outside it.
3. Add what Apptainer expects in an image (/.singularity.d with actions, env, runscript
   and labels; mount points), run `mksquashfs ROOT OUT -noappend -all-root -comp gzip`,
   and write the SIF: a definition file, the image config as the JSON object
   "oci-config.json" (Apptainer's name for it), and the squashfs as primary system
   partition with the image's arch.

Times and the SIF UUID derive from the image, so building one manifest twice gives the
same bytes (mksquashfs is reproducible by default).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from registry_client import sif
from registry_client.errors import IntegrityError, RegistryClientError, UsageError

#: Bump when the image we build changes: cached builds are keyed on it.
BUILDER_VERSION = "1"
CONFIG_OBJECT = "oci-config.json"
MAX_SYMLINK_HOPS = 40
BLOCK = 1024 * 1024
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# aufs bookkeeping entries (.wh..wh.plnk, .wh..wh.aufs) carry no meaning for the image.
WHITEOUT, OPAQUE, AUFS_META = ".wh.", ".wh..wh..opq", ".wh..wh."

Warn = Callable[[str], None]


@dataclass(frozen=True)
class LayerFile:
    path: Path
    digest: str  # sha256:... of the blob, for messages
    diff_id: str | None = None  # sha256:... of the uncompressed tar, from the image config


class UnsafeLayer(IntegrityError):
    """A layer member that would leave the root or cannot be applied safely."""


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
def _uncompressed(path: Path) -> Iterator[BinaryIO]:
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


# -- applying layers to a root ---------------------------------------------------------------


def _parts(name: str, what: str | None = None) -> list[str]:
    """Path components of a member name; unsafe names raise UnsafeLayer."""
    what = what or f"layer member {name[:200]!r}"
    if name.startswith("/"):
        raise UnsafeLayer(f"{what} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(f"{what} climbs out with '..'")
    return parts


class RootfsWriter:
    """Applies layers to `root`; never writes outside it, never follows a final symlink."""

    def __init__(self, root: Path, warn: Warn, epoch: int) -> None:
        self.root = root
        self.warn = warn
        self.epoch = epoch
        self.dir_meta: dict[str, tuple[int, int]] = {}  # rel path -> (mode, mtime)
        self.layer_paths: set[str] = set()
        self.skipped_devices = 0
        self.is_root = os.geteuid() == 0

    # -- paths -------------------------------------------------------------------
    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def resolve_dir(self, parts: list[str], member: str, *, create: bool = True) -> Path:
        """The real directory `parts` names, symlinks resolved inside the root."""
        done: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if not done:
                    raise UnsafeLayer(
                        f"layer member {member[:200]!r} leads out of the root through a symlink"
                    )
                done.pop()
                continue
            path = self.root.joinpath(*done, comp)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(path, 0o755)  # tar omits parents; lower layers may lack them
                done.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise UnsafeLayer(f"layer member {member[:200]!r}: too many symlinks")
                target = os.readlink(path)
                if target.startswith("/"):
                    done = []
                todo = [p for p in target.split("/") if p] + todo
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeLayer(f"layer member {member[:200]!r}: {comp} is not a directory")
            done.append(comp)
        return self.root.joinpath(*done)

    def target(self, name: str) -> Path | None:
        """Where member `name` goes (its parent resolved), or None for the root itself."""
        parts = _parts(name)
        if not parts:
            return None
        return self.resolve_dir(parts[:-1], name) / parts[-1]

    def _clear(self, path: Path, keep_dir: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if not keep_dir:
                shutil.rmtree(path)  # rmtree never follows symlinks inside the tree
        else:
            os.unlink(path)

    # -- layers ------------------------------------------------------------------
    def apply(self, layer: LayerFile) -> None:
        self.layer_paths = set()
        try:
            with _uncompressed(layer.path) as stream:
                reader = _HashingReader(stream)
                with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        self._member(tar, member)
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
        base = member.name.rstrip("/").rpartition("/")[2]
        if base.startswith(WHITEOUT):
            self._whiteout(member.name, base)
            return
        path = self.target(member.name)
        if path is None:  # "./": the root directory itself
            if member.isdir():
                self.dir_meta["."] = (member.mode, int(member.mtime))
            return
        self.layer_paths.add(self._rel(path))
        if member.isdir():
            self._directory(path, member)
        elif member.isreg():
            self._file(tar, path, member)
        elif member.issym():
            self._clear(path)
            os.symlink(member.linkname, path)
            self._times(path, member.mtime)
        elif member.islnk():
            self._hardlink(path, member)
        else:
            self._special(path, member)

    def _whiteout(self, name: str, base: str) -> None:
        parts = _parts(name)
        try:
            folder = self.resolve_dir(parts[:-1], name, create=False)
        except FileNotFoundError:
            return  # nothing below to hide
        if base == OPAQUE:
            self._hide_lower(folder)
        elif not base.startswith(AUFS_META):
            victim = folder / base[len(WHITEOUT) :]
            if victim.name in ("", ".", "..") or "/" in victim.name:
                raise UnsafeLayer(f"bad whiteout {name[:200]!r}")
            # Whiteouts hide lower layers only, never what this layer itself added.
            if self._rel(victim) not in self.layer_paths:
                self._clear(victim)

    def _hide_lower(self, folder: Path) -> None:
        """Opaque directory: drop everything below it that this layer did not add."""
        with os.scandir(folder) as entries:
            for entry in list(entries):
                path = Path(entry.path)
                if self._rel(path) not in self.layer_paths:
                    self._clear(path)
                elif entry.is_dir(follow_symlinks=False):
                    self._hide_lower(path)

    def _directory(self, path: Path, member: tarfile.TarInfo) -> None:
        self._clear(path, keep_dir=True)
        if not os.path.lexists(path):
            os.mkdir(path, 0o755)
        # Modes and times are set at the end: a read-only directory must still take the
        # files that follow it, and writing into a directory changes its mtime.
        self.dir_meta[self._rel(path)] = (member.mode, int(member.mtime))

    def _file(self, tar: tarfile.TarFile, path: Path, member: tarfile.TarInfo) -> None:
        self._clear(path)
        source = tar.extractfile(member)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                if source is not None:
                    shutil.copyfileobj(source, out, BLOCK)
            # Without root, mksquashfs must still read every file: add owner read.
            os.fchmod(fd, member.mode & 0o7777 if self.is_root else member.mode & 0o7777 | 0o400)
        finally:
            os.close(fd)
        self._times(path, member.mtime)

    def _hardlink(self, path: Path, member: tarfile.TarInfo) -> None:
        parts = _parts(
            member.linkname, f"hard link {member.name[:200]!r} -> {member.linkname[:200]!r}"
        )
        if not parts:
            raise UnsafeLayer(f"hard link {member.name[:200]!r} to the root")
        try:
            source = self.resolve_dir(parts[:-1], member.linkname, create=False) / parts[-1]
            st = os.lstat(source)
        except FileNotFoundError:
            raise UnsafeLayer(
                f"hard link {member.name[:200]!r} to a missing {member.linkname[:200]!r}"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeLayer(f"hard link {member.name[:200]!r} to a directory")
        if source == path:
            return
        self._clear(path)
        os.link(source, path, follow_symlinks=False)

    def _special(self, path: Path, member: tarfile.TarInfo) -> None:
        self._clear(path)
        if member.isfifo():
            os.mkfifo(path, member.mode & 0o777)
            return
        if not (member.ischr() or member.isblk()):
            self.warn(f"skipped {member.name[:200]!r}: unsupported tar member type")
            return
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            if not self.is_root:
                raise PermissionError
            os.mknod(
                path, kind | (member.mode & 0o777), os.makedev(member.devmajor, member.devminor)
            )
        except PermissionError:
            # Only root may create device nodes; Apptainer mounts its own /dev anyway.
            self.skipped_devices += 1

    def _times(self, path: Path, mtime: float) -> None:
        with contextlib.suppress(OSError, OverflowError, ValueError):
            os.utime(path, (int(mtime), int(mtime)), follow_symlinks=False)

    # -- the end ----------------------------------------------------------------
    def finish(self) -> None:
        """Directory modes and times last, deepest first, so nothing disturbs them."""
        if self.skipped_devices:
            self.warn(
                f"skipped {self.skipped_devices} device file(s): only root can create "
                "them (Apptainer provides /dev at run time)"
            )
        for dirpath, _dirs, _files in sorted(os.walk(self.root), key=lambda w: -len(w[0])):
            path = Path(dirpath)
            mode, mtime = self.dir_meta.get(self._rel(path), (0o755, self.epoch))
            # Without root, mksquashfs must still list and enter every directory.
            os.chmod(path, mode & 0o7777 if self.is_root else mode & 0o7777 | 0o700)
            self._times(path, mtime)

    # -- files we add ---------------------------------------------------------------
    def add_dir(self, name: str) -> None:
        """A directory Apptainer needs, unless the image has something there already."""
        path = self.target(name)
        if path is not None and not os.path.lexists(path):
            os.mkdir(path, 0o755)

    def add_file(self, name: str, content: str, mode: int, *, replace: bool = True) -> None:
        path = self.target(name)
        if path is None or (not replace and os.path.lexists(path)):
            return
        self._clear(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(content)
            os.fchmod(out.fileno(), mode)
        self._times(path, self.epoch)

    def add_symlink(self, name: str, target: str) -> None:
        path = self.target(name)
        if path is not None and not os.path.lexists(path):
            os.symlink(target, path)
            self._times(path, self.epoch)


# -- what Apptainer expects inside the image ------------------------------------------------

_SOURCE_ENV = """for script in /.singularity.d/env/*.sh; do
    if [ -f "$script" ]; then . "$script"; fi
done
"""
ACTIONS = {
    "exec": f'#!/bin/sh\n{_SOURCE_ENV}exec "$@"\n',
    "run": (
        f"#!/bin/sh\n{_SOURCE_ENV}"
        'if [ -x /.singularity.d/runscript ]; then exec /.singularity.d/runscript "$@"; fi\n'
        'echo "no runscript in this image: starting /bin/sh" >&2\nexec /bin/sh "$@"\n'
    ),
    "shell": (
        f"#!/bin/sh\n{_SOURCE_ENV}"
        'if [ -n "${SINGULARITY_SHELL:-}" ] && [ -x "$SINGULARITY_SHELL" ]; then\n'
        '    exec "$SINGULARITY_SHELL" "$@"\nfi\n'
        'if [ -x /bin/bash ]; then exec /bin/bash --norc "$@"; fi\nexec /bin/sh "$@"\n'
    ),
    "start": (
        f"#!/bin/sh\n{_SOURCE_ENV}"
        "if [ -x /.singularity.d/startscript ]; then exec /.singularity.d/startscript "
        '"$@"; fi\n'
    ),
    "test": (
        f"#!/bin/sh\n{_SOURCE_ENV}"
        'if [ -x /.singularity.d/test ]; then exec /.singularity.d/test "$@"; fi\n'
        'echo "no test script in this image" >&2\n'
    ),
}
MOUNT_POINTS = ("dev", "proc", "sys", "tmp", "var/tmp", "home", "root", "etc")
ROOT_LINKS = {
    "singularity": ".singularity.d/runscript",
    ".run": ".singularity.d/actions/run",
    ".exec": ".singularity.d/actions/exec",
    ".shell": ".singularity.d/actions/shell",
    ".test": ".singularity.d/actions/test",
    "environment": ".singularity.d/env/90-environment.sh",
}


def _quoted(words: Any) -> str:
    return " ".join(shlex.quote(str(w)) for w in words or [])


def runscript(config: dict[str, Any]) -> str:
    """ENTRYPOINT + (arguments or CMD), as `docker run IMAGE [ARGS]` would start it."""
    entrypoint, cmd = _quoted(config.get("Entrypoint")), _quoted(config.get("Cmd"))
    return (
        "#!/bin/sh\n# From the image's ENTRYPOINT and CMD (registry-client).\n"
        f'if [ $# -gt 0 ]; then\n    set -- {entrypoint} "$@"\n'
        f"else\n    set -- {entrypoint} {cmd}\nfi\n"
        'if [ $# -eq 0 ]; then set -- /bin/sh; fi\nexec "$@"\n'
    )


def env_script(config: dict[str, Any], warn: Warn) -> str:
    """The image's ENV: PATH is set, other variables only if the host did not set them."""
    lines = ["#!/bin/sh", "# From the image's ENV (registry-client)."]
    for item in config.get("Env") or []:
        name, _, value = str(item).partition("=")
        if not ENV_NAME_RE.match(name):
            warn(f"skipped environment variable {name[:60]!r}: not a shell name")
            continue
        if name == "PATH":
            lines.append(f"PATH={shlex.quote(value)}")
        else:
            lines.append(f'if [ -z "${{{name}+set}}" ]; then {name}={shlex.quote(value)}; fi')
        lines.append(f"export {name}")
    return "\n".join(lines) + "\n"


def add_runtime_files(writer: RootfsWriter, config: dict[str, Any], warn: Warn) -> None:
    for name in (
        *MOUNT_POINTS,
        ".singularity.d",
        ".singularity.d/actions",
        ".singularity.d/env",
        ".singularity.d/libs",
    ):
        writer.add_dir(name)
    for name in ("etc/hosts", "etc/resolv.conf"):  # Apptainer binds the host's over them
        writer.add_file(name, "", 0o644, replace=False)
    for action, text in ACTIONS.items():
        writer.add_file(f".singularity.d/actions/{action}", text, 0o755)
    writer.add_file(".singularity.d/env/10-docker2singularity.sh", env_script(config, warn), 0o755)
    writer.add_file(
        ".singularity.d/env/90-environment.sh",
        "#!/bin/sh\n# Custom environment shell code should follow\n",
        0o755,
    )
    writer.add_file(".singularity.d/runscript", runscript(config), 0o755)
    writer.add_file(".singularity.d/startscript", "#!/bin/sh\n", 0o755)
    writer.add_file(
        ".singularity.d/labels.json",
        json.dumps(config.get("Labels") or {}, indent=1, sort_keys=True) + "\n",
        0o644,
    )
    for name, target in ROOT_LINKS.items():
        writer.add_symlink(name, target)


# -- squashfs and SIF ------------------------------------------------------------------------


def require_mksquashfs() -> str:
    tool = shutil.which("mksquashfs") or shutil.which("mksquashfs", path="/usr/sbin:/sbin")
    if not tool:
        raise UsageError(
            "mksquashfs is needed to build a SIF from docker:// images",
            hint="install squashfs-tools (apt-get install squashfs-tools)",
        )
    return tool


def make_squashfs(tool: str, root: Path, out: Path, epoch: int) -> None:
    argv = [
        tool,
        str(root),
        str(out),
        "-noappend",
        "-all-root",
        "-comp",
        "gzip",
        "-no-progress",
        "-quiet",
        "-mkfs-time",
        str(max(epoch, 0)),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RegistryClientError(f"mksquashfs failed: {' / '.join(tail)[:400]}")


def image_epoch(image: dict[str, Any]) -> int:
    """The image's creation time (RFC 3339), else 0: our timestamps, so builds repeat."""
    text = str(image.get("created") or "")
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", text)
    if not match:
        return 0
    stamp = _dt.datetime.fromisoformat(match.group(1)).replace(tzinfo=_dt.timezone.utc)
    return max(int(stamp.timestamp()), 0)


def sif_arch(image: dict[str, Any], fallback: str) -> str:
    arch = str(image.get("architecture") or fallback)
    try:
        sif.arch_code(arch)
    except ValueError:
        raise UsageError(f"SIF has no code for architecture {arch!r}") from None
    return arch


def deffile(source: str, pinned: str) -> bytes:
    return (
        f"Bootstrap: docker\nFrom: {pinned}\n"
        f"# Built by registry-client (builder {BUILDER_VERSION}) from {source}\n"
    ).encode()


@dataclass(frozen=True)
class BuildSpec:
    layers: list[LayerFile]
    image: dict[str, Any]  # the OCI image config (architecture, config, rootfs, created)
    source: str  # the reference the user gave
    pinned: str  # REGISTRY/REPO@sha256:<manifest digest>
    arch: str  # fallback arch if the config has none


def check_diff_ids(spec: BuildSpec) -> list[LayerFile]:
    """Pair each layer with its diff_id; a count mismatch means a broken image."""
    rootfs = spec.image.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(spec.layers):
        raise IntegrityError(
            f"{spec.source}: the image config lists "
            f"{len(diff_ids or [])} layers, the manifest "
            f"{len(spec.layers)}"
        )
    return [
        LayerFile(layer.path, layer.digest, str(diff))
        for layer, diff in zip(spec.layers, diff_ids, strict=True)
    ]


def build_sif(spec: BuildSpec, work: Path, dest: Path, warn: Warn) -> sif.SifImage:
    """Build the SIF at dest, using `work` (an empty private folder) for the root."""
    tool = require_mksquashfs()
    arch = sif_arch(spec.image, spec.arch)
    epoch = image_epoch(spec.image)
    config = spec.image.get("config") or {}
    root = work / "rootfs"
    root.mkdir(mode=0o755)
    writer = RootfsWriter(root, warn, epoch)
    for layer in check_diff_ids(spec):
        writer.apply(layer)
    add_runtime_files(writer, config, warn)
    writer.finish()
    squashfs = work / "rootfs.squashfs"
    make_squashfs(tool, root, squashfs, epoch)
    objects = [
        sif.SifObject(sif.DataType.DEFFILE, deffile(spec.source, spec.pinned)),
        sif.SifObject(
            sif.DataType.GENERIC_JSON,
            json.dumps(config, sort_keys=True).encode(),
            name=CONFIG_OBJECT,
        ),
        sif.SifObject(
            sif.DataType.PARTITION,
            squashfs,
            partition=(sif.FsType.SQUASHFS, sif.PartType.PRIMARY_SYSTEM, arch),
        ),
    ]
    ident = uuid.uuid5(uuid.NAMESPACE_URL, f"registry-client:{BUILDER_VERSION}:{spec.pinned}")
    return sif.write_sif(dest, objects, arch=arch, created=epoch, uuid=ident)


def remove_tree(path: Path) -> None:
    """Remove a build folder. Directories stay owner-writable until finish(), so plain
    rmtree works, and it never follows the symlinks an image contains."""
    shutil.rmtree(path, ignore_errors=True)
