"""The node cache: content-addressed, verified, published by one atomic rename.

Layout (docs/cache.md, version 1):

    ROOT/CACHEDIR.TAG
    ROOT/v1/sif/sha256/<hex>.sif         published images, whole and verified, mode 0444
    ROOT/v1/refs/<remote-id>/<collection>/<name>/<tag>.json   what a tag last resolved to
    ROOT/v1/etags/<id>                   sha256 of an object version (remote, key, etag)
    ROOT/v1/tmp/<unique>.partial         downloads in progress (same filesystem as sif/)
    ROOT/v1/locks/<id>.lock              per-image locks: they save work, never correctness

Correctness never depends on a lock: a temp name is unique per process, a file is only
renamed into sif/ after it was verified, and its name is its sha256, so two publishers of
one name publish identical bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client.errors import RegistryClientError

LAYOUT = "v1"
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by registry-client.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)


def short_id(*parts: str) -> str:
    """A stable, filesystem-safe id for arbitrary text (remote locations, keys, etags)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CacheEntry:
    sha256: str
    path: Path
    size: int
    atime: float
    mtime: float


class Cache:
    def __init__(self, root: str | os.PathLike[str], *, shared: bool = False,
                 locking: bool = True) -> None:
        self.root = Path(root).absolute()
        self.base = self.root / LAYOUT
        self.shared = shared
        self.locking = locking
        self._dir_mode = 0o2775 if shared else 0o700
        self._ready = False

    # -- setup ----------------------------------------------------------------
    def ensure(self) -> None:
        if self._ready:
            return
        old = os.umask(0o002 if self.shared else 0o077)
        try:
            for sub in ("sif/sha256", "refs", "etags", "tmp", "locks"):
                (self.base / sub).mkdir(parents=True, exist_ok=True, mode=self._dir_mode)
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                self._write_atomic(tag, CACHEDIR_TAG.encode())
        except PermissionError as exc:
            from registry_client.errors import AuthError

            raise AuthError(f"cannot write the cache at {self.root}: {exc.strerror}",
                            hint="choose another with --cache-dir") from None
        finally:
            os.umask(old)
        self._ready = True

    # -- published images ---------------------------------------------------------
    def image_path(self, sha256: str) -> Path:
        return self.base / "sif" / "sha256" / f"{sha256}.sif"

    def lookup(self, sha256: str | None) -> Path | None:
        if not sha256:
            return None
        path = self.image_path(sha256)
        return path if path.is_file() else None

    def publish(self, tmp: Path, sha256: str) -> Path:
        """Make a verified temp file visible under its content address, atomically."""
        final = self.image_path(sha256)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)  # same bytes if someone beat us: replacing is harmless
        fsync_dir(final.parent)
        return final

    # -- temp files -----------------------------------------------------------
    @contextlib.contextmanager
    def temp_file(self, hint: str = "download") -> Iterator[Path]:
        """A unique temp path inside the cache; removed unless it was published."""
        self.ensure()
        path = self.base / "tmp" / f"{hint}.{os.getpid()}.{secrets.token_hex(6)}.partial"
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- small indexes ----------------------------------------------------------
    def _ref_path(self, remote_id: str, collection: str, name: str, tag: str) -> Path:
        return self.base / "refs" / remote_id / collection / name / f"{tag}.json"

    def record_ref(self, remote_id: str, collection: str, name: str, tag: str,
                   record: dict[str, Any]) -> None:
        path = self._ref_path(remote_id, collection, name, tag)
        path.parent.mkdir(parents=True, exist_ok=True, mode=self._dir_mode)
        self._write_atomic(path, json.dumps(record, sort_keys=True).encode())

    def resolve_ref(self, remote_id: str, collection: str, name: str,
                    tag: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._ref_path(remote_id, collection, name, tag).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _etag_path(self, *version: str) -> Path:
        return self.base / "etags" / short_id(*version)

    def record_etag(self, sha256: str, *version: str) -> None:
        self._write_atomic(self._etag_path(*version), sha256.encode())

    def resolve_etag(self, *version: str) -> str | None:
        try:
            text = self._etag_path(*version).read_text().strip()
        except OSError:
            return None
        return text if len(text) == 64 else None

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)

    # -- locks ------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, lock_id: str,
             on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the per-image lock; if another process holds it, tell on_wait and block."""
        if not self.locking:
            yield
            return
        self.ensure()
        path = self.base / "locks" / f"{lock_id}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664 if self.shared else 0o600)
        except OSError:
            yield  # cannot lock here (read-only or odd FS): correctness does not need it
            return
        try:
            _acquire(fd, on_wait)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- listing and maintenance ------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        folder = self.base / "sif" / "sha256"
        found = []
        if folder.is_dir():
            for path in sorted(folder.glob("*.sif")):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    found.append(CacheEntry(path.stem, path, st.st_size, st.st_atime,
                                            st.st_mtime))
        return found

    def refs(self) -> Iterator[dict[str, Any]]:
        folder = self.base / "refs"
        for path in sorted(folder.glob("*/*/*/*.json")) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                yield json.loads(path.read_bytes())

    def clean(self) -> int:
        """Remove everything below the root; return bytes freed."""
        import shutil

        freed = sum(e.size for e in self.entries())
        if self.base.exists():
            for path in self.base.rglob("*"):
                with contextlib.suppress(OSError):
                    if path.is_dir():
                        path.chmod(0o700)
            shutil.rmtree(self.base, ignore_errors=True)
        self._ready = False
        return freed


def _acquire(fd: int, on_wait: Callable[[str], None] | None) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno == errno.ENOLCK:
            return  # no lock support (some NFS mounts): go on unlocked
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        if on_wait:
            on_wait(_holder(fd))
        fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel frees it if the holder dies
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {time.time():.0f}\n".encode(), 0)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").split()
        return f"pid {text[0]}" if text else "another process"
    except OSError:
        return "another process"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def raise_for_os_error(exc: OSError, what: str) -> RegistryClientError:
    """Map disk-full and permission errors to clear, coded errors."""
    from registry_client.errors import AuthError

    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AuthError(f"{what}: permission denied ({exc.strerror})")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RegistryClientError(f"{what}: no space left on device",
                                   hint="free space or use --cache-dir on a larger disk")
    return RegistryClientError(f"{what}: {exc.strerror or exc}")
