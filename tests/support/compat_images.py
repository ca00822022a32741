"""Images made by tools nobody here wrote, for the docker:// compatibility suite.

buildah (vfs storage in a private folder, no daemon, no runtime) builds the layers from
real filesystem trees: odd modes, setuid/setgid files of other owners, FIFOs, device
nodes, hard links, symlinks, non-ASCII and non-UTF-8 names, user xattrs and file
capabilities (setcap); a second layer deletes and replaces (buildah writes the
whiteouts); `umoci raw add-layer` appends a layer with an opaque directory. skopeo pushes
to the loopback registry (gzip) and writes a zstd copy of the layout, which goes up
through the distribution API (skopeo's blob cache would swap the zstd blobs for the gzip
ones it already pushed). A multi-arch list is made and pushed with `buildah manifest`.

Everything runs as root (CI does): device nodes, capabilities and foreign owners need it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("buildah", "skopeo", "umoci", "siftool", "setcap", "setfattr", "unsquashfs")
PAST = 1_500_000_000  # 2017-07-14: a time no build of ours could invent
CONFIG = {"cmd": "/bin/sh -c 'echo hello'", "label": "org.example.suite=compat"}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if not shutil.which(tool)]


def run(*argv: str | Path, cwd: Path | None = None, input: bytes | None = None) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], cwd=cwd, input=input, capture_output=True, timeout=300
    )
    if proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    return proc.stdout.decode(errors="replace").strip()


@dataclass
class Layout:
    """An OCI image layout folder and a tag in it."""

    path: Path
    tag: str

    @property
    def ref(self) -> str:
        """For skopeo and buildah (containers/image transports)."""
        return f"oci:{self.path}:{self.tag}"

    @property
    def umoci_ref(self) -> str:
        return f"{self.path}:{self.tag}"

    def manifest(self) -> dict:
        index = json.loads((self.path / "index.json").read_text())
        entry = next(
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == self.tag
        )
        return json.loads(self.blob(entry["digest"]))

    def blob(self, digest: str) -> bytes:
        return (self.path / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


class Buildah:
    """buildah with its storage in `work` (vfs: plain folders, no mounts needed)."""

    def __init__(self, work: Path) -> None:
        self.base = [
            "buildah",
            "--root",
            str(work / "storage"),
            "--runroot",
            str(work / "run"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str | Path) -> str:
        return run(*self.base, *args)

    def container(self, image: str = "scratch", arch: str = "amd64") -> tuple[str, Path]:
        name = self("from", "--arch", arch, "--quiet", image)
        return name, Path(self("mount", name))


# -- the trees -------------------------------------------------------------------------------


def populate_base(root: Path) -> None:
    """Layer one: the odd and the unusual, as a distribution's files would be."""
    for folder in ("etc", "usr/bin", "usr/lib", "dev", "var/spool", "opt/deep/a/b/c", "srv"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "etc/motd").write_text("base\n")
    (root / "etc/gone.conf").write_text("deleted by layer two\n")
    (root / "etc/replaced").write_text("old\n")
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "usr/bin/tool", 0o755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    (root / "usr/lib/libx.so.1").write_bytes(os.urandom(70_000))
    os.symlink("libx.so.1", root / "usr/lib/libx.so")
    os.symlink("/usr/lib", root / "lib")
    os.symlink("does/not/exist", root / "dangling")
    # Odd modes and owners: setuid of another user, setgid of another group, nothing at all.
    _file(root / "usr/bin/user-suid", b"suid of uid 1000\n", 0o4755, uid=1000, gid=1000)
    _file(root / "usr/bin/root-suid", b"suid of root\n", 0o4755)
    _file(root / "usr/bin/shadow-sgid", b"sgid shadow\n", 0o2755, gid=42)
    _file(root / "etc/nothing", b"mode 0000\n", 0o000)
    os.chmod(root / "var/spool", 0o1777)
    _file(root / "srv/readonly-dir-file", b"in a 0500 folder\n", 0o444)
    os.chmod(root / "srv", 0o500)
    # Special files.
    os.mkfifo(root / "fifo", 0o620)
    os.chmod(root / "fifo", 0o620)
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.chmod(root / "dev/null", 0o666)
    os.mknod(root / "dev/loop7", 0o660 | 0o060000, os.makedev(7, 7))
    os.chmod(root / "dev/loop7", 0o660)
    # Names: UTF-8 and not UTF-8 at all.
    (root / "etc/naïve-ü.txt").write_text("ünïcode\n")
    with open(os.path.join(os.fsencode(root), b"etc", b"caf\xe9-latin1"), "wb") as out:
        out.write(b"latin-1 name\n")
    # Extended attributes and file capabilities.
    _file(root / "usr/bin/ping", b"\x7fELF pretend ping\n", 0o755)
    run("setcap", "cap_net_raw=ep", root / "usr/bin/ping")
    run("setfattr", "-n", "user.origin", "-v", "compat-suite", root / "etc/motd")
    run("setfattr", "-n", "user.binary", "-v", "0x00ff10", root / "usr/lib/libx.so.1")
    (root / "opt/deep/a/b/c/leaf").write_text("deep\n")
    _times(root, PAST)


