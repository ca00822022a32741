"""The contract suite over the file backend and S3 (Swift s3api and moto)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client.backends.base import Backend
from registry_client.backends.file import FileBackend
from registry_client.backends.s3 import S3Backend
from tests.support.backend_contract import BackendContract
from tests.support.helpers import s3_options


class TestFileBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return FileBackend(tmp_path / "bucket", "pre/")


@pytest.mark.servers
class TestS3Backend(BackendContract):
    @pytest.fixture
    def backend(self, s3_server: Any, s3_bucket: str) -> Iterator[Backend]:
        backend = S3Backend(s3_bucket, "pre/", options=s3_options(s3_server, s3_bucket))
        yield backend
        backend.close()
