"""OpenStack Swift all-in-one on loopback, built from scratch in a work directory.

Layout of ``workdir``::

    etc/    swift.conf, {account,container,object}.ring.gz (+ .builder), *-server.conf,
            bootstrap.py (see below)
    srv/d0/ the single storage device shared by the three rings (like a SAIO)
    logs/   one log per process (Swift runs with -v so it logs to stderr, not syslog)
    cache/  recon cache (Swift would otherwise write /var/cache/swift)

/etc/swift is never read or written. Swift 2.30 hard-codes /etc/swift/swift.conf
(``swift.common.utils.SWIFT_CONF_FILE``) and offers no environment variable, so each
Debian server script is started through a small bootstrap that calls the public
``utils.set_swift_dir()`` before the script imports anything that reads swift.conf.

All Swift code runs under the Debian ``/usr/bin/python3`` in isolated mode (-I), so the
Python that runs the tests (pyenv, venv, PYTHONPATH...) cannot leak into it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._util import (
    LOOPBACK,
    Child,
    ManagedServer,
    ServerStartError,
    clean_env,
    ensure_port_free,
    free_port,
    spawn,
    start_with_retries,
    stop_on_error,
    wait_http,
    wait_tcp,
)

SYSTEM_PYTHON = "/usr/bin/python3"
BIN_DIR = Path("/usr/bin")
MEMCACHED = "/usr/bin/memcached"
USER = "test:tester"
KEY = "testing"
REGION = "us-east-1"
PART_POWER = 6  # 64 partitions: plenty for one device, and quick to build
# Fixed so that data written by one run is found again when a workdir is reused.
HASH_PREFIX = "registry-client-tests-prefix"
HASH_SUFFIX = "registry-client-tests-suffix"
BACKENDS = ("account", "container", "object")

# Runs in each Swift process before the Debian script. argv: swift_dir script conf -v
_BOOTSTRAP = r"""
import logging, runpy, sys
swift_dir, script = sys.argv[1], sys.argv[2]

from swift.common import utils

# Logs go to stderr (-v) and from there to our log file; keep them out of the host syslog.
class NoSyslog(logging.NullHandler):
    def __init__(self, *args, **kwargs):
        super().__init__()

utils.ThreadSafeSysLogHandler = NoSyslog
utils.set_swift_dir(swift_dir)  # read <swift_dir>/swift.conf instead of /etc/swift's
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""

# One device per ring, all on the same folder: replicas 1, tiny part power.
_BUILD_RINGS = r"""
import sys
from swift.common.ring import RingBuilder
swift_dir, part_power = sys.argv[1], int(sys.argv[2])
for kind, port in zip(("account", "container", "object"), sys.argv[3:6]):
    builder = RingBuilder(part_power, 1, 1)
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1",
                     "port": int(port), "device": "d0", "weight": 100.0, "meta": ""})
    builder.rebalance()
    builder.save(f"{swift_dir}/{kind}.builder")
    builder.get_ring().save(f"{swift_dir}/{kind}.ring.gz")
"""


@dataclass(frozen=True)
class SwiftLayout:
    workdir: Path

    @property
    def etc(self) -> Path:
        return self.workdir / "etc"

    @property
    def devices(self) -> Path:
        return self.workdir / "srv"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def cache(self) -> Path:
        return self.workdir / "cache"

    def create(self) -> None:
        for folder in (self.etc, self.devices / "d0", self.logs, self.cache):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class SwiftPorts:
    proxy: int
    account: int
    container: int
    object: int
    memcached: int

    @classmethod
    def pick(cls, proxy: int | None) -> SwiftPorts:
        return cls(proxy or free_port(), free_port(), free_port(), free_port(), free_port())

    def backend(self, kind: str) -> int:
        return int(getattr(self, kind))


def _common_defaults(layout: SwiftLayout, port: int, name: str) -> str:
    # workers = 0: serve from the process we spawned (no forked workers), so its PID is
    # the whole server. bind_timeout is short because a lost port race is retried anyway.
    return f"""\
[DEFAULT]
bind_ip = {LOOPBACK}
bind_port = {port}
bind_timeout = 3
workers = 0
user = {pwd.getpwuid(os.getuid()).pw_name}
swift_dir = {layout.etc}
devices = {layout.devices}
mount_check = false
disable_fallocate = true
fallocate_reserve = 0
recon_cache_path = {layout.cache}
log_name = {name}
log_level = INFO
"""