def populate_upper(root: Path) -> None:
    """Layer two, in a container from layer one: deletions become whiteouts."""
    (root / "etc/gone.conf").unlink()
    (root / "etc/replaced").unlink()
    (root / "etc/replaced").mkdir()
    (root / "etc/replaced/now-a-folder").write_text("new\n")
    shutil.rmtree(root / "opt/deep")
    (root / "etc/motd").write_text("layer two\n")
    (root / "usr/bin/new-tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "usr/bin/new-tool", 0o750)
    _times(root / "etc", PAST + 100)


def opaque_layer(path: Path) -> Path:
    """A layer umoci adds verbatim: usr/lib made opaque, one new file in it."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in (
            ("usr/lib", tarfile.DIRTYPE, b""),
            ("usr/lib/.wh..wh..opq", tarfile.REGTYPE, b""),
            ("usr/lib/only-this.so", tarfile.REGTYPE, b"the only file left\n"),
        ):
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, PAST + 200, 0o755
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _file(path: Path, data: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    path.write_bytes(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # after chown, which clears setuid/setgid


def _times(root: Path, when: int) -> None:
    """Fixed times on everything below root (symlinks themselves included)."""
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in [*files, *dirs]:
            os.utime(os.path.join(folder, name), (when, when), follow_symlinks=False)
    os.utime(root, (when, when))


# -- the images ------------------------------------------------------------------------------


@dataclass
class CompatImages:
    full: Layout  # base + upper (buildah) + opaque (umoci), gzip in the registry
    zstd: Layout  # the same image, layers recompressed with zstd by skopeo
    arm64: Layout  # a one-layer arm64 image, for the multi-arch list


def build_images(work: Path) -> CompatImages:
    buildah = Buildah(work)
    name, root = buildah.container()
    populate_base(root)
    buildah("commit", "--quiet", name, "compat-base")
    name, root = buildah.container("compat-base")
    populate_upper(root)
    buildah(
        "config", "--cmd", CONFIG["cmd"], "--label", CONFIG["label"], "--env", "LANG=C.UTF-8", name
    )
    layout = work / "oci"
    buildah("commit", "--quiet", name, f"oci:{layout}:full")
    full = Layout(layout, "full")
    run("umoci", "raw", "add-layer", "--image", full.umoci_ref, opaque_layer(work / "opaque.tar"))
    zstd = Layout(work / "oci-zstd", "full")
    run(
        "skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", "--dest-compress",
        full.ref, zstd.ref,
    )  # fmt: skip
    name, root = buildah.container(arch="arm64")
    (root / "etc").mkdir()
    (root / "etc/arch").write_text("arm64\n")
    buildah("config", "--arch", "arm64", "--cmd", "/bin/sh", name)
    buildah("commit", "--quiet", name, "compat-arm64")
    buildah("push", "--quiet", "compat-arm64", f"oci:{layout}:arm64")
    return CompatImages(full, zstd, Layout(layout, "arm64"))


def push(image: Layout, host: str, repo: str, tag: str) -> None:
    run(
        "skopeo",
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        image.ref,
        f"docker://{host}/{repo}:{tag}",
    )


def push_list(work: Path, images: list[Layout], host: str, repo: str, tag: str) -> None:
    """An OCI index of `images` (each with its platform), made and pushed by buildah."""
    buildah = Buildah(work)
    name = f"compat-list-{tag}"
    buildah("manifest", "create", name)
    for image in images:
        buildah("manifest", "add", name, image.ref)
    buildah(
        "manifest",
        "push",
        "--quiet",
        "--all",
        "--tls-verify=false",
        name,
        f"docker://{host}/{repo}:{tag}",
    )


def umoci_unpack(image: Layout, bundle: Path) -> Path:
    """umoci's reading of the image: bundle/rootfs, owners and devices kept (as root)."""
    run("umoci", "unpack", "--image", image.umoci_ref, bundle)
    return bundle / "rootfs"
