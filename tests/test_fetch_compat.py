"""docker:// checked against tools nobody here wrote.

Images are built by buildah (and a layer added by umoci), pushed by skopeo and buildah to
the loopback CNCF distribution registry, pulled through docker://; each SIF's squashfs is
compared entry by entry with `umoci unpack` of the same image, and every SIF is parsed
by Sylabs' `siftool`. The same manifest must give the same sha256 by tag and by digest,
in fresh caches, from the library and the CLI, as root and as a throwaway user.

Needs root (device nodes, capabilities, foreign owners, useradd), buildah, skopeo, umoci,
siftool, setcap/setfattr and squashfs-tools: `.ci/install-system-deps` installs them.
About 20 s on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from registry_client import sif
from registry_client.fetch import FetchOptions, pull_fetcher
from registry_client.names import parse_reference
from registry_client.reporting import Reporter
from tests.support import compat_images as compat
from tests.support.fixtures_oci import Pusher
from tests.support.helpers import console_script, make_context
from tests.support.rootfs_compare import differences, snapshot
from tests.support.users import can_add_users, run_as, throwaway_user

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(
        os.geteuid() != 0 or bool(compat.missing_tools()) or not shutil.which("docker-registry"),
        reason=f"needs root and {', '.join(compat.missing_tools()) or 'docker-registry'} "
        "(.ci/install-system-deps)",
    ),
]


class Warnings(Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def warn(self, message: str) -> None:
        self.messages.append(message)


@dataclass
class Suite:
    images: compat.CompatImages
    host: str
    work: Path
    pulled: dict[str, str] = field(default_factory=dict)  # what -> SIF path, for siftool


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    from tests.support.servers.registry import start_registry

    work = tmp_path_factory.mktemp("compat")
    images = compat.build_images(work)
    server = start_registry(work / "registry")
    try:
        compat.push(images.full, server.host, "compat/full", "1")
        push_layout(Pusher(server.url), images.zstd, "compat/full", "zstd")
        compat.push_list(work, [images.full, images.arm64], server.host, "compat/multi", "1")
        yield Suite(images, server.host, work)
    finally:
        server.stop()


def push_layout(pusher: Pusher, layout: compat.Layout, repo: str, tag: str) -> None:
    """The layout's blobs and manifest, byte for byte, through the distribution API."""
    manifest = layout.manifest()
    for desc in [manifest["config"], *manifest["layers"]]:
        pusher.blob(repo, layout.blob(desc["digest"]))
    body = json.dumps(manifest).encode()
    pusher.manifest(repo, tag, body, manifest["mediaType"])


def pull(tmp: Path, ref: str, arch: str = "amd64", reporter: Reporter | None = None) -> Any:
    ctx = make_context(tmp)
    if reporter is not None:
        ctx.reporter = reporter
    return pull_fetcher(ctx, parse_reference(ref), options=FetchOptions(arch=arch))


def partition(sif_path: str, out: Path) -> Path:
    part = sif.read_sif(sif_path).primary_partition()
    assert part is not None
    with open(sif_path, "rb") as fh:
        fh.seek(part.offset)
        out.write_bytes(fh.read(part.size))
    return out


def unsquash(sif_path: str, folder: Path) -> Path:
    image = partition(sif_path, folder.with_suffix(".squashfs"))
    compat.run("unsquashfs", "-no-progress", "-d", folder, image)
    return folder


