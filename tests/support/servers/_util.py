"""Plumbing shared by the loopback servers: free ports, child processes, readiness polling.

Every server here is a set of child processes that we spawn ourselves. We keep the
``subprocess.Popen`` objects (not bare PIDs) so that stopping only ever signals our own
children: an unreaped child keeps its PID reserved, so the PID cannot have been recycled.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 10.0
# util-linux (Essential on Debian): sets PR_SET_PDEATHSIG, then execs the real server.
SETPRIV = "/usr/bin/setpriv"

T = TypeVar("T")

_handed_out: set[int] = set()
_ports_lock = threading.Lock()


class ServerStartError(RuntimeError):
    """A server did not come up. ``retryable`` is set when a child exited early (port race)."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def free_port() -> int:
    """Return a loopback TCP port that is free right now.

    The kernel picks it (bind to port 0). Ports already handed out by this process are
    never returned twice, so servers started concurrently from threads cannot collide;
    across processes a race is still possible and is handled by ``start_with_retries``.
    """
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ServerStartError("could not find a free loopback port")


def ensure_port_free(port: int | None) -> None:
    """Fail at once when a caller-chosen port is taken: retrying could not help."""
    if port is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves, so leftover TIME_WAIT connections do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as err:
            raise ServerStartError(f"{LOOPBACK}:{port} is not available: {err}") from err


@dataclass
class Child:
    """One spawned process plus the file its stdout/stderr go to."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def clean_env(
    drop_prefixes: Sequence[str] = (), extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Inherit the environment minus variables that would change a child's behaviour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}
    env.update(extra or {})
    return env


# Every child gets PR_SET_PDEATHSIG=SIGTERM, so it dies with the test process even when that
# is SIGKILLed (CI timeouts) and atexit never runs. The kernel sends it when the *thread*
# that forked exits, so all children are forked from this one long-lived thread: one forked
# from a pool thread (e.g. two servers started concurrently) would die with that thread.
_forker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="forker")


def spawn(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    user: tuple[int, int] | None = None,
) -> Child:
    """Start ``argv`` with stdin closed and stdout+stderr appended to ``log_dir/name.log``.

    ``user`` (uid, gid) runs it as that user with no supplementary groups (root only).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    command = list(argv)
    if user is not None:
        # One setpriv for both: a later change of user would clear the parent-death signal.
        drop = [f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
        command = [SETPRIV, *drop, "--pdeathsig", "TERM", "--", *argv]
    elif os.access(SETPRIV, os.X_OK):
        command = [SETPRIV, "--pdeathsig", "TERM", "--", *argv]
    with open(log_path, "ab") as log:  # the child keeps its own copy of the fd
        proc = _forker.submit(
            subprocess.Popen,
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=log_dir,
            close_fds=True,
        ).result()
    return Child(name, proc, log_path)


def terminate(children: Iterable[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every child still running, SIGKILL what is left after ``timeout``, reap all."""
    children = list(children)
    for child in children:
        if not child.exited():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (used by tests to check a clean stop)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def check_alive(children: Iterable[Child]) -> None:
    """Fail fast, with the log tail, as soon as one child has died during start-up."""
    for child in children:
        if child.exited():
            raise ServerStartError(
                f"{child.name} (pid {child.pid}) exited with status {child.proc.returncode}; "
                f"log {child.log_path}:\n{child.log_tail()}",
                retryable=True,
            )


def wait_until(
    ready: Callable[[], bool], children: Sequence[Child], what: str, timeout: float
) -> None:
    """Poll ``ready`` until it returns True; abort early if any of ``children`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive(children)
        if ready():
            return
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}:\n{c.log_tail(10)}" for c in children)
            raise ServerStartError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(0.05)


def http_request(
    url: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 2.0,
    method: str = "GET",
) -> tuple[int, Mapping[str, str]] | None:
    """Send a body-less request; return (status, headers), or None if nothing answers (yet).

    urllib would honour http_proxy from the environment; loopback must never be proxied.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)
    except (OSError, ValueError):
        return None


def wait_http(
    url: str,
    children: Sequence[Child],
    timeout: float,
    headers: Mapping[str, str] | None = None,
    expect: Iterable[int] = (200,),
) -> Mapping[str, str]:
    """Wait until ``url`` answers with one of ``expect``; return that response's headers."""
    expected = set(expect)
    answer: list[Mapping[str, str]] = []

    def ready() -> bool:
        result = http_request(url, headers)
        if result is not None and result[0] in expected:
            answer.append(result[1])
            return True
        return False

    wait_until(ready, children, f"{url} -> {sorted(expected)}", timeout)
    return answer[0]


def wait_tcp(port: int, children: Sequence[Child], timeout: float) -> None:
    """Wait until something accepts TCP connections on the loopback ``port``."""

    def ready() -> bool:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1.0).close()
        except OSError:
            return False
        return True

    wait_until(ready, children, f"tcp {LOOPBACK}:{port}", timeout)


def start_with_retries(start_once: Callable[[], T], attempts: int = 3) -> T:
    """Call ``start_once`` again when a child died at start-up.

    The usual cause is another process grabbing a port between ``free_port`` and the
    server's bind; fresh ports on the next attempt fix it. Timeouts are not retried.
    """
    for attempt in range(1, attempts + 1):
        try:
            return start_once()
        except ServerStartError as err:
            if not err.retryable or attempt == attempts:
                raise
    raise AssertionError("unreachable")


class ManagedServer:
    """Base for the server handles: owns its children, stops them once, is a context manager.

    An ``atexit`` hook stops servers a crashed or interrupted test run forgot about.
    """

    kind = "server"

    def __init__(self, log_dir: Path) -> None:
        self.children: list[Child] = []  # appended to as they are spawned
        self.log_dir = log_dir
        self._stopped = False
        atexit.register(self.stop)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Terminate exactly the processes this server started (last started first)."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        terminate(reversed(self.children), timeout)

    def running(self) -> bool:
        return not self._stopped and all(not c.exited() for c in self.children)

    def info(self) -> dict[str, Any]:
        """Endpoints and credentials as JSON-able data (``scripts/servers KIND``)."""
        return {"kind": self.kind, "pids": self.pids, "logs": str(self.log_dir)}

    def __enter__(self: T) -> T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def stop_on_error(server: ManagedServer) -> Iterator[None]:
    """If start-up fails half-way, stop whatever the server already spawned, then re-raise."""
    try:
        yield
    except BaseException:
        server.stop()
        raise
