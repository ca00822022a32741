"""docker:// against the real CNCF distribution registry on 127.0.0.1, images pushed by us.

The SIF we build is checked three ways: a SIF header/descriptor reader written here from
the format's spec (independent of registry_client.sif), `unsquashfs` on the partition it
locates, and our own reader / `registry-client inspect`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client import sif
from registry_client.errors import AuthError, IntegrityError, InvalidReference, NotFound
from registry_client.fetch import FetchOptions, pull_fetcher
from registry_client.names import parse_reference
from registry_client.transfer import TransferSettings
from tests.support.fixtures_oci import (
    NEEDS_REGISTRY,
    Image,
    Pusher,
    RegistryProxy,
    directory,
    file,
    hardlink,
    make_layer,
    opaque,
    symlink,
    whiteout,
)
from tests.support.helpers import make_context, run_cli

pytestmark = [
    NEEDS_REGISTRY,
    pytest.mark.skipif(not shutil.which("unsquashfs"), reason="needs squashfs-tools"),
]

COMPRESSION = "zstd" if shutil.which("zstd") else "gzip"
CONFIG = {
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello world"],
    "Entrypoint": ["/bin/tool"],
    "Cmd": ["--help", "it's"],
    "Labels": {"org.example.team": "hpc"},
    "WorkingDir": "/opt",
}
HOST_CANARY = "/tmp/registry-client-escape-canary"


def base_layer(flavour: str) -> Any:
    return make_layer(
        [
            directory("etc"),
            file("etc/motd", "base\n"),
            file("etc/arch", flavour),
            directory("bin"),
            file("bin/tool", '#!/bin/sh\necho tool "$@"\n', 0o755),
            hardlink("bin/tool-link", "bin/tool"),
            directory("usr"),
            directory("usr/lib"),
            file("usr/lib/libx.so", b"\x7fELF" * 64),
            symlink("lib", "usr/lib"),
            symlink("hostroot", "/"),
            file("remove-me", "x"),
            directory("gone"),
            file("gone/old", "old"),
            directory("gone/sub"),
            file("gone/sub/deep", "deep"),
            directory("locked", 0o555),
            file("locked/inside", "in a read-only dir"),
        ]
    )


@pytest.fixture(scope="module")
def registry(docker_registry: Any) -> Any:
    push_images(Pusher(docker_registry.url))
    return docker_registry


def push_images(pusher: Pusher) -> None:
    upper = make_layer(
        [
            whiteout("remove-me"),
            opaque("gone"),
            file("gone/new", "new"),
            file("etc/motd", "layer two\n"),
            file("lib/through-symlink.txt", "written through lib -> usr/lib"),
            file("hostroot/etc/via-absolute-link", "stays inside the root"),
            file("added-and-whited", "kept"),
            whiteout("added-and-whited"),
        ],
        compression=None,
    )
    top = make_layer(
        [
            file("secret", "0600", 0o600),
            directory("opt"),
            file("opt/data.bin", os.urandom(300_000)),
        ],
        compression=COMPRESSION,
    )
    amd64 = Image([base_layer("amd64"), upper, top], "amd64", CONFIG)
    arm64 = Image([base_layer("arm64")], "arm64", {"Cmd": ["/bin/sh"]}, variant="v8")
    pusher.index("lab/multi", "1", [amd64, arm64])
    docker_typed = Image([base_layer("docker")], "amd64", {"Cmd": ["/bin/tool"]}, docker_types=True)
    pusher.image("lab/docker-types", docker_typed, "1")
    evil = {
        "traversal": [file("../../escape.txt", "x")],
        "absolute": [file("/tmp/registry-client-abs", "x")],
        "hardlink": [hardlink("passwd", "../../../../etc/passwd")],
        "whiteout-dot": [file("etc/.wh..", b"")],  # would remove etc itself
        "whiteout-empty": [file(".wh.", b"")],  # would remove the whole root
    }
    for tag, members in evil.items():
        layers = [make_layer([file("ok", "fine"), directory("etc")]), make_layer(members)]
        pusher.image("lab/evil", Image(layers, "amd64", {}), tag)
    climbing = [
        symlink("esc", "../" * 30 + "tmp"),  # deep enough to reach the host /tmp
        file("esc/registry-client-escape-canary", "x"),
    ]
    pusher.image("lab/evil", Image([make_layer(climbing)], "amd64", {}), "symlink")


@pytest.fixture
def ctx(tmp_path: Path) -> Any:
    return make_context(tmp_path, transfer=TransferSettings(chunk_size=64 * 1024, concurrency=4))


@pytest.fixture
def proxy(registry: Any) -> Iterator[RegistryProxy]:
    server = RegistryProxy(registry.url)
    try:
        yield server
    finally:
        server.stop()


def pull(ctx: Any, ref: str, arch: str = "amd64", **kwargs: Any) -> Any:
    return pull_fetcher(ctx, parse_reference(ref), options=FetchOptions(arch=arch), **kwargs)


def published(ctx: Any) -> list[Path]:
    return sorted((ctx.cache.base / "sif" / "sha256").glob("*"))


# -- an independent reading of the SIF layout (sylabs/sif pkg/sif: sif.go) ---------------------


def read_sif_independently(path: str) -> dict[str, Any]:
    raw = Path(path).read_bytes()
    (
        launch,
        magic,
        version,
        arch,
        _uuid,
        _ct,
        _mt,
        dfree,
        dtotal,
        descoff,
        _dlen,
        _doff,
        _dsize,
    ) = struct.unpack_from("<32s10s3s3s16s8q", raw, 0)
    objects = []
    for i in range(dtotal):
        (dtype, used, ident, _g, _l, off, size, _sp, _c, _m, _u, _gi, name, extra) = (
            struct.unpack_from("<i?III7q128s384s", raw, descoff + i * 585)
        )
        if used:
            objects.append(
                {
                    "type": dtype,
                    "id": ident,
                    "offset": off,
                    "size": size,
                    "name": name.rstrip(b"\0").decode(),
                    "extra": extra,
                    "data": raw[off : off + size],
                }
            )
    return {
        "launch": launch.rstrip(b"\0"),
        "magic": magic,
        "version": version,
        "arch": arch,
        "free": dfree,
        "objects": objects,
    }


def squashfs_tree(tmp: Path, data: bytes) -> Path:
    image = tmp / "partition.squashfs"
    image.write_bytes(data)
    listing = subprocess.run(
        ["unsquashfs", "-l", str(image)], capture_output=True, text=True, check=True
    ).stdout
    assert "squashfs-root/.singularity.d/runscript" in listing
    out = tmp / "unpacked"
    subprocess.run(["unsquashfs", "-d", str(out), str(image)], capture_output=True, check=True)
    return out


# -- the tests ---------------------------------------------------------------------------------


def test_index_to_sif_for_amd64(ctx, registry, tmp_path):
    result = pull(ctx, f"docker://{registry.host}/lab/multi:1")
    assert not result.cached and set(result.verified) == {
        "manifest-digest",
        "blob-sha256",
        "diff-id",
    }
    parsed = read_sif_independently(result.path)
    assert parsed["magic"] == b"SIF_MAGIC\0" and parsed["arch"] == b"02\0"
    assert parsed["launch"] == b"#!/usr/bin/env run-singularity\n"
    deffile, config, partition = parsed["objects"]
    assert deffile["type"] == 0x4001 and config["type"] == 0x4006 and partition["type"] == 0x4004
    assert deffile["data"].startswith(b"Bootstrap: docker\nFrom: 127.0.0.1:")
    assert b"/lab/multi@sha256:" in deffile["data"]
    assert config["name"] == "oci-config.json"
    assert json.loads(config["data"])["Entrypoint"] == ["/bin/tool"]
    fstype, parttype, arch = struct.unpack_from("<ii3s", partition["extra"])
    assert (fstype, parttype, arch) == (1, 2, b"02\0")  # squashfs, primary system, amd64
    assert partition["offset"] % 4096 == 0

    ours = sif.read_sif(result.path)
    assert ours.primary_arch() == "amd64" and len(ours.descriptors) == 3
    check_root(squashfs_tree(tmp_path, partition["data"]))
    assert not os.path.exists(HOST_CANARY)


def check_root(root: Path) -> None:
    assert (root / "etc/motd").read_text() == "layer two\n"
    assert not (root / "remove-me").exists()  # whiteout
    assert (root / "gone/new").read_text() == "new"  # opaque dir: new content only
    assert not (root / "gone/old").exists() and not (root / "gone/sub").exists()
    assert (root / "added-and-whited").read_text() == "kept"  # same-layer whiteout: no effect
    assert os.readlink(root / "lib") == "usr/lib"
    assert (root / "usr/lib/through-symlink.txt").exists()
    assert (root / "etc/via-absolute-link").read_text() == "stays inside the root"
    assert os.stat(root / "bin/tool").st_ino == os.stat(root / "bin/tool-link").st_ino
    assert os.stat(root / "secret").st_mode & 0o777 == 0o600
    assert os.stat(root / "locked").st_mode & 0o777 == 0o555
    assert (root / "locked/inside").exists() and (root / "opt/data.bin").stat().st_size == 300_000
    assert json.loads((root / ".singularity.d/labels.json").read_text()) == CONFIG["Labels"]
    for script in (
        "runscript",
        "actions/run",
        "actions/exec",
        "actions/shell",
        "env/10-docker2singularity.sh",
    ):
        subprocess.run(["sh", "-n", str(root / ".singularity.d" / script)], check=True)
    env = subprocess.run(
        [
            "sh",
            "-c",
            f'. "{root}/.singularity.d/env/10-docker2singularity.sh"; echo "$GREETING|$PATH"',
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout
    assert env == "hello world|/usr/local/bin:/usr/bin:/bin\n"
    runscript = (root / ".singularity.d/runscript").read_text()
    assert "set -- /bin/tool --help 'it'\"'\"'s'" in runscript
    for name in ("proc", "sys", "dev", "tmp", "home", ".singularity.d/actions"):
        assert (root / name).is_dir()


def test_arm64_from_the_same_index(ctx, registry):
    amd = pull(ctx, f"docker://{registry.host}/lab/multi:1")
    arm = pull(ctx, f"docker://{registry.host}/lab/multi:1", arch="arm64")
    assert arm.sha256 != amd.sha256
    assert sif.read_sif(arm.path).primary_arch() == "arm64"
    with pytest.raises(NotFound, match="linux/amd64, linux/arm64/v8"):
        pull(ctx, f"docker://{registry.host}/lab/multi:1", arch="s390x")


def test_cached_by_manifest_digest_without_rebuild(ctx, registry):
    ref = f"docker://{registry.host}/lab/multi:1"
    first = pull(ctx, ref)
    blobs = sorted((ctx.cache.base / "blobs" / "sha256").iterdir())
    assert len(blobs) == 3  # the amd64 layers, verified, shared by later builds
    again = pull(ctx, ref)
    assert again.cached and again.path == first.path
    record = ctx.cache.resolve_ref(*_slot(ctx, ref))
    assert record["sha256"] == first.sha256 and record["manifest"].startswith("sha256:")
    pinned = f"docker://{registry.host}/lab/multi@{record['index']}"
    assert pull(ctx, pinned, offline=True).path == first.path  # no network at all
    by_manifest = f"docker://{registry.host}/lab/multi@{record['manifest']}"
    assert pull(ctx, by_manifest).cached
    assert pull(ctx, ref, offline=True).path == first.path


def _slot(ctx: Any, ref: str) -> tuple[str, ...]:
    from registry_client.sources.docker import DockerSource

    fetcher = DockerSource(ctx, parse_reference(ref).body, FetchOptions(arch="amd64"))
    return (fetcher.remote_id, *fetcher.slot())


def test_concurrent_pulls_build_once(ctx, proxy):
    from concurrent.futures import ThreadPoolExecutor

    ref = f"docker://{proxy.host}/lab/multi:1"
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: pull(ctx, ref), range(3)))
    assert len({r.path for r in results}) == 1
    assert sorted(r.cached for r in results) == [False, True, True]
    probes = [
        r
        for r in proxy.server.requests_to("/v2/lab/multi/blobs/")
        if r.headers.get("range") == "bytes=0-0"
    ]
    assert len(probes) == 4  # config + 3 layers, probed once each: one build only


def test_rebuild_gives_the_same_bytes(ctx, registry):
    first = pull(ctx, f"docker://{registry.host}/lab/multi:1")
    again = pull(ctx, f"docker://{registry.host}/lab/multi:1", force=True)
    assert not again.cached and again.sha256 == first.sha256


def test_docker_v2_media_types(ctx, registry, tmp_path):
    result = pull(ctx, f"docker://{registry.host}/lab/docker-types:1")
    data = read_sif_independently(result.path)["objects"][2]["data"]
    assert (squashfs_tree(tmp_path, data) / "etc/arch").read_text() == "docker"


@pytest.mark.parametrize(
    "tag", ["traversal", "absolute", "hardlink", "whiteout-dot", "whiteout-empty"]
)
def test_unsafe_layers_are_refused(ctx, registry, tag):
    with pytest.raises(IntegrityError):
        pull(ctx, f"docker://{registry.host}/lab/evil:{tag}")
    assert published(ctx) == []
    assert list((ctx.cache.base / "tmp").iterdir()) == []  # build folder and temp file gone
    assert not os.path.exists(HOST_CANARY) and not os.path.exists("/tmp/registry-client-abs")


def test_symlinks_out_of_the_root_are_clamped_as_in_a_chroot(ctx, registry, tmp_path):
    result = pull(ctx, f"docker://{registry.host}/lab/evil:symlink")
    partition = read_sif_independently(result.path)["objects"][2]["data"]
    root = squashfs_tree(tmp_path, partition)
    assert (root / "tmp/registry-client-escape-canary").read_text() == "x"
    assert not os.path.exists(HOST_CANARY)


def test_not_found(ctx, registry):
    with pytest.raises(NotFound):
        pull(ctx, f"docker://{registry.host}/lab/multi:nope")
    with pytest.raises(NotFound):
        pull(ctx, f"docker://{registry.host}/lab/nothing:1")
    with pytest.raises(InvalidReference):
        pull(ctx, f"docker://{registry.host}/Lab/Upper:1")


# -- through a proxy: token auth and corruption -------------------------------------------------


def docker_config(tmp_path: Path, host: str, user: str, password: str) -> Path:
    folder = tmp_path / "docker-config"
    folder.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return folder


def test_token_auth_with_credentials_from_docker_config(ctx, proxy, tmp_path, monkeypatch):
    proxy.credentials = ("alice", "pa55")
    ref = f"docker://{proxy.host}/lab/multi:1"
    with pytest.raises(AuthError):
        pull(ctx, ref)  # anonymous: the token service refuses
    monkeypatch.setenv("DOCKER_CONFIG", str(docker_config(tmp_path, proxy.host, "alice", "pa55")))
    result = pull(ctx, ref)
    assert sif.read_sif(result.path).primary_arch() == "amd64"
    tokens = proxy.server.requests_to("/token")
    assert tokens[-1].query["scope"] == "repository:lab/multi:pull"
    assert tokens[-1].query["service"] == "fixture-registry"
    served = [r for r in proxy.server.requests_to("/v2/") if r.headers.get("authorization")]
    assert served and all(r.headers["authorization"] == f"Bearer {proxy.token}" for r in served)
    monkeypatch.setenv("REGISTRY_CLIENT_DOCKER_USERNAME", "alice")
    monkeypatch.setenv("REGISTRY_CLIENT_DOCKER_PASSWORD", "wrong")
    with pytest.raises(AuthError) as err:
        pull(ctx, ref, force=True)
    assert "wrong" not in str(err.value)


def credential_helper(tmp_path: Path, name: str, answers: dict[str, dict[str, str]]) -> Path:
    """A docker-credential-NAME on a private PATH folder; it logs each server asked for."""
    folder = tmp_path / "helpers"
    folder.mkdir(exist_ok=True)
    script = folder / f"docker-credential-{name}"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"answers = {json.dumps(answers)!r}\n"
        "server = sys.stdin.read().strip()\n"
        f"open({str(folder / 'asked')!r}, 'a').write(sys.argv[1] + ' ' + server + '\\n')\n"
        "if server not in json.loads(answers):\n"
        "    print('credentials not found in native keychain'); sys.exit(1)\n"
        "print(json.dumps(json.loads(answers)[server]))\n"
    )
    script.chmod(0o755)
    return folder


def use_docker_config(tmp_path: Path, monkeypatch: Any, config: dict[str, Any], helpers: Path):
    folder = tmp_path / "docker-config"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.setenv("PATH", f"{helpers}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("kind", ["credHelpers", "credsStore"])
def test_credential_helpers(ctx, proxy, tmp_path, monkeypatch, kind):
    proxy.credentials = ("alice", "pa55")
    login = {"ServerURL": proxy.host, "Username": "alice", "Secret": "pa55"}
    helpers = credential_helper(tmp_path, "fixture", {proxy.host: login})
    config: dict[str, Any] = (
        {"credHelpers": {proxy.host: "fixture"}}
        if kind == "credHelpers"
        else {"credsStore": "fixture"}
    )
    use_docker_config(tmp_path, monkeypatch, {"auths": {proxy.host: {}}, **config}, helpers)
    result = pull(ctx, f"docker://{proxy.host}/lab/multi:1")
    assert sif.read_sif(result.path).primary_arch() == "amd64"
    assert (helpers / "asked").read_text() == f"get {proxy.host}\n"  # once, at the challenge
    # A helper that knows nothing of this registry: anonymous, then the registry's refusal.
    other = credential_helper(tmp_path, "fixture", {"elsewhere.example": login})
    use_docker_config(tmp_path, monkeypatch, {"credsStore": "fixture"}, other)
    with pytest.raises(AuthError, match="401"):
        pull(ctx, f"docker://{proxy.host}/lab/multi:1", force=True)
    use_docker_config(tmp_path, monkeypatch, {"credsStore": "missing-helper"}, other)
    with pytest.raises(AuthError, match="docker-credential-missing-helper"):
        pull(ctx, f"docker://{proxy.host}/lab/multi:1", force=True)


def test_identity_tokens_are_exchanged_not_sent(ctx, proxy, tmp_path, monkeypatch):
    proxy.credentials = ("alice", "pa55")
    proxy.refresh_token = "refresh-0f9e"
    login = {"ServerURL": proxy.host, "Username": "<token>", "Secret": "refresh-0f9e"}
    helpers = credential_helper(tmp_path, "fixture", {proxy.host: login})
    use_docker_config(tmp_path, monkeypatch, {"credHelpers": {proxy.host: "fixture"}}, helpers)
    assert pull(ctx, f"docker://{proxy.host}/lab/multi:1").sha256
    posts = [r for r in proxy.server.requests_to("/token") if r.method == "POST"]
    assert posts and posts[0].form["grant_type"] == "refresh_token"
    assert posts[0].form["scope"] == "repository:lab/multi:pull"
    assert all("refresh-0f9e" not in str(r.headers) for r in proxy.server.log)
    # The same token straight from config.json (docker login with an identity token).
    use_docker_config(
        tmp_path, monkeypatch, {"auths": {proxy.host: {"identitytoken": "refresh-0f9e"}}}, helpers
    )
    assert pull(ctx, f"docker://{proxy.host}/lab/multi:1", force=True).sha256


def test_tokens_that_expire_mid_download_are_renewed(ctx, proxy, tmp_path, monkeypatch):
    proxy.credentials = ("alice", "pa55")
    proxy.token_ttl, proxy.delay = 0.3, 0.08  # a slow registry whose tokens die quickly
    monkeypatch.setenv("REGISTRY_CLIENT_DOCKER_USERNAME", "alice")
    monkeypatch.setenv("REGISTRY_CLIENT_DOCKER_PASSWORD", "pa55")
    result = pull(ctx, f"docker://{proxy.host}/lab/multi:1")
    assert sif.read_sif(result.path).primary_arch() == "amd64"
    assert len(proxy.server.requests_to("/token")) >= 2
    refused = [r for r in proxy.server.requests_to("/v2/") if r.headers.get("authorization")]
    assert len({r.headers["authorization"] for r in refused}) >= 2  # more than one token used


def test_corrupt_blobs_publish_nothing(ctx, proxy):
    proxy.corrupt = True
    with pytest.raises(IntegrityError):
        pull(ctx, f"docker://{proxy.host}/lab/multi:1")
    assert published(ctx) == []
    assert not any((ctx.cache.base / "blobs" / "sha256").glob("*"))


def test_a_damaged_layer_blob_is_found_quarantined_and_fetched_again(ctx, registry, tmp_path):
    from registry_client.maintenance import verify_cache

    ref = f"docker://{registry.host}/lab/multi:1"
    first = pull(ctx, ref)

    def damage_a_blob() -> Path:
        blob = max((ctx.cache.base / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
        os.chmod(blob, 0o644)
        with open(blob, "r+b") as fh:  # same size: only hashing tells
            fh.seek(blob.stat().st_size // 2)
            fh.write(b"\xff" * 16)
        return blob

    blob = damage_a_blob()
    report = verify_cache(ctx.cache)
    assert [b["digest"] for b in report.bad] == [f"sha256:{blob.name}"]
    assert report.bad[0]["kind"] == "layer blob" and not blob.exists()
    assert Path(report.bad[0]["moved_to"]).parent.name == "quarantine"
    again = pull(ctx, ref, force=True)  # fetched again, built again, the same image
    assert again.sha256 == first.sha256 and not again.cached
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    # Without `cache verify`: the next build re-hashes the blobs it takes from the cache.
    blob = damage_a_blob()
    assert pull(ctx, ref, force=True).sha256 == first.sha256
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    # The command line: exit 4 and one line per damaged file.
    damage_a_blob()
    cli = run_cli("--cache-dir", str(ctx.cache.root), "cache", "verify")
    assert cli.returncode == 4 and "damaged layer blob, moved to" in cli.stdout, cli.stderr


def test_a_members_damaged_blobs_and_image_never_reach_another_member(registry):
    """13, for real, in a shared cache: a member damages the layer blobs and the image they
    published (their own files); another member's pull still builds the verified image,
    `cache verify` names the damage, and the member's own `pull --force` repairs theirs."""
    from registry_client.cache import Cache
    from tests.support.users import Users, need_root

    need_root()
    users = Users()
    try:
        lab, gid = users.group("lab")
        victim, attacker = users.user("vic", lab), users.user("att", lab)
        shared = users.base / "shared"
        shared.mkdir()
        os.chown(shared, 0, gid)
        os.chmod(shared, 0o3775)
        Cache(shared, shared=True).ensure()  # the admin's `registry-client cache dir`
        config = users.base / "site.toml"
        config.write_text(f'cache_dir = "{shared}"\n[cache]\nshared = true\n')
        env = {"REGISTRY_CLIENT_CONFIG": str(config)}
        ref = f"docker://{registry.host}/lab/multi:1"

        def pull(user, *args):
            out = users.cli(user, "pull", "--json", "--arch", "amd64", *args, ref, env=env)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        theirs = pull(attacker)
        blobs = shared / "v1" / "blobs" / "sha256"
        damage = " && ".join(
            f"chmod u+w {p} && printf 'XXXXXXXXXXXXXXXX' | dd of={p} bs=1 seek=100 conv=notrunc"
            for p in [*blobs.iterdir(), Path(theirs["path"])]
        )
        assert users.run(attacker, "/bin/sh", "-c", damage).returncode == 0
        mine = pull(victim)
        assert mine["sha256"] == theirs["sha256"] and mine["path"] != theirs["path"]
        assert hashlib.sha256(Path(mine["path"]).read_bytes()).hexdigest() == mine["sha256"]
        verify = users.cli(victim, "cache", "verify", env=env)
        assert verify.returncode == 4 and "(not yours)" in verify.stdout, verify.stderr
        assert "Traceback" not in verify.stderr
        repaired = pull(attacker, "--force")  # their damaged blobs: quarantined, fetched again
        assert repaired["sha256"] == theirs["sha256"]
        assert hashlib.sha256(Path(repaired["path"]).read_bytes()).hexdigest() == theirs["sha256"]
        for blob in blobs.iterdir():
            if blob.stat().st_uid == attacker.uid:
                name = blob.name.partition(".")[0]
                assert hashlib.sha256(blob.read_bytes()).hexdigest() == name
    finally:
        users.cleanup()


