"""The contract suite over the file backend and S3 (Swift s3api and moto)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry_client.backends.file import FileBackend
from registry_client.backends.s3 import S3Backend
from tests.support.backend_contract import BackendContract, OpenBackend
from tests.support.helpers import s3_options


class TestFileBackend(BackendContract):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> OpenBackend:
        return lambda prefix: FileBackend(tmp_path / "bucket", prefix)


@pytest.mark.servers
class TestS3Backend(BackendContract):
    @pytest.fixture
    def open_backend(self, s3_server: Any, s3_bucket: str) -> OpenBackend:
        options = s3_options(s3_server, s3_bucket)
        return lambda prefix: S3Backend(s3_bucket, prefix, options=options)
