"""A local directory laid out like a bucket: the zero-config default remote.

Objects are files at ROOT/[PREFIX/]COLLECTION/NAME:TAG.sif, written by temp file and
rename. Metadata and the md5 "ETag" sit beside each object in a hidden sidecar
`.NAME:TAG.sif.meta.json`, so listings and other tools see only the images.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from registry_client.backends.base import (
    Backend,
    Capabilities,
    Limiter,
    Metadata,
    ObjectInfo,
    Reader,
    ReadWatch,
    Upload,
    innermost,
    metadata_of,
)
from registry_client.errors import (
    AuthError,
    IntegrityError,
    NotFound,
    ObjectChanged,
    RegistryClientError,
)

if TYPE_CHECKING:
    from registry_client.config import RemoteConfig

BLOCK = 4 * 1024 * 1024
SIDECAR = ".{}.meta.json"
LOCAL_IO = 8  # reads and writes at once on a local or shared filesystem


class FileBackend(Backend):
    kind = "file"
    capabilities = Capabilities(copy=True, copy_from=True)

    def __init__(
        self,
        root: str | os.PathLike[str],
        prefix: str = "",
        options: Mapping[str, object] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.prefix = prefix
        self.location = f"file://{self.root}/{prefix}"
        self.limiter = Limiter.from_options(options or {}, default=LOCAL_IO)

    @classmethod
    def from_remote(cls, remote: RemoteConfig) -> FileBackend:
        return cls(os.path.expanduser(remote.location), remote.prefix, remote.options)

    # -- paths ----------------------------------------------------------------
    def _path(self, key: str) -> Path:
        path = (self.root / (self.prefix + key)).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise NotFound(f"{key}: outside the remote")
        return path

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(SIDECAR.format(path.name))

    # -- verbs ----------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.location}") from None
        except PermissionError:
            raise AuthError(f"{key}: permission denied in {self.location}") from None
        if not path.is_file():
            raise NotFound(f"{key} not found in {self.location}")
        meta = self._read_sidecar(path)
        etag = meta.pop("etag", None) if meta.get("size") == str(st.st_size) else None
        if etag is None:
            meta = {}  # a stale sidecar says nothing about the current file
        modified = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        return ObjectInfo(key, st.st_size, etag, meta, modified)

    def _read_sidecar(self, path: Path) -> dict[str, str]:
        try:
            data = json.loads(self._sidecar(path).read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def read_range(
        self,
        key: str,
        start: int,
        end: int,
        etag: str | None,
        *,
        watch: ReadWatch | None = None,  # local reads: nothing to shut down
    ) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.location}") from None
        with fh:
            if etag is not None and self._read_sidecar(path).get("etag") != etag:
                raise ObjectChanged(f"{key} changed while it was being read")
            fh.seek(start)
            pos = start
            while pos < end:
                chunk = fh.read(min(BLOCK, end - pos))
                if not chunk:
                    raise ObjectChanged(f"{key} shrank while it was being read")
                pos += len(chunk)
                yield chunk

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self.root / self.prefix
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(base).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(NotFound):
                        yield self.stat(key)

    def start_upload(self, key: str, size: int, metadata: Metadata, *, part_size: int) -> Upload:
        return _FileUpload(self, key, size, metadata)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.location}") from None
        self._sidecar(path).unlink(missing_ok=True)

    def copy(
        self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        info = self.stat(src_key)  # put() writes the copy's own etag and size
        meta = info.metadata if metadata is None else metadata
        return self.put(dst_key, str(self._path(src_key)), meta, part_size=0, concurrency=1)

    def copy_from(
        self, source: Reader, info: ObjectInfo, dst_key: str, metadata: Mapping[str, str]
    ) -> ObjectInfo | None:
        """A local copy from another directory remote; its md5 must be the source's."""
        other = innermost(source)
        if not isinstance(other, FileBackend) or not info.etag:
            return None  # no sidecar md5 to check the copy against: streamed instead
        copied = self.put(dst_key, str(other._path(info.key)), metadata, part_size=0, concurrency=1)
        if copied.etag != info.etag or copied.size != info.size:
            self.delete(dst_key)
            raise IntegrityError(f"copy {info.key} to {dst_key}: md5 {copied.etag} != {info.etag}")
        return copied

    @staticmethod
    def _write_json(path: Path, data: dict[str, str]) -> None:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)


class _FileUpload(Upload):
    """One part, copied into a temp file beside the object (md5 taken while copying),
    fsynced, then renamed over it with its sidecar written first."""

    def __init__(self, backend: FileBackend, key: str, size: int, metadata: Metadata) -> None:
        self.backend, self.key, self.metadata = backend, key, metadata
        self.parts = [(0, size)]
        self.dest = backend._path(key)
        self.tmp = self.dest.with_name(f".{self.dest.name}.{secrets.token_hex(6)}.partial")
        self.md5 = ""

    def put_part(self, index: int, body: BinaryIO, *, md5: bytes | None = None) -> None:
        with self._writing():
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self.md5 = _copy_hashing(body, self.tmp)
        if md5 is not None and md5.hex() != self.md5:
            self.abort()
            raise IntegrityError(f"upload {self.key}: the bytes written are not the ones hashed")

    def complete(self) -> ObjectInfo:
        with self._writing():
            size = self.tmp.stat().st_size
            meta = {**metadata_of(self.metadata), "etag": self.md5, "size": str(size)}
            self.backend._write_json(self.backend._sidecar(self.dest), meta)
            os.replace(self.tmp, self.dest)
        return self.backend.stat(self.key)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except PermissionError as exc:
            raise AuthError(
                f"cannot write {self.key} in {self.backend.location}: {exc.strerror}"
            ) from None
        except OSError as exc:
            raise RegistryClientError(f"cannot write {self.key}: {exc.strerror or exc}") from None


def _copy_hashing(body: BinaryIO, dest: Path) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(dest, "wb") as fout:
        while chunk := body.read(BLOCK):
            md5.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return md5.hexdigest()
