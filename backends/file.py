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
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from registry_client.backends.base import (
    Backend,
    Capabilities,
    Metadata,
    ObjectInfo,
    Progress,
    metadata_of,
)
from registry_client.errors import AuthError, NotFound, ObjectChanged, RegistryClientError

if TYPE_CHECKING:
    from registry_client.config import RemoteConfig

BLOCK = 4 * 1024 * 1024
SIDECAR = ".{}.meta.json"


class FileBackend(Backend):
    kind = "file"
    capabilities = Capabilities(copy=True)

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self.root = Path(root).absolute()
        self.prefix = prefix
        self.location = f"file://{self.root}/{prefix}"

    @classmethod
    def from_remote(cls, remote: RemoteConfig) -> FileBackend:
        return cls(os.path.expanduser(remote.location), remote.prefix)

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

    def read_range(self, key: str, start: int, end: int, etag: str | None) -> Iterator[bytes]:
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

    def put(
        self,
        key: str,
        path: str,
        metadata: Metadata,
        *,
        part_size: int,
        concurrency: int,
        progress: Progress | None = None,
    ) -> ObjectInfo:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.partial")
            md5 = _copy_hashing(path, tmp, progress)
            size = tmp.stat().st_size
            meta = {**metadata_of(metadata), "etag": md5, "size": str(size)}
            self._write_json(self._sidecar(dest), meta)
            os.replace(tmp, dest)
        except PermissionError as exc:
            raise AuthError(f"cannot write {key} in {self.location}: {exc.strerror}") from None
        except OSError as exc:
            raise RegistryClientError(f"cannot write {key}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(UnboundLocalError, FileNotFoundError):
                tmp.unlink()
        return self.stat(key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            raise NotFound(f"{key} not found in {self.location}") from None
        self._sidecar(path).unlink(missing_ok=True)

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        info = self.stat(src_key)  # put() writes the copy's own etag and size
        return self.put(
            dst_key, str(self._path(src_key)), info.metadata, part_size=0, concurrency=1
        )

    @staticmethod
    def _write_json(path: Path, data: dict[str, str]) -> None:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)


def _copy_hashing(src: str, dest: Path, progress: Progress | None) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(src, "rb", buffering=0) as fin, open(dest, "wb") as fout:
        while chunk := fin.read(BLOCK):
            md5.update(chunk)
            fout.write(chunk)
            if progress:
                progress(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
    return md5.hexdigest()
