"""Shared test helpers: run the installed CLI, build contexts, make sample images."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from registry_client.cache import Cache
from registry_client.config import Config, RemoteConfig
from registry_client.context import Context

CLI = [sys.executable, "-m", "registry_client"]


def console_script() -> list[str]:
    """The installed console script, next to the running interpreter."""
    path = Path(sys.executable).with_name("registry-client")
    return [str(path)] if path.exists() else CLI


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*console_script(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def run_cli_measured(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], int]:
    """run_cli under GNU time: the result and the peak RSS (MiB) of the CLI alone. (A
    child's own rusage would count the test process's memory: it starts as a fork.)"""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *console_script(), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **(env or {})},
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        peak_kib = int(report.read().split()[-1])
    return result, peak_kib // 1024


def make_context(
    tmp: Path, remotes: dict[str, RemoteConfig] | None = None, default: str = "local", **kwargs: Any
) -> Context:
    config = Config(tmp / "config.toml", dict(remotes or {}), default)
    return Context(config=config, cache=Cache(tmp / "cache"), **kwargs)


def write_config(path: Path, remotes: dict[str, RemoteConfig], default: str) -> Path:
    from registry_client.config import save_config

    save_config(Config(path, remotes, default))
    return path


def s3_options(server: Any, bucket: str) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "endpoint_url": server.s3_endpoint,
        "region": "us-east-1",
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
    }


def s3_client(server: Any) -> Any:
    """A plain boto3 client (with its managed transfers), as another tool would use."""
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client(
        "s3",
        endpoint_url=server.s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def push_then_ctrl_c(args: list[str], env: dict[str, str], started: Any) -> float:
    """Run `registry-client push ARGS`, wait until `started()` is true (the upload is under
    way), press Ctrl-C; check it exits 130 with one line and no traceback. Seconds it took."""
    from tests.support.stalls import ctrl_c

    ended = ctrl_c(["push", *args], env, started)
    print(f"\nCtrl-C mid-push: exit {ended.code} after {ended.seconds:.1f}s")
    assert ended.code == 130 and "interrupted" in ended.err and "Traceback" not in ended.err
    return ended.seconds


def azure_options(server: Any, container: str) -> dict[str, Any]:
    """A named Azure remote on Azurite: account URL and the emulator's well-known key."""
    return {
        "container": container,
        "account_url": server.blob_endpoint,
        "account": server.account,
        "account_key": server.account_key,
    }


def azure_service(server: Any) -> Any:
    """A plain azure-storage-blob client, as another tool would use (no retries)."""
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient.from_connection_string(server.connection_string, retry_total=0)


def gcs_options(server: Any, bucket: str) -> dict[str, Any]:
    return {"bucket": bucket, "endpoint_url": server.endpoint, "anonymous": True}


def gcs_client(server: Any) -> Any:
    """A plain google-cloud-storage client on the emulator, as another tool would use."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.endpoint},
    )


def clear_of_window_boundary(window: int = 3600, margin: float = 150) -> float:
    """Wait, if needed, until at least `margin` seconds of the current signing window are
    left (registry_client.fleet signs at the start of each window); the seconds waited.

    Nodes that straddle a window's end sign two URLs and a site cache rightly fills twice
    (docs/fleet.md); a test or a benchmark figure must not measure that by accident.
    """
    import time

    left = window - time.time() % window
    if left >= margin:
        return 0.0
    time.sleep(left + 1)
    return left + 1
