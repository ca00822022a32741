"""The node cache: content-addressed, verified, published by one atomic rename.

Layout (docs/cache.md, version 1):

    ROOT/CACHEDIR.TAG
    ROOT/v1/sif/sha256/<hex>.sif         published images, whole and verified, mode 0444
    ROOT/v1/refs/<remote-id>/<collection>/<name>/<tag>.json   what a tag last resolved to
    ROOT/v1/etags/<id>                   sha256 of an object version (remote, key, etag)
    ROOT/v1/tmp/<name>.<pid>.<rand>.partial   downloads in progress (same filesystem as sif/)
    ROOT/v1/tmp/<version>.resume|.state  a resumable download and the ranges it holds
    ROOT/v1/locks/<id>.lock              work and use locks: they save work, never correctness
    ROOT/v1/quarantine/                  entries `cache verify` found damaged

Correctness never depends on a lock: a temp name is unique per process, a file is only
renamed into sif/ after it was verified, and its name is its sha256, so two publishers of
one name publish identical bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client import locks
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
    def __init__(
        self, root: str | os.PathLike[str], *, shared: bool = False, locking: bool = True
    ) -> None:
        self.root = Path(root).absolute()
        self.base = self.root / LAYOUT
        self.shared = shared
        self.locking = locking
        self._dir_mode = 0o2775 if shared else 0o700
        self._file_mode = 0o664 if shared else 0o600
        self._ready = False

    # -- setup ----------------------------------------------------------------
    def ensure(self) -> None:
        if self._ready:
            return
        old = os.umask(0o002 if self.shared else 0o077)
        try:
            for sub in ("sif/sha256", "refs", "etags", "tmp", "locks"):
                (self.base / sub).mkdir(parents=True, exist_ok=True, mode=self._dir_mode)
            if self.shared:
                self._share_folders()
            tag = self.root / "CACHEDIR.TAG"
            if not tag.exists():
                self._write_atomic(tag, CACHEDIR_TAG.encode())
        except PermissionError as exc:
            from registry_client.errors import AuthError

            raise AuthError(
                f"cannot write the cache at {self.root}: permission denied ({exc.strerror})",
                hint="choose another with --cache-dir",
            ) from None
        finally:
            os.umask(old)
        self._ready = True

    def _share_folders(self) -> None:
        """mkdir drops the setgid bit and leaves parents at the umask: set modes ourselves."""
        folders = [
            self.base,
            self.base / "sif",
            *(self.base / d for d in ("sif/sha256", "refs", "etags", "tmp", "locks")),
        ]
        for folder in folders:
            st = folder.stat()
            if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) != self._dir_mode:
                os.chmod(folder, self._dir_mode)

    # -- published images ---------------------------------------------------------
    def image_path(self, sha256: str) -> Path:
        return self.base / "sif" / "sha256" / f"{sha256}.sif"

    def lookup(self, sha256: str | None) -> Path | None:
        if not sha256:
            return None
        path = self.image_path(sha256)
        return path if path.is_file() else None

    def publish(self, tmp: Path, sha256: str, final: Path | None = None) -> Path:
        """Make a verified temp file visible under its content address, atomically.

        A hard link never replaces: if another process (no working locks on a shared
        filesystem) published the same address first, its file stays and ours goes.
        Filesystems without hard links get a rename, which is atomic too.
        """
        final = final or self.image_path(sha256)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o444)
        try:
            os.link(tmp, final)
            os.unlink(tmp)
        except FileExistsError:
            os.unlink(tmp)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            os.replace(tmp, final)
        fsync_dir(final.parent)
        return final

    # -- layer blobs of docker:// images (content-addressed like images) -----------
    def blob_path(self, sha256: str) -> Path:
        return self.base / "blobs" / "sha256" / sha256

    def lookup_blob(self, sha256: str) -> Path | None:
        path = self.blob_path(sha256)
        return path if path.is_file() else None

    def publish_blob(self, tmp: Path, sha256: str) -> Path:
        """A verified blob, published like an image: same checks, same atomic rename."""
        final = self.blob_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True, mode=self._dir_mode)
        return self.publish(tmp, sha256, final)

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

    def record_ref(
        self, remote_id: str, collection: str, name: str, tag: str, record: dict[str, Any]
    ) -> None:
        path = self._ref_path(remote_id, collection, name, tag)
        path.parent.mkdir(parents=True, exist_ok=True, mode=self._dir_mode)
        self._write_atomic(path, json.dumps(record, sort_keys=True).encode())

    def resolve_ref(
        self, remote_id: str, collection: str, name: str, tag: str
    ) -> dict[str, Any] | None:
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
    def _lock_path(self, name: str) -> Path:
        return self.base / "locks" / f"{name}.lock"

    @contextlib.contextmanager
    def lock(self, lock_id: str, on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
        """Hold the work lock of one object version; yield whether locking is on."""
        if not self.locking:
            yield False
            return
        self.ensure()
        with locks.exclusive(self._lock_path(lock_id), self._file_mode, on_wait):
            yield True

    @contextlib.contextmanager
    def using(self, sha256: str | None) -> Iterator[None]:
        """Keep `cache prune` away from an image while a pull looks it up and returns it."""
        if not (self.locking and sha256):
            yield
            return
        self.ensure()
        with locks.shared(self._lock_path(f"use-{sha256}"), self._file_mode):
            yield

    def touch(self, path: Path) -> None:
        """Record a use for least-recently-used pruning (atime, even on noatime mounts)."""
        with contextlib.suppress(OSError):
            os.utime(path, (time.time(), path.stat().st_mtime))

    # -- resumable downloads ------------------------------------------------------
    def resume_paths(self, version_id: str) -> tuple[Path, Path]:
        """The partial file and its state, reused by the next holder of the version's lock."""
        self.ensure()
        tmp = self.base / "tmp"
        return tmp / f"{version_id}.resume", tmp / f"{version_id}.state"

    def read_state(self, path: Path) -> dict[str, Any]:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, path: Path, state: dict[str, Any]) -> None:
        self._write_atomic(path, json.dumps(state).encode())

    def clean_dead_temps(self) -> int:
        """Remove temp files and build folders whose writer died (the pid is in the name)."""
        import shutil

        removed = 0
        folder = self.base / "tmp"
        for path in folder.iterdir() if folder.is_dir() else []:
            parts = path.name.split(".")  # download.<pid>.<rand>.partial, build.<pid>.<rand>.dir
            if parts[-1] not in ("partial", "dir") or len(parts) < 4 or not parts[-3].isdigit():
                continue
            if locks.pid_alive(int(parts[-3])):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
        return removed

    # -- listing and maintenance ------------------------------------------------------
    def entries(self, kind: str = "sif") -> list[CacheEntry]:
        """Published images (kind "sif") or docker layer blobs (kind "blobs")."""
        folder = self.base / kind / "sha256"
        found = []
        if folder.is_dir():
            for path in sorted(folder.glob("*.sif" if kind == "sif" else "*")):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    found.append(CacheEntry(path.stem, path, st.st_size, st.st_atime, st.st_mtime))
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
        return RegistryClientError(
            f"{what}: no space left on device",
            hint="free space or use --cache-dir on a larger disk",
        )
    return RegistryClientError(f"{what}: {exc.strerror or exc}")
