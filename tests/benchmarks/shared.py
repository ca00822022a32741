"""A group-shared node cache for the warm-pull figure, set up as docs/hpc.md's recipe and
docs/security.md say.

The admin (root, the runner) names the cache in a site file, mode 644 (`cache_dir`,
`[cache] shared = true`), makes the cache folder 3775 root:GROUP with `install -d`, and runs
`registry-client cache dir` once, so that root owns every folder inside it. Root then
pulls the image: a file of a trusted user (root), which a member's hit checks by type,
owner, link count and size and uses in place. The member is a throwaway user in GROUP
(tests/support/users.py) with its remote and credentials in a 0600 config of its own, as
in docs/hpc.md. Its commands run through `setpriv` on an interpreter it may execute, so
the member's own `python -c 'import typer'` is timed beside them as their baseline.
Everything (user, group, folders) is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomlkit

from tests.benchmarks.measure import checked, run_timed
from tests.benchmarks.world import Image, Target, World
from tests.support.users import User, Users, can_add_users

MEMBER = "shared, member:"  # prefix of the case names timed as the member
TYPER = f"{MEMBER} python -c 'import typer'"

Cases = dict[str, tuple[list[str], dict[str, str]]]


@contextlib.contextmanager
def shared_cache_cases(
    world: World, rc: str, target: Target, image: Image, hits: dict[str, list[str]]
) -> Iterator[tuple[Cases, str]]:
    """The member's cases (its `import typer` baseline and `pull ARGS` of each hit, the
    names prefixed with MEMBER) and a note; no cases (and why) where the runner may not
    make users."""
    if not can_add_users():
        yield {}, "shared-cache rows left out: they need root (useradd, setpriv)"
        return
    users = Users()
    try:
        yield _set_up(users, world, rc, target, image, hits), ""
    finally:
        users.cleanup()


def _set_up(
    users: Users, world: World, rc: str, target: Target, image: Image, hits: dict[str, list[str]]
) -> Cases:
    group, _gid = users.group("bench")
    member = users.user("member", group)
    cache = users.base / "shared-cache"
    site = users.base / "site.toml"  # the site file: cache location and policy, no secrets
    site.write_text(tomlkit.dumps({"cache_dir": str(cache), "cache": {"shared": True}}))
    os.chmod(site, 0o644)
    root_env = _env(world.base_env(), site, _own_config(world, target, users.root, "root"))
    _admin(["install", "-d", "-m", "3775", "-o", "root", "-g", group, str(cache)], root_env)
    if _admin([rc, "cache", "dir"], root_env) != str(cache):  # the site file names it
        raise RuntimeError(f"`cache dir` as root did not name {cache}")
    published = checked(run_timed([rc, "pull", image.ref], root_env), "root's pull (shared)")
    _check_published(Path(published.stdout), cache)
    env = _env(member.env(), site, _own_config(world, target, member, "member"))
    python, boot = _interpreter(users)
    typer = [python, "-c", "import site, sys; site.addsitedir(sys.argv[1]); import typer", boot]
    client = [python, "-c", _BOOT_SOURCE, boot]
    cases = {TYPER: (users.command(member, *typer), env)}
    for name, args in hits.items():
        cases[f"{MEMBER} {name}"] = cmd = (users.command(member, *client, "pull", *args), env)
        hit = checked(run_timed(*cmd), f"the member's pull {name} (shared)")
        if hit.stdout != published.stdout:  # root's file in place: no copy, no download
            raise RuntimeError(f"the member's pull {name} gave {hit.stdout}, not root's file")
    return cases


# What Users.python() runs: this environment's packages on an interpreter the member may
# execute, then the console script's entry point.
_BOOT_SOURCE = (
    "import site, sys; site.addsitedir(sys.argv.pop(1)); "
    "from registry_client.entry import main; sys.exit(main())"
)


def _interpreter(users: Users) -> tuple[str, str]:
    """(interpreter, site-packages folder) the member runs the console script with."""
    found = users.python()  # [python, "-c", BOOT, site]
    if found[2] != _BOOT_SOURCE:
        raise RuntimeError("tests/support/users.py changed how it runs the CLI")
    return found[0], found[3]


def _own_config(world: World, target: Target, user: User, name: str) -> Path:
    """The user's own 0600 config: the remote `lab` with its credentials."""
    path = user.home / f"{name}.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    data: dict[str, Any] = {"default_remote": "lab", "remotes": {"lab": target.remote()}}
    if world.transfer:
        data["transfer"] = dict(world.transfer)
    with os.fdopen(fd, "w") as fh:
        fh.write(tomlkit.dumps(data))
    os.chown(path, user.uid, user.gid)
    return path


def _env(base: dict[str, str], site: Path, config: Path) -> dict[str, str]:
    return {
        **base,
        "REGISTRY_CLIENT_SITE_CONFIG": str(site),
        "REGISTRY_CLIENT_CONFIG": str(config),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _admin(cmd: list[str], env: dict[str, str]) -> str:
    """One of root's set-up commands; its stdout."""
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name}: {proc.stderr.strip()[-400:]}")
    return proc.stdout.strip()


def _check_published(path: Path, cache: Path) -> None:
    """Root's pull published into the shared cache, every folder root's and 3775."""
    if cache not in path.parents:
        raise RuntimeError(f"root's pull went to {path}, not the shared cache {cache}")
    for folder in [p for p in path.parents if cache in p.parents or p == cache]:
        st = folder.stat()
        if st.st_uid != 0 or stat.S_IMODE(st.st_mode) != 0o3775:
            raise RuntimeError(f"{folder}: uid {st.st_uid}, mode {oct(st.st_mode)}")
