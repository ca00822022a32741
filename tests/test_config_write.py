"""`remote add` writes the config (which may hold a key) without writing through anything
another user planted: real throwaway users plant symlinks and files in a shared folder."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import console_script, run_cli
from tests.support.users import User, can_add_users, throwaway_user

SECRET = "hush-7a1c9f"


@pytest.fixture
def attacker() -> Iterator[User]:
    if not can_add_users():
        pytest.skip("needs root, useradd and setpriv (CI runs the tests as root)")
    with throwaway_user("rc-att") as user:
        yield user


def _as(user: User, *argv: str) -> None:
    subprocess.run(user.command(list(argv), umask=0), check=True, capture_output=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A sticky, world-writable folder (like /tmp) both users can reach."""
    folder = Path(tempfile.mkdtemp(prefix="rc-shared-", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _loot(attacker: User, folder: Path) -> Path:
    loot = folder / "loot"
    _as(attacker, "sh", "-c", f": > {loot}")
    assert loot.stat().st_uid == attacker.uid
    return loot


def _add_args(config: Path) -> list[str]:
    return [
        "--config",
        str(config),
        "remote",
        "add",
        "lab",
        "s3://images",
        "--option",
        f"secret_access_key={SECRET}",
    ]


def test_a_planted_temp_name_is_never_written_through(attacker: User, shared_dir: Path) -> None:
    """The attacker knows the writer's pid (here: the shell that execs the CLI keeps it)
    and plants a symlink at the temp name an older release used: `.NAME.<pid>.tmp`."""
    loot = _loot(attacker, shared_dir)
    config = shared_dir / "config.toml"
    config.write_text("")
    config.chmod(0o600)
    # $$ is the pid of the shell that execs the CLI: the attacker plants that exact name
    target = f"{shared_dir}/.config.toml.$$.tmp"
    plant = shlex.join(attacker.command(["ln", "-s", str(loot), "TARGET"])).replace(
        "TARGET", target
    )
    cli = shlex.join([*console_script(), *_add_args(config)])
    result = subprocess.run(
        ["sh", "-c", f"{plant} && exec {cli}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert [p for p in shared_dir.glob(".config.toml.*.tmp") if p.is_symlink()]  # planted
    assert loot.read_text() == ""  # the key did not land in the attacker's file
    st = config.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
    assert stat.S_IMODE(st.st_mode) == 0o600 and SECRET in config.read_text()
    leftovers = [p for p in shared_dir.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == []


def test_a_symlinked_config_is_refused(attacker: User, shared_dir: Path) -> None:
    loot = _loot(attacker, shared_dir)
    config = shared_dir / "config.toml"
    _as(attacker, "ln", "-s", str(loot), str(config))
    result = run_cli(*_add_args(config))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: refusing to write") and "symlink" in result.stderr
    assert loot.read_text() == "" and config.is_symlink()


def test_a_config_of_another_user_is_refused(attacker: User, shared_dir: Path) -> None:
    config = shared_dir / "config.toml"
    _as(attacker, "sh", "-c", f": > {config}")
    result = run_cli(*_add_args(config))
    assert result.returncode == 2 and "belongs to another user" in result.stderr
    assert config.read_text() == "" and config.stat().st_uid == attacker.uid


def test_a_folder_others_may_change_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)  # no sticky bit: anyone may rename or replace files in it
    (folder / "config.toml").write_text("")
    result = run_cli(*_add_args(folder / "config.toml"))
    assert result.returncode == 2 and "other users" in result.stderr
    assert [p.name for p in folder.iterdir()] == ["config.toml"]
    assert (folder / "config.toml").read_text() == ""
