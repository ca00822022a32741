"""Run one loopback server in the foreground: ``scripts/servers KIND`` from any folder
(or ``python -m tests.support.servers KIND`` from the repository root).

KIND is swift, moto, registry, azurite or fake-gcs; docs/servers.md lists their ports and
credentials.

Prints one JSON line (endpoints, credentials, PIDs) on stdout once the server is ready,
then runs until SIGTERM/SIGINT (or until one of its processes or its parent dies) and
stops its children.
Meant for benchmarks and for people without Docker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ._util import ManagedServer, ServerStartError
from .azurite import start_azurite
from .fake_gcs import start_fake_gcs
from .moto_server import start_moto
from .registry import start_registry
from .swift_aio import start_swift


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/servers", description=__doc__)
    parser.add_argument("kind", choices=("swift", "moto", "registry", "azurite", "fake-gcs"))
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where data, configs and logs go (kept); default: a temporary folder (removed)",
    )
    parser.add_argument("--port", type=int, help="listening port; default: a free one")
    return parser.parse_args(argv)


def starter(args: argparse.Namespace, workdir: Path) -> Callable[[], ManagedServer]:
    if args.kind == "swift":
        return lambda: start_swift(workdir, args.port)
    if args.kind == "registry":
        return lambda: start_registry(workdir, args.port)
    if args.kind == "azurite":
        return lambda: start_azurite(workdir, args.port)
    if args.kind == "fake-gcs":
        return lambda: start_fake_gcs(workdir, args.port)
    return lambda: start_moto(args.port, log_dir=workdir / "logs")


class Stop(Exception):
    """Raised from the SIGTERM/SIGINT handler so that every ``finally`` stops children."""


def raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def serve(server: ManagedServer) -> int:
    """Block until a child dies on its own (exit 1) or our parent does (exit 0).

    A stop signal unwinds via ``Stop``. Watching the parent matters because a pyenv shim
    does not exec: a script's ``kill $!`` then stops the shim, never reaching us.
    """
    parent = os.getppid()
    while server.running():
        if os.getppid() != parent:
            return 0
        time.sleep(1.0)
    print(f"a {server.kind} process exited; logs in {server.log_dir}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Installed before start-up so that a signal then still stops what was spawned.
    signal.signal(signal.SIGTERM, raise_stop)
    signal.signal(signal.SIGINT, raise_stop)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"{args.kind}-"))
    server: ManagedServer | None = None
    try:
        server = starter(args, workdir)()
        print(json.dumps(server.info()), flush=True)
        return serve(server)
    except Stop:
        return 0
    except ServerStartError as err:
        print(err, file=sys.stderr)
        return 2
    finally:
        # A second signal must not cut the clean-up short (it is bounded by STOP_TIMEOUT).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if server is not None:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
