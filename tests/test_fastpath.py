"""The console script's fast path (registry_client.entry): digest-pinned and --offline
cache hits are answered without typer, with the full CLI's output; anything else runs
the full CLI, with its errors and exit codes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_client import cli, entry
from registry_client.config import default_local_dir
from tests.support.helpers import run_cli

FULL_MAIN = cli.main
Outcome = tuple[int, str, str]


def _run(
    main: Callable[[list[str]], int], args: list[str], capsys: pytest.CaptureFixture[str]
) -> Outcome:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sha(sample_sif: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """lab/app:1 pushed to the zero-config local remote and pulled once: its sha256:HEX."""
    code, out, _ = _run(FULL_MAIN, ["push", str(sample_sif), "lab/app:1"], capsys)
    assert code == 0
    assert _run(FULL_MAIN, ["pull", "lab/app:1"], capsys)[0] == 0
    return out.strip()


@pytest.fixture
def full_cli_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str] | None]:
    """Each argv the fast path handed to the full CLI (which then runs as usual)."""
    calls: list[list[str] | None] = []

    def spy(argv: list[str] | None = None) -> int:
        calls.append(argv)
        return FULL_MAIN(argv)

    monkeypatch.setattr(cli, "main", spy)
    return calls


def _args(template: list[str], sha: str) -> list[str]:
    return [a.format(sha=sha, local=default_local_dir()) for a in template]


def _same_as_full_cli_without_it(
    args: list[str], capsys: pytest.CaptureFixture[str], calls: list[list[str] | None]
) -> Outcome:
    expected = _run(FULL_MAIN, args, capsys)
    got = _run(entry.main, args, capsys)
    assert calls == [], "the fast path should have answered this pull"
    assert got == expected
    assert got[0] == 0 and got[2] == ""
    return got


@pytest.mark.parametrize(
    "template",
    [
        ["pull", "lab/app:1@{sha}"],
        ["pull", "--offline", "lab/app:1"],
        ["--json", "pull", "--offline", "lab/app:1"],
        ["pull", "lab/app:1@{sha}", "--json"],
        ["-q", "--no-progress", "pull", "--json", "--offline", "local:lab/app:1"],
        ["--progress", "--quiet", "pull", "--offline", "lab/app:1@{sha}"],
        ["pull", "file://{local}/lab/app:1@{sha}"],
        ["pull", "lab/app:1"],  # by tag: one stat of the directory remote
        ["pull", "--json", "file://{local}/lab/app:1"],
    ],
)
def test_hit_is_answered_as_the_full_cli_answers_it(
    sha: str,
    template: list[str],
    capsys: pytest.CaptureFixture[str],
    full_cli_calls: list[list[str] | None],
) -> None:
    args = _args(template, sha)
    _code, out, _err = _same_as_full_cli_without_it(args, capsys, full_cli_calls)
    path = json.loads(out)["path"] if "--json" in args else out.removesuffix("\n")
    assert Path(path).name == f"{sha.removeprefix('sha256:')}.sif"


def test_cache_dir_option_and_env(
    sha: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    full_cli_calls: list[list[str] | None],
) -> None:
    other = tmp_path / "other-cache"
    assert _run(FULL_MAIN, ["--cache-dir", str(other), "pull", "lab/app:1"], capsys)[0] == 0
    for args in (
        ["--cache-dir", str(other), "pull", "--offline", "lab/app:1"],
        [f"--cache-dir={other}", "pull", f"lab/app:1@{sha}"],
    ):
        _, out, _ = _same_as_full_cli_without_it(args, capsys, full_cli_calls)
        assert out.startswith(str(other))
    monkeypatch.setenv("REGISTRY_CLIENT_CACHE_DIR", str(other))
    _, out, _ = _same_as_full_cli_without_it(
        ["pull", "--offline", "lab/app:1"], capsys, full_cli_calls
    )
    assert out.startswith(str(other))


def test_config_file_cache_dir_and_settings(
    sha: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    full_cli_calls: list[list[str] | None],
) -> None:
    other = tmp_path / "configured-cache"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'cache_dir = "{other}"\n[cache]\nlocking = false\n[transfer]\nchunk_size = 1048576\n'
    )
    assert _run(FULL_MAIN, ["--config", str(cfg), "pull", "lab/app:1"], capsys)[0] == 0
    for args in (
        ["--config", str(cfg), "pull", "--offline", "lab/app:1"],
        [f"--config={cfg}", "--json", "pull", f"lab/app:1@{sha}"],
    ):
        _, out, _ = _same_as_full_cli_without_it(args, capsys, full_cli_calls)
        assert str(other) in out
    monkeypatch.setenv("REGISTRY_CLIENT_CONFIG", str(cfg))
    _, out, _ = _same_as_full_cli_without_it(
        ["pull", "--offline", "lab/app:1"], capsys, full_cli_calls
    )
    assert out.startswith(str(other))
    assert not any((other / "v1" / "locks").iterdir())  # [cache] locking = false honoured


ZEROS = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("template", "code", "error"),
    [
        (["pull", "--offline", "lab/none:1"], 3, "error: lab/none:1 is not in the cache"),
        (["pull", f"lab/app:1@{ZEROS}"], 4, "error: lab/app:1 now holds"),  # miss: asks remote
        (["pull", "Lab/App"], 2, "error: invalid reference"),
        (["pull", "--offline", "lab/app:1", "lab/app:2"], 2, "error: "),
        (["pull", "--offline"], 2, "error: "),
        (["pull", "--bogus", "lab/app:1"], 2, "error: "),
        (["pull", "--", "lab/app:1@{sha}"], 0, ""),
        (["pull", "--force", "lab/app:1@{sha}"], 0, ""),
        (["pull", "--offline", "docker://alpine:3"], 3, "error: docker://"),
        (["pull", "nosuch:lab/app:1@{sha}"], 3, "error: no remote named 'nosuch'"),
        (["pull", "lab/none:1"], 3, "error: lab/none:1 not found"),  # a miss by tag
        (["-v", "pull", "--offline", "lab/app:1"], 0, ""),
        (["--offline", "pull", "lab/app:1"], 2, "error: "),
        (["--config", "/nonexistent.toml", "pull", "--offline", "lab/app:1"], 2, "error: config"),
        (["pull", "--help"], 0, ""),
    ],
)
def test_anything_else_runs_the_full_cli(
    sha: str,
    template: list[str],
    code: int,
    error: str,
    capsys: pytest.CaptureFixture[str],
    full_cli_calls: list[list[str] | None],
) -> None:
    args = _args(template, sha)
    got = _run(entry.main, args, capsys)
    assert full_cli_calls == [args]
    assert got == _run(FULL_MAIN, args, capsys)
    assert got[0] == code and got[2].startswith(error)


def test_output_option_runs_the_full_cli(
    sha: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    full_cli_calls: list[list[str] | None],
) -> None:
    out = tmp_path / "copy.sif"
    args = ["pull", "-o", str(out), "--offline", f"lab/app:1@{sha}"]
    assert _run(entry.main, args, capsys) == (0, f"{out}\n", "")
    assert full_cli_calls == [args] and out.is_file()


def test_bad_transfer_settings_fail_on_a_hit_too(
    sha: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    full_cli_calls: list[list[str] | None],
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[transfer]\nchunk_size = 0\n")
    args = ["--config", str(cfg), "pull", f"lab/app:1@{sha}"]
    got = _run(entry.main, args, capsys)
    assert full_cli_calls == [args]
    assert got[:2] == (2, "")
    assert got[2].startswith(f"error: {cfg}: [transfer] chunk_size must be a positive integer")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["pull", "a/b"], entry.FastPull("a/b")),
        (["--json", "pull", "--offline", "a/b"], entry.FastPull("a/b", True, True)),
        (
            ["--config=c", "--cache-dir", "d", "--config", "e", "pull", "a/b", "--json"],
            entry.FastPull("a/b", False, True, "e", "d"),
        ),
        ([], None),
        (["pull"], None),
        (["push", "f", "a/b"], None),
        (["--config"], None),
        (["--config", "--json", "pull", "a/b"], None),
        (["--cache-dir=", "pull", "a/b"], None),
        (["--json=1", "pull", "a/b"], None),
        (["-qv", "pull", "a/b"], None),
        (["--version"], None),
        (["--help"], None),
        (["pull", "--offline=1", "a/b"], None),
        (["pull", "-", "a/b"], None),
    ],
)
def test_parse_fast_pull(args: list[str], expected: entry.FastPull | None) -> None:
    assert entry.parse_fast_pull(args) == expected


def _imported(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[-1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    }


def test_console_script_answers_hits_without_typer(sha: str, tmp_path: Path) -> None:
    profile = {"PYTHONPROFILEIMPORTTIME": "1"}
    for args in (["pull", f"lab/app:1@{sha}"], ["pull", "--offline", "lab/app:1"]):
        hit = run_cli(*args, env=profile)
        assert hit.returncode == 0 and hit.stdout.endswith(f"{sha.removeprefix('sha256:')}.sif\n")
        modules = _imported(hit.stderr)
        assert "registry_client.entry" in modules
        assert (
            not {"typer", "click", "registry_client.cli", "registry_client.service", "boto3"}
            & modules
        )
    out = tmp_path / "copy.sif"
    fallback = run_cli("pull", "-o", str(out), f"lab/app:1@{sha}", env=profile)
    assert fallback.returncode == 0 and fallback.stdout == f"{out}\n"
    assert "typer" in _imported(fallback.stderr)


def test_shell_completion_is_left_to_click(sha: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["pull", "--offline", "lab/app:1"]
    assert entry._fast_pull(args) == 0
    monkeypatch.setenv("_REGISTRY_CLIENT_COMPLETE", "bash_complete")
    assert entry._fast_pull(args) is None