# -- the installed CLI -------------------------------------------------------------------------


def test_cli_pull_inspect_and_exit_codes(tmp_path, registry, proxy):
    cache = ["--cache-dir", str(tmp_path / "cli-cache")]
    ok = run_cli(*cache, "pull", "--arch", "amd64", f"docker://{registry.host}/lab/multi:1")
    assert ok.returncode == 0, ok.stderr
    path = ok.stdout.strip()
    assert ok.stdout == f"{path}\n" and os.path.isabs(path)
    shown = run_cli("inspect", path)
    assert shown.returncode == 0, shown.stderr
    for word in (
        "deffile",
        "generic_json",
        "oci-config.json",
        "partition",
        "squashfs",
        "primary_system",
        "amd64",
    ):
        assert word in shown.stdout
    as_json = json.loads(run_cli("--json", "inspect", path).stdout)
    assert len(as_json["sif"]["descriptors"]) == 3

    missing = run_cli(*cache, "pull", f"docker://{registry.host}/lab/multi:gone")
    assert missing.returncode == 3 and missing.stdout == ""
    proxy.credentials = ("bob", "secret")
    denied = run_cli(*cache, "pull", f"docker://{proxy.host}/lab/multi:1")
    assert denied.returncode == 5 and denied.stdout == ""
    proxy.credentials, proxy.corrupt = None, True
    corrupt = run_cli(*cache, "pull", "--arch", "arm64", f"docker://{proxy.host}/lab/multi:1")
    assert corrupt.returncode == 4 and corrupt.stdout == ""
    evil = run_cli(*cache, "pull", f"docker://{registry.host}/lab/evil:traversal")
    assert evil.returncode == 4 and "climbs out" in evil.stderr