def sha256_of(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# -- the root filesystem, entry by entry ------------------------------------------------------


def test_rootfs_matches_umoci_unpack(suite, tmp_path):
    result = pull(tmp_path / "a", f"docker://{suite.host}/compat/full:1")
    suite.pulled["full"] = result.path
    ours = snapshot(unsquash(result.path, tmp_path / "ours"))
    reference = snapshot(compat.umoci_unpack(suite.images.full, tmp_path / "bundle"))
    assert differences(reference, ours) == []

    # What the comparison covers, spelt out: each is an item umoci and we must agree on.
    assert ours["usr/bin/ping"].xattrs == (
        ("security.capability", bytes.fromhex("0100000200200000000000000000000000000000")),
    )
    assert dict(ours["usr/lib/only-this.so"].__dict__)["kind"] == "file"  # opaque folder:
    assert "usr/lib/libx.so.1" not in ours  # the lower content is hidden
    assert "etc/gone.conf" not in ours and "opt/deep" not in ours  # whiteouts
    assert ours["etc/replaced"].kind == "dir"
    assert (ours["fifo"].kind, ours["fifo"].mode) == ("fifo", 0o620)
    assert (ours["dev/null"].detail, ours["dev/null"].mode) == ("1,3", 0o666)
    assert ours["usr/bin/user-suid"].mode == 0o755  # setuid of uid 1000: dropped
    assert ours["usr/bin/shadow-sgid"].mode == 0o755  # setgid of gid 42: dropped
    assert ours["usr/bin/root-suid"].mode == 0o4755  # root's own: kept
    assert ours["etc/nothing"].mode == 0 and ours["srv"].mode == 0o500
    assert ours["var/spool"].mode == 0o1777
    assert ours["etc/motd"].xattrs == (("user.origin", b"compat-suite"),)
    assert ours["fifo"].mtime == compat.PAST and ours["dev/null"].mtime == compat.PAST
    assert "etc/naïve-ü.txt" in ours and os.fsdecode(b"etc/caf\xe9-latin1") in ours


def test_zstd_layers_give_the_same_filesystem(suite, tmp_path):
    gzip = pull(tmp_path / "a", f"docker://{suite.host}/compat/full:1")
    zstd = pull(tmp_path / "b", f"docker://{suite.host}/compat/full:zstd")
    suite.pulled["zstd"] = zstd.path
    assert zstd.sha256 != gzip.sha256  # another manifest, so another definition file
    assert (
        partition(zstd.path, tmp_path / "z.squashfs").read_bytes()
        == partition(gzip.path, tmp_path / "g.squashfs").read_bytes()
    )


# -- the same manifest, the same bytes --------------------------------------------------------


def manifest_digest(ref: str, host: str) -> str:
    raw = compat.run("skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}")
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def test_same_sha256_by_tag_and_digest_in_every_cache(suite, tmp_path):
    digest = manifest_digest("compat/full:1", suite.host)
    by_tag = pull(tmp_path / "a", f"docker://{suite.host}/compat/full:1")
    by_digest = pull(tmp_path / "b", f"docker://{suite.host}/compat/full@{digest}")
    assert by_tag.sha256 == by_digest.sha256 == sha256_of(by_digest.path)
    again = pull(tmp_path / "a", f"docker://{suite.host}/compat/full@{digest}")
    assert again.cached and again.path == by_tag.path
    deffile = sif.read_sif(by_tag.path).find(sif.DataType.DEFFILE)[0]
    with open(by_tag.path, "rb") as fh:
        fh.seek(deffile.offset)
        text = fh.read(deffile.size).decode()
    assert text.startswith(f"Bootstrap: docker\nFrom: {suite.host}/compat/full@{digest}\n")


@pytest.mark.skipif(not can_add_users(), reason="needs root, useradd and setpriv")
def test_same_sha256_from_the_cli_as_root_and_as_another_user(suite, tmp_path):
    ref = f"docker://{suite.host}/compat/full:1"
    as_root = subprocess.run(
        [*console_script(), "--cache-dir", str(tmp_path / "root-cache"), "pull", ref],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert as_root.returncode == 0, as_root.stderr
    pull(tmp_path / "warm", ref)  # everything the child needs is imported now
    with throwaway_user("rc-compat") as user:

        def pull_as_user() -> list[Any]:
            result = pull(user.home / "work", ref)
            return [result.path, os.stat(result.path).st_uid]

        path, owner = run_as(user, pull_as_user, umask=0o077)
        assert owner == user.uid
        assert sha256_of(path) == sha256_of(as_root.stdout.strip())


# -- multi-arch lists -------------------------------------------------------------------------


def test_multi_arch_list_one_build_per_manifest(suite, tmp_path):
    index = json.loads(
        compat.run(
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{suite.host}/compat/multi:1",
        )  # fmt: skip
    )
    arm64 = next(m for m in index["manifests"] if m["platform"]["architecture"] == "arm64")
    by_tag = pull(tmp_path / "a", f"docker://{suite.host}/compat/multi:1", arch="arm64")
    suite.pulled["arm64"] = by_tag.path
    assert sif.read_sif(by_tag.path).primary_arch() == "arm64"
    # The arm64 manifest by digest on this (amd64) node: the same build, with a warning.
    warnings = Warnings()
    ref = f"docker://{suite.host}/compat/multi@{arm64['digest']}"
    fresh = pull(tmp_path / "b", ref, arch="amd64", reporter=warnings)
    assert fresh.sha256 == by_tag.sha256
    assert any("linux/arm64 image, not linux/amd64" in w for w in warnings.messages)
    cached = pull(tmp_path / "a", ref, arch="amd64")
    assert cached.cached and cached.path == by_tag.path
    amd64 = pull(tmp_path / "a", f"docker://{suite.host}/compat/multi:1")
    assert sif.read_sif(amd64.path).primary_arch() == "amd64"


# -- Sylabs' own reader ----------------------------------------------------------------------


def test_siftool_reads_every_sif(suite, tmp_path):
    if not suite.pulled:
        suite.pulled["full"] = pull(tmp_path, f"docker://{suite.host}/compat/full:1").path
    for what, path in sorted(suite.pulled.items()):
        header = compat.run("siftool", "header", path)
        assert "Primary Arch:" in header or "Arch" in header, (what, header)
        listing = compat.run("siftool", "list", path)
        for kind in ("Def.FILE", "JSON.Generic", "FS (Squashfs/*System/"):
            assert kind in listing, (what, kind, listing)
        ours = sif.read_sif(path)
        for desc in ours.descriptors:
            dumped = subprocess.run(
                ["siftool", "dump", str(desc.id), path], capture_output=True, check=True
            ).stdout
            with open(path, "rb") as fh:
                fh.seek(desc.offset)
                assert dumped == fh.read(desc.size), (what, desc.id)
        info = compat.run("siftool", "info", "3", path)
        assert ours.primary_arch() in info, (what, info)
