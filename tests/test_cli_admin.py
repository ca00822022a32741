"""The command line as admins expect it: global options anywhere, JSON errors, commands
that say what they did, --dry-run, and logs (-v, -vv, --log-file) without secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from registry_client.argv import hoist_globals
from tests.support.helpers import run_cli


def push(tmp_path: Path, ref: str, seed: int = 0) -> str:
    from registry_client.sif import make_test_sif

    path = tmp_path / f"{seed}.sif"
    make_test_sif(path, 64 * 1024, seed=seed)
    result = run_cli("push", str(path), ref)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().removeprefix("sha256:")


@pytest.mark.parametrize(
    ("given", "hoisted"),
    [
        ("pull x/y:1 --json", "--json pull x/y:1"),
        ("cache ls --cache-dir D -q", "--cache-dir D -q cache ls"),
        ("pull --config=C x/y -vv", "--config=C -vv pull x/y"),
        ("--json cache dir --log-file L", "--json --log-file L cache dir"),
        ("push f x/y:1 -- --json", "push f x/y:1 -- --json"),
        ("--config C pull x/y", "--config C pull x/y"),
    ],
)
def test_hoist_globals(given: str, hoisted: str) -> None:
    assert hoist_globals(given.split()) == hoisted.split()


def test_global_options_after_the_subcommand(tmp_path: Path) -> None:
    assert run_cli("cache", "dir", "--cache-dir", str(tmp_path / "c")).stdout.strip() == str(
        tmp_path / "c"
    )
    as_json = run_cli("cache", "dir", "--json", "--cache-dir", str(tmp_path / "c"))
    assert json.loads(as_json.stdout) == {"path": str(tmp_path / "c")}
    cfg = tmp_path / "other.toml"
    cfg.write_text(f'[remotes.x]\ntype = "file"\npath = "{tmp_path}/x"\n')
    names = [
        r["name"]
        for r in json.loads(run_cli("remote", "ls", "--config", str(cfg), "--json").stdout)
    ]
    assert "x" in names


def test_fast_path_answers_with_options_after_pull(tmp_path: Path) -> None:
    sha = push(tmp_path, "lab/a:1")
    first = run_cli("pull", "lab/a:1")
    assert first.returncode == 0
    cache = run_cli("cache", "dir").stdout.strip()
    env = {"PYTHONPROFILEIMPORTTIME": "1"}
    for args in (
        ("pull", "lab/a:1", "--offline", "--json", "-q"),
        ("pull", f"lab/a:1@sha256:{sha}", "--cache-dir", cache),
        ("pull", "--offline", "lab/a:1", "--config", os.devnull),
    ):
        hit = run_cli(*args, env=env)
        assert hit.returncode == 0, hit.stderr
        assert first.stdout.strip() in hit.stdout
        assert "typer" not in hit.stderr, args  # answered before the full CLI loaded


def test_json_errors_are_json_on_stdout(tmp_path: Path) -> None:
    missing = run_cli("pull", "lab/none:1", "--json")
    assert missing.returncode == 3
    error = json.loads(missing.stdout)
    assert error["exit_code"] == 3 and "not found" in error["error"]["message"]
    assert missing.stderr.startswith("error: ")  # people still read stderr
    usage = run_cli("--json", "pull", "../bad")
    assert usage.returncode == 2 and json.loads(usage.stdout)["exit_code"] == 2
    click = run_cli("--json", "pull", "--no-such-option", "x/y:1")
    assert click.returncode == 2 and json.loads(click.stdout)["error"]["hint"]


def test_changing_commands_say_what_they_did(tmp_path: Path) -> None:
    push(tmp_path, "lab/a:1")
    tag = run_cli("tag", "lab/a:1", "lab/a:stable")
    assert tag.returncode == 0 and "tagged lab/a:1 as lab/a:stable" in tag.stderr
    dry = run_cli("rm", "lab/a:stable", "--dry-run")
    assert dry.returncode == 0 and "would delete lab/a:stable" in dry.stderr
    assert run_cli("pull", "lab/a:stable").returncode == 0  # still there
    gone = run_cli("rm", "lab/a:stable")
    assert gone.returncode == 0 and "deleted lab/a:stable" in gone.stderr
    assert run_cli("pull", "lab/a:stable").returncode == 3
    quiet = run_cli("-q", "tag", "lab/a:1", "lab/a:two")
    assert quiet.returncode == 0 and quiet.stderr == ""
    verify = run_cli("cache", "verify")
    assert "verified 1 image(s) and layer blob(s): 0 damaged" in verify.stderr


def test_copy_and_remote_commands_say_what_they_did(tmp_path: Path) -> None:
    push(tmp_path, "lab/a:1")
    other = tmp_path / "other"
    added = run_cli("remote", "add", "other", other.as_uri())
    assert added.returncode == 0 and f"added remote 'other' ({other.as_uri()})" in added.stderr
    assert "other" in [r["name"] for r in json.loads(run_cli("--json", "remote", "ls").stdout)]
    dry = run_cli("copy", "lab/a:1", "other:lab/a:1", "--dry-run")
    assert dry.returncode == 0 and "1 planned" in dry.stderr, dry.stderr
    assert dry.stdout.split()[:2] == ["copy", "lab/a:1"]
    assert run_cli("pull", "other:lab/a:1").returncode == 3  # the dry run wrote nothing
    copied = run_cli("copy", "lab/a:1", "other:lab/a:1")
    assert copied.returncode == 0 and "1 copied" in copied.stderr, copied.stderr
    assert copied.stdout.split()[:2] == ["copied", "lab/a:1"]
    assert run_cli("pull", "other:lab/a:1").returncode == 0
    again = run_cli("copy", "lab/a:1", "other:lab/a:1")
    assert again.returncode == 0 and "1 skipped" in again.stderr, again.stderr
    quiet = run_cli("-q", "copy", "lab/a:1", "other:lab/b:1")
    assert quiet.returncode == 0 and quiet.stderr == ""
    removed = run_cli("remote", "rm", "other")
    assert removed.returncode == 0 and "removed remote 'other'" in removed.stderr
    assert "other" not in run_cli("remote", "ls").stdout
    assert run_cli("remote", "rm", "other").returncode == 3
    quiet_add = run_cli("-q", "remote", "add", "again", other.as_uri())
    assert quiet_add.returncode == 0 and quiet_add.stderr == ""
    quiet_rm = run_cli("-q", "remote", "rm", "again")
    assert quiet_rm.returncode == 0 and quiet_rm.stderr == ""


def test_cache_clean_and_prune_dry_run_remove_nothing(tmp_path: Path) -> None:
    push(tmp_path, "lab/a:1")
    path = Path(run_cli("pull", "lab/a:1").stdout.strip())
    prune = run_cli("cache", "prune", "--max-size", "1K", "--dry-run", "--json")
    assert prune.returncode == 0 and json.loads(prune.stdout)["dry_run"] is True
    assert len(json.loads(prune.stdout)["removed"]) == 1 and path.exists()
    assert "would remove 1 image(s)" in prune.stderr
    clean = run_cli("cache", "clean", "--dry-run")
    assert clean.returncode == 0 and "would remove 1 image(s)" in clean.stderr and path.exists()
    done = run_cli("cache", "clean")
    assert "removed 1 image(s)" in done.stderr and not path.exists()


def test_verbose_logs_endpoints_requests_and_timings(tmp_path: Path) -> None:
    push(tmp_path, "lab/a:1")
    log = tmp_path / "rc.log"
    result = run_cli("pull", "lab/a:1", "-v", "--log-file", str(log))
    assert result.returncode == 0, result.stderr
    assert "remote local: file " in result.stderr
    assert "stat lab/a:1.sif: " in result.stderr and " ms" in result.stderr
    assert "pulled lab/a:1: " in result.stderr and "bytes" in result.stderr
    assert "read lab/a:1.sif bytes" not in result.stderr  # -vv only
    assert "pulled lab/a:1: " in log.read_text()
    assert os.stat(log).st_mode & 0o777 == 0o600
    more = run_cli("pull", "--force", "lab/a:1", "-vv")
    assert "read lab/a:1.sif bytes 0-" in more.stderr
    only_file = run_cli("pull", "--force", "lab/a:1", "--log-file", str(log))
    assert only_file.stderr == "" and log.read_text().count("pulled lab/a:1") == 2


def test_log_redaction() -> None:
    from registry_client.logs import redact

    line = redact(
        "GET https://s3/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=f00d "
        "X-Auth-Token: AUTH_tk0 https://u:hunter2@h/ secret_access_key='s3cr3t' "
        "temp_url_sig=abc"
    )
    for secret in ("f00d", "AUTH_tk0", "hunter2", "s3cr3t", "AKIA%2F1", "abc"):
        assert secret not in line


def test_push_to_the_local_remote_says_so(tmp_path: Path) -> None:
    from registry_client.sif import make_test_sif

    make_test_sif(tmp_path / "a.sif", 4096)
    result = run_cli("push", str(tmp_path / "a.sif"), "lab/a:1", env={"AWS_PROFILE": "ci"})
    assert result.returncode == 0
    assert "pushing to the built-in local remote" in result.stderr
    assert "AWS_PROFILE only apply to s3://" in result.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'default_remote = "mine"\n[remotes.mine]\ntype = "file"\npath = "{tmp_path}/m"\n'
    )
    configured = run_cli("--config", str(cfg), "push", str(tmp_path / "a.sif"), "lab/a:1")
    assert configured.returncode == 0 and "local remote" not in configured.stderr


def test_push_refuses_empty_files_and_tags_with_a_slash(tmp_path: Path) -> None:
    from registry_client.sif import make_test_sif

    (tmp_path / "empty.sif").write_bytes(b"")
    empty = run_cli("push", str(tmp_path / "empty.sif"), "lab/a:1")
    assert empty.returncode == 2 and "is empty" in empty.stderr
    make_test_sif(tmp_path / "a.sif", 4096)
    for ref in ("lab/app:feature/new-ui", "s3://images/lab/app:feature/new-ui"):
        slash = run_cli("push", str(tmp_path / "a.sif"), ref)
        assert slash.returncode == 2
        assert "the tag 'feature/new-ui' contains '/'" in slash.stderr
        assert "letters, digits, _ . -" in slash.stderr and "feature-new-ui" in slash.stderr


def test_not_found_hints_near_misses_and_ls(tmp_path: Path) -> None:
    push(tmp_path, "lab/app:1.2", seed=1)
    push(tmp_path, "lab/solver:2", seed=2)
    tag = run_cli("pull", "lab/app:1.3")
    assert tag.returncode == 3
    assert "hint: lab/app has the tags 1.2 (list them: registry-client ls local:lab)" in tag.stderr
    name = run_cli("pull", "lab/solvr:2")
    assert name.returncode == 3 and "did you mean lab/solver:2" in name.stderr
    assert "did you mean" in run_cli("rm", "lab/solvr:2").stderr
    assert "ls local:lab" in run_cli("tag", "lab/nothing:1", "lab/x:1").stderr


def test_ls_of_a_bucket_url_with_a_collection(tmp_path: Path) -> None:
    push(tmp_path, "lab/app:1", seed=1)
    push(tmp_path, "other/tool:2", seed=2)
    store = tmp_path / "home" / "data" / "registry-client" / "images"
    rows = json.loads(run_cli("ls", f"file://{store}/lab", "--json").stdout)
    assert [r["ref"] for r in rows] == [f"file://{store}/lab/app:1"]
    whole = json.loads(run_cli("ls", f"file://{store}", "--json").stdout)
    assert sorted(r["ref"] for r in whole) == [
        f"file://{store}/lab/app:1",
        f"file://{store}/other/tool:2",
    ]
    assert run_cli("pull", rows[0]["ref"]).returncode == 0  # listed refs pull as they are


def test_search_fills_arch(tmp_path: Path) -> None:
    push(tmp_path, "lab/app:1", seed=1)
    rows = json.loads(run_cli("search", "app", "--json").stdout)
    assert rows[0]["ref"] == "local:lab/app:1" and rows[0]["arch"] == "amd64"
    assert rows[0]["digest"].startswith("sha256:")


def test_an_endpoint_without_a_scheme_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[remotes.x]\ntype = "s3"\nbucket = "bkt"\nendpoint_url = "s3.example.org"\n')
    from_file = run_cli("--config", str(cfg), "pull", "x:lab/app:1")
    assert from_file.returncode == 2
    assert "endpoint_url 's3.example.org': expected a URL starting with http://" in from_file.stderr
    env = {"AWS_ENDPOINT_URL": "s3.example.org", "AWS_ACCESS_KEY_ID": "k"}
    from_env = run_cli("pull", "s3://bkt/lab/app:1", env=env)
    assert from_env.returncode == 2 and "AWS_ENDPOINT_URL 's3.example.org'" in from_env.stderr
    assert "hint: e.g. https://s3.example.org" in from_env.stderr
