"""The Debian ``docker-registry`` (CNCF distribution 2.8) on loopback, storing in a folder."""

from __future__ import annotations

import json
import secrets
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

REGISTRY_BIN = "docker-registry"


class RegistryServer(ManagedServer):
    kind = "registry"

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(workdir / "logs")
        self.workdir = workdir
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.host = f"{LOOPBACK}:{port}"  # what `oras`/`docker push` want as the registry

    def info(self) -> dict[str, Any]:
        return {**super().info(), "url": self.url, "host": self.host, "workdir": str(self.workdir)}


def registry_config(workdir: Path, port: int) -> dict[str, Any]:
    return {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(workdir / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            # The purger would delete in-progress uploads of long test runs at random.
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {
            "addr": f"{LOOPBACK}:{port}",
            # Without a secret every start logs a warning and picks a random one anyway.
            "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        # The periodic storage health check only adds noise to the log.
        "health": {"storagedriver": {"enabled": False}},
    }


def _binary() -> str:
    found = shutil.which(REGISTRY_BIN) or shutil.which(REGISTRY_BIN, path="/usr/bin")
    if not found:
        raise ServerStartError(f"{REGISTRY_BIN} not found; run .ci/install-system-deps")
    return found


def _start_once(workdir: Path, port: int | None, timeout: float) -> RegistryServer:
    server = RegistryServer(workdir, port or free_port())
    config = workdir / "config.yml"
    # JSON is valid YAML, so no YAML library is needed to write the config.
    config.write_text(json.dumps(registry_config(workdir, server.port), indent=2))
    # REGISTRY_* variables override the config file in distribution; ignore the caller's.
    env = clean_env(("REGISTRY_",))
    argv = [_binary(), "serve", str(config)]
    with stop_on_error(server):
        server.children.append(spawn("registry", argv, server.log_dir, env))
        wait_http(f"{server.url}/v2/", server.children, timeout)
    return server


def start_registry(
    workdir: Path, port: int | None = None, *, timeout: float = 30.0
) -> RegistryServer:
    """Start a registry on ``127.0.0.1:port`` (free port if None) storing blobs in ``workdir``."""
    workdir = Path(workdir).resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    ensure_port_free(port)
    return start_with_retries(lambda: _start_once(workdir, port, timeout))
