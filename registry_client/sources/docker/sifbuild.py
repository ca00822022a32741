"""OCI image layers → root filesystem → squashfs → SIF, the way Apptainer builds docker://.

1. Apply the layers in order to a tree in memory (rootfs.py): whiteouts, opaque folders,
   hard links, devices, FIFOs, xattrs; unsafe members refused (IntegrityError, nothing
   published); each uncompressed layer checked against its diff_id.
2. Add what Apptainer expects in an image (/.singularity.d with actions, env, runscript
   and labels; mount points).
3. Stream the tree as one canonical tar into `mksquashfs - OUT -tar` (squashfs-tools 4.5.1
   or later), then set the root directory's mode and time in a second, empty append pass
   (`-tar` ignores `-root-time`). Nothing is written to a folder first, so the result does
   not depend on the builder's uid, umask, clock or filesystem.
4. Write the SIF: a definition file naming the image by digest, the image config as the
   JSON object "oci-config.json" (Apptainer's name for it), and the squashfs as primary
   system partition with the image's arch.

Everything in the SIF derives from the manifest digest and the layers: the same manifest
gives the same bytes for every user, at every rebuild, on every host with the same
mksquashfs and zlib (another version may compress differently: `squashfs_id` is part of
every build's cache key).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client import sif
from registry_client.errors import IntegrityError, RegistryClientError, UsageError
from registry_client.sources.docker.rootfs import LayerFile, RootfsTree, UnsafeLayer

__all__ = ["BUILDER_VERSION", "BuildSpec", "LayerFile", "UnsafeLayer", "build_sif"]

#: Bump when the image we build changes: cached builds are keyed on it.
BUILDER_VERSION = "2"
CONFIG_OBJECT = "oci-config.json"
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MKSQUASHFS_TAR = (4, 5, 1)  # the first release that reads a tar stream

Warn = Callable[[str], None]


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


def add_runtime_files(writer: RootfsTree, config: dict[str, Any], warn: Warn) -> None:
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
    tool = find_mksquashfs()
    if not tool:
        raise UsageError(
            "mksquashfs is needed to build a SIF from docker:// images",
            hint="install squashfs-tools 4.5.1 or later (apt-get install squashfs-tools)",
        )
    version = mksquashfs_version(tool)
    if version < MKSQUASHFS_TAR:
        raise UsageError(
            f"mksquashfs {'.'.join(map(str, version))} cannot read a tar stream; docker:// "
            "builds need squashfs-tools 4.5.1 or later",
            hint="install squashfs-tools 4.5.1 or later (Debian 12 has 4.5.1)",
        )
    return tool


def find_mksquashfs() -> str | None:
    return shutil.which("mksquashfs") or shutil.which("mksquashfs", path="/usr/sbin:/sbin")


@functools.lru_cache(maxsize=1)
def squashfs_id() -> str:
    """What decides a build's bytes besides its inputs and BUILDER_VERSION: the version of
    mksquashfs and of the zlib it compresses with (the system's, as Python's zlib is on
    Debian). Part of every build's cache key, so a node whose squashfs-tools changed builds
    anew; read once per process (one `mksquashfs -version`, a few ms). "none" where there
    is no mksquashfs: nothing can be built there."""
    import zlib

    tool = find_mksquashfs()
    if not tool:
        return "none"
    version = ".".join(map(str, mksquashfs_version(tool)))
    return f"mksquashfs-{version}+zlib-{zlib.ZLIB_RUNTIME_VERSION}"


@functools.lru_cache(maxsize=4)
def mksquashfs_version(tool: str) -> tuple[int, ...]:
    proc = subprocess.run(
        [tool, "-version"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", proc.stdout + proc.stderr)
    return tuple(int(n or 0) for n in match.groups()) if match else (0, 0, 0)


def make_squashfs(tool: str, tree: RootfsTree, work: Path, out: Path, epoch: int) -> None:
    """The tree as a squashfs: streamed as tar, then the root's metadata in an empty
    append pass. No recovery file (it would land in $HOME), no progress output."""
    quiet = ["-no-recovery", "-no-progress", "-quiet", "-mkfs-time", str(max(epoch, 0))]
    mode, mtime = tree.root_meta()
    # The root's owner in both passes: the builder's uid would stay in the id table.
    root = ["-all-root", "-root-mode", f"{mode:o}", "-root-uid", "0", "-root-gid", "0"]
    tar = [tool, "-", str(out), "-tar", "-noappend", "-comp", "gzip", *root, *quiet]
    _run_mksquashfs(tar, work, tree)
    empty = work / "empty"
    empty.mkdir(mode=0o700)
    _run_mksquashfs([tool, str(empty), str(out), *root, "-root-time", str(mtime), *quiet], work)


def _run_mksquashfs(argv: list[str], work: Path, tree: RootfsTree | None = None) -> None:
    # Output goes to a file: a pipe could fill up (one warning per odd tar header) and
    # stall mksquashfs while we are still writing its input.
    log = work / "mksquashfs.log"
    with open(log, "wb") as sink:
        stdin = subprocess.PIPE if tree else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=stdin, stdout=sink, stderr=sink)
        try:
            if tree is not None:
                assert proc.stdin is not None
                try:
                    tree.write_tar(proc.stdin)  # type: ignore[arg-type]
                    proc.stdin.close()
                except BrokenPipeError:
                    pass  # mksquashfs stopped reading: its exit status says why
        except BaseException:
            proc.kill()
            raise
        finally:
            code = proc.wait()
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
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


def deffile(pinned: str) -> bytes:
    """The digest form of the reference only: pulling by tag or by digest, from any
    node, gives the same definition (and so the same SIF)."""
    built = f"# Built by registry-client (builder {BUILDER_VERSION})"
    return f"Bootstrap: docker\nFrom: {pinned}\n{built}\n".encode()


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
    """Build the SIF at dest, using `work` (an empty private folder) for the file store."""
    tool = require_mksquashfs()
    arch = sif_arch(spec.image, spec.arch)
    epoch = image_epoch(spec.image)
    config = spec.image.get("config") or {}
    tree = RootfsTree(work / "files", warn, epoch)
    for layer in check_diff_ids(spec):
        tree.apply(layer)
    add_runtime_files(tree, config, warn)
    tree.finish()
    squashfs = work / "rootfs.squashfs"
    make_squashfs(tool, tree, work, squashfs, epoch)
    objects = [
        sif.SifObject(sif.DataType.DEFFILE, deffile(spec.pinned)),
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
    """Remove a build folder (only our own files and folders are in it)."""
    shutil.rmtree(path, ignore_errors=True)