def swift_conf() -> str:
    return f"""\
[swift-hash]
swift_hash_path_prefix = {HASH_PREFIX}
swift_hash_path_suffix = {HASH_SUFFIX}

[storage-policy:0]
name = gold
default = yes

[swift-constraints]
"""


def backend_conf(layout: SwiftLayout, kind: str, port: int) -> str:
    # Timeouts are raised from 0.5s/1s/3s: a container/account update that times out on a
    # busy CI box becomes an async pending that no updater daemon here would ever replay,
    # and the object would silently be missing from listings.
    extra = {
        "account": "",
        "container": "conn_timeout = 5\nnode_timeout = 30\n",
        "object": "conn_timeout = 5\nnode_timeout = 30\ncontainer_update_timeout = 30\n",
    }[kind]
    return f"""\
{_common_defaults(layout, port, kind)}
[pipeline:main]
pipeline = healthcheck {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}
{extra}
[filter:healthcheck]
use = egg:swift#healthcheck

[{kind}-replicator]

[{kind}-auditor]
"""


# Order follows Swift's proxy-server.conf-sample; s3api sits just before tempauth (its
# auth), and slo must come after it or s3api switches multipart uploads off.
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl "
    "s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server"
)


def proxy_conf(layout: SwiftLayout, ports: SwiftPorts, s3_min_part_size: int) -> str:
    return f"""\
{_common_defaults(layout, ports.proxy, "proxy")}
[pipeline:main]
pipeline = {PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
node_timeout = 30
conn_timeout = 5
# With a single device, error-limiting it for the default 60s turns one hiccup into a
# minute of 503s.
error_suppression_interval = 1

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = {KEY} .admin
user_test2_tester2 = testing2 .admin
user_test_tester3 = testing3
token_life = 86400

[filter:cache]
use = egg:swift#memcache
memcache_servers = {LOOPBACK}:{ports.memcached}

[filter:s3api]
use = egg:swift#s3api
location = {REGION}
s3_acl = false
check_bucket_owner = false
allow_no_owner = false
dns_compliant_bucket_names = true
allow_multipart_uploads = true
# AWS allows 10000 parts of >= 5 MiB; tiny parts let tests exercise multipart cheaply.
max_upload_part_num = 10000
min_segment_size = {s3_min_part_size}
max_bucket_listing = 1000
max_parts_listing = 1000
max_multi_delete_objects = 1000

[filter:slo]
use = egg:swift#slo
# >= s3api max_upload_part_num, since every S3 multipart upload becomes an SLO.
max_manifest_segments = 10000
max_manifest_size = 33554432
# SLO GETs are throttled to 1 segment/s after 10 segments smaller than 1 MiB; tests use
# tiny segments, so never count a segment as small.
rate_limit_under_size = 0
rate_limit_after_segment = 1000000

[filter:dlo]
use = egg:swift#dlo
rate_limit_after_segment = 1000000

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
allow_object_versioning = true

[filter:symlink]
use = egg:swift#symlink

[filter:copy]
use = egg:swift#copy

[filter:bulk]
use = egg:swift#bulk

[filter:tempurl]
use = egg:swift#tempurl

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:proxy-logging]
use = egg:swift#proxy_logging
"""


class SwiftServer(ManagedServer):
    """A running Swift AIO. Both the S3 (s3api) and native Swift APIs live on one port."""

    kind = "swift"

    def __init__(self, layout: SwiftLayout, ports: SwiftPorts) -> None:
        super().__init__(layout.logs)
        self.workdir = layout.workdir
        self.ports = ports
        self.port = ports.proxy
        self.s3_endpoint = f"http://{LOOPBACK}:{ports.proxy}"
        self.auth_url = f"{self.s3_endpoint}/auth/v1.0"
        self.user = USER
        self.key = KEY
        self.access_key = USER  # s3api + tempauth: access key "account:user", secret = key
        self.secret_key = KEY
        self.region = REGION
        self.storage_url = ""  # filled in by the auth check during start-up

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "s3_endpoint": self.s3_endpoint,
            "auth_url": self.auth_url,
            "user": self.user,
            "key": self.key,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "storage_url": self.storage_url,
            "workdir": str(self.workdir),
        }


