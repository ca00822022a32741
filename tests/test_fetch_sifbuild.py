"""sifbuild on its own: layers applied to a root, the unsafe and the unusual, no registry."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from registry_client.errors import IntegrityError, UsageError
from registry_client.sources.docker import sifbuild
from registry_client.sources.docker.sifbuild import BuildSpec, LayerFile, RootfsWriter, UnsafeLayer
from tests.support.fixtures_oci import directory, file, make_layer, opaque, symlink, whiteout


def layer_file(tmp: Path, members, compression: str | None = "gzip") -> LayerFile:
    layer = make_layer(members, compression)
    path = tmp / f"layer-{layer.diff_id[7:19]}"
    path.write_bytes(layer.blob)
    return LayerFile(path, layer.descriptor["digest"], layer.diff_id)


@pytest.fixture
def writer(tmp_path: Path) -> RootfsWriter:
    root = tmp_path / "root"
    root.mkdir()
    warnings: list[str] = []
    w = RootfsWriter(root, warnings.append, 0)
    w.warnings = warnings  # type: ignore[attr-defined]
    return w


def test_layers_in_order_with_whiteouts(tmp_path, writer):
    writer.apply(
        layer_file(
            tmp_path,
            [
                directory("a"),
                file("a/one", "1"),
                file("a/two", "2"),
                directory("keep"),
                file("keep/x", "x"),
            ],
        )
    )
    writer.apply(
        layer_file(
            tmp_path,
            [whiteout("a/one"), opaque("keep"), file("keep/y", "y"), whiteout("never/existed")],
            None,
        )
    )
    root = writer.root
    assert sorted(os.listdir(root / "a")) == ["two"]
    assert sorted(os.listdir(root / "keep")) == ["y"]
    assert not (root / "never").exists()


def test_later_layer_replaces_kinds(tmp_path, writer):
    writer.apply(layer_file(tmp_path, [directory("d"), file("d/f", "x"), file("f", "file")]))
    writer.apply(
        layer_file(
            tmp_path, [file("d", "now a file"), directory("f"), file("f/inner", "now a dir")]
        )
    )
    assert (writer.root / "d").read_text() == "now a file"
    assert (writer.root / "f/inner").read_text() == "now a dir"


def test_devices_are_skipped_without_root(tmp_path, writer):
    info = tarfile.TarInfo("dev/null")
    info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, 1, 3, 0o666
    writer.is_root = False
    writer.apply(layer_file(tmp_path, [(info, b""), file("ok", "fine")]))
    writer.finish()
    assert not os.path.lexists(writer.root / "dev/null") and (writer.root / "ok").exists()
    assert any("device" in w for w in writer.warnings)  # type: ignore[attr-defined]


def test_unreadable_modes_stay_buildable_without_root(tmp_path, writer):
    writer.is_root = False
    writer.apply(layer_file(tmp_path, [directory("ro", 0o500), file("ro/f", "x", 0o000)]))
    writer.finish()
    assert os.stat(writer.root / "ro").st_mode & 0o700 == 0o700
    assert os.stat(writer.root / "ro/f").st_mode & 0o400


@pytest.mark.parametrize(
    "members",
    [
        [symlink("loop", "loop"), file("loop/x", "x")],
        [file("plain", "x"), file("plain/child", "x")],
        [symlink("up", "a/../.."), file("up/x", "x")],
    ],
    ids=["symlink-loop", "file-as-dir", "dotdot-in-link"],
)
def test_unsafe_or_broken_members(tmp_path, writer, members):
    with pytest.raises(UnsafeLayer):
        writer.apply(layer_file(tmp_path, members))


def test_diff_id_mismatch_and_garbage(tmp_path, writer):
    layer = layer_file(tmp_path, [file("x", "x")])
    with pytest.raises(IntegrityError, match="uncompressed"):
        writer.apply(LayerFile(layer.path, layer.digest, "sha256:" + "0" * 64))
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(IntegrityError, match="not a valid tar"):
        writer.apply(LayerFile(junk, "sha256:junk"))


def test_missing_tools_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *_a, **_k: None)
    spec = BuildSpec(
        [],
        {"architecture": "amd64", "rootfs": {"diff_ids": []}},
        "docker://x",
        "x@sha256:0",
        "amd64",
    )
    with pytest.raises(UsageError) as err:
        sifbuild.build_sif(spec, tmp_path, tmp_path / "out.sif", print)
    assert "squashfs-tools" in (err.value.hint or "")
    zstd = tmp_path / "z"
    zstd.write_bytes(sifbuild.ZSTD_MAGIC + b"\0" * 16)
    writer = RootfsWriter(tmp_path, print, 0)
    with pytest.raises(UsageError, match="zstd"):
        writer.apply(LayerFile(zstd, "sha256:z"))


def test_layer_count_must_match_the_config(tmp_path):
    layer = layer_file(tmp_path, [file("x", "x")])
    spec = BuildSpec([layer], {"rootfs": {"diff_ids": []}}, "docker://x", "x@sha256:0", "amd64")
    with pytest.raises(IntegrityError, match="layers"):
        sifbuild.check_diff_ids(spec)
