"""What the bounded-time tests share (tests/test_stall.py for bucket stores,
tests/test_stall_sources.py for the Library, the Hub, registries and cache proxies): a
config with a short `[transfer] stall_timeout`, Ctrl-C sent to a running command, and what
a node's cache holds afterwards (the download locks someone holds, the files published).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client import locks
from registry_client.cache import LAYOUT
from registry_client.config import RemoteConfig
from tests.support.helpers import console_script

MiB = 1024 * 1024
#: cache folders whose files a pull hands out or trusts later (not tmp/, locks/, quarantine/)
PUBLISHED = ("sif", "blobs", "refs", "etags")


def stall_config(
    path: Path, stall_timeout: float, remote: RemoteConfig | None = None, **tables: Any
) -> dict[str, str]:
    """Write a 0600 config with 1 MiB ranges, two at once and `stall_timeout`, `remote` as
    the default remote `lab` and `tables` (e.g. fleet={...}); the environment that uses it
    with a node cache of its own next to it."""
    import tomlkit

    data: dict[str, Any] = {
        "transfer": {"chunk_size": MiB, "concurrency": 2, "stall_timeout": stall_timeout},
        **tables,
    }
    if remote is not None:
        data["default_remote"] = remote.name
        data["remotes"] = {remote.name: {"type": remote.type, **remote.options}}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(tomlkit.dumps(data))
    return {
        "REGISTRY_CLIENT_CONFIG": str(path),
        "REGISTRY_CLIENT_CACHE_DIR": str(path.parent / "nodecache"),
    }


@dataclass(frozen=True)
class Interrupted:
    code: int
    out: str
    err: str
    seconds: float  # from SIGINT to the process's end


def ctrl_c(
    args: list[str], env: dict[str, str], started: Callable[[], bool], *, wait: float = 60
) -> Interrupted:
    """Run `registry-client ARGS`, wait until `started()` is true (the transfer is under
    way), then send SIGINT as a terminal's Ctrl-C does; how and how fast it ended."""
    proc = subprocess.Popen(
        [*console_script(), *args],
        env={**os.environ, **env},
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + wait
        while not started():
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate()
                raise AssertionError(f"the transfer never got under way: {err}{out}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        out, err = proc.communicate(timeout=wait)
        return Interrupted(proc.returncode, out, err, time.monotonic() - start)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def lock_files(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / LAYOUT / "locks").glob("*.lock"))


def held_locks(cache_dir: Path) -> list[str]:
    """The cache's lock files someone holds now: each tried with locks.try_exclusive
    (never waiting), the way another pull on the node would find them."""
    folder = cache_dir / LAYOUT / "locks"
    if not folder.is_dir():
        return []
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        held = []
        for path in lock_files(cache_dir):
            with locks.try_exclusive(fd, path.name) as got:
                if not got:
                    held.append(path.name)
        return held
    finally:
        os.close(fd)


def published(cache_dir: Path) -> list[str]:
    """What a failed pull must not leave in the cache: an image, a tag or ETag record, a
    blob whose bytes are not the sha256 it is named by. (The verified layer blobs of a
    docker:// image stay, for the next pull to use.)"""
    base = cache_dir / LAYOUT
    found = []
    for folder in PUBLISHED:
        with contextlib.suppress(FileNotFoundError):
            found += [p for p in (base / folder).rglob("*") if p.is_file()]
    return sorted(str(p.relative_to(base)) for p in found if not _verified_blob(base, p))


def _verified_blob(base: Path, path: Path) -> bool:
    if path.parent != base / "blobs" / "sha256":
        return False
    return hashlib.sha256(path.read_bytes()).hexdigest() == path.name.partition(".")[0]
