"""The contract suite over the file backend, S3 (Swift s3api and moto), Azure (Azurite) and
GCS (fake-gcs-server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry_client.backends.file import FileBackend
from registry_client.backends.s3 import S3Backend
from tests.support.backend_contract import BackendContract, OpenBackend
from tests.support.helpers import azure_options, gcs_options, s3_options


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


@pytest.mark.servers
class TestAzureBackend(BackendContract):
    @pytest.fixture
    def open_backend(self, azurite_server: Any, azure_container: str) -> OpenBackend:
        from registry_client.backends.azure import AzureBackend

        options = azure_options(azurite_server, azure_container)
        return lambda prefix: AzureBackend(azure_container, prefix, options=options)


@pytest.mark.servers
class TestGcsBackend(BackendContract):
    @pytest.fixture
    def open_backend(self, gcs_server: Any, gcs_bucket: str) -> OpenBackend:
        from registry_client.backends.gcs import GcsBackend

        options = gcs_options(gcs_server, gcs_bucket)
        return lambda prefix: GcsBackend(gcs_bucket, prefix, options=options)
