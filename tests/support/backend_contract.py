"""The conformance suite every backend passes, against a real server.

A test module subclasses BackendContract and provides an `open_backend` fixture: a
function from a key prefix to a backend on one empty bucket / container / directory
(two prefixes share the bucket, for the isolation case), and optionally `part_size`.
Every case runs twice: on the backend itself and through the retry wrapper every
command uses (remotes.open_remote). Optional features are read from
`backend.capabilities`, never guessed.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client.backends.base import Backend, ObjectInfo
from registry_client.digests import hash_file
from registry_client.errors import IntegrityError, NotFound, ObjectChanged, Unsupported
from registry_client.retry import RetryingBackend, RetryPolicy

OpenBackend = Callable[[str], Backend]

MiB = 1024 * 1024


def write_random(path: Path, size: int, seed: int = 0) -> bytes:
    import random

    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def read_all(backend: Backend, key: str, etag: str | None = None) -> bytes:
    info = backend.stat(key)
    return b"".join(backend.read_range(key, 0, info.size, etag))


def plan_verifies(backend: Backend, key: str, path: Path) -> bool:
    info = backend.stat(key)
    plan = backend.etag_plan(info)
    schemes = plan.schemes + plan.more_schemes
    digests = hash_file(str(path), schemes, algorithm=plan.algorithm)
    return plan.verifiable and plan.check(digests.segment_md5s)


def innermost(backend: Backend) -> Backend:
    """The backend under any wrappers."""
    while isinstance(backend, RetryingBackend):
        backend = backend.inner
    return backend


class BackendContract:
    part_size = 5 * MiB

    @pytest.fixture(params=["plain", "retrying"])
    def backend(
        self, request: pytest.FixtureRequest, open_backend: OpenBackend
    ) -> Iterator[Backend]:
        inner = open_backend("pre/")
        if request.param == "plain":
            yield inner
        else:
            yield RetryingBackend(inner, RetryPolicy(attempts=3, base_delay=0.01))
        inner.close()

    def put(self, backend: Backend, key: str, path: Path, meta: Any = None) -> ObjectInfo:
        return backend.put(
            key, str(path), meta or {"sha256": "ab" * 32}, part_size=self.part_size, concurrency=3
        )

    def test_stat_missing_is_not_found(self, backend: Backend) -> None:
        with pytest.raises(NotFound):
            backend.stat("c/n:missing.sif")

    def test_put_stat_read_small(self, backend: Backend, tmp_path: Path) -> None:
        data = write_random(tmp_path / "f", 1000)
        info = self.put(backend, "c/n:1.sif", tmp_path / "f", {"sha256": "cd" * 32, "arch": "x"})
        assert info.size == 1000
        stat = backend.stat("c/n:1.sif")
        assert stat.sha256 == "cd" * 32 and stat.metadata["arch"] == "x"
        assert read_all(backend, "c/n:1.sif", stat.etag) == data
        assert plan_verifies(backend, "c/n:1.sif", tmp_path / "f")

    def test_read_range_middle(self, backend: Backend, tmp_path: Path) -> None:
        data = write_random(tmp_path / "f", 70_000, seed=3)
        info = self.put(backend, "c/n:r.sif", tmp_path / "f")
        got = b"".join(backend.read_range("c/n:r.sif", 1234, 50_000, info.etag))
        assert got == data[1234:50_000]

    def test_large_object_multipart_verified(self, backend: Backend, tmp_path: Path) -> None:
        size = 2 * self.part_size + 12345
        data = write_random(tmp_path / "big", size, seed=5)
        info = self.put(backend, "c/big:1.sif", tmp_path / "big")
        assert info.size == size
        assert (
            hashlib.sha256(read_all(backend, "c/big:1.sif", info.etag)).digest()
            == hashlib.sha256(data).digest()
        )
        assert plan_verifies(backend, "c/big:1.sif", tmp_path / "big")

    def test_plan_rejects_other_bytes(self, backend: Backend, tmp_path: Path) -> None:
        size = self.part_size + 99
        write_random(tmp_path / "a", size, seed=7)
        self.put(backend, "c/x:1.sif", tmp_path / "a")
        write_random(tmp_path / "b", size, seed=8)
        assert not plan_verifies(backend, "c/x:1.sif", tmp_path / "b")

    def test_read_pinned_to_old_etag_fails(self, backend: Backend, tmp_path: Path) -> None:
        write_random(tmp_path / "a", 5000, seed=1)
        old = self.put(backend, "c/p:1.sif", tmp_path / "a")
        write_random(tmp_path / "b", 5000, seed=2)
        self.put(backend, "c/p:1.sif", tmp_path / "b")
        with pytest.raises(ObjectChanged):
            b"".join(backend.read_range("c/p:1.sif", 0, 5000, old.etag))

    def test_list_with_prefix(self, backend: Backend, tmp_path: Path) -> None:
        write_random(tmp_path / "f", 10)
        for key in ("a/x:1.sif", "a/y:1.sif", "b/z:2.sif"):
            self.put(backend, key, tmp_path / "f")
        assert sorted(i.key for i in backend.list("a/")) == ["a/x:1.sif", "a/y:1.sif"]
        assert {i.key for i in backend.list()} >= {"a/x:1.sif", "a/y:1.sif", "b/z:2.sif"}
        assert all(i.size == 10 for i in backend.list())

    def test_delete(self, backend: Backend, tmp_path: Path) -> None:
        write_random(tmp_path / "f", 10)
        self.put(backend, "c/d:1.sif", tmp_path / "f")
        backend.delete("c/d:1.sif")
        with pytest.raises(NotFound):
            backend.stat("c/d:1.sif")
        with pytest.raises(NotFound):
            backend.delete("c/d:1.sif")

    def test_copy_keeps_metadata(self, backend: Backend, tmp_path: Path) -> None:
        if not backend.capabilities.copy:
            with pytest.raises(Unsupported):
                backend.copy("c/s:1.sif", "c/s:2.sif")
            return
        data = write_random(tmp_path / "f", 2 * self.part_size + 1, seed=11)
        self.put(backend, "c/s:1.sif", tmp_path / "f", {"sha256": "ef" * 32})
        info = backend.copy("c/s:1.sif", "c/s:2.sif")
        assert info.sha256 == "ef" * 32
        assert read_all(backend, "c/s:2.sif", info.etag) == data
        assert plan_verifies(backend, "c/s:2.sif", tmp_path / "f")

    def test_empty_object(self, backend: Backend, tmp_path: Path) -> None:
        (tmp_path / "e").write_bytes(b"")
        info = self.put(backend, "c/e:1.sif", tmp_path / "e")
        assert info.size == 0
        assert plan_verifies(backend, "c/e:1.sif", tmp_path / "e")
        assert os.path.getsize(tmp_path / "e") == 0

    # -- restic's harder cases ----------------------------------------------------------
    def test_missing_key_everywhere_is_not_found(self, backend: Backend) -> None:
        with pytest.raises(NotFound):
            b"".join(backend.read_range("c/gone:1.sif", 0, 10, None))
        with pytest.raises(NotFound):
            backend.delete("c/gone:1.sif")
        assert list(backend.list("c/gone")) == []
        if backend.capabilities.copy:
            with pytest.raises(NotFound):
                backend.copy("c/gone:1.sif", "c/gone:2.sif")

    def test_failed_upload_keeps_the_previous_object(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        """An upload that fails changes nothing. Here the metadata fails, as a push's does when
        the file's sha256 is not the digest the reference pins: S3 asks for it first, Swift
        after the segments (which must then go)."""
        old = write_random(tmp_path / "old", 2 * self.part_size + 7, seed=21)
        before = self.put(backend, "c/f:1.sif", tmp_path / "old", {"sha256": "01" * 32})
        write_random(tmp_path / "new", 2 * self.part_size + 7, seed=22)

        def broken() -> dict[str, str]:
            raise IntegrityError("not the pinned digest")

        with pytest.raises(IntegrityError):
            self.put(backend, "c/f:1.sif", tmp_path / "new", broken)
        with pytest.raises(IntegrityError):
            self.put(backend, "c/f:2.sif", tmp_path / "new", broken)
        after = backend.stat("c/f:1.sif")
        assert (after.etag, after.sha256) == (before.etag, "01" * 32)
        assert read_all(backend, "c/f:1.sif", after.etag) == old
        with pytest.raises(NotFound):
            backend.stat("c/f:2.sif")
        assert sorted(i.key for i in backend.list("c/")) == ["c/f:1.sif"]

    def test_listing_pages(self, backend: Backend, tmp_path: Path) -> None:
        write_random(tmp_path / "f", 3)
        keys = [f"p/n{i:02d}:1.sif" for i in range(7)]
        for key in keys:
            self.put(backend, key, tmp_path / "f")
        innermost(backend).page_size = 2  # 4 requests for 7 objects where the store pages
        assert [i.key for i in backend.list("p/")] == keys

    def test_prefixes_are_isolated(
        self, backend: Backend, open_backend: OpenBackend, tmp_path: Path
    ) -> None:
        """Two remotes on one bucket, one prefix a string-prefix of the other's."""
        other = open_backend("pre2/")
        try:
            write_random(tmp_path / "f", 5)
            self.put(backend, "c/a:1.sif", tmp_path / "f")
            other.put("c/b:1.sif", str(tmp_path / "f"), {}, part_size=self.part_size, concurrency=1)
            assert [i.key for i in backend.list()] == ["c/a:1.sif"]
            assert [i.key for i in other.list()] == ["c/b:1.sif"]
            with pytest.raises(NotFound):
                other.stat("c/a:1.sif")
            with pytest.raises(NotFound):
                backend.delete("c/b:1.sif")
            assert other.stat("c/b:1.sif").size == 5
        finally:
            other.close()

    def test_random_reads(self, backend: Backend, tmp_path: Path) -> None:
        size = 2 * self.part_size + 4321
        data = write_random(tmp_path / "f", size, seed=31)
        info = self.put(backend, "c/rand:1.sif", tmp_path / "f")
        rng = random.Random(5)
        for _ in range(12):
            start = rng.randrange(size)
            end = min(size, start + rng.choice((1, 17, 4096, self.part_size + 3)))
            got = b"".join(backend.read_range("c/rand:1.sif", start, end, info.etag))
            assert got == data[start:end], (start, end)
        assert b"".join(backend.read_range("c/rand:1.sif", size - 1, size, info.etag)) == data[-1:]
