"""Fixtures: isolated user dirs, and the real loopback servers the tests start."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client.config import RemoteConfig
from tests.support.helpers import azure_service, gcs_client, s3_client, s3_options

# Never let boto3 look for instance credentials off this machine (169.254.169.254), nor
# google-auth for a Compute Engine metadata server: its probes go to a closed loopback port.
# A suite started in the background of a non-interactive shell inherits SIGINT ignored, and
# so would every command the tests start: the Ctrl-C tests would then interrupt nothing.
# Children of a process with a Python handler get the default action back at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
_PREFIXES = ("AWS_", "OS_", "ST_", "REGISTRY_CLIENT_", "AZURE_", "GOOGLE_", "STORAGE_EMULATOR_")
for _var in [v for v in os.environ if v.startswith(_PREFIXES)]:
    if _var != "AWS_EC2_METADATA_DISABLED":
        del os.environ[_var]


@pytest.fixture(scope="session")
def _empty_site_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty site file: this machine's /etc/registry-client/config.toml stays out."""
    path = tmp_path_factory.mktemp("site") / "config.toml"
    path.write_text("")
    path.chmod(0o444)
    return path


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _empty_site_config: Path
) -> None:
    for var, sub in (
        ("XDG_CONFIG_HOME", "cfg"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_DATA_HOME", "data"),
    ):
        monkeypatch.setenv(var, str(tmp_path / "home" / sub))
    monkeypatch.setenv("REGISTRY_CLIENT_SITE_CONFIG", str(_empty_site_config))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "home" / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "home" / "aws-creds"))


def _stopped_at_end(server: Any) -> Iterator[Any]:
    """A started server for the session's tests; stopped when they are done."""
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def swift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.servers.swift_aio import start_swift

    yield from _stopped_at_end(start_swift(tmp_path_factory.mktemp("swift")))


@pytest.fixture(scope="session")
def docker_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The Debian docker-registry: every test pushes to repositories of its own."""
    from tests.support.servers.registry import start_registry

    yield from _stopped_at_end(start_registry(tmp_path_factory.mktemp("registry")))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Any]:
    from tests.support.servers.moto_server import start_moto

    yield from _stopped_at_end(start_moto())


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.servers.azurite import start_azurite

    yield from _stopped_at_end(start_azurite(tmp_path_factory.mktemp("azurite")))


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.support.servers.fake_gcs import start_fake_gcs

    yield from _stopped_at_end(start_fake_gcs(tmp_path_factory.mktemp("fake-gcs")))


@pytest.fixture
def azure_container(azurite_server: Any) -> str:
    name = f"rc-{uuid.uuid4().hex[:12]}"
    azure_service(azurite_server).create_container(name)
    return name


@pytest.fixture
def gcs_bucket(gcs_server: Any) -> str:
    name = f"rc-{uuid.uuid4().hex[:12]}"
    gcs_client(gcs_server).create_bucket(name)
    return name


S3_SERVERS = {"swift-s3api": "swift_server", "moto": "moto_server"}


@pytest.fixture(params=list(S3_SERVERS))
def s3_server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(S3_SERVERS[request.param])


def new_bucket(server: Any) -> str:
    name = f"rc-{uuid.uuid4().hex[:12]}"
    s3_client(server).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_bucket(s3_server: Any) -> str:
    return new_bucket(s3_server)


@pytest.fixture
def s3_remote(s3_server: Any, s3_bucket: str) -> RemoteConfig:
    return RemoteConfig("lab", "s3", s3_options(s3_server, s3_bucket))


@pytest.fixture
def sample_sif(tmp_path: Path) -> Path:
    from registry_client import sif

    path = tmp_path / "app.sif"
    sif.make_test_sif(path, 3 * 1024 * 1024, seed=1)
    return path
