"""Two root filesystems on disk, compared entry by entry (type, mode, time, content, link
target, device numbers, xattrs, hard-link groups), with the SIF's rules applied:
ownership squashed to root, setuid/setgid dropped where the owner/group was not root,
and the files Apptainer's layout adds to every image set aside."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# What the build adds (sifbuild.add_runtime_files) when the image lacks it: a folder
# with everything below it, and single entries (parents made on the way included).
ADDED_TREE = ".singularity.d"
ADDED = (
    "singularity",
    ".run",
    ".exec",
    ".shell",
    ".test",
    "environment",
    "proc",
    "sys",
    "tmp",
    "var/tmp",
    "home",
    "root",
    "etc/hosts",
    "etc/resolv.conf",
    "dev",
    "etc",
    "var",
)
HOST_ONLY_XATTRS = ("security.selinux",)


@dataclass(frozen=True)
class Entry:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    detail: str  # content sha256, link target or device numbers
    xattrs: tuple[tuple[str, bytes], ...]
    inode: int
    nlink: int


def snapshot(root: Path) -> dict[str, Entry]:
    """Every entry below root by relative path (bytes names kept via surrogateescape)."""
    found: dict[str, Entry] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = _entry(path)
    return found


def _entry(path: str) -> Entry:
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        kind, detail = "file", _sha256(path)
    elif stat.S_ISDIR(mode):
        kind, detail = "dir", ""
    elif stat.S_ISLNK(mode):
        kind, detail = "symlink", os.readlink(path)
    elif stat.S_ISFIFO(mode):
        kind, detail = "fifo", ""
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char" if stat.S_ISCHR(mode) else "block"
        detail = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    else:
        kind, detail = "other", ""
    xattrs: tuple[tuple[str, bytes], ...] = ()
    if kind != "symlink":
        names = sorted(os.listxattr(path, follow_symlinks=False))
        xattrs = tuple(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in names
            if n not in HOST_ONLY_XATTRS
        )
    return Entry(
        kind,
        stat.S_IMODE(mode),
        st.st_uid,
        st.st_gid,
        int(st.st_mtime),
        detail,
        xattrs,
        st.st_ino,
        st.st_nlink,
    )


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def squashed(entry: Entry) -> Entry:
    """What a SIF built by registry-client keeps of an entry another tool unpacked."""
    mode = entry.mode
    if entry.kind != "dir":
        if entry.uid != 0:
            mode &= ~stat.S_ISUID
        if entry.gid != 0:
            mode &= ~stat.S_ISGID
    return Entry(entry.kind, mode, 0, 0, entry.mtime, entry.detail, entry.xattrs, 0, 0)


def comparable(entry: Entry) -> Entry:
    return Entry(
        entry.kind, entry.mode, entry.uid, entry.gid, entry.mtime, entry.detail, entry.xattrs, 0, 0
    )


def hardlink_groups(tree: dict[str, Entry]) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for path, entry in tree.items():
        if entry.kind != "dir" and entry.nlink > 1:
            groups.setdefault(entry.inode, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def differences(reference: dict[str, Entry], ours: dict[str, Entry]) -> list[str]:
    """Human-readable differences; empty when `ours` is `reference` under the SIF rules."""
    problems = []
    for path, entry in sorted(reference.items()):
        if path not in ours:
            problems.append(f"{path}: missing from the SIF")
            continue
        want, got = squashed(entry), comparable(ours[path])
        if want != got:
            problems.append(f"{path}: expected {want}, got {got}")
    for path in sorted(set(ours) - set(reference)):
        if path not in ADDED and not (path + "/").startswith(f"{ADDED_TREE}/"):
            problems.append(f"{path}: in the SIF only")
    if hardlink_groups(reference) != hardlink_groups(ours):
        problems.append(
            f"hard links differ: {hardlink_groups(reference)} vs {hardlink_groups(ours)}"
        )
    return problems