def check_prerequisites(layout: SwiftLayout) -> None:
    """Fail with a useful message instead of a 507/500 deep inside Swift."""
    missing = [
        path
        for path in (SYSTEM_PYTHON, MEMCACHED, *(BIN_DIR / f"swift-{k}-server" for k in BACKENDS))
        if not os.access(path, os.X_OK)
    ]
    if missing:
        raise ServerStartError(f"missing {missing}; run .ci/install-system-deps")
    # The object server keeps metadata in user xattrs; older tmpfs and some overlays lack them.
    probe = layout.devices / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.swift.probe", b"1")
    except OSError as err:
        raise ServerStartError(f"{layout.devices} has no user xattr support: {err}") from err
    finally:
        probe.unlink()


def write_configs(layout: SwiftLayout, ports: SwiftPorts, s3_min_part_size: int) -> None:
    (layout.etc / "swift.conf").write_text(swift_conf())
    (layout.etc / "bootstrap.py").write_text(_BOOTSTRAP)  # a file: readable `ps` output
    for kind in BACKENDS:
        text = backend_conf(layout, kind, ports.backend(kind))
        (layout.etc / f"{kind}-server.conf").write_text(text)
    (layout.etc / "proxy-server.conf").write_text(proxy_conf(layout, ports, s3_min_part_size))


def build_rings(layout: SwiftLayout, ports: SwiftPorts) -> None:
    """(Re)build the rings every start: ports change, the single device (and data) do not."""
    argv = [SYSTEM_PYTHON, "-I", "-c", _BUILD_RINGS, str(layout.etc), str(PART_POWER)]
    argv += [str(ports.backend(kind)) for kind in BACKENDS]
    result = subprocess.run(argv, capture_output=True, text=True, env=clean_env(("PYTHON",)))
    if result.returncode:
        raise ServerStartError(f"building rings failed:\n{result.stderr}")


def spawn_swift(layout: SwiftLayout, name: str) -> Child:
    script = str(BIN_DIR / f"swift-{name}-server")
    conf = str(layout.etc / f"{name}-server.conf")
    boot = str(layout.etc / "bootstrap.py")
    argv = [SYSTEM_PYTHON, "-I", boot, str(layout.etc), script, conf, "-v"]
    return spawn(name, argv, layout.logs, env=clean_env(("PYTHON",)))


def spawn_memcached(layout: SwiftLayout, port: int) -> Child:
    # -U 0: no UDP listener. memcached refuses to run as root unless told which user.
    argv = [MEMCACHED, "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    return spawn("memcached", argv, layout.logs)


def wait_ready(server: SwiftServer, timeout: float) -> None:
    """Every backend healthy, proxy healthy, and tempauth (which needs memcached) answering."""
    children = server.children
    wait_tcp(server.ports.memcached, children, timeout)
    for kind in (*BACKENDS, "proxy"):
        wait_http(f"http://{LOOPBACK}:{getattr(server.ports, kind)}/healthcheck", children, timeout)
    creds = {"X-Auth-User": server.user, "X-Auth-Key": server.key}
    headers = wait_http(server.auth_url, children, timeout, headers=creds)
    server.storage_url = headers["X-Storage-Url"]


def _start_once(
    layout: SwiftLayout, port: int | None, timeout: float, s3_min_part_size: int
) -> SwiftServer:
    ports = SwiftPorts.pick(port)
    write_configs(layout, ports, s3_min_part_size)
    server = SwiftServer(layout, ports)
    with stop_on_error(server):
        server.children.append(spawn_memcached(layout, ports.memcached))
        server.children.extend(spawn_swift(layout, kind) for kind in BACKENDS)
        build_rings(layout, ports)  # while the backends boot: only the proxy reads rings
        server.children.append(spawn_swift(layout, "proxy"))  # last: stop() ends it first
        wait_ready(server, timeout)
    return server


def start_swift(
    workdir: Path,
    port: int | None = None,
    *,
    timeout: float = 60.0,
    s3_min_part_size: int = 1,
) -> SwiftServer:
    """Build and start a Swift AIO in ``workdir``; ``port`` is the proxy port (free if None).

    Returns once S3 and Swift requests can be served. ``s3_min_part_size`` is s3api's
    ``min_segment_size`` (AWS: 5 MiB); the default of 1 byte allows tiny multipart tests.
    """
    layout = SwiftLayout(Path(workdir).resolve())
    layout.create()
    check_prerequisites(layout)
    ensure_port_free(port)
    return start_with_retries(lambda: _start_once(layout, port, timeout, s3_min_part_size))
