"""Node cache policy for batch jobs: `cache warm`, `[cache] max_size`, `resolve`, and
pinned pulls — against the zero-config local remote (a folder laid out like a bucket)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from registry_client.cache import Cache
from registry_client.sif import make_test_sif
from tests.support.fixtures_library import LibraryFixture, LibraryImage
from tests.support.helpers import console_script, run_cli

MiB = 1 << 20


def push(tmp_path: Path, ref: str, size: int = MiB, seed: int = 0) -> str:
    path = tmp_path / f"{ref.replace('/', '_').replace(':', '_')}.sif"
    make_test_sif(path, size, seed=seed)
    result = run_cli("push", str(path), ref)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().removeprefix("sha256:")


def user_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "home" / "cfg" / "registry-client" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cached(tmp_path: Path) -> set[str]:
    folder = tmp_path / "home" / "cache" / "registry-client" / "v1" / "sif" / "sha256"
    return {p.stem for p in folder.glob("*.sif")}


# -- cache warm ------------------------------------------------------------------------


def test_cache_warm_from_a_file_is_parallel_idempotent_and_summarised(tmp_path: Path) -> None:
    """--jobs 3 pulls three images at once: the Library holds every API request until
    three are in flight together (no time bound), so a sequential warm peaks at one."""
    library = LibraryFixture()
    try:
        for i in range(3):
            data = tmp_path / f"app{i}.sif"
            make_test_sif(data, MiB, seed=i)
            library.add(f"lab/tools/app{i}:1", LibraryImage(data.read_bytes()))
        shas = [image.sha256 for image in library.images.values()]
        refs = [f"library://lab/tools/app{i}:1" for i in range(3)]
        listing = tmp_path / "images.txt"
        listing.write_text(
            f"# images for this allocation\n{refs[0]}\n\n{refs[1]}   # the solver\n"
            f"{refs[2]}\n{refs[0]}\n"
        )
        env = {"REGISTRY_CLIENT_LIBRARY_URL": library.url}
        library.api.hold_until(3)
        first = run_cli("--json", "cache", "warm", str(listing), "--jobs", "3", env=env)
        assert first.returncode == 0, first.stderr
        assert library.api.max_in_flight == 3  # one request of each image at once
        report = json.loads(first.stdout)
        assert (report["downloaded"], report["cached"], report["failed"]) == (3, 0, 0)
        assert "warmed 3 image(s): 3 downloaded, 0 already cached, 0 failed" in first.stderr
        assert cached(tmp_path) == set(shas)
        again = run_cli("cache", "warm", str(listing), "--jobs", "1", env=env)
        assert again.returncode == 0
        assert "0 downloaded, 3 already cached" in again.stderr
        assert [line.split("\t")[0] for line in again.stdout.splitlines()] == refs
    finally:
        library.stop()


def test_cache_warm_with_one_job_pulls_one_image_at_a_time(tmp_path: Path) -> None:
    """The other side of the test above: with --jobs 1 the held Library never sees two
    requests at once (the gate opens after its timeout, here short)."""
    library = LibraryFixture()
    try:
        for i in range(2):
            library.add(f"lab/tools/app{i}:1", LibraryImage(bytes([i]) * 4096))
        env = {"REGISTRY_CLIENT_LIBRARY_URL": library.url}
        library.api.hold_until(2, timeout=1.0)
        refs = "".join(f"library://lab/tools/app{i}:1\n" for i in range(2))
        listing = tmp_path / "images.txt"
        listing.write_text(refs)
        result = run_cli("cache", "warm", str(listing), "--jobs", "1", env=env)
        assert result.returncode == 0, result.stderr
        assert library.api.max_in_flight == 1
    finally:
        library.stop()


def test_cache_warm_answers_what_the_node_holds_without_opening_the_remote(
    tmp_path: Path,
) -> None:
    """A held image costs `cache warm` what it costs `pull REF`: one light HEAD, no full
    client (the -v log names each remote the full pull opens); a tag that moved is pulled."""
    for i in range(3):
        push(tmp_path, f"lab/app{i}:1", seed=i)
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"lab/app{i}:1\n" for i in range(3)))
    first = run_cli("-v", "cache", "warm", str(listing))
    assert first.returncode == 0 and "remote local: file " in first.stderr, first.stderr
    again = run_cli("-v", "cache", "warm", str(listing))
    assert again.returncode == 0 and "0 downloaded, 3 already cached" in again.stderr
    assert "remote local:" not in again.stderr
    moved = push(tmp_path, "lab/app0:1", seed=9)
    third = run_cli("--json", "cache", "warm", str(listing))
    report = json.loads(third.stdout)
    assert (report["downloaded"], report["cached"]) == (1, 2), third.stderr
    assert report["results"][0]["sha256"] == moved


def test_cache_warm_from_stdin_keeps_going_past_a_failure(tmp_path: Path) -> None:
    push(tmp_path, "lab/ok:1")
    proc = subprocess.run(
        [*console_script(), "cache", "warm", "-"],
        input="lab/missing:1\nlab/ok:1\n",
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr  # the first failure's exit code: not found
    assert "1 downloaded, 0 already cached, 1 failed" in proc.stderr
    assert "error: 1 of 2 reference(s) could not be pulled" in proc.stderr
    assert "lab/ok:1\t/" in proc.stdout and "lab/missing:1\tFAILED" in proc.stdout


def test_cache_warm_checks_every_reference_first(tmp_path: Path) -> None:
    push(tmp_path, "lab/ok:1")
    listing = tmp_path / "l.txt"
    listing.write_text("lab/ok:1\n../etc/passwd\n")
    result = run_cli("cache", "warm", str(listing))
    assert result.returncode == 2 and cached(tmp_path) == set()
    assert run_cli("cache", "warm", str(tmp_path / "nope")).returncode == 2
    assert run_cli("cache", "warm", str(listing), "--jobs", "0").returncode == 2


# -- [cache] max_size ----------------------------------------------------------------------


def test_max_size_trims_least_recently_used_after_each_download(tmp_path: Path) -> None:
    user_config(tmp_path, '[cache]\nmax_size = "2500K"\n')
    a, b, c = (push(tmp_path, f"lab/{n}:1", seed=i) for i, n in enumerate("abc"))
    assert run_cli("pull", "lab/a:1").returncode == 0
    assert run_cli("pull", "lab/b:1").returncode == 0
    assert run_cli("pull", "lab/a:1").returncode == 0  # a used again: b is now the oldest
    result = run_cli("pull", "lab/c:1")
    assert result.returncode == 0, result.stderr
    assert "cache over max_size: removed 1" in result.stderr
    assert cached(tmp_path) == {a, c}


def test_max_size_never_removes_an_image_in_use(tmp_path: Path) -> None:
    user_config(tmp_path, "[cache]\nmax_size = 1048576\n")  # bytes: less than two images
    a = push(tmp_path, "lab/a:1", seed=1)
    b = push(tmp_path, "lab/b:1", seed=2)
    assert run_cli("pull", "lab/a:1").returncode == 0
    cache = Cache(tmp_path / "home" / "cache" / "registry-client")
    with cache.using(a):  # a running job holds a (as pulls do while they hand it out)
        result = run_cli("pull", "lab/b:1")
    assert result.returncode == 0, result.stderr
    assert cached(tmp_path) == {a, b}  # neither the one in use nor the new one went
    assert "over max_size" in result.stderr and "in use" in result.stderr


@pytest.mark.parametrize("value", ['"lots"', "-5", "true", '"-1G"'])
def test_bad_max_size_is_a_config_error(tmp_path: Path, value: str) -> None:
    user_config(tmp_path, f"[cache]\nmax_size = {value}\n")
    result = run_cli("cache", "dir")
    assert result.returncode == 2 and "max_size" in result.stderr


# -- resolve and pinned pulls --------------------------------------------------------------


def test_resolve_pins_references(tmp_path: Path) -> None:
    a = push(tmp_path, "lab/a:1", seed=1)
    b = push(tmp_path, "lab/b:2", seed=2)
    result = run_cli("resolve", "lab/a:1", "lab/b:2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"lab/a:1@sha256:{a}", f"lab/b:2@sha256:{b}"]
    rows = json.loads(run_cli("resolve", "--json", "lab/a:1").stdout)
    assert rows == [{"ref": "lab/a:1", "pinned": f"lab/a:1@sha256:{a}", "sha256": a}]
    assert run_cli("resolve", f"lab/a:1@sha256:{a}").returncode == 0
    stale = run_cli("resolve", f"lab/a:1@sha256:{b}")
    assert stale.returncode == 4 and "not the pinned digest" in stale.stderr
    assert run_cli("resolve", "lab/none:1").returncode == 3
    assert run_cli("resolve", "docker://alpine:3").returncode == 2


def test_pinned_pull_reads_only_what_this_node_has_seen(tmp_path: Path) -> None:
    """The same bytes under two names: pinned by the other name, the store is asked."""
    sha = push(tmp_path, "lab/a:1", seed=7)
    assert push(tmp_path, "lab/copy:1", seed=7) == sha
    assert run_cli("pull", "lab/a:1").returncode == 0
    store = tmp_path / "home" / "data" / "registry-client" / "images" / "lab"
    (store / "copy:1.sif").rename(store / "moved.sif")  # the name no longer exists there
    seen = run_cli("pull", f"lab/a:1@sha256:{sha}")
    assert seen.returncode == 0, seen.stderr
    unseen = run_cli("pull", f"lab/copy:1@sha256:{sha}")
    assert unseen.returncode == 3, unseen.stderr  # asked the store, as any other node would
    offline = run_cli("pull", "--offline", f"lab/copy:1@sha256:{sha}")
    assert offline.returncode == 0 and offline.stdout == seen.stdout  # cache only: the digest


def test_cache_warm_json_is_one_document_even_with_failures(tmp_path: Path) -> None:
    push(tmp_path, "lab/ok:1")
    listing = tmp_path / "l.txt"
    listing.write_text("lab/ok:1\nlab/missing:1\n")
    result = run_cli("--json", "cache", "warm", str(listing))
    assert result.returncode == 3
    report = json.loads(result.stdout)  # one JSON document: the report
    assert report["failed"] == 1 and report["results"][1]["exit"] == 3
    assert "error: 1 of 2 reference(s)" in result.stderr
