"""Throwaway Unix users for tests that must act as someone else (tests run as root in CI).

`run_as` forks this test process and drops to the user in the child: the interpreter the
tests run on may live where another user cannot read it (a pyenv under /root), so the
child keeps the modules already loaded instead of starting a new interpreter. Call it
after the code under test has run once in the parent, so nothing is left to import.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
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
