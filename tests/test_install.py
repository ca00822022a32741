"""Installing it as an admin would: the man page generated from the CLI (--man-page), shell
completion, and `pipx install`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from registry_client.manpage import render
from tests.support.helpers import console_script, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_man_page_is_generated_from_the_cli(tmp_path: Path) -> None:
    import typer

    from registry_client.cli import app

    result = run_cli("--man-page")
    assert result.returncode == 0 and result.stdout == render(typer.main.get_command(app))
    text = result.stdout.replace("\\-", "-")
    root = typer.main.get_command(app)
    for name, command in root.commands.items():  # every command and option is in it
        for sub in getattr(command, "commands", {name: command}).values():
            for param in (p for p in sub.params if p.param_type_name == "option"):
                assert all(opt in text for opt in param.opts), (name, param.opts)
    for command in ("pull [OPTIONS] REF", "cache warm [OPTIONS] SOURCE", "resolve [OPTIONS] REFS"):
        assert command in text
    (tmp_path / "registry-client.1").write_text(result.stdout)
    if shutil.which("man"):
        shown = subprocess.run(
            ["man", "--warnings", "-l", str(tmp_path / "registry-client.1")],
            capture_output=True,
            text=True,
            env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"},
            timeout=60,
        )
        assert shown.returncode == 0 and shown.stderr == "", shown.stderr
        assert "REGISTRY-CLIENT(1)" in shown.stdout and "cache warm" in shown.stdout


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o default -F _registry_client_completion registry-client"),
        ("zsh", "#compdef registry-client"),
        ("fish", "complete --command registry-client"),
    ],
)
def test_completion_scripts_for_each_shell(shell: str, marker: str) -> None:
    """What docs/hpc.md writes to /etc: the script of a named shell, whatever shell (or
    none, under a configuration tool) runs the command."""
    script = subprocess.run(
        console_script(),
        env={**os.environ, "_REGISTRY_CLIENT_COMPLETE": f"source_{shell}"},
        capture_output=True,
        text=True,
        start_new_session=True,  # no shell above it to detect
        timeout=60,
    )
    assert script.returncode == 0 and marker in script.stdout, script.stderr


def test_completion_completes_commands_and_subcommands() -> None:
    def complete(words: str, cword: int) -> list[str]:
        env = {
            **os.environ,
            "_REGISTRY_CLIENT_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(cword),
        }
        out = subprocess.run(console_script(), env=env, capture_output=True, text=True)
        return out.stdout.split()

    assert complete("registry-client ca", 1) == ["cache"]
    assert complete("registry-client cache w", 2) == ["warm"]
    assert "resolve" in complete("registry-client re", 1)


@pytest.mark.servers  # installs from the package index: not in the inner loop
def test_pipx_install(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True, timeout=300)
    pip = subprocess.run(
        [str(tools / "bin" / "python"), "-m", "pip", "install", "-q", "pipx"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    installed = subprocess.run(
        [str(tools / "bin" / "pipx"), "install", str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    command = tmp_path / "bin" / "registry-client"
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("registry-client ")
    cache = subprocess.run(
        [str(command), "cache", "dir"], capture_output=True, text=True, env=env, timeout=60
    )
    assert cache.returncode == 0 and cache.stdout.strip()
