"""cache verify / prune / clean, through the CLI and the library."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from registry_client import service
from registry_client.config import RemoteConfig
from registry_client.context import Context
from registry_client.maintenance import prune_cache, verify_cache
from registry_client.names import parse_image_ref
from registry_client.units import parse_age, parse_size
from tests.support.backend_contract import write_random
from tests.support.helpers import make_context, run_cli


def filled(tmp_path: Path, sizes: list[int]) -> Context:
    remote = RemoteConfig("local", "file", {"path": str(tmp_path / "bucket")})
    ctx = make_context(tmp_path, {"local": remote})
    for i, size in enumerate(sizes):
        write_random(tmp_path / f"{i}.sif", size, seed=i)
        service.push(ctx, str(tmp_path / f"{i}.sif"), parse_image_ref(f"lab/a:{i}"))
        path = Path(service.pull(ctx, parse_image_ref(f"lab/a:{i}")).path)
        os.utime(path, (1000.0 + i, 1000.0 + i))  # last used: image 0 longest ago
    return ctx


def test_verify_quarantines_damaged_entries(tmp_path: Path) -> None:
    ctx = filled(tmp_path, [1000, 2000])
    victim = ctx.cache.entries()[0]
    os.chmod(victim.path, 0o644)
    with open(victim.path, "r+b") as fh:
        fh.write(b"X")
    report = verify_cache(ctx.cache)
    assert report.checked == 2 and len(report.bad) == 1
    assert report.bad[0]["digest"] == f"sha256:{victim.sha256}"
    assert not victim.path.exists() and Path(report.bad[0]["moved_to"]).exists()
    assert verify_cache(ctx.cache).bad == []


def test_prune_by_size_lru_and_by_age(tmp_path: Path) -> None:
    ctx = filled(tmp_path, [1000, 1000, 1000])
    oldest = ctx.cache.entries()
    by_use = sorted(oldest, key=lambda e: e.atime)
    report = prune_cache(ctx.cache, max_size=2000)
    assert report.removed == [f"sha256:{by_use[0].sha256}"] and report.freed == 1000
    report = prune_cache(ctx.cache, max_age=60)  # everything was last used in 1970
    assert len(report.removed) == 2 and ctx.cache.entries() == []


def test_prune_never_removes_an_image_in_use(tmp_path: Path) -> None:
    ctx = filled(tmp_path, [1000])
    entry = ctx.cache.entries()[0]
    with ctx.cache.using(entry.sha256):
        report = prune_cache(ctx.cache, max_age=0)
    assert report.removed == [] and report.kept_in_use == [f"sha256:{entry.sha256}"]
    assert entry.path.exists()
    assert prune_cache(ctx.cache, max_age=0).removed == [f"sha256:{entry.sha256}"]


def test_prune_removes_dead_temps_and_stale_resumes(tmp_path: Path) -> None:
    ctx = filled(tmp_path, [10])
    tmp = ctx.cache.base / "tmp"
    dead = tmp / "download.999999999.abc.partial"
    alive = tmp / f"download.{os.getpid()}.abc.partial"
    old_resume, fresh_resume = tmp / "v1old.resume", tmp / "v2new.resume"
    for path in (dead, alive, old_resume, fresh_resume):
        path.write_bytes(b"x")
    os.utime(old_resume, (time.time() - 3 * 86400,) * 2)
    with ctx.cache.lock("v2new"):
        report = prune_cache(ctx.cache)
    assert report.temps_removed == 2
    assert {p.name for p in tmp.iterdir()} == {alive.name, fresh_resume.name}


def test_cli_verify_and_prune(tmp_path: Path) -> None:
    image = tmp_path / "a.sif"
    write_random(image, 5000)
    assert run_cli("push", str(image), "lab/a:1").returncode == 0
    path = Path(run_cli("pull", "lab/a:1").stdout.strip())
    assert json.loads(run_cli("cache", "verify", "--json").stdout) == {"checked": 1, "bad": []}
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    bad = run_cli("cache", "verify")
    assert bad.returncode == 4 and "quarantined" in bad.stderr
    assert run_cli("pull", "lab/a:1").stdout.strip() == str(path)  # fetched again, whole
    assert path.read_bytes() == image.read_bytes()
    pruned = json.loads(run_cli("cache", "prune", "--max-size", "0", "--json").stdout)
    assert pruned["freed"] == 5000
    assert run_cli("cache", "prune", "--max-age", "soon").returncode == 2


def test_parse_units() -> None:
    assert parse_size("20G") == 20 << 30 and parse_size("500MiB") == 500 << 20
    assert parse_size("1048576") == 1 << 20 and parse_size("1.5t") == 3 << 39
    assert parse_age("30d") == 30 * 86400 and parse_age("90s") == 90.0
    assert parse_age("2w") == 14 * 86400 and parse_age("1.5h") == 5400.0


@pytest.mark.parametrize(
    "value", ["-30d", "90", "7 days", "1e999d", "nand", "infd", "", "d", "3000000000d"]
)
def test_bad_ages_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_age(value)


@pytest.mark.parametrize("value", ["-1", "1e999", "inf", "nan", "5X", "", "9" * 400, "99999P"])
def test_bad_sizes_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_cli_prune_refuses_bad_values_and_keeps_the_cache(tmp_path: Path) -> None:
    """`--max-age -30d` used to be accepted and delete everything."""
    ctx = filled(tmp_path, [5000])
    kept = ctx.cache.entries()[0].path
    env = {"REGISTRY_CLIENT_CACHE_DIR": str(ctx.cache.root)}
    for args in (["--max-age", "-30d"], ["--max-age", "30"], ["--max-size", "1e999"]):
        result = run_cli("cache", "prune", *args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: --max-") and len(result.stderr.splitlines()) == 2
    assert kept.exists()
