"""The shipped site cache (contrib/nginx/registry-client-cache.conf) on Debian's nginx.

The repository's file is used as it is: only its @PLACEHOLDERS@ are filled in, and it is
included in a minimal main configuration (pid, temp folders, events) of our own. nginx runs
in the foreground (`daemon off`) as our child, with its own prefix, on a free loopback port,
never as a system service; as root it runs as `nobody` (the cache is another party's
server), so its folder is a fresh one under the system temp folder that `nobody` can reach.

Layout of ``workdir``::

    nginx.conf  sif-cache.conf   the main configuration and the rendered shipped file
    cache/      slices/ refresh/ authz/ heal.sock
    logs/       sif-cache.log, sif-cache-error.log, nginx.log, nginx-stdio.log
    tmp/        nginx's temp folders
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ._util import (
    LOOPBACK,
    STOP_TIMEOUT,
    ManagedServer,
    ServerStartError,
    ensure_port_free,
    free_port,
    spawn,
    start_with_retries,
    stop_on_error,
    wait_tcp,
)

NGINX = "/usr/sbin/nginx"
TEMPLATE = Path(__file__).resolve().parents[3] / "contrib" / "nginx" / "registry-client-cache.conf"
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")

_MAIN = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/nginx.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    access_log off;
    include {work}/sif-cache.conf;
}}
"""


def render(template: str, values: dict[str, str]) -> str:
    """Fill every @NAME@; a placeholder left without a value is an error."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - values.keys())
    if missing:
        raise ServerStartError(f"no value for {missing} in {TEMPLATE.name}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class NginxCache(ManagedServer):
    kind = "nginx-cache"

    def __init__(self, workdir: Path, port: int) -> None:
        super().__init__(workdir / "logs")
        self.workdir = workdir
        self.port = port
        self.url = f"http://{LOOPBACK}:{port}"
        self.cache_dir = workdir / "cache"

    def slice_files(self) -> list[Path]:
        """The cached slices, as files of nginx's cache (header, key, HTTP head, body)."""
        folder = self.cache_dir / "slices"
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []

    def logs_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted((self.workdir / "logs").glob("*"))
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        super().stop(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "url": self.url, "workdir": str(self.workdir)}


def flip_byte(slice_file: Path, offset: int = 4096) -> None:
    """XOR one byte of the body of a cached slice, in place (nginx serves it as it is)."""
    data = bytearray(slice_file.read_bytes())
    body = data.index(b"\r\n\r\n") + 4
    data[body + offset] ^= 0xFF
    slice_file.write_bytes(bytes(data))


def _unprivileged() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _start_once(
    store: str, authz: str, slice_size: str, port: int | None, timeout: float
) -> NginxCache:
    user = _unprivileged()
    work = Path(tempfile.mkdtemp(prefix="rc-nginx-"))
    server = NginxCache(work, port or free_port())
    with stop_on_error(server):
        for sub in ("cache", "logs", "tmp"):
            (work / sub).mkdir()
        values = {
            "LISTEN": f"{LOOPBACK}:{server.port}",
            "STORE": store,
            "AUTHZ": authz,
            "SLICE": slice_size,
            "CACHE_DIR": str(work / "cache"),
            "CACHE_SIZE": "4g",
            "LOG_DIR": str(work / "logs"),
        }
        (work / "sif-cache.conf").write_text(render(TEMPLATE.read_text(), values))
        (work / "nginx.conf").write_text(_MAIN.format(work=work))
        if user is not None:
            for path in [work, *work.rglob("*")]:
                os.chown(path, *user)
        argv = [NGINX, "-p", str(work), "-e", str(work / "logs" / "nginx.log")]
        argv += ["-c", str(work / "nginx.conf")]
        server.children.append(spawn("nginx-stdio", argv, work / "logs", user=user))
        wait_tcp(server.port, server.children, timeout)
    return server


def start_nginx_cache(
    store: str,
    *,
    authz: str | None = None,
    slice_size: str = "16m",
    port: int | None = None,
    timeout: float = 20.0,
) -> NginxCache:
    """nginx with the shipped cache file in front of ``store`` (host:port: the object store,
    or another cache for a rack → site hierarchy); ``authz`` is the store that checks
    signatures (default: ``store``)."""
    if not os.access(NGINX, os.X_OK):
        raise ServerStartError(f"{NGINX} missing; run .ci/install-system-deps")
    ensure_port_free(port)
    return start_with_retries(lambda: _start_once(store, authz or store, slice_size, port, timeout))
