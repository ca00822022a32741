"""The cache's safety rules with one user (no root needed): what is a hit, what is never
followed, what is refused. tests/test_cache_attacks.py plays the same attacks with real
second users."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from registry_client import locks, service
from registry_client.cache import Cache, short_id
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.errors import AuthError, NotFound
from registry_client.names import parse_image_ref
from registry_client.remotes import open_remote, remote_id
from registry_client.transfer import TransferSettings
from tests.support.backend_contract import write_random
from tests.support.helpers import make_context, run_cli

MiB = 1024 * 1024


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    remote = RemoteConfig("local", "file", {"path": str(tmp_path / "bucket")})
    return make_context(
        tmp_path, {"local": remote}, transfer=TransferSettings(chunk_size=MiB, concurrency=2)
    )


def pushed(ctx: Context, tmp_path: Path, ref: str = "lab/a:1", size: int = 2 * MiB) -> str:
    write_random(tmp_path / "img.sif", size, seed=len(ref))
    return service.push(ctx, str(tmp_path / "img.sif"), parse_image_ref(ref)).sha256


def sha_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- 12. -o is a copy; a hit is checked against the size the server reports ---------------------


def test_output_is_a_copy_never_a_link_to_the_cache(ctx: Context, tmp_path: Path) -> None:
    sha = pushed(ctx, tmp_path)
    out = tmp_path / "out.sif"
    result = service.pull(ctx, parse_image_ref("lab/a:1"), output=str(out))
    cached = ctx.cache.lookup(sha)
    assert cached is not None and result.path == str(out)
    assert os.stat(out).st_ino != os.stat(cached).st_ino and os.stat(cached).st_nlink == 1
    os.chmod(out, 0o644)
    out.write_bytes(b"my own edits")  # writing to the output leaves the cache whole
    assert sha_of(cached) == sha
    again = service.pull(ctx, parse_image_ref("lab/a:1"), output=str(out))  # a hit: copied again
    assert again.cached and sha_of(out) == sha


def test_output_never_writes_through_a_planted_name(ctx: Context, tmp_path: Path) -> None:
    pushed(ctx, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the old, guessable temp names
        os.symlink(victim, out_dir / f".out.sif.{pid}.partial")
    service.pull(ctx, parse_image_ref("lab/a:1"), output=str(out_dir / "out.sif"))
    assert victim.read_text() == "keep me"


def test_a_damaged_cached_image_is_fetched_again_by_a_tag_pull(
    ctx: Context, tmp_path: Path
) -> None:
    sha = pushed(ctx, tmp_path)
    first = service.pull(ctx, parse_image_ref("lab/a:1"))
    os.chmod(first.path, 0o644)
    os.truncate(first.path, 1000)  # the server says 2 MiB: not a hit
    again = service.pull(ctx, parse_image_ref("lab/a:1"))
    assert not again.cached and again.path == first.path and sha_of(again.path) == sha
    assert stat.S_IMODE(os.stat(again.path).st_mode) == 0o444
    # --force replaces a same-size damaged copy too.
    os.chmod(first.path, 0o644)
    with open(first.path, "r+b") as fh:
        fh.write(b"\0" * 100)
    forced = service.pull(ctx, parse_image_ref("lab/a:1"), force=True)
    assert forced.path == first.path and sha_of(forced.path) == sha


def test_a_symlink_or_foreign_file_is_never_a_hit(ctx: Context, tmp_path: Path) -> None:
    sha = pushed(ctx, tmp_path)
    good = tmp_path / "elsewhere.sif"
    good.write_bytes((tmp_path / "img.sif").read_bytes())
    ctx.cache.ensure()
    name = ctx.cache.image_path(sha)
    os.symlink(good, name)  # even a symlink to the right bytes is not ours to hand out
    result = service.pull(ctx, parse_image_ref(f"lab/a:1@sha256:{sha}"))
    assert not result.cached
    assert not os.path.islink(result.path) and sha_of(result.path) == sha
    assert good.read_bytes() == (tmp_path / "img.sif").read_bytes()


# -- 3. names in the cache are never followed --------------------------------------------------


def test_planted_symlinks_are_never_followed(ctx: Context, tmp_path: Path) -> None:
    sha = pushed(ctx, tmp_path)
    precious = tmp_path / "precious"
    precious.write_text("precious")
    os.chmod(precious, 0o600)
    ctx.cache.ensure()
    backend_info = service.stat_image(
        open_remote(ctx.config.remotes["local"]), parse_image_ref("lab/a:1")
    )
    rid = remote_id(ctx.config.remotes["local"])
    version = (rid, backend_info.key, backend_info.etag or "", str(backend_info.size))
    vid, uid, base = short_id(*version), os.geteuid(), ctx.cache.base
    for name in (
        f"locks/{vid}.lock",
        f"locks/use-{sha}.lock",
        f"tmp/{vid}.u{uid}.resume",
        f"tmp/{vid}.u{uid}.state",
        f"etags/{vid}.u{uid}",
        f"refs/{short_id(rid, 'lab', 'a', '1')}.u{uid}.json",
    ):
        os.symlink(precious, base / name)
    result = service.pull(ctx, parse_image_ref("lab/a:1"))
    assert sha_of(result.path) == sha and not os.path.islink(result.path)
    assert precious.read_text() == "precious"
    assert stat.S_IMODE(os.stat(precious).st_mode) == 0o600
    offline = service.pull(ctx, parse_image_ref("lab/a:1"), offline=True)
    assert offline.path == result.path


def test_records_never_become_paths(ctx: Context, tmp_path: Path) -> None:
    ctx.cache.ensure()
    outside = tmp_path / "outside.sif"
    outside.write_bytes(b"x")
    rid = remote_id(ctx.config.remotes["local"])
    evil = {"sha256": "../" * 8 + str(outside).lstrip("/").removesuffix(".sif"), "pulled": 1}
    record = ctx.cache.base / "refs" / f"{short_id(rid, 'lab', 'a', '1')}.u{os.geteuid()}.json"
    record.write_text(json.dumps(evil))
    assert ctx.cache.resolve_ref(rid, "lab", "a", "1") == evil
    with pytest.raises(NotFound, match="not in the cache"):
        service.pull(ctx, parse_image_ref("lab/a:1"), offline=True)
    assert ctx.cache.lookup(evil["sha256"]) is None


# -- 10. the cache folder: made private, refused when others may change it ----------------------


def test_a_new_cache_is_private(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "a" / "b" / "cache")
    cache.ensure()
    for folder in ("a", "a/b", "a/b/cache", "a/b/cache/v1", "a/b/cache/v1/sif/sha256"):
        assert stat.S_IMODE(os.stat(tmp_path / folder).st_mode) == 0o700, folder
    assert (tmp_path / "a/b/cache/CACHEDIR.TAG").is_file()


def test_a_cache_others_may_change_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)
    with pytest.raises(AuthError, match="writable by other users"):
        Cache(root).ensure()
    os.chmod(root, 0o700)
    (root / "v1").mkdir(mode=0o700)
    os.chmod(root / "v1", 0o770)  # a private cache an older shared one left behind
    with pytest.raises(AuthError, match="v1 is writable by other users"):
        Cache(root).ensure()
    result = run_cli("--cache-dir", str(root), "pull", f"lab/a:1@sha256:{'a' * 64}")
    assert result.returncode == 5 and result.stdout == ""
    assert "error: refusing the cache" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    os.chmod(root, 0o1777)  # sticky: others may add, never replace ours
    os.chmod(root / "v1", 0o700)
    Cache(root).ensure()


def test_a_symlinked_cache_folder_is_used_through_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    cache = Cache(tmp_path / "link")
    cache.ensure()
    assert cache.root == real and cache.base == real / "v1"


def test_an_older_shared_cache_gets_the_sticky_bit(tmp_path: Path) -> None:
    root = tmp_path / "node"
    for sub in ("", "v1", "v1/sif", "v1/sif/sha256"):
        (root / sub).mkdir(exist_ok=True)
        os.chmod(root / sub, 0o2775)
    Cache(root, shared=True).ensure()
    for sub in ("", "v1", "v1/sif/sha256"):
        assert stat.S_IMODE(os.stat(root / sub).st_mode) == 0o3775


# -- locks ------------------------------------------------------------------------------------


def test_lock_holder_is_read_from_the_kernel_and_never_echoes_junk(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    with cache.lock("x"):
        fd = os.open(cache.base / "locks" / "x.lock", os.O_RDWR)
        try:
            assert locks.holder_uid(fd) == os.geteuid()
            assert locks.holder(fd) == f"pid {os.getpid()}"
            os.pwrite(fd, b"\x1b[31mevil\x1b[0m\n", 0)
            assert locks.holder(fd) == f"pid {os.getpid()}"  # from /proc/locks instead
        finally:
            os.close(fd)


def test_a_planted_lock_file_means_no_lock_and_no_resume(ctx: Context, tmp_path: Path) -> None:
    ctx.cache.ensure()
    target = tmp_path / "fifo"
    os.mkfifo(target)
    os.symlink(target, ctx.cache.base / "locks" / "v.lock")
    with ctx.cache.lock("v") as held:
        assert held is False
    os.unlink(ctx.cache.base / "locks" / "v.lock")
    os.mkfifo(ctx.cache.base / "locks" / "v.lock")  # would block a plain open
    with ctx.cache.lock("v") as held:
        assert held is False


def test_trusted_users_and_untrusted_wait_are_checked(tmp_path: Path) -> None:
    from registry_client.config import load_config, node_cache
    from registry_client.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text('[cache]\nshared = true\ntrusted_users = ["root", 0]\nuntrusted_wait = 5\n')
    cache = node_cache(load_config(cfg), str(tmp_path / "shared"))
    assert cache.trusted == {0, os.geteuid()} and cache.untrusted_wait == 5.0
    for bad, message in (
        ('trusted_users = ["no-such-user-rc"]', "no user 'no-such-user-rc'"),
        ('trusted_users = "root"', "trusted_users must be a list"),
        ("untrusted_wait = -1", "untrusted_wait must be a number of seconds"),
    ):
        cfg.write_text(f"[cache]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            node_cache(load_config(cfg))
