"""Throwaway Unix users for tests that must act as someone else (tests run as root in CI).

`run_as` forks this test process and drops to the user in the child: the interpreter the
tests run on may live where another user cannot read it (a pyenv under /root), so the
child keeps the modules already loaded instead of starting a new interpreter. Call it
after the code under test has run once in the parent, so nothing is left to import.

`Users` makes several users and shared groups at once (the attack tests of a shared
cache: a victim, an attacker in the victim's group, an outsider), each with a home and
XDG folders of its own, and runs the installed CLI as any of them in a new process: on
this interpreter when they may execute it, else on the system's Python of the same
version, with this environment's packages. Everything is removed afterwards: the
processes it started (by pid), the users, the groups and the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path  # a private folder the user owns (outside root's 0700 pytest folders)

    def command(self, argv: list[str], umask: int = 0o077) -> list[str]:
        """argv run as this user, with no supplementary groups and the given umask."""
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [
            setpriv,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            f'umask {umask:03o} && exec "$@"',
            "sh",
            *argv,
        ]

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment of this user's own (HOME and XDG folders in its home)."""
        return {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            **extra,
        }


def can_add_users() -> bool:
    return os.geteuid() == 0 and bool(shutil.which("useradd") and shutil.which("setpriv"))


@contextlib.contextmanager
def throwaway_user(prefix: str = "rc-test") -> Iterator[User]:
    """A new system user with its own group and home folder; removed afterwards."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh", name],
        check=True,
        capture_output=True,
    )
    home = Path(tempfile.mkdtemp(prefix=f"{name}."))
    try:
        import pwd

        entry = pwd.getpwnam(name)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        yield User(name, entry.pw_uid, entry.pw_gid, home)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def run_as(user: User, fn: Callable[[], Any], *, umask: int = 0o077) -> Any:
    """fn() in a forked child running as `user` (no supplementary groups, HOME its own
    folder, the given umask); its JSON-able result, or AssertionError with its error."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.umask(umask)
            os.environ["HOME"] = str(user.home)
            answer = {"ok": fn()}
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as out:
            json.dump(answer, out)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as inp:
        text = inp.read()
    os.waitpid(pid, 0)
    answer = json.loads(text or '{"error": "the child died"}')
    if "error" in answer:
        raise AssertionError(f"as {user.name}: {answer['error']}")
    return answer["ok"]


# The console script as another user runs it: this environment's packages (with their
# editable-install hooks) on an interpreter that user can execute.
_BOOT = (
    "import site, sys; site.addsitedir(sys.argv.pop(1)); "
    "from registry_client.entry import main; sys.exit(main())"
)


class Users:
    """Make users and groups; run commands as them; remove everything at the end."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.base = Path(tempfile.mkdtemp(prefix="rc-users-", dir="/tmp"))
        os.chmod(self.base, 0o755)  # the users must reach their homes
        self.users: list[User] = []
        self.groups: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._python: list[str] | None = None
        # root too gets a home of its own here: its private cache must not land in /root.
        self.root = User("root", 0, 0, self.base / "home-root")
        self.root.home.mkdir(mode=0o700)

    def group(self, role: str) -> tuple[str, int]:
        name = f"rc{role}{self.tag}"
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        self.groups.append(name)
        return name, int(_getent("group", name)[2])

    def user(self, role: str, group: str) -> User:
        name = f"rc{role}{self.tag}"
        home = self.base / f"home-{role}"
        cmd = ["useradd", "-M", "-N", "-g", group, "-d", str(home), "-s", "/usr/sbin/nologin"]
        subprocess.run([*cmd, name], check=True, capture_output=True)
        entry = _getent("passwd", name)
        user = User(name, int(entry[2]), int(entry[3]), home)
        self.users.append(user)
        home.mkdir(mode=0o700)
        os.chown(home, user.uid, user.gid)
        return user

    # -- running commands as a user ----------------------------------------------------------
    def command(self, user: User, *args: str) -> list[str]:
        """argv as `user` (its primary group is the one the tests gave it); root as is."""
        return list(args) if user.uid == 0 else user.command(list(args), umask=0o022)

    def run(
        self, user: User, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Any command as `user`, in a clean environment of its own."""
        return subprocess.run(
            self.command(user, *args),
            capture_output=True,
            text=True,
            env=user.env(**(env or {})),
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=str(self.base),
        )

    def cli(
        self, user: User, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`registry-client ARGS` as `user`."""
        return self.run(user, *self.python(), *args, env=env, timeout=timeout)

    def spawn(self, user: User, *args: str, env: dict[str, str] | None = None) -> Any:
        """Start a command as `user` (stopped by pid at the end, if still running)."""
        proc = subprocess.Popen(
            self.command(user, *args),
            env=user.env(**(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(self.base),
        )
        self.procs.append(proc)
        return proc

    def python(self) -> list[str]:
        """How another user runs the CLI: the first interpreter of this Python version it
        can execute that imports this environment's packages; skip when there is none."""
        if self._python is None:
            self._python = self._find_python()
        return self._python

    def _find_python(self) -> list[str]:
        probe = self.users[0] if self.users else None
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        site = sysconfig.get_paths()["purelib"]
        tried = []
        for exe in dict.fromkeys([sys.executable, shutil.which(version), f"/usr/bin/{version}"]):
            if not exe:
                continue
            cmd = [exe, "-c", _BOOT, site]
            if probe is None:
                return cmd
            result = self.run(probe, *cmd, "--version")
            if result.returncode == 0:
                return cmd
            tried.append(f"{exe}: {result.stderr.strip()[-200:]}")
        import pytest

        pytest.skip(f"no Python the test users can run: {'; '.join(tried)}")

    # -- the end -------------------------------------------------------------------------------
    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        for user in self.users:
            subprocess.run(["userdel", user.name], capture_output=True)
        for group in self.groups:
            subprocess.run(["groupdel", group], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def _getent(database: str, name: str) -> list[str]:
    out = subprocess.run(["getent", database, name], check=True, capture_output=True, text=True)
    return out.stdout.strip().split(":")


def need_root() -> None:
    import pytest

    if os.geteuid() != 0:
        pytest.skip("attack tests make throwaway users: they run as root (as in CI)")
    for tool in ("useradd", "groupadd", "userdel", "groupdel", "setpriv", "getent"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            pytest.skip(f"attack tests need {tool}")
