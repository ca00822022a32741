"""moto's S3 server on loopback, in its own process.

A separate process (``python -m moto.server``) rather than ``ThreadedMotoServer``: its
state cannot leak into the test process, it is stopped like every other server here, and
the benchmarks get the same server the tests use.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._util import (
    LOOPBACK,
    STOP_TIMEOUT,
    ManagedServer,
    clean_env,
    ensure_port_free,
    free_port,
    http_request,
    spawn,
    start_with_retries,
    stop_on_error,
    wait_http,
)

# moto accepts any credentials; these are what the handles advertise.
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
AWS_MIN_PART_SIZE = 5 * 1024 * 1024


class MotoServer(ManagedServer):
    kind = "moto"

    def __init__(self, port: int, log_dir: Path, own_log_dir: bool) -> None:
        super().__init__(log_dir)
        self.port = port
        self.s3_endpoint = f"http://{LOOPBACK}:{port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = REGION
        self._own_log_dir = own_log_dir

    def reset(self) -> None:
        """Drop every bucket and object (moto's own reset API), e.g. between tests."""
        result = http_request(f"{self.s3_endpoint}/moto-api/reset", timeout=10, method="POST")
        if result is None or result[0] != 200:
            raise RuntimeError(f"moto reset failed: {result}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        super().stop(timeout)
        if self._own_log_dir:  # a temporary log folder we created: nothing to keep
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "s3_endpoint": self.s3_endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
        }


def moto_env(s3_min_part_size: int | None) -> dict[str, str]:
    # AWS_* (e.g. AWS_ENDPOINT_URL) from the caller's shell has no business in the server.
    extra = {"NO_PROXY": LOOPBACK, "no_proxy": LOOPBACK}
    if s3_min_part_size is not None:
        extra["S3_UPLOAD_PART_MIN_SIZE"] = str(s3_min_part_size)
        # moto derives its in-memory key buffer from the minimum part size (minus 1 KiB),
        # which would go negative for tiny minimums; keep moto's default buffer instead.
        extra["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(AWS_MIN_PART_SIZE - 1024)
    return clean_env(("AWS_", "S3_", "MOTO_"), extra)


def _start_once(
    port: int | None, log_dir: Path | None, timeout: float, s3_min_part_size: int | None
) -> MotoServer:
    own = log_dir is None
    logs = Path(tempfile.mkdtemp(prefix="moto-")) if log_dir is None else Path(log_dir)
    server = MotoServer(port or free_port(), logs, own)
    argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(server.port)]
    with stop_on_error(server):
        server.children.append(spawn("moto", argv, logs, env=moto_env(s3_min_part_size)))
        wait_http(f"{server.s3_endpoint}/moto-api/", server.children, timeout)
    return server


def start_moto(
    port: int | None = None,
    *,
    log_dir: Path | None = None,
    timeout: float = 30.0,
    s3_min_part_size: int | None = None,
) -> MotoServer:
    """Start moto's server on ``127.0.0.1:port`` (free port if None) and wait until it serves.

    Logs go to ``log_dir`` if given, else to a temporary folder removed by ``stop()``.
    Uses the interpreter running the tests, which is where moto[server] is installed.
    ``s3_min_part_size`` overrides moto's multipart minimum (None: AWS's 5 MiB).
    """
    ensure_port_free(port)
    return start_with_retries(lambda: _start_once(port, log_dir, timeout, s3_min_part_size))
