"""Azurite (Microsoft's Azure Storage emulator, npm `azurite`) on loopback: Blob service only.

The npm package is installed outside the repository by .ci/install-system-deps (pinned:
newer releases need a newer Node). Telemetry is off (it would try to reach the internet);
`--skipApiVersionCheck` lets the current azure-storage-blob talk to it (the SDK sends an
API version newer than this Azurite knows). Accounts are the emulator's well-known one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ._util import (
    LOOPBACK,
    ManagedServer,
    ServerStartError,
    clean_env,
    ensure_port_free,
    free_port,
    spawn,
    start_with_retries,
    stop_on_error,
    wait_http,
)

AZURITE_VERSION = "3.35.0"
#: where .ci/install-system-deps puts it; REGISTRY_CLIENT_TEST_AZURITE overrides
AZURITE_HOME = Path(
    os.environ.get("REGISTRY_CLIENT_TEST_AZURITE")
    or f"/opt/registry-client-test/azurite-{AZURITE_VERSION}"
)
ACCOUNT = "devstoreaccount1"
# The emulator's published development key (the same in every Azurite), not a secret.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class AzuriteServer(ManagedServer):
    kind = "azurite"

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(workdir / "logs")
        self.workdir = workdir
        self.port = port
        self.account = ACCOUNT
        self.account_key = ACCOUNT_KEY
        self.blob_endpoint = f"http://{LOOPBACK}:{port}/{ACCOUNT}"
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "blob_endpoint": self.blob_endpoint,
            "account": self.account,
            "account_key": self.account_key,
            "connection_string": self.connection_string,
        }


def azurite_binary() -> str:
    local = AZURITE_HOME / "node_modules" / ".bin" / "azurite-blob"
    if os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("azurite-blob")
    if not found:
        raise ServerStartError(f"azurite-blob not found in {local}; run .ci/install-system-deps")
    return found


def _start_once(workdir: Path, port: int | None, timeout: float) -> AzuriteServer:
    server = AzuriteServer(workdir, port or free_port())
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        azurite_binary(),
        "--blobHost",
        LOOPBACK,
        "--blobPort",
        str(server.port),
        "--location",
        str(data),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--silent",
    ]
    # AZURITE_ACCOUNTS would replace the well-known account; proxies must not see loopback.
    env = clean_env(("AZURITE_", "AZURE_"), {"NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK})
    with stop_on_error(server):
        server.children.append(spawn("azurite", argv, server.log_dir, env))
        # Unauthenticated requests are refused, which proves the server is up.
        wait_http(f"{server.blob_endpoint}?comp=list", server.children, timeout, expect=(403,))
    return server


def start_azurite(workdir: Path, port: int | None = None, timeout: float = 60.0) -> AzuriteServer:
    """Start Azurite's Blob service on 127.0.0.1:port (a free one if None); data in workdir."""
    ensure_port_free(port)
    return start_with_retries(lambda: _start_once(Path(workdir), port, timeout))
