"""sifbuild and rootfs on their own: layers applied to the tree, the unsafe and the unusual,
the tar stream mksquashfs reads, and a whole build twice — no registry."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from registry_client.errors import IntegrityError, UsageError
from registry_client.sources.docker import rootfs, sifbuild
from registry_client.sources.docker.rootfs import (
    DIR,
    FILE,
    LayerFile,
    RootfsTree,
    UnsafeLayer,
)
from registry_client.sources.docker.sifbuild import BuildSpec
from tests.support.fixtures_oci import (
    _info,
    directory,
    file,
    hardlink,
    make_layer,
    opaque,
    symlink,
    whiteout,
)

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
CAP_SETFCAP = bytes.fromhex("0100000200000080000000000000000000000000")  # not UTF-8


def layer_file(tmp: Path, members, compression: str | None = "gzip") -> LayerFile:
    layer = make_layer(members, compression)
    path = tmp / f"layer-{layer.diff_id[7:19]}"
    path.write_bytes(layer.blob)
    return LayerFile(path, layer.descriptor["digest"], layer.diff_id)


@pytest.fixture
def tree(tmp_path: Path) -> RootfsTree:
    warnings: list[str] = []
    t = RootfsTree(tmp_path / "store", warnings.append, 1_000)
    t.warnings = warnings  # type: ignore[attr-defined]
    return t


def content(tree: RootfsTree, name: str) -> bytes:
    node = tree.lookup(name)
    assert node is not None and node.kind == FILE and node.data is not None
    return node.data.read_bytes()


def names(tree: RootfsTree, folder: str) -> list[str]:
    node = tree.lookup(folder)
    assert node is not None and node.children is not None
    return sorted(node.children)


def tar_members(tree: RootfsTree) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    tree.write_tar(out)
    out.seek(0)
    with tarfile.open(fileobj=out, encoding="utf-8", errors="surrogateescape") as tar:
        return {m.name: m for m in tar}


def special(name: str, kind: bytes, mode: int, **extra) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, kind, mode, **extra), b""


# -- layers ------------------------------------------------------------------------------


def test_layers_in_order_with_whiteouts(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path,
            [
                directory("a"),
                file("a/one", "1"),
                file("a/two", "2"),
                directory("keep"),
                file("keep/x", "x"),
                directory("keep/sub"),
                file("keep/sub/deep", "d"),
            ],
        )
    )
    tree.apply(
        layer_file(
            tmp_path,
            [
                whiteout("a/one"),
                opaque("keep"),
                file("keep/y", "y"),
                whiteout("never/existed"),
                file("a/same-layer", "kept"),
                whiteout("a/same-layer"),
            ],
            None,
        )
    )
    assert names(tree, "a") == ["same-layer", "two"]
    assert names(tree, "keep") == ["y"]
    assert tree.lookup("never") is None
    assert (
        not list((tmp_path / "store").glob("*")) or len(list((tmp_path / "store").iterdir())) == 3
    )


def test_later_layer_replaces_kinds_and_keeps_folders(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path, [directory("d"), file("d/f", "x"), file("f", "file"), directory("k", 0o700)]
        )
    )
    tree.apply(
        layer_file(
            tmp_path,
            [
                file("d", "now a file"),
                directory("f"),
                file("f/inner", "now a dir"),
                directory("k", 0o751),
            ],
        )
    )
    assert content(tree, "d") == b"now a file"
    assert content(tree, "f/inner") == b"now a dir"
    k = tree.lookup("k")
    assert k is not None and k.kind == DIR and k.mode == 0o751


@pytest.mark.parametrize("name", [".wh..", ".wh.", "etc/.wh..", "etc/.wh...", "etc/.wh."])
def test_whiteouts_that_name_no_entry_are_refused(tmp_path, tree, name):
    tree.apply(layer_file(tmp_path, [directory("etc"), file("etc/passwd", "root")]))
    with pytest.raises(UnsafeLayer, match="whiteout"):
        tree.apply(layer_file(tmp_path, [file(name, b"")]))
    assert content(tree, "etc/passwd") == b"root"


def test_aufs_bookkeeping_is_ignored(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path,
            [
                file("x", "x"),
                directory(".wh..wh.plnk"),
                file(".wh..wh.plnk/1.2", "x"),
                file(".wh..wh.aufs", ""),
            ],
        )
    )
    assert names(tree, "") == ["x"]


def test_devices_fifos_and_modes_whatever_the_builder(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path,
            [
                directory("dev"),
                special("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
                special("dev/loop0", tarfile.BLKTYPE, 0o660, devmajor=7, devminor=0),
                special("fifo", tarfile.FIFOTYPE, 0o620),
                directory("ro", 0o500),
                file("ro/none", "x", 0o000),
                directory("sticky", 0o1777),
            ],
        )
    )
    old = os.umask(0o077)
    try:
        members = tar_members(tree)
    finally:
        os.umask(old)
    null, loop, fifo = members["dev/null"], members["dev/loop0"], members["fifo"]
    assert null.ischr() and (null.devmajor, null.devminor, null.mode) == (1, 3, 0o666)
    assert loop.isblk() and (loop.devmajor, loop.mode) == (7, 0o660)
    assert fifo.isfifo() and fifo.mode == 0o620
    assert members["ro"].mode == 0o500 and members["ro/none"].mode == 0
    assert members["sticky"].mode == 0o1777
    # Every entry has the layer's time and belongs to root by number, not by name.
    assert {m.mtime for m in members.values()} == {1_700_000_000}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}
    assert list(members) == sorted(members, key=lambda n: (n.count("/"), n))


def test_setuid_and_setgid_go_with_the_squashed_owner(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path,
            [
                (_info("root-suid", tarfile.REGTYPE, 0o4755, size=1), b"x"),
                (_info("user-suid", tarfile.REGTYPE, 0o4755, size=1, uid=1000), b"x"),
                (_info("shadow-sgid", tarfile.REGTYPE, 0o2755, size=1, gid=42), b"x"),
                (_info("both", tarfile.REGTYPE, 0o6755, size=1, uid=0, gid=42), b"x"),
                (_info("group-dir", tarfile.DIRTYPE, 0o2775, gid=50), b""),
            ],
        )
    )
    modes = {name: m.mode for name, m in tar_members(tree).items()}
    assert modes == {
        "both": 0o4755,
        "group-dir": 0o2775,
        "root-suid": 0o4755,
        "shadow-sgid": 0o755,
        "user-suid": 0o755,
    }


def test_xattrs_kept_dropped_and_bytes_exact(tmp_path, tree):
    pax = {
        "SCHILY.xattr.security.capability": CAP_SETFCAP.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "ünïcode",
        "SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0",
        "SCHILY.xattr.system.posix_acl_access": "\x02\x00\x00\x00",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "LIBARCHIVE.xattr.user.from%20bsdtar": base64.b64encode(b"\xff\x00").decode(),
    }
    ping = (_info("ping", tarfile.REGTYPE, 0o755, size=1, pax_headers=pax), b"x")
    tree.apply(layer_file(tmp_path, [ping]))
    node = tree.lookup("ping")
    assert node is not None and node.xattrs == {
        "security.capability": CAP_SETFCAP,
        "user.note": "ünïcode".encode(),
        "user.from bsdtar": b"\xff\x00",
    }
    tree.finish()
    assert any("security.selinux" in w and "system.posix_acl_access" in w for w in tree.warnings)
    written = tar_members(tree)["ping"].pax_headers
    assert written["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == (
        CAP_SETFCAP
    )


def test_hard_links_share_one_entry(tmp_path, tree):
    tree.apply(layer_file(tmp_path, [file("a", "data"), hardlink("b", "a"), directory("d")]))
    tree.apply(layer_file(tmp_path, [hardlink("d/c", "b"), file("a", "replaced")]))
    assert tree.lookup("b") is tree.lookup("d/c") and content(tree, "b") == b"data"
    assert content(tree, "a") == b"replaced"
    members = tar_members(tree)
    assert members["b"].isreg() and members["d/c"].islnk() and members["d/c"].linkname == "b"
    for bad in ([hardlink("x", "d")], [hardlink("x", "missing")], [hardlink("x", ".")]):
        with pytest.raises(UnsafeLayer):
            tree.apply(layer_file(tmp_path, bad))


def test_symlinked_parents_stay_inside_the_root(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path,
            [
                symlink("up", "a/../../../.."),
                file("up/x", "clamped at the root"),
                symlink("abs", "/etc"),
                file("abs/hosts", "in the image's etc"),
            ],
        )
    )
    assert content(tree, "x") == b"clamped at the root"
    assert content(tree, "etc/hosts") == b"in the image's etc"


@pytest.mark.parametrize(
    "members",
    [
        [symlink("loop", "loop"), file("loop/x", "x")],
        [file("plain", "x"), file("plain/child", "x")],
        [file("../escape", "x")],
        [file("/abs", "x")],
        [file("a/" + "n" * 256, "x")],
        [file("d/" * 2100 + "x", "x")],
    ],
    ids=["symlink-loop", "file-as-dir", "dotdot", "absolute", "long-component", "long-path"],
)
def test_unsafe_or_broken_members(tmp_path, tree, members):
    with pytest.raises(UnsafeLayer):
        tree.apply(layer_file(tmp_path, members))


def test_header_records_and_entry_counts_are_bounded(tmp_path, tree, monkeypatch):
    huge = tarfile.TarInfo("././@PaxHeader")
    huge.type, huge.size = tarfile.XHDTYPE, 2 * rootfs.MAX_HEADER
    raw = tmp_path / "pax-bomb.tar"
    raw.write_bytes(huge.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096)
    with pytest.raises(UnsafeLayer, match="header record"):
        tree.apply(LayerFile(raw, "sha256:bomb"))
    monkeypatch.setattr(rootfs, "MAX_ENTRIES", 5)
    with pytest.raises(UnsafeLayer, match="more than 5 entries"):
        tree.apply(layer_file(tmp_path, [file(f"f{i}", "x") for i in range(10)]))


def test_empty_symlink_targets_are_skipped_with_a_warning(tmp_path, tree):
    tree.apply(layer_file(tmp_path, [symlink("empty", ""), file("ok", "x")]))
    tree.finish()
    assert tree.lookup("empty") is None and tree.lookup("ok") is not None
    assert any("empty target" in w for w in tree.warnings)


def test_times_are_clamped_to_what_squashfs_stores(tmp_path, tree):
    tree.apply(
        layer_file(
            tmp_path,
            [
                (_info("old", tarfile.REGTYPE, 0o644, size=0, mtime=-5), b""),
                (_info("far", tarfile.REGTYPE, 0o644, size=0, mtime=2**40), b""),
            ],
        )
    )
    members = tar_members(tree)
    assert (members["old"].mtime, members["far"].mtime) == (0, 2**32 - 1)


def test_diff_id_mismatch_and_garbage(tmp_path, tree):
    layer = layer_file(tmp_path, [file("x", "x")])
    with pytest.raises(IntegrityError, match="uncompressed"):
        tree.apply(LayerFile(layer.path, layer.digest, "sha256:" + "0" * 64))
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(IntegrityError, match="not a valid tar"):
        tree.apply(LayerFile(junk, "sha256:junk"))


# -- tools -------------------------------------------------------------------------------


def test_missing_or_old_tools_say_how_to_install(tmp_path, monkeypatch):
    spec = BuildSpec(
        [],
        {"architecture": "amd64", "rootfs": {"diff_ids": []}},
        "docker://x",
        "x@sha256:0",
        "amd64",
    )
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    with pytest.raises(UsageError) as err:
        sifbuild.build_sif(spec, tmp_path, tmp_path / "out.sif", print)
    assert "squashfs-tools" in (err.value.hint or "")
    monkeypatch.setattr(shutil, "which", real_which)
    monkeypatch.setattr(sifbuild, "mksquashfs_version", lambda _tool: (4, 4, 0))
    with pytest.raises(UsageError, match="4.5.1"):
        sifbuild.build_sif(spec, tmp_path, tmp_path / "out.sif", print)
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    zstd = tmp_path / "z"
    zstd.write_bytes(rootfs.ZSTD_MAGIC + b"\0" * 16)
    with pytest.raises(UsageError, match="zstd"):
        RootfsTree(tmp_path / "s", print, 0).apply(LayerFile(zstd, "sha256:z"))


def test_the_build_key_names_the_squashfs_tools_that_build(tmp_path, monkeypatch):
    """The same manifest gives the same bytes only from the same mksquashfs (and zlib): a
    node whose mksquashfs is another version looks up (and records) its builds under
    another key, so it builds anew rather than trust a record of other bytes."""
    from registry_client.names import parse_reference
    from registry_client.sources import FetchOptions
    from registry_client.sources.docker import DockerSource

    def key_with(version: str | None) -> tuple[str, ...]:
        folder = tmp_path / (version or "none")
        folder.mkdir()
        if version:
            tool = folder / "mksquashfs"
            tool.write_text(f"#!/bin/sh\necho 'mksquashfs version {version} (2024/01/01)'\n")
            tool.chmod(0o755)
        monkeypatch.setenv("PATH", str(folder))
        monkeypatch.setattr(
            shutil, "which", lambda name, path=None: shutil_which(name, path=str(folder))
        )
        sifbuild.squashfs_id.cache_clear()
        sifbuild.mksquashfs_version.cache_clear()
        body = parse_reference("docker://registry.example/lab/app:1").body
        source = DockerSource(None, body, FetchOptions(arch="amd64"))  # type: ignore[arg-type]
        return source._key("sha256:" + "a" * 64)

    shutil_which = shutil.which
    try:
        keys = {v: key_with(v) for v in ("4.5.1", "4.6.1", None)}
    finally:
        sifbuild.squashfs_id.cache_clear()
        sifbuild.mksquashfs_version.cache_clear()
    assert len(set(keys.values())) == 3, keys
    assert "mksquashfs-4.6.1+zlib-" in keys["4.6.1"][2]
    assert keys[None][2] == "none"


def test_layer_count_must_match_the_config(tmp_path):
    layer = layer_file(tmp_path, [file("x", "x")])
    spec = BuildSpec([layer], {"rootfs": {"diff_ids": []}}, "docker://x", "x@sha256:0", "amd64")
    with pytest.raises(IntegrityError, match="layers"):
        sifbuild.check_diff_ids(spec)


# -- a whole build ---------------------------------------------------------------------------


@pytest.mark.skipif(not shutil.which("mksquashfs"), reason="needs squashfs-tools")
def test_the_same_inputs_give_the_same_bytes_whatever_the_umask(tmp_path):
    layers = [
        layer_file(
            tmp_path,
            [
                directory("dev"),
                special("dev/null", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3),
                special("fifo", tarfile.FIFOTYPE, 0o620),
                (_info("suid", tarfile.REGTYPE, 0o4755, size=1, uid=1000), b"x"),
                file("etc/naïve", "ü"),
            ],
        )
    ]
    image = {
        "architecture": "amd64",
        "created": "2024-05-01T10:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layers[0].diff_id]},
    }
    spec = BuildSpec(layers, image, "docker://x/y:1", "x/y@sha256:" + "a" * 64, "amd64")
    digests = []
    for umask in (0o022, 0o077):
        old = os.umask(umask)
        try:
            work = tmp_path / f"work-{umask:o}"
            work.mkdir()
            out = tmp_path / f"out-{umask:o}.sif"
            sifbuild.build_sif(spec, work, out, print)
        finally:
            os.umask(old)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    listing = subprocess.run(
        ["unsquashfs", "-lln", str(_partition(out, tmp_path / "p.squashfs"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "crw-rw-rw- 0/0" in listing and "prw--w---- 0/0" in listing
    assert "-rwxr-xr-x 0/0" in _line(listing, "/suid")
    root = _line(listing, "squashfs-root\n") or listing.splitlines()[0]
    assert root.startswith("drwxr-xr-x 0/0") and "2024-05-01" in root


def _partition(path: Path, out: Path) -> Path:
    from registry_client import sif

    part = sif.read_sif(str(path)).primary_partition()
    assert part is not None
    with open(path, "rb") as fh:
        fh.seek(part.offset)
        out.write_bytes(fh.read(part.size))
    return out


def _line(listing: str, suffix: str) -> str:
    suffix = suffix.rstrip("\n")
    return next((line for line in listing.splitlines() if line.endswith(suffix)), "")


def test_squashed_mode_keeps_sticky_and_directory_bits():
    node = rootfs.Node(rootfs.FILE, 0o7777, 0, uid=5, gid=5)
    assert rootfs.squashed_mode(node) == 0o1777
    folder = rootfs.Node(DIR, 0o3777, 0, uid=5, gid=5, children={})
    assert rootfs.squashed_mode(folder) == 0o3777 and stat.S_ISVTX & rootfs.squashed_mode(folder)
