"""Installing it as an admin would: the man page generated from the CLI, shell completion,
and `pipx install`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from registry_client.manpage import render
from tests.support.helpers import console_script, run_cli

ROOT = Path(__file__).resolve().parents[1]
MAN = ROOT / "docs" / "registry-client.1"


def test_man_page_is_generated_from_the_cli() -> None:
    assert MAN.read_text() == render(), (
        "run: python -m registry_client.manpage > docs/registry-client.1"
    )
    text = render()
    for command in (
        "pull [OPTIONS] REF",
        "cache warm [OPTIONS] SOURCE",
        "resolve [OPTIONS] REFS...",
    ):
        assert command in text.replace("\\-", "-")


@pytest.mark.skipif(shutil.which("man") is None, reason="no man(1) here")
def test_man_page_renders_without_warnings() -> None:
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MAN)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80"},
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "REGISTRY-CLIENT(1)" in result.stdout and "cache warm" in result.stdout


def test_wheel_installs_the_man_page(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert any(n.endswith(".data/data/share/man/man1/registry-client.1") for n in names)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_and_answers(shell: str) -> None:
    script = run_cli("--show-completion", shell)
    assert script.returncode == 0 and "_REGISTRY_CLIENT_COMPLETE" in script.stdout


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
    assert (tmp_path / "man" / "man1" / "registry-client.1").exists()
    cache = subprocess.run(
        [str(command), "cache", "dir"], capture_output=True, text=True, env=env, timeout=60
    )
    assert cache.returncode == 0 and cache.stdout.strip()