def test_copy_docker_image_to_a_bucket(ctx, registry, tmp_path):
    from registry_client.migrate import Options, copy_fetched, copy_image
    from registry_client.names import parse_reference

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    dst = f"file://{bucket}/lab/multi:1"
    src = parse_reference(f"docker://{registry.host}/lab/multi:1")
    rows = []
    copy_fetched(ctx, src, dst, Options(), FetchOptions(arch="amd64"), rows.append)
    first = rows[-1]
    assert first["status"] == "copied" and (bucket / "lab" / "multi:1.sif").exists()
    assert (bucket / "lab" / "multi:1.sif").read_bytes() == Path(
        ctx.cache.lookup(first["sha256"])
    ).read_bytes()
    copy_fetched(ctx, src, dst, Options(), FetchOptions(arch="amd64"), rows.append)
    assert rows[-1]["status"] == "skipped" and rows[-1]["sha256"] == first["sha256"]
    with pytest.raises(InvalidReference):
        copy_image(ctx, dst, f"docker://{registry.host}/lab/x:1", Options(), rows.append)


def test_token_headers_renew_before_expiry_and_once_per_refusal(monkeypatch):
    from registry_client.sources.docker import credentials

    now = [1000.0]
    monkeypatch.setattr(credentials.time, "monotonic", lambda: now[0])
    issued: list[str] = []

    def fetch() -> tuple[str, int | None]:
        issued.append(f"t{len(issued)}")
        return issued[-1], 30  # renewed 10 s early: after 20 s

    headers = credentials.TokenHeaders(fetch)
    assert dict(headers) == {"Authorization": "Bearer t0"}
    now[0] += 19
    assert dict(headers)["Authorization"] == "Bearer t0"
    now[0] += 2
    assert dict(headers)["Authorization"] == "Bearer t1"
    stale = {"Authorization": "Bearer t1"}
    assert headers.renew(stale) and headers.renew(stale)  # two threads refused the same one
    assert issued == ["t0", "t1", "t2"]


def test_a_failing_config_blob_is_tried_by_one_retry_loop(ctx, registry, monkeypatch):
    """The image config is read under the retry policy once: five GETs, one message."""
    from registry_client.errors import RemoteUnavailable
    from registry_client.retry import RetryPolicy
    from tests.support.faultproxy import Fault, FaultProxy

    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt, error: 0.0)
    with FaultProxy(registry.url) as faults:
        faults.add_fault(Fault.status(503, times=None, path="/blobs/"))  # the config comes first
        host = faults.url.split("//", 1)[1]
        with pytest.raises(RemoteUnavailable) as caught:
            pull(ctx, f"docker://{host}/lab/docker-types:1")
        blob_gets = [r for r in faults.stats.log if "/blobs/" in r.target]
    attempts = RetryPolicy().attempts
    assert len(blob_gets) == attempts
    assert str(caught.value).count("gave up after") == 1
    assert f"gave up after {attempts} attempts" in str(caught.value)
    assert published(ctx) == []
