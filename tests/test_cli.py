"""The CLI as users run it: exit codes, one-line errors, stdout discipline, start-up cost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import CLI, run_cli


@pytest.mark.parametrize(
    "ref",
    [
        "../etc/passwd",
        "lab/app\x01",
        "Lab/App",
        "lab/app:",
        "x" * 5000,
        "lab/../app",
        "s3://bucket/../lab/app",
    ],
)
def test_bad_reference_exit_2_one_line(ref: str) -> None:
    result = run_cli("pull", ref)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: invalid reference")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 2


def test_version_and_python_m() -> None:
    script = run_cli("--version")
    module = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout and script.stdout.startswith("registry-client ")


@pytest.mark.parametrize(
    ("args", "said", "help_of"),
    [
        (["pull"], "error: Missing argument", "registry-client pull"),
        (["no-such-command"], "error: No such command 'no-such-command'", "registry-client"),
        (["pull", "--bogus", "x"], "error: No such option: --bogus", "registry-client pull"),
        (["pull", "a", "b"], "error: Got unexpected extra argument", "registry-client pull"),
        (["cache", "prune", "--max-age"], "error: Option '--max-age' requires", "registry-client"),
    ],
)
def test_usage_errors_are_two_lines_exit_2(args: list[str], said: str, help_of: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith(said), result.stderr
    assert lines[1] == f"hint: see `{help_of} --help`"


def test_a_bare_command_group_prints_its_help() -> None:
    result = run_cli("cache")
    assert result.returncode == 2 and "Usage:" in result.stdout + result.stderr
    assert "\\n" not in result.stdout + result.stderr


def test_error_lines_escape_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    from registry_client.console import print_error
    from registry_client.errors import RegistryClientError

    forged = "boom\nerror: forged\r\x1b[2K\u202edlrow\x00"
    print_error(RegistryClientError(forged, hint="a\nhint: forged too"))
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: boom\\nerror: forged\\r\\x1b[2K\\u202edlrow\\x00",
        "hint: a\\nhint: forged too",
    ]
    print_error(RegistryClientError("x" * 100_000))
    assert len(capsys.readouterr().err) < 2100


def test_missing_image_exit_3(tmp_path: Path) -> None:
    result = run_cli("pull", "lab/none:1")
    assert result.returncode == 3 and result.stderr.startswith("error: ")


def test_push_missing_file_and_strict(tmp_path: Path) -> None:
    assert run_cli("push", str(tmp_path / "nope.sif"), "lab/a:1").returncode == 3
    (tmp_path / "notsif").write_bytes(b"hello")
    strict = run_cli("push", "--strict", str(tmp_path / "notsif"), "lab/a:1")
    assert strict.returncode == 2 and "not a SIF" in strict.stderr
    lax = run_cli("push", str(tmp_path / "notsif"), "lab/a:1")
    assert lax.returncode == 0 and "warning:" in lax.stderr
    assert lax.stdout.startswith("sha256:")


def test_zero_config_round_trip_and_json(sample_sif: Path, tmp_path: Path) -> None:
    pushed = run_cli("push", "--json", str(sample_sif), "lab/app:1")
    assert json.loads(pushed.stdout)["sha256"]
    out = tmp_path / "copy.sif"
    pulled = run_cli("pull", "-o", str(out), "lab/app:1")
    assert pulled.returncode == 0 and pulled.stdout == f"{out}\n"
    assert out.read_bytes() == sample_sif.read_bytes()
    cached = json.loads(run_cli("cache", "ls", "--json").stdout)
    assert len(cached) == 1 and cached[0]["refs"] == ["lab/app:1"]
    info = json.loads(run_cli("inspect", "--json", str(sample_sif)).stdout)
    assert info["sif"]["header"]["arch"] == "amd64"
    assert run_cli("cache", "dir").stdout.strip().endswith("registry-client")
    assert run_cli("--json", "cache", "clean").returncode == 0
    assert json.loads(run_cli("cache", "ls", "--json").stdout) == []


def test_cache_hit_by_digest_or_offline_does_not_import_boto3(sample_sif: Path) -> None:
    sha = run_cli("push", str(sample_sif), "lab/app:1").stdout.strip()
    assert run_cli("pull", "lab/app:1").returncode == 0
    code = (
        "import sys; from registry_client.cli import main; "
        "rc = main(sys.argv[1:]); print('boto3' in sys.modules, rc, file=sys.stderr)"
    )
    for args in (["pull", f"lab/app:1@{sha}"], ["pull", "--offline", "lab/app:1"]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert result.stderr.strip().endswith("False 0"), result.stderr


def test_interrupt_exit_130() -> None:
    import os
    import signal
    import time

    proc = subprocess.Popen(
        [*CLI, "pull", "s3://rc-none/lab/app:1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "y",
        },
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, 6), err  # 6 if it already gave up on the closed port
    assert "Traceback" not in err
