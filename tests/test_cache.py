"""The cache and the transfer engine with the file backend (no network)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from registry_client import service
from registry_client.backends.base import ObjectInfo
from registry_client.backends.file import FileBackend
from registry_client.cache import Cache
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.errors import IntegrityError, NotFound
from registry_client.names import parse_image_ref
from registry_client.reporting import Reporter
from registry_client.transfer import TransferSettings, download
from tests.support.backend_contract import write_random
from tests.support.helpers import make_context

MiB = 1024 * 1024


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    remote = RemoteConfig("local", "file", {"path": str(tmp_path / "bucket")})
    return make_context(
        tmp_path, {"local": remote}, transfer=TransferSettings(chunk_size=MiB, concurrency=4)
    )


def test_cache_layout_and_modes(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 3 * MiB + 3)
    service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref("lab/a:1"))
    result = service.pull(ctx, parse_image_ref("lab/a:1"))
    root = ctx.cache.root
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886")
    assert Path(result.path) == root / "v1" / "sif" / "sha256" / f"{result.sha256}.sif"
    assert stat.S_IMODE(os.stat(result.path).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(root / "v1").st_mode) == 0o700
    assert list((root / "v1" / "tmp").iterdir()) == []


def test_offline_and_pinned_pulls_need_no_remote(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 1000)
    sha = service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref("lab/a:1")).sha256
    first = service.pull(ctx, parse_image_ref("lab/a:1"))
    (tmp_path / "bucket" / "lab" / "a:1.sif").unlink()  # the remote is gone
    assert service.pull(ctx, parse_image_ref("lab/a:1"), offline=True).path == first.path
    assert service.pull(ctx, parse_image_ref(f"lab/a:1@sha256:{sha}")).path == first.path
    with pytest.raises(NotFound):
        service.pull(ctx, parse_image_ref("lab/other:1"), offline=True)


def test_pinned_digest_mismatch_is_integrity_error(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 1000)
    service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref("lab/a:1"))
    with pytest.raises(IntegrityError):
        service.pull(ctx, parse_image_ref("lab/a:1@sha256:" + "0" * 64))
    assert ctx.cache.entries() == []


def test_download_hashes_in_order_across_many_ranges(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "b")
    data = write_random(tmp_path / "f", 7 * MiB + 123, seed=4)
    info = backend.put("c/n:1.sif", str(tmp_path / "f"), {}, part_size=0, concurrency=1)
    result = download(
        backend,
        info,
        tmp_path / "out",
        [[info.size]],
        settings=TransferSettings(chunk_size=256 * 1024, concurrency=6),
    )
    import hashlib

    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.segment_md5s[0][0] == hashlib.md5(data).digest()
    assert (tmp_path / "out").read_bytes() == data


def test_short_read_fails_and_publishes_nothing(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 2 * MiB)
    service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref("lab/a:1"))
    real_stat = FileBackend.stat

    def lying_stat(self: FileBackend, key: str) -> ObjectInfo:
        info = real_stat(self, key)
        return ObjectInfo(info.key, info.size + 10, None, info.metadata, info.modified)

    FileBackend.stat = lying_stat  # type: ignore[method-assign]
    try:
        with pytest.raises(Exception) as caught:
            service.pull(ctx, parse_image_ref("lab/a:1"))
    finally:
        FileBackend.stat = real_stat  # type: ignore[method-assign]
    assert getattr(caught.value, "exit_code", None) in (4, 6)
    assert ctx.cache.entries() == []
    assert list((ctx.cache.base / "tmp").iterdir()) == []


def test_unverifiable_etag_is_reported(ctx: Context, tmp_path: Path) -> None:
    class Recorder(Reporter):
        warnings: list[str] = []

        def warn(self, message: str) -> None:
            self.warnings.append(message)

    ctx.reporter = Recorder()
    (tmp_path / "bucket" / "lab").mkdir(parents=True)
    write_random(tmp_path / "bucket" / "lab" / "raw:1.sif", 5000)  # no sidecar, no metadata
    result = service.pull(ctx, parse_image_ref("lab/raw:1"))
    assert result.verified == ("size",)
    assert any("only the size" in w for w in ctx.reporter.warnings)


def test_lock_waiter_is_told_who_holds_it(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    messages: list[str] = []
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with cache.lock("x"):
            held.set()
            release.wait(5)

    # flock is per open file description, so a second open in one process also blocks.
    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    timer = threading.Timer(0.3, release.set)
    timer.start()
    with cache.lock("x", on_wait=messages.append):
        pass
    thread.join()
    assert messages == [f"pid {os.getpid()}"]


def test_cache_clean(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 1000)
    service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref("lab/a:1"))
    service.pull(ctx, parse_image_ref("lab/a:1"))
    assert ctx.cache.clean() == 1000
    assert ctx.cache.entries() == []


def test_shared_system_cache_is_group_writable_and_sticky(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "node", shared=True)
    cache.ensure()
    for sub in ("", "v1", "v1/sif/sha256", "v1/blobs/sha256", "v1/tmp", "v1/locks", "v1/refs"):
        assert stat.S_IMODE(os.stat(tmp_path / "node" / sub).st_mode) == 0o3775, sub
    with cache.lock("x"):
        pass
    assert stat.S_IMODE(os.stat(cache.base / "locks" / "x.lock").st_mode) & 0o060 == 0o060


def test_cli_shared_cache_from_config(tmp_path: Path) -> None:
    from tests.support.helpers import run_cli

    cfg = tmp_path / "c.toml"
    cfg.write_text("[cache]\nshared = true\n")
    root = tmp_path / "sys"
    write_random(tmp_path / "a.sif", 100)
    args = ("--config", str(cfg), "--cache-dir", str(root))
    assert run_cli(*args, "push", str(tmp_path / "a.sif"), "lab/a:1").returncode == 0
    pulled = run_cli(*args, "pull", "lab/a:1")
    assert pulled.returncode == 0, pulled.stderr
    assert stat.S_IMODE(os.stat(root / "v1").st_mode) == 0o3775
    assert stat.S_IMODE(os.stat(pulled.stdout.strip()).st_mode) == 0o444


def test_push_not_matching_its_pinned_digest_writes_nothing(ctx: Context, tmp_path: Path) -> None:
    write_random(tmp_path / "a.sif", 3 * MiB)
    with pytest.raises(IntegrityError, match="not the digest"):
        service.push(ctx, str(tmp_path / "a.sif"), parse_image_ref(f"lab/a:1@sha256:{'0' * 64}"))
    assert not any(p.is_file() for p in (tmp_path / "bucket").rglob("*"))
